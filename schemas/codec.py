"""The one module that turns records into bytes and back.

Two framings, both read everywhere:

* **Avro single-object encoding** (the default): ``C3 01`` + the 8-byte CRC-64-AVRO
  fingerprint of the writer schema + the Avro body. Writer schemas are the ones
  shipped in ``schemas/`` (current and ``history/``) plus any a producer announced
  on the schema topic (see ``schemas.resolve``).
* **Confluent Schema Registry framing**: ``00`` + a 4-byte schema id + the Avro
  body; the writer schema comes from the registry.

Whatever wrote the bytes, a reader gets the record in *its* schema (Avro schema
resolution: fields a newer writer added are dropped, fields an older writer lacked
take their defaults). A writer schema the reader does not know raises
``UnknownSchema`` — the caller may look it up and retry — and anything else that
cannot be read raises ``DecodeError`` with the reason.
"""

from __future__ import annotations

import io
import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import orjson
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from profiles.touchpoint import CONTEXT_FIELDS, Touchpoint, sparse_context, to_ms

SCHEMA_DIR = Path(__file__).parent
MAGIC = b"\xc3\x01"
HEADER_LEN = 10
REGISTRY_MAGIC = b"\x00"
REGISTRY_HEADER_LEN = 5
#: The one set of orjson options used on the wire and in Redis.
ORJSON_OPTS = orjson.OPT_NON_STR_KEYS

TOUCHPOINT = "unifier.v1.Touchpoint"
BATCH = "unifier.v1.TouchpointBatch"
PROFILE_UPDATE = "unifier.v1.ProfileUpdate"
PROFILE_MERGE = "unifier.v1.ProfileMerge"
SEGMENT_MEMBERSHIP = "unifier.v1.SegmentMembership"
#: Files of the current schemas, in dependency order.
SCHEMA_FILES = (
    "touchpoint",
    "touchpoint_batch",
    "profile_update",
    "profile_merge",
    "segment_membership",
)
#: Record names a producer may put on the input topic.
INPUT_NAMES = (TOUCHPOINT, BATCH)


class DecodeError(ValueError):
    """Bytes that are not a record this codec can read; ``str(exc)`` says why."""


class UnknownSchema(DecodeError):
    """The writer schema is neither shipped nor looked up yet.

    ``kind`` is ``"fingerprint"`` (single-object encoding, ``key`` the hex
    fingerprint) or ``"registry"`` (Schema Registry framing, ``key`` the id)."""

    def __init__(self, kind: str, key: str, detail: str = "") -> None:
        self.kind, self.key = kind, key
        what = "schema fingerprint" if kind == "fingerprint" else "Schema Registry schema id"
        super().__init__(f"unknown {what} {key}{detail}")


def canonical(schema: Any) -> str:
    return to_parsing_canonical_form(schema)


def fingerprint_of(schema: Any) -> str:
    """CRC-64-AVRO fingerprint of a parsed schema, as 16 hex digits."""
    return fingerprint(canonical(schema), "CRC-64-AVRO")


def single_object_header(schema: Any) -> bytes:
    return MAGIC + bytes.fromhex(fingerprint_of(schema))


def _inline(node: Any, files: Mapping[str, Any], seen: set[str]) -> Any:
    """Replace references to records of other schema files by their definition (once),
    so every schema stands alone: its fingerprint then covers the records it embeds,
    and a registry gets it without references."""
    if isinstance(node, str) and node in files and node not in seen:
        seen.add(node)
        return _inline(files[node], files, seen)
    if isinstance(node, list):
        return [_inline(n, files, seen) for n in node]
    if isinstance(node, dict):
        return {
            k: _inline(v, files, seen) if k in ("type", "items", "values", "fields") else v
            for k, v in node.items()
        }
    return node


def load_raw_schemas(older: Path | None = None) -> dict[str, Any]:
    """The shipped schemas as JSON, each standing alone, by full name; ``older`` (a file
    of ``history/``, named ``<schema file>.<version>.avsc``) swaps in an older version of
    one (an older Touchpoint: the batch schema then embeds that one)."""
    files: dict[str, Any] = {}
    for name in SCHEMA_FILES:
        path = SCHEMA_DIR / f"{name}.avsc"
        if older is not None and older.name.split(".", 1)[0] == name:
            path = older
        raw = json.loads(path.read_text())
        files[f"{raw['namespace']}.{raw['name']}"] = raw
    return {full_name: _inline(raw, files, {full_name}) for full_name, raw in files.items()}


def load_schema_files(older: Path | None = None) -> dict[str, Any]:
    """``load_raw_schemas``, parsed."""
    return {
        name: parse_schema(raw, named_schemas={}) for name, raw in load_raw_schemas(older).items()
    }


