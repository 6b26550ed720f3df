"""Computed traits: what a profile's events add up to, one registered function each.

``COMPUTED_TRAITS`` maps a trait's name to a function of the profile's ``Summary``
(its aggregates, ``profiles.totals.Totals``, the types of identifiers it holds and
the trait rules); ``computed`` runs them in registration order, which is the order
of the ``computed`` object in the profile view. A new computed trait is one function
here with ``@computed_trait("name")`` (and a test in ``tests/unit/test_traits.py``);
one that needs a sum or a join the totals do not keep yet adds it to ``Totals``
(fold, merge, and for a sum the subtraction a merge of shared events needs).

Every function reads the aggregates only, never the events: the cost of a view does
not grow with the profile's history, and since the aggregates merge like a set of
events, merges and re-deliveries cannot change what comes out.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from profiles.facts import EventFacts, Purchase
from profiles.identifiers import KNOWN_TYPES
from profiles.profile import iso
from profiles.totals import Totals
from profiles.traits import TraitRules

__all__ = ["COMPUTED_TRAITS", "Purchase", "Summary", "computed", "computed_of", "computed_trait"]


def money(value: Decimal) -> str:
    """A decimal amount as a plain string with its places ("12.50", "0")."""
    return format(value.normalize(), "f") if value else "0"


def lifecycle(identifier_types: Iterable[str], orders: int) -> str:
    if orders >= 2:
        return "repeat"
    if orders == 1:
        return "customer"
    return "known" if set(identifier_types) & KNOWN_TYPES else "anonymous"


class Summary:
    """What computed traits read: a profile's totals, the types of identifiers it
    holds, the trait rules, and what several traits share (orders per currency)."""

    __slots__ = ("by_currency", "identifier_types", "orders", "rules", "totals")

    def __init__(self, totals: Totals, identifier_types: Iterable[str], rules: TraitRules):
        self.totals = totals
        self.identifier_types = identifier_types
        self.rules = rules
        # currency -> (orders, total)
        self.by_currency = {c: (n, Decimal(t)) for c, (n, t) in sorted(totals.money.items())}
        self.orders = sum(n for n, _ in totals.money.values())


ComputedTrait = Callable[[Summary], Any]

#: Trait name -> its function, in the order the view shows them.
COMPUTED_TRAITS: dict[str, ComputedTrait] = {}


#: Trait name -> a cheaper function equal exactly when the trait's values are equal
#: (what ``profiles.projection.signature_of`` compares to name the changed fields);
#: a trait without one is compared by its value.
SIGNATURES: dict[str, ComputedTrait] = {}


def computed_trait(
    name: str, signature: ComputedTrait | None = None
) -> Callable[[ComputedTrait], ComputedTrait]:
    """Register a computed trait under ``name`` (a name can be registered once).
    ``signature``: for a trait costly to make (times as text, lists of objects), a
    function of the same summary that is equal between two profiles exactly when the
    trait is; it must not share mutable parts with the totals."""

    def register(fn: ComputedTrait) -> ComputedTrait:
        if name in COMPUTED_TRAITS:
            raise ValueError(f"computed trait {name!r} is registered twice")
        COMPUTED_TRAITS[name] = fn
        SIGNATURES[name] = fn if signature is None else signature
        return fn

    return register


@computed_trait("event_count")
def _event_count(h: Summary) -> int:
    return h.totals.count


@computed_trait("first_seen", lambda h: None if h.totals.first is None else h.totals.first[0])
def _first_seen(h: Summary) -> str | None:
    return None if h.totals.first is None else iso(h.totals.first[0])


@computed_trait("last_seen", lambda h: None if h.totals.last is None else h.totals.last[0])
def _last_seen(h: Summary) -> str | None:
    return None if h.totals.last is None else iso(h.totals.last[0])


@computed_trait("last_channel")
def _last_channel(h: Summary) -> str | None:
    return None if h.totals.last is None else h.totals.last[2]


@computed_trait("events_by_type")
def _events_by_type(h: Summary) -> dict[str, int]:
    return dict(sorted(h.totals.by_type.items()))


@computed_trait("events_by_source")
def _events_by_source(h: Summary) -> dict[str, int]:
    return dict(sorted(h.totals.by_source.items()))


@computed_trait("orders")
def _orders(h: Summary) -> int:
    return h.orders


@computed_trait("lifetime_value")
def _lifetime_value(h: Summary) -> dict[str, str]:
    return {c: money(total) for c, (_, total) in h.by_currency.items()}


@computed_trait("average_order_value")
def _average_order_value(h: Summary) -> dict[str, str]:
    return {
        c: money((total / n).quantize(Decimal("0.01"))) for c, (n, total) in h.by_currency.items()
    }


@computed_trait("top_categories")
def _top_categories(h: Summary) -> list[str]:
    ranked = sorted(h.totals.categories.items(), key=lambda kv: (-kv[1], kv[0]))
    return [c for c, _ in ranked][: h.rules.top_categories]


@computed_trait("last_touchpoints", lambda h: h.totals.touchpoints[: h.rules.last_touchpoints])
def _last_touchpoints(h: Summary) -> list[dict[str, Any]]:
    return [
        {"event_id": eid, "type": type_, "source": source, "at": iso(t)}
        for t, eid, type_, source in h.totals.touchpoints[: h.rules.last_touchpoints]
    ]


@computed_trait("lifecycle_stage")
def _lifecycle_stage(h: Summary) -> str:
    return lifecycle(h.identifier_types, h.orders)


#: Milliseconds in a day (attribution's lookback is in days).
DAY_MS = 24 * 3600 * 1000
_SHARE = Decimal("0.0001")


def _credit(
    out: dict[str, dict[str, Decimal]], campaign: str, currency: str, amount: Decimal
) -> None:
    by_currency = out.setdefault(campaign, {})
    by_currency[currency] = by_currency.get(currency, Decimal(0)) + amount


def _shown(credit: dict[str, dict[str, Decimal]]) -> dict[str, dict[str, str]]:
    return {c: {cur: money(v.quantize(_SHARE)) for cur, v in sorted(by.items())}
            for c, by in sorted(credit.items())}  # fmt: skip


@computed_trait(
    "attribution",
    lambda h: (h.rules.attribution_lookback_days, tuple(map(tuple, h.totals.orders)),
               tuple(map(tuple, h.totals.marketing))),
)  # fmt: skip
def _attribution(h: Summary) -> dict[str, Any]:
    """Which campaigns each order came from. A marketing touch is an event that names a
    campaign (``context.campaign``); an order's touches are those of its profile in the
    lookback window before it (its own event included, if it names one). First touch
    credits the whole order to the earliest of them, last touch to the latest, linear
    an equal share to each. Over the latest ``ORDERS_KEPT`` orders and
    ``MARKETING_KEPT`` touches (``profiles.totals``)."""
    lookback = h.rules.attribution_lookback_days * DAY_MS
    touches = sorted(h.totals.marketing)  # oldest first
    times = [m[0] for m in touches]
    first: dict[str, dict[str, Decimal]] = {}
    last: dict[str, dict[str, Decimal]] = {}
    linear: dict[str, dict[str, Decimal]] = {}
    orders = []
    for t, eid, currency, total in h.totals.orders:  # latest first
        window = touches[bisect_left(times, t - lookback) : bisect_right(times, t)]
        amount = Decimal(total)
        row: dict[str, Any] = {"event_id": eid, "at": iso(t), "currency": currency,
                               "total": money(amount), "first_touch": None,
                               "last_touch": None}  # fmt: skip
        if window:
            (_, _, c0, ch0), (_, _, c1, ch1) = window[0][:4], window[-1][:4]
            row["first_touch"] = {"campaign": c0, "channel": ch0}
            row["last_touch"] = {"campaign": c1, "channel": ch1}
            _credit(first, c0, currency, amount)
            _credit(last, c1, currency, amount)
            share = amount / len(window)
            for m in window:
                _credit(linear, m[2], currency, share)
        orders.append(row)
    return {
        "lookback_days": h.rules.attribution_lookback_days,
        "orders": orders,
        "revenue": {
            "first_touch": _shown(first),
            "last_touch": _shown(last),
            "linear": _shown(linear),
        },
    }


@computed_trait("consent", lambda h: {p: (c[0], c[2], c[3]) for p, c in h.totals.consent.items()})
def _consent(h: Summary) -> dict[str, dict[str, Any]]:
    return {
        purpose: {"granted": granted, "at": iso(t), "source": source}
        for purpose, (t, _eid, granted, source) in sorted(h.totals.consent.items())
    }


def computed_of(
    totals: Totals, identifier_types: Iterable[str], rules: TraitRules
) -> dict[str, Any]:
    """Computed traits of a profile from its totals."""
    summary = Summary(totals, identifier_types, rules)
    if not totals.count:
        return {"event_count": 0, "first_seen": None, "last_seen": None,
                "lifecycle_stage": lifecycle(identifier_types, 0)}  # fmt: skip
    return {name: fn(summary) for name, fn in COMPUTED_TRAITS.items()}


def computed_signature(
    totals: Totals, identifier_types: Iterable[str], rules: TraitRules
) -> dict[str, Any]:
    """What ``computed_of`` would give, in a form as cheap to compare (``SIGNATURES``)."""
    summary = Summary(totals, identifier_types, rules)
    if not totals.count:
        return {"event_count": 0, "lifecycle_stage": lifecycle(identifier_types, 0)}
    return {name: fn(summary) for name, fn in SIGNATURES.items()}


def signature_parts(
    totals: Totals, identifier_types: Iterable[str], rules: TraitRules
) -> dict[str, Any]:
    """Only the traits whose signature is not their value (``SIGNATURES``): with the
    values a view shows for the rest, the signature of a profile just made."""
    if not totals.count:
        return {}
    summary = Summary(totals, identifier_types, rules)
    return {name: fn(summary) for name, fn in SIGNATURES.items() if fn is not COMPUTED_TRAITS[name]}


def computed(
    events: Iterable[EventFacts], identifier_types: Iterable[str], rules: TraitRules
) -> dict[str, Any]:
    """Computed traits of a set of events (each event id counted once)."""
    totals, seen = Totals(), set()
    for e in events:
        if e.event_id not in seen:
            seen.add(e.event_id)
            totals.fold(e)
    return computed_of(totals, identifier_types, rules)
