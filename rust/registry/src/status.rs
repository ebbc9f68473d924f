//! The pure comparison of the registry with the VMs' devices: a registration's status against
//! its VM's device-model-args, and the scan that joins the pool's VMs with the registry. No I/O.

use crate::dma::{DeviceArgs, PLATFORM_KEY};
use crate::error::VmRef;
use crate::model::Registration;
use crate::pool::{custom_field, row_text, MirrorState, FIELD_KEY, VM_KEY};
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

/// The scan that joins the pool's VMs with the registry rows, fed one VM at a time as the VMs
/// are read from XAPI: each VM is reduced to its line of the report as it comes, so the pool's
/// VM records are never all held at once. The report does not depend on the order they come in.
pub struct Scan<'a> {
    /// Keyed in lower case: the older tools stored uuids as typed, xapi's are lower case.
    by_uuid: BTreeMap<String, (Registration, Option<RowCopy>)>,
    device_type: &'a str,
    report: ScanReport,
}

/// What telling a VM's copy of its registry row apart from the row needs, much smaller than the
/// row as a JSON map (which, for every row of a large registry, would outweigh the whole scan).
enum RowCopy {
    /// The row as the mirror writes it ([`row_text`]): a copy with the same text is the same
    /// row, and one with other text is parsed and compared.
    Text { text: String, field: String },
    /// A row holding a float, which text does not always bring back bit for bit: kept as is.
    Map { row: JsonMap, field: String },
}

impl RowCopy {
    fn new(row: JsonMap) -> RowCopy {
        let field = custom_field(&row);
        if row.values().any(|v| v.is_f64()) {
            RowCopy::Map { row, field }
        } else {
            RowCopy::Text {
                text: row_text(&row),
                field,
            }
        }
    }

    /// [`crate::pool::mirror_state`] of a registered VM, from this instead of the row.
    fn state(this: Option<&RowCopy>, vm: &VmRecord) -> MirrorState {
        let have = vm.other_config.get(VM_KEY);
        let (this, copy) = match (this, have) {
            (None, None) => return MirrorState::Ok,
            (None, Some(_)) => return MirrorState::Stale,
            (Some(_), None) => return MirrorState::Missing,
            (Some(this), Some(copy)) => (this, copy),
        };
        let parsed = || serde_json::from_str::<JsonMap>(copy).ok();
        let (same_row, field) = match this {
            RowCopy::Text { text, field } => (
                copy == text
                    || parsed()
                        .is_some_and(|c| serde_json::from_str::<JsonMap>(text).ok() == Some(c)),
                field,
            ),
            RowCopy::Map { row, field } => (parsed().as_ref() == Some(row), field),
        };
        if same_row && vm.other_config.get(FIELD_KEY) == Some(field) {
            MirrorState::Ok
        } else {
            MirrorState::Stale
        }
    }
}

