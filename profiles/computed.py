"""Computed traits: what a profile's events add up to, one registered function each.

``COMPUTED_TRAITS`` maps a trait's name to a function of the profile's ``History``
(its events in time order, the types of identifiers it holds, the trait rules);
``computed`` runs them in registration order, which is the order of the
``computed`` object in the profile view. A new computed trait is one function here
with ``@computed_trait("name")`` (and a test in ``tests/unit/test_traits.py``).

Every function is a pure function of the set of events, so merges and re-deliveries
cannot change what comes out (see ``profiles.traits``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from profiles.identifiers import KNOWN_TYPES
from profiles.profile import iso
from profiles.traits import TraitRules


@dataclass(frozen=True, slots=True)
class Purchase:
    """What a profile keeps of an order or a POS sale."""

    currency: str
    total: Decimal
    categories: tuple[str, ...] = ()


def money(value: Decimal) -> str:
    """A decimal amount as a plain string with its places ("12.50", "0")."""
    return format(value.normalize(), "f") if value else "0"


def lifecycle(identifier_types: Iterable[str], orders: int) -> str:
    if orders >= 2:
        return "repeat"
    if orders == 1:
        return "customer"
    return "known" if set(identifier_types) & KNOWN_TYPES else "anonymous"


class History:
    """A profile's events (``EventFacts``) in time order, with what several traits
    share gathered in one pass: purchases by currency, category counts, the latest
    consent per purpose."""

    __slots__ = (
        "by_currency",
        "categories",
        "consent",
        "events",
        "identifier_types",
        "orders",
        "rules",
    )

    def __init__(self, events: Iterable[Any], identifier_types: Iterable[str], rules: TraitRules):
        self.events = sorted(events, key=lambda e: (e.time_ms, e.event_id))
        self.identifier_types = identifier_types
        self.rules = rules
        by_currency: dict[str, list[Decimal]] = {}
        self.categories: Counter[str] = Counter()
        self.consent: dict[str, dict[str, Any]] = {}
        for e in self.events:
            if e.purchase is not None:
                by_currency.setdefault(e.purchase.currency, []).append(e.purchase.total)
                self.categories.update(e.purchase.categories)
            for purpose, granted in e.consent:
                self.consent[purpose] = {
                    "granted": granted,
                    "at": iso(e.time_ms),
                    "source": e.source,
                }
        self.by_currency = dict(sorted(by_currency.items()))
        self.orders = sum(len(v) for v in by_currency.values())


ComputedTrait = Callable[[History], Any]

#: Trait name -> its function, in the order the view shows them.
COMPUTED_TRAITS: dict[str, ComputedTrait] = {}


def computed_trait(name: str) -> Callable[[ComputedTrait], ComputedTrait]:
    """Register a computed trait under ``name`` (a name can be registered once)."""

    def register(fn: ComputedTrait) -> ComputedTrait:
        if name in COMPUTED_TRAITS:
            raise ValueError(f"computed trait {name!r} is registered twice")
        COMPUTED_TRAITS[name] = fn
        return fn

    return register


@computed_trait("event_count")
def _event_count(h: History) -> int:
    return len(h.events)


@computed_trait("first_seen")
def _first_seen(h: History) -> str:
    return iso(h.events[0].time_ms)


@computed_trait("last_seen")
def _last_seen(h: History) -> str:
    return iso(h.events[-1].time_ms)


@computed_trait("last_channel")
def _last_channel(h: History) -> str:
    return str(h.events[-1].source)


@computed_trait("events_by_type")
def _events_by_type(h: History) -> dict[str, int]:
    return dict(sorted(Counter(e.type for e in h.events).items()))


@computed_trait("events_by_source")
def _events_by_source(h: History) -> dict[str, int]:
    return dict(sorted(Counter(e.source for e in h.events).items()))


@computed_trait("orders")
def _orders(h: History) -> int:
    return h.orders


@computed_trait("lifetime_value")
def _lifetime_value(h: History) -> dict[str, str]:
    return {c: money(sum(v, Decimal(0))) for c, v in h.by_currency.items()}


@computed_trait("average_order_value")
def _average_order_value(h: History) -> dict[str, str]:
    return {
        c: money((sum(v, Decimal(0)) / len(v)).quantize(Decimal("0.01")))
        for c, v in h.by_currency.items()
    }


@computed_trait("top_categories")
def _top_categories(h: History) -> list[str]:
    ranked = sorted(h.categories.items(), key=lambda kv: (-kv[1], kv[0]))
    return [c for c, _ in ranked][: h.rules.top_categories]


@computed_trait("last_touchpoints")
def _last_touchpoints(h: History) -> list[dict[str, Any]]:
    return [
        {"event_id": e.event_id, "type": e.type, "source": e.source, "at": iso(e.time_ms)}
        for e in reversed(h.events[-h.rules.last_touchpoints :])
    ]


@computed_trait("lifecycle_stage")
def _lifecycle_stage(h: History) -> str:
    return lifecycle(h.identifier_types, h.orders)


@computed_trait("consent")
def _consent(h: History) -> dict[str, dict[str, Any]]:
    return dict(sorted(h.consent.items()))


def computed(
    events: Iterable[Any], identifier_types: Iterable[str], rules: TraitRules
) -> dict[str, Any]:
    """Computed traits of a profile from its events (``EventFacts``)."""
    history = History(events, identifier_types, rules)
    if not history.events:
        return {"event_count": 0, "first_seen": None, "last_seen": None,
                "lifecycle_stage": lifecycle(history.identifier_types, 0)}  # fmt: skip
    return {name: fn(history) for name, fn in COMPUTED_TRAITS.items()}
