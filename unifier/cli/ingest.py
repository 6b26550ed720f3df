"""Commands that bring touchpoints in: ``ingest``, ``generate`` and ``import pos|crm|mapping``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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

import_app = typer.Typer(help="Import CSV exports of a POS or a CRM.", no_args_is_help=True)


# --- ingest ------------------------------------------------------------------------
def ingest(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            help="JSON lines, one touchpoint per line", exists=True, dir_okay=False, readable=True
        ),
    ],
    rejects: Annotated[
        Path | None, typer.Option(help="Where rejected lines go [default: FILE.rejects.jsonl]")
    ] = None,
    progress: Annotated[bool | None, typer.Option(help="Progress bar [default: on a tty]")] = None,
) -> None:
    """Validate FILE and send its touchpoints. Exit 1 if any line was rejected."""
    from unifier.ingest import ingest_file

    settings = settings_of(ctx)
    require_input_topic(settings)
    report_load(ingest_file(file, settings, rejects, progress), "ingested", "lines")


# --- generate ----------------------------------------------------------------------
def generate(
    out: Annotated[Path, typer.Option(help="Events, one touchpoint JSON per line")],
    truth: Annotated[
        Path | None, typer.Option(help="Ground truth as JSON [default: OUT.truth.json]")
    ] = None,
    people: Annotated[int, typer.Option(min=1, help="How many people")] = 1000,
    seed: Annotated[int, typer.Option(help="Same seed, same data")] = 7,
    ordered: Annotated[bool, typer.Option(help="Time order instead of shuffled arrival")] = False,
) -> None:
    """Write synthetic customer journeys (web, POS, email, support, CRM) and their truth."""
    from producers.synthetic import generate_journeys

    journeys = generate_journeys(people, seed, shuffle=not ordered)
    truth = truth or out.with_name(out.name.removesuffix(".jsonl") + ".truth.json")
    with open(out, "wb") as fh:
        for event in journeys.events:
            fh.write(orjson.dumps(event) + b"\n")
    doc = {"people": people, "seed": seed, "events": len(journeys.events)}
    truth.write_bytes(orjson.dumps({**doc, **journeys.truth.to_json()}, option=orjson.OPT_INDENT_2))
    err.print(
        f"wrote {len(journeys.events)} events of {people} people to {out}, truth to {truth}",
        highlight=False,
    )


# --- import ------------------------------------------------------------------------
def _import(
    ctx: typer.Context,
    kind: str,
    file: Path,
    mapping: Path | None,
    rejects: Path | None,
    progress: bool | None,
) -> None:
    from producers.importers import MappingError, import_file

    settings = settings_of(ctx)
    require_input_topic(settings)
    try:
        result = import_file(kind, file, settings, mapping, rejects, progress)
    except MappingError as exc:
        raise fail(f"{file}: {exc}") from None
    report_load(result, "imported", "rows")


CsvFile = Annotated[
    Path, typer.Argument(help="CSV with a header row", exists=True, dir_okay=False, readable=True)
]
MappingOpt = Annotated[
    Path | None,
    typer.Option(
        help="TOML column mapping (see `unifier import mapping KIND`)", exists=True, dir_okay=False
    ),
]


@import_app.command("pos")
def import_pos(
    ctx: typer.Context,
    file: CsvFile,
    mapping: MappingOpt = None,
    rejects: RejectsOpt = None,
    progress: ProgressOpt = None,
) -> None:
    """POS sales: one row per line item (or per transaction). Exit 1 if any row was rejected."""
    _import(ctx, "pos", file, mapping, rejects, progress)


@import_app.command("crm")
def import_crm(
    ctx: typer.Context,
    file: CsvFile,
    mapping: MappingOpt = None,
    rejects: RejectsOpt = None,
    progress: ProgressOpt = None,
) -> None:
    """CRM contacts: one row per contact. Exit 1 if any row was rejected."""
    _import(ctx, "crm", file, mapping, rejects, progress)


@import_app.command("mapping")
def import_mapping(kind: Annotated[str, typer.Argument(help="pos or crm")]) -> None:
    """Print the default column mapping as TOML, to copy and edit."""
    from producers.importers import mapping_toml

    if kind not in ("pos", "crm"):
        raise fail(f"unknown kind {kind!r}: pos or crm")
    out.print(mapping_toml(kind), highlight=False, markup=False, end="")
