"""The consumer group as ``streams.patches.fence`` asks it: aiokafka's group
coordinator on Faust's consumer thread, with the broker's answers scripted."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class Coordinator:
    """aiokafka's group coordinator as ``streams.patches.fence`` uses it: the broker's
    answers to heartbeats are ``codes`` in turn (0 no error, 27 a rebalance under way,
    22 a stale generation, 25 an unknown member, None no answer), the last one
    repeated."""

    def __init__(self, generation: int, *codes: int | None) -> None:
        self.generation, self.codes = generation, list(codes or (0,))
        self.group_id, self.member_id, self.coordinator_id = "unifier", "member-1", 0
        self.sent: list[Any] = []
        self.rejoin_requested = False

    async def _send_req(self, request: Any) -> Any:
        self.sent.append(request)
        code = self.codes[min(len(self.sent), len(self.codes)) - 1]
        if code is None:
            raise ConnectionError("coordinator gone")
        return SimpleNamespace(error_code=code)

    def request_rejoin(self) -> None:
        self.rejoin_requested = True


class ConsumerThread:
    """Faust's aiokafka consumer thread, with this coordinator; calls run inline."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def _ensure_consumer(self) -> Any:
        return SimpleNamespace(_coordinator=self.coordinator)

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        return await fun(*args)
