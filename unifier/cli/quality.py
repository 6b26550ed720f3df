"""``unifier quality``: the data-quality KPIs the workers keep as profiles change —
completeness per trait, duplicate candidates, identifiers per profile, merges, splits
and refused links, freshness per source, dead letters — and the review list of
duplicate candidates."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import orjson
import typer

from unifier.cli.common import err, fail, out, settings_of

quality_app = typer.Typer(help="Data-quality KPIs and the duplicates to review.",
                          no_args_is_help=True)  # fmt: skip


@quality_app.command("report")
def quality_report_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON")] = False,
) -> None:
    """The KPIs now, with their change since the start of the day (UTC) and yesterday's
    counts next to today's."""
    from serve.quality import quality_report

    try:
        report = quality_report(settings_of(ctx))
    except (OSError, TimeoutError) as exc:
        raise fail(f"could not read the KPIs: {exc}", 1) from None
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    _print(report)


def _signed(x: float, pct: bool = False) -> str:
    return f"{x * 100:+.1f} pp" if pct else f"{x:+,}"


def _print(r: dict[str, Any]) -> None:
    from rich.table import Table

    p = r["profiles"]
    out.print(f"profiles: {p['count']:,} ({_signed(p['change'])} today)")
    table = Table("trait", "profiles with it", "today", title="completeness")
    for trait, c in sorted(r["completeness"].items(), key=lambda kv: -kv[1]["share"]):
        table.add_row(trait, f"{c['share'] * 100:.1f} %", _signed(c["change"], pct=True))
    out.print(table)
    d = r["duplicates"]
    out.print(f"duplicate candidates: {d['groups']:,} groups, {d['profiles']:,} profiles "
              f"({_signed(d['change'])} today) - `unifier quality duplicates`")  # fmt: skip
    out.print("identifiers per profile: " + ", ".join(
        f"{k}: {v:,}" for k, v in r["identifier_buckets"].items()))  # fmt: skip
    for name in ("today", "yesterday"):
        day = r[name]
        refused = ", ".join(f"{k} {v:,}" for k, v in day["refused"].items()) or "none"
        out.print(f"{name}: {day['merges']:,} merges, {day['splits']:,} splits, refused: "
                  f"{refused}", highlight=False)  # fmt: skip
    fresh = Table("source", "newest event", "age", title="freshness")
    for source, f in r["freshness"].items():
        fresh.add_row(source, f["newest"], f"{f['age_s']:,.0f} s")
    out.print(fresh)
    letters = Table("dead letters", "last day", "day before")
    for reason, n in r.get("dead_letters", {}).items():
        letters.add_row(reason, str(n["last_day"]), str(n["day_before"]))
    out.print(letters)


@quality_app.command("duplicates")
def quality_duplicates(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="At most this many groups")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array per group")] = False,
) -> None:
    """Profiles that look like one person (same name and postal code, or same name and
    birth date) but were never linked: a review list, largest groups first. Split or
    link them by hand once reviewed (an event that carries both identifiers links them)."""
    from serve.quality import duplicates

    try:
        groups = duplicates(settings_of(ctx), limit)
    except OSError as exc:
        raise fail(f"could not read the duplicates: {exc}", 1) from None
    for group in groups:
        if as_json:
            sys.stdout.write(orjson.dumps(group).decode() + "\n")
            continue
        out.print("; ".join(
            f"{p['profile_id']} ({p['traits'].get('first_name', '?')} "
            f"{p['traits'].get('last_name', '?')}, {p['computed'].get('event_count', 0)} events)"
            for p in group), highlight=False, markup=False)  # fmt: skip
    err.print(f"{len(groups)} groups")
