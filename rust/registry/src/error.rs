//! The one error type of the core. Each variant carries what a good message needs, keeps the
//! error that caused it as its source, and maps to one stable error code of the contract
//! (SPEC §3). Messages are worded for every front end: no command-line flag appears here; each
//! front end adds its own hint from the code and the details.

use crate::model::{Pool, Priority, Selector};
use crate::report::PowerState;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use xapi::XapiError;

/// Declares the error codes once: the enum, its stable spelling and its list.
macro_rules! error_codes {
    ($($variant:ident => $text:literal,)*) => {
        /// Stable error codes. The CLI prints them bare, the plugin prefixes `VGPU_`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }
        }
    };
}

error_codes! {
    InvalidArgument => "INVALID_ARGUMENT",
    VmNotFound => "VM_NOT_FOUND",
    AmbiguousVmName => "AMBIGUOUS_VM_NAME",
    NotRegistered => "NOT_REGISTERED",
    AlreadyRegistered => "ALREADY_REGISTERED",
    VmIdInUse => "VM_ID_IN_USE",
    NoFreeVmId => "NO_FREE_VM_ID",
    XapiError => "XAPI_ERROR",
    DatabaseError => "DATABASE_ERROR",
    ConfirmationRequired => "CONFIRMATION_REQUIRED",
    VmState => "VM_STATE",
    Internal => "INTERNAL",
    ConfigError => "CONFIG_ERROR",
}

impl ErrorCode {
    /// Parses a code with or without the plugin's `VGPU_` prefix.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        let bare = s.strip_prefix("VGPU_").unwrap_or(s);
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == bare)
    }

    /// Exit status of `vgpu-admin`: 2 for invalid usage or argument, 1 for anything else.
    pub fn exit_status(self) -> u8 {
        match self {
            ErrorCode::InvalidArgument => 2,
            _ => 1,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VM as named in an error: uuid plus the name when known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct VmRef {
    pub vm_uuid: String,
    pub vm_name: Option<String>,
}

impl std::fmt::Display for VmRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uuid = crate::model::printable(&self.vm_uuid);
        match &self.vm_name {
            Some(n) => write!(f, "{} ({})", uuid, crate::model::printable(n)),
            None => f.write_str(&uuid),
        }
    }
}

/// How a front end names an argument key in its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStyle {
    /// The plugin API's `key` / `key=true` (the plugin, Python, `vgpu-admin call`).
    Api,
    /// The command line's `--key`.
    Cli,
}

impl KeyStyle {
    pub fn key(self, key: &str) -> String {
        let flag = crate::functions::arg(key).is_some_and(|a| a.flag);
        match (self, flag) {
            (KeyStyle::Api, true) => format!("{key}=true"),
            (KeyStyle::Api, false) => key.to_string(),
            (KeyStyle::Cli, _) => format!("--{key}"),
        }
    }

    fn list(self, keys: &[&str], last: &str) -> String {
        let named: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        match named.split_last() {
            Some((tail, head)) if !head.is_empty() => format!("{} {last} {tail}", head.join(", ")),
            Some((only, _)) => only.clone(),
            None => String::new(),
        }
    }
}

/// A call that is missing arguments or combines arguments that exclude each other: about
/// argument keys, which each front end spells its own way ([`KeyStyle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    /// `function` needs one of `keys` (all of them when there is one).
    Missing {
        function: &'static str,
        keys: Vec<&'static str>,
        /// What the keys are for, e.g. "the VM".
        what: Option<&'static str>,
    },
    /// `function` takes only one of `keys`.
    Conflict {
        function: &'static str,
        keys: Vec<&'static str>,
    },
}

impl Usage {
    pub fn render(&self, style: KeyStyle) -> String {
        let function = match self {
            Usage::Missing { function, .. } | Usage::Conflict { function, .. } => function,
        };
        self.render_as(style, function)
    }

