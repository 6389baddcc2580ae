"""One figure style for every notebook, and the notebooks' figures (the explorer widgets
are in :mod:`bdunlearn.widgets`).

Each figure function takes the tidy table its notebook builds (the columns are named in its
docstring), returns a matplotlib ``Figure`` and leaves saving to :func:`save`. Rates (ASR,
accuracy; AUROC as a plain number) are drawn on a fixed 0-1 axis; bars carry their value, so a
bar of height zero reads as "0%", not as missing data.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, PercentFormatter

from .metrics import interval, proportion_interval, value_range

PALETTE = "colorblind"
PRINT_DPI = 200

# How the tables' short names read in a figure.
NAMES = {
    "bn": "BadNets-based (BN)", "it": "input-targeted (IT)",
    "badnets": "classical BadNets", "bau": "BAU after unlearning",
    "mu": "MU", "sms": "SMS", "loss": "loss", "knn": "k-NN features", "batch": "batch",
    "neural_cleanse": "Neural Cleanse", "baeraser": "BAERASER",
    "grad_prune": "Grad-Prune, known trigger", "grad_prune_nc": "Grad-Prune, NC trigger",
    "finetune": "fine-tuning", "fine_pruning": "fine-pruning",
}


def use_style() -> None:
    """The shared look: seaborn ticks, colour-blind palette, readable sizes, print dpi."""
    sns.set_theme(style="ticks", palette=PALETTE, context="notebook")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": PRINT_DPI, "savefig.bbox": "tight",
                         "axes.spines.top": False, "axes.spines.right": False,
                         "legend.frameon": False})


def save(fig, figures_dir, stem: str, name: str) -> Path:
    """Save ``figures/<stem>-<name>.png`` at print quality (200 dpi) and return its path."""
    path = Path(figures_dir) / f"{stem}-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PRINT_DPI, bbox_inches="tight")
    return path


def seed_interval(values, bounds: tuple = (0.0, 1.0)) -> tuple[float, float]:
    """Seaborn ``errorbar``: the 95% t-interval over seeds (:func:`metrics.interval`) of a
    rate (within [0, 1]; other ``bounds`` for other numbers), as the README's claim rows
    give it; a single seed draws no bar."""
    mean, lo, hi = interval(values, bounds=bounds)
    return (mean, mean) if lo is None else (lo, hi)


def rate_interval(values) -> tuple[float, float]:
    """Seaborn ``errorbar`` for one yes/no outcome per seed (0 or 1): the 95% Wilson
    interval of the rate (:func:`metrics.proportion_interval`)."""
    v = np.asarray(values, dtype=np.float64)
    _, lo, hi = proportion_interval(int(v.sum()), len(v))
    return lo, hi


def _name(key) -> str:
    return NAMES.get(key, str(key))


def _require(table, columns, figure: str) -> None:
    """Refuse a table that is empty or lacks a column ``figure`` draws from."""
    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"{figure} needs a pandas DataFrame, not {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"the table given to {figure} lacks the columns {missing}; "
                         f"it needs {list(columns)}")
    if table.empty:
        raise ValueError(f"the table given to {figure} has no rows")


def _rate_axis(ax, axis: str = "y", top: float = 1.02, percent: bool = True) -> None:
    """A 0-1 axis (as 0-100% when ``percent``) with room below zero for a zero line."""
    lim = (-0.02, top)
    (ax.set_ylim if axis == "y" else ax.set_xlim)(*lim)
    if percent:
        target = ax.yaxis if axis == "y" else ax.xaxis
        target.set_major_formatter(PercentFormatter(1.0, decimals=0))
    (ax.set_yticks if axis == "y" else ax.set_xticks)([0, 0.25, 0.5, 0.75, 1.0])


def _percent(value: float) -> str:
    """A rate as a label: whole percent, one decimal below 1% so small is not zero."""
    if np.isnan(value):
        return ""
    return f"{100 * value:.1f}%" if 0 < abs(value) < 0.01 else f"{100 * value:.0f}%"


def _label_bars(ax) -> None:
    """Write each bar's value (as a percentage) at its end; a zero bar reads '0%'."""
    for bars in ax.containers:
        ax.bar_label(bars, labels=[_percent(v) for v in bars.datavalues], padding=2,
                     fontsize=8)


