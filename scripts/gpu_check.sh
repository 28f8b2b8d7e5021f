#!/usr/bin/env bash
# One prepared GPU run (design.md §4.4): build the extension against this machine's torch, run the GPU
# tests, run the GPU benchmarks, and write logs plus a results table under $OUT -- in under 8 minutes,
# with no network.
#
#   OUT=/path/to/results scripts/gpu_check.sh          # from the repository root
#   PYTHON=/opt/venv/bin/python scripts/gpu_check.sh   # pick the interpreter (default: python3)
#
# The build is the longest step. With ninja it compiles the sources in parallel (MAX_JOBS = all cores);
# without it, one file after the other. A machine without ninja can use the dev venv's binary (a
# self-contained ELF from the `ninja` wheel): carry `.venv/bin/ninja` along (the device tool's
# carry=[".venv/bin/ninja"]) and this script puts it on PATH (NINJA=/path/to/ninja to point elsewhere).
#
# Output ($OUT, default ./out):
#   env.json              card, capability, driver, torch/triton/CUDA versions, commit
#   build.log             the extension build
#   selfcheck.log/.json   `simprune selfcheck --device cuda cpu`: every backend vs the reference
#   pytest_linkage.log/.xml   pytest -m gpu on the linkage tests first (the kernels least verified:
#                         the cooperative CUDA rounds kernel, Boruvka, batched, float32 storage, strict)
#   pytest_gpu.log/.xml   pytest -m gpu on the rest (SIMPRUNE_TEST_ON_GPU=1: Triton compiles for real)
#   bench_<name>.log/.json/.md   one set per benchmark in BENCHES below
#   results.md, results.json     the summary: every step's status and seconds, then every benchmark table
#   results/<gpu>.json|md, results/benchmarks.md     the same tables in benchmarks/results/ format
#
# Extending: append "name|command" to BENCHES (the command may use $OUT and $PY; it should write
# $OUT/bench_<name>.json and $OUT/bench_<name>.md). Each step runs under `timeout`, clipped to the time
# left of the overall budget, so one slow step cannot push the run past 8 minutes.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-./out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-470}"  # 7 min 50 s in all
START=$(date +%s)

BENCHES=(
  "distance|$PY benchmarks/bench_distance.py --device cuda --n 1024 4096 16384 --d 2 64 1024 --json $OUT/bench_distance.json --markdown $OUT/bench_distance.md"
  "linkage_gpu|$PY benchmarks/bench_linkage_gpu.py --n 1024 4096 16384 --layers --json $OUT/bench_linkage_gpu.json --markdown $OUT/bench_linkage_gpu.md"
  "wide|$PY -m benchmarks.bench_wide --device cuda --repeat 2 --json $OUT/bench_wide.json --markdown $OUT/bench_wide.md"
  "model|$PY -m benchmarks.bench_model --device cuda --models resnet50 vit_b_16_mlp --repeat 2 --no-tp-step --json $OUT/bench_model.json --markdown $OUT/bench_model.md"
  "latency|$PY -m benchmarks.bench_latency --device cuda --repeat 30 --json $OUT/bench_latency.json --markdown $OUT/bench_latency.md"
)

STEPS_JSON=()
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# step NAME LIMIT_S LOGFILE CMD...: run CMD under timeout min(LIMIT_S, time left); record the status.
step() {
  local name="$1" limit="$2" log="$3"
  shift 3
  local l
  l=$(($(left) - ${STEP_RESERVE_S:-0}))  # seconds kept back for the steps after this one
  if ((l < 10)); then
    echo "[gpu_check] $name: skipped (budget spent)" | tee "$log"
    STEPS_JSON+=("{\"step\": \"$name\", \"status\": \"skipped (budget)\", \"seconds\": 0}")
    return 1
  fi
  ((limit > l)) && limit=$l
  echo "[gpu_check] $name (limit ${limit}s)"
  local t0 rc status
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  case $rc in
    0) status="ok" ;;
    124 | 137) status="TIMEOUT after ${limit}s" ;;
    *) status="FAILED (rc=$rc)" ;;
  esac
  local dt=$(($(date +%s) - t0))
  echo "[gpu_check] $name: $status (${dt}s); log: $log"
  tail -n 5 "$log" | sed 's/^/    /'
  STEPS_JSON+=("{\"step\": \"$name\", \"status\": \"$status\", \"seconds\": $dt}")
  return $rc
}

# ---- toolkit and architecture: CUDA_HOME from nvcc itself (the nvcc on PATH may be a wrapper) ----
if [[ -z "${CUDA_HOME:-}" ]] && command -v nvcc >/dev/null; then
  here=$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -1)
  [[ -n "$here" && -x "$here/nvcc" ]] && export CUDA_HOME="$(dirname "$here")"
fi
ARCH=$($PY -c "import torch; c = torch.cuda.get_device_capability(0); print(f'{c[0]}.{c[1]}')" 2>/dev/null)
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-${ARCH:-9.0}}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
if ! command -v ninja >/dev/null; then
  NINJA="${NINJA:-.venv/bin/ninja}"
  if [[ -x "$NINJA" ]] && "$NINJA" --version >/dev/null 2>&1; then
    mkdir -p /tmp/simprune-gpu-bin
    ln -sf "$(cd "$(dirname "$NINJA")" && pwd)/$(basename "$NINJA")" /tmp/simprune-gpu-bin/ninja
    export PATH="/tmp/simprune-gpu-bin:$PATH"
  fi
