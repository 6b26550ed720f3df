"""The durable key store behind ``profiles.privacy.KeyStore``: one SQLite file.

Every process that seals or opens personal data (producers, the collector, workers,
the read API, the CLI) opens the same file (``UNIFIER_KEYSTORE_PATH``, default
``STATE_DIR/keys/keys.sqlite``). SQLite serializes writers across processes, so two
producers meeting a new identifier at once agree on one key.

**Envelope encryption.** Data keys are stored wrapped (AES-GCM) by a *master key*:
``UNIFIER_MASTER_KEYS`` (base64, newest first) or, when unset, the file
``STATE_DIR/keys/master.keys`` made on first use (mode 0600; the embedded stack's
choice — in production keep master keys in a secret manager and pass them in the
environment). ``rotate`` re-wraps every key with the newest master key; then the
older ones can be dropped.

**Destroying a key** overwrites it (``secure_delete``), keeps its generation number
(a token's next key is numbered after it, never reusing one) and checkpoints the
write-ahead log, so no copy stays in the file.

**Durability:** a key is on disk (``synchronous=FULL``) before anything sealed with it
is sent; a key lost after use would make its identifier seal differently later.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from config.settings import Settings, reveal
from profiles.configured import identity_rules, trait_alias_index
from profiles.privacy import DEFAULT_PERSONAL, PersonalTraits, Sealer

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, kek TEXT NOT NULL, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
  token BLOB NOT NULL,
  gen INTEGER NOT NULL,
  kek TEXT,           -- the master key that wraps it; NULL once destroyed
  wrapped BLOB,       -- nonce + AES-GCM(data key); NULL once destroyed
  created_ms INTEGER NOT NULL,
  destroyed_ms INTEGER,
  PRIMARY KEY (token, gen)
) WITHOUT ROWID;
-- The erasure ledger's copy on disk (the topic may live in a broker's memory: the
-- embedded stack republishes it from here, unifier.restore). Tokens, no personal data.
CREATE TABLE IF NOT EXISTS erasures (
  token TEXT PRIMARY KEY, gen INTEGER NOT NULL, suppress INTEGER NOT NULL,
  receipt TEXT NOT NULL, at_ms INTEGER NOT NULL
);
"""
_CHUNK = 500  # tokens per IN (...) query


class KeyStoreError(RuntimeError):
    """The key store cannot be used (no master key for a stored key, a damaged file)."""


def kek_id(key: bytes) -> str:
    return hashlib.blake2b(key, digest_size=6).hexdigest()


def master_keys_file(settings: Settings) -> Path:
    return keystore_path(settings).parent / "master.keys"


def keystore_path(settings: Settings) -> Path:
    return settings.keystore_path or settings.state_dir / "keys" / "keys.sqlite"


