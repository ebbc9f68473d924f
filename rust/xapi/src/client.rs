//! The JSON-RPC client: sessions, calls, xapi's error shapes, and the [`Xapi`] operations.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};

use crate::endpoint::Endpoint;
use crate::records::{self, protocol};
use crate::transport::Transport;
use crate::{Class, HostRecord, PluginCall, PoolRecord, Result, VmRecord, Xapi, XapiError};

/// How the client gets a session.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// `session.login_with_password` on first use; the session is logged out when the client is
    /// dropped.
    Password { user: String, password: String },
    /// An existing session ref (`VGPU_XAPI_SESSION`, or the one xapi hands a plugin). It belongs
    /// to someone else: never logged out, and not replaced if xapi says it is invalid.
    Session(String),
    /// dom0's unix socket trusts root without a password: log in as `root` with an empty one.
    LocalRoot,
}

impl fmt::Debug for Auth {
    // Hand-written so that a password or session ref never lands in a log or panic message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Auth::Session(_) => f.debug_tuple("Session").field(&"<redacted>").finish(),
            Auth::LocalRoot => f.write_str("LocalRoot"),
        }
    }
}

/// Connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// TCP connect (and TLS handshake) limit for http(s). Unix sockets connect at once.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// How long one call may take from sending the request to the end of the answer.
    /// Default 60 s. `clean_shutdown` replaces it with its own timeout.
    pub read_timeout: Duration,
    /// Skip certificate verification for https (pools with self-signed certificates).
    /// Default false; prefer `ca_file`.
    pub insecure_tls: bool,
    /// PEM file of the certificate(s) to trust for https, e.g. the pool master's own
    /// certificate. When set, these replace the built-in web PKI roots. Default none.
    pub ca_file: Option<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            insecure_tls: false,
            ca_file: None,
        }
    }
}

/// The originator xapi records for our sessions (visible in its logs and `session` records).
const ORIGINATOR: &str = "vgpu-registry";
/// Logging out happens in `Drop`; it must not hold a process up for a full read timeout.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(5);
const SESSION_INVALID: &str = "SESSION_INVALID";

const SCAN_FILTER: &str = r#"(field "is_a_template"="false") and (field "is_control_domain"="false") and (field "is_a_snapshot"="false")"#;

#[derive(Default)]
struct SessionState {
    current: Option<String>,
    /// Whether `current` was created by us (and is therefore ours to log out).
    created: bool,
}

/// An XAPI JSON-RPC client. `Send + Sync`: share it between threads freely; they share one
/// session.
pub struct Client {
    endpoint: Endpoint,
    auth: Auth,
    transport: Transport,
    session: Mutex<SessionState>,
    next_id: AtomicU64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `endpoint`. Nothing is contacted until the first call; problems with the
    /// options (an unreadable CA file) are reported by that call as [`XapiError::Transport`].
    pub fn new(endpoint: Endpoint, auth: Auth, options: ClientOptions) -> Client {
        let transport = Transport::new(&endpoint, &options);
        let session = match &auth {
            Auth::Session(session) => SessionState {
                current: Some(session.clone()),
                created: false,
            },
            Auth::Password { .. } | Auth::LocalRoot => SessionState::default(),
        };
        Client {
            endpoint,
            auth,
            transport,
            session: Mutex::new(session),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The session ref in use, logging in first when there is none yet.
    pub fn session_ref(&self) -> Result<String> {
        let mut state = self.lock_session();
        self.ensure_session(&mut state)
    }

    /// Calls `method` with the session prepended to `params`, returning xapi's `result`.
    ///
    /// When xapi answers `SESSION_INVALID` to a session this client logs into itself, it logs in
    /// again and retries once.
    pub fn call(&self, method: &str, params: Vec<Value>) -> Result<Value> {
        self.call_with(method, params, None)
    }

    /// [`call`](Self::call) with its own read timeout, for calls that wait on the guest
    /// (shutdowns, starts).
    pub fn call_with_timeout(
        &self,
        method: &str,
        params: Vec<Value>,
        read_timeout: Duration,
    ) -> Result<Value> {
        self.call_with(method, params, Some(read_timeout))
    }

    /// Logs out the session this client created, if any. Sessions passed in with
    /// [`Auth::Session`] are left alone. Dropping the client does this too, ignoring errors.
    pub fn logout(&self) -> Result<()> {
        let session = {
            let mut state = self.lock_session();
            if !state.created {
                return Ok(());
            }
            state.created = false;
            state.current.take()
        };
        match session {
            Some(session) => self
                .rpc(
                    "session.logout",
                    vec![Value::String(session)],
                    Some(LOGOUT_TIMEOUT.min(self.transport.read_timeout())),
                )
                .map(drop),
            None => Ok(()),
        }
    }

    fn call_with(
        &self,
        method: &str,
        params: Vec<Value>,
        read_timeout: Option<Duration>,
    ) -> Result<Value> {
        self.call_parsed(method, params, read_timeout, parse_response)
    }

    /// A call whose answer is deserialised by `parse` (for typed answers), with the session
    /// handling of [`Client::call`].
    fn call_parsed<T>(
        &self,
        method: &str,
        params: Vec<Value>,
        read_timeout: Option<Duration>,
        parse: fn(&str, u64, &[u8]) -> Result<T>,
    ) -> Result<T> {
        let with_session = |session: &str| {
            let mut full = Vec::with_capacity(params.len() + 1);
            full.push(Value::String(session.to_string()));
            full.extend(params.iter().cloned());
            full
        };
        let session = self.session_ref()?;
        match self.rpc_parsed(method, with_session(&session), read_timeout, parse) {
            Err(err) if err.api_code() == Some(SESSION_INVALID) && self.can_login() => {
                let session = self.replace_session(&session)?;
                self.rpc_parsed(method, with_session(&session), read_timeout, parse)
                    .map_err(|e| redact(e, &session, REDACTED_SESSION))
            }
            result => result.map_err(|e| redact(e, &session, REDACTED_SESSION)),
        }
    }

    fn can_login(&self) -> bool {
        !matches!(self.auth, Auth::Session(_))
    }

    fn lock_session(&self) -> MutexGuard<'_, SessionState> {
        // The state is two plain fields, consistent at every point a panic could occur.
        self.session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lock is held while logging in, so concurrent first calls share one login.
    fn ensure_session(&self, state: &mut SessionState) -> Result<String> {
        if let Some(session) = &state.current {
            return Ok(session.clone());
        }
        let (user, password) = match &self.auth {
            Auth::Password { user, password } => (user.as_str(), password.as_str()),
            Auth::LocalRoot => ("root", ""),
            // `new` stored the session; only `logout` clears it.
            Auth::Session(_) => {
                return Err(protocol(
                    "session.login_with_password",
                    "the session passed in was logged out",
                ))
            }
        };
        let method = "session.login_with_password";
        let result = self
            .rpc(
                method,
                vec![
                    json!(user),
                    json!(password),
                    json!("1.0"),
                    json!(ORIGINATOR),
                ],
                None,
            )
            .map_err(|e| redact(e, password, REDACTED_PASSWORD))?;
        let session = records::string(method, "the session ref", &result)?;
        state.current = Some(session.clone());
        state.created = true;
        Ok(session)
    }

    /// Forgets `stale` (unless another thread already replaced it) and logs in again.
    fn replace_session(&self, stale: &str) -> Result<String> {
        let mut state = self.lock_session();
        if state.current.as_deref() == Some(stale) {
            // xapi no longer knows it, so there is nothing to log out.
            state.current = None;
            state.created = false;
        }
        self.ensure_session(&mut state)
    }

    /// One JSON-RPC v2 round trip, without session handling.
    fn rpc(
        &self,
        method: &str,
        params: Vec<Value>,
        read_timeout: Option<Duration>,
    ) -> Result<Value> {
        self.rpc_parsed(method, params, read_timeout, parse_response)
    }

    fn rpc_parsed<T>(
        &self,
        method: &str,
        params: Vec<Value>,
        read_timeout: Option<Duration>,
        parse: fn(&str, u64, &[u8]) -> Result<T>,
    ) -> Result<T> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        let body = serde_json::to_vec(&request)
            .map_err(|e| protocol(method, format!("cannot encode the request: {e}")))?;
        let answer = self.transport.post(method, &body, read_timeout)?;
        parse(method, id, &answer)
    }

    /// One `VM.get_all_records_where` of the scan filter, its records handed to `each` as they
    /// are read from the connection.
    fn rpc_vm_records(
        &self,
        method: &str,
        session: &str,
        each: &mut dyn FnMut(VmRecord),
    ) -> Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let params = [json!(session), json!(SCAN_FILTER)];
        let request = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        let body = serde_json::to_vec(&request)
            .map_err(|e| protocol(method, format!("cannot encode the request: {e}")))?;
        self.transport.post_streamed(method, &body, None, |stream| {
            let envelope = records::read_vm_records(method, stream, each)?;
            check_vm_envelope(method, id, envelope)
        })
    }

