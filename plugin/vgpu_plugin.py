# -*- coding: ascii -*-
"""The machinery of the xapi plugin ``vgpu``: installed beside it, as /etc/xapi.d/plugins/vgpu_plugin.py
(mode 0644: xapi runs only the plugin itself), and imported by it. When xapi execs a plugin, the
plugin's own directory is sys.path[0], so the import needs nothing else.

The plugin file holds only its functions, each handing its name and arguments to ``run``, and
``dispatch`` under ``__main__`` after ``prepare``. Everything else is here:

* ``run``: settings, the path to the Rust core, the answer or ``XenAPIPlugin.Failure("VGPU_<CODE>",
  [message, details_json])``; one log line per call;
* the two paths to the core: the ``vgpu_registry`` extension in this process (CPython >= 3.6), or
  ``vgpu-admin call -- FN KEY=VALUE ...`` as a child process (no shell);
* the stdout guards: the answer is ASCII whatever is printed, and nothing but the answer reaches
  stdout while the core runs;
* ``read_plugin_config``: the two top-level keys of the config file the plugin needs;
* ``prepare``: argv decoded as UTF-8, an ASCII stdout, and a re-run under the other major Python
  when this one cannot import XenAPIPlugin.

Source compatible with Python 2.7 (XCP-ng 8.2), 3.6 (8.3) and 3.12 (9).

Where it looks (xapi gives a plugin only PATH, so the config file is the real mechanism; the
environment variables are for tests and take precedence):
  config file     $VGPU_CONFIG, else /etc/vgpu/vgpu.conf (only the top-level keys python_path and
                  admin_path are read here; the core reads and checks the whole file)
  backend         $VGPU_PLUGIN_BACKEND = native | cli; default: native when it imports, else cli
  native path     the vgpu_registry extension, from $VGPU_PYTHONPATH, else config python_path,
                  else /usr/lib64/vgpu-registry/python (put first on sys.path)
  cli path        $VGPU_ADMIN, else config admin_path, else /usr/bin/vgpu-admin, with xapi's
                  session in $VGPU_XAPI_SESSION
  the core reads  $VGPU_DB, $VGPU_XAPI, $VGPU_HOST_UUID (else /etc/xensource-inventory) itself
"""

# Only what every call needs is imported here: xapi starts a new interpreter for each call, so
# each module imported costs every call its load time. json, traceback and ctypes are imported where
# they are used (the CLI path and failures, an unexpected error, a foreign module); subprocess not
# at all (see _run_child).
import os
import sys
import time

DEFAULT_CONFIG = "/etc/vgpu/vgpu.conf"
DEFAULT_PYTHON_PATH = "/usr/lib64/vgpu-registry/python"
DEFAULT_ADMIN = "/usr/bin/vgpu-admin"
BACKENDS = ("native", "cli")
PLUGIN_CONFIG_KEYS = ("python_path", "admin_path")
# Set on a re-run under another interpreter, so there is never a second one.
REEXEC_GUARD = "VGPU_PLUGIN_REEXEC"

PY2 = sys.version_info[0] == 2
PYTHON = "python%d.%d" % tuple(sys.version_info[:2])
if PY2:  # pragma: no cover - exercised under Python 2.7
    text_type = unicode  # noqa: F821 (Python 2 only)
    unichr_ = unichr  # noqa: F821
else:
    text_type = str
    unichr_ = chr


class PluginError(Exception):
    """An error of the contract: code (without the VGPU_ prefix), message, details (a dict)."""

    def __init__(self, code, message, details=None):
        Exception.__init__(self, message)
        self.code = code
        self.message = message
        self.details = details if details is not None else {}


# ------------------------------------------------------------------------------------------------
# Text (xapi runs plugins without a locale: on Python 3.6 stdout and argv are ASCII)


def _text(value):
    """Any str/bytes/unicode -> text (UTF-8, undecodable bytes replaced)."""
    if isinstance(value, bytes):
        # Not value.decode(): Python 2's str.decode looks the codec up (importing
        # encodings.utf_8), unicode(value, "utf-8") decodes directly.
        return text_type(value, "utf-8", "replace")
    if isinstance(value, text_type):
        return value
    return text_type(value)


