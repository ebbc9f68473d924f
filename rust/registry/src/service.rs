//! The one entry point every front end calls: settings in, a typed outcome or a typed error out.
//!
//! It resolves the settings (flags > environment > config file > defaults), connects to XAPI,
//! decides where the call runs — here, or on the pool master's `vgpu` plugin — and runs it.
//! The CLI, `vgpu-admin call`, the Python extension and so the xapi plugin all come through here.

use crate::config::{Config, Mode};
use crate::error::{Error, ErrorCode, Result};
use crate::ops::Ctx;
use crate::report::{MediatorAnswer, Outcome, PromSample};
use crate::request::{self, Call, FORWARDED_BY};
use crate::request::{MediatorAction, MediatorTarget, Request};
use crate::store::Store;

pub use crate::store::Waiter;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use xapi::{Auth, Client, ClientOptions, Endpoint, Xapi, XapiError};

/// The xapi plugin's name on every host.
pub const PLUGIN: &str = "vgpu";

/// What a call produced.
#[derive(Debug)]
pub struct Answer {
    pub outcome: Outcome,
    /// Where the pre-migration copy went, when this call's opening of the registry migrated it.
    pub migration_backup: Option<PathBuf>,
}

const INVENTORY: &str = "/etc/xensource-inventory";

/// What a front end knows; unset fields fall back to the environment and the config file.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub config_path: Option<PathBuf>,
    pub db: Option<PathBuf>,
    pub xapi: Option<String>,
    pub xapi_user: Option<String>,
    pub xapi_password_file: Option<PathBuf>,
    pub xapi_insecure: bool,
    pub xapi_ca_file: Option<PathBuf>,
    /// An existing XAPI session to use (the plugin's, or `VGPU_XAPI_SESSION`).
    pub session: Option<String>,
    /// Forward to the master's plugin even where the local registry would be used.
    pub remote: bool,
    /// Told when a write waits for another process's lock on the registry.
    pub on_wait: Option<Waiter>,
}

/// A resolved, connected context.
pub struct Service {
    config: Config,
    db: PathBuf,
    /// `Err`: why there is no XAPI connection (a setting is missing); only calls that need
    /// XAPI fail with it.
    client: std::result::Result<Client, (&'static str, String)>,
    remote: bool,
    /// This host's uuid, when this is a pool host (`VGPU_HOST_UUID` or the inventory).
    host_uuid: Option<String>,
    on_wait: Option<Waiter>,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// `INSTALLATION_UUID` of dom0's inventory, or `VGPU_HOST_UUID` (tests, and hosts that know
/// better). `None` off dom0: a workstation or the simulator.
pub fn local_host_uuid() -> Option<String> {
    if let Some(u) = env("VGPU_HOST_UUID") {
        return Some(u);
    }
    let text = std::fs::read_to_string(INVENTORY).ok()?;
    parse_inventory(&text)
}

fn parse_inventory(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix("INSTALLATION_UUID=")?;
        let v = v.trim().trim_matches(|c| c == '\'' || c == '"');
        (!v.is_empty()).then(|| v.to_string())
    })
}

