"""Profile state and the rule that folds touchpoints into it.

Issue #2 keys a profile by its event's highest-priority identifier; issue #4
replaces that keying with the identity graph. The state here is already built
to merge: identifiers and counters only grow, traits are last-writer-wins by
event time, so applying the same events in any order gives the same profile.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from profiles.touchpoint import Scalar, Touchpoint


def event_digest(event_id: str) -> str:
    """A short, fixed-size stand-in for an event id (64 bits: collisions within one
    profile are out of reach)."""
    return hashlib.blake2b(event_id.encode(), digest_size=8).hexdigest()


def profile_id_for(id_type: str, value: str) -> str:
    """A stable profile id for a (normalized) identifier; reveals nothing about it."""
    digest = hashlib.blake2b(f"{id_type}:{value}".encode(), digest_size=10).hexdigest()
    return f"p_{digest}"


def iso(ms: int) -> str:
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


@dataclass(slots=True)
class Profile:
    profile_id: str
    identifiers: dict[str, set[str]] = field(default_factory=dict)
    traits: dict[str, Scalar] = field(default_factory=dict)
    # trait -> (event time ms, event id): the write that currently holds the trait
    trait_stamps: dict[str, tuple[int, str]] = field(default_factory=dict)
    event_count: int = 0
    first_seen_ms: int | None = None
    last_seen_ms: int | None = None
    events_by_type: dict[str, int] = field(default_factory=dict)
    events_by_source: dict[str, int] = field(default_factory=dict)
    # digests of the event ids applied to this profile: a re-delivered event is skipped
    seen: set[str] = field(default_factory=set)
    version: int = 0

    # --- folding events ------------------------------------------------------
    def apply(self, event: Touchpoint, identifiers: dict[str, str]) -> None:
        """Fold one event (with its already-normalized identifiers) into the profile."""
        for id_type, value in identifiers.items():
            self.identifiers.setdefault(id_type, set()).add(value)
        stamp = (event.occurred_at_ms, event.event_id)
        for name, trait in event.traits.items():
            held = self.trait_stamps.get(name)
            if held is None or stamp > held:
                self.traits[name] = trait
                self.trait_stamps[name] = stamp
        self.event_count += 1
        t = event.occurred_at_ms
        self.first_seen_ms = t if self.first_seen_ms is None else min(self.first_seen_ms, t)
        self.last_seen_ms = t if self.last_seen_ms is None else max(self.last_seen_ms, t)
        self.events_by_type[event.type] = self.events_by_type.get(event.type, 0) + 1
        self.events_by_source[event.source] = self.events_by_source.get(event.source, 0) + 1

    def apply_all(self, items: Iterable[tuple[Touchpoint, dict[str, str]]]) -> int:
        """Fold a batch, skipping events whose id this profile has already applied
        (Kafka and Faust deliver at least once; a restart re-delivers, in any order).
        Returns how many events were applied."""
        applied = 0
        for event, identifiers in items:
            digest = event_digest(event.event_id)
            if digest in self.seen:
                continue
            self.seen.add(digest)
            self.apply(event, identifiers)
            applied += 1
        # The version counts applied events, not writes: a replay after a crash may
        # group events into other batches, and a count of writes could then come back
        # lower than a version the view already holds (which would refuse the update).
        self.version += applied
        return applied

    # --- forms ---------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """The full form kept in the worker's table (round-trips via from_state)."""
        return {
            "profile_id": self.profile_id,
            "identifiers": {t: sorted(v) for t, v in self.identifiers.items()},
            "traits": self.traits,
            "trait_stamps": {k: list(v) for k, v in self.trait_stamps.items()},
            "event_count": self.event_count,
            "first_seen_ms": self.first_seen_ms,
            "last_seen_ms": self.last_seen_ms,
            "events_by_type": self.events_by_type,
            "events_by_source": self.events_by_source,
            "seen": list(self.seen),
            "version": self.version,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Profile:
        return cls(
            profile_id=state["profile_id"],
            identifiers={t: set(v) for t, v in state["identifiers"].items()},
            traits=state["traits"],
            trait_stamps={k: (v[0], v[1]) for k, v in state["trait_stamps"].items()},
            event_count=state["event_count"],
            first_seen_ms=state["first_seen_ms"],
            last_seen_ms=state["last_seen_ms"],
            events_by_type=state["events_by_type"],
            events_by_source=state["events_by_source"],
            seen=set(state["seen"]),
            version=state["version"],
        )

    def to_view(self) -> dict[str, Any]:
        """The documented export / read form: profile_id, identifiers, traits, computed,
        version."""
        return {
            "profile_id": self.profile_id,
            "identifiers": {t: sorted(v) for t, v in sorted(self.identifiers.items())},
            "traits": dict(sorted(self.traits.items())),
            "computed": {
                "event_count": self.event_count,
                "first_seen": iso(self.first_seen_ms) if self.first_seen_ms is not None else None,
                "last_seen": iso(self.last_seen_ms) if self.last_seen_ms is not None else None,
                "events_by_type": dict(sorted(self.events_by_type.items())),
                "events_by_source": dict(sorted(self.events_by_source.items())),
            },
            "version": self.version,
        }
