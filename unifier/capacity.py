"""The capacity model behind ``unifier plan`` and docs/capacity.md.

Every number it starts from was measured (``bench/capacity.py`` →
``bench/results/capacity.json``, and the memory section of ``./dev bench`` →
``bench/results/report.json``); ``MEASURED`` holds them, and
``tests/unit/test_capacity.py`` keeps it equal to what those files say.

The model, for a load of N events/s over M profiles of K events each:

* **Workers.** A worker is one Python process: it keeps at most ``busy`` of one core
  busy (the rest it waits on the broker between steps) at ``cpu`` µs per event, so it
  handles ``busy / cpu`` events/s. The cost per event is a mix of the *steady* case
  (people it knows) and the *cold* one (new people: identity hops, claims, merges),
  weighted by the share of new people's events. Workers = N over that, at a target
  utilization (70 %: room for a rebalance and a burst).
* **Partitions** per stage: at least twice the workers (room to double them without
  re-partitioning, which Kafka cannot undo), from a list of numbers with many divisors
  so workers share them evenly.
* **Worker memory**: the tables hold every profile once: bytes per profile (measured
  at 6 events) plus the ledger's bytes per further event, over the workers, plus a
  process's own.
* **Redis**: the view's bytes per profile times M, spread over shards of
  ``shard_gib`` at 75 % full; and enough shards that none runs above half a core
  (Redis executes commands on one thread) at the measured Redis CPU per event.
  Three at least: a cluster of fewer has no shard to lose.
* **Broker disk** per retention day: bytes per event on the time-retained topics,
  times N x 86,400, times the replication factor; the compacted topics keep one record
  per key (each key's last record, measured: the embedded broker never compacts, so
  the bench reads every record and keeps the last of each key).

What it cannot know: a real Kafka's CPU (measured here is the embedded Tansu broker),
network between machines, and Redis Cluster's own overhead beyond one server's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from sinks.redisconn import BUCKETS

#: Partition counts to choose from: many divisors, so workers share them evenly.
PARTITION_STEPS = (12, 24, 48, 96, 192, 384, 768, 1536)
TARGET_UTILIZATION = 0.7
REDIS_CORE_SHARE = 0.5
REDIS_FILL = 0.75
MIN_SHARDS = 3
#: The view's hash tags spread evenly over this many shards at most: four or more each.
MAX_EVEN_SHARDS = BUCKETS // 4
GIB = 2**30


@dataclass(frozen=True)
class Case:
    """What one event costs in one case (µs of CPU), and how busy a worker kept its core."""

    worker_cpu_us: float
    broker_cpu_us: float
    redis_cpu_us: float
    worker_busy: float


@dataclass(frozen=True)
class Costs:
    steady: Case
    cold: Case
    worker_table_bytes_per_profile: float  # both tables, at ``table_events_per_profile``
    table_events_per_profile: float
    worker_bytes_per_event: float  # the ledger's growth per further event
    worker_base_bytes: float  # a worker process with (almost) no profiles
    redis_bytes_per_profile: float
    retained_bytes_per_event: float  # the time-retained topics, all of them
    compacted_bytes_per_profile: float  # the compacted topics: each key's last record
    source: str = ""  # the runs these come from


#: Measured on 2 cores (bench/results/capacity.md, report.md); see the module docstring.
MEASURED = Costs(
    steady=Case(worker_cpu_us=1034.5, broker_cpu_us=362.0, redis_cpu_us=90.5, worker_busy=0.783),
    cold=Case(worker_cpu_us=1879.6, broker_cpu_us=585.7, redis_cpu_us=172.6, worker_busy=0.928),
    worker_table_bytes_per_profile=2568.1,
    table_events_per_profile=6.02,
    worker_bytes_per_event=7.86,
    worker_base_bytes=378339328.0,
    redis_bytes_per_profile=5392.8,
    retained_bytes_per_event=1516.3,
    compacted_bytes_per_profile=9497.1,
    source=(
        "./dev python bench/capacity.py at 2026-12-02T16:57:37+00:00; "
        "./dev bench at 2026-12-01T19:22:18+00:00"
    ),
)


def _case(run: dict[str, Any]) -> Case:
    return Case(
        worker_cpu_us=run["worker_cpu_us_per_event"],
        broker_cpu_us=run["broker_cpu_us_per_event"],
        redis_cpu_us=run["redis_cpu_us_per_event"],
        worker_busy=run["worker_busy"],
    )


def costs_from(capacity: dict[str, Any], report: dict[str, Any]) -> Costs:
    """The costs a capacity run (one worker) and a benchmark's memory section give."""
    one = next(r for r in capacity["runs"] if r["workers"] == 1)
    stored = one["storage"]
    topics = stored["topics"].values()
    retained = sum(t["bytes"] for t in topics if "compact" not in t["policy"])
    compacted = sum(t["compacted_bytes"] for t in topics if "compact" in t["policy"])
    memory = report["sections"]["memory"]
    biggest = max(memory["sizes"], key=lambda s: s["profiles"])
    ages = report["sections"]["profile_age"]["rows"]
    per_event = (ages[-1]["record_bytes"] - ages[-2]["record_bytes"]) / (
        ages[-1]["events"] - ages[-2]["events"]
    )
    return Costs(
        steady=_case(one["steady"]),
        cold=_case(one["cold"]),
        worker_table_bytes_per_profile=round(biggest["bytes_per_profile"], 1),
        table_events_per_profile=round(memory["events_per_profile"], 2),
        worker_bytes_per_event=round(per_event, 2),
        worker_base_bytes=float(one["worker_rss_bytes"]),
        redis_bytes_per_profile=stored["redis_bytes_per_profile"],
        retained_bytes_per_event=round(retained / stored["events"], 1),
        compacted_bytes_per_profile=round(compacted / max(stored["profiles"], 1), 1),
        source=f"{capacity['command']} at {capacity['started']}; "
        f"{report['command']} at {report['started']}",
    )


