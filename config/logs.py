"""Logs: one JSON object per line for machines, or plain text for a terminal.

``UNIFIER_LOG_FORMAT``: ``json``, ``text``, or ``auto`` (the default: text when
stderr is a terminal, JSON otherwise — a worker started by `unifier stack`, a
container). A JSON line has ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``,
the process name, any ``extra`` fields, and ``exc`` with the traceback.

Our messages never carry raw identifiers (emails, phones): they name events by id,
records by topic/partition/offset, profiles by their opaque id.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "process": record.processName,
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def use_json(fmt: str) -> bool:
    return fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())


def config(level: str, fmt: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for this format (also handed to Faust's worker)."""
    formatter = (
        {"()": "config.logs.JsonFormatter"}
        if use_json(fmt)
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
    }


def configure(level: str, fmt: str) -> None:
    logging.config.dictConfig(config(level, fmt))
