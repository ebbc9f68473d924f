//! From a function name and string arguments to a validated request, and from a request to its
//! outcome. The CLI, `vgpu-admin call`, the Python extension and the xapi plugin all come through
//! here (by way of the service), so they accept, refuse and answer identically.

use crate::error::{Error, Result, Usage};
use crate::functions::{FunctionSpec, VM_KEYS};
use crate::model::{
    parse_bool, parse_bounded, parse_vm_id, parse_vm_name, parse_vm_selector_uuid, parse_weight,
    Pool, Priority, Selector,
};
use crate::ops::{Ctx, ListFilter, RegisterReq, Restart, SyncTarget, UpdateReq};
use crate::report::Outcome;
use crate::store::ControlChange;
use std::collections::BTreeMap;

/// The argument a forwarding host adds, naming itself; a call carrying it is never forwarded
/// again.
pub(crate) const FORWARDED_BY: &str = "forwarded-by";

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
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
    Refresh {
        /// Then ask this host's mediator to reload.
        reload: bool,
    },
    SetControls(Selector, ControlChange),
    Mediator {
        action: MediatorAction,
        prometheus: bool,
        target: MediatorTarget,
    },
    Adopt {
        target: SyncTarget,
        dry_run: bool,
    },
    Rebuild {
        dry_run: bool,
    },
}

impl Request {
    /// A dry run reads only: it opens the registry read-only and creates nothing.
    pub(crate) fn dry_run(&self) -> bool {
        matches!(
            self,
            Request::Sync { dry_run: true, .. }
                | Request::Adopt { dry_run: true, .. }
                | Request::Rebuild { dry_run: true }
        )
    }

    fn restart(&self) -> Option<Restart> {
        match self {
            Request::Register(r) => Some(r.restart),
            Request::Update(r) => Some(r.restart),
            Request::Remove(_, r) => Some(*r),
            Request::Sync { restart, .. } => Some(*restart),
            _ => None,
        }
    }

    fn restart_mut(&mut self) -> Option<&mut Restart> {
        match self {
            Request::Register(r) => Some(&mut r.restart),
            Request::Update(r) => Some(&mut r.restart),
            Request::Remove(_, r) => Some(r),
            Request::Sync { restart, .. } => Some(restart),
            _ => None,
        }
    }
}

/// A call of the plugin API, validated: nothing has been read or changed yet.
#[derive(Debug, Clone)]
pub struct Call {
    pub(crate) spec: &'static FunctionSpec,
    pub(crate) request: Request,
    /// The arguments with their keys normalised, as they are forwarded to the master.
    pub(crate) args: BTreeMap<String, String>,
    /// The host that forwarded this call to us, if any.
    pub(crate) forwarded_by: Option<String>,
}

impl Call {
    /// Validates `function` with `args` (keys with dashes or underscores). Bad input is refused
    /// here, before anything is read or changed.
    pub fn parse(function: &str, args: &BTreeMap<String, String>) -> Result<Call> {
        let spec = FunctionSpec::find(function)?;
        let mut args = args.clone();
        let forwarded_by = args.remove(FORWARDED_BY);
        let parsed = Args::new(spec, &args)?;
        let request = (spec.parse)(&parsed)?;
        let args = parsed
            .map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(Call {
            spec,
            request,
            args,
            forwarded_by,
        })
    }

    pub fn function(&self) -> &'static FunctionSpec {
        self.spec
    }

    /// A restart was asked for without its confirmation: a front end that can ask someone
    /// should ask now, and [`Call::confirm`] if they agree.
    pub fn wants_confirmation(&self) -> bool {
        self.request
            .restart()
            .is_some_and(|r| r.requested && !r.confirmed)
    }

    /// The restart is confirmed (as `yes=true` would).
    pub fn confirm(&mut self) {
        if let Some(r) = self.request.restart_mut() {
            r.confirmed = true;
            self.args.insert("yes".into(), "true".into());
        }
    }
}

/// Arguments with their keys normalised (`vm_uuid` → `vm-uuid`), unknown keys refused and
/// required keys present.
pub(crate) struct Args<'a> {
    spec: &'static FunctionSpec,
    map: BTreeMap<String, &'a str>,
}

