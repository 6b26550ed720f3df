"""The capacity model (``unifier plan``): its costs are the ones measured in bench/,
and its answers move the way a buyer expects."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from unifier.capacity import (
    MEASURED,
    MIN_SHARDS,
    PARTITION_STEPS,
    costs_from,
    mixed,
    plan,
    predict_on_one_machine,
)
from unifier.cli import app

RESULTS = Path(__file__).parents[2] / "bench" / "results"


def test_the_costs_are_the_ones_bench_measured() -> None:
    """Re-run bench/capacity.py (or ./dev bench) and MEASURED must be updated with it."""
    capacity = json.loads((RESULTS / "capacity.json").read_text())
    report = json.loads((RESULTS / "report.json").read_text())
    assert costs_from(capacity, report) == MEASURED


loads = st.floats(1, 2_000_000)
sizes = st.integers(1, 2_000_000_000)


@given(loads, loads, sizes)
def test_more_events_never_need_fewer_workers_or_partitions(a: float, b: float, m: int) -> None:
    low, high = plan(min(a, b), m), plan(max(a, b), m)
    assert high.workers >= low.workers and high.partitions >= low.partitions
    assert high.broker_disk_bytes_per_day >= low.broker_disk_bytes_per_day


@given(loads, sizes, sizes)
def test_more_profiles_never_need_less_memory(n: float, a: int, b: int) -> None:
    low, high = plan(n, min(a, b)), plan(n, max(a, b))
    assert high.redis_memory_bytes >= low.redis_memory_bytes
    assert high.redis_shards >= low.redis_shards
    assert high.worker_memory_bytes >= low.worker_memory_bytes


@given(loads, sizes, st.floats(1, 100_000), st.floats(0, 1))
def test_a_plan_holds_its_own_rules(n: float, m: int, k: float, new: float) -> None:
    p = plan(n, m, k, new)
    assert p.partitions >= 2 * p.workers
    assert p.partitions in PARTITION_STEPS or p.partitions == 2 * p.workers
    assert p.redis_shards >= max(MIN_SHARDS, p.redis_shards_for_memory, p.redis_shards_for_cpu)
    # the workers planned handle the load below their ceiling
    assert p.workers * p.worker_events_per_s >= n


def test_one_machine_is_bounded_by_its_cores() -> None:
    case = mixed(MEASURED, 0.0)
    one = predict_on_one_machine(case, 1, 2)
    assert predict_on_one_machine(case, 8, 2) >= one
    total = case.worker_cpu_us + case.broker_cpu_us + case.redis_cpu_us
    assert predict_on_one_machine(case, 64, 2) <= 2 / total * 1e6 + 1e-6


def test_the_command_answers_the_buyers_question() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["plan", "--events-per-s", "50000", "--profiles", "100000000"])
    assert result.exit_code == 0, result.output
    for row in ("workers", "partitions per stage", "Redis shards", "broker disk per day"):
        assert row in result.output
    as_json = runner.invoke(
        app, ["plan", "--events-per-s", "50000", "--profiles", "100000000", "--json"]
    )
    doc = orjson.loads(as_json.stdout)
    expected = plan(50_000, 100_000_000)
    assert (doc["workers"], doc["partitions"], doc["redis_shards"]) == (
        expected.workers, expected.partitions, expected.redis_shards)  # fmt: skip
    assert doc["costs_measured_by"] == MEASURED.source
    wrong = runner.invoke(app, ["plan", "--events-per-s", "0", "--profiles", "10"])
    assert wrong.exit_code == 2 and "--events-per-s" in wrong.output
