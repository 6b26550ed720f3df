"""The identity graph's messages and table values as JSON (orjson), and the view form.

Internal topics carry one JSON array of messages per Kafka record; each message is a
small object tagged by ``k``. Table values are one object per identifier or profile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson

from profiles.graph import (
    Answer,
    Apply,
    Claim,
    Denied,
    EventFacts,
    Granted,
    Merge,
    Merged,
    Observe,
    Offer,
    Out,
    ProfileMsg,
    ProfileNode,
    ProfileState,
    Refusal,
    Release,
    Repoint,
    Reservation,
    ident_type,
)
from profiles.standardize import DEFAULT_INDEX, standardize
from profiles.touchpoint import Touchpoint
from profiles.traits import DEFAULT_TRAIT_RULES, Purchase, TraitRules, choose_traits, computed
from schemas.codec import ORJSON_OPTS

#: A redirect's version: final, above any live version, so it always replaces the view.
REDIRECT_VERSION = 2**53


class WireError(ValueError):
    """An internal record that is not a list of graph messages."""


def purchase_of(tp: Touchpoint) -> Purchase | None:
    sale = tp.order if tp.order is not None else tp.pos
    if sale is None:
        return None
    categories = tuple(
        sorted({i["category"] for i in sale.get("items") or () if i.get("category")})
    )
    return Purchase(sale["currency"], Decimal(sale["total"]), categories)


def facts_of(tp: Touchpoint, aliases: Mapping[str, str] = DEFAULT_INDEX) -> EventFacts:
    """What a profile keeps of an event, traits standardized (profiles.standardize)."""
    return EventFacts(
        tp.event_id,
        tp.type,
        tp.source,
        tp.occurred_at_ms,
        tuple(standardize(tp.traits, aliases).items()),
        purchase_of(tp),
        tuple(sorted(tp.consent.items())),
    )


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


def version_of(state: ProfileState) -> int:
    """Grows with every change a live profile can see: all its parts only grow."""
    return len(state.events) + len(state.held) + len(state.refused) + len(state.merged)


def redirect_view(profile_id: str, merged_into: str) -> dict[str, Any]:
    """What a merged-away id reads as: the survivor's id, at the final version."""
    return {"profile_id": profile_id, "merged_into": merged_into, "version": REDIRECT_VERSION}


def shown(nodes: Mapping[str, ProfileNode]) -> list[tuple[str, ProfileNode]]:
    """The profiles among those a record touched that the view shows: redirects, and
    live profiles that hold an identifier (one founded by a message that arrived before
    its first event has nothing to show yet)."""
    return [
        (key, node) for key, node in nodes.items() if node.redirect is not None or node.state.held
    ]


def merged_away(outs: Iterable[Out]) -> list[dict[str, Any]]:
    """A redirect for every profile a record's winners absorbed. The loser writes the
    same redirect when the answer reaches it; written by the winner too, the view agrees
    with ``profile-merges`` (which the winner publishes) as soon as the merge is made,
    whatever happens to the loser's table afterwards."""
    return [redirect_view(m.loser, m.winner) for stage, _key, m in outs
            if stage == "merges" and isinstance(m, Merged)]  # fmt: skip


def view_of(
    profile_id: str, node: ProfileNode, rules: TraitRules = DEFAULT_TRAIT_RULES
) -> dict[str, Any]:
    """The documented read form (``unifier profiles get``, the API, Redis)."""
    if node.redirect is not None:
        return redirect_view(profile_id, node.redirect)
    s = node.state
    ids: dict[str, list[str]] = {}
    for ident in sorted(s.held):
        ids.setdefault(ident_type(ident), []).append(ident.split(":", 1)[1])
    events = s.events.values()
    observations = (
        (name, (e.time_ms, e.source, e.event_id, value)) for e in events for name, value in e.traits
    )
    return {
        "profile_id": profile_id,
        "identifiers": dict(sorted(ids.items())),
        "traits": choose_traits(observations, rules),
        "computed": {
            **computed(events, ids, rules),
            "merged_from": sorted(m[0] for m in s.merged),
            "refused_links": len(s.refused),
        },
        "version": version_of(s),
    }


def why_of(node: ProfileNode) -> dict[str, Any]:
    """How each identifier came to the profile, the merges it went through, and the
    links it refused (``unifier profiles why``)."""
    s = node.state
    return {
        "identifiers": [
            {
                "identifier": i,
                "event_id": s.linked_by.get(i, ("", ""))[0],
                "how": s.linked_by.get(i, ("", "claimed"))[1],
            }
            for i in sorted(s.held)
        ],
        "merges": [{"loser": m[0], "via": m[1], "event_id": m[2]} for m in sorted(s.merged)],
        "refused": [
            {"event_id": r.event_id, "identifier": r.ident, "other": r.other, "rule": r.rule}
            for r in sorted(s.refused, key=lambda r: (r.event_id, r.ident))
        ],
    }


def changed_fields(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """Top-level names (``identifiers``, ``traits.<name>``, ``computed.<name>``) that
    differ between two views of a profile; everything when there was none before."""
    old = before or {}
    out = []
    if old.get("identifiers") != after.get("identifiers"):
        out.append("identifiers")
    for part in ("traits", "computed"):
        a, b = old.get(part) or {}, after.get(part) or {}
        out += [f"{part}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return out


def update_record(
    view: dict[str, Any], why: dict[str, Any], changed: list[str], now_ms: int
) -> dict[str, Any]:
    """The ``ProfileUpdate`` Avro record of a live profile's view and explanation: all
    that the Redis view holds for it (``unifier view rebuild`` reads it back)."""
    computed = view["computed"]
    first = computed.get("first_seen")
    last = computed.get("last_seen")
    return {
        "profile_id": view["profile_id"],
        "version": view["version"],
        "updated_at": now_ms,
        "identifiers": view["identifiers"],
        "traits": view["traits"],
        "first_seen": _ms(first) if first else 0,
        "last_seen": _ms(last) if last else 0,
        "event_count": computed["event_count"],
        "computed_json": orjson.dumps(computed, option=ORJSON_OPTS).decode(),
        "changed_fields": changed,
        "why_json": orjson.dumps(why, option=ORJSON_OPTS).decode(),
    }


def _ms(stamp: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)
