"""The internal wire format: identity-graph messages and table values as JSON (orjson).

Internal topics carry one JSON array of messages per Kafka record; each message is a
small object tagged by ``k``. Table values are one object per identifier or profile.
Only the worker reads and writes these; they are not a public contract.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import orjson

from profiles.computed import Purchase
from profiles.facts import EventFacts
from profiles.graph.messages import (
    Answer,
    Apply,
    Claim,
    Denied,
    Granted,
    Merge,
    Observe,
    Offer,
    ProfileMsg,
    Release,
    Repoint,
)
from profiles.graph.node import ProfileNode
from profiles.graph.state import ProfileState, Refusal, Reservation


class WireError(ValueError):
    """An internal record that is not a list of graph messages."""


def _facts(e: EventFacts) -> list[Any]:
    raw: list[Any] = [e.event_id, e.type, e.source, e.time_ms, [list(t) for t in e.traits]]
    if e.purchase is not None or e.consent:
        p = e.purchase
        raw.append([p.currency, str(p.total), list(p.categories)] if p is not None else None)
        raw.append([list(c) for c in e.consent])
    return raw


def _facts_from(raw: list[Any]) -> EventFacts:
    purchase = None
    if len(raw) > 5 and raw[5] is not None:
        purchase = Purchase(raw[5][0], Decimal(raw[5][1]), tuple(raw[5][2]))
    consent = tuple((c[0], bool(c[1])) for c in raw[6]) if len(raw) > 6 else ()
    return EventFacts(
        raw[0], raw[1], raw[2], raw[3], tuple((n, v) for n, v in raw[4]), purchase, consent
    )


def state_to(s: ProfileState) -> dict[str, Any]:
    return {
        "held": sorted(s.held),
        "events": [_facts(e) for e in s.events.values()],
        "refused": sorted([r.event_id, r.ident, r.other, r.rule] for r in s.refused),
        "linked": {k: list(v) for k, v in s.linked_by.items()},
        "merged": sorted(list(m) for m in s.merged),
    }


def state_from(d: dict[str, Any]) -> ProfileState:
    events = [_facts_from(e) for e in d["events"]]
    return ProfileState(
        held=set(d["held"]),
        events={e.event_id: e for e in events},
        refused={Refusal(*r) for r in d["refused"]},
        linked_by={k: (v[0], v[1]) for k, v in d["linked"].items()},
        merged={(m[0], m[1], m[2]) for m in d["merged"]},
    )


def message_to(m: Any) -> dict[str, Any]:  # noqa: PLR0911 - one branch per message kind
    if isinstance(m, Observe):
        d: dict[str, Any] = {"k": "obs", "a": m.anchor, "ids": list(m.ids), "e": _facts(m.event)}
        return _with_refused(d, m.refused)
    if isinstance(m, Apply):
        d = {"k": "app", "p": m.profile, "ids": list(m.ids), "e": _facts(m.event),
             "g": m.granted_anchor}  # fmt: skip
        if m.pass_over:
            d["po"] = True
        return _with_refused(d, m.refused)
    if isinstance(m, Claim):
        return {"k": "clm", "i": m.ident, "p": m.profile, "e": m.event_id, "cl": m.claim}
    if isinstance(m, Granted):
        return {"k": "grt", "p": m.profile, "i": m.ident, "e": m.event_id}
    if isinstance(m, Merge):
        return {"k": "mrg", "l": m.loser, "w": m.winner, "v": m.via, "c": m.claimer,
                "e": m.event_id, "cl": m.claim}  # fmt: skip
    if isinstance(m, Offer):
        return {"k": "ofr", "w": m.winner, "l": m.loser, "s": state_to(m.state),
                "pd": _reservations(m.pending), "v": m.via, "c": m.claimer, "e": m.event_id,
                "cl": m.claim}  # fmt: skip
    if isinstance(m, Answer):
        return {"k": "ans", "l": m.loser, "w": m.winner, "ok": m.accepted, "v": m.via,
                "c": m.claimer, "e": m.event_id, "cl": m.claim, "r": m.rule}  # fmt: skip
    if isinstance(m, Release):
        return {"k": "rel", "p": m.profile, "i": m.ident, "cl": m.claim}
    if isinstance(m, Denied):
        return {"k": "den", "p": m.profile, "i": m.ident, "e": m.event_id, "o": m.owner,
                "r": m.rule, "cl": m.claim}  # fmt: skip
    if isinstance(m, Repoint):
        return {"k": "rpt", "i": m.ident, "o": m.old, "n": m.new}
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
    "obs": lambda d: Observe(d["a"], tuple(d["ids"]), _facts_from(d["e"]), _refused_from(d)),
    "app": lambda d: Apply(
        d["p"], tuple(d["ids"]), _facts_from(d["e"]), d["g"], _refused_from(d), d.get("po", False)
    ),
    "clm": lambda d: Claim(d["i"], d["p"], d["e"], d["cl"]),
    "grt": lambda d: Granted(d["p"], d["i"], d["e"]),
    "mrg": lambda d: Merge(d["l"], d["w"], d["v"], d["c"], d["e"], d["cl"]),
    "ofr": lambda d: Offer(
        d["w"],
        d["l"],
        state_from(d["s"]),
        frozenset(_reservations_from(d["pd"])),
        d["v"],
        d["c"],
        d["e"],
        d["cl"],
    ),
    "ans": lambda d: Answer(d["l"], d["w"], d["ok"], d["v"], d["c"], d["e"], d["cl"], d["r"]),
    "rel": lambda d: Release(d["p"], d["i"], d["cl"]),
    "den": lambda d: Denied(d["p"], d["i"], d["e"], d["o"], d["r"], d["cl"]),
    "rpt": lambda d: Repoint(d["i"], d["o"], d["n"]),
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


def node_to(node: ProfileNode) -> bytes:
    return orjson.dumps(
        {
            "s": state_to(node.state),
            "r": node.redirect,
            "pd": _reservations(node.pending),
            "n": node.claims,
            "ot": node.offered_to,
            "of": node.offering,
            "hb": [message_to(m) for m in node.held_back],
        }
    )


def node_from(data: bytes) -> ProfileNode:
    d = orjson.loads(data)
    held_back: list[ProfileMsg] = [message_from(m) for m in d["hb"]]
    return ProfileNode(
        state=state_from(d["s"]),
        redirect=d["r"],
        pending=_reservations_from(d["pd"]),
        claims=d["n"],
        offered_to=d["ot"],
        offering=d["of"],
        held_back=held_back,
    )
