"""Claims defined once: their checks, and the notebooks' prose naming only their thresholds."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from bdunlearn import claims, config
from bdunlearn.metrics import interval, proportion_interval

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9]*.ipynb"))
DOCS = Path(__file__).resolve().parent.parent / "docs" / "notebooks"


def attack_table(asr_after: float) -> pd.DataFrame:
    return pd.DataFrame({"variant": ["bn", "bn"], "requested": [0, 600],
                         "unlearning": ["exact", "exact"], "clean_acc": [0.85, 0.84],
                         "asr": [0.05, asr_after], "baseline_acc": [0.85, 0.85]})


def test_check_passes_reports_and_fails_with_the_numbers(capsys):
    numbers = claims.check("bn_switch_on", attack_table(0.93), "default")
    assert numbers["asr_after"] == pytest.approx(0.93)
    assert "bn_switch_on (holds, 1 seed)" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"ASR 5.0% before, 50.0% after.*min_asr_after"):
        claims.check("bn_switch_on", attack_table(0.50), "default")
    # at smoke a rise of 45 points is enough
    claims.check("bn_switch_on", attack_table(0.50), "smoke")
    with pytest.raises(AssertionError, match="bn_switch_on fails at profile smoke"):
        claims.check("bn_switch_on", attack_table(0.10), "smoke")
    # the input-targeted claim is reported, never asserted
    it = attack_table(0.10).assign(variant="it")
    assert claims.check("it_switch_on", it, "default")["asr_after"] == pytest.approx(0.10)
    out = capsys.readouterr().out
    assert "it_switch_on (reported, 1 seed)" in out and "-> differs (n = 1)" in out


def test_a_table_without_rows_fails_where_the_claim_is_asserted():
    empty = attack_table(0.9).iloc[:0]
    with pytest.raises(AssertionError, match="no rows"):
        claims.check("bn_switch_on", empty, "default")


def test_detection_verdict_is_decided_on_the_interval_not_the_mean():
    def det(at1, at10):
        return pd.DataFrame({"variant": "bn", "detector": "mu", "seed": list(range(len(at1))) * 2,
                             "shards": [1] * len(at1) + [10] * len(at10), "auroc": at1 + at10})
    verdict = lambda t: claims.readme_rows({"04_detection": t})[0][-1]  # noqa: E731
    # mean 0.69 above the 0.65 bar, but the interval reaches under it: undecided, not "agrees"
    assert verdict(det([0.62, 0.70, 0.75], [0.55] * 3)).startswith("undecided at n = 3")
    assert verdict(det([0.70, 0.71, 0.72], [0.55, 0.56, 0.55])).startswith("agrees")
    assert verdict(det([0.50, 0.52, 0.51], [0.50] * 3)).startswith("differs")
    # above the bar but gaining with shards: differs
    assert verdict(det([0.70, 0.71, 0.72], [0.80, 0.81, 0.82])).startswith(
        "differs: gains with shards")
    assert "from this package's cross-check of the authors' code" in verdict(
        det([0.70, 0.71, 0.72], [0.55] * 3))
    with pytest.raises(AssertionError, match="AUROC S=1: 0.550"):
        claims.check("mu_detects", det([0.55], [0.5]), "smoke")


def test_every_claim_has_thresholds_at_every_profile():
    for claim in claims.CLAIMS.values():
        assert set(claim.thresholds) == set(config.PROFILES), claim.name
        assert set(claim.asserted_at) <= set(config.PROFILES), claim.name
        assert claim.notebook in {p.stem for p in NOTEBOOKS}, claim.name
    with pytest.raises(ValueError, match="unknown claim 'nope'"):
        claims.get("nope")


def _closing(cells: list) -> bool:
    return "".join(cells[-1]["source"]).lstrip().startswith("## What this shows")


def _markdown_numbers(nb: Path) -> list[tuple[str, float]]:
    """The numbers a notebook's prose names, its closing "What this shows" cell apart (that
    one reports what the notebook printed: see the test below)."""
    cells = json.loads(nb.read_text())["cells"]
    cells = cells[:-1] if cells and _closing(cells) else cells
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    found = [(m.group(0), float(m.group(1)) / 100)
             for m in re.finditer(r"(\d+(?:\.\d+)?)\s*%", text)]
    found += [(m.group(0), float(m.group(0))) for m in re.finditer(r"\b0\.\d+\b", text)]
    return found


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_prose_names_only_thresholds_the_claims_hold(nb):
    held = claims.threshold_values()
    stray = [text for text, v in _markdown_numbers(nb)
             if not any(abs(v - h) < 1e-9 for h in held)]
    assert not stray, f"{nb.name} names thresholds the claims module does not hold: {stray}"


def _printed(nb: Path) -> list[float]:
    """Every number in a rendered notebook's outputs (a percentage as a fraction)."""
    text = "\n".join("".join(o.get("text", "")) + "".join(
        "".join(v) for k, v in o.get("data", {}).items() if k.startswith("text/"))
        for c in json.loads(nb.read_text())["cells"] for o in c.get("outputs", []))
    found = [float(m) / 100 for m in re.findall(r"(-?\d+(?:\.\d+)?)\s*%", text)]
    return found + [float(m) for m in re.findall(r"-?\d+\.\d+|\b\d+\b", text)]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_what_a_notebook_shows_is_what_it_printed(nb):
    """Each notebook ends with "What this shows", whose percentages are numbers its rendered
    copy (docs/notebooks/) printed, to the digits it gives, or thresholds of its claims."""
    cells = json.loads(nb.read_text())["cells"]
    assert _closing(cells), f"{nb.name} does not end with a 'What this shows' cell"
    printed, held = _printed(DOCS / nb.name), claims.threshold_values()
    stray = []
    # a minus sign counts as the number's (-52.7%), a dash between numbers does not (18-27%)
    for m in re.finditer(r"((?:(?<![\d.])-)?\d+(?:\.(\d+))?)%", "".join(cells[-1]["source"])):
        value, tol = float(m.group(1)) / 100, 0.5 * 10 ** -(len(m.group(2) or "") + 2) + 1e-12
        if not any(abs(u - value) <= tol for u in printed) and value not in held:
            stray.append(m.group(0))
    assert not stray, f"{nb.name} closes with numbers its rendered copy never printed: {stray}"


