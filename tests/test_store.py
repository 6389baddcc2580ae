"""The run store: content keys, provenance, side tables, merging, groups kept apart."""

import subprocess
import sys
import tarfile

import pandas as pd
import pytest

from bdunlearn import config, studies
from bdunlearn.store import RunStore, StoreError, cpu_name, merge, provenance, provenance_groups
from bdunlearn.tables import over_seeds

CUDA = {"precision": "bf16", "device": "cuda", "processor": "NVIDIA H100", "torch": "2.5",
        "date": "2026-12-01", "commit": "abc1234"}  # a GPU machine's provenance


def rows(seed: int, asr: float) -> pd.DataFrame:
    return pd.DataFrame({"seed": [seed, seed], "requested": [0, 300], "asr": [0.05, asr]})


def test_runs_are_stored_under_their_key_with_provenance(tmp_path):
    store = RunStore(tmp_path)
    skey = RunStore.settings_key("01_attack", 1, {"epochs": 20})
    assert skey == RunStore.settings_key("01_attack", 1, {"epochs": 20})
    assert skey != RunStore.settings_key("01_attack", 2, {"epochs": 20})  # code version
    assert skey != RunStore.settings_key("01_attack", 1, {"epochs": 100})
    keys = {RunStore.run_key(skey, {"seed": s}, p, d)
            for s in (0, 1) for p in ("bf16", "fp32") for d in ("cpu", "cuda")}
    assert len(keys) == 8  # seed, precision and device each make another run
    rkey = RunStore.run_key(skey, {"seed": 0}, "bf16", "cpu")
    assert not store.has("01_attack", skey, rkey) and store.get("01_attack", skey, rkey) is None
    stored = store.put("01_attack", skey, rkey, 1, rows(0, 0.9), provenance("bf16", "cpu"),
                       {"scores": pd.DataFrame({"score": [0.1, 0.2]})})
    assert store.has("01_attack", skey, rkey)
    back = store.get("01_attack", skey, rkey)
    assert back.asr.tolist() == [0.05, 0.9] and (back.run_key == rkey).all()
    for column in ("precision", "device", "processor", "torch", "date", "commit",
                   "study_version"):
        assert back[column].notna().all(), column
    assert (stored.precision == "bf16").all() and (stored.device == "cpu").all()
    assert store.table("01_attack", skey, "scores").score.tolist() == [0.1, 0.2]
    assert len(store.table("01_attack", skey)) == 2  # side tables stay out of the rows
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.parametrize("flags, kernels, label", [
    ("fpu sse2 avx2 fma avx512f avx512_bf16", "AVX512", "AMD EPYC (AVX512-BF16)"),
    ("fpu sse2 avx2 fma avx512f", "AVX512", "AMD EPYC (AVX-512)"),
    ("fpu sse2 avx2 fma", "AVX2", "AMD EPYC (AVX2)"),
    ("fpu sse2", "DEFAULT", "AMD EPYC"),
    # ATEN_CPU_CAPABILITY limits the kernels below the CPU's widest unit: the label says so
    ("fpu sse2 avx2 fma avx512f avx512_bf16", "AVX2", "AMD EPYC (AVX512-BF16, ATen kernels AVX2)"),
    ("fpu sse2 avx2 fma", "DEFAULT", "AMD EPYC (AVX2, ATen kernels DEFAULT)"),
])
def test_the_processor_label_tells_bf16_machines_from_avx2_ones(flags, kernels, label):
    # The same model name covers both; the label must say which one computed a stored row.
    two_cores = f"model name\t: AMD EPYC\nflags\t\t: {flags}\n\n" * 2
    assert cpu_name(two_cores, kernels) == label


def test_a_side_table_without_its_run_does_not_count(tmp_path):
    store = RunStore(tmp_path)
    folder = tmp_path / "04_detection" / "s"
    folder.mkdir(parents=True)
    pd.DataFrame({"score": [1.0]}).to_csv(folder / "r.scores.csv", index=False)  # a cut write
    assert store.table("04_detection", "s", "scores").empty


def test_an_unwritable_store_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="give a writable store_dir"):
        RunStore(blocker / "store").put("t", "s", "r", 1, rows(0, 0.9), CUDA)
    with pytest.raises(ValueError, match="store folder 5 must be a non-empty path"):
        RunStore(5)