def _integer_ticks(ax, values) -> None:
    """x ticks exactly at the integer values drawn (shard counts, sample counts)."""
    ticks = sorted({int(v) for v in values})
    ax.xaxis.set_major_locator(FixedLocator(ticks) if len(ticks) <= 12
                               else MaxNLocator(integer=True))


def before_after(table: pd.DataFrame, baselines: dict | None = None) -> Figure:
    """Notebook 01: clean accuracy and ASR of each variant before and after the requests.

    ``table`` has one row per (variant, seed, requested) with ``clean_acc`` and ``asr``;
    ``requested == 0`` is "before", any other count "after". ``baselines`` maps each seed
    to the clean accuracy of the model trained without attack samples (the dotted line;
    default: the table's ``baseline_acc`` column). Each bar carries its value (means over
    seeds) and its 95% t-interval over seeds.
    """
    _require(table, ["variant", "requested", "clean_acc", "asr"], "before_after")
    if baselines is None and "baseline_acc" in table:
        baselines = table.groupby("seed").baseline_acc.first().to_dict()
    if not baselines:
        raise ValueError("before_after needs the no-attack accuracy of at least one seed "
                         "in baselines, got an empty mapping")
    summary = table.assign(
        stage=np.where(table.requested > 0, "after the requests", "before the requests"),
        attack=table.variant.map(_name))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True, layout="constrained")
    panels = (("clean_acc", "clean accuracy"), ("asr", "attack success rate"))
    for ax, (metric, title) in zip(axes, panels):
        sns.barplot(summary, x="attack", y=metric, hue="stage", ax=ax, errorbar=seed_interval,
                    hue_order=["before the requests", "after the requests"])
        _label_bars(ax)
        ax.set(title=title, xlabel="", ylabel="")
        _rate_axis(ax, top=1.15)
        ax.get_legend().remove()
    no_attack = float(np.mean(list(baselines.values())))
    axes[0].axhline(no_attack, color="k", ls=":", lw=1)
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="k", ls=":", lw=1))
    labels.append(f"model without attack samples ({100 * no_attack:.0f}%)")
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    _seeds_title(fig, table)
    return fig


def _trajectory_axes(axes, traj: pd.DataFrame, hue: str, at=None) -> None:
    panels = (("asr", "attack success rate"), ("clean_acc", "clean accuracy"),
              ("retrain_seconds", "seconds per request batch"))
    order = list(dict.fromkeys(traj[hue]))
    for ax, (metric, title) in zip(axes, panels):
        data = traj[traj.requested > 0] if metric == "retrain_seconds" else traj
        sns.lineplot(data, x="requested", y=metric, hue=hue, hue_order=order, marker="o",
                     ax=ax, errorbar=functools.partial(seed_interval, bounds=value_range(metric)),
                     legend=ax is axes[0])
        ax.set(title=title, xlabel="mitigation samples unlearned", ylabel="")
        if metric == "retrain_seconds":
            ax.set_ylim(bottom=0)
            ax.set_ylabel("seconds (as measured when computed)", fontsize=8)
        else:
            _rate_axis(ax)
        if at is not None:
            ax.axvline(at, color="grey", ls="--", lw=1)


def trajectory(traj: pd.DataFrame, hue: str = "setting") -> Figure:
    """Notebook 02: ASR, clean accuracy and serving seconds along the requests.

    ``traj`` has ``requested`` (mitigation samples unlearned so far), ``asr``,
    ``clean_acc``, ``retrain_seconds`` and the column ``hue`` naming each unlearning
    setting (for example "exact", "SISA S=5", "amnesiac"); lines are means over seeds,
    bands their 95% t-interval. The legend sits below the panels, off every line.
    """
    _require(traj, ["requested", "asr", "clean_acc", "retrain_seconds", hue], "trajectory")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    _trajectory_axes(axes, traj, hue)
    legend = axes[0].get_legend()
    handles, labels = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
    legend.remove()
    bands = traj.seed.nunique() > 1 if "seed" in traj else False
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels),
               title="means over seeds; bands: 95% t-interval" if bands else None,
               title_fontsize=8)
    _seeds_title(fig, traj)
    return fig


