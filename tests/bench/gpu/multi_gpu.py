#!/usr/bin/env python3
"""Multi-GPU benchmark (2, 4 or 8 GPUs of one host): NCCL all-reduce
bandwidth, GPT-2-small data-parallel weak scaling against PyTorch DDP, and a
~1.3B-parameter GPT over tensor, pipeline and combined meshes.

Two steps, on two machines. Where loomc is (no GPU needed):

    python3 tests/bench/gpu/multi_gpu.py --compile-only .gpu-multi [--gpus 8] \\
        [--loomc build/bin/loomc] [--tiny] [--target cuda]

compiles every artifact the run needs into the folder (samples/gpt.loom,
bf16, --target=cuda) and writes the folder's plan.json: for each artifact
its name, mesh, rank count, model sizes, global batch, micro-batches, the
loomc command and its wall time. (*.loomx files are ignored by git: a
runner that copies the working tree must be told to carry the folder. At
the full sizes it holds about 68 MB, the pipeline artifacts 21 MB each; a
`tar czf` of the folder is about 5 MB, and --artifacts takes that file as
well, extracting it into the scratch folder.) Then, on the GPU machine,
after building the runtime there
(`cmake -S runtime -B build-gpu`, as tests/gpu/run.sh does):

    python3 tests/bench/gpu/multi_gpu.py --artifacts .gpu-multi \\
        [--gpus N] [--steps 30] [--warmup 5] [--torch-compile] \\
        [--out tests/bench/gpu/RESULTS.md] [--json multi.json]

Configurations (`--gpus N` at compile time, default 8):

- GPT-2-small: 12 layers, d 768, 12 heads, seq 1024, vocab 50304, per-GPU
  batch 16, at dp = 1, 2, 4, ..., N (weak scaling: global batch 16 dp; the
  DSL's `batch` is the global batch, frontend/README.md).
- "gpt-1.3b": 24 layers, d 2048, 16 heads, seq 1024, vocab 50304, global
  batch 8, on 1 GPU (the reference), tp=2, pp=2 (8 micro-batches, 1F1B) and
  dp x tp x pp = (n/4) x 2 x 2 for n = 4, 8, ... up to N (1F1B; micro-batches
  8 / dp, because loomc needs the global batch to divide by dp x
  micro-batches: 4 at dp = 2), so a plan for 8 GPUs also serves 4.
- --tiny shrinks every model to 2 layers, d 64, 2 heads, seq 32, vocab 256,
  batch 4 (per GPU for GPT-2-small, global for the larger one; micro-batches
  at most batch / dp): fast compiles for a functional check. --target cpu
  compiles for the CPU instead, so that the run mode can be checked end to
  end without a GPU (see the end of this text).

The run mode reads plan.json, so it needs no size flags. It runs, in order
(--parts nccl,dp,large selects):

a. NCCL: `mpirun -np N NcclBench` (tests/gpu/NcclBench.cpp: every collective
   checked exactly on several meshes, then all_reduce f32 in place from 1 MiB
   to --nccl-max-bytes, median of its iterations). Its rows are reported as
   printed: algbw = S / t, busbw = algbw * 2(n-1)/n, the traffic per link of
   the ring model, under which the busbw of large messages is the link
   bandwidth; hence the ratio of each size's busbw to the largest measured.
b. GPT-2-small weak scaling. Loom: `mpirun -np dp loom-run ART --data=F
   --steps=W+S --metrics=M` (one rank: loom-run alone) on gpt2_small.py's
   synthetic token stream; step time = the median metrics step_ms of steps
   W+1..W+S (the slowest rank's, data loading included), tokens/s = global
   batch * seq / that. PyTorch: `python -m torch.distributed.run
   --standalone --nproc_per_node=dp` on this script's hidden --torch-worker
   mode: gpt2_small.py's twin of samples/gpt.loom in DistributedDataParallel
   (NCCL, gradient_as_bucket_view), bf16 autocast, AdamW (fused where
   available), clipping at 1.0, the same per-GPU batch, random batches made
   on the device beforehand, each step timed between two synchronisations,
   the slowest rank's time per step; with --torch-compile also
   torch.compile(DDP model). Efficiency = tokens/s(dp) / (dp * tokens/s(1))
   of the same implementation; the goal for Loom at dp = N is >= 0.95.
c. The larger GPT. Each configuration trains --steps after --warmup as in
   b; its loss curve (the metrics' loss per step, every step from 1) is
   compared with the 1-GPU run of the same global batch: the largest
   relative difference |l - l_ref| / |l_ref| over the steps and the one at
   the last step (same initial weights on every mesh, same batches; bf16
   and a different reduction order make them differ a little). MFU =
   tokens/s * (6 N + 12 L H Q T) / (GPUs * --peak-tflops) with N all
   parameters (gpt2_small.parameter_count / flops_per_token), and the
   efficiency tokens/s / (GPUs * tokens/s of the 1-GPU run). For a pp mesh a
   second, short run `loom-run ... --steps=2 --trace=F --trace-steps=2`
   (LOOM_CUDA_GRAPHS=0 unless --trace-cuda-graphs) gives the pipeline idle
   fraction as tests/bench/pipeline_bubbles.py computes it, for step 2:
     idle = 1 - (sum over ranks of the time in schedule spans F*/B*/W*,
                 less the time in receives) / (ranks * the longest train_step)
   (ranks = pp on a pp-only mesh, as there; on dp x tp x pp every rank, i.e.
   the mean over the dp x tp pipelines), beside the ideal (p-1)/(m+p-1).
   Caveat: on the GPU, loom_trace_begin/end are host calls, so a span is
   the time the host took to *issue* that part of the schedule (the GPU
   runs behind it, and NCCL sends and receives are asynchronous and record
   no comm events); a graph-captured program records spans only while it is
   captured and none when replayed (hence no graphs by default in the trace
   run). Read the trace figure with the efficiency column beside it.

Every subprocess has a timeout (on expiry its process group gets SIGTERM,
then SIGKILL); a failed or timed-out configuration becomes a failed row with
its output tail, never a crash. --gpus defaults to the number of GPUs
nvidia-smi lists; configurations needing more are skipped with a note. The
Markdown tables (date, GPU names, the commands) are printed, appended to
--out and every figure goes to --json. Every launch gets NCCL_NVLS_ENABLE=0,
OMPI_ALLOW_RUN_AS_ROOT=1, OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 and
OMPI_MCA_rmaps_base_oversubscribe=1; mpirun gets --mpirun-args (default
"--bind-to none") and loom-run --threads=cores/ranks.

Functional check without a GPU (tiny CPU artifacts, 4 ranks on any cores;
the PyTorch side on the CPU with gloo):

    python3 tests/bench/gpu/multi_gpu.py --compile-only /tmp/mg --gpus 4 \\
        --tiny --target cpu
    /usr/bin/python3 tests/bench/gpu/multi_gpu.py --artifacts /tmp/mg \\
        --gpus 4 --loom-run build/bin/loom-run --torch-device cpu \\
        --steps 3 --warmup 1

The run mode imports gpt2_small.py, hence needs PyTorch; --compile-only does
not. A benchmark, not a test: it asserts nothing and is not part of
scripts/test.
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SCRIPT = os.path.abspath(__file__)

GPT2S = dict(layers=12, d=768, heads=12, seq=1024, vocab=50304)
GPT2S_BATCH = 16      # per GPU
LARGE = dict(layers=24, d=2048, heads=16, seq=1024, vocab=50304)
LARGE_BATCH = 8       # global
LARGE_MICRO = 8
TINY = dict(layers=2, d=64, heads=2, seq=32, vocab=256)
TINY_BATCH = 4

ENV = {"NCCL_NVLS_ENABLE": "0",  # NVLink multicast off (tests/gpu/run.sh)
       "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "OMPI_MCA_rmaps_base_oversubscribe": "1"}

EFFICIENCY_GOAL = 0.95

_g2 = None


def g2():
    """gpt2_small.py, imported on first use (it imports torch, which the
    compile-only mode must not need)."""
    global _g2
    if _g2 is None:
        sys.path.insert(0, HERE)
        import gpt2_small  # noqa: E402
        _g2 = gpt2_small
    return _g2


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--compile-only", metavar="DIR",
                      help="compile every artifact into DIR and write DIR/plan.json; "
                           "runs nothing")
    mode.add_argument("--artifacts", metavar="DIR",
                      help="run mode: the folder --compile-only filled, or a tar "
                           "(.tar.gz) of it")
    mode.add_argument("--torch-worker", metavar="FILE", help=argparse.SUPPRESS)
    ap.add_argument("--worker-spec", help=argparse.SUPPRESS)
    ap.add_argument("--gpus", type=int,
                    help="GPUs: --compile-only, the largest mesh to compile "
                         "(default 8); run mode, how many to use (default: as "
                         "many as nvidia-smi lists)")

    c = ap.add_argument_group("--compile-only")
    c.add_argument("--loomc", default=os.path.join(ROOT, "build", "bin", "loomc"))
    c.add_argument("--tiny", action="store_true",
                   help="every model at 2 layers, d 64, 2 heads, seq 32, vocab "
                        "256, batch 4 (a functional check)")
    c.add_argument("--target", default="cuda", choices=["cuda", "cpu"],
                   help="loomc --target (cpu: to check the run mode without a GPU)")
    c.add_argument("--compile-timeout", type=float, default=1800,
                   help="seconds per loomc call (default 1800)")

    r = ap.add_argument_group("run mode")
    r.add_argument("--loom-run",
                   default=os.path.join(ROOT, "build-gpu", "tools", "loom-run",
                                        "loom-run"))
    r.add_argument("--nccl-bench",
                   default=os.path.join(ROOT, "build-gpu", "gpu-tests", "NcclBench"))
    r.add_argument("--parts", default="nccl,dp,large",
                   help="comma-separated subset of nccl, dp, large (default all)")
    r.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    r.add_argument("--warmup", type=int, default=5,
                   help="steps run first and left out of the timing (default 5)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--peak-tflops", type=float, default=989.0,
                   help="dense bf16 peak per GPU for MFU (default 989, H100/H200 SXM)")
    r.add_argument("--mpirun-args", default="--bind-to none",
                   help="extra mpirun arguments (default '--bind-to none')")
    r.add_argument("--threads-per-rank", type=int, default=0,
                   help="loom-run --threads (default 0: cores / ranks)")
    r.add_argument("--nccl-ranks",
                   help="rank counts for NcclBench, e.g. 2,4,8 (default: --gpus)")
    r.add_argument("--nccl-max-bytes", help="NcclBench --max-bytes (its default 4G)")
    r.add_argument("--nccl-iters", type=int, help="NcclBench --iters (its default 20)")
    r.add_argument("--trace-cuda-graphs", action="store_true",
                   help="keep CUDA graphs on in the pipeline trace runs")
    r.add_argument("--skip-torch", action="store_true", help="no PyTorch DDP rows")
    r.add_argument("--torch-compile", action="store_true",
                   help="also PyTorch DDP under torch.compile")
    r.add_argument("--torch-device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: a functional check of the DDP twin (gloo)")
    r.add_argument("--torch-backend", help="default: nccl on cuda, gloo on cpu")
    r.add_argument("--torch-python", default=sys.executable,
                   help="the Python that runs torch.distributed.run (default: this one)")
    r.add_argument("--loom-timeout", type=float, default=1800,
                   help="seconds per loom-run launch (default 1800)")
    r.add_argument("--torch-timeout", type=float, default=1800,
                   help="seconds per torch.distributed.run launch (default 1800)")
    r.add_argument("--nccl-timeout", type=float, default=900,
                   help="seconds per NcclBench launch (default 900)")
    r.add_argument("--workdir", help="scratch folder for data, metrics and traces "
                   "(default: a temporary one, removed at the end)")
    r.add_argument("--out", metavar="FILE.md", help="append the Markdown to FILE.md")
    r.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    a = ap.parse_args(argv)

    if a.torch_worker:
        if not a.worker_spec:
            ap.error("--torch-worker needs --worker-spec")
        return a
    if not a.compile_only and not a.artifacts:
        ap.error("give --compile-only DIR (where loomc is) or --artifacts DIR (run)")
    if a.gpus is not None and a.gpus < 1:
        ap.error("--gpus must be >= 1")
    if a.compile_only:
        if a.gpus is None:
            a.gpus = 8
        return a
    if a.tiny or a.target != "cuda":
        ap.error("--tiny and --target belong to --compile-only (the run mode "
                 "reads the sizes from plan.json)")
    if a.steps < 1 or a.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    a.parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    bad = [p for p in a.parts if p not in ("nccl", "dp", "large")]
    if bad:
        ap.error(f"--parts: unknown {', '.join(bad)} (nccl, dp, large)")
    try:
        a.mpirun_list = shlex.split(a.mpirun_args)
    except ValueError as e:
        ap.error(f"--mpirun-args: {e}")
    try:
        a.nccl_counts = ([int(x) for x in a.nccl_ranks.split(",")] if a.nccl_ranks
                         else None)
    except ValueError:
        ap.error("--nccl-ranks: comma-separated integers, e.g. 2,4,8")
    if a.torch_backend is None:
        a.torch_backend = "nccl" if a.torch_device == "cuda" else "gloo"
    return a


# ---------------------------------------------------------------------------
# Subprocesses
# ---------------------------------------------------------------------------


def base_env(extra=None):
    env = dict(os.environ)
    env.update(ENV)
    if extra:
        env.update(extra)
    return env


def _signal_group(p, sig):
    try:
        os.killpg(p.pid, sig)  # the child's own group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def _text(b):
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b


def run_cmd(cmd, env=None, timeout=600, cwd=None):
    """Runs cmd in its own session with a timeout; on expiry SIGTERM to its
    process group (mpirun and torch.distributed.run pass it on to their
    ranks), 30 s later SIGKILL. Returns a namespace: rc (None when it could
    not start), out, err, timed_out, seconds, error (a line, or None)."""
    res = types.SimpleNamespace(rc=None, out="", err="", timed_out=False,
                                seconds=0.0, error=None)
    start = time.perf_counter()
    try:
        p = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    except OSError as e:
        res.error = f"cannot start {cmd[0]}: {e}"
        return res
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        res.timed_out = True
        _signal_group(p, signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired as e:
            _signal_group(p, signal.SIGKILL)
            try:
                out, err = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                out, err = e.stdout, e.stderr  # pipes held by a straggler
    res.rc = p.returncode
    res.out, res.err = _text(out), _text(err)
    res.seconds = time.perf_counter() - start
    if res.timed_out:
        res.error = f"timed out after {timeout:.0f} s"
    elif res.rc != 0:
        res.error = f"exit status {res.rc}"
    return res


def tail(text, chars=2500):
    text = text or ""
    return text if len(text) <= chars else "..." + text[-chars:]


def output_tail(res, chars=1500):
    both = (res.out or "") + ("\n--- stderr ---\n" + res.err if res.err else "")
    return tail(both.strip(), chars)


def cmd_str(cmd):
    return shlex.join(str(c) for c in cmd)


# ---------------------------------------------------------------------------
# The plan: which artifacts
# ---------------------------------------------------------------------------


def mesh_flag(mesh):
    parts = [f"{k}={mesh[k]}" for k in ("dp", "tp", "pp") if mesh[k] > 1]
    return ",".join(parts)


def plan_configs(gpus, tiny):
    """Every configuration for up to `gpus` GPUs, in run order."""
    s2 = dict(TINY if tiny else GPT2S)
    sl = dict(TINY if tiny else LARGE)
    per_gpu = TINY_BATCH if tiny else GPT2S_BATCH
    large_batch = TINY_BATCH if tiny else LARGE_BATCH
    configs = []
    dps, dp = [], 1
    while dp < gpus:
        dps.append(dp)
        dp *= 2
    dps.append(gpus)
    for dp in dps:
        configs.append({"name": f"gpt2s-dp{dp}", "part": "dp", "sizes": s2,
                        "mesh": {"dp": dp, "tp": 1, "pp": 1}, "batch": per_gpu * dp,
                        "per_gpu_batch": per_gpu, "microbatches": 1, "schedule": None})
    meshes = [("large-1gpu", 1, 1, 1), ("large-tp2", 1, 2, 1), ("large-pp2", 1, 1, 2)]
    # (n/4) x 2 x 2 for every n of the dp list from 4 up: the plan for N
    # also serves a machine with fewer GPUs.
    for n in dps:
        if n >= 4 and all(m[0] != f"large-dp{n // 4}-tp2-pp2" for m in meshes):
            meshes.append((f"large-dp{n // 4}-tp2-pp2", n // 4, 2, 2))
    for name, dp, tp, pp in meshes:
        if dp * tp * pp > gpus:
            continue
        micro = max(1, min(LARGE_MICRO, large_batch // dp)) if pp > 1 else 1
        configs.append({"name": name, "part": "large", "sizes": sl,
                        "mesh": {"dp": dp, "tp": tp, "pp": pp}, "batch": large_batch,
                        "per_gpu_batch": None, "microbatches": micro,
                        "schedule": "1f1b" if pp > 1 else None})
    for cfg in configs:
        m = cfg["mesh"]
        cfg["ranks"] = m["dp"] * m["tp"] * m["pp"]
        cfg["mesh_flag"] = mesh_flag(m) or None
        cfg["artifact"] = cfg["name"] + ".loomx"
    return configs


def loomc_command(loomc, cfg, target, out_dir):
    s = cfg["sizes"]
    cmd = [loomc, os.path.join(ROOT, "samples", "gpt.loom"),
           f"-Dvocab={s['vocab']}", f"-Dd={s['d']}", f"-Dheads={s['heads']}",
           f"-Dlayers={s['layers']}", f"-Dseq={s['seq']}", f"-Dbatch={cfg['batch']}",
           "--precision=bf16", f"--target={target}"]
    if cfg["mesh_flag"]:
        cmd.append(f"--mesh={cfg['mesh_flag']}")
    if cfg["mesh"]["pp"] > 1:
        cmd += [f"--microbatches={cfg['microbatches']}", f"--schedule={cfg['schedule']}"]
    return cmd + ["-o", os.path.join(out_dir, cfg["artifact"])]


def source_commit():
    """The tree's commit, '+changes' when it has uncommitted ones; None
    outside git."""
    head = run_cmd(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], timeout=60)
    if head.rc != 0:
        return None
    dirty = run_cmd(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                    timeout=60)
    return head.out.strip() + ("+changes" if dirty.rc == 0 and dirty.out.strip() else "")


def compile_all(a):
    out_dir = os.path.abspath(a.compile_only)
    os.makedirs(out_dir, exist_ok=True)
    configs = plan_configs(a.gpus, a.tiny)
    plan = {"created": utc_now(), "loomc": a.loomc, "commit": source_commit(),
            "host": platform.node(), "target": a.target, "gpus": a.gpus,
            "tiny": a.tiny, "precision": "bf16", "configs": configs}
    failed = 0
    for cfg in configs:
        cmd = loomc_command(a.loomc, cfg, a.target, out_dir)
        cfg["command"] = cmd_str(cmd)
        print(f"$ {cfg['command']}", flush=True)
        res = run_cmd(cmd, timeout=a.compile_timeout, cwd=ROOT)
        cfg["compile_seconds"] = round(res.seconds, 2)
        cfg["ok"] = res.error is None and os.path.isfile(
            os.path.join(out_dir, cfg["artifact"]))
        cfg["error"] = None if cfg["ok"] else (res.error or "no artifact written")
        if cfg["ok"]:
            print(f"  {cfg['artifact']}: {cfg['ranks']} rank(s), "
                  f"{res.seconds:.1f} s", flush=True)
        else:
            failed += 1
            cfg["output_tail"] = output_tail(res)
            print(f"  FAILED ({cfg['error']}):\n{cfg['output_tail']}", file=sys.stderr,
                  flush=True)
    with open(os.path.join(out_dir, "plan.json"), "w") as f:
        json.dump(plan, f, indent=2)
        f.write("\n")
    print(f"{out_dir}/plan.json: {len(configs) - failed} of {len(configs)} "
          f"artifacts compiled")
    return 1 if failed else 0


# ---------------------------------------------------------------------------
# Machine facts
# ---------------------------------------------------------------------------


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def gpu_list():
    res = run_cmd(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version",
                   "--format=csv,noheader"], timeout=60)
    gpus = []
    if res.rc == 0:
        for line in res.out.splitlines():
            f = [x.strip() for x in line.split(",")]
            if len(f) >= 4:
                gpus.append({"index": f[0], "name": f[1], "memory": f[2], "driver": f[3]})
    topo = None
    if gpus:
        t = run_cmd(["nvidia-smi", "topo", "-m"], timeout=60)
        topo = t.out.rstrip() if t.rc == 0 else None
    return gpus, topo


def gpu_summary(gpus):
    if not gpus:
        return "none listed by nvidia-smi"
    names = {}
    for g in gpus:
        key = f"{g['name']} ({g['memory']})"
        names[key] = names.get(key, 0) + 1
    return "; ".join(f"{n} x {k}" for k, n in names.items()) + \
        f", driver {gpus[0]['driver']}"


# ---------------------------------------------------------------------------
# a. NCCL all-reduce bandwidth
# ---------------------------------------------------------------------------

NCCL_HEAD = re.compile(r"^NCCL (\S+), (\d+) rank\(s\), (.*?); NCCL_NVLS_ENABLE=(\S+)")
NCCL_ROW = re.compile(r"^\s*(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+"
                      r"\(([0-9.]+) of the largest busbw\)")
NCCL_SUMMARY = re.compile(r"^SUMMARY NcclBench: (\d+) checks, (\d+) failed")


def run_nccl(a, n):
    row = {"ranks": n, "ok": False, "error": None, "command": None, "nccl": None,
           "device": None, "checks": None, "checks_failed": None, "failed_checks": [],
           "rows": [], "output_tail": None}
    if n > a.gpus:
        row["error"] = f"skipped: needs {n} GPUs, this run uses {a.gpus}"
        return row
    if n < 2:
        row["error"] = "skipped: one rank moves no data"
        return row
    cmd = ["mpirun", "-np", str(n)] + a.mpirun_list + [a.nccl_bench]
    if a.nccl_max_bytes:
        cmd.append(f"--max-bytes={a.nccl_max_bytes}")
    if a.nccl_iters:
        cmd.append(f"--iters={a.nccl_iters}")
    row["command"] = cmd_str(cmd)
    if not os.access(a.nccl_bench, os.X_OK):
        row["error"] = f"no NcclBench at {a.nccl_bench}"
        return row
    print(f"$ {row['command']}", flush=True)
    res = run_cmd(cmd, env=base_env(), timeout=a.nccl_timeout)
    factor = 2.0 * (n - 1) / n
    for line in res.out.splitlines():
        m = NCCL_HEAD.match(line)
        if m:
            row["nccl"], row["device"] = m.group(1), m.group(3)
        m = NCCL_SUMMARY.match(line)
        if m:
            row["checks"], row["checks_failed"] = int(m.group(1)), int(m.group(2))
        if line.rstrip().endswith(" FAIL"):
            row["failed_checks"].append(line.rsplit(None, 1)[0].strip())
        m = NCCL_ROW.match(line)
        if m:
            algbw, busbw = float(m.group(3)), float(m.group(4))
            row["rows"].append({"bytes": int(m.group(1)), "time_us": float(m.group(2)),
                                "algbw_gbs": algbw, "busbw_gbs": busbw,
                                "busbw_from_algbw": algbw * factor,
                                "of_largest_printed": float(m.group(5))})
    if row["rows"]:
        top = max(r["busbw_gbs"] for r in row["rows"])
        for r in row["rows"]:
            r["of_largest"] = r["busbw_gbs"] / top if top else None
    if res.error or not row["rows"]:
        row["error"] = res.error or "no bandwidth rows in its output"
        row["output_tail"] = output_tail(res)
        print(f"NcclBench -np {n} failed ({row['error']}):\n{row['output_tail']}",
              file=sys.stderr, flush=True)
    else:
        row["ok"] = True
        print(f"  {len(row['rows'])} sizes, largest busbw "
              f"{max(r['busbw_gbs'] for r in row['rows']):.1f} GB/s", flush=True)
    return row


# ---------------------------------------------------------------------------
# Loom runs
# ---------------------------------------------------------------------------


def sizes_ns(sizes, batch=None):
    return types.SimpleNamespace(batch=batch, **sizes)


def flops_per_token(sizes):
    g = g2()
    ns = sizes_ns(sizes)
    n = g.parameter_count(ns)
    return n, g.flops_per_token(ns, n)


def write_datasets(a, configs, workdir):
    """One token stream per (vocab, seq) among the configurations, as
    gpt2_small.py writes it, large enough for the biggest run on it."""
    total = a.warmup + a.steps
    need = {}
    for cfg in configs:
        key = (cfg["sizes"]["vocab"], cfg["sizes"]["seq"])
        count = max(4 << 20, 2 * total * cfg["batch"] * (cfg["sizes"]["seq"] + 1))
        need[key] = max(need.get(key, 0), count)
    paths = {}
    for (vocab, seq), count in sorted(need.items()):
        path = os.path.join(workdir, f"tokens-v{vocab}-t{seq}.bin")
        start = time.perf_counter()
        g2().write_token_stream(path, count, vocab, a.seed)
        print(f"dataset: {count} random tokens < {vocab} in {path} "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
        paths[(vocab, seq)] = path
    return paths


def loom_command(a, cfg, artifact, data, steps, extra):
    ranks = cfg["ranks"]
    threads = a.threads_per_rank or max(1, (os.cpu_count() or 1) // ranks)
    launch = ["mpirun", "-np", str(ranks)] + a.mpirun_list if ranks > 1 else []
    return launch + [a.loom_run, artifact, f"--data={data}", f"--steps={steps}",
                     f"--seed={a.seed}", "--eval-batches=0", f"--threads={threads}",
                     f"--log-every={max(1, steps // 5)}"] + list(extra)


def new_loom_row(cfg):
    return {"name": cfg["name"], "impl": "Loom", "part": cfg["part"],
            "mesh": cfg["mesh"], "ranks": cfg["ranks"], "batch": cfg["batch"],
            "microbatches": cfg["microbatches"], "ok": False, "skipped": False,
            "error": None, "command": None, "tokens_per_step": None,
            "tokens_per_s": None, "tokens_per_s_per_gpu": None,
            "step_ms_median": None, "step_ms_mean": None, "comm_ms_median": None,
            "loss_first": None, "loss_last": None, "losses": None,
            "peak_host_rss_bytes": None, "arena_bytes": None, "mfu": None,
            "efficiency": None, "compile_seconds": cfg.get("compile_seconds"),
            "wall_s": None, "output_tail": None}


def skip_reason(a, cfg, art_dir):
    if cfg["ranks"] > a.gpus:
        return f"skipped: needs {cfg['ranks']} GPUs, this run uses {a.gpus}"
    if not cfg.get("ok", True):
        return f"not compiled: {cfg.get('error')}"
    if not os.path.isfile(os.path.join(art_dir, cfg["artifact"])):
        return f"no artifact {cfg['artifact']} in {art_dir}"
    return None


def run_loom(a, cfg, art_dir, data, workdir):
    row = new_loom_row(cfg)
    why = skip_reason(a, cfg, art_dir)
    if why:
        row["error"], row["skipped"] = why, why.startswith("skipped")
        print(f"{cfg['name']}: {why}", flush=True)
        return row
    if not os.access(a.loom_run, os.X_OK):
        row["error"] = f"no loom-run at {a.loom_run}"
        return row
    if not data:
        row["error"] = "no dataset"
        return row
    artifact = os.path.join(art_dir, cfg["artifact"])
    g = g2()
    described = g.describe_artifact(types.SimpleNamespace(loom_run=a.loom_run,
                                                          artifact=artifact))
    if described:
        m = re.search(r"^\s*arena\s.*?\((\d+) bytes\)", described, re.M)
        row["arena_bytes"] = int(m.group(1)) if m else None

    total = a.warmup + a.steps
    metrics = os.path.join(workdir, cfg["name"] + ".metrics.jsonl")
    if os.path.exists(metrics):
        os.remove(metrics)
    cmd = loom_command(a, cfg, artifact, data, total, [f"--metrics={metrics}"])
    row["command"] = cmd_str(cmd)
    row["tokens_per_step"] = cfg["batch"] * cfg["sizes"]["seq"]
    print(f"$ {row['command']}", flush=True)
    res = run_cmd(cmd, env=base_env(), timeout=a.loom_timeout)
    row["wall_s"] = res.seconds
    if res.error:
        row["error"] = "loom-run " + res.error
        row["output_tail"] = output_tail(res)
        print(f"{cfg['name']} failed ({row['error']}):\n{row['output_tail']}",
              file=sys.stderr, flush=True)
        return row
    steps, timed, error = g.read_loom_metrics(metrics, a.warmup, a.steps)
    if error:
        row["error"] = error
        row["output_tail"] = output_tail(res)
        return row
    error = g.summarize_loom_metrics(row, steps, timed)
    row["peak_host_rss_bytes"] = row.pop("peak_memory_bytes")
    if error:
        row["error"] = error
        return row
    row["tokens_per_s_per_gpu"] = row["tokens_per_s"] / cfg["ranks"]
    comm = [m.get("comm_ms") for m in timed if m.get("comm_ms") is not None]
    row["comm_ms_median"] = statistics.median(comm) if comm else None
    _, fpt = flops_per_token(cfg["sizes"])
    row["mfu"] = row["tokens_per_s"] * fpt / (cfg["ranks"] * a.peak_tflops * 1e12)
    row["ok"] = True
    print(f"  {row['tokens_per_s']:,.0f} tokens/s, step {row['step_ms_median']:.2f} ms, "
          f"loss {row['loss_first']} -> {row['loss_last']}", flush=True)
    return row


# ---------------------------------------------------------------------------
# Pipeline idle fraction (tests/bench/pipeline_bubbles.py's formula)
# ---------------------------------------------------------------------------

SPAN = re.compile(r"[FBW]\d+(c\d+)?")


def pipeline_idle(trace_path):
    """pipeline_bubbles.idle_fraction, for every traced step after the
    first: 1 - (time of each rank in schedule spans, less its receives) /
    (ranks * the step's longest train_step). On a pp-only mesh ranks = pp,
    exactly as there; on dp x tp x pp it averages the pipelines."""
    with open(trace_path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    calls = [e for e in events if e["name"] == "train_step"]
    steps = sorted({e["args"]["step"] for e in calls})
    if not steps:
        raise ValueError("no train_step events in the trace")
    by_pid = {}
    for e in events:
        if e["name"] != "train_step":
            by_pid.setdefault(e["pid"], []).append(e)
    fractions, detail = [], None
    for s in steps[1:] or steps:
        cs = [c for c in calls if c["args"]["step"] == s]
        wall = max(c["dur"] for c in cs)
        busy = recv = 0.0
        spans = 0
        for c in cs:
            for e in by_pid.get(c["pid"], ()):
                if not c["ts"] <= e["ts"] <= c["ts"] + c["dur"]:
                    continue
                if e.get("cat") == "compute" and SPAN.fullmatch(e["name"]):
                    busy += e["dur"]
                    spans += 1
                elif e.get("cat") == "comm" and e["name"].startswith("recv"):
                    recv += e["dur"]
        fractions.append(1 - (busy - recv) / (len(cs) * wall))
        detail = {"step": s, "ranks": len(cs), "step_ms": wall / 1e3, "spans": spans,
                  "span_ms": busy / 1e3, "recv_ms": recv / 1e3}
    return sum(fractions) / len(fractions), detail


def run_trace(a, cfg, art_dir, data, workdir):
    m = cfg["mesh"]
    out = {"ok": False, "error": None, "command": None, "idle": None,
           "ideal": (m["pp"] - 1) / (cfg["microbatches"] + m["pp"] - 1),
           "detail": None, "graphs": a.trace_cuda_graphs, "output_tail": None}
    trace = os.path.join(workdir, cfg["name"] + ".trace.json")
    if os.path.exists(trace):
        os.remove(trace)
    cmd = loom_command(a, cfg, os.path.join(art_dir, cfg["artifact"]), data, 2,
                       [f"--trace={trace}", "--trace-steps=2"])
    extra = {} if a.trace_cuda_graphs else {"LOOM_CUDA_GRAPHS": "0"}
    out["command"] = ("LOOM_CUDA_GRAPHS=0 " if extra else "") + cmd_str(cmd)
    print(f"$ {out['command']}", flush=True)
    res = run_cmd(cmd, env=base_env(extra), timeout=a.loom_timeout)
    if res.error:
        out["error"] = "loom-run --trace " + res.error
        out["output_tail"] = output_tail(res)
        print(f"{cfg['name']} trace failed:\n{out['output_tail']}", file=sys.stderr,
              flush=True)
        return out
    try:
        out["idle"], out["detail"] = pipeline_idle(trace)
    except (OSError, ValueError, KeyError, TypeError) as e:
        out["error"] = f"unreadable trace: {type(e).__name__}: {e}"
        return out
    out["ok"] = True
    print(f"  idle {out['idle']:.3f} (ideal {out['ideal']:.3f}); {out['detail']}",
          flush=True)
    return out


# ---------------------------------------------------------------------------
# PyTorch DDP: the launcher side and the worker
# ---------------------------------------------------------------------------


def torchrun_fixes():
    """Arguments that let this PyTorch's torch.distributed.run start at all.
    Debian's torch 1.13 under Python 3.11 turns the default `--redirects 0`
    into None (Python 3.11 no longer iterates the Flag enum's zero member)
    and fails: there a mapping for a local rank that does not exist (9)
    gives every real rank the default. Checked on this interpreter's torch."""
    try:
        from torch.distributed.elastic.multiprocessing.api import Std
        if Std.from_str("0") is None:
            return ["--redirects", "9:3", "--tee", "9:3"]
    except Exception:  # noqa: BLE001 - no such module: nothing to fix
        pass
    return []


def run_torch_ddp(a, dp, sizes, per_gpu_batch, compiled, workdir):
    name = "PyTorch DDP" + (" torch.compile" if compiled else " eager")
    row = {"name": f"{name} dp={dp}", "impl": name, "dp": dp, "ranks": dp,
           "batch": per_gpu_batch * dp, "ok": False, "skipped": False, "error": None,
           "command": None, "tokens_per_s": None, "tokens_per_s_per_gpu": None,
           "step_ms_median": None, "step_ms_mean": None, "loss_first": None,
           "loss_last": None, "peak_memory_bytes": None, "mfu": None,
           "efficiency": None, "output_tail": None}
    if dp > a.gpus:
        row["error"], row["skipped"] = f"skipped: needs {dp} GPUs, this run uses {a.gpus}", True
        return row
    out = os.path.join(workdir, f"torch-dp{dp}{'-compile' if compiled else ''}.json")
    if os.path.exists(out):
        os.remove(out)
    spec = {"sizes": sizes, "batch": per_gpu_batch, "steps": a.steps,
            "warmup": a.warmup, "seed": a.seed, "compile": compiled,
            "device": a.torch_device, "backend": a.torch_backend}
    cmd = [a.torch_python, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={dp}"] + torchrun_fixes() + [SCRIPT, "--torch-worker", out,
           "--worker-spec", json.dumps(spec, separators=(",", ":"))]
    row["command"] = cmd_str(cmd)
    extra = {}
    if a.torch_device == "cpu":
        extra["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // dp))
    print(f"$ {row['command']}", flush=True)
    res = run_cmd(cmd, env=base_env(extra), timeout=a.torch_timeout)
    got = None
    try:
        with open(out) as f:
            got = json.load(f)
    except (OSError, ValueError):
        pass
    if got:
        for k in row:
            if k in got and k not in ("name", "impl", "command"):
                row[k] = got[k]
        row["worker"] = {k: got.get(k) for k in ("adamw", "attention", "backend",
                                                 "device_name", "torch", "first_step_ms",
                                                 "compile_s")}
    if res.error or not got or not got.get("ok"):
        row["ok"] = False
        row["error"] = (got or {}).get("error") or \
            ("torch.distributed.run " + (res.error or "wrote no result"))
        row["output_tail"] = output_tail(res)
        print(f"{row['name']} failed ({row['error']}):\n{row['output_tail']}",
              file=sys.stderr, flush=True)
        return row
    _, fpt = flops_per_token(sizes)
    row["mfu"] = row["tokens_per_s"] * fpt / (dp * a.peak_tflops * 1e12)
    print(f"  {row['tokens_per_s']:,.0f} tokens/s, step {row['step_ms_median']:.2f} ms",
          flush=True)
    return row


def torch_worker(a):
    """One rank of the DDP twin (under torch.distributed.run). Rank 0 writes
    the figures (or the error) to --torch-worker FILE."""
    spec = json.loads(a.worker_spec)
    out_path = a.torch_worker
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    result = {"ok": False, "error": None, "world": world, "backend": spec["backend"],
              "compiled": spec["compile"]}
    code = 1
    dist = None
    try:
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        g = g2()
        result["torch"] = torch.__version__
        if spec["device"] == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("PyTorch sees no CUDA device")
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
            result["device_name"] = torch.cuda.get_device_name(device)
        else:
            device = torch.device("cpu")
            result["device_name"] = f"CPU ({platform.machine()})"
        dist.init_process_group(backend=spec["backend"])
        result.update(train_ddp(torch, dist, DDP, g, spec, device, rank, world))
        result["ok"] = True
        code = 0
    except Exception as e:  # noqa: BLE001 - every failure goes to the file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        oom = "out of memory" in str(e)
        result["error"] = ("out of memory: " if oom else f"{type(e).__name__}: ") + first[:300]
        print(f"rank {rank}: {tail(traceback.format_exc())}", file=sys.stderr, flush=True)
    if rank == 0:
        with open(out_path + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(out_path + ".tmp", out_path)
    try:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        pass
    return code


def train_ddp(torch, dist, DDP, g, spec, device, rank, world):
    ns = sizes_ns(spec["sizes"], spec["batch"])
    compiled = spec["compile"]
    if compiled and not hasattr(torch, "compile"):
        raise RuntimeError(f"torch.compile is not in torch {torch.__version__}")
    torch.manual_seed(spec["seed"])  # same weights everywhere (DDP broadcasts too)
    model = g.Gpt(ns).to(device)
    n = sum(p.numel() for p in model.parameters())
    if n != g.parameter_count(ns):
        raise AssertionError(f"the twin has {n} parameters, parameter_count() says "
                             f"{g.parameter_count(ns)}")
    optimizer, kind = g.make_adamw(model)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
              gradient_as_bucket_view=True)
    forward = torch.compile(ddp) if compiled else ddp
    attention = "SDPA" if g.causal_attention is not g._reference_attention else "reference"
    if rank == 0:
        print(f"DDP over {world} rank(s), {spec['backend']}: {n} parameters, AdamW "
              f"{kind}, attention {attention}, batch {ns.batch} per rank"
              f"{', torch.compile' if compiled else ''}", flush=True)

    # Each rank its own batches.
    seconds, losses = g.timed_steps(model, forward, optimizer, device, ns.vocab,
                                    ns.batch, ns.seq, spec["warmup"] + spec["steps"],
                                    spec["seed"] + 1000 * rank)

    # The slowest rank's time per step; losses averaged over the ranks.
    t = torch.tensor(seconds, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    lt = torch.stack(losses).float()
    dist.all_reduce(lt, op=dist.ReduceOp.SUM)
    lt = (lt / world).tolist()
    peak = None
    if device.type == "cuda":
        pk = torch.tensor([torch.cuda.max_memory_allocated(device)], dtype=torch.float64,
                          device=device)
        dist.all_reduce(pk, op=dist.ReduceOp.MAX)
        peak = int(pk.item())
    seconds = t.tolist()
    timed_ms = [s * 1e3 for s in seconds[spec["warmup"]:]]
    tokens = world * ns.batch * ns.seq
    median = statistics.median(timed_ms)
    return {"adamw": kind, "attention": attention, "tokens_per_step": tokens,
            "step_ms_median": median, "step_ms_mean": statistics.mean(timed_ms),
            "tokens_per_s": tokens / (median / 1e3),
            "tokens_per_s_per_gpu": tokens / (median / 1e3) / world,
            "loss_first": lt[0], "loss_last": lt[-1], "losses": lt,
            "peak_memory_bytes": peak, "first_step_ms": seconds[0] * 1e3,
            "compile_s": (seconds[0] * 1e3 - median) / 1e3 if compiled else None,
            "step_ms_all": [s * 1e3 for s in seconds]}


# ---------------------------------------------------------------------------
# The parts
# ---------------------------------------------------------------------------


def part_dp(a, plan, art_dir, datasets, workdir):
    configs = [c for c in plan["configs"] if c["part"] == "dp"]
    res = {"loom": [], "torch": [], "notes": []}
    if not configs:
        res["notes"].append("plan.json has no GPT-2-small configuration")
        return res
    for cfg in configs:
        data = datasets.get((cfg["sizes"]["vocab"], cfg["sizes"]["seq"]))
        res["loom"].append(run_loom(a, cfg, art_dir, data, workdir))
    planned = max(c["ranks"] for c in configs)
    if a.gpus > planned:
        res["notes"].append(f"this run has {a.gpus} GPUs; the plan's largest dp is "
                            f"{planned} (compile with --gpus {a.gpus} for more)")
    if not a.skip_torch:
        flavours = [False] + ([True] if a.torch_compile else [])
        for compiled in flavours:
            for cfg in configs:
                res["torch"].append(run_torch_ddp(
                    a, cfg["mesh"]["dp"], cfg["sizes"], cfg["per_gpu_batch"], compiled,
                    workdir))
    # Efficiency against dp = 1 of the same implementation; Loom / PyTorch.
    groups = {}
    for r in res["loom"] + res["torch"]:
        groups.setdefault(r["impl"], []).append(r)
    for rows in groups.values():
        one = next((r for r in rows if r["ranks"] == 1 and r["ok"]), None)
        for r in rows:
            if r["ok"] and one:
                r["efficiency"] = r["tokens_per_s"] / (r["ranks"] * one["tokens_per_s"])
    eager = {r["ranks"]: r for r in res["torch"] if r["ok"] and "eager" in r["impl"]}
    for r in res["loom"]:
        ref = eager.get(r["ranks"])
        r["vs_torch_ddp"] = r["tokens_per_s"] / ref["tokens_per_s"] if r["ok"] and ref else None
    return res


def rel_diffs(losses, ref):
    pairs = [(x, y) for x, y in zip(losses, ref)]
    if not pairs or len(losses) != len(ref):
        return None, None
    out = []
    for x, y in pairs:
        if x is None or y is None or not math.isfinite(x) or not math.isfinite(y):
            out.append(float("inf"))
        else:
            out.append(abs(x - y) / max(abs(y), 1e-12))
    return max(out), out[-1]


def part_large(a, plan, art_dir, datasets, workdir):
    configs = [c for c in plan["configs"] if c["part"] == "large"]
    res = {"rows": [], "notes": []}
    if not configs:
        res["notes"].append("plan.json has no configuration of the larger GPT")
        return res
    for cfg in configs:
        data = datasets.get((cfg["sizes"]["vocab"], cfg["sizes"]["seq"]))
        row = run_loom(a, cfg, art_dir, data, workdir)
        row["trace"] = None
        if cfg["mesh"]["pp"] > 1 and row["ok"]:
            row["trace"] = run_trace(a, cfg, art_dir, data, workdir)
        res["rows"].append(row)
    ref = next((r for r in res["rows"] if r["ranks"] == 1), None)
    if not ref or not ref["ok"]:
        res["notes"].append("the 1-GPU reference did not run: no loss comparison "
                            "or efficiency")
    for r in res["rows"]:
        r["loss_max_rel"] = r["loss_last_rel"] = None
        if r["ok"] and ref and ref["ok"]:
            r["loss_max_rel"], r["loss_last_rel"] = rel_diffs(r["losses"], ref["losses"])
            r["efficiency"] = r["tokens_per_s"] / (r["ranks"] * ref["tokens_per_s"])
    return res


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def f_(x, spec, suffix=""):
    return "n/a" if x is None else format(x, spec) + suffix


def pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def sci(x):
    if x is None:
        return "n/a"
    return "inf" if not math.isfinite(x) else f"{x:.2e}"


def loss_pair(r):
    fl = g2().fmt_loss
    return f"{fl(r.get('loss_first'))} → {fl(r.get('loss_last'))}"


def failed_cell(r, width):
    what = r["error"] or "failed"
    return f"| {what.replace('|', '/')} |" + " |" * (width - 1)


def model_line(sizes):
    s = sizes
    n, fpt = flops_per_token(s)
    return (f"{s['layers']} layers, d {s['d']}, {s['heads']} heads, seq {s['seq']}, "
            f"vocab {s['vocab']}; N = {n:,} parameters; 6N + 12·L·H·Q·T = "
            f"{fpt / 1e9:.3f} GFLOP/token")


def report(a, info, plan, nccl, dp, large):
    L = [f"### Multi-GPU benchmark, {info['date']}", "",
         f"- GPUs: {info['gpu_summary']}; this run uses {a.gpus}; host "
         f"{info['host']}, {info['cores']} cores",
         f"- loom-run: {info['loom_version'] or 'n/a'}; torch {info['torch'] or 'n/a'}; "
         f"artifacts {info['artifacts']} (plan of {plan.get('created')}, commit "
         f"{plan.get('commit') or 'n/a'}, target {plan.get('target')}"
         f"{', TINY sizes' if plan.get('tiny') else ''})",
         f"- every launch: {' '.join(f'{k}={v}' for k, v in ENV.items())}; "
         f"mpirun {a.mpirun_args}; {a.steps} timed steps after {a.warmup} warm-up; "
         f"MFU against {a.peak_tflops:g} TFLOP/s per GPU", ""]
    if info["notes"]:
        L += [f"- note: {n}" for n in info["notes"]] + [""]

    if nccl is not None:
        L += ["#### a. NCCL all_reduce (f32, in place), NcclBench", ""]
        for r in nccl:
            if not r["ok"]:
                L += [f"- {r['ranks']} ranks: {r['error']}", ""]
                if r.get("output_tail"):
                    L += ["```", r["output_tail"], "```", ""]
                continue
            L += [f"{r['ranks']} ranks, NCCL {r['nccl']}, {r['device']}; checks: "
                  f"{r['checks']} run, {r['checks_failed']} failed"
                  + (f" ({'; '.join(r['failed_checks'][:5])})" if r["failed_checks"] else ""),
                  "",
                  "| bytes | time µs | algbw GB/s | busbw GB/s | busbw / largest busbw |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
            for x in r["rows"]:
                L.append(f"| {x['bytes']:,} | {x['time_us']:.1f} | {x['algbw_gbs']:.1f} "
                         f"| {x['busbw_gbs']:.1f} | {f_(x.get('of_largest'), '.2f')} |")
            L += ["", f"`{r['command']}`", ""]
        L += ["busbw = algbw · 2(n−1)/n, each link's traffic under the ring model, "
              "whose busbw for large messages is the link bandwidth; the last column "
              "is how close each size comes to the best one measured.", ""]

    if dp is not None:
        rows = dp["loom"] + dp["torch"]
        sizes = next((c["sizes"] for c in plan["configs"] if c["part"] == "dp"), None)
        per_gpu = next((c["per_gpu_batch"] for c in plan["configs"] if c["part"] == "dp"),
                       None)
        L += ["#### b. GPT-2-small, data-parallel weak scaling", ""]
        if sizes:
            L += [f"- model: {model_line(sizes)}; batch {per_gpu} per GPU (global "
                  f"{per_gpu}·dp), bf16", ""]
        L += ["| run | dp | global batch | tokens/s | tokens/s per GPU | efficiency "
              "| step ms (median) | step ms (mean) | comm ms | MFU | Loom / DDP eager "
              "| loss first → last |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
              "| ---: |"]
        for r in rows:
            head = f"| {r['impl']} | {r['ranks']} | {r['batch']} "
            if not r["ok"]:
                L.append(head + failed_cell(r, 9))
                continue
            eff = f_(r["efficiency"], ".3f")
            if r["efficiency"] is not None and r["ranks"] > 1 and r["impl"] == "Loom":
                eff += " ✓" if r["efficiency"] >= EFFICIENCY_GOAL else " ✗"
            L.append(head + f"| {r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_gpu']:,.0f} "
                     f"| {eff} | {r['step_ms_median']:.2f} | {r['step_ms_mean']:.2f} "
                     f"| {f_(r.get('comm_ms_median'), '.2f')} | {pct(r['mfu'])} "
                     f"| {f_(r.get('vs_torch_ddp'), '.2f', 'x')} | {loss_pair(r)} |")
        L += ["", f"Efficiency = tokens/s(dp) / (dp · tokens/s(dp=1)) of the same "
              f"implementation (✓: Loom meets the goal ≥ {EFFICIENCY_GOAL}). Loom: the "
              "metrics' step_ms (slowest rank, data included), comm ms = time in "
              "collectives not overlapped (largest rank). PyTorch: slowest rank's "
              "step between synchronisations; losses are the ranks' mean (each rank "
              "draws its own batches)."]
        L += [f"- note: {n}" for n in dp["notes"]]
        L += ["", "Commands:", ""] + [f"- `{r['command']}`" for r in rows if r["command"]]
        L += [""]
        for r in rows:
            if not r["ok"] and r.get("output_tail"):
                L += [f"{r['name']} ({r['impl']}) output tail:", "", "```",
                      r["output_tail"], "```", ""]

    if large is not None:
        sizes = next((c["sizes"] for c in plan["configs"] if c["part"] == "large"), None)
        L += ["#### c. Larger GPT across meshes", ""]
        if sizes:
            L += [f"- model: {model_line(sizes)}; global batch "
                  f"{next(c['batch'] for c in plan['configs'] if c['part'] == 'large')}, "
                  "bf16, 1F1B for pp", ""]
        L += ["| config | mesh | GPUs | micro-batches | tokens/s | tokens/s per GPU "
              "| step ms | MFU | efficiency vs 1 GPU | loss max rel. diff | at last step "
              "| pipeline idle (trace) | ideal (p−1)/(m+p−1) | arena/rank |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
              "| ---: | ---: | ---: |"]
        for r in large["rows"]:
            m = r["mesh"]
            head = (f"| {r['name']} | {m['dp']}×{m['tp']}×{m['pp']} | {r['ranks']} "
                    f"| {r['microbatches']} ")
            if not r["ok"]:
                L.append(head + failed_cell(r, 10))
                continue
            t = r.get("trace") or {}
            idle = f_(t.get("idle"), ".3f") if t.get("ok") else \
                ("n/a" if not t else "failed")
            ideal = f_(t.get("ideal"), ".3f") if t else "—"
            L.append(head + f"| {r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_gpu']:,.0f} "
                     f"| {r['step_ms_median']:.2f} | {pct(r['mfu'])} "
                     f"| {f_(r['efficiency'], '.3f')} | {sci(r['loss_max_rel'])} "
                     f"| {sci(r['loss_last_rel'])} | {idle} | {ideal} "
                     f"| {g2().fmt_bytes(r['arena_bytes'])} |")
        L += ["", "Loss differences: |loss − loss(1 GPU)| / loss(1 GPU) per step over "
              "all steps (the largest) and at the last step; same initial weights and "
              "batches on every mesh. Pipeline idle: step 2 of a separate "
              "`--steps=2 --trace-steps=2` run, as tests/bench/pipeline_bubbles.py "
              "computes it; on the GPU the schedule spans are the host's issue times "
              "(the GPU runs behind; NCCL sends/receives record no events), so compare "
              "it with the efficiency column, not only with the ideal."]
        for r in large["rows"]:
            d = (r.get("trace") or {}).get("detail")
            if d:
                L.append(f"- {r['name']} trace, step {d['step']}: {d['ranks']} ranks, "
                         f"step {d['step_ms']:.1f} ms, {d['spans']} spans = "
                         f"{d['span_ms']:.1f} ms, receives {d['recv_ms']:.1f} ms")
        L += [f"- note: {n}" for n in large["notes"]]
        L += ["", "Commands:", ""]
        for r in large["rows"]:
            if r["command"]:
                L.append(f"- `{r['command']}`")
            if (r.get("trace") or {}).get("command"):
                L.append(f"- `{r['trace']['command']}`")
        L += [""]
        for r in large["rows"]:
            for what, src in (("", r), (" trace", r.get("trace") or {})):
                if src.get("output_tail") and not src.get("ok"):
                    L += [f"{r['name']}{what} output tail:", "", "```", src["output_tail"],
                          "```", ""]

    L += ["#### Artifacts (plan.json)", "",
          "| artifact | mesh | ranks | batch | micro-batches | loomc s | compiled |",
          "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for c in plan["configs"]:
        L.append(f"| {c['artifact']} | {c['mesh_flag'] or '1 GPU'} | {c['ranks']} "
                 f"| {c['batch']} | {c['microbatches']} "
                 f"| {f_(c.get('compile_seconds'), '.1f')} "
                 f"| {'yes' if c.get('ok') else 'no: ' + str(c.get('error'))} |")
    L += ["", "loomc commands:", ""] + [f"- `{c.get('command')}`" for c in plan["configs"]]
    if info.get("topology"):
        L += ["", "`nvidia-smi topo -m`:", "", "```", info["topology"], "```"]
    L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------------------
# Run mode
# ---------------------------------------------------------------------------


def open_artifacts(path, workdir):
    """The folder of plan.json: `path` itself, or, when `path` is a tar file
    of the folder (artifacts compress about 15x), its copy extracted into
    workdir."""
    path = os.path.abspath(path)
    if os.path.isfile(path) and tarfile.is_tarfile(path):
        dest = os.path.join(workdir, "artifacts")
        with tarfile.open(path) as t:
            if hasattr(tarfile, "data_filter"):
                t.extractall(dest, filter="data")
            else:
                t.extractall(dest)
        for folder, _, files in os.walk(dest):
            if "plan.json" in files:
                print(f"artifacts: {path} extracted into {folder}", flush=True)
                return folder
        raise OSError(f"no plan.json in {path}")
    return path


def run_mode(a):
    workdir = a.workdir or tempfile.mkdtemp(prefix="loom-multi-gpu-")
    os.makedirs(workdir, exist_ok=True)
    try:
        return run_in(a, workdir)
    finally:
        if not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def run_in(a, workdir):
    try:
        art_dir = open_artifacts(a.artifacts, workdir)
        with open(os.path.join(art_dir, "plan.json")) as f:
            plan = json.load(f)
    except (OSError, ValueError, tarfile.TarError) as e:
        print(f"multi_gpu.py: cannot read the plan of {a.artifacts} ({e}); make it "
              "with --compile-only", file=sys.stderr)
        return 2
    gpus, topo = gpu_list()
    notes = []
    if a.gpus is None:
        if not gpus:
            print("multi_gpu.py: nvidia-smi lists no GPU; give --gpus N", file=sys.stderr)
            return 2
        a.gpus = len(gpus)
    elif gpus and a.gpus > len(gpus):
        notes.append(f"--gpus {a.gpus} but nvidia-smi lists {len(gpus)}")
    if plan.get("gpus") and plan["gpus"] != a.gpus:
        notes.append(f"the plan was compiled for {plan['gpus']} GPUs, this run uses "
                     f"{a.gpus}: configurations needing more are skipped (compile with "
                     f"--gpus {a.gpus} for exactly this machine's set)")
    if plan.get("target") != "cuda":
        notes.append(f"the artifacts are for target {plan.get('target')}: a functional "
                     "check, not GPU figures")
    if plan.get("tiny"):
        notes.append("TINY sizes (--tiny): a functional check, not a benchmark")
    if a.torch_device != "cuda" and not a.skip_torch:
        notes.append(f"PyTorch on {a.torch_device} ({a.torch_backend})")
    try:
        torch_version = g2().torch.__version__
    except ImportError as e:
        print(f"multi_gpu.py: the run mode needs PyTorch (gpt2_small.py imports it): "
              f"{e}", file=sys.stderr)
        return 2
    version = None
    if os.access(a.loom_run, os.X_OK):
        v = run_cmd([a.loom_run, "--version"], env=base_env(), timeout=60)
        version = (v.out.strip().splitlines() or [None])[0] if v.rc == 0 else None
    info = {"date": utc_now(), "gpus": gpus, "gpu_summary": gpu_summary(gpus),
            "topology": topo, "host": platform.node(), "cores": os.cpu_count(),
            "torch": torch_version, "loom_version": version, "artifacts": art_dir,
            "notes": notes}
    print(f"{info['date']}: {info['gpu_summary']}; using {a.gpus}; torch "
          f"{torch_version}; loom-run {version or 'n/a'}", flush=True)

    nccl = dp = large = None
    if "nccl" in a.parts:
        counts = a.nccl_counts or [a.gpus]
        nccl = []
        for n in counts:
            try:
                nccl.append(run_nccl(a, n))
            except Exception as e:  # noqa: BLE001 - a part never ends the run
                nccl.append({"ranks": n, "ok": False, "error": f"{type(e).__name__}: {e}",
                             "output_tail": tail(traceback.format_exc())})
    wanted = [c for c in plan["configs"]
              if (c["part"] == "dp" and "dp" in a.parts)
              or (c["part"] == "large" and "large" in a.parts)]
    datasets = {}
    if wanted:
        try:
            datasets = write_datasets(
                a, [c for c in wanted if c["ranks"] <= a.gpus] or wanted, workdir)
        except OSError as e:
            notes.append(f"no dataset: {e}")
    if "dp" in a.parts:
        try:
            dp = part_dp(a, plan, art_dir, datasets, workdir)
        except Exception as e:  # noqa: BLE001
            dp = {"loom": [], "torch": [], "notes": [
                f"the part failed: {type(e).__name__}: {e}"]}
            print(traceback.format_exc(), file=sys.stderr)
    if "large" in a.parts:
        try:
            large = part_large(a, plan, art_dir, datasets, workdir)
        except Exception as e:  # noqa: BLE001
            large = {"rows": [], "notes": [f"the part failed: {type(e).__name__}: {e}"]}
            print(traceback.format_exc(), file=sys.stderr)

    try:
        text = report(a, info, plan, nccl, dp, large)
    except Exception as e:  # noqa: BLE001 - the figures still go to --json
        text = f"(the Markdown report failed: {type(e).__name__}: {e})\n"
        print(traceback.format_exc(), file=sys.stderr)
    g2().write_outputs(a, text, {"info": info, "config": dict(vars(a)), "plan": plan,
                                 "nccl": nccl, "dp": dp, "large": large})
    return 0


def main(argv=None):
    a = parse_args(argv)
    if a.torch_worker:
        return torch_worker(a)
    if a.compile_only:
        return compile_all(a)
    return run_mode(a)


if __name__ == "__main__":
    sys.exit(main())
