"""``unifier demo``: the whole path on the embedded stack, then everything stops.

Its own ports and state directory, so it never collides with `unifier stack up`
or with a test run on the same machine.
"""

from __future__ import annotations

import base64
import contextlib
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from config.settings import Settings
from producers.sdk import Unifier
from producers.synthetic import generate_journeys, score
from serve.lag import LagProbe
from serve.view import RedisProfileView
from unifier.processes import StackError, free_port
from unifier.stack import EmbeddedStack, running


def demo_settings(state_dir: Path) -> Settings:
    return Settings(
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        state_dir=state_dir,
        touchpoint_partitions=4,
        internal_partitions=4,
        collector_port=free_port(),
        collector_write_keys={DEMO_KEY: "web"},
    )


DEMO_KEY = "wk_demo"

#: The README's two examples ("Segments"), applied before the demo's traffic.
DEMO_SEGMENTS = {
    "us_recent_signups": 'profile.traits.country == "US" && '
    'timestamp(profile.computed.first_seen) > now - duration("4320h")',
    "high_value_lapsed": "profile.computed.orders >= 2 && "
    'timestamp(profile.computed.last_seen) < now - duration("1440h")',
}
#: The demo's customers start their journeys over the last 200 days, so that some
#: signed up recently and some have lapsed.
HISTORY_DAYS = 200


def _apply_segments(settings: Settings) -> None:
    from profiles.segments import Definition
    from unifier.segments import plan, publish

    wanted = [Definition(name, where) for name, where in DEMO_SEGMENTS.items()]
    publish(settings, plan(wanted, {}))


