#!/usr/bin/env bash
# Runs test binaries one after another (they measure time, so never in
# parallel with each other) and ends with one line "N passed, N failed",
# counting test cases over all binaries. Exits non-zero if any test failed,
# a binary crashed, or no test ran.
set -u
tally=$(mktemp)
trap 'rm -f "$tally"' EXIT
crashed=0
for binary in "$@"; do
  echo "==> $binary"
  before=$(wc -l < "$tally")
  # Sanitizer builds run slower: stretch every deadline (never a lower bound).
  case "$binary" in */san-*) export TEST_TIME_SCALE=${TEST_TIME_SCALE:-4} ;; esac
  # TEST_FILTER: a Catch2 test spec (make FILTER=...), to run only the matching test cases.
  TEST_TALLY=$tally "$binary" ${TEST_FILTER:+"$TEST_FILTER"}
  rc=$?
  if [ "$(wc -l < "$tally")" -eq "$before" ]; then
    echo "!! $binary ended (exit $rc) without reporting its tests"
    crashed=$((crashed + 1))
  elif [ $rc -ne 0 ] && ! awk -v n=$((before + 1)) 'NR >= n && $2 > 0 { found = 1 } END { exit !found }' "$tally"; then
    echo "!! $binary exited $rc with no failed test case"
    crashed=$((crashed + 1))
  fi
done
read -r passed failed < <(awk '{ p += $1; f += $2 } END { print p + 0, f + 0 }' "$tally")
failed=$((failed + crashed))
echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
