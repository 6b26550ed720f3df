"""``./dev soak --minutes N``: a steady synthetic load for N minutes on the embedded
stack, with the worker killed (SIGKILL) every few minutes, then the check every fault
test ends with: every accepted event counted once, the stitching exact.

It prints, once a minute, events accepted and applied, the lag, and the RSS of each
process (broker, Redis, worker, archiver); at the end a verdict and whether any RSS
grew without bound (the last third of the run against the middle third). The
report goes to ``bench/results/soak.md`` (and ``soak.json``). Not in CI: it is long.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from bench.scale import rss_bytes

RESULTS = Path(__file__).parent / "results"


def _stop_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: the stack stops what it started


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=400, help="events per second offered")
    parser.add_argument("--people", type=int, default=2000, help="the population (fixed)")
    parser.add_argument(
        "--kill-every", type=float, default=5.0, help="minutes between worker kills"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


class Load:
    """A fixed population's events at a steady rate, through the SDK's producer: the
    same people over and over (each round's events with new ids), so the customer base
    stops growing and what still grows is history (the broker's log, 8 bytes an event
    of a profile's state) — or a leak."""

    def __init__(self, settings: Any, rate: int, people: int) -> None:
        from producers.synthetic import generate

        self.base = generate(people=people, seed=99)
        self.settings = settings
        self.rate = rate
        self.sent = 0
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _events(self) -> Any:
        from profiles.configured import identifier_priorities
        from profiles.touchpoint import parse_json

        priorities = identifier_priorities(self.settings)
        round_ = 0
        while True:
            for base in self.base:
                event = {**base, "event_id": f"{base['event_id']}~{round_}"} if round_ else base
                yield parse_json(event, priorities)
            round_ += 1

    def _run(self) -> None:
        from producers.kafka import TouchpointProducer

        began = time.monotonic()
        with TouchpointProducer(self.settings) as producer:
            for tp in self._events():
                if self.stop.is_set():
                    break
                delay = began + self.sent / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                producer.send(tp)
                self.sent += 1
            report = producer.flush()
        self.failed = report.events_failed


def _applied(settings: Any) -> tuple[int, int]:
    from serve.view import RedisProfileView

    view = RedisProfileView.for_settings(settings)
    try:
        profiles = list(view.scan())
    finally:
        view.close()
    return len(profiles), sum(p["computed"]["event_count"] for p in profiles)


def _lag(settings: Any) -> int:
    from serve.lag import LagProbe

    with LagProbe(settings) as probe:
        return sum(r.lag for r in probe.measure())


def main() -> None:
    args = _arguments()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    from tests.support.data import comparable, reference_views
    from unifier.demo import demo_settings
    from unifier.stack import running

    seconds = args.minutes * 60
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="unifier-soak-") as tmp:
        settings = demo_settings(Path(tmp)).model_copy(
            update={"identity_limits": {}, "identity_max_claimants": 0}
        )
        with running(settings, worker=True) as stack:
            stack.start_archiver()
            load = Load(settings, args.rate, args.people)
            print(
                f"soak: {args.minutes:g} min at {args.rate} events/s offered, "
                f"{args.people:,} people ({len(load.base):,} events a round), the worker "
                f"killed every {args.kill_every:g} min",
                flush=True,
            )
            load.thread.start()
            began = time.monotonic()
            next_kill = began + args.kill_every * 60
            kills = 0
            recoveries: list[float] = []
            while load.thread.is_alive() and time.monotonic() - began < seconds:
                time.sleep(min(60.0, max(seconds - (time.monotonic() - began), 0.1)))
                now, accepted = time.monotonic(), load.sent
                if now >= next_kill and now - began < seconds - 30:
                    stack.kill_one("worker")
                    restarted = time.monotonic()
                    # Recovery reads the tables' changelogs: on the embedded broker (no
                    # compaction) that grows with history, so allow it and measure it.
                    stack.start_worker(ready_timeout=1800)
                    recoveries.append(round(time.monotonic() - restarted, 1))
                    kills += 1
                    next_kill = now + args.kill_every * 60
                profiles, applied = _applied(settings)
                row = {
                    "minute": round((now - began) / 60, 1),
                    "accepted": accepted,
                    "applied": applied,
                    "profiles": profiles,
                    "lag": _lag(settings),
                    "kills": kills,
                    "recovery_s": recoveries[-1] if recoveries else None,
                    "rss_mib": {
                        name: round(rss_bytes(proc.pid) / 2**20, 1)
                        for name, proc in stack.procs.items()
                    },
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            load.stop.set()
            load.thread.join(120)
            with_lag_zero = _wait_caught_up(settings)
            profiles, applied = _applied(settings)
            from serve.view import RedisProfileView

            view = RedisProfileView.for_settings(settings)
            try:
                clusters = set(comparable(list(view.scan())))
            finally:
                view.close()
            exact = clusters == set(reference_views(load.base, settings))
    verdict = {
        "minutes": args.minutes,
        "rate": args.rate,
        "people": args.people,
        "accepted": load.sent,
        "failed": load.failed,
        "applied": applied,
        "counted_once": applied == load.sent,
        "stitching_exact": exact,
        "caught_up": with_lag_zero,
        "kills": kills,
        "restart_to_ready_s": recoveries,
        "rss_growth": _growth(rows),
    }
    print(json.dumps(verdict), flush=True)
    _write(args.out, rows, verdict)
    if not (verdict["counted_once"] and exact and with_lag_zero):
        raise SystemExit(1)


def _wait_caught_up(settings: Any) -> bool:
    from serve.lag import LagProbe

    with LagProbe(settings) as probe:
        return bool(probe.wait(timeout=600, interval=1.0))


def _growth(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per process: mean RSS of the last third of the samples over the middle third."""
    if len(rows) < 3:
        return {}
    third = len(rows) // 3
    middle, last = rows[third : 2 * third], rows[2 * third :]
    out = {}
    for name in rows[-1]["rss_mib"]:
        mid = [r["rss_mib"].get(name, 0) for r in middle if r["rss_mib"].get(name)]
        end = [r["rss_mib"].get(name, 0) for r in last if r["rss_mib"].get(name)]
        if mid and end:
            out[name] = round((sum(end) / len(end)) / (sum(mid) / len(mid)), 3)
    return out


def _write(out: Path, rows: list[dict[str, Any]], verdict: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps({"verdict": verdict, "rows": rows}, indent=1))
    names = sorted({n for r in rows for n in r["rss_mib"]})
    lines = [
        f"# Soak: {verdict['minutes']:g} minutes at {verdict['rate']} events/s offered",
        "",
        f"`./dev soak --minutes {verdict['minutes']:g} --rate {verdict['rate']} --people "
        f"{verdict['people']}`: the same {verdict['people']:,} people over and over; the "
        f"worker killed with SIGKILL {verdict['kills']} times.",
        "",
        f"- accepted {verdict['accepted']:,} events, applied {verdict['applied']:,}: "
        f"{'each counted once' if verdict['counted_once'] else 'NOT each counted once'}",
        f"- stitching against the synthetic truth (the clusters): "
        f"{'exact' if verdict['stitching_exact'] else 'NOT exact'}",
        f"- every stage caught up after the load: {'yes' if verdict['caught_up'] else 'NO'}",
        f"- a killed worker's restart until ready (tables recovered), each kill: "
        f"{', '.join(f'{s:g} s' for s in verdict['restart_to_ready_s']) or '-'}",
        "- RSS, last third of the run over the middle third: "
        + ", ".join(f"{n} {g:.2f}x" for n, g in verdict["rss_growth"].items()),
        "",
        "| minute | accepted | applied | lag | kills | "
        + " | ".join(f"RSS {n} MiB" for n in names)
        + " |",
        "|" + "---|" * (5 + len(names)),
    ]
    for r in rows:
        lines.append(
            f"| {r['minute']} | {r['accepted']:,} | {r['applied']:,} | {r['lag']:,} | "
            f"{r['kills']} | " + " | ".join(str(r["rss_mib"].get(n, "")) for n in names) + " |"
        )
    (out / "soak.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
