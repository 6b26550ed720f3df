"""The touchpoint: one thing a customer did, seen by one source.

``Touchpoint`` is the in-memory form used everywhere. ``parse_json`` turns the
documented JSON form (what ``unifier ingest`` and the collector accept) into it,
or raises ``InvalidTouchpoint`` with a reason a sender can act on.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr, ValidationError

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
    )
