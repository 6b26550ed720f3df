"""Every way in at once, good and bad, on the real broker with a worker running:
every valid event is on `touchpoints` exactly once, every broken one is refused
with a reason (HTTP 4xx, a rejects file, or a dead letter), nothing is lost."""

from __future__ import annotations

import copy
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import fastavro
import orjson
import pytest
from confluent_kafka import Producer
from fastavro.schema import parse_schema

from config.settings import Settings
from producers.importers import import_file
from producers.sdk import Unifier
from profiles.touchpoint import InvalidTouchpoint, Touchpoint
from schemas.codec import (
    BATCH,
    CODEC,
    SCHEMA_DIR,
    DecodeError,
    decode_touchpoints,
    encode_touchpoint,
    single_object_header,
)
from serve.view import RedisProfileView
from tests.integration.test_pipeline import caught_up
from tests.support.http import accepted, post
from tests.support.kafka import touchpoints_on_topic
from unifier import dlq
from unifier.processes import free_port
from unifier.stack import EmbeddedStack

pytestmark = pytest.mark.integration

KEY = "wk_site"

POS_HEADER = "transaction_id,occurred_at,store_id,terminal_id,loyalty_id,phone,currency,total"
POS_CSV = f"""{POS_HEADER},sku,quantity,unit_price
R-1,2026-11-20T10:00:00Z,S1,T1,L-1,(415) 555-0100,USD,30.00,SKU-A,1,10.00
R-1,2026-11-20T10:00:00Z,S1,T1,L-1,(415) 555-0100,USD,30.00,SKU-B,2,10.00
R-2,2026-11-20T11:00:00Z,S1,T2,L-2,,USD,12.5,SKU-C,1,12.5
R-3,2026-11-20T12:00:00Z,S2,T1,,415.555.0199,USD,twelve,SKU-D,1,12
R-4,2026-11-20T13:00:00Z,S2,T1,L-4,,USD,5,SKU-E,1,5
"""
CRM_CSV = """contact_id,updated_at,email,phone,first_name,email_opt_in
C-1,2026-11-01T09:00:00Z,ana@example.com,+1 415 555 0100,Ana,yes
C-2,2026-11-01T09:00:00Z,bo@example.com,,Bo,maybe
C-3,not a date,cy@example.com,,Cy,no
C-4,2026-11-02T09:00:00Z,di@example.com,,Di,no
"""


@pytest.fixture
def site(topics: Settings, tmp_path: Path) -> Iterator[tuple[str, Settings, EmbeddedStack]]:
    settings = topics.model_copy(
        update={"collector_port": free_port(), "collector_write_keys": {KEY: "web"}}
    )
    with EmbeddedStack(settings, tmp_path / "stack") as stack:
        stack.start_worker()
        stack.start_collector()
        yield f"http://127.0.0.1:{settings.collector_port}", settings, stack


def v1_touchpoint(event_id: str, email: str) -> bytes:
    raw = json.loads((SCHEMA_DIR / "history" / "touchpoint.1.avsc").read_text())
    schema = parse_schema(raw, named_schemas={})
    buf = io.BytesIO()
    record = {
        "event_id": event_id,
        "type": "signed_in",
        "source": "legacy-app",
        "occurred_at": 1_795_000_000_000,
        "received_at": None,
        "identifiers": {"email": email},
        "traits": {},
        "properties_json": "{}",
    }
    fastavro.schemaless_writer(buf, schema, record)
    return single_object_header(schema) + buf.getvalue()


