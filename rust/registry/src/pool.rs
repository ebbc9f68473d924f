//! One registry for the whole pool (SPEC §9): the mirror in XAPI's database, the replica on
//! every other host, and the master's primary that follows the mirror across a change of master.
//!
//! XAPI's database is replicated to every host and survives the master, so it carries a copy of
//! every registry row (`other_config` of the VM, the pool rows and a generation on the pool
//! object). The master's SQLite file stays the place where writes are serialised; every change
//! writes the mirror before it commits, and the generation tells any registry file whether it is
//! behind. See `docs/decisions/0009-xapi-database-as-replicated-store.md`.

use crate::error::{Error, Result};
use crate::model::{Pool, Priority};
use crate::report::{HostReplica, RefreshReport, ReplicaStatus};
use crate::store::{JsonMap, Meta, Role, Store, WriteTx};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use xapi::{Class, HostRecord, PluginCall, PoolRecord, VmRecord, Xapi, XapiError};

/// `VM.other_config` key holding the VM's registry row as compact JSON.
pub const VM_KEY: &str = "vgpu-registry";
/// `VM.other_config` key Xen Orchestra shows as the custom field "vgpu".
pub const FIELD_KEY: &str = "XenCenter.CustomFields.vgpu";
/// `pool.other_config` key holding the pools table as a JSON array.
pub const POOLS_KEY: &str = "vgpu-registry:pools";
/// `pool.other_config` key: the mirror's generation, bumped by every change. The same key on a
/// host's `other_config` records the generation its replica holds.
pub const GENERATION_KEY: &str = "vgpu-registry:generation";
/// `pool.other_config` key: the generation of the last change and the VMs it touched, so a
/// replica one generation behind reads those VMs instead of the whole pool.
pub const LAST_CHANGE_KEY: &str = "vgpu-registry:last-change";

/// What [`LAST_CHANGE_KEY`] holds; `vms: None` when the change touched every VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct LastChange {
    generation: u64,
    vms: Option<Vec<String>>,
}

/// `pool.other_config` key prefix: `<prefix><generation>` is added (never overwritten: xapi refuses
/// an existing key) by the one writer that publishes that generation, so two hosts that both
/// believe they are master for an instant cannot both publish it.
pub const CLAIM_PREFIX: &str = "vgpu-registry:claim:";

/// The writer of a registry that does not know its host: several may exist, none is this one.
const OFF_POOL: &str = "off-pool";

/// A claim older than this was left by a writer that died mid-change: it may be taken over.
const STALE_CLAIM_S: u64 = 300;

/// Past this many VMs a replica reads the whole pool rather than each VM (two calls each).
const DELTA_MAX_VMS: usize = 64;

/// The generation the pool's mirror is at; `None` when nothing was ever published.
pub fn pool_generation(pool: &PoolRecord) -> Option<u64> {
    pool.other_config
        .get(GENERATION_KEY)
        .and_then(|g| g.trim().parse().ok())
}

/// xapi has no single-key set, so a writer killed between removing the generation and adding
/// its new value leaves the pool with none. The last change's record, written just before, then
/// names the generation one past this registry's, and every other write of that change was done:
/// that generation stands, so that the next writer neither starts again from generation 1 (which
/// every replica ahead of it would ignore) nor loses the change. A registry from before the
/// mirror has no such record.
fn interrupted_generation(pool: &PoolRecord, meta: &Meta) -> Option<u64> {
    if pool.other_config.contains_key(GENERATION_KEY) {
        return None;
    }
    let last: LastChange = serde_json::from_str(pool.other_config.get(LAST_CHANGE_KEY)?).ok()?;
    (last.generation == meta.generation.unwrap_or(0) + 1).then_some(last.generation)
}

/// The custom field's text: `pool A, high, vm_id 7`.
pub fn custom_field(row: &JsonMap) -> String {
    let text = |k: &str| match row.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "?".into(),
        Some(other) => other.to_string(),
    };
    format!(
        "pool {}, {}, vm_id {}",
        text("pool"),
        text("priority"),
        text("vm_id")
    )
}

/// The row's mirror value: compact JSON, keys sorted (serde_json's map keeps them sorted).
pub fn row_text(row: &JsonMap) -> String {
    Value::Object(row.clone()).to_string()
}

