import io

import orjson
import pytest

from config.settings import Settings
from profiles.touchpoint import InvalidTouchpoint
from unifier.ingest import _lines, validate_line

GOOD = {
    "event_id": "e1",
    "type": "signed_in",
    "source": "web",
    "occurred_at": "2026-11-22T10:00:00Z",
    "identifiers": {"email": "Ana@X.com"},
}


def test_line_numbers_count_every_line_and_a_bom_is_ignored() -> None:
    data = b"\xef\xbb\xbf" + orjson.dumps(GOOD) + b"\r\n\n" + orjson.dumps(GOOD) + b"\n"
    lines = list(_lines(io.BytesIO(data)))
    assert [n for n, _ in lines] == [1, 2, 3]
    assert validate_line(lines[0][1], Settings()).event_id == "e1"
    assert lines[1][1] == b""


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"\xff\xfe{}", "malformed JSON"),
        (b"null", "expected a JSON object, got NoneType"),
        (b"[1]", "expected a JSON object, got list"),
        (orjson.dumps({**GOOD, "identifiers": {"phone": "0000000000"}}), "no usable identifier"),
        (b"{" + b" " * (1024 * 1024) + b"}", "line longer than"),
    ],
)
def test_bad_lines_have_reasons(line: bytes, reason: str) -> None:
    with pytest.raises(InvalidTouchpoint, match=reason):
        validate_line(line, Settings())
