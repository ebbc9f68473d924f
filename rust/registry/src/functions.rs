//! THE function table: every function of the plugin API and every argument key, declared once.
//!
//! Dispatch and argument checks read it; the CLI maps its subcommands through it; the plugin,
//! the Python conveniences and the Xen Orchestra plugin are tested against the copy that
//! `vgpu-admin functions --format json` prints. Adding a function is one row here plus its
//! request parser and operation.

use crate::error::{Error, ErrorCode, Result};
use crate::request::{self as parse, Args, Request};
use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;

/// An argument key of the plugin API (the CLI's long option without the dashes).
#[derive(Debug, Serialize)]
pub struct ArgSpec {
    pub key: &'static str,
    /// A boolean: `true`/`false`; on the command line a flag without a value.
    pub flag: bool,
    /// What a value must be, for messages and help.
    pub expects: &'static str,
}

pub static ARGS: &[ArgSpec] = &[
    ArgSpec {
        key: "vm-uuid",
        flag: false,
        expects: "the VM's UUID",
    },
    ArgSpec {
        key: "vm-name",
        flag: false,
        expects: "the VM's name",
    },
    ArgSpec {
        key: "pool",
        flag: false,
        expects: "A or B",
    },
    ArgSpec {
        key: "priority",
        flag: false,
        expects: "low, medium or high",
    },
    ArgSpec {
        key: "vm-id",
        flag: false,
        expects: "1 to 4294967295",
    },
    ArgSpec {
        key: "restart",
        flag: true,
        expects: "true or false",
    },
    ArgSpec {
        key: "yes",
        flag: true,
        expects: "true or false",
    },
    ArgSpec {
        key: "dry-run",
        flag: true,
        expects: "true or false",
    },
    ArgSpec {
        key: "all",
        flag: true,
        expects: "true or false",
    },
    ArgSpec {
        key: "weight",
        flag: false,
        expects: "1 to 100",
    },
    ArgSpec {
        key: "rate",
        flag: false,
        expects: "jobs per second, 0 = unlimited",
    },
    ArgSpec {
        key: "queue-depth",
        flag: false,
        expects: "queued jobs, 0 = unlimited",
    },
    ArgSpec {
        key: "quarantined",
        flag: true,
        expects: "true or false",
    },
    ArgSpec {
        key: "action",
        flag: false,
        expects: "metrics, health, connections or reload",
    },
    ArgSpec {
        key: "prometheus",
        flag: true,
        expects: "true or false",
    },
    ArgSpec {
        key: "host",
        flag: false,
        expects: "a host's uuid or name-label",
    },
    ArgSpec {
        key: "all-hosts",
        flag: true,
        expects: "true or false",
    },
    ArgSpec {
        key: "reload",
        flag: true,
        expects: "true or false",
    },
];

/// The keys that name a VM.
pub const VM_KEYS: [&str; 2] = ["vm-uuid", "vm-name"];

/// Whether a function names a VM (with `vm-uuid` and/or `vm-name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmArg {
    None,
    Required,
    Optional,
}

/// The shape of a function's JSON result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultKind {
    Scan,
    Applied,
    Show,
    List,
    Pools,
    Pool,
    Status,
    Sync,
    Refresh,
    Adopt,
    Rebuild,
    Mediator,
}

/// One function of the plugin API.
#[derive(Debug)]
pub struct FunctionSpec {
    /// The plugin's function name (`set-vm-id`; `set_vm_id` is accepted too).
    pub name: &'static str,
    /// The `vgpu-admin` subcommand that calls it.
    pub command: &'static str,
    /// Changes the registry (and so must run where the registry lives).
    pub mutating: bool,
    /// Talks to XAPI (the others read the registry alone).
    pub xapi: bool,
    /// Acts on the host it is called on (its replica, its mediator) instead of being forwarded
    /// to the pool master.
    pub local: bool,
    pub result: ResultKind,
    pub vm: VmArg,
    pub required: &'static [&'static str],
    /// Besides the VM keys, which every function with `vm` other than `none` takes.
    pub optional: &'static [&'static str],
    pub flags: &'static [&'static str],
    pub(crate) parse: fn(&Args<'_>) -> Result<Request>,
}

