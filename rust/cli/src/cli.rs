//! The command line, as clap definitions. Doc comments are the help text.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  vgpu-admin scan-vms
  vgpu-admin register-vm --vm-uuid 48df46e9-31b9-4aea-b4b8-678e9a3c70d6 --pool A --priority high --vm-id 1
  vgpu-admin register-vm --vm-name render-01 --pool B --priority medium
  vgpu-admin set-vm-id --vm-name render-01 --vm-id 100 --restart --yes
  vgpu-admin list-vms --pool A --format json

Exit status: 0 success, 2 invalid usage or argument, 1 any other failure.";

/// Manage the vgpu registry of an XCP-ng pool: which VMs share a GPU, in which pool (A/B), at
/// which priority (low/medium/high) and under which vm_id.
///
/// Each VM's settings live in the registry (SQLite, default /etc/vgpu/vgpu_config.db) and in the
/// VM's platform:device-model-args, which QEMU reads when the VM starts.
#[derive(Debug, Parser)]
#[command(name = "vgpu-admin", version, after_help = EXAMPLES, max_term_width = 100)]
pub struct Cli {
    /// Configuration file (TOML; a missing file means defaults) [env: VGPU_CONFIG]
    /// [default: /etc/vgpu/vgpu.conf].
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Registry database [env: VGPU_DB] [default: config db_path, else
    /// /etc/vgpu/vgpu_config.db].
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,

    /// XAPI endpoint: unix:/path, http://host[:port] or https://host[:port] [env: VGPU_XAPI]
    /// [default: config xapi, else unix:/var/lib/xcp/xapi].
    #[arg(long, global = true, value_name = "URL")]
    pub xapi: Option<String>,

    /// User for http(s) XAPI endpoints [env: VGPU_XAPI_USER] [default: root].
    #[arg(long, global = true, value_name = "USER")]
    pub xapi_user: Option<String>,

    /// File holding the XAPI password (else the VGPU_XAPI_PASSWORD environment variable).
    #[arg(long, global = true, value_name = "PATH")]
    pub xapi_password_file: Option<PathBuf>,

    /// Accept any TLS certificate from an https:// XAPI (self-signed pool certificates).
    #[arg(long, global = true)]
    pub xapi_insecure: bool,

    /// Trust this PEM certificate (e.g. the pool master's) for https:// XAPI.
    #[arg(long, global = true, value_name = "PATH")]
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
    ///
    /// Example: vgpu-admin scan-vms --format json
    #[command(name = "scan-vms")]
    ScanVms,

    /// Register a VM and write its vgpu device into device-model-args.
    ///
    /// Without --vm-id the lowest free id is assigned. With --vm-uuid, --vm-name is the name to
    /// store (default: the VM's name-label); alone, --vm-name selects the VM by name-label.
    ///
    /// Example: vgpu-admin register-vm --vm-uuid 48df46e9-31b9-4aea-b4b8-678e9a3c70d6 --pool A --priority high --vm-id 1
    #[command(name = "register-vm")]
    RegisterVm {
        #[command(flatten)]
        vm: VmTarget,
        /// Pool: A or B.
        #[arg(long)]
        pool: String,
        /// Priority: low, medium, high (or 0, 1, 2).
        #[arg(long)]
        priority: String,
        /// vm_id, 1 to 4294967295 [default: the lowest free id].
        #[arg(long, value_name = "ID")]
        vm_id: Option<String>,
        #[command(flatten)]
        restart: RestartArg,
    },

    /// Change a VM's vm_id (it must be unused).
    ///
    /// Example: vgpu-admin set-vm-id --vm-name render-01 --vm-id 100
    #[command(name = "set-vm-id")]
    SetVmId {
        #[command(flatten)]
        vm: VmSelector,
        /// New vm_id, 1 to 4294967295.
        #[arg(long, value_name = "ID")]
        vm_id: String,
        #[command(flatten)]
        restart: RestartArg,
    },

    /// Change a VM's pool.
    ///
    /// Example: vgpu-admin set-pool --vm-name render-01 --pool B
    #[command(name = "set-pool")]
    SetPool {
        #[command(flatten)]
        vm: VmSelector,
        /// Pool: A or B.
        #[arg(long)]
        pool: String,
        #[command(flatten)]
        restart: RestartArg,
    },

    /// Change a VM's priority.
    ///
    /// Example: vgpu-admin set-priority --vm-name render-01 --priority low
    #[command(name = "set-priority")]
    SetPriority {
        #[command(flatten)]
        vm: VmSelector,
        /// Priority: low, medium, high (or 0, 1, 2).
        #[arg(long)]
        priority: String,
        #[command(flatten)]
        restart: RestartArg,
    },

    /// Change several settings of a VM at once (at least one).
    ///
    /// Example: vgpu-admin update-vm --vm-name render-01 --pool A --priority high --vm-id 7
    #[command(name = "update-vm")]
    UpdateVm {
        #[command(flatten)]
        vm: VmSelector,
        /// Pool: A or B.
        #[arg(long)]
        pool: Option<String>,
        /// Priority: low, medium, high (or 0, 1, 2).
        #[arg(long)]
        priority: Option<String>,
        /// vm_id, 1 to 4294967295.
        #[arg(long, value_name = "ID")]
        vm_id: Option<String>,
        #[command(flatten)]
        restart: RestartArg,
    },

    /// A VM's registration with its live state: power state, device-model-args, status.
    ///
    /// Example: vgpu-admin show-vm --vm-name cuda-dev
    #[command(name = "show-vm")]
    ShowVm {
        #[command(flatten)]
        vm: VmSelector,
    },

    /// Registered VMs, ordered by pool, priority (high first) and vm_id.
    ///
    /// Example: vgpu-admin list-vms --pool A --priority high
    #[command(name = "list-vms")]
    ListVms {
        /// Only this pool (A or B).
        #[arg(long)]
        pool: Option<String>,
        /// Only this priority.
        #[arg(long)]
        priority: Option<String>,
    },

    /// The pools with their VM counts, per priority.
    ///
    /// Example: vgpu-admin list-pools
    #[command(name = "list-pools")]
    ListPools,

    /// One pool with its VMs.
    ///
    /// Example: vgpu-admin show-pool --pool A
    #[command(name = "show-pool")]
    ShowPool {
        /// Pool: A or B.
        #[arg(long)]
        pool: String,
    },

    /// Remove a VM's registration and its vgpu device from device-model-args.
    ///
    /// A stale registration (the VM no longer exists) is removed from the registry only.
    ///
    /// Example: vgpu-admin remove-vm --vm-name render-01
    #[command(name = "remove-vm")]
    RemoveVm {
        #[command(flatten)]
        vm: VmSelector,
        #[command(flatten)]
        restart: RestartArg,
    },

    /// A one-screen summary: pools, counts, drift, unregistered and stale VMs.
    ///
    /// Example: vgpu-admin status
    Status,

    /// Re-apply registry values to VMs in drift or not applied; refresh stored names.
    ///
    /// Example: vgpu-admin sync --all --dry-run
    Sync {
        /// Only this VM.
        #[arg(long, value_name = "UUID", conflicts_with = "all")]
        vm_uuid: Option<String>,
        /// Only this VM, by name-label.
        #[arg(long, value_name = "NAME", conflicts_with = "all")]
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

    /// Call the plugin API from the shell: same functions, KEY=VALUE arguments, JSON result.
    ///
    /// The result is printed as one line of ASCII JSON; an error as a JSON object on stderr.
    ///
    /// Example: vgpu-admin call register vm-uuid=48df46e9-31b9-4aea-b4b8-678e9a3c70d6 pool=A priority=high
    Call {
        /// Function name (the list: vgpu-admin functions).
        function: String,
        /// Arguments as KEY=VALUE (each function's keys: vgpu-admin functions).
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },

    /// The plugin API's function table: every function, its arguments and the CLI command
    /// that calls it (`--format json` for programs: the plugin and the Xen Orchestra plugin are
    /// tested against it).
    ///
    /// Example: vgpu-admin functions --format json
    Functions,

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// Example: vgpu-admin completions bash > /etc/bash_completion.d/vgpu-admin
    Completions { shell: clap_complete::Shell },

    /// Print the man page (roff).
    ///
    /// Example: vgpu-admin man > vgpu-admin.1
    Man,
}

/// Exactly one of --vm-uuid / --vm-name.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct VmSelector {
    /// The VM's UUID.
    #[arg(long, value_name = "UUID")]
    pub vm_uuid: Option<String>,
    /// The VM's name-label (must match exactly one VM).
    #[arg(long, value_name = "NAME")]
    pub vm_name: Option<String>,
}

/// --vm-uuid, --vm-name, or both (then --vm-name is the name to store).
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct VmTarget {
    /// The VM's UUID.
    #[arg(long, value_name = "UUID")]
    pub vm_uuid: Option<String>,
    /// With --vm-uuid: the name to store; alone: the VM's name-label.
    #[arg(long, value_name = "NAME")]
    pub vm_name: Option<String>,
}

#[derive(Debug, Args)]
pub struct RestartArg {
    /// Restart a running VM now so the change takes effect (asks for confirmation).
    #[arg(long)]
    pub restart: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    /// Commands of the CLI alone, not functions of the plugin API.
    const CLI_ONLY: [&str; 4] = ["call", "functions", "completions", "man"];

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
            let mut options: Vec<String> = sub
                .get_arguments()
                .filter_map(|a| a.get_long().map(str::to_string))
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
                CLI_ONLY.contains(&name) || registry::FunctionSpec::for_command(name).is_some(),
                "{name} is neither a function of the table nor a CLI-only command"
            );
        }
    }
}
