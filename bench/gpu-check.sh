#!/usr/bin/env bash
# The GPU check (issue 4): build the CUDA kernels for sm_90, validate every CUDA kernel against
# the float64 reference and the CPU kernels, time them, time the same work in PyTorch on the same
# card, and print one table. For a machine with an NVIDIA GPU, nvcc, cmake and python3 with
# PyTorch; no Node and no network needed. Finishes in under 8 minutes (every step has a time limit
# taken from one overall budget). bench/gpu/README.md says how to read the table.
#
#   bash bench/gpu-check.sh                 the real check (GPU machine)
#   bash bench/gpu-check.sh --emulator      a dry run without a GPU: builds gpu_check_emu, runs its
#                                           validation only, PyTorch on the CPU at small shapes
#   options: --family NAME (one family of bench/gpu/families.h), --skip-torch, --reps N
#   environment: OUT, GPU_CHECK_BUDGET_S (the time budget), GPU_CHECK_BUILD_DIR (default build/gpu),
#                PYTHON (a python3 with PyTorch)
#
# Everything lands in $OUT (default ./gpu-check-out): rows.json (gpu_check), torch.json
# (torch_anchors.py), gpu-check.md / gpu-check.json (the table), one log per step, summary.txt.
# Exit status: 0 when every step passed, 1 when any failed (a failed step does not stop the
# later ones: the table is printed with what there is).
set -u -o pipefail

EMU=0
FAMILY=""
SKIP_TORCH=0
REPS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --emulator) EMU=1 ;;
    --family) FAMILY="${2:?--family needs a name}"; shift ;;
    --skip-torch) SKIP_TORCH=1 ;;
    --reps) REPS="${2:?--reps needs a number}"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
OUT="${OUT:-$ROOT/gpu-check-out}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)" || exit 2
BUILD="${GPU_CHECK_BUILD_DIR:-$ROOT/build/gpu}"
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
JOBS="$(nproc 2>/dev/null || echo 4)"

START=$SECONDS
if [ $EMU = 1 ]; then
  BUDGET=${GPU_CHECK_BUDGET_S:-1500}  # the emulator is slow (a fiber per CUDA thread); no 8-minute limit
else
  BUDGET=${GPU_CHECK_BUDGET_S:-450}   # 8 minutes less the table's 20 s and a margin
fi
FAILED=()
SUMMARY=()

# Locking only matters here, where other builds share build/gpu (helpers' builds on this machine).
LOCK=()
if [ $EMU = 1 ] && command -v flock >/dev/null; then LOCK=(flock /tmp/luna-build.lock); fi

# run_step NAME CAP RESERVE SHOW CMD...: runs CMD with a time limit of CAP seconds, less if the
# overall budget minus RESERVE (seconds kept for the later steps) is smaller; output to
# $OUT/NAME.log. SHOW: all | tail (the last lines, all of them on failure) | filter (FAIL and
# summary lines).
run_step() {
  local name=$1 cap=$2 reserve=$3 show=$4
  shift 4
  local left=$((BUDGET - (SECONDS - START) - reserve))
  local limit=$((cap < left ? cap : left))
  local log="$OUT/$name.log"
  if [ $limit -lt 5 ]; then
    echo "== $name: skipped, no time left in the ${BUDGET}s budget"
    FAILED+=("$name (no time left)")
    SUMMARY+=("$name: skipped (no time left)")
    return 1
  fi
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS rc
  if [ "$show" = all ]; then
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  else
    timeout -k 10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    if [ "$show" = filter ]; then
      grep -E 'FAIL|^device|^[a-z_]+: [0-9]+ checks|^gpu_check:|copy bandwidth|skipping|^torch_anchors|FAILED|Error|error' "$log" | tail -n 80
    elif [ $rc -ne 0 ]; then
      tail -n 60 "$log"
    else
      tail -n 4 "$log"
    fi
  fi
  local took=$((SECONDS - t0)) what="ok"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then what="TIMED OUT after ${limit}s"; elif [ $rc -ne 0 ]; then what="FAILED (exit $rc)"; fi
  echo "-- $name: $what, ${took}s (log: $log)"
  SUMMARY+=("$name: $what, ${took}s")
  [ $rc -eq 0 ] || FAILED+=("$name")
  return $rc
}

# A python3 that has PyTorch: $PYTHON, python3, or Debian's /usr/bin/python3 (python3-torch).
find_torch_python() {
  local py
  for py in "${PYTHON:-}" python3 /usr/bin/python3; do
    [ -n "$py" ] && command -v "$py" >/dev/null && "$py" -c 'import torch' >/dev/null 2>&1 && { echo "$py"; return 0; }
  done
  return 1
}
TABLE_PY="$(command -v python3 || echo /usr/bin/python3)"

echo "gpu-check: $([ $EMU = 1 ] && echo 'EMULATOR dry run' || echo 'GPU run'), out $OUT, budget ${BUDGET}s, $(date -u +%FT%TZ)"
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
if [ $EMU = 0 ]; then
  if command -v nvidia-smi >/dev/null; then
    timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
  else
    echo "(no nvidia-smi)"
  fi
fi
command -v nvcc >/dev/null && nvcc --version | tail -n 2 | head -n 1

