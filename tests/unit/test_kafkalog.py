"""librdkafka's flood while a broker is down becomes one line per message per period."""

import logging

from config.kafkalog import OncePer


def record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("unifier.kafka", logging.ERROR, __file__, 1, msg, (), None)


def test_the_same_failure_is_written_once_per_period_with_a_count() -> None:
    once = OncePer(every=3600)
    fail = "FAIL [thrd:127.0.0.1:{}/bootstrap]: Connect to ipv4#127.0.0.1:{} failed"
    assert once.filter(record(fail.format(4100, 4100)))
    # The same failure, other numbers: held back.
    assert not any(once.filter(record(fail.format(4100 + i, 4100 + i))) for i in range(50))
    assert once.filter(record("a different message"))
    once._last = {k: (v[0] - 7200, v[1]) for k, v in once._last.items()}  # an hour later
    later = record(fail.format(4100, 4100))
    assert once.filter(later)
    assert later.getMessage().endswith("(and 50 more like it)")
