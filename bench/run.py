"""One command, one run, one report: how fast the unifier is on this machine, and how right.

    ./dev bench                 # the full run on the embedded stack; writes bench/results/
    ./dev bench --people 300    # a smaller one (a smoke run)

Every number in the report comes from this one run, on one machine, next to the
machine's own ceilings measured the same minute (issue #7):

1. raw limits — confluent-kafka consuming and fastavro-decoding the very touchpoints
   the pipeline gets; Redis writing the very views the worker writes (its Lua script,
   pipelined) — the ceiling no worker can pass;
2. end to end — synthetic journeys pre-loaded onto ``touchpoints``, one worker started,
   the time until every stage has caught up (every profile is in Redis);
6. accuracy — the clusters of that same run against the generator's truth.

The report goes to ``bench/results/report.md`` and ``report.json``: the table, the
machine, the versions and the settings.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.accuracy import clusters_of_export
from bench.load import percentile
from bench.scale import cpu_seconds, rss_bytes
from config.settings import Settings
from producers.synthetic import Journeys, generate_journeys, score
from profiles.configured import identifier_priorities, identity_rules, trait_alias_index
from profiles.touchpoint import Touchpoint, parse_json

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("faust-streaming", "aiokafka", "confluent-kafka", "redis", "fastavro", "orjson")


@dataclass
class Report:
    started: str
    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, name: str, **values: Any) -> None:
        self.sections[name] = values
        print(f"  {name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()), flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        mem_gib = round(int(kib) / 1024 / 1024, 1)
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    """Yields a list that holds the elapsed seconds once the block ends."""
    took: list[float] = []
    started = time.perf_counter()
    try:
        yield took
    finally:
        took.append(time.perf_counter() - started)


# --- 1. raw limits --------------------------------------------------------------------
def consume_decode_ceiling(settings: Settings, touchpoints: list[Touchpoint]) -> dict[str, Any]:
    """confluent-kafka reading the same Avro records the worker reads, decoded each."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from producers.kafka import TouchpointProducer
    from schemas.codec import decode_touchpoints

    topic = f"bench.raw.{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    admin.create_topics([NewTopic(topic, settings.touchpoint_partitions, 1)])[topic].result(15)
    with TouchpointProducer(settings.model_copy(update={"topic_touchpoints": topic})) as out:
        for tp in touchpoints:
            out.send(tp)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"bench-{topic}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    parts = [
        TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.touchpoint_partitions)
    ]
    consumer.assign(parts)
    events = records = 0
    started = None
    deadline = time.monotonic() + 120
    while events < len(touchpoints) and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=1000, timeout=0.5):
            if msg.error() is not None:
                continue
            if started is None:
                started = time.perf_counter()
            events += len(decode_touchpoints(msg.value()))
            records += 1
    took = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return {
        "events": events,
        "records": records,
        "seconds": took,
        "events_per_s": events / took if took else 0.0,
    }


def redis_write_ceiling(settings: Settings, touchpoints: list[Touchpoint]) -> dict[str, Any]:
    """The worker's own write script, pipelined in batches of 500, on realistic views."""
    import redis

    from profiles.graph.node import ProfileNode
    from profiles.projection import view_of, why_of
    from profiles.reference import reference_states
    from sinks.redis_view import RedisWriter

    states = reference_states(
        touchpoints,
        identity_rules(settings),
        settings.default_phone_region,
        trait_alias_index(settings),
    )
    nodes = [(f"p_bench{n:08d}", ProfileNode(state=s)) for n, s in enumerate(states)]
    views = [view_of(pid, node) for pid, node in nodes]
    whys = {pid: why_of(node) for pid, node in nodes}
    client = redis.Redis.from_url(settings.redis_url)
    writer = RedisWriter(client)
    rounds = max(1, 20_000 // max(len(views), 1))
    with timer() as took:
        for r in range(rounds):
            bumped = [{**v, "version": v["version"] + r + 1} for v in views]
            for start in range(0, len(bumped), 500):
                writer.write(bumped[start : start + 500], whys)
    client.close()
    written = rounds * len(views)
    return {
        "profiles": written,
        "identifiers_per_profile": round(sum(len(s.held) for s in states) / max(len(states), 1), 2),
        "seconds": took[0],
        "profiles_per_s": written / took[0],
    }


def hop_latency(settings: Settings, samples: int = 30) -> dict[str, Any]:
    """One record produced, how long until a consumer that is already polling has it:
    the cost of every hop between two stages. aiokafka with the fetch wait Faust 0.15.3
    hard-codes (1.5 s), and confluent-kafka with librdkafka's default (0.5 s)."""
    import asyncio

    from confluent_kafka.admin import AdminClient, NewTopic

    servers = settings.bootstrap_servers
    topic = f"bench.hop.{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": servers})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(15)
    a50, a99 = _p50_p99(asyncio.run(_hop_aiokafka(servers, topic, samples)))
    c50, c99 = _p50_p99(_hop_confluent(servers, topic, samples))
    return {"aiokafka_p50_ms": a50, "aiokafka_p99_ms": a99,
            "confluent_p50_ms": c50, "confluent_p99_ms": c99}  # fmt: skip


