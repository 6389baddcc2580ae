"""The notebooks' figures read at a glance: integer shard ticks, titles in words, zero bars
visible, legends off the lines, widgets with a static fallback. Synthetic tables, Agg."""

from types import SimpleNamespace

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bdunlearn import plots, widgets


@pytest.fixture(autouse=True)
def _agg_backend():
    plt.switch_backend("Agg")
    plots.use_style()
    yield
    plt.close("all")


def detection_table():
    rows = []
    for seed in (0, 1):
        for variant, base in (("bn", 0.68), ("it", 0.05)):
            for shards in (1, 5, 10):
                for det in ("mu", "sms"):
                    if det == "sms" and shards == 1:
                        continue
                    rows.append({"variant": variant, "seed": seed, "shards": shards,
                                 "detector": det, "auroc": base + 0.01 * seed})
    return pd.DataFrame(rows)


def erasure_table():
    rows = []
    for attack, before in (("badnets", 0.99), ("bau", 0.93)):
        for defense, n, asr in (("neural_cleanse", 3000, 0.0), ("grad_prune", 100, 0.14),
                                ("grad_prune", 1000, 0.004), ("finetune", 3000, 0.97)):
            rows.append({"attack": attack, "defense": defense, "defender_samples": n,
                         "asr_before": before, "asr_after": asr, "clean_acc_before": 0.84,
                         "clean_acc_after": 0.83, "seconds": 1.0})
    rows.append({"attack": "none", "defense": "neural_cleanse", "defender_samples": 3000,
                 "seconds": 1.0})
    return pd.DataFrame(rows)


def trajectory_table():
    rows = []
    for setting, slope in (("exact", 0.15), ("SISA S=5", 0.01), ("amnesiac", 0.05)):
        for k in (0, 200, 400, 600):
            rows.append({"setting": setting, "requested": k, "asr": min(1.0, slope * k / 100),
                         "clean_acc": 0.85, "retrain_seconds": 0.0 if k == 0 else 10.0})
    return pd.DataFrame(rows)


def texts(fig):
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text)]


def all_labels(fig):
    """Titles and axis labels of every panel."""
    return [s for ax in fig.axes for s in (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())]


def test_auroc_panel_has_integer_shard_ticks_every_point_inside_and_legend_outside():
    det = detection_table()
    fig = plots.auroc_vs_shards(det)
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [1, 5, 10]
    low, high = ax.get_ylim()
    assert low < det.auroc.min() and high > det.auroc.max()
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1, "the legend should sit right of the lines"


def test_detection_figure_draws_the_auroc_panel_with_shard_ticks():
    det = detection_table()
    rng = np.random.default_rng(0)
    curves = {(r.variant, r.seed, r.shards, r.detector): (rng.random(20), rng.random(20))
              for r in det.itertuples()}
    fig = plots.detection(det, curves, seed=0)
    assert list(fig.axes[2].get_xticks()) == [1, 5, 10]
    assert "MU scores, BN attack, 1 shard" in all_labels(fig)
    with pytest.raises(ValueError, match="seed 7"):
        plots.detection(det, curves, seed=7)
    assert "MU scores, BN attack, 1 shard" in all_labels(plots.detection(det, curves))


def test_erasure_has_readable_titles_labels_and_no_colliding_ticks():
    fig = plots.erasure(erasure_table())
    labels = all_labels(fig)
    assert not any("=" in s for s in labels), labels
    assert "value" not in labels
    assert {"ASR after the defense", "clean accuracy after the defense"} <= set(labels)
    assert {"attack success rate", "clean accuracy"} <= set(labels)
    fig.canvas.draw()
    left, right = fig.axes
    last_left = max((t.get_window_extent() for t in left.get_xticklabels() if t.get_text()),
                    key=lambda b: b.x1)
    first_right = min((t.get_window_extent() for t in right.get_xticklabels() if t.get_text()),
                      key=lambda b: b.x0)
    assert last_left.x1 < first_right.x0, "tick labels of the two panels overlap"
    # the clean-model row (no ASR) is left out: two attacks in the legend, four defenses
    assert len(left.get_yticklabels()) == 4
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "classical BadNets (ASR before: 99%)", "BAU after unlearning (ASR before: 93%)"]


def test_zero_bars_are_labelled_zero_not_left_blank():
    fig = plots.erasure(erasure_table())
    shown = texts(fig)
    assert "0%" in shown  # Neural Cleanse's ASR after is exactly zero
    assert "0.4%" in shown  # below 1% keeps a decimal instead of rounding to 0%

    table = pd.DataFrame({"variant": ["bn", "bn", "it", "it"], "seed": 0,
                          "requested": [0, 600, 0, 15], "clean_acc": 0.85,
                          "asr": [0.05, 0.93, 0.0, 0.0]})
    fig = plots.before_after(table, {0: 0.846})
    asr_panel = fig.axes[1]
    bar_labels = [t.get_text() for t in asr_panel.texts]
    assert bar_labels.count("0%") == 2 and "93%" in bar_labels


