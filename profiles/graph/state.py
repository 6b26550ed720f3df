"""A profile's state: a join-semilattice of what it holds, and the ids it is keyed by."""

from __future__ import annotations

from dataclasses import dataclass, field

from profiles.facts import EventFacts
from profiles.profile import profile_id_for

Key = str  # "type:value" for identifiers, "p_..." for profiles

#: An identifier a profile claimed and is waiting for, and the claim's id
#: (``"<profile>.<n>"``, unique: the claimer's n-th claim). Answers name the claim, so
#: a duplicate answer delivered late (after a crash re-sent it) cannot drop a newer
#: reservation of the same identifier.
Reservation = tuple[Key, str]


def ident_type(ident: Key) -> str:
    return ident.split(":", 1)[0]


def profile_for(anchor: Key) -> str:
    """The profile an identifier founds when it is first seen."""
    id_type, value = anchor.split(":", 1)
    return profile_id_for(id_type, value)


@dataclass(frozen=True, slots=True)
class Refusal:
    event_id: str
    ident: Key
    other: str  # the profile or identifier the link would have joined
    rule: str


@dataclass(slots=True)
class ProfileState:
    """A join-semilattice: ``merge`` is commutative, associative and idempotent."""

    held: set[Key] = field(default_factory=set)
    # Traits and computed traits are functions of this set (profiles.traits).
    events: dict[str, EventFacts] = field(default_factory=dict)
    refused: set[Refusal] = field(default_factory=set)
    # identifier -> (event id, how it joined): for `profiles why`
    linked_by: dict[Key, tuple[str, str]] = field(default_factory=dict)
    merged: set[tuple[str, Key, str]] = field(default_factory=set)  # (loser, via, event id)

    def fold(self, event: EventFacts) -> bool:
        if event.event_id in self.events:
            return False
        self.events[event.event_id] = event
        return True

    def link(self, ident: Key, event_id: str, how: str) -> None:
        """Remember how an identifier joined: of all the ways, the earliest event's (then
        the smaller event id, then ``how``), so the explanation, too, is the same
        whatever the order of events and merges."""
        old = self.linked_by.get(ident)
        if old is None or self._earlier((event_id, how), old):
            self.linked_by[ident] = (event_id, how)

    def _earlier(self, a: tuple[str, str], b: tuple[str, str]) -> bool:
        def order(why: tuple[str, str]) -> tuple[int, str, str]:
            event = self.events.get(why[0])
            return (event.time_ms if event is not None else 2**63, *why)

        return order(a) < order(b)

    def merge(self, other: ProfileState) -> None:
        self.held |= other.held
        for event in other.events.values():
            self.fold(event)
        self.refused |= other.refused
        for ident, (event_id, how) in other.linked_by.items():
            self.link(ident, event_id, how)
        self.merged |= other.merged

    def copy(self) -> ProfileState:
        return ProfileState(
            set(self.held),
            dict(self.events),
            set(self.refused),
            dict(self.linked_by),
            set(self.merged),
        )
