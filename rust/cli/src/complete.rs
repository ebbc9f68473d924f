//! Shell completion: clap_complete's scripts, with the bash one repaired and taught VM uuids and
//! names, and the candidates it asks `vgpu-admin __complete` for.
//!
//! Where VM candidates come from: the registry the completed command line would use (its
//! --db/--config, else VGPU_DB/VGPU_CONFIG, else the defaults), read through the core like
//! `list-vms`; for register-vm, the pool's unregistered VMs, through XAPI like `scan-vms`. The
//! lookup runs under a time bound and prints nothing but candidates: a completion must never
//! show an error or make the shell wait.

use crate::cli::{Cli, VmValue, BIN, COMPLETE_COMMAND};
use clap::{ArgMatches, CommandFactory};
use clap_complete::Shell;
use registry::{FunctionSpec, Service, Settings};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// How long a TAB may wait for VM candidates.
const LOOKUP_BOUND: Duration = Duration::from_secs(1);

/// The completion script for `shell`.
pub fn script(shell: Shell) -> String {
    let mut cmd = without_hidden(Cli::command());
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    match shell {
        Shell::Bash => repair_bash(&text),
        _ => text,
    }
}

/// The command line as the scripts should offer it: clap_complete offers hidden commands too,
/// and `__complete` is for the scripts alone.
fn without_hidden(cli: clap::Command) -> clap::Command {
    let visible = cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned();
    clap::Command::new(BIN)
        .version(cli.get_version().map(|_| env!("CARGO_PKG_VERSION")))
        .args(cli.get_arguments().cloned())
        .subcommands(visible.collect::<Vec<_>>())
}

/// The name clap_complete gives the bash completion function (`vgpu-admin` → `vgpu__admin`).
fn bash_fn() -> String {
    BIN.replace('-', "__")
}

