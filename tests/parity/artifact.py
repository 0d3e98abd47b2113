"""Reads the JSON manifest of a `.loomx` artifact (runtime/ARTIFACT.md).

    [ ELF ][ manifest JSON ][ 64-byte trailer ]
    trailer: magic "LOOMX\\0\\0\\1", u32 format_version, u32 abi_version,
             u64 elf_size, u64 manifest_offset, u64 manifest_size,
             u64 checksum (FNV-1a 64 of [0, manifest_offset+manifest_size)),
             16 zero bytes
"""
import json
import struct

MAGIC = b"LOOMX\x00\x00\x01"


class ArtifactError(Exception):
    pass


def read_manifest(path, verify_checksum=False):
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 64:
        raise ArtifactError(f"{path}: shorter than the 64-byte trailer")
    t = buf[-64:]
    if t[:8] != MAGIC:
        raise ArtifactError(f"{path}: not a Loom artifact")
    fmt, abi, elf, moff, msize, checksum = struct.unpack("<IIQQQQ", t[8:48])
    if fmt != 1:
        raise ArtifactError(f"{path}: format {fmt}, this reader knows 1")
    if moff != elf or moff + msize + 64 != len(buf):
        raise ArtifactError(f"{path}: trailer sizes do not add up")
    if verify_checksum:
        h = 0xCBF29CE484222325
        for b in buf[:moff + msize]:
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        if h != checksum:
            raise ArtifactError(f"{path}: corrupted (checksum)")
    return json.loads(buf[moff:moff + msize].decode("utf-8"))


class Model:
    """What a twin needs from a manifest: parameters (name, shape, init),
    inputs, and the train options."""

    def __init__(self, manifest):
        self.manifest = manifest
        self.name = manifest["model"]
        self.params = [(p["name"], [int(d) for d in p["shape"]], p["init"],
                        [float(a) for a in p.get("init_args", [])])
                       for p in manifest["params"]]
        self.inputs = {i["name"]: [int(d) for d in i["shape"]]
                       for i in manifest["inputs"]}
        self.train = manifest.get("train", {})

    def param_shape(self, name):
        for n, s, _, _ in self.params:
            if n == name:
                return s
        raise KeyError(name)


def load_model(path):
    return Model(read_manifest(path))
