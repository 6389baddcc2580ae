"""What enters the cache and the run store is checked: the cache key's edge cases, entries
that carry no valid tag for the key, and run files that do not match their key."""

import errno
import os
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from bdunlearn import cache
from bdunlearn import store as store_module
from bdunlearn.store import RunStore, merge, read_run


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("BDUNLEARN_CACHE_KEY", raising=False)
    monkeypatch.delenv("BDUNLEARN_CACHE_KEY_FILE", raising=False)
    monkeypatch.setattr(cache, "_untagged", set())
    return monkeypatch


def entry(folder, name="e.pt"):
    cache.save(folder / name, {"w": torch.arange(4.0)}, {"key": name})
    return folder / name


# ------------------------------------------------------------------ the cache key

@pytest.mark.parametrize("where", ["cache folder", "a sub-folder", "a link in the cache"])
def test_a_key_file_inside_the_cache_folder_is_refused(no_key, tmp_path, where):
    folder = tmp_path / "cache"
    folder.mkdir()
    outside = tmp_path / "key"
    outside.write_text("secret")
    key = {"cache folder": folder / "key", "a sub-folder": folder / "defenses" / "k",
           "a link in the cache": folder / "link"}[where]
    key.parent.mkdir(exist_ok=True)
    if where == "a link in the cache":
        key.symlink_to(outside)
    else:
        key.write_text("secret")
    no_key.setenv("BDUNLEARN_CACHE_KEY_FILE", str(key))
    for path in (folder / "e.pt", folder / "defenses" / "e.pt", folder / "amnesiac" / "e.pt"):
        with pytest.raises(cache.CacheKeyError, match="lies inside the cache folder") as err:
            cache.save(path, {"w": torch.zeros(1)}, {})
        assert str(folder) in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(cache.CacheKeyError, match="keep the key file outside the cache"):
            cache.load(path)
    assert not list(folder.rglob("*.pt"))
    no_key.setenv("BDUNLEARN_CACHE_KEY_FILE", str(outside))  # outside: accepted
    entry(folder)
    assert cache.load(folder / "e.pt") is not None


@pytest.mark.parametrize("variable, value, fragment", [
    ("BDUNLEARN_CACHE_KEY", "", "BDUNLEARN_CACHE_KEY is set but empty"),
    ("BDUNLEARN_CACHE_KEY", "  ", "BDUNLEARN_CACHE_KEY is set but empty"),
    ("BDUNLEARN_CACHE_KEY_FILE", "", "BDUNLEARN_CACHE_KEY_FILE is set but empty"),
    ("BDUNLEARN_CACHE_KEY_FILE", "{tmp}/missing", r"cannot be read \(No such file"),
    ("BDUNLEARN_CACHE_KEY_FILE", "{tmp}", r"cannot be read \(Is a directory"),
    ("BDUNLEARN_CACHE_KEY_FILE", "{tmp}/empty", "is empty; put the secret in it"),
])
def test_an_empty_or_unreadable_key_is_refused(no_key, tmp_path, variable, value, fragment):
    (tmp_path / "empty").write_text("\n")
    no_key.setenv(variable, value.format(tmp=tmp_path))
    folder = tmp_path / "cache"
    for call in (lambda: cache.save(folder / "e.pt", {"w": torch.zeros(1)}, {}),
                 lambda: cache.load(folder / "e.pt")):
        with pytest.raises(cache.CacheKeyError, match=fragment) as err:
            call()
        assert "\n" not in str(err.value)
    assert not folder.exists()


def test_entries_without_a_valid_tag_are_counted_once_per_process(no_key, tmp_path):
    for i in range(3):
        entry(tmp_path, f"{i}.pt")  # no key: untagged
    no_key.setenv("BDUNLEARN_CACHE_KEY", "node B's key")
    entry(tmp_path, "3.pt")  # tagged for this key
    with pytest.warns(RuntimeWarning, match="^3 entries in the cache folder .* carry no "
                      "valid tag for this key: recomputed"):
        assert cache.load(tmp_path / "0.pt") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second untagged entry: no second report
        assert cache.load(tmp_path / "1.pt") is None
        assert cache.load(tmp_path / "3.pt") is not None
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["2.pt", "3.pt"]


