"""Identifier types and their normalization: the same person must produce the same key.

``IDENTIFIER_TYPES`` is the registry of built-in types: each entry says how the type
ranks (priority: an event is anchored by its highest-priority identifier), how many of
it one profile may hold (limit), how a value is normalized, and whether holding one
makes a customer *known* (lifecycle). A new built-in type is one entry here; settings
(``UNIFIER_IDENTIFIER_PRIORITIES``, ``UNIFIER_IDENTITY_LIMITS``) can replace the
priorities and limits per deployment, and add types that are plain ids.

Emails are trimmed and lower-cased; phones become E.164 (via ``phonenumbers``,
with a default region for numbers written without a country code); every other
type is trimmed. A value that cannot be normalized is not an identifier: the
caller gets the reason and the event may still count through its other ids.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_IDENTIFIER_LENGTH = 256


class InvalidIdentifier(ValueError):
    """A value that cannot serve as an identifier of its type."""


def normalize_email(value: str, region: str) -> str:
    email = value.strip().lower()
    if not _EMAIL.match(email):
        raise InvalidIdentifier("not an email address")
    return email


def normalize_phone(value: str, region: str) -> str:
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentifier(f"not a phone number ({exc._msg})") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidIdentifier("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_id(value: str, region: str) -> str:
    ident = value.strip()
    if not ident:
        raise InvalidIdentifier("empty")
    return ident


Normalizer = Callable[[str, str], str]  # (value, default phone region) -> normalized


@dataclass(frozen=True, slots=True)
class IdentifierType:
    """One built-in identifier type (see the module docstring)."""

    name: str
    priority: int  # higher wins: the anchor of an event is its highest-priority identifier
    limit: int | None  # how many of this type one profile may hold; None: no limit
    normalize: Normalizer = normalize_id
    known: bool = True  # holding one makes a customer known (lifecycle "known")
    label: str = ""  # what it is, for people


def _registry(*types: IdentifierType) -> dict[str, IdentifierType]:
    return {t.name: t for t in types}


#: The built-in identifier types. Add a type here (and a line to its tests).
IDENTIFIER_TYPES: Mapping[str, IdentifierType] = _registry(
    IdentifierType("user_id", 100, 1, label="account id in the shop"),
    IdentifierType("email", 90, 5, normalize_email, label="email address"),
    IdentifierType("loyalty_id", 80, 2, label="loyalty card number"),
    IdentifierType("crm_id", 75, 1, label="record id in the CRM"),
    IdentifierType("phone", 70, 5, normalize_phone, label="phone number"),
    IdentifierType("anonymous_id", 10, 100, known=False, label="device or browser id"),
)

#: Priorities of the built-in types (``UNIFIER_IDENTIFIER_PRIORITIES`` replaces them).
DEFAULT_IDENTIFIER_PRIORITIES: Mapping[str, int] = {
    t.name: t.priority for t in IDENTIFIER_TYPES.values()
}
#: Per-type limits of the built-in types (``UNIFIER_IDENTITY_LIMITS`` replaces them).
DEFAULT_LIMITS: Mapping[str, int] = {
    t.name: t.limit for t in IDENTIFIER_TYPES.values() if t.limit is not None
}
#: Types whose presence makes a customer known; others (and configured ones) do not.
KNOWN_TYPES = frozenset(t.name for t in IDENTIFIER_TYPES.values() if t.known)
#: Normalizer per identifier type; types not listed here are plain ids.
NORMALIZERS: Mapping[str, Normalizer] = {
    t.name: t.normalize for t in IDENTIFIER_TYPES.values() if t.normalize is not normalize_id
}


@dataclass(frozen=True, slots=True)
class EmailRules:
    """Provider rules, off by default: some providers deliver ``a.na+shop@gmail.com``
    to ``ana@gmail.com``; treating those as one address is a choice, not a fact."""

    ignore_dots: frozenset[str] = frozenset()  # domains where dots in the local part do not count
    strip_plus: frozenset[str] = frozenset()  # domains where "+tag" is dropped

    def apply(self, email: str) -> str:
        local, _, domain = email.rpartition("@")
        if domain in self.strip_plus:
            local = local.split("+", 1)[0]
        if domain in self.ignore_dots:
            local = local.replace(".", "")
        if not local:
            raise InvalidIdentifier("not an email address")
        return f"{local}@{domain}"


NO_EMAIL_RULES = EmailRules()


def normalize(
    id_type: str, value: str, region: str = "US", email: EmailRules = NO_EMAIL_RULES
) -> str:
    """The normalized form of one identifier, or InvalidIdentifier."""
    normalized, reason = _normalized(id_type, value, region, email)
    if normalized is None:
        raise InvalidIdentifier(reason)
    return normalized


#: Identifiers whose normalization is remembered: a phone number costs ~20 µs to parse
#: (phonenumbers), and the same customers' identifiers come back event after event.
NORMALIZED_CACHE = 1 << 16


@lru_cache(maxsize=NORMALIZED_CACHE)
def _normalized(id_type: str, value: str, region: str, email: EmailRules) -> tuple[str | None, str]:
    """(normalized, "") or (None, why not): a pure function, so remembered (bounded)."""
    if len(value) > MAX_IDENTIFIER_LENGTH:
        return None, f"longer than {MAX_IDENTIFIER_LENGTH} characters"
    try:
        normalized = NORMALIZERS.get(id_type, normalize_id)(value, region)
    except InvalidIdentifier as exc:
        return None, str(exc)
    if id_type == "email" and email != NO_EMAIL_RULES:
        return email.apply(normalized), ""
    return normalized, ""


@dataclass(frozen=True, slots=True)
class Rejected:
    id_type: str
    reason: str


def normalize_all(
    raw: Mapping[str, str], region: str, email: EmailRules = NO_EMAIL_RULES
) -> tuple[dict[str, str], list[Rejected]]:
    """Normalize every identifier of an event; invalid ones are returned with a reason."""
    good: dict[str, str] = {}
    bad: list[Rejected] = []
    for id_type, value in raw.items():
        try:
            good[id_type] = normalize(id_type, value, region, email)
        except InvalidIdentifier as exc:
            bad.append(Rejected(id_type, str(exc)))
    return good, bad
