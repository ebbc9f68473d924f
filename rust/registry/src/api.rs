//! The plugin API: one dispatcher from a function name and string arguments to a typed request,
//! and from a request to a result. The CLI, `vgpu-admin call`, the Python extension and the xapi
//! plugin all go through here, so they accept, refuse and answer identically.

use crate::error::{Error, Result};
use crate::model::{
    parse_bool, parse_vm_id, parse_vm_name, parse_vm_uuid, Pool, Priority, Registration, Selector,
};
use crate::ops::{
    Applied, Ctx, PoolDetail, RegisterReq, Restart, ScanReport, ShowReport, StatusReport,
    SyncReport, SyncTarget, UpdateReq,
};
use crate::store::{ListFilter, PoolInfo};
use serde::Serialize;
use std::collections::BTreeMap;

/// The functions of the plugin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Scan,
    Register,
    SetVmId,
    SetPool,
    SetPriority,
    Update,
    Show,
    List,
    ListPools,
    ShowPool,
    Remove,
    Status,
    Sync,
}

const SELECT: [&str; 2] = ["vm-uuid", "vm-name"];
const RESTART: [&str; 2] = ["restart", "yes"];

impl Function {
    pub const ALL: [Function; 13] = [
        Function::Scan,
        Function::Register,
        Function::SetVmId,
        Function::SetPool,
        Function::SetPriority,
        Function::Update,
        Function::Show,
        Function::List,
        Function::ListPools,
        Function::ShowPool,
        Function::Remove,
        Function::Status,
        Function::Sync,
    ];

    /// The plugin's function name (underscore spellings accepted too).
    pub fn parse(name: &str) -> Result<Function> {
        let canonical = name.replace('_', "-");
        Function::ALL
            .into_iter()
            .find(|f| f.name() == canonical)
            .ok_or_else(|| {
                Error::invalid(
                    "function",
                    name,
                    format!(
                        "expected one of {}",
                        Function::ALL.map(|f| f.name()).join(", ")
                    ),
                )
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            Function::Scan => "scan",
            Function::Register => "register",
            Function::SetVmId => "set-vm-id",
            Function::SetPool => "set-pool",
            Function::SetPriority => "set-priority",
            Function::Update => "update",
            Function::Show => "show",
            Function::List => "list",
            Function::ListPools => "list-pools",
            Function::ShowPool => "show-pool",
            Function::Remove => "remove",
            Function::Status => "status",
            Function::Sync => "sync",
        }
    }

    /// Whether the function changes the registry (and so must run where the registry lives).
    pub fn is_mutating(self) -> bool {
        matches!(
            self,
            Function::Register
                | Function::SetVmId
                | Function::SetPool
                | Function::SetPriority
                | Function::Update
                | Function::Remove
                | Function::Sync
        )
    }

    /// The argument keys the function takes.
    pub fn keys(self) -> Vec<&'static str> {
        let mut k: Vec<&'static str> = Vec::new();
        match self {
            Function::Scan | Function::ListPools | Function::Status => {}
            Function::Register => {
                k.extend(SELECT);
                k.extend(["pool", "priority", "vm-id"]);
                k.extend(RESTART);
            }
            Function::SetVmId => {
                k.extend(SELECT);
                k.push("vm-id");
                k.extend(RESTART);
            }
            Function::SetPool => {
                k.extend(SELECT);
                k.push("pool");
                k.extend(RESTART);
            }
            Function::SetPriority => {
                k.extend(SELECT);
                k.push("priority");
                k.extend(RESTART);
            }
            Function::Update => {
                k.extend(SELECT);
                k.extend(["pool", "priority", "vm-id"]);
                k.extend(RESTART);
            }
            Function::Show => k.extend(SELECT),
            Function::List => k.extend(["pool", "priority"]),
            Function::ShowPool => k.push("pool"),
            Function::Remove => {
                k.extend(SELECT);
                k.extend(RESTART);
            }
            Function::Sync => {
                k.extend(SELECT);
                k.extend(["all", "dry-run"]);
                k.extend(RESTART);
            }
        }
        k
    }
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Scan,
    Register(RegisterReq),
    Update(UpdateReq),
    Show(Selector),
    List(ListFilter),
    ListPools,
    ShowPool(Pool),
    Remove(Selector, Restart),
    /// `remove` of a row whose stored uuid the old tools let in unvalidated.
    RemoveInvalidRow {
        raw_uuid: String,
    },
    Status,
    Sync {
        target: SyncTarget,
        dry_run: bool,
        restart: Restart,
    },
}

