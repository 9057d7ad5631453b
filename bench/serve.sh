#!/usr/bin/env bash
# bench/serve.sh: the serving benchmark of BENCHMARKS.md "## Serving": `kiln bench serve` against
# `kiln serve` on the random-weight TinyLlama-1.1B-shaped models of build/benchmodels/ (generated
# here if missing with tools/gen_model.py; never committed). For each type (Q4_0, Q8_0):
#   1. concurrency sweep: C in $CONC (default 1 4 16 64), max(4, C) requests of $IN prompt
#      tokens and $OUT output tokens (ignore_eos) each -> output tok/s, TTFT, ITL, E2E;
#   2. (first type only) cached-prefix TTFT: 1,000-token shared prefix + 16 own tokens, one
#      warm-up request, then requests whose prefix is cached, against unique 1,016-token prompts;
#   3. (first type only) ITL at concurrency 16 (32 prompt + 256 output tokens each: long enough
#      that the long prompts arrive while they decode) without and with long prompts (1,000
#      tokens, one output token, Poisson 0.2/s) arriving, with --max-num-batched-tokens $CHUNK.
# Prints markdown tables; raw JSON lines go to build/bench-serve/. Takes ~10-20 minutes on the
# 2-core machine; run it when the machine is quiet. Env: TYPES, CONC, IN, OUT, CHUNK, THREADS,
# PARTS (default "sweep prefix itl": which of 1-3 to run).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/build/release/kiln
models=$root/build/benchmodels
out=$root/build/bench-serve
mkdir -p "$models" "$out"
TYPES=${TYPES:-"q4_0 q8_0"}
CONC=${CONC:-"1 4 16 64"}
IN=${IN:-32}
OUT=${OUT:-32}
CHUNK=${CHUNK:-64}
THREADS=${THREADS:-0}
PARTS=${PARTS:-"sweep prefix itl"}
has() { [[ " $PARTS " == *" $1 "* ]]; }
[ -x "$bin" ] || make -C "$root" -j2 >/dev/null

srv_pid=""
stop_server() {
    if [ -n "$srv_pid" ]; then kill "$srv_pid" 2>/dev/null; wait "$srv_pid" 2>/dev/null || true; fi
    srv_pid=""
}
trap stop_server EXIT

