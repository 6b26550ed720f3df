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

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from profiles.facts import EventFacts

#: Touchpoints each profile keeps for ``last_touchpoints`` (the rules show up to this).
TOUCHPOINTS_KEPT = 50

Scalar = str | int | float | bool | None
#: (event time ms, source, event id, value): one event's say about a trait.
Observation = tuple[int, str, str, Scalar]


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
        if cur is None or (t, eid) > (cur[0], cur[2]):
            self.latest[src] = o
        if self.first is None or (t, eid) < (self.first[0], self.first[2]):
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
        latest = [self.latest[src] for src in sorted(self.latest)]
        return [latest, self.first, self.hi, self.lo, self.any_true]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> TraitCandidates:
        def obs(o: list[Any] | None) -> Observation | None:
            return None if o is None else (o[0], o[1], o[2], o[3])

        latest = {o[1]: (o[0], o[1], o[2], o[3]) for o in raw[0]}  # a new dict: no aliasing
        return cls(latest, obs(raw[1]), obs(raw[2]), obs(raw[3]), bool(raw[4]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TraitCandidates) and self.to_wire() == other.to_wire()

    def __repr__(self) -> str:
        return f"TraitCandidates{self.to_wire()!r}"


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
        "money",
        "touchpoints",
        "traits",
    )
    __hash__ = None  # type: ignore[assignment]  # mutable: compared, never hashed

    def __init__(self) -> None:
        self.count = 0
        self.first: tuple[int, str] | None = None  # (time, event id), the earliest
        self.last: tuple[int, str, str] | None = None  # (time, event id, source), the latest
        self.by_type: dict[str, int] = {}
        self.by_source: dict[str, int] = {}
        self.money: dict[str, tuple[int, Decimal]] = {}  # currency -> (orders, total)
        self.categories: dict[str, int] = {}
        # (time, event id, type, source), latest first, at most TOUCHPOINTS_KEPT
        self.touchpoints: list[tuple[int, str, str, str]] = []
        self.consent: dict[str, tuple[int, str, bool, str]] = {}  # purpose -> latest
        self.traits: dict[str, TraitCandidates] = {}

    # -- joins ---------------------------------------------------------------------
    def _join(self, e: EventFacts) -> None:
        t, eid = e.time_ms, e.event_id
        if self.first is None or (t, eid) < self.first:
            self.first = (t, eid)
        if self.last is None or (t, eid) > self.last[:2]:
            self.last = (t, eid, e.source)
        self._touch([(t, eid, e.type, e.source)])
        for purpose, granted in e.consent:
            cur = self.consent.get(purpose)
            if cur is None or (t, eid) > cur[:2]:
                self.consent[purpose] = (t, eid, granted, e.source)
        for name, value in e.traits:
            cands = self.traits.get(name)
            if cands is None:
                cands = self.traits[name] = TraitCandidates()
            cands.add((t, e.source, eid, value))

    def _touch(self, new: Iterable[tuple[int, str, str, str]]) -> None:
        tps = self.touchpoints
        fresh = [tp for tp in new if tp not in tps]
        if not fresh:
            return
        if len(fresh) == 1 and (not tps or fresh[0] < tps[-1]):
            if len(tps) < TOUCHPOINTS_KEPT:
                tps.append(fresh[0])  # older than all kept, room left
            return
        if len(fresh) == 1 and tps and fresh[0] > tps[0]:
            tps.insert(0, fresh[0])  # the newest: the usual case
        else:
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
            orders, total = self.money.get(p.currency, (0, Decimal(0)))
            orders += n
            if orders:
                self.money[p.currency] = (orders, total + p.total * n)
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
            orders, mine_total = self.money.get(cur, (0, Decimal(0)))
            self.money[cur] = (orders + n, mine_total + total)
        if other.first is not None and (self.first is None or other.first < self.first):
            self.first = other.first
        if other.last is not None and (self.last is None or other.last[:2] > self.last[:2]):
            self.last = other.last
        self._touch(other.touchpoints)
        for purpose, c in other.consent.items():
            cur_c = self.consent.get(purpose)
            if cur_c is None or c[:2] > cur_c[:2]:
                self.consent[purpose] = c
        for name, cands in other.traits.items():
            mine_c = self.traits.get(name)
            if mine_c is None:
                mine_c = self.traits[name] = TraitCandidates()
            mine_c.merge(cands)

    def copy(self) -> Totals:
        return Totals.from_wire(self.to_wire())

    # -- wire ----------------------------------------------------------------------
    def to_wire(self) -> dict[str, Any]:
        return {
            "n": self.count,
            "f": self.first,
            "l": self.last,
            "ty": self.by_type,
            "so": self.by_source,
            "m": {c: [n, str(total)] for c, (n, total) in self.money.items()},
            "ca": self.categories,
            "tp": self.touchpoints,
            "co": self.consent,
            "tr": {k: v.to_wire() for k, v in self.traits.items()},
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Totals:
        t = cls()
        t.count = d["n"]
        t.first = None if d["f"] is None else (d["f"][0], d["f"][1])
        t.last = None if d["l"] is None else (d["l"][0], d["l"][1], d["l"][2])
        t.by_type = dict(d["ty"])
        t.by_source = dict(d["so"])
        t.money = {c: (v[0], Decimal(v[1])) for c, v in d["m"].items()}
        t.categories = dict(d["ca"])
        t.touchpoints = [(x[0], x[1], x[2], x[3]) for x in d["tp"]]
        t.consent = {k: (v[0], v[1], v[2], v[3]) for k, v in d["co"].items()}
        t.traits = {k: TraitCandidates.from_wire(v) for k, v in d["tr"].items()}
        return t

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Totals) and all(
            getattr(self, s) == getattr(other, s) for s in Totals.__slots__
        )

    def __repr__(self) -> str:
        return f"Totals(count={self.count})"
