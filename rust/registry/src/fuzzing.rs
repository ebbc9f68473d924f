//! Fuzz entry points of the core's parsers (not part of the API).
//!
//! Each takes arbitrary bytes and returns nothing: it must never panic on any input, and it
//! panics only when a property the product relies on is broken (what is written reads back the
//! same, a call forwarded to the master means the same call there, …). The same functions run
//! under cargo-fuzz (`rust/fuzz`) and, on the stable toolchain, in the corpus replay and
//! property runs of `rust/fuzz-check`.

use crate::config::Config;
use crate::dma::{DeviceArgs, DeviceSpec};
use crate::functions::{FunctionSpec, FUNCTIONS};
use crate::model::{parse_vm_id, Controls, Pool, Priority, Registration};
use crate::report::{Outcome, VmStatus};
use crate::request::Call;
use crate::status::{device_status, found_device};
use std::collections::BTreeMap;
use std::path::Path;

/// The device types a fuzz input is checked against: the default, a legacy one (so a legacy
/// entry is "ours" and is renamed in place) and a configured one.
const DEVICE_TYPES: [&str; 3] = ["vgpu-cuda", "vgpu-stub", "my-gpu.v2"];

/// A cheap, stable hash of the input: it picks the registry values to write, so the committed
/// seeds stay plain text (no leading control bytes) and still reach every choice.
fn hash(data: &[u8]) -> u32 {
    data.iter().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(16_777_619)
    })
}

fn spec_for(data: &[u8], device_type: &str, extra: &str) -> DeviceSpec {
    let h = hash(data);
    DeviceSpec {
        device_type: device_type.to_string(),
        extra: extra.to_string(),
        pool: Pool::ALL[(h & 1) as usize],
        priority: Priority::ALL[((h >> 1) % 3) as usize],
        vm_id: (h >> 3).max(1),
    }
}

fn registration(spec: &DeviceSpec) -> Registration {
    Registration {
        vm_uuid: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
        vm_name: None,
        vm_id: i64::from(spec.vm_id),
        pool: spec.pool,
        priority: spec.priority,
        created_at: None,
        updated_at: None,
        name_chosen: false,
        controls: Controls::default(),
    }
}

/// Writes `spec` into `args` and checks that every reader of device-model-args (status, scan,
/// adopt) then sees exactly the registry values, and that a second write changes nothing.
fn write_and_read_back(mut args: DeviceArgs, spec: &DeviceSpec) {
    let ty = spec.device_type.as_str();
    args.set_vgpu(spec);
    let written = args.render();
    let back = DeviceArgs::parse(&written)
        .unwrap_or_else(|e| panic!("set_vgpu wrote what parse refuses: {e}"));
    assert_eq!(
        back, args,
        "set_vgpu wrote {written:?}, which reads back otherwise"
    );

    let reg = registration(spec);
    let status = device_status(&reg, Some(&written), ty);
    assert_eq!(
        (status.status, &status.drift, &status.problems),
        (VmStatus::Configured, &Vec::new(), &Vec::new()),
        "status of {written:?} right after writing it"
    );
    let device = found_device(Some(&written), ty).expect("the entry just written is found");
    assert_eq!(device.device_type, ty);
    // What `adopt` would register from this device is what was written.
    let pool = device.pool.as_deref().map(Pool::parse).transpose();
    let priority = device.priority.as_deref().map(Priority::parse).transpose();
    let vm_id = device.vm_id.as_deref().map(parse_vm_id).transpose();
    assert_eq!(
        (pool.ok(), priority.ok(), vm_id.ok()),
        (
            Some(Some(spec.pool)),
            Some(Some(spec.priority)),
            Some(Some(spec.vm_id))
        ),
        "adopt reads {device:?} from {written:?}"
    );

    let mut again = back.clone();
    again.set_vgpu(spec);
    assert_eq!(
        again, back,
        "a second write of the same values changed {written:?}"
    );

    let mut removed = back;
    assert!(removed.remove_vgpu(ty), "remove after set found nothing");
    let rest = removed.render();
    assert_eq!(
        DeviceArgs::parse(&rest).as_ref(),
        Ok(&removed),
        "what remove leaves, {rest:?}, reads back otherwise"
    );
}

