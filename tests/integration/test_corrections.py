"""Identity corrections on the real broker and Redis: splitting wrong merges while
events for both parts are in flight and a worker is killed, held against the
reference with the split's block in force from the start."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from config.settings import Settings
from producers.kafka import TouchpointProducer
from profiles.configured import identity_rules
from profiles.reference import reference_clusters
from profiles.rules import BLOCKED, key, usable
from profiles.touchpoint import Touchpoint
from schemas.records import ProfileMerge, merge_from
from tests.integration.test_pipeline import caught_up, exported
from tests.support.kafka import consume_all
from unifier.cli import app
from unifier.processes import free_port
from unifier.stack import EmbeddedStack

pytestmark = pytest.mark.integration

T0 = 1_795_000_000_000
HOUSEHOLDS = 12


def send(settings: Settings, events: list[Touchpoint]) -> None:
    with TouchpointProducer(settings) as producer:
        producer.send_many(events)
    assert producer.report.ok


def cli(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=settings.env())


class Household:
    """Ana (email, phone) and Bo (loyalty card, phone), wrongly merged through the
    store's tablet, which each of them used once (its anonymous id)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.email = f"ana.{n}@corrections.example"
        self.ana_phone = f"+1415555{n:04d}"
        self.card = f"LC-{n:05d}"
        self.bo_phone = f"+1628555{n:04d}"
        self.tablet = f"tablet-{n}"
        self._seq = 0

    def _ev(self, ids: dict[str, str], kind: str = "page_viewed") -> Touchpoint:
        self._seq += 1
        return Touchpoint(f"h{self.n}-{self._seq}", kind, "web", T0 + self._seq * 1000, ids,
                          {"first_name": "Ana" if "email" in ids else "Bo"})  # fmt: skip

    def ana(self) -> Touchpoint:
        return self._ev({"email": self.email, "phone": self.ana_phone})

    def bo(self) -> Touchpoint:
        return self._ev({"loyalty_id": self.card, "phone": self.bo_phone}, "pos_sale")

    def wrong(self) -> list[Touchpoint]:
        return [self._ev({"email": self.email, "anonymous_id": self.tablet}),
                self._ev({"loyalty_id": self.card, "anonymous_id": self.tablet})]  # fmt: skip


