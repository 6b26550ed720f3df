"""Handlers of profile partitions: apply events, claim identifiers, merge two-phase."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from profiles.graph.erase import at_erased, erase
from profiles.graph.identity import shared_rule
from profiles.graph.messages import (
    Answer,
    Apply,
    Claim,
    Denied,
    Disown,
    Erase,
    Evaluate,
    Granted,
    Merge,
    Merged,
    Observe,
    Offer,
    Out,
    ProfileMsg,
    Readdress,
    Release,
    Repoint,
    Spawn,
    Split,
    SplitOff,
    Unindexed,
    _counted,
)
from profiles.graph.node import ProfileNode
from profiles.graph.split import SPLIT_RULE, plan_recluster, plan_split
from profiles.graph.state import (
    PART_SEP,
    Key,
    ProfileState,
    Refusal,
    ident_type,
    ordered,
    rank,
)
from profiles.ledger import ident_hash
from profiles.rules import BLOCKED, IdentityRules, mark_of


def _over_limit(ids: Iterable[Key], rules: IdentityRules) -> str | None:
    counts = Counter(ident_type(i) for i in ids)
    for id_type, n in sorted(counts.items()):
        limit = rules.limit(id_type)
        if limit is not None and n > limit:
            return f"limit {id_type}={limit}"
    return None


def handle_profile(  # noqa: PLR0911 - where each kind of message goes
    table: dict[str, ProfileNode], msg: ProfileMsg, rules: IdentityRules
) -> list[Out]:
    if isinstance(msg, Evaluate):
        table.get(msg.profile)  # read, so the batch's segment pass sees it
        return []
    key = _target(msg)
    node = table.get(key)
    if node is None:
        node = table[key] = ProfileNode()
    if isinstance(msg, Spawn | Readdress):
        if isinstance(msg, Readdress):
            return _readdress(node, msg)
        return _spawn(table, node, key, msg, rules)
    if PART_SEP in key and node.spawned is None and node.erased is None:
        # A part whose Spawn has not come yet (it travels on a channel of its own):
        # nothing about it can be decided without its state — asked to merge, it would
        # offer itself without what it holds, and the Spawn would land on a redirect.
        # Held back until the Spawn, then replayed.
        node.held_back.append(msg)
        return []
    if node.moved:  # about an identifier split off: its part's, whatever this node is now
        passed = pass_on(node, key, msg)
        if passed is not None:
            return passed
    if node.erased is not None:
        return at_erased(node, key, msg, shared_rule(rules.max_claimants or 0))
    if isinstance(msg, Answer) and (node.redirect is not None or node.offering != msg.claim):
        return []  # a re-delivered answer to an offer already settled
    if node.redirect is not None:
        return _at_redirect(table, node, key, msg)
    if node.offered_to is not None and not isinstance(msg, Answer):
        node.held_back.append(msg)  # a loser waits for its answer
        return []
    return _live(table, node, key, msg, rules)


def _live(  # noqa: PLR0911 - a branch per kind of message
    table: dict[str, ProfileNode],
    node: ProfileNode,
    key: str,
    msg: ProfileMsg,
    rules: IdentityRules,
) -> list[Out]:
    if isinstance(msg, Apply):
        return _apply(node, msg, rules)
    if isinstance(msg, Erase):
        return erase(table, node, key, msg)
    if isinstance(msg, Offer):
        return _offer(node, key, msg, rules)
    if isinstance(msg, Answer):
        return _answer(table, node, key, msg, rules)
    if isinstance(msg, Merge):
        if msg.winner == key:
            return []  # its own claim met itself (``_at_redirect``): linked already
        return _merge(node, key, msg)
    if isinstance(msg, Split):
        return _split(node, key, msg)
    return _settle(node, key, msg, rules)


def refuse(state: ProfileState, key: str, refusal: Refusal, counted: bool = True) -> list[Out]:
    """Record a refused link in the profile ``key``; the outputs: its count (metrics,
    unless counted where it was refused) and, the first time, its audit record."""
    out = [_counted(refusal.rule)] if counted else []
    if refusal not in state.refused:
        state.refused.add(refusal)
        out.append(("audit", key, refusal))
    return out


def _settle(node: ProfileNode, key: str, msg: ProfileMsg, rules: IdentityRules) -> list[Out]:
    """A claim answered: granted, denied (a shared identifier) or released."""
    if isinstance(msg, Granted):
        state = node.state
        grant = (msg.ident, msg.event_id)
        if msg.ident not in state.held and (
            grant in state.dropped
            or (rules.marks and rules.marks.get(mark_of(msg.ident)) == BLOCKED)
        ):
            # Granted before a rule blocked it: the answer to a claim a block split found
            # pending, or one delivered again after it. Not held (it would come back
            # after the split let it go): let go again, its index key with it. The first
            # answer to a pending claim is recorded — the same grant delivered again is
            # let go whatever the rules are by then — and counted in the version as a
            # grant the split took away would be: whichever came first, and in whichever
            # profile of a merge, the profile ends at one version.
            if msg.ident in node.reserved():
                node.pending = {r for r in node.pending if r[0] != msg.ident}
                state.dropped.add(grant)
            return [
                ("identity", msg.ident, Disown(msg.ident, key)),
                ("unindexed", key, Unindexed(key, (msg.ident,))),
            ]
        state.held.add(msg.ident)
        node.settle()
    elif isinstance(msg, Denied):
        node.pending.discard((msg.ident, msg.claim))
        return refuse(
            node.state, msg.profile, Refusal(msg.event_id, msg.ident, msg.owner, msg.rule)
        )
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
        msg.time_ms,
        msg.anchor,
    )
    return [("profile", msg.winner, offer)]


def _target(msg: ProfileMsg) -> str:
    if isinstance(msg, Apply | Granted | Release | Denied | Evaluate | Erase | Split | Spawn
                  | Readdress):  # fmt: skip
        return msg.profile
    if isinstance(msg, Merge | Answer):
        return msg.loser
    return msg.winner  # Offer


def _at_redirect(
    table: dict[str, ProfileNode], node: ProfileNode, key: str, msg: ProfileMsg
) -> list[Out]:
    """A profile merged away: messages follow the redirect (to a smaller id)."""
    to = node.redirect
    assert to is not None
    if isinstance(msg, Erase):
        return (
            [("profile", to, replace(msg, profile=to))]
            if msg.follow
            else erase(table, node, key, msg)
        )
    if isinstance(msg, Apply):
        forward = Apply(to, msg.ids, msg.event, msg.granted_anchor, msg.refused, msg.pass_over)
        return [("profile", to, forward)]
    if isinstance(msg, Granted):  # a claim answered after the merge: the winner owns it now
        return [
            ("identity", msg.ident, Repoint(msg.ident, key, to)),
            ("profile", to, Granted(to, msg.ident, msg.event_id)),
        ]
    if isinstance(msg, Release | Denied | Offer | Split):
        forwarded = replace(msg, winner=to) if isinstance(msg, Offer) else replace(msg, profile=to)
        return [("profile", to, forwarded)]
    if isinstance(msg, Merge):
        return _merge_at_redirect(key, to, msg)
    raise AssertionError(f"{msg!r} reached redirect {key}")  # Answers were dropped above


def _merge_at_redirect(key: str, to: str, msg: Merge) -> list[Out]:
    """A merge of a profile merged away into ``to``: between ``to`` and the winner."""
    if msg.winner == to:
        # Merged already — but a claim of the survivor's own may have gone to a part it
        # split off since: the survivor says (``pass_on``; else it drops it).
        return [("profile", to, replace(msg, loser=to))] if msg.claimer == to else []
    if msg.winner == key:
        return []  # its own claim met itself: linked already
    winner, loser = ordered(to, msg.winner)
    return [("profile", loser, replace(msg, loser=loser, winner=winner))]


def _apply(node: ProfileNode, msg: Apply, rules: IdentityRules) -> list[Out]:
    state = node.state
    out: list[Out] = []
    anchor = msg.ids[0]
    if msg.pass_over and not state.has(msg.event.event_id):
        passed = Refusal(
            msg.event.event_id, anchor, msg.profile, shared_rule(rules.max_claimants or 0)
        )
        rest = msg.ids[1:]
        observe = Observe(rest[0], rest, msg.event, (*msg.refused, passed))
        return [("identity", rest[0], observe), _counted(passed.rule)]
    if msg.granted_anchor and anchor not in state.held:
        state.held.add(anchor)
        node.settle()  # a loser may have handed over its claim of it
    state.fold(msg.event, msg.ids)
    time_ms = msg.event.time_ms
    if msg.granted_anchor:
        state.link(anchor, msg.event.event_id, "first seen", time_ms)
    for carried in msg.refused:  # links refused on the way here (a shared anchor passed over)
        out += refuse(state, msg.profile, carried, counted=False)
    reserved = node.reserved()
    for ident in msg.ids[1:]:
        if ident in state.held or ident in reserved:
            continue
        if state.blocks and state.blocked(anchor, ident) is not None:
            out += refuse(
                state, msg.profile, Refusal(msg.event.event_id, ident, anchor, SPLIT_RULE)
            )
            continue
        broken = _over_limit(state.held | reserved | {ident}, rules)
        if broken is not None:
            out += refuse(state, msg.profile, Refusal(msg.event.event_id, ident, anchor, broken))
            continue
        node.claims += 1
        claim = f"{msg.profile}.{node.claims}"
        node.pending.add((ident, claim))
        reserved.add(ident)
        state.link(ident, msg.event.event_id, f"seen with {anchor}", time_ms)
        moved_to = node.moved.get(ident, "")
        claim_msg = Claim(ident, msg.profile, msg.event.event_id, claim, time_ms, moved_to, anchor)
        out.append(("identity", ident, claim_msg))
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
    if (
        msg.anchor
        and (node.state.blocked(msg.anchor, msg.via) or msg.state.blocked(msg.anchor, msg.via))
        and not _linked_otherwise(node.state, msg.state, msg.via)
    ):
        # A claim made before its claimer knew of a split that keeps the two apart.
        rule = SPLIT_RULE
    if rule is not None:
        answer = Answer(msg.loser, key, False, msg.via, msg.claimer, msg.event_id, msg.claim, rule)
        refused = Refusal(msg.event_id, msg.via, msg.loser, rule)
        return [("profile", msg.loser, answer), *refuse(node.state, key, refused)]
    node.state.merge(msg.state)
    node.pending |= msg.pending
    node.settle()
    node.state.merged.add((msg.loser, msg.via, msg.event_id))
    node.state.link(msg.via, msg.event_id, f"merged {msg.loser}", msg.time_ms)
    return [
        (
            "profile",
            msg.loser,
            Answer(msg.loser, key, True, msg.via, msg.claimer, msg.event_id, msg.claim),
        ),
        ("merges", key, Merged(msg.loser, key, msg.via, msg.event_id)),
        *_claims_of_moved(node, key, msg),
    ]


def _claims_of_moved(node: ProfileNode, key: str, msg: Offer) -> list[Out]:
    """The loser had claimed an identifier this profile split off: a link with its part
    (the answer to the claim may never say so — it goes to the loser, whose redirect
    leads here, where the identifier is not). This profile merges with the part."""
    out: list[Out] = []
    for ident, claim in sorted(msg.pending):
        to = node.moved.get(ident)
        if to is None:
            continue
        event_id = msg.state.linked_by.get(ident, (msg.event_id, "", 0))[0]
        anchor = _anchor_of(msg.state, event_id, node.state.held | msg.state.held)
        if anchor and node.state.blocked(anchor, ident):
            node.pending.discard((ident, claim))
            out += refuse(node.state, key, Refusal(event_id, ident, anchor, SPLIT_RULE))
            continue
        out.append(("profile", key, Merge(key, to, ident, key, event_id, claim, anchor=anchor)))
    return out


def _anchor_of(state: ProfileState, event_id: str, held: set[Key]) -> Key:
    """The anchor an event of this state was applied with, among ``held`` ("" if not
    known). Reads the ledger: only for the rare claim that meets a split."""
    for _entry, facts, ids in state.ledger.events_with_ids():
        if facts.event_id == event_id and ids:
            return next((k for k in held if ident_hash(k) == ids[0]), "")
    return ""


def _linked_otherwise(winner: ProfileState, loser: ProfileState, via: Key) -> bool:
    """Whether an event of the side that claimed ``via`` (the one of the two that does
    not hold it) links it with an identifier that side holds, across no block. A claim
    stands for every event that named the identifier while it was reserved (those were
    not claimed again), but carries the anchor of the first only: a split that came
    meanwhile may block that one link — and keep the reservation on the side of another
    (``plan_split`` reads them all). Reads the ledger: only for a claim a block met."""
    side = winner if via in loser.held else loser
    held = {ident_hash(k): k for k in side.held if k != via}
    refused = {(r.event_id, r.ident) for r in side.refused}
    hashed = ident_hash(via)
    for _entry, facts, ids in side.ledger.events_with_ids():
        if not ids or hashed not in ids:
            continue
        # The event's links: its anchor with each other identifier (refused: not one).
        at = [(ids[0], via)] if ids[0] != hashed else [(i, "") for i in ids[1:]]
        for h, linked in at:
            other = held.get(h)
            if (
                other is not None
                and (facts.event_id, linked or other) not in refused
                and not (winner.blocked(other, via) or loser.blocked(other, via))
            ):
                return True
    return False


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


# --- splits (profiles.graph.split) ---------------------------------------------------


def _split(node: ProfileNode, key: str, msg: Split) -> list[Out]:
    """Split a live profile: it keeps the rest, each part starts as a profile of its own
    (``Spawn``), and the profile remembers where the identifiers went."""
    if msg.name in node.state.splits:
        return []  # asked again (a re-delivery): done once
    if msg.kind == "detach":
        plan = plan_split(key, node.state, node.pending, msg.detach, msg.name)
    else:
        plan = plan_recluster(key, node.state, node.pending, msg.name, msg.kind, msg.detach,
                              dict(msg.limits))  # fmt: skip
    if plan is None:  # nothing to do: done (its version moves, so who asked sees it done)
        node.state.splits.add(msg.name)
        node.state.base += 1
        return [("dropped", "split: nothing changes", None)]
    kept = plan.main.state.held.union(*(part.state.held for part in plan.parts))
    dropped = tuple(sorted(node.state.held - kept))  # a rule now blocks them
    node.state = plan.main.state
    node.pending = plan.main.pending
    node.moved_claims |= plan.moved_claims
    out: list[Out] = [("identity", i, Disown(i, key)) for i in dropped]
    if dropped:
        out.append(("unindexed", key, Unindexed(key, dropped)))
    for part in plan.parts:
        node.moved.update(dict.fromkeys(part.ids, part.profile))
        spawn = Spawn(part.profile, key, msg.name, part.state, frozenset(part.pending))
        out.append(("profile", part.profile, spawn))
        moved = tuple(sorted(part.ids))
        out.append(("merges", key, SplitOff(key, part.profile, moved, msg.name, msg.rule)))
    out += [
        ("profile", loser, Readdress(loser, to, msg.name))
        for loser, to in sorted(plan.readdress.items())
    ]
    return out


def _spawn(
    table: dict[str, ProfileNode], node: ProfileNode, key: str, msg: Spawn, rules: IdentityRules
) -> list[Out]:
    """A part starts: it takes the state it was given (once), the index of each
    identifier it holds is pointed at it, and what reached it before is handled now."""
    if node.spawned == msg.name or node.erased is not None:
        return []
    node.spawned = msg.name
    node.state.merge(msg.state.copy())
    node.pending |= msg.pending
    node.settle()
    out: list[Out] = [
        ("identity", i, Repoint(i, msg.source, key, moved=True)) for i in sorted(msg.state.held)
    ]
    held_back, node.held_back = node.held_back, []
    for held in held_back:  # replayed in order
        out += handle_profile(table, held, rules)
    return out


def _readdress(node: ProfileNode, msg: Readdress) -> list[Out]:
    """A profile merged away whose first identifier went to a part: its view names the
    part (only ever a smaller id, so a late one cannot undo a later one)."""
    shown = node.shown_as or node.redirect
    if shown is not None and rank(msg.to) < rank(shown):
        node.shown_as = msg.to
    return []


def pass_on(  # noqa: PLR0911 - a branch per kind of message
    node: ProfileNode, key: str, msg: ProfileMsg
) -> list[Out] | None:
    """What a profile that split does with a message about an identifier it split off
    (None: not about one, or about a claim it made itself since): the part gets it."""
    moved = node.moved
    if isinstance(msg, Apply):
        anchor = msg.ids[0]
        to = moved.get(anchor)
        if to is None or anchor in node.state.held:
            return None
        return [("profile", to, replace(msg, profile=to))]
    if isinstance(msg, Granted):  # a claim from before the split: the part's now
        to = moved.get(msg.ident)
        if to is None or msg.ident in node.state.held:
            return None
        return [
            ("identity", msg.ident, Repoint(msg.ident, key, to, moved=True)),
            ("profile", to, replace(msg, profile=to)),
        ]
    if isinstance(msg, Denied | Release):
        to = moved.get(msg.ident)
        if to is None or msg.claim not in node.moved_claims:
            return None
        return [("profile", to, replace(msg, profile=to))]
    if isinstance(msg, Merge | Offer):
        to = moved.get(msg.via)
        theirs = msg.claimer != key  # claimed by another profile: it met the identifier
        if to is None:
            return None
        if not theirs and msg.claim not in node.moved_claims:
            # Its own claim, which stayed: made since (None), or one from before the
            # split, decided then and sent again (``_repeated``).
            return _repeated(node, key, msg, to)
        if isinstance(msg, Offer):
            return [("profile", to, replace(msg, winner=to))]
        if msg.winner == key:  # the claim met this profile itself (``_at_redirect``)
            return _met_itself(node, key, msg, to)
        if msg.winner == to:  # the part is the owner the claim met: it holds it
            return [
                ("identity", msg.via, Repoint(msg.via, key, to, moved=True)),
                ("profile", to, Granted(to, msg.via, msg.event_id)),
            ]
        winner, loser = ordered(to, msg.winner)
        return [("profile", loser, replace(msg, loser=loser, winner=winner))]
    return None


def _met_itself(node: ProfileNode, key: str, msg: Merge, to: str) -> list[Out] | None:
    """A claim that went to the part ``to`` met this profile: the claim's identifier
    was another profile's, which merged into this one since (its merge, held back
    there or late, was passed on by its redirect). The part and this profile (or the
    one it was merged into since) hold the two ends of the link: they merge."""
    if node.erased is not None:
        return None  # (dropped there)
    if node.redirect is not None:
        winner, loser = ordered(to, node.redirect)
        return [("profile", loser, replace(msg, loser=loser, winner=winner))]
    if node.offered_to is not None:
        return None  # held back until its own merge is answered, then asked again
    return _merge(node, key, replace(msg, winner=to))  # (a part is the smaller id)


def _repeated(node: ProfileNode, key: str, msg: Merge | Offer, to: str) -> list[Out] | None:
    """A merge or an offer for a claim this profile made of an identifier it split off
    since, the claim not among those that moved with it (None: one it made since).

    A claim it made before the split and saw answered then can come again: re-sent by
    a restart that lost the table's writes (the profile replays its input from before
    the split, and its outputs go out again), or its merge or offer delivered twice.
    Met now where the identifier is (its part, or a smaller id), it would join this
    profile, or the profile merged into it then, with what went to the part — across
    the split's block — while the link is one the part has already.

    * an offer (this profile the winner: the claim met a larger owner) was decided
      before the split: it gets the answer it got, and what it offers is not taken
      again. The decision is recorded here, or went with the identifier to its part
      ``to`` (``split._plan``), accepted or refused: the offer is asked there;
    * a merge (this profile the loser) of a claim it no longer waits for (it is
      neither reserved here nor moved), made for an event anchored on an identifier
      it split off: nothing waits for it; dropped. (Anchored on one it kept, a merge
      meets the block where it is offered, and is refused there.)"""
    if (msg.via, msg.claim) in node.pending:
        return None  # still waited for here: not a repeat
    if isinstance(msg, Offer):
        rule = _decided(node.state, msg)
        if rule is None:
            return [("profile", to, replace(msg, winner=to))]
        again = Answer(msg.loser, key, not rule, msg.via, msg.claimer, msg.event_id,
                       msg.claim, rule)  # fmt: skip
        return [("profile", msg.loser, again)]
    anchor = msg.anchor
    stale = bool(anchor) and anchor in node.moved and anchor not in node.state.held
    return [] if stale else None
