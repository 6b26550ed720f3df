"""Every record the product writes to an output topic, built in one place.

* ``ProfileUpdate`` (``profile-updates``, compacted, keyed by profile id): the full
  profile after every change, with what changed; a tombstone when merged away.
* ``ProfileMerge`` (``profile-merges``): one record per profile merged into another,
  and (kind split) one per part split off a profile.

Both are Avro (``schemas/*.avsc``) through ``schemas.codec``; ``decode_update`` and
``decode_merge`` turn them back into typed records for readers (``serve.feed``,
``unifier view rebuild``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from profiles.graph.messages import Merged, SplitOff
from profiles.sealed import token_of
from profiles.segments import Transition
from schemas.codec import (
    CODEC,
    ORJSON_OPTS,
    PROFILE_MERGE,
    PROFILE_UPDATE,
    SEGMENT_MEMBERSHIP,
    DecodeError,
)


def update_record(
    view: dict[str, Any], why: dict[str, Any], changed: list[str], now_ms: int
) -> dict[str, Any]:
    """The ``ProfileUpdate`` Avro record of a live profile's view and explanation: all
    that the Redis view holds for it (``unifier view rebuild`` reads it back)."""
    computed = view["computed"]
    first = computed.get("first_seen")
    last = computed.get("last_seen")
    return {
        "profile_id": view["profile_id"],
        "version": view["version"],
        "updated_at": now_ms,
        "identifiers": view["identifiers"],
        "traits": view["traits"],
        "first_seen": iso_ms(first) if first else 0,
        "last_seen": iso_ms(last) if last else 0,
        "event_count": computed["event_count"],
        "computed_json": orjson.dumps(computed, option=ORJSON_OPTS).decode(),
        "changed_fields": changed,
        "why_json": orjson.dumps(why, option=ORJSON_OPTS).decode(),
        "segments": view.get("segments", []),
        "position": (view.get("freshness") or {}).get("position") or "",
    }


def iso_ms(stamp: str) -> int:
    """A view's time (``2026-11-22T10:00:00.000Z``) in milliseconds."""
    from datetime import datetime

    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


def encode_update(
    view: dict[str, Any], why: dict[str, Any], changed: list[str], now_ms: int
) -> bytes:
    """The ``profile-updates`` value of a live profile (a tombstone is ``None``)."""
    return CODEC.encode(PROFILE_UPDATE, update_record(view, why, changed, now_ms))


def membership_record(t: Transition) -> bytes:
    """The ``segment-membership`` value of one transition."""
    return CODEC.encode(
        SEGMENT_MEMBERSHIP,
        {
            "profile_id": t.profile_id,
            "segment": t.segment,
            "event": "entered" if t.entered else "exited",
            "at": t.at_ms,
            "definition_version": t.definition_version,
            "profile_version": t.profile_version,
            "seq": t.seq,
        },
    )


def membership_from(value: bytes) -> Transition:
    """A ``segment-membership`` record, read back (``DecodeError`` if it is not one)."""
    _, r = CODEC.read(value, (SEGMENT_MEMBERSHIP,))
    return Transition(
        r["profile_id"],
        r["segment"],
        r["event"] == "entered",
        _millis(r["at"]),
        r["definition_version"],
        r["profile_version"],
        r["seq"],
    )


def split_record(split: SplitOff) -> bytes:
    """A ``profile-merges`` record of kind split: ``loser`` is the profile split (it
    stays), ``winner`` the part that starts, ``moved`` what went there; ``event_id``
    the split's request id."""
    first = split.ids[0] if split.ids else ":"
    id_type, _, value = first.partition(":")
    return CODEC.encode(
        PROFILE_MERGE,
        {
            "loser": split.source,
            "winner": split.part,
            "identifier_type": id_type,
            "identifier_value": value,
            "event_id": split.name,
            "merged_at": int(time.time() * 1000),
            "kind": "split",
            "moved": list(split.ids),
            "rule": split.rule,
        },
    )


def _audited_id(ident: str) -> dict[str, str]:
    """An identifier on the audit trail: its type, and its token when sealed (a keyed
    hash: the value is not there)."""
    id_type, _, value = ident.partition(":")
    token = token_of(value) if value.startswith("~") else None
    return {"identifier_type": id_type, **({"identifier": f"~{token}"} if token else {})}


def identity_audit(batch: Any, now_ms: int) -> list[tuple[str, bytes]]:
    """The audit records of what a batch of the profile stage did to identities: each
    merge, split and refused link, with its evidence (event, rule), no personal data.
    (key: the action; the ``unifier audit`` topic's form, see ``serve.privacy.audit``.)"""
    out = []

    def record(action: str, **what: Any) -> None:
        doc = {"at": now_ms, "actor": "worker", "action": action, **what}
        out.append((action, orjson.dumps(doc)))

    for m in batch.merges:
        record("merge", profile=m.winner, other=m.loser, event_id=m.event_id, **_audited_id(m.via))
    for s in batch.splits:
        record("split", profile=s.source, other=s.part, split=s.name, rule=s.rule or "split",
               identifiers=len(s.ids))  # fmt: skip
    for profile, r in batch.refusals:
        other = r.other if r.other.startswith("p_") else _audited_id(r.other).get(
            "identifier", r.other.split(":", 1)[0])  # fmt: skip
        record("refused", profile=profile, other=other, event_id=r.event_id, rule=r.rule,
               **_audited_id(r.ident))  # fmt: skip
    return out


