//! "POST this JSON body to /jsonrpc and give me the response body", over a unix socket or http(s).
//!
//! Both go through a ureq agent: http(s) with ureq's own connector, the unix socket with ours
//! ([`crate::unix`]).

use std::io;
use std::path::Path;
use std::time::Duration;

use crate::client::ClientOptions;
use crate::endpoint::Endpoint;
use crate::unix;
use crate::{Result, XapiError};

/// Bigger answers mean something is wrong; a `VM.get_all_records_where` over a pool of thousands
/// of VMs stays far below this.
const MAX_BODY: usize = 256 * 1024 * 1024;
const USER_AGENT: &str = concat!("vgpu-registry/", env!("CARGO_PKG_VERSION"));

/// Carries JSON-RPC bodies to one endpoint.
pub(crate) struct Transport {
    label: String,
    connect_timeout: Duration,
    read_timeout: Duration,
    kind: Kind,
}

enum Kind {
    Agent {
        agent: ureq::Agent,
        url: String,
        /// One deadline for the whole exchange rather than one per phase (see `post_agent`).
        whole_call: bool,
    },
    /// The TLS setup failed (e.g. an unreadable CA file). `Client::new` is infallible, so the
    /// reason is kept and reported by every call instead.
    Unusable(String),
}

impl Transport {
    pub(crate) fn new(endpoint: &Endpoint, options: &ClientOptions) -> Transport {
        let kind = match (endpoint, endpoint.jsonrpc_url()) {
            (Endpoint::Unix(path), _) => Kind::Agent {
                agent: unix::agent(path, agent_config(options, ureq::tls::TlsConfig::default())),
                url: unix::URL.to_string(),
                whole_call: true,
            },
            (_, Some(url)) => match tls_config(options) {
                Ok(tls) => Kind::Agent {
                    agent: agent_config(options, tls).new_agent(),
                    url,
                    whole_call: false,
                },
                Err(reason) => Kind::Unusable(reason),
            },
            (_, None) => Kind::Unusable("no JSON-RPC URL for this endpoint".to_string()),
        };
        Transport {
            label: endpoint.to_string(),
            connect_timeout: options.connect_timeout,
            read_timeout: options.read_timeout,
            kind,
        }
    }

    pub(crate) fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// Posts `body` and returns the body of a 2xx answer. `method` only labels errors;
    /// `read_timeout` overrides the configured one for calls that legitimately take long.
    pub(crate) fn post(
        &self,
        method: &str,
        body: &[u8],
        read_timeout: Option<Duration>,
    ) -> Result<Vec<u8>> {
        let read_timeout = read_timeout.unwrap_or(self.read_timeout);
        let response = self.send(method, body, read_timeout)?;
        let status = response.status;
        let body = response
            .body
            .into_with_config()
            .limit(MAX_BODY as u64)
            .read_to_vec()
            .map_err(|e| self.failure(method, read_timeout, e))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(self.status_error(status, &body))
        }
    }

    /// [`post`](Self::post), handing the body of a 2xx answer to `read` as a buffered stream
    /// rather than reading it whole first: a large answer is parsed as it arrives. When the
    /// connection fails under `read` (a timeout, the peer gone, the size limit), the stream keeps
    /// that error, and it is what this returns, whatever `read` made of the stream's failure.
    pub(crate) fn post_streamed<T>(
        &self,
        method: &str,
        body: &[u8],
        read_timeout: Option<Duration>,
        read: impl FnOnce(&mut BodyStream<'_>) -> Result<T>,
    ) -> Result<T> {
        let read_timeout = read_timeout.unwrap_or(self.read_timeout);
        let response = self.send(method, body, read_timeout)?;
        if !response.status.is_success() {
            let status = response.status;
            let body = response
                .body
                .into_with_config()
                .limit(MAX_BODY as u64)
                .read_to_vec()
                .map_err(|e| self.failure(method, read_timeout, e))?;
            return Err(self.status_error(status, &body));
        }
        let reader = response
            .body
            .into_with_config()
            .limit(MAX_BODY as u64)
            .reader();
        let mut stream = BodyStream {
            inner: io::BufReader::with_capacity(STREAM_BUFFER, reader),
            transport: self,
            method,
            read_timeout,
            failure: None,
        };
        let result = read(&mut stream);
        match stream.failure.take() {
            Some(failure) => Err(failure),
            None => result,
        }
    }

    fn send(&self, method: &str, body: &[u8], read_timeout: Duration) -> Result<HttpResponse> {
        match &self.kind {
            Kind::Agent {
                agent,
                url,
                whole_call,
            } => post_agent(agent, url, body, read_timeout, *whole_call)
                .map_err(|err| self.failure(method, read_timeout, err)),
            Kind::Unusable(reason) => Err(XapiError::Transport {
                endpoint: self.label.clone(),
                reason: reason.clone(),
            }),
        }
    }

    /// The error for a failed exchange: a timeout names the call, anything else the reason.
    fn failure(&self, method: &str, read_timeout: Duration, err: ureq::Error) -> XapiError {
        let timeout = |seconds: Duration| XapiError::Timeout {
            endpoint: self.label.clone(),
            method: method.to_string(),
            seconds: seconds.as_secs(),
        };
        match err {
            ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
                timeout(self.connect_timeout)
            }
            ureq::Error::Timeout(_) => timeout(read_timeout),
            ureq::Error::Io(e) if is_timeout(&e) => timeout(read_timeout),
            other => XapiError::Transport {
                endpoint: self.label.clone(),
                reason: describe_ureq_error(&other),
            },
        }
    }

    /// An answer that is not 2xx (a proxy's or xapi's error page).
    fn status_error(&self, status: ureq::http::StatusCode, body: &[u8]) -> XapiError {
        XapiError::Transport {
            endpoint: self.label.clone(),
            reason: format!(
                "HTTP {} {}{}",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                body_excerpt(body)
            ),
        }
    }
}

