"""Personal data sealed at the edge, so that destroying a key erases it everywhere.

**Crypto-shredding.** Every normalized identifier has a *token* — a keyed hash
(HMAC-SHA256, truncated to 128 bits) of ``type:value`` — and its own *data key* in a
key store (``KeyStore``). Before a touchpoint is written anywhere, its identifiers
and its personal traits are *sealed*:

* an identifier becomes ``~TOKEN.GEN.CIPHERTEXT``: AES-GCM under the identifier's
  key with a fixed nonce, so the same identifier always seals to the same string
  (the identity graph joins on it). That is safe because each key encrypts exactly
  one plaintext: the value its token names.
* a personal trait (names, birth date, address…; ``PERSONAL_TRAITS``) becomes
  ``~~TOKEN.GEN.NONCE+CIPHERTEXT``, under the key of the event's anchor (its
  highest-priority identifier), with a random nonce.
* an identifier that cannot be used (not normalizable, blocked) becomes
  ``~!reason``: the worker reports the reason, and the value itself is not kept.

Erasing a person destroys the keys of their identifiers: every copy of their data
— in the log, table changelogs, the archive, the Redis view — no longer decrypts,
whatever replays it. ``GEN`` counts the keys a token has had: a returning customer
gets a new key, so data sealed before the erasure stays unreadable and can be told
apart (``Sealed.gen`` at or below the erased generation).

This module is pure: the key store is a port (``KeyStore``); ``MemoryKeyStore`` is
for tests; the durable one lives in ``sinks.keys``.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from profiles.rules import IdentityRules, usable
from profiles.sealed import ERASED, b64, is_sealed, parse, unb64, unusable_value
from profiles.standardize import DEFAULT_INDEX, standardize
from profiles.touchpoint import Touchpoint

Scalar = str | int | float | bool | None

#: Identifiers are sealed with a fixed nonce: each key encrypts one plaintext only.
_ZERO_NONCE = bytes(12)
#: How bytes sealed whole begin (``Sealer.seal_bytes``).
SEALED_BYTES = b"\x00unifier-sealed\x00"

#: Traits that are personal data (after standardization of their names), and name
#: prefixes whose traits are (``address.street`` …). ``UNIFIER_PERSONAL_TRAITS``
#: replaces the list.
PERSONAL_TRAITS: tuple[str, ...] = (
    "first_name",
    "last_name",
    "middle_name",
    "name",
    "birth_date",
    "email",
    "phone",
    "mobile",
    "address",
    "address.",
    "street",
    "postal_code",
    "national_id",
    "tax_id",
)
#: Context fields that are personal data.
PERSONAL_CONTEXT = ("ip",)


class KeyStore(Protocol):
    """Where data keys live. Tokens are 16 raw bytes; a generation numbers the keys one
    token has had (1, 2, … — a destroyed generation is never reused)."""

    def hmac_key(self) -> bytes:
        """The secret of the keyed hash that makes tokens (never changes)."""
        ...

    def current(self, tokens: Collection[bytes]) -> dict[bytes, tuple[int, bytes]]:
        """Each token's live key as (generation, key), made now where there is none."""
        ...

    def lookup(self, wanted: Collection[tuple[bytes, int]]) -> dict[tuple[bytes, int], bytes]:
        """The keys of these (token, generation) pairs that still exist."""
        ...

    def destroy(self, tokens: Collection[bytes]) -> dict[bytes, int]:
        """Destroy each token's keys; the last generation each had (0: none)."""
        ...