async def _hop_aiokafka(servers: str, topic: str, samples: int) -> list[float]:
    """Ages (ms) of ``samples`` records when an aiokafka consumer at Faust's fetch wait has them."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]

    producer = AIOKafkaProducer(bootstrap_servers=servers)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, group_id=None,
                                auto_offset_reset="latest", fetch_max_wait_ms=1500)  # fmt: skip
    await producer.start()
    await consumer.start()
    ages: list[float] = []

    async def read() -> None:
        async for msg in consumer:
            ages.append(time.time() * 1000 - msg.timestamp)
            if len(ages) >= samples:
                return

    reading = asyncio.ensure_future(read())
    await asyncio.sleep(2)
    for _ in range(samples):
        await producer.send_and_wait(topic, b"hop")
        await asyncio.sleep(0.1)
    await asyncio.wait_for(reading, 60)
    await consumer.stop()
    await producer.stop()
    return ages


def _hop_confluent(servers: str, topic: str, samples: int) -> list[float]:
    """Ages (ms) of ``samples`` records when a polling confluent-kafka consumer has them."""
    import threading

    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"bench-{topic}"})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    producer = Producer({"bootstrap.servers": servers, "linger.ms": 0})
    ages: list[float] = []

    def read() -> None:
        deadline = time.monotonic() + 60
        while len(ages) < samples and time.monotonic() < deadline:
            msg = consumer.poll(0.05)
            if msg is not None and msg.error() is None and msg.value() == b"c":
                ages.append(time.time() * 1000 - msg.timestamp()[1])

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(2)
    for _ in range(samples):
        producer.produce(topic, b"c")
        producer.flush()
        time.sleep(0.1)
    reader.join()
    consumer.close()
    return ages


def _p50_p99(ages: list[float]) -> tuple[float, float]:
    return percentile(ages, 0.5), percentile(ages, 0.99)


# --- 2. end to end ----------------------------------------------------------------------
def end_to_end(
    settings: Settings, stack: Any, touchpoints: list[Touchpoint], journeys: Any, workers: int = 1
) -> dict[str, Any]:
    import redis

    from producers.kafka import TouchpointProducer
    from serve.view import RedisProfileView

    others = {name: cpu_seconds(stack.procs[name].pid) for name in ("broker", "redis")}
    with timer() as load, TouchpointProducer(settings) as out:
        for tp in touchpoints:
            out.send(tp)
    started = time.perf_counter()
    names = ["worker"] + [f"worker{n}" for n in range(2, workers + 1)]
    for name in names:  # each returns once it is assigned and its tables are recovered
        stack.start_worker(name)
    ready = time.perf_counter() - started
    wait_caught_up(settings)
    took = time.perf_counter() - started
    cpu = sum(cpu_seconds(stack.procs[name].pid) for name in names)
    rss = sum(rss_bytes(stack.procs[name].pid) for name in names)
    others = {f"{name}_cpu_us_per_event": (cpu_seconds(stack.procs[name].pid) - was)
              / len(touchpoints) * 1e6 for name, was in others.items()}  # fmt: skip
    view = RedisProfileView.for_settings(settings)
    with contextlib.closing(view):
        profiles = list(view.scan())
    client = redis.Redis.from_url(settings.redis_url)
    redis_used = int(client.info("memory")["used_memory"])
    client.close()
    s = score(clusters_of_export(profiles), journeys.truth)
    return {
        "workers": workers,
        "events": len(touchpoints),
        "preload_seconds": load[0],
        "worker_ready_seconds": ready,
        "seconds": took,
        "events_per_s": len(touchpoints) / took,
        "events_per_s_after_ready": len(touchpoints) / max(took - ready, 1e-9),
        "worker_cpu_seconds": cpu,
        "worker_cpu_us_per_event": cpu / len(touchpoints) * 1e6,
        **others,
        "worker_cpu_share": cpu / took,
        "worker_rss_bytes": rss,
        "redis_used_memory_bytes": redis_used,
        "profiles": len(profiles),
        "emails": sorted({e for p in profiles for e in p["identifiers"].get("email", [])}),
        "precision": s.precision,
        "recall": s.recall,
        "f1": s.f1,
    }


def wait_caught_up(settings: Settings) -> None:
    from serve.lag import LagProbe

    with LagProbe(settings) as probe:
        if not probe.wait(timeout=1800, interval=0.2):
            raise SystemExit("the workers did not catch up within 30 minutes")


# --- the report -----------------------------------------------------------------------
def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _against(d: dict[str, Any], target_ms: float) -> str:
    p99 = d["p99_ms"]
    return "met" if p99 <= target_ms else f"{p99 / target_ms:,.1f}x over"


def _lat(d: dict[str, Any]) -> str:
    return f"p50 {d['p50_ms']:,.0f} ms, p95 {d['p95_ms']:,.0f} ms, p99 {d['p99_ms']:,.0f} ms"


def markdown(report: Report) -> str:
    s = report.sections
    e2e = s.get("end_to_end", {})
    lines = [
        *_heading(report),
        *_raw_rows(report),
        *_end_to_end_rows(s),
        *_steady_rows(s),
        *_load_rows(s),
        *_read_rows(s.get("read_api", {})),
        *_memory_rows(s.get("memory", {}), e2e),
        *_section_two_rows(e2e),
    ]
    settings = ", ".join(f"{k}={v}" for k, v in report.settings.items())
    lines += ["", *bounds(report), "", f"Settings: {settings}", ""]
    return "\n".join(lines)


def _heading(report: Report) -> list[str]:
    """The title, the machine and the run, and the head of the table."""
    s = report.sections
    m = report.machine
    took = "."
    if "total_seconds" in s:
        took = f"; the whole run took {s['total_seconds']['seconds']:.0f} s."
    return [
        "# Benchmark",
        "",
        f"Run {report.started} with `{report.command}` on {m['cpus']} cores of {m['cpu_model']}, "
        f"{m['memory_gib']} GiB, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + ". Embedded stack (Tansu broker, Valkey) on the same machine as the worker"
        + took,
        "",
        "![throughput and latency](report.png)",
        "",
        "| measure | value | against the ceiling or target |",
        "|---|---|---|",
    ]


def _raw_rows(report: Report) -> list[str]:
    """Section 1: the ceilings of the broker, Redis and one hop."""
    s = report.sections
    raw, redis_raw, hop = s.get("raw_decode", {}), s.get("raw_redis", {}), s.get("raw_hop", {})
    lines = []
    if raw:
        lines.append(
            f"| 1. consume + Avro decode (confluent-kafka, one process) | "
            f"{raw['events_per_s']:,.0f} events/s | the ceiling |"
        )
    if redis_raw:
        lines.append(
            f"| 1. Redis: the worker's write script, pipelines of 500 | "
            f"{redis_raw['profiles_per_s']:,.0f} profiles/s "
            f"({redis_raw['identifiers_per_profile']} identifiers each) | — |"
        )
    if hop:
        lines.append(
            f"| 1. one hop on the broker: produced → in a polling consumer's hands | "
            f"aiokafka at Faust's fetch wait (1.5 s): p50 {hop['aiokafka_p50_ms']:,.0f} ms, "
            f"p99 {hop['aiokafka_p99_ms']:,.0f} ms; confluent-kafka (0.5 s): p50 "
            f"{hop['confluent_p50_ms']:,.0f} ms, p99 {hop['confluent_p99_ms']:,.0f} ms | "
            f"why the worker's fetch wait is {report.settings.get('consumer_fetch_max_wait_ms')}"
            " ms (streams/patches/fetch.py) |"
        )
    return lines


def _end_to_end_rows(s: dict[str, dict[str, Any]]) -> list[str]:
    """Sections 2 and 5: the pre-loaded runs, one worker and two, against the ceiling."""
    e2e, two = s.get("end_to_end", {}), s.get("two_workers", {})
    ceiling = s.get("raw_decode", {}).get("events_per_s", 0.0)
    lines = []
    for name, run in (("one worker", e2e), ("two workers", two)):
        if not run:
            continue
        ratio = run["events_per_s"] / ceiling if ceiling else 0.0
        lines.append(
            f"| {'2' if run is e2e else '5'}. end to end, {name}: {run['events']:,} events "
            f"pre-loaded → every stage caught up | {run['events_per_s']:,.0f} events/s "
            f"({run['seconds']:.1f} s, {run['worker_ready_seconds']:.1f} s of it until ready; "
            f"CPU {run['worker_cpu_share']:.0%} of one core) | {ratio:.3f} of the ceiling; "
            f"target 20,000: {20_000 / max(run['events_per_s'], 1e-9):,.0f}x short |"
        )
    return lines


def _cpu_split(run: dict[str, Any]) -> str:
    return (
        f"CPU per event: worker {run['worker_cpu_us_per_event']:,.0f} µs, broker "
        f"{run.get('broker_cpu_us_per_event', 0):,.0f} µs, Redis "
        f"{run.get('redis_cpu_us_per_event', 0):,.0f} µs"
    )


def _steady_rows(s: dict[str, dict[str, Any]]) -> list[str]:
    """Sections 7 to 9 (issue #16): steady state, the profile's age, a loyal customer."""
    lines = []
    e2e, steady = s.get("end_to_end", {}), s.get("steady", {})
    if e2e.get("worker_cpu_us_per_event"):
        lines.append(
            f"| 2. the same run: {_cpu_split(e2e)} | cold and merge-heavy: new people | target "
            f"≥ 8,000 events/s: {8_000 / max(e2e['events_per_s'], 1e-9):,.1f}x short |"
        )
    if steady:
        lines.append(
            f"| 7. steady state: {steady['events']:,} events of people the worker knows, "
            f"pre-loaded → caught up | {steady['events_per_s']:,.0f} events/s; "
            f"{_cpu_split(steady)}; worker CPU {steady['worker_cpu_share']:.0%} of one core | "
            f"target ≥ 20,000 events/s: {20_000 / max(steady['events_per_s'], 1e-9):,.1f}x "
            f"short; worker ≤ 50 µs/event: "
            f"{steady['worker_cpu_us_per_event'] / 50:,.1f}x over |"
        )
    for row in s.get("profile_age", {}).get("rows", []):
        lines.append(
            f"| 8. one touch of a profile with {row['events']:,} events (profile stage, "
            f"in-process) | {row['cpu_us_per_touch']:,.0f} µs CPU "
            f"({row['ratio_to_smallest']:.2f}x the smallest); stored record "
            f"{row['record_bytes']:,} bytes ({row['record_bytes_per_event']:.1f} per event) "
            f"| target within 1.5x; ≤ 16 bytes/event + a bounded part |"
        )
    loyal = s.get("loyal")
    if loyal:
        under = (
            "yes"
            if loyal["largest_changelog_record_bytes"] < loyal["request_limit_bytes"]
            else "NO"
        )
        lines.append(
            f"| 9. one person, {loyal['events']:,} events end to end | event_count "
            f"{loyal['event_count']} ({'exact' if loyal['exact'] else 'WRONG'}) in "
            f"{loyal['seconds']:.1f} s; largest changelog record "
            f"{loyal['largest_changelog_record_bytes']:,} bytes | under the "
            f"{loyal['request_limit_bytes']:,}-byte request limit: {under} |"
        )
    return lines


def _load_rows(s: dict[str, dict[str, Any]]) -> list[str]:
    """Section 3: latency under the offered loads, new profiles and merges."""
    lines: list[str] = []
    for name, title in (("load_sustained", "sustained"), ("load_target", "target")):
        load = s.get(name)
        if not load:
            continue
        newp, merge = load["new_profile"], load["merge"]
        lost = newp["invisible_after_drain"] + merge["invisible_after_drain"]
        lines += [
            f"| 3. {title} load, {load['offered_events_per_s']:,.0f} events/s offered for "
            f"{load['offered_seconds']:.0f} s: produced → visible in Redis | {_lat(newp)} "
            f"({newp['probes']} probes) | target p99 ≤ 100 ms"
            f"{' (at 2,000/s)' if title == 'target' else ''}: {_against(newp, 100)} |",
            f"| 3. {title} load: a merge, produced → a lookup by the second identifier "
            f"returns the merged profile | {_lat(merge)} ({merge['probes']} probes"
            f"{f', {lost} still invisible after the drain' if lost else ''}) | target p99 ≤ "
            f"250 ms: {_against(merge, 250)} |",
        ]
    return lines


def _read_rows(reads: dict[str, Any]) -> list[str]:
    """Section 4: the read API, open and closed loop."""
    if not reads:
        return []
    o, c = reads["open_loop"], reads["closed_loop"]
    return [
        f"| 4. read API, lookups by email: {reads['offered_per_s']:,.0f}/s offered "
        f"(open loop, {o['requests']:,} requests, {o['errors']} errors) | p50 "
        f"{o['p50_ms']:.2f} ms, p99 {o['p99_ms']:.2f} ms; closed loop, 16 clients: "
        f"{c['requests_per_s']:,.0f} requests/s, p99 {c['p99_ms']:.2f} ms; the API used "
        f"{o['api_cpu_ms_per_request']:.2f} ms of CPU per request | target p99 ≤ 5 ms "
        f"at 1,000/s: {'met' if o['p99_ms'] <= 5 else 'missed'} |"
    ]


def _memory_rows(mem: dict[str, Any], e2e: dict[str, Any]) -> list[str]:
    """Section 5: the memory store's size per profile, with the worker's own."""
    lines: list[str] = []
    if not mem:
        return lines
    for size in mem["sizes"]:
        total = size["tables_rss_bytes"] + (e2e.get("worker_rss_bytes") or 0)
        verdict = "—"
        if size["profiles"] >= 1_000_000:
            verdict = "target ≤ 2 GiB: " + ("met" if total <= 2 * 2**30 else "missed")
        lines.append(
            f"| 5. memory, {size['profiles']:,} profiles ({size['identifiers']:,} "
            f"identifiers, {mem['events_per_profile']:.1f} events each) in the memory "
            f"store | {size['bytes_per_profile']:,.0f} bytes per profile "
            f"({size['encoded_bytes_per_profile']:,.0f} encoded); tables "
            f"{_mib(size['tables_rss_bytes'])}, with the worker's own "
            f"{_mib(e2e.get('worker_rss_bytes', 0))}: {_mib(total)} | "
            f"{verdict} |"
        )
    return lines


def _section_two_rows(e2e: dict[str, Any]) -> list[str]:
    """Redis memory (section 5) and accuracy (section 6) of the section 2 run."""
    if not e2e:
        return []
    used = e2e["redis_used_memory_bytes"]
    return [
        f"| 5. Redis memory after section 2 | {_mib(used)} for {e2e['profiles']:,} "
        f"profiles ({used / max(e2e['profiles'], 1):,.0f} bytes each, index and "
        "explanations included) | — |",
        f"| 6. accuracy of section 2 (pairwise, against the truth) | precision "
        f"{e2e['precision']:.4f}, recall {e2e['recall']:.4f}, F1 {e2e['f1']:.4f}; "
        f"{e2e['profiles']:,} profiles | — |",
    ]


def bounds(report: Report) -> list[str]:
    """Issue #16's targets, each met or missed — by how much, and what bounds it — from
    this run's own numbers."""
    s = report.sections
    e2e, hop = s.get("end_to_end"), s.get("raw_hop", {})
    if not e2e:
        return []
    out = [
        "**Against issue #16's targets** (each met, or missed by how much and what "
        "bounds it; this run's numbers).",
        "",
        *_throughput_bounds(s, e2e),
        *_state_bounds(s),
    ]
    for name in ("load_target", "load_sustained"):
        load = s.get(name)
        if load:
            out.append(_load_bound(report, load, e2e, hop))
    out += _quality_bounds(s, e2e)
    return out


def _throughput_bounds(s: dict[str, Any], e2e: dict[str, Any]) -> list[str]:
    """Steady state, worker CPU per event, cold: the worker's CPU bounds all three."""
    out = []
    steady = s.get("steady")
    ceiling = s.get("raw_decode", {}).get("events_per_s", float("nan"))
    if steady:
        rate, us = steady["events_per_s"], steady["worker_cpu_us_per_event"]
        whole_core = 1e6 / max(us, 1e-9)
        out.append(
            f"- Steady state ≥ 20,000 events/s: {rate:,.0f}, "
            f"{20_000 / max(rate, 1e-9):.1f}x short; worker CPU ≤ 50 µs per event: "
            f"{us:,.0f} µs, {us / 50:.1f}x over. Bound: the worker's CPU — one Python "
            f"process, {steady['worker_cpu_share']:.0%} of a core busy, the rest waiting "
            "on the broker between steps (each batch waits for its records to be "
            f"delivered). A whole core at {us:,.0f} µs per event would be "
            f"{whole_core:,.0f} events/s, still {20_000 / whole_core:.1f}x short; the "
            f"broker's consume ceiling ({ceiling:,.0f} events/s) and its "
            f"{steady.get('broker_cpu_us_per_event', 0):,.0f} µs and Redis's "
            f"{steady.get('redis_cpu_us_per_event', 0):,.0f} µs per event are not what "
            "bounds it. Where a steady event's worker CPU goes, step by step: "
            "`bench/results/issue-16-performance.md` — no step is more than a sixth of "
            "it, so 50 µs needs the per-event Python work itself gone, not one more fix."
        )
    out.append(
        f"- Cold and merge-heavy ≥ 8,000 events/s: {e2e['events_per_s']:,.0f}, "
        f"{8_000 / max(e2e['events_per_s'], 1e-9):.1f}x short. Bound: the worker's CPU "
        f"again, {e2e['worker_cpu_us_per_event']:,.0f} µs per event "
        f"({e2e['worker_cpu_share']:.0%} of a core): a new person's events take the "
        "identity hop, a claim and its grant per new identifier, an offer and an answer "
        "per merge — several internal records per event, and Faust spends its time per "
        'record (DESIGN.md, "Throughput").'
    )
    two = s.get("two_workers")
    if two:
        out.append(
            f"- Two workers: {two['events_per_s']:,.0f} events/s against "
            f"{e2e['events_per_s']:,.0f} with one "
            f"({two['events_per_s'] / e2e['events_per_s']:.2f}x): "
            "on a 2-core machine that also runs the broker and Redis, a second process "
            "has no core of its own; it pays a rebalance as well."
        )
    return out


def _state_bounds(s: dict[str, Any]) -> list[str]:
    """CPU per touch against the profile's age, bytes per event, the loyal customer."""
    out = []
    rows = s.get("profile_age", {}).get("rows", [])
    if len(rows) >= 2:
        ratios = [r["ratio_to_smallest"] for r in rows]
        spread = max(ratios) / min(ratios)
        small, big = rows[-2], rows[-1]
        per_event = (big["record_bytes"] - small["record_bytes"]) / max(
            big["events"] - small["events"], 1
        )
        fixed = big["record_bytes"] - per_event * big["events"]
        out += [
            f"- CPU per touch within 1.5x from {rows[0]['events']:,} to "
            f"{rows[-1]['events']:,} events of history: largest / smallest "
            f"{spread:.2f}x — {'met' if spread <= 1.5 else 'missed'}.",
            f"- State ≤ 16 bytes per event plus a bounded part: {per_event:.1f} bytes "
            f"per added event (from {small['events']:,} to {big['events']:,} events) "
            f"plus {fixed:,.0f} bytes — {'met' if per_event <= 16 else 'missed'}.",
        ]
    loyal = s.get("loyal")
    if loyal:
        ok = loyal["exact"] and (
            loyal["largest_changelog_record_bytes"] < loyal["request_limit_bytes"]
        )
        out.append(
            f"- A {loyal['events']:,}-event profile end to end with its exact count: "
            f"{'met' if ok else 'MISSED'} (event_count {loyal['event_count']:,}, largest "
            f"changelog record {loyal['largest_changelog_record_bytes']:,} bytes)."
        )
    return out


def _quality_bounds(s: dict[str, Any], e2e: dict[str, Any]) -> list[str]:
    """Accuracy and the read API."""
    exact = e2e["precision"] == 1 and e2e["recall"] == 1
    out = [
        f"- Accuracy unchanged (precision and recall 1.000): precision "
        f"{e2e['precision']:.4f}, recall {e2e['recall']:.4f} — "
        f"{'met' if exact else 'MISSED'}."
    ]
    reads = s.get("read_api")
    if reads:
        o = reads["open_loop"]
        if o["p99_ms"] <= 5:
            out.append(f"- Read API p99 ≤ 5 ms at 1,000/s: {o['p99_ms']:.2f} ms — met.")
        else:
            out.append(
                f"- Read API p99 ≤ 5 ms at 1,000/s: {o['p99_ms']:.2f} ms, "
                f"{o['p99_ms'] / 5:.1f}x over, with p50 {o['p50_ms']:.2f} ms and p95 "
                f"{o['p95_ms']:.2f} ms. Bound: the API's CPU — "
                f"{o['api_cpu_ms_per_request']:.2f} ms per request in one aiohttp "
                f"process is {o['api_cpu_ms_per_request']:.0%} of a core at 1,000/s, "
                "and it shares the two cores with the load generator, the broker and "
                "Redis: a request that arrives while the process is busy (or "
                "descheduled) waits, and the tail is those waits. The API is unchanged "
                "by this issue."
            )
    return out


def _load_bound(
    report: Report, load: dict[str, Any], e2e: dict[str, Any], hop: dict[str, Any]
) -> str:
    """What bounds the latency of one offered load: the backlog, or the stages' hops."""
    rate = load["offered_events_per_s"]
    p99 = load["new_profile"]["p99_ms"]
    if rate > e2e["events_per_s_after_ready"]:
        return (
            f"- Visible p99 ≤ 100 ms at {rate:,.0f} events/s: p99 {p99:,.0f} ms. "
            f"The offered rate is above what the worker sustains "
            f"({e2e['events_per_s_after_ready']:,.0f} events/s), so a backlog builds and "
            "latency is the time to work through it; the throughput bound above is "
            "this bound too."
        )
    return (
        f"- At {rate:,.0f} events/s (within what the worker sustains) a new profile "
        f"is visible after {load['new_profile']['p50_ms']:,.0f} ms at the median and "
        f"{p99:,.0f} ms at p99; a merge after {load['merge']['p50_ms']:,.0f} and "
        f"{load['merge']['p99_ms']:,.0f} ms. The median is three stages "
        "(route → identity → profile), each a produce, a fetch (the fetch wait is "
        f"{report.settings.get('consumer_fetch_max_wait_ms')} ms; at Faust's own "
        f"1.5 s a hop alone took {hop.get('aiokafka_p50_ms', float('nan')):,.0f} ms "
        "at the median) and the batch of work each stage is busy with when the event "
        "arrives; a merge adds a claim, an offer and an answer. What makes the tail "
        f"({p99 / max(load['new_profile']['p50_ms'], 1e-9):.1f} times the median) is "
        "not broken down yet."
    )


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def sizes(text: str) -> list[int]:
    return [positive(n.strip()) for n in text.split(",")]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--people", type=positive, default=2000, help="synthetic people (default 2000)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--load-seconds", type=positive, default=10, help="how long each offered load runs"
    )
    parser.add_argument(
        "--profiles",
        type=sizes,
        default="100000,1000000",
        help="table sizes for the memory measure, comma-separated (default 100000,1000000)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    return parser.parse_args()


def _stop_on_sigterm(signum: int, _frame: Any) -> None:
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: the stacks' context managers
    # stop the broker, Redis, the workers and the API this run started.
    raise SystemExit(128 + signum)


def main() -> None:
    args = _arguments()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    from bench.scale import table_memory
    from bench.steady import profile_age
    from unifier.demo import demo_settings
    from unifier.stack import running

    began = time.perf_counter()
    journeys, touchpoints, offered = _workload(args)
    # The journeys are millions of objects: a full garbage collection of them in the
    # middle of a latency measure stalls this process's probes and its API client for
    # ~200 ms, and the stall would be charged to the worker or the API. Frozen, the
    # collector leaves them alone.
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="unifier-bench-") as tmp:
        settings = demo_settings(Path(tmp) / "one")
        report = _new_report(args, settings, touchpoints)
        print("8. a touch against the profile's age (in this process)", flush=True)
        report.add("profile_age", **profile_age())
        print("starting the embedded broker and Redis ...", flush=True)
        with running(settings) as stack:
            _one_worker(report, settings, stack, journeys, touchpoints, offered, args.load_seconds)
        print("5. scale: two workers (a fresh stack), memory per profile", flush=True)
        settings2 = demo_settings(Path(tmp) / "two")
        with running(settings2) as stack2:
            two = end_to_end(settings2, stack2, touchpoints, journeys, workers=2)
            two.pop("emails")
            report.add("two_workers", **two)
        report.add("memory", **table_memory(args.profiles))
    report.sections["total_seconds"] = {"seconds": time.perf_counter() - began}
    _write(report, args.out)