/// Whether a VM's mirror keys say what `row` says (`None`: the VM should carry no mirror).
pub fn mirror_state(vm: &VmRecord, row: Option<&JsonMap>) -> MirrorState {
    let have = vm.other_config.get(VM_KEY);
    match (row, have) {
        (None, None) => MirrorState::Ok,
        (None, Some(_)) => MirrorState::Stale,
        (Some(_), None) => MirrorState::Missing,
        (Some(row), Some(text)) => {
            let same_row = serde_json::from_str::<JsonMap>(text)
                .map(|m| &m == row)
                .unwrap_or(false);
            let same_field = vm.other_config.get(FIELD_KEY) == Some(&custom_field(row));
            if same_row && same_field {
                MirrorState::Ok
            } else {
                MirrorState::Stale
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorState {
    Ok,
    Missing,
    Stale,
}

impl MirrorState {
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorState::Ok => "ok",
            MirrorState::Missing => "missing",
            MirrorState::Stale => "stale",
        }
    }
}

/// The registry as XAPI's copy holds it.
#[derive(Debug, Default)]
pub struct Mirror {
    pub generation: Option<u64>,
    /// (lower-case uuid, row), sorted by uuid.
    pub rows: Vec<(String, JsonMap)>,
    pub pools: Option<Vec<JsonMap>>,
    /// VMs whose mirror value is not a registry row: (uuid, why).
    pub unreadable: Vec<(String, String)>,
}

/// Reads the mirror out of the pool record and the VM records (one `VM.get_all_records_where`).
pub fn read_mirror(pool: &PoolRecord, vms: &[VmRecord]) -> Mirror {
    let mut m = Mirror {
        generation: pool_generation(pool),
        pools: pool
            .other_config
            .get(POOLS_KEY)
            .and_then(|t| serde_json::from_str(t).ok()),
        ..Mirror::default()
    };
    for vm in vms {
        let Some(text) = vm.other_config.get(VM_KEY) else {
            continue;
        };
        match parse_row(text, &vm.uuid) {
            Ok(row) => m.rows.push((vm.uuid.to_ascii_lowercase(), row)),
            Err(RowError::Copied(_)) => {}
            Err(RowError::Invalid(why)) => m.unreadable.push((vm.uuid.clone(), why)),
        }
    }
    m.rows.sort_by(|a, b| a.0.cmp(&b.0));
    // Two copies claiming one vm_id (two masters at once): neither is taken, both reported.
    let mut claims: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (uuid, row) in &m.rows {
        if let Some(id) = row.get("vm_id").and_then(Value::as_i64) {
            claims.entry(id).or_default().push(uuid.clone());
        }
    }
    m.rows.retain(|(uuid, row)| {
        let id = row.get("vm_id").and_then(Value::as_i64).unwrap_or(0);
        let owners = &claims[&id];
        if owners.len() > 1 {
            m.unreadable.push((
                uuid.clone(),
                format!(
                    "vm_id {id} is claimed by the copies of several VMs: {}",
                    owners.join(", ")
                ),
            ));
            false
        } else {
            true
        }
    });
    m
}

/// Why a VM's `vgpu-registry` value is not its registry row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowError {
    /// The value names another VM: a copy the VM inherited (`VM.clone`, a copy of a template).
    Copied(String),
    Invalid(String),
}

/// A mirror value, checked the way the registry checks its own columns, and naming `vm_uuid`.
pub fn parse_row(text: &str, vm_uuid: &str) -> std::result::Result<JsonMap, RowError> {
    let invalid = |s: String| RowError::Invalid(s);
    let row: JsonMap =
        serde_json::from_str(text).map_err(|e| invalid(format!("not a JSON object ({e})")))?;
    match row.get("vm_uuid").and_then(Value::as_str) {
        Some(u) if u.eq_ignore_ascii_case(vm_uuid) => {}
        Some(u) => return Err(RowError::Copied(u.to_string())),
        None => return Err(invalid("it names no vm_uuid".into())),
    }
    let pool = row.get("pool").and_then(Value::as_str).unwrap_or("");
    Pool::parse(pool).map_err(|_| invalid(format!("pool {pool:?} is not A or B")))?;
    let priority = row.get("priority").and_then(Value::as_str).unwrap_or("");
    Priority::parse(priority)
        .map_err(|_| invalid(format!("priority {priority:?} is not a priority")))?;
    if row.get("vm_id").and_then(Value::as_i64).is_none() {
        return Err(invalid("vm_id is not an integer".into()));
    }
    Ok(row)
}

/// Whether an unregistered VM carries registry keys: a row (its own or a clone's) or our
/// custom field. A custom field that is not in our form was typed by someone and stays.
pub fn leftover_mirror(vm: &VmRecord) -> bool {
    vm.other_config.contains_key(VM_KEY)
        || vm
            .other_config
            .get(FIELD_KEY)
            .is_some_and(|f| f.starts_with("pool ") && f.contains(", vm_id "))
}

/// Whether the pool object's keys disagree with a registry at generation `local`: no or
/// another generation, or a claim on a later one.
pub fn pool_mirror_off(pool: &PoolRecord, local: Option<u64>) -> bool {
    let generation = pool_generation(pool);
    generation != local
        || pool.other_config.keys().any(|k| {
            k.strip_prefix(CLAIM_PREFIX)
                .and_then(|g| g.parse::<u64>().ok())
                .is_some_and(|g| g > generation.unwrap_or(0))
        })
}

/// What a VM that is not registered carries in its `vgpu-registry` key, if anything: `orphan`
/// (its own row, which the registry lacks) or `copied` (another VM's row, inherited by a clone).
pub fn unregistered_copy(vm: &VmRecord) -> Option<&'static str> {
    let text = vm.other_config.get(VM_KEY)?;
    Some(match parse_row(text, &vm.uuid) {
        Err(RowError::Copied(_)) => "copied",
        _ => "orphan",
    })
}

// ---------------------------------------------------------------------------------------------
// Writing the mirror: every write can be undone, and a failed change undoes them all.

/// The XAPI map writes of one change, in order, so they can be undone in reverse.
pub struct Journal<'a> {
    xapi: &'a dyn Xapi,
    done: Vec<(Class, String, String, Option<String>)>,
}