    fn vm_ref_by_uuid(&self, uuid: &str) -> Result<Option<String>> {
        let method = "VM.get_by_uuid";
        match self.call(method, vec![json!(uuid)]) {
            Ok(value) => records::string(method, "the VM ref", &value).map(Some),
            Err(err) if err.api_code() == Some("UUID_INVALID") => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `VM.get_record`, with `None` for a VM that disappeared since its ref was looked up.
    fn vm_record(&self, vm_ref: &str) -> Result<Option<VmRecord>> {
        let method = "VM.get_record";
        match self.call(method, vec![json!(vm_ref)]) {
            Ok(value) => records::vm_record(method, vm_ref, &value).map(Some),
            Err(err) if err.api_code() == Some("HANDLE_INVALID") => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn call_for_string(&self, method: &str, params: Vec<Value>, what: &str) -> Result<String> {
        let value = self.call(method, params)?;
        records::string(method, what, &value)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Best effort: an unreachable xapi expires the session on its own.
        let _ = self.logout();
    }
}

/// What an error shows in place of the session ref it was made with (xapi echoes a dead
/// session's ref in `SESSION_INVALID`), or of the password of a failed login.
pub const REDACTED_SESSION: &str = "<session>";
pub const REDACTED_PASSWORD: &str = "<password>";

/// Errors reach users, logs and other programs: a session ref or password never stays in one.
fn redact(err: XapiError, secret: &str, shown: &str) -> XapiError {
    if secret.is_empty() {
        return err;
    }
    match err {
        XapiError::Api {
            method,
            code,
            params,
        } => XapiError::Api {
            method,
            code,
            params: params.iter().map(|p| p.replace(secret, shown)).collect(),
        },
        XapiError::Protocol { method, reason } => XapiError::Protocol {
            method,
            reason: reason.replace(secret, shown),
        },
        other => other,
    }
}

/// Extracts `result` from a JSON-RPC answer, or turns xapi's error into [`XapiError::Api`].
///
/// xapi answers v2 calls with `{"error": {"code": <int>, "message": CODE, "data": [params]}}`
/// and v1 calls with `{"error": [CODE, params…], "result": null}`; both are understood.
pub(crate) fn parse_response(method: &str, id: u64, body: &[u8]) -> Result<Value> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        if let Some(what) = crate::unicode::describe(method, body) {
            return protocol(method, what);
        }
        let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
        protocol(method, format!("answer is not JSON ({e}): {text:?}"))
    })?;
    let Value::Object(mut answer) = value else {
        return Err(protocol(method, "answer is not a JSON object"));
    };
    let error = answer.remove("error");
    check_envelope(method, id, answer.get("id"), error)?;
    answer
        .remove("result")
        .ok_or_else(|| protocol(method, "answer has neither result nor error"))
}

/// A whole `get_all_records[_where]` answer of VMs, read as [`Client::for_each_vm`] reads the
/// stream.
pub(crate) fn parse_vm_records(method: &str, id: u64, body: &[u8]) -> Result<Vec<VmRecord>> {
    let mut vms = Vec::new();
    let envelope = records::read_vm_records(method, body, &mut |vm| vms.push(vm))?;
    check_vm_envelope(method, id, envelope)?;
    Ok(vms)
}

/// The envelope of a streamed answer: for our request, not an error, and with records.
fn check_vm_envelope(method: &str, id: u64, envelope: records::Envelope) -> Result<()> {
    check_envelope(method, id, envelope.id.as_ref(), envelope.error)?;
    if envelope.result {
        Ok(())
    } else {
        Err(protocol(method, "answer has neither result nor error"))
    }
}

/// The answer is for our request, and is not an error.
fn check_envelope(method: &str, id: u64, got: Option<&Value>, error: Option<Value>) -> Result<()> {
    match got {
        None | Some(Value::Null) => {}
        Some(got) if *got == json!(id) || *got == json!(id.to_string()) => {}
        Some(got) => {
            return Err(protocol(
                method,
                format!("answer is for request {got}, not {id}"),
            ))
        }
    }
    match error {
        None | Some(Value::Null) => Ok(()),
        Some(error) => Err(api_error(method, error)),
    }
}

fn api_error(method: &str, error: Value) -> XapiError {
    let text = |v: Value| match v {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let (code, params) = match error {
        Value::Object(mut object) => {
            let code = match object.remove("message") {
                Some(Value::String(message)) if !message.is_empty() => message,
                // Not xapi's shape, but a generic JSON-RPC server error still deserves its number.
                _ => object.remove("code").map(text).unwrap_or_default(),
            };
            let params = match object.remove("data") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items.into_iter().map(text).collect(),
                Some(other) => vec![text(other)],
            };
            (code, params)
        }
        Value::Array(items) => {
            let mut items = items.into_iter().map(text);
            let code = items.next().unwrap_or_default();
            (code, items.collect())
        }
        Value::String(code) => (code, Vec::new()),
        other => (other.to_string(), Vec::new()),
    };
    if code.is_empty() {
        return protocol(method, "error answer without an error code");
    }
    XapiError::Api {
        method: method.to_string(),
        code,
        params,
    }
}

impl Xapi for Client {
    fn list_vms(&self) -> Result<Vec<VmRecord>> {
        let mut vms = Vec::new();
        self.for_each_vm(&mut |vm| vms.push(vm))?;
        vms.sort_by(|a, b| (&a.name_label, &a.uuid).cmp(&(&b.name_label, &b.uuid)));
        Ok(vms)
    }

