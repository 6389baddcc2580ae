"""What enters the cache and the run store is checked: the cache key's edge cases, entries
that carry no valid tag for the key, and run files that do not match their key."""

import warnings

import pytest
import torch

from bdunlearn import cache


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
