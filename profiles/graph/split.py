"""Splitting a profile: what a wrong merge joined comes apart, exactly.

A profile keeps every event with the identifiers it was applied with (its ledger), so
the links that made it can be read back: an event links its anchor (first identifier)
with each of its others, unless that link was refused. ``plan_split`` cuts the
profile along the identifiers asked for:

* the *rest* is the largest group (by events) of the identifiers not detached that
  stay linked without them — it keeps the profile's id;
* everything else — the detached identifiers, and what was linked to the rest only
  through them — is the *split side*, one part per group still linked within it;
* a **block** records the two sides: no event links an identifier of one with one of
  the other again (the same evidence cannot merge them back; an event naming both
  links each to its anchor's side only, its other link refused as ``split``);
* each event goes to the part holding its anchor, and every part's state is made
  again from its own events (traits, computed traits, counts); its reservations,
  refusals, merges and explanations go with the identifiers they are about.

Parts are named ``<profile>~<8 hex>`` (``profiles.graph.state.rank``: smaller than the
profile, so a message that follows an identifier to its part never waits on a larger
id). The profile keeps a map of the identifiers that left (``ProfileNode.moved``):
what still reaches it about them — an event anchored on one, an answer to a claim
that moved — is passed on to their part, until every index names the part. A part does
nothing before its ``Spawn`` (which can come after messages sent on other channels):
what reaches it first is held back, then handled.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from hashlib import blake2b

from profiles.facts import EventFacts
from profiles.graph.state import (
    PART_SEP,
    Block,
    Key,
    ProfileState,
    Reservation,
    ident_type,
    profile_for,
)
from profiles.ledger import event_hash, ident_hash

#: The refusal rule of a link a split's block refused.
SPLIT_RULE = "split"


def part_id(profile: str, name: str, n: int) -> str:
    digest = blake2b(f"{name}/{n}".encode(), digest_size=4).hexdigest()
    return f"{profile}{PART_SEP}{digest}"


@dataclass
class Part:
    profile: str
    ids: set[Key]  # held and reserved
    state: ProfileState = field(default_factory=ProfileState)
    pending: set[Reservation] = field(default_factory=set)


@dataclass
class SplitPlan:
    main: Part  # keeps the profile's id
    parts: list[Part]  # the others, each a new profile
    block: Block | None  # the split's block (a rule applied to the past needs none)
    readdress: dict[str, str]  # profile merged away -> the part its redirect now names
    moved_claims: set[str]  # claims whose reservations went to a part


class _Groups:
    """Union-find over identifiers."""

    def __init__(self, nodes: Iterable[Key]) -> None:
        self.parent = {n: n for n in nodes}

    def find(self, x: Key) -> Key:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def join(self, a: Key, b: Key) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[set[Key]]:
        out: dict[Key, set[Key]] = {}
        for n in self.parent:
            out.setdefault(self.find(n), set()).add(n)
        return sorted(out.values(), key=min)


Event = tuple[bytes, EventFacts, tuple[Key, ...]]
#: An identifier a profile does not hold, as an event's ids name it after ``keyed``.
ELSEWHERE = "?"


def keyed(entries: Iterable[Event], nodes: Iterable[Key]) -> list[Event]:
    """The ledger's events with their identifiers' hashes turned back into the keys of
    the profile's identifiers (``nodes``); one it does not hold reads as ELSEWHERE."""
    by_hash = {ident_hash(n): n for n in nodes}
    return [(e, f, tuple(by_hash.get(h, ELSEWHERE) for h in ids)) for e, f, ids in entries]


def links(state: ProfileState, nodes: set[Key], events: list[Event]) -> list[tuple[Key, Key]]:
    """The links the profile's events made between its identifiers: each event's anchor
    with each of its others, but those refused (by a rule, a block, another profile)."""
    refused = {(r.event_id, r.ident) for r in state.refused}
    out = []
    for _entry, facts, ids in events:
        if not ids or ids[0] not in nodes:
            continue
        anchor = ids[0]
        for ident in ids[1:]:
            if ident not in nodes or (facts.event_id, ident) in refused:
                continue
            if state.blocks and state.blocked(anchor, ident) is not None:
                continue
            out.append((anchor, ident))
    return out