def _decode_master(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise KeyStoreError(f"{where}: a master key is not valid base64") from None
    if len(key) != 32:
        raise KeyStoreError(f"{where}: a master key must be 32 bytes (base64 of 32 bytes)")
    return key


def load_master_keys(settings: Settings, create: bool = True) -> list[bytes]:
    """The master keys, newest first: from the environment, else from the embedded
    stack's file (made, with one new key, when missing and ``create``)."""
    if settings.master_keys:
        return [_decode_master(reveal(k), "UNIFIER_MASTER_KEYS") for k in settings.master_keys]
    path = master_keys_file(settings)
    if not path.exists():
        if not create:
            raise KeyStoreError(f"no master key: {path} does not exist")
        _create_master_keys(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise KeyStoreError(f"{path}: no master key in the file")
    return [_decode_master(line, str(path)) for line in lines]


def _create_master_keys(path: Path) -> None:
    """A first master key, unless another process made one meanwhile (hard-linked into
    place: of two processes starting at once, one key wins and both use it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    write_master_keys(tmp, [AESGCM.generate_key(256)])
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def write_master_keys(path: Path, keys: Sequence[bytes]) -> None:
    """Write the master keys file (0600) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(base64.b64encode(k).decode() + "\n" for k in keys))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class SqliteKeyStore:
    """``profiles.privacy.KeyStore`` in one SQLite file (see the module docstring).
    Thread-safe: one connection behind a lock."""

    def __init__(self, path: Path, master_keys: Sequence[bytes]) -> None:
        if not master_keys:
            raise KeyStoreError("at least one master key is required")
        self.path = path
        self._keks = {kek_id(k): AESGCM(k) for k in master_keys}
        self._current = kek_id(master_keys[0])
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(
            path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(_SCHEMA)
        self._hmac = self._hmac_key()

    @classmethod
    def open(cls, settings: Settings) -> SqliteKeyStore:
        return cls(keystore_path(settings), load_master_keys(settings))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- wrapping ---------------------------------------------------------------
    def _wrap(self, key: bytes, aad: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(12)
        return self._current, nonce + self._keks[self._current].encrypt(nonce, key, aad)

    def _unwrap(self, kek: str, wrapped: bytes, aad: bytes) -> bytes:
        aead = self._keks.get(kek)
        if aead is None:
            raise KeyStoreError(
                f"{self.path}: a key is wrapped by master key {kek}, which is not among the "
                "master keys given (UNIFIER_MASTER_KEYS or master.keys)"
            )
        try:
            return aead.decrypt(wrapped[:12], wrapped[12:], aad)
        except InvalidTag:
            raise KeyStoreError(f"{self.path}: a wrapped key does not decrypt") from None

    @staticmethod
    def _aad(token: bytes, gen: int) -> bytes:
        return token + gen.to_bytes(4, "big")

    def _hmac_key(self) -> bytes:
        with self._lock:
            row = self._db.execute("SELECT kek, value FROM meta WHERE name='hmac'").fetchone()
            if row is None:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute(
                        "SELECT kek, value FROM meta WHERE name='hmac'"
                    ).fetchone()
                    if row is None:
                        row = self._wrap(os.urandom(32), b"hmac")
                        self._db.execute(
                            "INSERT INTO meta (name, kek, value) VALUES ('hmac', ?, ?)", row
                        )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        return self._unwrap(row[0], row[1], b"hmac")

    # --- KeyStore -----------------------------------------------------------------
    def hmac_key(self) -> bytes:
        return self._hmac

    def _live(self, tokens: Sequence[bytes]) -> dict[bytes, tuple[int, bytes]]:
        out: dict[bytes, tuple[int, bytes]] = {}
        for i in range(0, len(tokens), _CHUNK):
            part = tokens[i : i + _CHUNK]
            rows = self._db.execute(
                "SELECT token, gen, kek, wrapped FROM keys WHERE wrapped IS NOT NULL AND token "
                f"IN ({','.join('?' * len(part))})",
                part,
            ).fetchall()
            for token, gen, kek, wrapped in rows:
                out[token] = (gen, self._unwrap(kek, wrapped, self._aad(token, gen)))
        return out

    def current(self, tokens: Collection[bytes]) -> dict[bytes, tuple[int, bytes]]:
        wanted = list(dict.fromkeys(tokens))
        with self._lock:
            found = self._live(wanted)
            missing = [t for t in wanted if t not in found]
            if not missing:
                return found
            self._db.execute("BEGIN IMMEDIATE")
            try:
                found.update(self._live(missing))  # another process may have made them
                now = int(time.time() * 1000)
                for token in [t for t in missing if t not in found]:
                    (last,) = self._db.execute(
                        "SELECT coalesce(max(gen), 0) FROM keys WHERE token = ?", (token,)
                    ).fetchone()
                    gen = last + 1
                    key = AESGCM.generate_key(256)
                    kek, wrapped = self._wrap(key, self._aad(token, gen))
                    self._db.execute(
                        "INSERT INTO keys (token, gen, kek, wrapped, created_ms) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (token, gen, kek, wrapped, now),
                    )
                    found[token] = (gen, key)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return found

    def lookup(self, wanted: Collection[tuple[bytes, int]]) -> dict[tuple[bytes, int], bytes]:
        pairs = list(dict.fromkeys(wanted))
        out: dict[tuple[bytes, int], bytes] = {}
        with self._lock:
            for i in range(0, len(pairs), _CHUNK):
                part = pairs[i : i + _CHUNK]
                rows = self._db.execute(
                    "SELECT token, gen, kek, wrapped FROM keys WHERE wrapped IS NOT NULL AND "
                    f"(token, gen) IN ({','.join('(?, ?)' for _ in part)})",
                    [x for pair in part for x in pair],
                ).fetchall()
                for token, gen, kek, wrapped in rows:
                    out[(token, gen)] = self._unwrap(kek, wrapped, self._aad(token, gen))
        return out

    def destroy(self, tokens: Collection[bytes]) -> dict[bytes, int]:
        wanted = list(dict.fromkeys(tokens))
        out: dict[bytes, int] = {}
        now = int(time.time() * 1000)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for token in wanted:
                    self._db.execute(
                        "UPDATE keys SET wrapped = NULL, kek = NULL, destroyed_ms = ? "
                        "WHERE token = ? AND wrapped IS NOT NULL",
                        (now, token),
                    )
                    (gen,) = self._db.execute(
                        "SELECT coalesce(max(gen), 0) FROM keys WHERE token = ?", (token,)
                    ).fetchone()
                    out[token] = gen
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._checkpoint()
        return out

    def _checkpoint(self) -> None:
        """Fold the write-ahead log into the file and empty it, so the destroyed keys'
        old pages are gone from both (readers in other processes may delay it)."""
        for _ in range(50):
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(0.05)

    # --- operations ------------------------------------------------------------
    def rotate(self) -> int:
        """Re-wrap every live key (and the token secret) with the newest master key;
        the number of keys re-wrapped."""
        n = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT token, gen, kek, wrapped FROM keys WHERE wrapped IS NOT NULL "
                    "AND kek != ?",
                    (self._current,),
                ).fetchall()
                for token, gen, kek, wrapped in rows:
                    aad = self._aad(token, gen)
                    new_kek, rewrapped = self._wrap(self._unwrap(kek, wrapped, aad), aad)
                    self._db.execute(
                        "UPDATE keys SET kek = ?, wrapped = ? WHERE token = ? AND gen = ?",
                        (new_kek, rewrapped, token, gen),
                    )
                    n += 1
                kek, value = self._db.execute(
                    "SELECT kek, value FROM meta WHERE name='hmac'"
                ).fetchone()
                if kek != self._current:
                    self._db.execute(
                        "UPDATE meta SET kek = ?, value = ? WHERE name='hmac'",
                        self._wrap(self._unwrap(kek, value, b"hmac"), b"hmac"),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._checkpoint()
        return n

    def record_erasures(self, entries: dict[str, tuple[int, bool, str]]) -> None:
        """Keep the ledger's entries (token -> (generation, suppressed, receipt))."""
        now = int(time.time() * 1000)
        rows = [(t, g, int(s), r, now) for t, (g, s, r) in entries.items()]
        with self._lock:
            self._db.executemany(
                "INSERT INTO erasures (token, gen, suppress, receipt, at_ms) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (token) DO UPDATE SET "
                "gen = max(gen, excluded.gen), "
                "suppress = excluded.suppress, receipt = excluded.receipt, at_ms = excluded.at_ms",
                rows,
            )

    def erasures(self) -> dict[str, tuple[int, bool, str]]:
        with self._lock:
            rows = self._db.execute("SELECT token, gen, suppress, receipt FROM erasures").fetchall()
        return {t: (g, bool(s), r) for t, g, s, r in rows}

    def counts(self) -> dict[str, int]:
        """Live and destroyed keys, and keys per master key (for `unifier privacy keys`)."""
        with self._lock:
            live, destroyed = self._db.execute(
                "SELECT count(wrapped), count(*) - count(wrapped) FROM keys"
            ).fetchone()
            by_kek = self._db.execute(
                "SELECT kek, count(*) FROM keys WHERE kek IS NOT NULL GROUP BY kek"
            ).fetchall()
        return {"live": live, "destroyed": destroyed, **{f"master {k}": n for k, n in by_kek}}


def personal_traits(settings: Settings) -> PersonalTraits:
    if settings.personal_traits is None:
        return DEFAULT_PERSONAL
    return PersonalTraits.of(settings.personal_traits)


def sealer_for(settings: Settings, store: SqliteKeyStore | None = None) -> Sealer | None:
    """The sealer of this deployment, or None when personal data is not sealed
    (``UNIFIER_SEAL_PII=false``)."""
    if not settings.seal_pii:
        return None
    return Sealer(
        store or SqliteKeyStore.open(settings),
        identity_rules(settings),
        settings.default_phone_region,
        trait_alias_index(settings),
        personal_traits(settings),
        settings.key_cache_s,
    )
