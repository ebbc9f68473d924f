//! https: certificates are verified unless the caller opts out, and a CA file is honoured.
//! The server is a small rustls JSON-RPC responder using the test material in `tests/data`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use xapi::{Auth, Client, ClientOptions, Endpoint, XapiError};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Answers every JSON-RPC request with `"pong"`; returns the endpoint.
fn tls_server() -> Endpoint {
    tls_server_on(TcpListener::bind("127.0.0.1:0").unwrap())
}

fn tls_server_on(listener: TcpListener) -> Endpoint {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(data("test-server.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(data("test-server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let config = Arc::new(config);
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let Ok(conn) = rustls::ServerConnection::new(Arc::clone(&config)) else {
                return;
            };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            // A client that rejects our certificate aborts the handshake: just move on.
            let _ = answer(&mut tls);
        }
    });
    Endpoint::parse(&format!("https://{address}")).unwrap()
}

fn answer(stream: &mut (impl Read + Write)) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut *stream);
    let mut len = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = json!({"jsonrpc": "2.0", "result": "pong", "id": request["id"]}).to_string();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    )?;
    stream.flush()
}

fn call(endpoint: &Endpoint, options: ClientOptions) -> Result<Value, XapiError> {
    let client = Client::new(
        endpoint.clone(),
        Auth::Session("OpaqueRef:test".into()),
        options,
    );
    client.call("pool.get_all", vec![])
}

#[test]
fn unknown_issuer_is_rejected_by_default() {
    let endpoint = tls_server();
    match call(&endpoint, ClientOptions::default()) {
        Err(XapiError::Transport {
            endpoint: label,
            reason,
        }) => {
            assert_eq!(label, endpoint.to_string());
            assert!(reason.to_lowercase().contains("certificate"), "{reason}");
        }
        other => panic!("an untrusted certificate must fail, got {other:?}"),
    }
}

#[test]
fn ca_file_makes_the_certificate_trusted() {
    let endpoint = tls_server();
    let options = ClientOptions {
        ca_file: Some(data("test-ca.pem")),
        ..ClientOptions::default()
    };
    assert_eq!(call(&endpoint, options), Ok(json!("pong")));
}

#[test]
fn insecure_tls_skips_verification() {
    let endpoint = tls_server();
    let options = ClientOptions {
        insecure_tls: true,
        ..ClientOptions::default()
    };
    assert_eq!(call(&endpoint, options), Ok(json!("pong")));
}

#[test]
fn ca_file_does_not_trust_a_different_name() {
    // The certificate names localhost and 127.0.0.1; Linux routes all of 127/8 to loopback, so
    // a server on 127.0.0.2 presents it under a name it does not carry.
    let Ok(listener) = TcpListener::bind("127.0.0.2:0") else {
        eprintln!("SKIPPED: cannot bind 127.0.0.2 here");
        return;
    };
    let endpoint = tls_server_on(listener);
    let options = ClientOptions {
        ca_file: Some(data("test-ca.pem")),
        ..ClientOptions::default()
    };
    match call(&endpoint, options) {
        Err(XapiError::Transport { reason, .. }) => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}")
        }
        other => panic!("a certificate for another name must fail, got {other:?}"),
    }
}
