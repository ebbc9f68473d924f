"""Test stand-in for dom0's ``XenAPIPlugin`` module (shipped with xapi, not on PyPI).

Written from the plugin protocol (xapi's ``xapi_plugins.ml`` and its plugin documentation), for
Python 2.7 and 3.x, standard library only:

* xapi execs the plugin with one argument, an XML-RPC ``methodCall`` whose method name is the
  function and whose params are ``(session_ref, {str: str})``;
* ``dispatch(fn_table)`` calls ``fn_table[method](session, args)`` where ``session`` is a local
  XenAPI session object carrying the ref in ``_session`` (as ``XenAPI.xapi_local()`` is on dom0);
* it prints one XML-RPC ``methodResponse`` on stdout:
  ``{"Status": "Success", "Value": result}``, or
  ``{"Status": "Failure", "ErrorDescription": [code] + params}`` for ``Failure(code, params)``,
  ``["XENAPI_PLUGIN_FAILURE", fn, exception class, str(exception)]`` for any other exception, and
  ``["UNKNOWN_XENAPI_PLUGIN_FUNCTION", fn]`` for a name not in the table;
* ``SystemExit`` propagates.

The simulator makes it importable by putting this directory on the plugin's ``PYTHONPATH``
(``sim.set_plugin_env``); it is never installed anywhere.
"""

from __future__ import print_function

import sys

try:
    import xmlrpclib  # Python 2
except ImportError:  # Python 3
    import xmlrpc.client as xmlrpclib


class Failure(Exception):
    """A plugin error: ``ErrorDescription`` becomes ``[code] + params``."""

    def __init__(self, code, params):
        Exception.__init__(self)
        self.params = [code] + list(params)

    def __str__(self):
        return str(self.params)


class LocalSession(object):
    """What a plugin function gets as ``session``: dom0's local XenAPI session object, reduced to
    the attribute plugins use to pass the session on (``_session``, the ref xapi handed over)."""

    def __init__(self, ref):
        self._session = ref

    def __repr__(self):
        return "LocalSession(%r)" % (self._session,)


def success_message(result):
    return xmlrpclib.dumps(({"Status": "Success", "Value": result},), "", True)


def failure_message(description):
    return xmlrpclib.dumps(({"Status": "Failure", "ErrorDescription": description},), "", True)


def dispatch(fn_table):
    if len(sys.argv) != 2:
        raise Exception("Incorrect number of commandline arguments")
    params, methodname = xmlrpclib.loads(sys.argv[1])
    session_ref, args = params[0], params[1]
    if methodname not in fn_table:
        print(failure_message(["UNKNOWN_XENAPI_PLUGIN_FUNCTION", methodname]))
        return
    session = LocalSession(session_ref)
    try:
        result = fn_table[methodname](session, args)
        print(success_message(result))
    except SystemExit:
        raise
    except Failure as e:
        print(failure_message(e.params))
    except Exception as e:  # noqa: BLE001 - as dom0's module does
        print(failure_message(["XENAPI_PLUGIN_FAILURE", methodname, e.__class__.__name__, str(e)]))
