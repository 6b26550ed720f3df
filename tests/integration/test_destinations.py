"""Two-way sync on the real broker, Redis and database (SQLite and a private
PostgreSQL server): profiles mirrored into a "CRM" table, the app's edits taken back
through the pipeline, no echo, no write loop, consent and erasure enforced."""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from config.settings import Settings
from producers.kafka import TouchpointProducer
from profiles.identifiers import DEFAULT_IDENTIFIER_PRIORITIES
from profiles.touchpoint import parse_json
from serve.privacy import find_subject, request_erasure
from streams.topology import topology
from tests.integration.test_pipeline import caught_up, exported
from tests.support.kafka import consume_all
from unifier.cli import app
from unifier.stack import EmbeddedStack
from unifier.sync import Syncer, destinations_of

pytestmark = pytest.mark.integration

PEOPLE = 1000
WITHOUT_CONSENT = 20


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server: ``UNIFIER_TEST_POSTGRES_DSN`` if set, else a private one
    from the machine's server binaries (``.ci/run`` installs them; elsewhere the
    PostgreSQL cases are skipped, saying why, unless ``UNIFIER_REQUIRE_POSTGRES=1``)."""
    from unifier.postgres import PostgresMissing, local_postgres, server_bin

    given = os.environ.get("UNIFIER_TEST_POSTGRES_DSN")
    if given:
        yield given
        return
    try:
        server_bin()
    except PostgresMissing as exc:
        if os.environ.get("UNIFIER_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(str(exc))
    with local_postgres(tmp_path_factory.mktemp("postgres")) as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
def crm(request: pytest.FixtureRequest, topics: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Settings whose destinations.toml has one two-way "crm" table of that kind (on
    PostgreSQL, a table of its own per test)."""
    kind = request.param
    table = "customers"
    if kind == "postgres":
        url = request.getfixturevalue("postgres_dsn")
        table = f"customers_{topics.app_id.replace('-', '_')}"
    else:
        url = str(tmp_path / "crm.db")
    path = tmp_path / "destinations.toml"
    path.write_text(
        f"""
[destinations.crm]
kind = "{kind}"
url = "{url}"
table = "{table}"
mode = "mirror"
purpose = "crm"
row_identifier = "crm_id"
lookback_s = 3

[destinations.crm.fields]
email = "identifiers.email"
phone = "identifiers.phone"
first_name = "traits.first_name"
last_name = {{ from = "traits.last_name", owner = "crm" }}
email_opt_in = "consent.email_marketing"
"""
    )
    yield topics.model_copy(update={"destinations_path": path})


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def person(i: int) -> dict[str, str]:
    return {"email": f"person{i}@crm-test.example", "phone": f"+1415555{i:04d}"}


def send(settings: Settings, docs: list[dict[str, Any]]) -> None:
    producer = TouchpointProducer(settings)
    for doc in docs:
        producer.send(parse_json(doc, DEFAULT_IDENTIFIER_PRIORITIES))
    assert producer.close().ok


def signups(n: int, t: float) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        consent = {"email_marketing": True}
        if i < n - WITHOUT_CONSENT:
            consent["crm"] = True
        out.append(
            {"event_id": f"signup-{i}", "type": "signed_up", "source": "web",
             "occurred_at": _iso(t), "identifiers": person(i),
             "traits": {"first_name": f"First{i}", "last_name": f"Last{i}"}, "consent": consent}
        )  # fmt: skip
    return out


