"""The one error type of the simulator: an XAPI failure (code + string params)."""


class XapiError(Exception):
    """An XAPI ``Server_error``: an error code and a list of string parameters.

    On the wire it becomes ``{"Status": "Failure", "ErrorDescription": [code, *params]}``
    (XML-RPC), ``{"code": 1, "message": code, "data": params}`` (JSON-RPC v2) or
    ``[code, *params]`` (JSON-RPC v1).
    """

    def __init__(self, code, params=()):
        Exception.__init__(self, code, list(params))
        self.code = str(code)
        self.params = [p if isinstance(p, str) else _to_str(p) for p in params]

    def __str__(self):
        return "%s %s" % (self.code, self.params)


class DropConnection(Exception):
    """Not an XAPI error: the server closes the connection without answering (fault injection).

    ``applied`` says whether the call ran first (a connection lost after xapi did the work) or
    not (lost before xapi saw the request).
    """

    def __init__(self, method, applied):
        Exception.__init__(self, method, applied)
        self.method = method
        self.applied = applied


def _to_str(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
