"""Config files: reading YAML (flat, as every run on disk so far holds, or in sections), merging layers,
typing values, writing a run's ``config.yaml`` in sections.

Layers merge in order: defaults ← preset ← YAML file (``--config``) ← command-line flags.
"""

from __future__ import annotations

import dataclasses
import reprlib
from dataclasses import asdict
from pathlib import Path

import yaml

from diffrep.config.options import FIELD_NAMES, FIELD_SECTIONS, FIELD_TYPES, SECTIONS, TrainConfig
from diffrep.errors import DiffrepError


PROVENANCE = "provenance"
"""A run's ``config.yaml`` records what wrote it under this key (versions, command line, time): not an option."""


def flatten_sections(values: dict) -> dict:
    """``{"optim": {"lr": 1e-3}, "data": "mnist5k"}`` → ``{"lr": 1e-3, "data": "mnist5k"}``: a section is a
    section name whose value is a mapping (``data`` and ``model`` are also options, whose values never are); the
    ``provenance`` record is dropped."""
    flat: dict = {}
    for key, value in values.items():
        if key == PROVENANCE:
            continue
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def read_yaml_config(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DiffrepError(f"config file {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DiffrepError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise DiffrepError(f"config file {path} must hold a mapping of option: value")
    return flatten_sections(values)


def make_config(*layers: dict) -> TrainConfig:
    """Merge dicts of options (later wins) into a validated :class:`TrainConfig`."""
    merged: dict = {}
    for layer in layers:
        merged.update({k.replace("-", "_"): v for k, v in flatten_sections(layer).items() if v is not None})
    unknown = sorted(set(merged) - set(FIELD_NAMES))
    if unknown:
        raise DiffrepError(f"unknown config option(s) {unknown}: valid options are {', '.join(FIELD_NAMES)}")
    return dataclasses.replace(TrainConfig(), **{k: _typed(k, v) for k, v in merged.items()}).validate()


def _typed(name: str, value: object) -> object:
    """``value`` as the type of option ``name`` (YAML reads ``1e-3`` as a string, ``8.5`` as a float)."""
    kind = FIELD_TYPES[name]
    if value is None and kind.endswith("| None"):
        return None
    base = kind.split(" |")[0]
    if base == "bool" and (isinstance(value, bool) or value in (0, 1)):
        return bool(value)
    if base == "int" and not isinstance(value, bool):
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    if base == "float" and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    if base == "str" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if base == "list[str]" and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    expected = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "a string",
                "list[str]": "a list of strings, e.g. [\"repa:depth=2\"]"}[base]
    raise DiffrepError(f"config option {name}: expected {expected}, got {_short(value)}")


def _short(value: object, width: int = 80) -> str:
    """A bounded ``repr`` (two levels, four items each, ``width`` characters), even for a YAML alias bomb."""
    shorten = reprlib.Repr()
    shorten.maxlevel, shorten.maxlist, shorten.maxdict = 2, 4, 4
    text = shorten.repr(value)
    return text if len(text) <= width else text[:width] + "…"


def config_diff(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two ``identity()`` dicts."""
    return [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def sectioned(cfg: TrainConfig) -> dict:
    """``cfg`` as ``{section: {option: value}}``, sections in :data:`SECTIONS` order."""
    values = asdict(cfg)
    return {s: {k: v for k, v in values.items() if FIELD_SECTIONS[k] == s} for s in SECTIONS}


def save_config(cfg: TrainConfig, path: Path) -> None:
    """``cfg`` in sections, with the ``provenance`` of the command that writes it, atomically."""
    from diffrep.io import atomic_write, provenance

    with atomic_write(path, "w") as f:
        yaml.safe_dump({**sectioned(cfg), PROVENANCE: provenance()}, f, sort_keys=False)


def load_run_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise DiffrepError(f"{run_dir} is not a diffrep run (no config.yaml): pass the --out folder of `diffrep train`")
    return make_config(read_yaml_config(path))
