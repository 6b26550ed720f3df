"""The dead-letter topic, for the engineer who has to look at it.

``read`` (``serve.dlq``) lists dead letters with their headers (reason, stage, where
they came from) and, when the bytes still decode, the events in the touchpoint JSON
form. Personal data is masked unless asked for (``--unmasked``, e.g. to fix and replay).

Two ways back in:

* ``replay_file``: lines of ``unifier dlq show --json --unmasked`` (events fixed by
  hand) or plain touchpoint JSON lines; each event is validated like ``ingest``
  and sent, the rest go to a rejects file with line numbers.
* ``replay_topic``: records whose bytes are fine now (a schema became known, a
  setting was fixed) are sent again as they are; the others are reported with
  today's reason. The worker applies each event id once, so replaying twice is safe.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from confluent_kafka import Producer

from config.settings import Settings
from producers.loader import Loader, LoadResult
from profiles.configured import identity_rules
from profiles.routing import observe, validate_event
from profiles.touchpoint import InvalidTouchpoint
from schemas.codec import encode_batch
from serve.dlq import HEADERS, PII_CONTEXT, DeadLetter, mask, masked, read
from sinks.keys import sealer_for
from streams.dlq import SEALED_HEADER

__all__ = ["HEADERS", "PII_CONTEXT", "DeadLetter", "mask", "masked", "read", "replay_file",
           "replay_topic"]  # fmt: skip
from unifier.ingest import _lines


def replay_file(
    path: Path,
    settings: Settings,
    rejects_path: Path | None = None,
    progress: bool | None = None,
    err: IO[str] = sys.stderr,
) -> LoadResult:
    with (
        Loader(path, settings, rejects_path, progress, err, "replay") as loader,
        open(path, "rb") as fh,
    ):
        result = loader.result
        rules = identity_rules(settings)
        position = 0
        for number, raw in _lines(fh):
            position += len(raw) + 1
            loader.progress_to(position)
            line = raw.strip()
            result.lines += 1
            if not line:
                result.blank += 1
                continue
            try:
                doc = orjson.loads(line)
                docs = doc["events"] if isinstance(doc, dict) and "events" in doc else [doc]
                if not isinstance(docs, list) or not docs:
                    raise InvalidTouchpoint("events: a non-empty list is required")
                if any(masked_value(d) for d in docs):
                    raise InvalidTouchpoint(
                        "holds masked values (***): export with `dlq show --json --unmasked`"
                    )
                events = [validate_event(d, rules, settings.default_phone_region) for d in docs]
            except orjson.JSONDecodeError as exc:
                loader.reject(number, f"malformed JSON: {exc}", line.decode("utf-8", "replace"))
                continue
            except InvalidTouchpoint as exc:
                loader.reject(number, str(exc), line.decode("utf-8", "replace"))
                continue
            for tp in events:
                loader.send(tp)
    return result


def masked_value(doc: Any) -> bool:
    return isinstance(doc, dict) and any(
        "***" in str(v) for v in (doc.get("identifiers") or {}).values()
    )


@dataclass
class TopicReplay:
    resent: int = 0
    still_bad: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def replay_topic(settings: Settings, stage: str | None = None) -> TopicReplay:
    """Send again, as they are, the dead letters that decode and validate now."""
    outcome = TopicReplay()
    rules = identity_rules(settings)
    sealer = sealer_for(settings)
    producer = Producer(
        {"bootstrap.servers": settings.bootstrap_servers, "enable.idempotence": True}
    )
    for letter in read(settings):
        if stage is not None and letter.headers.get("x-dlq-stage") != stage:
            continue
        reason = letter.decode_error
        if letter.events is not None:
            try:
                for tp in letter.events:
                    observe(tp, rules, settings.default_phone_region)  # validation only
            except InvalidTouchpoint as exc:
                reason = str(exc)
        if reason is not None:
            outcome.still_bad += 1
            outcome.reasons[reason] = outcome.reasons.get(reason, 0) + 1
            continue
        value = letter.value
        if letter.headers.get(SEALED_HEADER) and letter.events is not None and sealer:
            value = encode_batch(sealer.seal(letter.events))  # opened to be read: sealed again
        producer.produce(settings.topic_touchpoints, value=value)
        producer.poll(0)
        outcome.resent += 1
    if producer.flush(60):
        raise RuntimeError("replayed records were not all acknowledged by the broker")
    return outcome
