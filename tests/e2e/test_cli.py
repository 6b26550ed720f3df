"""The CLI as a user drives it: stack up, topics, ingest, lag, export, stack down."""

import json
import re
import signal
import socket
import time
from pathlib import Path

import orjson
import pytest

from config.settings import Settings
from producers.synthetic import generate
from tests.e2e.conftest import Cli, ports_of, stack_pids
from tests.support.data import assert_same_profiles, comparable, reference_views, write_jsonl
from unifier.topics import topic_specs

pytestmark = pytest.mark.e2e


def test_the_documented_session(cli: Cli, tmp_path: Path) -> None:
    # Limits off: the clusters then do not depend on arrival order and equal the reference.
    cli.env["UNIFIER_IDENTITY_LIMITS"] = "{}"
    before = stack_pids(cli.cwd, ports_of(cli))
    up = cli("stack", "up")
    assert up.returncode == 0, up.stderr
    assert "stack up: broker 127.0.0.1:" in up.stderr
    # broker, Redis, the archiver and a worker: found as ours
    assert len(stack_pids(cli.cwd, ports_of(cli)) - before) == 4
    state = json.loads((tmp_path / "state" / "stack" / "stack.json").read_text())
    assert set(state) == {"broker", "redis", "archiver", "worker"}

    again = cli("topics", "create")
    assert again.returncode == 0
    assert again.stdout.count("exists") == len(topic_specs(Settings())) == 15

    events = generate(people=200, seed=3)[:1000]
    path = tmp_path / "events.jsonl"
    broken = write_jsonl(path, events, broken_every=100)
    ingest = cli("ingest", str(path))
    assert ingest.returncode == 1, "rejected lines must make the exit code non-zero"
    for line, reason in broken.items():
        assert f"{path}:{line}: rejected: " in ingest.stderr
        assert reason in ingest.stderr
    assert f"ingested {len(events)} events from {len(events) + len(broken)} lines" in ingest.stderr
    rejects = [
        orjson.loads(x) for x in (tmp_path / "events.jsonl.rejects.jsonl").read_bytes().splitlines()
    ]
    assert [r["line"] for r in rejects] == sorted(broken)

    lag = cli("lag", "--wait", "--timeout", "120", "--json")
    assert lag.returncode == 0, lag.stderr
    every = [json.loads(x) for x in lag.stdout.splitlines()]
    # The archiver's rows (stage "archive", once it has committed) come on top.
    assert {r["stage"] for r in every} - {"archive"} == {"route", "identity", "profile"}
    rows = [r for r in every if r["stage"] != "archive"]
    assert all(r["lag"] == 0 for r in rows)
    assert sum(r["end"] for r in rows if r["stage"] == "route") > 0
    assert all(r["lag_seconds"] == 0 for r in rows)
    # --watch redraws the table in place until Ctrl-C, which ends it cleanly.
    watch = cli.start("lag", "--watch", "--interval", "0.3", FORCE_COLOR="1", COLUMNS="120")
    try:
        assert watch.stdout is not None
        seen = ""
        while seen.count("total lag: 0 records") < 2:  # two refreshes
            line = watch.stdout.readline()
            assert line, f"--watch ended early: {cli.stderr_of(watch)}"
            seen += line
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=30) == 0
    finally:
        watch.kill()

    export = cli("profiles", "export")
    assert export.returncode == 0, export.stderr
    profiles = [json.loads(x) for x in export.stdout.splitlines()]
    settings = Settings(identity_limits={})
    want = reference_views(events, settings)
    assert_same_profiles(comparable(profiles), want)
    for p in profiles:
        assert set(p) == {"profile_id", "identifiers", "traits", "computed", "segments", "version",
                          "freshness"}  # fmt: skip
    assert f"exported {len(want)} profiles" in export.stderr

    # Ask for an email that exactly one profile holds.
    holders: dict[str, list[str]] = {}
    for p in profiles:
        for e in p["identifiers"].get("email", []):
            holders.setdefault(e, []).append(p["profile_id"])
    email = next(e for e, pids in holders.items() if len(pids) == 1)
    someone = next(p for p in profiles if p["profile_id"] == holders[email][0])
    got = cli("profiles", "get", "--email", f"  {email.upper()} ")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["profile_id"] == someone["profile_id"]
    missing = cli("profiles", "get", "--email", "nobody@example.com")
    assert missing.returncode == 1
    assert "no profile with that email" in missing.stderr

    # Redis is a cache: wiped and rebuilt from the output topics, it answers the same.
    rebuilt = cli("view", "rebuild", "--clear")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"{len(want)} profiles" in rebuilt.stderr
    again = cli("profiles", "export")
    assert sorted(again.stdout.splitlines()) == sorted(export.stdout.splitlines())

    status = cli("stack", "status")
    assert status.returncode == 0, status.stdout

    down = cli("stack", "down")
    assert down.returncode == 0
    assert "stopped worker, archiver, broker, redis" in down.stderr
    assert stack_pids(cli.cwd, ports_of(cli)) - before == set(), "stack down left processes behind"
    assert cli("stack", "status").returncode == 1