def test_a_mixed_stream_lands_exactly_once_or_is_refused_with_a_reason(
    site: tuple[str, Settings, EmbeddedStack], tmp_path: Path
) -> None:
    url, settings, _stack = site
    expected: list[str] = []

    # 1. The SDK: valid calls are sent; invalid ones raise before anything is queued.
    with Unifier(settings, source="web") as sdk:
        expected.append(
            sdk.identify({"user_id": "u-1", "email": "Ana@Example.com"}, {"first_name": "Ana"})
        )
        expected.append(
            sdk.track("product_viewed", {"anonymous_id": "a-1"}, properties={"sku": "SKU-A"})
        )
        expected.append(
            sdk.order({"user_id": "u-1"}, order_id="W-1", currency="usd", total="42.50",
                      items=[{"sku": "SKU-A", "quantity": 1, "unit_price": "42.50"}])
        )  # fmt: skip
        expected.append(
            sdk.pos_transaction({"loyalty_id": "L-9"}, transaction_id="R-9", store_id="S9",
                                currency="USD", total=9)
        )  # fmt: skip
        sdk_refusals = []
        for bad_call in (
            lambda: sdk.identify({}),
            lambda: sdk.track("x", {"email": "not-an-email"}),
            lambda: sdk.order({"user_id": "u-1"}, order_id="W-2", currency="USD", total="1.23456"),
            lambda: sdk.track("x", {"fax": "123"}),
        ):
            with pytest.raises(InvalidTouchpoint) as refused:
                bad_call()
            sdk_refusals.append(str(refused.value))
        report = sdk.flush()
    assert report.ok and report.events_sent == 4
    assert any("no usable identifier" in r for r in sdk_refusals)
    assert any("decimal places" in r for r in sdk_refusals)
    assert any("unknown identifier type(s) fax" in r for r in sdk_refusals)

    # 2. The collector: a good batch is acknowledged, a bad request refused whole.
    batch = [
        {"type": "identify", "messageId": "seg-1", "userId": "u-2",
         "traits": {"email": "bo@example.com"}},
        {"type": "track", "messageId": "seg-2", "event": "Cart Viewed", "anonymousId": "a-2"},
        {"type": "page", "messageId": "seg-3", "anonymousId": "a-2",
         "properties": {"url": "https://x.example/"}},
    ]  # fmt: skip
    assert accepted(post(f"{url}/v1/batch", {"batch": batch}, KEY)) == (
        200,
        {"success": True, "accepted": 3},
    )
    expected += ["seg-1", "seg-2", "seg-3"]
    bad_batch = [{**batch[0], "messageId": "seg-4"}, {"type": "track", "messageId": "seg-5"}]
    status, answer = post(f"{url}/v1/batch", {"batch": bad_batch}, KEY)
    assert status == 400
    assert answer["errors"] == [{"index": 1, "reason": "userId or anonymousId is required"}]
    assert post(f"{url}/v1/track", b"\xff\xfe{", KEY)[0] == 400

    # 3. The importers: good rows sent, bad ones in the rejects file with line numbers.
    pos_csv, crm_csv = tmp_path / "pos.csv", tmp_path / "crm.csv"
    pos_csv.write_text(POS_CSV)
    crm_csv.write_text(CRM_CSV)
    pos = import_file("pos", pos_csv, settings, err=io.StringIO())
    crm = import_file("crm", crm_csv, settings, err=io.StringIO())
    assert (pos.accepted, pos.delivered, pos.rejected) == (3, 3, 1)
    assert (crm.accepted, crm.delivered, crm.rejected) == (2, 2, 2)
    expected += ["pos:S1:R-1", "pos:S1:R-2", "pos:S2:R-4"]
    expected += ["crm:C-1:2026-11-01T09:00:00+00:00", "crm:C-4:2026-11-02T09:00:00+00:00"]
    assert pos.rejects_path is not None and crm.rejects_path is not None
    pos_rejects = [orjson.loads(line) for line in pos.rejects_path.read_bytes().splitlines()]
    crm_rejects = [orjson.loads(line) for line in crm.rejects_path.read_bytes().splitlines()]
    assert [(r["line"], r["input"]["transaction_id"]) for r in pos_rejects] == [(5, "R-3")]
    assert "pos.total" in pos_rejects[0]["reason"]
    assert [r["line"] for r in crm_rejects] == [3, 4]
    assert "email_opt_in: 'maybe' is not yes/no" in crm_rejects[0]["reason"]
    assert "updated_at: 'not a date' is not a date and time" in crm_rejects[1]["reason"]

    # 4. Third-party producers: an old-version record is fine, broken bytes are dead-lettered.
    unknown = copy.deepcopy(CODEC.raw[BATCH])
    unknown["fields"][0]["type"]["items"]["fields"].append(
        {"name": "extra", "type": "string"}  # a writer the worker has never been told about
    )
    unknown_header = single_object_header(parse_schema(unknown, named_schemas={}))
    good_v1 = v1_touchpoint("legacy-1", "cy@example.com")
    expected.append("legacy-1")
    broken = {
        b"not avro at all": "neither Avro single-object encoding",
        good_v1[:14]: "corrupt Avro body",
        unknown_header + b"\x00": f"unknown schema fingerprint {unknown_header[2:].hex()}",
        b"\x00\x00\x00\x00\x2a\x02": "unknown Schema Registry schema id 42",
        # Decodes, but no identifier can be used:
        encode_touchpoint(Touchpoint("dead-1", "signed_in", "web", 0, {"phone": "12"})): (
            "no usable identifier (phone: not a valid phone number)"
        ),
    }
    huge = b"\xc3\x01" + b"\x07" * 2_000_000  # too large to copy whole into the DLQ
    producer = Producer(
        {"bootstrap.servers": settings.bootstrap_servers, "message.max.bytes": 4_000_000}
    )
    producer.produce(settings.topic_touchpoints, good_v1)
    for value in [*broken, huge]:
        producer.produce(settings.topic_touchpoints, value)
    assert producer.flush(10) == 0

    # Exactly once on the input topic, in every source's form.
    on_topic = Counter(tp.event_id for tp in touchpoints_on_topic(settings, skip=[*broken, huge]))
    assert sorted(on_topic) == sorted(expected)
    assert set(on_topic.values()) == {1}

    # The worker applied every valid event once and dead-lettered each broken record.
    caught_up(settings)
    letters = list(dlq.read(settings))
    reasons = sorted(letter.headers["x-dlq-reason"] for letter in letters)
    assert len(letters) == len(broken) + 1
    [truncated] = [x for x in letters if "x-dlq-original-bytes" in x.headers]
    assert truncated.headers["x-dlq-original-bytes"] == str(len(huge))
    assert truncated.value == huge[: 64 * 1024]
    assert "unknown schema fingerprint 0707070707070707" in truncated.headers["x-dlq-reason"]
    for value, why in broken.items():
        # (an event that decodes was sealed by the worker before it was dead-lettered:
        # found by its id, opened by the reader)
        [letter] = [x for x in letters if x.value == value or _same_events(x, value)]
        assert why in letter.headers["x-dlq-reason"], (why, reasons)
        assert letter.headers["x-source-topic"] == settings.topic_touchpoints
    view = RedisProfileView.for_settings(settings)
    try:
        applied = sum(p["computed"]["event_count"] for p in view.scan())
    finally:
        view.close()
    assert applied == len(expected)


