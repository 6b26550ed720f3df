"""What a stage writes back to its tables: only what changed. Every table write is a
changelog record the worker sends and the broker stores, so a batch that changed
nothing (a re-delivered record, a claim for what the profile holds) writes nothing."""

from typing import Any

from profiles.graph.node import ProfileNode
from schemas.wire import node_from, node_to
from streams.state import NodeCache, Overlay


class Counted(dict[str, Any]):
    """A table that counts its writes (each one a changelog record in Faust)."""

    writes = 0

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes += 1
        super().__setitem__(key, value)

    def pop(self, key: str, *default: Any) -> Any:
        self.writes += 1
        return super().pop(key, *default)


def test_profiles_read_and_left_alone_are_not_written_back() -> None:
    table = Counted(p_1=node_to(ProfileNode(claims=2)), p_2=node_to(ProfileNode(claims=5)))
    table.writes = 0
    cache = NodeCache(table)
    cache.get("p_1")
    cache.get("p_2").claims += 1
    cache.get("p_3")  # absent: nothing to write either
    cache.flush()
    assert table.writes == 1
    assert node_from(table["p_2"]).claims == 6
    assert node_from(table["p_1"]).claims == 2
    assert "p_3" not in table


def test_identity_writes_that_change_nothing_are_skipped() -> None:
    table = Counted({"email:a@x": "p_1", "email:b@x": "p_2"})
    table.writes = 0
    writes = Overlay(table)
    writes["email:a@x"] = "p_1"  # what it is already
    writes["email:b@x"] = "p_1"  # a change
    writes["email:c@x"] = "p_3"  # new
    writes["email:d@x"] = "p_4"
    del writes["email:d@x"]  # set and deleted in one batch: never in the table
    writes.flush()
    assert table == {"email:a@x": "p_1", "email:b@x": "p_1", "email:c@x": "p_3"}
    assert table.writes == 2
