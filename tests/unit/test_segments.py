"""Segments' core: compiling (and refusing) definitions, and keeping a profile's
membership current as its view and the clock move (``profiles.segments``)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles.computed import COMPUTED_TRAITS
from profiles.profile import iso
from profiles.segments import (
    COMPUTED_TYPES,
    DUE,
    MEMBER,
    Catalog,
    Context,
    Definition,
    SegmentError,
    Transition,
    compile_segment,
    document,
    evaluate,
    explain,
    keyed_changes,
    members_of,
    next_due,
    reconcile,
    retire,
)

HOUR = 3600 * 1000
DAY = 24 * HOUR
T0 = 1_790_000_000_000  # 2026-09-21

US_RECENT = Definition(
    "us_recent_signups",
    'profile.traits.country == "US" && '
    'timestamp(profile.computed.first_seen) > now - duration("4320h")',
)
LAPSED = Definition(
    "high_value_lapsed",
    "profile.computed.orders >= 2 && "
    'timestamp(profile.computed.last_seen) < now - duration("1440h")',
)


def view(first: int | None, last: int | None, orders: int = 0, country: str | None = "US",
         version: int = 1) -> dict:  # fmt: skip
    traits = {} if country is None else {"country": country}
    return {
        "profile_id": "p1",
        "identifiers": {"email": ["a@example.com"]},
        "traits": traits,
        "computed": {
            "first_seen": None if first is None else iso(first),
            "last_seen": None if last is None else iso(last),
            "orders": orders,
            "lifetime_value": {"USD": str(orders * 100)},
            "events_by_type": {
                "page_viewed": version,
                **({"order_completed": orders} if orders else {}),
            },
        },
        "version": version,
    }


def refusal(where: str) -> SegmentError:
    with pytest.raises(SegmentError) as info:
        compile_segment(Definition("bad_one", where))
    return info.value


def test_every_computed_trait_has_a_type() -> None:
    assert set(COMPUTED_TRAITS) <= set(COMPUTED_TYPES) | {"merged_from", "refused_links"}


def test_the_issue_examples_compile_and_read_the_fields_they_name() -> None:
    a, b = compile_segment(US_RECENT), compile_segment(LAPSED)
    assert a.reads == {"traits.country", "computed.first_seen"}
    assert b.reads == {"computed.orders", "computed.last_seen"}
    assert [c.shift_ms for c in a.clocks] == [-4320 * HOUR]
    assert [c.text for c in b.clocks] == ["timestamp(profile.computed.last_seen)"]


@pytest.mark.parametrize(
    ("where", "position", "reason"),
    [
        ("profile.traits.country == ", (1, 27), "Syntax error"),
        ("profile.computed.ordrs > 1", (1, 18), "no field 'ordrs'"),
        ("profile.adress == 'x'", (1, 9), "no field 'adress'"),
        ('profile.computed.orders > "2"', (1, 25), "no matching overload"),
        ("profile.computed.lifecycle_stage", (1, 1), "gives string, not a bool"),
        ("profile.computed.orders + 1", (1, 1), "gives int, not a bool"),
        ("now.getHours() > 3", (1, 1), "now can only be compared"),
        ("unknown_name > 1", (1, 1), "undeclared reference to 'unknown_name'"),
        ('profile.traits.zip == "1"', (1, 16), "stored as traits.postal_code"),
        ("profile.computed.orders > 1 &&\n  profile.computed.orders < 'a'", (2, 27), "overload"),
    ],
)
def test_a_bad_definition_is_refused_with_its_position_and_reason(
    where: str, position: tuple[int, int], reason: str
) -> None:
    err = refusal(where)
    assert err.segment == "bad_one"
    assert (err.line, err.column) == position
    assert reason in err.reason
    assert str(err).startswith(f"segment 'bad_one' at {position[0]}:{position[1]}: ")


def test_a_bad_name_is_refused() -> None:
    with pytest.raises(SegmentError, match="lower-case"):
        compile_segment(Definition("Big Spenders", "true"))


def test_missing_fields_are_out_not_errors_and_other_errors_are_reported() -> None:
    seg = compile_segment(US_RECENT)
    no_country = document(view(T0, T0, country=None))
    assert evaluate(seg, Context(no_country, T0)).member is False
    never_seen = document(view(None, None))
    assert evaluate(seg, Context(never_seen, T0)).member is False
    broken = document({**view(T0, T0), "computed": {"first_seen": "yesterday"}})
    outcome = evaluate(seg, Context(broken, T0))
    assert outcome.member is None
    assert outcome.error is not None and "Timestamp" in outcome.error


def test_a_window_sets_the_instant_the_answer_changes() -> None:
    cat = Catalog.of([US_RECENT])
    entries: dict = {}
    transitions, errors = reconcile("p1", view(T0, T0), entries, cat, T0)
    assert [(t.segment, t.entered, t.seq) for t in transitions] == [("us_recent_signups", True, 1)]
    assert errors == []
    boundary = T0 + 4320 * HOUR
    assert next_due(entries) == boundary + 1
    # nothing changed and the instant has not come: nothing is evaluated again
    assert reconcile("p1", view(T0, T0), entries, cat, boundary, changed=[]) == ([], [])
    out, _ = reconcile("p1", view(T0, T0), entries, cat, boundary + 1, changed=[])
    assert [(t.entered, t.seq, t.at_ms) for t in out] == [(False, 2, boundary + 1)]
    assert next_due(entries) == 0


def test_a_removed_or_changed_definition_exits_or_is_evaluated_again() -> None:
    entries: dict = {}
    reconcile("p1", view(T0, T0), entries, Catalog.of([US_RECENT]), T0)
    assert members_of(entries) == ["us_recent_signups"]
    stricter = Definition(US_RECENT.name, 'profile.traits.country == "PT"', version=2)
    out, _ = reconcile("p1", view(T0, T0), entries, Catalog.of([stricter]), T0, changed=[])
    assert [(t.entered, t.definition_version) for t in out] == [(False, 2)]
    entries2: dict = {}
    reconcile("p1", view(T0, T0), entries2, Catalog.of([US_RECENT]), T0)
    out, _ = reconcile("p1", view(T0, T0), entries2, Catalog.of([]), T0, changed=[])
    assert [(t.segment, t.entered) for t in out] == [("us_recent_signups", False)]
    assert entries2 == {}


def test_a_segment_of_segments_sees_the_others() -> None:
    both = Definition("recent_and_lapsed", '"us_recent_signups" in profile.segments && '
                      '"high_value_lapsed" in profile.segments')  # fmt: skip
    cat = Catalog.of([both, US_RECENT, LAPSED])
    entries: dict = {}
    now = T0 + 100 * DAY
    reconcile("p1", view(T0, T0, orders=3), entries, cat, now)
    assert members_of(entries) == ["high_value_lapsed", "recent_and_lapsed", "us_recent_signups"]
    out, _ = reconcile("p1", view(T0, now, orders=3), entries, cat, now, ["computed.last_seen"])
    assert sorted((t.segment, t.entered) for t in out) == [
        ("high_value_lapsed", False),
        ("recent_and_lapsed", False),
    ]


def test_retire_exits_every_segment_once() -> None:
    entries: dict = {}
    reconcile("p1", view(T0, T0), entries, Catalog.of([US_RECENT]), T0)
    out = retire("p1", entries, T0 + 1, 7)
    assert [(t.segment, t.entered, t.profile_version) for t in out] == [
        ("us_recent_signups", False, 7)
    ]
    assert retire("p1", entries, T0 + 2, 7) == []


def test_explain_gives_each_comparison() -> None:
    seg = compile_segment(LAPSED)
    why = explain(seg, view(T0, T0, orders=3), T0 + 10 * DAY)
    assert why["member"] is False
    assert [c["value"] for c in why["comparisons"]] == [True, False]
    assert why["changes_at"] == iso(T0 + 1440 * HOUR + 1)


# -- the law: membership kept by the stream = every definition on the final profile --

WINDOWS = [1, 24, 100, 1440]
definitions = st.lists(
    st.one_of(
        st.builds(
            lambda n, h: (
                f"profile.computed.orders >= {n} && "
                f'timestamp(profile.computed.last_seen) < now - duration("{h}h")'
            ),
            st.integers(0, 3),
            st.sampled_from(WINDOWS),
        ),
        st.builds(
            lambda c, h: (
                f'profile.traits.country == "{c}" && '
                f'timestamp(profile.computed.first_seen) > now - duration("{h}h")'
            ),
            st.sampled_from(["US", "PT"]),
            st.sampled_from(WINDOWS),
        ),
        st.builds(lambda n: f"profile.computed.orders > {n}", st.integers(0, 3)),
        st.just('"s0" in profile.segments || has(profile.traits.vip)'),
        st.builds(
            lambda n: f"profile.computed.events_by_type.order_completed > {n}", st.integers(0, 2)
        ),
    ),
    min_size=1,
    max_size=5,
)
steps = st.lists(
    st.tuples(
        st.integers(0, 200 * HOUR),  # the clock moves on by this much
        st.booleans(),  # an event arrives
        st.integers(0, 1),  # orders it adds
        st.sampled_from(["US", "PT", None]),
        st.booleans(),  # the catalog is applied again (new versions)
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(definitions, steps)
def test_membership_kept_on_change_and_on_time_equals_evaluating_the_final_profile(
    wheres: list[str], moves: list[tuple[int, bool, int, str | None, bool]]
) -> None:
    def catalog(version: int) -> Catalog:
        return Catalog.of(Definition(f"s{i}", w, version=version) for i, w in enumerate(wheres))

    version, cat = 1, catalog(1)
    now, first, last, orders, country = T0, None, None, 0, None
    entries: dict = {}
    current = view(first, last, orders, country)
    members: set[str] = set()
    seen_events = 0

    def track(transitions: list) -> None:
        for t in transitions:
            assert (t.segment in members) != t.entered, "an enter while in, or an exit while out"
            (members.add if t.entered else members.discard)(t.segment)

    for advance, event, adds, sent_country, reapply in moves:
        target = now + advance
        while (due := next_due(entries)) and due <= target:  # the timers fire in order
            track(reconcile("p1", current, entries, cat, due, changed=[])[0])
        now = target
        if reapply:
            version += 1
            cat = catalog(version)
            track(reconcile("p1", current, entries, cat, now, changed=[])[0])
        if event:
            first = now if first is None else first
            last, orders = now, orders + adds
            country = sent_country or country
            before = current
            seen_events += 1
            current = view(first, last, orders, country, version=seen_events)
            changed = [f"computed.{k}" for k in current["computed"]
                       if current["computed"][k] != before["computed"].get(k)]  # fmt: skip
            if current["traits"] != before["traits"]:
                changed.append("traits.country")
            changed = keyed_changes(changed, before, current, cat.deep)
            track(reconcile("p1", current, entries, cat, now, changed=changed)[0])
    expected: dict = {}
    reconcile("p1", current, expected, cat, now)
    assert members_of(entries) == members_of(expected)
    assert set(members_of(entries)) == members  # the transitions replayed give the same set
    assert all(e[DUE] == 0 or e[DUE] > now for e in entries.values())
    assert {n for n, e in entries.items() if e[MEMBER]} == members


def test_a_transition_already_sent_is_adopted_not_sent_again() -> None:
    """A worker stopped after sending a batch's membership records but before its table
    write handles the batch again: the records it reads back become the profile's
    membership, and only what follows from there is sent."""
    from profiles.graph.node import ProfileNode
    from profiles.routing import partition_for
    from streams.segments import Published

    cat = Catalog.of([US_RECENT])
    node = ProfileNode()
    sent = Transition("p1", "us_recent_signups", True, T0, 1, 5, 1)
    published = Published("unused:9092", "membership", 4)
    published.sent[partition_for("p1", 4)] = (10, {("p1", "us_recent_signups"): sent})
    published.adopt("p1", node)
    assert members_of(node.segments) == ["us_recent_signups"]
    assert node.segment_moves == 1
    again, _ = reconcile("p1", view(T0, T0), node.segments, cat, T0)
    assert again == []  # the enter is not sent twice
    later, _ = reconcile("p1", view(T0, T0), node.segments, cat, T0 + 4320 * HOUR + 1, [])
    assert [(t.entered, t.seq) for t in later] == [(False, 2)]  # numbering goes on
    published.after({partition_for("p1", 4): (0, 10)})
    assert published.sent == {}


def test_a_definition_reading_one_key_of_a_map_is_not_evaluated_for_the_others() -> None:
    support = Definition("support", "has(profile.computed.events_by_type.ticket_opened)")
    cat = Catalog.of([support])
    assert cat.deep == {"computed.events_by_type": frozenset({"ticket_opened"})}
    before = {"computed": {"events_by_type": {"page_viewed": 1}}}
    after = {"computed": {"events_by_type": {"page_viewed": 2}}}
    entries: dict = {}
    reconcile("p1", after, entries, cat, T0)
    changed = keyed_changes(["computed.events_by_type"], before, after, cat.deep)
    assert cat.due(entries, T0, changed) == set()
    opened = {"computed": {"events_by_type": {"page_viewed": 2, "ticket_opened": 1}}}
    changed = keyed_changes(["computed.events_by_type"], after, opened, cat.deep)
    assert cat.due(entries, T0, changed) == {"support"}
    out, _ = reconcile("p1", opened, entries, cat, T0, changed)
    assert [(t.segment, t.entered) for t in out] == [("support", True)]
