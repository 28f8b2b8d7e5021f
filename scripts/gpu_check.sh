#!/usr/bin/env bash
# One prepared GPU run (design.md §4.4): build the extension against this machine's torch, check every
# backend, run the GPU tests and the GPU benchmarks, and write logs plus a results table under $OUT --
# within a time budget, with no network.
#
#   OUT=/path/to/results scripts/gpu_check.sh          # from the repository root
#   PYTHON=/opt/venv/bin/python scripts/gpu_check.sh   # pick the interpreter (default: python3)
#   GPU_CHECK_DRY_RUN=1 scripts/gpu_check.sh           # no GPU: check that every step's command
#                                                      # resolves (scripts, modules, flags, wheels;
#                                                      # =help: flags from each command's --help)
#
# ---- The device run of this workplace (H200; Python 3.12, torch 2.11, triton 3.6, nvcc 13, ninja,
#      pytest, hypothesis, numpy, scipy, torchvision, pytest-benchmark -- but no Torch-Pruning and no
#      fastcluster; no network; 15 minutes of device time in all, 10 at most per command) ----------
#   1. here, once (ignored folder, ~0.3 MB, nothing else needs to travel):
#        make wheelhouse              # torch-pruning + fastcluster wheels for CPython 3.12 x86-64
#        GPU_CHECK_DRY_RUN=1 scripts/gpu_check.sh    # every step resolves, the wheels fit cp312
#   2. the device tool's run, exactly:
#        command:   GPU_CHECK_PACK=1 GPU_CHECK_COMMIT=<git rev-parse --short HEAD> scripts/gpu_check.sh
#        carry:     ["wheelhouse"]
#        timeout_s: 560
#      The script stops itself after GPU_CHECK_BUDGET_S = 500 s (every step is clipped to what is
#      left), so with the machine's start (1-2 min) the run costs ~10.5 of the 15 minutes and leaves
#      a short rerun of single steps on the still-warm machine (the build is kept there):
#        command:   GPU_CHECK_PACK=1 GPU_CHECK_STEPS="pytest_gpu bench_wide" scripts/gpu_check.sh
#        carry:     ["wheelhouse"]            timeout_s: 300
#      then give the machine back. GPU_CHECK_PACK=1 keeps $OUT within the tool's 8 returned files:
#      results.md, results.json and gpu_check.tar.gz (every log and table below; refreshed after
#      every step, so a run cut short still returns what it did). Here:
#        mkdir -p out && tar xzf <files_at>/gpu_check.tar.gz -C out
#        python -m benchmarks.report --from-gpu-check out
#
# Order: the most valuable results first -- build, selfcheck, the distance and linkage benchmarks
# (bounded), the linkage GPU tests -- then the other GPU tests and the slower model benchmarks. A
# step whose Python packages are missing is skipped with a line naming them; every step runs under
# `timeout`, clipped to the budget left, so one slow step cannot push the run past it.
# The build compiles for this card's architecture only (TORCH_CUDA_ARCH_LIST, default: the GPU's,
# 9.0 on an H200), in parallel with ninja (MAX_JOBS = all cores). Measured on the 2-core development
# box (2026-11-29, sm_90, MAX_JOBS=2, load average 11-16 from other work): 1032 s wall for the 9
# translation units; CPU time of the longest, cuda/linkage_rounds.cu, 32 s (cpu/linkage_rounds.cpp
# 22 s), about 200 s of CPU for all 9. On 16 cores they all compile at once: about a minute (the
# longest unit, the link, pip), well inside the build step's 300 s. A machine without ninja can use
# the dev venv's self-contained `.venv/bin/ninja` (carry it; NINJA=/path/to/ninja elsewhere).
#
# Output ($OUT, default ./out; with GPU_CHECK_PACK=1 these are inside gpu_check.tar.gz):
#   env.json              card, capability, driver, torch/triton/CUDA versions, commit, packages
#   wheels.log            the wheelhouse install (PYTHONPATH=/tmp/simprune-site)
#   build.log             the extension build
#   selfcheck.log/.json   `simprune selfcheck --device cuda cpu`: every backend vs the reference
#   pytest_linkage.log/.xml   pytest -m gpu on the linkage tests (the kernels least verified: the
#                         cooperative CUDA rounds kernel, Boruvka, batched, float32 storage, strict)
#   pytest_gpu.log/.xml   pytest -m gpu on the rest (SIMPRUNE_TEST_ON_GPU=1: Triton compiles for real)
#   bench_<name>.log/.json/.md   one set per benchmark in BENCHES below
#   results.md, results.json     the summary: every step's status and seconds, then every benchmark table
#   results/<gpu>.json|md, results/benchmarks.md     the same tables in benchmarks/results/ format
#
# Extending: add "name|needs|command" to BENCHES (needs: comma-separated Python modules, or -; the
# command may use $D and $PY and should write $D/bench_<name>.json and $D/bench_<name>.md).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-./out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-500}"
DRY="${GPU_CHECK_DRY_RUN:-0}"
PACK="${GPU_CHECK_PACK:-0}"
ONLY="${GPU_CHECK_STEPS:-}"  # space-separated step names: run only these (a rerun); empty: all
START=$(date +%s)
# D: where the logs and tables go ($OUT, or a folder packed into $OUT/gpu_check.tar.gz).
if [[ "$PACK" == 1 ]]; then
  D=/tmp/simprune_gpu_check
  mkdir -p "$D"
