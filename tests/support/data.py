"""Test data helpers: JSONL files with deliberate breakage, and the reference answer."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from profiles.profile import Profile
from profiles.routing import profile_key
from profiles.touchpoint import parse_json
from unifier.settings import Settings

BROKEN_LINES = [
    b'{"event_id": "b1", "type": "x", "source": "web"',  # malformed JSON
    b'{"type": "x", "source": "web", "occurred_at": "2026-11-22T10:00:00Z", '
    b'"identifiers": {"email": "a@b.co"}}',  # missing event_id
    b'{"event_id": "b3", "type": "x", "source": "web", "occurred_at": "2026-11-22T10:00:00Z", '
    b'"identifiers": {"shoe_size": "42"}}',  # unknown identifier type
    b'{"event_id": "b4", "type": "x", "source": "web", "occurred_at": "last tuesday", '
    b'"identifiers": {"email": "a@b.co"}}',  # unparseable timestamp
    b'{"event_id": "b5", "type": "x", "source": "web", "occurred_at": "2026-11-22T10:00:00Z", '
    b'"identifiers": {"phone": "0000000000"}}',  # no usable identifier
]
BROKEN_REASONS = [
    "malformed JSON",
    "event_id: required field is missing",
    "unknown identifier type(s) shoe_size",
    "occurred_at: Input should be a valid datetime",
    "no usable identifier (phone: not a valid phone number)",
]


def write_jsonl(
    path: Path, events: Iterable[dict[str, Any]], broken_every: int = 0
) -> dict[int, str]:
    """Write events one per line; with ``broken_every``, insert a broken line that often.
    Returns {line number: expected reason} for the broken lines."""
    broken: dict[int, str] = {}
    lines = []
    k = 0
    for i, event in enumerate(events):
        if broken_every and i % broken_every == broken_every - 1:
            lines.append(BROKEN_LINES[k % len(BROKEN_LINES)])
            broken[len(lines)] = BROKEN_REASONS[k % len(BROKEN_REASONS)]
            k += 1
        lines.append(orjson.dumps(event))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return broken


def reference_views(events: Iterable[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """What the product must show: every event folded single-threaded by the pure core.
    Versions depend on batching, so they are left out."""
    profiles: dict[str, Profile] = {}
    for event in events:
        tp = parse_json(event, settings.identifier_priorities)
        routed = profile_key(tp, settings.identifier_priorities, settings.default_phone_region)
        profile = profiles.setdefault(routed.key, Profile(profile_id=routed.key))
        profile.apply(tp, routed.identifiers)
    return {pid: without_version(p.to_view()) for pid, p in profiles.items()}


def without_version(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k != "version"}
