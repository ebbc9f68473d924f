//! Where XAPI listens: dom0's unix socket or a pool master over http(s).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::{Result, XapiError};

/// The path of xapi's JSON-RPC handler; the same on every transport.
pub const JSONRPC_PATH: &str = "/jsonrpc";

/// An XAPI endpoint, as given to `--xapi`.
///
/// Accepted forms: `unix:/abs/path` (also `unix:///abs/path`), `http://host[:port][/]` and
/// `https://host[:port][/]` (default ports 80 and 443; a trailing `/jsonrpc` is accepted and
/// ignored, as JSON-RPC always lives there). `host` is a DNS name, an IPv4 address or a bracketed
/// IPv6 address. [`Display`](fmt::Display) gives the canonical form back, and parsing it again
/// yields the same endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// HTTP over a unix socket (dom0's `/var/lib/xcp/xapi`).
    Unix(PathBuf),
    /// `host` is lowercased; IPv6 addresses keep their brackets.
    Http { host: String, port: u16 },
    /// As `Http`; the certificate is verified unless [`ClientOptions`](crate::ClientOptions)
    /// opts out.
    Https { host: String, port: u16 },
}

impl Endpoint {
    /// Parses an endpoint URL; anything unexpected is [`XapiError::InvalidEndpoint`].
    pub fn parse(text: &str) -> Result<Endpoint> {
        let invalid = || XapiError::InvalidEndpoint(text.to_string());
        // Whitespace is rejected outright: it is far more often a copy-paste accident than part
        // of a socket path or host name.
        if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let (scheme, rest) = text.split_once(':').ok_or_else(invalid)?;
        match scheme.to_ascii_lowercase().as_str() {
            "unix" => parse_unix(rest).map(Endpoint::Unix).ok_or_else(invalid),
            "http" => {
                let (host, port) = parse_authority(rest, 80).ok_or_else(invalid)?;
                Ok(Endpoint::Http { host, port })
            }
            "https" => {
                let (host, port) = parse_authority(rest, 443).ok_or_else(invalid)?;
                Ok(Endpoint::Https { host, port })
            }
            _ => Err(invalid()),
        }
    }

    /// The socket path, for `unix:` endpoints.
    pub fn socket_path(&self) -> Option<&Path> {
        match self {
            Endpoint::Unix(path) => Some(path),
            _ => None,
        }
    }

    /// Whether this is the local unix socket (where dom0 trusts root without a password).
    pub fn is_unix(&self) -> bool {
        matches!(self, Endpoint::Unix(_))
    }

    /// The full JSON-RPC URL for http(s) endpoints (`http://host:port/jsonrpc`).
    pub fn jsonrpc_url(&self) -> Option<String> {
        match self {
            Endpoint::Unix(_) => None,
            Endpoint::Http { host, port } => Some(format!("http://{host}:{port}{JSONRPC_PATH}")),
            Endpoint::Https { host, port } => Some(format!("https://{host}:{port}{JSONRPC_PATH}")),
        }
    }
}

impl FromStr for Endpoint {
    type Err = XapiError;

    fn from_str(text: &str) -> Result<Endpoint> {
        Endpoint::parse(text)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Http { host, port: 80 } => write!(f, "http://{host}"),
            Endpoint::Http { host, port } => write!(f, "http://{host}:{port}"),
            Endpoint::Https { host, port: 443 } => write!(f, "https://{host}"),
            Endpoint::Https { host, port } => write!(f, "https://{host}:{port}"),
        }
    }
}

fn parse_unix(rest: &str) -> Option<PathBuf> {
    // `unix:///p` is the URL spelling of `unix:/p`; `unix://host/p` has no meaning for a socket.
    let path = match rest.strip_prefix("//") {
        Some(after) if after.starts_with('/') => after,
        Some(_) => return None,
        None => rest,
    };
    let plausible = path.starts_with('/')
        && path.len() > 1
        && !path.ends_with('/')
        && !path.contains(['?', '#', '\0']);
    plausible.then(|| PathBuf::from(path))
}

/// `//host[:port][/ or /jsonrpc]` → (lowercased host, port).
fn parse_authority(rest: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = rest.strip_prefix("//")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !matches!(path, "" | "/" | JSONRPC_PATH | "/jsonrpc/") {
        return None;
    }
    // Query, fragment and user-info have no place in an XAPI endpoint (credentials come from
    // their own options, never from a URL that ends up in logs).
    if authority.contains(['?', '#', '@']) {
        return None;
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (v6, after) = bracketed.split_once(']')?;
        if v6.is_empty()
            || !v6
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return None;
        }
        let port = match after {
            "" => default_port,
            _ => parse_port(after.strip_prefix(':')?)?,
        };
        (format!("[{}]", v6.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, parse_port(port)?),
            None => (authority, default_port),
        };
        if !valid_host(host) {
            return None;
        }
        (host.to_ascii_lowercase(), port)
    };
    Some((host, port))
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|&port| port != 0)
}

