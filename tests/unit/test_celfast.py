"""The fast path (``profiles.celfast``) answers as Google's CEL runtime does, for every
expression it compiles and any profile: a property test over random documents, with
missing fields, nulls, wrong types and odd timestamps."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles.celfast import Fallback, Missing, Ts
from profiles.profile import iso
from profiles.segments import (
    Context,
    Definition,
    _clock_ms,
    _outcome,
    activation,
    compile_segment,
    document,
    evaluate,
)

NOW = 1_796_000_000_000

EXPRESSIONS = [
    'profile.traits.country == "US" && '
    'timestamp(profile.computed.first_seen) > now - duration("4320h")',
    "profile.computed.orders >= 2 && "
    'timestamp(profile.computed.last_seen) < now - duration("1440h")',
    'timestamp(profile.computed.last_seen) >= now - duration("30s")',
    'now + duration("1h") > timestamp(profile.computed.first_seen)',
    'profile.traits.country in ["GB", "DE", "FR"]',
    'profile.traits.country != "US" || profile.computed.orders > 1',
    "!(profile.traits.vip == true)",
    "profile.traits.age > 30",
    "profile.traits.age >= 30.5 || profile.traits.score < 2",
    "profile.traits.age + 1 == 31",
    "profile.traits.age * 2 - 1 > 10 && profile.traits.age / 3 == 4",
    "profile.traits.age % 7 == 1",
    "-profile.traits.age < 0",
    'has(profile.traits.country) && profile.traits.country.startsWith("U")',
    'profile.traits.email.endsWith("@x.com") || profile.traits.name.contains("an")',
    "size(profile.traits.name) > 3",
    "profile.traits.name.size() <= 3",
    "has(profile.computed.lifetime_value.USD) && "
    "double(profile.computed.lifetime_value.USD) > 200.0",
    'int(profile.traits.zip_plus) > 10 && string(profile.computed.orders) == "3"',
    "has(profile.identifiers.email) && size(profile.identifiers.email) >= 2",
    'profile.identifiers.email.exists(e, e.endsWith("@x.com"))',
    "profile.identifiers.email.all(e, e.size() > 5)",
    '"support_ticket_opened" in profile.computed.events_by_type',
    "profile.computed.events_by_type.page_viewed > 2",
    'profile.computed.events_by_type["page_viewed"] > 2',
    "profile.computed.event_count >= 10 ? profile.computed.orders > 0 : profile.traits.vip == true",
    "profile.traits.vip == null",
    "profile.traits.country == profile.traits.name",
    "profile.traits.tags == [1, 2]",
    '"vip" in profile.segments',
    'profile.computed.lifecycle_stage == "repeat"',
    "timestamp(profile.traits.renewal_at) < now",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.integers(-50, 50),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(["US", "GB", "an", "", "ana@x.com", "1234", "-5", "12.5", "x" * 5]),
    st.sampled_from([iso(NOW - 10**9), iso(NOW + 10**6), "2026-11-01T10:00:00Z",
                     "2026-11-01T10:00:00.123456789Z", "2026-11-01T10:00:00+02:00",
                     "not a date", "2026-13-45T99:00:00Z"]),
)  # fmt: skip
maybe = st.one_of(st.just("absent"), scalars)
trait_names = ["country", "vip", "age", "score", "email", "name", "zip_plus", "tags",
               "renewal_at"]  # fmt: skip


@st.composite
def documents(draw: Any) -> dict[str, Any]:
    traits = {}
    for name in trait_names:
        value = draw(st.one_of(maybe, st.lists(scalars, max_size=3)) if name == "tags" else maybe)
        if value != "absent":
            traits[name] = value
    computed: dict[str, Any] = {}
    for name, strategy in {
        "first_seen": st.one_of(st.none(), st.sampled_from([iso(NOW - 10**10), iso(NOW - 10**5)])),
        "last_seen": st.one_of(st.none(), st.sampled_from([iso(NOW - 10**11), iso(NOW - 10**4)])),
        "orders": st.integers(0, 4),
        "event_count": st.integers(0, 20),
        "lifetime_value": st.dictionaries(st.sampled_from(["USD", "EUR"]),
                                          st.sampled_from(["0", "150.5", "900", "abc"])),
        "events_by_type": st.dictionaries(st.sampled_from(["page_viewed", "support_ticket_opened"]),
                                          st.integers(0, 5)),
        "lifecycle_stage": st.sampled_from(["anonymous", "known", "repeat"]),
    }.items():  # fmt: skip
        if draw(st.booleans()) or name in ("orders", "event_count"):
            computed[name] = draw(strategy)
    identifiers = draw(
        st.dictionaries(st.sampled_from(["email", "phone"]),
                        st.lists(st.sampled_from(["a@x.com", "bob@y.org", "c@x.com"]),
                                 min_size=1, max_size=3))
    )  # fmt: skip
    segments = draw(st.lists(st.sampled_from(["vip", "buyers"]), unique=True))
    return {"profile_id": "p", "identifiers": identifiers, "traits": traits,
            "computed": computed, "segments": segments, "version": 3}  # fmt: skip


COMPILED = [compile_segment(Definition(f"s{i}", text)) for i, text in enumerate(EXPRESSIONS)]


def test_every_expression_here_has_a_fast_path() -> None:
    assert [s.definition.where for s in COMPILED if s.fast is None] == []


@pytest.mark.parametrize("seg", COMPILED, ids=lambda s: s.definition.where[:40])
@settings(max_examples=150, deadline=None)
@given(doc=documents())
def test_the_fast_path_answers_as_cel_does(seg: Any, doc: dict[str, Any]) -> None:
    expected = _outcome(seg.program.eval(activation(document(doc), NOW)))
    got = evaluate(seg, Context(doc, NOW, seg.reads))
    assert got == expected
    for clock in seg.clocks:
        value = clock.other.eval(activation(document(doc), NOW))
        from profiles.segments import _T, _ms

        want = _ms(value.value()) if value.type() == _T.TIMESTAMP else None
        assert _clock_ms(clock, Context(doc, NOW, seg.reads)) == want


def test_it_gives_up_rather_than_guess() -> None:
    seg = compile_segment(Definition("t", "profile.traits.age > 30"))
    assert seg.fast is not None
    with pytest.raises(Fallback):  # a string where CEL wants a number: CEL's error
        seg.fast({"traits": {"age": "31"}}, {"now": Ts(0)})
    with pytest.raises(Missing):
        seg.fast({"traits": {}}, {"now": Ts(0)})
