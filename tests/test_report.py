"""Reports: verdicts from summaries, Markdown and self-contained HTML, ``ntklab report``."""

from __future__ import annotations

import argparse
import base64
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from ntklab.errors import NtkLabError, RunDirError  # noqa: E402
from ntklab.report.exponent_table import exponent_text  # noqa: E402
from ntklab.report.formatting import fmt_alpha, fmt_exp, fmt_num  # noqa: E402
from ntklab.report.html import png_width, render_html  # noqa: E402
from ntklab.report.labels import method_label  # noqa: E402
from ntklab.report.markdown import render_markdown  # noqa: E402
from ntklab.report.outline import outline  # noqa: E402
from ntklab.report.runs import collect  # noqa: E402
from ntklab.report.verdicts import verdicts  # noqa: E402
from ntklab.report.verdicts.comparisons import Verdict  # noqa: E402
from ntklab.report.write import write_report  # noqa: E402


def exp(alpha: float, lo: float, hi: float, a: float = 1.5) -> dict[str, float]:
    return {"alpha": alpha, "ci_low": lo, "ci_high": hi, "a": a, "c": 0.0}


DATA_SCALING = {
    "experiment": "data-scaling",
    "exponents": {"nn": exp(0.4213, 0.37, 0.47), "entk": exp(0.2104, 0.18, 0.24, 0.9)},
    "n_grid": [32, 64, 128, 256],
    "metric": "test_mse",
    "seconds": 12.5,
    "units": {"total": 10, "computed": 10, "cached": 0, "failed": 0},
    "failed_units": [],
    "figures": ["scaling.png"],
}
PRETRAINED = {
    "experiment": "pretrained-kernel",
    "exponents": {
        "nn": exp(0.42, 0.37, 0.47),
        "entk": exp(0.21, 0.18, 0.24),
        "after_kernel@n0=128": exp(0.30, 0.26, 0.34),
        "after_kernel@n0=n": exp(0.44, 0.30, 0.50),
    },
    "n_grid": [32, 64, 128, 256],
    "metric": "test_mse",
    "figures": [],
}
EVOLUTION = {
    "experiment": "kernel-evolution",
    "exponents": {},
    "evolution": {
        "verdict": "keeps-moving",
        "verdict_half_resolution": "keeps-moving",
        "total_angle": 0.62,
        "angular_speed_first_half": 0.012,
        "angular_speed_second_half": 0.003,
        "second_over_first_half": 0.25,
        "lazy_angle": 0.1,
        "keeps_moving_ratio": 0.1,
        "decade_turn_ratio": 0.5,
        "last_decade_over_max_decade": 0.8,
        "decade_angles": [
            {"from_step": 4, "to_step": 40, "from_epoch": 0.125, "to_epoch": 1.25, "angle": 0.2},
            {"from_step": 40, "to_step": 400, "from_epoch": 1.25, "to_epoch": 12.5, "angle": 0.25},
            {"from_step": 400, "to_step": 4000, "from_epoch": 12.5, "to_epoch": 125.0, "angle": 0.2},
        ],
        "kt_grid": [64, 128, 256],
        "kt_exponents": [
            {"step": 0, "epoch": 0.0, "alpha": 0.21, "ci_low": 0.18, "ci_high": 0.24},
            {"step": 4000, "epoch": 125.0, "alpha": 0.35, "ci_low": 0.3, "ci_high": 0.4},
        ],
        "final_distance_to_init": 0.31,
        "initial_alignment": 0.11,
        "final_alignment": 0.52,
        "kt_regression_test_loss_init": 0.81,
        "kt_regression_test_loss_final": 0.61,
        "nn_test_loss_final": 0.55,
        "seeds_done": 1,
        "notes": "text is not a number",
        "per_seed": [{"seed": 0}],
    },
    "figures": ["evolution.png"],
}