/// The result of a request; serialises to the contract's JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

impl Outcome {
    /// Reads back the JSON document of `function` (e.g. a forwarded call's answer).
    pub fn from_json(function: Function, value: serde_json::Value) -> Result<Outcome> {
        let bad = |e: serde_json::Error| {
            Error::Internal(format!("unexpected {} answer: {e}", function.name()))
        };
        Ok(match function {
            Function::Scan => Outcome::Scan(serde_json::from_value(value).map_err(bad)?),
            Function::Register
            | Function::SetVmId
            | Function::SetPool
            | Function::SetPriority
            | Function::Update
            | Function::Remove => Outcome::Applied(serde_json::from_value(value).map_err(bad)?),
            Function::Show => Outcome::Show(serde_json::from_value(value).map_err(bad)?),
            Function::List => Outcome::List(serde_json::from_value(value).map_err(bad)?),
            Function::ListPools => Outcome::Pools(serde_json::from_value(value).map_err(bad)?),
            Function::ShowPool => Outcome::Pool(serde_json::from_value(value).map_err(bad)?),
            Function::Status => Outcome::Status(serde_json::from_value(value).map_err(bad)?),
            Function::Sync => Outcome::Sync(serde_json::from_value(value).map_err(bad)?),
        })
    }
}

/// Arguments with their keys normalised (`vm_uuid` → `vm-uuid`), refusing unknown keys.
struct Args<'a> {
    function: Function,
    map: BTreeMap<String, &'a str>,
}

impl<'a> Args<'a> {
    fn new(function: Function, raw: &'a BTreeMap<String, String>) -> Result<Args<'a>> {
        let keys = function.keys();
        let mut map = BTreeMap::new();
        for (k, v) in raw {
            let key = k.replace('_', "-");
            if !keys.contains(&key.as_str()) {
                let takes = if keys.is_empty() {
                    "it takes no arguments".to_string()
                } else {
                    format!("it takes {}", keys.join(", "))
                };
                return Err(Error::invalid(
                    &format!("argument for {}", function.name()),
                    k,
                    takes,
                ));
            }
            if map.insert(key, v.as_str()).is_some() {
                return Err(Error::invalid("argument", k, "given twice"));
            }
        }
        Ok(Args { function, map })
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.map.get(key).copied()
    }

    fn required(&self, key: &str, expected: &str) -> Result<&'a str> {
        self.get(key).ok_or_else(|| {
            Error::Usage(format!("{} needs {key} ({expected})", self.function.name()))
        })
    }

    fn pool(&self) -> Result<Option<Pool>> {
        self.get("pool").map(Pool::parse).transpose()
    }

    fn priority(&self) -> Result<Option<Priority>> {
        self.get("priority").map(Priority::parse).transpose()
    }

    fn vm_id(&self) -> Result<Option<u32>> {
        self.get("vm-id").map(parse_vm_id).transpose()
    }

    fn flag(&self, key: &str) -> Result<bool> {
        Ok(self
            .get(key)
            .map(|v| parse_bool(key, v))
            .transpose()?
            .unwrap_or(false))
    }

    fn restart(&self) -> Result<Restart> {
        Ok(Restart {
            requested: self.flag("restart")?,
            confirmed: self.flag("yes")?,
        })
    }

    /// Exactly one of vm-uuid / vm-name.
    fn selector(&self) -> Result<Selector> {
        match (self.get("vm-uuid"), self.get("vm-name")) {
            (Some(u), None) => Ok(Selector::Uuid(parse_vm_uuid(u)?)),
            (None, Some(n)) => Ok(Selector::Name(parse_vm_name(n)?)),
            (Some(u), Some(n)) => Err(Error::Usage(format!(
                "{} takes either vm-uuid ({u:?}) or vm-name ({n:?}), not both",
                self.function.name()
            ))),
            (None, None) => Err(Error::Usage(format!(
                "{} needs the VM: vm-uuid or vm-name",
                self.function.name()
            ))),
        }
    }
}

