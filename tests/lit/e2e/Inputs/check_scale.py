"""check_scale.py METRICS SCALES SKIPPED: per-step loss_scale values and the
skipped steps are exactly as given; skipped_total counts them."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
scales = [float(x) for x in sys.argv[2].split(",")]
skipped = {int(x) for x in sys.argv[3].split(",") if x}
assert [r["loss_scale"] for r in rows] == scales, [r["loss_scale"] for r in rows]
total = 0
for r in rows:
    assert r["skipped"] == (r["step"] in skipped), r
    total += r["step"] in skipped
    assert r["skipped_total"] == total, r
    if r["skipped"]:
        assert r["grad_norm"] is None, "a skipped step's norm is not finite"
print("loss scale ok")
