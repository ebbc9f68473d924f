"""xapi's ``get_all_records_where`` expression language (the subset xapi's db_filter has).

Grammar (``not`` binds tighter than ``and``, which binds tighter than ``or``)::

    expr    := or
    or      := and ("or" and)*
    and     := unary ("and" unary)*
    unary   := "not" unary | atom
    atom    := "(" expr ")" | "true" | "false" | operand "=" operand
    operand := "field" STRING | STRING

STRING is double-quoted; ``\\"`` and ``\\\\`` are escapes. Comparison is on the database's
string form of a field: booleans are ``"true"``/``"false"``, enums as spelled by xapi
(``"Running"``), refs as ``OpaqueRef:…``.
"""

from xapi_sim.errors import XapiError


class FilterSyntaxError(ValueError):
    pass


class UnknownField(KeyError):
    pass


_KEYWORDS = ("field", "and", "or", "not", "true", "false")


def tokenize(text):
    tokens = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "()=":
            tokens.append((c, c, i))
            i += 1
        elif c == '"':
            j = i + 1
            buf = []
            while True:
                if j >= n:
                    raise FilterSyntaxError("unterminated string at offset %d" % i)
                ch = text[j]
                if ch == "\\" and j + 1 < n:
                    buf.append(text[j + 1])
                    j += 2
                elif ch == '"':
                    j += 1
                    break
                else:
                    buf.append(ch)
                    j += 1
            tokens.append(("str", "".join(buf), i))
            i = j
        elif c.isalpha():
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if word not in _KEYWORDS:
                raise FilterSyntaxError("unexpected word %r at offset %d" % (word, i))
            tokens.append((word, word, i))
            i = j
        else:
            raise FilterSyntaxError("unexpected character %r at offset %d" % (c, i))
    tokens.append(("eof", None, n))
    return tokens


class _Parser(object):
    def __init__(self, text):
        self.tokens = tokenize(text)
        self.pos = 0

    def peek(self):
        return self.tokens[self.pos][0]

    def take(self, kind):
        tok = self.tokens[self.pos]
        if tok[0] != kind:
            raise FilterSyntaxError(
                "expected %s at offset %d, found %s" % (kind, tok[2], tok[1] if tok[1] is not None else "end")
            )
        self.pos += 1
        return tok[1]

    def parse(self):
        node = self.parse_or()
        self.take("eof")
        return node

    def parse_or(self):
        node = self.parse_and()
        while self.peek() == "or":
            self.take("or")
            node = ("or", node, self.parse_and())
        return node

    def parse_and(self):
        node = self.parse_unary()
        while self.peek() == "and":
            self.take("and")
            node = ("and", node, self.parse_unary())
        return node

    def parse_unary(self):
        if self.peek() == "not":
            self.take("not")
            return ("not", self.parse_unary())
        return self.parse_atom()

    def parse_atom(self):
        kind = self.peek()
        if kind == "(":
            self.take("(")
            node = self.parse_or()
            self.take(")")
            return node
        if kind == "true":
            self.take("true")
            return ("const", True)
        if kind == "false":
            self.take("false")
            return ("const", False)
        left = self.parse_operand()
        self.take("=")
        right = self.parse_operand()
        return ("eq", left, right)

    def parse_operand(self):
        if self.peek() == "field":
            self.take("field")
            return ("field", self.take("str"))
        return ("lit", self.take("str"))


def parse(text):
    """Parse an expression into a small tuple tree; raises FilterSyntaxError."""
    if not isinstance(text, str):
        raise FilterSyntaxError("expression must be a string")
    return _Parser(text).parse()


def db_string(value):
    """The string form xapi's database holds for a field value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        return "(" + "".join("('%s' '%s')" % (k, db_string(v)) for k, v in value.items()) + ")"
    if isinstance(value, (list, tuple)):
        return "(" + " ".join("'%s'" % db_string(v) for v in value) + ")"
    if value is None:
        return ""
    return str(value)


def evaluate(node, record):
    kind = node[0]
    if kind == "const":
        return node[1]
    if kind == "not":
        return not evaluate(node[1], record)
    if kind == "and":
        return evaluate(node[1], record) and evaluate(node[2], record)
    if kind == "or":
        return evaluate(node[1], record) or evaluate(node[2], record)
    if kind == "eq":
        return _operand(node[1], record) == _operand(node[2], record)
    raise AssertionError(kind)


def _operand(node, record):
    if node[0] == "lit":
        return node[1]
    name = node[1]
    if name not in record:
        raise UnknownField(name)
    return db_string(record[name])


def compile_filter(text):
    """Parse ``text``; return a predicate over records. Errors become XapiError."""
    try:
        tree = parse(text)
    except FilterSyntaxError as e:
        raise XapiError("INTERNAL_ERROR", ["Db_filter.Expression_error: %s" % e, text])

    def predicate(record):
        try:
            return evaluate(tree, record)
        except UnknownField as e:
            raise XapiError("INTERNAL_ERROR", ["Db_exn.DBCache_NotFound: missing field", e.args[0]])

    return predicate
