"""librdkafka's own log lines, through Python logging and without the flood.

While a broker is down librdkafka logs a connection failure every ~50 ms per
client, straight to stderr. Clients given ``client_logger()`` as their ``logger``
send those lines to the ``unifier.kafka`` logger instead, where the same message is
written at most once per ``every`` seconds (with how many were held back)."""

from __future__ import annotations

import logging
import re
import time

_NUMBERS = re.compile(r"\d+")


class OncePer(logging.Filter):
    def __init__(self, every: float = 30.0) -> None:
        super().__init__()
        self.every = every
        self._last: dict[str, tuple[float | None, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = _NUMBERS.sub("#", record.getMessage())  # timestamps, ports, counts
        now = time.monotonic()
        last, held = self._last.get(key, (None, 0))
        # (Not 0.0 for "never": the monotonic clock starts near 0 at boot, and a machine
        # up for less than `every` would have held back every first message.)
        if last is not None and now - last < self.every:
            self._last[key] = (last, held + 1)
            return False
        self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it)"
            record.args = ()
        return True


_logger = logging.getLogger("unifier.kafka")
_logger.addFilter(OncePer())


def client_logger() -> logging.Logger:
    return _logger
