//! Operations against an in-memory pool with fault injection.

use super::*;
use crate::dma::PLATFORM_KEY;
use crate::ErrorCode;
use std::cell::RefCell;
use xapi::{HostRecord, XapiError};

#[derive(Default)]
struct FakePool {
    vms: RefCell<Vec<VmRecord>>,
    /// pool.other_config
    pool_config: RefCell<BTreeMap<String, String>>,
    /// other_config of the one member host
    host_config: RefCell<BTreeMap<String, String>>,
    calls: RefCell<Vec<String>>,
    /// (method, remaining calls to let through before failing, failures left)
    faults: RefCell<Vec<(String, usize, usize)>>,
    /// The same for calls that go unanswered (a timeout): carried out first when `.3`.
    lost: RefCell<Vec<(String, usize, usize, bool)>>,
}

impl FakePool {
    fn with(vms: Vec<VmRecord>) -> FakePool {
        FakePool {
            vms: RefCell::new(vms),
            ..Default::default()
        }
    }

    fn fail(&self, method: &str, skip: usize, times: usize) {
        self.faults
            .borrow_mut()
            .push((method.to_string(), skip, times));
    }

    fn lose(&self, method: &str, skip: usize, times: usize, carried_out: bool) {
        self.lost
            .borrow_mut()
            .push((method.to_string(), skip, times, carried_out));
    }

    /// After a call that `lose(.., true)` names has been carried out.
    fn leave(&self, method: &str) -> xapi::Result<()> {
        self.lost_answer(method, true)
    }

    fn lost_answer(&self, method: &str, carried_out: bool) -> xapi::Result<()> {
        for f in self.lost.borrow_mut().iter_mut() {
            if f.0 == method && f.3 == carried_out {
                if f.1 > 0 {
                    f.1 -= 1;
                } else if f.2 > 0 {
                    f.2 -= 1;
                    return Err(XapiError::Timeout {
                        endpoint: "fake".into(),
                        method: method.to_string(),
                        seconds: 1,
                    });
                }
            }
        }
        Ok(())
    }

    fn enter(&self, method: &str) -> xapi::Result<()> {
        self.calls.borrow_mut().push(method.to_string());
        self.lost_answer(method, false)?;
        for f in self.faults.borrow_mut().iter_mut() {
            if f.0 == method {
                if f.1 > 0 {
                    f.1 -= 1;
                } else if f.2 > 0 {
                    f.2 -= 1;
                    return Err(XapiError::Api {
                        method: method.to_string(),
                        code: "INTERNAL_ERROR".into(),
                        params: vec!["injected".into()],
                    });
                }
            }
        }
        Ok(())
    }

    fn count(&self, method: &str) -> usize {
        self.calls.borrow().iter().filter(|c| *c == method).count()
    }

    fn vm(&self, r: &str) -> VmRecord {
        self.vms
            .borrow()
            .iter()
            .find(|v| v.opaque_ref == r)
            .cloned()
            .unwrap()
    }

    fn dma(&self, r: &str) -> Option<String> {
        self.vm(r).platform.get(PLATFORM_KEY).cloned()
    }

    fn edit(&self, r: &str, f: impl FnOnce(&mut VmRecord)) {
        let mut vms = self.vms.borrow_mut();
        f(vms.iter_mut().find(|v| v.opaque_ref == r).unwrap());
    }
}

impl Xapi for FakePool {
    fn list_vms(&self) -> xapi::Result<Vec<VmRecord>> {
        self.enter("VM.get_all_records_where")?;
        Ok(self
            .vms
            .borrow()
            .iter()
            .filter(|v| is_real_vm(v))
            .cloned()
            .collect())
    }
    fn vm_by_uuid(&self, uuid: &str) -> xapi::Result<Option<VmRecord>> {
        self.enter("VM.get_by_uuid")?;
        Ok(self.vms.borrow().iter().find(|v| v.uuid == uuid).cloned())
    }
    fn vms_by_name(&self, name: &str) -> xapi::Result<Vec<VmRecord>> {
        self.enter("VM.get_by_name_label")?;
        Ok(self
            .vms
            .borrow()
            .iter()
            .filter(|v| v.name_label == name)
            .cloned()
            .collect())
    }
    fn get_platform(&self, vm_ref: &str) -> xapi::Result<BTreeMap<String, String>> {
        self.enter("VM.get_platform")?;
        Ok(self.vm(vm_ref).platform)
    }
    fn set_platform(&self, vm_ref: &str, platform: &BTreeMap<String, String>) -> xapi::Result<()> {
        self.enter("VM.set_platform")?;
        self.edit(vm_ref, |v| v.platform = platform.clone());
        self.leave("VM.set_platform")
    }
    fn power_state(&self, vm_ref: &str) -> xapi::Result<String> {
        self.enter("VM.get_power_state")?;
        Ok(self.vm(vm_ref).power_state)
    }
    fn clean_shutdown(&self, vm_ref: &str, _timeout_s: u64) -> xapi::Result<()> {
        self.enter("VM.clean_shutdown")?;
        self.edit(vm_ref, |v| v.power_state = "Halted".into());
        Ok(())
    }
    fn start(&self, vm_ref: &str) -> xapi::Result<()> {
        self.enter("VM.start")?;
        self.edit(vm_ref, |v| v.power_state = "Running".into());
        Ok(())
    }
    fn pool(&self) -> xapi::Result<xapi::PoolRecord> {
        self.enter("pool.get_all_records")?;
        Ok(xapi::PoolRecord {
            opaque_ref: "OpaqueRef:pool".into(),
            master: "OpaqueRef:h1".into(),
            other_config: self.pool_config.borrow().clone(),
        })
    }
    fn hosts(&self) -> xapi::Result<Vec<HostRecord>> {
        Ok(vec![self.host_record("OpaqueRef:h1")?])
    }
    fn host_record(&self, host_ref: &str) -> xapi::Result<HostRecord> {
        Ok(HostRecord {
            opaque_ref: host_ref.into(),
            uuid: host_ref.trim_start_matches("OpaqueRef:").into(),
            name_label: "master".into(),
            other_config: BTreeMap::new(),
        })
    }
    fn add_to_other_config(
        &self,
        class: xapi::Class,
        obj: &str,
        key: &str,
        value: &str,
    ) -> xapi::Result<()> {
        self.enter(&format!("{}.add_to_other_config", class.api_name()))?;
        let duplicate = || XapiError::Api {
            method: "add_to_other_config".into(),
            code: "MAP_DUPLICATE_KEY".into(),
            params: vec![key.into()],
        };
        match class {
            xapi::Class::Pool => {
                let mut m = self.pool_config.borrow_mut();
                if m.contains_key(key) {
                    return Err(duplicate());
                }
                m.insert(key.into(), value.into());
                drop(m);
                self.leave("pool.add_to_other_config")?;
            }
            xapi::Class::Vm => {
                if self.vm(obj).other_config.contains_key(key) {
                    return Err(duplicate());
                }
                self.edit(obj, |v| {
                    v.other_config.insert(key.into(), value.into());
                });
            }
            xapi::Class::Host => {
                let mut m = self.host_config.borrow_mut();
                if m.contains_key(key) {
                    return Err(duplicate());
                }
                m.insert(key.into(), value.into());
            }
        }
        Ok(())
    }
    fn remove_from_other_config(
        &self,
        class: xapi::Class,
        obj: &str,
        key: &str,
    ) -> xapi::Result<()> {
        self.enter(&format!("{}.remove_from_other_config", class.api_name()))?;
        match class {
            xapi::Class::Pool => {
                self.pool_config.borrow_mut().remove(key);
            }
            xapi::Class::Vm => self.edit(obj, |v| {
                v.other_config.remove(key);
            }),
            xapi::Class::Host => {
                self.host_config.borrow_mut().remove(key);
            }
        }
        Ok(())
    }
    fn host_by_uuid(&self, _uuid: &str) -> xapi::Result<Option<HostRecord>> {
        unreachable!("not used by these operations")
    }
    fn call_plugin(
        &self,
        _h: &str,
        _p: &str,
        _f: &str,
        _a: &BTreeMap<String, String>,
    ) -> xapi::Result<String> {
        unreachable!("not used by these operations")
    }
}

