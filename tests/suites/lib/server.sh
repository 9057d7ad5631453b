# tests/suites/lib/server.sh: sourced by the suites that run `kiln serve` (e2e.sh, serving.sh).
# The caller sets: model (GGUF path), suite (name for messages), an array pids=() that its EXIT
# trap kills, and optionally an array server_args=(...) given to every server. start_server is not run in a subshell, so the server is the caller's child
# (wait and the trap see it).

# start_server LOG BIN ARGS... : starts `BIN serve -m $model` on 127.0.0.1 and a free port, waits
# until it prints its address and /health answers 200; sets srv_pid and srv_port.
start_server() {
    local log=$1 b=$2
    shift 2
    "$b" serve -m "$model" --host 127.0.0.1 --port 0 ${server_args[@]+"${server_args[@]}"} "$@" \
        >"$log" 2>&1 &
    local pid=$! port=""
    pids+=("$pid")
    for _ in $(seq 1 300); do
        port=$(sed -n 's/.* on http:\/\/127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log" | head -n 1)
        [ -n "$port" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$port" ]; then
        echo "$suite: server did not start ($b $*):" >&2
        tail -n 20 "$log" >&2
        return 1
    fi
    for _ in $(seq 1 100); do
        if node -e "fetch('http://127.0.0.1:$port/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"; then
            srv_pid=$pid
            srv_port=$port
            return 0
        fi
        sleep 0.1
    done
    echo "$suite: /health never answered 200 ($b $*)" >&2
    return 1
}
