"""The whole path on the real broker and Redis: JSON -> Avro -> Kafka -> worker -> Redis."""

import io
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from config.settings import Settings
from producers.synthetic import generate
from profiles.configured import identifier_priorities
from profiles.touchpoint import Touchpoint, parse_json
from schemas.codec import encode_touchpoint
from serve.lag import LagProbe, PartitionLag
from serve.view import RedisProfileView, index_key
from sinks.keys import sealer_for
from streams.patches.recovery import true_ends
from streams.topology import topology
from tests.support.backends import both_redis, docker_engine_answers
from tests.support.data import assert_same_profiles, comparable, reference_views, write_jsonl
from tests.support.http import get_text, metric
from tests.support.kafka import consume_all
from tests.support.view import VersionWatch, dump_as_read
from unifier.ingest import ingest_file
from unifier.processes import free_port
from unifier.rebuild import rebuild
from unifier.stack import EmbeddedStack

pytestmark = pytest.mark.integration


def caught_up(settings: Settings) -> None:
    last: list[PartitionLag] = []
    with LagProbe(settings) as probe:
        done = probe.wait(timeout=120, on_check=lambda rows: last.__setitem__(slice(None), rows))
    behind = [f"{r.topic}[{r.partition}] {r.committed}/{r.end}" for r in last if r.lag]
    assert done, f"the worker did not catch up: {', '.join(behind) or 'lag unknown'}"


def exported(settings: Settings) -> dict[str, dict]:  # type: ignore[type-arg]
    view = RedisProfileView.for_settings(settings)
    try:
        return {p["profile_id"]: p for p in view.scan()}
    finally:
        view.close()


@pytest.mark.no_identity_limits
def test_ingested_events_become_the_reference_profiles(
    topics: Settings, workers: EmbeddedStack, tmp_path: Path
) -> None:
    settings = topics
    events = generate(people=150, seed=1)[:1000]
    path = tmp_path / "events.jsonl"
    broken = write_jsonl(path, events, broken_every=97)
    workers.start_worker()

    err = io.StringIO()
    result = ingest_file(path, settings, err=err)

    assert result.accepted == len(events) == result.delivered
    assert result.rejected == len(broken) > 0
    rejects = [orjson.loads(line) for line in result.rejects_path.read_bytes().splitlines()]  # type: ignore[union-attr]
    assert {r["line"]: r["reason"] for r in rejects}.keys() == broken.keys()
    for r in rejects:
        assert broken[r["line"]] in r["reason"]
        assert f"{path}:{r['line']}: rejected: " in err.getvalue()

    caught_up(settings)
    got = exported(settings)
    assert_same_profiles(comparable(got.values()), reference_views(events, settings))
    assert sum(p["computed"]["event_count"] for p in got.values()) == len(events)
    # Without a restart or a rebalance, every record reached its stage the first time:
    # the offsets watchdog never had to re-read a partition (a batch that held one record
    # twice and missed another made it re-read, see streams.batches).
    assert "re-reading" not in (workers.dir / "worker.log").read_text()


@pytest.mark.no_identity_limits
def test_restarted_worker_recovers_its_table_exactly(
    topics: Settings, workers: EmbeddedStack, tmp_path: Path
) -> None:
    """The stream is split in two; the worker is restarted in between, and profiles are
    updated before and after. A table that came back short of its newest changelog
    records would show lower counts (and an older version, which the Redis guard
    would refuse); an event applied twice would show higher ones."""
    settings = topics
    events = generate(people=120, seed=2)
    half = len(events) // 2
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    write_jsonl(first, events[:half])
    write_jsonl(second, events[half:])

    workers.start_worker()
    # Small records: many table updates, many changelog records to recover.
    ingest_file(first, settings.model_copy(update={"producer_batch_events": 5}))
    caught_up(settings)
    before = exported(settings)
    workers.stop_one("worker")  # SIGTERM: a graceful stop

    workers.start_worker()
    ingest_file(second, settings)
    caught_up(settings)
    after = exported(settings)

    assert_same_profiles(comparable(after.values()), reference_views(events, settings))
    touched_twice = [
        pid for pid in before if pid in after and after[pid]["version"] > before[pid]["version"]
    ]
    assert len(touched_twice) > 10, "the test must update recovered profiles"


