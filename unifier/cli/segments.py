"""``unifier segments``: apply a definitions file, list the segments in force, their
members, and why a profile is in or out of each."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from unifier.cli.common import err, fail, out, settings_of

segments_app = typer.Typer(
    help="Audiences defined in CEL (segments.toml), kept current by the workers.",
    no_args_is_help=True,
)


def _definitions(ctx: typer.Context) -> Any:
    from unifier.segments import read_definitions
    from unifier.topics import missing_topics

    settings = settings_of(ctx)
    try:
        if missing_topics(settings, [settings.topic_segments]):
            raise fail(
                f"topic '{settings.topic_segments}' does not exist; run `unifier topics create`"
            )
        return read_definitions(settings)
    except typer.Exit:
        raise
    except Exception as exc:
        raise fail(f"could not read definitions from {settings.bootstrap_servers}: {exc}") from None


def _redis(ctx: typer.Context) -> Any:
    from sinks.redisconn import connect

    settings = settings_of(ctx)
    return connect(settings.redis_url, settings.redis_cluster)


@segments_app.command("apply")
def segments_apply(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help='segments.toml: [segments.NAME] where = "..."')],
    dry_run: Annotated[bool, typer.Option(help="Check and show the plan; publish nothing")] = False,
) -> None:
    """Check every definition, then publish the file as the set in force: new and
    changed segments are evaluated against every profile (a backfill), segments the file
    no longer has are removed (their members exit). Exit 1, publishing nothing, if any
    definition is refused."""
    from profiles.segments import load_definitions
    from unifier.segments import check_all, plan, publish

    try:
        wanted = load_definitions(file)
    except ValueError as exc:
        raise fail(str(exc)) from None
    problems = check_all(wanted)
    if problems:
        for problem in problems:
            err.print(f"[bold red]refused:[/] {problem}", highlight=False)
        err.print(f"nothing applied: {len(problems)} of {len(wanted)} definitions refused")
        raise typer.Exit(1)
    p = plan(wanted, _definitions(ctx))
    for label, items in (("add", p.added), ("change", p.changed), ("describe", p.described)):
        for d in items:
            err.print(f"  {label:<9} {d.name} (v{d.version})", highlight=False)
    for name in p.removed:
        err.print(f"  remove    {name}", highlight=False)
    if not p:
        err.print(f"nothing to do: {len(p.unchanged)} segments already in force")
        return
    if dry_run:
        err.print("dry run: nothing published")
        return
    try:
        publish(settings_of(ctx), p)
    except Exception as exc:
        raise fail(f"could not publish the definitions: {exc}") from None
    err.print(
        f"[green]✓[/] applied: {len(p.added)} added, {len(p.changed)} changed, "
        f"{len(p.removed)} removed, {len(p.unchanged) + len(p.described)} kept; the workers "
        "evaluate new and changed segments against every profile (`unifier segments list`)"
    )


@segments_app.command("list")
def segments_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per segment")] = False,
) -> None:
    """The segments in force, with their members count (from the Redis view)."""
    from unifier.segments import sizes

    definitions = _definitions(ctx)
    names = sorted(definitions)
    client = _redis(ctx)
    try:
        counts: dict[str, int | None] = dict(sizes(client, names))
    except OSError as exc:
        err.print(f"[yellow]members not counted: Redis unreachable ({exc})[/]")
        counts = dict.fromkeys(names)
    finally:
        client.close()
    if as_json:
        for name in names:
            d = definitions[name]
            sys.stdout.write(orjson.dumps({**d.to_json(), "members": counts[name]}).decode() + "\n")
        return
    if not names:
        err.print("no segments: define them in a TOML file and `unifier segments apply FILE`")
        return
    table = Table("segment", "version", "members", "where", "description")
    for name in names:
        d = definitions[name]
        n = counts[name]
        table.add_row(name, str(d.version), "?" if n is None else str(n), d.where, d.description)
    out.print(table)


@segments_app.command("members")
def segments_members(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A segment name")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Each member's profile as one JSON line")
    ] = False,
) -> None:
    """The profile ids of a segment's members, one per line. Exit 1 if there is no
    such segment."""
    from serve.view import RedisProfileView
    from unifier.segments import members

    if name not in _definitions(ctx):
        err.print(f"no segment {name!r} (see `unifier segments list`)")
        raise typer.Exit(1)
    from sinks.keys import sealer_for

    client = _redis(ctx)
    view = RedisProfileView(client, sealer_for(settings_of(ctx)) if as_json else None)
    count = 0
    try:
        for profile_id in members(client, name):
            if as_json:
                found = view.get(profile_id)
                if found is None:
                    continue
                sys.stdout.write(orjson.dumps(found).decode() + "\n")
            else:
                sys.stdout.write(profile_id + "\n")
            count += 1
    except OSError as exc:
        raise fail(f"could not reach Redis: {exc}") from None
    finally:
        client.close()
    err.print(f"{count} members of {name}")


@segments_app.command("check")
def segments_check(
    ctx: typer.Context,
    profile_id: Annotated[str, typer.Argument(help="A profile id (a merged-away one is followed)")],
    as_json: Annotated[bool, typer.Option("--json", help="The answers as JSON")] = False,
) -> None:
    """For each segment: is the profile in or out, and why — the value of each
    comparison in the definition, now. Exit 1 if there is no such profile."""
    from profiles.segments import compile_segment, explain
    from serve.view import RedisProfileView

    definitions = _definitions(ctx)
    client = _redis(ctx)
    try:
        # as the workers evaluate it: personal values sealed (no segment reads them)
        found = RedisProfileView(client).get(profile_id)
    except OSError as exc:
        raise fail(f"could not reach Redis: {exc}") from None
    finally:
        client.close()
    if found is None:
        err.print(f"no profile {profile_id}")
        raise typer.Exit(1)
    now_ms = int(time.time() * 1000)
    held = set(found.get("segments", []))
    answers = []
    for name in sorted(definitions):
        answer = explain(compile_segment(definitions[name]), found, now_ms)
        answer["in_view"] = name in held  # what the workers last decided
        answers.append(answer)
    if as_json:
        doc = {"profile_id": found["profile_id"], "segments": answers}
        text = orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str).decode()
        sys.stdout.write(text + "\n")
        return
    for a in answers:
        mark = "[green]in[/]" if a["member"] else "[dim]out[/]"
        note = "" if a["member"] == a["in_view"] else " [yellow](the view says otherwise)[/]"
        out.print(f"{a['segment']}: {mark}{note}")
        for c in a["comparisons"]:
            out.print(f"    {c['comparison']}  →  {orjson.dumps(c['value'], default=str).decode()}",
                      highlight=False)  # fmt: skip
        if a["error"]:
            out.print(f"    error: {a['error']}", highlight=False)
        if a["changes_at"]:
            out.print(f"    can change at {a['changes_at']}", highlight=False)