const RESTART: &[&str] = &["restart", "yes"];

pub static FUNCTIONS: &[FunctionSpec] = &[
    FunctionSpec {
        name: "scan",
        command: "scan-vms",
        mutating: false,
        xapi: true,
        local: false,
        result: ResultKind::Scan,
        vm: VmArg::None,
        required: &[],
        optional: &[],
        flags: &[],
        parse: |_| Ok(Request::Scan),
    },
    FunctionSpec {
        name: "register",
        command: "register-vm",
        mutating: true,
        xapi: true,
        local: false,
        result: ResultKind::Applied,
        vm: VmArg::Required,
        required: &["pool", "priority"],
        optional: &["vm-id"],
        flags: RESTART,
        parse: parse::register,
    },
    FunctionSpec {
        name: "set-vm-id",
        command: "set-vm-id",
        mutating: true,
        xapi: true,
        local: false,
        result: ResultKind::Applied,
        vm: VmArg::Required,
        required: &["vm-id"],
        optional: &[],
        flags: RESTART,
        parse: parse::update,
    },
    FunctionSpec {
        name: "set-pool",
        command: "set-pool",
        mutating: true,
        xapi: true,
        local: false,
        result: ResultKind::Applied,
        vm: VmArg::Required,
        required: &["pool"],
        optional: &[],
        flags: RESTART,
        parse: parse::update,
    },
    FunctionSpec {
        name: "set-priority",
        command: "set-priority",
        mutating: true,
        xapi: true,
        local: false,
        result: ResultKind::Applied,
        vm: VmArg::Required,
        required: &["priority"],
        optional: &[],
        flags: RESTART,
        parse: parse::update,
    },
    FunctionSpec {
        name: "update",
        command: "update-vm",
        mutating: true,
        xapi: true,
        local: false,
        result: ResultKind::Applied,
        vm: VmArg::Required,
        required: &[],
        optional: &["pool", "priority", "vm-id"],
        flags: RESTART,
        parse: parse::update,
    },
    FunctionSpec {
        name: "show",
        command: "show-vm",
        mutating: false,
        xapi: true,
        local: false,
        result: ResultKind::Show,
        vm: VmArg::Required,
        required: &[],
        optional: &[],
        flags: &[],
        parse: parse::show,
    },
    FunctionSpec {
        name: "list",
        command: "list-vms",
        mutating: false,
        xapi: false,
        local: false,
        result: ResultKind::List,
        vm: VmArg::None,
        required: &[],
        optional: &["pool", "priority"],
        flags: &["quarantined"],
        parse: parse::list,
    },
    FunctionSpec {
        name: "list-pools",
        command: "list-pools",
        mutating: false,
        xapi: false,
        local: false,
        result: ResultKind::Pools,
        vm: VmArg::None,
        required: &[],
        optional: &[],
        flags: &[],
        parse: |_| Ok(Request::ListPools),
    },
    FunctionSpec {
        name: "show-pool",
        command: "show-pool",
        mutating: false,
        xapi: false,
        local: false,
        result: ResultKind::Pool,
        vm: VmArg::None,
        required: &["pool"],
        optional: &[],
        flags: &[],
        parse: parse::show_pool,
    },
    FunctionSpec {
        name: "remove",
        command: "remove-vm",
        mutating: true,
        xapi: true,
        local: false,
        result: ResultKind::Applied,
        vm: VmArg::Required,
        required: &[],
        optional: &[],
        flags: RESTART,
        parse: parse::remove,
    },
    FunctionSpec {
        name: "status",
        command: "status",
        mutating: false,
        xapi: true,
        local: false,
        result: ResultKind::Status,
        vm: VmArg::None,
        required: &[],
        optional: &[],
        flags: &[],
        parse: |_| Ok(Request::Status),
    },
    FunctionSpec {
        name: "sync",
        command: "sync",
        mutating: true,
        xapi: true,
        local: false,
        result: ResultKind::Sync,
        vm: VmArg::Optional,
        required: &[],
        optional: &[],
        flags: &["all", "dry-run", "restart", "yes"],
        parse: parse::sync,
    },
    FunctionSpec {
        name: "refresh",
        command: "refresh",
        mutating: true,
        xapi: true,
        local: true,
        result: ResultKind::Refresh,
        vm: VmArg::None,
        required: &[],
        optional: &[],
        flags: &["reload"],
        parse: parse::refresh,
    },
    FunctionSpec {
        name: "adopt",
        command: "adopt",
        mutating: true,
        xapi: true,
        local: false,
        result: ResultKind::Adopt,
        vm: VmArg::Optional,
        required: &[],
        optional: &[],
        flags: &["all", "dry-run"],
        parse: parse::adopt,
    },
    FunctionSpec {
        name: "rebuild",
        command: "rebuild",
        mutating: true,
        xapi: true,
        local: false,
        result: ResultKind::Rebuild,
        vm: VmArg::None,
        required: &[],
        optional: &[],
        flags: &["dry-run"],
        parse: parse::rebuild,
    },
    FunctionSpec {
        name: "set-weight",
        command: "set-weight",
        mutating: true,
        xapi: true,
        local: false,
        result: ResultKind::Applied,
        vm: VmArg::Required,
        required: &["weight"],
        optional: &[],
        flags: &[],
        parse: parse::set_weight,
    },
    FunctionSpec {
        name: "set-rate-limit",
        command: "set-rate-limit",
        mutating: true,
        xapi: true,
        local: false,
        result: ResultKind::Applied,
        vm: VmArg::Required,
        required: &["rate"],
        optional: &["queue-depth"],
        flags: &[],
        parse: parse::set_rate_limit,
    },
    FunctionSpec {
        name: "quarantine",
        command: "quarantine-vm",
        mutating: true,
        xapi: true,
        local: false,
        result: ResultKind::Applied,
        vm: VmArg::Required,
        required: &[],
        optional: &[],
        flags: &[],
        parse: |a| parse::quarantine(a, true),
    },
    FunctionSpec {
        name: "clear-quarantine",
        command: "clear-quarantine",
        mutating: true,
        xapi: true,
        local: false,
        result: ResultKind::Applied,
        vm: VmArg::Required,
        required: &[],
        optional: &[],
        flags: &[],
        parse: |a| parse::quarantine(a, false),
    },
    FunctionSpec {
        name: "show-weights",
        command: "show-weights",
        mutating: false,
        xapi: false,
        local: false,
        result: ResultKind::List,
        vm: VmArg::None,
        required: &[],
        optional: &["pool"],
        flags: &[],
        parse: parse::list,
    },
    FunctionSpec {
        name: "show-rate-limits",
        command: "show-rate-limits",
        mutating: false,
        xapi: false,
        local: false,
        result: ResultKind::List,
        vm: VmArg::None,
        required: &[],
        optional: &["pool"],
        flags: &[],
        parse: parse::list,
    },
    FunctionSpec {
        name: "mediator",
        command: "mediator",
        mutating: false,
        xapi: true,
        local: true,
        result: ResultKind::Mediator,
        vm: VmArg::None,
        required: &["action"],
        optional: &["host"],
        flags: &["prometheus", "all-hosts"],
        parse: parse::mediator,
    },
];