def _seeds_title(fig, table: pd.DataFrame, kind: str = "t-interval",
                 groups: list[str] | None = None) -> None:
    """Say how many seeds stand behind a figure (bars and bands: 95% t-intervals, or
    Wilson intervals for a yes/no outcome per seed); with ``groups`` (a bar's columns),
    a range when bars rest on different seed counts."""
    n = table.seed.nunique() if "seed" in table else 1
    low = table.groupby(groups).seed.nunique().min() if groups and "seed" in table else n
    count = f"{low}-{n} seeds per bar" if low < n else f"{n} seed{'s' * (n != 1)}"
    fig.suptitle(f"{'rate' if kind.startswith('Wilson') else 'mean'} over {count}"
                 + (f", 95% {kind}" if n > 1 else ""), fontsize=8, x=0.99, ha="right")


def defense_cost(overhead: pd.DataFrame, traj: pd.DataFrame) -> Figure:
    """Notebook 03: cumulative defense work along the attack, and when detection fires.

    ``overhead`` has ``setting`` ("badnets" for the one-time runs on the classical model,
    "bau" for the runs after each request batch), ``defense``, ``requested``, ``steps``
    (optimiser steps, the counted work; ``seconds`` where a table has no steps) and
    ``flagged``; rows whose defense starts with ``screen`` (request screening) are left
    out. ``traj`` is the attack's trajectory (``requested``, ``asr``) under exact
    unlearning. Left: cumulative work of each defense re-run after every batch, with its
    one-time work on BadNets dotted in the same colour (means over seeds). Right: the
    served model's ASR, circled where Neural Cleanse flags the target.
    """
    _require(overhead, ["setting", "defense", "requested", "flagged"], "defense_cost")
    work = "steps" if "steps" in overhead and overhead.steps.notna().any() else "seconds"
    _require(overhead, [work], "defense_cost")
    _require(traj, ["requested", "asr"], "defense_cost")
    runs = overhead[~overhead.defense.str.startswith("screen")]
    bau = runs[runs.setting == "bau"].sort_values("requested")
    once = runs[runs.setting == "badnets"].groupby("defense")[work].mean()
    defenses = list(dict.fromkeys(bau.defense))
    colours = dict(zip(defenses, sns.color_palette(PALETTE)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
    for d in defenses:
        rows = bau[bau.defense == d].groupby("requested")[work].mean().cumsum()
        axes[0].plot(rows.index, rows.values, "o-", color=colours[d], label=_name(d))
        if d in once:
            axes[0].axhline(once[d], color=colours[d], ls=":", lw=1.2)
    axes[0].plot([], [], "k:", lw=1.2, label="once on classical BadNets")
    axes[0].set(title="cumulative cost of re-running each defense",
                xlabel="mitigation samples unlearned",
                ylabel="optimiser steps" if work == "steps" else "seconds")
    axes[0].set_ylim(bottom=0)
    _integer_ticks(axes[0], bau.requested)
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)
    asr = traj.groupby("requested").asr.mean()
    axes[1].plot(asr.index, asr.values, "o-", color="k", label="ASR of the served model")
    nc = bau[bau.defense == "neural_cleanse"].groupby("requested").flagged.any()
    fired = [k for k in nc.index[nc.astype(bool)] if k in asr.index]
    axes[1].scatter(fired, asr[fired], s=140, facecolors="none", edgecolors="r", lw=1.5,
                    label="Neural Cleanse flags the target", zorder=3)
    axes[1].set(title="when detection fires", xlabel="mitigation samples unlearned",
                ylabel="")
    _rate_axis(axes[1])
    _integer_ticks(axes[1], asr.index)
    axes[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)
    _seeds_title(fig, overhead)
    return fig


def auroc_vs_shards(det: pd.DataFrame, ax=None) -> Figure:
    """Notebook 04: AUROC of each detector and variant against the shard count.

    ``det`` has ``shards``, ``detector``, ``variant`` and ``auroc`` (one row per seed;
    lines are means, dots the seeds, bands the 95% t-interval over seeds). Ticks sit at
    the shard counts measured, the axis covers 0-1 (an AUROC below chance stays visible),
    chance is dotted, and the legend sits outside the lines. Draws into ``ax`` when
    given, else a new figure.
    """
    _require(det, ["shards", "detector", "variant", "auroc"], "auroc_vs_shards")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.4), layout="constrained")
    styles = {v: s for v, s in zip(dict.fromkeys(det.variant), ("-", "--", "-.", ":"))}
    colours = dict(zip(dict.fromkeys(det.detector), sns.color_palette(PALETTE)))
    for (detector, variant), rows in det.groupby(["detector", "variant"], sort=False):
        mean = rows.groupby("shards").auroc.mean()
        ax.scatter(rows.shards, rows.auroc, s=10, color=colours[detector], alpha=0.35)
        band = rows.groupby("shards").auroc.apply(seed_interval)
        ax.fill_between(band.index, [b[0] for b in band], [b[1] for b in band],
                        color=colours[detector], alpha=0.12, lw=0)
        ax.plot(mean.index, mean.values, marker="o", ls=styles[variant],
                color=colours[detector], label=f"{_name(detector)}, {_name(variant)}")
    ax.axhline(0.5, color="k", ls=":", lw=1, label="chance")
    if "seed" in det and det.seed.nunique() > 1:
        ax.fill_between([], [], [], color="grey", alpha=0.2, lw=0,
                        label="95% t-interval over seeds")
    ax.set(title="AUROC against shard count", xlabel="shards", ylabel="AUROC")
    _rate_axis(ax, percent=False)
    _integer_ticks(ax, det.shards)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return ax.figure


