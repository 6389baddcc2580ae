"""Studies: one declared list of runs per notebook, read by the notebook, the planner and
the tests alike.

A notebook's results are the rows of small *runs* (:class:`Run`: one seed of one setting,
such as the BN attack at 5 shards). The notebook's study module in this package declares

* ``PARAMETERS``: the notebook's ``parameters`` cell (a test keeps the two equal);
* ``runs(cfg) -> [Run]``: every run of a :class:`~bdunlearn.config.RunConfig`;
* ``needs(run, ctx) -> [Need]``: the services the run fits or serves requests on, as
  :class:`Recipe` objects with the ids removed after each request batch, so the planner
  (:mod:`bdunlearn.plan`) trains their slices ahead without running anything else;
* ``compute(run, ctx) -> rows`` (or ``(rows, {name: side table})``): the run's rows, built
  from the very same recipes.
* optionally ``select(stored, cfg, table) -> rows``: which stored rows of ``table`` it shows
  (notebook 07: each detector's current version, naming those with no stored rows).
* ``CLAIMS``: the claims its tables hold (:class:`~bdunlearn.claim.Claim`: measured,
  thresholds per profile, README rows), each written once and gathered by name in
  :mod:`bdunlearn.claims` (notebook 06's module also holds ``HEADLINE``, the papers' main
  claims at both epoch counts, which read its epochs section).

:func:`setup` is a notebook's first cell: it resolves the notebook's parameters into a
run configuration and returns a :class:`Notebook`, whose :meth:`Notebook.collect`
computes the runs not yet stored (:mod:`bdunlearn.store`) and returns every stored run of
the same settings, with provenance columns. The checkpoint cache travels as an argument
(``cache_dir``) from here down to every service; nothing writes the environment.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from pathlib import Path

import pandas as pd

from .. import attack as attacks
from .. import experiment as ex
from ..cache import default_cache_dir
from ..config import PLACEMENT, RunConfig, resolve
from ..defender import defender_pool
from ..registry import load_plugins
from ..store import GROUP, RunStore, provenance
from ..tables import output_dirs, save_table

NOTEBOOKS = Path(__file__).resolve().parent.parent.parent / "notebooks"
STEMS = ("01_attack", "02_unlearning_trajectory", "03_defense_overhead", "04_detection",
         "05_backdoor_erasure", "06_fidelity", "07_request_detection")
MODULES = dict(zip(STEMS, ("attack", "trajectory", "overhead", "detection", "erasure",
                           "fidelity", "benchmark")))
KINDS = ("clean", "attack", "classic")
# What every study's rows depend on (each adds its own in SETTINGS).
MEASURED = ("train_subset", "test_subset", "epochs", "input_scaling", "slices")
# Every notebook's parameters start with these (where and how it computes, and its size).
COMMON = ("profile", "dataset", "seeds", "device", "precision", "data_root", "results_dir",
          "figures_dir", "store_dir", "compute")


@dataclass(frozen=True)
class Recipe:
    """How a study builds one SISA service: small, hashable, and picklable to workers.

    ``kind`` is ``"clean"`` (the clean training set), ``"attack"`` (the service the
    attacker contributes to, on the ``variant`` attack) or ``"classic"`` (classical
    BadNets with ``cfg.poison_fraction``); ``cache_dir`` is the checkpoint cache.
    """

    kind: str
    cfg: RunConfig
    seed: int
    shards: int = 1
    variant: str | None = None
    cache_dir: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown recipe kind {self.kind!r}; use one of {', '.join(KINDS)}")

    def attack(self) -> attacks.AttackSet | None:
        """The attack set this service trains on (``None`` for a clean service)."""
        return _attack(self.kind, self.cfg, self.seed, self.variant)

    def build(self):
        """The service, untrained."""
        ds, cache_dir = dataset(self.cfg), self.cache_dir or None
        if self.kind == "clean":
            return ex.service(ds.x_train, ds.y_train, ds, self.cfg, seed=self.seed,
                              cache_dir=cache_dir)
        atk = self.attack()
        if self.kind == "classic":
            return ex.service(atk.x, atk.y, ds, self.cfg, seed=self.seed, cache_dir=cache_dir)
        return ex.attack_service(atk, ds, self.cfg, shards=self.shards, cache_dir=cache_dir)


_DATASETS: dict[tuple, object] = {}


def dataset(cfg: RunConfig):
    """``experiment.dataset(cfg)``, loaded once per process for each dataset and subset."""
    key = (cfg.dataset, cfg.data_root, cfg.train_subset, cfg.test_subset)
    if key not in _DATASETS:
        _DATASETS[key] = ex.dataset(cfg)
    return _DATASETS[key]


@lru_cache(maxsize=32)
def _attack(kind: str, cfg: RunConfig, seed: int, variant: str | None):
    ds = dataset(cfg)
    if kind == "classic":
        return attacks.build_classic_badnets(ds, poison_fraction=cfg.poison_fraction, seed=seed)
    if kind == "attack":
        return attacks.build_attack(ds, variant, seed=seed, cfg=cfg)
    return None


@dataclass(frozen=True)
class Need:
    """A service a run fits or serves requests on. ``states``: the ids removed after each
    request batch (``()`` for the fit alone). ``chain`` names a trajectory known only as
    it runs (``"filter"``: the request filter; ``"screened"``: notebook 07's filter;
    ``"amnesiac"``), planned as one job that
    runs it with the request counts ``counts`` (and the Amnesiac service's ``knobs``)."""

    label: str
    recipe: Recipe
    states: tuple = ((),)
    chain: str | None = None
    counts: tuple = ()
    knobs: tuple = ()


@dataclass(frozen=True)
class Run:
    """One run: the ``table`` its rows go to, a ``seed`` and its own ``setting`` (pairs of
    plain values such as ``(("variant", "bn"), ("shards", 5))``)."""

    table: str
    seed: int
    setting: tuple = ()

    def __getitem__(self, name: str):
        return dict(self.setting)[name]

    def key(self) -> dict:
        return {"seed": self.seed, **dict(self.setting)}

    @property
    def label(self) -> str:
        return " ".join([f"seed {self.seed}", *(f"{k} {v}" for k, v in self.setting)])


@dataclass
class Context:
    """What a study's ``needs`` and ``compute`` reach: the run configuration, the
    checkpoint cache and (loaded on first use) the dataset and the defender's pool."""

    cfg: RunConfig
    cache_dir: str = field(default_factory=lambda: str(default_cache_dir()))

    @property
    def ds(self):
        return dataset(self.cfg)

    @cached_property
    def pool(self):
        """The defender's clean images (:func:`bdunlearn.defender.defender_pool`)."""
        return defender_pool(self.cfg, self.cfg.defender_size)

    def recipe(self, kind: str, seed: int, shards: int = 1, variant: str | None = None
               ) -> Recipe:
        return Recipe(kind, self.cfg, seed, shards, variant, self.cache_dir)

    def attack(self, variant: str, seed: int) -> attacks.AttackSet:
        return self.recipe("attack", seed, 1, variant).attack()


def at_smoke(cfg: RunConfig | None, values, keep) -> tuple:
    """``values`` as a tuple; at the ``smoke`` profile only those ``keep`` accepts.

    Every study narrows its smoke run through this one helper, and only in sections whose
    claims are not asserted at ``smoke``: CI then trains less, and ``default`` (and any
    other profile) runs everything. Each call's ``keep`` says what stays.
    """
    values = tuple(values)
    if cfg is None or cfg.profile != "smoke":
        return values
    return tuple(v for v in values if keep(v))


def study(stem: str):
    """The study module of notebook ``stem`` (a number such as ``"04"`` works too)."""
    load_plugins()  # one's own detectors, attacks, datasets ($BDUNLEARN_PLUGINS)
    match = [s for s in STEMS if s == stem or s.startswith(f"{stem}_")]
    if not isinstance(stem, str) or len(match) != 1:
        raise ValueError(f"unknown notebook {stem!r}; choose one of {', '.join(STEMS)}")
    return importlib.import_module(f"{__name__}.{MODULES[match[0]]}")


def config(stem: str, profile=None, **params) -> RunConfig:
    """The run configuration notebook ``stem`` resolves from ``params`` (only the names in
    its parameters cell; others are ignored, as the runner passes each notebook its own)."""
    own = study(stem).PARAMETERS
    return resolve(profile, **{k: v for k, v in params.items() if k in own})


def settings(cfg: RunConfig, mod=None) -> dict:
    """What a run configuration measures apart from seeds and placement: the dataset and
    the fields the study ``mod`` declares in ``SETTINGS`` (every measuring field when
    ``mod`` is ``None``). Part of every stored run's key, so runs of other settings are
    stored apart and a new configuration field does not move the stored runs."""
    names = mod.SETTINGS if mod is not None else [
        k for k in cfg.__dataclass_fields__ if k not in PLACEMENT and k != "overrides"]
    return {"dataset": cfg.dataset, **{k: getattr(cfg, k) for k in names}}


def settings_key(mod, table: str, cfg: RunConfig) -> str:
    """The store folder of ``table``'s runs at ``cfg``'s settings."""
    return RunStore.settings_key(table, mod.VERSION, settings(cfg, mod))


def stored_key(mod, run: Run, cfg: RunConfig) -> tuple[str, str]:
    """``(settings key, run key)`` of ``run`` in the store."""
    skey = settings_key(mod, run.table, cfg)
    return skey, RunStore.run_key(skey, run.key(), cfg.precision, cfg.device_type)


def missing(stem: str, cfg: RunConfig) -> list[Run]:
    """The runs of notebook ``stem`` at ``cfg`` that its store does not hold yet."""
    mod, store = study(stem), RunStore(cfg.store_dir)
    return [r for r in mod.runs(cfg)
            if not store.has(r.table, *stored_key(mod, r, cfg), run=r.key())]


class Notebook:
    """A notebook's handle on its study: configuration, dataset, folders and store."""

    def __init__(self, stem: str, cfg: RunConfig, cache_dir: str | None = None):
        self.stem, self.cfg, self.study = stem, cfg, study(stem)
        self.ctx = Context(cfg, str(cache_dir or default_cache_dir()))
        self.res_dir, self.fig_dir = output_dirs(cfg)
        self.store = RunStore(cfg.store_dir)

    @property
    def ds(self):
        return self.ctx.ds

    @property
    def pool(self):
        return self.ctx.pool

    def attack(self, variant: str, seed: int | None = None) -> attacks.AttackSet:
        """The ``variant`` attack of ``seed`` (the first seed by default)."""
        return self.ctx.attack(variant, self.cfg.seeds[0] if seed is None else seed)

    def runs(self, table: str | None = None) -> list[Run]:
        return [r for r in self.study.runs(self.cfg) if table is None or r.table == table]

    def collect(self, table: str | None = None, progress: bool = True) -> pd.DataFrame:
        """Compute the runs of ``table`` (the notebook's own by default) that the store
        does not hold (none when ``cfg.compute`` is False), store each as it finishes, and
        return every stored run of the same settings (all seeds stored so far, every
        precision and device, with provenance columns). With ``compute`` False, it says
        so when another precision/device group of a table a claim reads holds more stored
        runs than the one the claims check (this run's)."""
        from tqdm.auto import tqdm

        table = table or self.stem
        todo = [r for r in self.runs(table)
                if not self.store.has(r.table, *stored_key(self.study, r, self.cfg),
                                      run=r.key())]  # a file of another run is no run
        if todo and not self.cfg.compute:
            print(f"{table}: {len(todo)} of {len(self.runs(table))} runs not stored in "
                  f"{self.cfg.precision} on {self.cfg.device_type}; compute is False, so the "
                  "table holds the stored runs only (of every precision and device)")
            todo = []
        prov = provenance(self.cfg.precision, self.cfg.device_type)
        if todo and prov["commit"].endswith("-dirty"):
            print(f"{table}: the package's code has uncommitted changes, so the runs stored "
                  f"now record commit {prov['commit']}, which no commit reproduces; commit "
                  "before computing runs you keep")
        for run in tqdm(todo, desc=f"{table}: runs to compute", disable=not (progress and todo)):
            out = self.study.compute(run, self.ctx)
            rows, extras = out if isinstance(out, tuple) else (out, {})
            self.store.put(run.table, *stored_key(self.study, run, self.cfg),
                           self.study.VERSION, rows, prov, extras)
        stored = self.store.table(table, settings_key(self.study, table, self.cfg), runs={
            stored_key(self.study, r, self.cfg)[1]: r.key() for r in self.runs(table)})
        if hasattr(self.study, "select"):  # which stored rows it shows (07: current versions)
            stored = self.study.select(stored, self.cfg, table)
        checked = {c.table for c in getattr(self.study, "CLAIMS", ())}
        if (table in checked and not self.cfg.compute and not stored.empty
                and set(GROUP) <= set(stored.columns)):
            runs = stored.groupby(list(GROUP)).run_key.nunique()
            mine = runs.get((self.cfg.precision, self.cfg.device_type), 0)
            (precision, device), most = runs.idxmax(), runs.max()
            if most > mine:
                print(f"{table}: the claims check the group computed in "
                      f"{self.cfg.precision} on {self.cfg.device_type} ({mine} stored runs); "
                      f"{precision} on {device} holds {most}: render with -p precision "
                      f"{precision} -p device {device} to check those")
        return stored

    def side(self, table: str, extra: str) -> pd.DataFrame:
        """The side table ``extra`` of every stored run of ``table`` (such as scores)."""
        return self.store.table(table, settings_key(self.study, table, self.cfg), extra)

    def own(self, table: pd.DataFrame) -> pd.DataFrame:
        """The rows computed at this run's precision and device (what a claim checks)."""
        return own_group(table, self.cfg)

    def save(self, table: pd.DataFrame, name: str | None = None, columns=None) -> Path:
        """Write ``<results_dir>/<name>.csv`` (the notebook's stem by default): ``columns``
        first (for the notebook's own table, its study's ``COLUMNS``, the results
        contract, by default), the provenance last (:func:`bdunlearn.tables.save_table`)."""
        name = name or self.stem
        if columns is None and name == self.stem:
            columns = getattr(self.study, "COLUMNS", None)
        return save_table(table, name, self.res_dir, columns)

    def figure(self, fig, name: str) -> Path:
        """Save ``fig`` as ``<figures_dir>/<stem>-<name>.png``."""
        from .. import plots

        return plots.save(fig, self.fig_dir, self.stem, name)

    def draw(self, name: str, plot, *tables, **kw):
        """``plot(*tables, **kw)`` saved as :meth:`figure` ``name``; skipped with one line
        when a table is empty (a notebook rendered from a store that lacks those runs)."""
        if any(isinstance(t, pd.DataFrame) and t.empty for t in tables):
            print(f"figure {name}: no stored run to draw yet")
            return None
        fig = plot(*tables, **kw)
        self.figure(fig, name)
        return fig


def own_group(table: pd.DataFrame, cfg: RunConfig) -> pd.DataFrame:
    """The rows of ``table`` computed at ``cfg``'s precision and device type (all rows
    when the table has no provenance columns)."""
    if table.empty or not set(GROUP) <= set(table.columns):
        return table
    return table[(table.precision == cfg.precision) & (table.device == cfg.device_type)]


def renders_stored(compute, precision) -> bool:
    """Whether a notebook run with these ``compute`` and ``precision`` parameters checks its
    claims on its largest group of stored runs (:func:`stored_precision`): it computes
    nothing and its precision is ``"auto"`` (or not given)."""
    return compute is False and precision in (None, "auto")


def stored_precision(stem: str, cfg: RunConfig) -> RunConfig:
    """``cfg`` at the precision of the group of notebook ``stem``'s stored runs (all its
    tables) that holds the most runs on this device type (``cfg`` itself on a tie or when
    none is stored): what a render that computes nothing checks its claims on when its
    precision is ``"auto"``, so each notebook's claims are checked on its largest group."""
    mod, store = study(stem), RunStore(cfg.store_dir)
    tables = sorted({r.table for r in mod.runs(cfg)})  # 06 stores one table per section
    stored = [store.table(t, settings_key(mod, t, cfg)) for t in tables]
    stored = pd.concat([t for t in stored if set(GROUP) <= set(t.columns)] or [pd.DataFrame()])
    if stored.empty:
        return cfg
    runs = stored[stored.device == cfg.device_type].groupby("precision").run_key.nunique()
    if runs.empty or runs.get(cfg.precision, 0) == runs.max():
        return cfg
    return replace(cfg, precision=str(runs.idxmax()))


def setup(stem: str, namespace: dict) -> Notebook:
    """A notebook's first cell: its parameters (read from ``namespace``, the notebook's
    globals, by the names its study declares) resolved into a :class:`Notebook`; prints
    what the run computes, on what, and where its stored runs are."""
    from .. import plots

    mod = study(stem)
    cfg = resolve(namespace.get("profile"),
                  **{k: namespace.get(k) for k in mod.PARAMETERS if k != "profile"})
    if renders_stored(cfg.compute, namespace.get("precision")):
        cfg = stored_precision(stem, cfg)
    nb = Notebook(stem, cfg)
    plots.use_style()
    todo = missing(stem, cfg)
    print(f"{stem} at profile {cfg.profile}: {cfg.dataset}, {cfg.train_subset} training images, "
          f"{cfg.epochs} epochs, seeds {sorted({r.seed for r in mod.runs(cfg)})}, "
          f"{cfg.device} in {cfg.precision}; "
          f"{len(mod.runs(cfg)) - len(todo)} of {len(mod.runs(cfg))} runs stored")
    return nb


def all_parameters() -> frozenset:
    """Every notebook's parameter names (what ``-p`` may set)."""
    return frozenset().union(*(study(s).PARAMETERS for s in STEMS))

