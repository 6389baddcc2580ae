#!/usr/bin/env bash
# CPU side of the device kit: gather what the GPU machine's image lacks into
# tools/device/payload/ (git-ignored, about 53 MB, carried with `run`'s carry=[...]):
#   wheels/  papermill, ipykernel and ipywidgets with their dependencies, for Python 3.12
#            (aiohttp named too: pip on another Python skips papermill's 3.12-only need)
#   data/fashion-mnist/  the four Fashion-MNIST idx files
# Usage: tools/device/prepare.sh [PYTHON]   (PYTHON: a pip to download with; default .venv)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=${1:-$ROOT/.venv/bin/python}
OUT=$HERE/payload
FMNIST=/usr/share/datasets/fashion-mnist
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp/wheels" "$OUT.tmp/data/fashion-mnist"
"$PY" -m pip download -q --dest "$OUT.tmp/wheels" --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any papermill ipykernel ipywidgets aiohttp
[ -d "$FMNIST" ] || { echo "no $FMNIST: run make data first" >&2; exit 1; }
cp "$FMNIST"/*-ubyte.gz "$OUT.tmp/data/fashion-mnist/"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
du -sh "$OUT" | awk '{print "payload: " $1 " in tools/device/payload (the limit is 64 MiB)"}'
