"""The Firehose transformation Lambda (``transforms.firehose.handler``): a thin adapter.

It loads the settings once per container, builds the re-ingester for the invocation's source
stream on first use (boto3 is imported only then) and hands the event to the invocation core,
``transforms.firehose_invocation``; the wire format and the answer's byte arithmetic are in
``transforms.firehose_codec``. The only module of ``transforms/`` that reads ``config/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from transforms.firehose_codec import FirehoseResponse, InvalidEventError
from transforms.firehose_invocation import transform_invocation

if TYPE_CHECKING:
    from config.settings import Settings
    from transforms.reingest import (
        FirehoseReingester,
        KinesisReingester,
        Reingester,
        ReingestRecord,
        ReingestReport,
    )

#: The Lambda's interface: the handler with its answer and error types, the settings hook, the
#: core for callers that bring their own settings and re-ingester.
__all__ = [
    "FirehoseResponse",
    "InvalidEventError",
    "current_settings",
    "handler",
    "transform_event",
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
        from config.destinations import require_single_destination  # noqa: PLC0415
        from config.loader import load_settings  # noqa: PLC0415 - lazily, once per container
        from config.logs import configure_logging  # noqa: PLC0415

        settings = load_settings(os.environ)
        require_single_destination(settings.transform.routes)  # Firehose has one destination
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
