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


def _to_str(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
