"""One object, chunk by chunk: stream its records, select and decode each, hand the events
to the deliverers, and after every ``chunk_bytes`` of payload flush them and commit.

After a flush each event is acknowledged or stored under ``replay-failed/``; only then are
the chunk's records written to the state file (:mod:`forwarder.replay.state`), so an
interrupted run resumes after the last committed chunk and never re-sends what it delivered.
Records with ``replayAttempts >= max_attempts`` are skipped (counted, left in place).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from config.settings import Settings
from forwarder.backsplash.codec import (
    READ_CHUNK_BYTES,
    CorruptLine,
    CorruptRecordError,
    DecodedRecord,
    RawRecord,
    decode_record,
    iter_records,
    record_kind,
    record_meta,
)
from forwarder.backsplash.layout import Kind, key_kind
from forwarder.backsplash.writers import EventOrigin
from forwarder.errors import BacksplashError
from forwarder.replay.dispose import dispose
from forwarder.replay.firehose import firehose_record
from forwarder.replay.options import ReplayOptions
from forwarder.replay.state import HandledRecords, LeaseLostError, ObjectId, Outcome, Row
from forwarder.replay.state_store import LeaseKeeper
from forwarder.replay.worker import ByteCounter, ListedObject, Run, Worker
from forwarder.status import describe, is_user_mistake
from transforms.options import DEFAULT_DESTINATION, Endpoint
from transforms.records import EncodedEvent, RawTarget

_log = structlog.get_logger("forwarder.replay.chunks")


@dataclass(slots=True)
class _Chunk:
    """Records between two commits. Events are buffered per destination, endpoint and raw
    target and
    handed to the deliverers a batch's worth at a time (one ``submit`` per record would cost
    more than the send); ``rows`` are the records whose events were all submitted."""

    rows: list[Row] = field(default_factory=list)
    events: int = 0  # submitted
    nbytes: int = 0  # payload bytes, submitted or buffered
    pending_rows: list[Row] = field(default_factory=list)
    pending_events: int = 0
    pending_bytes: int = 0
    groups: dict[tuple[str, Endpoint, RawTarget | None], list[EncodedEvent]] = field(
        default_factory=dict
    )


def replay_object(worker: Worker, obj: ListedObject) -> None:
    """Replay one object: skip it when done or leased by another live owner, else claim it
    (its lease kept alive meanwhile) and replay it chunk by chunk."""
    shared = worker.shared
    report = shared.report
    state = worker.state
    log = _log.bind(key=obj.key)
    if state.is_done(shared.bucket, obj.key, obj.etag):
        with shared.lock:
            report.objects_already_done += 1
        log.debug("replay_object_skipped", reason="already replayed")
        return
    if shared.options.dry_run:
        _replay_claimed(worker, obj, None, log)
        return
    kind_by_key, _ = key_kind(obj.key)
    claim = state.claim(shared.bucket, obj.key, obj.etag, obj.size, kind_by_key)
    if claim.object_id is None:
        with shared.lock:
            report.objects_leased_elsewhere += 1
        log.info("replay_object_skipped", reason="leased by another replay or drainer")
        return
    if claim.done:  # finished by another owner since is_done
        with shared.lock:
            report.objects_already_done += 1
        log.debug("replay_object_skipped", reason="already replayed")
        return
    if claim.lease == "taken-over":
        with shared.lock:
            report.leases_taken_over += 1
        log.warning(
            "replay_lease_taken_over",
            previous_owner=claim.previous_owner,
            reason="its lease expired: what that owner sent but did not record is sent again",
        )
    object_id = claim.object_id
    keeper = (
        LeaseKeeper.for_store(state, object_id, key=obj.key).start()
        if state.lease_s is not None
        else None
    )
    worker.lease = keeper
    finished = False
    try:
        finished = _replay_claimed(worker, obj, object_id, log)
    finally:
        worker.lease = None
        if keeper is not None:
            keeper.stop()
            if not finished and not keeper.lost.is_set():
                _release(worker, object_id, log)


def _release(worker: Worker, object_id: ObjectId, log: Any) -> None:
    """Give up the lease of an object left partial (else it expires by itself)."""
    try:
        worker.state.release_lease(object_id)
    except (BotoCoreError, ClientError) as exc:
        log.warning("replay_lease_release_failed", error=str(exc))


def _lease_lost(worker: Worker, log: Any) -> None:
    with worker.shared.lock:
        worker.shared.report.leases_lost += 1
    log.warning(
        "replay_lease_lost",
        reason="another owner took the object's lease over; nothing more is recorded for it",
    )


def _replay_claimed(
    worker: Worker, obj: ListedObject, object_id: ObjectId | None, log: Any
) -> bool:
    """Replay a claimed object (``object_id`` None: a dry run); whether it ended done."""
    shared = worker.shared
    report = shared.report
    options = shared.options
    handled = worker.state.handled(shared.bucket, obj.key, obj.etag)
    kind_by_key, _ = key_kind(obj.key)
    log.debug("replay_object_started", size=obj.size, resumed=len(handled))
    complete = True  # every record handled (so far)
    stopped = False
    read_error: str | None = None
    crash: str | None = None
    chunk = _Chunk()
    counter: ByteCounter | None = None
    source = f"s3://{shared.bucket}/{obj.key}"
    version_id: str | None = None
    try:
        response = shared.s3.get_object(Bucket=shared.bucket, Key=obj.key, IfMatch=obj.etag)
        version = response.get("VersionId")
        version_id = version if version and version != "null" else None
        counter = ByteCounter(response["Body"].iter_chunks(READ_CHUNK_BYTES))
        for item in iter_records(counter):
            if isinstance(item, CorruptLine):
                complete = False
                with shared.lock:
                    report.add_corrupt(obj.key, item.line, item.reason)
                log.warning("replay_record_corrupt", line=item.line, reason=item.reason)
                continue
            if shared.stop.is_set() or worker.lease_lost():
                stopped = True
                complete = False
                break
            status = _replay_record(
                worker,
                obj,
                item,
                handled=handled,
                chunk=chunk,
                kind_by_key=kind_by_key,
                source=source,
            )
            if status == "stop":
                stopped = True
                complete = False
                break
            if status == "skipped":
                complete = False
            if worker.deliverers and worker.fatal() is not None:
                stopped = True
                complete = False
                break
            if chunk.nbytes >= options.chunk_bytes:
                _commit(worker, object_id, chunk)
                chunk = _Chunk()
                _tick(shared, counter)
                if worker.fatal() is not None or worker.lease_lost():
                    stopped = True
                    complete = False
                    break
    except BacksplashError:
        raise  # the chunk cannot be committed: its events are neither delivered nor stored
    except (BotoCoreError, ClientError, OSError) as exc:
        read_error = f"{type(exc).__name__}: {exc}"
        complete = False
        if is_user_mistake(exc):
            with shared.lock:
                report.refused = report.refused or f"{obj.key}: {describe(exc)}"
    except Exception as exc:  # noqa: BLE001 - any bug: commit what was sent, stop the run
        crash = f"{type(exc).__name__}: {exc}"
        complete = False
    # Whatever happened, what was submitted is flushed and recorded, so a resumed run
    # neither re-sends it nor skips the rest (after a crash, buffered events are dropped
    # unsent and their records stay unhandled).
    # A lost lease: buffered events are not handed over either (the new owner sends them).
    _commit(worker, object_id, chunk, submit=crash is None and not worker.lease_lost(), last=True)
    _tick(shared, counter)
    if crash is not None:
        with shared.lock:
            report.error = report.error or f"{obj.key}: {crash}"
        shared.stop.set()
        log.error("replay_stopped", reason="unexpected error", error=crash)
        return False
    fatal = worker.fatal()
    if fatal is not None:
        with shared.lock:
            report.fatal = report.fatal or fatal
        shared.stop.set()
        complete = False
        refused = "HEC refused delivery" if options.via_firehose is None else "Firehose refused"
        log.error("replay_stopped", reason=refused, error=fatal)
    else:
        refused_one = worker.refused()  # one destination refused, the others deliver
        if refused_one is not None:
            with shared.lock:
                report.fatal = report.fatal or refused_one
    if read_error is not None:
        with shared.lock:
            report.objects_failed += 1
        log.error("replay_object_failed", error=read_error)
        return False
    if worker.lease_lost():
        _lease_lost(worker, log)
        return False
    with shared.lock:
        if complete:
            report.objects_done += 1
        else:
            report.objects_partial += 1
    log.info("replay_object_finished", complete=complete, stopped=stopped)
    if options.dry_run or object_id is None:
        return False
    if complete:
        try:
            worker.state.finish_object(object_id)
        except LeaseLostError:
            _lease_lost(worker, log)
            return False
        dispose(worker, obj, object_id, version_id)
        return True
    if options.after_success != "keep":
        with shared.lock:
            report.objects_kept += 1
        log.warning(
            "replay_object_kept",
            reason="not every record was replayed (corrupt, not selected, exhausted or stopped)",
            after_success=options.after_success,
        )
    return False


def _tick(shared: Run, counter: ByteCounter | None) -> None:
    if counter is not None:
        with shared.lock:
            shared.report.bytes_read += counter.total
        counter.total = 0
    if shared.progress is not None:
        with shared.lock:
            shared.progress.update(shared.report)


def _replay_record(
    worker: Worker,
    obj: ListedObject,
    item: RawRecord,
    *,
    handled: HandledRecords,
    chunk: _Chunk,
    kind_by_key: Kind | None,
    source: str,
) -> Literal["sent", "skipped", "done", "stop"]:
    """Send one record (or count it, dry); what became of it."""
    shared = worker.shared
    report = shared.report
    options = shared.options
    record = item.data
    kind = record_kind(record, kind_by_key)
    error_code, arrival_ms, attempts = record_meta(record)
    done = item.record_no in handled
    selected = not done and shared.selection.record_matches(kind, error_code, arrival_ms, obj.key)
    exhausted = selected and attempts >= options.max_attempts
    with shared.lock:  # every record read, and at most one reason it goes no further
        report.records_read += 1
        report.records_already_handled += int(done)
        report.records_not_selected += int(not done and not selected)
        report.records_exhausted += int(exhausted)
    if exhausted:
        _log.warning(
            "replay_records_exhausted",
            key=obj.key,
            line=item.line,
            replay_attempts=attempts,
            max_attempts=options.max_attempts,
        )
    if done:
        return "done"
    if exhausted or not selected:
        return "skipped"
    decode = decode_record if options.via_firehose is None else firehose_record
    try:
        decoded = decode(record, kind, shared.settings.transform)
    except CorruptRecordError as exc:
        with shared.lock:
            report.add_corrupt(obj.key, item.line, str(exc))
        _log.warning("replay_record_corrupt", key=obj.key, line=item.line, reason=str(exc))
        return "skipped"
    count = len(decoded.events)
    if not options.dry_run:
        row, names = shared.ledger, shared.settings.destination_names
        if shared.settings.destinations and decoded.destination in names:
            row = row.destination(decoded.destination)  # as the worker's rows (adds up)
        row.shaped(decoded.filtered, decoded.sampled, 0)
    if options.limit is not None:
        with shared.lock:
            if shared.events_reserved >= options.limit or (
                shared.events_reserved and shared.events_reserved + count > options.limit
            ):
                if not report.limited:
                    report.limited = True
                    _log.info("replay_stopped", reason="limit reached", limit=options.limit)
                shared.stop.set()
                return "stop"
            shared.events_reserved += count
    with shared.lock:
        report.count(decoded.kind, decoded.error_code, 1, count, decoded.payload_bytes)
        report.payload_bytes += decoded.payload_bytes
        if decoded.control:
            report.events_dropped += 1
    if options.dry_run:
        with shared.lock:
            report.events_sent += count
        return "sent"
    if count:
        if shared.limiter is not None:
            shared.limiter.acquire(count)
        worker.writer.expect(
            decoded.events,
            EventOrigin(
                item.record_no,
                decoded.arrival_ms,
                decoded.replay_attempts,
                source,
                decoded.destination,
            ),
        )
        unrouted = _why_unrouted(decoded.destination, shared.settings, options)
        if unrouted is None:
            key = (decoded.destination, decoded.endpoint, decoded.raw_target)
            chunk.groups.setdefault(key, []).extend(decoded.events)
        else:
            _unrouted(worker, decoded, unrouted)
    outcome: Outcome = "delivered" if options.via_firehose is None else "handed-to-firehose"
    chunk.pending_rows.append((item.record_no, decoded.event_id, count, outcome))
    chunk.pending_events += count
    chunk.pending_bytes += decoded.payload_bytes
    chunk.nbytes += decoded.payload_bytes
    if chunk.pending_bytes >= shared.settings.batching.max_bytes:
        _submit(worker, chunk)
    return "sent"


def _why_unrouted(destination: str, settings: Settings, options: ReplayOptions) -> str | None:
    """Why a record's events cannot go to the destination it names, or None."""
    if destination not in settings.destination_names:
        return f"no [destinations.{destination}] in the settings"
    if options.via_firehose is not None and destination != DEFAULT_DESTINATION:
        # Firehose delivers to its one Splunk: another estate's events must not go there.
        return f"--via-firehose reaches the default destination only, not {destination}"
    return None


