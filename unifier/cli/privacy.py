"""``unifier privacy``: erase a person, show a request's receipt, let a returning
customer in again, export what is held about a person, rotate the master key; and
``unifier audit``."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from config.settings import Settings
from unifier.cli.common import actor, err, fail, out, settings_of

privacy_app = typer.Typer(
    help="Privacy requests: erasure, access export, suppression, keys.", no_args_is_help=True
)

Email = Annotated[str | None, typer.Option(help="The person's email")]
Phone = Annotated[str | None, typer.Option(help="The person's phone (any format)")]
UserId = Annotated[str | None, typer.Option(help="The person's user id")]
AnonymousId = Annotated[str | None, typer.Option(help="A device or browser id of theirs")]
LoyaltyId = Annotated[str | None, typer.Option(help="Their loyalty card number")]
IdType = Annotated[str | None, typer.Option("--type", help="Any identifier type...")]
Value = Annotated[str | None, typer.Option(help="...with this value")]
ProfileId = Annotated[str | None, typer.Option("--profile", help="A profile id")]


def _identifier(
    settings: Settings, named: dict[str, str | None], id_type: str | None, value: str | None,
    profile_id: str | None,
) -> tuple[str, str] | None:  # fmt: skip
    """(type, normalized value) asked for, or None when asked by profile id."""
    from profiles.lookup import IdentifierRefused, lookup_key
    from unifier.cli.profiles import _one_identifier

    asked = _one_identifier(named, id_type, value, profile_id)
    if asked is None:
        return None
    try:
        return asked[0], lookup_key(settings, *asked)
    except IdentifierRefused as exc:
        raise fail(str(exc)) from None


@privacy_app.command("erase")
def privacy_erase(
    ctx: typer.Context,
    email: Email = None,
    phone: Phone = None,
    user_id: UserId = None,
    anonymous_id: AnonymousId = None,
    loyalty_id: LoyaltyId = None,
    id_type: IdType = None,
    value: Value = None,
    profile_id: ProfileId = None,
    suppress: Annotated[
        bool,
        typer.Option(
            "--suppress/--no-suppress",
            help="Drop (and count) later events that carry an erased identifier",
        ),
    ] = True,
    reason: Annotated[str, typer.Option(help="Why (a ticket number; no personal data)")] = "",
    wait_s: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for the workers (0: do not)")
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="The receipt as JSON")] = False,
) -> None:
    """Erase a person: their profile and every identifier in it, from the tables, the
    view, the output topics, segments and dead letters; their keys are destroyed, so
    no copy anywhere can be read again. Prints the receipt id. Exit 1 if the workers
    had not finished within --wait (see `unifier privacy status`)."""
    from serve.privacy import (
        PrivacyError,
        find_subject,
        request_erasure,
        shred_dead_letters,
        wait_for,
    )

    settings = settings_of(ctx)
    named = {"email": email, "phone": phone, "user_id": user_id,
             "anonymous_id": anonymous_id, "loyalty_id": loyalty_id}  # fmt: skip
    asked = _identifier(settings, named, id_type, value, profile_id)
    started = time.monotonic()
    try:
        subject = find_subject(settings, asked, profile_id)
        if subject.profile_id is None and asked is None:
            raise fail(f"no profile {profile_id}", 1)
        receipt = request_erasure(settings, subject, suppress, reason, actor())
        letters = shred_dead_letters(settings, subject, receipt)
    except (PrivacyError, TimeoutError, OSError) as exc:
        raise fail(str(exc)) from None
    sys.stdout.write(receipt + "\n")
    if subject.profile_id is None:
        err.print("no profile holds it: its key was destroyed and the ledger records it")
    done = wait_for(settings, receipt, wait_s) if wait_s > 0 else None
    seconds = time.monotonic() - started
    if done is not None:
        _show(done.to_json(), as_json)
    err.print(f"{letters} dead letters shredded")
    if done is not None and done.done():
        err.print(f"erased in {seconds:.1f}s (receipt {receipt})")
    elif wait_s > 0:
        err.print(f"still in progress after {wait_s:.0f}s: `unifier privacy status {receipt}`")
        raise typer.Exit(1)


def _show(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return
    from rich.table import Table

    table = Table("step", "count", "seconds after the request")
    for name, step in doc["steps"].items():
        seconds = step.get("seconds")
        table.add_row(name, str(step["count"]), "" if seconds is None else f"{seconds:.2f}")
    err.print(f"receipt {doc['receipt']}: {'done' if doc['done'] else 'in progress'}")
    err.print(table)


@privacy_app.command("status")
def privacy_status(
    ctx: typer.Context,
    receipt: Annotated[str, typer.Argument(help="A receipt id (from `privacy erase`)")],
    as_json: Annotated[bool, typer.Option("--json", help="As JSON")] = False,
) -> None:
    """Each step of an erasure and when it was done. Exit 1 if there is no such
    receipt or it is not done yet."""
    from serve.privacy import read_receipt

    found = read_receipt(settings_of(ctx), receipt)
    if found.requested is None:
        err.print(f"no receipt {receipt}")
        raise typer.Exit(1)
    _show(found.to_json(), as_json)
    if not found.done():
        raise typer.Exit(1)


@privacy_app.command("unsuppress")
def privacy_unsuppress(
    ctx: typer.Context,
    email: Email = None,
    phone: Phone = None,
    user_id: UserId = None,
    anonymous_id: AnonymousId = None,
    loyalty_id: LoyaltyId = None,
    id_type: IdType = None,
    value: Value = None,
) -> None:
    """Let events carrying an erased identifier in again (a returning customer): they
    found a new profile. What was sent before the erasure stays erased. Exit 1 if the
    identifier was not suppressed."""
    from serve.privacy import unsuppress

    settings = settings_of(ctx)
    named = {"email": email, "phone": phone, "user_id": user_id,
             "anonymous_id": anonymous_id, "loyalty_id": loyalty_id}  # fmt: skip
    asked = _identifier(settings, named, id_type, value, None)
    assert asked is not None
    if not unsuppress(settings, asked, actor()):
        err.print(f"that {asked[0]} is not suppressed")
        raise typer.Exit(1)
    err.print(f"{asked[0]} no longer suppressed: new events with it are applied")


@privacy_app.command("export")
def privacy_export(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("-o", "--output", help="The JSON file to write")],
    email: Email = None,
    phone: Phone = None,
    user_id: UserId = None,
    anonymous_id: AnonymousId = None,
    loyalty_id: LoyaltyId = None,
    id_type: IdType = None,
    value: Value = None,
    profile_id: ProfileId = None,
) -> None:
    """An access request: everything held about a person — profile, identifiers and how
    each joined, every event (source, time, what it said), segment memberships, consent
    history, merges — read from the workers' tables and the output topics, as one JSON
    document. Exit 1 if no profile holds the identifier."""
    from serve.privacy import PrivacyError, access_export, find_subject

    settings = settings_of(ctx)
    named = {"email": email, "phone": phone, "user_id": user_id,
             "anonymous_id": anonymous_id, "loyalty_id": loyalty_id}  # fmt: skip
    asked = _identifier(settings, named, id_type, value, profile_id)
    try:
        subject = find_subject(settings, asked, profile_id)
        if subject.profile_id is None:
            err.print("no profile holds it")
            raise typer.Exit(1)
        doc = access_export(settings, subject.profile_id, actor())
    except (PrivacyError, TimeoutError, OSError) as exc:
        raise fail(str(exc)) from None
    output.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    err.print(
        f"wrote {output}: profile {doc['profile']['profile_id']}, {len(doc['events'])} events, "
        f"{len(doc['segment_history'])} segment moves"
    )


@privacy_app.command("rotate-keys")
def privacy_rotate_keys(ctx: typer.Context) -> None:
    """Wrap every data key with the newest master key. With the embedded stack's key
    file, a new master key is made first and the old one dropped after; with
    UNIFIER_MASTER_KEYS, put the new key first, run this, then remove the old one."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from sinks.keys import (
        SqliteKeyStore,
        keystore_path,
        load_master_keys,
        master_keys_file,
        write_master_keys,
    )

    settings = settings_of(ctx)
    keys = load_master_keys(settings)
    from_file = not settings.master_keys
    if from_file:
        keys = [AESGCM.generate_key(256), *keys]
        write_master_keys(master_keys_file(settings), keys)
    store = SqliteKeyStore(keystore_path(settings), keys)
    n = store.rotate()
    store.close()
    if from_file:
        write_master_keys(master_keys_file(settings), keys[:1])
    err.print(f"{n} keys re-wrapped with the newest master key")


