"""``unifier plan``: how many workers, partitions and Redis shards a load needs, and
how much memory and broker disk — from the costs measured in ``bench/``
(``unifier.capacity``; docs/capacity.md explains the model and its measured error)."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer
from rich.table import Table

from unifier.cli.common import out


def _size(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n / 1024:,.0f} KiB"


def plan(
    events_per_s: Annotated[
        float, typer.Option("--events-per-s", min=1, help="Events per second at the peak")
    ],
    profiles: Annotated[int, typer.Option("--profiles", min=1, help="Customer profiles")],
    events_per_profile: Annotated[
        float, typer.Option("--events-per-profile", min=1, help="Events a profile holds")
    ] = 10.0,
    new_share: Annotated[
        float,
        typer.Option(
            "--new-share", min=0.0, max=1.0, help="Share of events from people never seen before"
        ),
    ] = 0.05,
    retention_days: Annotated[
        float, typer.Option("--retention-days", min=0, help="Days Kafka keeps the event topics")
    ] = 7.0,
    replication: Annotated[int, typer.Option(min=1, help="Kafka replication factor")] = 3,
    shard_gib: Annotated[
        float, typer.Option("--shard-gib", min=0.5, help="Memory of one Redis shard")
    ] = 16.0,
    as_json: Annotated[bool, typer.Option("--json", help="The plan as JSON")] = False,
) -> None:
    """Workers, partitions, Redis shards and memory, broker disk per retention day for a
    load, from measured costs (docs/capacity.md: the model, its assumptions and its
    measured error)."""
    from unifier.capacity import MEASURED
    from unifier.capacity import plan as make_plan

    p = make_plan(events_per_s, profiles, events_per_profile, new_share, retention_days,
                  replication, shard_gib)  # fmt: skip
    if as_json:
        doc = {**p.to_json(), "costs_measured_by": MEASURED.source}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    title = (f"{events_per_s:,.0f} events/s over {profiles:,} profiles "
             f"({events_per_profile:g} events each, {new_share:.0%} from new people)")  # fmt: skip
    table = Table(title=title)
    table.add_column("what")
    table.add_column("plan", justify="right")
    table.add_column("why")
    table.add_row("workers", f"{p.workers:,}",
                  f"one process per core, {p.worker_events_per_s:,.0f} events/s each")  # fmt: skip
    table.add_row("partitions per stage", f"{p.partitions:,}", "at least twice the workers")
    table.add_row("memory per worker", _size(p.worker_memory_bytes),
                  f"its share of {profiles:,} profiles in the tables")  # fmt: skip
    table.add_row("Redis shards", f"{p.redis_shards:,}",
                  f"{p.redis_shards_for_memory} for memory, {p.redis_shards_for_cpu} for CPU, "
                  "3 at least")  # fmt: skip
    table.add_row("Redis memory", _size(p.redis_memory_bytes), "the view, all shards together")
    table.add_row("broker disk per day", _size(p.broker_disk_bytes_per_day),
                  f"{replication} replicas of the time-retained topics")  # fmt: skip
    table.add_row("broker disk in all", _size(p.broker_disk_bytes_retained),
                  f"{retention_days:g} days, plus the compacted topics")  # fmt: skip
    out.print(table)
    for note in p.notes:
        out.print(f"  · {note}", highlight=False)
    out.print(f"  costs measured by: {MEASURED.source}", highlight=False)
