"""A user's own model: ``PATH.py:FUNCTION`` returning an ``nn.Module``, built fresh per seed."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntklab.errors import ArchError


def load_factory(ref: str) -> Callable[..., Any]:
    """The function named by ``"path/to/file.py:function"``."""
    if ":" not in ref:
        raise ArchError(f"a model factory is given as PATH.py:FUNCTION; got {ref!r}.")
    path_text, name = ref.rsplit(":", 1)
    path = Path(path_text)
    if not path.is_file():
        raise ArchError(f"model file {path} does not exist.")
    mod_name = f"ntklab_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ArchError(f"model file {path} cannot be imported as Python.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: report in one sentence
        raise ArchError(f"model file {path} failed to import: {type(exc).__name__}: {exc}.") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ArchError(f"model file {path} has no function {name!r}.")
    return fn


def build_user_model(ref: str, seed: int, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Call the factory under ``torch.manual_seed(seed)``; passes ``input_shape`` and
    ``num_outputs`` when the factory has parameters of those names."""
    fn = load_factory(ref)
    wanted = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in (("input_shape", input_shape), ("num_outputs", num_outputs)) if k in wanted}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        try:
            model = fn(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise ArchError(f"model factory {ref} raised {type(exc).__name__}: {exc}.") from None
    if not isinstance(model, nn.Module):
        raise ArchError(f"model factory {ref} returned {type(model).__name__}, not a torch nn.Module.")
    return model


def check_output(model: nn.Module, x: torch.Tensor, num_outputs: int, what: str) -> None:
    """The model must map (N, *input_shape) to (N, num_outputs)."""
    try:
        with torch.no_grad():
            y = model.eval()(x)
    except Exception as exc:  # noqa: BLE001
        raise ArchError(
            f"{what} fails on inputs of shape {tuple(x.shape)}: {type(exc).__name__}: {exc}."
        ) from None
    if tuple(y.shape) != (len(x), num_outputs):
        raise ArchError(
            f"{what} maps inputs {tuple(x.shape[1:])} to outputs {tuple(y.shape[1:])}, "
            f"but the targets have {num_outputs} value(s) per sample."
        )
