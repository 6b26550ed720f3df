"""``unifier sync``: run a destination group's sync process, and see how it stands."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from typing import Annotated

import orjson
import typer

from config import logs
from unifier.cli.common import err, fail, out, settings_of

sync_app = typer.Typer(
    help="Destinations: profiles out to the apps that use them, their edits back in "
    "(destinations.toml; README, Destinations).",
    no_args_is_help=True,
)


@sync_app.command("run")
def run(
    ctx: typer.Context,
    group: Annotated[
        str, typer.Option(help="The destination group this process serves")
    ] = "default",
    destination: Annotated[
        list[str] | None, typer.Option("--destination", "-d", help="Only these (repeatable)")
    ] = None,
    from_beginning: Annotated[
        bool,
        typer.Option(
            "--from-beginning",
            help="Replay every profile from the start of profile-updates (backfill a new "
            "destination; rows that already hold the values are not written again)",
        ),
    ] = False,
    since: Annotated[
        datetime | None,
        typer.Option(
            help="Replay the changes recorded at or after this time (ISO 8601 with a zone): "
            "a destination that missed them, or lost its copy"
        ),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port")
    ] = None,
    idle_exit: Annotated[
        float | None, typer.Option(help="Stop after S seconds without a change (scripts)")
    ] = None,
) -> None:
    """Follow profile-updates into the group's destinations and take the apps' edits in.
    Run several with the same group to share the partitions."""
    from sinks.destinations.config import DestinationError
    from unifier.sync import Syncer, check_identifiers, destinations_of, install_signals

    settings = settings_of(ctx)
    logs.configure(settings.log_level, settings.log_format)
    if since is not None and since.tzinfo is None:
        raise fail("--since needs a time zone, e.g. 2026-12-01T00:00:00Z")
    if since is not None and from_beginning:
        raise fail("--since and --from-beginning: choose one")
    try:
        dests = destinations_of(settings, group, destination or ())
        check_identifiers(settings, dests)
    except DestinationError as exc:
        raise fail(str(exc)) from None
    groups = {d.group for d in dests}
    if len(groups) > 1:  # one consumer group per process: its offsets are the group's
        raise fail(f"--destination names destinations of groups {sorted(groups)}; one at a time")
    group = groups.pop()
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1")
    try:
        since_ms = None if since is None else int(since.timestamp() * 1000)
        syncer = Syncer(
            settings, dests, group=group, from_beginning=from_beginning, since_ms=since_ms
        )
    except DestinationError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:
        raise fail(f"could not open the destinations: {exc}") from None
    install_signals(syncer)
    names = ", ".join(f"{d.name} ({d.kind}, {d.mode})" for d in dests)
    err.print(f"sync {group}: {names}; Ctrl-C stops", highlight=False)
    stats = syncer.run(idle_exit_s=idle_exit)
    logging.getLogger("unifier.sync").info(
        "stopped after %d records; %d edits sent", stats.records, stats.edits_sent
    )


@sync_app.command("status")
def status(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per destination")
    ] = False,
) -> None:
    """Each destination: rows, rows we created, removed, writes recorded, the inbound
    cursor, and its group's lag on profile-updates."""
    from sinks.destinations.config import DestinationError
    from unifier.sync import destination_status, destinations_of

    settings = settings_of(ctx)
    try:
        dests = destinations_of(settings, None)
    except DestinationError as exc:
        raise fail(str(exc)) from None
    rows = [destination_status(settings, d) for d in dests]
    if as_json:
        for r in rows:
            sys.stdout.write(orjson.dumps(r).decode() + "\n")
        return
    from rich.table import Table

    keys = ("name", "kind", "mode", "rows", "created", "removed", "writes", "cursor", "lag")
    table = Table("destination", *keys[1:])
    for r in rows:
        table.add_row(*(str(r.get(k, "")) for k in keys))
    out.print(table)