/// clap_complete 4.6's bash script:
/// - names each subcommand's `case` `vgpu__subcmd__admin__subcmd__register__subcmd__vm` (the
///   binary's hyphen too) while its loop computes `vgpu__admin__subcmd__register__subcmd__vm`,
///   so no subcommand's options ever complete: the labels are renamed to what the loop computes;
/// - completes --vm-uuid/--vm-name with nothing: they call `vgpu-admin __complete` instead;
/// - registers with `-o default`, so a word with no candidate (a pool that is not A or B, a VM
///   not in the registry) falls back to file names: dropped, every option says what it takes.
fn repair_bash(script: &str) -> String {
    let wrong = format!("{}__subcmd__", BIN.replace('-', "__subcmd__"));
    let right = format!("{}__subcmd__", bash_fn());
    let vm_options = [("--vm-uuid)", "vm-uuid"), ("--vm-name)", "vm-name")];
    let mut out = String::with_capacity(script.len() + 1024);
    out.push_str(&vm_helper());
    let mut lines = script.lines();
    while let Some(line) = lines.next() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        if body.starts_with(&wrong) && body.ends_with(')') {
            out.push_str(&format!("{indent}{right}{}\n", &body[wrong.len()..]));
        } else if let Some((_, what)) = vm_options.iter().find(|(label, _)| body == *label) {
            out.push_str(line);
            out.push('\n');
            // The generated branch ends at its `;;`.
            for generated in lines.by_ref() {
                if generated.trim() == ";;" {
                    break;
                }
            }
            let inner = format!("{indent}    ");
            out.push_str(&format!(
                "{inner}_{}_vms {what}\n{inner}return 0\n{inner};;\n",
                bash_fn()
            ));
        } else if body.starts_with("complete -F") {
            out.push_str(&line.replace(" -o bashdefault -o default", ""));
            out.push('\n');
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The bash function that fills COMPREPLY with VM uuids or names, quoted for the command line
/// (a name may hold spaces). It hands over the line up to the cursor as typed: COMP_WORDS splits
/// `https://master` at the colon.
fn vm_helper() -> String {
    format!(
        r#"# VM uuids or names for --vm-uuid/--vm-name: `{BIN} {COMPLETE_COMMAND}` prints those
# that start with the word being completed, one per line, and nothing on any failure.
_{f}_vms() {{
    local line quoted
    COMPREPLY=()
    while IFS= read -r line; do
        printf -v quoted '%q' "$line"
        COMPREPLY+=("$quoted")
    done < <("${{COMP_WORDS[0]}}" {COMPLETE_COMMAND} "$1" -- "${{COMP_LINE:0:COMP_POINT}}" \
        2>/dev/null </dev/null)
}}

"#,
        f = bash_fn()
    )
}

/// `vgpu-admin __complete WHAT -- LINE`: the VM candidates for the command line LINE, typed
/// up to the cursor, that start with its last word (the value of the option before it).
pub fn vm_candidates(what: VmValue, line: &[String]) -> Vec<String> {
    let mut words = shell_words(&line.concat());
    // The program, …, the option, the word being completed.
    let (Some(current), Some(_option)) = (words.pop(), words.pop()) else {
        return Vec::new();
    };
    let before = words.get(1..).unwrap_or_default();
    let argv = std::iter::once(BIN.to_string()).chain(before.iter().cloned());
    let Ok(matches) = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(argv)
    else {
        return Vec::new();
    };
    let settings = settings(&matches);
    let unregistered = matches
        .subcommand_name()
        .and_then(FunctionSpec::for_command)
        .is_some_and(|spec| spec.name == "register");
    let (tx, rx) = mpsc::channel();
    // Left running past the bound, the lookup ends with the process.
    std::thread::spawn(move || {
        let _ = tx.send(lookup(&settings, unregistered));
    });
    let vms = rx
        .recv_timeout(LOOKUP_BOUND)
        .ok()
        .flatten()
        .unwrap_or_default();
    let prefix = current;
    let mut found: Vec<String> = vms
        .into_iter()
        .filter_map(|(uuid, name)| match what {
            VmValue::VmUuid => Some(uuid),
            VmValue::VmName => name,
        })
        .filter(|v| !v.chars().any(char::is_control))
        .filter(|v| match what {
            VmValue::VmUuid => v
                .to_ascii_lowercase()
                .starts_with(&prefix.to_ascii_lowercase()),
            VmValue::VmName => v.starts_with(&prefix),
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The settings the completed command line gives (its global options; the core adds the
/// environment and the config file as for any command).
fn settings(m: &ArgMatches) -> Settings {
    let path = |id: &str| m.try_get_one::<PathBuf>(id).ok().flatten().cloned();
    let text = |id: &str| m.try_get_one::<String>(id).ok().flatten().cloned();
    let flag = |id: &str| m.try_get_one::<bool>(id).ok().flatten().copied() == Some(true);
    Settings {
        config_path: path("config"),
        db: path("db"),
        xapi: text("xapi"),
        xapi_user: text("xapi_user"),
        xapi_password_file: path("xapi_password_file"),
        xapi_insecure: flag("xapi_insecure"),
        xapi_ca_file: path("xapi_ca_file"),
        session: None,
        remote: flag("remote"),
        on_wait: None,
    }
}

type Vm = (String, Option<String>);

/// Registered VMs (`list`), or the pool's unregistered ones (`scan`); None on any failure.
fn lookup(settings: &Settings, unregistered: bool) -> Option<Vec<Vm>> {
    let service = Service::new(settings).ok()?;
    // Reading a registry of the older tools migrates it: not something a TAB should do.
    if !registry_is_current(service.db_path()) {
        return None;
    }
    let function = if unregistered { "scan" } else { "list" };
    let answer = service.call(function, &BTreeMap::new()).ok()?;
    let doc = serde_json::to_value(&answer.outcome).ok()?;
    let rows = if unregistered {
        doc.get("unregistered")?
    } else {
        &doc
    };
    let vms = rows
        .as_array()?
        .iter()
        .filter_map(|r| {
            let uuid = r.get("vm_uuid")?.as_str()?.to_string();
            let name = r
                .get("vm_name")
                .and_then(|n| n.as_str())
                .map(str::to_string);
            Some((uuid, name))
        })
        .collect();
    Some(vms)
}

/// A registry that does not exist yet, or one at this schema version (the SQLite header's
/// user_version, big-endian at byte 60).
fn registry_is_current(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return !path.exists();
    };
    let mut header = [0u8; 64];
    if file.read_exact(&mut header).is_err() || !header.starts_with(b"SQLite format 3\0") {
        return false;
    }
    let version = u32::from_be_bytes([header[60], header[61], header[62], header[63]]);
    i64::from(version) == registry::SCHEMA_VERSION
}

/// A command line split into words as the shell would (quotes and backslashes removed); a line
/// ending in a blank ends with an empty word, the one being completed. An unclosed quote is the
/// word being typed.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\\', None) | ('\\', Some('"')) => {
                word.extend(chars.next());
                in_word = true;
            }
            ('\'' | '"', None) => {
                quote = Some(c);
                in_word = true;
            }
            (q, Some(open)) if q == open => quote = None,
            (c, None) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    words.push(word);
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bash() -> String {
        script(Shell::Bash)
    }

    #[test]
    fn every_command_the_loop_computes_has_its_case() {
        let text = bash();
        let labels: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter_map(|l| l.strip_suffix(')'))
            .collect();
        let mut computed = 0;
        for line in text.lines().map(str::trim) {
            if let Some(cmd) = line
                .strip_prefix("cmd=\"")
                .and_then(|r| r.strip_suffix('"'))
            {
                if cmd.is_empty() {
                    continue;
                }
                computed += 1;
                assert!(labels.contains(&cmd), "no case for {cmd}");
            }
        }
        let visible = Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .count();
        assert!(computed > visible, "{computed} commands computed");
        // The scripts' own command is no command to offer.
        for opts in text.lines().filter(|l| l.trim_start().starts_with("opts=")) {
            assert!(!opts.contains(COMPLETE_COMMAND), "{opts}");
        }
    }

    #[test]
    fn vm_options_ask_the_binary_and_nothing_falls_back_to_files() {
        let text = bash();
        let calls = text.matches("_vgpu__admin_vms vm-uuid").count();
        // Every command that takes --vm-uuid: the function table says which.
        let expected = registry::FUNCTIONS
            .iter()
            .filter(|f| f.takes("vm-uuid"))
            .count();
        assert_eq!(calls, expected);
        assert!(!text.contains("-o default"));
        assert!(text.contains(&format!("{COMPLETE_COMMAND} \"$1\" -- \"${{COMP_LINE")));
    }

    #[test]
    fn the_line_is_split_as_the_shell_would() {
        let w = |l: &str| shell_words(l);
        assert_eq!(
            w("vgpu-admin show-vm --vm-name "),
            ["vgpu-admin", "show-vm", "--vm-name", ""]
        );
        assert_eq!(w(r"a --vm-name web\ 0"), ["a", "--vm-name", "web 0"]);
        assert_eq!(w("a --vm-name \"web 0"), ["a", "--vm-name", "web 0"]);
        assert_eq!(w("a --vm-name 'web 0'"), ["a", "--vm-name", "web 0"]);
        assert_eq!(
            w("a --xapi https://m:443 x"),
            ["a", "--xapi", "https://m:443", "x"]
        );
        assert_eq!(w("a ''"), ["a", ""]);
    }

    #[test]
    fn an_older_or_foreign_file_is_not_read() {
        let dir = std::env::temp_dir().join(format!("vgpu-complete-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.db");
        assert!(registry_is_current(&missing));
        let text = dir.join("text.db");
        std::fs::write(&text, "not a database").unwrap();
        assert!(!registry_is_current(&text));
        let mut header = b"SQLite format 3\0".to_vec();
        header.resize(100, 0);
        let old = dir.join("old.db");
        std::fs::write(&old, &header).unwrap();
        assert!(!registry_is_current(&old));
        header[60..64].copy_from_slice(&(registry::SCHEMA_VERSION as u32).to_be_bytes());
        let current = dir.join("current.db");
        std::fs::write(&current, &header).unwrap();
        assert!(registry_is_current(&current));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
