"""The runner (selection, parameter checks, output folders, publishing only finished
notebooks, the paper profile on a tiny override) and the README table built from results."""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bdunlearn import config, data, layout, reproduce, studies, summary

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))


def test_only_selects_by_number_or_stem_and_refuses_unknown(tmp_path):
    for stem in ("01_attack", "02_unlearning_trajectory", "04_detection"):
        (tmp_path / f"{stem}.ipynb").write_text("{}")
    pick = lambda only: [p.stem for p in reproduce.notebooks(tmp_path, only)]  # noqa: E731
    assert pick(None) == ["01_attack", "02_unlearning_trajectory", "04_detection"]
    assert pick(["04"]) == ["04_detection"]
    assert pick(["01_attack", "02"]) == ["01_attack", "02_unlearning_trajectory"]
    with pytest.raises(SystemExit, match="matches no notebook"):
        pick(["99"])
    # whole numbers or stems, never a prefix; a repeat is the same notebook
    assert pick(["01", "01"]) == pick(["1"]) == pick(["01_attack", "1"]) == ["01_attack"]
    for prefix in ("0", "01_att", "_attack", "001x"):
        with pytest.raises(SystemExit, match=f"--only '{prefix}' matches no notebook"):
            pick([prefix])


def test_timings_merge_newer_rows_win(tmp_path):
    path = tmp_path / "timings.csv"
    row = lambda nb, s: {"notebook": nb, "profile": "smoke", "seconds": s,  # noqa: E731
                         "date": "2026-11-23", "machine": "m"}
    reproduce._record(path, [row("02_b", 5.0), row("01_a", 3.0)])
    reproduce._record(path, [row("02_b", 7.0)])
    t = pd.read_csv(path)
    assert t.notebook.tolist() == ["01_a", "02_b"] and t.seconds.tolist() == [3.0, 7.0]


def test_the_estimate_reads_this_machines_last_runs_and_reads_as_time(tmp_path):
    row = lambda nb, s, w, day, machine="m", precision="bf16": {  # noqa: E731
        "notebook": nb, "dataset": "fmnist", "seconds": s, "planned_sample_epochs": w,
        "precision": precision, "date": f"2026-12-0{day}", "machine": machine}
    pd.DataFrame([row("06_fidelity", 100, 1000, 1), row("06_fidelity", 100, 4000, 2),
                  row("07_request_detection", 50, 0, 3),  # trained nothing: no pace
                  row("01_attack", 10, 500, 3, machine="another"),
                  row("01_attack", 10, 700, 3, precision="stored")]).to_csv(
        tmp_path / "timings.csv", index=False)
    (tmp_path / "old.csv").write_text("notebook,seconds\n01_attack,3\n")  # an older table
    rates = reproduce.timing_rates("m", [tmp_path / "timings.csv", tmp_path / "old.csv"])
    assert rates == {("fmnist", "06_fidelity", "bf16"): 40.0,
                     ("fmnist", "01_attack", "stored"): 70.0}
    assert [reproduce.duration(s) for s in (40, 600, 3 * 3600 + 1200, 50 * 3600)] == [
        "40 s", "10 min", "3 h 20 min", "2 days 2 h"]


def test_summary_table_reads_the_csvs(tmp_path):
    pd.DataFrame({"variant": ["bn", "bn"], "requested": [0, 600], "clean_acc": [0.85, 0.84],
                  "asr": [0.05, 0.93], "baseline_acc": [0.85, 0.85]}).to_csv(
        tmp_path / "01_attack.csv", index=False)
    pd.DataFrame({"variant": ["bn"] * 3, "detector": ["mu"] * 3, "shards": [1, 5, 10],
                  "auroc": [0.69, 0.52, 0.49]}).to_csv(tmp_path / "04_detection.csv",
                                                       index=False)
    text = summary.table(tmp_path)
    assert "switches on in 1 of 1 [21%, 100%] runs; ASR 5.0% before, 93.0% after" in text
    assert "| agrees (n = 1) |" in text
    assert "AUROC at S=1: 0.690; S=10 minus S=1: -0.200" in text
    assert summary.table(tmp_path / "missing").startswith("_No results yet")
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{summary.START}\nold\n{summary.END}\nb\n")
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text("<!-- results:start -->\nold\n<!-- results:end -->\n")
    summary.update_readme(readme, tmp_path)
    assert "old" not in readme.read_text() and "93.0%" in readme.read_text()
    assert "93.0%" in page.read_text()  # the docs pages' blocks too


