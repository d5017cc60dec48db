#!/usr/bin/env bash
# Checks docs/model/redial.pml with SPIN: every property of the model must
# hold, and every mutant must be caught (so no check passes vacuously).
#
#   bash docs/model/check.sh            # needs spin and gcc
#
# Prints one line per check: what, the verdict, states stored, depth, time.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/redial.pml" "$work/"
cd "$work"

failed=0

# run NAME EXPECT SPIN_DEFINES PAN_CC_FLAGS PAN_RUN_FLAGS
#   EXPECT: hold (no error) or violated (at least one error)
run() {
  local name="$1" expect="$2" defines="$3" ccflags="$4" runflags="$5"
  local dir="$work/$name"
  mkdir -p "$dir"
  cp redial.pml "$dir/"
  (
    cd "$dir"
    # shellcheck disable=SC2086
    spin $defines -a redial.pml > spin.out 2>&1 || { cat spin.out; exit 2; }
    # shellcheck disable=SC2086
    gcc -O2 -w $ccflags -o pan pan.c
    local start end
    start=$(date +%s%N)
    # shellcheck disable=SC2086
    ./pan $runflags > pan.out 2>&1 || true
    end=$(date +%s%N)
    local ms=$(( (end - start) / 1000000 ))
    printf '%d.%d' $(( ms / 1000 )) $(( ms % 1000 / 100 )) > seconds
  )
  local out="$dir/pan.out"
  local errors states depth secs verdict
  errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$out" | tail -1)
  states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$out" | tail -1)
  depth=$(sed -n 's/.*depth reached \([0-9]*\).*/\1/p' "$out" | tail -1)
  secs=$(cat "$dir/seconds")
  if [ -z "$errors" ]; then
    verdict="NO RESULT"
    failed=1
    cat "$out"
  elif [ "$expect" = hold ] && [ "$errors" = 0 ]; then
    verdict="holds"
  elif [ "$expect" = violated ] && [ "$errors" != 0 ]; then
    verdict="violated, as it must be: $(grep -m1 -E '^pan:1:' "$out" | sed 's/^pan:1: //')"
  else
    verdict="UNEXPECTED (expected: $expect, errors: $errors)"
    failed=1
    grep -m3 -E '^pan:' "$out" || true
  fi
  printf '%-44s %s [states %s, depth %s, %ss]\n' "$name" "$verdict" "$states" "$depth" "$secs"
}

safety="-DSAFETY -DNOCLAIM -DCOLLAPSE"
live="-DCOLLAPSE -DNFAIR=5"
small="-DMAXGEN=4 -DFAULTS=2"

echo "SPIN $(spin -V | head -1 | sed 's/Spin Version //')"
# The engine: driver, machine, handle, transport, reporters, user.
run engine-safety              hold     ""                    "$safety" "-m400000"
run engine-liveness-recovers   hold     "$small -DWITH_IDLE"             "$live"   "-m400000 -a -f -N recovers"
# The outbox over links that come and go one at a time.
run outbox-safety              hold     "-DOUTBOX"            "$safety" "-m400000"
run outbox-liveness-delivered  hold     "-DOUTBOX -DWITH_IDLE"           "$live"   "-m400000 -a -f -N delivered"
# Mutants: each breaks one rule and must be caught.
run mutant-no-generation-check violated "-DNO_GEN_CHECK"      "$safety" "-m400000"
run mutant-open-before-close   violated "-DOPEN_BEFORE_CLOSE" "$safety" "-m400000"
run mutant-commands-first      violated "-DCOMMANDS_FIRST"    "$safety" "-m400000"
run mutant-shared-tags         violated "-DOUTBOX -DSHARED_TAGS" "$safety" "-m400000"
run mutant-no-backoff-timer    violated "$small -DWITH_IDLE -DNO_BACKOFF_TIMER" "$live" "-m400000 -a -f -N recovers"
run mutant-no-replay           violated "-DOUTBOX -DWITH_IDLE -DNO_REPLAY" "$live"  "-m400000 -a -f -N delivered"

if [ "$failed" != 0 ]; then
  echo "SPIN model check FAILED"
  exit 1
fi
echo "SPIN model check passed: every property holds, every mutant is caught"
