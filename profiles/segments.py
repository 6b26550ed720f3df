"""Segments: audiences defined in CEL over the exported profile and ``now``.

A definition is a CEL expression (``where``) that sees ``profile`` — the profile as
``unifier profiles export`` prints it, plus ``profile.segments`` — and ``now``, a
timestamp. This module compiles definitions, refuses the bad ones with the position
and the reason, says which fields each one reads, and keeps a profile's membership:
which segments it is in, since when, and when a time window next changes an answer.

Two CEL packages, each for what it does best (both pinned in pyproject.toml):

* Google's runtime (``cel_expr_python``, C++) parses, type-checks and evaluates.
* cel-python's parser (``celpy``) gives the syntax tree with source positions, from
  which we read the fields an expression reads and its comparisons with ``now``.

**Type checking.** Traits are open-ended (whatever sources send), so the profile is a
map of dynamic values at run time. To check types before a definition is applied,
each ``profile.<part>.<name>`` in the text is replaced by a variable of the same
length declared with that field's type, and the result is checked: positions in the
checker's messages are positions in the definition.

**Time windows.** ``now`` may appear only as ``now``, ``now - duration(...)`` or
``now + duration(...)`` on one side of ``<``, ``<=``, ``>`` or ``>=``. The other side
is a timestamp of the profile: evaluated, it gives the instant the comparison's answer
changes. Each profile keeps the next such instant of each segment (``Entry.due``), and
the stream re-evaluates just the profiles whose instant has passed — never a scan.

**Missing fields.** A profile without a field a definition reads (no
``traits.country``, no ``first_seen`` yet) is not in the segment; that is not an error
(as a NULL in SQL's WHERE). Any other evaluation error (a malformed timestamp, a
division by zero) leaves the membership as it was and is reported (``EvalError``); the
stream dead-letters it.
"""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cel_expr_python import cel
from celpy import celparser
from lark import Tree

from profiles.celfast import (
    Fallback,
    Fn,
    Missing,
    Ts,
    Unsupported,
    _unwrap,
    compile_fast,
    env_at,
    unparse,
)
from profiles.profile import iso
from profiles.standardize import DEFAULT_INDEX, trait_name

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

_T = cel.Type
_STRING_MAP = _T.Map(_T.STRING, _T.STRING)
_COUNT_MAP = _T.Map(_T.STRING, _T.INT)

#: The type of each part of the exported profile (``unifier profiles export``).
TOP_TYPES: dict[str, Any] = {
    "profile_id": _T.STRING,
    "identifiers": _T.Map(_T.STRING, _T.List(_T.STRING)),
    "traits": _T.Map(_T.STRING, _T.DYN),
    "computed": _T.Map(_T.STRING, _T.DYN),
    "segments": _T.List(_T.STRING),
    "version": _T.INT,
}
#: The type of each computed trait. A trait registered without one here is ``dyn``
#: (``tests/unit/test_segments.py`` asks every registered trait to have one).
COMPUTED_TYPES: dict[str, Any] = {
    "event_count": _T.INT,
    "first_seen": _T.STRING,
    "last_seen": _T.STRING,
    "last_channel": _T.STRING,
    "events_by_type": _COUNT_MAP,
    "events_by_source": _COUNT_MAP,
    "orders": _T.INT,
    "lifetime_value": _STRING_MAP,
    "average_order_value": _STRING_MAP,
    "top_categories": _T.List(_T.STRING),
    "last_touchpoints": _T.List(_T.Map(_T.STRING, _T.STRING)),
    "lifecycle_stage": _T.STRING,
    "consent": _T.Map(_T.STRING, _T.Map(_T.STRING, _T.DYN)),
    "merged_from": _T.List(_T.STRING),
    "refused_links": _T.INT,
    "attribution": _T.Map(_T.STRING, _T.DYN),
}
#: Computed maps whose keys a definition can read one at a time
#: (``profile.computed.events_by_type.order_completed``): such a definition is not
#: evaluated again when only other keys changed (a page view changes ``page_viewed``).
KEYED = frozenset({"events_by_type", "events_by_source", "lifetime_value", "average_order_value"})
#: Traits whose values standardization makes strings (``profiles.standardize``).
STRING_TRAITS = frozenset(DEFAULT_INDEX.values()) | {"name", "middle_name", "email", "phone"}

