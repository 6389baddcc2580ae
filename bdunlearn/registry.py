"""The package's registries in one place: datasets here (each one's facts and reader,
kept in :mod:`bdunlearn.data` beside the readers), detectors in
:mod:`bdunlearn.detectors`, attack families in :mod:`bdunlearn.attacks`, defenses in
:mod:`bdunlearn.defenses`; and :func:`load_plugins`, which imports the modules that
register one's own.

Everything that needs a fact about a dataset (its image shape and classes, the reference
model and optimiser, the BAU paper's attack counts and patch intensity, where to get the
files) reads it here: ``registry.spec("fmnist").poison_num``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from .data import REGISTERED, DatasetSpec, datasets, reference_config, register, spec

PLUGINS_ENV = "BDUNLEARN_PLUGINS"
_LOADED: dict[str, object] = {}


def __getattr__(name: str):
    if name == "DATASETS":  # the registry's current names
        return datasets()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_plugins(plugins: str | None = None) -> list[str]:
    """Import the modules that register one's own detectors, attack families or datasets:
    ``plugins`` (default: the ``BDUNLEARN_PLUGINS`` environment variable) is a
    comma-separated list of module names (``my_lab.detectors``) or ``.py`` files. Each
    is imported once per process (a notebook's first cell calls this, so a runner's
    notebooks see the same registries as the caller). Returns the names imported now."""
    plugins = os.environ.get(PLUGINS_ENV, "") if plugins is None else plugins
    if not isinstance(plugins, str):
        raise ValueError(f"plugins must be a comma-separated string, got "
                         f"{type(plugins).__name__}")
    done = []
    for item in (p.strip() for p in plugins.split(",")):
        if not item or item in _LOADED:
            continue
        if item.endswith(".py"):
            path = Path(item).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"plug-in file {path} does not exist ({PLUGINS_ENV})")
            name = f"bdunlearn_plugin_{path.stem}"
            mod_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(item)
        _LOADED[item] = module
        done.append(item)
    return done


__all__ = ["REGISTERED", "DatasetSpec", "PLUGINS_ENV", "datasets", "load_plugins",
           "reference_config", "register", "spec"]
