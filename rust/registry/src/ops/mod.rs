//! The operations. Each one validates nothing itself (requests arrive typed, see
//! [`crate::request`]), and every mutation changes the registry and the VM's device-model-args as
//! one unit (see [`apply`]).

mod adopt;
mod apply;

use crate::config::Config;
use crate::dma::DeviceSpec;
use crate::error::{Error, Result, VmRef};
use crate::model::{parse_vm_name, Pool, Priority, Registration, Selector};
use crate::pool::{self, mirror_state, row_text, MirrorState, Primary, Touched, VM_KEY};
use crate::report::{
    Applied, PoolDetail, PoolInfo, PowerState, Problem, ScanReport, ShowReport, StatusReport,
    SyncAction, SyncChange, SyncItem, SyncReport, VmStatus,
};
use crate::status::{device_status, dma_of, found_device, is_real_vm, vm_ref, DeviceStatus, Scan};
use crate::store::{ControlChange, NewValues, Store, WriteTx};
use apply::{apply_to_vm, new_dma, DeviceChange};
use std::collections::BTreeMap;
use xapi::{VmRecord, Xapi};

pub(crate) use crate::store::ListFilter;

/// A mediator loads rate limits and quarantine for this many registrations (`MEDIATOR.md`).
pub(crate) const MEDIATOR_ROWS: usize = 64;

