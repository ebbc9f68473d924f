//! "POST this JSON body to /jsonrpc and give me the response body", over a unix socket or http(s).
//!
//! The unix side is a minimal HTTP/1.1 client of its own: ureq cannot dial unix sockets, and one
//! request per connection with `Connection: close` is all xapi needs.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client::ClientOptions;
use crate::endpoint::{Endpoint, JSONRPC_PATH};
use crate::{Result, XapiError};

/// Bigger answers mean something is wrong; a `VM.get_all_records_where` over a pool of thousands
/// of VMs stays far below this.
const MAX_BODY: usize = 256 * 1024 * 1024;
/// A response head (status line and headers) larger than this is not xapi talking.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
const USER_AGENT: &str = concat!("vgpu-registry/", env!("CARGO_PKG_VERSION"));

/// Carries JSON-RPC bodies to one endpoint.
pub(crate) struct Transport {
    label: String,
    connect_timeout: Duration,
    read_timeout: Duration,
    kind: Kind,
}

enum Kind {
    Unix(PathBuf),
    Http {
        agent: ureq::Agent,
        url: String,
    },
    /// The TLS setup failed (e.g. an unreadable CA file). `Client::new` is infallible, so the
    /// reason is kept and reported by every call instead.
    Unusable(String),
}

impl Transport {
    pub(crate) fn new(endpoint: &Endpoint, options: &ClientOptions) -> Transport {
        let kind = match (endpoint, endpoint.jsonrpc_url()) {
            (Endpoint::Unix(path), _) => Kind::Unix(path.clone()),
            (_, Some(url)) => match http_agent(options) {
                Ok(agent) => Kind::Http { agent, url },
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
        let timeout = |seconds: Duration| XapiError::Timeout {
            endpoint: self.label.clone(),
            method: method.to_string(),
            seconds: seconds.as_secs(),
        };
        let broken = |reason: String| XapiError::Transport {
            endpoint: self.label.clone(),
            reason,
        };
        let response = match &self.kind {
            Kind::Unix(path) => {
                post_unix(path, body, read_timeout).map_err(|failure| match failure {
                    Failure::Timeout => timeout(read_timeout),
                    Failure::Broken(reason) => broken(reason),
                })?
            }
            Kind::Http { agent, url } => {
                post_http(agent, url, body, read_timeout).map_err(|err| match err {
                    ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
                        timeout(self.connect_timeout)
                    }
                    ureq::Error::Timeout(_) => timeout(read_timeout),
                    ureq::Error::Io(e) if is_timeout(&e) => timeout(read_timeout),
                    other => broken(describe_ureq_error(&other)),
                })?
            }
            Kind::Unusable(reason) => return Err(broken(reason.clone())),
        };
        if (200..300).contains(&response.status) {
            Ok(response.body)
        } else {
            Err(broken(format!(
                "HTTP {} {}{}",
                response.status,
                response.reason,
                body_excerpt(&response.body)
            )))
        }
    }
}

struct HttpResponse {
    status: u16,
    reason: String,
    body: Vec<u8>,
}

/// Why a unix-socket exchange failed; mapped to [`XapiError`] by [`Transport::post`].
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Timeout,
    Broken(String),
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

fn io_failure(context: &str, err: io::Error) -> Failure {
    if is_timeout(&err) {
        Failure::Timeout
    } else {
        Failure::Broken(format!("{context}: {err}"))
    }
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
// unix socket

fn post_unix(
    path: &Path,
    body: &[u8],
    read_timeout: Duration,
) -> std::result::Result<HttpResponse, Failure> {
    // Connecting to a unix socket succeeds or fails at once, so there is no connect timeout to
    // apply; the deadline covers sending the request and receiving the whole answer.
    let deadline = Instant::now() + read_timeout;
    let stream = UnixStream::connect(path)
        .map_err(|e| Failure::Broken(format!("cannot connect to {}: {e}", path.display())))?;
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        deadline,
    };
    let head = format!(
        "POST {JSONRPC_PATH} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {USER_AGENT}\r\n\
         Content-Type: application/json\r\nAccept: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let sent = conn.send(head.as_bytes()).and_then(|()| conn.send(body));
    // A server may answer (typically with an error status) and close before reading all of a
    // request; its answer says more than our broken pipe, so look for one before giving up.
    match (sent, read_response(&mut conn)) {
        (_, Ok(response)) => Ok(response),
        (Err(send_failure), Err(_)) => Err(send_failure),
        (Ok(()), Err(read_failure)) => Err(read_failure),
    }
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    deadline: Instant,
}

impl Conn {
    fn remaining(&self) -> std::result::Result<Duration, Failure> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(Failure::Timeout)
        } else {
            Ok(left)
        }
    }

