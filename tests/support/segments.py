"""Segments in tests: definitions applied as `unifier segments apply` does, and the check
that the membership topic, the view and a fresh evaluation of every final profile agree."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from config.settings import Settings
from profiles.segments import Catalog, Definition, Transition, members_of, reconcile
from schemas.records import membership_from
from tests.support.kafka import consume_all
from unifier.segments import plan, publish, read_definitions

#: Segments whose answers change as events arrive and as profiles merge, with no window
#: that could pass while a test checks them.
STEADY = {
    "buyers": "profile.computed.orders >= 1",
    "regulars": "profile.computed.event_count >= 4",
    "browsers_only": "profile.computed.event_count >= 2 && profile.computed.orders == 0",
    "many_emails": "has(profile.identifiers.email) && size(profile.identifiers.email) >= 2",
    "known_and_buying": '"buyers" in profile.segments && has(profile.identifiers.user_id)',
}


def apply(settings: Settings, where: dict[str, str]) -> list[Definition]:
    wanted = [Definition(name, text, name, 0) for name, text in where.items()]
    p = plan(wanted, read_definitions(settings))
    publish(settings, p)
    return p.publish


def memberships(settings: Settings, idle_s: float = 1.5) -> list[Transition]:
    records = consume_all(
        settings, settings.topic_segment_membership, settings.internal_partitions, idle_s=idle_s
    )
    return [membership_from(m.value()) for m in records if m.value()]


def replayed(records: list[Transition]) -> set[tuple[str, str]]:
    """Who is in what, from the membership topic read from the start; asserts that per
    profile and segment the records alternate enter/exit, numbered 1, 2, ... (no
    transition twice, none missing)."""
    by: dict[tuple[str, str], list[Transition]] = defaultdict(list)
    for t in records:
        by[(t.profile_id, t.segment)].append(t)
    for key, moves in by.items():
        assert [t.seq for t in moves] == list(range(1, len(moves) + 1)), (key, moves)
        assert [t.entered for t in moves] == [i % 2 == 0 for i in range(len(moves))], key
    return {key for key, moves in by.items() if moves[-1].entered}


def assert_membership_agrees(settings: Settings, views: dict[str, dict[str, Any]]) -> None:
    """The topic replayed = the view's segments = every definition evaluated afresh on
    every final profile."""
    catalog = Catalog.of(read_definitions(settings).values())
    now_ms = int(time.time() * 1000)
    expected = set()
    for pid, view in views.items():
        entries: dict[str, list[int]] = {}
        reconcile(pid, view, entries, catalog, now_ms)
        expected |= {(pid, name) for name in members_of(entries)}
    held = {(pid, s) for pid, view in views.items() for s in view.get("segments", [])}
    assert held == expected
    assert replayed(memberships(settings)) == expected
