"""One typed run configuration: ``resolve(profile, **overrides) -> RunConfig``.

A profile names a size of experiment: ``smoke`` (CI: a few thousand images, under a
minute a notebook), ``default`` (the paper's Fashion-MNIST setting on real data, within
an hour on two cores) and ``paper`` (the paper's scale for every dataset: its epochs,
counts and patch intensity, shard counts 1/5/10/20, five seeds). ``profile=None`` reads
the ``BDUNLEARN_PROFILE`` environment variable, else ``"default"``.

Overrides replace the profile's values; an override of ``None`` means "the profile's
value" (the notebooks' ``parameters`` cells pass ``None`` for every knob left alone).
After resolution every field holds a concrete value:

* ``long_epochs`` is the longer training notebook 06 compares ``epochs`` with
  (:data:`DETECTION_EPOCHS` at ``default`` and ``paper``);
* ``epochs``, ``alpha``, ``poison_num``, ``mitigation_num``, ``it_poison_num``,
  ``it_mitigation_num`` and ``defender_size`` given as ``"paper"`` take the dataset's
  values from :mod:`bdunlearn.registry` (``epochs``: the BAU authors' attack scripts'
  default; ``defender_size``: 5% of the training split, BAERASER's defender share). The
  ``paper`` profile takes them all but ``epochs``: it trains for :data:`DETECTION_EPOCHS`,
  as the authors' experiments did (README, "20 or 100 epochs");
* ``train_subset``/``test_subset`` given as ``"all"`` become the size of the dataset's
  standard split (a smaller copy on disk is then used whole), ``"half"`` half of it (the
  ``default`` and ``paper`` profiles evaluate on half of the test split; the defenses'
  defender pool comes from the other half, :func:`bdunlearn.defender.defender_pool`);
* ``request_steps``/``defense_steps`` are a number of equal request batches, or the
  cumulative request counts after each batch (``(100, 300)``: a batch of 100, then 200;
  counts above an attack's mitigation samples are capped at that number);
* ``results_dir``/``figures_dir`` left unset come from ``BDUNLEARN_RESULTS`` /
  ``BDUNLEARN_FIGURES`` (relative values against the current working directory) or
  else ``results/<profile>/`` and ``figures/<profile>/`` at the repository root (plus
  ``<dataset>/`` for a profile of several datasets), never the committed ``results/``;
* ``input_scaling`` ``"reference"`` becomes the architecture's reference scaling (the
  BAU authors' procedure, :data:`bdunlearn.models.REFERENCE_SCALING`);
* ``device`` ``"auto"`` becomes ``"cuda"`` or ``"cpu"``; ``precision`` ``"auto"`` becomes
  ``"bf16"`` where the device computes it natively, else ``"fp32"``
  (:func:`bdunlearn.train.resolve_precision`), resolved here once and carried into every
  training, stored row and timing (a notebook that computes nothing takes, for
  ``"auto"``, the precision of its largest group of stored runs:
  :func:`bdunlearn.studies.stored_precision`);
* ``seeds`` is a list of integers, one integer, or a string of ranges such as ``"0-9"``
  or ``"0-4,7"``: at most :data:`MAX_SEEDS` seeds, each between 0 and :data:`MAX_SEED`
  (every seed is a whole run of every setting); a seed or shard count given twice is
  refused (it would count twice in an interval);
* ``compute`` ``False`` renders a notebook from the runs already stored, computing none;
* ``store_dir`` (where runs are stored, :mod:`bdunlearn.store`) left unset is
  ``$BDUNLEARN_RESULTS/runs`` when that is set, else the committed ``results/runs/`` for
  ``default`` (runs are stored by what they measure, so a run with other settings sits
  beside the committed ones and a JupyterLab session reuses them) and
  ``results/<profile>/runs/`` for the other profiles;
* ``data_root`` ``None`` means the data readers' search order.

``RunConfig.overrides`` names the fields an override moved away from the profile's own
values; the claims' thresholds hold for a profile's own settings, so a run with such
overrides reports its claims instead of asserting them (:func:`bdunlearn.claims.check`).

A scalar where a list is expected (``shards=5``) is read as a one-element list. A bad
field fails with one ``ValueError`` sentence naming the field, the value and what is
allowed, before anything trains.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from numbers import Integral
from pathlib import Path

from . import checks, registry
from .models import INPUT_SCALINGS, REFERENCE_SCALING
from .registry import reference_config
from .train import TrainConfig, resolve_device, resolve_precision

PAPER, ALL, HALF, REFERENCE = "paper", "all", "half", "reference"
# The epochs of the models the BAU authors' detection scripts load (a "<shards>_<slices>_100"
# folder for every dataset) and of their README's attack command: the paper's experiments.
DETECTION_EPOCHS = 100
PRECISIONS = ("auto", "fp32", "bf16")
VARIANTS = ("bn", "it")
# Seeds: each is a whole run of every setting (minutes to hours), so a range beyond this
# is a typo; values stay within a signed 32-bit integer, which every generator accepts.
MAX_SEEDS = 10_000
MAX_SEED = 2**31 - 1

# Calibration notes (measured on real Fashion-MNIST, see README):
# * default is the BAU paper's Fashion-MNIST setting (all 60,000 images, 200 poison, 300
#   mitigation samples, alpha 0.5, 20 epochs, the authors' [0, 1] inputs and one sample
#   order per shard) with five seeds (stored run by run, so they may be computed in
#   several sessions or on several machines; bdunlearn.store). Requests come in two
#   batches, after which the ASR is read at 100 and 300 requests; a third batch point
#   (200) would add six full trainings per seed, as would Amnesiac unlearning
#   (amnesiac=False; 2.7% -> 9.3% ASR when measured, README) and re-running the defenses
#   after 100 requests as well. Neural Cleanse needs its 1000 steps on these models: at
#   300 or 500 steps no mask has converged and it flags nothing or the wrong label
#   (measured 2026-11-24 on the classical BadNets model, seed 0).
# * smoke: 4k images reach a visible effect only with a brighter faint patch (alpha 0.7),
#   and with [-1, 1] inputs (input_scaling "signed", the package's former choice): at 4k
#   images and 8 epochs [0, 1] models do not learn the faint patch (measured 2026-11-24,
#   seed 0: ASR after all requests 4.8% with [0, 1], 89.8% with [-1, 1]). Notebook 03 serves
#   the requests in two batches for its defenses (three runs: before, halfway, after). With
#   one batch (two runs), a run before the requests where Neural Cleanse flags nothing costs
#   BAERASER only its scan, and its total fell to 1.1x the one-time cost in an fp32 run of
#   seed 0 (2026-12-07), under the claim's 1.5x.
_COMMON = dict(variant="bn", device="auto", precision="auto", input_scaling=REFERENCE,
               data_root=None, results_dir=None, figures_dir=None, store_dir=None, compute=True,
               slices=1,
               long_epochs=DETECTION_EPOCHS, it_poison_num=PAPER,
               it_mitigation_num=PAPER, amnesiac=True, target_fpr=0.05,
               poison_fraction=0.05, defense_steps=3)
PROFILES = {
    "smoke": dict(
        _COMMON, datasets=("fmnist",), train_subset=4000, test_subset=1000, epochs=8,
        input_scaling="signed", alpha=0.7, poison_num=150, mitigation_num=300, shards=(1, 3),
        long_epochs=12,
        seeds=(0,), request_steps=3, defense_samples=(10,), nc_steps=60, defender_size=1000,
        defense_steps=2),
    "default": dict(
        _COMMON, datasets=("fmnist",), train_subset=ALL, test_subset=HALF, epochs=PAPER,
        alpha=PAPER, poison_num=PAPER, mitigation_num=PAPER, shards=(1, 5, 10),
        seeds=(0, 1, 2, 3, 4),
        request_steps=(100, 300), defense_steps=(300,), defense_samples=(10, 50, 100),
        nc_steps=1000, defender_size=PAPER, amnesiac=False),
    "paper": dict(
        _COMMON, datasets=("fmnist", "mnist", "gtsrb", "cifar10"), train_subset=ALL,
        test_subset=HALF, epochs=DETECTION_EPOCHS, alpha=PAPER, poison_num=PAPER,
        mitigation_num=PAPER, shards=(1, 5, 10, 20), seeds=(0, 1, 2, 3, 4), request_steps=6,
        defense_samples=(10, 50, 100), nc_steps=1000, defender_size=PAPER),
}


@dataclass(frozen=True)
class RunConfig:
    """Every knob of one notebook run on one dataset, each a concrete checked value.

    ``shards``, ``seeds`` and ``defense_samples`` are tuples; ``seeds[0]`` is the seed of
    the single-seed parts of a notebook. See the module docstring for how each field
    is resolved. ``overrides`` names the fields whose value differs from the profile's
    own (where and how the run computes, such as ``device`` or ``results_dir``, does not
    count; a dataset the profile does not list does).
    """

    profile: str
    dataset: str
    seeds: tuple[int, ...]
    device: str
    precision: str
    input_scaling: str
    data_root: str | None
    results_dir: str
    figures_dir: str
    store_dir: str
    compute: bool
    variant: str
    shards: tuple[int, ...]
    slices: int
    train_subset: int
    test_subset: int
    epochs: int
    long_epochs: int
    alpha: float
    poison_num: int
    mitigation_num: int
    it_poison_num: int
    it_mitigation_num: int
    request_steps: int | tuple[int, ...]
    amnesiac: bool
    target_fpr: float
    poison_fraction: float
    defense_steps: int | tuple[int, ...]
    defender_size: int
    defense_samples: tuple[int, ...]
    nc_steps: int
    overrides: tuple[str, ...] = ()

    @property
    def at_profile_scale(self) -> bool:
        """True when no override changes what the profile measures (see ``overrides``):
        the profile's claim thresholds then apply, and notebooks assert them."""
        return not self.overrides

    @property
    def device_type(self) -> str:
        """``"cpu"`` or ``"cuda"``: the device kind recorded with every stored row."""
        return self.device.split(":")[0]

    def train_config(self) -> TrainConfig:
        """The dataset's reference optimiser with this run's epochs and precision."""
        return reference_config(self.dataset, epochs=self.epochs, precision=self.precision)


