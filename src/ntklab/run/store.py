"""Content-addressed, crash-safe storage of unit results.

A result is stored under the key of the unit that produced it (a hash of everything that
determines it), at ``root/<key[:2]>/<key>.pkl``. Guarantees:

* **Never a partial file.** Writes go to ``.tmp-*`` in the same folder, are fsynced, then
  renamed over the final name (atomic on POSIX filesystems, NFS included), so a process killed
  at any moment leaves either the complete entry or none. Readers never look at ``.tmp-*``;
  stale ones (from a killed writer) are swept by :meth:`Store.clean_tmp`.
* **Corruption is detected.** An entry is ``MAGIC | blake2b-256(payload) | len(payload) |
  payload`` (the payload is a pickle). :meth:`Store.has` checks the header and size (cheap,
  catches truncation); :meth:`Store.load` checks the digest and raises
  :class:`CorruptEntryError` on any mismatch or unpickling error. The runner then discards the
  entry with a warning and recomputes the unit.
* **Many writers are fine.** Two processes computing the same unit write the same bytes
  (units are deterministic); the last rename wins. Ray workers on a cluster therefore write
  straight into the store, which must then be on a filesystem every node shares.

Failures are JSON records at ``root/failed/<key>.json`` (error, traceback); a later success
removes the record. ``root/STORE_ID`` holds a random id, which lets a Ray worker check that it
sees the same store as the driver.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

MAGIC = b"NTKLAB1\n"
_HEADER = struct.Struct("<8s32sQ")  # magic, blake2b-256 digest, payload length


class CorruptEntryError(Exception):
    """A stored entry exists but cannot be read back (truncated, altered, unpicklable)."""


def encode(value: Any) -> bytes:
    """The bytes of an entry holding ``value``."""
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(MAGIC, hashlib.blake2b(payload, digest_size=32).digest(), len(payload)) + payload


def decode(data: bytes) -> Any:
    """The value of an entry's bytes; :class:`CorruptEntryError` when they do not check out."""
    if len(data) < _HEADER.size or not data.startswith(MAGIC):
        raise CorruptEntryError("no ntklab header (truncated or not written by ntklab)")
    _, digest, length = _HEADER.unpack_from(data)
    payload = data[_HEADER.size :]
    if len(payload) != length:
        raise CorruptEntryError(f"payload is {len(payload)} bytes, the header says {length}")
    if hashlib.blake2b(payload, digest_size=32).digest() != digest:
        raise CorruptEntryError("checksum mismatch")
    try:
        return pickle.loads(payload)
    except Exception as exc:  # noqa: BLE001 - any unpickling error means the entry is unusable
        raise CorruptEntryError(f"cannot unpickle: {type(exc).__name__}: {exc}") from exc


class Store:
    """Unit results under ``root/<key[:2]>/<key>.pkl``; failures under ``root/failed/<key>.json``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """Where the result of unit ``key`` lives."""
        return self.root / key[:2] / f"{key}.pkl"

    def failure_path(self, key: str) -> Path:
        """Where the failure record of unit ``key`` lives."""
        return self.root / "failed" / f"{key}.json"

    def has(self, key: str) -> bool:
        """Whether a complete entry exists (header and size checked, not the digest)."""
        try:
            with open(self.path(key), "rb") as f:
                head = f.read(_HEADER.size)
                size = os.fstat(f.fileno()).st_size
        except (FileNotFoundError, IsADirectoryError):
            return False
        if len(head) < _HEADER.size or not head.startswith(MAGIC):
            return False
        return size == _HEADER.size + _HEADER.unpack(head)[2]

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
        atomic_write(self.path(key), encode(value))
        self.failure_path(key).unlink(missing_ok=True)

    def discard(self, key: str) -> None:
        """Remove the entry of ``key`` (e.g. a corrupt one, so that it is recomputed)."""
        self.path(key).unlink(missing_ok=True)

    def record_failure(self, key: str, info: dict[str, Any]) -> None:
        """Record why unit ``key`` failed (``info`` has at least ``error``)."""
        atomic_write(self.failure_path(key), json.dumps(info, indent=1).encode())

    def failure(self, key: str) -> dict[str, Any] | None:
        """The failure record of ``key``, or None (also for an unreadable record)."""
        try:
            info = json.loads(self.failure_path(key).read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) and "error" in info else None

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


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and reports are ordinary files
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