/// The device-model-args codec: `parse`, the readers (status, scan, adopt), `set_vgpu`,
/// `remove_vgpu` and `render`, on any platform value xapi may hand us.
pub fn device_model_args(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let args = match DeviceArgs::parse(&text) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let written = args.render();
    assert_eq!(
        DeviceArgs::parse(&written).as_ref(),
        Ok(&args),
        "{text:?} rendered as {written:?}, which reads back otherwise"
    );
    let ty = DEVICE_TYPES[(hash(data) % 3) as usize];
    let spec = spec_for(data, ty, "addr=5");
    let reg = registration(&spec);
    let _ = device_status(&reg, Some(&text), ty);
    if let Some(device) = found_device(Some(&text), ty) {
        let _ = device.pool.as_deref().map(Pool::parse);
        let _ = device.priority.as_deref().map(Priority::parse);
        let _ = device.vm_id.as_deref().map(parse_vm_id);
    }
    write_and_read_back(args, &spec);
}

/// Splits a fuzz input into a plugin call: the function on the first line, then one `key=value`
/// per line (a line without `=` is a key with an empty value).
fn call_of(text: &str) -> (&str, BTreeMap<String, String>) {
    let mut lines = text.split('\n');
    let function = lines.next().unwrap_or_default();
    let args = lines
        .map(|line| line.split_once('=').unwrap_or((line, "")))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (function, args)
}

/// The plugin argument decoder: a function name and a map of strings, as xapi hands them to the
/// plugin (and `vgpu-admin call` to the core), to a validated call or a contract error.
pub fn plugin_args(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (function, args) = call_of(&text);
    let mut call = match Call::parse(function, &args) {
        Ok(call) => call,
        Err(e) => {
            let _ = (e.to_string(), e.to_json(), e.code().exit_status());
            return;
        }
    };
    // A call forwarded to the pool master is parsed again there from `call.args`: it must be
    // the same call.
    let name = call.function().name;
    let forwarded = Call::parse(name, &call.args)
        .unwrap_or_else(|e| panic!("{name} {:?} forwarded is refused: {e}", call.args));
    assert_eq!(forwarded.request, call.request, "{name} {:?}", call.args);
    if call.wants_confirmation() {
        call.confirm();
        assert!(!call.wants_confirmation(), "confirmed, yet still asks");
        let forwarded = Call::parse(name, &call.args)
            .unwrap_or_else(|e| panic!("{name} {:?} forwarded is refused: {e}", call.args));
        assert!(
            !forwarded.wants_confirmation(),
            "the confirmation is lost forwarding"
        );
        assert_eq!(forwarded.request, call.request, "{name} {:?}", call.args);
    }
}

/// `vgpu.conf`: any text is a configuration or an invalid-argument error; the device type and
/// extra properties it accepts are written and read back intact by the codec.
pub fn config(data: &[u8]) {
    // `Config::load` refuses text that is not UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = match Config::parse(text, Path::new("vgpu.conf")) {
        Ok(cfg) => cfg,
        Err(e) => {
            let _ = (e.to_string(), e.to_json());
            return;
        }
    };
    let spec = spec_for(data, &cfg.device.device_type, &cfg.device.extra);
    write_and_read_back(DeviceArgs::default(), &spec);
    let with_foreign = DeviceArgs::parse("-m 1 -device e1000,netdev=n0 'a b'").expect("fixed text");
    write_and_read_back(with_foreign, &spec);
}

/// The master's answer to a forwarded call: the function on the first line, then the JSON text
/// its plugin returned. Whatever is accepted serialises back to the same result.
pub fn plugin_answer(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (first, json) = text.split_once('\n').unwrap_or((&text, ""));
    let spec: &FunctionSpec =
        FunctionSpec::find(first).unwrap_or(&FUNCTIONS[hash(data) as usize % FUNCTIONS.len()]);
    let Ok(outcome) = Outcome::from_json(spec.result, json) else {
        return;
    };
    let again = outcome.to_ascii_json();
    let back = Outcome::from_json(spec.result, &again)
        .unwrap_or_else(|e| panic!("{} result {again:?} reads back as an error: {e}", spec.name));
    assert_eq!(back, outcome, "{} result {again:?}", spec.name);
}