    fn send(&mut self, mut data: &[u8]) -> std::result::Result<(), Failure> {
        while !data.is_empty() {
            let left = self.remaining()?;
            self.stream
                .set_write_timeout(Some(left))
                .map_err(|e| io_failure("cannot set write timeout", e))?;
            match self.stream.write(data) {
                Ok(0) => return Err(Failure::Broken("connection closed while sending".into())),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_failure("cannot send request", e)),
            }
        }
        Ok(())
    }

    /// Reads more into `buf`; `Ok(0)` at end of stream.
    fn fill(&mut self) -> std::result::Result<usize, Failure> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let left = self.remaining()?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| io_failure("cannot set read timeout", e))?;
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    if self.buf.len() + n > MAX_HEAD + MAX_BODY {
                        return Err(Failure::Broken(format!(
                            "response larger than {MAX_BODY} bytes"
                        )));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_failure("cannot read response", e)),
            }
        }
    }

    /// Makes `buf` at least `len` bytes long, or fails with `closed` at end of stream.
    fn need(&mut self, len: usize, closed: &str) -> std::result::Result<(), Failure> {
        while self.buf.len() < len {
            if self.fill()? == 0 {
                return Err(Failure::Broken(closed.to_string()));
            }
        }
        Ok(())
    }

    /// Index of the CRLF ending the line that starts at `from`, reading more as needed.
    fn line_end(&mut self, from: usize) -> std::result::Result<usize, Failure> {
        let mut searched = from;
        loop {
            if let Some(i) = self.buf[searched..].windows(2).position(|w| w == b"\r\n") {
                return Ok(searched + i);
            }
            if self.buf.len() - from > 4096 {
                return Err(Failure::Broken("overlong line in chunked body".into()));
            }
            searched = self.buf.len().saturating_sub(1).max(from);
            if self.fill()? == 0 {
                return Err(Failure::Broken(
                    "connection closed inside a chunked body".into(),
                ));
            }
        }
    }
}

struct Head {
    status: u16,
    reason: String,
    len: usize,
    content_length: Option<usize>,
    chunked: bool,
}

fn parse_head(bytes: &[u8]) -> std::result::Result<Option<Head>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Failure::Broken(format!("malformed HTTP response: {e}"))),
    };
    let status = response.code.unwrap_or(0);
    let reason = response.reason.unwrap_or("").to_string();
    let mut content_length = None;
    let mut chunked = false;
    for header in response.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = value.trim().parse::<usize>().map_err(|_| {
                Failure::Broken(format!("malformed Content-Length {:?}", value.trim()))
            })?;
            if content_length.is_some_and(|seen| seen != parsed) {
                return Err(Failure::Broken("conflicting Content-Length headers".into()));
            }
            content_length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    Ok(Some(Head {
        status,
        reason,
        len,
        content_length,
        chunked,
    }))
}

