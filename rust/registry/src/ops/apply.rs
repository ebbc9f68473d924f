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
        write_dma(xapi, vm, old.as_deref(), new.as_deref())?;
    }
    if let Err(e) = commit() {
        let aftermath = if new == old {
            CommitAftermath::Restored
        } else {
            match restore_dma(xapi, vm, old.as_deref()) {
                Ok(()) => CommitAftermath::Restored,
                Err((restore, removed)) => CommitAftermath::Unrestored {
                    restore: Box::new(restore),
                    left: if removed { None } else { new.clone() },
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

/// Replaces the platform key: `remove_from_platform` then `add_to_platform` (xapi has no
/// single-key set). When the add fails after the remove, the old value is put back. A call
/// whose answer was lost (the connection broke, or xapi was slower than the timeout) may have
/// been carried out: the old value is put back then too (removing whatever is there first),
/// and the error names the command that restores it should the lost call still land later.
fn write_dma(xapi: &dyn Xapi, vm: &VmRecord, old: Option<&str>, new: Option<&str>) -> Result<()> {
    let what = format!("writing device-model-args of VM {}", vm_ref(vm));
    if old.is_some() {
        if let Err(e) = xapi.remove_from_platform(&vm.opaque_ref, PLATFORM_KEY) {
            if e.outcome_unknown() {
                return Err(put_back(xapi, vm, &what, old, e));
            }
            return Err(Error::xapi(
                format!("{what} failed; the registry and the VM are unchanged"),
                e,
            ));
        }
    }
    let Some(new) = new else {
        return Ok(());
    };
    if let Err(e) = xapi.add_to_platform(&vm.opaque_ref, PLATFORM_KEY, new) {
        if e.outcome_unknown() {
            return Err(put_back(xapi, vm, &what, old, e));
        }
        let Some(old_v) = old else {
            return Err(Error::xapi(
                format!("{what} failed; the registry and the VM are unchanged"),
                e,
            ));
        };
        return match xapi.add_to_platform(&vm.opaque_ref, PLATFORM_KEY, old_v) {
            Ok(()) => Err(Error::xapi(
                format!(
                    "{what} failed; the registry is unchanged and device-model-args were put back"
                ),
                e,
            )),
            Err(restore) => Err(Error::XapiUnrestored {
                context: format!("{what} failed"),
                source: Box::new(e),
                restore: Box::new(restore),
                vm: vm_ref(vm),
                repair_command: repair_command(vm, old),
            }),
        };
    }
    Ok(())
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
        Err((restore, _)) => Error::XapiUnrestored {
            context: format!("{what} failed"),
            source: Box::new(lost),
            restore: Box::new(restore),
            vm: vm_ref(vm),
            repair_command: repair_command(vm, old),
        },
    }
}

/// Puts `old` back after a failed commit. On failure, also says whether the new value had
/// already been removed (the VM then has no device-model-args).
fn restore_dma(
    xapi: &dyn Xapi,
    vm: &VmRecord,
    old: Option<&str>,
) -> Result<(), (xapi::XapiError, bool)> {
    xapi.remove_from_platform(&vm.opaque_ref, PLATFORM_KEY)
        .map_err(|e| (e, false))?;
    match old {
        Some(v) => xapi
            .add_to_platform(&vm.opaque_ref, PLATFORM_KEY, v)
            .map_err(|e| (e, true)),
        None => Ok(()),
    }
}
