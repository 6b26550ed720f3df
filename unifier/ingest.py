"""``unifier ingest FILE.jsonl``: validate each line, send the good ones, account for the rest.

Every line ends in exactly one place: on the ``touchpoints`` topic, or in the
rejects file with its line number and the reason (also printed on stderr).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson

from config.settings import Settings
from producers.loader import Loader, LoadResult
from profiles.configured import identity_rules
from profiles.routing import validate_event
from profiles.rules import IdentityRules
from profiles.touchpoint import InvalidTouchpoint, Touchpoint

MAX_LINE_BYTES = 1024 * 1024


def validate_line(
    line: bytes, settings: Settings, rules: IdentityRules | None = None
) -> Touchpoint:
    """One line of the JSON form -> a Touchpoint, or InvalidTouchpoint with the reason."""
    if len(line) > MAX_LINE_BYTES:
        raise InvalidTouchpoint(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidTouchpoint(f"malformed JSON: {exc}") from None
    rules = rules or identity_rules(settings)
    return validate_event(obj, rules, settings.default_phone_region)


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
) -> LoadResult:
    rules = identity_rules(settings)
    with Loader(path, settings, rejects_path, progress, err, "ingest") as loader:
        result = loader.result
        with open(path, "rb") as fh:
            position = 0
            for number, line in _lines(fh):
                result.lines += 1
                position += len(line) + 1
                loader.progress_to(position)
                if not line.strip():
                    result.blank += 1
                    continue
                try:
                    tp = validate_line(line, settings, rules)
                except InvalidTouchpoint as exc:
                    loader.reject(number, str(exc), line.decode("utf-8", "replace"))
                    continue
                loader.send(tp)
    return result
