//! The admin socket's wire format.
//!
//! A request is four little-endian `u32`s: magic, command, param1, param2. An answer is three
//! little-endian `u32`s (magic, status, length of the text) followed by that many bytes of text.

use std::fmt;

/// The first word of every request and answer (the bytes `55 50 47 56`, "UPGV").
pub const MAGIC: u32 = 0x5647_5055;
/// Bytes in a request.
pub const REQUEST_LEN: usize = 16;
/// Bytes in an answer's header.
pub const HEADER_LEN: usize = 12;
/// The longest answer text accepted. The mediator's texts are a few kilobytes even with many VMs;
/// the cap keeps a corrupt length word from making a client allocate or wait for gigabytes.
pub const MAX_DATA_LEN: u32 = 16 * 1024 * 1024;

const SHOW_METRICS: u32 = 0x10;
const SHOW_HEALTH: u32 = 0x11;
const RELOAD_CONFIG: u32 = 0x12;
const SHOW_CONNECTIONS: u32 = 0x15;

/// An admin request the mediator handles. (It also defines 0x13 and 0x14, quarantine and
/// unquarantine, but answers them as unknown commands: quarantine goes through the database and
/// [`Command::ReloadConfig`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `SHOW_METRICS`: the summary text, or with `prometheus` the Prometheus text format.
    ShowMetrics { prometheus: bool },
    /// `SHOW_HEALTH`: GPU health (NVML) and watchdog counters.
    ShowHealth,
    /// `RELOAD_CONFIG`: re-read rate limits and quarantine from the database.
    ReloadConfig,
    /// `SHOW_CONNECTIONS`: the VMs connected to the mediator.
    ShowConnections,
}

impl Command {
    /// The command word of the request.
    pub fn code(self) -> u32 {
        match self {
            Command::ShowMetrics { .. } => SHOW_METRICS,
            Command::ShowHealth => SHOW_HEALTH,
            Command::ReloadConfig => RELOAD_CONFIG,
            Command::ShowConnections => SHOW_CONNECTIONS,
        }
    }

    /// `(param1, param2)` of the request.
    pub fn params(self) -> (u32, u32) {
        match self {
            Command::ShowMetrics { prometheus } => (u32::from(prometheus), 0),
            Command::ShowHealth | Command::ReloadConfig | Command::ShowConnections => (0, 0),
        }
    }

    /// The mediator's name for the command, e.g. `RELOAD_CONFIG`.
    pub fn name(self) -> &'static str {
        match self {
            Command::ShowMetrics { .. } => "SHOW_METRICS",
            Command::ShowHealth => "SHOW_HEALTH",
            Command::ReloadConfig => "RELOAD_CONFIG",
            Command::ShowConnections => "SHOW_CONNECTIONS",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::ShowMetrics { prometheus: true } => f.write_str("SHOW_METRICS (Prometheus)"),
            other => f.write_str(other.name()),
        }
    }
}

/// The 16 bytes that ask `command`.
pub fn encode_request(command: Command) -> [u8; REQUEST_LEN] {
    let (param1, param2) = command.params();
    let mut request = [0u8; REQUEST_LEN];
    for (slot, word) in request
        .chunks_exact_mut(4)
        .zip([MAGIC, command.code(), param1, param2])
    {
        slot.copy_from_slice(&word.to_le_bytes());
    }
    request
}

/// The mediator's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// 0 when the mediator did what was asked; anything else is its error (it uses 1), and
    /// `text` then says what went wrong (e.g. `ERROR: Database not connected`).
    pub status: u32,
    /// The answer's text. The mediator sends UTF-8; any invalid sequence is replaced by U+FFFD
    /// rather than refused, so a stray byte in a VM's name cannot hide the rest of the answer.
    pub text: String,
}

impl Answer {
    /// Whether the status is 0.
    pub fn is_ok(&self) -> bool {
        self.status == 0
    }
}

/// An answer's 12-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub status: u32,
    /// Bytes of text that follow; at most [`MAX_DATA_LEN`].
    pub data_len: u32,
}

/// An answer that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The connection ended inside the header.
    #[error("the answer ended after {got} of the {HEADER_LEN} header bytes")]
    ShortHeader { got: usize },
    /// The first word is not [`MAGIC`]: whatever listens there is not a mediator.
    #[error("the answer starts with {found:#010x}, not the mediator's magic {MAGIC:#010x}")]
    BadMagic { found: u32 },
    /// The announced text is longer than [`MAX_DATA_LEN`].
    #[error(
        "the answer announces {data_len} bytes of text, more than the {MAX_DATA_LEN} accepted"
    )]
    TooLong { data_len: u64 },
    /// The connection ended inside the text.
    #[error("the answer ended after {got} of the {expected} bytes of text it announced")]
    TruncatedBody { expected: u32, got: usize },
    /// Bytes follow the announced text.
    #[error("{extra} bytes follow the {expected} bytes of text the answer announced")]
    TrailingData { expected: u32, extra: usize },
}

