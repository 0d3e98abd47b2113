#!/usr/bin/python3
"""Data parallelism on the CPU: dp=2 under mpirun against the single-rank run.

For each sample (samples/mlp.loom, samples/gpt.loom at their default sizes,
same global batch):

- throughput: `loom-run` on one rank with T threads (T = 1 and T = 2), and
  `mpirun -np 2 loom-run` of the dp=2 artifact with one thread per rank (the
  same 2 cores as one rank with 2 threads); samples/s = global batch / the
  median step_ms of the timed steps (after --warmup), best of --repeats;
- communication: every collective of the dp=2 step as `loomc --report=json`
  lists it (payload, bytes a rank sends under the ring model), the runtime's
  measured payload per step (`--log-dir` comm_bytes of rank 0), and the ring
  all-reduce model 2(n-1)/n * S for S = the gradient bytes;
- memory: the per-rank arena `loomc --report` predicts against the measured
  peak RSS of each rank (RSS also holds the runtime's code, libraries and MPI
  buffers: the difference is printed, not hidden).

A benchmark, not a test: it prints figures and asserts nothing.

usage: dp_scaling.py [--loomc PATH] [--loom-run PATH] [--steps N]
                     [--warmup W] [--repeats R] [--models mlp,gpt] [--zero]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMP_WAIT_POLICY="passive")
# The samples' default global batches (`batch = ...` in each model).
SAMPLES_BATCH = {"mlp": 64, "gpt": 16}
SAMPLES = {
    "mlp": ("samples/mlp.loom", "samples/data/digits.bin", 1),
    "gpt": ("samples/gpt.loom", "samples/data/text.bin", 64),  # tokens per sample = seq
}


def run(cmd, **kw):
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def median_ms(metrics, warmup):
    steps = [json.loads(l) for l in open(metrics)]
    return statistics.median(s["step_ms"] for s in steps[warmup:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loomc", default=os.path.join(ROOT, "build/bin/loomc"))
    ap.add_argument("--loom-run", default=os.path.join(ROOT, "build/bin/loom-run"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="mlp,gpt")
    ap.add_argument("--zero", action="store_true", help="also dp=2 with ZeRO-1")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="loom-dp-bench-")
    for name in a.models.split(","):
        src, data, tokens = SAMPLES[name]
        src, data = os.path.join(ROOT, src), os.path.join(ROOT, data)
        one, two = os.path.join(tmp, f"{name}1.loomx"), os.path.join(tmp, f"{name}2.loomx")
        run([a.loomc, src, "-o", one])
        run([a.loomc, src, "--mesh=dp=2", "-o", two])
        rep = json.loads(run([a.loomc, src, "--mesh=dp=2", "--report=json"]))
        rep1 = json.loads(run([a.loomc, src, "--report=json"]))
        common = ["--data=" + data, f"--steps={a.steps}", "--eval-every=0"]
        best = {}
        configs = [("1 rank, 1 thread", [a.loom_run, one, "--threads=1"]),
                   ("1 rank, 2 threads", [a.loom_run, one, "--threads=2"]),
                   ("dp=2, 1 thread/rank", ["mpirun", "-np", "2", a.loom_run, two, "--threads=1"])]
        if a.zero:
            z = os.path.join(tmp, f"{name}2z.loomx")
            run([a.loomc, src, "--mesh=dp=2", "--zero=1", "-o", z])
            configs.append(("dp=2 ZeRO-1, 1 thread/rank",
                            ["mpirun", "-np", "2", a.loom_run, z, "--threads=1"]))
        logs = os.path.join(tmp, f"{name}-logs")
        for rep_i in range(a.repeats):
            for label, cmd in configs:
                m = os.path.join(tmp, f"{name}-{len(best)}-{rep_i}.jsonl")
                extra = [f"--log-dir={logs}"] if label.startswith("dp=2,") else []
                run(cmd + common + [f"--metrics={m}"] + extra)
                ms = median_ms(m, a.warmup)
                best[label] = min(best.get(label, ms), ms)
                if label == "1 rank, 1 thread":
                    rss1 = max(json.loads(l)["mem_peak_bytes"] for l in open(m))
        batch = SAMPLES_BATCH[name]
        print(f"\n== {name}: global batch {batch}, {a.steps} steps ({a.warmup} warm-up), "
              f"median step, best of {a.repeats}")
        base1, base2 = best["1 rank, 1 thread"], best["1 rank, 2 threads"]
        for label, _ in configs:
            ms = best[label]
            sps = batch / ms * 1000
            print(f"  {label:28s} {ms:8.2f} ms/step  {sps:10.1f} samples/s  "
                  f"({tokens * sps:10.0f} tokens/s)  x{base1 / ms:4.2f} vs 1 thread, "
                  f"x{base2 / ms:4.2f} vs 2 threads")
        # Communication.
        r0 = rep["ranks"][0]
        # S: the gradient bytes (one f32 per parameter element).
        grads = int(run([a.loom_run, one, "--describe"]).split(" elements")[0]
                    .rsplit("tensors, ", 1)[1].replace(",", "")) * 4
        n = 2
        print(f"  communication per step and rank (dp=2), compiled: "
              f"{len(rep['collectives'])} collectives, payload {r0['comm_payload_bytes_per_step']} B, "
              f"sends {r0['comm_bytes_per_step']} B")
        for c in rep["collectives"]:
            print(f"    {c['kind']:20s} over {c['axis']}: payload {c['payload_bytes']:10d} B, "
                  f"sends {c['sent_bytes']:10d} B  ({c['cause'][:70]})")
        measured = []
        for line in open(os.path.join(logs, "rank-0.log")):
            if line.startswith("step="):
                kv = dict(x.split("=") for x in line.split())
                measured.append(int(kv["comm_bytes"]))
        ring = 2 * (n - 1) / n * grads
        print(f"  measured payload per step (runtime): {statistics.median(measured):.0f} B; "
              f"gradients S = {grads} B, ring all-reduce model 2(n-1)/n*S = {ring:.0f} B sent "
              f"per rank; payload/S = {statistics.median(measured) / grads:.4f}")
        # Memory.
        peaks = []
        for r in range(2):
            peak = 0
            for line in open(os.path.join(logs, f"rank-{r}.log")):
                if line.startswith("step="):
                    kv = dict(x.split("=") for x in line.split())
                    peak = max(peak, int(kv["peak_rss"]))
            peaks.append(peak)
        plan = r0["memory"]["peak"]
        plan1 = rep1["ranks"][0]["memory"]["peak"]
        print(f"  memory per rank: predicted arena {plan / 2**20:.2f} MiB (one rank: {plan1 / 2**20:.2f} MiB); "
              f"measured peak RSS {', '.join(f'{p / 2**20:.1f}' for p in peaks)} MiB "
              f"(RSS - arena = {(max(peaks) - plan) / 2**20:.1f} MiB of code, libraries, MPI); "
              f"one rank: arena {plan1 / 2**20:.2f} MiB, peak RSS {rss1 / 2**20:.1f} MiB "
              f"(RSS - arena = {(rss1 - plan1) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
