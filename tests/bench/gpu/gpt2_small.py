#!/usr/bin/env python3
"""GPT-2-small training throughput on one GPU: Loom vs PyTorch (eager and
torch.compile), with the GEMM rates behind them and the MFU of each.

Run on the GPU machine from the repository root, after configuring and
building the runtime alone (`cmake -S runtime -B build-gpu`, as
tests/gpu/run.sh does) and compiling samples/gpt.loom for CUDA elsewhere:

    loomc samples/gpt.loom -Dvocab=50304 -Dd=768 -Dheads=12 -Dlayers=12 \\
        -Dseq=1024 -Dbatch=16 --precision=bf16 --target=cuda -o gpt2s.cuda.loomx
    python3 tests/bench/gpu/gpt2_small.py --artifact gpt2s.cuda.loomx \\
        --compile-seconds 41.5 [--loom-gemm-bench PATH] \\
        [--out tests/bench/gpu/RESULTS.md] [--json results.json]

The sizes (--layers --d --heads --seq --vocab --batch) must be the ones the
artifact was compiled with; the Loom row checks batch * seq against the
tokens per step its metrics imply.

What runs, in this order:

1. Loom: a synthetic token stream (Loom's .bin format, runtime/README.md
   "Datasets": kind 2, one rank-0 field `tokens`, u16 when vocab <= 65536,
   uniform random tokens < vocab, at least 4M of them and twice what the run
   reads) is written to a scratch folder, then
   `loom-run ART --data=F --steps=W+N --metrics=M.jsonl --eval-batches=0`
   runs with NCCL_NVLS_ENABLE=0. Its step times are the metrics' step_ms of
   steps W+1..W+N (data loading plus the train_step program). Memory: the
   largest mem_peak_bytes, which is loom-run's peak *host* resident memory
   (getrusage), and the device arena that `loom-run --describe` reports
   (allocated on the GPU once; cuBLAS workspaces come on top). A failed run
   (exit status, timeout, missing metrics) marks the row failed and prints
   loom-run's output tail.
2. PyTorch eager: a twin of samples/gpt.loom (weights [in, out] as in Loom,
   no biases on wq/wk/wv/wo, gated attention as SEMANTICS.md defines it with
   F.scaled_dot_product_attention(is_causal=True) for the softmax(QK^T)V
   part, GELU tanh, layer norm eps 1e-5, untied head, mean cross-entropy),
   fp32 master weights under torch.autocast(bfloat16), AdamW(lr 3e-4,
   betas (0.9, 0.999), eps 1e-8, weight decay 0.1 on parameters of rank >= 2
   only, as SEMANTICS.md says Loom does; fused when available), global-norm
   clipping at 1.0, a constant learning rate. Batches are random tokens made
   on the device before the timed loop. Each step (forward, backward,
   clipping, optimizer) is timed with time.perf_counter between two
   torch.cuda.synchronize() calls; the first W steps are warm-up.
3. PyTorch torch.compile: the same on a fresh model wrapped in
   torch.compile(model) (the optimizer is not compiled). Its compile time is
   the wall time of the first compiled step minus the eager median step.
   GPU memory is freed between the two runs.
4. GEMMs: torch.matmul in bf16 at the model's shapes (M = batch * seq
   tokens): for each weight [K, N] of the forward GEMM Y[M,N] = X[M,K] W,
   also dX = dY W^T and dW = X^T dY; plus a 8192^3 bf16 GEMM, "the bf16
   GEMM rate measured in this run". Median of 20 after 5 warm-ups, timed
   with CUDA events.

Throughput = batch * seq tokens per step / the median step time of the timed
steps (the mean is printed too). The losses are a sanity check only: on
uniform random tokens no model can go below ln(vocab), and Loom's train
block may warm its learning rate up where the twin does not.

MFU: FLOPs per token = 6 N + 12 L H Q T (the PaLM paper's estimate), with N
the count of *all* parameters of the model (embeddings wte and wpe and the
untied head included), L layers, H heads, Q = d / H the head dimension, T the
sequence length; MFU = tokens/s * FLOPs per token / peak, against the H200's
dense bf16 peak (989 TFLOP/s, --peak-tflops) and against the 8192^3 rate
measured here.

--loom-gemm-bench PATH: an executable timing Loom's GEMM path, run once per
GEMM shape as

    PATH M N K transA transB reps

It computes C[M,N] = op(A) op(B) with bf16 operands and fp32 accumulation,
row-major: op(A) is M x K, stored as A[M,K] when transA = 0 and as A[K,M]
(used transposed) when transA = 1; op(B) is K x N, stored as B[K,N] when
transB = 0 and as B[N,K] when transB = 1. It times `reps` runs after its own
warm-up and prints, on one line of stdout,

    TFLOPS <value>

with value = 2 M N K / (median seconds per GEMM) / 1e12. Any other line is
ignored; a non-zero exit status, a timeout or no such line leaves the cell
empty. The table then shows the ratio Loom / torch per shape.

For a check without a GPU: --device cpu with tiny sizes, e.g.
    tests/bench/gpu/gpt2_small.py --device cpu --skip-loom --skip-compile \\
        --layers 1 --d 32 --heads 2 --seq 16 --vocab 64 --batch 2 \\
        --steps 2 --warmup 1
(on the CPU the GEMMs are timed with time.perf_counter and the large GEMM
is --peak-size, default 256 there).

This is a benchmark, not a test: it asserts nothing (beyond its own
consistency) and is not part of scripts/test.
"""
import argparse
import array
import datetime
import gc
import json
import math
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "samples"))
import prepare_data  # noqa: E402  (the .bin encoder)

# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_args():
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", help="the model compiled for CUDA (.loomx)")
    ap.add_argument("--loom-run",
                    default=os.path.join(ROOT, "build-gpu", "tools", "loom-run",
                                         "loom-run"),
                    help="loom-run built with CUDA (default: build-gpu/tools/"
                         "loom-run/loom-run, where `cmake -S runtime -B build-gpu` "
                         "puts it)")
    ap.add_argument("--compile-seconds", type=float,
                    help="loomc's compile time of the artifact, measured where it "
                         "was compiled; reported as given")
    ap.add_argument("--loom-gemm-bench", metavar="PATH",
                    help="executable timing Loom's GEMM (interface: see the top "
                         "of this file)")
    size = ap.add_argument_group("model and run sizes (the artifact's)")
    size.add_argument("--layers", type=int, default=12)
    size.add_argument("--d", type=int, default=768)
    size.add_argument("--heads", type=int, default=12)
    size.add_argument("--seq", type=int, default=1024)
    size.add_argument("--vocab", type=int, default=50304)
    size.add_argument("--batch", type=int, default=16)
    size.add_argument("--steps", type=int, default=30, help="timed steps")
    size.add_argument("--warmup", type=int, default=5,
                      help="steps run first and left out of the timing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: a functional check of the PyTorch side only")
    ap.add_argument("--skip-loom", action="store_true")
    ap.add_argument("--skip-torch", action="store_true",
                    help="no PyTorch training run (eager nor compiled)")
    ap.add_argument("--skip-compile", action="store_true",
                    help="no torch.compile run")
    ap.add_argument("--skip-gemm", action="store_true", help="no GEMM table")
    ap.add_argument("--gemm-reps", type=int, default=20)
    ap.add_argument("--gemm-warmup", type=int, default=5)
    ap.add_argument("--peak-size", type=int,
                    help="n of the n^3 bf16 GEMM giving the measured rate "
                         "(default 8192; 256 on the CPU)")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the GPU's dense bf16 peak (default 989, H100/H200 SXM)")
    ap.add_argument("--loom-timeout", type=float, default=1800,
                    help="seconds before loom-run is stopped (default 1800)")
    ap.add_argument("--workdir", help="scratch folder for the dataset and the "
                    "metrics (default: a temporary one, removed at the end)")
    ap.add_argument("--out", metavar="FILE.md",
                    help="also append the results (Markdown) to FILE.md")
    ap.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    args = ap.parse_args()

    if args.d % args.heads:
        ap.error("--d must be a multiple of --heads")
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    if not args.skip_loom and not args.artifact:
        ap.error("--artifact is needed unless --skip-loom")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: PyTorch sees no CUDA device (use --device cpu "
                 "for a functional check)")
    if args.peak_size is None:
        args.peak_size = 8192 if args.device == "cuda" else 256
    return args


# ---------------------------------------------------------------------------
# Model arithmetic (shared by both sides, so Loom's row needs no torch model)
# ---------------------------------------------------------------------------


