//! `vgpu-admin`: parses the command line, hands the request to the registry core and renders the
//! answer. No rule lives here.

mod cli;
mod complete;
mod man;
mod render;

use clap::{ArgMatches, CommandFactory, FromArgMatches};
use cli::{Cli, Command, Format};
use registry::error::KeyStyle;
use registry::report::ascii_json;
use registry::{Call, Error, ErrorCode, FunctionSpec, Service, Settings};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// The older admin tool's command names, as `mediator` actions.
const OLD_MEDIATOR_COMMANDS: [(&str, &str); 4] = [
    ("show-metrics", "metrics"),
    ("show-health", "health"),
    ("show-connections", "connections"),
    ("reload-config", "reload"),
];

/// `vgpu-admin show-metrics …` is `vgpu-admin mediator metrics …`.
fn older_names(mut raw: Vec<String>) -> Vec<String> {
    let at = raw
        .iter()
        .skip(1)
        .position(|a| OLD_MEDIATOR_COMMANDS.iter().any(|(old, _)| a == old))
        .map(|i| i + 1);
    if let Some(i) = at {
        if let Some((_, action)) = OLD_MEDIATOR_COMMANDS.iter().find(|(old, _)| raw[i] == *old) {
            raw[i] = "mediator".into();
            raw.insert(i + 1, (*action).into());
        }
    }
    raw
}

fn main() -> ExitCode {
    let raw: Vec<String> = older_names(std::env::args().collect());
    let (cli, matches) = match bridge_call(&raw) {
        Some(cli) => (cli, ArgMatches::default()),
        None => {
            let parsed = Cli::command()
                .try_get_matches_from(&raw)
                .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
            match parsed {
                Ok(p) => p,
                Err(e) => return clap_failure(e, &raw),
            }
        }
    };
    // `call` is the plugin API from the shell: its errors are JSON in the API's words.
    let is_call = matches!(cli.command, Command::Call { .. });
    let json = cli.format == Format::Json || is_call;
    let command = (!is_call)
        .then(|| matches.subcommand_name())
        .flatten()
        .and_then(FunctionSpec::for_command);
    match run(cli, &matches) {
        Ok(code) => code,
        Err(e) => {
            report_error(&e, json, command);
            ExitCode::from(e.code().exit_status())
        }
    }
}

/// `vgpu-admin call -- FUNCTION KEY=VALUE …`, the form the plugin's CLI bridge runs, read without
/// clap: building clap's whole command tree (every command, its options and help) and dropping
/// it took half of the instructions of a `call -- show`. clap reads exactly this form the same
/// way (after `--` every word is a value, and `call` has no option of its own, so no global
/// option is set); any other command line, `call` with options or without `--` included, is
/// clap's.
fn bridge_call(raw: &[String]) -> Option<Cli> {
    let [_, call, dashes, function, args @ ..] = raw else {
        return None;
    };
    (call == "call" && dashes == "--").then(|| Cli {
        config: None,
        db: None,
        xapi: None,
        xapi_user: None,
        xapi_password_file: None,
        xapi_insecure: false,
        xapi_ca_file: None,
        format: Format::Table,
        remote: false,
        yes: false,
        command: Command::Call {
            function: function.clone(),
            args: args.to_vec(),
        },
    })
}

/// clap's own refusals (unknown flag, missing value…) are usage errors: exit 2, and JSON when
/// the command line asked for JSON.
fn clap_failure(e: clap::Error, raw: &[String]) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let wants_json = raw.windows(2).any(|w| w[0] == "--format" && w[1] == "json")
        || raw.iter().any(|a| a == "--format=json")
        || raw.get(1).map(String::as_str) == Some("call");
    if wants_json {
        let text = e.render().to_string();
        // clap's message can span lines (e.g. the list of missing arguments): keep all of it up
        // to the usage section, on one line.
        let message = text
            .lines()
            .take_while(|l| !l.starts_with("Usage:"))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
            .trim_start_matches("error: ")
            .to_string();
        let doc = serde_json::json!({"error": {"code": "INVALID_ARGUMENT", "message": message,
            "details": {"usage": text.trim()}}});
        eprintln!("{doc}");
    } else {
        let _ = e.print();
    }
    ExitCode::from(2)
}

