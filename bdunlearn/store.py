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
file and renamed into place, so a killed write leaves no partial run.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd

from .cache import content_key

PROVENANCE = ("precision", "device", "processor", "torch", "date", "commit",
              "study_version", "run_key")
GROUP = ("precision", "device")  # rows of different groups are never averaged together


class StoreError(RuntimeError):
    """The store folder cannot be written (read-only, full disk, missing permissions)."""


SIMD = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX-512"),
        ("avx2", "AVX2"), ("asimd", "NEON"))  # widest first: what sets a CPU's speed and bf16


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name with its widest vector unit, e.g. ``"AMD EPYC (AVX2)"``, from
    ``/proc/cpuinfo`` (or the text given); the model name alone does not tell a machine
    that computes bf16 natively from one that emulates it 12x slower."""
    from .train import cpu_info

    name, flags = cpu_info(cpuinfo)
    name = name or platform.processor() or platform.machine()
    simd = next((label for flag, label in SIMD if flag in flags), None)
    return f"{name} ({simd})" if simd else name


@functools.cache
def processor() -> str:
    """The GPU's name on a CUDA machine, else :func:`cpu_name`."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
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

    return {"precision": precision, "device": device, "processor": processor(),
            "torch": torch.__version__, "date": dt.date.today().isoformat(),
            "commit": commit()}


class RunStore:
    """The runs stored in ``folder`` (created on the first write).

    ``settings`` below is a dict of plain values naming what a run measures apart from
    its seed (the study fills it from the run configuration); ``run`` a dict of the run's
    own plain values, the seed included.
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

    def has(self, table: str, skey: str, rkey: str) -> bool:
        return self._path(table, skey, rkey).is_file()

    def get(self, table: str, skey: str, rkey: str, extra: str | None = None
            ) -> pd.DataFrame | None:
        """The stored rows of one run (or its side table ``extra``), ``None`` when absent."""
        path = self._path(table, skey, rkey, extra)
        return pd.read_csv(path) if path.is_file() else None

    def put(self, table: str, skey: str, rkey: str, version: int, rows: pd.DataFrame,
            prov: dict, extras: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
        """Store ``rows`` (with the provenance ``prov``) and the side tables ``extras``
        of one run; returns the rows as stored. The main file is written last, so a run
        counts as stored only once all its files are in place. Raises
        :class:`StoreError` when the folder cannot be written."""
        rows = rows.assign(**prov, study_version=version, run_key=rkey)
        for name, df in (extras or {}).items():
            self._write(self._path(table, skey, rkey, name), df)
        self._write(self._path(table, skey, rkey), rows)
        return rows

    def table(self, table: str, skey: str, extra: str | None = None) -> pd.DataFrame:
        """Every stored run of one settings key, concatenated (empty when none)."""
        folder = self.folder / table / skey
        if not folder.is_dir():
            return pd.DataFrame()
        files = sorted(folder.glob("*.csv"))
        want = [p for p in files if (p.name.count(".") == 1) == (extra is None)
                and (extra is None or p.name.endswith(f".{extra}.csv"))]
        frames = [pd.read_csv(p) for p in want if self._complete(p)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def _complete(self, path: Path) -> bool:
        """A side table counts only once its run's main file exists."""
        return path.name.count(".") == 1 or path.with_name(
            path.name.split(".")[0] + ".csv").is_file()

    def _write(self, path: Path, df: pd.DataFrame) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".csv", dir=path.parent)
            with os.fdopen(fd, "w") as f:
                df.to_csv(f, index=False)
            os.replace(tmp, path)
        except OSError as err:
            raise StoreError(f"cannot write the run store {self.folder} ({err.strerror or err}); "
                             "give a writable store_dir") from None


def merge(source, target) -> tuple[int, int]:
    """Copy the runs of the store ``source`` (for example a GPU machine's) into ``target``;
    a run already in ``target`` is kept. Returns ``(copied, kept)`` run counts."""
    source, target = Path(source), Path(target)
    copied = kept = 0
    for path in sorted(source.glob("*/*/*.csv")):
        if path.name.startswith(".") or path.name.count(".") != 1:
            continue
        dst = target / path.relative_to(source)
        if dst.exists():
            kept += 1
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        for side in path.parent.glob(path.stem + ".*.csv"):
            shutil.copy2(side, dst.parent / side.name)
        shutil.copy2(path, dst.with_name(f".tmp-{dst.name}"))
        os.replace(dst.with_name(f".tmp-{dst.name}"), dst)
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


def main(argv=None) -> None:
    """``python -m bdunlearn.store merge SOURCE TARGET``: copy the runs of a store folder
    or of a ``.tar.gz`` of one (the device kit's ``runs.tar.gz``) into ``TARGET``."""
    import argparse
    import tarfile

    ap = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="copy another store's runs into this one")
    m.add_argument("source", help="a store folder, or a .tar.gz of one")
    m.add_argument("target", help="the store to merge into, e.g. results/runs")
    args = ap.parse_args(argv)
    source = Path(args.source)
    if not source.exists():
        raise SystemExit(f"merge: {source} does not exist; give a store folder or a .tar.gz")
    with tempfile.TemporaryDirectory() as scratch:
        if source.is_file():
            try:
                with tarfile.open(source, "r:gz") as tar:
                    tar.extractall(scratch, filter="data")  # no links out, no devices
            except (tarfile.TarError, OSError) as err:
                raise SystemExit(f"merge: {source} is not a readable .tar.gz ({err})") from None
            source = Path(scratch)
        copied, kept = merge(source, args.target)
    print(f"merge: {copied} runs copied into {args.target}, {kept} already there (kept)")


if __name__ == "__main__":
    main()