impl<'a> Journal<'a> {
    pub fn new(xapi: &'a dyn Xapi) -> Journal<'a> {
        Journal {
            xapi,
            done: Vec::new(),
        }
    }

    /// Sets `key` of `obj`'s other_config from `old` to `new` (`None`: absent). xapi has no
    /// single-key set: remove, then add; a key believed absent is added straight away, and only
    /// removed first when xapi says it exists after all. Nothing is called when the value is
    /// already right.
    pub fn set(
        &mut self,
        class: Class,
        obj: &str,
        key: &str,
        old: Option<&str>,
        new: Option<&str>,
    ) -> std::result::Result<(), XapiError> {
        if old == new {
            return Ok(());
        }
        // Recorded first: a remove that fails after xapi applied it is still undone.
        self.done.push((
            class,
            obj.to_string(),
            key.to_string(),
            old.map(str::to_string),
        ));
        if let (None, Some(v)) = (old, new) {
            // `old` was read before the write lock was taken: the key may have come since, and
            // an add over a key that exists fails (MAP_DUPLICATE_KEY), changing nothing.
            match self.xapi.add_to_other_config(class, obj, key, v) {
                Err(e) if e.api_code() == Some("MAP_DUPLICATE_KEY") => {}
                other => return other,
            }
        }
        self.xapi.remove_from_other_config(class, obj, key)?;
        if let Some(v) = new {
            self.xapi.add_to_other_config(class, obj, key, v)?;
        }
        Ok(())
    }

    /// Records a write made outside [`Journal::set`], so that it is undone too.
    pub fn record(&mut self, class: Class, obj: &str, key: &str, old: Option<&str>) {
        self.done.push((
            class,
            obj.to_string(),
            key.to_string(),
            old.map(str::to_string),
        ));
    }

    /// Puts every value back, newest first; the first failure is returned, the rest still tried.
    pub fn undo(self) -> std::result::Result<(), XapiError> {
        let mut first = None;
        for (class, obj, key, old) in self.done.into_iter().rev() {
            let r = self
                .xapi
                .remove_from_other_config(class, &obj, &key)
                .and_then(|()| match &old {
                    Some(v) => self.xapi.add_to_other_config(class, &obj, &key, v),
                    None => Ok(()),
                });
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// A VM whose mirror a change may rewrite: its ref and the other_config it had.
#[derive(Debug, Clone)]
pub struct Touched {
    pub vm_ref: String,
    pub vm_uuid: String,
    pub other_config: BTreeMap<String, String>,
}

impl Touched {
    pub fn of(vm: &VmRecord) -> Touched {
        Touched {
            vm_ref: vm.opaque_ref.clone(),
            vm_uuid: vm.uuid.clone(),
            other_config: vm.other_config.clone(),
        }
    }
}

/// The pool as a write found it, after [`take_primary`].
#[derive(Debug)]
pub struct Primary {
    pool: PoolRecord,
    generation: Option<u64>,
    /// Who claims the generations this write publishes (this host's uuid, or `off-pool`).
    writer: String,
    /// The registry was rebuilt from the mirror (it was behind, or a replica).
    pub rebuilt: bool,
}

impl Primary {
    /// The pool record as the write found it.
    pub fn pool_record(&self) -> &PoolRecord {
        &self.pool
    }
}

/// The master's host has changed since this command was routed: it must be forwarded.
pub fn no_longer_master(pool: &PoolRecord) -> Error {
    Error::NoLongerMaster {
        master_ref: pool.master.clone(),
    }
}

/// Inside a write transaction: checks that this host (`my_ref`, when known) is still the
/// master, and brings the registry to the pool's generation, rebuilding it from the mirror when
/// it is behind or a replica. A registry of before the mirror is the pool's until something is
/// published, so it is never replaced while the pool has no generation.
pub fn take_primary(xapi: &dyn Xapi, tx: &WriteTx<'_>, me: Option<&HostRecord>) -> Result<Primary> {
    let my_ref = me.map(|h| h.opaque_ref.as_str());
    let pool = xapi
        .pool()
        .map_err(|e| Error::xapi("reading the pool's registry generation", e))?;
    if my_ref.is_some_and(|me| me != pool.master) {
        return Err(no_longer_master(&pool));
    }
    let meta = tx.meta()?;
    let generation = pool_generation(&pool).or_else(|| interrupted_generation(&pool, &meta));
    if let (None, Some(g)) = (pool.other_config.get(GENERATION_KEY), generation) {
        // A writer died before it put the generation back.
        Journal::new(xapi)
            .set(
                Class::Pool,
                &pool.opaque_ref,
                GENERATION_KEY,
                None,
                Some(&g.to_string()),
            )
            .map_err(|e| Error::xapi("restoring the pool's registry generation", e))?;
    }
    let rebuilt = match (meta, generation) {
        (_, None) => false,
        (
            Meta {
                role: Some(role),
                generation: Some(local),
            },
            Some(g),
        ) if local == g => {
            if role == Role::Replica {
                // Built from this very generation: promoting it changes no row.
                tx.set_meta(Role::Primary, g)?;
            }
            false
        }
        (meta, Some(g)) => {
            if meta.role != Some(Role::Replica) && !tx.rows_json()?.is_empty() {
                // A primary that is not at the pool's generation holds nothing the mirror lacks
                // (every change is mirrored before it commits), but keep it anyway.
                tx.backup_as("pre-failover")?;
            }
            let vms = xapi
                .list_vms()
                .map_err(|e| Error::xapi("reading the registry's copy in XAPI", e))?;
            let mirror = read_mirror(&pool, &vms);
            if let Some((uuid, why)) = mirror.unreadable.first() {
                // Rebuilding without those rows would lose registrations without a word.
                return Err(Error::MirrorConflict {
                    vm_uuid: uuid.clone(),
                    reason: why.clone(),
                    count: mirror.unreadable.len(),
                });
            }
            let refused = tx.replace_all(&mirror.rows, mirror.pools.as_deref())?;
            if let Some((uuid, why)) = refused.into_iter().next() {
                return Err(Error::MirrorConflict {
                    vm_uuid: uuid,
                    reason: why,
                    count: 1,
                });
            }
            tx.set_meta(Role::Primary, g)?;
            true
        }
    };
    // This host's record was read when the command started; the check above is what must be
    // fresh (the pool's master), not the host's own uuid.
    let writer = match me {
        Some(h) => h.uuid.clone(),
        None => OFF_POOL.to_string(),
    };
    Ok(Primary {
        pool,
        generation,
        writer,
        rebuilt,
    })
}

/// Writes the mirror of the VMs `touched` (every VM, the first time anything is published),
/// bumps the pool's generation, and commits `tx`; all or nothing. Returns the new generation.
/// `device_type`: the vgpu device this registry writes (for [`Publication::start`]'s repairs).
pub fn publish_and_commit(
    xapi: &dyn Xapi,
    tx: WriteTx<'_>,
    primary: &Primary,
    touched: &[Touched],
    device_type: &str,
) -> Result<u64> {
    Publication::start(xapi, &tx, primary, touched, &[], device_type)?.finish(tx, primary)
}

/// A change's publication, begun: its generation claimed before anything else of the change is
/// written in XAPI, so that a writer killed midway leaves that claim behind, naming the VMs it
/// was registering (see [`Claim`]). Finished by [`Publication::finish`], or given up by
/// [`Publication::abandon`] when the change fails before its commit.
pub struct Publication<'a> {
    journal: Journal<'a>,
    next: u64,
    touched: Vec<Touched>,
    /// VMs whose interrupted registration this change rolled back.
    pub rolled_back: Vec<String>,
}

impl<'a> Publication<'a> {
    /// Claims the next generation for this writer, naming `registers`: the VMs this change
    /// registers and gives a device they did not have. A claim that a killed writer left is
    /// taken over (see [`claim`]); the registrations it was making never committed, so the
    /// device and mirror keys it may have written on those VMs are taken off here
    /// ([`roll_back_register`]) and this change publishes them. Nothing is left claimed when
    /// this fails.
    pub fn start(
        xapi: &'a dyn Xapi,
        tx: &WriteTx<'_>,
        primary: &Primary,
        touched: &[Touched],
        registers: &[&str],
        device_type: &str,
    ) -> Result<Publication<'a>> {
        let mut publication = Publication {
            journal: Journal::new(xapi),
            next: 0,
            touched: touched.to_vec(),
            rolled_back: Vec::new(),
        };
        match publication.claim_and_repair(tx, primary, registers, device_type) {
            Ok(()) => Ok(publication),
            Err(e) => Err(publication.undo_after(e)),
        }
    }

    fn claim_and_repair(
        &mut self,
        tx: &WriteTx<'_>,
        primary: &Primary,
        registers: &[&str],
        device_type: &str,
    ) -> Result<()> {
        let local = tx.meta()?.generation;
        self.next = match primary.generation {
            Some(g) => g + 1,
            // Never published, or the pool's generation key went missing (a remove that xapi
            // carried out after its answer was lost): generations only grow, so that no replica
            // or claim of before is taken for the new one.
            None => {
                let claimed = claims(&primary.pool).map(|(g, _)| g).max();
                local.unwrap_or(0).max(claimed.unwrap_or(0)) + 1
            }
        };
        let held = claim(&mut self.journal, primary, self.next, registers)?;
        // Claims past the registry's generation were left by writers that never committed.
        let base = primary.generation.or(local).unwrap_or(0);
        let mut interrupted: Vec<String> = claims(&primary.pool)
            .filter(|(g, _)| *g > base && *g < self.next)
            .flat_map(|(_, c)| c.registers)
            .chain(held.into_iter().flat_map(|c| c.registers))
            .collect();
        interrupted.sort();
        interrupted.dedup();
        for uuid in interrupted {
            let known = |t: &Touched| t.vm_uuid.eq_ignore_ascii_case(&uuid);
            if self.touched.iter().any(known) || tx.get(&uuid)?.is_some() {
                // This change writes that VM itself, or it was registered since.
                continue;
            }
            let xapi = self.journal.xapi;
            if let Some(vm) = roll_back_register(xapi, &uuid, device_type)? {
                self.touched.push(Touched::of(&vm));
                self.rolled_back.push(vm.uuid);
            }
        }
        Ok(())
    }

    /// Writes the rest of the mirror, bumps the pool's generation and commits `tx`; all or
    /// nothing (the claim included). Returns the new generation.
    pub fn finish(mut self, tx: WriteTx<'_>, primary: &Primary) -> Result<u64> {
        let next = self.next;
        let outcome =
            publish(&mut self.journal, &tx, primary, &self.touched, next).and_then(|()| {
                tx.set_meta(Role::Primary, next)?;
                tx.commit()
            });
        match outcome {
            Ok(()) => Ok(next),
            Err(e) => Err(self.undo_after(e)),
        }
    }

    /// Gives the publication up after `failure` (the change failed before its commit): the claim
    /// and whatever else it wrote are undone. Returns the error to report.
    pub fn abandon(self, failure: Error) -> Error {
        self.undo_after(failure)
    }

    fn undo_after(self, e: Error) -> Error {
        match self.journal.undo() {
            Ok(()) => e,
            Err(restore) => Error::MirrorUnrestored {
                source: Box::new(e),
                restore,
            },
        }
    }
}

/// A claim's value: `<writer> <time>`, or `<writer> <uuid,uuid…> <time>` when the change
/// registers VMs. Readers of before took the first word as the writer and the last as the time,
/// which both forms keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub writer: String,
    pub since: u64,
    /// The VMs the claiming change registers (lower-case uuids).
    pub registers: Vec<String>,
}

impl Claim {
    pub fn parse(text: &str) -> Claim {
        let words: Vec<&str> = text.split_whitespace().collect();
        Claim {
            writer: words.first().copied().unwrap_or("").to_string(),
            since: words
                .last()
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0),
            registers: match words.as_slice() {
                [_, vms, _] => vms
                    .split(',')
                    .filter(|u| !u.is_empty())
                    .map(str::to_ascii_lowercase)
                    .collect(),
                _ => Vec::new(),
            },
        }
    }

