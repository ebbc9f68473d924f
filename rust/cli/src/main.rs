//! `vgpu-admin`: parses the command line, hands the request to the registry core and renders the
//! answer. No rule lives here.

mod cli;
mod render;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command, Format};
use registry::api::{self, Outcome, Request};
use registry::config::Config;
use registry::ops::Ctx;
use registry::store::Store;
use registry::Error;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use xapi::{Auth, Client, ClientOptions, Endpoint};

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
        let message = text
            .lines()
            .next()
            .unwrap_or("invalid usage")
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

    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(registry::config::DEFAULT_CONFIG_PATH));
    let config = Config::load(&config_path).map_err(fail)?;
    let (function, args) = to_plugin_call(&cli.command, cli.yes).map_err(fail)?;
    let mut request = api::parse_request(&function, &args).map_err(fail)?;
    if !is_call {
        confirm_restart(&mut request);
    }

    let db = cli.db.clone().unwrap_or_else(|| config.db_path.clone());
    let client = connect(&cli, &config).map_err(fail)?;
    let mut store = Store::open(&db).map_err(fail)?;
    if let Some(b) = store.migration_backup() {
        eprintln!(
            "note: migrated {} to schema {}; the previous database was saved as {}",
            db.display(),
            registry::store::SCHEMA_VERSION,
            b.display()
        );
    }
    let mut ctx = Ctx {
        store: &mut store,
        xapi: &client,
        config: &config,
    };
    let outcome = api::execute(&mut ctx, request).map_err(fail)?;
    let failed = matches!(&outcome, Outcome::Sync(r) if r.failed > 0);

    let mut out = std::io::stdout().lock();
    let text = if is_call {
        let value =
            serde_json::to_value(&outcome).map_err(|e| fail(Error::Internal(e.to_string())))?;
        api::to_ascii_json(&value) + "\n"
    } else if cli.format == Format::Json {
        serde_json::to_string_pretty(&outcome).map_err(|e| fail(Error::Internal(e.to_string())))?
            + "\n"
    } else {
        render::render(&outcome, &function)
    };
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = out.write_all(text.as_bytes());
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
/// CONFIRMATION_REQUIRED when a running VM would be restarted.
fn confirm_restart(request: &mut Request) {
    let restart = match request {
        Request::Register(r) => &mut r.restart,
        Request::Update(r) => &mut r.restart,
        Request::Remove(_, r) => r,
        Request::Sync { restart, .. } => restart,
        _ => return,
    };
    if !restart.requested || restart.confirmed {
        return;
    }
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return;
    }
    eprint!("Restart the VM now if it is running (clean shutdown, then start)? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_ok() {
        let a = answer.trim().to_ascii_lowercase();
        restart.confirmed = a == "y" || a == "yes";
    }
}

fn connect(cli: &Cli, config: &Config) -> Result<Client, Error> {
    let url = cli.xapi.clone().unwrap_or_else(|| config.xapi.clone());
    let endpoint =
        Endpoint::parse(&url).map_err(|e| Error::invalid("xapi", &url, e.to_string()))?;
    let auth = if let Ok(session) = std::env::var("VGPU_XAPI_SESSION") {
        Auth::Session(session)
    } else if endpoint.is_unix() {
        Auth::LocalRoot
    } else {
        let user = cli
            .xapi_user
            .clone()
            .or_else(|| config.xapi_user.clone())
            .unwrap_or_else(|| "root".into());
        let password = match cli
            .xapi_password_file
            .as_ref()
            .or(config.xapi_password_file.as_ref())
        {
            Some(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| {
                    Error::invalid(
                        "xapi-password-file",
                        &path.display().to_string(),
                        e.to_string(),
                    )
                })?,
            None => std::env::var("VGPU_XAPI_PASSWORD").map_err(|_| {
                Error::Usage(format!(
                    "{url} needs a password: --xapi-password-file PATH or VGPU_XAPI_PASSWORD \
                     (or an existing session in VGPU_XAPI_SESSION)"
                ))
            })?,
        };
        Auth::Password { user, password }
    };
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(config.xapi_connect_timeout_s),
        read_timeout: Duration::from_secs(config.xapi_timeout_s),
        insecure_tls: cli.xapi_insecure || config.xapi_insecure,
        ca_file: cli
            .xapi_ca_file
            .clone()
            .or_else(|| config.xapi_ca_file.clone()),
    };
    Ok(Client::new(endpoint, auth, options))
}