/// What an operation works with.
pub(crate) struct Ctx<'a> {
    pub store: &'a mut Store,
    pub xapi: &'a dyn Xapi,
    pub config: &'a Config,
    /// This host, when its uuid is known.
    pub me: Option<xapi::HostRecord>,
    /// The generation the last committed change published, if any.
    pub committed: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Requests

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegisterReq {
    pub selector: Selector,
    /// The name to store; default: the VM's name-label.
    pub name: Option<String>,
    pub pool: Pool,
    pub priority: Priority,
    pub vm_id: Option<u32>,
    pub restart: Restart,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpdateReq {
    pub selector: Selector,
    pub pool: Option<Pool>,
    pub priority: Option<Priority>,
    pub vm_id: Option<u32>,
    pub restart: Restart,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Restart {
    pub requested: bool,
    pub confirmed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SyncTarget {
    All,
    One(Selector),
}

/// What `sync` decided for one registration, before changing anything.
struct SyncStep {
    reg: Registration,
    /// `None`: the VM no longer exists (stale).
    vm: Option<VmRecord>,
    status: VmStatus,
    /// The name-label to store instead of the registry's name.
    rename: Option<String>,
    reapply: bool,
    /// The registry's copy in XAPI is missing or stale.
    remirror: bool,
    will_restart: bool,
    changes: Vec<SyncChange>,
}

/// The VM's name-label as the registry stores it: `None` for an empty one; a label the registry
/// cannot store (a control character, too long) is refused, as it is when typed as a name.
fn storable_label(vm: &VmRecord) -> Result<Option<String>> {
    if vm.name_label.is_empty() {
        return Ok(None);
    }
    parse_vm_name(&vm.name_label)
        .map(Some)
        .map_err(|e| match e {
            Error::InvalidArgument { reason, .. } => Error::InvalidArgument {
                what: "VM name-label".into(),
                value: vm.name_label.clone(),
                reason: format!("{reason}: the registry cannot store it; give the name to store"),
            },
            other => other,
        })
}

/// The device a registration should have, when its stored vm_id can be written.
fn vm_spec(cfg: &Config, reg: &Registration) -> Option<DeviceSpec> {
    let vm_id = u32::try_from(reg.vm_id).ok().filter(|n| *n >= 1)?;
    Some(spec_of(cfg, reg.pool, reg.priority, vm_id))
}

/// Several VMs answer to `selector`.
fn ambiguous(selector: &Selector, candidates: Vec<VmRef>) -> Error {
    match selector {
        Selector::Name(name) => Error::AmbiguousVmName {
            name: name.clone(),
            candidates,
        },
        Selector::Uuid(p) | Selector::UuidPrefix(p) => Error::AmbiguousUuidPrefix {
            prefix: p.clone(),
            candidates,
        },
    }
}

fn spec_of(cfg: &Config, pool: Pool, priority: Priority, vm_id: u32) -> DeviceSpec {
    DeviceSpec {
        device_type: cfg.device.device_type.clone(),
        extra: cfg.device.extra.clone(),
        pool,
        priority,
        vm_id,
    }
}

// ---------------------------------------------------------------------------------------------
// Operations

impl Ctx<'_> {
    fn device_type(&self) -> &str {
        &self.config.device.device_type
    }

    /// The live VM a selector names. Templates, snapshots and control domains are not VMs here.
    /// A name is a VM's XAPI name-label or the name stored for it in the registry.
    pub fn resolve(&self, selector: &Selector) -> Result<VmRecord> {
        let not_found = || Error::VmNotFound {
            selector: selector.clone(),
        };
        let mut vms: Vec<VmRecord> = match selector {
            Selector::Uuid(uuid) => self
                .xapi
                .vm_by_uuid(uuid)
                .map_err(|e| Error::xapi(format!("looking up VM {uuid}"), e))?
                .into_iter()
                .collect(),
            Selector::UuidPrefix(prefix) => self
                .xapi
                .list_vms()
                .map_err(|e| Error::xapi("listing the pool's VMs", e))?
                .into_iter()
                .filter(|v| v.uuid.starts_with(prefix.as_str()))
                .collect(),
            Selector::Name(name) => {
                let mut vms = self
                    .xapi
                    .vms_by_name(name)
                    .map_err(|e| Error::xapi(format!("looking up VMs named {name:?}"), e))?;
                for reg in self.store.find_by_name(name)? {
                    let uuid = reg.vm_uuid.to_ascii_lowercase();
                    if vms.iter().any(|v| v.uuid == uuid) {
                        continue;
                    }
                    let vm = self
                        .xapi
                        .vm_by_uuid(&uuid)
                        .map_err(|e| Error::xapi(format!("looking up VM {uuid}"), e))?;
                    vms.extend(vm);
                }
                vms
            }
        };
        vms.retain(is_real_vm);
        match vms.len() {
            0 => Err(not_found()),
            1 => Ok(vms.remove(0)),
            _ => Err(ambiguous(selector, vms.iter().map(vm_ref).collect())),
        }
    }

    /// A registration and its VM, which may be gone (a stale registration).
    fn resolve_registered(&self, selector: &Selector) -> Result<(Registration, Option<VmRecord>)> {
        let vm = match self.resolve(selector) {
            Ok(vm) => Some(vm),
            Err(Error::VmNotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        if let Some(vm) = vm {
            return match self.store.get(&vm.uuid)? {
                Some(reg) => Ok((reg, Some(vm))),
                None => Err(Error::NotRegistered { vm: vm_ref(&vm) }),
            };
        }
        // No such VM any more: a stale registration, found by what the registry stored.
        let mut regs = match selector {
            Selector::Uuid(uuid) => self.store.get(uuid)?.into_iter().collect(),
            Selector::UuidPrefix(prefix) => self
                .store
                .list(&ListFilter::default())?
                .into_iter()
                .filter(|r| r.vm_uuid.to_ascii_lowercase().starts_with(prefix.as_str()))
                .collect(),
            Selector::Name(name) => self.store.find_by_name(name)?,
        };
        match regs.len() {
            0 => Err(Error::VmNotFound {
                selector: selector.clone(),
            }),
            1 => Ok((regs.remove(0), None)),
            _ => Err(ambiguous(
                selector,
                regs.iter().map(Registration::vm_ref).collect(),
            )),
        }
    }

    /// Refuses a restart that cannot be done before anything changes; true when the VM will
    /// be restarted after the change.
    fn plan_restart(&self, vm: &VmRecord, restart: Restart) -> Result<bool> {
        if !restart.requested {
            return Ok(false);
        }
        match PowerState::from_xapi(&vm.power_state) {
            PowerState::Running if restart.confirmed => Ok(true),
            PowerState::Running => Err(Error::ConfirmationRequired { vm: vm_ref(vm) }),
            PowerState::Halted => Ok(false),
            other => Err(Error::VmState {
                vm: vm_ref(vm),
                power_state: other,
                message: "only a running VM can be restarted; resume or shut it down first, \
                          or change it without a restart"
                    .into(),
            }),
        }
    }

    fn restart_vm(&self, vm: &VmRecord) -> Result<()> {
        let context = |what: &str| {
            format!(
                "the change is saved and written to the VM, but {what} VM {} failed; \
                 it takes effect at the VM's next start",
                vm_ref(vm)
            )
        };
        self.xapi
            .clean_shutdown(&vm.opaque_ref, self.config.restart.shutdown_timeout_s)
            .map_err(|e| Error::xapi(context("shutting down"), e))?;
        self.xapi
            .start(&vm.opaque_ref)
            .map_err(|e| Error::xapi(context("starting"), e))
    }

    /// Runs `change` in a write transaction, then writes the resulting vgpu entry into the VM's
    /// device-model-args and commits, all or nothing (see [`apply`]).
    fn apply<T>(
        &mut self,
        vm: &VmRecord,
        change: impl FnOnce(&WriteTx<'_>) -> Result<(T, DeviceChange)>,
    ) -> Result<(T, Option<String>)> {
        self.apply_as(vm, false, change)
    }

    /// [`Ctx::apply`]; `registers`: the change registers the VM and gives it a device it did not
    /// have. The generation is claimed before the device is written, naming such a VM, so that
    /// the device of a register killed before its commit can be told from one the user wrote:
    /// the next change to publish takes it off again ([`pool::Publication::start`]).
    fn apply_as<T>(
        &mut self,
        vm: &VmRecord,
        registers: bool,
        change: impl FnOnce(&WriteTx<'_>) -> Result<(T, DeviceChange)>,
    ) -> Result<(T, Option<String>)> {
        let (xapi, config) = (self.xapi, self.config);
        let tx = self.store.write()?;
        let primary = pool::take_primary(xapi, &tx, self.me.as_ref())?;
        let (out, desired) = change(&tx)?;
        let device_type = config.device.device_type.as_str();
        let touched = [Touched::of(vm)];
        let new_vm: &[&str] = if registers { &[vm.uuid.as_str()] } else { &[] };
        let publication =
            pool::Publication::start(xapi, &tx, &primary, &touched, new_vm, device_type)?;
        let mut pending = Some(publication);
        let mut published = None;
        let dma = apply_to_vm(xapi, vm, &desired, device_type, || {
            if let Some(p) = pending.take() {
                published = Some(p.finish(tx, &primary)?);
            }
            Ok(())
        });
        let dma = match (dma, pending) {
            (Ok(dma), _) => dma,
            // The device write failed (and was put back): the claim goes too.
            (Err(e), Some(p)) => return Err(p.abandon(e)),
            (Err(e), None) => return Err(e),
        };
        self.committed = published.or(self.committed);
        Ok((out, dma))
    }

    /// Brings the registry to the pool's generation (a read on the master does this first).
    pub fn catch_up(&mut self) -> Result<()> {
        let (tx, _) = self.begin()?;
        tx.commit()
    }

    /// A write transaction on the primary: this host is still the master (when it knows who
    /// it is) and the registry is at the pool's generation.
    fn begin(&mut self) -> Result<(WriteTx<'_>, Primary)> {
        let xapi = self.xapi;
        let tx = self.store.write()?;
        let primary = pool::take_primary(xapi, &tx, self.me.as_ref())?;
        Ok((tx, primary))
    }

    /// The registry read first (it is small), then each VM compared with it as XAPI's answer
    /// arrives: only the report's lines are kept, never the pool's VM records.
    pub fn scan(&self) -> Result<ScanReport> {
        let regs = self.store.list(&ListFilter::default())?;
        let mut scan = Scan::new(regs, self.device_type());
        self.store
            .each_row_json(&mut |uuid, row| scan.add_row(&uuid, row))?;
        self.xapi
            .for_each_vm(&mut |vm| scan.add(vm))
            .map_err(|e| Error::xapi("listing the pool's VMs", e))?;
        Ok(scan.finish())
    }

    pub fn register(&mut self, req: RegisterReq) -> Result<Applied> {
        let vm = self.resolve(&req.selector)?;
        let will_restart = self.plan_restart(&vm, req.restart)?;
        // A name given with the uuid is the user's choice, kept by sync; otherwise the VM's
        // name-label is stored, and refreshed by sync when it changes.
        let chosen = req.name.is_some() && !matches!(req.selector, Selector::Name(_));
        let name = match &req.name {
            Some(n) => Some(n.clone()),
            None => storable_label(&vm)?,
        };
        let uuid = vm.uuid.clone();
        let cfg = self.config;
        // A device this register adds (the VM had none) is named in the claim, so that a kill
        // before the commit is rolled back; one it rewrites stays whatever happens.
        let adds_device = found_device(dma_of(&vm).as_deref(), self.device_type()).is_none();
        let (reg, dma) = self.apply_as(&vm, adds_device, |tx| {
            if let Some(r) = tx.get(&uuid)? {
                return Err(Error::AlreadyRegistered {
                    vm: r.vm_ref(),
                    pool: r.pool,
                    priority: r.priority,
                    vm_id: r.vm_id,
                });
            }
            let vm_id = match req.vm_id {
                Some(id) => {
                    tx.check_vm_id_free(id, &uuid)?;
                    id
                }
                None => tx.next_free_vm_id()?.ok_or(Error::NoFreeVmId)?,
            };
            let reg = tx.insert(
                &uuid,
                &NewValues {
                    vm_name: name,
                    pool: req.pool,
                    priority: req.priority,
                    vm_id,
                },
            )?;
            let reg = if chosen {
                tx.set_name_chosen(&uuid)?;
                Registration {
                    name_chosen: true,
                    ..reg
                }
            } else {
                reg
            };
            let spec = spec_of(cfg, req.pool, req.priority, vm_id);
            Ok((reg, DeviceChange::Set(spec)))
        })?;
        self.finish(&vm, reg, dma, will_restart, false)
    }

    pub fn update(&mut self, req: UpdateReq) -> Result<Applied> {
        let vm = self.resolve(&req.selector)?;
        let will_restart = self.plan_restart(&vm, req.restart)?;
        let uuid = vm.uuid.clone();
        let cfg = self.config;
        let vmr = vm_ref(&vm);
        let (reg, dma) = self.apply(&vm, |tx| {
            let cur = tx.registered(&uuid, &vmr)?;
            let vm_id = match req.vm_id {
                Some(id) => {
                    tx.check_vm_id_free(id, &uuid)?;
                    id
                }
                None => u32::try_from(cur.vm_id)
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        Error::invalid(
                            "stored vm_id",
                            &cur.vm_id.to_string(),
                            "it cannot be written to the device; give the VM a new vm_id",
                        )
                    })?,
            };
            let values = NewValues {
                vm_name: cur.vm_name.clone(),
                pool: req.pool.unwrap_or(cur.pool),
                priority: req.priority.unwrap_or(cur.priority),
                vm_id,
            };
            let reg = tx.update(&cur.vm_uuid, &values)?;
            Ok((
                reg,
                DeviceChange::Set(spec_of(cfg, values.pool, values.priority, vm_id)),
            ))
        })?;
        self.finish(&vm, reg, dma, will_restart, false)
    }

    pub fn remove(&mut self, selector: &Selector, restart: Restart) -> Result<Applied> {
        self.catch_up()?;
        let (reg, vm) = self.resolve_registered(selector)?;
        let Some(vm) = vm else {
            // Stale: the VM is gone (and its other_config with it), so only the row goes.
            let xapi = self.xapi;
            let device_type = self.config.device.device_type.as_str();
            let (tx, primary) = self.begin()?;
            // Another remove may have committed since the row was read: only one of them wins.
            if !tx.delete(&reg.vm_uuid)? {
                return Err(Error::NotRegistered { vm: reg.vm_ref() });
            }
            let g = pool::publish_and_commit(xapi, tx, &primary, &[], device_type)?;
            self.committed = Some(g);
            return Ok(Applied {
                registration: reg,
                applied: false,
                pending_restart: false,
                restarted: false,
                power_state: None,
                device_model_args: None,
                removed: true,
                replicas: None,
                reloads: None,
                in_effect: None,
            });
        };
        let will_restart = self.plan_restart(&vm, restart)?;
        let uuid = reg.vm_uuid.clone();
        let vmr = vm_ref(&vm);
        let (reg, dma) = self.apply(&vm, |tx| {
            // A change committed since the lookup above is what gets removed.
            let reg = tx.registered(&uuid, &vmr)?;
            tx.delete(&uuid)?;
            Ok((reg, DeviceChange::Remove))
        })?;
        self.finish(&vm, reg, dma, will_restart, true)
    }

    /// Removes a registry row whose stored uuid is not a valid UUID (the old tools let such rows
    /// in); `invalid` is the validation error to return when no such row exists.
    pub fn remove_invalid_row(&mut self, raw_uuid: &str, invalid: Error) -> Result<Applied> {
        let Some(reg) = self.store.get(raw_uuid)? else {
            return Err(invalid);
        };
        let xapi = self.xapi;
        let device_type = self.config.device.device_type.as_str();
        let (tx, primary) = self.begin()?;
        tx.delete(raw_uuid)?;
        let g = pool::publish_and_commit(xapi, tx, &primary, &[], device_type)?;
        self.committed = Some(g);
        Ok(Applied {
            registration: reg,
            applied: false,
            pending_restart: false,
            restarted: false,
            power_state: None,
            device_model_args: None,
            removed: true,
            replicas: None,
            reloads: None,
            in_effect: None,
        })
    }

    fn finish(
        &self,
        vm: &VmRecord,
        registration: Registration,
        dma: Option<String>,
        will_restart: bool,
        removed: bool,
    ) -> Result<Applied> {
        let changed_vm = dma != dma_of(vm);
        let restarted = will_restart && changed_vm;
        if restarted {
            self.restart_vm(vm)?;
        }
        let power_state = if restarted {
            PowerState::Running
        } else {
            PowerState::from_xapi(&vm.power_state)
        };
        Ok(Applied {
            registration,
            applied: true,
            pending_restart: changed_vm && power_state != PowerState::Halted && !restarted,
            restarted,
            power_state: Some(power_state),
            device_model_args: dma,
            removed,
            replicas: None,
            reloads: None,
            in_effect: None,
        })
    }

    /// Changes the mediator's controls of a registered VM; its device is left as it is.
    pub fn set_controls(&mut self, selector: &Selector, change: ControlChange) -> Result<Applied> {
        // The registration is looked up before the write: a registry behind the pool (a new
        // master) catches up first, or it would not know the VM.
        self.catch_up()?;
        let (reg, vm) = self.resolve_registered(selector)?;
        let uuid = reg.vm_uuid.clone();
        let Some(vm) = vm else {
            // A stale registration: its row and the pool's copy only.
            let xapi = self.xapi;
            let device_type = self.config.device.device_type.as_str();
            let (tx, primary) = self.begin()?;
            tx.registered(&uuid, &reg.vm_ref())?;
            let reg = tx.set_controls(&uuid, &change)?;
            let g = pool::publish_and_commit(xapi, tx, &primary, &[], device_type)?;
            self.committed = Some(g);
            return Ok(Applied {
                registration: reg,
                applied: false,
                pending_restart: false,
                restarted: false,
                power_state: None,
                device_model_args: None,
                removed: false,
                replicas: None,
                reloads: None,
                in_effect: None,
            });
        };
        let vmr = vm_ref(&vm);
        let (reg, dma) = self.apply(&vm, |tx| {
            tx.registered(&uuid, &vmr)?;
            Ok((tx.set_controls(&uuid, &change)?, DeviceChange::Keep))
        })?;
        self.finish(&vm, reg, dma, false, false)
    }

    pub fn show(&self, selector: &Selector) -> Result<ShowReport> {
        let (reg, vm) = self.resolve_registered(selector)?;
        let problems = reg.problems();
        Ok(match vm {
            Some(vm) => {
                let dma = dma_of(&vm);
                let DeviceStatus {
                    status,
                    drift,
                    problems: mut p,
                } = device_status(&reg, dma.as_deref(), self.device_type());
                p.extend(problems);
                ShowReport {
                    registration: reg,
                    power_state: Some(PowerState::from_xapi(&vm.power_state)),
                    device_model_args: dma,
                    status,
                    drift,
                    problems: p,
                }
            }
            None => ShowReport {
                registration: reg,
                power_state: None,
                device_model_args: None,
                status: VmStatus::Stale,
                drift: Vec::new(),
                problems,
            },
        })
    }

    pub fn list(&self, filter: &ListFilter) -> Result<Vec<Registration>> {
        self.store.list(filter)
    }

    pub fn list_pools(&self) -> Result<Vec<PoolInfo>> {
        self.store.pools()
    }

    pub fn show_pool(&self, pool: Pool) -> Result<PoolDetail> {
        let info = self
            .store
            .pools()?
            .into_iter()
            .find(|p| p.pool_id == pool)
            .ok_or_else(|| Error::Internal(format!("pool {pool} missing from the pools table")))?;
        let vms = self.store.list(&ListFilter {
            pool: Some(pool),
            ..ListFilter::default()
        })?;
        Ok(PoolDetail { pool: info, vms })
    }

    pub fn status(&self) -> Result<StatusReport> {
        let scan = self.scan()?;
        let pick = |s: VmStatus| -> Vec<VmRef> {
            scan.registered
                .iter()
                .filter(|r| r.status == s)
                .map(|r| r.registration.vm_ref())
                .collect()
        };
        let mut problems = Vec::new();
        for r in &scan.registered {
            if !r.problems.is_empty() {
                problems.push(Problem {
                    vm_uuid: r.registration.vm_uuid.clone(),
                    vm_name: r.registration.vm_name.clone(),
                    problems: r.problems.clone(),
                });
            }
        }
        for s in &scan.stale {
            if !s.problems.is_empty() {
                problems.push(Problem {
                    vm_uuid: s.registration.vm_uuid.clone(),
                    vm_name: s.registration.vm_name.clone(),
                    problems: s.problems.clone(),
                });
            }
        }
        let mut warnings: Vec<String> = self.store.exposure().into_iter().collect();
        warnings.extend(self.mediator_warnings()?);
        let mut interrupted = Vec::new();
        let (generation, hosts) = match self.xapi.pool() {
            Ok(p) => {
                interrupted = pool::interrupted_registers(&p, self.store.meta()?.generation);
                match pool::host_replicas(self.xapi, &p) {
                    Ok(h) => (pool::pool_generation(&p), h),
                    Err(e) => {
                        warnings.push(format!("cannot show the hosts' replicas: {e}"));
                        (pool::pool_generation(&p), Vec::new())
                    }
                }
            }
            Err(e) => {
                warnings.push(format!("cannot read the pool's registry generation: {e}"));
                (None, Vec::new())
            }
        };
        let interrupted: Vec<_> = scan
            .unregistered
            .iter()
            .filter(|u| u.device.is_some() || u.mirror.is_some())
            .filter(|u| interrupted.contains(&u.vm_uuid))
            .collect();
        for u in &interrupted {
            warnings.push(format!(
                "a register of VM {} ({}) was interrupted after it wrote the VM and before it \
                 committed: `vgpu-admin sync --all` takes off what it wrote (or `vgpu-admin adopt \
                 --vm-uuid {}` keeps the device it wrote)",
                u.vm_uuid, u.vm_name, u.vm_uuid
            ));
        }
        for u in scan
            .unregistered
            .iter()
            .filter(|u| u.mirror.as_deref() == Some("orphan"))
            .filter(|u| !interrupted.iter().any(|i| i.vm_uuid == u.vm_uuid))
        {
            warnings.push(format!(
                "XAPI's copy of the registry registers VM {} ({}) but the registry does not \
                 (two registries claimed one vm_id?): check it with `vgpu-admin scan-vms`, then \
                 `vgpu-admin adopt --vm-uuid {}` to keep it, or `vgpu-admin sync --all` to drop \
                 it",
                u.vm_uuid, u.vm_name, u.vm_uuid
            ));
        }
        let mirror_drift = scan
            .registered
            .iter()
            .filter(|r| r.mirror != MirrorState::Ok.as_str())
            .map(|r| r.registration.vm_ref())
            .chain(
                scan.unregistered
                    .iter()
                    .filter(|u| u.mirror.as_deref() == Some("copied"))
                    .map(|u| VmRef {
                        vm_uuid: u.vm_uuid.clone(),
                        vm_name: Some(u.vm_name.clone()),
                    }),
            )
            .collect();
        Ok(StatusReport {
            mirror_drift,
            generation,
            hosts,
            pools: self.store.pools()?,
            drift: pick(VmStatus::Drift),
            not_applied: pick(VmStatus::NotApplied),
            unregistered: scan
                .unregistered
                .iter()
                .map(|u| VmRef {
                    vm_uuid: u.vm_uuid.clone(),
                    vm_name: Some(u.vm_name.clone()),
                })
                .collect(),
            stale: scan.stale.iter().map(|s| s.registration.vm_ref()).collect(),
            summary: scan.summary,
            problems,
            warnings,
        })
    }

    /// Values the mediator misreads (`MEDIATOR.md`): a weight outside 1…100 or not whole, the
    /// older SQL file's REAL weight of 1, and controls it never loads past its 64th row.
    /// The registration's place in the order a mediator loads rows (pool, priority high first,
    /// vm_id), from 0.
    pub fn mediator_position(&self, vm_uuid: &str) -> Result<Option<usize>> {
        Ok(self
            .store
            .list(&ListFilter::default())?
            .iter()
            .position(|r| r.vm_uuid.eq_ignore_ascii_case(vm_uuid)))
    }

    fn mediator_warnings(&self) -> Result<Vec<String>> {
        let regs = self.store.list(&ListFilter::default())?;
        let real = self.store.weight_type()? == "REAL";
        let mut out = Vec::new();
        for (i, r) in regs.iter().enumerate() {
            let c = &r.controls;
            let who = format!("VM {} (vm_id {})", r.vm_ref(), r.vm_id);
            let w = c.weight.as_f64().unwrap_or(0.0);
            if !(1.0..=100.0).contains(&w) || w.fract() != 0.0 {
                out.push(format!(
                    "{who} has weight {}, which the mediator misreads (it takes whole numbers \
                     1 to 100, and anything at or below 0 as 50): vgpu-admin set-weight \
                     --vm-uuid {} --weight 50",
                    c.weight, r.vm_uuid
                ));
            } else if real && w == 1.0 {
                out.push(format!(
                    "{who} has weight 1 in a REAL weight column, the older SQL file's default, \
                     which gives it 1/50 of the intended share: vgpu-admin set-weight --vm-uuid \
                     {} --weight 50",
                    r.vm_uuid
                ));
            }
            let controlled = c.max_jobs_per_sec != 0 || c.max_queue_depth != 0 || c.quarantined;
            if i >= MEDIATOR_ROWS && controlled {
                out.push(format!(
                    "{who} is registration {} in the mediator's order (pool, priority high first, \
                     vm_id); a mediator loads rate limits and quarantine for the first \
                     {MEDIATOR_ROWS} only, so its {} is not applied",
                    i + 1,
                    if c.quarantined {
                        "quarantine"
                    } else {
                        "rate limit"
                    }
                ));
            }
        }
        Ok(out)
    }

    pub fn sync(
        &mut self,
        target: &SyncTarget,
        dry_run: bool,
        restart: Restart,
    ) -> Result<SyncReport> {
        let start = if dry_run {
            None
        } else {
            let (tx, primary) = self.begin()?;
            tx.commit()?;
            Some((primary.pool_record().clone(), self.committed))
        };
        let regs = match target {
            SyncTarget::All => self.store.list(&ListFilter::default())?,
            SyncTarget::One(sel) => match self.resolve_registered(sel) {
                Ok((reg, _)) => vec![reg],
                Err(Error::NotRegistered { vm }) => {
                    let pool_rec = self.pool_record(start.as_ref().map(|s| &s.0))?;
                    return self.sync_interrupted(vm, &pool_rec, dry_run);
                }
                Err(e) => return Err(e),
            },
        };
        let vms: BTreeMap<String, VmRecord> = self
            .xapi
            .list_vms()
            .map_err(|e| Error::xapi("listing the pool's VMs", e))?
            .into_iter()
            .map(|v| (v.uuid.clone(), v))
            .collect();
        let rows = self.store.rows_json()?;
        // Decide everything first, so a refusal (confirmation, paused VM) changes nothing.
        let mut plan = Vec::new();
        for reg in regs {
            let Some(vm) = vms.get(&reg.vm_uuid.to_ascii_lowercase()).cloned() else {
                plan.push(SyncStep {
                    reg,
                    vm: None,
                    status: VmStatus::Stale,
                    rename: None,
                    reapply: false,
                    remirror: false,
                    will_restart: false,
                    changes: Vec::new(),
                });
                continue;
            };
            let dma = dma_of(&vm);
            let status = device_status(&reg, dma.as_deref(), self.device_type()).status;
            // A name the user chose is kept; a stored name-label follows the VM's.
            let rename = if reg.name_chosen {
                None
            } else {
                storable_label(&vm)
                    .ok()
                    .flatten()
                    .filter(|n| reg.vm_name.as_ref() != Some(n))
            };
            let reapply = status != VmStatus::Configured;
            let will_restart = reapply && !dry_run && self.plan_restart(&vm, restart)?;
            let mut changes = Vec::new();
            if let Some(new) = &rename {
                changes.push(SyncChange {
                    field: "vm_name".into(),
                    old: reg.vm_name.clone(),
                    new: Some(new.clone()),
                });
            }
            if reapply {
                if let Some(spec) = vm_spec(self.config, &reg) {
                    let change = DeviceChange::Set(spec);
                    if let Ok(new) = new_dma(dma.as_deref(), &change, self.device_type()) {
                        changes.push(SyncChange {
                            field: "device_model_args".into(),
                            old: dma.clone(),
                            new,
                        });
                    }
                }
            }
            let row = rows.get(&reg.vm_uuid.to_ascii_lowercase());
            let remirror = mirror_state(&vm, row) != MirrorState::Ok;
            if remirror {
                changes.push(SyncChange {
                    field: "mirror".into(),
                    old: vm.other_config.get(VM_KEY).cloned(),
                    new: row.map(row_text),
                });
            }
            plan.push(SyncStep {
                reg,
                vm: Some(vm),
                status,
                rename,
                reapply,
                remirror,
                will_restart,
                changes,
            });
        }
        let mut results = Vec::new();
        let mut rolled_back = std::collections::BTreeSet::new();
        if *target == SyncTarget::All {
            // First, so that no other change of this sync takes them off unreported.
            let pool_rec = self.pool_record(start.as_ref().map(|s| &s.0))?;
            let local = self.store.meta()?.generation;
            for uuid in pool::interrupted_registers(&pool_rec, local) {
                let Some(vm) = vms.get(&uuid) else { continue };
                if self.store.get(&vm.uuid)?.is_some() {
                    continue;
                }
                if let Some(item) = self.roll_back(vm, dry_run) {
                    rolled_back.insert(vm.uuid.clone());
                    results.push(item);
                }
            }
        }
        for step in plan {
            results.push(self.sync_step(step, dry_run));
        }
        if *target == SyncTarget::All {
            // Copies other VMs' rows that clones inherited: they register nothing, so they go.
            let registered: std::collections::BTreeSet<String> = self
                .store
                .list(&ListFilter::default())?
                .into_iter()
                .map(|r| r.vm_uuid.to_ascii_lowercase())
                .collect();
            // Also what a failed change may leave once its undo is overtaken by a write xapi
            // carried out after the answer was lost: the VM's own row, or our custom field.
            for vm in vms.values() {
                if registered.contains(&vm.uuid)
                    || rolled_back.contains(&vm.uuid)
                    || !pool::leftover_mirror(vm)
                {
                    continue;
                }
                results.push(self.strip_copy(vm, dry_run));
            }
            // A change published here has set the pool's keys right already.
            if let Some((pool_rec, _)) = start.filter(|s| s.1 == self.committed) {
                self.repair_pool_mirror(&pool_rec)?;
            }
        }
        let failed = results
            .iter()
            .filter(|r| r.action == SyncAction::Failed)
            .count();
        Ok(SyncReport {
            dry_run,
            results,
            failed,
            replicas: None,
            reloads: None,
        })
    }

    /// `sync` of one VM that is not registered: it repairs the VM only when a register of it
    /// was interrupted before its commit (decision 0014), as `sync --all` would; otherwise the
    /// VM is simply not registered.
    fn sync_interrupted(
        &mut self,
        vm: VmRef,
        pool_rec: &xapi::PoolRecord,
        dry_run: bool,
    ) -> Result<SyncReport> {
        let local = self.store.meta()?.generation;
        let uuid = vm.vm_uuid.to_ascii_lowercase();
        if !pool::interrupted_registers(pool_rec, local).contains(&uuid) {
            return Err(Error::NotRegistered { vm });
        }
        let record = self
            .xapi
            .vm_by_uuid(&uuid)
            .map_err(|e| Error::xapi(format!("looking up VM {uuid}"), e))?;
        let Some(item) = record.and_then(|r| self.roll_back(&r, dry_run)) else {
            return Err(Error::NotRegistered { vm });
        };
        let failed = usize::from(item.action == SyncAction::Failed);
        Ok(SyncReport {
            dry_run,
            results: vec![item],
            failed,
            replicas: None,
            reloads: None,
        })
    }

    /// The pool's record: `known` when this sync read it at its start, else read now.
    fn pool_record(&self, known: Option<&xapi::PoolRecord>) -> Result<xapi::PoolRecord> {
        match known {
            Some(rec) => Ok(rec.clone()),
            None => self
                .xapi
                .pool()
                .map_err(|e| Error::xapi("reading the pool's registry generation", e)),
        }
    }

    /// Publishes again when the pool object's part of the mirror is not the registry's: its
    /// generation went missing or differs, or a claim beyond it was left behind.
    fn repair_pool_mirror(&mut self, pool_rec: &xapi::PoolRecord) -> Result<()> {
        let local = self.store.meta()?.generation;
        if local.is_none() || !pool::pool_mirror_off(pool_rec, local) {
            return Ok(());
        }
        let xapi = self.xapi;
        let device_type = self.config.device.device_type.as_str();
        let (tx, primary) = self.begin()?;
        let g = pool::publish_and_commit(xapi, tx, &primary, &[], device_type)?;
        self.committed = Some(g);
        Ok(())
    }

    /// Takes off what a register killed before its commit left on `vm` (see
    /// [`Ctx::apply_as`]): its device and its mirror keys. `None`: it left nothing.
    fn roll_back(&mut self, vm: &VmRecord, dry_run: bool) -> Option<SyncItem> {
        let dma = dma_of(vm);
        let mut changes = Vec::new();
        if let Ok(new) = new_dma(dma.as_deref(), &DeviceChange::Remove, self.device_type()) {
            if new != dma {
                changes.push(SyncChange {
                    field: "device_model_args".into(),
                    old: dma.clone(),
                    new,
                });
            }
        }
        if pool::leftover_mirror(vm) {
            changes.push(SyncChange {
                field: "mirror".into(),
                old: vm.other_config.get(VM_KEY).cloned(),
                new: None,
            });
        }
        if changes.is_empty() {
            return None;
        }
        let mut item = SyncItem {
            vm_uuid: vm.uuid.clone(),
            vm_name: Some(vm.name_label.clone()).filter(|n| !n.is_empty()),
            status_before: VmStatus::Unregistered,
            action: SyncAction::WouldApply,
            pending_restart: false,
            restarted: false,
            changes,
            error: None,
        };
        if dry_run {
            return Some(item);
        }
        let uuid = vm.uuid.clone();
        let result = self.apply(vm, |tx| match tx.get(&uuid)? {
            // Registered since the plan was made: nothing to roll back.
            Some(r) => Err(Error::AlreadyRegistered {
                vm: r.vm_ref(),
                pool: r.pool,
                priority: r.priority,
                vm_id: r.vm_id,
            }),
            None => Ok(((), DeviceChange::Remove)),
        });
        match result {
            Ok(((), dma)) => {
                item.action = SyncAction::Applied;
                item.pending_restart = dma != dma_of(vm)
                    && PowerState::from_xapi(&vm.power_state) != PowerState::Halted;
            }
            Err(e) => {
                item.action = SyncAction::Failed;
                item.error = Some(e.to_json()["error"].clone());
            }
        }
        Some(item)
    }

    /// Removes another VM's registry copy from an unregistered VM (a clone inherited it).
    fn strip_copy(&mut self, vm: &VmRecord, dry_run: bool) -> SyncItem {
        let mut item = SyncItem {
            vm_uuid: vm.uuid.clone(),
            vm_name: Some(vm.name_label.clone()).filter(|n| !n.is_empty()),
            status_before: VmStatus::Unregistered,
            action: SyncAction::WouldMirror,
            pending_restart: false,
            restarted: false,
            changes: vec![SyncChange {
                field: "mirror".into(),
                old: vm.other_config.get(VM_KEY).cloned(),
                new: None,
            }],
            error: None,
        };
        if dry_run {
            return item;
        }
        let xapi = self.xapi;
        let device_type = self.config.device.device_type.as_str();
        let result = self.begin().and_then(|(tx, primary)| {
            pool::publish_and_commit(xapi, tx, &primary, &[Touched::of(vm)], device_type)
        });
        match result {
            Ok(g) => {
                self.committed = Some(g);
                item.action = SyncAction::Mirrored;
            }
            Err(e) => {
                item.action = SyncAction::Failed;
                item.error = Some(e.to_json()["error"].clone());
            }
        }
        item
    }

    /// Carries out one step of a sync plan; a failure is reported in the item, not raised, so
    /// the other VMs are still synced.
    fn sync_step(&mut self, step: SyncStep, dry_run: bool) -> SyncItem {
        let mut item = SyncItem {
            vm_uuid: step.reg.vm_uuid.clone(),
            vm_name: step.reg.vm_name.clone(),
            status_before: step.status,
            action: SyncAction::Unchanged,
            pending_restart: false,
            restarted: false,
            changes: step.changes,
            error: None,
        };
        let Some(vm) = step.vm else {
            item.action = SyncAction::Stale;
            return item;
        };
        if !step.reapply && step.rename.is_none() && !step.remirror {
            return item;
        }
        if dry_run {
            item.action = if step.reapply {
                SyncAction::WouldApply
            } else if step.rename.is_some() {
                SyncAction::WouldRename
            } else {
                SyncAction::WouldMirror
            };
            return item;
        }
        match self.sync_one(&vm, step.rename.as_deref(), step.reapply, step.will_restart) {
            Ok(applied) => {
                item.action = if step.reapply {
                    SyncAction::Applied
                } else if step.rename.is_some() {
                    SyncAction::Renamed
                } else {
                    SyncAction::Mirrored
                };
                item.vm_name = applied.registration.vm_name.clone();
                item.pending_restart = applied.pending_restart;
                item.restarted = applied.restarted;
            }
            Err(e) => {
                item.action = SyncAction::Failed;
                item.error = Some(e.to_json()["error"].clone());
            }
        }
        item
    }

    fn sync_one(
        &mut self,
        vm: &VmRecord,
        rename: Option<&str>,
        reapply: bool,
        will_restart: bool,
    ) -> Result<Applied> {
        let uuid = vm.uuid.clone();
        let cfg = self.config;
        let vmr = vm_ref(vm);
        let (reg, dma) = self.apply(vm, |tx| {
            let cur = tx.registered(&uuid, &vmr)?;
            if let Some(name) = rename {
                tx.set_name(&cur.vm_uuid, name)?;
            }
            let reg = tx.registered(&cur.vm_uuid, &vmr)?;
            if !reapply {
                // Keep the device exactly as it is: only the stored name changes.
                return Ok((reg, DeviceChange::Keep));
            }
            let vm_id = u32::try_from(cur.vm_id)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    Error::invalid(
                        "stored vm_id",
                        &cur.vm_id.to_string(),
                        "it cannot be written to the device; fix it with set-vm-id",
                    )
                })?;
            Ok((
                reg,
                DeviceChange::Set(spec_of(cfg, cur.pool, cur.priority, vm_id)),
            ))
        })?;
        self.finish(vm, reg, dma, will_restart, false)
    }
}

#[cfg(test)]
mod tests;
