"""Survivorship and computed traits: what a profile says, as pure functions of the
events it holds.

A profile's state is the set of its events (``ProfileState.events``, keyed by event
id), so merging two profiles is a set union — commutative, associative and
idempotent — and everything here is a function of that set: whatever order events
and merges arrive in, the same profile comes out, and an event delivered twice
counts once.

**Identity traits** (name, email, address…) are chosen per trait by a named
strategy from the registry ``STRATEGIES``; ``TraitRules`` says which trait uses
which (``UNIFIER_TRAIT_STRATEGIES``), and in what order sources win where the
strategy asks (``UNIFIER_SOURCE_PRIORITIES``, e.g. CRM over the web form for the
postal address).

Computed traits (orders, lifetime value, lifecycle…) are in ``profiles.computed``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

Scalar = str | int | float | bool | None

#: Which source's word counts most for traits using the source_priority strategy.
DEFAULT_SOURCE_PRIORITIES: Mapping[str, int] = {
    "crm": 100,
    "pos": 80,
    "support": 60,
    "email": 50,
    "web": 40,
}

#: (event time ms, source, event id, value): one event's say about a trait.
Observation = tuple[int, str, str, Scalar]


@dataclass(frozen=True)
class TraitRules:
    strategies: Mapping[str, str] = field(default_factory=dict)  # trait -> strategy name
    default: str = "latest"
    source_priorities: Mapping[str, int] = field(default_factory=dict)  # higher wins
    last_touchpoints: int = 10
    top_categories: int = 5

    def strategy(self, trait: str) -> Strategy:
        return STRATEGIES[self.strategies.get(trait, self.default)]

    def check(self) -> None:
        """A ValueError naming any strategy that does not exist."""
        unknown = sorted({*self.strategies.values(), self.default} - set(STRATEGIES))
        if unknown:
            raise ValueError(
                f"unknown trait strategy {', '.join(unknown)} (known: {', '.join(STRATEGIES)})"
            )


Strategy = Callable[[list[Observation], TraitRules], Scalar]
DEFAULT_TRAIT_RULES = TraitRules()


def _latest(obs: list[Observation], rules: TraitRules) -> Scalar:
    """The most recent event's value; at the same time, the more trusted source's
    (then the larger event id, so never arrival order)."""
    prio = rules.source_priorities
    return max(obs, key=lambda o: (o[0], prio.get(o[1], 0), o[2]))[3]


def _first(obs: list[Observation], rules: TraitRules) -> Scalar:
    """The earliest event's value: e.g. the first referrer, the sign-up date."""
    return min(obs, key=lambda o: (o[0], o[2]))[3]


def _source_priority(obs: list[Observation], rules: TraitRules) -> Scalar:
    """The most trusted source's value, then the most recent among its events."""
    prio = rules.source_priorities
    return max(obs, key=lambda o: (prio.get(o[1], 0), o[0], o[2]))[3]


def _numeric(obs: list[Observation]) -> list[Observation]:
    return [o for o in obs if isinstance(o[3], int | float) and not isinstance(o[3], bool)]


def _max(obs: list[Observation], rules: TraitRules) -> Scalar:
    """The largest number seen (non-numbers ignored; none: the latest value)."""
    nums = _numeric(obs)
    return max(nums, key=lambda o: (o[3], o[0], o[2]))[3] if nums else _latest(obs, rules)


def _min(obs: list[Observation], rules: TraitRules) -> Scalar:
    """The smallest number seen (non-numbers ignored; none: the latest value)."""
    nums = _numeric(obs)
    return min(nums, key=lambda o: (o[3], -o[0], o[2]))[3] if nums else _latest(obs, rules)


def _any_true(obs: list[Observation], rules: TraitRules) -> Scalar:
    """True once any event said true (a flag that never goes back)."""
    return any(o[3] is True for o in obs)


STRATEGIES: dict[str, Strategy] = {
    "latest": _latest,
    "first": _first,
    "source_priority": _source_priority,
    "max": _max,
    "min": _min,
    "any_true": _any_true,
}


def choose_traits(
    observations: Iterable[tuple[str, Observation]], rules: TraitRules
) -> dict[str, Scalar]:
    by_trait: dict[str, list[Observation]] = {}
    for name, obs in observations:
        by_trait.setdefault(name, []).append(obs)
    return {name: rules.strategy(name)(obs, rules) for name, obs in sorted(by_trait.items())}