def _unrouted(worker: Worker, decoded: DecodedRecord, message: str) -> None:
    """A record whose destination cannot be reached (:func:`_why_unrouted`): its events are
    stored under ``replay-failed/`` at once (``Splunk.UnknownDestination``), counted
    backsplashed.

    Raises:
        BacksplashError: the object could not be stored.
    """
    count = len(decoded.events)
    worker.writer.write(decoded.events, decoded.unrouted(message))
    worker.shared.ledger.add(events_in=count, backsplashed=count, backsplash_objects=1)
    _log.error(
        "replay_record_unrouted", destination=decoded.destination, events=count, reason=message
    )


def _unrecorded(worker: Worker, object_id: ObjectId, delivered: int, exc: Exception) -> None:
    """HEC has ``delivered`` events whose records the state refused to record."""
    shared = worker.shared
    with shared.lock:
        shared.report.events_unrecorded += delivered
    shared.ledger.add(duplicates_possible=delivered)
    _log.error(
        "replay_state_commit_failed",
        object_id=str(object_id),
        events=delivered,
        error=f"{type(exc).__name__}: {exc}",
        reason="delivered but not recorded: a later run sends them again (possible duplicates)",
    )


def _submit(worker: Worker, chunk: _Chunk) -> None:
    """Hand the buffered events to the deliverers (full batches go out now)."""
    groups, rows, count = chunk.groups, chunk.pending_rows, chunk.pending_events
    chunk.groups, chunk.pending_rows = {}, []
    chunk.pending_events = chunk.pending_bytes = 0
    for (destination, endpoint, raw_target), events in groups.items():
        worker.deliverer(endpoint, destination).submit(events, raw_target)
    chunk.rows.extend(rows)
    chunk.events += count
    with worker.shared.lock:
        worker.shared.report.events_sent += count


