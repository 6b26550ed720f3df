"""The shipped Avro schemas: round trips, evolution both ways, PII marks, framing."""

from __future__ import annotations

import copy
import io
import json
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from fastavro.schema import parse_schema
from fastavro.utils import generate_many
from hypothesis import given, settings

from config.settings import Settings
from profiles.touchpoint import Touchpoint, parse_json, to_json_form
from schemas.codec import (
    BATCH,
    CODEC,
    MAGIC,
    PROFILE_MERGE,
    PROFILE_UPDATE,
    SCHEMA_DIR,
    TOUCHPOINT,
    Codec,
    DecodeError,
    UnknownSchema,
    batch_record,
    decode_touchpoints,
    encode_batch,
    fingerprint_of,
    load_raw_schemas,
    single_object_header,
    touchpoint_to_avro,
)
from schemas.compat import _plain, problems
from schemas.resolve import RegistryFraming, Resolver, registry_client
from tests.unit.strategies import touchpoints

CURRENT = load_raw_schemas()
HISTORY = sorted((SCHEMA_DIR / "history").glob("*.avsc"))
ID_TYPES = ["email", "phone", "user_id", "anonymous_id", "loyalty_id"]


def with_added_field(raw: dict[str, Any]) -> dict[str, Any]:
    """What the next compatible version of a schema looks like: one optional field more."""
    newer = copy.deepcopy(raw)
    newer["fields"].append(
        {"name": "added_later", "type": ["null", "string"], "default": None, "doc": "test"}
    )
    return newer


@pytest.mark.parametrize("name", sorted(CURRENT))
def test_every_schema_round_trips_generated_records(name: str) -> None:
    schema = parse_schema(_plain(CURRENT[name]), named_schemas={})
    for record in generate_many(schema, 50):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, record)
        buf.seek(0)
        assert fastavro.schemaless_reader(buf, schema, None) == record


@pytest.mark.parametrize("name", sorted(CURRENT))
def test_every_schema_evolves_with_an_optional_field_both_ways(name: str) -> None:
    v1, v2 = CURRENT[name], with_added_field(CURRENT[name])
    assert problems(writer=v1, reader=v2) == []
    assert problems(writer=v2, reader=v1) == []


@pytest.mark.parametrize("old", HISTORY, ids=lambda p: p.name)
def test_shipped_versions_read_each_other(old: Any) -> None:
    for name, raw in load_raw_schemas(old).items():
        assert problems(writer=raw, reader=CURRENT[name]) == [], name
        assert problems(writer=CURRENT[name], reader=raw) == [], name


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("required field added", "added_required"),
        ("type changed", "string is not long"),
        ("field removed that old readers need", "source"),
    ],
)
def test_breaking_changes_are_caught(change: str, expected: str) -> None:
    old = CURRENT[TOUCHPOINT]
    new = copy.deepcopy(old)
    if change == "required field added":
        new["fields"].append({"name": "added_required", "type": "string"})
        found = problems(writer=old, reader=new)  # new worker, old producer
    elif change == "type changed":
        next(f for f in new["fields"] if f["name"] == "event_id")["type"] = "long"
        found = problems(writer=old, reader=new)
    else:
        new["fields"] = [f for f in new["fields"] if f["name"] != "source"]
        found = problems(writer=new, reader=old)  # new producer, old worker
    assert found, f"{change} was not detected"
    assert any(expected in reason for reason in found), found


def test_personal_data_fields_are_marked() -> None:
    def marked(raw: dict[str, Any], path: str) -> bool:
        node: Any = raw
        for part in path.split("."):
            fields = node["fields"]
            field = next(f for f in fields if f["name"] == part)
            if field.get("pii"):
                return True
            node = field["type"]
            if isinstance(node, list):
                node = next(t for t in node if t != "null")
        return False

    tp = CURRENT[TOUCHPOINT]
    for path in ("identifiers", "traits", "properties_json", "context.ip", "pos.card_last4"):
        assert marked(tp, path), path
    for path in ("event_id", "type", "order.total"):
        assert not marked(tp, path), path
    assert marked(CURRENT[PROFILE_UPDATE], "identifiers")
    assert marked(CURRENT[PROFILE_MERGE], "identifier_value")


# --- the codec across versions -------------------------------------------------


def v1_record(event_id: str) -> bytes:
    """What a producer of version 1 (schemas/history/touchpoint.1.avsc) put on the wire."""
    raw = json.loads((SCHEMA_DIR / "history" / "touchpoint.1.avsc").read_text())
    schema = parse_schema(raw, named_schemas={})
    buf = io.BytesIO()
    fastavro.schemaless_writer(
        buf,
        schema,
        {
            "event_id": event_id,
            "type": "signed_in",
            "source": "web",
            "occurred_at": 1_700_000_000_000,
            "received_at": None,
            "identifiers": {"email": "a@x.com"},
            "traits": {"plan": "pro"},
            "properties_json": "{}",
        },
    )
    return single_object_header(schema) + buf.getvalue()


def test_a_version_1_record_reads_with_the_new_fields_defaulted() -> None:
    [tp] = decode_touchpoints(v1_record("e1"))
    assert tp.event_id == "e1"
    assert tp.traits == {"plan": "pro"}
    assert (tp.context, tp.consent, tp.order, tp.pos) == ({}, {}, None, None)


