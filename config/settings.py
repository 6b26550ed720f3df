"""The one configuration object. Built once at the entry point and passed down.

Plain data only: this module imports nothing of ours. Settings whose default is a
domain table (identifier types, limits, block lists, trait aliases, source
priorities) default to ``None``, which means "the built-in table"; the domain core
turns settings into its rules in ``profiles.configured``.

Every field can be set from the environment with the ``UNIFIER_`` prefix, e.g.
``UNIFIER_BOOTSTRAP_SERVERS=kafka:9092`` or
``UNIFIER_IDENTIFIER_PRIORITIES='{"user_id": 100, "email": 90}'``.
docker-compose.yml uses exactly these names; a test keeps the two in step.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: An identifier claimed by more profiles than this stops linking (see profiles.rules).
DEFAULT_MAX_CLAIMANTS = 10


def reveal(secret: SecretStr | str) -> str:
    """A secret's value (settings built with ``model_copy(update=...)`` hold plain str)."""
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


class ApiKey(BaseModel):
    """An API key with a name (what the audit trail records) and its scopes."""

    name: str = Field(min_length=1, max_length=100)
    scopes: list[str]


def _key_spec(key: str, spec: list[str] | ApiKey | dict[str, Any]) -> ApiKey:
    """A key's name and scopes, however given (settings built with ``model_copy`` hold
    the JSON form as it is)."""
    if isinstance(spec, ApiKey):
        return spec
    if isinstance(spec, dict):
        return ApiKey.model_validate(spec)
    return ApiKey(name=f"key-{hashlib.sha256(key.encode()).hexdigest()[:8]}", scopes=list(spec))


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "profile-unifier"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNIFIER_", extra="ignore")

    # --- where things are -------------------------------------------------
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]"
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding the view")
    redis_cluster: bool | None = Field(
        None,
        description="Whether UNIFIER_REDIS_URL is a node of a Redis Cluster (the others are "
        "discovered from it); unset: the server is asked once at connect (INFO cluster)",
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Embedded stack state (pids, logs) and worker data",
    )

    archive_dir: Path | None = Field(
        None,
        description="Where the event archive is written (Avro files and a manifest); "
        "default: STATE_DIR/archive",
    )

    # --- topics -----------------------------------------------------------
    app_id: str = Field("profile-unifier", description="Faust app id = consumer group id")
    topic_touchpoints: str = "touchpoints"
    topic_dlq: str = "touchpoints.dlq"
    topic_identity: str = Field(
        "unifier.identity", description="Internal: identity-graph messages keyed by identifier"
    )
    topic_profile_ops: str = Field(
        "unifier.profile-ops", description="Internal: identity-graph messages keyed by profile"
    )
    topic_profile_updates: str = "profile-updates"
    topic_profile_merges: str = "profile-merges"
    topic_segments: str = Field(
        "unifier.segments",
        description="Segment definitions (compacted, key: segment name), written by "
        "`unifier segments apply`; every worker evaluates the set it holds",
    )
    topic_segment_membership: str = Field(
        "segment-membership",
        description="Output: one SegmentMembership record per profile entering or leaving "
        "a segment",
    )
    topic_erasures: str = Field(
        "unifier.erasures",
        description="The erasure ledger (compacted, key: an identifier's token): what the "
        "route stage drops on replay and, when suppressed, for good",
    )
    topic_privacy: str = Field(
        "unifier.privacy",
        description="Privacy request receipts, one record per step (compacted)",
    )
    topic_identity_rules: str = Field(
        "unifier.identity-rules",
        description="Identity rules changed at run time (compacted): identifiers marked "
        "blocked or shared, lowered limits (`unifier identity`)",
    )
    topic_audit: str = Field(
        "unifier.audit",
        description="Audit trail (append-only): privacy actions and reads of profiles "
        "through the API; no personal data",
    )
    topic_schemas: str = Field(
        "unifier.schemas",
        description="Writer schemas announced by producers (key: fingerprint), so workers "
        "read records from newer producers without a Schema Registry",
    )
    schema_registry_url: str | None = Field(
        None,
        description="Confluent Schema Registry URL. Set: producers frame records with a "
        "registry schema id. Unset: Avro single-object encoding. Workers read both.",
    )
    touchpoint_partitions: int = Field(8, ge=1, description="Partitions of the input topic")
    internal_partitions: int = Field(
        8, ge=1, description="Partitions of internal topics, tables and profile-updates"
    )
    replication_factor: int = Field(1, ge=1)

    # --- consumer / producer tuning ----------------------------------------
    session_timeout_s: float = Field(
        6.0,
        ge=1.0,
        description="Consumer session timeout. A join takes half of it on the embedded "
        "broker, so keep it small there; raise it on busy production brokers.",
    )
    commit_interval_s: float = Field(1.0, gt=0, description="Faust offset commit interval")
    snapshot_interval_s: float = Field(
        60.0,
        ge=0,
        description="How often a worker writes snapshots of its tables to "
        "STATE_DIR/worker-data/snapshots, so a restart reads their changelogs from "
        "the latest one, not from the start (0: never)",
    )
    faust_producer_max_batch_size: int = Field(
        16384,
        ge=1,
        description="aiokafka max batch size in bytes for the worker's producer (its "
        "default). Table recovery reads changelogs to their true end "
        "(streams/patches/recovery.py), "
        "so multi-record batches are safe on the embedded broker too.",
    )
    consumer_fetch_max_wait_ms: int = Field(
        20,
        ge=1,
        le=10_000,
        description="How long the broker may hold the worker's fetch when it has no data "
        "(Faust hard-codes 1500). The embedded broker does not answer a waiting fetch when "
        "a record arrives, so every stage-to-stage hop waits about a quarter of this.",
    )
    producer_batch_events: int = Field(500, ge=1, description="Events per input record")
    stage_batch_records: int = Field(
        500,
        ge=1,
        description="Kafka records a worker stage takes and handles as one batch at most: "
        "one table write per key, one record per partition out, one Redis pipeline",
    )
    stage_batch_wait_s: float = Field(
        0.005,
        gt=0,
        description="How long a stage waits to fill a batch before it handles what it has",
    )
    max_record_bytes: int = Field(
        900_000,
        ge=10_000,
        description="Batches larger than this are split (Kafka refuses records over 1 MB "
        "by default); dead letters larger than this are stored truncated",
    )

    # --- identity ---------------------------------------------------------
    identifier_priorities: dict[str, int] | None = Field(
        None,
        description="Identifier types the product accepts, with priorities (higher wins; "
        "JSON); unset: the built-in types (profiles.identifiers.IDENTIFIER_TYPES)",
    )
    default_phone_region: str = Field("US", description="Region for phones without +country")
    email_ignore_dots_domains: list[str] = Field(
        default_factory=list,
        description='Domains where dots in an address do not count, e.g. ["gmail.com", '
        '"googlemail.com"] (off by default)',
    )
    email_strip_plus_domains: list[str] = Field(
        default_factory=list,
        description="Domains where +tags are dropped from addresses (off by default)",
    )
    identity_limits: dict[str, int] | None = Field(
        None,
        description="How many identifiers of a type one profile may hold (JSON); unset: "
        "the built-in types' limits; {}: no limits",
    )
    identity_max_claimants: int = Field(
        DEFAULT_MAX_CLAIMANTS,
        ge=0,
        description="An identifier claimed by more profiles than this stops linking; 0: off",
    )
    identity_block_values: list[str] | None = Field(
        None,
        description="Normalized values that never link profiles (JSON list); unset: the "
        "built-in list (profiles.rules.DEFAULT_BLOCKED_VALUES)",
    )
    identity_block_patterns: list[str] | None = Field(
        None,
        description="Regular expressions (case-insensitive) for values that never link; "
        "unset: the built-in list (profiles.rules.DEFAULT_BLOCKED_PATTERNS)",
    )

    # --- destinations (unifier sync) -------------------------------------------
    destinations_path: Path = Field(
        Path("destinations.toml"),
        description="Where profiles go and which of the apps' edits come back "
        "(README, Destinations): read by `unifier sync`, `unifier lag` and the status page",
    )

    # --- privacy --------------------------------------------------------------
    seal_pii: bool = Field(
        True,
        description="Seal identifiers and personal traits with a key per identifier before "
        "they are written anywhere (crypto-shredding: erasure destroys the keys)",
    )
    keystore_path: Path | None = Field(
        None,
        description="The key store (SQLite) every process that seals or reads personal "
        "data opens; default: STATE_DIR/keys/keys.sqlite",
    )
    master_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Master keys that wrap the data keys, base64 of 32 bytes, newest first "
        "(JSON list; secret); unset: STATE_DIR/keys/master.keys, made on first use",
    )
    personal_traits: list[str] | None = Field(
        None,
        description="Traits that are personal data and are sealed (JSON list; a name ending "
        "in '.' covers its nested traits); unset: profiles.privacy.PERSONAL_TRAITS",
    )
    purpose_topics: dict[str, str] = Field(
        default_factory=dict,
        description="Consent purpose -> output topic of the profiles that consented to it, "
        'e.g. {"email_marketing": "profiles.email-marketing"} (JSON); a profile that withdraws '
        "gets a tombstone there; unknown consent is refused",
    )
    key_cache_s: float = Field(
        30.0,
        gt=0,
        description="How long a process keeps a data key it read: a key destroyed by an "
        "erasure stops being used everywhere within this time",
    )

    # --- profile traits --------------------------------------------------------
    trait_strategies: dict[str, str] = Field(
        default_factory=dict,
        description='Trait -> survivorship strategy, e.g. {"address": "source_priority"} (JSON)',
    )
    attribution_lookback_days: int = Field(
        30,
        ge=1,
        le=3650,
        description="Attribution: how far before an order a campaign touch counts",
    )
    trait_default_strategy: str = Field(
        "latest", description="Strategy of traits not in UNIFIER_TRAIT_STRATEGIES"
    )
    trait_aliases: dict[str, list[str]] | None = Field(
        None,
        description='Trait -> other names for it, e.g. {"industry": ["sector"]} (JSON); '
        "unset: the built-in aliases (profiles.standardize.DEFAULT_ALIASES)",
    )
    source_priorities: dict[str, int] | None = Field(
        None,
        description="Source -> priority for the source_priority strategy (higher wins; "
        "JSON); unset: crm > pos > support > email > web",
    )

    # --- collector (HTTP) ----------------------------------------------------
    collector_host: str = Field("127.0.0.1", description="Address the collector binds")
    collector_port: int = Field(8088, ge=0, le=65535, description="0 picks a free port")
    collector_write_keys: dict[SecretStr, str] = Field(
        default_factory=dict,
        description='Write key -> source name, e.g. {"wk_live_...": "web"} (JSON; secret: '
        "masked in logs and reprs)",
    )
    collector_cors_origins: list[str] = Field(
        default_factory=lambda: ["*"],
        description='Origins browsers may send from (JSON list); ["*"] allows any',
    )
    collector_max_body_bytes: int = Field(
        512 * 1024, ge=1024, description="Larger request bodies get a 413"
    )
    collector_linger_ms: float = Field(
        5.0, ge=0, description="How long events of concurrent requests wait to share a record"
    )
    collector_max_pending_events: int = Field(
        100_000, ge=1, description="Events waiting for the broker before requests get a 503"
    )
    collector_delivery_timeout_s: float = Field(
        30.0, gt=0, description="A request not acknowledged by the broker by then gets a 503"
    )
    collector_journal_keep_s: float = Field(
        300.0,
        ge=0,
        description="How long the collector keeps each record it sends in its journal "
        "(STATE_DIR/collector-journal, written before the send), which `stack up` "
        "replays after the archive: what the embedded broker acknowledged and lost in a "
        "crash before the archiver copied it. 0: no journal (Kafka keeps what it acks)",
    )

    api_host: str = Field("127.0.0.1", description="Address the read API binds")
    api_port: int = Field(8090, ge=0, le=65535, description="Port of the read API")
    api_max_wait_ms: int = Field(
        10_000,
        ge=0,
        le=60_000,
        description="Longest a read may wait for the version or event it asks for "
        "(min_version, read_after)",
    )
    api_keys: dict[SecretStr, list[str] | ApiKey] = Field(
        default_factory=dict,
        description='API key -> scopes, e.g. {"k-...": ["read"]}, or -> a name and scopes, '
        'e.g. {"k-...": {"name": "support-tool", "scopes": ["read", "read_pii"]}} (JSON). '
        "Scopes: read (profiles, masked), read_pii (in clear), admin (privacy requests). "
        "The API needs one (secret: masked in logs and reprs); the name is what the audit "
        "trail records",
    )
    worker_metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve a worker's /metrics, /health and /ready on this port; unset: off",
    )
    worker_metrics_host: str = Field("127.0.0.1", description="Address the metrics server binds")
    worker_name: str | None = Field(
        None,
        description="This worker's name in `unifier lag` and on the status page "
        "(default: host/pid)",
    )
    status_host: str = Field("127.0.0.1", description="Address `unifier status --serve` binds")
    status_port: int = Field(8091, ge=0, le=65535, description="Port of the status page")
    status_workers: list[str] = Field(
        default_factory=list,
        description="Workers' /metrics URLs the status page reads (JSON list); default: the "
        "one at UNIFIER_WORKER_METRICS_HOST:UNIFIER_WORKER_METRICS_PORT when that is set",
    )

    def worker_metrics_urls(self) -> list[str]:
        if self.status_workers:
            return list(self.status_workers)
        if self.worker_metrics_port is None:
            return []
        return [f"http://{self.worker_metrics_host}:{self.worker_metrics_port}/metrics"]

    log_level: str = "INFO"
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="json, text, or auto: text on a terminal, JSON otherwise"
    )

    @field_validator("identifier_priorities")
    @classmethod
    def _non_empty(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None and not value:
            raise ValueError("at least one identifier type is required")
        return value

    @field_validator("identity_block_patterns")
    @classmethod
    def _patterns_compile(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or ():
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"block pattern {pattern!r} does not compile: {exc}") from None
        return value

    @field_validator("default_phone_region")
    @classmethod
    def _upper_region(cls, value: str) -> str:
        return value.upper()

    # --- derived ----------------------------------------------------------
    @property
    def broker_address(self) -> tuple[str, int]:
        """The first bootstrap server as (host, port)."""
        first = self.bootstrap_servers.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        return host or "127.0.0.1", int(port)

    @property
    def redis_address(self) -> tuple[str, int]:
        parts = urlsplit(self.redis_url)
        return parts.hostname or "127.0.0.1", parts.port or 6379

    def write_key_sources(self) -> dict[str, str]:
        """Write key (revealed) -> source name: what the collector checks requests against."""
        return {reveal(k): v for k, v in self.collector_write_keys.items()}

    def api_key_scopes(self) -> dict[str, list[str]]:
        """API key (revealed) -> scopes: what the read API checks requests against."""
        return {reveal(k): _key_spec(reveal(k), v).scopes for k, v in self.api_keys.items()}

    def api_key_names(self) -> dict[str, str]:
        """API key (revealed) -> its name in the audit trail (given, or ``key-`` and 8 hex
        digits of its hash: the key itself is never recorded)."""
        return {reveal(k): _key_spec(reveal(k), v).name for k, v in self.api_keys.items()}

    @property
    def collector_journal_dir(self) -> Path:
        return self.state_dir / "collector-journal"

    @property
    def archive_group(self) -> str:
        """The archiver's consumer group: it resumes from its manifest, and commits only
        so that its lag shows in `unifier lag` and on the status page."""
        return f"{self.app_id}-archive"

    def sync_group(self, group: str) -> str:
        """The consumer group of the `unifier sync` processes of a destination group."""
        return f"{self.app_id}.sync.{group}"

    @property
    def archive_path(self) -> Path:
        return self.archive_dir if self.archive_dir is not None else self.state_dir / "archive"

    def env(self) -> dict[str, str]:
        """These settings as UNIFIER_* environment variables (for child processes),
        secrets included: the environment is how a child gets them."""
        out: dict[str, str] = {}
        # Secrets are revealed by hand: a copy made with ``model_copy(update=...)`` holds
        # plain str keys, which pydantic's SecretStr serializer refuses.
        secret = {"collector_write_keys", "api_keys", "master_keys"}
        dumped = self.model_dump(mode="json", exclude=secret)
        dumped["collector_write_keys"] = self.write_key_sources()
        dumped["api_keys"] = {
            reveal(k): _key_spec(reveal(k), v).model_dump() if not isinstance(v, list) else v
            for k, v in self.api_keys.items()
        }
        dumped["master_keys"] = [reveal(k) for k in self.master_keys]
        for name, value in dumped.items():
            if value is None:  # unset: the child falls back to the same default
                continue
            if isinstance(value, dict | list):
                import orjson

                out[f"UNIFIER_{name.upper()}"] = orjson.dumps(value).decode()
            else:
                out[f"UNIFIER_{name.upper()}"] = str(value)
        return out