def _commit(
    worker: Worker,
    object_id: ObjectId | None,
    chunk: _Chunk,
    *,
    submit: bool = True,
    last: bool = False,
) -> None:
    """Submit what is buffered, flush the deliverers, then record the records as handled
    (unless another owner took the lease over: then nothing is recorded).

    A state write that fails raises; the object's last commit (``last``) retries the same
    records, and when that fails too, the delivered events are counted as possible
    duplicates (``replay_state_commit_failed``): the next run sends them again.
    """
    shared = worker.shared
    if shared.options.dry_run or object_id is None:
        return
    if submit:
        _submit(worker, chunk)
    for deliverer in worker.deliverers.values():
        deliverer.flush()
    failed_records = dict(worker.writer.failed_records)
    failed = sum(failed_records.values())
    rows: list[Row] = []
    for record_no, event_id, events, sent in chunk.rows:
        lost = failed_records.get(record_no, 0)
        outcome: Outcome = sent if not lost else "replay-failed" if lost >= events else "mixed"
        rows.append((record_no, event_id, events, outcome))
    recorded = 0
    if rows and not worker.lease_lost():
        try:
            worker.state.record_chunk(
                object_id, rows, delivered=max(chunk.events - failed, 0), failed=failed
            )
            recorded = len(rows)
        except LeaseLostError:
            if worker.lease is not None:
                worker.lease.lost.set()
        except Exception as exc:
            if last:
                _unrecorded(worker, object_id, max(chunk.events - failed, 0), exc)
            raise
    with shared.lock:
        shared.report.records_handled += recorded
        shared.report.events_delivered += max(chunk.events - failed, 0)
        shared.report.events_failed += failed
        shared.report.replay_failed_keys.extend(worker.writer.keys)
    worker.writer.next_chunk()