/// DNS names and IPv4 literals: labels of letters, digits, `-` and `_`, separated by dots.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Endpoint {
        match Endpoint::parse(text) {
            Ok(endpoint) => endpoint,
            Err(err) => panic!("{text:?} should parse: {err}"),
        }
    }

    #[test]
    fn unix_socket_paths() {
        assert_eq!(
            ok("unix:/var/lib/xcp/xapi"),
            Endpoint::Unix(PathBuf::from("/var/lib/xcp/xapi"))
        );
        assert_eq!(
            ok("unix:///run/x.sock"),
            Endpoint::Unix(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(ok("UNIX:/a"), Endpoint::Unix(PathBuf::from("/a")));
        assert_eq!(
            ok("unix:/var/lib/xcp/xapi").to_string(),
            "unix:/var/lib/xcp/xapi"
        );
        assert!(ok("unix:/a").is_unix());
        assert_eq!(ok("unix:/a").socket_path(), Some(Path::new("/a")));
        assert_eq!(ok("unix:/a").jsonrpc_url(), None);
    }

    #[test]
    fn http_and_https_with_default_and_explicit_ports() {
        assert_eq!(
            ok("http://localhost:8080"),
            Endpoint::Http {
                host: "localhost".into(),
                port: 8080
            }
        );
        assert_eq!(
            ok("http://Master.Example"),
            Endpoint::Http {
                host: "master.example".into(),
                port: 80
            }
        );
        assert_eq!(
            ok("https://master/"),
            Endpoint::Https {
                host: "master".into(),
                port: 443
            }
        );
        assert_eq!(
            ok("https://10.0.0.1:8443/jsonrpc"),
            Endpoint::Https {
                host: "10.0.0.1".into(),
                port: 8443
            }
        );
        assert_eq!(
            ok("https://[FE80::1]:443"),
            Endpoint::Https {
                host: "[fe80::1]".into(),
                port: 443
            }
        );
        assert_eq!(
            ok("http://[::1]"),
            Endpoint::Http {
                host: "[::1]".into(),
                port: 80
            }
        );
        assert_eq!(
            ok("http://127.0.0.1:9").jsonrpc_url().as_deref(),
            Some("http://127.0.0.1:9/jsonrpc")
        );
        assert!(!ok("http://a").is_unix());
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for (input, canonical) in [
            ("http://h:80/", "http://h"),
            ("http://H:8080", "http://h:8080"),
            ("https://h:443/jsonrpc", "https://h"),
            ("https://h:8443", "https://h:8443"),
            ("https://[::1]:4443", "https://[::1]:4443"),
            ("unix:///run/x.sock", "unix:/run/x.sock"),
        ] {
            let endpoint = ok(input);
            assert_eq!(endpoint.to_string(), canonical, "{input}");
            assert_eq!(ok(canonical), endpoint, "{canonical}");
        }
        let parsed: Endpoint = "http://h:1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parsed,
            Endpoint::Http {
                host: "h".into(),
                port: 1
            }
        );
    }

    #[test]
    fn rejects_everything_else_naming_the_value() {
        for bad in [
            "",
            " ",
            "ftp://host",
            "host:443",
            "localhost",
            "unix:",
            "unix:/",
            "unix:relative/x.sock",
            "unix:x.sock",
            "unix://host/x.sock",
            "unix:/run/x.sock?mode=1",
            "unix:/run/dir/",
            "unix:/run/x sock",
            " unix:/run/x.sock",
            "http://",
            "http:///",
            "http:host",
            "http://host:",
            "http://host:0",
            "http://host:65536",
            "http://host:80x",
            "http://host:-1",
            "http://host/other",
            "http://host/jsonrpc?x=1",
            "http://host?x=1",
            "http://host#frag",
            "http://user:pw@host",
            "http://ho st",
            "http://host\n",
            "https://[::1",
            "https://[]:443",
            "https://[::1]443",
            "https://-bad.example",
            "https://a..b",
        ] {
            match Endpoint::parse(bad) {
                Err(XapiError::InvalidEndpoint(value)) => assert_eq!(value, bad),
                other => panic!("{bad:?} should be rejected, got {other:?}"),
            }
        }
        let message = Endpoint::parse("ftp://x")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(message.contains("\"ftp://x\""), "{message}");
    }
}
