#!/usr/bin/env bash
# bench/run.sh (`make bench`): generates the benchmark models into build/benchmodels/ if missing
# (random weights, real shapes: TinyLlama-1.1B and SmolLM-135M in F16, Q8_0, Q4_0, Q4_K_M; about
# 30 s per TinyLlama file), runs `kiln bench` on each (pp512, tg64 at batch 1, 4, 16; 3 reps;
# roofline), and writes the engine section of BENCHMARKS.md (bench/report.py; other sections of
# the file are kept). Each run's results are also kept in build/bench/history/<UTC time>/; the
# report adds min / median across the kept runs of the same src/ tree. Environment: BENCH_REPS
# (3), BENCH_THREADS (default: physical cores), BENCH_MODELS (regex over model file names,
# default all), BENCH_P (512), BENCH_N (64).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=/usr/bin/python3
kiln=build/release/kiln
models=build/benchmodels
out=build/bench
mkdir -p "$models" "$out"
reps=${BENCH_REPS:-3}
p=${BENCH_P:-512}
n=${BENCH_N:-64}
filter=${BENCH_MODELS:-.}
targs=()
[ -n "${BENCH_THREADS:-}" ] && targs=(-t "$BENCH_THREADS")

[ -x "$kiln" ] || make -j2 kiln

gen() { # file preset type
    if [ ! -f "$models/$1" ]; then
        echo "generating $models/$1 ($2, $3)"
        "$py" tools/gen_model.py "$models/$1.part" --preset "$2" --type "$3"
        mv "$models/$1.part" "$models/$1"
    fi
}

list=()
for t in f16 q8_0 q4_0 q4_k_m; do
    list+=("tl-$t.gguf tinyllama-1.1b $t" "smol-$t.gguf smollm-135m $t")
done
# the source the figures come from, recorded beside each report
source=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
[ -n "$(git status --short --untracked-files=no src 2>/dev/null)" ] && source="$source plus uncommitted changes in src/"
# the code itself (the src/ tree, whatever commit carries it): runs of the same code are
# summarized together across runs (report.py); uncommitted changes make a run a group of its own
srctree=$(git rev-parse --short HEAD:src 2>/dev/null || echo "?")
[ -n "$(git status --short --untracked-files=no src 2>/dev/null)" ] && srctree="$srctree-dirty-$(date -u +%s)"
hist="$out/history/$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$hist"
jsons=()
t0=$SECONDS
for entry in "${list[@]}"; do
    set -- $entry
    [[ $1 =~ $filter ]] || continue
    gen "$1" "$2" "$3"
    j="$out/${1%.gguf}.json"
    echo "kiln bench -m $models/$1 -p $p -n $n -b 1,4,16 --reps $reps ${targs[*]:-}"
    uptime >"$out/${1%.gguf}.load"
    echo "$source" >"$out/${1%.gguf}.source"
    echo "$srctree" >"$out/${1%.gguf}.srctree"
    "$kiln" bench -m "$models/$1" -p "$p" -n "$n" -b 1,4,16 --reps "$reps" ${targs[@]+"${targs[@]}"} --json --roofline >"$j.part"
    uptime >>"$out/${1%.gguf}.load"
    mv "$j.part" "$j"
    jsons+=("$j")
    cp "$j" "$out/${1%.gguf}".{load,source,srctree} "$hist/"
    "$py" -c 'import json,sys; r=json.load(open(sys.argv[1])); print("  " + ", ".join("%s %.1f" % (x["test"], x["tps_median"]) for x in r["results"]))' "$j"
done
echo "benchmarks took $((SECONDS - t0)) s"
# the report covers every model with a result, those of earlier (filtered) runs included
jsons=()
for entry in "${list[@]}"; do
    set -- $entry
    [ -f "$out/${1%.gguf}.json" ] && jsons+=("$out/${1%.gguf}.json")
done
"$py" bench/report.py BENCHMARKS.md "${jsons[@]}"
echo "wrote BENCHMARKS.md"
