#!/usr/bin/env bash
# Runs the given test binaries (through run_tests.sh) N times in a row and
# stops at the first run with a failure. With LOAD=1 one core is kept busy
# for as long as the runs last, by a busy loop this script starts and ends:
# a test that passes only on a quiet machine shows itself here.
#   usage: repeat_tests.sh N LOAD test-binary...
# Ends with one line "N passed, N failed" counting runs, not test cases.
set -u
runs=$1
load=$2
shift 2
[ "$runs" -ge 1 ] 2>/dev/null || { echo "N must be a whole number >= 1 (got '$runs')" >&2; exit 2; }
here=$(dirname "$0")

hog=
stop_hog() { if [ -n "$hog" ]; then kill "$hog" 2>/dev/null; wait "$hog" 2>/dev/null; hog=; fi; }
trap stop_hog EXIT
trap 'exit 130' INT TERM
if [ "$load" = 1 ]; then
  # Bounded: it also ends by itself after two hours.
  bash -c 'end=$((SECONDS + 7200)); while [ $SECONDS -lt $end ]; do :; done' &
  hog=$!
  echo "keeping one core busy (pid $hog) while the tests run"
fi

log=$(mktemp)
passed=0
failed=0
for ((i = 1; i <= runs; i++)); do
  start=$SECONDS
  if "$here/run_tests.sh" "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "run $i/$runs: $(tail -n 1 "$log") ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1))
    echo "run $i/$runs FAILED: $(tail -n 1 "$log") ($((SECONDS - start)) s); its output follows"
    cat "$log"
    break
  fi
done
rm -f "$log"
echo
echo "runs: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
