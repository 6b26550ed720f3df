"""What a profile keeps of an event: its facts, traits standardized on the way in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from profiles.standardize import DEFAULT_INDEX, standardize
from profiles.touchpoint import Touchpoint


@dataclass(frozen=True, slots=True)
class Purchase:
    """What a profile keeps of an order or a POS sale."""

    currency: str
    total: Decimal
    categories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What a profile keeps of an event."""

    event_id: str
    type: str
    source: str
    time_ms: int
    traits: tuple[tuple[str, Any], ...] = ()
    purchase: Purchase | None = None  # an order or a POS sale
    consent: tuple[tuple[str, bool], ...] = ()  # purpose -> granted
    campaign: tuple[str, str] | None = None  # (campaign, channel) of a marketing touch


def purchase_of(tp: Touchpoint) -> Purchase | None:
    sale = tp.order if tp.order is not None else tp.pos
    if sale is None:
        return None
    categories = tuple(
        sorted({i["category"] for i in sale.get("items") or () if i.get("category")})
    )
    return Purchase(sale["currency"], Decimal(sale["total"]), categories)


def campaign_of(tp: Touchpoint) -> tuple[str, str] | None:
    """The campaign an event came from, and its channel: ``context.campaign``'s name
    (``name`` or ``utm_campaign``, else its ``source``) and medium (``medium`` or
    ``utm_medium``, else ``source``, else the event's source); or an email's
    ``properties.campaign`` (channel: the event's source). None when it names none."""
    c = tp.context.get("campaign") or {}
    name = c.get("name") or c.get("utm_campaign") or c.get("source") or c.get("utm_source")
    if name:
        channel = c.get("medium") or c.get("utm_medium") or c.get("source") or tp.source
        return str(name), str(channel)
    named = tp.properties.get("campaign")
    if isinstance(named, str) and named:
        return named, tp.source
    return None


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
        campaign_of(tp),
    )
