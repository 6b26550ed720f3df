"""``unifier ingest FILE.jsonl``: validate each line, send the good ones, account for the rest.

Every line ends in exactly one place: on the ``touchpoints`` topic, or in the
rejects file with its line number and the reason (also printed on stderr).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from producers.kafka import TouchpointProducer
from profiles.routing import profile_key
from profiles.touchpoint import InvalidTouchpoint, Touchpoint, parse_json
from unifier.settings import Settings

MAX_LINE_BYTES = 1024 * 1024
SHOWN_REJECTS = 20


@dataclass
class IngestResult:
    lines: int = 0
    blank: int = 0
    accepted: int = 0
    rejected: int = 0
    delivered: int = 0
    failed: int = 0
    rejects_path: Path | None = None
    errors: list[str] = field(default_factory=list)


def validate_line(line: bytes, settings: Settings) -> Touchpoint:
    """One line of the JSON form -> a Touchpoint, or InvalidTouchpoint with the reason."""
    if len(line) > MAX_LINE_BYTES:
        raise InvalidTouchpoint(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidTouchpoint(f"malformed JSON: {exc}") from None
    tp = parse_json(obj, settings.identifier_priorities)
    # Same check the worker makes: an event with no usable identifier cannot join a profile.
    profile_key(tp, settings.identifier_priorities, settings.default_phone_region)
    return tp


def _lines(fh: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, raw in enumerate(fh, start=1):
        # A UTF-8 byte order mark, as some editors write, is not part of the first line.
        line = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw
        yield number, line.rstrip(b"\r\n")


def ingest_file(
    path: Path,
    settings: Settings,
    rejects_path: Path | None = None,
    progress: bool | None = None,
    err: IO[str] = sys.stderr,
) -> IngestResult:
    result = IngestResult()
    rejects_path = rejects_path or path.with_name(path.name + ".rejects.jsonl")
    rejects: IO[bytes] | None = None
    rejects_path.unlink(missing_ok=True)  # a stale file from an earlier run would mislead
    show_bar = err.isatty() if progress is None else progress
    size = path.stat().st_size
    with (
        open(path, "rb") as fh,
        TouchpointProducer(settings) as producer,
        Progress(
            TextColumn("ingest"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            disable=not show_bar,
            transient=True,
        ) as bar,
    ):
        task = bar.add_task("ingest", total=size)
        for number, line in _lines(fh):
            result.lines += 1
            bar.update(task, advance=len(line) + 1)
            if not line.strip():
                result.blank += 1
                continue
            try:
                tp = validate_line(line, settings)
            except InvalidTouchpoint as exc:
                result.rejected += 1
                if rejects is None:
                    rejects = open(rejects_path, "wb")  # noqa: SIM115 - closed below
                rejects.write(
                    orjson.dumps(
                        {
                            "line": number,
                            "reason": str(exc),
                            "input": line.decode("utf-8", "replace"),
                        }
                    )
                    + b"\n"
                )
                if result.rejected <= SHOWN_REJECTS:
                    print(f"{path}:{number}: rejected: {exc}", file=err)
                continue
            result.accepted += 1
            producer.send(tp)
        report = producer.flush()
    if rejects is not None:
        rejects.close()
        result.rejects_path = rejects_path
        if result.rejected > SHOWN_REJECTS:
            print(f"... and {result.rejected - SHOWN_REJECTS} more rejected lines", file=err)
    result.delivered = report.events_sent
    result.failed = result.accepted - report.events_sent
    result.errors = report.errors
    return result
