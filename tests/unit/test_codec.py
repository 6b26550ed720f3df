import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiles.touchpoint import Touchpoint
from schemas.codec import (
    BATCH_HEADER,
    MAGIC,
    TOUCHPOINT_HEADER,
    DecodeError,
    decode_touchpoints,
    encode_batch,
    encode_touchpoint,
)
from tests.unit.strategies import touchpoints


@given(touchpoints)
def test_single_touchpoint_round_trips(tp) -> None:  # type: ignore[no-untyped-def]
    assert decode_touchpoints(encode_touchpoint(tp)) == [tp]


@given(st.lists(touchpoints, max_size=5))
def test_batch_round_trips(tps) -> None:  # type: ignore[no-untyped-def]
    assert decode_touchpoints(encode_batch(tps)) == tps


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


def _avro_string(text: bytes) -> bytes:
    """Avro encoding of a string: zig-zag varint length, then the bytes."""
    n, out = len(text) << 1, bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + text


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_avro_string(b"\xff\xfe"), "corrupt Avro body"),  # invalid UTF-8 in event_id
        (b"\xff\xff\xff\xff\xff\xff\x7f", "corrupt Avro body"),  # a 2^45-byte string claimed
        (b"\x00" * 5_000_000, "4999988 bytes left after the Avro body"),  # huge, meaningless
    ],
)
def test_hostile_bodies_are_decode_errors(body: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_touchpoints(TOUCHPOINT_HEADER + body)


@pytest.mark.parametrize(
    ("properties_json", "reason"),
    [("not json", "invalid touchpoint: JSONDecodeError"), ("[" * 5000, "JSONDecodeError")],
)
def test_valid_avro_with_invalid_properties_is_a_decode_error(
    properties_json: str, reason: str
) -> None:
    from schemas.codec import CODEC, TOUCHPOINT, touchpoint_to_avro
    from tests.unit.test_schemas import _sample

    record = {**touchpoint_to_avro(_sample()), "properties_json": properties_json}
    with pytest.raises(DecodeError, match=reason):
        decode_touchpoints(CODEC.encode(TOUCHPOINT, record))


@given(touchpoints, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4))
def test_corrupted_records_decode_or_fail_cleanly(tp, flips) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(encode_batch([tp]))
    for where, value in flips:
        data[where % len(data)] = value
    with contextlib.suppress(DecodeError):
        decode_touchpoints(bytes(data))


def test_large_batches_are_split_below_the_record_limit() -> None:
    from schemas.codec import encode_batches
    from tests.unit.test_schemas import _sample

    big = [
        Touchpoint(
            f"e{i}", "page_viewed", "web", i, {"anonymous_id": f"a{i}"}, {"blob": "x" * 3000}
        )
        for i in range(400)
    ]
    parts = encode_batches(big, max_bytes=100_000)
    assert len(parts) > 10
    assert all(len(value) <= 100_000 for _, value in parts)
    assert [tp for _, value in parts for tp in decode_touchpoints(value)] == big
    [(alone, _)] = encode_batches([_sample()], max_bytes=10)  # one event is never split
    assert alone == [_sample()]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_traits_are_refused(value: float) -> None:
    """Avro carries them; JSON (tables, views) cannot: a reason instead of a silent null."""
    tp = Touchpoint("e", "page_viewed", "web", 0, {"email": "a@b.co"}, {"score": value})
    with pytest.raises(DecodeError, match=r"traits\.score: .* is not a finite number"):
        decode_touchpoints(encode_touchpoint(tp))
