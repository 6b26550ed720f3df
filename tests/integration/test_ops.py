"""What the on-call engineer watches: lag while a worker is down, and its recovery."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from config.settings import Settings
from producers.kafka import TouchpointProducer
from producers.synthetic import generate
from profiles.configured import identifier_priorities
from profiles.touchpoint import parse_json
from serve.status import StatusSampler, create_status_app
from tests.integration.test_pipeline import caught_up, exported
from tests.support.http import get_json, get_text
from unifier.processes import free_port
from unifier.stack import EmbeddedStack

pytestmark = pytest.mark.integration


def lag_json(settings: Settings) -> list[dict[str, Any]]:
    """`unifier lag --json`, as a script would run it."""
    done = subprocess.run(
        [sys.executable, "-m", "unifier", "lag", "--json"],
        env={**os.environ, **settings.env()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def status_page(topics: Settings) -> Iterator[tuple[str, StatusSampler]]:
    """`unifier status --serve`'s sampler and app, on a free port, in a thread."""
    settings = topics.model_copy(update={"worker_metrics_port": free_port()})
    sampler = StatusSampler(settings, settings.worker_metrics_urls(), interval=0.5).start()
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_status_app(sampler))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", sampler
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        sampler.stop()


class Traffic:
    """Touchpoints sent a few at a time until stopped, as a shop's sites would."""

    def __init__(self, settings: Settings) -> None:
        events = generate(people=400, seed=11)
        self.events = [parse_json(e, identifier_priorities(settings)) for e in events]
        self.settings = settings
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with TouchpointProducer(self.settings) as producer:
            while not self._stop.is_set() and self.sent < len(self.events):
                chunk = self.events[self.sent : self.sent + 10]
                producer.send_many(chunk)
                producer.flush()
                self.sent += len(chunk)
                self._stop.wait(0.05)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def until(check: Any, what: str, tries: int = 600) -> Any:
    """Poll `check` until it returns something true (bounded, not timed)."""
    for _ in range(tries):
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def test_lag_grows_while_the_worker_is_down_and_falls_to_zero_after(
    topics: Settings, workers: EmbeddedStack, status_page: tuple[str, StatusSampler]
) -> None:
    url, sampler = status_page
    settings = sampler.settings
    workers.settings = settings
    workers.start_worker()
    worker_metrics = settings.worker_metrics_urls()[0]

    def total_lag() -> int:
        return sum(r["lag"] for r in lag_json(settings))

    def page_lag() -> float:
        lines = get_text(f"{url}/metrics").splitlines()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in lines
            if line.startswith("unifier_stage_lag_records{")
        )

    with Traffic(settings) as traffic:
        until(lambda: exported(settings), "the worker wrote a profile")
        workers.stop_one("worker")
        stopped_at = traffic.sent
        # Lag grows, in `unifier lag --json` and in the status page's metrics.
        first, first_page = total_lag(), page_lag()
        until(lambda: total_lag() > first, "lag growing in `unifier lag --json`")
        until(lambda: page_lag() > first_page, "lag growing in the status metrics")
        behind = get_json(f"{url}/api/status")[1]
        assert any(s["lag"] > 0 and s["lag_seconds"] > 0 for s in behind["stages"])
        assert behind["workers_up"] == 0  # the page knows the worker is gone
        until(lambda: traffic.sent > stopped_at + 50, "traffic while the worker is down")

    workers.start_worker()
    caught_up(settings)
    rows = lag_json(settings)
    assert all(r["lag"] == 0 and r["lag_seconds"] == 0 for r in rows)
    until(lambda: page_lag() == 0, "the status metrics back to zero")

    # The restarted worker's own gauges agree once its timer (every 5 s) has run since
    # it caught up: one zero per partition it owns.
    def worker_lag() -> list[str]:
        lines = get_text(worker_metrics).splitlines()
        return [line for line in lines if line.startswith("unifier_consumer_lag{")]

    until(
        lambda: worker_lag() and all(line.endswith(" 0.0") for line in worker_lag()),
        "the worker's own lag gauges at zero",
    )
    snap = get_json(f"{url}/api/status")[1]
    assert snap["workers_up"] == 1 and all(s["lag"] == 0 for s in snap["stages"])
    assert max(snap["series"]["lag"]["route"]) > 0  # the chart shows the climb ...
    assert snap["series"]["lag"]["route"][-1] == 0  # ... and the way down
    assert sum(p["computed"]["event_count"] for p in exported(settings).values()) == traffic.sent
    # The page and `unifier lag` name the worker that owns every partition (the
    # embedded broker does not say: the worker does, streams.registry).
    until(
        lambda: [w["worker"] for w in get_json(f"{url}/api/status")[1]["workers"]] == ["worker"],
        "the status page naming the worker",
    )
    pipeline = {"route", "identity", "profile"}
    assert {r["owner"] for r in lag_json(settings) if r["stage"] in pipeline} == {"worker"}


def test_a_worker_without_redis_is_alive_but_not_ready(
    topics: Settings, workers: EmbeddedStack
) -> None:
    """Readiness means something: the process answers /health, but /ready says it cannot
    do its job and why."""
    port = free_port()
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    workers.settings = topics.model_copy(update={"worker_metrics_port": port, "redis_url": nowhere})
    workers.start_worker()
    base = f"http://127.0.0.1:{port}"
    assert get_json(f"{base}/health") == (200, {"status": "ok"})
    # Once its tables are recovered, Redis is the one reason left.
    only_redis = (503, {"status": "not ready", "reasons": ["Redis does not answer"]})
    until(lambda: get_json(f"{base}/ready") == only_redis, "/ready naming Redis alone")
