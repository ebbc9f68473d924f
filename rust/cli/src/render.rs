//! Output for people. JSON output is the serialised outcome itself; this renders the same typed
//! values as aligned text.
//!
//! Every string from XAPI or the registry (names, uuids the old tools stored unchecked,
//! device-model-args, messages quoting them) reaches the terminal through [`cell`] — table cells
//! by [`Rows::row`] and [`Rows::below`], other text by [`Page::line`] — so its control characters
//! are shown escaped and never act as escape sequences.
//!
//! Everything is laid out for one width ([`out_width`]), and no line ends in spaces. A table whose
//! rows fit whole is one line per row. When they do not, the uuid leaves the row for a line of its
//! own under it (a uuid is never cut or wrapped: people copy it), which leaves the name the room
//! it needs; a name longer than even that is cut with `…` (`--format json` has it whole). Values
//! that are read rather than scanned (show-vm's fields, argument lists, pool descriptions) wrap,
//! and details (drift, problems, errors) go on lines of their own under their VM.

use comfy_table::{presets, Cell, ColumnConstraint, Row, Table, Width};
use registry::functions::FUNCTIONS;
use registry::model::{printable, Registration};
use registry::report::{
    AdoptReport, Applied, Drift, MediatorAnswer, PoolInfo, PowerState, RebuildReport,
    RefreshReport, ReplicaStatus, ScanReport, ShowReport, Skipped, StatusReport, SyncAction,
    SyncReport, VmStatus,
};
use registry::{FunctionSpec, Outcome};
use std::io::IsTerminal;
use std::os::fd::AsFd;

const OK: &str = "✓";
const WARN: &str = "⚠";
/// Spaces between two columns.
const GAP: usize = 2;
/// Indent of a uuid moved under its row.
const UUID_INDENT: usize = 2;
/// Indent of the details under a row.
const DETAIL_INDENT: usize = 4;
/// Width of a uuid (and so the least width of a column that shows one whole).
const UUID_WIDTH: usize = 36;

/// The width output for people is laid out for.
///
/// On a terminal: its width (`COLUMNS`, else 80, when it does not tell). Elsewhere: `COLUMNS`
/// when it holds a width, so `COLUMNS=100 vgpu-admin scan-vms | less` looks as on a terminal of
/// 100 columns; otherwise no limit, so a file or a pipe gets every row on one line with nothing
/// cut — `grep` sees whole rows, and programs should read `--format json` anyway.
fn out_width() -> Option<usize> {
    let stdout = std::io::stdout();
    let terminal = stdout
        .is_terminal()
        .then(|| terminal_size::terminal_size_of(stdout.as_fd()).map(|(w, _)| usize::from(w.0)));
    width_for(terminal, std::env::var("COLUMNS").ok().as_deref())
}

/// [`out_width`] from what it found: `terminal` is `Some` when stdout is a terminal, holding its
/// width when it tells one; `columns` is `COLUMNS`.
fn width_for(terminal: Option<Option<usize>>, columns: Option<&str>) -> Option<usize> {
    let columns = columns
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0);
    match terminal {
        Some(size) => Some(size.filter(|&w| w > 0).or(columns).unwrap_or(80)),
        None => columns,
    }
}

/// THE escaping cell: control characters shown escaped.
fn cell(s: &str) -> String {
    printable(s).into_owned()
}

/// How a cell wider than its column is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fit {
    /// Never cut or wrapped: uuids, which people copy, and short words and numbers.
    Whole,
    /// Cut with `…`: names in listings, which stay one line per VM.
    Cut,
    /// Wrapped onto more lines: values read rather than scanned.
    Wrap,
}

/// Display width of escaped text: `✓` is one column, a CJK character two.
fn measure(text: &str) -> usize {
    if text.is_empty() {
        return 0;
    }
    let mut t = Table::new();
    t.add_row(vec![text]);
    t.column_max_content_widths()
        .first()
        .map_or(0, |w| usize::from(*w))
}

/// Escaped text in a column `width` wide: its lines, each padded to `width`.
fn fit(text: &str, width: usize, how: Fit) -> Vec<String> {
    let mut c = Cell::new(text);
    let mut row = Row::new();
    if how == Fit::Cut {
        // One piece (escaped text has no NUL): cut where the width ends, not at a space before.
        c = c.set_delimiter('\0');
        row.max_height(1);
    }
    row.add_cell(c);
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.add_row(row);
    if let Some(col) = t.column_mut(0) {
        let width = u16::try_from(width.max(1)).unwrap_or(u16::MAX);
        col.set_padding((0, 0))
            .set_constraint(ColumnConstraint::Absolute(Width::Fixed(width)));
    }
    t.lines().collect()
}