_DYN_ENV = cel.NewEnv(variables={"profile": _T.Map(_T.STRING, _T.DYN), "now": _T.TIMESTAMP})
_CONST_ENV = cel.NewEnv()
_PARSER = celparser.CELParser()
_WHERE = re.compile(r"<input>:(\d+):(\d+): (.*)")
_COMPARISONS = {
    "relation_lt": "<",
    "relation_le": "<=",
    "relation_gt": ">",
    "relation_ge": ">=",
    "relation_eq": "==",
    "relation_ne": "!=",
    "relation_in": "in",
}
_ORDERING = {"relation_lt", "relation_le", "relation_gt", "relation_ge"}
#: Evaluation errors that mean "the profile has no such field (yet)".
_MISSING = ("Key not found in map", "null_type", "No such key")


class SegmentError(ValueError):
    """A definition refused: which segment, where in its expression, and why."""

    def __init__(self, segment: str, reason: str, line: int = 0, column: int = 0) -> None:
        self.segment, self.reason, self.line, self.column = segment, reason, line, column
        where = f" at {line}:{column}" if line else ""
        super().__init__(f"segment {segment!r}{where}: {reason}")


@dataclass(frozen=True)
class Definition:
    """A segment as written (``segments.toml``) and versioned by ``segments apply``."""

    name: str
    where: str
    description: str = ""
    version: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "where": self.where,
            "description": self.description,
            "version": self.version,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Definition:
        return cls(
            str(d["name"]), str(d["where"]), str(d.get("description", "")), int(d["version"])
        )


@dataclass(frozen=True)
class Clock:
    """One comparison with ``now``: the answer changes when ``now + shift`` crosses
    the value of ``other`` (a timestamp of the profile)."""

    text: str
    other: Any  # compiled
    shift_ms: int
    fast: Fn | None = None  # profiles.celfast: the same, as a closure


@dataclass(frozen=True)
class Comparison:
    """One comparison in a definition, for ``segments check``: its text, compiled."""

    text: str
    program: Any


@dataclass(frozen=True)
class Segment:
    definition: Definition
    program: Any
    reads: frozenset[str]  # "traits.country", "computed", "identifiers", "segments"...
    clocks: tuple[Clock, ...]
    comparisons: tuple[Comparison, ...]
    fast: Fn | None = None  # profiles.celfast: the same, as a closure (None: not compiled)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def version(self) -> int:
        return self.definition.version

    @property
    def reads_segments(self) -> bool:
        return "segments" in self.reads


def changed_keys(changed: Iterable[str]) -> frozenset[str]:
    """Changed view fields and the parts they are in (``traits.country`` changes
    ``traits``): a segment that reads any of them is affected. A changed key of a map
    (``computed.events_by_type.signed_in``) does not name its map: the map's own
    change is listed on its own."""
    names = set(changed)
    return frozenset(names | {n.split(".", 1)[0] for n in names})


def keyed_changes(
    changed: list[str], before: Mapping[str, Any], after: Mapping[str, Any],
    deep: Mapping[str, frozenset[str]],
) -> list[str]:  # fmt: skip
    """``changed`` with, for each changed computed map some definition reads by key
    (``deep``: map -> keys read), the keys whose values differ."""
    out = list(changed)
    for name in changed:
        keys = deep.get(name)
        if keys:
            field = name.split(".", 1)[1]
            b = before.get("computed", {}).get(field) or {}
            a = after.get("computed", {}).get(field) or {}
            out += [f"{name}.{k}" for k in keys if b.get(k) != a.get(k)]
    return out


# -- compiling ---------------------------------------------------------------------


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _checked(name: str, env: Any, text: str) -> Any:
    """``env.compile(text)``, or a SegmentError with the checker's first complaint."""
    try:
        return env.compile(text)
    except RuntimeError as exc:
        message = str(exc)
        m = _WHERE.search(message)
        if m is None:
            raise SegmentError(name, message.splitlines()[0]) from None
        reason = m.group(3).strip()
        if reason.startswith("ERROR: "):
            reason = reason[len("ERROR: ") :]
        raise SegmentError(name, reason, int(m.group(1)), int(m.group(2))) from None


def _ident(node: Any) -> str | None:
    node = _unwrap(node)
    if isinstance(node, Tree) and node.data == "ident":
        return str(node.children[0])
    return None


def _idents(node: Any, name: str) -> list[Tree]:
    return [t for t in node.iter_subtrees() if t.data == "ident" and str(t.children[0]) == name]


