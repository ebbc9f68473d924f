//! The client against the repository's XAPI simulator (tests/xapi_sim), over unix and http.
//!
//! Expectations are computed from the fixture the simulator loads, so the fixture can grow
//! without touching this file. When python3 or the simulator is missing the tests say
//! `SKIPPED:` and pass, except under CI (`CI` set and not empty), where they fail: a CI run
//! that cannot start the simulator has not tested the client.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use xapi::{Auth, Client, ClientOptions, Endpoint, Xapi, XapiError};

/// How long the simulator may take to print `LISTENING`; it needs well under a second.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);
/// How long a control call to the simulator may take.
const CONTROL_LIMIT: Duration = Duration::from_secs(30);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture_path() -> PathBuf {
    repo_root().join("tests/xapi_sim/fixtures/sample_pool.json")
}

/// Why the simulator cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let sim = repo_root().join("tests/xapi_sim");
    for needed in ["__init__.py", "__main__.py"] {
        if !sim.join(needed).is_file() {
            return Some(format!("tests/xapi_sim/{needed} not found"));
        }
    }
    if !fixture_path().is_file() {
        return Some("tests/xapi_sim/fixtures/sample_pool.json not found".into());
    }
    let python = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match python {
        Ok(status) if status.success() => None,
        _ => Some("python3 is not available".into()),
    }
}

/// What a test that needs the simulator does.
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    Run,
    /// Pass, saying so.
    Skip(String),
    Fail(String),
}

/// `ci` is the value of the `CI` variable; set and not empty, a missing simulator is a failure.
fn gate(missing: Option<String>, ci: Option<&OsStr>) -> Gate {
    match (missing, ci.is_some_and(|value| !value.is_empty())) {
        (None, _) => Gate::Run,
        (Some(reason), false) => Gate::Skip(format!("SKIPPED: XAPI simulator test: {reason}")),
        (Some(reason), true) => Gate::Fail(format!(
            "the XAPI simulator cannot run ({reason}), and CI is set: failing rather than skipping"
        )),
    }
}

/// Whether the calling test should go on; panics when it must fail instead.
fn simulator_available() -> bool {
    match gate(missing_prerequisite(), std::env::var_os("CI").as_deref()) {
        Gate::Run => true,
        Gate::Skip(line) => {
            // Straight to the process's stderr: the test harness captures `eprintln!` of passing
            // tests, and a skip must be seen.
            let _ = writeln!(std::io::stderr(), "{line}");
            false
        }
        Gate::Fail(message) => panic!("{message}"),
    }
}

macro_rules! require_simulator {
    () => {
        if !simulator_available() {
            return;
        }
    };
}

/// Starts `command`, which prints `LISTENING <endpoint>` once it serves (its stderr is left as
/// the caller set it). Fails, with the child killed, if it exits first or stays silent for
/// `limit`.
fn launch(mut command: Command, limit: Duration) -> Result<(Child, Endpoint), String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(url) = line.strip_prefix("LISTENING ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let outcome = match rx.recv_timeout(limit) {
        Ok(url) => Endpoint::parse(&url).map_err(|e| format!("LISTENING {url}: {e}")),
        // The reader stopped: stdout closed, so the process ended (or closed it) without serving.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = wait_briefly(&mut child);
            Err(format!("{command:?} ended before serving ({status})"))
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "{command:?} did not print LISTENING within {} s",
            limit.as_secs_f32()
        )),
    };
    match outcome {
        Ok(endpoint) => Ok((child, endpoint)),
        Err(message) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(message)
        }
    }
}

/// The exit status of a child that closed its stdout, if it exits within a moment.
fn wait_briefly(child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return format!("status unknown: {e}"),
        }
    }
    "still running with its stdout closed".into()
}

/// A running simulator; killed (by its own pid) when dropped.
struct Simulator {
    child: Child,
    endpoint: Endpoint,
    _dir: tempfile::TempDir,
}

impl Simulator {
    /// `listen` is `--unix` or `--port`.
    fn start(listen: &str) -> Simulator {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("python3");
        command
            .current_dir(repo_root())
            .env("PYTHONPATH", repo_root().join("tests"))
            .args(["-m", "xapi_sim", "serve", "--fixture"])
            .arg(fixture_path());
        match listen {
            "--unix" => command.arg("--unix").arg(dir.path().join("xapi.sock")),
            _ => command.args(["--port", "0"]),
        };
        let (child, endpoint) = launch(command, STARTUP_LIMIT)
            .unwrap_or_else(|message| panic!("the XAPI simulator did not start: {message}"));
        Simulator {
            child,
            endpoint,
            _dir: dir,
        }
    }

