//! `vgpu_registry._native`: the pyo3 binding over the vgpu-registry core.
//!
//! It only converts: a Python `dict` of `str` to a `BTreeMap`, the core's JSON result to an
//! ASCII JSON `str`, the core's typed error to the exception class of its error code. Every
//! rule (validation, routing to the pool master, XAPI) lives in the core.
//!
//! pyo3 is pinned to 0.15.2 for CPython 3.6 (docs/decisions/0005-pyo3-0.15.md); it is covered
//! by RUSTSEC-2025-0020 through `PyString::from_object`, which this crate must never call.

use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::once_cell::GILOnceCell;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};
use registry::service::{Service, Settings};
use registry::{Error, ErrorCode};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// The Python module the classes are presented in (the package re-exports them).
const MODULE: &str = "vgpu_registry";

const BASE_DOC: &str = "A vgpu-registry error. `code` is the stable error code (e.g. \
    'VM_ID_IN_USE'), `message` the human message (also `str(e)`), `details` a dict of \
    machine-readable details.";

/// The one table from error code to exception class: name and docstring.
fn class_of(code: ErrorCode) -> (&'static str, &'static str) {
    match code {
        ErrorCode::InvalidArgument => (
            "InvalidArgumentError",
            "An argument is missing, unknown, conflicting or has a bad value.",
        ),
        ErrorCode::VmNotFound => ("VmNotFoundError", "No such VM in the pool (in XAPI)."),
        ErrorCode::AmbiguousVmName => (
            "AmbiguousVmNameError",
            "Several VMs carry that name; select the VM by uuid.",
        ),
        ErrorCode::NotRegistered => ("NotRegisteredError", "The VM is not registered."),
        ErrorCode::AlreadyRegistered => ("AlreadyRegisteredError", "The VM is already registered."),
        ErrorCode::VmIdInUse => (
            "VmIdInUseError",
            "The vm_id belongs to another VM; details name it and the next free id.",
        ),
        ErrorCode::NoFreeVmId => ("NoFreeVmIdError", "Every vm_id is taken."),
        ErrorCode::XapiError => ("XapiError", "An XAPI call failed."),
        ErrorCode::DatabaseError => ("DatabaseError", "The registry database failed."),
        ErrorCode::ConfirmationRequired => (
            "ConfirmationRequiredError",
            "Restarting a running VM needs confirmation (yes=true).",
        ),
        ErrorCode::VmState => (
            "VmStateError",
            "The VM's power state does not allow the operation.",
        ),
        ErrorCode::Internal => ("InternalError", "A bug or an unexpected answer."),
    }
}

/// The exception classes: `VgpuError` and one subclass per code, in `ErrorCode::ALL` order.
struct Classes {
    base: Py<PyType>,
    by_code: Vec<(ErrorCode, Py<PyType>)>,
}

static CLASSES: GILOnceCell<Classes> = GILOnceCell::new();

/// Creates a class with `type(name, (base,), namespace)`: the plain Python way, no unsafe.
fn new_class(
    py: Python<'_>,
    name: &str,
    base: &PyType,
    doc: &str,
    code: Option<&str>,
) -> PyResult<Py<PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", MODULE)?;
    namespace.set_item("__doc__", doc)?;
    namespace.set_item("code", code)?;
    if code.is_none() {
        namespace.set_item("message", "")?;
        namespace.set_item("details", PyDict::new(py))?;
    }
    let class = py
        .get_type::<PyType>()
        .call1((name, PyTuple::new(py, [base]), namespace))?;
    Ok(class.downcast::<PyType>()?.into())
}

fn create_classes(py: Python<'_>) -> PyResult<Classes> {
    let base = new_class(
        py,
        "VgpuError",
        py.get_type::<PyException>(),
        BASE_DOC,
        None,
    )?;
    let mut by_code = Vec::with_capacity(ErrorCode::ALL.len());
    for &code in ErrorCode::ALL {
        let (name, doc) = class_of(code);
        let class = new_class(py, name, base.as_ref(py), doc, Some(code.as_str()))?;
        by_code.push((code, class));
    }
    Ok(Classes { base, by_code })
}

fn classes(py: Python<'_>) -> PyResult<&Classes> {
    if let Some(c) = CLASSES.get(py) {
        return Ok(c);
    }
    let created = create_classes(py)?;
    // `create_classes` runs Python code, so another initialisation may have set `CLASSES`
    // meanwhile; `set` then keeps the first set of classes, and that is the one returned.
    let _ = CLASSES.set(py, created);
    CLASSES
        .get(py)
        .ok_or_else(|| PyException::new_err("vgpu_registry: exception classes not initialised"))
}

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

/// The failure as an instance of its code's class, with `code`, `message`, `details`.
fn to_py_err(py: Python<'_>, error: &Failure) -> PyErr {
    // Failing to build the exception (out of memory, say) raises that failure instead.
    build_exception(py, error).unwrap_or_else(|e| e)
}

fn build_exception(py: Python<'_>, error: &Failure) -> PyResult<PyErr> {
    let code = error.code;
    let classes = classes(py)?;
    let class = classes
        .by_code
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(&classes.base, |(_, class)| class);
    let details = py
        .import("json")?
        .call_method1("loads", (error.details.as_str(),))?;
    let instance = class.as_ref(py).call1((error.message.as_str(),))?;
    instance.setattr("code", code.as_str())?;
    instance.setattr("message", error.message.as_str())?;
    instance.setattr("details", details)?;
    Ok(PyErr::from_instance(instance))
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

/// Runs one call in the core; a panic becomes the contract's `INTERNAL` error, so callers
/// (the xapi plugin) see one error shape.
fn run(
    function: &str,
    args: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<String, Failure> {
    catch_unwind(AssertUnwindSafe(|| -> Result<String, Failure> {
        let service = Service::new(settings)?;
        Ok(service.call(function, args)?.outcome.to_ascii_json())
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(Error::Internal(format!("panic in the vgpu-registry core: {what}")).into())
    })
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
    py.allow_threads(move || run(&function, &args, &settings))
        .map_err(|e| to_py_err(py, &e))
}

/// The native part of `vgpu_registry`: `call` and the exception classes. Import
/// `vgpu_registry`, which re-exports them next to the typed conveniences.
#[pymodule]
#[pyo3(name = "_native")]
fn native(py: Python<'_>, m: &PyModule) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(call, m)?)?;
    let classes = classes(py)?;
    m.add("VgpuError", classes.base.as_ref(py))?;
    for (code, class) in &classes.by_code {
        m.add(class_of(*code).0, class.as_ref(py))?;
    }
    Ok(())
}
