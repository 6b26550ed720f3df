"""Starting and stopping the background processes we own, by PID, without surprises."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class StackError(RuntimeError):
    """Something the user can fix: the message says what."""


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago (for tests and the demo)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_port_free(host: str, port: int, what: str, setting: str) -> None:
    """Refuse a port something listens on. Connections of a process stopped a moment
    ago (TIME_WAIT, for about a minute) do not count: the servers we start bind with
    SO_REUSEADDR too, and so does this check."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise StackError(
                f"cannot start {what}: {host}:{port} is already in use by another process. "
                f"Stop it, or choose another port with {setting}."
            ) from None


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Proc:
    """A process we started: enough to find it again from another command."""

    name: str
    pid: int
    marker: str  # a piece of its command line: proves the PID is still ours
    log: str
    port: int | None = None

    def alive(self) -> bool:
        """True when the PID is running *and* is still the program we started."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False
        status = Path(f"/proc/{self.pid}/stat").read_text().split()
        if len(status) > 2 and status[2] == "Z":
            return False
        return self.marker.encode() in cmdline


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    marker: str | None = None,
) -> tuple[Proc, subprocess.Popen[bytes]]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            # Own session: Ctrl-C in the terminal goes to us, and we stop children in order.
            start_new_session=True,
        )
    mark = marker or os.path.basename(argv[0])
    return Proc(name, popen.pid, mark, str(log), port), popen


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(fh.seek(0, os.SEEK_END) - 4000, 0))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: Proc | None = None,
    popen: subprocess.Popen[bytes] | None = None,
    interval: float = 0.1,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if popen is not None and popen.poll() is not None:
            log = proc.log if proc else "?"
            raise StackError(
                f"{what} exited during start-up (exit code {popen.returncode}); "
                f"last lines of {log}:\n{log_tail(log)}"
            )
        time.sleep(interval)
    where = f"; see {proc.log}" if proc else ""
    raise StackError(f"{what} was not ready after {timeout:.0f}s{where}")


def is_running(proc: Proc, popen: subprocess.Popen[bytes] | None = None) -> bool:
    """Liveness: the child handle when we have it, else the PID and its command line."""
    if popen is not None:
        return popen.poll() is None
    return proc.alive()


def stop(proc: Proc, grace: float = 5.0, popen: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds. Only touches our own PID."""
    if not is_running(proc, popen):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_running(proc, popen):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(5)
    else:
        deadline = time.monotonic() + 5
        while proc.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