def mixed(costs: Costs, new_share: float) -> Case:
    """The cost of an event when ``new_share`` of events come from new people."""
    s, c = costs.steady, costs.cold

    def mix(a: float, b: float) -> float:
        return a * (1 - new_share) + b * new_share

    return Case(
        worker_cpu_us=mix(s.worker_cpu_us, c.worker_cpu_us),
        broker_cpu_us=mix(s.broker_cpu_us, c.broker_cpu_us),
        redis_cpu_us=mix(s.redis_cpu_us, c.redis_cpu_us),
        worker_busy=mix(s.worker_busy, c.worker_busy),
    )


def per_worker_rate(case: Case) -> float:
    """Events/s one worker handles on a core of its own."""
    return case.worker_busy / case.worker_cpu_us * 1e6


def predict_on_one_machine(case: Case, workers: int, cores: int) -> float:
    """Events/s of ``workers`` on one machine of ``cores`` that also runs the broker and
    Redis: each worker at most its own rate; all together at most what the cores give
    at the CPU every process spends per event."""
    total_us = case.worker_cpu_us + case.broker_cpu_us + case.redis_cpu_us
    return min(workers * per_worker_rate(case), cores / total_us * 1e6)


@dataclass
class Plan:
    events_per_s: float
    profiles: int
    events_per_profile: float
    new_share: float
    retention_days: float
    replication: int
    workers: int
    partitions: int
    worker_memory_bytes: float
    redis_shards: int
    redis_memory_bytes: float
    redis_shards_for_memory: int
    redis_shards_for_cpu: int
    broker_disk_bytes_per_day: float
    broker_disk_bytes_retained: float
    compacted_bytes: float
    worker_events_per_s: float
    cpu_us_per_event: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan(
    events_per_s: float,
    profiles: int,
    events_per_profile: float = 10.0,
    new_share: float = 0.05,
    retention_days: float = 7.0,
    replication: int = 3,
    shard_gib: float = 16.0,
    costs: Costs = MEASURED,
) -> Plan:
    case = mixed(costs, new_share)
    rate = per_worker_rate(case)
    workers = max(1, math.ceil(events_per_s / (rate * TARGET_UTILIZATION)))
    partitions = next((p for p in PARTITION_STEPS if p >= 2 * workers), 2 * workers)
    extra_events = max(events_per_profile - costs.table_events_per_profile, 0.0)
    per_profile = costs.worker_table_bytes_per_profile + extra_events * costs.worker_bytes_per_event
    worker_memory = costs.worker_base_bytes + profiles * per_profile / workers
    redis_memory = profiles * costs.redis_bytes_per_profile
    for_memory = math.ceil(redis_memory / (shard_gib * GIB * REDIS_FILL))
    for_cpu = math.ceil(events_per_s * case.redis_cpu_us / 1e6 / REDIS_CORE_SHARE)
    per_day = events_per_s * 86400 * costs.retained_bytes_per_event * replication
    compacted = profiles * costs.compacted_bytes_per_profile * replication
    notes = [
        f"a worker: {case.worker_cpu_us:,.0f} µs of CPU per event, {case.worker_busy:.0%} of "
        f"a core busy → {rate:,.0f} events/s; planned at {TARGET_UTILIZATION:.0%}",
        f"partitions: ≥ 2 x workers ({partitions} per stage); never fewer later",
        f"Redis: {costs.redis_bytes_per_profile:,.0f} bytes per profile; shards of "
        f"{shard_gib:g} GiB filled to {REDIS_FILL:.0%}; ≤ {REDIS_CORE_SHARE:.0%} of a core "
        f"each at {case.redis_cpu_us:,.1f} µs per event; {MIN_SHARDS} at least",
        f"broker: {costs.retained_bytes_per_event:,.0f} bytes per event on the time-retained "
        f"topics x {replication} replicas; compacted topics: "
        f"{costs.compacted_bytes_per_profile:,.0f} bytes per profile",
    ]
    shards = max(MIN_SHARDS, for_memory, for_cpu)
    if shards > MAX_EVEN_SHARDS:
        notes.append(
            f"{shards} shards: the view's {BUCKETS} hash tags do not spread evenly over more "
            f"than {MAX_EVEN_SHARDS} (sinks.redisconn.BUCKETS; more needs a larger number "
            "and a view rebuild)"
        )
    return Plan(
        events_per_s=events_per_s,
        profiles=profiles,
        events_per_profile=events_per_profile,
        new_share=new_share,
        retention_days=retention_days,
        replication=replication,
        workers=workers,
        partitions=partitions,
        worker_memory_bytes=worker_memory,
        redis_shards=shards,
        redis_memory_bytes=redis_memory,
        redis_shards_for_memory=for_memory,
        redis_shards_for_cpu=for_cpu,
        broker_disk_bytes_per_day=per_day,
        broker_disk_bytes_retained=per_day * retention_days + compacted,
        compacted_bytes=compacted,
        worker_events_per_s=rate,
        cpu_us_per_event=case.worker_cpu_us,
        notes=notes,
    )


