"""Content-addressed, crash-safe, data-only storage of unit results.

A result is stored under the key of the unit that produced it (a hash of everything that
determines it), at ``root/<key[:2]>/<key>.ntk``. Guarantees:

* **Reading never runs code.** An entry holds JSON and ``.npy`` arrays
  (:mod:`ntklab.run.codec`), never a pickle, so a store on a shared filesystem cannot make a
  reader run what a writer planted. Entries of the old pickle format (``.pkl``) are ignored:
  their units are computed again.
* **Never a partial file.** Writes go to ``.tmp-*`` in the same folder, are fsynced, then
  renamed over the final name (atomic on POSIX filesystems, NFS included), so a process killed
  at any moment leaves either the complete entry or none. Readers never look at ``.tmp-*``;
  stale ones (from a killed writer) are swept by :meth:`Store.clean_tmp`.
* **Corruption is detected.** An entry is ``MAGIC | SHA-256(payload) | len(payload) | payload``.
  :meth:`Store.has` checks the header and size (cheap, catches truncation); :meth:`Store.load`
  checks the digest and the encoding and raises :class:`CorruptEntryError` on any mismatch. The
  runner then discards the entry with a warning and recomputes the unit.
* **One computer per unit.** A process computes a unit only while it holds the unit's lease
  (``root/leases/<key>.lease``, :mod:`ntklab.run.lease`); another run of an overlapping config
  on the same store waits for the result instead of computing it again. A crashed holder's
  lease goes stale and is taken over.
* **A full disk is one sentence.** A write that fails for lack of space raises
  :class:`~ntklab.errors.DiskFullError`; the temporary file is removed and what is stored stays
  intact, so a rerun after freeing space resumes.

Failures are JSON records at ``root/failed/<key>.json`` (error, traceback, a random ``id``); a
later success removes the record. ``root/STORE_ID`` holds a random id, which lets a Ray worker
check that it sees the same store as the driver.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import struct
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ntklab.data.embedded import cache_dir
from ntklab.errors import DiskFullError
from ntklab.run import codec
from ntklab.run.lease import Lease, LeaseTimes, LeaseWatch, try_acquire

MAGIC = b"NTKLAB2\n"
SUFFIX = ".ntk"
_HEADER = struct.Struct("<8s32sQ")  # magic, SHA-256 digest of the payload, payload length
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CorruptEntryError(Exception):
    """A stored entry exists but cannot be read back (truncated, altered, not ntklab's)."""


def encode(value: Any) -> list[bytes]:
    """The bytes of an entry holding ``value``, as chunks (header first).

    ``TypeError`` if ``value`` holds something other than data (see :mod:`ntklab.run.codec`).
    """
    chunks = codec.encode(value)
    digest = hashlib.sha256()
    for c in chunks:
        digest.update(c)
    return [_HEADER.pack(MAGIC, digest.digest(), sum(len(c) for c in chunks)), *chunks]


def decode(data: bytes) -> Any:
    """The value of an entry's bytes; :class:`CorruptEntryError` when they do not check out."""
    if len(data) < _HEADER.size or not data.startswith(MAGIC):
        raise CorruptEntryError("no ntklab header (truncated or not written by ntklab)")
    _, digest, length = _HEADER.unpack_from(data)
    payload = memoryview(data)[_HEADER.size :]
    if len(payload) != length:
        raise CorruptEntryError(f"payload is {len(payload)} bytes, the header says {length}")
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptEntryError("checksum mismatch")
    try:
        return codec.decode(payload)
    except codec.DecodeError as exc:
        raise CorruptEntryError(f"cannot decode: {exc}") from exc


class Store:
    """Unit results under ``root/<key[:2]>/<key>.ntk``; failures under ``root/failed/<key>.json``.

    ``lease_times`` sets the leases' heartbeat, staleness and polling (see :mod:`ntklab.run.lease`).
    """

    def __init__(self, root: str | Path, lease_times: LeaseTimes | None = None) -> None:
        self.root = Path(root)
        self.lease_times = lease_times or LeaseTimes()

    def path(self, key: str) -> Path:
        """Where the result of unit ``key`` lives."""
        return self.root / key[:2] / f"{key}{SUFFIX}"

    def failure_path(self, key: str) -> Path:
        """Where the failure record of unit ``key`` lives."""
        return self.root / "failed" / f"{key}.json"

    def lease_path(self, key: str) -> Path:
        """Where the lease of whoever computes unit ``key`` lives."""
        return self.root / "leases" / f"{key}.lease"

    def has(self, key: str) -> bool:
        """Whether a complete entry exists (header and size checked, not the digest)."""
        try:
            with open(self.path(key), "rb") as f:
                head = f.read(_HEADER.size)
                size = os.fstat(f.fileno()).st_size
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return False
        if len(head) < _HEADER.size or not head.startswith(MAGIC):
            return False
        return size == _HEADER.size + _HEADER.unpack(head)[2]

    def size(self, key: str) -> int:
        """Bytes of the entry of ``key`` on disk (0 when absent)."""
        try:
            return self.path(key).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return 0

    def load(self, key: str) -> Any:
        """The stored result; ``KeyError`` if absent, :class:`CorruptEntryError` if unreadable."""
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise CorruptEntryError(f"cannot read: {exc}") from exc
        return decode(data)

    def save(self, key: str, value: Any) -> None:
        """Store ``value`` as the result of unit ``key`` (atomically) and clear any failure."""
        self.write(key, encode(value))

    def write(self, key: str, entry: Sequence[bytes]) -> None:
        """Store an entry already encoded with :func:`encode` and clear any failure."""
        atomic_write(self.path(key), entry)
        self.failure_path(key).unlink(missing_ok=True)

    def discard(self, key: str) -> None:
        """Remove the entry of ``key`` (e.g. a corrupt one, so that it is recomputed)."""
        self.path(key).unlink(missing_ok=True)

    def record_failure(self, key: str, info: dict[str, Any]) -> None:
        """Record why unit ``key`` failed (``info`` has at least ``error``).

        Every record gets a random ``id``, so a process waiting for another to compute a unit
        can tell a failure recorded meanwhile from an older one.
        """
        record = {**info, "id": uuid.uuid4().hex}
        atomic_write(self.failure_path(key), json.dumps(record, indent=1).encode())

    def failure(self, key: str) -> dict[str, Any] | None:
        """The failure record of ``key``, or None (also for an unreadable record)."""
        try:
            info = json.loads(self.failure_path(key).read_text())
        except (OSError, ValueError):
            return None
        if not (isinstance(info, dict) and isinstance(info.get("error"), str)):
            return None
        return info

    def try_lease(self, key: str) -> Lease | None:
        """The lease to compute unit ``key``, or None while another process holds it."""
        return try_acquire(self.lease_path(key), self.lease_times.heartbeat_s)

    def section(self, name: str) -> Store:
        """A store of derived results beside the units, under ``root/name`` (``name`` is not two
        hex digits, so its entries never mix with the units': ``root/*/*.ntk`` lists units only)."""
        return Store(self.root / name, self.lease_times)

    def lease_watch(self) -> LeaseWatch:
        """A judge of other processes' leases on this store (live, or stale and broken)."""
        return LeaseWatch(self.lease_times.stale_s)

    def clean_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove ``.tmp-*`` files older than ``older_than_s`` (left by killed writers).

        Young ones are kept: another process (a Ray worker, a concurrent run) may be writing.
        Returns how many were removed.
        """
        if not self.root.is_dir():
            return 0
        now, removed = time.time(), 0
        for p in self.root.glob("*/.tmp-*"):
            try:
                if now - p.stat().st_mtime > older_than_s:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def ensure_id(self) -> str:
        """The store's random id (``root/STORE_ID``), created on first use."""
        p = self.root / "STORE_ID"
        if not p.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
            with os.fdopen(fd, "w") as f:
                f.write(uuid.uuid4().hex)
            try:
                os.link(tmp, p)  # fails if another process created it first: keep theirs
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links: last writer wins, before any use
                os.replace(tmp, p)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return p.read_text().strip()

    def read_id(self) -> str | None:
        """The store's id if this process sees one (None: not created, or not this store)."""
        try:
            return (self.root / "STORE_ID").read_text().strip()
        except OSError:
            return None


def default_store() -> Store:
    """The shared unit store: ``$NTKLAB_CACHE_DIR/units`` (default ``~/.cache/ntklab/units``)."""
    return Store(cache_dir() / "units")


def atomic_write(path: Path, data: bytes | Sequence[bytes]) -> None:
    """Write ``data`` (bytes, or chunks of bytes) to ``path`` atomically: temporary file,
    fsync, rename. A full disk raises :class:`~ntklab.errors.DiskFullError` and leaves
    ``path`` as it was."""
    chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and reports are ordinary files
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise DiskFullError.at(path) from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