    fn for_each_vm(&self, each: &mut dyn FnMut(VmRecord)) -> Result<()> {
        let method = "VM.get_all_records_where";
        let handed_out = std::cell::Cell::new(false);
        let mut real = |vm: VmRecord| {
            handed_out.set(true);
            // The filter already does this; repeating it keeps a lax server from leaking
            // templates.
            if !vm.is_a_template && !vm.is_a_snapshot && !vm.is_control_domain {
                each(vm)
            }
        };
        let session = self.session_ref()?;
        match self.rpc_vm_records(method, &session, &mut real) {
            // As `call`; an answer that handed out records before its error is not retried,
            // since the caller has them.
            Err(err)
                if err.api_code() == Some(SESSION_INVALID)
                    && self.can_login()
                    && !handed_out.get() =>
            {
                let session = self.replace_session(&session)?;
                self.rpc_vm_records(method, &session, &mut real)
                    .map_err(|e| redact(e, &session, REDACTED_SESSION))
            }
            result => result.map_err(|e| redact(e, &session, REDACTED_SESSION)),
        }
    }

    fn vm_by_uuid(&self, uuid: &str) -> Result<Option<VmRecord>> {
        match self.vm_ref_by_uuid(uuid)? {
            Some(vm_ref) => self.vm_record(&vm_ref),
            None => Ok(None),
        }
    }

    fn vms_by_name(&self, name: &str) -> Result<Vec<VmRecord>> {
        let method = "VM.get_by_name_label";
        let refs = records::string_list(
            method,
            "the VM refs",
            &self.call(method, vec![json!(name)])?,
        )?;
        let mut vms = Vec::with_capacity(refs.len());
        for vm_ref in refs {
            if let Some(vm) = self.vm_record(&vm_ref)? {
                if !vm.is_a_template && !vm.is_a_snapshot && !vm.is_control_domain {
                    vms.push(vm);
                }
            }
        }
        vms.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        Ok(vms)
    }

    fn get_platform(&self, vm_ref: &str) -> Result<BTreeMap<String, String>> {
        let method = "VM.get_platform";
        let value = self.call(method, vec![json!(vm_ref)])?;
        records::string_map(method, "platform", &value)
    }

    fn set_platform(&self, vm_ref: &str, platform: &BTreeMap<String, String>) -> Result<()> {
        self.call("VM.set_platform", vec![json!(vm_ref), json!(platform)])
            .map(drop)
    }

    fn power_state(&self, vm_ref: &str) -> Result<String> {
        self.call_for_string("VM.get_power_state", vec![json!(vm_ref)], "the power state")
    }

    fn clean_shutdown(&self, vm_ref: &str, timeout_s: u64) -> Result<()> {
        // xapi answers only once the guest is down, so the wait is the read timeout.
        let timeout = Duration::from_secs(timeout_s.max(1));
        self.call_with_timeout("VM.clean_shutdown", vec![json!(vm_ref)], timeout)
            .map(drop)
    }

    fn start(&self, vm_ref: &str) -> Result<()> {
        self.call("VM.start", vec![json!(vm_ref), json!(false), json!(false)])
            .map(drop)
    }

    fn pool(&self) -> Result<PoolRecord> {
        let method = "pool.get_all_records";
        let pools = records::record_map(method, &self.call(method, vec![])?, records::pool_record)?;
        pools
            .into_iter()
            .next()
            .ok_or_else(|| protocol(method, "xapi knows no pool"))
    }

