"""Log lines a machine can read."""

import io
import logging

import orjson

from config.logs import JsonFormatter, config


def test_a_json_line_carries_time_level_logger_message_extras_and_the_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("unifier.test-json")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("record %s/%s@%s failed", "touchpoints", 2, 118, extra={"stage": "route"})
    finally:
        log.removeHandler(handler)
    [line] = stream.getvalue().splitlines()
    doc = orjson.loads(line)
    assert doc["msg"] == "record touchpoints/2@118 failed"
    assert (doc["level"], doc["logger"], doc["stage"]) == ("error", "unifier.test-json", "route")
    assert doc["ts"].endswith("+00:00") and "ValueError: boom" in doc["exc"]


def test_auto_is_text_on_a_terminal_and_json_otherwise() -> None:
    assert config("INFO", "json")["formatters"]["default"] == {"()": "config.logs.JsonFormatter"}
    assert "format" in config("INFO", "text")["formatters"]["default"]
    # Under pytest stderr is captured, not a terminal: auto means JSON.
    assert config("INFO", "auto")["formatters"]["default"] == {"()": "config.logs.JsonFormatter"}
