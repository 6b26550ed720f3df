"""Segments' costs (issue #18), measured in one run on this machine:

    ./dev python bench/segments.py                  # all three parts; writes bench/results/
    ./dev python bench/segments.py --profiles 20000 # a smaller backfill (a smoke run)

1. **evaluation per event** — in this process: synthetic journeys folded event by event
   into profiles, each touch doing what the profile stage does (the view, the changed
   fields) with and without the segment pass over 20 definitions (``SEGMENTS``); the
   difference is what segments add per event. No broker: only the CPU of the pass.
2. **enter/exit on the topic** — on the embedded stack, one worker: new customers sent
   at a steady rate, each entering a segment with its first event and leaving another
   that needs two events with its second; the time from the send of the event to the
   ``SegmentMembership`` record read from the topic, p50/p99.
3. **backfill** — a worker holding ``--profiles`` profiles gets a new definition that
   every profile matches: the time until every member's record is on the topic and the
   worker's CPU meanwhile; new events sent during the backfill are measured to the view
   (the worker keeps serving).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import percentile
from bench.scale import cpu_seconds
from config.settings import Settings
from producers.synthetic import generate_journeys
from profiles.configured import identifier_priorities, trait_rules
from profiles.facts import facts_of
from profiles.graph.node import ProfileNode
from profiles.projection import changed_fields, signature_of, signature_with_view, view_of
from profiles.segments import Catalog, Definition
from profiles.touchpoint import parse_json

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("email", "user_id", "phone", "loyalty_id", "anonymous_id")

#: 20 definitions of the kinds a marketing team writes: traits, computed traits, money,
#: identifiers, time windows, a segment of segments.
SEGMENTS = {
    "us_recent_signups": 'profile.traits.country == "US" && '
    'timestamp(profile.computed.first_seen) > now - duration("4320h")',
    "high_value_lapsed": "profile.computed.orders >= 2 && "
    'timestamp(profile.computed.last_seen) < now - duration("1440h")',
    "active_7d": 'timestamp(profile.computed.last_seen) > now - duration("168h")',
    "active_30d": 'timestamp(profile.computed.last_seen) > now - duration("720h")',
    "new_this_week": 'timestamp(profile.computed.first_seen) > now - duration("168h")',
    "buyers": "profile.computed.orders >= 1",
    "repeat_buyers": "profile.computed.orders >= 3",
    "big_spenders_usd": "has(profile.computed.lifetime_value.USD) && "
    "double(profile.computed.lifetime_value.USD) > 200.0",
    "canadians": 'profile.traits.country == "CA"',
    "europeans": 'profile.traits.country in ["GB", "DE", "FR", "PT", "ES"]',
    "anonymous": 'profile.computed.lifecycle_stage == "anonymous"',
    "known_no_order": 'profile.computed.lifecycle_stage == "known"',
    "multi_email": "has(profile.identifiers.email) && size(profile.identifiers.email) >= 2",
    "has_phone": "has(profile.identifiers.phone)",
    "loyalty_members": "has(profile.identifiers.loyalty_id)",
    "support_contacts": "has(profile.computed.events_by_type.support_ticket_opened)",
    "newsletter": "has(profile.computed.events_by_type.newsletter_signup)",
    "engaged": "profile.computed.event_count >= 10",
    "pos_shoppers": "has(profile.computed.events_by_source.pos)",
    "vip": '"repeat_buyers" in profile.segments && "active_30d" in profile.segments',
}


def evaluation_cost(people: int, seed: int = 7) -> dict[str, Any]:
    """Section 1: µs of CPU per event, the profile stage's own view work with and
    without the segment pass."""
    from streams.segments import segment_pass

    settings = Settings()
    rules = trait_rules(settings)
    priorities = identifier_priorities(settings)
    now = datetime.now(UTC)
    journeys = generate_journeys(
        people, seed, shuffle=False, start=now - timedelta(days=200), spread_days=180
    )
    tps = [parse_json(e, priorities) for e in journeys.events]
    catalog = Catalog.of(Definition(name, where, version=1) for name, where in SEGMENTS.items())
    now_ms = int(now.timestamp() * 1000)

    def run(with_segments: bool) -> tuple[float, list[float], int]:
        nodes: dict[str, ProfileNode] = {}
        per_touch: list[float] = []
        moves = 0
        started = time.process_time()
        for tp in tps:
            # a person's events mostly carry their email (the pipeline stitches the rest)
            kind = next((k for k in KEYS if k in tp.identifiers), min(tp.identifiers))
            key = f"{kind}:{tp.identifiers[kind]}"
            node = nodes.setdefault(key, ProfileNode())
            node.state.held.add(key)
            before = signature_of(node, rules)
            node.state.fold(facts_of(tp))
            # what the profile stage does for every touched profile anyway
            view = view_of(key, node, rules)
            after = signature_with_view(node, view, rules)
            changed_fields(before, after)
            if with_segments:
                t0 = time.perf_counter()
                out = segment_pass([(key, node)], {key: view}, {key: before}, rules, catalog,
                                   now_ms, None, {key: after})  # fmt: skip
                per_touch.append(time.perf_counter() - t0)
                moves += len(out.transitions)
        return time.process_time() - started, per_touch, moves

    run(True)  # warm-up: caches, imports
    base, _, _ = run(False)
    with_segments, per_touch, moves = run(True)
    events = len(tps)
    return {
        "events": events,
        "profiles": people,
        "segments": len(SEGMENTS),
        "base_us_per_event": base / events * 1e6,
        "with_segments_us_per_event": with_segments / events * 1e6,
        "added_us_per_event": (with_segments - base) / events * 1e6,
        "pass_p50_us": percentile(per_touch, 0.5) * 1e6,
        "pass_p99_us": percentile(per_touch, 0.99) * 1e6,
        "transitions": moves,
    }


def _stack(tmp: Path, partitions: int = 4) -> Any:
    from unifier.processes import free_port
    from unifier.stack import EmbeddedStack

    settings = Settings(
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        state_dir=tmp / "state",
        touchpoint_partitions=partitions,
        internal_partitions=partitions,
    )
    return EmbeddedStack(settings, tmp / "stack")


def _apply(settings: Settings, where: dict[str, str]) -> None:
    from unifier.segments import plan, publish, read_definitions

    wanted = [Definition(name, text) for name, text in where.items()]
    publish(settings, plan(wanted, read_definitions(settings)))


class MembershipReader:
    """Reads the membership topic in a thread: (receive time, record) for each."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.records: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._consumer = Consumer({
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        })  # fmt: skip
        topic = settings.topic_segment_membership
        self._consumer.assign(
            [
                TopicPartition(topic, p, OFFSET_BEGINNING)
                for p in range(settings.internal_partitions)
            ]
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from schemas.records import membership_from

        while not self._stop.is_set():
            for msg in self._consumer.consume(1000, 0.05):
                if msg.error() is None and msg.value():
                    self.records.append((time.time(), membership_from(msg.value())))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def _event(email: str, when: datetime, event_id: str | None = None) -> dict[str, Any]:
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "type": "page_viewed",
        "source": "web",
        "occurred_at": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "identifiers": {"email": email},
    }


