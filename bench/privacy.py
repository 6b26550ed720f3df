"""Privacy's costs (issue #19), measured in one run on this machine:

    ./dev python bench/privacy.py                 # all three parts; writes bench/results/
    ./dev python bench/privacy.py --events 5000   # a smaller run (a smoke run)

1. **sealing and opening** — in this process, no broker: synthetic journeys sealed as a
   producer seals them (identifiers normalized, tokens, AES-GCM, the SQLite key store),
   first with every identifier new (its key made and written) and then again with the
   keys cached; the Avro record's size per event sealed and not; profile views opened
   as the read API opens them (and masked), keys cached and not.
2. **the worker's CPU per event** — the embedded stack, one worker: the same events
   sent with sealing off and on (``UNIFIER_SEAL_PII``), the worker's CPU seconds until
   it caught up, per event.
3. **erasure** — on the stack of part 2 (sealing on): people erased one at a time as
   ``unifier privacy erase`` does; the time from the request until the receipt says
   done (profile, identifiers, keys, view, topics), and the dead-letter scan's time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import percentile
from bench.scale import cpu_seconds
from bench.segments import _commit
from config.settings import Settings
from producers.synthetic import generate_journeys
from profiles.configured import identifier_priorities, trait_rules
from profiles.privacy import mask_view, open_document
from profiles.touchpoint import Touchpoint, parse_json
from schemas.codec import encode_batch

RESULTS = Path(__file__).resolve().parent / "results"


def _events(people: int, limit: int, seed: int = 11) -> list[Touchpoint]:
    settings = Settings()
    types = identifier_priorities(settings)
    docs = generate_journeys(people, seed).events[:limit]
    return [parse_json(d, types) for d in docs]


def sealing(events: list[Touchpoint], tmp: Path) -> dict[str, Any]:
    """Section 1."""
    from profiles.graph.node import ProfileNode
    from profiles.projection import view_of
    from profiles.reference import reference_states
    from sinks.keys import sealer_for

    settings = Settings(state_dir=tmp / "state")
    sealer = sealer_for(settings)
    assert sealer is not None
    started = time.process_time()
    sealed = sealer.seal(events)  # every identifier new: its key made and written
    cold = time.process_time() - started
    warm_runs = []
    for _ in range(3):
        again = sealer_for(settings)  # a new process's caches, the keys on disk
        assert again is not None
        again.seal(events[:200])  # its caches filled with what it meets first
        started = time.process_time()
        again.seal(events)
        warm_runs.append(time.process_time() - started)
    plain_bytes = sum(len(encode_batch([tp])) for tp in events[:2000])
    sealed_bytes = sum(len(encode_batch([tp])) for tp in sealed[:2000])
    # Views as the worker writes them, opened as the read API opens them.
    rules = trait_rules(settings)
    states = reference_states(sealed, sealer.rules, "US")
    views = [view_of(f"p{i}", ProfileNode(state=s), rules) for i, s in enumerate(states)]
    reader = sealer_for(settings)
    assert reader is not None
    started = time.process_time()
    for view in views:
        mask_view(open_document(view, reader.open_many))
    cold_open = time.process_time() - started
    started = time.process_time()
    for view in views:
        mask_view(open_document(view, reader.open_many))
    warm_open = time.process_time() - started
    n = len(events)
    return {
        "events": n,
        "seal_new_keys_us_per_event": cold / n * 1e6,
        "seal_us_per_event": statistics.median(warm_runs) / n * 1e6,
        "bytes_per_event_plain": plain_bytes / min(n, 2000),
        "bytes_per_event_sealed": sealed_bytes / min(n, 2000),
        "profiles": len(views),
        "open_view_cold_us": cold_open / len(views) * 1e6,
        "open_view_us": warm_open / len(views) * 1e6,
    }


def _stack(tmp: Path, seal: bool) -> Any:
    from unifier.processes import free_port
    from unifier.stack import EmbeddedStack

    settings = Settings(
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        state_dir=tmp / "state",
        touchpoint_partitions=4,
        internal_partitions=4,
        seal_pii=seal,
    )
    return EmbeddedStack(settings, tmp / "stack")


def worker_cost(events: list[Touchpoint], tmp: Path, seal: bool, erase: int) -> dict[str, Any]:
    """Section 2 (and 3 when ``erase``)."""
    from producers.kafka import TouchpointProducer
    from serve.lag import LagProbe
    from unifier.topics import ensure_topics

    stack = _stack(tmp, seal)
    with stack:
        stack.start_broker()
        stack.start_redis()
        settings = stack.settings
        ensure_topics(settings)
        with TouchpointProducer(settings) as out:  # sent before the worker starts
            out.send_many(events)
        stack.start_worker()
        pid = stack.procs["worker"].pid
        before = cpu_seconds(pid)
        started = time.monotonic()
        with LagProbe(settings) as probe:
            if not probe.wait(timeout=1800):
                raise RuntimeError("the worker did not catch up")
        result: dict[str, Any] = {
            "seal": seal,
            "events": len(events),
            "caught_up_s": time.monotonic() - started,
            "worker_cpu_s": cpu_seconds(pid) - before,
        }
        result["cpu_us_per_event"] = result["worker_cpu_s"] / len(events) * 1e6
        if erase:
            result["erasure"] = erasures(settings, erase)
    return result


def erasures(settings: Settings, n: int) -> dict[str, Any]:
    """Section 3: ``n`` people erased one after the other."""
    from serve.privacy import find_subject, request_erasure, shred_dead_letters, wait_for
    from serve.view import RedisProfileView

    view = RedisProfileView.for_settings(settings)
    try:
        people = [p for p in view.scan() if p["identifiers"].get("email")][:n]
    finally:
        view.close()
    took, scans = [], []
    for person in people:
        email = person["identifiers"]["email"][0]
        started = time.monotonic()
        subject = find_subject(settings, ("email", email), None)
        receipt = request_erasure(settings, subject, True, "bench")
        done = wait_for(settings, receipt, 60)
        if not done.done():
            raise RuntimeError(f"erasure {receipt} not done within 60 s")
        took.append(time.monotonic() - started)
        started = time.monotonic()
        shred_dead_letters(settings, subject, receipt)
        scans.append(time.monotonic() - started)
    return {
        "people": len(took),
        "erase_p50_s": percentile(took, 0.5),
        "erase_max_s": max(took),
        "dlq_scan_p50_s": percentile(scans, 0.5),
    }


def markdown(r: dict[str, Any]) -> str:
    s, off, on = r["sealing"], r.get("worker_plain"), r.get("worker_sealed")
    lines = [
        "# Privacy: the cost of sealing, and the time an erasure takes (issue #19)",
        "",
        f"Measured {r['started']} on {r['machine']} at {r.get('commit', '?')} "
        f"with `{r['command']}`.",
        "",
        "| | measured |",
        "|---|---|",
        f"| sealing an event at the producer (identifiers, personal traits; keys cached) "
        f"| **{s['seal_us_per_event']:.1f} µs CPU/event** |",
        f"| ... when every identifier is new (its key made and written to disk) "
        f"| {s['seal_new_keys_us_per_event']:.1f} µs CPU/event |",
        f"| an event's Avro record, plain → sealed "
        f"| {s['bytes_per_event_plain']:.0f} → {s['bytes_per_event_sealed']:.0f} bytes |",
        f"| opening and masking a profile view (the read API; keys cached / not) "
        f"| {s['open_view_us']:.1f} / {s['open_view_cold_us']:.1f} µs CPU |",
    ]
    if off and on:
        added = on["cpu_us_per_event"] - off["cpu_us_per_event"]
        lines += [
            f"| the worker's CPU per event, sealing off → on ({on['events']:,} events) "
            f"| {off['cpu_us_per_event']:.0f} → {on['cpu_us_per_event']:.0f} µs "
            f"(**{added:+.0f} µs/event**) |",
        ]
        e = on.get("erasure")
        if e:
            lines += [
                f"| an erasure, request → done (tables, keys, ledger, view, topics), p50 / max "
                f"of {e['people']} | **{e['erase_p50_s']:.2f} / {e['erase_max_s']:.2f} s** |",
                f"| ... the dead-letter scan after it, p50 | {e['dlq_scan_p50_s']:.2f} s |",
            ]
    lines += ["", "```json", json.dumps(r, indent=1), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=4000, help="synthetic people")
    parser.add_argument("--events", type=int, default=30_000, help="events, at most")
    parser.add_argument("--erase", type=int, default=20, help="people erased in part 3")
    parser.add_argument("--only", choices=["sealing", "worker"])
    args = parser.parse_args()
    import os
    import platform

    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": "./dev python bench/privacy.py " + " ".join(sys.argv[1:]),
        "commit": _commit(),
    }
    events = _events(args.people, args.events)
    with tempfile.TemporaryDirectory(prefix="bench-privacy-") as tmp:
        if args.only in (None, "sealing"):
            report["sealing"] = sealing(events, Path(tmp) / "sealing")
            print("sealing:", report["sealing"], flush=True)
        if args.only in (None, "worker"):
            report["worker_plain"] = worker_cost(events, Path(tmp) / "plain", False, 0)
            print("worker, sealing off:", report["worker_plain"], flush=True)
            report["worker_sealed"] = worker_cost(events, Path(tmp) / "sealed", True, args.erase)
            print("worker, sealing on:", report["worker_sealed"], flush=True)
    RESULTS.mkdir(exist_ok=True)
    if args.only is None:
        (RESULTS / "privacy.json").write_text(json.dumps(report, indent=1))
        (RESULTS / "privacy.md").write_text(markdown(report))
        print(f"wrote {RESULTS / 'privacy.md'}")
    else:
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
