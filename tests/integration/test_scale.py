"""Many workers on a Redis Cluster: the deployment of a shop that outgrew one machine.

Three worker processes share 12 partitions of every stage and write the view into a
3-shard Redis Cluster. Each is stopped and started again in turn while events keep
arriving (a rolling restart: what a deploy does). What a user would notice must not
change: every event counted once, every customer stitched as the reference says,
versions never going backwards for a reader, and the lag back to zero — with
``unifier lag`` naming the worker that owns each partition.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from config.settings import Settings
from producers.synthetic import generate
from serve.lag import LagProbe
from tests.integration.test_pipeline import caught_up, exported
from tests.support.data import assert_same_profiles, comparable, reference_views, write_jsonl
from tests.support.view import VersionWatch
from unifier.ingest import ingest_file
from unifier.stack import EmbeddedStack
from unifier.topics import ensure_topics

pytestmark = pytest.mark.integration

WORKERS = ["worker", "worker-2", "worker-3"]


@pytest.mark.no_identity_limits
@pytest.mark.parametrize("redis_url", ["cluster"], indirect=True)
def test_three_workers_through_a_rolling_restart_on_a_redis_cluster(
    settings: Settings, workers: EmbeddedStack, tmp_path: Path
) -> None:
    # Snapshots every 2 s, not every minute: a deploy on a real shop restarts workers
    # that have taken many, and each restart (or rebalance) reads them back.
    settings = settings.model_copy(
        update={"internal_partitions": 12, "touchpoint_partitions": 12, "snapshot_interval_s": 2.0}
    )
    ensure_topics(settings)
    workers.settings = settings
    events = generate(people=400, seed=22)
    # A third of the events during each worker's restart, in small files sent one after
    # another: they keep coming while it stops, while it is away, while it comes back.
    thirds = [events[i :: len(WORKERS)] for i in range(len(WORKERS))]
    for worker in WORKERS:
        workers.start_worker(worker)

    def produce(part: list[dict[str, object]], n: int, done: threading.Event) -> None:
        try:
            for start in range(0, len(part), 60):
                path = tmp_path / f"part-{n}-{start}.jsonl"
                write_jsonl(path, part[start : start + 60])
                ingest_file(path, settings)
                time.sleep(0.25)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)
        finally:
            done.set()

    failures: list[BaseException] = []
    with VersionWatch(settings.redis_url) as watch:
        for n, worker in enumerate(WORKERS):  # one at a time: the others cover for it
            done = threading.Event()
            threading.Thread(target=produce, args=(thirds[n], n, done), daemon=True).start()
            workers.stop_one(worker)
            workers.start_worker(worker)
            assert done.wait(300) and not failures
        caught_up(settings)

    got = exported(settings)
    # Exact stitching, every event counted once.
    assert_same_profiles(comparable(got.values()), reference_views(events, settings))
    assert sum(p["computed"]["event_count"] for p in got.values()) == len(events)
    # A reader following any profile never saw it go back to an older version.
    assert watch.samples > 10 and not watch.backwards
    # The lag is back to 0, and every partition of every stage has one of the workers
    # as its owner (the embedded broker does not say: the workers do).
    with LagProbe(settings) as probe:
        for _ in range(30):
            rows = [r for r in probe.measure() if r.group == probe.group]
            if all(r.owner for r in rows):
                break
            time.sleep(1)
    assert rows and sum(r.lag for r in rows) == 0
    assert {r.owner for r in rows} == set(WORKERS)
    partitions = {(r.stage, r.partition) for r in rows}
    assert len(partitions) == len({r.stage for r in rows}) * 12
