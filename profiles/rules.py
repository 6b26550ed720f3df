"""The identity rules: which identifiers may link profiles, and how far.

Over-merge protection is part of correctness: a household tablet, a shared POS
card or ``test@test.com`` must not fuse strangers. Three rules, all configuration:

* **Block list** — values (after normalization) and regular expressions that never
  link anything: ``test@test.com``, ``null``, ``anonymous``, all-zero numbers…
  A blocked identifier is dropped from the event with the rule that blocked it.
* **Per-type limits** — how many identifiers of a type one profile may hold
  (``user_id`` 1, ``email`` 5…; ``profiles.identifiers.IDENTIFIER_TYPES``).
  A link that would break a limit is refused and recorded.
* **Identifier priority** — decides which link is refused when an event would
  break a limit: the identifiers of the highest priority are linked first.
* **Shared identifiers** — an identifier claimed by more than ``max_claimants``
  profiles (10 by default: a store's phone typed in for every customer, a kiosk's
  device id) stops linking: later claims of it are refused and recorded, and events
  it would have anchored go to their next identifier. Counts every profile that ever
  claimed it, also ones merged since. Essential for types without a per-type limit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from config.settings import DEFAULT_MAX_CLAIMANTS
from profiles.identifiers import DEFAULT_LIMITS, NO_EMAIL_RULES, EmailRules, normalize_all
from profiles.sealed import is_sealed, token_of, unusable_reason

DEFAULT_BLOCKED_VALUES: tuple[str, ...] = (
    "test@test.com",
    "test@example.com",
    "none@none.com",
    "noemail@example.com",
    "no@email.com",
    "null",
    "none",
    "nil",
    "undefined",
    "unknown",
    "anonymous",
    "n/a",
    "na",
    "-",
    "0",
)
DEFAULT_BLOCKED_PATTERNS: tuple[str, ...] = (
    r"^[0\-\s]*$",  # 0, 000-000-0000
    r"^\+?1?(\d)\1{9}$",  # 1111111111, +12222222222: one digit repeated
    r"^(test|fake|dummy|sample|noreply|no-reply)\d*@",  # test@..., test123@..., fake@...
)


@dataclass(frozen=True)
class IdentityRules:
    priorities: Mapping[str, int]
    email: EmailRules = NO_EMAIL_RULES
    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    blocked_values: frozenset[str] = frozenset(DEFAULT_BLOCKED_VALUES)
    blocked_patterns: tuple[re.Pattern[str], ...] = tuple(
        re.compile(p, re.IGNORECASE) for p in DEFAULT_BLOCKED_PATTERNS
    )
    max_claimants: int | None = DEFAULT_MAX_CLAIMANTS
    # Identifiers an operator marked since (``unifier identity block``): mark key
    # (``mark_of``) -> BLOCKED or SHARED. Blocked ones are dropped from events like the
    # block list's; shared ones link nothing (``profiles.graph.identity``).
    marks: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        priorities: Mapping[str, int],
        limits: Mapping[str, int] | None = None,
        blocked_values: Iterable[str] = DEFAULT_BLOCKED_VALUES,
        blocked_patterns: Iterable[str] = DEFAULT_BLOCKED_PATTERNS,
        email: EmailRules | None = None,
        max_claimants: int | None = DEFAULT_MAX_CLAIMANTS,
    ) -> IdentityRules:
        """Rules from configuration; a pattern that does not compile is a ValueError
        naming it."""
        compiled = []
        for pattern in blocked_patterns:
            try:
                compiled.append(re.compile(pattern, re.IGNORECASE))
            except re.error as exc:
                raise ValueError(f"block pattern {pattern!r} does not compile: {exc}") from None
        return cls(
            priorities=dict(priorities),
            email=email or EmailRules(),
            limits=dict(DEFAULT_LIMITS if limits is None else limits),
            blocked_values=frozenset(v.strip().lower() for v in blocked_values),
            blocked_patterns=tuple(compiled),
            max_claimants=max_claimants,
        )

    def blocked(self, value: str) -> str | None:
        """The rule that blocks this normalized value, or None."""
        if value.lower() in self.blocked_values:
            return "block list"
        for pattern in self.blocked_patterns:
            if pattern.search(value):
                return f"block pattern {pattern.pattern}"
        return None

    def limit(self, id_type: str) -> int | None:
        return self.limits.get(id_type)

    def by_priority(self, identifiers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Highest priority first; ties by type, then value, so the order is total."""
        return sorted(identifiers, key=lambda tv: (-self.priorities.get(tv[0], 0), tv[0], tv[1]))


