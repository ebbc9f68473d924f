//! `vgpu-admin`: parses the command line, hands the request to the registry core and renders the
//! answer. No rule lives here.

mod cli;
mod render;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command, Format};
use registry::api::{self, Function, Outcome, Request};
use registry::service::{Service, Settings};
use registry::Error;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    let cli = match Cli::try_parse_from(&raw) {
        Ok(c) => c,
        Err(e) => return clap_failure(e, &raw),
    };
    let format = cli.format;
    match run(cli) {
        Ok(code) => code,
        Err((e, json)) => {
            report_error(&e, json || format == Format::Json);
            ExitCode::from(e.code().exit_status() as u8)
        }
    }
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

fn report_error(e: &Error, json: bool) {
    if json {
        eprintln!("{}", api::to_ascii_json(&e.to_json()));
    } else {
        eprintln!("error: {e}");
        if let Some(h) = e.hint() {
            eprintln!("hint: {h}");
        }
    }
}

type Failure = (Error, bool);

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let plain = |e: Error| (e, false);
    // Generators need nothing else.
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "vgpu-admin", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| plain(Error::Internal(format!("writing the man page: {e}"))))?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let is_call = matches!(cli.command, Command::Call { .. });
    let fail = |e: Error| (e, is_call);

    let (function, mut args) = to_plugin_call(&cli.command, cli.yes).map_err(fail)?;
    // Validate before touching XAPI or the registry: bad input changes nothing. The forwarding
    // marker is the service's business, not an argument of the function.
    let mut plain_args = args.clone();
    plain_args.remove(registry::service::FORWARDED_BY);
    let request = api::parse_request(&function, &plain_args).map_err(fail)?;
    if !is_call && ask_restart_confirmation(&request) {
        args.insert("yes".into(), "true".into());
    }
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
    };
    let service = Service::new(&settings).map_err(fail)?;
    let (value, backup) = service.call_noted(&function, &args).map_err(fail)?;
    if let Some(b) = backup {
        eprintln!(
            "note: migrated the registry {} to schema {}; the previous database was saved as {}",
            service.db.display(),
            registry::store::SCHEMA_VERSION,
            b.display()
        );
    }
    let f = Function::parse(&function).map_err(fail)?;
    let outcome = Outcome::from_json(f, value.clone()).map_err(fail)?;
    let failed = matches!(&outcome, Outcome::Sync(r) if r.failed > 0);

    let text = if is_call {
        api::to_ascii_json(&value) + "\n"
    } else if cli.format == Format::Json {
        serde_json::to_string_pretty(&value).map_err(|e| fail(Error::Internal(e.to_string())))?
            + "\n"
    } else {
        render::render(&outcome, f.name())
    };
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Turns a subcommand into the plugin API's function name and string arguments, so the CLI
/// takes exactly the path the plugin takes.
fn to_plugin_call(cmd: &Command, yes: bool) -> Result<(String, BTreeMap<String, String>), Error> {
    let mut a = BTreeMap::new();
    let mut put = |k: &str, v: Option<&String>| {
        if let Some(v) = v {
            a.insert(k.to_string(), v.clone());
        }
    };
    let f = match cmd {
        Command::ScanVms => "scan",
        Command::RegisterVm {
            vm,
            pool,
            priority,
            vm_id,
            restart,
        } => {
            put("vm-uuid", vm.vm_uuid.as_ref());
            put("vm-name", vm.vm_name.as_ref());
            put("pool", Some(pool));
            put("priority", Some(priority));
            put("vm-id", vm_id.as_ref());
            put_restart(&mut a, restart.restart, yes);
            "register"
        }
        Command::SetVmId { vm, vm_id, restart } => {
            put("vm-uuid", vm.vm_uuid.as_ref());
            put("vm-name", vm.vm_name.as_ref());
            put("vm-id", Some(vm_id));
            put_restart(&mut a, restart.restart, yes);
            "set-vm-id"
        }
        Command::SetPool { vm, pool, restart } => {
            put("vm-uuid", vm.vm_uuid.as_ref());
            put("vm-name", vm.vm_name.as_ref());
            put("pool", Some(pool));
            put_restart(&mut a, restart.restart, yes);
            "set-pool"
        }
        Command::SetPriority {
            vm,
            priority,
            restart,
        } => {
            put("vm-uuid", vm.vm_uuid.as_ref());
            put("vm-name", vm.vm_name.as_ref());
            put("priority", Some(priority));
            put_restart(&mut a, restart.restart, yes);
            "set-priority"
        }
        Command::UpdateVm {
            vm,
            pool,
            priority,
            vm_id,
            restart,
        } => {
            put("vm-uuid", vm.vm_uuid.as_ref());
            put("vm-name", vm.vm_name.as_ref());
            put("pool", pool.as_ref());
            put("priority", priority.as_ref());
            put("vm-id", vm_id.as_ref());
            put_restart(&mut a, restart.restart, yes);
            "update"
        }
        Command::ShowVm { vm } => {
            put("vm-uuid", vm.vm_uuid.as_ref());
            put("vm-name", vm.vm_name.as_ref());
            "show"
        }
        Command::ListVms { pool, priority } => {
            put("pool", pool.as_ref());
            put("priority", priority.as_ref());
            "list"
        }
        Command::ListPools => "list-pools",
        Command::ShowPool { pool } => {
            put("pool", Some(pool));
            "show-pool"
        }
        Command::RemoveVm { vm, restart } => {
            put("vm-uuid", vm.vm_uuid.as_ref());
            put("vm-name", vm.vm_name.as_ref());
            put_restart(&mut a, restart.restart, yes);
            "remove"
        }
        Command::Status => "status",
        Command::Sync {
            vm_uuid,
            vm_name,
            all,
            dry_run,
            restart,
        } => {
            put("vm-uuid", vm_uuid.as_ref());
            put("vm-name", vm_name.as_ref());
            if *all {
                a.insert("all".into(), "true".into());
            }
            if *dry_run {
                a.insert("dry-run".into(), "true".into());
            }
            put_restart(&mut a, restart.restart, yes);
            "sync"
        }
        Command::Call { function, args } => {
            for kv in args {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| Error::invalid("argument", kv, "expected KEY=VALUE"))?;
                if a.insert(k.to_string(), v.to_string()).is_some() {
                    return Err(Error::invalid("argument", k, "given twice"));
                }
            }
            return Ok((function.clone(), a));
        }
        Command::Completions { .. } | Command::Man => {
            return Err(Error::Internal("generators are handled earlier".into()))
        }
    };
    Ok((f.to_string(), a))
}

fn put_restart(a: &mut BTreeMap<String, String>, restart: bool, yes: bool) {
    if restart {
        a.insert("restart".into(), "true".into());
        if yes {
            a.insert("yes".into(), "true".into());
        }
    }
}

/// On a terminal, `--restart` without `--yes` asks; elsewhere the core refuses with
/// CONFIRMATION_REQUIRED when a running VM would be restarted. True when the user said yes.
fn ask_restart_confirmation(request: &Request) -> bool {
    let restart = match request {
        Request::Register(r) => r.restart,
        Request::Update(r) => r.restart,
        Request::Remove(_, r) => *r,
        Request::Sync { restart, .. } => *restart,
        _ => return false,
    };
    if !restart.requested || restart.confirmed {
        return false;
    }
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
