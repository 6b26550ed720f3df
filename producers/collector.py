"""``unifier collector``: the HTTP endpoint websites send touchpoints to.

Endpoints (JSON bodies; answers are JSON):

* ``POST /v1/track``, ``/v1/identify``, ``/v1/page``, ``/v1/screen``, ``/v1/alias``,
  ``/v1/batch`` — the Segment tracking API (see ``producers.segment`` for the mapping),
  so analytics.js and Segment's server libraries can point here.
* ``POST /v1/touchpoints`` — the native touchpoint JSON form: one object, or an
  array of them.
* ``GET /health`` (the process runs) and ``GET /ready`` (the broker answers).

Authentication: a write key, as HTTP Basic user name (what Segment libraries send)
or ``writeKey`` in the body. Each key names the ``source`` of its events.

A request is all-or-nothing: every event in it is validated first; any invalid
event makes it a ``400`` whose ``errors`` list each event's index and reason, and
nothing is sent. A ``200`` is returned only once the broker has acknowledged the
events. Events of concurrent requests share Kafka records (``linger``), so the
worker sees batches. Bodies over ``collector_max_body_bytes`` get a ``413``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import Counter

from config import httpmetrics
from config.kafkalog import client_logger
from config.settings import Settings
from producers.journal import Journal
from producers.segment import to_touchpoint_json
from profiles.configured import identifier_priorities, identity_rules
from profiles.routing import validate_event
from profiles.touchpoint import InvalidTouchpoint, Touchpoint
from schemas.codec import BATCH, TOUCHPOINT, encode_batches
from schemas.resolve import RegistryFraming, SchemaLog, registry_client
from sinks.keys import sealer_for

log = logging.getLogger("unifier.collector")

MAX_EVENTS_PER_REQUEST = 2000
SEGMENT_CALLS = ("track", "identify", "page", "screen", "alias", "group")
#: analytics.js (analytics-next) posts to ``<apiHost>/<first letter of the call>``.
SHORT_PATHS = {"t": "track", "i": "identify", "p": "page", "s": "screen", "a": "alias",
               "g": "group", "b": "batch"}  # fmt: skip


class Unavailable(RuntimeError):
    """The broker did not take the events; the sender should retry."""


#: Delivery errors after which the client is replaced: its producer id is no good on
#: this broker any more (a broker that lost its state — the embedded one restarted —
#: fences every record of an idempotent producer it no longer knows, for good).
_RENEW_ON = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError._FENCED,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
    }
)


class AsyncSender:
    """Sends touchpoints of many requests in shared batch records; resolves each
    request's future when the broker acknowledged its record."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._linger = settings.collector_linger_ms / 1000
        self._max_events = settings.producer_batch_events
        self._max_pending = settings.collector_max_pending_events
        self._config: dict[str, Any] = {
            "bootstrap.servers": settings.bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 2,
            "compression.type": "lz4",
            "message.max.bytes": 8 * 1024 * 1024,
            "delivery.timeout.ms": int(settings.collector_delivery_timeout_s * 1000),
            "logger": client_logger(),  # a broker away: a line per 30 s, not per 50 ms
        }
        self._producer = self._new_producer()
        self.renewed = 0
        keep = settings.collector_journal_keep_s
        self._journal = Journal(settings.collector_journal_dir, keep_s=keep) if keep else None
        self._pending: list[tuple[list[Touchpoint], asyncio.Future[None]]] = []
        self._pending_events = 0
        self._in_flight_events = 0
        self._has_work = asyncio.Event()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="collector-poll", daemon=True)
        self._task: asyncio.Task[None] | None = None
        self._framing: asyncio.Task[None]
        self._closing = False
        self._prefix: bytes | None = None
        # Personal data is sealed before it is journaled or sent (profiles.privacy).
        self._sealer = sealer_for(settings)

    async def start(self) -> None:
        """Start sending. Framing is settled in the background (a registry id, or our
        schemas announced on the schema topic) so the collector answers /health at once
        even when the broker is away; no event is produced before it is settled."""
        self._loop = asyncio.get_running_loop()
        self._poller.start()
        self._framing = asyncio.create_task(self._settle_framing(), name="collector-framing")
        self._task = asyncio.create_task(self._run(), name="collector-sender")

    async def _settle_framing(self) -> None:
        loop = asyncio.get_running_loop()
        if self.settings.schema_registry_url:
            framing = RegistryFraming(
                registry_client(self.settings.schema_registry_url), self.settings.topic_touchpoints
            )
            self._prefix = await loop.run_in_executor(None, framing.prefix, BATCH)
            return
        try:
            # Bounded like a delivery: a request never waits longer for the announcement.
            timeout = self.settings.collector_delivery_timeout_s
            await loop.run_in_executor(
                None, SchemaLog(self.settings).announce, (TOUCHPOINT, BATCH), timeout
            )
        except KafkaException as exc:
            log.warning("%s; workers older than the collector will dead-letter its events", exc)

    def _poll(self) -> None:
        while not self._stop.is_set():
            producer = self._producer
            try:
                producer.poll(0.05)
            except KafkaException as exc:
                # librdkafka raises a fatal error from poll too: the thread must live on
                # (it serves every delivery report), and the client be replaced.
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.fatal():
                    self._loop.call_soon_threadsafe(self._renew, producer, err)
                else:
                    log.warning("the Kafka client's poll failed: %s", exc)
                self._stop.wait(0.05)

    def _new_producer(self) -> Producer:
        made: list[Producer] = []

        def on_error(err: KafkaError) -> None:
            # A fatal error leaves the client unusable for good: an idempotent producer
            # whose broker lost its state (the embedded broker restarted: its log is in
            # memory) is fenced on every record from then on. A new client starts afresh.
            if err.fatal():
                self._loop.call_soon_threadsafe(self._renew, made[0], err)

        made.append(Producer({**self._config, "error_cb": on_error}))
        return made[0]

    def _renew(self, old: Producer, err: KafkaError) -> None:
        if old is not self._producer:
            return  # replaced already (several errors, one renewal)
        log.warning("the Kafka client failed for good (%s); starting a new one", err.str())
        self._producer = self._new_producer()
        self.renewed += 1
        RENEWED.inc()

        def fail_what_it_held() -> None:
            # Its queued and in-flight records fail (their requests get a 503, the
            # senders retry through the new client).
            old.purge(in_queue=True, in_flight=True)
            old.flush(5)

        self._loop.run_in_executor(None, fail_what_it_held)

    async def send(self, events: list[Touchpoint]) -> None:
        if self._pending_events + self._in_flight_events + len(events) > self._max_pending:
            raise Unavailable("too many events wait for the broker; retry later")
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending.append((events, future))
        self._pending_events += len(events)
        self._has_work.set()
        await future

    async def _framing_problem(self) -> str | None:
        try:
            await self._framing
        except Exception as exc:  # the registry client raises its own and httpx errors
            self._framing = asyncio.create_task(self._settle_framing())  # retried next time
            return f"schema registry unavailable: {exc}"
        return None

    async def _run(self) -> None:
        while not (self._closing and not self._pending):
            await self._has_work.wait()
            if self._pending_events < self._max_events and not self._closing:
                await asyncio.sleep(self._linger)
            pending, self._pending = self._pending, []
            self._pending_events = 0
            self._has_work.clear()
            problem = await self._framing_problem()
            groups: list[list[tuple[list[Touchpoint], asyncio.Future[None]]]] = [[]]
            size = 0
            for item in pending:
                if groups[-1] and size + len(item[0]) > self._max_events:
                    groups.append([])
                    size = 0
                groups[-1].append(item)
                size += len(item[0])
            for group in groups:
                try:
                    if problem is not None:
                        raise Unavailable(problem)
                    if group:
                        await self._produce(group)
                except Exception as exc:  # never let one group stop the sender
                    if not isinstance(exc, Unavailable):
                        log.exception("could not send a batch")
                    for _events, future in group:
                        if not future.done():
                            future.set_exception(Unavailable(str(exc)))

    async def _produce(self, group: list[tuple[list[Touchpoint], asyncio.Future[None]]]) -> None:
        events = [tp for tps, _ in group for tp in tps]
        futures = [f for _, f in group]
        try:
            if self._sealer is not None:  # CPU and a key-store write for new identifiers
                events = await self._loop.run_in_executor(None, self._sealer.seal, events)
            parts = encode_batches(events, self._prefix, self.settings.max_record_bytes)
        except Exception as exc:  # validated already; an encode failure is our bug
            log.exception("could not encode a batch of %d events", len(events))
            for f in futures:
                if not f.done():
                    f.set_exception(Unavailable(f"could not encode events: {exc}"))
            return
        loop = self._loop
        if self._journal is not None:
            # On disk before the broker sees it: what the broker acknowledges and then
            # loses in a crash (the embedded one keeps its log in memory) is replayed
            # from here by `stack up`.
            try:
                await loop.run_in_executor(
                    None, self._journal.append, [value for _part, value in parts]
                )
            except OSError as exc:
                log.error("cannot write the collector's journal: %s", exc)
                for f in futures:
                    if not f.done():
                        f.set_exception(Unavailable(f"cannot write the journal: {exc}"))
                return
        count = len(events)
        outstanding = [len(parts)]
        failure: list[str] = []

        def resolve(error: str | None) -> None:
            # A group may span several records: answer once all of them are acknowledged.
            if error is not None:
                failure.append(error)
            outstanding[0] -= 1
            if outstanding[0]:
                return
            self._in_flight_events -= count
            for f in futures:
                if f.done():
                    continue
                if not failure:
                    f.set_result(None)
                else:
                    f.set_exception(
                        Unavailable(f"the broker did not take the events: {failure[0]}")
                    )

        producer = self._producer

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            loop.call_soon_threadsafe(resolve, None if err is None else str(err))
            if err is not None and (err.fatal() or err.code() in _RENEW_ON):
                loop.call_soon_threadsafe(self._renew, producer, err)

        self._in_flight_events += count
        try:
            for _part, value in parts:
                while True:
                    try:
                        producer.produce(
                            self.settings.topic_touchpoints, value=value, on_delivery=on_delivery
                        )
                        break
                    except BufferError:  # the client queue is full: let deliveries drain
                        await asyncio.sleep(0.05)
        except Exception:
            self._in_flight_events -= count
            raise

    async def ready(self) -> str | None:
        """None when the broker answers, else why not."""

        def probe() -> str | None:
            try:
                meta = self._producer.list_topics(self.settings.topic_touchpoints, timeout=3)
            except KafkaException as exc:
                return f"broker unreachable: {exc}"
            topic = meta.topics.get(self.settings.topic_touchpoints)
            if topic is None or topic.error is not None:
                return f"topic {self.settings.topic_touchpoints} is missing"
            return None

        return await asyncio.get_running_loop().run_in_executor(None, probe)

    async def close(self) -> None:
        """Send what requests are waiting for, wait for the broker, stop."""
        self._closing = True
        self._has_work.set()
        if self._task is not None:
            await self._task
        await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, 30)
        if self._journal is not None:
            self._journal.close()
        self._stop.set()
        self._poller.join(timeout=5)


