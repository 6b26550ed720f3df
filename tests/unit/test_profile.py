from hypothesis import given
from hypothesis import strategies as st

from profiles.profile import Profile, iso, profile_id_for
from profiles.touchpoint import Touchpoint
from tests.unit.strategies import touchpoints


def fold(events: list[Touchpoint]) -> Profile:
    profile = Profile(profile_id="p_1")
    profile.apply_all((tp, dict(tp.identifiers)) for tp in events)
    return profile


@given(st.lists(touchpoints, max_size=8, unique_by=lambda t: t.event_id), st.randoms())
def test_arrival_order_does_not_change_the_profile(events, rnd) -> None:  # type: ignore[no-untyped-def]
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert fold(events).to_view() == fold(shuffled).to_view()


@given(st.lists(touchpoints, max_size=8))
def test_state_round_trips(events) -> None:  # type: ignore[no-untyped-def]
    profile = fold(events)
    assert Profile.from_state(profile.to_state()).to_view() == profile.to_view()


def test_latest_event_time_wins_a_trait() -> None:
    early = Touchpoint("e1", "t", "crm", 1000, {"email": "a@b.co"}, {"city": "Porto"})
    late = Touchpoint("e2", "t", "web", 2000, {"email": "a@b.co"}, {"city": "Lisbon"})
    assert fold([late, early]).traits["city"] == "Lisbon"
    assert fold([early, late]).traits["city"] == "Lisbon"


def test_view_has_the_documented_form() -> None:
    tp = Touchpoint("e1", "order_completed", "web", 1795341600000, {"email": "a@b.co"})
    again = Touchpoint("e2", "order_completed", "web", 1795341600000, {"email": "a@b.co"})
    view = fold([tp, again, tp]).to_view()
    assert view == {
        "profile_id": "p_1",
        "identifiers": {"email": ["a@b.co"]},
        "traits": {},
        "computed": {
            "event_count": 2,
            "first_seen": "2026-11-22T10:00:00.000Z",
            "last_seen": "2026-11-22T10:00:00.000Z",
            "events_by_type": {"order_completed": 2},
            "events_by_source": {"web": 2},
        },
        "version": 2,
    }


def test_profile_ids_are_stable_and_opaque() -> None:
    pid = profile_id_for("email", "ana@x.com")
    assert pid == profile_id_for("email", "ana@x.com")
    assert pid != profile_id_for("user_id", "ana@x.com")
    assert "ana" not in pid and pid.startswith("p_")


def test_iso_is_utc_millis() -> None:
    assert iso(0) == "1970-01-01T00:00:00.000Z"


def test_redelivered_events_change_nothing() -> None:
    e1 = Touchpoint("e1", "t", "web", 1000, {"email": "a@b.co"})
    e2 = Touchpoint("e2", "t", "web", 2000, {"email": "a@b.co"})
    e3 = Touchpoint("e3", "t", "pos", 3000, {"email": "a@b.co"})
    ids = {"email": "a@b.co"}
    profile = Profile(profile_id="p_1")
    assert profile.apply_all([(e1, ids), (e2, ids)]) == 2
    before = profile.to_view()
    # A replay after a restart repeats both, in any order, then brings something new.
    assert profile.apply_all([(e2, ids), (e1, ids)]) == 0
    assert profile.to_view() == before
    assert profile.apply_all([(e3, ids), (e2, ids)]) == 1
    assert profile.event_count == 3 and profile.version == 3


@given(st.lists(touchpoints, min_size=1, max_size=8), st.lists(st.integers(0, 7), max_size=8))
def test_replaying_any_events_is_idempotent(events, picks) -> None:  # type: ignore[no-untyped-def]
    items = [(tp, dict(tp.identifiers)) for tp in events]
    once = Profile(profile_id="p_1")
    once.apply_all(items)
    replayed = Profile(profile_id="p_1")
    replayed.apply_all(items)
    replayed.apply_all([items[i % len(items)] for i in picks])
    assert replayed.to_view() == once.to_view()
