"""A commit never passes a table write that is still waiting to be sent.

**Corrects** (faust-streaming 0.15.3): a table's ``__setitem__`` is synchronous, so
its changelog record goes into the producer's ``ProducerBuffer`` and a background
task sends it. Before committing offsets the consumer calls ``producer.flush()``,
meant to drain that buffer; Faust's ``ProducerBuffer.flush`` waits at most 0.1 s for
each record and *returns* when one takes longer, with the rest still queued, and never
waits for the record its sender has taken. A commit could then cover records whose
table writes were never sent: a worker stopped at that moment came back with a table
that lacks them, and the records that made them were not read again.

**What holds with this patch**: the flush waits until the buffer is empty and the
record its sender took last was handed to the client (whose own flush, which
follows, waits for delivery), however long that takes, logging while it waits. A
buffer that stopped with records in it raises, as Faust does: the commit fails and
the records are read again after the restart.

**Pinned to** faust-streaming 0.15.3 (``streams.patches.PATCHED_FOR``). **Shown by**
``tests/unit/test_flush.py`` (Faust's own buffer: the early return, and the fix).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faust.transport.producer import ProducerBuffer

from streams.patches import require_patched_faust

log = logging.getLogger("unifier.flush")

POLL_S = 0.1
WARN_EVERY_S = 10.0

_original: dict[str, Any] = {}


def unsent(buffer: Any) -> int:
    """Records queued, plus the one the buffer's sender has taken and not sent yet."""
    return int(buffer.size) + getattr(buffer, "_unifier_sending", 0)


async def flush_all(buffer: Any) -> None:
    """Return only when every record put in ``buffer`` has been handed to the client."""
    started = warned = time.monotonic()
    while unsent(buffer):
        if buffer.state != "running":
            raise RuntimeError(
                f"cannot flush: the producer buffer stopped with {unsent(buffer)} records unsent"
            )
        buffer.message_sent.clear()
        try:
            await asyncio.wait_for(buffer.message_sent.wait(), timeout=POLL_S)
        except TimeoutError:
            now = time.monotonic()
            if now - warned >= WARN_EVERY_S:
                log.warning(
                    "producer flush: %d records still queued after %.0f s",
                    unsent(buffer),
                    now - started,
                )
                warned = now


async def _flush(self: Any) -> None:
    await flush_all(self)


async def _send_pending(self: Any, fut: Any) -> None:
    # Faust's sender takes a record off the queue before sending it: count it until
    # it is handed over, or a flush could end with it still on its way.
    self._unifier_sending = getattr(self, "_unifier_sending", 0) + 1
    try:
        await _original["_send_pending"](self, fut)
    finally:
        self._unifier_sending -= 1


def install() -> None:
    """Replace ``ProducerBuffer.flush`` (once per process)."""
    if _original:
        return
    require_patched_faust("streams/patches/flush.py")
    for name, replacement in (("flush", _flush), ("_send_pending", _send_pending)):
        _original[name] = getattr(ProducerBuffer, name)
        setattr(ProducerBuffer, name, replacement)
