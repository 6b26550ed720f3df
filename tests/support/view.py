"""Looking at the Redis view from outside, as an operator would."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import orjson
import redis

from profiles.graph.state import rank
from sinks.redis_view import (
    PREFIX,
    PROFILE_PREFIX,
    SEGMENT_PREFIX,
    identifier_key,
    identifier_keys,
    profile_id_of,
)
from sinks.redisconn import connect


def survivor(profiles: Mapping[str, Mapping[str, Any]], pid: str) -> str | None:
    """Where a read of ``pid`` lands, following redirects (None: nowhere)."""
    for _ in range(64):
        view = profiles.get(pid)
        if view is None:
            return None
        if "merged_into" not in view:
            return pid
        pid = view["merged_into"]
    raise AssertionError(f"redirect cycle at {pid}")


def as_read(profiles: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Profiles as a reader sees them: a live one as it is, a redirect as the profile
    it leads to. (A loser's redirect may name the profile that absorbed it or, when an
    answer to a repeated offer came first, that profile's own survivor: reads agree.)"""
    return {
        pid: view if "merged_into" not in view else ("read as", survivor(profiles, pid))
        for pid, view in profiles.items()
    }


def dump_as_read(url: str) -> dict[str, Any]:
    """``dump`` with every redirect replaced by the profile a read of it lands on."""
    out = dump(url)
    prefix = f"{PREFIX}profile:"
    profiles = {
        key.removeprefix(prefix): orjson.loads(value["json"])
        for key, value in out.items()
        if key.startswith(prefix)
    }
    for pid, read in as_read(profiles).items():
        if "merged_into" in profiles[pid]:
            out[prefix + pid] = read
    return out


def dump(url: str) -> dict[str, Any]:
    """Every key of the view with its value (hashes as dicts): for exact comparisons.
    Not the workers' bookkeeping of its completeness (``unifier:view:*``) and of who
    owns which partitions (``unifier:workers:*``) nor their data-quality counts
    (``unifier:quality:*``). Keys as if there were no buckets
    (``sinks.redisconn``): a profile as ``unifier:profile:<id>``, a segment's members
    as one set ``unifier:segment:<name>`` — the same on one server and on a cluster."""
    client = connect(url)
    try:
        out: dict[str, Any] = {}
        for raw_key in client.scan_iter(match=f"{PREFIX}*", count=1000):
            key = raw_key.decode()
            if key.startswith((f"{PREFIX}view:", f"{PREFIX}quality:", f"{PREFIX}workers:")):
                continue
            kind = client.type(raw_key)
            if kind == b"hash":
                value: Any = {k.decode(): v for k, v in client.hgetall(raw_key).items()}  # type: ignore[union-attr]
            elif kind == b"set":  # a bucket of a segment's members
                value = sorted(client.smembers(raw_key))  # type: ignore[arg-type]
            else:
                value = client.get(raw_key)
            if key.startswith(PROFILE_PREFIX):
                key = PROFILE_PREFIX + profile_id_of(key)
            elif key.startswith(SEGMENT_PREFIX) and kind == b"set":
                key = key.rsplit(":", 1)[0]
                value = sorted({*out.get(key, ()), *value})
            out[key] = value
        return out
    finally:
        client.close()


class VersionWatch:
    """Samples every profile's version in Redis until stopped, and remembers any that
    went backwards — what a reader following a profile would notice."""

    def __init__(self, url: str, tolerate_errors: bool = False) -> None:
        """``tolerate_errors``: Redis may go away meanwhile (fault tests); a sample that
        fails is skipped, not raised."""
        self._client = connect(url, timeout=2)
        self._tolerate = tolerate_errors
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.highest: dict[str, int] = {}
        self.backwards: list[tuple[str, int, int]] = []
        self.samples = 0

    def __enter__(self) -> VersionWatch:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self._sample()
            except (redis.RedisError, OSError):
                if not self._tolerate:
                    raise
                self._stop.wait(0.2)

    def _sample(self) -> None:
        keys = list(self._client.scan_iter(match=f"{PROFILE_PREFIX}*", count=1000))
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "version")
        for key, raw in zip(keys, pipe.execute(), strict=True):
            if raw is None:
                continue
            name, version = key.decode(), int(raw)
            seen = self.highest.get(name, -1)
            if version < seen:
                self.backwards.append((name, seen, version))
            self.highest[name] = max(seen, version)
        self.samples += 1


class ViewModel:
    """The view's write rules in plain Python — what Redis holds after the same
    writes through sinks.redis_view's scripts (tests/integration/test_view.py checks that
    the two agree): a profile is replaced only by a newer version, an identifier key
    only by a smaller profile id."""

    def __init__(self) -> None:
        self.profiles: dict[str, dict[str, Any]] = {}  # id -> view
        self.whys: dict[str, dict[str, Any]] = {}
        self.index: dict[str, str] = {}  # identifier key -> profile id
        self.erased: set[str] = set()  # tombstones of erased profiles

    def write(
        self,
        views: Iterable[Mapping[str, Any]],
        whys: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        whys = whys or {}
        # Redirects first, as the sink writes them (sinks.redis_view.Plan).
        for view in sorted(views, key=lambda v: "merged_into" not in v):
            pid = view["profile_id"]
            if pid in self.erased:  # a tombstone refuses the write whole
                continue
            old = self.profiles.get(pid)
            if old is not None and old["version"] > view["version"]:
                continue  # older: refused, its identifier keys are not offered
            for key in identifier_keys(view):
                if key not in self.index or rank(pid) < rank(self.index[key]):
                    self.index[key] = pid
            self.profiles[pid] = dict(view)
            self.whys.pop(pid, None)
            if pid in whys and "merged_into" not in view:
                self.whys[pid] = dict(whys[pid])

    def unindex(self, profile_id: str, ids: Iterable[str]) -> None:
        """Identifiers the profile let go (a rule blocks them): their index keys go if
        they name it (sinks.redis_view)."""
        for ident in ids:
            key = identifier_key(*ident.split(":", 1))
            if self.index.get(key) == profile_id:
                del self.index[key]

    def erase(self, profile_id: str, ids: Iterable[str]) -> None:
        """An erased profile goes, with the index keys that name it, and leaves a
        tombstone (sinks.redis_view)."""
        self.erased.add(profile_id)
        self.profiles.pop(profile_id, None)
        self.whys.pop(profile_id, None)
        for ident in ids:
            key = identifier_key(*ident.split(":", 1))
            if self.index.get(key) == profile_id:
                del self.index[key]
