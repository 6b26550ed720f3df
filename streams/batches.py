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

from typing import Any


def batches(stream: Any, max_records: int, wait_s: float) -> Any:
    """Lists of events, unacknowledged."""
    return stream.noack_take(max_records, within=wait_s)