RENEWED = Counter(
    "unifier_collector_client_renewals",
    "Times the collector replaced its Kafka client after a fatal error (e.g. a broker "
    "that lost its state fenced it)",
)

EVENTS = Counter(
    "unifier_collector_events",
    "Events the collector accepted (sent to Kafka) or refused (the whole request, 4xx/5xx)",
    ["outcome"],
)


def _count_of(raw: bytes) -> int:
    """How many events a refused body held, as far as it can be read (1 if not)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 1
    if isinstance(body, dict) and isinstance(body.get("batch"), list):
        return max(len(body["batch"]), 1)
    if isinstance(body, list):
        return max(len(body), 1)
    return 1


#: What a 503 asks a sender to wait (``Retry-After``): the broker away, or too many
#: events waiting for it. The SDK and Segment's libraries retry on their own.
RETRY_AFTER_S = 5


def _error(status: int, message: str, **extra: Any) -> web.Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return web.json_response(
        {"success": False, "error": message, **extra}, status=status, headers=headers
    )


class _Refused(Exception):
    """Ends a request with ``status`` and a JSON reason."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.response = _error(status, message, **extra)


def _source_for(request: web.Request, body: Any, keys: dict[str, str]) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Basic "):
        try:
            user = base64.b64decode(header[6:], validate=True).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
        return keys.get(user)
    if isinstance(body, dict) and isinstance(body.get("writeKey"), str):
        return keys.get(body["writeKey"])
    return None


