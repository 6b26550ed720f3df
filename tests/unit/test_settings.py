import pytest
from pydantic import ValidationError

from config.settings import Settings
from profiles.configured import check, identity_rules, trait_rules


def test_environment_overrides_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIFIER_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("UNIFIER_IDENTIFIER_PRIORITIES", '{"user_id": 5, "crm_id": 3}')
    monkeypatch.setenv("UNIFIER_DEFAULT_PHONE_REGION", "gb")
    settings = Settings()
    assert settings.broker_address == ("kafka-1", 9092)
    assert settings.identifier_priorities == {"user_id": 5, "crm_id": 3}
    assert settings.default_phone_region == "GB"


def test_env_round_trips_for_child_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(internal_partitions=3, identifier_priorities={"email": 1})
    for name, value in original.env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIFIER_INTERNAL_PARTITIONS", "0")
    with pytest.raises(ValidationError, match="internal_partitions"):
        Settings()


def test_redis_address() -> None:
    assert Settings(redis_url="redis://127.0.0.1:6390/2").redis_address == ("127.0.0.1", 6390)


def test_identity_rules_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIFIER_IDENTITY_LIMITS", '{"email": 2}')
    monkeypatch.setenv("UNIFIER_IDENTITY_BLOCK_VALUES", '["guest@shop.example"]')
    rules = identity_rules(Settings())
    assert rules.limit("email") == 2
    assert rules.limit("user_id") is None
    assert rules.blocked("guest@shop.example") == "block list"
    assert rules.blocked("none@none.com") is None  # the list was replaced, not extended
    monkeypatch.setenv("UNIFIER_IDENTITY_BLOCK_PATTERNS", '["[oops"]')
    with pytest.raises(ValidationError, match=r"block pattern '\[oops' does not compile"):
        Settings()


def test_an_unknown_trait_strategy_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="unknown trait strategy newest"):
        check(Settings(trait_strategies={"city": "newest"}))
    rules = trait_rules(Settings(trait_strategies={"address": "source_priority"}))
    assert rules.strategies == {"address": "source_priority"}
    assert rules.source_priorities["crm"] > rules.source_priorities["web"]


def test_keys_are_secrets_masked_in_reprs_and_passed_to_child_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UNIFIER_API_KEYS", '{"k-live-1": ["read"]}')
    monkeypatch.setenv("UNIFIER_COLLECTOR_WRITE_KEYS", '{"wk-live-1": "web"}')
    settings = Settings()
    assert "k-live-1" not in repr(settings)
    assert "wk-live-1" not in str(settings)
    assert settings.api_key_scopes() == {"k-live-1": ["read"]}
    assert settings.write_key_sources() == {"wk-live-1": "web"}
    copied = settings.model_copy(update={"api_keys": {"k-2": ["admin"]}})
    for name, value in copied.env().items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child.api_key_scopes() == {"k-2": ["admin"]}
    assert child.write_key_sources() == {"wk-live-1": "web"}
