"""PyTorch twins of samples/mlp.loom and samples/gpt.loom, with the exact
semantics of SEMANTICS.md:

- weights stored [in, out]: y = x @ w + b (no nn.Linear);
- gelu: tanh approximation; layer_norm: biased variance, eps 1e-5;
- split_heads: [B, T, D] -> [B, H, T, D/H], head-major channels;
- gated attention: gate[b,h,t] = sigmoid(sum_j [q;k][b,h,t,j] wg[h,j] + bg[h]),
  out = gate * softmax(q k^T / sqrt(d) + causal mask) v;
- embedding(tokens, wte) + wpe; cross-entropy mean over all targets;
- AdamW (decoupled decay) with two parameter groups: decay only for
  parameters of rank >= 2; warm-up and cosine decay as a LambdaLR of the
  1-based step s; clip_grad_norm_(max) (PyTorch adds 1e-6 to the norm).

Sizes and train options come from the artifact's manifest, so a twin
matches whatever -D / --set overrides the artifact was compiled with.
"""
import math

import torch
import torch.nn.functional as F

import philox


def _by_name(model):
    return {n: (shape, init, args) for n, shape, init, args in model.params}


class Twin:
    """Parameters (name -> fp32 leaf tensor, in manifest order) and a loss."""

    def __init__(self, model, weights):
        names = [n for n, _, _, _ in model.params]
        missing = [n for n in names if n not in weights]
        extra = [n for n in weights if n not in names]
        if missing or extra:
            raise ValueError(f"weights do not match the manifest: missing "
                             f"{missing}, unexpected {extra}")
        self.model = model
        self.params = {}
        for n, shape, _, _ in model.params:
            w = torch.as_tensor(weights[n]).to(torch.float32).clone()
            if list(w.shape) != list(shape):
                raise ValueError(f"{n}: weights {list(w.shape)}, manifest {shape}")
            self.params[n] = w.requires_grad_(True)

    def state(self):
        return {n: p.detach().clone() for n, p in self.params.items()}


class MlpTwin(Twin):
    """samples/mlp.loom: relu(x @ w1 + b1) @ w2 + b2, cross-entropy."""

    def loss(self, batch):
        p = self.params
        x = torch.as_tensor(batch["x"], dtype=torch.float32)
        y = torch.as_tensor(batch["y"]).long()
        h = torch.relu(x @ p["w1"] + p["b1"])
        logits = h @ p["w2"] + p["b2"]
        return F.cross_entropy(logits, y)

    def tokens_per_batch(self, batch_size):
        return batch_size


def split_heads(x, heads):
    b, t, d = x.shape
    return x.reshape(b, t, heads, d // heads).transpose(1, 2)  # [B, H, T, dk]


def merge_heads(x):
    b, h, t, dk = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dk)


def gated_attention(q, k, v, wg, bg, causal=True):
    dk = q.shape[-1]
    t = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(dk)
    if causal:
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        scores = scores.masked_fill(mask, float("-inf"))
    att = torch.softmax(scores, dim=-1) @ v                       # [B, H, T, dk]
    qk = torch.cat([q, k], dim=-1)                                # [B, H, T, 2dk]
    gate = torch.sigmoid((qk * wg[None, :, None, :]).sum(-1) + bg[None, :, None])
    return gate.unsqueeze(-1) * att


class GptTwin(Twin):
    """samples/gpt.loom: pre-norm decoder with gated attention."""

    def __init__(self, model, weights):
        super().__init__(model, weights)
        shapes = _by_name(model)
        self.vocab, self.d = shapes["wte"][0]
        self.seq = shapes["wpe"][0][0]
        self.layers = 0
        while f"layers.{self.layers}.wq" in shapes:
            self.layers += 1
        self.heads = shapes["layers.0.wg"][0][0] if self.layers else 1

    def forward_logits(self, tokens):
        p = self.params
        x = F.embedding(tokens, p["wte"]) + p["wpe"]
        for i in range(self.layers):
            L = lambda n: p[f"layers.{i}.{n}"]  # noqa: E731
            h = F.layer_norm(x, (self.d,), L("g1"), L("b1"), eps=1e-5)
            q = split_heads(h @ L("wq"), self.heads)
            k = split_heads(h @ L("wk"), self.heads)
            v = split_heads(h @ L("wv"), self.heads)
            a = gated_attention(q, k, v, L("wg"), L("bg"), causal=True)
            x = x + merge_heads(a) @ L("wo")
            h2 = F.layer_norm(x, (self.d,), L("g2"), L("b2"), eps=1e-5)
            x = x + F.gelu(h2 @ L("w1") + L("c1"), approximate="tanh") @ L("w2") + L("c2")
        return F.layer_norm(x, (self.d,), p["gf"], p["bf"], eps=1e-5) @ p["head"]

    def loss(self, batch):
        tokens = torch.as_tensor(batch["tokens"]).long()
        targets = torch.as_tensor(batch["targets"]).long()
        logits = self.forward_logits(tokens)
        return F.cross_entropy(logits.reshape(-1, self.vocab), targets.reshape(-1))

    def tokens_per_batch(self, batch_size):
        return batch_size * self.seq