def ascii_escape(value):
    """Text with every non-ASCII character written as a JSON-style backslash-u escape of four hex
    digits (UTF-16 units, lower-case hex, as the Rust core writes its JSON), so the result is the
    same on every interpreter. Applied to JSON text it keeps the document's meaning."""
    plain = _ascii_only(value)
    if plain is not None:  # the usual case (the core answers in ASCII): no loop in Python
        return plain
    out = []
    for ch in _text(value):
        code = ord(ch)
        if code < 0x80:
            out.append(ch)
        elif code < 0x10000:
            out.append("\\u%04x" % code)
        else:
            code -= 0x10000
            out.append("\\u%04x\\u%04x" % (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)))
    return str("".join(out))


_ASCII_BYTES = bytes(bytearray(range(128)))


def _ascii_only(value):
    """``value`` as a str when it is text or bytes of ASCII characters only, else None. Python 2's
    unicode.encode() imports a codec module on first use, which str() does not."""
    try:
        if isinstance(value, bytes):
            if value.translate(None, _ASCII_BYTES):
                return None
            return value if PY2 else value.decode("ascii")
        if not isinstance(value, text_type):
            return None
        if PY2:
            return str(value) if sys.getdefaultencoding() == "ascii" else None
        value.encode("ascii")
        return value
    except UnicodeError:
        return None


def details_json(details):
    """The second Failure parameter: the details object as compact, sorted, ASCII JSON."""
    if details is None:
        details = {}
    elif not isinstance(details, dict):
        details = {"details": details}
    import json

    return str(json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=True))


def _native_str(value):
    """A value for os.environ / sys.path on this interpreter (bytes on 2.7, str on 3)."""
    if PY2 and isinstance(value, text_type):
        return value.encode("utf-8")
    return value


def _arg_bytes(value):
    """An argv word as bytes: Python 3.6 without a locale cannot encode non-ASCII str argv."""
    if isinstance(value, bytes):
        return value
    return _text(value).encode("utf-8")


def _os_reason(error):
    """The text of an OSError without the file name (3.6 appends repr(bytes path) to strerror)."""
    if getattr(error, "errno", None):
        return os.strerror(error.errno)
    return _text(error)


# ------------------------------------------------------------------------------------------------
# Logging: syslog, or a file named by $VGPU_PLUGIN_LOG. Never stdout; logging never fails a call.

_syslog = None


def log(message, error=False):
    line = ascii_escape(message)
    path = os.environ.get("VGPU_PLUGIN_LOG")
    try:
        if path:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with open(path, "a") as f:
                f.write("%s vgpu-plugin[%d]: %s\n" % (stamp, os.getpid(), line))
            return
        global _syslog
        if _syslog is None:
            import syslog

            syslog.openlog("vgpu-plugin", syslog.LOG_PID, syslog.LOG_DAEMON)
            _syslog = syslog
        _syslog.syslog(_syslog.LOG_ERR if error else _syslog.LOG_INFO, line)
    except Exception:  # noqa: BLE001 - a broken log must not break the call
        pass


# ------------------------------------------------------------------------------------------------
# The config file: the two top-level string keys the plugin needs, read leniently.

_BASIC_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


def read_plugin_config(path):
    """``{key: text}`` for the top-level ``python_path`` / ``admin_path`` of the TOML file at ``path``.

    Lenient on purpose: the core parses and checks the whole file, so this reader refuses nothing.
    It takes lines ``key = "text"`` or ``key = 'text'`` (a quoted key, the usual escapes and a
    trailing comment allowed) before the first table header, and steps over the body of multi-line
    strings. A key it cannot read keeps its default, and the core reports what is wrong."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except (IOError, OSError, ValueError):
        return {}
    found = {}
    open_quote = None
    for line in text.split("\n"):
        if open_quote is not None:
            if open_quote in line:
                open_quote = None
            continue
        stripped = line.strip()
        if stripped.startswith("["):
            break
        key, equals, raw = stripped.partition("=")
        key, raw = key.strip(), raw.strip()
        if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'":
            key = key[1:-1]
        if not equals:
            continue
        if raw[:3] in ('"""', "'''") and raw.find(raw[:3], 3) < 0:
            open_quote = raw[:3]
            continue
        if key in PLUGIN_CONFIG_KEYS and key not in found:
            value = _one_line_string(raw)
            if value:
                found[key] = value
    return found


