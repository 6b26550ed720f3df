"""Trait survivorship strategies and computed traits (profiles.traits)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiles.computed import lifecycle
from profiles.traits import STRATEGIES, TraitRules, choose_traits

RULES = TraitRules(
    strategies={"address": "source_priority", "first_referrer": "first", "max_spend": "max",
                "min_age": "min", "vip": "any_true"},
    source_priorities={"crm": 100, "pos": 50, "web": 10},
)  # fmt: skip


def obs(*rows: tuple[str, int, str, object]) -> list[tuple[str, tuple[int, str, str, object]]]:
    """(trait, time, source, value) rows; event ids e0, e1, ... in row order."""
    return [(t, (time, src, f"e{i}", v)) for i, (t, time, src, v) in enumerate(rows)]  # type: ignore[misc]


@pytest.mark.parametrize(
    ("rows", "want"),
    [
        # latest (the default): the most recent event wins, whatever its source
        ([("city", 1, "crm", "Porto"), ("city", 2, "web", "Lisbon")], {"city": "Lisbon"}),
        # source_priority: CRM over the web form for the postal address, even if older
        ([("address", 1, "crm", "Rua A 1"), ("address", 9, "web", "typo st")],
         {"address": "Rua A 1"}),
        # ... and among one source's events, the latest
        ([("address", 1, "crm", "old"), ("address", 5, "crm", "new"), ("address", 9, "web", "x")],
         {"address": "new"}),
        # first: the earliest value stays
        ([("first_referrer", 5, "web", "b.example"), ("first_referrer", 1, "web", "a.example")],
         {"first_referrer": "a.example"}),
        # max / min over numbers (other values ignored)
        ([("max_spend", 1, "pos", 10), ("max_spend", 2, "pos", 99.5), ("max_spend", 3, "pos", "x")],
         {"max_spend": 99.5}),
        ([("min_age", 1, "web", 40), ("min_age", 2, "web", 31)], {"min_age": 31}),
        # any_true: a flag that never goes back
        ([("vip", 1, "crm", True), ("vip", 2, "web", False)], {"vip": True}),
        # ties on time: the more trusted source, then the event id, never arrival order
        ([("city", 1, "crm", "A"), ("city", 1, "web", "B")], {"city": "A"}),
        ([("city", 1, "web", "A"), ("city", 1, "web", "B")], {"city": "B"}),
    ],
)  # fmt: skip
def test_strategies(rows: list, want: dict) -> None:  # type: ignore[type-arg]
    assert choose_traits(obs(*rows), RULES) == want
    assert choose_traits(list(reversed(obs(*rows))), RULES) == want


values = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3))


@given(
    st.sampled_from(sorted(STRATEGIES)),
    st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(["crm", "pos", "web", "x"]), values),
        min_size=1,
        max_size=8,
    ),
    st.randoms(),
)
def test_every_strategy_ignores_arrival_order(name, rows, rnd) -> None:  # type: ignore[no-untyped-def]
    rules = TraitRules(strategies={"t": name}, source_priorities=RULES.source_priorities)
    observations = [("t", (t, src, f"e{i}", v)) for i, (t, src, v) in enumerate(rows)]
    shuffled = list(observations)
    rnd.shuffle(shuffled)
    assert choose_traits(shuffled, rules) == choose_traits(observations, rules)


def test_an_unknown_strategy_is_named() -> None:
    with pytest.raises(ValueError, match="unknown trait strategy newest"):
        TraitRules(strategies={"city": "newest"}).check()


@pytest.mark.parametrize(
    ("types", "orders", "stage"),
    [
        (["anonymous_id"], 0, "anonymous"),
        (["anonymous_id", "email"], 0, "known"),
        (["phone"], 1, "customer"),
        (["anonymous_id"], 1, "customer"),
        (["email"], 3, "repeat"),
    ],
)
def test_lifecycle_stages(types: list[str], orders: int, stage: str) -> None:
    assert lifecycle(types, orders) == stage