impl Service {
    pub fn new(s: &Settings) -> Result<Service> {
        let config_path = s
            .config_path
            .clone()
            .or_else(|| env("VGPU_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG_PATH));
        let config = Config::load(&config_path)?;
        let db =
            s.db.clone()
                .or_else(|| env("VGPU_DB").map(PathBuf::from))
                .unwrap_or_else(|| config.db_path.clone());
        let url = s
            .xapi
            .clone()
            .or_else(|| env("VGPU_XAPI"))
            .unwrap_or_else(|| config.xapi.clone());
        let endpoint =
            Endpoint::parse(&url).map_err(|e| Error::invalid("xapi", &url, e.to_string()))?;
        let session = s.session.clone().or_else(|| env("VGPU_XAPI_SESSION"));
        let auth = match session {
            Some(r) => Ok(Auth::Session(r)),
            None if endpoint.is_unix() => Ok(Auth::LocalRoot),
            None => password_auth(s, &config, &url)?,
        };
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(config.xapi_connect_timeout_s),
            read_timeout: Duration::from_secs(config.xapi_timeout_s),
            insecure_tls: s.xapi_insecure || config.xapi_insecure,
            ca_file: s
                .xapi_ca_file
                .clone()
                .or_else(|| config.xapi_ca_file.clone()),
        };
        Ok(Service {
            remote: s.remote || config.mode == Mode::Remote,
            db,
            client: auth.map(|auth| Client::new(endpoint, auth, options)),
            config,
            host_uuid: local_host_uuid(),
            on_wait: s.on_wait,
        })
    }

    /// The registry this service opens when a call runs here.
    pub fn db_path(&self) -> &Path {
        &self.db
    }

    /// Validates and runs a plugin API call where the registry lives.
    pub fn call(&self, function: &str, args: &BTreeMap<String, String>) -> Result<Answer> {
        self.run(Call::parse(function, args)?)
    }

    /// The XAPI connection, or the setting it lacks.
    fn client(&self) -> Result<&Client> {
        self.client
            .as_ref()
            .map_err(|(setting, message)| Error::Setting {
                setting,
                message: message.clone(),
            })
    }

    /// Runs a validated call where the registry lives: here, or on the pool master's plugin.
    pub fn run(&self, call: Call) -> Result<Answer> {
        let offline = Offline;
        let xapi: &dyn Xapi = match self.client() {
            Ok(client) => client,
            // A call that reads only the registry here needs no XAPI, so no password either.
            Err(_) if !call.spec.xapi && !self.remote && self.host_uuid.is_none() => &offline,
            Err(e) => return Err(e),
        };
        match self.route(xapi, &call)? {
            Route::Local(here) => match self.run_here(xapi, &call, here) {
                // The master changed after this call was routed: it goes to the new one.
                Err(Error::NoLongerMaster { .. }) if call.forwarded_by.is_none() => {
                    match self.route(xapi, &call)? {
                        Route::Forward(master) => Ok(Answer {
                            outcome: self.forward(xapi, &master, &call)?,
                            migration_backup: None,
                        }),
                        Route::Local(here) => self.run_here(xapi, &call, here),
                    }
                }
                other => other,
            },
            Route::Forward(master) => Ok(Answer {
                outcome: self.forward(xapi, &master, &call)?,
                migration_backup: None,
            }),
        }
    }

    fn run_here(&self, xapi: &dyn Xapi, call: &Call, here: Here) -> Result<Answer> {
        // Another writer publishing the same generation (two masters for an instant) made this
        // attempt undo everything: try again, for as long as a write may wait for the lock.
        let deadline = std::time::Instant::now() + Duration::from_secs(self.config.lock_timeout_s);
        loop {
            match self.run_here_once(xapi, call, &here) {
                Err(e) if e.is_generation_claimed() && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    fn run_here_once(&self, xapi: &dyn Xapi, call: &Call, here: &Here) -> Result<Answer> {
        if let Request::Refresh { reload } = call.request {
            let me = here.me.as_ref().ok_or_else(|| Error::Setting {
                setting: "VGPU_HOST_UUID",
                message: "refresh acts on this host's registry file, but this host's uuid is \
                          unknown (no INSTALLATION_UUID in /etc/xensource-inventory and no \
                          VGPU_HOST_UUID): run it in a pool host's dom0"
                    .into(),
            })?;
            let mut open = || self.open(true);
            let mut report = crate::pool::refresh_here(xapi, &self.db, &mut open, me)?;
            if reload {
                report.reload = Some(self.ask_mediator(Some(me), MediatorAction::Reload, false));
            }
            return Ok(Answer {
                outcome: Outcome::Refresh(report),
                migration_backup: None,
            });
        }
        if let Request::Mediator {
            action,
            prometheus,
            target,
        } = &call.request
        {
            return Ok(Answer {
                outcome: Outcome::Mediator(self.mediators(
                    xapi,
                    here.me.as_ref(),
                    *action,
                    *prometheus,
                    target,
                )?),
                migration_backup: None,
            });
        }
        let master_here = here.pool.is_some();
        let mut current = None;
        if master_here && !call.spec.mutating {
            // On the master even a read first brings the registry to the pool's generation.
            let store = self.open(false)?;
            let behind = pool_needs_sync(store.meta()?, here.pool.as_ref());
            if !behind {
                // The read the call needs anyway: no second open (and -wal/-shm) for it.
                current = Some(store);
            } else {
                drop(store);
                let mut store = self.open(true)?;
                let mut ctx = Ctx {
                    store: &mut store,
                    xapi,
                    config: &self.config,
                    me: here.me.clone(),
                    committed: None,
                };
                ctx.catch_up()?;
            }
        }
        // Reading needs no write access and creates nothing; nor does a dry run, nor a change
        // refused before it writes.
        let mut store = match current {
            Some(store) => store,
            None if call.spec.mutating && !call.request.dry_run() => self.open_for_change()?,
            None => self.open(false)?,
        };
        let migration_backup = store.migration_backup().map(Path::to_path_buf);
        let mut ctx = Ctx {
            store: &mut store,
            xapi,
            config: &self.config,
            me: here.me.clone(),
            committed: None,
        };
        let mut outcome = request::execute(&mut ctx, call.request.clone())?;
        if let (Some(_), true, Some(me)) = (ctx.committed, master_here, &here.me) {
            // Every other host refreshes its replica, then has its mediator reload it; this
            // host's mediator reloads the primary.
            let timeout = Duration::from_secs(self.config.pool.refresh_timeout_s);
            let replicas = crate::pool::refresh_others(xapi, &me.uuid, PLUGIN, timeout, true);
            let mut reloads = vec![self.ask_mediator(Some(me), MediatorAction::Reload, false)];
            for r in &replicas {
                reloads.push(match &r.reload {
                    Some(answer) => answer.clone(),
                    // Refreshed, and no mediator there to reload.
                    None if r.ok => continue,
                    // Unreachable: whether it has a mediator is unknown, so nothing it might
                    // run is reported as loaded.
                    None => MediatorAnswer {
                        host: r.host.clone(),
                        name: r.name.clone(),
                        ok: false,
                        status: None,
                        text: None,
                        error: Some(format!(
                            "the replica was not refreshed: {}",
                            r.error.as_deref().unwrap_or("no answer")
                        )),
                        absent: false,
                        samples: None,
                    },
                });
            }
            reloads.retain(|a| !a.absent);
            let refreshed = replicas.iter().all(|r| r.ok);
            let reloaded = reloads.iter().all(|a| a.ok);
            if let Outcome::Applied(a) = &mut outcome {
                if let Request::SetControls(_, change) = &call.request {
                    // A weight is read on every request; rate limits and quarantine at a reload,
                    // and then for a mediator's first 64 registrations only.
                    let needs_reload = change.max_jobs_per_sec.is_some()
                        || change.max_queue_depth.is_some()
                        || change.quarantined.is_some();
                    let loaded = !needs_reload
                        || (reloaded
                            && ctx
                                .mediator_position(&a.registration.vm_uuid)?
                                .is_some_and(|i| i < crate::ops::MEDIATOR_ROWS));
                    a.in_effect = Some(refreshed && loaded);
                }
            }
            outcome.set_reloads(reloads);
            outcome.set_replicas(replicas);
        }
        Ok(Answer {
            outcome,
            migration_backup,
        })
    }

    /// Asks this host's mediator; a host without its admin socket has no mediator (`absent`).
    fn ask_mediator(
        &self,
        me: Option<&xapi::HostRecord>,
        action: MediatorAction,
        prometheus: bool,
    ) -> MediatorAnswer {
        let socket = &self.config.mediator.admin_socket;
        let mut answer = MediatorAnswer {
            host: me.map(|h| h.uuid.clone()).unwrap_or_default(),
            name: me.map(|h| h.name_label.clone()).unwrap_or_default(),
            ok: false,
            status: None,
            text: None,
            error: None,
            absent: false,
            samples: None,
        };
        let command = match action {
            MediatorAction::Metrics => mediator::Command::ShowMetrics { prometheus },
            MediatorAction::Health => mediator::Command::ShowHealth,
            MediatorAction::Connections => mediator::Command::ShowConnections,
            MediatorAction::Reload => mediator::Command::ReloadConfig,
        };
        let client = mediator::Client::new(
            socket.clone(),
            Duration::from_secs(self.config.mediator.timeout_s),
        );
        match client.ask(command) {
            Ok(a) => {
                answer.ok = a.is_ok();
                answer.status = Some(a.status);
                if prometheus && a.is_ok() {
                    answer.samples = Some(
                        mediator::parse_prometheus(&a.text)
                            .into_iter()
                            .map(|s| PromSample {
                                name: s.name,
                                labels: s.labels.into_iter().collect(),
                                value: s.value,
                            })
                            .collect(),
                    );
                }
                if !a.is_ok() {
                    answer.error = Some(a.text.trim_end().to_string());
                }
                answer.text = Some(a.text);
            }
            Err(mediator::MediatorError::NoSocket { .. }) => {
                answer.absent = true;
                answer.error = Some(format!(
                    "no mediator on this host (no admin socket at {})",
                    socket.display()
                ));
            }
            Err(e) => answer.error = Some(e.to_string()),
        }
        answer
    }

    /// `mediator`: this host's mediator, another host's through its plugin, or every host's.
    fn mediators(
        &self,
        xapi: &dyn Xapi,
        me: Option<&xapi::HostRecord>,
        action: MediatorAction,
        prometheus: bool,
        target: &MediatorTarget,
    ) -> Result<Vec<MediatorAnswer>> {
        if *target == MediatorTarget::Here {
            return Ok(vec![self.ask_mediator(me, action, prometheus)]);
        }
        let hosts = xapi
            .hosts()
            .map_err(|e| Error::xapi("listing the pool's hosts", e))?;
        let chosen: Vec<xapi::HostRecord> = match target {
            MediatorTarget::Host(h) => {
                let found: Vec<_> = hosts
                    .iter()
                    .filter(|x| x.uuid.eq_ignore_ascii_case(h) || &x.name_label == h)
                    .cloned()
                    .collect();
                match found.len() {
                    1 => found,
                    0 => {
                        let names: Vec<String> = hosts
                            .iter()
                            .map(|x| format!("{} ({})", x.name_label, x.uuid))
                            .collect();
                        return Err(Error::invalid(
                            "host",
                            h,
                            format!("not a host of this pool; its hosts: {}", names.join(", ")),
                        ));
                    }
                    _ => {
                        return Err(Error::invalid(
                            "host",
                            h,
                            "several hosts have that name-label: give its uuid",
                        ))
                    }
                }
            }
            _ => hosts,
        };
        let mut args = BTreeMap::from([("action".to_string(), action.as_str().to_string())]);
        if prometheus {
            args.insert("prometheus".into(), "true".into());
        }
        let is_me = |h: &xapi::HostRecord| me.is_some_and(|m| m.uuid == h.uuid);
        let calls: Vec<xapi::PluginCall> = chosen
            .iter()
            .filter(|h| !is_me(h))
            .map(|h| xapi::PluginCall {
                host_ref: h.opaque_ref.clone(),
                plugin: PLUGIN.into(),
                function: "mediator".into(),
                args: args.clone(),
            })
            .collect();
        let timeout = Duration::from_secs(self.config.pool.refresh_timeout_s);
        let mut answers = xapi.call_plugins(&calls, timeout).into_iter();
        let mut out = Vec::new();
        for h in &chosen {
            if is_me(h) {
                out.push(self.ask_mediator(Some(h), action, prometheus));
                continue;
            }
            let failed = |error: String| MediatorAnswer {
                host: h.uuid.clone(),
                name: h.name_label.clone(),
                ok: false,
                status: None,
                text: None,
                error: Some(error),
                absent: false,
                samples: None,
            };
            match answers.next() {
                Some(Ok(text)) => match serde_json::from_str::<Vec<MediatorAnswer>>(&text) {
                    Ok(list) => out.extend(list),
                    Err(e) => out.push(failed(format!("unexpected answer from its plugin: {e}"))),
                },
                Some(Err(e)) => out.push(failed(e.to_string())),
                None => out.push(failed("no answer".into())),
            }
        }
        Ok(out)
    }

    fn open(&self, write: bool) -> Result<Store> {
        self.opened(if write {
            Store::open_waiting
        } else {
            Store::open_read_waiting
        })
    }

    /// [`Store::open_for_change`], with this service's lock timeout and waiter.
    fn open_for_change(&self) -> Result<Store> {
        self.opened(Store::open_for_change)
    }

    /// The registry opened by `how`, with this service's lock timeout and waiter.
    fn opened(&self, how: fn(&Path, Duration) -> Result<Store>) -> Result<Store> {
        let lock_timeout = Duration::from_secs(self.config.lock_timeout_s);
        let mut store = how(&self.db, lock_timeout)?;
        store.set_waiter(self.on_wait);
        store.set_busy_timeout(lock_timeout);
        Ok(store)
    }

    fn route(&self, xapi: &dyn Xapi, call: &Call) -> Result<Route> {
        if call.spec.local {
            // This host's own file: no forwarding, whoever is master.
            let me = match &self.host_uuid {
                Some(uuid) => Some(
                    xapi.host_by_uuid(uuid)
                        .map_err(|e| Error::xapi(format!("looking up this host ({uuid})"), e))?
                        .ok_or_else(|| Error::Setting {
                            setting: "VGPU_HOST_UUID",
                            message: format!(
                                "this host's uuid {uuid} (VGPU_HOST_UUID or \
                                 /etc/xensource-inventory) is not a host of the pool"
                            ),
                        })?,
                ),
                None => None,
            };
            return Ok(Route::Local(Here { me, pool: None }));
        }
        if let Some(from) = call.forwarded_by.as_deref() {
            // Forwarded to us: run here, but only if we are the master — never forward again.
            let Some(me) = &self.host_uuid else {
                return Ok(Route::Local(Here::off_pool()));
            };
            let (pool, master) = master(xapi)?;
            if &master.uuid != me {
                return Err(Error::Internal(format!(
                    "host {me} received a call forwarded by host {from}, but it is not the \
                     pool master ({}); refusing to forward it again — check VGPU_HOST_UUID \
                     and /etc/xensource-inventory on both hosts",
                    master.uuid
                )));
            }
            return Ok(Route::Local(Here {
                me: Some(master),
                pool: Some(pool),
            }));
        }
        if self.remote {
            return Ok(Route::Forward(master(xapi)?.1));
        }
        match &self.host_uuid {
            None => Ok(Route::Local(Here::off_pool())),
            Some(me) => {
                let (pool, master) = master(xapi)?;
                if &master.uuid == me {
                    Ok(Route::Local(Here {
                        me: Some(master),
                        pool: Some(pool),
                    }))
                } else {
                    Ok(Route::Forward(master))
                }
            }
        }
    }

    fn forward(&self, xapi: &dyn Xapi, master: &xapi::HostRecord, call: &Call) -> Result<Outcome> {
        let mut args = call.args.clone();
        args.insert(
            FORWARDED_BY.to_string(),
            self.host_uuid
                .clone()
                .unwrap_or_else(|| "remote-client".into()),
        );
        let function = call.function();
        let answer = xapi
            .call_plugin(&master.opaque_ref, PLUGIN, function.name, &args)
            .map_err(|e| from_plugin_error(e, master, function))?;
        Outcome::from_json(function.result, &answer).map_err(|e| {
            Error::Internal(format!(
                "the vgpu plugin on the pool master {} answered {} with something that is not \
                 its JSON result ({e})",
                master.uuid, function.name
            ))
        })
    }
}

enum Route {
    Local(Here),
    Forward(xapi::HostRecord),
}

/// Who runs a call here.
struct Here {
    /// This host, when its uuid is known.
    me: Option<xapi::HostRecord>,
    /// The pool, when this host is known to be its master.
    pool: Option<xapi::PoolRecord>,
}

impl Here {
    /// Not a pool host (a workstation, the simulator): the local registry, no fan-out.
    fn off_pool() -> Here {
        Here {
            me: None,
            pool: None,
        }
    }
}

/// Whether the master's registry must catch up with the pool's generation before a read.
fn pool_needs_sync(meta: crate::store::Meta, pool: Option<&xapi::PoolRecord>) -> bool {
    let Some(generation) = pool.and_then(crate::pool::pool_generation) else {
        return false;
    };
    !(meta.role == Some(crate::store::Role::Primary) && meta.generation == Some(generation))
}

/// The pool and its master, in two round trips.
fn master(xapi: &dyn Xapi) -> Result<(xapi::PoolRecord, xapi::HostRecord)> {
    let pool = xapi
        .pool()
        .map_err(|e| Error::xapi("finding the pool master", e))?;
    let master = xapi
        .host_record(&pool.master)
        .map_err(|e| Error::xapi("finding the pool master", e))?;
    Ok((pool, master))
}

/// Stands in for XAPI where a call must not need it (reads of the registry alone): any use is
/// a bug, reported as such.
struct Offline;

impl Offline {
    fn unused<T>(&self, method: &str) -> xapi::Result<T> {
        Err(XapiError::Protocol {
            method: method.to_string(),
            reason: "internal error: XAPI used by a call that needs none".into(),
        })
    }
}

impl Xapi for Offline {
    fn list_vms(&self) -> xapi::Result<Vec<xapi::VmRecord>> {
        self.unused("VM.get_all_records_where")
    }
    fn vm_by_uuid(&self, _: &str) -> xapi::Result<Option<xapi::VmRecord>> {
        self.unused("VM.get_by_uuid")
    }
    fn vms_by_name(&self, _: &str) -> xapi::Result<Vec<xapi::VmRecord>> {
        self.unused("VM.get_by_name_label")
    }
    fn get_platform(&self, _: &str) -> xapi::Result<BTreeMap<String, String>> {
        self.unused("VM.get_platform")
    }
    fn set_platform(&self, _: &str, _: &BTreeMap<String, String>) -> xapi::Result<()> {
        self.unused("VM.set_platform")
    }
    fn power_state(&self, _: &str) -> xapi::Result<String> {
        self.unused("VM.get_power_state")
    }
    fn clean_shutdown(&self, _: &str, _: u64) -> xapi::Result<()> {
        self.unused("VM.clean_shutdown")
    }
    fn start(&self, _: &str) -> xapi::Result<()> {
        self.unused("VM.start")
    }
    fn pool(&self) -> xapi::Result<xapi::PoolRecord> {
        self.unused("pool.get_all_records")
    }
    fn hosts(&self) -> xapi::Result<Vec<xapi::HostRecord>> {
        self.unused("host.get_all_records")
    }
    fn host_record(&self, _: &str) -> xapi::Result<xapi::HostRecord> {
        self.unused("host.get_record")
    }
    fn add_to_other_config(&self, c: xapi::Class, _: &str, _: &str, _: &str) -> xapi::Result<()> {
        self.unused(&format!("{}.add_to_other_config", c.api_name()))
    }
    fn remove_from_other_config(&self, c: xapi::Class, _: &str, _: &str) -> xapi::Result<()> {
        self.unused(&format!("{}.remove_from_other_config", c.api_name()))
    }
    fn host_by_uuid(&self, _: &str) -> xapi::Result<Option<xapi::HostRecord>> {
        self.unused("host.get_by_uuid")
    }
    fn call_plugin(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: &BTreeMap<String, String>,
    ) -> xapi::Result<String> {
        self.unused("host.call_plugin")
    }
}

/// The password login for `url`; `Ok(Err(why))` when no password is given, which matters only
/// to a call that needs XAPI. An unreadable password file is an error at once.
fn password_auth(
    s: &Settings,
    config: &Config,
    url: &str,
) -> Result<std::result::Result<Auth, (&'static str, String)>> {
    let user = s
        .xapi_user
        .clone()
        .or_else(|| env("VGPU_XAPI_USER"))
        .or_else(|| config.xapi_user.clone())
        .unwrap_or_else(|| "root".into());
    let file = s
        .xapi_password_file
        .clone()
        .or_else(|| config.xapi_password_file.clone());
    let password = match file {
        Some(path) => read_password(&path)?,
        None => match env("VGPU_XAPI_PASSWORD") {
            Some(p) => p,
            None => {
                return Ok(Err((
                    "xapi_password_file",
                    format!(
                        "XAPI at {url} needs a password for {user}: a password file (config \
                         xapi_password_file) or VGPU_XAPI_PASSWORD, or an existing session in \
                         VGPU_XAPI_SESSION"
                    ),
                )))
            }
        },
    };
    Ok(Ok(Auth::Password { user, password }))
}

fn read_password(path: &Path) -> Result<String> {
    refuse_open_password_file(path)?;
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| {
            Error::invalid(
                "xapi-password-file",
                &path.display().to_string(),
                e.to_string(),
            )
        })
}

/// A password file that other users can read (or write) is refused, as ssh refuses such a key:
/// the password is the pool's root login. Only regular files are checked, so a pipe such as
/// `<(pass show xapi)` is taken as it is.
#[cfg(unix)]
fn refuse_open_password_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        // Reading it reports why it cannot be read.
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if meta.is_file() && mode & 0o077 != 0 {
        let shown = path.display().to_string();
        return Err(Error::invalid(
            "xapi-password-file",
            &shown,
            format!(
                "it can be read or changed by users other than its owner (mode {mode:04o}); \
                 make it private with: chmod 600 {}",
                shell_words::quote(&shown)
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_open_password_file(_: &Path) -> Result<()> {
    Ok(())
}

/// The master's plugin fails with `VGPU_<CODE>` `[message, details_json]`: keep its code and
/// message intact. Anything else is an XAPI error about the forwarding itself.
fn from_plugin_error(
    e: XapiError,
    master: &xapi::HostRecord,
    function: &crate::functions::FunctionSpec,
) -> Error {
    if let XapiError::Api { code, params, .. } = &e {
        if let Some(c) = ErrorCode::parse(code).filter(|_| code.starts_with("VGPU_")) {
            let message = params.first().cloned().unwrap_or_default();
            let details = params
                .get(1)
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or(Value::Null);
            return Error::Forwarded {
                code: c,
                message,
                details,
            };
        }
        if code == "XENAPI_MISSING_PLUGIN" {
            return Error::xapi(
                format!(
                    "forwarding to the pool master {} ({}): the vgpu plugin is not installed there",
                    master.uuid, master.name_label
                ),
                e,
            );
        }
    }
    if function.mutating && e.outcome_unknown() {
        // The master's plugin runs the whole change, commit included, whether or not its
        // answer comes back: saying it failed would have the user run it again (decision 0010).
        return Error::xapi(
            format!(
                "{} was forwarded to the vgpu plugin of the pool master {} ({}) and its answer \
                 was lost, so the master may have made the change: look with `vgpu-admin \
                 scan-vms` before running it again",
                function.command, master.uuid, master.name_label
            ),
            e,
        );
    }
    Error::xapi(
        format!(
            "forwarding to the vgpu plugin of the pool master {} ({})",
            master.uuid, master.name_label
        ),
        e,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_line() {
        let text =
            "PRIMARY_DISK='/dev/sda'\nINSTALLATION_UUID='b6dea120-450c-42c4-b642-f840206c9bb1'\n";
        assert_eq!(
            parse_inventory(text).as_deref(),
            Some("b6dea120-450c-42c4-b642-f840206c9bb1")
        );
        assert_eq!(parse_inventory("X=1\n"), None);
    }

    #[test]
    fn a_password_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xapi password");
        std::fs::write(&path, "secret\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o666] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_password(&path).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgument);
            let text = e.to_string();
            assert!(text.contains(&format!("{mode:04o}")), "{text}");
            assert!(text.contains("chmod 600 '"), "{text}");
            assert!(!text.contains("secret"), "{text}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read_password(&path).unwrap(), "secret");
        }
    }

    #[test]
    fn plugin_errors_keep_their_code() {
        let master = xapi::HostRecord {
            opaque_ref: "OpaqueRef:m".into(),
            uuid: "m".into(),
            name_label: "master".into(),
            other_config: BTreeMap::new(),
        };
        let e = from_plugin_error(
            XapiError::Api {
                method: "host.call_plugin".into(),
                code: "VGPU_VM_ID_IN_USE".into(),
                params: vec!["VM ID 1 already in use".into(), "{\"vm_id\":1}".into()],
            },
            &master,
            crate::functions::FunctionSpec::find("register").unwrap(),
        );
        assert_eq!(e.code(), ErrorCode::VmIdInUse);
        assert_eq!(e.to_string(), "VM ID 1 already in use");
        assert_eq!(e.details()["vm_id"], 1);
        let e = from_plugin_error(
            XapiError::Api {
                method: "host.call_plugin".into(),
                code: "XENAPI_MISSING_PLUGIN".into(),
                params: vec!["vgpu".into()],
            },
            &master,
            crate::functions::FunctionSpec::find("register").unwrap(),
        );
        assert_eq!(e.code(), ErrorCode::XapiError);
        assert!(e.to_string().contains("not installed"), "{e}");
        // A lost answer: a change may have been made on the master, a read was not.
        let lost = || XapiError::Transport {
            endpoint: "unix:/x".into(),
            reason: "connection error: Peer disconnected".into(),
        };
        let e = from_plugin_error(
            lost(),
            &master,
            crate::functions::FunctionSpec::find("register").unwrap(),
        );
        let text = e.to_string();
        assert!(text.contains("may have made the change"), "{text}");
        assert!(
            text.contains("register-vm") && text.contains("scan-vms"),
            "{text}"
        );
        let e = from_plugin_error(
            lost(),
            &master,
            crate::functions::FunctionSpec::find("show").unwrap(),
        );
        assert!(!e.to_string().contains("may have"), "{e}");
    }
}
