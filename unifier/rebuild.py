"""``unifier view rebuild``: the Redis view again, from the log.

Redis is a cache; ``profile-updates`` (the latest profile per id, compacted) and
``profile-merges`` (who was merged into whom) are the truth. A rebuild reads both
from the start to their current end and writes:

1. every profile's latest update (view and explanation), through the same
   write-if-newer script the worker uses — so it can run while workers write, and
   an older record never replaces a newer view;
2. a redirect for every merged-away profile (reads follow it to the survivor);
3. the identifier index, from the live profiles now in Redis (each key keeps the
   smallest profile id that holds it, the same rule as the worker's writes).

Memory stays small: views go to Redis in batches as they are read; only the ids of
merged-away profiles are kept.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import IO, Any

import orjson
import redis
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from config.settings import Settings
from profiles.projection import redirect_view
from schemas.records import ProfileMerge, ProfileRemoved, ProfileUpdate
from serve.feed import ProfileFeed
from sinks.redis_view import DEFINITIONS_KEY, PREFIX, PROFILE_PREFIX, RedisWriter, profile_key
from sinks.redisconn import connect

BATCH = 500
#: The workers' bookkeeping: the view's completeness (``streams.heal``) and who owns
#: which partitions (``streams.registry``).
BOOKKEEPING = (f"{PREFIX}view:".encode(), f"{PREFIX}workers:".encode())
#: The workers' data-quality counts (``sinks.quality``): theirs, not the log's view.
QUALITY = f"{PREFIX}quality:".encode()


@dataclass
class RebuildResult:
    records: int = 0
    profiles: int = 0  # live profiles in the view afterwards
    redirects: int = 0
    identifiers: int = 0
    cleared: int = 0  # keys deleted first (--clear)
    orphans: int = 0  # merged away with no merge record (retention): view removed


def clear(client: redis.Redis) -> int:
    """Delete every key of the view (``unifier:*``) but the workers' bookkeeping of its
    completeness (``unifier:view:*``, ``streams.heal``: the rebuild that follows makes
    it true again), the segment definitions and the data-quality counts they keep there
    (not part of the log's view: a rebuild would not bring them back); returns how
    many."""
    deleted = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=f"{PREFIX}*", count=1000):
        if key.startswith((*BOOKKEEPING, QUALITY)) or key == DEFINITIONS_KEY.encode():
            continue
        batch.append(key)
        if len(batch) >= 1000:
            deleted += int(client.unlink(*batch))
            batch = []
    if batch:
        deleted += int(client.unlink(*batch))
    return deleted


def rebuild(
    settings: Settings,
    *,
    clear_first: bool = False,
    progress: bool | None = None,
    err: IO[str] = sys.stderr,
) -> RebuildResult:
    result = RebuildResult()
    client = connect(settings.redis_url, settings.redis_cluster, timeout=30)
    writer = RedisWriter(client)
    show = err.isatty() if progress is None else progress
    try:
        client.ping()
        if clear_first:
            result.cleared = clear(client)
        removed, winners = _write_updates(settings, writer, _progress_bar(show), result)
        # A profile merged into one since removed (erased) has nothing to lead to: it
        # goes too, its redirect with it.
        gone = {loser for loser in winners if _survivor(loser, winners) in removed}
        winners = {loser: w for loser, w in winners.items() if loser not in gone}
        result.redirects = _write_redirects(writer, winners)
        result.orphans = _remove_orphans(client, (removed | gone) - set(winners), settings, err)
        result.profiles, result.identifiers = _index(client, writer)
    finally:
        client.close()
    return result


def _progress_bar(show: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,} records"),
        TimeElapsedColumn(),
        console=None,
        disable=not show,
        transient=True,
    )


def _write_updates(
    settings: Settings, writer: RedisWriter, bar: Progress, result: RebuildResult
) -> tuple[set[str], dict[str, str]]:
    """Step 1: read both output topics to their end, writing each profile's updates in
    batches (no identifier index yet); the ids removed last, and loser -> winner of
    every merge."""
    removed: set[str] = set()
    winners: dict[str, str] = {}
    views: list[dict[str, Any]] = []
    whys: dict[str, dict[str, Any]] = {}

    def flush() -> None:
        # The identifier index comes last (step 3): a record read now may be older
        # than the latest of another profile that holds the same identifier.
        writer.write(views, whys, index=False)
        views.clear()
        whys.clear()

    feed = ProfileFeed(
        settings.bootstrap_servers,
        updates_topic=settings.topic_profile_updates,
        merges_topic=settings.topic_profile_merges,
    )
    with bar, feed:
        task = bar.add_task("reading profile-updates and profile-merges")
        for change in feed.changes(until_end=True):
            result.records += 1
            bar.advance(task)
            if isinstance(change, ProfileUpdate):
                removed.discard(change.profile_id)
                views.append(change.view())
                whys[change.profile_id] = dict(change.why)
                if len(views) >= BATCH:
                    flush()
            elif isinstance(change, ProfileRemoved):
                removed.add(change.profile_id)
            elif isinstance(change, ProfileMerge):
                winners[change.loser] = change.winner
        flush()
    return removed, winners


def _survivor(profile_id: str, winners: dict[str, str]) -> str:
    for _ in range(64):
        if profile_id not in winners:
            return profile_id
        profile_id = winners[profile_id]
    return profile_id


def _write_redirects(writer: RedisWriter, winners: dict[str, str]) -> int:
    """Step 2: a redirect for every merged-away profile; how many."""
    redirects = [redirect_view(loser, winner) for loser, winner in sorted(winners.items())]
    for start in range(0, len(redirects), BATCH):
        writer.write(redirects[start : start + BATCH], index=False)
    return len(redirects)


def _remove_orphans(
    client: redis.Redis, unmerged: set[str], settings: Settings, err: IO[str]
) -> int:
    """Profiles removed with no merge record (retention): their views go, with a
    warning; how many."""
    orphans = sorted(unmerged)
    if orphans:
        client.delete(*(profile_key(pid) for pid in orphans))
        print(
            f"warning: {len(orphans)} merged-away profiles have no record on "
            f"{settings.topic_profile_merges} (retention?): their views were removed",
            file=err,
        )
    return len(orphans)


def _index(client: redis.Redis, writer: RedisWriter) -> tuple[int, int]:
    """Offer every identifier of every live profile to the index (each key keeps the
    smallest holder, as the worker's writes do); (profiles, identifiers)."""
    profiles = identifiers = 0
    keys: list[Any] = []

    def run(batch: list[Any]) -> None:
        nonlocal profiles, identifiers
        read = client.pipeline(transaction=False)
        for key in batch:
            read.hget(key, "json")
        views = [orjson.loads(raw) for raw in read.execute() if raw]
        live = [view for view in views if "merged_into" not in view]
        profiles += len(live)
        identifiers += writer.index(live)

    for key in client.scan_iter(match=f"{PROFILE_PREFIX}*", count=1000):
        keys.append(key)
        if len(keys) >= BATCH:
            run(keys)
            keys = []
    if keys:
        run(keys)
    return profiles, identifiers