def test_the_prose_check_catches_a_stale_number(tmp_path):
    nb = tmp_path / "01_x.ipynb"
    nb.write_text(json.dumps({"cells": [{"cell_type": "markdown",
                                         "source": ["MU reaches at least 0.85, ASR 99%"]}]}))
    assert [t for t, _ in _markdown_numbers(nb)] == ["99%", "0.85"]
    held = claims.threshold_values()
    assert 0.99 in held and 0.85 not in held


def test_a_run_with_overrides_reports_instead_of_asserting(capsys):
    tiny = config.resolve("paper", train_subset=2000, epochs=1, seeds=[0])
    claims.check("bn_switch_on", attack_table(0.10), tiny)
    assert "not asserted: the run overrides train_subset, epochs" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="fails at profile paper"):
        claims.check("bn_switch_on", attack_table(0.10), config.resolve("paper", device="cpu"))


def test_readme_rows_give_rates_as_k_of_n_and_figures_with_t_intervals():
    t = pd.DataFrame({"variant": ["bn"] * 4, "detector": ["mu"] * 4, "shards": [1, 1, 5, 5],
                      "seed": [0, 1, 0, 1], "auroc": [0.70, 0.74, 0.55, 0.57]})
    row = claims.readme_rows({"04_detection": t})[0]
    # mean 0.72, sd 0.0283, t(0.975, 1) = 12.706: half-width 0.254, clipped at 1
    assert row[2].startswith("AUROC at S=1: 0.720 [0.466, 0.974]")
    # a switch-on claim counts runs: 2 of 3 with its Wilson interval, never a t-interval
    runs = pd.concat([attack_table(a).assign(seed=s, variant="it")
                      for s, a in enumerate((0.9, 0.95, 0.1))])
    row = [r for r in claims.readme_rows({"01_attack": runs}) if "input" in r[0]][0]
    assert row[2] == "switches on in 2 of 3 [21%, 94%] runs" and row[3] == "undecided at n = 3"
    mean, lo, hi = interval([0.9, 0.95, 1.0], bounds=(0.0, 1.0))
    assert (round(mean, 3), hi) == (0.95, 1.0) and round(lo, 3) == 0.826
    assert interval([0.5]) == (0.5, None, None)