def next_version_codec_record(tp: Touchpoint) -> tuple[str, str, bytes]:
    """A batch written by a producer one version ahead (an extra optional field)."""
    raw = with_added_field(CURRENT[TOUCHPOINT])
    batch = copy.deepcopy(CURRENT[BATCH])
    batch["fields"][0]["type"]["items"] = raw
    schema = parse_schema(batch, named_schemas={})
    record = batch_record([tp])
    record["events"][0]["added_later"] = "ignored by older readers"
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return fingerprint_of(schema), json.dumps(batch), single_object_header(schema) + buf.getvalue()


@settings(deadline=None, max_examples=25)  # builds a codec per example
@given(touchpoints)
def test_a_newer_producers_record_reads_once_its_schema_is_known(tp: Touchpoint) -> None:
    codec = Codec()
    fp, text, data = next_version_codec_record(tp)
    with pytest.raises(UnknownSchema, match=f"unknown schema fingerprint {fp}"):
        codec.decode_touchpoints(data)
    codec.add_fingerprint(fp, text)
    assert codec.decode_touchpoints(data) == [tp]


def test_an_announced_schema_must_match_its_fingerprint() -> None:
    fp, text, _ = next_version_codec_record(_sample())
    with pytest.raises(DecodeError, match="has fingerprint"):
        Codec().add_fingerprint("0" * 16, text)
    assert fp != "0" * 16


def _sample() -> Touchpoint:
    return Touchpoint("e", "page_viewed", "web", 0, {"email": "a@x.com"})


@settings(deadline=None, max_examples=25)
@given(touchpoints)
def test_schema_registry_framing_round_trips_through_the_registry(tp: Touchpoint) -> None:
    client = registry_client("mock://schemas-test")
    framing = RegistryFraming(client, "touchpoints")
    data = encode_batch([tp], framing.prefix(BATCH))
    assert data[:1] == b"\x00"
    reader = Codec()
    with pytest.raises(UnknownSchema, match="Schema Registry schema id"):
        reader.decode_touchpoints(data)
    reader.add_registry_id(
        framing.schema_id(BATCH), client.get_schema(framing.schema_id(BATCH)).schema_str
    )
    assert reader.decode_touchpoints(data) == [tp]


def test_registry_framing_without_a_registry_is_a_clear_reason() -> None:
    data = b"\x00\x00\x00\x00\x07" + b"\x02"
    with pytest.raises(UnknownSchema) as missing:
        Codec().decode_touchpoints(data)
    reason = Resolver(Settings(schema_registry_url=None)).resolve(missing.value)
    assert reason is not None
    assert "schema id 7" in reason
    assert "UNIFIER_SCHEMA_REGISTRY_URL is not set" in reason


def test_an_unknown_registry_id_is_a_clear_reason() -> None:
    with pytest.raises(UnknownSchema) as missing:
        Codec().decode_touchpoints(b"\x00\x00\x00\x01\x00\x02")
    reason = Resolver(Settings(schema_registry_url="mock://empty")).resolve(missing.value)
    assert reason is not None
    assert "schema id 256" in reason
    assert "Schema Not Found" in reason


def test_other_record_types_on_the_input_topic_are_refused() -> None:
    data = CODEC.encode(
        PROFILE_MERGE,
        {
            "loser": "a",
            "winner": "b",
            "identifier_type": "email",
            "identifier_value": "x",
            "event_id": "e",
            "merged_at": 0,
        },
    )
    with pytest.raises(DecodeError, match="ProfileMerge record where"):
        decode_touchpoints(data)
    assert data[:2] == MAGIC


def test_trailing_bytes_are_refused() -> None:
    data = CODEC.encode(TOUCHPOINT, touchpoint_to_avro(_sample()))
    with pytest.raises(DecodeError, match="3 bytes left"):
        decode_touchpoints(data + b"abc")


@given(touchpoints)
def test_the_json_form_round_trips(tp: Touchpoint) -> None:
    assert parse_json(json.loads(json.dumps(to_json_form(tp))), ID_TYPES) == tp


def test_amounts_keep_their_exact_value() -> None:
    tp = parse_json(
        {
            "event_id": "o1",
            "type": "order_completed",
            "source": "web",
            "occurred_at": "2026-11-22T10:00:00Z",
            "identifiers": {"email": "a@x.com"},
            "order": {"order_id": "A1", "currency": "usd", "total": 0.1, "items": []},
        },
        ID_TYPES,
    )
    [back] = decode_touchpoints(encode_batch([tp]))
    assert back.order is not None
    assert back.order["total"] == Decimal("0.1")
    assert back.order["currency"] == "USD"


def test_every_schema_file_is_packaged() -> None:
    """A non-editable install (the Docker image) must carry every .avsc, history included."""
    import fnmatch
    import tomllib

    pyproject = tomllib.loads((SCHEMA_DIR.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["schemas"]
    for path in SCHEMA_DIR.rglob("*.avsc"):
        name = path.relative_to(SCHEMA_DIR).as_posix()
        assert any(
            fnmatch.fnmatch(name, p) and name.count("/") == p.count("/") for p in patterns
        ), name
