import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiles.profile import profile_id_for
from profiles.routing import partition_for, profile_key
from profiles.touchpoint import InvalidTouchpoint, Touchpoint
from unifier.settings import DEFAULT_IDENTIFIER_PRIORITIES as PRIORITIES


@given(st.text(), st.integers(1, 64))
def test_partition_is_in_range_and_stable(key: str, n: int) -> None:
    assert 0 <= partition_for(key, n) < n
    assert partition_for(key, n) == partition_for(key, n)


def test_event_goes_to_its_highest_priority_normalized_identifier() -> None:
    tp = Touchpoint("e", "t", "web", 0, {"anonymous_id": "a1", "email": " Ana@X.com "})
    routed = profile_key(tp, PRIORITIES, "US")
    assert routed.key == profile_id_for("email", "ana@x.com")
    assert routed.identifiers == {"anonymous_id": "a1", "email": "ana@x.com"}


def test_invalid_identifiers_are_dropped_with_reasons() -> None:
    tp = Touchpoint("e", "t", "pos", 0, {"phone": "0000000000", "loyalty_id": "L1", "pet": "x"})
    routed = profile_key(tp, PRIORITIES, "US")
    assert routed.identifiers == {"loyalty_id": "L1"}
    assert {(r.id_type, r.reason) for r in routed.dropped} == {
        ("phone", "not a valid phone number"),
        ("pet", "unknown identifier type"),
    }


def test_event_without_usable_identifier_is_invalid() -> None:
    tp = Touchpoint("e", "t", "web", 0, {"email": "nope"})
    with pytest.raises(InvalidTouchpoint, match="no usable identifier \\(email: not an email"):
        profile_key(tp, PRIORITIES, "US")