def test_an_interval_is_clipped_by_what_the_number_is_not_by_its_values():
    from bdunlearn.metrics import value_range
    from bdunlearn.tables import over_seeds

    # benign requests refused, 1, 0 and 1 over three seeds: a count, not a rate, whose
    # t-interval reaches 2.10 (mean 0.667, sd 0.577, t(0.975, 2) = 4.303)
    assert value_range("benign_refused_random") == (0.0, None)
    assert value_range("tpr@0.05_random") == value_range("asr_after") == (0.0, 1.0)
    assert value_range("reduction") == (None, 1.0)  # 1 - after / before: negative if it rose
    assert value_range("rise") == (-1.0, 1.0) and value_range("epochs") == (None, None)
    t = pd.DataFrame({"seed": [0, 1, 2], "g": "x", "benign_refused_random": [1, 0, 1],
                      "auroc": [0.9, 0.95, 1.0], "reduction": [0.1, 0.0, 0.1]})
    shown = over_seeds(t, ["g"], ["benign_refused_random", "auroc", "reduction"]).iloc[0]
    assert shown["benign_refused_random 95% CI"] == "[0.000, 2.101]"
    assert shown["auroc 95% CI"] == "[0.826, 1.000]"
    assert shown["reduction 95% CI"] == "[-0.077, 0.210]"
    mean, lo, hi = interval([0.9, 0.95, 1.0])
    assert round(hi, 3) == 1.074  # unbounded unless told


def test_rows_of_another_precision_or_device_are_never_pooled(capsys):
    bf16 = attack_table(0.95).assign(seed=0, precision="bf16", device="cpu")
    fp32 = attack_table(0.20).assign(seed=0, precision="fp32", device="cpu")
    both = pd.concat([bf16, fp32], ignore_index=True)
    # a notebook checks its own group: the fp32 rows would fail the claim, and are left out
    numbers = claims.check("bn_switch_on", both, config.resolve("default", precision="bf16"))
    assert numbers["asr_after"] == pytest.approx(0.95)
    assert "shown apart" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="93|20.0% after"):
        claims.check("bn_switch_on", both, config.resolve("default", precision="fp32"))
    # the README shows each group in its own row
    rows = [r for r in claims.readme_rows({"01_attack": both}) if "switch" in r[0]]
    assert [r[0].rsplit(" [", 2)[1] for r in rows[:2]] == ["bf16, cpu]", "fp32, cpu]"]
    assert rows[0][0].endswith("[01](docs/notebooks/01_attack.ipynb)")  # its notebook
    assert "95.0% after" in rows[0][2] and "20.0% after" in rows[1][2]


def test_fidelity_grid_claims_on_constructed_tables():
    amnesiac = claims.get("fidelity_amnesiac")
    grid = pd.DataFrame({"setting": ["wrecks"] * 2 + ["keeps"] * 2, "requested": [0, 300] * 2,
                         "asr": [0.05, 1.0, 0.05, 0.45], "clean_acc": [0.9, 0.1, 0.9, 0.87],
                         "seed": 0})
    m = amnesiac.measure(grid)
    # the wrecked model's 100% ASR is not a switched-on backdoor
    assert (m["best"], round(m["rise"], 3), m["broken"]) == ("keeps", 0.4, 1)
    assert amnesiac.holds(m, amnesiac.thresholds["default"])
    # the control (fine-tuning alone) is reported beside the best setting, never chosen
    # (the one as long as the best setting's fine-tuning, not another length's)
    control = pd.DataFrame({"setting": ["finetune 5, scale 0"] * 2 + ["finetune 2, scale 0"] * 2,
                            "requested": [0, 300] * 2, "asr": [0.05, 0.3, 0.05, 0.95],
                            "clean_acc": 0.9, "seed": 0})
    best = grid.assign(setting=grid.setting.map({"wrecks": "finetune 2, scale 2",
                                                 "keeps": "finetune 2, scale 0.5"}))
    m = amnesiac.measure(pd.concat([best, control]))
    assert (m["best"], m["control_asr"], m["settings"]) == ("finetune 2, scale 0.5", 0.95, 2)
    assert amnesiac.describe(m).endswith("fine-tuning alone as long (scale 0): ASR 95.0% after")
    m = amnesiac.measure(grid[grid.setting == "wrecks"])
    assert m["best"] is None and not amnesiac.holds(m, amnesiac.thresholds["default"])
    assert amnesiac.describe(m).startswith("no setting keeps clean accuracy within 5 points")
    baeraser = claims.get("fidelity_baeraser")
    grid = pd.DataFrame({"setting": ["paper", "strong", "ruinous"], "asr_before": 1.0,
                         "asr_after": [0.08, 0.005, 0.0], "clean_acc_before": 0.9,
                         "clean_acc_after": [0.9, 0.89, 0.8], "seed": 0})
    m = baeraser.measure(grid)
    # the best setting is the strongest one within 2 points of accuracy, not the ruinous one
    assert (m["best"], m["reduction"], m["paper_setting"]) == ("strong", 0.995, 0.92)
    assert baeraser.holds(m, baeraser.thresholds["default"])


