"""Results stored run by run: every run's rows under a content key, with their provenance.

A notebook's results are the rows of many small *runs* (one seed of one setting, see
:mod:`bdunlearn.studies`). Each run's rows are stored as one CSV file under a content key
of what produced them: the table, the study's code version, the settings of the run
configuration that change what is measured, the run's own setting, the seed, the
resolved precision and the device type::

    <store>/<table>/<settings key>/<run key>.csv          the rows
    <store>/<table>/<settings key>/<run key>.<extra>.csv  optional side tables (scores)

So adding seeds computes only the runs not stored yet, a cut session keeps every run
that finished, and a run computed elsewhere (another CPU, a GPU, a cluster node) merges
in by copying its files (:func:`merge`). Every stored row carries its provenance: the
resolved ``precision``, the ``device`` type, the ``processor`` (or GPU name), the
``torch`` version, the ``date``, the ``commit`` of the code (``-dirty`` when the package's
code had uncommitted changes), the study's ``study_version`` and the ``run_key``. Rows of
different precision or device are stored apart and told apart by
:func:`provenance_groups`.

Files are plain CSV (nothing in them can run code when read), written to a temporary
file and renamed into place, so a killed write leaves no partial run (its temporary file,
named after its host and process, is removed at the store's next start in that folder).

What enters the store, or is read from it, is checked (:func:`read_run`,
:func:`check_rows`): a run file must be UTF-8 CSV text, hold rows, carry the provenance
columns, filled in, and its ``run_key`` (and one ``study_version``, ``precision`` and
``device``) in every row, a whole-number seed and finite numbers, at least one of them
measured. A caller that knows the run (its seed and setting) has its key recomputed and
its rows' values compared. A file that fails is refused with one sentence naming it and
why: :func:`merge` copies nothing of it, a read skips it with one warning (so a notebook
computes it again and replaces it). The store holds content keys only: a check proves a
file consistent with its name, not that its numbers were computed honestly. With the
cache's secret set (``BDUNLEARN_CACHE_KEY`` or ``BDUNLEARN_CACHE_KEY_FILE``, see
:mod:`bdunlearn.cache`), every stored run is signed with it (``<run key>.sig``, an
HMAC-SHA256 of the run's place and files), :func:`merge` refuses runs without a valid
signature, and a read skips a run whose signature does not verify and counts, in one
line, the runs without one (stored before the key was set, or committed).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import io
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import CacheError, content_key

PROVENANCE = ("precision", "device", "processor", "torch", "date", "commit",
              "study_version", "run_key")
GROUP = ("precision", "device")  # rows of different groups are never averaged together


class StoreError(RuntimeError):
    """The store folder cannot be written (read-only, full disk, missing permissions)."""


SIMD = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX-512"),
        ("avx2", "AVX2"), ("asimd", "NEON"))  # widest first: what sets a CPU's speed and bf16
# The ATen kernel level (bdunlearn.train.ATEN_LEVELS) each x86 label needs to be used.
SIMD_LEVEL = {"AMX-BF16": 2, "AVX512-BF16": 2, "AVX-512": 2, "AVX2": 1}


def cpu_name(cpuinfo: str | None = None, kernels: str | None = None) -> str:
    """The CPU's model name with its widest vector unit, e.g. ``"AMD EPYC (AVX2)"``, from
    ``/proc/cpuinfo`` (or the text given); the model name alone does not tell a machine
    that computes bf16 natively from one that emulates it 12x slower. Where ATen's kernels
    (``kernels``, default this process's :func:`bdunlearn.train.aten_capability`) are
    limited below that unit, the label says so, e.g. ``"Intel Xeon (AMX-BF16, ATen kernels
    AVX2)"`` under ``ATEN_CPU_CAPABILITY=avx2``: the rows were computed as on an AVX2 CPU."""
    from .train import ATEN_LEVELS, aten_capability, cpu_info

    name, flags = cpu_info(cpuinfo)
    name = name or platform.processor() or platform.machine()
    simd = next((label for flag, label in SIMD if flag in flags), None)
    if simd in SIMD_LEVEL:
        kernels = (kernels or aten_capability()).upper()
        if ATEN_LEVELS.get(kernels, 0) < SIMD_LEVEL[simd]:
            simd = f"{simd}, ATen kernels {kernels}"
    return f"{name} ({simd})" if simd else name


