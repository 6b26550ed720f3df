"""The README's worked examples are what the product does, not what we hoped."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from config.settings import Settings
from profiles.configured import identifier_priorities, trait_rules
from profiles.projection import view_of
from profiles.touchpoint import parse_json
from tests.unit.test_graph import LIMITED, check_settled, simulate

README = Path(__file__).parents[2] / "README.md"


def example(name: str) -> str:
    """The fenced block that follows ``<!-- example: NAME ... -->`` in the README."""
    found = re.search(
        rf"<!-- example: {re.escape(name)}\b[^>]*-->\s*```\w*\n(.*?)```", README.read_text(), re.S
    )
    assert found, f"README has no example {name!r}"
    return found.group(1)


def four_channel_profile(parts: tuple[int, int, int], seed: int) -> dict[str, Any]:
    settings = Settings()
    raw = [orjson.loads(line) for line in example("four-channels events").splitlines()]
    events = [parse_json(r, identifier_priorities(settings)) for r in raw]
    sim = simulate(events, LIMITED, parts, seed)
    check_settled(sim, events)
    [(pid, node)] = sim.live().items()
    return view_of(pid, node, trait_rules(settings))


def test_the_four_channel_customer_becomes_the_profile_shown() -> None:
    assert four_channel_profile((1, 1, 1), 0) == orjson.loads(example("four-channels profile"))


@pytest.mark.parametrize("parts", [(1, 1, 1), (3, 4, 4), (2, 8, 3)])
@pytest.mark.parametrize("seed", range(1, 4))
def test_in_any_order_only_the_merge_history_differs(parts: Any, seed: int) -> None:
    """Which profiles get founded and merged on the way depends on arrival order (so do
    `merged_from` and the version that counts merges); the customer does not."""
    shown = orjson.loads(example("four-channels profile"))
    got = four_channel_profile(parts, seed)
    for view in (shown, got):
        del view["computed"]["merged_from"], view["version"]
    assert got == shown
