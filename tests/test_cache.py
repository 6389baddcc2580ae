import errno
import os
import time
from pathlib import Path

import pytest
import torch

from bdunlearn import cache
from bdunlearn.defenses import DefenderView, run_defense
from bdunlearn.models import build_model

PACKAGE = Path(cache.__file__).parent


def entry(tmp_path, name="e.pt"):
    path = tmp_path / name
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
               "h": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
               "n": torch.tensor(7)}
    cache.save(path, tensors, {"key": "k", "seconds": 1.25, "history": [[1.0, 10]]})
    return path, tensors


class Planted:
    """Unpickling this object would create a file (if anything ever unpickled it)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_content_key_depends_on_ids_order_and_config():
    cfg = {"arch": "x", "seed": 0}
    k = cache.content_key(cfg, [1, 2, 3])
    assert k == cache.content_key(dict(cfg), [1, 2, 3]) and k.isalnum() and len(k) == 40
    assert k != cache.content_key(cfg, [2, 1, 3])
    assert k != cache.content_key({**cfg, "seed": 1}, [1, 2, 3])
    assert cache.content_key(cfg) != k


def test_relative_cache_folder_resolves_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("BDUNLEARN_CACHE", "rel/cache")
    monkeypatch.chdir(tmp_path)
    assert cache.default_cache_dir() == tmp_path / "rel" / "cache"
    monkeypatch.delenv("BDUNLEARN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "bdunlearn" / "checkpoints"


def test_round_trip_with_the_users_umask(tmp_path):
    old = os.umask(0o002)
    try:
        path, tensors = entry(tmp_path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o664  # not mkstemp's 0600
    loaded, meta = cache.load(path)
    assert meta == {"key": "k", "seconds": 1.25, "history": [[1.0, 10]]}
    assert set(loaded) == set(tensors)
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype
               for k, v in tensors.items())


@pytest.mark.parametrize("damage", ["missing", "truncated", "flipped byte", "garbage",
                                    "foreign torch file", "non-finite"])
def test_damaged_entries_are_refused_and_removed(tmp_path, damage):
    path, tensors = entry(tmp_path)
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-300])
    elif damage == "flipped byte":
        raw = bytearray(path.read_bytes())
        raw[raw.index(torch.arange(6, dtype=torch.float32).numpy().tobytes())] ^= 0x40
        path.write_bytes(bytes(raw))
    elif damage == "garbage":
        path.write_bytes(b"not a cache entry")
    elif damage == "foreign torch file":
        torch.save({"state": tensors, "key": "k"}, path)
    else:
        cache.save(path, {"w": torch.tensor([1.0, float("nan")])}, {})
    assert cache.load(path) is None
    assert not path.exists()


def test_a_planted_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "e.pt"
    torch.save({"tensors": {}, "meta": Planted(marker), "sha256": ""}, path)
    assert cache.load(path) is None
    assert not marker.exists() and not path.exists()


def test_no_unsafe_load_in_the_package():
    offenders = [p for p in PACKAGE.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


def test_meta_must_be_plain_values(tmp_path):
    with pytest.raises(ValueError, match="cache meta must hold"):
        cache.save(tmp_path / "e.pt", {}, {"model": torch.nn.Linear(1, 1)})
    with pytest.raises(ValueError, match="cache meta must hold"):
        cache.save(tmp_path / "e.pt", {}, {"seconds": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_file_and_names_the_setting(tmp_path, monkeypatch):
    real = cache.tempfile.mkstemp

    def on_full_disk(*args, **kwargs):  # the write lands on /dev/full: ENOSPC mid-file
        fd, name = real(*args, **kwargs)
        os.dup2(os.open("/dev/full", os.O_WRONLY), fd)
        return fd, name

    monkeypatch.setattr(cache.tempfile, "mkstemp", on_full_disk)
    with pytest.raises(cache.CacheError, match="set BDUNLEARN_CACHE to a writable folder"):
        cache.save(tmp_path / "x.pt", {"a": torch.ones(1)}, {})
    assert list(tmp_path.iterdir()) == []


def test_full_disk_on_rename_is_a_cache_error(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "replace", full)
    with pytest.raises(cache.CacheError, match=f"{tmp_path}.*No space left"):
        entry(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_read_only_folder_is_a_cache_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writes")
        with pytest.raises(cache.CacheError, match="BDUNLEARN_CACHE"):
            cache.save(folder / "e.pt", {"a": torch.ones(1)}, {})
    finally:
        folder.chmod(0o755)


def test_stale_temporary_files_are_swept(tmp_path):
    old, young = tmp_path / ".tmp-old.pt", tmp_path / ".tmp-young.pt"
    old.write_bytes(b"x")
    young.write_bytes(b"x")
    hour_ago = time.time() - 2 * cache.STALE_SECONDS
    os.utime(old, (hour_ago, hour_ago))
    entry(tmp_path)  # the first write into a folder sweeps it
    assert not old.exists() and young.exists()


def test_defense_results_are_cached_verified_and_planted_files_refused(tmp_path, digits):
    ds = digits.subset(200, 50, seed=0)
    model = build_model("fmnist_cnn", (1, 28, 28), 10, seed=0)
    view = DefenderView(model, ds.x_train, ds.y_train, 10, device="cpu")
    first = run_defense("finetune", view, seed=0, cache_dir=tmp_path, epochs=1)
    (path,) = (tmp_path / "defenses").glob("*.pt")
    again = run_defense("finetune", view, seed=0, cache_dir=tmp_path, epochs=1)
    assert again.info["from_cache"] and again.seconds == first.seconds
    assert {k: v for k, v in again.info.items() if k != "from_cache"} == first.info
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                 again.model.state_dict().values()))
    marker = tmp_path / "executed"
    torch.save({"tensors": {}, "meta": Planted(marker), "sha256": ""}, path)
    recomputed = run_defense("finetune", view, seed=0, cache_dir=tmp_path, epochs=1)
    assert not marker.exists()
    assert "from_cache" not in recomputed.info  # computed again, not served
    assert cache.load(path) is not None  # and stored again as a valid entry
