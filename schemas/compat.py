"""Is data written with one schema readable with another? Checked by doing it.

``problems(writer, reader)`` writes generated records of every shape the writer
allows and reads them with the reader through Avro schema resolution; each
failure is a reason the change would break a consumer. The schema tests run it
for every shipped version in both directions, so a breaking change fails a test
instead of a worker in production.
"""

from __future__ import annotations

import io
from typing import Any

import fastavro
from fastavro.schema import parse_schema
from fastavro.utils import generate_many


def _plain(node: Any) -> Any:
    """The schema without logical types (the generator does not produce decimals;
    resolution does not depend on them)."""
    if isinstance(node, list):
        return [_plain(n) for n in node]
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items() if k != "logicalType"}
    return node


def problems(writer: dict[str, Any], reader: dict[str, Any], samples: int = 60) -> list[str]:
    """Why records written with ``writer`` cannot be read with ``reader`` (empty: they can)."""
    w = parse_schema(_plain(writer), named_schemas={})
    r = parse_schema(_plain(reader), named_schemas={})
    found: list[str] = []
    for record in generate_many(w, samples):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, w, record)
        buf.seek(0)
        try:
            fastavro.schemaless_reader(buf, w, r)
        except Exception as exc:  # resolution errors come in several types
            reason = f"{type(exc).__name__}: {exc}"
            if reason not in found:
                found.append(reason)
    return found
