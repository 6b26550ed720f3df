"""Where writer schemas come from when a record's schema is not shipped with the reader.

* ``SchemaLog``: the compacted ``unifier.schemas`` topic. Producers using single-object
  encoding announce the schemas they write (key: fingerprint, value: schema JSON);
  a worker that meets an unknown fingerprint reads the topic once and remembers all
  of it. This is what lets a newer producer run beside an older worker.
* ``Registry``: a Confluent Schema Registry, through confluent-kafka's client. Writers
  register their schemas (subject ``<topic>-<record name>``, since the input topic
  carries two record types) and frame records with the id; readers fetch unknown ids.

``Resolver`` picks the right one for an ``UnknownSchema`` and remembers misses for a
while, so a topic full of garbage does not turn into a lookup per record.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from config.settings import Settings
from schemas.codec import CODEC, Codec, DecodeError, UnknownSchema

log = logging.getLogger("unifier.schemas")

#: How long a failed lookup is trusted before the source is asked again.
MISS_TTL_S = 10.0
#: How long a lookup also waits for an announcement made a moment ago (fetch interval x 4).
SETTLE_S = 0.2


def registry_client(url: str) -> Any:
    """confluent-kafka's registry client (``mock://`` gives its in-process mock)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client({"url": url})


class RegistryFraming:
    """Confluent framing for records we write: ``00`` + 4-byte schema id."""

    def __init__(self, client: Any, topic: str, codec: Codec = CODEC) -> None:
        self._client, self._topic, self._codec = client, topic, codec
        self._ids: dict[str, int] = {}

    def schema_id(self, name: str) -> int:
        if name not in self._ids:
            from confluent_kafka.schema_registry import Schema

            schema = Schema(self._codec.schema_json(name), "AVRO")
            self._ids[name] = self._client.register_schema(f"{self._topic}-{name}", schema)
        return self._ids[name]

    def prefix(self, name: str) -> bytes:
        return b"\x00" + self.schema_id(name).to_bytes(4, "big")


class SchemaLog:
    def __init__(self, settings: Settings, codec: Codec = CODEC) -> None:
        self._settings, self._codec = settings, codec
        self._lock = threading.Lock()
        self._reader: Consumer | None = None
        self._next = 0  # offset after the last schema record read
        self._settled_at = 0.0

    def announce(self, names: Iterable[str], timeout: float = 15.0) -> None:
        """Put our writer schemas on the schema topic (idempotent: compacted by fingerprint)."""
        producer = Producer(
            {"bootstrap.servers": self._settings.bootstrap_servers, "enable.idempotence": True}
        )
        errors: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        for name in names:
            producer.produce(
                self._settings.topic_schemas,
                key=self._codec.fingerprint(name).encode(),
                value=self._codec.schema_json(name).encode(),
                on_delivery=on_delivery,
            )
            # One record per request: the embedded broker miscounts offsets after
            # multi-record batches (ENVIRONMENT.md, trap 3).
            if producer.flush(timeout):
                errors.append(f"not delivered within {timeout}s")
        if errors:
            raise KafkaException(
                f"could not announce schemas on {self._settings.topic_schemas}: {errors[0]}"
            )

    def _consumer(self) -> Consumer:
        if self._reader is None:
            self._reader = Consumer(
                {
                    "bootstrap.servers": self._settings.bootstrap_servers,
                    "group.id": f"unifier.schema-reader.{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 50,
                }
            )
            self._reader.assign([TopicPartition(self._settings.topic_schemas, 0, OFFSET_BEGINNING)])
        return self._reader

    def _take(self, msg: Any) -> None:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return
            raise KafkaException(err)
        self._next = msg.offset() + 1
        key, value = msg.key(), msg.value()
        if not key or not value:
            return
        try:
            self._codec.add_fingerprint(key.decode(), value.decode())
        except (DecodeError, UnicodeDecodeError) as exc:
            log.warning("schema record at offset %s ignored: %s", msg.offset(), exc)

    def load(self, timeout: float = 10.0) -> None:
        """Bring the codec up to date with the schema topic.

        One consumer stays assigned to the topic and keeps fetching, so a lookup only
        reads what is new: it drains what arrived, then waits until its position reaches
        the high watermark of the latest fetch. At most once a second it also waits a
        further ``SETTLE_S`` for an announcement made a moment ago; a flood of records
        with made-up fingerprints therefore costs little."""
        with self._lock:
            consumer = self._consumer()
            tp = TopicPartition(self._settings.topic_schemas, 0)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                msg = consumer.poll(0.01)
                if msg is not None:
                    self._take(msg)
                    continue
                _low, high = consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0 and self._next >= high:
                    break
            else:
                raise KafkaException(f"{self._settings.topic_schemas} not read within {timeout}s")
            if time.monotonic() - self._settled_at > 1.0:
                settle = time.monotonic() + SETTLE_S
                while (left := settle - time.monotonic()) > 0:
                    msg = consumer.poll(left)
                    if msg is not None:
                        self._take(msg)
                self._settled_at = time.monotonic()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class Resolver:
    """Look up the writer schema an ``UnknownSchema`` names; remember misses briefly."""

    def __init__(self, settings: Settings, codec: Codec = CODEC) -> None:
        self._settings, self._codec = settings, codec
        self._log = SchemaLog(settings, codec)
        self._registry: Any = None
        self._misses: dict[tuple[str, str], tuple[float, str]] = {}

    def close(self) -> None:
        self._log.close()

    def _registry_client(self) -> Any:
        if self._registry is None:
            self._registry = registry_client(self._settings.schema_registry_url or "")
        return self._registry

    def resolve(self, missing: UnknownSchema) -> str | None:
        """Fetch the schema; ``None`` when found, else the reason it could not be."""
        key = (missing.kind, missing.key)
        miss = self._misses.get(key)
        if miss is not None and time.monotonic() - miss[0] < MISS_TTL_S:
            return miss[1]
        reason = self._fetch(missing)
        if reason is not None:
            self._misses[key] = (time.monotonic(), reason)
        return reason

    def _fetch(self, missing: UnknownSchema) -> str | None:
        if missing.kind == "registry":
            return self._fetch_registry(missing)
        try:
            self._log.load()
        except KafkaException as exc:
            return f"{missing}: reading {self._settings.topic_schemas} failed: {exc}"
        if self._codec.knows_fingerprint(missing.key):
            return None
        topic = self._settings.topic_schemas
        return f"{missing}: not shipped with this worker and not announced on {topic}"

    def _fetch_registry(self, missing: UnknownSchema) -> str | None:
        if not self._settings.schema_registry_url:
            return f"{missing}: registry framing, but UNIFIER_SCHEMA_REGISTRY_URL is not set"
        try:
            found = self._registry_client().get_schema(int(missing.key))
            self._codec.add_registry_id(int(missing.key), found.schema_str)
        except DecodeError as exc:
            return f"{missing}: {exc}"
        except Exception as exc:  # the registry client raises its own and httpx errors
            return f"{missing}: registry lookup failed: {exc}"
        return None