/// Validates a call of the plugin API.
pub fn parse_request(function: &str, raw: &BTreeMap<String, String>) -> Result<Request> {
    let f = Function::parse(function)?;
    let a = Args::new(f, raw)?;
    Ok(match f {
        Function::Scan => Request::Scan,
        Function::ListPools => Request::ListPools,
        Function::Status => Request::Status,
        Function::Register => {
            // With a uuid, vm-name is the name to store; alone, it selects the VM by name-label.
            let (selector, name) = match (a.get("vm-uuid"), a.get("vm-name")) {
                (Some(u), n) => (
                    Selector::Uuid(parse_vm_uuid(u)?),
                    n.map(parse_vm_name).transpose()?,
                ),
                (None, Some(n)) => {
                    let n = parse_vm_name(n)?;
                    (Selector::Name(n.clone()), Some(n))
                }
                (None, None) => {
                    return Err(Error::Usage(
                        "register needs the VM: vm-uuid or vm-name".into(),
                    ))
                }
            };
            let pool = Pool::parse(a.required("pool", "A or B")?)?;
            let priority = Priority::parse(a.required("priority", "low, medium or high")?)?;
            Request::Register(RegisterReq {
                selector,
                name,
                pool,
                priority,
                vm_id: a.vm_id()?,
                restart: a.restart()?,
            })
        }
        Function::SetVmId => {
            let selector = a.selector()?;
            let vm_id = parse_vm_id(a.required("vm-id", "1 to 4294967295")?)?;
            Request::Update(UpdateReq {
                selector,
                pool: None,
                priority: None,
                vm_id: Some(vm_id),
                restart: a.restart()?,
            })
        }
        Function::SetPool => {
            let selector = a.selector()?;
            let pool = Pool::parse(a.required("pool", "A or B")?)?;
            Request::Update(UpdateReq {
                selector,
                pool: Some(pool),
                priority: None,
                vm_id: None,
                restart: a.restart()?,
            })
        }
        Function::SetPriority => {
            let selector = a.selector()?;
            let priority = Priority::parse(a.required("priority", "low, medium or high")?)?;
            Request::Update(UpdateReq {
                selector,
                pool: None,
                priority: Some(priority),
                vm_id: None,
                restart: a.restart()?,
            })
        }
        Function::Update => {
            let selector = a.selector()?;
            let req = UpdateReq {
                selector,
                pool: a.pool()?,
                priority: a.priority()?,
                vm_id: a.vm_id()?,
                restart: a.restart()?,
            };
            if req.pool.is_none() && req.priority.is_none() && req.vm_id.is_none() {
                return Err(Error::Usage(
                    "update needs at least one of pool, priority, vm-id".into(),
                ));
            }
            Request::Update(req)
        }
        Function::Show => Request::Show(a.selector()?),
        Function::List => Request::List(ListFilter {
            pool: a.pool()?,
            priority: a.priority()?,
        }),
        Function::ShowPool => Request::ShowPool(Pool::parse(a.required("pool", "A or B")?)?),
        Function::Remove => {
            let restart = a.restart()?;
            match (a.get("vm-uuid"), a.get("vm-name")) {
                (Some(u), None) if parse_vm_uuid(u).is_err() => Request::RemoveInvalidRow {
                    raw_uuid: u.to_string(),
                },
                _ => Request::Remove(a.selector()?, restart),
            }
        }
        Function::Sync => {
            let all = a.flag("all")?;
            let has_vm = a.get("vm-uuid").is_some() || a.get("vm-name").is_some();
            let target = match (all, has_vm) {
                (true, false) => SyncTarget::All,
                (false, true) => SyncTarget::One(a.selector()?),
                (true, true) => {
                    return Err(Error::Usage(
                        "sync takes either all=true or one VM (vm-uuid or vm-name), not both"
                            .into(),
                    ))
                }
                (false, false) => {
                    return Err(Error::Usage(
                        "sync needs all=true or one VM (vm-uuid or vm-name)".into(),
                    ))
                }
            };
            Request::Sync {
                target,
                dry_run: a.flag("dry-run")?,
                restart: a.restart()?,
            }
        }
    })
}

