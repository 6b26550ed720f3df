"""A webhook destination: profile events POSTed as signed JSON batches.

**Events.** Each is an object with ``id`` (the idempotency key: the same change
always has the same id, so a receiver drops what it has seen), ``type``,
``profile_id``, ``version`` and ``at``:

- ``profile.updated`` — ``data``: the destination's fields (renamed as configured);
- ``profile.merged`` — ``merged_into``: the surviving profile;
- ``profile.erased`` — every copy of the person must go;
- ``profile.removed`` — ``reason``: ``consent`` (the purpose was withdrawn) or
  ``segment`` (the profile left the destination's segment);
- ``segment.entered`` / ``segment.exited`` — ``segment``: its name.

A request's body is ``{"events": [...]}``, at most ``batch_events`` of them, a
profile's events in the order they happened. Headers: ``X-Unifier-Delivery`` (the
request's id) and ``X-Unifier-Signature: t=UNIX_SECONDS,v1=HEX`` where ``HEX`` is
HMAC-SHA256, keyed by the secret (``secret_env``), of ``"{t}." + body``. A receiver
recomputes it and refuses a mismatch or a ``t`` too old (``verify``).

**Failures.** A 2xx delivers. 401, 403, 408, 429 and 5xx, a timeout or a refused
connection are retried with exponential backoff (``Retry-After`` is honoured, up to
``max_backoff_s``); another 4xx (400, 413…) will not get better: the request is split
in halves until the events it refuses are alone, and those are dead-lettered with the
answer as the reason. Parking and dead-lettering are the sync process's
(``unifier.sync``): events that still fail after ``park_after_s`` leave the way.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from profiles.profile import iso
from schemas.records import ProfileRemoved, ProfileUpdate
from sinks.destinations.config import Destination, DestinationError
from sinks.destinations.fields import in_scope, wanted

SIGNATURE_HEADER = "X-Unifier-Signature"
DELIVERY_HEADER = "X-Unifier-Delivery"
#: Answers worth asking again: the receiver is busy or down, or refuses our signature
#: (a secret being rotated on one side is fixed in configuration, not by dropping).
RETRYABLE = frozenset({401, 403, 408, 425, 429, 500, 502, 503, 504})


def sign(secret: bytes, body: bytes, t: int) -> str:
    """The signature header's value for a body sent at ``t`` (Unix seconds)."""
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, now: float, tolerance_s: float = 300) -> bool:
    """What a receiver does: the signature matches and is fresh."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(now - t) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, t), header)


def event_id(dest: str, profile_id: str, version: int, kind: str, extra: str = "") -> str:
    """The idempotency key of one event: the same change, the same id."""
    digest = hashlib.sha256(f"{dest}|{profile_id}|{version}|{kind}|{extra}".encode())
    return digest.hexdigest()[:32]


@dataclass
class Known:
    """What a webhook destination last told its receiver of one profile."""

    version: int = 0
    segments: tuple[str, ...] = ()
    sent: bool = False  # it was in scope: a removal is owed when it leaves


@dataclass
class Outcome:
    """One request's result: delivered, worth retrying (and when), or refused."""

    ok: bool
    retry_after_s: float | None = None
    reason: str = ""
    status: int = 0


