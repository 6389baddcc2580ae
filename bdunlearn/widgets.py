"""The notebooks' explorer widgets (ipywidgets): each also carries a static PNG, so a
notebook saved without widget state still shows a figure."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

from . import plots


def _png(fig, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _box_with_fallback(children, png: bytes, text: str):
    """A ``VBox`` of ``children`` that also carries a static PNG and a plain-text line.

    A live JupyterLab renders the widget; a saved notebook without widget state (GitHub,
    nbviewer, an untrusted notebook) shows the PNG instead of ``VBox(children=...)``.
    """
    import ipywidgets as widgets

    class FallbackBox(widgets.VBox):
        def _repr_mimebundle_(self, **kwargs):
            return {**super()._repr_mimebundle_(**kwargs), "image/png": png,
                    "text/plain": text}

    return FallbackBox(children)


def trajectory_slider(traj: pd.DataFrame, hue: str = "setting"):
    """Notebook 02: a slider over the number of mitigation samples unlearned.

    The slider's readout is that number (the values of ``traj.requested``); moving it
    redraws the :func:`trajectory` panels with a marker at that point and shows the mean
    clean accuracy and ASR of each setting there. Saved without widget state, the
    notebook shows the figure at the last request instead.
    """
    import ipywidgets as widgets

    plots._require(traj, ["requested", "asr", "clean_acc", "retrain_seconds", hue],
             "trajectory_slider")
    steps = [int(k) for k in sorted(traj.requested.unique())]

    def frame(k: int) -> bytes:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
        plots._trajectory_axes(axes, traj, hue, at=k)
        sns.move_legend(axes[0], "lower left", bbox_to_anchor=(0, 1.12), ncol=6,
                        title=None, fontsize=8)
        return _png(fig)

    def readout(k: int) -> str:
        now = traj[traj.requested == k].groupby(hue, sort=False)[["clean_acc", "asr"]].mean()
        now.columns = ["clean accuracy", "ASR"]
        return (f"<b>{k} mitigation samples unlearned</b>"
                + now.style.format("{:.1%}").to_html())

    slider = widgets.SelectionSlider(options=steps, value=steps[-1],
                                     description="mitigation samples unlearned",
                                     continuous_update=False,
                                     style={"description_width": "initial"},
                                     layout=widgets.Layout(width="640px"))
    last = frame(steps[-1])
    image = widgets.Image(value=last, format="png")
    table = widgets.HTML(readout(steps[-1]))

    def redraw(change):
        image.value = frame(change["new"])
        table.value = readout(change["new"])

    slider.observe(redraw, names="value")
    return _box_with_fallback([slider, image, table], last,
                              f"trajectory slider over {len(steps)} request counts "
                              f"(live in JupyterLab; the figure shows the last one)")


def image_viewer(atk, classes):
    """A dropdown over the roles of an attack's samples and a slider over their index.

    Saved without widget state, the notebook shows the first poison sample instead.
    """
    import ipywidgets as widgets

    m = atk.manifest
    role = widgets.Dropdown(options=["poison", "mitigation", "test trigger"],
                            description="samples")
    index = widgets.IntSlider(0, 0, 10, description="index")

    def pick():
        if role.value == "test trigger":
            return atk.x_eval, ["test trigger"] * len(atk.x_eval)
        rows = m[m.role == role.value]
        return (atk.x[torch.tensor(rows.id.to_numpy())],
                [f"id {i}, label {classes[int(label)]}" for i, label in zip(rows.id, rows.label)])

    def frame() -> bytes:
        imgs, titles = pick()
        index.max = max(len(imgs) - 1, 0)
        i = min(index.value, len(imgs) - 1)
        fig, ax = plt.subplots(figsize=(2.4, 2.4))
        plots._show(ax, imgs[i], titles[i])
        return _png(fig)

    first = frame()
    image = widgets.Image(value=first, format="png")

    def redraw(change=None):
        image.value = frame()

    role.observe(redraw, names="value")
    index.observe(redraw, names="value")
    return _box_with_fallback([widgets.HBox([role, index]), image], first,
                              "image viewer over the attack's samples (live in JupyterLab)")
