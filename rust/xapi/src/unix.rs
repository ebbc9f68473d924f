//! dom0's xapi socket as a ureq connector, so that the unix socket and http(s) share one HTTP/1.1
//! client.
//!
//! Everything here implements ureq's `unversioned` traits, which ureq may change in any minor
//! release; that is why the workspace pins ureq to one exact version
//! (docs/decisions/0006-ureq-unix-connector.md says what an upgrade must check).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};
use ureq::Error;

/// The URL requests are sent to: the host only fills the `Host` header, as xapi's own clients
/// do on this socket.
pub(crate) const URL: &str = "http://localhost/jsonrpc";

/// An agent whose connections all go to the socket at `path`.
pub(crate) fn agent(path: &Path, config: Config) -> ureq::Agent {
    ureq::Agent::with_parts(
        config,
        UnixConnector {
            path: path.to_path_buf(),
        },
        NoLookup,
    )
}

/// Connecting failed: says which socket, as the bare io error would not.
#[derive(Debug)]
pub(crate) struct ConnectFailed(String);

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectFailed {}

#[derive(Debug)]
struct UnixConnector {
    path: PathBuf,
}

impl Connector for UnixConnector {
    type Out = UnixTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<UnixTransport>, Error> {
        // Connecting to a unix socket succeeds or fails at once, so no timeout applies here.
        let stream = UnixStream::connect(&self.path).map_err(|e| {
            let message = format!("cannot connect to {}: {e}", self.path.display());
            Error::Io(io::Error::new(e.kind(), ConnectFailed(message)))
        })?;
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(UnixTransport { stream, buffers }))
    }
}

struct UnixTransport {
    stream: UnixStream,
    buffers: LazyBuffers,
}

impl fmt::Debug for UnixTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixTransport").finish_non_exhaustive()
    }
}

/// The time left before `timeout` fires (`None`: never), or the timeout itself when none is.
fn time_left(timeout: &NextTimeout) -> Result<Option<Duration>, Error> {
    if timeout.after.is_not_happening() {
        Ok(None)
    } else if timeout.after.is_zero() {
        Err(Error::Timeout(timeout.reason))
    } else {
        Ok(Some(*timeout.after))
    }
}

fn io_error(err: io::Error, timeout: &NextTimeout) -> Error {
    match err.kind() {
        // A socket timeout surfaces as either, depending on the platform.
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout(timeout.reason),
        _ => Error::Io(err),
    }
}

impl Transport for UnixTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = timeout.for_write();
        self.stream.set_write_timeout(time_left(&timeout)?)?;
        let output = &self.buffers.output()[..amount];
        self.stream
            .write_all(output)
            .map_err(|e| io_error(e, &timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let timeout = timeout.for_read();
        let limit = time_left(&timeout)?;
        let deadline = limit.map(|left| Instant::now() + left);
        self.stream.set_read_timeout(limit)?;
        loop {
            match self.stream.read(self.buffers.input_append_buf()) {
                Ok(amount) => {
                    self.buffers.input_appended(amount);
                    return Ok(amount > 0);
                }
                // A signal cut the wait short: wait again for what is left of it.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if let Some(deadline) = deadline {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(Error::Timeout(timeout.reason));
                        }
                        self.stream.set_read_timeout(Some(left))?;
                    }
                }
                Err(e) => return Err(io_error(e, &timeout)),
            }
        }
    }

    /// Asked before a pooled connection is reused: an idle connection has nothing to read, so
    /// data, end of stream or an error all mean it cannot carry another request.
    fn is_open(&mut self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let idle = matches!(
            self.stream.read(&mut [0u8; 1]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        );
        self.stream.set_nonblocking(false).is_ok() && idle
    }
}

/// The connector dials a path, so there is no host name to look up; ureq still wants an address.
#[derive(Debug)]
struct NoLookup;

impl Resolver for NoLookup {
    fn resolve(
        &self,
        _uri: &Uri,
        _config: &Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, Error> {
        let mut addrs = self.empty();
        addrs.push(SocketAddr::from((Ipv4Addr::LOCALHOST, 80)));
        Ok(addrs)
    }
}
