"""The data-quality report (``unifier quality report``, the status page) and the review
list of duplicate candidates (``unifier quality duplicates``), read from what the
workers keep in Redis (``sinks.quality``) and from the dead-letter topic."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from config.settings import Settings
from profiles.profile import iso
from profiles.quality import BUCKETS
from serve.view import RedisProfileView
from sinks.quality import FRESH, counts_key, day_key, dup_key, dups_key, snap_key, today
from sinks.redisconn import ALL_TAGS, connect

DAY_S = 86400


def _ints(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


def _summed(hashes: list[dict[bytes, bytes]]) -> dict[str, int]:
    """The buckets' counts added up."""
    total: Counter[str] = Counter()
    for raw in hashes:
        total.update(_ints(raw))
    return dict(total)


def _dup_tokens(client: Any) -> list[str]:
    """Every match token held by two profiles or more, from each bucket's ``dups``."""
    pipe = client.pipeline(transaction=False)
    for t in ALL_TAGS:
        pipe.smembers(dups_key(t))
    return sorted({m.decode() for found in pipe.execute() for m in found})


def _reason(headers: dict[str, str]) -> str:
    """A dead letter's reason as the report groups it: its stage and the reason's first
    clause (the rest names the record)."""
    reason = headers.get("x-dlq-reason", "?").split(":", 1)[0].strip()[:60]
    return f"{headers.get('x-dlq-stage', '?')}: {reason}"


def dead_letters(settings: Settings, now_ms: int) -> tuple[Counter[str], Counter[str]]:
    """Dead letters by reason over the last day, and over the day before."""
    from serve.privacy import read_partition

    last, before = Counter[str](), Counter[str]()
    for msg in read_partition(settings, settings.topic_dlq, 0, since_ms=now_ms - 2 * DAY_S * 1000):
        headers = {k: (v or b"").decode(errors="replace") for k, v in msg.headers() or ()}
        at = int(headers.get("x-dlq-time-ms") or msg.timestamp()[1])
        if at >= now_ms - DAY_S * 1000:
            last[_reason(headers)] += 1
        elif at >= now_ms - 2 * DAY_S * 1000:
            before[_reason(headers)] += 1
    return last, before


def quality_report(settings: Settings, with_dead_letters: bool = True) -> dict[str, Any]:
    """The KPIs now, and their trend against the start of the day (UTC): completeness
    per trait, duplicate candidates, profiles per identifier count, merges, splits and
    refused links per day, freshness per source, dead letters by reason."""
    now = time.time()
    now_ms = int(now * 1000)
    date, yesterday = today(now), today(now - DAY_S)
    client = connect(settings.redis_url, settings.redis_cluster)
    try:
        pipe = client.pipeline(transaction=False)
        for t in ALL_TAGS:
            pipe.hgetall(counts_key(t))
        for t in ALL_TAGS:
            pipe.hgetall(snap_key(date, t))
        pipe.hgetall(FRESH)
        pipe.hgetall(day_key(date))
        pipe.hgetall(day_key(yesterday))
        found = pipe.execute()
        n = len(ALL_TAGS)
        counts, snap = _summed(found[:n]), _summed(found[n : 2 * n])
        fresh_raw, day_raw, yday_raw = found[2 * n :]
        sizes = client.pipeline(transaction=False)
        for k in _dup_tokens(client):
            sizes.scard(dup_key(k))
        dup_sizes = sizes.execute()
    finally:
        client.close()
    profiles, profiles_then = counts.get("n", 0), snap.get("n", 0)

    def share(c: dict[str, int], token: str, n: int) -> float:
        return round(c.get(token, 0) / n, 4) if n else 0.0

    traits = sorted(t[2:] for t in counts if t.startswith("t:") and counts[t] > 0)
    completeness = {
        t: {"share": share(counts, f"t:{t}", profiles),
            "change": round(share(counts, f"t:{t}", profiles)
                            - share(snap, f"t:{t}", profiles_then), 4)}
        for t in traits
    }  # fmt: skip
    day, yday = _ints(day_raw), _ints(yday_raw)
    report: dict[str, Any] = {
        "generated_at": iso(now_ms),
        "profiles": {"count": profiles, "change": profiles - profiles_then},
        "completeness": completeness,
        "identifier_buckets": {
            name: counts.get(f"b:{name}", 0) for name in [b for _, b in BUCKETS] + ["11+"]
        },
        "duplicates": {
            "groups": len(dup_sizes),
            "profiles": sum(dup_sizes),
            "change": len(dup_sizes) - snap.get("_dups", len(dup_sizes)),
        },
        "today": _day_counts(day),
        "yesterday": _day_counts(yday),
        "freshness": {
            k.decode(): {"newest": iso(int(v)), "age_s": round((now_ms - int(v)) / 1000, 1)}
            for k, v in sorted(fresh_raw.items())
        },
    }
    if with_dead_letters:
        last, before = dead_letters(settings, now_ms)
        report["dead_letters"] = {
            reason: {"last_day": last.get(reason, 0), "day_before": before.get(reason, 0)}
            for reason in sorted(set(last) | set(before))
        }
    return report


def _day_counts(day: dict[str, int]) -> dict[str, Any]:
    return {
        "merges": day.get("merges", 0),
        "splits": day.get("splits", 0),
        "refused": {
            k.split(":", 1)[1]: v for k, v in sorted(day.items()) if k.startswith("refused:")
        },
    }


def duplicates(settings: Settings, limit: int = 100) -> list[list[dict[str, Any]]]:
    """Groups of live profiles that look like one person (same name and postal code, or
    name and birth date) but were not merged: the review list, largest groups first."""
    client = connect(settings.redis_url, settings.redis_cluster)
    try:
        pipe = client.pipeline(transaction=False)
        for k in _dup_tokens(client):
            pipe.smembers(dup_key(k))
        members = [sorted(m.decode() for m in found) for found in pipe.execute()]
    finally:
        client.close()
    groups = sorted({tuple(m) for m in members if len(m) > 1}, key=lambda g: (-len(g), g))
    view = RedisProfileView.for_settings(settings)
    try:
        out = []
        for group in groups[:limit]:
            found = [view.get(pid) for pid in group]
            out.append([p for p in found if p is not None])
        return out
    finally:
        view.close()