fn vm(n: u8, name: &str, power: &str, dma: Option<&str>) -> VmRecord {
    let mut platform = BTreeMap::new();
    platform.insert("viridian".to_string(), "true".to_string());
    if let Some(d) = dma {
        platform.insert(PLATFORM_KEY.to_string(), d.to_string());
    }
    VmRecord {
        opaque_ref: format!("OpaqueRef:{n}"),
        uuid: format!("00000000-0000-0000-0000-0000000000{n:02x}"),
        name_label: name.into(),
        power_state: power.into(),
        platform,
        is_a_template: false,
        is_a_snapshot: false,
        is_control_domain: false,
        resident_on: "OpaqueRef:NULL".into(),
        other_config: BTreeMap::new(),
    }
}

fn pool() -> FakePool {
    let mut tpl = vm(9, "template", "Halted", None);
    tpl.is_a_template = true;
    FakePool::with(vec![
        vm(1, "one", "Running", Some("-m 1 'a b'")),
        vm(2, "two", "Halted", None),
        vm(
            3,
            "stub",
            "Halted",
            Some("-device vgpu-stub,pool_id=B,priority=1,vm_id=3,keep=on"),
        ),
        vm(4, "paused", "Paused", None),
        tpl,
    ])
}

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    config: Config,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("r.db")).unwrap();
    World {
        _dir: dir,
        store,
        config: Config::default(),
    }
}

fn uuid(n: u8) -> String {
    format!("00000000-0000-0000-0000-0000000000{n:02x}")
}

fn reg(n: u8, pool: Pool, priority: Priority, vm_id: Option<u32>) -> RegisterReq {
    RegisterReq {
        selector: Selector::Uuid(uuid(n)),
        name: None,
        pool,
        priority,
        vm_id,
        restart: Restart::default(),
    }
}

fn dump(store: &Store) -> Vec<Registration> {
    store.list(&ListFilter::default()).unwrap()
}

#[test]
fn register_writes_registry_and_device_keeping_foreign_tokens() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    let a = ctx.register(reg(1, Pool::A, Priority::High, None)).unwrap();
    assert_eq!(a.registration.vm_id, 1);
    assert_eq!(a.registration.vm_name.as_deref(), Some("one"));
    assert!(a.applied && a.pending_restart && !a.restarted);
    assert_eq!(
        x.dma("OpaqueRef:1").as_deref(),
        Some("-m 1 'a b' -device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=1")
    );
    let b = ctx.register(reg(2, Pool::B, Priority::Low, None)).unwrap();
    assert_eq!(b.registration.vm_id, 2);
    assert!(!b.pending_restart, "a halted VM has nothing pending");
}

#[test]
fn legacy_stub_is_replaced_in_place() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    ctx.register(reg(3, Pool::A, Priority::Medium, Some(9)))
        .unwrap();
    assert_eq!(
        x.dma("OpaqueRef:3").as_deref(),
        Some("-device vgpu-cuda,pool_id=A,priority=medium,vm_id=9,keep=on")
    );
}

#[test]
fn templates_are_not_vms() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    let e = ctx
        .register(reg(9, Pool::A, Priority::High, None))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::VmNotFound);
}

#[test]
fn failed_platform_write_rolls_back_and_puts_args_back() {
    for (method, skip, times) in [("VM.get_platform", 0, 1), ("VM.set_platform", 0, 1)] {
        let (mut w, x) = (world(), pool());
        let before = x.vm("OpaqueRef:1").platform;
        x.fail(method, skip, times);
        let mut ctx = Ctx {
            store: &mut w.store,
            xapi: &x,
            config: &w.config,
            me: None,
            committed: None,
        };
        let e = ctx
            .register(reg(1, Pool::A, Priority::High, None))
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::XapiError, "{method}");
        assert!(e.to_string().contains("unchanged"), "{method}: {e}");
        assert_eq!(x.vm("OpaqueRef:1").platform, before, "{method}");
        assert!(dump(&w.store).is_empty(), "{method}");
        // an error reply proves nothing was written: no undo
        assert!(x.count("VM.set_platform") <= 1, "{method}");
    }
}

#[test]
fn unanswered_platform_write_is_put_back_and_names_the_repair() {
    for (method, carried_out) in [("VM.set_platform", false), ("VM.set_platform", true)] {
        let (mut w, x) = (world(), pool());
        let before = x.vm("OpaqueRef:1").platform;
        x.lose(method, 0, 1, carried_out);
        let mut ctx = Ctx {
            store: &mut w.store,
            xapi: &x,
            config: &w.config,
            me: None,
            committed: None,
        };
        let e = ctx
            .register(reg(1, Pool::A, Priority::High, None))
            .unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.code(), ErrorCode::XapiError, "{method}");
        assert!(msg.contains("may still carry out"), "{method}: {msg}");
        let repair = format!(
            "`xe vm-param-set uuid={} platform:{PLATFORM_KEY}='-m 1 '\\''a b'\\'''`",
            uuid(1)
        );
        assert!(msg.contains(&repair), "{carried_out}: {msg}");
        assert_eq!(x.vm("OpaqueRef:1").platform, before, "{carried_out}");
        assert!(dump(&w.store).is_empty(), "{carried_out}");
        // The undo reads the map afresh: a write that landed is set back, one that did not
        // needs no second write.
        assert_eq!(x.count("VM.get_platform"), 2, "{carried_out}");
        let sets = if carried_out { 2 } else { 1 };
        assert_eq!(x.count(method), sets, "{carried_out}");
    }
}

