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
dies with its process; a lock file is never followed through a symbolic link). Files are
created with the user's umask, so a cache shared by a group stays shared. A failure to
write (a full disk among them) raises :class:`CacheError`, which says to set
``BDUNLEARN_CACHE`` to a writable folder; a *read-only* cache is still read, and what is
missing from it is computed and kept in memory with one warning (:func:`keep`).

The stored sha256 detects damage, not forgery: anyone who can write to the folder can
store other weights under a right key. A cache shared by several users (an NFS folder
for a cluster sweep) should set a secret, ``BDUNLEARN_CACHE_KEY`` (the secret itself) or
``BDUNLEARN_CACHE_KEY_FILE`` (a file holding it, outside the cache), on every node: every
entry then carries an HMAC-SHA256 of its content and file name under that secret, and an
entry without a valid tag is never served (it is computed again and rewritten; the first
such entry of a process says, with one warning, how many entries of its folder carry no
valid tag for this key, so nodes with different keys are seen replacing each other's work).
A secret that is set but empty, a key file that cannot be read, and a key file inside the
cache folder (which whoever writes the cache could rewrite) are refused with
:class:`CacheKeyError`.

Temporary files are named ``.tmp-<host>-<pid>-*``: the first write to a folder removes
those whose process on this host is gone, and those of other hosts after an hour.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import io
import json
import os
import socket
import tempfile
import time
import warnings
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


class ReadOnlyCache(CacheError):
    """The cache folder exists but may not be written to (its entries can still be read)."""


READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_warned: set[Path] = set()


class CacheKeyError(CacheError):
    """The cache's secret is set but unusable: empty, unreadable, or inside the cache."""


SUBFOLDERS = ("amnesiac", "defenses")  # entries kept in a sub-folder of the cache folder


def _root(folder: Path) -> Path:
    """The cache folder an entry's ``folder`` belongs to (itself, or its parent for the
    Amnesiac and defense sub-folders)."""
    folder = Path(folder).absolute()
    return folder.parent if folder.name in SUBFOLDERS else folder


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (as named, or after following links) lies inside ``folder``."""
    folder = Path(os.path.realpath(folder))
    named = Path(os.path.realpath(path.parent)) / path.name
    return named.is_relative_to(folder) or Path(os.path.realpath(path)).is_relative_to(folder)


def secret(folder=None) -> bytes | None:
    """The cache's secret (``BDUNLEARN_CACHE_KEY``, or the content of the file named by
    ``BDUNLEARN_CACHE_KEY_FILE``), or ``None`` when neither is set.

    Raises :class:`CacheKeyError` with one sentence when a variable is set but empty,
    the key file cannot be read or is empty, or it lies inside the cache folder (of the
    entries in ``folder``, or the default one), where whoever can write the cache could
    rewrite the secret and have forged weights served."""
    value = os.environ.get("BDUNLEARN_CACHE_KEY")
    if value is not None:
        if not value.strip():
            raise CacheKeyError("BDUNLEARN_CACHE_KEY is set but empty; give the secret, or "
                                "unset it to use the cache without one")
        return value.encode()
    name = os.environ.get("BDUNLEARN_CACHE_KEY_FILE")
    if name is None:
        return None
    if not name.strip():
        raise CacheKeyError("BDUNLEARN_CACHE_KEY_FILE is set but empty; name the file "
                            "holding the secret, or unset it to use the cache without one")
    path = Path(name).expanduser().absolute()
    for root in ([_root(folder)] if folder is not None else []) + [default_cache_dir()]:
        if _inside(path, root):
            raise CacheKeyError(f"BDUNLEARN_CACHE_KEY_FILE {name} lies inside the cache "
                                f"folder {root}, where whoever can write the cache can "
                                "rewrite it; keep the key file outside the cache")
    try:
        value = path.read_bytes().strip()
    except OSError as err:
        raise CacheKeyError(f"BDUNLEARN_CACHE_KEY_FILE {name} cannot be read "
                            f"({err.strerror or err})") from None
    if not value:
        raise CacheKeyError(f"BDUNLEARN_CACHE_KEY_FILE {name} is empty; put the secret in it")
    return value


_untagged: set[Path] = set()  # cache folders whose entries without a valid tag were reported


def _has_tag(path: Path, key: bytes) -> bool:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return isinstance(blob.get("hmac"), str) and isinstance(blob.get("sha256"), str) \
            and hmac.compare_digest(blob["hmac"], _tag(key, path.name, blob["sha256"]))
    except Exception:
        return False


def _report_untagged(folder: Path, key: bytes) -> None:
    """Say once per process and cache folder how many of its entries carry no valid tag
    for this key (they are recomputed as they are needed), so that nodes with different
    keys, which replace each other's entries, are seen to do so."""
    folder = Path(folder).absolute()
    if folder in _untagged:
        return
    _untagged.add(folder)
    count = sum(not _has_tag(p, key) for p in folder.glob("*.pt"))
    what = "1 entry in the cache folder {} carries" if count == 1 else \
        f"{count} entries in the cache folder {{}} carry"
    warnings.warn(f"{what.format(folder)} no valid tag for this "
                  "key: recomputed when needed (written without BDUNLEARN_CACHE_KEY, "
                  "or under another one)", RuntimeWarning, stacklevel=3)