def plan_split(
    profile: str,
    state: ProfileState,
    pending: Iterable[Reservation],
    detach: Iterable[Key],
    name: str,
) -> SplitPlan | None:
    """How ``profile`` splits when ``detach`` leaves it; None when there is nothing to
    split (none of them is its own, or every identifier it holds would leave)."""
    pending = set(pending)
    nodes = state.held | {ident for ident, _ in pending}
    gone = set(detach) & nodes
    if not gone or gone == nodes:
        return None
    events = keyed(state.ledger.events_with_ids(), nodes)
    edges = links(state, nodes, events)
    # The rest: groups of the identifiers that stay, linked without the detached ones.
    staying = _Groups(nodes - gone)
    for a, b in edges:
        if a not in gone and b not in gone:
            staying.join(a, b)
    anchored: dict[Key, int] = {}
    for _entry, _facts, ids in events:
        if ids and ids[0] in nodes:
            anchored[ids[0]] = anchored.get(ids[0], 0) + 1
    # (Groups come in order of their smallest identifier: the first of equals wins.)
    rest = max(
        staying.groups(),
        key=lambda g: (sum(anchored.get(i, 0) for i in g), len(g & state.held), len(g)),
    )
    if not rest & state.held:
        return None  # every identifier it holds would leave: nothing stays to split from
    side = nodes - rest
    # The split side: groups still linked within it.
    split = _Groups(side)
    for a, b in edges:
        if a in side and b in side:
            split.join(a, b)
    block: Block = (name, frozenset(side), frozenset(rest))
    return _plan(profile, state, pending, events, name, rest, split.groups(), block)


#: The kinds of identity rules a profile can be split by after the fact
#: (``plan_recluster``).
RULE_KINDS = ("block", "shared", "limit")


def plan_recluster(
    profile: str,
    state: ProfileState,
    pending: Iterable[Reservation],
    name: str,
    kind: str,
    marked: Iterable[Key] = (),
    limits: Mapping[str, int] | None = None,
) -> SplitPlan | None:
    """How ``profile`` comes apart under an identity rule it was merged without — its
    events linked again as the graph would have linked them with the rule in force:

    * ``block``: the ``marked`` identifiers link nothing and leave the profile (an event
      that carried one is anchored on its next identifier; one that carried nothing else
      stays with the rest);
    * ``shared``: the same, but each stays with the part its first event went to;
    * ``limit``: events in time order, a link refused when it would give a part more
      identifiers of a type than ``limits`` allow.

    None when nothing would change."""
    pending = set(pending)
    nodes = state.held | {ident for ident, _ in pending}
    off = set(marked) & nodes if kind in ("block", "shared") else set()
    if kind in ("block", "shared") and not off:
        return None
    events = sorted(
        keyed(state.ledger.events_with_ids(), nodes), key=lambda e: (e[1].time_ms, e[1].event_id)
    )

    def anchor_of(ids: tuple[Key, ...]) -> Key | None:
        return next((i for i in ids if i in nodes and i not in off), None)

    groups, first_of = _relink(state, nodes, off, events, anchor_of, limits)
    found = groups.groups()
    if kind == "shared":
        at = {i: g for g in found for i in g}
        for ident in sorted(off):
            anchor = first_of.get(ident)
            if anchor is None:
                found.append({ident})
            else:
                at[anchor].add(ident)
    anchored: dict[Key, int] = {}
    for _entry, _facts, ids in events:
        anchor = anchor_of(ids)
        if anchor is not None:
            anchored[anchor] = anchored.get(anchor, 0) + 1
    held = [g for g in found if g & state.held]
    if not held:
        return None
    rest = max(held, key=lambda g: (sum(anchored.get(i, 0) for i in g), len(g & state.held)))
    others = [g for g in found if g is not rest]
    if not others and not (kind == "block" and off & state.held):
        return None
    return _plan(profile, state, pending, events, name, rest, others, None, anchor_of)


