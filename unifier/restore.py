"""``unifier stack up`` on an empty embedded broker: the customer base back from the
event archive.

The embedded broker keeps its log in memory: after ``stack down`` (or a crash) it comes
back with empty topics. When the archive (``producers.archive``) holds records and the
touchpoints topic is empty, ``stack up`` replays the archive into it before the worker
starts; the worker rebuilds its tables and the output topics from it (the Redis view,
kept by its append-only file, already holds the same versions and refuses nothing
newer). The archive then opens a new epoch at the topic's end, so the replayed
records are not archived twice.
"""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition

from config.settings import Settings
from producers.archive import MANIFEST, Manifest, Replayed, replay
from streams.patches.recovery import true_ends


def topic_ends(settings: Settings) -> dict[int, int]:
    """The end offset (last + 1) of each partition of the touchpoints topic."""
    topic = settings.topic_touchpoints
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "-"})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        reported = {
            (topic, p): consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in partitions
        }
    finally:
        consumer.close()
    # The embedded broker under-reports the end after multi-record batches: read it.
    return {p: end for (_t, p), end in true_ends(settings.bootstrap_servers, reported).items()}


def archived_records(settings: Settings) -> int:
    directory = settings.archive_path
    if not (directory / MANIFEST).exists():
        return 0
    return sum(p.records for p in Manifest.load(directory, settings.topic_touchpoints).parts)


def restore_from_archive(settings: Settings, progress: bool = False) -> Replayed | None:
    """Replay the archive when the touchpoints topic is empty and the archive is not;
    None when there was nothing to do."""
    if not archived_records(settings) or any(topic_ends(settings).values()):
        return None
    directory = settings.archive_path
    result = replay(settings, directory, progress=progress)
    manifest = Manifest.load(directory, settings.topic_touchpoints)
    manifest.new_epoch(topic_ends(settings))
    manifest.save(directory)
    return result
