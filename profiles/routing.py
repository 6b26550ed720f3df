"""Where an event goes first, and the one check every way in makes.

An event is usable when at least one of its identifiers survives normalization and
the block list; it then goes to the identity partition of its highest-priority
identifier (the anchor). Partitions are chosen by our own stable hash and sent
explicitly, so no producer's default partitioner matters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from profiles.facts import facts_of
from profiles.graph.messages import Observe
from profiles.rules import IdentityRules, key, usable
from profiles.standardize import DEFAULT_INDEX
from profiles.touchpoint import InvalidTouchpoint, Touchpoint, parse_json


def partition_for(key: str, partitions: int) -> int:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def observe(
    tp: Touchpoint, rules: IdentityRules, region: str, aliases: Mapping[str, str] = DEFAULT_INDEX
) -> Observe:
    """The identity graph's first message for this event; ``InvalidTouchpoint`` when no
    identifier can be used (each dropped one is named with its reason)."""
    ids, dropped = usable(tp.identifiers, rules, region)
    if not ids:
        reasons = ", ".join(f"{t}: {why}" for t, why in dropped) or "none given"
        raise InvalidTouchpoint(f"no usable identifier ({reasons})")
    keys = tuple(key(i) for i in ids)
    return Observe(keys[0], keys, facts_of(tp, aliases))


def validate_event(doc: Any, rules: IdentityRules, region: str) -> Touchpoint:
    """The check every way in makes (SDK, collector, importers, ingest, replay), and the
    worker after it: the JSON form is valid and some identifier can be used."""
    tp = parse_json(doc, rules.priorities)
    observe(tp, rules, region)
    return tp
