"""What a unit needs besides its arguments: the config, the data, the device."""

from __future__ import annotations

import dataclasses
from functools import cached_property

import numpy as np
import torch

from ntklab.config.base import BaseExperiment
from ntklab.data.prepare import Splits
from ntklab.run.store import Store
from ntklab.run.units import derive_seed


class RunContext:
    """Holds the resolved config and lazily loads the data once per process.

    ``store``: the unit store, for units that read other units' results (``Unit.after``);
    None: they read the default store.
    """

    def __init__(self, cfg: BaseExperiment, progress: bool | None = None, store: Store | None = None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.store = store
        self._seed_splits: dict[int, Splits] = {}

    @cached_property
    def splits(self) -> Splits:
        from ntklab.data.registry import load_splits

        return load_splits(self.cfg.data, self.n_max)

    def seed_splits(self, seed_index: int) -> Splits:
        """The splits of repetition ``seed_index``: its own order of the training pool.

        Each repetition draws its own training subsets, so that confidence intervals over
        repetitions carry the variance of the data draw, not only of the initialization:
        train[:n] of repetition i is the first n points of the permutation
        ``rng(derive_seed(data.seed, "subset", i))`` of the pool (nested across n within a
        repetition). Validation and test points are shared by all repetitions.
        """
        if seed_index not in self._seed_splits:
            s = self.splits
            rng = np.random.default_rng(derive_seed(self.cfg.data.seed, "subset", seed_index))
            perm = rng.permutation(len(s.x_train))
            self._seed_splits[seed_index] = dataclasses.replace(
                s, x_train=s.x_train[perm], y_train=s.y_train[perm], labels_train=s.labels_train[perm]
            )
        return self._seed_splits[seed_index]

    @property
    def n_max(self) -> int:
        """Largest training-set size any unit of this config uses."""
        return self.cfg.largest_n()

    @cached_property
    def device(self) -> torch.device:
        want = self.cfg.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda" and not torch.cuda.is_available():
            from ntklab.errors import ConfigError

            raise ConfigError(
                "device = 'cuda' was asked for but no CUDA device is available; use 'auto' or 'cpu'."
            )
        return torch.device(want)

    def tensor(self, a, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype, device=self.device)
