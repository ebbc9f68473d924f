//! The fuzz targets of vgpu-registry, as plain `fn(&[u8])`.
//!
//! One table, [`TARGETS`], serves both runs: the cargo-fuzz targets of `rust/fuzz` each call one
//! of these functions (coverage-guided, where the toolchain allows it), and this crate's tests
//! replay the committed corpus (`rust/fuzz/corpus/<target>/`) and run property-based inputs
//! through the same functions on the stable toolchain. A target never panics on any input; it
//! panics only when a property the product relies on is broken.

use mediator::{decode_header, decode_response, encode_response, parse_prometheus, HEADER_LEN};

/// A fuzz target: its name (the cargo-fuzz target and corpus directory) and its body.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "device_model_args",
        run: registry::fuzzing::device_model_args,
    },
    Target {
        name: "plugin_args",
        run: registry::fuzzing::plugin_args,
    },
    Target {
        name: "json_rpc_answer",
        run: xapi::fuzzing::json_rpc_answer,
    },
    Target {
        name: "config",
        run: registry::fuzzing::config,
    },
    Target {
        name: "plugin_answer",
        run: registry::fuzzing::plugin_answer,
    },
    Target {
        name: "mediator_frame",
        run: mediator_frame,
    },
    Target {
        name: "prometheus",
        run: prometheus,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

/// The bytes of a mediator answer, as read from its admin socket: decoded, and when accepted
/// re-encoded to the same bytes (when its text is UTF-8); its text parsed as Prometheus metrics.
pub fn mediator_frame(data: &[u8]) {
    if let Err(e) = decode_header(data) {
        let _ = e.to_string();
    }
    match decode_response(data) {
        Ok(answer) => {
            if std::str::from_utf8(&data[HEADER_LEN..]).is_ok() {
                let again = encode_response(answer.status, &answer.text)
                    .unwrap_or_else(|e| panic!("an accepted answer cannot be encoded: {e}"));
                assert_eq!(again, data, "decoded as {answer:?}");
            }
            let _ = parse_prometheus(&answer.text);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The mediator's Prometheus text: at most one sample a line, each with a metric name, and each
/// written back in the format (label values escaped) reads back as the same sample.
pub fn prometheus(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let samples = parse_prometheus(&text);
    assert!(
        samples.len() <= text.lines().count(),
        "more samples than lines"
    );
    for sample in samples {
        let name_ok = sample.name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        });
        assert!(!sample.name.is_empty() && name_ok, "{sample:?}");
        let labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| {
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                format!("{k}=\"{v}\"")
            })
            .collect();
        let line = format!("{}{{{}}} {}", sample.name, labels.join(","), sample.value);
        let back = parse_prometheus(&line);
        let same = match back.as_slice() {
            [b] => {
                b.name == sample.name
                    && b.labels == sample.labels
                    && (b.value == sample.value || (b.value.is_nan() && sample.value.is_nan()))
            }
            _ => false,
        };
        assert!(
            same,
            "{sample:?} written as {line:?} reads back as {back:?}"
        );
    }
}
