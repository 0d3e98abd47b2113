"""runtime_compare.py ONE.jsonl MANY.jsonl ONE.safetensors MANY.safetensors:
a sharded run against the single-rank run of the same global batch, with
SEMANTICS.md's tolerances: loss at step 1 within 1e-6 relative, at step 10
(or the last step) within 1e-4, every weight tensor ||dw||/||w|| <= 1e-4.
Prints the largest differences and "ok"; exits 1 otherwise."""
import json
import struct
import sys

import numpy as np


def weights(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (name, t["dtype"])
        begin, end = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + begin:8 + n + end],
                                  dtype=np.float32).reshape(t["shape"])
    return out


one = [json.loads(line) for line in open(sys.argv[1])]
many = [json.loads(line) for line in open(sys.argv[2])]
assert [r["step"] for r in one] == [r["step"] for r in many], "same steps"
rel = [abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(one, many)]
last = min(len(rel), 10) - 1
w1, w2 = weights(sys.argv[3]), weights(sys.argv[4])
assert sorted(w1) == sorted(w2), "same tensors"
dw = 0.0
for name in w1:
    assert w1[name].shape == w2[name].shape, (name, w1[name].shape,
                                              w2[name].shape)
    norm = float(np.linalg.norm(w1[name].astype(np.float64)))
    diff = float(np.linalg.norm(w1[name].astype(np.float64) - w2[name]))
    dw = max(dw, diff / norm if norm > 0 else diff)
print(f"loss step 1 rel {rel[0]:.3g}, step {last + 1} rel {rel[last]:.3g}, "
      f"weights max rel {dw:.3g}")
ok = rel[0] <= 1e-6 and rel[last] <= 1e-4 and dw <= 1e-4
print("ok" if ok else "OUTSIDE TOLERANCE")
sys.exit(0 if ok else 1)
