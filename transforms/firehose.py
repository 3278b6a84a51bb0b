"""The Firehose transformation Lambda (``transforms.firehose.handler``): a thin adapter.

It loads the settings once per container, builds the re-ingester for the invocation's source
stream on first use (boto3 is imported only then) and hands the event to the invocation core,
``transforms.firehose_invocation``; the wire format and the answer's byte arithmetic are in
``transforms.firehose_codec``. ``forwarder transform FILE`` shows what the same core makes of a
file (``transform_file_contents``). The only module of ``transforms/`` that reads ``config/``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from transforms.cloudwatch import GZIP_MAGIC
from transforms.errors import DecodeError
from transforms.firehose_codec import FirehoseResponse, InvalidEventError, parse_event
from transforms.firehose_invocation import transform_invocation, transform_record
from transforms.pipeline import transform_lines, transform_payload
from transforms.vpc_flow import DEFAULT_FIELDS, is_header_line

if TYPE_CHECKING:
    from config.settings import Settings
    from transforms.records import EncodedBatch
    from transforms.reingest import (
        FirehoseReingester,
        KinesisReingester,
        Reingester,
        ReingestRecord,
        ReingestReport,
    )

#: The Lambda's interface: the handler with its answer and error types, the settings hook, the
#: core for callers that bring their own settings and re-ingester, and ``forwarder transform``.
__all__ = [
    "FirehoseResponse",
    "InvalidEventError",
    "current_settings",
    "handler",
    "transform_event",
    "transform_file_contents",
    "use_settings",
]

log = structlog.get_logger()


def transform_event(
    event: Mapping[str, Any], settings: Settings, *, reingester: Reingester
) -> FirehoseResponse:
    """The handler's core: transform every record, fit the answer, re-ingest the overflow.

    Args:
        event: the Firehose transformation event.
        settings: transform options and the response limit.
        reingester: where overflow goes (the source stream in Lambda; a fake in tests).

    Returns:
        The answer, every recordId exactly once, in input order, within the size limit
        (see ``firehose_invocation.transform_invocation``).

    Raises:
        InvalidEventError: the event has a record without a recordId.
    """
    return transform_invocation(
        event,
        settings.transform,
        limit_bytes=settings.firehose.response_limit_bytes,
        reingester=reingester,
    )


# --- the Lambda entry point -----------------------------------------------------------------


class _Loaded:
    """Settings for this container: loaded on the first invocation, never at import."""

    settings: Settings | None = None


def use_settings(settings: Settings | None) -> None:
    """Set the container's settings (tests), or forget them so the next call reloads."""
    _Loaded.settings = settings


def current_settings() -> Settings:
    """The container's settings, loading them (and configuring logging) the first time.

    Raises:
        config.loader.ConfigError: a setting is invalid; the invocation fails loudly.
    """
    if _Loaded.settings is None:
        from config.loader import load_settings  # noqa: PLC0415 - lazily, once per container
        from config.logs import configure_logging  # noqa: PLC0415

        settings = load_settings(os.environ)
        configure_logging(settings.log)
        _Loaded.settings = settings
    return _Loaded.settings


class _SourceStreamReingester:
    """Builds the boto3-backed reingester on first use, so most invocations never import it."""

    def __init__(self, event: Mapping[str, Any], remaining_s: Callable[[], float] | None) -> None:
        self.delivery_stream_arn = _str_or_none(event.get("deliveryStreamArn"))
        self.kinesis_stream_arn = _str_or_none(event.get("sourceKinesisStreamArn"))
        self.remaining_s = remaining_s
        self.inner: FirehoseReingester | KinesisReingester | None = None

    def put(self, records: Sequence[ReingestRecord]) -> ReingestReport:
        from transforms.reingest import (  # noqa: PLC0415 - boto3 is slow
            ReingestError,
            ReingestReport,
            reingester_for,
        )

        if self.inner is None:
            try:
                self.inner = reingester_for(
                    delivery_stream_arn=self.delivery_stream_arn,
                    kinesis_stream_arn=self.kinesis_stream_arn,
                    remaining_s=self.remaining_s,
                )
            except ReingestError:
                log.exception("reingest_failed", failed=len(records), of=len(records))
                return ReingestReport.all_failed(len(records), "NoSourceStream")
        return self.inner.put(records)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _remaining_seconds(context: Any) -> Callable[[], float] | None:
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    if not callable(remaining_ms):
        return None
    return lambda: float(remaining_ms()) / 1000.0


