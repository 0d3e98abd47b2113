"""close_losses.py REF OTHER STEP TOL: the losses at STEP agree within TOL
(relative)."""
import json
import sys

ref, other, step, tol = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
a = {r["step"]: r["loss"] for r in map(json.loads, open(ref))}[step]
b = {r["step"]: r["loss"] for r in map(json.loads, open(other))}[step]
rel = abs(a - b) / abs(a)
assert rel <= tol, f"step {step}: {a} vs {b}, relative {rel:.3g} > {tol}"
print(f"step {step}: {a:.6f} vs {b:.6f}, relative {rel:.3g}")
