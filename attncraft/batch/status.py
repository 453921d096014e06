"""The status file of a batch output folder, and the lock that keeps one run per folder.

``batch-status.jsonl`` is append-only: one JSON record a line for each job that finished
(``"state": "done"``) or failed (``"failed"``, with its error), flushed and synced to disk before the
next job is counted. The last record of a job wins. A run that is killed can only leave a torn last
line; it is skipped when read (and said so), and the next record starts on a new line, so nothing
already recorded is ever lost or changed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from attncraft.errors import InputError
from attncraft.outputs import to_strict_json

STATUS_NAME = "batch-status.jsonl"
LOCK_NAME = ".attncraft-batch.lock"


class StatusLog:
    """Read and append the status records of one output folder."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / STATUS_NAME
        self.torn_lines = 0

    def read(self) -> dict[str, dict[str, Any]]:
        """The last record of every job id (``{}`` if there is no status file yet)."""
        records: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        try:
            text = self.path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return records
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                self.torn_lines += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                records[record["id"]] = record
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Add one record durably (flushed and synced); a full disk is a one-line error."""
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
        line = to_strict_json(record, sort_keys=True, ensure_ascii=False) + "\n"
        try:
            with open(self.path, "ab+") as handle:
                handle.seek(0, os.SEEK_END)
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":  # a torn line from a killed run: start afresh after it
                        handle.write(b"\n")
                handle.write(line.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InputError(f"no space left on the device while writing {self.path}",
                                 "free some space and run the same command again: finished jobs are kept") from exc
            raise


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the batch lock of ``folder``; a second run into the same folder is refused at once."""
    import fcntl

    path = Path(folder) / LOCK_NAME
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise InputError(f"another batch run ({holder}) is writing to {folder}",
                             "wait for it to finish, or pass another --out") from None
        except OSError:
            pass  # a file system without locks (some network file systems): run unlocked
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield path
    finally:
        handle.close()