def parameter_count(a):
    """Every parameter of samples/gpt.loom: wte, wpe, the final norm, the
    untied head and, per layer, g1 b1 wq wk wv wg bg wo g2 b2 w1 c1 w2 c2."""
    d, h = a.d, a.heads
    per_layer = (2 * d            # g1, b1
                 + 4 * d * d      # wq, wk, wv, wo
                 + h * 2 * (d // h) + h  # wg, bg
                 + 2 * d          # g2, b2
                 + d * 4 * d + 4 * d  # w1, c1
                 + 4 * d * d + d)  # w2, c2
    return a.vocab * d + a.seq * d + 2 * d + d * a.vocab + a.layers * per_layer


def flops_per_token(a, n_params):
    """6 N for the parameters' forward and backward GEMMs plus the attention
    scores and values, 12 L H Q T (PaLM, appendix B; no causal halving)."""
    q = a.d // a.heads
    return 6 * n_params + 12 * a.layers * a.heads * q * a.seq


# ---------------------------------------------------------------------------
# Loom
# ---------------------------------------------------------------------------

def write_token_stream(path, count, vocab, seed):
    """A token stream of `count` uniform random tokens < vocab, in Loom's
    .bin format (written by samples/prepare_data.py's encoder)."""
    typecode, dtype = ("H", "u16") if vocab <= 1 << 16 else ("i", "i32")
    tokens = array.array(typecode, random.Random(seed).choices(range(vocab), k=count))
    if sys.byteorder == "big":
        tokens.byteswap()  # the format is little-endian
    with open(path, "wb") as f:
        f.write(prepare_data.encode(prepare_data.KIND_TOKENS, count,
                                    [("tokens", dtype, [], tokens.tobytes())], vocab))


def tail(text, chars=3000):
    text = text or ""
    return text if len(text) <= chars else "..." + text[-chars:]


def loom_env():
    env = dict(os.environ)
    # NVLink multicast stays off on shared machines (tests/gpu/run.sh).
    env["NCCL_NVLS_ENABLE"] = "0"
    return env


def new_row(name):
    return {"name": name, "ok": False, "error": None, "tokens_per_step": None,
            "tokens_per_s": None, "step_ms_median": None, "step_ms_mean": None,
            "loss_first": None, "loss_last": None, "peak_memory_bytes": None,
            "compile_s": None, "device_arena_bytes": None}


def describe_artifact(a):
    """The head of `loom-run --describe` (model, target, mesh, arena,
    parameter count), for the log; None when it fails."""
    try:
        r = subprocess.run([a.loom_run, a.artifact, "--describe"], env=loom_env(),
                           capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"loom-run --describe: {e}", file=sys.stderr)
        return None
    if r.returncode != 0:
        print(f"loom-run --describe failed ({r.returncode}):\n{tail(r.stderr)}",
              file=sys.stderr)
        return None
    return "\n".join(line for line in r.stdout.splitlines()
                     if not line.startswith("    "))  # drop the per-tensor lines


def read_loom_metrics(path, warmup, steps):
    """loom-run's --metrics file: every step's object in step order, those
    after `warmup`, and an error text when it cannot be read or holds fewer
    than warmup + steps steps (else None)."""
    try:
        with open(path) as f:
            rows = sorted((json.loads(line) for line in f if line.strip()),
                          key=lambda m: m["step"])
    except (OSError, ValueError, KeyError) as e:
        return [], [], f"unreadable metrics {path}: {e}"
    timed = [m for m in rows if m["step"] > warmup]
    if len(rows) < warmup + steps or len(timed) < steps:
        return rows, timed, f"metrics hold {len(rows)} steps, {warmup + steps} expected"
    return rows, timed, None


def summarize_loom_metrics(row, steps, timed):
    """Fills `row` from loom-run's metrics (`steps`: every step's object,
    `timed`: those after the warm-up): median and mean step time, tokens/s
    from row["tokens_per_step"], the losses, the peak host memory. Returns
    an error text when the tokens per step the runtime reports are not
    row["tokens_per_step"] (the sizes do not match the artifact), else
    None."""
    step_ms = [m["step_ms"] for m in timed]
    row["step_ms_median"] = statistics.median(step_ms)
    row["step_ms_mean"] = statistics.mean(step_ms)
    row["tokens_per_s"] = row["tokens_per_step"] / (row["step_ms_median"] / 1e3)
    row["losses"] = [m.get("loss") for m in steps]
    row["loss_first"], row["loss_last"] = row["losses"][0], row["losses"][-1]
    peaks = [m.get("mem_peak_bytes") for m in steps if m.get("mem_peak_bytes")]
    row["peak_memory_bytes"] = max(peaks) if peaks else None
    implied = [m["tokens_per_s"] * m["step_ms"] / 1e3 for m in timed
               if m.get("tokens_per_s") and m.get("step_ms")]
    if implied:
        got = statistics.median(implied)
        if abs(got - row["tokens_per_step"]) > 0.01 * row["tokens_per_step"]:
            return (f"the artifact trains {got:.0f} tokens per step, expected "
                    f"{row['tokens_per_step']}: the sizes do not match the artifact")
    return None


def run_loom(a, workdir):
    row = new_row("Loom")
    total = a.warmup + a.steps
    row["tokens_per_step"] = a.batch * a.seq
    if not os.access(a.loom_run, os.X_OK):
        row["error"] = f"no loom-run at {a.loom_run}"
        return row
    if not os.path.isfile(a.artifact):
        row["error"] = f"no artifact at {a.artifact}"
        return row

    described = describe_artifact(a)
    if described:
        print(described)
        arena = re.search(r"^\s*arena\s.*?\((\d+) bytes\)", described, re.M)
        row["device_arena_bytes"] = int(arena.group(1)) if arena else None

    # Windows are drawn from the first 90% (the rest is the held-out split):
    # twice the tokens the run reads keeps the count comfortably above that.
    count = max(4 << 20, 2 * total * a.batch * (a.seq + 1))
    data = os.path.join(workdir, "tokens.bin")
    start = time.perf_counter()
    write_token_stream(data, count, a.vocab, a.seed)
    print(f"dataset: {count} random tokens < {a.vocab} in {data} "
          f"({time.perf_counter() - start:.1f} s)")

    metrics = os.path.join(workdir, "loom-metrics.jsonl")
    if os.path.exists(metrics):
        os.remove(metrics)
    cmd = [a.loom_run, a.artifact, f"--data={data}", f"--steps={total}",
           f"--metrics={metrics}", f"--seed={a.seed}", "--eval-batches=0",
           f"--log-every={max(1, total // 5)}"]
    print("$ NCCL_NVLS_ENABLE=0 " + " ".join(cmd), flush=True)
    try:
        r = subprocess.run(cmd, env=loom_env(), capture_output=True, text=True,
                           timeout=a.loom_timeout)
    except subprocess.TimeoutExpired as e:
        row["error"] = f"timed out after {a.loom_timeout:.0f} s"
        print(f"loom-run: {row['error']}; output tail:\n"
              f"{tail(_text(e.stdout) + _text(e.stderr))}", file=sys.stderr)
        return row
    except OSError as e:
        row["error"] = f"cannot start loom-run: {e}"
        return row
    print(tail(r.stdout, 1500).rstrip())
    if r.returncode != 0:
        row["error"] = f"loom-run exit status {r.returncode}"
        print(f"loom-run failed ({r.returncode}); stderr tail:\n{tail(r.stderr)}",
              file=sys.stderr)
        return row

    steps, timed, error = read_loom_metrics(metrics, a.warmup, a.steps)
    if error:
        row["error"] = error
        print(f"{row['error']}; loom-run stderr tail:\n{tail(r.stderr)}",
              file=sys.stderr)
        return row

    error = summarize_loom_metrics(row, steps, timed)
    if error:
        row["error"] = error
        return row
    row["ok"] = True
    return row


def _text(b):
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b


# ---------------------------------------------------------------------------
# The PyTorch twin of samples/gpt.loom
# ---------------------------------------------------------------------------


def _reference_attention(q, k, v):
    """softmax(q k^T / sqrt(dk) + causal mask) v, for a PyTorch without
    F.scaled_dot_product_attention (before 2.0): the CPU check only."""
    t = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1).to(v.dtype) @ v


