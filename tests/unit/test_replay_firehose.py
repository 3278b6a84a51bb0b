"""Every Firehose failure prefix (kinds by key and by content) and ``replay --via-firehose``'s
parts: what each record becomes, and the sink's puts, retries, failures and stops."""

from __future__ import annotations

import argparse
import base64
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from forwarder.backsplash.codec import Failure, decode_record, decode_records, record_kind
from forwarder.backsplash.layout import key_kind
from forwarder.backsplash.objects import sniff
from forwarder.backsplash.writers import LocalSpool, ReplayFailedBacksplash
from forwarder.commands import replay as command
from forwarder.devtools.synthetic import cloudwatch_payload
from forwarder.replay.firehose import FirehoseSink, firehose_record
from forwarder.replay.options import ReplayOptions
from tests.conftest import make_settings
from transforms.firehose_passthrough import unwrap, wrap
from transforms.records import EncodedEvent
from transforms.reingest import FirehoseReingester, ReingestPolicy

OPTIONS = make_settings().transform
HEC = b'{"time":1.5,"event":"a"}'
CWL = cloudwatch_payload(["m 0", "m 1"], log_group="/app/x", first_id=7)


def record(payload: bytes, **extra: Any) -> dict[str, Any]:
    return {"errorCode": "X", "rawData": base64.b64encode(payload).decode(), **extra}


# ------------------------------------------------------------------ kinds


def test_decompression_failed_is_a_kind_by_key() -> None:
    assert key_kind("fh/decompression-failed/2026/01/01/00/a.gz") == ("decompression-failed", "fh/")
    assert key_kind("fhdecompression-failed/2026/01/01/00/a.gz")[0] == "decompression-failed"
    assert key_kind("fh/decompression-failed/replay-failed/a.gz")[0] == "replay-failed"


def test_gzip_raw_data_is_an_original_payload_whatever_the_prefix() -> None:
    """By content: gzip ``rawData`` (or ``lambdaArn``) without our ``endpoint`` means an
    original payload; anything else what was sent to HEC."""
    assert record_kind(record(CWL), None) == "processing-failed"
    assert record_kind(record(HEC), None) == "splunk-failed"
    assert record_kind(record(HEC, lambdaArn="arn"), None) == "processing-failed"
    assert record_kind(record(CWL, endpoint="event"), None) == "splunk-failed"
    assert record_kind(record(CWL), "decompression-failed") == "decompression-failed"


def test_sniff_tells_a_decompression_failed_object_by_content() -> None:
    body = gzip.compress((json.dumps(record(CWL)) + "\n").encode())

    class Body:
        def __init__(self) -> None:
            self.data = body

        def read(self, size: int = -1) -> bytes:
            out, self.data = (self.data, b"") if size < 0 else (self.data[:size], self.data[size:])
            return out

        def close(self) -> None:
            pass

    _, is_backsplash, kind = sniff(Body())
    assert (is_backsplash, kind) == (True, "processing-failed")


@pytest.mark.parametrize("kind", ["decompression-failed", "splunk-failed", "replay-failed"])
def test_a_gzip_payload_is_transformed_never_sent_as_a_raw_line(kind: str) -> None:
    """Whatever the kind (our replay-failed records say ``endpoint``), gzip is a CloudWatch
    Logs payload: its events are made by the transform."""
    decoded = decode_record(record(CWL, endpoint="event"), kind, OPTIONS)
    assert [json.loads(e.payload)["event"] for e in decoded.events] == ["m 0", "m 1"]


def test_format_conversion_records_spell_error_code_with_a_capital() -> None:
    decoded = decode_record({"ErrorCode": "Conv.Bad", "rawData": record(CWL)["rawData"]},
                            "processing-failed", OPTIONS)  # fmt: skip
    assert decoded.error_code == "Conv.Bad"


def test_an_envelope_read_back_from_the_backsplash_is_unwrapped() -> None:
    """A passthrough envelope stored again (Firehose's processing-failed/ after an endpoint
    mismatch, or our replay-failed/) is sent as the HEC payload inside, to its endpoint."""
    decoded = decode_record(record(wrap(b"line 1\n", "raw")), "processing-failed", OPTIONS)
    assert (decoded.endpoint, [e.payload for e in decoded.events]) == ("raw", [b"line 1"])
    decoded = decode_record(record(wrap(HEC, "event"), endpoint="event"), "replay-failed", OPTIONS)
    assert (decoded.endpoint, [e.payload for e in decoded.events]) == ("event", [HEC])


# ------------------------------------------------------------------ what is put


def test_firehose_record_puts_originals_as_they_are_and_marks_hec_events() -> None:
    original = firehose_record(record(CWL, lambdaArn="arn"), "processing-failed", OPTIONS)
    assert [e.payload for e in original.events] == [CWL]
    two = firehose_record(record(HEC + HEC.replace(b'"a"', b'"b"'), EventId="e"),
                          "splunk-failed", OPTIONS)  # fmt: skip
    assert [unwrap(e.payload) for e in two.events] == [
        (HEC, "event"),
        (HEC.replace(b'"a"', b'"b"'), "event"),
    ]
    assert [e.event_id for e in two.events] == ["e:0", "e:1"]
    again = firehose_record(record(wrap(HEC, "event"), endpoint="event"), "replay-failed", OPTIONS)
    assert [e.payload for e in again.events] == [wrap(HEC, "event")]  # not nested


