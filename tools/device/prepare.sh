#!/usr/bin/env bash
# CPU side of the device kit: gather what the GPU machine's image lacks into
# tools/device/payload/ (git-ignored; carried with the run: carry=["tools/device/payload"]):
#   wheels/  papermill, ipykernel and ipywidgets with their dependencies, for CPython 3.12 on
#            x86-64 Linux (aiohttp named too: pip on another Python skips papermill's
#            3.12-only need); run.sh installs them where they cannot shadow the image's own
#   data/fashion-mnist/  the four Fashion-MNIST idx files
# Usage: tools/device/prepare.sh [PYTHON]
#   PYTHON (the argument, or the variable): an interpreter with pip to download with;
#   default the project's .venv, else python3. PYVER (3.12) is the GPU image's Python; FMNIST the folder of the idx files.
# Checks first, says what is wrong in one line (exit 2), builds into payload.tmp and
# moves it into place only when complete; payload.tmp never stays behind.
set -uo pipefail
die() { echo "prepare.sh: $*" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
[ $# -le 1 ] || die "usage: tools/device/prepare.sh [PYTHON]"
if [ $# -eq 1 ]; then
  PY=$1
elif [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then
  PY=$ROOT/.venv/bin/python
else
  PY=python3
fi
PYVER=${PYVER:-3.12}
[[ $PYVER =~ ^3\.[0-9]+$ ]] || die "PYVER=$PYVER is not a Python version such as 3.12"
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
OUT=$HERE/payload
command -v "$PY" >/dev/null 2>&1 || die "no Python: '$PY' is not found; give an interpreter with pip (make setup builds .venv)"
"$PY" -m pip --version >/dev/null 2>&1 || die "'$PY' cannot run pip; give an interpreter with pip (make setup builds .venv)"
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz \
         t10k-labels-idx1-ubyte.gz; do
  [ -f "$FMNIST/$f" ] || die "no $FMNIST/$f: run make data first (or set FMNIST)"
done
[ -w "$HERE" ] || die "cannot write into $HERE"

trap 'rm -rf -- "$OUT.tmp"' EXIT
trap 'exit 130' INT TERM
rm -rf -- "$OUT.tmp"
mkdir -p "$OUT.tmp/wheels" "$OUT.tmp/data/fashion-mnist" || die "cannot create $OUT.tmp"
echo "prepare.sh: downloading the wheels for CPython $PYVER with $PY ..."
if ! "$PY" -m pip download -q --disable-pip-version-check --dest "$OUT.tmp/wheels" \
    --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any \
    papermill ipykernel ipywidgets aiohttp >"$OUT.tmp/pip.log" 2>&1; then
  die "pip download failed: $(grep -v '^\s*$' "$OUT.tmp/pip.log" | tail -1)"
fi
rm -f "$OUT.tmp/pip.log"
cp "$FMNIST"/*-ubyte.gz "$OUT.tmp/data/fashion-mnist/" || die "cannot copy $FMNIST"
{ rm -rf -- "$OUT" && mv "$OUT.tmp" "$OUT"; } || die "cannot move $OUT.tmp to $OUT"
size=$(du -sk "$OUT" | cut -f1)
tree=$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard 2>/dev/null \
  | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
echo "payload: $((size / 1024)) MiB in tools/device/payload ($(find "$OUT/wheels" -name '*.whl' | wc -l) wheels);" \
  "with the working tree ($(( ${tree:-0} / 1024 )) MiB) $(( (size + ${tree:-0}) / 1024 )) MiB of the 64 MiB a run carries"
echo "next, on the GPU machine: tools/device/run.sh \"\$OUT\"   (carry tools/device/payload)"
