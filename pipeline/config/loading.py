"""YAML experiments read into dicts: ``base:`` files merged under them, ``train`` defaults and
``seeds`` expanded, ready to validate against their schema (``pipeline.flows.configs``)."""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.base import ConfigError


def data_overrides(data: str) -> dict[str, Any]:
    """Overrides that run an experiment on a user's own images: its ingested copy and its output
    folder, keyed by the images' path."""
    source = Path(data).resolve()
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", source.name).strip("-") or "data"
    key = f"{slug}-{hashlib.sha1(str(source).encode()).hexdigest()[:8]}"
    return {"data": {"source": str(source), "root": f"data/{key}"}, "output_dir": f"outputs/{key}"}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``, nested dicts merged key by key, except an old model's
    ``source`` of another ``kind``, which replaces the base's (its fields depend on its kind)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        base_value = merged.get(key)
        new_kind = key == "source" and isinstance(value, dict) and isinstance(base_value, dict) \
            and value.get("kind", base_value.get("kind")) != base_value.get("kind")
        if isinstance(value, dict) and isinstance(base_value, dict) and not new_kind:
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def read_experiment(path: str | Path, _extending: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML experiment with the file its ``base`` key names (relative to its own folder) merged
    under it, recursively: the file states only what differs from its base."""
    path = Path(path).resolve()
    if path in _extending:
        raise ConfigError(f"{path}: key 'base': the files extend each other in a cycle "
                          f"({' -> '.join(str(p) for p in (*_extending, path))})")
    raw = read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: key 'base': expected the path of the file it extends (got {base!r})")
    return deep_merge(read_experiment(path.parent / base, (*_extending, path)), raw)


def with_train_defaults(raw: dict[str, Any], roles: tuple[str, ...], source: str) -> dict[str, Any]:
    """``raw`` with its ``train`` block (defaults shared by every model) merged under each model
    config of ``roles``: a mapping (``old``), or a list of mappings (``new``, ``models``)."""
    raw = dict(raw)
    defaults = raw.pop("train", {}) or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{source}: key 'train': expected a mapping of training defaults")
    for role in roles:
        value = raw.get(role)
        if isinstance(value, dict) and "source" not in value:  # an imported model does not train
            raw[role] = deep_merge(defaults, value)
        elif isinstance(value, list):
            raw[role] = [deep_merge(defaults, model) if isinstance(model, dict) else model for model in value]
    return raw


def expand_seeds(raw: dict[str, Any], seeds: list[int], source: str = "config") -> dict[str, Any]:
    """Every ``new`` and ``cmc`` entry once per seed, named ``<name>-s<seed>`` (a CMC entry's
    ``new_model`` follows its seed); the old model is trained once."""
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{source}: key 'seeds': expected a non-empty list of integers (got {seeds!r})")
    raw = dict(raw)
    for key, renamed in (("new", ()), ("cmc", ("new_model",))):
        entries = raw.get(key) or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "name" in e for e in entries):
            raise ConfigError(f"{source}: key '{key}': expected a list of mappings, each with a name")
        raw[key] = [{**entry, "name": f"{entry['name']}-s{seed}", "seed": seed,
                     **{field: f"{entry[field]}-s{seed}" for field in renamed if field in entry}}
                    for seed in seeds for entry in entries]
    return raw
