"""Standardizing traits on the way in, so that sources agree before profiles merge.

* **Names** of traits: one name for one meaning — ``business_type`` and ``sector``
  become ``industry``, ``firstName`` and ``given_name`` become ``first_name`` — by an
  alias table (``DEFAULT_ALIASES``, extended or replaced in settings). Lookup is
  case-insensitive and ignores ``-``/``_``/spaces.
* **Countries** to ISO 3166-1 alpha-2 (``Portugal``, ``PRT``, ``pt`` → ``PT``) with
  ``pycountry``; a value that is not a country is kept as sent.
* **Currencies** to ISO 4217 (``eur`` → ``EUR``); unknown codes are kept as sent.
* **Dates**: traits named like ``*_date``/``birthday`` become ``YYYY-MM-DD``, traits
  named like ``*_at`` an ISO 8601 UTC timestamp; unparseable values are kept as sent.
* **Person names** (``first_name``, ``last_name``, ``name``): whitespace collapsed,
  and a word sent in one case (``ANA``, ``maria``) gets a capital (``Ana Maria``);
  mixed case (``McDonald``) is left alone.

Nothing is dropped here: a value that cannot be standardized stays as it came.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from functools import lru_cache

import pycountry

from profiles.sealed import is_sealed

Scalar = str | int | float | bool | None

DEFAULT_ALIASES: Mapping[str, tuple[str, ...]] = {
    "industry": ("business_type", "sector", "vertical"),
    "first_name": ("firstname", "given_name", "fname", "forename"),
    "last_name": ("lastname", "surname", "family_name", "lname"),
    "company": ("company_name", "organization", "organisation", "employer"),
    "job_title": ("title", "position", "role"),
    "country": ("country_code", "country_name"),
    "birth_date": ("birthday", "dob", "date_of_birth", "birthdate"),
    "postal_code": ("zip", "zip_code", "zipcode", "postcode"),
    "currency": ("currency_code",),
}
NAME_TRAITS = frozenset({"first_name", "last_name", "name", "middle_name"})


def _fold(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


def alias_index(aliases: Mapping[str, tuple[str, ...] | list[str]]) -> dict[str, str]:
    """Folded alias (and folded canonical name) -> canonical name."""
    index: dict[str, str] = {}
    for canonical, names in aliases.items():
        for name in (canonical, *names):
            index[_fold(name)] = canonical
    return index


DEFAULT_INDEX = alias_index(DEFAULT_ALIASES)


def trait_name(name: str, index: Mapping[str, str] = DEFAULT_INDEX) -> str:
    return index.get(_fold(name), name)


@lru_cache(maxsize=4096)
def country_code(value: str) -> str | None:
    text = value.strip()
    if not text:
        return None
    try:
        found = pycountry.countries.lookup(text)
    except LookupError:
        return None
    return str(found.alpha_2)


@lru_cache(maxsize=1024)
def currency_code(value: str) -> str | None:
    found = pycountry.currencies.get(alpha_3=value.strip().upper())
    return str(found.alpha_3) if found is not None else None


def person_name(value: str) -> str:
    """Whitespace collapsed; a word in one case gets a capital (each part of a
    hyphenated word), a word in mixed case (McDonald, o'Neil-SMITH) is left alone."""

    def word(w: str) -> str:
        if w.islower() or w.isupper():
            return "-".join(part.capitalize() for part in w.split("-"))
        return w

    return " ".join(word(w) for w in value.split())


def _date(value: str) -> str | None:
    try:
        return date.fromisoformat(value.strip()[:10]).isoformat()
    except ValueError:
        return None


def _timestamp(value: str) -> str | None:
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # no zone: cannot say which instant it is
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def trait_value(name: str, value: Scalar) -> Scalar:
    """`value` of the (canonical) trait `name`, standardized where that is possible
    (a sealed value was standardized before it was sealed)."""
    if not isinstance(value, str) or (value.startswith("~~") and is_sealed(value)):
        return value
    out: str | None = None
    if name == "country" or name.endswith("_country"):
        out = country_code(value)
    elif name == "currency" or name.endswith("_currency"):
        out = currency_code(value)
    elif name in NAME_TRAITS:
        out = person_name(value)
    elif name.endswith("_date") or name == "birth_date":
        out = _date(value)
    elif name.endswith("_at"):
        out = _timestamp(value)
    return value if out is None else out


def standardize(
    traits: Mapping[str, Scalar], index: Mapping[str, str] = DEFAULT_INDEX
) -> dict[str, Scalar]:
    """Canonical names and standardized values. Two names mapping to one trait in one
    event: the one sent under the canonical name wins, then the first alias by name."""
    out: dict[str, Scalar] = {}
    for name in sorted(traits, key=lambda n: (trait_name(n, index) != n, n)):
        canonical = trait_name(name, index)
        if canonical not in out:
            out[canonical] = trait_value(canonical, traits[name])
    return dict(sorted(out.items()))
