"""same_losses.py REF OTHER...: loss and grad_norm of every step are equal
(exactly: metrics print floats with all their digits)."""
import json
import sys

ref = [json.loads(line) for line in open(sys.argv[1])]
for path in sys.argv[2:]:
    rows = [json.loads(line) for line in open(path)]
    assert len(rows) == len(ref), f"{path}: {len(rows)} steps, want {len(ref)}"
    for a, b in zip(ref, rows):
        for key in ("loss", "grad_norm"):
            assert a[key] == b[key], f"{path} step {a['step']}: {key} {b[key]!r} != {a[key]!r}"
print("identical")
