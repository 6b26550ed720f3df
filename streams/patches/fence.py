"""A stage asks the broker whether it is still a member of the current consumer
generation just before it writes a table.

**Corrects** (faust-streaming 0.15.3 with aiokafka 0.14 on the embedded broker): a
worker learns that a rebalance began only at its next heartbeat (every
``session_timeout_s / 6``, later when a batch keeps its event loop busy). Tansu 0.6
does not hold a rebalance until every member has rejoined, and does not fence
offset commits by generation (``coordinator/group/administrator.rs``: the request's
generation and member id are never read): meanwhile another worker can be given the
partition, read its changelog, and go on. A table write of the old owner that lands
after that is behind the new owner's, and the next worker to read the changelog (the
next rebalance: a rolling restart) gets the older value back — events a profile had
counted are gone from it, and their records were committed (seen: one event in
~4,300 lost through a rolling restart of three workers). Real Kafka waits for every
member within the rebalance timeout, which only narrows the same window.

**What holds with this patch**: right before a batch's table write, the stage sends
the group coordinator a heartbeat with its generation and member id. Only an answer
"no error" lets the write go ("rebalance under way" is asked once more: the broker
also answers so to the call that made it remove another, lapsed member). On any other
answer (a rebalance under way, a stale generation, an unknown member, no answer within
``FENCE_TIMEOUT_S``) the batch is given up as ``streams.batches.overtaken`` does —
nothing written or counted — and the worker rejoins the group, as aiokafka does with
such an answer: the assignment that follows seeks every partition back to its
committed offset, so the records are read again, by whoever owns them then. Until
that seek, every later batch is given up too, before any work
(``streams.batches.fenced``): none is handled before the records it follows. A batch
must not wait for the worker to hear of the rebalance instead: Faust's revoke waits
for the batch, and a table recovery finishing meanwhile turns the flow back on, so
the batch may never see it (seen: a worker stalled until the broker removed it). A
rebalance that begins after the answer gives the partition to another worker only
after its join (the embedded broker keeps a rejoining member waiting 3 s) and its
changelog read, long after this write has been sent. Cost: one round trip to the
coordinator per batch, not per record.

Commits are asked the same way (``streams.patches.offsets._commit_offsets``): a
worker's last commit before it hears of a rebalance could land after the new owner
read the changelog and before it read the committed offset — the new owner would
start past records whose table writes it never read. A commit not confirmed is
skipped; the next one (or the new owner) covers the records, read again if need be.

**Pinned to** faust-streaming 0.15.3 (``streams.patches.PATCHED_FOR``): it uses the
private ``AIOKafkaConsumerThread`` and aiokafka's ``GroupCoordinator``. **Shown by**
``tests/integration/test_scale.py`` (rolling restart of three workers) and
``tests/integration/test_ops.py``'s kill and restart tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import errors
from aiokafka.protocol.group import HeartbeatRequest

log = logging.getLogger("unifier.fence")

#: How long a stage waits for the coordinator's answer; none by then: not a member
#: as far as the write goes (the batch is read again).
FENCE_TIMEOUT_S = 10.0

#: What the log says was done about an answer other than "no error".
_AFTER = {True: ": batch given up, group rejoined", False: ": skipped (a snapshot or a commit)"}


async def in_generation(consumer: Any, generation: int | None, rejoin: bool = True) -> bool:
    """Whether the broker still counts this worker (``consumer``: Faust's) a member of
    ``generation``, the one its partitions were assigned in (True where there is no
    group: a consumer without Faust's aiokafka thread). ``rejoin``: on any other answer,
    ask the client to rejoin (not for a commit: it comes during a rebalance, when the
    client is rejoining)."""
    thread = getattr(consumer, "_thread", None)
    if thread is None or not hasattr(thread, "call_thread"):
        return True
    try:
        ok = await asyncio.wait_for(
            thread.call_thread(_heartbeat, thread, generation, rejoin), FENCE_TIMEOUT_S
        )
    except Exception as exc:  # no answer: not sure, so not a member for this write
        log.info("group membership not confirmed (%r)%s", exc, _AFTER[rejoin])
        if rejoin:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(thread.call_thread(_rejoin, thread), FENCE_TIMEOUT_S)
        return False
    return bool(ok)


async def _rejoin(thread: Any) -> None:
    thread._ensure_consumer()._coordinator.request_rejoin()


async def _heartbeat(thread: Any, generation: int, rejoin: bool = True) -> bool:
    """On the consumer's thread: a heartbeat for ``generation``; True on no error.
    "Rebalance under way" is asked once more: the embedded broker also answers so when
    the call made it remove some other, lapsed member, the group otherwise unchanged."""
    coordinator = thread._ensure_consumer()._coordinator
    if coordinator.generation != generation:
        return False  # a rejoin under way: the assignment that ends it seeks back
    if coordinator.coordinator_id is None:
        if rejoin:
            coordinator.request_rejoin()
        return False
    error: type[Exception] = errors.RebalanceInProgressError
    for _ in range(2):
        request = HeartbeatRequest(coordinator.group_id, generation, coordinator.member_id)
        response = await coordinator._send_req(request)
        error = errors.for_code(response.error_code)
        if error is errors.NoError:
            return True
        if error is not errors.RebalanceInProgressError:
            break
    # A rejoin, as aiokafka's own heartbeat would ask for on this answer: the
    # partitions are then assigned again and sought back to their committed offsets,
    # which is what re-reads the batch given up (``streams.batches.fenced``) — unless
    # the client has rejoined meanwhile (a second rebalance for nothing).
    if rejoin and coordinator.generation == generation:
        coordinator.request_rejoin()
    log.info("group coordinator answered %s%s", error.__name__, _AFTER[rejoin])
    return False
