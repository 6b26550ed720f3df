"""The data-quality KPIs on the real broker and Redis: on a data set with known
completeness and known unmerged duplicates, the report says exactly those numbers, and
follows the data as it changes (a duplicate linked, a merge, a dead letter)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from config.settings import Settings
from producers.kafka import TouchpointProducer
from profiles.touchpoint import Touchpoint
from schemas.codec import encode_batch
from tests.integration.test_pipeline import caught_up
from unifier.cli import app
from unifier.stack import EmbeddedStack

pytestmark = pytest.mark.integration

T0 = 1_795_000_000_000
N = 40
FIRST = ["Ana", "Bruno", "Chloé", "Dmitri", "Eve", "Farid", "Greta", "Hiro", "Ines", "Jonas"]


def send(settings: Settings, events: list[Touchpoint]) -> None:
    with TouchpointProducer(settings) as producer:
        producer.send_many(events)
    assert producer.report.ok


def cli(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=settings.env())


def report(settings: Settings) -> dict[str, Any]:
    done = cli(settings, "quality", "report", "--json")
    assert done.exit_code == 0, done.output
    return orjson.loads(done.stdout)  # type: ignore[no-any-return]


def customers() -> list[Touchpoint]:
    """40 customers, one sign-up each: names for 30, a postal code for 20, a birth date
    for 10. Five pairs share a name and postal code (but not an identifier), one pair a
    name and birth date: 6 duplicate groups of 2."""
    events = []
    for n in range(N):
        traits: dict[str, Any] = {}
        if n < 30:
            traits["first_name"] = FIRST[n % 10] + ("" if n < 10 else f"{n}")
            traits["last_name"] = f"Lastname{n}"
        if n < 20:
            traits["postal_code"] = f"9{n:04d}"
        if 20 <= n < 30:
            traits["birth_date"] = f"1980-01-{n - 19:02d}"
        if n in (11, 13, 15, 17, 19):  # the twin of n - 1: same name and postal code,
            traits["first_name"] = f"{FIRST[(n - 1) % 10]}{n - 1}".upper()
            traits["last_name"] = f"lastname{n - 1}"  # as typed by another clerk
            traits["postal_code"] = f"9{n - 1:04d} "
        if n == 21:  # the twin of 20 by birth date
            traits["first_name"], traits["last_name"] = FIRST[0] + "20", "Lastname20"
            traits["birth_date"] = "1980-01-01"
        events.append(Touchpoint(f"c{n}", "signed_up", "web", T0 + n,
                                 {"email": f"customer{n}@quality.example"}, traits))  # fmt: skip
    return events


def test_the_report_says_the_known_completeness_duplicates_and_changes(
    topics: Settings, workers: EmbeddedStack
) -> None:
    settings = topics
    workers.start_worker()
    send(settings, customers())
    caught_up(settings)
    r = report(settings)
    assert r["profiles"]["count"] == N
    completeness = {t: c["share"] for t, c in r["completeness"].items()}
    assert completeness == {"first_name": 0.75, "last_name": 0.75, "postal_code": 0.5,
                            "birth_date": 0.25}  # fmt: skip
    assert r["duplicates"] == {"groups": 6, "profiles": 12, "change": 6}
    assert r["identifier_buckets"]["1"] == N
    assert r["freshness"]["web"]["newest"].startswith("2026-11-18")  # T0 + 39 ms
    assert r["today"]["merges"] == 0

    listed = cli(settings, "quality", "duplicates", "--json")
    assert listed.exit_code == 0, listed.output
    groups = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert len(groups) == 6 and all(len(g) == 2 for g in groups)
    emails = {frozenset(e for p in g for e in p["identifiers"]["email"]) for g in groups}
    assert frozenset({"customer10@quality.example", "customer11@quality.example"}) in emails
    assert frozenset({"customer20@quality.example", "customer21@quality.example"}) in emails

    # Customer 10 and their twin turn out to be one person (an event names both emails,
    # with a phone): a merge, one duplicate group fewer, a profile fewer. A record with no
    # usable identifier is a dead letter.
    send(settings, [Touchpoint("link", "profile_updated", "crm", T0 + 10**6,
                               {"email": "customer10@quality.example", "phone": "+14155550110"}),
                    Touchpoint("link2", "profile_updated", "crm", T0 + 10**6 + 1,
                               {"phone": "+14155550110",
                                "crm_id": "crm-10"})])  # fmt: skip
    caught_up(settings)
    send(
        settings,
        [
            Touchpoint(
                "link3",
                "profile_updated",
                "crm",
                T0 + 10**6 + 2,
                {"crm_id": "crm-10", "email": "customer11@quality.example"},
            )
        ],
    )
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    bad = Touchpoint("bad", "x", "pos", T0, {"phone": "12"})
    producer.produce(settings.topic_touchpoints, encode_batch([bad]))
    assert producer.flush(10) == 0
    caught_up(settings)
    r = report(settings)
    assert r["profiles"]["count"] == N - 1
    assert r["duplicates"]["groups"] == 5 and r["duplicates"]["profiles"] == 10
    assert r["today"]["merges"] == 2  # the CRM id's profile, then the twin
    assert r["identifier_buckets"]["1"] == N - 2 and r["identifier_buckets"]["3-5"] == 1
    assert r["freshness"]["crm"]["age_s"] < r["freshness"]["web"]["age_s"]
    assert sum(n["last_day"] for n in r["dead_letters"].values()) == 1
    text = cli(settings, "quality", "report")
    assert text.exit_code == 0 and "duplicate candidates: 5 groups" in text.output