def _unparse(node: Any) -> str:
    """The text of a subtree (the parser's positions are not reliable inside one)."""
    try:
        return unparse(node)
    except Unsupported as exc:
        raise SegmentError("?", f"not supported here: {exc}") from None


@dataclass
class _Chain:
    """``profile.a.b...``: the names, and where the text of each prefix ends."""

    names: list[str]
    ends: list[int]
    start: int


def _chain(node: Tree) -> _Chain | None:
    """The ``profile.x.y`` select chain ``node`` (a ``member_dot``) is, if it is one."""
    names: list[str] = []
    ends: list[int] = []
    cur: Any = node
    while isinstance(cur, Tree) and cur.data in ("member_dot", "member"):
        if cur.data == "member_dot":
            names.append(str(cur.children[1]))
            ends.append(cur.meta.end_pos)
            cur = cur.children[0]
        elif len(cur.children) == 1:
            cur = cur.children[0]
        else:
            return None
    cur = _unwrap(cur)
    if not (isinstance(cur, Tree) and cur.data == "ident" and str(cur.children[0]) == "profile"):
        return None
    names.reverse()
    ends.reverse()
    return _Chain(names, ends, cur.meta.start_pos)


@dataclass
class _Analysis:
    reads: set[str] = field(default_factory=set)
    # (start, end, type) of the text each variable of the typed check replaces
    replaced: list[tuple[int, int, Any]] = field(default_factory=list)
    chains: set[int] = field(default_factory=set)  # ids of `profile` idents in chains


def _field_type(name: str, chain: _Chain, text: str) -> tuple[int, Any, str]:
    """How much of a chain one typed variable replaces (its end), the type, and the
    field it reads."""
    top = chain.names[0]
    where = _position(text, chain.ends[0] - len(top))
    if top not in TOP_TYPES:
        raise SegmentError(
            name, f"profile has no field {top!r} (it has: {', '.join(TOP_TYPES)})", *where
        )
    if len(chain.names) == 1 or top not in ("traits", "computed", "identifiers"):
        return chain.ends[0], TOP_TYPES[top], top
    sub = chain.names[1]
    where = _position(text, chain.ends[1] - len(sub))
    if top == "computed":
        if sub not in COMPUTED_TYPES:
            raise SegmentError(
                name,
                f"profile.computed has no field {sub!r} "
                f"(it has: {', '.join(sorted(COMPUTED_TYPES))})",
                *where,
            )
        if sub in KEYED and len(chain.names) > 2:  # one key of a count map: read alone
            return chain.ends[1], COMPUTED_TYPES[sub], f"computed.{sub}.{chain.names[2]}"
        return chain.ends[1], COMPUTED_TYPES[sub], f"computed.{sub}"
    if top == "traits":
        canonical = trait_name(sub)
        if canonical != sub:
            raise SegmentError(
                name, f"traits.{sub} is stored as traits.{canonical} (standardized)", *where
            )
        kind = _T.STRING if sub in STRING_TRAITS else _T.DYN
        return chain.ends[1], kind, f"traits.{sub}"
    return chain.ends[1], _T.List(_T.STRING), "identifiers"


def _analyse(name: str, tree: Tree, text: str) -> _Analysis:
    out = _Analysis()
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if not isinstance(node, Tree):
            continue
        if node.data == "ident_arg" and str(node.children[0]) == "has":
            args = node.children[1]
            arg = _unwrap(args.children[0]) if isinstance(args, Tree) and args.children else None
            chain = _chain(arg) if isinstance(arg, Tree) and arg.data == "member_dot" else None
            if chain is not None:
                # has() needs a select: the check sees a bool of the same length.
                _, _, read = _field_type(name, chain, text)
                out.reads.add(read)
                opened = text.rfind("has", 0, chain.start)
                close = text.index(")", chain.ends[-1])
                out.replaced.append((opened, close + 1, _T.BOOL))
                continue
        if node.data == "member_dot":
            chain = _chain(node)
            if chain is not None:
                end, kind, read = _field_type(name, chain, text)
                out.reads.add(read)
                out.replaced.append((chain.start, end, kind))
                continue
        if node.data == "ident" and str(node.children[0]) == "profile":
            raise SegmentError(
                name,
                "use a field of profile (such as profile.traits.country), not profile itself",
                *_position(text, node.meta.start_pos),
            )
        stack.extend(node.children)
    return out


