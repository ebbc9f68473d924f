//! The pool-wide operations of SPEC §9 that are not a change of one registration: `refresh`
//! (this host's file from the mirror), `adopt` (VMs that already carry a device) and `rebuild`
//! (the master's registry from the mirror, then adoption).

use super::{spec_of, storable_label, Ctx, SyncTarget};
use crate::error::{Error, Result};
use crate::model::{parse_vm_id, Pool, Priority, Registration};
use crate::ops::apply::{new_dma, DeviceChange};
use crate::pool::{self, read_mirror};
use crate::report::{AdoptReport, Adopted, RebuildReport, Skipped};
use crate::status::{dma_of, found_device, is_real_vm};
use crate::store::{ListFilter, NewValues, Role};
use std::collections::BTreeMap;
use xapi::VmRecord;

/// A VM `adopt` will register, with the values its device carries.
struct Candidate {
    vm: VmRecord,
    pool: Pool,
    priority: Priority,
    vm_id: u32,
}

fn skipped(vm: &VmRecord, reason: String) -> Skipped {
    Skipped {
        vm_uuid: vm.uuid.clone(),
        vm_name: Some(vm.name_label.clone()).filter(|n| !n.is_empty()),
        reason,
        device_model_args: dma_of(vm),
    }
}

/// A rewritten device reaches QEMU at the VM's next start: pending unless it is halted.
fn will_be_pending(vm: &VmRecord) -> bool {
    crate::report::PowerState::from_xapi(&vm.power_state) != crate::report::PowerState::Halted
}

