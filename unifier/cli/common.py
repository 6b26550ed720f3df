"""What every command group of the CLI shares: the two consoles, ``fail``, the settings
of the invocation, the options several groups take, the input-topic check and the
end of a load (ingest, import, replay)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from config.settings import Settings

if TYPE_CHECKING:
    from producers.loader import LoadResult

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

RejectsOpt = Annotated[
    Path | None, typer.Option(help="Where rejected rows go [default: FILE.rejects.jsonl]")
]
ProgressOpt = Annotated[bool | None, typer.Option(help="Progress bar [default: on a tty]")]


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def settings_of(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


def require_input_topic(settings: Settings) -> None:
    """Exit 2, saying what to run, when the touchpoints topic does not exist."""
    from unifier.topics import missing_topics

    try:
        missing = missing_topics(settings, [settings.topic_touchpoints])
    except Exception as exc:
        raise fail(f"could not reach the broker at {settings.bootstrap_servers}: {exc}") from None
    if missing:
        raise fail(f"topic '{missing[0]}' does not exist; run `unifier topics create` first")


def report_load(result: LoadResult, verb: str, unit: str) -> None:
    """Print a load's summary; exit 2 if some did not deliver, 1 if some were rejected."""
    err.print(result.summary(verb, unit), highlight=False)
    if result.failed:
        raise typer.Exit(2)
    if result.rejected:
        raise typer.Exit(1)


def actor() -> str:
    """Who asked, for audit records: ``cli:<login>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"
