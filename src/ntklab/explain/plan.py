"""The plan ladder: data-scaling heads and after-kernel/evolution tails, largest first.

:func:`choose_plan` picks the largest plan whose estimated seconds fit the budget;
:func:`replan` re-plans what is left of it between experiments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ntklab.config.base import AnyConfig
from ntklab.config.loading import validate
from ntklab.errors import DataError
from ntklab.explain.costs import Estimator, available_experiments
from ntklab.explain.inputs import LADDER_MAX, MISSING, Inputs, deep_merge, get_dotted, user_length
from ntklab.explain.probe import Probe

HEAD_SHARE = 0.6  # data scaling may take at most this share of the planned time
#: Training rules (epochs, at least this many steps) the planner chooses from, the longest
#: first; every one trains with early stopping on the validation split. The first is the data
#: scaling default (config.SCALING_TRAIN). The plan shrinks n, seeds and test points before it
#: shortens training, and goes below the last of these ("a useful length") only as a last
#: resort, which the report then says.
TRAIN_RULES = ((100.0, 1000), (50.0, 500), (30.0, 300))
SHORT_RULES = ((15.0, 150), (8.0, 80))  # last resorts: too short to trust the network
N_USEFUL = 512  # with a longer rule left, n_max shrinks only down to this before training does


@dataclass(frozen=True)
class Head:
    """The data-scaling part of a plan (shared by the other experiments: data, seeds, training).

    The networks train by a rule, ``epochs`` with at least ``min_steps`` steps and early
    stopping on the validation split (:meth:`ntklab.config.TrainConfig.total_steps`); None for
    both: the training length the user set (``train.steps`` / ``train.epochs``). ``steps`` is
    what the rule plans at ``n_max``; ``short``: the rule is below a useful length (a last resort).
    """

    n_max: int
    n_min: int
    seeds: int
    steps: int
    n_val: int
    n_test: int
    factor: float = 2.0  # the grid n_min · factor^k lands on n_max (3 or 4 points)
    lr: float | None = None  # the probe's stable learning rate (None: the config's)
    epochs: float | None = None
    min_steps: int | None = None
    short: bool = False


@dataclass(frozen=True)
class Tail:
    """The after-kernel and kernel-evolution parts of a plan.

    ``rank``: the preference of :func:`tail_levels` (lower first; from ``PARTIAL`` on, an
    experiment is dropped).
    """

    pretrained: bool
    n0: int
    grow: bool
    evolution: bool
    checkpoints: int
    probe: int  # probe_train = regress_n; probe_test = min(probe, n_test)
    evo_n: int = 0  # the evolution run's training-set size (0: n_max)
    pk_seeds: int = 0  # repetitions of the after-kernel (0: the head's seeds)
    rank: int = 0

    def pretrained_part(self) -> tuple[bool, int, bool, int]:
        """What defines the after-kernel experiment."""
        return (self.pretrained, self.n0, self.grow, self.pk_seeds)


@dataclass
class Plan:
    """A full plan: the configs of the experiments to run and their estimated seconds."""

    head: Head
    tail: Tail
    configs: dict[str, AnyConfig]
    estimates: dict[str, float]
    fits: bool = True

    @property
    def total(self) -> float:
        return sum(self.estimates.values())

    def describe(self) -> dict[str, Any]:
        """The plan's numbers for ``explain.json`` and the report."""
        ds = self.configs.get("data-scaling")
        d: dict[str, Any] = {
            "n_grid": ds.data.n_grid() if ds else [],
            "seeds": ds.seeds if ds else self.head.seeds,
            "steps": ds.train.total_steps(self.head.n_max) if ds else self.head.steps,
            "lr": ds.train.lr if ds else self.head.lr,
            "n_val": self.head.n_val,
            "n_test": self.head.n_test,
        }
        if ds is not None:
            d["training"] = training_rule(ds, self.head.short)
        pk = self.configs.get("pretrained-kernel")
        if pk is not None:
            d.update(n0=pk.pretrained.n0[0], grow=pk.pretrained.grow)
        ke = self.configs.get("kernel-evolution")
        if ke is not None:
            d.update(
                evolution_n=ke.evolution.n,
                checkpoints=ke.evolution.n_checkpoints,
                probe=ke.evolution.probe_train,
            )
        d["estimated_seconds"] = {k: round(v, 1) for k, v in self.estimates.items()}
        return d


