//! Turning xapi's JSON values into typed records.
//!
//! Absent (or `null`) optional fields take their empty default, so a simulator or an older xapi
//! that omits a field still works; a field of the wrong type is a [`XapiError::Protocol`] error,
//! as it means we misunderstand the answer.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::{HostRecord, PoolRecord, Result, VmRecord, XapiError};

pub const NULL_REF: &str = "OpaqueRef:NULL";

pub(crate) fn protocol(method: &str, reason: impl Into<String>) -> XapiError {
    XapiError::Protocol {
        method: method.to_string(),
        reason: reason.into(),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn string(method: &str, what: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        other => Err(protocol(
            method,
            format!("expected a string for {what}, got {}", kind(other)),
        )),
    }
}

pub(crate) fn string_list(method: &str, what: &str, value: &Value) -> Result<Vec<String>> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| string(method, what, item))
            .collect(),
        other => Err(protocol(
            method,
            format!("expected an array for {what}, got {}", kind(other)),
        )),
    }
}

pub(crate) fn string_map(
    method: &str,
    what: &str,
    value: &Value,
) -> Result<BTreeMap<String, String>> {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), string(method, &format!("{what}[{k}]"), v)?)))
            .collect(),
        other => Err(protocol(
            method,
            format!("expected an object for {what}, got {}", kind(other)),
        )),
    }
}

fn object<'a>(method: &str, what: &str, value: &'a Value) -> Result<&'a Map<String, Value>> {
    value.as_object().ok_or_else(|| {
        protocol(
            method,
            format!("expected an object for {what}, got {}", kind(value)),
        )
    })
}

/// A present, non-null field.
fn field<'a>(record: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    record.get(name).filter(|v| !v.is_null())
}

fn required_string(
    method: &str,
    what: &str,
    record: &Map<String, Value>,
    name: &str,
) -> Result<String> {
    match field(record, name) {
        Some(value) => string(method, &format!("{what}.{name}"), value),
        None => Err(protocol(method, format!("{what} has no {name}"))),
    }
}

fn optional_string(
    method: &str,
    what: &str,
    record: &Map<String, Value>,
    name: &str,
    default: &str,
) -> Result<String> {
    field(record, name).map_or_else(
        || Ok(default.to_string()),
        |value| string(method, &format!("{what}.{name}"), value),
    )
}

fn optional_bool(
    method: &str,
    what: &str,
    record: &Map<String, Value>,
    name: &str,
) -> Result<bool> {
    match field(record, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(protocol(
            method,
            format!("expected a boolean for {what}.{name}, got {}", kind(other)),
        )),
    }
}

pub(crate) fn vm_record(method: &str, opaque_ref: &str, value: &Value) -> Result<VmRecord> {
    let what = format!("VM {opaque_ref}");
    let record = object(method, &what, value)?;
    Ok(VmRecord {
        opaque_ref: opaque_ref.to_string(),
        uuid: required_string(method, &what, record, "uuid")?,
        name_label: optional_string(method, &what, record, "name_label", "")?,
        power_state: optional_string(method, &what, record, "power_state", "")?,
        platform: match field(record, "platform") {
            Some(value) => string_map(method, &format!("{what}.platform"), value)?,
            None => BTreeMap::new(),
        },
        is_a_template: optional_bool(method, &what, record, "is_a_template")?,
        is_a_snapshot: optional_bool(method, &what, record, "is_a_snapshot")?,
        is_control_domain: optional_bool(method, &what, record, "is_control_domain")?,
        resident_on: optional_string(method, &what, record, "resident_on", NULL_REF)?,
        other_config: optional_map(method, &what, record, "other_config")?,
    })
}

/// The fields of a VM record the registry reads. Deserialised straight from the answer, so the
/// other hundred-odd fields of each record are skipped instead of built into a JSON tree: what
/// keeps a scan of a large pool small.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct WireVm {
    uuid: String,
    #[serde(default)]
    name_label: Option<String>,
    #[serde(default)]
    power_state: Option<String>,
    #[serde(default)]
    platform: Option<BTreeMap<String, String>>,
    #[serde(default)]
    is_a_template: Option<bool>,
    #[serde(default)]
    is_a_snapshot: Option<bool>,
    #[serde(default)]
    is_control_domain: Option<bool>,
    #[serde(default)]
    resident_on: Option<String>,
    #[serde(default)]
    other_config: Option<BTreeMap<String, String>>,
}