def _segment_sizes(settings: Settings) -> str:
    from sinks.redisconn import connect
    from unifier.segments import sizes

    client = connect(settings.redis_url, settings.redis_cluster)
    try:
        counts = sizes(client, list(DEMO_SEGMENTS))
    finally:
        client.close()
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def _post(url: str, events: list[dict[str, Any]]) -> None:
    request = urllib.request.Request(url, data=orjson.dumps(events), method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header(
        "Authorization", "Basic " + base64.b64encode(f"{DEMO_KEY}:".encode()).decode()
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise StackError(
            f"the collector refused demo events: {exc.code} {exc.read()[:300]!r}"
        ) from None


#: The demo's "CRM": a SQLite table kept in two-way sync (README "Destinations").
DEMO_DESTINATIONS = """
[destinations.crm]
kind = "sqlite"
url = "{path}"
table = "customers"
mode = "mirror"
row_identifier = "crm_id"

[destinations.crm.fields]
email = "identifiers.email"
phone = "identifiers.phone"
first_name = "traits.first_name"
last_name = "traits.last_name"
email_opt_in = "consent.email_marketing"
"""


def _two_way(settings: Settings, profile: dict[str, Any], status: Console) -> str:
    """Mirror the profiles into the SQLite "CRM", edit one row there as a clerk would,
    and show the edit coming back unified. Returns the profile's id."""
    import sqlite3

    from unifier.sync import Syncer, destinations_of

    crm = settings.state_dir / "crm.db"
    toml = settings.state_dir / "destinations.toml"
    toml.write_text(DEMO_DESTINATIONS.format(path=crm))
    settings = settings.model_copy(update={"destinations_path": toml})
    syncer = Syncer(settings, destinations_of(settings, "default"), group="default")
    table = syncer.tables[0]
    try:
        pid = profile["profile_id"]
        deadline = time.monotonic() + 60
        while pid not in {r["unifier_profile_id"] for r in table.rows().values()}:
            if time.monotonic() > deadline:
                raise StackError("the sync did not mirror the profiles within 60s")
            syncer.step()
        rows = table.rows()
        status.print(
            f"[green]✓[/] sync: {len(rows)} profiles mirrored into the CRM table "
            f"{crm.name}:customers (unifier sync, two-way)"
        )
        row_id = next(r for r, row in rows.items() if row["unifier_profile_id"] == pid)
        before = table.writes_logged()
        clerk = sqlite3.connect(crm, isolation_level=None, timeout=30)
        clerk.execute(
            "UPDATE customers SET first_name = ?, phone = ? WHERE id = ?",
            ("Alexandra", "(415) 555-0142", row_id),
        )
        clerk.close()
        status.print(
            f"  a clerk edits row {row_id} in the CRM: first_name 'Alexandra', "
            "phone '(415) 555-0142'"
        )
        view = RedisProfileView.for_settings(settings)
        with contextlib.closing(view):
            deadline = time.monotonic() + 60
            while True:
                syncer.step()
                now = view.get(pid) or {}
                named = now.get("traits", {}).get("first_name") == "Alexandra"
                if named and "+14155550142" in now.get("identifiers", {}).get("phone", []):
                    break
                if time.monotonic() > deadline:
                    raise StackError("the CRM's edit did not come back within 60s")
        for _ in range(10):  # the update it caused reaches the sync too
            syncer.step()
        echo = table.writes_logged() - before
        status.print(
            f"[green]✓[/] the edit came back unified: {pid} has first_name 'Alexandra' and "
            f"phone +14155550142 (from source 'crm'); {echo} writes echoed back to the CRM"
        )
        return str(pid)
    finally:
        syncer.close()


TABLET = "demo-store-tablet"


def _why_lines(settings: Settings, pid: str) -> list[str]:
    """``unifier profiles why`` for a profile, as the CLI prints it."""
    from profiles.projection import why_text

    view = RedisProfileView.for_settings(settings)
    with contextlib.closing(view):
        found = view.why(pid)
    return [] if found is None else why_text(pid, *found)


def _fits(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two profiles can merge under the default per-type limits."""
    from profiles.identifiers import DEFAULT_LIMITS

    types = set(a["identifiers"]) | set(b["identifiers"]) | {"anonymous_id"}
    counts = {t: len(a["identifiers"].get(t, [])) + len(b["identifiers"].get(t, [])) for t in types}
    counts["anonymous_id"] += 1
    return all(n <= DEFAULT_LIMITS.get(t, n) for t, n in counts.items())


def _correction(settings: Settings, profiles: list[dict[str, Any]], status: Console) -> None:
    """A wrong merge and its split: two customers typed in on the shop's tablet become
    one profile; detaching the second one's email splits them again, exactly."""
    from serve.identity import request_split, wait_split

    with_email = [p for p in profiles[1:] if p["identifiers"].get("email")]
    pair = next(((a, b) for a in with_email for b in with_email if a is not b and _fits(a, b)),
                None)  # fmt: skip
    if pair is None:
        return
    ana, bo = pair
    ana_email, bo_email = ana["identifiers"]["email"][0], bo["identifiers"]["email"][0]
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    with Unifier(settings) as sdk:
        for n, email in enumerate((ana_email, bo_email)):
            ids = {"email": email, "anonymous_id": TABLET}
            sdk.send({"event_id": f"demo-tablet-{n}", "type": "page_viewed", "source": "pos",
                      "occurred_at": now, "identifiers": ids})  # fmt: skip
        sdk.flush()
    with LagProbe(settings) as probe:
        probe.wait(timeout=120)
    view = RedisProfileView.for_settings(settings)
    with contextlib.closing(view):
        merged = view.lookup("email", bo_email)
    if merged is None or ana_email not in merged["identifiers"].get("email", []):
        return  # (the rules refused the merge: nothing to show)
    pid = merged["profile_id"]
    status.print(f"[green]✓[/] a wrong merge: two customers typed in on the shop's tablet are "
                 f"one profile now; `unifier profiles why {pid}`:")  # fmt: skip
    for line in _why_lines(settings, pid):
        status.print(f"    {line}", highlight=False, markup=False)
    started = time.monotonic()
    asked = request_split(settings, pid, [("email", bo_email)], "demo", "demo")
    done = wait_split(settings, asked, 60)
    if done is None:
        raise StackError("the split was not done within 60s")
    [part] = done["parts"]
    status.print(f"[green]✓[/] split in {time.monotonic() - started:.2f}s (`unifier profiles "
                 f"split {pid} --detach email=…`): {part['profile_id']} took the second "
                 f"customer's {part['computed']['event_count']} events; `unifier profiles why "
                 f"{pid}` now:")  # fmt: skip
    for line in _why_lines(settings, pid):
        status.print(f"    {line}", highlight=False, markup=False)


def _quality(settings: Settings, status: Console) -> None:
    """The data-quality KPIs the worker kept (``unifier quality report``)."""
    from serve.quality import quality_report

    q = quality_report(settings)
    shares = ", ".join(
        f"{t} {c['share'] * 100:.0f} %"
        for t, c in sorted(q["completeness"].items(), key=lambda kv: -kv[1]["share"])[:6]
    )
    fresh = ", ".join(f"{s} {f['age_s']:,.0f} s" for s, f in q["freshness"].items())
    status.print(
        f"[green]✓[/] data quality (`unifier quality report`): {q['profiles']['count']} "
        f"profiles; completeness {shares}; {q['duplicates']['groups']} duplicate candidate "
        f"groups; today {q['today']['merges']} merges, {q['today']['splits']} splits; newest "
        f"event per source: {fresh} ago",
        highlight=False,
    )


def _score(profile: dict[str, Any]) -> tuple[int, int]:
    return len(profile["identifiers"]), profile["computed"]["event_count"]


def _summary(profiles: list[dict[str, Any]]) -> Table:
    table = Table("profile", "identifiers", "sources", "events", "name", title="unified profiles")
    for p in profiles:
        ids = ", ".join(t if len(v) == 1 else f"{t} x{len(v)}" for t, v in p["identifiers"].items())
        sources = ", ".join(p["computed"]["events_by_source"])
        name = " ".join(str(p["traits"].get(k, "")) for k in ("first_name", "last_name")).strip()
        table.add_row(p["profile_id"], ids, sources, str(p["computed"]["event_count"]), name)
    return table


def _send_and_wait(
    settings: Settings,
    stack: EmbeddedStack,
    events: list[dict[str, Any]],
    people: int,
    status: Console,
) -> None:
    web = [e for e in events if e["source"] == "web"]
    others = [e for e in events if e["source"] != "web"]
    # The website's events go through the HTTP collector, as a site's would...
    url = f"http://{settings.collector_host}:{settings.collector_port}/v1/touchpoints"
    for start in range(0, len(web), 500):
        _post(url, web[start : start + 500])
    # ...the store, email, support and CRM systems use the producer SDK.
    with Unifier(settings) as sdk:
        for event in others:
            sdk.send(event)
        report = sdk.flush()
    if report.events_failed or report.errors:
        raise StackError(f"delivery failed: {'; '.join(report.errors[:3])}")
    sources = sorted({e["source"] for e in others})
    status.print(
        f"[green]✓[/] {people} people: {len(web)} web touchpoints through the HTTP collector, "
        f"{report.events_sent} from {', '.join(sources)} through the SDK"
    )
    with LagProbe(settings) as probe:
        if not probe.wait(timeout=120):
            raise StackError(f"the worker did not catch up within 120s; see {stack.dir}/worker.log")


def run_demo(people: int, show: int, console: Console, status: Console) -> None:
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="unifier-demo-") as tmp,
        status.status("starting the embedded broker and Redis") as spinner,
    ):
        settings = demo_settings(Path(tmp))
        with running(settings) as stack:
            spinner.update("starting a worker (it joins its consumer group) and the collector")
            _apply_segments(settings)
            stack.start_worker()
            stack.start_collector()
            status.print(
                f"[green]✓[/] stack up in {time.monotonic() - started:.1f}s: broker "
                f"{settings.bootstrap_servers}, redis {settings.redis_url}, 1 worker, "
                f"collector http://{settings.collector_host}:{settings.collector_port}"
            )
            spinner.update("sending touchpoints and waiting for the worker to catch up")
            journeys = generate_journeys(
                people,
                seed=7,
                start=datetime.now(UTC) - timedelta(days=HISTORY_DAYS),
                spread_days=HISTORY_DAYS - 20,
            )
            _send_and_wait(settings, stack, journeys.events, people, status)
            segments = _segment_sizes(settings)
            view = RedisProfileView.for_settings(settings)
            with contextlib.closing(view):
                profiles = sorted(view.scan(), key=_score, reverse=True)
            if profiles:
                spinner.update("a wrong merge, and its split")
                _correction(settings, profiles, status)
                _quality(settings, status)
                spinner.update("two-way sync with a SQLite CRM")
                edited = _two_way(settings, profiles[0], status)
                view = RedisProfileView.for_settings(settings)
                with contextlib.closing(view):
                    profiles = sorted(view.scan(), key=_score, reverse=True)
                    profiles.sort(key=lambda p: p["profile_id"] != edited)
            spinner.update("stopping the stack")
        clusters = [
            {f"{t}:{v}" for t, values in p["identifiers"].items() for v in values} for p in profiles
        ]
        result = score(clusters, journeys.truth)
        merged = sum(len(p["computed"]["merged_from"]) for p in profiles)
        refused = sum(p["computed"]["refused_links"] for p in profiles)
        status.print(
            f"[green]✓[/] {len(profiles)} unified profiles in Redis ({merged} merges, "
            f"{refused} links refused by the identity rules); against the generator's truth: "
            f"precision {result.precision:.3f}, recall {result.recall:.3f}"
        )
        status.print(f'[green]✓[/] segments (README "Segments"), members: {segments}')
        console.print(_summary(profiles[:show]))
        if profiles:
            console.print("the first one, as `unifier profiles get --id` prints it:")
            text = orjson.dumps(profiles[0], option=orjson.OPT_INDENT_2).decode()
            console.print(Syntax(text, "json", theme="ansi_dark", word_wrap=True))
    status.print(f"[green]✓[/] stack stopped; demo took {time.monotonic() - started:.1f}s")
