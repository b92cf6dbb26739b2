"""Loading a config: TOML file, ``--set dotted.key=value`` overrides, one-sentence errors.

Overrides are applied to the raw dictionary before validation, so they are checked exactly like
the file; the first pydantic error becomes one :class:`~ntklab.errors.ConfigError` sentence
naming the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import tomli_w
import tomllib
from pydantic import BaseModel, ValidationError

from ntklab.config.base import BaseExperiment
from ntklab.errors import ConfigError


def _allowed_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at ``loc`` (for 'did you mean')."""
    model: Any = cls
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _describe(err: dict[str, Any], cls: type[BaseModel]) -> str:
    """One sentence for the first pydantic error: the key, the value, what is allowed."""
    loc = tuple(
        p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "constrained-")))
    )
    loc = tuple(p for p in loc if p not in ("int", "float", "list[...]", "str", "none", "dict[str,any]"))
    key = ".".join(str(p) for p in loc) or "config"
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(cls, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))}?)" if close else ""
        return f"unknown config key {key}{hint}; allowed keys here: {', '.join(allowed)}."
    msg = err["msg"].replace("Input should be", "must be").replace("Value error, ", "")
    if kind == "value_error":
        return f"{msg}."
    return f"config key {key} {msg[0].lower() + msg[1:] if msg.startswith('Input') else msg}; got {value!r}."


def _parse_value(text: str) -> Any:
    """A --set value: a TOML value when it parses as one, else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a raw config dictionary (copied)."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set takes dotted.key=value; got {item!r}.")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is not a table.")
        node[parts[-1]] = _parse_value(text.strip())
    return out


def validate(raw: dict[str, Any]) -> BaseExperiment:
    """Validate a raw dictionary into the config class its ``experiment`` names."""
    # Imported here: every experiment module imports this package's submodules for its config.
    from ntklab.experiments import REGISTRY

    name = raw.get("experiment", "data-scaling")
    if name not in REGISTRY:
        close = difflib.get_close_matches(str(name), list(REGISTRY), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown experiment {name!r}{hint}; allowed: {', '.join(REGISTRY)}.")
    cls = REGISTRY[name].CONFIG
    try:
        return cls.model_validate({**raw, "experiment": name})
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], cls)) from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; a missing or malformed file is a one-sentence ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist.")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not a text (UTF-8) TOML file.") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> BaseExperiment:
    """The resolved config: the built-in defaults, then the file, then ``--set`` overrides."""
    raw = read_toml(path) if path is not None else {}
    return validate(apply_overrides(raw, overrides or []))


def to_toml(cfg: BaseModel) -> str:
    """The resolved config as TOML (None values are left out: they mean 'default/unset')."""
    return tomli_w.dumps(_drop_none(cfg.model_dump(mode="json")))


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj
