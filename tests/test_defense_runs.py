"""What notebooks 03 and 05 run: the defense plans and the overhead table."""

import pandas as pd

from bdunlearn import config, defense_runs


def test_erasure_plan_sweeps_grad_prune_and_reverses_the_trigger_once():
    cfg = config.resolve("default")
    plan = defense_runs.erasure_plan(cfg, 3000)
    names = [(name, n, known) for name, n, known, _ in plan]
    assert names == [("neural_cleanse", 3000, False), ("baeraser", 3000, False),
                     ("grad_prune", 100, True), ("grad_prune", 500, True),
                     ("grad_prune", 1000, True), ("grad_prune", 1000, False),
                     ("finetune", 3000, False), ("fine_pruning", 3000, False)]
    knobs = dict((n, k) for n, _, known, k in plan if not known)
    assert knobs["neural_cleanse"] == {"steps": 1000, "mitigate": True}
    assert knobs["grad_prune"] == {"samples_per_class": 100, "scan_steps": 1000}


def test_overhead_defenses_follow_the_profile():
    smoke = defense_runs.overhead_defenses(config.resolve("smoke"))
    assert list(smoke) == ["neural_cleanse", "baeraser", "grad_prune"]
    assert smoke["neural_cleanse"] == {"steps": 60} and smoke["baeraser"] == {"scan_steps": 60}


def test_overhead_table_accumulates_seconds_and_steps_per_setting_and_defense():
    once = [{"setting": "badnets", "defense": "baeraser", "requested": 0, "seconds": 5.0,
             "steps": 50}]
    runs = pd.DataFrame({"setting": ["bau"] * 4, "defense": ["baeraser", "screen_mu"] * 2,
                         "requested": [0, 0, 300, 300], "seconds": [4.0, 0.1, 6.0, 0.2],
                         "steps": [40, None, 70, None]})
    table = defense_runs.overhead_table(once, runs)
    bau = table[(table.setting == "bau") & (table.defense == "baeraser")]
    assert bau.cumulative_seconds.tolist() == [4.0, 10.0]
    assert bau.cumulative_steps.tolist() == [40, 110]
    assert table[table.setting == "badnets"].cumulative_seconds.tolist() == [5.0]
    assert table[table.defense == "screen_mu"].cumulative_seconds.round(3).tolist() == [0.1, 0.3]