impl WireVm {
    pub(crate) fn into_record(self, opaque_ref: String) -> VmRecord {
        VmRecord {
            opaque_ref,
            uuid: self.uuid,
            name_label: self.name_label.unwrap_or_default(),
            power_state: self.power_state.unwrap_or_default(),
            platform: self.platform.unwrap_or_default(),
            is_a_template: self.is_a_template.unwrap_or(false),
            is_a_snapshot: self.is_a_snapshot.unwrap_or(false),
            is_control_domain: self.is_control_domain.unwrap_or(false),
            resident_on: self.resident_on.unwrap_or_else(|| NULL_REF.to_string()),
            other_config: self.other_config.unwrap_or_default(),
        }
    }
}

/// The envelope of a JSON-RPC answer whose `result` was handed out record by record.
#[derive(Debug, Default)]
pub(crate) struct Envelope {
    pub(crate) id: Option<Value>,
    pub(crate) error: Option<Value>,
    /// Whether the answer had a non-null `result`.
    pub(crate) result: bool,
}

/// Reads a `get_all_records[_where]` answer of VMs from `reader` as it arrives, handing each VM
/// to `each` as soon as its record is complete, and returns the envelope for the caller to check.
///
/// The answer of a large pool runs to a hundred megabytes and more, of which the registry reads a
/// few fields, so neither the answer nor a JSON tree of it is ever held: only the record being
/// read. The framing (where a record ends) is found by a scan that follows strings and brackets;
/// each record is then deserialised from its bytes by serde_json, which checks it is JSON and
/// skips the fields [`WireVm`] does not name. Keeping the record's bytes also lets a record
/// holding text that is not Unicode be named (VM and field) by [`crate::unicode::describe`].
pub(crate) fn read_vm_records<R: std::io::BufRead>(
    method: &str,
    reader: R,
    each: &mut dyn FnMut(VmRecord),
) -> Result<Envelope> {
    let mut framer = Framer {
        method,
        reader,
        head: Vec::new(),
    };
    let mut envelope = Envelope::default();
    let mut buf = Vec::new();
    let not_rpc = |framer: &mut Framer<'_, R>, why: &str| {
        let text: String = String::from_utf8_lossy(&framer.excerpt())
            .chars()
            .take(200)
            .collect();
        protocol(
            method,
            format!("answer is not a JSON-RPC object ({why}): {text:?}"),
        )
    };
    match framer.next_non_space()? {
        Some(b'{') => framer.consume(1),
        _ => return Err(not_rpc(&mut framer, "expected an object")),
    }
    let mut first = true;
    loop {
        match framer.next_non_space()? {
            Some(b'}') if first => {
                framer.consume(1);
                break;
            }
            Some(b'"') => {}
            _ => return Err(not_rpc(&mut framer, "expected a member name")),
        }
        first = false;
        let key: String = framer
            .value(&mut buf)
            .and_then(|()| serde_json::from_slice(&buf).map_err(|e| e.to_string()))
            .map_err(|why| not_rpc(&mut framer, &why))?;
        match framer.next_non_space()? {
            Some(b':') => framer.consume(1),
            _ => return Err(not_rpc(&mut framer, "expected ':'")),
        }
        if framer.next_non_space()?.is_none() {
            return Err(not_rpc(&mut framer, "the answer ends early"));
        }
        if key == "result" && framer.peek()? == Some(b'{') {
            framer.consume(1);
            envelope.result = true;
            read_records(method, &mut framer, &mut buf, each)?;
        } else {
            framer
                .value(&mut buf)
                .map_err(|why| not_rpc(&mut framer, &why))?;
            let value = match serde_json::from_slice::<Value>(&buf) {
                Ok(v) => v,
                Err(e) => {
                    let what = crate::unicode::describe(method, &buf);
                    return Err(what.map_or_else(
                        || not_rpc(&mut framer, &e.to_string()),
                        |what| protocol(method, what),
                    ));
                }
            };
            match key.as_str() {
                "id" => envelope.id = Some(value),
                "error" => envelope.error = Some(value),
                "result" if value.is_null() => {}
                "result" => {
                    return Err(protocol(
                        method,
                        format!(
                            "unexpected VM records: expected an object, got {}",
                            kind(&value)
                        ),
                    ))
                }
                _ => {}
            }
        }
        match framer.next_non_space()? {
            Some(b',') => framer.consume(1),
            Some(b'}') => {
                framer.consume(1);
                break;
            }
            _ => return Err(not_rpc(&mut framer, "expected ',' or '}'")),
        }
    }
    if framer.next_non_space()?.is_some() {
        return Err(not_rpc(&mut framer, "trailing characters"));
    }
    Ok(envelope)
}