def test_merge_copies_new_runs_and_keeps_existing_ones(tmp_path):
    a, b = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    a.put("t", "s", "r0", 1, rows(0, 0.9), CUDA,
          {"scores": pd.DataFrame({"score": [0.5]})})
    a.put("t", "s", "r1", 1, rows(1, 0.8), CUDA)
    b.put("t", "s", "r1", 1, rows(1, 0.7), CUDA)
    assert merge(a.folder, b.folder) == (1, 1)
    assert sorted(b.table("t", "s").asr.tolist()) == [0.05, 0.05, 0.7, 0.9]  # r1 kept as is
    assert b.table("t", "s", "scores").score.tolist() == [0.5]
    with tarfile.open(tmp_path / "runs.tar.gz", "w:gz") as tar:
        tar.add(a.folder, arcname=".")
    out = subprocess.run([sys.executable, "-m", "bdunlearn.store", "merge",
                          str(tmp_path / "runs.tar.gz"), str(tmp_path / "c")],
                         capture_output=True, text=True)
    assert "merge: 2 runs copied" in out.stdout, out.stderr
    bad = subprocess.run([sys.executable, "-m", "bdunlearn.store", "merge",
                          str(tmp_path / "nope.tar.gz"), str(tmp_path / "c")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "does not exist" in bad.stderr


def test_groups_of_precision_and_device_are_told_apart():
    t = pd.concat([rows(0, 0.9).assign(precision="bf16", device="cpu"),
                   rows(1, 0.9).assign(precision="bf16", device="cpu"),
                   rows(0, 0.5).assign(precision="bf16", device="cuda")])
    labels = [label for label, _ in provenance_groups(t)]
    assert labels == ["bf16, cpu", "bf16, cuda"]  # the group with more seeds first
    assert provenance_groups(rows(0, 0.9))[0][0] == ""
    # a notebook's display never averages them: each group is its own row
    shown = over_seeds(t, ["requested"], ["asr"])
    assert list(shown.index.names) == ["precision", "device", "requested"]
    assert shown.loc[("bf16", "cpu", 300), ["asr", "seeds"]].tolist() == [0.9, 2]
    assert shown.loc[("bf16", "cuda", 300), ["asr", "seeds"]].tolist() == [0.5, 1]
    assert list(over_seeds(t[t.device == "cpu"], ["requested"], ["asr"]).index.names) == [
        "requested"]


def test_every_study_keys_its_runs_by_what_they_measure():
    cfg = studies.config("04_detection", "default")
    mod = studies.study("04_detection")
    run = mod.runs(cfg)[0]
    key = studies.stored_key(mod, run, cfg)
    # where and how it computes, and more seeds, do not move a run
    for other in (dict(seeds="0-9"), dict(results_dir="/x"), dict(store_dir="/y"),
                  dict(compute=False)):
        assert studies.stored_key(mod, run, studies.config("04_detection", "default",
                                                           **other)) == key, other
    # what it measures does, and so does the dataset
    for other in (dict(target_fpr=0.01), dict(epochs=100), dict(dataset="mnist")):
        assert studies.stored_key(mod, run, config.resolve("default", **other)) != key, other


def test_a_notebook_draws_only_what_is_stored(tmp_path, capsys):
    cfg = studies.config("01_attack", "smoke", results_dir=str(tmp_path / "r"),
                         figures_dir=str(tmp_path / "f"), store_dir=str(tmp_path / "s"),
                         compute=False)
    nb = studies.Notebook("01_attack", cfg)
    assert nb.collect(progress=False).empty  # nothing stored, nothing computed
    out = capsys.readouterr().out
    assert f"1 of 1 runs not stored in {cfg.precision} on cpu; compute is False" in out
    assert nb.draw("before-after", lambda t: 1 / 0, pd.DataFrame()) is None
    assert "no stored run to draw yet" in capsys.readouterr().out
    assert not list((tmp_path / "f").glob("*.png"))


def test_a_table_no_claim_reads_shows_every_group_without_a_claims_line(tmp_path, capsys,
                                                                        monkeypatch):
    from bdunlearn.studies import benchmark

    folders = dict(results_dir=str(tmp_path / "r"), figures_dir=str(tmp_path / "f"),
                   store_dir=str(tmp_path / "s"))
    bf16 = studies.Notebook("07_request_detection", studies.config(
        "07_request_detection", "smoke", precision="bf16", **folders))
    monkeypatch.setattr(bf16.study, "compute", lambda run, ctx: pd.DataFrame([{
        "dataset": "fmnist", "variant": run["variant"], "seed": run.seed,
        "attack_version": run["attack_version"], "asr_before": 0.0, "clean_acc_before": 0.9,
        "asr_after": 1.0, "clean_acc_after": 0.9}]))
    bf16.collect(benchmark.BUDGETS, progress=False)
    capsys.readouterr()
    fp32 = studies.Notebook("07_request_detection", studies.config(
        "07_request_detection", "smoke", precision="fp32", compute=False, **folders))
    assert fp32.collect(benchmark.BUDGETS, progress=False).precision.tolist() == ["bf16"]
    assert "the claims check" not in capsys.readouterr().out  # no claim reads the budgets


def test_a_render_names_the_group_that_holds_most_stored_runs(tmp_path, capsys, monkeypatch):
    # Rendering committed bf16 runs on a CPU whose own precision is fp32 checks the claims
    # on the (empty) fp32 group; the render must say which group holds the runs.
    folders = dict(results_dir=str(tmp_path / "r"), figures_dir=str(tmp_path / "f"),
                   store_dir=str(tmp_path / "s"))
    bf16 = studies.Notebook("01_attack", studies.config("01_attack", "smoke", precision="bf16",
                                                        **folders))
    monkeypatch.setattr(bf16.study, "compute", lambda run, ctx: rows(run.seed, 0.9))
    bf16.collect(progress=False)
    capsys.readouterr()
    fp32 = studies.Notebook("01_attack", studies.config("01_attack", "smoke", precision="fp32",
                                                        compute=False, **folders))
    assert len(fp32.collect(progress=False)) == 2 and fp32.own(fp32.collect()).empty
    assert ("the claims check the group computed in fp32 on cpu (0 stored runs); bf16 on "
            "cpu holds 1: render with -p precision bf16 -p device cpu") in (
        capsys.readouterr().out)
    bf16_render = studies.Notebook("01_attack", studies.config(
        "01_attack", "smoke", precision="bf16", compute=False, **folders))
    bf16_render.collect(progress=False)
    assert "render with" not in capsys.readouterr().out  # its own group holds the most


def test_a_render_with_precision_auto_checks_the_largest_stored_group(tmp_path, monkeypatch,
                                                                      capsys):
    folders = dict(results_dir=str(tmp_path / "r"), figures_dir=str(tmp_path / "f"),
                   store_dir=str(tmp_path / "s"))
    params = {"profile": "smoke", **folders}

    def store(precision, seeds):
        nb = studies.Notebook("01_attack", studies.config(
            "01_attack", "smoke", precision=precision, seeds=seeds, **folders))
        monkeypatch.setattr(nb.study, "compute", lambda run, ctx: rows(run.seed, 0.9))
        nb.collect(progress=False)

    def render(**more):
        return studies.setup("01_attack", {**params, "compute": False, **more}).cfg.precision

    assert render() == studies.config("01_attack", "smoke").precision  # nothing stored
    store("bf16", [0])
    assert render() == "bf16" and render(precision="auto") == "bf16"
    store("fp32", [0, 1])
    assert render() == "fp32"
    assert render(precision="bf16") == "bf16"  # asked for: kept
    nb = studies.setup("01_attack", {**params, "compute": False})
    assert set(nb.own(nb.collect(progress=False)).seed) == {0, 1}
    assert "render with" not in capsys.readouterr().out
    # a notebook of several tables (06: one per section) counts the runs of all of them
    fidelity = studies.Notebook("06_fidelity", studies.config(
        "06_fidelity", "smoke", precision="bf16", **folders))
    monkeypatch.setattr(fidelity.study, "compute", lambda run, ctx: rows(run.seed, 0.9))
    fidelity.collect(fidelity.study.IT, progress=False)
    assert studies.setup("06_fidelity", {**params, "compute": False}).cfg.precision == "bf16"
    # computing, "auto" stays this machine's precision
    assert studies.setup("01_attack", params).cfg.precision == studies.config(
        "01_attack", "smoke").precision


def test_provenance_marks_only_uncommitted_code_as_dirty(tmp_path):
    from bdunlearn.store import commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "bdunlearn").mkdir()
    (tmp_path / "results").mkdir()
    code, result = tmp_path / "bdunlearn" / "x.py", tmp_path / "results" / "t.csv"
    code.write_text("a = 1\n")
    result.write_text("asr\n0.5\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    head = commit(tmp_path)
    assert len(head) >= 7 and not head.endswith("-dirty")
    result.write_text("asr\n0.9\n")  # a re-rendered result is not a change of the code
    commit.cache_clear()
    assert commit(tmp_path) == head
    code.write_text("a = 2\n")
    commit.cache_clear()
    assert commit(tmp_path) == head + "-dirty"
    commit.cache_clear()
    assert commit(tmp_path / "nowhere") == "unknown"


def test_computing_on_uncommitted_code_says_so(tmp_path, capsys, monkeypatch):
    from bdunlearn import store

    cfg = studies.config("01_attack", "smoke", results_dir=str(tmp_path / "r"),
                         figures_dir=str(tmp_path / "f"), store_dir=str(tmp_path / "s"))
    nb = studies.Notebook("01_attack", cfg)
    monkeypatch.setattr(store, "commit", lambda: "abc1234-dirty")
    monkeypatch.setattr(nb.study, "compute", lambda run, ctx: rows(run.seed, 0.9))
    table = nb.collect(progress=False)
    assert (table.commit == "abc1234-dirty").all() and len(table) == 2
    assert "uncommitted changes, so the runs stored now record commit abc1234-dirty" in (
        capsys.readouterr().out)
