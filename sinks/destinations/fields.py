"""What a destination gets of a profile, and what an app's edit says about one.

Pure functions over ``schemas.records.ProfileUpdate`` (opened: plain values): scope
(the destination's segment and consent purpose), a column's wanted value, and the
touchpoint an edited row becomes.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from profiles.identifiers import InvalidIdentifier, normalize
from profiles.profile import iso
from schemas.records import ProfileUpdate
from sinks.consent import consents
from sinks.destinations.config import Destination, FieldSpec

#: Namespace of the event ids of inbound edits: the same row revision is the same event.
EDIT_NAMESPACE = uuid.UUID("6f6d1a52-3a57-4c2e-9b5e-1c0f3e8a7d21")

Cell = str | bool | None


def in_scope(dest: Destination, update: ProfileUpdate) -> bool:
    """Whether the profile belongs in the destination: in its segment (if it names
    one) and consenting to its purpose (if it serves one; unknown counts as no)."""
    if dest.segment is not None and dest.segment not in update.segments:
        return False
    return consents({"computed": update.computed}, dest.purpose)


def cell(spec: FieldSpec, value: Any) -> Cell:
    """A value as the column holds it: consent columns true/false, others text."""
    if value is None:
        return None
    if spec.kind == "consent":
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "t", "yes", "y")
        return bool(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return orjson.dumps(value).decode()


def _dig(doc: Mapping[str, Any], path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def wanted(  # noqa: PLR0911 - one return per kind of field
    spec: FieldSpec, update: ProfileUpdate, current: Cell, region: str
) -> Cell:
    """The value the column should hold for this profile. An identifier column shows
    one of the profile's values of its type: the one it holds, if the profile has it
    (in any spelling), else the first."""
    kind, key = spec.kind, spec.key
    if kind == "identifiers":
        values = list(update.identifiers.get(key, ()))
        if not values:
            return None
        if isinstance(current, str) and _normal(key, current, region) in values:
            return current
        return values[0]
    if kind == "traits":
        return cell(spec, update.traits.get(key))
    if kind == "computed":
        return cell(spec, _dig(update.computed, key))
    if kind == "consent":
        answer = (update.computed.get("consent") or {}).get(key)
        return answer.get("granted") is True if isinstance(answer, Mapping) else None
    return update.profile_id  # profile_id


def _normal(id_type: str, value: str, region: str) -> str | None:
    try:
        return normalize(id_type, value, region)
    except InvalidIdentifier:
        return None


def writable(spec: FieldSpec) -> bool:
    """Whether an app's edit of the column can enter the pipeline."""
    return spec.kind in ("identifiers", "traits", "consent")


def edit_event(
    dest: Destination,
    row_id: str,
    rev: int,
    row: Mapping[str, Cell],
    changed: Mapping[str, Cell],
    app_row: bool,
    now_ms: int,
    new_row: bool = False,
) -> dict[str, Any]:
    """The touchpoint (JSON form) of an app's edit of one row: the row's identifiers
    (so it is stitched to its customer), the edited traits and consents, from the
    destination's source. The same row revision makes the same event id."""
    ids: dict[str, str] = {}
    if app_row and dest.row_identifier:
        ids[dest.row_identifier] = row_id
    for column, id_type in dest.identifier_columns().items():
        value = row.get(column)
        if isinstance(value, str) and value.strip():
            ids.setdefault(id_type, value)
    traits: dict[str, Any] = {}
    consent: dict[str, bool] = {}
    for column, value in changed.items():
        spec = dest.fields[column]
        if value is None:
            continue  # a cleared cell says nothing we can carry
        if spec.kind == "traits":
            traits[spec.key] = value
        elif spec.kind == "consent":
            consent[spec.key] = bool(value)
    digest = orjson.dumps(dict(sorted(changed.items()))).decode()
    doc: dict[str, Any] = {
        "event_id": str(uuid.uuid5(EDIT_NAMESPACE, f"{dest.name}:{row_id}:{rev}:{digest}")),
        "type": "record_created" if new_row else "record_updated",
        "source": dest.source,
        "occurred_at": iso(now_ms),
        "identifiers": ids,
        "context": {"library": f"unifier-sync/{dest.name}"},
    }
    if traits:
        doc["traits"] = traits
    if consent:
        doc["consent"] = consent
    return doc
