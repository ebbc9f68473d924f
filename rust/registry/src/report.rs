//! The JSON contract (SPEC §3): the typed results every front end renders. `--format json`,
//! `vgpu-admin call` and the plugin serialise these; the table renderer reads the same values.

use crate::error::VmRef;
use crate::functions::ResultKind;
use crate::model::{Pool, Registration};
use serde::{Deserialize, Serialize};

/// A VM's power state, as xapi spells it (`Running`, `Halted`, …) in JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerState {
    Running,
    Halted,
    Paused,
    Suspended,
    /// A state this version does not know, kept as xapi spelled it.
    Other(String),
}

impl PowerState {
    pub fn from_xapi(s: &str) -> PowerState {
        match s {
            "Running" => PowerState::Running,
            "Halted" => PowerState::Halted,
            "Paused" => PowerState::Paused,
            "Suspended" => PowerState::Suspended,
            other => PowerState::Other(other.to_string()),
        }
    }

    /// xapi's spelling.
    pub fn as_xapi(&self) -> &str {
        match self {
            PowerState::Running => "Running",
            PowerState::Halted => "Halted",
            PowerState::Paused => "Paused",
            PowerState::Suspended => "Suspended",
            PowerState::Other(s) => s,
        }
    }
}

/// Lower case, as messages and tables show it.
impl std::fmt::Display for PowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_xapi().to_lowercase())
    }
}

impl Serialize for PowerState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_xapi())
    }
}

impl<'de> Deserialize<'de> for PowerState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(PowerState::from_xapi(&String::deserialize(d)?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmStatus {
    Configured,
    Drift,
    NotApplied,
    Stale,
    /// Only in sync results: a VM that is not registered but carries another VM's copy.
    Unregistered,
}

impl VmStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VmStatus::Configured => "configured",
            VmStatus::Drift => "drift",
            VmStatus::NotApplied => "not_applied",
            VmStatus::Stale => "stale",
            VmStatus::Unregistered => "unregistered",
        }
    }
}

/// The fields compared between the registry and the VM's vgpu device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftField {
    DeviceType,
    Pool,
    Priority,
    VmId,
}

impl DriftField {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftField::DeviceType => "device_type",
            DriftField::Pool => "pool",
            DriftField::Priority => "priority",
            DriftField::VmId => "vm_id",
        }
    }
}

/// One difference between the registry and the VM's vgpu device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    pub field: DriftField,
    pub registry: String,
    /// Null when the device lacks the property.
    pub device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanRegistered {
    #[serde(flatten)]
    pub registration: Registration,
    pub power_state: PowerState,
    pub device_model_args: Option<String>,
    pub status: VmStatus,
    pub drift: Vec<Drift>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The registry's copy in XAPI for this VM: `ok`, `missing` or `stale`.
    #[serde(default = "mirror_ok")]
    pub mirror: String,
}

fn mirror_ok() -> String {
    "ok".into()
}