def check_report(capacity: dict[str, Any], report: dict[str, Any] | None = None) -> str:
    """capacity.md: the measured runs against the model's prediction for this machine
    (costs from the one-worker run), and the model's error at each worker count."""
    cores = int(capacity["machine"].get("cpus") or capacity["machine"].get("cores") or 1)
    lines = [
        "# Capacity: measured costs, and the model against 1, 2 and 3 workers",
        "",
        f"Run {capacity['started']} with `{capacity['command']}` on {cores} cores "
        f"({capacity['machine'].get('cpu_model', '?')}); {capacity['events']:,} events of "
        f"{capacity['people']:,} people, {capacity['partitions']} partitions per stage, "
        "the embedded broker and one Redis server on the same machine.",
        "",
        "The model's costs come from the one-worker run; its prediction for *this* "
        "machine is min(workers x one worker's rate, cores / CPU per event of worker + "
        "broker + Redis) (`unifier.capacity.predict_on_one_machine`). The runs with 2 "
        "and 3 workers check it.",
        "",
        "| case | workers | measured events/s | predicted | error | worker µs/event | "
        "broker µs | Redis µs | worker busy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    one = next(r for r in capacity["runs"] if r["workers"] == 1)
    for name in ("cold", "steady"):
        base = _case(one[name])
        for run in capacity["runs"]:
            m = run[name]
            predicted = predict_on_one_machine(base, run["workers"], cores)
            error = (predicted - m["events_per_s"]) / m["events_per_s"]
            lines.append(
                f"| {name} | {run['workers']} | {m['events_per_s']:,.0f} | {predicted:,.0f} | "
                f"{error:+.0%} | {m['worker_cpu_us_per_event']:,.0f} | "
                f"{m['broker_cpu_us_per_event']:,.0f} | {m['redis_cpu_us_per_event']:,.0f} | "
                f"{m['worker_busy']:.0%} |"
            )
    stored = one["storage"]
    lines += [
        "",
        f"Storage after the one-worker run ({stored['events']:,} events, "
        f"{stored['profiles']:,} profiles): Redis {stored['redis_bytes_per_profile']:,.0f} "
        "bytes per profile; per topic (keys and values, every record the broker holds):",
        "",
        "| topic | policy | records | bytes | bytes per event | after compaction |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in stored["topics"].items():
        lines.append(
            f"| {name} | {t['policy']} | {t['records']:,} | {t['bytes']:,} | "
            f"{t['bytes_per_event']:,.1f} | "
            + (
                f"{t['compacted_bytes']:,} ({t['keys']:,} keys) |"
                if "compact" in t["policy"]
                else "— |"
            )
        )
    lines.append("")
    return "\n".join(lines)
