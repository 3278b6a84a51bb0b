"""The passthrough envelope (``transforms.firehose_passthrough``) and how the Firehose
transform answers it: a HEC event put back by ``replay --via-firehose`` comes out unchanged,
never wrapped a second time."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import make_settings
from tests.factories import make_firehose_event
from transforms.firehose import transform_event
from transforms.firehose_passthrough import MARKER_PREFIX, is_marked, unwrap, wrap
from transforms.reingest import ReingestReport

HEC_EVENT = b'{"time":1767225600.5,"sourcetype":"aws:cloudwatchlogs","event":"hello \xc3\xa9"}'


class NoReingest:
    def put(self, records: object) -> ReingestReport:
        raise AssertionError("nothing should overflow")


def answer(records: list[bytes], **environ: str) -> list[tuple[str, bytes]]:
    response = transform_event(
        make_firehose_event(records), make_settings(**environ), reingester=NoReingest()
    )
    return [
        (entry["result"], base64.b64decode(entry.get("data", ""))) for entry in response["records"]
    ]


def test_wrap_and_unwrap_round_trip_text_and_bytes() -> None:
    """Event JSON travels as text; bytes that are not UTF-8 as base64; both come back exact."""
    marked = wrap(HEC_EVENT, "event")
    assert marked.startswith(MARKER_PREFIX) and is_marked(marked)
    assert json.loads(marked) == {
        "forwarderHecEvent": {"endpoint": "event", "data": HEC_EVENT.decode()}
    }
    assert unwrap(marked) == (HEC_EVENT, "event")
    line = b"raw \xff line"
    assert unwrap(wrap(line, "raw")) == (line, "raw")
    assert b'"base64"' in wrap(line, "raw")


def test_wrapping_an_envelope_never_nests_it() -> None:
    once = wrap(HEC_EVENT, "event")
    assert wrap(once, "raw") == once


@pytest.mark.parametrize(
    "data",
    [
        HEC_EVENT,  # a HEC event alone is not marked
        MARKER_PREFIX + b"1}",
        MARKER_PREFIX + b'{"endpoint":"nope","data":"x"}}',
        MARKER_PREFIX + b'{"endpoint":"event"}}',
        MARKER_PREFIX + b'{"endpoint":"event","base64":"!!"}}',
        MARKER_PREFIX + b'{"endpoint":"event","data":"  "}}',
        MARKER_PREFIX + b'{"endpoint":"event","data":"x"},"more":1}',
        MARKER_PREFIX + b'{"endpoint":"event","data":"\\ud800"}}',
        MARKER_PREFIX + b"[" * 100_000,
    ],
)
def test_malformed_envelopes_are_not_passthrough(data: bytes) -> None:
    assert unwrap(data) is None


def test_the_transform_passes_a_marked_event_through_unchanged() -> None:
    """GIVEN a HEC event in the envelope and the same event unmarked WHEN transformed THEN the
    marked one comes out byte for byte; the unmarked one is taken for a log line and wrapped
    (which is why replay marks them)."""
    [(result, data), (plain_result, plain)] = answer([wrap(HEC_EVENT, "event"), HEC_EVENT])
    assert (result, data) == ("Ok", HEC_EVENT)
    assert plain_result == "Ok"
    assert json.loads(plain)["event"] != json.loads(HEC_EVENT)["event"]


def test_an_envelope_for_the_other_endpoint_fails_so_firehose_backs_it_up() -> None:
    [(result, data)] = answer([wrap(b"a raw line", "raw")])
    assert result == "ProcessingFailed"
    assert unwrap(data) == (b"a raw line", "raw")  # the original, for processing-failed/
    [(raw_result, raw_data)] = answer([wrap(b"a raw line", "raw")], SPLUNK_HEC_ENDPOINT="raw")
    assert (raw_result, raw_data) == ("Ok", b"a raw line")
