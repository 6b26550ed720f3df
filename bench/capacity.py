"""The capacity model's measured costs, and its check against 1, 2 and 3 workers.

For each worker count a fresh embedded stack (12 partitions per stage, one Redis
server) gets the same synthetic journeys pre-loaded — new people, identifiers met for
the first time, merges: the *cold* case — and the workers start; the time until every
stage has caught up after they are ready, and the CPU each process spent (``/proc``),
give events/s and CPU per event. Then a backlog of new events of the people they now
know (the *steady* case, what a mature deployment mostly sees) is sent and timed the
same way. After the one-worker run the broker's topics are read whole: bytes per event
on each topic (what a retention day costs on disk), and per profile on the compacted
ones; Redis's used memory per profile.

``unifier.capacity`` holds the costs measured here (``tests/unit/test_capacity.py``
keeps them equal to ``bench/results/capacity.json``), and the model's prediction for
this machine is set against each measured run: its error is reported.

    ./dev python bench/capacity.py [--people 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import machine, wait_caught_up
from bench.scale import cpu_seconds, rss_bytes
from config.settings import Settings
from producers.synthetic import generate_journeys
from profiles.configured import identifier_priorities
from profiles.touchpoint import Touchpoint, parse_json

OUT = Path(__file__).parent / "results"
PARTITIONS = 12


def _send(settings: Settings, touchpoints: list[Touchpoint]) -> None:
    from producers.kafka import TouchpointProducer

    with TouchpointProducer(settings) as out:
        for tp in touchpoints:
            out.send(tp)


def _cpu(stack: Any, names: list[str]) -> dict[str, float]:
    return {name: cpu_seconds(stack.procs[name].pid) for name in names}


def _phase(
    settings: Settings, stack: Any, workers: list[str], events: int, start: float
) -> dict[str, Any]:
    """Wait until caught up; events/s since ``start`` and CPU per event per process."""
    before = _cpu(stack, [*workers, "broker", "redis"])
    wait_caught_up(settings)
    took = time.perf_counter() - start
    after = _cpu(stack, [*workers, "broker", "redis"])
    spent = {n: after[n] - before[n] for n in before}
    worker_cpu = sum(spent[w] for w in workers)
    return {
        "events": events,
        "seconds": round(took, 3),
        "events_per_s": round(events / took, 1),
        "worker_cpu_us_per_event": round(worker_cpu / events * 1e6, 1),
        "broker_cpu_us_per_event": round(spent["broker"] / events * 1e6, 1),
        "redis_cpu_us_per_event": round(spent["redis"] / events * 1e6, 1),
        # how much of a core each worker kept busy, on average
        "worker_busy": round(worker_cpu / took / len(workers), 3),
    }


def run(
    workers: int, touchpoints: list[Touchpoint], tmp: Path, partitions: int = PARTITIONS
) -> dict[str, Any]:
    from unifier.demo import demo_settings
    from unifier.stack import running

    settings = demo_settings(tmp / f"w{workers}").model_copy(
        update={"touchpoint_partitions": partitions, "internal_partitions": partitions}
    )
    names = ["worker"] + [f"worker-{n}" for n in range(2, workers + 1)]
    with running(settings) as stack:
        _send(settings, touchpoints)
        for name in names:  # each returns once assigned, its tables recovered
            stack.start_worker(name)
        # CPU is counted from here: what the workers spend on the backlog
        cold = _phase(settings, stack, names, len(touchpoints), time.perf_counter())
        rng = random.Random(11)
        now_ms = int(time.time() * 1000)
        backlog = [
            replace(rng.choice(touchpoints), event_id=str(uuid.UUID(int=rng.getrandbits(128))),
                    occurred_at_ms=now_ms + i)
            for i in range(len(touchpoints))
        ]  # fmt: skip
        started = time.perf_counter()
        _send(settings, backlog)
        steady = _phase(settings, stack, names, len(backlog), started)
        out: dict[str, Any] = {"workers": workers, "cold": cold, "steady": steady}
        out["worker_rss_bytes"] = sum(rss_bytes(stack.procs[n].pid) for n in names)
        if workers == 1:
            out["storage"] = storage(settings, len(touchpoints) + len(backlog))
    return out


def storage(settings: Settings, events: int) -> dict[str, Any]:
    """Bytes on each topic (keys and values), per event; Redis memory per profile."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    from serve.view import RedisProfileView
    from sinks.redisconn import connect
    from unifier.topics import topic_specs

    topics: dict[str, Any] = {}
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers,
                         "group.id": f"capacity-{uuid.uuid4().hex[:6]}",
                         "enable.partition.eof": True, "enable.auto.commit": False})  # fmt: skip
    try:
        for spec in topic_specs(settings):
            consumer.assign([TopicPartition(spec.name, p, OFFSET_BEGINNING)
                             for p in range(spec.partitions)])  # fmt: skip
            left, size, records = spec.partitions, 0, 0
            last: dict[bytes, int] = {}  # what compaction would keep: each key's last record
            deadline = time.monotonic() + 120
            while left and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        left -= 1
                    continue
                records += 1
                key, value = msg.key() or b"", msg.value()
                size += len(key) + len(value or b"")
                if value is None:  # a tombstone: compaction drops the key
                    last.pop(key, None)
                else:
                    last[key] = len(key) + len(value)
            policy = spec.config.get("cleanup.policy", "delete")
            topics[spec.name] = {
                "records": records,
                "bytes": size,
                "policy": policy,
                "bytes_per_event": round(size / events, 1),
                "keys": len(last),
                "compacted_bytes": sum(last.values()),
            }
    finally:
        consumer.close()
    view = RedisProfileView.for_settings(settings)
    with contextlib.closing(view):
        profiles = sum(1 for _ in view.scan())
    client = connect(settings.redis_url)
    used = int(client.info("memory")["used_memory"])
    client.close()
    return {
        "events": events,
        "profiles": profiles,
        "topics": topics,
        "redis_used_memory_bytes": used,
        "redis_bytes_per_profile": round(used / max(profiles, 1), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--partitions", type=int, default=PARTITIONS, help="per stage")
    parser.add_argument("--workers", default="1,2,3", help="worker counts to run, comma-separated")
    args = parser.parse_args()
    journeys = generate_journeys(args.people, args.seed)
    touchpoints = [parse_json(e, identifier_priorities(Settings())) for e in journeys.events]
    gc.collect()
    gc.freeze()
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["./dev python bench/capacity.py", *sys.argv[1:]]),
        "machine": machine(),
        "people": args.people,
        "events": len(touchpoints),
        "partitions": args.partitions,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="unifier-capacity-") as tmp:
        for workers in [int(w) for w in args.workers.split(",")]:
            print(f"{workers} worker(s): {len(touchpoints):,} events cold, then as many "
                  "steady ...", flush=True)  # fmt: skip
            result = run(workers, touchpoints, Path(tmp), args.partitions)
            print(json.dumps({k: v for k, v in result.items() if k != "storage"}), flush=True)
            report["runs"].append(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capacity.json").write_text(json.dumps(report, indent=2) + "\n")
    from unifier.capacity import check_report

    text = check_report(report)
    (args.out / "capacity.md").write_text(text)
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
