"""The local spool survives a power loss: file fsynced before its rename, directories after."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from forwarder.backsplash.codec import Failure
from forwarder.backsplash.writers import LocalSpool
from transforms.records import EncodedEvent

NOW = 1_764_000_000.0


def test_put_object_fsyncs_the_file_then_every_directory_it_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN an empty spool WHEN an object is written THEN the temporary file is fsynced
    before the rename, the object's directory after it (the rename is then durable), and
    each directory created for it in its parent."""
    spool = LocalSpool(tmp_path / "spool", "p/", clock=lambda: NOW)
    synced: list[tuple[str, Path | None, bool]] = []
    real_fsync = os.fsync

    def fake_fsync(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            path = next(
                (p for p in [tmp_path, *tmp_path.rglob("*")] if p.stat().st_ino == info.st_ino),
                None,
            )
            written = any(path.glob("*.gz")) if path is not None else False
            synced.append(("dir", path, written))
        else:
            synced.append(("file", None, False))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fake_fsync)
    key = spool.write(
        [EncodedEvent(b'{"event":"x"}', "e1")],
        Failure(
            error_code="Splunk.ServerError", error_message="down", attempts=1, endpoint="event"
        ),
    )
    final = tmp_path / "spool" / key
    assert final.is_file()
    kinds = [kind for kind, _, _ in synced]
    assert kinds.count("file") == 1
    assert kinds.index("file") < len(kinds) - 1  # a directory is synced after the file
    directories = [path for kind, path, _ in synced if kind == "dir"]
    assert directories[-1] == final.parent
    assert synced[-1][2]  # synced once the object was there under its final name
    created = [final.parent, *final.parent.parents]
    created = [d for d in created if d != tmp_path and tmp_path in d.parents]
    for directory in created:  # spool/, spool/p/, ... spool/p/splunk-failed/YYYY/MM/DD/HH
        assert directory.parent in directories, directory

    # A second object in the same folder: the file and its directory, nothing more.
    synced.clear()
    spool.put_object(key.replace(".gz", "-2.gz"), b"data")
    assert [(kind, path) for kind, path, _ in synced] == [("file", None), ("dir", final.parent)]
