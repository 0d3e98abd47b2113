"""What the single-purpose parity scripts (test_fake_quant.py, test_qat.py,
test_cnn.py) share: running loomc/loom-run, and the table of checks, one
line per check with its value, its limit and PASS or FAIL."""
import json
import os
import subprocess
import sys

import artifact
import safetensors_io


def run(cmd, what):
    """Runs cmd; on failure prints its output and exits naming `what`."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"{what}: {' '.join(cmd)} failed ({p.returncode})")
    return p


def train_loom(loomc, loom_run, src, workdir, name, data_path, steps,
               extra=()):
    """Compiles src (loomc ... extra) into workdir/NAME.loomx, saves its
    initial weights, trains `steps` steps on one thread with seed 0 and
    saves the weights again. Returns (the artifact's model, the per-step
    losses of the metrics, the initial tensors, the trained tensors)."""
    what = f"{name} parity"
    loomx = os.path.join(workdir, f"{name}.loomx")
    run([loomc, src, "-o", loomx] + list(extra), what)
    model = artifact.load_model(loomx)
    base = [loom_run, loomx, f"--data={data_path}", "--threads=1", "--seed=0"]
    init_path = os.path.join(workdir, "init.safetensors")
    after_path = os.path.join(workdir, "after.safetensors")
    metrics = os.path.join(workdir, "m.jsonl")
    run(base + ["--steps=0", f"--save={init_path}"], what)
    run(base + [f"--steps={steps}", f"--save={after_path}",
                f"--metrics={metrics}"], what)
    with open(metrics) as f:
        losses = [json.loads(line)["loss"] for line in f]
    init, _ = safetensors_io.load(init_path)
    after, _ = safetensors_io.load(after_path)
    return model, losses, init, after


def relative(value, reference):
    return abs(value - reference) / max(abs(reference), 1e-30)


class Checks:
    def __init__(self, width=48):
        self.width, self.failures = width, 0

    def check(self, what, value, limit):
        ok = value <= limit
        self.failures += 0 if ok else 1
        print(f"{what:<{self.width}} {value:10.3e}  (limit {limit:.0e})  "
              f"{'PASS' if ok else 'FAIL'}")

    def finish(self, title):
        """Prints `title: PASSED|FAILED` and exits 0 or 1."""
        print(f"{title}: {'PASSED' if self.failures == 0 else 'FAILED'}")
        sys.exit(1 if self.failures else 0)
