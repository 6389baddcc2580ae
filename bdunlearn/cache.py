"""The one on-disk cache: slice checkpoints, Amnesiac records and defense results.

An entry is a file holding named tensors, a JSON-able ``meta`` dict of plain values and a
sha256 of both. It is written to a temporary file and renamed into place (:func:`save`),
so a killed write never leaves a half entry under the real name, and read back with
``torch.load(weights_only=True)`` only (:func:`load`), so a planted file can never run
code. An entry that is truncated, unreadable, altered (hash mismatch) or holds non-finite
floating tensors is removed and reported missing: the caller computes it again, it never
serves it. Entries are named by :func:`content_key`, a hash of what produced them.

Two processes that need the same entry hold :func:`lock` on its path, so only one of
them computes it; the other finds it in the cache once the lock is released (the lock
dies with its process). Files are created with the user's umask, so a cache shared by a
group stays shared. Any failure to write raises :class:`CacheError`, which says to set
``BDUNLEARN_CACHE`` to a writable folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # Windows: entries are still atomic, concurrent computing is not shared
    fcntl = None

STALE_SECONDS = 3600.0  # a ".tmp-*" file this old belongs to a killed write
_swept: set[Path] = set()


class CacheError(RuntimeError):
    """The cache folder cannot be written (read-only, full disk, missing permissions)."""


def default_cache_dir() -> Path:
    """``BDUNLEARN_CACHE`` (a relative value is resolved against the current working
    directory when it is read), else ``$XDG_CACHE_HOME/bdunlearn/checkpoints``."""
    value = os.environ.get("BDUNLEARN_CACHE")
    if value:
        return Path(value).expanduser().absolute()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (base / "bdunlearn" / "checkpoints").absolute()


def folder(cache_dir) -> Path | None:
    """The cache folder ``cache_dir`` names: ``None`` (keep entries in memory), ``"auto"``
    (:func:`default_cache_dir`) or a folder path; anything else fails with one sentence."""
    if cache_dir is None:
        return None
    if cache_dir == "auto":
        return default_cache_dir()
    if isinstance(cache_dir, (str, os.PathLike)) and str(cache_dir):
        return Path(cache_dir).expanduser()
    raise ValueError(f"cache_dir {cache_dir!r} must be None, 'auto' or a folder path")


def content_key(config: dict, ids=None) -> str:
    """Hash of ``config`` (sorted-key JSON) and the ordered int64 ``ids``: 40 hex digits,
    a valid file name on every system."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    if ids is not None:
        h.update(np.ascontiguousarray(np.asarray(ids, dtype=np.int64)).tobytes())
    return h.hexdigest()[:40]


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """Short hash of a data set's images and labels."""
    h = hashlib.sha256(x.contiguous().cpu().numpy().tobytes())
    h.update(y.cpu().numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module) -> str:
    """Short hash of what a model is, apart from its trained weights: every entry's name,
    shape and dtype, and the values of its buffers (the input scaling lives there).

    Part of every checkpoint key, so a change of architecture or input scaling never
    serves weights trained under another.
    """
    h = hashlib.sha256()
    params = {name for name, _ in model.named_parameters()}
    for name, value in model.state_dict().items():
        h.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        if name not in params:
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _digest(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_error(folder: Path, err: OSError) -> CacheError:
    return CacheError(f"cannot write to the cache folder {folder} "
                      f"({err.strerror or err}); set BDUNLEARN_CACHE to a writable folder")


def sweep_stale(folder: Path, older_than: float = STALE_SECONDS) -> int:
    """Remove ``.tmp-*`` files older than ``older_than`` seconds that killed writes left
    in ``folder``; returns how many were removed."""
    now, removed = time.time(), 0
    for tmp in Path(folder).glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > older_than:
                tmp.unlink()
                removed += 1
    return removed


def save(path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Store ``tensors`` (name -> tensor) and ``meta`` (JSON-able plain values) at ``path``
    atomically, with a sha256 of both. Raises :class:`CacheError` when writing fails."""
    path = Path(path)
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise ValueError("a cache entry stores tensors only; put other values in meta")
    try:
        meta_json = json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cache meta must hold finite numbers, strings, lists and dicts "
                         f"only ({err})") from None
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    blob = {"tensors": tensors, "meta": meta_json, "sha256": _digest(tensors, meta_json)}
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if folder not in _swept:
            _swept.add(folder)
            sweep_stale(folder)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=path.suffix)
    except OSError as err:
        raise _write_error(folder, err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(folder, err) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """``(tensors, meta)`` of the entry at ``path``, or ``None`` when it is missing,
    truncated, unreadable, altered or holds non-finite floats (such a file is removed)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        tensors, meta_json = blob["tensors"], blob["meta"]
        if not (isinstance(tensors, dict) and isinstance(meta_json, str)
                and all(isinstance(t, torch.Tensor) for t in tensors.values())
                and blob["sha256"] == _digest(tensors, meta_json)):
            raise ValueError("not a cache entry, or altered")
        if not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
            raise ValueError("non-finite values")
        meta = json.loads(meta_json)
    except Exception:  # any damage means: compute it again, never serve it
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return tensors, meta


def discard(path, why: str) -> None:
    """Treat the entry at ``path`` as damage: remove it (or a directory in its place) with
    one warning line naming the key, so the caller computes it again."""
    import shutil
    import warnings

    path = Path(path)
    warnings.warn(f"cache entry {path.stem} does not load ({why}); computing it again",
                  RuntimeWarning, stacklevel=2)
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextlib.contextmanager
def lock(key_path):
    """Hold an exclusive lock for the entry at ``key_path`` (a sibling ``.lock`` file).

    The operating system releases it when the process dies. Check the cache again after
    acquiring it: another process may have stored the entry meanwhile.
    """
    key_path = Path(key_path)
    if fcntl is None:
        yield
        return
    try:
        key_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(key_path.with_suffix(".lock"), "a")
    except OSError as err:
        raise _write_error(key_path.parent, err) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

