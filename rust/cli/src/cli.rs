//! The command line, as clap definitions. Doc comments are the help text; `after_help` holds
//! each command's examples, one `Example:` line each (a long one continued after ` \`), which the
//! manual pages render too.

use clap::builder::{PossibleValue, StringValueParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum, ValueHint};
use registry::model::{Pool, Priority};
use std::ffi::OsStr;
use std::path::PathBuf;

/// The program's name.
pub const BIN: &str = "vgpu-admin";

/// The width help must fit: a terminal of 80 columns.
pub const HELP_WIDTH: usize = 80;

const EXAMPLES: &str = "\
Examples:
  vgpu-admin scan-vms
  vgpu-admin register-vm --vm-name render-01 --pool B --priority medium
  vgpu-admin register-vm --pool A --priority high --vm-id 1 \\
      --vm-uuid 48df46e9-31b9-4aea-b4b8-678e9a3c70d6
  vgpu-admin set-vm-id --vm-name render-01 --vm-id 100 --restart --yes
  vgpu-admin list-vms --pool A --format json

Each command's options: vgpu-admin COMMAND --help, or man vgpu-admin-COMMAND.

Exit status: 0 success, 2 invalid usage or argument, 1 any other failure.";

/// Manage the vgpu registry of an XCP-ng pool: which VMs share a GPU, in which pool (A/B), at
/// which priority (low/medium/high) and under which vm_id.
///
/// Each VM's settings live in the registry (SQLite, default /etc/vgpu/vgpu_config.db) and in the
/// VM's platform:device-model-args, which QEMU reads when the VM starts.
#[derive(Debug, Parser)]
#[command(name = BIN, version, after_help = EXAMPLES, max_term_width = 100)]
#[command(next_help_heading = "Global Options", mut_subcommands = fit_usage)]
pub struct Cli {
    /// Configuration file (TOML; a missing file means defaults) [env: VGPU_CONFIG]
    /// [default: /etc/vgpu/vgpu.conf].
    #[arg(long, global = true, value_name = "PATH", value_hint = ValueHint::FilePath)]
    pub config: Option<PathBuf>,

    /// Registry database [env: VGPU_DB] [default: config db_path, else
    /// /etc/vgpu/vgpu_config.db].
    #[arg(long, global = true, value_name = "PATH", value_hint = ValueHint::FilePath)]
    pub db: Option<PathBuf>,

    /// XAPI endpoint: unix:/path, http://host[:port] or https://host[:port] [env: VGPU_XAPI]
    /// [default: config xapi, else unix:/var/lib/xcp/xapi].
    #[arg(long, global = true, value_name = "URL", value_hint = ValueHint::Url)]
    pub xapi: Option<String>,

    /// User for http(s) XAPI endpoints [env: VGPU_XAPI_USER] [default: root].
    #[arg(long, global = true, value_name = "USER", value_hint = ValueHint::Username)]
    pub xapi_user: Option<String>,

    /// File holding the XAPI password (else the VGPU_XAPI_PASSWORD environment variable).
    #[arg(long, global = true, value_name = "PATH", value_hint = ValueHint::FilePath)]
    pub xapi_password_file: Option<PathBuf>,

    /// Accept any TLS certificate from an https:// XAPI (self-signed pool certificates).
    #[arg(long, global = true)]
    pub xapi_insecure: bool,

    /// Trust this PEM certificate (e.g. the pool master's) for https:// XAPI.
    #[arg(long, global = true, value_name = "PATH", value_hint = ValueHint::FilePath)]
    pub xapi_ca_file: Option<PathBuf>,

    /// Output format: table for people, json for programs.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Forward every command to the pool master's vgpu plugin (config mode = "remote"): how a
    /// workstation drives a pool with --xapi https://master. Pool members always forward.
    #[arg(long, global = true)]
    pub remote: bool,