def test_a_grid_claim_reports_the_setting_chosen_on_the_other_seeds():
    from bdunlearn.verdicts import leave_one_out

    # "b" is best on seeds 1 and 2, "a" on seed 0: each seed is scored at the setting the
    # *other* seeds choose, so no seed is credited with its own luck
    red = {0: {"a": 0.99, "b": 0.50}, 1: {"a": 0.60, "b": 0.99}, 2: {"a": 0.60, "b": 0.98}}
    assert leave_one_out(pd.DataFrame(red).T) == {0: "b", 1: "a", 2: "a"}
    grid = pd.DataFrame([{"setting": k, "seed": s, "asr_before": 1.0, "asr_after": 1 - r,
                          "clean_acc_before": 0.9, "clean_acc_after": 0.9}
                         for s, by in red.items() for k, r in by.items()])
    row = [r for r in claims.readme_rows({"06_fidelity-baeraser": grid}) if "BAERASER" in r[0]][0]
    assert "ASR 56.7% [42.3%, 71.0%] lower" in row[2]
    assert row[3] == "weaker than the paper's 99%"


def test_amnesiac_is_measured_against_its_fine_tuning_control_of_the_same_seed():
    rows = []
    for seed, (treated, control) in enumerate(((0.60, 0.40), (0.50, 0.42), (0.45, 0.40))):
        for setting, after in (("finetune 5, scale 0.5", treated),
                               ("finetune 5, scale 0", control)):
            rows += [{"setting": setting, "seed": seed, "requested": 0, "asr": 0.05,
                      "clean_acc": 0.9},
                     {"setting": setting, "seed": seed, "requested": 300, "asr": after,
                      "clean_acc": 0.89}]
    row = [r for r in claims.readme_rows({"06_fidelity-amnesiac": pd.DataFrame(rows)})
           if "Amnesiac" in r[0]][0]
    # +20, +8, +5 points over the control (not +55, +45, +40 over the ASR before)
    assert "+11.0 [" in row[2] and "above its fine-tuning-only control" in row[2]
    assert row[3] == "undecided at n = 3"


def test_a_yes_no_outcome_per_seed_gets_a_wilson_interval():
    # 2 of 10 seeds switched on: the t-interval over 0s and 1s would be [0%, 50.2%];
    # Wilson's is [5.7%, 51.0%] (the textbook value for 2 of 10)
    it = pd.DataFrame({"setting": "x", "seed": range(10), "requested": 15,
                       "switched_on": [s in (5, 8) for s in range(10)]})
    row = [r for r in claims.readme_rows({"06_fidelity-it": it}) if "input-targeted" in r[0]][0]
    assert row[2] == "switches on in 2 of 10 [6%, 51%] runs"
    # a setting stored for fewer seeds says its own n
    more = pd.concat([it, pd.DataFrame({"setting": "y", "seed": [0, 1, 2], "requested": 15,
                                        "switched_on": [True, True, False]})])
    rows = [r for r in claims.readme_rows({"06_fidelity-it": more}) if "input-targeted" in r[0]]
    assert [r[2] for r in rows] == ["switches on in 2 of 10 [6%, 51%] runs",
                                    "switches on in 2 of 3 [21%, 94%] runs"]
    rate, lo, hi = proportion_interval(10, 10)
    assert rate == 1.0 and hi == pytest.approx(1.0) and round(lo, 3) == 0.722


def epochs_table(it_on: dict, bn_after: float = 0.98) -> pd.DataFrame:
    """Notebook 06's epochs section over three seeds; ``it_on[epochs]`` the seeds whose IT
    run switches on at that epoch count (at both shard counts)."""
    rows = []
    for e in (20, 100):
        for seed in range(3):
            for v, n in (("bn", 300), ("it", 15)):
                for shards in (1, 5):
                    after = (bn_after if shards == 1 else 0.3) if v == "bn" else (
                        1.0 if seed in it_on[e] else 0.0)
                    rows += [{"epochs": e, "seed": seed, "variant": v, "shards": shards,
                              "requested": 0, "asr": 0.02, "clean_acc": 0.9,
                              "mu_auroc": 0.70 + 0.01 * seed},
                             {"epochs": e, "seed": seed, "variant": v, "shards": shards,
                              "requested": n, "asr": after, "clean_acc": 0.9,
                              "mu_auroc": float("nan")}]
    return pd.DataFrame(rows)


