"""The SDK when the broker is away: back-pressure and failures reach the caller."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import Settings
from producers.kafka import BufferFull
from producers.sdk import Unifier
from profiles.touchpoint import Touchpoint
from unifier.processes import free_port

pytestmark = pytest.mark.integration


def no_broker(tmp_path: Path) -> Settings:
    # Registry framing (the in-process mock): nothing to announce on a schema topic first.
    return Settings(bootstrap_servers=f"127.0.0.1:{free_port()}", producer_batch_events=5,
                    state_dir=tmp_path, schema_registry_url="mock://sdk-test")  # fmt: skip


def test_back_pressure_then_buffer_full_when_nothing_is_delivered(tmp_path: Path) -> None:
    sdk = Unifier(no_broker(tmp_path), max_in_flight_events=10, block_timeout_s=1)
    with pytest.raises(BufferFull, match=r"10 events still wait for the broker after 1s"):
        for i in range(30):
            sdk.track("page_viewed", {"anonymous_id": f"a-{i}"})
    report = sdk.close(timeout=1)
    assert report.events_sent == 0
    assert not report.ok


def test_undeliverable_events_are_reported_to_the_caller(tmp_path: Path) -> None:
    failed: list[tuple[list[Touchpoint], str]] = []
    with Unifier(
        no_broker(tmp_path),
        on_error=lambda events, error: failed.append((events, error)),
        **{"delivery.timeout.ms": 1500, "linger.ms": 0},
    ) as sdk:
        ids = [sdk.track("page_viewed", {"anonymous_id": f"a-{i}"}) for i in range(7)]
        report = sdk.flush(timeout=10)
    assert report.events_failed == 7
    assert sorted(tp.event_id for events, _ in failed for tp in events) == sorted(ids)
    assert all("timed out" in error.lower() for _, error in failed), failed
