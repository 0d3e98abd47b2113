"""A minimal safetensors reader/writer (pure Python + numpy).

Debian's PyTorch 1.13 has no `safetensors` package, so the parity test reads
and writes the format itself. The format (huggingface/safetensors):

    u64 LE  N              length of the JSON header in bytes
    N bytes JSON header    {"name": {"dtype": "F32", "shape": [..],
                                     "data_offsets": [begin, end]}, ...,
                            "__metadata__": {"k": "v", ...}}   (optional)
    data                   raw little-endian tensors; offsets are relative
                           to the first byte after the header

The header may be padded with trailing spaces (writers pad to 8 bytes).
Tensors must tile the data area exactly (no gaps, no overlap), which this
reader checks, as the reference implementation does.
"""
import json
import struct

import numpy as np

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}

MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(Exception):
    pass


def _parse(buf, path):
    if len(buf) < 8:
        raise SafetensorsError(f"{path}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > MAX_HEADER or 8 + n > len(buf):
        raise SafetensorsError(f"{path}: header length {n} does not fit the "
                               f"{len(buf)}-byte file")
    try:
        header = json.loads(buf[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: malformed JSON header: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is not a JSON object")
    return header, 8 + n


def read_header(path):
    """The JSON header (a dict), without reading the tensors."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: shorter than 8 bytes")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER:
            raise SafetensorsError(f"{path}: header length {n} is too large")
        return _parse(head + f.read(n), path)[0]


def load(path):
    """Reads a safetensors file: ({name: numpy array}, metadata dict)."""
    with open(path, "rb") as f:
        buf = f.read()
    header, start = _parse(buf, path)
    meta = header.pop("__metadata__", {}) or {}
    data_len = len(buf) - start
    tensors, spans = {}, []
    for name, info in header.items():
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            b, e = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as ex:
            raise SafetensorsError(f"{path}: tensor '{name}': bad entry "
                                   f"{info!r} ({ex})") from None
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if any(d < 0 for d in shape) or not 0 <= b <= e <= data_len or \
                e - b != count * dtype.itemsize:
            raise SafetensorsError(
                f"{path}: tensor '{name}' {info['dtype']}{shape}: offsets "
                f"[{b}, {e}) do not hold {count} elements in {data_len} bytes")
        spans.append((b, e, name))
        arr = np.frombuffer(buf, dtype=dtype, count=count, offset=start + b)
        tensors[name] = arr.reshape(shape).copy()
    spans.sort()
    pos = 0
    for b, e, name in spans:
        if b != pos:
            raise SafetensorsError(f"{path}: tensor '{name}' starts at {b}, "
                                   f"expected {pos} (gap or overlap)")
        pos = e
    if pos != data_len:
        raise SafetensorsError(f"{path}: {data_len - pos} bytes after the "
                               "last tensor")
    return tensors, meta


def save(path, tensors, metadata=None):
    """Writes {name: numpy array or torch tensor} in the given order."""
    header, blobs, pos = {}, [], 0
    for name, t in tensors.items():
        if hasattr(t, "detach"):  # a torch tensor
            t = t.detach().cpu().numpy()
        a = np.ascontiguousarray(t)
        dt = a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype
        if dt not in _NAMES:
            raise SafetensorsError(f"tensor '{name}': unsupported dtype {a.dtype}")
        raw = a.astype(dt, copy=False).tobytes()
        header[name] = {"dtype": _NAMES[dt], "shape": list(a.shape),
                        "data_offsets": [pos, pos + len(raw)]}
        blobs.append(raw)
        pos += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)
