"""Memory and time of the GPT sample under mixed precision and recomputation.

For fp32 and bf16, and for recompute none / every=1 / every=2 / a budget,
prints the planned peak (loomc --report=json), the measured peak resident
memory and the median step time (loom-run --metrics), the activation memory
relative to fp32/none, and the compute overhead of recomputation (step time
relative to the same precision without it). Not a test: run it on an idle
machine (scripts/bench --memory-time).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loomc", required=True)
    ap.add_argument("--loom-run", required=True)
    ap.add_argument("--source", default=os.path.join(os.path.dirname(__file__), "..", "..", "samples", "gpt.loom"))
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "samples", "data", "text.bin"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--defines", default="", help="extra -D overrides, comma separated")
    ap.add_argument("--budget", default="36MiB")
    args = ap.parse_args()
    defines = [f"-D{d}" for d in args.defines.split(",") if d]
    configs = [(p, r) for p in ("fp32", "bf16")
               for r in ("none", "every=1", "every=2", f"budget={args.budget}")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision, recompute in configs:
            flags = defines + [f"--precision={precision}", f"--recompute={recompute}"]
            report = json.loads(run([args.loomc, args.source, "--report=json"] + flags).stdout)
            memory = report["ranks"][0]["memory"]
            art = os.path.join(tmp, "m.loomx")
            run([args.loomc, args.source, "-o", art] + flags)
            metrics = os.path.join(tmp, "m.jsonl")
            if os.path.exists(metrics):
                os.remove(metrics)
            run([args.loom_run, art, "--steps", str(args.steps), "--threads", str(args.threads),
                 "--data", args.data, "--metrics", metrics],
                env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
            steps = [json.loads(line) for line in open(metrics)]
            warm = steps[2:] if len(steps) > 4 else steps
            rows.append({
                "precision": precision, "recompute": recompute,
                "planned_peak": memory["peak"], "activations": memory["activations"],
                "rss": max(s["mem_peak_bytes"] for s in steps),
                "step_ms": statistics.median(s["step_ms"] for s in warm),
            })
    base = {r["precision"]: r for r in rows if r["recompute"] == "none"}
    ref = base["fp32"]
    mib = lambda b: f"{b / 2**20:.1f}"
    print("| precision | recompute | planned peak MiB | measured peak RSS MiB | "
          "planned peak vs fp32/none | step ms | overhead vs no recompute |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        overhead = r["step_ms"] / base[r["precision"]]["step_ms"] - 1
        print(f"| {r['precision']} | {r['recompute']} | {mib(r['planned_peak'])} | {mib(r['rss'])} | "
              f"{r['planned_peak'] / ref['planned_peak']:.2f} | {r['step_ms']:.1f} | {100 * overhead:+.0f}% |")


if __name__ == "__main__":
    sys.exit(main())