impl Ctx<'_> {
    /// Which VMs would be adopted, and which are left alone with the reason. `registered`: the
    /// uuids (lower case) and vm_ids the registry holds.
    fn plan_adopt(
        &self,
        vms: Vec<VmRecord>,
        registered: &BTreeMap<String, i64>,
        explicit: bool,
    ) -> (Vec<Candidate>, Vec<Skipped>) {
        let owner_of: BTreeMap<i64, &String> = registered.iter().map(|(u, id)| (*id, u)).collect();
        let mut skip = Vec::new();
        let mut found = Vec::new();
        for vm in vms.into_iter().filter(is_real_vm) {
            if registered.contains_key(&vm.uuid) {
                if explicit {
                    skip.push(skipped(&vm, "already registered".into()));
                }
                continue;
            }
            let dma = dma_of(&vm);
            let Some(dev) = found_device(dma.as_deref(), self.device_type()) else {
                if explicit {
                    skip.push(skipped(&vm, "no vgpu device in device-model-args".into()));
                }
                continue;
            };
            let values = (|| -> std::result::Result<(Pool, Priority, u32), String> {
                let pool = dev.pool.as_deref().ok_or("the device has no pool_id")?;
                let pool = Pool::parse(pool).map_err(|e| format!("pool_id: {e}"))?;
                let priority = dev
                    .priority
                    .as_deref()
                    .ok_or("the device has no priority")?;
                let priority = Priority::parse(priority).map_err(|e| format!("priority: {e}"))?;
                let id = dev.vm_id.as_deref().ok_or("the device has no vm_id")?;
                let id = parse_vm_id(id).map_err(|e| format!("vm_id: {e}"))?;
                Ok((pool, priority, id))
            })();
            match values {
                Ok((pool, priority, vm_id)) => found.push(Candidate {
                    vm,
                    pool,
                    priority,
                    vm_id,
                }),
                Err(why) => skip.push(skipped(&vm, why)),
            }
        }
        let mut claims: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for c in &found {
            claims.entry(c.vm_id).or_default().push(c.vm.uuid.clone());
        }
        let mut take = Vec::new();
        for c in found {
            let claimants = &claims[&c.vm_id];
            if let Some(owner) = owner_of.get(&i64::from(c.vm_id)) {
                skip.push(skipped(
                    &c.vm,
                    format!("vm_id {} is already registered to VM {owner}", c.vm_id),
                ));
            } else if claimants.len() > 1 {
                skip.push(skipped(
                    &c.vm,
                    format!(
                        "vm_id {} is claimed by several VMs: {}",
                        c.vm_id,
                        claimants.join(", ")
                    ),
                ));
            } else {
                take.push(c);
            }
        }
        (take, skip)
    }

    fn registered_ids(&self) -> Result<BTreeMap<String, i64>> {
        Ok(self
            .store
            .list(&ListFilter::default())?
            .into_iter()
            .map(|r: Registration| (r.vm_uuid.to_ascii_lowercase(), r.vm_id))
            .collect())
    }

    pub fn adopt(&mut self, target: &SyncTarget, dry_run: bool) -> Result<AdoptReport> {
        let (vms, explicit) = match target {
            SyncTarget::All => (
                self.xapi
                    .list_vms()
                    .map_err(|e| Error::xapi("listing the pool's VMs", e))?,
                false,
            ),
            SyncTarget::One(sel) => (vec![self.resolve(sel)?], true),
        };
        let registered = self.registered_ids()?;
        let (take, skip) = self.plan_adopt(vms, &registered, explicit);
        self.adopt_planned(take, skip, dry_run)
    }

    fn adopt_planned(
        &mut self,
        take: Vec<Candidate>,
        mut skip: Vec<Skipped>,
        dry_run: bool,
    ) -> Result<AdoptReport> {
        let mut adopted = Vec::new();
        for c in take {
            let spec = spec_of(self.config, c.pool, c.priority, c.vm_id);
            let before = dma_of(&c.vm);
            let name = match storable_label(&c.vm) {
                Ok(n) => n,
                Err(e) => {
                    skip.push(skipped(&c.vm, e.to_string()));
                    continue;
                }
            };
            if dry_run {
                let after = new_dma(
                    before.as_deref(),
                    &DeviceChange::Set(spec),
                    self.device_type(),
                )
                .ok()
                .flatten();
                adopted.push(Adopted {
                    pending_restart: after != before && will_be_pending(&c.vm),
                    vm_uuid: c.vm.uuid.clone(),
                    vm_name: name,
                    pool: c.pool,
                    priority: c.priority,
                    vm_id: c.vm_id,
                    before,
                    after,
                });
                continue;
            }
            let uuid = c.vm.uuid.clone();
            let values = NewValues {
                vm_name: name.clone(),
                pool: c.pool,
                priority: c.priority,
                vm_id: c.vm_id,
            };
            let result = self.apply(&c.vm, |tx| {
                if tx.get(&uuid)?.is_some() {
                    return Err(Error::invalid("VM", &uuid, "registered meanwhile"));
                }
                tx.check_vm_id_free(c.vm_id, &uuid)?;
                let reg = tx.insert(&uuid, &values)?;
                Ok((reg, DeviceChange::Set(spec)))
            });
            match result {
                Ok((_, after)) => adopted.push(Adopted {
                    pending_restart: after != before && will_be_pending(&c.vm),
                    vm_uuid: uuid,
                    vm_name: name,
                    pool: c.pool,
                    priority: c.priority,
                    vm_id: c.vm_id,
                    before,
                    after,
                }),
                Err(e) => skip.push(skipped(&c.vm, e.to_string())),
            }
        }
        Ok(AdoptReport {
            dry_run,
            adopted,
            skipped: skip,
            replicas: None,
            reloads: None,
        })
    }

    pub fn rebuild(&mut self, dry_run: bool) -> Result<RebuildReport> {
        let pool_rec = self
            .xapi
            .pool()
            .map_err(|e| Error::xapi("reading the pool's registry copy", e))?;
        if let Some(me) = &self.me {
            if me.opaque_ref != pool_rec.master {
                return Err(pool::no_longer_master(&pool_rec));
            }
        }
        let vms = self
            .xapi
            .list_vms()
            .map_err(|e| Error::xapi("reading the registry's copy in XAPI", e))?;
        let mirror = read_mirror(&pool_rec, &vms);
        let mut skipped_rows: Vec<Skipped> = mirror
            .unreadable
            .iter()
            .map(|(u, why)| Skipped {
                vm_uuid: u.clone(),
                vm_name: None,
                reason: format!("its registry copy is unreadable: {why}"),
                device_model_args: None,
            })
            .collect();
        let from_mirror: BTreeMap<String, i64> = mirror
            .rows
            .iter()
            .map(|(u, r)| {
                (
                    u.clone(),
                    r.get("vm_id").and_then(|v| v.as_i64()).unwrap_or(0),
                )
            })
            .collect();
        let from_mirror = if mirror.generation.is_some() {
            from_mirror
        } else {
            self.registered_ids()?
        };
        if dry_run {
            let (take, skip) = self.plan_adopt(vms, &from_mirror, false);
            let adopt = self.adopt_planned(take, skip, true)?;
            return Ok(RebuildReport {
                dry_run,
                backup: None,
                restored: from_mirror.len(),
                generation: mirror.generation,
                skipped: skipped_rows,
                adopt,
                replicas: None,
                reloads: None,
            });
        }
        let backup = if self.store.rows_json()?.is_empty() {
            None
        } else {
            Some(self.store.backup_as("pre-rebuild")?)
        };
        let tx = self.store.write()?;
        // With nothing ever published there is no copy to restore from: the registry's rows
        // stay, and only the adoption below runs.
        let refused = if mirror.generation.is_some() {
            let refused = tx.replace_all(&mirror.rows, mirror.pools.as_deref())?;
            tx.set_meta(Role::Primary, mirror.generation.unwrap_or(0))?;
            refused
        } else {
            Vec::new()
        };
        tx.commit()?;
        skipped_rows.extend(refused.into_iter().map(|(u, why)| Skipped {
            vm_uuid: u,
            vm_name: None,
            reason: format!("the registry refused its row: {why}"),
            device_model_args: None,
        }));
        let registered = self.registered_ids()?;
        let restored = registered.len();
        let (take, skip) = self.plan_adopt(vms, &registered, false);
        let adopt = self.adopt_planned(take, skip, false)?;
        Ok(RebuildReport {
            dry_run,
            backup: backup.map(|p| p.display().to_string()),
            restored,
            generation: mirror.generation,
            skipped: skipped_rows,
            adopt,
            replicas: None,
            reloads: None,
        })
    }
}