fi
echo "[gpu_check] ninja: $(command -v ninja || echo 'not found: the build compiles one file at a time')"
echo "[gpu_check] python=$PY CUDA_HOME=${CUDA_HOME:-?} TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST OUT=$OUT"

$PY - >"$OUT/env.json" <<'EOF'
import json, subprocess, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                sms=p.multi_processor_count)
try:
    info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip()
except Exception:
    info["driver"] = None
try:
    info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=20).stdout.strip() or None
    info["dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                        capture_output=True, text=True, timeout=20).stdout.strip())
except Exception:
    info["commit"] = None
print(json.dumps(info, indent=1))
EOF
cat "$OUT/env.json"

# ---- 1. build: editable install, falling back to an in-place build_ext ----
BUILD_CMD="$PY -m pip install --no-build-isolation --no-deps -e . || $PY setup.py build_ext --inplace
$PY -c \"import simprune; i = simprune.backend_info(); print(i); assert i['cuda_extension'], 'no CUDA in _C'\""
step build 300 "$OUT/build.log" bash -c "$BUILD_CMD"

# ---- 2. selfcheck: every backend on the GPU against the reference, in seconds (a concise record
#         even if a later step runs out of time) ----
step selfcheck 120 "$OUT/selfcheck.log" "$PY" -m simprune selfcheck \
  --device cuda cpu --json "$OUT/selfcheck.json"

# ---- 3. GPU tests (Triton compiles for the real GPU: no interpreter); linkage first ----
LINKAGE_TESTS=(tests/test_linkage_*.py)
step pytest_linkage 150 "$OUT/pytest_linkage.log" env SIMPRUNE_TEST_ON_GPU=1 "$PY" -m pytest -m gpu \
  -q -rs --junitxml="$OUT/pytest_linkage.xml" -p no:cacheprovider "${LINKAGE_TESTS[@]}"
IGNORE=()
for f in "${LINKAGE_TESTS[@]}"; do IGNORE+=(--ignore="$f"); done
step pytest_gpu 150 "$OUT/pytest_gpu.log" env SIMPRUNE_TEST_ON_GPU=1 "$PY" -m pytest -m gpu -q -rs \
  --junitxml="$OUT/pytest_gpu.xml" -p no:cacheprovider "${IGNORE[@]}" tests

# ---- 4. benchmarks ----
for b in "${BENCHES[@]}"; do
  name="${b%%|*}"
  cmd="${b#*|}"
  STEP_RESERVE_S=30 step "bench_$name" 150 "$OUT/bench_$name.log" env SIMPRUNE_TEST_ON_GPU=1 \
    bash -c "$cmd"
done

# ---- 5. the benchmark tables in the results-history format (python -m benchmarks.report) ----
# $OUT/results/<gpu>.json|md and benchmarks.md: copy the first two into benchmarks/results/ and
# run `python -m benchmarks.report --tables-only` there (or --from-gpu-check $OUT) to commit them.
step record 60 "$OUT/record.log" "$PY" -m benchmarks.report --from-gpu-check "$OUT" \
  --results-dir "$OUT/results"

# ---- 6. summary ----
{
  printf '{"env": %s, "steps": [' "$(cat "$OUT/env.json")"
  (IFS=,; printf '%s' "${STEPS_JSON[*]}")
  printf '], "total_seconds": %d}\n' $(($(date +%s) - START))
} >"$OUT/results.json"
{
  echo "# GPU check"
  echo
  echo '```'
  cat "$OUT/env.json"
  echo '```'
  echo
  echo "| step | status | seconds |"
  echo "| --- | --- | --- |"
  for s in "${STEPS_JSON[@]}"; do
    echo "$s" | "$PY" -c "import json,sys; s=json.load(sys.stdin); print(f\"| {s['step']} | {s['status']} | {s['seconds']} |\")"
  done
  echo
  echo "simprune selfcheck (cuda, cpu): $(tail -n 1 "$OUT/selfcheck.log" 2>/dev/null)"
  grep -E "^FAIL" "$OUT/selfcheck.log" 2>/dev/null | sed 's/^/    /'
  echo
  for t in pytest_linkage pytest_gpu; do
    echo "$t (-m gpu): $(grep -E "passed|failed|error|skipped" "$OUT/$t.log" 2>/dev/null | tail -1)"
    echo
  done
  for b in "${BENCHES[@]}"; do
    name="${b%%|*}"
    echo
    [[ -f "$OUT/bench_$name.md" ]] && cat "$OUT/bench_$name.md" || echo "(bench_$name: no table; see bench_$name.log)"
  done
} >"$OUT/results.md"
echo "[gpu_check] done in $(($(date +%s) - START))s: $OUT/results.md"
grep -q '"status": "ok"' "$OUT/results.json" && ! grep -q 'FAILED\|TIMEOUT' "$OUT/results.json"
