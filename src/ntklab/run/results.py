"""The stored results of a run's units, as the analysis reads them.

Small entries (networks' metrics, kernels of a few thousand points) are read once, up front;
entries above ``EAGER_BYTES`` (the blocks of a large kernel) are read only when the analysis
asks for one and not kept, so a kernel of many blocks is never held in memory whole: the
analysis streams its blocks into a memory-mapped kernel (:mod:`ntklab.experiments.blocks`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ntklab.run.store import CorruptEntryError, Store

log = logging.getLogger(__name__)

#: Entries up to this size are read up front; larger ones when asked for (and not kept).
EAGER_BYTES = 8 * 2**20


class UnreadableResult(Exception):
    """A large entry read during the analysis did not check out (its unit is recomputed)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"stored result {key} is unreadable ({reason})")
        self.key = key


class StoredResults(Mapping[str, Any]):
    """Results of ``units`` by unit key, read from ``store``.

    An entry of at most ``eager_bytes`` (default ``EAGER_BYTES``) is read (and its checksum verified) at construction;
    an unreadable one is discarded from the store and its unit listed in :attr:`corrupt`. A
    larger entry is read at each ``results[key]`` and verified then:
    :class:`UnreadableResult` if it does not check out (the runner recomputes it).
    """

    def __init__(self, units: Sequence[Any], store: Store, eager_bytes: int | None = None) -> None:
        eager_bytes = EAGER_BYTES if eager_bytes is None else eager_bytes
        self.store = store
        self._eager: dict[str, Any] = {}
        self._lazy: set[str] = set()
        self.corrupt: list[Any] = []
        for u in {u.key: u for u in units}.values():
            if not store.has(u.key):
                continue
            if store.size(u.key) > eager_bytes:
                self._lazy.add(u.key)
                continue
            try:
                self._eager[u.key] = store.load(u.key)
            except (KeyError, CorruptEntryError) as exc:
                log.warning(
                    "stored result of unit %s (%s) is unreadable (%s); recomputing it", u.label, u.key, exc
                )
                store.discard(u.key)
                self.corrupt.append(u)

    def __getitem__(self, key: str) -> Any:
        if key in self._eager:
            return self._eager[key]
        if key not in self._lazy:
            raise KeyError(key)
        try:
            return self.store.load(key)
        except (KeyError, CorruptEntryError) as exc:
            raise UnreadableResult(key, str(exc)) from None

    def __contains__(self, key: object) -> bool:
        return key in self._eager or key in self._lazy

    def __iter__(self) -> Iterator[str]:
        yield from self._eager
        yield from self._lazy

    def __len__(self) -> int:
        return len(self._eager) + len(self._lazy)

    def lazy(self, key: str) -> bool:
        """Whether ``key`` is read from the store at each access (a large entry)."""
        return key in self._lazy
