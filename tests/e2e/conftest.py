from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from unifier.processes import free_port

STACK_PROGRAMS = (b"tansu", b"valkey-server", b"unifier\x00worker", b"unifier\x00collector")


def stack_pids() -> set[int]:
    """PIDs of every broker, Redis and worker process on the machine."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if any(p in cmdline for p in STACK_PROGRAMS):
                pids.add(int(entry.name))
    return pids


@dataclass
class Cli:
    env: dict[str, str]
    cwd: Path

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "unifier", *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,  # the tests assert on the exit code
        )


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    """The CLI with its own ports and state directory; `stack down` runs afterwards
    whatever the test did."""
    env = {
        **os.environ,
        "UNIFIER_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "UNIFIER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "UNIFIER_STATE_DIR": str(tmp_path / "state"),
        "UNIFIER_TOUCHPOINT_PARTITIONS": "3",
        "UNIFIER_INTERNAL_PARTITIONS": "3",
    }
    runner = Cli(env, tmp_path)
    try:
        yield runner
    finally:
        runner("stack", "down")