def test_a_restarted_worker_recovers_every_table_entry_of_a_burst(
    topics: Settings, workers: EmbeddedStack, tmp_path: Path
) -> None:
    """Customers whose identifiers all arrive in one record: the identity table takes
    hundreds of keys in one burst, so its changelog ends in batches of many records,
    whose end the embedded broker reports short (streams.patches.recovery). After a restart the
    worker must hold every identifier its changelog has, as its table-size gauge says."""
    settings = topics.model_copy(update={"worker_metrics_port": free_port()})
    workers.settings = settings
    events = [
        {"event_id": f"burst-{i}", "type": "seen", "source": "web",
         "occurred_at": "2026-11-01T10:00:00.000Z",
         "identifiers": {"user_id": f"u{i}", "email": f"p{i}@x.example", "loyalty_id": f"L{i}",
                         "crm_id": f"c{i}", "anonymous_id": f"a{i}"}}
        for i in range(150)
    ]  # fmt: skip
    path = tmp_path / "burst.jsonl"
    write_jsonl(path, events)
    workers.start_worker()
    ingest_file(path, settings)
    caught_up(settings)
    workers.stop_one("worker")  # SIGTERM: a graceful stop, every table write sent
    latest: dict[bytes, bytes | None] = {}
    for m in consume_all(
        settings, topology(settings).tables["identity"].changelog, settings.internal_partitions
    ):
        latest[m.key()] = m.value()
    held = sum(1 for value in latest.values() if value is not None)
    assert held >= 5 * len(events)
    # The burst did end in multi-record batches: the broker reports some end short.
    topic = topology(settings).tables["identity"].changelog
    reader = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "ends"})
    reported = {
        (topic, p): reader.get_watermark_offsets(TopicPartition(topic, p), cached=False)[1]
        for p in range(settings.internal_partitions)
    }
    reader.close()
    if not docker_engine_answers():  # the embedded broker: Kafka reports ends right
        assert true_ends(settings.bootstrap_servers, reported) != reported

    workers.start_worker()  # recovers its tables from the changelogs, then is ready
    url = f"http://127.0.0.1:{settings.worker_metrics_port}/metrics"
    deadline = time.monotonic() + 30
    while True:
        keys = metric(get_text(url).splitlines(), "unifier_table_keys", table="identity")
        if keys == held or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert keys == held


@pytest.mark.no_identity_limits
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
@both_redis
def test_worker_stopped_mid_stream_applies_every_event_once(
    topics: Settings, workers: EmbeddedStack, tmp_path: Path, how: str
) -> None:
    """Stop (or kill) the worker while it still has input, start a new one: every
    event ends up applied exactly once, and every stage catches up (no commit stays
    stuck behind records skipped during the restart)."""
    settings = topics
    events = generate(people=120, seed=5)
    path = tmp_path / "events.jsonl"
    write_jsonl(path, events)
    workers.start_worker()
    with VersionWatch(settings.redis_url) as watch:
        # One event per Kafka record, so the worker is still busy when it is stopped.
        ingest_file(path, settings.model_copy(update={"producer_batch_events": 1}))
        for _ in range(600):  # until the worker has written something (bounded, not timed)
            if exported(settings):
                break
            time.sleep(0.05)
        if how == "SIGKILL":
            workers.kill_one("worker")
        else:
            workers.stop_one("worker")
        with LagProbe(settings) as probe:
            behind = sum(r.lag for r in probe.measure())
        assert behind > 0, "the worker had already caught up: nothing was mid-stream"

        workers.start_worker()
        caught_up(settings)
    got = exported(settings)
    assert_same_profiles(comparable(got.values()), reference_views(events, settings))
    assert sum(p["computed"]["event_count"] for p in got.values()) == len(events)
    # Readers never saw a profile go back to an older version, through the restart.
    assert watch.samples > 10 and not watch.backwards

    # Redis is a cache of the log: wiped and rebuilt, the same view comes back, key
    # for key — every live profile (view and explanation), every identifier key, and a
    # redirect for every merged-away id that reads as the same profile (issue #5: a
    # restart once left a redirect missing, and replayed records could point
    # identifier keys at merged-away ids).
    before = dump_as_read(settings.redis_url)
    result = rebuild(settings, clear_first=True, progress=False)
    after = dump_as_read(settings.redis_url)
    assert after.keys() == before.keys()
    assert {k: (before[k], v) for k, v in after.items() if v != before[k]} == {}
    assert result.profiles == len(got) and result.cleared == len(before)
    # Every identifier resolves to the live profile that holds it, not through a redirect.
    live = {p["profile_id"]: p for p in got.values()}
    sealer = sealer_for(settings)
    for key, value in before.items():
        if key.startswith("unifier:id:"):
            id_type = key.removeprefix("unifier:id:").split(":", 1)[0]
            held = live[value.decode()]["identifiers"][id_type]
            assert key in {index_key(id_type, v, sealer) for v in held}


