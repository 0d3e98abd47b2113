#!/usr/bin/python3
"""Training throughput on the CPU: Loom (loom-run) vs its PyTorch twin.

For each sample at its default size (samples/mlp.loom, samples/gpt.loom;
and, with --gpt2-small, a GPT-2-small-shaped GPT at batch 1), with the same
batch and the same thread count:

- compile time: wall time of `loomc SAMPLE -o X.loomx` (DSL -> artifact);
- Loom: `loom-run X.loomx --steps=W+N --threads=T --metrics=m.jsonl`; the
  step times are the metrics' step_ms of steps W+1..W+N (data loading + the
  train_step program);
- PyTorch: tests/parity/twins.py's twin (weights [in, out], AdamW with two
  parameter groups, the same schedule and clipping), torch.set_num_threads(T)
  and OpenBLAS with T threads; W warm-up steps, then N steps on pre-built
  batches (the batches Loom sees), time.perf_counter around each full step
  (forward, backward, clipping, optimizer, scheduler).

Throughput = items per step / the median step time of a run's timed steps,
the best of --repeats runs (items: samples for the MLP, batch * seq tokens
for the GPT); the two sides alternate. The mean over all timed steps is
printed too. Median and best-of are the robust figures on a shared machine,
where a preempted OpenMP thread stalls a whole step at its next barrier.
Both sides run with the same OMP_WAIT_POLICY (--wait-policy, default
passive): with spinning waits on 2 busy cores, Loom's GPT step and PyTorch's
(libgomp's workers spinning next to OpenBLAS's pthreads) were 10x slower.
This is a benchmark, not a test: it asserts nothing and is
not part of scripts/test.

usage: train_throughput.py [--loomc PATH] [--loom-run PATH] [--threads T]
                           [--repeats R] [--models mlp,gpt] [--gpt2-small]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loomc", default=os.path.join(SRC, "build", "bin", "loomc"))
    ap.add_argument("--loom-run", default=os.path.join(SRC, "build", "bin", "loom-run"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for both (default: all cores)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="mlp,gpt",
                    help="comma-separated: mlp, gpt, gpt2s")
    ap.add_argument("--gpt2-small", action="store_true",
                    help="also a GPT-2-small-shaped GPT (12 layers, d 768, 12 heads, "
                         "seq 1024, vocab 50304, batch 1): slow")
    ap.add_argument("--torch-foreach", choices=["on", "off"], default="on",
                    help="AdamW's foreach implementation for the twin (default on)")
    ap.add_argument("--wait-policy", choices=["passive", "active", "default"],
                    default="passive",
                    help="OMP_WAIT_POLICY for both sides (default passive: on a "
                         "small shared machine, spinning OpenMP threads, and in "
                         "PyTorch libgomp's next to OpenBLAS's, slow steps 10x)")
    ap.add_argument("--workdir")
    return ap.parse_args()


ARGS = parse_args()
# Thread pools are sized when the libraries load: set them first.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = str(ARGS.threads)
# The same OpenMP wait policy for loom-run (inherits the environment) and
# for PyTorch (libgomp reads it when torch loads).
if ARGS.wait_policy == "default":
    os.environ.pop("OMP_WAIT_POLICY", None)
else:
    os.environ["OMP_WAIT_POLICY"] = ARGS.wait_policy.upper()
sys.path.insert(0, os.path.join(SRC, "tests", "parity"))

import torch  # noqa: E402

import artifact  # noqa: E402
import data  # noqa: E402
import philox  # noqa: E402
import twins  # noqa: E402

# name: (sample, defines, data, warm-up steps, timed steps)
CONFIGS = {
    "mlp": ("samples/mlp.loom", [], "samples/data/digits.bin", 100, 1000),
    "gpt": ("samples/gpt.loom", [], "samples/data/text.bin", 5, 40),
    "gpt2s": ("samples/gpt.loom",
              ["-Dvocab=50304", "-Dd=768", "-Dheads=12", "-Dlayers=12",
               "-Dseq=1024", "-Dbatch=1"], "samples/data/text.bin", 1, 3),
}


def config_text(model):
    """The sizes, read back from the manifest."""
    sh = {n: s for n, s, _, _ in model.params}
    b = next(iter(model.inputs.values()))[0]
    if model.name == "Mlp":
        return f"batch {b}, hidden {sh['w1'][1]}"
    layers = sum(1 for n in sh if n.endswith(".wq"))
    return (f"batch {b}, seq {sh['wpe'][0]}, d {sh['wte'][1]}, heads "
            f"{sh['layers.0.wg'][0]}, layers {layers}, vocab {sh['wte'][0]}")


def items_per_step(model):
    b = next(iter(model.inputs.values()))
    return b[0] * (b[1] if model.name == "Gpt" else 1)


def loom_step_times(loomx, datap, warm, n, items, workdir):
    metrics = os.path.join(workdir, "bench.metrics.jsonl")
    subprocess.run([ARGS.loom_run, loomx, f"--data={datap}", f"--steps={warm + n}",
                    f"--threads={ARGS.threads}", f"--metrics={metrics}",
                    "--eval-batches=1"],
                   check=True, stdout=subprocess.DEVNULL)
    with open(metrics) as f:
        m = [json.loads(line) for line in f]
    return [x["step_ms"] / 1e3 for x in m[warm:warm + n]]


def torch_step_times(model, weights, batches, warm, n, items):
    twin = twins.make_twin(model, weights)
    trainer = twins.Trainer(twin, foreach=ARGS.torch_foreach == "on")
    tb = [{k: torch.as_tensor(v) for k, v in b.items()} for b in batches]
    for b in tb[:warm]:
        trainer.step(b)
    times = []
    for b in tb[warm:warm + n]:
        t0 = time.perf_counter()
        trainer.step(b)
        times.append(time.perf_counter() - t0)
    return times


def blas_info():
    cfg = torch.__config__.show()
    blas = next((l.split("BLAS_INFO=")[1].split(",")[0] for l in cfg.splitlines()
                 if "BLAS_INFO=" in l), "?")
    lib = "?"
    try:
        with open(f"/proc/{os.getpid()}/maps") as f:
            libs = {l.split()[-1] for l in f if "blas" in l.lower()}
        lib = ", ".join(sorted(os.path.realpath(x) for x in libs)) or "none loaded"
    except OSError:
        pass
    return blas, lib


def gemm_gflops(threads, n=1024, reps=5):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def main():
    torch.set_num_threads(ARGS.threads)
    names = [x for x in ARGS.models.split(",") if x]
    if ARGS.gpt2_small and "gpt2s" not in names:
        names.append("gpt2s")
    blas, lib = blas_info()
    print(f"bench: {ARGS.threads} threads (this machine: {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}); torch {torch.__version__}, "
          f"BLAS_INFO={blas}, BLAS library loaded: {lib}; torch 1024^3 fp32 GEMM "
          f"{gemm_gflops(ARGS.threads):.0f} GFLOP/s; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')} for both")
    print("throughput = items per step / the median step time of the timed steps, "
          "best of the repeats; the mean-based column divides by the mean step time "
          "of all timed steps (sensitive to preemption on a shared machine)")
    sys.stdout.flush()
    rows = []
    with tempfile.TemporaryDirectory(prefix="loom-bench-") as tmp:
        workdir = ARGS.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        for name in names:
            sample, defines, datarel, warm, n = CONFIGS[name]
            datap = os.path.join(SRC, datarel)
            loomx = os.path.join(workdir, f"{name}.loomx")
            t0 = time.perf_counter()
            subprocess.run([ARGS.loomc, os.path.join(SRC, sample), *defines, "-o", loomx],
                           check=True)
            compile_s = time.perf_counter() - t0
            model = artifact.load_model(loomx)
            items = items_per_step(model)
            weights = twins.random_weights(model)
            loader = data.Loader(data.Dataset(datap), model.inputs)
            batches = loader.batches(warm + n)
            unit = "tokens/s" if model.name == "Gpt" else "samples/s"
            lmeds, tmeds, lall, tall = [], [], [], []
            for r in range(ARGS.repeats):
                lt = loom_step_times(loomx, datap, warm, n, items, workdir)
                tt = torch_step_times(model, weights, batches, warm, n, items)
                lmeds.append(statistics.median(lt))
                tmeds.append(statistics.median(tt))
                lall += lt
                tall += tt
                print(f"  {name} run {r + 1}: median step Loom {1e3 * lmeds[-1]:.3f} ms, "
                      f"PyTorch {1e3 * tmeds[-1]:.3f} ms", flush=True)
            lbest, tbest = items / min(lmeds), items / min(tmeds)
            lmean, tmean = items / statistics.mean(lall), items / statistics.mean(tall)
            rows.append((f"{name}", config_text(model), f"{warm}+{n}, x{ARGS.repeats}",
                         f"{lbest:,.0f} {unit}", f"{tbest:,.0f} {unit}", f"{lbest / tbest:.2f}",
                         f"{lmean:,.0f} / {tmean:,.0f} ({lmean / tmean:.2f})",
                         f"{compile_s:.1f}"))

    head = ("model", "config", "steps (warm-up+timed)", "Loom", "PyTorch",
            "Loom/PyTorch", "mean-based Loom / PyTorch (ratio)", "loomc s")
    w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{x}}}" for x in w)
    print()
    print(fmt.format(*head))
    print("  ".join("-" * x for x in w))
    for r in rows:
        print(fmt.format(*r))
    print()
    print(f"Markdown ({ARGS.threads} threads, fp32, best-of-runs median step time):")
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(" --- " for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
