"""A profile's state: a join-semilattice of what it holds, and the ids it is keyed by."""

from __future__ import annotations

from array import array
from bisect import bisect_left
from dataclasses import dataclass

from profiles.facts import EventFacts
from profiles.ledger import Ledger, entry_facts, entry_of, event_hash
from profiles.profile import profile_id_for
from profiles.totals import Totals

Key = str  # "type:value" for identifiers, "p_..." for profiles

#: An identifier a profile claimed and is waiting for, and the claim's id
#: (``"<profile>.<n>"``, unique: the claimer's n-th claim). Answers name the claim, so
#: a duplicate answer delivered late (after a crash re-sent it) cannot drop a newer
#: reservation of the same identifier.
Reservation = tuple[Key, str]


#: What joins a split profile's id to the part it names (``profiles.graph.split``).
PART_SEP = "~"


def rank(profile: str) -> tuple[int, str]:
    """The total order of profile ids: a merge's winner is the smaller, a redirect
    points to a smaller id, and a profile waits only on smaller ones. A part split off
    a profile (``P~…``) is smaller than every id with fewer splits behind it — so a
    profile's parts are smaller than it and than every profile that could be offering
    itself to it — and ids with as many are in string order (as before splits)."""
    return (-profile.count(PART_SEP), profile)


def ordered(a: str, b: str) -> tuple[str, str]:
    """(winner, loser) of two profile ids."""
    return (a, b) if rank(a) <= rank(b) else (b, a)


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


#: A split's block (``profiles.graph.split``): its name, and the two sides it keeps
#: apart — no event links an identifier of one side with one of the other again.
Block = tuple[str, frozenset[Key], frozenset[Key]]

#: How an identifier joined: (event id, how, that event's time in ms).
Link = tuple[str, str, int]
#: The time of an event not known where a link is recorded: sorts after every real one.
UNKNOWN_TIME = 2**63