    /// Answer yes to confirmations (needed for --restart without a terminal).
    #[arg(short = 'y', long, global = true)]
    pub yes: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every VM of the pool against the registry: registered, unregistered, stale.
    ///
    /// One XAPI call lists the pool (templates, snapshots and control domains excluded). Each
    /// registered VM is `configured` (device-model-args carry exactly the registry values),
    /// `drift` (they differ; the fields are listed) or `not_applied` (no vgpu device).
    /// Stale registrations name VMs that no longer exist.
    #[command(
        name = "scan-vms",
        after_help = "Example: vgpu-admin scan-vms --format json"
    )]
    ScanVms,

    /// Register a VM and write its vgpu device into device-model-args.
    ///
    /// Without --vm-id the lowest free id is assigned. With --vm-uuid, --vm-name is the name to
    /// store (default: the VM's name-label); alone, --vm-name selects the VM by name-label.
    #[command(
        name = "register-vm",
        after_help = "\
Example: vgpu-admin register-vm --vm-name render-01 --pool B --priority medium
Example: vgpu-admin register-vm --pool A --priority high --vm-id 1 \\
             --vm-uuid 48df46e9-31b9-4aea-b4b8-678e9a3c70d6"
    )]
    RegisterVm {
        #[command(flatten)]
        vm: VmTarget,
        /// The registry pool.
        #[arg(long, alias = "pool-id", value_parser = pool_values())]
        pool: String,
        /// The priority (0, 1 and 2 are accepted for low, medium and high).
        #[arg(long, value_parser = priority_values())]
        priority: String,
        /// vm_id, 1 to 4294967295 [default: the lowest free id].
        #[arg(long, value_name = "ID", value_hint = ValueHint::Other, allow_negative_numbers = true)]
        vm_id: Option<String>,
        #[command(flatten)]
        restart: RestartArg,
    },

    /// Change a VM's vm_id (it must be unused).
    #[command(
        name = "set-vm-id",
        after_help = "Example: vgpu-admin set-vm-id --vm-name render-01 --vm-id 100"
    )]
    SetVmId {
        #[command(flatten)]
        vm: VmSelector,
        /// New vm_id, 1 to 4294967295.
        #[arg(long, value_name = "ID", value_hint = ValueHint::Other, allow_negative_numbers = true)]
        vm_id: String,
        #[command(flatten)]
        restart: RestartArg,
    },

    /// Change a VM's pool.
    #[command(
        name = "set-pool",
        after_help = "Example: vgpu-admin set-pool --vm-name render-01 --pool B"
    )]
    SetPool {
        #[command(flatten)]
        vm: VmSelector,
        /// The registry pool.
        #[arg(long, alias = "pool-id", value_parser = pool_values())]
        pool: String,
        #[command(flatten)]
        restart: RestartArg,
    },

    /// Change a VM's priority.
    #[command(
        name = "set-priority",
        after_help = "Example: vgpu-admin set-priority --vm-name render-01 --priority low"
    )]
    SetPriority {
        #[command(flatten)]
        vm: VmSelector,
        /// The priority (0, 1 and 2 are accepted for low, medium and high).
        #[arg(long, value_parser = priority_values())]
        priority: String,
        #[command(flatten)]
        restart: RestartArg,
    },

    /// Change several settings of a VM at once (at least one).
    #[command(
        name = "update-vm",
        after_help = "Example: vgpu-admin update-vm --vm-name render-01 --priority high --vm-id 7"
    )]
    UpdateVm {
        #[command(flatten)]
        vm: VmSelector,
        /// The registry pool.
        #[arg(long, alias = "pool-id", value_parser = pool_values())]
        pool: Option<String>,
        /// The priority (0, 1 and 2 are accepted for low, medium and high).
        #[arg(long, value_parser = priority_values())]
        priority: Option<String>,
        /// vm_id, 1 to 4294967295.
        #[arg(long, value_name = "ID", value_hint = ValueHint::Other, allow_negative_numbers = true)]
        vm_id: Option<String>,
        #[command(flatten)]
        restart: RestartArg,
    },

    /// A VM's registration with its live state: power state, device-model-args, status.
    #[command(
        name = "show-vm",
        after_help = "Example: vgpu-admin show-vm --vm-name cuda-dev"
    )]
    ShowVm {
        #[command(flatten)]
        vm: VmSelector,
    },

    /// Registered VMs, ordered by pool, priority (high first) and vm_id.
    #[command(
        name = "list-vms",
        after_help = "Example: vgpu-admin list-vms --pool A --priority high"
    )]
    ListVms {
        /// Only this pool.
        #[arg(long, alias = "pool-id", value_parser = pool_values())]
        pool: Option<String>,
        /// Only this priority.
        #[arg(long, value_parser = priority_values())]
        priority: Option<String>,
        /// Only quarantined VMs.
        #[arg(long)]
        quarantined: bool,
    },

    /// The pools with their VM counts, per priority.
    #[command(name = "list-pools", after_help = "Example: vgpu-admin list-pools")]
    ListPools,

    /// One pool with its VMs.
    #[command(
        name = "show-pool",
        after_help = "Example: vgpu-admin show-pool --pool A"
    )]
    ShowPool {
        /// The registry pool.
        #[arg(long, alias = "pool-id", value_parser = pool_values())]
        pool: String,
    },

    /// Remove a VM's registration and its vgpu device from device-model-args.
    ///
    /// A stale registration (the VM no longer exists) is removed from the registry only.
    #[command(
        name = "remove-vm",
        after_help = "Example: vgpu-admin remove-vm --vm-name render-01"
    )]
    RemoveVm {
        #[command(flatten)]
        vm: VmSelector,
        #[command(flatten)]
        restart: RestartArg,
    },

    /// A one-screen summary: pools, counts, drift, unregistered and stale VMs.
    #[command(after_help = "Example: vgpu-admin status")]
    Status,

    /// Re-apply registry values to VMs in drift or not applied; refresh stored names.
    #[command(after_help = "Example: vgpu-admin sync --all --dry-run")]
    Sync {
        /// Only this VM.
        #[arg(long, value_name = "UUID", alias = "uuid", value_hint = ValueHint::Other)]
        #[arg(conflicts_with = "all")]
        vm_uuid: Option<String>,
        /// Only this VM, by name-label.
        #[arg(long, value_name = "NAME", alias = "name", value_hint = ValueHint::Other)]
        #[arg(conflicts_with = "all")]
        vm_name: Option<String>,
        /// Every registered VM.
        #[arg(long)]
        all: bool,
        /// Show what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        restart: RestartArg,
    },

    /// Refresh this host's copy of the registry from the pool's copy in XAPI.
    ///
    /// On a pool member this rewrites the read-only replica the GPU mediator reads, in place; on
    /// the master it brings the primary registry to the pool's generation. Runs on the host it
    /// is called on (never forwarded); the RPM's timer runs it at boot and every few minutes.
    #[command(after_help = "Example: vgpu-admin refresh")]
    Refresh {
        /// Then ask this host's GPU mediator to reload its configuration.
        #[arg(long)]
        reload: bool,
    },

    /// Set a VM's scheduling weight for the GPU mediator (1 to 100, default 50).
    ///
    /// Stored, copied to every host's replica, and read by the mediator on every request.
    #[command(
        name = "set-weight",
        after_help = "Example: vgpu-admin set-weight --vm-name render-01 --weight 80"
    )]
    SetWeight {
        #[command(flatten)]
        vm: VmSelector,
        /// 1 to 100.
        #[arg(long, value_name = "1..100", allow_negative_numbers = true)]
        weight: String,
    },

    /// Limit the GPU jobs a VM may submit per second (0 = unlimited), and its queue depth.
    ///
    /// Mediators load rate limits when they reload: every host's mediator is asked to, and the
    /// exit status is 1 when one could not load it (the limit is stored all the same).
    #[command(
        name = "set-rate-limit",
        after_help = "Example: vgpu-admin set-rate-limit --vm-name web1 --rate 200 --queue-depth 16"
    )]
    SetRateLimit {
        #[command(flatten)]
        vm: VmSelector,
        /// Jobs per second; 0 = unlimited.
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        rate: String,
        /// Jobs waiting at most; 0 = unlimited; kept as it is when not given.
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        queue_depth: Option<String>,
    },

    /// Have the GPU mediators reject new GPU work from a VM.
    ///
    /// It takes effect when each mediator reloads: the exit status is 1, naming the host and the
    /// command that retries, when one could not.
    #[command(
        name = "quarantine-vm",
        after_help = "Example: vgpu-admin quarantine-vm --vm-name render-01"
    )]
    QuarantineVm {
        #[command(flatten)]
        vm: VmSelector,
    },

    /// Lift a VM's quarantine (and zero its error count).
    #[command(
        name = "clear-quarantine",
        after_help = "Example: vgpu-admin clear-quarantine --vm-name render-01"
    )]
    ClearQuarantine {
        #[command(flatten)]
        vm: VmSelector,
    },

    /// The registered VMs with their mediator weights.
    #[command(name = "show-weights", after_help = "Example: vgpu-admin show-weights")]
    ShowWeights {
        /// Only this pool.
        #[arg(long, alias = "pool-id", value_parser = pool_values())]
        pool: Option<String>,
    },

    /// The registered VMs with their rate limits, queue depths and quarantine.
    #[command(
        name = "show-rate-limits",
        after_help = "Example: vgpu-admin show-rate-limits"
    )]
    ShowRateLimits {
        /// Only this pool.
        #[arg(long, alias = "pool-id", value_parser = pool_values())]
        pool: Option<String>,
    },

    /// Ask a GPU mediator over its admin socket: metrics, health, connections or reload.
    ///
    /// This host's mediator by default; --host asks another host's through its vgpu plugin,
    /// --all-hosts every host's. The older names show-metrics, show-health, show-connections and
    /// reload-config work too.
    #[command(
        after_help = "Examples:\n  vgpu-admin mediator metrics --prometheus\n  vgpu-admin mediator reload --all-hosts"
    )]
    Mediator {
        /// metrics, health, connections or reload.
        #[arg(value_parser = ["metrics", "health", "connections", "reload"])]
        action: String,
        /// Metrics in Prometheus' text format (parsed into samples in JSON).
        #[arg(long)]
        prometheus: bool,
        /// Another host (uuid or name-label), through its vgpu plugin.
        #[arg(long, value_name = "HOST", conflicts_with = "all_hosts")]
        host: Option<String>,
        /// Every host of the pool.
        #[arg(long)]
        all_hosts: bool,
    },

    /// Register VMs that already carry a vgpu device (set up by older tools or by hand).
    ///
    /// The device's pool_id, priority and vm_id become the registration, and the device entry
    /// is rewritten in the standard form, keeping every other token. VMs that cannot be adopted
    /// (two VMs claiming one vm_id, an id already registered, invalid values) are listed with
    /// the reason and left untouched; the exit status is then 1.
    #[command(after_help = "Example: vgpu-admin adopt --all --dry-run")]
    Adopt {
        /// Only this VM.
        #[arg(long, value_name = "UUID", alias = "uuid", value_hint = ValueHint::Other)]
        #[arg(conflicts_with = "all")]
        vm_uuid: Option<String>,
        /// Only this VM, by name-label.
        #[arg(long, value_name = "NAME", alias = "name", value_hint = ValueHint::Other)]
        #[arg(conflicts_with = "all")]
        vm_name: Option<String>,
        /// Every VM that carries a vgpu device and is not registered.
        #[arg(long)]
        all: bool,
        /// Show each VM's device-model-args before and after, change nothing.
        #[arg(long)]
        dry_run: bool,
    },

    /// Rebuild the registry on the pool master from the pool's copy in XAPI, then adopt.
    ///
    /// For a registry file that was lost or damaged: whatever was there is first copied to
    /// vgpu_config.db.pre-rebuild-<time>.bak beside it; then every registration the copy in
    /// XAPI holds is restored, and VMs that carry a device but have no copy are adopted.
    #[command(after_help = "Example: vgpu-admin rebuild --dry-run")]
    Rebuild {
        /// Show what would be restored and adopted, change nothing.
        #[arg(long)]
        dry_run: bool,
    },

    /// Call the plugin API from the shell: same functions, KEY=VALUE arguments, JSON result.
    ///
    /// The result is printed as one line of ASCII JSON; an error as a JSON object on stderr.
    #[command(
        after_help = "Example: vgpu-admin call register vm-name=render-01 pool=A priority=high"
    )]
    Call {
        /// Function name (the list: vgpu-admin functions).
        #[arg(value_parser = function_names())]
        function: String,
        /// Arguments as KEY=VALUE (each function's keys: vgpu-admin functions).
        #[arg(value_name = "KEY=VALUE", value_hint = ValueHint::Other)]
        args: Vec<String>,
    },

    /// The plugin API's function table: every function, its arguments and the CLI command
    /// that calls it (`--format json` for programs: the plugin and the Xen Orchestra plugin are
    /// tested against it).
    #[command(after_help = "Example: vgpu-admin functions --format json")]
    Functions,

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// Completes commands, options and the values of --pool, --priority, --format and of the
    /// path options. In bash, --vm-uuid and --vm-name also complete from the registry (the one
    /// the command line names, as the command would use it), and register-vm's from the pool's
    /// unregistered VMs through XAPI; a lookup that fails or takes over a second offers nothing.
    #[command(
        after_help = "Example: vgpu-admin completions bash > /etc/bash_completion.d/vgpu-admin"
    )]
    Completions { shell: clap_complete::Shell },

    /// Print a manual page (roff), or write them all with --out-dir.
    ///
    /// Pages: vgpu-admin(1), one vgpu-admin-COMMAND(1) per command, and vgpu.conf(5), the
    /// configuration file.
    #[command(after_help = "\
