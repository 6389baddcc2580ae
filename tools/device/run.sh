#!/usr/bin/env bash
# Device side of the kit, one command: tools/device/run.sh OUT [RUNNER ARGS...]
#
# With no RUNNER ARGS it runs the default plan (printed at its start), coverage first:
# every notebook at `smoke` with `-p device cuda` (one job each), `make bench`'s benchmark,
# then the longest `default` work: notebook 06's 20- against 100-epoch section seed by
# seed, then notebook 07. RUNNER ARGS make one job of `python -m bdunlearn.reproduce ARGS`.
# Every job is bounded in time; a job that fails is recorded and the next one runs.
# Results are packed into OUT every PACK_EVERY seconds, before a job is stopped and after
# every job (at most 7 files): runs.tar.gz (the run store: merge it with
# `python -m bdunlearn.store merge OUT/runs.tar.gz results/runs`), notebooks.tar.gz (each
# job's tables and executed notebooks, those still running included), timings.csv,
# bench.csv (one row as each is measured), bench.txt, env.txt, log.txt. docs/scaling.md.
#
# Environment: PYTHON (default python3, the image's torch), LIMIT (the run's time limit,
# default 600 s) and MARGIN (60 s) make DEADLINE (LIMIT - MARGIN), PACK_EVERY (60),
# SMOKE_SECONDS (150 a notebook), BENCH_SECONDS (120), BENCH_ARGS, PLAN (a file of
# jobs, NAME|SECONDS|ARGS a line), PLAN_ONLY=1 (print the plan, run nothing), DEVICE
# (the default plan's: cuda, which PYTHON must see; or cpu), BDUNLEARN_PAYLOAD
# (tools/device/payload), FORCE_INSTALL=1 (install the wheels even where the image has them).
# Everything is checked before anything is written; a wrong argument or environment
# exits 2 with one line, a failed job makes the exit status 1.
set -uo pipefail
die() { echo "run.sh: $*" >&2; exit 2; }
int() { [[ $2 =~ ^[0-9]+$ ]] || die "$1=$2 is not a whole number of seconds"; }

if [ $# -lt 1 ] || [ -z "$1" ]; then die "usage: tools/device/run.sh OUT [RUNNER ARGS...]"; fi
OUT=$1
shift
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
PAYLOAD=${BDUNLEARN_PAYLOAD:-$HERE/payload}
LIMIT=${LIMIT:-600}; int LIMIT "$LIMIT"
MARGIN=${MARGIN:-60}; int MARGIN "$MARGIN"
[ "$LIMIT" -gt "$MARGIN" ] || die "LIMIT=$LIMIT must exceed MARGIN=$MARGIN"
DEADLINE=${DEADLINE:-$((LIMIT - MARGIN))}; int DEADLINE "$DEADLINE"
[ "$DEADLINE" -ge 1 ] || die "DEADLINE=$DEADLINE must be at least 1 second"
PACK_EVERY=${PACK_EVERY:-60}; int PACK_EVERY "$PACK_EVERY"
[ "$PACK_EVERY" -ge 1 ] || die "PACK_EVERY=$PACK_EVERY must be at least 1 second"
for var in SMOKE_SECONDS BENCH_SECONDS; do
  [ -z "${!var:-}" ] || int "$var" "${!var}"
done
[ -z "${PLAN:-}" ] || [ -f "$PLAN" ] || die "PLAN=$PLAN is not a file"

command -v "$PY" >/dev/null 2>&1 || die "no Python: '$PY' is not found; set PYTHON to the image's python3"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1 \
  || die "'$PY' does not run as Python 3.10 or newer; set PYTHON to the image's python3"
"$PY" -c 'import torch' >/dev/null 2>&1 || die "'$PY' has no torch; set PYTHON to the image's python3"
if [ $# -eq 0 ] && [ -z "${PLAN:-}" ] && [ -z "${PLAN_ONLY:-}" ] && [ "${DEVICE:-cuda}" = cuda ]; then
  "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' >/dev/null 2>&1 \
    || die "'$PY' sees no CUDA GPU, which the default plan runs on; DEVICE=cpu runs it on the CPU"
fi
[[ ${DEVICE:-cuda} =~ ^(cuda|cpu)$ ]] || die "DEVICE=$DEVICE must be cuda or cpu"
if [ -z "${PLAN_ONLY:-}" ] && { [ -n "${FORCE_INSTALL:-}" ] || \
    ! "$PY" -c 'import papermill, ipykernel' >/dev/null 2>&1; }; then
  compgen -G "$PAYLOAD/wheels/*.whl" >/dev/null || die "no payload: '$PY' lacks papermill and \
$PAYLOAD/wheels holds no wheels; run tools/device/prepare.sh and carry tools/device/payload"
fi

# OUT last: created only once everything else holds, never '/' or a file.
if [ -e "$OUT" ]; then
  [ -d "$OUT" ] || die "OUT $OUT exists and is not a folder"
  [ "$(cd "$OUT" && pwd -P)" != / ] || die "OUT is '/'; give a folder of its own"
else
  mkdir -p -- "$OUT" 2>/dev/null || die "cannot create OUT $OUT; give a writable folder"
fi
OUT=$(cd "$OUT" && pwd -P)
probe=$(mktemp "$OUT/.probe.XXXXXX" 2>/dev/null) || die "cannot write into OUT $OUT"
rm -f "$probe"

# One scratch folder per kit (store, cache, notebooks' results, the carried wheels),
# removed at the end; those of kits killed before they could remove theirs go now.
TMP=${TMPDIR:-/tmp}
for old in "$TMP"/bdunlearn-kit-*; do
  [ -d "$old" ] || continue
  pid=${old#"$TMP"/bdunlearn-kit-}; pid=${pid%%-*}
  [[ $pid =~ ^[0-9]+$ ]] && [ ! -d "/proc/$pid" ] && rm -rf -- "$old"
done
SCRATCH=$(mktemp -d "$TMP/bdunlearn-kit-$$-XXXXXX") || die "cannot create a scratch folder in $TMP"
KIT=""
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  if [ -n "$KIT" ] && kill -0 "$KIT" 2>/dev/null; then kill -TERM "$KIT"; wait "$KIT"; fi
  rm -rf -- "$SCRATCH"
  rm -f -- "$OUT"/.*.tmp "$OUT"/.probe.*
}
trap cleanup EXIT
trap 'exit 130' INT TERM

args=(--out "$OUT" --scratch "$SCRATCH" --deadline "$DEADLINE" --python "$PY"
      --payload "$PAYLOAD" --pack-every "$PACK_EVERY" --device "${DEVICE:-cuda}")
[ -n "${PLAN:-}" ] && args+=(--plan "$PLAN")
[ -n "${PLAN_ONLY:-}" ] && args+=(--plan-only)
[ -n "${FORCE_INSTALL:-}" ] && args+=(--force-install)
"$PY" "$HERE/kit.py" "${args[@]}" -- "$@" &
KIT=$!
wait "$KIT"
rc=$?
KIT=""
exit "$rc"
