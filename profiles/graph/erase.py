"""Erasure in the identity graph: a profile, and everything linked to it, leaves the
tables, and what arrives for it afterwards cannot bring it back.

* ``Erase`` at a profile replaces its node by an *erased marker* (the receipt, and
  whether later events are suppressed) and sends ``Forget`` to the partition of each
  identifier it held or reserved, and ``Erase`` to each profile merged into it (their
  redirects become markers too). The sinks get an ``Erased`` (view, index, topics,
  segment exits).
* ``Forget`` at an identifier replaces its entry by an erased marker and asks the
  identity stage to destroy its key (``Shredded``: crypto-shredding, and the erasure
  ledger the route stage reads). A *shared* identifier (more claimants than the rule
  allows: a shop's phone) is not the person's alone: it is kept, its key too.
* What reaches a marker later is the erased person's by the graph's own rules — an
  event that carries an erased identifier, a claim of one, a merge with an erased
  profile — so it is erased too (the identifiers it links are forgotten, the profiles
  erased), never applied. Markers hold no personal data: an id and a receipt.

All of it is idempotent: a message delivered again after a crash does nothing new.
"""

from __future__ import annotations

from profiles.graph.messages import (
    Answer,
    Apply,
    Claim,
    Erase,
    Erased,
    Forget,
    Granted,
    Merge,
    Observe,
    Offer,
    Out,
    ProfileMsg,
    Repoint,
    Shredded,
)
from profiles.graph.node import ProfileNode
from profiles.graph.state import Key, Refusal

#: The first character of an identity table value that marks an erased identifier:
#: ``!RECEIPT:S`` (S = 1 when later events carrying it are suppressed).
MARK = "!"


def marker(receipt: str, suppress: bool) -> str:
    return f"{MARK}{receipt}:{int(suppress)}"


def parse_marker(value: str) -> tuple[str, bool] | None:
    """(receipt, suppress) of an erased identifier's table value; None otherwise."""
    if not value.startswith(MARK):
        return None
    receipt, _, flag = value[1:].rpartition(":")
    return receipt, flag == "1"


def _version(node: ProfileNode) -> int:
    s = node.state
    return s.size() + node.segment_moves


def erase(table: dict[str, ProfileNode], node: ProfileNode, key: str, msg: Erase) -> list[Out]:
    """Erase a live profile, or a redirect (``follow=False``)."""
    s = node.state
    ids = tuple(sorted(s.held | node.reserved() | set(msg.ids)))
    losers = sorted({m[0] for m in s.merged} - {key})
    segments = tuple(
        (name, entry[1], entry[2]) for name, entry in sorted(node.segments.items()) if entry[0]
    )
    version = _version(node) + 1
    # (What it split off stays: a message about those is their part's.)
    table[key] = ProfileNode(
        erased=(msg.receipt, msg.suppress), moved=node.moved, moved_claims=node.moved_claims
    )
    out: list[Out] = [("identity", i, Forget(i, key, msg.receipt, msg.suppress)) for i in ids]
    out += [
        ("profile", lo, Erase(lo, msg.receipt, msg.suppress, follow=False, ids=ids))
        for lo in losers
    ]
    out.append(("erased", key, Erased(key, ids, segments, msg.receipt, version)))
    return out


def at_erased(node: ProfileNode, key: str, msg: ProfileMsg, shared_rule: str) -> list[Out]:
    """A message for an erased profile (``shared_rule``: the shared-identifier rule's
    text, for an event passed over)."""
    assert node.erased is not None
    receipt, suppress = node.erased

    def forget(ids: set[Key] | tuple[Key, ...]) -> list[Out]:
        return [("identity", i, Forget(i, "", receipt, suppress)) for i in sorted(ids)]

    if isinstance(msg, Apply):
        if msg.pass_over:  # its anchor is shared: the event goes on, as at any profile
            return pass_over(msg, key, shared_rule)
        return [*forget(msg.ids), ("dropped", "erased", None)]
    if isinstance(msg, Granted):  # claimed by an event of the erased person
        return forget((msg.ident,))
    if isinstance(msg, Merge):  # someone linked with the erased person: erased too
        others = sorted({msg.winner, msg.claimer} - {key})
        return [("profile", p, Erase(p, receipt, suppress)) for p in others]
    if isinstance(msg, Offer):  # a profile merging into the erased one: erased itself
        # Refused first, so it is live again with all it holds, then erased as any
        # profile (it would write its view again while it waits for the answer).
        refused = Answer(msg.loser, key, False, msg.via, msg.claimer, msg.event_id, msg.claim,
                         "erased")  # fmt: skip
        return [
            ("profile", msg.loser, refused),
            ("profile", msg.loser, Erase(msg.loser, receipt, suppress)),
        ]
    return []  # answers, refusals, releases, evaluations, a repeated erase


def pass_over(msg: Apply, profile: str, rule: str) -> list[Out]:
    """An event whose anchor is shared goes on to its next identifier."""
    passed = Refusal(msg.event.event_id, msg.ids[0], profile, rule)
    rest = msg.ids[1:]
    if not rest:
        return [("dropped", "erased", None)]
    observe = Observe(rest[0], rest, msg.event, (*msg.refused, passed))
    return [("identity", rest[0], observe), ("refused", rule, None)]


def identity_erased(value: str | None, msg: Observe | Claim | Repoint) -> list[Out] | None:
    """What an identity partition does with a message about an erased identifier
    (``value`` is its table value); None when the identifier is not erased."""
    mark = parse_marker(value) if value is not None else None
    if mark is None:
        return None
    receipt, suppress = mark
    if isinstance(msg, Observe):  # an event of the erased person: its other ids are theirs
        others = [("identity", i, Forget(i, "", receipt, suppress)) for i in msg.ids[1:]]
        return [*others, ("dropped", "erased", None)]
    if isinstance(msg, Claim):  # the claimer's event carried the erased identifier
        return [("profile", msg.profile, Erase(msg.profile, receipt, suppress))]
    return []  # a re-point: the identifier has no owner any more


def forget(value: str | None, msg: Forget, shared: bool) -> tuple[str | None, list[Out]]:
    """``Forget`` at an identifier whose table value is ``value``: (the new value, or
    None to keep it; the outputs). ``shared``: the identifier is shared (kept)."""
    shredded: Out = ("shredded", msg.ident, Shredded(msg.ident, msg.receipt, msg.suppress))
    if value is not None and parse_marker(value) is not None:
        return None, [shredded]  # again (a re-delivery): make sure its key is gone
    if shared:
        return None, [("kept", msg.receipt, msg.ident)]
    out: list[Out] = []
    owner = value.split(" ", 1)[0] if value else None
    if owner is not None and owner != msg.profile:  # linked with the erased person
        out.append(("profile", owner, Erase(owner, msg.receipt, msg.suppress)))
    out.append(shredded)
    return marker(msg.receipt, msg.suppress), out