impl FunctionSpec {
    /// The function called `name` (dashes or underscores).
    pub fn find(name: &str) -> Result<&'static FunctionSpec> {
        let canonical = name.replace('_', "-");
        FUNCTIONS
            .iter()
            .find(|f| f.name == canonical)
            .ok_or_else(|| {
                let names: Vec<&str> = FUNCTIONS.iter().map(|f| f.name).collect();
                Error::invalid(
                    "function",
                    name,
                    format!("expected one of {}", names.join(", ")),
                )
            })
    }

    /// The function a `vgpu-admin` subcommand calls.
    pub fn for_command(command: &str) -> Option<&'static FunctionSpec> {
        FUNCTIONS.iter().find(|f| f.command == command)
    }

    /// The keys the VM is named with, if the function names one.
    pub fn vm_keys(&self) -> &'static [&'static str] {
        match self.vm {
            VmArg::None => &[],
            VmArg::Required | VmArg::Optional => &VM_KEYS,
        }
    }

    /// Every argument key, in table order: VM keys, required, optional, flags.
    pub fn keys(&self) -> impl Iterator<Item = &'static str> {
        self.vm_keys()
            .iter()
            .chain(self.required)
            .chain(self.optional)
            .chain(self.flags)
            .copied()
    }

    pub fn takes(&self, key: &str) -> bool {
        self.keys().any(|k| k == key)
    }
}

