//! The GPU mediator's admin socket, as vgpu-registry talks to it.
//!
//! Every GPU host runs a mediator (a daemon of the wider GPU-sharing project) that reads the
//! registry's database and listens on a unix socket for admin requests: metrics, health, active
//! connections, and "reload your configuration". This crate is the client side of that socket:
//!
//! - [`Command`], [`encode_request`], [`decode_response`]: the wire format (16-byte requests, a
//!   12-byte answer header and UTF-8 text), with every malformed answer a [`ProtocolError`];
//! - [`Client`]: one request per connection, bounded as a whole by a timeout, failures as
//!   [`MediatorError`];
//! - [`parse_prometheus`]: the Prometheus text the mediator prints, as [`Sample`]s.
//!
//! It depends on the standard library only (and `thiserror`), so the CLI, the Python extension
//! and tests can all use it.

mod client;
mod prometheus;
mod protocol;

pub use client::{Client, MediatorError, DEFAULT_ADMIN_SOCKET, DEFAULT_TIMEOUT};
pub use prometheus::{parse_prometheus, Sample};
pub use protocol::{
    decode_header, decode_response, encode_request, encode_response, Answer, Command, Header,
    ProtocolError, HEADER_LEN, MAGIC, MAX_DATA_LEN, REQUEST_LEN,
};
