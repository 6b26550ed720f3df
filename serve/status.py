"""``unifier status``: is it keeping up, where is it stuck, is it losing or rejecting
data, is it merging too much — at one glance.

A ``StatusSampler`` measures every few seconds, from outside the workers (so it
still answers when they are down):

* lag per stage (records, and seconds since the oldest record not yet processed),
  from the broker (``serve.lag``);
* throughput, dead letters, merges and refused links, from the workers' ``/metrics``
  (their counters' rates between two samples);
* whether the Redis view is complete, or being written again after Redis lost its
  data (``streams.heal``), and how many profiles each segment holds; the workers'
  segment enters and exits per second.

It keeps the last ``window`` seconds. ``--serve`` publishes them: ``/`` is a page of
small live charts (plain HTML and a little JS, no build step), ``/api/status`` the
same data as JSON, ``/metrics`` the lag as Prometheus gauges (which a worker that is
down cannot export about itself).
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from config.settings import Settings
from serve.lag import ARCHIVE, SYNC, LagProbe, PartitionLag, stages
from sinks.redis_view import DEFINITIONS_KEY, segment_sizes_sync, view_state_sync
from sinks.redisconn import UNAVAILABLE, connect

#: Worker counters the page charts as rates: name -> (metric, label filter).
RATES: dict[str, tuple[str, dict[str, str]]] = {
    "events": ("unifier_stage_messages_in", {"stage": "route"}),
    "dead_letters": ("unifier_dlq_records", {}),
    "merges": ("unifier_identity_merges", {}),
    "refused": ("unifier_identity_refused_links", {}),
    "segment_moves": ("unifier_segment_transitions", {}),
}


@dataclass
class Sample:
    at: float
    lag: dict[str, int]  # stage -> records behind
    lag_seconds: dict[str, float | None]  # stage -> age of the oldest unprocessed record
    counters: dict[str, float]  # RATES name -> counter total over the workers that answered
    workers_up: int
    workers_expected: int
    partitions: list[PartitionLag] = field(default_factory=list)
    view: str | None = None  # None: complete; else why not (streams.heal)
    segments: dict[str, int] = field(default_factory=dict)  # segment -> members
    quality: dict[str, Any] = field(default_factory=dict)  # serve.quality's report (no DLQ)


def expand(url: str) -> list[str]:
    """One URL per IPv4 address its host name has: ``http://worker:9100/metrics`` is
    every worker replica when the name resolves to all of them (compose, Kubernetes
    headless services)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None:
        return [url]
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return [url]
    addresses = sorted({str(info[4][0]) for info in infos})
    if len(addresses) <= 1:
        return [url]
    port = f":{parts.port}" if parts.port else ""
    return [urllib.parse.urlunsplit(parts._replace(netloc=f"{a}{port}")) for a in addresses]


