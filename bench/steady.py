"""Sections 7 to 9 of the benchmark (issue #16): people the worker already knows, the cost
of a touch against a profile's age, and one profile with 20,000 events.

7. **steady state** — after section 2 the worker knows every synthetic person; it gets
   a backlog of new events of those people (copies of their own events under new ids,
   so every identifier is one it holds) and the time until it has caught up is taken,
   with the CPU the worker, the broker and Redis spent meanwhile (``/proc``), per event.
   Section 2 is the cold, merge-heavy case: new people, identifiers met for the first
   time, merges.
8. **profile age** — the profile stage's work for one touch (decode the stored profile,
   fold the event, name the changed fields, make the view and explanation, encode it)
   on profiles with 10, 1,000, 10,000 and 20,000 events, in this process; and the
   stored record's size per event.
9. **a loyal customer** — 20,000 events of one person through the pipeline: the
   profile's ``event_count`` in Redis must be exactly 20,000, and its largest changelog
   record is reported against the producer's 1 MB request limit.
"""

from __future__ import annotations

import itertools
import json
import random
import time
import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.scale import cpu_seconds
from config.settings import Settings
from profiles.configured import identity_rules
from profiles.facts import EventFacts, Purchase
from profiles.graph.messages import Apply
from profiles.graph.node import ProfileNode
from profiles.graph.profile import handle_profile
from profiles.graph.state import ProfileState
from profiles.projection import changed_fields, signature_of, signature_with_view, view_of, why_of
from profiles.routing import partition_for
from profiles.touchpoint import Touchpoint
from schemas.wire import node_from, node_to
from streams.topology import topology

#: The producer's default maximum request size (Kafka's and librdkafka's).
REQUEST_LIMIT = 1_048_576


def _cpu(stack: Any) -> dict[str, float]:
    return {name: cpu_seconds(stack.procs[name].pid) for name in ("worker", "broker", "redis")}


def _send(settings: Settings, touchpoints: list[Touchpoint]) -> None:
    from producers.kafka import TouchpointProducer

    with TouchpointProducer(settings) as out:
        for tp in touchpoints:
            out.send(tp)


def _caught_up(settings: Settings) -> None:
    from bench.run import wait_caught_up

    wait_caught_up(settings)


def steady_state(
    settings: Settings, stack: Any, known: list[Touchpoint], events: int, seed: int = 11
) -> dict[str, Any]:
    """Section 7: a backlog of events of people the worker knows."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    backlog = [
        replace(rng.choice(known), event_id=str(uuid.UUID(int=rng.getrandbits(128))),
                occurred_at_ms=now_ms + i)
        for i in range(events)
    ]  # fmt: skip
    before = _cpu(stack)
    started = time.perf_counter()
    _send(settings, backlog)
    _caught_up(settings)
    took = time.perf_counter() - started
    after = _cpu(stack)
    cpu_us = {f"{name}_cpu_us_per_event": (after[name] - before[name]) / events * 1e6
              for name in before}  # fmt: skip
    return {
        "events": events,
        "seconds": took,
        "events_per_s": events / took,
        **cpu_us,
        "worker_cpu_share": (after["worker"] - before["worker"]) / took,
    }


def _event(i: int) -> EventFacts:
    sale = Purchase("EUR", Decimal("12.50"), ("shoes",)) if i % 7 == 0 else None
    return EventFacts(
        f"e-{i:08d}",
        "order_completed" if sale else "page_viewed",
        ("web", "pos", "crm")[i % 3],
        1_795_000_000_000 + i * 1000,
        (("city", f"c{i % 5}"), ("plan", "gold")),
        sale,
        (("email_marketing", i % 2 == 0),) if i % 11 == 0 else (),
    )


def profile_age(
    sizes: tuple[int, ...] = (10, 1_000, 10_000, 20_000), touches: int = 3_000
) -> dict[str, Any]:
    """Section 8: CPU per touch of the profile stage against the profile's history."""
    rules = identity_rules(Settings())
    _touch_cost(sizes[0], touches, rules)  # warms the caches up (times as text...)
    rows = [_touch_cost(size, touches, rules) for size in sizes]
    base = rows[0]["cpu_us_per_touch"]
    for row in rows:
        row["ratio_to_smallest"] = row["cpu_us_per_touch"] / base
    return {"rows": rows}


def _touch_cost(size: int, touches: int, rules: Any) -> dict[str, Any]:
    state = ProfileState(held={"email:loyal@bench.example"})
    for i in range(size):
        state.fold(_event(i))
    stored = node_to(ProfileNode(state=state))
    chunks = state.ledger.chunks
    fresh = itertools.count(size)
    started = time.process_time()
    for _ in range(touches):
        node = node_from(stored, chunks.__getitem__)
        before = signature_of(node)
        table = {"p_loyal": node}
        apply = Apply("p_loyal", ("email:loyal@bench.example",), _event(next(fresh)), False)
        handle_profile(table, apply, rules)
        view = view_of("p_loyal", node)
        changed_fields(before, signature_with_view(node, view))
        why_of(node)
        node_to(node)
    return {
        "events": size,
        "cpu_us_per_touch": (time.process_time() - started) / touches * 1e6,
        "record_bytes": len(stored),
        "record_bytes_per_event": len(stored) / size,
    }


def loyal_customer(settings: Settings, stack: Any, events: int = 20_000) -> dict[str, Any]:
    """Section 9: one person, ``events`` events, through the pipeline."""
    from serve.view import RedisProfileView

    email = f"loyal-{uuid.uuid4().hex[:8]}@bench.example"
    now_ms = int(time.time() * 1000)
    touchpoints = [
        Touchpoint(f"loyal-{i}", "page_viewed", "web", now_ms + i, {"email": email})
        for i in range(events)
    ]
    started = time.perf_counter()
    _send(settings, touchpoints)
    _caught_up(settings)
    took = time.perf_counter() - started
    view = RedisProfileView.for_settings(settings)
    try:
        profile = view.lookup("email", email) or {}
    finally:
        view.close()
    pid = profile.get("profile_id", "")
    return {
        "events": events,
        "seconds": took,
        "event_count": profile.get("computed", {}).get("event_count"),
        "exact": profile.get("computed", {}).get("event_count") == events,
        "largest_changelog_record_bytes": _largest_record(settings, pid),
        "request_limit_bytes": REQUEST_LIMIT,
    }


def _largest_record(settings: Settings, profile_id: str) -> int:
    """The largest record the profiles changelog holds for ``profile_id`` (its own key
    or one of its ledger chunks)."""
    topic = topology(settings).tables["profiles"].changelog
    part = partition_for(profile_id, settings.internal_partitions)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    keys = {json.dumps(profile_id).encode()}
    prefix = json.dumps(profile_id)[:-1].encode() + b"#"
    largest, idle = 0, time.monotonic()
    try:
        consumer.assign([TopicPartition(topic, part, OFFSET_BEGINNING)])
        while time.monotonic() - idle < 3.0:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            idle = time.monotonic()
            key = msg.key() or b""
            if key in keys or key.startswith(prefix):
                largest = max(largest, len(msg.value() or b""))
    finally:
        consumer.close()
    return largest
