"""docker-compose.yml cannot run here; this keeps it honest against Settings."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from unifier.settings import Settings
from unifier.topics import topic_specs

COMPOSE = Path(__file__).parents[2] / "docker-compose.yml"


def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def unifier_services() -> dict[str, dict[str, str]]:
    return {
        name: {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        for name, svc in services().items()
        if any(k.startswith("UNIFIER_") for k in (svc.get("environment") or {}))
    }


def test_worker_runs_two_replicas() -> None:
    worker = services()["worker"]
    assert worker["command"] == ["unifier", "worker"]
    assert worker["deploy"]["replicas"] == 2


@pytest.mark.parametrize("service", sorted(unifier_services()))
def test_env_names_are_settings_fields(service: str) -> None:
    fields = {f"UNIFIER_{name.upper()}" for name in Settings.model_fields}
    unknown = set(unifier_services()[service]) - fields
    assert not unknown, f"{service} sets variables Settings does not know: {unknown}"


@pytest.mark.parametrize("service", sorted(unifier_services()))
def test_env_values_are_valid_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in unifier_services()[service].items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.bootstrap_servers == "kafka:9092"
    assert settings.redis_url.startswith("redis://redis:")


def test_every_service_agrees_on_topics() -> None:
    """Partition counts and names must be identical, or tables and topics disagree."""
    topic_keys = [k for k in Settings.model_fields if "partitions" in k or k.startswith("topic_")]
    seen = {
        service: {k: env.get(f"UNIFIER_{k.upper()}") for k in topic_keys}
        for service, env in unifier_services().items()
    }
    assert len({tuple(sorted(v.items())) for v in seen.values()}) == 1, seen


def test_broker_does_not_auto_create_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka_env = services()["kafka"]["environment"]
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for name, value in unifier_services()["worker"].items():
        monkeypatch.setenv(name, value)
    specs = {s.name: s for s in topic_specs(Settings())}
    assert specs["profile-updates"].config["cleanup.policy"] == "compact"
    assert specs["touchpoints"].partitions == 12


def test_collector_publishes_the_port_it_listens_on() -> None:
    collector = services()["collector"]
    env = unifier_services()["collector"]
    assert collector["command"] == ["unifier", "collector"]
    assert env["UNIFIER_COLLECTOR_HOST"] == "0.0.0.0"
    assert collector["ports"] == [
        f"{env['UNIFIER_COLLECTOR_PORT']}:{env['UNIFIER_COLLECTOR_PORT']}"
    ]
    assert env["UNIFIER_COLLECTOR_WRITE_KEYS"].startswith("{")