causal_attention = (
    (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    if hasattr(F, "scaled_dot_product_attention") else _reference_attention)


def split_heads(x, heads):
    """[B, T, D] -> [B, H, T, D/H], head-major channels (SEMANTICS.md)."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def merge_heads(x):
    b, h, t, q = x.shape
    return x.transpose(1, 2).reshape(b, t, h * q)


def gated_attention(q, k, v, wg, bg):
    """SEMANTICS.md: g[b,h,t] = sigmoid([q;k][b,h,t,:] . wg[h,:] + bg[h]),
    out = g * softmax(q k^T / sqrt(dk), causal) v."""
    dk = q.shape[-1]
    gate = torch.sigmoid(torch.einsum("bhtj,hj->bht", q, wg[:, :dk])
                         + torch.einsum("bhtj,hj->bht", k, wg[:, dk:])
                         + bg[:, None])
    a = causal_attention(q, k, v)
    return gate.unsqueeze(-1).to(a.dtype) * a


def _normal(shape, std):
    return nn.Parameter(torch.randn(*shape) * std)


class Decoder(nn.Module):
    """samples/gpt.loom's Decoder: pre-norm gated attention, then a GELU MLP.
    Weights are [in, out] (y = x @ w), with the DSL's parameter names."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        dk = d // heads
        self.g1, self.b1 = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
        self.wq, self.wk, self.wv = (_normal((d, d), 0.02) for _ in range(3))
        self.wg = _normal((heads, 2 * dk), 0.02)
        self.bg = nn.Parameter(torch.zeros(heads))
        self.wo = _normal((d, d), 0.02)
        self.g2, self.b2 = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
        self.w1, self.c1 = _normal((d, 4 * d), 0.02), nn.Parameter(torch.zeros(4 * d))
        self.w2, self.c2 = _normal((4 * d, d), 0.02), nn.Parameter(torch.zeros(d))

    def forward(self, x):
        d = x.shape[-1]
        h = F.layer_norm(x, (d,), self.g1, self.b1, eps=1e-5)
        a = gated_attention(split_heads(h @ self.wq, self.heads),
                            split_heads(h @ self.wk, self.heads),
                            split_heads(h @ self.wv, self.heads), self.wg, self.bg)
        x = x + merge_heads(a) @ self.wo
        h = F.layer_norm(x, (d,), self.g2, self.b2, eps=1e-5)
        return x + F.gelu(h @ self.w1 + self.c1, approximate="tanh") @ self.w2 + self.c2


class Gpt(nn.Module):
    """samples/gpt.loom's Gpt; forward returns the mean cross-entropy, so that
    torch.compile sees the loss too."""

    def __init__(self, a):
        super().__init__()
        self.wte = _normal((a.vocab, a.d), 0.02)
        self.wpe = _normal((a.seq, a.d), 0.01)
        self.layers = nn.ModuleList(Decoder(a.d, a.heads) for _ in range(a.layers))
        self.gf, self.bf = nn.Parameter(torch.ones(a.d)), nn.Parameter(torch.zeros(a.d))
        self.head = _normal((a.d, a.vocab), 0.02)

    def forward(self, tokens, targets):
        x = F.embedding(tokens, self.wte) + self.wpe
        for layer in self.layers:
            x = layer(x)
        logits = F.layer_norm(x, (x.shape[-1],), self.gf, self.bf, eps=1e-5) @ self.head
        # autocast runs cross_entropy in fp32 on the bf16 logits.
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def make_adamw(model):
    """AdamW as Loom's: decay on rank >= 2 parameters only (two groups)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=3e-4, betas=(0.9, 0.999), eps=1e-8)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs), "fused"
    except (TypeError, RuntimeError):  # no fused AdamW here (old torch, device)
        return torch.optim.AdamW(groups, **kwargs), "default"


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(model, forward, optimizer, device, vocab, batch, seq, total, seed):
    """Runs `total` training steps of `forward` (the model, or its compiled
    or DistributedDataParallel wrapper) on random tokens made up front on the
    device (none inside the timing): bf16 autocast, backward, clipping at
    1.0, the optimizer. Returns each step's seconds (between two device
    synchronisations) and its loss (a tensor). Resets the peak memory
    statistics first."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    windows = torch.randint(vocab, (total, batch, seq + 1), device=device,
                            generator=gen)
    inputs, targets = windows[..., :-1].contiguous(), windows[..., 1:].contiguous()
    del windows

    def step(i):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(inputs[i], targets[i])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, losses = [], []
    for i in range(total):
        synchronize(device)
        start = time.perf_counter()
        losses.append(step(i))
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds, losses


