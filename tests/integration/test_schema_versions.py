"""Producers and workers of different schema versions on one real broker."""

from __future__ import annotations

import copy
import io
import json

import fastavro
import pytest
from confluent_kafka import Producer
from fastavro.schema import parse_schema

from config.settings import Settings
from profiles.touchpoint import Touchpoint
from schemas.codec import BATCH, CODEC, SCHEMA_DIR, batch_record, single_object_header
from serve.view import RedisProfileView
from tests.integration.test_pipeline import caught_up
from unifier import dlq
from unifier.stack import EmbeddedStack

pytestmark = pytest.mark.integration


def v1_batch(emails: list[str]) -> bytes:
    """What a producer built on schema version 1 (schemas/history/touchpoint.1.avsc) sends."""
    touchpoint = json.loads((SCHEMA_DIR / "history" / "touchpoint.1.avsc").read_text())
    batch = copy.deepcopy(CODEC.raw[BATCH])
    batch["fields"][0]["type"]["items"] = touchpoint
    schema = parse_schema(batch, named_schemas={})
    events = [
        {
            "event_id": f"v1-{i}",
            "type": "signed_in",
            "source": "old-app",
            "occurred_at": 1_795_000_000_000 + i,
            "received_at": None,
            "identifiers": {"email": email},
            "traits": {"plan": "basic"},
            "properties_json": "{}",
        }
        for i, email in enumerate(emails)
    ]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, {"events": events})
    return single_object_header(schema) + buf.getvalue()


def next_version_batch(emails: list[str]) -> tuple[str, str, bytes]:
    """What a producer one version ahead sends: a field this worker has never seen."""
    batch = copy.deepcopy(CODEC.raw[BATCH])
    batch["fields"][0]["type"]["items"]["fields"].append(
        {"name": "loyalty_tier", "type": ["null", "string"], "default": None}
    )
    schema = parse_schema(batch, named_schemas={})
    record = batch_record(
        Touchpoint(f"v3-{i}", "signed_in", "new-app", 1_795_000_000_000 + i, {"email": email})
        for i, email in enumerate(emails)
    )
    for event in record["events"]:
        event["loyalty_tier"] = "gold"
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    header = single_object_header(schema)
    return header[2:].hex(), json.dumps(batch), header + buf.getvalue()


def profile_events(settings: Settings, email: str) -> int:
    view = RedisProfileView.for_settings(settings)
    try:
        found = view.lookup("email", email)
        return int(found["computed"]["event_count"]) if found else 0
    finally:
        view.close()


def test_old_and_new_producers_with_this_worker(topics: Settings, workers: EmbeddedStack) -> None:
    settings = topics
    fp, schema_json, newer = next_version_batch(["new@example.com", "new2@example.com"])
    _, _, unannounced = next_version_batch(["ghost@example.com"])
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    # The newer producer announces its writer schema, as our producers do on start.
    producer.produce(settings.topic_schemas, key=fp.encode(), value=schema_json.encode())
    assert producer.flush(10) == 0
    producer.produce(settings.topic_touchpoints, v1_batch(["old@example.com"]), partition=0)
    producer.produce(settings.topic_touchpoints, newer, partition=1)
    assert producer.flush(10) == 0
    workers.start_worker()
    caught_up(settings)
    assert profile_events(settings, "old@example.com") == 1
    assert profile_events(settings, "new@example.com") == 1
    assert profile_events(settings, "new2@example.com") == 1
    assert list(dlq.read(settings, idle_s=1.0)) == []

    # A newer record whose schema nobody announced is a dead letter with the reason.
    producer.produce(
        settings.topic_touchpoints,
        unannounced.replace(bytes.fromhex(fp), bytes.fromhex("00" * 8)),
        partition=2,
    )
    assert producer.flush(10) == 0
    caught_up(settings)
    [letter] = list(dlq.read(settings))
    assert letter.headers["x-dlq-reason"] == (
        "unknown schema fingerprint 0000000000000000: not shipped with this worker "
        f"and not announced on {settings.topic_schemas}"
    )