class Pump:
    """Drives one sync process in the test's thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.syncer = Syncer(settings, destinations_of(settings, "default"), group="default")
        self.table = self.syncer.tables[0]

    def drain(self, quiet_s: float = 2.5, timeout: float = 120.0) -> bool:
        """Step until nothing came in or went out for ``quiet_s``; whether anything did."""
        start = last = time.monotonic()
        moved = False
        while time.monotonic() - last < quiet_s:
            before = self.syncer.stats.edits_sent
            if self.syncer.step() or self.syncer.stats.edits_sent != before:
                last = time.monotonic()
                moved = True
            assert time.monotonic() - start < timeout, "the sync did not settle"
        return moved

    def settle(self) -> None:
        """Until the pipeline has caught up and the sync has nothing left to do."""
        for _ in range(10):
            self.drain()
            caught_up(self.settings)
            if not self.drain():
                return
        raise AssertionError("sync and pipeline kept moving")

    def wait_rows(self, n: int, timeout: float = 120.0) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.syncer.step()
            rows = self.table.rows()
            if len(rows) >= n:
                return rows
        raise AssertionError(f"{len(self.table.rows())} rows, wanted {n}")

    def close(self) -> None:
        self.syncer.close()


def app_sql(settings: Settings) -> Callable[[str, tuple[Any, ...]], None]:
    """Run SQL as the app does: its own connection, autocommit."""
    dest = destinations_of(settings, "default")[0]
    if dest.kind == "postgres":
        import psycopg

        conn = psycopg.connect(dest.url, autocommit=True)

        def pg(sql: str, params: tuple[Any, ...] = ()) -> None:
            conn.execute(sql.replace("?", "%s").replace("TABLE", dest.table), params)

        return pg
    lite = sqlite3.connect(dest.url, isolation_level=None, timeout=30)

    def sq(sql: str, params: tuple[Any, ...] = ()) -> None:
        lite.execute(sql.replace("TABLE", dest.table), params)

    return sq


def agree(rows: dict[str, dict[str, Any]], profiles: dict[str, dict[str, Any]]) -> list[str]:
    """Every way a row and its profile differ (under the ownership rules: the app's
    last_name is what the profile took from it, since nothing else changes it)."""
    wrong = []
    for row_id, row in rows.items():
        p = profiles.get(row["unifier_profile_id"])
        if p is None:
            wrong.append(f"{row_id}: no profile {row['unifier_profile_id']}")
            continue
        ids, traits = p["identifiers"], p["traits"]
        consent = p["computed"]["consent"].get("email_marketing", {}).get("granted")
        if row["email"] not in ids.get("email", []):
            wrong.append(f"{row_id}: email {row['email']} not among {ids.get('email')}")
        phone = row["phone"]
        digits = "".join(ch for ch in phone or "" if ch.isdigit())[-10:]
        if phone is not None and f"+1{digits}" not in ids.get("phone", []):
            wrong.append(f"{row_id}: phone {phone} not among {ids.get('phone')}")
        for column in ("first_name", "last_name"):
            if row[column] != traits.get(column):
                wrong.append(f"{row_id}: {column} {row[column]!r} vs {traits.get(column)!r}")
        if row["email_opt_in"] != consent:
            wrong.append(f"{row_id}: email_opt_in {row['email_opt_in']} vs {consent}")
    return wrong


def odd_writes(writes: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Writes that are not one web edit's one field (what a failure shows)."""
    seen: dict[tuple[Any, Any], list[tuple[Any, ...]]] = {}
    for w in writes:
        seen.setdefault((w[0], w[1]), []).append(w)
    return [w for ws in seen.values() for w in ws if len(ws) > 1 or not str(w[2]).startswith('"W')]