    fn client(&self, auth: Auth) -> Client {
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            ..ClientOptions::default()
        };
        Client::new(self.endpoint.clone(), auth, options)
    }
}

/// Sends `request` and reads the answer to the end, within [`CONTROL_LIMIT`] per read or write.
fn exchange(stream: &mut (impl Read + Write), request: &[u8]) -> Vec<u8> {
    let mut answer = Vec::new();
    stream.write_all(request).unwrap();
    stream.read_to_end(&mut answer).unwrap();
    answer
}

impl Simulator {
    /// A simulator control call (`sim.*`, no session), posted by hand so that the client under
    /// test is not involved.
    fn control(&self, method: &str, params: Value) -> Value {
        let body =
            json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}).to_string();
        let request = format!(
            "POST /jsonrpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let limit = Some(CONTROL_LIMIT);
        let answer = match &self.endpoint {
            Endpoint::Unix(path) => {
                let mut stream = std::os::unix::net::UnixStream::connect(path).unwrap();
                stream.set_read_timeout(limit).unwrap();
                stream.set_write_timeout(limit).unwrap();
                exchange(&mut stream, request.as_bytes())
            }
            Endpoint::Http { host, port } => {
                let mut stream = std::net::TcpStream::connect((host.as_str(), *port)).unwrap();
                stream.set_read_timeout(limit).unwrap();
                stream.set_write_timeout(limit).unwrap();
                exchange(&mut stream, request.as_bytes())
            }
            other => panic!("no control channel for {other}"),
        };
        let text = String::from_utf8(answer).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        let reply: Value = serde_json::from_str(body).unwrap();
        assert!(
            reply.get("error").is_none_or(Value::is_null),
            "{method}: {reply}"
        );
        reply["result"].clone()
    }

    /// Methods called since the last `sim.clear_call_log`.
    fn calls(&self) -> Vec<String> {
        let log = self.control("sim.call_log", json!([]));
        log.as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["method"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fixture() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_path()).unwrap()).unwrap()
}

fn flag(vm: &Value, name: &str) -> bool {
    vm.get(name).and_then(Value::as_bool).unwrap_or(false)
}

/// The fixture's ordinary VMs as (name_label, uuid, power_state), in `list_vms` order.
fn expected_vms(fixture: &Value) -> Vec<(String, String, String)> {
    let mut vms: Vec<_> = fixture["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|vm| {
            !flag(vm, "is_a_template")
                && !flag(vm, "is_a_snapshot")
                && !flag(vm, "is_control_domain")
        })
        .map(|vm| {
            (
                vm["name_label"].as_str().unwrap_or("").to_string(),
                vm["uuid"].as_str().unwrap().to_string(),
                vm["power_state"].as_str().unwrap_or("Halted").to_string(),
            )
        })
        .collect();
    vms.sort();
    vms
}

/// Credentials the simulator accepts over TCP: the fixture's first user, else its default.
fn password_auth(fixture: &Value) -> Auth {
    match fixture
        .get("users")
        .and_then(Value::as_object)
        .and_then(|u| u.iter().next())
    {
        Some((user, password)) => Auth::Password {
            user: user.clone(),
            password: password.as_str().unwrap_or("").to_string(),
        },
        None => Auth::Password {
            user: "root".into(),
            password: "password".into(),
        },
    }
}