/// The vgpu device an unregistered VM already carries, as written (what `adopt` would read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoundDevice {
    pub device_type: String,
    pub pool: Option<String>,
    pub priority: Option<String>,
    pub vm_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanUnregistered {
    pub vm_uuid: String,
    pub vm_name: String,
    pub power_state: PowerState,
    pub device_model_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<FoundDevice>,
    /// `orphan` when XAPI's copy registers this VM but the registry does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stale {
    #[serde(flatten)]
    pub registration: Registration,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScanSummary {
    pub total_vms: usize,
    pub registered: usize,
    pub unregistered: usize,
    pub stale: usize,
    pub configured: usize,
    pub drift: usize,
    pub not_applied: usize,
    /// Registered VMs whose copy in XAPI is missing or stale.
    #[serde(default)]
    pub mirror_drift: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanReport {
    pub registered: Vec<ScanRegistered>,
    pub unregistered: Vec<ScanUnregistered>,
    pub stale: Vec<Stale>,
    pub summary: ScanSummary,
}

/// The result of a mutating command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    #[serde(flatten)]
    pub registration: Registration,
    /// The VM's device-model-args now carry the registry values (or, for a removal, no longer
    /// carry a vgpu device).
    pub applied: bool,
    /// The VM is not halted and was not restarted: QEMU sees the change at its next start.
    pub pending_restart: bool,
    pub restarted: bool,
    /// Null when the VM no longer exists.
    pub power_state: Option<PowerState>,
    pub device_model_args: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// Each other host's replica, refreshed after the change (only on a pool master).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<ReplicaStatus>>,
    /// Each mediator asked to reload after the change (hosts without one are left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reloads: Option<Vec<MediatorAnswer>>,
    /// For a change of the mediator's controls: whether every mediator the change needs has
    /// loaded it (a weight is read on every request; rate limits and quarantine at a reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_effect: Option<bool>,
}

/// One mediator's answer (`mediator …`, and the reloads after a change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediatorAnswer {
    pub host: String,
    pub name: String,
    pub ok: bool,
    /// The mediator's status (0 = ok); null when it did not answer.
    pub status: Option<u32>,
    pub text: Option<String>,
    pub error: Option<String>,
    /// The host has no mediator (no admin socket): nothing was asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub absent: bool,
    /// `metrics` with `prometheus`: the samples of the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<Vec<PromSample>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromSample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShowReport {
    #[serde(flatten)]
    pub registration: Registration,
    pub power_state: Option<PowerState>,
    pub device_model_args: Option<String>,
    pub status: VmStatus,
    pub drift: Vec<Drift>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// A pool with its counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub pool_id: Pool,
    pub pool_name: String,
    pub description: Option<String>,
    pub enabled: bool,
    pub vm_count: u64,
    pub by_priority: ByPriority,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ByPriority {
    pub low: u64,
    pub medium: u64,
    pub high: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolDetail {
    #[serde(flatten)]
    pub pool: PoolInfo,
    pub vms: Vec<Registration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub vm_uuid: String,
    pub vm_name: Option<String>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub pools: Vec<PoolInfo>,
    pub summary: ScanSummary,
    pub drift: Vec<VmRef>,
    pub not_applied: Vec<VmRef>,
    pub unregistered: Vec<VmRef>,
    pub stale: Vec<VmRef>,
    pub problems: Vec<Problem>,
    /// About the registry itself (e.g. a file other users may read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Registered VMs whose copy in XAPI is missing or stale (`sync` repairs them).
    #[serde(default)]
    pub mirror_drift: Vec<VmRef>,
    /// The pool's registry generation (null: nothing published yet).
    #[serde(default)]
    pub generation: Option<u64>,
    /// Every host and the generation its replica holds.
    #[serde(default)]
    pub hosts: Vec<HostReplica>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncAction {
    Unchanged,
    Applied,
    Renamed,
    WouldApply,
    WouldRename,
    /// Only the registry's copy in XAPI was rewritten.
    Mirrored,
    WouldMirror,
    Stale,
    Failed,
}

/// One value a sync changes (or, in a dry run, would change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncChange {
    /// `vm_name` or `device_model_args`.
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncItem {
    pub vm_uuid: String,
    pub vm_name: Option<String>,
    pub status_before: VmStatus,
    pub action: SyncAction,
    pub pending_restart: bool,
    pub restarted: bool,
    /// Old and new value of everything the sync changes, or would change.
    #[serde(default)]
    pub changes: Vec<SyncChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncReport {
    pub dry_run: bool,
    pub results: Vec<SyncItem>,
    pub failed: usize,
    /// Each other host's replica, refreshed after the change (absent when nothing changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<ReplicaStatus>>,
    /// Each mediator asked to reload after the change (hosts without one are left out).
    #[serde(default, skip_serializing_if = "no_reloads")]
    pub reloads: Option<Vec<MediatorAnswer>>,
}

/// A host's replica after a change, as the master's fan-out saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The host's uuid.
    pub host: String,
    pub name: String,
    pub ok: bool,
    /// The generation the replica holds now (null when the refresh failed).
    pub generation: Option<u64>,
    pub error: Option<String>,
    /// What the host's mediator answered to the reload that followed (absent: not asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<MediatorAnswer>,
}

/// `refresh`: what this host's registry file holds now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshReport {
    pub host: String,
    pub name: String,
    /// `replica` on a member, `primary` on the master.
    pub role: String,
    /// The pool's generation, which this file now holds (null: nothing published yet).
    pub generation: Option<u64>,
    pub previous_generation: Option<u64>,
    /// Whether the file was rewritten.
    pub changed: bool,
    /// Registrations the file holds.
    pub vms: usize,
    /// Mirror values that are not registry rows, left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// With `reload`: what this host's mediator answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<MediatorAnswer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One host in `status`: the generation its replica records and how far behind it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReplica {
    pub host: String,
    pub name: String,
    pub master: bool,
    pub generation: Option<u64>,
    /// Generations behind the pool's (null on the master, or when nothing is published).
    pub behind: Option<u64>,
}

/// A VM that `adopt`, `rebuild` or `refresh` left alone, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub vm_uuid: String,
    pub vm_name: Option<String>,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_model_args: Option<String>,
}

/// A VM `adopt` registered (or, in a dry run, would register).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adopted {
    pub vm_uuid: String,
    pub vm_name: Option<String>,
    pub pool: Pool,
    pub priority: crate::model::Priority,
    pub vm_id: u32,
    /// device-model-args before and after.
    pub before: Option<String>,
    pub after: Option<String>,
    pub pending_restart: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdoptReport {
    pub dry_run: bool,
    pub adopted: Vec<Adopted>,
    pub skipped: Vec<Skipped>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<ReplicaStatus>>,
    /// Each mediator asked to reload after the change (hosts without one are left out).
    #[serde(default, skip_serializing_if = "no_reloads")]
    pub reloads: Option<Vec<MediatorAnswer>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebuildReport {
    pub dry_run: bool,
    /// Where the registry that was there went.
    pub backup: Option<String>,
    /// Registrations restored from the mirror.
    pub restored: usize,
    /// The pool's generation the rebuild started from.
    pub generation: Option<u64>,
    /// Mirror values that could not be restored.
    pub skipped: Vec<Skipped>,
    /// Then, VMs with a device but no mirror.
    pub adopt: AdoptReport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<ReplicaStatus>>,
    /// Each mediator asked to reload after the change (hosts without one are left out).
    #[serde(default, skip_serializing_if = "no_reloads")]
    pub reloads: Option<Vec<MediatorAnswer>>,
}

fn no_reloads(r: &Option<Vec<MediatorAnswer>>) -> bool {
    r.as_ref().is_none_or(Vec::is_empty)
}

/// The result of any function; serialises to the contract's JSON document.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Scan(ScanReport),
    Applied(Applied),
    Show(ShowReport),
    List(Vec<Registration>),
    Pools(Vec<PoolInfo>),
    Pool(PoolDetail),
    Status(StatusReport),
    Sync(SyncReport),
    Refresh(RefreshReport),
    Adopt(AdoptReport),
    Rebuild(RebuildReport),
    Mediator(Vec<MediatorAnswer>),
}

impl Outcome {
    /// Reads back the JSON document of a function whose result is `kind` (a forwarded call's
    /// answer).
    pub(crate) fn from_json(kind: ResultKind, text: &str) -> serde_json::Result<Outcome> {
        use serde_json::from_str;
        Ok(match kind {
            ResultKind::Scan => Outcome::Scan(from_str(text)?),
            ResultKind::Applied => Outcome::Applied(from_str(text)?),
            ResultKind::Show => Outcome::Show(from_str(text)?),
            ResultKind::List => Outcome::List(from_str(text)?),
            ResultKind::Pools => Outcome::Pools(from_str(text)?),
            ResultKind::Pool => Outcome::Pool(from_str(text)?),
            ResultKind::Status => Outcome::Status(from_str(text)?),
            ResultKind::Sync => Outcome::Sync(from_str(text)?),
            ResultKind::Refresh => Outcome::Refresh(from_str(text)?),
            ResultKind::Adopt => Outcome::Adopt(from_str(text)?),
            ResultKind::Rebuild => Outcome::Rebuild(from_str(text)?),
            ResultKind::Mediator => Outcome::Mediator(from_str(text)?),
        })
    }

    /// Whether the call did its work but some of it failed (a sync with failed VMs): the CLI
    /// exits 1 after printing the result.
    pub fn partly_failed(&self) -> bool {
        match self {
            Outcome::Sync(r) => r.failed > 0,
            Outcome::Adopt(r) => !r.skipped.is_empty(),
            Outcome::Rebuild(r) => !r.adopt.skipped.is_empty() || !r.skipped.is_empty(),
            Outcome::Applied(a) => a.in_effect == Some(false),
            Outcome::Mediator(m) => m.iter().any(|a| !a.ok && !a.absent),
            _ => false,
        }
    }

    /// Records the mediators asked to reload after this change.
    pub(crate) fn set_reloads(&mut self, reloads: Vec<MediatorAnswer>) {
        match self {
            Outcome::Applied(a) => a.reloads = Some(reloads),
            Outcome::Sync(s) => s.reloads = Some(reloads),
            Outcome::Adopt(a) => a.reloads = Some(reloads),
            Outcome::Rebuild(r) => r.reloads = Some(reloads),
            _ => {}
        }
    }

    /// Records the replicas the master refreshed after this change.
    pub(crate) fn set_replicas(&mut self, replicas: Vec<ReplicaStatus>) {
        match self {
            Outcome::Applied(a) => a.replicas = Some(replicas),
            Outcome::Sync(s) => s.replicas = Some(replicas),
            Outcome::Adopt(a) => a.replicas = Some(replicas),
            Outcome::Rebuild(r) => r.replicas = Some(replicas),
            _ => {}
        }
    }

    /// The JSON document as one line of ASCII: every non-ASCII character is written as a `\u`
    /// escape of UTF-16 units, as the plugin must answer in ASCII (xapi runs it without a
    /// locale).
    pub fn to_ascii_json(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_else(|e| {
            // Serialising these types cannot fail (string keys, no maps of non-strings).
            format!("{{\"error\":\"serialising the result: {e}\"}}")
        });
        ascii_json(&text)
    }
}

/// JSON text with every non-ASCII character escaped; the meaning is unchanged.
pub fn ascii_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_json_escapes_everything_else() {
        let v = serde_json::json!({"n": "café ✓ 😀"});
        let s = ascii_json(&v.to_string());
        assert!(s.is_ascii());
        assert!(s.contains("\\ud83d\\ude00"), "{s}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&s).unwrap(), v);
    }

    #[test]
    fn power_state_keeps_xapi_spelling_and_unknown_states() {
        let p: PowerState = serde_json::from_str("\"Crashed\"").unwrap();
        assert_eq!(p, PowerState::Other("Crashed".into()));
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"Crashed\"");
        assert_eq!(
            serde_json::to_string(&PowerState::Running).unwrap(),
            "\"Running\""
        );
        assert_eq!(PowerState::Paused.to_string(), "paused");
    }
}
