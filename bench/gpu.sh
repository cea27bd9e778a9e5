#!/usr/bin/env bash
# The GPU benchmark in one command (issue 13): finds a python whose torch sees CUDA, makes chanaxis importable from
# this checkout, and runs bench/gpu.py (which generates its ImageNet-format JPEG folder) within a time budget, its
# output teed to gpu.log. Results (gpu.log, gpu.txt, gpu.json) go to $OUT when set, else bench/results/.
#
#   bash bench/gpu.sh                      # on the CUDA machine, from anywhere; all of it under 8 minutes
#   bash bench/gpu.sh --device cpu --tiny  # the same code paths at toy sizes on a CPU
#   bash bench/gpu.sh --fetch-wheels [DIR] # on a machine with PyPI: wheels of what a bare CUDA image lacks → DIR
#
# The CUDA machine of this project has torch, timm, numpy, scipy, pandas, scikit-learn, networkx, rich... but no
# zarr or dask and no network. `--fetch-wheels` (run here, beside .venv) downloads the wheels of those (CPython 3.12,
# manylinux x86-64, the versions of .venv) into .whl/ (added to .git/info/exclude); send .whl along with the
# working tree (the device tool: carry [".whl"]) and this script installs them into a temporary folder first.
# Environment: PYTHON (the interpreter to use), GPU_BENCH_SECONDS (total budget, default 450).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PKGS="zarr numcodecs google-crc32c donfig dask partd locket xarray igraph texttable"

if [ "${1:-}" = "--fetch-wheels" ]; then
  dest=${2:-.whl}
  py=.venv/bin/python
  [ -x "$py" ] || py=python3
  specs=""
  for p in $PKGS; do
    v=$("$py" -c "import importlib.metadata as m; print(m.version('$p'))" 2>/dev/null || true)
    specs="$specs $p${v:+==$v}"
  done
  mkdir -p "$dest"
  # shellcheck disable=SC2086
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" $specs || exit 1
  if [ "$dest" = .whl ] && [ -d .git ] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
    mkdir -p .git/info && echo '/.whl/' >> .git/info/exclude
  fi
  ls -1 "$dest"
  echo "wheels for:$specs -> $dest ($(du -sh "$dest" | cut -f1)); send them along (device tool: carry [\".whl\"])"
  exit 0
fi

START=$(date +%s)
BUDGET=${GPU_BENCH_SECONDS:-450}
OUTDIR=${OUT:-$ROOT/bench/results}
mkdir -p "$OUTDIR"
LOG=$OUTDIR/gpu.log

want_cuda=1
prev=""
for arg in "$@"; do  # --device cpu / --device=cpu: any torch will do
  case "$prev $arg" in "--device cpu"*|*" --device=cpu"*) want_cuda=0 ;; esac
  prev=$arg
done

main() {
  echo "bench/gpu.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname), $(nproc) cores; results in $OUTDIR"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  # 1. an interpreter whose torch sees CUDA (or any torch, for --device cpu)
  local test='import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'
  [ $want_cuda = 0 ] && test='import torch'
  PY=""
  for cand in "${PYTHON:-}" "$ROOT/.venv/bin/python" python3 /opt/torch/.venv/bin/python3 python; do
    [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 || continue
    if "$cand" -c "$test" >/dev/null 2>&1; then PY=$cand; break; fi
  done
  if [ -z "$PY" ]; then
    if [ $want_cuda = 1 ]; then
      echo "no python here has a torch that sees a CUDA device (tried \$PYTHON, .venv, python3," \
           "/opt/torch/.venv/bin/python3); for a CPU smoke run: bash bench/gpu.sh --device cpu --tiny" >&2
      return 2
    fi
    echo "no python with torch: setting up .venv (bash .ci/setup)"
    bash .ci/setup || return 2
    PY=$ROOT/.venv/bin/python
  fi
  echo "python: $(command -v "$PY") ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'))"
  # 2. carried wheels (what the image lacks), then chanaxis from this checkout
  if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
    local site=${TMPDIR:-/tmp}/chanaxis-gpu-site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "$ROOT"/.whl/*.whl 2>&1 | grep -v "^WARNING: Target directory" || true
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
    echo "installed $(ls "$ROOT"/.whl/*.whl | wc -l) carried wheels into $site"
  fi
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  if ! "$PY" -c 'import chanaxis.store, chanaxis.moments, chanaxis.stages.capture, chanaxis.study, timm' 2>/tmp/chanaxis-gpu-import.err; then
    echo "chanaxis does not import with $PY: $(tail -1 /tmp/chanaxis-gpu-import.err)" >&2
    echo "missing packages cannot be installed here without a network: on a machine with PyPI run" \
         "'bash bench/gpu.sh --fetch-wheels' beside .venv and send .whl along (device tool: carry [\".whl\"])" >&2
    return 3
  fi
  "$PY" -c 'import igraph' 2>/dev/null || echo "(igraph is missing: the optional metrics part will fail; see --fetch-wheels)"
  # 3. the benchmark, inside what is left of the budget (its own --budget keeps 40 s in hand)
  local left=$(( BUDGET - ($(date +%s) - START) ))
  echo "set-up took $(( $(date +%s) - START )) s; running bench/gpu.py with a budget of $(( left - 40 )) s"
  PYTHONUNBUFFERED=1 timeout -k 10 "$left" "$PY" "$ROOT/bench/gpu.py" --out "$OUTDIR" --budget $(( left - 40 )) "$@"
  local rc=$?
  [ $rc = 124 ] && echo "bench/gpu.py ran past the budget and was stopped; gpu.json holds the sections finished" >&2
  echo "bench/gpu.sh: done in $(( $(date +%s) - START )) s (exit $rc)"
  return $rc
}

main "$@" 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
