"""The ``unifier`` command. Settings are built once here and passed down.

Exit codes: 0 success; 1 the command ran but something was rejected, failed to
deliver, or did not catch up in time; 2 a usage or configuration error, or a
service that could not be reached.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from config import logs
from config.settings import Settings
from profiles.configured import check, identifier_priorities, identity_rules
from unifier.processes import StackError

app = typer.Typer(
    help="Real-time customer profile unifier: touchpoints in, one profile per customer out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(
    help="The embedded broker, Redis and a worker, in the background.", no_args_is_help=True
)
topics_app = typer.Typer(help="Kafka topics the product uses.", no_args_is_help=True)
profiles_app = typer.Typer(help="Read unified profiles from the view.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
app.add_typer(profiles_app, name="profiles")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def settings_of(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


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


# --- stack -------------------------------------------------------------------------
@stack_app.command("up")
def stack_up(
    ctx: typer.Context,
    worker: Annotated[bool, typer.Option(help="Also start one worker")] = True,
    collector: Annotated[
        bool | None,
        typer.Option(help="Also start the HTTP collector [default: if write keys are set]"),
    ] = None,
) -> None:
    """Start the embedded broker and Redis (and a worker and collector), create topics, return."""
    from unifier.stack import EmbeddedStack
    from unifier.topics import ensure_topics

    settings = settings_of(ctx)
    stack = EmbeddedStack(settings)
    stack.load()
    running = [n for n, p in stack.procs.items() if p.alive()]
    if running:
        raise fail(f"the stack is already up ({', '.join(running)}); `unifier stack down` first")
    stack.procs = {}
    try:
        with err.status("starting the broker"):
            stack.start_broker()
        stack.save()
        with err.status("starting Redis"):
            stack.start_redis()
        stack.save()
        ensure_topics(settings)
        if worker:
            with err.status("starting a worker (joins its consumer group)"):
                stack.start_worker()
            stack.save()
        if collector is None:
            collector = bool(settings.collector_write_keys)
        elif collector and not settings.collector_write_keys:
            raise StackError("the collector needs write keys: set UNIFIER_COLLECTOR_WRITE_KEYS")
        if collector:
            with err.status("starting the collector"):
                stack.start_collector()
            stack.save()
    except (StackError, RuntimeError) as exc:
        stack.stop_all()
        stack.save()
        raise fail(str(exc)) from None
    collector_url = f"http://{settings.collector_host}:{settings.collector_port}"
    err.print(
        f"stack up: broker {settings.bootstrap_servers}, redis {settings.redis_url}"
        f"{', 1 worker' if worker else ''}"
        f"{f', collector {collector_url}' if collector else ''}; logs in {stack.dir}"
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
@app.command()
def worker(ctx: typer.Context) -> None:
    """Run a stream worker in the foreground (Ctrl-C / SIGTERM stops it cleanly)."""
    from streams.worker import run_worker

    run_worker(settings_of(ctx))


# --- collector ---------------------------------------------------------------------
@app.command()
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


@app.command()
def api(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="[default: UNIFIER_API_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="[default: UNIFIER_API_PORT]")] = None,
) -> None:
    """Run the read API (profiles by id or identifier, why, OpenAPI) in the foreground."""
    from unifier.api import run_api

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


@app.command()
def status(
    ctx: typer.Context,
    serve: Annotated[bool, typer.Option("--serve", help="Serve the live status page")] = False,
    host: Annotated[str | None, typer.Option(help="[default: UNIFIER_STATUS_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="[default: UNIFIER_STATUS_PORT]")] = None,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between samples")] = 2.0,
) -> None:
    """Lag per stage, throughput, dead letters and merges. Once, or with --serve as a
    page of live charts (/, /api/status, and /metrics with the lag per partition)."""
    from unifier.lag import LagProbe
    from unifier.status import StatusSampler, create_status_app

    settings = settings_of(ctx)
    sampler = StatusSampler(settings, settings.worker_metrics_urls(), interval)
    if not serve:
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
        return
    from aiohttp import web

    bind_host = host or settings.status_host
    bind_port = settings.status_port if port is None else port
    logs.configure(settings.log_level, settings.log_format)
    sampler.start()
    err.print(f"status page on http://{bind_host}:{bind_port}/ (Ctrl-C stops)")
    try:
        web.run_app(create_status_app(sampler), host=bind_host, port=bind_port, print=None)
    finally:
        sampler.stop()


# --- ingest ------------------------------------------------------------------------
def _require_input_topic(settings: Settings) -> None:
    from unifier.topics import missing_topics

    try:
        missing = missing_topics(settings, [settings.topic_touchpoints])
    except Exception as exc:
        raise fail(f"could not reach the broker at {settings.bootstrap_servers}: {exc}") from None
    if missing:
        raise fail(f"topic '{missing[0]}' does not exist; run `unifier topics create` first")


@app.command()
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
    _require_input_topic(settings)
    result = ingest_file(file, settings, rejects, progress)
    err.print(result.summary("ingested", "lines"), highlight=False)
    if result.failed:
        raise typer.Exit(2)
    if result.rejected:
        raise typer.Exit(1)


# --- generate ----------------------------------------------------------------------
@app.command()
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
    import orjson

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
import_app = typer.Typer(help="Import CSV exports of a POS or a CRM.", no_args_is_help=True)
app.add_typer(import_app, name="import")


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
    _require_input_topic(settings)
    try:
        result = import_file(kind, file, settings, mapping, rejects, progress)
    except MappingError as exc:
        raise fail(f"{file}: {exc}") from None
    err.print(result.summary("imported", "rows"), highlight=False)
    if result.failed:
        raise typer.Exit(2)
    if result.rejected:
        raise typer.Exit(1)


CsvFile = Annotated[
    Path, typer.Argument(help="CSV with a header row", exists=True, dir_okay=False, readable=True)
]
MappingOpt = Annotated[
    Path | None,
    typer.Option(
        help="TOML column mapping (see `unifier import mapping KIND`)", exists=True, dir_okay=False
    ),
]
RejectsOpt = Annotated[
    Path | None, typer.Option(help="Where rejected rows go [default: FILE.rejects.jsonl]")
]
ProgressOpt = Annotated[bool | None, typer.Option(help="Progress bar [default: on a tty]")]


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


# --- lag ---------------------------------------------------------------------------
def _lag_table(rows: list[Any], caught_up: bool = True) -> Table:
    total = sum(r.lag for r in rows)
    oldest = max((r.lag_seconds or 0.0 for r in rows), default=0.0)
    table = Table(
        "stage", "topic", "partition", "committed", "end", "lag", "lag (s)", "owner",
        caption=f"total lag: {total} records, oldest {oldest:.1f}s"
        + ("" if caught_up else " - not caught up"),
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


@app.command()
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
    from rich.live import Live

    from unifier.lag import LagProbe

    settings = settings_of(ctx)
    where = f"could not measure lag at {settings.bootstrap_servers}"
    if watch:
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


# --- view --------------------------------------------------------------------------
view_app = typer.Typer(help="The Redis view (a cache of the output topics).", no_args_is_help=True)
app.add_typer(view_app, name="view")


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


# --- dlq ---------------------------------------------------------------------------
dlq_app = typer.Typer(help="Look at and replay the dead-letter topic.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


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
    import orjson

    from unifier.dlq import read

    settings = settings_of(ctx)
    count = 0
    try:
        for letter in read(settings, limit):
            count += 1
            doc = letter.to_json(unmasked)
            if as_json:
                out.print(orjson.dumps(doc).decode(), highlight=False, markup=False)
                continue
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
                out.print(
                    f"  does not decode: {doc['decode_error']}", highlight=False, markup=False
                )
    except Exception as exc:
        raise fail(f"could not read {settings.topic_dlq}: {exc}") from None
    err.print(f"{count} dead letters in {settings.topic_dlq}", highlight=False)


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
    _require_input_topic(settings)
    if file is not None:
        result = replay_file(file, settings, rejects, progress)
        err.print(result.summary("replayed", "lines"), highlight=False)
        if result.failed:
            raise typer.Exit(2)
        if result.rejected:
            raise typer.Exit(1)
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


# --- profiles ----------------------------------------------------------------------
@profiles_app.command("get")
def profiles_get(
    ctx: typer.Context,
    email: Annotated[str | None, typer.Option(help="Look up by email")] = None,
    phone: Annotated[str | None, typer.Option(help="Look up by phone (any format)")] = None,
    user_id: Annotated[str | None, typer.Option(help="Look up by user id")] = None,
    anonymous_id: Annotated[str | None, typer.Option(help="Look up by anonymous id")] = None,
    loyalty_id: Annotated[str | None, typer.Option(help="Look up by loyalty id")] = None,
    id_type: Annotated[str | None, typer.Option("--type", help="Any identifier type...")] = None,
    value: Annotated[str | None, typer.Option(help="...with this value")] = None,
    profile_id: Annotated[str | None, typer.Option("--id", help="By profile id")] = None,
) -> None:
    """Print one profile as JSON. Exit 1 if no profile holds the identifier."""
    from profiles.identifiers import InvalidIdentifier, normalize
    from serve.view import RedisProfileView

    settings = settings_of(ctx)
    given = {
        k: v
        for k, v in {
            "email": email,
            "phone": phone,
            "user_id": user_id,
            "anonymous_id": anonymous_id,
            "loyalty_id": loyalty_id,
        }.items()
        if v is not None
    }
    if id_type is not None or value is not None:
        if id_type is None or value is None:
            raise fail("--type and --value go together")
        given[id_type] = value
    if len(given) + (profile_id is not None) != 1:
        raise fail(
            "give exactly one of --email, --phone, --user-id, --anonymous-id, "
            "--loyalty-id, --type/--value or --id"
        )
    view = RedisProfileView.from_url(settings.redis_url)
    try:
        if profile_id is not None:
            found, what = view.get(profile_id), f"profile {profile_id}"
        else:
            ((kind, raw),) = given.items()
            if kind not in identifier_priorities(settings):
                raise fail(
                    f"unknown identifier type '{kind}' (configured: "
                    f"{', '.join(sorted(identifier_priorities(settings)))})"
                )
            try:
                norm = normalize(
                    kind, raw, settings.default_phone_region, identity_rules(settings).email
                )
            except InvalidIdentifier as exc:
                raise fail(f"{kind}: {exc}") from None
            found, what = view.lookup(kind, norm), f"profile with that {kind}"
    except OSError as exc:
        raise fail(f"could not reach Redis at {settings.redis_url}: {exc}") from None
    finally:
        view.close()
    if found is None:
        err.print(f"no {what}")
        raise typer.Exit(1)
    sys.stdout.write(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() + "\n")


@profiles_app.command("why")
def profiles_why(
    ctx: typer.Context,
    profile_id: Annotated[str, typer.Argument(help="A profile id (a merged-away one is followed)")],
    as_json: Annotated[bool, typer.Option("--json", help="The explanation as JSON")] = False,
) -> None:
    """How each identifier joined the profile, the merges it went through, and the links
    it refused (with the rule). Exit 1 if there is no such profile."""
    import orjson

    from serve.view import RedisProfileView

    settings = settings_of(ctx)
    view = RedisProfileView.from_url(settings.redis_url)
    try:
        found = view.why(profile_id)
    except OSError as exc:
        raise fail(f"could not reach Redis at {settings.redis_url}: {exc}") from None
    finally:
        view.close()
    if found is None:
        err.print(f"no profile {profile_id}")
        raise typer.Exit(1)
    profile, why = found
    if as_json:
        doc = {"profile_id": profile["profile_id"], **why}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if profile["profile_id"] != profile_id:
        out.print(f"{profile_id} was merged into {profile['profile_id']}", highlight=False)
    out.print(f"profile {profile['profile_id']}", highlight=False)
    for entry in why.get("identifiers", []):
        how = entry["how"]
        out.print(
            f"  {entry['identifier']}  {how} (event {entry['event_id']})",
            highlight=False,
            markup=False,
        )
    for merge in why.get("merges", []):
        out.print(
            f"  merged {merge['loser']} in: event {merge['event_id']} linked them through "
            f"{merge['via']}",
            highlight=False,
            markup=False,
        )
    for refused in why.get("refused", []):
        out.print(
            f"  refused: event {refused['event_id']} would have linked {refused['identifier']} "
            f"(with {refused['other']}): {refused['rule']}",
            highlight=False,
            markup=False,
        )


@profiles_app.command("export")
def profiles_export(
    ctx: typer.Context,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write [default: stdout]")
    ] = None,
) -> None:
    """Every profile as JSON lines: profile_id, identifiers, traits, computed, version."""
    import redis

    from serve.view import RedisProfileView

    settings = settings_of(ctx)
    view = RedisProfileView.from_url(settings.redis_url)
    count = 0
    try:
        with open(output, "wb") if output else open(sys.stdout.fileno(), "wb", closefd=False) as fh:
            for profile in view.scan():
                fh.write(orjson.dumps(profile) + b"\n")
                count += 1
    except redis.RedisError as exc:
        raise fail(f"could not read Redis at {settings.redis_url}: {exc}") from None
    finally:
        view.close()
    err.print(f"exported {count} profiles" + (f" to {output}" if output else ""))


# --- demo --------------------------------------------------------------------------
@app.command()
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


def main() -> None:
    app()
