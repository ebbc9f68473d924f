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
