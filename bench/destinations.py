"""Destinations' speed (issue #20), measured in one run on this machine:

    ./dev python bench/destinations.py                    # writes bench/results/destinations.md
    ./dev python bench/destinations.py --profiles 3000    # a smaller run (a smoke run)

1. **backfill** — the embedded stack, one worker: N people sign up (one profile each,
   consenting to the CRM), the worker catches up, so ``profile-updates`` holds N
   records. Then one sync process per target reads them from the start, as
   ``unifier sync run --from-beginning`` does: a SQLite table, a PostgreSQL table (a
   private server on loopback), and a webhook receiver on loopback that answers 200.
   Reported: profile changes per second from its first record to its last, and the
   sync process's CPU per change.
2. **live latency** — the SQLite sync process follows while events arrive at a steady
   rate; for every change, the time from its ``profile-updates`` record (the broker's
   timestamp) until the destination has it: p50, p99, max.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import percentile
from bench.segments import _commit
from config.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def signups(n: int, start: int = 0, prefix: str = "s") -> list[dict[str, Any]]:
    at = datetime.now(UTC).isoformat()
    return [
        {"event_id": f"{prefix}-{i}", "type": "signed_up", "source": "web", "occurred_at": at,
         "identifiers": {"email": f"bench{i}@dest-bench.example", "phone": f"+1628{i:07d}"},
         "traits": {"first_name": f"First{i}", "last_name": f"Last{i}"},
         "consent": {"crm": True, "email_marketing": i % 2 == 0}}
        for i in range(start, start + n)
    ]  # fmt: skip


FIELDS = """
email = "identifiers.email"
phone = "identifiers.phone"
first_name = "traits.first_name"
last_name = "traits.last_name"
email_opt_in = "consent.email_marketing"
"""


class Receiver:
    """Answers 200 to every POST and counts the events."""

    def __init__(self) -> None:
        self.events = 0
        me = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                me.events += body.count(b'"profile.updated"')
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _send(settings: Settings, docs: list[dict[str, Any]]) -> None:
    from producers.kafka import TouchpointProducer
    from profiles.configured import identifier_priorities
    from profiles.touchpoint import parse_json

    types = identifier_priorities(settings)
    with TouchpointProducer(settings) as out:
        out.send_many(parse_json(d, types) for d in docs)


def _backfill(settings: Settings, n: int, group: str) -> dict[str, Any]:
    """One sync process from the start of profile-updates until it took ``n``."""
    from unifier.sync import Syncer, destinations_of

    syncer = Syncer(settings, destinations_of(settings, group), group=group, from_beginning=True)
    try:
        first = None
        cpu0 = time.process_time()
        deadline = time.monotonic() + 900
        while syncer.stats.records < n and time.monotonic() < deadline:
            got = syncer.step()
            if got and first is None:
                first = time.monotonic() - 0.0
                cpu0 = time.process_time()
        elapsed = time.monotonic() - (first or time.monotonic())
        cpu = time.process_time() - cpu0
        took = syncer.stats.records
    finally:
        syncer.close()
    return {
        "changes": took,
        "seconds": round(elapsed, 2),
        "changes_per_s": round(took / elapsed) if elapsed else None,
        "cpu_us_per_change": round(cpu / max(took, 1) * 1e6, 1),
    }


def _live(settings: Settings, group: str, rate: int, seconds: float, start: int) -> dict[str, Any]:
    from unifier.sync import Syncer, destinations_of

    syncer = Syncer(settings, destinations_of(settings, group), group=group)
    stop = threading.Event()

    def feed() -> None:
        from producers.kafka import TouchpointProducer
        from profiles.configured import identifier_priorities
        from profiles.touchpoint import parse_json

        types = identifier_priorities(settings)
        n = start
        with TouchpointProducer(settings) as producer:
            while not stop.is_set():
                t = time.monotonic()
                producer.send_many(parse_json(d, types) for d in signups(rate // 10, n, "live"))
                producer.flush()
                n += rate // 10
                stop.wait(max(0.1 - (time.monotonic() - t), 0))

    try:
        for _ in range(40):  # joined and caught up with what is there
            syncer.step()
        syncer.latencies.clear()
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            syncer.step(timeout=0.05)
        stop.set()
        feeder.join(30)
        samples = sorted(syncer.latencies)
    finally:
        syncer.close()
    return {
        "rate_events_per_s": rate,
        "changes": len(samples),
        "changes_per_s": round(len(samples) / seconds),
        "p50_ms": round(percentile(samples, 0.50) * 1000, 1) if samples else None,
        "p99_ms": round(percentile(samples, 0.99) * 1000, 1) if samples else None,
        "max_ms": round(samples[-1] * 1000, 1) if samples else None,
    }


def run(
    profiles: int, tmp: Path, rate: int, live_s: float, only: list[str] | None = None
) -> dict[str, Any]:
    from serve.lag import LagProbe
    from unifier.postgres import local_postgres
    from unifier.processes import free_port
    from unifier.stack import EmbeddedStack
    from unifier.topics import ensure_topics

    base = Settings(
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        state_dir=tmp / "state",
        touchpoint_partitions=4,
        internal_partitions=4,
    )
    out: dict[str, Any] = {"profiles": profiles}
    receiver = Receiver()
    with EmbeddedStack(base, tmp / "stack") as stack, local_postgres(tmp / "pg") as dsn:
        stack.start_broker()
        stack.start_redis()
        ensure_topics(base)
        _send(base, signups(profiles))
        stack.start_worker()
        started = time.monotonic()
        with LagProbe(base, {}) as probe:
            if not probe.wait(timeout=1800):
                raise RuntimeError("the worker did not catch up")
        out["worker_caught_up_s"] = round(time.monotonic() - started, 1)
        toml = tmp / "destinations.toml"
        toml.write_text(
            f'[destinations.lite]\nkind = "sqlite"\nurl = "{tmp / "crm.db"}"\ngroup = "lite"\n'
            f'purpose = "crm"\nmode = "mirror"\nrow_identifier = "crm_id"\n'
            f"[destinations.lite.fields]\n{FIELDS}\n"
            f'[destinations.pg]\nkind = "postgres"\nurl = "{dsn}"\ngroup = "pg"\n'
            f'purpose = "crm"\nmode = "mirror"\nrow_identifier = "crm_id"\n'
            f"[destinations.pg.fields]\n{FIELDS}\n"
            f'[destinations.hook]\nkind = "webhook"\nurl = "{receiver.url}"\ngroup = "hook"\n'
            f'purpose = "crm"\n[destinations.hook.fields]\n{FIELDS}\n'
        )
        settings = base.model_copy(update={"destinations_path": toml})
        os.environ.setdefault("SYNC_WEBHOOK_SECRET", "bench-secret")
        targets: dict[str, Callable[[], dict[str, Any]]] = {
            "sqlite": lambda: _backfill(settings, profiles, "lite"),
            "postgres": lambda: _backfill(settings, profiles, "pg"),
            "webhook": lambda: _backfill(settings, profiles, "hook"),
        }
        for name, measure in targets.items():
            if only and name not in only:
                continue
            out[name] = measure()
            print(name, out[name], flush=True)
        if "webhook" in out:
            out["webhook"]["events_received"] = receiver.events
        if not only or "live" in only:
            out["live_sqlite"] = _live(settings, "lite", rate, live_s, profiles)
            print("live", out["live_sqlite"], flush=True)
    receiver.close()
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Destinations (issue #20)",
        "",
        f"`{r['command']}` — {r['started']}, {r['machine']}, commit {r['commit']}.",
        "",
        f"Backfill of {r['run']['profiles']:,} profile changes by one sync process "
        "(`unifier sync run --from-beginning`), from its first record to its last:",
        "",
        "| target | changes/s | CPU per change | target (issue) |",
        "|---|---|---|---|",
    ]
    goals = {"sqlite": "≥ 5,000/s", "postgres": "≥ 5,000/s", "webhook": "≥ 2,000 events/s"}
    for name in ("sqlite", "postgres", "webhook"):
        m = r["run"][name]
        lines.append(
            f"| {name} | {m['changes_per_s']:,} | {m['cpu_us_per_change']} µs | {goals[name]} |"
        )
    live = r["run"]["live_sqlite"]
    lines += [
        "",
        f"Change → destination while {live['rate_events_per_s']} events/s arrive "
        f"(SQLite, {live['changes']:,} changes): p50 {live['p50_ms']} ms, "
        f"**p99 {live['p99_ms']} ms**, max {live['max_ms']} ms (target: p99 ≤ 1 s). "
        "Measured from the `profile-updates` record's timestamp to the committed write.",
        "",
        "```json",
        json.dumps(r, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=400, help="live part: events/s")
    parser.add_argument("--live-seconds", type=float, default=20.0)
    parser.add_argument(
        "--only", nargs="+", choices=["sqlite", "postgres", "webhook", "live"],
        help="measure only these (prints; bench/results/ is written by a full run)",
    )  # fmt: skip
    args = parser.parse_args()
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": "./dev python bench/destinations.py " + " ".join(sys.argv[1:]),
        "commit": _commit(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-destinations-") as tmp:
        report["run"] = run(args.profiles, Path(tmp), args.rate, args.live_seconds, args.only)
    if args.only:
        print(json.dumps(report, indent=1))
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "destinations.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "destinations.md").write_text(markdown(report))
    print(f"wrote {RESULTS / 'destinations.md'}")


if __name__ == "__main__":
    main()
