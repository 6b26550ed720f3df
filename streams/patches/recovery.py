"""Table recovery reads each changelog to its true end.

**Corrects** (faust-streaming 0.15.3 on the embedded broker): Faust recovers a table
by reading its changelog partitions up to the end offsets the broker reports
(``Recovery._build_highwaters`` → ``consumer.highwaters``, a ListOffsets request).
Tansu 0.6 answers ListOffsets with the base offset of a partition's last record batch
+ 1 (ENVIRONMENT.md, trap 3), so after a batch of several records the newest ones
were never read back: a restarted worker came back without its latest table writes.

**What holds with this patch**: the reported end is only the starting point; each
partition is read from the record before it to the end of what the broker has, and
the end is the one the fetch response reports (its high watermark, right on every
broker). On a broker whose ListOffsets is right the answer is the same. A partition
whose end cannot be read in time fails the recovery (and the worker's start) rather
than let a table come back short. The worker's producer can therefore batch changelog
records normally.

**Pinned to** faust-streaming 0.15.3 (``streams.patches.PATCHED_FOR``). **Shown by**
``tests/integration/test_lag.py::test_table_recovery_reads_a_changelog_to_the_end_of_its_last_batch``
and the restart tests in ``tests/integration/test_pipeline.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from faust.tables.recovery import Recovery

from config.kafkalog import client_logger
from streams.patches import require_patched_faust

log = logging.getLogger("unifier.recovery")

_ORIGINAL = Recovery._build_highwaters

#: (changelog partitions, Faust's start offsets for them) -> None, updating the offsets.
Restore = Callable[[Any, Any], Awaitable[None]]
#: {active changelog partition: offset read up to} at the end of a recovery -> None.
Recovered = Callable[[Mapping[Any, int | None]], None]


def true_ends(
    bootstrap_servers: str, reported: Mapping[tuple[str, int], int], timeout_s: float = 30.0
) -> dict[tuple[str, int], int]:
    """The end offset (last offset + 1) of each (topic, partition), given the end the
    broker reported for it; partitions reported empty stay as they are."""
    ends = dict(reported)
    todo = {tp: end for tp, end in reported.items() if end > 0}
    if not todo:
        return ends
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "unifier-recovery-ends",  # never joined, never committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
            "logger": client_logger(),
        }
    )
    try:
        consumer.assign([TopicPartition(t, p, end - 1) for (t, p), end in todo.items()])
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise KafkaException(
                    KafkaError(
                        KafkaError._TIMED_OUT,
                        f"could not read the end of {sorted(todo)} within {timeout_s:.0f} s",
                    )
                )
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            tp = (msg.topic(), msg.partition())
            err = msg.error()
            if err is not None and err.code() != KafkaError._PARTITION_EOF:
                raise KafkaException(err)
            if tp not in todo:
                continue
            offset = msg.offset() or 0
            if err is None:
                ends[tp] = max(ends[tp], offset + 1)
                continue
            # At the end: the fetch response's high watermark, right on every broker.
            _low, high = consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
            ends[tp] = max(ends[tp], high, offset)
            del todo[tp]
    finally:
        consumer.close()
    return ends


_ORIGINAL_OFFSETS = Recovery._build_offsets
_ORIGINAL_COMPLETED = Recovery.on_recovery_completed


def install(
    bootstrap_servers: str,
    restore: Restore | None = None,
    recovered: Recovered | None = None,
) -> None:
    """Patch Faust's recovery (once per process) to use ``true_ends``; ``restore``
    (``streams.snapshots.Snapshots.restore``) loads table snapshots and sets the
    active partitions' start offsets to them; ``recovered``
    (``streams.snapshots.Snapshots.recovered``) hears, at the end of each recovery,
    the active partitions and the offsets read up to."""
    require_patched_faust("streams/patches/recovery.py")

    async def _build_offsets(
        self: Any, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        await _ORIGINAL_OFFSETS(self, consumer, tps, destination, title)
        if restore is not None and title == "active" and tps:
            # Changelog records read but still buffered would be applied after the
            # snapshot, over it (older values over newer): applied first.
            self.flush_buffers()
            await restore(tps, destination)

    Recovery._build_offsets = _build_offsets  # type: ignore[method-assign]

    async def on_recovery_completed(self: Any, generation_id: int = 0) -> None:
        if recovered is not None:  # before the stores drop the partitions not active
            recovered({tp: self.active_offsets.get(tp) for tp in self.active_tps})
        await _ORIGINAL_COMPLETED(self, generation_id)

    Recovery.on_recovery_completed = on_recovery_completed  # type: ignore[method-assign]

    async def _build_highwaters(
        self: Any, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        await _ORIGINAL(self, consumer, tps, destination, title)
        # Faust keeps "last offset" (end - 1, or -1 for an empty partition).
        reported = {(tp.topic, tp.partition): destination[tp] + 1 for tp in tps}
        ends = await asyncio.get_running_loop().run_in_executor(
            None, true_ends, bootstrap_servers, reported
        )
        for tp in tps:
            end = ends[(tp.topic, tp.partition)]
            if end != reported[(tp.topic, tp.partition)]:
                log.info(
                    "%s[%d]: changelog ends at %d, not at the reported %d",
                    tp.topic,
                    tp.partition,
                    end,
                    reported[(tp.topic, tp.partition)],
                )
            destination[tp] = end - 1

    Recovery._build_highwaters = _build_highwaters  # type: ignore[method-assign]