#[test]
fn unanswered_claim_is_undone_and_does_not_block_the_next_change() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    ctx.register(reg(2, Pool::A, Priority::Low, None)).unwrap();
    let claims = || {
        x.pool_config
            .borrow()
            .keys()
            .filter(|k| k.starts_with(crate::pool::CLAIM_PREFIX))
            .cloned()
            .collect::<Vec<_>>()
    };
    let before = claims();
    x.lose("pool.add_to_other_config", 0, 1, true);
    let e = ctx
        .register(reg(1, Pool::A, Priority::High, None))
        .unwrap_err();
    assert!(e.to_string().contains("`vgpu-admin sync --all`"), "{e}");
    assert_eq!(claims(), before);
    ctx.register(reg(1, Pool::A, Priority::High, None)).unwrap();
}

#[test]
fn failed_compensation_says_how_to_repair() {
    // The write lands but its answer is lost; the undo then fails at its read or its write.
    for (method, skip) in [("VM.get_platform", 1), ("VM.set_platform", 1)] {
        let (mut w, x) = (world(), pool());
        x.lose("VM.set_platform", 0, 1, true);
        x.fail(method, skip, 1);
        let mut ctx = Ctx {
            store: &mut w.store,
            xapi: &x,
            config: &w.config,
            me: None,
            committed: None,
        };
        let e = ctx
            .register(reg(1, Pool::A, Priority::High, None))
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.ends_with(&format!(
                "xe vm-param-set uuid={} platform:device-model-args='-m 1 '\\''a b'\\'''",
                uuid(1)
            )),
            "{method}: {msg}"
        );
        assert!(msg.contains("registry is unchanged"), "{method}: {msg}");
        assert!(
            msg.contains("may be left with the new device-model-args"),
            "{method}: {msg}"
        );
        assert!(dump(&w.store).is_empty(), "{method}");
        let now = x.dma("OpaqueRef:1").unwrap();
        assert!(
            now.starts_with("-m 1 'a b' -device vgpu-cuda"),
            "{method}: {now}"
        );
        assert_eq!(
            x.vm("OpaqueRef:1")
                .platform
                .get("viridian")
                .map(String::as_str),
            Some("true"),
            "{method}"
        );
    }
}

#[test]
fn vm_id_conflict_changes_nothing_and_names_the_owner() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    ctx.register(reg(1, Pool::A, Priority::High, Some(5)))
        .unwrap();
    let e = ctx
        .register(reg(2, Pool::B, Priority::Low, Some(5)))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("VM ID 5 already in use by VM {} (one)", uuid(1))
    );
    assert_eq!(e.details()["next_free_vm_id"], 1);
    assert_eq!(x.dma("OpaqueRef:2"), None);
    assert_eq!(x.count("VM.set_platform"), 1);
}

#[test]
fn restart_needs_confirmation_and_refuses_paused() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    let mut r = reg(1, Pool::A, Priority::High, None);
    r.restart = Restart {
        requested: true,
        confirmed: false,
    };
    let e = ctx.register(r.clone()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ConfirmationRequired);
    assert!(dump(ctx.store).is_empty());

    r.restart.confirmed = true;
    let a = ctx.register(r).unwrap();
    assert!(a.restarted && !a.pending_restart);
    assert_eq!(x.count("VM.clean_shutdown"), 1);
    assert_eq!(x.count("VM.start"), 1);

    let mut p = reg(4, Pool::A, Priority::Low, None);
    p.restart = Restart {
        requested: true,
        confirmed: true,
    };
    let e = ctx.register(p).unwrap_err();
    assert_eq!(e.code(), ErrorCode::VmState);
    assert_eq!(dump(ctx.store).len(), 1);

    // A halted VM is not started.
    let mut h = reg(2, Pool::A, Priority::Low, None);
    h.restart = Restart {
        requested: true,
        confirmed: false,
    };
    let a = ctx.register(h).unwrap();
    assert!(!a.restarted);
    assert_eq!(x.count("VM.start"), 1);
}

#[test]
fn scan_reports_every_state_in_one_listing() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    ctx.register(reg(1, Pool::A, Priority::High, None)).unwrap();
    ctx.register(reg(2, Pool::B, Priority::Low, None)).unwrap();
    // Drift by hand on VM 2, registry row for a VM that disappears.
    x.edit("OpaqueRef:2", |v| {
        v.platform.insert(
            PLATFORM_KEY.into(),
            "-device vgpu-stub,pool_id=B,priority=0,vm_id=2".into(),
        );
    });
    ctx.register(reg(4, Pool::A, Priority::Low, None)).unwrap();
    x.vms.borrow_mut().retain(|v| v.uuid != uuid(4));
    x.edit("OpaqueRef:1", |v| {
        v.platform.remove(PLATFORM_KEY);
    });
    x.calls.borrow_mut().clear();

    let s = ctx.scan().unwrap();
    assert_eq!(*x.calls.borrow(), vec!["VM.get_all_records_where"]);
    assert_eq!(s.summary.total_vms, 3);
    assert_eq!(s.summary.registered, 2);
    assert_eq!(s.summary.unregistered, 1);
    assert_eq!(s.summary.stale, 1);
    assert_eq!(s.stale[0].registration.vm_uuid, uuid(4));
    let one = s
        .registered
        .iter()
        .find(|r| r.registration.vm_uuid == uuid(1))
        .unwrap();
    assert_eq!(one.status, VmStatus::NotApplied);
    let two = s
        .registered
        .iter()
        .find(|r| r.registration.vm_uuid == uuid(2))
        .unwrap();
    assert_eq!(two.status, VmStatus::Drift);
    let fields: Vec<_> = two
        .drift
        .iter()
        .map(|d| (d.field.as_str(), d.device.clone()))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("device_type", Some("vgpu-stub".to_string())),
            ("priority", Some("0".to_string()))
        ]
    );

    // sync: dry run changes nothing, then applies both, stale untouched.
    let r = ctx
        .sync(&SyncTarget::All, true, Restart::default())
        .unwrap();
    assert!(r.results.iter().any(|i| i.action == SyncAction::WouldApply));
    assert_eq!(x.dma("OpaqueRef:1"), None);
    let r = ctx
        .sync(&SyncTarget::All, false, Restart::default())
        .unwrap();
    assert_eq!(r.failed, 0);
    assert_eq!(
        x.dma("OpaqueRef:2").as_deref(),
        Some("-device vgpu-cuda,pool_id=B,priority=low,vm_id=2")
    );
    let s = ctx.scan().unwrap();
    assert_eq!(s.summary.configured, 2);
}

#[test]
fn remove_takes_only_the_vgpu_entry_and_stale_rows_go_from_the_registry_only() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    ctx.register(reg(1, Pool::A, Priority::High, None)).unwrap();
    ctx.register(reg(2, Pool::A, Priority::High, None)).unwrap();
    let a = ctx
        .remove(&Selector::Uuid(uuid(1)), Restart::default())
        .unwrap();
    assert!(a.removed);
    assert_eq!(x.dma("OpaqueRef:1").as_deref(), Some("-m 1 'a b'"));
    // VM 2 had no other args: the key goes entirely.
    ctx.remove(&Selector::Name("two".into()), Restart::default())
        .unwrap();
    assert_eq!(x.dma("OpaqueRef:2"), None);
    assert!(dump(ctx.store).is_empty());

    ctx.register(reg(3, Pool::B, Priority::Low, None)).unwrap();
    x.vms.borrow_mut().retain(|v| v.uuid != uuid(3));
    let calls_before = x.count("VM.set_platform");
    let a = ctx
        .remove(&Selector::Name("stub".into()), Restart::default())
        .unwrap();
    assert_eq!(a.power_state, None);
    assert_eq!(x.count("VM.set_platform"), calls_before);
    assert!(dump(ctx.store).is_empty());
}