def transition_latency(tmp: Path, rate: int, seconds: int) -> dict[str, Any]:
    """Section 2: send → record on the topic, for enters and exits."""
    from producers.sdk import Unifier

    stack = _stack(tmp)
    with stack:
        stack.start_broker()
        stack.start_redis()
        settings = stack.settings
        from unifier.topics import ensure_topics

        ensure_topics(settings)
        _apply(settings, {
            "seen": "profile.computed.event_count >= 1",
            "single_visit": "profile.computed.event_count == 1",
        })  # fmt: skip
        stack.start_worker()
        reader = MembershipReader(settings)
        sent: dict[tuple[str, int], float] = {}  # (email, nth event) -> send time
        try:
            with Unifier(settings) as sdk:
                n = rate * seconds
                started = time.monotonic()
                for i in range(n):
                    email = f"c{i}@bench.example"
                    for k in (1, 2):
                        sdk.send(_event(email, datetime.now(UTC)))
                        sdk.flush()
                        sent[(email, k)] = time.time()
                    delay = started + (i + 1) / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(reader.records) < 3 * n:
                time.sleep(0.2)
        finally:
            reader.close()
        view = {}
        from serve.view import RedisProfileView

        rv = RedisProfileView.for_settings(settings)
        for p in rv.scan():
            view[p["profile_id"]] = p["identifiers"]["email"][0]
        rv.close()
        enters, exits = [], []
        for received, t in reader.records:
            email = view.get(t.profile_id)
            if email is None:
                continue
            if t.segment == "seen" and t.entered:
                enters.append(received - sent[(email, 1)])
            elif t.segment == "single_visit" and not t.entered:
                exits.append(received - sent[(email, 2)])
    both = enters + exits
    return {
        "customers": n,
        "events_per_s": 2 * rate,
        "records": len(reader.records),
        "enter_p50_ms": percentile(enters, 0.5) * 1000,
        "enter_p99_ms": percentile(enters, 0.99) * 1000,
        "exit_p50_ms": percentile(exits, 0.5) * 1000,
        "exit_p99_ms": percentile(exits, 0.99) * 1000,
        "p99_ms": percentile(both, 0.99) * 1000,
    }


