"""The sealed form of personal data (``profiles.privacy`` makes and opens it).

* ``~TOKEN.GEN.CIPHERTEXT`` — an identifier, sealed under its own key;
* ``~~TOKEN.GEN.NONCE+CIPHERTEXT`` — a personal trait, under its event's anchor's key;
* ``~!reason|~~…`` — an identifier that cannot be used (not normalizable, blocked):
  why, and the value as sent, sealed like a trait (an operator fixing a dead letter
  sees it; the graph never uses it).

``TOKEN`` is 22 characters of URL-safe base64 (a 128-bit keyed hash), ``GEN`` the
generation of the token's key. Only the format lives here, so the identity rules and
trait standardization can recognise sealed values without the cryptography.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

#: What a shredded value reads as: its key was destroyed.
ERASED = "[erased]"

_ID = re.compile(r"~([A-Za-z0-9_-]{22})\.(\d{1,9})\.([A-Za-z0-9_-]{22,})")
_TRAIT = re.compile(r"~~([A-Za-z0-9_-]{22})\.(\d{1,9})\.([A-Za-z0-9_-]{38,})")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


_FROM_URLSAFE = str.maketrans("-_", "+/")


def unb64(text: str) -> bytes:
    # binascii directly: base64.urlsafe_b64decode's Python layers cost 3x as much, and
    # a sync process opens a few values per profile change.
    return binascii.a2b_base64(text.translate(_FROM_URLSAFE) + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Sealed:
    """The parts of a sealed identifier or trait."""

    token: str
    gen: int
    body: str
    trait: bool


def parse(value: object) -> Sealed | None:
    """The parts of a sealed value; None for anything else (plain text, a number)."""
    if not isinstance(value, str) or not value.startswith("~"):
        return None
    if value.startswith("~~"):
        m = _TRAIT.fullmatch(value)
        return Sealed(m[1], int(m[2]), m[3], True) if m else None
    m = _ID.fullmatch(value)
    return Sealed(m[1], int(m[2]), m[3], False) if m else None


def is_sealed(value: object) -> bool:
    return parse(value) is not None


def unusable_reason(value: str) -> str | None:
    """Why an identifier could not be used when it was sealed (``~!reason|…``)."""
    return value[2:].split("|~~", 1)[0] if value.startswith("~!") else None


def unusable_value(value: str) -> str | None:
    """The sealed value sent for an identifier that could not be used, if kept."""
    if not value.startswith("~!"):
        return None
    _, sep, sealed = value.partition("|~~")
    return f"~~{sealed}" if sep else None


def token_of(value: str) -> str | None:
    """The token of a sealed identifier value, or None."""
    sealed = parse(value)
    return sealed.token if sealed is not None and not sealed.trait else None


def token_of_key(key: str) -> str | None:
    """The token of a graph key ``type:~TOKEN.GEN.CT``, or None for a plain one."""
    _, _, value = key.partition(":")
    return token_of(value)