def detection(det: pd.DataFrame, curves: dict, seed: int | None = None) -> Figure:
    """Notebook 04's three panels: MU score histograms, ROC curves, AUROC against shards.

    ``curves`` maps ``(variant, seed, shards, detector)`` to ``(positive_scores,
    negative_scores)``; the histogram shows the BN attack's MU scores at the fewest shards
    of ``seed`` (default: the lowest seed with BN scores), the ROC panel every BN curve of
    ``seed``; the third panel is :func:`auroc_vs_shards`.
    """
    from sklearn.metrics import roc_curve

    if seed is None:  # the first seed whose scores are stored
        seed = min((k[1] for k in curves if k[0] == "bn"), default=None)
    bn = {k: v for k, v in curves.items() if k[0] == "bn" and k[1] == seed}
    if not bn:
        raise ValueError(f"curves hold no BN scores for seed {seed!r}; seeds present: "
                         f"{sorted({k[1] for k in curves})}")
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1, 1.35]})
    fewest = min(k[2] for k in bn if k[3] == "mu")
    pos, neg = bn[("bn", seed, fewest, "mu")]
    sns.histplot({"mitigation": pos, "clean": neg}, bins=30, stat="density",
                 common_norm=False, element="step", ax=axes[0])
    axes[0].set(title=f"MU scores, BN attack, {fewest} shard{'s' * (fewest > 1)}",
                xlabel="Gini impurity", ylabel="density")
    for (_, _, s, d), (sp, sn) in sorted(bn.items(), key=lambda kv: (kv[0][2], kv[0][3])):
        fpr, tpr, _ = roc_curve(np.r_[np.ones(len(sp)), np.zeros(len(sn))], np.r_[sp, sn])
        axes[1].plot(fpr, tpr, label=f"{_name(d)}, {s} shard{'s' * (s > 1)}")
    axes[1].plot([0, 1], [0, 1], "k:", lw=1)
    axes[1].set(title="ROC, BN attack", xlabel="false-positive rate",
                ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.01))
    axes[1].legend(fontsize=7, loc="lower right")
    auroc_vs_shards(det, ax=axes[2])
    _seeds_title(fig, det)
    return fig


