"""A profile's ledger: every event it holds, compactly encoded, read only on merges
(to correct for events both sides hold) and by tools that need the events themselves.

The hot path never decodes it. Entries are appended as encoded bytes (one JSON array
per event, ``facts_to``), into a *tail* of fewer than ``CHUNK`` entries kept with the
profile; a full tail is *sealed* as chunk ``n`` and stored under its own key by the
streams layer (``streams.state.NodeCache``), so the record written on every touch
stays bounded whatever the profile's age. Sealed chunks are loaded only when asked
for (``load``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from decimal import Decimal
from functools import lru_cache
from hashlib import blake2b
from typing import Any

import orjson

from profiles.facts import EventFacts, Purchase

#: Entries per sealed chunk: bounds the tail carried in the profile's own record.
CHUNK = 32
SEP = b"\n"  # orjson never writes a raw newline


def event_hash(event_id: str) -> int:
    """A 64-bit hash of an event id: what the duplicate check keeps per event."""
    return int.from_bytes(blake2b(event_id.encode(), digest_size=8).digest(), "little")


def facts_to(e: EventFacts) -> list[Any]:
    """An event's facts as a JSON-able list (the ledger entry and the wire form)."""
    raw: list[Any] = [e.event_id, e.type, e.source, e.time_ms, [list(t) for t in e.traits]]
    if e.purchase is not None or e.consent or e.campaign is not None:
        p = e.purchase
        raw.append([p.currency, str(p.total), list(p.categories)] if p is not None else None)
        raw.append([list(c) for c in e.consent])
    if e.campaign is not None:
        raw.append(list(e.campaign))
    return raw


def facts_from(raw: list[Any]) -> EventFacts:
    purchase = None
    if len(raw) > 5 and raw[5] is not None:
        purchase = Purchase(raw[5][0], Decimal(raw[5][1]), tuple(raw[5][2]))
    consent = tuple((c[0], bool(c[1])) for c in raw[6]) if len(raw) > 6 else ()
    campaign = (raw[7][0], raw[7][1]) if len(raw) > 7 and raw[7] is not None else None
    return EventFacts(
        raw[0], raw[1], raw[2], raw[3], tuple((n, v) for n, v in raw[4]), purchase, consent,
        campaign,
    )  # fmt: skip


#: Where a ledger entry keeps the identifiers its event linked (after the facts).
_IDS_AT = 8


@lru_cache(maxsize=1 << 16)  # a profile's identifiers come back with every event
def ident_hash(key: str) -> str:
    """What a ledger entry keeps of an identifier: 48 bits of a hash of its graph key (8
    characters, where a sealed key takes ~80) — a split only ever looks up identifiers
    its profile holds (``profiles.graph.split``), a handful, among which it is unique."""
    return base64.urlsafe_b64encode(blake2b(key.encode(), digest_size=6).digest()).decode()


def entry_of(e: EventFacts, ids: tuple[str, ...] = ()) -> bytes:
    """A ledger entry: the event's facts, and the identifiers it was applied with
    (``ident_hash``), anchor first — what a split needs to send each event where its
    identifiers go."""
    raw = facts_to(e)
    if ids:
        if len(raw) < _IDS_AT:
            raw += [None, [], None][len(raw) - 5 :]
        raw.append([ident_hash(i) for i in ids])
    return orjson.dumps(raw)


def entry_facts(entry: bytes) -> EventFacts:
    return facts_from(orjson.loads(entry))


def entry_ids(entry: bytes) -> tuple[EventFacts, tuple[str, ...]]:
    """An entry's facts and its identifiers' hashes (``ident_hash``; none for an entry
    written before they were kept)."""
    raw = orjson.loads(entry)
    ids = tuple(raw[_IDS_AT]) if len(raw) > _IDS_AT else ()
    return facts_from(raw), ids


class Ledger:
    """Sealed chunks ``0 .. sealed-1`` (in ``chunks`` once made or loaded, else through
    ``load``) and the open tail of ``tail_n`` entries."""

    __slots__ = ("chunks", "load", "sealed", "tail", "tail_n")
    __hash__ = None  # type: ignore[assignment]  # mutable: compared, never hashed

    def __init__(
        self,
        sealed: int = 0,
        tail: bytes = b"",
        tail_n: int = 0,
        chunks: dict[int, bytes] | None = None,
        load: Callable[[int], bytes] | None = None,
    ) -> None:
        self.sealed = sealed
        self.tail = tail
        self.tail_n = tail_n
        self.chunks = {} if chunks is None else chunks
        self.load = load

    def append(self, entry: bytes) -> None:
        self.tail = self.tail + SEP + entry if self.tail_n else entry
        self.tail_n += 1
        if self.tail_n >= CHUNK:
            self.seal()

    def seal(self) -> None:
        if self.tail_n:
            self.chunks[self.sealed] = self.tail
            self.sealed += 1
            self.tail, self.tail_n = b"", 0

    def chunk(self, n: int) -> bytes:
        raw = self.chunks.get(n)
        if raw is None:
            if self.load is None:
                raise KeyError(f"ledger chunk {n} is not loaded and there is no store")
            raw = self.chunks[n] = self.load(n)
        return raw

    def entries(self) -> Iterator[bytes]:
        for n in range(self.sealed):
            yield from self.chunk(n).split(SEP)
        if self.tail_n:
            yield from self.tail.split(SEP)

    def events(self) -> Iterator[EventFacts]:
        return (entry_facts(e) for e in self.entries())

    def events_with_ids(self) -> Iterator[tuple[bytes, EventFacts, tuple[str, ...]]]:
        """Each entry as stored, its facts and its identifiers' hashes."""
        for entry in self.entries():
            facts, ids = entry_ids(entry)
            yield entry, facts, ids

    def adopt(self, other: Ledger, skip: Callable[[bytes], bool] | None = None) -> None:
        """Take the other ledger's entries: its sealed chunks whole when nothing is
        skipped, else entry by entry."""
        if skip is None:
            for n in range(other.sealed):
                self.chunks[self.sealed] = other.chunk(n)
                self.sealed += 1
            tail: Iterator[bytes] = iter(other.tail.split(SEP) if other.tail_n else ())
        else:
            tail = (e for e in other.entries() if not skip(e))
        for entry in tail:
            self.append(entry)

    def copy(self) -> Ledger:
        """A copy that needs no store: every chunk loaded."""
        chunks = {n: self.chunk(n) for n in range(self.sealed)}
        return Ledger(self.sealed, self.tail, self.tail_n, chunks)

    def __eq__(self, other: object) -> bool:
        """The same entries, whatever their order (merges append in arrival order)."""
        if not isinstance(other, Ledger):
            return NotImplemented
        return sorted(self.entries()) == sorted(other.entries())

    def __repr__(self) -> str:
        return f"Ledger(sealed={self.sealed}, tail_n={self.tail_n})"
