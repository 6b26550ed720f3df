"""Identity corrections asked from outside the workers: split a profile, and change the
identity rules (block an identifier, mark one shared, lower a limit) with the profiles
merged against the new rule split as if it had always held.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from config.settings import Settings
from profiles.configured import identity_rules
from profiles.graph.messages import Split
from profiles.lookup import lookup_key
from profiles.privacy import mask
from profiles.routing import partition_for
from profiles.rules import BLOCKED, mark_of, rule_key
from schemas.wire import encode_messages
from serve.privacy import _Out, _sealer, audit, graph_key, read_compacted
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


# --- identity rules changed at run time ----------------------------------------------


def _rules_copy(settings: Settings) -> Any:
    """Where the rules topic is kept on disk too: the embedded broker's log lives in
    memory, and ``unifier stack up`` publishes them again from here (``restore_rules``)."""
    return settings.state_dir / "identity-rules.json"


def read_rules(settings: Settings) -> dict[str, dict[str, Any]]:
    """The rule changes in force: record key -> record (the identity-rules topic)."""
    raw = read_compacted(settings, settings.topic_identity_rules)
    return {k: orjson.loads(v) for k, v in raw.items()}


def publish_rule(
    settings: Settings, key: str, record: dict[str, Any] | None, actor: str, reason: str
) -> None:
    """Put a rule change on the identity-rules topic (None: lift it), keep the copy on
    disk and write the audit record."""
    out = _Out(settings)
    value = None if record is None else orjson.dumps(record)
    out.send(settings.topic_identity_rules, key.encode(), value, 0)
    kind, _, what = key.partition("|")
    audit(settings, out, actor, "identity-rule", rule=kind, what=what.split(":~")[0],
          lifted=record is None, reason=reason[:200])  # fmt: skip
    out.flush()
    path = _rules_copy(settings)
    kept = orjson.loads(path.read_bytes()) if path.exists() else {}
    if record is None:
        kept.pop(key, None)
    else:
        kept[key] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(kept, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def restore_rules(settings: Settings) -> int:
    """Publish the rules again from the copy on disk when their topic came back empty
    (the embedded broker restarted); how many."""
    path = _rules_copy(settings)
    kept = orjson.loads(path.read_bytes()) if path.exists() else {}
    if not kept or read_compacted(settings, settings.topic_identity_rules):
        return 0
    out = _Out(settings)
    for key, record in kept.items():
        out.send(settings.topic_identity_rules, key.encode(), orjson.dumps(record), 0)
    out.flush()
    return len(kept)


def mark_key(settings: Settings, id_type: str, normalized: str) -> tuple[str, str]:
    """(the mark key of an identifier, its graph key now)."""
    graph = graph_key(settings, _sealer(settings), id_type, normalized)
    return mark_of(graph), graph


@dataclass
class RuleSent:
    rule: str  # "block email", "shared phone", "limit email=2"
    split: str  # the id of the splits sent ("" when none)
    profiles: list[str] = field(default_factory=list)  # the profiles asked to split
    before: dict[str, dict[str, Any]] = field(default_factory=dict)  # their views then


#: How long workers take to read a rule change (their follower polls every 0.2 s): a
#: split sent after it meets workers that drop the identifier from new events already.
RULE_SETTLE_S = 1.0


def mark_identifier(
    settings: Settings, id_type: str, raw: str, mark: str, actor: str = "cli", reason: str = ""
) -> RuleSent:
    """Block an identifier (``mark`` BLOCKED) or mark it shared (SHARED) from now on,
    and split the profile that holds it along what it alone linked."""
    normalized = lookup_key(settings, id_type, raw)
    key, graph = mark_key(settings, id_type, normalized)
    record = {"mark": mark, "type": id_type, "at": int(time.time() * 1000), "by": actor,
              "reason": reason[:200]}  # fmt: skip
    publish_rule(settings, rule_key("mark", key), record, actor, reason)
    kind = "block" if mark == BLOCKED else "shared"
    sent = RuleSent(f"{kind} {id_type}", new_split_id())
    view = RedisProfileView.for_settings(settings)
    try:
        holder = view.lookup(id_type, normalized)
    finally:
        view.close()
    if holder is None or sum(len(v) for v in holder["identifiers"].values()) < 2:
        return sent
    time.sleep(RULE_SETTLE_S)
    _send_splits(settings, [holder], sent, kind, (graph,), (), actor)
    return sent


def lower_limit(
    settings: Settings,
    id_type: str,
    limit: int,
    actor: str = "cli",
    reason: str = "",
    progress: Callable[[int], None] | None = None,
) -> RuleSent:
    """At most ``limit`` identifiers of ``id_type`` per profile from now on, and the
    profiles that hold more split as if it had always been so."""
    if limit < 1:
        raise SplitRefused("a limit is 1 or more")
    record = {"limit": limit, "type": id_type, "at": int(time.time() * 1000), "by": actor,
              "reason": reason[:200]}  # fmt: skip
    publish_rule(settings, rule_key("limit", id_type), record, actor, reason)
    sent = RuleSent(f"limit {id_type}={limit}", new_split_id())
    view = RedisProfileView.for_settings(settings)
    over = []
    try:
        for n, profile in enumerate(view.scan(), 1):
            if len(profile.get("identifiers", {}).get(id_type, [])) > limit:
                over.append(profile)
            if progress is not None and n % 1000 == 0:
                progress(n)
    finally:
        view.close()
    if over:
        time.sleep(RULE_SETTLE_S)
        _send_splits(settings, over, sent, "limit", (), ((id_type, limit),), actor)
    return sent


def _send_splits(
    settings: Settings,
    profiles: list[dict[str, Any]],
    sent: RuleSent,
    kind: str,
    marked: tuple[str, ...],
    limits: tuple[tuple[str, int], ...],
    actor: str,
) -> None:
    out = _Out(settings)
    for profile in profiles:
        pid = profile["profile_id"]
        message = encode_messages([Split(pid, sent.split, marked, sent.rule, kind, limits)])
        out.send(settings.topic_profile_ops, pid.encode(), message,
                 partition_for(pid, settings.internal_partitions))  # fmt: skip
        sent.profiles.append(pid)
        sent.before[pid] = profile
    audit(settings, out, actor, "split", split=sent.split, rule=sent.rule,
          profiles=len(profiles))  # fmt: skip
    out.flush()


def wait_rule(settings: Settings, sent: RuleSent, timeout_s: float) -> dict[str, list[str]] | None:
    """Once the workers applied it (each profile's version moved on): for each profile
    asked to split, the profiles its former identifiers are in now (None if not by
    then)."""
    view = RedisProfileView.for_settings(settings)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            seen = {pid: view.get(pid) for pid in sent.before}
            if all(
                now is not None and now["version"] > sent.before[pid]["version"]
                for pid, now in seen.items()
            ):
                return {pid: sorted(_holders(view, before)) for pid, before in sent.before.items()}
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)
    finally:
        view.close()


def _holders(view: RedisProfileView, before: dict[str, Any]) -> set[str]:
    found = set()
    for id_type, values in before.get("identifiers", {}).items():
        for value in values:
            profile = view.lookup(id_type, value)
            if profile is not None:
                found.add(profile["profile_id"])
    return found


# --- preview --------------------------------------------------------------------------


def stored_profiles(
    settings: Settings, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Every live profile as the workers' table holds it (its changelog, read to its
    end on every partition): profile id -> node, its events loadable."""
    from schemas.wire import node_from
    from serve.privacy import read_partition
    from streams.topology import topology

    changelog = topology(settings).tables["profiles"].changelog
    records: dict[str, bytes | None] = {}
    read = 0
    for part in range(settings.internal_partitions):
        for msg in read_partition(settings, changelog, part, timeout_s=600):
            records[orjson.loads(msg.key() or b'""')] = msg.value()
            read += 1
            if progress is not None and read % 10_000 == 0:
                progress(read)
    nodes = {}
    for key, value in records.items():
        if "#" in key or value is None:
            continue

        def chunk(n: int, pid: str = key) -> bytes:
            raw = records.get(f"{pid}#{n}")
            if raw is None:
                raise SplitRefused(f"part {n} of {pid}'s events is missing from the table")
            return raw

        node = node_from(value, chunk)
        if node.redirect is None and node.erased is None and node.state.held:
            nodes[key] = node
    return nodes


def preview(
    settings: Settings,
    marks: list[tuple[str, str, str]],
    limits: dict[str, int],
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """What rules would do to the profiles there are, changing nothing: for each
    profile a mark (``(type, raw value, BLOCKED or SHARED)``) or a lowered limit would
    split, its parts (identifiers, events); and the refused links a raised limit would
    no longer refuse (they may merge on the next event that carries them)."""
    from profiles.graph.split import plan_recluster
    from profiles.rules import SHARED

    sealer = _sealer(settings) if settings.seal_pii else None
    marked = {}
    for id_type, raw, mark in marks:
        key, _graph = mark_key(settings, id_type, lookup_key(settings, id_type, raw))
        marked[key] = mark
    configured = identity_rules(settings).limits
    nodes = stored_profiles(settings, progress)
    splits, merges = [], []
    for pid, node in sorted(nodes.items()):
        held_marks = {i: marked[mark_of(i)] for i in node.state.held if mark_of(i) in marked}
        plans = []
        for kind in ("block", "shared"):
            wanted = BLOCKED if kind == "block" else SHARED
            ids = tuple(i for i, m in held_marks.items() if m == wanted)
            if ids:
                plans.append(plan_recluster(pid, node.state, node.pending, "preview", kind, ids))
        lowered = {t: n for t, n in limits.items() if n < configured.get(t, 10**9)}
        if lowered and any(
            sum(1 for i in node.state.held if i.split(":", 1)[0] == t) > n
            for t, n in lowered.items()
        ):
            plans.append(plan_recluster(pid, node.state, node.pending, "preview", "limit",
                                        (), lowered))  # fmt: skip
        for plan in plans:
            if plan is not None:
                splits.append(_previewed(pid, plan, sealer))
        raised = {t for t, n in limits.items() if n > configured.get(t, 10**9)}
        for r in sorted(node.state.refused, key=lambda r: (r.event_id, r.ident)):
            if r.rule.startswith("limit ") and r.rule[6:].split("=")[0] in raised:
                merges.append({"profile_id": pid, "event_id": r.event_id, "rule": r.rule,
                               "with": r.other})  # fmt: skip
    return {"profiles_read": len(nodes), "would_split": splits, "may_merge": merges}


def _previewed(pid: str, plan: Any, sealer: Any) -> dict[str, Any]:
    def shown(part: Any) -> dict[str, Any]:
        ids: dict[str, list[str]] = {}
        for ident in sorted(part.state.held):
            id_type, value = ident.split(":", 1)
            ids.setdefault(id_type, []).append(value)
        if sealer is not None:
            ids = {t: sealer.open_many(vs) for t, vs in ids.items()}
        return {"identifiers": ids, "events": len(part.state.seen)}

    return {"profile_id": pid, "rest": shown(plan.main), "parts": [shown(p) for p in plan.parts]}
