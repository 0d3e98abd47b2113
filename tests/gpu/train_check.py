#!/usr/bin/env python3
"""train_check.py LOOM_RUN DIR [--steps N]: trains each pair of artifacts
DIR/NAME.cpu.loomx and DIR/NAME.cuda.loomx (compiled from the same model
with --target=cpu and --target=cuda where loomc runs) on the same data and
seed, and compares the GPU run with the CPU run (the issue's tolerances,
SEMANTICS.md): fp32 loss at step 1 within 1e-5 and at step N within 1e-3
relative, bf16 ("bf" in NAME) at step N within 2e-2; the MLP's held-out
accuracy at least the CPU's minus one point. Prints one row per model and a
SUMMARY line; exit status 1 on a failure.

Data: NAME starting with "mlp" trains on samples/data/digits.bin, others on
samples/data/text.bin (paths from the repository root)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train(loom_run, artifact, data, steps, metrics):
    cmd = [loom_run, artifact, f"--data={data}", f"--steps={steps}",
           f"--metrics={metrics}", f"--eval-every={steps}", "--seed=0"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, (r.stdout + r.stderr)[-1500:]
    rows = [json.loads(line) for line in open(metrics)]
    return rows, r.stdout[-300:]


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def main():
    loom_run, folder = sys.argv[1], sys.argv[2]
    steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 50
    names = sorted(f[: -len(".cpu.loomx")] for f in os.listdir(folder)
                   if f.endswith(".cpu.loomx"))
    failures = 0
    print(f"{'model':<10} {'loss1 cpu':>11} {'loss1 gpu':>11} {'rel':>9} "
          f"{'lossN cpu':>11} {'lossN gpu':>11} {'rel':>9} {'acc cpu':>8} {'acc gpu':>8}  verdict")
    for name in names:
        data = os.path.join(ROOT, "samples/data",
                            "digits.bin" if name.startswith("mlp") else "text.bin")
        cpu, out_c = train(loom_run, os.path.join(folder, name + ".cpu.loomx"),
                           data, steps, os.path.join(folder, name + ".cpu.jsonl"))
        gpu, out_g = train(loom_run, os.path.join(folder, name + ".cuda.loomx"),
                           data, steps, os.path.join(folder, name + ".cuda.jsonl"))
        if cpu is None or gpu is None:
            print(f"{name:<10} run failed:\n{out_c if cpu is None else out_g}")
            failures += 1
            continue
        l1c, l1g = cpu[0]["loss"], gpu[0]["loss"]
        lnc, lng = cpu[steps - 1]["loss"], gpu[steps - 1]["loss"]
        acc = lambda rows: next((r["eval_accuracy"] for r in reversed(rows)
                                 if "eval_accuracy" in r), float("nan"))
        ac, ag = acc(cpu), acc(gpu)
        bf = "bf" in name
        ok = (rel(lng, lnc) <= (2e-2 if bf else 1e-3)) and (bf or rel(l1g, l1c) <= 1e-5)
        if name.startswith("mlp"):
            ok = ok and ag >= ac - 0.01
        failures += 0 if ok else 1
        print(f"{name:<10} {l1c:11.6f} {l1g:11.6f} {rel(l1g, l1c):9.2e} {lnc:11.6f} "
              f"{lng:11.6f} {rel(lng, lnc):9.2e} {ac:8.4f} {ag:8.4f}  {'PASS' if ok else 'FAIL'}")
        for line in out_g.splitlines():
            if "gpu" in line or "steps" in line:
                print("   " + line.strip())
    print(f"SUMMARY train_check: {len(names)} models, {failures} failed: "
          f"{'FAILED' if failures else 'PASSED'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
