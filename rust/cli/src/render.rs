//! Table output for people. JSON output is the serialised outcome itself; this renders the same
//! typed values as aligned text.

use comfy_table::{presets, Table};
use registry::api::Outcome;
use registry::model::{printable, Registration};
use registry::ops::{
    Applied, Drift, ScanReport, ShowReport, StatusReport, SyncAction, SyncReport, VmStatus,
};
use registry::store::PoolInfo;
use std::fmt::Write;

const OK: &str = "✓";
const WARN: &str = "⚠";

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.to_vec());
    t
}

/// Names and device-model-args come from XAPI: never let their control characters reach the
/// terminal.
fn name(n: &Option<String>) -> String {
    n.as_deref().map(safe).unwrap_or_else(|| "-".into())
}

fn safe(s: &str) -> String {
    printable(s).into_owned()
}

fn priority(r: &Registration) -> String {
    format!("{} ({})", r.priority.as_word(), r.priority.as_int())
}

fn status_mark(s: VmStatus) -> String {
    match s {
        VmStatus::Configured => format!("{OK} configured"),
        other => format!("{WARN} {}", other.as_str()),
    }
}

fn drift_text(d: &[Drift]) -> String {
    d.iter()
        .map(|d| {
            format!(
                "{}: registry {} / device {}",
                d.field,
                safe(&d.registry),
                d.device
                    .as_deref()
                    .map(safe)
                    .unwrap_or_else(|| "(missing)".into())
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn render(outcome: &Outcome, function: &str) -> String {
    match outcome {
        Outcome::Scan(s) => scan(s),
        Outcome::Applied(a) => applied(a, function),
        Outcome::Show(s) => show(s),
        Outcome::List(l) => list(l),
        Outcome::Pools(p) => pools(p),
        Outcome::Pool(p) => {
            let mut out = pools(std::slice::from_ref(&p.pool));
            out.push('\n');
            out.push_str(&list(&p.vms));
            out
        }
        Outcome::Status(s) => status(s),
        Outcome::Sync(s) => sync(s),
    }
}

fn scan(s: &ScanReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "=== Registered VMs ({}) ===", s.registered.len());
    if !s.registered.is_empty() {
        let mut t = table(&[
            "UUID", "NAME", "POOL", "PRIORITY", "VM ID", "POWER", "STATUS",
        ]);
        for r in &s.registered {
            let reg = &r.registration;
            let mut status = status_mark(r.status);
            if !r.drift.is_empty() {
                status = format!("{status} ({})", drift_text(&r.drift));
            }
            for p in &r.problems {
                status = format!("{status}; {WARN} {p}");
            }
            t.add_row(vec![
                reg.vm_uuid.clone(),
                name(&reg.vm_name),
                reg.pool.to_string(),
                priority(reg),
                reg.vm_id.to_string(),
                r.power_state.to_lowercase(),
                status,
            ]);
        }
        let _ = writeln!(out, "{t}");
    }
    let _ = writeln!(out, "\n=== Unregistered VMs ({}) ===", s.unregistered.len());
    if !s.unregistered.is_empty() {
        let mut t = table(&["UUID", "NAME", "POWER", "STATUS"]);
        for u in &s.unregistered {
            t.add_row(vec![
                u.vm_uuid.clone(),
                safe(&u.vm_name),
                u.power_state.to_lowercase(),
                format!("{WARN} not registered"),
            ]);
        }
        let _ = writeln!(out, "{t}");
        let _ = writeln!(
            out,
            "Register one with: vgpu-admin register-vm --vm-uuid UUID --pool A|B --priority low|medium|high [--vm-id ID]"
        );
    }
    if !s.stale.is_empty() {
        let _ = writeln!(out, "\n=== Stale registrations ({}) ===", s.stale.len());
        let mut t = table(&["UUID", "NAME", "POOL", "PRIORITY", "VM ID", "STATUS"]);
        for st in &s.stale {
            let reg = &st.registration;
            t.add_row(vec![
                reg.vm_uuid.clone(),
                name(&reg.vm_name),
                reg.pool.to_string(),
                priority(reg),
                reg.vm_id.to_string(),
                format!("{WARN} VM no longer exists"),
            ]);
        }
        let _ = writeln!(out, "{t}");
        let _ = writeln!(out, "Remove one with: vgpu-admin remove-vm --vm-uuid UUID");
    }
    let m = &s.summary;
    let _ = writeln!(
        out,
        "\nSummary: {} VMs, {} registered ({} configured, {} drift, {} not applied), {} unregistered, {} stale",
        m.total_vms, m.registered, m.configured, m.drift, m.not_applied, m.unregistered, m.stale
    );
    out
}

fn applied(a: &Applied, function: &str) -> String {
    let r = &a.registration;
    let verb = match function {
        "register" => "Registered",
        "remove" => "Removed",
        _ => "Updated",
    };
    let mut out = format!(
        "{OK} {verb} VM {} ({}): pool {}, priority {}, vm_id {}\n",
        r.vm_uuid,
        name(&r.vm_name),
        r.pool,
        r.priority,
        r.vm_id
    );
    match (&a.power_state, a.removed) {
        (None, _) => {
            let _ = writeln!(
                out,
                "  the VM no longer exists: removed from the registry only"
            );
        }
        (Some(_), _) => {
            let _ = writeln!(
                out,
                "  device-model-args: {}",
                a.device_model_args
                    .as_deref()
                    .map(safe)
                    .unwrap_or_else(|| "(none)".into())
            );
        }
    }
    if a.restarted {
        let _ = writeln!(out, "  {OK} VM restarted: the change is active");
    } else if a.pending_restart {
        let _ = writeln!(
            out,
            "  {WARN} the VM is {}: the change takes effect at its next start (or use --restart)",
            a.power_state.as_deref().unwrap_or("?").to_lowercase()
        );
    }
    out
}

fn show(s: &ShowReport) -> String {
    let r = &s.registration;
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    let rows: Vec<(&str, String)> = vec![
        ("VM UUID", r.vm_uuid.clone()),
        ("Name", name(&r.vm_name)),
        ("Pool", r.pool.to_string()),
        ("Priority", priority(r)),
        ("VM ID", r.vm_id.to_string()),
        (
            "Power state",
            s.power_state
                .as_deref()
                .unwrap_or("(VM no longer exists)")
                .to_lowercase(),
        ),
        (
            "device-model-args",
            s.device_model_args
                .clone()
                .unwrap_or_else(|| "(none)".into()),
        ),
        ("Status", status_mark(s.status)),
        (
            "Created",
            r.created_at.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "Updated",
            r.updated_at.clone().unwrap_or_else(|| "-".into()),
        ),
    ];
    for (k, v) in rows {
        t.add_row(vec![format!("{k}:"), v]);
    }
    for d in &s.drift {
        t.add_row(vec![
            "Drift:".to_string(),
            drift_text(std::slice::from_ref(d)),
        ]);
    }
    for p in &s.problems {
        t.add_row(vec!["Problem:".to_string(), format!("{WARN} {p}")]);
    }
    format!("{t}\n")
}

fn list(l: &[Registration]) -> String {
    if l.is_empty() {
        return "No registered VMs.\n".into();
    }
    let mut t = table(&["UUID", "NAME", "POOL", "PRIORITY", "VM ID", "UPDATED"]);
    for r in l {
        t.add_row(vec![
            r.vm_uuid.clone(),
            name(&r.vm_name),
            r.pool.to_string(),
            priority(r),
            r.vm_id.to_string(),
            r.updated_at.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    format!("{t}\n")
}

fn pools(p: &[PoolInfo]) -> String {
    let mut t = table(&[
        "POOL",
        "NAME",
        "ENABLED",
        "VMS",
        "HIGH",
        "MEDIUM",
        "LOW",
        "DESCRIPTION",
    ]);
    for i in p {
        t.add_row(vec![
            i.pool_id.to_string(),
            i.pool_name.clone(),
            if i.enabled { "yes" } else { "no" }.to_string(),
            i.vm_count.to_string(),
            i.by_priority.high.to_string(),
            i.by_priority.medium.to_string(),
            i.by_priority.low.to_string(),
            i.description.clone().unwrap_or_default(),
        ]);
    }
    format!("{t}\n")
}

fn status(s: &StatusReport) -> String {
    let mut out = String::from("=== Pools ===\n");
    out.push_str(&pools(&s.pools));
    let m = &s.summary;
    let _ = writeln!(out, "\n=== VMs ===");
    let _ = writeln!(out, "  in the pool:   {}", m.total_vms);
    let _ = writeln!(
        out,
        "  registered:    {} ({} configured)",
        m.registered, m.configured
    );
    let _ = writeln!(out, "  unregistered:  {}", m.unregistered);
    let mark = |n: usize| if n == 0 { OK } else { WARN };
    let _ = writeln!(out, "  {} drift:       {}", mark(m.drift), m.drift);
    let _ = writeln!(
        out,
        "  {} not applied: {}",
        mark(m.not_applied),
        m.not_applied
    );
    let _ = writeln!(out, "  {} stale:       {}", mark(m.stale), m.stale);
    for (title, list) in [
        ("Drift", &s.drift),
        ("Not applied", &s.not_applied),
        ("Unregistered", &s.unregistered),
        ("Stale", &s.stale),
    ] {
        if !list.is_empty() {
            let _ = writeln!(out, "\n{title}:");
            for v in list {
                let _ = writeln!(out, "  {v}");
            }
        }
    }
    if !s.problems.is_empty() {
        let _ = writeln!(out, "\nProblems:");
        for p in &s.problems {
            for msg in &p.problems {
                let _ = writeln!(out, "  {WARN} {} ({}): {msg}", p.vm_uuid, name(&p.vm_name));
            }
        }
    }
    if m.drift + m.not_applied > 0 {
        let _ = writeln!(out, "\nRe-apply the registry with: vgpu-admin sync --all");
    }
    out
}

fn sync(s: &SyncReport) -> String {
    let mut t = table(&["UUID", "NAME", "BEFORE", "ACTION", "NOTE"]);
    for r in &s.results {
        let note = match (&r.error, r.restarted, r.pending_restart) {
            (Some(e), _, _) => e["message"].as_str().unwrap_or("failed").to_string(),
            (None, true, _) => "restarted".into(),
            (None, false, true) => "takes effect at next start".into(),
            _ => String::new(),
        };
        let action = match r.action {
            SyncAction::Unchanged => format!("{OK} unchanged"),
            SyncAction::Applied => format!("{OK} applied"),
            SyncAction::Renamed => format!("{OK} name refreshed"),
            SyncAction::WouldApply => "would apply".into(),
            SyncAction::WouldRename => "would refresh name".into(),
            SyncAction::Stale => format!("{WARN} stale"),
            SyncAction::Failed => format!("{WARN} failed"),
        };
        t.add_row(vec![
            r.vm_uuid.clone(),
            name(&r.vm_name),
            r.status_before.as_str().to_string(),
            action,
            note,
        ]);
    }
    let mut out = format!("{t}\n");
    if s.dry_run {
        out.push_str("Dry run: nothing was changed.\n");
    }
    if s.failed > 0 {
        let _ = writeln!(out, "{WARN} {} VM(s) failed", s.failed);
    }
    out
}
