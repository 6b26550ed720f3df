"""Sealing, opening, masking and the key store (profiles.privacy, sinks.keys)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.settings import Settings
from profiles.identifiers import DEFAULT_IDENTIFIER_PRIORITIES
from profiles.privacy import ERASED, MemoryKeyStore, Sealer, mask, mask_view, open_document
from profiles.rules import IdentityRules, usable
from profiles.sealed import parse, token_of, unb64, unusable_reason
from profiles.touchpoint import Touchpoint
from sinks.keys import KeyStoreError, SqliteKeyStore, load_master_keys, sealer_for

RULES = IdentityRules.build(DEFAULT_IDENTIFIER_PRIORITIES)


def tp(ids: dict[str, str], traits: dict[str, object] | None = None) -> Touchpoint:
    return Touchpoint("e1", "page", "web", 0, ids, traits or {}, context={"ip": "192.0.2.1"})


emails = st.from_regex(r"[a-z][a-z0-9.]{0,10}@[a-z]{1,8}\.(com|org)", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    email=emails,
    anon=st.text(
        st.characters(codec="ascii", exclude_characters="\x00"), min_size=1, max_size=30
    ).filter(str.strip),
)
def test_what_is_sealed_opens_to_the_normalized_value_and_seals_the_same_way_again(
    email: str, anon: str
) -> None:
    sealer = Sealer(MemoryKeyStore(), RULES)
    sent = {"email": email.upper(), "anonymous_id": anon}
    [once] = sealer.seal([tp(sent, {"first_name": "ANA"})])
    [again] = sealer.seal([tp(sent)])
    normalized, dropped = usable(sent, RULES, "US")
    graph_keys = [f"{t}:{once.identifiers[t]}" for t, _ in normalized]
    # The graph joins on the sealed string: the same identifier, the same string.
    assert graph_keys == [f"{t}:{again.identifiers[t]}" for t, _ in normalized]
    assert {t: sealer.open(once.identifiers[t]) for t, _ in normalized} == dict(normalized)
    for id_type, reason in dropped:  # blocked ("0", "null"…): its reason, and the value sealed
        assert unusable_reason(once.identifiers[id_type]) == reason
        assert sealer.open(once.identifiers[id_type]) == anon
    assert email not in repr(once)
    assert sealer.open(once.traits["first_name"]) == "Ana"  # standardized, then sealed
    assert sealer.seal([once]) == [once]  # sealed already: as it is (a replay)


def test_an_unusable_identifier_keeps_its_reason_and_its_value_for_whoever_fixes_it() -> None:
    sealer = Sealer(MemoryKeyStore(), RULES)
    [only] = sealer.seal([tp({"phone": "555-01"}, {"first_name": "Bo"})])
    marker = only.identifiers["phone"]
    assert unusable_reason(marker) == "not a valid phone number" and "555-01" not in marker
    assert usable(only.identifiers, RULES, "US") == ([], [("phone", "not a valid phone number")])
    opened = sealer.open_touchpoint(only)
    assert opened.identifiers == {"phone": "555-01"} and opened.traits == {"first_name": "Bo"}
    assert opened.context == {"ip": "192.0.2.1"} and only.context["ip"] != "192.0.2.1"


def test_a_destroyed_key_erases_every_copy_and_a_new_one_seals_differently() -> None:
    store = MemoryKeyStore()
    sealer = Sealer(store, RULES)
    [first] = sealer.seal([tp({"email": "ana@x.com"}, {"name": "Ana Lima"})])
    token = token_of(first.identifiers["email"])
    assert token is not None
    assert store.destroy([unb64(token)]) == {unb64(token): 1}
    sealer.forget([token])
    view = {"identifiers": {"email": [first.identifiers["email"]]}, "traits": dict(first.traits)}
    assert open_document(view, sealer.open_many) == {
        "identifiers": {"email": [ERASED]}, "traits": {"name": ERASED}}  # fmt: skip
    [back] = sealer.seal([tp({"email": "ana@x.com"})])  # a returning customer
    assert parse(back.identifiers["email"]).gen == 2  # type: ignore[union-attr]
    assert back.identifiers["email"] != first.identifiers["email"]
    assert sealer.open(back.identifiers["email"]) == "ana@x.com"


def test_bytes_are_sealed_whole_under_a_key_of_their_own() -> None:
    store = MemoryKeyStore()
    sealer = Sealer(store, RULES)
    blob = sealer.seal_bytes(b"name=Ana&email=ana@x.com")
    assert b"ana@x.com" not in blob and sealer.open_bytes(blob) == b"name=Ana&email=ana@x.com"
    assert sealer.open_bytes(b"plain") == b"plain"
    from serve.privacy import letter_tokens

    [token] = letter_tokens(blob)
    store.destroy([token])
    sealer.forget([__import__("profiles.sealed", fromlist=["b64"]).b64(token)])
    assert sealer.open_bytes(blob) is None


def test_masks_show_enough_to_recognise_not_enough_to_use() -> None:
    assert mask("email", "ana.lima@x.com") == "a***@x.com"
    assert mask("phone", "+14155550100") == "+1********00"
    assert mask("user_id", "u-123") == "u***"
    assert mask("email", ERASED) == ERASED
    view = {
        "identifiers": {"email": ["ana@x.com"]},
        "traits": {"first_name": "Ana", "country": "PT"},
    }
    masked = mask_view(view)
    assert masked["identifiers"] == {"email": ["a***@x.com"]}
    assert masked["traits"] == {"first_name": "A***", "country": "PT"}


def test_the_key_store_keeps_keys_across_processes_wrapped_and_rotated(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    a = sealer_for(settings)
    b = sealer_for(settings)  # another process: the same secret, the same keys
    assert a is not None and b is not None
    [sealed] = a.seal([tp({"email": "ana@x.com"})])
    assert b.seal([tp({"email": "ana@x.com"})])[0].identifiers == sealed.identifiers
    path = tmp_path / "keys" / "keys.sqlite"
    raw = path.read_bytes() + (path.with_suffix(".sqlite-wal").read_bytes()
                               if path.with_suffix(".sqlite-wal").exists() else b"")  # fmt: skip
    assert b"ana@x.com" not in raw
    # Rotation: every key re-wrapped with a new master key; the old one is then not needed.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    new = AESGCM.generate_key(256)
    store = SqliteKeyStore(path, [new, *load_master_keys(settings)])
    assert store.rotate() == 1
    only_new = SqliteKeyStore(path, [new])
    reader = Sealer(only_new, RULES)
    assert reader.open(sealed.identifiers["email"]) == "ana@x.com"
    with pytest.raises(KeyStoreError, match="master key"):
        Sealer(SqliteKeyStore(path, [AESGCM.generate_key(256)]), RULES)
    # Destroyed: gone from the file, its generation remembered.
    token = unb64(token_of(sealed.identifiers["email"]) or "")
    assert only_new.destroy([token]) == {token: 1}
    rows = sqlite3.connect(path).execute("SELECT wrapped FROM keys WHERE token = ?", (token,))
    assert rows.fetchall() == [(None,)]
    assert only_new.current([token])[token][0] == 2