def fake_run(folder: Path, summary: dict, config: str = "") -> Path:
    """A finished run directory: summary.json, config.toml and its figures."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.toml").write_text(
        config or 'experiment = "x"\n[data]\nname = "digits"\n[arch]\nname = "mlp"\n'
    )
    for name in summary.get("figures", []):
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot([1, 2, 3], [3, 1, 2])
        fig.savefig(folder / name, dpi=50)
        plt.close(fig)
    return folder


# ----------------------------------------------------------------------------- verdicts


def test_data_scaling_verdict_disjoint_cis_says_kernel_does_not_explain() -> None:
    (v,) = verdicts(DATA_SCALING)
    assert v.status == "does-not-explain"
    assert "α = 0.421 [0.370, 0.470]" in v.text and "α = 0.210 [0.180, 0.240]" in v.text
    assert "does not explain" in v.text and "n = 32–256" in v.text


def test_overlapping_cis_are_not_distinguishable() -> None:
    s = {**DATA_SCALING, "exponents": {"nn": exp(0.30, 0.20, 0.40), "entk": exp(0.25, 0.15, 0.35)}}
    (v,) = verdicts(s)
    assert v.status == "indistinguishable"
    assert "not distinguishable at this n range" in v.text


def test_kernel_steeper_than_network_and_missing_ci() -> None:
    s = {**DATA_SCALING, "exponents": {"nn": exp(0.10, 0.05, 0.15), "entk": exp(0.40, 0.35, 0.45)}}
    (v,) = verdicts(s)
    assert v.status == "info" and "scales better than the trained network" in v.text
    s = {
        **DATA_SCALING,
        "exponents": {"nn": exp(0.4, float("nan"), float("nan")), "entk": exp(0.2, 0.1, 0.3)},
    }
    (v,) = verdicts(s)
    assert v.status == "indistinguishable" and "lack a confidence interval" in v.text


def test_no_exponents_gives_one_sentence_without_verdict() -> None:
    (v,) = verdicts({"experiment": "data-scaling", "exponents": {}})
    assert v.text.startswith("No verdict")
    (v,) = verdicts({"experiment": "something-else"})
    assert v.status == "info"


def test_pretrained_verdicts_compare_after_kernel_with_init_and_network() -> None:
    vs = verdicts(PRETRAINED)
    texts = " ".join(v.text for v in vs)
    assert len(vs) == 4
    assert "after-kernel (n₀ = 128)" in texts and "after-kernel (n₀ = n)" in texts
    first = vs[0]  # after_kernel@n0=128 vs eNTK at init: 0.26 > 0.24 -> improved
    assert "made its data scaling steeper" in first.text
    assert vs[1].status == "does-not-explain"  # network 0.37 > after-kernel 0.34
    assert vs[3].status == "indistinguishable"  # after_kernel@n0=n overlaps the network


def test_evolution_verdicts_state_the_numbers() -> None:
    vs = {v.finding: v for v in verdicts(EVOLUTION)}
    motion = vs["does the eNTK keep moving?"]
    assert motion.status == "does-not-explain" and motion.text.startswith("The kernel keeps moving")
    assert "Θ = 0.62 rad" in motion.text and "25% of the first" in motion.text
    assert "80% as far as the largest" in motion.text and "keeps turning" in motion.text
    exponent = vs["data scaling of K_t during training"]
    assert "α = 0.350 [0.300, 0.400]" in exponent.text and "α = 0.210 [0.180, 0.240]" in exponent.text
    assert "scales better after training" in exponent.text
    assert "0.52" in vs["kernel-target alignment"].text and "0.11" in vs["kernel-target alignment"].text
    final = vs["regression with the final eNTK"]
    assert "0.61" in final.text and "0.55" in final.text and final.status == "does-not-explain"
    assert vs["network vs its linearization"].status == "info"  # network 0.55 below eNTK at init 0.81

    def motion_of(**ev: object) -> Verdict:
        return verdicts({**EVOLUTION, "evolution": {**EVOLUTION["evolution"], **ev}})[1]

    settled = motion_of(verdict="settles", second_over_first_half=0.05, last_decade_over_max_decade=0.2)
    assert settled.status == "explains" and "settles on a linear time axis" in settled.text
    assert "slows on a logarithmic time axis too" in settled.text
    still = motion_of(
        verdict="settles", last_decade_over_max_decade=0.9, verdict_half_resolution="keeps-moving"
    )
    assert still.status == "info" and "keeps turning" in still.text and "near a threshold" in still.text
    lazy = motion_of(verdict="barely-moves", total_angle=0.02)
    assert lazy.status == "explains" and "barely moves (lazy regime)" in lazy.text and "0.02 rad" in lazy.text
    under = {**EVOLUTION, "evolution": {**EVOLUTION["evolution"], "nn_test_loss_final": 0.9}}
    assert verdicts(under)[0].status == "does-not-explain" and "under-trained" in verdicts(under)[0].text
    assert verdicts({"experiment": "kernel-evolution", "evolution": {}})[0].text.startswith("No verdict")


def test_width_scaling_compares_within_each_width() -> None:
    s = {
        "experiment": "width-scaling",
        "exponents": {
            "nn@w=16": exp(0.5, 0.45, 0.55),
            "entk@w=16": exp(0.2, 0.15, 0.25),
            "ntk": exp(0.2, 0.1, 0.3),
        },
    }
    (v,) = verdicts(s)
    assert "width 16" in v.text and v.status == "does-not-explain"


def test_formatters() -> None:
    assert fmt_exp(0.42) == "0.420" and fmt_exp(None) == "nan" and fmt_num(float("inf")) == "nan"
    assert fmt_num(681.4123) == "681.4" and fmt_alpha(exp(1, 0.5, 2)) == "α = 1.000 [0.500, 2.000]"
    assert method_label("after_kernel@n0=64") == "after-kernel (n₀ = 64)"
    assert method_label("entk") == "eNTK at init" and method_label("weird") == "weird"


# ----------------------------------------------------------------------------- rendering


def table_rows(md: str) -> dict[str, list[str]]:
    """Exponent rows of a Markdown report: key -> [α, CI low, CI high, a]."""
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and not cells[0].startswith("Δα") and re.fullmatch(r"-?\d+\.\d{3}|nan", cells[2]):
            rows[cells[1]] = cells[2:]
    return rows


def test_single_run_report_numbers_equal_the_summary(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", DATA_SCALING)
    html_path, md_path = write_report(run)
    md = md_path.read_text()
    rows = table_rows(md)
    assert set(rows) == set(DATA_SCALING["exponents"])
    for key, e in DATA_SCALING["exponents"].items():
        assert [float(x) for x in rows[key][:3]] == [
            round(e["alpha"], 3),
            round(e["ci_low"], 3),
            round(e["ci_high"], 3),
        ]
        assert float(rows[key][3]) == float(f"{e['a']:.4g}")
    assert "![data-scaling: scaling](scaling.png)" in md
    html = html_path.read_text()
    cells = re.findall(r'<td class="num">([^<]*)</td>', html)
    assert "0.421" in cells and "0.370" in cells and "0.470" in cells and "0.210" in cells
    assert "does not explain" in html
    # each verdict is listed once, in the Verdicts section, in both formats
    (v,) = verdicts(DATA_SCALING)
    assert md.count(v.text) == 1 and html.count("does not explain the network") == 1
    assert "| method | key | α | 95% CI low | 95% CI high | a | fit | n range |" in md


def test_exponent_tables_state_the_fit_ci_level(tmp_path: Path) -> None:
    """The report's table and the table ``ntklab run`` prints name the level of fit.ci."""
    s = {**DATA_SCALING, "ci": 0.9, "differences": {"nn-entk": {"delta": 0.2, "ci_low": 0.1, "ci_high": 0.3}}}
    text = exponent_text(s)
    assert "90% CI" in text and "paired 90% CI" in text and "95%" not in text
    assert "[0.370, 0.470]" in text and "[0.100, 0.300]" in text
    md = render_markdown(outline(collect(fake_run(tmp_path / "run", s))))
    assert "90% CI low" in md and "| Δα nn-entk | nn-entk | 0.200 | 0.100 | 0.300 |" in md
    assert "(90% CIs, n = 32–256)" in verdicts(s)[0].text


