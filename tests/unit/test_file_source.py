"""FileSource: stdin streams from a pipe that stays open, bounded, and loses nothing it read;
a missing file is a configuration error."""

from __future__ import annotations

import gzip
import os
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import structlog.testing

from config.daemon import SourceSettings
from config.errors import ConfigError
from forwarder.sources.base import SourceRecord
from forwarder.sources.files import STREAM_MAX_LINE_BYTES, FileSource

#: Generous: a poll that hangs (waits for a full buffer or EOF) fails instead of blocking.
HANG_S = 30.0


@pytest.fixture(name="pipe")
def fixture_pipe() -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """A pipe: (read end as stdin, write end), both closed at the end."""
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb")
    writer = os.fdopen(write_fd, "wb", buffering=0)
    yield reader, writer
    for end in (reader, writer):
        if not end.closed:
            end.close()


def stdin_source(stream: Any, **overrides: Any) -> FileSource:
    values: dict[str, Any] = {"type": "stdin", "poll_interval_s": 0.05, "chunk_lines": 100}
    values.update(overrides)
    source = FileSource(SourceSettings(**values), stdin=stream)
    source.attach()
    return source


def call(function: Callable[[], Any]) -> Any:
    """Run ``function`` in a thread; fail (not hang) if it does not return."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(function()), daemon=True)
    thread.start()
    thread.join(HANG_S)
    assert not thread.is_alive(), "poll blocked on a pipe that stays open"
    return result[0]


def is_exhausted(source: FileSource) -> bool:
    """Read through a call: mypy would keep a narrowed property across polls."""
    return source.exhausted


def lines_of(records: list[SourceRecord]) -> list[str]:
    return [line for record in records for line in record.lines or ()]


def poll_until(source: FileSource, count: int) -> list[str]:
    got: list[str] = []
    for _ in range(200):
        got.extend(lines_of(call(lambda: source.poll(100))))
        if len(got) >= count:
            break
    return got


def test_stdin_hands_out_lines_while_the_pipe_stays_open(pipe: tuple[BinaryIO, BinaryIO]) -> None:
    """GIVEN a pipe that stays open WHEN lines are written THEN each poll hands out what
    arrived (no waiting for a full buffer or the end); an unfinished line waits for its
    newline; with nothing new a poll returns empty."""
    reader, writer = pipe
    source = stdin_source(reader)
    writer.write(b"first\nsecond\r\n")
    assert poll_until(source, 2) == ["first", "second"]
    writer.write(b"par")
    assert call(lambda: source.poll(100)) == []
    writer.write(b"tial\n")
    assert poll_until(source, 1) == ["partial"]
    assert not is_exhausted(source)
    writer.close()
    assert call(lambda: source.poll(100)) == []
    assert is_exhausted(source) and source.lines_delivered == 3


def test_stdin_last_line_without_newline_and_flow_header(pipe: tuple[BinaryIO, BinaryIO]) -> None:
    reader, writer = pipe
    source = stdin_source(reader)
    writer.write(b"version srcaddr dstaddr action\n\n2 10.0.0.1 10.0.0.2 ACCEPT\n2 10.0.0.3")
    writer.close()
    records: list[SourceRecord] = []
    while not source.exhausted:
        records.extend(call(lambda: source.poll(100)))
    assert lines_of(records) == ["2 10.0.0.1 10.0.0.2 ACCEPT", "2 10.0.0.3"]
    assert {r.flow_fields for r in records} == {("version", "srcaddr", "dstaddr", "action")}


def test_stdin_gzip_members_arriving_in_pieces(pipe: tuple[BinaryIO, BinaryIO]) -> None:
    reader, writer = pipe
    source = stdin_source(reader)
    data = gzip.compress(b"a\nb\n") + gzip.compress(b"c\nd\n")
    writer.write(data[:1])
    assert call(lambda: source.poll(100)) == []
    writer.write(data[1:20])
    writer.write(data[20:])
    assert poll_until(source, 4) == ["a", "b", "c", "d"]


def test_stdin_corrupt_gzip_keeps_what_was_read(pipe: tuple[BinaryIO, BinaryIO]) -> None:
    reader, writer = pipe
    source = stdin_source(reader)
    writer.write(gzip.compress(b"a\nb\n") + b"\x1f\x8bnot gzip at all")
    writer.close()
    records: list[SourceRecord] = []
    with structlog.testing.capture_logs() as logs:
        while not source.exhausted:
            records.extend(call(lambda: source.poll(100)))
    assert lines_of(records) == ["a", "b"]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["input_unreadable"]


def test_stdin_enormous_line_is_cut_with_bounded_memory(pipe: tuple[BinaryIO, BinaryIO]) -> None:
    """GIVEN one 64 MiB line with no newline, then a short line WHEN read THEN the long one
    comes cut at STREAM_MAX_LINE_BYTES (counted, logged), the short one whole, and reading
    never holds more than a few MiB."""
    reader, writer = pipe
    block = b"x" * (1 << 20)

    def write() -> None:
        for _ in range(64):
            writer.write(block)
        writer.write(b"\nshort\n")
        writer.close()

    source = stdin_source(reader)
    thread = threading.Thread(target=write, daemon=True)
    tracemalloc.start()
    try:
        thread.start()
        lines: list[str] = []
        with structlog.testing.capture_logs() as logs:
            while not source.exhausted:
                lines.extend(lines_of(call(lambda: source.poll(100))))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    thread.join(HANG_S)
    assert [len(line) for line in lines] == [STREAM_MAX_LINE_BYTES, 5]
    assert lines[1] == "short"
    assert source.lines_cut == 1
    assert [e["event"] for e in logs if e["event"] == "line_truncated"] == ["line_truncated"]
    assert peak < 8 * STREAM_MAX_LINE_BYTES + FILE_READ_SLACK


#: What a poll may hold besides the cut line: one read, decoding copies, records.
FILE_READ_SLACK = 4 << 20


def test_stdin_unread_returns_everything_read_and_not_delivered(
    pipe: tuple[BinaryIO, BinaryIO],
) -> None:
    """GIVEN lines read from the pipe, some handed out and released (a shutdown mid-poll),
    some still buffered, and an unfinished last line WHEN the daemon asks for the unread
    THEN it gets all of them in order, and lines_delivered counts every line taken."""
    reader, writer = pipe
    source = stdin_source(reader, chunk_lines=1)
    writer.write(b"l1\nl2\nl3\n")
    records = call(lambda: source.poll(2))
    assert lines_of(records) == ["l1", "l2"]
    source.release(records[1:])
    assert source.lines_delivered == 1
    writer.write(b"l4\nunfinished")
    got = [line for record in source.unread() for line in record.lines or ()]
    # l4 and "unfinished" may still be in the pipe (not read): then they are not ours yet
    assert got[:2] == ["l2", "l3"]
    assert got[2:] in ([], ["l4", "unfinished"])
    assert source.lines_delivered == 1 + len(got)
    assert not source.exhausted


def test_stdin_unread_includes_lines_buffered_by_the_reader(
    pipe: tuple[BinaryIO, BinaryIO],
) -> None:
    reader, writer = pipe
    source = stdin_source(reader, chunk_lines=1)
    writer.write(b"a\nb\nc\nd")
    assert lines_of(call(lambda: source.poll(1))) == ["a"]  # one read took all the bytes
    assert [r.lines for r in source.unread()] == [["b"], ["c"], ["d"]]
    assert source.lines_delivered == 4


def test_files_source_missing_path_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "flow.log"
    present = tmp_path / "ok.log"
    present.write_text("x\n")
    source = FileSource(SourceSettings(type="files", paths=(str(present), str(missing))))
    with pytest.raises(ConfigError, match=f"files source: no such file: {missing}") as caught:
        source.attach()
    assert caught.value.key == "source.paths"
    assert not source.attached
    directory = FileSource(SourceSettings(type="files", paths=(str(tmp_path),)))
    with pytest.raises(ConfigError, match=f"cannot read {tmp_path}"):
        directory.attach()
