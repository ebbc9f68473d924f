"""vgpu_registry: the vgpu-registry core for Python (CPython >= 3.6).

``call(fn, args, *, session=None, config=None)`` is the xapi plugin's API: a function name and a
dict of str to str in, the JSON document as an ASCII-only str out. The functions below are typed
conveniences for scripts: they build the same ``args`` dict and return the parsed JSON.

Every failure raises ``VgpuError`` (``code``, ``message``, ``details``), as the subclass of its
error code: ``InvalidArgumentError``, ``VmIdInUseError``, ... (defined in ``exceptions``).
Validation, routing to the pool master and XAPI are the core's; nothing here checks a value.
Each convenience takes exactly the argument keys of its plugin function (``-`` spelled ``_``).
"""

import os
import sys

# typing and json are not imported when the package is: the xapi plugin imports it for every call,
# in an interpreter of its own, and typing alone costs more than the rest of the package (it is
# slowest on CPython 3.6). The annotations are strings, read by type checkers only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Union

    # A config file path: str or any os.PathLike.
    Path = Union[str, "os.PathLike[str]"]
    Value = Union[str, int, bool, None]
    Json = Dict[str, Any]

    from . import exceptions  # noqa: F401 (vgpu_registry.exceptions, where the classes are defined)
    from .exceptions import *  # noqa: F401,F403 (the classes, listed in exceptions.__all__)

from ._native import __version__, call

