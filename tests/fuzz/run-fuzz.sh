#!/usr/bin/env bash
# run-fuzz.sh FUZZER SEEDS SCRATCH SECONDS DICT - a bounded libFuzzer run.
# Prints the executions run; a crash leaves its input in SCRATCH/.. and fails.
set -euo pipefail
fuzzer=$(realpath "$1") seeds=$(realpath "$2") scratch=$3 seconds=$4 dict=$(realpath "$5")
mkdir -p "$(dirname "$scratch")"; scratch=$(realpath -m "$scratch")
rm -rf "$scratch"; mkdir -p "$scratch"
log=$scratch.log
cd "$(dirname "$scratch")"
if ! "$fuzzer" -max_total_time="$seconds" -max_len=4096 -timeout=10 \
     -rss_limit_mb=2048 -dict="$dict" -print_final_stats=1 \
     -artifact_prefix="$(dirname "$scratch")/" "$scratch" "$seeds" >"$log" 2>&1; then
  tail -60 "$log"
  echo "fuzz: FAILED (see $log)"
  exit 1
fi
execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
echo "fuzz: $execs executions in ${seconds}s without a crash"