@functools.cache
def processor(device: str | None = None) -> str:
    """What a run on ``device`` (``"cpu"``, ``"cuda"``; ``None``: CUDA when present)
    computes on: on CUDA the GPU's name with the numerics flags in force, e.g. ``"NVIDIA
    H100 80GB HBM3 (TF32 off, cuDNN deterministic)"`` (:func:`bdunlearn.train.cuda_numerics`
    sets them), else :func:`cpu_name`; ``"cpu"`` never touches CUDA."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda"):
        from .train import cuda_numerics

        return f"{torch.cuda.get_device_name(0)} ({cuda_numerics()})"
    return cpu_name()


CODE = ("bdunlearn", "pyproject.toml")  # what a stored row's numbers depend on


@functools.cache
def commit(root: Path | None = None) -> str:
    """The short commit of the package's git checkout (of ``root``, the checkout holding
    this package by default), ``-dirty`` when the package's code (:data:`CODE`) has
    uncommitted changes (results, notebooks' outputs and prose do not count), or
    ``"unknown"`` outside one."""
    root = Path(__file__).resolve().parent.parent if root is None else Path(root)
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no",
                                "--", *CODE], cwd=root, text=True, capture_output=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def provenance(precision: str, device: str) -> dict:
    """The provenance columns of a run computed here now (``run_key`` and
    ``study_version`` are added by :meth:`RunStore.put`)."""
    import torch

    return {"precision": precision, "device": device, "processor": processor(device),
            "torch": torch.__version__, "date": dt.date.today().isoformat(),
            "commit": commit()}


class RunFileError(ValueError):
    """A run file (or a run's rows) that may not enter the store or be read from it: the
    message is one sentence naming the file and why."""


SIGNATURE = "sig"  # <run key>.sig: the run's HMAC under BDUNLEARN_CACHE_KEY, when one is set
_NOT_MEASURED = ("seed", "study_version")
_swept: set[Path] = set()
_warned: set[tuple] = set()


def check_rows(rows: pd.DataFrame, name: str, *, rkey: str, skey: str | None = None,
               required=(), finite=(), run: dict | None = None, precision: str | None = None,
               device: str | None = None, version=None) -> pd.DataFrame:
    """``rows`` if they may stand as the stored run ``rkey`` (of the settings key
    ``skey``), else :class:`RunFileError` saying, in one sentence about ``name``, what
    is wrong. Checked: at least one row; the provenance columns (:data:`PROVENANCE`)
    and the ``required`` ones present, the provenance filled in every row; ``run_key``
    equal to ``rkey`` and one ``study_version``, ``precision`` and ``device`` in all
    rows; a whole-number ``seed``; no infinite number, and at least one finite measured
    number (a run of missing values is no run); the ``finite`` columns finite in every
    row. What the caller knows is checked too: the study ``version``, the ``precision``
    and ``device``, and the ``run`` dict (its values, such as the seed, in every row
    that has their column, and ``rkey`` recomputed from it: the run the name says)."""
    if rows.empty:
        raise RunFileError(f"{name} holds no rows")
    required = [*required, *(c for c in finite if c not in required)]
    _check_columns(rows, name, required)
    _check_identity(rows, name, rkey, skey, run,
                    {"study_version": version, "precision": precision, "device": device})
    _check_values(rows, name, finite)
    return rows


def _check_columns(rows: pd.DataFrame, name: str, required: list) -> None:
    """The provenance and ``required`` columns are there, the provenance in every row."""
    missing = [c for c in (*PROVENANCE, *required) if c not in rows.columns]
    if missing:
        raise RunFileError(f"{name} lacks the column{'s' * (len(missing) > 1)} "
                           f"{', '.join(map(str, missing))} (every run carries "
                           f"{', '.join(PROVENANCE)}{', ' if required else ''}"
                           f"{', '.join(map(str, required))})")
    empty = [c for c in PROVENANCE if rows[c].isna().any()]
    if empty:
        raise RunFileError(f"{name} has no {empty[0]} in some rows")


def _check_identity(rows: pd.DataFrame, name: str, rkey: str, skey: str | None,
                    run: dict | None, expected: dict) -> None:
    """The rows are those of run ``rkey``: its key, one study version, precision and
    device (those the caller ``expected`` where it knows them), the ``run``'s values,
    and ``rkey`` recomputed from ``run`` under ``skey``."""
    keys = sorted(set(rows.run_key.astype(str)))
    if keys != [rkey]:
        raise RunFileError(f"{name} holds the rows of run {', '.join(keys)[:90]}, not of "
                           f"run {rkey} that its name says")
    for column, want in expected.items():
        values = sorted(set(rows[column].astype(str)))
        if len(values) > 1:
            raise RunFileError(f"{name} mixes the {column} values {', '.join(values)[:90]}")
        if want is not None and values[0] != str(want):
            raise RunFileError(f"{name} was stored with {column} {values[0]}, not {want}")
    if run is None:
        return
    for column, want in run.items():
        if column in rows.columns and not (rows[column].astype(str) == str(want)).all():
            got = sorted(set(rows[column].astype(str)))
            raise RunFileError(f"{name} holds rows of {column} {', '.join(got)[:60]} "
                               f"where its key says {column} {want}")
    if skey is not None and RunStore.run_key(skey, run, str(rows.precision.iloc[0]),
                                             str(rows.device.iloc[0])) != rkey:
        raise RunFileError(f"{name} is not named by the key of its run {run} in "
                           f"{rows.precision.iloc[0]} on {rows.device.iloc[0]}")


def _check_values(rows: pd.DataFrame, name: str, finite) -> None:
    """A whole-number seed, no infinite number, a finite measured number somewhere, and
    the ``finite`` columns finite in every row."""
    if "seed" in rows.columns:
        seeds = pd.to_numeric(rows.seed, errors="coerce")
        if seeds.isna().any() or not (seeds == seeds.round()).all():
            raise RunFileError(f"{name} has a seed that is not a whole number "
                               f"({rows.seed[seeds.isna() | (seeds != seeds.round())].iloc[0]})")
    numbers = rows.select_dtypes("number")
    values = numbers.to_numpy(dtype=float)
    if np.isinf(values).any():
        column = numbers.columns[np.isinf(values).any(axis=0)][0]
        raise RunFileError(f"{name} holds an infinite value in column {column}")
    measured = numbers.drop(columns=[c for c in (*_NOT_MEASURED, *PROVENANCE)
                                     if c in numbers.columns])
    if not np.isfinite(measured.to_numpy(dtype=float)).any():
        raise RunFileError(f"{name} holds no finite measured number (a run of missing "
                           "values)")
    for column in finite:
        value = pd.to_numeric(rows[column], errors="coerce")
        if not np.isfinite(value.to_numpy(dtype=float)).all():
            raise RunFileError(f"{name} has a missing or non-finite {column}, which the "
                               "table requires in every row")


def read_run(path, *, side: bool = False, **expect) -> pd.DataFrame:
    """The rows of the run file ``path`` (a side table with ``side``), refused with
    :class:`RunFileError` when it is not UTF-8 text or not a CSV table, or (a run's main
    file) its rows fail :func:`check_rows` (``expect``: what the caller knows of the
    run)."""
    path = Path(path)
    name = f"run file {path}"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RunFileError(f"{name} cannot be read ({err.strerror or err})") from None
    try:
        if b"\0" in data:
            raise UnicodeError
        text = data.decode("utf-8")
    except UnicodeError:
        raise RunFileError(f"{name} is not text (a run file is UTF-8 CSV)") from None
    try:
        rows = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "empty"
        raise RunFileError(f"{name} is not a CSV table ({reason[:120]})") from None
    if side:
        return rows
    rkey = path.name.split(".")[0]
    return check_rows(rows, name, rkey=rkey, skey=path.parent.name, **expect)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sign(key: bytes, where: str, files: dict[str, bytes]) -> str:
    """The HMAC-SHA256 under ``key`` of a run's place ``<table>/<settings key>/<run
    key>`` and its files (name -> content, the main file and its side tables)."""
    h = hmac.new(key, f"{where}\x1f".encode(), hashlib.sha256)
    for name in sorted(files):
        h.update(f"{name}\x1f{_digest(files[name])}\x1e".encode())
    return h.hexdigest()


def _run_files(main: Path) -> list[Path]:
    """A run's main file and its side tables."""
    return [main, *sorted(main.parent.glob(f"{main.stem}.*.csv"))]


def signature(main, key: bytes) -> str:
    """``"valid"``, ``"none"`` (no signature file) or ``"invalid"``: the signature of
    the run whose main file is ``main`` under ``key``."""
    main = Path(main)
    sig = main.with_name(f"{main.stem}.{SIGNATURE}")
    if not sig.is_file():
        return "none"
    try:
        files = {p.name: p.read_bytes() for p in _run_files(main)}
        stored = sig.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError):
        return "invalid"
    where = f"{main.parent.parent.name}/{main.parent.name}/{main.stem}"
    return "valid" if hmac.compare_digest(stored, _sign(key, where, files)) else "invalid"


def _key() -> bytes | None:
    from .cache import secret

    return secret()


def _sweep(folder: Path) -> None:
    """Remove, once per process and folder, the temporary files of killed writes."""
    from .cache import sweep_stale

    if folder not in _swept and folder.is_dir():
        _swept.add(folder)
        sweep_stale(folder)


def _skip(path: Path, err: Exception) -> None:
    """One warning per refused file (and content) per process: it is not read."""
    try:
        stat = path.stat()
        mark = (str(path), stat.st_mtime_ns, stat.st_size, str(err))
    except OSError:
        mark = (str(path), str(err))
    if mark not in _warned:
        _warned.add(mark)
        warnings.warn(f"{err}: skipped, none of its rows is read", RuntimeWarning, stacklevel=3)


class RunStore:
    """The runs stored in ``folder`` (created on the first write).

    ``settings`` below is a dict of plain values naming what a run measures apart from
    its seed (the study fills it from the run configuration); ``run`` a dict of the run's
    own plain values, the seed included.

    Every file read is checked (:func:`read_run`): a run file that is not text, not a
    CSV table, or whose rows do not match its key or lack the provenance is skipped with
    one warning naming it and why (:meth:`has` reports it missing, so it is computed
    again and replaced); nothing is read from it, its side tables included. With
    ``BDUNLEARN_CACHE_KEY`` (or ``BDUNLEARN_CACHE_KEY_FILE``) set, every run stored is
    signed (``<run key>.sig``), a run whose signature does not verify is skipped, and the
    runs without one (stored before the key was set, or committed) are read and counted
    in one printed line per table.
    """

    def __init__(self, folder):
        if not isinstance(folder, (str, os.PathLike)) or not str(folder):
            raise ValueError(f"store folder {folder!r} must be a non-empty path")
        self.folder = Path(folder).expanduser().absolute()

    def __repr__(self) -> str:
        return f"RunStore({str(self.folder)!r})"

    @staticmethod
    def settings_key(table: str, version: int, settings: dict) -> str:
        return content_key({"table": table, "version": version, "settings": settings})

    @staticmethod
    def run_key(settings_key: str, run: dict, precision: str, device: str) -> str:
        return content_key({"settings": settings_key, "run": run, "precision": precision,
                            "device": device})

    def _path(self, table: str, skey: str, rkey: str, extra: str | None = None) -> Path:
        name = f"{rkey}.{extra}.csv" if extra else f"{rkey}.csv"
        return self.folder / table / skey / name

    def _read(self, main: Path, key: bytes | None, **expect) -> pd.DataFrame:
        """The checked rows of the run file ``main`` (see the class docstring)."""
        rows = read_run(main, **expect)
        if key is not None and signature(main, key) == "invalid":
            raise RunFileError(f"run file {main} carries a signature that does not verify "
                               "under BDUNLEARN_CACHE_KEY (altered, or signed under "
                               "another key)")
        return rows

    def has(self, table: str, skey: str, rkey: str, **expect) -> bool:
        """Whether run ``rkey`` is stored and passes the checks (``expect``: what the
        caller knows of it, see :func:`check_rows`, e.g. its ``run`` dict)."""
        return self.get(table, skey, rkey, **expect) is not None

    def get(self, table: str, skey: str, rkey: str, extra: str | None = None, **expect
            ) -> pd.DataFrame | None:
        """The stored rows of one run (or its side table ``extra``), ``None`` when
        absent or refused (with one warning naming the file)."""
        main = self._path(table, skey, rkey)
        path = self._path(table, skey, rkey, extra)
        _sweep(main.parent)
        if not main.is_file() or not path.is_file():
            return None
        try:
            rows = self._read(main, _key(), **expect)
            return rows if extra is None else read_run(path, side=True)
        except RunFileError as err:
            _skip(path, err)
            return None

    def put(self, table: str, skey: str, rkey: str, version: int, rows: pd.DataFrame,
            prov: dict, extras: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
        """Store ``rows`` (with the provenance ``prov``) and the side tables ``extras``
        of one run; returns the rows as stored. The main file is written last, so a run
        counts as stored only once all its files are in place; rows that would be
        refused when read (:func:`check_rows`) are refused here, with
        :class:`RunFileError`. Raises :class:`StoreError` when the folder cannot be
        written."""
        if not isinstance(rows, pd.DataFrame):
            raise ValueError(f"the rows of run {rkey} must be a pandas DataFrame, not "
                             f"{type(rows).__name__}")
        if not isinstance(prov, dict):
            raise ValueError(f"the provenance of run {rkey} must be a dict, not "
                             f"{type(prov).__name__}")
        extras = dict(extras or {})
        bad = [f"{k!r} ({type(v).__name__})" for k, v in extras.items()
               if not (isinstance(k, str) and k.isidentifier()
                       and isinstance(v, pd.DataFrame))]
        if bad:
            raise ValueError(f"the side tables of run {rkey} must map plain names to "
                             f"pandas DataFrames, not {', '.join(bad)}")
        rows = rows.assign(**prov, study_version=version, run_key=rkey)
        check_rows(rows, f"run {rkey}", rkey=rkey)
        main = self._path(table, skey, rkey)
        files = {self._path(table, skey, rkey, name).name: df.to_csv(index=False).encode()
                 for name, df in extras.items()}
        files[main.name] = rows.to_csv(index=False).encode()
        key = _key()
        sig = main.with_name(f"{rkey}.{SIGNATURE}")
        try:
            main.parent.mkdir(parents=True, exist_ok=True)
            _sweep(main.parent)
            for old in _run_files(main)[1:]:  # side tables of an earlier computation
                if old.name not in files:
                    old.unlink()
            for name, data in files.items():
                if name != main.name:
                    self._write(main.with_name(name), data)
            if key is None:
                sig.unlink(missing_ok=True)
            else:
                self._write(sig, _sign(key, f"{table}/{skey}/{rkey}", files).encode())
            self._write(main, files[main.name])
        except OSError as err:
            raise StoreError(f"cannot write the run store {self.folder} ({err.strerror or err}); "
                             "give a writable store_dir") from None
        return rows

    def table(self, table: str, skey: str, extra: str | None = None, *,
              runs: dict[str, dict] | None = None, **expect) -> pd.DataFrame:
        """Every stored run of one settings key, concatenated (empty when none); a file
        that fails the checks is skipped with one warning (see the class docstring).
        ``runs``: the ``run`` dict of run keys the caller knows (checked against their
        files' rows and names); ``expect``: what every run must satisfy
        (:func:`check_rows`: ``required``, ``finite``, ``version``)."""
        folder = self.folder / table / skey
        if not folder.is_dir():
            return pd.DataFrame()
        _sweep(folder)
        key = _key()
        files = sorted(folder.glob("*.csv"))
        want = [p for p in files if not p.name.startswith(".")
                and (p.name.count(".") == 1) == (extra is None)
                and (extra is None or p.name.endswith(f".{extra}.csv"))]
        frames, unsigned = [], 0
        for path in want:
            main = path.with_name(path.name.split(".")[0] + ".csv")
            if not main.is_file():
                continue  # a side table counts only once its run's main file exists
            try:
                rows = self._read(main, key, run=(runs or {}).get(main.stem), **expect)
                frames.append(rows if extra is None else read_run(path, side=True))
            except RunFileError as err:
                _skip(path, err)
                continue
            unsigned += key is not None and signature(main, key) == "none"
        if unsigned and extra is None and (folder, unsigned) not in _warned:
            _warned.add((folder, unsigned))
            print(f"{table}: {unsigned} of {len(frames)} stored runs carry no signature for "
                  "BDUNLEARN_CACHE_KEY (stored before it was set, or committed): read, "
                  "not vouched for by the key")
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        """``data`` into ``path`` through a temporary file renamed into place (its name
        says its host and process, so the next start removes it if the write is killed)."""
        from .cache import _tmp_prefix

        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(), suffix=".csv", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def merge(source, target, refused: list | None = None) -> tuple[int, int]:
    """Copy the runs of the store ``source`` (for example a GPU machine's) into ``target``;
    a run already in ``target`` is kept. Returns ``(copied, kept)`` run counts.

    Every run is checked first (:func:`read_run`; and, with ``BDUNLEARN_CACHE_KEY`` set,
    its signature under that key): a run that fails is not copied, none of its files,
    and its reason (one sentence naming the file) is appended to ``refused``. A merged
    run keeps its rows as they were computed, provenance included. Raises
    :class:`StoreError` when ``target`` cannot be written (a file, a read-only folder)."""
    source, target = Path(source), Path(target)
    if target.exists() and not target.is_dir():
        raise StoreError(f"the merge target {target} is a file, not a store folder; "
                         "give a folder")
    refused = [] if refused is None else refused
    key = _key()
    copied = kept = 0
    for path in sorted(source.glob("*/*/*.csv")):
        if path.name.startswith(".") or path.name.count(".") != 1:
            continue
        dst = target / path.relative_to(source)
        if dst.exists():
            kept += 1
            continue
        files = _run_files(path)
        try:
            read_run(path)
            for side in files[1:]:
                read_run(side, side=True)
            if key is not None and signature(path, key) != "valid":
                raise RunFileError(f"run file {path} carries no valid signature for "
                                   "BDUNLEARN_CACHE_KEY (unsigned, altered, or signed "
                                   "under another key)")
        except RunFileError as err:
            refused.append(str(err))
            continue
        sig = path.with_name(f"{path.stem}.{SIGNATURE}")
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            _sweep(dst.parent)
            for src in [*files[1:], *([sig] if sig.is_file() else []), path]:  # main last
                RunStore._write(dst.with_name(src.name), src.read_bytes())
        except OSError as err:
            raise StoreError(f"cannot write the merge target {target} "
                             f"({err.strerror or err}); give a writable store folder") from None
        copied += 1
    return copied, kept


def provenance_groups(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``(label, rows)`` per (precision, device) group of ``table``, the largest first
    (by seeds); a table without provenance columns is one group labelled ``""``."""
    if table.empty or not set(GROUP) <= set(table.columns):
        return [("", table)]
    groups = []
    for (precision, device), rows in table.groupby(list(GROUP), sort=False):
        groups.append((f"{precision}, {device}", rows))
    return sorted(groups, key=lambda g: (-g[1].seed.nunique() if "seed" in g[1] else 0, g[0]))


def _where(source: Path, shown: str) -> str:
    """Why ``source`` (shown as ``shown``) holds no run where runs belong, in words."""
    found = sorted(p for p in source.rglob("*.csv") if not p.name.startswith("."))
    if not found:
        return f"{shown} holds no run file (runs sit at <table>/<settings key>/<run key>.csv)"
    rel = found[0].relative_to(source)
    depth = len(rel.parts) - 3
    if depth > 0:
        inner = Path(*rel.parts[:depth])
        return (f"{shown} holds no run at <table>/<settings key>/<run key>.csv but "
                f"{len(found)} CSV files {'one' if depth == 1 else depth} "
                f"folder{'s' * (depth > 1)} deeper, under {inner}; merge that folder")
    return (f"{shown} holds no run at <table>/<settings key>/<run key>.csv (its CSV files, "
            f"such as {rel}, sit higher)")


def main(argv=None) -> None:
    """``python -m bdunlearn.store merge SOURCE TARGET``: copy the runs of a store folder
    or of a ``.tar.gz`` of one (the device kit's ``runs.tar.gz``) into ``TARGET``. Each
    run is checked before it is copied; refused runs are named (one line each) and make
    the command exit 1, as does a source with no run where runs belong."""
    import argparse
    import sys
    import tarfile
    import zlib

    ap = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="copy another store's runs into this one")
    m.add_argument("source", help="a store folder, or a .tar.gz of one")
    m.add_argument("target", help="the store to merge into, e.g. results/runs")
    args = ap.parse_args(argv)
    source, target = Path(args.source), Path(args.target)
    if not source.exists():
        raise SystemExit(f"merge: {source} does not exist; give a store folder or a .tar.gz")
    if target.exists() and not target.is_dir():
        raise SystemExit(f"merge: the target {target} is a file, not a store folder; give a "
                         "folder")
    refused: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        shown = str(source)
        if source.is_file():
            try:
                with tarfile.open(source, "r:gz") as tar:
                    tar.extractall(scratch, filter="data")  # no links out, no devices
            except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise SystemExit(f"merge: {source} is not a readable .tar.gz (truncated or "
                                 f"damaged: {reason})") from None
            source, shown, inside = Path(scratch), f"the archive {source}", f"{source}:"
        else:
            inside = None
        try:
            copied, kept = merge(source, target, refused)
        except (StoreError, CacheError) as err:
            raise SystemExit(f"merge: {err}") from None
        if not copied and not kept and not refused:
            raise SystemExit(f"merge: {_where(source, shown)}; nothing copied")
        for reason in refused:
            reason = reason.replace(scratch, inside) if inside else reason
            print(f"merge: {reason}: refused, nothing copied from it",
                  file=sys.stderr)
    print(f"merge: {copied} runs copied into {target}, {kept} already there (kept)"
          + (f", {len(refused)} refused" if refused else ""))
    if refused:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