def events_for(
    dest: Destination,
    op: ProfileUpdate | ProfileRemoved,
    known: Known | None,
    now_ms: int,
    region: str = "US",
) -> tuple[list[dict[str, Any]], Known | None]:
    """The events one change makes, and what the receiver knows after them (None:
    nothing any more). An update not newer than what was sent makes none (a replay)."""
    pid = op.profile_id
    at = iso(now_ms)
    if isinstance(op, ProfileRemoved):
        if (known is None or not known.sent) and op.reason != "erased":
            return [], None  # merged away before it was ever sent
        version = (known.version if known else 0) + 1
        ev: dict[str, Any] = {"type": "profile.erased"}
        if op.reason != "erased" and op.merged_into is not None:
            ev = {"type": "profile.merged", "merged_into": op.merged_into}
        elif op.reason != "erased":  # a tombstone that does not say where it went
            ev = {"type": "profile.removed", "reason": "merged"}
        ev.update(profile_id=pid, version=version, at=at,
                  id=event_id(dest.name, pid, version, ev["type"]))  # fmt: skip
        return [ev], None
    if known is not None and op.version <= known.version:
        return [], known
    out: list[dict[str, Any]] = []
    before = known or Known()
    now_in = in_scope(dest, op)
    segs = tuple(sorted(op.segments))

    def add(kind: str, **more: Any) -> None:
        extra = str(more.get("segment", ""))
        out.append({"id": event_id(dest.name, pid, op.version, kind, extra), "type": kind,
                    "profile_id": pid, "version": op.version, "at": at, **more})  # fmt: skip

    if now_in:
        data = {c: wanted(s, op, None, region) for c, s in dest.fields.items()}
        add("profile.updated", data=data)
        was = set(before.segments) if before.sent else set()
        for s in sorted(set(segs) - was):
            add("segment.entered", segment=s)
        for s in sorted(was - set(segs)):
            add("segment.exited", segment=s)
        return out, Known(op.version, segs, True)
    if before.sent:
        reason = "segment" if dest.segment is not None and dest.segment not in segs else "consent"
        add("profile.removed", reason=reason)
    return out, Known(op.version, segs, False)


class WebhookClient:
    """POSTs batches to one URL over a kept-alive connection."""

    def __init__(
        self,
        dest: Destination,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dest = dest
        self.name = dest.name
        env = os.environ.get(dest.secret_env, "")
        self.secret = secret if secret is not None else env.encode()
        if not self.secret:
            raise DestinationError(
                f"destinations.{dest.name}: no signing secret; set {dest.secret_env} "
                "(the variable its secret_env names) to the secret the receiver checks"
            )
        self._clock = clock
        url = urlsplit(dest.url)
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = kind(self._host, self._port, timeout=self.dest.timeout_s)
        return self._conn

    def post(self, events: list[dict[str, Any]]) -> Outcome:
        body = orjson.dumps({"events": events})
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: uuid.uuid4().hex,
            SIGNATURE_HEADER: sign(self.secret, body, int(self._clock())),
            "User-Agent": "profile-unifier-sync",
        }
        try:
            conn = self._connection()
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
            said = resp.read(2000)
            status = resp.status
            retry_after = resp.getheader("Retry-After")
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Outcome(False, None, f"{type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            return Outcome(True, status=status)
        reason = f"HTTP {status}: {said.decode(errors='replace')[:200]}"
        if status in RETRYABLE:
            return Outcome(False, _seconds(retry_after), reason, status)
        return Outcome(False, None, reason, status)  # will not get better

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def retryable(outcome: Outcome) -> bool:
    return not outcome.ok and (outcome.status == 0 or outcome.status in RETRYABLE)


def _seconds(header: str | None) -> float | None:
    if header is None:
        return None
    try:
        return max(float(header), 0.0)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(parsedate_to_datetime(header).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None


def batches(events: list[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    for at in range(0, len(events), size):
        yield events[at : at + size]


@dataclass
class Backoff:
    """Exponential backoff with a ceiling; ``Retry-After`` wins when given."""

    first_s: float = 0.25
    max_s: float = 60.0
    attempt: int = 0

    def next(self, retry_after: float | None = None) -> float:
        self.attempt += 1
        if retry_after is not None:
            return min(retry_after, self.max_s)
        return min(self.first_s * (2 ** (self.attempt - 1)), self.max_s)


@dataclass
class Parked:
    """Events waiting on the retry topic, keyed by profile."""

    profile_id: str
    events: list[dict[str, Any]]
    first_failure_ms: int
    attempts: int
    reason: str
    headers: Mapping[str, str] = field(default_factory=dict)