def test_before_after_refuses_an_empty_baseline_and_a_table_without_asr():
    table = pd.DataFrame({"variant": ["bn"], "requested": [0], "clean_acc": [0.8]})
    with pytest.raises(ValueError, match=r"lacks the columns \['asr'\]"):
        plots.before_after(table, {0: 0.8})
    with pytest.raises(ValueError, match="empty mapping"):
        plots.before_after(table.assign(asr=0.1), {})


def test_trajectory_and_filter_label_the_x_axis_in_samples_and_keep_rates_in_range():
    fig = plots.trajectory(trajectory_table())
    assert [ax.get_xlabel() for ax in fig.axes] == ["mitigation samples unlearned"] * 3
    assert fig.axes[0].get_ylim()[1] >= 1.0 and fig.axes[0].get_ylim()[0] < 0
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)

    both = pd.DataFrame({"unlearning": ["no filter"] * 3 + ["MU filter"] * 3,
                         "requested": [0, 300, 600] * 2, "asr": [0.05, 0.3, 0.93] * 2,
                         "refused": [0, 0, 0, 0, 4, 6]})
    fig = plots.filter_effect(both)
    refused = fig.axes[1].get_lines()
    assert max(refused[1].get_ydata()) == 10  # refused requests are accumulated


def test_defense_cost_accumulates_seconds_and_circles_the_detections():
    overhead = pd.DataFrame({
        "setting": ["badnets"] + ["bau"] * 3 + ["bau"],
        "defense": ["neural_cleanse"] * 4 + ["screen_mu"],
        "requested": [0, 0, 300, 600, 0], "seconds": [10.0, 10.0, 12.0, 11.0, 0.1],
        "flagged": [True, False, False, True, None]})
    traj = pd.DataFrame({"requested": [0, 300, 600], "asr": [0.05, 0.3, 0.93]})
    fig = plots.defense_cost(overhead, traj)
    cost, when = fig.axes
    line = cost.get_lines()[0]
    assert list(line.get_ydata()) == [10.0, 22.0, 33.0]
    assert list(cost.get_xticks()) == [0, 300, 600]
    circled = when.collections[0].get_offsets()
    assert [tuple(p) for p in circled] == [(600, 0.93)]


def test_trajectory_slider_reads_out_samples_and_carries_a_static_image():
    ipw = pytest.importorskip("ipywidgets")
    box = widgets.trajectory_slider(trajectory_table())
    slider, image, table = box.children
    assert isinstance(slider, ipw.SelectionSlider)
    assert list(slider.options) == [0, 200, 400, 600] and slider.value == 600
    assert slider.description == "mitigation samples unlearned"
    assert slider.style.description_width == "initial"
    bundle = box._repr_mimebundle_()
    assert bundle["image/png"].startswith(b"\x89PNG")
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert not bundle["text/plain"].startswith("VBox")
    before = image.value
    slider.value = 200
    assert image.value != before and "200 mitigation samples unlearned" in table.value


def test_save_writes_print_quality(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1])
    path = plots.save(fig, tmp_path, "01_attack", "demo")
    assert path.name == "01_attack-demo.png"
    with Image.open(path) as img:
        assert img.width >= 2 * 200 * 0.8  # 200 dpi (bbox "tight" trims some margin)


def test_image_viewer_switches_roles_and_carries_a_static_image():
    pytest.importorskip("ipywidgets")
    x = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)
    x[3:] = 255  # the mitigation samples are white, the poison black
    manifest = pd.DataFrame({"id": range(6), "role": ["poison"] * 3 + ["mitigation"] * 3,
                             "label": [1, 1, 1, 0, 0, 0]})
    atk = SimpleNamespace(manifest=manifest, x=x, x_eval=x[:2])
    box = widgets.image_viewer(atk, ["zero", "one"])
    (role, index), image = box.children[0].children, box.children[1]
    assert box._repr_mimebundle_()["image/png"].startswith(b"\x89PNG")
    assert index.max == 2
    poison_png = bytes(image.value)
    role.value = "mitigation"
    assert bytes(image.value) != poison_png


def test_yes_no_bars_draw_the_wilson_interval_of_the_rate():
    # 2 of 10 seeds switched on: Wilson [5.7%, 51.0%], where a t-interval would reach 0
    rate = pd.DataFrame({"setting": "x", "seed": range(10),
                         "switched_on": [float(s in (5, 8)) for s in range(10)]})
    fig = plots.bars(rate, "setting", "switched_on", title="t", yes_no=True)
    low, high = sorted(fig.axes[0].lines[0].get_ydata())
    assert (round(low, 3), round(high, 3)) == (0.057, 0.51)
    assert "rate over 10 seeds, 95% Wilson interval" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="only 0 and 1"):
        plots.bars(rate.assign(switched_on=0.5), "setting", "switched_on", title="t",
                   yes_no=True)


def test_bars_on_different_seed_counts_say_so():
    table = pd.DataFrame({"setting": ["a", "a", "a", "b"], "seed": [0, 1, 2, 0],
                          "asr": [0.9, 0.8, 0.7, 0.5]})
    fig = plots.bars(table, "setting", "asr", title="t")
    assert fig._suptitle.get_text() == "mean over 1-3 seeds per bar, 95% t-interval"
    fig = plots.bars(table[table.setting == "a"], "setting", "asr", title="t")
    assert fig._suptitle.get_text() == "mean over 3 seeds, 95% t-interval"