def merge_record(merge: Merged) -> bytes:
    id_type, _, value = merge.via.partition(":")
    return CODEC.encode(
        PROFILE_MERGE,
        {
            "loser": merge.loser,
            "winner": merge.winner,
            "identifier_type": id_type,
            "identifier_value": value,
            "event_id": merge.event_id,
            "merged_at": int(time.time() * 1000),
        },
    )


def receipt_step(
    receipt: str, step: str, subject: str, at_ms: int, **counts: int | str
) -> tuple[str, bytes]:
    """(key, value) of one step of a privacy request done, on the receipts topic
    (``unifier privacy status``): key ``RECEIPT|STEP|SUBJECT`` (a profile id, a
    partition), JSON without personal data."""
    value = {"receipt": receipt, "step": step, "subject": subject, "at": at_ms, **counts}
    return f"{receipt}|{step}|{subject}", orjson.dumps(value)


# --- reading them back ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProfileUpdate:
    """A profile as it is now (the full profile, not a diff)."""

    profile_id: str
    version: int
    updated_at_ms: int
    identifiers: Mapping[str, list[str]]
    traits: Mapping[str, Any]
    computed: Mapping[str, Any]
    changed_fields: tuple[str, ...]
    why: Mapping[str, Any]
    segments: tuple[str, ...] = ()
    position: str | None = None  # where in the workers' log it was made

    def view(self) -> dict[str, Any]:
        """The documented read form, as the API and Redis serve it."""
        return {
            "profile_id": self.profile_id,
            "identifiers": dict(self.identifiers),
            "traits": dict(self.traits),
            "computed": dict(self.computed),
            "segments": list(self.segments),
            "version": self.version,
            "freshness": {
                "event_time": self.computed.get("last_seen"),
                "position": self.position,
            },
        }


@dataclass(frozen=True, slots=True)
class ProfileRemoved:
    """A tombstone: the profile was merged into another (a ``ProfileMerge`` names it;
    ``merged_into`` too) or erased by a privacy request (``reason`` "erased"). Records
    written before the reason was sent (no ``x-removed`` header) read as merged."""

    profile_id: str
    reason: str = "merged"  # merged | erased
    merged_into: str | None = None


#: Headers of a ``profile-updates`` tombstone: why the profile went, and where.
REMOVED_HEADER = "x-removed"
MERGED_INTO_HEADER = "x-merged-into"


def removal_headers(reason: str, merged_into: str | None = None) -> list[tuple[str, bytes]]:
    headers = [(REMOVED_HEADER, reason.encode())]
    if merged_into:
        headers.append((MERGED_INTO_HEADER, merged_into.encode()))
    return headers


@dataclass(frozen=True, slots=True)
class ProfileMerge:
    """kind "merge": ``loser`` was merged into ``winner``; kind "split": ``loser`` was
    split and ``moved`` identifiers (``type:value``) went to the new ``winner``."""

    loser: str
    winner: str
    identifier_type: str  # the type of the identifier that linked them (its value is PII)
    event_id: str
    merged_at_ms: int
    kind: str = "merge"
    moved: tuple[str, ...] = ()
    rule: str = ""


Change = ProfileUpdate | ProfileRemoved | ProfileMerge


class FeedError(RuntimeError):
    """A record on an output topic that this client cannot read."""


def update_from(
    key: bytes | None,
    value: bytes | None,
    headers: Any = None,
    *,
    explained: bool = True,
) -> ProfileUpdate | ProfileRemoved:
    """A ``profile-updates`` record (``headers``: a client's, as a list of pairs or a
    dict; a tombstone's say why the profile went). ``explained=False``: the
    explanation (``why``) is left empty, unread (a reader that never shows it)."""
    if key is None:
        raise FeedError("a profile-updates record without a key")
    if value is None:
        pairs = headers.items() if isinstance(headers, dict) else headers or ()
        said = {
            k: v.decode() if isinstance(v, bytes) else str(v) for k, v in pairs if v is not None
        }
        return ProfileRemoved(
            key.decode(), said.get(REMOVED_HEADER, "merged"), said.get(MERGED_INTO_HEADER)
        )
    try:
        _, r = CODEC.read(value, (PROFILE_UPDATE,))
        return ProfileUpdate(
            r["profile_id"],
            r["version"],
            _millis(r["updated_at"]),
            r["identifiers"],
            r["traits"],
            orjson.loads(r["computed_json"]),
            tuple(r["changed_fields"]),
            orjson.loads(r["why_json"]) if explained else {},
            tuple(r["segments"]),
            r.get("position") or None,
        )
    except (DecodeError, orjson.JSONDecodeError, KeyError) as exc:
        raise FeedError(f"profile-updates record for {key.decode()!r}: {exc}") from None


def merge_from(value: bytes | None) -> ProfileMerge:
    try:
        _, r = CODEC.read(value or b"", (PROFILE_MERGE,))
    except DecodeError as exc:
        raise FeedError(f"profile-merges record: {exc}") from None
    return ProfileMerge(
        r["loser"],
        r["winner"],
        r["identifier_type"],
        r["event_id"],
        _millis(r["merged_at"]),
        r.get("kind", "merge"),
        tuple(r.get("moved", ())),
        r.get("rule", ""),
    )


def _millis(value: Any) -> int:
    # fastavro reads timestamp-millis as an aware datetime.
    return value if isinstance(value, int) else int(value.timestamp() * 1000)
