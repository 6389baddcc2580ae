"""Which notebooks and which folders a runner run uses: shared by the runner
(:mod:`bdunlearn.reproduce`), the planner (:mod:`bdunlearn.plan`) and the sweep."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from . import config, data

ROOT = Path(__file__).resolve().parent.parent


def notebooks(folder: Path, only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order, restricted to ``only``: whole numbers (``"4"`` or
    ``"04"``) or whole stems (``"04_detection"``), each may be given more than once."""
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return found
    names = ", ".join(p.stem for p in found)
    picked = []
    for o in only:
        match = [p for p in found if _names(o, p)]
        if not match:
            raise SystemExit(f"--only {o!r} matches no notebook; give a number or a "
                             f"stem of {names}")
        picked += [p for p in match if p not in picked]
    return [p for p in found if p in picked]


def _names(text: str, nb: Path) -> bool:
    """Whether ``text`` names notebook ``nb``: its whole stem or its whole number."""
    number = nb.stem.split("_")[0]
    text = str(text).strip()
    return text == nb.stem or (re.fullmatch("[0-9]{1,3}", text) is not None
                               and int(text) == int(number))


def parse_only(text: str | None) -> list[str] | None:
    """``--only``'s comma-separated notebook numbers or stems as a list (``None``: all)."""
    if text is None:
        return None
    only = [o.strip() for o in text.split(",")]
    if not all(only):
        raise SystemExit(f"--only {text!r} names no notebook; give numbers or stems "
                         "such as 01,04")
    return only


# Overrides that keep a run's folder: more of the same runs, the same runs re-rendered, or
# runs in another precision or on another device (stored as their own group beside the
# others; every table holds each group, and the claims check the run's own; with
# `-p compute False` and precision "auto", each notebook's largest stored group, so that
# re-renders the committed runs on any CPU).
SAME_RUN = ("seeds", "store_dir", "compute", "precision", "device")


def run_name(profile: str, params: dict) -> str:
    """``profile``, or ``profile-<8 hex digits>`` naming the overrides ``params`` (seeds
    are not an override of what is measured: their runs join the profile's)."""
    params = {k: v for k, v in params.items() if k not in SAME_RUN}
    if not params:
        return profile
    text = json.dumps(params, sort_keys=True, default=repr)
    return f"{profile}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def folders(profile: str, params: dict, dataset: str, only=None, results=None,
            figures=None) -> tuple[Path, Path, Path]:
    """``(results, figures, store)`` folders of a runner run on ``dataset``.

    A complete ``default`` run (no ``--only``, no overrides but seeds) writes the
    committed ``results/`` and ``figures/``; any other run ``results/<run name>/`` (see
    :func:`run_name`), or the ``--results``/``--figures`` folders given. The run store is
    ``store_dir`` when given, else ``runs/`` in the given results folder, else the
    configuration's (:mod:`bdunlearn.config`: the committed ``results/runs/`` for the
    ``default`` profile whatever the overrides, since runs are stored by what they
    measure, and ``results/<profile>/runs/`` for the others).
    """
    profile = config.profile_name(profile)
    committed = (run_name(profile, params) == "default" and not only and results is None
                 and figures is None)
    several = len(config.profile_datasets(profile)) > 1
    name = run_name(profile, params)
    res = Path(results) if results else ROOT / "results" / ("" if committed else name)
    fig = Path(figures) if figures else ROOT / "figures" / ("" if committed else name)
    if params.get("store_dir"):
        store = Path(params["store_dir"]).expanduser().absolute()
    elif results:
        store = Path(results) / "runs" / (dataset if several else "")
    else:
        store = Path(config.resolve(profile, dataset=dataset).store_dir)
    if several:
        res, fig = res / dataset, fig / dataset
    return res, fig, store


def available(datasets, data_root) -> tuple[list[str], list[str]]:
    """``(found, missing)``: the datasets whose files are on disk, and one sentence for each
    missing one saying how to get it."""
    found, missing = [], []
    for name in datasets:
        try:
            data.load(name, data_root)
        except (FileNotFoundError, ValueError) as exc:
            missing.append(str(exc))
        else:
            found.append(name)
    return found, missing
