"""Hostile S3 objects and JSON: a poison line is that line's problem, memory stays bounded.

Deep nesting (``RecursionError``), numbers Python refuses, invalid UTF-8, NaN and non-object
JSON become one counted bad line, with every good record before and after it read; a line of
any length is skipped as it streams (``line_too_long``), never held whole; gzip past the
ceiling fails the object after what came before.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import json
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.errors import ConfigError
from forwarder.backsplash.codec import (
    MAX_RECORD_CHARS,
    CorruptLine,
    CorruptRecordError,
    RawRecord,
    decode_record,
    decode_records,
    decompressed,
    iter_records,
)
from forwarder.backsplash.layout import SPLUNK_FAILED
from forwarder.backsplash.objects import decode_object, sniff
from forwarder.hec.protocol import parse_acks, parse_response
from forwarder.intake.inputs import read_units
from forwarder.intake.lines import LongLine, bounded_lines, line_chunks, text_lines
from forwarder.intake.notifications import parse_s3_notification
from forwarder.secrets import token_from_secret_string
from forwarder.sources.firehose_protocol import RequestRejectedError, decode_body
from tests.conftest import make_settings
from transforms.options import TransformOptions

DEEP = "[" * 100_000 + "]" * 100_000
#: Lines no backsplash reader may let escape: each must be one bad line.
POISON = {
    "deep_array": DEEP,
    "deep_in_object": '{"rawData": "e30=", "x": ' + "[" * 100_000,
    "deep_object": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "huge_integer": '{"rawData": "e30=", "n": ' + "9" * 5000 + "}",
    "invalid_utf8": '{"rawData": "\udcff\udcfe"}',
    "not_an_object": "[1, 2, 3]",
    "a_string": '"just a string"',
    "garbage": "\udcff\udcfe{{{",
}


def good(text: str) -> str:
    return json.dumps({"rawData": base64.b64encode(json.dumps({"event": text}).encode()).decode()})


def object_bytes(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [7, 4096, 1 << 20])
@pytest.mark.parametrize("name", sorted(POISON))
def test_a_poison_line_is_one_bad_line_between_good_records(name: str, size: int) -> None:
    """GIVEN good, poison, good (any chunking, plain or gzip) WHEN decoded as the push
    Lambda, the daemon and replay do THEN two records and one corrupt line numbered 2, and
    nothing escapes."""
    data = object_bytes(good("before"), POISON[name], good("after"))
    for stored in (data, gzip.compress(data)):
        raw = list(iter_records(chunked(stored, size)))
        assert {1, 3} <= {item.line for item in raw if isinstance(item, RawRecord)}
        items = list(decode_object(iter(chunked(stored, size)), SPLUNK_FAILED, TransformOptions()))
        decoded = [item[0] for item in items if isinstance(item, tuple)]
        corrupt = [item for item in items if isinstance(item, CorruptLine)]
        assert decoded == [1, 3]
        assert [(c.line, c.fatal) for c in corrupt] == [(2, False)]


def test_nan_and_huge_floats_are_records_read_tolerantly() -> None:
    """NaN, infinities and huge numbers in the metadata are records; their fields read as
    absent, never as a crash."""
    line = good("x")[:-1] + ', "arrivalTimestamp": NaN, "replayAttempts": 1e999}'
    (item,) = iter_records([object_bytes(line)])
    assert isinstance(item, RawRecord)
    decoded = decode_record(item.data, SPLUNK_FAILED, TransformOptions())
    assert (decoded.arrival_ms, decoded.replay_attempts) == (None, 0)


@pytest.mark.parametrize(
    "fields",
    [
        {"rawData": base64.b64encode(DEEP.encode()).decode()},
        {"rawData": base64.b64encode(b'{"event": ' + b"1" * 5000 + b"}").decode()},
        {"rawData": base64.b64encode(b'{"event":1}' + b"[" * 100_000).decode()},
        {"rawData": base64.b64encode(b"\xff\xfe{").decode()},
        {"rawData": "e30=", "arrivalTimestamp": "\u00b2", "replayAttempts": 10**4000},
        {"rawData": "e30=", "arrivalTimestamp": "9" * 4000, "errorCode": [DEEP]},
        {"rawData": base64.b64encode(DEEP.encode()).decode(), "lambdaArn": "arn"},
        {"rawData": 5},
    ],
)
def test_decode_record_raises_nothing_but_corrupt_record(fields: dict[str, Any]) -> None:
    """Whatever the record holds, decode_record returns or raises CorruptRecordError."""
    for kind in (SPLUNK_FAILED, "processing-failed"):
        with contextlib.suppress(CorruptRecordError):
            decode_record(fields, kind, TransformOptions())


def test_decode_object_delivers_around_a_deep_line() -> None:
    """The push Lambda's and the daemon's decoder: the deep line is one CorruptLine."""
    data = gzip.compress(object_bytes(good("before"), DEEP, good("after")))
    items = list(decode_object(iter(chunked(data, 1000)), SPLUNK_FAILED, TransformOptions()))
    assert [type(item).__name__ for item in items] == ["tuple", "CorruptLine", "tuple"]
    corrupt = items[1]
    assert isinstance(corrupt, CorruptLine)
    assert (corrupt.line, corrupt.fatal) == (2, False)


def test_sniff_survives_a_deep_first_record() -> None:
    """A deep first record inside the sniffed bytes: backsplash, kind per record."""
    data = ('{"rawData": "e30=", "x": ' + "[" * 30_000).encode()
    _, is_backsplash, kind = sniff(io.BytesIO(data))
    assert (is_backsplash, kind) == (True, None)


@pytest.mark.parametrize(
    "body",
    [
        DEEP,
        json.dumps({"Type": "Notification", "Message": DEEP}),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": "b"}}]}),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": [1]}}]}),
        '{"Records": [' + "9" * 5000 + "]}",
    ],
)
def test_hostile_notifications_are_not_notifications(body: str) -> None:
    """parse_s3_notification answers None or a list, whatever the body."""
    assert parse_s3_notification(body) in (None, [])


def test_whole_object_reader_turns_deep_nesting_into_value_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        list(decode_records(DEEP.encode()))


def test_other_untrusted_json_readers_survive_deep_nesting() -> None:
    """HEC answers, Firehose HTTP bodies and secrets: their documented errors, not
    RecursionError."""
    assert parse_response(DEEP).code is None
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_acks(DEEP)
    with pytest.raises(RequestRejectedError):
        decode_body(DEEP.encode(), gzipped=False, max_bytes=1 << 20)
    with pytest.raises(ConfigError):
        token_from_secret_string("arn:secret", '{"a":' * 100_000)
    deep_document = ('{"a":' * 100_000 + "1" + "}" * 100_000).encode()
    units = list(read_units(io.BytesIO(deep_document), make_settings().transform))  # one text event
    assert sum(len(getattr(unit, "events", ())) for unit in units) == 1


LONG_LINE_BYTES = 400 * 1024 * 1024


# --------------------------------------------------------------------- lines, bounded


def reference_lines(data: bytes, cap: int) -> list[bytes | LongLine]:
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    return [
        LongLine(number, len(piece)) if len(piece) > cap else piece
        for number, piece in enumerate(pieces, start=1)
    ]


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12),
    cap=st.integers(min_value=1, max_value=30),
    size=st.integers(min_value=1, max_value=50),
    final_newline=st.booleans(),
)
def test_bounded_lines_matches_a_plain_split(
    lines: list[bytes], cap: int, size: int, final_newline: bool
) -> None:
    """Any bytes, any chunking, any cap: the lines of a plain split, the long ones reported."""
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    assert list(bounded_lines(chunked(data, size), cap)) == reference_lines(data, cap)


def test_text_lines_skip_a_long_line_and_keep_the_rest() -> None:
    """gzip text, CRLF, invalid UTF-8: lines without breaks, the long one reported."""
    data = b"first\r\n" + b"x" * 5000 + b"\nthird \xff\nlast"
    items = list(text_lines(io.BytesIO(gzip.compress(data)), max_line_bytes=1000))
    assert items == ["first", LongLine(2, 5000), "third \ufffd", "last"]


def test_line_chunks_tell_long_lines_and_keep_the_header() -> None:
    header = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets"
    told: list[LongLine] = []
    lines = [header, "a", LongLine(3, 99), "b"]
    chunks = list(line_chunks(iter(lines), 10, on_long_line=told.append))
    assert [chunk for chunk, _ in chunks] == [["a", "b"]]
    assert chunks[0][1] is not None
    assert told == [LongLine(3, 99)]


def bomb(inflated: int, *, prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    """gzip of ``prefix``, ``inflated`` bytes of ``x`` (no newline), ``suffix``, streamed."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [packer.compress(prefix)]
    block = b"x" * (1 << 20)
    for _ in range(inflated >> 20):
        out.append(packer.compress(block))
    out.append(packer.compress(b"x" * (inflated & ((1 << 20) - 1))))
    out.append(packer.compress(suffix))
    out.append(packer.flush())
    return b"".join(out)