def _typed_text(text: str, replaced: list[tuple[int, int, Any]]) -> tuple[str, dict[str, Any]]:
    """The definition with each replaced span turned into a variable of its length."""
    variables: dict[str, Any] = {"now": _T.TIMESTAMP}
    out = text
    for i, (start, end, kind) in enumerate(sorted(replaced, reverse=True)):
        var = f"_{i}".ljust(end - start, "_")
        variables[var] = kind
        out = out[:start] + var + out[end:]
    return out, variables


def _shift(name: str, side: Any, text: str) -> int | None:
    """The shift of a ``now``-side (``now`` → 0, ``now - duration("1h")`` → -3600000),
    or None if the side is not of that form."""
    node = _unwrap(side)
    if _ident(node) == "now":
        return 0
    if not (isinstance(node, Tree) and node.data == "addition" and len(node.children) == 2):
        return None
    op, rhs = node.children
    if not (isinstance(op, Tree) and op.data in ("addition_add", "addition_sub")):
        return None
    if _ident(op.children[0]) != "now" or _idents(rhs, "now") or _idents(rhs, "profile"):
        return None
    program = _checked(name, _CONST_ENV, _unparse(rhs))
    value = program.eval().value()
    if not isinstance(value, timedelta):
        return None
    ms = round(value / timedelta(milliseconds=1))
    return ms if op.data == "addition_add" else -ms


def _clocks(name: str, tree: Tree, text: str) -> tuple[list[Clock], list[Comparison]]:
    clocks: list[Clock] = []
    comparisons: list[Comparison] = []
    used: set[int] = set()
    for node in tree.iter_subtrees_topdown():
        if node.data != "relation" or len(node.children) != 2:
            continue
        op, right = node.children
        if not (isinstance(op, Tree) and op.data in _COMPARISONS):
            continue
        left = op.children[0]
        shown = _unparse(node)
        # one inside a macro, over its variable, has no value of its own to show
        with contextlib.suppress(SegmentError):
            comparisons.append(Comparison(shown, _checked(name, _DYN_ENV, shown)))
        if op.data not in _ORDERING:
            continue
        for now_side, other in ((left, right), (right, left)):
            if not _idents(now_side, "now") or _idents(other, "now"):
                continue
            shift = _shift(name, now_side, text)
            if shift is None:
                continue
            shown = _unparse(other)
            program = _checked(name, _DYN_ENV, shown)
            clocks.append(Clock(shown, program, shift, compile_fast(other, text)))
            used.update(id(t) for t in _idents(now_side, "now"))
    for ident in _idents(tree, "now"):
        if id(ident) not in used:
            raise SegmentError(
                name,
                "now can only be compared (<, <=, >, >=) with a timestamp of the profile, "
                'as now, now - duration("...") or now + duration("...")',
                *_position(text, ident.meta.start_pos),
            )
    return clocks, comparisons


def compile_segment(definition: Definition) -> Segment:
    """The compiled segment, or a SegmentError naming the segment, the position (line
    and column of the expression) and the reason."""
    name, text = definition.name, definition.where
    if not NAME.match(name):
        raise SegmentError(name, "a segment name is lower-case letters, digits and _ (≤ 64)")
    if not text.strip():
        raise SegmentError(name, "`where` is empty")
    program = _checked(name, _DYN_ENV, text)  # syntax, and names other than profile/now
    try:
        tree = _PARSER.parse(text)
    except Exception as exc:  # celpy refuses what Google's parser took: say so
        raise SegmentError(name, f"not supported here: {str(exc).splitlines()[0]}") from None
    analysis = _analyse(name, tree, text)
    typed, variables = _typed_text(text, analysis.replaced)
    checked = _checked(name, cel.NewEnv(variables=variables), typed)
    returns = checked.return_type()
    if returns != _T.BOOL:
        raise SegmentError(
            name, f"the expression gives {returns.name().lower()}, not a bool (true/false)", 1, 1
        )
    clocks, comparisons = _clocks(name, tree, text)
    return Segment(
        definition,
        program,
        frozenset(analysis.reads),
        tuple(clocks),
        tuple(comparisons),
        compile_fast(tree, text),
    )