/// Runs a validated request.
pub fn execute(ctx: &mut Ctx<'_>, req: Request) -> Result<Outcome> {
    Ok(match req {
        Request::Scan => Outcome::Scan(ctx.scan()?),
        Request::Register(r) => Outcome::Applied(ctx.register(r)?),
        Request::Update(r) => Outcome::Applied(ctx.update(r)?),
        Request::Show(s) => Outcome::Show(ctx.show(&s)?),
        Request::List(f) => Outcome::List(ctx.list(&f)?),
        Request::ListPools => Outcome::Pools(ctx.list_pools()?),
        Request::ShowPool(p) => Outcome::Pool(ctx.show_pool(p)?),
        Request::Remove(s, r) => Outcome::Applied(ctx.remove(&s, r)?),
        Request::RemoveInvalidRow { raw_uuid } => {
            let invalid = match parse_vm_uuid(&raw_uuid) {
                Err(e) => e,
                Ok(_) => Error::Internal("remove of a valid uuid routed as invalid".into()),
            };
            Outcome::Applied(ctx.remove_invalid_row(&raw_uuid, invalid)?)
        }
        Request::Status => Outcome::Status(ctx.status()?),
        Request::Sync {
            target,
            dry_run,
            restart,
        } => Outcome::Sync(ctx.sync(&target, dry_run, restart)?),
    })
}

/// The whole plugin API call: validate, run, serialise.
pub fn call(
    ctx: &mut Ctx<'_>,
    function: &str,
    args: &BTreeMap<String, String>,
) -> Result<serde_json::Value> {
    let req = parse_request(function, args)?;
    let out = execute(ctx, req)?;
    serde_json::to_value(out).map_err(|e| Error::Internal(format!("serialising the result: {e}")))
}

/// JSON text with every non-ASCII character escaped (as `\u` escapes of UTF-16 units), as the plugin must answer in
/// ASCII: xapi runs it without a locale.
pub fn to_ascii_json(value: &serde_json::Value) -> String {
    let text = value.to_string();
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
    use crate::ErrorCode;

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const U: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    #[test]
    fn function_names_with_dashes_or_underscores() {
        assert_eq!(Function::parse("set_vm_id").unwrap(), Function::SetVmId);
        assert_eq!(Function::parse("list-pools").unwrap(), Function::ListPools);
        let e = Function::parse("explode").unwrap_err();
        assert!(e.to_string().contains("\"explode\""));
    }

    #[test]
    fn register_parses() {
        let r = parse_request(
            "register",
            &args(&[
                ("vm-uuid", U),
                ("pool", "b"),
                ("priority", "2"),
                ("vm_id", "7"),
            ]),
        )
        .unwrap();
        match r {
            Request::Register(r) => {
                assert_eq!(r.pool, Pool::B);
                assert_eq!(r.priority, Priority::High);
                assert_eq!(r.vm_id, Some(7));
                assert_eq!(r.selector, Selector::Uuid(U.into()));
                assert_eq!(r.name, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_name_the_value() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                "register",
                &[("vm-uuid", U), ("pool", "C"), ("priority", "low")],
                "\"C\"",
            ),
            ("register", &[("vm-uuid", U), ("pool", "A")], "priority"),
            ("scan", &[("colour", "red")], "\"colour\""),
            ("set-vm-id", &[("vm-uuid", U), ("vm-id", "0")], "\"0\""),
            (
                "set-vm-id",
                &[("vm-uuid", U), ("vm-name", "x"), ("vm-id", "1")],
                "not both",
            ),
            ("show", &[], "vm-uuid or vm-name"),
            ("update", &[("vm-uuid", U)], "at least one"),
            ("sync", &[], "all=true"),
            ("sync", &[("all", "yes")], "\"yes\""),
            ("list", &[("priority", "urgent")], "\"urgent\""),
        ];
        for (f, a, needle) in cases {
            let e = parse_request(f, &args(a)).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgument, "{f} {a:?}");
            assert!(e.to_string().contains(needle), "{f} {a:?}: {e}");
        }
    }

    #[test]
    fn ascii_json_escapes_everything_else() {
        let v = serde_json::json!({"n": "café ✓ 😀"});
        let s = to_ascii_json(&v);
        assert!(s.is_ascii());
        assert_eq!(serde_json::from_str::<serde_json::Value>(&s).unwrap(), v);
    }
}
