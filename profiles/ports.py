"""Ports: what the core needs from the outside, as Protocols.

The core never knows which store or topic answers; adapters live above it
(``serve.view`` reads the Redis view, ``sinks`` write the outputs).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class ProfileView(Protocol):
    """What readers need from the store that serves the view."""

    def get(self, profile_id: str) -> dict[str, Any] | None: ...

    def lookup(self, id_type: str, value: str) -> dict[str, Any] | None: ...

    def scan(self) -> Iterator[dict[str, Any]]: ...

    def why(self, profile_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None: ...