class ProfileState:
    """A join-semilattice: ``merge`` is commutative, associative and idempotent.

    What it holds of its events costs the same to touch whatever their number:
    ``seen``, the sorted 64-bit hashes of their ids (the exact duplicate check, 8 bytes
    an event), ``totals``, their aggregates (``profiles.totals``), and ``ledger``, the
    events themselves, appended and read back only on merges."""

    __slots__ = (
        "base",
        "blocks",
        "dropped",
        "held",
        "ledger",
        "linked_by",
        "merged",
        "refused",
        "seen",
        "splits",
        "totals",
    )
    __hash__ = None  # type: ignore[assignment]  # mutable: compared, never hashed

    def __init__(
        self,
        held: set[Key] | None = None,
        seen: array[int] | None = None,
        totals: Totals | None = None,
        ledger: Ledger | None = None,
        refused: set[Refusal] | None = None,
        linked_by: dict[Key, Link] | None = None,
        merged: set[tuple[str, Key, str]] | None = None,
        blocks: dict[str, Block] | None = None,
        splits: set[str] | None = None,
        base: int = 0,
        dropped: set[tuple[Key, str]] | None = None,
    ) -> None:
        self.held: set[Key] = set() if held is None else held
        self.seen: array[int] = array("Q") if seen is None else seen
        self.totals = Totals() if totals is None else totals
        self.ledger = Ledger() if ledger is None else ledger
        self.refused: set[Refusal] = set() if refused is None else refused
        # identifier -> how it joined: for `profiles why`
        self.linked_by: dict[Key, Link] = {} if linked_by is None else linked_by
        self.merged: set[tuple[str, Key, str]] = set() if merged is None else merged
        # Splits: the blocks they left (by name), the splits this state went through (a
        # split asked again does nothing), and what its version counts besides its parts
        # (a split takes parts away, and a version must never go back).
        self.blocks: dict[str, Block] = {} if blocks is None else blocks
        self.splits: set[str] = set() if splits is None else splits
        self.base = base
        # Grants let go because a rule blocked the identifier meanwhile: (identifier,
        # the claiming event), ``profiles.graph.profile._settle``. Counted in the
        # version as the grant would have been (held, then taken away by the split).
        self.dropped: set[tuple[Key, str]] = set() if dropped is None else dropped

    def blocked(self, a: Key, b: Key) -> str | None:
        """The split that keeps ``a`` and ``b`` apart, if any."""
        for name, one, two in self.blocks.values():
            if (a in one and b in two) or (a in two and b in one):
                return name
        return None

    def size(self) -> int:
        """What a live profile's version counts (``profiles.projection.version_of``):
        every part only grows, and a split adds to ``base`` what it took away."""
        return (
            len(self.seen)
            + len(self.held)
            + len(self.refused)
            + len(self.merged)
            + len(self.dropped)
            + self.base
        )

    def has(self, event_id: str) -> bool:
        return _holds(self.seen, event_hash(event_id))

    def fold(self, event: EventFacts, ids: tuple[Key, ...] = ()) -> bool:
        """Take an event applied with identifiers ``ids`` (anchor first); False when it
        is held already."""
        h = event_hash(event.event_id)
        i = bisect_left(self.seen, h)
        if i < len(self.seen) and self.seen[i] == h:
            return False
        self.seen.insert(i, h)
        self.totals.fold(event)
        self.ledger.append(entry_of(event, ids))
        return True

    def event_ids(self) -> list[str]:
        """The ids of every event held (reads the whole ledger)."""
        return [e.event_id for e in self.ledger.events()]

    def link(self, ident: Key, event_id: str, how: str, time_ms: int = UNKNOWN_TIME) -> None:
        """Remember how an identifier joined: of all the ways, the earliest event's (then
        the smaller event id, then ``how``), so the explanation, too, is the same
        whatever the order of events and merges."""
        old = self.linked_by.get(ident)
        new = (event_id, how, time_ms)
        if old is None or (time_ms, event_id, how) < (old[2], old[0], old[1]):
            self.linked_by[ident] = new

    def merge(self, other: ProfileState) -> None:
        """Absorb ``other``. Events both hold (their hashes meet) are counted once: the
        sums lose what ``other``'s ledger says of them, and the ledger skips them."""
        self.held |= other.held
        shared = _common(self.seen, other.seen)
        totals = other.totals
        if shared:
            totals = totals.copy()
            for e in other.ledger.events():
                if event_hash(e.event_id) in shared:
                    totals.unfold_sums(e)
            self.ledger.adopt(other.ledger, lambda entry: _entry_hash(entry) in shared)
        else:
            self.ledger.adopt(other.ledger)
        self.totals.merge(totals)
        self.seen = _union(self.seen, other.seen)
        self.refused |= other.refused
        for ident, (event_id, how, time_ms) in other.linked_by.items():
            self.link(ident, event_id, how, time_ms)
        self.merged |= other.merged
        for name, block in other.blocks.items():
            self.blocks.setdefault(name, block)
        self.splits |= other.splits
        self.base = max(self.base, other.base)
        self.dropped |= other.dropped

    def copy(self) -> ProfileState:
        return ProfileState(
            set(self.held),
            array("Q", self.seen),
            self.totals.copy(),
            self.ledger.copy(),
            set(self.refused),
            dict(self.linked_by),
            set(self.merged),
            dict(self.blocks),
            set(self.splits),
            self.base,
            set(self.dropped),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProfileState):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in ProfileState.__slots__)

    def __repr__(self) -> str:
        return f"ProfileState(held={sorted(self.held)}, events={len(self.seen)})"


def _holds(seen: array[int], h: int) -> bool:
    i = bisect_left(seen, h)
    return i < len(seen) and seen[i] == h


def _common(a: array[int], b: array[int]) -> set[int]:
    small, big = (a, b) if len(a) <= len(b) else (b, a)
    return {h for h in small if _holds(big, h)}


def _union(a: array[int], b: array[int]) -> array[int]:
    if not b:
        return a
    return array("Q", sorted(set(a).union(b)))


def _entry_hash(entry: bytes) -> int:
    return event_hash(entry_facts(entry).event_id)