def test_the_epochs_verdict_follows_the_per_run_counts():
    # IT switches on in 0 of 3 seeds at 20 epochs and 2 of 3 at 100: the verdict changes,
    # although the mean ASR before the requests is the same at both
    t = epochs_table({20: (), 100: (0, 1)})
    row = [r for r in claims.readme_rows({"06_fidelity-epochs": t}) if "20 or 100" in r[0]][0]
    assert "IT S=1 0 of 3 -> 2 of 3" in row[2]
    assert row[3].startswith("changes (ASR by 5% or more, AUROC by 0.02): IT switches on at "
                             "S=1 (0 of 3 -> 2 of 3 (2 on, 0 off))")
    # the same counts at both: no change shown
    same = epochs_table({20: (0, 1), 100: (0, 1)})
    row = [r for r in claims.readme_rows({"06_fidelity-epochs": same}) if "20 or 100" in r[0]][0]
    assert row[3] == "no change shown at n = 3"
    # BN's final ASR a sure but small step higher at 100 epochs (+0.6 to +0.8 points in
    # every seed) is no change; ten points higher is one
    def bn_up(step):
        t = same.copy()
        up = (t.epochs == 100) & (t.variant == "bn") & (t.shards == 5) & (t.requested > 0)
        t.loc[up, "asr"] += step + 0.001 * t.loc[up, "seed"]
        return [r for r in claims.readme_rows({"06_fidelity-epochs": t})
                if "20 or 100" in r[0]][0][3]
    assert bn_up(0.006) == "no change shown at n = 3"
    assert bn_up(0.10).endswith("BN final ASR at S=5 (+10.1 [+9.9, +10.3] points)")
    # each epoch count also gets its own headline rows, counted per run
    heads = [r for r in claims.readme_rows({"06_fidelity-epochs": t}) if "one model" in r[0]]
    it = {r[0].split(" [")[0].split("(")[-1]: r[2] for r in heads if "input-targeted" in r[0]}
    assert it == {"20 epochs)": "switches on in 0 of 3 [0%, 56%] runs",
                  "100 epochs)": "switches on in 2 of 3 [21%, 94%] runs"}
    # one epoch count alone compares nothing
    assert not [r for r in claims.readme_rows({"06_fidelity-epochs": t[t.epochs == 20]})
                if "20 or 100" in r[0]]


def test_the_bn_headline_shows_the_faint_patch_of_the_very_models_the_dormant_section_measured():
    from bdunlearn.studies import fidelity

    t = epochs_table({20: (), 100: ()}).assign(precision="bf16", device="cpu")
    dormant = t[(t.epochs == 20) & (t.variant == "bn")].drop(columns=["epochs", "mu_auroc"])
    dormant = dormant.assign(part="attack", asr_faint=0.6)
    # seed 2's dormant run was computed elsewhere: another bright-patch ASR, another model
    dormant.loc[dormant.seed == 2, "asr"] += 0.01
    joined = fidelity.with_faint(t, dormant, at=20)
    bn20 = joined[(joined.variant == "bn") & (joined.epochs == 20)]
    assert sorted(bn20[bn20.asr_faint.notna()].seed.unique()) == [0, 1]
    assert joined[(joined.variant == "it") | (joined.epochs == 100)].asr_faint.isna().all()
    assert len(joined) == len(t) and (joined.asr == t.asr).all()  # nothing else moves
    rows = {r[0]: r[2] for r in claims.readme_rows({"06_fidelity-epochs": joined})
            if "BadNets-based, one model" in r[0]}
    (at20,) = [m for k, m in rows.items() if "20 epochs" in k]
    (at100,) = [m for k, m in rows.items() if "100 epochs" in k]
    assert "faint patch 60.0% [60.0%, 60.0%] before (n=2)" in at20 and "not dormant" in at20
    assert "faint" not in at100  # not measured at 100 epochs: not claimed


def test_the_leaderboard_shows_each_tpr_beside_the_fpr_it_reached_at_either_point():
    from bdunlearn.studies import benchmark

    cols = ("auroc_random", "tpr@0.01_random", "fpr@0.01_random", "tpr@0.05_random",
            "fpr@0.05_random", "auroc_hard", "asr_after", "asr_filtered", "refused",
            "benign_refused_random", "benign_refused_hard")
    t = pd.DataFrame([{"variant": "bn", "shards": 1, "detector": "batch", "seed": s,
                       **dict.fromkeys(cols, 0.5), "fpr@0.01_random": 0.015 + s / 1000}
                      for s in range(3)])
    for fpr in (0.01, 0.05):  # the 1% point once, not twice
        board = benchmark.leaderboard(t, fpr)
        assert board.columns.is_unique and board.iloc[0]["seeds"] == 3
        assert board.iloc[0]["fpr@0.01_random"] == 0.016  # the batch test's 1% is 1.6%
    with pytest.raises(ValueError, match="fpr 0.1 is not an operating point"):
        benchmark.leaderboard(t, 0.1)


