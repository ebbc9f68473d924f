"""The exceptions of vgpu_registry: ``VgpuError`` and one subclass per error code of the core.

They are defined here and only raised by the native module: it looks the error's code up in
``BY_CODE`` and raises that class (``VgpuError`` itself for a code missing here), with ``code``,
``message`` and ``details`` set. ``BY_CODE`` is built from the subclasses below, so a new error
code is one new class; the test suite fails until every code of the core has exactly one.
"""

# typing is for type checkers only: importing it would cost every plugin call (see __init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Optional, Type

__all__ = [
    "VgpuError",
    "InvalidArgumentError",
    "VmNotFoundError",
    "AmbiguousVmNameError",
    "NotRegisteredError",
    "AlreadyRegisteredError",
    "VmIdInUseError",
    "NoFreeVmIdError",
    "XapiError",
    "DatabaseError",
    "ConfirmationRequiredError",
    "VmStateError",
    "InternalError",
    "ConfigError",
]


class VgpuError(Exception):
    """A vgpu-registry error. ``code`` is the stable error code (e.g. ``'VM_ID_IN_USE'``),
    ``message`` the human message (also ``str(e)``), ``details`` a dict of machine-readable
    details."""

    code: "Optional[str]" = None
    message: str = ""
    details: "Dict[str, Any]" = {}

    def __init__(
        self,
        message: str = "",
        *,
        code: "Optional[str]" = None,
        details: "Optional[Dict[str, Any]]" = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = {} if details is None else details


class InvalidArgumentError(VgpuError):
    """An argument is missing, unknown, conflicting or has a bad value."""

    code = "INVALID_ARGUMENT"


class VmNotFoundError(VgpuError):
    """No such VM in the pool (in XAPI)."""

    code = "VM_NOT_FOUND"


class AmbiguousVmNameError(VgpuError):
    """Several VMs carry that name; select the VM by uuid."""

    code = "AMBIGUOUS_VM_NAME"


class NotRegisteredError(VgpuError):
    """The VM is not registered."""

    code = "NOT_REGISTERED"


class AlreadyRegisteredError(VgpuError):
    """The VM is already registered."""

    code = "ALREADY_REGISTERED"


class VmIdInUseError(VgpuError):
    """The vm_id belongs to another VM; ``details`` name it and the next free id
    (``next_free_vm_id``)."""

    code = "VM_ID_IN_USE"


class NoFreeVmIdError(VgpuError):
    """Every vm_id is taken."""

    code = "NO_FREE_VM_ID"


class XapiError(VgpuError):
    """An XAPI call failed."""

    code = "XAPI_ERROR"


class DatabaseError(VgpuError):
    """The registry database failed."""

    code = "DATABASE_ERROR"


class ConfirmationRequiredError(VgpuError):
    """Restarting a running VM needs confirmation (``yes=True``)."""

    code = "CONFIRMATION_REQUIRED"


class VmStateError(VgpuError):
    """The VM's power state does not allow the operation."""

    code = "VM_STATE"


class InternalError(VgpuError):
    """A bug or an unexpected answer."""

    code = "INTERNAL"


class ConfigError(VgpuError):
    """The configuration file exists but cannot be read (permissions, a directory...)."""

    code = "CONFIG_ERROR"


# The class of each error code: what the native module raises.
BY_CODE: "Dict[str, Type[VgpuError]]" = {
    cls.code: cls for cls in VgpuError.__subclasses__() if cls.code is not None
}