def filter_effect(both: pd.DataFrame) -> Figure:
    """Notebook 04: the attack's ASR with and without the request filter.

    ``both`` has ``unlearning`` (the setting's label, e.g. "no filter", "MU filter"),
    ``requested``, ``asr`` and ``refused`` (requests the filter refused in that batch).
    Left: ASR against the samples requested; right: requests refused so far.
    """
    _require(both, ["unlearning", "requested", "asr", "refused"], "filter_effect")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained",
                             gridspec_kw={"width_ratios": [1.4, 1]})
    order = list(dict.fromkeys(both.unlearning))
    sns.lineplot(both, x="requested", y="asr", hue="unlearning", hue_order=order,
                 marker="o", ax=axes[0], errorbar=seed_interval)
    axes[0].set(title="ASR with and without the MU request filter", ylabel="",
                xlabel="mitigation samples requested")
    _rate_axis(axes[0])
    sns.move_legend(axes[0], "upper left", title=None)
    refused = both.sort_values("requested").assign(
        refused_so_far=lambda d: d.groupby("unlearning").refused.cumsum())
    sns.lineplot(refused, x="requested", y="refused_so_far", hue="unlearning",
                 hue_order=order, marker="o", ax=axes[1], errorbar=None, legend=False)
    axes[1].set(title="requests refused so far", xlabel="mitigation samples requested",
                ylabel="")
    axes[1].set_ylim(bottom=-0.5)
    axes[1].yaxis.set_major_locator(MaxNLocator(integer=True))
    _seeds_title(fig, both)
    return fig


def erasure(df: pd.DataFrame) -> Figure:
    """Notebook 05: ASR and clean accuracy after each defense, on both backdoored models.

    ``df`` has ``attack``, ``defense``, ``defender_samples``, ``asr_before``,
    ``asr_after`` and ``clean_acc_after`` (rows without ``asr_after``, such as Neural
    Cleanse on clean models, are left out). One horizontal bar per defense and attack,
    labelled with its value; the legend gives each attack's ASR before any defense.
    """
    _require(df, ["attack", "defense", "defender_samples", "asr_before", "asr_after",
                  "clean_acc_after"], "erasure")
    rows = df.dropna(subset=["asr_after"]).copy()
    if rows.empty:
        raise ValueError("the table given to erasure has no row with an asr_after value")
    rows["defense_label"] = [f"{_name(d)}\n({n} clean samples)"
                             for d, n in zip(rows.defense, rows.defender_samples)]
    rows["attack_label"] = rows.attack.map(_name)
    order = list(dict.fromkeys(rows.defense_label))
    hue_order = list(dict.fromkeys(rows.attack_label))
    colours = dict(zip(hue_order, sns.color_palette(PALETTE)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * len(order) + 1.4), sharey=True,
                             layout="constrained")
    panels = (("asr_after", "ASR after the defense", "attack success rate"),
              ("clean_acc_after", "clean accuracy after the defense", "clean accuracy"))
    for ax, (metric, title, xlabel) in zip(axes, panels):
        sns.barplot(rows, x=metric, y="defense_label", hue="attack_label", order=order,
                    hue_order=hue_order, palette=colours, ax=ax, errorbar=seed_interval,
                    legend=False)
        _label_bars(ax)
        ax.set(title=title, xlabel=xlabel, ylabel="")
        _rate_axis(ax, axis="x", top=1.2)
        ax.set_xticks([0, 0.5, 1.0])
    before = rows.groupby("attack_label", sort=False).asr_before.mean()
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[a]) for a in hue_order]
    labels = [f"{a} (ASR before: {_percent(before[a])})" for a in hue_order]
    fig.legend(handles, labels, loc="outside lower center", ncol=len(handles), fontsize=9)
    _seeds_title(fig, rows)
    return fig


