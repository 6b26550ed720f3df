"""Splitting a profile, under every interleaving Kafka allows (the simulator of
test_graph): split then go on equals the reference computed with the split's block in
force from the start — clusters, events, traits — and the same events again do not
merge the parts back."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from profiles.facts import facts_of
from profiles.graph.messages import Merge, Offer, Spawn, Split
from profiles.graph.profile import handle_profile
from profiles.graph.split import plan_split
from profiles.graph.state import ProfileState, ordered
from profiles.projection import view_of
from profiles.reference import reference_clusters, reference_states
from profiles.rules import BLOCKED, SHARED, mark_of, usable
from profiles.touchpoint import Touchpoint
from tests.unit.test_graph import (
    UNLIMITED,
    Simulation,
    batches,
    check_settled,
    check_view,
    crashes,
    parts,
    redelivery,
    rollbacks,
    shortcuts,
)
from tests.unit.test_reference import event_lists

OPS = ("ops", 0)


def _content(view: dict) -> dict:  # type: ignore[type-arg]
    """What the reference must agree on: identifiers, traits, computed traits but the
    merge bookkeeping (how the graph got there)."""
    computed = {
        k: v for k, v in view["computed"].items() if k not in ("merged_from", "refused_links")
    }
    return {"identifiers": view["identifiers"], "traits": view["traits"], "computed": computed}


def _renumbered(events: list[Touchpoint], prefix: str, start: int) -> list[Touchpoint]:
    return [
        Touchpoint(f"{prefix}{n}", tp.type, tp.source, start + n, tp.identifiers)
        for n, tp in enumerate(events)
    ]


@settings(max_examples=250, deadline=None)
@given(
    event_lists,
    event_lists,
    parts,
    st.integers(0, 2**32),
    redelivery,
    crashes,
    rollbacks,
    batches,
    shortcuts,
    st.data(),
)
def test_split_then_continue_equals_the_reference_with_the_block_from_the_start(
    first, later, parts, seed, again, crash, rollback, batch, shortcut, data
) -> None:  # type: ignore[no-untyped-def]
    later = _renumbered(later, "f", 1000)
    sim = Simulation(UNLIMITED, parts[1], parts[2], seed, again, crash, rollback, batch, shortcut)
    sim.feed(first, parts[0])
    sim.run()
    candidates = sorted((p, n) for p, n in sim.live().items() if len(n.state.held) >= 2)
    assume(candidates)
    pid, node = data.draw(st.sampled_from(candidates))
    held = sorted(node.state.held)
    detach = data.draw(st.lists(st.sampled_from(held), min_size=1, max_size=len(held) - 1,
                                unique=True))  # fmt: skip
    # The split and the later events in flight together, and every event sent again.
    sim.send(OPS, [("profile", pid, Split(pid, "s1", tuple(detach), "split"))])
    sim.feed(later + first, parts[0])
    sim.run()

    events = first + later
    check_settled(sim, events)
    check_view(sim)
    blocks = {b for n in sim.live().values() for b in n.state.blocks.values()}
    assert len(blocks) == 1
    [block] = blocks
    assert set(detach) <= block[1]
    ref = reference_clusters(events, UNLIMITED, "US", limits=False, blocks=[block])
    assert sim.clusters() == set(ref.clusters)
    expected = {
        frozenset(s.held): _content(view_of("-", _node(s)))
        for s in reference_states(events, UNLIMITED, "US", blocks=[block])
    }
    for key, n in sim.live().items():
        if n.state.held:
            assert _content(view_of(key, n)) == expected[frozenset(n.state.held)]
    # Downstream heard of the split: once per part (again after a crash), naming what
    # moved; and the detached identifiers are in none of the profile's parts that stayed.
    # (The profile, or the one it was merged into meanwhile: the split follows.)
    assert len({s.source for s in sim.splits}) == 1
    moved = {i for s in sim.splits for i in s.ids}
    assert set(detach) <= moved
    assert not moved & block[2]


def _node(state: ProfileState):  # type: ignore[no-untyped-def]
    from profiles.graph.node import ProfileNode

    return ProfileNode(state=state)


def test_a_split_is_done_once_and_keeps_its_version_growing() -> None:
    def ev(n: int, **ids: str) -> Touchpoint:
        return Touchpoint(f"e{n}", "x", "web", n, ids)

    # Ana and Bo merged through a family email; Bo's phone came with it.
    events = [
        ev(1, user_id="ana", email="ana@mail.example.org"),
        ev(2, email="family@mail.example.org", user_id="ana"),
        ev(3, email="family@mail.example.org", anonymous_id="bo-phone"),
        ev(4, anonymous_id="bo-phone", loyalty_id="L1"),
    ]
    sim = Simulation(UNLIMITED, 2, 2, seed=1)
    sim.feed(events, 1)
    sim.run()
    [(pid, node)] = sim.live().items()
    before = view_of(pid, node)["version"]
    split = Split(pid, "s1", ("email:family@mail.example.org",), "split")
    sim.send(OPS, [("profile", pid, split), ("profile", pid, split)])
    sim.run()
    clusters = sim.clusters()
    assert clusters == {
        frozenset({"user_id:ana", "email:ana@mail.example.org"}),
        frozenset({"email:family@mail.example.org", "anonymous_id:bo-phone", "loyalty_id:L1"}),
    }
    live = sim.live()
    assert view_of(pid, live[pid])["version"] > before
    assert len(sim.splits) == 1
    # The same events again do not merge them back.
    sim.feed(events, 1)
    sim.run()
    assert sim.clusters() == clusters
    check_settled(sim, events)
    check_view(sim)


def test_a_part_asked_to_merge_before_its_spawn_waits_for_it() -> None:
    """A part's Spawn comes on its source's channel, a merge of the part on another's,
    and can come first (hypothesis seed 322 of the test above): a profile linked both
    parts, merged into one, and its claim of the other's identifier met that part's
    owner there. The part must not offer itself before it has its state — accepted,
    it became a redirect, the Spawn's identifier went nowhere and the claim stayed
    reserved in the winner for good. It waits for the Spawn, then offers all of it."""
    u1, p1, a5 = "user_id:u1", "email:p1@mail.example.org", "anonymous_id:a5"
    sim = Simulation(UNLIMITED, 1, 1, seed=0)
    sim.feed([Touchpoint("e0", "x", "web", 0, {"user_id": "u1", "email": "p1@mail.example.org",
                                                 "anonymous_id": "a5"})], 1)  # fmt: skip
    sim.run()
    [(pid, _node)] = sim.live().items()
    table = sim.profiles[0]
    out = handle_profile(table, Split(pid, "s1", (a5, p1), "split"), UNLIMITED)
    spawns = {m.profile: m for _s, _k, m in out if isinstance(m, Spawn)}
    winner, loser = ordered(*spawns)  # one part each: nothing linked them but u1
    [w_ident] = spawns[winner].state.held
    [l_ident] = spawns[loser].state.held
    handle_profile(table, spawns[winner], UNLIMITED)
    # A later event (u3, p1, a5): its profile claimed both, and merged into the winner
    # part through one; its claim of the other reached the loser part as a merge.
    pending = frozenset({(w_ident, "p_x.2"), (l_ident, "p_x.1")})
    offer = Offer(winner, "p_x", ProfileState(held={"user_id:u3"}), pending, w_ident, "p_x",
                  "f1", "p_x.2")  # fmt: skip
    [(_s, _k, answer), *_] = handle_profile(table, offer, UNLIMITED)
    assert answer.accepted
    merge = Merge(loser, winner, l_ident, "p_x", "f1", "p_x.1", anchor="user_id:u3")
    assert handle_profile(table, merge, UNLIMITED) == []  # before its Spawn: waits
    out = handle_profile(table, spawns[loser], UNLIMITED)
    [offer] = [m for _s, _k, m in out if isinstance(m, Offer)]
    assert offer.state.held == {l_ident}
    [(_s, _k, answer), *_] = handle_profile(table, offer, UNLIMITED)
    assert answer.accepted
    handle_profile(table, answer, UNLIMITED)
    assert table[winner].state.held == {a5, p1, "user_id:u3"}
    assert not table[winner].pending, "a reservation was never answered"
    assert table[loser].redirect == winner and not table[loser].held_back
    assert table[pid].state.held == {u1}


def test_nothing_to_detach_is_no_split() -> None:
    state = ProfileState(held={"email:a@x.org"})
    assert plan_split("p_1", state, (), ["email:b@x.org"], "s") is None
    assert plan_split("p_1", state, (), ["email:a@x.org"], "s") is None  # all of it


@settings(max_examples=200, deadline=None)
@given(event_lists, event_lists, parts, st.integers(0, 2**32), redelivery, crashes, rollbacks,
       batches, shortcuts, st.data())  # fmt: skip
def test_blocking_an_identifier_afterwards_splits_what_merged_only_through_it(
    first, later, parts, seed, again, crash, rollback, batch, shortcut, data
) -> None:  # type: ignore[no-untyped-def]
    """A store's phone typed in for everyone goes on the block list after the fact: the
    profiles it alone joined come apart, exactly as if it had been blocked from the
    start, whatever arrives meanwhile."""
    later = _renumbered(later, "f", 1000)
    sim = Simulation(UNLIMITED, parts[1], parts[2], seed, again, crash, rollback, batch, shortcut)
    sim.feed(first, parts[0])
    sim.run()
    candidates = sorted((p, n) for p, n in sim.live().items() if len(n.state.held) >= 2)
    assume(candidates)
    pid, node = data.draw(st.sampled_from(candidates))
    blocked = data.draw(st.sampled_from(sorted(node.state.held)))
    sim.rules = replace(UNLIMITED, marks={mark_of(blocked): BLOCKED})  # every worker learns it
    split = Split(pid, "r1", (blocked,), f"block {blocked.split(':')[0]}", "block")
    sim.send(OPS, [("profile", pid, split)])
    sim.feed(later + first, parts[0])
    sim.run()

    events = first + later
    # Counted once each: every event with an identifier still usable, and those applied
    # before the block that carried only the blocked one (they stay with the profile).
    counted = {e.event_id for e in events if usable(e.identifiers, sim.rules, "US")[0]}
    before = {e.event_id for e in first if usable(e.identifiers, UNLIMITED, "US")[0]}
    check_settled(sim, events, counted | before)
    check_view(sim)
    ref = reference_clusters(events, sim.rules, "US", limits=False)
    assert sim.clusters() == set(ref.clusters)
    assert not any(blocked in c for c in sim.clusters())


def test_a_lowered_limit_splits_in_time_order_and_a_shared_mark_keeps_the_identifier() -> None:
    def ev(n: int, **ids: str) -> Touchpoint:
        return Touchpoint(f"e{n}", "x", "web", n, ids)

    # Three emails joined through one device, in this order.
    events = [
        ev(1, email="a@mail.example.org", anonymous_id="dev"),
        ev(2, email="b@mail.example.org", anonymous_id="dev"),
        ev(3, email="c@mail.example.org", anonymous_id="dev"),
        ev(4, email="c@mail.example.org"),
    ]
    sim = Simulation(UNLIMITED, 2, 2, seed=3)
    sim.feed(events, 1)
    sim.run()
    [(pid, _node)] = sim.live().items()
    split = Split(pid, "r1", (), "limit email=2", "limit", (("email", 2),))
    sim.send(OPS, [("profile", pid, split)])
    sim.run()
    assert sim.clusters() == {
        frozenset({"email:a@mail.example.org", "email:b@mail.example.org", "anonymous_id:dev"}),
        frozenset({"email:c@mail.example.org"}),
    }
    counts = {frozenset(n.state.held): len(n.state.seen) for n in sim.live().values()}
    assert sorted(counts.values()) == [2, 2]  # e3 went with its anchor, c@
    check_settled(sim, events)
    check_view(sim)

    # Marked shared after the fact: the device stays with its first event's profile and
    # links nothing.
    sim = Simulation(UNLIMITED, 2, 2, seed=3)
    sim.feed(events, 1)
    sim.run()
    [(pid, _node)] = sim.live().items()
    sim.rules = replace(UNLIMITED, marks={"anonymous_id:dev": SHARED})
    sim.send(OPS, [("profile", pid, Split(pid, "r2", ("anonymous_id:dev",), "", "shared"))])
    sim.feed(events, 1)  # the same events again: nothing links through it
    sim.run()
    assert sim.clusters() == {
        frozenset({"email:a@mail.example.org", "anonymous_id:dev"}),
        frozenset({"email:b@mail.example.org"}),
        frozenset({"email:c@mail.example.org"}),
    }
    check_settled(sim, events)
    check_view(sim)


def test_the_split_messages_and_node_fields_survive_the_wire() -> None:
    from profiles.graph.messages import Disown, Readdress, Spawn
    from profiles.graph.node import ProfileNode
    from schemas.wire import decode_messages, encode_messages, node_from, node_to

    state = ProfileState(held={"email:a@x.org", "phone:+14155550100"})
    state.fold(facts_of(Touchpoint("e1", "x", "web", 5, {"email": "a@x.org"})),
               ("email:a@x.org", "phone:+14155550100"))  # fmt: skip
    state.blocks = {"s1": ("s1", frozenset({"email:a@x.org"}), frozenset({"phone:+1"}))}
    state.splits, state.base = {"s1"}, 3
    messages = [
        Split("p_1", "s1", ("email:a@x.org",), "split"),
        Split("p_1", "r1", (), "limit email=2", "limit", (("email", 2),)),
        Spawn("p_1~ab", "p_1", "s1", state, frozenset({("phone:+1", "p_1.3")})),
        Readdress("p_9", "p_1~ab", "s1"),
        Disown("phone:+1", "p_1"),
    ]
    assert decode_messages(encode_messages(messages)) == messages
    node = ProfileNode(state=state, moved={"phone:+1": "p_1~ab"}, moved_claims={"p_1.3"},
                       spawned="s0", shown_as="p_1~cd", position="3:41")  # fmt: skip
    again = node_from(node_to(node))
    assert again.state == state and again.moved == node.moved
    assert (again.moved_claims, again.spawned, again.shown_as, again.position) == (
        {"p_1.3"}, "s0", "p_1~cd", "3:41")  # fmt: skip
    assert again.state.blocked("email:a@x.org", "phone:+1") == "s1"
