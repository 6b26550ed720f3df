"""Carrying identity-graph messages on internal topics: grouped by partition, one JSON
array per Kafka record, split below the record size limit."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from profiles.graph.messages import Erased, Merged, Out, Shredded, SplitOff
from profiles.routing import partition_for
from schemas.wire import WireError, decode_messages, encode_messages
from streams import metrics
from streams.dlq import dead_letter
from streams.producer import ProducedTopic


def encode_batches(messages: Sequence[Any], max_bytes: int) -> list[bytes]:
    value = encode_messages(list(messages))
    if len(value) <= max_bytes or len(messages) == 1:
        return [value]
    half = len(messages) // 2
    return encode_batches(messages[:half], max_bytes) + encode_batches(messages[half:], max_bytes)


def send_batches(topic: ProducedTopic, groups: dict[int, list[Any]], max_bytes: int) -> int:
    """Queue each partition's messages on the worker's producer; returns how many
    records (the stage then awaits ``FastProducer.delivered``)."""
    records = 0
    for partition, messages in groups.items():
        for value in encode_batches(messages, max_bytes):
            topic.send(value, partition)
            records += 1
    return records


@dataclass
class Grouped:
    identity: dict[int, list[Any]] = field(default_factory=dict)  # by partition
    profile: dict[int, list[Any]] = field(default_factory=dict)  # by partition
    merges: list[Merged] = field(default_factory=list)
    splits: list[SplitOff] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # rule -> links refused
    # Privacy: profiles erased (for the sinks), identifiers whose keys go, shared
    # identifiers kept (receipt, identifier), and messages dropped (why -> how many).
    erased: list[Erased] = field(default_factory=list)
    shredded: list[Shredded] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)


def group(outs: list[Out], partitions: int) -> Grouped:
    g = Grouped()
    listed: dict[str, list[Any]] = {"erased": g.erased, "shredded": g.shredded}
    counted = {"refused": g.refused, "dropped": g.dropped}
    for stage, key, msg in outs:
        if stage in ("identity", "profile"):
            by_partition = g.identity if stage == "identity" else g.profile
            by_partition.setdefault(partition_for(key, partitions), []).append(msg)
        elif stage == "merges":
            (g.merges if isinstance(msg, Merged) else g.splits).append(msg)
        elif stage in listed:
            listed[stage].append(msg)
        elif stage in counted:
            counted[stage][key] += 1
        elif stage == "kept":
            g.kept.append((key, msg))
        elif stage not in ("unindexed", "audit"):  # (the profile stage's sinks get those)
            raise ValueError(f"unknown output stage {stage!r}")
    return g


async def messages_in(
    events: Sequence[Any], stage: str, dlq: Any, log: logging.Logger
) -> list[Any]:
    """Every message of a batch of records, in order; a record that is not a list of
    graph messages is dead-lettered with the reason."""
    out: list[Any] = []
    for event in events:
        try:
            out += decode_messages(event.value)
        except WireError as exc:
            await dead_letter(dlq, event, f"{stage}.decode", str(exc), log=log)
    metrics.MESSAGES_IN.labels(stage=stage).inc(len(out))
    return out


def send_internal(
    grouped: Grouped, identity_topic: ProducedTopic, profile_topic: ProducedTopic, max_bytes: int
) -> int:
    """Queue a batch's messages for other partitions; returns how many records
    (``count_internal`` once they are delivered)."""
    records = send_batches(identity_topic, grouped.identity, max_bytes)
    return records + send_batches(profile_topic, grouped.profile, max_bytes)


def count_internal(stage: str, grouped: Grouped) -> None:
    """Metrics of a batch's delivered messages: merges, refusals, messages out."""
    metrics.MERGES.inc(len(grouped.merges))
    if grouped.splits:
        metrics.SPLITS.inc(len(grouped.splits))
    metrics.count_refusals(grouped.refused)
    for why, n in grouped.dropped.items():
        metrics.PRIVACY_DROPPED.labels(why=why).inc(n)
    for what, n in (
        ("profiles", len(grouped.erased)),
        ("identifiers", len(grouped.shredded)),
        ("shared identifiers kept", len(grouped.kept)),
    ):
        if n:
            metrics.PRIVACY_ERASED.labels(what=what).inc(n)
    for to, n in (
        ("identity", sum(map(len, grouped.identity.values()))),
        ("profile", sum(map(len, grouped.profile.values()))),
    ):
        if n:
            metrics.MESSAGES_OUT.labels(stage=stage, to=to).inc(n)