def _messages_of(body: Any, call: str | None) -> list[Any]:
    """The messages a request body holds for ``call`` (refused when none or too many)."""
    if call == "touchpoints":
        messages = body if isinstance(body, list) else [body]
    elif call == "batch":
        batch = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch, list):
            raise _Refused(400, "batch: a list of messages is required")
        messages = batch
    else:
        messages = [body]
    if not messages:
        raise _Refused(400, "no events")
    if len(messages) > MAX_EVENTS_PER_REQUEST:
        raise _Refused(413, f"more than {MAX_EVENTS_PER_REQUEST} events in one request")
    return messages


async def _health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class _Collector:
    """The collector's handlers and middlewares, with what they share: the write keys,
    the identity rules and the sender."""

    def __init__(self, settings: Settings, sender: AsyncSender | None) -> None:
        self.settings = settings
        self.keys = settings.write_key_sources()
        self.id_types = identifier_priorities(settings)
        self.rules = identity_rules(settings)
        self.sender = sender or AsyncSender(settings)
        self.origins = settings.collector_cors_origins

    @web.middleware
    async def errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return _error(
                413, f"request body larger than {self.settings.collector_max_body_bytes} bytes"
            )
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _error(exc.status, exc.reason)
            raise
        except Exception:  # never a stack trace to a client
            log.exception("unhandled error in %s %s", request.method, request.path)
            return _error(500, "internal error")

    @web.middleware
    async def cors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # Browsers (analytics.js on the shop's own domain) call the collector cross-origin.
        origins = self.origins
        origin = request.headers.get("Origin")
        allowed = origin is not None and ("*" in origins or origin in origins)
        if request.method == "OPTIONS" and allowed:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "POST, GET, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
            response.headers["Access-Control-Max-Age"] = "86400"
        else:
            response = await handler(request)
        if allowed and origin is not None:
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
            response.headers["Vary"] = "Origin"
        return response

    def validate(self, doc: dict[str, Any]) -> Touchpoint:
        return validate_event(doc, self.rules, self.settings.default_phone_region)

    def touchpoints_of(
        self, messages: list[Any], call: str | None, source: str
    ) -> list[Touchpoint]:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        events: list[Touchpoint] = []
        problems: list[dict[str, Any]] = []
        for index, message in enumerate(messages):
            try:
                if call == "touchpoints":
                    doc = message
                else:
                    doc = to_touchpoint_json(
                        message, None if call == "batch" else call, source, self.id_types, now
                    )
                events.append(self.validate(doc))
            except InvalidTouchpoint as exc:
                problems.append({"index": index, "reason": str(exc)})
        if problems:
            raise _Refused(
                400, f"{len(problems)} of {len(messages)} events are invalid", errors=problems
            )
        return events

    async def accept(self, request: web.Request, call: str | None) -> web.Response:
        raw = await request.read()
        try:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise _Refused(400, f"malformed JSON: {exc}") from None
            source = _source_for(request, body, self.keys)
            if source is None:
                raise _Refused(401, "a valid write key is required (HTTP Basic user name)")
            events = self.touchpoints_of(_messages_of(body, call), call, source)
            try:
                await self.sender.send(events)
            except Unavailable as exc:
                raise _Refused(503, str(exc)) from None
        except _Refused as refused:
            EVENTS.labels("refused").inc(_count_of(raw))
            return refused.response
        EVENTS.labels("accepted").inc(len(events))
        # A token to read your own write (the read API's ?read_after=): the newest of
        # these events' times; a profile reflecting it has applied an event that new.
        token = max((e.occurred_at_ms for e in events), default=0)
        return web.json_response(
            {"success": True, "accepted": len(events), "read_after": str(token)}
        )

    def route(self, call: str | None) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return await self.accept(request, call)

        return handler

    async def ready(self, _request: web.Request) -> web.Response:
        problem = await self.sender.ready()
        if problem:
            return web.json_response(
                {"status": "unavailable", "reason": problem},
                status=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return web.json_response({"status": "ready"})

    async def lifecycle(self, _app: web.Application) -> Any:
        await self.sender.start()
        yield
        await self.sender.close()


def build_app(settings: Settings, sender: AsyncSender | None = None) -> web.Application:
    """The collector as an aiohttp application (``sender`` is started with the app)."""
    if not settings.collector_write_keys:
        raise ValueError(
            'no write keys: set UNIFIER_COLLECTOR_WRITE_KEYS, e.g. \'{"<key>": "web"}\''
        )
    collector = _Collector(settings, sender)
    app = web.Application(
        middlewares=[httpmetrics.middleware("collector"), collector.cors, collector.errors],
        client_max_size=settings.collector_max_body_bytes,
    )
    for call in SEGMENT_CALLS:
        app.router.add_post(f"/v1/{call}", collector.route(call))
    for short, call in SHORT_PATHS.items():
        app.router.add_post(f"/v1/{short}", collector.route(call))
    app.router.add_post("/v1/batch", collector.route("batch"))
    app.router.add_post("/v1/import", collector.route("batch"))  # Segment's server libraries use it
    app.router.add_post("/v1/touchpoints", collector.route("touchpoints"))
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", collector.ready)
    app.router.add_get("/metrics", httpmetrics.metrics)
    app.cleanup_ctx.append(collector.lifecycle)
    return app


def run_collector(settings: Settings, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; then answer what is in flight, flush, and exit."""
    import signal

    async def serve() -> None:
        runner = web.AppRunner(build_app(settings), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port  # port 0: the chosen one
        print(f"collector listening on http://{host}:{bound}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("collector stopping: finishing requests, flushing to the broker", flush=True)
        await runner.cleanup()

    asyncio.run(serve())