/// Escaped text broken at spaces into lines of at most `width` columns, the first indented by
/// `first` spaces, the others by `rest` (a word longer than a line is split).
fn wrapped(text: &str, width: Option<usize>, first: usize, rest: usize) -> Vec<String> {
    let Some(width) = width else {
        return vec![format!("{:first$}{text}", "")];
    };
    let mut lines = Vec::new();
    let mut line = " ".repeat(first);
    let mut used = first;
    let mut fresh = true;
    for word in text.split(' ') {
        let w = measure(word);
        if !fresh && used + 1 + w > width {
            lines.push(std::mem::replace(&mut line, " ".repeat(rest)));
            used = rest;
            fresh = true;
        }
        if fresh && used + w > width {
            let mut pieces = fit(word, width.saturating_sub(rest).max(1), Fit::Wrap);
            let last = pieces.pop().unwrap_or_default();
            for p in pieces {
                line.push_str(&p);
                lines.push(std::mem::replace(&mut line, " ".repeat(rest)));
            }
            let last = last.trim_end_matches(' ');
            line.push_str(last);
            used = measure(&line);
            fresh = false;
            continue;
        }
        if !fresh {
            line.push(' ');
            used += 1;
        }
        line.push_str(word);
        used += w;
        fresh = false;
    }
    lines.push(line);
    lines
        .into_iter()
        .map(|l| l.trim_end_matches(' ').to_string())
        .collect()
}

/// Output for people at one width: text through [`Page::line`], tables through [`Page::table`].
struct Page {
    width: Option<usize>,
    out: String,
}

impl Page {
    fn new(width: Option<usize>) -> Page {
        Page {
            width,
            out: String::new(),
        }
    }

    /// A line of text outside a table, escaped like a cell and broken at spaces to the page's
    /// width; its continuation lines are indented two more than it.
    fn line(&mut self, text: &str) {
        let text = cell(text);
        let body = text.trim_start_matches(' ');
        let lead = text.len() - body.len();
        for l in wrapped(body, self.width, lead, lead + 2) {
            self.out.push_str(&l);
            self.out.push('\n');
        }
    }

    fn blank(&mut self) {
        self.out.push('\n');
    }

    fn table(&mut self, t: &Rows) {
        for l in t.render(self.width) {
            self.out.push_str(&l);
            self.out.push('\n');
        }
    }
}

/// One row of a [`Rows`]: its cells and the lines under it, all escaped.
struct Entry {
    cells: Vec<String>,
    below: Vec<String>,
}

/// A table whose cells go through [`Rows::row`] and details through [`Rows::below`].
struct Rows {
    /// Column titles; none for a table without a header.
    titles: Vec<&'static str>,
    fits: Vec<Fit>,
    /// Least width of each column (at least its title's).
    mins: Vec<usize>,
    /// The column holding the uuid, which moves under its row when the rows do not fit whole.
    uuid: Option<usize>,
    rows: Vec<Entry>,
}

impl Rows {
    fn new(columns: &[(&'static str, Fit)]) -> Rows {
        Rows {
            titles: columns.iter().map(|c| c.0).collect(),
            fits: columns.iter().map(|c| c.1).collect(),
            mins: columns.iter().map(|c| measure(c.0).max(1)).collect(),
            uuid: None,
            rows: Vec::new(),
        }
    }

    /// A table without a header.
    fn plain(fits: &[Fit]) -> Rows {
        Rows {
            titles: Vec::new(),
            fits: fits.to_vec(),
            mins: vec![1; fits.len()],
            uuid: None,
            rows: Vec::new(),
        }
    }

    /// Column `i` holds the VM's uuid.
    fn uuid_column(mut self, i: usize) -> Rows {
        self.uuid = Some(i);
        self
    }

    /// Column `i` is never narrower than `width`.
    fn min_width(mut self, i: usize, width: usize) -> Rows {
        self.mins[i] = self.mins[i].max(width);
        self
    }

    fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| cell(c.as_ref())).collect();
        cells.resize(self.fits.len(), String::new());
        self.rows.push(Entry {
            cells,
            below: Vec::new(),
        });
    }

    /// A line of detail under the last row.
    fn below(&mut self, text: &str) {
        if let Some(e) = self.rows.last_mut() {
            e.below.push(cell(text));
        }
    }

    /// The table's lines for a page `width` wide (no limit: every row on one line, whole).
    fn render(&self, width: Option<usize>) -> Vec<String> {
        let n = self.fits.len();
        let mut natural: Vec<usize> = (0..n)
            .map(|c| self.titles.get(c).map_or(0, |t| measure(t)).max(1))
            .collect();
        for e in &self.rows {
            for (c, text) in e.cells.iter().enumerate() {
                natural[c] = natural[c].max(measure(text));
            }
        }
        let inline = natural.iter().sum::<usize>() + GAP * n.saturating_sub(1);
        let moved = match (width, self.uuid) {
            (Some(w), Some(u)) if inline > w && n > 1 => Some(u),
            _ => None,
        };
        let shown: Vec<usize> = (0..n).filter(|&c| Some(c) != moved).collect();
        let widths = self.allocate(&shown, &natural, width);
        let mut out = Vec::new();
        if !self.titles.is_empty() {
            out.extend(compose(
                shown
                    .iter()
                    .zip(&widths)
                    .map(|(&c, &w)| (self.titles[c], w, Fit::Wrap)),
            ));
            if let Some(u) = moved {
                out.push(format!("{:UUID_INDENT$}{}", "", self.titles[u]));
            }
        }
        for e in &self.rows {
            out.extend(compose(
                shown
                    .iter()
                    .zip(&widths)
                    .map(|(&c, &w)| (e.cells[c].as_str(), w, self.fits[c])),
            ));
            if let Some(u) = moved {
                out.push(format!("{:UUID_INDENT$}{}", "", e.cells[u]));
            }
            for b in &e.below {
                out.extend(wrapped(b, width, DETAIL_INDENT, DETAIL_INDENT + 2));
            }
        }
        out
    }

