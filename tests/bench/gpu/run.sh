#!/usr/bin/env bash
#===- tests/bench/gpu/run.sh - the GPU benchmark on a GPU machine ----------===#
# Where loomc runs:
#
#   bash tests/bench/gpu/run.sh --compile [DIR]     # default DIR: .gpu-bench
#
# compiles GPT-2-small (samples/gpt.loom at 12 layers, d=768, 12 heads,
# T=1024, vocabulary 50304, bf16, batch $LOOM_BENCH_BATCH or 16) for CUDA
# into DIR and records loomc's wall time in DIR/compile-seconds. Then, on the
# GPU machine, with DIR travelling with the tree:
#
#   bash tests/bench/gpu/run.sh [DIR]
#
# builds the runtime alone (build-gpu/, no LLVM needed) and runs
# tests/bench/gpu/gpt2_small.py: Loom against PyTorch eager and
# torch.compile in the same run, the GEMM path against torch.matmul, MFU.
# Extra arguments after `--` go to gpt2_small.py.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cd "$root"
export NCCL_NVLS_ENABLE=0
batch=${LOOM_BENCH_BATCH:-16}
sizes=(-Dvocab=50304 -Dd=768 -Dheads=12 -Dlayers=12 -Dseq=1024 -Dbatch="$batch")

if [ "${1:-}" = "--compile" ]; then
  dir=${2:-.gpu-bench}
  mkdir -p "$dir"
  loomc=${LOOMC:-$root/build/bin/loomc}
  start=$(date +%s.%N)
  "$loomc" samples/gpt.loom "${sizes[@]}" --precision=bf16 --target=cuda \
    -o "$dir/gpt2s.cuda.loomx"
  end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.2f}')" > "$dir/compile-seconds"
  echo "$dir/gpt2s.cuda.loomx (batch $batch) compiled in $(cat "$dir/compile-seconds") s"
  exit 0
fi

dir=${1:-.gpu-bench}
shift || true
[ "${1:-}" = "--" ] && shift
build=${LOOM_GPU_BUILD_DIR:-build-gpu}
cmake -G Ninja -S runtime -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_COMPILER="${NVCC:-/usr/local/cuda/bin/nvcc}" > /dev/null
ninja -C "$build" loom-run GemmBench > /dev/null
python3 tests/bench/gpu/gpt2_small.py --artifact "$dir/gpt2s.cuda.loomx" \
  --loom-run "$build/tools/loom-run/loom-run" \
  --loom-gemm-bench "$build/gpu-bench/GemmBench" \
  --compile-seconds "$(cat "$dir/compile-seconds")" --batch "$batch" "$@"