fn locked() -> Error {
    Error::database(
        "r.db",
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(5),
            Some("database is locked".into()),
        ),
    )
}

#[test]
fn failed_commit_puts_device_model_args_back() {
    let x = pool();
    let vm = x.vm("OpaqueRef:1");
    let before = x.dma("OpaqueRef:1");
    let change = DeviceChange::Set(spec_of(&Config::default(), Pool::A, Priority::High, 1));
    let e = apply_to_vm(&x, &vm, &change, "vgpu-cuda", || Err(locked())).unwrap_err();
    assert_eq!(e.code(), ErrorCode::DatabaseError);
    let msg = e.to_string();
    assert!(
        msg.starts_with("database r.db: database is locked; "),
        "{msg}"
    );
    assert!(
        msg.ends_with("device-model-args were put back; nothing was changed"),
        "{msg}"
    );
    assert_eq!(x.dma("OpaqueRef:1"), before);
    assert_eq!(e.details()["vm_uuid"], uuid(1));
    assert!(
        std::error::Error::source(&e).is_some(),
        "the commit error is kept"
    );
}

#[test]
fn failed_commit_restores_only_our_key_from_a_fresh_read() {
    let x = pool();
    let vm = x.vm("OpaqueRef:1");
    let before = x.dma("OpaqueRef:1");
    let change = DeviceChange::Set(spec_of(&Config::default(), Pool::A, Priority::High, 1));
    // Someone else writes another platform key between our write and our undo.
    let e = apply_to_vm(&x, &vm, &change, "vgpu-cuda", || {
        x.edit("OpaqueRef:1", |v| {
            v.platform.insert("nested-virt".into(), "true".into());
        });
        Err(locked())
    })
    .unwrap_err();
    assert!(e.to_string().ends_with("nothing was changed"), "{e}");
    let platform = x.vm("OpaqueRef:1").platform;
    assert_eq!(platform.get(PLATFORM_KEY), before.as_ref());
    assert_eq!(
        platform.get("nested-virt").map(String::as_str),
        Some("true")
    );
    assert_eq!(platform.get("viridian").map(String::as_str), Some("true"));
    assert_eq!(x.count("VM.get_platform"), 2);
    assert_eq!(x.count("VM.set_platform"), 2);
}

#[test]
fn failed_commit_and_failed_restore_say_what_remains_and_how_to_repair() {
    let change = DeviceChange::Set(spec_of(&Config::default(), Pool::A, Priority::High, 1));
    let repair = format!(
        "xe vm-param-set uuid={} platform:device-model-args='-m 1 '\\''a b'\\'''",
        uuid(1)
    );
    // The write goes through; the restore fails at its fresh read or at its write. Either way
    // the VM keeps the new value, other keys included, and the message names it.
    for (method, skip) in [("VM.get_platform", 1), ("VM.set_platform", 1)] {
        let x = pool();
        let vm = x.vm("OpaqueRef:1");
        x.fail(method, skip, 1);
        let e = apply_to_vm(&x, &vm, &change, "vgpu-cuda", || Err(locked())).unwrap_err();
        assert_eq!(e.code(), ErrorCode::DatabaseError, "{method}");
        let msg = e.to_string();
        assert!(msg.ends_with(&repair), "{method}: {msg}");
        assert!(
            msg.contains("putting device-model-args back also failed"),
            "{method}: {msg}"
        );
        let now = x.dma("OpaqueRef:1").unwrap();
        assert!(now.contains("vgpu-cuda"), "{method}: {now}");
        assert!(now.starts_with("-m 1 'a b' "), "{method}: {now}");
        assert!(
            msg.contains(&format!("device-model-args {now:?}")),
            "{method}: {msg}"
        );
        assert_eq!(e.details()["repair_command"], repair, "{method}");
        assert_eq!(
            x.vm("OpaqueRef:1")
                .platform
                .get("viridian")
                .map(String::as_str),
            Some("true"),
            "{method}"
        );
    }
}

#[test]
fn failed_commit_of_an_unchanged_device_touches_nothing() {
    let x = pool();
    let vm = x.vm("OpaqueRef:1");
    let e = apply_to_vm(&x, &vm, &DeviceChange::Keep, "vgpu-cuda", || Err(locked())).unwrap_err();
    assert_eq!(e.code(), ErrorCode::DatabaseError);
    assert_eq!(x.count("VM.set_platform"), 0);
}

#[test]
fn a_chosen_name_is_kept_by_sync_and_finds_the_vm() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    let mut r = reg(1, Pool::A, Priority::High, None);
    r.name = Some("VM-2".into());
    assert_eq!(
        ctx.register(r).unwrap().registration.vm_name.as_deref(),
        Some("VM-2")
    );
    ctx.register(reg(2, Pool::B, Priority::Low, None)).unwrap();
    // The chosen name selects the VM; so does its name-label.
    let named = Selector::Name("VM-2".into());
    assert_eq!(ctx.show(&named).unwrap().registration.vm_uuid, uuid(1));
    assert_eq!(
        ctx.resolve(&Selector::Name("one".into())).unwrap().uuid,
        uuid(1)
    );

    // Both VMs are renamed in XAPI: sync refreshes the name-label it stored, keeps the chosen one.
    x.edit("OpaqueRef:1", |v| v.name_label = "renamed-one".into());
    x.edit("OpaqueRef:2", |v| v.name_label = "renamed-two".into());
    let dry = ctx
        .sync(&SyncTarget::All, true, Restart::default())
        .unwrap();
    let by = |u: &str| dry.results.iter().find(|i| i.vm_uuid == u).unwrap().clone();
    assert_eq!(by(&uuid(1)).action, SyncAction::Unchanged);
    assert!(by(&uuid(1)).changes.is_empty());
    let two = by(&uuid(2));
    assert_eq!(two.action, SyncAction::WouldRename);
    assert_eq!(
        two.changes,
        vec![SyncChange {
            field: "vm_name".into(),
            old: Some("two".into()),
            new: Some("renamed-two".into()),
        }]
    );
    ctx.sync(&SyncTarget::All, false, Restart::default())
        .unwrap();
    let names: Vec<_> = dump(ctx.store).into_iter().map(|r| r.vm_name).collect();
    assert_eq!(names, [Some("VM-2".into()), Some("renamed-two".into())]);
}