FIELDS = tuple(f.name for f in fields(RunConfig) if f.name != "overrides")
# Where and how a run computes, not what it measures: overriding these keeps the profile.
# Seeds too: a run over other seeds measures the same thing, and its runs are stored and
# aggregated with the profile's own (bdunlearn.store).
PLACEMENT = ("profile", "dataset", "seeds", "device", "precision", "data_root", "results_dir",
             "figures_dir", "store_dir", "compute")


def profile_name(name: str | None = None) -> str:
    """``name``, else ``$BDUNLEARN_PROFILE``, else ``"default"``; checked."""
    name = name if name is not None else os.environ.get("BDUNLEARN_PROFILE") or "default"
    return checks.choice("profile", name, tuple(PROFILES))


def profile_datasets(profile: str | None = None) -> tuple[str, ...]:
    """The datasets a profile runs (the runner runs each that is on disk)."""
    return PROFILES[profile_name(profile)]["datasets"]


def repository_root() -> Path:
    """The repository holding the current working directory (a notebook's ``notebooks/``
    folder included), else the current working directory."""
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "pyproject.toml").is_file() and (p / "bdunlearn").is_dir():
            return p
    return here


def resolve(profile: str | None = None, **overrides) -> RunConfig:
    """The :class:`RunConfig` of ``profile`` with ``overrides`` (``None``: the profile's).

    Raises ``ValueError`` naming the field, the value and what is allowed for an unknown
    field name or a bad value (see the module docstring).
    """
    name = profile_name(profile)
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r}; choose from {', '.join(FIELDS)}")
    given = {k: v for k, v in overrides.items() if v is not None and k != "profile"}
    out = _resolve(name, given)
    if set(given) - set(PLACEMENT):
        own = _resolve(name, {"dataset": out["dataset"]})
        out["overrides"] = tuple(k for k in FIELDS if k not in PLACEMENT and out[k] != own[k])
    if out["dataset"] not in PROFILES[name]["datasets"]:
        out["overrides"] = ("dataset", *out.get("overrides", ()))
    return RunConfig(**out)