def train_torch(a, device, compiled):
    """One training run of the twin; returns its row. Raises on failure."""
    row = new_row("PyTorch torch.compile" if compiled else "PyTorch eager")
    if compiled and not hasattr(torch, "compile"):
        raise RuntimeError(f"torch.compile is not in torch {torch.__version__}")
    torch.manual_seed(a.seed)
    model = Gpt(a).to(device)
    n = sum(p.numel() for p in model.parameters())
    if n != parameter_count(a):
        raise AssertionError(f"the twin has {n} parameters, parameter_count() "
                             f"says {parameter_count(a)}")
    optimizer, kind = make_adamw(model)
    forward = torch.compile(model) if compiled else model
    print(f"{row['name']}: {n} parameters, AdamW {kind}, attention "
          f"{'SDPA' if causal_attention is not _reference_attention else 'reference'}",
          flush=True)

    seconds, losses = timed_steps(model, forward, optimizer, device, a.vocab,
                                  a.batch, a.seq, a.warmup + a.steps, a.seed)
    timed_ms = [s * 1e3 for s in seconds[a.warmup:]]
    row["tokens_per_step"] = a.batch * a.seq
    row["step_ms_median"] = statistics.median(timed_ms)
    row["step_ms_mean"] = statistics.mean(timed_ms)
    row["tokens_per_s"] = row["tokens_per_step"] / (row["step_ms_median"] / 1e3)
    row["loss_first"], row["loss_last"] = losses[0].item(), losses[-1].item()
    row["first_step_ms"] = seconds[0] * 1e3
    if device.type == "cuda":
        row["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    row["ok"] = True
    return row


def free_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(e):
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(e, oom)) or "out of memory" in str(e)