# ------------------------------------------------------------------ the run store

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "results" / "runs"
PROV = {"precision": "fp32", "device": "cpu", "processor": "AMD EPYC (AVX2)",
        "torch": "2.5", "date": "2026-12-01", "commit": "abc1234"}
SKEY = RunStore.settings_key("01_attack", 1, {"epochs": 1})


def rkey(seed, precision="fp32", device="cpu"):
    return RunStore.run_key(SKEY, {"seed": seed}, precision, device)


def rows(seed, asr=0.5):
    return pd.DataFrame({"seed": [seed, seed], "requested": [0, 300], "asr": [0.05, asr]})


def good_store(folder, seeds=(0, 1)):
    store = RunStore(folder)
    for seed in seeds:
        store.put("01_attack", SKEY, rkey(seed), 1, rows(seed), PROV,
                  {"scores": pd.DataFrame({"score": [0.1, 0.2]})})
    return store


def bad_runs(store):
    """Damaged run files planted in ``store`` by name: what each one is."""
    folder = store.folder / "01_attack" / SKEY
    seed1 = folder / f"{rkey(1)}.csv"
    planted = {}
    # seed 2's file holding seed 1's rows (ASR 0.99), copied with their run key
    planted["another run's rows"] = folder / f"{rkey(2)}.csv"
    pd.read_csv(seed1).assign(asr=0.99).to_csv(planted["another run's rows"], index=False)
    # seed 3's file with seed 1's rows and a forged run_key column
    planted["forged run key"] = folder / f"{rkey(3)}.csv"
    pd.read_csv(seed1).assign(run_key=rkey(3), asr=0.99).to_csv(planted["forged run key"],
                                                                 index=False)
    planted["wrong columns"] = folder / f"{rkey(4)}.csv"
    pd.DataFrame({"seed": [4], "asr": [0.99]}).to_csv(planted["wrong columns"], index=False)
    planted["NaNs"] = folder / f"{rkey(5)}.csv"
    rows(5).assign(requested=float("nan"), asr=float("nan"), **PROV, study_version=1,
                   run_key=rkey(5)).to_csv(planted["NaNs"], index=False)
    planted["binary"] = folder / f"{rkey(6)}.csv"
    planted["binary"].write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff" * 20)
    planted["mixed precision"] = folder / f"{rkey(7)}.csv"
    pd.concat([rows(7).assign(**PROV, study_version=1, run_key=rkey(7)),
               rows(7).assign(**{**PROV, "precision": "bf16"}, study_version=1,
                              run_key=rkey(7))]).to_csv(planted["mixed precision"],
                                                        index=False)
    for path in planted.values():  # a side table beside each: published only with its run
        path.with_name(f"{path.stem}.scores.csv").write_text("score\n0.9\n")
    return planted


REASONS = {"another run's rows": "not of run", "forged run key": "where its key says seed 3",
           "wrong columns": "lacks the columns precision", "NaNs": "no finite measured number",
           "binary": "is not text", "mixed precision": "mixes the precision values"}


