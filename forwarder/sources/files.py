"""The ``files`` and ``stdin`` sources: local files read once, or a pipe read as lines arrive.

No checkpoints: a file is read from its start on every run; stdin cannot be read again, so
what left the pipe is never dropped (:meth:`FileSource.unread`).
"""

from __future__ import annotations

import os
import select
import sys
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO, Final

import structlog

from config.daemon import SourceSettings
from config.errors import ConfigError
from forwarder.intake.lines import MAX_CHUNK_CHARS, line_chunks, text_line_blocks
from forwarder.sources.base import SourceRecord, poll_wait
from transforms.cloudwatch import GZIP_MAGIC
from transforms.vpc_flow import fields_from_header, is_header_line

_log = structlog.get_logger("forwarder.sources.files")

#: The files/stdin source reads at most this many lines per poll (and per chunk); and at most
#: about ``MAX_CHUNK_CHARS`` characters.
FILE_POLL_MAX_LINES: Final = 10_000
#: A stdin line longer than this many bytes is cut: its first bytes are handed over as the line
#: (counted in ``lines_cut``, logged ``line_truncated``) and the rest, up to its newline, is
#: skipped unread into memory. So one enormous line, with or without a newline, costs bounded
#: memory.
STREAM_MAX_LINE_BYTES: Final = 512 * 1024
#: The longest a quiet stdin poll waits, whatever ``poll_interval_s`` says: ``select`` resumes
#: after a signal handler runs (PEP 475), so a shutdown requested during a wait is noticed only
#: when the wait ends. An idle poll that returns nothing costs one loop turn.
STREAM_MAX_WAIT_S: Final = 1.0
#: One ``os.read`` (and one step of gunzip output) from stdin.
_STREAM_READ_SIZE: Final = 1 << 16
#: Reads (or gunzip steps) at most per poll: a poll returns after about this much input even
#: while a writer keeps the pipe full (or streams one huge line being skipped).
_STREAM_MAX_STEPS: Final = MAX_CHUNK_CHARS // _STREAM_READ_SIZE


#: The position of records read from stdin (:meth:`FileSource.release` keeps them).
_FROM_STREAM: Final = object()