def scrape(url: str, timeout: float = 2.0) -> dict[str, float] | None:
    """The RATES counters of one worker, or None when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return None
    totals = dict.fromkeys(RATES, 0.0)
    for family in text_string_to_metric_families(text):
        for name, (metric, labels) in RATES.items():
            if family.name != metric:
                continue
            for s in family.samples:
                if s.name == metric + "_total" and labels.items() <= s.labels.items():
                    totals[name] += s.value
    return totals


class StatusSampler:
    def __init__(
        self,
        settings: Settings,
        worker_urls: list[str],
        interval: float = 2.0,
        window: float = 900.0,
    ) -> None:
        self.settings = settings
        self.worker_urls = worker_urls
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=max(int(window / interval), 2))
        self.error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.registry = CollectorRegistry()
        self._lag = Gauge(
            "unifier_stage_lag_records",
            "Records not yet processed, per stage, topic and partition (from the broker)",
            ["stage", "topic", "partition"],
            registry=self.registry,
        )
        self._lag_s = Gauge(
            "unifier_stage_lag_seconds",
            "Age of the oldest record a stage has not processed, per stage",
            ["stage"],
            registry=self.registry,
        )
        self._up = Gauge(
            "unifier_workers_up", "Workers whose /metrics answered", registry=self.registry
        )
        self._completeness = Gauge(
            "unifier_quality_completeness",
            "Share of profiles that have each trait (data quality)",
            ["trait"],
            registry=self.registry,
        )
        self._duplicates = Gauge(
            "unifier_quality_duplicate_candidates",
            "Groups of unmerged profiles that share a name and postal code or birth date",
            registry=self.registry,
        )
        self._profiles = Gauge(
            "unifier_quality_profiles", "Live profiles (data quality)", registry=self.registry
        )
        self._freshness = Gauge(
            "unifier_quality_freshness_seconds",
            "Age of the newest event from each source",
            ["source"],
            registry=self.registry,
        )
        self._members = Gauge(
            "unifier_segment_members",
            "Profiles in each segment (from the Redis view)",
            ["segment"],
            registry=self.registry,
        )

    def sample(self, probe: LagProbe) -> Sample:
        rows = probe.measure()
        lag: dict[str, int] = {}
        lag_s: dict[str, float | None] = {}
        for row in rows:
            lag[row.stage] = lag.get(row.stage, 0) + row.lag
            old = lag_s.get(row.stage, 0.0)
            lag_s[row.stage] = (
                None if old is None or row.lag_seconds is None else max(old, row.lag_seconds)
            )
        counters = dict.fromkeys(RATES, 0.0)
        up = 0
        targets = [t for url in self.worker_urls for t in expand(url)]
        for url in targets:
            got = scrape(url)
            if got is not None:
                up += 1
                for name, value in got.items():
                    counters[name] += value
        self._lag.clear()
        for row in rows:
            self._lag.labels(row.stage, row.topic, str(row.partition)).set(row.lag)
        for stage, seconds in lag_s.items():
            self._lag_s.labels(stage).set(seconds if seconds is not None else float("nan"))
        self._up.set(up)
        view, segments = self._view()
        self._members.clear()
        for name, members in segments.items():
            self._members.labels(name).set(members)
        sample = Sample(time.time(), lag, lag_s, counters, up, len(targets), rows, view)
        sample.segments = segments
        sample.quality = self._quality()
        return sample

    def _quality(self) -> dict[str, Any]:
        """The data-quality KPIs (``serve.quality``), as gauges too; {} if Redis is away."""
        from serve.quality import quality_report

        try:
            q = quality_report(self.settings, with_dead_letters=False)
        except UNAVAILABLE:
            return {}
        self._completeness.clear()
        for trait, c in q["completeness"].items():
            self._completeness.labels(trait).set(c["share"])
        self._duplicates.set(q["duplicates"]["groups"])
        self._profiles.set(q["profiles"]["count"])
        self._freshness.clear()
        for source, f in q["freshness"].items():
            self._freshness.labels(source).set(f["age_s"])
        return q

    def _view(self) -> tuple[str | None, dict[str, int]]:
        """Whether the Redis view is complete (Redis away: said so, not raised), and
        the size of each segment in force."""
        try:
            client = connect(self.settings.redis_url, self.settings.redis_cluster, timeout=2)
        except UNAVAILABLE:
            return "Redis does not answer", {}
        try:
            state = view_state_sync(client, self.settings.internal_partitions)
            keys = client.hkeys(DEFINITIONS_KEY)
            names = sorted(k.decode() if isinstance(k, bytes) else k for k in keys)
            return state, segment_sizes_sync(client, names)
        except UNAVAILABLE:
            return "Redis does not answer", {}
        finally:
            client.close()

    def run(self) -> None:
        with LagProbe(self.settings) as probe:
            while not self._stop.is_set():
                try:
                    s = self.sample(probe)
                    with self._lock:
                        self.samples.append(s)
                        self.error = None
                except Exception as exc:  # the broker away: say so on the page, keep trying
                    with self._lock:
                        self.error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(self.interval)

    def start(self) -> StatusSampler:
        self._thread = threading.Thread(target=self.run, name="status-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def snapshot(self) -> dict[str, Any]:
        """What the page shows: the latest numbers and the series to chart."""
        with self._lock:
            samples = list(self.samples)
            error = self.error
        series: dict[str, list[Any]] = {"t": [], **{f"{n}_per_s": [] for n in RATES}}
        names = [stage for stage, _topic, _n in stages(self.settings)]
        if samples and ARCHIVE in samples[-1].lag:  # an archiver runs (or ran)
            names.append(ARCHIVE)
        if samples:  # sync groups (unifier sync), as destinations.toml names them
            names += sorted(s for s in samples[-1].lag if s.startswith(SYNC))
        lag_series: dict[str, list[int]] = {stage: [] for stage in names}
        for before, after in itertools.pairwise(samples):
            dt = max(after.at - before.at, 1e-6)
            series["t"].append(round(after.at, 3))
            for name in RATES:
                # A restarted worker starts its counters at 0: never a negative rate.
                delta = after.counters[name] - before.counters[name]
                series[f"{name}_per_s"].append(round(max(delta, 0.0) / dt, 3))
            for stage in names:
                lag_series[stage].append(after.lag.get(stage, 0))
        latest = samples[-1] if samples else None
        return {
            "app_id": self.settings.app_id,
            "interval_s": self.interval,
            "error": error,
            "updated_at": latest.at if latest else None,
            "workers_up": latest.workers_up if latest else 0,
            "workers_expected": latest.workers_expected if latest else len(self.worker_urls),
            "view": (latest.view or "complete") if latest else None,
            "stages": [
                {
                    "stage": stage,
                    "lag": latest.lag.get(stage, 0) if latest else None,
                    "lag_seconds": latest.lag_seconds.get(stage, 0.0) if latest else None,
                }
                for stage in names
            ],
            "totals": dict(latest.counters) if latest else {},
            "segments": [
                {"segment": name, "members": n}
                for name, n in (latest.segments.items() if latest else ())
            ],
            "quality": latest.quality if latest else {},
            "workers": owners(latest.partitions if latest else [], names),
            "series": {**series, "lag": lag_series},
        }

    def metrics(self) -> bytes:
        return generate_latest(self.registry)


def owners(rows: list[PartitionLag], stages: list[str]) -> list[dict[str, Any]]:
    """Each worker with the partitions it owns by stage and the records it is behind
    (from the lag's owners: the broker's group, or the workers' own word,
    ``streams.registry``); the stages' partitions nobody owns come last, as ``None``."""
    found: dict[str | None, dict[str, Any]] = {}
    for row in rows:
        if row.stage not in stages or row.stage == ARCHIVE or row.stage.startswith(SYNC):
            continue
        w = found.setdefault(row.owner, {"worker": row.owner, "partitions": {}, "lag": 0})
        w["partitions"].setdefault(row.stage, []).append(row.partition)
        w["lag"] += row.lag
    return sorted(found.values(), key=lambda w: (w["worker"] is None, w["worker"] or ""))


def page() -> bytes:
    return resources.files("serve").joinpath("status.html").read_bytes()


def create_status_app(sampler: StatusSampler) -> Any:
    from aiohttp import web

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page(), content_type="text/html")

    async def status(request: web.Request) -> web.Response:
        return web.json_response(sampler.snapshot())

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=sampler.metrics())
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/api/status", status)
    app.router.add_get("/metrics", metrics)
    return app
