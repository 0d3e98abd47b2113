#!/usr/bin/env bash
#===- tests/gpu/run.sh - build and run the GPU tests on a GPU machine -----===#
# From the repository root of a machine with an NVIDIA GPU, CUDA (nvcc at
# /usr/local/cuda/bin/nvcc or $NVCC), CMake and ninja:
#
#   bash tests/gpu/run.sh
#
# configures the runtime alone (cmake -S runtime: no LLVM/MLIR needed) into
# build-gpu/ (override with LOOM_GPU_BUILD_DIR), builds with every core, runs
# every GPU test executable the build produced (build-gpu/gpu-tests/*:
# KernelsTest, AttentionTest, NcclBench with one rank), then, when the
# artifact pairs of tests/gpu/make_artifacts.sh travelled with the tree
# (.gpu-run, or LOOM_GPU_ARTIFACTS), trains each on the GPU and on the CPU
# and compares (tests/gpu/train_check.py); prints one summary table.
# Exit status: 0 when everything built and every test passed, 1 otherwise.
set -u -o pipefail

# NVLink multicast stays off on shared machines (it can wedge the host's
# GPUs); NcclBench and every later NCCL user inherit this.
export NCCL_NVLS_ENABLE=0

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
build=${LOOM_GPU_BUILD_DIR:-build-gpu}
nvcc=${NVCC:-/usr/local/cuda/bin/nvcc}
jobs=$(nproc 2>/dev/null || echo 4)

echo "== GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not available')"
echo "== nvcc: $("$nvcc" --version 2>/dev/null | tail -1)"
echo "== configure ($build)"
status_build=PASS
if ! cmake -G Ninja -S runtime -B "$build" -DCMAKE_BUILD_TYPE=Release \
     -DCMAKE_CUDA_COMPILER="$nvcc"; then
  echo "run.sh: configure failed" >&2
  exit 1
fi
if [ ! -f "$build/build.ninja" ] || ! grep -q 'KernelsTest' "$build/build.ninja"; then
  echo "run.sh: CUDA was not detected (no GPU test targets); see the configure output" >&2
  exit 1
fi
echo "== build (-j$jobs)"
start=$SECONDS
# -k 0: build every test that can be built even if another one fails.
if ! ninja -C "$build" -k 0 -j"$jobs"; then
  status_build=FAIL
  echo "run.sh: the build failed (above); running the tests that were built" >&2
fi
echo "== build took $((SECONDS - start)) s"

declare -a names results summaries
failed=0
[ "$status_build" = PASS ] || failed=1
shopt -s nullglob
tests=("$build"/gpu-tests/*)
if [ ${#tests[@]} -eq 0 ]; then
  echo "run.sh: no GPU test executable was built" >&2
  failed=1
fi
for exe in "${tests[@]}"; do
  [ -f "$exe" ] && [ -x "$exe" ] || continue
  name=$(basename "$exe")
  echo
  echo "== $name"
  log=$(mktemp)
  start=$SECONDS
  "$exe" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  took=$((SECONDS - start))
  summary=$(grep '^SUMMARY' "$log" | tail -1)
  [ -n "$summary" ] || summary="(no SUMMARY line; last: $(tail -1 "$log"))"
  rm -f "$log"
  names+=("$name")
  if [ "$rc" -eq 0 ]; then
    results+=("PASS")
  else
    results+=("FAIL (exit $rc)")
    failed=1
  fi
  summaries+=("${took}s  $summary")
done

# Training on the GPU against the CPU, when the artifact pairs travelled with
# the tree (tests/gpu/make_artifacts.sh, run where loomc is).
artifacts=${LOOM_GPU_ARTIFACTS:-.gpu-run}
if ls "$artifacts"/*.cuda.loomx > /dev/null 2>&1; then
  echo
  echo "== train_check ($artifacts)"
  start=$SECONDS
  log=$(mktemp)
  if ninja -C "$build" loom-run > /dev/null; then
    python3 tests/gpu/train_check.py "$build/tools/loom-run/loom-run" "$artifacts" \
      --steps 50 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  else
    echo "run.sh: loom-run did not build" | tee "$log"
    rc=1
  fi
  names+=("train_check")
  if [ "$rc" -eq 0 ]; then results+=("PASS"); else results+=("FAIL (exit $rc)"); failed=1; fi
  summaries+=("$((SECONDS - start))s  $(grep '^SUMMARY' "$log" | tail -1)")
  rm -f "$log"
fi

echo
echo "================ GPU test summary ================"
printf '%-16s %-14s %s\n' "build" "$status_build" "ninja -C $build"
for i in "${!names[@]}"; do
  printf '%-16s %-14s %s\n' "${names[$i]}" "${results[$i]}" "${summaries[$i]}"
done
echo "=================================================="
if [ "$failed" -ne 0 ]; then
  echo "GPU TESTS: FAILED"
  exit 1
fi
echo "GPU TESTS: PASSED"
