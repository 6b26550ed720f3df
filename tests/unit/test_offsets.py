"""The commit rule of streams/offsets.py: a commit never passes a record that was not
acknowledged, and a consecutive run from the committed offset is always committed."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st
from intervaltree import IntervalTree

from streams import offsets

TP0 = TP("unifier.profile-ops", 0)


def consumer_state(committed: int | None, acked: list[int], gaps: list[tuple[int, int]]) -> Any:
    offsets.patch_consumer()
    tree = IntervalTree()
    for begin, end in gaps:
        tree.addi(begin, end)
    state = SimpleNamespace(
        _acked=defaultdict(list, {TP0: list(acked)}),
        _acked_index=defaultdict(set, {TP0: set(acked)}),
        _committed_offset=defaultdict(lambda: None, {TP0: committed}),
        _gap=defaultdict(IntervalTree, {TP0: tree} if gaps else {}),
    )
    return state


def new_offset(
    committed: int | None, acked: list[int], gaps: list[tuple[int, int]] | None = None
) -> Any:
    return offsets._new_offset(consumer_state(committed, acked, gaps or []), TP0)


def test_a_hole_at_the_head_blocks_the_commit_however_small() -> None:
    # Committed 165 means 165 is the next record to process.
    assert new_offset(165, [166, 167]) is None  # Faust 0.15.3 committed 168 here
    assert new_offset(165, [170, 171]) is None
    assert new_offset(0, [1, 2]) is None  # and ignored the head when committed was 0


def test_a_partition_without_a_known_start_is_not_committed() -> None:
    assert new_offset(None, [5, 6]) is None


def test_a_run_from_the_committed_offset_is_committed_up_to_the_first_hole() -> None:
    assert new_offset(165, [165, 166, 167, 170]) == 168
    assert new_offset(0, [0, 1, 2]) == 3


def test_records_the_fetch_loop_skipped_are_not_taken_as_processed() -> None:
    # Faust records offsets its fetch loop jumped over as a "gap" and committed them
    # as if processed; those were records skipped while a partition was paused.
    assert new_offset(10, [10, 11, 14, 15], gaps=[(12, 14)]) == 12
    state = consumer_state(10, [10, 11, 14, 15], gaps=[(12, 14)])
    assert offsets._new_offset(state, TP0) == 12
    assert offsets._new_offset(state, TP0) is None  # nothing more until 12 is acked
    assert state._acked[TP0] == [14, 15]


@given(
    committed=st.integers(0, 50),
    acked=st.sets(st.integers(0, 80), max_size=40),
)
def test_a_commit_only_covers_acknowledged_records(committed: int, acked: set[int]) -> None:
    acked_from = sorted(o for o in acked if o >= committed)  # Faust drops older acks
    got = new_offset(committed, acked_from)
    run = committed
    while run in acked:
        run += 1
    if run == committed:
        assert got is None
    else:
        assert got == run
        assert all(o in acked for o in range(committed, got))
