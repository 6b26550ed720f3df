from typing import Any

import pytest

from profiles.touchpoint import InvalidTouchpoint, parse_json

TYPES = {"email", "phone", "user_id", "anonymous_id", "loyalty_id"}


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e-1",
        "type": "order_completed",
        "source": "web",
        "occurred_at": "2026-11-22T10:00:00Z",
        "identifiers": {"email": "Ana@X.com", "user_id": "u-1"},
        "traits": {"first_name": "Ana", "address": {"city": "Lisbon", "zip": "1000"}},
        "properties": {"total": 42.5, "items": [{"sku": "A"}]},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_parses_the_documented_form() -> None:
    tp = parse_json(event(), TYPES)
    assert tp.event_id == "e-1"
    assert tp.occurred_at_ms == 1795341600000
    assert tp.identifiers == {"email": "Ana@X.com", "user_id": "u-1"}
    assert tp.traits == {"first_name": "Ana", "address.city": "Lisbon", "address.zip": "1000"}
    assert tp.properties["items"] == [{"sku": "A"}]


def test_numeric_identifier_becomes_text() -> None:
    assert parse_json(event(identifiers={"user_id": 42}), TYPES).identifiers == {"user_id": "42"}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"event_id": None}, "event_id: required field is missing"),
        ({"occurred_at": "yesterday"}, "occurred_at: Input should be a valid datetime"),
        ({"occurred_at": "2026-11-22T10:00:00"}, "occurred_at: Input should have timezone info"),
        ({"identifiers": {}}, "identifiers: at least one identifier is required"),
        ({"identifiers": {"shoe_size": "42"}}, "unknown identifier type\\(s\\) shoe_size"),
        ({"identifiers": {"email": ["a@b.c"]}}, "identifiers.email"),
        ({"traits": {"tags": ["a", "b"]}}, "traits.tags: lists are not supported"),
        ({"colour": "red"}, "colour: unknown field"),
        ({"type": ""}, "type: String should have at least 1 character"),
    ],
)
def test_rejects_with_a_reason_a_sender_can_act_on(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidTouchpoint, match=reason):
        parse_json(event(**changes), TYPES)


def test_rejects_non_objects() -> None:
    with pytest.raises(InvalidTouchpoint, match="expected a JSON object, got list"):
        parse_json([1, 2], TYPES)