def test_undecodable_and_unusable_records_go_to_the_dlq_with_reasons(
    topics: Settings, workers: EmbeddedStack
) -> None:
    settings = topics

    def signed_in(event_id: str, email: str) -> Touchpoint:
        return parse_json(
            {
                "event_id": event_id,
                "type": "signed_in",
                "source": "web",
                "occurred_at": "2026-11-22T10:00:00Z",
                "identifiers": {"email": email},
            },
            identifier_priorities(settings),
        )

    good = signed_in("ok-1", "Ana@X.com")
    no_ids = signed_in("bad-2", "not-an-email")
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    producer.produce(settings.topic_touchpoints, b"garbage", partition=0)
    producer.produce(settings.topic_touchpoints, encode_touchpoint(no_ids), partition=1)
    producer.produce(settings.topic_touchpoints, encode_touchpoint(good), partition=2)
    assert producer.flush(10) == 0
    port = free_port()
    workers.settings = settings.model_copy(update={"worker_metrics_port": port})
    workers.start_worker()
    caught_up(settings)
    # The on-call engineer sees them counted, by reason.
    metrics = get_text(f"http://127.0.0.1:{port}/metrics").splitlines()
    assert 'unifier_dlq_records_total{reason="route.decode"} 1.0' in metrics
    assert 'unifier_dlq_records_total{reason="route.validate"} 1.0' in metrics

    view = RedisProfileView.for_settings(settings)
    assert view.lookup("email", "ana@x.com")["identifiers"]["email"] == ["ana@x.com"]  # type: ignore[index]
    view.close()

    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": "dlq-reader",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([settings.topic_dlq])
    dead = []
    for _ in range(100):
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            dead.append(msg)
        if len(dead) == 2:
            break
    consumer.close()
    by_stage = {dict(m.headers())["x-dlq-stage"].decode(): m for m in dead}
    assert set(by_stage) == {"route.decode", "route.validate"}
    decode = dict(by_stage["route.decode"].headers())
    assert decode["x-dlq-reason"] == (
        b"neither Avro single-object encoding (C3 01) nor Schema Registry framing (00)"
    )
    assert decode["x-source-topic"].decode() == settings.topic_touchpoints
    assert decode["x-source-partition"] == b"0" and decode["x-source-offset"] == b"0"
    # The bytes are sealed whole (they could hold anything); the reader opens them.
    assert decode["x-dlq-sealed"] == b"1" and b"garbage" not in by_stage["route.decode"].value()
    sealer = sealer_for(settings)
    assert sealer is not None and sealer.open_bytes(by_stage["route.decode"].value()) == b"garbage"
    validate = dict(by_stage["route.validate"].headers())
    assert validate["x-dlq-reason"] == b"no usable identifier (email: not an email address)"
