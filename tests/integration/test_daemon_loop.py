"""The daemon's loop (``Daemon._run``) when the input goes quiet: a skipped checkpoint is tried
again without new records, and a line read from a pipe that stays open is sent when its batch
is due, not a whole ``poll_interval_s`` later (issue 9, item 11). In-process daemons on a
stdin pipe this test holds open, delivering to the HEC emulator."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pytest

from config.daemon import SourceSettings
from forwarder.daemon import Daemon
from forwarder.devtools.emulator import HecEmulator
from tests.integration.conftest import delivery_settings
from tests.integration.test_daemon import daemon_settings, indexed_messages, running, wait_for

pytestmark = pytest.mark.integration


@contextmanager
def open_pipe() -> Iterator[tuple[BinaryIO, int]]:
    """(the read end as the daemon's stdin, the write end's descriptor); both closed after."""
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb")
    try:
        yield reader, write_fd
    finally:
        with contextlib.suppress(OSError):  # closed by the test already
            os.close(write_fd)
        reader.close()


def test_a_skipped_checkpoint_is_retried_when_no_new_records_come(
    emulator: HecEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a stdin daemon whose first checkpoint is skipped (as when the ledger does not
    balance) WHEN the input then stays quiet THEN the checkpoint is tried again after
    ``checkpoint_interval_s`` and commits, without a new record; once committed, a quiet
    input causes no further checkpoint (the retry is not a busy loop)."""
    config = daemon_settings(
        tmp_path,
        source=SourceSettings(type="stdin", poll_interval_s=0.05),
        checkpoint_store="none",
        checkpoint_interval_s=0.2,
        checkpoint_max_records=1000,
    )
    with open_pipe() as (stdin, write_fd):
        daemon = Daemon(delivery_settings(emulator.url), config, stdin=stdin)
        attempts: list[bool] = []
        commits: list[int] = []
        real_checkpoint = daemon._checkpoint
        real_commit = daemon.source.commit

        def checkpoint(deadline: float | None) -> bool:
            if not attempts:
                attempts.append(False)  # skipped: nothing committed
                return False
            attempts.append(real_checkpoint(deadline))
            return attempts[-1]

        def commit() -> int:
            commits.append(1)
            return real_commit()

        monkeypatch.setattr(daemon, "_checkpoint", checkpoint)
        monkeypatch.setattr(daemon.source, "commit", commit)
        with running(daemon):
            os.write(write_fd, b"quiet one\nquiet two\n")
            wait_for(lambda: bool(attempts), timeout=60, what="the first (skipped) checkpoint")
            wait_for(lambda: bool(commits), timeout=60, what="the skipped checkpoint retried")
            assert attempts[:2] == [False, True]
            settled = len(attempts)
            time.sleep(1.0)  # five checkpoint intervals of quiet input
            assert len(attempts) == settled  # committed: nothing left to retry
            assert sorted(indexed_messages(emulator)) == ["quiet one", "quiet two"]
            os.close(write_fd)  # the end of the input: the daemon finishes


def test_a_line_from_an_open_pipe_is_sent_when_its_batch_is_due(
    emulator: HecEmulator, tmp_path: Path
) -> None:
    """GIVEN a stdin daemon with a long ``poll_interval_s`` (300 s), a short batch linger and
    no checkpoint due for an hour WHEN one line is written into a pipe that stays open and
    nothing follows THEN the emulator indexes it: the poll's idle wait ends at the
    deliverer's next wake-up (the partial batch ageing out), not after ``poll_interval_s``."""
    config = daemon_settings(
        tmp_path,
        source=SourceSettings(type="stdin", poll_interval_s=300.0),
        checkpoint_store="none",
        checkpoint_interval_s=3600.0,
        checkpoint_max_records=1000,
    )
    settings = delivery_settings(emulator.url, SPLUNK_HEC_BATCH_LINGER="0.2")
    with open_pipe() as (stdin, write_fd):
        daemon = Daemon(settings, config, stdin=stdin)
        with running(daemon) as status:
            wait_for(lambda: daemon.source.attached, timeout=60, what="the daemon to start")
            os.write(write_fd, b"one lonely line\n")
            # Bounded far below poll_interval_s: before the fix it sat in the 300 s poll.
            wait_for(
                lambda: indexed_messages(emulator) == ["one lonely line"],
                timeout=120,
                what="the line to be indexed with no further input",
            )
            assert not status  # still running: the pipe is open
            os.close(write_fd)  # the end of the input: the daemon finishes
            wait_for(lambda: bool(status), timeout=60, what="the daemon to finish")
        assert status == [0]
        assert daemon.deliverer.ledger.acknowledged == 1
