"""docker-compose.yml cannot run here; this keeps it honest against Settings."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.settings import Settings
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
    ours = {k for k in unifier_services()[service] if k.startswith("UNIFIER_")}
    unknown = ours - fields
    assert not unknown, f"{service} sets variables Settings does not know: {unknown}"


@pytest.mark.parametrize("service", sorted(unifier_services()))
def test_env_values_are_valid_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in unifier_services()[service].items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    if service.startswith("scale-"):  # the scaled-out profile
        assert settings.bootstrap_servers == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
        assert settings.redis_url == "redis://redis-1:6379/0" and settings.redis_cluster
    else:
        assert settings.bootstrap_servers == "kafka:9092"
        assert settings.redis_url.startswith("redis://redis:")
        assert settings.redis_cluster is None


def test_the_scale_profile_is_three_brokers_a_redis_cluster_and_three_workers() -> None:
    svc = services()
    scaled = {name for name, s in svc.items() if "scale" in (s.get("profiles") or [])}
    assert scaled == {"kafka-1", "kafka-2", "kafka-3", "redis-1", "redis-2", "redis-3",
                      "redis-cluster", "scale-topics", "scale-worker", "scale-collector",
                      "scale-api", "scale-status"}  # fmt: skip
    brokers = [svc[f"kafka-{n}"]["environment"] for n in (1, 2, 3)]
    assert [b["KAFKA_NODE_ID"] for b in brokers] == ["1", "2", "3"]
    assert len({b["CLUSTER_ID"] for b in brokers}) == 1
    voters = brokers[0]["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voters == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
    assert {b["KAFKA_CONTROLLER_QUORUM_VOTERS"] for b in brokers} == {voters}
    assert [b["KAFKA_ADVERTISED_LISTENERS"] for b in brokers] == [
        f"PLAINTEXT://kafka-{n}:9092" for n in (1, 2, 3)
    ]
    env = unifier_services()["scale-worker"]
    replication = int(env["UNIFIER_REPLICATION_FACTOR"])
    assert replication == 3 and int(brokers[0]["KAFKA_MIN_INSYNC_REPLICAS"]) == replication - 1
    for n in (1, 2, 3):
        command = svc[f"redis-{n}"]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert f"getent hosts redis-{n}" in svc["redis-cluster"]["command"][0]
    worker = svc["scale-worker"]
    assert worker["command"] == ["unifier", "worker"] and worker["deploy"]["replicas"] == 3
    # every worker gets the same share of every stage's partitions
    assert int(env["UNIFIER_INTERNAL_PARTITIONS"]) % worker["deploy"]["replicas"] == 0
    assert worker["depends_on"]["redis-cluster"] == {"condition": "service_completed_successfully"}
    status = unifier_services()["scale-status"]
    assert json.loads(status["UNIFIER_STATUS_WORKERS"]) == ["http://scale-worker:9100/metrics"]


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


# --- monitoring (deploy/) ----------------------------------------------------------------
DEPLOY = COMPOSE.parent / "deploy"


def known_metrics() -> set[str]:
    """Every metric name our processes export, with the suffixes Prometheus adds."""
    import prometheus_client

    import config.httpmetrics  # noqa: F401
    import streams.heal
    import streams.metrics
    import streams.ops  # noqa: F401
    from producers.collector import EVENTS  # noqa: F401
    from serve.status import StatusSampler

    names: set[str] = set()
    registries = [prometheus_client.REGISTRY, StatusSampler(Settings(), []).registry]
    for registry in registries:
        for family in registry.collect():
            names.add(family.name)
            names.update(s.name for s in family.samples)
            # A labelled metric has no samples until a label set is used.
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
            names.update(family.name + x for x in suffixes.get(family.type, []))
    return names


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\bunifier_[a-z_]+", text))


def test_alert_rules_cover_the_issue_and_name_real_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {"UnifierLagGrowing", "UnifierDeadLettersHigh", "UnifierNoEvents"} <= set(by_name)
    assert by_name["UnifierLagGrowing"]["for"] == "5m"
    assert by_name["UnifierNoEvents"]["for"] == "10m"
    unknown = referenced((DEPLOY / "alerts.yml").read_text()) - known_metrics()
    assert not unknown, f"alerts use metrics nobody exports: {unknown}"


def test_the_dashboard_charts_real_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/profile-unifier.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    unknown = set().union(*(referenced(e) for e in exprs)) - known_metrics()
    assert not unknown, f"the dashboard charts metrics nobody exports: {unknown}"


def test_compose_runs_prometheus_and_grafana_on_these_files() -> None:
    svc = services()
    mounts = [v.split(":")[0] for name in ("prometheus", "grafana") for v in svc[name]["volumes"]]
    for mount in mounts:
        assert (COMPOSE.parent / mount).exists(), mount
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {j["job_name"] for j in prom["scrape_configs"]}
    assert {"unifier-worker", "unifier-status", "unifier-collector", "unifier-api"} <= jobs
    worker_env = svc["worker"]["environment"]
    assert str(worker_env["UNIFIER_WORKER_METRICS_PORT"]) == "9100"
    assert svc["status"]["command"] == ["unifier", "status", "--serve"]


def test_the_image_copies_every_package_the_project_installs() -> None:
    """An image built without one floor fails at its first import, not at build time."""
    import tomllib

    root = Path(__file__).parents[2]
    packages = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mypy"]["packages"]
    copied = set(re.findall(r"^COPY (\w+) \1$", (root / "Dockerfile").read_text(), re.M))
    assert set(packages) <= copied, f"Dockerfile does not copy {sorted(set(packages) - copied)}"
