"""Identity corrections' costs (issue #21), measured in one run on this machine:

    ./dev python bench/corrections.py                  # writes bench/results/corrections.md
    ./dev python bench/corrections.py --events 2000    # a smaller run (a smoke run)

1. **the split itself** — in this process, no broker: a profile of N events (one
   customer, and a second person merged into it through a store tablet: a fifth of the
   events) split by ``handle_profile`` as the worker does it — the ledger read back,
   the parts' states made again from their events; repeated, p50 and p95.
2. **keeping identifiers with events** — what a split needs costs every event: one
   ``fold`` with the event's identifiers against one without, µs per event.
3. **end to end** — the embedded stack, one worker: the same profile sent and caught
   up, then ``unifier profiles split`` (as ``serve.identity.request_split``) until the
   view shows both parts (``wait_split``).
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
from bench.segments import _commit
from config.settings import Settings
from profiles.facts import facts_of
from profiles.graph.messages import Split
from profiles.graph.node import ProfileNode
from profiles.graph.profile import handle_profile
from profiles.graph.state import ProfileState
from profiles.identifiers import DEFAULT_IDENTIFIER_PRIORITIES
from profiles.rules import IdentityRules
from profiles.touchpoint import Touchpoint

RESULTS = Path(__file__).resolve().parent / "results"
T0 = 1_795_000_000_000
RULES = IdentityRules.build(DEFAULT_IDENTIFIER_PRIORITIES, limits={}, max_claimants=None)


def journey(n: int) -> list[Touchpoint]:
    """Ana: email, phone, three devices; Bo: a card and a phone, a fifth of the events;
    the shop's tablet seen with both (the wrong merge)."""
    out = []
    for i in range(n):
        if i % 5 == 4:
            ids = {"loyalty_id": "LC-BO", "phone": "+16285550100"}
            traits = {"first_name": "Bo"}
        else:
            ids = {"email": "ana@bench.example", "anonymous_id": f"ana-dev-{i % 3}"}
            traits = {"first_name": "Ana"} if i % 50 == 0 else {}
        if i in (7, 9):
            ids = {**ids, "anonymous_id": "shop-tablet"}
        out.append(Touchpoint(f"e{i}", "page_viewed", "web", T0 + i * 1000, ids, traits))
    return out


def _keys(tp: Touchpoint) -> tuple[str, ...]:
    ranked = RULES.by_priority(tp.identifiers.items())
    return tuple(f"{t}:{v}" for t, v in ranked)


def merged_node(events: list[Touchpoint]) -> ProfileNode:
    """The wrongly merged profile, as one node (every event folded in, every identifier
    held): what the worker holds before the split."""
    state = ProfileState()
    for tp in events:
        state.fold(facts_of(tp), _keys(tp))
        state.held.update(_keys(tp))
    state.ledger.seal()
    return ProfileNode(state=state)


def split_cost(events: list[Touchpoint], repeat: int) -> dict[str, Any]:
    """Section 1."""
    times = []
    parts = []
    for n in range(repeat):
        node = merged_node(events)
        table = {"p_bench": node}
        started = time.perf_counter()
        out = handle_profile(table, Split("p_bench", f"s{n}", ("loyalty_id:LC-BO",)), RULES)
        times.append(time.perf_counter() - started)
        parts = [o for o in out if o[0] == "profile"]
    return {
        "events": len(events),
        "runs": repeat,
        "p50_ms": statistics.median(times) * 1000,
        "p95_ms": percentile(times, 95) * 1000,
        "parts": len(parts) + 1,
    }


def fold_cost(events: list[Touchpoint]) -> dict[str, Any]:
    """Section 2."""
    facts = [(facts_of(tp), _keys(tp)) for tp in events]
    out = {}
    for name, with_ids in (("without identifiers", False), ("with identifiers", True)):
        best = float("inf")
        for _ in range(5):
            state = ProfileState()
            started = time.perf_counter()
            for f, ids in facts:
                state.fold(f, ids if with_ids else ())
            best = min(best, time.perf_counter() - started)
        out[name] = best / len(facts) * 1e6
    return out