class CnnTwin(Twin):
    """samples/cnn.loom: two conv2d + batch_norm (batch statistics) + ReLU
    blocks, the second with stride 2, then a linear classifier."""

    def logits(self, x, training=True):
        p = self.params
        h = x.reshape(x.shape[0], 1, 8, 8)
        for k, g, b, stride in (("k1", "g1", "b1", 1), ("k2", "g2", "b2", 2)):
            c = F.conv2d(h, p[k], stride=stride, padding=1)
            ones = torch.ones(c.shape[1])
            h = torch.relu(F.batch_norm(c, ones * 0, ones, p[g], p[b],
                                        training=training))
        return h.reshape(x.shape[0], -1) @ p["w"] + p["bw"]

    def loss(self, batch):
        x = torch.as_tensor(batch["x"], dtype=torch.float32)
        y = torch.as_tensor(batch["y"]).long()
        return F.cross_entropy(self.logits(x), y)

    def tokens_per_batch(self, batch_size):
        return batch_size


def make_twin(model, weights):
    if model.name == "Mlp":
        return MlpTwin(model, weights)
    if model.name == "Cnn":
        return CnnTwin(model, weights)
    if model.name == "Gpt":
        return GptTwin(model, weights)
    raise ValueError(f"no PyTorch twin for model '{model.name}'")


def lr_factor(train, s):
    """The learning-rate multiplier of step s (1-based), SEMANTICS.md."""
    w = int(train.get("warmup", 0))
    if w > 0 and s <= w:
        return min(1.0, s / w)
    if train.get("decay", "none") == "cosine":
        n = int(train["decay_total"])
        r = float(train.get("decay_min", 0.0))
        if s >= n:
            return r
        return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * (s - w) / (n - w)))
    return 1.0


class Trainer:
    """One optimizer step at a time, as Loom's train_step: forward, backward,
    global grad norm (pre-clip), clipping, AdamW with the scheduled lr."""

    def __init__(self, twin, foreach=False):
        t = twin.model.train
        if t.get("optimizer", "adamw") != "adamw":
            raise ValueError(f"twin supports adamw only, not {t.get('optimizer')}")
        if t.get("precision", "fp32") != "fp32":
            raise ValueError("twin runs fp32 only")
        if t.get("clip", "none") not in ("none", "global_norm"):
            raise ValueError(f"twin does not support clip {t.get('clip')}")
        self.twin, self.train = twin, t
        ps = list(twin.params.values())
        decay = [p for p in ps if p.dim() >= 2]
        no_decay = [p for p in ps if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": float(t.get("weight_decay", 0.01))},
                  {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        self.opt = torch.optim.AdamW(
            groups, lr=float(t.get("lr", 1e-3)),
            betas=(float(t.get("beta1", 0.9)), float(t.get("beta2", 0.999))),
            eps=float(t.get("eps", 1e-8)), foreach=foreach)
        # LambdaLR calls the lambda with 0 at construction and k after the
        # k-th scheduler.step(): the lr of step s (1-based) is factor(s).
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda e: lr_factor(t, e + 1))
        self.clip = float(t.get("clip_max", 1.0)) if t.get("clip") == "global_norm" else None
        self.s = 0

    def step(self, batch):
        self.s += 1
        lr = self.opt.param_groups[0]["lr"]
        self.opt.zero_grad(set_to_none=True)
        loss = self.twin.loss(batch)
        loss.backward()
        ps = list(self.twin.params.values())
        if self.clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(ps, self.clip)
        else:
            norm = torch.norm(torch.stack([p.grad.detach().norm() for p in ps]))
        self.opt.step()
        self.sched.step()
        return {"step": self.s, "loss": float(loss.detach()), "lr": lr,
                "grad_norm": float(norm)}


def random_weights(model):
    """Weights for the twin with the right distributions, from torch's
    generator (the values do not change the work of a step; the Python
    Philox init in tests/parity/philox.py is too slow for 100M+ elements)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, shape, init, args in model.params:
        if init == "zeros":
            out[name] = torch.zeros(shape)
        elif init == "ones":
            out[name] = torch.ones(shape)
        elif init == "normal":
            out[name] = torch.randn(shape, generator=g) * args[0]
        else:
            if init == "glorot":
                fi, fo = philox.glorot_fans(shape)
                a = (6.0 / (fi + fo)) ** 0.5
                lo, hi = -a, a
            else:
                lo, hi = args
            out[name] = lo + (hi - lo) * torch.rand(shape, generator=g)
    return out
