"""Data quality of the unified profiles, kept as each profile changes.

Each live profile contributes a few *tokens* (``tokens_of``):

* ``n`` — it is a profile;
* ``t:<trait>`` — it has that trait (completeness: the share of profiles with it);
* ``b:<bucket>`` — how many identifiers it holds (1, 2, 3-5, 6-10, 11+);
* ``m:<hash>`` — a *match key*: a keyed hash of its normalized first and last name with
  its postal code, or with its birth date. Two live profiles with the same match key
  were not merged (nothing linked them) yet look like one person: a duplicate
  candidate for review (``unifier quality duplicates``).

The Redis sink (``sinks.quality``) keeps, per profile, the tokens it last counted with
the profile's version, and applies only the difference to the totals — a replay or
a late write cannot count a profile twice. Pure: no Redis here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: The traits a match key is made of.
NAME = ("first_name", "last_name")
WITH = ("postal_code", "birth_date")
MATCH_TRAITS = (*NAME, *WITH)

#: Identifier-count buckets (upper bounds; the last is open).
BUCKETS = ((1, "1"), (2, "2"), (5, "3-5"), (10, "6-10"))


def bucket(n: int) -> str:
    for upper, name in BUCKETS:
        if n <= upper:
            return name
    return "11+"


_NOT_LETTERS = re.compile(r"[^a-z0-9]+")


def _name(value: Any) -> str:
    """A name as a duplicate check compares it: no accents, case, punctuation or
    spacing (``Zoë  O'Neil`` -> ``zoeoneil``)."""
    text = unicodedata.normalize("NFKD", str(value))
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return _NOT_LETTERS.sub("", text)


def _postal(value: Any) -> str:
    return re.sub(r"[^A-Z0-9]", "", str(value).upper())


def match_keys(traits: Mapping[str, Any], secret: bytes) -> list[str]:
    """The match keys of a profile's (opened) traits: ``np`` name + postal code, ``nb``
    name + birth date; none when a part is missing."""
    first, last = (_name(traits.get(t) or "") for t in NAME)
    if not first or not last:
        return []
    out = []
    for kind, trait, norm in (("np", "postal_code", _postal), ("nb", "birth_date", str)):
        value = traits.get(trait)
        if value in (None, ""):
            continue
        text = f"{kind}|{first}|{last}|{norm(value)[:10] if kind == 'nb' else norm(value)}"
        digest = hmac.digest(secret, text.encode(), "sha256")[:12].hex()
        out.append(f"m:{kind}:{digest}")
    return out


def tokens_of(
    view: Mapping[str, Any] | None,
    secret: bytes,
    opened: Callable[[Sequence[Any]], list[Any]] | None = None,
) -> list[str]:
    """A profile's tokens from its view (None, or a redirect: none). ``opened``: how to
    read sealed traits (``profiles.privacy.Sealer.open_many``), for the match keys."""
    if view is None or "merged_into" in view or "identifiers" not in view:
        return []
    traits = view.get("traits") or {}
    ids = sum(len(v) for v in view["identifiers"].values())
    out = ["n", f"b:{bucket(ids)}", *(f"t:{t}" for t in sorted(traits) if traits[t] not in
                                         (None, "", [], {}))]  # fmt: skip
    wanted = {t: traits[t] for t in MATCH_TRAITS if traits.get(t) not in (None, "")}
    if len(wanted) > 2 and all(t in wanted for t in NAME):
        if opened is not None:
            names = list(wanted)
            wanted = dict(zip(names, opened([wanted[t] for t in names]), strict=True))
        out += match_keys(wanted, secret)
    return out


def default_secret(app_id: str) -> bytes:
    """The match keys' secret when personal data is not sealed (no key store)."""
    return hashlib.sha256(f"unifier-quality|{app_id}".encode()).digest()