    fn hosts(&self) -> Result<Vec<HostRecord>> {
        let method = "host.get_all_records";
        let mut hosts =
            records::record_map(method, &self.call(method, vec![])?, records::host_record)?;
        hosts.sort_by(|a, b| (&a.name_label, &a.uuid).cmp(&(&b.name_label, &b.uuid)));
        Ok(hosts)
    }

    fn host_record(&self, host_ref: &str) -> Result<HostRecord> {
        let method = "host.get_record";
        let value = self.call(method, vec![json!(host_ref)])?;
        records::host_record(method, host_ref, &value)
    }

    fn add_to_other_config(
        &self,
        class: Class,
        obj_ref: &str,
        key: &str,
        value: &str,
    ) -> Result<()> {
        let method = format!("{}.add_to_other_config", class.api_name());
        self.call(&method, vec![json!(obj_ref), json!(key), json!(value)])
            .map(drop)
    }

    fn remove_from_other_config(&self, class: Class, obj_ref: &str, key: &str) -> Result<()> {
        let method = format!("{}.remove_from_other_config", class.api_name());
        self.call(&method, vec![json!(obj_ref), json!(key)])
            .map(drop)
    }

    fn host_by_uuid(&self, uuid: &str) -> Result<Option<HostRecord>> {
        let method = "host.get_by_uuid";
        let host_ref = match self.call(method, vec![json!(uuid)]) {
            Ok(value) => records::string(method, "the host ref", &value)?,
            Err(err) if err.api_code() == Some("UUID_INVALID") => return Ok(None),
            Err(err) => return Err(err),
        };
        self.host_record(&host_ref).map(Some)
    }

    fn call_plugin(
        &self,
        host_ref: &str,
        plugin: &str,
        function: &str,
        args: &BTreeMap<String, String>,
    ) -> Result<String> {
        self.call_for_string(
            "host.call_plugin",
            vec![json!(host_ref), json!(plugin), json!(function), json!(args)],
            "the plugin's result",
        )
    }

