"""What the worker does for privacy where events come in (the route stage).

``Intake`` seals events that arrive unsealed (a third-party producer writing straight
to the topic), so no stage, table or output holds their personal data in clear.
"""

from __future__ import annotations

from collections.abc import Sequence

from config.settings import Settings
from profiles.privacy import Sealer
from profiles.touchpoint import Touchpoint
from sinks.keys import sealer_for


class Intake:
    """Touchpoints as the stages may hold them."""

    def __init__(self, settings: Settings, sealer: Sealer | None = None) -> None:
        self.sealer = sealer if sealer is not None else sealer_for(settings)

    def __call__(self, touchpoints: Sequence[Touchpoint]) -> list[Touchpoint]:
        if self.sealer is None:
            return list(touchpoints)
        return self.sealer.seal(touchpoints)
