"""close_weights.py REF.safetensors OTHER.safetensors TOL: every tensor of
OTHER has REF's name, shape and dtype, and ||other - ref|| / ||ref|| <= TOL
(SEMANTICS.md: sharded vs single rank, weights after 10 steps)."""
import math
import struct
import sys

from safetensors_tool import read

ref, other, tol = read(sys.argv[1])[4], read(sys.argv[2])[4], float(sys.argv[3])
assert set(ref) == set(other), f"tensor names differ: {sorted(set(ref) ^ set(other))}"
worst = (0.0, "")
for name, (dtype, shape, raw) in ref.items():
    odtype, oshape, oraw = other[name]
    assert (dtype, shape) == (odtype, oshape), f"{name}: {dtype}{shape} vs {odtype}{oshape}"
    assert dtype == "F32", f"{name}: {dtype}"
    n = len(raw) // 4
    a = struct.unpack(f"<{n}f", raw)
    b = struct.unpack(f"<{n}f", oraw)
    diff = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
    norm = math.sqrt(sum(x * x for x in a))
    rel = diff / norm if norm else diff
    worst = max(worst, (rel, name))
    assert rel <= tol, f"{name}: relative difference {rel:.3g} > {tol}"
print(f"weights: {len(ref)} tensors, largest relative difference {worst[0]:.3g} ({worst[1]})")
