import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiles.identifiers import DEFAULT_IDENTIFIER_PRIORITIES
from profiles.routing import observe, partition_for
from profiles.rules import IdentityRules
from profiles.touchpoint import InvalidTouchpoint, Touchpoint

RULES = IdentityRules.build(DEFAULT_IDENTIFIER_PRIORITIES)


@given(st.text(), st.integers(1, 64))
def test_partition_is_in_range_and_stable(key: str, n: int) -> None:
    assert 0 <= partition_for(key, n) < n
    assert partition_for(key, n) == partition_for(key, n)


def test_event_is_anchored_at_its_highest_priority_normalized_identifier() -> None:
    tp = Touchpoint("e", "t", "web", 0, {"anonymous_id": "a1", "email": " Ana@X.com "})
    first = observe(tp, RULES, "US")
    assert first.anchor == "email:ana@x.com"
    assert first.ids == ("email:ana@x.com", "anonymous_id:a1")
    assert first.event.event_id == "e"


def test_invalid_and_blocked_identifiers_are_dropped() -> None:
    tp = Touchpoint("e", "t", "pos", 0, {"phone": "0000000000", "loyalty_id": "L1", "pet": "x",
                                         "email": "test@test.com"})  # fmt: skip
    assert observe(tp, RULES, "US").ids == ("loyalty_id:L1",)


@pytest.mark.parametrize(
    ("ids", "reason"),
    [
        ({"email": "nope"}, "no usable identifier (email: not an email address)"),
        ({"email": "test@test.com"}, "no usable identifier (email: block list)"),
        ({"pet": "x"}, "no usable identifier (pet: unknown identifier type)"),
    ],
)
def test_event_without_usable_identifier_is_invalid(ids: dict[str, str], reason: str) -> None:
    with pytest.raises(InvalidTouchpoint) as refused:
        observe(Touchpoint("e", "t", "web", 0, ids), RULES, "US")
    assert str(refused.value) == reason
