//! The client against fake mediators: a thread with a listener in a temporary directory.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::*;
use crate::protocol::{encode_response, MAGIC, MAX_DATA_LEN, REQUEST_LEN};

/// The fake mediators' own limit on anything they wait for, so a broken test ends.
const FAKE_LIMIT: Duration = Duration::from_secs(10);
/// What the timing tests allow beyond the client's timeout: thread start-up and a loaded machine.
const MARGIN: Duration = Duration::from_millis(700);

struct Fake {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    /// The bytes the fake received, once it is done.
    server: JoinHandle<Vec<u8>>,
}

impl Fake {
    fn client(&self, timeout: Duration) -> Client {
        Client::new(&self.socket, timeout)
    }

    fn received(self) -> Vec<u8> {
        self.server.join().expect("the fake mediator panicked")
    }
}

/// A mediator that accepts one connection, reads one request (up to 16 bytes, or until the
/// client closes) and then does `then` with the connection.
fn fake(then: impl FnOnce(&mut UnixStream) + Send + 'static) -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(FAKE_LIMIT)).unwrap();
        let mut request = vec![0u8; REQUEST_LEN];
        let mut got = 0;
        while got < REQUEST_LEN {
            match stream.read(&mut request[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => panic!("fake mediator read: {e}"),
            }
        }
        request.truncate(got);
        then(&mut stream);
        request
    });
    Fake {
        _dir: dir,
        socket,
        server,
    }
}

fn answering(bytes: Vec<u8>) -> Fake {
    fake(move |stream| stream.write_all(&bytes).unwrap())
}

#[test]
fn a_normal_answer() {
    let text = "=== GPU Health ===\nNVML: not available (GPU monitoring disabled)\n";
    let fake = answering(encode_response(0, text).unwrap());
    let answer = fake
        .client(Duration::from_secs(5))
        .ask(Command::ShowHealth)
        .unwrap();
    assert_eq!(
        answer,
        Answer {
            status: 0,
            text: text.into()
        }
    );
    assert!(answer.is_ok());
    assert_eq!(
        fake.received(),
        [0x55, 0x50, 0x47, 0x56, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn the_request_carries_the_prometheus_flag() {
    let fake = answering(encode_response(0, "vgpu_jobs_total 0\n").unwrap());
    let answer = fake
        .client(Duration::from_secs(5))
        .ask(Command::ShowMetrics { prometheus: true })
        .unwrap();
    assert_eq!(answer.text, "vgpu_jobs_total 0\n");
    assert_eq!(
        fake.received(),
        encode_request(Command::ShowMetrics { prometheus: true })
    );
}

#[test]
fn a_status_1_answer_is_an_answer() {
    let fake = answering(encode_response(1, "ERROR: Database not connected\n").unwrap());
    let answer = fake
        .client(Duration::from_secs(5))
        .ask(Command::ReloadConfig)
        .unwrap();
    assert_eq!(answer.status, 1);
    assert_eq!(answer.text, "ERROR: Database not connected\n");
    assert!(!answer.is_ok());
}

#[test]
fn an_empty_text_is_an_answer() {
    let fake = answering(encode_response(0, "").unwrap());
    let answer = fake
        .client(Duration::from_secs(5))
        .ask(Command::ShowConnections)
        .unwrap();
    assert_eq!(answer.text, "");
}

#[test]
fn a_long_answer_arriving_in_pieces_is_read_whole() {
    let text: String = (0..40_000).map(|i| format!("line {i}\n")).collect();
    assert!(text.len() > 3 * READ_CHUNK);
    let bytes = encode_response(0, &text).unwrap();
    let fake = fake(move |stream| {
        for piece in bytes.chunks(10_007) {
            stream.write_all(piece).unwrap();
            stream.flush().unwrap();
        }
    });
    let answer = fake
        .client(Duration::from_secs(10))
        .ask(Command::ShowMetrics { prometheus: false })
        .unwrap();
    assert_eq!(answer.text, text);
}

#[test]
fn a_close_after_reading_the_request_is_dropped() {
    let fake = fake(|_| {});
    let err = fake
        .client(Duration::from_secs(5))
        .ask(Command::ReloadConfig)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            MediatorError::Dropped {
                command: Command::ReloadConfig,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(fake.received().len(), REQUEST_LEN);
}

#[test]
fn a_close_without_reading_the_request_is_dropped() {
    // Closing with the request unread resets the connection instead of ending it cleanly.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        // Let the request arrive, then close with it unread.
        thread::sleep(Duration::from_millis(100));
        drop(stream);
    });
    let err = Client::new(&socket, Duration::from_secs(5))
        .ask(Command::ShowHealth)
        .unwrap_err();
    server.join().unwrap();
    assert!(matches!(err, MediatorError::Dropped { .. }), "{err:?}");
}

#[test]
fn a_mediator_that_never_answers_costs_the_timeout() {
    let (release, held) = mpsc::channel::<()>();
    let fake = fake(move |_| {
        let _ = held.recv_timeout(FAKE_LIMIT);
    });
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let err = fake.client(timeout).ask(Command::ShowHealth).unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, MediatorError::Timeout { timeout: t, command: Command::ShowHealth, .. } if *t == timeout),
        "{err:?}"
    );
    assert!(took >= timeout, "gave up after {took:?}");
    assert!(took < timeout + MARGIN, "took {took:?}");
    release.send(()).unwrap();
    fake.received();
}

