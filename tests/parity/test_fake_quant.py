#!/usr/bin/python3
"""fake_quant against PyTorch: tests/parity/models/fake_quant.loom (a
per-channel symmetric fake_quant on a weight, a per-tensor affine one on an
activation) trained by loom-run and by a twin built on
torch.fake_quantize_per_channel_affine / _per_tensor_affine, from the same
initial weights (loom-run --steps=0 --save) on the same batches, fp32, one
thread, plain SGD.

Checks (SEMANTICS.md's "Loom vs its PyTorch twin" tolerances): the loss at
step 1 within 1e-5 relative and at step 10 within 1e-4; every weight after
10 steps within 1e-4 (||dw|| / ||w||). The scales and zero points are
parameters without gradient: they must not move. Exits 1 on a failure.

usage: test_fake_quant.py --loomc PATH --loom-run PATH --workdir DIR
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

import checks  # noqa: E402
import data  # noqa: E402

SRC = os.path.dirname(os.path.dirname(HERE))
STEPS = 10


def twin_loss(w, x, y):
    """The model of fake_quant.loom in PyTorch."""
    wq = torch.fake_quantize_per_channel_affine(
        w["w1"], w["s1"], w["z1"].round().to(torch.int32), 1, -127, 127)
    h = torch.relu(x @ wq)
    hq = torch.fake_quantize_per_tensor_affine(h, 0.05, 3, 0, 255)
    return torch.nn.functional.cross_entropy(hq @ w["w2"], y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loomc", required=True)
    ap.add_argument("--loom-run", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    src = os.path.join(HERE, "models", "fake_quant.loom")
    datap = os.path.join(SRC, "samples", "data", "digits.bin")
    model, loom_losses, init, after = checks.train_loom(
        a.loomc, a.loom_run, src, a.workdir, "fq", datap, STEPS)

    w = {n: torch.tensor(np.array(v, dtype=np.float32), requires_grad=n in ("w1", "w2"))
         for n, v in init.items()}
    loader = data.Loader(data.Dataset(datap), model.inputs, 0)
    losses = []
    for batch in loader.batches(STEPS):
        x = torch.tensor(batch["x"], dtype=torch.float32)
        y = torch.tensor(batch["y"], dtype=torch.int64)
        loss = twin_loss(w, x, y)
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            for n in ("w1", "w2"):
                w[n] -= 0.1 * w[n].grad
                w[n].grad = None

    c = checks.Checks(44)
    check, rel = c.check, checks.relative
    check("loss at step 1, relative", rel(loom_losses[0], losses[0]), 1e-5)
    check(f"loss at step {STEPS}, relative", rel(loom_losses[-1], losses[-1]), 1e-4)
    for n in sorted(after):
        t = w[n].detach().numpy().astype(np.float64)
        d = np.linalg.norm(np.array(after[n], dtype=np.float64) - t) / max(np.linalg.norm(t), 1e-30)
        check(f"weights {n} after {STEPS} steps, ||dw||/||w||", float(d), 1e-4)
    for n in ("s1", "z1"):
        moved = float(np.max(np.abs(np.array(after[n]) - np.array(init[n]))))
        check(f"{n} (no gradient) moved by", moved, 0.0)
    c.finish("fake_quant parity")


if __name__ == "__main__":
    main()