# ------------------------------------------------------------------ the sink


class FakeFirehose:
    """Answers PutRecordBatch like AWS: entries listed in ``fail`` (by their data) fail with
    ``ErrorCode`` the given number of times; ``error`` fails every call."""

    def __init__(self, fail: dict[bytes, int] | None = None, error: str | None = None) -> None:
        self.fail = dict(fail or {})
        self.error = error
        self.calls: list[list[bytes]] = []
        self.stored: list[bytes] = []
        self.closed = False

    def put_record_batch(self, DeliveryStreamName: str, Records: list[dict[str, bytes]]) -> Any:
        if self.error:
            raise ClientError({"Error": {"Code": self.error, "Message": "no"}}, "PutRecordBatch")
        data = [entry["Data"] for entry in Records]
        self.calls.append(data)
        answers: list[dict[str, str]] = []
        for item in data:
            if self.fail.get(item, 0) > 0:
                self.fail[item] -= 1
                answers.append({"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "x"})
            else:
                self.stored.append(item)
                answers.append({"RecordId": "r"})
        failed = sum("ErrorCode" in a for a in answers)
        return {"FailedPutCount": failed, "RequestResponses": answers}

    def close(self) -> None:
        self.closed = True


def make_sink(
    client: FakeFirehose, tmp_path: Path, attempts: int = 3
) -> tuple[FirehoseSink, LocalSpool, list[float]]:
    sleeps: list[float] = []
    putter = FirehoseReingester(
        client,  # type: ignore[arg-type]
        "s",
        policy=ReingestPolicy(max_attempts=attempts, backoff_base_s=0.01, backoff_max_s=0.02),
        sleep=sleeps.append,
    )
    spool = LocalSpool(tmp_path)
    backsplash = ReplayFailedBacksplash(spool, tracked=True)
    return FirehoseSink(putter, "s", backsplash=backsplash, on_close=client.close), spool, sleeps


def events(count: int, size: int = 10) -> list[EncodedEvent]:
    return [EncodedEvent(f"{i:0{size}d}".encode(), f"id{i}") for i in range(count)]


def test_puts_go_in_batches_of_500_and_4_mib(tmp_path: Path) -> None:
    client = FakeFirehose()
    sink, _, _ = make_sink(client, tmp_path)
    sink.submit(events(1001))
    sink.close()
    assert [len(call) for call in client.calls] == [500, 500, 1]
    big = FakeFirehose()
    sink, _, _ = make_sink(big, tmp_path)
    sink.submit(events(9, size=900 * 1024))  # 9 x 900 KiB: 4 per call fit in 4 MiB
    sink.close()
    assert [len(call) for call in big.calls] == [4, 4, 1]
    assert sink.ledger.summary()["acknowledged"] == 9 and big.closed


def test_failed_entries_are_retried_until_they_go(tmp_path: Path) -> None:
    batch = events(5)
    client = FakeFirehose(fail={batch[1].payload: 2, batch[3].payload: 1})
    sink, spool, sleeps = make_sink(client, tmp_path)
    sink.submit(batch)
    sink.flush()
    assert [len(call) for call in client.calls] == [5, 2, 1]  # only the failed ones again
    assert sorted(client.stored) == sorted(e.payload for e in batch)  # each once
    assert len(sleeps) == 2
    assert list(spool.list_keys()) == []
    summary = sink.ledger.summary()
    assert (summary["acknowledged"], summary["backsplashed"], summary["balanced"]) == (5, 0, True)


def test_what_still_fails_goes_under_replay_failed(tmp_path: Path) -> None:
    batch = events(3)
    client = FakeFirehose(fail={batch[2].payload: 99})
    sink, spool, _ = make_sink(client, tmp_path, attempts=3)
    sink.submit(batch)
    sink.flush()
    assert len(client.calls) == 3  # bounded attempts
    [key] = spool.list_keys()
    assert key.startswith("replay-failed/")
    [stored] = list(decode_records(spool.read_bytes(key)))
    assert base64.b64decode(stored["rawData"]) == batch[2].payload
    assert stored["errorCode"] == "Firehose.ServiceUnavailableException"
    assert sink.fatal is None
    summary = sink.ledger.summary()
    assert (summary["acknowledged"], summary["backsplashed"], summary["balanced"]) == (2, 1, True)


def test_an_unknown_stream_stops_the_run_and_stores_what_was_in_flight(tmp_path: Path) -> None:
    client = FakeFirehose(error="ResourceNotFoundException")
    sink, spool, _ = make_sink(client, tmp_path)
    sink.submit(events(2))
    sink.flush()
    assert sink.fatal is not None and "ResourceNotFoundException" in sink.fatal.message
    sink.submit(events(1))
    sink.close()
    assert len(list(spool.list_keys())) == 2
    assert sink.ledger.summary()["backsplashed"] == 3 and client.closed


def test_the_flag_reaches_the_options_and_an_empty_stream_is_refused() -> None:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["s3://b/p", "--via-firehose", "splunk-delivery"])
    assert command.options_from_args(args, {}).via_firehose == "splunk-delivery"
    assert command.options_from_args(parser.parse_args(["s3://b/p"]), {}).via_firehose is None
    with pytest.raises(ValueError, match="delivery stream"):
        ReplayOptions(via_firehose=" ")


def test_failure_is_stored_with_the_event_endpoint() -> None:
    assert Failure("Firehose.X", "m", 1, "event").endpoint == "event"
