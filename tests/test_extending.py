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
