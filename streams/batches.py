"""Many Kafka records at once: what keeps a stage's cost per record, not per event.

Faust spends a fixed time on every record it hands over and every record it sends;
a stage that handled one record at a time also waited once per record for its
outputs and for Redis, and wrote a table key (one changelog record each) as often
as a record touched it. A stage now takes every record that has arrived — up to
``stage_batch_records``, waiting at most ``stage_batch_wait_s`` — and handles them
as one: messages grouped into one record per partition, one wait for delivery, each
table key written once, one Redis pipeline, then every record acknowledged.

Faust's ``noack_take`` hands over the batch and leaves the acknowledgements to us
(``take_events`` would acknowledge in a ``finally``: records of a batch interrupted
by a shutdown would be committed unhandled).

A table key is written to the changelog partition its messages are routed to
(``streams.state.writing``), through the worker's own producer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from streams.patches import fence, offsets

log = logging.getLogger("unifier.batches")


async def batches(
    stream: Any, max_records: int, wait_s: float, app: Any = None, stage: str = ""
) -> AsyncIterator[list[Any]]:
    """Lists of events, unacknowledged; with ``app``, none a rebalance has overtaken
    already (``overtaken``: those are let go before any work is spent on them)."""
    async for events in stream.noack_take(max_records, within=wait_s):
        if app is None or not overtaken(app, events, stage):
            yield events


def superseded(app: Any, events: Sequence[Any]) -> bool:
    """Whether a rebalance (or a shutdown) began since these records were fetched —
    the flow is stopped, or they come from an earlier consumer generation: their
    partitions may be another worker's now, and their acknowledgements would not count
    (``streams.patches.offsets``). A stage writes no table for such a batch (and lets
    its records go, ``overtaken``): they are read again by whoever owns them.

    Why it matters: the new owner reads the table's changelog when it gets the
    partition; a table write made after that lands behind its own, and the next
    worker to read the changelog gets the older state back (events lost from the
    profile). Kafka makes a rebalance wait for every member to finish its batch (up to
    the rebalance timeout); the embedded broker does not wait at all, so a worker
    still busy with a batch is left behind while the others go on. What this worker
    has not heard of yet is asked of the broker before a table write (``fenced``)."""
    return not all(offsets.counts(app, event.message) for event in events)


def overtaken(app: Any, events: Sequence[Any], stage: str) -> bool:
    """Whether the batch is ``superseded``, or behind one ``fenced`` gave up whose
    re-read has not begun (handled, its outputs would go out before those of the
    records it follows); if so it is given up: nothing written, nothing counted, its
    records let go (``streams.patches.offsets.let_go``)."""
    consumer = app.consumer
    behind = getattr(consumer, "_unifier_fenced_at", None) == offsets.seek_count(consumer)
    if not (superseded(app, events) or behind):
        return False
    _give_up(app, events, stage)
    return True


async def fenced(app: Any, events: Sequence[Any], stage: str) -> bool:
    """``overtaken``, asked of the broker too, just before a table write: a worker
    learns of a rebalance only at its next heartbeat, and meanwhile the partition may
    be another's (``streams.patches.fence``). True: the batch was given up.

    A batch the broker did not confirm is given up and the worker rejoins the group;
    every batch after it is given up too until the rejoin's seek back to the committed
    offsets (``streams.patches.offsets.seek_count``), so that no record is handled
    before one given up ahead of it (the broker's "rebalance under way" can be a lapsed
    member it just removed, the next answer "no error")."""
    if overtaken(app, events, stage):
        return True
    member = await fence.in_generation(app.consumer, app.consumer_generation_id)
    if member and not superseded(app, events):
        return False
    _give_up(app, events, stage)
    app.consumer._unifier_fenced_at = offsets.seek_count(app.consumer)
    return True


def _give_up(app: Any, events: Sequence[Any], stage: str) -> None:
    offsets.let_go(app.consumer, [event.message for event in events])
    log.info(
        "%s: a batch of %d records let go, a rebalance began (they are read again by "
        "their partitions' owner)",
        stage,
        len(events),
    )
