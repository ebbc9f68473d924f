//! `vgpu_registry._native`: the pyo3 binding over the vgpu-registry core.
//!
//! It only converts: a Python `dict` of `str` to a `BTreeMap`, the core's JSON result to an
//! ASCII JSON `str`, the core's typed error to an exception. The exception classes are defined
//! in Python (`vgpu_registry/exceptions.py`) and only raised from here, by error code. Every
//! rule (validation, routing to the pool master, XAPI) lives in the core.
//!
//! pyo3 is pinned to 0.15.2 for CPython 3.6 (docs/decisions/0005-pyo3-0.15.md); it is covered
//! by RUSTSEC-2025-0020 through `PyString::from_object`, which this crate must never call.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use registry::{Error, ErrorCode};
use registry::{Service, Settings};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// The Python module that defines the exception classes (`VgpuError` and one subclass per
/// code) and `BY_CODE`, the class of each code. Classes are defined there, never here.
const EXCEPTIONS: &str = "vgpu_registry.exceptions";

/// A core error reduced to what its exception carries, taken while the GIL is released.
struct Failure {
    code: ErrorCode,
    message: String,
    /// The core's `details` as JSON text.
    details: String,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure {
            code: error.code(),
            message: error.to_string(),
            details: error.details().to_string(),
        }
    }
}

/// The one conversion to Python: the class `BY_CODE` names for the code (`VgpuError` for a
/// code it lacks), with `code`, `message` and `details` set.
impl From<Failure> for PyErr {
    fn from(failure: Failure) -> PyErr {
        // Failing to build the exception (the module not importable, out of memory) raises
        // that failure instead.
        Python::with_gil(|py| failure.to_exception(py).unwrap_or_else(|e| e))
    }
}

impl Failure {
    fn to_exception(&self, py: Python<'_>) -> PyResult<PyErr> {
        let module = py.import(EXCEPTIONS)?;
        let code = self.code.as_str();
        let class = module.getattr("BY_CODE")?.call_method1("get", (code,))?;
        let class = if class.is_none() {
            module.getattr("VgpuError")?
        } else {
            class
        };
        let details = py
            .import("json")?
            .call_method1("loads", (self.details.as_str(),))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("code", code)?;
        kwargs.set_item("details", details)?;
        let instance = class.call((self.message.as_str(),), Some(kwargs))?;
        Ok(PyErr::from_instance(instance))
    }
}

/// `args` as the core wants it, or a `TypeError` naming what is wrong.
fn string_map(args: &PyAny) -> PyResult<BTreeMap<String, String>> {
    let dict = args.downcast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!(
            "args must be a dict of str to str, not {}",
            type_name(args)
        ))
    })?;
    let mut map = BTreeMap::new();
    for (key, value) in dict.iter() {
        let key_str = key.downcast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "args keys must be str: key {} is {}",
                repr(key),
                type_name(key)
            ))
        })?;
        let value_str = value.downcast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "args values must be str: args[{}] is {} {}",
                repr(key),
                type_name(value),
                repr(value)
            ))
        })?;
        map.insert(key_str.to_str()?.to_owned(), value_str.to_str()?.to_owned());
    }
    Ok(map)
}

fn type_name(obj: &PyAny) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "an object".to_owned(), str::to_owned)
}

fn repr(obj: &PyAny) -> String {
    obj.repr()
        .and_then(|r| r.to_str().map(str::to_owned))
        .unwrap_or_else(|_| "<unrepresentable>".to_owned())
}

/// The core's API as this binding uses it: one call, its JSON answer as ASCII text.
fn call_core(
    function: &str,
    args: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<String, Error> {
    let answer = Service::new(settings)?.call(function, args)?;
    Ok(answer.outcome.to_ascii_json())
}

/// Runs one call in the core; a panic becomes the contract's `INTERNAL` error, so callers
/// (the xapi plugin) see one error shape.
fn run(
    function: &str,
    args: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<String, Failure> {
    catch_unwind(AssertUnwindSafe(|| call_core(function, args, settings)))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(Error::Internal(format!(
                "panic in the vgpu-registry core: {what}"
            )))
        })
        .map_err(Failure::from)
}

extern "C" {
    /// C's `fflush`; a null stream flushes every output stream.
    fn fflush(stream: *mut std::ffi::c_void) -> std::os::raw::c_int;
}

/// Flushes C stdio's buffers, so whatever a linked C library may have printf'd is written out
/// before `call` returns. The xapi plugin points file descriptor 1 at stderr while `call` runs and
/// relies on this instead of loading ctypes to do it for every call (`_FLUSHES_C_STDIO` in
/// `vgpu_registry/__init__.py`).
fn flush_c_stdio() {
    // SAFETY: fflush(NULL) takes no pointer from us and is thread safe in every libc.
    unsafe {
        fflush(std::ptr::null_mut());
    }
}

/// call(fn, args, *, session=None, config=None)
/// --
///
/// Runs the plugin API function `fn` with `args` (a dict of str to str) and returns the
/// result as an ASCII-only JSON string. Raises `VgpuError` (a subclass per error code).
#[pyfunction(r#fn, args, "*", session = "None", config = "None")]
#[pyo3(text_signature = "(fn, args, *, session=None, config=None)")]
fn call(
    py: Python<'_>,
    r#fn: &str,
    args: &PyAny,
    session: Option<String>,
    config: Option<PathBuf>,
) -> PyResult<String> {
    let args = string_map(args)?;
    let function = r#fn.to_owned();
    let settings = Settings {
        config_path: config,
        session,
        ..Default::default()
    };
    let result = py.allow_threads(move || {
        let result = run(&function, &args, &settings);
        flush_c_stdio();
        result
    });
    Ok(result?)
}

/// The native part of `vgpu_registry`: `call`. Import `vgpu_registry`, which re-exports it
/// next to the exception classes (`vgpu_registry.exceptions`) and the typed conveniences.
#[pymodule]
#[pyo3(name = "_native")]
fn native(_py: Python<'_>, m: &PyModule) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(call, m)?)?;
    Ok(())
}