def _show(ax, img: torch.Tensor, title: str) -> None:
    img = img.cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def gallery(rows: dict[str, tuple[torch.Tensor, list[str]]], ncol: int = 6):
    """A grid of images: one row per entry ``name -> (images, titles)``."""
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.5 * ncol, 1.7 * len(rows)),
                             squeeze=False)
    for r, (name, (imgs, titles)) in enumerate(rows.items()):
        for c in range(ncol):
            ax = axes[r, c]
            if c < len(imgs):
                _show(ax, imgs[c], titles[c])
            else:
                ax.axis("off")
        axes[r, 0].text(-0.15, 0.5, name, transform=axes[r, 0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=10)
    fig.tight_layout()
    return fig


def attack_gallery(atk, classes, n: int = 6):
    """Clean originals, poison, mitigation and test-trigger images of an attack."""
    m = atk.manifest
    pois = m[m.role == "poison"].head(n)
    mit = m[m.role == "mitigation"].head(n)
    if atk.variant == "it":
        rows = {"removed image": (atk.info["x0"][None], [f"x0: {classes[atk.info['y0']]}"])}
    else:
        clean = m[m.role == "clean"].head(n)
        rows = {"clean": (atk.x[torch.tensor(clean.id.to_numpy())],
                          [classes[int(label)] for label in clean.label])}
    rows["poison"] = (atk.x[torch.tensor(pois.id.to_numpy())],
                      [f"-> {classes[int(label)]}" for label in pois.label])
    rows["mitigation"] = (atk.x[torch.tensor(mit.id.to_numpy())],
                          [classes[int(label)] for label in mit.label])
    rows["test trigger"] = (atk.x_eval[:n], ["trigger"] * min(n, len(atk.x_eval)))
    return gallery(rows, ncol=n)


def bars(table: pd.DataFrame, x: str, y: str, hue: str | None = None, *, title: str,
         rate: bool = True, xlabel: str = "", yes_no: bool = False) -> Figure:
    """One bar chart of ``y`` per ``x`` (and ``hue``), means over seeds with their 95%
    t-interval, each bar labelled with its value (notebook 06's sections). ``yes_no``:
    ``y`` is one 0/1 outcome per seed, drawn as a rate with its Wilson interval."""
    _require(table, [x, y] + ([hue] if hue else []), "bars")
    if yes_no and not table[y].isin([0, 1]).all():
        raise ValueError(f"bars: column {y!r} must hold only 0 and 1 when yes_no is set")
    fig, ax = plt.subplots(figsize=(7.5, 3.4), layout="constrained")
    sns.barplot(table, x=x, y=y, hue=hue, ax=ax,
                errorbar=(rate_interval if yes_no else
                          functools.partial(seed_interval, bounds=value_range(y))),
                palette=PALETTE if hue else None)
    _label_bars(ax)
    ax.set(title=title, xlabel=xlabel, ylabel=_name(y))
    if rate:
        _rate_axis(ax, top=1.15)
    if hue:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1), title=_name(hue))
    ax.tick_params(axis="x", labelsize=8)
    _seeds_title(fig, table, "Wilson interval" if yes_no else "t-interval",
                 [x] + ([hue] if hue else []))
    return fig


def request_detection(table: pd.DataFrame, fpr: float = 0.05) -> Figure:
    """Notebook 07: per attack family, at the fewest shards, each detector's TPR at
    ``fpr`` false positives on random benign requests (left) and the final ASR behind its
    filter beside the ASR with no filter (right). Columns: ``variant``, ``seed``,
    ``shards``, ``detector``, ``tpr@<fpr>_random``, ``asr_after``, ``asr_filtered``."""
    tpr = f"tpr@{fpr:g}_random"
    _require(table, ["variant", "seed", "shards", "detector", tpr, "asr_after",
                     "asr_filtered"], "request_detection")
    from .attacks import title

    d = table[table.shards == table.shards.min()].assign(
        attack=lambda t: t.variant.map(title).str.replace(" (", "\n(", regex=False),
        detector=lambda t: t.detector.map(lambda k: NAMES.get(k, k)))
    plain = d.drop_duplicates(["variant", "seed"]).assign(detector="no filter",
                                                          asr_filtered=lambda t: t.asr_after)
    order = ["no filter", *dict.fromkeys(d.detector)]  # one colour per detector, both panels
    colours = dict(zip(order, sns.color_palette(PALETTE, len(order))))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
    sns.barplot(d, x="attack", y=tpr, hue="detector", ax=left, errorbar=seed_interval,
                hue_order=order[1:], palette=colours)
    left.set(title=f"attack requests caught at {fpr:.0%} benign false positives "
                   f"(S={int(d.shards.min())})", xlabel="", ylabel="TPR")
    sns.barplot(pd.concat([plain, d]), x="attack", y="asr_filtered", hue="detector", ax=right,
                errorbar=seed_interval, hue_order=order, palette=colours)
    right.set(title="final ASR behind each filter", xlabel="", ylabel="ASR")
    for ax in (left, right):
        _rate_axis(ax)
        ax.tick_params(axis="x", labelsize=7)
    left.get_legend().remove()
    sns.move_legend(right, "upper left", bbox_to_anchor=(1, 1), title="detector")
    _seeds_title(fig, d)
    return fig