def test_every_committed_run_passes_the_checks(no_key):
    files = sorted(COMMITTED.glob("*/*/*.csv"))
    assert len(files) >= 286
    store = RunStore(COMMITTED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not one refused
        for path in files:
            read_run(path, side=path.name.count(".") != 1)
        read = sum(len(store.table(t.name, s.name)) for t in COMMITTED.iterdir()
                   for s in t.iterdir())
    assert read == sum(len(pd.read_csv(p)) for p in files if p.name.count(".") == 1)
    no_key.setenv("BDUNLEARN_CACHE_KEY", "a key set after they were committed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unsigned committed runs are read, counted, not refused
        assert len(store.table("01_attack", next((COMMITTED / "01_attack").iterdir()).name))


def test_a_run_that_does_not_match_its_key_is_refused_at_merge(no_key, tmp_path, capsys):
    source = good_store(tmp_path / "gpu")
    planted = bad_runs(source)
    refused = []
    # the forged run key passes what a file alone tells (its rows are seed 1's under seed
    # 3's name and run key): the reader who knows the run refuses it (below)
    assert merge(source.folder, tmp_path / "main", refused) == (3, 0)
    assert len(refused) == 5
    for what, path in planted.items():
        if what == "forged run key":
            continue
        (reason,) = [r for r in refused if str(path) in r]
        assert REASONS[what] in reason and "\n" not in reason, (what, reason)
        assert not list((tmp_path / "main").rglob(f"{path.stem}*")), what  # nothing of it
    target = RunStore(tmp_path / "main")
    with pytest.warns(RuntimeWarning, match="holds rows of seed 1 where its key says seed 3"):
        assert not target.has("01_attack", SKEY, rkey(3), run={"seed": 3})


def test_merged_runs_keep_their_provenance(no_key, tmp_path):
    source = good_store(tmp_path / "gpu")
    merge(source.folder, tmp_path / "main")
    for path in source.folder.rglob("*.csv"):
        assert (tmp_path / "main" / path.relative_to(source.folder)).read_bytes() == \
            path.read_bytes()


def test_a_run_that_fails_the_checks_is_skipped_when_read(no_key, tmp_path):
    store = good_store(tmp_path)
    planted = bad_runs(store)
    with pytest.warns(RuntimeWarning) as caught:
        table = store.table("01_attack", SKEY, runs={rkey(s): {"seed": s} for s in range(8)})
        scores = store.table("01_attack", SKEY, "scores",
                             runs={rkey(s): {"seed": s} for s in range(8)})
    assert sorted(table.seed) == [0, 0, 1, 1] and (table.asr < 0.99).all()
    assert table.precision.notna().all() and len(scores) == 4  # none of theirs either
    messages = [str(w.message) for w in caught]
    for what, path in planted.items():
        assert any(str(path) in m and REASONS[what] in m for m in messages), (what, messages)
    assert all("\n" not in m for m in messages)
    # a run that fails is not stored: the notebook computes it again and replaces it
    assert not store.has("01_attack", SKEY, rkey(3), run={"seed": 3})
    assert store.get("01_attack", SKEY, rkey(6)) is None
    store.put("01_attack", SKEY, rkey(3), 1, rows(3), PROV)
    assert store.has("01_attack", SKEY, rkey(3), run={"seed": 3}, precision="fp32",
                     device="cpu", version=1)


def test_the_caller_recomputes_the_key_of_the_run_it_expects(no_key, tmp_path):
    store = good_store(tmp_path)
    assert store.has("01_attack", SKEY, rkey(0), run={"seed": 0})
    with pytest.warns(RuntimeWarning, match="is not named by the key of its run"):
        assert not store.has("01_attack", SKEY, rkey(0), run={"seed": 0, "shards": 5})
    with pytest.warns(RuntimeWarning, match="stored with precision fp32, not bf16"):
        assert not store.has("01_attack", SKEY, rkey(1), precision="bf16")
    with pytest.warns(RuntimeWarning, match="lacks the column dataset"):
        assert store.table("01_attack", SKEY, required=("asr", "dataset")).empty
    store.put("01_attack", SKEY, rkey(2), 1, rows(2).assign(asr=[0.1, float("nan")]), PROV)
    with pytest.warns(RuntimeWarning, match="has a missing or non-finite asr, which the"):
        assert sorted(store.table("01_attack", SKEY, finite=("asr",)).seed) == [0, 0, 1, 1]


@pytest.mark.parametrize("what", ["truncated", "target is a file", "read-only target",
                                  "one folder too deep", "no run at all", "bad run"])
def test_merge_errors_are_one_sentence_and_exit_non_zero(no_key, tmp_path, monkeypatch,
                                                          capsys, what):
    source = good_store(tmp_path / "gpu")
    archive, target = tmp_path / "runs.tar.gz", tmp_path / "main"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source.folder, arcname="runs" if what == "one folder too deep" else ".")
    if what == "truncated":
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    elif what == "target is a file":
        target.write_text("not a store")
    elif what == "read-only target":
        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(store_module.tempfile, "mkstemp", denied)
    elif what == "no run at all":
        with tarfile.open(archive, "w:gz") as tar:  # a settings folder alone: too shallow
            tar.add(tmp_path / "gpu" / "01_attack" / SKEY, arcname=SKEY)
    elif what == "bad run":
        bad_runs(source)
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(source.folder, arcname=".")
    with pytest.raises(SystemExit) as exit_:
        store_module.main(["merge", str(archive), str(target)])
    out = capsys.readouterr()
    message = str(exit_.value.code) if exit_.value.code != 1 else out.err.strip()
    expected = {"truncated": "is not a readable .tar.gz (truncated or damaged",
                "target is a file": f"the target {target} is a file, not a store folder",
                "read-only target": f"cannot write the merge target {target} (Permission",
                "one folder too deep": "one folder deeper, under runs; merge that folder",
                "no run at all": "holds no run at <table>/<settings key>/<run key>.csv",
                "bad run": f"{archive}:/01_attack/{SKEY}/{rkey(6)}.csv is not text"}[what]
    assert exit_.value.code not in (0, None)
    assert expected in message, message
    if what != "bad run":
        assert "\n" not in message and message.startswith("merge: ")
        assert not (target.is_dir() and list(target.rglob("*.csv")))
    else:  # one line per refused run, the good ones copied, and a non-zero exit
        assert len(out.err.strip().splitlines()) == 5
        assert "3 runs copied" in out.out and "5 refused" in out.out


def test_runs_are_signed_under_the_cache_key(no_key, tmp_path, capsys):
    unsigned = good_store(tmp_path / "unsigned", seeds=(5,))
    assert not list(unsigned.folder.rglob("*.sig"))  # no key: as before, nothing signed
    no_key.setenv("BDUNLEARN_CACHE_KEY", "the cluster's key")
    signed = good_store(tmp_path / "signed")
    assert len(list(signed.folder.rglob("*.sig"))) == 2
    assert merge(signed.folder, tmp_path / "main") == (2, 0)
    refused = []
    assert merge(unsigned.folder, tmp_path / "main", refused) == (0, 0)
    assert "carries no valid signature for BDUNLEARN_CACHE_KEY" in refused[0]
    main = RunStore(tmp_path / "main")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sorted(main.table("01_attack", SKEY).seed) == [0, 0, 1, 1]
    # a signed run altered afterwards (ASR 0.99, every column right) is skipped when read
    path = main.folder / "01_attack" / SKEY / f"{rkey(1)}.csv"
    path.write_text(path.read_text().replace("0.5,", "0.99,"))
    with pytest.warns(RuntimeWarning, match="signature that does not verify"):
        assert sorted(main.table("01_attack", SKEY).seed) == [0, 0]
    # a run stored before the key was set is read, and counted apart in one line
    no_key.delenv("BDUNLEARN_CACHE_KEY")
    assert merge(unsigned.folder, tmp_path / "main") == (1, 0)
    no_key.setenv("BDUNLEARN_CACHE_KEY", "the cluster's key")
    capsys.readouterr()
    assert sorted(main.table("01_attack", SKEY).seed) == [0, 0, 5, 5]  # warned once above
    assert "1 of 2 stored runs carry no signature for BDUNLEARN_CACHE_KEY" in (
        capsys.readouterr().out)
    # another key: its signatures do not verify
    no_key.setenv("BDUNLEARN_CACHE_KEY", "another node's key")
    refused = []
    assert merge(signed.folder, tmp_path / "other", refused) == (0, 0) and len(refused) == 2


def test_killed_store_writes_are_cleaned_at_the_next_start(no_key, tmp_path):
    store = good_store(tmp_path)
    folder = store.folder / "01_attack" / SKEY
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    here = cache._tmp_prefix()
    killed = folder / f"{here.rsplit('-', 2)[0]}-{dead}-abc.csv"
    old = folder / ".tmp-r0.csv"  # the earlier name, of no process: gone after an hour
    alive = folder / f"{here}def.csv"  # a write under way in this process
    for path in (killed, old, alive):
        path.write_text("half a ru")
    os.utime(old, (time.time() - 7200,) * 2)
    store_module._swept.clear()
    assert len(RunStore(tmp_path).table("01_attack", SKEY)) == 4
    assert not killed.exists() and not old.exists() and alive.exists()


def test_put_refuses_what_is_not_a_run(no_key, tmp_path):
    store = RunStore(tmp_path)
    for bad, fragment in (([1, 2], "must be a pandas DataFrame, not list"),
                          (rows(0).assign(asr=float("nan"), requested=float("nan")),
                           "holds no finite measured number"),
                          (rows(0).iloc[:0], "holds no rows")):
        with pytest.raises(ValueError, match=fragment) as err:
            store.put("01_attack", SKEY, rkey(0), 1, bad, PROV)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="provenance of run .* must be a dict, not list"):
        store.put("01_attack", SKEY, rkey(0), 1, rows(0), [])
    with pytest.raises(ValueError, match=r"map plain names to pandas DataFrames, not 'x' \(list"):
        store.put("01_attack", SKEY, rkey(0), 1, rows(0), PROV, {"x": [1]})
    assert not list(tmp_path.rglob("*.csv"))


