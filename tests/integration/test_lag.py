"""End offsets must be right after multi-record batches, on every broker.

The embedded broker answers ListOffsets with the base offset of the last batch + 1;
lag computed that way would read 0 while the worker is far behind. This test
produces in large batches and checks the probe sees every record.
"""

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from config.settings import Settings
from serve.lag import LagProbe
from streams.patches.recovery import true_ends

pytestmark = pytest.mark.integration


def test_end_offsets_count_every_record_of_batched_produces(topics: Settings) -> None:
    settings = topics
    producer = Producer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "linger.ms": 50,
            "batch.num.messages": 1000,
        }
    )
    per_partition = {0: 250, 1: 40, 2: 0}
    an_hour_ago = int(time.time() * 1000) - 3_600_000
    for partition, count in per_partition.items():
        for i in range(count):
            producer.produce(settings.topic_touchpoints, b"x%d" % i, partition=partition,
                             timestamp=an_hour_ago + i)  # fmt: skip
    assert producer.flush(10) == 0

    with LagProbe(settings) as probe:
        rows = probe.measure()
        assert probe.wait(timeout=3) is False  # nobody consumes: it must not claim caught up
    route = {r.partition: r for r in rows if r.stage == "route"}
    assert {p: route[p].end for p in per_partition} == per_partition
    assert {p: route[p].lag for p in per_partition} == per_partition
    assert all(r.committed is None for r in route.values())
    # Lag in time: the oldest record nobody processed was produced an hour ago.
    assert all(3600 <= route[p].lag_seconds < 4000 for p in (0, 1))  # type: ignore[operator]
    assert route[2].lag_seconds == 0
    assert {r.stage for r in rows} == {"route", "identity", "profile"}
    assert all(r.lag == 0 and r.lag_seconds == 0 for r in rows if r.stage != "route")


def test_table_recovery_reads_a_changelog_to_the_end_of_its_last_batch(
    topics: Settings,
) -> None:
    """What a worker's table recovery is given as the end of each changelog partition
    (streams.patches.recovery): the last record's offset + 1, also after a batch of several
    records, where the embedded broker's ListOffsets answer is short."""
    settings = topics
    config = {"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 50}
    producer = Producer({**config, "batch.num.messages": 1000})
    topic = settings.topic_identity
    per_partition = {0: 1, 1: 37, 2: 0, 3: 500}
    for partition, count in per_partition.items():
        for i in range(count):
            producer.produce(topic, b"v%d" % i, key=b"k%d" % i, partition=partition)
    assert producer.flush(10) == 0
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "ends"})
    reported = {
        (topic, p): consumer.get_watermark_offsets(TopicPartition(topic, p), cached=False)[1]
        for p in per_partition
    }
    consumer.close()
    assert true_ends(settings.bootstrap_servers, reported) == {
        (topic, p): n for p, n in per_partition.items()
    }
