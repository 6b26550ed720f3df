"""Segment tracking API messages -> the touchpoint JSON form.

A site instrumented with analytics.js (or any Segment library) can point at the
collector: ``track``, ``identify``, ``page``, ``screen`` and ``alias`` calls map
as below; everything else is refused with a reason.

=====================  =======================================================
Segment                Touchpoint
=====================  =======================================================
``messageId``          ``event_id`` (a new UUID when absent)
``userId``             identifier ``user_id``
``anonymousId``        identifier ``anonymous_id``
``previousId`` (alias) identifier ``anonymous_id`` (the id being aliased)
``traits.email``,      identifiers ``email``, ``phone``, ``loyalty_id`` — from
``traits.phone``,      ``traits``, ``context.traits`` or (track) ``properties``
``traits.loyaltyId``
``traits`` (identify), ``traits``, keys in snake_case (``firstName`` ->
``context.traits``     ``first_name``), identifiers removed
``event`` (track)      ``type`` in snake_case (``Order Completed`` ->
                       ``order_completed``); page -> ``page_viewed``, screen ->
                       ``screen_viewed``, identify -> ``identify``
``timestamp``          ``occurred_at`` (else ``originalTimestamp``, else now)
``properties``         ``properties``; for ``Order Completed`` also ``order``
                       (order_id, currency, total/revenue, products[])
``context.ip`` ...     ``context``: ip, userAgent, page.url, page.referrer,
                       locale, timezone, library, campaign
``context.consent``    ``consent`` from ``categoryPreferences`` (booleans)
=====================  =======================================================
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Mapping
from typing import Any

from profiles.touchpoint import InvalidTouchpoint

SUPPORTED = ("track", "identify", "page", "screen", "alias")
_IDENTIFIER_TRAITS = {
    "email": "email",
    "phone": "phone",
    "loyaltyId": "loyalty_id",
    "loyalty_id": "loyalty_id",
}
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")
_NOT_WORD = re.compile(r"[^a-z0-9]+")


def snake(name: str) -> str:
    """``firstName`` -> ``first_name``; ``Order Completed`` -> ``order_completed``."""
    return _NOT_WORD.sub("_", _CAMEL.sub(r"_\1", name).lower()).strip("_")


def _dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidTouchpoint(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _str(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidTouchpoint(f"{where}: expected a string, got {type(value).__name__}")
    return str(value)


def _order(props: Mapping[str, Any]) -> dict[str, Any] | None:
    if "order_id" not in props and "orderId" not in props:
        return None
    items = []
    products = props.get("products") or []
    if not isinstance(products, list):
        raise InvalidTouchpoint("properties.products: expected a list")
    for i, entry in enumerate(products):
        product = _dict(entry, f"properties.products.{i}")
        items.append(
            {
                "sku": _str(product.get("sku") or product.get("product_id"), "sku")
                or f"unknown-{i}",
                "name": product.get("name"),
                "category": product.get("category"),
                "quantity": product.get("quantity", 1),
                "unit_price": product.get("price"),
            }
        )
    order = {
        "order_id": props.get("order_id", props.get("orderId")),
        # Segment's e-commerce spec: currency defaults to USD.
        "currency": props.get("currency") or "USD",
        "total": props.get("total", props.get("revenue")),
        "subtotal": props.get("subtotal"),
        "tax": props.get("tax"),
        "shipping": props.get("shipping"),
        "discount": props.get("discount"),
        "coupon": props.get("coupon"),
        "items": items,
    }
    if order["total"] is None:
        raise InvalidTouchpoint("properties: an order needs total or revenue")
    return {k: v for k, v in order.items() if v is not None}


def _context(ctx: Mapping[str, Any], page_url: Any, referrer: Any) -> dict[str, Any]:
    page = _dict(ctx.get("page"), "context.page")
    library = _dict(ctx.get("library"), "context.library")
    campaign = _dict(ctx.get("campaign"), "context.campaign")
    out = {
        "ip": ctx.get("ip"),
        "user_agent": ctx.get("userAgent"),
        "page_url": page_url or page.get("url"),
        "referrer": referrer or page.get("referrer"),
        "locale": ctx.get("locale"),
        "timezone": ctx.get("timezone"),
        "library": (
            f"{library.get('name')}/{library.get('version')}" if library.get("name") else None
        ),
        "campaign": {k: str(v) for k, v in campaign.items() if v is not None},
    }
    return {k: v for k, v in out.items() if v not in (None, {})}


def _kind_of(msg: Mapping[str, Any], call: str | None) -> str:
    """The Segment call a message is: the endpoint's, or in a batch its own ``type``."""
    kind = msg.get("type") if call in (None, "batch") else call
    if kind not in SUPPORTED:
        raise InvalidTouchpoint(
            f"type: {kind!r} is not supported (supported: {', '.join(SUPPORTED)})"
        )
    return kind


