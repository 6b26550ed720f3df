import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiles.routing import RoutedItem
from schemas.codec import (
    BATCH_HEADER,
    MAGIC,
    TOUCHPOINT_HEADER,
    DecodeError,
    decode_routed,
    decode_touchpoints,
    encode_batch,
    encode_routed,
    encode_touchpoint,
)
from tests.unit.strategies import touchpoints


@given(touchpoints)
def test_single_touchpoint_round_trips(tp) -> None:  # type: ignore[no-untyped-def]
    assert decode_touchpoints(encode_touchpoint(tp)) == [tp]


@given(st.lists(touchpoints, max_size=5))
def test_batch_round_trips(tps) -> None:  # type: ignore[no-untyped-def]
    assert decode_touchpoints(encode_batch(tps)) == tps


@given(
    st.lists(
        st.builds(
            RoutedItem,
            st.text(),
            st.dictionaries(st.text(), st.text()),
            touchpoints,
        ),
        max_size=4,
    )
)
def test_routed_batch_round_trips(items) -> None:  # type: ignore[no-untyped-def]
    assert decode_routed(encode_routed(items)) == items


def test_headers_follow_single_object_encoding() -> None:
    assert TOUCHPOINT_HEADER[:2] == MAGIC == b"\xc3\x01"
    assert len(TOUCHPOINT_HEADER) == 10
    assert TOUCHPOINT_HEADER != BATCH_HEADER


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty record"),
        (b'{"event_id": "x"}', "neither Avro single-object encoding"),
        (MAGIC + b"\x00" * 8 + b"abc", "unknown schema fingerprint 0000000000000000"),
        (TOUCHPOINT_HEADER + b"\x02", "corrupt Avro body"),
        (BATCH_HEADER + b"\xff\xff\xff", "corrupt Avro body"),
    ],
)
def test_bad_bytes_are_a_clear_error(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_touchpoints(data)


@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_touchpoints(data)


@given(touchpoints, st.integers(0, 60))
def test_truncated_records_are_decode_errors(tp, cut) -> None:  # type: ignore[no-untyped-def]
    data = encode_touchpoint(tp)
    if cut >= len(data) - 10:
        return
    try:
        decoded = decode_touchpoints(data[: 10 + cut])
    except DecodeError:
        return
    assert decoded != [tp]