    fn text(writer: &str, registers: &[&str], since: u64) -> String {
        if registers.is_empty() {
            format!("{writer} {since}")
        } else {
            let vms: Vec<String> = registers.iter().map(|u| u.to_ascii_lowercase()).collect();
            format!("{writer} {} {since}", vms.join(","))
        }
    }
}

/// Every claim on the pool object: (generation, claim).
fn claims(pool: &PoolRecord) -> impl Iterator<Item = (u64, Claim)> + '_ {
    pool.other_config.iter().filter_map(|(k, v)| {
        let g = k.strip_prefix(CLAIM_PREFIX)?.parse::<u64>().ok()?;
        Some((g, Claim::parse(v)))
    })
}

/// The VMs whose registration a killed writer left half-done: those named by claims past the
/// pool's generation (`local` when the pool has none). Their device and mirror keys, if
/// written, are taken off by the next change that publishes (`sync --all` makes one).
pub fn interrupted_registers(pool: &PoolRecord, local: Option<u64>) -> Vec<String> {
    let base = pool_generation(pool).or(local).unwrap_or(0);
    let mut vms: Vec<String> = claims(pool)
        .filter(|(g, _)| *g > base)
        .flat_map(|(_, c)| c.registers)
        .collect();
    vms.sort();
    vms.dedup();
    vms
}