def run_torch(a, device, compiled):
    """train_torch with failures (out of memory included) kept to the row.
    The model dies with train_torch's frame; the exception, which holds that
    frame, is dropped before the memory is freed."""
    name = "PyTorch torch.compile" if compiled else "PyTorch eager"
    row = None
    try:
        row = train_torch(a, device, compiled)
    except Exception as e:  # noqa: BLE001 - any failure becomes the row's
        row = new_row(name)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        row["error"] = ("out of memory: " if is_oom(e) else
                        f"{type(e).__name__}: ") + first[:200]
        print(f"{name} failed:\n{tail(traceback.format_exc())}", file=sys.stderr)
    if compiled and hasattr(torch, "_dynamo"):
        torch._dynamo.reset()
    free_memory(device)
    return row


# ---------------------------------------------------------------------------
# GEMMs
# ---------------------------------------------------------------------------


def median_seconds(fn, device, warmup, reps):
    """Median time of fn over reps runs after warmup: CUDA events on the GPU,
    time.perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_shapes(a):
    """(label, M, N, K, transA, transB) of C[M,N] = op(A) op(B), for each
    weight [K, N] of the model: Y = X W, dX = dY W^T, dW = X^T dY."""
    m = a.batch * a.seq
    weights = [("wq/wk/wv/wo", a.d, a.d), ("w1", a.d, 4 * a.d),
               ("w2", 4 * a.d, a.d), ("head", a.d, a.vocab)]
    shapes = []
    for name, k, n in weights:
        shapes.append((f"{name} fwd Y = X W", m, n, k, 0, 0))
        shapes.append((f"{name} bwd dX = dY W^T", m, k, n, 0, 1))
        shapes.append((f"{name} bwd dW = X^T dY", k, n, m, 1, 0))
    return shapes


def torch_gemm_seconds(device, m, n, k, trans_a, trans_b, warmup, reps):
    """torch.matmul in bf16 on operands stored as the interface above says
    (a transposed operand is a transposed view, as autograd produces)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    a = torch.randn((k, m) if trans_a else (m, k), device=device, generator=gen,
                    dtype=torch.bfloat16)
    b = torch.randn((n, k) if trans_b else (k, n), device=device, generator=gen,
                    dtype=torch.bfloat16)
    a = a.t() if trans_a else a
    b = b.t() if trans_b else b
    try:
        return median_seconds(lambda: torch.matmul(a, b), device, warmup, reps)
    finally:
        del a, b
        free_memory(device)


def loom_gemm_tflops(path, m, n, k, trans_a, trans_b, reps):
    cmd = [path] + [str(v) for v in (m, n, k, trans_a, trans_b, reps)]
    try:
        r = subprocess.run(cmd, env=loom_env(), capture_output=True, text=True,
                           timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"{' '.join(cmd)}: {e}", file=sys.stderr)
        return None
    if r.returncode != 0:
        print(f"{' '.join(cmd)}: exit status {r.returncode}\n{tail(r.stderr, 800)}",
              file=sys.stderr)
        return None
    for line in r.stdout.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "TFLOPS":
            try:
                return float(words[1])
            except ValueError:
                break
    print(f"{' '.join(cmd)}: no 'TFLOPS <value>' line in its output", file=sys.stderr)
    return None


