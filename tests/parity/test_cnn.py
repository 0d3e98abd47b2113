#!/usr/bin/python3
"""conv2d and batch_norm against PyTorch: tests/parity/models/cnn.loom
(two 3x3 convolutions, one with stride 2, each followed by batch_norm in
training mode and ReLU, then a linear classifier) trained by loom-run and
by a twin built on F.conv2d and F.batch_norm(training=True), from the same
initial weights (loom-run --steps=0 --save) on the same batches, fp32, one
thread, plain SGD.

Checks (SEMANTICS.md's "Loom vs its PyTorch twin" tolerances): the loss at
step 1 within 1e-5 relative and at step 10 within 1e-4; every weight after
10 steps within 1e-4 (||dw|| / ||w||); the running means and variances
(saved with the weights as "<gamma>.running_mean" / ".running_var") within
1e-5. Exits 1 on a failure.

usage: test_cnn.py --loomc PATH --loom-run PATH --workdir DIR
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

import checks  # noqa: E402
import data  # noqa: E402

SRC = os.path.dirname(os.path.dirname(HERE))
STEPS, LR = 10, 0.05
PARAMS = ("k1", "g1", "b1", "k2", "g2", "b2", "w", "bw")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loomc", required=True)
    ap.add_argument("--loom-run", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    src = os.path.join(HERE, "models", "cnn.loom")
    datap = os.path.join(SRC, "samples", "data", "digits.bin")
    model, loom_losses, init, after = checks.train_loom(
        a.loomc, a.loom_run, src, a.workdir, "cnn", datap, STEPS)

    t = lambda v: torch.tensor(np.array(v, dtype=np.float32))  # noqa: E731
    w = {n: t(init[n]).requires_grad_() for n in PARAMS}
    stats = {n: t(init[n]) for n in init if n.endswith((".running_mean", ".running_var"))}
    if sorted(stats) != ["g1.running_mean", "g1.running_var", "g2.running_mean", "g2.running_var"]:
        raise SystemExit(f"cnn parity: unexpected saved statistics {sorted(stats)}")
    loader = data.Loader(data.Dataset(datap), model.inputs, 0)
    losses = []
    for batch in loader.batches(STEPS):
        x = torch.tensor(batch["x"], dtype=torch.float32)
        y = torch.tensor(batch["y"], dtype=torch.int64)
        img = x.reshape(x.shape[0], 1, 8, 8)
        h1 = F.relu(F.batch_norm(F.conv2d(img, w["k1"], padding=1),
                                 stats["g1.running_mean"], stats["g1.running_var"],
                                 w["g1"], w["b1"], training=True, momentum=0.1, eps=1e-5))
        h2 = F.relu(F.batch_norm(F.conv2d(h1, w["k2"], stride=2, padding=1),
                                 stats["g2.running_mean"], stats["g2.running_var"],
                                 w["g2"], w["b2"], training=True, momentum=0.2, eps=1e-5))
        loss = F.cross_entropy(h2.reshape(x.shape[0], -1) @ w["w"] + w["bw"], y)
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            for n in PARAMS:
                w[n] -= LR * w[n].grad
                w[n].grad = None

    c = checks.Checks(48)
    check, rel = c.check, checks.relative
    check("loss at step 1, relative", rel(loom_losses[0], losses[0]), 1e-5)
    check(f"loss at step {STEPS}, relative", rel(loom_losses[-1], losses[-1]), 1e-4)
    diff = lambda got, ref: float(  # noqa: E731
        np.linalg.norm(np.array(got, dtype=np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))
    for n in PARAMS:
        check(f"weights {n} after {STEPS} steps, ||dw||/||w||",
              diff(after[n], w[n].detach().numpy().astype(np.float64)), 1e-4)
    for n in sorted(stats):
        check(f"{n} after {STEPS} steps, relative",
              diff(after[n], stats[n].numpy().astype(np.float64)), 1e-5)
    c.finish("cnn parity")


if __name__ == "__main__":
    main()
