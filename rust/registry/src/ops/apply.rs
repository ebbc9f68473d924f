//! Apply and compensate: one change across SQLite and XAPI, all or nothing.
//!
//! The registry change is made first, inside an open write transaction; then the VM's
//! device-model-args are written; then the transaction commits. If the XAPI write fails the
//! transaction is dropped (rolled back) and the old value is put back; if the commit fails the
//! old value is put back. When even that fails, the error says what remains and gives the
//! command that repairs it. The commit is a parameter so that its failure can be tested.

use crate::dma::{DeviceArgs, DeviceSpec, ParseError, PLATFORM_KEY};
use crate::error::{CommitAftermath, Error, Result};
use crate::report::PowerState;
use crate::status::vm_ref;
use std::collections::BTreeMap;
use xapi::{VmRecord, Xapi};

/// What a mutation does to the VM's vgpu device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeviceChange {
    Set(DeviceSpec),
    Remove,
    Keep,
}

/// Writes `change` into the VM's device-model-args, then runs `commit`. Returns the value the
/// VM now has (`None`: no device-model-args).
pub(crate) fn apply_to_vm(
    xapi: &dyn Xapi,
    vm: &VmRecord,
    change: &DeviceChange,
    device_type: &str,
    commit: impl FnOnce() -> Result<()>,
) -> Result<Option<String>> {
    let platform = xapi.get_platform(&vm.opaque_ref).map_err(|e| {
        Error::xapi(
            format!(
                "reading device-model-args of VM {} failed; the registry and the VM are unchanged",
                vm_ref(vm)
            ),
            e,
        )
    })?;
    let old = platform.get(PLATFORM_KEY).cloned();
    let new = new_dma(old.as_deref(), change, device_type).map_err(|e| Error::VmState {
        vm: vm_ref(vm),
        power_state: PowerState::from_xapi(&vm.power_state),
        message: format!("{e}; fix device-model-args by hand first, nothing was changed"),
    })?;
    if new != old {
        write_dma(xapi, vm, &platform, old.as_deref(), new.as_deref())?;
    }
    if let Err(e) = commit() {
        let aftermath = if new == old {
            CommitAftermath::Restored
        } else {
            match restore_dma(xapi, vm, old.as_deref()) {
                Ok(()) => CommitAftermath::Restored,
                Err(restore) => CommitAftermath::Unrestored {
                    restore: Box::new(restore),
                    left: new.clone(),
                    repair_command: repair_command(vm, old.as_deref()),
                },
            }
        };
        return Err(Error::CommitFailed {
            source: Box::new(e),
            vm: vm_ref(vm),
            aftermath,
        });
    }
    Ok(new)
}

/// The device-model-args value after `change`; `None` means the key should not exist.
pub(crate) fn new_dma(
    old: Option<&str>,
    change: &DeviceChange,
    device_type: &str,
) -> Result<Option<String>, ParseError> {
    if *change == DeviceChange::Keep {
        return Ok(old.map(str::to_string));
    }
    let mut args = match old {
        Some(text) => DeviceArgs::parse(text)?,
        None => DeviceArgs::default(),
    };
    match change {
        DeviceChange::Set(spec) => args.set_vgpu(spec),
        DeviceChange::Remove => {
            if !args.remove_vgpu(device_type) {
                return Ok(old.map(str::to_string));
            }
        }
        DeviceChange::Keep => {}
    }
    Ok(if args.is_empty() {
        None
    } else {
        Some(args.render())
    })
}

/// The command that puts `old` back by hand.
fn repair_command(vm: &VmRecord, old: Option<&str>) -> String {
    match old {
        Some(v) => format!(
            "xe vm-param-set uuid={} platform:{PLATFORM_KEY}={}",
            vm.uuid,
            shell_words::quote(v)
        ),
        None => format!(
            "xe vm-param-remove uuid={} param-name=platform param-key={PLATFORM_KEY}",
            vm.uuid
        ),
    }
}

/// `platform` with device-model-args set to `value` (`None`: without the key); every other key
/// is kept as it is.
fn with_dma(platform: &BTreeMap<String, String>, value: Option<&str>) -> BTreeMap<String, String> {
    let mut map = platform.clone();
    match value {
        Some(v) => map.insert(PLATFORM_KEY.to_string(), v.to_string()),
        None => map.remove(PLATFORM_KEY),
    };
    map
}

/// Writes device-model-args `new` in one `VM.set_platform` of `platform` (the map just read)
/// with only that key changed. xapi has no per-key replace; a remove followed by an add would
/// leave the VM without the key, and the user's other QEMU arguments in it, should the writer
/// die in between (decision 0012). An error reply means nothing was written. A call whose
/// answer was lost (the connection broke, or xapi was slower than the timeout) may have been
/// carried out: the old value is put back then too, and the error names the command that
/// restores it should the lost call still land later.
fn write_dma(
    xapi: &dyn Xapi,
    vm: &VmRecord,
    platform: &BTreeMap<String, String>,
    old: Option<&str>,
    new: Option<&str>,
) -> Result<()> {
    let what = format!("writing device-model-args of VM {}", vm_ref(vm));
    match xapi.set_platform(&vm.opaque_ref, &with_dma(platform, new)) {
        Ok(()) => Ok(()),
        Err(e) if e.outcome_unknown() => Err(put_back(xapi, vm, &what, old, e)),
        Err(e) => Err(Error::xapi(
            format!("{what} failed; the registry and the VM are unchanged"),
            e,
        )),
    }
}

/// After a write whose answer was lost: sets device-model-args back to `old` whether or not the
/// write was carried out, and says what to run if it lands after all.
fn put_back(
    xapi: &dyn Xapi,
    vm: &VmRecord,
    what: &str,
    old: Option<&str>,
    lost: xapi::XapiError,
) -> Error {
    match restore_dma(xapi, vm, old) {
        Ok(()) => Error::xapi(
            format!(
                "{what} failed; the registry is unchanged and device-model-args were put back, \
                 but xapi may still carry out the call whose answer was lost: if `vgpu-admin \
                 scan-vms` shows VM {} changed, restore them with `{}`",
                vm.uuid,
                repair_command(vm, old)
            ),
            lost,
        ),
        Err(restore) => Error::XapiUnrestored {
            context: format!("{what} failed"),
            source: Box::new(lost),
            restore: Box::new(restore),
            vm: vm_ref(vm),
            repair_command: repair_command(vm, old),
        },
    }
}

/// Puts device-model-args `old` back, after a failed commit or a write whose answer was lost.
/// The platform map is read afresh, so that the undo is right whether or not the write landed
/// and keeps whatever else changed in the map meanwhile; when the key already holds `old`
/// nothing is written.
fn restore_dma(xapi: &dyn Xapi, vm: &VmRecord, old: Option<&str>) -> Result<(), xapi::XapiError> {
    let current = xapi.get_platform(&vm.opaque_ref)?;
    if current.get(PLATFORM_KEY).map(String::as_str) == old {
        return Ok(());
    }
    xapi.set_platform(&vm.opaque_ref, &with_dma(&current, old))
}
