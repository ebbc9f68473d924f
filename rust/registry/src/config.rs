//! `vgpu.conf`: TOML, every key optional. A missing file means defaults; an unknown key or a bad
//! value is an error naming the file and the key, so a typo never silently falls back.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/vgpu/vgpu.conf";
pub const DEFAULT_DB_PATH: &str = "/etc/vgpu/vgpu_config.db";
pub const DEFAULT_XAPI: &str = "unix:/var/lib/xcp/xapi";
pub const DEFAULT_PYTHON_PATH: &str = "/usr/lib64/vgpu-registry/python";
pub const DEFAULT_ADMIN_PATH: &str = "/usr/bin/vgpu-admin";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Use this host's registry (on the master, or off-pool).
    #[default]
    Local,
    /// Forward every call to the pool master's `vgpu` plugin.
    Remote,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub db_path: PathBuf,
    pub xapi: String,
    pub xapi_user: Option<String>,
    pub xapi_password_file: Option<PathBuf>,
    /// Accept any certificate on `https://` (self-signed pool certificates).
    pub xapi_insecure: bool,
    /// Extra PEM CA certificate(s) to trust for `https://`.
    pub xapi_ca_file: Option<PathBuf>,
    pub xapi_connect_timeout_s: u64,
    pub xapi_timeout_s: u64,
    /// How long a change waits for another process's lock on the registry.
    pub lock_timeout_s: u64,
    pub mode: Mode,
    pub python_path: PathBuf,
    pub admin_path: PathBuf,
    pub device: DeviceConfig,
    pub restart: RestartConfig,
    pub pool: PoolConfig,
    pub mediator: MediatorConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediatorConfig {
    /// The mediator's admin socket on each host.
    pub admin_socket: PathBuf,
    /// Seconds one request to a mediator may take, connect to answer.
    pub timeout_s: u64,
}

impl Default for MediatorConfig {
    fn default() -> Self {
        MediatorConfig {
            admin_socket: mediator::DEFAULT_ADMIN_SOCKET.into(),
            timeout_s: mediator::DEFAULT_TIMEOUT.as_secs(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// How long the master waits for the other hosts to refresh their replicas after a change.
    pub refresh_timeout_s: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            refresh_timeout_s: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    #[serde(rename = "type")]
    pub device_type: String,
    pub extra: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    pub shutdown_timeout_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            db_path: DEFAULT_DB_PATH.into(),
            xapi: DEFAULT_XAPI.into(),
            xapi_user: None,
            xapi_password_file: None,
            xapi_insecure: false,
            xapi_ca_file: None,
            xapi_connect_timeout_s: 10,
            xapi_timeout_s: 120,
            lock_timeout_s: 60,
            mode: Mode::Local,
            python_path: DEFAULT_PYTHON_PATH.into(),
            admin_path: DEFAULT_ADMIN_PATH.into(),
            device: DeviceConfig::default(),
            restart: RestartConfig::default(),
            pool: PoolConfig::default(),
            mediator: MediatorConfig::default(),
        }
    }
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            device_type: "vgpu-cuda".into(),
            extra: "addr=5".into(),
        }
    }
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            shutdown_timeout_s: 120,
        }
    }
}

impl Config {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            // Text that is not UTF-8 is a bad file, as a syntax error is.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(Error::invalid(
                "config file",
                &path.display().to_string(),
                e.to_string(),
            )),
            Err(e) => Err(Error::ConfigUnreadable {
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            Error::invalid(
                "config file",
                &path.display().to_string(),
                e.message().to_string(),
            )
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let file = path.display().to_string();
        let ty = &self.device.device_type;
        let ok = !ty.is_empty()
            && ty
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            return Err(Error::invalid(
                "device type",
                ty,
                format!("in {file}: letters, digits, '-', '_' and '.' only"),
            ));
        }
        let extra = &self.device.extra;
        if extra.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid(
                "device extra",
                extra,
                format!("in {file}: no spaces or control characters"),
            ));
        }
        // `,,` is QEMU's escaped comma: a leading one would be written after the device type's
        // separator as `vgpu-cuda,,,…` and read back as part of the type.
        if extra.starts_with(',') {
            return Err(Error::invalid(
                "device extra",
                extra,
                format!("in {file}: cannot start with ','"),
            ));
        }
        for reserved in ["pool_id", "priority", "vm_id"] {
            if extra
                .split(',')
                .any(|p| p.split('=').next() == Some(reserved))
            {
                return Err(Error::invalid(
                    "device extra",
                    extra,
                    format!("in {file}: {reserved} is written by vgpu-admin itself"),
                ));
            }
        }
        if self.lock_timeout_s == 0 {
            return Err(Error::invalid(
                "lock_timeout_s",
                "0",
                format!("in {file}: must be at least 1"),
            ));
        }
        if self.mediator.timeout_s == 0 {
            return Err(Error::invalid(
                "mediator.timeout_s",
                "0",
                format!("in {file}: must be at least 1"),
            ));
        }
        if self.pool.refresh_timeout_s == 0 {
            return Err(Error::invalid(
                "pool.refresh_timeout_s",
                "0",
                format!("in {file}: must be at least 1"),
            ));
        }
        if self.restart.shutdown_timeout_s == 0 {
            return Err(Error::invalid(
                "restart.shutdown_timeout_s",
                "0",
                format!("in {file}: must be at least 1"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_missing() {
        let cfg = Config::load(Path::new("/nonexistent/vgpu.conf")).unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.device.device_type, "vgpu-cuda");
    }

    #[test]
    fn reads_values() {
        let cfg = Config::parse(
            "db_path = \"/tmp/x.db\"\nmode = \"remote\"\n[device]\ntype = \"vgpu-stub\"\nextra = \"addr=6\"\n[restart]\nshutdown_timeout_s = 30\n",
            Path::new("t.conf"),
        )
        .unwrap();
        assert_eq!(cfg.db_path, PathBuf::from("/tmp/x.db"));
        assert_eq!(cfg.mode, Mode::Remote);
        assert_eq!(cfg.device.extra, "addr=6");
        assert_eq!(cfg.restart.shutdown_timeout_s, 30);
    }

    #[test]
    fn refuses_typos_and_bad_values() {
        for text in [
            "db_pth = \"x\"",
            "mode = \"sideways\"",
            "[device]\ntype = \"a b\"",
            "[device]\nextra = \"vm_id=3\"",
            "[device]\nextra = \",,p,x=1\"",
            "[restart]\nshutdown_timeout_s = 0",
            "not toml",
        ] {
            let e = Config::parse(text, Path::new("bad.conf")).unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::InvalidArgument, "{text}");
        }
    }
}
