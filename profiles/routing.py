"""Which profile an event belongs to, and which partition owns that profile.

Issue #2 keys a profile by the event's highest-priority identifier; the identity
graph of issue #4 replaces ``profile_key``. Partitions are chosen by our own
stable hash and sent explicitly, so no producer's default partitioner matters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from profiles.identifiers import Rejected, normalize_all, primary
from profiles.profile import profile_id_for
from profiles.touchpoint import InvalidTouchpoint, Touchpoint, parse_json


class RoutedItem(NamedTuple):
    """One event on its way to its profile's partition."""

    key: str
    identifiers: dict[str, str]
    event: Touchpoint


@dataclass(frozen=True, slots=True)
class Routed:
    key: str
    identifiers: dict[str, str]
    dropped: list[Rejected]


def partition_for(key: str, partitions: int) -> int:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def profile_key(tp: Touchpoint, priorities: Mapping[str, int], region: str) -> Routed:
    """Normalize the event's identifiers and pick its profile.

    Identifiers of unconfigured types and values that do not normalize are
    dropped (returned in ``dropped`` with the reason); an event left with none
    cannot be attached to anyone and raises InvalidTouchpoint.
    """
    known = {t: v for t, v in tp.identifiers.items() if t in priorities}
    ids, dropped = normalize_all(known, region)
    dropped += [Rejected(t, "unknown identifier type") for t in tp.identifiers if t not in known]
    if not ids:
        reasons = ", ".join(f"{r.id_type}: {r.reason}" for r in dropped) or "none given"
        raise InvalidTouchpoint(f"no usable identifier ({reasons})")
    return Routed(profile_id_for(*primary(ids, priorities)), ids, dropped)


def validate_event(doc: Any, priorities: Mapping[str, int], region: str) -> Touchpoint:
    """The check every way in makes (SDK, collector, importers, ingest, replay), and the
    worker after it: the JSON form is valid and some identifier can key a profile."""
    tp = parse_json(doc, priorities)
    profile_key(tp, priorities, region)
    return tp