    /// The message with the function called `function` (a front end's own command name).
    pub fn render_as(&self, style: KeyStyle, function: &str) -> String {
        match self {
            Usage::Missing { keys, what, .. } => {
                let keys_text = style.list(keys, "or");
                match (what, keys.len()) {
                    (Some(w), _) => format!("{function} needs {w}: {keys_text}"),
                    (None, 1) => {
                        let expects = crate::functions::arg(keys[0]).map_or("", |a| a.expects);
                        format!("{function} needs {keys_text} ({expects})")
                    }
                    (None, _) => format!("{function} needs at least one of {keys_text}"),
                }
            }
            Usage::Conflict { keys, .. } if keys.len() == 2 => {
                format!("{function} takes {}, not both", style.list(keys, "or"))
            }
            Usage::Conflict { keys, .. } => {
                format!("{function} takes only one of {}", style.list(keys, "or"))
            }
        }
    }

    fn keys(&self) -> &[&'static str] {
        match self {
            Usage::Missing { keys, .. } | Usage::Conflict { keys, .. } => keys,
        }
    }
}

/// What was left behind when a registry commit failed after the VM had been written.
#[derive(Debug)]
pub enum CommitAftermath {
    /// device-model-args were put back: nothing changed.
    Restored,
    /// Putting them back failed too: the VM keeps the new value until repaired by hand.
    Unrestored {
        restore: Box<XapiError>,
        /// The device-model-args the VM is left with (`None`: none at all).
        left: Option<String>,
        repair_command: String,
    },
}

