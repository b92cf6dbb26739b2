"""Progress bars (tqdm) that stay quiet in tests and pipes unless asked for."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from tqdm.auto import tqdm


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool | None = None) -> Iterator[tqdm]:
    """A tqdm bar on stderr; ``enabled=None`` shows it only on a terminal."""
    show = sys.stderr.isatty() if enabled is None else bool(enabled)
    bar = tqdm(total=total, desc=desc, disable=not show, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
