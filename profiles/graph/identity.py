"""Handlers of identity partitions: the identity table maps an identifier to its owner."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from profiles.graph.erase import MARK, forget, identity_erased
from profiles.graph.messages import (
    Apply,
    Claim,
    Denied,
    Disown,
    Forget,
    Granted,
    IdentityMsg,
    Merge,
    Observe,
    Out,
    Repoint,
)
from profiles.graph.state import Key, Refusal, ordered, profile_for, rank
from profiles.rules import SHARED, mark_of

NONE: Mapping[str, str] = {}


# An identity table value is the owner's profile id, then (space-separated) the other
# profiles that claimed the identifier, up to the rule's limit.
def owner_of(value: str) -> str:
    return value.split(" ", 1)[0]


#: The table value of an identifier its holder let go (``Disown``): no owner.
DISOWNED = "#"


def _entry(table: MutableMapping[Key, str], ident: Key) -> tuple[str | None, list[str]]:
    value = table.get(ident)
    if value is None or value == DISOWNED:
        return None, []
    owner, *claimants = value.split(" ")
    return owner, claimants


def _store(table: MutableMapping[Key, str], ident: Key, owner: str, claimants: list[str]) -> None:
    table[ident] = " ".join([owner, *sorted(set(claimants) - {owner})])


def shared_rule(max_claimants: int) -> str:
    return f"shared by more than {max_claimants} profiles"


def _is_shared(claimants: list[str], max_claimants: int | None) -> bool:
    """Full: the owner and the claimants already count `max_claimants` profiles."""
    return max_claimants is not None and 1 + len(claimants) >= max_claimants


def known_anchor(
    value: str | None, msg: Observe, max_claimants: int | None, marks: Mapping[str, str] = NONE
) -> Apply | None:
    """What the anchor's partition sends for an event whose anchor has an owner (its
    table value is ``value``), or None when it has none (the partition must take it).

    Reads only. That is what lets a worker skip the identity hop for an event whose
    anchor it finds in its own copy of the table, however old the copy: an owner is
    only ever replaced by the profile it merged into (its redirect forwards the event),
    and claimants only grow — a value once read is one the partition held, so the
    event is handled as if it had arrived then."""
    if value is None or value.startswith(MARK) or value == DISOWNED:
        return None  # unowned, or erased: the partition decides
    owner, *claimants = value.split(" ")
    shared = len(msg.ids) > 1 and (
        _is_shared(claimants, max_claimants) or (bool(marks) and mark_of(msg.anchor) in marks)
    )
    return Apply(owner, msg.ids, msg.event, False, msg.refused, pass_over=shared)


def handle_identity(  # noqa: PLR0911 - where each kind of message goes
    table: MutableMapping[Key, str],
    msg: IdentityMsg,
    max_claimants: int | None = None,
    marks: Mapping[str, str] = NONE,
) -> list[Out]:
    """`max_claimants`: an identifier claimed by more profiles than this (its owner
    included) stops linking — a shared POS phone, a household device. `marks`: what an
    operator marked (``IdentityRules.marks``): a marked identifier links nothing — a
    claim of it is refused (but its owner's, when only marked shared), and an event it
    anchors goes on to its next identifier (one with no other is dropped when blocked).

    Decisions must not change when a message is delivered again after the identifier
    became shared: the profiles admitted before it filled up stay admitted (their
    claims merge again, a no-op), and an event anchored on it goes to its owner,
    which passes it on only if it does not have it yet."""
    if isinstance(msg, Forget):
        owner, claimants = _entry(table, msg.ident)
        # Kept: a shared identifier; and, when an event (not a profile) names it, one
        # other profiles claimed (a link refused by a rule: not the person's alone).
        kept = owner is not None and (
            _is_shared(claimants, max_claimants) or (not msg.profile and bool(claimants))
        )
        value, out = forget(table.get(msg.ident), msg, kept)
        if value is not None:
            table[msg.ident] = value
        return out
    if isinstance(msg, Disown):
        owner, _ = _entry(table, msg.ident)
        # Its holder, or one it was merged from (whose re-point has not come yet).
        if owner is not None and not owner.startswith(MARK) and rank(msg.profile) <= rank(owner):
            table[msg.ident] = DISOWNED
        return []
    key = msg.anchor if isinstance(msg, Observe) else msg.ident
    erased = identity_erased(table.get(key), msg)
    if erased is not None:
        return erased
    mark = marks.get(mark_of(key)) if marks else None
    if mark is not None and not isinstance(msg, Repoint):
        marked = _marked(table, msg, mark)
        if marked is not None:
            return marked
    if isinstance(msg, Observe):
        apply = known_anchor(table.get(msg.anchor), msg, max_claimants)
        if apply is None:
            founder = table[msg.anchor] = profile_for(msg.anchor)
            apply = Apply(founder, msg.ids, msg.event, True, msg.refused)
        return [("profile", apply.profile, apply)]
    if isinstance(msg, Claim):
        return _claim(table, msg, max_claimants)
    if isinstance(msg, Repoint):
        owner, claimants = _entry(table, msg.ident)
        # An identifier only ever passes to a smaller profile (a merge's winner, a part
        # split off its holder): the smaller of two owners is the later one, whatever
        # order the re-points arrive in.
        if owner is not None and not owner.startswith(MARK) and rank(msg.new) < rank(owner):
            # The old owner still counts as a profile that held it — not when a split
            # moved it: the identifier did not meet another person.
            _store(table, msg.ident, msg.new, claimants if msg.moved else [*claimants, owner])
        return []
    raise TypeError(f"not an identity message: {msg!r}")


def _marked(table: MutableMapping[Key, str], msg: Observe | Claim, mark: str) -> list[Out] | None:
    """What becomes of a message about an identifier an operator marked; None: as usual
    (its owner's own claim of one marked shared, an event it alone anchors)."""
    owner, _ = _entry(table, msg.anchor if isinstance(msg, Observe) else msg.ident)
    if isinstance(msg, Claim):
        if mark == SHARED and owner == msg.profile and not msg.moved_to:
            return None  # its holder's own (not one that split it off since)
        denied = Denied(msg.profile, msg.ident, msg.event_id, owner or "", mark, msg.claim)
        return [("profile", msg.profile, denied)]
    rest = msg.ids[1:]
    if not rest:
        return None if mark == SHARED else [("dropped", mark, None)]
    passed = Refusal(msg.event.event_id, msg.anchor, owner or "", mark)
    return [("identity", rest[0], Observe(rest[0], rest, msg.event, (*msg.refused, passed))),
            ("refused", mark, None)]  # fmt: skip


def _claim(table: MutableMapping[Key, str], msg: Claim, max_claimants: int | None) -> list[Out]:
    owner, claimants = _entry(table, msg.ident)
    if msg.moved_to and (owner is None or owner == msg.profile):
        # The claimer split it off to a part whose re-point has not arrived: the part's.
        _store(table, msg.ident, msg.moved_to, claimants)
        owner = msg.moved_to
    if owner is None:
        table[msg.ident] = owner = msg.profile
    if owner == msg.profile:
        return [("profile", msg.profile, Granted(msg.profile, msg.ident, msg.event_id))]
    if max_claimants is not None and msg.profile not in claimants:
        if _is_shared(claimants, max_claimants):
            rule = shared_rule(max_claimants)
            denied = Denied(msg.profile, msg.ident, msg.event_id, owner, rule, msg.claim)
            return [("profile", msg.profile, denied)]
        _store(table, msg.ident, owner, [*claimants, msg.profile])
    winner, loser = ordered(owner, msg.profile)
    merge = Merge(
        loser, winner, msg.ident, msg.profile, msg.event_id, msg.claim, msg.time_ms, msg.anchor
    )
    return [("profile", loser, merge)]
