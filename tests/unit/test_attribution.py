"""Attribution as a computed trait: first touch, last touch and linear credit of each
order to the campaigns of its profile in the lookback window before it."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from profiles.computed import DAY_MS, computed_of
from profiles.facts import EventFacts, Purchase
from profiles.totals import Totals
from profiles.traits import TraitRules

T0 = 1_795_000_000_000
RULES = TraitRules(attribution_lookback_days=30)


def touch(eid: str, day: float, campaign: str, channel: str = "email") -> EventFacts:
    return EventFacts(eid, "email_clicked", "email", T0 + int(day * DAY_MS),
                      campaign=(campaign, channel))  # fmt: skip


def order(eid: str, day: float, total: str, currency: str = "USD") -> EventFacts:
    return EventFacts(eid, "order_completed", "web", T0 + int(day * DAY_MS),
                      purchase=Purchase(currency, Decimal(total)))  # fmt: skip


def attribution(events: list[EventFacts], rules: TraitRules = RULES) -> dict:
    totals = Totals()
    for e in events:
        totals.fold(e)
    return computed_of(totals, ["email"], rules).get("attribution")  # type: ignore[no-any-return]


def test_first_last_and_linear_credit_within_the_lookback() -> None:
    got = attribution([
        touch("t0", 0, "spring_sale"),  # 40 days before the order: outside the window
        touch("t1", 20, "newsletter", "email"),
        touch("t2", 35, "retargeting", "display"),
        touch("t3", 39, "newsletter", "email"),
        order("o1", 40, "90"),
        touch("t4", 41, "late", "social"),  # after the order: not its touch
    ])  # fmt: skip
    [o1] = got["orders"]
    assert o1["first_touch"] == {"campaign": "newsletter", "channel": "email"}
    assert o1["last_touch"] == {"campaign": "newsletter", "channel": "email"}
    assert got["revenue"] == {
        "first_touch": {"newsletter": {"USD": "90"}},
        "last_touch": {"newsletter": {"USD": "90"}},
        "linear": {"newsletter": {"USD": "60"}, "retargeting": {"USD": "30"}},
    }
    shorter = attribution([touch("t1", 20, "newsletter"), order("o1", 40, "90")],
                          TraitRules(attribution_lookback_days=7))  # fmt: skip
    assert shorter["orders"][0]["first_touch"] is None
    assert shorter["revenue"]["linear"] == {}


def test_an_order_with_no_campaign_before_it_is_credited_to_none() -> None:
    got = attribution([order("o1", 1, "10", "EUR")])
    assert got["orders"][0]["last_touch"] is None
    assert got["revenue"] == {"first_touch": {}, "last_touch": {}, "linear": {}}


events = st.lists(
    st.one_of(
        st.builds(touch, st.uuids().map(str), st.floats(0, 100), st.sampled_from(["a", "b", "c"])),
        st.builds(order, st.uuids().map(str), st.floats(0, 100), st.sampled_from(["10", "33.3"])),
    ),
    max_size=25,
)


@settings(max_examples=100, deadline=None)
@given(events, st.randoms())
def test_parts_merged_in_any_order_attribute_as_one_profile(es: list, rnd) -> None:  # type: ignore[no-untyped-def]
    whole = attribution(es) if es else None
    parts: list[Totals] = [Totals(), Totals(), Totals()]
    for e in es:
        parts[rnd.randrange(3)].fold(e)
    rnd.shuffle(parts)
    merged = parts[0]
    merged.merge(parts[1])
    merged.merge(parts[2])
    merged.merge(parts[1])  # again: a join, idempotent
    assert computed_of(merged, ["email"], RULES).get("attribution") == whole
