"""Command line: ``ntklab run``, ``ntklab config show``, ``ntklab status``.

User mistakes (config, data, shapes, run directories) print one sentence and exit with 2,
without a traceback; completed units stay cached, so a re-run resumes.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path

from ntklab.cli_args import non_negative_float, positive_int
from ntklab.cli_explain import add_subcommands
from ntklab.errors import NtkLabError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def cmd_run(args: argparse.Namespace) -> int:
    """``ntklab run``: plan, compute the missing units (local or Ray), analyze, print exponents."""
    from ntklab.config.loading import load_config
    from ntklab.report.exponent_table import exponent_text
    from ntklab.report.verdicts.comparisons import training
    from ntklab.run.executors import make_executor
    from ntklab.run.runner import default_out, run_experiment

    cfg = load_config(args.config, args.set)
    out = Path(args.out) if args.out else default_out(cfg)
    executor = make_executor(args.executor, args.address, args.workers, args.threads, args.gpus)
    try:
        summary = run_experiment(
            cfg,
            out,
            executor=executor,
            retry_failed=args.retry_failed,
            progress=None if not args.quiet else False,
        )
    finally:
        executor.close()
    u = summary["units"]
    print(
        f"\n{cfg.experiment} on {cfg.data.name} ({cfg.arch.name}), {summary['seconds']:.1f} s -> {out}"
        f"\nunits: {u['computed']} computed, {u['cached']} cached, {u['failed']} failed of {u['total']}"
    )
    if summary["failed_units"]:
        print(f"{len(summary['failed_units'])} unit(s) failed (re-run with --retry-failed):")
        for f in summary["failed_units"]:
            print(f"  {f['unit']}: {f['error']}")
    print(f"scaling exponents of {summary['metric']} (L ~ a n^-alpha):")
    print(exponent_text(summary))
    for v in training(summary):  # under-trained networks: said beside the exponents they bias
        if v.status != "info":
            print(f"{v.finding}: {v.text}")
    return 1 if summary["failed_units"] else 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from ntklab.config.loading import load_config, to_toml

    print(to_toml(load_config(args.config, args.set)), end="")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """``ntklab status RUN_DIR``: done / missing / failed units of a run (from its store)."""
    from ntklab import experiments
    from ntklab.config.loading import load_config
    from ntklab.run.runner import read_run_meta, unit_status
    from ntklab.run.store import Store

    run_dir = Path(args.run_dir)
    meta = read_run_meta(run_dir)
    if meta is None or not isinstance(meta.get("store"), str):
        raise NtkLabError(f"{run_dir} is not an ntklab run directory (no run.json naming its store).")
    cfg = load_config(run_dir / "config.toml")
    store = Store(meta["store"])
    status = unit_status(experiments.get(cfg.experiment).plan(cfg), store)
    for s in status:
        line = f"{s['status']:<8} {s['kind']:<10} {s['label']}"
        print(line + (f"  ({s['error']})" if s["status"] == "failed" else ""))
    counts = {k: sum(s["status"] == k for s in status) for k in ("done", "missing", "failed")}
    print(
        f"{counts['done']} done, {counts['missing']} missing, {counts['failed']} failed (store {store.root})"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ntklab", description="Does the NTK explain how my network generalizes?")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def config_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("config", nargs="?", help="TOML config (default: the built-in data-scaling config)")
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field, e.g. data.n_max=1024",
        )

    run = sub.add_parser("run", help="run an experiment")
    config_args(run)
    run.add_argument("--out", help="run directory (default runs/EXPERIMENT-DIGEST)")
    run.add_argument("--executor", default="local", choices=["local", "ray"], help="where units run")
    run.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto or HOST:PORT (default: start a local Ray instance)",
    )
    run.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="units at a time: local worker processes (default one per core, at most 8; 1 = in-process), "
        "or CPUs of the local Ray instance (default all cores)",
    )
    run.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="torch threads per unit, in every executor (default: the unit's declared CPUs, 1)",
    )
    run.add_argument(
        "--gpus",
        type=non_negative_float,
        default=None,
        metavar="G",
        help="Ray only: GPUs per unit, e.g. 1, or 0.25 to run four units on one GPU "
        "(default: as the unit declares, none)",
    )
    run.add_argument("--retry-failed", action="store_true", help="re-run units that failed before")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=cmd_run)

    cfg = sub.add_parser("config", help="config tools")
    csub = cfg.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print the resolved config")
    config_args(show)
    show.set_defaults(func=cmd_config_show)

    st = sub.add_parser("status", help="done / missing units of a run directory")
    st.add_argument("run_dir")
    st.set_defaults(func=cmd_status)
    add_subcommands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except NtkLabError as err:
        print(f"ntklab: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a write outside the store (a figure, a cache file) found the disk full
        if err.errno not in DISK_FULL:
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(
            f"ntklab: error: the disk is full{where}; free some space and run the same command again "
            "to resume.",
            file=sys.stderr,
        )
        return NtkLabError.exit_code
    except KeyboardInterrupt:
        print(
            "ntklab: interrupted; finished units are cached, run the same command again to resume.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