class MemoryKeyStore:
    """A key store in memory (tests, and tools that need no durability)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._hmac = secret or os.urandom(32)
        self._keys: dict[tuple[bytes, int], bytes] = {}
        self._gen: dict[bytes, int] = {}
        self._live: set[bytes] = set()

    def hmac_key(self) -> bytes:
        return self._hmac

    def current(self, tokens: Collection[bytes]) -> dict[bytes, tuple[int, bytes]]:
        out = {}
        for token in tokens:
            if token not in self._live:
                gen = self._gen.get(token, 0) + 1
                self._gen[token] = gen
                self._keys[(token, gen)] = AESGCM.generate_key(256)
                self._live.add(token)
            gen = self._gen[token]
            out[token] = (gen, self._keys[(token, gen)])
        return out

    def lookup(self, wanted: Collection[tuple[bytes, int]]) -> dict[tuple[bytes, int], bytes]:
        return {w: self._keys[w] for w in wanted if w in self._keys}

    def destroy(self, tokens: Collection[bytes]) -> dict[bytes, int]:
        out = {}
        for token in tokens:
            gen = self._gen.get(token, 0)
            for g in range(1, gen + 1):
                self._keys.pop((token, g), None)
            self._live.discard(token)
            out[token] = gen
        return out


@dataclass(frozen=True)
class PersonalTraits:
    """Which traits are personal data: exact names, and prefixes ending in ``.``."""

    names: frozenset[str]
    prefixes: tuple[str, ...]

    @classmethod
    def of(cls, entries: Iterable[str]) -> PersonalTraits:
        entries = list(entries)
        return cls(
            frozenset(e for e in entries if not e.endswith(".")),
            tuple(e for e in entries if e.endswith(".")),
        )

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            name in self.names or any(name.startswith(p) for p in self.prefixes)
        )


DEFAULT_PERSONAL = PersonalTraits.of(PERSONAL_TRAITS)


class Sealer:
    """Seals touchpoints and opens sealed values, with the keys it has cached.

    Keys are cached for ``cache_s`` seconds: a key destroyed by another process stops
    sealing and opening here within that time (``forget`` drops them at once in this
    one). Not thread-safe: one per thread or event loop."""

    def __init__(
        self,
        store: KeyStore,
        rules: IdentityRules,
        region: str = "US",
        aliases: Mapping[str, str] = DEFAULT_INDEX,
        personal: PersonalTraits = DEFAULT_PERSONAL,
        cache_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.rules = rules
        self.region = region
        self.aliases = aliases
        self.personal = personal
        self._cache_s = cache_s
        self._clock = clock
        self._secret = store.hmac_key()
        # token -> (generation, AEAD, the sealed identifier, expiry): the key new data
        # is sealed with (an identifier always seals to the same string)
        self._sealing: dict[bytes, tuple[int, AESGCM, str, float]] = {}
        # (token, generation) -> (AEAD or None when destroyed, expiry)
        self._opening: dict[tuple[bytes, int], tuple[AESGCM | None, float]] = {}
        self._token = lru_cache(maxsize=1 << 16)(self._make_token)
        self._identifier = lru_cache(maxsize=1 << 16)(self._make_identifier)

    # --- tokens -------------------------------------------------------------
    def _make_token(self, ident: str) -> bytes:
        return hmac.digest(self._secret, ident.encode(), "sha256")[:16]

    def token(self, id_type: str, normalized: str) -> str:
        """The token of a normalized identifier (``b64``, 22 characters)."""
        return b64(self._token(f"{id_type}:{normalized}"))

    def token_for(self, id_type: str, value: str) -> str | None:
        """The token of a raw identifier as a sender would write it; None when it cannot
        be used (not normalizable, blocked)."""
        ids, _ = usable({id_type: value}, self.rules, self.region)
        return self.token(*ids[0]) if ids else None

    # --- keys -----------------------------------------------------------------
    def _sealing_keys(self, tokens: Mapping[bytes, str]) -> dict[bytes, tuple[int, AESGCM, str]]:
        """Each token's (generation, AEAD, sealed identifier), from token -> the
        normalized identifier it names."""
        now = self._clock()
        out: dict[bytes, tuple[int, AESGCM, str]] = {}
        missing = []
        for token in tokens:
            hit = self._sealing.get(token)
            if hit is not None and hit[3] > now:
                out[token] = hit[:3]
            else:
                missing.append(token)
        if missing:
            for token, (gen, key) in self.store.current(missing).items():
                aead = AESGCM(key)
                ct = aead.encrypt(_ZERO_NONCE, tokens[token].encode(), token)
                sealed = f"~{b64(token)}.{gen}.{b64(ct)}"
                self._sealing[token] = (gen, aead, sealed, now + self._cache_s)
                self._opening[(token, gen)] = (aead, now + self._cache_s)
                out[token] = (gen, aead, sealed)
        return out

    def _opening_keys(self, wanted: Iterable[tuple[bytes, int]]) -> dict[tuple[bytes, int], AESGCM]:
        now = self._clock()
        out: dict[tuple[bytes, int], AESGCM] = {}
        missing = []
        for w in wanted:
            hit = self._opening.get(w)
            if hit is not None and hit[1] > now:
                if hit[0] is not None:
                    out[w] = hit[0]
            else:
                missing.append(w)
        if missing:
            found = self.store.lookup(missing)
            for w in missing:
                key = found.get(w)
                aead = AESGCM(key) if key is not None else None
                self._opening[w] = (aead, now + self._cache_s)
                if aead is not None:
                    out[w] = aead
        return out

    def forget(self, tokens: Iterable[str]) -> None:
        """Drop cached keys of these tokens (after they were destroyed)."""
        raw = {unb64(t) for t in tokens}
        for token in raw:
            self._sealing.pop(token, None)
        for w in [w for w in self._opening if w[0] in raw]:
            del self._opening[w]

    # --- sealing ----------------------------------------------------------------
    def seal(self, tps: Sequence[Touchpoint]) -> list[Touchpoint]:
        """The touchpoints with identifiers and personal traits sealed; ones already
        sealed (a replay of sealed records) are returned as they are. One key-store
        call for all the keys the batch needs."""
        plans: list[tuple[list[tuple[str, bytes]], list[tuple[str, str]]] | None] = []
        need: dict[bytes, str] = {}
        for tp in tps:
            if all(v.startswith("~") for v in tp.identifiers.values()):
                plans.append(None)
                continue
            usable_ids: list[tuple[int, str, str, bytes]] = []
            dropped: list[tuple[str, str]] = []
            for id_type, raw in tp.identifiers.items():
                normalized, token = self._identifier(id_type, raw)
                if token is None:
                    dropped.append((id_type, normalized))
                else:
                    rank = -self.rules.priorities.get(id_type, 0)
                    usable_ids.append((rank, id_type, normalized, token))
                    need[token] = normalized
            usable_ids.sort()
            plans.append(([(t, tok) for _, t, _, tok in usable_ids], dropped))
        keys = self._sealing_keys(need) if need else {}
        out = []
        for tp, planned in zip(tps, plans, strict=True):
            if planned is None:
                out.append(tp)
                continue
            plan, dropped = planned
            identifiers = {id_type: keys[token][2] for id_type, token in plan}
            if plan:
                gen, aead, _ = keys[plan[0][1]]
                anchor = (gen, aead, plan[0][1])
            else:  # nothing usable (a dead letter to be): a key of its own
                anchor = self._own_key()
            for id_type, reason in dropped:
                raw = tp.identifiers[id_type]
                identifiers[id_type] = f"~!{reason}|{self._seal_value(raw, anchor)}"
            out.append(self._seal_rest(tp, identifiers, anchor))
        return out

    def _own_key(self) -> tuple[int, AESGCM, bytes]:
        """A new key under a random token: for data that belongs to no identifier (an
        event nothing can be linked by, a dead letter's bytes). Erasure finds it by
        opening the dead letters (``unifier privacy erase``)."""
        token = os.urandom(16)
        gen, key = self.store.current([token])[token]
        return gen, AESGCM(key), token

    def seal_bytes(self, data: bytes) -> bytes:
        """Bytes sealed under a key of their own (``SEALED_BYTES`` + token + gen + nonce
        + ciphertext): a dead letter that does not decode."""
        gen, aead, token = self._own_key()
        nonce = os.urandom(12)
        head = SEALED_BYTES + token + gen.to_bytes(4, "big") + nonce
        return head + aead.encrypt(nonce, data, token)

    def discard_bytes(self, blob: bytes) -> None:
        """Destroy the key ``seal_bytes`` made for this blob (it was only a while in
        transit, e.g. a webhook's parked events now delivered)."""
        if blob.startswith(SEALED_BYTES):
            at = len(SEALED_BYTES)
            self.store.destroy([blob[at : at + 16]])

    def open_bytes(self, blob: bytes) -> bytes | None:
        """What ``seal_bytes`` sealed; None when its key is gone; other bytes as they are."""
        if not blob.startswith(SEALED_BYTES):
            return blob
        at = len(SEALED_BYTES)
        token, gen = blob[at : at + 16], int.from_bytes(blob[at + 16 : at + 20], "big")
        nonce, body = blob[at + 20 : at + 32], blob[at + 32 :]
        aead = self._opening_keys([(token, gen)]).get((token, gen))
        if aead is None:
            return None
        try:
            return aead.decrypt(nonce, body, token)
        except InvalidTag:
            return None

    def _make_identifier(self, id_type: str, raw: str) -> tuple[str, bytes | None]:
        """(normalized value, its token), or (why it cannot be used, None)."""
        ids, dropped = usable({id_type: raw}, self.rules, self.region)
        if not ids:
            return (dropped[0][1] if dropped else "not usable"), None
        normalized = ids[0][1]
        return normalized, self._token(f"{id_type}:{normalized}")

    def _seal_rest(
        self,
        tp: Touchpoint,
        identifiers: dict[str, str],
        anchor: tuple[int, AESGCM, bytes],
    ) -> Touchpoint:
        traits = standardize(tp.traits, self.aliases)
        context = dict(tp.context)
        for name, value in traits.items():
            if name in self.personal and value is not None and not is_sealed(value):
                traits[name] = self._seal_value(value, anchor)
        for name in PERSONAL_CONTEXT:
            if (value := context.get(name)) is not None and not is_sealed(value):
                context[name] = self._seal_value(value, anchor)
        return replace(tp, identifiers=identifiers, traits=traits, context=context)

    @staticmethod
    def _seal_value(value: Scalar, anchor: tuple[int, AESGCM, bytes]) -> str:
        gen, aead, token = anchor
        nonce = os.urandom(12)
        ct = aead.encrypt(nonce, orjson.dumps(value), token)
        return f"~~{b64(token)}.{gen}.{b64(nonce + ct)}"

    # --- opening ----------------------------------------------------------------
    def open(self, value: Any) -> Any:
        """A sealed value's plaintext, ``ERASED`` when its key is gone; anything else
        as it is."""
        return self.open_many([value])[0]

    def open_many(self, values: Sequence[Any]) -> list[Any]:
        """Sealed values opened (an unusable identifier's marker: the value as sent)."""
        values = [
            (unusable_value(v) or v) if isinstance(v, str) and v.startswith("~!") else v
            for v in values
        ]
        parsed = [parse(v) for v in values]
        tokens = [unb64(p.token) if p is not None else b"" for p in parsed]
        wanted = {(t, p.gen) for t, p in zip(tokens, parsed, strict=True) if p is not None}
        keys = self._opening_keys(wanted) if wanted else {}
        out = []
        for value, p, token in zip(values, parsed, tokens, strict=True):
            if p is None:
                out.append(value)
                continue
            aead = keys.get((token, p.gen))
            if aead is None:
                out.append(ERASED)
                continue
            try:
                if p.trait:
                    raw = unb64(p.body)
                    out.append(orjson.loads(aead.decrypt(raw[:12], raw[12:], token)))
                else:
                    out.append(aead.decrypt(_ZERO_NONCE, unb64(p.body), token).decode())
            except (InvalidTag, ValueError):
                out.append(ERASED)
        return out

    def open_touchpoint(self, tp: Touchpoint) -> Touchpoint:
        """A sealed touchpoint with its identifiers (an unusable one: as it was sent),
        traits and context opened."""
        opens = self.open_many
        ids = dict(zip(tp.identifiers, opens(list(tp.identifiers.values())), strict=True))
        return replace(
            tp,
            identifiers=ids,
            traits=open_document(dict(tp.traits), opens),
            context=open_document(dict(tp.context), opens),
        )

    def open_view(self, view: dict[str, Any]) -> dict[str, Any]:
        """A profile view (or a profile-updates record) with every sealed value opened."""
        return open_document(view, self.open_many)


def _sealed_part(text: str) -> str | None:
    """The sealed part of a string: all of it, or what follows ``type:`` in a graph
    key (``email:~…``, as ``profiles why`` shows identifiers)."""
    if text.startswith("~"):
        return text
    at = text.find(":~")
    return text[at + 1 :] if at > 0 else None


def _collect(doc: Any, found: list[str]) -> None:
    if isinstance(doc, str):
        if (part := _sealed_part(doc)) is not None:
            found.append(part)
    elif isinstance(doc, dict):
        for v in doc.values():
            _collect(v, found)
    elif isinstance(doc, list):
        for v in doc:
            _collect(v, found)


def _replace(doc: Any, opened: Mapping[str, Any]) -> Any:
    if isinstance(doc, str):
        part = _sealed_part(doc)
        if part is None or part not in opened:
            return doc
        plain = opened[part]
        return plain if part is doc or len(part) == len(doc) else f"{doc[: -len(part)]}{plain}"
    if isinstance(doc, dict):
        out = {k: _replace(v, opened) for k, v in doc.items()}
        ids = out.get("identifiers")
        if isinstance(ids, dict):  # a view: values in order, as unsealed views have them
            out["identifiers"] = {
                t: sorted(v) if isinstance(v, list) else v for t, v in ids.items()
            }
        elif isinstance(ids, list) and all(isinstance(i, dict) for i in ids):  # `why`
            out["identifiers"] = sorted(ids, key=lambda i: str(i.get("identifier")))
        return out
    if isinstance(doc, list):
        return [_replace(v, opened) for v in doc]
    return doc


def open_document(doc: Any, open_many: Callable[[Sequence[Any]], list[Any]]) -> Any:
    """``doc`` with every sealed string in it opened (one key lookup for all), graph
    keys (``email:~…``) included; identifiers sorted by their opened values again."""
    found: list[str] = []
    _collect(doc, found)
    if not found:
        return doc
    unique = list(dict.fromkeys(found))
    return _replace(doc, dict(zip(unique, open_many(unique), strict=True)))


# --- masking -------------------------------------------------------------------


def mask(id_type: str, value: Any) -> Any:
    """What a reader without the ``read_pii`` scope sees of an identifier or a
    personal trait: enough to recognise it, not enough to use it."""
    if not isinstance(value, str) or value == ERASED:
        return value if value is None or value == ERASED else "***"
    if id_type == "email" and "@" in value:
        local, _, domain = value.rpartition("@")
        return f"{local[:1]}***@{domain}"
    if id_type == "phone":
        return f"{value[:2]}{'*' * max(len(value) - 4, 3)}{value[-2:]}"
    if len(value) <= 2:
        return "***"
    return f"{value[:1]}***"


def mask_view(view: dict[str, Any], personal: PersonalTraits = DEFAULT_PERSONAL) -> dict[str, Any]:
    """An opened view with identifiers and personal traits masked."""
    out = dict(view)
    if isinstance(view.get("identifiers"), dict):
        out["identifiers"] = {
            t: [mask(t, v) for v in values] for t, values in view["identifiers"].items()
        }
    if isinstance(view.get("traits"), dict):
        out["traits"] = {k: (mask(k, v) if k in personal else v) for k, v in view["traits"].items()}
    return out
