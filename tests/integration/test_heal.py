"""A view that heals itself (streams.heal): Redis loses its data, the worker writes it
again with no command typed, and readiness says so meanwhile."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from config.settings import Settings
from producers.synthetic import generate
from sinks.redis_view import mark_complete_sync, missing_partitions_sync
from sinks.redisconn import connect
from tests.integration.test_api import api  # noqa: F401  # the fixture
from tests.integration.test_ops import until
from tests.integration.test_pipeline import caught_up, exported
from tests.support.backends import both_redis
from tests.support.data import write_jsonl
from tests.support.http import get_json, get_text, metric
from tests.support.view import dump_as_read
from unifier.ingest import ingest_file
from unifier.processes import free_port
from unifier.stack import EmbeddedStack

pytestmark = pytest.mark.integration


@both_redis
def test_a_view_redis_lost_is_written_again_with_no_command(
    topics: Settings, workers: EmbeddedStack, tmp_path: Path
) -> None:
    settings = topics.model_copy(update={"worker_metrics_port": free_port()})
    workers.settings = settings
    base = f"http://127.0.0.1:{settings.worker_metrics_port}"
    events = generate(people=60, seed=11)
    path = tmp_path / "events.jsonl"
    write_jsonl(path, events)
    workers.start_worker()
    ingest_file(path, settings)
    caught_up(settings)
    until(lambda: get_json(f"{base}/ready")[0] == 200, "the worker ready, its view complete")
    before, profiles = dump_as_read(settings.redis_url), exported(settings)
    assert len(profiles) > 10

    client = connect(settings.redis_url)
    try:
        if isinstance(client, redis.RedisCluster):  # one shard of three restarted empty
            client.flushall(target_nodes=client.get_primaries()[1])
            assert 0 < len(exported(settings)) < len(profiles)
        else:  # Redis restarted empty: every profile, index key, explanation
            client.flushall()
            assert exported(settings) == {}
        # Back, key for key (views, explanations, identifier index, redirects), and
        # nobody typed `unifier view rebuild`.
        until(lambda: dump_as_read(settings.redis_url) == before, "the view back", tries=600)
        assert exported(settings) == profiles
        assert missing_partitions_sync(client, list(range(settings.internal_partitions))) == []
    finally:
        client.close()
    assert get_json(f"{base}/ready") == (200, {"status": "ready"})
    rebuilt = metric(get_text(f"{base}/metrics").splitlines(), "unifier_view_rebuilds_total")
    # Once at the start (an empty Redis has no markers) and once after the loss.
    assert rebuilt == 2 * settings.internal_partitions
    assert "the Redis view lacks profile partitions" in (workers.dir / "worker.log").read_text()


@both_redis
def test_readers_are_told_the_view_is_incomplete_until_a_worker_wrote_it(
    topics: Settings,
    api: str,  # noqa: F811  # the fixture
) -> None:
    """No worker has written the view (or Redis lost it and none runs): the read API's
    /ready is not green, and says why — a lookup would answer 404 for profiles that
    exist."""
    client = connect(topics.redis_url)
    try:
        client.flushall()
        partitions = topics.internal_partitions
        assert get_json(f"{api}/ready") == (
            503,
            {"error": f"view incomplete: {partitions} of {partitions} partitions not written yet"},
        )
        client.set("unifier:view:rebuilding", b'{"done": 500, "total": 1200}')
        assert get_json(f"{api}/ready") == (
            503,
            {"error": "view rebuilding (500 of 1,200 profiles)"},
        )
        mark_complete_sync(client, range(partitions), b"{}")
        assert get_json(f"{api}/ready") == (200, {"status": "ready"})
    finally:
        client.close()
