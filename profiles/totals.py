"""What a profile's events add up to, kept as mergeable aggregates: each touch folds one
event in at a cost that does not grow with the profile's age.

Every part merges as a join or as a sum:

* joins (commutative, associative, idempotent): the first and last event (min / max
  by time, then event id), the latest consent per purpose, the last touchpoints (the
  top of the union), and per trait the candidates every survivorship strategy picks
  from (``TraitCandidates``);
* sums (commutative, associative, **not** idempotent): event counts by type and
  source, purchases per currency, category counts. A merge of two profiles that hold
  some of the same events subtracts those events once (``ProfileState.merge`` finds
  them with the event-id hashes and reads them from the ledger).

Nothing here depends on the trait rules, so changing a strategy or a source priority
changes the view of every profile at once, exactly (``profiles.traits`` applies them
when the view is made).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from profiles.facts import EventFacts

#: Touchpoints each profile keeps for ``last_touchpoints`` (the rules show up to this).
TOUCHPOINTS_KEPT = 20
#: What attribution reads (``profiles.computed``): the latest orders, and the latest
#: marketing touches (events that name a campaign), each kept as a join (the top of
#: the union by time): bounded, whatever the profile's age.
ORDERS_KEPT = 20
MARKETING_KEPT = 50

Scalar = str | int | float | bool | None
#: [event time ms, source, event id, value]: one event's say about a trait. Lists,
#: not tuples, everywhere here: the stored form is JSON, and a record is decoded on
#: every touch, so what ``orjson.loads`` gives is used as it is.
Observation = list[Any]


def _numeric(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class TraitCandidates:
    """One trait's observations that any strategy can pick from: the latest per
    source (latest, source_priority), the first (first), the largest and smallest
    number (max, min), and whether any said true (any_true)."""

    __slots__ = ("any_true", "first", "hi", "latest", "lo")
    __hash__ = None  # type: ignore[assignment]  # mutable: compared, never hashed

    def __init__(
        self,
        latest: dict[str, Observation] | None = None,
        first: Observation | None = None,
        hi: Observation | None = None,
        lo: Observation | None = None,
        any_true: bool = False,
    ) -> None:
        self.latest = {} if latest is None else latest
        self.first = first
        self.hi = hi
        self.lo = lo
        self.any_true = any_true

    def add(self, o: Observation) -> None:
        t, src, eid, v = o
        cur = self.latest.get(src)
        if cur is None or t > cur[0] or (t == cur[0] and eid > cur[2]):
            self.latest[src] = o
        first = self.first
        if first is None or t < first[0] or (t == first[0] and eid < first[2]):
            self.first = o
        if _numeric(v):
            hi, lo = self.hi, self.lo
            if hi is None or (v, t, eid) > (hi[3], hi[0], hi[2]):
                self.hi = o
            if lo is None or (v, -t, eid) < (lo[3], -lo[0], lo[2]):
                self.lo = o
        if v is True:
            self.any_true = True

    def merge(self, other: TraitCandidates) -> None:
        for o in other.latest.values():
            self.add(o)
        for extra in (other.first, other.hi, other.lo):
            if extra is not None:
                self.add(extra)
        self.any_true = self.any_true or other.any_true

    def to_wire(self) -> list[Any]:
        return [self.latest, self.first, self.hi, self.lo, self.any_true]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> TraitCandidates:
        return cls(raw[0], raw[1], raw[2], raw[3], raw[4])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TraitCandidates) and self.to_wire() == other.to_wire()

    def __repr__(self) -> str:
        return f"TraitCandidates{self.to_wire()!r}"


def _top(kept: list[list[Any]], new: list[list[Any]], limit: int) -> None:
    """Join: the latest ``limit`` of the union (by time, then event id), latest first."""
    fresh = [x for x in new if x not in kept]
    if not fresh:
        return
    kept.extend(fresh)
    kept.sort(reverse=True)
    del kept[limit:]


def _add(counts: dict[str, int], key: str, n: int) -> None:
    value = counts.get(key, 0) + n
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)


class Totals:
    """The aggregates of a profile's events (see the module's docstring)."""

    __slots__ = (
        "by_source",
        "by_type",
        "categories",
        "consent",
        "count",
        "first",
        "last",
        "marketing",
        "money",
        "orders",
        "touchpoints",
        "traits",
    )
    __hash__ = None  # type: ignore[assignment]  # mutable: compared, never hashed

    def __init__(self) -> None:
        self.count = 0
        self.first: list[Any] | None = None  # [time, event id], the earliest
        self.last: list[Any] | None = None  # [time, event id, source], the latest
        self.by_type: dict[str, int] = {}
        self.by_source: dict[str, int] = {}
        self.money: dict[str, list[Any]] = {}  # currency -> [orders, total as a string]
        self.categories: dict[str, int] = {}
        # [time, event id, type, source], latest first, at most TOUCHPOINTS_KEPT
        self.touchpoints: list[list[Any]] = []
        self.consent: dict[str, list[Any]] = {}  # purpose -> [time, event id, granted, source]
        self.traits: dict[str, TraitCandidates] = {}
        # [time, event id, currency, total], latest first, at most ORDERS_KEPT
        self.orders: list[list[Any]] = []
        # [time, event id, campaign, channel], latest first, at most MARKETING_KEPT
        self.marketing: list[list[Any]] = []

    # -- joins ---------------------------------------------------------------------
    def _join(self, e: EventFacts) -> None:
        t, eid = e.time_ms, e.event_id
        first, last = self.first, self.last
        if first is None or t < first[0] or (t == first[0] and eid < first[1]):
            self.first = [t, eid]
        if last is None or t > last[0] or (t == last[0] and eid > last[1]):
            self.last = [t, eid, e.source]
        self._touch([[t, eid, e.type, e.source]])
        if e.purchase is not None:
            _top(self.orders, [[t, eid, e.purchase.currency, str(e.purchase.total)]], ORDERS_KEPT)
        if e.campaign is not None:
            _top(self.marketing, [[t, eid, *e.campaign]], MARKETING_KEPT)
        for purpose, granted in e.consent:
            cur = self.consent.get(purpose)
            if cur is None or [t, eid] > cur[:2]:
                self.consent[purpose] = [t, eid, granted, e.source]
        traits = self.traits
        for name, value in e.traits:
            cands = traits.get(name)
            if cands is None:
                cands = traits[name] = TraitCandidates()
            cands.add([t, e.source, eid, value])

    def _touch(self, new: list[list[Any]]) -> None:
        tps = self.touchpoints
        if len(new) == 1:
            tp = new[0]
            if not tps or tp > tps[0]:
                tps.insert(0, tp)  # the newest: the usual case
            elif tp < tps[-1]:
                if len(tps) < TOUCHPOINTS_KEPT:
                    tps.append(tp)  # older than all kept, room left
                return
            elif tp in tps:
                return
            else:
                tps.append(tp)
                tps.sort(reverse=True)
        else:
            fresh = [tp for tp in new if tp not in tps]
            if not fresh:
                return
            tps.extend(fresh)
            tps.sort(reverse=True)
        del tps[TOUCHPOINTS_KEPT:]

    # -- sums ----------------------------------------------------------------------
    def _sum(self, e: EventFacts, n: int) -> None:
        self.count += n
        _add(self.by_type, e.type, n)
        _add(self.by_source, e.source, n)
        p = e.purchase
        if p is not None:
            orders, total = self.money.get(p.currency, (0, "0"))
            orders += n
            if orders:
                self.money[p.currency] = [orders, str(Decimal(total) + p.total * n)]
            else:
                self.money.pop(p.currency, None)
            for c in p.categories:
                _add(self.categories, c, n)

    def fold(self, e: EventFacts) -> None:
        """One new event (the caller checked it is new)."""
        self._sum(e, 1)
        self._join(e)

    def unfold_sums(self, e: EventFacts) -> None:
        """Take an event out of the sums: it was counted on both sides of a merge."""
        self._sum(e, -1)

    def merge(self, other: Totals) -> None:
        self.count += other.count
        for mine, theirs in (
            (self.by_type, other.by_type),
            (self.by_source, other.by_source),
            (self.categories, other.categories),
        ):
            for k, n in theirs.items():
                _add(mine, k, n)
        for cur, (n, total) in other.money.items():
            orders, mine_total = self.money.get(cur, (0, "0"))
            self.money[cur] = [orders + n, str(Decimal(mine_total) + Decimal(total))]
        if other.first is not None and (self.first is None or other.first < self.first):
            self.first = list(other.first)
        if other.last is not None and (self.last is None or other.last[:2] > self.last[:2]):
            self.last = list(other.last)
        self._touch([list(tp) for tp in other.touchpoints])
        _top(self.orders, [list(o) for o in other.orders], ORDERS_KEPT)
        _top(self.marketing, [list(m) for m in other.marketing], MARKETING_KEPT)
        for purpose, c in other.consent.items():
            cur_c = self.consent.get(purpose)
            if cur_c is None or c[:2] > cur_c[:2]:
                self.consent[purpose] = list(c)
        for name, cands in other.traits.items():
            mine_c = self.traits.get(name)
            if mine_c is None:
                mine_c = self.traits[name] = TraitCandidates()
            mine_c.merge(cands)

    def copy(self) -> Totals:
        return Totals.from_wire(orjson.loads(orjson.dumps(self.to_wire())))

    # -- wire ----------------------------------------------------------------------
    def to_wire(self) -> dict[str, Any]:
        return {
            "n": self.count,
            "f": self.first,
            "l": self.last,
            "ty": self.by_type,
            "so": self.by_source,
            "m": self.money,
            "ca": self.categories,
            "tp": self.touchpoints,
            "co": self.consent,
            "tr": {k: v.to_wire() for k, v in self.traits.items()},
            "od": self.orders,
            "mk": self.marketing,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Totals:
        """From what ``to_wire`` gave, decoded afresh (it is used as it is, not copied)."""
        t = cls()
        t.count = d["n"]
        t.first = d["f"]
        t.last = d["l"]
        t.by_type = d["ty"]
        t.by_source = d["so"]
        t.money = d["m"]
        t.categories = d["ca"]
        t.touchpoints = d["tp"]
        t.consent = d["co"]
        t.traits = {k: TraitCandidates.from_wire(v) for k, v in d["tr"].items()}
        t.orders = d.get("od", [])  # absent: stored before attribution
        t.marketing = d.get("mk", [])
        return t

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Totals):
            return NotImplemented
        mine, theirs = self.to_wire(), other.to_wire()
        amounts = [{c: [n, Decimal(v)] for c, (n, v) in w.pop("m").items()} for w in (mine, theirs)]
        return mine == theirs and amounts[0] == amounts[1]

    def __repr__(self) -> str:
        return f"Totals(count={self.count})"
