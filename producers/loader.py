"""What every file loader shares: send the good records, account for the rest.

Every input record ends in exactly one place: on the ``touchpoints`` topic, or in
the rejects file as ``{"line", "reason", "input"}`` (the first rejects are also
printed on stderr as ``FILE:LINE: rejected: reason``). A progress bar runs on a
terminal.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from config.settings import Settings
from producers.kafka import TouchpointProducer
from profiles.touchpoint import Touchpoint

SHOWN_REJECTS = 20


@dataclass
class LoadResult:
    lines: int = 0
    blank: int = 0
    accepted: int = 0
    rejected: int = 0
    delivered: int = 0
    failed: int = 0
    rejects_path: Path | None = None
    errors: list[str] = field(default_factory=list)

    def summary(self, verb: str = "sent", what: str = "lines") -> str:
        text = (
            f"{verb} {self.delivered} events from {self.lines} {what}; rejected {self.rejected}"
            + (f" (see {self.rejects_path})" if self.rejects_path else "")
        )
        if self.failed:
            text += f"; {self.failed} NOT delivered: {'; '.join(self.errors[:3])}"
        return text


class Loader:
    def __init__(
        self,
        path: Path,
        settings: Settings,
        rejects_path: Path | None = None,
        progress: bool | None = None,
        err: IO[str] = sys.stderr,
        label: str = "load",
    ) -> None:
        self.path = path
        self.result = LoadResult()
        self._err = err
        self._rejects_path = rejects_path or path.with_name(path.name + ".rejects.jsonl")
        self._rejects_path.unlink(missing_ok=True)  # a stale file from an earlier run would mislead
        self._rejects: IO[bytes] | None = None
        self._producer = TouchpointProducer(settings)
        show_bar = err.isatty() if progress is None else progress
        self._bar = Progress(
            TextColumn(label),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            disable=not show_bar,
            transient=True,
        )
        self._task = self._bar.add_task(label, total=path.stat().st_size)

    def __enter__(self) -> Loader:
        self._bar.__enter__()
        return self

    def progress_to(self, position: int) -> None:
        self._bar.update(self._task, completed=position)

    def send(self, tp: Touchpoint) -> None:
        self.result.accepted += 1
        self._producer.send(tp)

    def reject(self, line: int, reason: str, raw: Any) -> None:
        self.result.rejected += 1
        if self._rejects is None:
            self._rejects = open(self._rejects_path, "wb")  # noqa: SIM115 - closed in __exit__
        record = {"line": line, "reason": reason, "input": raw}
        self._rejects.write(orjson.dumps(record, default=str) + b"\n")
        if self.result.rejected <= SHOWN_REJECTS:
            print(f"{self.path}:{line}: rejected: {reason}", file=self._err)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            report = self._producer.close()
        finally:
            self._bar.__exit__(exc_type, exc, tb)
            if self._rejects is not None:
                self._rejects.close()
                self.result.rejects_path = self._rejects_path
        if self.result.rejected > SHOWN_REJECTS:
            more = self.result.rejected - SHOWN_REJECTS
            print(f"... and {more} more rejected (all in {self._rejects_path})", file=self._err)
        self.result.delivered = report.events_sent
        self.result.failed = self.result.accepted - report.events_sent
        self.result.errors = report.errors
