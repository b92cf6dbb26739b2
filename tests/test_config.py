"""Config loading: defaults, overrides, and one-sentence errors that name the key."""

from __future__ import annotations

import pytest

from ntklab.config import EXPERIMENTS, load_config, to_toml, validate
from ntklab.errors import ConfigError


def test_defaults_and_overrides() -> None:
    cfg = load_config(None, ["data.n_max=1024", "seeds=2", "train.lr=0.1"])
    assert cfg.experiment == "data-scaling"
    assert (cfg.data.n_max, cfg.seeds, cfg.train.lr) == (1024, 2, 0.1)
    assert cfg.data.n_grid() == [64, 128, 256, 512, 1024]


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_experiment_has_defaults(name: str) -> None:
    cfg = load_config(None, [f"experiment={name}"])
    assert cfg.experiment == name
    # the printed config round-trips to the same config
    import tomllib

    assert validate(tomllib.loads(to_toml(cfg))).digest() == cfg.digest()


@pytest.mark.parametrize(
    ("override", "words"),
    [
        (["train.lrr=1"], ["train.lrr", "did you mean train.lr"]),
        (["train.lr=-1"], ["train.lr", "greater than 0", "-1"]),
        (["arch.width=-3"], ["arch.width", "-3"]),
        (["data.name=mnist2d"], ["mnist2d", "allowed"]),
        (["experiment=width-scalng"], ["width-scalng", "did you mean width-scaling"]),
        (["seeds=abc"], ["seeds", "abc"]),
        (["kernel.mode=diag"], ["kernel.mode", "diag"]),
        (["data.n_min=9000"], ["n_min", "n_max"]),
        (["data.name=cifar10"], ["data.path"]),
        (["fit.n_min=4000"], ["fit.n_min = 4000", "at most 2048"]),
    ],
)
def test_errors_are_one_sentence_naming_the_key(override: list[str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, override)
    msg = str(info.value)
    assert "\n" not in msg and msg.endswith(".")
    for w in words:
        assert w in msg


def test_toml_typo_and_missing_file(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = 0.1\nepochs = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_epochs_replace_steps() -> None:
    cfg = load_config(None, ["train.epochs=2", "train.batch_size=50", "train.min_steps=0"])
    assert cfg.train.steps is None
    assert cfg.train.total_steps(100) == 4
    # the floor and the cap of the epoch rule
    cfg = load_config(None, ["train.epochs=2", "train.batch_size=50", "train.min_steps=10"])
    assert cfg.train.total_steps(100) == 10
    cfg = load_config(None, ["train.epochs=100", "train.batch_size=50", "train.max_steps=30"])
    assert cfg.train.total_steps(100) == 30
    # data-scaling's default is the epoch rule; a user's steps replaces it
    default = load_config(None, [])
    assert default.train.epochs is not None and default.train.total_steps(4096) > default.train.total_steps(
        64
    )
    cfg = load_config(None, ["train.steps=300"])
    assert cfg.train.epochs is None and cfg.train.total_steps(4096) == 300


def test_example_configs_validate() -> None:
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
    assert len(files) >= 5
    for f in files:
        assert load_config(f).experiment in EXPERIMENTS


def test_figure_titles_name_the_users_factory_not_the_zoo_default() -> None:
    from ntklab.config import ArchConfig
    from ntklab.experiments.common import arch_label

    assert arch_label(ArchConfig(factory="models/resnet.py:make_model")) == "make_model"
    assert arch_label(ArchConfig(layers=[{"layer": "Dense", "width": 10}])) == "layers"
    assert arch_label(ArchConfig(name="cnn1d", width=48), width=True) == "cnn1d (width 48)"
