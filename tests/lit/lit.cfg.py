# lit configuration for Loom: dialect round-trips, verifier errors, passes,
# and the DSL front end (loomc on .loom snippets).
import os

import lit.formats
from lit.llvm import llvm_config

config.name = "Loom"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".loom", ".test"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.loom_obj_root, "tests", "lit")
config.excludes = ["lit.cfg.py", "lit.site.cfg.py", "Inputs", "README.md"]

# Strict FileCheck everywhere (STYLE.md).
config.environment["FILECHECK_OPTS"] = "-enable-var-scope --allow-unused-prefixes=false"
config.substitutions.append(("%loom_src", config.loom_src_root))

llvm_config.with_system_environment(["HOME", "TMPDIR"])
llvm_config.use_default_substitutions()
tool_dirs = [config.loom_tools_dir, config.llvm_tools_dir]
llvm_config.add_tool_substitutions(["loomc", "loom-opt", "loom-run", "FileCheck", "not", "count", "split-file"], tool_dirs)
config.substitutions.append(("%data", os.path.join(config.loom_src_root, "samples", "data")))
# Debian's python3 (numpy, PyTorch), ahead of lit's own %python.
config.substitutions.insert(0, ("%python", "/usr/bin/python3"))
# Open MPI as root and with more ranks than cores, for the mpirun tests.
for k, v in [("OMPI_ALLOW_RUN_AS_ROOT", "1"), ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"), ("OMPI_MCA_rmaps_base_oversubscribe", "1")]:
    config.environment[k] = v

import shutil
if shutil.which("mpirun"):
    config.available_features.add("mpirun")
# ptxas (the CUDA toolkit's PTX assembler) checks the generated PTX when the
# toolkit is installed; compiling a model never needs it.
ptxas = shutil.which("ptxas") or ("/usr/local/cuda/bin/ptxas" if os.path.exists("/usr/local/cuda/bin/ptxas") else None)
if ptxas:
    config.available_features.add("ptxas")
    config.substitutions.append(("%ptxas", ptxas))
