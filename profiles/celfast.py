"""A fast path for the CEL that segment definitions are written in: the syntax tree
(cel-python's parser) compiled into Python closures over the profile document.

Google's runtime (``cel_expr_python``) stays the authority. It costs ~5 µs a call
through its bindings plus the conversion of the document, which 20 segments a touch
cannot afford. These closures answer the common case in well under a microsecond
each, and give up — ``Fallback`` — on anything whose CEL semantics they do not copy
exactly (a type error, an overflow, a division by zero, a null where a value is
needed, a regular expression, unsigned ints, bytes...): the caller then asks Google's
runtime, so an answer is always CEL's. A field the profile lacks raises ``Missing``,
which CEL's ``&&``, ``||`` and macros absorb as its errors are absorbed; at the top
it means "not in the segment", as it does for Google's ``Key not found`` errors.
``tests/unit/test_celfast.py`` checks the two agree on random profiles.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from cel_expr_python import cel
from lark import Token, Tree

Fn = Callable[[Any, "Env"], Any]
_CONST = cel.NewEnv()
_INT64 = (-(2**63), 2**63 - 1)


class Missing(Exception):
    """A field the profile does not have (CEL: no such key)."""


class Fallback(Exception):
    """Something these closures do not answer exactly: ask Google's runtime."""


class Unsupported(Exception):
    """An expression with a construct the fast path does not compile."""


class Ts(int):
    """A timestamp, in microseconds since the epoch."""

    __slots__ = ()


class Dur(int):
    """A duration, in microseconds."""

    __slots__ = ()


