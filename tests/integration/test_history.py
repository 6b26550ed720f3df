"""A loyal customer: one profile with 20,000 events through the real broker, worker and
Redis. Its cost per touch must not grow with its history (the state keeps totals and
event-id hashes, not the events), and its stored record must stay far below the
producer's request size (the events themselves go to ledger chunks of their own)."""

from __future__ import annotations

import orjson
import pytest

from config.settings import Settings
from profiles.routing import partition_for
from profiles.touchpoint import Touchpoint
from serve.view import RedisProfileView
from streams.topology import topology
from tests.integration.test_identity import send
from tests.integration.test_pipeline import caught_up
from tests.support.kafka import consume_all
from unifier.stack import EmbeddedStack

pytestmark = pytest.mark.integration

EVENTS = 20_000
REQUEST_LIMIT = 1_048_576  # the producer's default maximum request size


def test_a_profile_with_20000_events_counts_each_once_in_small_records(
    topics: Settings, workers: EmbeddedStack
) -> None:
    settings = topics
    workers.start_worker()
    email = "loyal@shop.example"
    events = [
        Touchpoint(f"loyal-{n}", "page_viewed", "web", 1_795_000_000_000 + n, {"email": email})
        for n in range(EVENTS)
    ]
    send(settings, events)
    send(settings, events[:500])  # a re-imported file: counted once
    caught_up(settings)

    view = RedisProfileView.for_settings(settings)
    try:
        profile = view.lookup("email", email)
    finally:
        view.close()
    assert profile is not None
    assert profile["computed"]["event_count"] == EVENTS
    assert profile["computed"]["last_touchpoints"][0]["event_id"] == f"loyal-{EVENTS - 1}"

    pid = profile["profile_id"]
    changelog = topology(settings).tables["profiles"].changelog
    mine = [
        m
        for m in consume_all(settings, changelog, settings.internal_partitions)
        if m.partition() == partition_for(pid, settings.internal_partitions)
        and orjson.loads(m.key()).split("#")[0] == pid
    ]
    chunks = {orjson.loads(m.key()) for m in mine if "#" in orjson.loads(m.key())}
    assert chunks, "the ledger's chunks were not stored under keys of their own"
    largest = max(len(m.value() or b"") for m in mine)
    # 8 bytes an event for the duplicate check, plus a bounded part
    assert largest < 16 * EVENTS + 64 * 1024 < REQUEST_LIMIT
