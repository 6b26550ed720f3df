"""Segments on the real broker and Redis: definitions applied with the CLI, membership
kept by the worker as profiles change and as windows pass, one record per transition
on the segment-membership topic, the Redis sets and the CLI that reads them."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from config.settings import Settings
from profiles.segments import Transition
from schemas.records import membership_from
from tests.integration.test_ops import until
from tests.integration.test_pipeline import caught_up, exported
from tests.support.data import write_jsonl
from tests.support.kafka import consume_all
from unifier.cli import app
from unifier.ingest import ingest_file
from unifier.stack import EmbeddedStack

pytestmark = pytest.mark.integration

WHERE = {
    "us_recent_signups": 'profile.traits.country == "US" && '
    'timestamp(profile.computed.first_seen) > now - duration("4320h")',
    "high_value_lapsed": "profile.computed.orders >= 2 && "
    'timestamp(profile.computed.last_seen) < now - duration("1440h")',
    "active_now": 'timestamp(profile.computed.last_seen) > now - duration("30s")',
    "bad_dates": "timestamp(profile.traits.renewal_at) > now",
}


def toml_of(where: dict[str, str]) -> str:
    return "".join(
        f'[segments.{name}]\ndescription = "{name}"\nwhere = {orjson.dumps(text).decode()}\n\n'
        for name, text in where.items()
    )


def env_of(settings: Settings) -> dict[str, str]:
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        text = orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)
        env[f"UNIFIER_{name.upper()}"] = text
    return env


def cli(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env_of(settings))


def at(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def event(email: str, when: datetime, kind: str = "page_viewed", **traits: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": kind,
        "source": "web",
        "occurred_at": at(when),
        "identifiers": {"email": email},
        "traits": traits,
    }
    if kind == "order_completed":
        e["order"] = {"order_id": str(uuid.uuid4()), "total": 120, "currency": "USD"}
    return e


def memberships(settings: Settings) -> list[Transition]:
    records = consume_all(
        settings, settings.topic_segment_membership, settings.internal_partitions, idle_s=1.5
    )
    return [membership_from(m.value()) for m in records if m.value()]


def assert_one_record_per_transition(records: list[Transition]) -> dict[tuple[str, str], bool]:
    """Per (profile, segment): enters and exits alternate, numbered 1, 2, ... with no
    repeat; returns who is in what, replayed from the topic."""
    by: dict[tuple[str, str], list[Transition]] = defaultdict(list)
    for t in records:
        by[(t.profile_id, t.segment)].append(t)
    state = {}
    for key, moves in by.items():
        assert [t.seq for t in moves] == list(range(1, len(moves) + 1)), key
        assert [t.entered for t in moves] == [i % 2 == 0 for i in range(len(moves))], key
        state[key] = moves[-1].entered
    return state


def test_segments_follow_profiles_windows_and_definitions(
    topics: Settings, workers: EmbeddedStack, tmp_path: Path
) -> None:
    settings = topics
    toml = tmp_path / "segments.toml"
    toml.write_text(toml_of(WHERE))
    applied = cli(settings, "segments", "apply", str(toml))
    assert applied.exit_code == 0, applied.output
    now = datetime.now(UTC)
    events = [
        event("ana@x.com", now - timedelta(days=10), country="US"),
        event("ana@x.com", now - timedelta(seconds=1), renewal_at="next tuesday"),
        event("bo@x.com", now - timedelta(days=100), "order_completed", country="US"),
        event("bo@x.com", now - timedelta(days=99), "order_completed"),
        event("cy@x.com", now - timedelta(days=1), country="PT"),
    ]
    path = tmp_path / "events.jsonl"
    write_jsonl(path, events)
    workers.start_worker()
    ingest_file(path, settings)
    caught_up(settings)
    profiles = until(lambda: (p := exported(settings)) and len(p) == 3 and p, "three profiles")
    pid = {p["identifiers"]["email"][0]: p["profile_id"] for p in profiles.values()}
    ana, bo, cy = pid["ana@x.com"], pid["bo@x.com"], pid["cy@x.com"]

    # The view and the sets say who is in what.
    assert profiles[ana]["segments"] == ["active_now", "us_recent_signups"]
    assert profiles[bo]["segments"] == ["high_value_lapsed", "us_recent_signups"], profiles[bo]
    assert profiles[cy]["segments"] == []
    listed = cli(settings, "segments", "members", "us_recent_signups")
    assert listed.exit_code == 0
    assert sorted(listed.stdout.split()) == sorted([ana, bo])

    # The window passes: Ana leaves active_now with no event of hers in between.
    boundary = now - timedelta(seconds=1) + timedelta(seconds=30)
    deadline = boundary.timestamp() + 5

    def ana_left() -> bool:
        return any(
            t.profile_id == ana and t.segment == "active_now" and not t.entered
            for t in memberships(settings)
        )

    while time.time() < deadline and not ana_left():
        time.sleep(0.5)
    assert ana_left(), "Ana did not leave active_now within 5 s of the window's end"
    exit_record = next(t for t in memberships(settings) if t.profile_id == ana and not t.entered)
    assert exit_record.at_ms >= boundary.timestamp() * 1000
    assert exported(settings)[ana]["segments"] == ["us_recent_signups"]

    # An evaluation that fails for one profile is dead-lettered with the reason.
    dead = consume_all(settings, settings.topic_dlq, 1, idle_s=1.0)
    reasons = [dict(m.headers() or []).get("x-dlq-reason", b"").decode() for m in dead]
    assert any(r.startswith("segment bad_dates") and "Timestamp" in r for r in reasons), reasons

    # Why: the value of each comparison, now.
    why = cli(settings, "segments", "check", bo, "--json")
    assert why.exit_code == 0
    answers = {a["segment"]: a for a in orjson.loads(why.stdout)["segments"]}
    assert answers["high_value_lapsed"]["member"] is True
    assert [c["value"] for c in answers["high_value_lapsed"]["comparisons"]] == [True, True]

    # A bad definition is refused with its name and position; nothing is applied.
    toml.write_text(toml_of({**WHERE, "oops": 'profile.computed.orders > "2"'}))
    refused = cli(settings, "segments", "apply", str(toml))
    assert refused.exit_code == 1
    assert "segment 'oops' at 1:25: found no matching overload" in refused.output
    assert "nothing applied" in refused.output

    # Changed and removed definitions: backfilled over every profile, exits emitted.
    after = {**WHERE, "high_value_lapsed": WHERE["high_value_lapsed"].replace(">= 2", ">= 3")}
    del after["us_recent_signups"]
    toml.write_text(toml_of(after))
    changed = cli(settings, "segments", "apply", str(toml))
    assert changed.exit_code == 0, changed.output
    until(lambda: exported(settings)[bo]["segments"] == [], "Bo out of both segments")
    assert exported(settings)[ana]["segments"] == []
    listed = cli(settings, "segments", "list", "--json")
    names = sorted(orjson.loads(line)["name"] for line in listed.stdout.splitlines())
    assert names == ["active_now", "bad_dates", "high_value_lapsed"]

    # The topic, replayed, gives exactly what the view holds: no repeat, no missing exit.
    state = assert_one_record_per_transition(memberships(settings))
    held = {(p, s) for p, view in exported(settings).items() for s in view["segments"]}
    assert {k for k, member in state.items() if member} == held