def test_benchmark_leaderboard_is_generated_from_the_csv(tmp_path):
    rows = [{"variant": v, "seed": seed, "shards": 1, "detector": d,
             "auroc_random": 0.9 if d == "batch" else 0.6, "tpr@0.01_random": 0.5,
             "tpr@0.05_random": 0.8, "fpr@0.01_random": 0.012, "fpr@0.05_random": 0.048,
             "auroc_hard": 0.4, "asr_after": 0.95,
             "asr_filtered": 0.1 + 0.01 * seed, "benign_refused_random": 15,
             "benign_refused_hard": 40, "benign_requests": 300,
             "threshold@0.01_random": 0.9, "threshold@0.05_random": 0.5,
             "filter_threshold": 0.5, "precision": "bf16", "device": "cpu"}
            for v in ("bn", "lc") for seed in (0, 1, 2) for d in ("mu", "batch")]
    readme = tmp_path / "README.md"
    readme.write_text(f"{summary.START}\n{summary.END}\nx\n{summary.BENCH_START}\nold\n"
                      f"{summary.BENCH_END}\n")
    assert summary.benchmark_table(tmp_path).startswith("_No stored runs yet")
    pd.DataFrame(rows).to_csv(tmp_path / "07_request_detection.csv", index=False)
    summary.update_readme(readme, tmp_path)
    text = readme.read_text()
    assert "old" not in text and "Computed in bf16, cpu:" in text
    # the filters' operating point, each TPR beside the FPR its threshold reached
    assert "| TPR at 1% FPR (reached) | TPR at 5% FPR (reached) |" in text
    line = next(r for r in text.splitlines()
                if r.startswith("| label-consistent") and "batch" in r)
    assert "| 0.90 [0.90, 0.90] |" in line and "95% [95%, 95%] / 11% [9%, 13%]" in line
    assert "| 50% [50%, 50%] (1.2%) | 80% [80%, 80%] (4.8%) |" in line
    assert "15.0, 40.0 of 300 | 3 |" in line


def test_the_budget_selection_table_is_generated_from_the_csv(tmp_path):
    from bdunlearn.studies import benchmark

    page = tmp_path / "page.md"
    page.write_text("<!-- budgets:start -->\nold\n<!-- budgets:end -->\n")
    assert summary.budgets_table(tmp_path).startswith("_No budget run stored yet")
    s0, s1, s2 = benchmark.BUDGET_SEEDS
    on = {"it": {s0}, "it@copies_x4": {s0, s1}, "it@copies_x8": {s0, s1, s2}}
    rows = [{"variant": v, "seed": s, "attack_version": 1, "asr_before": 0.0,
             "asr_after": 1.0 if s in seeds else 0.0, "precision": "bf16", "device": "cpu",
             "processor": "Some CPU (AVX2)", "date": "2026-12-08"}
            for v, seeds in on.items() for s in benchmark.BUDGET_SEEDS]
    pd.DataFrame(rows).to_csv(tmp_path / f"{benchmark.BUDGETS}.csv", index=False)
    summary.update(page, tmp_path)
    text = page.read_text()
    assert "old" not in text
    assert "Computed in bf16, cpu on Some CPU (AVX2), 2026-12-08 to 2026-12-08:" in text
    line = next(r for r in text.splitlines() if r.startswith("| BAU input-targeted, copies_x8"))
    assert "| 3 of 3 [" in line and line.endswith("| 100.0% | yes |")
    line = next(r for r in text.splitlines() if r.startswith("| BAU input-targeted |"))
    assert "| 1 of 3 [" in line and line.endswith("| 33.3% |  |")


