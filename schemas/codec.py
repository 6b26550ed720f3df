"""The one module that turns records into bytes and back.

Records use Avro single-object encoding: ``C3 01`` + the 8-byte CRC-64-AVRO
fingerprint of the writer schema + the Avro body. The fingerprint tells a
reader which schema wrote the bytes, so the input topic can carry single
touchpoints and batches side by side, and an unknown schema is a clear error.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import fastavro
import orjson
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from profiles.routing import RoutedItem
from profiles.touchpoint import Touchpoint, to_ms

SCHEMA_DIR = Path(__file__).parent
MAGIC = b"\xc3\x01"
HEADER_LEN = 10
#: The one set of orjson options used on the wire and in Redis.
ORJSON_OPTS = orjson.OPT_NON_STR_KEYS


class DecodeError(ValueError):
    """Bytes that are not a record this codec knows; ``str(exc)`` says why."""


def _load() -> dict[str, Any]:
    named: dict[str, Any] = {}
    parsed = {}
    for name in ("touchpoint", "touchpoint_batch", "routed_batch"):
        raw = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
        parsed[name] = parse_schema(raw, named_schemas=named)
    return parsed


SCHEMAS = _load()


def _header(schema: Any) -> bytes:
    return MAGIC + bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


TOUCHPOINT_HEADER = _header(SCHEMAS["touchpoint"])
BATCH_HEADER = _header(SCHEMAS["touchpoint_batch"])
ROUTED_HEADER = _header(SCHEMAS["routed_batch"])


def _ms(value: datetime | int) -> int:
    return value if isinstance(value, int) else to_ms(value)


def touchpoint_to_avro(tp: Touchpoint) -> dict[str, Any]:
    return {
        "event_id": tp.event_id,
        "type": tp.type,
        "source": tp.source,
        "occurred_at": tp.occurred_at_ms,
        "received_at": tp.received_at_ms,
        "identifiers": dict(tp.identifiers),
        "traits": dict(tp.traits),
        "properties_json": orjson.dumps(tp.properties, option=ORJSON_OPTS).decode(),
    }


def touchpoint_from_avro(rec: dict[str, Any]) -> Touchpoint:
    received = rec.get("received_at")
    return Touchpoint(
        event_id=rec["event_id"],
        type=rec["type"],
        source=rec["source"],
        occurred_at_ms=_ms(rec["occurred_at"]),
        received_at_ms=_ms(received) if received is not None else None,
        identifiers=rec["identifiers"],
        traits=rec["traits"],
        properties=orjson.loads(rec["properties_json"]),
    )


def _write(header: bytes, schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(header)
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def _read(data: bytes, schema: Any) -> Any:
    try:
        return fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), schema, None)
    except Exception as exc:  # fastavro raises many types on corrupt input
        raise DecodeError(f"corrupt Avro body: {type(exc).__name__}: {exc}") from None


def encode_touchpoint(tp: Touchpoint) -> bytes:
    return _write(TOUCHPOINT_HEADER, SCHEMAS["touchpoint"], touchpoint_to_avro(tp))


def encode_batch(tps: Iterable[Touchpoint]) -> bytes:
    record = {"events": [touchpoint_to_avro(tp) for tp in tps]}
    return _write(BATCH_HEADER, SCHEMAS["touchpoint_batch"], record)


def decode_touchpoints(data: bytes | None) -> list[Touchpoint]:
    """Decode an input-topic record: one touchpoint or a batch of them."""
    if not data:
        raise DecodeError("empty record")
    header = data[:HEADER_LEN]
    if header == BATCH_HEADER:
        try:
            return [
                touchpoint_from_avro(r) for r in _read(data, SCHEMAS["touchpoint_batch"])["events"]
            ]
        except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise DecodeError(f"invalid touchpoint in batch: {exc}") from None
    if header == TOUCHPOINT_HEADER:
        try:
            return [touchpoint_from_avro(_read(data, SCHEMAS["touchpoint"]))]
        except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise DecodeError(f"invalid touchpoint: {exc}") from None
    if data[:2] != MAGIC:
        raise DecodeError("not Avro single-object encoding (no C3 01 marker)")
    raise DecodeError(f"unknown schema fingerprint {header[2:].hex()}")


def encode_routed(items: Sequence[RoutedItem]) -> bytes:
    record = {
        "items": [
            {
                "key": item.key,
                "identifiers": item.identifiers,
                "event": touchpoint_to_avro(item.event),
            }
            for item in items
        ]
    }
    return _write(ROUTED_HEADER, SCHEMAS["routed_batch"], record)


def decode_routed(data: bytes) -> list[RoutedItem]:
    if data[:HEADER_LEN] != ROUTED_HEADER:
        raise DecodeError("not a RoutedBatch record")
    try:
        return [
            RoutedItem(r["key"], r["identifiers"], touchpoint_from_avro(r["event"]))
            for r in _read(data, SCHEMAS["routed_batch"])["items"]
        ]
    except (KeyError, IndexError, TypeError, orjson.JSONDecodeError) as exc:
        raise DecodeError(f"invalid routed batch: {exc}") from None
