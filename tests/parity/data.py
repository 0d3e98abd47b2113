"""The batches loom-run feeds, reproduced from its documented algorithm
(runtime/README.md "Datasets", runtime/Dataset.cpp's DataLoader):

- the held-out split: the last floor(count / 10) records or tokens;
- records: per epoch e a Fisher-Yates permutation of the training records,
  from the top: for i = n-1 .. 1, w = philoxAt(seed, fnv1a64(
  "loom.data.shuffle"), extra = e, index = i), j = uniformBelow(w0, w1, i+1),
  swap(order[i], order[j]); batches of `batch` consecutive entries, the
  epoch's remainder dropped;
- token streams: row r of batch k (k = step - 1, 0-based) is the window of
  seq + 1 tokens starting at uniformBelow(w0, w1, train_size - seq), w =
  philoxAt(seed, fnv1a64("loom.data.windows"), 0, k * batch + r); tokens =
  the first seq, targets = the last seq.
"""
import struct

import numpy as np

from philox import fnv1a64, philox_at, uniform_below

SHUFFLE_STREAM = fnv1a64("loom.data.shuffle")
WINDOW_STREAM = fnv1a64("loom.data.windows")

_DT = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"),
       4: np.dtype("<i8"), 5: np.dtype("u1"), 6: np.dtype("<u2"),
       7: np.dtype("i1")}


class Dataset:
    """A `.bin` dataset: kind 'records' or 'tokens', fields by name."""

    def __init__(self, path):
        buf = open(path, "rb").read()
        if buf[:8] != b"LOOMDATA":
            raise ValueError(f"{path}: not a Loom dataset")
        version, kind, count, nfields, vocab = struct.unpack("<IIQII", buf[8:32])
        if version != 1 or kind not in (1, 2):
            raise ValueError(f"{path}: version {version}, kind {kind}")
        self.path, self.count, self.vocab = path, count, vocab
        self.kind = "records" if kind == 1 else "tokens"
        self.fields = {}
        for i in range(nfields):
            d = buf[32 + 80 * i: 32 + 80 * (i + 1)]
            name = d[:32].rstrip(b"\0").decode("ascii")
            dtype, rank = struct.unpack("<II", d[32:40])
            dims = list(struct.unpack("<4Q", d[40:72]))[:rank]
            (offset,) = struct.unpack("<Q", d[72:80])
            per = int(np.prod(dims)) if dims else 1
            dt = _DT[dtype]
            arr = np.frombuffer(buf, dtype=dt, count=count * per, offset=offset)
            self.fields[name] = arr.reshape([count] + dims)
        self.held_out = count // 10
        self.train_size = count - self.held_out


class Loader:
    """Yields the training batches of steps 1, 2, ... as loom-run does,
    as {input name: numpy array}."""

    def __init__(self, dataset, inputs, seed=0):
        self.d, self.seed = dataset, seed
        self.inputs = inputs  # {name: shape}
        self.batch = next(iter(inputs.values()))[0]
        self.next, self.epoch = 0, 0
        self._order_epoch, self._order = None, None
        if dataset.kind == "tokens":
            if set(inputs) != {"tokens", "targets"}:
                raise ValueError("a token stream feeds 'tokens' and 'targets'")
            self.seq = inputs["tokens"][1]
        else:
            self.batches_per_epoch = dataset.train_size // self.batch

    def train_order(self, epoch):
        n = self.d.train_size
        order = list(range(n))
        idx = np.arange(n, dtype=np.uint64)
        w0, w1, _, _ = philox_at(self.seed, SHUFFLE_STREAM, epoch, idx)
        w0, w1 = w0.tolist(), w1.tolist()
        for i in range(n - 1, 0, -1):
            j = uniform_below(w0[i], w1[i], i + 1)
            order[i], order[j] = order[j], order[i]
        return order

    def window_starts(self, k):
        idx = np.arange(k * self.batch, (k + 1) * self.batch, dtype=np.uint64)
        w0, w1, _, _ = philox_at(self.seed, WINDOW_STREAM, 0, idx)
        n = self.d.train_size - self.seq
        return [uniform_below(a, b, n) for a, b in zip(w0.tolist(), w1.tolist())]

    def next_batch(self):
        if self.d.kind == "tokens":
            toks = self.d.fields["tokens"]
            starts = self.window_starts(self.next)
            self.next += 1
            win = np.stack([toks[s:s + self.seq + 1] for s in starts]).astype(np.int64)
            return {"tokens": win[:, :-1], "targets": win[:, 1:]}
        if self._order_epoch != self.epoch:
            self._order = np.array(self.train_order(self.epoch), dtype=np.int64)
            self._order_epoch = self.epoch
        rec = self._order[self.next * self.batch:(self.next + 1) * self.batch]
        self.next += 1
        if self.next == self.batches_per_epoch:
            self.next, self.epoch = 0, self.epoch + 1
        return {name: np.ascontiguousarray(self.d.fields[name][rec])
                for name in self.inputs}

    def batches(self, steps):
        return [self.next_batch() for _ in range(steps)]
