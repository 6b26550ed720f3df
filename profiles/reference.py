"""The reference answer: a single-threaded union-find over the same events and rules.

The distributed identity graph must reach the clusters this computes. Without
limits the answer is the connected components of "identifiers seen together in an
event", whatever the order. With limits, events are taken in the given order and
a link that would give a cluster more identifiers of a type than its limit is
refused and recorded — the outcome then depends on order by nature.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from profiles.facts import facts_of
from profiles.graph.state import Block, ProfileState
from profiles.rules import Ident, IdentityRules, key, usable
from profiles.standardize import DEFAULT_INDEX
from profiles.touchpoint import Touchpoint


@dataclass(frozen=True)
class RefusedLink:
    event_id: str
    identifier: Ident  # the identifier that was not linked
    to: Ident  # the event's highest-priority identifier it would have joined
    rule: str


@dataclass
class Reference:
    clusters: list[frozenset[str]]
    refused: list[RefusedLink] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)

    def cluster_of(self) -> dict[str, int]:
        return {ident: n for n, cluster in enumerate(self.clusters) for ident in cluster}


def reference_clusters(
    events: Iterable[Touchpoint],
    rules: IdentityRules,
    region: str,
    limits: bool = True,
    blocks: Sequence[Block] = (),
) -> Reference:
    """``blocks``: splits' blocks, in force from the start (``profiles.graph.split``):
    an event does not link its anchor with an identifier a block keeps apart from it."""
    parent: dict[Ident, Ident] = {}
    counts: dict[Ident, Counter[str]] = {}
    refused: list[RefusedLink] = []
    dropped: Counter[str] = Counter()

    def find(x: Ident) -> Ident:
        if x not in parent:
            parent[x] = x
            counts[x] = Counter({x[0]: 1})
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for tp in events:
        ids, bad = usable(tp.identifiers, rules, region)
        dropped.update(reason for _, reason in bad)
        if not ids:
            continue
        anchor = ids[0]
        for ident in ids[1:]:
            ra, rb = find(anchor), find(ident)
            if ra == rb:
                continue
            if blocks and _blocked(blocks, key(anchor), key(ident)):
                refused.append(RefusedLink(tp.event_id, ident, anchor, "split"))
                continue
            if limits:
                merged = counts[ra] + counts[rb]
                broken = sorted(
                    t for t, n in merged.items() if (lim := rules.limit(t)) is not None and n > lim
                )
                if broken:
                    t = broken[0]
                    refused.append(
                        RefusedLink(tp.event_id, ident, anchor, f"limit {t}={rules.limit(t)}")
                    )
                    continue
            # The smaller root wins, so the result does not depend on dict order.
            winner, loser = (ra, rb) if ra < rb else (rb, ra)
            parent[loser] = winner
            counts[winner] = counts[winner] + counts.pop(loser)
        find(anchor)
    groups: dict[Ident, set[str]] = {}
    for ident in parent:
        groups.setdefault(find(ident), set()).add(key(ident))
    clusters = sorted((frozenset(g) for g in groups.values()), key=sorted)
    return Reference(clusters, refused, dropped)


def _blocked(blocks: Sequence[Block], a: str, b: str) -> bool:
    return any((a in one and b in two) or (a in two and b in one) for _, one, two in blocks)


def reference_states(
    touchpoints: Iterable[Touchpoint],
    rules: IdentityRules,
    region: str,
    aliases: Mapping[str, str] | None = None,
    blocks: Sequence[Block] = (),
) -> list[ProfileState]:
    """One ``ProfileState`` per reference cluster, each with every event anchored in it
    folded in, single-threaded: what the product must show (exact without limits)."""
    tps = list(touchpoints)
    index = DEFAULT_INDEX if aliases is None else aliases
    ref = reference_clusters(tps, rules, region, limits=bool(rules.limits), blocks=blocks)
    where = ref.cluster_of()
    states = [ProfileState(held=set(c)) for c in ref.clusters]
    for tp in tps:
        ids, _ = usable(tp.identifiers, rules, region)
        if ids:
            keys = tuple(key(i) for i in ids)
            states[where[keys[0]]].fold(facts_of(tp, index), keys)
    return states