class _NoTag(ValueError):
    pass


def _tag(key: bytes, name: str, digest: str) -> str:
    return hmac.new(key, f"{name}\x1f{digest}".encode(), hashlib.sha256).hexdigest()


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
    kind = ReadOnlyCache if err.errno in READ_ONLY else CacheError
    return kind(f"cannot write to the cache folder {folder} "
                f"({err.strerror or err}); set BDUNLEARN_CACHE to a writable folder")


def _tmp_prefix() -> str:
    return f".tmp-{socket.gethostname().replace('-', '_')}-{os.getpid()}-"


def _owner_gone(name: str, age: float, older_than: float) -> bool:
    """Whether the temporary file ``name`` belongs to a killed write: its process on this
    host is gone, or (another host's, or an older name) it is older than ``older_than``."""
    parts = name.split("-")
    if len(parts) >= 4 and parts[1] == socket.gethostname().replace("-", "_") \
            and parts[2].isdigit():
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    return age > older_than


def sweep_stale(folder: Path, older_than: float = STALE_SECONDS) -> int:
    """Remove the ``.tmp-*`` files of killed writes in ``folder`` (see the module
    docstring); returns how many were removed."""
    now, removed = time.time(), 0
    for tmp in Path(folder).glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if _owner_gone(tmp.name, now - tmp.stat().st_mtime, older_than):
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
    digest = _digest(tensors, meta_json)
    blob = {"tensors": tensors, "meta": meta_json, "sha256": digest}
    key = secret(path.parent)
    if key is not None:
        blob["hmac"] = _tag(key, path.name, digest)
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if folder not in _swept:
            _swept.add(folder)
            sweep_stale(folder)
        if path.is_dir() and not path.is_symlink():
            discard(path, "a folder stands at its name")
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_tmp_prefix(), suffix=path.suffix)
    except OSError as err:
        raise _write_error(folder, err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())  # a full disk is an OSError here, not torch's
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(folder, err) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def keep(path, tensors: dict[str, torch.Tensor], meta: dict) -> bool:
    """:func:`save`, except that a read-only cache folder keeps the entry out of the cache
    (the caller holds it in memory) with one warning per folder; ``True`` when saved."""
    try:
        save(path, tensors, meta)
    except ReadOnlyCache as err:
        folder = Path(path).parent
        if folder not in _warned:
            _warned.add(folder)
            warnings.warn(f"{err}: computed entries are kept in memory for this process only",
                          RuntimeWarning, stacklevel=2)
        return False
    return True


def load(path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """``(tensors, meta)`` of the entry at ``path``, or ``None`` when it is missing,
    truncated, unreadable, altered or holds non-finite floats (such a file is removed)."""
    path = Path(path)
    key = secret(path.parent)  # an unusable key is refused before anything is read
    if path.is_dir() and not path.is_symlink():
        discard(path, "a folder stands at its name")
        return None
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        tensors, meta_json = blob["tensors"], blob["meta"]
        if not (isinstance(tensors, dict) and isinstance(meta_json, str)
                and all(isinstance(t, torch.Tensor) for t in tensors.values())
                and blob["sha256"] == _digest(tensors, meta_json)):
            raise ValueError("not a cache entry, or altered")
        if key is not None and not (isinstance(blob.get("hmac"), str) and hmac.compare_digest(
                blob["hmac"], _tag(key, path.name, blob["sha256"]))):
            raise _NoTag("no valid tag under the cache's secret")
        if not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
            raise ValueError("non-finite values")
        meta = json.loads(meta_json)
    except Exception as err:  # any damage means: compute it again, never serve it
        if isinstance(err, _NoTag):
            _report_untagged(path.parent, key)
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return tensors, meta


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load the tensors ``state`` into ``model``, all or nothing: every name, shape and
    dtype of the model's ``state_dict`` must match, else :class:`ValueError` names the
    first that does not and ``model`` is left exactly as it was (``load_state_dict``
    alone copies the matching tensors before it raises, so a damaged entry would leak
    into the model that is then trained)."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"its tensors do not match the model (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    for name, value in own.items():
        got = state[name]
        if not isinstance(got, torch.Tensor) or got.shape != value.shape \
                or got.dtype != value.dtype:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ValueError(f"its tensor {name} is {shape} where the model holds "
                             f"{tuple(value.shape)} {value.dtype}")
    backup = {k: v.detach().clone() for k, v in own.items()}
    try:
        model.load_state_dict(state)
    except BaseException:
        model.load_state_dict(backup)
        raise


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
    lock_path = key_path.with_suffix(".lock")
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
    try:
        key_path.parent.mkdir(parents=True, exist_ok=True)
        if key_path.parent not in _swept:
            _swept.add(key_path.parent)
            sweep_stale(key_path.parent)
        try:
            fd = os.open(lock_path, flags, 0o666)
        except OSError as err:
            if err.errno != errno.ELOOP:  # a symbolic link: never follow it, replace it
                raise
            lock_path.unlink()
            fd = os.open(lock_path, flags, 0o666)
    except OSError as err:
        if err.errno in READ_ONLY and key_path.parent.is_dir():
            yield  # a read-only cache: read, never written, so nothing to lock
            return
        raise _write_error(key_path.parent, err) from None
    with os.fdopen(fd, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