/// `command`: the subcommand that failed, when it is a function of the table; its errors speak
/// of options (`--vm-uuid`), not of the plugin API's keys.
fn report_error(e: &Error, json: bool, command: Option<&FunctionSpec>) {
    let message = match command {
        Some(spec) => message(e, spec),
        None => e.to_string(),
    };
    if json {
        let mut doc = e.to_json();
        doc["error"]["message"] = message.into();
        eprintln!("{}", ascii_json(&doc.to_string()));
    } else {
        eprintln!("error: {message}");
        if let Some(h) = hint(e.code(), &e.details(), command) {
            eprintln!("hint: {h}");
        }
    }
}

/// The core's message, with argument keys spelled as this command's options.
fn message(e: &Error, spec: &FunctionSpec) -> String {
    match e {
        Error::Usage(u) => u.render_as(KeyStyle::Cli, spec.command),
        Error::InvalidArgument {
            what,
            value,
            reason,
        } if registry::functions::arg(what).is_some() => {
            format!("invalid value {value:?} for --{what}: {reason}")
        }
        _ => e.to_string(),
    }
}

const XAPI_SOCKET: &str = "/var/lib/xcp/xapi";

/// A second line for people, in this front end's words: what to do next.
fn hint(
    code: ErrorCode,
    details: &serde_json::Value,
    command: Option<&FunctionSpec>,
) -> Option<String> {
    let permission = details["permission_denied"] == true;
    Some(match code {
        ErrorCode::AmbiguousVmName => "select the VM with --vm-uuid".into(),
        ErrorCode::NotRegistered if command.is_some_and(|c| c.name == "remove") => {
            "nothing to remove; the registered VMs: vgpu-admin list-vms".into()
        }
        ErrorCode::NotRegistered => "register it first with: vgpu-admin register-vm".into(),
        ErrorCode::DatabaseError | ErrorCode::ConfigError if permission => {
            "run as root on dom0, or pass --db/--config with files you may use".into()
        }
        ErrorCode::XapiError
            if details["endpoint"] == format!("unix:{XAPI_SOCKET}")
                && !std::path::Path::new(XAPI_SOCKET).exists() =>
        {
            "this is not a dom0 (no local xapi socket): use --xapi https://POOL-MASTER \
             --xapi-password-file FILE, and --remote to use the pool's registry"
                .into()
        }
        ErrorCode::InvalidArgument if details["setting"] == "xapi_password_file" => {
            "give it with --xapi-password-file FILE (or VGPU_XAPI_PASSWORD)".into()
        }
        ErrorCode::AlreadyRegistered => {
            "change it with update-vm, set-pool, set-priority or set-vm-id".into()
        }
        ErrorCode::VmIdInUse => format!(
            "the next free vm_id is {}",
            details["next_free_vm_id"].as_u64()?
        ),
        ErrorCode::VmNotFound => "list the pool's VMs with: vgpu-admin scan-vms".into(),
        ErrorCode::ConfirmationRequired => "add --yes to confirm the restart".into(),
        ErrorCode::DatabaseError if details["locked"] == true => format!(
            "another vgpu-admin, a vgpu plugin call (xe host-call-plugin ... plugin=vgpu) or a \
             sqlite3 shell usually holds it; see which with: fuser -v {0} {0}-wal, and try again \
             when it ends",
            details["path"].as_str().unwrap_or("the registry")
        ),
        ErrorCode::InvalidArgument if details["argument"] == "stored vm_id" => {
            "give the VM a new id with --vm-id (update-vm or set-vm-id)".into()
        }
        _ => return None,
    })
}

