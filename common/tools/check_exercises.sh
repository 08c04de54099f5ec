#!/usr/bin/env bash
# Checks every lab: the committed skeleton is what `make exercises` would
# generate from the solution, the solution passes the lab's tests, and the
# untouched skeleton fails them (a lab whose tests pass without any work
# teaches nothing).
#   usage: check_exercises.sh BUILD_DIR solutions/NN_name...
# SOLUTION_TESTS="[lab]" runs only the lab's tests on each solution (CI does:
# its make test runs every solution's whole suite anyway).
set -u
build=$1
shift
problems=0
for solution in "$@"; do
  name=${solution#solutions/}
  exercise=exercises/$name
  echo "==> $name"
  if ! "$build/tools/markers" skeleton "$solution/server.cpp" | diff -u "$exercise/server.cpp" - >/dev/null; then
    echo "!! $exercise/server.cpp is not up to date with $solution/server.cpp: run 'make exercises'"
    problems=$((problems + 1))
  fi
  if "$build/solutions/$name/test" ${SOLUTION_TESTS:+"$SOLUTION_TESTS"} >/dev/null 2>&1; then
    echo "   solution passes ${SOLUTION_TESTS:-its lab tests and the behaviour suite}"
  else
    echo "!! the solution fails: $build/solutions/$name/test"
    problems=$((problems + 1))
  fi
  # --abort: one failed check is all this needs to see (the skeleton's
  # failures mostly wait out deadlines, and waiting for all of them is slow).
  if "$build/exercises/$name/test" "[lab]" --abort >/dev/null 2>&1; then
    echo "!! the untouched skeleton passes the lab tests: they test nothing"
    problems=$((problems + 1))
  else
    echo "   the untouched skeleton fails the lab tests, as it should"
  fi
  if ! "$build/exercises/$name/test" "~[lab]" >/dev/null 2>&1; then
    echo "!! the skeleton fails the behaviour suite: it must build and serve before the lab starts"
    problems=$((problems + 1))
  fi
done
[ "$problems" -eq 0 ] && echo "exercises: all good" || { echo "exercises: $problems problem(s)"; exit 1; }