fn exercise(sim: &Simulator, auth: Auth) {
    let fixture = fixture();
    let expected = expected_vms(&fixture);
    assert!(!expected.is_empty(), "the fixture should hold ordinary VMs");
    let client = sim.client(auth);

    // list_vms: one round trip (after the login), exactly the ordinary VMs, sorted by name then
    // uuid.
    client.session_ref().unwrap();
    sim.control("sim.clear_call_log", json!([]));
    let vms = client.list_vms().unwrap();
    assert_eq!(sim.calls(), ["VM.get_all_records_where"]);
    let listed: Vec<_> = vms
        .iter()
        .map(|vm| {
            (
                vm.name_label.clone(),
                vm.uuid.clone(),
                vm.power_state.clone(),
            )
        })
        .collect();
    assert_eq!(listed, expected);
    assert!(vms.iter().all(|vm| vm.opaque_ref.starts_with("OpaqueRef:")));

    // vm_by_uuid: found and not found.
    let first = &vms[0];
    let found = client.vm_by_uuid(&first.uuid).unwrap().unwrap();
    assert_eq!(&found, first);
    assert_eq!(
        client
            .vm_by_uuid("00000000-0000-4000-8000-000000000000")
            .unwrap(),
        None
    );

    // vms_by_name: every ordinary VM with that name, nothing for an unknown name.
    let named = client.vms_by_name(&first.name_label).unwrap();
    let expected_named: Vec<_> = expected
        .iter()
        .filter(|(name, _, _)| *name == first.name_label)
        .map(|(_, uuid, _)| uuid.clone())
        .collect();
    let mut named_uuids: Vec<_> = named.iter().map(|vm| vm.uuid.clone()).collect();
    named_uuids.sort();
    assert_eq!(named_uuids, expected_named);
    assert!(client
        .vms_by_name("no VM is called this, surely")
        .unwrap()
        .is_empty());

    // Platform map: set the whole map with one extra key, then set it back; the other keys
    // come through both writes unchanged.
    let key = "vgpu-xapi-test";
    let before = client.get_platform(&first.opaque_ref).unwrap();
    let mut with_key = before.clone();
    with_key.insert(key.to_string(), "v1 -x".to_string());
    client.set_platform(&first.opaque_ref, &with_key).unwrap();
    assert_eq!(client.get_platform(&first.opaque_ref).unwrap(), with_key);
    client.set_platform(&first.opaque_ref, &before).unwrap();
    let after = client.get_platform(&first.opaque_ref).unwrap();
    assert!(!after.contains_key(key));
    assert_eq!(after, before);

    // Power: take a halted-or-running VM through a full cycle.
    let vm = vms
        .iter()
        .find(|vm| vm.power_state == "Running" || vm.power_state == "Halted")
        .expect("the fixture should hold a running or halted VM");
    if client.power_state(&vm.opaque_ref).unwrap() == "Halted" {
        client.start(&vm.opaque_ref).unwrap();
    }
    assert_eq!(client.power_state(&vm.opaque_ref).unwrap(), "Running");
    client.clean_shutdown(&vm.opaque_ref, 30).unwrap();
    assert_eq!(client.power_state(&vm.opaque_ref).unwrap(), "Halted");
    let again = client.clean_shutdown(&vm.opaque_ref, 30).unwrap_err();
    assert_eq!(again.api_code(), Some("VM_BAD_POWER_STATE"));
    client.start(&vm.opaque_ref).unwrap();
    assert_eq!(client.power_state(&vm.opaque_ref).unwrap(), "Running");

    // Hosts.
    let master = client.pool_master().unwrap();
    let master_uuid = fixture["pool"]["master"].as_str().unwrap();
    assert_eq!(master.uuid, master_uuid);
    assert_eq!(
        client.host_by_uuid(master_uuid).unwrap(),
        Some(master.clone())
    );
    let args = BTreeMap::from([("k".to_string(), "v".to_string())]);
    let missing = client
        .call_plugin(&master.opaque_ref, "no-such-plugin", "f", &args)
        .unwrap_err();
    assert_eq!(missing.api_code(), Some("XENAPI_MISSING_PLUGIN"));
    assert_eq!(
        client
            .host_by_uuid("00000000-0000-4000-8000-000000000000")
            .unwrap(),
        None
    );

    // A long call is cut off at its own timeout, not the client's read timeout.
    sim.control(
        "sim.inject_fault",
        json!([{"method": "VM.clean_shutdown", "latency_ms": 2500}]),
    );
    let started = Instant::now();
    match client.clean_shutdown(&vm.opaque_ref, 1) {
        Err(XapiError::Timeout {
            method, seconds, ..
        }) => assert_eq!((method.as_str(), seconds), ("VM.clean_shutdown", 1)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(2400));

    // xapi's SESSION_INVALID (here injected) makes the client log in again and retry once.
    sim.control(
        "sim.inject_fault",
        json!([{"method": "VM.get_power_state", "code": "SESSION_INVALID", "params": ["x"]}]),
    );
    sim.control("sim.clear_call_log", json!([]));
    client.power_state(&vm.opaque_ref).unwrap();
    assert_eq!(
        sim.calls(),
        [
            "VM.get_power_state",
            "session.login_with_password",
            "VM.get_power_state"
        ]
    );

    // A session that xapi forgot is replaced transparently.
    let before = client.session_ref().unwrap();
    client.call("session.logout", vec![]).unwrap();
    assert_eq!(client.list_vms().unwrap().len(), expected.len());
    assert_ne!(client.session_ref().unwrap(), before);

    // Someone else's session is used as given and survives our client.
    let borrowed = sim.client(Auth::Session(client.session_ref().unwrap()));
    assert_eq!(borrowed.list_vms().unwrap().len(), expected.len());
    drop(borrowed);
    assert_eq!(client.list_vms().unwrap().len(), expected.len());

    // Our own session is gone after logout.
    let session = client.session_ref().unwrap();
    client.logout().unwrap();
    let stale = sim.client(Auth::Session(session));
    let error = stale.list_vms().unwrap_err();
    assert_eq!(error.api_code(), Some("SESSION_INVALID"));
}

#[test]
fn over_the_unix_socket_as_local_root() {
    require_simulator!();
    let sim = Simulator::start("--unix");
    assert!(sim.endpoint.is_unix(), "{}", sim.endpoint);
    exercise(&sim, Auth::LocalRoot);
}

#[test]
fn over_http_with_a_password() {
    require_simulator!();
    let sim = Simulator::start("--port");
    assert!(
        matches!(sim.endpoint, Endpoint::Http { .. }),
        "{}",
        sim.endpoint
    );
    exercise(&sim, password_auth(&fixture()));
}

#[test]
fn wrong_password_is_refused_over_http() {
    require_simulator!();
    let sim = Simulator::start("--port");
    let client = sim.client(Auth::Password {
        user: "root".into(),
        password: "certainly not the password".into(),
    });
    let error = client.list_vms().unwrap_err();
    assert_eq!(error.api_code(), Some("SESSION_AUTHENTICATION_FAILED"));
}

#[test]
fn a_missing_simulator_skips_loudly_but_fails_under_ci() {
    let missing = || Some("python3 is not available".to_string());
    assert_eq!(gate(None, None), Gate::Run);
    assert_eq!(gate(None, Some(OsStr::new("true"))), Gate::Run);
    let skip = Gate::Skip("SKIPPED: XAPI simulator test: python3 is not available".into());
    assert_eq!(gate(missing(), None), skip);
    // An empty CI is the same as none, as CI systems that set it give it a value.
    assert_eq!(gate(missing(), Some(OsStr::new(""))), skip);
    for ci in ["true", "1", "yes"] {
        match gate(missing(), Some(OsStr::new(ci))) {
            Gate::Fail(message) => {
                assert!(message.contains("python3 is not available"), "{message}")
            }
            other => panic!("CI={ci}: {other:?}"),
        }
    }
}

#[test]
fn a_simulator_that_exits_at_start_fails_at_once() {
    let mut command = Command::new("sh");
    command.args(["-c", "echo starting; exit 3"]);
    let started = Instant::now();
    let message = launch(command, Duration::from_secs(20))
        .map(drop)
        .unwrap_err();
    assert!(message.contains("ended before serving"), "{message}");
    assert!(message.contains("exit status: 3"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_simulator_that_never_listens_is_given_up_on() {
    let mut command = Command::new("sh");
    command.args(["-c", "echo starting; exec sleep 60"]);
    let started = Instant::now();
    let message = launch(command, Duration::from_millis(500))
        .map(drop)
        .unwrap_err();
    assert!(
        message.contains("did not print LISTENING within 0.5 s"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_real_simulator_with_a_broken_fixture_fails_at_once() {
    require_simulator!();
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("python3");
    command
        .current_dir(repo_root())
        .env("PYTHONPATH", repo_root().join("tests"))
        .args(["-m", "xapi_sim", "serve", "--fixture"])
        .arg(dir.path().join("absent.json"))
        .arg("--unix")
        .arg(dir.path().join("xapi.sock"))
        // Its traceback is expected here, and would only clutter the test output.
        .stderr(Stdio::null());
    let started = Instant::now();
    let message = launch(command, STARTUP_LIMIT).map(drop).unwrap_err();
    assert!(message.contains("ended before serving"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}
