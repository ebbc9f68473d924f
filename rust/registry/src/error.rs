//! The one error type of the core. Each variant carries what a good message needs and maps to one
//! stable error code of the contract (SPEC §3); front ends only render it.

use serde::Serialize;
use serde_json::{json, Value};
use xapi::XapiError;

/// Stable error codes. The CLI prints them bare, the plugin prefixes `VGPU_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidArgument,
    VmNotFound,
    AmbiguousVmName,
    NotRegistered,
    AlreadyRegistered,
    VmIdInUse,
    NoFreeVmId,
    XapiError,
    DatabaseError,
    ConfirmationRequired,
    VmState,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidArgument,
        ErrorCode::VmNotFound,
        ErrorCode::AmbiguousVmName,
        ErrorCode::NotRegistered,
        ErrorCode::AlreadyRegistered,
        ErrorCode::VmIdInUse,
        ErrorCode::NoFreeVmId,
        ErrorCode::XapiError,
        ErrorCode::DatabaseError,
        ErrorCode::ConfirmationRequired,
        ErrorCode::VmState,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::VmNotFound => "VM_NOT_FOUND",
            ErrorCode::AmbiguousVmName => "AMBIGUOUS_VM_NAME",
            ErrorCode::NotRegistered => "NOT_REGISTERED",
            ErrorCode::AlreadyRegistered => "ALREADY_REGISTERED",
            ErrorCode::VmIdInUse => "VM_ID_IN_USE",
            ErrorCode::NoFreeVmId => "NO_FREE_VM_ID",
            ErrorCode::XapiError => "XAPI_ERROR",
            ErrorCode::DatabaseError => "DATABASE_ERROR",
            ErrorCode::ConfirmationRequired => "CONFIRMATION_REQUIRED",
            ErrorCode::VmState => "VM_STATE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// Parses a code with or without the plugin's `VGPU_` prefix.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        let bare = s.strip_prefix("VGPU_").unwrap_or(s);
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == bare)
    }

    /// Exit status of `vgpu-admin`: 2 for invalid usage or argument, 1 for anything else.
    pub fn exit_status(self) -> i32 {
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

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Bad input. `value` is shown with escapes so control characters stay visible.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        what: String,
        value: String,
        reason: String,
    },
    /// Bad usage that is not about one value (missing or conflicting arguments).
    #[error("{0}")]
    Usage(String),
    #[error("no VM {selector} in the pool")]
    VmNotFound { selector: String },
    #[error("{} VMs are named {name:?}: {}", .candidates.len(), list_vms(.candidates))]
    AmbiguousVmName {
        name: String,
        candidates: Vec<VmRef>,
    },
    #[error("VM {vm} is not registered")]
    NotRegistered { vm: VmRef },
    #[error("VM {vm} is already registered (pool {pool}, priority {priority}, vm_id {vm_id})")]
    AlreadyRegistered {
        vm: VmRef,
        pool: String,
        priority: String,
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
    /// An XAPI write failed and so did putting the old value back: the VM is left changed.
    /// The repair command ends the message so it can be copied from the end of the line.
    #[error("{context} ({source}); putting the previous value back also failed ({restore}): the registry is unchanged but VM {vm} now has no device-model-args; restore them with: {repair_command}")]
    XapiUnrestored {
        context: String,
        source: Box<XapiError>,
        restore: Box<XapiError>,
        vm: VmRef,
        repair_command: String,
    },
    #[error("database {path}: {message}")]
    Database { path: String, message: String },
    #[error("--restart would shut down and start running VM {vm}: confirm with --yes (plugin and API: yes=true)")]
    ConfirmationRequired { vm: VmRef },
    #[error("VM {vm} is {power_state}: {message}")]
    VmState {
        vm: VmRef,
        power_state: String,
        message: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// An error the pool master's plugin returned, code and message intact.
    #[error("{message}")]
    Forwarded {
        code: ErrorCode,
        message: String,
        details: Value,
    },
}

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

    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidArgument { .. } | Error::Usage(_) => ErrorCode::InvalidArgument,
            Error::VmNotFound { .. } => ErrorCode::VmNotFound,
            Error::AmbiguousVmName { .. } => ErrorCode::AmbiguousVmName,
            Error::NotRegistered { .. } => ErrorCode::NotRegistered,
            Error::AlreadyRegistered { .. } => ErrorCode::AlreadyRegistered,
            Error::VmIdInUse { .. } => ErrorCode::VmIdInUse,
            Error::NoFreeVmId => ErrorCode::NoFreeVmId,
            Error::Xapi { .. } | Error::XapiUnrestored { .. } => ErrorCode::XapiError,
            Error::Database { .. } => ErrorCode::DatabaseError,
            Error::ConfirmationRequired { .. } => ErrorCode::ConfirmationRequired,
            Error::VmState { .. } => ErrorCode::VmState,
            Error::Internal(_) => ErrorCode::Internal,
            Error::Forwarded { code, .. } => *code,
        }
    }

    /// A second line for people: what to do next.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::AmbiguousVmName { .. } => Some("select the VM with --vm-uuid".into()),
            Error::NotRegistered { .. } => {
                Some("register it first with: vgpu-admin register-vm".into())
            }
            Error::AlreadyRegistered { .. } => {
                Some("change it with update-vm, set-pool, set-priority or set-vm-id".into())
            }
            Error::VmIdInUse {
                next_free: Some(n), ..
            } => Some(format!("the next free vm_id is {n}")),
            Error::VmNotFound { .. } => {
                Some("list the pool's VMs with: vgpu-admin scan-vms".into())
            }
            Error::ConfirmationRequired { .. } => Some("add --yes to confirm the restart".into()),
            Error::Forwarded {
                code: ErrorCode::VmIdInUse,
                details,
                ..
            } => details["next_free_vm_id"]
                .as_u64()
                .map(|n| format!("the next free vm_id is {n}")),
            _ => None,
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
                json!({"argument": what, "value": value, "reason": reason})
            }
            Error::VmNotFound { selector } => json!({ "selector": selector }),
            Error::AmbiguousVmName { name, candidates } => {
                json!({"vm_name": name, "candidates": candidates})
            }
            Error::NotRegistered { vm } | Error::ConfirmationRequired { vm } => json!(vm),
            Error::AlreadyRegistered {
                vm,
                pool,
                priority,
                vm_id,
            } => json!({"vm_uuid": vm.vm_uuid, "vm_name": vm.vm_name, "pool": pool,
                        "priority": priority, "vm_id": vm_id}),
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
            Error::Database { path, .. } => json!({ "path": path }),
            Error::VmState {
                vm, power_state, ..
            } => json!({"vm_uuid": vm.vm_uuid, "vm_name": vm.vm_name, "power_state": power_state}),
            Error::Forwarded { details, .. } => details.clone(),
            _ => json!({}),
        }
    }

    /// `{"error":{"code","message","details"}}`, the JSON error document of the contract.
    pub fn to_json(&self) -> Value {
        json!({"error": {"code": self.code().as_str(), "message": self.to_string(),
                         "details": self.details()}})
    }
}