#[test]
fn a_dry_run_shows_the_device_model_args_it_would_write() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    ctx.register(reg(1, Pool::A, Priority::High, Some(4)))
        .unwrap();
    x.edit("OpaqueRef:1", |v| {
        v.platform.insert(PLATFORM_KEY.into(), "-m 1".into());
    });
    let dry = ctx
        .sync(&SyncTarget::All, true, Restart::default())
        .unwrap();
    assert_eq!(
        dry.results[0].changes,
        vec![SyncChange {
            field: "device_model_args".into(),
            old: Some("-m 1".into()),
            new: Some("-m 1 -device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=4".into()),
        }]
    );
    assert_eq!(
        x.dma("OpaqueRef:1").as_deref(),
        Some("-m 1"),
        "a dry run changes nothing"
    );
}

#[test]
fn a_label_the_registry_cannot_store_is_refused_as_a_typed_name_would_be() {
    let (mut w, x) = (world(), pool());
    x.edit("OpaqueRef:2", |v| v.name_label = "tab\there".into());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    let e = ctx
        .register(reg(2, Pool::A, Priority::Low, None))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.to_string().contains("cannot store it"), "{e}");
    assert!(dump(ctx.store).is_empty());
    let mut r = reg(2, Pool::A, Priority::Low, None);
    r.name = Some("two".into());
    assert!(ctx.register(r).is_ok(), "a chosen name is the way out");
}

#[test]
fn a_uuid_prefix_selects_one_vm_or_lists_the_candidates() {
    let (mut w, x) = (world(), pool());
    let ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    // The fake pool's uuids differ in their last digit only.
    let one = Selector::UuidPrefix(uuid(1));
    assert_eq!(ctx.resolve(&one).unwrap().uuid, uuid(1));
    let many = Selector::UuidPrefix("00000000-0000".into());
    let e = ctx.resolve(&many).unwrap_err();
    assert_eq!(e.code(), ErrorCode::AmbiguousVmName);
    assert!(
        e.to_string()
            .starts_with("4 VMs have a uuid starting 00000000-0000"),
        "{e}"
    );
    let none = Selector::UuidPrefix("ffffffff".into());
    assert_eq!(
        ctx.resolve(&none).unwrap_err().code(),
        ErrorCode::VmNotFound
    );
}

// ---------------------------------------------------------------------------------------------
// The registry's copy in XAPI (SPEC §9)

fn mirror_of(x: &FakePool, r: &str) -> (Option<serde_json::Value>, Option<String>) {
    let vm = x.vm(r);
    (
        vm.other_config
            .get(crate::pool::VM_KEY)
            .map(|t| serde_json::from_str(t).unwrap()),
        vm.other_config.get(crate::pool::FIELD_KEY).cloned(),
    )
}

fn generation(x: &FakePool) -> Option<String> {
    x.pool_config
        .borrow()
        .get(crate::pool::GENERATION_KEY)
        .cloned()
}

#[test]
fn every_change_writes_the_mirror_and_bumps_the_generation() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    ctx.register(reg(1, Pool::A, Priority::High, Some(7)))
        .unwrap();
    assert_eq!(generation(&x).as_deref(), Some("1"));
    assert_eq!(ctx.committed, Some(1));
    let (row, field) = mirror_of(&x, "OpaqueRef:1");
    let row = row.unwrap();
    assert_eq!(
        (
            &row["vm_id"],
            &row["pool"],
            &row["priority"],
            &row["vm_name"]
        ),
        (
            &serde_json::json!(7),
            &serde_json::json!("A"),
            &serde_json::json!("high"),
            &serde_json::json!("one")
        )
    );
    assert!(row.get("created_at").is_some() && row.get("name_chosen").is_some());
    assert_eq!(field.as_deref(), Some("pool A, high, vm_id 7"));
    let pools: serde_json::Value =
        serde_json::from_str(&x.pool_config.borrow()[crate::pool::POOLS_KEY]).unwrap();
    assert_eq!(pools[0]["pool_id"], "A");
    assert_eq!(pools[1]["pool_name"], "Pool B");

    ctx.update(UpdateReq {
        selector: Selector::Uuid(uuid(1)),
        pool: Some(Pool::B),
        priority: None,
        vm_id: None,
        restart: Restart::default(),
    })
    .unwrap();
    assert_eq!(generation(&x).as_deref(), Some("2"));
    assert_eq!(
        mirror_of(&x, "OpaqueRef:1").1.as_deref(),
        Some("pool B, high, vm_id 7")
    );
    ctx.remove(&Selector::Uuid(uuid(1)), Restart::default())
        .unwrap();
    assert_eq!(mirror_of(&x, "OpaqueRef:1"), (None, None), "both keys go");
    assert_eq!(generation(&x).as_deref(), Some("3"));
    assert_eq!(
        ctx.store.meta().unwrap(),
        crate::store::Meta {
            role: Some(crate::store::Role::Primary),
            generation: Some(3)
        }
    );
}

#[test]
fn the_first_publication_carries_every_registration() {
    // A registry of before the mirror: rows the pool's copy does not have yet.
    let (mut w, x) = (world(), pool());
    {
        let tx = w.store.write().unwrap();
        tx.insert(
            &uuid(2),
            &NewValues {
                vm_name: Some("two".into()),
                pool: Pool::B,
                priority: Priority::Low,
                vm_id: 5,
            },
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    ctx.register(reg(1, Pool::A, Priority::High, None)).unwrap();
    let (row, field) = mirror_of(&x, "OpaqueRef:2");
    assert_eq!(row.unwrap()["vm_id"], 5);
    assert_eq!(field.as_deref(), Some("pool B, low, vm_id 5"));
    assert_eq!(generation(&x).as_deref(), Some("1"));
}

#[test]
fn a_failing_mirror_write_leaves_registry_device_and_mirror_as_they_were() {
    // VM 1's keys are absent, so they are added straight away; the pool's last change and
    // generation are replaced (remove, then add).
    for (method, skip) in [
        ("VM.add_to_other_config", 0),
        ("VM.add_to_other_config", 1),
        ("pool.add_to_other_config", 0),
        ("pool.remove_from_other_config", 0),
        ("pool.remove_from_other_config", 1),
        ("pool.add_to_other_config", 2),
    ] {
        let (mut w, x) = (world(), pool());
        let mut ctx = Ctx {
            store: &mut w.store,
            xapi: &x,
            config: &w.config,
            me: None,
            committed: None,
        };
        ctx.register(reg(2, Pool::B, Priority::Low, None)).unwrap();
        let before = (
            dump(ctx.store),
            x.dma("OpaqueRef:1"),
            x.vm("OpaqueRef:1").other_config,
            x.pool_config.borrow().clone(),
        );
        x.fail(method, skip, 1);
        let e = ctx
            .register(reg(1, Pool::A, Priority::High, None))
            .unwrap_err();
        let where_ = format!("{method} #{}", skip + 1);
        assert_eq!(e.code(), ErrorCode::XapiError, "{where_}: {e}");
        assert!(e.to_string().contains("registry's copy in XAPI"), "{e}");
        // The claim (its add, then the drop of the one before) comes before the device is
        // written; every later write is undone.
        let says = if method.starts_with("pool.") {
            "nothing was changed"
        } else {
            "put back"
        };
        assert!(e.to_string().contains(says), "{where_}: {e}");
        let after = (
            dump(ctx.store),
            x.dma("OpaqueRef:1"),
            x.vm("OpaqueRef:1").other_config,
            x.pool_config.borrow().clone(),
        );
        assert_eq!(before, after, "{where_}");
    }
}

#[test]
fn a_registry_behind_the_pool_is_rebuilt_before_it_assigns_an_id() {
    // Another master took vm_id 1 for VM 2 (generation 5); this registry never saw it.
    let (mut w, x) = (world(), pool());
    x.edit("OpaqueRef:2", |v| {
        v.other_config.insert(
            crate::pool::VM_KEY.into(),
            format!(
                r#"{{"vm_id":1,"pool":"B","priority":"low","vm_name":"two","vm_uuid":"{}"}}"#,
                uuid(2)
            ),
        );
    });
    x.pool_config
        .borrow_mut()
        .insert(crate::pool::GENERATION_KEY.into(), "5".into());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    let a = ctx.register(reg(1, Pool::A, Priority::High, None)).unwrap();
    assert_eq!(a.registration.vm_id, 2, "1 is taken in the pool's copy");
    let regs = dump(ctx.store);
    assert_eq!(regs.len(), 2);
    assert_eq!(generation(&x).as_deref(), Some("6"));
}

#[test]
fn a_master_that_is_no_longer_master_writes_nothing() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: Some(HostRecord {
            opaque_ref: "OpaqueRef:h2".into(),
            uuid: "h2".into(),
            name_label: "old-master".into(),
            other_config: BTreeMap::new(),
        }),
        committed: None,
    };
    let e = ctx
        .register(reg(1, Pool::A, Priority::High, None))
        .unwrap_err();
    assert!(matches!(e, Error::NoLongerMaster { .. }), "{e}");
    assert!(dump(ctx.store).is_empty());
    assert_eq!(x.dma("OpaqueRef:1").as_deref(), Some("-m 1 'a b'"));
    assert_eq!(x.count("VM.set_platform"), 0);
}