def standalone_json(schema: Any) -> str:
    """The canonical JSON text of a parsed schema (what registries and the schema topic get)."""
    return canonical(schema)


def parse_writer_schema(text: str) -> Any:
    """A writer schema from a registry or the schema topic, parsed on its own."""
    try:
        return parse_schema(json.loads(text), named_schemas={})
    except Exception as exc:  # fastavro raises several types for bad schemas
        raise DecodeError(f"writer schema cannot be parsed: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Writer:
    schema: Any
    name: str
    same_as_reader: bool


class Codec:
    """Readers for the current schemas; writers known by fingerprint or registry id.

    Thread-safe for reads; ``add_*`` may be called from a lookup thread."""

    def __init__(self) -> None:
        #: The current schemas as standalone JSON, by full name.
        self.raw = load_raw_schemas()
        self.readers: dict[str, Any] = {
            name: parse_schema(raw, named_schemas={}) for name, raw in self.raw.items()
        }
        self._by_fp: dict[str, _Writer] = {}
        self._by_id: dict[int, _Writer] = {}
        self._lock = threading.Lock()
        for name, schema in self.readers.items():
            self._by_fp[fingerprint_of(schema)] = _Writer(schema, name, True)
        for old in sorted((SCHEMA_DIR / "history").glob("*.avsc")):
            for schema in load_schema_files(old).values():
                if schema["name"] in self.readers:  # what older writers sent, still read
                    self._remember_fp(schema)
        self.headers = {name: single_object_header(s) for name, s in self.readers.items()}

    # --- known writer schemas ------------------------------------------------
    def _writer(self, schema: Any) -> _Writer:
        name = schema["name"] if isinstance(schema, dict) else ""
        if name not in self.readers:
            what = name or type(schema).__name__
            raise DecodeError(f"writer schema {what} is not a record this reader knows")
        same = canonical(schema) == canonical(self.readers[name])
        return _Writer(schema, name, same)

    def _remember_fp(self, schema: Any) -> None:
        writer = self._writer(schema)
        with self._lock:
            self._by_fp[fingerprint_of(schema)] = writer

    def add_fingerprint(self, fp_hex: str, schema_text: str) -> None:
        """Remember a writer schema announced on the schema topic."""
        schema = parse_writer_schema(schema_text)
        if fingerprint_of(schema) != fp_hex:
            actual = fingerprint_of(schema)
            raise DecodeError(f"schema announced as {fp_hex} has fingerprint {actual}")
        self._remember_fp(schema)

    def add_registry_id(self, schema_id: int, schema_text: str) -> None:
        """Remember a writer schema fetched from the Schema Registry."""
        writer = self._writer(parse_writer_schema(schema_text))
        with self._lock:
            self._by_id[schema_id] = writer

    def knows_fingerprint(self, fp_hex: str) -> bool:
        return fp_hex in self._by_fp

    def schema_json(self, name: str) -> str:
        """The current schema ``name`` as JSON text (announced and registered as is)."""
        return json.dumps(self.raw[name], separators=(",", ":"))

    def fingerprint(self, name: str) -> str:
        return self.headers[name][2:].hex()

    # --- reading --------------------------------------------------------------
    def _locate(self, data: bytes) -> tuple[_Writer, int]:
        if not data:
            raise DecodeError("empty record")
        if data[:2] == MAGIC:
            if len(data) < HEADER_LEN:
                raise DecodeError("truncated single-object header")
            fp = data[2:HEADER_LEN].hex()
            writer = self._by_fp.get(fp)
            if writer is None:
                raise UnknownSchema("fingerprint", fp)
            return writer, HEADER_LEN
        if data[:1] == REGISTRY_MAGIC:
            if len(data) < REGISTRY_HEADER_LEN:
                raise DecodeError("truncated Schema Registry header")
            schema_id = int.from_bytes(data[1:REGISTRY_HEADER_LEN], "big")
            writer = self._by_id.get(schema_id)
            if writer is None:
                raise UnknownSchema("registry", str(schema_id))
            return writer, REGISTRY_HEADER_LEN
        raise DecodeError(
            "neither Avro single-object encoding (C3 01) nor Schema Registry framing (00)"
        )

    def read(self, data: bytes, expect: Sequence[str]) -> tuple[str, Any]:
        """(record name, record as a dict in the reader's schema)."""
        writer, start = self._locate(data)
        if writer.name not in expect:
            raise DecodeError(f"a {writer.name} record where {' or '.join(expect)} was expected")
        reader = None if writer.same_as_reader else self.readers[writer.name]
        buf = io.BytesIO(data)
        buf.seek(start)
        try:
            record = fastavro.schemaless_reader(buf, writer.schema, reader)
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise DecodeError(f"corrupt Avro body: {type(exc).__name__}: {exc}") from None
        if buf.tell() != len(data):
            raise DecodeError(f"{len(data) - buf.tell()} bytes left after the Avro body")
        return writer.name, record

    def decode_touchpoints(self, data: bytes | None) -> list[Touchpoint]:
        """Decode an input-topic record: one touchpoint or a batch of them."""
        name, record = self.read(data or b"", INPUT_NAMES)
        try:
            if name == BATCH:
                return [touchpoint_from_avro(r) for r in record["events"]]
            return [touchpoint_from_avro(record)]
        except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
            raise DecodeError(f"invalid touchpoint: {type(exc).__name__}: {exc}") from None

    # --- writing --------------------------------------------------------------
    def body(self, name: str, record: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.readers[name], record)
        return buf.getvalue()

    def encode(self, name: str, record: Mapping[str, Any], prefix: bytes | None = None) -> bytes:
        """Header (single-object by default, or ``prefix``, e.g. registry framing) + body."""
        return (self.headers[name] if prefix is None else prefix) + self.body(name, record)


def _ms(value: datetime | int) -> int:
    return value if isinstance(value, int) else to_ms(value)


_SCALE = Decimal("0.0001")


def _money(value: Any) -> Any:
    # Avro decimals need the schema's scale exactly; inputs were validated to <= 4 places.
    return value.quantize(_SCALE) if isinstance(value, Decimal) else value


def _order_to_avro(order: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if order is None:
        return None
    out = {k: _money(v) for k, v in order.items() if k != "items"}
    out["items"] = [{k: _money(v) for k, v in item.items()} for item in order.get("items", ())]
    return out


def touchpoint_to_avro(tp: Touchpoint) -> dict[str, Any]:
    context = None
    if tp.context:
        context = {name: tp.context.get(name) for name in CONTEXT_FIELDS}
        context["campaign"] = dict(tp.context.get("campaign") or {})
    return {
        "event_id": tp.event_id,
        "type": tp.type,
        "source": tp.source,
        "occurred_at": tp.occurred_at_ms,
        "received_at": tp.received_at_ms,
        "identifiers": dict(tp.identifiers),
        "traits": dict(tp.traits),
        "properties_json": orjson.dumps(tp.properties, option=ORJSON_OPTS).decode(),
        "context": context,
        "consent": dict(tp.consent),
        "order": _order_to_avro(tp.order),
        "pos": _order_to_avro(tp.pos),
    }


def touchpoint_from_avro(rec: dict[str, Any]) -> Touchpoint:
    for name, value in rec["traits"].items():
        # Avro doubles can be inf/NaN; JSON (the view, the tables, the API) cannot.
        if isinstance(value, float) and not math.isfinite(value):
            raise DecodeError(f"traits.{name}: {value} is not a finite number")
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
        context=sparse_context(rec.get("context")),
        consent=rec.get("consent") or {},
        order=rec.get("order"),
        pos=rec.get("pos"),
    )


#: The process-wide codec: shipped schemas plus whatever lookups added.
CODEC = Codec()
TOUCHPOINT_HEADER = CODEC.headers[TOUCHPOINT]
BATCH_HEADER = CODEC.headers[BATCH]


def encode_touchpoint(tp: Touchpoint, prefix: bytes | None = None) -> bytes:
    return CODEC.encode(TOUCHPOINT, touchpoint_to_avro(tp), prefix)


def batch_record(tps: Iterable[Touchpoint]) -> dict[str, Any]:
    return {"events": [touchpoint_to_avro(tp) for tp in tps]}


def encode_batch(tps: Iterable[Touchpoint], prefix: bytes | None = None) -> bytes:
    return CODEC.encode(BATCH, batch_record(tps), prefix)


def encode_batches(
    tps: Sequence[Touchpoint], prefix: bytes | None = None, max_bytes: int = 900_000
) -> list[tuple[Sequence[Touchpoint], bytes]]:
    """``encode_batch``, split in halves until each record is at most ``max_bytes``
    (Kafka's default limit is 1 MB per record); a single larger event stays whole."""
    value = encode_batch(tps, prefix)
    if len(value) <= max_bytes or len(tps) == 1:
        return [(tps, value)]
    half = len(tps) // 2
    return encode_batches(tps[:half], prefix, max_bytes) + encode_batches(
        tps[half:], prefix, max_bytes
    )


def decode_touchpoints(data: bytes | None) -> list[Touchpoint]:
    return CODEC.decode_touchpoints(data)
