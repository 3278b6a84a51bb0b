"""Re-ingestion: put back into the source stream what does not fit in Firehose's response.

The only boto3 user in ``transforms/``; ``transforms.firehose`` imports it lazily, on the first
invocation that overflows, so the transform's cold start never pays for boto3.

Firehose sources get ``PutRecordBatch`` (at most 500 records and 4 MiB per call, 1000 KiB per
record); Kinesis sources get ``PutRecords`` (500 records and 5 MiB per call, partition keys
counted, 1 MiB per record). Both answer 200 even when some entries failed: the per-entry
``ErrorCode`` (with ``FailedPutCount`` / ``FailedRecordCount``) says which, and only those are
sent again, with exponential backoff and full jitter, within the Lambda's remaining time.

``put`` never raises for the stream's sake: it returns a :class:`ReingestReport` naming the
records that did not make it back (still failing, a call that failed, a record too large, no
time left), and the transform answers those ``ProcessingFailed`` with their original data.
Failing the invocation instead would make Firehose retry all of it and put the records of the
chunks that did succeed a second time (DESIGN.md sections 2 and 5).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import boto3
import structlog
import tenacity
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_firehose import FirehoseClient
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_kinesis.type_defs import PutRecordsRequestEntryTypeDef
else:  # the stubs are a dev dependency; at run time the clients are plain boto3 objects
    FirehoseClient = KinesisClient = Any

#: One record to put back: its bytes and, for Kinesis, its partition key.
ReingestRecord = tuple[bytes, str | None]

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class PutApi:
    """One put operation of a stream service and its limits per call and per record.

    Attributes:
        service: the boto3 service name.
        operation: the API operation, as logged.
        max_records: records per call.
        max_bytes: bytes per call (data plus partition key).
        max_record_bytes: bytes per record (data plus partition key).
    """

    service: str
    operation: str
    max_records: int
    max_bytes: int
    max_record_bytes: int


#: Firehose API reference, "PutRecordBatch".
PUT_RECORD_BATCH = PutApi("firehose", "PutRecordBatch", 500, 4 * 1024 * 1024, 1000 * 1024)
#: Kinesis API reference, "PutRecords"; the partition key counts.
PUT_RECORDS = PutApi("kinesis", "PutRecords", 500, 5 * 1024 * 1024, 1024 * 1024)


@dataclass(frozen=True, slots=True)
class ReingestPolicy:
    """How hard to retry failed entries: the numbers, not the code.

    Attributes:
        max_attempts: calls per chunk, the first included.
        backoff_base_s: first backoff step (exponential, full jitter).
        backoff_max_s: longest single backoff step.
        time_margin_s: Lambda time kept free for answering Firehose; no retry starts
            (nor sleeps) into it.
    """

    max_attempts: int = 8
    backoff_base_s: float = 0.1
    backoff_max_s: float = 4.0
    time_margin_s: float = 3.0


class ReingestError(Exception):
    """No reingester can be built for this invocation (no usable stream ARN)."""


@dataclass(frozen=True, slots=True)
class ReingestReport:
    """What came of one ``put``: which records did not make it back, and why.

    Attributes:
        failed: positions (into the records given to ``put``) of the records not put back,
            ascending. A record listed here may still have arrived when a call's answer was
            lost after the stream took it (a timeout, a broken connection).
        error_codes: the distinct error codes behind them, sorted.
    """

    failed: tuple[int, ...] = ()
    error_codes: tuple[str, ...] = ()

    @classmethod
    def all_failed(cls, count: int, error_code: str) -> ReingestReport:
        """Nothing was put back."""
        return cls(tuple(range(count)), (error_code,) if count else ())


class _PartialFailure(Exception):
    """Some entries of one call failed; carries their error codes (internal retry signal)."""

    def __init__(self, error_codes: list[str]) -> None:
        super().__init__(f"{len(error_codes)} entries failed: {sorted(set(error_codes))}")
        self.error_codes = error_codes


class Reingester(Protocol):
    """Something that puts records back into the source stream and says which did not go."""

    def put(self, records: Sequence[ReingestRecord]) -> ReingestReport:
        """Put every record it can; report the others (never raise for the stream's sake)."""


def record_size(record: ReingestRecord) -> int:
    """Bytes a record counts against the API's limits: data plus partition key."""
    data, key = record
    return len(data) + (len(key.encode()) if key else 0)


def plan_chunks(
    records: Sequence[ReingestRecord], *, max_records: int, max_bytes: int, max_record_bytes: int
) -> tuple[list[list[int]], list[int]]:
    """Group records into API calls that respect the service's count and byte limits.

    Args:
        records: data and partition key of each record, in order.
        max_records: records per call.
        max_bytes: bytes per call (data plus partition key).
        max_record_bytes: bytes per record (data plus partition key).

    Returns:
        ``(chunks, too_large)``: consecutive chunks of positions into ``records``, in order,
        and the positions of the records larger than one record may be (never sent).
    """
    chunks: list[list[int]] = []
    too_large: list[int] = []
    current: list[int] = []
    current_bytes = 0
    for position, record in enumerate(records):
        size = record_size(record)
        if size > max_record_bytes:
            too_large.append(position)
            continue
        if current and (len(current) >= max_records or current_bytes + size > max_bytes):
            chunks.append(current)
            current, current_bytes = [], 0
        current.append(position)
        current_bytes += size
    if current:
        chunks.append(current)
    return chunks, too_large


def arn_parts(arn: str) -> tuple[str, str]:
    """The region and resource name of a Firehose or Kinesis stream ARN.

    ``arn:aws:firehose:us-east-1:123456789012:deliverystream/NAME`` -> ("us-east-1", "NAME").

    Raises:
        ValueError: not a stream ARN.
    """
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or "/" not in parts[5] or not parts[3]:
        raise ValueError(f"not a stream ARN: {arn!r}")
    return parts[3], parts[5].split("/", 1)[1]


#: One put call's socket bounds: a hung endpoint must not hold the Lambda until it is killed
#: (a killed invocation is retried whole by Firehose, re-putting what had gone back already).
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 20.0


def make_client(service: str, region: str) -> Any:
    """A boto3 client for ``service`` in ``region``; endpoints follow ``AWS_ENDPOINT_URL*``."""
    return boto3.client(  # type: ignore[call-overload]
        service,
        region_name=region,
        config=Config(
            retries={"mode": "standard"},
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
        ),
    )


class _ClosableClient(Protocol):
    def close(self) -> None: ...


ClientT = TypeVar("ClientT", bound=_ClosableClient)


@dataclass(eq=False)
class _StreamReingester(Generic[ClientT]):
    """Chunking and the retry loop; subclasses make one API call and report failed entries."""

    api: ClassVar[PutApi]

    client: ClientT
    stream_name: str
    _: KW_ONLY
    policy: ReingestPolicy = ReingestPolicy()
    remaining_s: Callable[[], float] | None = None
    sleep: Callable[[float], None] = time.sleep
    calls: int = field(default=0, init=False)

    def _send(self, records: list[ReingestRecord]) -> list[tuple[int, str]]:
        """One API call; returns the positions (in ``records``) that failed, with codes."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def _out_of_time(self) -> bool:
        return self.remaining_s is not None and self.remaining_s() < self.policy.time_margin_s

    def put(self, records: Sequence[ReingestRecord]) -> ReingestReport:
        """Put every record it can, chunked to the API's limits, retrying failed entries.

        Each chunk is tried on its own: a chunk that gives up does not stop the next ones, but
        no chunk starts (and no retry sleeps) into the time kept for answering Firehose.

        Returns:
            The records that were not put back: entries still failing when attempts or time
            ran out, chunks whose call failed after botocore's own retries, chunks not started
            for lack of time, and records above the per-record limit.
        """
        chunks, too_large = plan_chunks(
            records,
            max_records=self.api.max_records,
            max_bytes=self.api.max_bytes,
            max_record_bytes=self.api.max_record_bytes,
        )
        failed: dict[int, str] = dict.fromkeys(too_large, "RecordTooLarge")
        for position in too_large:
            log.error(
                "reingest_failed",
                operation=self.api.operation,
                failed=1,
                of=1,
                error_codes=["RecordTooLarge"],
                record_bytes=record_size(records[position]),
                max_record_bytes=self.api.max_record_bytes,
            )
        for number, chunk in enumerate(chunks):
            if self._out_of_time():
                left = [position for later in chunks[number:] for position in later]
                failed.update(dict.fromkeys(left, "NoTimeLeft"))
                log.error(
                    "reingest_failed",
                    operation=self.api.operation,
                    failed=len(left),
                    of=len(left),
                    error_codes=["NoTimeLeft"],
                    chunks_not_started=len(chunks) - number,
                )
                break
            failed.update(self._put_chunk(records, chunk))
        return ReingestReport(tuple(sorted(failed)), tuple(sorted(set(failed.values()))))

    def _put_chunk(self, records: Sequence[ReingestRecord], chunk: list[int]) -> dict[int, str]:
        """Put one chunk, retrying its failed entries; returns the positions still failing."""
        pending = chunk
        codes: dict[int, str] = {}
        attempts = 0

        def attempt() -> None:
            nonlocal pending, codes, attempts
            self.calls += 1
            attempts += 1
            failed = self._send([records[position] for position in pending])
            if failed:
                codes = {pending[index]: code for index, code in failed}
                pending = list(codes)
                raise _PartialFailure(list(codes.values()))

        def before_sleep(state: tenacity.RetryCallState) -> None:
            log.warning(
                "reingest_retry_scheduled",
                operation=self.api.operation,
                failed=len(pending),
                attempt=state.attempt_number,
                sleep_s=round(state.upcoming_sleep, 3),
                error_codes=_error_codes(state),
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_any(
                tenacity.stop_after_attempt(self.policy.max_attempts),
                _StopBeforeDeadline(self.remaining_s, self.policy.time_margin_s),
            ),
            wait=tenacity.wait_random_exponential(
                multiplier=self.policy.backoff_base_s, max=self.policy.backoff_max_s
            ),
            retry=tenacity.retry_if_exception_type(_PartialFailure),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        log_gave_up, extra = log.error, {}
        try:
            retrying(attempt)
        except _PartialFailure:
            pass
        except (BotoCoreError, ClientError) as exc:
            # The stream may have taken the call whose answer was lost: these records may
            # arrive although they are reported failed (the one source of duplicates left).
            codes = dict.fromkeys(pending, _client_error_code(exc))
            log_gave_up, extra = log.warning, {"error": str(exc)[:300]}
        else:
            return {}
        log_gave_up(
            "reingest_failed",
            operation=self.api.operation,
            failed=len(codes),
            of=len(chunk),
            attempts=attempts,
            error_codes=sorted(set(codes.values())),
            **extra,
        )
        return codes


def _client_error_code(exc: BotoCoreError | ClientError) -> str:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(exc).__name__


class _StopBeforeDeadline(tenacity.stop.stop_base):
    """Stop when the next sleep would eat into the Lambda time kept for answering."""

    def __init__(self, remaining_s: Callable[[], float] | None, margin_s: float) -> None:
        self.remaining_s = remaining_s
        self.margin_s = margin_s

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        if self.remaining_s is None:
            return False
        return self.remaining_s() - retry_state.upcoming_sleep < self.margin_s


def _error_codes(state: tenacity.RetryCallState) -> list[str]:
    exc = state.outcome.exception() if state.outcome is not None else None
    return sorted(set(exc.error_codes)) if isinstance(exc, _PartialFailure) else []


class FirehoseReingester(_StreamReingester[FirehoseClient]):
    """``PutRecordBatch`` into a Firehose delivery stream (DirectPut sources)."""

    api = PUT_RECORD_BATCH

    def _send(self, records: list[ReingestRecord]) -> list[tuple[int, str]]:
        response = self.client.put_record_batch(
            DeliveryStreamName=self.stream_name,
            Records=[{"Data": data} for data, _key in records],
        )
        return _failed_entries(
            len(records), response.get("FailedPutCount"), response["RequestResponses"]
        )


class KinesisReingester(_StreamReingester[KinesisClient]):
    """``PutRecords`` into a Kinesis stream, keeping each record's partition key."""

    api = PUT_RECORDS

    def _send(self, records: list[ReingestRecord]) -> list[tuple[int, str]]:
        entries: list[PutRecordsRequestEntryTypeDef] = [
            {"Data": data, "PartitionKey": key or default_partition_key(data)}
            for data, key in records
        ]
        response = self.client.put_records(StreamName=self.stream_name, Records=entries)
        return _failed_entries(len(records), response.get("FailedRecordCount"), response["Records"])


def _failed_entries(
    sent: int, failed_count: int | None, entries: Sequence[Mapping[str, Any]]
) -> list[tuple[int, str]]:
    """Positions and codes of the entries that carry an ``ErrorCode`` (none when the answer
    counts no failure).

    An answer whose entries do not match the records sent one for one cannot say which
    records arrived: all of them count as failed (the transform backs them up).
    """
    if not failed_count:
        return []
    if len(entries) != sent:
        return [(index, "MalformedResponse") for index in range(sent)]
    return [
        (index, str(entry.get("ErrorCode") or "Unknown"))
        for index, entry in enumerate(entries)
        if "ErrorCode" in entry
    ]


def default_partition_key(data: bytes) -> str:
    """A partition key for a record that arrived without one: stable for the same bytes."""
    return hashlib.sha256(data).hexdigest()


def reingester_for(
    *,
    delivery_stream_arn: str | None,
    kinesis_stream_arn: str | None,
    policy: ReingestPolicy = ReingestPolicy(),
    remaining_s: Callable[[], float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> FirehoseReingester | KinesisReingester:
    """The reingester for an invocation's source: its Kinesis stream if any, else its Firehose.

    Args:
        delivery_stream_arn: the event's ``deliveryStreamArn``.
        kinesis_stream_arn: the event's ``sourceKinesisStreamArn`` (Kinesis-sourced streams).
        policy: retry numbers.
        remaining_s: seconds the Lambda has left (from the context); None means no deadline.
        sleep: how to wait between retries (tests pass a recorder).

    Raises:
        ReingestError: the event names no usable stream ARN.
    """
    kind: type[FirehoseReingester] | type[KinesisReingester]
    if kinesis_stream_arn:
        kind, arn = KinesisReingester, kinesis_stream_arn
    elif delivery_stream_arn:
        kind, arn = FirehoseReingester, delivery_stream_arn
    else:
        raise ReingestError("cannot re-ingest: the event names no source stream ARN")
    try:
        region, name = arn_parts(arn)
        client = make_client(kind.api.service, region)
    except (ValueError, BotoCoreError) as exc:
        raise ReingestError(f"cannot re-ingest: {exc}") from exc
    return kind(client, name, policy=policy, remaining_s=remaining_s, sleep=sleep)