def _identifiers(
    msg: Mapping[str, Any],
    kind: str,
    traits: Mapping[str, Any],
    props: Mapping[str, Any],
    identifier_types: Collection[str],
) -> dict[str, str]:
    """The message's identifiers of the configured types (the first value of each wins)."""
    identifiers: dict[str, str] = {}

    def add(kind_: str, value: Any, where: str) -> None:
        text = _str(value, where)
        if text is not None and kind_ in identifier_types:
            identifiers.setdefault(kind_, text)

    add("user_id", msg.get("userId"), "userId")
    add("anonymous_id", msg.get("anonymousId"), "anonymousId")
    if kind == "alias":
        add("anonymous_id", msg.get("previousId"), "previousId")
    for key, id_type in _IDENTIFIER_TRAITS.items():
        add(id_type, traits.get(key), f"traits.{key}")
        if kind == "track":
            add(id_type, props.get(key), f"properties.{key}")
    if not identifiers:
        raise InvalidTouchpoint("userId or anonymousId is required")
    return identifiers


def _event_type(
    msg: Mapping[str, Any], kind: str, props: Mapping[str, Any]
) -> tuple[str, dict[str, Any] | None]:
    """The touchpoint ``type``, and the order of an ``Order Completed`` track call."""
    event_type = {"identify": "identify", "page": "page_viewed", "screen": "screen_viewed"}.get(
        kind, "alias"
    )
    order = None
    if kind == "track":
        name = _str(msg.get("event"), "event")
        if not name:
            raise InvalidTouchpoint("event: a track call needs an event name")
        event_type = snake(name)
        if event_type == "order_completed":
            order = _order(props)
    return event_type, order


def to_touchpoint_json(
    msg: Any, call: str | None, source: str, identifier_types: Collection[str], now_iso: str
) -> dict[str, Any]:
    """One Segment message -> the touchpoint JSON form (validated afterwards by ``parse_json``).

    ``call`` is the endpoint's type (``/v1/track`` -> ``track``); in a batch it is ``None``
    and the message's own ``type`` decides."""
    msg = _dict(msg, "message")
    kind = _kind_of(msg, call)
    ctx = _dict(msg.get("context"), "context")
    traits = {**_dict(ctx.get("traits"), "context.traits"), **_dict(msg.get("traits"), "traits")}
    props = _dict(msg.get("properties"), "properties")
    identifiers = _identifiers(msg, kind, traits, props, identifier_types)
    event_type, order = _event_type(msg, kind, props)
    if kind == "page" and msg.get("name"):
        props = {**props, "name": msg["name"]}

    consent = _dict(_dict(ctx.get("consent"), "context.consent").get("categoryPreferences"), "")
    doc: dict[str, Any] = {
        "event_id": _str(msg.get("messageId"), "messageId") or str(uuid.uuid4()),
        "type": event_type,
        "source": source,
        "occurred_at": msg.get("timestamp") or msg.get("originalTimestamp") or now_iso,
        "received_at": now_iso,
        "identifiers": identifiers,
        "traits": {snake(k): v for k, v in traits.items() if k not in _IDENTIFIER_TRAITS},
        "properties": props,
        "context": _context(ctx, props.get("url") if kind == "page" else None, None),
        "consent": {k: v for k, v in consent.items() if isinstance(v, bool)},
    }
    if order is not None:
        doc["order"] = order
    return {k: v for k, v in doc.items() if v not in ({}, None)}