@privacy_app.command("keys")
def privacy_keys(ctx: typer.Context) -> None:
    """How many data keys are live and destroyed, by master key."""
    from sinks.keys import SqliteKeyStore

    store = SqliteKeyStore.open(settings_of(ctx))
    for name, n in store.counts().items():
        out.print(f"{name}: {n}")
    store.close()


def audit(
    ctx: typer.Context,
    since: Annotated[
        datetime | None,
        typer.Option(help="From this time (ISO 8601 with a zone, or a date) [default: a day ago]"),
    ] = None,
    action: Annotated[
        list[str] | None,
        typer.Option(
            help="Only these actions (repeat): erase, export, read, split, merge, "
            "refused, identity-rule…"
        ),
    ] = None,
    profile: Annotated[str | None, typer.Option(help="Only records about this profile")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """The audit trail: privacy requests, reads of profiles through the API, and every
    change of identity — merges, splits, refused links and rule changes, each with its
    evidence (event, rule) and who or what made it. No personal data."""
    from serve.privacy import read_audit

    if since is None:
        since = datetime.now(UTC) - timedelta(days=1)
    if since.tzinfo is None:
        raise fail("--since needs a time zone, e.g. 2026-12-01T00:00:00Z")
    n = 0
    for record in read_audit(settings_of(ctx), int(since.timestamp() * 1000)):
        if action and record.get("action") not in action:
            continue
        if profile and profile not in (record.get("profile"), record.get("other")):
            continue
        n += 1
        if as_json:
            sys.stdout.write(orjson.dumps(record).decode() + "\n")
            continue
        at = datetime.fromtimestamp(record["at"] / 1000).astimezone().isoformat(timespec="seconds")
        what = " ".join(f"{k}={v}" for k, v in record.items() if k not in ("at", "actor", "action"))
        out.print(f"{at}  {record.get('actor', '?'):<20} {record.get('action', '?'):<10} {what}",
                  highlight=False, markup=False)  # fmt: skip
    err.print(f"{n} audit records")