# start_server MODEL ARGS...: sets url.
start_server() {
    local m=$1 log=$out/server.log
    shift
    "$bin" serve -m "$m" --served-model-name tl --host 127.0.0.1 --port 0 --threads "$THREADS" \
        --max-num-seqs 64 --kv-cache-memory 2G "$@" >"$log" 2>&1 &
    srv_pid=$!
    local port=""
    for _ in $(seq 1 600); do
        port=$(sed -n 's/.* on http:\/\/127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log" | head -n 1)
        [ -n "$port" ] && break
        sleep 0.1
    done
    [ -n "$port" ] || { echo "server did not start:"; tail "$log"; exit 1; }
    url=http://127.0.0.1:$port
}

# --logprobs: every token in a chunk of its own, so ITL is per token even when a random-weight
# model's text is held back (incomplete UTF-8) or empty.
bs() { "$bin" bench serve --url "$url" --model tl --json --logprobs "$@"; }
field() { /usr/bin/python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
first=1
for t in $TYPES; do
    m=$models/tl-$t.gguf
    [ -f "$m" ] || /usr/bin/python3 "$root/tools/gen_model.py" "$m" --preset tinyllama-1.1b --type "$t"
    start_server "$m"
    bs --concurrency 1 --num-prompts 1 --input-len 8 --output-len 2 >/dev/null # page weights in
    if has sweep; then
    echo
    echo "### TinyLlama-1.1B shape, ${t^^}: concurrency sweep ($IN prompt + $OUT output tokens)"
    echo
    echo "| concurrency | requests | output tok/s | vs C=1 | req/s | TTFT p50 / p99 ms | TPOT p50 ms | ITL p50 / p99 ms | E2E p50 ms |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    base=""
    for c in $CONC; do
        n=$((c > 4 ? c : 4))
        j=$(bs --concurrency "$c" --num-prompts "$n" --input-len "$IN" --output-len "$OUT" --seed "$c")
        echo "$j" >>"$out/sweep-$t.jsonl"
        tps=$(field "$j" 'r["output_throughput"]')
        [ -z "$base" ] && base=$tps
        field "$j" '"| %d | %d | %.1f | %.2fx | %.2f | %.0f / %.0f | %.0f | %.0f / %.0f | %.0f |" % (r["concurrency"], r["completed"], r["output_throughput"], r["output_throughput"] / '"$base"', r["request_throughput"], r["ttft_ms"]["p50"], r["ttft_ms"]["p99"], r["tpot_ms"]["p50"], r["itl_ms"]["p50"], r["itl_ms"]["p99"], r["e2e_ms"]["p50"])'
    done
    fi
    if [ "$first" = 1 ] && has prefix; then
        echo
        echo "### ${t^^}: TTFT with a cached 1,000-token prefix (concurrency 1, 1,016-token prompts, 4 output tokens)"
        echo
        echo "| prompts | requests | TTFT p50 ms | TTFT mean ms |"
        echo "|---|---:|---:|---:|"
        j=$(bs --concurrency 1 --num-prompts 2 --input-len 1016 --output-len 4 --seed 7)
        echo "$j" >>"$out/prefix-$t.jsonl"
        field "$j" '"| unique (uncached) | %d | %.0f | %.0f |" % (r["completed"], r["ttft_ms"]["p50"], r["ttft_ms"]["mean"])'
        bs --concurrency 1 --num-prompts 1 --input-len 1016 --output-len 4 --shared-prefix-len 1000 --seed 8 >/dev/null
        j=$(bs --concurrency 1 --num-prompts 4 --input-len 1016 --output-len 4 --shared-prefix-len 1000 --seed 8)
        echo "$j" >>"$out/prefix-$t.jsonl"
        field "$j" '"| 1,000-token prefix cached | %d | %.0f | %.0f |" % (r["completed"], r["ttft_ms"]["p50"], r["ttft_ms"]["mean"])'
    fi
    if [ "$first" = 1 ] && has itl; then
        stop_server
        start_server "$m" --max-num-batched-tokens "$CHUNK"
        bs --concurrency 1 --num-prompts 1 --input-len 8 --output-len 2 >/dev/null
        echo
        echo "### ${t^^}: ITL at concurrency 16 while long prompts arrive (--max-num-batched-tokens $CHUNK)"
        echo
        echo "| load | ITL p50 ms | ITL p90 ms | ITL p99 ms | ITL max ms | output tok/s |"
        echo "|---|---:|---:|---:|---:|---:|"
        j=$(bs --concurrency 16 --num-prompts 16 --input-len 32 --output-len 256 --seed 11)
        echo "$j" >>"$out/itl-$t.jsonl"
        field "$j" '"| 16 streams alone | %.0f | %.0f | %.0f | %.0f | %.1f |" % (r["itl_ms"]["p50"], r["itl_ms"]["p90"], r["itl_ms"]["p99"], r["itl_ms"]["max"], r["output_throughput"])'
        bs --concurrency 2 --num-prompts 3 --input-len 1000 --output-len 1 --request-rate 0.2 --seed 12 >"$out/long-$t.json" &
        lp=$!
        j=$(bs --concurrency 16 --num-prompts 16 --input-len 32 --output-len 256 --seed 13)
        wait "$lp" || true
        echo "$j" >>"$out/itl-$t.jsonl"
        field "$j" '"| 16 streams + 1,000-token prompts | %.0f | %.0f | %.0f | %.0f | %.1f |" % (r["itl_ms"]["p50"], r["itl_ms"]["p90"], r["itl_ms"]["p99"], r["itl_ms"]["max"], r["output_throughput"])'
    fi
    first=0
    stop_server
done
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