def test_the_worker_keeps_serving_through_garbage(topics: Settings, workers: EmbeddedStack) -> None:
    """Hundreds of hostile records between valid ones: every hostile one becomes a dead
    letter with a reason, every valid event is applied, the worker never stops."""
    import random

    settings = topics
    rng = random.Random(5)
    valid = [
        Touchpoint(f"ok-{i}", "signed_in", "web", 1_795_000_000_000 + i, {"email": f"p{i}@x.com"})
        for i in range(120)
    ]
    encoded = [encode_touchpoint(tp) for tp in valid]
    garbage: list[bytes] = []
    for n in range(300):
        kind = n % 4
        if kind == 0:  # random bytes of any length
            garbage.append(rng.randbytes(rng.randint(1, 3000)))
        elif kind == 1:  # a valid record cut short
            data = rng.choice(encoded)
            garbage.append(data[: rng.randint(1, len(data) - 1)])
        elif kind == 2:  # an unknown schema fingerprint
            garbage.append(b"\xc3\x01" + rng.randbytes(8) + rng.randbytes(20))
        else:  # a registry id nobody registered
            garbage.append(b"\x00" + rng.randbytes(4) + rng.randbytes(20))
    stream = [(v, True) for v in encoded] + [(g, False) for g in garbage]
    rng.shuffle(stream)
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for value, _ in stream:
        producer.produce(settings.topic_touchpoints, value)
    assert producer.flush(30) == 0
    workers.start_worker()
    caught_up(settings)

    letters = list(dlq.read(settings))
    assert len(letters) == len(garbage)
    assert all(letter.headers["x-dlq-reason"] for letter in letters)
    assert sorted(x.value for x in letters) == sorted(garbage)
    view = RedisProfileView.for_settings(settings)
    try:
        profiles = list(view.scan())
    finally:
        view.close()
    # One profile per valid event (each has its own email), each holding that one event.
    assert len(profiles) == len(valid)
    assert {p["computed"]["event_count"] for p in profiles} == {1}


def _same_events(letter: dlq.DeadLetter, value: bytes) -> bool:
    try:
        sent = [tp.event_id for tp in decode_touchpoints(value)]
    except DecodeError:
        return False
    return letter.events is not None and [tp.event_id for tp in letter.events] == sent
