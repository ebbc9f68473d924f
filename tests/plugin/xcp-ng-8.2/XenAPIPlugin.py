"""Test stand-in for XCP-ng 8.2's ``XenAPIPlugin`` module (xapi 1.249, Python 2 only), which ships
with xapi and is not on PyPI. Its dispatch, Failure and session behave as in ``../XenAPIPlugin.py``
(the module of xapi >= 24); what differs is what importing it takes:

* it imports ``XenAPI`` and ``six`` (``six.moves.xmlrpc_client``), so a python2 without them cannot
  import it. The suite installs both from PyPI for CPython 2.7 (``../requirements-py27.txt``)
  into a directory it puts on this interpreter's PYTHONPATH;
* it is Python 2 only. On 8.2 it lives in python2's site-packages, which no python3 reads; here one
  PYTHONPATH may reach both interpreters, so under Python 3 the import raises the ImportError
  python3 gives on 8.2 (an emulation of where the file is installed).

The plugin suite puts this directory on the plugin's ``PYTHONPATH`` for CPython 2.7.
"""

from __future__ import print_function

import sys

if sys.version_info[0] != 2:
    raise ImportError("No module named XenAPIPlugin (XCP-ng 8.2 installs it for Python 2 only)")

import XenAPI  # noqa: F401,E402 - the real module hands XenAPI.xapi_local() to the functions
import six.moves.xmlrpc_client as xmlrpclib  # noqa: E402


class Failure(Exception):
    """Compatibility with plugins written against the XenServer 5.5 API."""

    def __init__(self, code, params):
        Exception.__init__(self)
        self.params = [code] + params

    def __str__(self):
        return str(self.params)


class SessionUsed(BaseException):
    """A plugin used its session for something other than ``_session``: an XML-RPC call to xapi."""


class LocalSession:  # an old-style class, as xmlrpclib.ServerProxy (and so XenAPI.Session) on Python 2
    """``XenAPI.xapi_local()`` with ``_session`` set: every other use, bool() and == included,
    would call xapi."""

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
