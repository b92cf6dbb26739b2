"""What a unit needs besides its arguments: the config, the data, the device."""

from __future__ import annotations

from functools import cached_property

import torch

from ntklab.config import AnyConfig
from ntklab.data.prepare import Splits


class RunContext:
    """Holds the resolved config and lazily loads the data once per process."""

    def __init__(self, cfg: AnyConfig, progress: bool | None = None) -> None:
        self.cfg = cfg
        self.progress = progress

    @cached_property
    def splits(self) -> Splits:
        from ntklab.data.registry import load_splits

        return load_splits(self.cfg.data, self.n_max)

    @property
    def n_max(self) -> int:
        """Largest training-set size any unit of this config uses."""
        cfg = self.cfg
        if cfg.experiment == "kernel-evolution":
            return cfg.evolution.n
        extra = list(cfg.pretrained.n0) if cfg.experiment == "pretrained-kernel" else []
        return max([cfg.data.n_max, *extra])

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