Example: vgpu-admin man --out-dir /usr/share/man
Example: vgpu-admin man register-vm | man -l -")]
    Man {
        /// The page to print: a command (its vgpu-admin-COMMAND page) or vgpu.conf [default:
        /// vgpu-admin].
        #[arg(
            value_name = "PAGE",
            value_parser = man_pages(),
            hide_possible_values = true,
            conflicts_with = "out_dir"
        )]
        page: Option<String>,
        /// Write every page into this man tree (DIR/man1, DIR/man5) and print their paths.
        #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
        out_dir: Option<PathBuf>,
    },

    /// Completion candidates for the completion scripts: one per line, nothing on failure.
    #[command(name = COMPLETE_COMMAND, hide = true)]
    Complete {
        what: VmValue,
        /// The command line as typed up to the cursor (in one word).
        #[arg(last = true)]
        words: Vec<String>,
    },
}

/// The hidden command the bash completion calls for VM uuids and names.
pub const COMPLETE_COMMAND: &str = "__complete";

/// What a completion candidate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VmValue {
    VmUuid,
    VmName,
}

/// Exactly one of --vm-uuid / --vm-name.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct VmSelector {
    /// The VM's UUID.
    #[arg(long, value_name = "UUID", alias = "uuid", value_hint = ValueHint::Other)]
    pub vm_uuid: Option<String>,
    /// The VM's name-label (must match exactly one VM).
    #[arg(long, value_name = "NAME", alias = "name", value_hint = ValueHint::Other)]
    pub vm_name: Option<String>,
}