def test_a_notebook_recomputes_a_stored_file_that_holds_another_runs_rows(no_key, tmp_path):
    from bdunlearn import studies

    folders = dict(results_dir=str(tmp_path / "r"), figures_dir=str(tmp_path / "f"),
                   store_dir=str(tmp_path / "s"))
    nb = studies.Notebook("01_attack", studies.config("01_attack", "smoke", seeds=[0, 1],
                                                      **folders))
    computed = []

    def compute(run, ctx):
        computed.append(run.seed)
        return rows(run.seed, 0.5)

    nb.study.compute, real = compute, nb.study.compute
    try:
        nb.collect(progress=False)
        skey, key0 = studies.stored_key(nb.study, nb.runs()[0], nb.cfg)
        folder = tmp_path / "s" / "01_attack" / skey
        key1 = studies.stored_key(nb.study, nb.runs()[1], nb.cfg)[1]
        # seed 0's file now holds seed 1's rows with ASR 0.99, its run_key column forged
        pd.read_csv(folder / f"{key1}.csv").assign(asr=0.99, run_key=key0).to_csv(
            folder / f"{key0}.csv", index=False)
        one = studies.Notebook("01_attack", studies.config("01_attack", "smoke", seeds=[0],
                                                           **folders))
        with pytest.warns(RuntimeWarning, match="holds rows of seed 1 where its key says "
                          "seed 0"):  # once: by the planner's look, then not again
            assert studies.missing("01_attack", one.cfg) == one.runs()  # not "1 of 1 stored"
            table = one.collect(progress=False)
    finally:
        nb.study.compute = real
    assert computed == [0, 1, 0]  # seed 0 computed again and its file replaced
    assert sorted(table.seed) == [0, 0, 1, 1] and (table.asr < 0.99).all()


def test_every_committed_run_matches_the_run_its_notebook_expects(no_key):
    from bdunlearn import studies

    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for stem in studies.STEMS:
            for precision in ("bf16", "fp32"):
                cfg = studies.config(stem, "default", precision=precision, seeds="0-4",
                                     store_dir=str(COMMITTED))
                mod, store = studies.study(stem), RunStore(COMMITTED)
                for run in mod.runs(cfg):
                    skey, key = studies.stored_key(mod, run, cfg)
                    if store._path(run.table, skey, key).is_file():
                        assert store.has(run.table, skey, key, run=run.key(),
                                         version=mod.VERSION), (stem, run)
                        checked += 1
    assert checked >= 269  # every committed run, some of them reached by two notebooks