def test_every_results_table_puts_its_contract_first_and_its_provenance_last(tmp_path):
    from bdunlearn.store import PROVENANCE

    for stem in studies.STEMS:
        mod = studies.study(stem)
        contract = list(getattr(mod, "COLUMNS", []))
        cfg = studies.config(stem, "smoke", results_dir=str(tmp_path / stem),
                             figures_dir=str(tmp_path / "f"), store_dir=str(tmp_path / "s"))
        shuffled = [*PROVENANCE[::-1], "extra", *contract[::-1]]
        path = studies.Notebook(stem, cfg).save(pd.DataFrame([range(len(shuffled))],
                                                             columns=shuffled))
        header = list(pd.read_csv(path).columns)
        assert header == [*contract, "extra", *PROVENANCE], stem
    # the committed tables keep it too (the README and docs name these columns)
    for csv in sorted((reproduce.ROOT / "results").glob("0*.csv")):
        header = list(pd.read_csv(csv, nrows=0).columns)
        stem = next(s for s in studies.STEMS if csv.stem.startswith(s[:2]))
        contract = list(getattr(studies.study(stem), "COLUMNS", []))
        if csv.stem == stem:
            assert header[:len(contract)] == contract, csv.name
        assert header[-len(PROVENANCE):] == list(PROVENANCE), csv.name
    spec = {"01_attack": ["dataset", "variant", "seed", "shards", "slices", "requested",
                          "clean_acc", "asr", "retrain_seconds"],
            "04_detection": ["dataset", "variant", "seed", "shards", "detector", "auroc"],
            "03_defense_overhead": ["dataset", "variant", "seed", "shards", "requested",
                                    "defense", "seconds", "flagged", "asr_after",
                                    "clean_acc_after"],
            "05_backdoor_erasure": ["dataset", "attack", "defense", "seed", "defender_samples",
                                    "asr_before", "asr_after", "clean_acc_before",
                                    "clean_acc_after", "seconds"]}
    spec["02_unlearning_trajectory"] = spec["01_attack"]
    for stem, columns in spec.items():  # the results contract, in its order
        assert studies.study(stem).COLUMNS[:len(columns)] == columns, stem


def test_crosscheck_is_aggregated_once_for_the_notebook_and_the_tool(tmp_path):
    csv = tmp_path / "crosscheck.csv"
    pd.DataFrame({"source": ["authors", "authors", "package", "authors"],
                  "seed": [0, 1, 0, 0], "shards": [1, 1, 1, 5],
                  "asr_before": [0.02, 0.06, 0.01, 0.03], "asr_after": [0.9, 1.0, 0.95, 0.4],
                  "clean_acc_before": [0.9, 0.9, 0.9, 0.88],
                  "mu_auroc": [0.7, 0.8, 0.65, 0.6],
                  "sms_auroc": [None, None, None, 0.72]}).to_csv(csv, index=False)
    agg = summary.crosscheck(path=csv)
    assert agg.loc[("authors", 1), ("mu_auroc", "mean")] == 0.75
    assert agg.loc[("authors", 1), ("asr_before", "min")] == 0.02
    assert agg.loc[("authors", 1), "seeds"].item() == 2
    assert summary.crosscheck(path=tmp_path / "missing.csv") is None
    tool = importlib.import_module("authors_crosscheck")
    rows = tool.markdown(csv).splitlines()[2:]
    assert rows[0] == ("| the authors' code | 1 | 0, 1 | 4.0% (2.0%-6.0%) | 95.0% (90.0%-100.0%)"
                       " | 90.0% | 0.750 (0.700-0.800) | n/a |")
    assert rows[1].startswith("| bdunlearn") and rows[2].endswith("| 0.600 | 0.720 |")


NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
FMNIST = (data.DEBIAN_ROOT / "fashion-mnist").is_dir()


def test_parameters_are_checked_before_any_notebook_runs():
    one = reproduce.notebooks(NOTEBOOKS, ["01"])
    every = reproduce.notebooks(NOTEBOOKS)
    with pytest.raises(SystemExit, match="-p epoch: unknown parameter for 01_attack; "
                                         "choose from .*epochs"):
        reproduce.check_parameters("smoke", {"epoch": 1}, one, ["fmnist"])
    with pytest.raises(SystemExit, match="-p amnesiac: unknown parameter for 01_attack"):
        reproduce.check_parameters("smoke", {"amnesiac": False}, one, ["fmnist"])
    with pytest.raises(SystemExit, match=r"shards \[0\] must hold integers >= 1"):
        reproduce.check_parameters("smoke", {"shards": [0]}, every, ["fmnist"])
    with pytest.raises(SystemExit, match=r"seeds \[\] is empty"):
        reproduce.check_parameters("smoke", {"seeds": []}, one, ["fmnist"])
    with pytest.raises(SystemExit, match="epochs 2.5 must be an integer"):
        reproduce.check_parameters("smoke", {"epochs": 2.5}, one, ["fmnist"])
    reproduce.check_parameters("paper", {"shards": 5, "seeds": 3}, every,
                               ["fmnist", "cifar10"])


def test_every_notebook_parameter_is_a_run_config_field():
    for nb in reproduce.notebooks(NOTEBOOKS):
        names = reproduce.notebook_parameters(nb)
        assert {"profile", "dataset", "seeds", "device", "data_root", "results_dir",
                "figures_dir", "store_dir"} <= names, nb.stem
        assert names <= set(config.FIELDS) | {"profile"}, nb.stem


@pytest.mark.parametrize("nb", reproduce.notebooks(NOTEBOOKS), ids=lambda p: p.stem)
def test_the_parameters_cell_is_the_studys_list(nb):
    import ast
    import json

    cells = json.loads(nb.read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    names = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]
    assert tuple(names) == studies.study(nb.stem).PARAMETERS


def test_override_runs_get_their_own_folder(monkeypatch):
    monkeypatch.delenv("BDUNLEARN_RESULTS", raising=False)
    monkeypatch.chdir(reproduce.ROOT)
    assert reproduce.run_name("default", {}) == "default"
    name = reproduce.run_name("default", {"epochs": 12, "mitigation_num": 300})
    assert re.fullmatch(r"default-[0-9a-f]{8}", name)
    assert name == reproduce.run_name("default", {"mitigation_num": 300, "epochs": 12})
    assert name != reproduce.run_name("default", {"epochs": 11, "mitigation_num": 300})
    # more seeds are more of the same runs: they keep the profile's folder and store
    assert reproduce.run_name("default", {"seeds": "0-9"}) == "default"
    # another precision or device is its own group in the same tables, not another run
    assert reproduce.run_name("default", {"precision": "bf16", "device": "cpu"}) == "default"
    res, _, store = reproduce.folders("default", {"seeds": [5]}, "fmnist")
    assert (res, store) == (reproduce.ROOT / "results", reproduce.ROOT / "results" / "runs")
    res, _, store = reproduce.folders("default", {"epochs": 100}, "fmnist")
    assert res.name.startswith("default-") and store == reproduce.ROOT / "results" / "runs"


def test_relative_env_paths_resolve_against_the_callers_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("BDUNLEARN_CACHE", "cache/here")
    monkeypatch.setenv("BDUNLEARN_DATA", "/abs/data")
    reproduce.absolute_env_paths(tmp_path)
    assert os.environ["BDUNLEARN_CACHE"] == str(tmp_path / "cache" / "here")
    assert os.environ["BDUNLEARN_DATA"] == "/abs/data"


