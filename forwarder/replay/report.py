"""What a replay run did: :class:`ReplayReport` (counts, its exit status through
:func:`forwarder.status.status_for`), the progress shown while it runs (:class:`TtyProgress`
on a terminal, :class:`LogProgress` as ``replay_progressed`` lines otherwise) and the
summary printed at the end (:func:`format_summary`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TextIO

import structlog

from forwarder.backsplash.codec import CorruptLine
from forwarder.replay.options import parse_s3_uri
from forwarder.status import ExitStatus, RunOutcome, status_for

#: Corrupt lines kept in full in the report (the rest are only counted).
CORRUPT_REPORT_LIMIT: Final = 100

_log = structlog.get_logger("forwarder.replay.report")


@dataclass
class ReplayReport:
    """What a replay run did (or, dry, would do). Counts are events unless named otherwise."""

    source: str
    dry_run: bool = False
    #: The Firehose stream records were put into (``--via-firehose``); then
    #: ``events_delivered`` counts records Firehose accepted ("handed to Firehose").
    via_firehose: str | None = None
    objects_listed: int = 0
    objects_selected: int = 0
    objects_already_done: int = 0
    objects_outside_window: int = 0
    objects_done: int = 0
    objects_partial: int = 0
    objects_failed: int = 0
    #: Skipped: another replay or drainer holds a live lease on them (DynamoDB state).
    objects_leased_elsewhere: int = 0
    #: Expired leases of other owners taken over: what they sent but did not record is
    #: sent again (possible duplicates).
    leases_taken_over: int = 0
    #: Objects stopped because another owner took their lease over meanwhile.
    leases_lost: int = 0
    objects_archived: int = 0
    objects_deleted: int = 0
    objects_kept: int = 0
    objects_changed: int = 0
    bytes_listed: int = 0
    bytes_read: int = 0
    records_read: int = 0
    records_handled: int = 0
    records_already_handled: int = 0
    records_not_selected: int = 0
    records_exhausted: int = 0
    corrupt_total: int = 0
    events_sent: int = 0
    events_delivered: int = 0
    events_failed: int = 0
    events_dropped: int = 0
    #: Events HEC acknowledged whose records the state could not record (a failed SQLite or
    #: DynamoDB write): the next run sends them again, so they count as possible duplicates.
    events_unrecorded: int = 0
    payload_bytes: int = 0
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    by_error_code: dict[str, dict[str, int]] = field(default_factory=dict)
    corrupt: list[CorruptLine] = field(default_factory=list)
    replay_failed_keys: list[str] = field(default_factory=list)
    dispose_failures: int = 0
    interrupted: bool = False
    limited: bool = False
    fatal: str | None = None
    backsplash_error: str | None = None
    error: str | None = None
    #: The first object read AWS refused for a reason the user fixes (a missing permission,
    #: a bucket gone): the run then ends with status 2, naming it.
    refused: str | None = None
    elapsed_s: float = 0.0

    def count(self, kind: str, error_code: str, records: int, events: int, nbytes: int) -> None:
        """Add a selected record to the per-kind and per-error-code tables."""
        for table, name in ((self.by_kind, kind), (self.by_error_code, error_code)):
            row = table.setdefault(name, {"records": 0, "events": 0, "bytes": 0})
            row["records"] += records
            row["events"] += events
            row["bytes"] += nbytes

    def add_corrupt(self, key: str, line: int, reason: str) -> None:
        """Count a corrupt line; the first :data:`CORRUPT_REPORT_LIMIT` are kept in full."""
        self.corrupt_total += 1
        if len(self.corrupt) < CORRUPT_REPORT_LIMIT:
            self.corrupt.append(CorruptLine(line, reason, key=key))

    @property
    def outcome(self) -> RunOutcome:
        """The facts of this run that decide its exit status."""
        return RunOutcome(
            backsplash_failed=self.backsplash_error is not None,
            hec_fatal=self.fatal is not None,
            user_mistake=self.refused is not None,
            error=self.error is not None,
            interrupted=self.interrupted,
            incomplete=bool(self.events_failed or self.corrupt_total or self.records_exhausted),
            partial_failure=bool(self.objects_failed or self.dispose_failures),
        )

    @property
    def exit_status(self) -> ExitStatus:
        """The CLI exit status this run deserves (:func:`forwarder.status.status_for`)."""
        return status_for(self.outcome)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data (``--json``)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["corrupt"] = [
            {"key": bad.key, "line": bad.line, "reason": bad.reason} for bad in self.corrupt
        ]
        data["elapsed_s"] = round(self.elapsed_s, 3)
        data["exit_status"] = int(self.exit_status)
        return data


class Progress(Protocol):
    """Receives the report as it changes (the CLI draws a bar or logs lines)."""

    def update(self, report: ReplayReport, *, final: bool = False) -> None:
        """The report changed (or the run ended, ``final``)."""
        ...


class TtyProgress:
    """A one-line progress bar on a terminal (stderr): objects, events, bytes, rate, ETA."""

    def __init__(
        self, stream: TextIO, *, clock: Callable[[], float] = time.monotonic, width: int = 24
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._start = clock()
        self._last = 0.0
        self._width = width

    def update(self, report: ReplayReport, *, final: bool = False) -> None:
        """Redraw at most ten times a second, and once at the end."""
        now = self._clock()
        if not final and now - self._last < 0.1:
            return
        self._last = now
        elapsed = max(now - self._start, 1e-6)
        total = max(report.bytes_listed, 1)
        done_fraction = min(report.bytes_read / total, 1.0)
        filled = int(done_fraction * self._width)
        bar = "#" * filled + "-" * (self._width - filled)
        rate = report.events_sent / elapsed
        eta = (
            (elapsed / done_fraction - elapsed) if 0 < done_fraction < 1 else 0.0
        )  # by compressed bytes, the only total known up front
        finished = report.objects_done + report.objects_partial + report.objects_failed
        line = (
            f"\r[{bar}] {done_fraction * 100:5.1f}%  objects {finished}/{report.objects_selected}"
            f"  events {report.events_sent:,}  {report.bytes_read / 1e6:,.1f}/"
            f"{report.bytes_listed / 1e6:,.1f} MB  {rate:,.0f} ev/s  ETA {_duration(eta)}"
        )
        self._stream.write(line + ("\n" if final else ""))
        self._stream.flush()


class LogProgress:
    """``replay_progressed`` log lines, at most every ``interval_s`` (not on a terminal)."""

    def __init__(
        self, *, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval_s
        self._clock = clock
        self._last = clock()

    def update(self, report: ReplayReport, *, final: bool = False) -> None:
        """Log when the interval has passed (never on ``final``: the summary follows)."""
        now = self._clock()
        if final or now - self._last < self._interval:
            return
        self._last = now
        _log.info(
            "replay_progressed",
            objects_done=report.objects_done,
            objects_selected=report.objects_selected,
            events_sent=report.events_sent,
            events_delivered=report.events_delivered,
            events_failed=report.events_failed,
            bytes_read=report.bytes_read,
            bytes_listed=report.bytes_listed,
        )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_summary(report: ReplayReport, backlog: str = "") -> str:
    """The human summary table printed at the end; ``backlog`` (lines, for a dry run) goes
    just before the status line, which stays the last but for why nothing was sent."""
    lines = [
        f"replay {report.source}" + ("  (dry run: nothing sent)" if report.dry_run else ""),
        f"  objects  listed {report.objects_listed}  selected {report.objects_selected}  "
        f"done {report.objects_done}  partial {report.objects_partial}  "
        f"already done {report.objects_already_done}  failed {report.objects_failed}  "
        f"archived {report.objects_archived}  deleted {report.objects_deleted}"
        + (f"  changed (kept) {report.objects_changed}" if report.objects_changed else "")
        + (
            f"  leased elsewhere {report.objects_leased_elsewhere}"
            if report.objects_leased_elsewhere
            else ""
        )
        + (f"  leases taken over {report.leases_taken_over}" if report.leases_taken_over else "")
        + (f"  leases lost {report.leases_lost}" if report.leases_lost else ""),
        "",
        f"  {'kind / error code':<32}{'records':>10}{'events':>12}{'bytes':>14}",
    ]
    for title, table in (("", report.by_kind), ("", report.by_error_code)):
        for name, row in sorted(table.items()):
            lines.append(
                f"  {title}{name:<32}{row['records']:>10,}{row['events']:>12,}{row['bytes']:>14,}"
            )
        lines.append("")
    verb = "would send" if report.dry_run else "sent"
    delivered = (
        "delivered" if report.via_firehose is None else f"handed to Firehose {report.via_firehose}"
    )
    lines.append(
        f"  events   {verb} {report.events_sent:,}  {delivered} {report.events_delivered:,}  "
        f"failed again (replay-failed/) {report.events_failed:,}  "
        f"dropped (control) {report.events_dropped:,}"
    )
    lines.append(
        f"  records  read {report.records_read:,}  already handled "
        f"{report.records_already_handled:,}  not selected {report.records_not_selected:,}  "
        f"past max attempts {report.records_exhausted:,}  corrupt {report.corrupt_total:,}"
    )
    for bad in report.corrupt:
        lines.append(
            f"    corrupt: s3://{_bucket_of(report.source)}/{bad.key} line {bad.line}: {bad.reason}"
        )
    if report.corrupt_total > len(report.corrupt):
        lines.append(f"    ... and {report.corrupt_total - len(report.corrupt)} more")
    for key in report.replay_failed_keys[:20]:
        lines.append(f"    replay-failed: {key}")
    notes = []
    if report.limited:
        notes.append("stopped at --limit")
    if report.interrupted:
        notes.append("interrupted: run again to resume")
    if report.fatal:
        refused = "HEC refused delivery" if report.via_firehose is None else "Firehose refused"
        notes.append(f"{refused}: {report.fatal}")
    if report.backsplash_error:
        notes.append(f"could not write replay-failed/: {report.backsplash_error}")
    if report.refused:
        notes.append(report.refused)
    if report.events_unrecorded:
        notes.append(
            f"{report.events_unrecorded:,} delivered events not recorded in the state: "
            "a later run sends them again (possible duplicates)"
        )
    if backlog:
        lines.extend(backlog.rstrip("\n").split("\n"))
    lines.append(
        f"  status   {int(report.exit_status)}  {report.elapsed_s:.1f}s"
        + (f"  ({'; '.join(notes)})" if notes else "")
    )
    return "\n".join(lines) + "\n"


def _bucket_of(uri: str) -> str:
    return parse_s3_uri(uri)[0]
