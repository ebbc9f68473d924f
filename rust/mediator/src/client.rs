//! One admin request over the mediator's unix socket, bounded by a timeout.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::protocol::{decode_header, encode_request, Answer, Command, ProtocolError, HEADER_LEN};

/// Where the mediator listens unless configured otherwise.
pub const DEFAULT_ADMIN_SOCKET: &str = "/var/vgpu/admin.sock";
/// How long one request may take unless configured otherwise. The mediator answers from its main
/// loop, so a healthy one answers in milliseconds and a stuck one should not hold a command up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How much of the answer text is read at a time; the buffer grows with what actually arrives,
/// not with what the header announces.
const READ_CHUNK: usize = 64 * 1024;

/// A mediator's admin socket. Each [`Client::ask`] is one connection: connect, send, read, close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub socket: PathBuf,
    /// The limit for a whole request: connecting, sending and reading the answer.
    pub timeout: Duration,
}

impl Default for Client {
    fn default() -> Self {
        Client::new(DEFAULT_ADMIN_SOCKET, DEFAULT_TIMEOUT)
    }
}

/// What went wrong asking a mediator.
#[derive(Debug, thiserror::Error)]
pub enum MediatorError {
    /// The socket file does not exist: no mediator runs here (callers may skip such a host).
    #[error("no mediator admin socket at {}", .socket.display())]
    NoSocket { socket: PathBuf },
    /// The socket exists but connecting failed (refused: nothing listens, e.g. a mediator that
    /// died and left its socket file; or permission denied).
    #[error("cannot connect to the mediator at {}: {err}", .socket.display())]
    Unreachable { socket: PathBuf, err: io::Error },
    /// The request did not complete within the client's timeout.
    #[error(
        "the mediator at {} did not answer {command} within {}",
        .socket.display(),
        seconds(*.timeout)
    )]
    Timeout {
        socket: PathBuf,
        command: Command,
        timeout: Duration,
    },
    /// The mediator closed the connection without answering. It does that with requests it
    /// cannot read (short, or with a wrong magic), so the other end may be an incompatible
    /// mediator.
    #[error(
        "the mediator at {} closed the connection without answering {command}",
        .socket.display()
    )]
    Dropped { socket: PathBuf, command: Command },
    /// The answer does not follow the protocol.
    #[error("the mediator at {} answered {command} wrongly: {err}", .socket.display())]
    Protocol {
        socket: PathBuf,
        command: Command,
        #[source]
        err: ProtocolError,
    },
    /// Sending or reading failed otherwise.
    #[error("asking the mediator at {} for {command}: {err}", .socket.display())]
    Io {
        socket: PathBuf,
        command: Command,
        err: io::Error,
    },
}

impl MediatorError {
    /// The socket the failed request was for.
    pub fn socket(&self) -> &Path {
        match self {
            MediatorError::NoSocket { socket }
            | MediatorError::Unreachable { socket, .. }
            | MediatorError::Timeout { socket, .. }
            | MediatorError::Dropped { socket, .. }
            | MediatorError::Protocol { socket, .. }
            | MediatorError::Io { socket, .. } => socket,
        }
    }
}

/// `1.5 s`, `2 s`, `250 ms`.
fn seconds(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{} ms", duration.as_millis())
    } else {
        format!("{} s", duration.as_secs_f64())
    }
}

/// Why a read or write stopped short.
enum Stop {
    /// The deadline passed.
    Late,
    Io(io::Error),
}

/// The part of a read that ended early: how many bytes had arrived.
enum Filled {
    All,
    EndedAfter(usize),
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Client {
        Client {
            socket: socket.into(),
            timeout,
        }
    }