    /// Widths of the `shown` columns within `width`: whole columns get their content's width,
    /// cut and wrapped ones share the rest, the narrowest content served first, none below its
    /// least width (so a page narrower than the whole columns overflows rather than cut a uuid).
    fn allocate(&self, shown: &[usize], natural: &[usize], width: Option<usize>) -> Vec<usize> {
        let want: Vec<usize> = shown
            .iter()
            .map(|&c| natural[c].max(self.mins[c]))
            .collect();
        let gaps = GAP * shown.len().saturating_sub(1);
        let Some(width) = width else { return want };
        if want.iter().sum::<usize>() + gaps <= width {
            return want;
        }
        let mut flex: Vec<usize> = (0..shown.len())
            .filter(|&i| self.fits[shown[i]] != Fit::Whole)
            .collect();
        let fixed: usize = (0..shown.len())
            .filter(|i| !flex.contains(i))
            .map(|i| want[i])
            .sum();
        let mut room = width.saturating_sub(fixed + gaps);
        flex.sort_by_key(|&i| want[i]);
        let mut got = want.clone();
        let mut left = flex.len();
        for i in flex {
            let share = room / left;
            got[i] = want[i].min(share).max(self.mins[shown[i]]);
            room = room.saturating_sub(got[i]);
            left -= 1;
        }
        got
    }
}

/// One row's lines: its cells side by side, `GAP` apart, without trailing spaces.
fn compose<'a>(cells: impl Iterator<Item = (&'a str, usize, Fit)>) -> Vec<String> {
    let pieces: Vec<(Vec<String>, usize)> = cells.map(|(t, w, f)| (fit(t, w, f), w)).collect();
    let height = pieces.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    (0..height)
        .map(|i| {
            let mut line = String::new();
            for (k, (p, w)) in pieces.iter().enumerate() {
                if k > 0 {
                    line.push_str(&" ".repeat(GAP));
                }
                match p.get(i) {
                    Some(s) => line.push_str(s),
                    None => line.push_str(&" ".repeat(*w)),
                }
            }
            line.trim_end_matches(' ').to_string()
        })
        .collect()
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

fn drift_text(d: &Drift) -> String {
    format!(
        "{}: registry {} / device {}",
        d.field.as_str(),
        d.registry,
        d.device.as_deref().unwrap_or("(missing)")
    )
}

pub fn render(outcome: &Outcome, function: &FunctionSpec) -> String {
    let mut page = Page::new(out_width());
    match outcome {
        Outcome::Scan(s) => scan(&mut page, s),
        Outcome::Applied(a) => applied(&mut page, a, function.name),
        Outcome::Show(s) => show(&mut page, s),
        Outcome::List(l) => match function.name {
            "show-weights" => weights(&mut page, l),
            "show-rate-limits" => rate_limits(&mut page, l),
            _ => list(&mut page, l),
        },
        Outcome::Mediator(m) => mediators(&mut page, m),
        Outcome::Pools(p) => pools(&mut page, p),
        Outcome::Pool(p) => {
            pools(&mut page, std::slice::from_ref(&p.pool));
            page.blank();
            list(&mut page, &p.vms);
        }
        Outcome::Status(s) => status(&mut page, s),
        Outcome::Sync(s) => {
            sync(&mut page, s);
            replicas(&mut page, s.replicas.as_deref());
        }
        Outcome::Refresh(r) => refresh(&mut page, r),
        Outcome::Adopt(a) => {
            adopt(&mut page, a);
            replicas(&mut page, a.replicas.as_deref());
        }
        Outcome::Rebuild(r) => {
            rebuild(&mut page, r);
            replicas(&mut page, r.replicas.as_deref());
        }
    }
    if let Outcome::Applied(a) = outcome {
        replicas(&mut page, a.replicas.as_deref());
        reloads(&mut page, a);
    }
    page.out
}

/// `vgpu-admin functions`: the function table.
pub fn functions() -> String {
    use Fit::*;
    let mut t = Rows::new(&[
        ("FUNCTION", Whole),
        ("COMMAND", Whole),
        ("CHANGES", Whole),
        ("ARGUMENTS", Wrap),
    ]);
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
    let mut page = Page::new(out_width());
    page.table(&t);
    page.out
}

fn scan(page: &mut Page, s: &ScanReport) {
    use Fit::*;
    page.line(&format!("=== Registered VMs ({}) ===", s.registered.len()));
    if !s.registered.is_empty() {
        let mut t = Rows::new(&[
            ("UUID", Whole),
            ("NAME", Cut),
            ("POOL", Whole),
            ("PRIORITY", Whole),
            ("VM ID", Whole),
            ("POWER", Whole),
            ("STATUS", Whole),
        ])
        .uuid_column(0);
        for r in &s.registered {
            let reg = &r.registration;
            t.row([
                reg.vm_uuid.clone(),
                name(&reg.vm_name),
                reg.pool.to_string(),
                priority(reg),
                reg.vm_id.to_string(),
                r.power_state.to_string(),
                status_mark(r.status),
            ]);
            for d in &r.drift {
                t.below(&drift_text(d));
            }
            for p in &r.problems {
                t.below(&format!("{WARN} {p}"));
            }
        }
        page.table(&t);
    }
    page.blank();
    page.line(&format!(
        "=== Unregistered VMs ({}) ===",
        s.unregistered.len()
    ));
    if !s.unregistered.is_empty() {
        let mut t = Rows::new(&[
            ("UUID", Whole),
            ("NAME", Cut),
            ("POWER", Whole),
            ("STATUS", Whole),
        ])
        .uuid_column(0);
        for u in &s.unregistered {
            t.row([
                u.vm_uuid.clone(),
                u.vm_name.clone(),
                u.power_state.to_string(),
                format!("{WARN} not registered"),
            ]);
        }
        page.table(&t);
        // The command on a line of its own, short enough not to wrap at 80 columns.
        page.line("Register one with (add --vm-id ID to choose its id):");
        page.line("  vgpu-admin register-vm --vm-uuid UUID --pool A|B --priority low|medium|high");
    }
    if !s.stale.is_empty() {
        page.blank();
        page.line(&format!("=== Stale registrations ({}) ===", s.stale.len()));
        let mut t = Rows::new(&[
            ("UUID", Whole),
            ("NAME", Cut),
            ("POOL", Whole),
            ("PRIORITY", Whole),
            ("VM ID", Whole),
            ("STATUS", Whole),
        ])
        .uuid_column(0);
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
            for p in &st.problems {
                t.below(&format!("{WARN} {p}"));
            }
        }
        page.table(&t);
        page.line("Remove one with: vgpu-admin remove-vm --vm-uuid UUID");
    }
    let m = &s.summary;
    page.blank();
    page.line(&format!(
        "Summary: {} VMs, {} registered ({} configured, {} drift, {} not applied), {} unregistered, {} stale",
        m.total_vms, m.registered, m.configured, m.drift, m.not_applied, m.unregistered, m.stale
    ));
}