impl<'a> Args<'a> {
    fn new(spec: &'static FunctionSpec, raw: &'a BTreeMap<String, String>) -> Result<Args<'a>> {
        let mut map = BTreeMap::new();
        for (k, v) in raw {
            let key = k.replace('_', "-");
            if !spec.takes(&key) {
                let keys: Vec<&str> = spec.keys().collect();
                let takes = if keys.is_empty() {
                    "it takes no arguments".to_string()
                } else {
                    format!("it takes {}", keys.join(", "))
                };
                return Err(Error::invalid(
                    &format!("argument for {}", spec.name),
                    k,
                    takes,
                ));
            }
            if map.insert(key, v.as_str()).is_some() {
                return Err(Error::invalid("argument", k, "given twice"));
            }
        }
        for key in spec.required {
            if !map.contains_key(*key) {
                return Err(Error::Usage(Usage::Missing {
                    function: spec.name,
                    keys: vec![key],
                    what: None,
                }));
            }
        }
        Ok(Args { spec, map })
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.map.get(key).copied()
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

    fn has_vm(&self) -> bool {
        self.get("vm-uuid").is_some() || self.get("vm-name").is_some()
    }

    fn missing_vm(&self) -> Error {
        Error::Usage(Usage::Missing {
            function: self.spec.name,
            keys: VM_KEYS.to_vec(),
            what: Some("the VM"),
        })
    }

    /// Exactly one of vm-uuid / vm-name.
    fn selector(&self) -> Result<Selector> {
        match (self.get("vm-uuid"), self.get("vm-name")) {
            (Some(u), None) => parse_vm_selector_uuid(u),
            (None, Some(n)) => Ok(Selector::Name(parse_vm_name(n)?)),
            (Some(_), Some(_)) => Err(Error::Usage(Usage::Conflict {
                function: self.spec.name,
                keys: VM_KEYS.to_vec(),
            })),
            (None, None) => Err(self.missing_vm()),
        }
    }
}

pub(crate) fn register(a: &Args<'_>) -> Result<Request> {
    // With a uuid, vm-name is the name to store; alone, it selects the VM by name-label.
    let (selector, name) = match (a.get("vm-uuid"), a.get("vm-name")) {
        (Some(u), n) => (
            parse_vm_selector_uuid(u)?,
            n.map(parse_vm_name).transpose()?,
        ),
        (None, Some(n)) => {
            let n = parse_vm_name(n)?;
            (Selector::Name(n.clone()), Some(n))
        }
        (None, None) => return Err(a.missing_vm()),
    };
    Ok(Request::Register(RegisterReq {
        selector,
        name,
        pool: a.pool()?.ok_or_else(|| missing(a, "pool"))?,
        priority: a.priority()?.ok_or_else(|| missing(a, "priority"))?,
        vm_id: a.vm_id()?,
        restart: a.restart()?,
    }))
}

/// A required key the table forgot to list: a bug, not bad input.
fn missing(a: &Args<'_>, key: &str) -> Error {
    Error::Internal(format!("{} was parsed without its {key}", a.spec.name))
}

/// `set-vm-id`, `set-pool`, `set-priority` and `update`: the table says which of pool, priority
/// and vm-id each takes, and which it requires.
pub(crate) fn update(a: &Args<'_>) -> Result<Request> {
    let req = UpdateReq {
        selector: a.selector()?,
        pool: a.pool()?,
        priority: a.priority()?,
        vm_id: a.vm_id()?,
        restart: a.restart()?,
    };
    if req.pool.is_none() && req.priority.is_none() && req.vm_id.is_none() {
        return Err(Error::Usage(Usage::Missing {
            function: a.spec.name,
            keys: a.spec.optional.to_vec(),
            what: None,
        }));
    }
    Ok(Request::Update(req))
}

pub(crate) fn show(a: &Args<'_>) -> Result<Request> {
    Ok(Request::Show(a.selector()?))
}

pub(crate) fn list(a: &Args<'_>) -> Result<Request> {
    Ok(Request::List(ListFilter {
        pool: a.pool()?,
        priority: if a.spec.optional.contains(&"priority") {
            a.priority()?
        } else {
            None
        },
        quarantined: a.spec.flags.contains(&"quarantined") && a.flag("quarantined")?,
    }))
}

pub(crate) fn refresh(a: &Args<'_>) -> Result<Request> {
    Ok(Request::Refresh {
        reload: a.flag("reload")?,
    })
}

pub(crate) fn set_weight(a: &Args<'_>) -> Result<Request> {
    let weight = parse_weight(a.get("weight").ok_or_else(|| missing(a, "weight"))?)?;
    Ok(Request::SetControls(
        a.selector()?,
        ControlChange {
            weight: Some(weight),
            ..ControlChange::default()
        },
    ))
}