/// The members of `result` (its `{` already read), through its `}`.
fn read_records<R: std::io::BufRead>(
    method: &str,
    framer: &mut Framer<'_, R>,
    buf: &mut Vec<u8>,
    each: &mut dyn FnMut(VmRecord),
) -> Result<()> {
    let broken = |why: String| protocol(method, format!("unexpected VM records: {why}"));
    let mut first = true;
    loop {
        match framer.next_non_space()? {
            Some(b'}') if first => {
                framer.consume(1);
                return Ok(());
            }
            Some(b'"') => {}
            _ => return Err(broken("expected a VM ref".into())),
        }
        first = false;
        framer.value(buf).map_err(&broken)?;
        let opaque_ref: String = match serde_json::from_slice(buf) {
            Ok(r) => r,
            Err(e) => {
                let what = crate::unicode::describe(method, buf);
                return Err(protocol(
                    method,
                    what.unwrap_or_else(|| format!("unexpected VM records: {e}")),
                ));
            }
        };
        match framer.next_non_space()? {
            Some(b':') => framer.consume(1),
            _ => return Err(broken("expected ':'".into())),
        }
        if framer.next_non_space()?.is_none() {
            return Err(broken("the answer ends early".into()));
        }
        framer.value(buf).map_err(&broken)?;
        match serde_json::from_slice::<WireVm>(buf) {
            Ok(vm) => each(vm.into_record(opaque_ref)),
            Err(e) => {
                let what = crate::unicode::describe(method, buf);
                return Err(protocol(
                    method,
                    what.unwrap_or_else(|| format!("unexpected VM records: {e}")),
                ));
            }
        }
        match framer.next_non_space()? {
            Some(b',') => framer.consume(1),
            Some(b'}') => {
                framer.consume(1);
                return Ok(());
            }
            _ => return Err(broken("expected ',' or '}'".into())),
        }
    }
}

/// The answer's bytes, read by JSON value: where one ends is found by following strings (and
/// their escapes) and brackets, not by parsing it.
struct Framer<'m, R> {
    method: &'m str,
    reader: R,
    /// The answer's first bytes, for a message about an answer that is not JSON-RPC.
    head: Vec<u8>,
}

const HEAD: usize = 512;

impl<R: std::io::BufRead> Framer<'_, R> {
    /// The bytes buffered ahead, empty at the end of the answer. A reader's error becomes a
    /// protocol error here; the body stream keeps the transport's own (a timeout, the connection
    /// lost), which is what the client reports instead.
    fn fill(&mut self) -> Result<&[u8]> {
        let io = |e: std::io::Error| protocol(self.method, format!("reading the answer: {e}"));
        loop {
            match self.reader.fill_buf() {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
                // Asked again below: returning this borrow from inside the loop is refused.
                Ok(_) => break,
            }
        }
        self.reader.fill_buf().map_err(io)
    }

    fn consume(&mut self, n: usize) {
        if self.head.len() < HEAD {
            if let Ok(b) = self.reader.fill_buf() {
                let take = n.min(HEAD - self.head.len()).min(b.len());
                self.head.extend_from_slice(&b[..take]);
            }
        }
        self.reader.consume(n);
    }

    /// The answer's first bytes and those read ahead: what a message about a broken answer
    /// quotes.
    fn excerpt(&mut self) -> Vec<u8> {
        let mut text = self.head.clone();
        if let Ok(ahead) = self.reader.fill_buf() {
            text.extend_from_slice(&ahead[..ahead.len().min(HEAD)]);
        }
        text
    }

    fn peek(&mut self) -> Result<Option<u8>> {
        Ok(self.fill()?.first().copied())
    }

    /// The next byte that is not JSON whitespace (not consumed), `None` at the end.
    fn next_non_space(&mut self) -> Result<Option<u8>> {
        loop {
            let chunk = self.fill()?;
            if chunk.is_empty() {
                return Ok(None);
            }
            match chunk
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            {
                Some(i) => {
                    let b = chunk[i];
                    self.consume(i);
                    return Ok(Some(b));
                }
                None => {
                    let n = chunk.len();
                    self.consume(n);
                }
            }
        }
    }

    /// Reads the value that starts here (whitespace already skipped) into `buf`. `Err`: why
    /// it could not be framed (the end of the answer came first, or a stray closing bracket).
    fn value(&mut self, buf: &mut Vec<u8>) -> std::result::Result<(), String> {
        buf.clear();
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        let mut started = false;
        loop {
            let chunk = self.fill().map_err(|e| e.to_string())?;
            if chunk.is_empty() {
                return if started && depth == 0 && !in_string {
                    // A number or literal running to the end of the answer.
                    Ok(())
                } else {
                    Err("the answer ends early".into())
                };
            }
            let mut end = None;
            for (i, &b) in chunk.iter().enumerate() {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        if depth == 0 {
                            // The end of the enclosing object: a scalar ended just before.
                            if started {
                                end = Some(i);
                                break;
                            }
                            return Err(format!("unexpected '{}'", b as char));
                        }
                        depth -= 1;
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    b',' | b' ' | b'\t' | b'\n' | b'\r' if depth == 0 => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
                started = true;
            }
            match end {
                Some(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    self.consume(n);
                    return Ok(());
                }
                None => {
                    let n = chunk.len();
                    buf.extend_from_slice(chunk);
                    self.consume(n);
                }
            }
        }
    }
}