def load_definitions(path: Path) -> list[Definition]:
    """``[segments.NAME] where = "..." description = "..."`` from a TOML file, unversioned
    (``version`` 0: ``segments apply`` numbers them)."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    unknown = sorted(set(doc) - {"segments"})
    if unknown:
        raise ValueError(
            f"{path}: unknown table(s) {', '.join(unknown)} (expected [segments.NAME])"
        )
    out = []
    for name, body in (doc.get("segments") or {}).items():
        if not isinstance(body, dict):
            raise ValueError(f"{path}: segments.{name} is not a table")
        extra = sorted(set(body) - {"where", "description"})
        if extra:
            raise ValueError(f"{path}: segments.{name}: unknown key(s) {', '.join(extra)}")
        if not isinstance(body.get("where"), str):
            raise ValueError(f"{path}: segments.{name}: `where` (a CEL expression) is missing")
        out.append(Definition(name, body["where"], str(body.get("description", "")), 0))
    return out


@dataclass(frozen=True)
class Catalog:
    """The segments in force, in evaluation order: segments that read
    ``profile.segments`` come after the others and see their membership (not each
    other's)."""

    segments: tuple[Segment, ...] = ()
    by_name: dict[str, Segment] = field(default_factory=dict, compare=False)
    # what a field change makes due: read key -> names of the segments reading it
    readers: dict[str, frozenset[str]] = field(default_factory=dict, compare=False)
    later: tuple[Segment, ...] = field(default=(), compare=False)  # read profile.segments
    reads: frozenset[str] = field(default=frozenset(), compare=False)  # of them all
    versions_items: tuple[tuple[str, int], ...] = field(default=(), compare=False)
    # "computed.<map>" -> the keys of it some definition reads alone (KEYED)
    deep: dict[str, frozenset[str]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.by_name.update((s.name, s) for s in self.segments)
        readers: dict[str, set[str]] = {}
        for s in self.segments:
            for r in s.reads:
                readers.setdefault(r, set()).add(s.name)
        self.readers.update((k, frozenset(v)) for k, v in readers.items())
        object.__setattr__(self, "later", tuple(s for s in self.segments if s.reads_segments))
        object.__setattr__(self, "reads", frozenset().union(*(s.reads for s in self.segments)))
        items = tuple((s.name, s.version) for s in self.segments)
        object.__setattr__(self, "versions_items", items)
        deep: dict[str, set[str]] = {}
        for r in self.reads:
            parts = r.split(".")
            if len(parts) == 3:
                deep.setdefault(f"{parts[0]}.{parts[1]}", set()).add(parts[2])
        self.deep.update((k, frozenset(v)) for k, v in deep.items())

    def due(
        self, entries: Mapping[str, Entry], now_ms: int, changed: Iterable[str] | None
    ) -> set[str]:
        """The segments to evaluate for a profile: all (``changed`` None), those new or
        changed since it was evaluated, those whose window's instant has passed, and
        those reading a field that changed."""
        if changed is None:
            return set(self.by_name)
        names: set[str] = set()
        for key in changed_keys(changed):
            found = self.readers.get(key)
            if found:
                names |= found
        for name, version in self.versions_items:
            entry = entries.get(name)
            if entry is None or entry[1] != version or 0 < entry[4] <= now_ms:  # VERSION, DUE
                names.add(name)
        return names

    @classmethod
    def of(cls, definitions: Iterable[Definition]) -> Catalog:
        compiled = [compile_segment(d) for d in sorted(definitions, key=lambda d: d.name)]
        return cls(tuple(sorted(compiled, key=lambda s: (s.reads_segments, s.name))))

    def __len__(self) -> int:
        return len(self.segments)

    def get(self, name: str) -> Segment | None:
        return self.by_name.get(name)

    @property
    def versions(self) -> dict[str, int]:
        return {s.name: s.version for s in self.segments}


# -- evaluating --------------------------------------------------------------------


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_time(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)  # exact (a float division is not)


def _ms(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Outcome:
    member: bool | None  # None: an error other than a missing field (keep as it was)
    error: str | None = None


_IN, _OUT = Outcome(True), Outcome(False)


def _outcome(value: Any) -> Outcome:
    answer = value.value()
    if answer is True or answer is False:  # the common case, without asking the type
        return _IN if answer else _OUT
    kind = value.type()
    message = str(value.value()) if kind == _T.ERROR else f"gave {kind.name().lower()}"
    if any(m in message for m in _MISSING):
        return Outcome(False)
    return Outcome(None, message)


class Context:
    """One profile's document at one instant, as both evaluators take it: the
    closures read ``doc`` and ``env``; Google's runtime an activation, made only if
    one of them falls back to it."""

    __slots__ = ("_act", "doc", "env", "now_ms", "reads")

    def __init__(
        self, doc: Mapping[str, Any], now_ms: int, reads: Iterable[str] | None = None
    ) -> None:
        self.doc, self.now_ms, self.reads = doc, now_ms, reads
        self.env = env_at(now_ms)
        self._act: Any = None

    @property
    def act(self) -> Any:
        """Google's activation: of the parts of the document read (``reads``), as
        converting the whole profile costs more."""
        if self._act is None:
            self._act = activation(document(self.doc, self.reads), self.now_ms)
        return self._act


def evaluate(segment: Segment, ctx: Context) -> Outcome:
    if segment.fast is not None:
        try:
            answer = segment.fast(ctx.doc, ctx.env)
        except Missing:
            return _OUT
        except Fallback:
            pass  # CEL's own answer, below
        else:
            if answer is True or answer is False:
                return _IN if answer else _OUT
    return _outcome(segment.program.eval(ctx.act))


def _clock_ms(clock: Clock, ctx: Context) -> int | None:
    """The value of a clock's timestamp (ms), or None when the profile has none."""
    if clock.fast is not None:
        try:
            value = clock.fast(ctx.doc, ctx.env)
        except Missing:
            return None
        except Fallback:
            pass
        else:
            if type(value) is Ts:
                return int(value) // 1000
    found = clock.other.eval(ctx.act)
    if found.type() != _T.TIMESTAMP:
        return None  # a missing or malformed field: no window to wait for
    return _ms(found.value())


def due_of(segment: Segment, ctx: Context, now_ms: int) -> int:
    """The first instant after ``now_ms`` at which one of the segment's comparisons
    with ``now`` can change its answer (0: none ahead)."""
    due = 0
    for clock in segment.clocks:
        x_ms = _clock_ms(clock, ctx)
        if x_ms is None:
            continue
        at = x_ms - clock.shift_ms + 1  # just past the boundary
        if at > now_ms and (due == 0 or at < due):
            due = at
    return due


def document(view: Mapping[str, Any], reads: Iterable[str] | None = None) -> dict[str, Any]:
    """What ``profile`` is for the expressions: the view's parts they read (all of it
    when ``reads`` is None): smaller documents cost less to hand to CEL."""
    if reads is None:
        return {k: view[k] for k in TOP_TYPES if k in view}
    reads = set(reads)
    whole = {r for r in reads if "." not in r}
    doc: dict[str, Any] = {top: view[top] for top in whole if top in view}
    for read in reads - whole:
        top, sub = read.split(".")[:2]
        if top in whole or top not in view:
            continue
        part = doc.setdefault(top, {})
        if sub in view[top]:
            part[sub] = view[top][sub]
    return doc


def activation(doc: Mapping[str, Any], now_ms: int) -> Any:
    return _DYN_ENV.Activation({"profile": doc, "now": to_time(now_ms)})


# -- membership --------------------------------------------------------------------

#: A profile's membership of one segment: [member (0/1), definition version,
#: transitions so far, since (ms: last transition), due (ms; 0: no window ahead)].
Entry = list[int]
MEMBER, VERSION, SEQ, SINCE, DUE = range(5)


@dataclass(frozen=True, slots=True)
class Transition:
    """A profile entered or left a segment (one ``segment-membership`` record)."""

    profile_id: str
    segment: str
    entered: bool
    at_ms: int
    definition_version: int
    profile_version: int
    seq: int  # the n-th transition of this profile in this segment: names a duplicate


@dataclass(frozen=True, slots=True)
class EvalError:
    profile_id: str
    segment: str
    definition_version: int
    reason: str


def members_of(entries: Mapping[str, Entry]) -> list[str]:
    return sorted(name for name, e in entries.items() if e[MEMBER])


def next_due(entries: Mapping[str, Entry]) -> int:
    dues = [e[DUE] for e in entries.values() if e[DUE]]
    return min(dues) if dues else 0


def _move(
    profile_id: str, entries: dict[str, Entry], name: str, version: int, member: bool,
    now_ms: int, profile_version: int,
) -> Transition | None:  # fmt: skip
    entry = entries.get(name)
    if entry is None:
        entry = entries[name] = [0, version, 0, 0, 0]
    entry[VERSION] = version
    if bool(entry[MEMBER]) == member:
        return None
    entry[MEMBER] = int(member)
    entry[SEQ] += 1
    entry[SINCE] = now_ms
    return Transition(profile_id, name, member, now_ms, version, profile_version, entry[SEQ])


def reconcile(
    profile_id: str,
    view: Mapping[str, Any],
    entries: dict[str, Entry],
    catalog: Catalog,
    now_ms: int,
    changed: Iterable[str] | None = None,
) -> tuple[list[Transition], list[EvalError]]:
    """Bring one live profile's membership (``entries``, changed in place) up to date
    with its view, the catalog and the clock; the transitions this makes.

    A segment is evaluated when it is new or changed (its version), when a field it
    reads changed (``changed``; None: evaluate all), or when its window's instant
    (``DUE``) has passed. Segments no longer in the catalog are left (an exit)."""
    transitions: list[Transition] = []
    errors: list[EvalError] = []
    version = int(view.get("version", 0))
    by_name = catalog.by_name
    for name in [n for n in entries if n not in by_name]:
        t = _move(profile_id, entries, name, entries[name][VERSION], False, now_ms, version)
        if t is not None:
            transitions.append(t)
        del entries[name]
    names = catalog.due(entries, now_ms, changed)
    if not names:
        return transitions, errors
    first = [s for s in catalog.segments if s.name in names and not s.reads_segments]
    if first:  # the closures read the view as it is; Google's runtime a copy of it
        ctx = Context(view, now_ms, catalog.reads)
        for seg in first:
            _evaluate_into(profile_id, seg, ctx, entries, now_ms, version, transitions, errors)
    moved = bool(transitions)  # a first-order membership changed: later ones may too
    second = [s for s in catalog.later if moved or s.name in names]
    if second:
        seen = [n for n in members_of(entries) if not _reads_segments(catalog, n)]
        ctx = Context({**view, "segments": seen}, now_ms, catalog.reads)
        for seg in second:
            _evaluate_into(profile_id, seg, ctx, entries, now_ms, version, transitions, errors)
    return transitions, errors


def _reads_segments(catalog: Catalog, name: str) -> bool:
    seg = catalog.get(name)
    return seg is not None and seg.reads_segments


def _evaluate_into(
    profile_id: str, seg: Segment, ctx: Context, entries: dict[str, Entry], now_ms: int,
    version: int, transitions: list[Transition], errors: list[EvalError],
) -> None:  # fmt: skip
    name, seg_version = seg.name, seg.version
    outcome = evaluate(seg, ctx)
    member = outcome.member
    entry = entries.get(name)
    if entry is None:
        entry = entries[name] = [0, seg_version, 0, 0, 0]
    entry[1] = seg_version  # VERSION
    if member is None:
        errors.append(EvalError(profile_id, name, seg_version, outcome.error or ""))
        entry[4] = 0  # DUE
        return
    if bool(entry[0]) != member:  # MEMBER: a transition
        entry[0] = int(member)
        entry[2] += 1  # SEQ
        entry[3] = now_ms  # SINCE
        transitions.append(
            Transition(profile_id, name, member, now_ms, seg_version, version, entry[2])
        )
    entry[4] = due_of(seg, ctx, now_ms) if seg.clocks else 0


def retire(
    profile_id: str, entries: dict[str, Entry], now_ms: int, profile_version: int
) -> list[Transition]:
    """A profile merged away (or erased) leaves every segment it was in."""
    out = []
    for name in list(entries):
        t = _move(profile_id, entries, name, entries[name][VERSION], False, now_ms, profile_version)
        if t is not None:
            out.append(t)
    entries.clear()
    return out


def explain(segment: Segment, view: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    """``segments check``: the answer for one profile, and the value of each comparison
    (``true``/``false``, or why it has none)."""
    ctx = Context(document(view), now_ms)
    act = ctx.act
    outcome = evaluate(segment, ctx)
    parts = []
    for c in segment.comparisons:
        value = c.program.eval(act)
        kind = value.type()
        shown = value.value() if kind != _T.ERROR else f"error: {value.value()}"
        parts.append({"comparison": c.text, "value": shown})
    due = due_of(segment, ctx, now_ms) if segment.clocks else 0
    return {
        "segment": segment.name,
        "member": bool(outcome.member),
        "error": outcome.error,
        "comparisons": parts,
        "changes_at": iso(due) if due else None,
    }