def _workload(args: argparse.Namespace) -> tuple[Journeys, list[Touchpoint], list[Touchpoint]]:
    """The journeys and their touchpoints, and the other people's touchpoints the offered
    loads send."""
    print(f"generating journeys for {args.people:,} people ...", flush=True)
    journeys = generate_journeys(args.people, args.seed)
    base = Settings()
    touchpoints = [parse_json(e, identifier_priorities(base)) for e in journeys.events]
    # The offered loads use other people (another seed), so they found new profiles;
    # enough of them for 2,000 events/s plus the sustained load (at most 1,000/s).
    needed = 3_000 * args.load_seconds
    per_person = len(touchpoints) / args.people
    offered = [
        parse_json(e, identifier_priorities(base))
        for e in generate_journeys(int(needed / per_person * 1.1) + 1, args.seed + 1).events
    ]
    return journeys, touchpoints, offered


def _new_report(
    args: argparse.Namespace, settings: Settings, touchpoints: list[Touchpoint]
) -> Report:
    """An empty report of this run: the command, the machine and the settings."""
    return Report(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        command=" ".join(["./dev bench", *sys.argv[1:]]),
        machine=machine(),
        settings={
            "people": args.people,
            "events": len(touchpoints),
            "touchpoint_partitions": settings.touchpoint_partitions,
            "internal_partitions": settings.internal_partitions,
            "producer_batch_events": settings.producer_batch_events,
            "faust_producer_max_batch_size": settings.faust_producer_max_batch_size,
            "consumer_fetch_max_wait_ms": settings.consumer_fetch_max_wait_ms,
            "stage_batch_records": settings.stage_batch_records,
            "stage_batch_wait_s": settings.stage_batch_wait_s,
            "commit_interval_s": settings.commit_interval_s,
        },
    )


