"""``explain.json``: the state of an explain run, which makes running the same command resume."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ntklab.config.base import AnyConfig
from ntklab.config.loading import validate
from ntklab.errors import RunDirError
from ntklab.explain.costs import Estimator
from ntklab.explain.inputs import Inputs
from ntklab.explain.plan import Head, Plan, Tail


def cfg_json(cfg: AnyConfig) -> dict[str, Any]:
    """``cfg`` as the JSON tree ``explain.json`` keeps (validated again on resume)."""
    return cfg.model_dump(mode="json")


def load_state(out: Path, inputs: Inputs) -> dict[str, Any] | None:
    """The saved state of an explain folder (None for a new one); refuses other inputs or a foreign folder."""
    meta = out / "explain.json"
    if meta.is_file():
        try:
            state = json.loads(meta.read_text())
        except (OSError, ValueError):
            state = None
        if not isinstance(state, dict):
            raise RunDirError(f"{meta} is not readable JSON; remove it or choose another --out.") from None
        if state.get("inputs_digest") != inputs.digest():
            raise RunDirError(
                f"{out} holds an explain run with other inputs (model, data, settings or budget); "
                "choose another --out or remove it."
            )
        return state
    if out.exists() and (
        not out.is_dir() or any(not p.name.startswith(("user-model-", "data-")) for p in out.iterdir())
    ):
        raise RunDirError(f"{out} exists and is not an ntklab explain folder; choose another --out.")
    return None


def save_state(out: Path, state: dict[str, Any]) -> None:
    """Write ``explain.json`` atomically (a crash leaves the previous state)."""
    from ntklab.run.store import atomic_write

    atomic_write(out / "explain.json", json.dumps(state, indent=1, default=str).encode())


def resumed_plan(state: dict[str, Any], estimator: Estimator) -> Plan:
    """The plan saved in ``explain.json`` (resume: same configs, same unit keys)."""
    configs = {k: validate(v) for k, v in state["plan_configs"].items()}
    ds = configs["data-scaling"]
    head = Head(
        ds.data.n_max,
        ds.data.n_min,
        ds.seeds,
        ds.train.total_steps(ds.data.n_max),
        ds.data.n_val,
        ds.data.n_test or 0,
        ds.data.grid_factor,
        ds.train.lr,
        ds.train.epochs,
        ds.train.min_steps if ds.train.epochs is not None else None,
        bool(state.get("head_short", False)),
    )
    return Plan(head, Tail(**state["tail"]), configs, estimator(configs))


def new_state(
    inputs: Inputs,
    plan: Plan,
    budget_s: float,
    budget_minutes: float,
    overrides: Sequence[str],
    config: str | Path | None,
) -> dict[str, Any]:
    """The state of a new explain run with ``plan``: what defines it and the configs to run."""
    return {
        "version": 1,
        "inputs_digest": inputs.digest(),
        "inputs": {
            "model": inputs.model_desc,
            "data": inputs.data_desc,
            "budget_minutes": budget_minutes,
            "n_max": inputs.n_cap,
            "overrides": list(overrides),
            "config": str(config) if config else None,
        },
        "budget_seconds": budget_s,
        "head_short": plan.head.short,
        "tail": asdict(plan.tail),
        "plan_configs": {k: cfg_json(v) for k, v in plan.configs.items()},
    }