fn word(bytes: &[u8], index: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[index * 4..index * 4 + 4]);
    u32::from_le_bytes(word)
}

/// The header at the start of `bytes` (which may hold more: the text).
pub fn decode_header(bytes: &[u8]) -> Result<Header, ProtocolError> {
    if bytes.len() < HEADER_LEN {
        return Err(ProtocolError::ShortHeader { got: bytes.len() });
    }
    let magic = word(bytes, 0);
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic { found: magic });
    }
    let data_len = word(bytes, 2);
    if data_len > MAX_DATA_LEN {
        return Err(ProtocolError::TooLong {
            data_len: u64::from(data_len),
        });
    }
    Ok(Header {
        status: word(bytes, 1),
        data_len,
    })
}

/// A whole answer: the header and exactly the text it announces.
pub fn decode_response(bytes: &[u8]) -> Result<Answer, ProtocolError> {
    let header = decode_header(bytes)?;
    let body = &bytes[HEADER_LEN..];
    let expected = header.data_len;
    // `data_len` ≤ MAX_DATA_LEN, so it fits a usize on every platform Rust supports with std.
    let wanted = expected as usize;
    if body.len() < wanted {
        return Err(ProtocolError::TruncatedBody {
            expected,
            got: body.len(),
        });
    }
    if body.len() > wanted {
        return Err(ProtocolError::TrailingData {
            expected,
            extra: body.len() - wanted,
        });
    }
    Ok(Answer {
        status: header.status,
        text: String::from_utf8_lossy(body).into_owned(),
    })
}

