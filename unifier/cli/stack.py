"""Commands that run the product: ``stack up|down|status``, ``topics create``, ``worker``
and ``demo``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from config.settings import Settings
from unifier.cli.common import err, fail, out, settings_of
from unifier.processes import StackError

if TYPE_CHECKING:
    from unifier.stack import EmbeddedStack

stack_app = typer.Typer(
    help="The embedded broker, Redis and a worker, in the background.", no_args_is_help=True
)
topics_app = typer.Typer(help="Kafka topics the product uses.", no_args_is_help=True)


# --- stack -------------------------------------------------------------------------
@stack_app.command("up")
def stack_up(
    ctx: typer.Context,
    worker: Annotated[bool, typer.Option(help="Also start workers (--workers of them)")] = True,
    workers: Annotated[
        int, typer.Option(min=1, max=16, help="How many worker processes share the partitions")
    ] = 1,
    redis_cluster: Annotated[
        bool,
        typer.Option(
            "--redis-cluster",
            help="Run Redis as a 3-shard Redis Cluster on loopback (the view sharded as in "
            "production; UNIFIER_REDIS_URL names its first node)",
        ),
    ] = False,
    collector: Annotated[
        bool | None,
        typer.Option(help="Also start the HTTP collector [default: if write keys are set]"),
    ] = None,
    archive: Annotated[
        bool,
        typer.Option(
            help="Archive every touchpoint (STATE_DIR/archive), and restore the customer "
            "base from it when the broker comes back empty"
        ),
    ] = True,
) -> None:
    """Start the embedded broker and Redis (and a worker and collector), create topics, return."""
    from unifier.stack import EmbeddedStack

    settings = settings_of(ctx)
    if redis_cluster:
        settings = settings.model_copy(update={"redis_cluster": True})
    stack = EmbeddedStack(settings)
    stack.load()
    running = [n for n, p in stack.procs.items() if p.alive()]
    if running:
        raise fail(f"the stack is already up ({', '.join(running)}); `unifier stack down` first")
    stack.procs = {}
    try:
        collector = _start(stack, settings, workers if worker else 0, collector, archive)
    except (StackError, RuntimeError) as exc:
        stack.stop_all()
        stack.save()
        raise fail(str(exc)) from None
    collector_url = f"http://{settings.collector_host}:{settings.collector_port}"
    shards = " (a 3-shard cluster)" if redis_cluster else ""
    count = f", {workers} worker{'s' if workers > 1 else ''}" if worker else ""
    err.print(
        f"stack up: broker {settings.bootstrap_servers}, redis {settings.redis_url}{shards}"
        f"{count}"
        f"{f', collector {collector_url}' if collector else ''}"
        f"{f', archive {settings.archive_path}' if archive else ''}; logs in {stack.dir}"
    )


def _start(
    stack: EmbeddedStack, settings: Settings, workers: int, collector: bool | None, archive: bool
) -> bool:
    """Broker, Redis, topics (and the archive replayed into an empty broker), then the
    worker, archiver and collector asked for, saving the state after each; whether the
    collector was started."""
    from unifier.topics import ensure_topics

    with err.status("starting the broker"):
        stack.start_broker()
    stack.save()
    with err.status("starting a Redis Cluster" if settings.redis_cluster else "starting Redis"):
        stack.start_redis()
    stack.save()
    ensure_topics(settings)
    if archive:
        _restore(settings)
        with err.status("starting the archiver"):
            stack.start_archiver()
        stack.save()
    for n in range(workers):
        name = "worker" if n == 0 else f"worker-{n + 1}"
        with err.status(f"starting {name} (joins its consumer group)"):
            stack.start_worker(name)
        stack.save()
    if collector is None:
        collector = bool(settings.collector_write_keys)
    elif collector and not settings.collector_write_keys:
        raise StackError("the collector needs write keys: set UNIFIER_COLLECTOR_WRITE_KEYS")
    if collector:
        with err.status("starting the collector"):
            stack.start_collector()
        stack.save()
    return collector


def _restore(settings: Settings) -> None:
    """The broker keeps its log in memory: came back empty, it gets the archive again."""
    import sys

    from unifier.restore import restore_from_archive

    try:
        result = restore_from_archive(settings, progress=sys.stderr.isatty())
    except Exception as exc:  # the archive or the broker: say which, stop what started
        raise StackError(
            f"restoring from the archive in {settings.archive_path} failed: "
            f"{type(exc).__name__}: {exc}; `unifier archive verify` checks it"
        ) from None
    if result is None:
        return
    if result.definitions:
        err.print(
            f"published again the {result.definitions} segment definitions the workers had "
            "kept in Redis (the broker came back without them)",
            highlight=False,
        )
    if not result.records and not result.journal:
        return
    if result.failed:
        raise StackError(
            f"restoring from the archive: {result.failed:,} touchpoints were NOT delivered; "
            "see the broker's log, then `unifier replay --from-archive` again"
        )
    journal = (
        f", then {result.journal:,} records from the collector's journal (what the broker "
        "had acknowledged and not yet archived; those archived too count once)"
        if result.journal
        else ""
    )
    err.print(
        f"restored {result.delivered:,} touchpoints ({result.records:,} records) from the "
        f"archive in {settings.archive_path}{journal}: the worker rebuilds the customer "
        "base from them",
        highlight=False,
    )


@stack_app.command("down")
def stack_down(ctx: typer.Context) -> None:
    """Stop everything `stack up` started (workers first); leaves no process behind."""
    from unifier.stack import EmbeddedStack

    stack = EmbeddedStack(settings_of(ctx))
    stack.load()
    stopped = stack.stop_all()
    stack.save()
    err.print(f"stack down: stopped {', '.join(stopped) if stopped else 'nothing (not running)'}")


@stack_app.command("status")
def stack_status(ctx: typer.Context) -> None:
    """Which parts of the embedded stack run, with PID and port. Exit 1 if any is down."""
    from unifier.stack import EmbeddedStack

    stack = EmbeddedStack(settings_of(ctx))
    stack.load()
    if not stack.procs:
        err.print("stack is not running")
        raise typer.Exit(1)
    table = Table("part", "pid", "port", "state", "log")
    all_up = True
    for name, proc in stack.procs.items():
        alive = proc.alive()
        all_up &= alive
        table.add_row(
            name,
            str(proc.pid),
            str(proc.port or "-"),
            "[green]up[/]" if alive else "[red]down[/]",
            proc.log,
        )
    out.print(table)
    raise typer.Exit(0 if all_up else 1)


# --- topics ------------------------------------------------------------------------
@topics_app.command("create")
def topics_create(ctx: typer.Context) -> None:
    """Create every topic with its partition count and config. Safe to run again."""
    from unifier.topics import TopicMismatch, ensure_topics

    try:
        results = ensure_topics(settings_of(ctx))
    except TopicMismatch as exc:
        raise fail(str(exc)) from None
    except Exception as exc:
        raise fail(f"could not reach the broker: {exc}") from None
    for spec, state in results:
        out.print(
            f"{state:8} {spec.name} ({spec.partitions} partitions) - {spec.purpose}",
            highlight=False,
        )


# --- worker ------------------------------------------------------------------------
def worker(ctx: typer.Context) -> None:
    """Run a stream worker in the foreground (Ctrl-C / SIGTERM stops it cleanly)."""
    from streams.worker import run_worker

    run_worker(settings_of(ctx))


# --- demo --------------------------------------------------------------------------
def demo(
    ctx: typer.Context,
    people: Annotated[int, typer.Option(help="Synthetic customers")] = 80,
    show: Annotated[int, typer.Option(help="Profiles to list")] = 8,
) -> None:
    """Embedded stack + worker, a few hundred synthetic touchpoints, unified profiles."""
    from unifier.demo import run_demo

    try:
        run_demo(people=people, show=show, console=out, status=err)
    except StackError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        err.print("interrupted; the demo stack was stopped")
        raise typer.Exit(130) from None