__all__ = [
    "__version__",
    "call",
    "scan",
    "register",
    "set_vm_id",
    "set_pool",
    "set_priority",
    "update",
    "show",
    "list_vms",
    "list_pools",
    "show_pool",
    "remove",
    "status",
    "sync",
    "refresh",
    "adopt",
    "rebuild",
    "set_weight",
    "set_rate_limit",
    "quarantine",
    "clear_quarantine",
    "show_weights",
    "show_rate_limits",
    "mediator",
    # exceptions.__all__, spelled out for type checkers (the suite checks that they agree)
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


class _Package(type(sys)):
    """This package's module type. Creating the fourteen exception classes (``exceptions``) was the
    largest part of importing the package, which the xapi plugin does for every call while it needs
    them only when a call fails: they are created on first use of ``vgpu_registry.exceptions``, of
    one of their names here (``vgpu_registry.VgpuError`` ..., ``import *``, ``dir()``), or of a
    failure, which the extension raises as one of them. (CPython 3.6 has no module
    ``__getattr__``, hence a module type of its own.)"""

    def __getattr__(self, name: str) -> "Any":
        if name != "exceptions" and name not in __all__:
            raise AttributeError("module %r has no attribute %r" % (__name__, name))
        __import__(__name__ + ".exceptions")  # which sets self.exceptions
        exceptions = sys.modules[__name__ + ".exceptions"]
        for exported in exceptions.__all__:
            setattr(self, exported, getattr(exceptions, exported))
        if name not in self.__dict__:
            raise AttributeError("module %r has no attribute %r" % (__name__, name))
        return self.__dict__[name]

    def __dir__(self) -> "List[str]":
        return sorted(set(super().__dir__()) | set(__all__) | {"exceptions"})


sys.modules[__name__].__class__ = _Package

# ``call`` flushes C stdio's buffers before it returns, so the xapi plugin, which keeps them out of
# its answer, need not load ctypes to flush them itself.
_FLUSHES_C_STDIO = True

# Each plugin function has the convenience of its name with "-" spelled "_", except these
# (``list`` would shadow the builtin).
CONVENIENCE_NAMES = {"list": "list_vms"}  # type: Dict[str, str]


def _text(key: str, value: "Union[str, int, bool]") -> str:
    """An argument as the plugin API spells it: booleans as true/false, numbers in decimal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)):
        return str(value)
    raise TypeError("%s must be str, int or bool, not %s" % (key, type(value).__name__))


def _run(fn: str, session: "Optional[str]", config: "Optional[Path]", **args: "Value") -> "Any":
    """Calls ``fn`` with the arguments that are set (``None`` and ``False`` are left out)."""
    config_path = None if config is None else os.fspath(config)
    plugin_args = {
        key.replace("_", "-"): _text(key, value)
        for key, value in args.items()
        if value is not None and value is not False
    }
    import json

    return json.loads(call(fn, plugin_args, session=session, config=config_path))


def _object(fn: str, session: "Optional[str]", config: "Optional[Path]", **args: "Value") -> "Json":
    return _run(fn, session, config, **args)  # type: ignore[no-any-return]


def _array(fn: str, session: "Optional[str]", config: "Optional[Path]", **args: "Value") -> "List[Json]":
    return _run(fn, session, config, **args)  # type: ignore[no-any-return]


def scan(*, session: "Optional[str]" = None, config: "Optional[Path]" = None) -> "Json":
    """Every VM of the pool against the registry: registered (with status and drift),
    unregistered, stale, summary (``vgpu-admin scan-vms``)."""
    return _object("scan", session, config)


def register(
    vm_uuid: "Optional[str]" = None,
    vm_name: "Optional[str]" = None,
    pool: "Optional[str]" = None,
    priority: "Union[str, int, None]" = None,
    vm_id: "Union[int, str, None]" = None,
    restart: bool = False,
    yes: bool = False,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "Json":
    """Registers a VM (it must exist in XAPI) in ``pool`` (A/B) with ``priority``
    (low/medium/high or 0/1/2) and writes its vgpu device into device-model-args. Without
    ``vm_id`` the next free id is assigned. With ``vm_uuid``, ``vm_name`` is the name to store."""
    return _object(
        "register",
        session,
        config,
        vm_uuid=vm_uuid,
        vm_name=vm_name,
        pool=pool,
        priority=priority,
        vm_id=vm_id,
        restart=restart,
        yes=yes,
    )


def set_vm_id(
    vm_uuid: "Optional[str]" = None,
    vm_name: "Optional[str]" = None,
    vm_id: "Union[int, str, None]" = None,
    restart: bool = False,
    yes: bool = False,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "Json":
    """Changes a registered VM's vm_id (it must be unique)."""
    return _object(
        "set-vm-id",
        session,
        config,
        vm_uuid=vm_uuid,
        vm_name=vm_name,
        vm_id=vm_id,
        restart=restart,
        yes=yes,
    )


def set_pool(
    vm_uuid: "Optional[str]" = None,
    vm_name: "Optional[str]" = None,
    pool: "Optional[str]" = None,
    restart: bool = False,
    yes: bool = False,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "Json":
    """Moves a registered VM to another pool (A/B)."""
    return _object(
        "set-pool",
        session,
        config,
        vm_uuid=vm_uuid,
        vm_name=vm_name,
        pool=pool,
        restart=restart,
        yes=yes,
    )


def set_priority(
    vm_uuid: "Optional[str]" = None,
    vm_name: "Optional[str]" = None,
    priority: "Union[str, int, None]" = None,
    restart: bool = False,
    yes: bool = False,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "Json":
    """Changes a registered VM's priority (low/medium/high)."""
    return _object(
        "set-priority",
        session,
        config,
        vm_uuid=vm_uuid,
        vm_name=vm_name,
        priority=priority,
        restart=restart,
        yes=yes,
    )


def update(
    vm_uuid: "Optional[str]" = None,
    vm_name: "Optional[str]" = None,
    pool: "Optional[str]" = None,
    priority: "Union[str, int, None]" = None,
    vm_id: "Union[int, str, None]" = None,
    restart: bool = False,
    yes: bool = False,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "Json":
    """Changes any of pool, priority, vm_id of a registered VM in one step."""
    return _object(
        "update",
        session,
        config,
        vm_uuid=vm_uuid,
        vm_name=vm_name,
        pool=pool,
        priority=priority,
        vm_id=vm_id,
        restart=restart,
        yes=yes,
    )


def show(
    vm_uuid: "Optional[str]" = None,
    vm_name: "Optional[str]" = None,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "Json":
    """One registered VM plus its live XAPI state: power state, device-model-args, status,
    drift."""
    return _object("show", session, config, vm_uuid=vm_uuid, vm_name=vm_name)


def list_vms(
    pool: "Optional[str]" = None,
    priority: "Union[str, int, None]" = None,
    quarantined: bool = False,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "List[Json]":
    """The registered VMs (optionally of one pool and/or priority, or only the quarantined),
    ordered by pool, priority (high first), vm_id."""
    return _array("list", session, config, pool=pool, priority=priority, quarantined=quarantined)


def list_pools(*, session: "Optional[str]" = None, config: "Optional[Path]" = None) -> "List[Json]":
    """The registry pools with name, description, enabled, VM count and counts per
    priority."""
    return _array("list-pools", session, config)


def show_pool(
    pool: "Optional[str]" = None,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "Json":
    """One registry pool (as in ``list_pools``) plus its ``vms``."""
    return _object("show-pool", session, config, pool=pool)


def remove(
    vm_uuid: "Optional[str]" = None,
    vm_name: "Optional[str]" = None,
    restart: bool = False,
    yes: bool = False,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "Json":
    """Removes the registration and the vgpu device from device-model-args (a stale VM is
    removed from the registry only)."""
    return _object(
        "remove",
        session,
        config,
        vm_uuid=vm_uuid,
        vm_name=vm_name,
        restart=restart,
        yes=yes,
    )


def status(*, session: "Optional[str]" = None, config: "Optional[Path]" = None) -> "Json":
    """A summary: pools, counts, drift, not applied, unregistered, stale, problems."""
    return _object("status", session, config)


def sync(
    vm_uuid: "Optional[str]" = None,
    vm_name: "Optional[str]" = None,
    all: bool = False,
    dry_run: bool = False,
    restart: bool = False,
    yes: bool = False,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "Json":
    """Re-applies the registry values to one VM (or, ``all=True``, to every VM in drift or
    not applied) and refreshes stored names; ``dry_run=True`` only reports."""
    return _object(
        "sync",
        session,
        config,
        vm_uuid=vm_uuid,
        vm_name=vm_name,
        all=all,
        dry_run=dry_run,
        restart=restart,
        yes=yes,
    )


def refresh(
    reload: bool = False, *, session: "Optional[str]" = None, config: "Optional[Path]" = None
) -> "Json":
    """Refreshes this host's copy of the registry from the pool's copy in XAPI (a replica on a
    member, the primary on the master); acts on the host it runs on. ``reload=True`` then asks
    this host's GPU mediator to reload."""
    return _object("refresh", session, config, reload=reload)


def adopt(
    vm_uuid: "Optional[str]" = None,
    vm_name: "Optional[str]" = None,
    all: bool = False,
    dry_run: bool = False,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "Json":
    """Registers VMs that already carry a vgpu device with the device's values; ``skipped``
    lists those left alone and why; ``dry_run=True`` only reports."""
    return _object(
        "adopt", session, config, vm_uuid=vm_uuid, vm_name=vm_name, all=all, dry_run=dry_run
    )


def rebuild(
    dry_run: bool = False, *, session: "Optional[str]" = None, config: "Optional[Path]" = None
) -> "Json":
    """Rebuilds the master's registry from the pool's copy in XAPI (backing up what was there),
    then adopts VMs that carry a device but have no copy; ``dry_run=True`` only reports."""
    return _object("rebuild", session, config, dry_run=dry_run)


def set_weight(
    vm_uuid: "Optional[str]" = None,
    vm_name: "Optional[str]" = None,
    weight: "Optional[int]" = None,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "Json":
    """Sets the VM's mediator weight (1 to 100); ``reloads`` and ``in_effect`` say where it
    took effect."""
    return _object("set-weight", session, config, vm_uuid=vm_uuid, vm_name=vm_name, weight=weight)


def set_rate_limit(
    vm_uuid: "Optional[str]" = None,
    vm_name: "Optional[str]" = None,
    rate: "Optional[int]" = None,
    queue_depth: "Optional[int]" = None,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "Json":
    """Sets the VM's rate limit (jobs per second, 0 = unlimited) and, when given, its queue
    depth; ``in_effect`` is false when a mediator could not reload it."""
    return _object(
        "set-rate-limit",
        session,
        config,
        vm_uuid=vm_uuid,
        vm_name=vm_name,
        rate=rate,
        queue_depth=queue_depth,
    )


def quarantine(
    vm_uuid: "Optional[str]" = None,
    vm_name: "Optional[str]" = None,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "Json":
    """Quarantines the VM (mediators reject its new GPU work once they reload)."""
    return _object("quarantine", session, config, vm_uuid=vm_uuid, vm_name=vm_name)


def clear_quarantine(
    vm_uuid: "Optional[str]" = None,
    vm_name: "Optional[str]" = None,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "Json":
    """Lifts the VM's quarantine and zeroes its error count."""
    return _object("clear-quarantine", session, config, vm_uuid=vm_uuid, vm_name=vm_name)


def show_weights(
    pool: "Optional[str]" = None, *, session: "Optional[str]" = None, config: "Optional[Path]" = None
) -> "List[Json]":
    """The registrations with their controls (the weights' view)."""
    return _array("show-weights", session, config, pool=pool)


def show_rate_limits(
    pool: "Optional[str]" = None, *, session: "Optional[str]" = None, config: "Optional[Path]" = None
) -> "List[Json]":
    """The registrations with their controls (the rate limits' view)."""
    return _array("show-rate-limits", session, config, pool=pool)


def mediator(
    action: "Optional[str]" = None,
    prometheus: bool = False,
    host: "Optional[str]" = None,
    all_hosts: bool = False,
    *,
    session: "Optional[str]" = None,
    config: "Optional[Path]" = None
) -> "List[Json]":
    """Asks a GPU mediator (``metrics``, ``health``, ``connections`` or ``reload``): this
    host's, ``host``'s through its plugin, or every host's."""
    return _array(
        "mediator",
        session,
        config,
        action=action,
        prometheus=prometheus,
        host=host,
        all_hosts=all_hosts,
    )