fn run(cli: Cli, matches: &ArgMatches) -> Result<ExitCode, Error> {
    let (function, args) = match &cli.command {
        // Generators and the table need nothing else.
        Command::Completions { shell } => {
            write_out(&complete::script(*shell));
            return Ok(ExitCode::SUCCESS);
        }
        Command::Complete { what, words } => {
            let found = complete::vm_candidates(*what, words);
            write_out(&found.iter().map(|c| format!("{c}\n")).collect::<String>());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man { page, out_dir } => {
            match out_dir {
                Some(dir) => {
                    let written = man::write_all(dir)?;
                    let list: String = written
                        .iter()
                        .map(|p| format!("{}\n", p.display()))
                        .collect();
                    write_out(&list);
                }
                None => man::print(page.as_deref())?,
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Functions => {
            let text = if cli.format == Format::Json {
                pretty(&registry::functions::table_json())
            } else {
                render::functions()
            };
            write_out(&text);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Call { function, args } => (function.clone(), call_args(args)?),
        _ => plugin_call(matches)?,
    };
    let is_call = matches!(cli.command, Command::Call { .. });

    // Validate before touching XAPI or the registry: bad input changes nothing.
    let mut call = Call::parse(&function, &args)?;
    if !is_call && call.wants_confirmation() && ask_restart_confirmation() {
        call.confirm();
    }
    let spec = call.function();
    let settings = Settings {
        config_path: cli.config.clone(),
        db: cli.db.clone(),
        xapi: cli.xapi.clone(),
        xapi_user: cli.xapi_user.clone(),
        xapi_password_file: cli.xapi_password_file.clone(),
        xapi_insecure: cli.xapi_insecure,
        xapi_ca_file: cli.xapi_ca_file.clone(),
        session: None,
        remote: cli.remote,
        on_wait: Some(say_waiting),
    };
    let service = Service::new(&settings)?;
    let answer = service.run(call)?;
    if let Some(b) = answer.migration_backup {
        eprintln!(
            "note: migrated the registry {} to schema {}; the previous database was saved as {}",
            service.db_path().display(),
            registry::SCHEMA_VERSION,
            b.display()
        );
    }
    let outcome = answer.outcome;
    if is_call {
        write_out(&(outcome.to_ascii_json() + "\n"));
    } else if cli.format == Format::Json {
        // Straight to stdout: the document of a large pool's scan is tens of megabytes.
        let _ = write_json(std::io::stdout().lock(), &outcome);
    } else {
        // A table's column widths depend on every row, so it is laid out whole first.
        write_out(&render::render(&outcome, spec));
    }
    Ok(if outcome.partly_failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn pretty(value: &impl serde::Serialize) -> String {
    // Serialising the contract's types cannot fail: string keys only.
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}

/// The pretty JSON document of `value` and a newline, serialised into `out` through a buffer,
/// never built as one string; the same bytes as [`pretty`].
fn write_json(out: impl Write, value: &impl serde::Serialize) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    // Serialising the contract's types cannot fail (string keys only): an error is the writer's.
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    out.flush()
}

fn write_out(text: &str) {
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// `vgpu-admin call FN KEY=VALUE …`: the arguments as given.
fn call_args(args: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut a = BTreeMap::new();
    for kv in args {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::invalid("argument", kv, "expected KEY=VALUE"))?;
        if a.insert(k.to_string(), v.to_string()).is_some() {
            return Err(Error::invalid("argument", k, "given twice"));
        }
    }
    Ok(a)
}

/// A subcommand as the plugin API call it stands for: the function table names the function
/// and its argument keys, and each key is the long option of the same name.
fn plugin_call(matches: &ArgMatches) -> Result<(String, BTreeMap<String, String>), Error> {
    let (command, sub) = matches
        .subcommand()
        .ok_or_else(|| Error::Internal("no subcommand".into()))?;
    let spec = FunctionSpec::for_command(command)
        .ok_or_else(|| Error::Internal(format!("{command} is not in the function table")))?;
    let mut args = BTreeMap::new();
    for key in spec.keys() {
        let id = key.replace('-', "_");
        let value = if spec.flags.contains(&key) {
            let set = sub.try_get_one::<bool>(&id).ok().flatten().copied();
            set.filter(|on| *on).map(|_| "true".to_string())
        } else {
            let value = sub.try_get_one::<String>(&id).ok().flatten();
            value.cloned()
        };
        if let Some(v) = value {
            args.insert(key.to_string(), v);
        }
    }
    Ok((spec.name.to_string(), args))
}

fn say_waiting(db: &std::path::Path) {
    eprintln!(
        "waiting for the registry {}: another process is changing it (another vgpu-admin or the \
         vgpu plugin); this command goes on when it is done",
        db.display()
    );
}

/// On a terminal, a restart without `--yes` asks; elsewhere the core refuses with
/// CONFIRMATION_REQUIRED when a running VM would be restarted. True when the user said yes.
fn ask_restart_confirmation() -> bool {
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return false;
    }
    eprint!("Restart the VM now if it is running (clean shutdown, then start)? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use registry::report::{Outcome, ScanReport};

    /// A scan of `n` registered and `n` unregistered VMs, names not all ASCII.
    fn scan_report(n: usize) -> Outcome {
        let registered: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                serde_json::json!({
                    "vm_uuid": format!("00000000-0000-4000-8000-{i:012}"),
                    "vm_name": format!("rendu-{i} \u{e9}\u{2603} \"q\""),
                    "vm_id": i + 1, "pool": (["A", "B"][i % 2]), "priority": "high",
                    "created_at": null, "updated_at": "2026-01-02T03:04:05Z",
                    "weight": 50, "max_jobs_per_sec": 0, "max_queue_depth": 0,
                    "quarantined": false, "error_count": 0,
                    "power_state": "Running",
                    "device_model_args": format!("-device vgpu-cuda,pool_id=A,vm_id={}", i + 1),
                    "status": if i % 3 == 0 { "drift" } else { "configured" },
                    "drift": if i % 3 == 0 {
                        serde_json::json!([{"field": "pool", "registry": "B", "device": null}])
                    } else {
                        serde_json::json!([])
                    },
                    "mirror": "missing",
                })
            })
            .collect();
        let unregistered: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                serde_json::json!({
                    "vm_uuid": format!("10000000-0000-4000-8000-{i:012}"),
                    "vm_name": format!("vm-{i}\t\u{1F600}"),
                    "power_state": "Halted", "device_model_args": null,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "registered": registered, "unregistered": unregistered, "stale": [],
            "summary": {"total_vms": 2 * n, "registered": n, "unregistered": n, "stale": 0,
                        "configured": n - n.div_ceil(3), "drift": n.div_ceil(3), "not_applied": 0,
                        "mirror_drift": n},
        });
        let report: ScanReport = serde_json::from_value(doc).unwrap();
        assert_eq!(report.registered.len(), n);
        Outcome::Scan(report)
    }

    fn words(line: &[&str]) -> Vec<String> {
        line.iter().map(|w| w.to_string()).collect()
    }

    /// The bridge's command lines are read as clap reads them, word for word, and every other
    /// command line is left to clap.
    #[test]
    fn the_bridge_form_is_read_as_clap_reads_it() {
        let bridged: [&[&str]; 7] = [
            &["vgpu-admin", "call", "--", "show", "vm-uuid=1234"],
            &["vgpu-admin", "call", "--", "list-pools"],
            &[
                "vgpu-admin",
                "call",
                "--",
                "set-vm-id",
                "vm-name=a b",
                "vm-id=3",
                "x=--y",
                "=",
                "k=v=w",
            ],
            &[
                "vgpu-admin",
                "call",
                "--",
                "--help",
                "--format=json",
                "-y",
                "--",
                "caf\u{e9}=\u{1F600}",
            ],
            &["vgpu-admin", "call", "--", "", ""],
            &["vgpu-admin", "call", "--", "no-such-function", "not-a-pair"],
            &[
                "/usr/bin/vgpu-admin",
                "call",
                "--",
                "register",
                "vm-uuid=u",
                "pool=A",
                "priority=high",
            ],
        ];
        for line in bridged {
            let raw = words(line);
            let fast = bridge_call(&raw).unwrap_or_else(|| panic!("{line:?} is the bridge's form"));
            let clap = Cli::try_parse_from(&raw).unwrap();
            let (
                Command::Call { function, args },
                Command::Call {
                    function: f,
                    args: a,
                },
            ) = (&fast.command, &clap.command)
            else {
                panic!(
                    "{line:?}: not read as call: {:?} / {:?}",
                    fast.command, clap.command
                );
            };
            assert_eq!((function, args), (f, a), "{line:?}");
            assert_eq!(function, line[3]);
            assert_eq!(args.len(), line.len() - 4);
            // No global option: the same settings as clap's defaults.
            assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{line:?}");
        }
        let not_bridged: [&[&str]; 8] = [
            &["vgpu-admin", "call", "show", "vm-uuid=1"],
            &["vgpu-admin", "call", "--"],
            &["vgpu-admin", "--format", "json", "call", "--", "show"],
            &["vgpu-admin", "call", "--db", "/x", "--", "show"],
            &["vgpu-admin", "show-vm", "--", "show"],
            &["vgpu-admin", "--", "call", "show"],
            &["vgpu-admin"],
            &[],
        ];
        for line in not_bridged {
            assert!(bridge_call(&words(line)).is_none(), "{line:?}");
        }
    }

    /// The document written as a stream is the one built whole before, byte for byte.
    #[test]
    fn the_streamed_json_document_is_the_built_one() {
        for n in [0, 1, 2000] {
            let outcome = scan_report(n);
            let mut streamed = Vec::new();
            write_json(&mut streamed, &outcome).unwrap();
            let built = pretty(&outcome);
            assert!(built.len() > 100 * n, "{}", built.len());
            assert!(
                streamed == built.as_bytes(),
                "{n} VMs: the documents differ"
            );
        }
    }
}
