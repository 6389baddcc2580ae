"""One figure style for every notebook, print-quality saving, and the explorer widgets."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns
import torch

PALETTE = "colorblind"


def use_style() -> None:
    """The shared look: seaborn ticks, colour-blind palette, readable sizes."""
    sns.set_theme(style="ticks", palette=PALETTE, context="notebook")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 200, "savefig.bbox": "tight",
                         "axes.spines.top": False, "axes.spines.right": False})


def save(fig, figures_dir, stem: str, name: str) -> Path:
    """Save ``figures/<stem>-<name>.png`` at print quality and return its path."""
    path = Path(figures_dir) / f"{stem}-{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


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
                          [classes[int(l)] for l in clean.label])}
    rows["poison"] = (atk.x[torch.tensor(pois.id.to_numpy())],
                      [f"-> {classes[int(l)]}" for l in pois.label])
    rows["mitigation"] = (atk.x[torch.tensor(mit.id.to_numpy())],
                          [classes[int(l)] for l in mit.label])
    rows["test trigger"] = (atk.x_eval[:n], ["trigger"] * min(n, len(atk.x_eval)))
    return gallery(rows, ncol=n)


def trajectory_slider(df, x: str = "requested", hue: str = "setting"):
    """An ipywidgets slider over a trajectory table: one point of it at a time."""
    import ipywidgets as widgets

    steps = sorted(df[x].unique())
    out = widgets.Output()

    def draw(change=None):
        k = steps[slider.value]
        with out:
            out.clear_output(wait=True)
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
            for ax, metric in zip(axes, ("asr", "clean_acc")):
                sns.lineplot(df, x=x, y=metric, hue=hue, marker="o", ax=ax, errorbar=None)
                ax.axvline(k, color="grey", ls="--")
                ax.set_ylim(-0.02, 1.02)
            axes[1].get_legend().remove() if axes[1].get_legend() else None
            plt.show()
            cur = df[df[x] == k].groupby(hue)[["clean_acc", "asr"]].mean()
            print(f"{k} mitigation samples unlearned:\n{cur.round(3).to_string()}")

    slider = widgets.IntSlider(0, 0, len(steps) - 1, description="request step",
                               continuous_update=False)
    slider.observe(draw, names="value")
    draw()
    return widgets.VBox([slider, out])


def image_viewer(atk, classes):
    """A dropdown over the roles of an attack's samples and a slider over their index."""
    import ipywidgets as widgets

    m = atk.manifest
    role = widgets.Dropdown(options=["poison", "mitigation", "test trigger"],
                            description="samples")
    index = widgets.IntSlider(0, 0, 10, description="index")
    out = widgets.Output()

    def pick():
        if role.value == "test trigger":
            return atk.x_eval, ["test trigger"] * len(atk.x_eval)
        rows = m[m.role == role.value]
        return (atk.x[torch.tensor(rows.id.to_numpy())],
                [f"id {i}, label {classes[int(l)]}" for i, l in zip(rows.id, rows.label)])

    def draw(change=None):
        imgs, titles = pick()
        index.max = max(len(imgs) - 1, 0)
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(2.4, 2.4))
            _show(ax, imgs[min(index.value, len(imgs) - 1)], titles[min(index.value, len(imgs) - 1)])
            plt.show()

    role.observe(draw, names="value")
    index.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([role, index]), out])
