"""Running xapi host plugins the way xapi does (ocaml/xapi/xapi_plugins.ml).

xapi looks the name up in its plugin directory (only names listed there; no paths) and execs the
file with exactly one argument, a compact XML-RPC methodCall (no XML header; methodName = fn;
params = [session ref, struct of strings]; ``<value>text</value>``, ``<value/>`` for an empty
string; characters XML cannot carry dropped). The process gets stdin ``/dev/null``, working
directory ``/``, a session of its own (setsid) and exactly the environment ``plugin_environment``
builds: ``PATH=/sbin:/usr/sbin:/bin:/usr/bin`` and nothing else from xapi (no ``LANG``: Python 3.6
then has an ASCII stdout and ASCII argv decoding), plus the few variables the simulator adds so a
plugin finds this simulator instead of dom0's files:

* ``VGPU_HOST_UUID``: the host the call is for (dom0 has it in /etc/xensource-inventory);
* ``VGPU_XAPI``: the simulator's URL (dom0's xapi listens on /var/lib/xcp/xapi);
* a fixture host's ``plugin_env`` map and what a test sets with ``sim.set_plugin_env`` (a
  test's own settings; a test may even replace PATH there).

xapi reads stdout only, and parses it strictly:

* one ``methodResponse`` whose one value is ``{"Status": "Success", "Value": <string>}`` -> the
  string is the call's result;
* ``{"Status": "Failure", "ErrorDescription": [code, params...]}`` (a non-empty list of strings)
  -> that error;
* a struct of any other shape (a Value or an error item that is not a string, an empty error
  list, another Status, not a Status struct at all) -> ``INTERNAL_ERROR [what was wrong]``;
* a fault -> ``XENAPI_PLUGIN_FAILURE ["fault", code, reason]``;
* output that is not one XML-RPC response (text before or after it, invalid UTF-8)
  -> ``XENAPI_PLUGIN_FAILURE ["failed to parse plugin output", stdout, error]``;
* a non-zero exit -> ``XENAPI_PLUGIN_FAILURE ["non-zero exit", stdout, stderr]``; death by a
  signal -> ``["signal: SIGKILL", stdout, stderr]``.

xapi has no timeout; the simulator stops a plugin after ``timeout`` seconds (300 by default)
with ``XENAPI_PLUGIN_FAILURE ["timeout", stdout, stderr]``.
"""

import os
import re
import signal
import subprocess
import threading
import xmlrpc.client
from xml.parsers.expat import ExpatError

from xapi_sim.errors import XapiError

DEFAULT_TIMEOUT = 300.0
# The whole environment xapi gives a plugin.
XAPI_PLUGIN_PATH = "/sbin:/usr/sbin:/bin:/usr/bin"
# Error params carry the plugin's output; keep them bounded.
MAX_EXCERPT = 65536
# Characters an XML 1.0 document cannot carry: xapi drops them from the arguments.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

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


def plugin_environment(simulator_vars):
    """The environment of a plugin run: xapi's PATH, then the simulator's variables."""
    env = {"PATH": XAPI_PLUGIN_PATH}
    env.update(simulator_vars)
    return {k: v for k, v in env.items() if v is not None}


def _xml_text(value):
    text = _NOT_XML.sub("", value)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _xml_value(value):
    return "<value>%s</value>" % _xml_text(value) if value else "<value/>"


def method_call(fn, session_ref, args):
    """The one argument xapi passes: a compact methodCall of strings."""
    members = "".join("<member><name>%s</name>%s</member>" % (_xml_text(k), _xml_value(v))
                      for k, v in args.items())
    return ("<methodCall><methodName>%s</methodName><params><param>%s</param>"
            "<param><value><struct>%s</struct></value></param></params></methodCall>"
            % (_xml_text(fn), _xml_value(session_ref), members))


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


def parse_response(stdout):
    """The result of a plugin from its stdout bytes (see the module doc); raises XapiError."""
    try:
        params, method = xmlrpc.client.loads(stdout)
        if method is not None or len(params) != 1:
            raise ValueError("expected a methodResponse with one value")
    except xmlrpc.client.Fault as f:
        raise XapiError("XENAPI_PLUGIN_FAILURE", ["fault", str(f.faultCode), str(f.faultString)])
    except (ExpatError, xmlrpc.client.Error, ValueError, TypeError, IndexError, AttributeError, KeyError) as e:
        raise XapiError("XENAPI_PLUGIN_FAILURE", ["failed to parse plugin output", _excerpt(stdout), str(e)])
    value = params[0]
    status = value.get("Status") if isinstance(value, dict) else None
    if status == "Success":
        result = value.get("Value")
        if isinstance(result, str):
            return result
        raise XapiError("INTERNAL_ERROR", ["plugin answer: Value is not a string: %r" % (result,)])
    if status == "Failure":
        desc = value.get("ErrorDescription")
        if not isinstance(desc, list) or not desc:
            raise XapiError("INTERNAL_ERROR", ["plugin answer: ErrorDescription is not a non-empty list: %r" % (desc,)])
        if not all(isinstance(x, str) for x in desc):
            raise XapiError("INTERNAL_ERROR", ["plugin answer: an ErrorDescription item is not a string: %r" % (desc,)])
        raise XapiError(desc[0], desc[1:])
    raise XapiError("INTERNAL_ERROR", ["plugin answer: not a Success or Failure struct: %r" % (value,)])


def run_plugin(path, fn, session_ref, args, env, python=None, timeout=DEFAULT_TIMEOUT):
    """Exec the plugin file with exactly ``env`` and return its string result (or raise XapiError)."""
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
    return parse_response(out)


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
