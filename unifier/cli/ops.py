"""Commands that serve and watch a running product: ``collector``, ``api``, ``status``,
``lag`` and ``view rebuild``."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.table import Table

from config import logs
from config.settings import Settings
from unifier.cli.common import ProgressOpt, err, fail, out, settings_of

if TYPE_CHECKING:
    from serve.status import StatusSampler

view_app = typer.Typer(help="The Redis view (a cache of the output topics).", no_args_is_help=True)


# --- collector ---------------------------------------------------------------------
def collector(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="[default: UNIFIER_COLLECTOR_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="[default: UNIFIER_COLLECTOR_PORT]")] = None,
) -> None:
    """Run the HTTP collector (Segment tracking API + native touchpoints) in the foreground."""
    from producers.collector import run_collector

    settings = settings_of(ctx)
    if not settings.collector_write_keys:
        raise fail(
            "no write keys configured: set UNIFIER_COLLECTOR_WRITE_KEYS to a JSON object "
            """of key -> source, e.g. '{"wk_web_1": "web"}'"""
        )
    logs.configure(settings.log_level, settings.log_format)
    run_collector(
        settings,
        host or settings.collector_host,
        settings.collector_port if port is None else port,
    )


# --- api ---------------------------------------------------------------------------
def api(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="[default: UNIFIER_API_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="[default: UNIFIER_API_PORT]")] = None,
) -> None:
    """Run the read API (profiles by id or identifier, why, OpenAPI) in the foreground."""
    from serve.api import run_api

    settings = settings_of(ctx)
    if not settings.api_keys:
        raise fail(
            "no API keys configured: set UNIFIER_API_KEYS to a JSON object of key -> "
            """scopes, e.g. '{"k-long-random": ["read"]}'"""
        )
    update: dict[str, object] = {}
    if host is not None:
        update["api_host"] = host
    if port is not None:
        update["api_port"] = port
    logs.configure(settings.log_level, settings.log_format)
    run_api(settings.model_copy(update=update))


# --- status ------------------------------------------------------------------------
def status(
    ctx: typer.Context,
    serve: Annotated[bool, typer.Option("--serve", help="Serve the live status page")] = False,
    host: Annotated[str | None, typer.Option(help="[default: UNIFIER_STATUS_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="[default: UNIFIER_STATUS_PORT]")] = None,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between samples")] = 2.0,
) -> None:
    """Lag per stage, throughput, dead letters and merges. Once, or with --serve as a
    page of live charts (/, /api/status, and /metrics with the lag per partition)."""
    from serve.status import StatusSampler

    settings = settings_of(ctx)
    sampler = StatusSampler(settings, settings.worker_metrics_urls(), interval)
    if not serve:
        _status_once(settings, sampler)
        return
    _serve_status(
        settings,
        sampler,
        host or settings.status_host,
        settings.status_port if port is None else port,
    )


def _status_once(settings: Settings, sampler: StatusSampler) -> None:
    """One sample, printed: lag per stage, workers up, counter totals."""
    from serve.lag import LagProbe

    try:
        with LagProbe(settings) as probe:
            sampler.samples.append(sampler.sample(probe))
    except Exception as exc:
        raise fail(f"could not measure lag at {settings.bootstrap_servers}: {exc}") from None
    snap = sampler.snapshot()
    for st in snap["stages"]:
        age = "?" if st["lag_seconds"] is None else f"{st['lag_seconds']:.1f}s"
        out.print(f"{st['stage']:<9} lag {st['lag']:>8} records, oldest {age}")
    totals = snap["totals"]
    out.print(
        f"workers up {snap['workers_up']}/{snap['workers_expected']}; totals: "
        + ", ".join(f"{k} {v:.0f}" for k, v in totals.items())
    )


def _serve_status(settings: Settings, sampler: StatusSampler, host: str, port: int) -> None:
    """The live status page, sampling in the background, until Ctrl-C."""
    from aiohttp import web

    from serve.status import create_status_app

    logs.configure(settings.log_level, settings.log_format)
    sampler.start()
    err.print(f"status page on http://{host}:{port}/ (Ctrl-C stops)")
    try:
        web.run_app(create_status_app(sampler), host=host, port=port, print=None)
    finally:
        sampler.stop()


# --- lag ---------------------------------------------------------------------------
def _lag_table(rows: list[Any], caught_up: bool = True) -> Table:
    from serve.lag import ARCHIVE, SYNC, pipeline_stage

    stages = [r for r in rows if pipeline_stage(r)]  # the archiver, syncs: followers
    total = sum(r.lag for r in stages)
    oldest = max((r.lag_seconds or 0.0 for r in stages), default=0.0)
    archive = sum(r.lag for r in rows if r.stage == ARCHIVE)
    syncs: dict[str, int] = {}
    for r in rows:
        if r.stage.startswith(SYNC):
            syncs[r.stage] = syncs.get(r.stage, 0) + r.lag
    behind = "".join(f"; {s} {n} records behind" for s, n in sorted(syncs.items()) if n)
    table = Table(
        "stage", "topic", "partition", "committed", "end", "lag", "lag (s)", "owner",
        caption=f"total lag: {total} records, oldest {oldest:.1f}s"
        + ("" if caught_up else " - not caught up")
        + (f"; archiver {archive} records behind" if archive else "")
        + behind,
    )  # fmt: skip
    for row in rows:
        table.add_row(
            row.stage,
            row.topic,
            str(row.partition),
            "-" if row.committed is None else str(row.committed),
            str(row.end),
            str(row.lag),
            "?" if row.lag_seconds is None else f"{row.lag_seconds:.1f}",
            row.owner or "-",
        )
    return table


def lag(
    ctx: typer.Context,
    wait: Annotated[bool, typer.Option("--wait", help="Block until every stage caught up")] = False,
    timeout: Annotated[float, typer.Option(help="Give up waiting after S seconds")] = 300.0,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, for scripts")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh the table in place until Ctrl-C")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="--watch: seconds between")] = 2.0,
) -> None:
    """Lag per stage and partition, in records and in seconds (how old the oldest record
    not yet processed is). With --wait, exit 0 once caught up, 1 on timeout."""
    from serve.lag import LagProbe

    settings = settings_of(ctx)
    where = f"could not measure lag at {settings.bootstrap_servers}"
    if watch:
        _watch_lag(settings, interval, where)
        return
    try:
        with LagProbe(settings) as probe:
            caught_up = probe.wait(timeout) if wait else True
            rows = probe.measure()
    except Exception as exc:
        raise fail(f"{where}: {exc}") from None
    if as_json:
        for row in rows:
            sys.stdout.write(orjson.dumps(row.to_dict()).decode() + "\n")
    else:
        out.print(_lag_table(rows, caught_up))
        if not caught_up:
            err.print(f"not caught up after {timeout:.0f}s")
    if not caught_up:
        raise typer.Exit(1)


def _watch_lag(settings: Settings, interval: float, where: str) -> None:
    """The lag table, refreshed in place every ``interval`` seconds until Ctrl-C."""
    from rich.live import Live

    from serve.lag import LagProbe

    try:
        with LagProbe(settings) as probe, Live(_lag_table(probe.measure()), console=out,
                                               auto_refresh=False) as live:  # fmt: skip
            while True:
                time.sleep(interval)
                live.update(_lag_table(probe.measure()), refresh=True)
    except KeyboardInterrupt:
        return
    except Exception as exc:
        raise fail(f"{where}: {exc}") from None


# --- view --------------------------------------------------------------------------
@view_app.command("rebuild")
def view_rebuild(
    ctx: typer.Context,
    clear: Annotated[
        bool, typer.Option("--clear", help="Delete the whole view (unifier:* keys) first")
    ] = False,
    progress: ProgressOpt = None,
) -> None:
    """Rebuild the view from profile-updates and profile-merges. Safe while workers
    run: an older record never replaces a newer view."""
    import redis
    from confluent_kafka import KafkaException

    from unifier.rebuild import rebuild

    settings = settings_of(ctx)
    try:
        result = rebuild(settings, clear_first=clear, progress=progress)
    except redis.RedisError as exc:
        raise fail(f"could not write Redis at {settings.redis_url}: {exc}") from None
    except KafkaException as exc:
        raise fail(
            f"could not read the output topics at {settings.bootstrap_servers}: {exc}"
        ) from None
    except Exception as exc:
        raise fail(f"rebuild failed: {type(exc).__name__}: {exc}", 1) from None
    err.print(
        f"rebuilt the view from {result.records:,} records: {result.profiles:,} profiles, "
        f"{result.redirects:,} merged-away ids, {result.identifiers:,} identifiers"
        + (f" ({result.cleared:,} keys cleared first)" if clear else "")
    )