impl std::fmt::Display for CommitAftermath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitAftermath::Restored => {
                f.write_str("device-model-args were put back; nothing was changed")
            }
            CommitAftermath::Unrestored {
                restore,
                left,
                repair_command,
            } => {
                write!(
                    f,
                    "putting device-model-args back also failed ({restore}); the registry is \
                     unchanged but the VM now has "
                )?;
                match left {
                    Some(v) => write!(f, "device-model-args {v:?}")?,
                    None => f.write_str("no device-model-args")?,
                }
                write!(f, "; restore them with: {repair_command}")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input. `value` is shown with escapes so control characters stay visible.
    #[error("invalid {what} {:?}: {reason}", clip(.value))]
    InvalidArgument {
        what: String,
        value: String,
        reason: String,
    },
    /// Bad usage that is not about one value (missing or conflicting arguments).
    #[error("{}", .0.render(KeyStyle::Api))]
    Usage(Usage),
    /// Bad settings of this front end or host, not of the call (e.g. no XAPI password).
    #[error("{message}")]
    Setting {
        /// The setting that is missing or wrong, as the config file names it.
        setting: &'static str,
        message: String,
    },
    /// The configuration file exists but cannot be read.
    #[error("cannot read the configuration file {}: {source}", .path.display())]
    ConfigUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no VM {selector} in the pool")]
    VmNotFound { selector: Selector },
    #[error("{} VMs are named {name:?}: {}", .candidates.len(), list_vms(.candidates))]
    AmbiguousVmName {
        name: String,
        candidates: Vec<VmRef>,
    },
    #[error("{} VMs have a uuid starting {prefix}: {}", .candidates.len(), list_vms(.candidates))]
    AmbiguousUuidPrefix {
        prefix: String,
        candidates: Vec<VmRef>,
    },
    #[error("VM {vm} is not registered")]
    NotRegistered { vm: VmRef },
    #[error("VM {vm} is already registered (pool {pool}, priority {priority}, vm_id {vm_id})")]
    AlreadyRegistered {
        vm: VmRef,
        pool: Pool,
        priority: Priority,
        vm_id: i64,
    },
    #[error("VM ID {vm_id} already in use by VM {owner}")]
    VmIdInUse {
        vm_id: u32,
        owner: VmRef,
        next_free: Option<u32>,
    },
    #[error("no free vm_id left (every id from 1 to 4294967295 is taken)")]
    NoFreeVmId,
    /// An XAPI call failed. `context` says what was being done and what state remains.
    #[error("{context}: {source}")]
    Xapi {
        context: String,
        #[source]
        source: XapiError,
    },
    /// An XAPI write whose answer was lost, and putting the old value back failed: the VM may be
    /// left changed.
    /// The repair command ends the message so it can be copied from the end of the line.
    #[error("{context} ({source}); putting the previous value back also failed ({restore}): the registry is unchanged but VM {vm} may be left with the new device-model-args; restore them with: {repair_command}")]
    XapiUnrestored {
        context: String,
        #[source]
        source: Box<XapiError>,
        restore: Box<XapiError>,
        vm: VmRef,
        repair_command: String,
    },
    /// SQLite failed.
    #[error("database {}: {source}", .path.display())]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The migration of an older database failed; its transaction rolled back.
    #[error("database {}: migration to schema {version} failed, database left unchanged: {source}", .path.display())]
    Migration {
        path: PathBuf,
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    /// The registry's directory could not be created.
    /// The registry or its backup could not be created.
    #[error("database {}: cannot create {}: {source}", .path.display(), .file.display())]
    CreateFile {
        path: PathBuf,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database {}: cannot create directory {}: {source}", .path.display(), .dir.display())]
    DatabaseDir {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A path on the way to the registry is a file.
    #[error("database {}: {} is not a directory", .path.display(), .file.display())]
    NotADirectory { path: PathBuf, file: PathBuf },
    #[error("database {}: schema version {found} is newer than this vgpu-registry understands ({supported}); upgrade vgpu-registry", .path.display())]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("database {}: cannot switch to WAL journal mode (still {mode})", .path.display())]
    NotWal { path: PathBuf, mode: String },
    /// Another process held the registry's write lock for the whole busy timeout.
    #[error("database {}: still locked by another process after {waited_s} s; nothing was changed", .path.display())]
    Locked { path: PathBuf, waited_s: u64 },
    /// The registry commit failed after the VM's device-model-args had been written.
    #[error("{source}; {aftermath}{}", if .source.answer_lost() { ANSWER_LOST } else { "" })]
    CommitFailed {
        #[source]
        source: Box<Error>,
        vm: VmRef,
        aftermath: CommitAftermath,
    },
    #[error(
        "restarting would shut down and start running VM {vm}: the restart needs confirmation"
    )]
    ConfirmationRequired { vm: VmRef },
    #[error("VM {vm} is {power_state}: {message}")]
    VmState {
        vm: VmRef,
        power_state: PowerState,
        message: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// A change failed and its writes to the registry's copy in XAPI could not all be undone.
    #[error(
        "{source}; putting the registry's copy in XAPI back failed too ({restore}): run \
         `vgpu-admin sync --all` on the pool master to make the copy match the registry again"
    )]
    MirrorUnrestored {
        #[source]
        source: Box<Error>,
        restore: xapi::XapiError,
    },
    /// The registry is behind the pool's copy in XAPI, and that copy has rows it cannot take.
    #[error(
        "the registry must catch up with its copy in XAPI, but {count} row(s) of that copy cannot \
         be taken (VM {vm_uuid}: {reason}); nothing was changed: see `vgpu-admin rebuild \
         --dry-run` on the pool master"
    )]
    MirrorConflict {
        vm_uuid: String,
        reason: String,
        count: usize,
    },
    /// Another writer claimed the generation this change was about to publish.
    #[error(
        "another host ({by}) is publishing generation {generation} of the registry at the same \
         time; nothing was changed"
    )]
    GenerationClaimed { generation: u64, by: String },
    /// This host stopped being the pool master after the command was routed here.
    #[error("this host is no longer the pool master (the master is now {master_ref})")]
    NoLongerMaster { master_ref: String },
    /// An error the pool master's plugin returned, code and message intact.
    #[error("{message}")]
    Forwarded {
        code: ErrorCode,
        message: String,
        details: Value,
    },
}

/// Longer values (a megabyte name from XAPI) are shown by their start: an error is one line.
const SHOWN_CHARS: usize = 1000;

/// `value`, or its first [`SHOWN_CHARS`] characters followed by `…` when it is longer.
fn clip(value: &str) -> std::borrow::Cow<'_, str> {
    match value.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}…", &value[..end]).into(),
        None => value.into(),
    }
}

/// Added to a failed change whose undo may be overtaken by a call that went unanswered.
const ANSWER_LOST: &str = ", but xapi did not answer one of the writes to the registry's copy in \
     XAPI and may still carry it out: once XAPI answers again, run `vgpu-admin sync --all` on the \
     pool master to make the copy match the registry";

