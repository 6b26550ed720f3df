"""Prometheus metrics of a worker process (prometheus-client), served with its health
and readiness on ``UNIFIER_WORKER_METRICS_PORT`` when set (streams.ops).

Counters count handling, and Kafka delivers at least once: after a crash or a
rebalance a re-delivered record is counted again. They show rates and trends; exact
numbers are in the profiles (``computed.refused_links``, ``profiles why``).
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram

MERGES = Counter(
    "unifier_identity_merges",
    "Profiles merged into another (one per merged-away profile)",
)
SPLITS = Counter(
    "unifier_identity_splits",
    "Parts split off a profile (one per new profile a split made)",
)
REFUSED = Counter(
    "unifier_identity_refused_links",
    "Links between identifiers or profiles refused by an identity rule",
    ["rule"],
)


RECORDS = Counter(
    "unifier_stage_records", "Kafka records a stage handled (route, identity, profile)", ["stage"]
)
MESSAGES_IN = Counter(
    "unifier_stage_messages_in",
    "What a stage took in: touchpoints (route), graph messages (identity, profile)",
    ["stage"],
)
MESSAGES_OUT = Counter(
    "unifier_stage_messages_out",
    "Messages a stage sent on, by destination (identity, profile, merges, updates)",
    ["stage", "to"],
)
DLQ = Counter(
    "unifier_dlq_records",
    "Records sent to the dead-letter topic, by reason (the stage and check that refused)",
    ["reason"],
)
FOUNDED = Counter(
    "unifier_profiles_founded",
    "Profiles founded by a first-seen identifier; founded minus merged is the live count",
)
EVENT_TO_VIEW = Histogram(
    "unifier_event_to_view_seconds",
    "From an event's time (occurred_at) to the Redis write of its profile",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
REDIS_BATCH = Histogram(
    "unifier_redis_write_batch_profiles",
    "Profiles written in one Redis pipeline",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
REDIS_SECONDS = Histogram(
    "unifier_redis_write_seconds",
    "Duration of one Redis pipeline write (retries included)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
#: A view sink's name -> (seconds per flush, profiles per flush) it is measured by.
VIEW_SINKS = {"redis-view": (REDIS_SECONDS, REDIS_BATCH)}

REBALANCES = Counter(
    "unifier_rebalances", "Partition assignments this worker received (one per rebalance)"
)


def count_refusals(rules: Tally[str]) -> None:
    for rule, n in rules.items():
        REFUSED.labels(rule=rule).inc(n)


SEGMENT_MOVES = Counter(
    "unifier_segment_transitions",
    "Profiles that entered or left a segment (segment-membership records sent)",
    ["segment", "move"],
)
SEGMENT_ERRORS = Counter(
    "unifier_segment_errors",
    "Segment evaluations that failed for a profile (each dead-lettered with the reason)",
    ["segment"],
)
SEGMENT_EVALUATIONS_SENT = Counter(
    "unifier_segment_reevaluations",
    "Profiles sent for another look at their segments, by why (window, backfill)",
    ["why"],
)
PRIVACY_DROPPED = Counter(
    "unifier_privacy_dropped",
    "Events not applied because they carry an erased identifier: 'erased' (sealed "
    "before its erasure: a replay, or in flight), 'suppressed' (sent after it, with "
    "suppression on)",
    ["why"],
)
PRIVACY_ERASED = Counter(
    "unifier_privacy_erased",
    "What erasures removed: profiles (and redirects), identifiers (keys destroyed), "
    "shared identifiers kept",
    ["what"],
)
PRIVACY_LEDGER = Gauge(
    "unifier_privacy_ledger_identifiers",
    "Identifiers in the erasure ledger this worker has read, by whether later events "
    "carrying them are suppressed",
    ["state"],
)