def test_two_way_sync_mirrors_takes_edits_back_without_echo_and_converges(
    crm: Settings, workers: EmbeddedStack
) -> None:
    settings = crm
    workers.start_worker()
    t0 = time.time() - 3600
    send(settings, signups(PEOPLE, t0))
    pump = Pump(settings)
    try:
        # 1. Mirrored: every consenting profile has its row, with its values.
        rows = pump.wait_rows(PEOPLE - WITHOUT_CONSENT)
        pump.settle()
        rows = pump.table.rows()
        profiles = exported(settings)
        assert len(rows) == PEOPLE - WITHOUT_CONSENT
        consenting = {
            pid for pid, p in profiles.items()
            if p["computed"]["consent"].get("crm", {}).get("granted")
        }  # fmt: skip
        assert {r["unifier_profile_id"] for r in rows.values()} == consenting
        assert agree(rows, profiles) == []
        writes_mirrored = pump.table.writes_logged()

        # 2. The app edits 100 rows: 50 phones, 30 first names, 20 consent flags.
        sql = app_sql(settings)
        rng = random.Random(20)
        ids = sorted(rows)
        edited = rng.sample(ids, 100)
        for n, row_id in enumerate(edited):
            if n < 50:
                sql("UPDATE TABLE SET phone = ? WHERE id = ?", (f"(628) 555-{n:04d}", row_id))
            elif n < 80:
                sql("UPDATE TABLE SET first_name = ? WHERE id = ?", (f"Edited{n}", row_id))
            else:
                sql("UPDATE TABLE SET email_opt_in = ? WHERE id = ?", (False, row_id))
        pump.settle()
        assert pump.syncer.stats.edits_sent == 100
        profiles = exported(settings)
        rows = pump.table.rows()
        by_row = {r: profiles[rows[r]["unifier_profile_id"]] for r in edited}
        assert all(f"+1628555{n:04d}" in by_row[r]["identifiers"]["phone"]
                   for n, r in enumerate(edited[:50]))  # fmt: skip
        assert [by_row[r]["traits"]["first_name"] for r in edited[50:80]] == [
            f"Edited{n}" for n in range(50, 80)
        ]
        assert all(
            by_row[r]["computed"]["consent"]["email_marketing"]["granted"] is False
            for r in edited[80:]
        )
        # Zero echo writes: the edits came back as profile updates and nothing was
        # written back (the recorded writes did not grow).
        assert pump.table.writes_logged() == writes_mirrored, pump.table.last_writes(
            pump.table.writes_logged() - writes_mirrored
        )
        assert agree(rows, profiles) == []

        # 3. Ten rounds of concurrent edits on both sides, then they agree.
        web_edits = 0
        before_rounds = pump.table.writes_logged()
        index = {r: int(rows[r]["email"].split("@")[0].removeprefix("person")) for r in ids}
        for round_ in range(10):
            picked = rng.sample(ids, 15)
            for n, row_id in enumerate(picked):
                # the first five: the first name, which the web changes too (a conflict)
                column = "first_name" if n < 5 else rng.choice(["last_name", "phone"])
                value = f"A{round_}x{n}"
                if column == "phone":
                    value = f"(415) 777-{round_:02d}{n:02d}"
                sql(f"UPDATE TABLE SET {column} = ? WHERE id = ?", (value, row_id))
            docs = []
            others = rng.sample(range(PEOPLE - WITHOUT_CONSENT), 10)
            for n, i in enumerate([index[r] for r in picked[:5]] + others):
                docs.append(
                    {"event_id": f"web-{round_}-{n}", "type": "profile_updated",
                     "source": "web", "occurred_at": _iso(time.time()),
                     "identifiers": {"email": person(i)["email"]},
                     "traits": {"first_name": f"W{round_}x{n}"}}
                )  # fmt: skip
            web_edits += len(docs)
            send(settings, docs)
            pump.drain(quiet_s=0.5)
        pump.settle()
        rows, profiles = pump.table.rows(), exported(settings)
        assert agree(rows, profiles) == []
        # No write loop: what we wrote is bounded by the pipeline side's edits (one
        # field each), and once settled nothing more is written.
        written = pump.table.writes_logged() - before_rounds
        print(f"rounds: {web_edits} web edits, 150 app edits, {written} fields written")
        assert 0 < written <= web_edits, odd_writes(pump.table.last_writes(written))
        settled = pump.table.writes_logged()
        pump.drain(quiet_s=4.0)
        assert pump.table.writes_logged() == settled
    finally:
        pump.close()