fn read_response(conn: &mut Conn) -> std::result::Result<HttpResponse, Failure> {
    let mut start = 0;
    let head = loop {
        match parse_head(&conn.buf[start..])? {
            // Interim answers (100 Continue) precede the real one.
            Some(head) if (100..200).contains(&head.status) && head.status != 101 => {
                start += head.len;
            }
            Some(head) => break head,
            None => {
                if conn.buf.len() - start > MAX_HEAD {
                    return Err(Failure::Broken(format!(
                        "response head larger than {MAX_HEAD} bytes"
                    )));
                }
                if conn.fill()? == 0 {
                    let what = if conn.buf.len() == start {
                        "connection closed without a response"
                    } else {
                        "connection closed inside the response head"
                    };
                    return Err(Failure::Broken(what.into()));
                }
            }
        }
    };
    let body_start = start + head.len;
    let body = if head.status == 204 || head.status == 304 {
        Vec::new()
    } else if head.chunked {
        read_chunked(conn, body_start)?
    } else if let Some(len) = head.content_length {
        if len > MAX_BODY {
            return Err(Failure::Broken(format!(
                "response body of {len} bytes exceeds {MAX_BODY}"
            )));
        }
        let closed = format!("connection closed before the end of the {len}-byte body");
        conn.need(body_start + len, &closed)?;
        conn.buf[body_start..body_start + len].to_vec()
    } else {
        while conn.fill()? > 0 {}
        conn.buf[body_start..].to_vec()
    };
    Ok(HttpResponse {
        status: head.status,
        reason: head.reason,
        body,
    })
}

fn read_chunked(conn: &mut Conn, mut pos: usize) -> std::result::Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    loop {
        let end = conn.line_end(pos)?;
        let line = String::from_utf8_lossy(&conn.buf[pos..end]);
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| Failure::Broken(format!("malformed chunk size {size_text:?}")))?;
        pos = end + 2;
        if size == 0 {
            // Trailers until an empty line; a server that closes right after `0\r\n` has still
            // sent the whole body.
            loop {
                match conn.line_end(pos) {
                    Ok(end) if end == pos => return Ok(body),
                    Ok(end) => pos = end + 2,
                    Err(Failure::Broken(_)) => return Ok(body),
                    Err(timeout) => return Err(timeout),
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(Failure::Broken(format!(
                "response body exceeds {MAX_BODY} bytes"
            )));
        }
        conn.need(pos + size + 2, "connection closed inside a chunk")?;
        body.extend_from_slice(&conn.buf[pos..pos + size]);
        if &conn.buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(Failure::Broken("chunk not followed by CRLF".into()));
        }
        pos += size + 2;
    }
}

// ---------------------------------------------------------------------------------------------
// http and https

