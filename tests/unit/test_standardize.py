"""Trait standardization on the way in (profiles.standardize), table-driven."""

from __future__ import annotations

import pytest

from profiles.facts import facts_of
from profiles.standardize import alias_index, standardize, trait_name, trait_value
from profiles.touchpoint import Touchpoint


@pytest.mark.parametrize(
    ("sent", "canonical"),
    [
        ("business_type", "industry"),
        ("Sector", "industry"),
        ("firstName", "first_name"),
        ("given-name", "first_name"),
        ("Last Name", "last_name"),
        ("DOB", "birth_date"),
        ("zip", "postal_code"),
        ("favourite_colour", "favourite_colour"),  # unknown names stay as sent
    ],
)
def test_one_name_per_meaning(sent: str, canonical: str) -> None:
    assert trait_name(sent) == canonical


@pytest.mark.parametrize(
    ("name", "sent", "stored"),
    [
        ("country", "Portugal", "PT"),
        ("country", "prt", "PT"),
        ("country", "pt", "PT"),
        ("country", "United Kingdom", "GB"),
        ("country", "Narnia", "Narnia"),  # not a country: kept as sent
        ("billing_country", "germany", "DE"),
        ("currency", "eur", "EUR"),
        ("currency", "XYZ", "XYZ"),
        ("first_name", "  ANA   maria ", "Ana Maria"),
        ("last_name", "o'neil-SMITH", "o'neil-SMITH"),  # mixed case: left alone
        ("last_name", "SMITH-JONES", "Smith-Jones"),
        ("last_name", "McDonald", "McDonald"),
        ("birth_date", "1990-04-01", "1990-04-01"),
        ("birth_date", "1990-04-01T00:00:00Z", "1990-04-01"),
        ("birth_date", "01/04/1990", "01/04/1990"),  # ambiguous: kept as sent
        ("signed_up_at", "2026-11-22T10:00:00+01:00", "2026-11-22T09:00:00.000Z"),
        ("signed_up_at", "2026-11-22T10:00:00", "2026-11-22T10:00:00"),  # no zone: kept
        ("plan", "Gold", "Gold"),
        ("country", 351, 351),  # not text: untouched
    ],
)
def test_values(name: str, sent: object, stored: object) -> None:
    assert trait_value(name, sent) == stored  # type: ignore[arg-type]


def test_the_canonical_name_wins_over_an_alias_in_one_event() -> None:
    assert standardize({"sector": "retail", "industry": "Retail"}) == {"industry": "Retail"}
    assert standardize({"sector": "a", "business_type": "b"}) == {"industry": "b"}


def test_the_alias_table_is_configurable() -> None:
    index = alias_index({"tier": ["loyalty_tier", "level"]})
    assert standardize({"Level": "gold", "sector": "x"}, index) == {"sector": "x", "tier": "gold"}


def test_events_keep_standardized_traits() -> None:
    tp = Touchpoint("e1", "identify", "crm", 0, {"email": "a@b.co"},
                    {"firstName": "ANA", "country_code": "prt"})  # fmt: skip
    assert dict(facts_of(tp).traits) == {"country": "PT", "first_name": "Ana"}