pub(crate) fn host_record(method: &str, opaque_ref: &str, value: &Value) -> Result<HostRecord> {
    let what = format!("host {opaque_ref}");
    let record = object(method, &what, value)?;
    Ok(HostRecord {
        opaque_ref: opaque_ref.to_string(),
        uuid: required_string(method, &what, record, "uuid")?,
        name_label: optional_string(method, &what, record, "name_label", "")?,
        other_config: optional_map(method, &what, record, "other_config")?,
    })
}

pub(crate) fn pool_record(method: &str, opaque_ref: &str, value: &Value) -> Result<PoolRecord> {
    let what = format!("pool {opaque_ref}");
    let record = object(method, &what, value)?;
    Ok(PoolRecord {
        opaque_ref: opaque_ref.to_string(),
        master: required_string(method, &what, record, "master")?,
        other_config: optional_map(method, &what, record, "other_config")?,
    })
}

/// `get_all_records`: a map of ref → record.
pub(crate) fn record_map<T>(
    method: &str,
    value: &Value,
    each: fn(&str, &str, &Value) -> Result<T>,
) -> Result<Vec<T>> {
    let map = object(method, "the records", value)?;
    map.iter().map(|(r, v)| each(method, r, v)).collect()
}

fn optional_map(
    method: &str,
    what: &str,
    record: &Map<String, Value>,
    name: &str,
) -> Result<BTreeMap<String, String>> {
    match field(record, name) {
        Some(value) => string_map(method, &format!("{what}.{name}"), value),
        None => Ok(BTreeMap::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn full_vm_record() {
        let vm = vm_record(
            "VM.get_record",
            "OpaqueRef:1",
            &json!({
                "uuid": "u1", "name_label": "db", "power_state": "Running",
                "platform": {"device-model-args": "-device x"},
                "is_a_template": false, "is_a_snapshot": false, "is_control_domain": false,
                "resident_on": "OpaqueRef:h", "other_config": {"ignored": "yes"}, "VCPUs_max": "4"
            }),
        )
        .unwrap();
        assert_eq!(vm.uuid, "u1");
        assert_eq!(vm.name_label, "db");
        assert_eq!(vm.power_state, "Running");
        assert_eq!(
            vm.platform.get("device-model-args").map(String::as_str),
            Some("-device x")
        );
        assert_eq!(vm.resident_on, "OpaqueRef:h");
    }

    #[test]
    fn optional_fields_default_when_missing_or_null() {
        let vm = vm_record("m", "OpaqueRef:1", &json!({"uuid": "u", "platform": null})).unwrap();
        assert_eq!(
            vm,
            VmRecord {
                opaque_ref: "OpaqueRef:1".into(),
                uuid: "u".into(),
                name_label: String::new(),
                power_state: String::new(),
                platform: BTreeMap::new(),
                is_a_template: false,
                is_a_snapshot: false,
                is_control_domain: false,
                resident_on: NULL_REF.into(),
                other_config: BTreeMap::new(),
            }
        );
    }

    #[test]
    fn wrong_types_and_missing_uuid_are_protocol_errors() {
        for (record, needle) in [
            (json!({}), "has no uuid"),
            (
                json!({"uuid": 7}),
                "expected a string for VM OpaqueRef:1.uuid, got a number",
            ),
            (
                json!({"uuid": "u", "is_a_template": "false"}),
                "is_a_template",
            ),
            (json!({"uuid": "u", "platform": {"k": 1}}), "platform[k]"),
            (json!({"uuid": "u", "platform": []}), "platform"),
            (json!("nope"), "expected an object"),
        ] {
            match vm_record("VM.get_record", "OpaqueRef:1", &record) {
                Err(XapiError::Protocol { method, reason }) => {
                    assert_eq!(method, "VM.get_record");
                    assert!(reason.contains(needle), "{reason} lacks {needle}");
                }
                other => panic!("{record}: {other:?}"),
            }
        }
    }

    /// Every VM of an answer, read through a buffer of `capacity` bytes.
    fn stream(body: &[u8], capacity: usize) -> Result<(Envelope, Vec<VmRecord>)> {
        let mut vms = Vec::new();
        let reader = std::io::BufReader::with_capacity(capacity, body);
        let envelope = read_vm_records("VM.get_all_records_where", reader, &mut |vm| vms.push(vm))?;
        Ok((envelope, vms))
    }

    fn reason(result: Result<(Envelope, Vec<VmRecord>)>) -> String {
        match result {
            Err(XapiError::Protocol { method, reason }) => {
                assert_eq!(method, "VM.get_all_records_where");
                reason
            }
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn streamed_records_are_framed_whatever_the_reads() {
        // Strings holding brackets, quotes and escapes, nested and empty values in skipped
        // fields, numbers and literals ending members, whitespace everywhere, `id` last.
        let body = br#" { "jsonrpc" : "2.0" , "result" : {
            "OpaqueRef:a" : { "VCPUs_params" : { "x}" : "{[" } , "uuid" : "u-a",
                "name_label" : "a \"}\" b\\" , "memory" : 17179869184, "ha" : false,
                "blocked" : [ [ ], { }, [ 1.5e3, null, true ] ], "platform" : { "device-model-args" : "-device vgpu-cuda,pool_id=A" },
                "other_config" : { "k\u00e9" : "v\u2603" }, "domid" : -1 } ,
            "OpaqueRef:b\"" : {"uuid":"u-b","power_state":"Running","is_a_template":true,"last":0}
        } , "id" : 7 }
        "#;
        let whole = stream(body, 1 << 16).unwrap();
        for capacity in [1, 2, 3, 7, 64] {
            let (envelope, vms) = stream(body, capacity).unwrap();
            assert_eq!(vms, whole.1, "read {capacity} bytes at a time");
            assert_eq!(envelope.id, Some(json!(7)));
        }
        let (envelope, vms) = whole;
        assert!(envelope.result && envelope.error.is_none());
        assert_eq!(vms.len(), 2);
        assert_eq!(vms[0].opaque_ref, "OpaqueRef:a");
        assert_eq!(vms[0].name_label, "a \"}\" b\\");
        assert_eq!(
            vms[0].platform["device-model-args"],
            "-device vgpu-cuda,pool_id=A"
        );
        assert_eq!(vms[0].other_config["k\u{e9}"], "v\u{2603}");
        assert_eq!(vms[1].opaque_ref, "OpaqueRef:b\"");
        assert_eq!(vms[1].power_state, "Running");
        assert!(vms[1].is_a_template);
    }

    #[test]
    fn streamed_envelopes_without_records() {
        for (body, id, error) in [
            (&br#"{"jsonrpc":"2.0","error":{"code":1,"message":"SESSION_INVALID","data":["s"]},"id":3}"#[..],
             json!(3), json!({"code": 1, "message": "SESSION_INVALID", "data": ["s"]})),
            (br#"{"result":null,"error":["HANDLE_INVALID","VM","x"],"id":"4"}"#, json!("4"),
             json!(["HANDLE_INVALID", "VM", "x"])),
        ] {
            let (envelope, vms) = stream(body, 5).unwrap();
            assert!(vms.is_empty() && !envelope.result);
            assert_eq!((envelope.id, envelope.error), (Some(id), Some(error)));
        }
        let (envelope, vms) = stream(br#"{"result":{}}"#, 5).unwrap();
        assert!(vms.is_empty() && envelope.result && envelope.id.is_none());
        let (envelope, _) = stream(br#"{}"#, 5).unwrap();
        assert!(!envelope.result);
    }

    #[test]
    fn broken_streamed_answers_are_protocol_errors() {
        for (body, needle) in [
            (&b""[..], "not a JSON-RPC object"),
            // What was read ahead is quoted: here, one byte or the whole answer.
            (
                b"<html>502</html>",
                "not a JSON-RPC object (expected an object): \"<",
            ),
            (
                br#"{"result":{"OpaqueRef:a":{"uuid":"u"}}"#,
                "expected ',' or '}'",
            ),
            (
                br#"{"result":{"OpaqueRef:a":{"uuid":"u"}},"id":1} x"#,
                "trailing characters",
            ),
            (
                br#"{"result":{"OpaqueRef:a":{"uuid":"u"#,
                "the answer ends early",
            ),
            (
                br#"{"result":{"OpaqueRef:a":{"uuid":5}}}"#,
                "unexpected VM records: invalid type",
            ),
            (
                br#"{"result":{"OpaqueRef:a":{"name_label":"x"}}}"#,
                "missing field `uuid`",
            ),
            (
                br#"{"result":{"OpaqueRef:a":{"uuid":"u","platform":{"k":1}}}}"#,
                "unexpected VM records",
            ),
            (
                br#"{"result":{"OpaqueRef:a":{"uuid":"u"},}}"#,
                "expected a VM ref",
            ),
            (
                br#"{"result":{"OpaqueRef:a":{"uuid":"u",}}}"#,
                "unexpected VM records",
            ),
            (
                br#"{"result":["OpaqueRef:a"]}"#,
                "expected an object, got an array",
            ),
            (
                br#"{"result":{"OpaqueRef:a" {"uuid":"u"}}}"#,
                "expected ':'",
            ),
            (br#"{"id":1 "result":{}}"#, "expected ',' or '}'"),
            (
                br#"{"id":trux,"result":{}}"#,
                "not a JSON-RPC object (expected ident",
            ),
            (br#"{"result":{"OpaqueRef:a":}}"#, "unexpected '}'"),
        ] {
            for capacity in [1, 4096] {
                let reason = reason(stream(body, capacity));
                assert!(
                    reason.contains(needle),
                    "{}: {reason}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        assert!(reason(stream(b"<html>502</html>", 4096)).ends_with(": \"<html>502</html>\""));
    }

    #[test]
    fn a_streamed_record_with_text_that_is_not_unicode_is_named() {
        let lone = br#"{"id":1,"result":{"OpaqueRef:ok":{"uuid":"u-ok","name_label":"fine"},
            "OpaqueRef:bad":{"name_label":"web","platform":{"device-model-args":"-name \udc80"},"uuid":"u-bad"}}}"#;
        let mut not_utf8 =
            br#"{"id":1,"result":{"OpaqueRef:bad":{"uuid":"u-bad","name_label":"we"#.to_vec();
        not_utf8.extend_from_slice(b"\xff\xfe\"}}}");
        for (body, needle) in [
            (
                &lone[..],
                r#"VM u-bad (web): platform["device-model-args"] is not valid Unicode"#,
            ),
            (&not_utf8[..], "VM u-bad: name_label is not valid Unicode"),
        ] {
            for capacity in [3, 4096] {
                let reason = reason(stream(body, capacity));
                assert!(reason.contains(needle), "{reason}");
                assert!(reason.len() < 300, "{reason}");
            }
        }
    }

    #[test]
    fn host_records_and_lists() {
        let host = host_record(
            "host.get_record",
            "OpaqueRef:h",
            &json!({"uuid": "hu", "name_label": "xcp1"}),
        )
        .unwrap();
        assert_eq!(
            (host.uuid.as_str(), host.name_label.as_str()),
            ("hu", "xcp1")
        );
        assert!(host_record("m", "r", &json!({"name_label": "x"})).is_err());
        assert_eq!(
            string_list("m", "refs", &json!(["a", "b"])).unwrap(),
            ["a", "b"]
        );
        assert!(string_list("m", "refs", &json!(["a", 1])).is_err());
    }
}