def _one_line_string(raw):
    """The text of the TOML string that ``raw`` is (then maybe a comment), or None."""
    for quote in ("'''", '"""', "'", '"'):
        if raw.startswith(quote):
            break
    else:
        return None
    literal = quote[0] == "'"
    body, i = [], len(quote)
    while i < len(raw):
        if raw.startswith(quote, i):
            rest = raw[i + len(quote):].strip()
            return "".join(body) if not rest or rest.startswith("#") else None
        ch = raw[i]
        if ch == "\\" and not literal:
            escape = raw[i + 1:i + 2]
            if escape in _BASIC_ESCAPES:
                body.append(_BASIC_ESCAPES[escape])
                i += 2
                continue
            width = {"u": 4, "U": 8}.get(escape, 0)
            digits = raw[i + 2:i + 2 + width]
            if not width or len(digits) != width or digits.strip("0123456789abcdefABCDEF"):
                return None
            try:
                body.append(unichr_(int(digits, 16)))
            except ValueError:
                return None
            i += 2 + width
            continue
        body.append(ch)
        i += 1
    return None


def config_path():
    return os.environ.get("VGPU_CONFIG") or DEFAULT_CONFIG


def plugin_settings():
    """(config path, python_path, admin_path, backend or None) from env > config > defaults."""
    path = config_path()
    cfg = read_plugin_config(path)
    python_path = os.environ.get("VGPU_PYTHONPATH") or cfg.get("python_path") or DEFAULT_PYTHON_PATH
    admin = os.environ.get("VGPU_ADMIN") or cfg.get("admin_path") or DEFAULT_ADMIN
    backend = os.environ.get("VGPU_PLUGIN_BACKEND") or None
    if backend is not None and backend not in BACKENDS:
        raise PluginError(
            "INVALID_ARGUMENT",
            'invalid VGPU_PLUGIN_BACKEND "%s": expected native or cli' % ascii_escape(backend),
            {"argument": "VGPU_PLUGIN_BACKEND", "value": _text(backend), "reason": "expected native or cli"},
        )
    return path, python_path, admin, backend


# ------------------------------------------------------------------------------------------------
# stdout: ASCII for the whole run, and pointed at stderr while the core runs


