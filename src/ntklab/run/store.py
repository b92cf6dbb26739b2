"""Content-addressed, crash-safe storage of unit results.

A result is stored under the key of the unit that produced it (a hash of everything that
determines it). Writes go to a temporary name in the same folder, are fsynced, then renamed,
so a killed process never leaves a file that is later read as valid.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any


class Store:
    """Results under ``root/<key[:2]>/<key>.pkl``; failures under ``root/failed/<key>.json``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pkl"

    def failure_path(self, key: str) -> Path:
        return self.root / "failed" / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def load(self, key: str) -> Any:
        with open(self.path(key), "rb") as f:
            return pickle.load(f)

    def save(self, key: str, value: Any) -> None:
        atomic_write(self.path(key), pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        self.failure_path(key).unlink(missing_ok=True)

    def record_failure(self, key: str, info: dict[str, Any]) -> None:
        atomic_write(self.failure_path(key), json.dumps(info, indent=1).encode())

    def failure(self, key: str) -> dict[str, Any] | None:
        p = self.failure_path(key)
        return json.loads(p.read_text()) if p.is_file() else None


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
