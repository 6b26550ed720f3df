"""``unifier archive run|verify`` and ``unifier replay --from-archive``: the event
archive (``producers.archive``)."""

from __future__ import annotations

import signal
import threading
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from unifier.cli.common import ProgressOpt, err, fail, out, require_input_topic, settings_of

archive_app = typer.Typer(
    help="The event archive: every accepted touchpoint, in Avro files.", no_args_is_help=True
)

DirOpt = Annotated[
    Path | None, typer.Option("--dir", help="The archive's directory [default: STATE_DIR/archive]")
]


@archive_app.command("run")
def archive_run(ctx: typer.Context, directory: DirOpt = None) -> None:
    """Archive the touchpoints topic continuously (foreground; Ctrl-C / SIGTERM stops it
    after it has written what the topic holds)."""
    from config import logs
    from producers.archive import run_archiver

    settings = settings_of(ctx)
    logs.configure(settings.log_level, settings.log_format)
    require_input_topic(settings)
    stop = threading.Event()

    def stopping(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    run_archiver(settings, directory or settings.archive_path, stop)


@archive_app.command("verify")
def archive_verify(
    ctx: typer.Context,
    directory: Annotated[
        Path | None,
        typer.Argument(help="The archive's directory [default: STATE_DIR/archive]"),
    ] = None,
) -> None:
    """Check every file against the manifest (size, SHA-256, records, offsets). Exit 1
    if anything differs."""
    from producers.archive import ArchiveError, verify

    where = directory or settings_of(ctx).archive_path
    try:
        result = verify(where)
    except ArchiveError as exc:
        raise fail(str(exc)) from None
    for problem in result.problems:
        out.print(f"[red]✗[/] {problem}", highlight=False)
    err.print(
        f"{result.files} files, {result.records:,} records, {result.touchpoints:,} touchpoints"
        f"{'' if result.problems else ': all as the manifest says'}",
        highlight=False,
    )
    if result.problems:
        raise typer.Exit(1)


def replay(
    ctx: typer.Context,
    from_archive: Annotated[
        Path,
        typer.Option("--from-archive", help="An archive directory", exists=True, file_okay=False),
    ],
    since: Annotated[
        datetime | None,
        typer.Option(help="Only records the broker accepted at or after this time (ISO 8601)"),
    ] = None,
    progress: ProgressOpt = None,
) -> None:
    """Send archived touchpoints back through the normal path. Idempotent: an event
    already applied changes nothing."""
    import sys

    from producers.archive import ArchiveError
    from producers.archive import replay as replay_archive

    settings = settings_of(ctx)
    require_input_topic(settings)
    if since is not None and since.tzinfo is None:
        raise fail("--since needs a time zone, e.g. 2026-11-30T00:00:00Z")
    try:
        result = replay_archive(
            settings, from_archive, since, progress if progress is not None else sys.stderr.isatty()
        )
    except ArchiveError as exc:
        raise fail(str(exc)) from None
    err.print(
        f"replayed {result.records:,} archived records: {result.delivered:,} touchpoints "
        f"delivered, {result.raw:,} undecodable records re-sent as they were"
        + (f"; {result.failed:,} NOT delivered" if result.failed else ""),
        highlight=False,
    )
    if result.failed:
        raise typer.Exit(2)
