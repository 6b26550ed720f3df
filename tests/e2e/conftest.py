from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from unifier.processes import free_port

STACK_PROGRAMS = (
    b"tansu",
    b"valkey-server",
    b"unifier\x00worker",
    b"unifier\x00collector",
    b"unifier\x00archive",
)


def stack_pids(tag: Path, ports: Iterable[int | str] = ()) -> set[int]:
    """PIDs of broker, Redis, worker, collector and archiver processes started under `tag` (a
    test's tmp dir, in their command line or environment) or listening on one of
    `ports` (Redis rewrites its command line and environment to ``valkey-server
    HOST:PORT``), so runs in parallel on one machine do not see each other's."""
    markers = [str(tag).encode(), *(f":{p}".encode() for p in ports)]
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                if not any(p in cmdline for p in STACK_PROGRAMS):
                    continue
                seen = cmdline + b"\0" + (entry / "environ").read_bytes()
            except OSError:
                continue
            if any(m in seen for m in markers):
                pids.add(int(entry.name))
    return pids


def ports_of(cli: Cli) -> tuple[str, str]:
    """The broker and Redis ports this CLI's stack uses."""
    broker = cli.env["UNIFIER_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1]
    redis = cli.env["UNIFIER_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
    return broker, redis


@dataclass
class Cli:
    env: dict[str, str]
    cwd: Path
    _logs: dict[int, Path] = field(default_factory=dict)

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

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        """A long-running command (``--watch``, ``--serve``); the test stops it. Its
        stderr goes to a file (``self.stderr_of(proc)``): a pipe nobody reads would
        block the process once full."""
        log = self.cwd / f"{args[0]}-{len(list(self.cwd.glob('*.stderr')))}.stderr"
        proc = subprocess.Popen(
            [sys.executable, "-m", "unifier", *args],
            env={**self.env, **env},
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
        )
        self._logs[proc.pid] = log
        return proc

    def stderr_of(self, proc: subprocess.Popen[str]) -> str:
        return self._logs[proc.pid].read_text()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    """The CLI with its own ports and state directory; `stack down` runs afterwards
    whatever the test did."""
    env = {
        **os.environ,
        "UNIFIER_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "UNIFIER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "UNIFIER_STATE_DIR": str(tmp_path / "state"),
        # Temp dirs (the demo's state) under this test's dir: stack_pids(tmp_path) finds them.
        "TMPDIR": str(tmp_path),
        "UNIFIER_TOUCHPOINT_PARTITIONS": "3",
        "UNIFIER_INTERNAL_PARTITIONS": "3",
    }
    runner = Cli(env, tmp_path)
    try:
        yield runner
    finally:
        runner("stack", "down")
