"""The registries a newcomer extends: identifier types and computed traits."""

from __future__ import annotations

from decimal import Decimal

import pytest

from config.settings import Settings
from profiles.computed import COMPUTED_TRAITS, Purchase, computed, computed_trait
from profiles.configured import identifier_priorities, identity_rules
from profiles.facts import EventFacts
from profiles.identifiers import IDENTIFIER_TYPES, KNOWN_TYPES, normalize
from profiles.rules import DEFAULT_BLOCKED_VALUES
from profiles.traits import DEFAULT_TRAIT_RULES

# One row per built-in type: (priority, limit, a raw value, its normalized form).
BUILT_IN = {
    "user_id": (100, 1, " u-1 ", "u-1"),
    "email": (90, 5, "Ana@X.com", "ana@x.com"),
    "loyalty_id": (80, 2, "L123", "L123"),
    "crm_id": (75, 1, "C-9", "C-9"),
    "phone": (70, 5, "(415) 555-0100", "+14155550100"),
    "anonymous_id": (10, 100, "anon-9", "anon-9"),
}


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_each_built_in_identifier_type_ranks_limits_and_normalizes(name: str) -> None:
    priority, limit, raw, normalized = BUILT_IN[name]
    rules = identity_rules(Settings())
    assert rules.priorities[name] == priority
    assert rules.limit(name) == limit
    assert normalize(name, raw, "US") == normalized
    assert set(IDENTIFIER_TYPES) == set(BUILT_IN)


def test_settings_replace_the_registry_defaults() -> None:
    assert identifier_priorities(Settings()) == {n: row[0] for n, row in BUILT_IN.items()}
    custom = identity_rules(
        Settings(identifier_priorities={"email": 1, "shop_id": 2}, identity_limits={})
    )
    assert dict(custom.priorities) == {"email": 1, "shop_id": 2}
    assert custom.limit("email") is None  # {} means no limits, unset means the built-ins
    assert identity_rules(Settings()).blocked(DEFAULT_BLOCKED_VALUES[0]) == "block list"


def test_an_anonymous_id_alone_does_not_make_a_customer_known() -> None:
    assert "anonymous_id" not in KNOWN_TYPES
    assert set(BUILT_IN) - {"anonymous_id"} == KNOWN_TYPES


def event(event_id: str, time_ms: int, total: str | None = None) -> EventFacts:
    purchase = Purchase("EUR", Decimal(total), ("shoes",)) if total is not None else None
    return EventFacts(event_id, "order_completed", "pos", time_ms, (), purchase)


def test_computed_traits_come_out_in_registration_order() -> None:
    out = computed([event("e2", 2_000, "10"), event("e1", 1_000, "30.5")], ["email"],
                   DEFAULT_TRAIT_RULES)  # fmt: skip
    assert list(out) == list(COMPUTED_TRAITS)
    assert out["orders"] == 2
    assert out["lifetime_value"] == {"EUR": "40.5"}
    assert out["average_order_value"] == {"EUR": "20.25"}
    assert out["first_seen"] == "1970-01-01T00:00:01.000Z"
    assert out["lifecycle_stage"] == "repeat"


def test_a_computed_trait_name_cannot_be_registered_twice() -> None:
    with pytest.raises(ValueError, match="computed trait 'orders' is registered twice"):
        computed_trait("orders")(lambda h: 0)
    assert COMPUTED_TRAITS["orders"].__name__ == "_orders"
