"""The cache under faults a shared or shipped cache meets: forged entries under a secret,
read-only folders, entries that do not load, symlinked locks, killed writes, a full disk."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bdunlearn import cache
from bdunlearn.data import load
from bdunlearn.defenses import DefenderView, run_defense
from bdunlearn.models import build_model
from bdunlearn.registry import reference_config
from bdunlearn.unlearning import SisaService

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits(digits):
    """This file's digits: a 300/60 subset of the session's (conftest.py)."""
    return digits.subset(300, 60, seed=0)


def service(ds, folder, **kw):
    return SisaService(ds.x_train, ds.y_train, arch="fmnist_cnn", num_classes=10,
                       cfg=reference_config("digits", epochs=1), device="cpu",
                       cache_dir=folder, **kw)


def weights(svc):
    return [t.clone() for t in svc.models[0].state_dict().values()]


def test_a_forged_entry_with_a_valid_checksum_is_not_served_under_a_secret(
        digits, tmp_path, monkeypatch):
    monkeypatch.setenv("BDUNLEARN_CACHE_KEY", "a secret only the service's nodes know")
    honest = service(digits, tmp_path).fit()
    (path,) = tmp_path.glob("*.pt")
    tensors, meta = cache.load(path)
    forged = {k: torch.zeros_like(v) for k, v in tensors.items()}
    monkeypatch.delenv("BDUNLEARN_CACHE_KEY")
    cache.save(path, forged, meta)  # right key, other weights, valid sha256: no secret
    assert cache.load(path) is not None  # without the secret the forgery is served...
    monkeypatch.setenv("BDUNLEARN_CACHE_KEY", "a secret only the service's nodes know")
    again = service(digits, tmp_path).fit()  # ...with it, it is not: retrained, rewritten
    assert again.fit_cost.cache_hits == 0
    assert all(torch.equal(a, b) for a, b in zip(weights(again), weights(honest)))
    assert service(digits, tmp_path).fit().fit_cost.cache_hits == 1  # the rewrite is tagged
    # a forged defense result ("label 7 flagged", no model) is not served either
    view = DefenderView(build_model("fmnist_cnn", (1, 28, 28), 10, seed=0),
                        digits.x_train[:40], digits.y_train[:40], 10, device="cpu")
    real = run_defense("finetune", view, seed=0, cache_dir=tmp_path, epochs=1)
    (entry,) = (tmp_path / "defenses").glob("*.pt")
    monkeypatch.delenv("BDUNLEARN_CACHE_KEY")
    cache.save(entry, {}, {"has_model": False, "seconds": 0.0, "steps": 0, "flagged": [7],
                           "target": 7, "info": {}})
    key_file = tmp_path.with_name(f"{tmp_path.name}.key")  # outside the cache folder
    monkeypatch.setenv("BDUNLEARN_CACHE_KEY_FILE", str(key_file))
    key_file.write_text("a secret only the service's nodes know\n")
    monkeypatch.delenv("BDUNLEARN_CACHE_KEY", raising=False)
    served = run_defense("finetune", view, seed=0, cache_dir=tmp_path, epochs=1)
    assert "from_cache" not in served.info and served.flagged is None
    assert served.steps == real.steps


def test_a_read_only_cache_is_read_and_a_missing_entry_computed_in_memory(digits):
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="bdunlearn-ro-"))  # reachable by any user
    tmp_path.chmod(0o755)
    folder = tmp_path / "shipped"
    service(digits, folder).fit()
    folder.chmod(0o555)
    script = textwrap.dedent(f"""
        import warnings
        from bdunlearn.data import load
        from bdunlearn.registry import reference_config
        from bdunlearn.unlearning import SisaService
        ds = load("digits").subset(300, 60, seed=0)
        def svc(seed):
            return SisaService(ds.x_train, ds.y_train, arch="fmnist_cnn", num_classes=10,
                               cfg=reference_config("digits", epochs=1), device="cpu",
                               cache_dir={str(folder)!r}, seed=seed)
        assert svc(0).fit().fit_cost.cache_hits == 1   # every entry there: read, not written
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            other = svc(1).fit()                         # missing: computed, kept in memory
        assert other.fit_cost.cache_hits == 0 and other.fitted
        print("WARN", [str(w.message) for w in caught])
    """)
    try:
        if os.geteuid() == 0:  # root writes through 0o555: run as an unprivileged user
            if not shutil.which("setpriv"):
                pytest.skip("running as root without setpriv to drop privileges")
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                   sys.executable, "-c", script]
        else:
            cmd = [sys.executable, "-c", script]
        env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env,
                             cwd=str(tmp_path))
        assert out.returncode == 0, out.stderr[-2000:]
        assert "read-only" in out.stdout or "Permission denied" in out.stdout, out.stdout
        assert "kept in memory for this process only" in out.stdout
        assert len(list(folder.glob("*.pt"))) == 1  # nothing written
    finally:
        folder.chmod(0o755)
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("damage", ["wrong shapes", "no history", "a folder"])
def test_an_entry_that_does_not_load_is_recomputed_with_one_warning(digits, tmp_path, damage):
    service(digits, tmp_path).fit()
    (path,) = tmp_path.glob("*.pt")
    tensors, meta = cache.load(path)
    if damage == "wrong shapes":
        cache.save(path, {k: v.flatten()[:1].clone() for k, v in tensors.items()}, meta)
    elif damage == "no history":
        cache.save(path, tensors, {k: v for k, v in meta.items() if k != "history"})
    else:
        path.unlink()
        (path / "inside").mkdir(parents=True)
    with pytest.warns(RuntimeWarning, match=f"cache entry {path.stem} does not load"):
        again = service(digits, tmp_path).fit()
    assert again.fit_cost.cache_hits == 0 and path.is_file()
    assert service(digits, tmp_path).fit().fit_cost.cache_hits == 1  # fixed for good


def test_an_entry_with_one_wrong_shaped_tensor_never_leaks_into_training(digits, tmp_path):
    clean = weights(service(digits, tmp_path / "clean").fit())
    service(digits, tmp_path / "damaged").fit()
    (path,) = (tmp_path / "damaged").glob("*.pt")
    tensors, meta = cache.load(path)
    name = next(k for k in tensors if k.endswith("weight"))  # the first layer's weights
    cache.save(path, {k: v.flatten()[:3].clone() if k == name else v
                      for k, v in tensors.items()}, meta)  # right key, valid sha256
    with pytest.warns(RuntimeWarning, match=f"its tensor {name} is"):
        again = service(digits, tmp_path / "damaged").fit()
    assert again.fit_cost.cache_hits == 0
    assert all(torch.equal(a, b) for a, b in zip(weights(again), clean))  # the clean start
    served = service(digits, tmp_path / "damaged").fit()  # the rewrite is the clean model
    assert served.fit_cost.cache_hits == 1
    assert all(torch.equal(a, b) for a, b in zip(weights(served), clean))


def test_load_state_is_all_or_nothing():
    model = build_model("fmnist_cnn", (1, 28, 28), 10, seed=0)
    before = [t.clone() for t in model.state_dict().values()]
    other = {k: v + 1 for k, v in build_model("fmnist_cnn", (1, 28, 28), 10,
                                                seed=1).state_dict().items()}
    last = list(other)[-1]
    other[last] = other[last][:1]
    with pytest.raises(ValueError, match=f"its tensor {last} is"):
        cache.load_state(model, other)
    with pytest.raises(ValueError, match="missing"):
        cache.load_state(model, {})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before))


def test_a_symlinked_lock_is_never_followed(tmp_path):
    outside = tmp_path / "outside" / "victim"
    outside.parent.mkdir()
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "k.lock").symlink_to(outside)
    with cache.lock(folder / "k.pt"):
        pass
    assert not outside.exists() and not (folder / "k.lock").is_symlink()


def test_temporary_files_of_dead_writers_go_at_the_next_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    here = cache._tmp_prefix()
    gone = tmp_path / f"{here.rsplit('-', 2)[0]}-{dead}-abc.pt"
    alive = tmp_path / f"{here}def.pt"
    gone.write_bytes(b"x")
    alive.write_bytes(b"x")
    cache.sweep_stale(tmp_path)  # no age needed: the writer's process is gone
    assert not gone.exists() and alive.exists()


def test_a_full_disk_is_the_caches_error_and_the_service_is_unchanged(digits, tmp_path,
                                                                      monkeypatch):
    svc = service(digits, tmp_path, requestable=list(range(10))).fit()
    before = (svc.removed.copy(), len(svc.log), weights(svc))
    real = cache.tempfile.mkstemp

    def on_full_disk(*args, **kwargs):  # every write lands on /dev/full: ENOSPC
        fd, name = real(*args, **kwargs)
        os.dup2(os.open("/dev/full", os.O_WRONLY), fd)
        return fd, name

    monkeypatch.setattr(cache.tempfile, "mkstemp", on_full_disk)
    with pytest.raises(cache.CacheError, match="No space left on device"):
        svc.unlearn([0, 1])
    assert (svc.removed == before[0]).all() and len(svc.log) == before[1]
    assert all(torch.equal(a, b) for a, b in zip(weights(svc), before[2]))
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_planted_cifar_batch_does_not_run_code(tmp_path):
    import pickle

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    import numpy as np

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}))
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    with pytest.raises(Exception, match="data_batch_3") as err:
        load("cifar10", tmp_path)
    assert not marker.exists()
    assert "\n" not in str(err.value)
    json.dumps(str(err.value))
