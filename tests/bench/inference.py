#!/usr/bin/python3
"""Inference throughput and latency on the CPU: Loom's inference artifacts
(loomc --mode=infer, loom-run --infer) against PyTorch's FP32 inference of
the same model in the same run.

Configurations: the MLP at -Dhidden=1024, batch 256 (GEMM-bound), and the
samples as they are (samples/mlp.loom, samples/cnn.loom, samples/gpt.loom)
at batch 1 and 64.

- Loom: `loom-run X.loomx --infer --steps=N --threads=T --metrics=m.jsonl`
  (one untimed warm-up call, then N timed calls of the evaluation step:
  forward, loss and accuracy statistics; the held-out batches, or the
  training split's where the held-out one is less than a batch); its
  metrics give samples/s (batch · calls / the sum of call times) and the
  p50/p99 call latency (nearest rank).
- PyTorch 1.13 (this interpreter): tests/parity/twins.py's twin under
  torch.inference_mode(), loss (and the argmax, as Loom computes accuracy)
  on pre-built batches of the same shapes, torch.set_num_threads(T), one
  warm-up call then N timed calls, time.perf_counter around each.

- Loom INT8: `loomc --mode=infer --quantize=ptq-int8` (every matmul of an
  activation by a weight and every conv2d in INT8, batch norms folded;
  the GPT's attention, norms and softmax stay FP32), `loom-run Q.loomx
  --calibrate=4 --save=q.safetensors`, then `loom-run Q.loomx --infer
  --init-from=q.safetensors` as above; INT8/FP32 is the throughput ratio.

Weights: random, of the manifest's initialisers' distributions (they do not
change the work; Loom's runs use its own seeded initialisation). Both sides
run with OMP_WAIT_POLICY=PASSIVE (see train_throughput.py). A benchmark,
not a test: it asserts nothing and is not part of scripts/test.

usage: inference.py [--loomc PATH] [--loom-run PATH] [--threads T]
                    [--calls N] [--configs mlp1024-b256,mlp-b1,...]
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

# name: (sample, defines, data)
CONFIGS = {
    "mlp1024-b256": ("samples/mlp.loom", ["-Dhidden=1024", "-Dbatch=256"],
                     "samples/data/digits.bin"),
    "mlp-b1": ("samples/mlp.loom", ["-Dbatch=1"], "samples/data/digits.bin"),
    "mlp-b64": ("samples/mlp.loom", ["-Dbatch=64"], "samples/data/digits.bin"),
    "cnn-b1": ("samples/cnn.loom", ["-Dbatch=1"], "samples/data/digits.bin"),
    "cnn-b64": ("samples/cnn.loom", ["-Dbatch=64"], "samples/data/digits.bin"),
    "gpt-b1": ("samples/gpt.loom", ["-Dbatch=1"], "samples/data/text.bin"),
    "gpt-b64": ("samples/gpt.loom", ["-Dbatch=64"], "samples/data/text.bin"),
}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loomc", default=os.path.join(SRC, "build", "bin", "loomc"))
    ap.add_argument("--loom-run", default=os.path.join(SRC, "build", "bin", "loom-run"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--calls", type=int, default=200, help="timed calls per side")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--workdir")
    return ap.parse_args()


ARGS = parse_args()
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = str(ARGS.threads)
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
sys.path.insert(0, os.path.join(SRC, "tests", "parity"))

import torch  # noqa: E402

import artifact  # noqa: E402
import data  # noqa: E402
import twins  # noqa: E402


def percentile(sorted_values, p):
    k = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[min(len(sorted_values), int(k)) - 1]


def loom_infer(loomx, datap, workdir, extra=()):
    metrics = os.path.join(workdir, "infer.metrics.jsonl")
    subprocess.run([ARGS.loom_run, loomx, "--infer", f"--data={datap}",
                    f"--steps={ARGS.calls}", f"--threads={ARGS.threads}",
                    f"--metrics={metrics}", *extra], check=True,
                   stdout=subprocess.DEVNULL)
    with open(metrics) as f:
        m = json.loads(f.readline())
    return m["samples_per_s"], m["latency_p50_ms"], m["latency_p99_ms"]


def torch_infer(model, weights, batch):
    twin = twins.make_twin(model, weights)
    b = {k: torch.as_tensor(v) for k, v in batch.items()}
    size = next(iter(b.values())).shape[0]
    with torch.inference_mode():
        for p in twin.params.values():
            p.requires_grad_(False)

        def call():
            if model.name == "Mlp":
                p = twin.params
                h = torch.relu(b["x"] @ p["w1"] + p["b1"])
                logits = h @ p["w2"] + p["b2"]
                loss = torch.nn.functional.cross_entropy(logits, b["y"].long())
                return loss, logits.argmax(-1)
            if model.name == "Cnn":
                logits = twin.logits(b["x"], training=False)
                loss = torch.nn.functional.cross_entropy(logits, b["y"].long())
                return loss, logits.argmax(-1)
            logits = twin.forward_logits(b["tokens"].long())
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, twin.vocab), b["targets"].reshape(-1).long())
            return loss, logits.argmax(-1)

        call()
        times = []
        for _ in range(ARGS.calls):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    s = sorted(times)
    return size * len(times) / sum(times), 1e3 * percentile(s, 50), 1e3 * percentile(s, 99)


def main():
    torch.set_num_threads(ARGS.threads)
    print(f"bench: {ARGS.threads} threads (this machine: {os.cpu_count()} cores, load "
          f"average {os.getloadavg()[0]:.2f}); torch {torch.__version__}; "
          f"{ARGS.calls} timed calls a side after one warm-up")
    rows = []
    with tempfile.TemporaryDirectory(prefix="loom-infer-") as tmp:
        workdir = ARGS.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        for name in [c for c in ARGS.configs.split(",") if c]:
            sample, defines, datarel = CONFIGS[name]
            datap = os.path.join(SRC, datarel)
            loomx = os.path.join(workdir, f"{name}.loomx")
            subprocess.run([ARGS.loomc, os.path.join(SRC, sample), *defines,
                            "--mode=infer", "-o", loomx], check=True)
            model = artifact.load_model(loomx)
            weights = twins.random_weights(model)
            batch = data.Loader(data.Dataset(datap), model.inputs).batches(1)[0]
            lt, l50, l99 = loom_infer(loomx, datap, workdir)
            int8 = ("-", "-", "-")
            if True:  # every sample has an INT8 artifact
                qx = os.path.join(workdir, f"{name}.int8.loomx")
                qw = os.path.join(workdir, f"{name}.q.safetensors")
                subprocess.run([ARGS.loomc, os.path.join(SRC, sample), *defines,
                                "--mode=infer", "--quantize=ptq-int8", "-o", qx],
                               check=True)
                subprocess.run([ARGS.loom_run, qx, f"--data={datap}", "--calibrate=4",
                                f"--save={qw}", f"--threads={ARGS.threads}"],
                               check=True, stdout=subprocess.DEVNULL)
                qt, q50, q99 = loom_infer(qx, datap, workdir, [f"--init-from={qw}"])
                int8 = (f"{qt:,.0f}", f"{q99:.3f}", f"{qt / lt:.2f}")
            tt, t50, t99 = torch_infer(model, weights, batch)
            rows.append((name, f"{lt:,.0f}", f"{l50:.3f}", f"{l99:.3f}", *int8,
                         f"{tt:,.0f}", f"{t50:.3f}", f"{t99:.3f}", f"{lt / tt:.2f}"))
            print(f"  {name}: Loom {lt:,.0f} samples/s (p99 {l99:.3f} ms), INT8 "
                  f"{int8[0]} samples/s, PyTorch {tt:,.0f} samples/s (p99 "
                  f"{t99:.3f} ms)", flush=True)
    head = ("config", "Loom FP32 samples/s", "p50 ms", "p99 ms",
            "Loom INT8 samples/s", "INT8 p99 ms", "INT8/FP32",
            "PyTorch FP32 samples/s", "p50 ms", "p99 ms", "Loom FP32/PyTorch")
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(" --- " for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