def test_stack_up_names_a_taken_port(cli: Cli) -> None:
    host, port = cli.env["UNIFIER_REDIS_URL"].removeprefix("redis://").split("/")[0].split(":")
    with socket.socket() as blocker:
        blocker.bind((host, int(port)))
        blocker.listen()
        result = cli("stack", "up", "--no-worker")
    assert result.returncode == 2
    assert f"{host}:{port} is already in use" in result.stderr
    assert "UNIFIER_REDIS_URL" in result.stderr


def test_ingest_without_topics_says_what_to_do(cli: Cli, tmp_path: Path) -> None:
    assert cli("stack", "up", "--no-worker").returncode == 0
    # A fresh topic name that `stack up` did not create.
    cli.env["UNIFIER_TOPIC_TOUCHPOINTS"] = "never-created"
    path = tmp_path / "one.jsonl"
    write_jsonl(path, generate(people=1, seed=4)[:1])
    result = cli("ingest", str(path))
    assert result.returncode == 2
    assert (
        "topic 'never-created' does not exist; run `unifier topics create` first" in result.stderr
    )


def test_commands_fail_clearly_when_nothing_runs(cli: Cli) -> None:
    result = cli("profiles", "export")
    assert result.returncode == 2
    assert "could not read Redis" in result.stderr
    bad = cli("profiles", "get", "--phone", "12")
    assert bad.returncode == 2 and "phone: not a valid phone number" in bad.stderr
    rebuild = cli("view", "rebuild")
    assert rebuild.returncode == 2 and "could not write Redis at redis://" in rebuild.stderr


def test_bad_configuration_is_named(cli: Cli) -> None:
    cli.env["UNIFIER_INTERNAL_PARTITIONS"] = "zero"
    result = cli("topics", "create")
    assert result.returncode == 2
    assert "invalid configuration: UNIFIER_INTERNAL_PARTITIONS" in result.stderr


def test_demo_prints_profiles_and_leaves_nothing_behind(cli: Cli) -> None:
    result = cli("demo", "--people", "20", "--show", "2")
    assert result.returncode == 0, result.stderr
    assert '"profile_id"' in result.stdout
    assert "stack stopped" in result.stderr
    # The demo picks its own ports and prints them.
    up = re.search(r"broker 127\.0\.0\.1:(\d+), redis redis://127\.0\.0\.1:(\d+)", result.stderr)
    assert up is not None, result.stderr
    assert stack_pids(cli.cwd, up.groups()) == set()


def test_stack_down_and_up_brings_the_customer_base_back(cli: Cli, tmp_path: Path) -> None:
    """The embedded broker keeps its log in memory; the archive brings it back: after
    `stack down` and `stack up`, the log holds the customer base again (a view rebuilt
    from the output topics alone equals the export from before), new events join the
    old profiles, and replaying the archive once more changes nothing."""
    cli.env["UNIFIER_IDENTITY_LIMITS"] = "{}"
    events = generate(people=60, seed=8)
    first, later = events[:-40], events[-40:]
    path, more = tmp_path / "first.jsonl", tmp_path / "later.jsonl"
    write_jsonl(path, first)
    write_jsonl(more, later)
    assert cli("stack", "up").returncode == 0
    assert cli("ingest", str(path)).returncode == 0
    assert cli("lag", "--wait", "--timeout", "120").returncode == 0
    before = sorted(cli("profiles", "export").stdout.splitlines())
    # The archiver's lag is in `unifier lag` (stage "archive"), and falls to 0.
    for _ in range(100):  # bounded, not timed
        rows = [orjson.loads(line) for line in cli("lag", "--json").stdout.splitlines()]
        archive = [r for r in rows if r["stage"] == "archive"]
        if archive and not any(r["lag"] for r in archive):
            break
        time.sleep(0.2)
    assert len(archive) == 3 and {r["group"] for r in archive} == {"profile-unifier-archive"}
    assert sum(r["end"] for r in archive) > 0 and not any(r["lag"] for r in archive)

    assert cli("stack", "down").returncode == 0
    verified = cli("archive", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"{len(first):,} touchpoints: all as the manifest says" in verified.stderr

    up = cli("stack", "up")
    assert up.returncode == 0, up.stderr
    assert f"restored {len(first):,} touchpoints" in up.stderr
    assert cli("lag", "--wait", "--timeout", "120").returncode == 0
    rebuilt = cli("view", "rebuild", "--clear")  # from profile-updates: the log's truth
    assert rebuilt.returncode == 0, rebuilt.stderr
    # (Where in the log each view was made is new: the log was replayed.)
    assert _unplaced(cli("profiles", "export").stdout) == _unplaced("\n".join(before))

    assert cli("ingest", str(more)).returncode == 0
    assert cli("replay", "--from-archive", str(tmp_path / "state" / "archive")).returncode == 0
    assert cli("lag", "--wait", "--timeout", "120").returncode == 0
    profiles = [orjson.loads(line) for line in cli("profiles", "export").stdout.splitlines()]
    assert_same_profiles(
        comparable(profiles), reference_views(events, Settings(identity_limits={}))
    )
    assert sum(p["computed"]["event_count"] for p in profiles) == len(events)


def _unplaced(export: str) -> list[str]:
    """Exported profiles, sorted, without ``freshness.position``."""
    docs = [json.loads(line) for line in export.splitlines() if line]
    for doc in docs:
        doc.get("freshness", {}).pop("position", None)
    return sorted(json.dumps(d, sort_keys=True) for d in docs)
