"""Test data helpers: JSONL files with deliberate breakage, and the reference answer."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from config.settings import Settings
from profiles.configured import identity_rules, trait_alias_index, trait_rules
from profiles.graph.node import ProfileNode
from profiles.projection import view_of
from profiles.reference import reference_states
from profiles.touchpoint import parse_json

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


Comparable = dict[tuple[str, ...], dict[str, Any]]


def comparable(views: Iterable[dict[str, Any]]) -> Comparable:
    """Profiles keyed by their identifiers, without what depends on arrival order and
    batching (profile ids, versions, which ids were merged away), and without segments
    (which depend on the definitions in force: ``tests.support.segments`` checks them)."""
    out: Comparable = {}
    for view in views:
        ids = tuple(sorted(f"{t}:{v}" for t, vs in view["identifiers"].items() for v in vs))
        body = {
            k: v
            for k, v in view.items()
            if k not in ("profile_id", "version", "segments", "freshness")
        }
        body["computed"] = {
            k: v for k, v in view["computed"].items() if k not in ("merged_from", "refused_links")
        }
        out[ids] = body
    return out


def reference_views(events: Iterable[dict[str, Any]], settings: Settings) -> Comparable:
    """What the product must show: the reference union-find's clusters, each with every
    event anchored in it folded in, single-threaded. Exact when limits are off; with
    limits, which of two people keeps a shared identifier depends on arrival order."""
    rules = identity_rules(settings)
    tps = [parse_json(e, rules.priorities) for e in events]
    states = reference_states(
        tps, rules, settings.default_phone_region, trait_alias_index(settings)
    )
    traits = trait_rules(settings)
    return comparable(view_of("reference", ProfileNode(state=s), traits) for s in states)


def assert_same_profiles(got: Comparable, want: Comparable) -> None:
    """``got == want``, or a failure that says what differs in a few lines (a CI log
    shows only its tail: pytest's full diff of 700 profiles buries the answer): how
    many profiles are missing, extra or different, and for the first of each where
    their identifiers went — into another profile (wrong stitching) or nowhere (lost
    events)."""
    if got == want:
        return
    holder = {ident: ids for ids in got for ident in ids}
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    differ = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])

    def count(views: Comparable, keys: Iterable[tuple[str, ...]]) -> int:
        return sum(views[k]["computed"]["event_count"] for k in keys)

    lines = [
        f"{len(got)} profiles, {len(want)} expected: {len(missing)} missing "
        f"({count(want, missing)} events), {len(extra)} extra ({count(got, extra)} events), "
        f"{len(differ)} different",
    ]
    for ids in missing[:8]:
        went = sorted({holder[i] for i in ids if i in holder})
        lines.append(
            f"missing {ids} ({want[ids]['computed']['event_count']} events): "
            + (f"its identifiers are in {went}" if went else "its identifiers are nowhere")
        )
    for ids in extra[:8]:
        lines.append(f"extra {ids} ({got[ids]['computed']['event_count']} events)")
    for ids in differ[:8]:
        fields = sorted(
            f"{part}.{k}"
            for part in ("computed", "traits")
            for k in want[ids][part].keys() | got[ids][part].keys()
            if want[ids][part].get(k) != got[ids][part].get(k)
        )
        lines.append(
            f"different {ids}: event_count {got[ids]['computed']['event_count']}, expected "
            f"{want[ids]['computed']['event_count']}; fields {fields}"
        )
    raise AssertionError("\n".join(lines))
