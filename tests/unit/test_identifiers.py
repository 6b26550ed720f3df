import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiles.identifiers import (
    DEFAULT_IDENTIFIER_PRIORITIES,
    InvalidIdentifier,
    normalize,
    normalize_all,
)
from profiles.rules import IdentityRules


@pytest.mark.parametrize(
    ("id_type", "raw", "expected"),
    [
        ("email", "Ana@X.com", "ana@x.com"),
        ("email", "  ANA.SILVA@Example.COM \t", "ana.silva@example.com"),
        ("phone", "(415) 555-0100", "+14155550100"),
        ("phone", "415.555.0100", "+14155550100"),
        ("phone", "+1 415 555 0100", "+14155550100"),
        ("phone", "14155550100", "+14155550100"),
        ("phone", "+44 20 7946 0958", "+442079460958"),
        ("user_id", "  u-1 ", "u-1"),
        ("loyalty_id", "L123", "L123"),
        ("anonymous_id", "anon-9", "anon-9"),
    ],
)
def test_normalizes_real_world_formats(id_type: str, raw: str, expected: str) -> None:
    assert normalize(id_type, raw, "US") == expected


@pytest.mark.parametrize(
    ("id_type", "raw", "reason"),
    [
        ("email", "not-an-email", "not an email address"),
        ("email", "a@b", "not an email address"),
        ("phone", "0000000000", "not a valid phone number"),
        ("phone", "12", "not a valid phone number"),
        ("phone", "call me", "not a phone number"),
        ("user_id", "   ", "empty"),
        ("user_id", "x" * 300, "longer than 256"),
    ],
)
def test_rejects_values_that_are_not_identifiers(id_type: str, raw: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier, match=reason):
        normalize(id_type, raw, "US")


def test_region_decides_numbers_without_country_code() -> None:
    assert normalize("phone", "020 7946 0958", "GB") == "+442079460958"


@given(st.sampled_from(["email", "phone", "user_id"]), st.text(max_size=40))
def test_normalizing_twice_changes_nothing(id_type: str, raw: str) -> None:
    try:
        once = normalize(id_type, raw, "US")
    except InvalidIdentifier:
        return
    assert normalize(id_type, once, "US") == once


def test_normalize_all_keeps_good_and_reports_bad() -> None:
    good, bad = normalize_all({"email": "A@B.co", "phone": "nope"}, "US")
    assert good == {"email": "a@b.co"}
    assert [(r.id_type, r.reason) for r in bad] == [
        ("phone", "not a phone number (The string supplied did not seem to be a phone number.)")
    ]


def test_primary_is_highest_priority() -> None:
    rules = IdentityRules.build(DEFAULT_IDENTIFIER_PRIORITIES)
    ids = {"anonymous_id": "a", "email": "e@x.io", "user_id": "u"}
    assert rules.by_priority(ids.items())[0] == ("user_id", "u")
    assert rules.by_priority({"anonymous_id": "a", "phone": "+1"}.items())[0][0] == "phone"


@pytest.mark.parametrize(
    ("raw", "ignore_dots", "strip_plus", "expected"),
    [
        ("A.Na+shop@Gmail.com", False, False, "a.na+shop@gmail.com"),  # off by default
        ("A.Na+shop@Gmail.com", True, False, "ana+shop@gmail.com"),
        ("A.Na+shop@Gmail.com", True, True, "ana@gmail.com"),
        ("a.na+shop@work.example", True, True, "a.na+shop@work.example"),  # other domains
    ],
)
def test_email_provider_rules(raw: str, ignore_dots: bool, strip_plus: bool, expected: str) -> None:
    from profiles.identifiers import EmailRules

    rules = EmailRules(
        frozenset({"gmail.com"}) if ignore_dots else frozenset(),
        frozenset({"gmail.com"}) if strip_plus else frozenset(),
    )
    assert normalize("email", raw, "US", rules) == expected


def test_email_provider_rules_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from config.settings import Settings
    from profiles.configured import identity_rules
    from profiles.rules import usable

    monkeypatch.setenv("UNIFIER_EMAIL_IGNORE_DOTS_DOMAINS", '["gmail.com"]')
    ids, _ = usable({"email": "a.n.a@gmail.com"}, identity_rules(Settings()), "US")
    assert ids == [("email", "ana@gmail.com")]
