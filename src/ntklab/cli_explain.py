"""The ``ntklab explain`` and ``ntklab report`` subcommands.

``ntklab.cli`` adds them with :func:`add_subcommands`; the main CLI prints a user mistake
(:class:`~ntklab.errors.NtkLabError`) as one sentence and exits with status 2.

Examples
--------
``ntklab explain --model examples/resnet_model.py:make_model --data cifar10 --data-path
DIR/cifar-10-batches-py --budget-minutes 10 --out runs/resnet`` plans, runs and reports;
``ntklab explain --arch cnn1d --data mnist1d`` does the same for a model of ntklab's spec (its
infinite-width NTK joins the comparison); ``ntklab report runs/resnet`` re-renders the report
of any finished run directory (one experiment, or an explain folder).
"""

from __future__ import annotations

import argparse
from typing import Any

from ntklab.cli_args import positive_float, positive_int
from ntklab.errors import NtkLabError

ARCHS = ("mlp", "cnn1d", "myrtle")


def cmd_explain(args: argparse.Namespace) -> int:
    """``ntklab explain``: plan the experiments for the budget, run them, write the report.

    Returns 0, or 1 when some units failed (the report lists them).
    """
    from ntklab.explain import DEFAULT_BUDGET_MINUTES, explain

    if args.model is not None and args.arch is not None:
        raise NtkLabError(
            "give either --model (your own model) or --arch (a model of ntklab's spec), not both."
        )
    if args.model is None and args.arch is None and args.config is None:
        raise NtkLabError(
            "explain needs a model: --model PATH.py:FUNCTION (your own), or --arch/--config "
            "(a model of ntklab's spec)."
        )
    result = explain(
        args.model,
        args.data,
        out=args.out,
        budget_minutes=(
            args.budget / 60.0
            if args.budget is not None
            else args.budget_minutes
            if args.budget_minutes is not None
            else DEFAULT_BUDGET_MINUTES
        ),
        data_path=args.data_path,
        arch=args.arch,
        config=args.config,
        overrides=args.set,
        n_max=args.n_max,
        workers=args.workers,
        progress=False if args.quiet else None,
    )
    failed = sum(len(s.get("failed_units", [])) for s in result["summaries"].values())
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    """``ntklab report RUN_DIR``: write ``report.html`` and ``report.md`` into the run directory."""
    from ntklab.report.write import write_report

    html_path, md_path = write_report(args.run_dir)
    print(f"{html_path}\n{md_path}")
    return 0


def add_subcommands(subparsers: Any) -> None:
    """Add ``explain`` and ``report`` to the ``ntklab`` command's subparsers."""
    ex = subparsers.add_parser(
        "explain",
        help="does the NTK explain my model? plan within a budget, run, report",
        description="Data scaling of the network vs its eNTK at init, the after-kernel and the eNTK's "
        "motion during training, sized to the budget; writes report.html and report.md.",
    )
    ex.add_argument("--model", metavar="PATH.py:FUNCTION", help="factory returning a fresh nn.Module")
    ex.add_argument(
        "--arch", choices=ARCHS, help="a zoo model of ntklab's spec instead (adds the infinite NTK)"
    )
    ex.add_argument("--config", metavar="TOML", help="config whose sections apply to every experiment")
    ex.add_argument(
        "--data",
        required=True,
        metavar="NAME|PATH.npz",
        help="x_train/y_train/x_test/y_test .npz or a dataset name",
    )
    ex.add_argument(
        "--data-path", metavar="DIR", help="folder of an on-disk dataset (cifar10, svhn, mnist...)"
    )
    budget = ex.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget-minutes",
        type=positive_float,
        default=None,
        metavar="M",
        help="wall-clock budget in minutes (default 10)",
    )
    budget.add_argument(
        "--budget",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="wall-clock budget in seconds (instead of --budget-minutes)",
    )
    ex.add_argument("--out", metavar="DIR", help="output folder (default runs/explain-DIGEST)")
    ex.add_argument("--n-max", type=positive_int, metavar="N", help="largest training-set size to plan")
    ex.add_argument("--workers", type=positive_int, metavar="N", help="worker processes (default: all CPUs)")
    ex.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. train.lr=0.1 (kept as given; the planner picks the rest)",
    )
    ex.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ex.set_defaults(func=cmd_explain)

    rp = subparsers.add_parser("report", help="write report.html and report.md for a finished run directory")
    rp.add_argument("run_dir", help="a run directory of ntklab run, or an ntklab explain folder")
    rp.set_defaults(func=cmd_report)
