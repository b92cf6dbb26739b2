"""Leases: at most one process computes a unit (or writes a run directory) at a time.

A lease is a small file created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and on
NFSv3+), holding the holder's host, pid and a random token as JSON. While it holds the lease,
the holder touches the file every ``heartbeat_s`` seconds. Another process judges a lease:

* **live** while its file keeps changing (inode or mtime) within ``stale_s`` seconds, measured
  on the observer's own monotonic clock (so no two hosts' clocks are ever compared);
* **stale** when it has not changed for ``stale_s`` seconds (the holder crashed or its host was
  lost), or at once when it names a process of this host that no longer exists (a run killed
  with ``kill -9``), or this very process (a pid reused after a crash).

A stale lease is broken (moved aside, then removed) and can be taken again. A holder never
blocks others forever: without its heartbeat its lease goes stale. When two processes break the
same stale lease at once, both may compute; unit results are deterministic and written
atomically, so this costs time, never correctness.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LeaseTimes:
    """How often a holder refreshes its lease, when others call it stale, how often they look."""

    heartbeat_s: float = 10.0
    stale_s: float = 120.0  # > NFS attribute caching (60 s by default) plus a heartbeat
    poll_s: float = 0.5


def _read_info(path: Path) -> dict[str, Any] | None:
    """The lease's JSON (None if absent, empty or unreadable: e.g. being written)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _stamp(path: Path) -> tuple[int, int] | None:
    """(inode, mtime_ns) of the lease file, None if it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _holder_gone(info: dict[str, Any] | None) -> bool:
    """Whether the lease names a process of this host that is gone (or this process itself)."""
    if not info or info.get("host") != socket.gethostname():
        return False
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    return pid == os.getpid() or not _pid_alive(pid)


class Lease:
    """A lease this process holds; refreshed by a heartbeat thread until :meth:`release`."""

    def __init__(self, path: Path, token: str, heartbeat_s: float) -> None:
        self.path, self.token = path, token
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(heartbeat_s,), name=f"ntklab-lease-{path.name}", daemon=True
        )
        self._thread.start()

    def _beat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file if it is still this holder's."""
        self._stop.set()
        self._thread.join(timeout=5)
        info = _read_info(self.path)
        if info is not None and info.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_acquire(path: Path, heartbeat_s: float) -> Lease | None:
    """Take the lease at ``path`` if nobody holds it (None otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    info = {"host": socket.gethostname(), "pid": os.getpid(), "token": token, "since": time.time()}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    try:
        os.write(fd, json.dumps(info).encode())
    finally:
        os.close(fd)
    return Lease(path, token, heartbeat_s)


@dataclass
class LeaseWatch:
    """Judges leases held by others (live or stale), remembering when each last changed."""

    stale_s: float = LeaseTimes.stale_s
    clock: Callable[[], float] = time.monotonic
    _seen: dict[Path, tuple[tuple[int, int], float]] = field(default_factory=dict)

    def held(self, path: Path) -> bool:
        """Whether a live holder has the lease at ``path``; a stale lease is broken on the way."""
        stamp = _stamp(path)
        if stamp is None:
            self._seen.pop(path, None)
            return False
        now = self.clock()
        last = self._seen.get(path)
        if last is None or last[0] != stamp:
            self._seen[path] = (stamp, now)
            last = self._seen[path]
        if _holder_gone(_read_info(path)) or now - last[1] > self.stale_s:
            break_lease(path, stamp)
            self._seen.pop(path, None)
            return _stamp(path) is not None  # someone may have taken it since
        return True


def break_lease(path: Path, stamp: tuple[int, int]) -> None:
    """Remove the stale lease at ``path`` if it is still the one seen (``stamp``).

    The file is first renamed to a unique name (atomic: only one breaker gets it); if what was
    moved is not the stale lease (a new holder took the lease meanwhile), it is put back.
    """
    grave = path.with_name(f".broken-{uuid.uuid4().hex}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return
    try:
        if _stamp(grave) != stamp:
            with contextlib.suppress(OSError):
                os.link(grave, path)  # fails if yet another holder exists: theirs stays
    finally:
        with contextlib.suppress(FileNotFoundError):
            grave.unlink()


@contextlib.contextmanager
def holding(path: Path, times: LeaseTimes | None = None) -> Iterator[Lease]:
    """Hold the lease at ``path`` for the block, waiting while a live holder has it."""
    times = times or LeaseTimes()
    watch = LeaseWatch(times.stale_s)
    while True:
        lease = try_acquire(path, times.heartbeat_s)
        if lease is not None:
            break
        if watch.held(path):
            time.sleep(times.poll_s)
    try:
        yield lease
    finally:
        lease.release()