def _fileno(stream: Any) -> int | None:
    """The stream's descriptor, or None when it has none (an in-memory stream)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return fd if isinstance(fd, int) else None


class _LineStream:
    """The lines of a byte stream (stdin) as they arrive, never waiting for more than asked.

    Reads with ``os.read`` on the descriptor after ``select`` says it is readable, so lines
    written into a pipe that stays open are handed out at once (a buffered reader would wait
    for a full buffer or the end). A gzip stream (told by its first two bytes, members one
    after another) is inflated step by step with bounded output. Lines are decoded as UTF-8
    (bad bytes replaced); ``\\r\\n`` ends a line like ``\\n``; the last line needs no newline.
    Memory is bounded: complete lines are read only up to what a poll takes, and a partial
    line up to :data:`STREAM_MAX_LINE_BYTES` (then cut).
    """

    def __init__(self, stream: Any, name: str, max_line: int = STREAM_MAX_LINE_BYTES) -> None:
        self._stream = stream
        self._fd = _fileno(stream)
        self._name = name
        self._max_line = max_line
        self._head = b""  # the first bytes, until gzip or not is told
        self._sniffed = False
        self._gzip = False
        self._inflater: Any = None
        self._tail = b""  # input read and not yet inflated (at most one read's worth)
        self._partial = bytearray()
        self._skipping = False  # inside a cut line: drop bytes up to its newline
        self._lines: deque[str] = deque()
        self._chars = 0
        self.eof = False
        self.lines_cut = 0
        self.bytes_read = 0

    @property
    def drained(self) -> bool:
        """The end was reached and every line handed out."""
        return self.eof and not self._lines

    def next_lines(self, timeout: float, max_lines: int, max_chars: int) -> list[str] | None:
        """Complete lines read so far (at most ``max_lines``, about ``max_chars``).

        Waits up to ``timeout`` only when no line is ready; then takes whatever input is
        there at once. Returns [] when nothing came in time, None once the stream is drained.
        """
        steps = 0
        while (
            not self.eof
            and len(self._lines) < max_lines
            and self._chars < max_chars
            and steps < _STREAM_MAX_STEPS
        ):
            wait = timeout if steps == 0 and not self._lines else 0.0
            if not self._step(wait):
                break
            steps += 1
        if not self._lines:
            return None if self.eof else []
        return self._take(max_lines, max_chars)

    def rest(self) -> list[str]:
        """Everything read and not handed out, the unfinished last line included (shutdown:
        these bytes left the pipe and cannot be read again)."""
        while self._tail and self._inflate(b""):
            pass
        if self._partial and not self._skipping:
            self._emit()
        self._partial.clear()
        return self._take(len(self._lines), None)

    def _take(self, max_lines: int, max_chars: int | None) -> list[str]:
        out: list[str] = []
        chars = 0
        while self._lines and len(out) < max_lines:
            line = self._lines.popleft()
            out.append(line)
            chars += len(line)
            self._chars -= len(line)
            if max_chars is not None and chars >= max_chars:
                break
        return out

    def _readable(self, timeout: float) -> bool:
        if self._fd is None:
            return True
        ready, _, _ = select.select([self._fd], [], [], max(timeout, 0.0))
        return bool(ready)

    def _read(self) -> bytes:
        if self._fd is not None:
            return os.read(self._fd, _STREAM_READ_SIZE)
        read1 = getattr(self._stream, "read1", None)
        data = (
            read1(_STREAM_READ_SIZE) if read1 is not None else self._stream.read(_STREAM_READ_SIZE)
        )
        return bytes(data)

    def _step(self, timeout: float) -> bool:
        """Take one piece of input; False when none is there now (or at the end)."""
        if self._tail:
            return self._inflate(b"")
        if not self._readable(timeout):
            return False
        data = self._read()
        if not data:
            self._end()
            return False
        self.bytes_read += len(data)
        if not self._sniffed:
            self._head += data
            if len(self._head) < len(GZIP_MAGIC):
                return True
            data, self._head, self._sniffed = self._head, b"", True
            self._gzip = data.startswith(GZIP_MAGIC)
        if self._gzip:
            return self._inflate(data)
        self._split(data)
        return True

    def _inflate(self, data: bytes) -> bool:
        source = self._tail + data
        if self._inflater is None:
            self._inflater = zlib.decompressobj(wbits=31)
        try:
            out = self._inflater.decompress(source, _STREAM_READ_SIZE)
        except zlib.error as exc:
            self._broken(f"corrupt gzip: {exc}")
            return False
        if self._inflater.eof:  # a member ends; what follows starts the next one
            self._tail = self._inflater.unused_data
            self._inflater = None
        else:
            self._tail = self._inflater.unconsumed_tail
        self._split(out)
        return True

    def _broken(self, reason: str) -> None:
        _log.error("input_unreadable", source=self._name, reason=reason)
        self._tail = b""
        self._inflater = None
        self._end()

    def _end(self) -> None:
        if self.eof:
            return
        self.eof = True
        if self._head:  # fewer bytes than the gzip magic: plain text
            head, self._head = self._head, b""
            self._split(head)
        if self._gzip and self._inflater is not None:
            self._inflater = None
            _log.error("input_unreadable", source=self._name, reason="gzip data ends early")
        if self._partial and not self._skipping:
            self._emit()
        self._partial.clear()

    def _split(self, data: bytes) -> None:
        start = 0
        while True:
            newline = data.find(b"\n", start)
            piece = data[start:] if newline < 0 else data[start:newline]
            if self._skipping:
                self._skipping = newline < 0
            elif len(self._partial) + len(piece) > self._max_line:
                self._partial += piece[: self._max_line - len(self._partial)]
                self._cut(complete=newline >= 0)
            else:
                self._partial += piece
                if newline >= 0:
                    self._emit()
            if newline < 0:
                return
            start = newline + 1

    def _cut(self, *, complete: bool) -> None:
        self.lines_cut += 1
        _log.warning(
            "line_truncated",
            source=self._name,
            kept_bytes=len(self._partial),
            reason=f"line longer than {self._max_line} bytes: the rest is skipped",
        )
        self._emit()
        self._skipping = not complete

    def _emit(self) -> None:
        raw = bytes(self._partial)
        self._partial.clear()
        line = raw.removesuffix(b"\r").decode("utf-8", errors="replace")
        self._lines.append(line)
        self._chars += len(line)


class FileSource:
    """Local files (or stdin with ``-``), read once, line by line, in chunks.

    No checkpoints: a file is read from its start on every run. Reading is bounded: a chunk
    holds at most ``chunk_lines`` lines (capped at :data:`FILE_POLL_MAX_LINES`) and
    :data:`MAX_CHUNK_CHARS` characters, and a poll returns chunks only until it holds that
    many lines or characters. So memory does not grow with the file: the daemon reads the next
    chunks only once the deliverer took the last ones, and the deliverer blocks (acks pending,
    retries while HEC is down) instead of buffering.

    stdin streams (:class:`_LineStream`): lines written into a pipe that stays open (``tail -f
    | forwarder daemon``) are handed out as they arrive; a poll with nothing to give waits at
    most ``poll_interval_s``. A stdin line over :data:`STREAM_MAX_LINE_BYTES` is cut
    (:attr:`lines_cut`).

    A shutdown before the end (:meth:`release`) leaves the rest of a file unread: nothing
    records how far it got, so a later run reads the files from the start. stdin cannot be
    read again, so what left the pipe is never dropped: records released are kept, and
    :meth:`unread` hands them back with every line read and not yet handed out (the
    unfinished last one included), for the daemon to deliver or backsplash before it exits.
    :attr:`lines_delivered` and :attr:`position` say where it stopped.
    """

    def __init__(self, settings: SourceSettings, *, stdin: BinaryIO | None = None) -> None:
        self.name = "stdin" if settings.type == "stdin" else "files"
        self._paths = list(settings.paths) if settings.type == "files" else ["-"]
        self._stdin = stdin
        self._chunk_lines = min(settings.chunk_lines, FILE_POLL_MAX_LINES)
        self._poll_interval_s = settings.poll_interval_s
        self._log_group = settings.log_group
        self._chunks: Iterator[SourceRecord | None] | None = None
        self._stream: _LineStream | None = None
        self._held: list[SourceRecord] = []
        self._wait_s = 0.0
        self._header_done = False
        self._fields: tuple[str, ...] | None = None
        self._exhausted = False
        self._released = False
        self._attached = False
        #: Lines handed to the daemon and not released.
        self.lines_delivered = 0
        #: The file being read (or last read) and the lines of it handed over so far.
        self.position: tuple[str, int] | None = None

    @property
    def exhausted(self) -> bool:
        """Every line was read and none released: the whole input was taken in."""
        return self._exhausted and not self._released

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def lines_cut(self) -> int:
        """stdin lines cut at :data:`STREAM_MAX_LINE_BYTES`."""
        return self._stream.lines_cut if self._stream is not None else 0

    def lag_seconds(self) -> float | None:
        return None

    def attach(self) -> None:
        """Check every file can be opened.

        Raises:
            ConfigError: a file is missing or cannot be opened (a setting to fix, not a
                failure to retry); the message names the path.
        """
        for path in self._paths:
            if path == "-":
                continue
            try:
                with open(path, "rb"):
                    pass
            except FileNotFoundError:
                raise ConfigError("source.paths", f"files source: no such file: {path}") from None
            except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:
                raise ConfigError(
                    "source.paths", f"files source: cannot read {path}: {exc.strerror}"
                ) from None
        self._chunks = self._records()
        self._attached = True

    def _records(self) -> Iterator[SourceRecord | None]:
        """Records in order; None: stdin has nothing more for now (the poll ends there)."""
        for path in self._paths:
            if path == "-":
                stream = self._stdin if self._stdin is not None else sys.stdin.buffer
                yield from self._stream_records(stream)
            else:
                with open(path, "rb") as handle:
                    for lines, fields in line_chunks(
                        text_line_blocks(handle), self._chunk_lines, MAX_CHUNK_CHARS
                    ):
                        yield self._record(lines, fields, path)

    def _stream_records(self, stream: Any) -> Iterator[SourceRecord | None]:
        reader = self._stream = _LineStream(stream, self.name)
        self._header_done = False
        self._fields = None
        while True:
            wait = min(self._wait_s, STREAM_MAX_WAIT_S)
            lines = reader.next_lines(wait, self._chunk_lines, MAX_CHUNK_CHARS)
            if lines is None:
                return
            lines = self._text(lines)
            yield self._record(lines, self._fields, "stdin") if lines else None

    def _text(self, lines: list[str]) -> list[str]:
        """Blank lines out; a flow-log header (first non-blank line) names the fields."""
        kept: list[str] = []
        for line in lines:
            if not line.strip():
                continue
            if not self._header_done:
                self._header_done = True
                if is_header_line(line):
                    self._fields = fields_from_header(line)
                    continue
            kept.append(line)
        return kept

    def _record(self, lines: list[str], fields: tuple[str, ...] | None, name: str) -> SourceRecord:
        return SourceRecord(
            lines=lines,
            log_group=self._log_group or self.name,
            log_stream=name,
            flow_fields=fields,
            origin="text",
            position=_FROM_STREAM if name == "stdin" and self._stream is not None else None,
        )

    def poll(self, max_records: int, wait_s: float | None = None) -> list[SourceRecord]:
        """Up to ``max_records`` chunks, and no more than :data:`FILE_POLL_MAX_LINES` lines
        and :data:`MAX_CHUNK_CHARS` characters (always at least one chunk, except from
        stdin with nothing new within ``poll_interval_s``, or ``wait_s`` when shorter)."""
        assert self._chunks is not None, "attach() first"
        out: list[SourceRecord] = []
        lines = chars = 0
        self._wait_s = poll_wait(self._poll_interval_s, wait_s)
        for record in self._chunks:
            if record is None:
                break  # stdin: nothing more for now
            out.append(record)
            self._wait_s = 0.0  # something to hand over: do not wait for more
            chunk = record.lines or ()
            lines += len(chunk)
            chars += sum(map(len, chunk))
            self._advance(record, len(chunk))
            if len(out) >= max_records or lines >= FILE_POLL_MAX_LINES or chars >= MAX_CHUNK_CHARS:
                break
        else:
            self._exhausted = True
        return out

    def _advance(self, record: SourceRecord, count: int) -> None:
        name = record.log_stream or self.name
        done = self.position[1] if self.position is not None and self.position[0] == name else 0
        self.position = (name, done + count)
        self.lines_delivered += count

    def release(self, records: Sequence[SourceRecord]) -> None:
        """Not delivered: the input is not read to its end (no checkpoint to hold back). stdin
        records are kept for :meth:`unread` (they cannot be read again)."""
        if not records:
            return
        self._released = True
        for record in records:
            count = len(record.lines or ())
            self.lines_delivered -= count
            if self.position is not None and self.position[0] == record.log_stream:
                self.position = (self.position[0], max(self.position[1] - count, 0))
            if record.position is _FROM_STREAM:
                self._held.append(record)

    def unread(self) -> Iterator[SourceRecord]:
        """stdin at shutdown: the records released and every line read and not handed out,
        in order, as records (counted as handed over). The daemon delivers them (or, past its
        grace, backsplashes them): bytes that left the pipe are never dropped."""
        held, self._held = self._held, []
        for record in held:
            self._advance(record, len(record.lines or ()))
            yield record
        if self._stream is None:
            return
        rest = self._text(self._stream.rest())
        for start in range(0, len(rest), self._chunk_lines):
            record = self._record(rest[start : start + self._chunk_lines], self._fields, "stdin")
            self._advance(record, len(record.lines or ()))
            yield record

    def log_unread(self) -> None:
        """Log ``input_not_finished`` when the run stopped before the end of its input (no
        checkpoint: say where it stopped)."""
        if self.exhausted:
            return
        path, lines = self.position if self.position is not None else (None, 0)
        _log.warning(
            "input_not_finished",
            source=self.name,
            lines_taken=self.lines_delivered,
            stopped_in=path,
            lines_of_it=lines,
            reason="stopped before the end of the input; a files source keeps no "
            "checkpoint: run again to read it (from the start)",
        )

    def commit(self) -> int:
        """Nothing to checkpoint."""
        return 0

    def close(self) -> None:
        """Nothing to release."""