def backfill(tmp: Path, profiles: int, trickle: int) -> dict[str, Any]:
    """Section 3: a new definition over ``profiles`` existing profiles."""
    from producers.sdk import Unifier
    from serve.lag import LagProbe
    from serve.view import RedisProfileView
    from unifier.topics import ensure_topics

    stack = _stack(tmp)
    with stack:
        stack.start_broker()
        stack.start_redis()
        settings = stack.settings
        ensure_topics(settings)
        stack.start_worker()
        t = datetime.now(UTC) - timedelta(days=1)
        load_started = time.monotonic()
        with Unifier(settings) as sdk:
            for i in range(profiles):
                sdk.send(_event(f"p{i}@bench.example", t))
            sdk.flush()
        with LagProbe(settings) as probe:
            if not probe.wait(timeout=1800):
                raise RuntimeError("the worker did not take in the profiles")
        loaded_s = time.monotonic() - load_started
        reader = MembershipReader(settings)
        pid = stack.procs["worker"].pid
        cpu_before = cpu_seconds(pid)
        started = time.monotonic()
        _apply(settings, {"everyone": "profile.computed.event_count >= 1"})
        served: list[float] = []
        rv = RedisProfileView.for_settings(settings)
        try:
            with Unifier(settings) as sdk:
                i = 0
                while len(reader.records) < profiles and time.monotonic() - started < 1800:
                    email = f"new{i}@bench.example"
                    sdk.send(_event(email, datetime.now(UTC)))
                    sdk.flush()
                    sent_at = time.time()
                    i += 1
                    # the worker keeps serving: this event's profile reaches the view
                    while rv.lookup("email", email) is None and time.time() - sent_at < 60:
                        time.sleep(0.01)
                    served.append(time.time() - sent_at)
                    time.sleep(max(0.0, 1 / trickle - (time.time() - sent_at)))
            took = time.monotonic() - started
            cpu = cpu_seconds(pid) - cpu_before
        finally:
            reader.close()
            rv.close()
    members = len({t.profile_id for _, t in reader.records if t.segment == "everyone"})
    return {
        "profiles": profiles,
        "load_s": loaded_s,
        "backfill_s": took,
        "profiles_per_s": profiles / took,
        "worker_cpu_s": cpu,
        "cpu_us_per_profile": cpu / profiles * 1e6,
        "members": members,
        "served_during": len(served),
        "served_p50_ms": percentile(served, 0.5) * 1000,
        "served_p99_ms": percentile(served, 0.99) * 1000,
    }


