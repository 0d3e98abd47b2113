"""check_schedule.py FILE LR WARMUP TOTAL MIN: every step's reported lr is
SEMANTICS.md's warm-up + cosine schedule (relative error < 1e-6)."""
import json
import math
import sys

path = sys.argv[1]
lr, warmup, total, low = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
for row in map(json.loads, open(path)):
    s = row["step"]
    want = lr * min(1.0, s / warmup) if warmup else lr
    if s > warmup:
        p = min(1.0, (s - warmup) / (total - warmup))
        want = lr * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * p)))
    got = row["lr"]
    assert abs(got - want) <= 1e-6 * want, f"step {s}: lr {got} != {want}"
print("schedule ok")
