"""The identity rules in force in a worker: its configuration, and what operators
changed since (``unifier identity block|shared|limit``) on the identity-rules topic
(compacted), followed in a thread from its start. Stages read ``LiveRules.current``
for each batch; routing waits until the topic was read to its end, so a replay after
a restart applies the rules as they stand."""

from __future__ import annotations

import logging
import threading

import orjson

from profiles.rules import IdentityRules, rules_with
from streams.segments import DefinitionsLog

log = logging.getLogger("unifier.rules")


class LiveRules:
    def __init__(self, base: IdentityRules, bootstrap: str, topic: str, poll_s: float = 0.2):
        self.base = base
        self.current = base
        self.topic = topic
        self.ready = threading.Event()
        self._bootstrap, self._poll_s = bootstrap, poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="identity-rules", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def take(self, records: dict[str, bytes]) -> None:
        decoded = {}
        for k, raw in records.items():
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.error("a record of %s is not JSON; skipped", self.topic)
                continue
            if isinstance(value, dict):
                decoded[k] = value
        rules = rules_with(self.base, decoded)
        if rules is not self.current and rules != self.current:
            log.info("identity rules: %d marked identifiers, limits %s", len(rules.marks),
                     dict(rules.limits))  # fmt: skip
        self.current = rules

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with DefinitionsLog(self._bootstrap, self.topic, "unifier.rules-reader") as log_:
                    seen = -1
                    while not self._stop.is_set():
                        if log_.poll(self._poll_s):
                            continue
                        if log_.next_offset != seen:
                            self.take(log_.records)
                            seen = log_.next_offset
                        if log_.at_end():
                            self.ready.set()
            except Exception:  # the broker away: start again (the rules known stay)
                log.exception("reading %s failed; trying again", self.topic)
                self._stop.wait(2.0)