/// The mediators asked to reload after a change, and whether a control change is in effect.
fn reloads(page: &mut Page, a: &Applied) {
    let Some(r) = &a.reloads else { return };
    let failed: Vec<&MediatorAnswer> = r.iter().filter(|m| !m.ok).collect();
    if !r.is_empty() {
        page.line(&format!(
            "  mediators reloaded on {} of {} host(s)",
            r.len() - failed.len(),
            r.len()
        ));
    }
    for m in &failed {
        page.line(&format!(
            "  {WARN} host {} ({}): {}",
            m.name,
            m.host,
            m.error.as_deref().unwrap_or("failed")
        ));
    }
    match a.in_effect {
        Some(true) if failed.is_empty() => {
            page.line(&format!("  {OK} in effect on every host's mediator"))
        }
        Some(false) if failed.is_empty() => page.line(&format!(
            "{WARN} stored, but not in effect: a mediator loads rate limits and quarantine for \
             its first 64 registrations only (by pool, priority high first, vm_id), and this VM \
             is past them"
        )),
        Some(false) => {
            page.line(&format!(
                "{WARN} stored, but not in effect on every host: a mediator that has not reloaded \
                 still applies the old value. Retry with:"
            ));
            for m in &failed {
                let host = if m.name.is_empty() { &m.host } else { &m.name };
                page.line(&format!("    vgpu-admin mediator reload --host {host}"));
            }
        }
        Some(true) if !failed.is_empty() => page.line(&format!(
            "  {WARN} the weight is in effect (mediators read it on every request); the failed \
             reloads only matter for rate limits and quarantine"
        )),
        _ => {}
    }
}

/// A rate or depth: 0 is no limit.
fn limit_text(n: i64, unit: &str) -> String {
    if n == 0 {
        "unlimited".into()
    } else {
        format!("{n} {unit}")
    }
}

fn weights(page: &mut Page, l: &[Registration]) {
    use Fit::*;
    if l.is_empty() {
        page.line("No registered VMs.");
        return;
    }
    let mut t = Rows::new(&[
        ("UUID", Whole),
        ("NAME", Cut),
        ("POOL", Whole),
        ("PRIORITY", Whole),
        ("VM ID", Whole),
        ("WEIGHT", Whole),
    ])
    .uuid_column(0);
    for r in l {
        t.row([
            r.vm_uuid.clone(),
            name(&r.vm_name),
            r.pool.to_string(),
            priority(r),
            r.vm_id.to_string(),
            r.controls.weight.to_string(),
        ]);
    }
    page.table(&t);
}

