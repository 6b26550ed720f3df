"""Commands about unified profiles: ``profiles get``, ``profiles why`` and ``profiles
export`` read the Redis view; ``profiles split`` corrects a wrong merge."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from config.settings import Settings
from unifier.cli.common import actor, err, fail, out, settings_of

if TYPE_CHECKING:
    from serve.view import RedisProfileView

profiles_app = typer.Typer(
    help="Read unified profiles from the view; split a wrong merge.", no_args_is_help=True
)


# --- get ---------------------------------------------------------------------------
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
    from serve.view import RedisProfileView

    settings = settings_of(ctx)
    named = {
        "email": email,
        "phone": phone,
        "user_id": user_id,
        "anonymous_id": anonymous_id,
        "loyalty_id": loyalty_id,
    }
    identifier = _one_identifier(named, id_type, value, profile_id)
    view = RedisProfileView.for_settings(settings)
    try:
        found, what = _find(view, settings, identifier, profile_id)
    except OSError as exc:
        raise fail(f"could not reach Redis at {settings.redis_url}: {exc}") from None
    finally:
        view.close()
    if found is None:
        err.print(f"no {what}")
        raise typer.Exit(1)
    sys.stdout.write(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() + "\n")


def _one_identifier(
    named: dict[str, str | None],
    id_type: str | None,
    value: str | None,
    profile_id: str | None,
) -> tuple[str, str] | None:
    """The (type, raw value) asked for, or None when asked by profile id. Exit 2 unless
    exactly one way was given."""
    given = {k: v for k, v in named.items() if v is not None}
    if id_type is not None or value is not None:
        if id_type is None or value is None:
            raise fail("--type and --value go together")
        given[id_type] = value
    if len(given) + (profile_id is not None) != 1:
        raise fail(
            "give exactly one of --email, --phone, --user-id, --anonymous-id, "
            "--loyalty-id, --type/--value or --id"
        )
    return next(iter(given.items()), None)


def _find(
    view: RedisProfileView,
    settings: Settings,
    identifier: tuple[str, str] | None,
    profile_id: str | None,
) -> tuple[dict[str, Any] | None, str]:
    """The profile asked for (or None), and what was asked for, for "no ..."."""
    from profiles.lookup import IdentifierRefused, lookup_key

    if identifier is None:
        assert profile_id is not None
        return view.get(profile_id), f"profile {profile_id}"
    kind, raw = identifier
    try:
        key = lookup_key(settings, kind, raw)
    except IdentifierRefused as exc:
        raise fail(str(exc)) from None
    return view.lookup(kind, key), f"profile with that {kind}"


# --- why ---------------------------------------------------------------------------
@profiles_app.command("why")
def profiles_why(
    ctx: typer.Context,
    profile_id: Annotated[str, typer.Argument(help="A profile id (a merged-away one is followed)")],
    as_json: Annotated[bool, typer.Option("--json", help="The explanation as JSON")] = False,
) -> None:
    """How each identifier joined the profile, the merges it went through, and the links
    it refused (with the rule). Exit 1 if there is no such profile."""
    from serve.view import RedisProfileView

    settings = settings_of(ctx)
    view = RedisProfileView.for_settings(settings)
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
    _print_why(profile_id, profile, why)


def _print_why(profile_id: str, profile: dict[str, Any], why: dict[str, Any]) -> None:
    """The explanation for people: one line per identifier, merge and refused link."""
    from profiles.projection import why_text

    for line in why_text(profile_id, profile, why):
        out.print(line, highlight=False, markup=False)


# --- split -------------------------------------------------------------------------
@profiles_app.command("split")
def profiles_split(
    ctx: typer.Context,
    profile_id: Annotated[str, typer.Argument(help="The profile to split")],
    detach: Annotated[
        list[str],
        typer.Option(
            "--detach",
            metavar="TYPE=VALUE",
            help="An identifier to take away, with what is linked to the rest only "
            "through it (repeat for several)",
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why (a ticket number; no personal data)")] = "",
    wait_s: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for the workers (0: do not)")
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="The result as JSON")] = False,
) -> None:
    """Split a wrong merge: the detached identifiers, and what was linked to the rest
    only through them, become their own profile(s), each event going with the
    identifiers it carried; the link is blocked, so the same events never merge them
    again. Prints the split's id, then the profile and its new parts. Exit 1 if the
    workers had not finished within --wait, 2 if the split cannot be asked for."""
    from profiles.lookup import IdentifierRefused
    from serve.identity import SplitRefused, request_split, wait_split
    from serve.privacy import PrivacyError

    settings = settings_of(ctx)
    pairs = []
    for item in detach:
        id_type, sep, value = item.partition("=")
        if not sep or not id_type or not value:
            raise fail(f"--detach takes TYPE=VALUE (got {item.split('=', 1)[0]!r}...)")
        pairs.append((id_type.strip(), value))
    started = time.monotonic()
    try:
        asked = request_split(settings, profile_id, pairs, actor(), reason)
    except (SplitRefused, IdentifierRefused) as exc:
        raise fail(str(exc)) from None
    except (PrivacyError, OSError) as exc:
        raise fail(f"the split was not sent: {exc}", 1) from None
    sys.stdout.write(asked.split + "\n")
    if wait_s <= 0:
        return
    done = wait_split(settings, asked, wait_s)
    if done is None:
        err.print(f"not done after {wait_s:.0f}s: `unifier profiles why {asked.profile_id}`")
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(orjson.dumps(done, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for doc in [done["profile"], *done["parts"]]:
            if doc is None:
                continue
            ids = ", ".join(f"{t}={v}" for t, vs in doc["identifiers"].items() for v in vs)
            events = doc["computed"].get("event_count", 0)
            out.print(f"{doc['profile_id']}: {ids} ({events} events)", highlight=False,
                      markup=False)  # fmt: skip
    err.print(f"split in {time.monotonic() - started:.1f}s (split {asked.split})")


# --- export ------------------------------------------------------------------------
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
    view = RedisProfileView.for_settings(settings)
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