fn list_vms(vms: &[VmRef]) -> String {
    vms.iter()
        .map(|v| v.vm_uuid.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(what: &str, value: &str, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            what: what.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub fn xapi(context: impl Into<String>, source: XapiError) -> Error {
        Error::Xapi {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn database(path: impl Into<PathBuf>, source: rusqlite::Error) -> Error {
        Error::Database {
            path: path.into(),
            source,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidArgument { .. } | Error::Usage(_) | Error::Setting { .. } => {
                ErrorCode::InvalidArgument
            }
            Error::ConfigUnreadable { .. } => ErrorCode::ConfigError,
            Error::VmNotFound { .. } => ErrorCode::VmNotFound,
            Error::AmbiguousVmName { .. } | Error::AmbiguousUuidPrefix { .. } => {
                ErrorCode::AmbiguousVmName
            }
            Error::NotRegistered { .. } => ErrorCode::NotRegistered,
            Error::AlreadyRegistered { .. } => ErrorCode::AlreadyRegistered,
            Error::VmIdInUse { .. } => ErrorCode::VmIdInUse,
            Error::NoFreeVmId => ErrorCode::NoFreeVmId,
            Error::Xapi { .. } | Error::XapiUnrestored { .. } => ErrorCode::XapiError,
            Error::Database { .. }
            | Error::Migration { .. }
            | Error::DatabaseDir { .. }
            | Error::CreateFile { .. }
            | Error::NotADirectory { .. }
            | Error::NewerSchema { .. }
            | Error::NotWal { .. }
            | Error::Locked { .. } => ErrorCode::DatabaseError,
            // The step that failed: the registry's commit, or a write of its copy in XAPI.
            Error::CommitFailed { source, .. } => source.code(),
            Error::ConfirmationRequired { .. } => ErrorCode::ConfirmationRequired,
            Error::VmState { .. } => ErrorCode::VmState,
            Error::Internal(_) => ErrorCode::Internal,
            Error::Forwarded { code, .. } => *code,
            Error::MirrorUnrestored { source, .. } => source.code(),
            Error::NoLongerMaster { .. } => ErrorCode::XapiError,
            Error::MirrorConflict { .. } | Error::GenerationClaimed { .. } => {
                ErrorCode::DatabaseError
            }
        }
    }

    /// Machine-readable details (the JSON `details` / the plugin's second error string).
    pub fn details(&self) -> Value {
        match self {
            Error::InvalidArgument {
                what,
                value,
                reason,
            } => {
                json!({"argument": what, "value": clip(value), "reason": reason})
            }
            Error::Usage(u) => json!({ "arguments": u.keys() }),
            Error::ConfigUnreadable { path, source } => json!({
                "path": path.display().to_string(),
                "reason": source.to_string(),
                "permission_denied": source.kind() == std::io::ErrorKind::PermissionDenied,
            }),
            Error::VmNotFound { selector } => json!({ "selector": selector.to_string() }),
            Error::AmbiguousVmName { name, candidates } => {
                json!({"vm_name": name, "candidates": candidates})
            }
            Error::AmbiguousUuidPrefix { prefix, candidates } => {
                json!({"vm_uuid_prefix": prefix, "candidates": candidates})
            }
            Error::NotRegistered { vm } | Error::ConfirmationRequired { vm } => json!(vm),
            Error::AlreadyRegistered {
                vm,
                pool,
                priority,
                vm_id,
            } => json!({"vm_uuid": vm.vm_uuid, "vm_name": vm.vm_name, "pool": pool,
                        "priority": priority.as_word(), "vm_id": vm_id}),
            Error::VmIdInUse {
                vm_id,
                owner,
                next_free,
            } => json!({"vm_id": vm_id, "vm_uuid": owner.vm_uuid, "vm_name": owner.vm_name,
                        "next_free_vm_id": next_free}),
            Error::Xapi { source, .. } => match source {
                XapiError::Api {
                    method,
                    code,
                    params,
                } => {
                    json!({"xapi_method": method, "xapi_code": code, "xapi_params": params})
                }
                XapiError::Transport { endpoint, .. } => {
                    json!({ "reason": source.to_string(), "endpoint": endpoint })
                }
                other => json!({ "reason": other.to_string() }),
            },
            Error::XapiUnrestored {
                source,
                restore,
                vm,
                repair_command,
                ..
            } => json!({"xapi_error": source.to_string(), "restore_error": restore.to_string(),
                        "vm_uuid": vm.vm_uuid, "repair_command": repair_command}),
            Error::Database { path, source } => json!({
                "path": path.display().to_string(),
                "permission_denied": matches!(
                    source.sqlite_error_code(),
                    Some(
                        rusqlite::ErrorCode::ReadOnly
                            | rusqlite::ErrorCode::CannotOpen
                            | rusqlite::ErrorCode::PermissionDenied
                    )
                ),
            }),
            Error::DatabaseDir { path, source, .. } | Error::CreateFile { path, source, .. } => {
                json!({
                    "path": path.display().to_string(),
                    "permission_denied": source.kind() == std::io::ErrorKind::PermissionDenied,
                })
            }
            Error::Migration { path, .. }
            | Error::NotADirectory { path, .. }
            | Error::NewerSchema { path, .. }
            | Error::NotWal { path, .. } => json!({ "path": path.display().to_string() }),
            Error::Locked { path, waited_s } => {
                json!({"path": path.display().to_string(), "locked": true, "waited_s": waited_s})
            }
            Error::CommitFailed {
                source,
                vm,
                aftermath,
            } => {
                let mut d = source.details();
                d["vm_uuid"] = json!(vm.vm_uuid);
                if let CommitAftermath::Unrestored { repair_command, .. } = aftermath {
                    d["repair_command"] = json!(repair_command);
                }
                d
            }
            Error::VmState {
                vm, power_state, ..
            } => json!({"vm_uuid": vm.vm_uuid, "vm_name": vm.vm_name,
                        "power_state": power_state.to_string()}),
            Error::Forwarded { details, .. } => details.clone(),
            Error::MirrorUnrestored { source, restore } => {
                let mut d = source.details();
                d["mirror_restore_failed"] = json!(restore.to_string());
                d["repair_command"] = json!("vgpu-admin sync --all");
                d
            }
            Error::NoLongerMaster { master_ref } => json!({ "master_ref": master_ref }),
            Error::GenerationClaimed { generation, by } => {
                json!({"generation": generation, "claimed_by": by})
            }
            Error::MirrorConflict {
                vm_uuid,
                reason,
                count,
            } => json!({"vm_uuid": vm_uuid, "reason": reason, "count": count}),
            Error::Setting { setting, .. } => json!({ "setting": setting }),
            Error::NoFreeVmId | Error::Internal(_) => json!({}),
        }
    }

    /// Whether this change was undone because another writer claimed its generation (the
    /// claim fails inside the commit step, so it may arrive wrapped).
    /// Whether a call failed without an answer (see [`XapiError::outcome_unknown`]), so that
    /// xapi may still carry it out after the undo.
    pub fn answer_lost(&self) -> bool {
        match self {
            Error::Xapi { source, .. } => source.outcome_unknown(),
            Error::CommitFailed { source, .. } | Error::MirrorUnrestored { source, .. } => {
                source.answer_lost()
            }
            _ => false,
        }
    }

    pub fn is_generation_claimed(&self) -> bool {
        match self {
            Error::GenerationClaimed { .. } => true,
            Error::CommitFailed { source, .. } | Error::MirrorUnrestored { source, .. } => {
                matches!(**source, Error::GenerationClaimed { .. })
            }
            _ => false,
        }
    }

    /// `{"error":{"code","message","details"}}`, the JSON error document of the contract.
    pub fn to_json(&self) -> Value {
        json!({"error": {"code": self.code().as_str(), "message": self.to_string(),
                         "details": self.details()}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_invalid_value_is_shown_by_its_start() {
        let huge = "é".repeat(1024 * 1024);
        let e = Error::invalid("VM name-label", &huge, "too long");
        let text = e.to_string();
        assert!(text.len() < 3000, "{}", text.len());
        assert!(text.starts_with(&format!("invalid VM name-label \"{}…\"", "é".repeat(1000))));
        assert!(text.ends_with(": too long"));
        assert_eq!(e.details()["value"], format!("{}…", "é".repeat(1000)));
        let short = Error::invalid("pool", &"n".repeat(1000), "bad");
        assert_eq!(short.details()["value"], "n".repeat(1000));
    }
}
