"""Consent on outputs: an output that serves a purpose gets only the profiles that
consented to it.

Every profile carries its latest consent per purpose (``computed.consent``: granted or
not, when, from which source; ``profile-updates`` has it too). An output declares the
purpose it serves; ``consents`` is the one rule: **granted, or not sent** — a purpose a
profile never answered counts as refused (as Segment treats an empty consent object).

``PurposeTopicSink`` is such an output: a compacted topic per purpose
(``UNIFIER_PURPOSE_TOPICS``, e.g. ``{"email_marketing": "profiles.email-marketing"}``)
with the full profile of every consenting one. A profile that withdraws its consent
(or is merged away, or erased) gets a tombstone in the same batch, so the topic's
readers — an email tool's sync — remove it. The destinations of ``sinks`` declare
their purpose the same way and use ``consents``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from schemas.records import encode_update
from sinks.base import ChangeBatch, Delivery

Send = Callable[..., Awaitable[Awaitable[Any]]]


def consents(view: Mapping[str, Any], purpose: str | None) -> bool:
    """Whether a profile may go to an output serving ``purpose`` (None: an output with
    no purpose, e.g. the operational ``profile-updates``)."""
    if purpose is None:
        return True
    answer = (view.get("computed") or {}).get("consent", {}).get(purpose)
    return isinstance(answer, Mapping) and answer.get("granted") is True


class PurposeTopicSink:
    """The profiles that consented to one purpose, on a topic of their own."""

    def __init__(
        self, send: Send, topic: str, purpose: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.name = f"purpose:{purpose}"
        self.topic = topic
        self.purpose = purpose
        self._send = send
        self._clock = clock
        self._pending: list[Awaitable[Any]] = []
        self._counts = {"updates": 0, "removals": 0}

    async def write(self, batch: ChangeBatch) -> None:
        now_ms = int(self._clock() * 1000)
        asked = "computed.consent"
        for change in batch.changes:
            if change.removed:  # merged away: its survivor is sent in its place
                if change.publish:
                    await self._queue(change.profile_id, None)
                continue
            if consents(change.view, self.purpose):
                if change.publish:
                    assert change.why is not None
                    value = encode_update(change.view, change.why, list(change.changed), now_ms)
                    await self._queue(change.profile_id, value)
            elif change.publish and asked in change.changed:
                await self._queue(change.profile_id, None)  # withdrawn (or refused)
        for gone in batch.erased:
            await self._queue(gone.profile, None)

    async def _queue(self, key: str, value: bytes | None) -> None:
        self._pending.append(await self._send(self.topic, key.encode(), value))
        self._counts["updates" if value is not None else "removals"] += 1

    async def flush(self) -> Delivery:
        pending, self._pending = self._pending, []
        counts, self._counts = self._counts, {"updates": 0, "removals": 0}
        started = time.perf_counter()
        if pending:
            await asyncio.gather(*pending)
        return Delivery(self.name, len(pending), 0, time.perf_counter() - started, counts)

    async def close(self) -> None:
        await self.flush()


def purpose_topics(topics: Mapping[str, str]) -> dict[str, str]:
    """Purpose -> topic, checked: a purpose and a topic name each, no topic twice."""
    seen: set[str] = set()
    for purpose, topic in topics.items():
        if not purpose or not topic:
            raise ValueError("UNIFIER_PURPOSE_TOPICS: a purpose and a topic name are required")
        if topic in seen:
            raise ValueError(f"UNIFIER_PURPOSE_TOPICS: topic {topic!r} serves two purposes")
        seen.add(topic)
    return dict(topics)
