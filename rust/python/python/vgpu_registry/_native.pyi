# Type stubs of the native module (rust/python/src/lib.rs); the package re-exports all of it.
# The exception classes it raises are defined, with their types, in exceptions.py.
import pathlib
from typing import Dict, Optional, Union

__all__ = ["__version__", "call"]

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