else
  D="$OUT"
fi
SITE=/tmp/simprune-site

LINKAGE_TESTS=(tests/test_linkage_*.py)
BENCHES=(
  "distance|scipy|$PY benchmarks/bench_distance.py --device cuda --n 1024 4096 16384 --d 2 64 1024 --json $D/bench_distance.json --markdown $D/bench_distance.md"
  "linkage_gpu|scipy,fastcluster|$PY benchmarks/bench_linkage_gpu.py --n 1024 4096 16384 --layers --json $D/bench_linkage_gpu.json --markdown $D/bench_linkage_gpu.md"
  "wide|scipy|$PY -m benchmarks.bench_wide --device cuda --repeat 2 --json $D/bench_wide.json --markdown $D/bench_wide.md"
  "model|scipy,torchvision,torch_pruning|$PY -m benchmarks.bench_model --device cuda --models resnet50 vit_b_16_mlp --repeat 2 --no-tp-step --json $D/bench_model.json --markdown $D/bench_model.md"
  "latency|torchvision,torch_pruning|$PY -m benchmarks.bench_latency --device cuda --repeat 30 --json $D/bench_latency.json --markdown $D/bench_latency.md"
)
# The first two benchmarks run right after the selfcheck (see the order above).
FIRST_BENCHES=2

STEPS_JSON=()
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
wanted() { [[ -z "$ONLY" || " $ONLY " == *" $1 "* ]]; }

# missing MODULES: prints the comma-separated modules (of a comma list, or -) that do not import.
missing() {
  [[ "$1" == "-" ]] && return 0
  "$PY" - "$1" <<'EOF' 2>/dev/null || echo "$1"
import importlib.util, sys
def found(m):
    try:
        return importlib.util.find_spec(m) is not None
    except Exception:  # a broken install counts as missing
        return False
print(",".join(m for m in sys.argv[1].split(",") if not found(m)))
EOF
}

record() {  # record NAME STATUS SECONDS
  STEPS_JSON+=("{\"step\": \"$1\", \"status\": \"$2\", \"seconds\": $3}")
}

# step NAME LIMIT_S LOGFILE NEEDS CMD...: run CMD under timeout min(LIMIT_S, time left), unless a
# needed module is missing or the step was not asked for; record the status.
step() {
  local name="$1" limit="$2" log="$3" needs="$4"
  shift 4
  wanted "$name" || return 0
  local miss
  miss=$(missing "$needs")
  if [[ -n "$miss" ]]; then
    echo "[gpu_check] $name: SKIPPED -- missing Python package(s): $miss (carry their wheels in wheelhouse/: make wheelhouse)" | tee "$log"
    record "$name" "skipped (missing: $miss)" 0
    [[ "$DRY" != 0 ]] || summarize
    return 0
  fi
  if [[ "$DRY" != 0 ]]; then
    dry_check "$name" "$log" "$@"
    return 0
  fi
  local l
  l=$(($(left) - ${STEP_RESERVE_S:-0}))  # seconds kept back for the steps after this one
  if ((l < 10)); then
    echo "[gpu_check] $name: skipped (budget spent)" | tee "$log"
    record "$name" "skipped (budget)" 0
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
  record "$name" "$status" "$dt"
  summarize
  return $rc
}

