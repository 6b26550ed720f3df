"""The messages identity and profile partitions send each other, and the outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from profiles.facts import EventFacts
from profiles.graph.state import UNKNOWN_TIME, Key, ProfileState, Refusal, Reservation


@dataclass(frozen=True, slots=True)
class Observe:  # -> identity[anchor]
    anchor: Key
    ids: tuple[Key, ...]  # usable identifiers, highest priority first (anchor included)
    event: EventFacts
    refused: tuple[Refusal, ...] = ()  # shared identifiers passed over on the way


@dataclass(frozen=True, slots=True)
class Apply:  # -> profile[profile]
    profile: str
    ids: tuple[Key, ...]
    event: EventFacts
    granted_anchor: bool  # the anchor was unowned and now belongs to this profile
    refused: tuple[Refusal, ...] = ()
    # The anchor is shared: unless this profile already has the event (a re-delivery
    # from before the anchor was shared), pass it on to its next identifier.
    pass_over: bool = False


@dataclass(frozen=True, slots=True)
class Claim:  # -> identity[ident]
    ident: Key
    profile: str
    event_id: str
    claim: str  # the claim's id: every answer to it names it (see Reservation)
    time_ms: int = UNKNOWN_TIME  # the event's time: orders how identifiers joined
    # The claimer split the identifier off to this part: if the identity partition
    # still names the claimer (the part's re-point is on its way), the part owns it.
    moved_to: str = ""
    anchor: Key = ""  # the event's anchor: the link is (anchor, ident) — for splits' blocks


@dataclass(frozen=True, slots=True)
class Granted:  # -> profile[profile]
    profile: str
    ident: Key
    event_id: str


@dataclass(frozen=True, slots=True)
class Merge:  # -> profile[loser]
    loser: str
    winner: str
    via: Key
    claimer: str
    event_id: str
    claim: str
    time_ms: int = UNKNOWN_TIME
    anchor: Key = ""


@dataclass(frozen=True, slots=True)
class Offer:  # -> profile[winner]
    winner: str
    loser: str
    state: ProfileState
    pending: frozenset[Reservation]  # the loser's reservations: they move with it
    via: Key
    claimer: str
    event_id: str
    claim: str
    time_ms: int = UNKNOWN_TIME
    anchor: Key = ""


@dataclass(frozen=True, slots=True)
class Answer:  # -> profile[loser]
    loser: str
    winner: str
    accepted: bool
    via: Key
    claimer: str
    event_id: str
    claim: str
    rule: str = ""


@dataclass(frozen=True, slots=True)
class Denied:  # -> profile[profile]: a claim of a shared identifier, refused
    profile: str
    ident: Key
    event_id: str
    owner: str
    rule: str
    claim: str


@dataclass(frozen=True, slots=True)
class Release:  # -> profile[profile]: a reservation that will not be granted
    profile: str
    ident: Key
    claim: str  # only this reservation goes: a late duplicate must not drop a newer one


@dataclass(frozen=True, slots=True)
class Repoint:  # -> identity[ident]
    ident: Key
    old: str
    new: str
    moved: bool = False  # a split moved it: ``old`` does not count as another claimant


@dataclass(frozen=True, slots=True)
class Merged:  # -> the profile-merges output
    loser: str
    winner: str
    via: Key
    event_id: str


@dataclass(frozen=True, slots=True)
class Evaluate:  # -> profile[profile]: look at its segments again (a window passed, or
    profile: str  # the definitions changed); changes nothing else, follows no redirect


@dataclass(frozen=True, slots=True)
class Erase:  # -> profile[profile]: erase it (a privacy request); see profiles.graph.erase
    profile: str
    receipt: str
    suppress: bool = True
    follow: bool = True  # at a redirect: go on to the survivor (False: erase the redirect)
    # Identifiers whose index entries may still name it: a profile merged away held
    # some of its survivor's, and a late write of its old view may have offered them.
    ids: tuple[Key, ...] = ()


@dataclass(frozen=True, slots=True)
class Disown:  # -> identity[ident]: its holder let it go (a rule now blocks it)
    ident: Key
    profile: str


@dataclass(frozen=True, slots=True)
class Unindexed:  # -> the sinks: identifiers a profile no longer holds, and no profile does
    profile: str
    ids: tuple[Key, ...]


@dataclass(frozen=True, slots=True)
class Split:  # -> profile[profile]: split it (``profiles.graph.split``)
    profile: str
    name: str  # the request's id: names the parts, the block, and makes it idempotent
    # detach: the identifiers to take away (with what hangs on them); block, shared: the
    # identifiers a rule now marks so; limit: none (``limits`` says the new ones).
    detach: tuple[Key, ...]
    rule: str = ""  # why, for the record: "split", "block email", "limit email=2"…
    kind: str = "detach"  # detach | block | shared | limit (profiles.graph.split)
    limits: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Spawn:  # -> profile[profile]: a part split off ``source`` starts here
    profile: str
    source: str
    name: str
    state: ProfileState
    pending: frozenset[Reservation]


@dataclass(frozen=True, slots=True)
class Readdress:  # -> profile[profile]: a redirect now points to a part of its survivor
    profile: str
    to: str
    name: str


@dataclass(frozen=True, slots=True)
class SplitOff:  # -> the profile-merges output: identifiers left ``source`` for ``part``
    source: str
    part: str
    ids: tuple[Key, ...]
    name: str
    rule: str = ""


#: ``Forget.profile`` of an identifier a privacy request named itself.
ASKED = "*"


@dataclass(frozen=True, slots=True)
class Forget:  # -> identity[ident]: the identifier is an erased person's
    ident: Key
    # The erased profile it was found in; ASKED: named by the request; "": found in an
    # event of the erased person (so kept when other profiles claimed it too).
    profile: str
    receipt: str
    suppress: bool = True


@dataclass(frozen=True, slots=True)
class Erased:  # -> the sinks: a profile (or a redirect) erased from the tables
    profile: str
    ids: tuple[Key, ...]  # the identifiers it held: their index entries go
    # The segments it was in, each (name, definition version, the membership's seq): it
    # leaves them. ``version``: the profile's version then.
    segments: tuple[tuple[str, int, int], ...]
    receipt: str
    version: int = 0


@dataclass(frozen=True, slots=True)
class Shredded:  # -> the identity stage's key store: destroy an identifier's key
    ident: Key
    receipt: str
    suppress: bool


ProfileMsg = (
    Apply
    | Granted
    | Merge
    | Offer
    | Answer
    | Release
    | Denied
    | Evaluate
    | Erase
    | Split
    | Spawn
    | Readdress
)
IdentityMsg = Observe | Claim | Repoint | Forget | Disown
# (stage, key, message): stage "identity" or "profile" (a message for that partition),
# "merges" (a Merged or SplitOff for the output topic), "unindexed" (an Unindexed),
# "audit" (a Refusal recorded in profile ``key``: the audit trail) or "refused" (key = the
# rule, for metrics)
Out = tuple[str, Key, Any]


def _counted(rule: str) -> Out:
    return ("refused", rule, None)