def _resolve(name: str, given: dict) -> dict:
    """The resolved, checked fields of profile ``name`` with the overrides ``given``."""
    raw = {k: v for k, v in PROFILES[name].items() if k != "datasets"}
    raw.update(given)
    dataset = raw.get("dataset", PROFILES[name]["datasets"][0])
    ds = registry.spec(dataset)
    c = checks  # short name for the many checks below
    out = dict(profile=name, dataset=dataset)
    out["train_subset"] = _size("train_subset", raw["train_subset"], ds.train_size)
    out["test_subset"] = _size("test_subset", raw["test_subset"], ds.test_size)
    n_train = min(out["train_subset"], ds.train_size)
    out["seeds"] = _ints("seeds", _ranges(raw["seeds"]), low=0, high=MAX_SEED,
                         most=MAX_SEEDS)
    out["shards"] = _ints("shards", raw["shards"], low=1, high=n_train,
                          high_text=f"the {n_train} training images")
    out["defense_samples"] = _ints("defense_samples", raw["defense_samples"], low=1)
    dev = raw["device"]
    if not isinstance(dev, str):
        raise ValueError(f"device {dev!r} must be 'auto', 'cpu' or a device name like 'cuda:0'")
    out["device"] = str(resolve_device(dev))
    out["precision"] = resolve_precision(c.choice("precision", raw["precision"], PRECISIONS),
                                         out["device"])
    out["input_scaling"] = c.choice(
        "input_scaling", _reference(raw["input_scaling"], REFERENCE_SCALING[ds.arch]),
        tuple(INPUT_SCALINGS))
    out["variant"] = c.choice("variant", raw["variant"], VARIANTS)
    out["data_root"] = _path("data_root", raw["data_root"])
    out["slices"] = c.integer("slices", raw["slices"], 1)
    out["epochs"] = c.integer("epochs", _paper(raw["epochs"], ds.train.epochs), 1)
    out["long_epochs"] = c.integer("long_epochs", raw["long_epochs"], 1)
    out["alpha"] = c.number("alpha", _paper(raw["alpha"], ds.alpha), 0, 1, low_open=True)
    for key in ("poison_num", "mitigation_num", "it_poison_num", "it_mitigation_num"):
        out[key] = c.integer(key, _paper(raw[key], getattr(ds, key)), 1, n_train)
    out["nc_steps"] = c.integer("nc_steps", raw["nc_steps"], 1)
    for key in ("request_steps", "defense_steps"):
        out[key] = checks.request_steps(key, raw[key])  # counts capped by schedule()
        most = max(out["mitigation_num"], out["it_mitigation_num"])
        if isinstance(out[key], int) and out[key] > most:
            raise ValueError(f"{key} {out[key]} asks for more request batches than the "
                             f"{most} mitigation samples there are to request; give at "
                             f"most {most}")
    out["defender_size"] = c.integer(
        "defender_size", _paper(raw["defender_size"], ds.train_size // 20), 1)
    out["amnesiac"] = c.flag("amnesiac", raw["amnesiac"])
    out["compute"] = c.flag("compute", raw["compute"])
    out["target_fpr"] = c.number("target_fpr", raw["target_fpr"], 0, 1, low_open=True,
                                 high_open=True)
    out["poison_fraction"] = c.number("poison_fraction", raw["poison_fraction"], 0, 1,
                                      low_open=True, high_open=True)
    several = len(PROFILES[name]["datasets"]) > 1
    for key, env, top in (("results_dir", "BDUNLEARN_RESULTS", "results"),
                          ("figures_dir", "BDUNLEARN_FIGURES", "figures")):
        folder = _path(key, raw[key]) or os.environ.get(env)
        if folder:
            out[key] = str(Path(folder).expanduser().absolute())
        else:
            folder = repository_root() / top / name
            out[key] = str(folder / dataset if several else folder)
    store = _path("store_dir", raw["store_dir"])
    if store:
        out["store_dir"] = str(Path(store).expanduser().absolute())
    elif os.environ.get("BDUNLEARN_RESULTS"):
        out["store_dir"] = str(Path(os.environ["BDUNLEARN_RESULTS"]).expanduser().absolute()
                               / "runs")
    else:
        folder = repository_root() / "results" / ("" if name == "default" else name) / "runs"
        out["store_dir"] = str(folder / dataset if several else folder)
    return out


def _paper(value, reference):
    """``reference`` where ``value`` is the ``"paper"`` sentinel, else ``value``."""
    return reference if value == PAPER else value


def _reference(value, reference):
    """``reference`` where ``value`` is the ``"reference"`` sentinel, else ``value``."""
    return reference if value == REFERENCE else value


def _size(key: str, value, split: int) -> int:
    """A subset size: a positive integer, ``"all"`` (the standard split's size) or
    ``"half"`` (half of it)."""
    if value == ALL:
        return split
    if value == HALF:
        return split // 2
    if isinstance(value, str):
        raise ValueError(f"{key} {value!r} must be a positive integer, 'all' or 'half'")
    return checks.integer(key, value, 1)


def _ranges(value):
    """Seeds written as a string of ranges (``"0-9"``, ``"0-4,7"``) as a list, refused
    before it is built when it holds more than :data:`MAX_SEEDS` seeds or a seed above
    :data:`MAX_SEED`."""
    if not isinstance(value, str):
        return value
    parts, count = [], 0
    for part in value.replace(" ", "").split(","):
        lo, sep, hi = part.partition("-")
        if not (lo.isdigit() and (not sep or hi.isdigit())) or (sep and int(hi) < int(lo)):
            raise ValueError(f"seeds {value!r} must be integers or ranges like '0-9' or "
                             "'0-4,7'")
        lo, hi = int(lo), int(hi) if sep else int(lo)
        if hi > MAX_SEED:
            raise ValueError(f"seeds {value!r} holds {hi}; give seeds between 0 and "
                             f"{MAX_SEED}")
        count += hi - lo + 1
        if count > MAX_SEEDS:
            raise ValueError(f"seeds {value!r} holds more than {MAX_SEEDS} seeds; give at "
                             f"most {MAX_SEEDS} (each seed is a whole run of every setting)")
        parts.append(range(lo, hi + 1))
    return [s for r in parts for s in r]


def _ints(key: str, value, low: int, high: int | None = None,
          high_text: str | None = None, most: int | None = None) -> tuple[int, ...]:
    """A non-empty tuple of integers in ``[low, high]``, each once (checked in linear
    time), at most ``most`` of them; a scalar is a one-element list."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # a numpy array or scalar
    values = list(value) if isinstance(value, (list, tuple, range)) else [value]
    shown = _short(value)
    if not values:
        raise ValueError(f"{key} {shown} is empty; give at least one integer >= {low}")
    if most is not None and len(values) > most:
        raise ValueError(f"{key} {shown} holds {len(values)} values; give at most {most}")
    seen: set[int] = set()
    for v in values:
        if isinstance(v, bool) or not isinstance(v, Integral) or v < low or (
                high is not None and v > high):
            limit = f" and at most {high_text or high}" if high is not None else ""
            raise ValueError(f"{key} {shown} must hold integers >= {low}{limit} "
                             f"(offending value {v!r})")
        if int(v) in seen:
            raise ValueError(f"{key} {shown} holds {int(v)} more than once; give each "
                             "value once")
        seen.add(int(v))
    return tuple(int(v) for v in values)


def _short(value) -> str:
    """``repr(value)``, cut to its start and end when it is long (a list of many seeds)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:40]} ... {text[-20:]}"


def _path(key: str, value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)) and os.fspath(value).strip():
        return os.fspath(value)
    raise ValueError(f"{key} {value!r} must be a folder path (a non-empty string), or None "
                     "for the default")
