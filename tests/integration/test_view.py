"""The view's write scripts on a real Redis server, against their rules in plain Python.

Each runs on one server and on a 3-shard Redis Cluster, where no script may span two
shards and the writer's steps replace one script's atomicity (module docstring of
``sinks.redis_view``).

The identity-graph simulator (tests/unit/test_graph.py) checks what the worker writes
with ``ViewModel``; this checks that Redis, through sinks.redis_view's Lua scripts, ends
where ``ViewModel`` ends, for any order of writes: a profile replaced only by a newer
version (a redirect by nothing), an identifier key only by a smaller profile id.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiles.projection import redirect_view
from serve.view import AsyncRedisView, RedisProfileView
from sinks.redis_view import AsyncRedisWriter, RedisWriter, profile_key
from sinks.redisconn import connect
from tests.support.backends import both_redis
from tests.support.view import ViewModel, dump

# Every test here runs against one Redis server and against a 3-shard Redis Cluster.
pytestmark = [pytest.mark.integration, both_redis]

# Ids of different lengths and digits against letters: the script compares bytes.
PIDS = ["p_0a", "p_1f", "p_a0", "p_b", "p_ff0"]
IDS = [("email", "a@x.example"), ("email", "b@x.example"), ("phone", "+14155550100")]


@st.composite
def writes(draw: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    pid = draw(st.sampled_from(PIDS))
    if draw(st.integers(0, 5)) == 0:
        return redirect_view(pid, draw(st.sampled_from([p for p in PIDS if p < pid] or PIDS))), None
    held = draw(st.lists(st.sampled_from(IDS), max_size=3, unique=True))
    identifiers: dict[str, list[str]] = {}
    for id_type, value in sorted(held):
        identifiers.setdefault(id_type, []).append(value)
    version = draw(st.integers(1, 6))
    view = {"profile_id": pid, "identifiers": identifiers, "version": version}
    why = {"identifiers": [], "n": version} if draw(st.booleans()) else None
    return view, why


def redis_as_model(url: str) -> ViewModel:
    got = ViewModel()
    for key, value in dump(url).items():
        if key.startswith("unifier:profile:"):
            pid = key.removeprefix("unifier:profile:")
            got.profiles[pid] = orjson.loads(value["json"])
            if "why" in value:
                got.whys[pid] = orjson.loads(value["why"])
        else:
            got.index[key] = value.decode()
    return got


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.lists(writes(), min_size=1, max_size=4), min_size=1, max_size=6))
def test_redis_ends_where_the_rules_say_whatever_the_order(
    redis_url: str, batches: list[list[tuple[dict[str, Any], dict[str, Any] | None]]]
) -> None:
    client = connect(redis_url)
    client.flushdb()
    model, sync, writer = ViewModel(), RedisWriter(client), AsyncRedisWriter.from_url(redis_url)

    async def write_all() -> None:
        for n, batch in enumerate(batches):
            views = [view for view, _ in batch]
            whys = {view["profile_id"]: why for view, why in batch if why is not None}
            model.write(views, whys)
            if n % 2:  # both writers run the same script
                sync.write(views, whys)
            else:
                await writer.write(views, whys)
        await writer.close()

    try:
        asyncio.run(write_all())
        got = redis_as_model(redis_url)
        assert (got.profiles, got.whys, got.index) == (model.profiles, model.whys, model.index)
        # The read API's one-round-trip script answers what a reader following the
        # redirects one request at a time answers, for every id and identifier.
        plain = RedisProfileView(client)
        assert asyncio.run(read_all(redis_url)) == (
            [plain.get(pid) for pid in PIDS],
            [plain.lookup(id_type, value) for id_type, value in IDS],
        )
    finally:
        client.close()


async def read_all(url: str) -> tuple[list[Any], list[Any]]:
    view = AsyncRedisView.from_url(url)
    try:
        by_id = [await view.get_json(pid) for pid in PIDS]
        by_identifier = [await view.lookup_json(t, v) for t, v in IDS]
    finally:
        await view.close()
    return (
        [orjson.loads(raw) if raw else None for raw in by_id],
        [orjson.loads(raw) if raw else None for raw in by_identifier],
    )


def test_a_profile_whose_trait_reads_like_a_redirect_is_not_followed(redis_url: str) -> None:
    client = connect(redis_url)
    client.flushdb()
    tricky = '{"profile_id":"p_9","merged_into":"p_1"}'
    view = {"profile_id": "p_2", "identifiers": {"email": ["a@x.example"]}, "version": 1,
            "traits": {"merged_into": "p_1", "note": tricky}}  # fmt: skip
    RedisWriter(client).write([view, {"profile_id": "p_1", "identifiers": {}, "version": 1}])
    client.close()
    assert asyncio.run(read_all(redis_url))[1][0] == view


def test_an_identifier_key_keeps_the_survivor_when_a_merged_away_profile_writes_late(
    redis_url: str,
) -> None:
    """What a reader notices: after p_1 absorbed p_2, a late write of p_2 (a record
    replayed after a restart) leaves the email pointing at p_1, the survivor."""
    client = connect(redis_url)
    client.flushdb()
    writer = RedisWriter(client)
    email = {"email": ["ana@x.example"]}
    writer.write([{"profile_id": "p_2", "identifiers": email, "version": 3}])
    writer.write([{"profile_id": "p_1", "identifiers": email, "version": 5},
                  redirect_view("p_2", "p_1")])  # fmt: skip
    writer.write([{"profile_id": "p_2", "identifiers": email, "version": 4}])
    assert client.get("unifier:id:email:ana@x.example") == b"p_1"
    view = RedisProfileView(client)
    assert view.lookup("email", "ana@x.example")["profile_id"] == "p_1"  # type: ignore[index]
    assert view.get("p_2")["profile_id"] == "p_1"  # type: ignore[index]
    client.close()


def test_a_large_batch_is_written_whole_in_bounded_pipelines(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sinks.redis_view

    monkeypatch.setattr(sinks.redis_view, "PIPELINE_PROFILES", 3)
    client = connect(redis_url)
    client.flushdb()
    views = [{"profile_id": f"p_{n:02d}", "identifiers": {"email": [f"{n}@x.example"]},
              "version": 1} for n in range(7)]  # fmt: skip

    async def write() -> int:
        writer = AsyncRedisWriter.from_url(redis_url)
        try:
            return await writer.write(views)
        finally:
            await writer.close()

    try:
        assert asyncio.run(write()) == 7
        assert asyncio.run(write()) == 7  # the same versions again: replaced, not refused
        plain = RedisProfileView(client)
        assert [plain.lookup("email", f"{n}@x.example") for n in range(7)] == views
    finally:
        client.close()


def test_an_unchanged_identity_is_not_rewritten_unless_redis_lost_the_profile(
    redis_url: str,
) -> None:
    """A touch that changed no identifier writes the profile only; the explanation and
    the index stay as they were. A Redis that lost its data (restarted empty, or with
    an older copy than the worker read the profile at) gets the profile back whole on
    that same touch: explanation and index included."""
    from sinks.base import ChangeBatch, ProfileChange
    from sinks.redis_view import RedisViewSink

    client = connect(redis_url)
    client.flushdb()
    ids = {"email": ["ana@x.example"]}
    why = {"identifiers": [{"identifier": "email:ana@x.example", "event_id": "e1",
                            "how": "first seen"}], "merges": [], "refused": []}  # fmt: skip

    def touch(version: int, identity_changed: bool, read: int = 0) -> ChangeBatch:
        view = {"profile_id": "p_1", "identifiers": ids, "version": version}
        change = ProfileChange("p_1", view, why, True, (), identity_changed, read or version - 1)
        return ChangeBatch([change], [])

    async def write(*batches: ChangeBatch) -> None:
        sink = RedisViewSink.from_url(redis_url)
        try:
            for batch in batches:
                await sink.write(batch)
                await sink.flush()
        finally:
            await sink.close()

    try:
        asyncio.run(write(touch(1, True)))
        client.delete("unifier:id:email:ana@x.example")  # gone: shows nobody rewrote it
        asyncio.run(write(touch(2, False)))
        assert client.get("unifier:id:email:ana@x.example") is None
        assert orjson.loads(client.hget(profile_key("p_1"), "why") or b"") == why
        assert int(client.hget(profile_key("p_1"), "version") or 0) == 2
        client.flushdb()  # Redis restarted empty
        asyncio.run(write(touch(3, False)))
        view = RedisProfileView(client)
        assert view.lookup("email", "ana@x.example")["version"] == 3  # type: ignore[index]
        assert orjson.loads(client.hget(profile_key("p_1"), "why") or b"") == why
        # Redis came back with an older copy (it lost the last writes): whole again
        client.delete("unifier:id:email:ana@x.example")
        asyncio.run(write(touch(9, False, read=8)))
        assert view.lookup("email", "ana@x.example")["version"] == 9  # type: ignore[index]
        # Redis ahead of what the writer read: a worker killed after its Redis write
        # but before its table's changelog arrived wrote version 9 from a state the
        # restarted worker never had, and its explanation may differ. A touch that
        # read the profile at 7 and leaves the identity as at 7 still sends it whole.
        client.hset(profile_key("p_1"), "why", b'{"stale":true}')
        asyncio.run(write(touch(10, False, read=7)))
        assert orjson.loads(client.hget(profile_key("p_1"), "why") or b"") == why
        assert int(client.hget(profile_key("p_1"), "version") or 0) == 10
    finally:
        client.close()


def test_a_view_written_without_its_identifier_keys_gets_them_on_the_next_touch(
    redis_url: str,
) -> None:
    """A worker killed between a batch's view writes and its identifier keys (a new
    identifier held at version 6, its key never written). The restarted worker's table
    has version 6, and its next touch of the profile changes no identifier: Redis holds
    the version it read, but not the confirmation that its keys were written, so the
    touch writes the profile whole and the identifier reads again."""
    from sinks.base import ChangeBatch, ProfileChange
    from sinks.redis_view import Plan, RedisViewSink
    from sinks.redisconn import run_scripts_sync

    client = connect(redis_url)
    client.flushdb()
    ids = {"email": ["ana@x.example"], "anonymous_id": ["a-1"]}
    why = {"identifiers": [], "merges": [], "refused": []}
    view = {"profile_id": "p_1", "identifiers": ids, "version": 6}
    try:
        run_scripts_sync(client, Plan([view], {"p_1": why}, {}).write_calls([view]))  # killed here
        reader = RedisProfileView(client)
        assert reader.lookup("anonymous_id", "a-1") is None

        async def touch() -> None:
            sink = RedisViewSink.from_url(redis_url)
            try:
                change = ProfileChange("p_1", {**view, "version": 7}, why, True, (), False, 6)
                await sink.write(ChangeBatch([change], []))
                await sink.flush()
            finally:
                await sink.close()

        asyncio.run(touch())
        for id_type, values in ids.items():
            assert reader.lookup(id_type, values[0])["version"] == 7  # type: ignore[index]
    finally:
        client.close()


def _shard_of(redis_url: str, key: str) -> str:
    """The shard (host:port) that owns a key; one name for one server."""
    import redis

    client = connect(redis_url)
    try:
        if isinstance(client, redis.RedisCluster):
            node = client.get_node_from_key(key)
            return f"{node.host}:{node.port}"
        return "one server"
    finally:
        client.close()


def test_a_merge_across_shards_never_reads_as_missing_or_as_the_loser(redis_url: str) -> None:
    """A merge whose loser and survivor live on different shards (on a cluster): a
    reader asking by any identifier of either, all the while, never gets "not found",
    and once it has seen the merged profile it never gets the loser again. Half the
    survivors are new in the merging batch (a first event that links to an old
    profile): their loser's redirect names a profile whose view comes a step later."""
    import threading

    from profiles.graph.messages import Merged
    from sinks.base import ChangeBatch, ProfileChange
    from sinks.redis_view import RedisViewSink

    client = connect(redis_url)
    client.flushdb()
    client.close()
    pairs: list[tuple[str, str]] = []
    n = 0
    while len(pairs) < 40:  # loser and winner on different shards (any on one server)
        loser, winner = f"p_{n:03d}b", f"p_{n:03d}a"
        n += 1
        shards = {_shard_of(redis_url, profile_key(pid)) for pid in (loser, winner)}
        if len(shards) == 2 or shards == {"one server"}:
            pairs.append((loser, winner))

    def live(pid: str, emails: list[str], version: int) -> ProfileChange:
        view = {"profile_id": pid, "identifiers": {"email": emails}, "version": version}
        return ProfileChange(pid, view, {"identifiers": [], "merges": [], "refused": []})

    async def write(batch: ChangeBatch) -> None:
        sink = RedisViewSink.from_url(redis_url)
        try:
            await sink.write(batch)
            await sink.flush()
        finally:
            await sink.close()

    before = []
    for i, (loser, winner) in enumerate(pairs):
        before.append(live(loser, [f"{loser}@x.example"], 1))
        if i % 2 == 0:  # the survivor exists before the merge
            before.append(live(winner, [f"{winner}@x.example"], 1))
    asyncio.run(write(ChangeBatch(before)))

    current = [0]
    stop = threading.Event()
    reads = [0]
    problems: list[str] = []

    def reader() -> None:
        async def run() -> None:
            view = AsyncRedisView.from_url(redis_url)
            seen_merged: set[int] = set()
            try:
                while not stop.is_set():
                    i = current[0]
                    loser, winner = pairs[i]
                    asked = [loser] + ([winner] if i % 2 == 0 else [])
                    for pid in asked:
                        raw = await view.lookup_json("email", f"{pid}@x.example")
                        reads[0] += 1
                        if raw is None:
                            problems.append(f"{pid}: not found")
                            continue
                        got = orjson.loads(raw)
                        if got["profile_id"] == winner and got["version"] == 2:
                            seen_merged.add(i)
                        elif i in seen_merged:
                            problems.append(f"{pid}: {got['profile_id']} after the merge showed")
            finally:
                await view.close()

        asyncio.run(run())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for i, (loser, winner) in enumerate(pairs):
            current[0] = i
            start = reads[0]
            while reads[0] < start + 3 and thread.is_alive():  # it reads the old state
                stop.wait(0.001)
            emails = [f"{loser}@x.example", f"{winner}@x.example"]
            merged = ChangeBatch([live(winner, emails, 2)], [Merged(loser, winner, "email", "e")])
            asyncio.run(write(merged))
            start = reads[0]
            while reads[0] < start + 6 and thread.is_alive():  # and the new
                stop.wait(0.001)
    finally:
        stop.set()
        thread.join(10)
    assert problems == []
    assert reads[0] >= 9 * len(pairs)
    # Afterwards every identifier of either reads as the survivor.
    plain = RedisProfileView(connect(redis_url))
    for loser, winner in pairs:
        for pid in (loser, winner):
            assert plain.lookup("email", f"{pid}@x.example")["profile_id"] == winner  # type: ignore[index]
