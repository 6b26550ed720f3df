import pytest

from config.settings import Settings
from streams.topology import topology
from unifier.topics import TopicMismatch, admin_client, ensure_topics, existing_partitions

pytestmark = pytest.mark.integration


def test_creation_is_idempotent(settings: Settings) -> None:
    first = ensure_topics(settings)
    assert {state for _, state in first} == {"created"}
    second = ensure_topics(settings)
    assert {state for _, state in second} == {"exists"}
    have = existing_partitions(admin_client(settings))
    assert have[settings.topic_touchpoints] == settings.touchpoint_partitions
    assert have[settings.topic_identity] == settings.internal_partitions
    assert have[settings.topic_profile_ops] == settings.internal_partitions
    assert have[topology(settings).tables["identity"].changelog] == settings.internal_partitions
    assert have[topology(settings).tables["profiles"].changelog] == settings.internal_partitions


def test_refuses_a_partition_mismatch_naming_topic_and_counts(settings: Settings) -> None:
    ensure_topics(settings)
    wrong = settings.model_copy(update={"touchpoint_partitions": 5})
    with pytest.raises(TopicMismatch) as info:
        ensure_topics(wrong)
    message = str(info.value)
    assert f"topic '{settings.topic_touchpoints}' exists with 3 partitions" in message
    assert "settings ask for 5" in message
    # Nothing was changed or created by the refused call.
    assert existing_partitions(admin_client(settings))[settings.topic_touchpoints] == 3


def test_profile_updates_are_compacted(settings: Settings) -> None:
    from confluent_kafka.admin import ConfigResource

    ensure_topics(settings)
    resource = ConfigResource("topic", settings.topic_profile_updates)
    admin = admin_client(settings)  # keep it alive until the future resolves
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["cleanup.policy"].value == "compact"
