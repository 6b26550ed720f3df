"""The topology is the one list of topics, stages and tables: the CLI's topic creation,
lag and the worker all read it, so it must be whole and agree with itself."""

from __future__ import annotations

from config.settings import Settings
from serve.lag import stages
from streams.topology import topology
from unifier.topics import topic_specs


def test_every_topic_a_stage_reads_or_writes_is_created_with_its_partitions() -> None:
    settings = Settings(touchpoint_partitions=3, internal_partitions=5, app_id="shop")
    topo = topology(settings)
    created = {t.name: t.partitions for t in topo.topics()}
    for stage in topo.stages:
        assert created[stage.consumes] == stage.partitions
        assert set(stage.emits) <= set(created)
    for table in topo.tables.values():
        assert created[table.changelog] == 5  # a changelog has its table's partitions
        assert table.changelog == f"shop-{table.name}-changelog"  # Faust's naming
    assert [s.table for s in topo.stages] == [None, "identity", "profiles"]
    assert created[settings.topic_touchpoints] == 3
    assert created[settings.topic_dlq] == 1


def test_topic_creation_and_lag_read_the_topology() -> None:
    settings = Settings(internal_partitions=2)
    topo = topology(settings)
    assert topic_specs(settings) == topo.topics()
    assert stages(settings) == [(s.name, s.consumes, s.partitions) for s in topo.stages]
    assert topo.stage_inputs() == [
        settings.topic_touchpoints,
        settings.topic_identity,
        settings.topic_profile_ops,
    ]
    compacted = {t.name for t in topo.topics() if t.config.get("cleanup.policy") == "compact"}
    assert compacted == {
        settings.topic_profile_updates,
        settings.topic_schemas,
        settings.topic_segments,
        settings.topic_erasures,
        settings.topic_identity_rules,
        settings.topic_privacy,
        *(t.changelog for t in topo.tables.values()),
    }
