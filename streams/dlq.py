"""Dead letters: what a stage could not use goes here, with headers that say why."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from streams import metrics


def dlq_headers(
    stage: str, reason: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    return [
        ("x-dlq-reason", reason.encode()[:1000]),
        ("x-dlq-stage", stage.encode()),
        ("x-source-topic", topic.encode()),
        ("x-source-partition", str(partition).encode()),
        ("x-source-offset", str(offset).encode()),
        ("x-dlq-time-ms", str(int(time.time() * 1000)).encode()),
    ]


#: A dead letter whose bytes are sealed whole (``profiles.privacy.Sealer.seal_bytes``).
SEALED_HEADER = "x-dlq-sealed"
#: A dead letter keeps at most this much of a record too large to copy whole.
TRUNCATED_BYTES = 64 * 1024


async def dead_letter(
    dlq: Any,
    event: Any,
    stage: str,
    reason: str,
    value: bytes | None = None,
    log: Any = None,
    max_bytes: int = 900_000,
    seal: Callable[[bytes], bytes] | None = None,
) -> None:
    """Send the original bytes (or ``value``) of ``event`` to the DLQ topic. A record
    too large to copy keeps its first 64 KiB; ``x-dlq-original-bytes`` says how large it
    was, and the source offset in the headers finds the whole of it. ``seal``: bytes
    that may hold personal data in clear (a record that does not decode) are sealed
    whole (``x-dlq-sealed``; ``unifier dlq show`` opens them)."""
    msg = event.message
    data = value if value is not None else (msg.value or b"")
    headers = dlq_headers(stage, reason, msg.topic, msg.partition, msg.offset)
    if len(data) > max_bytes:
        headers.append(("x-dlq-original-bytes", str(len(data)).encode()))
        data = data[:TRUNCATED_BYTES]
    if seal is not None:
        data = seal(data)
        headers.append((SEALED_HEADER, b"1"))
    await dlq.send(key=msg.key, value=data, headers=headers)
    metrics.DLQ.labels(reason=stage).inc()
    if log is not None:
        # Reasons are written by our own code and never quote identifier values.
        log.warning(
            "dead-lettered record %s/%s@%s at %s: %s",
            msg.topic,
            msg.partition,
            msg.offset,
            stage,
            reason[:300],
        )
