#!/usr/bin/python3
"""Write the sample datasets in Loom's .bin format (runtime/README.md).

    samples/data/digits.bin  records: x f32[64] (pixel / 16), y i32[]
                             scikit-learn's bundled 8x8 digits, 1797 samples,
                             shuffled once with seed 0 so that the held-out
                             last 10% is a random sample
    samples/data/text.bin    token stream: u8 bytes, vocab 256, the Vim user
                             manual and reference chapters from Debian's
                             vim-runtime package

Debian packages only (python3-numpy, python3-sklearn, vim-runtime), no
network. Deterministic: the same inputs give byte-identical files.
Run: /usr/bin/python3 samples/prepare_data.py [--out DIR] [--check]
"""
import argparse
import glob
import hashlib
import math
import os
import struct
import sys

MAGIC = b"LOOMDATA"
VERSION = 1
KIND_RECORDS, KIND_TOKENS = 1, 2
DTYPES = {"f32": 1, "f64": 2, "i32": 3, "i64": 4, "u8": 5, "u16": 6, "i8": 7}
HEADER_BYTES, FIELD_BYTES, ALIGN = 32, 80, 64

VIM_DOC = "/usr/share/vim/vim90/doc"
if not os.path.isdir(VIM_DOC):  # a newer Vim: the same manual, another folder
    VIM_DOC = (sorted(glob.glob("/usr/share/vim/vim*/doc")) or [VIM_DOC])[-1]
# The user manual (narrative prose) and the reference chapters that read most
# like prose, in this order.
VIM_REFERENCE = ["intro.txt", "starting.txt", "editing.txt", "motion.txt",
                 "change.txt", "insert.txt", "undo.txt", "windows.txt",
                 "pattern.txt", "various.txt", "tips.txt"]
# What Debian 12's vim-runtime 2:9.0.1378-2+deb12u2 gives; another version
# gives a slightly different (still valid) corpus, and the script says so.
EXPECTED_TEXT_SHA256 = (
    "0c721c31937eba7d884f436e91d724cf46ad52dfd4895f85f8a2b1b7a0074760")


def align(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


def encode(kind, count, fields, vocab=0):
    """fields: [(name, dtype, per_record_shape, data_bytes)]."""
    table_end = HEADER_BYTES + FIELD_BYTES * len(fields)
    offsets, at = [], align(table_end)
    for _, _, _, data in fields:
        offsets.append(at)
        at = align(at + len(data))
    size = offsets[-1] + len(fields[-1][3])
    out = bytearray(size)
    struct.pack_into("<8sIIQII", out, 0, MAGIC, VERSION, kind, count,
                     len(fields), vocab)
    for i, (name, dtype, shape, data) in enumerate(fields):
        assert len(name.encode()) <= 31 and len(shape) <= 4
        dims = list(shape) + [0] * (4 - len(shape))
        struct.pack_into("<32sII4QQ", out, HEADER_BYTES + i * FIELD_BYTES,
                         name.encode(), DTYPES[dtype], len(shape), *dims,
                         offsets[i])
        out[offsets[i]:offsets[i] + len(data)] = data
    return bytes(out)


def digits():
    import numpy as np
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.asarray(d.data, dtype=np.float64)
    y = np.asarray(d.target, dtype=np.int64)
    assert x.shape == (1797, 64), x.shape
    order = np.random.RandomState(0).permutation(len(y))
    x = (x[order] / 16.0).astype("<f4")
    y = y[order].astype("<i4")
    return encode(KIND_RECORDS, len(y),
                  [("x", "f32", [64], x.tobytes()), ("y", "i32", [], y.tobytes())])


def corpus():
    files = sorted(glob.glob(os.path.join(VIM_DOC, "usr_*.txt")))
    files += [os.path.join(VIM_DOC, f) for f in VIM_REFERENCE]
    missing = [f for f in files if not os.path.isfile(f)]
    if not files or missing:
        sys.exit("prepare_data: the Vim documentation is missing (%s); install "
                 "Debian's vim-runtime package (scripts/setup does)" %
                 (", ".join(missing) or VIM_DOC))
    parts = []
    for f in files:
        with open(f, "rb") as fh:
            parts.append(fh.read())
    return b"".join(parts), files


def entropy(data):
    counts = [0] * 256
    for b in data:
        counts[b] += 1
    n = len(data)
    bits = -sum(c / n * math.log2(c / n) for c in counts if c)
    return bits, bits * math.log(2), sum(1 for c in counts if c)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(here, "data"))
    ap.add_argument("--check", action="store_true",
                    help="compare with the files in --out instead of writing")
    args = ap.parse_args()

    text, files = corpus()
    outputs = {
        "digits.bin": digits(),
        "text.bin": encode(KIND_TOKENS, len(text), [("tokens", "u8", [], text)],
                           vocab=256),
    }
    bits, nats, symbols = entropy(text)
    sha = hashlib.sha256(text).hexdigest()
    print("text corpus: %d files from %s, %d bytes, %d distinct bytes, sha256 %s"
          % (len(files), VIM_DOC, len(text), symbols, sha))
    print("unigram entropy: %.4f bits/byte = %.4f nats/byte" % (bits, nats))
    if EXPECTED_TEXT_SHA256 and sha != EXPECTED_TEXT_SHA256:
        print("note: the corpus differs from the one samples/README.md describes "
              "(another vim-runtime version?)")

    os.makedirs(args.out, exist_ok=True)
    status = 0
    for name, data in outputs.items():
        path = os.path.join(args.out, name)
        if args.check:
            same = os.path.isfile(path) and open(path, "rb").read() == data
            print("%s: %s" % (path, "up to date" if same else "DIFFERS"))
            status |= not same
            continue
        with open(path, "wb") as fh:
            fh.write(data)
        print("wrote %s (%d bytes, sha256 %s)"
              % (path, len(data), hashlib.sha256(data).hexdigest()[:16]))
    return status


if __name__ == "__main__":
    sys.exit(main())