/// The bytes of an answer, as the mediator sends it (for fake mediators in tests). A text longer
/// than [`MAX_DATA_LEN`] is refused, as [`decode_response`] would refuse it.
pub fn encode_response(status: u32, text: &str) -> Result<Vec<u8>, ProtocolError> {
    let data_len = u32::try_from(text.len())
        .ok()
        .filter(|len| *len <= MAX_DATA_LEN)
        .ok_or(ProtocolError::TooLong {
            data_len: text.len() as u64,
        })?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + text.len());
    for word in [MAGIC, status, data_len] {
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    bytes.extend_from_slice(text.as_bytes());
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Command; 5] = [
        Command::ShowMetrics { prometheus: false },
        Command::ShowMetrics { prometheus: true },
        Command::ShowHealth,
        Command::ReloadConfig,
        Command::ShowConnections,
    ];

    #[test]
    fn requests_are_four_little_endian_words() {
        assert_eq!(
            encode_request(Command::ShowMetrics { prometheus: true }),
            [0x55, 0x50, 0x47, 0x56, 0x10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            encode_request(Command::ReloadConfig),
            [0x55, 0x50, 0x47, 0x56, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn codes_and_params_match_the_mediator() {
        let expected = [
            (0x10, (0, 0), "SHOW_METRICS"),
            (0x10, (1, 0), "SHOW_METRICS"),
            (0x11, (0, 0), "SHOW_HEALTH"),
            (0x12, (0, 0), "RELOAD_CONFIG"),
            (0x15, (0, 0), "SHOW_CONNECTIONS"),
        ];
        for (command, (code, params, name)) in ALL.into_iter().zip(expected) {
            assert_eq!(
                (command.code(), command.params(), command.name()),
                (code, params, name)
            );
            let request = encode_request(command);
            assert_eq!(word(&request, 0), MAGIC);
            assert_eq!(word(&request, 1), code);
            assert_eq!((word(&request, 2), word(&request, 3)), params);
        }
        assert_eq!(
            Command::ShowMetrics { prometheus: true }.to_string(),
            "SHOW_METRICS (Prometheus)"
        );
        assert_eq!(Command::ReloadConfig.to_string(), "RELOAD_CONFIG");
    }

    #[test]
    fn answers_round_trip() {
        for (status, text) in [
            (0, "Config reloaded: 3 VM(s) updated\n"),
            (1, "ERROR: Database not connected\n"),
            (0, ""),
            (7, "é ✓"),
        ] {
            let bytes = encode_response(status, text).unwrap();
            assert_eq!(bytes.len(), HEADER_LEN + text.len());
            assert_eq!(
                decode_response(&bytes).unwrap(),
                Answer {
                    status,
                    text: text.to_string()
                }
            );
        }
    }

    #[test]
    fn a_known_answer_decodes() {
        let mut bytes = vec![0x55, 0x50, 0x47, 0x56, 1, 0, 0, 0, 3, 0, 0, 0];
        bytes.extend_from_slice(b"abc");
        let answer = decode_response(&bytes).unwrap();
        assert_eq!(answer.status, 1);
        assert_eq!(answer.text, "abc");
        assert!(!answer.is_ok());
    }

    #[test]
    fn short_headers_are_refused() {
        let full = encode_response(0, "x").unwrap();
        for got in 0..HEADER_LEN {
            assert_eq!(
                decode_response(&full[..got]),
                Err(ProtocolError::ShortHeader { got })
            );
        }
    }

    #[test]
    fn a_wrong_magic_is_refused() {
        let mut bytes = encode_response(0, "hi").unwrap();
        bytes[0] = 0x56;
        assert_eq!(
            decode_response(&bytes),
            Err(ProtocolError::BadMagic { found: 0x5647_5056 })
        );
        // Big-endian magic: someone else's idea of the protocol.
        let mut swapped = MAGIC.to_be_bytes().to_vec();
        swapped.extend_from_slice(&bytes[4..]);
        assert_eq!(
            decode_header(&swapped),
            Err(ProtocolError::BadMagic { found: 0x5550_4756 })
        );
    }

    #[test]
    fn lengths_over_the_cap_are_refused() {
        let mut bytes = encode_response(0, "").unwrap();
        bytes[8..12].copy_from_slice(&(MAX_DATA_LEN + 1).to_le_bytes());
        assert_eq!(
            decode_header(&bytes),
            Err(ProtocolError::TooLong {
                data_len: u64::from(MAX_DATA_LEN) + 1
            })
        );
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_response(&bytes),
            Err(ProtocolError::TooLong {
                data_len: u64::from(u32::MAX)
            })
        );
        bytes[8..12].copy_from_slice(&MAX_DATA_LEN.to_le_bytes());
        assert_eq!(
            decode_header(&bytes),
            Ok(Header {
                status: 0,
                data_len: MAX_DATA_LEN
            })
        );
        let too_long = "x".repeat(MAX_DATA_LEN as usize + 1);
        assert_eq!(
            encode_response(0, &too_long),
            Err(ProtocolError::TooLong {
                data_len: u64::from(MAX_DATA_LEN) + 1
            })
        );
    }

    #[test]
    fn truncated_and_overlong_bodies_are_refused() {
        let bytes = encode_response(0, "hello").unwrap();
        assert_eq!(
            decode_response(&bytes[..HEADER_LEN + 2]),
            Err(ProtocolError::TruncatedBody {
                expected: 5,
                got: 2
            })
        );
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"!!");
        assert_eq!(
            decode_response(&longer),
            Err(ProtocolError::TrailingData {
                expected: 5,
                extra: 2
            })
        );
        // The header alone is fine: the text follows later on a stream.
        assert_eq!(
            decode_header(&bytes[..HEADER_LEN]),
            Ok(Header {
                status: 0,
                data_len: 5
            })
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        let mut bytes = encode_response(0, "ab").unwrap();
        bytes[8] = 4;
        bytes.extend_from_slice(&[0xff, b'c']);
        let answer = decode_response(&bytes).unwrap();
        assert_eq!(answer.text, "ab\u{fffd}c");
    }

    #[test]
    fn errors_say_what_was_wrong() {
        assert_eq!(
            ProtocolError::BadMagic { found: 0x4854_5450 }.to_string(),
            "the answer starts with 0x48545450, not the mediator's magic 0x56475055"
        );
        assert_eq!(
            ProtocolError::TruncatedBody {
                expected: 10,
                got: 3
            }
            .to_string(),
            "the answer ended after 3 of the 10 bytes of text it announced"
        );
        assert_eq!(
            ProtocolError::ShortHeader { got: 4 }.to_string(),
            "the answer ended after 4 of the 12 header bytes"
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_response(&bytes);
            let _ = decode_header(&bytes);
        }

        #[test]
        fn a_valid_header_decodes_exactly_when_the_body_has_its_length(
            status in any::<u32>(),
            data_len in 0u32..40,
            body in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut bytes = Vec::new();
            for word in [MAGIC, status, data_len] {
                bytes.extend_from_slice(&word.to_le_bytes());
            }
            bytes.extend_from_slice(&body);
            let decoded = decode_response(&bytes);
            prop_assert_eq!(decoded.is_ok(), body.len() == data_len as usize);
            if let Ok(answer) = decoded {
                prop_assert_eq!(answer.status, status);
                prop_assert_eq!(answer.text, String::from_utf8_lossy(&body).into_owned());
            }
        }

        #[test]
        fn any_answer_round_trips(status in any::<u32>(), text in ".{0,200}") {
            let bytes = encode_response(status, &text).unwrap();
            prop_assert_eq!(decode_response(&bytes), Ok(Answer { status, text }));
        }
    }
}
