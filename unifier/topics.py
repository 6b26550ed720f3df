"""Every topic the product uses, created explicitly with its partition count.

Creating topics up front matters: a broker that auto-creates topics on first
metadata request gives them a default partition count, and a Faust table whose
source topic and changelog disagree refuses to start. What the topics are (names,
partitions, config, purpose) is the topology's (``streams.topology``); this module
creates them and checks what exists.
"""

from __future__ import annotations

from confluent_kafka.admin import AdminClient, NewTopic

from config.settings import Settings
from streams.topology import TopicSpec, topology


class TopicMismatch(RuntimeError):
    """An existing topic has another partition count than the settings ask for."""


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic, changelogs included, in the order they are created (the topology's)."""
    return topology(settings).topics()


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.bootstrap_servers})


def existing_partitions(admin: AdminClient, timeout: float = 10.0) -> dict[str, int]:
    """Partition counts of the topics that exist (asks for all topics, so it creates none)."""
    meta = admin.list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in meta.topics.items() if not t.error}


def ensure_topics(settings: Settings, timeout: float = 15.0) -> list[tuple[TopicSpec, str]]:
    """Create missing topics; returns (spec, "created" | "exists") per topic.

    Raises TopicMismatch, naming the topic and both counts, when an existing
    topic's partition count differs — before creating anything.
    """
    admin = admin_client(settings)
    have = existing_partitions(admin, timeout)
    specs = topic_specs(settings)
    wrong = [s for s in specs if s.name in have and have[s.name] != s.partitions]
    if wrong:
        lines = [
            f"topic '{s.name}' exists with {have[s.name]} partitions, settings ask for "
            f"{s.partitions}"
            for s in wrong
        ]
        raise TopicMismatch(
            "; ".join(lines) + ". Partition counts cannot change under a running product "
            "(keys would move); adjust the settings or recreate the topic."
        )
    missing = [s for s in specs if s.name not in have]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(s.name, s.partitions, settings.replication_factor, config=s.config)
                for s in missing
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for fut in futures.values():
            try:
                fut.result()
            except Exception as exc:
                # Someone else created it between our look and our create: fine if it matches.
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    return [(s, "created" if s in missing else "exists") for s in specs]


def missing_topics(settings: Settings, names: list[str], timeout: float = 10.0) -> list[str]:
    have = existing_partitions(admin_client(settings), timeout)
    return [n for n in names if n not in have]
