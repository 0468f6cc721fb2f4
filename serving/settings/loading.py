"""Reading the settings: defaults < config file < environment < overrides, each value parsed
and checked against its field (type, choices, range) with a message naming the variable."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from serving.settings.fields import Settings, SettingsError


def _parse(f: dataclasses.Field, raw: str) -> Any:
    env = f.metadata["env"]
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    raw = raw.strip()
    try:
        if kind.startswith("bool"):
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind.startswith("int"):
            value: Any = int(raw)
        elif kind.startswith("float"):
            value = float(raw)
        else:
            value = raw or None if "None" in kind else raw
    except ValueError:
        expected = ("true or false" if kind.startswith("bool") else
                    "an integer" if kind.startswith("int") else "a number")
        raise SettingsError(f"{env}={raw!r} is not valid: expected {expected}") from None
    choices = f.metadata["choices"]
    if choices and value not in choices:
        raise SettingsError(f"{env}={raw!r} is not valid: choose one of {', '.join(choices)}")
    lo, hi = f.metadata["minimum"], f.metadata["maximum"]
    if lo is not None and value < lo:
        raise SettingsError(f"{env}={raw!r} is not valid: must be >= {lo}")
    if hi is not None and value > hi:
        raise SettingsError(f"{env}={raw!r} is not valid: must be <= {hi}")
    return value


CONFIG_FILE_ENV = "SERVING_CONFIG"


def _read_config_file(path: str | Path) -> dict[str, str]:
    """A YAML mapping of settings, keyed by field name (max_batch_size) or variable
    (MAX_BATCH_SIZE). Values are parsed exactly like environment values. A ``training:``
    section holds the training hyperparameters (code/train.py reads it)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise SettingsError(f"config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must be a mapping of setting: value")
    by_name = {f.name: f for f in dataclasses.fields(Settings)}
    by_env = {f.metadata["env"]: f for f in dataclasses.fields(Settings)}
    raw: dict[str, str] = {}
    for key, value in data.items():
        if key == "training":
            continue  # the training entry (code/train.py) reads and checks that section
        f = by_name.get(str(key)) or by_env.get(str(key))
        if f is None:
            raise SettingsError(f"config file {path}: unknown key {key!r}; known keys: "
                                f"{', '.join(sorted(by_name))} (or their variables, e.g. MAX_BATCH_SIZE)")
        if isinstance(value, (dict, list)):
            raise SettingsError(f"config file {path}: {key} must be a single value")
        raw[f.name] = "" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
    return raw


def load_settings_with_sources(environ: Mapping[str, str] | None = None, config_file: str | Path | None = None,
                               **overrides: Any) -> tuple[Settings, dict[str, str]]:
    """Settings and where each value came from. Later sources win: default < config file
    (SERVING_CONFIG or --config) < environment < command-line flags."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources = {f.name: "default" for f in dataclasses.fields(Settings)}
    config_file = config_file or environ.get(CONFIG_FILE_ENV) or None
    if config_file:
        for name, raw in _read_config_file(config_file).items():
            f = next(f for f in dataclasses.fields(Settings) if f.name == name)
            try:
                values[name] = _parse(f, raw)
            except SettingsError as exc:
                raise SettingsError(f"config file {config_file}: {exc}") from None
            sources[name] = f"file {config_file}"
    for f in dataclasses.fields(Settings):
        from_env = environ.get(f.metadata["env"])
        if from_env is not None and from_env != "":
            values[f.name] = _parse(f, from_env)
            sources[f.name] = f"env {f.metadata['env']}"
    for name, value in overrides.items():
        if value is not None:
            values[name] = value
            sources[name] = "command line"
    return Settings(**values), sources


def load_settings(environ: Mapping[str, str] | None = None, config_file: str | Path | None = None,
                  **overrides: Any) -> Settings:
    """Settings from defaults, the optional config file, the environment and overrides."""
    return load_settings_with_sources(environ, config_file, **overrides)[0]
