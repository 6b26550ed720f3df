"""Fault injection: each scenario breaks something while events stream in, then checks
what a user would: every accepted event counted exactly once in the view, the
stitching exact, no profile version ever went backwards for a reader, the view equal
to a rebuild from the log, and every stage caught up.

Each test runs its own broker and Redis (``stack``), so it can kill, pause or empty
them without touching other tests. ``@pytest.mark.faults``: the scenarios marked
``ci`` too run in the default test run (bounded); ``./dev test --faults`` runs all.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from config.settings import Settings
from producers.synthetic import generate
from sinks.redis_view import missing_partitions_sync
from sinks.redisconn import connect
from tests.integration.test_pipeline import caught_up, exported
from tests.support.data import assert_same_profiles, comparable, reference_views, write_jsonl
from tests.support.http import get_text, metric, post
from tests.support.kafka import consume_all
from tests.support.segments import STEADY, apply, assert_membership_agrees
from tests.support.view import VersionWatch, dump_as_read
from unifier.ingest import ingest_file
from unifier.processes import free_port
from unifier.rebuild import rebuild
from unifier.restore import restore_from_archive
from unifier.stack import EmbeddedStack
from unifier.topics import ensure_topics

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    """A broker and a Redis of this test's own (limits off: exact clusters)."""
    settings = Settings(
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        state_dir=tmp_path / "state",
        identity_limits={},
        identity_max_claimants=0,
        touchpoint_partitions=3,
        internal_partitions=4,
        worker_metrics_port=free_port(),
    )
    with EmbeddedStack(settings, tmp_path / "stack") as embedded:
        embedded.start_broker()
        embedded.start_redis()
        ensure_topics(settings)
        apply(settings, STEADY)  # segments move as events arrive and profiles merge
        yield embedded


class Stream:
    """Events ingested in the background, one per Kafka record (so they keep coming
    while the fault happens)."""

    def __init__(self, settings: Settings, tmp_path: Path, people: int, seed: int) -> None:
        self.events = generate(people=people, seed=seed)
        self.path = tmp_path / "events.jsonl"
        write_jsonl(self.path, self.events)
        self.settings = settings.model_copy(update={"producer_batch_events": 1})
        self.result: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.result = ingest_file(self.path, self.settings, progress=False)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(300)
        assert not self._thread.is_alive(), "ingest did not finish"
        assert self.result.delivered == len(self.events), self.result.summary()


def first_views(settings: Settings) -> None:
    """Until the worker has written something (bounded, not timed)."""
    for _ in range(600):
        if exported(settings):
            return
        time.sleep(0.05)
    raise AssertionError("the worker wrote nothing")


def assert_exact(settings: Settings, events: list[dict[str, Any]], watch: VersionWatch) -> None:
    """The check every scenario ends with."""
    caught_up(settings)
    got = exported(settings)
    assert_same_profiles(comparable(got.values()), reference_views(events, settings))
    assert sum(p["computed"]["event_count"] for p in got.values()) == len(events)
    assert watch.samples > 10 and not watch.backwards, watch.backwards[:3]
    assert_membership_agrees(settings, got)  # one record per transition, none missing
    before = dump_as_read(settings.redis_url)
    rebuild(settings, clear_first=True, progress=False)
    after = dump_as_read(settings.redis_url)
    assert {k: (before.get(k), v) for k, v in after.items() if v != before.get(k)} == {}
    assert after.keys() == before.keys()


def marked(settings: Settings) -> None:
    """Until every partition's completeness marker is in Redis (bounded, not timed)."""
    client = connect(settings.redis_url)
    try:
        partitions = list(range(settings.internal_partitions))
        for _ in range(600):
            if not missing_partitions_sync(client, partitions):
                return
            time.sleep(0.05)
    finally:
        client.close()
    raise AssertionError("the worker never marked the view complete")


def restart_redis_empty(stack: EmbeddedStack) -> None:
    stack.kill_one("redis")
    shutil.rmtree(stack.dir / "redis", ignore_errors=True)  # its append-only file too
    stack.start_redis()


@pytest.mark.ci
def test_redis_killed_and_back_empty_mid_stream(stack: EmbeddedStack, tmp_path: Path) -> None:
    """Redis lost everything while events flowed: the worker waits for it (no crash
    loop, nothing dropped), then writes the view again by itself."""
    settings = stack.settings
    stack.start_worker()
    with VersionWatch(settings.redis_url, tolerate_errors=True) as watch:
        with Stream(settings, tmp_path, people=80, seed=21) as stream:
            first_views(settings)
            # The worker's first check has marked the (then empty) view complete: what
            # follows is a loss it must notice, not its start.
            marked(settings)
            restart_redis_empty(stack)
        # As a reader waits for /ready: the view is whole again once the worker has
        # marked every partition of the new, empty Redis (its next check, seconds after
        # Redis answers).
        marked(settings)
        assert_exact(settings, stream.events, watch)
    # Rebuilt by the worker after the loss, not only at its start (an empty Redis then):
    # every partition at least twice.
    url = f"http://127.0.0.1:{settings.worker_metrics_port}/metrics"
    rebuilt = metric(get_text(url).splitlines(), "unifier_view_rebuilds_total")
    assert rebuilt >= 2 * settings.internal_partitions


def test_redis_paused_for_ten_seconds(stack: EmbeddedStack, tmp_path: Path) -> None:
    """Redis slow rather than gone (SIGSTOP for 10 s): the profile stage waits, the
    others carry on, nothing is lost."""
    settings = stack.settings
    stack.start_worker()
    with VersionWatch(settings.redis_url, tolerate_errors=True) as watch:
        with Stream(settings, tmp_path, people=80, seed=22) as stream:
            first_views(settings)
            pid = stack.procs["redis"].pid
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(10)  # the scenario's length, not an assertion
            finally:
                os.kill(pid, signal.SIGCONT)
        assert_exact(settings, stream.events, watch)


@pytest.mark.ci
def test_worker_killed_three_times(stack: EmbeddedStack, tmp_path: Path) -> None:
    settings = stack.settings
    stack.start_worker()
    with VersionWatch(settings.redis_url) as watch:
        with Stream(settings, tmp_path, people=120, seed=23) as stream:
            first_views(settings)
            for _ in range(3):
                stack.kill_one("worker")
                stack.start_worker()
        assert_exact(settings, stream.events, watch)


