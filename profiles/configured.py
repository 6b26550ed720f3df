"""Settings into the core's rules: the one place the domain reads ``config.Settings``.

Settings hold plain data; a table left unset (``None``) means the built-in one from
the registries here (identifier types, block lists, trait aliases, source
priorities). Entry points call ``check`` once, so a bad value is refused at start
with its name, before any event is read.
"""

from __future__ import annotations

from collections.abc import Mapping

from config.settings import Settings
from profiles.identifiers import DEFAULT_IDENTIFIER_PRIORITIES, EmailRules
from profiles.rules import DEFAULT_BLOCKED_PATTERNS, DEFAULT_BLOCKED_VALUES, IdentityRules
from profiles.standardize import DEFAULT_ALIASES, alias_index
from profiles.traits import DEFAULT_SOURCE_PRIORITIES, TraitRules


def identifier_priorities(settings: Settings) -> Mapping[str, int]:
    """The identifier types this deployment accepts, with their priorities."""
    if settings.identifier_priorities is None:
        return dict(DEFAULT_IDENTIFIER_PRIORITIES)
    return dict(settings.identifier_priorities)


def identity_rules(settings: Settings) -> IdentityRules:
    """Priorities, limits, block lists and email provider rules."""
    return IdentityRules.build(
        identifier_priorities(settings),
        settings.identity_limits,
        DEFAULT_BLOCKED_VALUES
        if settings.identity_block_values is None
        else settings.identity_block_values,
        DEFAULT_BLOCKED_PATTERNS
        if settings.identity_block_patterns is None
        else settings.identity_block_patterns,
        EmailRules(
            frozenset(d.lower() for d in settings.email_ignore_dots_domains),
            frozenset(d.lower() for d in settings.email_strip_plus_domains),
        ),
        settings.identity_max_claimants or None,
    )


def trait_rules(settings: Settings) -> TraitRules:
    """Survivorship: which strategy each trait uses, and how sources rank."""
    priorities = settings.source_priorities
    return TraitRules(
        strategies=dict(settings.trait_strategies),
        default=settings.trait_default_strategy,
        source_priorities=dict(DEFAULT_SOURCE_PRIORITIES if priorities is None else priorities),
        attribution_lookback_days=settings.attribution_lookback_days,
    )


def trait_alias_index(settings: Settings) -> dict[str, str]:
    """Trait name (folded) -> its standard name."""
    return alias_index(
        DEFAULT_ALIASES if settings.trait_aliases is None else settings.trait_aliases
    )


def check(settings: Settings) -> None:
    """A ValueError naming the first setting the core cannot use."""
    identity_rules(settings)  # block patterns compile
    trait_rules(settings).check()  # every strategy exists