def run_gemms(a, device):
    """The per-shape table and the n^3 rate; a failure (say out of memory)
    empties the figures it concerns and goes on."""
    rows = []
    for label, m, n, k, ta, tb in gemm_shapes(a):
        row = {"gemm": label, "M": m, "N": n, "K": k, "transA": ta, "transB": tb,
               "torch_ms": None, "torch_tflops": None, "loom_tflops": None,
               "loom_over_torch": None}
        try:
            s = torch_gemm_seconds(device, m, n, k, ta, tb, a.gemm_warmup, a.gemm_reps)
            row["torch_ms"], row["torch_tflops"] = s * 1e3, 2 * m * n * k / s / 1e12
        except Exception as e:  # noqa: BLE001
            print(f"torch GEMM {label} failed: {e}", file=sys.stderr)
            free_memory(device)
        if a.loom_gemm_bench:
            row["loom_tflops"] = loom_gemm_tflops(a.loom_gemm_bench, m, n, k, ta, tb,
                                                  a.gemm_reps)
            if row["loom_tflops"] and row["torch_tflops"]:
                row["loom_over_torch"] = row["loom_tflops"] / row["torch_tflops"]
        rows.append(row)

    peak = None
    p = a.peak_size
    try:
        s = torch_gemm_seconds(device, p, p, p, 0, 0, a.gemm_warmup, a.gemm_reps)
        peak = 2 * p ** 3 / s / 1e12
    except Exception as e:  # noqa: BLE001
        print(f"torch GEMM {p}^3 failed: {e}", file=sys.stderr)
        free_memory(device)
    return rows, peak


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def fmt(x, spec, suffix=""):
    return "n/a" if x is None else format(x, spec) + suffix


def fmt_bytes(n):
    return "n/a" if n is None else f"{n / 2 ** 30:.2f} GiB"


def fmt_loss(x):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) \
        else f"{x:.4f}"


def add_ratios_and_mfu(rows, flops_tok, peak_989, peak_measured):
    by_name = {r["name"]: r for r in rows if r["ok"]}
    for r in rows:
        tps = r["tokens_per_s"] if r["ok"] else None
        for key, ref in (("vs_compile", "PyTorch torch.compile"),
                         ("vs_eager", "PyTorch eager")):
            r[key] = tps / by_name[ref]["tokens_per_s"] if tps and ref in by_name else None
        r["mfu_peak"] = tps * flops_tok / (peak_989 * 1e12) if tps else None
        r["mfu_measured"] = (tps * flops_tok / (peak_measured * 1e12)
                             if tps and peak_measured else None)


