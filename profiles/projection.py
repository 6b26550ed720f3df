"""The profile as readers see it: the documented view, the redirect of a merged-away
id, the explanation (``profiles why``) and which fields changed between two views.

Pure functions of the profile state; the Redis view, the read API, ``profile-updates``
and ``unifier profiles export`` all show what ``view_of`` returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from profiles.computed import computed_of, computed_signature, signature_parts
from profiles.graph.messages import Merged, Out
from profiles.graph.node import ProfileNode
from profiles.graph.state import PART_SEP, ProfileState, ident_type
from profiles.profile import iso
from profiles.segments import members_of
from profiles.traits import DEFAULT_TRAIT_RULES, TraitRules, pick_traits

#: A redirect's version: final, above any live version, so it always replaces the view.
REDIRECT_VERSION = 2**53


def version_of(state: ProfileState) -> int:
    """Grows with every change a live profile can see: all its parts only grow."""
    return state.size()


def redirect_version(merged_into: str) -> int:
    """A redirect's version: above any live one, and higher when it points to a part
    split off its survivor (``profiles.graph.split``: a redirect only ever moves to
    such a part), so the moved redirect replaces the first. Even steps: a float (Lua's
    numbers) holds them exactly above 2**53."""
    return REDIRECT_VERSION + 2 * merged_into.count(PART_SEP)


def redirect_view(profile_id: str, merged_into: str) -> dict[str, Any]:
    """What a merged-away id reads as: the survivor's id, at a final version."""
    return {
        "profile_id": profile_id,
        "merged_into": merged_into,
        "version": redirect_version(merged_into),
    }


def shown(nodes: Mapping[str, ProfileNode]) -> list[tuple[str, ProfileNode]]:
    """The profiles among those a record touched that the view shows: redirects, and
    live profiles that hold an identifier (one founded by a message that arrived before
    its first event has nothing to show yet)."""
    return [
        (key, node) for key, node in nodes.items() if node.redirect is not None or node.state.held
    ]


def merged_away(outs: Iterable[Out]) -> list[dict[str, Any]]:
    """A redirect for every profile a record's winners absorbed. The loser writes the
    same redirect when the answer reaches it; written by the winner too, the view agrees
    with ``profile-merges`` (which the winner publishes) as soon as the merge is made,
    whatever happens to the loser's table afterwards."""
    return [redirect_view(m.loser, m.winner) for stage, _key, m in outs
            if stage == "merges" and isinstance(m, Merged)]  # fmt: skip


def view_of(
    profile_id: str, node: ProfileNode, rules: TraitRules = DEFAULT_TRAIT_RULES
) -> dict[str, Any]:
    """The documented read form (``unifier profiles get``, the API, Redis)."""
    if node.redirect is not None:
        return redirect_view(profile_id, node.shown_as or node.redirect)
    s = node.state
    ids: dict[str, list[str]] = {}
    for ident in sorted(s.held):
        ids.setdefault(ident_type(ident), []).append(ident.split(":", 1)[1])
    return {
        "profile_id": profile_id,
        "identifiers": dict(sorted(ids.items())),
        "traits": pick_traits(s.totals.traits, rules),
        "computed": {
            **computed_of(s.totals, ids, rules),
            "merged_from": sorted(m[0] for m in s.merged),
            "refused_links": len(s.refused),
        },
        "segments": members_of(node.segments),
        "version": version_of(s) + node.segment_moves,
        # What it reflects: its newest event's time, and where in the log it was made.
        "freshness": {
            "event_time": None if s.totals.last is None else iso(s.totals.last[0]),
            "position": node.position,
        },
    }


def why_of(node: ProfileNode) -> dict[str, Any]:
    """How each identifier came to the profile, the merges it went through, the links
    it refused, and the splits that keep identifiers apart (``unifier profiles why``)."""
    s = node.state
    return {
        "identifiers": [
            {
                "identifier": i,
                "event_id": s.linked_by.get(i, ("", ""))[0],
                "how": s.linked_by.get(i, ("", "claimed"))[1],
            }
            for i in sorted(s.held)
        ],
        "merges": [{"loser": m[0], "via": m[1], "event_id": m[2]} for m in sorted(s.merged)],
        "refused": [
            {"event_id": r.event_id, "identifier": r.ident, "other": r.other, "rule": r.rule}
            for r in sorted(s.refused, key=lambda r: (r.event_id, r.ident))
        ],
        **(
            {
                "splits": [
                    {"split": name, "apart": sorted(one), "from": sorted(two)}
                    for name, one, two in sorted(s.blocks.values())
                ]
            }
            if s.blocks
            else {}
        ),
    }