class _AsciiStdout(object):
    """Python 2's stdout taking str (UTF-8) or unicode and writing ASCII."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, data):
        self._stream.write(_text(data).encode("ascii", "xmlcharrefreplace"))

    def __getattr__(self, name):
        return getattr(self._stream, name)


def ascii_stdout():
    """Make sys.stdout write non-ASCII characters as XML character references (``&#233;``): the
    answer stays ASCII and means the same to xapi's XML parser, and XenAPIPlugin's own ``print``
    of a non-ASCII function name cannot fail on Python 3.6's ASCII stdout."""
    stream = sys.stdout
    if stream is None:
        return
    if PY2:
        sys.stdout = _AsciiStdout(stream)
        return
    if getattr(stream, "buffer", None) is None:
        return
    import io

    stream.flush()
    line_buffering = stream.line_buffering
    sys.stdout = io.TextIOWrapper(stream.detach(), encoding="ascii", errors="xmlcharrefreplace",
                                  line_buffering=line_buffering)


class StdoutToStderr(object):
    """While the core runs, file descriptor 1 and sys.stdout point at stderr, so nothing (Python
    code, the extension, a library) can write into the XML-RPC answer. C stdio buffers are flushed
    before fd 1 is given back when ``flush_c_stdio`` is true when the block ends (see ``run``)."""

    flush_c_stdio = True

    def __enter__(self):
        self.saved_obj = sys.stdout
        self.saved_fd = None
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.saved_fd = os.dup(1)
            os.dup2(2, 1)
        except OSError:
            self.saved_fd = None
        sys.stdout = sys.stderr
        return self

    def __exit__(self, *exc):
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001
            pass
        if self.flush_c_stdio:
            _flush_c_stdio()
        if self.saved_fd is not None:
            os.dup2(self.saved_fd, 1)
            os.close(self.saved_fd)
        sys.stdout = self.saved_obj
        return False


def _flush_c_stdio():
    """Flush C stdio buffers (a native library's printf) while fd 1 still points at stderr."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:  # noqa: BLE001
        pass


# ------------------------------------------------------------------------------------------------
# The two paths to the core


def session_ref(session):
    """xapi's session ref, from the ``_session`` attribute of the proxy XenAPIPlugin hands over.
    Any other use of that proxy (another attribute; on Python 2 even bool() or ==) is an XML-RPC
    call to xapi, so only this attribute is read."""
    ref = getattr(session, "_session", None)
    return str(_text(ref)) if ref is not None and _text(ref) else None


_native_module = None
_native_failure = None


def load_native(python_path):
    """The vgpu_registry module, or None (the reason kept in _native_failure)."""
    global _native_module, _native_failure
    if _native_module is not None or _native_failure is not None:
        return _native_module
    if PY2:
        _native_failure = "Python %d.%d cannot load the vgpu_registry extension (CPython >= 3.6 needed)" % (
            sys.version_info[0], sys.version_info[1])
        return None
    entry = _native_str(python_path)
    if not sys.path or sys.path[0] != entry:
        sys.path.insert(0, entry)
    try:
        import vgpu_registry  # noqa: F401 (the extension, from python_path)

        _native_module = vgpu_registry
    except Exception as e:  # noqa: BLE001 - ImportError, a broken .so, a syntax error ...
        _native_failure = "cannot import vgpu_registry from %s: %s: %s" % (python_path, e.__class__.__name__, e)
    return _native_module


def call_native(module, fn, args, session, config):
    try:
        return module.call(fn, dict(args), session=session, config=config)
    except Exception as e:  # noqa: BLE001
        error_class = getattr(module, "VgpuError", None)
        if error_class is not None and isinstance(e, error_class):
            raise PluginError(str(getattr(e, "code", None) or "INTERNAL"), _text(getattr(e, "message", None) or e),
                              getattr(e, "details", None))
        raise


def call_cli(admin, fn, args, session, config):
    argv = [admin, "call", "--", fn] + ["%s=%s" % (_text(k), _text(v)) for k, v in sorted(args.items())]
    env = dict(os.environ)
    env["VGPU_CONFIG"] = _native_str(config)
    if session:
        env["VGPU_XAPI_SESSION"] = _native_str(session)
    else:
        env.pop("VGPU_XAPI_SESSION", None)
    env.pop(REEXEC_GUARD, None)
    try:
        status, out, err = _run_child([_arg_bytes(a) for a in argv], env)
    except (OSError, IOError) as e:
        reason = _os_reason(e)
        raise PluginError(
            "INTERNAL",
            "internal error: cannot run vgpu-admin %s: %s (set admin_path in %s)" % (
                ascii_escape(admin), ascii_escape(reason), ascii_escape(config)),
            {"admin_path": _text(admin), "reason": _text(reason)},
        )
    out_text, err_text = _text(out), _text(err)
    for line in err_text.splitlines():
        if line.strip() and not _error_document(line):
            log("vgpu-admin: %s" % line)
    if status != 0:
        report = None
        for line in reversed(err_text.splitlines()):
            report = _error_document(line)
            if report:
                break
        if report:
            raise PluginError(report.get("code") or "INTERNAL", _text(report.get("message") or ""),
                              report.get("details"))
    answer = out_text.strip()
    if (status == 0 and _one_document(out_text)) or _is_json(answer):
        # exit 1 with a JSON answer and no error report: a sync some of whose VMs failed.
        return answer
    raise PluginError(
        "INTERNAL",
        "internal error: vgpu-admin %s exited with status %s without a JSON answer" % (ascii_escape(admin), status),
        {"exit_status": status, "stdout": _tail(out_text), "stderr": _tail(err_text)},
    )


def _run_child(argv, env):
    """Runs ``argv`` (bytes) with ``env``, stdin /dev/null and no other descriptor of this process:
    (exit status, or minus the signal that killed it; stdout bytes; stderr bytes). OSError when it
    cannot be started. This is subprocess.Popen(..., close_fds=True).communicate() by hand: on the
    CLI path, importing subprocess (and the threading, signal and selectors it brings) costs more
    CPU than the whole run of vgpu-admin."""
    import select

    pipes = os.pipe() + os.pipe() + os.pipe()
    out_r, out_w, err_r, err_w, exec_r, exec_w = pipes
    if PY2:  # Python 3's pipes are close-on-exec already
        import fcntl

        for fd in pipes:
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            pid = os.fork()
        except Exception:
            os.close(devnull)
            raise
    except Exception:
        for fd in pipes:
            os.close(fd)
        raise
    if pid == 0:  # pragma: no cover - the child: exec, else report errno on exec_w and exit
        code = 0
        try:
            os.dup2(devnull, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            try:
                fds = [int(n) for n in os.listdir("/proc/self/fd")]
            except (OSError, ValueError):
                fds = range(3, 1024)
            for fd in fds:
                if fd > 2 and fd != exec_w:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            os.execvpe(argv[0], argv, env)  # a bare name is looked up on the PATH of env, as Popen does
        except OSError as e:
            code = e.errno or 0
        except BaseException:  # noqa: BLE001 - the child must never return into the plugin
            pass
        try:
            os.write(exec_w, str(code).encode("ascii"))
        finally:
            os._exit(255)
    for fd in (out_w, err_w, exec_w, devnull):
        os.close(fd)
    try:
        failed = os.read(exec_r, 32)  # empty: exec closed it
    finally:
        os.close(exec_r)
    if failed:
        os.close(out_r)
        os.close(err_r)
        os.waitpid(pid, 0)
        code = int(failed) or 0
        raise OSError(code, os.strerror(code))
    chunks = {out_r: [], err_r: []}
    try:
        open_fds = [out_r, err_r]
        while open_fds:
            try:
                ready = select.select(open_fds, [], [])[0]
            except (select.error, OSError) as e:  # EINTR on Python 2
                if getattr(e, "errno", None) == 4 or (e.args and e.args[0] == 4):
                    continue
                raise
            for fd in ready:
                data = os.read(fd, 65536)
                if data:
                    chunks[fd].append(data)
                else:
                    open_fds.remove(fd)
    finally:
        os.close(out_r)
        os.close(err_r)
        while True:
            try:
                status = os.waitpid(pid, 0)[1]
                break
            except OSError as e:
                if e.errno != 4:
                    raise
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, b"".join(chunks[out_r]), b"".join(chunks[err_r])


def _error_document(line):
    """The ``{"error": {...}}`` object vgpu-admin prints on stderr, if ``line`` is one."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    import json

    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return doc["error"]
    return None


def _one_document(out):
    """True when ``out`` is framed as the one answer ``vgpu-admin call`` writes on success: a
    single line holding a JSON object or array, then a newline. Together with exit status 0 this
    is the core's word that it answered, and spares every successful call the import of json
    (the largest part of the bridge's cost in the plugin). Anything else (chatter on stdout, a
    cut or empty answer, another exit status) is parsed by ``_is_json`` as before, which turns it
    into VGPU_INTERNAL."""
    if len(out) < 3 or out[-1] != "\n" or "\n" in out[:-1] or "\r" in out:
        return False
    return (out[0], out[-2]) in (("{", "}"), ("[", "]"))


def _is_json(text):
    if not text:
        return False
    import json

    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def _tail(text, limit=2000):
    text = _text(text)
    return text if len(text) <= limit else "..." + text[-limit:]


# ------------------------------------------------------------------------------------------------
# One call: settings, backend, run, answer or Failure.


def failure(code, message, details):
    import XenAPIPlugin

    return XenAPIPlugin.Failure("VGPU_" + str(ascii_escape(code)), [ascii_escape(message), details_json(details)])


def run(fn, session, args):
    """Hand ``fn`` and ``args`` to the core; the JSON answer, or XenAPIPlugin.Failure."""
    started = time.time()
    backend = "?"
    args = dict(args or {})
    summary = log_args(args)
    try:
        with StdoutToStderr() as guard:
            config, python_path, admin, forced = plugin_settings()
            ref = session_ref(session)
            module = None
            if forced != "cli":
                module = load_native(python_path)
                if module is None and forced == "native":
                    raise PluginError("INTERNAL", "internal error: VGPU_PLUGIN_BACKEND=native but %s"
                                      % ascii_escape(_native_failure), {"python_path": _text(python_path)})
            if module is not None:
                backend = "native"
                guard.flush_c_stdio = not getattr(module, "_FLUSHES_C_STDIO", False)
                answer = call_native(module, fn, args, ref, config)
            else:
                backend = "cli"
                # Only Python ran here, unless an import of the extension was tried.
                guard.flush_c_stdio = _native_failure is not None
                if forced is None and _native_failure and not PY2:
                    log("native backend unavailable (%s); using %s" % (_native_failure, admin))
                answer = call_cli(admin, fn, args, ref, config)
        answer = ascii_escape(answer)
        log("%s %s: ok (%s)" % (fn, summary, _how(backend, started)))
        return answer
    except PluginError as e:
        log("%s %s: VGPU_%s %s (%s)" % (fn, summary, e.code, _text(e.message), _how(backend, started)), error=True)
        raise failure(e.code, e.message, e.details)
    except Exception as e:  # noqa: BLE001 - never a traceback on stdout
        import traceback

        log("%s %s: unexpected %s (%s)\n%s" % (fn, summary, e.__class__.__name__, _how(backend, started),
                                               traceback.format_exc()), error=True)
        raise failure("INTERNAL", "internal error: vgpu plugin: %s: %s" % (e.__class__.__name__, _text(e)),
                      {"exception": e.__class__.__name__})


# No function takes a secret, but a caller may pass one by mistake under a key that says so: the
# key is refused by the core, and its value never reaches the log.
SECRET_KEY_WORDS = ("pass", "secret", "session", "token", "auth", "cred")


def log_args(args):
    """The arguments as the log shows them: ``key=value ...``, sorted, with the value of any key
    naming a secret (``password``, ``session`` ...) replaced."""
    words = []
    for k, v in sorted(args.items()):
        key = _text(k)
        secret = any(w in key.lower() for w in SECRET_KEY_WORDS)
        words.append("%s=%s" % (key, "<redacted>" if secret else _text(v)))
    return " ".join(words)


def _how(backend, started):
    return "%s, %s, %.0f ms" % (backend, PYTHON, (time.time() - started) * 1000)


# ------------------------------------------------------------------------------------------------
# Before dispatch


def prepare():
    """What the plugin does under ``__main__`` before ``XenAPIPlugin.dispatch``: argv decoded as
    UTF-8, an ASCII stdout, and XenAPIPlugin imported; when this interpreter cannot import it,
    the plugin runs again under the other major Python version (once), else answers a
    VGPU_INTERNAL Failure by hand. Returns the XenAPIPlugin module."""
    sys.argv[1:] = utf8_argv(sys.argv[1:])
    ascii_stdout()
    try:
        import XenAPIPlugin
    except Exception as e:  # noqa: BLE001
        _without_xenapiplugin("%s: %s" % (e.__class__.__name__, e))
    return XenAPIPlugin


def utf8_argv(argv):
    """xapi passes UTF-8 XML. Python 3 without a locale (3.6 has no C-locale coercion) decodes argv
    as ASCII with surrogate escapes, which the XML-RPC parser cannot take: decode it as UTF-8."""
    if PY2:
        return argv
    out = []
    for arg in argv:
        try:
            out.append(os.fsencode(arg).decode("utf-8"))
        except (UnicodeError, TypeError):
            out.append(arg)
    return out


def _without_xenapiplugin(reason):
    """XenAPIPlugin is not importable here (a python3 of XCP-ng 8.2, whose xapi modules are
    Python 2 only): exec the plugin under the other major version, or answer by hand."""
    plugin = os.path.abspath(sys.argv[0])
    if not os.environ.get(REEXEC_GUARD):
        names = ("python2", "python") if not PY2 else ("python3",)
        me = os.path.realpath(sys.executable or "")
        for directory in (os.environ.get("PATH") or "/usr/bin:/bin").split(os.pathsep):
            for name in names:
                candidate = os.path.join(directory or ".", name)
                if os.path.isfile(candidate) and os.access(candidate, os.X_OK) and os.path.realpath(candidate) != me:
                    os.environ[REEXEC_GUARD] = "1"
                    log("XenAPIPlugin not importable by %s (%s); re-running under %s" % (sys.executable, reason,
                                                                                         candidate))
                    try:
                        os.execv(candidate, [_arg_bytes(a) for a in [candidate, plugin] + sys.argv[1:]])
                    except OSError:
                        continue
    try:
        import xmlrpclib  # Python 2
    except ImportError:
        import xmlrpc.client as xmlrpclib
    message = "internal error: the vgpu plugin cannot import XenAPIPlugin under %s (%s)" % (sys.executable, reason)
    log(message, error=True)
    answer = {"Status": "Failure",
              "ErrorDescription": ["VGPU_INTERNAL", ascii_escape(message), details_json({"python": sys.executable})]}
    sys.stdout.write(xmlrpclib.dumps((answer,), "", True) + "\n")
    sys.stdout.flush()
    sys.exit(0)


def functions(names):
    """The plugin's function table for ``names`` (plugin/vgpu's list), under each name and its
    underscore spelling: each function hands its own name, dashed, to ``run``. Made here, where
    the bytecode is cached, rather than in the plugin file, which is compiled on every call."""
    table = {}
    for name in names:
        table[name] = table[name.replace("-", "_")] = _function(name)
    return table


def _function(name):
    def function(session, args):
        return run(name, session, args)
    function.__name__ = str(name.replace("-", "_"))
    return function