# ---- dry run: does each step's command resolve here? The script or module exists, every --flag of
#      the command is defined in it ("--flag" in its source; GPU_CHECK_DRY_RUN=help: in its --help
#      output, which imports torch per command), the pytest files exist. Nothing is built or run. ----
dry_check() {
  local name="$1" log="$2"
  shift 2
  local cmd="$*" problems=() src=() help="" target=""
  if [[ "$cmd" =~ (python3?|$PY)\ +(-m\ +)?([A-Za-z0-9_./-]+) ]]; then
    local mod="${BASH_REMATCH[2]}" what="${BASH_REMATCH[3]}"
    if [[ -n "$mod" ]]; then
      target="-m $what"
      local path="${what//.//}"
      if [[ -f "$path.py" ]]; then
        src=("$path.py")
      elif [[ -f "$path/__main__.py" ]]; then
        src=("$path"/*.py)  # a package's command line (e.g. simprune's subcommands)
      elif [[ "$what" != pytest ]]; then
        problems+=("no module $what")
      fi
      [[ "$DRY" == help && "$what" != pytest ]] && help=$("$PY" -m "$what" --help 2>&1)
      [[ "$DRY" == help && "$cmd" == *"simprune selfcheck"* ]] && help=$("$PY" -m simprune selfcheck --help 2>&1)
    else
      target="$what"
      if [[ -f "$what" ]]; then src=("$what"); else problems+=("no file $what"); fi
      [[ "$DRY" == help ]] && help=$("$PY" "$what" --help 2>&1)
    fi
  fi
  if ((${#src[@]})) && [[ "$target" != "-m pytest" ]]; then
    for f in $(grep -oE '(^| )--[a-z][a-z0-9-]*' <<<"$cmd" | tr -d ' ' | sort -u); do
      if [[ -n "$help" ]]; then
        grep -q -- "$f" <<<"$help" || problems+=("flag $f not in '$target --help'")
      else
        grep -q -- "\"$f\"" "${src[@]}" || problems+=("flag $f not defined in ${src[*]}")
      fi
    done
  fi
  for f in $(grep -oE 'tests/[A-Za-z0-9_./*-]+\.py' <<<"$cmd" | sort -u); do
    [[ -e "$f" ]] || problems+=("no file $f")
  done
  if ((${#problems[@]})); then
    echo "[gpu_check] $name: DRY RUN FAILED -- ${problems[*]}" | tee "$log"
    record "$name" "dry run FAILED: ${problems[*]}" 0
  else
    echo "[gpu_check] $name: resolves ($target)" | tee "$log"
    record "$name" "dry run ok" 0
  fi
}

# ---- the summary: written after every step, so that a run cut short still leaves it ----
summarize() {
  {
    printf '{"env": %s, "steps": [' "$(cat "$D/env.json" 2>/dev/null || echo null)"
    (IFS=,; printf '%s' "${STEPS_JSON[*]}")
    printf '], "total_seconds": %d}\n' $(($(date +%s) - START))
  } >"$D/results.json"
  {
    echo "# GPU check"
    echo
    echo '```'
    cat "$D/env.json" 2>/dev/null
    echo '```'
    echo
    echo "| step | status | seconds |"
    echo "| --- | --- | --- |"
    for s in "${STEPS_JSON[@]}"; do
      "$PY" -c "import json,sys; s=json.loads(sys.argv[1]); print(f\"| {s['step']} | {s['status']} | {s['seconds']} |\")" "$s"
    done
    echo
    echo "simprune selfcheck (cuda, cpu): $(tail -n 1 "$D/selfcheck.log" 2>/dev/null)"
    grep -E "^FAIL" "$D/selfcheck.log" 2>/dev/null | sed 's/^/    /'
    echo
    for t in pytest_linkage pytest_gpu; do
      echo "$t (-m gpu): $(grep -E "passed|failed|error|skipped" "$D/$t.log" 2>/dev/null | tail -1)"
      grep -E "^(FAILED|ERROR) " "$D/$t.log" 2>/dev/null | head -30 | sed 's/^/    /'
      echo
    done
    for b in "${BENCHES[@]}"; do
      name="${b%%|*}"
      echo
      [[ -f "$D/bench_$name.md" ]] && cat "$D/bench_$name.md" || echo "(bench_$name: no table; see bench_$name.log)"
    done
  } >"$D/results.md"
  if [[ "$PACK" == 1 ]]; then
    cp "$D/results.md" "$D/results.json" "$OUT/"
    tar czf "$OUT/gpu_check.tar.gz.tmp" -C "$D" . && mv "$OUT/gpu_check.tar.gz.tmp" "$OUT/gpu_check.tar.gz"
  fi
}

# ---- 0. wheels that travel with the tree (wheelhouse/: make wheelhouse), installed aside ----
if [[ -d wheelhouse ]] && compgen -G "wheelhouse/*.whl" >/dev/null; then
  if [[ "$DRY" != 0 ]]; then
    # Would they install for CPython 3.12 on x86-64 (the device), whatever this Python is?
    "$PY" -m pip install -q --disable-pip-version-check --dry-run --ignore-installed --no-index \
      --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --target /tmp/simprune-dry-site wheelhouse/*.whl \
      >"$D/wheels.log" 2>&1
    rc=$?
    echo "[gpu_check] wheels: $( ((rc == 0)) && echo "install for cp312 (dry run ok)" || echo "DRY RUN FAILED: see $D/wheels.log")"
    record wheels "$( ((rc == 0)) && echo "dry run ok" || echo "dry run FAILED (rc=$rc)")" 0
  else
    t0=$(date +%s)
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
      --no-cache-dir --upgrade --target "$SITE" wheelhouse/*.whl >"$D/wheels.log" 2>&1
    rc=$?
    if ((rc == 0)); then
      export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
      record wheels ok $(($(date +%s) - t0))
    else
      record wheels "FAILED (rc=$rc)" $(($(date +%s) - t0))
    fi
    echo "[gpu_check] wheels: $(ls wheelhouse/*.whl | xargs -n1 basename | tr '\n' ' ')-> $SITE (rc=$rc)"
  fi
else
  echo "[gpu_check] wheels: no wheelhouse/ (make wheelhouse); using the packages installed"
fi

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
echo "[gpu_check] python=$PY CUDA_HOME=${CUDA_HOME:-?} TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS OUT=$OUT logs=$D budget=${BUDGET_S}s${ONLY:+ steps=[$ONLY]}$([[ "$DRY" != 0 ]] && echo " DRY RUN")"

GPU_CHECK_COMMIT="${GPU_CHECK_COMMIT:-}" "$PY" - >"$D/env.json" <<'EOF'
import importlib.metadata as md, json, os, subprocess
info = {}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.version.cuda)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}",
                    memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)
except Exception as e:  # noqa: BLE001
    info["torch"] = f"import failed: {e}"
for name in ("triton", "numpy", "scipy", "torchvision", "torch-pruning", "fastcluster", "pytest",
             "pytest-benchmark", "hypothesis"):
    try:
        info[name] = md.version(name)
    except md.PackageNotFoundError:
        info[name] = None
try:
    info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip()
except Exception:  # noqa: BLE001
    info["driver"] = None
try:
    info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=20).stdout.strip() or None
    info["dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                        capture_output=True, text=True, timeout=20).stdout.strip())
except Exception:  # noqa: BLE001
    info["commit"] = None
info["commit"] = info.get("commit") or os.environ.get("GPU_CHECK_COMMIT") or None
print(json.dumps(info, indent=1))
EOF
cat "$D/env.json"

# ---- 1. build: editable install, falling back to an in-place build_ext ----
BUILD_CMD="$PY -m pip install --no-build-isolation --no-deps -e . || $PY setup.py build_ext --inplace
$PY -c \"import simprune; i = simprune.backend_info(); print(i); assert i['cuda_extension'], 'no CUDA in _C'\""
if [[ "$DRY" != 0 ]]; then
  wanted build && { [[ -f setup.py ]] && "$PY" -c "import torch, setuptools" 2>/dev/null &&
    echo "[gpu_check] build: resolves (setup.py, torch, setuptools)" && record build "dry run ok" 0 ||
    { echo "[gpu_check] build: DRY RUN FAILED (setup.py / torch / setuptools)"; record build "dry run FAILED" 0; }; }
else
  step build 300 "$D/build.log" - bash -c "$BUILD_CMD"
fi

# ---- 2. selfcheck: every backend on the GPU against the reference, in seconds ----
step selfcheck 120 "$D/selfcheck.log" scipy "$PY" -m simprune selfcheck \
  --device cuda cpu --json "$D/selfcheck.json"

# ---- 3. the distance and linkage benchmarks (bounded: a few seconds to a minute each) ----
run_bench() {
  local b="$1" name needs cmd
  name="${b%%|*}"
  needs="${b#*|}"
  needs="${needs%%|*}"
  cmd="${b#*|*|}"
  STEP_RESERVE_S=30 step "bench_$name" 120 "$D/bench_$name.log" "$needs" \
    env SIMPRUNE_TEST_ON_GPU=1 bash -c "$cmd"
}
for ((i = 0; i < FIRST_BENCHES; i++)); do run_bench "${BENCHES[$i]}"; done

# ---- 4. the linkage GPU tests (Triton compiles for the real GPU: no interpreter); -v so that a log
#         cut short by the limit still says which tests passed ----
PYTEST=(env SIMPRUNE_TEST_ON_GPU=1 "$PY" -m pytest -m gpu -v -rs --durations=15 -p no:cacheprovider
  --continue-on-collection-errors)
STEP_RESERVE_S=30 step pytest_linkage 150 "$D/pytest_linkage.log" scipy,hypothesis "${PYTEST[@]}" \
  --junitxml="$D/pytest_linkage.xml" "${LINKAGE_TESTS[@]}"

# ---- 5. the other GPU tests (without Torch-Pruning the pruning tests cannot even be collected:
#         the line below says so and the rest still run) ----
IGNORE=()
for f in "${LINKAGE_TESTS[@]}"; do IGNORE+=(--ignore="$f"); done
if [[ -n "$(missing torch_pruning)" ]]; then
  echo "[gpu_check] pytest_gpu: torch_pruning missing -- the pruning tests (tests/test_prune_*, test_integration_tp) are not collected"
  for f in tests/test_prune_*.py tests/test_integration_tp.py; do IGNORE+=(--ignore="$f"); done
fi
STEP_RESERVE_S=30 step pytest_gpu 150 "$D/pytest_gpu.log" scipy,hypothesis "${PYTEST[@]}" \
  --junitxml="$D/pytest_gpu.xml" "${IGNORE[@]}" tests

# ---- 6. the slower benchmarks ----
for ((i = FIRST_BENCHES; i < ${#BENCHES[@]}; i++)); do run_bench "${BENCHES[$i]}"; done

# ---- 7. the benchmark tables in the results-history format (python -m benchmarks.report) ----
# $D/results/<gpu>.json|md and benchmarks.md: copy the first two into benchmarks/results/ and
# run `python -m benchmarks.report --tables-only` there (or --from-gpu-check $D) to commit them.
step record 60 "$D/record.log" - "$PY" -m benchmarks.report --from-gpu-check "$D" \
  --results-dir "$D/results"

# ---- 8. summary (also on stdout: the device tool returns the output's tail even without files) ----
summarize
[[ "$DRY" != 0 ]] || cat "$D/results.md"
echo "[gpu_check] done in $(($(date +%s) - START))s: $D/results.md$([[ "$PACK" == 1 ]] && echo " (packed: $OUT/gpu_check.tar.gz)")"
if [[ "$DRY" != 0 ]]; then
  ! grep -q 'FAILED' "$D/results.json"
else
  grep -q '"status": "ok"' "$D/results.json" && ! grep -q 'FAILED\|TIMEOUT' "$D/results.json"
fi