def test_the_touchpoints_topic_replayed_from_offset_zero(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    """The worker group's offsets on the touchpoints topic set back to 0 (an operator
    resets them, a restore rewinds), and every record sent again (a re-import, a
    mirror): the worker reads it all twice over, nothing is counted twice."""
    settings = stack.settings
    stack.start_worker()
    with VersionWatch(settings.redis_url) as watch:
        with Stream(settings, tmp_path, people=60, seed=24) as stream:
            pass
        caught_up(settings)
        stack.stop_one("worker")
        # As `kafka-consumer-groups --reset-offsets --to-earliest` does: a member of
        # the (now empty) group commits offset 0 (the embedded broker refuses commits
        # from outside the group).
        topic = settings.topic_touchpoints
        parts = range(settings.touchpoint_partitions)
        rewind = Consumer({"bootstrap.servers": settings.bootstrap_servers,
                           "group.id": settings.app_id, "enable.auto.commit": False,
                           "session.timeout.ms": 6000})  # fmt: skip
        try:
            rewind.subscribe([topic])
            for _ in range(300):  # bounded, not timed
                rewind.poll(0.1)
                if len(rewind.assignment()) == len(parts):
                    break
            rewind.commit(offsets=[TopicPartition(topic, p, 0) for p in parts], asynchronous=False)
            committed = rewind.committed([TopicPartition(topic, p) for p in parts], timeout=10)
            assert [tp.offset for tp in committed] == [0] * len(parts)
        finally:
            rewind.close()
        stack.start_worker()
        again = ingest_file(stream.path, settings, progress=False)
        assert again.delivered == len(stream.events)
        assert_exact(settings, stream.events, watch)


@pytest.mark.ci
def test_a_poison_record_in_every_stage(stack: EmbeddedStack, tmp_path: Path) -> None:
    """Garbage on the input topic and on both internal topics: each goes to the
    dead-letter topic with its reason, and the stages keep serving."""
    settings = stack.settings
    stack.start_worker()
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    with VersionWatch(settings.redis_url) as watch:
        with Stream(settings, tmp_path, people=60, seed=25) as stream:
            first_views(settings)
            for topic in (
                settings.topic_touchpoints,
                settings.topic_identity,
                settings.topic_profile_ops,
            ):
                for partition in range(3):
                    producer.produce(topic, b"\x00poison", partition=partition)
            assert producer.flush(30) == 0
        assert_exact(settings, stream.events, watch)
    dead = consume_all(settings, settings.topic_dlq, partitions=1)
    assert len(dead) == 9


class Website:
    """A website sending through the collector at a steady pace, a few events per
    request; a refused request (503) is sent again after its Retry-After, as the SDK
    does; every request that got a 2xx is kept."""

    def __init__(self, url: str, events: list[dict[str, Any]], per_request: int = 4) -> None:
        # (Bounded by the test's timeout: it sends until every event got a 2xx.)
        self.url = f"{url}/v1/touchpoints"
        self.chunks = [events[i : i + per_request] for i in range(0, len(events), per_request)]
        self.accepted: list[dict[str, Any]] = []
        self.refused = 0  # answers 503, each with a Retry-After
        self.unanswered = 0  # requests that got no answer in 10 s
        self.other: list[tuple[int, Any]] = []  # anything else: a defect
        self.stopped = threading.Event()  # the test is over: give up
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for chunk in self.chunks:
            while True:
                if self.stopped.is_set():
                    return
                try:
                    status, answer = post(self.url, chunk, COLLECTOR_KEY, timeout=10)
                except OSError:  # no answer (timed out, refused): sent again, as an SDK does
                    self.unanswered += 1
                    time.sleep(1.0)
                    continue
                if 200 <= status < 300:
                    self.accepted += chunk
                    time.sleep(0.02)
                    break
                if status == 503:
                    self.refused += 1
                    time.sleep(1.0)  # Retry-After says 5: shortened, the test is bounded
                    continue
                self.other.append((status, answer))
                return

    def __enter__(self) -> Website:
        self._thread.start()
        return self

    def finish(self) -> None:
        """Until every event got a 2xx (bounded by the test's timeout)."""
        self._thread.join()

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()


COLLECTOR_KEY = "wk_faults_web"


def test_the_broker_killed_and_back_20_s_later_under_collector_load(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    """The embedded broker dies (SIGKILL: its in-memory log with it) while a website
    sends through the collector, and is back 20 s later. Meanwhile the collector
    answers 503 with Retry-After and the website sends again; back, the stack restores
    the archive and then the collector's journal (what `stack up` does: the journal
    holds what the broker acknowledged in the archiver's last second), and the worker
    rebuilds everything. Every event that got a 2xx is counted exactly once; none got
    a 2xx and was lost."""
    settings = stack.settings.model_copy(
        update={
            "collector_port": free_port(),
            "collector_write_keys": {COLLECTOR_KEY: "web"},
            "collector_delivery_timeout_s": 3.0,
        }
    )
    stack.settings = settings
    events = generate(people=80, seed=26)
    stack.start_archiver()
    stack.start_worker()
    stack.start_collector()
    url = f"http://127.0.0.1:{settings.collector_port}"
    with Website(url, events) as website:
        with VersionWatch(settings.redis_url, tolerate_errors=True) as until_the_crash:
            first_views(settings)
            stack.kill_one("broker")  # mid-stream: requests are on their way
            before = len(website.accepted)
        assert until_the_crash.samples > 10 and not until_the_crash.backwards
        stack.kill_one("worker")  # a worker whose broker died can hang on SIGTERM
        stack.kill_one("archiver")
        time.sleep(20)  # the outage: the scenario's length, not an assertion
        # Nothing is acknowledged while the broker is away (one request may have been
        # acknowledged at the kill).
        assert len(website.accepted) <= before + 4, "a 2xx while the broker was down"
        assert website.refused > 0
        stack.start_broker()
        ensure_topics(settings)
        # What `stack up` does: the archive, then the journal, into the new broker. The
        # view is emptied and written again from the new log, whose profile versions
        # start again (README, "What survives what"): watched from here on.
        restored = restore_from_archive(settings)
        assert restored is not None and not restored.failed and restored.journal > 0
        assert restored.definitions == len(STEADY)  # the segments too, from Redis
        with VersionWatch(settings.redis_url, tolerate_errors=True) as after_the_restore:
            stack.start_archiver()
            stack.start_worker()
            website.finish()
            assert website.other == []
            assert sorted(e["event_id"] for e in website.accepted) == sorted(
                e["event_id"] for e in events
            )
            assert_exact(settings, events, after_the_restore)
