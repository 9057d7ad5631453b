#!/usr/bin/env bash
# Runs every kiln test suite and prints, last, "N passed, N failed" (exit status 1 on any failure).
# A suite is a unit-test binary (release and asan builds), or an executable tests/suites/*.sh.
# Each suite's output goes to build/test-logs/<suite>.log; its counts are read from its own last
# "N passed, N failed" line, or node's "# pass N" / "# fail N"; a suite that exits non-zero
# without counts counts as one failure. KILN_TEST_FILTER=regex runs only matching suites.
set -u
cd "$(dirname "$0")/.."
root=$(pwd)
export KILN_ROOT="$root"
export KILN_TESTDATA="${KILN_TESTDATA:-$(cd "$root/.." && pwd)/shared/testdata}"
export KILN_BIN="$root/build/release/kiln"
export KILN_BIN_ASAN="$root/build/asan/kiln"
export PYTHON=/usr/bin/python3
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
logs="$root/build/test-logs"
mkdir -p "$logs"

total_pass=0
total_fail=0
failed_suites=()

run_suite() { # name, command...
    local name=$1; shift
    if [ -n "${KILN_TEST_FILTER:-}" ] && ! [[ $name =~ $KILN_TEST_FILTER ]]; then return; fi
    local log="$logs/${name//\//_}.log" t0=$SECONDS
    "$@" >"$log" 2>&1
    local rc=$?
    local p f line
    line=$(grep -aE '(^|: )[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
    if [ -n "$line" ]; then
        p=$(sed -E 's/.*(^|: )([0-9]+) passed, ([0-9]+) failed.*/\2/' <<<"$line")
        f=$(sed -E 's/.*(^|: )([0-9]+) passed, ([0-9]+) failed.*/\3/' <<<"$line")
    elif grep -aqE '^# pass [0-9]+' "$log"; then
        p=$(grep -aE '^# pass [0-9]+' "$log" | tail -n 1 | awk '{print $3}')
        f=$(grep -aE '^# fail [0-9]+' "$log" | tail -n 1 | awk '{print $3}')
    else
        p=0; f=0
    fi
    [ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ] && f=1
    total_pass=$((total_pass + ${p:-0}))
    total_fail=$((total_fail + ${f:-0}))
    printf '%-40s %4d passed %4d failed  (%ds)\n' "$name" "${p:-0}" "${f:-0}" $((SECONDS - t0))
    if [ "${f:-0}" -ne 0 ]; then
        failed_suites+=("$name")
        echo "---- tail of $log ----"
        tail -n 40 "$log"
        echo "----"
    fi
}

for variant in release asan; do
    for t in build/$variant/tests/test_*; do
        [ -x "$t" ] || continue
        run_suite "$variant/$(basename "$t")" "$t"
    done
done
for s in tests/suites/*.sh; do
    [ -f "$s" ] || continue
    run_suite "suite/$(basename "$s" .sh)" bash "$s"
done

if [ ${#failed_suites[@]} -gt 0 ]; then echo "failed suites: ${failed_suites[*]}"; fi
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
