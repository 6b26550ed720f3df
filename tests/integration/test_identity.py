"""Identity stitching on the real broker: merges, refused merges, and convergence
whatever the partitioning and arrival order."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from config.settings import Settings
from producers.kafka import TouchpointProducer
from producers.synthetic import generate_journeys, score
from profiles.configured import identifier_priorities
from profiles.touchpoint import Touchpoint, parse_json
from schemas.codec import CODEC, PROFILE_MERGE
from schemas.records import ProfileMerge, ProfileRemoved, ProfileUpdate
from serve.feed import ProfileFeed
from serve.view import RedisProfileView
from sinks.keys import sealer_for
from tests.integration.test_pipeline import caught_up, exported
from tests.support.data import assert_same_profiles, comparable, reference_views
from tests.support.http import get_json, get_text, metric
from tests.support.kafka import consume_all
from tests.support.segments import STEADY, apply, assert_membership_agrees
from unifier.processes import free_port
from unifier.stack import EmbeddedStack
from unifier.topics import ensure_topics

pytestmark = pytest.mark.integration


def send(settings: Settings, events: list[Touchpoint]) -> None:
    with TouchpointProducer(settings) as producer:
        producer.send_many(events)
    assert producer.report.ok


def ev(n: int, kind: str, **ids: str) -> Touchpoint:
    return Touchpoint(f"e{n}", kind, "web", 1_795_000_000_000 + n * 1000, ids)


def test_a_visitor_who_signs_in_becomes_one_profile(
    topics: Settings, workers: EmbeddedStack
) -> None:
    settings = topics
    port = free_port()
    workers.settings = settings.model_copy(update={"worker_metrics_port": port})
    workers.start_worker()
    send(settings, [ev(1, "page_viewed", anonymous_id="a-9"),
                    ev(2, "email_opened", email="Ana@Example.org")])  # fmt: skip
    caught_up(settings)
    before = exported(settings)
    assert len(before) == 2  # two strangers so far
    # A downstream service keeps its own copy by following the output topics.
    copy: dict[str, dict[str, Any]] = {}
    first = follow(settings, copy, until=lambda: copy == before)

    send(settings, [ev(3, "signed_in", user_id="u-1", email="ana@example.org", anonymous_id="a-9")])
    caught_up(settings)
    [ana] = exported(settings).values()
    # It resumes where it stopped (its group's commit), and its copy re-keys with the
    # merges: one profile, the one the API serves.
    second = follow(settings, copy, until=lambda: copy == {ana["profile_id"]: ana})
    assert not set(first) & set(second), "records seen before were delivered again"
    assert ana["identifiers"] == {
        "anonymous_id": ["a-9"], "email": ["ana@example.org"], "user_id": ["u-1"]
    }  # fmt: skip
    assert ana["computed"]["event_count"] == 3
    # Profiles merged away answer with the survivor, as does every identifier. (The
    # sign-in founds a profile for u-1, which meets both earlier ones: two merges.)
    survivor = ana["profile_id"]
    view = RedisProfileView.for_settings(settings)
    try:
        for pid in before:
            assert view.get(pid)["profile_id"] == survivor  # type: ignore[index]
        assert view.lookup("anonymous_id", "a-9")["profile_id"] == survivor  # type: ignore[index]
        found = view.why(survivor)
    finally:
        view.close()
    assert found is not None
    merges = found[1]["merges"]
    assert {m["event_id"] for m in merges} == {"e3"}
    assert set(before) - {survivor} <= {m["loser"] for m in merges}
    # Downstream services learn of each merge on profile-merges.
    records = consume_all(settings, settings.topic_profile_merges, settings.internal_partitions)
    published = [CODEC.read(m.value(), (PROFILE_MERGE,))[1] for m in records]
    assert sorted((r["loser"], r["event_id"]) for r in published) == sorted(
        (m["loser"], m["event_id"]) for m in merges
    )
    assert all(r["identifier_type"] in ("email", "anonymous_id", "user_id") for r in published)
    metrics = get_text(f"http://127.0.0.1:{port}/metrics").splitlines()
    assert "unifier_identity_merges_total 2.0" in metrics
    # What went through each stage: 3 events in, 3 profiles founded (2 merged away),
    # every applied event's latency observed, Redis written in pipelines.
    assert metric(metrics, "unifier_stage_messages_in_total", stage="route") == 3
    assert metric(metrics, "unifier_stage_messages_out_total", stage="route", to="identity") == 3
    assert metric(metrics, "unifier_profiles_founded_total") == 3
    assert metric(metrics, "unifier_event_to_view_seconds_count") == 3
    assert metric(metrics, "unifier_redis_write_batch_profiles_count") >= 3
    assert metric(metrics, "unifier_stage_records_total", stage="profile") >= 3
    assert metric(metrics, "unifier_rebalances_total") >= 1
    # Its log is one JSON object per line (not a terminal), and no identifier in clear.
    log = (workers.dir / "worker.log").read_text()
    lines = [orjson.loads(line) for line in log.splitlines() if line.strip()]
    assert any(doc["msg"].startswith("unifier worker ready") for doc in lines)
    assert all({"ts", "level", "logger", "msg"} <= set(doc) for doc in lines)
    assert "example.org" not in log.lower()
    # Recovered, the broker and Redis answer: ready.
    assert get_json(f"http://127.0.0.1:{port}/ready") == (200, {"status": "ready"})
    assert get_json(f"http://127.0.0.1:{port}/health") == (200, {"status": "ok"})
    # profile-updates (compacted, keyed by profile id): the survivor's latest record is
    # its current profile; each merged-away profile ends with a tombstone.
    latest: dict[str, ProfileUpdate | ProfileRemoved] = {}
    with ProfileFeed(settings.bootstrap_servers, updates_topic=settings.topic_profile_updates,
                     merges_topic=settings.topic_profile_merges,
                     sealer=sealer_for(settings)) as feed:  # fmt: skip
        for change in feed.changes(merges=False, until_end=True):
            assert not isinstance(change, ProfileMerge)
            latest[change.profile_id] = change
    update = latest[survivor]
    assert isinstance(update, ProfileUpdate) and update.view() == ana
    assert "identifiers" in update.changed_fields
    assert {pid for pid, v in latest.items() if isinstance(v, ProfileRemoved)} == {
        m["loser"] for m in merges
    }


def follow(
    settings: Settings, copy: dict[str, dict[str, Any]], until: Callable[[], bool]
) -> list[tuple[str, str, int]]:
    """A downstream service's loop (README, "Following profile changes"): apply each
    change to a copy until it looks as expected; returns what it read."""
    read: list[tuple[str, str, int]] = []
    with ProfileFeed(
        settings.bootstrap_servers,
        group_id=f"{settings.app_id}.crm-sync",
        updates_topic=settings.topic_profile_updates,
        merges_topic=settings.topic_profile_merges,
        config={"session.timeout.ms": 6000},  # the embedded broker's slow join (README)
        sealer=sealer_for(settings),  # personal data opened, as a service with keys would
    ) as feed:
        for change in feed.changes(idle_s=60):
            match change:
                case ProfileUpdate():
                    if change.version > copy.get(change.profile_id, {}).get("version", -1):
                        copy[change.profile_id] = change.view()
                    read.append(("update", change.profile_id, change.version))
                case ProfileRemoved():
                    copy.pop(change.profile_id, None)
                    read.append(("removed", change.profile_id, 0))
                case ProfileMerge():
                    copy.pop(change.loser, None)
                    read.append(("merge", change.loser, change.merged_at_ms))
            if until():
                break
    assert until(), f"the copy did not converge: {sorted(copy)}"
    return read


def test_a_shared_tablet_does_not_fuse_two_people(topics: Settings, workers: EmbeddedStack) -> None:
    settings = topics
    port = free_port()
    workers.settings = settings.model_copy(update={"worker_metrics_port": port})
    workers.start_worker()
    send(settings, [ev(1, "signed_in", user_id="ana", anonymous_id="tablet"),
                    ev(2, "page_viewed", anonymous_id="tablet")])  # fmt: skip
    caught_up(settings)
    send(settings, [ev(3, "signed_in", user_id="bo", anonymous_id="tablet")])
    caught_up(settings)
    profiles = exported(settings)
    assert sorted(tuple(p["identifiers"]["user_id"]) for p in profiles.values()) == [
        ("ana",),
        ("bo",),
    ]
    [bo] = [p for p in profiles.values() if p["identifiers"]["user_id"] == ["bo"]]
    assert bo["computed"]["refused_links"] == 1
    view = RedisProfileView.for_settings(settings)
    try:
        found = view.why(bo["profile_id"])
    finally:
        view.close()
    assert found is not None
    [refused] = found[1]["refused"]
    assert refused["identifier"] == "anonymous_id:tablet"
    assert refused["rule"] == "limit user_id=1"
    # ... and counted in the worker's metrics.
    metrics = get_text(f"http://127.0.0.1:{port}/metrics").splitlines()
    assert 'unifier_identity_refused_links_total{rule="limit user_id=1"} 1.0' in metrics


def run(settings: Settings, events: list[dict[str, Any]], tmp: Path) -> dict[str, dict[str, Any]]:
    ensure_topics(settings)
    with EmbeddedStack(settings, tmp) as stack:
        stack.start_worker()
        send(settings, [parse_json(e, identifier_priorities(settings)) for e in events])
        caught_up(settings)
        return exported(settings)


def fresh(settings: Settings, partitions: int) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return settings.model_copy(
        update={
            "app_id": f"conv-{tag}",
            "touchpoint_partitions": partitions,
            "internal_partitions": partitions,
            **{
                name: f"c{tag}.{name}"
                for name in (
                    "topic_touchpoints",
                    "topic_dlq",
                    "topic_identity",
                    "topic_profile_ops",
                    "topic_profile_updates",
                    "topic_profile_merges",
                    "topic_schemas",
                    "topic_segments",
                    "topic_segment_membership",
                    "topic_erasures",
                    "topic_privacy",
                    "topic_audit",
                )
            },
        }
    )


@pytest.mark.no_identity_limits
def test_the_same_clusters_whatever_the_partitioning_and_order(
    settings: Settings, tmp_path: Path
) -> None:
    """1 partition in time order and 8 partitions shuffled: the same profiles as the
    single-threaded reference (limits off, so order cannot matter)."""
    journeys = generate_journeys(250, seed=13, shuffle=False)
    events = journeys.events
    shuffled = list(events)
    random.Random(4).shuffle(shuffled)
    want = reference_views(events, settings)
    one = run(fresh(settings, 1), events, tmp_path / "one")
    eight = run(fresh(settings, 8), shuffled, tmp_path / "eight")
    assert_same_profiles(comparable(one.values()), want)
    assert_same_profiles(comparable(eight.values()), want)
    assert sum(p["computed"]["event_count"] for p in eight.values()) == len(events)


def test_with_the_default_rules_the_synthetic_truth_is_found(
    settings: Settings, tmp_path: Path
) -> None:
    journeys = generate_journeys(250, seed=17)
    got = run(fresh(settings, 4), journeys.events, tmp_path / "run")
    clusters = [
        {f"{t}:{v}" for t, values in p["identifiers"].items() for v in values} for p in got.values()
    ]
    result = score(clusters, journeys.truth)
    assert result.precision >= 0.999, result
    assert result.recall >= 0.99, result


@pytest.mark.no_identity_limits
def test_two_workers_through_a_rebalance(settings: Settings, tmp_path: Path) -> None:
    """A second worker joins the group halfway: partitions (and their tables) move,
    processing goes on, and the profiles are the reference's — every event applied
    once, every merge finished, every stage caught up (streams/patches/offsets.py) —
    and each segment transition is on the membership topic once."""
    events = generate_journeys(200, seed=19).events
    half = len(events) // 2
    settings = fresh(settings, 4)
    ensure_topics(settings)
    apply(settings, STEADY)
    with EmbeddedStack(settings, tmp_path / "two") as stack:
        stack.start_worker("worker-1")
        send(settings, [parse_json(e, identifier_priorities(settings)) for e in events[:half]])
        stack.start_worker("worker-2")  # waits until the rebalance has completed
        send(settings, [parse_json(e, identifier_priorities(settings)) for e in events[half:]])
        caught_up(settings)
        got = exported(settings)
        assert_membership_agrees(settings, got)
    assert_same_profiles(comparable(got.values()), reference_views(events, settings))
    assert sum(p["computed"]["event_count"] for p in got.values()) == len(events)
