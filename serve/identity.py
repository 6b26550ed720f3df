"""Identity corrections asked from outside the workers: split a profile.

``request_split`` checks the request against the view (the profile exists, holds every
identifier named, keeps at least one), sends a ``Split`` to the profile's partition
of the profile-ops topic and writes the audit record (who, which profile, how many
identifiers — never their values). The workers do the rest (``profiles.graph.split``)
and publish the parts on ``profile-merges``; ``wait_split`` follows the view until
every identifier named resolves to its new profile.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from config.settings import Settings
from profiles.graph.messages import Split
from profiles.lookup import lookup_key
from profiles.privacy import mask
from profiles.routing import partition_for
from schemas.wire import encode_messages
from serve.privacy import _Out, _sealer, audit, graph_key
from serve.view import RedisProfileView


class SplitRefused(ValueError):
    """A split that cannot be asked for; the message says why (no identifier values)."""


@dataclass
class SplitAsked:
    split: str  # the request's id: names the parts, the audit record, the profile-merges records
    profile_id: str  # the live profile it was sent to (a merged-away id is followed)
    detach: list[tuple[str, str]]  # (type, normalized value)
    before: dict[str, Any] = field(default_factory=dict)  # the profile as the view had it


def new_split_id() -> str:
    return f"sp_{uuid.uuid4().hex[:20]}"


def _masked(pairs: list[tuple[str, str]]) -> str:
    return ", ".join(f"{t}={mask(t, v)}" for t, v in pairs)


def request_split(
    settings: Settings,
    profile_id: str,
    detach: list[tuple[str, str]],
    actor: str = "cli",
    reason: str = "",
) -> SplitAsked:
    """Send a split of ``profile_id`` taking ``detach`` ((type, raw value) pairs) away.
    SplitRefused (IdentifierRefused for a value that cannot be normalized) when it
    cannot be done."""
    if not detach:
        raise SplitRefused("name at least one identifier to detach (--detach TYPE=VALUE)")
    wanted = sorted({(t, lookup_key(settings, t, raw)) for t, raw in detach})
    view = RedisProfileView.for_settings(settings)
    try:
        profile = view.get(profile_id)
    finally:
        view.close()
    if profile is None:
        raise SplitRefused(f"no profile {profile_id}")
    held = {(t, v) for t, values in profile.get("identifiers", {}).items() for v in values}
    missing = [pair for pair in wanted if pair not in held]
    if missing:
        raise SplitRefused(f"profile {profile['profile_id']} does not hold {_masked(missing)}")
    if held <= set(wanted):
        raise SplitRefused(
            f"that is every identifier profile {profile['profile_id']} holds: nothing would "
            "stay to split from (erase it instead: `unifier privacy erase`)"
        )
    pid = profile["profile_id"]
    asked = SplitAsked(new_split_id(), pid, wanted, profile)
    sealer = _sealer(settings)
    keys = tuple(graph_key(settings, sealer, t, v) for t, v in wanted)
    out = _Out(settings)
    message = encode_messages([Split(pid, asked.split, keys, "split")])
    out.send(settings.topic_profile_ops, pid.encode(), message,
             partition_for(pid, settings.internal_partitions))  # fmt: skip
    audit(settings, out, actor, "split", profile=pid, split=asked.split, identifiers=len(keys),
          reason=reason[:200])  # fmt: skip
    out.flush()
    return asked


def wait_split(settings: Settings, asked: SplitAsked, timeout_s: float) -> dict[str, Any] | None:
    """The profile and its new parts once the view shows the split: every detached
    identifier resolves to a profile other than the one split. None if not by then."""
    view = RedisProfileView.for_settings(settings)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            found = [view.lookup(t, v) for t, v in asked.detach]
            parts = {f["profile_id"]: f for f in found if f is not None}
            if found and all(f is not None for f in found) and asked.profile_id not in parts:
                kept = view.get(asked.profile_id)
                return {"split": asked.split, "profile": kept, "parts": list(parts.values())}
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)
    finally:
        view.close()
