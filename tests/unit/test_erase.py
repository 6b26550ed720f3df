"""Erasure in the identity graph, racing with the erased person's own events.

The simulator of ``test_graph`` delivers messages in any order Kafka allows, with
crashes, re-deliveries and lost table writes. A person's events are fed before,
during and after the erasure request; after the erasure reached the ledger, the route
stage drops their events (``--suppress``) and forgets the identifiers they carry.
Whatever the interleaving, nothing of theirs may be left, and nobody else may change.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from profiles.graph.erase import parse_marker
from profiles.graph.messages import ASKED, Erase, Forget, Observe
from profiles.graph.node import ProfileNode
from profiles.graph.profile import handle_profile
from profiles.graph.state import profile_for
from profiles.reference import reference_clusters
from profiles.routing import partition_for
from profiles.rules import key, usable
from profiles.touchpoint import Touchpoint
from sinks.redis_view import identifier_key
from tests.unit.test_graph import (
    UNLIMITED,
    Simulation,
    batches,
    crashes,
    parts,
    redelivery,
    rollbacks,
    shortcuts,
)
from tests.unit.test_reference import event_lists

EMAIL = "x@erase.example"
ANON = [f"xa{i}" for i in range(3)]

# The person's events: every one carries their email, or one of their device ids
# (each of which some email event links to the email).
person_ids = st.one_of(
    st.builds(lambda a: {"email": EMAIL, "anonymous_id": a}, st.sampled_from(ANON)),
    st.just({"email": EMAIL}),
    st.builds(lambda a: {"anonymous_id": a}, st.sampled_from(ANON)),
)
person_events = st.lists(person_ids, min_size=1, max_size=12).map(
    lambda sets: [{"email": EMAIL, "anonymous_id": a} for a in ANON] + sets
)


def _keys(tp: Touchpoint) -> tuple[str, ...]:
    ids, _ = usable(tp.identifiers, UNLIMITED, "US")
    return tuple(key(i) for i in ids)


class Racing(Simulation):
    """The simulator with the route stage's ledger check: once the erasure's keys are
    shredded (and so in the ledger), an event carrying one is dropped, and the others
    it carries are forgotten."""

    def route(self, tp: Touchpoint) -> None:
        keys = _keys(tp)
        if not keys:
            return
        erased = [k for k in keys if k in self.shredded]
        source = ("input", 0)
        if erased:
            forget = [k for k in keys if k not in self.shredded]
            self.send(source, [("identity", k, Forget(k, "", "r1", True)) for k in forget])
            return
        self.send(source, [("identity", keys[0], Observe(keys[0], keys, _facts(tp)))])

    def some(self, n: int) -> None:
        """Deliver up to n records."""
        for _ in range(n):
            if not self.step():
                return


def _facts(tp: Touchpoint):  # type: ignore[no-untyped-def]
    from profiles.facts import facts_of

    return facts_of(tp)


@settings(max_examples=200, deadline=None)
@given(
    others=event_lists,
    mine=person_events,
    parts_=parts,
    seed=st.integers(0, 2**32),
    when=st.floats(0, 1),
    before=st.integers(0, 60),
    redeliver=redelivery,
    crash=crashes,
    rollback=rollbacks,
    batch=batches,
    shortcut=shortcuts,
)
def test_an_erasure_racing_with_the_persons_events_leaves_nothing_of_theirs(  # type: ignore[no-untyped-def]
    others, mine, parts_, seed, when, before, redeliver, crash, rollback, batch, shortcut
) -> None:
    sim = Racing(UNLIMITED, parts_[1], parts_[2], seed, redeliver, crash, rollback, batch, shortcut)
    person = [Touchpoint(f"x{n}", "page", "web", 1000 + n, ids) for n, ids in enumerate(mine)]
    # Interleave the person's events with everyone else's; the request comes at `when`.
    stream: list[Touchpoint] = []
    rest = list(others)
    for tp in person:
        take = sim.rng.randint(0, 2)
        stream += [*rest[:take], tp]
        rest = rest[take:]
    stream += rest
    cut = int(len(stream) * when)
    for tp in stream[:cut]:
        sim.route(tp)
    sim.some(before)
    profile = profile_for(f"email:{EMAIL}")
    sim.send(("cli", 0), [("profile", profile, Erase(profile, "r1", True))])
    for tp in stream[cut:]:
        sim.route(tp)
        sim.some(sim.rng.randint(0, 5))
    sim.run()

    mine_keys = {k for tp in person for k in _keys(tp)}
    mine_events = {tp.event_id for tp in person}
    for table in sim.profiles:
        for pid, node in table.items():
            s = node.state
            assert not (s.held | node.reserved()) & mine_keys, pid
            assert not any(s.has(e) for e in mine_events), pid
            assert not {r.ident for r in s.refused} & mine_keys, pid
    for k in mine_keys:
        value = sim.identity[partition_for(k, sim.parts["identity"])].get(k)
        assert value is None or parse_marker(value) is not None, (k, value)
        assert identifier_key(*k.split(":", 1)) not in sim.view.index, sim.view.index
    for view in sim.view.profiles.values():
        ids = {f"{t}:{v}" for t, vs in view.get("identifiers", {}).items() for v in vs}
        assert not ids & mine_keys
    # Every identifier of theirs that reached the graph had its key destroyed.
    reached = {k for k in mine_keys if sim.identity[partition_for(k, sim.parts["identity"])].get(k)}
    assert reached <= sim.shredded
    # Nobody else changed: the others' clusters are the reference's.
    assert sim.clusters() == set(reference_clusters(list(others), UNLIMITED, "US").clusters)


def test_an_erased_profile_answers_nothing_and_forgets_what_reaches_it() -> None:
    table: dict[str, ProfileNode] = {"p1": ProfileNode()}
    table["p1"].state.held.update({"email:a@x.example", "anonymous_id:d1"})
    out = handle_profile(table, Erase("p1", "r1"), UNLIMITED)
    kinds = sorted((stage, k) for stage, k, _ in out)
    assert kinds == [
        ("erased", "p1"),
        ("identity", "anonymous_id:d1"),
        ("identity", "email:a@x.example"),
    ]
    assert table["p1"].erased == ("r1", True) and not table["p1"].state.held
    # Erased twice: nothing new.
    assert handle_profile(table, Erase("p1", "r1"), UNLIMITED) == []


def test_a_shared_identifier_is_kept_and_one_another_profile_claimed_is_kept_for_an_event() -> None:
    from profiles.graph.identity import handle_identity

    table = {
        "phone:+14155550000": "p1 p2 p3",
        "anonymous_id:d1": "p1 p9",
        "email:a@x.example": "p1",
    }
    # Shared (3 profiles, the rule allows 3): kept, its key too.
    out = handle_identity(table, Forget("phone:+14155550000", "p1", "r1"), max_claimants=3)
    assert out == [("kept", "r1", "phone:+14155550000")]
    assert table["phone:+14155550000"] == "p1 p2 p3"
    # Named by an event, and another profile claimed it (a link a rule refused): kept.
    out = handle_identity(table, Forget("anonymous_id:d1", "", "r1"), max_claimants=10)
    assert out == [("kept", "r1", "anonymous_id:d1")]
    # Named by the request itself: the person's, whoever else claimed it (a profile
    # merged into its owner counts as a claimant too): marked, and its owner erased.
    out = handle_identity(dict(table), Forget("anonymous_id:d1", ASKED, "r1"), max_claimants=10)
    assert [(s, k) for s, k, _ in out] == [("profile", "p1"), ("shredded", "anonymous_id:d1")]
    # The erased profile's own: marked, its key shredded; again: shredded again only.
    out = handle_identity(table, Forget("email:a@x.example", "p1", "r1"), max_claimants=10)
    assert [stage for stage, _, _ in out] == ["shredded"]
    assert parse_marker(table["email:a@x.example"]) == ("r1", True)
    assert [s for s, _, _ in handle_identity(table, Forget("email:a@x.example", "p1", "r1"))] == [
        "shredded"]  # fmt: skip
    # What reaches a marker: an event (its other ids forgotten), a claim (the claimer erased).
    event = handle_identity(
        table,
        Observe(
            "email:a@x.example",
            ("email:a@x.example", "user_id:u9"),
            _facts(Touchpoint("e1", "x", "web", 0, {"email": "a@x.example"})),
        ),
    )
    assert [(s, k) for s, k, _ in event] == [("identity", "user_id:u9"), ("dropped", "erased")]