/// Takes the vgpu device of `device_type` off an unregistered VM whose registration was
/// interrupted, keeping every other token of its device-model-args (the map is read just
/// before, and written in one call, as [`crate::ops`] writes it). The register that wrote the
/// device only does so on a VM that had none of its own, so this puts the VM back as it was.
/// Returns the VM as it was read (its mirror keys go with the change that publishes), or
/// `None` when it no longer exists.
fn roll_back_register(xapi: &dyn Xapi, uuid: &str, device_type: &str) -> Result<Option<VmRecord>> {
    let what = || format!("rolling back the interrupted registration of VM {uuid}");
    let Some(vm) = xapi.vm_by_uuid(uuid).map_err(|e| Error::xapi(what(), e))? else {
        return Ok(None);
    };
    let platform = xapi
        .get_platform(&vm.opaque_ref)
        .map_err(|e| Error::xapi(what(), e))?;
    let old = platform.get(crate::dma::PLATFORM_KEY);
    // A value that does not parse was not written by us: it stays, as scan-vms shows it.
    let new = old.and_then(|text| {
        let mut args = crate::dma::DeviceArgs::parse(text).ok()?;
        if !args.remove_vgpu(device_type) {
            return None;
        }
        Some((!args.is_empty()).then(|| args.render()))
    });
    if let Some(new) = new {
        let mut map = platform.clone();
        match new {
            Some(v) => map.insert(crate::dma::PLATFORM_KEY.to_string(), v),
            None => map.remove(crate::dma::PLATFORM_KEY),
        };
        xapi.set_platform(&vm.opaque_ref, &map)
            .map_err(|e| Error::xapi(what(), e))?;
    }
    Ok(Some(vm))
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Claims generation `next` for this writer (see [`CLAIM_PREFIX`]), naming the VMs the change
/// `registers`, and drops older claims. Returns the claim it took over, if any.
fn claim(
    journal: &mut Journal<'_>,
    primary: &Primary,
    next: u64,
    registers: &[&str],
) -> Result<Option<Claim>> {
    let xapi = journal.xapi;
    let writer = primary.writer.as_str();
    let pool_ref = primary.pool.opaque_ref.as_str();
    let key = format!("{CLAIM_PREFIX}{next}");
    let value = Claim::text(writer, registers, now_s());
    // The claim is the change's first write: when it fails, nothing else was written.
    let err = |e: XapiError| {
        let remains = if e.outcome_unknown() {
            "; nothing was changed, but xapi may still carry out the claim whose answer was \
             lost: `vgpu-admin sync --all` clears it"
        } else {
            "; nothing was changed"
        };
        Error::xapi(
            format!(
                "writing the registry's copy in XAPI (claiming generation {next}) failed{remains}"
            ),
            e,
        )
    };
    let mut taken_over = None;
    match xapi.add_to_other_config(Class::Pool, pool_ref, &key, &value) {
        Ok(()) => journal.record(Class::Pool, pool_ref, &key, None),
        Err(e) if e.outcome_unknown() => {
            // The claim may be in place: undone with the rest, else it would hold the next
            // generation against every writer until it grows stale.
            journal.record(Class::Pool, pool_ref, &key, None);
            return Err(err(e));
        }
        Err(e) if e.api_code() == Some("MAP_DUPLICATE_KEY") => {
            let pool = xapi.pool().map_err(err)?;
            let held = pool.other_config.get(&key).cloned().unwrap_or_default();
            let found = Claim::parse(&held);
            // Writers on one host take the registry's write lock first, so a claim of this
            // host's that is still there was left by an attempt that failed before undoing it.
            let own = found.writer == writer && writer != OFF_POOL;
            if !own && now_s().saturating_sub(found.since) < STALE_CLAIM_S {
                return Err(Error::GenerationClaimed {
                    generation: next,
                    by: found.writer,
                });
            }
            journal
                .set(Class::Pool, pool_ref, &key, Some(&held), Some(&value))
                .map_err(err)?;
            taken_over = Some(found);
        }
        Err(e) => return Err(err(e)),
    }
    let old: Vec<(String, String)> = primary
        .pool
        .other_config
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(CLAIM_PREFIX)
                .and_then(|g| g.parse::<u64>().ok())
                .is_some_and(|g| g < next)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in old {
        journal
            .set(Class::Pool, pool_ref, &k, Some(&v), None)
            .map_err(err)?;
    }
    Ok(taken_over)
}

fn publish(
    journal: &mut Journal<'_>,
    tx: &WriteTx<'_>,
    primary: &Primary,
    touched: &[Touched],
    next: u64,
) -> Result<()> {
    let xapi = journal.xapi;
    let step = |what: String| {
        move |e| Error::xapi(format!("writing the registry's copy in XAPI ({what})"), e)
    };
    let all;
    let touched: &[Touched] = if primary.generation.is_none() {
        // First publication: every VM gets its row, so the mirror is whole from generation 1.
        all = xapi
            .list_vms()
            .map_err(|e| Error::xapi("listing the pool's VMs to publish the registry", e))?
            .iter()
            .map(Touched::of)
            .collect::<Vec<_>>();
        &all
    } else {
        touched
    };
    let rows = if primary.generation.is_none() || touched.len() > 1 {
        Some(tx.rows_json()?)
    } else {
        None
    };
    for t in touched {
        let row = match &rows {
            Some(rows) => rows.get(&t.vm_uuid.to_ascii_lowercase()).cloned(),
            None => tx.row_json(&t.vm_uuid)?,
        };
        let (text, field) = match &row {
            Some(r) => (Some(row_text(r)), Some(custom_field(r))),
            None => (None, None),
        };
        let old_text = t.other_config.get(VM_KEY).map(String::as_str);
        // An unchanged row keeps its value as it is, even if written in another key order.
        let same = match (old_text, &row) {
            (Some(o), Some(r)) => serde_json::from_str::<JsonMap>(o).ok().as_ref() == Some(r),
            _ => false,
        };
        if !same {
            journal
                .set(Class::Vm, &t.vm_ref, VM_KEY, old_text, text.as_deref())
                .map_err(step(format!("other_config of VM {}", t.vm_uuid)))?;
        }
        journal
            .set(
                Class::Vm,
                &t.vm_ref,
                FIELD_KEY,
                t.other_config.get(FIELD_KEY).map(String::as_str),
                field.as_deref(),
            )
            .map_err(step(format!("custom field of VM {}", t.vm_uuid)))?;
    }
    let pools = Value::Array(tx.pools_json()?.into_iter().map(Value::Object).collect());
    let pools_text = pools.to_string();
    let old_pools = primary.pool.other_config.get(POOLS_KEY).map(String::as_str);
    let same_pools =
        old_pools.and_then(|t| serde_json::from_str::<Value>(t).ok()) == Some(pools.clone());
    if !same_pools {
        journal
            .set(
                Class::Pool,
                &primary.pool.opaque_ref,
                POOLS_KEY,
                old_pools,
                Some(&pools_text),
            )
            .map_err(step("the pool rows".into()))?;
    }
    let last = LastChange {
        generation: next,
        vms: (primary.generation.is_some() && touched.len() <= DELTA_MAX_VMS).then(|| {
            touched
                .iter()
                .map(|t| t.vm_uuid.to_ascii_lowercase())
                .collect()
        }),
    };
    let last_text = serde_json::to_string(&last).unwrap_or_default();
    journal
        .set(
            Class::Pool,
            &primary.pool.opaque_ref,
            LAST_CHANGE_KEY,
            primary
                .pool
                .other_config
                .get(LAST_CHANGE_KEY)
                .map(String::as_str),
            Some(&last_text),
        )
        .map_err(step("the pool's last change".into()))?;
    let old_gen = primary.pool.other_config.get(GENERATION_KEY).cloned();
    journal
        .set(
            Class::Pool,
            &primary.pool.opaque_ref,
            GENERATION_KEY,
            old_gen.as_deref(),
            Some(&next.to_string()),
        )
        .map_err(step("the pool's generation".into()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Replicas

/// Brings this host's registry file up to the mirror: a replica on a member (rewritten in place
/// in one transaction, so a mediator's open connection sees the new rows), the primary on the
/// master. `open` opens the file for writing; it is called only once the mirror has been read
/// and there is something to write, so nothing is created, migrated or changed when the mirror
/// cannot be read or was never published. `path` is the file, peeked at before.
pub fn refresh_here(
    xapi: &dyn Xapi,
    path: &std::path::Path,
    open: &mut dyn FnMut() -> Result<Store>,
    me: &xapi::HostRecord,
) -> Result<RefreshReport> {
    let pool = xapi
        .pool()
        .map_err(|e| Error::xapi("reading the pool's registry generation", e))?;
    let (before, rows_before) = Store::peek(path)?;
    let mut report = RefreshReport {
        host: me.uuid.clone(),
        name: me.name_label.clone(),
        role: Role::Replica.as_str().into(),
        generation: pool_generation(&pool),
        previous_generation: before.generation,
        changed: false,
        vms: 0,
        skipped: Vec::new(),
        reload: None,
        warnings: Vec::new(),
    };
    if pool.master == me.opaque_ref {
        report.role = Role::Primary.as_str().into();
        let mut store = open()?;
        let tx = store.write()?;
        let primary = take_primary(xapi, &tx, Some(me))?;
        report.changed = primary.rebuilt || before.role != Some(Role::Primary);
        report.vms = tx.rows_json()?.len();
        tx.commit()?;
        return Ok(report);
    }
    if report.generation.is_none() {
        // Nothing was ever published: the file may be an older tool's or the mediator's own,
        // and an empty copy must not replace it.
        report.vms = rows_before;
        report.warnings.push(
            "the pool has no registry copy in XAPI yet (nothing has been changed through \
             vgpu-registry on the pool master): this host's file is left as it is"
                .into(),
        );
        return Ok(report);
    }
    let current = before.role == Some(Role::Replica)
        && before.generation.is_some()
        && before.generation == report.generation;
    if current {
        report.vms = rows_before;
    } else if let Some(n) = refresh_delta(xapi, open, &pool, before)? {
        report.changed = true;
        report.vms = n;
    } else {
        let vms = xapi
            .list_vms()
            .map_err(|e| Error::xapi("reading the registry's copy in XAPI", e))?;
        let mirror = read_mirror(&pool, &vms);
        let mut store = open()?;
        let tx = store.write()?;
        let now = tx.meta()?;
        if now.generation.is_some() && now.generation >= mirror.generation {
            // A refresh that read a newer mirror finished first (two changes' fan-outs
            // overlapped), or this file is a primary that is not behind: never go back.
            report.generation = now.generation;
            report.vms = tx.rows_json()?.len();
            return Ok(report);
        }
        let refused = tx.replace_all(&mirror.rows, mirror.pools.as_deref())?;
        tx.set_meta(Role::Replica, mirror.generation.unwrap_or(0))?;
        tx.commit()?;
        store.checkpoint();
        report.changed = true;
        report.vms = mirror.rows.len() - refused.len();
        report.skipped = mirror
            .unreadable
            .into_iter()
            .chain(refused)
            .map(|(vm_uuid, reason)| crate::report::Skipped {
                vm_uuid,
                vm_name: None,
                reason,
                device_model_args: None,
            })
            .collect();
    }
    let held = report.generation.unwrap_or(0).to_string();
    if me.other_config.get(GENERATION_KEY) != Some(&held) {
        // The replica is refreshed either way; only `status`'s view of it would be stale.
        if let Err(e) = Journal::new(xapi).set(
            Class::Host,
            &me.opaque_ref,
            GENERATION_KEY,
            me.other_config.get(GENERATION_KEY).map(String::as_str),
            Some(&held),
        ) {
            report.warnings.push(format!(
                "the replica is at generation {held}, but recording that on the host failed: {e}"
            ));
        }
    }
    Ok(report)
}

/// A replica exactly one generation behind reads only the VMs of the last change (two calls
/// each) instead of the whole pool. `None` when it cannot (further behind, a change of every
/// VM, a row the registry refuses): the caller then reads everything.
fn refresh_delta(
    xapi: &dyn Xapi,
    open: &mut dyn FnMut() -> Result<Store>,
    pool: &PoolRecord,
    before: Meta,
) -> Result<Option<usize>> {
    let Some(g) = pool_generation(pool) else {
        return Ok(None);
    };
    let last: Option<LastChange> = pool
        .other_config
        .get(LAST_CHANGE_KEY)
        .and_then(|t| serde_json::from_str(t).ok());
    let Some(LastChange {
        generation,
        vms: Some(vms),
    }) = last
    else {
        return Ok(None);
    };
    if generation != g
        || before.role != Some(Role::Replica)
        || before.generation != Some(g.saturating_sub(1))
    {
        return Ok(None);
    }
    let mut rows = Vec::new();
    for uuid in vms {
        let vm = xapi
            .vm_by_uuid(&uuid)
            .map_err(|e| Error::xapi("reading the registry's copy in XAPI", e))?;
        let row = match vm.as_ref().and_then(|v| v.other_config.get(VM_KEY)) {
            Some(text) => match parse_row(text, &uuid) {
                Ok(r) => Some(r),
                Err(_) => return Ok(None),
            },
            None => None,
        };
        rows.push((uuid, row));
    }
    let pools: Option<Vec<JsonMap>> = pool
        .other_config
        .get(POOLS_KEY)
        .and_then(|t| serde_json::from_str(t).ok());
    let mut store = open()?;
    let tx = store.write()?;
    if tx.meta()? != before {
        // Another refresh got here first; start again from what it left.
        return Ok(None);
    }
    if !tx.replace_some(&rows, pools.as_deref())?.is_empty() {
        return Ok(None);
    }
    tx.set_meta(Role::Replica, g)?;
    let n = tx.rows_json()?.len();
    tx.commit()?;
    store.checkpoint();
    Ok(Some(n))
}

/// Asks every host but `except` to refresh its replica, all at once, each bounded by `timeout`.
/// A host that fails or does not answer in time is listed with `ok: false`.
pub fn refresh_others(
    xapi: &dyn Xapi,
    except: &str,
    plugin: &str,
    timeout: Duration,
    reload: bool,
) -> Vec<ReplicaStatus> {
    let hosts = match xapi.hosts() {
        Ok(h) => h,
        Err(e) => {
            return vec![ReplicaStatus {
                host: String::new(),
                name: String::new(),
                ok: false,
                generation: None,
                error: Some(format!("listing the pool's hosts failed: {e}")),
                reload: None,
            }]
        }
    };
    let targets: Vec<_> = hosts.into_iter().filter(|h| h.uuid != except).collect();
    let calls: Vec<PluginCall> = targets
        .iter()
        .map(|h| PluginCall {
            host_ref: h.opaque_ref.clone(),
            plugin: plugin.to_string(),
            function: "refresh".into(),
            args: if reload {
                BTreeMap::from([("reload".to_string(), "true".to_string())])
            } else {
                BTreeMap::new()
            },
        })
        .collect();
    let answers = xapi.call_plugins(&calls, timeout);
    targets
        .into_iter()
        .zip(answers)
        .map(|(h, answer)| {
            let (ok, generation, error, reload) = match answer {
                Ok(text) => match serde_json::from_str::<RefreshReport>(&text) {
                    // A host without a mediator has nothing to report.
                    Ok(r) => (true, r.generation, None, r.reload.filter(|a| !a.absent)),
                    Err(e) => (false, None, Some(format!("unexpected answer: {e}")), None),
                },
                Err(e) => (false, None, Some(plugin_error_text(&e)), None),
            };
            ReplicaStatus {
                host: h.uuid,
                name: h.name_label,
                ok,
                generation,
                error,
                reload,
            }
        })
        .collect()
}

/// A plugin failure as one line: the vgpu plugin's own message when it sent one.
fn plugin_error_text(e: &XapiError) -> String {
    match e {
        XapiError::Api { code, params, .. } if code.starts_with("VGPU_") => {
            format!("{code}: {}", params.first().cloned().unwrap_or_default())
        }
        other => other.to_string(),
    }
}

/// Every host and the generation its replica records, for `status`.
pub fn host_replicas(xapi: &dyn Xapi, pool: &PoolRecord) -> Result<Vec<HostReplica>> {
    let hosts = xapi
        .hosts()
        .map_err(|e| Error::xapi("listing the pool's hosts", e))?;
    let current = pool_generation(pool);
    Ok(hosts
        .into_iter()
        .map(|h| {
            let master = h.opaque_ref == pool.master;
            let generation = h
                .other_config
                .get(GENERATION_KEY)
                .and_then(|g| g.parse().ok());
            HostReplica {
                behind: match (master, current, generation) {
                    (true, _, _) => None,
                    (false, Some(c), Some(g)) => Some(c.saturating_sub(g)),
                    (false, Some(c), None) => Some(c),
                    (false, None, _) => None,
                },
                host: h.uuid,
                name: h.name_label,
                master,
                generation: if master { current } else { generation },
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> JsonMap {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn custom_field_reads_like_the_registry() {
        let r = row(json!({"pool": "A", "priority": "high", "vm_id": 7}));
        assert_eq!(custom_field(&r), "pool A, high, vm_id 7");
        assert_eq!(custom_field(&JsonMap::new()), "pool ?, ?, vm_id ?");
    }

    #[test]
    fn mirror_values_are_checked() {
        let ok = r#"{"vm_uuid":"U","pool":"A","priority":"low","vm_id":3}"#;
        assert!(parse_row(ok, "u").is_ok());
        assert_eq!(parse_row(ok, "v"), Err(RowError::Copied("U".into())));
        for (text, needle) in [
            ("[]", "not a JSON object"),
            (r#"{"pool":"A","priority":"low","vm_id":3}"#, "no vm_uuid"),
            (
                r#"{"vm_uuid":"u","pool":"C","priority":"low","vm_id":3}"#,
                "pool \"C\"",
            ),
            (
                r#"{"vm_uuid":"u","pool":"A","priority":"max","vm_id":3}"#,
                "priority",
            ),
            (
                r#"{"vm_uuid":"u","pool":"A","priority":"low","vm_id":"3"}"#,
                "vm_id",
            ),
        ] {
            match parse_row(text, "u") {
                Err(RowError::Invalid(e)) => assert!(e.contains(needle), "{text}: {e}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn mirror_state_compares_values_not_text() {
        let r = row(json!({"pool": "A", "priority": "high", "vm_id": 7}));
        let mut vm = VmRecord {
            opaque_ref: "OpaqueRef:v".into(),
            uuid: "u".into(),
            name_label: String::new(),
            power_state: "Halted".into(),
            platform: BTreeMap::new(),
            is_a_template: false,
            is_a_snapshot: false,
            is_control_domain: false,
            resident_on: xapi::NULL_REF.into(),
            other_config: BTreeMap::new(),
        };
        assert_eq!(mirror_state(&vm, Some(&r)), MirrorState::Missing);
        assert_eq!(mirror_state(&vm, None), MirrorState::Ok);
        vm.other_config.insert(
            VM_KEY.into(),
            r#"{"vm_id":7, "priority":"high","pool":"A"}"#.into(),
        );
        assert_eq!(mirror_state(&vm, Some(&r)), MirrorState::Stale, "no field");
        vm.other_config
            .insert(FIELD_KEY.into(), "pool A, high, vm_id 7".into());
        assert_eq!(mirror_state(&vm, Some(&r)), MirrorState::Ok);
        assert_eq!(mirror_state(&vm, None), MirrorState::Stale);
        let other = row(json!({"pool": "B", "priority": "high", "vm_id": 7}));
        assert_eq!(mirror_state(&vm, Some(&other)), MirrorState::Stale);
    }
}
