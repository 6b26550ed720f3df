"""Privacy in the worker: sealing what comes in, the erasure ledger, shredding keys.

* ``Intake`` (route stage) seals events that arrive unsealed (a third-party producer
  writing straight to the topic), and drops events that carry an erased identifier:
  sealed before its erasure (``erased``: a replay, or one in flight), or sent after
  it while it is suppressed (``suppressed``). Each is counted, no identifier logged.
* ``ErasureLedger`` follows the ledger topic (compacted, key: an identifier's token)
  in a thread: token -> (the last generation erased, suppressed or not).
* ``Shredder`` (identity stage) destroys the keys of identifiers the graph erased
  (``profiles.graph.erase``) and writes them to the ledger and the request's receipt.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from config.settings import Settings
from profiles.configured import identity_rules
from profiles.graph.messages import Forget, Shredded
from profiles.privacy import Sealer
from profiles.rules import key, usable
from profiles.sealed import parse, token_of_key, unb64
from profiles.touchpoint import Touchpoint
from schemas.records import receipt_step
from sinks.keys import SqliteKeyStore, sealer_for
from streams import metrics
from streams.producer import ProducedTopic
from streams.segments import DefinitionsLog

log = logging.getLogger("unifier.privacy")


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    gen: int  # the last generation of the token's key that was erased (0: all, unsealed)
    suppress: bool  # later events carrying it are dropped too
    receipt: str


def ledger_record(token: str, entry: LedgerEntry, at_ms: int) -> tuple[bytes, bytes]:
    value = {"gen": entry.gen, "suppress": entry.suppress, "receipt": entry.receipt, "at": at_ms}
    return token.encode(), orjson.dumps(value)


def ledger_entry(value: bytes) -> LedgerEntry:
    d = orjson.loads(value)
    return LedgerEntry(int(d["gen"]), bool(d["suppress"]), str(d["receipt"]))


class ErasureLedger:
    """The ledger topic, followed in a thread from its start: ``entries`` by token.
    ``changed`` holds the tokens learned since ``drain_changed`` was last called."""

    def __init__(self, bootstrap: str, topic: str, poll_s: float = 0.2) -> None:
        self.topic = topic
        self.entries: dict[str, LedgerEntry] = {}
        self._read: dict[str, bytes] = {}  # token -> the record last parsed
        self.ready = threading.Event()
        self._changed: list[str] = []
        self._lock = threading.Lock()
        self._bootstrap = bootstrap
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="erasures", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def drain_changed(self) -> list[str]:
        with self._lock:
            changed, self._changed = self._changed, []
        return changed

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with DefinitionsLog(self._bootstrap, self.topic, "unifier.erasures-reader") as log_:
                    seen = -1
                    while not self._stop.is_set():
                        if log_.poll(self._poll_s):
                            continue
                        if log_.next_offset != seen:  # (a key written again counts too)
                            self._take(log_.records)
                            seen = log_.next_offset
                        if log_.at_end() and not self.ready.is_set():
                            log.info("erasure ledger read: %d identifiers", len(self.entries))
                            self.ready.set()
            except Exception:  # the broker away: start again (what is known stays)
                log.exception("reading %s failed; trying again", self.topic)
                self._stop.wait(2.0)

    def _take(self, records: dict[str, bytes]) -> None:
        fresh = {}
        for token, value in records.items():
            if self._read.get(token) is value:  # the same record as last time
                continue
            self._read[token] = value
            try:
                entry = ledger_entry(value)
            except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
                log.error("a record of %s is not a ledger entry; ignored", self.topic)
                continue
            if self.entries.get(token) != entry:
                fresh[token] = entry
        if fresh:
            with self._lock:
                self.entries = {**self.entries, **fresh}
                self._changed += list(fresh)
            suppressed = sum(1 for e in self.entries.values() if e.suppress)
            metrics.PRIVACY_LEDGER.labels(state="suppressed").set(suppressed)
            metrics.PRIVACY_LEDGER.labels(state="erased only").set(len(self.entries) - suppressed)


async def wait_for(ready: threading.Event, what: str, warn_s: float = 30.0) -> None:
    """Until ``ready`` is set; a warning every ``warn_s`` meanwhile (the broker away)."""
    started = time.monotonic()
    warned = 0
    while not ready.is_set():
        waited = time.monotonic() - started
        if waited > (warned + 1) * warn_s:
            warned += 1
            log.warning("%s not read yet after %.0f s; events wait for it", what, waited)
        await asyncio.sleep(0.05)


class Intake:
    """Touchpoints as the stages may hold them: sealed, and none of an erased person."""

    def __init__(
        self, settings: Settings, ledger: ErasureLedger | None, sealer: Sealer | None = None
    ) -> None:
        self.sealer = sealer if sealer is not None else sealer_for(settings)
        self.ledger = ledger
        self._rules = identity_rules(settings)
        self._region = settings.default_phone_region

    @property
    def seal_bytes(self) -> Callable[[bytes], bytes] | None:
        """What seals a dead letter's bytes (None: personal data is not sealed)."""
        return self.sealer.seal_bytes if self.sealer is not None else None

    def __call__(self, touchpoints: Sequence[Touchpoint]) -> list[Touchpoint]:
        kept, _ = self.admit(touchpoints)
        return kept

    def admit(self, touchpoints: Sequence[Touchpoint]) -> tuple[list[Touchpoint], list[Forget]]:
        """(the touchpoints to apply, ``Forget`` for what the dropped ones carried): an
        event that carries an erased identifier is the erased person's, and what else
        it carries is theirs too (``forgotten``)."""
        tps = list(touchpoints) if self.sealer is None else self.sealer.seal(touchpoints)
        if self.ledger is None:
            return tps, []
        changed = self.ledger.drain_changed()  # (read in this thread: caches are not shared)
        if changed and self.sealer is not None:
            self.sealer.forget(changed)  # keys destroyed: not used from the cache again
        entries = self.ledger.entries
        if not entries:
            return tps, []
        kept: list[Touchpoint] = []
        forgets: list[Forget] = []
        for tp in tps:
            found = _erased(tp, entries)
            if found is None:
                kept.append(tp)
                continue
            why, entry = found
            metrics.PRIVACY_DROPPED.labels(why=why).inc()
            ids, _ = usable(tp.identifiers, self._rules, self._region)
            forgets += forgotten([key(i) for i in ids], entry, entries)
        return kept, forgets


