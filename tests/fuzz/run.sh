#!/usr/bin/env bash
# Fuzz one of cnnkit's readers for a bounded time, starting from the seed corpus:
#   tests/fuzz/run.sh TARGET SECONDS [libFuzzer flags]      TARGET: load checkpoint idx npy image
#   tests/fuzz/run.sh all SECONDS                            every target, one after the other
# Fails (non-zero exit) on any finding: an undocumented exception or broken invariant, a crash,
# an input that runs longer than 10 s (a hang), or memory above 2 GB. The input is kept in
# $FUZZ_OUT (default: a temporary folder, printed); replay it with
#   python tests/fuzz/fuzz.py TARGET --replay FILE
# The corpus grows in a temporary folder (FUZZ_KEEP=1 keeps it); the committed seeds are not
# changed. Needs atheris (pip install atheris).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=${1:?usage: run.sh TARGET SECONDS [libFuzzer flags]}
secs=${2:?usage: run.sh TARGET SECONDS [libFuzzer flags]}
shift 2

if [ "$target" = all ]; then
  rc=0
  for t in load checkpoint idx npy image; do "$0" "$t" "$secs" "$@" || rc=1; done
  exit $rc
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/cnnkit-fuzz-$target.XXXXXX")
out=${FUZZ_OUT:-$work/findings}
mkdir -p "$work/corpus" "$out"
log=$work/log
start=$(date +%s)
# libFuzzer stops itself after -max_total_time; the outer timeout is only a backstop.
timeout --signal=KILL $((secs + 300)) \
  python "$here/fuzz.py" "$target" "$work/corpus" "$here/corpus/$target" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$out/" "$@" >"$log" 2>&1
rc=$?
took=$(( $(date +%s) - start ))
done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$done_line")
ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$done_line")
corp=$(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$done_line")
seeds=$(find "$here/corpus/$target" -type f | wc -l)
if [ $rc -eq 0 ]; then
  echo "FUZZ $target: ${runs:-?} executions in ${took} s, cov ${cov:-?} ft ${ft:-?}," \
       "corpus $seeds seeds -> ${corp:-?} inputs, no finding"
  if [ -n "${FUZZ_KEEP:-}" ]; then echo "FUZZ $target: corpus kept in $work/corpus"; else rm -rf "$work"; fi
else
  tail -60 "$log"
  echo "FUZZ $target: FAILED (exit $rc after ${took} s); the input is in $out, the log in $log"
fi
exit $rc
