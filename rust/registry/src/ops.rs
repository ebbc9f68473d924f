//! The operations. Each one validates nothing itself (requests arrive typed, see [`crate::api`]),
//! and every mutation changes the registry and the VM's device-model-args as one unit.

use crate::config::Config;
use crate::dma::{DeviceArgs, DeviceSpec, PLATFORM_KEY};
use crate::error::{Error, Result, VmRef};
use crate::model::{parse_vm_name, Pool, Priority, Registration, Selector};
use crate::store::{ListFilter, NewValues, PoolInfo, Store, WriteTx};
use serde::Serialize;
use std::collections::BTreeMap;
use xapi::{VmRecord, Xapi};

/// What an operation works with.
pub struct Ctx<'a> {
    pub store: &'a mut Store,
    pub xapi: &'a dyn Xapi,
    pub config: &'a Config,
}

// ---------------------------------------------------------------------------------------------
// Requests

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterReq {
    pub selector: Selector,
    /// The name to store; default: the VM's name-label.
    pub name: Option<String>,
    pub pool: Pool,
    pub priority: Priority,
    pub vm_id: Option<u32>,
    pub restart: Restart,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateReq {
    pub selector: Selector,
    pub pool: Option<Pool>,
    pub priority: Option<Priority>,
    pub vm_id: Option<u32>,
    pub restart: Restart,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restart {
    pub requested: bool,
    pub confirmed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncTarget {
    All,
    One(Selector),
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmStatus {
    Configured,
    Drift,
    NotApplied,
    Stale,
}

impl VmStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VmStatus::Configured => "configured",
            VmStatus::Drift => "drift",
            VmStatus::NotApplied => "not_applied",
            VmStatus::Stale => "stale",
        }
    }
}

/// One difference between the registry and the VM's vgpu device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Drift {
    /// `pool`, `priority`, `vm_id` or `device_type`.
    pub field: String,
    pub registry: String,
    /// Null when the device lacks the property.
    pub device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ScanRegistered {
    #[serde(flatten)]
    pub registration: Registration,
    pub power_state: String,
    pub device_model_args: Option<String>,
    pub status: VmStatus,
    pub drift: Vec<Drift>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ScanUnregistered {
    pub vm_uuid: String,
    pub vm_name: String,
    pub power_state: String,
    pub device_model_args: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Stale {
    #[serde(flatten)]
    pub registration: Registration,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ScanSummary {
    pub total_vms: usize,
    pub registered: usize,
    pub unregistered: usize,
    pub stale: usize,
    pub configured: usize,
    pub drift: usize,
    pub not_applied: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ScanReport {
    pub registered: Vec<ScanRegistered>,
    pub unregistered: Vec<ScanUnregistered>,
    pub stale: Vec<Stale>,
    pub summary: ScanSummary,
}

/// The result of a mutating command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    pub power_state: Option<String>,
    pub device_model_args: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ShowReport {
    #[serde(flatten)]
    pub registration: Registration,
    pub power_state: Option<String>,
    pub device_model_args: Option<String>,
    pub status: VmStatus,
    pub drift: Vec<Drift>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PoolDetail {
    #[serde(flatten)]
    pub pool: PoolInfo,
    pub vms: Vec<Registration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Problem {
    pub vm_uuid: String,
    pub vm_name: Option<String>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StatusReport {
    pub pools: Vec<PoolInfo>,
    pub summary: ScanSummary,
    pub drift: Vec<VmRef>,
    pub not_applied: Vec<VmRef>,
    pub unregistered: Vec<VmRef>,
    pub stale: Vec<VmRef>,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncAction {
    Unchanged,
    Applied,
    Renamed,
    WouldApply,
    WouldRename,
    Stale,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SyncItem {
    pub vm_uuid: String,
    pub vm_name: Option<String>,
    pub status_before: VmStatus,
    pub action: SyncAction,
    pub pending_restart: bool,
    pub restarted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SyncReport {
    pub dry_run: bool,
    pub results: Vec<SyncItem>,
    pub failed: usize,
}

// ---------------------------------------------------------------------------------------------
// Device status

/// Compares the registry values with the vgpu entry of `dma`.
pub fn device_status(
    reg: &Registration,
    dma: Option<&str>,
    device_type: &str,
) -> (VmStatus, Vec<Drift>, Vec<String>) {
    let Some(text) = dma else {
        return (VmStatus::NotApplied, Vec::new(), Vec::new());
    };
    let args = match DeviceArgs::parse(text) {
        Ok(a) => a,
        Err(e) => return (VmStatus::NotApplied, Vec::new(), vec![e.to_string()]),
    };
    let Some(entry) = args.find_vgpu(device_type) else {
        return (VmStatus::NotApplied, Vec::new(), Vec::new());
    };
    let mut drift = Vec::new();
    let mut check = |field: &str, registry: String, device: Option<&str>| {
        if device != Some(registry.as_str()) {
            drift.push(Drift {
                field: field.to_string(),
                registry,
                device: device.map(str::to_string),
            });
        }
    };
    check(
        "device_type",
        device_type.to_string(),
        Some(&entry.device_type),
    );
    check("pool", reg.pool.as_str().to_string(), entry.get("pool_id"));
    check(
        "priority",
        reg.priority.as_word().to_string(),
        entry.get("priority"),
    );
    check("vm_id", reg.vm_id.to_string(), entry.get("vm_id"));
    let status = if drift.is_empty() {
        VmStatus::Configured
    } else {
        VmStatus::Drift
    };
    (status, drift, Vec::new())
}

fn dma_of(vm: &VmRecord) -> Option<String> {
    vm.platform.get(PLATFORM_KEY).cloned()
}

fn vm_ref(vm: &VmRecord) -> VmRef {
    VmRef {
        vm_uuid: vm.uuid.clone(),
        vm_name: Some(vm.name_label.clone()),
    }
}

fn is_real_vm(vm: &VmRecord) -> bool {
    !vm.is_a_template && !vm.is_a_snapshot && !vm.is_control_domain
}

/// Shell-quoted, for the repair command lines printed in error messages.
fn sh_quote(s: &str) -> String {
    shell_words::quote(s).into_owned()
}

/// What a mutation does to the VM's vgpu device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChange {
    Set(DeviceSpec),
    Remove,
    Keep,
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

/// The device-model-args value after `change`; `None` means the key should not exist.
fn new_dma(
    old: Option<&str>,
    change: &DeviceChange,
    device_type: &str,
) -> Result<Option<String>, crate::dma::ParseError> {
    if *change == DeviceChange::Keep {
        return Ok(old.map(str::to_string));
    }
    let mut args = match old {
        Some(text) => DeviceArgs::parse(text)?,
        None => DeviceArgs::default(),
    };
    match change {
        DeviceChange::Set(spec) => args.set_vgpu(spec),
        DeviceChange::Remove => {
            if !args.remove_vgpu(device_type) {
                return Ok(old.map(str::to_string));
            }
        }
        DeviceChange::Keep => {}
    }
    Ok(if args.is_empty() {
        None
    } else {
        Some(args.render())
    })
}

/// The command that puts `old` back by hand.
fn repair_command(vm: &VmRecord, old: Option<&str>) -> String {
    match old {
        Some(v) => format!(
            "xe vm-param-set uuid={} platform:{PLATFORM_KEY}={}",
            vm.uuid,
            sh_quote(v)
        ),
        None => format!(
            "xe vm-param-remove uuid={} param-name=platform param-key={PLATFORM_KEY}",
            vm.uuid
        ),
    }
}

/// Replaces the platform key: `remove_from_platform` then `add_to_platform` (xapi has no
/// single-key set). When the add fails after the remove, the old value is put back.
fn write_dma(xapi: &dyn Xapi, vm: &VmRecord, old: Option<&str>, new: Option<&str>) -> Result<()> {
    let what = format!("writing device-model-args of VM {}", vm_ref(vm));
    if old.is_some() {
        xapi.remove_from_platform(&vm.opaque_ref, PLATFORM_KEY)
            .map_err(|e| {
                Error::xapi(
                    format!("{what} failed; the registry and the VM are unchanged"),
                    e,
                )
            })?;
    }
    let Some(new) = new else {
        return Ok(());
    };
    if let Err(e) = xapi.add_to_platform(&vm.opaque_ref, PLATFORM_KEY, new) {
        let Some(old_v) = old else {
            return Err(Error::xapi(
                format!("{what} failed; the registry and the VM are unchanged"),
                e,
            ));
        };
        return match xapi.add_to_platform(&vm.opaque_ref, PLATFORM_KEY, old_v) {
            Ok(()) => Err(Error::xapi(
                format!(
                    "{what} failed; the registry is unchanged and device-model-args were put back"
                ),
                e,
            )),
            Err(restore) => Err(Error::XapiUnrestored {
                context: format!("{what} failed"),
                source: Box::new(e),
                restore: Box::new(restore),
                vm: vm_ref(vm),
                repair_command: repair_command(vm, old),
            }),
        };
    }
    Ok(())
}

/// Puts `old` back after a failed commit.
fn restore_dma(xapi: &dyn Xapi, vm: &VmRecord, old: Option<&str>) -> xapi::Result<()> {
    xapi.remove_from_platform(&vm.opaque_ref, PLATFORM_KEY)?;
    match old {
        Some(v) => xapi.add_to_platform(&vm.opaque_ref, PLATFORM_KEY, v),
        None => Ok(()),
    }
}

/// Joins the pool's VMs with the registry rows.
pub fn build_scan(vms: Vec<VmRecord>, regs: Vec<Registration>, device_type: &str) -> ScanReport {
    // Keyed in lower case: the older tools stored uuids as typed, xapi's are lower case.
    let mut by_uuid: BTreeMap<String, Registration> = regs
        .into_iter()
        .map(|r| (r.vm_uuid.to_ascii_lowercase(), r))
        .collect();
    let mut report = ScanReport {
        registered: Vec::new(),
        unregistered: Vec::new(),
        stale: Vec::new(),
        summary: ScanSummary::default(),
    };
    for vm in vms.into_iter().filter(is_real_vm) {
        let dma = dma_of(&vm);
        match by_uuid.remove(&vm.uuid) {
            Some(reg) => {
                let (status, drift, mut problems) =
                    device_status(&reg, dma.as_deref(), device_type);
                problems.extend(reg.problems());
                report.registered.push(ScanRegistered {
                    registration: reg,
                    power_state: vm.power_state,
                    device_model_args: dma,
                    status,
                    drift,
                    problems,
                });
            }
            None => report.unregistered.push(ScanUnregistered {
                vm_uuid: vm.uuid,
                vm_name: vm.name_label,
                power_state: vm.power_state,
                device_model_args: dma,
            }),
        }
    }
    report.stale = by_uuid
        .into_values()
        .map(|r| Stale {
            problems: r.problems(),
            registration: r,
        })
        .collect();
    report.registered.sort_by(|a, b| {
        let (a, b) = (&a.registration, &b.registration);
        (a.pool, std::cmp::Reverse(a.priority), a.vm_id).cmp(&(
            b.pool,
            std::cmp::Reverse(b.priority),
            b.vm_id,
        ))
    });
    report
        .unregistered
        .sort_by(|a, b| (&a.vm_name, &a.vm_uuid).cmp(&(&b.vm_name, &b.vm_uuid)));
    let s = &mut report.summary;
    s.registered = report.registered.len();
    s.unregistered = report.unregistered.len();
    s.total_vms = s.registered + s.unregistered;
    s.stale = report.stale.len();
    for r in &report.registered {
        match r.status {
            VmStatus::Configured => s.configured += 1,
            VmStatus::Drift => s.drift += 1,
            VmStatus::NotApplied | VmStatus::Stale => s.not_applied += 1,
        }
    }
    report
}

// ---------------------------------------------------------------------------------------------
// Operations

impl Ctx<'_> {
    fn device_type(&self) -> &str {
        &self.config.device.device_type
    }

    /// The live VM a selector names. Templates, snapshots and control domains are not VMs here.
    pub fn resolve(&self, selector: &Selector) -> Result<VmRecord> {
        match selector {
            Selector::Uuid(uuid) => match self
                .xapi
                .vm_by_uuid(uuid)
                .map_err(|e| Error::xapi(format!("looking up VM {uuid}"), e))?
            {
                Some(vm) if is_real_vm(&vm) => Ok(vm),
                _ => Err(Error::VmNotFound {
                    selector: selector.to_string(),
                }),
            },
            Selector::Name(name) => {
                let mut vms: Vec<VmRecord> = self
                    .xapi
                    .vms_by_name(name)
                    .map_err(|e| Error::xapi(format!("looking up VMs named {name:?}"), e))?
                    .into_iter()
                    .filter(is_real_vm)
                    .collect();
                match vms.len() {
                    0 => Err(Error::VmNotFound {
                        selector: selector.to_string(),
                    }),
                    1 => Ok(vms.remove(0)),
                    _ => Err(Error::AmbiguousVmName {
                        name: name.clone(),
                        candidates: vms.iter().map(vm_ref).collect(),
                    }),
                }
            }
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
        let not_found = || Error::VmNotFound {
            selector: selector.to_string(),
        };
        match selector {
            Selector::Uuid(uuid) => match self.store.get(uuid)? {
                Some(reg) => Ok((reg, None)),
                None => Err(not_found()),
            },
            Selector::Name(name) => {
                let mut regs = self.store.find_by_name(name)?;
                match regs.len() {
                    0 => Err(not_found()),
                    1 => Ok((regs.remove(0), None)),
                    _ => Err(Error::AmbiguousVmName {
                        name: name.clone(),
                        candidates: regs.iter().map(Registration::vm_ref).collect(),
                    }),
                }
            }
        }
    }

    /// Refuses what `--restart` cannot do before anything changes; true when the VM will be
    /// restarted after the change.
    fn plan_restart(&self, vm: &VmRecord, restart: Restart) -> Result<bool> {
        if !restart.requested {
            return Ok(false);
        }
        match vm.power_state.as_str() {
            "Running" if restart.confirmed => Ok(true),
            "Running" => Err(Error::ConfirmationRequired { vm: vm_ref(vm) }),
            "Halted" => Ok(false),
            other => Err(Error::VmState {
                vm: vm_ref(vm),
                power_state: other.to_lowercase(),
                message: "--restart only restarts running VMs; resume or shut it down first, \
                          or leave out --restart"
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
    /// device-model-args (or removes it), then commits. If the XAPI write
    /// fails the transaction rolls back and device-model-args are put back; if the commit fails
    /// device-model-args are put back. Errors say what state remains when even that fails.
    fn apply<T>(
        &mut self,
        vm: &VmRecord,
        change: impl FnOnce(&WriteTx<'_>) -> Result<(T, DeviceChange)>,
    ) -> Result<(T, Option<String>)> {
        let xapi = self.xapi;
        let device_type = self.config.device.device_type.as_str();
        let tx = self.store.write()?;
        let (out, desired) = change(&tx)?;
        let platform = xapi.get_platform(&vm.opaque_ref).map_err(|e| {
            Error::xapi(
                format!(
                    "reading device-model-args of VM {} failed; the registry and the VM are unchanged",
                    vm_ref(vm)
                ),
                e,
            )
        })?;
        let old = platform.get(PLATFORM_KEY).cloned();
        let new = new_dma(old.as_deref(), &desired, device_type).map_err(|e| Error::VmState {
            vm: vm_ref(vm),
            power_state: vm.power_state.to_lowercase(),
            message: format!("{e}; fix device-model-args by hand first, nothing was changed"),
        })?;
        if new != old {
            write_dma(xapi, vm, old.as_deref(), new.as_deref())?;
        }
        if let Err(e) = tx.commit() {
            let state = match restore_dma(xapi, vm, old.as_deref()) {
                Ok(()) => "device-model-args were put back; nothing was changed".to_string(),
                Err(r) => format!(
                    "putting device-model-args back also failed ({r}); the registry is \
                     unchanged but the VM now has {new:?}; restore it with: {}",
                    repair_command(vm, old.as_deref())
                ),
            };
            return Err(Error::Database {
                path: self.store.path().display().to_string(),
                message: format!("{e}; {state}"),
            });
        }
        Ok((out, new))
    }

    pub fn scan(&self) -> Result<ScanReport> {
        let vms = self
            .xapi
            .list_vms()
            .map_err(|e| Error::xapi("listing the pool's VMs", e))?;
        let regs = self.store.list(&ListFilter::default())?;
        Ok(build_scan(vms, regs, self.device_type()))
    }

    pub fn register(&mut self, req: RegisterReq) -> Result<Applied> {
        let vm = self.resolve(&req.selector)?;
        let will_restart = self.plan_restart(&vm, req.restart)?;
        let name = req
            .name
            .clone()
            .or_else(|| parse_vm_name(&vm.name_label).ok());
        let uuid = vm.uuid.clone();
        let cfg = self.config;
        let (reg, dma) = self.apply(&vm, |tx| {
            if let Some(r) = tx.get(&uuid)? {
                return Err(Error::AlreadyRegistered {
                    vm: r.vm_ref(),
                    pool: r.pool.to_string(),
                    priority: r.priority.to_string(),
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
            let cur = tx
                .get(&uuid)?
                .ok_or_else(|| Error::NotRegistered { vm: vmr.clone() })?;
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
                            "stored vm-id",
                            &cur.vm_id.to_string(),
                            "it cannot be written to the device; give a new one with --vm-id",
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
        let (reg, vm) = self.resolve_registered(selector)?;
        let Some(vm) = vm else {
            // Stale: the VM is gone, so only the registry row goes.
            let tx = self.store.write()?;
            tx.delete(&reg.vm_uuid)?;
            tx.commit()?;
            return Ok(Applied {
                registration: reg,
                applied: false,
                pending_restart: false,
                restarted: false,
                power_state: None,
                device_model_args: None,
                removed: true,
            });
        };
        let will_restart = self.plan_restart(&vm, restart)?;
        let uuid = reg.vm_uuid.clone();
        let (reg, dma) = self.apply(&vm, |tx| {
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
        let tx = self.store.write()?;
        tx.delete(raw_uuid)?;
        tx.commit()?;
        Ok(Applied {
            registration: reg,
            applied: false,
            pending_restart: false,
            restarted: false,
            power_state: None,
            device_model_args: None,
            removed: true,
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
        let halted = vm.power_state == "Halted";
        Ok(Applied {
            registration,
            applied: true,
            pending_restart: changed_vm && !halted && !restarted,
            restarted,
            power_state: Some(if restarted {
                "Running".to_string()
            } else {
                vm.power_state.clone()
            }),
            device_model_args: dma,
            removed,
        })
    }

    pub fn show(&self, selector: &Selector) -> Result<ShowReport> {
        let (reg, vm) = self.resolve_registered(selector)?;
        let problems = reg.problems();
        Ok(match vm {
            Some(vm) => {
                let dma = dma_of(&vm);
                let (status, drift, mut p) =
                    device_status(&reg, dma.as_deref(), self.device_type());
                p.extend(problems);
                ShowReport {
                    registration: reg,
                    power_state: Some(vm.power_state),
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
            priority: None,
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
        Ok(StatusReport {
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
        })
    }

    pub fn sync(
        &mut self,
        target: &SyncTarget,
        dry_run: bool,
        restart: Restart,
    ) -> Result<SyncReport> {
        let regs = match target {
            SyncTarget::All => self.store.list(&ListFilter::default())?,
            SyncTarget::One(sel) => vec![self.resolve_registered(sel)?.0],
        };
        let vms: BTreeMap<String, VmRecord> = self
            .xapi
            .list_vms()
            .map_err(|e| Error::xapi("listing the pool's VMs", e))?
            .into_iter()
            .map(|v| (v.uuid.clone(), v))
            .collect();
        // Decide everything first, so a refusal (confirmation, paused VM) changes nothing.
        let mut plan = Vec::new();
        for reg in regs {
            let vm = vms.get(&reg.vm_uuid.to_ascii_lowercase()).cloned();
            let Some(vm) = vm else {
                plan.push((reg, None, VmStatus::Stale, false, false));
                continue;
            };
            let (status, _, _) = device_status(&reg, dma_of(&vm).as_deref(), self.device_type());
            let rename = parse_vm_name(&vm.name_label)
                .ok()
                .filter(|n| reg.vm_name.as_ref() != Some(n));
            let reapply = status != VmStatus::Configured;
            let will_restart = if reapply && !dry_run {
                self.plan_restart(&vm, restart)?
            } else {
                false
            };
            plan.push((reg, Some((vm, rename)), status, reapply, will_restart));
        }
        let mut results = Vec::new();
        for (reg, vm, status, reapply, will_restart) in plan {
            let mut item = SyncItem {
                vm_uuid: reg.vm_uuid.clone(),
                vm_name: reg.vm_name.clone(),
                status_before: status,
                action: SyncAction::Unchanged,
                pending_restart: false,
                restarted: false,
                error: None,
            };
            let Some((vm, rename)) = vm else {
                item.action = SyncAction::Stale;
                results.push(item);
                continue;
            };
            if !reapply && rename.is_none() {
                results.push(item);
                continue;
            }
            if dry_run {
                item.action = if reapply {
                    SyncAction::WouldApply
                } else {
                    SyncAction::WouldRename
                };
                results.push(item);
                continue;
            }
            match self.sync_one(&vm, rename.as_deref(), reapply, will_restart) {
                Ok(applied) => {
                    item.action = if reapply {
                        SyncAction::Applied
                    } else {
                        SyncAction::Renamed
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
            results.push(item);
        }
        let failed = results
            .iter()
            .filter(|r| r.action == SyncAction::Failed)
            .count();
        Ok(SyncReport {
            dry_run,
            results,
            failed,
        })
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
            let cur = tx
                .get(&uuid)?
                .ok_or_else(|| Error::NotRegistered { vm: vmr.clone() })?;
            if let Some(name) = rename {
                tx.set_name(&cur.vm_uuid, name)?;
            }
            let reg = tx
                .get(&cur.vm_uuid)?
                .ok_or_else(|| Error::NotRegistered { vm: vmr.clone() })?;
            if !reapply {
                // Keep the device exactly as it is: only the stored name changes.
                return Ok((reg, DeviceChange::Keep));
            }
            let vm_id = u32::try_from(cur.vm_id)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    Error::invalid(
                        "stored vm-id",
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