fn rate_limits(page: &mut Page, l: &[Registration]) {
    use Fit::*;
    if l.is_empty() {
        page.line("No registered VMs.");
        return;
    }
    let limit = |n: i64| {
        if n == 0 {
            "unlimited".to_string()
        } else {
            n.to_string()
        }
    };
    let mut t = Rows::new(&[
        ("UUID", Whole),
        ("NAME", Cut),
        ("VM ID", Whole),
        ("JOBS/S", Whole),
        ("QUEUE", Whole),
        ("QUARANTINED", Whole),
        ("ERRORS", Whole),
    ])
    .uuid_column(0);
    for r in l {
        let c = &r.controls;
        t.row([
            r.vm_uuid.clone(),
            name(&r.vm_name),
            r.vm_id.to_string(),
            limit(c.max_jobs_per_sec),
            limit(c.max_queue_depth),
            if c.quarantined {
                format!("{WARN} yes")
            } else {
                "no".into()
            },
            c.error_count.to_string(),
        ]);
    }
    page.table(&t);
}

fn mediators(page: &mut Page, m: &[MediatorAnswer]) {
    for (i, a) in m.iter().enumerate() {
        if i > 0 {
            page.blank();
        }
        let who = if a.host.is_empty() {
            "this host".to_string()
        } else {
            format!("{} ({})", a.name, a.host)
        };
        if a.absent {
            page.line(&format!("=== {who}: no mediator ==="));
            continue;
        }
        let mark = if a.ok { OK } else { WARN };
        page.line(&format!("=== {mark} {who} ==="));
        if let Some(t) = &a.text {
            for l in t.lines() {
                page.line(&printable(l));
            }
        } else if let Some(e) = &a.error {
            page.line(&format!("{WARN} {}", printable(e)));
        }
    }
}

/// The other hosts' replicas after a change on the master.
fn replicas(page: &mut Page, r: Option<&[ReplicaStatus]>) {
    let Some(r) = r else { return };
    if r.is_empty() {
        return;
    }
    let ok = r.iter().filter(|h| h.ok).count();
    page.line(&format!(
        "  replicas refreshed on {ok} of {} other host(s)",
        r.len()
    ));
    for h in r.iter().filter(|h| !h.ok) {
        page.line(&format!(
            "  {WARN} host {} ({}): {}",
            h.name,
            h.host,
            h.error.as_deref().unwrap_or("failed")
        ));
    }
    if ok < r.len() {
        page.line("  run `vgpu-admin refresh` on those hosts once they are back");
    }
}

fn generation(g: Option<u64>) -> String {
    g.map_or_else(|| "none".into(), |g| g.to_string())
}

fn refresh(page: &mut Page, r: &RefreshReport) {
    let what = if r.role == "primary" {
        "the pool master's registry (primary)"
    } else {
        "replica"
    };
    let verb = if r.changed {
        "refreshed"
    } else {
        "already current"
    };
    page.line(&format!(
        "{OK} {what} on {} ({}) {verb}: generation {}, {} VM(s)",
        r.name,
        r.host,
        generation(r.generation),
        r.vms
    ));
    if r.changed && r.previous_generation != r.generation {
        page.line(&format!(
            "  was at generation {}",
            generation(r.previous_generation)
        ));
    }
    skipped(page, &r.skipped);
    for w in &r.warnings {
        page.line(&format!("{WARN} {w}"));
    }
}

fn skipped(page: &mut Page, s: &[Skipped]) {
    if s.is_empty() {
        return;
    }
    page.blank();
    page.line(&format!("=== Left alone ({}) ===", s.len()));
    for v in s {
        page.line(&format!(
            "{WARN} {} ({}): {}",
            v.vm_uuid,
            name(&v.vm_name),
            printable(&v.reason)
        ));
        if let Some(d) = &v.device_model_args {
            page.line(&format!("    device-model-args: {}", printable(d)));
        }
    }
}

fn adopt(page: &mut Page, a: &AdoptReport) {
    if a.adopted.is_empty() && a.skipped.is_empty() {
        page.line("No VM carries a vgpu device without being registered: nothing to adopt.");
        return;
    }
    let verb = if a.dry_run { "Would adopt" } else { "Adopted" };
    page.line(&format!("=== {verb} ({}) ===", a.adopted.len()));
    for v in &a.adopted {
        page.line(&format!(
            "{OK} {} ({}): pool {}, priority {}, vm_id {}",
            v.vm_uuid,
            name(&v.vm_name),
            v.pool,
            v.priority,
            v.vm_id
        ));
        let shown = |x: &Option<String>| printable(x.as_deref().unwrap_or("(none)")).to_string();
        if v.before != v.after {
            page.line(&format!("    device-model-args: {}", shown(&v.before)));
            page.line(&format!("                    → {}", shown(&v.after)));
        }
        if v.pending_restart {
            page.line(&format!(
                "    {WARN} the VM is running: the rewritten device takes effect at its next start"
            ));
        }
    }
    skipped(page, &a.skipped);
    if a.dry_run {
        page.line("Dry run: nothing was changed.");
    }
}

