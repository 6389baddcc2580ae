#!/usr/bin/env bash
# Device side of the kit, one command: tools/device/run.sh OUT [RUNNER ARGS...]
#
# Installs the carried wheels (tools/device/payload, see prepare.sh) into a scratch folder
# when the image lacks papermill, then runs each job (runner arguments: the default jobs
# below, or the RUNNER ARGS given) through `python -m bdunlearn.reproduce` into one run
# store, and after every job packs into OUT (at most 8 files, all small):
#   runs.tar.gz       the run store: every run finished so far (merge it on the CPU side
#                     with `python -m bdunlearn.store merge runs.tar.gz results/runs`)
#   notebooks.tar.gz  the executed notebooks
#   timings.csv       the runner's wall time per notebook, with slices trained
#   bench.txt         `python -m bdunlearn.bench --quick` on this machine (GPU figures)
#   env.txt, log.txt  the machine (nvidia-smi, torch) and what ran when
# A job is stopped when DEADLINE seconds (default 540) have passed since the start; what
# finished before is already packed. On a GPU the notebooks train a fit's shards together
# (stacked with vmap), so no separate sweep runs here.
set -uo pipefail
OUT=${1:?usage: tools/device/run.sh OUT [RUNNER ARGS...]}
shift
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PAYLOAD=${BDUNLEARN_PAYLOAD:-$HERE/payload}
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-540}
START=$(date +%s)
SCRATCH=$(mktemp -d)
STORE=$SCRATCH/store
mkdir -p "$OUT" "$STORE"
OUT=$(cd "$OUT" && pwd)
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
left() { echo $((DEADLINE - ($(date +%s) - START))); }

if ! "$PY" -c "import papermill, ipykernel" 2>/dev/null; then
  log "installing the carried wheels into $SCRATCH/site"
  "$PY" -m pip install -q --no-index --find-links "$PAYLOAD/wheels" --target "$SCRATCH/site" \
    papermill ipykernel ipywidgets >>"$OUT/log.txt" 2>&1 || { log "wheel install failed"; exit 1; }
  export PYTHONPATH="$SCRATCH/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$SCRATCH/site/bin:$PATH"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -m ipykernel install --prefix "$SCRATCH/jupyter" --name python3 >/dev/null 2>&1
export JUPYTER_PATH="$SCRATCH/jupyter/share/jupyter"
export BDUNLEARN_CACHE="$SCRATCH/cache"
[ -d "$PAYLOAD/data" ] && export BDUNLEARN_DATA="$PAYLOAD/data"
{ nvidia-smi 2>/dev/null || echo "no nvidia-smi"; "$PY" -c "import torch; print('torch', \
torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) \
if torch.cuda.is_available() else '')"; nproc; } >"$OUT/env.txt" 2>&1

pack() {  # everything finished so far into OUT, atomically
  tar -czf "$OUT/.runs.tar.gz" -C "$STORE" . && mv "$OUT/.runs.tar.gz" "$OUT/runs.tar.gz"
  if ls "$SCRATCH"/res-*/*.ipynb >/dev/null 2>&1; then
    tar -czf "$OUT/.notebooks.tar.gz" -C "$SCRATCH" $(cd "$SCRATCH" && ls -d res-*/*.ipynb) \
      && mv "$OUT/.notebooks.tar.gz" "$OUT/notebooks.tar.gz"
  fi
  "$PY" - "$SCRATCH" "$OUT/timings.csv" <<'PYEOF'
import sys
from pathlib import Path
import pandas as pd
found = sorted(Path(sys.argv[1]).glob("res-*/**/timings.csv"))
if found:
    pd.concat([pd.read_csv(p).assign(job=p.parts[-2] if p.parent.name.startswith("res-")
               else p.parts[-3]) for p in found]).to_csv(sys.argv[2], index=False)
PYEOF
}

if [ $# -gt 0 ]; then
  JOBS=("$*")
else  # by value: what the 2-core CPU cannot afford first
  JOBS=("--profile default --only 06 -p seeds 0-9 -p device cuda"
        "--profile default --only 07 -p device cuda"
        "--profile default --only 01,02,04 -p seeds 0-9 -p device cuda"
        "--profile default --only 03,05 -p seeds 0-4 -p device cuda")
  log "bench"
  timeout 120 "$PY" -m bdunlearn.bench --quick >"$OUT/bench.txt" 2>&1 || log "bench stopped"
fi
i=0
for job in "${JOBS[@]}"; do
  i=$((i + 1))
  if [ "$(left)" -lt 30 ]; then log "job $i skipped (deadline): $job"; continue; fi
  log "job $i: $job"
  # shellcheck disable=SC2086
  timeout "$(left)" "$PY" -m bdunlearn.reproduce $job -p store_dir "'$STORE'" \
    --results "$SCRATCH/res-$i" --figures "$SCRATCH/fig-$i" >>"$OUT/log.txt" 2>&1
  log "job $i exit $?"
  pack
done
log "done: $(find "$STORE" -name '*.csv' ! -name '*.*.csv' | wc -l) runs stored"
