"""A private PostgreSQL server on loopback, for the tests and the bench of the
PostgreSQL destination (and anyone who wants one to try ``kind = "postgres"``).

It uses the machine's own server binaries (Debian's ``postgresql`` package puts
them in ``/usr/lib/postgresql/VERSION/bin``; ``.ci/run`` installs it when missing):
``initdb`` into a folder of ours, ``pg_ctl start`` on a free port with its socket in
that folder, one database, and ``pg_ctl stop`` at the end — only the server it
started. PostgreSQL refuses to run as root: as root, the server runs as the
``postgres`` user (made by the package) through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from unifier.processes import free_port


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def server_bin() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    if versions:
        return Path(versions[-1]).parent
    raise PostgresMissing(
        "no PostgreSQL server found (initdb, pg_ctl); install Debian's `postgresql` package "
        "(.ci/run does) or set UNIFIER_TEST_POSTGRES_DSN to a server of yours"
    )


def _version(path: str) -> tuple[int, ...]:
    part = Path(path).parents[1].name
    return tuple(int(x) for x in part.split(".") if x.isdigit())


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(_as_owner(cmd), check=False, capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({done.returncode}): {' '.join(said)}")


@contextlib.contextmanager
def local_postgres(state_dir: Path, database: str = "unifier") -> Iterator[str]:
    """Yields the DSN of a server that lives for the block (see the module docstring)."""
    bindir = server_bin()
    data = state_dir / "pgdata"
    state_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(state_dir, "postgres", "postgres")
        state_dir.chmod(0o700)
        for parent in state_dir.parents:  # the postgres user must reach its folder
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
    port = free_port()
    log = state_dir / "postgres.log"
    _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync",
          "-E", "UTF8"])  # fmt: skip
    opts = f"-p {port} -k {state_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60",
          "start"])  # fmt: skip
    try:
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        subprocess.run(
            _as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            check=False, capture_output=True,
        )  # fmt: skip
