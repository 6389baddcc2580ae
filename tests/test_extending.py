"""docs/extending.md's worked example as a test: a detector written in the user's own file
(outside the package), registered on import, joins notebook 07's benchmark; only its runs
are computed, the other detectors' stored rows are served, and its rows reach the
leaderboard."""

import importlib
import re
import sys
from pathlib import Path

import pytest

from bdunlearn import detect, detectors, studies
from bdunlearn.studies import benchmark

ROOT = Path(__file__).resolve().parent.parent
STEM = "07_request_detection"


def example_file() -> str:
    """The detector file of docs/extending.md (its block that starts ``# my_detectors.py``)."""
    text = (ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (code,) = [b for b in blocks if b.startswith("# my_detectors.py")]
    return code


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The example imported from a folder outside the package, unregistered afterwards."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "my_detectors.py").write_text(example_file())
    monkeypatch.syspath_prepend(str(folder))
    yield lambda: importlib.import_module("my_detectors")
    detectors.REGISTRY.pop("entropy", None)
    sys.modules.pop("my_detectors", None)


def test_the_example_is_about_twenty_lines():
    assert len(example_file().strip().splitlines()) <= 20


@pytest.mark.slow  # trains: the built-in detectors' runs, then the new one's (50 s of CPU)
def test_a_detector_from_the_users_own_module_computes_only_its_runs(
        tmp_path, monkeypatch, capsys, user_module, deadline):
    # The cheapest benchmark the study allows: smoke, one seed, one shard count, and (by
    # narrowing its family list) one family, on the small scikit-learn digits set.
    monkeypatch.setattr(benchmark, "families", lambda: ("bn",))
    params = dict(dataset="digits", seeds=[0], shards=[1], epochs=1, poison_num=40,
                  mitigation_num=60, precision="fp32",
                  device="cpu", store_dir=str(tmp_path / "store"),
                  results_dir=str(tmp_path / "results"), figures_dir=str(tmp_path / "figs"))
    cfg = studies.config(STEM, "smoke", **params)
    cache = tmp_path / "cache"
    builtin = benchmark.detectors(1)
    assert "entropy" not in builtin

    # the store already holds the built-in detectors' rows (computed once, here)
    first = studies.Notebook(STEM, cfg, cache).collect(progress=False)
    assert sorted(first.detector) == sorted(builtin)
    stored = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*.csv")}
    assert len(stored) == len(builtin)

    mod = user_module()
    assert not Path(mod.__file__).resolve().is_relative_to(ROOT / "bdunlearn")
    assert "entropy" in detect.BENCHMARK_DETECTORS and "entropy" in benchmark.detectors(1)

    # rendered from the store alone, the notebook names the detector it has no rows for
    capsys.readouterr()
    shown = studies.Notebook(STEM, studies.config(STEM, "smoke", **params, compute=False),
                             cache).collect(progress=False)
    assert "detector 'entropy' (version 1) has no stored rows" in capsys.readouterr().out
    assert "entropy" not in set(shown.detector)

    computed = []
    compute = benchmark.compute

    def spy(run, ctx):
        computed.append(run["detector"])
        return compute(run, ctx)

    monkeypatch.setattr(benchmark, "compute", spy)
    nb = studies.Notebook(STEM, cfg, cache)
    table = nb.collect(progress=False)
    assert computed == ["entropy"]  # the other detectors' runs were served, not computed
    assert {p: p.stat().st_mtime_ns for p in stored} == stored
    assert sorted(table.detector) == sorted([*builtin, "entropy"])
    assert table.set_index("detector").loc["entropy", "detector_version"] == 1

    board = benchmark.leaderboard(nb.own(table), cfg.target_fpr)
    row = board.xs("entropy", level="detector")
    assert len(row) == 1 and 0 <= row["auroc_random"].iloc[0] <= 1
    print(row[[c for c in row if "CI" not in c]].T.to_string())


def test_the_runner_imports_plugins_named_in_the_environment(tmp_path, monkeypatch):
    """``BDUNLEARN_PLUGINS`` (a .py file here) is imported before a study lists its runs,
    so a runner's notebooks and its plan see the same detectors as the caller."""
    from bdunlearn import registry

    path = tmp_path / "my_detectors.py"
    path.write_text(example_file())
    monkeypatch.setenv(registry.PLUGINS_ENV, str(path))
    try:
        studies.study("07")
        assert "entropy" in benchmark.detectors(1)
        assert registry.load_plugins() == []  # once per process
    finally:
        detectors.REGISTRY.pop("entropy", None)
        registry._LOADED.pop(str(path), None)
        sys.modules.pop("bdunlearn_plugin_my_detectors", None)
    with pytest.raises(FileNotFoundError, match="plug-in file .*nothing.py does not exist"):
        registry.load_plugins(str(tmp_path / "nothing.py"))


def test_migrate_splits_a_run_of_every_detector_into_per_detector_runs(tmp_path, capsys):
    """The runs stored before runs were per detector (one file holding every detector's
    rows) become one run per detector under the key the study now computes, with the
    rows' numbers and provenance unchanged; a second migration changes nothing."""
    import pandas as pd

    from bdunlearn.store import RunStore

    store = tmp_path / "store"
    cfg = studies.config(STEM, "smoke", dataset="digits", seeds=[0], shards=[1],
                         precision="fp32", device="cpu", store_dir=str(store))
    skey = studies.settings_key(benchmark, benchmark.TABLE, cfg)
    old = RunStore.run_key(skey, {"seed": 0, "variant": "bn", "shards": 1}, "fp32", "cpu")
    prov = {"precision": "fp32", "device": "cpu", "processor": "AMD EPYC (AVX2)",
            "torch": "2.13.0+cpu", "date": "2026-12-06", "commit": "e0f9390",
            "study_version": 2, "run_key": old}
    rows = pd.DataFrame([{"dataset": "digits", "variant": "bn", "seed": 0, "shards": 1,
                          "asr_before": 0.1, "detector": d, "auroc_random": a, **prov}
                         for d, a in (("mu", 0.7), ("knn", 0.6))])
    (store / benchmark.TABLE / skey).mkdir(parents=True)
    rows.to_csv(store / benchmark.TABLE / skey / f"{old}.csv", index=False)

    assert benchmark.migrate(store) == {"runs": 1, "written": 2, "kept": 0}
    files = sorted((store / benchmark.TABLE / skey).glob("*.csv"))
    assert len(files) == 2 and old not in {p.stem for p in files}
    for run in benchmark.runs(cfg):
        if run["variant"] == "bn" and run["detector"] in ("mu", "knn"):
            rkey = studies.stored_key(benchmark, run, cfg)[1]
            path = store / benchmark.TABLE / skey / f"{rkey}.csv"
            got = pd.read_csv(path)
            assert (got.run_key == path.stem).all() and got.detector.tolist() == [run["detector"]]
            assert got.detector_version.tolist() == [run["detector_version"]]  # knn: 2
            assert got.commit.tolist() == ["e0f9390"] and got.date.tolist() == ["2026-12-06"]
            assert got.auroc_random.tolist() == [{"mu": 0.7, "knn": 0.6}[run["detector"]]]
            assert list(got.columns[-len(prov):]) == list(prov)
    assert benchmark.migrate(store) == {"runs": 0, "written": 0, "kept": 2}
    benchmark.main(["migrate", str(store)])
    assert "0 runs split" in capsys.readouterr().out
