"""Test stand-in for dom0's ``XenAPIPlugin`` module of xapi >= 24 (XCP-ng 8.3 and 9), which ships
with xapi and is not on PyPI. XCP-ng 8.2's Python-2-only module has its own stand-in in
``xcp-ng-8.2/``.

It behaves as the real module does (xapi's ``XenAPIPlugin.py``), on Python 2.7 and 3.x:

* ``dispatch(fn_table)`` needs exactly one argument, an XML-RPC ``methodCall``; its method name is
  the function, its params ``(session_ref, {str: str})``;
* a known name: ``fn_table[name](session, args)``; the result is printed as
  ``{"Status": "Success", "Value": result}``, a ``Failure`` as ``{"Status": "Failure",
  "ErrorDescription": e.params}``, any other exception as ``["XENAPI_PLUGIN_FAILURE", name,
  class name, str(e)]``; ``SystemExit`` propagates;
* an unknown name: ``["UNKNOWN_XENAPI_PLUGIN_FUNCTION", name]``, written by the module's own
  ``print``, which raises on Python 3.6's ASCII stdout (no locale, as xapi runs plugins) when the
  name is not ASCII: a traceback and exit status 1, as with the real module;
* ``Failure(code, params)`` builds ``[code] + params``: params must be a list (a tuple raises
  TypeError, which dispatch answers as XENAPI_PLUGIN_FAILURE).

The session: the real module hands each function ``XenAPI.xapi_local()`` with ``_session`` set to
xapi's session ref. Every other attribute of that object is an XML-RPC call to xapi, and on
Python 2, where it is an old-style class, so are ``bool(session)`` and ``session == x``. Here each
such use raises ``SessionUsed``, a BaseException that neither the plugin nor dispatch turns into an
answer, so a plugin that touches its session fails its test loudly. Nothing else of ``XenAPI`` is
used, so this stand-in does not import it.

The plugin suite puts this directory on the plugin's ``PYTHONPATH``; it is never installed.
"""

from __future__ import print_function

import sys

if sys.version_info[0] == 2:
    import xmlrpclib
else:
    import xmlrpc.client as xmlrpclib


class Failure(Exception):
    """Compatibility with plugins written against the XenServer 5.5 API."""

    def __init__(self, code, params):
        Exception.__init__(self)
        self.params = [code] + params

    def __str__(self):
        return str(self.params)


class SessionUsed(BaseException):
    """A plugin used its session for something other than ``_session``: an XML-RPC call to xapi."""


if sys.version_info[0] == 2:
    class _ProxyBase:  # an old-style class, as xmlrpclib.ServerProxy on Python 2
        pass
else:
    _ProxyBase = object


class LocalSession(_ProxyBase):
    """``XenAPI.xapi_local()`` with ``_session`` set: every other use would call xapi."""

    def __init__(self, ref):
        self.__dict__["_session"] = ref

    def __getattr__(self, name):
        raise SessionUsed("the plugin used session.%s: with dom0's XenAPIPlugin that is an XML-RPC call to xapi"
                          % name)

    def __repr__(self):
        return "<XenAPI local session %s>" % self.__dict__["_session"]

    __str__ = __repr__


def success_message(result):
    rpcparams = {"Status": "Success", "Value": result}
    return xmlrpclib.dumps((rpcparams,), "", True)


def failure_message(description):
    rpcparams = {"Status": "Failure", "ErrorDescription": description}
    return xmlrpclib.dumps((rpcparams,), "", True)


def dispatch(fn_table):
    if len(sys.argv) != 2:
        raise Exception("Incorrect number of commandline arguments")
    params, methodname = xmlrpclib.loads(sys.argv[1])
    session_id = params[0]
    args = params[1]
    if methodname in fn_table:
        session = LocalSession(session_id)
        try:
            result = fn_table[methodname](session, args)
            print(success_message(result))
        except SystemExit:
            raise
        except Failure as e:
            print(failure_message(e.params))
        except Exception as e:  # noqa: BLE001 - as dom0's module does
            print(failure_message(["XENAPI_PLUGIN_FAILURE", methodname, e.__class__.__name__, str(e)]))
    else:
        print(failure_message(["UNKNOWN_XENAPI_PLUGIN_FUNCTION", methodname]))
