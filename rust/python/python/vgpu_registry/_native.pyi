# Type stubs of the native module (rust/python/src/lib.rs); the package re-exports all of it.
import pathlib
from typing import Any, Dict, Optional, Union

__version__: str

def call(
    fn: str,
    args: Dict[str, str],
    *,
    session: Optional[str] = ...,
    config: Union[str, pathlib.Path, None] = ...,
) -> str:
    """Runs the plugin API function ``fn`` with ``args`` (a dict of str to str) and returns
    the result as an ASCII-only JSON string. Raises ``VgpuError`` (a subclass per code)."""

class VgpuError(Exception):
    """A vgpu-registry error: ``code`` (e.g. ``'VM_ID_IN_USE'``), ``message`` (also
    ``str(e)``), ``details`` (machine-readable)."""

    code: str
    message: str
    details: Dict[str, Any]

class InvalidArgumentError(VgpuError):
    ...

class VmNotFoundError(VgpuError):
    ...

class AmbiguousVmNameError(VgpuError):
    ...

class NotRegisteredError(VgpuError):
    ...

class AlreadyRegisteredError(VgpuError):
    ...

class VmIdInUseError(VgpuError):
    ...

class NoFreeVmIdError(VgpuError):
    ...

class XapiError(VgpuError):
    ...

class DatabaseError(VgpuError):
    ...

class ConfirmationRequiredError(VgpuError):
    ...

class VmStateError(VgpuError):
    ...

class InternalError(VgpuError):
    ...