/// Reading buffer of a streamed answer: large enough that the parse works on long runs of bytes.
const STREAM_BUFFER: usize = 64 * 1024;

/// The body of an answer, read as it arrives (see [`Transport::post_streamed`]).
pub(crate) struct BodyStream<'t> {
    inner: io::BufReader<ureq::BodyReader<'static>>,
    transport: &'t Transport,
    method: &'t str,
    read_timeout: Duration,
    /// What broke the connection, as `post` would report it.
    failure: Option<XapiError>,
}

impl BodyStream<'_> {
    fn keep(&mut self, err: io::Error) -> io::Error {
        if self.failure.is_none() {
            let failure =
                self.transport
                    .failure(self.method, self.read_timeout, ureq::Error::from(err));
            self.failure = Some(failure);
        }
        io::Error::other("the connection to XAPI failed while reading the answer")
    }
}

impl io::Read for BodyStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| self.keep(e))
    }
}

impl io::BufRead for BodyStream<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        // Two steps, so that the error path does not hold the buffer's borrow.
        if let Err(e) = self.inner.fill_buf() {
            return Err(self.keep(e));
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.inner.consume(n)
    }
}

struct HttpResponse {
    status: ureq::http::StatusCode,
    body: ureq::Body,
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// The start of an error body, so a proxy's or xapi's HTML error page says what went wrong.
fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

// ---------------------------------------------------------------------------------------------
// the agents

fn tls_config(options: &ClientOptions) -> std::result::Result<ureq::tls::TlsConfig, String> {
    use ureq::tls::{RootCerts, TlsConfig};

    let mut tls = TlsConfig::builder();
    if options.insecure_tls {
        tls = tls.disable_verification(true);
    } else if let Some(ca_file) = &options.ca_file {
        tls = tls.root_certs(RootCerts::new_with_certs(&read_ca_file(ca_file)?));
    }
    Ok(tls.build())
}

fn agent_config(options: &ClientOptions, tls: ureq::tls::TlsConfig) -> ureq::config::Config {
    let read = Some(options.read_timeout);
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_resolve(Some(options.connect_timeout))
        .timeout_connect(Some(options.connect_timeout))
        .timeout_send_request(read)
        .timeout_send_body(read)
        .timeout_recv_response(read)
        .timeout_recv_body(read)
        // xapi reports its own errors in the body; the status is checked by `Transport::post`.
        .http_status_as_error(false)
        // Following a redirect would turn the POST into a GET; report it instead.
        .max_redirects(0)
        .user_agent(USER_AGENT)
        .build()
}

fn read_ca_file(path: &Path) -> std::result::Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => return Err(format!("cannot parse CA file {}: {e}", path.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "CA file {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// One POST, up to the head of the answer. Each phase (sending, waiting for the head, reading
/// the body) gets `read_timeout`; with `whole_call` the exchange as a whole gets it too, as on
/// the unix socket, where there is no connect phase to bound separately.
fn post_agent(
    agent: &ureq::Agent,
    url: &str,
    body: &[u8],
    read_timeout: Duration,
    whole_call: bool,
) -> std::result::Result<HttpResponse, ureq::Error> {
    let read = Some(read_timeout);
    let response = agent
        .post(url)
        .config()
        .timeout_global(read.filter(|_| whole_call))
        .timeout_send_request(read)
        .timeout_send_body(read)
        .timeout_recv_response(read)
        .timeout_recv_body(read)
        .build()
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .send(body)?;
    Ok(HttpResponse {
        status: response.status(),
        body: response.into_body(),
    })
}

fn describe_ureq_error(err: &ureq::Error) -> String {
    let reason = match err {
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        // The unix connector's own message already names the socket.
        ureq::Error::Io(e)
            if e.get_ref()
                .is_some_and(|inner| inner.is::<unix::ConnectFailed>()) =>
        {
            e.to_string()
        }
        ureq::Error::Io(e) => format!("connection error: {e}"),
        other => other.to_string(),
    };
    // Pools usually run on self-signed certificates, so say what the way out is.
    if reason.contains("invalid peer certificate") {
        format!("{reason} (trust the pool's certificate with a CA file, or disable verification)")
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Instant;

    /// One request as a test server saw it.
    #[derive(Debug)]
    struct Seen {
        head: String,
        body: Vec<u8>,
    }

    fn read_request(stream: &mut impl Read) -> Seen {
        let mut reader = io::BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let len = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then_some(value)
            })
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap_or_default();
        Seen { head, body }
    }

    /// Serves one connection on a fresh socket: reads the request, then lets `respond` write.
    fn unix_server(
        respond: impl FnOnce(&mut UnixStream) + Send + 'static,
    ) -> (tempfile::TempDir, PathBuf, mpsc::Receiver<Seen>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xapi.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let seen = read_request(&mut stream);
                let _ = tx.send(seen);
                respond(&mut stream);
            }
        });
        (dir, path, rx)
    }

    fn unix_transport(path: &Path) -> Transport {
        Transport::new(
            &Endpoint::Unix(path.to_path_buf()),
            &ClientOptions::default(),
        )
    }

    fn post(path: &Path) -> Result<Vec<u8>> {
        unix_transport(path).post("m", br#"{"x":1}"#, Some(Duration::from_secs(5)))
    }

    /// The reason of a transport error, or a panic naming what came instead.
    fn broken(result: Result<Vec<u8>>) -> String {
        match result {
            Err(XapiError::Transport { reason, .. }) => reason,
            other => panic!("expected a transport error, got {other:?}"),
        }
    }

    #[test]
    fn content_length_body_and_request_shape() {
        let (_dir, path, rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}trailing-garbage")
                .unwrap();
        });
        assert_eq!(post(&path).unwrap(), b"{\"ok\":true}");
        let seen = rx.recv().unwrap();
        assert!(
            seen.head.starts_with("POST /jsonrpc HTTP/1.1\r\n"),
            "{}",
            seen.head
        );
        let head = seen.head.to_ascii_lowercase();
        for header in [
            "host: localhost\r\n",
            "content-type: application/json\r\n",
            "accept: application/json\r\n",
            "content-length: 7\r\n",
            concat!(
                "user-agent: vgpu-registry/",
                env!("CARGO_PKG_VERSION"),
                "\r\n"
            ),
        ] {
            assert!(head.contains(header), "{header} missing in {}", seen.head);
        }
        assert_eq!(seen.body, br#"{"x":1}"#);
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n")
                .unwrap();
            s.flush().unwrap();
            thread::sleep(Duration::from_millis(20));
            s.write_all(b"B;ext=1\r\n:[1,2,3,4]}\r\n0\r\nX-Trailer: y\r\n\r\n")
                .unwrap();
        });
        assert_eq!(
            String::from_utf8_lossy(&post(&path).unwrap()),
            "{\"a\":[1,2,3,4]}"
        );
    }

    #[test]
    fn chunked_body_ending_without_final_crlf_is_complete() {
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n",
            )
            .unwrap();
        });
        assert_eq!(post(&path).unwrap(), b"hi");
    }

    #[test]
    fn body_delimited_by_eof() {
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\n{\"result\":").unwrap();
            s.flush().unwrap();
            thread::sleep(Duration::from_millis(20));
            s.write_all(b"\"x\"}").unwrap();
        });
        assert_eq!(post(&path).unwrap(), b"{\"result\":\"x\"}");
    }

    #[test]
    fn interim_continue_is_skipped() {
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            )
            .unwrap();
        });
        assert_eq!(post(&path).unwrap(), b"ok");
    }

    #[test]
    fn non_2xx_status_is_a_transport_error_with_the_status() {
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 500 Internal Error\r\nContent-Length: 14\r\n\r\n<html>x</html>")
                .unwrap();
        });
        match unix_transport(&path).post("VM.get_all", b"{}", None) {
            Err(XapiError::Transport { endpoint, reason }) => {
                assert!(endpoint.starts_with("unix:/"), "{endpoint}");
                // The standard reason phrase: ureq does not keep the server's own.
                assert_eq!(reason, "HTTP 500 Internal Server Error: <html>x</html>");
            }
            other => panic!("expected a transport error, got {other:?}"),
        }
    }

    #[test]
    fn server_closing_early_is_reported() {
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"short\"")
                .unwrap();
        });
        let reason = broken(post(&path));
        assert!(reason.contains("Peer disconnected"), "{reason}");

        let (_dir, path, _rx) = unix_server(|_| {});
        let reason = broken(post(&path));
        assert!(reason.contains("Peer disconnected"), "{reason}");

        let (_dir, path, _rx) = unix_server(|s| s.write_all(b"HTTP/1.1 200 OK\r\nConte").unwrap());
        let reason = broken(post(&path));
        assert!(reason.contains("Peer disconnected"), "{reason}");

        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc")
                .unwrap()
        });
        let reason = broken(post(&path));
        assert!(reason.contains("Peer disconnected"), "{reason}");
    }

    #[test]
    fn garbage_is_reported() {
        let (_dir, path, _rx) = unix_server(|s| s.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").unwrap());
        let reason = broken(post(&path));
        assert!(reason.starts_with("protocol: "), "{reason}");
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                .unwrap()
        });
        let reason = broken(post(&path));
        assert!(reason.contains("chunk"), "{reason}");
    }

    #[test]
    fn silent_server_times_out() {
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
            thread::sleep(Duration::from_millis(1500));
        });
        let started = Instant::now();
        let transport = Transport::new(
            &Endpoint::Unix(path),
            &ClientOptions {
                read_timeout: Duration::from_secs(30),
                ..ClientOptions::default()
            },
        );
        let result = transport.post("VM.clean_shutdown", b"{}", Some(Duration::from_millis(300)));
        assert_eq!(
            result,
            Err(XapiError::Timeout {
                endpoint: transport.label.clone(),
                method: "VM.clean_shutdown".into(),
                seconds: 0,
            })
        );
        assert!(
            started.elapsed() < Duration::from_millis(1400),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn the_call_timeout_bounds_the_whole_exchange() {
        // The head comes after 300 ms and the body over 400 more: each phase alone is within
        // the 500 ms of the call, the exchange is not.
        let (_dir, path, _rx) = unix_server(|s| {
            thread::sleep(Duration::from_millis(300));
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n")
                .is_err()
            {
                return;
            }
            for _ in 0..40 {
                thread::sleep(Duration::from_millis(10));
                if s.write_all(b" ").is_err() {
                    return;
                }
            }
        });
        let transport = unix_transport(&path);
        let started = Instant::now();
        let result = transport.post("VM.start", b"{}", Some(Duration::from_millis(500)));
        assert!(
            matches!(result, Err(XapiError::Timeout { .. })),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
    }

    /// The body as `post_streamed` hands it out, read to the end.
    fn post_streamed(path: &Path, timeout: Duration) -> Result<Vec<u8>> {
        unix_transport(path).post_streamed("VM.get_all_records_where", b"{}", Some(timeout), |s| {
            let mut body = Vec::new();
            // What a parser does with a failed read: report something else; the stream's own
            // failure must win.
            s.read_to_end(&mut body).map_err(|e| XapiError::Protocol {
                method: "m".into(),
                reason: e.to_string(),
            })?;
            Ok(body)
        })
    }

    #[test]
    fn a_streamed_body_arrives_whole_however_it_is_sent() {
        let (_dir, path, rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n")
                .unwrap();
            s.flush().unwrap();
            thread::sleep(Duration::from_millis(20));
            s.write_all(b"B\r\n:[1,2,3,4]}\r\n0\r\n\r\n").unwrap();
        });
        assert_eq!(post_streamed(&path, SECOND).unwrap(), b"{\"a\":[1,2,3,4]}");
        assert_eq!(rx.recv().unwrap().body, b"{}");

        let big = vec![b'x'; 3 * STREAM_BUFFER + 17];
        let sent = big.clone();
        let (_dir, path, _rx) = unix_server(move |s| {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", sent.len());
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&sent).unwrap();
        });
        assert_eq!(post_streamed(&path, SECOND).unwrap(), big);
    }

    #[test]
    fn a_streamed_call_reports_the_connection_not_the_parse() {
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"short\"")
                .unwrap();
        });
        let reason = broken(post_streamed(&path, SECOND));
        assert!(reason.contains("Peer disconnected"), "{reason}");

        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 4\r\n\r\nbody")
                .unwrap();
        });
        assert_eq!(
            broken(post_streamed(&path, SECOND)),
            "HTTP 502 Bad Gateway: body"
        );

        // The head at once, the body never: the call's timeout still bounds the whole exchange.
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n{")
                .unwrap();
            thread::sleep(Duration::from_millis(1500));
        });
        let started = Instant::now();
        let result = post_streamed(&path, Duration::from_millis(300));
        assert!(
            matches!(&result, Err(XapiError::Timeout { method, .. }) if method == "VM.get_all_records_where"),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1400),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn missing_socket_is_a_transport_error() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent.sock");
        let endpoint = Endpoint::Unix(absent.clone());
        let transport = Transport::new(&endpoint, &ClientOptions::default());
        match transport.post("session.login_with_password", b"{}", None) {
            Err(XapiError::Transport {
                endpoint: label,
                reason,
            }) => {
                assert_eq!(label, endpoint.to_string());
                let expected = format!("cannot connect to {}: ", absent.display());
                assert!(reason.starts_with(&expected), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Answers `answers` requests, each with `reply(n)`, counting the connections it accepted.
    fn keep_alive_server(
        answers: usize,
        reply: impl Fn(usize) -> &'static str + Send + 'static,
    ) -> (tempfile::TempDir, PathBuf, mpsc::Receiver<usize>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xapi.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut served = 0;
            let mut connections = 0;
            while served < answers {
                let Ok((mut stream, _)) = listener.accept() else {
                    return;
                };
                connections += 1;
                while served < answers {
                    let seen = read_request(&mut stream);
                    if seen.head.is_empty() {
                        break;
                    }
                    let answer = reply(served);
                    served += 1;
                    if stream.write_all(answer.as_bytes()).is_err() {
                        break;
                    }
                    if answer.contains("Connection: close") {
                        break;
                    }
                }
            }
            let _ = tx.send(connections);
        });
        (dir, path, rx)
    }

    #[test]
    fn a_kept_alive_connection_carries_the_next_call() {
        let (_dir, path, connections) = keep_alive_server(3, |_| {
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
        });
        let transport = unix_transport(&path);
        for _ in 0..3 {
            assert_eq!(transport.post("m", b"{}", None).unwrap(), b"ok");
        }
        assert_eq!(connections.recv_timeout(SECOND).unwrap(), 1);
    }

    #[test]
    fn a_closed_connection_is_not_reused() {
        let (_dir, path, connections) = keep_alive_server(3, |_| {
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        });
        let transport = unix_transport(&path);
        for _ in 0..3 {
            assert_eq!(transport.post("m", b"{}", None).unwrap(), b"ok");
        }
        assert_eq!(connections.recv_timeout(SECOND).unwrap(), 3);
    }

    #[test]
    fn an_idle_connection_the_server_dropped_is_replaced() {
        // The server keeps the connection open in words, then closes it (as a restarted xapi
        // would); the next call must dial again rather than fail on the dead connection.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xapi.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for _ in 0..2 {
                let Ok((mut stream, _)) = listener.accept() else {
                    return;
                };
                let _ = read_request(&mut stream);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
                );
                drop(stream);
                let _ = tx.send(());
            }
        });
        let transport = unix_transport(&path);
        assert_eq!(transport.post("m", b"{}", None).unwrap(), b"ok");
        rx.recv_timeout(SECOND).unwrap();
        thread::sleep(Duration::from_millis(50));
        assert_eq!(transport.post("m", b"{}", None).unwrap(), b"ok");
        rx.recv_timeout(SECOND).unwrap();
    }

    const SECOND: Duration = Duration::from_secs(5);

    #[test]
    fn http_via_ureq_posts_to_jsonrpc() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for status in ["200 OK", "502 Bad Gateway"] {
                let Ok((mut stream, _)) = listener.accept() else {
                    return;
                };
                let seen = read_request(&mut stream);
                let _ = tx.send(seen);
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody"
                );
                stream.write_all(reply.as_bytes()).unwrap();
            }
        });
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let transport = Transport::new(&endpoint, &ClientOptions::default());
        assert_eq!(transport.post("m", b"{\"a\":2}", None).unwrap(), b"body");
        let seen = rx.recv().unwrap();
        assert!(
            seen.head.starts_with("POST /jsonrpc HTTP/1.1\r\n"),
            "{}",
            seen.head
        );
        assert!(seen
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/json"));
        assert_eq!(seen.body, b"{\"a\":2}");
        match transport.post("m", b"{}", None) {
            Err(XapiError::Transport { reason, .. }) => {
                assert_eq!(reason, "HTTP 502 Bad Gateway: body")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn http_refused_and_timeout() {
        // Bind then drop: the port is very likely closed for the next moment.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let transport = Transport::new(&endpoint, &ClientOptions::default());
        match transport.post("m", b"{}", None) {
            Err(XapiError::Transport {
                endpoint: label, ..
            }) => {
                assert_eq!(label, format!("http://127.0.0.1:{port}"))
            }
            other => panic!("{other:?}"),
        }

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let _ = read_request(&mut stream);
                thread::sleep(Duration::from_millis(1500));
            }
        });
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let transport = Transport::new(&endpoint, &ClientOptions::default());
        let started = Instant::now();
        match transport.post("VM.clean_shutdown", b"{}", Some(Duration::from_millis(300))) {
            Err(XapiError::Timeout { method, .. }) => assert_eq!(method, "VM.clean_shutdown"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_millis(1400));
    }

    #[test]
    fn unreadable_ca_file_is_reported_on_use() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        for (ca_file, expected) in [
            (dir.path().join("absent.pem"), "cannot read CA file"),
            (not_pem, "holds no PEM certificate"),
        ] {
            let options = ClientOptions {
                ca_file: Some(ca_file),
                ..ClientOptions::default()
            };
            let endpoint = Endpoint::parse("https://127.0.0.1:1").unwrap();
            match Transport::new(&endpoint, &options).post("m", b"{}", None) {
                Err(XapiError::Transport { reason, .. }) => {
                    assert!(reason.contains(expected), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn https_to_a_plain_http_server_fails_cleanly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let endpoint = Endpoint::parse(&format!("https://127.0.0.1:{port}")).unwrap();
        let transport = Transport::new(&endpoint, &ClientOptions::default());
        assert!(matches!(
            transport.post("m", b"{}", None),
            Err(XapiError::Transport { .. })
        ));
    }
}
