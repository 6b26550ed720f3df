"""``unifier identity``: change the identity rules while the product runs — block an
identifier, mark one shared, lower a per-type limit — with the profiles merged against
the new rule split as if it had always held; list the changes in force."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import orjson
import typer

from unifier.cli.common import actor, err, fail, out, settings_of

identity_app = typer.Typer(
    help="Change the identity rules (block, shared, limit), applied to the past too.",
    no_args_is_help=True,
)

Reason = Annotated[str, typer.Option(help="Why (a ticket number; no personal data)")]
Wait = Annotated[float, typer.Option("--wait", help="Seconds to wait for the workers (0: do not)")]
AsJson = Annotated[bool, typer.Option("--json", help="The result as JSON")]


def _pair(item: str) -> tuple[str, str]:
    id_type, sep, value = item.partition("=")
    if not sep or not id_type.strip() or not value:
        raise fail(f"give TYPE=VALUE (got {item.split('=', 1)[0]!r}...)")
    return id_type.strip(), value


@identity_app.command("block")
def identity_block(
    ctx: typer.Context,
    identifier: Annotated[str, typer.Argument(metavar="TYPE=VALUE", help="The identifier")],
    shared: Annotated[
        bool,
        typer.Option(
            "--shared",
            help="Mark it shared instead: it stays in one profile but links nothing "
            "(a store's phone, a family email)",
        ),
    ] = False,
    reason: Reason = "",
    wait_s: Wait = 60.0,
    as_json: AsJson = False,
) -> None:
    """Block an identifier from now on (dropped from every event, like the configured
    block list) — or mark it shared — and split the profile it joined wrongly, as if
    the rule had always held. Exit 1 if the workers had not finished within --wait."""
    from profiles.rules import BLOCKED, SHARED
    from serve.identity import mark_identifier

    id_type, value = _pair(identifier)
    sent = _sent(ctx, lambda s: mark_identifier(s, id_type, value, SHARED if shared else BLOCKED,
                                                actor(), reason))  # fmt: skip
    _finish(ctx, sent, wait_s, as_json)


@identity_app.command("limit")
def identity_limit(
    ctx: typer.Context,
    rule: Annotated[str, typer.Argument(metavar="TYPE=N", help="At most N of TYPE a profile")],
    reason: Reason = "",
    wait_s: Wait = 120.0,
    as_json: AsJson = False,
) -> None:
    """Lower (or set) how many identifiers of a type one profile may hold, and split
    every profile holding more, as if the limit had always held (its events linked again
    in time order). Exit 1 if the workers had not finished within --wait."""
    from serve.identity import lower_limit

    id_type, raw = _pair(rule)
    try:
        limit = int(raw)
    except ValueError:
        raise fail(f"the limit is a number (got {raw!r})") from None
    sent = _sent(ctx, lambda s: lower_limit(s, id_type, limit, actor(), reason))
    _finish(ctx, sent, wait_s, as_json)


@identity_app.command("unblock")
def identity_unblock(
    ctx: typer.Context,
    identifier: Annotated[str, typer.Argument(metavar="TYPE=VALUE", help="The identifier")],
    reason: Reason = "",
) -> None:
    """Lift a block or a shared mark: from now on the identifier links again (profiles
    split by it stay apart until an event links them)."""
    from profiles.lookup import IdentifierRefused, lookup_key
    from profiles.rules import rule_key
    from serve.identity import mark_key, publish_rule

    settings = settings_of(ctx)
    id_type, value = _pair(identifier)
    try:
        key, _graph = mark_key(settings, id_type, lookup_key(settings, id_type, value))
        publish_rule(settings, rule_key("mark", key), None, actor(), reason)
    except IdentifierRefused as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"not sent: {exc}", 1) from None
    err.print(f"lifted for {id_type}")


@identity_app.command("rules")
def identity_rules_cmd(ctx: typer.Context, as_json: AsJson = False) -> None:
    """The identity rules changed at run time, in force now (identifiers by type and
    token: their values are not kept in clear)."""
    from serve.identity import read_rules

    try:
        rules = read_rules(settings_of(ctx))
    except (OSError, TimeoutError) as exc:
        raise fail(f"could not read the rules: {exc}", 1) from None
    if as_json:
        sys.stdout.write(orjson.dumps(rules, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if not rules:
        err.print("no rule changed since the configuration")
    for key, record in sorted(rules.items()):
        what = record.get("mark") or f"limit {record.get('limit')}"
        at = time.strftime("%Y-%m-%d %H:%M", time.gmtime(record.get("at", 0) / 1000))
        out.print(f"{key.split('|', 1)[1]}  {what}  ({at} UTC by {record.get('by', '?')})",
                  highlight=False, markup=False)  # fmt: skip


@identity_app.command("preview")
def identity_preview(
    ctx: typer.Context,
    block: Annotated[
        list[str] | None, typer.Option(metavar="TYPE=VALUE", help="Would block (repeat)")
    ] = None,
    shared: Annotated[
        list[str] | None, typer.Option(metavar="TYPE=VALUE", help="Would mark shared (repeat)")
    ] = None,
    limit: Annotated[
        list[str] | None, typer.Option(metavar="TYPE=N", help="Would set this limit (repeat)")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """A dry run: which profiles these rules would split (and into what), and which
    refused links a raised limit would no longer refuse — reading the workers' tables,
    changing nothing."""
    from profiles.lookup import IdentifierRefused
    from profiles.rules import BLOCKED, SHARED
    from serve.identity import SplitRefused, preview
    from serve.privacy import PrivacyError

    marks = [(*_pair(b), BLOCKED) for b in block or []]
    marks += [(*_pair(x), SHARED) for x in shared or []]
    limits = {}
    for item in limit or []:
        id_type, raw = _pair(item)
        if not raw.isdigit() or int(raw) < 1:
            raise fail(f"a limit is a number, 1 or more (got {raw!r})")
        limits[id_type] = int(raw)
    if not marks and not limits:
        raise fail("give at least one --block, --shared or --limit")
    settings = settings_of(ctx)
    try:
        with _progress("reading the workers' tables") as advance:
            found = preview(settings, marks, limits, advance)
    except (IdentifierRefused, SplitRefused) as exc:
        raise fail(str(exc)) from None
    except (PrivacyError, OSError, TimeoutError) as exc:
        raise fail(f"could not read the tables: {exc}", 1) from None
    if as_json:
        sys.stdout.write(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    for s in found["would_split"]:
        parts = [s["rest"], *s["parts"]]
        out.print(f"{s['profile_id']} would split in {len(parts)}:", highlight=False)
        for part in parts:
            ids = ", ".join(f"{t}={v}" for t, vs in part["identifiers"].items() for v in vs)
            out.print(f"  {ids} ({part['events']} events)", highlight=False, markup=False)
    for m in found["may_merge"]:
        out.print(f"{m['profile_id']} may merge with {m['with']} (event {m['event_id']}, "
                  f"refused by {m['rule']})", highlight=False, markup=False)  # fmt: skip
    err.print(f"{found['profiles_read']:,} profiles read: {len(found['would_split'])} would "
              f"split, {len(found['may_merge'])} refused links would not be refused")  # fmt: skip


def _progress(what: str) -> Any:
    """A transient count of the records read, on stderr when it is a terminal."""
    from contextlib import contextmanager

    from rich.progress import Progress, SpinnerColumn, TextColumn

    @contextmanager
    def shown() -> Any:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err,
                      transient=True, disable=not err.is_terminal) as bar:  # fmt: skip
            task = bar.add_task(what)
            yield lambda n: bar.update(task, description=f"{what}: {n:,} records")

    return shown()


def _sent(ctx: typer.Context, send: Any) -> Any:
    from profiles.lookup import IdentifierRefused
    from serve.identity import SplitRefused
    from serve.privacy import PrivacyError

    try:
        return send(settings_of(ctx))
    except (IdentifierRefused, SplitRefused) as exc:
        raise fail(str(exc)) from None
    except (PrivacyError, OSError, TimeoutError) as exc:
        raise fail(f"not sent: {exc}", 1) from None


def _finish(ctx: typer.Context, sent: Any, wait_s: float, as_json: bool) -> None:
    from serve.identity import wait_rule

    started = time.monotonic()
    err.print(f"{sent.rule}: in force; {len(sent.profiles)} profile(s) to split "
              f"(split {sent.split})")  # fmt: skip
    if not sent.profiles or wait_s <= 0:
        if as_json:
            doc = {"rule": sent.rule, "split": sent.split, "profiles": sent.profiles}
            sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return
    done = wait_rule(settings_of(ctx), sent, wait_s)
    if done is None:
        err.print(f"not done after {wait_s:.0f}s: see `unifier profiles why` for each")
        raise typer.Exit(1)
    if as_json:
        doc = {"rule": sent.rule, "split": sent.split, "profiles": done}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for pid, now in done.items():
            out.print(f"{pid} -> {', '.join(now) or '(nothing left)'}", highlight=False)
    err.print(f"applied in {time.monotonic() - started:.1f}s")
