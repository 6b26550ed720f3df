"""Carrying identity-graph messages on internal topics: grouped by partition, one JSON
array per Kafka record, split below the record size limit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from profiles.graph import Merged, Out
from profiles.graph_wire import encode_messages
from profiles.routing import partition_for


def encode_batches(messages: Sequence[Any], max_bytes: int) -> list[bytes]:
    value = encode_messages(list(messages))
    if len(value) <= max_bytes or len(messages) == 1:
        return [value]
    half = len(messages) // 2
    return encode_batches(messages[:half], max_bytes) + encode_batches(messages[half:], max_bytes)


async def send_batches(topic: Any, groups: dict[int, list[Any]], max_bytes: int) -> None:
    for partition, messages in groups.items():
        for value in encode_batches(messages, max_bytes):
            await topic.send(value=value, partition=partition)


def group(outs: list[Out], partitions: int) -> tuple[
    dict[int, list[Any]], dict[int, list[Any]], list[Merged]
]:  # fmt: skip
    """(identity messages by partition, profile messages by partition, merges)."""
    identity: dict[int, list[Any]] = {}
    profile: dict[int, list[Any]] = {}
    merges: list[Merged] = []
    for stage, key, msg in outs:
        if stage == "identity":
            identity.setdefault(partition_for(key, partitions), []).append(msg)
        elif stage == "profile":
            profile.setdefault(partition_for(key, partitions), []).append(msg)
        else:
            merges.append(msg)
    return identity, profile, merges
