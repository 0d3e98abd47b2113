"""Summarises loom-dialect MLIR text from stdin: ops by kind, parameters."""
import re
import sys
from collections import Counter
from math import prod

text = sys.stdin.read()
model = re.search(r"loom\.model @(\w+)", text)
ops = Counter(a or b for a, b in
              re.findall(r"= (loom\.\w+)|^\s*(loom\.\w+)", text, re.M))
params = re.findall(r'loom\.param "([^"]+)".*: tensor<([0-9x]+)x?f\w*>', text)
elems = sum(prod(int(d) for d in shape.split("x") if d) for _, shape in params)
layers = re.findall(r'loom\.layer "([^"]+)" @(\w+)', text)
print(f"model {model.group(1) if model else '?'}: {sum(ops.values())} ops, "
      f"{len(layers)} layer instances, {len(params)} parameter tensors, "
      f"{elems:,} parameters ({elems * 4 / 2**20:.1f} MiB in fp32)")
for name, n in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])):
    print(f"  {n:6d}  {name}")