    fn call_plugins(&self, calls: &[PluginCall], timeout: Duration) -> Vec<Result<String>> {
        let one = |c: &PluginCall| {
            let method = "host.call_plugin";
            let params = vec![
                json!(c.host_ref),
                json!(c.plugin),
                json!(c.function),
                json!(c.args),
            ];
            let value = self.call_with_timeout(method, params, timeout)?;
            records::string(method, "the plugin's result", &value)
        };
        // Each call's read timeout bounds its thread, so the scope ends within the timeout
        // (plus the connect timeout) however many hosts hang.
        std::thread::scope(|scope| {
            let handles: Vec<_> = calls.iter().map(|c| scope.spawn(move || one(c))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(protocol("host.call_plugin", "the call's thread panicked"))
                    })
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex as StdMutex};
    use std::thread;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn client_is_send_and_sync() {
        assert_send_sync::<Client>();
    }

    fn api(code: &str, params: &[&str]) -> XapiError {
        XapiError::Api {
            method: "VM.start".into(),
            code: code.into(),
            params: params.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn parses_results() {
        assert_eq!(
            parse_response(
                "m",
                3,
                br#"{"jsonrpc":"2.0","result":["OpaqueRef:a"],"id":3}"#
            ),
            Ok(json!(["OpaqueRef:a"]))
        );
        assert_eq!(
            parse_response("m", 3, br#"{"result":"","error":null,"id":"3"}"#),
            Ok(json!(""))
        );
        assert_eq!(
            parse_response("m", 3, br#"{"result":null}"#),
            Ok(Value::Null)
        );
    }

    #[test]
    fn vm_records_are_read_typed_skipping_other_fields() {
        let body = br#"{"jsonrpc":"2.0","id":3,"result":{
            "OpaqueRef:a":{"uuid":"u-a","name_label":null,"power_state":"Running",
                "platform":{"device-model-args":"-m 1"},"VCPUs_max":"4","other_config":{"x":"y"},
                "blocked_operations":{},"is_a_template":false},
            "OpaqueRef:b":{"uuid":"u-b"}}}"#;
        let mut vms = parse_vm_records("VM.get_all_records_where", 3, body).unwrap();
        vms.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        assert_eq!(vms[0].opaque_ref, "OpaqueRef:a");
        assert_eq!(vms[0].name_label, "");
        assert_eq!(vms[0].platform["device-model-args"], "-m 1");
        assert_eq!(vms[1].resident_on, "OpaqueRef:NULL");
        assert_eq!(vms[1].power_state, "");

        let err = br#"{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"SESSION_INVALID","data":["s"]}}"#;
        assert_eq!(
            parse_vm_records("m", 3, err).unwrap_err().api_code(),
            Some("SESSION_INVALID")
        );
        for bad in [
            &br#"{"id":3,"result":{"OpaqueRef:a":{"uuid":5}}}"#[..],
            br#"{"id":3,"result":{"OpaqueRef:a":{"name_label":"no uuid"}}}"#,
            br#"{"id":3,"result":{"OpaqueRef:a":{"uuid":"u","platform":{"k":1}}}}"#,
            br#"{"id":4,"result":{}}"#,
            br#"{"id":3}"#,
            br#"not json"#,
        ] {
            assert!(
                matches!(
                    parse_vm_records("m", 3, bad),
                    Err(XapiError::Protocol { .. })
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn parses_the_v2_error_object() {
        let body = br#"{"jsonrpc":"2.0","error":{"code":1,"message":"VM_BAD_POWER_STATE","data":["OpaqueRef:v","halted","running"]},"id":7}"#;
        assert_eq!(
            parse_response("VM.start", 7, body),
            Err(api(
                "VM_BAD_POWER_STATE",
                &["OpaqueRef:v", "halted", "running"]
            ))
        );
        let no_data = br#"{"jsonrpc":"2.0","error":{"code":1,"message":"SESSION_INVALID"},"id":7}"#;
        assert_eq!(
            parse_response("VM.start", 7, no_data),
            Err(api("SESSION_INVALID", &[]))
        );
        let odd_data = br#"{"error":{"code":1,"message":"X","data":[1,{"a":true},"s"]}}"#;
        assert_eq!(
            parse_response("VM.start", 7, odd_data),
            Err(api("X", &["1", r#"{"a":true}"#, "s"]))
        );
        let generic = br#"{"jsonrpc":"2.0","error":{"code":-32601,"message":""},"id":7}"#;
        assert_eq!(
            parse_response("VM.start", 7, generic),
            Err(api("-32601", &[]))
        );
    }

    #[test]
    fn parses_the_v1_error_array() {
        let body = br#"{"result":null,"error":["HANDLE_INVALID","VM","OpaqueRef:x"],"id":7}"#;
        assert_eq!(
            parse_response("VM.start", 7, body),
            Err(api("HANDLE_INVALID", &["VM", "OpaqueRef:x"]))
        );
        assert_eq!(
            parse_response("VM.start", 7, br#"{"error":"MESSAGE_METHOD_UNKNOWN"}"#),
            Err(api("MESSAGE_METHOD_UNKNOWN", &[]))
        );
    }

    #[test]
    fn rejects_what_is_not_json_rpc() {
        for (body, needle) in [
            (&b"<html>oops</html>"[..], "not JSON"),
            (b"[1,2]", "not a JSON object"),
            (br#"{"jsonrpc":"2.0","id":1}"#, "neither result nor error"),
            (br#"{"result":1,"id":99}"#, "request 99, not 1"),
            (br#"{"error":[]}"#, "without an error code"),
            (br#"{"error":{"data":[]}}"#, "without an error code"),
        ] {
            match parse_response("VM.get_all", 1, body) {
                Err(XapiError::Protocol { method, reason }) => {
                    assert_eq!(method, "VM.get_all");
                    assert!(reason.contains(needle), "{reason} lacks {needle}");
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }

    #[test]
    fn auth_debug_hides_secrets() {
        let text = format!(
            "{:?} {:?}",
            Auth::Password {
                user: "root".into(),
                password: "hunter2".into()
            },
            Auth::Session("OpaqueRef:secret".into())
        );
        assert!(
            !text.contains("hunter2") && !text.contains("secret"),
            "{text}"
        );
        assert!(text.contains("root"));
    }

    #[test]
    fn errors_never_keep_a_session_or_password() {
        let err = redact(
            XapiError::Api {
                method: "VM.get_record".into(),
                code: "SESSION_INVALID".into(),
                params: vec!["OpaqueRef:s1".into(), "x OpaqueRef:s1 y".into()],
            },
            "OpaqueRef:s1",
            REDACTED_SESSION,
        );
        assert_eq!(
            err,
            XapiError::Api {
                method: "VM.get_record".into(),
                code: "SESSION_INVALID".into(),
                params: vec!["<session>".into(), "x <session> y".into()],
            }
        );
        let err = redact(protocol("m", "echo hunter2"), "hunter2", REDACTED_PASSWORD);
        assert!(!err.to_string().contains("hunter2"), "{err}");
        // An empty password (dom0's socket) replaces nothing.
        let err = redact(protocol("m", "a b"), "", REDACTED_PASSWORD);
        assert_eq!(err, protocol("m", "a b"));
    }

    #[test]
    fn default_options() {
        let options = ClientOptions::default();
        assert_eq!(options.connect_timeout, Duration::from_secs(10));
        assert_eq!(options.read_timeout, Duration::from_secs(60));
        assert!(!options.insecure_tls);
        assert_eq!(options.ca_file, None);
    }

    /// (method, params) of each request, in arrival order.
    type CallLog = Arc<StdMutex<Vec<(String, Vec<Value>)>>>;

    /// A scripted xapi on a unix socket: answers each JSON-RPC request with `respond` (one
    /// request per connection) and records (method, params) of everything it received.
    struct FakeXapi {
        _dir: tempfile::TempDir,
        endpoint: Endpoint,
        log: CallLog,
    }

    impl FakeXapi {
        fn start(respond: impl Fn(&str, &[Value]) -> Value + Send + 'static) -> FakeXapi {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("xapi.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let log = Arc::new(StdMutex::new(Vec::new()));
            let seen = Arc::clone(&log);
            thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { return };
                    let mut reader = BufReader::new(&mut stream);
                    let mut len = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        if let Some((name, v)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    let request: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(request["jsonrpc"], "2.0");
                    let method = request["method"].as_str().unwrap().to_string();
                    let params = request["params"].as_array().unwrap().clone();
                    seen.lock().unwrap().push((method.clone(), params.clone()));
                    let mut answer = respond(&method, &params);
                    answer["id"] = request["id"].clone();
                    answer["jsonrpc"] = json!("2.0");
                    let text = answer.to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    stream.write_all(reply.as_bytes()).unwrap();
                }
            });
            FakeXapi {
                endpoint: Endpoint::Unix(path),
                _dir: dir,
                log,
            }
        }

        fn client(&self, auth: Auth) -> Client {
            Client::new(self.endpoint.clone(), auth, ClientOptions::default())
        }

        fn methods(&self) -> Vec<String> {
            self.log
                .lock()
                .unwrap()
                .iter()
                .map(|(m, _)| m.clone())
                .collect()
        }

        fn params(&self, index: usize) -> Vec<Value> {
            self.log.lock().unwrap()[index].1.clone()
        }
    }

    fn ok(result: Value) -> Value {
        json!({ "result": result })
    }

    fn err(code: &str, data: &[&str]) -> Value {
        json!({ "error": { "code": 1, "message": code, "data": data } })
    }

    /// Sessions are `OpaqueRef:s1`, `OpaqueRef:s2`, …; only the newest one is valid.
    fn session_server() -> FakeXapi {
        let newest = Arc::new(StdMutex::new(0u32));
        FakeXapi::start(move |method, params| {
            let mut newest = newest.lock().unwrap();
            match method {
                "session.login_with_password" => {
                    *newest += 1;
                    ok(json!(format!("OpaqueRef:s{}", *newest)))
                }
                "session.logout" => ok(json!("")),
                _ if params.first() == Some(&json!(format!("OpaqueRef:s{}", *newest))) => {
                    ok(json!("Running"))
                }
                _ => err("SESSION_INVALID", &[params[0].as_str().unwrap_or("")]),
            }
        })
    }

    #[test]
    fn password_login_is_lazy_reused_and_logged_out_on_drop() {
        let server = session_server();
        let client = server.client(Auth::Password {
            user: "admin".into(),
            password: "pw".into(),
        });
        assert!(server.methods().is_empty(), "nothing before the first call");
        assert_eq!(client.power_state("OpaqueRef:vm").unwrap(), "Running");
        assert_eq!(client.power_state("OpaqueRef:vm").unwrap(), "Running");
        assert_eq!(client.session_ref().unwrap(), "OpaqueRef:s1");
        drop(client);
        assert_eq!(
            server.methods(),
            [
                "session.login_with_password",
                "VM.get_power_state",
                "VM.get_power_state",
                "session.logout"
            ]
        );
        assert_eq!(
            server.params(0),
            [
                json!("admin"),
                json!("pw"),
                json!("1.0"),
                json!("vgpu-registry")
            ]
        );
        assert_eq!(
            server.params(1),
            [json!("OpaqueRef:s1"), json!("OpaqueRef:vm")]
        );
        assert_eq!(server.params(3), [json!("OpaqueRef:s1")]);
    }

    #[test]
    fn local_root_logs_in_as_root_without_password() {
        let server = session_server();
        let client = server.client(Auth::LocalRoot);
        client.power_state("OpaqueRef:vm").unwrap();
        assert_eq!(
            server.params(0),
            [
                json!("root"),
                json!(""),
                json!("1.0"),
                json!("vgpu-registry")
            ]
        );
        client.logout().unwrap();
        client.logout().unwrap();
        drop(client);
        assert_eq!(
            server
                .methods()
                .iter()
                .filter(|m| *m == "session.logout")
                .count(),
            1
        );
    }

    #[test]
    fn given_session_is_used_as_is_and_never_logged_out() {
        let server = session_server();
        let first = server.client(Auth::LocalRoot);
        let session = first.session_ref().unwrap();
        let client = server.client(Auth::Session(session.clone()));
        assert_eq!(client.session_ref().unwrap(), session);
        client.power_state("OpaqueRef:vm").unwrap();
        drop(client);
        assert_eq!(
            server.methods(),
            ["session.login_with_password", "VM.get_power_state"]
        );
        drop(first);
    }

    #[test]
    fn invalid_given_session_is_reported_not_replaced() {
        let server = session_server();
        let client = server.client(Auth::Session("OpaqueRef:stale".into()));
        let error = client.power_state("OpaqueRef:vm").unwrap_err();
        assert_eq!(error.api_code(), Some("SESSION_INVALID"));
        drop(client);
        assert_eq!(server.methods(), ["VM.get_power_state"]);
    }

    #[test]
    fn invalid_given_session_is_not_shown_by_the_streamed_listing() {
        let server = session_server();
        let client = server.client(Auth::Session("OpaqueRef:stale".into()));
        let error = client.list_vms().unwrap_err();
        assert_eq!(error.api_code(), Some("SESSION_INVALID"));
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("OpaqueRef:stale"), "{shown}");
        assert!(shown.contains(REDACTED_SESSION), "{shown}");
    }

    #[test]
    fn expired_session_is_replaced_once_and_the_call_retried() {
        let server = session_server();
        let client = server.client(Auth::Password {
            user: "u".into(),
            password: "p".into(),
        });
        client.power_state("OpaqueRef:vm").unwrap();
        // Another client logging in invalidates ours (the fake keeps only the newest session).
        let other = server.client(Auth::LocalRoot);
        other.session_ref().unwrap();
        std::mem::forget(other);
        assert_eq!(client.power_state("OpaqueRef:vm").unwrap(), "Running");
        assert_eq!(client.session_ref().unwrap(), "OpaqueRef:s3");
        drop(client);
        assert_eq!(
            server.methods(),
            [
                "session.login_with_password",
                "VM.get_power_state",
                "session.login_with_password",
                "VM.get_power_state",
                "session.login_with_password",
                "VM.get_power_state",
                "session.logout",
            ]
        );
        assert_eq!(
            server.params(3),
            [json!("OpaqueRef:s1"), json!("OpaqueRef:vm")]
        );
        assert_eq!(
            server.params(5),
            [json!("OpaqueRef:s3"), json!("OpaqueRef:vm")]
        );
        assert_eq!(server.params(6), [json!("OpaqueRef:s3")]);
    }

    #[test]
    fn persistent_session_invalid_is_not_retried_forever() {
        let server = FakeXapi::start(|method, _| match method {
            "session.login_with_password" => ok(json!("OpaqueRef:s")),
            _ => err("SESSION_INVALID", &["OpaqueRef:s"]),
        });
        let client = server.client(Auth::LocalRoot);
        let error = client.power_state("OpaqueRef:vm").unwrap_err();
        assert_eq!(error.api_code(), Some("SESSION_INVALID"));
        assert_eq!(server.methods().len(), 4);
    }

    #[test]
    fn failed_login_is_an_api_error_without_the_password() {
        let server = FakeXapi::start(|_, _| {
            err(
                "SESSION_AUTHENTICATION_FAILED",
                &["admin", "Authentication failure"],
            )
        });
        let client = server.client(Auth::Password {
            user: "admin".into(),
            password: "hunter2".into(),
        });
        let error = client.list_vms().unwrap_err();
        assert_eq!(error.api_code(), Some("SESSION_AUTHENTICATION_FAILED"));
        assert!(!error.to_string().contains("hunter2"));
        drop(client);
        assert_eq!(server.methods(), ["session.login_with_password"]);
    }

    fn vm(uuid: &str, name: &str, flags: (bool, bool, bool)) -> Value {
        json!({
            "uuid": uuid, "name_label": name, "power_state": "Halted",
            "platform": {"device-model-args": format!("-device vgpu-cuda,vm_id={uuid}")},
            "is_a_template": flags.0, "is_a_snapshot": flags.1, "is_control_domain": flags.2,
            "resident_on": "OpaqueRef:NULL"
        })
    }

    fn pool_server() -> FakeXapi {
        FakeXapi::start(|method, params| {
            let arg = |i: usize| {
                params
                    .get(i)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            match method {
                "session.login_with_password" => ok(json!("OpaqueRef:s")),
                "session.logout" => ok(json!("")),
                "VM.get_all_records_where" => ok(json!({
                    "OpaqueRef:b": vm("u-b", "beta", (false, false, false)),
                    "OpaqueRef:a2": vm("u-a2", "alpha", (false, false, false)),
                    "OpaqueRef:a1": vm("u-a1", "alpha", (false, false, false)),
                    "OpaqueRef:t": vm("u-t", "template", (true, false, false)),
                })),
                "VM.get_by_uuid" if arg(1) == "u-a1" => ok(json!("OpaqueRef:a1")),
                "VM.get_by_uuid" => err("UUID_INVALID", &["VM", &arg(1)]),
                "VM.get_by_name_label" => ok(json!([
                    "OpaqueRef:a2",
                    "OpaqueRef:gone",
                    "OpaqueRef:snap",
                    "OpaqueRef:a1"
                ])),
                "VM.get_record" => match arg(1).as_str() {
                    "OpaqueRef:a1" => ok(vm("u-a1", "alpha", (false, false, false))),
                    "OpaqueRef:a2" => ok(vm("u-a2", "alpha", (false, false, false))),
                    "OpaqueRef:snap" => ok(vm("u-s", "alpha", (false, true, false))),
                    other => err("HANDLE_INVALID", &["VM", other]),
                },
                "VM.get_platform" => ok(json!({"a": "1"})),
                "VM.set_platform" if arg(1) != "OpaqueRef:a1" => {
                    err("HANDLE_INVALID", &["VM", &arg(1)])
                }
                "VM.set_platform" | "VM.clean_shutdown" | "VM.start" => ok(json!("")),
                "pool.get_all" => ok(json!(["OpaqueRef:pool"])),
                "pool.get_master" => ok(json!("OpaqueRef:h1")),
                "pool.get_all_records" => ok(json!({"OpaqueRef:pool": {
                    "uuid": "p-1", "master": "OpaqueRef:h1",
                    "other_config": {"vgpu-registry:generation": "3"}}})),
                "host.get_all_records" => ok(json!({
                    "OpaqueRef:h2": {"uuid": "h-2", "name_label": "xcp-2",
                                     "other_config": {"k": "v"}},
                    "OpaqueRef:h1": {"uuid": "h-1", "name_label": "xcp-1"}})),
                "pool.add_to_other_config"
                | "pool.remove_from_other_config"
                | "VM.add_to_other_config"
                | "host.remove_from_other_config" => ok(json!("")),
                "host.get_by_uuid" if arg(1) == "h-1" => ok(json!("OpaqueRef:h1")),
                "host.get_by_uuid" => err("UUID_INVALID", &["host", &arg(1)]),
                "host.get_record" => ok(json!({"uuid": "h-1", "name_label": "xcp-1"})),
                "host.call_plugin" => ok(json!(params[4].to_string())),
                _ => err("MESSAGE_METHOD_UNKNOWN", &[method]),
            }
        })
    }

    #[test]
    fn list_vms_is_one_filtered_call_sorted_by_name_then_uuid() {
        let server = pool_server();
        let client = server.client(Auth::LocalRoot);
        let vms = client.list_vms().unwrap();
        let ids: Vec<_> = vms
            .iter()
            .map(|v| (v.opaque_ref.as_str(), v.uuid.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("OpaqueRef:a1", "u-a1"),
                ("OpaqueRef:a2", "u-a2"),
                ("OpaqueRef:b", "u-b")
            ]
        );
        assert_eq!(
            server.methods(),
            ["session.login_with_password", "VM.get_all_records_where"]
        );
        assert_eq!(server.params(1), [json!("OpaqueRef:s"), json!(SCAN_FILTER)]);
    }

    #[test]
    fn the_streamed_listing_replaces_an_expired_session_once() {
        let listed = Arc::new(StdMutex::new(0u32));
        let server = FakeXapi::start(move |method, _| match method {
            "session.login_with_password" => ok(json!("OpaqueRef:s")),
            "session.logout" => ok(json!("")),
            _ => {
                let mut n = listed.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    err("SESSION_INVALID", &["OpaqueRef:s"])
                } else {
                    ok(
                        json!({"OpaqueRef:a": vm("u-a", "alpha", (false, false, false)),
                              "OpaqueRef:t": vm("u-t", "template", (true, false, false))}),
                    )
                }
            }
        });
        let client = server.client(Auth::LocalRoot);
        let mut seen = Vec::new();
        client.for_each_vm(&mut |vm| seen.push(vm.uuid)).unwrap();
        assert_eq!(seen, ["u-a"]);
        assert_eq!(
            server.methods(),
            [
                "session.login_with_password",
                "VM.get_all_records_where",
                "session.login_with_password",
                "VM.get_all_records_where"
            ]
        );
    }

    #[test]
    fn vm_lookups() {
        let server = pool_server();
        let client = server.client(Auth::LocalRoot);
        let found = client.vm_by_uuid("u-a1").unwrap().unwrap();
        assert_eq!(
            (found.opaque_ref.as_str(), found.name_label.as_str()),
            ("OpaqueRef:a1", "alpha")
        );
        assert_eq!(client.vm_by_uuid("u-none").unwrap(), None);
        let named: Vec<_> = client
            .vms_by_name("alpha")
            .unwrap()
            .into_iter()
            .map(|v| v.uuid)
            .collect();
        assert_eq!(named, ["u-a1", "u-a2"]);
    }

    #[test]
    fn vm_operations_send_the_expected_parameters() {
        let server = pool_server();
        let client = server.client(Auth::LocalRoot);
        assert_eq!(
            client
                .get_platform("OpaqueRef:a1")
                .unwrap()
                .get("a")
                .map(String::as_str),
            Some("1")
        );
        let platform = BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("k".to_string(), "v w".to_string()),
        ]);
        let invalid = client
            .set_platform("OpaqueRef:gone", &platform)
            .unwrap_err();
        assert_eq!(invalid.api_code(), Some("HANDLE_INVALID"));
        client.set_platform("OpaqueRef:a1", &platform).unwrap();
        client.clean_shutdown("OpaqueRef:a1", 120).unwrap();
        client.start("OpaqueRef:a1").unwrap();
        let log = server.log.lock().unwrap().clone();
        let sent: Vec<_> = log
            .iter()
            .skip(1)
            .map(|(m, p)| (m.as_str(), p[1..].to_vec()))
            .collect();
        assert_eq!(
            sent,
            [
                ("VM.get_platform", vec![json!("OpaqueRef:a1")]),
                (
                    "VM.set_platform",
                    vec![json!("OpaqueRef:gone"), json!({"a": "1", "k": "v w"})]
                ),
                (
                    "VM.set_platform",
                    vec![json!("OpaqueRef:a1"), json!({"a": "1", "k": "v w"})]
                ),
                ("VM.clean_shutdown", vec![json!("OpaqueRef:a1")]),
                (
                    "VM.start",
                    vec![json!("OpaqueRef:a1"), json!(false), json!(false)]
                ),
            ]
        );
    }

    #[test]
    fn hosts_and_plugins() {
        let server = pool_server();
        let client = server.client(Auth::LocalRoot);
        let master = client.pool_master().unwrap();
        assert_eq!(
            master,
            HostRecord {
                opaque_ref: "OpaqueRef:h1".into(),
                uuid: "h-1".into(),
                name_label: "xcp-1".into(),
                other_config: BTreeMap::new(),
            }
        );
        assert_eq!(client.host_by_uuid("h-1").unwrap(), Some(master));
        assert_eq!(client.host_by_uuid("h-x").unwrap(), None);
        let args = BTreeMap::from([("vm_uuid".to_string(), "u-a1".to_string())]);
        let result = client
            .call_plugin("OpaqueRef:h1", "vgpu", "show_vm", &args)
            .unwrap();
        assert_eq!(result, r#"{"vm_uuid":"u-a1"}"#);
        let log = server.log.lock().unwrap().clone();
        let plugin_call = log.iter().find(|(m, _)| m == "host.call_plugin").unwrap();
        assert_eq!(
            plugin_call.1[1..],
            [
                json!("OpaqueRef:h1"),
                json!("vgpu"),
                json!("show_vm"),
                json!({"vm_uuid": "u-a1"})
            ]
        );
    }

    #[test]
    fn pool_hosts_and_other_config() {
        let server = pool_server();
        let client = server.client(Auth::LocalRoot);
        let pool = client.pool().unwrap();
        assert_eq!(pool.master, "OpaqueRef:h1");
        assert_eq!(pool.other_config["vgpu-registry:generation"], "3");
        let hosts = client.hosts().unwrap();
        let uuids: Vec<&str> = hosts.iter().map(|h| h.uuid.as_str()).collect();
        assert_eq!(uuids, ["h-1", "h-2"], "sorted by name-label");
        assert_eq!(hosts[1].other_config["k"], "v");
        assert!(hosts[0].other_config.is_empty());
        client
            .add_to_other_config(Class::Pool, "OpaqueRef:pool", "k", "v")
            .unwrap();
        client
            .remove_from_other_config(Class::Host, "OpaqueRef:h2", "k")
            .unwrap();
        let log = server.log.lock().unwrap().clone();
        let methods: Vec<&str> = log.iter().map(|(m, _)| m.as_str()).collect();
        assert!(methods.contains(&"pool.add_to_other_config"), "{methods:?}");
        assert!(
            methods.contains(&"host.remove_from_other_config"),
            "{methods:?}"
        );
        let add = log
            .iter()
            .find(|(m, _)| m == "pool.add_to_other_config")
            .unwrap();
        assert_eq!(
            add.1[1..],
            [json!("OpaqueRef:pool"), json!("k"), json!("v")]
        );
    }

    #[test]
    fn plugin_calls_in_parallel_keep_their_order() {
        let server = pool_server();
        let client = server.client(Auth::LocalRoot);
        let calls: Vec<PluginCall> = (0..4)
            .map(|i| PluginCall {
                host_ref: format!("OpaqueRef:h{i}"),
                plugin: "vgpu".into(),
                function: "refresh".into(),
                args: BTreeMap::from([("n".to_string(), i.to_string())]),
            })
            .collect();
        let answers = client.call_plugins(&calls, Duration::from_secs(5));
        let got: Vec<String> = answers.into_iter().map(|a| a.unwrap()).collect();
        let want: Vec<String> = (0..4).map(|i| format!(r#"{{"n":"{i}"}}"#)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn raw_call_prepends_the_session() {
        let server = pool_server();
        let client = server.client(Auth::LocalRoot);
        assert_eq!(
            client.call("pool.get_all", vec![]).unwrap(),
            json!(["OpaqueRef:pool"])
        );
        let unknown = client.call("VM.frobnicate", vec![json!(1)]).unwrap_err();
        assert_eq!(
            unknown,
            XapiError::Api {
                method: "VM.frobnicate".into(),
                code: "MESSAGE_METHOD_UNKNOWN".into(),
                params: vec!["VM.frobnicate".into()],
            }
        );
        assert_eq!(server.params(2), [json!("OpaqueRef:s"), json!(1)]);
    }

    #[test]
    fn concurrent_first_calls_share_one_login() {
        let server = pool_server();
        let client = Arc::new(server.client(Auth::LocalRoot));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let client = Arc::clone(&client);
                thread::spawn(move || client.power_state("OpaqueRef:a1"))
            })
            .collect();
        for t in threads {
            let _ = t.join().unwrap();
        }
        let logins = server
            .methods()
            .iter()
            .filter(|m| *m == "session.login_with_password")
            .count();
        assert_eq!(logins, 1);
    }
}
