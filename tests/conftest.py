from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from config.settings import Settings
from sinks.redisconn import connect
from tests.support.backends import kafka, redis_cluster, redis_server
from unifier.stack import EmbeddedStack
from unifier.topics import ensure_topics

# CI (``.ci/run``) explores the same examples on every run: a property that fails for
# a rare seed is found on developers' random runs and fixed, instead of turning CI red
# by chance for an unrelated change. Anywhere else each run draws new examples.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def bootstrap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with kafka(tmp_path_factory.mktemp("broker")) as servers:
        yield servers


@pytest.fixture(scope="session")
def redis_single_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """One Redis server; for a test marked ``@both_redis`` (tests.support.backends),
    once that and once a 3-shard Redis Cluster (started for the first such test)."""
    kind = getattr(request, "param", "single")
    return str(request.getfixturevalue(f"redis_{kind}_url"))


@pytest.fixture
def settings(
    bootstrap_servers: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Settings:
    """Settings for one test: its own topics and consumer group on the shared broker,
    and an empty Redis. ``@pytest.mark.no_identity_limits`` turns the per-type limits
    and the shared-identifier rule off, so the clusters do not depend on arrival
    order and equal the reference."""
    tag = uuid.uuid4().hex[:8]
    client = connect(redis_url)
    client.flushdb()  # every shard of a cluster
    client.close()
    return Settings(
        bootstrap_servers=bootstrap_servers,
        redis_url=redis_url,
        state_dir=tmp_path / "state",
        app_id=f"test-{tag}",
        topic_touchpoints=f"t{tag}.touchpoints",
        topic_dlq=f"t{tag}.touchpoints.dlq",
        topic_identity=f"t{tag}.identity",
        topic_profile_ops=f"t{tag}.profile-ops",
        topic_profile_updates=f"t{tag}.profile-updates",
        topic_profile_merges=f"t{tag}.profile-merges",
        topic_schemas=f"t{tag}.schemas",
        topic_segments=f"t{tag}.segments",
        topic_segment_membership=f"t{tag}.segment-membership",
        topic_erasures=f"t{tag}.erasures",
        topic_identity_rules=f"t{tag}.identity-rules",
        topic_privacy=f"t{tag}.privacy",
        topic_audit=f"t{tag}.audit",
        **(
            {"identity_limits": {}, "identity_max_claimants": 0}
            if request.node.get_closest_marker("no_identity_limits")
            else {}
        ),
        touchpoint_partitions=3,
        internal_partitions=4,
    )


@pytest.fixture
def topics(settings: Settings) -> Settings:
    ensure_topics(settings)
    return settings


@pytest.fixture
def workers(
    settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[EmbeddedStack]:
    """Start workers with ``workers.start_worker()``; all are stopped after the test.
    When the test failed, what the workers logged at warning and above is printed
    with it (the log files are gone with the test's temporary directory on CI)."""
    stack = EmbeddedStack(settings, tmp_path / "workers")
    try:
        yield stack
    finally:
        stack.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(worker_warnings(stack.dir), file=sys.stderr)


def worker_warnings(directory: Path, limit: int = 80) -> str:
    """The last ``limit`` lines at warning or above of every log in ``directory``
    (heartbeats and timer drift left out)."""
    levels = ('"level":"warning"', '"level":"error"', '"level":"critical"')
    noise = ("Heartbeat failed", "woke up too late")
    lines = [
        f"{path.stem}: {line[:600]}"
        for path in sorted(directory.glob("*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if any(level in line for level in levels) and not any(n in line for n in noise)
    ]
    shown = "\n".join(lines[-limit:])
    return f"worker warnings (last {min(limit, len(lines))} of {len(lines)}):\n{shown}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Each phase's report on the test item (``rep_call``...), for fixtures' teardown."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--faults",
        action="store_true",
        help="run every fault-injection scenario (tests/faults/); by default only those "
        "marked `ci` run",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fault scenarios outside the bounded CI subset are deselected unless --faults."""
    if config.getoption("--faults"):
        return
    kept, dropped = [], []
    for item in items:
        outside = item.get_closest_marker("faults") and not item.get_closest_marker("ci")
        (dropped if outside else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
