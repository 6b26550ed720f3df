"""The sink interface: how a batch of profile changes leaves the worker.

A stage hands every batch it handled to its sinks as one ``ChangeBatch``: ``write``
takes it (a sink may send right away or buffer), ``flush`` returns once everything
written so far is delivered, with a ``Delivery`` that says how much. A sink whose
target is down keeps retrying inside ``flush`` (back-pressure: the stage waits and
its lag grows, nothing is dropped) unless its contract says otherwise.

The Redis view (``sinks.redis_view.RedisViewSink``) and the output topics
(``sinks.kafka.ProfileTopicsSink``) implement it; a new destination is one more
class with these three methods, added where the worker builds the profile stage's
sinks (``profile_sinks`` in ``streams/app.py``; ``docs/extending.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from profiles.graph.messages import Erased, Merged, SplitOff, Unindexed
from profiles.graph.state import Refusal
from profiles.segments import EvalError, Transition


@dataclass(frozen=True, slots=True)
class ProfileChange:
    """One profile a batch touched, as readers see it now.

    ``view`` is the documented profile form, or a redirect (``merged_into``) for a
    profile merged away. ``publish`` says whether its stored form changed, so that
    followers of ``profile-updates`` hear of it; a profile touched but unchanged is
    still handed over (a view store re-writes it, which heals a view that missed the
    write before a crash; its version guard makes that a no-op otherwise)."""

    profile_id: str
    view: dict[str, Any]
    why: dict[str, Any] | None = None  # how its identifiers joined; None for a redirect
    publish: bool = False
    changed: tuple[str, ...] = ()  # the fields that changed (``profiles.projection``)
    # Its identifiers or how they joined may differ from what a view store was last
    # given: it rewrites its identifier index and explanation. False only when the
    # stage knows they did not change (an event folded into a profile it had).
    identity_changed: bool = True
    # The version the stage read the profile at (when ``identity_changed`` is False): a
    # store holding an older one missed writes and is given everything again.
    read_version: int = 0

    @property
    def removed(self) -> bool:
        """Merged away: the view is a redirect (published as a tombstone)."""
        return "merged_into" in self.view


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """What one batch of the profile stage changed."""

    changes: list[ProfileChange] = field(default_factory=list)
    merges: list[Merged] = field(default_factory=list)  # profiles merged into another
    # Profiles that entered or left a segment, and evaluations that failed.
    memberships: list[Transition] = field(default_factory=list)
    segment_errors: list[EvalError] = field(default_factory=list)
    # Partition of the stage's input -> the last offset of the batch's records in it.
    source_offsets: dict[int, int] = field(default_factory=dict)
    # Profiles (and redirects) erased by a privacy request: every copy goes.
    erased: list[Erased] = field(default_factory=list)
    splits: list[SplitOff] = field(default_factory=list)  # parts split off a profile
    # Identifiers profiles let go (a rule blocks them): their index keys go.
    unindexed: list[Unindexed] = field(default_factory=list)
    # Links refused, each recorded in a profile (profile id, the refusal): the audit trail.
    refusals: list[tuple[str, Refusal]] = field(default_factory=list)
    # Source -> the time (ms) of the newest event the batch applied from it.
    newest: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.changes
            or self.merges
            or self.splits
            or self.memberships
            or self.erased
            or self.unindexed
            or self.refusals
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a flush delivered: records or keys written, and how many the target
    skipped as older than what it holds (a replay after a restart)."""

    sink: str
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)  # per output, e.g. {"updates": 3}


class Sink(Protocol):
    """A destination of profile changes (see the module docstring)."""

    name: str

    async def write(self, batch: ChangeBatch) -> None: ...

    async def flush(self) -> Delivery: ...

    async def close(self) -> None: ...