impl<'a> Scan<'a> {
    /// Then each row of the registry with [`Scan::add_row`], then each VM with [`Scan::add`].
    pub fn new(regs: Vec<Registration>, device_type: &'a str) -> Scan<'a> {
        let registered = Vec::with_capacity(regs.len());
        Scan {
            by_uuid: regs
                .into_iter()
                .map(|r| (r.vm_uuid.to_ascii_lowercase(), (r, None)))
                .collect(),
            device_type,
            report: ScanReport {
                registered,
                unregistered: Vec::new(),
                stale: Vec::new(),
                summary: ScanSummary::default(),
            },
        }
    }

    /// The registry row of `uuid` (lower case) as the mirror should carry it.
    pub fn add_row(&mut self, uuid: &str, row: JsonMap) {
        if let Some((_, copy)) = self.by_uuid.get_mut(uuid) {
            *copy = Some(RowCopy::new(row));
        }
    }

    pub fn add(&mut self, mut vm: VmRecord) {
        if !is_real_vm(&vm) {
            return;
        }
        let device_type = self.device_type;
        let dma = vm.platform.remove(PLATFORM_KEY);
        let power_state = PowerState::from_xapi(&vm.power_state);
        match self.by_uuid.remove(&vm.uuid) {
            Some((reg, row)) => {
                let DeviceStatus {
                    status,
                    drift,
                    mut problems,
                } = device_status(&reg, dma.as_deref(), device_type);
                problems.extend(reg.problems());
                let mirror = RowCopy::state(row.as_ref(), &vm).as_str().to_string();
                self.report.registered.push(ScanRegistered {
                    mirror,
                    registration: reg,
                    power_state,
                    device_model_args: dma,
                    status,
                    drift,
                    problems,
                });
            }
            None => self.report.unregistered.push(ScanUnregistered {
                mirror: crate::pool::unregistered_copy(&vm).map(str::to_string),
                device: found_device(dma.as_deref(), device_type),
                vm_uuid: vm.uuid,
                vm_name: vm.name_label,
                power_state,
                device_model_args: dma,
            }),
        }
    }

    /// The report, in the contract's order: registered VMs by pool, priority (high first) and
    /// vm_id; unregistered ones by name then uuid; stale registrations by uuid.
    pub fn finish(self) -> ScanReport {
        let mut report = self.report;
        report.stale = self
            .by_uuid
            .into_values()
            .map(|(r, _)| Stale {
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
                VmStatus::NotApplied | VmStatus::Stale | VmStatus::Unregistered => {
                    s.not_applied += 1
                }
            }
        }
        report
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Controls, Pool, Priority};

    fn reg(uuid: &str, vm_id: i64, pool: Pool, priority: Priority) -> Registration {
        Registration {
            vm_uuid: uuid.into(),
            vm_name: Some(format!("reg-{vm_id}")),
            vm_id,
            pool,
            priority,
            created_at: None,
            updated_at: None,
            name_chosen: false,
            controls: Controls::default(),
        }
    }

    fn vm(uuid: &str, name: &str, dma: Option<&str>) -> VmRecord {
        VmRecord {
            opaque_ref: format!("OpaqueRef:{uuid}"),
            uuid: uuid.into(),
            name_label: name.into(),
            power_state: "Running".into(),
            platform: dma
                .map(|d| BTreeMap::from([(PLATFORM_KEY.to_string(), d.to_string())]))
                .unwrap_or_default(),
            is_a_template: false,
            is_a_snapshot: false,
            is_control_domain: false,
            resident_on: "OpaqueRef:NULL".into(),
            other_config: BTreeMap::new(),
        }
    }

    fn scan(vms: &[VmRecord], regs: &[Registration]) -> ScanReport {
        let mut scan = Scan::new(regs.to_vec(), "vgpu-cuda");
        vms.iter().cloned().for_each(|v| scan.add(v));
        scan.finish()
    }

    /// The scan keeps a row's text rather than the row: it must judge each VM's copy as
    /// `pool::mirror_state` does with the whole row.
    #[test]
    fn the_kept_row_judges_copies_as_the_whole_row_does() {
        let row = |v: serde_json::Value| -> JsonMap { serde_json::from_value(v).unwrap() };
        let rows = [
            row(
                serde_json::json!({"vm_uuid": "u", "pool": "A", "priority": "high", "vm_id": 3,
                                   "weight": 50, "vm_name": "caf\u{e9} \"x\""}),
            ),
            // an older file's REAL weight
            row(
                serde_json::json!({"vm_uuid": "u", "pool": "B", "priority": "low", "vm_id": 4,
                                   "weight": 12.5}),
            ),
            row(
                serde_json::json!({"vm_uuid": "u", "pool": "A", "priority": "low", "vm_id": 5,
                                   "weight": 0.1}),
            ),
        ];
        for r in &rows {
            let text = row_text(r);
            let field = custom_field(r);
            let reordered = {
                let mut parts: Vec<String> =
                    r.iter().map(|(k, v)| format!("{:?}: {v}", k)).collect();
                parts.reverse();
                format!("{{ {} }}", parts.join(", "))
            };
            let copies = [
                None,
                Some(text.clone()),
                Some(reordered),
                Some(text.replace("\"vm_id\":", "\"vm_id\": 1")),
                Some("not json".to_string()),
                Some("{}".to_string()),
            ];
            for copy in &copies {
                for field in [
                    None,
                    Some(field.clone()),
                    Some("pool ?, ?, vm_id ?".to_string()),
                ] {
                    let mut v = vm("u", "n", None);
                    if let Some(c) = copy {
                        v.other_config.insert(VM_KEY.into(), c.clone());
                    }
                    if let Some(f) = &field {
                        v.other_config.insert(FIELD_KEY.into(), f.clone());
                    }
                    let kept = RowCopy::new(r.clone());
                    for (with_row, kept) in [(Some(r), Some(&kept)), (None, None)] {
                        assert_eq!(
                            RowCopy::state(kept, &v),
                            crate::pool::mirror_state(&v, with_row),
                            "row {text}, copy {copy:?}, field {field:?}, row kept: {}",
                            with_row.is_some()
                        );
                    }
                }
            }
        }
        // The cases above reach every state.
        let mut v = vm("u", "n", None);
        let kept = RowCopy::new(rows[0].clone());
        assert_eq!(RowCopy::state(Some(&kept), &v), MirrorState::Missing);
        v.other_config.insert(VM_KEY.into(), row_text(&rows[0]));
        assert_eq!(RowCopy::state(Some(&kept), &v), MirrorState::Stale);
        v.other_config
            .insert(FIELD_KEY.into(), custom_field(&rows[0]));
        assert_eq!(RowCopy::state(Some(&kept), &v), MirrorState::Ok);
        assert_eq!(RowCopy::state(None, &v), MirrorState::Stale);
    }

    /// XAPI hands the records out in no particular order: the report must not depend on it.
    #[test]
    fn the_report_is_the_same_whatever_order_the_vms_come_in() {
        let regs = vec![
            reg("u-3", 3, Pool::B, Priority::Low),
            reg("u-1", 1, Pool::A, Priority::Low),
            reg("u-2", 2, Pool::A, Priority::High),
            reg("U-5", 5, Pool::A, Priority::High),
            reg("u-gone", 4, Pool::A, Priority::Medium),
            reg("u-gone-too", 6, Pool::B, Priority::Medium),
        ];
        let mut vms = vec![
            vm(
                "u-1",
                "one",
                Some("-device vgpu-cuda,pool_id=A,priority=low,vm_id=1"),
            ),
            vm(
                "u-2",
                "two",
                Some("-device vgpu-cuda,pool_id=B,priority=high,vm_id=2"),
            ),
            vm("u-3", "three", None),
            vm(
                "u-5",
                "five",
                Some("-device vgpu-cuda,pool_id=A,priority=high,vm_id=5"),
            ),
            vm("u-x", "same", None),
            vm("u-a", "same", Some("-device vgpu-cuda,pool_id=A")),
            vm("u-b", "alpha", None),
        ];
        let mut template = vm("u-t", "template", None);
        template.is_a_template = true;
        vms.push(template);
        let expected = scan(&vms, &regs);

        let registered: Vec<(&str, i64)> = expected
            .registered
            .iter()
            .map(|r| (r.registration.vm_uuid.as_str(), r.registration.vm_id))
            .collect();
        assert_eq!(registered, [("u-2", 2), ("U-5", 5), ("u-1", 1), ("u-3", 3)]);
        let statuses: Vec<VmStatus> = expected.registered.iter().map(|r| r.status).collect();
        use VmStatus::*;
        assert_eq!(statuses, [Drift, Configured, Configured, NotApplied]);
        let unregistered: Vec<&str> = expected
            .unregistered
            .iter()
            .map(|u| u.vm_uuid.as_str())
            .collect();
        assert_eq!(unregistered, ["u-b", "u-a", "u-x"]);
        assert_eq!(
            expected.unregistered[1]
                .device
                .as_ref()
                .map(|d| d.pool.as_deref()),
            Some(Some("A"))
        );
        let stale: Vec<&str> = expected
            .stale
            .iter()
            .map(|s| s.registration.vm_uuid.as_str())
            .collect();
        assert_eq!(stale, ["u-gone", "u-gone-too"]);
        assert_eq!(
            (
                expected.summary.total_vms,
                expected.summary.registered,
                expected.summary.drift
            ),
            (7, 4, 1)
        );

        // Every rotation, and the reverse: the same report, to the byte.
        let text = serde_json::to_string_pretty(&expected).unwrap();
        for k in 0..vms.len() {
            let mut order = vms.clone();
            order.rotate_left(k);
            assert_eq!(
                serde_json::to_string_pretty(&scan(&order, &regs)).unwrap(),
                text,
                "{k}"
            );
            order.reverse();
            assert_eq!(
                serde_json::to_string_pretty(&scan(&order, &regs)).unwrap(),
                text,
                "{k}r"
            );
        }
    }
}
