"""Profile ids and the time format of the profile view.

The profile state itself is ``profiles.graph.state.ProfileState`` (a join-semilattice);
its read form is ``profiles.projection.view_of``.
"""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache


def profile_id_for(id_type: str, value: str) -> str:
    """A stable profile id for a (normalized) identifier; reveals nothing about it."""
    digest = hashlib.blake2b(f"{id_type}:{value}".encode(), digest_size=10).hexdigest()
    return f"p_{digest}"


@lru_cache(maxsize=1 << 16)  # a profile's view shows the same few times on every touch
def iso(ms: int) -> str:
    """UTC, to the millisecond: ``2026-11-22T10:00:00.000Z``."""
    seconds, millis = divmod(ms, 1000)
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{millis:03d}Z"
    )