pub(crate) fn set_rate_limit(a: &Args<'_>) -> Result<Request> {
    let rate = parse_bounded(
        "rate",
        a.get("rate").ok_or_else(|| missing(a, "rate"))?,
        0,
        u32::MAX,
    )?;
    let depth = a
        .get("queue-depth")
        .map(|d| parse_bounded("queue-depth", d, 0, u32::MAX))
        .transpose()?;
    Ok(Request::SetControls(
        a.selector()?,
        ControlChange {
            max_jobs_per_sec: Some(rate),
            max_queue_depth: depth,
            ..ControlChange::default()
        },
    ))
}

pub(crate) fn quarantine(a: &Args<'_>, on: bool) -> Result<Request> {
    Ok(Request::SetControls(
        a.selector()?,
        ControlChange {
            quarantined: Some(on),
            ..ControlChange::default()
        },
    ))
}

pub(crate) fn mediator(a: &Args<'_>) -> Result<Request> {
    let raw = a.get("action").ok_or_else(|| missing(a, "action"))?;
    let action = MediatorAction::parse(raw)?;
    let prometheus = a.flag("prometheus")?;
    if prometheus && action != MediatorAction::Metrics {
        return Err(Error::invalid(
            "prometheus",
            "true",
            format!("only the metrics action has a Prometheus form, not {raw}"),
        ));
    }
    let target = match (a.get("host"), a.flag("all-hosts")?) {
        (Some(_), true) => {
            return Err(Error::Usage(Usage::Conflict {
                function: a.spec.name,
                keys: vec!["host", "all-hosts"],
            }))
        }
        (Some(h), false) => MediatorTarget::Host(h.to_string()),
        (None, true) => MediatorTarget::AllHosts,
        (None, false) => MediatorTarget::Here,
    };
    Ok(Request::Mediator {
        action,
        prometheus,
        target,
    })
}

pub(crate) fn show_pool(a: &Args<'_>) -> Result<Request> {
    Ok(Request::ShowPool(
        a.pool()?.ok_or_else(|| missing(a, "pool"))?,
    ))
}

pub(crate) fn remove(a: &Args<'_>) -> Result<Request> {
    let restart = a.restart()?;
    Ok(match (a.get("vm-uuid"), a.get("vm-name")) {
        (Some(u), None) if parse_vm_selector_uuid(u).is_err() => Request::RemoveInvalidRow {
            raw_uuid: u.to_string(),
        },
        _ => Request::Remove(a.selector()?, restart),
    })
}

/// `all=true` or one VM, not both, not neither.
fn target(a: &Args<'_>, what: &'static str) -> Result<SyncTarget> {
    Ok(match (a.flag("all")?, a.has_vm()) {
        (true, false) => SyncTarget::All,
        (false, true) => SyncTarget::One(a.selector()?),
        (true, true) => {
            return Err(Error::Usage(Usage::Conflict {
                function: a.spec.name,
                keys: vec!["all", "vm-uuid", "vm-name"],
            }))
        }
        (false, false) => {
            return Err(Error::Usage(Usage::Missing {
                function: a.spec.name,
                keys: vec!["all", "vm-uuid", "vm-name"],
                what: Some(what),
            }))
        }
    })
}

pub(crate) fn rebuild(a: &Args<'_>) -> Result<Request> {
    Ok(Request::Rebuild {
        dry_run: a.flag("dry-run")?,
    })
}

pub(crate) fn adopt(a: &Args<'_>) -> Result<Request> {
    Ok(Request::Adopt {
        target: target(a, "the VMs to adopt")?,
        dry_run: a.flag("dry-run")?,
    })
}

pub(crate) fn sync(a: &Args<'_>) -> Result<Request> {
    let target = match (a.flag("all")?, a.has_vm()) {
        (true, false) => SyncTarget::All,
        (false, true) => SyncTarget::One(a.selector()?),
        (true, true) => {
            return Err(Error::Usage(Usage::Conflict {
                function: a.spec.name,
                keys: vec!["all", "vm-uuid", "vm-name"],
            }))
        }
        (false, false) => {
            return Err(Error::Usage(Usage::Missing {
                function: a.spec.name,
                keys: vec!["all", "vm-uuid", "vm-name"],
                what: Some("the VMs to sync"),
            }))
        }
    };
    Ok(Request::Sync {
        target,
        dry_run: a.flag("dry-run")?,
        restart: a.restart()?,
    })
}

