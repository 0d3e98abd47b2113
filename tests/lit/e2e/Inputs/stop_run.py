"""stop_run.py METRICS LINES SIGNAL STOPPED_FILE -- COMMAND...: runs COMMAND
(a loom-run with --metrics=METRICS), waits until METRICS has at least LINES
lines, sends SIGNAL (TERM or INT), waits for the exit, and prints
"exit STATUS"; the number of metrics lines at the end (the step it stopped
after) goes to STOPPED_FILE."""
import os
import signal
import subprocess
import sys
import time

metrics, lines, sig, stopped_file = sys.argv[1:5]
assert sys.argv[5] == "--"
cmd = sys.argv[6:]


def count(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


proc = subprocess.Popen(cmd)
deadline = time.time() + 120
while count(metrics) < int(lines):
    if proc.poll() is not None:
        sys.exit(f"loom-run ended (status {proc.returncode}) before {lines} steps")
    if time.time() > deadline:
        proc.kill()
        sys.exit("timed out waiting for the metrics")
    time.sleep(0.01)
proc.send_signal(getattr(signal, "SIG" + sig))
status = proc.wait(timeout=120)
with open(stopped_file, "w") as f:
    f.write(str(count(metrics)))
print(f"exit {status}")