Ident = tuple[str, str]  # (type, normalized value)

#: Marks an operator can put on one identifier (``IdentityRules.marks``).
BLOCKED = "block list"
SHARED = "marked shared"


def mark_of(graph_key: str) -> str:
    """What marks are keyed by: ``type:~TOKEN`` for a sealed identifier (whatever its
    key's generation), the graph key itself for a plain one."""
    id_type, _, value = graph_key.partition(":")
    token = token_of(value) if value.startswith("~") else None
    return f"{id_type}:~{token}" if token is not None else graph_key


def key(ident: Ident) -> str:
    """The table key of an identifier: ``type:value``."""
    return f"{ident[0]}:{ident[1]}"


def usable(
    identifiers: Mapping[str, str], rules: IdentityRules, region: str
) -> tuple[list[Ident], list[tuple[str, str]]]:
    """(identifiers that may link, highest priority first; (type, reason) dropped).

    Sealed values (``profiles.sealed``) were normalized and checked against the block
    list before they were sealed: they are taken as they are."""
    raw = dict(identifiers)
    known = {t: v for t, v in raw.items() if t in rules.priorities}
    dropped: list[tuple[str, str]] = []
    ids = []
    marks = rules.marks
    for id_type, value in list(known.items()):
        if value.startswith("~"):
            if (reason := unusable_reason(value)) is not None:
                dropped.append((id_type, reason))
                del known[id_type]
            elif is_sealed(value):
                if marks and marks.get(mark_of(f"{id_type}:{value}")) == BLOCKED:
                    dropped.append((id_type, BLOCKED))
                else:
                    ids.append((id_type, value))
                del known[id_type]
    good, bad = normalize_all(known, region, rules.email)
    dropped += [(r.id_type, r.reason) for r in bad]
    dropped += [(t, "unknown identifier type") for t in raw if t not in rules.priorities]
    for id_type, value in good.items():
        rule = rules.blocked(value)
        if rule is None and marks and marks.get(f"{id_type}:{value}") == BLOCKED:
            rule = BLOCKED
        if rule is None:
            ids.append((id_type, value))
        else:
            dropped.append((id_type, rule))
    return rules.by_priority(ids), dropped


# --- rules changed at run time (``unifier identity``) ---------------------------------
#: Record keys on the identity-rules topic (compacted): ``mark|<mark key>`` (value:
#: {"mark": BLOCKED or SHARED, ...}) and ``limit|<type>`` (value: {"limit": N, ...}).
MARK_PREFIX, LIMIT_PREFIX = "mark|", "limit|"


def rule_key(kind: str, what: str) -> str:
    """A rule record's key: ``kind`` "mark" (``what``: a mark key) or "limit" (a type)."""
    return f"{MARK_PREFIX if kind == 'mark' else LIMIT_PREFIX}{what}"


def rules_with(base: IdentityRules, records: Mapping[str, Mapping[str, Any]]) -> IdentityRules:
    """The configured rules with the operators' changes (the identity-rules topic's
    latest record per key, decoded); a record this version does not know is skipped."""
    marks = dict(base.marks)
    limits = dict(base.limits)
    for k, value in records.items():
        if k.startswith(MARK_PREFIX) and value.get("mark") in (BLOCKED, SHARED):
            marks[k.removeprefix(MARK_PREFIX)] = str(value["mark"])
        elif k.startswith(LIMIT_PREFIX) and isinstance(value.get("limit"), int):
            limits[k.removeprefix(LIMIT_PREFIX)] = int(value["limit"])
    if marks == base.marks and limits == base.limits:
        return base
    return replace(base, marks=marks, limits=limits)