/// Runs a validated request.
pub(crate) fn execute(ctx: &mut Ctx<'_>, req: Request) -> Result<Outcome> {
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
            let invalid = match parse_vm_selector_uuid(&raw_uuid) {
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
        // They act on this host (its file, its mediator): the service runs them.
        Request::Refresh { .. } | Request::Mediator { .. } => {
            return Err(Error::Internal(
                "refresh and mediator are run by the service, not as operations".into(),
            ))
        }
        Request::SetControls(s, c) => Outcome::Applied(ctx.set_controls(&s, c)?),
        Request::Adopt { target, dry_run } => Outcome::Adopt(ctx.adopt(&target, dry_run)?),
        Request::Rebuild { dry_run } => Outcome::Rebuild(ctx.rebuild(dry_run)?),
    })
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
    fn register_parses() {
        let call = Call::parse(
            "register",
            &args(&[
                ("vm-uuid", U),
                ("pool", "b"),
                ("priority", "2"),
                ("vm_id", "7"),
            ]),
        )
        .unwrap();
        match call.request {
            Request::Register(r) => {
                assert_eq!(r.pool, Pool::B);
                assert_eq!(r.priority, Priority::High);
                assert_eq!(r.vm_id, Some(7));
                assert_eq!(r.selector, Selector::Uuid(U.into()));
                assert_eq!(r.name, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(call.args.get("vm-id").map(String::as_str), Some("7"));
    }

    #[test]
    fn set_functions_change_only_their_field() {
        let call = Call::parse("set_pool", &args(&[("vm-name", "x"), ("pool", "A")])).unwrap();
        match call.request {
            Request::Update(r) => {
                assert_eq!(r.pool, Some(Pool::A));
                assert_eq!((r.priority, r.vm_id), (None, None));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forwarding_marker_is_not_an_argument() {
        let call = Call::parse("scan", &args(&[("forwarded-by", "host-1")])).unwrap();
        assert_eq!(call.forwarded_by.as_deref(), Some("host-1"));
        assert!(call.args.is_empty());
    }

    #[test]
    fn confirmation_is_asked_only_for_an_unconfirmed_restart() {
        let a = args(&[("vm-uuid", U), ("restart", "true")]);
        let mut call = Call::parse("remove", &a).unwrap();
        assert!(call.wants_confirmation());
        call.confirm();
        assert!(!call.wants_confirmation());
        assert_eq!(call.args.get("yes").map(String::as_str), Some("true"));
        let call = Call::parse("remove", &args(&[("vm-uuid", U)])).unwrap();
        assert!(!call.wants_confirmation());
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
                &[("vm-uuid", U)],
                "needs vm-id (1 to 4294967295)",
            ),
            (
                "set-vm-id",
                &[("vm-uuid", U), ("vm-name", "x"), ("vm-id", "1")],
                "not both",
            ),
            (
                "set-pool",
                &[("vm-uuid", U), ("priority", "low")],
                "\"priority\"",
            ),
            ("show", &[], "vm-uuid or vm-name"),
            ("update", &[("vm-uuid", U)], "at least one"),
            ("sync", &[], "all=true"),
            ("sync", &[("all", "yes")], "\"yes\""),
            ("list", &[("priority", "urgent")], "\"urgent\""),
            ("list", &[("pool", "A"), ("pool_", "B")], "\"pool_\""),
        ];
        for (f, a, needle) in cases {
            let e = Call::parse(f, &args(a)).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgument, "{f} {a:?}");
            assert!(e.to_string().contains(needle), "{f} {a:?}: {e}");
        }
    }
}

/// What `mediator` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediatorAction {
    Metrics,
    Health,
    Connections,
    Reload,
}

impl MediatorAction {
    pub const ALL: [MediatorAction; 4] = [
        MediatorAction::Metrics,
        MediatorAction::Health,
        MediatorAction::Connections,
        MediatorAction::Reload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MediatorAction::Metrics => "metrics",
            MediatorAction::Health => "health",
            MediatorAction::Connections => "connections",
            MediatorAction::Reload => "reload",
        }
    }

    fn parse(s: &str) -> Result<MediatorAction> {
        MediatorAction::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::invalid(
                    "action",
                    s,
                    "expected metrics, health, connections or reload",
                )
            })
    }
}

/// Which mediators `mediator` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediatorTarget {
    /// This host's.
    Here,
    /// That host's (uuid or name-label), through its plugin.
    Host(String),
    AllHosts,
}