def _tiny_notebook(folder: Path, stem: str = "01_tiny", fail_flag: Path | None = None) -> None:
    """A notebook that writes ``<stem>.csv`` and fails its "claim" when ``epochs`` is 99 or
    ``fail_flag`` exists."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("profile = None\ndataset = None\nresults_dir = None\n"
                                       "figures_dir = None\nepochs = None")
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import pathlib\nout = pathlib.Path(results_dir)\nout.mkdir(parents=True)\n"
        f"(out / '{stem}.csv').write_text(f'epochs\\n{{epochs}}\\n')\n"
        "assert epochs != 99"
        + (f" and not pathlib.Path({str(fail_flag)!r}).exists()" if fail_flag else "")
        + ", 'the claim fails'")
    nb.cells = [params, body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, str(folder / f"{stem}.ipynb"))


def test_runner_publishes_a_notebook_only_when_it_passed(tmp_path, capfd):
    _tiny_notebook(tmp_path)
    res, fig = tmp_path / "res", tmp_path / "fig"
    t = reproduce.run("smoke", params={"epochs": 2}, results=res, figures=fig,
                      folder=tmp_path)
    assert t.notebook.tolist() == ["01_tiny"]
    assert (res / "01_tiny.csv").read_text() == "epochs\n2\n"
    assert (res / "01_tiny.ipynb").is_file() and (res / "timings.csv").is_file()
    good = (res / "01_tiny.ipynb").read_bytes()
    with pytest.raises(SystemExit, match="failed in cell .*the claim fails"):
        reproduce.run("smoke", params={"epochs": 99}, results=res, figures=fig,
                      folder=tmp_path)
    assert (res / "01_tiny.csv").read_text() == "epochs\n2\n"
    assert (res / "01_tiny.ipynb").read_bytes() == good
    assert (res / "01_tiny.failed.ipynb").is_file()
    assert sorted(p.name for p in res.iterdir()) == [
        "01_tiny.csv", "01_tiny.failed.ipynb", "01_tiny.ipynb", "timings.csv"]
    out, err = capfd.readouterr()
    assert "[1/1] 01_tiny (smoke, fmnist, " in out and ") done in" in out
    assert "without encryption" not in out + err
    # a later good run replaces the failed copy too
    reproduce.run("smoke", params={"epochs": 3}, results=res, figures=fig, folder=tmp_path)
    assert (res / "01_tiny.csv").read_text() == "epochs\n3\n"
    assert not (res / "01_tiny.failed.ipynb").exists()


def test_the_slices_count_names_the_other_writers_of_the_cache(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("BDUNLEARN_CACHE", str(tmp_path / "cache"))
    _tiny_notebook(tmp_path)
    go = lambda: reproduce.run("smoke", params={"epochs": 2}, results=tmp_path / "res",  # noqa: E731
                               figures=tmp_path / "fig", folder=tmp_path)
    go()
    out = capfd.readouterr().out
    assert "0 model slices trained by this run," in out
    marks = tmp_path / "cache" / ".writers"
    assert not list(marks.iterdir())  # this runner's own mark went with it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    host = reproduce.socket.gethostname()
    (marks / f"{host}-{dead}").write_text("runner gone")
    (marks / f"{host}-{os.getppid()}").write_text("sweep python -m bdunlearn.sweep")
    go()
    out = capfd.readouterr().out
    assert (f"0 model slices new in the cache, trained by this run or by the sweep pid "
            f"{os.getppid()} writing the same cache") in out
    assert sorted(p.name for p in marks.iterdir()) == [f"{host}-{os.getppid()}"]  # dead: gone


@pytest.mark.slow  # runs notebook 01 (at a tiny size) through papermill
@pytest.mark.skipif(not FMNIST, reason="dataset-fashion-mnist is not installed")
def test_the_plan_says_what_a_run_then_computes(tmp_path, monkeypatch, capfd):
    # One cheap notebook at smoke, into an empty store and an empty cache: the plan-only
    # option prints the runs and an estimate, then the run computes and trains exactly that.
    monkeypatch.setenv("BDUNLEARN_CACHE", str(tmp_path / "cache"))
    store, res = tmp_path / "store", tmp_path / "res"
    params = {"train_subset": 1000, "epochs": 1, "store_dir": str(store)}
    argv = ["--profile", "smoke", "--only", "01", "--results", str(res), "--figures",
            str(tmp_path / "fig")] + [a for k, v in params.items() for a in ("-p", k, str(v))]
    reproduce.main([*argv, "--plan"])
    out = capfd.readouterr().out
    (step,) = reproduce.survey("smoke", params, ["01_attack"], ["fmnist"], res)
    assert step.stored == 0 and len(step.missing) == step.runs >= 1 and step.slices
    assert re.search(rf"01_attack +0 of {step.runs} +{step.runs} +{len(step.slices)} +0 +\S",
                     out), out
    assert (f"total: {step.runs} run{'s' * (step.runs > 1)} to compute, "
            f"{len(step.slices)} model slices to train") in out
    assert "samples/s, measured here now" in out
    assert not store.exists() and not res.exists()  # the plan computed nothing
    t = reproduce.run("smoke", only=["01"], params=params, results=res,
                      figures=tmp_path / "fig")
    out = capfd.readouterr().out
    assert t.slices_trained.tolist() == [len(step.slices)]
    assert f"{len(step.slices)} model slices trained by this run of {len(step.slices)} planned" \
        in out
    stored = reproduce.RunStore(store)
    assert all(stored.has(*key) for key in step.missing)
    assert len(list(store.glob("*/*/*.csv"))) == len(step.missing)
    assert f"01_attack: {step.runs} of {step.runs} runs stored, done" in out  # the progress
    (again,) = reproduce.survey("smoke", params, ["01_attack"], ["fmnist"], res)
    assert (again.stored, again.missing, again.slices) == (step.runs, [], [])


@pytest.mark.skipif(not FMNIST, reason="dataset-fashion-mnist is not installed")
def test_only_a_complete_default_run_replaces_the_committed_results(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    monkeypatch.setattr(layout, "ROOT", tmp_path)  # where the runner's folders are
    flag = tmp_path / "fail"
    _tiny_notebook(tmp_path, "01_tiny")
    _tiny_notebook(tmp_path, "02_tiny", fail_flag=flag)
    flag.touch()
    with pytest.raises(SystemExit, match="02_tiny .* failed"):
        reproduce.run("default", folder=tmp_path)
    assert not list((tmp_path / "results").glob("*.csv"))  # 01 passed, but the run did not
    reproduce.run("default", only=["01"], folder=tmp_path)  # a partial run: its own folder
    assert (tmp_path / "results" / "default" / "01_tiny.csv").is_file()
    assert not list((tmp_path / "results").glob("*.csv"))
    flag.unlink()
    reproduce.run("default", folder=tmp_path)
    assert sorted(p.name for p in (tmp_path / "results").glob("*.csv")) == [
        "01_tiny.csv", "02_tiny.csv", "timings.csv"]
    assert sorted(p.name for p in (tmp_path / "docs" / "notebooks").iterdir()) == [
        "01_tiny.ipynb", "02_tiny.ipynb"]  # the readable executed copies, under the root


@pytest.mark.skipif(not FMNIST, reason="dataset-fashion-mnist is not installed")
def test_paper_profile_starts_on_a_tiny_override(tmp_path, monkeypatch):
    monkeypatch.setenv("BDUNLEARN_CACHE", str(tmp_path / "cache"))
    res = tmp_path / "res"
    reproduce.run("paper", only=["01"], results=res, figures=tmp_path / "fig",
                  params={"train_subset": 2000, "epochs": 1, "seeds": 0, "dataset": "fmnist"})
    table = pd.read_csv(res / "fmnist" / "01_attack.csv")  # one folder per paper dataset
    assert set(table.variant) == {"bn", "it"} and set(table.seed) == {0}
    assert table[table.variant == "bn"].requested.max() == 300  # the paper's count
    assert (tmp_path / "fig" / "fmnist" / "01_attack-before-after.png").is_file()


@pytest.mark.skipif(not FMNIST, reason="dataset-fashion-mnist is not installed")
def test_a_notebook_run_outside_the_runner_leaves_committed_results_alone(
        tmp_path, monkeypatch):
    import shutil

    import papermill as pm

    for name in ("BDUNLEARN_RESULTS", "BDUNLEARN_FIGURES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BDUNLEARN_CACHE", str(tmp_path / "cache"))
    # A notebook finds its repository from its working directory (config.repository_root):
    # a copy of the checkout's layout in tmp_path, with committed tables of its own, so the
    # run writes nothing into the checkout.
    root = tmp_path / "checkout"
    (root / "bdunlearn").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    (root / "notebooks").mkdir()
    shutil.copy(NOTEBOOKS / "01_attack.ipynb", root / "notebooks")
    (root / "results").mkdir()
    committed = root / "results" / "01_attack.csv"
    committed.write_text("committed\n")
    before = subprocess.run(["git", "status", "--porcelain", "--ignored", "results", "figures"],
                            cwd=NOTEBOOKS.parent, capture_output=True, text=True,
                            check=True).stdout
    pm.execute_notebook(str(root / "notebooks" / "01_attack.ipynb"), str(tmp_path / "out.ipynb"),
                        cwd=str(root / "notebooks"), kernel_name="python3", progress_bar=False,
                        parameters={"profile": "smoke", "train_subset": 2000, "epochs": 1})
    assert (root / "results" / "smoke" / "01_attack.csv").is_file()
    assert (root / "results" / "smoke" / "runs").is_dir()  # its run store too
    assert committed.read_text() == "committed\n"
    assert not list((root / "figures").glob("*.png"))  # figures/smoke/ only
    assert sorted(p.name for p in (root / "results").iterdir()) == ["01_attack.csv", "smoke"]
    after = subprocess.run(["git", "status", "--porcelain", "--ignored", "results", "figures"],
                           cwd=NOTEBOOKS.parent, capture_output=True, text=True,
                           check=True).stdout
    assert after == before  # nothing written into the checkout


def test_readable_copy_keeps_figures_and_drops_progress_bars_and_widget_state(tmp_path):
    import nbformat

    from bdunlearn.reproduce import WIDGET, readable_copy

    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"state": {"x": 1}}
    cell = nbformat.v4.new_code_cell("run()")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="100%|####| 3/3\n"),
        nbformat.v4.new_output("display_data", data={WIDGET: {"model_id": "a"},
                                                     "text/plain": "  0%|  | 0/3"}),
        nbformat.v4.new_output("display_data", data={WIDGET: {"model_id": "b"},
                                                     "image/png": "iVBOR", "text/plain": "fig"}),
        nbformat.v4.new_output("stream", name="stdout", text="ASR 93%\n"),
    ]
    injected = nbformat.v4.new_code_cell("results_dir = '/tmp/.01_attack-123-xyz/results'")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.metadata["papermill"] = {"input_path": "/tmp/x", "parameters": {"results_dir": "/tmp"}}
    cell.metadata["papermill"] = {"duration": 1.0}
    nb.cells += [injected, cell]
    src = tmp_path / "run.ipynb"
    nbformat.write(nb, src)
    out = nbformat.read(readable_copy(src, tmp_path / "docs" / "run.ipynb"), as_version=4)
    assert "widgets" not in out.metadata and "papermill" not in out.metadata
    assert len(out.cells) == 1 and "papermill" not in out.cells[0].metadata
    assert "/tmp" not in (tmp_path / "docs" / "run.ipynb").read_text()
    kept = out.cells[0].outputs
    assert [o.output_type for o in kept] == ["display_data", "stream"]
    assert kept[0].data == {"image/png": "iVBOR", "text/plain": "fig"}
    assert kept[1].text == "ASR 93%\n"


@pytest.mark.skipif(not FMNIST, reason="dataset-fashion-mnist is not installed")
def test_the_defense_cost_claim_holds_at_smoke_in_fp32(tmp_path):
    # The claim counts work (runs and optimiser steps), so it holds whatever the processor
    # and precision; make test runs the notebooks in the processor's own precision (bf16
    # where native), this runs notebook 03 in fp32, as an AVX2-only CPU would. It trains
    # into make test's own checkpoint cache: where fp32 is the processor's precision, the
    # nbval run of notebook 03 after it finds its models and defense results there.
    res = tmp_path / "res"
    t = reproduce.run("smoke", only=["03"], params={"precision": "fp32"}, results=res,
                      figures=tmp_path / "fig")
    assert t.precision.tolist() == ["fp32"]
    table = pd.read_csv(res / "03_defense_overhead.csv")
    runs = table[table.defense != "screen_mu"]
    assert set(table.precision) == {"fp32"} and (runs.steps > 0).all()
    # re-rendered with nothing computed, on any processor: the claim is checked on the
    # stored fp32 runs, not on this processor's own (empty where it is bf16)
    t = reproduce.run("smoke", only=["03"], params={"compute": False}, results=res,
                      figures=tmp_path / "fig")
    assert t.precision.tolist() == ["stored"] and t.slices_trained.tolist() == [0]
    shown = (res / "03_defense_overhead.ipynb").read_text()
    assert "cpu in fp32;" in shown and "no rows to measure" not in shown


def test_make_lab_allows_root_only_for_root():
    out = subprocess.run(["make", "-n", "lab"], cwd=reproduce.ROOT, capture_output=True,
                         text=True).stdout
    lab = next(line for line in out.splitlines() if "jupyter lab" in line)
    assert ("--allow-root" in lab) == (os.geteuid() == 0)


def test_staging_folders_of_killed_runners_go_at_the_next_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / f".01_attack-{dead}-abcd"
    running = tmp_path / f".02_unlearning_trajectory-{os.getpid()}-efgh"
    for folder in (orphan, running):
        (folder / "results").mkdir(parents=True)
    assert reproduce.remove_orphans(tmp_path) == 1
    assert not orphan.exists() and running.exists()  # a live runner's folder stays


@pytest.mark.skipif(not FMNIST, reason="dataset-fashion-mnist is not installed")
def test_the_device_kit_runs_on_the_cpu_and_its_runs_merge_in(tmp_path):
    # The kit's mechanics (its job, the packed files, the merge) on notebook 01 at a tiny
    # size: the kit trains into its own scratch cache, so the smoke size would train
    # notebook 01's models once more for nothing the test checks.
    out, store = tmp_path / "out", tmp_path / "merged"
    env = {**os.environ, "BDUNLEARN_CACHE": str(tmp_path / "cache"), "PYTHON": sys.executable,
           "DEADLINE": "600"}
    env.pop("BDUNLEARN_RESULTS", None)
    env.pop("BDUNLEARN_FIGURES", None)
    run = subprocess.run(["bash", str(reproduce.ROOT / "tools" / "device" / "run.sh"), str(out),
                          "--profile", "smoke", "--only", "01", "-p", "device", "cpu",
                          "-p", "train_subset", "1000", "-p", "epochs", "1"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert {"runs.tar.gz", "notebooks.tar.gz", "timings.csv", "env.txt", "log.txt"} <= set(files)
    assert len(files) <= 8 and "job 1 runner: ok" in (out / "log.txt").read_text()
    merged = subprocess.run([sys.executable, "-m", "bdunlearn.store", "merge",
                             str(out / "runs.tar.gz"), str(store)], capture_output=True,
                            text=True, cwd=reproduce.ROOT)
    assert "merge: 1 runs copied" in merged.stdout, merged.stdout + merged.stderr
    (row_file,) = store.glob("01_attack/*/*.csv")
    rows = pd.read_csv(row_file)
    assert set(rows.device) == {"cpu"} and rows.processor.notna().all()
