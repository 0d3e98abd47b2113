#!/usr/bin/python3
"""Pipeline bubbles: measured idle fraction against the ideal, per schedule.

For pp = 2 and 4 and m = 4, 8, 16 micro-batches, GPipe, 1F1B, zero-bubble
(1F1B with each backward split into input and weight gradients) and
interleaved 1F1B (2 virtual stages per rank): compile the
GPT sample (-Dlayers=8, the global batch 16·m/4 so each micro-batch keeps 4
rows), run `mpirun -np pp loom-run --trace` for --steps steps, and from the
trace of the timed steps (after the first) compute

  idle = 1 - (sum over ranks of the time inside schedule spans F*/B*/W*
              (interleaved: F0c1 ...),
              less the time their receives wait for the neighbour stage)
             / (pp * the step's wall time, the longest train_step event)

beside the ideal (p-1)/(m+p-1) of a balanced pipeline ((p-1)/(v·m+p-1)
interleaved); and print each
stage's activation memory as `loomc --report` plans it for that schedule.
On a machine with fewer cores than ranks (pp=4 on 2 cores) the ranks share
cores, so busy time includes waiting for a core: those rows are printed
but are not a measure of the schedule. A benchmark, not a test.

usage: pipeline_bubbles.py [--loomc PATH] [--loom-run PATH] [--steps N]
                           [--pp 2,4] [--microbatches 4,8,16]
                           [--compile-only DIR | --artifacts DIR]

--compile-only DIR compiles every configuration into DIR (artifacts and
their reports) and runs nothing; --artifacts DIR runs those on another
machine that has loom-run and mpirun but no compiler (a host with more
cores than this one, for the pp=4 rows).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMP_WAIT_POLICY="passive")


def run(cmd):
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def idle_fraction(trace, pp):
    events = [e for e in json.load(open(trace))["traceEvents"] if e.get("ph") == "X"]
    steps = sorted({e["args"]["step"] for e in events if e["name"] == "train_step"})
    timed = steps[1:] or steps
    fractions = []
    for s in timed:
        calls = [e for e in events if e["name"] == "train_step" and e["args"]["step"] == s]
        wall = max(e["dur"] for e in calls)
        busy = 0.0
        for c in calls:
            for e in events:
                inside = e["pid"] == c["pid"] and c["ts"] <= e["ts"] <= c["ts"] + c["dur"]
                if inside and e.get("cat") == "compute" and re.fullmatch(r"[FBW]\d+(c\d+)?", e["name"]):
                    busy += e["dur"]
                elif inside and e.get("cat") == "comm" and e["name"].startswith("recv"):
                    busy -= e["dur"]  # waiting for the neighbour stage is idle
        fractions.append(1 - busy / (pp * wall))
    return sum(fractions) / len(fractions), wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loomc", default=os.path.join(ROOT, "build/bin/loomc"))
    ap.add_argument("--loom-run", default=os.path.join(ROOT, "build/bin/loom-run"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--pp", default="2,4")
    ap.add_argument("--microbatches", default="4,8,16")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--compile-only", metavar="DIR")
    mode.add_argument("--artifacts", metavar="DIR")
    a = ap.parse_args()
    tmp = a.compile_only or a.artifacts or tempfile.mkdtemp(prefix="loom-pp-bench-")
    os.makedirs(tmp, exist_ok=True)
    data = os.path.join(ROOT, "samples/data/text.bin")
    cores = os.cpu_count()
    print(f"GPT sample, 8 layers, 4 rows per micro-batch; {cores} cores; "
          f"idle = 1 - busy / (stages x step time), steps 2..{a.steps}")
    print(f"{'pp':>3} {'m':>3} {'schedule':>11} {'idle':>7} {'ideal':>7} "
          f"{'step ms':>8}  activations per stage (planned)")
    for pp in map(int, a.pp.split(",")):
        for m in map(int, a.microbatches.split(",")):
            for schedule in ("gpipe", "1f1b", "zero_bubble", "interleaved"):
                src = [os.path.join(ROOT, "samples/gpt.loom"), "-Dlayers=8",
                       f"-Dbatch={4 * m}", f"--mesh=pp={pp}", f"--microbatches={m}",
                       f"--schedule={schedule}"]
                if schedule == "interleaved":
                    src += ["--set", "pipeline.virtual=2"]
                art = os.path.join(tmp, f"p{pp}m{m}{schedule}.loomx")
                saved = os.path.join(tmp, f"p{pp}m{m}{schedule}.report")
                if a.artifacts:
                    report = open(saved).read()
                else:
                    run([a.loomc] + src + ["-o", art])
                    report = run([a.loomc] + src + ["--report"])
                    open(saved, "w").write(report)
                if a.compile_only:
                    continue
                acts = re.findall(r"stage \d+: params .*?activations ([0-9.]+ \w+)", report)
                trace = os.path.join(tmp, f"p{pp}m{m}{schedule}.json")
                run(["mpirun", "-np", str(pp), a.loom_run, art, "--data=" + data,
                     f"--steps={a.steps}", "--threads=1", "--eval-every=0",
                     f"--trace={trace}", f"--trace-steps={a.steps}"])
                idle, wall = idle_fraction(trace, pp)
                # Interleaving v chunks per rank shrinks the bubble v times.
                v = 2 if schedule == "interleaved" else 1
                ideal = (pp - 1) / (v * m + pp - 1)
                note = "  (ranks share cores)" if pp > cores else ""
                print(f"{pp:>3} {m:>3} {schedule:>11} {idle:7.3f} {ideal:7.3f} "
                      f"{wall / 1000:8.1f}  {', '.join(acts)}{note}")


if __name__ == "__main__":
    main()
