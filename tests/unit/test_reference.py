"""The identity rules and the reference union-find the identity graph must agree with."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiles.identifiers import DEFAULT_IDENTIFIER_PRIORITIES
from profiles.reference import Reference, reference_clusters
from profiles.rules import IdentityRules, usable
from profiles.touchpoint import Touchpoint

RULES = IdentityRules.build(DEFAULT_IDENTIFIER_PRIORITIES)
UNIVERSE = {
    "user_id": [f"u{i}" for i in range(4)],
    "email": [f"p{i}@mail.example.org" for i in range(6)] + ["test@test.com"],
    "anonymous_id": [f"a{i}" for i in range(6)],
    "loyalty_id": [f"L{i}" for i in range(3)],
}
identifier_sets = st.dictionaries(
    st.sampled_from(sorted(UNIVERSE)), st.integers(0, 6), min_size=1, max_size=4
).map(lambda d: {t: UNIVERSE[t][i % len(UNIVERSE[t])] for t, i in d.items()})
event_lists = st.lists(identifier_sets, min_size=1, max_size=25).map(
    lambda sets: [Touchpoint(f"e{n}", "x", "web", n, ids) for n, ids in enumerate(sets)]
)


def partition(ref: Reference) -> set[frozenset[str]]:
    return set(ref.clusters)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("test@test.com", "block list"),
        ("TEST@test.com", "block list"),
        ("null", "block list"),
        ("anonymous", "block list"),
        ("000-000-0000", "block pattern"),
        ("+11111111111", "block pattern"),
        ("test123@shop.example", "block pattern"),
        ("ana@example.com", None),
        ("testa.maria@mail.example.org", None),
        ("+14155550100", None),
        ("anon-3f2a", None),
    ],
)
def test_block_rules(value: str, rule: str | None) -> None:
    found = RULES.blocked(value)
    if rule is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(rule)


def test_a_bad_block_pattern_is_named() -> None:
    with pytest.raises(ValueError, match=r"block pattern '\(unclosed' does not compile"):
        IdentityRules.build(DEFAULT_IDENTIFIER_PRIORITIES, blocked_patterns=["(unclosed"])


def test_usable_identifiers_come_highest_priority_first() -> None:
    ids, dropped = usable(
        {"anonymous_id": "a1", "email": " Ana@X.com ", "phone": "12", "user_id": "u1",
         "fax": "1", "loyalty_id": "null"},
        RULES,
        "US",
    )  # fmt: skip
    assert ids == [("user_id", "u1"), ("email", "ana@x.com"), ("anonymous_id", "a1")]
    assert sorted(dropped) == [
        ("fax", "unknown identifier type"),
        ("loyalty_id", "block list"),
        ("phone", "not a valid phone number"),
    ]


def components(events: list[Touchpoint]) -> set[frozenset[str]]:
    """Connected components the slow, obvious way."""
    edges: dict[str, set[str]] = {}
    for tp in events:
        ids, _ = usable(tp.identifiers, RULES, "US")
        keys = [f"{t}:{v}" for t, v in ids]
        for k in keys:
            edges.setdefault(k, set()).update(keys)
    seen: set[str] = set()
    out = set()
    for start in edges:
        if start in seen:
            continue
        todo, group = [start], set()
        while todo:
            node = todo.pop()
            if node not in group:
                group.add(node)
                todo.extend(edges[node] - group)
        seen |= group
        out.add(frozenset(group))
    return out


@given(event_lists, st.randoms())
def test_without_limits_clusters_are_the_connected_components(events, rnd) -> None:  # type: ignore[no-untyped-def]
    ref = reference_clusters(events, RULES, "US", limits=False)
    assert partition(ref) == components(events)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert partition(reference_clusters(shuffled, RULES, "US", limits=False)) == partition(ref)
    assert not any("test@test.com" in ident for c in ref.clusters for ident in c)


@given(event_lists)
def test_limits_hold_and_every_refusal_is_recorded(events) -> None:  # type: ignore[no-untyped-def]
    ref = reference_clusters(events, RULES, "US")
    for cluster in ref.clusters:
        per_type = Counter(ident.split(":", 1)[0] for ident in cluster)
        for id_type, n in per_type.items():
            limit = RULES.limit(id_type)
            assert limit is None or n <= limit, (cluster, id_type)
    where = ref.cluster_of()
    for refusal in ref.refused:
        a, b = (f"{t}:{v}" for t, v in (refusal.identifier, refusal.to))
        assert where[a] != where[b], refusal
    if not ref.refused:  # nothing refused: exactly the clusters without limits
        assert partition(ref) == partition(reference_clusters(events, RULES, "US", limits=False))


@given(event_lists, st.randoms())
def test_clusters_untouched_by_refusals_do_not_depend_on_order(events, rnd) -> None:  # type: ignore[no-untyped-def]
    """With limits, order decides who keeps a shared identifier; a cluster none of whose
    identifiers took part in a refused link (in either order) is the same in both."""
    shuffled = list(events)
    rnd.shuffle(shuffled)
    one = reference_clusters(events, RULES, "US")
    two = reference_clusters(shuffled, RULES, "US")
    involved = {f"{t}:{v}" for r in one.refused + two.refused for t, v in (r.identifier, r.to)}
    clean_one = {c for c in one.clusters if not c & involved}
    clean_two = {c for c in two.clusters if not c & involved}
    assert clean_one == clean_two