#[test]
fn adopt_takes_the_device_values_and_leaves_conflicts_alone() {
    let x = pool();
    // VM 2 claims the same vm_id as VM 3's legacy stub; VM 4 has a bad pool.
    x.edit("OpaqueRef:2", |v| {
        v.platform.insert(
            PLATFORM_KEY.into(),
            "-device vgpu-cuda,pool_id=A,priority=high,vm_id=3".into(),
        );
    });
    x.edit("OpaqueRef:4", |v| {
        v.platform.insert(
            PLATFORM_KEY.into(),
            "-device vgpu-cuda,pool_id=Z,priority=high,vm_id=9".into(),
        );
    });
    x.edit("OpaqueRef:1", |v| {
        v.platform.insert(
            PLATFORM_KEY.into(),
            "-m 1 -device vgpu-stub,pool_id=b,priority=0,vm_id=12,prefer_bar1_htod=on".into(),
        );
    });
    let mut w = world();
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    let dry = ctx.adopt(&SyncTarget::All, true).unwrap();
    assert!(dump(ctx.store).is_empty(), "a dry run changes nothing");
    assert_eq!(dry.adopted.len(), 1);
    assert_eq!(
        dry.adopted[0].after.as_deref(),
        Some("-m 1 -device vgpu-cuda,pool_id=B,priority=low,vm_id=12,prefer_bar1_htod=on")
    );
    let r = ctx.adopt(&SyncTarget::All, false).unwrap();
    assert_eq!(r.adopted.len(), 1);
    let reasons: Vec<(String, String)> = r
        .skipped
        .iter()
        .map(|s| (s.vm_uuid.clone(), s.reason.clone()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons
        .iter()
        .any(|(u, why)| u == &uuid(4) && why.contains("\"Z\"")));
    for n in [2, 3] {
        assert!(
            reasons
                .iter()
                .any(|(u, why)| u == &uuid(n) && why.contains("claimed by several VMs")),
            "{reasons:?}"
        );
    }
    let regs = dump(ctx.store);
    assert_eq!(regs.len(), 1);
    assert_eq!(
        (regs[0].vm_id, regs[0].pool, regs[0].priority),
        (12, Pool::B, Priority::Low)
    );
    assert_eq!(
        x.dma("OpaqueRef:1").as_deref(),
        Some("-m 1 -device vgpu-cuda,pool_id=B,priority=low,vm_id=12,prefer_bar1_htod=on")
    );
    assert_eq!(
        x.dma("OpaqueRef:2").as_deref(),
        Some("-device vgpu-cuda,pool_id=A,priority=high,vm_id=3"),
        "left untouched"
    );
}

#[test]
fn a_replica_follows_each_change_reading_only_what_changed() {
    let (mut w, x) = (world(), pool());
    let member = HostRecord {
        opaque_ref: "OpaqueRef:h2".into(),
        uuid: "h2".into(),
        name_label: "member".into(),
        other_config: BTreeMap::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    let refresh = |_: &mut Store| {
        let mut open = || Store::open(&path);
        crate::pool::refresh_here(&x, &path, &mut open, &member).unwrap()
    };
    let rows =
        |s: &Store| -> Vec<(i64, Pool)> { dump(s).iter().map(|r| (r.vm_id, r.pool)).collect() };
    // Nothing published yet: the file is left alone (not even created).
    let mut replica = Store::open_read(&path).unwrap();
    let r = refresh(&mut replica);
    assert!(!r.changed && !r.warnings.is_empty());
    assert!(!path.exists());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    ctx.register(reg(1, Pool::A, Priority::High, None)).unwrap();
    let r = refresh(&mut replica);
    assert!(r.changed);
    assert_eq!(r.generation, Some(1));
    let mut replica = Store::open(&path).unwrap();
    assert_eq!(rows(&replica), rows(ctx.store));
    assert_eq!(x.host_config.borrow()[crate::pool::GENERATION_KEY], "1");
    let listings = x.count("VM.get_all_records_where");
    ctx.register(reg(2, Pool::B, Priority::Low, None)).unwrap();
    ctx.update(UpdateReq {
        selector: Selector::Uuid(uuid(1)),
        pool: Some(Pool::B),
        priority: None,
        vm_id: Some(9),
        restart: Restart::default(),
    })
    .unwrap();
    // Two generations behind: the whole pool is read.
    let r = refresh(&mut replica);
    assert_eq!(r.generation, Some(3));
    assert_eq!(x.count("VM.get_all_records_where"), listings + 1);
    assert_eq!(rows(&replica), rows(ctx.store));
    // One behind: only the changed VM is read.
    ctx.remove(&Selector::Uuid(uuid(2)), Restart::default())
        .unwrap();
    let r = refresh(&mut replica);
    assert!(r.changed);
    assert_eq!(r.generation, Some(4));
    assert_eq!(x.count("VM.get_all_records_where"), listings + 1);
    assert_eq!(rows(&replica), rows(ctx.store));
    assert_eq!(rows(&replica), vec![(9, Pool::B)]);
    // Current: nothing is read but the pool.
    let r = refresh(&mut replica);
    assert!(!r.changed);
    assert_eq!(x.count("VM.get_all_records_where"), listings + 1);
}

#[test]
fn a_generation_another_writer_claimed_is_not_published_twice() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    ctx.register(reg(2, Pool::B, Priority::Low, None)).unwrap();
    assert!(x
        .pool_config
        .borrow()
        .contains_key(&format!("{}1", crate::pool::CLAIM_PREFIX)));
    let before = (
        dump(ctx.store),
        x.dma("OpaqueRef:1"),
        x.vm("OpaqueRef:1").other_config,
    );
    // Another master is publishing generation 2 right now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = format!("{}2", crate::pool::CLAIM_PREFIX);
    x.pool_config
        .borrow_mut()
        .insert(key.clone(), format!("other-host {now}"));
    let e = ctx
        .register(reg(1, Pool::A, Priority::High, None))
        .unwrap_err();
    assert!(e.is_generation_claimed(), "{e}");
    assert!(e.to_string().contains("publishing generation 2"), "{e}");
    let after = (
        dump(ctx.store),
        x.dma("OpaqueRef:1"),
        x.vm("OpaqueRef:1").other_config,
    );
    assert_eq!(before, after, "nothing changed");
    assert_eq!(generation(&x).as_deref(), Some("1"));
    // A claim left by a writer that died long ago is taken over.
    x.pool_config
        .borrow_mut()
        .insert(key.clone(), format!("other-host {}", now - 3600));
    ctx.register(reg(1, Pool::A, Priority::High, None)).unwrap();
    assert_eq!(generation(&x).as_deref(), Some("2"));
    let claims: Vec<String> = x
        .pool_config
        .borrow()
        .keys()
        .filter(|k| k.starts_with(crate::pool::CLAIM_PREFIX))
        .cloned()
        .collect();
    assert_eq!(claims, [key], "older claims are dropped");
}

#[test]
fn a_claim_left_by_this_writer_when_it_died_is_taken_over() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: Some(HostRecord {
            opaque_ref: "OpaqueRef:h1".into(),
            uuid: "h1".into(),
            name_label: "master".into(),
            other_config: BTreeMap::new(),
        }),
        committed: None,
    };
    ctx.register(reg(2, Pool::B, Priority::Low, None)).unwrap();
    // This writer claimed generation 2 a moment ago and was killed before it published it; a
    // live one would still hold the registry's write lock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = format!("{}2", crate::pool::CLAIM_PREFIX);
    x.pool_config
        .borrow_mut()
        .insert(key.clone(), format!("h1 {now}"));
    ctx.register(reg(1, Pool::A, Priority::High, None)).unwrap();
    assert_eq!(generation(&x).as_deref(), Some("2"));
}

