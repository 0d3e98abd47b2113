"""check_metrics.py FILE STEPS [--falls]: a metrics JSONL has one object per
step 1..STEPS with SEMANTICS.md's keys; with --falls, the mean loss of the
last fifth of the run is below that of the first fifth."""
import json
import math
import sys

path, steps = sys.argv[1], int(sys.argv[2])
rows = [json.loads(line) for line in open(path)]
assert [r["step"] for r in rows] == list(range(1, steps + 1)), "steps 1..N"
keys = {"step", "loss", "lr", "grad_norm", "loss_scale", "skipped",
        "skipped_total", "samples_per_s", "tokens_per_s", "step_ms",
        "mem_peak_bytes", "comm_ms"}
for r in rows:
    missing = keys - r.keys()
    assert not missing, f"step {r['step']} lacks {sorted(missing)}"
    assert math.isfinite(r["loss"]) and r["loss"] > 0
if "--falls" in sys.argv:
    k = max(1, steps // 5)
    first = sum(r["loss"] for r in rows[:k]) / k
    last = sum(r["loss"] for r in rows[-k:]) / k
    assert last < first, f"loss did not fall: {first:.4f} -> {last:.4f}"
    print(f"loss {first:.4f} -> {last:.4f}")
