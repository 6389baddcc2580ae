"""The verdict rules: counts per run with Wilson intervals, intervals over seeds, paired
differences from a control, settings chosen on other seeds."""

import pandas as pd
import pytest

from bdunlearn import verdicts as vd


def test_a_yes_no_outcome_is_k_of_n_and_decided_only_when_its_interval_is():
    assert str(vd.count([True] * 5)) == "5 of 5 [57%, 100%]"
    assert vd.happens(vd.count([True] * 5)) == "agrees"  # Wilson's lower end 56.6% > 50%
    assert vd.happens(vd.count([True] * 3)) == "undecided at n = 3"  # [43.9%, 100%]
    assert vd.happens(vd.count([False] * 5)) == "differs"
    assert vd.happens(vd.count([True, False, True, True])) == "undecided at n = 4"
    # one run decides alone, and says so
    assert vd.happens(vd.count([False])) == "differs (n = 1)"


def test_a_figure_agrees_with_a_bar_only_when_its_whole_interval_does():
    above = vd.spread([0.70, 0.71, 0.72])
    assert vd.against(above, 0.65) == "agrees" and vd.against(above, 0.75) == "differs"
    # mean 0.69 above 0.65, lower end below it: the mean alone would say "agrees"
    straddles = vd.spread([0.62, 0.70, 0.75])
    assert straddles.mean > 0.65 and vd.against(straddles, 0.65) == "undecided at n = 3"
    assert vd.against(vd.spread([0.05, 0.06, 0.04]), 0.10, above=False) == "agrees"
    assert vd.against(vd.spread([0.7]), 0.65) == "agrees (n = 1)"
    with pytest.raises(ValueError, match="no values"):
        vd.spread([float("nan")])


def test_an_effect_is_the_paired_difference_from_its_own_control():
    control = {0: 0.40, 1: 0.42, 2: 0.40, 3: 0.9}
    treated = {0: 0.60, 1: 0.50, 2: 0.45}  # seed 3 has no treated run: left out
    d = vd.paired(control, treated)
    assert d.n == 3 and d.mean == pytest.approx(0.11)
    assert vd.direction(d) is None  # [-0.08, +0.30]: holds zero
    assert vd.direction(vd.paired({0: 0.1, 1: 0.2, 2: 0.3}, {0: 0.5, 1: 0.6, 2: 0.72})) == 1
    small = vd.paired({0: 0.98, 1: 0.98, 2: 0.98}, {0: 0.986, 1: 0.987, 2: 0.988})
    assert vd.direction(small) == 1 and vd.direction(small, 0.05) is None  # sure, not material
    assert vd.direction(vd.paired({0: 0.9, 1: 0.9}, {0: 0.7, 1: 0.72}), 0.05) == -1
    assert vd.paired({0: 1.0}, {1: 1.0}) is None


def test_two_settings_compare_their_counts_seed_by_seed():
    changed, text = vd.count_change({0: False, 1: False, 2: False}, {0: True, 1: True, 2: False})
    assert changed and text == "0 of 3 -> 2 of 3 (2 on, 0 off)"
    same, text = vd.count_change({0: True, 1: False, 2: True}, {0: False, 1: True, 2: True})
    assert not same and text == "2 of 3 -> 2 of 3 (1 on, 1 off)"
    # a seed stored at one setting only is left out of the pairing
    _, text = vd.count_change({0: False, 1: False, 5: True}, {0: True, 1: True})
    assert text == "0 of 2 -> 2 of 2 (2 on, 0 off)"


def test_a_best_setting_is_chosen_on_the_other_seeds():
    score = pd.DataFrame({"a": [0.9, 0.1, 0.1], "b": [0.2, 0.5, 0.6]}, index=[0, 1, 2])
    # seed 0's own best is "a", but seeds 1 and 2 (a 0.10, b 0.55) choose "b" for it; for
    # seed 1, seeds 0 and 2 average a 0.50, b 0.40: "a"
    assert vd.leave_one_out(score) == {0: "b", 1: "a", 2: "a"}
    # a setting the other seeds do not allow (a wrecked model) is never chosen
    allowed = pd.DataFrame({"a": True, "b": False}, index=[0, 1, 2])
    assert vd.leave_one_out(score, allowed) == {0: "a", 1: "a", 2: "a"}
    assert vd.leave_one_out(score.iloc[:1]) == {0: "a"}  # one seed: its own best


def test_the_switch_on_rule_is_one_rule_for_floats_and_columns():
    assert vd.switched_on(0.2, 0.8) and not vd.switched_on(0.21, 1.0)
    before, after = pd.Series([0.0, 1.0, 0.1]), pd.Series([1.0, 1.0, 0.5])
    assert vd.switched_on(before, after).tolist() == [True, False, False]
