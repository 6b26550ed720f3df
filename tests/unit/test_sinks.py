"""The output topics as a sink: what followers of profile-updates and profile-merges
read for a batch (the records decoded as a downstream service decodes them)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from profiles.graph.messages import Merged
from profiles.routing import partition_for
from profiles.segments import EvalError, Transition
from schemas.records import (
    ProfileMerge,
    ProfileRemoved,
    ProfileUpdate,
    membership_from,
    merge_from,
    update_from,
)
from sinks.base import ChangeBatch, ProfileChange
from sinks.kafka import ProfileTopicsSink

VIEW = {
    "profile_id": "p_a",
    "identifiers": {"email": ["ana@x.com"]},
    "traits": {"first_name": "Ana"},
    "computed": {"event_count": 1, "first_seen": "2026-11-22T10:00:00Z",
                 "last_seen": "2026-11-22T10:00:00Z"},
    "segments": ["big_spenders"],
    "version": 3,
    "freshness": {"event_time": "2026-11-22T10:00:00Z", "position": "1:42"},
}  # fmt: skip


sent_headers: list[dict[str, bytes]] = []
partitions: list[int] = []


def run(batch: ChangeBatch) -> tuple[list[tuple[str, bytes, bytes | None]], Any]:
    sent: list[tuple[str, bytes, bytes | None]] = []

    async def send(
        topic: str, key: bytes, value: bytes | None, headers: Any = None, partition: int = -1
    ) -> Any:
        sent.append((topic, key, value))
        partitions.append(partition)
        if headers is not None:
            sent_headers.append(dict(headers))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def go() -> Any:
        sink = ProfileTopicsSink(
            send,
            "profile-updates",
            "profile-merges",
            clock=lambda: 1.0,
            membership_topic="segment-membership",
            dlq_topic="touchpoints.dlq",
            partitions=4,
        )
        await sink.write(batch)
        return await sink.flush()

    return sent, asyncio.run(go())


def test_a_changed_profile_a_tombstone_and_a_merge_reach_the_topics() -> None:
    batch = ChangeBatch(
        [
            ProfileChange("p_a", VIEW, {"identifiers": []}, True, ("traits.first_name",)),
            ProfileChange("p_b", {"profile_id": "p_b", "merged_into": "p_a", "version": 9},
                          None, True),
            ProfileChange("p_c", {**VIEW, "profile_id": "p_c"}, {}, False),  # unchanged
        ],
        [Merged("p_b", "p_a", "email:ana@x.com", "e-1")],
        [Transition("p_a", "big_spenders", True, 5000, 7, 3, 1),
         Transition("p_b", "big_spenders", False, 5000, 7, 10, 2)],
        [EvalError("p_a", "broken", 2, "INVALID_ARGUMENT: divide by zero")],
        {partition_for("p_a", 4): 41},
    )  # fmt: skip
    sent_headers.clear()
    partitions.clear()
    sent, delivery = run(batch)
    assert [(t, k) for t, k, _ in sent] == [
        ("profile-merges", b"p_b"),
        ("profile-updates", b"p_a"),
        ("profile-updates", b"p_b"),
        ("segment-membership", b"p_a"),
        ("segment-membership", b"p_b"),
        ("touchpoints.dlq", b"p_a"),
    ]
    assert [membership_from(v) for _, _, v in sent[3:5] if v] == batch.memberships
    assert orjson.loads(sent[5][2] or b"")["segment"] == "broken"
    # the tombstone says where the profile went (a follower re-keys its copy)
    assert sent_headers[0] == {"x-removed": b"merged", "x-merged-into": b"p_a"}
    assert [h["x-source-offset"] for h in sent_headers[1:3]] == [b"41", b"-1"]
    # on the profile's partition as the stages route it, not the producer's hash of the key
    assert partitions[3:5] == [partition_for("p_a", 4), partition_for("p_b", 4)]
    assert sent_headers[3]["x-dlq-reason"] == b"segment broken v2: INVALID_ARGUMENT: divide by zero"
    assert sent_headers[3]["x-dlq-stage"] == b"segments"
    merge = merge_from(sent[0][2])
    assert isinstance(merge, ProfileMerge)
    assert (merge.loser, merge.winner, merge.identifier_type) == ("p_b", "p_a", "email")
    update = update_from(sent[1][1], sent[1][2])
    assert isinstance(update, ProfileUpdate)
    assert update.view() == VIEW
    assert update.changed_fields == ("traits.first_name",)
    assert update.updated_at_ms == 1000
    assert update_from(sent[2][1], sent[2][2], sent_headers[0]) == ProfileRemoved(
        "p_b", "merged", "p_a"
    )
    assert update_from(sent[2][1], sent[2][2]) == ProfileRemoved("p_b")  # an older record
    assert delivery.counts == {"merges": 1, "updates": 2, "memberships": 2, "dead_letters": 1}
    assert delivery.written == 6


def test_an_empty_batch_sends_nothing() -> None:
    sent, delivery = run(ChangeBatch())
    assert sent == []
    assert delivery.written == 0


def test_the_view_is_complete_only_with_every_partitions_marker_in_every_bucket() -> None:
    from sinks.redis_view import describe_view, missing_from

    # each bucket's marks of partitions 0, 1, 2 (a bucket whose shard lost its data has none)
    every = [[b"{}", b"{}", b"{}"]] * 4
    assert missing_from(every, [0, 1, 2]) == []
    one_shard_lost = [*every[:3], [None, None, None]]
    assert missing_from(one_shard_lost, [0, 1, 2]) == [0, 1, 2]
    assert missing_from([*every[:3], [b"{}", None, b"{}"]], [0, 1, 2]) == [1]
    assert describe_view([], None, 3) is None
    assert describe_view([1, 2], None, 3) == "view incomplete: 2 of 3 partitions not written yet"
    progress = b'{"done": 1500, "total": 20000}'
    assert describe_view([0, 1], progress, 3) == "view rebuilding (1,500 of 20,000 profiles)"
    assert describe_view([], progress, 3) is None  # a stale progress key


def _consenting(granted: bool | None, version: int) -> dict[str, Any]:
    consent = {} if granted is None else {"email_marketing": {"granted": granted,
               "at": "2026-11-22T10:00:00.000Z", "source": "web"}}  # fmt: skip
    return {**VIEW, "computed": {**VIEW["computed"], "consent": consent}, "version": version}


def test_an_output_serving_a_purpose_gets_only_who_consented_and_a_removal_on_withdrawal() -> None:
    from profiles.graph.messages import Erased
    from sinks.consent import PurposeTopicSink, consents

    sent: list[tuple[str, bytes, bytes | None]] = []

    async def send(topic: str, key: bytes, value: bytes | None) -> Any:
        sent.append((topic, key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def batch(*changes: ProfileChange, erased: list[Erased] | None = None) -> Any:
        async def go() -> Any:
            sink = PurposeTopicSink(send, "profiles.email", "email_marketing", clock=lambda: 1.0)
            await sink.write(ChangeBatch(list(changes), erased=erased or []))
            return await sink.flush()

        sent.clear()
        return asyncio.run(go())

    why: dict[str, Any] = {"identifiers": [], "merges": [], "refused": []}
    consent_changed = ("computed.consent",)
    # Granted: the whole profile; never answered: denied, nothing sent.
    batch(ProfileChange("p_a", _consenting(True, 3), why, True, consent_changed))
    [(topic, key, value)] = sent
    assert (topic, key) == ("profiles.email", b"p_a") and value is not None
    assert update_from(key, value).profile_id == "p_a"
    batch(ProfileChange("p_b", _consenting(None, 1), why, True, ("traits.first_name",)))
    assert sent == []
    # Withdrawn: a removal in the very batch that applied the withdrawal.
    delivery = batch(ProfileChange("p_a", _consenting(False, 4), why, True, consent_changed))
    assert sent == [("profiles.email", b"p_a", None)]
    assert delivery.counts == {"updates": 0, "removals": 1}
    # Erased: a removal too.
    batch(erased=[Erased("p_c", (), (), "r1")])
    assert sent == [("profiles.email", b"p_c", None)]
    assert consents(_consenting(True, 1), None) and not consents({}, "ads")