def training_rule(cfg: AnyConfig, short: bool = False) -> str:
    """The rule the networks of ``cfg`` train by, in words, with the steps it plans on the grid."""
    tc, grid = cfg.train, cfg.data.n_grid()
    if tc.epochs is not None:
        length = f"{tc.epochs:g} epochs, at least {tc.min_steps} steps" + (
            f", at most {tc.max_steps}" if tc.max_steps is not None else ""
        )
    else:
        length = f"{tc.total_steps(grid[-1])} steps"
    steps = sorted({tc.total_steps(n) for n in grid})
    planned = f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"
    stop = (
        f", early stopping on {cfg.data.n_val} validation points (patience {tc.patience:g} of training; "
        "best-validation weights kept)"
        if tc.early_stopping and cfg.data.n_val > 0
        else ", to the end"
    )
    text = (
        f"{tc.optimizer} lr {tc.lr:.3g}, {tc.schedule} schedule, batch {tc.batch_size}, {length} "
        f"({planned} planned steps on n = {grid[0]}..{grid[-1]}){stop}"
    )
    if short:
        text += "; shortened below a useful length to fit the budget: the networks may be under-trained"
    return text


def _pow2_down(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def rule_steps(epochs: float, min_steps: int, n: int, batch: int, max_steps: int | None = None) -> int:
    """Steps of the rule ``epochs`` with at least ``min_steps`` on n points (TrainConfig.total_steps)."""
    steps = max(1, min_steps, math.ceil(epochs * n / max(min(batch, n), 1)))
    return min(steps, max_steps) if max_steps is not None else steps


def head_levels(inputs: Inputs, probe: Probe) -> list[Head]:
    """Data-scaling plans from the largest to the smallest, in order of preference.

    n_max runs over the largest pool size allowed and the powers of two below it (down to
    32); the grid is 4 points from n_max/8 to n_max (3 when n_max is tiny), geometric. Training
    gets the share it needs: for each rule of ``TRAIN_RULES`` (longest first), n_max shrinks
    down to ``N_USEFUL`` (with 3 then 2 seeds, 1000/500/250 test points) before the next,
    shorter rule is tried; the last useful rule goes down to the smallest n_max, then again on
    one seed, and only then come the ``SHORT_RULES`` (marked ``short``). Values the user set
    (seeds, training length, n_val, n_test) are kept.
    """
    floor = max(8, 2 * probe.num_outputs)
    cap = min(inputs.n_cap or LADDER_MAX, LADDER_MAX)
    fixed_val, fixed_test, fixed_seeds, fixed_min, fixed_max = (
        get_dotted(inputs.base, k)
        for k in ("data.n_val", "data.n_test", "seeds", "train.min_steps", "train.max_steps")
    )
    lr = None if get_dotted(inputs.base, "train.lr") is not MISSING else probe.lr or None
    max_steps = None if fixed_max is MISSING else fixed_max

    def n_val_for(n_max: int) -> int:
        return int(fixed_val) if fixed_val is not MISSING else int(min(256, max(32, n_max // 4)))

    top = min(cap, probe.pool - n_val_for(min(cap, probe.pool)))
    if top < 8:
        raise DataError(
            f"the training pool has {probe.pool} samples; too few for a data-scaling plan with a validation split."
        )
    n_maxes = [top] + [q for q in (_pow2_down(top) >> i for i in range(12)) if 32 <= q < top]
    useful = min(N_USEFUL, top)
    tests = (1000, 500, 250)
    long_variants = ((3, 0), (2, 0), (2, 1), (2, 2))
    levels: list[tuple[float | None, int | None, bool, list[int], tuple[tuple[int, int], ...]]] = []
    if user_length(inputs):  # the user's training length: only n, seeds and test points shrink
        levels.append((None, None, False, n_maxes, long_variants))
    else:
        for k, (epochs, min_steps) in enumerate(TRAIN_RULES):
            last = k == len(TRAIN_RULES) - 1
            levels.append(
                (epochs, min_steps, False, [q for q in n_maxes if last or q >= useful], long_variants)
            )
        levels.append((*TRAIN_RULES[-1], False, n_maxes, ((1, 2),)))  # one seed before short training
        levels += [(e, m, True, n_maxes[-3:], ((2, 2),)) for e, m in SHORT_RULES]
    out: list[Head] = []
    for epochs, min_steps, short, tops, variants in levels:
        for top_n in tops:
            n_val = n_val_for(top_n)
            n_max = min(top_n, probe.pool - n_val)
            n_min = max(min(floor, n_max // 4), n_max // 8, 2)
            ratio = n_max / n_min
            factor = ratio ** (1 / (3 if ratio >= 6 else 2))
            if epochs is None:
                steps = 0  # the user's length: make_configs reads it from the config
            else:
                m = int(fixed_min) if fixed_min is not MISSING else int(min_steps or 0)
                steps = rule_steps(epochs, m, n_max, probe.batch, max_steps)
            for seeds, ti in variants:
                t = min(probe.n_test_max, tests[ti]) if fixed_test is MISSING else int(fixed_test)
                s = seeds if fixed_seeds is MISSING else int(fixed_seeds)
                out.append(
                    Head(n_max, n_min, s, steps, n_val, t, round(factor, 6), lr, epochs, min_steps, short)
                )
    return list(dict.fromkeys(out))


#: The after-kernel's sizes, largest first: (grow: also n₀ = n at every n, one seed only).
PRETRAINED_LEVELS = ((True, False), (False, False), (False, True))
#: The evolution run's sizes, largest first: (checkpoints, probe points, its n = n_max / this).
EVOLUTION_LEVELS = (
    (24, 1024, 1),
    (20, 768, 1),
    (16, 512, 1),
    (12, 384, 1),
    (10, 256, 1),
    (8, 128, 1),
    (6, 128, 1),
    (5, 64, 1),
    (4, 64, 1),
    (4, 64, 2),
    (4, 32, 4),
)
PARTIAL = 1000  # tails of this rank and above drop an experiment


def tail_levels(head: Head, available: Sequence[str]) -> list[Tail]:
    """After-kernel and evolution plans, in order of preference (``Tail.rank``).

    First every pair of an after-kernel size (n₀ = n_max/2, also n₀ = n at every n; then
    n₀ = n_max/2 alone; then that on one seed) and an evolution size (on n_max, then n_max/2,
    n_max/4 points, with 24 down to 4 checkpoints and probes of 1024 down to 32 points); the
    rank is the sum of the two sizes' places, so the budget is shared between both experiments.
    Then evolution only (rank ``PARTIAL`` + its place), after-kernel only, neither.
    """
    n0 = max(head.n_min, head.n_max // 2)
    one = 1 if head.seeds > 1 else 0
    pk = [(g, one if single else 0) for g, single in PRETRAINED_LEVELS if not (single and not one)]

    def evolution(i: int) -> tuple[int, int, int]:
        ckpts, probe, div = EVOLUTION_LEVELS[i]
        evo_n = max(head.n_max // div, min(16, head.n_max))
        return ckpts, min(probe, evo_n), evo_n

    out = []
    for a, (grow, seeds) in enumerate(pk):
        for b in range(len(EVOLUTION_LEVELS)):
            out.append(Tail(True, n0, grow, True, *evolution(b), seeds, a + b))
    out.sort(key=lambda t: t.rank)  # stable: of one rank, the larger after-kernel first
    out += [Tail(False, n0, False, True, *evolution(b), 0, PARTIAL + b) for b in range(len(EVOLUTION_LEVELS))]
    out += [
        Tail(True, n0, g, False, *evolution(len(EVOLUTION_LEVELS) - 1), s, 2 * PARTIAL + a)
        for a, (g, s) in enumerate(pk)
    ]
    out.append(Tail(False, n0, False, False, *evolution(len(EVOLUTION_LEVELS) - 1), 0, 3 * PARTIAL))
    has_pk, has_evo = "pretrained-kernel" in available, "kernel-evolution" in available
    kept = []
    for t in out:
        if (t.pretrained and not has_pk) or (t.evolution and not has_evo):
            continue  # the same plan as a tail without that experiment
        kept.append(t)
    return kept


def make_configs(inputs: Inputs, head: Head, tail: Tail) -> dict[str, AnyConfig]:
    """The validated configs of a (head, tail) plan; the user's own settings always win.

    Data scaling and the after-kernel train by the head's rule (early stopping on the
    validation split); the evolution run trains its n points for the steps the same rule
    plans there, to the end (its checkpoints are spread over the whole of training).
    """
    spec = inputs.model is None
    train: dict[str, Any] = {"lr": head.lr} if head.lr else {}
    if head.epochs is not None and not user_length(inputs):
        train.update(epochs=head.epochs, min_steps=head.min_steps, early_stopping=True)
    base = deep_merge(
        {
            "seeds": head.seeds,
            "train": train,
            "data": {"n_val": head.n_val, "n_test": head.n_test},
            "methods": ["nn", "entk", "ntk"] if spec else ["nn", "entk"],
        },
        inputs.base,
    )
    base["data"].update(n_min=head.n_min, n_max=head.n_max, grid_factor=head.factor)
    ds = validate({**base, "experiment": "data-scaling"})
    configs: dict[str, AnyConfig] = {"data-scaling": ds}
    # the other experiments share every section of data scaling exactly (experiments may have
    # other section defaults), so they train the same networks and reuse its units
    base = {k: v for k, v in ds.model_dump(mode="json").items() if k != "experiment"}
    if tail.pretrained:
        raw = deep_merge(
            {
                **base,
                "seeds": tail.pk_seeds or head.seeds,
                "pretrained": {"n0": [tail.n0], "grow": tail.grow},
            },
            {"pretrained": inputs.sections.get("pretrained", {})},
        )
        configs["pretrained-kernel"] = validate({**raw, "experiment": "pretrained-kernel"})
    if tail.evolution:
        evo_n = tail.evo_n or head.n_max
        evo = {
            "n": evo_n,
            "n_checkpoints": tail.checkpoints,
            "probe_train": tail.probe,
            "probe_test": min(tail.probe, head.n_test),
            "regress_n": tail.probe,
        }
        fixed_length = {**base["train"], "epochs": None, "steps": ds.train.total_steps(evo_n)}
        raw = deep_merge(
            {**base, "seeds": 1, "evolution": evo, "train": {**fixed_length, "early_stopping": False}},
            {"evolution": inputs.sections.get("evolution", {})},
        )
        configs["kernel-evolution"] = validate({**raw, "experiment": "kernel-evolution"})
    return configs


def _best_fit(
    inputs: Inputs,
    head: Head,
    tails: Sequence[Tail],
    estimator: Estimator,
    seconds: float,
    names: Sequence[str] | None = None,
) -> tuple[Tail, dict[str, AnyConfig], dict[str, float]] | None:
    """The first of ``tails`` (in order of preference) whose plan (its experiments among
    ``names``; all when None) fits ``seconds``; None when none fits."""
    for tail in tails:
        configs = make_configs(inputs, head, tail)
        if names is not None:
            configs = {k: v for k, v in configs.items() if k in names}
        est = estimator(configs)
        if sum(est.values()) <= seconds:
            return tail, configs, est
    return None


def choose_plan(inputs: Inputs, probe: Probe, estimator: Estimator, seconds: float) -> Plan:
    """The largest plan whose estimate fits ``seconds``.

    The heads of :func:`head_levels` that train to a useful length first: the first whose data
    scaling takes at most ``HEAD_SHARE`` of ``seconds`` with the most preferred tail that keeps
    every available experiment and fits; else the first with the most preferred tail that
    fits, dropping experiments (training keeps its share before the other experiments do).
    Then the same with the ``short`` heads. When nothing fits, the smallest head and smallest
    full tail with ``fits = False``.
    """
    avail = available_experiments()
    heads = head_levels(inputs, probe)
    for group in ([h for h in heads if not h.short], [h for h in heads if h.short]):
        for head in group:
            tails = tail_levels(head, avail)
            if estimator(make_configs(inputs, head, tails[-1]))["data-scaling"] > HEAD_SHARE * seconds:
                continue
            found = _best_fit(inputs, head, [t for t in tails if t.rank < PARTIAL], estimator, seconds)
            if found is not None:
                return Plan(head, *found)
        for head in group:
            tails = tail_levels(head, avail)
            if estimator(make_configs(inputs, head, tails[-1]))["data-scaling"] > seconds:
                continue
            found = _best_fit(inputs, head, tails, estimator, seconds)
            if found is not None:
                return Plan(head, *found)
    head = heads[-1]
    tails = tail_levels(head, avail)
    tail = [t for t in tails if t.rank < PARTIAL][-1] if tails[0].rank < PARTIAL else tails[-1]
    configs = make_configs(inputs, head, tail)
    return Plan(head, tail, configs, estimator(configs), fits=False)


def replan(
    inputs: Inputs, plan: Plan, estimator: Estimator, seconds: float, remaining: Sequence[str]
) -> Plan:
    """Re-plan the experiments ``remaining`` (those still to run, also ones dropped earlier) to
    fit ``seconds``: the most preferred tail that fits, keeping the experiments already run as
    they are; ``fits = False`` and none of them when nothing fits."""
    tails = tail_levels(plan.head, available_experiments())
    if "pretrained-kernel" not in remaining:  # it ran (or was dropped) as it is
        tails = [t for t in tails if t.pretrained_part() == plan.tail.pretrained_part()] or tails
    kept = {k: v for k, v in plan.configs.items() if k not in remaining}
    found = _best_fit(inputs, plan.head, tails, estimator, seconds, remaining)
    if found is None:
        return Plan(plan.head, tails[-1], kept, plan.estimates, fits=False)
    tail, todo, est = found
    return Plan(plan.head, tail, {**kept, **todo}, {**plan.estimates, **est})


def describe_config(cfg: AnyConfig) -> str:
    """One line with what the planner chose for ``cfg``."""
    if cfg.experiment == "pretrained-kernel":
        grow = " and at n0 = n" if cfg.pretrained.grow else ""
        return f"after-kernel at n0 = {cfg.pretrained.n0[0]}{grow}, {cfg.seeds} seeds"
    if cfg.experiment == "kernel-evolution":
        ev = cfg.evolution
        return (
            f"n = {ev.n}, {ev.n_checkpoints} checkpoints, probe {ev.probe_train} train / {ev.probe_test} test, "
            f"{cfg.train.total_steps(ev.n)} training steps (no early stopping)"
        )
    return (
        f"n ∈ {{{', '.join(map(str, cfg.data.n_grid()))}}}, {cfg.seeds} seeds, "
        f"{cfg.data.n_val} val / {cfg.data.n_test} test points, methods {', '.join(cfg.methods)}; "
        f"training: {training_rule(cfg)}"
    )