#[test]
fn a_generation_lost_between_its_remove_and_add_is_read_from_the_last_change() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: None,
        committed: None,
    };
    ctx.register(reg(2, Pool::B, Priority::Low, None)).unwrap();
    ctx.register(reg(1, Pool::A, Priority::High, None)).unwrap();
    assert_eq!(generation(&x).as_deref(), Some("2"));
    // A writer published generation 3 up to its last change's record, removed the generation
    // and was killed before it added the new one (and before its commit).
    let last = format!(r#"{{"generation":3,"vms":["{}"]}}"#, uuid(1));
    x.pool_config
        .borrow_mut()
        .insert(crate::pool::LAST_CHANGE_KEY.into(), last);
    x.pool_config
        .borrow_mut()
        .remove(crate::pool::GENERATION_KEY);
    ctx.catch_up().unwrap();
    assert_eq!(generation(&x).as_deref(), Some("3"), "put back, not lost");
    assert_eq!(ctx.store.meta().unwrap().generation, Some(3));
    ctx.update(UpdateReq {
        selector: Selector::Uuid(uuid(1)),
        pool: Some(Pool::B),
        priority: None,
        vm_id: None,
        restart: Restart::default(),
    })
    .unwrap();
    // Not 1 again: every replica already holds 2 or 3 and would never go back.
    assert_eq!(generation(&x).as_deref(), Some("4"));
    // Without such a record (a registry from before the mirror) nothing stands in.
    x.pool_config.borrow_mut().clear();
    ctx.catch_up().unwrap();
    assert_eq!(generation(&x), None);
}

#[test]
fn a_claim_names_the_vms_it_registers_and_reads_as_before() {
    use crate::pool::Claim;
    let old = Claim::parse("h1 1700000000");
    assert_eq!(
        (old.writer.as_str(), old.since, old.registers.len()),
        ("h1", 1_700_000_000, 0)
    );
    let new = Claim::parse(&format!(
        "h1 {},{} 1700000000",
        uuid(1),
        uuid(2).to_uppercase()
    ));
    assert_eq!((new.writer.as_str(), new.since), ("h1", 1_700_000_000));
    assert_eq!(new.registers, [uuid(1), uuid(2)]);
    // Garbage is a claim of nobody, from the epoch: stale.
    assert_eq!(Claim::parse("").since, 0);
}

/// This host's writer, killed after it wrote VM 1's device and mirror keys for a register and
/// before its commit: the claim it left on generation 2 names VM 1.
fn killed_register_of_vm_1(x: &FakePool, writer: &str, age_s: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let device = "-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=2";
    x.edit("OpaqueRef:1", |v| {
        v.platform
            .insert(PLATFORM_KEY.into(), format!("-m 1 'a b' {device}"));
        v.other_config.insert(
            crate::pool::VM_KEY.into(),
            format!(
                r#"{{"pool_id":"A","priority":3,"vm_id":2,"vm_uuid":"{}"}}"#,
                uuid(1)
            ),
        );
        v.other_config.insert(
            crate::pool::FIELD_KEY.into(),
            "pool A, high, vm_id 2".into(),
        );
    });
    let key = format!("{}2", crate::pool::CLAIM_PREFIX);
    x.pool_config
        .borrow_mut()
        .insert(key.clone(), format!("{writer} {} {}", uuid(1), now - age_s));
    key
}

fn host_h1() -> Option<HostRecord> {
    Some(HostRecord {
        opaque_ref: "OpaqueRef:h1".into(),
        uuid: "h1".into(),
        name_label: "master".into(),
        other_config: BTreeMap::new(),
    })
}

#[test]
fn the_next_change_rolls_back_a_register_killed_before_its_commit() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: host_h1(),
        committed: None,
    };
    ctx.register(reg(4, Pool::B, Priority::Low, None)).unwrap();
    let key = killed_register_of_vm_1(&x, "h1", 0);
    // The next register picks vm_id 2 (free in the registry), which VM 1's device carries.
    let a = ctx.register(reg(2, Pool::B, Priority::Low, None)).unwrap();
    assert_eq!(a.registration.vm_id, 2);
    assert_eq!(
        x.dma("OpaqueRef:1").as_deref(),
        Some("-m 1 'a b'"),
        "only the device went"
    );
    let oc = x.vm("OpaqueRef:1").other_config;
    assert!(!oc.contains_key(crate::pool::VM_KEY) && !oc.contains_key(crate::pool::FIELD_KEY));
    assert_eq!(generation(&x).as_deref(), Some("2"));
    let claim = x.pool_config.borrow().get(&key).cloned().unwrap();
    assert!(
        claim.contains(&uuid(2)) && !claim.contains(&uuid(1)),
        "{claim}"
    );
    let report = ctx.scan().unwrap();
    let one = report.unregistered.iter().find(|u| u.vm_uuid == uuid(1));
    assert!(
        one.is_some_and(|u| u.device.is_none() && u.mirror.is_none()),
        "{one:?}"
    );
}

