#!/usr/bin/env bash
#===- tests/gpu/make_artifacts.sh - CPU/CUDA artifact pairs for train_check -===#
# Where loomc runs (no GPU needed):
#
#   bash tests/gpu/make_artifacts.sh [DIR]      # default DIR: .gpu-run
#
# compiles each model twice, NAME.cpu.loomx and NAME.cuda.loomx, for
# tests/gpu/train_check.py, which tests/gpu/run.sh runs on the GPU machine
# when DIR travels with the tree: the MLP sample, a 2-layer GPT in fp32
# and in bf16, and a 1-layer GPT with 2048 tokens a batch (its bias
# gradients take the GPU's sliced column sums); then the MLP and the 2-layer
# GPT on meshes of two ranks (dp, tp, pp; dp in bf16 too), which train_check runs under
# mpirun.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dir=${1:-$root/.gpu-run}
loomc=${LOOMC:-$root/build/bin/loomc}
mkdir -p "$dir"
gpt=(-Dlayers=2 -Dd=64 -Dheads=2 -Dseq=32 -Dbatch=8)
for target in cpu cuda; do
  "$loomc" "$root/samples/mlp.loom" --target=$target -o "$dir/mlp.$target.loomx"
  "$loomc" "$root/samples/gpt.loom" "${gpt[@]}" --target=$target -o "$dir/gpt.$target.loomx"
  "$loomc" "$root/samples/gpt.loom" "${gpt[@]}" --precision=bf16 --target=$target \
    -o "$dir/gptbf.$target.loomx"
  "$loomc" "$root/samples/gpt.loom" -Dlayers=1 -Dd=64 -Dheads=2 -Dseq=256 -Dbatch=8 \
    --target=$target -o "$dir/gptwide.$target.loomx"
  "$loomc" "$root/samples/mlp.loom" --mesh=dp=2 --target=$target -o "$dir/mlpdp2.$target.loomx"
  "$loomc" "$root/samples/gpt.loom" "${gpt[@]}" --mesh=dp=2 --target=$target \
    -o "$dir/gptdp2.$target.loomx"
  "$loomc" "$root/samples/gpt.loom" "${gpt[@]}" --mesh=dp=2 --precision=bf16 \
    --target=$target -o "$dir/gptbfdp2.$target.loomx"
  "$loomc" "$root/samples/gpt.loom" "${gpt[@]}" --mesh=tp=2 --target=$target \
    -o "$dir/gpttp2.$target.loomx"
  "$loomc" "$root/samples/gpt.loom" "${gpt[@]}" --mesh=pp=2 --microbatches=2 \
    --target=$target -o "$dir/gptpp2.$target.loomx"
  # Eight micro-batches: kernels over 9 to 18 buffers (the widest take the
  # arena's base pointer, CudaCodegen.cpp).
  "$loomc" "$root/samples/gpt.loom" "${gpt[@]}" --mesh=pp=2 --microbatches=8 \
    --target=$target -o "$dir/gptpp2m8.$target.loomx"
done
echo "artifacts in $dir: $(ls "$dir" | tr '\n' ' ')"