def test_the_leaderboard_on_switched_runs_keeps_them_alone_and_pairs_each_detector_with_the_best():
    from bdunlearn.studies import benchmark

    cols = ("auroc_random", "tpr@0.01_random", "fpr@0.01_random", "fpr@0.05_random",
            "auroc_hard", "asr_filtered", "refused", "benign_refused_random",
            "benign_refused_hard")
    rows = []
    for seed in range(3):  # seed 2's attack never hid (ASR 50% before): not switched on
        for det, tpr in (("batch", 0.9 + seed / 100), ("mu", 0.3 + seed / 10)):
            rows.append({"variant": "bn", "shards": 1, "detector": det, "seed": seed,
                         **dict.fromkeys(cols, 0.5), "tpr@0.05_random": tpr,
                         "asr_before": 0.5 if seed == 2 else 0.05, "asr_after": 0.95})
    t = pd.DataFrame(rows)
    every, on = benchmark.leaderboard(t), benchmark.leaderboard(t, switched=True)
    assert every.loc[("BAU BadNets", 1, "mu"), "seeds"] == 3
    assert on.loc[("BAU BadNets", 1, "mu"), "seeds"] == 2  # seeds 0 and 1 only
    # mu - batch per seed: -0.6, -0.51 (seeds 0, 1): mean -0.555 on the switched runs
    assert on.loc[("BAU BadNets", 1, "mu"), "tpr@0.05_random vs best"] == pytest.approx(-0.555)
    assert on.loc[("BAU BadNets", 1, "batch"), "best"] == "batch"
    none = t.assign(asr_before=0.5)
    assert list(benchmark.leaderboard(none, switched=True).columns) == ["runs that switched on"]
    with pytest.raises(ValueError, match="switched"):
        benchmark.leaderboard(t, switched="yes")


def test_switched_on_is_one_rule_for_floats_and_columns():
    from bdunlearn.verdicts import switched_on

    # the bounds are inclusive: 20% before and 80% after still switch on
    assert switched_on(0.2, 0.8) and not switched_on(0.21, 1.0)
    assert not switched_on(0.0, 0.79)
    before, after = pd.Series([0.0, 1.0, 0.1]), pd.Series([1.0, 1.0, 0.5])
    assert switched_on(before, after).tolist() == [True, False, False]


def test_benchmark_claims_count_seeds_and_rank_at_the_filters_operating_point():
    from bdunlearn.studies import benchmark

    def run(variant, seed, before, after, det, tpr01, tpr05, asr_f, shards=1):
        return {"variant": variant, "seed": seed, "shards": shards, "asr_before": before,
                "asr_after": after, "detector": det, "tpr@0.01_random": tpr01,
                "tpr@0.05_random": tpr05, "threshold@0.01_random": 0.9,
                "threshold@0.05_random": 0.5, "filter_threshold": 0.5, "asr_filtered": asr_f}
    rows = [run("bn", s, b, 0.95, d, t1, t5, a)
            for s, b in enumerate((0.1, 0.1, 0.5))
            for d, t1, t5, a in (("mu", 0.9, 0.3, 0.7), ("loss", 0.1, 0.8, 0.4),
                                 ("batch", 0.0, 0.8, 0.2))]
    # five shards stored for seed 0 alone: it must not narrow one model's three seeds
    rows += [run("bn", 0, 0.05, 0.5, d, 0.1, t5, 0.3, shards=5)
             for d, t5 in (("mu", 0.2), ("sms", 0.6))]
    t = pd.DataFrame(rows)
    fam = claims.get("benchmark_switch_on")
    assert fam.independent  # each number says its own seed count
    m = fam.measure(t)["by_shards"]
    # the mean ASR before (23.3%) breaks the rule, but two of three runs switched on
    assert (m[1]["switched"]["bn"], m[1]["seeds"]["bn"]) == (2, 3)
    assert (m[5]["switched"]["bn"], m[5]["seeds"]["bn"]) == (0, 1)
    text = fam.describe(fam.measure(t))
    assert "S=1: bn 23.3% -> 95.0% (on in 2 of 3 seeds)" in text
    assert "S=5: bn 5.0% -> 50.0% (on in 0 of 1 seed)" in text
    best = claims.get("benchmark_best_detector")
    m = best.measure(t)  # ranked at 5% (the filters' threshold), not at 1% where mu leads
    one = m["by_shards"][1]
    assert (one["best"]["bn"], one["tied"]["bn"], m["fpr"]) == ("batch", ["loss"], 0.05)
    assert (one["seeds"]["bn"], m["by_shards"][5]["best"]["bn"]) == (3, "sms")
    assert "tied with loss" in best.describe(m) and "S=5: bn: sms (TPR 60.0%" in best.describe(m)
    # where the table stores them, the winner says what it costs
    cost = t.assign(**{"fpr@0.05_random": 0.06, "benign_refused_hard": 300,
                       "benign_requests": 300})
    assert "bn: batch (TPR 80.0%, FPR reached 6.0%, refuses 300 of 300 hard benign " \
        "requests, final ASR behind it 20.0%, 3 seeds" in best.describe(best.measure(cost))
    assert benchmark.operating_point(t.assign(filter_threshold=0.9)) == "0.01"
    with pytest.raises(ValueError, match="no stored operating point"):
        benchmark.operating_point(t.assign(filter_threshold=0.7))