# ---- 1. configure and build ---------------------------------------------------------------------
BUILT=0
if [ $EMU = 1 ]; then
  TARGET=gpu_check_emu
  # No architecture flags: the emulator build compiles the .cu files as C++ (and build/gpu may be
  # shared with builds that want every architecture).
  CONFIGURE=(cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release)
else
  TARGET=gpu_check
  # sm_90 only (H100/H200): a fifth of the compile time of the five default architectures.
  CONFIGURE=(env CUDAARCHS=90 cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DLUNA_ENABLE_CUDA=ON)
fi
# Under --emulator the builds wait for the shared build lock too: longer limits.
CONF_CAP=90 BUILD_CAP=300
[ $EMU = 1 ] && CONF_CAP=600 BUILD_CAP=900
if run_step configure $CONF_CAP 200 tail ${LOCK[@]+"${LOCK[@]}"} "${CONFIGURE[@]}"; then
  if [ $EMU = 0 ] && ! grep -q 'CUDA .* found' "$OUT/configure.log"; then
    echo "gpu-check: cmake did not find nvcc (no CUDA in $OUT/configure.log); the gpu_check target does not exist"
    FAILED+=("configure (no CUDA)")
  elif run_step build $BUILD_CAP 150 tail ${LOCK[@]+"${LOCK[@]}"} cmake --build "$BUILD" --target "$TARGET" -j "$JOBS"; then
    BUILT=1
  fi
fi

# ---- 2. validate and time -----------------------------------------------------------------------
rm -f "$OUT/rows.json"
if [ $BUILT = 1 ]; then
  ARGS=(--json "$OUT/rows.json")
  [ -n "$FAMILY" ] && ARGS+=(--family "$FAMILY")
  [ -n "$REPS" ] && ARGS+=(--reps "$REPS")
  if [ $EMU = 1 ]; then
    # The runtime family's cache-retry check needs a small emulated device (its memory is host
    # memory the emulator fills); the other families run with the default budget.
    if [ -z "$FAMILY" ] || [ "$FAMILY" = runtime ]; then
      run_step runtime_small_device 120 100 filter env LUNA_EMU_MEMORY_MB=256 "$BUILD/$TARGET" --validate-only --family runtime
    fi
    run_step gpu_check 1200 60 filter "$BUILD/$TARGET" --validate-only "${ARGS[@]}"
  else
    run_step gpu_check 240 100 filter "$BUILD/$TARGET" "${ARGS[@]}"
  fi
fi

# ---- 2b. the encoder-layer training step through the TypeScript API (needs Node) ----------------
# The GPU machine has no Node: carry a binary and set GPU_CHECK_NODE, with dist/ and the CUDA
# addon (prebuilds/linux-x64/node.napi.glibc.node from `npm run prebuild`) in the tree.
NODE_BIN="${GPU_CHECK_NODE:-$(command -v node || true)}"
ADDON="${GPU_CHECK_ADDON:-prebuilds/linux-x64/node.napi.glibc.node}"
if [ $EMU = 1 ]; then
  ADDON="${GPU_CHECK_ADDON:-build/emu/Release/luna_attention.node}"
fi
if [ -n "$NODE_BIN" ] && [ -x "$NODE_BIN" ] && [ -f "$ADDON" ] && [ -f dist/index.mjs ] && [ -f "$OUT/rows.json" ]; then
  run_step layer_step 120 60 filter env LUNA_ADDON="$ADDON" "$NODE_BIN" bench/gpu/layer_step.mjs --rows "$OUT/rows.json" --reps 5
else
  echo "== layer_step: skipped (needs a node binary (GPU_CHECK_NODE), dist/, $ADDON and the rows of step 2)"
  SUMMARY+=("layer_step: skipped")
fi

# ---- 3. PyTorch on the same device --------------------------------------------------------------
rm -f "$OUT/torch.json"
if [ $SKIP_TORCH = 1 ]; then
  echo "== torch: skipped (--skip-torch)"
elif TORCH_PY="$(find_torch_python)"; then
  if [ $EMU = 1 ]; then
    run_step torch 300 20 filter "$TORCH_PY" bench/gpu/torch_anchors.py --device cpu --quick --out "$OUT/torch.json"
  else
    run_step torch 180 15 filter "$TORCH_PY" bench/gpu/torch_anchors.py --device cuda --out "$OUT/torch.json"
  fi
else
  echo "== torch: no python3 with PyTorch here (tried \$PYTHON, python3, /usr/bin/python3)"
  [ $EMU = 1 ] || FAILED+=("torch (no PyTorch)")
  SUMMARY+=("torch: no PyTorch")
fi

# ---- 4. the table -------------------------------------------------------------------------------
echo
BUDGET=$((BUDGET + 20))  # the table always gets its 20 s
run_step table 20 0 all "$TABLE_PY" bench/gpu/make_table.py --rows "$OUT/rows.json" --torch "$OUT/torch.json" --out "$OUT"

{
  echo "gpu-check $([ $EMU = 1 ] && echo '(emulator dry run)') finished in $((SECONDS - START))s"
  for s in "${SUMMARY[@]}"; do echo "  $s"; done
  if [ ${#FAILED[@]} -gt 0 ]; then echo "FAILED: ${FAILED[*]}"; else echo "all steps passed"; fi
} | tee "$OUT/summary.txt"
[ ${#FAILED[@]} -eq 0 ]
