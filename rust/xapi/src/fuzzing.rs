//! Fuzz entry point of the JSON-RPC answer parser (not part of the API).
//!
//! It takes any bytes as the body of xapi's answer: it must never panic, and panics only when a
//! property the client relies on is broken. The same function runs under cargo-fuzz
//! (`rust/fuzz`) and, on the stable toolchain, in `rust/fuzz-check`.

use crate::client::{parse_response, parse_vm_records};
use crate::records;
use crate::XapiError;
use serde_json::Value;

/// The request id the answers of the corpus carry.
pub const ID: u64 = 7;

fn touch(e: &XapiError) {
    let _ = (e.to_string(), e.api_code());
}

/// The body of an xapi answer, read the ways the client reads it: the generic envelope and
/// every record reader on its result, and the streamed reading of VM records.
pub fn json_rpc_answer(data: &[u8]) {
    let method = "VM.get_all_records_where";
    let typed = parse_vm_records(method, ID, data);
    if let Err(e) = &typed {
        touch(e);
    }
    let value = match parse_response(method, ID, data) {
        Ok(value) => value,
        Err(e) => {
            touch(&e);
            return;
        }
    };
    let results: Vec<Option<XapiError>> = vec![
        records::string(method, "a ref", &value).err(),
        records::string_list(method, "refs", &value).err(),
        records::string_map(method, "platform", &value).err(),
        records::vm_record(method, "OpaqueRef:1", &value).err(),
        records::host_record(method, "OpaqueRef:1", &value).err(),
        records::pool_record(method, "OpaqueRef:1", &value).err(),
        records::record_map(method, &value, records::host_record).err(),
        records::record_map(method, &value, records::pool_record).err(),
    ];
    results.iter().flatten().for_each(touch);
    let generic = records::record_map(method, &value, records::vm_record);
    if let Err(e) = &generic {
        touch(e);
    }
    // The two readings of VM records agree on every answer both accept.
    if let (Ok(mut typed), Ok(mut generic)) = (typed, generic) {
        typed.sort_by(|a, b| a.opaque_ref.cmp(&b.opaque_ref));
        generic.sort_by(|a, b| a.opaque_ref.cmp(&b.opaque_ref));
        assert_eq!(
            typed, generic,
            "the streamed and generic VM records of {value}"
        );
    }
    let _ = Value::to_string(&value);
}
