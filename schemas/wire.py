"""The internal wire format: identity-graph messages and table values as JSON (orjson).

Internal topics carry one JSON array of messages per Kafka record; each message is a
small object tagged by ``k``. Table values are one object per identifier or profile.
Only the worker reads and writes these; they are not a public contract.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from profiles.graph.messages import (
    Answer,
    Apply,
    Claim,
    Denied,
    Disown,
    Erase,
    Evaluate,
    Forget,
    Granted,
    Merge,
    Observe,
    Offer,
    ProfileMsg,
    Readdress,
    Release,
    Repoint,
    Spawn,
    Split,
)
from profiles.graph.node import ProfileNode
from profiles.graph.state import UNKNOWN_TIME, ProfileState, Refusal, Reservation
from profiles.ledger import Ledger, facts_from, facts_to
from profiles.totals import Totals


class WireError(ValueError):
    """An internal record that is not a list of graph messages."""


def _state_parts(s: ProfileState) -> dict[str, Any]:
    """What a state holds besides its event hashes and ledger."""
    return {
        "h": sorted(s.held),
        "t": s.totals.to_wire(),
        "rf": sorted([r.event_id, r.ident, r.other, r.rule] for r in s.refused),
        "lk": {k: list(v) for k, v in s.linked_by.items()},
        "mg": sorted(list(m) for m in s.merged),
        **(
            {
                "bk": {n: [sorted(a), sorted(b)] for n, (_, a, b) in sorted(s.blocks.items())},
                "sp": sorted(s.splits),
                "bs": s.base,
            }
            if s.splits or s.base
            else {}
        ),
        **({"dg": sorted(list(d) for d in s.dropped)} if s.dropped else {}),
    }


def _state_of(d: dict[str, Any], seen: array[int], ledger: Ledger) -> ProfileState:
    return ProfileState(
        held=set(d["h"]),
        seen=seen,
        totals=Totals.from_wire(d["t"]),
        ledger=ledger,
        refused={Refusal(*r) for r in d["rf"]},
        linked_by={k: (v[0], v[1], v[2]) for k, v in d["lk"].items()},
        merged={(m[0], m[1], m[2]) for m in d["mg"]},
        blocks={n: (n, frozenset(a), frozenset(b)) for n, (a, b) in d.get("bk", {}).items()},
        splits=set(d.get("sp", ())),
        base=d.get("bs", 0),
        dropped={(g[0], g[1]) for g in d.get("dg", ())},
    )


def state_to(s: ProfileState) -> dict[str, Any]:
    """A whole state, ledger included, for a message (a merge's offer): it leaves its
    partition, so nothing may stay behind in a table."""
    full = s.ledger.copy()
    return {
        **_state_parts(s),
        "sn": list(s.seen),
        "lg": [full.chunk(n).decode() for n in range(full.sealed)],
        "lt": full.tail.decode(),
        "ln": full.tail_n,
    }


def state_from(d: dict[str, Any]) -> ProfileState:
    if "events" in d:
        return _legacy_state(d)
    chunks = {n: c.encode() for n, c in enumerate(d["lg"])}
    ledger = Ledger(len(chunks), d["lt"].encode(), d["ln"], chunks)
    return _state_of(d, array("Q", sorted(d["sn"])), ledger)


def _legacy_state(d: dict[str, Any]) -> ProfileState:
    """A state written before profiles kept totals (every event in the record): its
    events folded in again, so the view is the same."""
    state = ProfileState(
        held=set(d["held"]),
        refused={Refusal(*r) for r in d["refused"]},
        merged={(m[0], m[1], m[2]) for m in d["merged"]},
    )
    times: dict[str, int] = {}
    for raw in d["events"]:
        e = facts_from(raw)
        times[e.event_id] = e.time_ms
        state.fold(e)
    for k, v in d["linked"].items():
        state.link(k, v[0], v[1], times.get(v[0], UNKNOWN_TIME))
    return state


def message_to(m: Any) -> dict[str, Any]:  # noqa: PLR0911, PLR0912 - a branch per kind
    if isinstance(m, Observe):
        d: dict[str, Any] = {"k": "obs", "a": m.anchor, "ids": list(m.ids), "e": facts_to(m.event)}
        return _with_refused(d, m.refused)
    if isinstance(m, Apply):
        d = {"k": "app", "p": m.profile, "ids": list(m.ids), "e": facts_to(m.event),
             "g": m.granted_anchor}  # fmt: skip
        if m.pass_over:
            d["po"] = True
        return _with_refused(d, m.refused)
    if isinstance(m, Claim):
        d = {"k": "clm", "i": m.ident, "p": m.profile, "e": m.event_id, "cl": m.claim,
             "t": m.time_ms}  # fmt: skip
        if m.moved_to:
            d["mt"] = m.moved_to
        if m.anchor:
            d["an"] = m.anchor
        return d
    if isinstance(m, Granted):
        return {"k": "grt", "p": m.profile, "i": m.ident, "e": m.event_id}
    if isinstance(m, Merge):
        d = {"k": "mrg", "l": m.loser, "w": m.winner, "v": m.via, "c": m.claimer,
             "e": m.event_id, "cl": m.claim, "t": m.time_ms}  # fmt: skip
        if m.anchor:
            d["an"] = m.anchor
        return d
    if isinstance(m, Offer):
        d = {"k": "ofr", "w": m.winner, "l": m.loser, "s": state_to(m.state),
             "pd": _reservations(m.pending), "v": m.via, "c": m.claimer, "e": m.event_id,
             "cl": m.claim, "t": m.time_ms}  # fmt: skip
        if m.anchor:
            d["an"] = m.anchor
        return d
    if isinstance(m, Answer):
        return {"k": "ans", "l": m.loser, "w": m.winner, "ok": m.accepted, "v": m.via,
                "c": m.claimer, "e": m.event_id, "cl": m.claim, "r": m.rule}  # fmt: skip
    if isinstance(m, Release):
        return {"k": "rel", "p": m.profile, "i": m.ident, "cl": m.claim}
    if isinstance(m, Denied):
        return {"k": "den", "p": m.profile, "i": m.ident, "e": m.event_id, "o": m.owner,
                "r": m.rule, "cl": m.claim}  # fmt: skip
    if isinstance(m, Repoint):
        d = {"k": "rpt", "i": m.ident, "o": m.old, "n": m.new}
        if m.moved:
            d["mv"] = True
        return d
    if isinstance(m, Disown):
        return {"k": "dsn", "i": m.ident, "p": m.profile}
    if isinstance(m, Split):
        d = {"k": "spl", "p": m.profile, "n": m.name, "d": list(m.detach), "r": m.rule}
        if m.kind != "detach":
            d["kd"], d["lm"] = m.kind, [list(x) for x in m.limits]
        return d
    if isinstance(m, Spawn):
        return {"k": "spw", "p": m.profile, "src": m.source, "n": m.name,
                "s": state_to(m.state), "pd": _reservations(m.pending)}  # fmt: skip
    if isinstance(m, Readdress):
        return {"k": "rdr", "p": m.profile, "to": m.to, "n": m.name}
    if isinstance(m, Evaluate):
        return {"k": "evl", "p": m.profile}
    if isinstance(m, Erase):
        return {"k": "ers", "p": m.profile, "rc": m.receipt, "sp": m.suppress, "f": m.follow,
                "ids": list(m.ids)}  # fmt: skip
    if isinstance(m, Forget):
        return {"k": "fgt", "i": m.ident, "p": m.profile, "rc": m.receipt, "sp": m.suppress}
    raise TypeError(f"not a graph message: {m!r}")


def _reservations(pending: Iterable[Reservation]) -> list[list[str]]:
    return sorted([ident, claim] for ident, claim in pending)


def _reservations_from(raw: list[Any]) -> set[Reservation]:
    return {(r[0], r[1]) for r in raw}


def _with_refused(d: dict[str, Any], refused: tuple[Refusal, ...]) -> dict[str, Any]:
    if refused:
        d["r"] = [[r.event_id, r.ident, r.other, r.rule] for r in refused]
    return d


def _refused_from(d: dict[str, Any]) -> tuple[Refusal, ...]:
    return tuple(Refusal(*r) for r in d.get("r", ()))


_READERS: dict[str, Any] = {
    "obs": lambda d: Observe(d["a"], tuple(d["ids"]), facts_from(d["e"]), _refused_from(d)),
    "app": lambda d: Apply(
        d["p"], tuple(d["ids"]), facts_from(d["e"]), d["g"], _refused_from(d), d.get("po", False)
    ),
    "clm": lambda d: Claim(
        d["i"], d["p"], d["e"], d["cl"], d.get("t", UNKNOWN_TIME), d.get("mt", ""), d.get("an", "")
    ),
    "grt": lambda d: Granted(d["p"], d["i"], d["e"]),
    "mrg": lambda d: Merge(
        d["l"], d["w"], d["v"], d["c"], d["e"], d["cl"], d.get("t", UNKNOWN_TIME), d.get("an", "")
    ),
    "ofr": lambda d: Offer(
        d["w"],
        d["l"],
        state_from(d["s"]),
        frozenset(_reservations_from(d["pd"])),
        d["v"],
        d["c"],
        d["e"],
        d["cl"],
        d.get("t", UNKNOWN_TIME),
        d.get("an", ""),
    ),
    "ans": lambda d: Answer(d["l"], d["w"], d["ok"], d["v"], d["c"], d["e"], d["cl"], d["r"]),
    "rel": lambda d: Release(d["p"], d["i"], d["cl"]),
    "den": lambda d: Denied(d["p"], d["i"], d["e"], d["o"], d["r"], d["cl"]),
    "rpt": lambda d: Repoint(d["i"], d["o"], d["n"], d.get("mv", False)),
    "spl": lambda d: Split(
        d["p"],
        d["n"],
        tuple(d["d"]),
        d.get("r", ""),
        d.get("kd", "detach"),
        tuple((t, int(n)) for t, n in d.get("lm", ())),
    ),
    "spw": lambda d: Spawn(
        d["p"], d["src"], d["n"], state_from(d["s"]), frozenset(_reservations_from(d["pd"]))
    ),
    "rdr": lambda d: Readdress(d["p"], d["to"], d["n"]),
    "dsn": lambda d: Disown(d["i"], d["p"]),
    "evl": lambda d: Evaluate(d["p"]),
    "ers": lambda d: Erase(d["p"], d["rc"], d["sp"], d["f"], tuple(d.get("ids", ()))),
    "fgt": lambda d: Forget(d["i"], d["p"], d["rc"], d["sp"]),
}


def message_from(d: dict[str, Any]) -> Any:
    return _READERS[d["k"]](d)


def encode_messages(messages: list[Any]) -> bytes:
    return orjson.dumps([message_to(m) for m in messages])


def decode_messages(data: bytes | None) -> list[Any]:
    try:
        raw = orjson.loads(data or b"")
        if not isinstance(raw, list):
            raise WireError("not a list of messages")
        return [message_from(d) for d in raw]
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError, ValueError) as exc:
        raise WireError(f"not graph messages: {type(exc).__name__}: {exc}") from None


#: A profile node's stored form: this tag, the header's and the hashes' lengths, the
#: header (JSON), the event hashes (little-endian u64, sorted), the ledger's tail.
NODE_TAG = b"\x00n2"
_LENGTHS = struct.Struct("<II")
_HEAD = len(NODE_TAG) + _LENGTHS.size


def node_to(node: ProfileNode) -> bytes:
    """The record a profile partition stores per profile: bounded but for 8 bytes an
    event (the hashes, copied as they are) — the ledger's sealed chunks are stored
    under keys of their own (``ledger_key``)."""
    s = node.state
    header = orjson.dumps(
        {
            **_state_parts(s),
            "ls": s.ledger.sealed,
            "ln": s.ledger.tail_n,
            "r": node.redirect,
            "pd": _reservations(node.pending),
            "n": node.claims,
            "ot": node.offered_to,
            "of": node.offering,
            "hb": [message_to(m) for m in node.held_back],
            "sg": node.segments,
            "sm": node.segment_moves,
            **({"er": list(node.erased)} if node.erased is not None else {}),
            **({"mv": node.moved, "mc": sorted(node.moved_claims)} if node.moved else {}),
            **({"sw": node.spawned} if node.spawned is not None else {}),
            **({"sa": node.shown_as} if node.shown_as is not None else {}),
            **({"ps": node.position} if node.position is not None else {}),
        }
    )
    seen = s.seen if sys.byteorder == "little" else _swapped(s.seen)  # joined without a copy
    n_seen = len(seen) * seen.itemsize
    return b"".join((NODE_TAG, _LENGTHS.pack(len(header), n_seen), header, seen, s.ledger.tail))


def node_from(data: bytes, load: Callable[[int], bytes] | None = None) -> ProfileNode:
    """A stored profile node; ``load(n)`` reads the ledger's sealed chunk ``n`` when
    something asks for the events (a merge), never on the way in."""
    if data[:1] == b"{":
        return _legacy_node(orjson.loads(data))
    if data[: len(NODE_TAG)] != NODE_TAG:
        raise WireError(f"not a profile node: starts {data[:8]!r}")
    n_header, n_seen = _LENGTHS.unpack_from(data, len(NODE_TAG))
    d = orjson.loads(data[_HEAD : _HEAD + n_header])
    seen = array("Q")
    seen.frombytes(memoryview(data)[_HEAD + n_header : _HEAD + n_header + n_seen])
    if sys.byteorder != "little":
        seen.byteswap()
    ledger = Ledger(d["ls"], data[_HEAD + n_header + n_seen :], d["ln"], load=load)
    held_back: list[ProfileMsg] = [message_from(m) for m in d["hb"]]
    return ProfileNode(
        state=_state_of(d, seen, ledger),
        redirect=d["r"],
        pending=_reservations_from(d["pd"]),
        claims=d["n"],
        offered_to=d["ot"],
        offering=d["of"],
        held_back=held_back,
        segments=d.get("sg") or {},  # absent: stored before segments
        segment_moves=d.get("sm", 0),
        erased=(d["er"][0], d["er"][1]) if "er" in d else None,
        moved=d.get("mv") or {},
        moved_claims=set(d.get("mc", ())),
        spawned=d.get("sw"),
        shown_as=d.get("sa"),
        position=d.get("ps"),
    )


def ledger_key(profile_id: str, n: int) -> str:
    """The table key of a profile's sealed ledger chunk ``n`` (same partition as the
    profile: the streams layer writes it with the profile's partition as current)."""
    return f"{profile_id}#{n}"


def _swapped(a: array[int]) -> array[int]:
    b = array("Q", a)
    b.byteswap()
    return b


def _legacy_node(d: dict[str, Any]) -> ProfileNode:
    """A node stored before profiles kept totals (one JSON object)."""
    return ProfileNode(
        state=_legacy_state(d["s"]),
        redirect=d["r"],
        pending=_reservations_from(d["pd"]),
        claims=d["n"],
        offered_to=d["ot"],
        offering=d["of"],
        held_back=[message_from(m) for m in d["hb"]],
    )
