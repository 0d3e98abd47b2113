"""Loom's random streams in Python, bit-exact (runtime/README.md, "Random
streams"; runtime/kernels/Philox.h; runtime/Init.cpp).

    key     = {lo32(seed) ^ lo32(stream), hi32(seed) ^ hi32(stream)}
    counter = {lo32(index), hi32(index), lo32(extra), hi32(extra)}
    words   = philox4x32_10(counter, key)
    uniform01(w) = (w >> 8) * 2^-24

Philox is vectorised over numpy uint64 arrays holding 32-bit values (a 32×32
product fits in 64 bits). `self_test()` checks Random123's known answers,
the same vectors runtime/tests/RandomTest.cpp pins.
"""
import math

import numpy as np

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF


def fnv1a64(s):
    if isinstance(s, str):
        s = s.encode("utf-8")
    h = 0xCBF29CE484222325
    for b in s:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox-4x32-10 over arrays (or ints) of 32-bit counter words and a
    scalar key; returns four uint64 arrays of 32-bit words."""
    u = np.uint64
    c0, c1, c2, c3 = (np.asarray(c, dtype=u) for c in (c0, c1, c2, c3))
    m0, m1, mask, sh = u(_M0), u(_M1), u(_MASK), u(32)
    for r in range(10):
        if r:
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        p0 = m0 * c0
        p1 = m1 * c2
        c0, c1, c2, c3 = ((p1 >> sh) ^ c1 ^ u(k0), p1 & mask,
                          (p0 >> sh) ^ c3 ^ u(k1), p0 & mask)
    return c0, c1, c2, c3


def philox_at(seed, stream, extra, index):
    """The four words of elements `index` (int or uint64 array) of use
    `extra` of stream `stream` under run seed `seed` (philoxAt)."""
    k0 = (seed ^ stream) & _MASK
    k1 = ((seed >> 32) ^ (stream >> 32)) & _MASK
    idx = np.asarray(index, dtype=np.uint64)
    return philox4x32(idx & np.uint64(_MASK), idx >> np.uint64(32),
                      np.full(idx.shape, extra & _MASK, dtype=np.uint64),
                      np.full(idx.shape, extra >> 32, dtype=np.uint64), k0, k1)


def uniform01(w):
    """float32 in [0, 1) from the top 24 bits (exact)."""
    return (np.asarray(w, dtype=np.uint64) >> np.uint64(8)).astype(
        np.float32) * np.float32(1.0 / 16777216.0)


def uniform_below(lo, hi, n):
    """Random.h's uniformBelow: ((hi << 32 | lo) * n) >> 64, for scalars."""
    r = (int(hi) << 32) | int(lo)
    return (r * int(n)) >> 64


def glorot_fans(shape):
    if len(shape) < 2:
        raise ValueError("glorot needs rank >= 2")
    if len(shape) == 4:
        rf = shape[2] * shape[3]
        return shape[1] * rf, shape[0] * rf
    return int(np.prod(shape[:-1])), shape[-1]


def init_param(name, shape, init, init_args, seed=0):
    """A parameter's initial value, as runtime/Init.cpp computes it: double
    arithmetic, rounded once to float32."""
    n = int(np.prod(shape)) if shape else 1
    if init == "zeros":
        return np.zeros(shape, np.float32)
    if init == "ones":
        return np.ones(shape, np.float32)
    stream = fnv1a64(name)
    w0, w1, _, _ = philox_at(seed, stream, 0, np.arange(n, dtype=np.uint64))
    if init in ("uniform", "glorot"):
        if init == "glorot":
            fi, fo = glorot_fans(list(shape))
            r = math.sqrt(6.0 / float(fi + fo))
            a, b = -r, r
        else:
            a, b = float(init_args[0]), float(init_args[1])
        u = uniform01(w0).astype(np.float64)
        return (a + (b - a) * u).astype(np.float32).reshape(shape)
    if init == "normal":
        std = float(init_args[0])
        u1 = 1.0 - uniform01(w0).astype(np.float64)
        u2 = uniform01(w1).astype(np.float64)
        # glibc's log/cos per element (as std::log/std::cos in Init.cpp), not
        # numpy's vectorised versions, which may round differently.
        two_pi = 2.0 * 3.14159265358979323846
        out = np.fromiter(
            (std * math.sqrt(-2.0 * math.log(a)) * math.cos(two_pi * b)
             for a, b in zip(u1.tolist(), u2.tolist())), np.float64, n)
        return out.astype(np.float32).reshape(shape)
    raise ValueError(f"parameter '{name}': unknown initialiser '{init}'")


def self_test():
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((_MASK,) * 4, (_MASK, _MASK),
         (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
         (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for c, k, want in cases:
        got = tuple(int(x) for x in philox4x32(*c, *k))
        if got != want:
            raise AssertionError(f"philox4x32{c},{k} = {got}, want {want}")
    assert fnv1a64("") == 0xCBF29CE484222325
    assert fnv1a64("a") == 0xAF63DC4C8601EC8C
    assert fnv1a64("foobar") == 0x85944171F73967E8
    # The convention: philoxAt(seed, stream, extra, index).
    seed, stream = 0x0123456789ABCDEF, fnv1a64("w1")
    key = seed ^ stream
    a = [int(x) for x in philox_at(seed, stream, 0x500000007, 0x300000002)]
    b = [int(x) for x in philox4x32(2, 3, 7, 5, key & _MASK, key >> 32)]
    assert a == b, (a, b)
    assert float(uniform01(0xFFFFFFFF)) == 1.0 - 1.0 / 16777216.0
    assert float(uniform01(0x80000000)) == 0.5


if __name__ == "__main__":
    self_test()
    print("philox: ok")