def report(a, info, rows, gemms, peak_measured, torch_compile_s):
    """The Markdown text: header, training table, GEMM table, compile times."""
    q = a.d // a.heads
    lines = [
        f"### GPT-2-small-shaped GPT, {info['date']}",
        "",
        f"- device: {info['device_name']}; torch {info['torch']} "
        f"(CUDA {info['cuda']}); loom-run: {info['loom_version'] or 'n/a'}",
        f"- model: {a.layers} layers, d {a.d}, {a.heads} heads (head dim {q}), "
        f"seq {a.seq}, vocab {a.vocab}; batch {a.batch} = {a.batch * a.seq} "
        f"tokens/step; {a.steps} timed steps after {a.warmup} warm-up; bf16",
        f"- N = {info['params']:,} parameters (all of them: wte, wpe and the "
        f"untied head included); FLOPs/token = 6N + 12·L·H·Q·T = "
        f"{info['flops_per_token'] / 1e9:.3f} GFLOP",
        f"- bf16 GEMM rate measured in this run ({a.peak_size}³ torch.matmul): "
        f"{fmt(peak_measured, '.1f', ' TFLOP/s')}; nominal peak {a.peak_tflops:g} TFLOP/s",
        "",
        "| run | tokens/s | step ms (median) | step ms (mean) | vs torch.compile "
        f"| vs eager | MFU ({a.peak_tflops:g}) | MFU (measured GEMM peak) "
        "| loss first → last | peak memory |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        memory = fmt_bytes(r["peak_memory_bytes"])
        if r["name"] == "Loom":
            memory = (f"arena {fmt_bytes(r['device_arena_bytes'])}, "
                      f"host RSS {memory}")
        if not r["ok"]:
            lines.append(f"| {r['name']} | failed: {r['error']} |" + " n/a |" * 8)
            continue
        lines.append(
            f"| {r['name']} | {r['tokens_per_s']:,.0f} | {r['step_ms_median']:.2f} "
            f"| {r['step_ms_mean']:.2f} | {fmt(r['vs_compile'], '.2f', 'x')} "
            f"| {fmt(r['vs_eager'], '.2f', 'x')} "
            f"| {fmt(r['mfu_peak'] and 100 * r['mfu_peak'], '.1f', '%')} "
            f"| {fmt(r['mfu_measured'] and 100 * r['mfu_measured'], '.1f', '%')} "
            f"| {fmt_loss(r['loss_first'])} → {fmt_loss(r['loss_last'])} "
            f"| {memory} |")
    lines += ["",
              "Peak memory: PyTorch, torch.cuda.max_memory_allocated; Loom, the "
              "device arena of `loom-run --describe` and the metrics' "
              "mem_peak_bytes (loom-run's peak host RSS)."]
    if gemms:
        lines += [
            "",
            f"GEMMs, bf16, M = batch·seq = {a.batch * a.seq} (C = op(A)·op(B), "
            f"C is M×N; median of {a.gemm_reps} after {a.gemm_warmup} warm-ups):",
            "",
            "| GEMM | M | N | K | tA | tB | torch ms | torch TFLOP/s | Loom TFLOP/s "
            "| Loom/torch |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for g in gemms:
            lines.append(
                f"| {g['gemm']} | {g['M']} | {g['N']} | {g['K']} | {g['transA']} "
                f"| {g['transB']} | {fmt(g['torch_ms'], '.3f')} "
                f"| {fmt(g['torch_tflops'], '.1f')} | {fmt(g['loom_tflops'], '.1f')} "
                f"| {fmt(g['loom_over_torch'], '.2f')} |")
    lines += [
        "",
        "| compile time | seconds |",
        "| --- | ---: |",
        f"| loomc (as given, measured where the artifact was compiled) "
        f"| {fmt(a.compile_seconds, '.1f')} |",
        f"| torch.compile (first compiled step − eager median step) "
        f"| {fmt(torch_compile_s, '.1f')} |",
        "",
    ]
    return "\n".join(lines)


def loom_version(a):
    if a.skip_loom or not os.access(a.loom_run, os.X_OK):
        return None
    try:
        r = subprocess.run([a.loom_run, "--version"], env=loom_env(),
                           capture_output=True, text=True, timeout=60)
        return (r.stdout.strip().splitlines() or [None])[0]
    except (OSError, subprocess.TimeoutExpired):
        return None


def write_outputs(a, text, figures):
    """Prints the report, appends it to --out, writes `figures` to --json."""
    print()
    print(text)
    if a.out:
        with open(a.out, "a") as f:
            f.write("\n" + text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=2)
            f.write("\n")


def main():
    a = parse_args()
    device = torch.device(a.device)
    n_params = parameter_count(a)
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else f"CPU ({platform.processor() or platform.machine()})"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "loom_version": loom_version(a),
        "params": n_params,
        "flops_per_token": flops_per_token(a, n_params),
    }
    print(f"{info['device_name']}, torch {info['torch']} (CUDA {info['cuda']}), "
          f"{info['date']}", flush=True)

    workdir = a.workdir or tempfile.mkdtemp(prefix="loom-gpt2-bench-")
    os.makedirs(workdir, exist_ok=True)
    rows = []
    try:
        if not a.skip_loom:
            rows.append(run_loom(a, workdir))
    finally:
        if not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    torch_compile_s = None
    if not a.skip_torch:
        eager = run_torch(a, device, compiled=False)
        rows.append(eager)
        if not a.skip_compile:
            comp = run_torch(a, device, compiled=True)
            rows.append(comp)
            if comp["ok"]:
                # Compilation happens in the first call (forward) and its
                # backward; an ordinary step's share is taken off.
                ordinary = eager["step_ms_median"] if eager["ok"] else comp["step_ms_median"]
                torch_compile_s = (comp["first_step_ms"] - ordinary) / 1e3
                comp["compile_s"] = torch_compile_s

    gemms, peak_measured = ([], None) if a.skip_gemm else run_gemms(a, device)
    add_ratios_and_mfu(rows, info["flops_per_token"], a.peak_tflops, peak_measured)

    text = report(a, info, rows, gemms, peak_measured, torch_compile_s)
    write_outputs(a, text, {"info": info, "config": vars(a), "rows": rows,
                            "gemm": gemms,
                            "bf16_gemm_tflops_measured": peak_measured,
                            "compile_seconds": {"loomc": a.compile_seconds,
                                                "torch_compile": torch_compile_s}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
