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
samples/data/text.bin (paths from the repository root).

An artifact compiled for a mesh of several ranks runs under mpirun with that
many ranks, the CPU pair too: on one GPU the ranks share it and the GPU
collectives are staged through host memory (loom-run says which); with a GPU
per rank they go over NCCL.

Then, for the pair named "gpt": a GPU run of N steps stopped after N/2 with
a checkpoint and resumed must end with exactly the weights (--save) of a
straight N-step run."""
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1", "NCCL_NVLS_ENABLE": "0"}


def ranks(loom_run, artifact):
    """The artifact's rank count, from loom-run --describe."""
    r = subprocess.run([loom_run, artifact, "--describe"], capture_output=True, text=True)
    m = re.search(r"\((\d+) ranks?\)", r.stdout)
    return int(m.group(1)) if m else 1


def launcher(loom_run, artifact):
    n = ranks(loom_run, artifact)
    return ["mpirun", "-np", str(n), loom_run] if n > 1 else [loom_run]


def train(loom_run, artifact, data, steps, metrics, extra=()):
    cmd = launcher(loom_run, artifact) + [
        artifact, f"--data={data}", f"--steps={steps}", f"--metrics={metrics}",
        f"--eval-every={steps}", "--seed=0", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, **MPI_ENV})
    if r.returncode != 0:
        return None, (r.stdout + r.stderr)[-1500:]
    rows = [json.loads(line) for line in open(metrics)]
    return rows, r.stdout[-300:]


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def resume_check(loom_run, folder, steps):
    """Stopped at steps/2 with a checkpoint and resumed to `steps` on the
    GPU: the final weights must be bitwise those of a straight run."""
    art = os.path.join(folder, "gpt.cuda.loomx")
    data = os.path.join(ROOT, "samples/data/text.bin")
    with tempfile.TemporaryDirectory() as tmp:
        straight = os.path.join(tmp, "straight.safetensors")
        resumed = os.path.join(tmp, "resumed.safetensors")
        ckpt = os.path.join(tmp, "ckpt")
        runs = [
            train(loom_run, art, data, steps, os.path.join(tmp, "a.jsonl"),
                  [f"--save={straight}"]),
            train(loom_run, art, data, steps // 2, os.path.join(tmp, "b.jsonl"),
                  [f"--ckpt-dir={ckpt}"]),
            train(loom_run, art, data, steps, os.path.join(tmp, "b.jsonl"),
                  [f"--ckpt-dir={ckpt}", "--resume", f"--save={resumed}"]),
        ]
        for rows, out in runs:
            if rows is None:
                print(f"resume     run failed:\n{out}")
                return 1
        same = open(straight, "rb").read() == open(resumed, "rb").read()
    print(f"resume     gpt on the GPU: {steps // 2} steps, checkpoint, resumed to "
          f"{steps}: weights {'identical' if same else 'DIFFER'} to a straight run  "
          f"{'PASS' if same else 'FAIL'}")
    return 0 if same else 1


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
            if "gpu" in line or "steps" in line or "collectives" in line:
                print("   " + line.strip())
    if "gpt" in names:
        failures += resume_check(loom_run, folder, steps)
    print(f"SUMMARY train_check: {len(names)} models, {failures} failed: "
          f"{'FAILED' if failures else 'PASSED'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
