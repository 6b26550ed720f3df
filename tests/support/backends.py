"""One fixture, two back-ends: containers where a Docker engine answers, otherwise
the embedded processes (the Tansu broker and a Redis-compatible server)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from unifier.processes import free_port
from unifier.stack import EmbeddedStack


def docker_engine_answers() -> bool:
    if os.environ.get("UNIFIER_TEST_BACKEND") == "embedded":
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextlib.contextmanager
def kafka(state_dir: Path) -> Iterator[str]:
    """Yields bootstrap servers of a broker that lives for the block."""
    if docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    settings = Settings(bootstrap_servers=f"127.0.0.1:{free_port()}", state_dir=state_dir)
    with EmbeddedStack(settings, state_dir) as stack:
        stack.start_broker()
        yield settings.bootstrap_servers


@contextlib.contextmanager
def redis_cluster(state_dir: Path) -> Iterator[str]:
    """Yields the URL of one node of a 3-shard Redis Cluster that lives for the block:
    always the embedded server's (a cluster in containers needs a network the nodes
    announce themselves on; the bundled server is the same code on loopback)."""
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", state_dir=state_dir, redis_cluster=True
    )
    with EmbeddedStack(settings, state_dir) as stack:
        stack.start_redis_cluster()
        yield settings.redis_url


#: ``@both_redis``: run a test against one Redis server and against a Redis Cluster.
both_redis = pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)


@contextlib.contextmanager
def redis_server(state_dir: Path) -> Iterator[str]:
    """Yields the URL of a Redis server that lives for the block."""
    if docker_engine_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7.2") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
        return
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", state_dir=state_dir)
    with EmbeddedStack(settings, state_dir) as stack:
        stack.start_redis()
        yield settings.redis_url
