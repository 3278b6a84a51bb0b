"""InterleavedTexts: the batch-wide join gives the bytes of the per-text path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.factories import VPC_LOG_GROUP, VPC_LOG_STREAM, make_cwl_payload, make_flow_lines
from transforms.options import TransformOptions
from transforms.pipeline import firehose_payload, transform_payload
from transforms.records import EncodedEvents, InterleavedTexts

CEILING = 4 * 1024 * 1024
_TEXT = st.text(alphabet=st.sampled_from('ab"{}\\\n\r \u00e9\ud800'), max_size=6)


def one_by_one(pieces: list[str], columns: list[list[str]]) -> list[str]:
    """The reference: each text built on its own."""
    texts = []
    for values in zip(*columns, strict=True):
        text = pieces[0]
        for value, piece in zip(values, pieces[1:], strict=True):
            text += value + piece
        texts.append(text)
    return texts


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(min_value=1, max_value=3),
    count=st.integers(min_value=0, max_value=6),
    data=st.data(),
    separator=st.sampled_from(["", "\n", ","]),
)
def test_joined_and_texts_equal_the_one_by_one_texts(
    width: int, count: int, data: st.DataObject, separator: str
) -> None:
    """Any pieces and values (newlines included): joined(sep) == sep.join(texts), same texts."""
    pieces = data.draw(st.lists(_TEXT, min_size=width + 1, max_size=width + 1))
    columns = [data.draw(st.lists(_TEXT, min_size=count, max_size=count)) for _ in range(width)]
    expected = one_by_one(pieces, columns)
    texts = InterleavedTexts(pieces, columns)
    assert texts.joined(separator) == separator.join(expected)
    assert len(texts) == count
    assert list(texts) == expected
    assert texts[1:] == expected[1:]
    assert EncodedEvents(texts).body(separator, "!") == EncodedEvents(expected).body(separator, "!")


def test_concat_keeps_columns_only_for_the_same_pieces() -> None:
    """Parts with equal pieces stay interleaved; anything else becomes one list, in order."""
    first = InterleavedTexts(("<", ">"), [["a", "b"]])
    second = InterleavedTexts(("<", ">"), [["c"]])
    joined = InterleavedTexts.concat([first, second])
    assert isinstance(joined, InterleavedTexts)
    assert list(joined) == ["<a>", "<b>", "<c>"]
    other = InterleavedTexts(("[", "]"), [["d"]])
    assert InterleavedTexts.concat([first, other, ["e"]]) == ["<a>", "<b>", "[d]", "e"]
    assert InterleavedTexts.concat([]) == []


def test_pieces_and_columns_must_agree() -> None:
    """One more piece than columns, columns of one length."""
    with pytest.raises(ValueError, match="pieces"):
        InterleavedTexts(("a",), [["x"]])
    with pytest.raises(ValueError, match="lengths"):
        InterleavedTexts(("a", "b", "c"), [["x"], []])


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=2100),
    seed=st.integers(min_value=0, max_value=1000),
    options=st.sampled_from(
        [
            TransformOptions(max_decompressed_bytes=CEILING),
            TransformOptions(event_format="json", max_decompressed_bytes=CEILING),
        ]
    ),
    lambda_style=st.booleans(),
    nodata_every=st.sampled_from([None, 7, 1500]),
)
def test_firehose_body_is_the_per_event_payloads_joined(
    count: int,
    seed: int,
    options: TransformOptions,
    lambda_style: bool,
    nodata_every: int | None,
) -> None:
    """The Firehose body (batch-wide join) is byte for byte the events' payloads joined.

    Without NODATA lines every chunk takes the batch-wide path; with one every 1,500 lines
    some chunks do and some do not (the chunks are joined as one list).
    """
    lines = make_flow_lines(count, seed=seed, nodata_every=nodata_every)
    if lambda_style:
        lines = [f'{{"level":"INFO","msg":"{line}"}}' for line in lines]
        data = make_cwl_payload(lines, log_group="/aws/lambda/f")
    else:
        data = make_cwl_payload(lines, log_group=VPC_LOG_GROUP, log_stream=VPC_LOG_STREAM)
    encoded = transform_payload(data, options)
    assert firehose_payload(encoded) == b"".join(event.payload for event in encoded.events)
    if nodata_every is None and not lambda_style and options.event_format != "json":
        assert isinstance(encoded.events, EncodedEvents)
        assert isinstance(encoded.events.texts, InterleavedTexts)