fn rebuild(page: &mut Page, r: &RebuildReport) {
    let verb = if r.dry_run {
        "Would restore"
    } else {
        "Restored"
    };
    page.line(&format!(
        "{OK} {verb} {} registration(s) from the copy in XAPI (generation {})",
        r.restored,
        generation(r.generation)
    ));
    if let Some(b) = &r.backup {
        page.line(&format!("  the registry that was there is saved as {b}"));
    }
    skipped(page, &r.skipped);
    page.blank();
    adopt(page, &r.adopt);
}

fn applied(page: &mut Page, a: &Applied, function: &str) {
    let r = &a.registration;
    let c = &r.controls;
    let limit = |n: i64| {
        if n == 0 {
            "unlimited".to_string()
        } else {
            n.to_string()
        }
    };
    let control = match function {
        "set-weight" => Some(format!("weight {} stored", c.weight)),
        "set-rate-limit" => Some(format!(
            "rate limit {} job(s)/s, queue depth {} stored",
            limit(c.max_jobs_per_sec),
            limit(c.max_queue_depth)
        )),
        "quarantine" => Some(
            "quarantine stored (a mediator rejects the VM's new GPU work once it has reloaded)"
                .into(),
        ),
        "clear-quarantine" => Some("quarantine lifted and error count zeroed (stored)".into()),
        _ => None,
    };
    if let Some(what) = control {
        page.line(&format!(
            "{OK} VM {} ({}), vm_id {}: {what}",
            r.vm_uuid,
            name(&r.vm_name),
            r.vm_id
        ));
        return;
    }
    let verb = match function {
        "register" => "Registered",
        "remove" => "Removed",
        _ => "Updated",
    };
    page.line(&format!(
        "{OK} {verb} VM {} ({}): pool {}, priority {}, vm_id {}",
        r.vm_uuid,
        name(&r.vm_name),
        r.pool,
        r.priority,
        r.vm_id
    ));
    match &a.power_state {
        None => page.line("  the VM no longer exists: removed from the registry only"),
        Some(_) => page.line(&format!(
            "  device-model-args: {}",
            a.device_model_args.as_deref().unwrap_or("(none)")
        )),
    }
    if a.restarted {
        page.line(&format!("  {OK} VM restarted: the change is active"));
    } else if a.pending_restart {
        let state = a
            .power_state
            .as_ref()
            .map_or_else(|| "?".to_string(), |p| p.to_string());
        // Only a running VM can be restarted: a paused or suspended one is refused.
        let restart = if a.power_state == Some(PowerState::Running) {
            " (or use --restart)"
        } else {
            ""
        };
        page.line(&format!(
            "  {WARN} the VM is {state}: the change takes effect at its next start{restart}"
        ));
    }
}

fn show(page: &mut Page, s: &ShowReport) {
    let r = &s.registration;
    // Read one at a time, so values wrap whole rather than being cut; the column keeps room
    // for a uuid on one line.
    let mut t = Rows::plain(&[Fit::Whole, Fit::Wrap]).min_width(1, UUID_WIDTH);
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
        ("Weight", r.controls.weight.to_string()),
        (
            "Rate limit",
            limit_text(r.controls.max_jobs_per_sec, "job(s)/s"),
        ),
        (
            "Queue depth",
            limit_text(r.controls.max_queue_depth, "job(s)"),
        ),
        (
            "Quarantined",
            if r.controls.quarantined {
                format!("{WARN} yes")
            } else {
                "no".into()
            },
        ),
        ("Errors", r.controls.error_count.to_string()),
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
        t.row(["Drift:".to_string(), drift_text(d)]);
    }
    for p in &s.problems {
        t.row(["Problem:".to_string(), format!("{WARN} {p}")]);
    }
    page.table(&t);
}

fn list(page: &mut Page, l: &[Registration]) {
    use Fit::*;
    if l.is_empty() {
        page.line("No registered VMs.");
        return;
    }
    let mut t = Rows::new(&[
        ("UUID", Whole),
        ("NAME", Cut),
        ("POOL", Whole),
        ("PRIORITY", Whole),
        ("VM ID", Whole),
        ("UPDATED", Whole),
    ])
    .uuid_column(0);
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
    page.table(&t);
}

