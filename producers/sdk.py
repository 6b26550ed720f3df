"""The producer SDK: typed calls for the touchpoints a website or store sends.

    from producers.sdk import Unifier

    with Unifier(source="web") as unifier:
        unifier.identify({"user_id": "u-1", "email": "ana@x.com"}, traits={"first_name": "Ana"})
        unifier.track("product_viewed", {"anonymous_id": "a-9"}, properties={"sku": "SKU-1"})
        unifier.order({"user_id": "u-1"}, order_id="A-1001", currency="EUR", total="42.50",
                      items=[{"sku": "SKU-1", "quantity": 1, "unit_price": "42.50"}])

Every call validates the event exactly as the worker and ``unifier ingest`` do and
raises ``InvalidTouchpoint`` (nothing queued) when it is not acceptable; it returns
the event id. Events go out in batches; ``flush()`` waits for the broker, ``close()``
(or leaving the ``with`` block) flushes and releases the client. Delivery failures
are counted in ``flush()``'s report and passed to ``on_error`` when given.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any

from config.settings import Settings
from config.version import __version__
from producers.kafka import DeliveryReport, ErrorCallback, TouchpointProducer
from profiles.configured import identity_rules
from profiles.routing import validate_event
from profiles.touchpoint import InvalidTouchpoint, Touchpoint

Identifiers = Mapping[str, str | int]
Amount = Decimal | str | int | float

LIBRARY = f"unifier-sdk/{__version__}"


class Unifier:
    """A touchpoint client. Thread-unsafe: use one per thread (they are cheap)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        source: str = "web",
        max_in_flight_events: int = 200_000,
        block_timeout_s: float = 30.0,
        on_error: ErrorCallback | None = None,
        **producer_config: str | int | bool,
    ) -> None:
        """``producer_config``: librdkafka settings that override ours (dots as in
        librdkafka: pass them as ``**{"delivery.timeout.ms": 5000}``)."""
        self.settings = settings or Settings()
        self._rules = identity_rules(self.settings)
        self.source = source
        self._producer = TouchpointProducer(
            self.settings,
            max_in_flight_events=max_in_flight_events,
            block_timeout_s=block_timeout_s,
            on_error=on_error,
            sealer="settings",
            **producer_config,
        )

    # --- the typed calls -----------------------------------------------------
    def track(
        self,
        event_type: str,
        identifiers: Identifiers,
        *,
        properties: Mapping[str, Any] | None = None,
        traits: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        consent: Mapping[str, bool] | None = None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
        source: str | None = None,
    ) -> str:
        """Something the customer did (``product_viewed``, ``email_opened``...)."""
        return self._send(
            {
                "type": event_type,
                "identifiers": dict(identifiers),
                "properties": dict(properties or {}),
                "traits": dict(traits or {}),
                "consent": dict(consent or {}),
            },
            context,
            occurred_at,
            event_id,
            source,
        )

    def identify(
        self,
        identifiers: Identifiers,
        traits: Mapping[str, Any] | None = None,
        *,
        consent: Mapping[str, bool] | None = None,
        context: Mapping[str, Any] | None = None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
        source: str | None = None,
    ) -> str:
        """Who the customer is: identifiers seen together, and traits."""
        return self.track(
            "identify",
            identifiers,
            traits=traits,
            consent=consent,
            context=context,
            occurred_at=occurred_at,
            event_id=event_id,
            source=source,
        )

    def page(
        self,
        identifiers: Identifiers,
        url: str,
        *,
        referrer: str | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
    ) -> str:
        ctx = {**(context or {}), "page_url": url}
        if referrer:
            ctx["referrer"] = referrer
        return self.track(
            "page_viewed",
            identifiers,
            properties=properties,
            context=ctx,
            occurred_at=occurred_at,
            event_id=event_id,
        )

    def order(
        self,
        identifiers: Identifiers,
        *,
        order_id: str,
        currency: str,
        total: Amount,
        items: Sequence[Mapping[str, Any]] = (),
        subtotal: Amount | None = None,
        tax: Amount | None = None,
        shipping: Amount | None = None,
        discount: Amount | None = None,
        coupon: str | None = None,
        traits: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
        source: str | None = None,
    ) -> str:
        """A completed online order. The event id defaults to ``order:<order_id>``, so
        sending the same order twice counts it once."""
        order = {
            "order_id": order_id,
            "currency": currency,
            "total": _amount(total),
            "items": [dict(item) for item in items],
            "subtotal": _amount(subtotal),
            "tax": _amount(tax),
            "shipping": _amount(shipping),
            "discount": _amount(discount),
            "coupon": coupon,
        }
        return self._send(
            {
                "type": "order_completed",
                "identifiers": dict(identifiers),
                "traits": dict(traits or {}),
                "order": {k: v for k, v in order.items() if v is not None},
            },
            context,
            occurred_at,
            event_id or f"order:{order_id}",
            source,
        )

    def pos_transaction(
        self,
        identifiers: Identifiers,
        *,
        transaction_id: str,
        store_id: str,
        currency: str,
        total: Amount,
        items: Sequence[Mapping[str, Any]] = (),
        terminal_id: str | None = None,
        cashier_id: str | None = None,
        payment_method: str | None = None,
        card_last4: str | None = None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
        source: str = "pos",
    ) -> str:
        """An in-store purchase. Event id defaults to ``pos:<store>:<transaction>``."""
        pos = {
            "transaction_id": transaction_id,
            "store_id": store_id,
            "terminal_id": terminal_id,
            "cashier_id": cashier_id,
            "payment_method": payment_method,
            "card_last4": card_last4,
            "currency": currency,
            "total": _amount(total),
            "items": [dict(item) for item in items],
        }
        context = {"store_id": store_id, **({"terminal_id": terminal_id} if terminal_id else {})}
        return self._send(
            {
                "type": "pos_transaction",
                "identifiers": dict(identifiers),
                "pos": {k: v for k, v in pos.items() if v is not None},
            },
            context,
            occurred_at,
            event_id or f"pos:{store_id}:{transaction_id}",
            source,
        )

    def send(self, touchpoint: Mapping[str, Any]) -> str:
        """An event in the documented JSON form (``event_id`` and ``occurred_at`` optional)."""
        doc = dict(touchpoint)
        return self._send(
            doc,
            doc.pop("context", None),
            None,
            doc.pop("event_id", None),
            doc.pop("source", None),
            occurred_at_text=doc.pop("occurred_at", None),
        )

    # --- plumbing ----------------------------------------------------------------
    def _send(
        self,
        doc: dict[str, Any],
        context: Mapping[str, Any] | None,
        occurred_at: datetime | None,
        event_id: str | None,
        source: str | None,
        occurred_at_text: str | None = None,
    ) -> str:
        when = occurred_at or datetime.now(UTC)
        if when.tzinfo is None:
            raise InvalidTouchpoint("occurred_at: a timezone-aware datetime is required")
        ctx = {"library": LIBRARY, **(context or {})}
        doc = {
            **{k: v for k, v in doc.items() if v not in ({}, None)},
            "event_id": event_id or str(uuid.uuid4()),
            "source": source or self.source,
            "occurred_at": occurred_at_text or when.isoformat(),
            "context": ctx,
        }
        tp = self.validate(doc)
        self._producer.send(tp)
        return tp.event_id

    def validate(self, doc: Mapping[str, Any]) -> Touchpoint:
        """The checks every entry point makes; raises ``InvalidTouchpoint`` with the reason."""
        settings = self.settings
        return validate_event(dict(doc), self._rules, settings.default_phone_region)

    def flush(self, timeout: float = 60.0) -> DeliveryReport:
        return self._producer.flush(timeout)

    def close(self, timeout: float = 60.0) -> DeliveryReport:
        return self._producer.close(timeout)

    def __enter__(self) -> Unifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _amount(value: Amount | None) -> str | None:
    # Floats are passed through their shortest repr, so 0.1 stays 0.1 (not 0.1000000000000000055).
    if value is None:
        return None
    return str(value)
