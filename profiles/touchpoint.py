"""The touchpoint: one thing a customer did, seen by one source.

``Touchpoint`` is the in-memory form used everywhere. ``parse_json`` turns the
documented JSON form (what ``unifier ingest`` and the collector accept) into it,
or raises ``InvalidTouchpoint`` with a reason a sender can act on.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
)

Scalar = str | int | float | bool | None


class InvalidTouchpoint(ValueError):
    """The event cannot be accepted; ``str(exc)`` says why."""


@dataclass(frozen=True, slots=True)
class Touchpoint:
    event_id: str
    type: str
    source: str
    occurred_at_ms: int
    identifiers: Mapping[str, str]
    traits: Mapping[str, Scalar] = field(default_factory=dict)
    properties: Mapping[str, Any] = field(default_factory=dict)
    received_at_ms: int | None = None
    #: Only the keys that were set (``campaign`` only when non-empty).
    context: Mapping[str, Any] = field(default_factory=dict)
    consent: Mapping[str, bool] = field(default_factory=dict)
    #: Every field of the Avro ``Order`` record, amounts as ``Decimal``.
    order: Mapping[str, Any] | None = None
    #: Every field of the Avro ``PosTransaction`` record, amounts as ``Decimal``.
    pos: Mapping[str, Any] | None = None


# Amounts are decimals with at most 4 places (the Avro schema's scale): money is never a float.
Money = Annotated[Decimal, Field(max_digits=18, decimal_places=4, allow_inf_nan=False)]


def _currency(value: str) -> str:
    code = value.strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise ValueError("a three-letter ISO 4217 currency code is required")
    return code


Currency = Annotated[StrictStr, AfterValidator(_currency)]
Short = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=256)]
Long = Annotated[str, StringConstraints(strict=True, max_length=8192)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _LineItem(_Strict):
    sku: Short
    name: Short | None = None
    category: Short | None = None
    quantity: StrictInt = Field(1, ge=-1_000_000, le=1_000_000)
    unit_price: Money


class _Order(_Strict):
    order_id: Short
    currency: Currency
    total: Money
    subtotal: Money | None = None
    tax: Money | None = None
    shipping: Money | None = None
    discount: Money | None = None
    coupon: Short | None = None
    items: list[_LineItem] = Field(default_factory=list, max_length=1000)


class _Pos(_Strict):
    transaction_id: Short
    store_id: Short
    terminal_id: Short | None = None
    cashier_id: Short | None = None
    payment_method: Short | None = None
    card_last4: Annotated[str, StringConstraints(pattern=r"^[0-9]{4}$")] | None = None
    currency: Currency
    total: Money
    items: list[_LineItem] = Field(default_factory=list, max_length=1000)


class _Context(_Strict):
    ip: Short | None = None
    user_agent: Long | None = None
    page_url: Long | None = None
    referrer: Long | None = None
    locale: Short | None = None
    timezone: Short | None = None
    library: Short | None = None
    store_id: Short | None = None
    terminal_id: Short | None = None
    campaign: dict[Short, Short] = Field(default_factory=dict)


CONTEXT_FIELDS = tuple(_Context.model_fields)


class _TouchpointJson(BaseModel):
    """Validation of the JSON form. Unknown top-level fields are an error, not dropped."""

    model_config = ConfigDict(extra="forbid")

    event_id: StrictStr = Field(min_length=1, max_length=128)
    type: StrictStr = Field(min_length=1, max_length=128)
    source: StrictStr = Field(min_length=1, max_length=64)
    occurred_at: AwareDatetime
    received_at: AwareDatetime | None = None
    identifiers: dict[StrictStr, StrictStr | int] = Field(min_length=1)
    traits: dict[StrictStr, Any] = Field(default_factory=dict)
    properties: dict[StrictStr, Any] = Field(default_factory=dict)
    context: _Context | None = None
    consent: dict[Short, StrictBool] = Field(default_factory=dict)
    order: _Order | None = None
    pos: _Pos | None = None


def sparse_context(context: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop unset context fields, so a context read from Avro equals the one sent."""
    if not context:
        return {}
    return {k: v for k, v in context.items() if v is not None and v != {}}


def _flatten_traits(traits: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """Nested trait objects become dotted names (``address.city``); lists are refused."""
    flat: dict[str, Scalar] = {}
    for key, value in traits.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten_traits(value, f"{name}."))
        elif isinstance(value, list):
            raise InvalidTouchpoint(f"traits.{name}: lists are not supported as traits")
        else:
            flat[name] = value
    return flat


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "event"
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "too_short" and err["loc"] == ("identifiers",):
            msg = "at least one identifier is required"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(value: datetime) -> int:
    """Exact milliseconds since the epoch (float timestamps lose a millisecond)."""
    return (value - _EPOCH) // _MS


def parse_json(obj: Any, identifier_types: Collection[str]) -> Touchpoint:
    """Validate one decoded JSON value against the touchpoint form."""
    if not isinstance(obj, dict):
        raise InvalidTouchpoint(f"expected a JSON object, got {type(obj).__name__}")
    try:
        doc = _TouchpointJson.model_validate(obj)
    except ValidationError as exc:
        raise InvalidTouchpoint(_describe(exc)) from None
    unknown = sorted(set(doc.identifiers) - set(identifier_types))
    if unknown:
        raise InvalidTouchpoint(
            f"identifiers: unknown identifier type(s) {', '.join(unknown)} "
            f"(configured: {', '.join(sorted(identifier_types))})"
        )
    return Touchpoint(
        event_id=doc.event_id,
        type=doc.type,
        source=doc.source,
        occurred_at_ms=to_ms(doc.occurred_at),
        received_at_ms=to_ms(doc.received_at) if doc.received_at else None,
        identifiers={k: str(v) for k, v in doc.identifiers.items()},
        traits=_flatten_traits(doc.traits),
        properties=doc.properties,
        context=sparse_context(doc.context.model_dump() if doc.context else None),
        consent=doc.consent,
        order=doc.order.model_dump() if doc.order else None,
        pos=doc.pos.model_dump() if doc.pos else None,
    )


def _iso(ms: int) -> str:
    return (_EPOCH + ms * _MS).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_json_form(tp: Touchpoint) -> dict[str, Any]:
    """The documented JSON form of ``tp`` (amounts as decimal strings); ``parse_json``
    reads it back to an equal touchpoint."""

    def plain(value: Any) -> Any:
        # Unset optional fields are left out; amounts become exact decimal strings.
        if isinstance(value, Decimal):
            return format(value.normalize(), "f")
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    out: dict[str, Any] = {
        "event_id": tp.event_id,
        "type": tp.type,
        "source": tp.source,
        "occurred_at": _iso(tp.occurred_at_ms),
        "identifiers": dict(tp.identifiers),
    }
    if tp.received_at_ms is not None:
        out["received_at"] = _iso(tp.received_at_ms)
    for name in ("traits", "properties", "consent"):
        if value := getattr(tp, name):
            out[name] = dict(value)
    if tp.context:
        out["context"] = plain(tp.context)
    for name in ("order", "pos"):
        if (value := getattr(tp, name)) is not None:
            out[name] = plain(value)
    return out
