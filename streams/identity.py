"""Stage 2, identity: graph messages keyed by identifier (observations from route,
claims and re-points from profiles) against the ``identity`` table (identifier →
profile), as one batch per take (``streams.batches``).

Outputs are sent, and delivered, before the table is written: a worker killed in
between leaves the table as it was, and the re-delivered record sends the outputs
again (a no-op where they had arrived). The other way round, a table could remember
a claim whose message was lost, and the merge it starts would never finish. The
table's changelog records are delivered before the records are acknowledged. A batch
a rebalance overtook writes no table (``streams.batches.fenced``: also one the worker
has not heard of yet, asked of the broker).
"""

from __future__ import annotations

import logging
from typing import Any

from profiles.graph.identity import handle_identity
from profiles.rules import IdentityRules
from streams import metrics
from streams.batches import batches, fenced
from streams.messages import count_internal, group, messages_in, send_internal
from streams.privacy import Shredder
from streams.producer import ProducedTopic
from streams.rules import LiveRules
from streams.state import ChangelogTable, Overlay, StrTable, writing
from streams.topology import Stage

log = logging.getLogger("unifier.identity")


def register(
    app: Any,
    stage: Stage,
    topics: dict[str, Any],
    table: Any,
    rules: IdentityRules | LiveRules,
    take: tuple[int, float],
    max_bytes: int,
    produced: dict[str, ProducedTopic],
    shredder: Shredder | None = None,
) -> Any:
    """The identity agent, consuming ``topics[stage.name]`` (the topic ``stage.consumes``)."""
    partitions = stage.partitions
    producer = produced["identity"].producer
    changelog = ChangelogTable(table, producer)
    strings = StrTable(changelog)

    async def handle(manual: Any, events: list[Any]) -> None:
        writes = Overlay(strings)
        outs = []
        now = rules.current if isinstance(rules, LiveRules) else rules
        for msg in await messages_in(events, stage.name, topics["dlq"], log):
            outs += handle_identity(writes, msg, now.max_claimants, now.marks)
        grouped = group(outs, partitions)
        if shredder is not None:  # keys gone before the table says so
            if grouped.shredded:
                shredder.shred(grouped.shredded)
            if grouped.kept:
                shredder.kept(grouped.kept)
        if send_internal(grouped, produced["identity"], produced["profile"], max_bytes):
            await producer.delivered()
        count_internal(stage.name, grouped)
        if await fenced(app, events, stage.name):  # the partition may be another's by now
            return
        with writing(changelog, events, partitions) as before:
            writes.flush(before)
        await producer.delivered()
        for event in events:
            await manual.ack(event)
        metrics.RECORDS.labels(stage=stage.name).inc(len(events))

    @app.agent(topics[stage.name], name=stage.name)
    async def identity(stream: Any) -> None:
        manual = stream.noack()
        async for events in batches(manual, *take, app, stage.name):
            await handle(manual, events)

    return identity