impl Serialize for FunctionSpec {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let optional: Vec<&str> = self
            .vm_keys()
            .iter()
            .chain(self.optional)
            .copied()
            .collect();
        let mut st = s.serialize_struct("FunctionSpec", 10)?;
        st.serialize_field("name", self.name)?;
        st.serialize_field("command", self.command)?;
        st.serialize_field("mutating", &self.mutating)?;
        st.serialize_field("xapi", &self.xapi)?;
        st.serialize_field("local", &self.local)?;
        st.serialize_field("result", &self.result)?;
        st.serialize_field("vm", &self.vm)?;
        st.serialize_field("required", self.required)?;
        st.serialize_field("optional", &optional)?;
        st.serialize_field("flags", self.flags)?;
        st.end()
    }
}

/// The argument key's declaration.
pub fn arg(key: &str) -> Option<&'static ArgSpec> {
    ARGS.iter().find(|a| a.key == key)
}

/// The table as front ends outside Rust read it.
pub fn table_json() -> serde_json::Value {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    serde_json::json!({
        "functions": FUNCTIONS,
        "arguments": ARGS,
        "error_codes": codes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn names_and_commands_are_unique() {
        let names: BTreeSet<_> = FUNCTIONS.iter().map(|f| f.name).collect();
        let commands: BTreeSet<_> = FUNCTIONS.iter().map(|f| f.command).collect();
        assert_eq!(names.len(), FUNCTIONS.len());
        assert_eq!(commands.len(), FUNCTIONS.len());
    }

    #[test]
    fn every_key_is_declared_once_and_flags_are_flags() {
        let keys: BTreeSet<_> = ARGS.iter().map(|a| a.key).collect();
        assert_eq!(keys.len(), ARGS.len(), "an argument declared twice");
        for f in FUNCTIONS {
            let mut seen = BTreeSet::new();
            for k in f.keys() {
                let a = arg(k).unwrap_or_else(|| panic!("{}: undeclared key {k}", f.name));
                assert!(seen.insert(k), "{}: {k} listed twice", f.name);
                assert_eq!(
                    a.flag,
                    f.flags.contains(&k),
                    "{}: {k} flag mismatch",
                    f.name
                );
            }
        }
        for a in ARGS {
            assert!(
                FUNCTIONS.iter().any(|f| f.takes(a.key)),
                "{} is declared but no function takes it",
                a.key
            );
        }
    }

    #[test]
    fn lookup_by_either_spelling() {
        assert_eq!(FunctionSpec::find("set_vm_id").unwrap().name, "set-vm-id");
        assert_eq!(FunctionSpec::find("list-pools").unwrap().name, "list-pools");
        let e = FunctionSpec::find("explode").unwrap_err();
        assert!(e.to_string().contains("\"explode\""), "{e}");
        assert_eq!(
            FunctionSpec::for_command("register-vm").unwrap().name,
            "register"
        );
    }

    #[test]
    fn json_lists_vm_keys_as_optional() {
        let v = table_json();
        let register = v["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "register")
            .unwrap();
        assert_eq!(register["vm"], "required");
        assert_eq!(
            register["optional"],
            serde_json::json!(["vm-uuid", "vm-name", "vm-id"])
        );
        assert_eq!(
            register["required"],
            serde_json::json!(["pool", "priority"])
        );
        assert_eq!(register["flags"], serde_json::json!(["restart", "yes"]));
        assert_eq!(
            v["error_codes"].as_array().unwrap().len(),
            ErrorCode::ALL.len()
        );
    }
}
