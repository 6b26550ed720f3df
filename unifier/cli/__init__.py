"""The ``unifier`` command. Settings are built once here and passed down.

Exit codes: 0 success; 1 the command ran but something was rejected, failed to
deliver, or did not catch up in time; 2 a usage or configuration error, or a
service that could not be reached.

This module holds the root command, the settings callback and the command tree; the
commands live in one module per group (``stack``, ``ingest``, ``ops``, ``dlq``,
``profiles``, ``segments``, ``privacy``, ``sync``, ``archive``), what they share in ``common``.
"""

from __future__ import annotations

import typer
from pydantic import ValidationError

from config.settings import Settings
from profiles.configured import check
from unifier.cli import (
    archive,
    dlq,
    identity,
    ingest,
    ops,
    plan,
    privacy,
    profiles,
    quality,
    segments,
    stack,
    sync,
)
from unifier.cli.common import err, fail, out, settings_of

__all__ = ["app", "err", "fail", "main", "out", "settings_of"]

app = typer.Typer(
    help="Real-time customer profile unifier: touchpoints in, one profile per customer out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(ctx: typer.Context) -> None:
    try:
        ctx.obj = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"UNIFIER_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise fail(f"invalid configuration: {problems}") from None
    try:
        check(ctx.obj)  # what the core cannot use (an unknown trait strategy…)
    except ValueError as exc:
        raise fail(f"invalid configuration: {exc}") from None


# The command tree, in the order `unifier --help` lists it: commands, then groups.
for command in (
    stack.worker,
    ops.collector,
    ops.api,
    ops.status,
    ingest.ingest,
    ingest.generate,
    ops.lag,
    archive.replay,
    privacy.audit,
    stack.demo,
    plan.plan,
):
    app.command()(command)
app.add_typer(stack.stack_app, name="stack")
app.add_typer(stack.topics_app, name="topics")
app.add_typer(profiles.profiles_app, name="profiles")
app.add_typer(segments.segments_app, name="segments")
app.add_typer(privacy.privacy_app, name="privacy")
app.add_typer(identity.identity_app, name="identity")
app.add_typer(quality.quality_app, name="quality")
app.add_typer(sync.sync_app, name="sync")
app.add_typer(ingest.import_app, name="import")
app.add_typer(ops.view_app, name="view")
app.add_typer(dlq.dlq_app, name="dlq")
app.add_typer(archive.archive_app, name="archive")


def main() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisClusterException
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        app()
    except (RedisConnectionError, RedisTimeoutError, RedisClusterException) as exc:
        # A command that reads the view, with Redis away: said in one line, exit 2.
        url = Settings().redis_url
        err.print(f"[bold red]error:[/] could not reach Redis at {url}: {exc}", highlight=False)
        raise SystemExit(2) from None
