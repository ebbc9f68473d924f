"""Running xapi host plugins the way xapi does (ocaml/xapi/xapi_plugins.ml).

xapi looks the name up in its plugin directory (only names listed there; no paths), execs the
file with exactly one argument, an XML-RPC methodCall (methodName = fn, params = [session ref,
struct of strings]), reads only stdout and parses it as an XML-RPC methodResponse:

* ``{"Status": "Success", "Value": <string>}`` -> the string is the call's result;
* ``{"Status": "Failure", "ErrorDescription": [code, params...]}`` -> that error;
* a fault -> ``XENAPI_PLUGIN_FAILURE ["fault", code, reason]``;
* anything else -> ``XENAPI_PLUGIN_FAILURE ["unexpected XMLRPC result", stdout]``;
* unparseable stdout -> ``XENAPI_PLUGIN_FAILURE ["failed to parse plugin output", stdout, error]``;
* non-zero exit -> ``XENAPI_PLUGIN_FAILURE ["non-zero exit", stdout, stderr]``;
  killed by a signal -> ``["signal: SIGKILL", stdout, stderr]``.

xapi has no timeout; the simulator stops a plugin after ``timeout`` seconds (300 by default)
with ``XENAPI_PLUGIN_FAILURE ["timeout", stdout, stderr]``.
"""

import os
import signal
import subprocess
import threading
import xmlrpc.client
from xml.parsers.expat import ExpatError

from xapi_sim.errors import XapiError

DEFAULT_TIMEOUT = 300.0
# Error params carry the plugin's output; keep them bounded.
MAX_EXCERPT = 65536

_children = set()
_children_lock = threading.Lock()


def find_plugin(plugin_dir, name):
    """``<plugin_dir>/<name>`` if ``name`` is listed in the directory, else XENAPI_MISSING_PLUGIN."""
    try:
        listed = os.listdir(plugin_dir) if plugin_dir else []
    except OSError:
        listed = []
    if not isinstance(name, str) or name not in listed:
        raise XapiError("XENAPI_MISSING_PLUGIN", [name])
    return os.path.join(plugin_dir, name)


def method_call(fn, session_ref, args):
    return xmlrpc.client.dumps((session_ref, dict(args)), methodname=fn)


def _excerpt(data):
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    if len(text) > MAX_EXCERPT:
        text = text[:MAX_EXCERPT] + "...[truncated]"
    return text


def _signal_name(num):
    try:
        return signal.Signals(num).name
    except ValueError:
        return "signal %d" % num


def parse_response(stdout_text):
    """The result of a plugin from its stdout (see module doc); raises XapiError."""
    try:
        params, _ = xmlrpc.client.loads(stdout_text)
    except xmlrpc.client.Fault as f:
        raise XapiError("XENAPI_PLUGIN_FAILURE", ["fault", str(f.faultCode), str(f.faultString)])
    except (ExpatError, xmlrpc.client.Error, ValueError, TypeError, IndexError, AttributeError, KeyError) as e:
        raise XapiError("XENAPI_PLUGIN_FAILURE", ["failed to parse plugin output", _excerpt(stdout_text), str(e)])
    if len(params) == 1:
        value = params[0]
        if isinstance(value, dict) and "Status" in value:
            if value["Status"] == "Success" and isinstance(value.get("Value"), str):
                return value["Value"]
            desc = value.get("ErrorDescription")
            if value["Status"] == "Failure" and isinstance(desc, list) and desc and all(
                isinstance(x, str) for x in desc
            ):
                raise XapiError(desc[0], desc[1:])
        elif isinstance(value, str):
            return value
    raise XapiError("XENAPI_PLUGIN_FAILURE", ["unexpected XMLRPC result", _excerpt(stdout_text)])


def run_plugin(path, fn, session_ref, args, env, python=None, timeout=DEFAULT_TIMEOUT):
    """Exec the plugin file and return its string result (or raise XapiError)."""
    argv = ([python] if python else []) + [path, method_call(fn, session_ref, args)]
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd="/",
            close_fds=True,
            start_new_session=True,
        )
    except OSError as e:
        raise XapiError("XENAPI_PLUGIN_FAILURE", ["exec failed", "", "%s: %s" % (argv[0], e)])
    with _children_lock:
        _children.add(proc)
    try:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, err = proc.communicate()
            raise XapiError("XENAPI_PLUGIN_FAILURE", ["timeout", _excerpt(out), _excerpt(err)])
    finally:
        with _children_lock:
            _children.discard(proc)
    if proc.returncode < 0:
        raise XapiError("XENAPI_PLUGIN_FAILURE",
                        ["signal: %s" % _signal_name(-proc.returncode), _excerpt(out), _excerpt(err)])
    if proc.returncode != 0:
        raise XapiError("XENAPI_PLUGIN_FAILURE", ["non-zero exit", _excerpt(out), _excerpt(err)])
    return parse_response(out.decode("utf-8", "replace"))


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        try:
            proc.kill()
        except OSError:
            pass


def kill_all():
    """Stop every plugin still running (used when the simulator shuts down)."""
    with _children_lock:
        procs = list(_children)
    for proc in procs:
        _kill(proc)
