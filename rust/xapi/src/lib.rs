//! XAPI access for vgpu-registry.
//!
//! The registry core talks to XAPI only through the [`Xapi`] trait, so tests can supply an
//! in-memory pool and the plugin can supply the session xapi handed to it. [`Client`] is the real
//! implementation: JSON-RPC at `/jsonrpc` over `unix:`, `http://` or `https://`.

use std::collections::BTreeMap;

mod client;
mod endpoint;
#[doc(hidden)]
pub mod fuzzing;
mod records;
mod transport;
mod unicode;
mod unix;

pub use client::{Auth, Client, ClientOptions};
pub use endpoint::Endpoint;
pub use records::NULL_REF;

/// One VM as the registry needs it (a subset of xapi's VM record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecord {
    /// `OpaqueRef:…` handle, valid for this connection's pool.
    pub opaque_ref: String,
    pub uuid: String,
    pub name_label: String,
    /// xapi's spelling: `Halted`, `Running`, `Paused`, `Suspended`.
    pub power_state: String,
    pub platform: BTreeMap<String, String>,
    pub is_a_template: bool,
    pub is_a_snapshot: bool,
    pub is_control_domain: bool,
    /// `OpaqueRef:NULL` when the VM runs nowhere.
    pub resident_on: String,
    pub other_config: BTreeMap<String, String>,
}

/// A host of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub opaque_ref: String,
    pub uuid: String,
    pub name_label: String,
    pub other_config: BTreeMap<String, String>,
}

/// The pool object: who is master, and the pool-wide `other_config` map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRecord {
    pub opaque_ref: String,
    /// The master's host ref.
    pub master: String,
    pub other_config: BTreeMap<String, String>,
}

/// The classes whose `other_config` map the registry writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Vm,
    Host,
    Pool,
}

impl Class {
    /// The class as xapi's method names spell it.
    pub fn api_name(self) -> &'static str {
        match self {
            Class::Vm => "VM",
            Class::Host => "host",
            Class::Pool => "pool",
        }
    }
}

/// One `host.call_plugin` of a batch run in parallel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginCall {
    pub host_ref: String,
    pub plugin: String,
    pub function: String,
    pub args: BTreeMap<String, String>,
}

/// Everything that can go wrong talking to XAPI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XapiError {
    /// xapi answered with an error: its code (e.g. `HANDLE_INVALID`) and parameters, kept verbatim.
    #[error("{method}: {code}{}", fmt_params(.params))]
    Api {
        method: String,
        code: String,
        params: Vec<String>,
    },
    /// The endpoint URL is not one we understand.
    #[error("invalid XAPI endpoint {0:?}: expected unix:/path, http://host[:port] or https://host[:port]")]
    InvalidEndpoint(String),
    /// Could not connect, or the connection broke.
    #[error("cannot reach XAPI at {endpoint}: {reason}")]
    Transport { endpoint: String, reason: String },
    /// Connect or read timeout.
    #[error("XAPI at {endpoint} did not answer {method} within {seconds} s")]
    Timeout {
        endpoint: String,
        method: String,
        seconds: u64,
    },
    /// The answer was not the JSON-RPC we expect.
    #[error("unexpected answer from XAPI to {method}: {reason}")]
    Protocol { method: String, reason: String },
}

fn fmt_params(params: &[String]) -> String {
    if params.is_empty() {
        String::new()
    } else {
        format!(" [{}]", params.join(", "))
    }
}

impl XapiError {
    /// xapi's error code, when xapi produced one.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            XapiError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether xapi may have carried the call out although no answer says so: the connection
    /// broke or the answer was late or unreadable. Only an error reply from xapi (or a request
    /// that never left) tells for sure that nothing was done. A call that failed this way is
    /// never repeated as is: see `docs/decisions/0010-xapi-faults.md`.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            XapiError::Transport { .. } | XapiError::Timeout { .. } | XapiError::Protocol { .. }
        )
    }
}

pub type Result<T, E = XapiError> = std::result::Result<T, E>;

