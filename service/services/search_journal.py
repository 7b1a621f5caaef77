"""The search log's write-ahead journal: answered searches on local disk until the database has
them, so that a crashed API process loses none.

Each API process appends every search, as one JSON line and one `write(2)`, to its current
segment file before the search's answer leaves; from then on the row is in the kernel, so a
`kill -9` or an OOM kill of the process loses nothing. Once the search log's writer has
committed every row a segment holds, it empties it (`truncate`); a segment that grows past a
megabyte (sustained load: rows keep arriving while the writer commits) is set aside for a new
one and deleted after its last rows are committed. While the database is unreachable the
segments are fsync'd before each retry, so rows waiting out an outage survive a power loss too.

Every live segment is locked (`flock`) by the process writing it; the lock dies with the
process. A segment nobody holds is an orphan of a process that died (or that could not reach
the database before stopping): `orphans` finds them, and the search log replays their rows
(inserts skip the ids already stored) before deleting them — at start-up, then periodically,
so a surviving process also picks up what a crashed sibling left.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUFFIX = ".wal"
DATETIME_FIELDS = ("created_at",)  # the Search row fields that are datetimes


def encode(row: dict[str, Any]) -> bytes:
    """One JSON line. Raises TypeError/ValueError for a row JSON cannot hold (the database's
    JSON columns cannot either: the writer drops it)."""
    return (json.dumps(row, default=_default, separators=(",", ":")) + "\n").encode()


def decode(line: bytes) -> dict[str, Any]:
    row = json.loads(line)
    for key in DATETIME_FIELDS:
        if isinstance(row.get(key), str):
            row[key] = datetime.fromisoformat(row[key])
    return row


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@dataclass
class Segment:
    """One open, locked segment file."""

    path: Path
    fd: int
    size: int = 0

    def append(self, line: bytes) -> None:
        view = memoryview(line)
        while view:  # a regular file takes it in one call unless the disk is full
            written = os.write(self.fd, view)
            self.size += written
            view = view[written:]

    def truncate(self) -> None:
        """Every row it holds is in the database: empty it (appends go on at its start)."""
        os.ftruncate(self.fd, 0)
        self.size = 0

    def sync(self) -> None:
        os.fsync(self.fd)

    def retire(self) -> None:
        """Its rows are in the database: delete it."""
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)

    def release(self) -> None:
        """Its rows are not all in the database: close it (unlocked, an orphan to replay)."""
        os.close(self.fd)


class SearchJournal:
    """The segment files of one directory (shared by the API processes of a host)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def new_segment(self) -> Segment:
        """Create and lock a segment. Created under a temporary name and renamed once locked,
        so that no other process can take it for an orphan in between."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex}"
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path = self.directory / f"{name}{SUFFIX}"
            os.rename(tmp, path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return Segment(path, fd)

    def orphans(self) -> Iterator[tuple[Segment, list[dict[str, Any]]]]:
        """Each segment no live process holds, locked by this one, with its rows (a line torn
        by a power loss is skipped). The caller retires it once the rows are stored, or
        releases it to try again later."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # retired meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live process writes it
                os.close(fd)
                continue
            rows = []
            with open(fd, "rb", closefd=False) as f:
                for n, line in enumerate(f):
                    try:
                        rows.append(decode(line))
                    except ValueError:
                        log.warning("search journal %s: line %d unreadable, skipped", path, n + 1)
            yield Segment(path, fd), rows