def test_consent_and_erasure_remove_rows(crm: Settings, workers: EmbeddedStack) -> None:
    settings = crm
    workers.start_worker()
    t0 = time.time() - 3600
    send(settings, signups(30, t0))
    pump = Pump(settings)
    try:
        rows = pump.wait_rows(30 - WITHOUT_CONSENT)
        pump.settle()
        assert len(pump.table.rows()) == 10
        # person 0 withdraws consent for the CRM: mirror mode deletes the row we made
        send(settings, [
            {"event_id": "withdraw-0", "type": "consent_changed", "source": "web",
             "occurred_at": _iso(time.time()), "identifiers": person(0),
             "consent": {"crm": False}}
        ])  # fmt: skip
        # person 1 is erased: the row goes, and what we recorded of it
        subject = find_subject(settings, ("email", person(1)["email"]), None)
        assert subject.profile_id is not None
        request_erasure(settings, subject, reason="test")
        pump.settle()
        rows = pump.table.rows()
        emails = {r["email"] for r in rows.values()}
        assert person(0)["email"] not in emails
        assert person(1)["email"] not in emails
        assert len(rows) == 8
        # nothing recorded of them stays beside the table either
        assert (
            pump.table.recorded(person(0)["email"]) == pump.table.recorded(person(1)["email"]) == 0
        )
        assert pump.table.recorded(person(2)["email"]) > 0
        # the ones that never consented never had a row
        assert not {person(i)["email"] for i in range(10, 30)} & emails
    finally:
        pump.close()
    # what an operator sees: the destination's counts, and the group's lag
    said = CliRunner().invoke(app, ["sync", "status", "--json"], env=settings.env())
    assert said.exit_code == 0, said.output
    status = orjson.loads(said.stdout.splitlines()[0])
    assert (status["name"], status["rows"], status["created"], status["lag"]) == ("crm", 8, 8, 0)
    said = CliRunner().invoke(app, ["lag", "--json"], env=settings.env())
    rows = [orjson.loads(line) for line in said.stdout.splitlines()]
    assert {r["stage"] for r in rows} >= {"route", "sync:default"}
    assert sum(r["lag"] for r in rows if r["stage"] == "sync:default") == 0


def test_a_new_destination_replays_from_a_point_in_time(
    topics: Settings, workers: EmbeddedStack, tmp_path: Path
) -> None:
    """`unifier sync run --since T`: the changes recorded at or after T, no older ones."""
    path = tmp_path / "destinations.toml"
    path.write_text(
        f'[destinations.late]\nkind = "sqlite"\nurl = "{tmp_path / "late.db"}"\n'
        'inbound = false\n[destinations.late.fields]\nemail = "identifiers.email"\n'
    )
    settings = topics.model_copy(update={"destinations_path": path})
    workers.start_worker()
    send(settings, signups(10, time.time() - 600)[:5])
    caught_up(settings)
    time.sleep(1.5)
    since = time.time()
    send(settings, signups(10, time.time() - 600)[5:])
    caught_up(settings)
    syncer = Syncer(settings, destinations_of(settings, "default"), group="default",
                    since_ms=int(since * 1000))  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while syncer.stats.records < 5 and time.monotonic() < deadline:
            syncer.step()
        for _ in range(10):
            syncer.step()
        got = {r["unifier_profile_id"] for r in syncer.tables[0].rows().values()}
    finally:
        syncer.close()
    # exactly the profiles with a change recorded at or after T (the worker may publish
    # an earlier profile again, e.g. when its lifecycle moves: that is a change too)
    parts = topology(settings).profile_updates.partitions
    records = consume_all(settings, settings.topic_profile_updates, parts)
    since_ms = int(since * 1000)
    assert got == {(m.key() or b"").decode() for m in records if m.timestamp()[1] >= since_ms}
    assert len(got) >= 5 and got != {(m.key() or b"").decode() for m in records}
