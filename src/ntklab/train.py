"""Network training: SGD (momentum) or Adam, MSE or cross-entropy, LR schedules, checkpoints.

The MSE loss is the metric of docs/design.md: the mean over samples of the squared error summed over
outputs, so the network and kernel regression minimise the same quantity.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ntklab.config.sections import TrainConfig
from ntklab.progress import progress_bar


class Centered(nn.Module):
    """f(x) − f₀(x): the network minus a frozen copy of itself at initialization.

    The frozen copy has ``requires_grad=False``, so the eNTK of the centered model equals the
    eNTK of the network.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.init = copy.deepcopy(net).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) - self.init(x)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over samples of Σ_outputs (pred − target)²; pred, target (N, K)."""
    return (pred - target).pow(2).sum(-1).mean()


def zero_one(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction misclassified: argmax for K > 1 outputs, sign for one output (labels 0/1).

    NaN for regression data (labels < 0)."""
    if len(labels) and labels.min() < 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    guess = (pred[:, 0] > 0).long() if pred.shape[1] == 1 else pred.argmax(1)
    return (guess != labels).double().mean()


def loss_fn(kind: str, pred: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Training loss: the MSE of docs/design.md or cross-entropy on the labels (binary: logistic)."""
    if kind == "mse":
        return mse(pred, target)
    if pred.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(pred[:, 0], labels.to(pred.dtype))
    return F.cross_entropy(pred, labels)


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Multiplier of ``cfg.lr`` at ``step`` of ``total`` (warmup, then the schedule)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    frac = step / max(total, 1)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * frac))
    if cfg.schedule == "step":
        return cfg.step_gamma ** sum(frac >= m for m in cfg.step_milestones)
    return 1.0


def make_optimizer(cfg: TrainConfig, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@dataclass
class TrainResult:
    """What training returns.

    Attributes
    ----------
    model : nn.Module
        The trained network (centered when ``train.center_output``); with early stopping, the
        best-validation checkpoint.
    history : list of dict
        ``{"step", "epoch", "lr", "train_loss"}`` at logged steps (mini-batch losses).
    checkpoints : dict[int, dict[str, Tensor]]
        ``state_dict`` copies at the requested steps (step 0 = initialization).
    steps : int
        Optimizer steps taken (fewer than planned when early stopping ended training).
    planned_steps : int
        Steps the rule planned (:meth:`TrainConfig.total_steps` or ``steps``).
    best_step : int
        Step of the returned weights (the last step without early stopping).
    val_history : list of dict
        ``{"step", "val_loss"}`` at every validation evaluation (empty without validation).
    """

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoints: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    steps: int = 0
    planned_steps: int = 0
    best_step: int = 0
    val_history: list[dict[str, float]] = field(default_factory=list)

    @property
    def stopped_early(self) -> bool:
        return self.steps < self.planned_steps

    @property
    def final_train_loss(self) -> float:
        """Mean mini-batch training loss over the last 10 % of the steps taken (the last
        logged loss when no logged step falls in that window, as in a very short run)."""
        loss = window_loss(self.history, self.steps, 0.0, 0.1)
        if math.isnan(loss) and self.history:
            return self.history[-1]["train_loss"]
        return loss

    @property
    def still_falling(self) -> bool:
        """True when training ran to its planned end with the training loss still falling.

        The mean logged mini-batch loss of the last 10 % of steps is more than 5 % below that
        of the 10 % before them, by more than two standard errors of the difference (mini-batch
        losses are noisy): more steps would most likely have fitted the training set better. A
        run ended by early stopping is not flagged (validation said stop).
        """
        if self.stopped_early or self.steps < 20:
            return False
        last = window_losses(self.history, self.steps, 0.0, 0.1)
        before = window_losses(self.history, self.steps, 0.1, 0.2)
        if len(last) < 2 or len(before) < 2:
            return False
        se = np.sqrt(last.var(ddof=1) / len(last) + before.var(ddof=1) / len(before))
        drop = before.mean() - last.mean()
        return bool(drop > 0.05 * before.mean() and drop > 2 * se)


def window_losses(history: list[dict[str, float]], end: int, lo: float, hi: float) -> np.ndarray:
    """Logged training losses at steps in [end − hi·end, end − lo·end)."""
    return np.array([h["train_loss"] for h in history if end - hi * end <= h["step"] < end - lo * end])


def window_loss(history: list[dict[str, float]], end: int, lo: float, hi: float) -> float:
    """Mean of :func:`window_losses` (NaN when none)."""
    sel = window_losses(history, end, lo, hi)
    return float(sel.mean()) if len(sel) else float("nan")


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int,
    steps: int | None = None,
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    checkpoint_steps: Sequence[int] = (),
    on_checkpoint: Callable[[int, nn.Module], None] | None = None,
    progress: bool | None = None,
    log_every: int | None = None,
) -> TrainResult:
    """Train ``model`` on (x (n, ...), y (n, K), labels (n,)) for ``steps`` (default from cfg).

    Mini-batches are drawn by reshuffling every epoch with a generator seeded by ``seed``.
    ``on_checkpoint(step, model)`` is called at every step in ``checkpoint_steps`` (before the
    update of that step; step = total means the end), and a copy of the state dict is kept.

    With ``val = (x_val, y_val, labels_val)`` the validation loss (the training loss function
    on the whole validation set) is evaluated ``cfg.evals`` times over training; with
    ``cfg.early_stopping`` training stops once ``cfg.patience`` of the planned steps have
    passed without a better validation loss, and the best-validation weights are returned.
    Raises ``FloatingPointError`` if the loss becomes NaN or infinite.
    """
    if cfg.center_output and not isinstance(model, Centered):
        model = Centered(model)
    n = len(x)
    total = cfg.total_steps(n) if steps is None else steps
    bs = min(cfg.batch_size, n)
    log_every = log_every or max(1, min(50, total // 100))
    gen = torch.Generator().manual_seed(int(seed))
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    result = TrainResult(model, planned_steps=total, best_step=total)
    wanted = set(int(s) for s in checkpoint_steps)
    eval_at = set() if val is None else {round(total * i / cfg.evals) for i in range(cfg.evals + 1)}
    patience = max(1, math.ceil(cfg.patience * total))
    best: tuple[float, int, dict[str, torch.Tensor] | None] = (math.inf, 0, None)
    autocast = cfg.precision == "bf16-mixed"
    device_type = x.device.type
    order = torch.randperm(n, generator=gen)
    pos = 0
    model.train()
    with progress_bar(total=total, desc="train", enabled=progress) as bar:
        for step in range(total + 1):
            if step in wanted:
                result.checkpoints[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if on_checkpoint is not None:
                    on_checkpoint(step, model)
            if step in eval_at:
                loss_val = val_loss(model, cfg.loss, *val)
                model.train()
                result.val_history.append({"step": step, "val_loss": loss_val})
                if loss_val < best[0]:
                    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    best = (loss_val, step, state if cfg.early_stopping else None)
                elif cfg.early_stopping and step - best[1] >= patience:
                    break
            if step == total:
                break
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos : pos + bs].to(x.device)
            pos += bs
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg, step, total)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
                pred = model(x[idx])
            loss = loss_fn(cfg.loss, pred.float(), y[idx], labels[idx])
            if not torch.isfinite(loss):
                from ntklab.divergence import nan_loss_message  # inputs, model or lr: name the cause

                raise FloatingPointError(nan_loss_message(loss.item(), step, x[idx], cfg.lr))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % log_every == 0 or step == total - 1:
                result.history.append(
                    {
                        "step": step,
                        "epoch": (step + 1) * bs / n,
                        "lr": opt.param_groups[0]["lr"],
                        "train_loss": loss.item(),
                    }
                )
                bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.update(1)
    result.steps = step
    if best[2] is not None:
        model.load_state_dict(best[2])
        result.best_step = best[1]
    else:
        result.best_step = step
    model.eval()
    return result


@torch.no_grad()
def val_loss(
    model: nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, batch: int = 4096
) -> float:
    """The training loss function on a whole held-out set (eval mode)."""
    model.eval()
    pred = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).float()
    return float(loss_fn(kind, pred, y, labels))


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, batch: int = 4096
) -> dict[str, float]:
    """Test MSE (docs/design.md) and 0-1 error of ``model`` on (x, y, labels)."""
    model.eval()
    pred = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).double()
    return {"mse": mse(pred, y.double()).item(), "error": zero_one(pred, labels).item()}


def steps_to_epochs(step: int, n: int, batch_size: int) -> float:
    """Epochs completed after ``step`` steps on ``n`` samples."""
    return step * min(batch_size, n) / n


def log_spaced_steps(total: int, count: int) -> list[int]:
    """``count`` log-spaced steps in [0, total], always including 0 and total."""
    if total <= 0:
        return [0]
    pts = np.unique(np.round(np.geomspace(1, total, max(count - 1, 1))).astype(int))
    return sorted({0, total, *pts.tolist()})