#[test]
fn a_claim_another_live_writer_holds_is_neither_taken_over_nor_rolled_back() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: host_h1(),
        committed: None,
    };
    ctx.register(reg(4, Pool::B, Priority::Low, None)).unwrap();
    killed_register_of_vm_1(&x, "h2", 0);
    let dma = x.dma("OpaqueRef:1");
    let e = ctx
        .register(reg(2, Pool::B, Priority::Low, None))
        .unwrap_err();
    assert!(e.is_generation_claimed(), "{e}");
    assert_eq!(
        x.dma("OpaqueRef:1"),
        dma,
        "another host may still be writing it"
    );
    // Once that claim is stale, it was a writer that died.
    killed_register_of_vm_1(&x, "h2", 3600);
    ctx.register(reg(2, Pool::B, Priority::Low, None)).unwrap();
    assert_eq!(x.dma("OpaqueRef:1").as_deref(), Some("-m 1 'a b'"));
}

#[test]
fn sync_all_rolls_back_a_register_killed_before_its_commit() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: host_h1(),
        committed: None,
    };
    ctx.register(reg(4, Pool::B, Priority::Low, None)).unwrap();
    let key = killed_register_of_vm_1(&x, "h1", 0);
    let device = x.dma("OpaqueRef:1");
    let says =
        |w: &Vec<String>, what: &str| w.iter().any(|w| w.contains(&uuid(1)) && w.contains(what));
    let warnings = ctx.status().unwrap().warnings;
    assert!(says(&warnings, "interrupted"), "{warnings:?}");
    assert!(!says(&warnings, "two registries"), "{warnings:?}");
    let dry = ctx
        .sync(&SyncTarget::All, true, Restart::default())
        .unwrap();
    let item = |r: &SyncReport| {
        r.results
            .iter()
            .filter(|i| i.vm_uuid == uuid(1))
            .map(|i| (i.status_before, i.action, i.changes.clone()))
            .collect::<Vec<_>>()
    };
    let want_changes = vec![
        SyncChange {
            field: "device_model_args".into(),
            old: device.clone(),
            new: Some("-m 1 'a b'".into()),
        },
        SyncChange {
            field: "mirror".into(),
            old: x.vm("OpaqueRef:1").other_config.get(VM_KEY).cloned(),
            new: None,
        },
    ];
    assert_eq!(
        item(&dry),
        [(
            VmStatus::Unregistered,
            SyncAction::WouldApply,
            want_changes.clone()
        )]
    );
    assert_eq!(x.dma("OpaqueRef:1"), device, "a dry run changes nothing");
    let done = ctx
        .sync(&SyncTarget::All, false, Restart::default())
        .unwrap();
    assert_eq!(
        item(&done),
        [(VmStatus::Unregistered, SyncAction::Applied, want_changes)]
    );
    assert_eq!(done.failed, 0);
    assert_eq!(x.dma("OpaqueRef:1").as_deref(), Some("-m 1 'a b'"));
    assert!(x.vm("OpaqueRef:1").other_config.is_empty());
    assert_eq!(generation(&x).as_deref(), Some("2"));
    let claim = x.pool_config.borrow().get(&key).cloned().unwrap();
    assert!(!claim.contains(&uuid(1)), "{claim}");
    assert_eq!(dump(ctx.store).len(), 1, "nothing was registered");
    let warnings = ctx.status().unwrap().warnings;
    assert!(!says(&warnings, "interrupted"), "{warnings:?}");
}

#[test]
fn a_key_believed_absent_is_added_at_once_and_replaced_when_it_came_since() {
    let x = pool();
    let mut journal = crate::pool::Journal::new(&x);
    journal
        .set(xapi::Class::Vm, "OpaqueRef:2", "k", None, Some("one"))
        .unwrap();
    assert_eq!(x.count("VM.add_to_other_config"), 1);
    assert_eq!(
        x.count("VM.remove_from_other_config"),
        0,
        "nothing to remove"
    );
    // Another writer added it since it was read as absent: removed, then added.
    x.edit("OpaqueRef:2", |v| {
        v.other_config.insert("j".into(), "theirs".into());
    });
    journal
        .set(xapi::Class::Vm, "OpaqueRef:2", "j", None, Some("ours"))
        .unwrap();
    assert_eq!(x.vm("OpaqueRef:2").other_config["j"], "ours");
    assert_eq!(x.count("VM.remove_from_other_config"), 1);
    // The undo puts back what the journal knew: neither key.
    journal.undo().unwrap();
    let oc = x.vm("OpaqueRef:2").other_config;
    assert!(!oc.contains_key("k") && !oc.contains_key("j"), "{oc:?}");
}

#[test]
fn sync_of_the_one_vm_rolls_back_its_interrupted_register() {
    let (mut w, x) = (world(), pool());
    let mut ctx = Ctx {
        store: &mut w.store,
        xapi: &x,
        config: &w.config,
        me: host_h1(),
        committed: None,
    };
    ctx.register(reg(4, Pool::B, Priority::Low, None)).unwrap();
    // A VM that is simply not registered is still answered NOT_REGISTERED.
    let e = ctx
        .sync(
            &SyncTarget::One(Selector::Uuid(uuid(2))),
            false,
            Restart::default(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::NotRegistered { .. }), "{e}");
    killed_register_of_vm_1(&x, "h1", 0);
    let device = x.dma("OpaqueRef:1");
    let one = SyncTarget::One(Selector::Uuid(uuid(1)));
    let dry = ctx.sync(&one, true, Restart::default()).unwrap();
    let actions: Vec<_> = dry
        .results
        .iter()
        .map(|i| (i.vm_uuid.clone(), i.status_before, i.action))
        .collect();
    assert_eq!(
        actions,
        [(uuid(1), VmStatus::Unregistered, SyncAction::WouldApply)]
    );
    assert_eq!(x.dma("OpaqueRef:1"), device, "a dry run changes nothing");
    let done = ctx.sync(&one, false, Restart::default()).unwrap();
    assert_eq!(done.failed, 0);
    assert_eq!(done.results.len(), 1);
    assert_eq!(done.results[0].action, SyncAction::Applied);
    assert_eq!(x.dma("OpaqueRef:1").as_deref(), Some("-m 1 'a b'"));
    assert!(x.vm("OpaqueRef:1").other_config.is_empty());
    assert_eq!(dump(ctx.store).len(), 1, "nothing was registered");
    // Repaired: the VM is now just not registered.
    let e = ctx.sync(&one, false, Restart::default()).unwrap_err();
    assert!(matches!(e, Error::NotRegistered { .. }), "{e}");
}
