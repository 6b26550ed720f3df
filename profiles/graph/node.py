"""What the profiles table holds per profile id: the state, or a redirect, with the
protocol's bookkeeping (reservations, the claim counter, a merge in flight and the
messages held back meanwhile)."""

from __future__ import annotations

from dataclasses import dataclass, field

from profiles.graph.messages import ProfileMsg
from profiles.graph.state import Key, ProfileState, Reservation


@dataclass(slots=True)
class ProfileNode:
    state: ProfileState = field(default_factory=ProfileState)
    redirect: str | None = None
    pending: set[Reservation] = field(default_factory=set)  # claimed, not yet granted
    claims: int = 0  # claims this profile sent: numbers the next one
    offered_to: str | None = None  # waiting for this winner's answer
    offering: str | None = None  # the claim whose merge it offered itself for
    held_back: list[ProfileMsg] = field(default_factory=list)
    # Segment membership (``profiles.segments.Entry`` by segment name), and how many
    # times it changed: part of the profile's version.
    segments: dict[str, list[int]] = field(default_factory=dict)
    segment_moves: int = 0
    # Erased (a privacy request): (the receipt, whether later events are suppressed).
    # The node keeps nothing else; messages that reach it are answered by
    # ``profiles.graph.erase``.
    erased: tuple[str, bool] | None = None
    # Split (``profiles.graph.split``): where the identifiers it split off went (a
    # message about one of them is passed on there, whatever this node became since),
    # the claims whose reservations went with them, and the split that made this node
    # (a part: the split delivered again makes it once).
    moved: dict[Key, str] = field(default_factory=dict)
    moved_claims: set[str] = field(default_factory=set)
    spawned: str | None = None
    # A redirect whose profile's first identifier went to a part: what its view names
    # (reads land where that customer is now). ``redirect`` still routes: what reaches
    # this node about an identifier it once held is the survivor's to pass on.
    shown_as: str | None = None
    # Where its view stands in the log: "partition:offset" of the profile stage's input
    # record whose batch last changed its version (``streams.profile``).
    position: str | None = None

    def reserved(self) -> set[Key]:
        return {ident for ident, _ in self.pending}

    def settle(self) -> None:
        """Reservations of identifiers now held are answered, whatever comes later."""
        self.pending = {r for r in self.pending if r[0] not in self.state.held}