def _relink(
    state: ProfileState,
    nodes: set[Key],
    off: set[Key],
    events: list[Event],
    anchor_of: Callable[[tuple[Key, ...]], Key | None],
    limits: Mapping[str, int] | None,
) -> tuple[_Groups, dict[Key, Key]]:
    """The events' links again, but through ``off``, in time order, within ``limits``;
    and for each identifier of ``off`` the anchor of the first event that carried it."""
    refused = {(r.event_id, r.ident) for r in state.refused}
    groups = _Groups(nodes - off)
    counts: dict[Key, Counter[str]] = {n: Counter({ident_type(n): 1}) for n in nodes - off}
    first_of: dict[Key, Key] = {}
    for _entry, facts, ids in events:
        anchor = anchor_of(ids)
        if anchor is None:
            continue
        for ident in ids:
            if ident in off:
                first_of.setdefault(ident, anchor)
        for ident in ids[ids.index(anchor) + 1 :]:
            if ident not in nodes or ident in off or (facts.event_id, ident) in refused:
                continue
            if state.blocks and state.blocked(anchor, ident) is not None:
                continue
            ra, rb = groups.find(anchor), groups.find(ident)
            if ra == rb or (limits and _over(counts[ra] + counts[rb], limits)):
                continue
            groups.join(ra, rb)
            counts[groups.find(ra)] = counts.pop(ra) + counts.pop(rb)
    return groups, first_of


def _over(counts: Counter[str], limits: Mapping[str, int]) -> bool:
    return any(n > limits[t] for t, n in counts.items() if t in limits)


def _plan(
    profile: str,
    state: ProfileState,
    pending: set[Reservation],
    events: list[Event],
    name: str,
    main_ids: set[Key],
    groups: list[set[Key]],
    block: Block | None,
    anchor_of: Callable[[tuple[Key, ...]], Key | None] = lambda ids: ids[0] if ids else None,
) -> SplitPlan:
    main = Part(profile, set(main_ids))
    parts = [Part(part_id(profile, name, n), g) for n, g in enumerate(groups, 1)]
    where: dict[Key, Part] = {i: p for p in (main, *parts) for i in p.ids}
    # Events: with the part of their anchor (one applied before identifiers were kept
    # with events stays with the rest).
    taken: dict[str, list[tuple[bytes, EventFacts]]] = {p.profile: [] for p in (main, *parts)}
    event_part: dict[str, Part] = {}
    for entry, facts, ids in events:
        anchor = anchor_of(ids)
        part = where.get(anchor, main) if anchor is not None else main
        taken[part.profile].append((entry, facts))
        event_part[facts.event_id] = part
    for part in (main, *parts):
        s = part.state
        hashes = []
        for entry, facts in taken[part.profile]:
            hashes.append(event_hash(facts.event_id))
            s.totals.fold(facts)
            s.ledger.append(entry)
        s.seen = array("Q", sorted(hashes))
        s.held = state.held & part.ids
        s.linked_by = {i: v for i, v in state.linked_by.items() if i in part.ids}
        s.blocks = {**state.blocks, name: block} if block is not None else dict(state.blocks)
        s.splits = state.splits | {name}
        s.dropped = set(state.dropped) if part is main else set()
    for r in state.refused:
        part = event_part.get(r.event_id) or where.get(r.ident, main)
        part.state.refused.add(r)
    for m in state.merged:
        where.get(m[1], main).state.merged.add(m)
    moved_claims = set()
    for ident, claim in pending:
        part = where.get(ident, main)  # (an identifier a rule took away: its answer settles it)
        part.pending.add((ident, claim))
        if part is not main:
            moved_claims.add(claim)
    # A version never goes back: the rest counts on from where the whole profile was.
    main.state.base = state.size() + 1 - main.state.size()
    founders = {profile_for(i): where[i] for i in main.ids.union(*(p.ids for p in parts))}
    readdress = {}
    for loser, via, _event in state.merged:
        part = founders.get(loser) or where.get(via, main)
        if part is not main:
            readdress[loser] = part.profile
    return SplitPlan(main, parts, block, readdress, moved_claims)