def forgotten(
    keys: Sequence[str], entry: LedgerEntry, entries: dict[str, LedgerEntry]
) -> list[Forget]:
    """``Forget`` for each identifier of a dropped event that the ledger does not cover
    yet (a device id seen with the erased email; the email itself, sealed under a key
    made since): the identity partitions erase what they link to and shred them."""
    out = []
    for ident in keys:
        token = token_of_key(ident)
        if token is None:
            continue
        covered = entries.get(token)
        sealed = parse(ident.partition(":")[2])
        if covered is not None and sealed is not None and sealed.gen <= covered.gen:
            continue
        out.append(Forget(ident, "", entry.receipt, entry.suppress))
    return out


def _erased(tp: Touchpoint, entries: dict[str, LedgerEntry]) -> tuple[str, LedgerEntry] | None:
    """Why an event is not to be applied ("erased", "suppressed"), or None."""
    for value in tp.identifiers.values():
        sealed = parse(value)
        if sealed is None or sealed.trait:
            continue
        entry = entries.get(sealed.token)
        if entry is None:
            continue
        if sealed.gen <= entry.gen:
            return "erased", entry
        if entry.suppress:
            return "suppressed", entry
    return None


class Shredder:
    """Destroys erased identifiers' keys, then queues their ledger and receipt records
    on the stage's producer (the stage awaits their delivery before its table write,
    so a crash in between shreds again: destroying is idempotent)."""

    def __init__(self, settings: Settings, ledger: ProducedTopic, receipts: ProducedTopic) -> None:
        self._settings = settings
        self._ledger = ledger
        self._receipts = receipts
        self._store: SqliteKeyStore | None = None
        self._sealer: Sealer | None = None

    def _open(self) -> SqliteKeyStore:
        if self._store is None:
            self._store = SqliteKeyStore.open(self._settings)
        return self._store

    def shred(self, shredded: Sequence[Shredded]) -> int:
        """Destroy the keys; the number of identifiers."""
        store = self._open()
        tokens: dict[str, Shredded] = {}
        for s in shredded:
            token = token_of_key(s.ident) or self._plain_token(s.ident)
            tokens[token] = s
        gens = store.destroy([unb64(t) for t in tokens])
        now = int(time.time() * 1000)
        entries = {
            token: LedgerEntry(gens.get(unb64(token), 0), s.suppress, s.receipt)
            for token, s in tokens.items()
        }
        store.record_erasures({t: (e.gen, e.suppress, e.receipt) for t, e in entries.items()})
        for token, entry in entries.items():
            key, value = ledger_record(token, entry, now)
            self._ledger.send(value, 0, key=key)
            rkey, rvalue = receipt_step(entry.receipt, "identifier", token, now, gen=entry.gen)
            self._receipts.send(rvalue, 0, key=rkey.encode())
        return len(tokens)

    def kept(self, kept: Sequence[tuple[str, str]]) -> None:
        """Receipt records of shared identifiers an erasure kept ((receipt, identifier))."""
        now = int(time.time() * 1000)
        for receipt, ident in kept:
            token = token_of_key(ident) or self._plain_token(ident)
            key, value = receipt_step(receipt, "kept", token, now)
            self._receipts.send(value, 0, key=key.encode())

    def _plain_token(self, ident: str) -> str:
        """The token of an unsealed identifier (``UNIFIER_SEAL_PII=false``)."""
        if self._sealer is None:
            self._sealer = Sealer(self._open(), identity_rules(self._settings))
        id_type, _, value = ident.partition(":")
        return self._sealer.token(id_type, value)
