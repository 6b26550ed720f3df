"""How far behind each stage is, per partition (``unifier lag``, the status page).

The stages, and the topics whose consumer-group lag is theirs, come from the
topology (``streams.topology``).

End offsets come from the high watermark in fetch responses (a consumer's cached
watermarks), not from ListOffsets: the embedded broker answers ListOffsets wrongly
after multi-record batches, and the fetch high watermark is right on every broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_NOT_AVAILABLE, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from config.kafkalog import client_logger
from config.settings import Settings
from streams.topology import topology


@dataclass(frozen=True)
class PartitionLag:
    stage: str
    group: str
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int
    # How old the oldest record not yet processed is (its producer timestamp), in
    # seconds; 0 when caught up, None when it could not be read in time.
    lag_seconds: float | None = 0.0
    # The group member that owns the partition (client id and host), when the broker
    # says (the embedded broker describes groups without their members).
    owner: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def owners_of(description: Any) -> dict[tuple[str, int], str]:
    """(topic, partition) -> "client-id (host)" from a ConsumerGroupDescription."""
    out: dict[tuple[str, int], str] = {}
    for member in getattr(description, "members", None) or []:
        owner = f"{member.client_id} ({str(member.host).lstrip('/')})"
        assignment = getattr(member, "assignment", None)
        for tp in getattr(assignment, "topic_partitions", None) or []:
            out[(tp.topic, tp.partition)] = owner
    return out


def registered_owners(settings: Settings) -> dict[tuple[str, int], str]:
    """(topic, partition) -> worker name, from what the workers say they own
    (``streams.registry``); {} when Redis does not answer. Of two claims (a worker
    that has just lost a partition has not refreshed yet), the newest wins."""
    from sinks.redisconn import UNAVAILABLE, connect, mget
    from streams.registry import WORKERS_PREFIX

    try:
        client = connect(settings.redis_url, settings.redis_cluster, timeout=2)
        try:
            keys = list(client.scan_iter(match=f"{WORKERS_PREFIX}*", count=100))
            entries = [orjson.loads(raw) for raw in mget(client, keys) if raw] if keys else []
        finally:
            client.close()
    except UNAVAILABLE:
        return {}
    out: dict[tuple[str, int], str] = {}
    for e in sorted(entries, key=lambda e: e["at"]):
        for topic, partitions in e["partitions"].items():
            for p in partitions:
                out[(topic, p)] = e["name"]
    return out


def stages(settings: Settings) -> list[tuple[str, str, int]]:
    """(stage, topic it consumes, partitions), in pipeline order (from the topology)."""
    return [(s.name, s.consumes, s.partitions) for s in topology(settings).stages]


#: The stage name of the archiver's rows (``unifier archive run``).
ARCHIVE = "archive"


#: Rows of the sync processes (``unifier sync``) are named ``sync:GROUP``.
SYNC = "sync:"


def pipeline_stage(row: PartitionLag) -> bool:
    """A stage of the pipeline, not a follower of it (the archiver, a sync group):
    ``lag --wait`` waits for these only."""
    return row.stage != ARCHIVE and not row.stage.startswith(SYNC)


def sync_groups(settings: Settings) -> dict[str, str]:
    """``sync:GROUP`` -> consumer group, for each group in ``destinations.toml``
    (none when the file is missing or cannot be read: lag is shown without them)."""
    from sinks.destinations.config import DestinationError, load_destinations

    if not settings.destinations_path.exists():
        return {}
    try:
        dests = load_destinations(settings.destinations_path)
    except DestinationError:
        return {}
    return {f"{SYNC}{g}": settings.sync_group(g) for g in sorted({d.group for d in dests})}


def group_lags(settings: Settings, groups: dict[str, str]) -> list[PartitionLag]:
    """The lag on profile-updates of the given consumer groups (group -> topic)."""
    with LagProbe(settings, {f"{SYNC}{g}": g for g in groups}) as probe:
        return [r for r in probe.measure() if r.stage.startswith(SYNC)]


class LagProbe:
    """Keeps one probe consumer fetching, so cached high watermarks stay fresh."""

    def __init__(self, settings: Settings, syncs: dict[str, str] | None = None) -> None:
        """``syncs``: sync groups to show (stage name -> consumer group); default:
        those of ``destinations.toml``, when there is one."""
        self.settings = settings
        self.group = settings.app_id
        self._syncs = sync_groups(settings) if syncs is None else syncs
        common = {
            "bootstrap.servers": settings.bootstrap_servers,
            "enable.auto.commit": False,
            "logger": client_logger(),  # a broker that is down: one line, not a flood
        }
        # Reads the worker group's commits; never subscribes, so it never joins the group.
        self._offsets = Consumer({**common, "group.id": self.group})
        # And the archiver's (a row "archive" once an archiver has committed).
        self._archive = Consumer({**common, "group.id": settings.archive_group})
        # Fetches to learn high watermarks; assigned manually, never commits.
        self._fetcher = Consumer(
            {
                **common,
                "group.id": f"{self.group}.lag-probe",
                "fetch.wait.max.ms": 100,
                "enable.partition.eof": False,
            }
        )
        self._tps = [TopicPartition(topic, p) for _, topic, n in stages(settings) for p in range(n)]
        updates = topology(settings).profile_updates
        self._sync_tps = [TopicPartition(updates.name, p) for p in range(updates.partitions)]
        if self._syncs:
            self._tps += self._sync_tps
        self._sync_offsets = {
            stage: Consumer({**common, "group.id": group}) for stage, group in self._syncs.items()
        }
        self._assigned = False
        # Reads the oldest unprocessed record of each lagging partition, for its time.
        self._admin: AdminClient | None = None
        self._admin_conf: dict[str, Any] = {
            "bootstrap.servers": settings.bootstrap_servers,
            "logger": client_logger(),
        }
        self._peeker = Consumer(
            {**common, "group.id": f"{self.group}.lag-peek", "fetch.wait.max.ms": 50,
             "enable.partition.eof": True}
        )  # fmt: skip

    def _owners(self) -> dict[tuple[str, int], str]:
        try:
            if self._admin is None:
                self._admin = AdminClient(self._admin_conf)
            [future] = self._admin.describe_consumer_groups(
                [self.group], request_timeout=5
            ).values()
            owners = owners_of(future.result())
        except Exception:  # owners are a nicety: never fail the lag for them
            owners = {}
        # The embedded broker describes groups without members: the workers' own word.
        return owners or registered_owners(self.settings)

    def close(self) -> None:
        self._peeker.close()
        self._fetcher.close()
        self._offsets.close()
        self._archive.close()
        for c in self._sync_offsets.values():
            c.close()

    def _oldest_times(
        self, starts: dict[tuple[str, int], int], timeout: float = 2.0
    ) -> dict[tuple[str, int], float]:
        """The timestamp (s) of the record at each (topic, partition)'s start offset."""
        if not starts:
            return {}
        self._peeker.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
        found: dict[tuple[str, int], float] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(starts) and time.monotonic() < deadline:
            for msg in self._peeker.consume(num_messages=len(starts) * 4, timeout=0.1):
                where = (msg.topic() or "", msg.partition() or 0)
                if msg.error() is None and where not in found:
                    kind, stamp = msg.timestamp()
                    if kind != TIMESTAMP_NOT_AVAILABLE:
                        found[where] = stamp / 1000
                    self._peeker.incremental_unassign([TopicPartition(*where)])
        self._peeker.unassign()
        return found

    def __enter__(self) -> LagProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _committed(self) -> dict[tuple[str, int], int | None]:
        out: dict[tuple[str, int], int | None] = {}
        pipeline = [tp for tp in self._tps if tp not in self._sync_tps or not self._syncs]
        for tp in self._offsets.committed(pipeline, timeout=10):
            out[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
        return out

    def _synced(self) -> dict[str, dict[int, int | None]]:
        """Sync stage -> profile-updates partition -> its group's next offset."""
        return {
            stage: {tp.partition: tp.offset if tp.offset >= 0 else None
                    for tp in c.committed(self._sync_tps, timeout=10)}
            for stage, c in self._sync_offsets.items()
        }  # fmt: skip

    def _archived(self) -> dict[int, int | None]:
        """Touchpoints partition -> the archiver's next offset; empty when no archiver
        ever committed (none runs with this group)."""
        topic = self.settings.topic_touchpoints
        tps = [TopicPartition(topic, p) for p in range(self.settings.touchpoint_partitions)]
        got = {tp.partition: tp.offset if tp.offset >= 0 else None
               for tp in self._archive.committed(tps, timeout=10)}  # fmt: skip
        return got if any(o is not None for o in got.values()) else {}

    def _pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            # Records are discarded: only the fetch responses' watermarks matter.
            self._fetcher.consume(num_messages=10000, timeout=0.05)

    def measure(self, timeout: float = 15.0) -> list[PartitionLag]:
        committed = self._committed()
        if not self._assigned:
            self._fetcher.assign(
                [
                    TopicPartition(tp.topic, tp.partition, c if c is not None else OFFSET_BEGINNING)
                    for tp in self._tps
                    for c in [committed.get((tp.topic, tp.partition))]
                ]
            )
            self._assigned = True
        deadline = time.monotonic() + timeout
        self._pump(0.25)
        ends: dict[tuple[str, int], int] = {}
        while True:
            for tp in self._tps:
                _low, high = self._fetcher.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    ends[(tp.topic, tp.partition)] = high
            if len(ends) == len(self._tps):
                break
            if time.monotonic() > deadline:
                missing = [
                    f"{t}[{p}]"
                    for t, p in ((x.topic, x.partition) for x in self._tps)
                    if (t, p) not in ends
                ]
                raise TimeoutError(f"no fetch response yet for {', '.join(missing[:8])}")
            self._pump(0.2)
        lagging = {
            where: c if c is not None else OFFSET_BEGINNING
            for where, c in committed.items()
            if ends[where] > (c or 0)
        }
        oldest = self._oldest_times(lagging)
        owners = self._owners()
        now = time.time()
        rows = []
        for stage, parts in self._synced().items():
            for tp in self._sync_tps:
                c = parts.get(tp.partition)
                end = ends[(tp.topic, tp.partition)]
                lag = max(end - (c or 0), 0)
                rows.append(PartitionLag(stage, self._syncs[stage], tp.topic, tp.partition, c,
                                         end, lag, 0.0 if lag == 0 else None))  # fmt: skip
        for stage, topic, n in stages(self.settings):
            for p in range(n):
                c = committed[(topic, p)]
                end = ends[(topic, p)]
                lag = max(end - (c or 0), 0)
                stamp = oldest.get((topic, p))
                seconds = 0.0 if lag == 0 else None if stamp is None else max(now - stamp, 0.0)
                owner = owners.get((topic, p))
                rows.append(PartitionLag(stage, self.group, topic, p, c, end, lag, seconds, owner))
        topic = self.settings.topic_touchpoints
        for p, c in sorted(self._archived().items()):
            end = ends.get((topic, p), 0)
            lag = max(end - (c or 0), 0)
            # How old its oldest unarchived record is: not read (the archive is no
            # stage of the pipeline); the record count is what an alert needs.
            seconds = 0.0 if lag == 0 else None
            rows.append(
                PartitionLag(ARCHIVE, self.settings.archive_group, topic, p, c, end, lag, seconds)
            )
        return rows

    def wait(
        self,
        timeout: float,
        interval: float = 0.5,
        on_check: Callable[[list[PartitionLag]], None] | None = None,
    ) -> bool:
        """Block until every stage has caught up; False on timeout.

        Caught up twice in a row, ``interval`` apart: the second check's watermarks
        were fetched after the first check's commits were read, so records a stage
        produced for the next one before committing are counted.
        """
        deadline = time.monotonic() + timeout
        streak = 0
        while time.monotonic() < deadline:
            rows = self.measure(timeout=max(deadline - time.monotonic(), 1.0))
            if on_check:
                on_check(rows)
            # The pipeline's stages: an archiver stopped (or behind) holds no one up.
            streak = streak + 1 if all(r.lag == 0 for r in rows if pipeline_stage(r)) else 0
            if streak >= 2:
                return True
            self._pump(interval)
        return False