def why_text(profile_id: str, profile: Mapping[str, Any], why: Mapping[str, Any]) -> list[str]:
    """``why_of`` (opened) for people (``unifier profiles why``): a line per identifier,
    merge, refused link and split; ``profile_id`` as asked (a merged-away id says so)."""
    lines = []
    if profile["profile_id"] != profile_id:
        lines.append(f"{profile_id} was merged into {profile['profile_id']}")
    lines.append(f"profile {profile['profile_id']}")
    lines += [
        f"  {e['identifier']}  {e['how']} (event {e['event_id']})"
        for e in why.get("identifiers", [])
    ]
    lines += [
        f"  merged {m['loser']} in: event {m['event_id']} linked them through {m['via']}"
        for m in why.get("merges", [])
    ]
    lines += [
        f"  refused: event {r['event_id']} would have linked {r['identifier']} "
        f"(with {r['other']}): {r['rule']}"
        for r in why.get("refused", [])
    ]
    lines += [
        f"  split {s['split']}: {', '.join(s['apart'])} kept apart from {', '.join(s['from'])}"
        for s in why.get("splits", [])
    ]
    return lines


def signature_of(node: ProfileNode, rules: TraitRules = DEFAULT_TRAIT_RULES) -> dict[str, Any]:
    """What ``changed_fields`` compares, for a live profile, without making its view:
    two signatures differ in a field exactly when the two views do (times stay
    numbers, touchpoints stay lists). Taken when a profile is read, before a batch
    changes it, so the view is made once a touch."""
    s = node.state
    types = {ident_type(ident) for ident in s.held}
    return {
        "identifiers": frozenset(s.held),
        "traits": pick_traits(s.totals.traits, rules),
        "computed": {
            **computed_signature(s.totals, types, rules),
            "merged_from": sorted(m[0] for m in s.merged),
            "refused_links": len(s.refused),
        },
        "segments": members_of(node.segments),
        "version": version_of(s) + node.segment_moves,
        "links": dict(s.linked_by),  # not a view field: says if `why_of` changed
    }


def signature_with_view(
    node: ProfileNode, view: dict[str, Any], rules: TraitRules = DEFAULT_TRAIT_RULES
) -> dict[str, Any]:
    """``signature_of(node)``, from the view just made of it (``view_of``): its values,
    but for the few traits whose signature is cheaper than their value."""
    s = node.state
    types = view["identifiers"].keys()  # the types of identifiers it holds
    return {
        "identifiers": frozenset(s.held),
        "traits": view["traits"],
        "computed": {**view["computed"], **signature_parts(s.totals, types, rules)},
        "segments": view.get("segments", []),
        "version": view["version"],
        "links": dict(s.linked_by),
    }


def explanation_changed(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    """Whether ``why_of`` differs between two signatures: identifiers, how they joined,
    merges or refusals."""
    if before is None:
        return True
    b, a = before["computed"], after["computed"]
    return (
        before["identifiers"] != after["identifiers"]
        or before["links"] != after["links"]
        or b.get("merged_from") != a.get("merged_from")
        or b.get("refused_links") != a.get("refused_links")
    )


def changed_fields(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """Top-level names (``identifiers``, ``traits.<name>``, ``computed.<name>``) that
    differ between two views of a profile, or two signatures (``signature_of``);
    everything when there was none before."""
    old = before or {}
    out = []
    if old.get("identifiers") != after.get("identifiers"):
        out.append("identifiers")
    if (old.get("segments") or []) != (after.get("segments") or []):
        out.append("segments")
    for part in ("traits", "computed"):
        a, b = old.get(part) or {}, after.get(part) or {}
        out += [f"{part}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return out