def test_each_study_holds_its_notebooks_claims_and_all_are_gathered_by_name():
    from bdunlearn import studies

    held = []
    for stem in studies.STEMS:
        mod = studies.study(stem)
        for claim in (*getattr(mod, "HEADLINE", ()), *mod.CLAIMS):
            assert claim.notebook == stem, f"{claim.name} is held by {stem}'s study"
            assert claims.get(claim.name) is claim
            held.append(claim.name)
    assert sorted(held) == sorted(claims.CLAIMS)  # every claim once, none outside a study


def test_only_smoke_is_narrowed_and_only_to_what_keep_accepts():
    from bdunlearn.studies import at_smoke
    smoke, default = config.resolve("smoke"), config.resolve("default")
    assert at_smoke(default, iter([3, 1, 2]), lambda v: v == 1) == (3, 1, 2)
    assert at_smoke(None, [3, 1, 2], lambda v: False) == (3, 1, 2)
    assert at_smoke(smoke, iter([3, 1, 2]), lambda v: v != 1) == (3, 2)  # order kept


def test_smoke_runs_fewer_knob_settings_and_keeps_each_amnesiac_control():
    from bdunlearn.studies import fidelity
    smoke, default = config.resolve("smoke"), config.resolve("default")
    for table, full in ((fidelity.BAERASER, fidelity.BAERASER_GRID),
                        (fidelity.AMNESIAC, fidelity.AMNESIAC_GRID)):
        assert fidelity.grid(table, default) == full
        cut = fidelity.grid(table, smoke)
        assert cut.items() < full.items()
        ran = {r["setting"] for r in fidelity.runs(smoke) if r.table == table}
        assert ran == set(cut)
    assert "paper" in fidelity.grid(fidelity.BAERASER, smoke)
    amnesiac = fidelity.grid(fidelity.AMNESIAC, smoke)
    for knobs in amnesiac.values():  # every subtracting setting has its control at smoke
        assert {"finetune_epochs": knobs["finetune_epochs"], "scale": 0.0} in [
            *amnesiac.values(), {"finetune_epochs": 0.0, "scale": 0.0}]


def _budget_rows(on: dict) -> pd.DataFrame:
    """Budget runs: for each candidate, the seeds of BUDGET_SEEDS it switched on in."""
    from bdunlearn.studies import benchmark
    return pd.DataFrame([{"variant": name, "seed": s, "attack_version": 1,
                          "asr_before": 0.05, "asr_after": 0.95 if s in seeds else 0.30}
                         for name, seeds in on.items() for s in benchmark.BUDGET_SEEDS])


