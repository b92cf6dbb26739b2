"""Shared test fixtures: a private cache per session, the shared reference folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Generated data and unit results go to a temporary cache, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NTKLAB_CACHE_DIR", str(tmp_path_factory.mktemp("ntklab-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared() -> Path:
    """The project's shared folder (reference kernels, real data subsets)."""
    assert SHARED.is_dir(), f"shared folder not found at {SHARED}"
    return SHARED
