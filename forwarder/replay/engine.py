"""``forwarder replay``'s engine: re-deliver the S3 backsplash (Firehose's objects and ours),
once.

What it reads (DESIGN.md §6; :mod:`forwarder.backsplash.codec`), one JSON object per record,
gzip or plain, newline-separated or concatenated:

    ``splunk-failed/``      ``rawData`` is what was sent to HEC: event objects (concatenated) or
                            raw lines; our records also say ``endpoint`` and the raw metadata.
    ``processing-failed/``  ``rawData`` is the original CloudWatch Logs payload: transformed
                            first (``transforms.pipeline.transform_payload``), then sent.
    ``decompression-failed/``  Firehose's CloudWatch Logs decompression failed: ``rawData``
                            is the original (gzip) payload, transformed like processing-failed.
    ``replay-failed/``      what failed again during an earlier replay (our format, with
                            ``replayAttempts``).
    anything else           by content (``forwarder.backsplash.codec.record_kind``).

``--via-firehose`` puts the records into a Firehose stream instead (:mod:`.firehose`).

How a run goes: :func:`replay` lists the objects once up front (so what this run writes is
never read by it), skips those outside the selection by key (:mod:`.options`), and hands the
rest to ``concurrency`` threads, each with its own deliverers, state connection and
replay-failed writer (:mod:`.worker`). A thread streams one object at a time and commits it
chunk by chunk (:mod:`.chunks`); a done object is kept, archived or deleted as asked
(:mod:`.dispose`). The report (:mod:`.report`) sums what happened; ``rate_limit`` (events/s)
is shared by all threads.

No loops: what fails again goes under ``<root>replay-failed/`` (never back under the kind
being replayed) with ``replayAttempts`` (previous value + 1); records with
``replayAttempts >= max_attempts`` are skipped (counted, left in place).

Log events: ``replay_started``, ``replay_object_started`` (debug), ``replay_object_finished``,
``replay_object_skipped`` (debug: already done, or outside the time window),
``replay_object_failed`` (S3 read error), ``replay_record_corrupt``,
``replay_records_exhausted`` (skipped for ``max_attempts``), ``replay_object_archived``,
``replay_object_deleted``, ``replay_object_kept`` (removal asked, object not done),
``replay_progressed`` (non-TTY progress), ``replay_stopped`` (interrupt, limit, fatal) and
``replay_summarized``; with a DynamoDB state, ``replay_lease_taken_over`` (an expired lease
of another owner), ``replay_lease_lost`` (another owner took ours: the object stops),
``replay_lease_renew_failed`` and ``replay_lease_release_failed``; the deliverers' ledgers
are summed into one ``delivery_summarized``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from config.settings import Settings
from forwarder.backsplash.layout import REPLAY_FAILED, REPLAYED, source_root
from forwarder.errors import BacksplashError
from forwarder.replay.chunks import replay_object
from forwarder.replay.options import ReplayOptions, Selection, parse_s3_uri
from forwarder.replay.report import Progress, ReplayReport
from forwarder.replay.worker import (
    DelivererFactory,
    ListedObject,
    RateLimiter,
    Run,
    Worker,
    default_deliverer_factory,
)
from forwarder.status import describe, is_user_mistake

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_log = structlog.get_logger("forwarder.replay.engine")


def replay(
    settings: Settings,
    s3_uri: str,
    options: ReplayOptions,
    *,
    s3_client: S3Client,
    deliverer_factory: DelivererFactory = default_deliverer_factory,
    stop_event: threading.Event | None = None,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    sleep: Callable[[float], object] = time.sleep,
) -> ReplayReport:
    """Replay the backsplash objects under ``s3_uri``.

    Args:
        settings: delivery settings (HEC, acks, retry, batching, transform).
        s3_uri: ``s3://bucket/prefix`` to replay.
        options: selection and behaviour.
        s3_client: a boto3 S3 client.
        deliverer_factory: builds one deliverer per endpoint and thread.
        stop_event: set it to stop after the chunk in flight (state stays consistent).
        progress: told about every chunk and object.
        clock: monotonic clock (elapsed time, rate limit).
        wall_clock: epoch seconds (replay-failed keys, state timestamps).
        sleep: rate-limit sleeps.

    Returns:
        The report; its ``exit_status`` is the CLI's.

    Raises:
        ValueError: a malformed ``s3_uri`` or ``options.failed_to``.
    """
    bucket, prefix = parse_s3_uri(s3_uri)
    root = source_root(prefix)
    if options.failed_to:
        failed_bucket, failed_root = parse_s3_uri(options.failed_to)
        if failed_root and not failed_root.endswith("/"):
            failed_root += "/"
    else:
        failed_bucket, failed_root = bucket, root
    report = ReplayReport(source=s3_uri, dry_run=options.dry_run, via_firehose=options.via_firehose)
    started = clock()
    shared = Run(
        settings=settings,
        options=options,
        selection=Selection.of(options),
        bucket=bucket,
        root=root,
        failed_bucket=failed_bucket,
        failed_root=failed_root,
        s3=s3_client,
        report=report,
        state=options.state_spec(os.environ),
        deliverer_factory=deliverer_factory,
        stop=stop_event if stop_event is not None else threading.Event(),
        limiter=(
            RateLimiter(options.rate_limit, clock=clock, sleep=sleep)
            if options.rate_limit
            else None
        ),
        progress=progress,
        clock=clock,
        wall_clock=wall_clock,
    )
    _log.info(
        "replay_started",
        source=s3_uri,
        dry_run=options.dry_run,
        state=str(shared.state),
        failed_to=f"s3://{failed_bucket}/{failed_root}{REPLAY_FAILED}/",
        via_firehose=options.via_firehose,
        concurrency=options.concurrency,
    )
    objects = _list_objects(shared, prefix)
    work: queue.Queue[ListedObject] = queue.Queue()
    for obj in objects:
        work.put(obj)
    threads = [
        threading.Thread(target=_worker, args=(shared, work), name=f"replay-{n}", daemon=True)
        for n in range(min(options.concurrency, max(len(objects), 1)))
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except KeyboardInterrupt:
        shared.stop.set()
        report.interrupted = True
        for thread in threads:
            thread.join()
    if (
        shared.stop.is_set()
        and not report.limited
        and report.fatal is None
        and report.backsplash_error is None
        and report.error is None
    ):
        report.interrupted = True  # stopped from outside (signal, caller)
    report.elapsed_s = clock() - started
    if progress is not None:
        progress.update(report, final=True)
    if not options.dry_run:
        shared.ledger.log_summary(_log, replay=True, fatal=report.fatal is not None)
    _log.info(
        "replay_summarized",
        **{k: v for k, v in report.to_dict().items() if k not in ("corrupt", "replay_failed_keys")},
    )
    return report


def _list_objects(shared: Run, prefix: str) -> list[ListedObject]:
    """Every object to look at, listed once up front (so nothing written now is re-read)."""
    report = shared.report
    selected: list[ListedObject] = []
    paginator = shared.s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=shared.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/"):
                continue
            rest = key[len(shared.root) :] if key.startswith(shared.root) else key
            if rest.split("/", 1)[0] == REPLAYED:
                continue  # already replayed and archived
            report.objects_listed += 1
            if not shared.selection.object_may_match(key):
                report.objects_outside_window += 1
                _log.debug("replay_object_skipped", key=key, reason="not selected by its key")
                continue
            selected.append(ListedObject(key, item.get("ETag", "").strip('"'), item.get("Size", 0)))
    report.objects_selected = len(selected)
    report.bytes_listed = sum(obj.size for obj in selected)
    return selected


def _worker(shared: Run, work: queue.Queue[ListedObject]) -> None:
    worker: Worker | None = None
    clean = False
    try:
        worker = Worker(shared)
        while not shared.stop.is_set():
            try:
                obj = work.get_nowait()
            except queue.Empty:
                break
            replay_object(worker, obj)
        clean = True
    except BacksplashError as exc:
        with shared.lock:
            shared.report.backsplash_error = exc.message
        shared.stop.set()
        _log.critical("replay_stopped", reason="replay-failed write failed", error=exc.message)
    except Exception as exc:  # noqa: BLE001 - a thread must report, not die silently
        with shared.lock:
            if is_user_mistake(exc):  # e.g. a state table that does not exist: status 2
                shared.report.refused = shared.report.refused or describe(exc)
            else:
                shared.report.error = shared.report.error or f"{type(exc).__name__}: {exc}"
        shared.stop.set()
        _log.error("replay_stopped", reason="unexpected error", error=str(exc))
    finally:
        if worker is not None:
            try:
                worker.close(flush=clean)
            except BacksplashError as exc:
                with shared.lock:
                    shared.report.backsplash_error = exc.message
                shared.stop.set()