/// --vm-uuid, --vm-name, or both (then --vm-name is the name to store).
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct VmTarget {
    /// The VM's UUID.
    #[arg(long, value_name = "UUID", alias = "uuid", value_hint = ValueHint::Other)]
    pub vm_uuid: Option<String>,
    /// With --vm-uuid: the name to store; alone: the VM's name-label.
    #[arg(long, value_name = "NAME", alias = "name", value_hint = ValueHint::Other)]
    pub vm_name: Option<String>,
}

#[derive(Debug, Args)]
pub struct RestartArg {
    /// Restart a running VM now so the change takes effect (asks for confirmation).
    #[arg(long)]
    pub restart: bool,
}

/// Takes any string, so the core decides what is valid and every front end accepts and refuses
/// the same values; completion and help are offered `values` (without the aliases the core
/// also accepts, such as priority 0/1/2).
#[derive(Clone)]
pub struct Offered {
    values: Vec<&'static str>,
}

impl TypedValueParser for Offered {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        StringValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            self.values.iter().copied().map(PossibleValue::new),
        ))
    }
}

fn pool_values() -> Offered {
    Offered {
        values: Pool::ALL.iter().map(|p| p.as_str()).collect(),
    }
}

fn priority_values() -> Offered {
    Offered {
        values: Priority::ALL.iter().map(|p| p.as_word()).collect(),
    }
}