def test_decompression_ceiling_fails_the_object_after_what_came_before() -> None:
    data = bomb(3 << 20, prefix=b"good\n")
    with pytest.raises(ValueError, match="ceiling"):
        list(decompressed([data], max_bytes=1 << 20))
    seen: list[str | LongLine] = []
    with pytest.raises(ValueError, match="ceiling"):
        for item in text_lines(io.BytesIO(data), max_inflated=2 << 20):
            seen.append(item)
    assert seen == ["good"]
    items = list(iter_records([data], max_inflated=2 << 20))
    assert isinstance(items[-1], CorruptLine)
    assert items[-1].fatal
    assert "ceiling" in items[-1].reason


def test_a_record_longer_than_the_cap_is_one_bad_line() -> None:
    """A backsplash record past MAX_RECORD_CHARS: line_too_long, the next one read."""
    long_record = '{"rawData": "' + "A" * (MAX_RECORD_CHARS + (2 << 20)) + '"}'
    data = gzip.compress(object_bytes(good("before"), long_record, good("after")))
    items = list(iter_records(chunked(data, 64 * 1024)))
    assert [type(item).__name__ for item in items] == ["RawRecord", "CorruptLine", "RawRecord"]
    bad = items[1]
    assert isinstance(bad, CorruptLine)
    assert bad.line == 2
    assert bad.reason.startswith("line_too_long")


