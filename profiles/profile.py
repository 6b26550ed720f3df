"""Profile ids and the time format of the profile view.

The profile state itself is ``profiles.graph.state.ProfileState`` (a join-semilattice);
its read form is ``profiles.projection.view_of``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime


def profile_id_for(id_type: str, value: str) -> str:
    """A stable profile id for a (normalized) identifier; reveals nothing about it."""
    digest = hashlib.blake2b(f"{id_type}:{value}".encode(), digest_size=10).hexdigest()
    return f"p_{digest}"


def iso(ms: int) -> str:
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")
