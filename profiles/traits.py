"""Survivorship and computed traits: what a profile says, as pure functions of the
events it holds.

A profile's state is, in effect, the set of its events: its aggregates
(``profiles.totals``) merge like that set's union — commutative, associative and
idempotent — and everything here is a function of them: whatever order events and
merges arrive in, the same profile comes out, and an event delivered twice counts
once. Each trait keeps the few observations any strategy can pick from
(``TraitCandidates``), so the rules apply when the view is made, not when events
arrive.

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

from profiles.totals import TOUCHPOINTS_KEPT, Observation, Scalar, TraitCandidates

#: Which source's word counts most for traits using the source_priority strategy.
DEFAULT_SOURCE_PRIORITIES: Mapping[str, int] = {
    "crm": 100,
    "pos": 80,
    "support": 60,
    "email": 50,
    "web": 40,
}


@dataclass(frozen=True)
class TraitRules:
    strategies: Mapping[str, str] = field(default_factory=dict)  # trait -> strategy name
    default: str = "latest"
    source_priorities: Mapping[str, int] = field(default_factory=dict)  # higher wins
    last_touchpoints: int = 10
    top_categories: int = 5
    attribution_lookback_days: int = 30  # profiles.computed: attribution's window

    def strategy(self, trait: str) -> Strategy:
        return STRATEGIES[self.strategies.get(trait, self.default)]

    def check(self) -> None:
        """A ValueError naming any strategy that does not exist."""
        unknown = sorted({*self.strategies.values(), self.default} - set(STRATEGIES))
        if unknown:
            raise ValueError(
                f"unknown trait strategy {', '.join(unknown)} (known: {', '.join(STRATEGIES)})"
            )
        if not 0 <= self.last_touchpoints <= TOUCHPOINTS_KEPT:
            raise ValueError(
                f"last_touchpoints is {self.last_touchpoints}: profiles keep up to "
                f"{TOUCHPOINTS_KEPT} touchpoints"
            )


Strategy = Callable[[TraitCandidates, TraitRules], Scalar]
DEFAULT_TRAIT_RULES = TraitRules()


def _latest_of(c: TraitCandidates, rules: TraitRules) -> Observation:
    prio = rules.source_priorities
    return max(c.latest.values(), key=lambda o: (o[0], prio.get(o[1], 0), o[2]))


def _latest(c: TraitCandidates, rules: TraitRules) -> Scalar:
    """The most recent event's value; at the same time, the more trusted source's
    (then the larger event id, so never arrival order)."""
    return _latest_of(c, rules)[3]


def _first(c: TraitCandidates, rules: TraitRules) -> Scalar:
    """The earliest event's value: e.g. the first referrer, the sign-up date."""
    return c.first[3] if c.first is not None else None


def _source_priority(c: TraitCandidates, rules: TraitRules) -> Scalar:
    """The most trusted source's value, then the most recent among its events."""
    prio = rules.source_priorities
    return max(c.latest.values(), key=lambda o: (prio.get(o[1], 0), o[0], o[2]))[3]


def _max(c: TraitCandidates, rules: TraitRules) -> Scalar:
    """The largest number seen (non-numbers ignored; none: the latest value)."""
    return c.hi[3] if c.hi is not None else _latest(c, rules)


def _min(c: TraitCandidates, rules: TraitRules) -> Scalar:
    """The smallest number seen (non-numbers ignored; none: the latest value)."""
    return c.lo[3] if c.lo is not None else _latest(c, rules)


def _any_true(c: TraitCandidates, rules: TraitRules) -> Scalar:
    """True once any event said true (a flag that never goes back)."""
    return c.any_true


STRATEGIES: dict[str, Strategy] = {
    "latest": _latest,
    "first": _first,
    "source_priority": _source_priority,
    "max": _max,
    "min": _min,
    "any_true": _any_true,
}


def pick_traits(traits: Mapping[str, TraitCandidates], rules: TraitRules) -> dict[str, Scalar]:
    """Each trait's value under the rules, from its candidates (``profiles.totals``)."""
    return {name: rules.strategy(name)(c, rules) for name, c in sorted(traits.items())}


def choose_traits(
    observations: Iterable[tuple[str, Observation]], rules: TraitRules
) -> dict[str, Scalar]:
    """Each trait's value under the rules, from all its observations."""
    by_trait: dict[str, TraitCandidates] = {}
    for name, obs in observations:
        by_trait.setdefault(name, TraitCandidates()).add(obs)
    return pick_traits(by_trait, rules)
