//! Table output for people. JSON output is the serialised outcome itself; this renders the same
//! typed values as aligned text.
//!
//! Every string from XAPI or the registry (names, uuids the old tools stored unchecked,
//! device-model-args, messages quoting them) reaches the terminal through [`cell`] or [`line`],
//! so its control characters are shown escaped and never act as escape sequences.

use comfy_table::{presets, Table};
use registry::functions::FUNCTIONS;
use registry::model::{printable, Registration};
use registry::report::{
    Applied, Drift, PoolInfo, ScanReport, ShowReport, StatusReport, SyncAction, SyncReport,
    VmStatus,
};
use registry::{FunctionSpec, Outcome};
use std::fmt::Write;

const OK: &str = "✓";
const WARN: &str = "⚠";

/// A table whose rows go through [`Rows::row`].
struct Rows(Table);

impl Rows {
    fn new(header: &[&str]) -> Rows {
        let mut t = Table::new();
        t.load_style(presets::NOTHING);
        if !header.is_empty() {
            t.set_header(header.to_vec());
        }
        Rows(t)
    }

    fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.0.add_row(
            cells
                .into_iter()
                .map(|c| cell(c.as_ref()))
                .collect::<Vec<_>>(),
        );
    }
}

impl std::fmt::Display for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// THE escaping cell: control characters shown escaped.
fn cell(s: &str) -> String {
    printable(s).into_owned()
}

/// A line of text outside a table, escaped the same way.
fn line(out: &mut String, text: &str) {
    out.push_str(&cell(text));
    out.push('\n');
}

fn name(n: &Option<String>) -> String {
    n.clone().unwrap_or_else(|| "-".into())
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
                d.field.as_str(),
                d.registry,
                d.device.as_deref().unwrap_or("(missing)")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn render(outcome: &Outcome, function: &FunctionSpec) -> String {
    match outcome {
        Outcome::Scan(s) => scan(s),
        Outcome::Applied(a) => applied(a, function.name),
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

/// `vgpu-admin functions`: the function table.
pub fn functions() -> String {
    let mut t = Rows::new(&["FUNCTION", "COMMAND", "CHANGES", "ARGUMENTS"]);
    for f in FUNCTIONS {
        let mut args: Vec<String> = Vec::new();
        if !f.vm_keys().is_empty() {
            let vm = "vm-uuid|vm-name";
            args.push(if f.vm == registry::functions::VmArg::Required {
                vm.to_string()
            } else {
                format!("[{vm}]")
            });
        }
        args.extend(f.required.iter().map(|k| format!("{k}=")));
        args.extend(f.optional.iter().map(|k| format!("[{k}=]")));
        args.extend(f.flags.iter().map(|k| format!("[{k}]")));
        t.row([
            f.name,
            f.command,
            if f.mutating { "yes" } else { "no" },
            &args.join(" "),
        ]);
    }
    format!("{t}\n")
}

fn scan(s: &ScanReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "=== Registered VMs ({}) ===", s.registered.len());
    if !s.registered.is_empty() {
        let mut t = Rows::new(&[
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
            t.row([
                reg.vm_uuid.clone(),
                name(&reg.vm_name),
                reg.pool.to_string(),
                priority(reg),
                reg.vm_id.to_string(),
                r.power_state.to_string(),
                status,
            ]);
        }
        let _ = writeln!(out, "{t}");
    }
    let _ = writeln!(out, "\n=== Unregistered VMs ({}) ===", s.unregistered.len());
    if !s.unregistered.is_empty() {
        let mut t = Rows::new(&["UUID", "NAME", "POWER", "STATUS"]);
        for u in &s.unregistered {
            t.row([
                u.vm_uuid.clone(),
                u.vm_name.clone(),
                u.power_state.to_string(),
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
        let mut t = Rows::new(&["UUID", "NAME", "POOL", "PRIORITY", "VM ID", "STATUS"]);
        for st in &s.stale {
            let reg = &st.registration;
            t.row([
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
    let mut out = String::new();
    line(
        &mut out,
        &format!(
            "{OK} {verb} VM {} ({}): pool {}, priority {}, vm_id {}",
            r.vm_uuid,
            name(&r.vm_name),
            r.pool,
            r.priority,
            r.vm_id
        ),
    );
    match &a.power_state {
        None => line(
            &mut out,
            "  the VM no longer exists: removed from the registry only",
        ),
        Some(_) => line(
            &mut out,
            &format!(
                "  device-model-args: {}",
                a.device_model_args.as_deref().unwrap_or("(none)")
            ),
        ),
    }
    if a.restarted {
        let _ = writeln!(out, "  {OK} VM restarted: the change is active");
    } else if a.pending_restart {
        let state = a
            .power_state
            .as_ref()
            .map_or_else(|| "?".to_string(), |p| p.to_string());
        line(
            &mut out,
            &format!(
                "  {WARN} the VM is {state}: the change takes effect at its next start (or use --restart)"
            ),
        );
    }
    out
}

fn show(s: &ShowReport) -> String {
    let r = &s.registration;
    let mut t = Rows::new(&[]);
    let rows: Vec<(&str, String)> = vec![
        ("VM UUID", r.vm_uuid.clone()),
        ("Name", name(&r.vm_name)),
        ("Pool", r.pool.to_string()),
        ("Priority", priority(r)),
        ("VM ID", r.vm_id.to_string()),
        (
            "Power state",
            s.power_state
                .as_ref()
                .map_or_else(|| "(VM no longer exists)".to_string(), |p| p.to_string()),
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
        t.row([format!("{k}:"), v]);
    }
    for d in &s.drift {
        t.row(["Drift:".to_string(), drift_text(std::slice::from_ref(d))]);
    }
    for p in &s.problems {
        t.row(["Problem:".to_string(), format!("{WARN} {p}")]);
    }
    format!("{t}\n")
}

fn list(l: &[Registration]) -> String {
    if l.is_empty() {
        return "No registered VMs.\n".into();
    }
    let mut t = Rows::new(&["UUID", "NAME", "POOL", "PRIORITY", "VM ID", "UPDATED"]);
    for r in l {
        t.row([
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
    let mut t = Rows::new(&[
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
        t.row([
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
                line(&mut out, &format!("  {v}"));
            }
        }
    }
    if !s.problems.is_empty() {
        let _ = writeln!(out, "\nProblems:");
        for p in &s.problems {
            for msg in &p.problems {
                line(
                    &mut out,
                    &format!("  {WARN} {} ({}): {msg}", p.vm_uuid, name(&p.vm_name)),
                );
            }
        }
    }
    if m.drift + m.not_applied > 0 {
        let _ = writeln!(out, "\nRe-apply the registry with: vgpu-admin sync --all");
    }
    out
}

fn sync(s: &SyncReport) -> String {
    let mut t = Rows::new(&["UUID", "NAME", "BEFORE", "ACTION", "NOTE"]);
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
        t.row([
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_lines_escape_control_characters() {
        let mut t = Rows::new(&["A"]);
        t.row(["\u{1b}[2Jx\ty"]);
        let text = t.to_string();
        assert!(!text.contains('\u{1b}') && !text.contains('\t'), "{text:?}");
        assert!(text.contains("\\u{1b}[2Jx\\ty"), "{text:?}");
        let mut out = String::new();
        line(&mut out, "a\u{7}b");
        assert_eq!(out, "a\\u{7}b\n");
    }
}