def markdown(r: dict[str, Any]) -> str:
    e, lat, b = r["evaluation"], r.get("latency"), r.get("backfill")
    lines = [
        "# Segments: evaluation, transition latency, backfill (issue #18)",
        "",
        f"Measured {r['started']} on {r['machine']} at {r.get('commit', '?')} "
        f"with `{r['command']}`.",
        "",
        "| | measured | target |",
        "|---|---|---|",
        f"| CPU a touch costs the profile stage without segments "
        f"| {e['base_us_per_event']:.1f} µs/event | |",
        f"| ... with {e['segments']} segments defined "
        f"| {e['with_segments_us_per_event']:.1f} µs/event | |",
        f"| **added by segment evaluation** "
        f"| **{e['added_us_per_event']:.1f} µs/event** | ≤ 10 µs |",
        f"| the segment pass for one touched profile, p50 / p99 "
        f"| {e['pass_p50_us']:.0f} / {e['pass_p99_us']:.0f} µs | |",
    ]
    if lat:
        lines.append(
            f"| enter / exit on the topic after the event, p99 ({lat['events_per_s']} events/s) "
            f"| **{lat['enter_p99_ms']:.0f} / {lat['exit_p99_ms']:.0f} ms** "
            f"(p50 {lat['enter_p50_ms']:.0f} / {lat['exit_p50_ms']:.0f}) | ≤ 250 ms |"
        )
    if b:
        lines.append(
            f"| backfill of a new segment over {b['profiles']:,} profiles "
            f"| **{b['backfill_s']:.1f} s** ({b['profiles_per_s']:,.0f} profiles/s, worker CPU "
            f"{b['worker_cpu_s']:.1f} s = {b['cpu_us_per_profile']:.0f} µs/profile) | |"
        )
        lines.append(
            f"| new events during the backfill, send → view, p50 / p99 "
            f"| {b['served_p50_ms']:.0f} / {b['served_p99_ms']:.0f} ms "
            f"({b['served_during']} events) | served meanwhile |"
        )
    lines += ["", "```json", json.dumps(r, indent=1), "```", ""]
    return "\n".join(lines)


def _commit() -> str:
    import subprocess

    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return found.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=2000, help="section 1's synthetic people")
    parser.add_argument("--rate", type=int, default=100, help="section 2's new customers/s")
    parser.add_argument("--seconds", type=int, default=20, help="section 2's length")
    parser.add_argument("--profiles", type=int, default=100_000, help="section 3's profiles")
    parser.add_argument("--trickle", type=int, default=20, help="events/s during the backfill")
    parser.add_argument("--only", choices=["evaluation", "latency", "backfill"])
    args = parser.parse_args()
    import platform

    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "command": "./dev python bench/segments.py " + " ".join(sys.argv[1:]),
        "commit": _commit(),
    }
    if args.only in (None, "evaluation"):
        report["evaluation"] = evaluation_cost(args.people)
        print("evaluation:", report["evaluation"], flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-segments-") as tmp:
        if args.only in (None, "latency"):
            report["latency"] = transition_latency(Path(tmp) / "latency", args.rate, args.seconds)
            print("latency:", report["latency"], flush=True)
        if args.only in (None, "backfill"):
            report["backfill"] = backfill(Path(tmp) / "backfill", args.profiles, args.trickle)
            print("backfill:", report["backfill"], flush=True)
    RESULTS.mkdir(exist_ok=True)
    if args.only is None:
        (RESULTS / "segments.json").write_text(json.dumps(report, indent=1))
        (RESULTS / "segments.md").write_text(markdown(report))
        print(f"wrote {RESULTS / 'segments.md'}")
    else:
        print(markdown(report))


if __name__ == "__main__":
    main()
