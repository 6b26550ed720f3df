"""Who owns each partition, from the broker's description of the group."""

from confluent_kafka import TopicPartition
from confluent_kafka.admin import ConsumerGroupDescription, MemberAssignment, MemberDescription

from serve.lag import owners_of


def test_each_partition_is_named_by_its_member_client_and_host() -> None:
    def member(client: str, host: str, *parts: tuple[str, int]) -> MemberDescription:
        assignment = MemberAssignment([TopicPartition(t, p) for t, p in parts])
        return MemberDescription(f"{client}-id", client, host, assignment)

    group = ConsumerGroupDescription(
        "profile-unifier", False,
        [member("worker-a", "/10.0.0.5", ("touchpoints", 0), ("unifier.identity", 1)),
         member("worker-b", "/10.0.0.6", ("touchpoints", 1))],
        "range", "STABLE", None,
    )  # fmt: skip
    assert owners_of(group) == {
        ("touchpoints", 0): "worker-a (10.0.0.5)",
        ("unifier.identity", 1): "worker-a (10.0.0.5)",
        ("touchpoints", 1): "worker-b (10.0.0.6)",
    }


def test_a_group_described_without_members_owns_nothing() -> None:
    # What the embedded broker answers: a stable group and no members.
    empty = ConsumerGroupDescription("g", False, [], "", "STABLE", None)
    assert owners_of(empty) == {}