fn pools(page: &mut Page, p: &[PoolInfo]) {
    use Fit::*;
    // Two pools: names and descriptions wrap, shown whole.
    let mut t = Rows::new(&[
        ("POOL", Whole),
        ("NAME", Wrap),
        ("ENABLED", Whole),
        ("VMS", Whole),
        ("HIGH", Whole),
        ("MEDIUM", Whole),
        ("LOW", Whole),
        ("DESCRIPTION", Wrap),
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
    page.table(&t);
}

fn status(page: &mut Page, s: &StatusReport) {
    page.line("=== Pools ===");
    pools(page, &s.pools);
    let m = &s.summary;
    page.blank();
    page.line("=== VMs ===");
    page.line(&format!("  in the pool:   {}", m.total_vms));
    page.line(&format!(
        "  registered:    {} ({} configured)",
        m.registered, m.configured
    ));
    page.line(&format!("  unregistered:  {}", m.unregistered));
    let mark = |n: usize| if n == 0 { OK } else { WARN };
    page.line(&format!("  {} drift:       {}", mark(m.drift), m.drift));
    page.line(&format!(
        "  {} not applied: {}",
        mark(m.not_applied),
        m.not_applied
    ));
    page.line(&format!("  {} stale:       {}", mark(m.stale), m.stale));
    page.line(&format!(
        "  {} XAPI copy:   {} missing or stale",
        mark(m.mirror_drift),
        m.mirror_drift
    ));
    if !s.hosts.is_empty() {
        page.blank();
        page.line(&format!(
            "=== Hosts (registry generation {}) ===",
            generation(s.generation)
        ));
        for h in &s.hosts {
            let what = if h.master {
                format!("{OK} master (primary)")
            } else {
                match (h.generation, h.behind) {
                    (None, _) => format!("{WARN} replica never refreshed"),
                    (Some(g), Some(b)) if b > 0 => {
                        format!("{WARN} replica at generation {g}, {b} behind")
                    }
                    (Some(g), _) => format!("{OK} replica at generation {g}"),
                }
            };
            page.line(&format!("  {} ({}): {what}", h.name, h.host));
        }
    }
    for (title, list) in [
        ("Drift", &s.drift),
        ("Not applied", &s.not_applied),
        ("Unregistered", &s.unregistered),
        ("Stale", &s.stale),
        ("XAPI copy missing or stale", &s.mirror_drift),
    ] {
        if !list.is_empty() {
            page.blank();
            page.line(&format!("{title}:"));
            for v in list {
                page.line(&format!("  {v}"));
            }
        }
    }
    for w in &s.warnings {
        page.blank();
        page.line(&format!("{WARN} {w}"));
    }
    if !s.problems.is_empty() {
        page.blank();
        page.line("Problems:");
        for p in &s.problems {
            for msg in &p.problems {
                page.line(&format!(
                    "  {WARN} {} ({}): {msg}",
                    p.vm_uuid,
                    name(&p.vm_name)
                ));
            }
        }
    }
    if m.drift + m.not_applied + m.mirror_drift > 0 {
        page.blank();
        page.line("Re-apply the registry with: vgpu-admin sync --all");
    }
    if m.stale > 0 {
        page.blank();
        page.line("Remove a stale registration with: vgpu-admin remove-vm --vm-uuid UUID");
    }
}

fn sync(page: &mut Page, s: &SyncReport) {
    use Fit::*;
    let mut t = Rows::new(&[
        ("UUID", Whole),
        ("NAME", Cut),
        ("BEFORE", Whole),
        ("ACTION", Whole),
        ("NOTE", Whole),
    ])
    .uuid_column(0);
    for r in &s.results {
        let note = match (r.restarted, r.pending_restart) {
            _ if r.error.is_some() => "",
            (true, _) => "restarted",
            (false, true) => "takes effect at next start",
            _ => "",
        };
        let action = match r.action {
            SyncAction::Unchanged => format!("{OK} unchanged"),
            SyncAction::Applied => format!("{OK} applied"),
            SyncAction::Renamed => format!("{OK} name refreshed"),
            SyncAction::WouldApply => "would apply".into(),
            SyncAction::WouldRename => "would refresh name".into(),
            SyncAction::Mirrored => format!("{OK} XAPI copy repaired"),
            SyncAction::WouldMirror => "would repair XAPI copy".into(),
            SyncAction::Stale => format!("{WARN} stale"),
            SyncAction::Failed => format!("{WARN} failed"),
        };
        t.row([
            r.vm_uuid.clone(),
            name(&r.vm_name),
            r.status_before.as_str().to_string(),
            action,
            note.to_string(),
        ]);
        if let Some(e) = &r.error {
            t.below(&format!(
                "{WARN} {}",
                e["message"].as_str().unwrap_or("failed")
            ));
        }
        for c in &r.changes {
            let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
            let field = c.field.replace('_', "-");
            t.below(&format!("{field}: {} → {}", shown(&c.old), shown(&c.new)));
        }
    }
    page.table(&t);
    if s.dry_run {
        page.line("Dry run: nothing was changed.");
    }
    if s.failed > 0 {
        page.line(&format!("{WARN} {} VM(s) failed", s.failed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "48df46e9-31b9-4aea-b4b8-678e9a3c70d6";
    const U2: &str = "828a3951-c823-442c-b4b2-6d14384ca337";

    fn listing() -> Rows {
        Rows::new(&[
            ("UUID", Fit::Whole),
            ("NAME", Fit::Cut),
            ("POWER", Fit::Whole),
            ("STATUS", Fit::Whole),
        ])
        .uuid_column(0)
    }

    fn assert_fits(lines: &[String], width: usize) {
        for l in lines {
            assert!(measure(l) <= width, "{} > {width}: {l:?}", measure(l));
            assert!(!l.ends_with(' '), "trailing space: {l:?}");
        }
    }

    #[test]
    fn cells_and_lines_escape_control_characters() {
        let mut t = Rows::new(&[("A", Fit::Whole)]);
        t.row(["\u{1b}[2Jx\ty"]);
        t.below("b\u{1b}[31m");
        for width in [None, Some(8)] {
            let text = t.render(width).join("\n");
            assert!(!text.contains('\u{1b}') && !text.contains('\t'), "{text:?}");
            assert!(text.contains("\\u{1b}"), "{text:?}");
        }
        assert!(t.render(None).join("\n").contains("\\u{1b}[2Jx\\ty"));
        let mut page = Page::new(Some(80));
        page.line("a\u{7}b");
        assert_eq!(page.out, "a\\u{7}b\n");
    }

    #[test]
    fn rows_that_fit_are_one_line_each_without_trailing_spaces() {
        let mut t = listing();
        t.row([U1, "web 01", "running", "✓ configured"]);
        t.row([U2, "db", "halted", ""]);
        let lines = t.render(Some(80));
        assert_eq!(
            lines,
            [
                format!("UUID{}NAME    POWER    STATUS", " ".repeat(34)),
                format!("{U1}  web 01  running  ✓ configured"),
                format!("{U2}  db      halted"),
            ]
        );
        assert_eq!(t.render(None), lines);
    }

    #[test]
    fn a_row_too_wide_puts_the_uuid_under_it_and_cuts_only_what_still_does_not_fit() {
        let long = "a VM whose name-label goes on and on and on and on and on and on";
        let mut t = listing();
        t.row([U1, long, "suspended", "✓ configured"]);
        t.below("pool: registry A / device B");
        let lines = t.render(Some(80));
        assert_fits(&lines, 80);
        assert_eq!(lines[1], "  UUID");
        assert_eq!(lines[3], format!("  {U1}"));
        assert_eq!(lines[4], "    pool: registry A / device B");
        assert!(
            lines[2].starts_with("a VM whose name-label goes on"),
            "{lines:?}"
        );
        assert!(lines[2].contains("…  suspended  ✓ configured"), "{lines:?}");
        // Wide enough for all but the uuid: the name whole.
        let lines = t.render(Some(100));
        assert_fits(&lines, 100);
        assert!(lines[2].starts_with(long), "{lines:?}");
        // Unlimited: one line, whole.
        assert_eq!(t.render(None).len(), 3);
        assert!(t.render(None)[1].contains(long));
    }

    #[test]
    fn widths_are_display_columns() {
        let mut t = listing();
        t.row([U1, "渲染节点-第一台", "running", "⚠ drift"]);
        t.row([U2, "x", "halted", "⚠ drift"]);
        let lines = t.render(Some(80));
        assert_fits(&lines, 80);
        // The same column where STATUS starts on every line.
        let at: Vec<usize> = lines
            .iter()
            .map(|l| measure(&l[..l.find(['S', '⚠']).unwrap()]))
            .collect();
        assert!(at.windows(2).all(|w| w[0] == w[1]), "{lines:#?}");
    }

    #[test]
    fn wrapped_columns_and_lines_break_at_spaces_and_keep_a_uuid_whole() {
        let mut t = Rows::plain(&[Fit::Whole, Fit::Wrap]).min_width(1, UUID_WIDTH);
        t.row(["VM UUID:", U1]);
        let args = "-device vgpu-cuda,addr=5,pool_id=A,priority=high,vm_id=1 -global PIIX4_PM.disable_s3=1 -rtc base=localtime";
        t.row(["device-model-args:", args]);
        let lines = t.render(Some(60));
        assert_fits(&lines, 60);
        assert!(lines.len() > 2 && lines[0].ends_with(U1), "{lines:#?}");
        // Nothing lost: the value's characters, in order, after the key's column.
        let value: String = lines[1..].iter().flat_map(|l| l[20..].chars()).collect();
        let unspaced = |s: &str| s.replace(' ', "");
        assert_eq!(unspaced(&value), unspaced(args));
        assert!(lines[1..].iter().all(|l| l.len() > 20), "{lines:#?}");
        // A narrower page overflows rather than breaking the uuid.
        assert!(t.render(Some(40))[0].ends_with(U1));

        let mut page = Page::new(Some(44));
        page.line(&format!(
            "  {WARN} {U2} (render-01): the vgpu device is missing from device-model-args"
        ));
        let lines: Vec<String> = page.out.lines().map(str::to_string).collect();
        assert_eq!(
            lines,
            [
                format!("  ⚠ {U2}"),
                "    (render-01): the vgpu device is missing".into(),
                "    from device-model-args".into(),
            ]
        );
    }

    #[test]
    fn a_page_is_laid_out_for_the_terminal_else_for_columns_else_without_limit() {
        assert_eq!(width_for(Some(Some(120)), Some("80")), Some(120));
        assert_eq!(width_for(Some(Some(0)), Some("100")), Some(100));
        assert_eq!(width_for(Some(None), None), Some(80));
        assert_eq!(width_for(None, Some(" 100 ")), Some(100));
        assert_eq!(width_for(None, Some("wide")), None);
        assert_eq!(width_for(None, Some("0")), None);
        assert_eq!(width_for(None, None), None);
    }
}