def test_a_split_with_events_in_flight_and_a_worker_kill_ends_at_the_reference(
    topics: Settings, workers: EmbeddedStack
) -> None:
    settings = topics
    port = free_port()
    workers.settings = settings.model_copy(update={"worker_metrics_port": port})
    workers.start_worker()
    homes = [Household(n) for n in range(HOUSEHOLDS)]
    first = [e for h in homes for e in (h.ana(), h.ana(), h.bo(), h.bo(), *h.wrong())]
    send(settings, first)
    caught_up(settings)
    merged = {h.n: _holder(settings, "email", h.email) for h in homes}
    for h in homes:  # the wrong merge happened: Bo's card is in Ana's profile
        assert _holder(settings, "loyalty_id", h.card) == merged[h.n]

    # Split every household while events for both of them, and the wrong events
    # again, are on their way; the worker is killed in the middle.
    later = [e for h in homes for e in (h.ana(), h.bo(), h.bo())]
    again = [e for e in first if "anonymous_id" in e.identifiers]
    send(settings, later[: len(later) // 2])
    for h in homes:
        done = cli(settings, "profiles", "split", merged[h.n], "--detach",
                   f"loyalty_id={h.card}", "--reason", "T-42", "--wait", "0")  # fmt: skip
        assert done.exit_code == 0, done.output
    workers.kill_one("worker")
    send(settings, later[len(later) // 2 :] + again)
    workers.start_worker()
    caught_up(settings)

    events = first + later
    rules = identity_rules(settings)
    blocks = [
        (f"h{h.n}",
         frozenset({f"loyalty_id:{h.card}", f"phone:{h.bo_phone}"}),
         frozenset({f"email:{h.email}", f"phone:{h.ana_phone}", f"anonymous_id:{h.tablet}"}))
        for h in homes
    ]  # fmt: skip
    ref = reference_clusters(events, rules, "US", blocks=blocks)
    profiles = exported(settings)
    got = {frozenset(f"{t}:{v}" for t, vs in p["identifiers"].items() for v in vs)
           for p in profiles.values()}  # fmt: skip
    assert got == set(ref.clusters)
    assert len(got) == 2 * HOUSEHOLDS
    # Every event counted once, in the profile of its anchor.
    where = ref.cluster_of()
    expected = Counter(
        frozenset(ref.clusters[where[key(usable(e.identifiers, rules, "US")[0][0])]])
        for e in events
    )
    counted = {
        frozenset(f"{t}:{v}" for t, vs in p["identifiers"].items() for v in vs):
        p["computed"]["event_count"] for p in profiles.values()
    }  # fmt: skip
    assert counted == dict(expected)
    for h in homes:
        ana, bo = profiles[merged[h.n]], profiles[_holder(settings, "loyalty_id", h.card)]
        assert ana["traits"]["first_name"] == "Ana" and bo["traits"]["first_name"] == "Bo"
        assert bo["profile_id"].startswith(merged[h.n] + "~")

    # Downstream learns it: one split record per household, naming what moved.
    splits = [m for m in _merges(settings) if m.kind == "split"]
    assert len({m.event_id for m in splits}) == HOUSEHOLDS
    assert {m.loser for m in splits} == set(merged.values())
    # The why says what keeps them apart, and the wrong event sent again was refused
    # where it landed (Bo's part: his card anchors it).
    for pid in (merged[0], _holder(settings, "loyalty_id", homes[0].card)):
        why = cli(settings, "profiles", "why", pid, "--json")
        assert why.exit_code == 0, why.output
        [kept] = orjson.loads(why.stdout)["splits"]
        assert kept["apart"] == sorted(
            [f"loyalty_id:{homes[0].card}", f"phone:{homes[0].bo_phone}"]
        )
    refused = [r for r in orjson.loads(why.stdout)["refused"] if r["rule"] == "split"]
    assert [r["identifier"] for r in refused] == [f"anonymous_id:{homes[0].tablet}"]
    shown = cli(settings, "profiles", "why", pid)
    assert f"kept apart from anonymous_id:{homes[0].tablet}" in shown.output
    # The audit trail has each request (who, why), what the workers did with it, and the
    # links refused since — with their evidence, without personal data.
    trail = cli(settings, "audit", "--action", "split", "--action", "refused", "--action",
                "merge", "--json")  # fmt: skip
    assert trail.exit_code == 0, trail.output
    records = [orjson.loads(line) for line in trail.stdout.splitlines()]
    asked = [r for r in records if r["action"] == "split" and r["actor"].startswith("cli:")]
    made = [r for r in records if r["action"] == "split" and r["actor"] == "worker"]
    assert len(asked) == len(made) == HOUSEHOLDS
    assert {r["reason"] for r in asked} == {"T-42"}
    assert {r["split"] for r in made} == {r["split"] for r in asked}
    refusals = [r for r in records if r["action"] == "refused" and r["rule"] == "split"]
    assert {r["event_id"] for r in refusals} >= {e.event_id for e in again if "loyalty_id" in
                                                 e.identifiers}  # fmt: skip
    merges = [r for r in records if r["action"] == "merge"]
    assert len(merges) >= HOUSEHOLDS and all(r["event_id"] for r in merges)
    assert not any(h.card in trail.stdout or h.email in trail.stdout for h in homes)


def _holder(settings: Settings, id_type: str, value: str) -> str:
    done = cli(settings, "profiles", "get", f"--{id_type.replace('_', '-')}", value)
    assert done.exit_code == 0, done.output
    return str(orjson.loads(done.stdout)["profile_id"])


def _merges(settings: Settings) -> list[ProfileMerge]:
    return [
        merge_from(m.value())
        for m in consume_all(settings, settings.topic_profile_merges, settings.internal_partitions)
    ]


def test_a_split_asked_wrongly_says_why(topics: Settings, workers: EmbeddedStack) -> None:
    settings = topics
    port = free_port()
    workers.settings = settings.model_copy(update={"worker_metrics_port": port})
    workers.start_worker()
    h = Household(0)
    send(settings, [h.ana(), h.bo(), *h.wrong()])
    caught_up(settings)
    pid = _holder(settings, "email", h.email)
    not_held = cli(settings, "profiles", "split", pid, "--detach", "email=zed@corrections.example")
    assert not_held.exit_code == 2 and "does not hold email=z***@corrections.example" in (
        not_held.output
    )
    assert "zed@" not in not_held.output  # masked
    held = [("email", h.email), ("phone", h.ana_phone), ("loyalty_id", h.card),
            ("phone", h.bo_phone), ("anonymous_id", h.tablet)]  # fmt: skip
    everything = [f"--detach={t}={v}" for t, v in held]
    all_of_it = cli(settings, "profiles", "split", pid, *everything)
    assert all_of_it.exit_code == 2 and "nothing would stay" in all_of_it.output
    assert (
        cli(settings, "profiles", "split", "p_nobody", "--detach", "email=a@b.org").exit_code == 2
    )
    bad = cli(settings, "profiles", "split", pid, "--detach", "email")
    assert bad.exit_code == 2 and "TYPE=VALUE" in bad.output
    # Done right, it waits and shows both.
    done = cli(settings, "profiles", "split", pid, "--detach", f"loyalty_id={h.card}", "--json")
    assert done.exit_code == 0, done.output
    result = orjson.loads(done.stdout.split("\n", 1)[1])
    assert result["profile"]["identifiers"]["email"] == [h.email]
    [part] = result["parts"]
    assert part["identifiers"]["loyalty_id"] == [h.card]
    assert part["computed"]["event_count"] == 2  # Bo's sale and his tablet visit


STORE_PHONE = "+14155550199"


def _shop(n_customers: int) -> list[Touchpoint]:
    """Customers who each signed up online (email, card) and bought at the till, where
    the clerk typed the store's own phone for most of them; a few couples share a card
    too (a real link, which must survive)."""
    events = []
    seq = 0

    def ev(ids: dict[str, str], kind: str) -> Touchpoint:
        nonlocal seq
        seq += 1
        return Touchpoint(f"s{seq}", kind, "pos" if kind == "pos_sale" else "web",
                          T0 + seq * 1000, ids)  # fmt: skip

    for n in range(n_customers):
        card = f"LC-{n // 2 if n < 6 else n:05d}"  # customers 0-5 share a card in pairs
        events.append(ev({"email": f"c{n}@shop.example", "loyalty_id": card}, "signed_up"))
        till = {"loyalty_id": card, "phone": STORE_PHONE if n % 4 else f"+1628555{n:04d}"}
        events.append(ev(till, "pos_sale"))
    return events


@pytest.mark.no_identity_limits  # (so the store's phone can join them all first)
def test_blocking_a_shared_phone_afterwards_splits_exactly_what_it_alone_merged(
    topics: Settings, workers: EmbeddedStack
) -> None:
    settings = topics
    workers.start_worker()
    events = _shop(16)
    send(settings, events)
    caught_up(settings)
    blob = _holder(settings, "phone", STORE_PHONE)
    assert sum(len(v) for v in exported(settings)[blob]["identifiers"].values()) > 20

    # A dry run first: what the block would do, nothing changed.
    rules = identity_rules(settings)
    blocked = replace(rules, marks={f"phone:{STORE_PHONE}": BLOCKED})
    ref = reference_clusters(events, blocked, "US")
    dry = cli(settings, "identity", "preview", "--block", f"phone={STORE_PHONE}", "--json")
    assert dry.exit_code == 0, dry.output
    [would] = orjson.loads(dry.stdout)["would_split"]
    assert would["profile_id"] == blob
    parts = {frozenset(f"{t}:{v}" for t, vs in p["identifiers"].items() for v in vs)
             for p in [would["rest"], *would["parts"]]}  # fmt: skip
    assert parts <= set(ref.clusters) and len(parts) > 1
    assert _holder(settings, "phone", STORE_PHONE) == blob  # unchanged

    done = cli(settings, "identity", "block", f"phone={STORE_PHONE}", "--reason", "T-7",
               "--json")  # fmt: skip
    assert done.exit_code == 0, done.output
    applied = orjson.loads(done.stdout)
    assert applied["rule"] == "block phone" and list(applied["profiles"]) == [blob]
    caught_up(settings)

    got = {frozenset(f"{t}:{v}" for t, vs in p["identifiers"].items() for v in vs)
           for p in exported(settings).values()}  # fmt: skip
    assert got == set(ref.clusters)
    assert len(got) == 16 - 3  # the three couples sharing a card stay together
    assert cli(settings, "profiles", "get", "--phone", STORE_PHONE).exit_code == 1
    # From now on the phone links nothing: a new customer typed in with it stays apart.
    till = {"loyalty_id": "LC-99999", "phone": STORE_PHONE}
    online = {"email": "new@shop.example", "loyalty_id": "LC-99999"}
    send(settings, [Touchpoint("new-1", "pos_sale", "pos", T0 + 10**6, till),
                    Touchpoint("new-2", "signed_up", "web", T0 + 10**6 + 1, online)])  # fmt: skip
    caught_up(settings)
    new = exported(settings)[_holder(settings, "email", "new@shop.example")]
    assert new["identifiers"] == {"email": ["new@shop.example"], "loyalty_id": ["LC-99999"]}
    rules_now = cli(settings, "identity", "rules", "--json")
    assert rules_now.exit_code == 0 and "block list" in rules_now.stdout
    assert STORE_PHONE not in rules_now.stdout  # kept by token, not in clear