def _one_worker(
    report: Report,
    settings: Settings,
    stack: Any,
    journeys: Journeys,
    touchpoints: list[Touchpoint],
    offered: list[Touchpoint],
    load_seconds: int,
) -> None:
    """Sections 1 to 4 and 6, on one stack: raw limits, end to end, reads, offered loads."""
    from bench.load import offered_load
    from bench.reads import read_api
    from bench.steady import loyal_customer, steady_state

    print("1. raw limits", flush=True)
    report.add("raw_decode", **consume_decode_ceiling(settings, touchpoints))
    report.add("raw_redis", **redis_write_ceiling(settings, touchpoints))
    report.add("raw_hop", **hop_latency(settings))
    stack_redis_flush(settings)
    print("2. end to end (one worker) and 6. accuracy", flush=True)
    e2e = end_to_end(settings, stack, touchpoints, journeys)
    emails = e2e.pop("emails")
    report.add("end_to_end", **e2e)
    print("4. read API (lookups by email)", flush=True)
    report.add("read_api", **read_api(settings, emails, stack.dir / "api.log"))
    print("3. latency under an offered load", flush=True)
    sustained = min(1000, max(50, round(e2e["events_per_s_after_ready"] * 0.5, -1)))
    first = offered[: int(sustained * load_seconds)]
    report.add(
        "load_sustained",
        **offered_load(settings, first, sustained, load_seconds),
    )
    wait_caught_up(settings)
    rest = offered[len(first) :]
    report.add("load_target", **offered_load(settings, rest, 2000, load_seconds))
    wait_caught_up(settings)
    # Last: these make tens of thousands of objects after the workload was frozen, and a
    # garbage collection of them would stall the latency probes and the API client.
    print("7. steady state (people the worker knows)", flush=True)
    report.add("steady", **steady_state(settings, stack, touchpoints, len(touchpoints)))
    print("9. a loyal customer: 20,000 events of one person", flush=True)
    report.add("loyal", **loyal_customer(settings, stack))


def _write(report: Report, out: Path) -> None:
    """The report as JSON, Markdown and a chart in ``out``; the Markdown printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    try:
        from bench.chart import chart

        chart(report.sections, out / "report.png")
    except ImportError as exc:  # matplotlib is in the [bench] extra that ./dev bench installs
        print(f"no chart ({exc}); install the [bench] extra", file=sys.stderr)
    print(f"\nwrote {out / 'report.md'}, report.json and report.png\n")
    print(markdown(report))


def stack_redis_flush(settings: Settings) -> None:
    """The raw Redis measure leaves its keys behind: the pipeline starts on an empty view."""
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    client.close()


if __name__ == "__main__":
    main()