def end_to_end(events: list[Touchpoint], tmp: Path) -> dict[str, Any]:
    """Section 3."""
    from producers.kafka import TouchpointProducer
    from serve.identity import request_split, wait_split
    from serve.lag import LagProbe
    from serve.view import RedisProfileView
    from unifier.processes import free_port
    from unifier.stack import EmbeddedStack
    from unifier.topics import ensure_topics

    settings = Settings(
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        state_dir=tmp / "state",
        touchpoint_partitions=4,
        internal_partitions=4,
        identity_limits={},
    )
    with EmbeddedStack(settings, tmp / "stack") as stack:
        stack.start_broker()
        stack.start_redis()
        ensure_topics(settings)
        stack.start_worker()
        # The wrong merge first (the tablet's two visits), then the history grows on the
        # merged profile — as it would in a shop, and so no merge has to offer a whole
        # history at once.
        for chunk in (events[:20], events[20:]):
            with TouchpointProducer(settings) as out:
                out.send_many(chunk)
            with LagProbe(settings) as probe:
                if not probe.wait(timeout=1800):
                    raise RuntimeError("the worker did not catch up")
        view = RedisProfileView.for_settings(settings)
        try:
            merged = view.lookup("email", "ana@bench.example")
        finally:
            view.close()
        assert merged is not None and merged["computed"]["event_count"] == len(events)
        started = time.monotonic()
        asked = request_split(settings, merged["profile_id"], [("loyalty_id", "LC-BO")])
        done = wait_split(settings, asked, 300)
        seconds = time.monotonic() - started
    if done is None:
        raise RuntimeError("the split was not done within 300 s")
    [part] = done["parts"]
    return {
        "events": len(events),
        "split_s": seconds,
        "kept_events": done["profile"]["computed"]["event_count"],
        "part_events": part["computed"]["event_count"],
    }


def markdown(r: dict[str, Any]) -> str:
    s, f, e = r["split"], r["fold"], r.get("end_to_end")
    lines = [
        "# Identity corrections: the cost of a split (issue #21)",
        "",
        f"`{r['command']}` — {r['started']}, commit {r['commit']}, {r['machine']}.",
        "",
        f"A profile of **{s['events']:,} events** (a fifth of them another person's, merged "
        "in through a shop's tablet), split by detaching that person's loyalty card.",
        "",
        "| what | result |",
        "|---|---|",
        f"| split in the worker (`handle_profile`, {s['runs']} runs): p50 | "
        f"**{s['p50_ms']:.0f} ms** |",
        f"| … p95 | {s['p95_ms']:.0f} ms |",
        f"| parts | {s['parts']} |",
        f"| `fold` per event, identifiers kept with it | {f['with identifiers']:.1f} µs |",
        f"| `fold` per event, without | {f['without identifiers']:.1f} µs |",
    ]
    if e is not None:
        lines += [
            f"| end to end: `unifier profiles split` until the view shows both parts | "
            f"**{e['split_s']:.2f} s** ({e['kept_events']:,} + {e['part_events']:,} events) |",
        ]
    lines += [
        "",
        "The split reads the profile's whole ledger and folds each event again into its "
        "part: its cost grows with the profile's history — once, when an operator asks; "
        "nothing on the hot path does. What the hot path pays for it is the identifiers "
        "kept with each event in the ledger (the two `fold` rows).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="events of the profile")
    parser.add_argument("--repeat", type=int, default=7, help="runs of the split in-process")
    parser.add_argument("--no-stack", action="store_true", help="skip the end-to-end part")
    args = parser.parse_args()
    import os
    import platform

    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": "./dev python bench/corrections.py " + " ".join(sys.argv[1:]),
        "commit": _commit(),
    }
    events = journey(args.events)
    report["split"] = split_cost(events, args.repeat)
    print("split:", report["split"], flush=True)
    report["fold"] = fold_cost(events)
    print("fold:", report["fold"], flush=True)
    if not args.no_stack:
        with tempfile.TemporaryDirectory(prefix="bench-corrections-") as tmp:
            report["end_to_end"] = end_to_end(events, Path(tmp))
        print("end to end:", report["end_to_end"], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "corrections.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "corrections.md").write_text(markdown(report))
    print(f"wrote {RESULTS / 'corrections.md'}")


if __name__ == "__main__":
    main()
