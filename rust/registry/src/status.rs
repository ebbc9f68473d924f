//! The pure comparison of the registry with the VMs' devices: a registration's status against
//! its VM's device-model-args, and the scan that joins the pool's VMs with the registry. No I/O.

use crate::dma::{DeviceArgs, PLATFORM_KEY};
use crate::error::VmRef;
use crate::model::Registration;
use crate::pool::{mirror_state, MirrorState};
use crate::report::{
    Drift, DriftField, FoundDevice, PowerState, ScanRegistered, ScanReport, ScanSummary,
    ScanUnregistered, Stale, VmStatus,
};
use crate::store::JsonMap;
use std::collections::BTreeMap;
use xapi::VmRecord;

/// What comparing a registration with a device found.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatus {
    pub status: VmStatus,
    pub drift: Vec<Drift>,
    /// The device-model-args could not be read.
    pub problems: Vec<String>,
}

/// Compares the registry values with the vgpu entry of `dma`.
pub fn device_status(reg: &Registration, dma: Option<&str>, device_type: &str) -> DeviceStatus {
    let not_applied = |problems| DeviceStatus {
        status: VmStatus::NotApplied,
        drift: Vec::new(),
        problems,
    };
    let Some(text) = dma else {
        return not_applied(Vec::new());
    };
    let args = match DeviceArgs::parse(text) {
        Ok(a) => a,
        Err(e) => return not_applied(vec![e.to_string()]),
    };
    let Some(entry) = args.find_vgpu(device_type) else {
        return not_applied(Vec::new());
    };
    let mut drift = Vec::new();
    let mut check = |field: DriftField, registry: String, device: Option<&str>| {
        if device != Some(registry.as_str()) {
            drift.push(Drift {
                field,
                registry,
                device: device.map(str::to_string),
            });
        }
    };
    check(
        DriftField::DeviceType,
        device_type.to_string(),
        Some(&entry.device_type),
    );
    check(
        DriftField::Pool,
        reg.pool.as_str().to_string(),
        entry.get("pool_id"),
    );
    check(
        DriftField::Priority,
        reg.priority.as_word().to_string(),
        entry.get("priority"),
    );
    check(DriftField::VmId, reg.vm_id.to_string(), entry.get("vm_id"));
    DeviceStatus {
        status: if drift.is_empty() {
            VmStatus::Configured
        } else {
            VmStatus::Drift
        },
        drift,
        problems: Vec::new(),
    }
}

pub fn dma_of(vm: &VmRecord) -> Option<String> {
    vm.platform.get(PLATFORM_KEY).cloned()
}

pub fn vm_ref(vm: &VmRecord) -> VmRef {
    VmRef {
        vm_uuid: vm.uuid.clone(),
        vm_name: Some(vm.name_label.clone()),
    }
}

/// Templates, snapshots and control domains are not VMs here.
pub fn is_real_vm(vm: &VmRecord) -> bool {
    !vm.is_a_template && !vm.is_a_snapshot && !vm.is_control_domain
}

/// Joins the pool's VMs with the registry rows.
/// `rows`: the registry rows as the mirror should carry them, by lower-case uuid.
pub fn build_scan(
    vms: Vec<VmRecord>,
    regs: Vec<Registration>,
    rows: &BTreeMap<String, JsonMap>,
    device_type: &str,
) -> ScanReport {
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
        let power_state = PowerState::from_xapi(&vm.power_state);
        match by_uuid.remove(&vm.uuid) {
            Some(reg) => {
                let DeviceStatus {
                    status,
                    drift,
                    mut problems,
                } = device_status(&reg, dma.as_deref(), device_type);
                problems.extend(reg.problems());
                let mirror = mirror_state(&vm, rows.get(&vm.uuid)).as_str().to_string();
                report.registered.push(ScanRegistered {
                    mirror,
                    registration: reg,
                    power_state,
                    device_model_args: dma,
                    status,
                    drift,
                    problems,
                });
            }
            None => report.unregistered.push(ScanUnregistered {
                mirror: crate::pool::unregistered_copy(&vm).map(str::to_string),
                device: found_device(dma.as_deref(), device_type),
                vm_uuid: vm.uuid,
                vm_name: vm.name_label,
                power_state,
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
        if r.mirror != MirrorState::Ok.as_str() {
            s.mirror_drift += 1;
        }
        match r.status {
            VmStatus::Configured => s.configured += 1,
            VmStatus::Drift => s.drift += 1,
            VmStatus::NotApplied | VmStatus::Stale | VmStatus::Unregistered => s.not_applied += 1,
        }
    }
    report
}

/// The vgpu device a VM carries, with its properties as written.
pub fn found_device(dma: Option<&str>, device_type: &str) -> Option<FoundDevice> {
    let entry = DeviceArgs::parse(dma?).ok()?.find_vgpu(device_type)?;
    Some(FoundDevice {
        pool: entry.get("pool_id").map(str::to_string),
        priority: entry.get("priority").map(str::to_string),
        vm_id: entry.get("vm_id").map(str::to_string),
        device_type: entry.device_type,
    })
}