/// The XAPI operations vgpu-registry uses. Object handles are xapi opaque refs.
pub trait Xapi {
    /// Every VM that is not a template, snapshot or control domain, in one round trip
    /// (`VM.get_all_records_where`).
    fn list_vms(&self) -> Result<Vec<VmRecord>>;
    /// The VMs of [`list_vms`](Self::list_vms), each handed to `each` as it is read, in no
    /// particular order: a whole pool's VMs are never held at once. On an error, the VMs handed
    /// out so far are to be discarded. The default lists them first (in-memory pools).
    fn for_each_vm(&self, each: &mut dyn FnMut(VmRecord)) -> Result<()> {
        self.list_vms()?.into_iter().for_each(each);
        Ok(())
    }
    /// The VM with this uuid, or `None` when xapi knows no such VM (`UUID_INVALID`).
    fn vm_by_uuid(&self, uuid: &str) -> Result<Option<VmRecord>>;
    /// VMs whose name-label is exactly `name` (templates, snapshots and control domains excluded).
    fn vms_by_name(&self, name: &str) -> Result<Vec<VmRecord>>;
    /// The VM's current platform map (`VM.get_platform`).
    fn get_platform(&self, vm_ref: &str) -> Result<BTreeMap<String, String>>;
    /// `VM.set_platform`: replaces the whole platform map in one write. xapi has no per-key
    /// replace, and a remove followed by an add leaves the key missing in between; see
    /// `docs/decisions/0012-platform-write.md`.
    fn set_platform(&self, vm_ref: &str, platform: &BTreeMap<String, String>) -> Result<()>;
    /// `VM.get_power_state`.
    fn power_state(&self, vm_ref: &str) -> Result<String>;
    /// `VM.clean_shutdown`, waiting at most `timeout_s` seconds for it to finish.
    fn clean_shutdown(&self, vm_ref: &str, timeout_s: u64) -> Result<()>;
    /// `VM.start(vm, start_paused=false, force=false)`.
    fn start(&self, vm_ref: &str) -> Result<()>;
    /// The pool master (`pool.get_all_records` → `host.get_record`).
    fn pool_master(&self) -> Result<HostRecord> {
        let pool = self.pool()?;
        self.host_record(&pool.master)
    }
    /// The pool object, in one round trip (`pool.get_all_records`).
    fn pool(&self) -> Result<PoolRecord>;
    /// Every host of the pool, in one round trip (`host.get_all_records`).
    fn hosts(&self) -> Result<Vec<HostRecord>>;
    /// `host.get_record`.
    fn host_record(&self, host_ref: &str) -> Result<HostRecord>;
    /// `<class>.add_to_other_config` (fails with `MAP_DUPLICATE_KEY` when the key exists).
    fn add_to_other_config(
        &self,
        class: Class,
        obj_ref: &str,
        key: &str,
        value: &str,
    ) -> Result<()>;
    /// `<class>.remove_from_other_config` (no error when the key is absent).
    fn remove_from_other_config(&self, class: Class, obj_ref: &str, key: &str) -> Result<()>;
    /// `host.get_by_uuid` → `host.get_record`; `None` when no such host.
    fn host_by_uuid(&self, uuid: &str) -> Result<Option<HostRecord>>;
    /// `host.call_plugin(host, plugin, fn, args)`: the plugin's string result.
    fn call_plugin(
        &self,
        host_ref: &str,
        plugin: &str,
        function: &str,
        args: &BTreeMap<String, String>,
    ) -> Result<String>;
    /// Runs `calls` at once, each bounded by `timeout`; the answers in the order of `calls`.
    /// The default runs them one after the other (in-memory pools answer at once).
    fn call_plugins(
        &self,
        calls: &[PluginCall],
        timeout: std::time::Duration,
    ) -> Vec<Result<String>> {
        let _ = timeout;
        calls
            .iter()
            .map(|c| self.call_plugin(&c.host_ref, &c.plugin, &c.function, &c.args))
            .collect()
    }
}
