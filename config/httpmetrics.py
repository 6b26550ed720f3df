"""Prometheus metrics of the HTTP services (the collector, the read API): requests by
route and status, and how long they took. Served on the service's own ``/metrics``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

REQUESTS = Counter(
    "unifier_http_requests",
    "HTTP requests answered, by service, route (the path pattern) and status",
    ["service", "route", "status"],
)
SECONDS = Histogram(
    "unifier_http_request_seconds",
    "Time to answer an HTTP request, by service and route",
    ["service", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(service: str) -> Any:
    """Counts and times every request; put it first (outermost) so it sees the status
    the client got."""

    @web.middleware
    async def measured(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            SECONDS.labels(service, route).observe(time.perf_counter() - started)
            REQUESTS.labels(service, route, str(status)).inc()

    return measured


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
