"""Commands for the dead-letter topic: ``dlq show`` and ``dlq replay``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from unifier.cli.common import (
    ProgressOpt,
    RejectsOpt,
    err,
    fail,
    out,
    report_load,
    require_input_topic,
    settings_of,
)

dlq_app = typer.Typer(help="Look at and replay the dead-letter topic.", no_args_is_help=True)


@dlq_app.command("show")
def dlq_show(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    unmasked: Annotated[
        bool, typer.Option(help="Show personal data as is (to fix and replay)")
    ] = False,
) -> None:
    """List dead letters, oldest first: why, which stage, where from, and the events."""
    from unifier.dlq import read

    settings = settings_of(ctx)
    count = 0
    try:
        for letter in read(settings, limit):
            count += 1
            doc = letter.to_json(unmasked)
            if as_json:
                out.print(orjson.dumps(doc).decode(), highlight=False, markup=False)
            else:
                _print_letter(doc)
    except Exception as exc:
        raise fail(f"could not read {settings.topic_dlq}: {exc}") from None
    err.print(f"{count} dead letters in {settings.topic_dlq}", highlight=False)


def _print_letter(doc: dict[str, Any]) -> None:
    """One dead letter for people: where it came from, why, its first three events."""
    out.print(
        f"[bold]#{doc['dlq_offset']}[/] {doc['time']}  {doc['stage']}  "
        f"from {doc['source_topic']}/{doc['source_partition']}@{doc['source_offset']}  "
        f"({doc['bytes']} bytes)",
        highlight=False,
    )
    out.print(f"  reason: {doc['reason']}", highlight=False, markup=False)
    for event in doc.get("events", [])[:3]:
        out.print(f"  event: {orjson.dumps(event).decode()}", highlight=False, markup=False)
    if len(doc.get("events", [])) > 3:
        out.print(f"  ... and {len(doc['events']) - 3} more events", highlight=False)
    if "decode_error" in doc:
        out.print(f"  does not decode: {doc['decode_error']}", highlight=False, markup=False)


@dlq_app.command("replay")
def dlq_replay(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Argument(
            help="Fixed events: lines of `dlq show --json --unmasked`, or touchpoint JSON lines",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    from_topic: Annotated[
        bool, typer.Option(help="Re-send dead letters that decode and validate now, unchanged")
    ] = False,
    stage: Annotated[str | None, typer.Option(help="With --from-topic: only this stage")] = None,
    rejects: RejectsOpt = None,
    progress: ProgressOpt = None,
) -> None:
    """Send fixed dead letters back to the input topic. Exit 1 if some stay rejected."""
    from unifier.dlq import replay_file, replay_topic

    settings = settings_of(ctx)
    if (file is None) == (not from_topic):
        raise fail("give either FILE or --from-topic")
    require_input_topic(settings)
    if file is not None:
        report_load(replay_file(file, settings, rejects, progress), "replayed", "lines")
        return
    outcome = replay_topic(settings, stage)
    err.print(
        f"re-sent {outcome.resent} dead letters; {outcome.still_bad} still cannot be used",
        highlight=False,
    )
    for reason, n in sorted(outcome.reasons.items(), key=lambda kv: -kv[1])[:10]:
        err.print(f"  {n} x {reason}", highlight=False, markup=False)
    if outcome.still_bad:
        raise typer.Exit(1)
