#!/usr/bin/env bash
# e2e.sh: the real server end to end. Starts `kiln serve` on 127.0.0.1 (a free port) with the
# real stories260K model three times: a main server (API key, small body limit), a "tight" one
# (--max-num-seqs 1 --max-queued-requests 1, for queueing, 503 and cancel-while-queued) and one
# with --chat-template (a real model's template), --max-num-seqs 1 and --request-timeout 2, then
# runs tests/e2e/*.test.mjs with the official `openai` npm package under `node --test`. Then the
# error-path and cancellation tests once more against ASan/UBSan binaries, whose logs must stay
# clean.
# Prints the node TAP output, then "N passed, N failed".
set -u
root=${KILN_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
td=${KILN_TESTDATA:-$root/../shared/testdata}
bin=${KILN_BIN:-$root/build/release/kiln}
bin_asan=${KILN_BIN_ASAN:-$root/build/asan/kiln}
model=$td/models/stories260K.gguf
# per run, so that two runs at once (several engineers share a tree) do not clobber each other
logs=$root/build/test-logs/e2e/run.$$
mkdir -p "$logs"
pass=0 fail=0
pids=()

cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT

suite=e2e
# start_server LOG BIN ARGS...: see tests/suites/lib/server.sh
source "$root/tests/suites/lib/server.sh"

# run_node LABEL FILES... : node --test with TAP output; adds its counts.
run_node() {
    local label=$1 out=$logs/$1.tap
    shift
    node --test --test-reporter=tap --test-concurrency=1 --test-timeout=120000 "$@" >"$out" 2>&1
    local rc=$?
    cat "$out"
    local p f
    p=$(grep -E '^# pass [0-9]+' "$out" | tail -n 1 | awk '{print $3}')
    f=$(grep -E '^# fail [0-9]+' "$out" | tail -n 1 | awk '{print $3}')
    p=${p:-0}
    f=${f:-0}
    [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && f=1
    echo "e2e: $label: $p passed, $f failed (node exit $rc)"
    pass=$((pass + p))
    fail=$((fail + f))
}

key=e2e-test-key-0123456789
common=(--served-model-name stories260K --kv-cache-memory 64M --max-request-body-bytes 65536
        --sse-keepalive 1)

if ! start_server "$logs/server.log" "$bin" "${common[@]}" --api-key "$key"; then
    echo "0 passed, 1 failed"
    exit 1
fi
main_port=$srv_port
if ! start_server "$logs/server-tight.log" "$bin" "${common[@]}" --api-key "$key" \
        --max-num-seqs 1 --max-queued-requests 1; then
    echo "0 passed, 1 failed"
    exit 1
fi
tight_port=$srv_port
tmpl=$td/templates/Qwen-Qwen2.5-7B-Instruct.jinja
if ! start_server "$logs/server-t2.log" "$bin" "${common[@]}" --api-key "$key" \
        --max-num-seqs 1 --request-timeout 2 --chat-template "$tmpl"; then
    echo "0 passed, 1 failed"
    exit 1
fi
t2_port=$srv_port

export KILN_URL="http://127.0.0.1:$main_port"
export KILN_URL_TIGHT="http://127.0.0.1:$tight_port"
export KILN_URL_T2="http://127.0.0.1:$t2_port"
export KILN_TEMPLATE_FILE="$tmpl"
export PYTHON=${PYTHON:-/usr/bin/python3}
export KILN_API_KEY="$key"
export KILN_MODEL_NAME=stories260K
export KILN_MODEL="$model"
export KILN_BIN="$bin"
export KILN_REF_TEXT="$td/models/stories260K.greedy252.txt"
export NODE_PATH="$root/tests/node_modules"

run_node release "$root"/tests/e2e/*.test.mjs

# The error and cancellation paths again under ASan/UBSan: never a crash, a sanitizer report or
# a leak (the servers are stopped with SIGTERM and must exit cleanly).
check_asan_exit() { # PID LOG
    local p=$1 log=$2 rc
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    wait "$p" 2>/dev/null
    rc=$?
    if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$log"; then
        echo "FAIL $(basename "$log"): sanitizer report:"
        grep -E -A 20 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$log" | head -40
        fail=$((fail + 1))
    elif [ "$rc" -ne 0 ]; then
        echo "FAIL $(basename "$log"): exit status $rc"
        tail -n 20 "$log"
        fail=$((fail + 1))
    else
        echo "ok   $(basename "$log"): clean log and clean exit after SIGTERM"
        pass=$((pass + 1))
    fi
}
if [ -x "$bin_asan" ]; then
    if start_server "$logs/server-asan.log" "$bin_asan" "${common[@]}" --api-key "$key"; then
        asan_pid=$srv_pid
        asan_port=$srv_port
        if start_server "$logs/server-asan-tight.log" "$bin_asan" "${common[@]}" --api-key "$key" \
                --max-num-seqs 1 --max-queued-requests 1; then
            export KILN_URL="http://127.0.0.1:$asan_port"
            export KILN_URL_TIGHT="http://127.0.0.1:$srv_port"
            run_node asan "$root/tests/e2e/errors.test.mjs" "$root/tests/e2e/cancel.test.mjs"
            check_asan_exit "$srv_pid" "$logs/server-asan-tight.log"
        else
            fail=$((fail + 1))
        fi
        check_asan_exit "$asan_pid" "$logs/server-asan.log"
    else
        fail=$((fail + 1))
    fi
else
    echo "FAIL no ASan binary at $bin_asan (make VARIANT=asan kiln)"
    fail=$((fail + 1))
fi

echo "logs: $logs"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
