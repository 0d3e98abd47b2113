"""safetensors_tool.py: an independent reader/writer of the safetensors format
in plain Python (no torch, no numpy), to check loom-run's files against the
format and to make the files a PyTorch user might hand it.

  show FILE                      check the layout strictly, print the metadata
                                 and one line per tensor: NAME DTYPE [SHAPE]
  edit IN OUT [OPS...]           rewrite IN as OUT (written the way the Python
                                 safetensors package writes) after OPS:
      drop=NAME                  remove a tensor
      rename=OLD:NEW             rename a tensor
      add=NAME                   add an F32 [2] tensor of zeros
      transpose=NAME             swap the two dims of a 2-d F32 tensor
      f64=NAME                   store an F32 tensor as F64
      nan=NAME                   make element 0 of an F32 tensor NaN
"""
import json
import struct
import sys

SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4,
         "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def read(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        tensors[name] = (info["dtype"], info["shape"], data[begin:end])
    return blob, n, header, meta, tensors, data


def numel(shape):
    out = 1
    for d in shape:
        out *= d
    return out


def show(path):
    blob, n, header, meta, tensors, data = read(path)
    assert (8 + n) % 8 == 0, f"data starts at {8 + n}, not 8-byte aligned"
    text = blob[8:8 + n].decode("utf-8")
    assert set(text[len(text.rstrip()):]) <= {" "}, "header padding is not spaces"
    at = 0
    for name in sorted(header, key=lambda k: header[k]["data_offsets"]):
        dtype, shape, raw = tensors[name]
        begin, end = header[name]["data_offsets"]
        assert begin == at, f"{name}: data at {begin}, expected {at}"
        assert end - begin == numel(shape) * SIZES[dtype], f"{name}: size"
        at = end
    assert at == len(data), f"data is {len(data)} bytes, tensors cover {at}"
    data_order = sorted(header, key=lambda k: header[k]["data_offsets"])
    assert data_order == sorted(header), "data not in name order"
    for k, v in meta.items():
        print(f"meta {k}={v}")
    for name in sorted(tensors):
        dtype, shape, _ = tensors[name]
        print(f"{name} {dtype} {shape}")


def write(path, tensors, meta):
    header = {}
    if meta:
        header["__metadata__"] = meta
    at = 0
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [at, at + len(raw)]}
        at += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name in sorted(tensors):
            f.write(tensors[name][2])


def edit(src, dst, ops):
    _, _, _, meta, tensors, _ = read(src)
    for op in ops:
        kind, arg = op.split("=", 1)
        if kind == "drop":
            del tensors[arg]
        elif kind == "rename":
            old, new = arg.split(":")
            tensors[new] = tensors.pop(old)
        elif kind == "add":
            tensors[arg] = ("F32", [2], bytes(8))
        elif kind == "transpose":
            dtype, (r, c), raw = tensors[arg]
            vals = struct.unpack(f"<{r * c}f", raw)
            t = [vals[i * c + j] for j in range(c) for i in range(r)]
            tensors[arg] = (dtype, [c, r], struct.pack(f"<{r * c}f", *t))
        elif kind == "f64":
            dtype, shape, raw = tensors[arg]
            vals = struct.unpack(f"<{numel(shape)}f", raw)
            tensors[arg] = ("F64", shape, struct.pack(f"<{len(vals)}d", *vals))
        elif kind == "nan":
            dtype, shape, raw = tensors[arg]
            tensors[arg] = (dtype, shape, struct.pack("<f", float("nan")) + raw[4:])
        else:
            sys.exit(f"unknown op {op}")
    write(dst, tensors, meta)


if __name__ == "__main__":
    if sys.argv[1] == "show":
        show(sys.argv[2])
    elif sys.argv[1] == "edit":
        edit(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(__doc__)
