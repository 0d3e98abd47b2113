"""What the single-purpose parity scripts (test_fake_quant.py, test_qat.py,
test_cnn.py) share: running loomc/loom-run, and the table of checks, one
line per check with its value, its limit and PASS or FAIL."""
import subprocess
import sys


def run(cmd, what):
    """Runs cmd; on failure prints its output and exits naming `what`."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"{what}: {' '.join(cmd)} failed ({p.returncode})")
    return p


def relative(value, reference):
    return abs(value - reference) / max(abs(reference), 1e-30)


class Checks:
    def __init__(self, width=48):
        self.width, self.failures = width, 0

    def check(self, what, value, limit):
        ok = value <= limit
        self.failures += 0 if ok else 1
        print(f"{what:<{self.width}} {value:10.3e}  (limit {limit:.0e})  "
              f"{'PASS' if ok else 'FAIL'}")

    def finish(self, title):
        """Prints `title: PASSED|FAILED` and exits 0 or 1."""
        print(f"{title}: {'PASSED' if self.failures == 0 else 'FAILED'}")
        sys.exit(1 if self.failures else 0)