# --------------------------------------------------------------------- properties

_GOOD = good("g")
#: Whole lines, each good or failing within itself.
_LINES = st.sampled_from(
    [_GOOD, DEEP[:3000], '{"a":' * 1500, "9" * 4400, "NaN", "\udcff", "{", '"', ""]
)


@settings(max_examples=100, deadline=None)
@given(
    lines=st.lists(_LINES, max_size=12),
    size=st.integers(min_value=64, max_value=4096),
    compress=st.booleans(),
)
def test_every_good_line_comes_out_whatever_surrounds_it(
    lines: list[str], size: int, compress: bool
) -> None:
    """Good records, deep nesting, long numbers, NaN, invalid UTF-8 and stray punctuation,
    one per line, in any chunking: every good line is decoded, every other non-empty line is
    exactly one corrupt line, and nothing raises."""
    data = "\n".join(lines).encode("utf-8", "surrogateescape")
    stored = gzip.compress(data) if compress else data
    items = list(decode_object(iter(chunked(stored, size)), SPLUNK_FAILED, TransformOptions()))
    decoded = [item[0] for item in items if isinstance(item, tuple)]
    corrupt = [item.line for item in items if isinstance(item, CorruptLine)]
    numbered = list(enumerate(lines, start=1))
    assert decoded == [n for n, line in numbered if line == _GOOD]
    assert corrupt == [n for n, line in numbered if line not in (_GOOD, "")]


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300), size=st.integers(min_value=1, max_value=64))
def test_backsplash_decoding_never_raises(text: str, size: int) -> None:
    """Arbitrary text around a good record: records and corrupt lines, never an exception."""
    data = f"{text}\n{_GOOD}\n{text}".encode("utf-8", "surrogateescape")
    items = list(decode_object(iter(chunked(data, size)), SPLUNK_FAILED, TransformOptions()))
    assert all(isinstance(item, tuple | CorruptLine) for item in items)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), size=st.integers(min_value=1, max_value=512))
def test_text_lines_raise_only_value_error(data: bytes, size: int) -> None:
    """Arbitrary bytes (gzip-looking or not): lines, or ValueError (broken gzip)."""
    for stored in (data, b"\x1f\x8b" + data):
        try:
            items = list(text_lines(io.BytesIO(stored), max_line_bytes=size))
        except ValueError:
            continue
        assert all(isinstance(item, str | LongLine) for item in items)