#[test]
fn a_mediator_that_drips_its_answer_costs_the_timeout_in_all() {
    // Each byte arrives well within the timeout; the whole answer never does.
    let (release, held) = mpsc::channel::<()>();
    let fake = fake(move |stream| {
        let bytes = encode_response(0, &"x".repeat(1000)).unwrap();
        for byte in bytes {
            if stream.write_all(&[byte]).is_err() {
                return;
            }
            if held.recv_timeout(Duration::from_millis(50)).is_ok() {
                return;
            }
        }
    });
    let timeout = Duration::from_millis(400);
    let started = Instant::now();
    let err = fake
        .client(timeout)
        .ask(Command::ShowConnections)
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, MediatorError::Timeout { .. }), "{err:?}");
    assert!(took < timeout + MARGIN, "took {took:?}");
    let _ = release.send(());
    fake.received();
}

#[test]
fn a_zero_timeout_times_out_at_once() {
    let fake = fake(|_| {});
    let err = fake.client(Duration::ZERO).ask(Command::ShowHealth);
    assert!(matches!(err, Err(MediatorError::Timeout { .. })), "{err:?}");
    // Unblock the fake, which may or may not have been reached.
    let _ = UnixStream::connect(&fake.socket);
    fake.received();
}

#[test]
fn a_wrong_magic_is_a_protocol_error() {
    let mut bytes = encode_response(0, "hello").unwrap();
    bytes[..4].copy_from_slice(b"HTTP");
    let fake = answering(bytes);
    let err = fake
        .client(Duration::from_secs(5))
        .ask(Command::ShowHealth)
        .unwrap_err();
    match err {
        MediatorError::Protocol {
            err: ProtocolError::BadMagic { found },
            command: Command::ShowHealth,
            ..
        } => assert_eq!(found, u32::from_le_bytes(*b"HTTP")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_truncated_body_is_a_protocol_error() {
    let mut bytes = encode_response(0, "0123456789").unwrap();
    bytes.truncate(HEADER_LEN + 3);
    let fake = answering(bytes);
    let err = fake
        .client(Duration::from_secs(5))
        .ask(Command::ShowConnections)
        .unwrap_err();
    assert!(
        matches!(
            err,
            MediatorError::Protocol {
                err: ProtocolError::TruncatedBody {
                    expected: 10,
                    got: 3
                },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_short_header_is_a_protocol_error() {
    let bytes = encode_response(0, "hello").unwrap()[..5].to_vec();
    let fake = answering(bytes);
    let err = fake
        .client(Duration::from_secs(5))
        .ask(Command::ShowHealth)
        .unwrap_err();
    assert!(
        matches!(
            err,
            MediatorError::Protocol {
                err: ProtocolError::ShortHeader { got: 5 },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn an_announced_length_over_the_cap_is_refused_before_reading_it() {
    let mut bytes = Vec::new();
    for word in [MAGIC, 0, MAX_DATA_LEN + 1] {
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    let (release, held) = mpsc::channel::<()>();
    // The fake keeps the connection open: the refusal must not wait for the text.
    let fake = fake(move |stream| {
        stream.write_all(&bytes).unwrap();
        let _ = held.recv_timeout(FAKE_LIMIT);
    });
    let started = Instant::now();
    let err = fake
        .client(Duration::from_secs(5))
        .ask(Command::ShowHealth)
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(
            err,
            MediatorError::Protocol {
                err: ProtocolError::TooLong { .. },
                ..
            }
        ),
        "{err:?}"
    );
    release.send(()).unwrap();
    fake.received();
}

#[test]
fn a_missing_socket_is_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let err = Client::new(&socket, Duration::from_secs(5))
        .ask(Command::ReloadConfig)
        .unwrap_err();
    match &err {
        MediatorError::NoSocket { socket: s } => assert_eq!(s, &socket),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.socket(), socket);
    assert_eq!(
        err.to_string(),
        format!("no mediator admin socket at {}", socket.display())
    );
}

#[test]
fn a_socket_file_without_a_listener_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    // A mediator that died: its socket file stays, nothing listens.
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let err = Client::new(&socket, Duration::from_secs(5))
        .ask(Command::ShowHealth)
        .unwrap_err();
    match &err {
        MediatorError::Unreachable { err: io, .. } => {
            assert_eq!(io.kind(), ErrorKind::ConnectionRefused)
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().starts_with(&format!(
            "cannot connect to the mediator at {}: ",
            socket.display()
        )),
        "{err}"
    );
}

#[test]
fn a_regular_file_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    std::fs::write(&socket, b"").unwrap();
    let err = Client::new(&socket, Duration::from_secs(5))
        .ask(Command::ShowHealth)
        .unwrap_err();
    assert!(matches!(err, MediatorError::Unreachable { .. }), "{err:?}");
}

#[test]
fn each_request_is_a_connection_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = thread::spawn(move || {
        let mut seen = Vec::new();
        for status in [0u32, 1] {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(FAKE_LIMIT)).unwrap();
            let mut request = [0u8; REQUEST_LEN];
            stream.read_exact(&mut request).unwrap();
            stream
                .write_all(&encode_response(status, &format!("answer {status}")).unwrap())
                .unwrap();
            // The client must not send anything more on this connection.
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).unwrap();
            seen.push((request, rest));
        }
        seen
    });
    let client = Client::new(&socket, Duration::from_secs(5));
    let first = client.ask(Command::ShowHealth).unwrap();
    let second = client.ask(Command::ReloadConfig).unwrap();
    assert_eq!((first.status, first.text.as_str()), (0, "answer 0"));
    assert_eq!((second.status, second.text.as_str()), (1, "answer 1"));
    let seen = server.join().unwrap();
    assert_eq!(seen[0].0, encode_request(Command::ShowHealth));
    assert_eq!(seen[1].0, encode_request(Command::ReloadConfig));
    assert!(seen.iter().all(|(_, rest)| rest.is_empty()));
}

#[test]
fn messages_name_the_socket_the_command_and_the_limit() {
    let socket = PathBuf::from("/var/vgpu/admin.sock");
    let timeout = MediatorError::Timeout {
        socket: socket.clone(),
        command: Command::ReloadConfig,
        timeout: Duration::from_millis(1500),
    };
    assert_eq!(
        timeout.to_string(),
        "the mediator at /var/vgpu/admin.sock did not answer RELOAD_CONFIG within 1.5 s"
    );
    let short = MediatorError::Timeout {
        socket: socket.clone(),
        command: Command::ShowHealth,
        timeout: Duration::from_millis(250),
    };
    assert!(short.to_string().ends_with("within 250 ms"), "{short}");
    let dropped = MediatorError::Dropped {
        socket: socket.clone(),
        command: Command::ShowMetrics { prometheus: true },
    };
    assert_eq!(
        dropped.to_string(),
        "the mediator at /var/vgpu/admin.sock closed the connection without answering \
         SHOW_METRICS (Prometheus)"
    );
    let protocol = MediatorError::Protocol {
        socket,
        command: Command::ShowHealth,
        err: ProtocolError::ShortHeader { got: 3 },
    };
    assert_eq!(
        protocol.to_string(),
        "the mediator at /var/vgpu/admin.sock answered SHOW_HEALTH wrongly: \
         the answer ended after 3 of the 12 header bytes"
    );
}

#[test]
fn the_default_client_is_the_mediators_default_socket() {
    let client = Client::default();
    assert_eq!(client.socket, Path::new("/var/vgpu/admin.sock"));
    assert_eq!(client.timeout, Duration::from_secs(2));
}