fn function_names() -> Offered {
    Offered {
        values: registry::FUNCTIONS.iter().map(|f| f.name).collect(),
    }
}

/// The configuration file's manual page, vgpu.conf(5).
pub const CONFIG_PAGE: &str = "vgpu.conf";

/// Commands of the CLI alone, not functions of the plugin API.
pub const CLI_ONLY: [&str; 4] = ["call", "functions", "completions", "man"];

fn man_pages() -> Offered {
    let commands = registry::FUNCTIONS.iter().map(|f| f.command);
    Offered {
        values: commands.chain(CLI_ONLY).chain([CONFIG_PAGE]).collect(),
    }
}

/// Usage lines longer than the help width are broken between words, never inside a bracket,
/// and continued under the first word after `Usage: `.
fn fit_usage(sub: clap::Command) -> clap::Command {
    const TITLE: &str = "Usage: ";
    let full = sub
        .clone()
        .bin_name(format!("{BIN} {}", sub.get_name()))
        .render_usage()
        .to_string();
    let usage = full.trim_start_matches(TITLE).trim_end();
    if TITLE.len() + usage.len() <= HELP_WIDTH || usage.contains('\n') {
        return sub;
    }
    let indent = " ".repeat(TITLE.len());
    let mut lines: Vec<String> = vec![String::new()];
    for word in usage_words(usage) {
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() && TITLE.len() + line.len() + 1 + word.len() > HELP_WIDTH {
            lines.push(word);
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&word);
        }
    }
    sub.override_usage(lines.join(&format!("\n{indent}")))
}