def test_a_budget_is_chosen_by_its_switch_on_count_on_seeds_no_benchmark_run_uses():
    from bdunlearn.attacks import title
    from bdunlearn.studies import benchmark
    s0, s1, s2 = benchmark.BUDGET_SEEDS
    assert not set(benchmark.BUDGET_SEEDS) & set(config.resolve("default").seeds)
    # it: copies_x8 on in 3 seeds beats copies_x4's 2; lc: a tie goes to the paper's
    # setting; noise: its best candidate switches on in 1 of 3 seeds, not most: none valid
    rows = _budget_rows({"it": {s0}, "it@copies_x4": {s0, s1}, "it@copies_x8": {s0, s1, s2},
                         "lc": {s0, s1}, "lc@camouflage_x2": {s1, s2}, "lc@camouflage_x3": set(),
                         "noise": set(), "noise@camouflage_x2": set(),
                         "noise@camouflage_x4": {s2}})
    assert benchmark.budget_choice(rows) == {"it": "it@copies_x8", "lc": "lc", "noise": None}
    assert benchmark.chosen_budgets(rows) == {"it": "it@copies_x8", "lc": "lc"}
    # a candidate short of one selection seed leaves its family undecided
    short = rows[~((rows.variant == "it@copies_x4") & (rows.seed == s2))]
    assert benchmark.chosen_budgets(short) == {"lc": "lc"}
    view = benchmark.budget_view(rows)
    assert view.loc[title("it@copies_x8"), "switched on"].startswith("3 of 3 [")
    assert view.loc[title("it@copies_x8"), "chosen"] == "yes"
    assert view.loc[title("it@copies_x4"), "chosen"] == ""
    assert view.loc[title("noise@camouflage_x4"), "chosen"] == "none valid"


def test_budget_runs_and_chosen_budgets_join_the_benchmark(monkeypatch):
    from bdunlearn.attacks import budgets
    from bdunlearn.studies import benchmark
    default, smoke = config.resolve("default"), config.resolve("smoke")
    runs = [r for r in benchmark.runs(default) if r.table == benchmark.BUDGETS]
    assert {r["variant"] for r in runs} == {
        n for v in ("it", "lc", "noise", "blend") for n in budgets(v)}
    assert {r.seed for r in runs} == set(benchmark.BUDGET_SEEDS)
    assert [(r["variant"], r.seed) for r in benchmark.runs(smoke)
            if r.table == benchmark.BUDGETS] == [("it@copies_x4", 100)]
    monkeypatch.setattr(benchmark, "CHOSEN", {})  # nothing chosen: the papers' settings only
    plain = {r["variant"] for r in benchmark.runs(default) if r.table == benchmark.TABLE}
    assert "lc@camouflage_x2" not in plain
    monkeypatch.setattr(benchmark, "CHOSEN", {"lc": "lc@camouflage_x2", "it": "it"})
    assert benchmark.families()[:4] == ("bn", "it", "lc", "lc@camouflage_x2")
    chosen = [r for r in benchmark.runs(default)
              if r.table == benchmark.TABLE and r["variant"] == "lc@camouflage_x2"]
    assert {r["shards"] for r in chosen} == {1, 5, 10} and len({r.seed for r in chosen}) == 5
    at_smoke = {r["variant"] for r in benchmark.runs(smoke) if r.table == benchmark.TABLE}
    assert "lc" in at_smoke and "lc@camouflage_x2" not in at_smoke  # built by the budgets
    # the stored rows of the budgets table are kept by their family's current version
    rows = _budget_rows({"lc": set(), "gone": set()})
    kept = benchmark.select(rows, default, benchmark.BUDGETS)
    assert set(kept.variant) == {"lc"}


def test_the_chosen_budgets_are_those_the_committed_runs_choose():
    """benchmark.CHOSEN is written by hand once the budgets section is computed: it must
    be what chosen_budgets() picks from the committed runs, and name nothing they lack."""
    from bdunlearn.studies import benchmark
    path = Path(__file__).resolve().parent.parent / "results" / f"{benchmark.BUDGETS}.csv"
    decided = benchmark.chosen_budgets(pd.read_csv(path) if path.exists() else pd.DataFrame())
    assert {v: benchmark.CHOSEN.get(v, v) for v in decided} == decided
    assert set(benchmark.CHOSEN) <= set(decided)


def test_the_switch_on_view_counts_runs_per_family_and_shard_count():
    from bdunlearn.studies import benchmark
    rows = pd.DataFrame([{"variant": "bn", "seed": s, "shards": k, "detector": d,
                          "asr_before": 0.05, "asr_after": 0.9 if (k == 1 or s == 0) else 0.4,
                          "clean_acc_before": 0.9, "clean_acc_after": 0.9}
                         for s in range(3) for k in (1, 5) for d in ("mu", "batch")])
    view = benchmark.switch_on(rows)  # one count per run, not per detector's row
    assert view["switched on"].tolist() == ["3 of 3 [44%, 100%]", "1 of 3 [6%, 79%]"]
