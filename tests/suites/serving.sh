#!/usr/bin/env bash
# serving.sh: serving at scale, end to end. Starts `kiln serve` on 127.0.0.1 (free ports) with the
# real stories260K model four times: "main" (prefix caching on), "nocache" (--no-prefix-caching:
# the reference for greedy and seeded texts), "tiny" (a 128-token KV cache: eviction and
# preemption) and "tight" (--max-num-seqs 1, --max-num-queued-reqs 2, --max-num-queued-tokens 100:
# admission control and fair share), then runs tests/e2e/serving/*.test.mjs under `node --test`
# (plain fetch, no SDK). The tiny and tight servers run the ASan/UBSan binary when it exists:
# preemption, eviction, 503s and cancellations must leave a clean log and a clean exit.
# Prints the node TAP output, then "N passed, N failed".
set -u
root=${KILN_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
td=${KILN_TESTDATA:-$root/../shared/testdata}
bin=${KILN_BIN:-$root/build/release/kiln}
bin_asan=${KILN_BIN_ASAN:-$root/build/asan/kiln}
model=$td/models/stories260K.gguf
logs=$root/build/test-logs/serving.$$
mkdir -p "$logs"
pass=0 fail=0
pids=()

cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT

suite=serving
server_args=(--served-model-name stories260K)
# start_server LOG BIN ARGS...: see tests/suites/lib/server.sh
source "$root/tests/suites/lib/server.sh"

sbin=$bin
[ -x "$bin_asan" ] && sbin=$bin_asan
start_server "$logs/main.log" "$bin" || { echo "0 passed, 1 failed"; exit 1; }
export KILN_URL_MAIN="http://127.0.0.1:$srv_port"
start_server "$logs/nocache.log" "$bin" --no-prefix-caching || { echo "0 passed, 1 failed"; exit 1; }
export KILN_URL_NOCACHE="http://127.0.0.1:$srv_port"
start_server "$logs/tiny.log" "$sbin" --kv-cache-memory 160K --max-num-batched-tokens 64 ||
    { echo "0 passed, 1 failed"; exit 1; }
export KILN_URL_TINY="http://127.0.0.1:$srv_port"
tiny_pid=$srv_pid
start_server "$logs/tight.log" "$sbin" --max-num-seqs 1 --max-num-queued-reqs 2 \
    --max-num-queued-tokens 100 || { echo "0 passed, 1 failed"; exit 1; }
export KILN_URL_TIGHT="http://127.0.0.1:$srv_port"
tight_pid=$srv_pid
start_server "$logs/fair.log" "$bin" --max-num-seqs 1 || { echo "0 passed, 1 failed"; exit 1; }
export KILN_URL_FAIR="http://127.0.0.1:$srv_port"

out=$logs/node.tap
node --test --test-reporter=tap --test-concurrency=1 --test-timeout=120000 \
    "$root"/tests/e2e/serving/*.test.mjs >"$out" 2>&1
rc=$?
cat "$out"
p=$(grep -E '^# pass [0-9]+' "$out" | tail -n 1 | awk '{print $3}')
f=$(grep -E '^# fail [0-9]+' "$out" | tail -n 1 | awk '{print $3}')
pass=${p:-0}
fail=${f:-0}
[ "$rc" -ne 0 ] && [ "$fail" -eq 0 ] && fail=1

# kiln bench serve against the main server: exact output lengths (ignore_eos), every request
# completed, latencies ordered; a wrong model name makes every request fail (exit status 1).
py=${PYTHON:-/usr/bin/python3}
if j=$("$bin" bench serve --url "$KILN_URL_MAIN" --model stories260K --concurrency 4 \
        --num-prompts 12 --input-len 48 --output-len 16 --shared-prefix-len 32 --logprobs --json) &&
    "$py" -c '
import json, sys
r = json.loads(sys.argv[1])
assert r["completed"] == 12 and r["failed"] == 0, r
assert r["output_tokens"] == 12 * 16, r
assert 0 < r["ttft_ms"]["p50"] <= r["e2e_ms"]["p50"], r
assert r["ttft_ms"]["p50"] <= r["ttft_ms"]["p90"] <= r["ttft_ms"]["p99"] <= r["ttft_ms"]["max"], r
assert r["itl_ms"]["p99"] <= r["itl_ms"]["max"] and r["e2e_ms"]["max"] >= r["ttft_ms"]["max"], r
assert r["itl_ms"]["mean"] > 0 and r["tpot_ms"]["p50"] > 0 and r["output_throughput"] > 0, r
' "$j"; then
    echo "ok   bench serve: 12 requests x 16 tokens, JSON summary consistent"
    pass=$((pass + 1))
else
    echo "FAIL bench serve: $j"
    fail=$((fail + 1))
fi
if "$bin" bench serve --url "$KILN_URL_MAIN" --model no-such-model --num-prompts 2 \
        --input-len 8 --output-len 4 >"$logs/bench-bad.txt" 2>&1; then
    echo "FAIL bench serve: a wrong model name should fail"
    fail=$((fail + 1))
elif grep -q "HTTP 404" "$logs/bench-bad.txt" && grep -q "Failed requests: *2" "$logs/bench-bad.txt"; then
    echo "ok   bench serve: a wrong model name fails every request with its HTTP status"
    pass=$((pass + 1))
else
    echo "FAIL bench serve: unexpected output"; cat "$logs/bench-bad.txt"
    fail=$((fail + 1))
fi

# The servers under load must exit cleanly on SIGTERM, with no sanitizer report.
for pl in "$tiny_pid:$logs/tiny.log" "$tight_pid:$logs/tight.log"; do
    p=${pl%%:*} log=${pl#*:}
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    wait "$p" 2>/dev/null
    st=$?
    if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$log" || [ "$st" -ne 0 ]; then
        echo "FAIL $(basename "$log"): exit status $st or sanitizer report"
        grep -E -A 20 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$log" | head -40
        fail=$((fail + 1))
    else
        echo "ok   $(basename "$log"): clean exit after SIGTERM ($sbin)"
        pass=$((pass + 1))
    fi
done
echo "logs: $logs"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