fn http_agent(options: &ClientOptions) -> std::result::Result<ureq::Agent, String> {
    use ureq::tls::{RootCerts, TlsConfig};

    let mut tls = TlsConfig::builder();
    if options.insecure_tls {
        tls = tls.disable_verification(true);
    } else if let Some(ca_file) = &options.ca_file {
        tls = tls.root_certs(RootCerts::new_with_certs(&read_ca_file(ca_file)?));
    }
    let read = Some(options.read_timeout);
    let config = ureq::Agent::config_builder()
        .tls_config(tls.build())
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
        .build();
    Ok(config.new_agent())
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

fn post_http(
    agent: &ureq::Agent,
    url: &str,
    body: &[u8],
    read_timeout: Duration,
) -> std::result::Result<HttpResponse, ureq::Error> {
    let read = Some(read_timeout);
    let response = agent
        .post(url)
        .config()
        .timeout_send_request(read)
        .timeout_send_body(read)
        .timeout_recv_response(read)
        .timeout_recv_body(read)
        .build()
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .send(body)?;
    let status = response.status();
    let reason = status.canonical_reason().unwrap_or("").to_string();
    let body = response
        .into_body()
        .with_config()
        .limit(MAX_BODY as u64)
        .read_to_vec()?;
    Ok(HttpResponse {
        status: status.as_u16(),
        reason,
        body,
    })
}

fn describe_ureq_error(err: &ureq::Error) -> String {
    let reason = match err {
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
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
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;
    use std::thread;

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

    fn post(path: &Path, timeout: Duration) -> std::result::Result<HttpResponse, Failure> {
        post_unix(path, br#"{"x":1}"#, timeout)
    }

    const SECOND: Duration = Duration::from_secs(5);

    #[test]
    fn content_length_body_and_request_shape() {
        let (_dir, path, rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}trailing-garbage")
                .unwrap();
        });
        let response = post(&path, SECOND).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"{\"ok\":true}");
        let seen = rx.recv().unwrap();
        assert!(
            seen.head.starts_with("POST /jsonrpc HTTP/1.1\r\n"),
            "{}",
            seen.head
        );
        for header in [
            "Host: localhost\r\n",
            "Content-Type: application/json\r\n",
            "Content-Length: 7\r\n",
            "Connection: close\r\n",
        ] {
            assert!(
                seen.head.contains(header),
                "{header} missing in {}",
                seen.head
            );
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
        let response = post(&path, SECOND).unwrap();
        assert_eq!(String::from_utf8_lossy(&response.body), "{\"a\":[1,2,3,4]}");
    }

    #[test]
    fn chunked_body_ending_without_final_crlf_is_complete() {
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n",
            )
            .unwrap();
        });
        assert_eq!(post(&path, SECOND).unwrap().body, b"hi");
    }

    #[test]
    fn body_delimited_by_eof() {
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\n{\"result\":").unwrap();
            s.flush().unwrap();
            thread::sleep(Duration::from_millis(20));
            s.write_all(b"\"x\"}").unwrap();
        });
        assert_eq!(post(&path, SECOND).unwrap().body, b"{\"result\":\"x\"}");
    }

    #[test]
    fn interim_continue_is_skipped() {
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            )
            .unwrap();
        });
        let response = post(&path, SECOND).unwrap();
        assert_eq!((response.status, response.body), (200, b"ok".to_vec()));
    }

    #[test]
    fn non_2xx_status_is_a_transport_error_with_the_status() {
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 500 Internal Error\r\nContent-Length: 13\r\n\r\n<html>x</html>")
                .unwrap();
        });
        let transport = Transport::new(&Endpoint::Unix(path), &ClientOptions::default());
        match transport.post("VM.get_all", b"{}", None) {
            Err(XapiError::Transport { endpoint, reason }) => {
                assert!(endpoint.starts_with("unix:/"), "{endpoint}");
                assert!(reason.starts_with("HTTP 500 Internal Error"), "{reason}");
                assert!(reason.contains("<html>x</html"), "{reason}");
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
        match post(&path, SECOND) {
            Err(Failure::Broken(reason)) => {
                assert!(
                    reason.contains("before the end of the 100-byte body"),
                    "{reason}"
                )
            }
            other => panic!("{:?}", other.map(|r| r.status)),
        }

        let (_dir, path, _rx) = unix_server(|_| {});
        assert_eq!(
            post(&path, SECOND).err(),
            Some(Failure::Broken(
                "connection closed without a response".into()
            ))
        );

        let (_dir, path, _rx) = unix_server(|s| s.write_all(b"HTTP/1.1 200 OK\r\nConte").unwrap());
        assert_eq!(
            post(&path, SECOND).err(),
            Some(Failure::Broken(
                "connection closed inside the response head".into()
            ))
        );

        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc")
                .unwrap()
        });
        assert_eq!(
            post(&path, SECOND).err(),
            Some(Failure::Broken("connection closed inside a chunk".into()))
        );
    }

    #[test]
    fn garbage_is_reported() {
        let (_dir, path, _rx) = unix_server(|s| s.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").unwrap());
        match post(&path, SECOND) {
            Err(Failure::Broken(reason)) => assert!(reason.contains("malformed HTTP"), "{reason}"),
            other => panic!("{:?}", other.map(|r| r.status)),
        }
        let (_dir, path, _rx) = unix_server(|s| {
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                .unwrap()
        });
        match post(&path, SECOND) {
            Err(Failure::Broken(reason)) => assert!(reason.contains("chunk size"), "{reason}"),
            other => panic!("{:?}", other.map(|r| r.status)),
        }
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
    fn missing_socket_is_a_transport_error() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::Unix(dir.path().join("absent.sock"));
        let transport = Transport::new(&endpoint, &ClientOptions::default());
        match transport.post("session.login_with_password", b"{}", None) {
            Err(XapiError::Transport {
                endpoint: label,
                reason,
            }) => {
                assert_eq!(label, endpoint.to_string());
                assert!(reason.contains("cannot connect to"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

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
