#!/usr/bin/python3
"""Quantization-aware training against PyTorch: tests/parity/models/qat_mlp.loom
(`quantize qat(int8, start = 4, freeze = 12)`) trained by loom-run and by a
twin that quantizes each matmul's activation with torch's own FakeQuantize
(MovingAverageMinMaxObserver, averaging constant 0.01, quint8 [0, 255],
per-tensor affine) and each weight per output channel, symmetric [-127, 127],
with scales from the current weights (SEMANTICS.md, quantization); the same
initial weights (loom-run --steps=0 --save) and batches, fp32, one thread,
plain SGD. Before step `start` the observers run and nothing is quantized
(FakeQuantize.disable_fake_quant); after step `freeze` the observers stop
(disable_observer). The optional second model uses symmetric activations
(quantize.activations=per_tensor_symmetric: qint8 [-127, 127]).

Checks (SEMANTICS.md's "Loom vs its PyTorch twin" tolerances): the loss at
step 1 within 1e-5 relative and at every later step within 1e-4; every
weight after 20 steps within 1e-4 (||dw|| / ||w||); each trained activation
range ("<weight>.act_range") within 1e-5 of the twin observer's [min, max].
With --model cnn, tests/parity/models/qat_cnn.loom: a conv2d folded with
its batch norm as torch's ConvBn2d does (the weight scaled by gamma /
sqrt(running_var + eps) is fake-quantized per output channel, the conv's
output divided by that factor, then the batch norm with batch statistics),
a conv2d without one (its weight fake-quantized per output channel), and a
matmul; the running statistics are checked too.

Exits 1 on a failure.

usage: test_qat.py --loomc PATH --loom-run PATH --workdir DIR [--symmetric]
                   [--model mlp|cnn]
"""
import argparse
import os
import sys

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver  # noqa: E402

import checks  # noqa: E402
import data  # noqa: E402

SRC = os.path.dirname(os.path.dirname(HERE))
STEPS, START, FREEZE, LR = 20, 4, 12, 0.1
EPS = torch.finfo(torch.float32).eps


def activation_fq(symmetric):
    if symmetric:
        return FakeQuantize(observer=MovingAverageMinMaxObserver, averaging_constant=0.01,
                            quant_min=-127, quant_max=127, dtype=torch.qint8,
                            qscheme=torch.per_tensor_symmetric)
    return FakeQuantize(observer=MovingAverageMinMaxObserver, averaging_constant=0.01,
                        quant_min=0, quant_max=255, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine)


def weight_fq(w, axis=1):
    """Per output channel (axis 1 of a [in, out] matmul weight, 0 of a
    [out, in, kh, kw] conv weight), symmetric, from w itself."""
    dims = [d for d in range(w.dim()) if d != axis]
    scale = torch.clamp(w.detach().abs().amax(dim=dims) / 127.0, min=EPS)
    zero = torch.zeros(w.shape[axis], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, axis, -127, 127)


def mlp_twin(w, fq, x, quantize):
    w1 = weight_fq(w["w1"]) if quantize else w["w1"]
    w2 = weight_fq(w["w2"]) if quantize else w["w2"]
    h = torch.relu(fq["w1"](x) @ w1 + w["b1"])
    return fq["w2"](h) @ w2 + w["b2"]


def cnn_twin(w, fq, x, quantize, stats):
    img = x.reshape(x.shape[0], 1, 8, 8)
    # torch's ConvBn2d (_forward_approximate), without a conv bias.
    rstd = torch.rsqrt(stats["g1.running_var"] + 1e-5)
    factor = w["g1"] * rstd
    scaled = w["k1"] * factor.reshape(-1, 1, 1, 1)
    k1 = weight_fq(scaled, 0) if quantize else scaled
    c1 = F.conv2d(fq["k1"](img), k1, padding=1) / factor.reshape(1, -1, 1, 1)
    h1 = torch.relu(F.batch_norm(c1, stats["g1.running_mean"], stats["g1.running_var"],
                                 w["g1"], w["b1"], training=True, momentum=0.1, eps=1e-5))
    k2 = weight_fq(w["k2"], 0) if quantize else w["k2"]
    h2 = torch.relu(F.conv2d(fq["k2"](h1), k2, stride=2, padding=1))
    flat = h2.reshape(x.shape[0], -1)
    return fq["w"](flat) @ (weight_fq(w["w"]) if quantize else w["w"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loomc", required=True)
    ap.add_argument("--loom-run", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--symmetric", action="store_true")
    ap.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    a = ap.parse_args()
    torch.set_num_threads(1)
    src = os.path.join(HERE, "models", f"qat_{a.model}.loom")
    datap = os.path.join(SRC, "samples", "data", "digits.bin")
    extra = ["--set=quantize.activations=per_tensor_symmetric"] if a.symmetric else []
    model, loom_losses, init, after = checks.train_loom(
        a.loomc, a.loom_run, src, a.workdir, "qat", datap, STEPS, extra=extra)

    params = ("w1", "b1", "w2", "b2") if a.model == "mlp" else ("k1", "g1", "b1", "k2", "w")
    w = {n: torch.tensor(np.array(init[n], dtype=np.float32), requires_grad=True)
         for n in params}
    stats = {n: torch.tensor(np.array(v, dtype=np.float32)) for n, v in init.items()
             if n.endswith((".running_mean", ".running_var"))}
    sites = ("w1", "w2") if a.model == "mlp" else ("k1", "k2", "w")
    fq = {n: activation_fq(a.symmetric) for n in sites}
    loader = data.Loader(data.Dataset(datap), model.inputs, 0)
    losses = []
    for step, batch in enumerate(loader.batches(STEPS), start=1):
        for f in fq.values():
            (f.enable_fake_quant if step >= START else f.disable_fake_quant)()
            (f.enable_observer if step <= FREEZE else f.disable_observer)()
        quantize = step >= START
        x = torch.tensor(batch["x"], dtype=torch.float32)
        y = torch.tensor(batch["y"], dtype=torch.int64)
        logits = (mlp_twin(w, fq, x, quantize) if a.model == "mlp"
                  else cnn_twin(w, fq, x, quantize, stats))
        loss = F.cross_entropy(logits, y)
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            for n in params:
                w[n] -= LR * w[n].grad
                w[n].grad = None

    c = checks.Checks(48)
    check, rel = c.check, checks.relative
    check("loss at step 1, relative", rel(loom_losses[0], losses[0]), 1e-5)
    check(f"worst loss at steps 2..{STEPS}, relative",
          max(rel(l, t) for l, t in zip(loom_losses[1:], losses[1:])), 1e-4)
    for n in params:
        t = w[n].detach().numpy().astype(np.float64)
        d = np.linalg.norm(np.array(after[n], dtype=np.float64) - t) / max(np.linalg.norm(t), 1e-30)
        check(f"weights {n} after {STEPS} steps, ||dw||/||w||", float(d), 1e-4)
    for n, f in fq.items():
        obs = f.activation_post_process
        ref = np.array([obs.min_val.item(), obs.max_val.item()], dtype=np.float64)
        got = np.array(after[n + ".act_range"], dtype=np.float64)
        check(f"{n}.act_range vs the observer, relative",
              float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30)), 1e-5)
    for n in sorted(stats):
        got = np.array(after[n], dtype=np.float64)
        ref = stats[n].numpy().astype(np.float64)
        check(f"{n} after {STEPS} steps, relative",
              float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)), 1e-5)
    c.finish(f"qat parity ({a.model}, {'symmetric' if a.symmetric else 'affine'} "
             "activations)")


if __name__ == "__main__":
    main()
