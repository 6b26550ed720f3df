"""The topology: every topic, stage, table and changelog of the product, in one place.

Names come from settings (``UNIFIER_TOPIC_*``, ``UNIFIER_APP_ID``); what exists, how
it is partitioned and configured, and which stage reads and writes what is said here
only. ``unifier topics create`` creates ``topics()``, ``unifier lag`` and the status
page watch ``stages``, and ``streams.app`` declares the Faust topics and tables from
it. Pure data: importing this module imports no Kafka client.

::

    [touchpoints] ─▶ route ─▶ [identity] ─▶ identity ─▶ [profile-ops] ─▶ profile ─▶ sinks
         │                          ▲   (identity table)        │  (profiles table)   │
         └▶ [touchpoints.dlq]       └───────────────────────────┘    [profile-updates] ◀┤
                                                                     [profile-merges]  ◀┤
                                                                     Redis view        ◀┘
"""

from __future__ import annotations

from dataclasses import dataclass, field

from config.settings import Settings
from sinks.consent import purpose_topics

#: The dead-letter topic keeps what could not be used for this long.
DLQ_RETENTION_MS = 30 * 24 * 3600 * 1000
#: The audit trail is kept two years: what a regulator may ask about.
AUDIT_RETENTION_MS = 2 * 365 * 24 * 3600 * 1000
_COMPACT = {"cleanup.policy": "compact"}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    purpose: str = ""


@dataclass(frozen=True)
class TableSpec:
    """A Faust table: keyed like the topic of the stage that owns it."""

    name: str
    changelog: str  # Faust names it ``<app id>-<table>-changelog``
    purpose: str


@dataclass(frozen=True)
class Stage:
    """One agent: the topic it consumes (its consumer group's lag is its lag), the table
    it owns, and the topics it writes."""

    name: str
    consumes: str
    partitions: int
    table: str | None
    emits: tuple[str, ...]


def changelog_topic(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"


@dataclass(frozen=True)
class Topology:
    touchpoints: TopicSpec
    dlq: TopicSpec
    identity: TopicSpec
    profile_ops: TopicSpec
    profile_updates: TopicSpec
    profile_merges: TopicSpec
    schemas: TopicSpec
    segments: TopicSpec
    segment_membership: TopicSpec
    erasures: TopicSpec
    identity_rules: TopicSpec
    privacy: TopicSpec
    audit: TopicSpec
    purposes: dict[str, TopicSpec]  # consent purpose -> its output (sinks.consent)
    tables: dict[str, TableSpec]
    stages: tuple[Stage, ...]

    def topics(self) -> list[TopicSpec]:
        """Every topic, changelogs included, in the order ``topics create`` makes them."""
        internal = self.identity.partitions
        changelogs = [
            TopicSpec(t.changelog, internal, dict(_COMPACT), f"internal: changelog of {t.purpose}")
            for t in self.tables.values()
        ]
        return [
            self.touchpoints,
            self.dlq,
            self.identity,
            self.profile_ops,
            *changelogs,
            self.profile_updates,
            self.profile_merges,
            self.segment_membership,
            self.schemas,
            self.segments,
            self.erasures,
            self.identity_rules,
            self.privacy,
            self.audit,
            *self.purposes.values(),
        ]

    def stage_inputs(self) -> list[str]:
        """The topics the worker's consumer group reads (one per stage)."""
        return [s.consumes for s in self.stages]


def topology(settings: Settings) -> Topology:
    internal = settings.internal_partitions
    app_id = settings.app_id
    s = settings
    touchpoints = TopicSpec(
        s.topic_touchpoints, s.touchpoint_partitions, {}, "input: touchpoints from every source"
    )
    dlq = TopicSpec(
        s.topic_dlq,
        1,
        {"retention.ms": str(DLQ_RETENTION_MS)},
        "input records that could not be decoded or validated",
    )
    identity = TopicSpec(
        s.topic_identity, internal, {}, "internal: identity-graph messages, by identifier"
    )
    ops = TopicSpec(
        s.topic_profile_ops, internal, {}, "internal: identity-graph messages, by profile"
    )
    updates = TopicSpec(
        s.topic_profile_updates, internal, dict(_COMPACT), "output: the latest profile per id"
    )
    merges = TopicSpec(
        s.topic_profile_merges, internal, {}, "output: one record per merge of two profiles"
    )
    schemas = TopicSpec(s.topic_schemas, 1, dict(_COMPACT), "writer schemas announced by producers")
    segments = TopicSpec(
        s.topic_segments, 1, dict(_COMPACT), "segment definitions (unifier segments apply)"
    )
    membership = TopicSpec(
        s.topic_segment_membership,
        internal,
        {},
        "output: one record per profile entering or leaving a segment",
    )
    erasures = TopicSpec(
        s.topic_erasures, 1, dict(_COMPACT), "erasure ledger: erased identifiers' tokens"
    )
    identity_rules = TopicSpec(
        s.topic_identity_rules, 1, dict(_COMPACT), "identity rules changed at run time"
    )
    privacy = TopicSpec(s.topic_privacy, 1, dict(_COMPACT), "privacy request receipts")
    audit = TopicSpec(
        s.topic_audit,
        1,
        {"retention.ms": str(AUDIT_RETENTION_MS)},
        "audit trail of privacy actions and profile reads",
    )
    purposes = {
        purpose: TopicSpec(
            topic, internal, dict(_COMPACT), f"output: the profiles that consented to {purpose}"
        )
        for purpose, topic in sorted(purpose_topics(s.purpose_topics).items())
    }
    tables = {
        "identity": TableSpec(
            "identity",
            changelog_topic(app_id, "identity"),
            "the identity table (identifier -> profile)",
        ),
        "profiles": TableSpec(
            "profiles", changelog_topic(app_id, "profiles"), "the profiles table"
        ),
    }
    stages = (
        Stage("route", touchpoints.name, touchpoints.partitions, None, (identity.name, dlq.name)),
        Stage(
            "identity",
            identity.name,
            internal,
            "identity",
            (ops.name, identity.name, erasures.name, privacy.name),
        ),
        Stage(
            "profile",
            ops.name,
            internal,
            "profiles",
            (
                identity.name,
                ops.name,
                updates.name,
                merges.name,
                membership.name,
                privacy.name,
                audit.name,
                *(t.name for t in purposes.values()),
            ),
        ),
    )
    return Topology(
        touchpoints,
        dlq,
        identity,
        ops,
        updates,
        merges,
        schemas,
        segments,
        membership,
        erasures,
        identity_rules,
        privacy,
        audit,
        purposes,
        tables,
        stages,
    )
