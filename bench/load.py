"""Section 3 of the benchmark: latency under a steady offered load.

A paced producer offers synthetic touchpoints at a fixed rate, the way websites and
POS systems send them: small records, one every 10 ms. Among them, a second producer
sends probes, each its own record:

* a **new-profile probe** is an event with an identifier nobody has (a fresh
  ``user_id``); it is visible once Redis holds that identifier's key (the key is
  written by the same script as the profile, see sinks.redis_view);
* a **merge probe** is three events: one with a fresh ``anonymous_id``, one with a
  fresh ``email``, and, once both are visible as two profiles, one with both. The
  merge is visible once a lookup by the email returns a profile that also holds the
  anonymous id.

A thread polls Redis every 2 ms for every probe still pending (one pipeline per
poll) and records the time from just before the probe was produced to the poll that
saw it. Probes still invisible when the run ends are counted as such, never dropped.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from config.settings import Settings
from producers.kafka import TouchpointProducer
from profiles.configured import identifier_priorities
from profiles.sealed import token_of
from profiles.touchpoint import Touchpoint, parse_json
from serve.view import index_key
from sinks.keys import sealer_for
from sinks.redis_view import profile_key

POLL_S = 0.002
TICK_S = 0.01


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": percentile(ms, 0.50),
        "p95_ms": percentile(ms, 0.95),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms) if ms else float("nan"),
    }


@dataclass
class _Merge:
    anon: str
    email: str
    sent_pair: float
    sent_link: float | None = None


@dataclass
class Probes:
    """Pending probes and what the watcher saw."""

    settings: Settings
    new_seconds: list[float] = field(default_factory=list)
    merge_seconds: list[float] = field(default_factory=list)
    _new: dict[str, float] = field(default_factory=dict)  # identifier key -> sent at
    _merges: list[_Merge] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _sending: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        s = self.settings
        self._out = TouchpointProducer(s.model_copy(update={"producer_batch_events": 1}))
        self._redis = redis.Redis.from_url(s.redis_url)
        self._priorities = identifier_priorities(s)
        self._sealer = sealer_for(s)  # index keys name identifiers by their tokens
        self._thread = threading.Thread(target=self._watch, name="probe-watch", daemon=True)
        self._thread.start()

    # -- sending ---------------------------------------------------------------------
    def _send(self, identifiers: dict[str, str]) -> float:
        doc = {
            "event_id": uuid.uuid4().hex,
            "type": "probe",
            "source": "web",
            "occurred_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "identifiers": identifiers,
        }
        tp: Touchpoint = parse_json(doc, self._priorities)
        with self._sending:  # the watcher sends merge links from its own thread
            sent = time.perf_counter()
            self._out.send(tp)
            self._out.flush()
        return sent

    def new_profile(self) -> None:
        value = f"bench-probe-{uuid.uuid4().hex[:12]}"
        sent = self._send({"user_id": value})
        with self._lock:
            self._new[index_key("user_id", value, self._sealer)] = sent

    def merge(self) -> None:
        tag = uuid.uuid4().hex[:12]
        anon, email = f"anon-probe-{tag}", f"probe-{tag}@bench.example"
        sent = self._send({"anonymous_id": anon})
        self._send({"email": email})
        with self._lock:
            self._merges.append(_Merge(anon, email, sent))

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._new) + len(self._merges)

    # -- watching --------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                new = list(self._new)
                merges = list(self._merges)
            if new or merges:
                with contextlib.suppress(redis.RedisError):
                    self._poll(new, merges)
            time.sleep(POLL_S)

    def _poll(self, new: list[str], merges: list[_Merge]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for key in new:
            pipe.exists(key)
        for m in merges:
            pipe.get(index_key("anonymous_id", m.anon, self._sealer))
            pipe.get(index_key("email", m.email, self._sealer))
        answers = pipe.execute()
        now = time.perf_counter()
        seen = [key for key, found in zip(new, answers, strict=False) if found]
        pairs = answers[len(new) :]
        links: list[_Merge] = []
        done: list[_Merge] = []
        for i, m in enumerate(merges):
            anon_pid, email_pid = pairs[2 * i], pairs[2 * i + 1]
            if m.sent_link is None:
                if anon_pid and email_pid:
                    links.append(m)  # both visible: now link them
            elif email_pid and self._holds(email_pid.decode(), m.anon):
                self.merge_seconds.append(now - m.sent_link)
                done.append(m)
        with self._lock:
            for key in seen:
                self.new_seconds.append(now - self._new.pop(key))
            for m in done:
                self._merges.remove(m)
        for m in links:
            m.sent_link = self._send({"anonymous_id": m.anon, "email": m.email})

    def _holds(self, profile_id: str, anon: str) -> bool:
        """Does the profile an identifier points at (redirects followed) hold ``anon``?"""
        for _ in range(16):
            raw = self._redis.hget(profile_key(profile_id), "json")
            if not raw:
                return False
            view = orjson.loads(raw)
            if "merged_into" not in view:
                held = view.get("identifiers", {}).get("anonymous_id", [])
                if self._sealer is None:
                    return anon in held
                token = self._sealer.token("anonymous_id", anon)
                return any(token_of(v) == token for v in held)  # sealed: by token
            profile_id = view["merged_into"]
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._out.close()
        self._redis.close()


@contextlib.contextmanager
def probes(settings: Settings) -> Iterator[Probes]:
    p = Probes(settings)
    try:
        yield p
    finally:
        p.close()


def offered_load(
    settings: Settings,
    touchpoints: list[Touchpoint],
    rate: float,
    seconds: float,
    *,
    probes_per_s: float = 10.0,
    merges_per_s: float = 2.0,
    drain_s: float = 120.0,
) -> dict[str, Any]:
    """Offer ``rate`` events/s for ``seconds``, with probes; then wait up to ``drain_s``
    for the probes still pending. Returns what was offered and the latencies."""
    per_tick = max(1, round(rate * TICK_S))
    load = TouchpointProducer(settings.model_copy(update={"producer_batch_events": per_tick}))
    total = min(len(touchpoints), int(rate * seconds))
    sent = 0
    with probes(settings) as p:
        started = time.perf_counter()
        next_probe = next_merge = started
        while sent < total:
            now = time.perf_counter()
            due = min(total, int((now - started) * rate))
            while sent < due:
                load.send(touchpoints[sent])
                sent += 1
            if now >= next_probe:
                p.new_profile()
                next_probe += 1 / probes_per_s
            if now >= next_merge:
                p.merge()
                next_merge += 1 / merges_per_s
            time.sleep(max(0.0, started + (sent + per_tick) / rate - time.perf_counter()))
        load.close()
        offered_for = time.perf_counter() - started
        deadline = time.perf_counter() + drain_s
        while p.pending and time.perf_counter() < deadline:
            time.sleep(0.05)
        sent_probes = len(p.new_seconds) + len(p._new)
        sent_merges = len(p.merge_seconds) + len(p._merges)
        return {
            "offered_events_per_s": rate,
            "offered_events": sent,
            "offered_seconds": offered_for,
            "achieved_offer_per_s": sent / offered_for,
            "new_profile": {
                "probes": sent_probes,
                "invisible_after_drain": sent_probes - len(p.new_seconds),
                **summary_ms(p.new_seconds),
            },
            "merge": {
                "probes": sent_merges,
                "invisible_after_drain": sent_merges - len(p.merge_seconds),
                **summary_ms(p.merge_seconds),
            },
            "drain_s": drain_s,
        }
