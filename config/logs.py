"""structlog configured once: JSON lines in Lambda and daemons, readable output on a TTY.

Event names are stable identifiers (``<noun>_<past verb>``); dashboards and alerts key on
them. The full list:

Transform (``transforms.firehose``):
    firehose_invocation_summarized  one per invocation: records_in, ok, dropped,
                                    processing_failed, control_messages, empty_batches,
                                    events_out, unparsed_lines, bytes_in, bytes_out,
                                    response_bytes, reingested_records, split_records,
                                    reingested_pieces, reingested_bytes,
                                    reingest_failed_records, partially_reingested_records,
                                    demoted_records
    record_failed                   a record became ProcessingFailed (reason, recordId;
                                    reingest_failed, answer_full: room for those echoes)
    record_dropped                  a record was dropped (reason: control_message,
                                    empty_batch, split, reingested; per record at debug)
    records_reingested              overflow put back into the source stream
    reingest_retry_scheduled        a PutRecordBatch/PutRecords call is retried (failed count)
    reingest_failed                 re-ingestion gave up on some records; they are answered
                                    ProcessingFailed (the invocation never fails for it)

Delivery (``forwarder.delivery``, ``forwarder.hec``, ``forwarder.backsplash``):
    batch_sent                      HEC accepted a request (url, events, bytes, ack_id)
    retry_scheduled                 a retryable HEC answer or network error; backoff follows
    ack_confirmed                   an indexer acknowledged a batch
    ack_expired                     no ack within the timeout; the batch is re-sent
    hec_ack_unavailable             the token has acknowledgment disabled (warned once)
    hec_rejected                    HEC refused data (code, text); it goes to the backsplash
    fallback_index_resent           HEC refused an event's index (code 7); it is re-sent once
                                    to SPLUNK_FALLBACK_INDEX (url, index, event_id)
    hec_fatal                       token or channel problem; delivery stops
    hec_url_unhealthy               a URL left the rotation; hec_url_recovered when it returns
    hec_url_recovered
    hec_ack_restored                HEC hands out ackIds again on a URL whose acks were off
    hec_request_stuck               a request's thread did not end after its bound (left behind)
    concurrency_limit_changed       SPLUNK_HEC_CONCURRENCY=adaptive moved its limit (limit,
                                    previous, reason: pushback, latency_rising, latency_held;
                                    debug)
    deliverer_released              a dropped deliverer still held events (counted in flight)
    backsplash_written              events stored in S3 (key, events, reason)
    backsplash_failed               S3 refused the write after retries (spooled=True when a
                                    local spool took the events instead)
    hec_url_probe_failed            an unhealthy URL's health probe failed (debug)
    ack_poll_failed                 an ack poll request failed; it is retried (debug)
    delivery_summarized             the ledger: in = acknowledged + backsplashed + dropped
                                    (with [destinations.NAME]: destinations, a row each;
                                    each destination's own lines carry destination=NAME)
    backsplash_record_unrouted      push/daemon: a backsplash record names a destination the
                                    settings lack; stored under replay-failed/
    input_unreadable                forward: the input broke midway (corrupt or truncated gzip);
                                    what was read is delivered, the rest counted as dropped

Push Lambda (``forwarder.push``):
    push_invocation_summarized      one per invocation: shape, items, failures, the ledger
    event_unrecognized              an event of no known shape (the invocation fails)
    items_deferred                  Kinesis/SQS items not started before the deadline
                                    (reported in batchItemFailures)

Daemon (``forwarder.daemon``, ``forwarder.sources``, ``forwarder.delivery.metrics``):
    daemon_started, daemon_stopped  start and end, with the exit status
    shutdown_requested              first signal: stop reading, drain within the grace
    input_not_finished              a files/stdin run stopped before the end of its input
                                    (where it stopped; those sources keep no checkpoint)
    shutdown_grace_expired          the grace ran out; the rest is backsplashed
    shutdown_forced                 second signal: backsplash everything, exit 130
    metrics_started                 health and metrics server listening
    checkpoint_saved                a checkpoint advanced (carries the ledger)
    record_unprocessable            a record the transform refused (stored under
                                    processing-failed/)
    spool_drained, spool_drain_failed   the local spool to S3
    source_attached
    source_operation_failed         a source operation (attach, poll, commit, release) failed
                                    (kind, reason); retried after a backoff, /readyz not ready
    source_recovered                a source operation succeeded after failures
    source_reattached               a Kinesis source re-read from its checkpoints after a
                                    failed poll
    source_release_failed           records could not be handed back (not committed either)
    shard_discovered, shard_ended   Kinesis shards appearing (splits, merges) and finishing
    shard_end_committed             SHARD_END written as the end came on an empty read
    shard_pinned                    LATEST shards pinned (AT_TIMESTAMP) before their first read
    shard_iterator_fetched          a shard iterator and its type (debug)
    shard_iterator_expired          Kinesis expired an iterator; fetched again from the position
    line_truncated                  a stdin line over the cap was cut (the rest skipped)
    source_throttled                Kinesis throttling; backing off
    source_read_failed              a read failed; retried
    visibility_extended             an in-flight SQS message kept invisible (debug)
    visibility_extension_failed
    message_unrecognized            an SQS body that is not an S3 notification
    message_ignored                 s3:TestEvent and the like
    message_deleted                 after delivery (debug)
    object_skipped                  an S3 object left for another tool (backsplash objects)
    object_failed                   an S3 object could not be read; its message stays queued
    line_dropped                    a line too long to read (8 MiB) skipped as it streamed and
                                    counted dropped, line_too_long (push Lambda too)
    firehose_request_received       firehose-http source: a Firehose request taken in
    firehose_request_answered       ... answered 200 (every event acknowledged or backsplashed)
                                    or 500 (released at shutdown: Firehose retries)
    firehose_request_rejected       401 (access key), 400, 411, 413 or 503 (too many waiting)
    firehose_answer_failed          the answer could not be written back to Firehose
    firehose_request_expired        not settled by answer_timeout_s + 15 s: answered 500
    firehose_connection_refused     over max_connections with nothing to shed: 503 (logged at
                                    most every 10 s, with counts)
    firehose_connections_capped     max_connections lowered to fit the descriptor limit
    firehose_connection_expired     a request did not arrive within request_timeout_s (debug)
    firehose_connection_failed      handling one connection raised; that connection is closed

Replay (``forwarder.replay.engine``):
    replay_started                  the run begins (uri, selection)
    replay_object_started           an object is being read (debug)
    replay_object_finished          an object is done (events delivered, failed again)
    replay_object_skipped           already done or outside the selection (debug)
    replay_object_failed            an object could not be read
    replay_record_corrupt           a line that is not a backsplash record (key, line number)
    replay_record_unrouted          a record names a destination the settings lack; stored
                                    under replay-failed/ (Splunk.UnknownDestination)
    replay_records_exhausted        records past --max-attempts, left in place
    replay_object_archived          moved under replayed/ (--archive)
    replay_object_deleted           deleted after success (--delete)
    replay_object_kept              not archived/deleted: it still holds unreplayed records,
                                    or was rewritten since it was read (objects_changed)
    replay_progressed               periodic progress (when not on a terminal)
    replay_stopped                  interrupted; the state file lets the next run resume
    replay_summarized               the run's totals (also one delivery_summarized, replay=True)

Drain (``forwarder.drain``: ``forwarder drain``, the daemon's [drain], the drain Lambda):
    drain_gate_closed               HEC's health, token or ack probe failed: nothing replayed
    drain_cycle_stopped             a cycle stopped at a sign of trouble (retry, ack timeout,
                                    failed probe), a stop request or the deadline
    drain_cycle_finished            a cycle's figures (outcome, objects, events, requeued,
                                    abandoned, possible duplicates)
    drain_paused                    the bounded wait before gating again
    drain_started, drain_stopped    the daemon's drainer thread; the drain's end, with totals
    drain_failed                    the daemon's drainer thread ended on an unexpected error
    drain_backlog_measured          the drain Lambda's Embedded Metric Format line
    events_abandoned                events failed their last automatic attempt: under
                                    replay-failed/, for a person (key, events, max_attempts)

HEC emulator (``forwarder.devtools.emulator``):
    hec_emulator_started            listening (url); hec_emulator_stopped at the end
    hec_emulator_stopped
    hec_emulator_faults_set         the fault plan changed
    hec_emulator_connection_failed  a client connection broke (debug)

Configuration:
    settings_warning                a valid but risky setting (printed at start-up)
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from config.settings import LogSettings

REDACTED = "[REDACTED]"
_AUTH_HEADER = re.compile(r"(Splunk)\s+[A-Za-z0-9._~+/=-]{8,}")
_secrets: set[str] = set()


def register_secret(secret: str | None) -> None:
    """Make every later log line replace this value with [REDACTED]."""
    if secret and len(secret) >= 4:
        _secrets.add(secret)


def redact_text(text: str) -> str:
    """Remove registered secrets and ``Splunk <token>`` headers from a string."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _AUTH_HEADER.sub(rf"\1 {REDACTED}", text) if "Splunk" in text else text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no token survives into a rendered line, whatever field holds it."""
    for key, value in event_dict.items():
        event_dict[key] = _redact_value(value)
    return event_dict


def configure_logging(settings: LogSettings, *, stream: TextIO | None = None) -> None:
    """Configure structlog for this process. Safe to call more than once (last call wins)."""
    out = stream if stream is not None else sys.stderr
    use_console = settings.format == "console" or (settings.format == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[settings.level]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