/// The words of a usage line; a bracketed group (`<--a <X>|--b <Y>>`, `[OPTIONS]`) is one word.
fn usage_words(usage: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut depth = 0usize;
    for c in usage.chars() {
        match c {
            '<' | '[' => depth += 1,
            '>' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c == ' ' && depth == 0 {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
        } else {
            word.push(c);
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_function_has_its_command_with_exactly_its_options() {
        let cli = Cli::command();
        let globals: Vec<String> = cli
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        for spec in registry::FUNCTIONS {
            let sub = cli
                .find_subcommand(spec.command)
                .unwrap_or_else(|| panic!("no command {} for {}", spec.command, spec.name));
            // A positional argument (`mediator ACTION`) counts under its id.
            let mut options: Vec<String> = sub
                .get_arguments()
                .filter_map(|a| {
                    a.get_long()
                        .map(str::to_string)
                        .or_else(|| a.is_positional().then(|| a.get_id().to_string()))
                })
                .filter(|l| !globals.contains(l))
                .collect();
            // `--yes` is global: every command takes it, the function table says who uses it.
            let mut keys: Vec<String> = spec
                .keys()
                .filter(|k| *k != "yes")
                .map(str::to_string)
                .collect();
            options.sort();
            keys.sort();
            assert_eq!(options, keys, "{}", spec.command);
            for a in sub.get_arguments().filter(|a| a.get_long().is_some()) {
                let long = a.get_long().unwrap_or_default();
                if keys.iter().any(|k| k == long) {
                    assert_eq!(a.get_id().as_str(), long.replace('-', "_"), "{long}");
                }
            }
        }
        for sub in cli.get_subcommands() {
            let name = sub.get_name();
            assert!(
                name == COMPLETE_COMMAND
                    || CLI_ONLY.contains(&name)
                    || registry::FunctionSpec::for_command(name).is_some(),
                "{name} is neither a function of the table nor a CLI-only command"
            );
        }
    }

    #[test]
    fn long_usages_are_broken_between_whole_groups() {
        assert_eq!(
            usage_words("a [OPTIONS] --pool <POOL> <--vm-uuid <UUID>|--vm-name <NAME>>"),
            [
                "a",
                "[OPTIONS]",
                "--pool",
                "<POOL>",
                "<--vm-uuid <UUID>|--vm-name <NAME>>"
            ]
        );
        let mut cli = Cli::command();
        cli.build();
        for sub in cli.get_subcommands_mut() {
            let usage = sub.render_usage().to_string();
            assert!(usage.lines().all(|l| l.len() <= HELP_WIDTH), "{usage}");
        }
    }
}
