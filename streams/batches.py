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

A table write goes to the changelog partition of the record being processed
(Faust's "current event"); a batch holds records of several partitions, so each key
is written with a record of its own partition as the current event — the partition
its messages were sent to (``profiles.routing.partition_for``). The stream's own
current event is put back afterwards: ``noack_take`` fills its buffer from a
background reader that, after waiting for the previous batch to be handled, takes
the arriving record from that attribute. Left pointing at a record of the previous
batch, the next batch would hold that record twice and miss the one that arrived
(never handled, never acknowledged: the offsets watchdog had to re-read the
partition).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from profiles.routing import partition_for


def batches(stream: Any, max_records: int, wait_s: float) -> Any:
    """Lists of events, unacknowledged."""
    return stream.noack_take(max_records, within=wait_s)


@contextmanager
def in_partition(
    stream: Any, events: Sequence[Any], partitions: int
) -> Iterator[Callable[[str], None]]:
    """Yields ``before(key)``, which makes a record of ``key``'s partition the current
    event; the stream's current event is restored on the way out."""
    held = stream.current_event
    by_partition = {event.message.partition: event for event in events}

    def before(key: str) -> None:
        part = partition_for(key, partitions)
        event = by_partition.get(part)
        if event is None:
            raise RuntimeError(
                f"table key {key!r} belongs to partition {part}, and no record of this "
                f"batch came from it (partitions {sorted(by_partition)})"
            )
        stream._set_current_event(event)

    try:
        yield before
    finally:
        stream.current_event = held
