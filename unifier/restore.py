"""``unifier stack up`` on an empty embedded broker: the customer base back from the
event archive.

The embedded broker keeps its log in memory: after ``stack down`` (or a crash) it comes
back with empty topics. When the archive (``producers.archive``) holds records and the
touchpoints topic is empty, ``stack up`` replays the archive into it before the worker
starts; the worker rebuilds its tables, the output topics and the Redis view from it
(the view is emptied first: it came from the log this replaces). The archive then
opens a new epoch at the topic's end, so the replayed records are not archived twice.
The segment definitions come back too, from the copy the workers keep in Redis, and the
erasure ledger from its copy in the key store (before the replay: the worker's route
stage drops what it says is erased, so an erased person does not come back).
"""

from __future__ import annotations

import orjson
from confluent_kafka import Consumer, TopicPartition

from config.settings import Settings
from producers.archive import MANIFEST, Manifest, Replayed, replay
from producers.journal import read_journal, replay_journal
from profiles.segments import Definition
from serve.identity import restore_rules
from serve.privacy import restore_ledger
from sinks.redis_view import DEFINITIONS_KEY, PREFIX
from sinks.redisconn import connect
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


def clear_view(settings: Settings) -> int:
    """Every key of the view, its completeness markers included."""
    client = connect(settings.redis_url, settings.redis_cluster)
    try:
        keys = list(client.scan_iter(match=f"{PREFIX}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start : start + 1000])
        return len(keys)
    finally:
        client.close()


def archived_records(settings: Settings) -> int:
    directory = settings.archive_path
    if not (directory / MANIFEST).exists():
        return 0
    return sum(p.records for p in Manifest.load(directory, settings.topic_touchpoints).parts)


def has_journal(settings: Settings) -> bool:
    """Whether the collector's journal holds a record (the first one read tells)."""
    directory = settings.collector_journal_dir
    return directory.exists() and next(read_journal(directory), None) is not None


def restore_definitions(settings: Settings) -> int:
    """The segment definitions the workers last kept in Redis (``sinks.redis_view``),
    published again when the broker came back without them; how many. Redis keeps
    them in its append-only file across the restart; the topic was in the broker's
    memory."""
    from unifier.segments import Plan, publish, read_definitions

    client = connect(settings.redis_url, settings.redis_cluster)
    try:
        kept = client.hgetall(DEFINITIONS_KEY)
    finally:
        client.close()
    if not kept or read_definitions(settings):
        return 0
    definitions = []
    for value in kept.values():
        try:
            definitions.append(Definition.from_json(orjson.loads(value)))
        except (ValueError, KeyError, TypeError):
            continue
    publish(settings, Plan(added=definitions))  # their versions as they were
    return len(definitions)


def restore_from_archive(settings: Settings, progress: bool = False) -> Replayed | None:
    """Replay the archive, then the collector's journal, when the touchpoints topic is
    empty and they are not; None when there was nothing to do. Records in both (most
    of the journal) are applied once: the stages are idempotent by event id."""
    definitions = restore_definitions(settings)  # before the view (and they) are cleared
    # Before any replay: the route drops what the ledger says is erased, and links by the
    # identity rules as operators changed them.
    restore_ledger(settings)
    restore_rules(settings)
    journal = has_journal(settings)
    if not (archived_records(settings) or journal) or any(topic_ends(settings).values()):
        return Replayed(definitions=definitions) if definitions else None
    directory = settings.archive_path
    # The view (kept by Redis's append-only file) came from the log this replay
    # replaces: with identity limits, which profile keeps a shared identifier depends
    # on arrival order, and the archive may be shorter than what the view saw. Emptied,
    # it is written again from the replay; readers see "view incomplete" until then.
    clear_view(settings)
    result = (
        replay(settings, directory, progress=progress)
        if (directory / MANIFEST).exists()
        else Replayed()
    )
    if journal:
        result.journal = replay_journal(
            settings.bootstrap_servers, settings.topic_touchpoints, settings.collector_journal_dir
        )
    manifest = Manifest.load(directory, settings.topic_touchpoints)
    manifest.new_epoch(topic_ends(settings))
    directory.mkdir(parents=True, exist_ok=True)
    manifest.save(directory)
    result.definitions = definitions
    return result
