"""The identity graph as message handlers over two partitioned tables (pure, no Kafka).

Two kinds of partitions, each owning a table:

* **identity**, keyed by identifier (``type:value``) → the profile that owns it.
* **profile**, keyed by profile id → the profile's state, or a redirect to the
  profile it was merged into.

Handlers take one message and the table of the partition it arrived at, change the
table, and return messages for other partitions. The streams layer carries those
messages on internal topics in batches; the simulator in the tests delivers them in
random interleavings. The protocol (DESIGN.md, "The hard part"):

1. ``Observe`` goes to the partition of the event's highest-priority identifier
   (the anchor), which finds its owner — or makes the anchor's own profile the
   owner — and sends ``Apply`` there.
2. ``Apply`` folds the event into the profile. For each other identifier the
   profile does not hold it checks the per-type limit (what it holds plus what it
   has asked for): over the limit the link is refused and recorded; otherwise it
   reserves the identifier and sends ``Claim`` to the identifier's partition.
3. ``Claim`` of an unowned identifier (or one the claimer owns) is ``Granted``.
   Owned by another profile, it is a merge: the larger id (the loser) is asked to
   ``Offer`` itself to the smaller (the winner). Ids only ever wait on smaller ids,
   so nothing deadlocks, and redirects never form a cycle.
4. The loser offers its whole state and, until the ``Answer``, holds back every
   message that reaches it. The winner checks the limits of both together: it
   absorbs the loser and says yes, or records the refusal and says no (and the
   claimer drops its reservation — that one only: every claim has an id, and the
   answers name it). A loser that was accepted becomes a redirect,
   re-points its identifiers, and forwards what it held back.
5. An identifier claimed by more than ``max_claimants`` profiles (owner included)
   stops linking: the identity partition answers later claimants ``Denied`` (recorded
   as a refusal), and an event it anchors is passed on to the event's next
   identifier by the owner — unless the owner already has the event, which makes a
   re-delivery from before the identifier was shared land where it landed the first
   time.
6. Every handler tolerates re-delivery (Kafka delivers at least once): a repeated
   claim is granted again, a repeated offer gets the answer the first one got
   (decisions travel with the state) without taking its reservations again, an answer
   or release names the claim it is for and settles nothing else, a repeated event is
   folded once.
7. Profile state merges by union (events keyed by event id, identifiers, refusals);
   traits and computed traits are functions of the event set (profiles.traits): the
   order of merges cannot change the result, and an event reaching a profile twice
   counts once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

from profiles.rules import IdentityRules
from profiles.traits import Purchase

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
    from profiles.profile import profile_id_for

    id_type, value = anchor.split(":", 1)
    return profile_id_for(id_type, value)


# --- messages -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EventFacts:
    """What a profile keeps of an event."""

    event_id: str
    type: str
    source: str
    time_ms: int
    traits: tuple[tuple[str, Any], ...] = ()
    purchase: Purchase | None = None  # an order or a POS sale
    consent: tuple[tuple[str, bool], ...] = ()  # purpose -> granted


@dataclass(frozen=True, slots=True)
class Observe:  # -> identity[anchor]
    anchor: Key
    ids: tuple[Key, ...]  # usable identifiers, highest priority first (anchor included)
    event: EventFacts
    refused: tuple[Refusal, ...] = ()  # shared identifiers passed over on the way


@dataclass(frozen=True, slots=True)
class Apply:  # -> profile[profile]
    profile: str
    ids: tuple[Key, ...]
    event: EventFacts
    granted_anchor: bool  # the anchor was unowned and now belongs to this profile
    refused: tuple[Refusal, ...] = ()
    # The anchor is shared: unless this profile already has the event (a re-delivery
    # from before the anchor was shared), pass it on to its next identifier.
    pass_over: bool = False


@dataclass(frozen=True, slots=True)
class Claim:  # -> identity[ident]
    ident: Key
    profile: str
    event_id: str
    claim: str  # the claim's id: every answer to it names it (see Reservation)


@dataclass(frozen=True, slots=True)
class Granted:  # -> profile[profile]
    profile: str
    ident: Key
    event_id: str


@dataclass(frozen=True, slots=True)
class Merge:  # -> profile[loser]
    loser: str
    winner: str
    via: Key
    claimer: str
    event_id: str
    claim: str


@dataclass(frozen=True, slots=True)
class Offer:  # -> profile[winner]
    winner: str
    loser: str
    state: ProfileState
    pending: frozenset[Reservation]  # the loser's reservations: they move with it
    via: Key
    claimer: str
    event_id: str
    claim: str


@dataclass(frozen=True, slots=True)
class Answer:  # -> profile[loser]
    loser: str
    winner: str
    accepted: bool
    via: Key
    claimer: str
    event_id: str
    claim: str
    rule: str = ""


@dataclass(frozen=True, slots=True)
class Denied:  # -> profile[profile]: a claim of a shared identifier, refused
    profile: str
    ident: Key
    event_id: str
    owner: str
    rule: str
    claim: str


@dataclass(frozen=True, slots=True)
class Release:  # -> profile[profile]: a reservation that will not be granted
    profile: str
    ident: Key
    claim: str  # only this reservation goes: a late duplicate must not drop a newer one


@dataclass(frozen=True, slots=True)
class Repoint:  # -> identity[ident]
    ident: Key
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Merged:  # -> the profile-merges output
    loser: str
    winner: str
    via: Key
    event_id: str


ProfileMsg = Apply | Granted | Merge | Offer | Answer | Release | Denied
IdentityMsg = Observe | Claim | Repoint
# (stage, key, message): stage "identity" or "profile" (a message for that partition),
# "merges" (a Merged for the output topic) or "refused" (key = the rule, for metrics)
Out = tuple[str, Key, Any]


def _counted(rule: str) -> Out:
    return ("refused", rule, None)


# --- profile state --------------------------------------------------------------------
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


@dataclass(slots=True)
class ProfileNode:
    state: ProfileState = field(default_factory=ProfileState)
    redirect: str | None = None
    pending: set[Reservation] = field(default_factory=set)  # claimed, not yet granted
    claims: int = 0  # claims this profile sent: numbers the next one
    offered_to: str | None = None  # waiting for this winner's answer
    offering: str | None = None  # the claim whose merge it offered itself for
    held_back: list[ProfileMsg] = field(default_factory=list)

    def reserved(self) -> set[Key]:
        return {ident for ident, _ in self.pending}

    def settle(self) -> None:
        """Reservations of identifiers now held are answered, whatever comes later."""
        self.pending = {r for r in self.pending if r[0] not in self.state.held}


def _over_limit(ids: Iterable[Key], rules: IdentityRules) -> str | None:
    counts = Counter(ident_type(i) for i in ids)
    for id_type, n in sorted(counts.items()):
        limit = rules.limit(id_type)
        if limit is not None and n > limit:
            return f"limit {id_type}={limit}"
    return None


# --- identity partitions ----------------------------------------------------------------
# An identity table value is the owner's profile id, then (space-separated) the other
# profiles that claimed the identifier, up to the rule's limit.
def owner_of(value: str) -> str:
    return value.split(" ", 1)[0]


def _entry(table: MutableMapping[Key, str], ident: Key) -> tuple[str | None, list[str]]:
    value = table.get(ident)
    if value is None:
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


def handle_identity(
    table: MutableMapping[Key, str], msg: IdentityMsg, max_claimants: int | None = None
) -> list[Out]:
    """`max_claimants`: an identifier claimed by more profiles than this (its owner
    included) stops linking — a shared POS phone, a household device.

    Decisions must not change when a message is delivered again after the identifier
    became shared: the profiles admitted before it filled up stay admitted (their
    claims merge again, a no-op), and an event anchored on it goes to its owner,
    which passes it on only if it does not have it yet."""
    if isinstance(msg, Observe):
        owner, claimants = _entry(table, msg.anchor)
        if owner is None:
            owner = table[msg.anchor] = profile_for(msg.anchor)
            return [("profile", owner, Apply(owner, msg.ids, msg.event, True, msg.refused))]
        shared = len(msg.ids) > 1 and _is_shared(claimants, max_claimants)
        apply = Apply(owner, msg.ids, msg.event, False, msg.refused, pass_over=shared)
        return [("profile", owner, apply)]
    if isinstance(msg, Claim):
        owner, claimants = _entry(table, msg.ident)
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
        winner, loser = sorted((owner, msg.profile))
        merge = Merge(loser, winner, msg.ident, msg.profile, msg.event_id, msg.claim)
        return [("profile", loser, merge)]
    if isinstance(msg, Repoint):
        owner, claimants = _entry(table, msg.ident)
        if owner == msg.old:
            # The old owner still counts as a profile that held it.
            _store(table, msg.ident, msg.new, [*claimants, msg.old])
        return []
    raise TypeError(f"not an identity message: {msg!r}")


# --- profile partitions -------------------------------------------------------------------
def handle_profile(
    table: dict[str, ProfileNode], msg: ProfileMsg, rules: IdentityRules
) -> list[Out]:
    key = _target(msg)
    node = table.get(key)
    if node is None:
        node = table[key] = ProfileNode()
    if isinstance(msg, Answer) and (node.redirect is not None or node.offering != msg.claim):
        return []  # a re-delivered answer to an offer already settled
    if node.redirect is not None:
        return _at_redirect(node, key, msg)
    if node.offered_to is not None and not isinstance(msg, Answer):
        node.held_back.append(msg)  # a loser waits for its answer
        return []
    return _live(table, node, key, msg, rules)


def _live(
    table: dict[str, ProfileNode],
    node: ProfileNode,
    key: str,
    msg: ProfileMsg,
    rules: IdentityRules,
) -> list[Out]:
    if isinstance(msg, Apply):
        return _apply(node, msg, rules)
    if isinstance(msg, Offer):
        return _offer(node, key, msg, rules)
    if isinstance(msg, Answer):
        return _answer(table, node, key, msg, rules)
    if isinstance(msg, Merge):
        return _merge(node, key, msg)
    if isinstance(msg, Granted):
        node.state.held.add(msg.ident)
        node.settle()
    elif isinstance(msg, Denied):
        node.pending.discard((msg.ident, msg.claim))
        node.state.refused.add(Refusal(msg.event_id, msg.ident, msg.owner, msg.rule))
        return [_counted(msg.rule)]
    elif isinstance(msg, Release):
        node.pending.discard((msg.ident, msg.claim))
    return []


def _merge(node: ProfileNode, key: str, msg: Merge) -> list[Out]:
    """This profile is the loser of a merge: offer itself, then wait for the answer."""
    node.offered_to = msg.winner
    node.offering = msg.claim
    offer = Offer(
        msg.winner,
        key,
        node.state.copy(),
        frozenset(node.pending),
        msg.via,
        msg.claimer,
        msg.event_id,
        msg.claim,
    )
    return [("profile", msg.winner, offer)]


def _target(msg: ProfileMsg) -> str:
    if isinstance(msg, Apply | Granted | Release | Denied):
        return msg.profile
    if isinstance(msg, Merge | Answer):
        return msg.loser
    return msg.winner  # Offer


def _at_redirect(node: ProfileNode, key: str, msg: ProfileMsg) -> list[Out]:
    """A profile merged away: messages follow the redirect (to a smaller id)."""
    to = node.redirect
    assert to is not None
    if isinstance(msg, Apply):
        forward = Apply(to, msg.ids, msg.event, msg.granted_anchor, msg.refused, msg.pass_over)
        return [("profile", to, forward)]
    if isinstance(msg, Granted):  # a claim answered after the merge: the winner owns it now
        return [
            ("identity", msg.ident, Repoint(msg.ident, key, to)),
            ("profile", to, Granted(to, msg.ident, msg.event_id)),
        ]
    if isinstance(msg, Release | Denied):
        return [("profile", to, replace(msg, profile=to))]
    if isinstance(msg, Merge):
        if msg.winner == to:
            return []
        winner, loser = sorted((to, msg.winner))
        merge = Merge(loser, winner, msg.via, msg.claimer, msg.event_id, msg.claim)
        return [("profile", loser, merge)]
    if isinstance(msg, Offer):
        return [("profile", to, replace(msg, winner=to))]
    raise AssertionError(f"{msg!r} reached redirect {key}")  # Answers were dropped above


def _apply(node: ProfileNode, msg: Apply, rules: IdentityRules) -> list[Out]:
    state = node.state
    out: list[Out] = []
    anchor = msg.ids[0]
    if msg.pass_over and msg.event.event_id not in state.events:
        passed = Refusal(
            msg.event.event_id, anchor, msg.profile, shared_rule(rules.max_claimants or 0)
        )
        rest = msg.ids[1:]
        observe = Observe(rest[0], rest, msg.event, (*msg.refused, passed))
        return [("identity", rest[0], observe), _counted(passed.rule)]
    if msg.granted_anchor and anchor not in state.held:
        state.held.add(anchor)
        node.settle()  # a loser may have handed over its claim of it
    state.fold(msg.event)
    if msg.granted_anchor:
        state.link(anchor, msg.event.event_id, "first seen")
    state.refused.update(msg.refused)
    reserved = node.reserved()
    for ident in msg.ids[1:]:
        if ident in state.held or ident in reserved:
            continue
        broken = _over_limit(state.held | reserved | {ident}, rules)
        if broken is not None:
            state.refused.add(Refusal(msg.event.event_id, ident, anchor, broken))
            out.append(_counted(broken))
            continue
        node.claims += 1
        claim = f"{msg.profile}.{node.claims}"
        node.pending.add((ident, claim))
        reserved.add(ident)
        state.link(ident, msg.event.event_id, f"seen with {anchor}")
        out.append(("identity", ident, Claim(ident, msg.profile, msg.event.event_id, claim)))
    return out


def _offer(node: ProfileNode, key: str, msg: Offer, rules: IdentityRules) -> list[Out]:
    repeat = _decided(node.state, msg)
    if repeat is not None:
        # A repeated offer (re-sent after a crash, or forwarded from a winner since
        # merged away — decisions travel with the state) gets the same answer, and its
        # reservations are not taken again: they may have been answered since.
        again = Answer(msg.loser, key, repeat == "", msg.via, msg.claimer, msg.event_id,
                       msg.claim, repeat)  # fmt: skip
        return [("profile", msg.loser, again)]
    theirs = {ident for ident, _ in msg.pending}
    rule = _over_limit(node.state.held | node.reserved() | msg.state.held | theirs, rules)
    if rule is not None:
        node.state.refused.add(Refusal(msg.event_id, msg.via, msg.loser, rule))
        answer = Answer(msg.loser, key, False, msg.via, msg.claimer, msg.event_id, msg.claim, rule)
        return [("profile", msg.loser, answer), _counted(rule)]
    node.state.merge(msg.state)
    node.pending |= msg.pending
    node.settle()
    node.state.merged.add((msg.loser, msg.via, msg.event_id))
    node.state.link(msg.via, msg.event_id, f"merged {msg.loser}")
    return [
        (
            "profile",
            msg.loser,
            Answer(msg.loser, key, True, msg.via, msg.claimer, msg.event_id, msg.claim),
        ),
        ("merges", key, Merged(msg.loser, key, msg.via, msg.event_id)),
    ]


def _decided(state: ProfileState, msg: Offer) -> str | None:
    """ "" if this offer was accepted before, the rule if it was refused, else None."""
    if (msg.loser, msg.via, msg.event_id) in state.merged:
        return ""
    for r in state.refused:
        if (r.event_id, r.ident, r.other) == (msg.event_id, msg.via, msg.loser):
            return r.rule
    return None


def _answer(
    table: dict[str, ProfileNode], node: ProfileNode, key: str, msg: Answer, rules: IdentityRules
) -> list[Out]:
    node.offered_to = node.offering = None
    held_back, node.held_back = node.held_back, []
    out: list[Out] = []
    if msg.accepted:
        node.redirect = msg.winner
        out += [("identity", i, Repoint(i, key, msg.winner)) for i in sorted(node.state.held)]
        # The winner took the reservations with the offer; their grants follow the redirect.
        node.state = ProfileState()
        node.pending = set()
    else:
        node.state.refused.add(Refusal(msg.event_id, msg.via, msg.winner, msg.rule))
        out.append(("profile", msg.claimer, Release(msg.claimer, msg.via, msg.claim)))
    for held in held_back:  # replayed in order: here, or along the new redirect
        out += handle_profile(table, held, rules)
    return out