Env = dict[str, Any]  # "now" and macro variables


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=65536)
def timestamp_of(text: str) -> Ts:
    """An RFC 3339 timestamp (as CEL's ``timestamp()`` reads it) in µs."""
    if not _RFC3339.match(text):
        raise Fallback  # more digits, or not a timestamp: CEL says which
    try:
        t = datetime.fromisoformat(text)
    except ValueError:  # month 13, hour 99: CEL's own error
        raise Fallback from None
    return Ts((t - _EPOCH) // timedelta(microseconds=1))


def _num(v: Any) -> bool:
    t = type(v)
    return t is int or t is float


def _eq(a: Any, b: Any) -> bool:
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is list or ta is dict:
            raise Fallback  # element-wise CEL equality: not copied here
        return bool(a == b)
    if _num(a) and _num(b):
        return bool(a == b)
    if ta in (Ts, Dur) or tb in (Ts, Dur) or ta in (list, dict) or tb in (list, dict):
        raise Fallback
    return False  # different kinds (null included): not equal, as CEL says


def _order(a: Any, b: Any) -> tuple[Any, Any]:
    ta, tb = type(a), type(b)
    if ta is tb and ta in (int, float, str, bool, Ts, Dur):
        return a, b
    if _num(a) and _num(b):
        return a, b
    raise Fallback  # no such overload (or a null): CEL's error says which


def _int(v: int) -> int:
    if not _INT64[0] <= v <= _INT64[1]:
        raise Fallback  # overflow
    return v


def _add(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if ta is tb and ta in (float, str, list):
        return a + b
    if ta is int and tb is int:
        return _int(a + b)
    if (ta is Ts and tb is Dur) or (ta is Dur and tb is Ts):
        return Ts(int(a) + int(b))
    if ta is Dur and tb is Dur:
        return Dur(int(a) + int(b))
    raise Fallback


def _sub(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if ta is float and tb is float:
        return a - b
    if ta is int and tb is int:
        return _int(a - b)
    if ta is Ts and tb is Dur:
        return Ts(int(a) - int(b))
    if ta is Ts and tb is Ts:
        return Dur(int(a) - int(b))
    if ta is Dur and tb is Dur:
        return Dur(int(a) - int(b))
    raise Fallback


def _mul(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if ta is float and tb is float:
        return a * b
    if ta is int and tb is int:
        return _int(a * b)
    raise Fallback


def _div(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if ta is float and tb is float:
        if b == 0:
            raise Fallback
        return a / b
    if ta is int and tb is int and b != 0 and not (a == _INT64[0] and b == -1):
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b > 0) else -q  # toward zero
    raise Fallback


def _mod(a: Any, b: Any) -> Any:
    if type(a) is int and type(b) is int and b != 0:
        r = abs(a) % abs(b)
        return r if a >= 0 else -r  # the dividend's sign
    raise Fallback


_RELATIONS: dict[str, Callable[[Any, Any], bool]] = {
    "relation_eq": _eq,
    "relation_ne": lambda a, b: not _eq(a, b),
    "relation_lt": lambda a, b: operator.lt(*_order(a, b)),
    "relation_le": lambda a, b: operator.le(*_order(a, b)),
    "relation_gt": lambda a, b: operator.gt(*_order(a, b)),
    "relation_ge": lambda a, b: operator.ge(*_order(a, b)),
}
_ARITH = {
    "addition_add": _add,
    "addition_sub": _sub,
    "multiplication_mul": _mul,
    "multiplication_div": _div,
    "multiplication_mod": _mod,
}


def _in(a: Any, b: Any) -> bool:
    if type(b) is list:
        return any(_eq(a, x) for x in b)
    if type(b) is dict:
        if type(a) is not str:
            raise Fallback
        return a in b
    raise Fallback


def _bool(v: Any) -> bool:
    if v is True or v is False:
        return v
    raise Fallback  # no such overload: CEL's error


def _worse(a: Exception, b: Exception) -> Exception:
    """Of two errors, the one to raise: CEL's own (Fallback) if either is one."""
    return a if isinstance(a, Fallback) else b


def _logic(absorbing: bool) -> Callable[[Fn, Fn], Fn]:
    """``&&`` (false absorbs) or ``||`` (true absorbs): commutative over errors, as CEL
    is — a side that errs is absorbed by the other side's absorbing answer."""

    def build(left: Fn, right: Fn) -> Fn:
        def f(doc: dict[str, Any], env: Env) -> bool:
            try:
                a = _bool(left(doc, env))
            except (Missing, Fallback) as exc:
                try:
                    b = _bool(right(doc, env))
                except (Missing, Fallback) as other:
                    raise _worse(exc, other) from None
                if b is absorbing:
                    return b
                raise exc from None
            if a is absorbing:
                return a
            return _bool(right(doc, env))

        return f

    return build


_and, _or = _logic(False), _logic(True)


def _select(obj: Fn, name: str) -> Fn:
    def f(doc: dict[str, Any], env: Env) -> Any:
        o = obj(doc, env)
        if type(o) is not dict:
            raise Fallback  # a select on a non-map: CEL's error
        try:
            return o[name]
        except KeyError:
            raise Missing from None

    return f


def _index(obj: Fn, key: Fn) -> Fn:
    def f(doc: dict[str, Any], env: Env) -> Any:
        o, k = obj(doc, env), key(doc, env)
        if type(o) is dict and type(k) is str:
            try:
                return o[k]
            except KeyError:
                raise Missing from None
        if type(o) is list and type(k) is int and 0 <= k < len(o):
            return o[k]
        raise Fallback

    return f


def _has(obj: Fn, name: str) -> Fn:
    def f(doc: dict[str, Any], env: Env) -> bool:
        o = obj(doc, env)
        if type(o) is not dict:
            raise Fallback
        return name in o

    return f


def _size(v: Any) -> int:
    if type(v) in (str, list, dict):
        return len(v)
    raise Fallback


def _string_method(name: str) -> Callable[[Any, Any], bool]:
    def method(s: Any, arg: Any) -> bool:
        if type(s) is not str or type(arg) is not str:
            raise Fallback
        return bool(getattr(s, name)(arg))

    return method


def _contains(s: Any, a: Any) -> bool:
    if type(s) is not str or type(a) is not str:
        raise Fallback
    return a in s


_METHODS: dict[str, Callable[[Any, Any], bool]] = {
    "startsWith": _string_method("startswith"),
    "endsWith": _string_method("endswith"),
    "contains": _contains,
}


def _negate(v: Any) -> Any:
    if type(v) is int:
        return _sub(0, v)
    if type(v) is float:
        return -v
    raise Fallback


def _macro(kind: str, target: Fn, var: str, body: Fn) -> Fn:
    def f(doc: dict[str, Any], env: Env) -> bool:
        items = target(doc, env)
        if type(items) is dict:
            items = list(items)
        elif type(items) is not list:
            raise Fallback
        error: Exception | None = None
        for item in items:
            try:
                v = _bool(body(doc, {**env, var: item}))
            except (Missing, Fallback) as exc:
                error = exc if error is None else _worse(error, exc)
                continue
            if kind == "exists" and v:
                return True
            if kind == "all" and not v:
                return False
        if error is not None:
            raise error
        return kind == "all"

    return f


def _literal(token: Token) -> Fn:
    if token.type not in ("INT_LIT", "FLOAT_LIT", "STRING_LIT", "MLSTRING_LIT", "BOOL_LIT",
                          "NULL_LIT"):  # fmt: skip
        raise Unsupported(token.type)
    value = _CONST.compile(str(token)).eval().value()
    if token.type == "FLOAT_LIT":
        value = float(value)
    return lambda doc, env: value


def _const_duration(args: list[Any], text: str) -> Fn:
    """``duration("...")`` of a literal, computed once."""
    value = _CONST.compile(text).eval().value()
    if not isinstance(value, timedelta) or value % timedelta(microseconds=1):
        raise Unsupported("duration")
    d = Dur(value // timedelta(microseconds=1))
    return lambda doc, env: d


def _timestamp(arg: Fn) -> Fn:
    def f(doc: dict[str, Any], env: Env) -> Ts:
        v = arg(doc, env)
        if type(v) is str:
            return timestamp_of(v)
        if type(v) is Ts:
            return v
        if v is None:
            raise Fallback  # timestamp(null): CEL's "no matching overload"
        raise Fallback

    return f


def _conversion(name: str, arg: Fn) -> Fn:
    def to_double(v: Any) -> float:
        t = type(v)
        if t is float:
            return v
        if t is int:
            return float(v)
        if t is str and re.fullmatch(r"-?\d+(\.\d+)?", v):
            return float(v)
        raise Fallback

    def to_int(v: Any) -> int:
        t = type(v)
        if t is int:
            return v
        if t is str and re.fullmatch(r"-?\d{1,18}", v):
            return int(v)
        raise Fallback

    def to_string(v: Any) -> str:
        if type(v) is str:
            return v
        if type(v) is int:
            return str(v)
        raise Fallback

    convert = {"double": to_double, "int": to_int, "string": to_string}[name]
    return lambda doc, env: convert(arg(doc, env))


_SYMBOLS = {
    "relation_lt": "<", "relation_le": "<=", "relation_gt": ">", "relation_ge": ">=",
    "relation_eq": "==", "relation_ne": "!=", "relation_in": "in",
    "addition_add": "+", "addition_sub": "-",
    "multiplication_mul": "*", "multiplication_div": "/", "multiplication_mod": "%",
}  # fmt: skip
_PASS_THROUGH = {
    "expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication",
    "unary", "member", "primary",
}  # fmt: skip


def _args(node: Any) -> str:
    return ", ".join(unparse(c) for c in node.children) if isinstance(node, Tree) else ""


def unparse(node: Any) -> str:  # noqa: PLR0911, PLR0912 - one branch per rule
    """CEL text of a subtree of cel-python's syntax tree (``Unsupported`` for a rule it
    does not know): the parser's positions inside parentheses are not reliable."""
    if isinstance(node, Token):
        return str(node)
    kind, kids = node.data, node.children
    if len(kids) == 1 and kind in _PASS_THROUGH:
        return unparse(kids[0])
    if kind == "expr":
        return f"{unparse(kids[0])} ? {unparse(kids[1])} : {unparse(kids[2])}"
    if kind in ("conditionalor", "conditionaland"):
        op = "||" if kind == "conditionalor" else "&&"
        return f"{unparse(kids[0])} {op} {unparse(kids[1])}"
    if kind in ("relation", "addition", "multiplication"):
        op, right = kids
        return f"{unparse(op.children[0])} {_SYMBOLS[op.data]} {unparse(right)}"
    if kind == "unary":
        return ("!" if kids[0].data == "unary_not" else "-") + unparse(kids[1])
    if kind == "paren_expr":
        return f"({unparse(kids[0])})"
    if kind == "member_dot":
        return f"{unparse(kids[0])}.{kids[1]}"
    if kind == "member_dot_arg":
        args = _args(kids[2]) if len(kids) > 2 else ""
        return f"{unparse(kids[0])}.{kids[1]}({args})"
    if kind == "member_index":
        return f"{unparse(kids[0])}[{unparse(kids[1])}]"
    if kind in ("ident", "literal"):
        return str(kids[0])
    if kind == "ident_arg":
        return f"{kids[0]}({_args(kids[1]) if len(kids) > 1 else ''})"
    if kind == "list_lit":
        return f"[{_args(kids[0]) if kids else ''}]"
    if kind == "map_lit":
        items = kids[0].children if kids and kids[0] is not None else []
        pairs = [f"{unparse(items[i])}: {unparse(items[i + 1])}" for i in range(0, len(items), 2)]
        return "{" + ", ".join(pairs) + "}"
    if kind == "dot_ident":
        return f".{kids[0]}"
    raise Unsupported(kind)


class Compiler:
    def __init__(self, text: str) -> None:
        self.text = text

    def source(self, node: Tree) -> str:
        return unparse(node)

    def compile(self, node: Any) -> Fn:  # noqa: PLR0911, PLR0912 - one branch per rule
        if not isinstance(node, Tree):
            raise Unsupported(repr(node))
        kind, kids = node.data, node.children
        if kind == "expr":
            if len(kids) == 1:
                return self.compile(kids[0])
            cond, yes, no = (self.compile(k) for k in kids)
            return lambda doc, env: yes(doc, env) if _bool(cond(doc, env)) else no(doc, env)
        if kind in ("conditionalor", "conditionaland"):
            if len(kids) == 1:
                return self.compile(kids[0])
            left, right = self.compile(kids[0]), self.compile(kids[1])
            return _or(left, right) if kind == "conditionalor" else _and(left, right)
        if kind in ("relation", "addition", "multiplication"):
            if len(kids) == 1:
                return self.compile(kids[0])
            op, right_node = kids
            left, right = self.compile(op.children[0]), self.compile(right_node)
            if op.data == "relation_in":
                return lambda doc, env: _in(left(doc, env), right(doc, env))
            fn = _RELATIONS.get(op.data) or _ARITH.get(op.data)
            if fn is None:
                raise Unsupported(op.data)
            return lambda doc, env: fn(left(doc, env), right(doc, env))
        if kind == "unary":
            if len(kids) == 1:
                return self.compile(kids[0])
            op, operand = kids[0].data, self.compile(kids[1])
            if op == "unary_not":
                return lambda doc, env: not _bool(operand(doc, env))
            return lambda doc, env: _negate(operand(doc, env))
        if kind in ("member", "primary", "paren_expr"):
            if len(kids) != 1:
                raise Unsupported(kind)
            return self.compile(kids[0])
        if kind == "member_dot":
            return _select(self.compile(kids[0]), str(kids[1]))
        if kind == "member_index":
            return _index(self.compile(kids[0]), self.compile(kids[1]))
        if kind == "member_dot_arg":
            return self.method(kids)
        if kind == "ident":
            name = str(kids[0])
            if name == "profile":
                return lambda doc, env: doc
            return lambda doc, env: _var(env, name)
        if kind == "ident_arg":
            return self.function(node)
        if kind == "literal":
            token = kids[0]
            if not isinstance(token, Token):
                raise Unsupported("literal")
            return _literal(token)
        if kind == "list_lit":
            items = [self.compile(k) for k in (kids[0].children if kids else [])]
            return lambda doc, env: [i(doc, env) for i in items]
        raise Unsupported(kind)

    def method(self, kids: list[Any]) -> Fn:
        target, name = kids[0], str(kids[1])
        args = list(kids[2].children) if len(kids) > 2 and kids[2] is not None else []
        if name in ("exists", "all") and len(args) == 2:
            var = _plain_ident(args[0])
            if var is None:
                raise Unsupported("macro variable")
            return _macro(name, self.compile(target), var, self.compile(args[1]))
        obj = self.compile(target)
        if name == "size" and not args:
            return lambda doc, env: _size(obj(doc, env))
        if name in _METHODS and len(args) == 1:
            method, arg = _METHODS[name], self.compile(args[0])
            return lambda doc, env: method(obj(doc, env), arg(doc, env))
        raise Unsupported(f".{name}()")

    def function(self, node: Tree) -> Fn:
        name = str(node.children[0])
        args = list(node.children[1].children) if len(node.children) > 1 else []
        if name == "has" and len(args) == 1:
            inner = _unwrap(args[0])
            if isinstance(inner, Tree) and inner.data == "member_dot":
                return _has(self.compile(inner.children[0]), str(inner.children[1]))
            raise Unsupported("has")
        if len(args) != 1:
            raise Unsupported(name)
        if name == "duration" and _is_literal(args[0]):
            return _const_duration(args, self.source(node))
        arg = self.compile(args[0])
        if name == "timestamp":
            return _timestamp(arg)
        if name == "size":
            return lambda doc, env: _size(arg(doc, env))
        if name in ("double", "int", "string"):
            return _conversion(name, arg)
        raise Unsupported(f"{name}()")


def _var(env: Env, name: str) -> Any:
    try:
        return env[name]
    except KeyError:
        raise Fallback from None


def _unwrap(node: Any) -> Any:
    """The node under rules that only pass one child on (and parentheses)."""
    while (
        isinstance(node, Tree)
        and len(node.children) == 1
        and isinstance(node.children[0], Tree)
        and (node.data in _PASS_THROUGH or node.data == "paren_expr")
    ):
        node = node.children[0]
    return node


def _plain_ident(node: Any) -> str | None:
    node = _unwrap(node)
    if isinstance(node, Tree) and node.data == "ident":
        return str(node.children[0])
    return None


def _is_literal(node: Any) -> bool:
    node = _unwrap(node)
    return isinstance(node, Tree) and node.data == "literal"


def compile_fast(tree: Tree, text: str) -> Fn | None:
    """The closure of an expression, or None when it uses what the fast path does not
    compile (Google's runtime then evaluates it every time)."""
    try:
        return Compiler(text).compile(tree)
    except (Unsupported, RuntimeError):
        return None


def env_at(now_ms: int) -> Env:
    return {"now": Ts(now_ms * 1000)}
