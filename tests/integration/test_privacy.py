"""Privacy on the real broker and Redis: an access export, an erasure that leaves no
byte of the person anywhere a user could look — and keeps holding after a replay from
offset 0 into a new worker with empty tables, and a view rebuilt from scratch —,
suppression of their later events, and a returning customer after ``unsuppress``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from config.settings import Settings
from producers.kafka import TouchpointProducer
from profiles.identifiers import DEFAULT_IDENTIFIER_PRIORITIES
from profiles.privacy import Sealer
from profiles.touchpoint import Touchpoint, parse_json
from schemas.codec import encode_batch
from schemas.records import update_from
from serve.privacy import read_ledger, restore_ledger
from sinks.keys import sealer_for
from sinks.redisconn import connect
from streams.topology import topology
from tests.integration.test_pipeline import caught_up, exported
from tests.support.http import get_text, metric
from tests.support.kafka import consume_all
from tests.support.segments import apply
from tests.support.view import dump
from unifier.cli import app
from unifier.processes import free_port, wait_until
from unifier.rebuild import rebuild
from unifier.stack import EmbeddedStack
from unifier.topics import ensure_topics

pytestmark = pytest.mark.integration

T0 = 1_795_000_000_000
ZOE = {
    "email": "zoe.quarrina@privacy-test.example",
    "phone": "+14155550187",
    "user_id": "zq-user-7731",
    "anonymous_id": "anon-zq-0451",
    "loyalty_id": "LZQ-99817",
    "crm_id": "crm-zq-40033",
    "first_name": "Zoequarrina",
    "last_name": "Vantablackson",
}
#: What must not be found anywhere (case-insensitive): every value, as sent too.
NEEDLES = [v.lower() for v in ZOE.values()] + ["(415) 555-0187", "4155550187"]


def zoe_events() -> list[Touchpoint]:
    """A journey from every source, with two merges in it: a visitor who signs in, a
    POS customer (loyalty card and phone) whom support links to the same email."""

    def tp(n: int, kind: str, source: str, ids: dict[str, str], **more: Any) -> Touchpoint:
        doc = {"event_id": f"zoe-{n}", "type": kind, "source": source,
               "occurred_at": _iso(T0 + n * 60_000), "identifiers": ids, **more}  # fmt: skip
        return parse_json(doc, DEFAULT_IDENTIFIER_PRIORITIES)

    name = {"first_name": ZOE["first_name"].upper(), "last_name": ZOE["last_name"]}
    sale = {"transaction_id": "R-1", "store_id": "S1", "currency": "USD", "total": "30"}
    full_name = f"{ZOE['first_name']} {ZOE['last_name']}"
    return [
        tp(1, "page_viewed", "web", {"anonymous_id": ZOE["anonymous_id"]},
           context={"ip": "203.0.113.77"}),
        tp(2, "signed_in", "web", {"anonymous_id": ZOE["anonymous_id"], "user_id": ZOE["user_id"],
           "email": ZOE["email"]}, traits=name, consent={"email_marketing": True}),
        tp(3, "pos_transaction", "pos",
           {"loyalty_id": ZOE["loyalty_id"], "phone": "(415) 555-0187"}, pos=sale),
        tp(4, "email_opened", "email", {"email": ZOE["email"]}, properties={"campaign": "fall"}),
        tp(5, "ticket_opened", "support", {"email": ZOE["email"], "phone": ZOE["phone"]},
           traits={"name": full_name}),
        tp(6, "contact_updated", "crm", {"crm_id": ZOE["crm_id"], "email": ZOE["email"]},
           consent={"email_marketing": False}),
    ]  # fmt: skip


def _iso(ms: int) -> str:
    from profiles.profile import iso

    return iso(ms)


def others() -> list[Touchpoint]:
    return [
        Touchpoint(f"bob-{n}", "page_viewed", "web", T0 + n, {"email": "bob@other.example",
                   "anonymous_id": f"anon-bob-{n % 2}"}, {"first_name": "Bob"})
        for n in range(4)
    ]  # fmt: skip


def send(settings: Settings, events: list[Touchpoint]) -> None:
    with TouchpointProducer(settings) as producer:
        producer.send_many(events)
    assert producer.report.ok


def dead_letter_naming_zoe(settings: Settings, sealer: Sealer) -> None:
    """An event a sealing producer sent that the worker cannot use (no usable
    identifier), with her email and name in it: a dead letter that names her."""
    traits = {"email": ZOE["email"], "first_name": ZOE["first_name"]}
    [bad] = sealer.seal([Touchpoint("zoe-dlq", "signed_in", "web", T0, {"phone": "12"}, traits)])
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    producer.produce(settings.topic_touchpoints, encode_batch([bad]))
    assert producer.flush(10) == 0


def cli(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=settings.env())


def found_in(blob: bytes | str, needles: list[str] = NEEDLES) -> list[str]:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    text = text.lower()
    return [n for n in needles if n in text]


def everything_readable(
    settings: Settings, sealer: Sealer, needles: list[str] = NEEDLES
) -> dict[str, list[str]]:
    """Where anything of hers can be read: every Redis key and value, and every record
    of every topic as stored and decoded and opened with the keys that still exist."""
    from serve import dlq

    hits: dict[str, list[str]] = {}
    for key, value in dump(settings.redis_url).items():
        if got := found_in(key.encode() + orjson.dumps(value, default=repr), needles):
            hits[f"redis {key}"] = got
    topo = topology(settings)
    for spec in topo.topics():
        for msg in consume_all(settings, spec.name, spec.partitions, idle_s=1.0):
            raw = (msg.key() or b"") + b" " + (msg.value() or b"")
            opened = _decoded(spec.name, settings, msg.value(), sealer)
            if got := found_in(raw, needles) + found_in(opened, needles):
                hits[f"{spec.name}[{msg.partition()}]@{msg.offset()}"] = got
    for letter in dlq.read(settings):
        if got := found_in(orjson.dumps(letter.to_json(unmasked=True)), needles):
            hits[f"dlq show --unmasked @{letter.offset}"] = got
    return hits


def _decoded(topic: str, settings: Settings, value: bytes | None, sealer: Sealer) -> str:
    """A record decoded as its readers decode it, every sealed value in it opened."""
    from profiles.privacy import open_document
    from profiles.touchpoint import to_json_form
    from schemas.codec import decode_touchpoints
    from schemas.records import update_from
    from schemas.wire import decode_messages, message_to, node_from

    if value is None:
        return ""
    try:
        if topic == settings.topic_touchpoints:
            doc: Any = [to_json_form(sealer.open_touchpoint(t)) for t in decode_touchpoints(value)]
        elif topic == settings.topic_profile_updates:
            doc = update_from(b"k", value).view()
        elif topic in (settings.topic_identity, settings.topic_profile_ops):
            doc = [message_to(m) for m in decode_messages(value)]
        elif value.startswith(b"\x00n"):  # a profile node (the profiles table's changelog)
            node = node_from(value, lambda n: b"")
            doc = {"held": sorted(node.state.held), "traits": repr(node.state.totals.traits),
                   "tail": node.state.ledger.tail.decode()}  # fmt: skip
        else:
            doc = orjson.loads(value)
    except Exception:  # not of that form: its bytes were searched as they are
        return ""
    return orjson.dumps(open_document(doc, sealer.open_many), default=repr).decode()


def fresh_worker_settings(settings: Settings, tag: str) -> Settings:
    """A new worker group with empty tables reading the same input from offset 0."""
    renamed = {
        name: f"{getattr(settings, name)}-{tag}"
        for name in ("topic_identity", "topic_profile_ops", "topic_profile_updates",
                     "topic_profile_merges", "topic_segment_membership")
    }  # fmt: skip
    return settings.model_copy(update={"app_id": f"{settings.app_id}-{tag}", **renamed})


def test_an_erased_person_is_nowhere_and_stays_erased_through_a_replay(
    topics: Settings, workers: EmbeddedStack, tmp_path: Path
) -> None:
    settings = topics
    port = free_port()
    workers.settings = settings.model_copy(update={"worker_metrics_port": port})
    apply(settings, {"buyers": "profile.computed.orders >= 1"})
    workers.start_worker()
    sealer = sealer_for(settings)
    assert sealer is not None
    send(settings, zoe_events() + others())
    dead_letter_naming_zoe(settings, sealer)
    caught_up(settings)
    [zoe] = [p for p in exported(settings).values() if ZOE["email"] in p["identifiers"]["email"]]
    assert zoe["computed"]["merged_from"] and "buyers" in zoe["segments"]
    assert zoe["traits"]["first_name"] == ZOE["first_name"]

    # An access request first: everything held, from the tables and the topics.
    path = tmp_path / "zoe.json"
    export = cli(settings, "privacy", "export", "--email", ZOE["email"].upper(), "-o", str(path))
    assert export.exit_code == 0, export.output
    doc = orjson.loads(path.read_bytes())
    assert [e["event_id"] for e in doc["events"]] == [f"zoe-{n}" for n in range(1, 7)]
    sources = ["web", "web", "pos", "email", "support", "crm"]
    assert [e["source"] for e in doc["events"]] == sources
    held = {i["identifier"] for i in doc["identifiers"]}
    assert {f"email:{ZOE['email']}", f"phone:{ZOE['phone']}"} <= held
    assert [(c["purpose"], c["granted"]) for c in doc["consent_history"]] == [
        ("email_marketing", True), ("email_marketing", False)]  # fmt: skip
    assert len(doc["merges"]) >= 2 and doc["segment_history"][0]["segment"] == "buyers"
    assert doc["events"][1]["traits"]["first_name"] == ZOE["first_name"]
    before = everything_readable(settings, sealer)
    assert before, "her data is readable before the erasure (the check can fail)"

    # The erasure: by her phone, as written on a form.
    erase = cli(settings, "privacy", "erase", "--phone", "(415) 555-0187", "--reason", "T-1")
    assert erase.exit_code == 0, erase.output
    receipt = erase.stdout.strip().splitlines()[0]
    status = cli(settings, "privacy", "status", receipt, "--json")
    assert status.exit_code == 0, status.output
    steps = orjson.loads(status.stdout)["steps"]
    assert steps["profiles erased (tables, view, profile-updates, segments)"]["count"] >= 3
    assert steps["dead letters shredded"]["count"] == 1
    caught_up(settings)
    assert everything_readable(settings, sealer_for(settings)) == {}  # type: ignore[arg-type]
    assert cli(settings, "profiles", "get", "--email", ZOE["email"]).exit_code == 1
    why = cli(settings, "profiles", "why", zoe["profile_id"])
    assert why.exit_code == 1 and not found_in(why.output)
    gone = cli(settings, "privacy", "export", "--email", ZOE["email"], "-o", str(path) + ".2")
    assert gone.exit_code == 1
    members = cli(settings, "segments", "members", "buyers", "--json")
    assert members.exit_code == 0 and not found_in(members.stdout)
    assert zoe["profile_id"] not in members.stdout
    # Bob is untouched.
    [bob] = [p for p in exported(settings).values() if "bob@other.example" in
             p["identifiers"].get("email", [])]  # fmt: skip
    assert bob["computed"]["event_count"] == 4
    # No line of the worker's log names her.
    assert not found_in((workers.dir / "worker.log").read_bytes())

    # Her later events: dropped and counted (suppressed by default).
    send(settings, [Touchpoint("zoe-7", "page_viewed", "web", T0 + 10**6, {"email": ZOE["email"]},
                               {"first_name": ZOE["first_name"]})])  # fmt: skip
    caught_up(settings)
    metrics = get_text(f"http://127.0.0.1:{port}/metrics").splitlines()
    assert metric(metrics, "unifier_privacy_dropped_total", why="suppressed") == 1
    assert cli(settings, "profiles", "get", "--email", ZOE["email"]).exit_code == 1

    # The view rebuilt from the output topics: neither she nor a redirect to her.
    rebuild(settings, clear_first=True, progress=False)
    held = dump(settings.redis_url)
    assert not [p for p in [zoe["profile_id"], *zoe["computed"]["merged_from"]]
                if f"unifier:profile:{p}" in held]  # fmt: skip
    assert everything_readable(settings, sealer_for(settings)) == {}  # type: ignore[arg-type]

    # The embedded broker keeps its log in memory: a lost ledger topic is published
    # again from the key store's copy (what `stack up` does before it replays).
    lost = settings.model_copy(update={"topic_erasures": f"{settings.topic_erasures}-lost"})
    ensure_topics(lost)
    ledger = read_ledger(settings)
    assert ledger and restore_ledger(lost) == len(ledger) and read_ledger(lost) == ledger
    assert all(entry.suppress for entry in ledger.values())

    # A replay from offset 0 into a new worker with empty tables, then the view rebuilt
    # from scratch: nothing of hers comes back, everyone else does.
    workers.stop_all()
    again = fresh_worker_settings(settings, "replay")
    ensure_topics(again)
    workers.settings = again.model_copy(update={"worker_metrics_port": port})
    workers.start_worker()
    caught_up(again)
    rebuild(again, clear_first=True, progress=False)
    assert everything_readable(again, sealer_for(again)) == {}  # type: ignore[arg-type]
    assert any("bob@other.example" in p["identifiers"].get("email", [])
               for p in exported(again).values())  # fmt: skip

    # She comes back: unsuppressed, a new event founds a new profile.
    def suppressed() -> float | None:
        lines = get_text(f"http://127.0.0.1:{port}/metrics").splitlines()
        return metric(lines, "unifier_privacy_ledger_identifiers", state="suppressed")

    held_back = suppressed()
    assert held_back  # her identifiers (and the worker has read them)
    assert cli(again, "privacy", "unsuppress", "--email", ZOE["email"]).exit_code == 0
    # The worker has read it (an event sent before would still be dropped).
    wait_until(lambda: suppressed() == held_back - 1, 30, "the worker to read the unsuppression")
    send(again, [Touchpoint("zoe-8", "signed_in", "web", T0 + 10**7, {"email": ZOE["email"]})])
    caught_up(again)
    back = cli(again, "profiles", "get", "--email", ZOE["email"])
    assert back.exit_code == 0, back.output
    assert orjson.loads(back.stdout)["computed"]["event_count"] == 1
    audit = cli(again, "audit", "--since", "2020-01-01T00:00:00Z", "--json")
    records = [orjson.loads(line) for line in audit.stdout.splitlines()]
    actions = [r["action"] for r in records if r["actor"] != "worker"]  # (not the merges)
    assert actions[:3] == ["export", "erase", "unsuppress"] and not found_in(audit.stdout)


def test_a_profile_that_withdraws_consent_leaves_the_output_that_serves_that_purpose(
    settings: Settings, workers: EmbeddedStack
) -> None:
    settings = settings.model_copy(
        update={"purpose_topics": {"email_marketing": f"{settings.app_id}.email-marketing"}}
    )
    ensure_topics(settings)
    workers.settings = settings
    workers.start_worker()

    def consent(n: int, who: str, granted: bool | None) -> Touchpoint:
        given = {} if granted is None else {"email_marketing": granted}
        return Touchpoint(f"{who}-{n}", "preferences", "web", T0 + n * 1000,
                          {"email": f"{who}@consent.example"}, consent=given)  # fmt: skip

    send(settings, [consent(1, "ann", True), consent(1, "ben", True), consent(1, "cyd", None)])
    caught_up(settings)
    send(settings, [consent(2, "ann", False)])
    caught_up(settings)
    topic = settings.purpose_topics["email_marketing"]
    records = consume_all(settings, topic, settings.internal_partitions, idle_s=1.5)
    latest: dict[bytes, bytes | None] = {}
    for msg in records:
        latest[msg.key() or b""] = msg.value()
    views = {p["identifiers"]["email"][0]: p["profile_id"] for p in exported(settings).values()}
    ann, ben, cyd = (views[f"{w}@consent.example"].encode() for w in ("ann", "ben", "cyd"))
    # Ben consented: there. Ann withdrew: removed (a tombstone). Cyd never answered: never sent.
    assert latest[ben] is not None and latest[ann] is None
    assert cyd not in {msg.key() for msg in records if msg.value() is not None}
    # Every profile it ever carried had consented when it was sent.
    for msg in records:
        if msg.value() is not None:
            view = update_from(msg.key() or b"", msg.value()).view()
            assert view["computed"]["consent"]["email_marketing"]["granted"] is True


def test_an_erasure_finds_the_person_in_the_tables_when_the_view_does_not_show_them(
    topics: Settings, workers: EmbeddedStack
) -> None:
    """Redis lost (the view is being written again): the request goes to the identity
    partition of the identifier asked for, and the workers erase whoever holds it."""

    from serve.privacy import read_receipt

    settings = topics
    workers.start_worker()
    fay = {"email": "fay.orrinwood@privacy-test.example", "anonymous_id": "anon-fay-3391"}
    device = {"anonymous_id": fay["anonymous_id"]}
    browsing = Touchpoint("fay-1", "page_viewed", "web", T0, device, {"first_name": "Fayorrina"})
    send(settings, [browsing, Touchpoint("fay-2", "signed_in", "web", T0 + 1, fay), *others()])
    caught_up(settings)
    workers.stop_all()
    client = connect(settings.redis_url)
    client.flushdb()
    client.close()
    erase = cli(settings, "privacy", "erase", "--email", fay["email"], "--wait", "0")
    assert erase.exit_code == 0, erase.output
    receipt = erase.stdout.strip().splitlines()[0]
    workers.start_worker()
    caught_up(settings)
    wait_until(lambda: read_receipt(settings, receipt).step("profile"), 30, "the profile erased")
    caught_up(settings)
    needles = [*fay.values(), "fayorrina"]
    assert everything_readable(settings, sealer_for(settings), needles) == {}  # type: ignore[arg-type]
    emails = {e for p in exported(settings).values() for e in p["identifiers"].get("email", [])}
    assert emails == {"bob@other.example"}