    /// Sends `command` and returns the mediator's answer, whatever its status: a status other
    /// than 0 is the mediator's own error, carried in [`Answer::text`], not a [`MediatorError`].
    ///
    /// The whole exchange takes at most the client's timeout (plus scheduling noise), even when
    /// the mediator accepts and never answers or its listen queue is full.
    pub fn ask(&self, command: Command) -> Result<Answer, MediatorError> {
        let deadline = Instant::now() + self.timeout;
        let mut stream = self.connect(command, deadline)?;
        let failed = |stop: Stop, answered: bool| self.failure(command, stop, answered);

        stream
            .set_write_timeout(Some(
                left(deadline).ok_or_else(|| failed(Stop::Late, false))?,
            ))
            .map_err(|err| failed(Stop::Io(err), false))?;
        stream
            .write_all(&encode_request(command))
            .map_err(|err| failed(classify(err), false))?;

        let mut header = [0u8; HEADER_LEN];
        match fill(&mut stream, &mut header, deadline).map_err(|stop| failed(stop, false))? {
            Filled::All => {}
            Filled::EndedAfter(0) => {
                return Err(MediatorError::Dropped {
                    socket: self.socket.clone(),
                    command,
                })
            }
            Filled::EndedAfter(got) => {
                return Err(self.protocol(command, ProtocolError::ShortHeader { got }))
            }
        }
        let header = decode_header(&header).map_err(|err| self.protocol(command, err))?;

        let expected = header.data_len;
        // At most MAX_DATA_LEN, so it fits a usize.
        let wanted = expected as usize;
        let mut body = Vec::new();
        while body.len() < wanted {
            let start = body.len();
            body.resize(wanted.min(start + READ_CHUNK), 0);
            match fill(&mut stream, &mut body[start..], deadline)
                .map_err(|stop| failed(stop, true))?
            {
                Filled::All => {}
                Filled::EndedAfter(got) => {
                    return Err(self.protocol(
                        command,
                        ProtocolError::TruncatedBody {
                            expected,
                            got: start + got,
                        },
                    ))
                }
            }
        }
        Ok(Answer {
            status: header.status,
            text: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Connects before `deadline`. A unix-socket connect blocks while the listener's queue is
    /// full (a mediator stuck on an earlier request), and std offers no connect timeout for unix
    /// sockets, so the connect runs on a thread of its own. One that outlives the deadline is
    /// left behind: it ends when the mediator accepts or the connection fails, and the stream it
    /// then makes is closed at once.
    fn connect(&self, command: Command, deadline: Instant) -> Result<UnixStream, MediatorError> {
        let (sender, receiver) = mpsc::channel();
        let path = self.socket.clone();
        thread::Builder::new()
            .name("mediator-connect".into())
            .spawn(move || {
                // The receiver is gone once the caller has given up: the stream is then dropped.
                let _ = sender.send(UnixStream::connect(path));
            })
            .map_err(|err| self.unreachable(err))?;
        let limit = left(deadline).unwrap_or_default();
        match receiver.recv_timeout(limit) {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(err)) if err.kind() == io::ErrorKind::NotFound => Err(MediatorError::NoSocket {
                socket: self.socket.clone(),
            }),
            Ok(Err(err)) => Err(self.unreachable(err)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(self.failure(command, Stop::Late, false)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(self.unreachable(io::Error::other(
                "the connecting thread ended without a result",
            ))),
        }
    }

    fn unreachable(&self, err: io::Error) -> MediatorError {
        MediatorError::Unreachable {
            socket: self.socket.clone(),
            err,
        }
    }

    fn protocol(&self, command: Command, err: ProtocolError) -> MediatorError {
        MediatorError::Protocol {
            socket: self.socket.clone(),
            command,
            err,
        }
    }

    /// `answered`: whether part of an answer had arrived. A reset before that is the mediator
    /// dropping the request (closing with the request unread resets the connection).
    fn failure(&self, command: Command, stop: Stop, answered: bool) -> MediatorError {
        let socket = self.socket.clone();
        match stop {
            Stop::Late => MediatorError::Timeout {
                socket,
                command,
                timeout: self.timeout,
            },
            Stop::Io(err) if !answered && is_reset(&err) => {
                MediatorError::Dropped { socket, command }
            }
            Stop::Io(err) => MediatorError::Io {
                socket,
                command,
                err,
            },
        }
    }
}

/// Time left before `deadline`; `None` once it has passed (a zero timeout would mean "block" to
/// the socket calls, and is refused by them).
fn left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
}

fn classify(err: io::Error) -> Stop {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Stop::Late,
        _ => Stop::Io(err),
    }
}

fn is_reset(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Reads until `buf` is full, the peer closes, or `deadline` passes.
fn fill(stream: &mut UnixStream, buf: &mut [u8], deadline: Instant) -> Result<Filled, Stop> {
    let mut filled = 0;
    while filled < buf.len() {
        let limit = left(deadline).ok_or(Stop::Late)?;
        stream.set_read_timeout(Some(limit)).map_err(Stop::Io)?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Ok(Filled::EndedAfter(filled)),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(classify(err)),
        }
    }
    Ok(Filled::All)
}

#[cfg(test)]
mod tests;