def test_html_is_self_contained(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", DATA_SCALING)
    html = render_html(outline(collect(run)))
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == (run / "scaling.png").read_bytes()
    assert "http://" not in html and "https://" not in html and "<link" not in html


def test_explain_folder_report_has_every_experiment(tmp_path: Path) -> None:
    root = tmp_path / "explain"
    fake_run(root / "data-scaling", DATA_SCALING)
    fake_run(root / "pretrained-kernel", PRETRAINED)
    fake_run(root / "kernel-evolution", EVOLUTION)
    info = {
        "inputs": {"model": "user model m.py:f", "data": "d.npz"},
        "budget_seconds": 600,
        "seconds": 512.3,
        "plan": {"n_grid": [32, 64, 128, 256], "seeds": 2, "n0": 128},
        "experiments": [
            {"name": "data-scaling", "dir": "data-scaling", "status": "done"},
            {
                "name": "pretrained-kernel",
                "dir": "pretrained-kernel",
                "status": "partial",
                "skipped_units": ["a", "b"],
            },
            {"name": "kernel-evolution", "dir": "kernel-evolution", "status": "done"},
        ],
        "notes": [],
    }
    (root / "explain.json").write_text(json.dumps(info))
    html_path, md_path = write_report(root)
    md = md_path.read_text()
    for title in ("Data scaling", "Pre-trained kernel", "Kernel evolution"):
        assert f"## {title}" in md
    assert "(data-scaling/scaling.png)" in md and "(kernel-evolution/evolution.png)" in md
    assert "| total_angle | 0.62 |" in md and "| verdict | keeps-moving |" in md
    assert "| kt_alpha step 4000 (epoch 125) | 0.350 [0.300, 0.400] |" in md
    assert "2 unit(s) skipped" in md
    assert "after_kernel@n0=128" in table_rows(md)
    html = html_path.read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "budget" in html and "10 min" in html


def test_folder_of_runs_and_errors(tmp_path: Path) -> None:
    fake_run(tmp_path / "many" / "a", DATA_SCALING)
    fake_run(tmp_path / "many" / "b", EVOLUTION)
    data = collect(tmp_path / "many")
    assert [s.name for s in data.experiments] == ["data-scaling", "kernel-evolution"]
    assert "![data-scaling: scaling](a/scaling.png)" in render_markdown(outline(data))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not an ntklab run directory"):
        collect(tmp_path / "empty")
    with pytest.raises(RunDirError, match="is not a directory"):
        collect(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not readable JSON"):
        collect(bad)


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ntklab.cli_explain import add_subcommands

    run = fake_run(tmp_path / "run", EVOLUTION)
    p = argparse.ArgumentParser()
    add_subcommands(p.add_subparsers(dest="command"))
    args = p.parse_args(["report", str(run)])
    assert args.func(args) == 0
    assert "report.html" in capsys.readouterr().out
    assert (run / "report.html").is_file() and (run / "report.md").is_file()
    with pytest.raises(NtkLabError):
        args = p.parse_args(["report", str(tmp_path / "missing")])
        args.func(args)


def test_evolution_regression_verdict_three_ways() -> None:
    def verdict(kt: float, nn: float) -> str:
        ev = {**EVOLUTION["evolution"], "kt_regression_test_loss_final": kt, "nn_test_loss_final": nn}
        return verdicts({**EVOLUTION, "evolution": ev})[-1].text

    assert "falls short" in verdict(0.8, 0.5)
    assert "captures what the network learned" in verdict(0.51, 0.5)
    assert "generalizes better than the network" in verdict(0.4, 0.5)


def test_figures_shown_at_half_their_pixel_width(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", DATA_SCALING)
    width = png_width((run / "scaling.png").read_bytes())
    assert width == 100  # 2 inches at 50 dpi
    assert f'width="{width // 2}"' in render_html(outline(collect(run)))
    assert png_width(b"not a png") is None


def test_verdicts_read_the_paired_difference_and_flag_bent_fits() -> None:
    """Overlapping marginal CIs but a paired Δα interval above 0: the verdict follows Δα; a
    fit flagged fit_ok false is named; no interval reads as not distinguishable."""
    s = {
        "experiment": "data-scaling",
        "n_grid": [64, 4096],
        "exponents": {
            "nn": {"alpha": 0.30, "ci_low": 0.22, "ci_high": 0.38, "fit_ok": False},
            "entk": {"alpha": 0.24, "ci_low": 0.20, "ci_high": 0.28, "fit_ok": True},
        },
        "differences": {
            "nn-entk": {"delta": 0.06, "ci_low": 0.02, "ci_high": 0.10, "fit_n_min": 64, "fit_n_max": 4096}
        },
        "test_loss_at_n_max": {"nn": 0.40, "entk": 0.30},
    }
    vs = verdicts(s)
    assert vs[0].status == "does-not-explain" and "0.060 [0.020, 0.100]" in vs[0].text
    assert "bends" in vs[0].text and "network curve" in vs[0].text
    assert any(v.status == "does-not-explain" and "worse than its own linearization" in v.text for v in vs)
    s["differences"]["nn-entk"] |= {"ci_low": None, "ci_high": None}
    assert verdicts(s)[0].status == "indistinguishable" and "no confidence interval" in verdicts(s)[0].text