def handler(event: Mapping[str, Any], context: Any) -> FirehoseResponse:
    """Lambda entry point for the Firehose transformation (``transforms.firehose.handler``).

    Raises:
        config.loader.ConfigError: the function is misconfigured.
        InvalidEventError: the event is not an object, or a record has no recordId.
    """
    settings = current_settings()
    if not isinstance(event, Mapping):
        raise InvalidEventError(f"the event is a JSON {type(event).__name__}, not an object")
    invocation_id = event.get("invocationId")
    with structlog.contextvars.bound_contextvars(
        aws_request_id=getattr(context, "aws_request_id", None), invocation_id=invocation_id
    ):
        reingester = _SourceStreamReingester(event, _remaining_seconds(context))
        try:
            return transform_event(event, settings, reingester=reingester)
        finally:
            reingester.close()


# --- forwarder transform FILE -----------------------------------------------------------------


def transform_file_contents(
    data: bytes, settings: Settings, *, name: str | None = None
) -> list[str]:
    """What the transform makes of a file, one HEC event per string (``forwarder transform``).

    Pure: nothing is sent or re-ingested. Accepted inputs, sniffed in this order:

    - gzip: a CloudWatch Logs subscription payload;
    - JSON with a ``records`` list: a Firehose transformation event; each record goes through
      the handler's per-record core (``transform_record``). The response-size step is skipped,
      so every record's events are shown; records that fail are logged (``record_failed``)
      and contribute nothing;
    - JSON ``{"awslogs": {"data": ...}}``: a push Lambda's CloudWatch Logs event;
    - other JSON (``{"message": "<flow line>"}`` per line...): one Firehose record;
    - anything else: a flow-log text file, one line per flow; a header line (S3 files) names
      the fields, otherwise ``VPC_FLOW_LOG_FORMAT`` (default version 2) applies.

    Args:
        data: the file's bytes.
        settings: routing, formats and endpoint.
        name: the file's name, used as the source of a flow-log text file.

    Returns:
        Event-endpoint JSON objects, or raw-endpoint lines, as text.

    Raises:
        TransformError: a single payload (not a Firehose event) cannot be decoded.
    """
    options = settings.transform
    if data.startswith(GZIP_MAGIC):
        return _payload_texts(transform_payload(data, options))
    if data.lstrip().startswith(b"{"):
        document = _json_object(data)
        if document is not None and isinstance(document.get("records"), list):
            lines: list[str] = []
            for record in parse_event(document):
                outcome = transform_record(record, options, keep_lines=True)
                lines.extend(_texts(outcome.lines))
            return lines
        awslogs = document.get("awslogs") if document is not None else None
        if isinstance(awslogs, Mapping) and isinstance(awslogs.get("data"), str):
            try:
                payload = base64.b64decode(awslogs["data"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise DecodeError(f"awslogs.data is not base64: {exc}") from None
            return _payload_texts(transform_payload(payload, options))
        return _payload_texts(transform_payload(data, options))
    text_lines = data.decode("utf-8", "replace").splitlines()
    first = next((line for line in text_lines if line.strip()), "")
    batch = transform_lines(
        text_lines,
        log_group=None,
        log_stream=name,
        options=options,
        flow_fields=None if is_header_line(first) else options.flow_log_format or DEFAULT_FIELDS,
    )
    return _payload_texts(batch)


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _payload_texts(batch: EncodedBatch) -> list[str]:
    return _texts(event.payload for event in batch.events)


def _texts(payloads: Iterable[bytes]) -> list[str]:
    return [payload.decode("utf-8", "replace") for payload in payloads]
