"""Prometheus metrics of a worker process (prometheus-client), served on
``UNIFIER_WORKER_METRICS_PORT`` when set.

Counters count handling, and Kafka delivers at least once: after a crash or a
rebalance a re-delivered record is counted again. They show rates and trends; exact
numbers are in the profiles (``computed.refused_links``, ``profiles why``).
"""

from __future__ import annotations

import logging
from collections import Counter as Tally

from prometheus_client import Counter, start_http_server

log = logging.getLogger("unifier.metrics")

MERGES = Counter(
    "unifier_identity_merges",
    "Profiles merged into another (one per merged-away profile)",
)
REFUSED = Counter(
    "unifier_identity_refused_links",
    "Links between identifiers or profiles refused by an identity rule",
    ["rule"],
)


def count_refusals(rules: Tally[str]) -> None:
    for rule, n in rules.items():
        REFUSED.labels(rule=rule).inc(n)


def serve(port: int, host: str = "127.0.0.1") -> int:
    """Serve /metrics; returns the port (a free one when `port` is 0)."""
    server, _thread = start_http_server(port, addr=host)
    bound = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound
