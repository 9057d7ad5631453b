#!/usr/bin/env bash
# bench_cli.sh: `kiln bench` on a small random model (release and ASan builds): the JSON report has
# every requested figure with positive rates consistent with its own timings (tokens / time), the
# roofline fields when asked, the weight bytes equal to the file's tensor bytes (numpy reader),
# and bad arguments or a missing model exit 1 without a report. The pp ceiling follows the weights and
# the kernels: INT8 dots for a quantized model, INT16 dots for an F16 one on the avx512 kernels
# (W16), FP32 FMAs for it on avx2.
set -u
root=${KILN_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
py=${PYTHON:-/usr/bin/python3}
work="$root/build/testmodels"
mkdir -p "$work"
model="$work/bench-cli-q4_k_m.gguf"
if [ ! -f "$model" ] || [ "$model" -ot "$root/tools/gen_model.py" ]; then
    "$py" "$root/tools/gen_model.py" "$model" --type q4_k_m --dim 256 --ff 512 --layers 3 >/dev/null || exit 1
fi
model16="$work/bench-cli-f16.gguf"
if [ ! -f "$model16" ] || [ "$model16" -ot "$root/tools/gen_model.py" ]; then
    "$py" "$root/tools/gen_model.py" "$model16" --type f16 --dim 256 --ff 512 --layers 3 >/dev/null || exit 1
fi
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
for bin in "${KILN_BIN:-$root/build/release/kiln}" "${KILN_BIN_ASAN:-$root/build/asan/kiln}"; do
    [ -x "$bin" ] || { echo "skip $bin (not built)"; continue; }
    name=$(basename "$(dirname "$bin")")
    out=$("$bin" bench -m "$model" -p 24 -n 6 -b 1,2,5 --reps 3 -t 2 --json --roofline 2>&1)
    if [ $? -eq 0 ] && "$py" - "$model" "$out" <<'PY'
import json, os, sys
sys.path.insert(0, os.path.join(os.environ.get("KILN_ROOT", "."), "tools"))
import gguf
r = json.loads(sys.argv[2])
names = [x["test"] for x in r["results"]]
assert names == ["pp24", "tg6 b1", "tg6 b2", "tg6 b5"], names
for x in r["results"]:
    secs = sorted(x["secs"])
    assert len(secs) == 3 and secs[0] > 0, x
    assert abs(x["tps_best"] - x["tokens"] / secs[0]) <= 1e-3 * x["tps_best"] + 1e-3, x
    assert abs(x["tps_median"] - x["tokens"] / secs[1]) <= 1e-3 * x["tps_median"] + 1e-3, x
    assert x["tokens"] == (24 if x["test"] == "pp24" else 6 * x["batch"]), x
    assert ("bw_fraction_median" in x) == x["test"].startswith("tg"), x
    if x["test"].startswith("tg"):
        # each rep against the bandwidth measured right before it; the median of those fractions
        bw = x["bw_per_rep"]
        assert len(bw) == 3 and min(bw) > 1e8, x
        fr = sorted(x["tokens"] / x["batch"] / s * x["bytes_per_step"] / b for s, b in zip(x["secs"], bw))
        assert abs(x["bw_fraction_median"] - fr[1]) <= 1e-3 * fr[1] + 1e-6, (x, fr)
        assert len(x["stolen_per_rep"]) == 3 and all(0 <= v <= 1 for v in x["stolen_per_rep"]), x
    else:
        # each rep against the compute peak measured right before it; the median of those fractions
        pk = x["peak_per_rep"]
        assert len(pk) == 3 and min(pk) > 1e8, x
        fr = sorted(x["tokens"] * x["flops_per_token"] / s / p for s, p in zip(x["secs"], pk))
        assert abs(x["peak_fraction_median"] - fr[1]) <= 1e-3 * fr[1] + 1e-6, (x, fr)
assert r["bandwidth_bytes_per_s"] > 1e8 and r["fma_peak_flops"] > 1e8, r
assert r["weights_bandwidth_bytes_per_s"] > 1e8, r
assert r["pp_ceiling"] == ("int8" if r["int8_peak_ops"] > 0 else "fp32"), r
assert (r["int16_peak_ops"] > 0) == (r["int8_peak_ops"] > 0), r
g = gguf.Reader(sys.argv[1])
want = sum(gguf.tensor_nbytes(t.type, int(__import__("numpy").prod(t.ne)))
           for n, t in g.tensors.items() if n != "token_embd.weight")
assert r["weight_bytes"] == want, (r["weight_bytes"], want)
assert "q4_k" in r["types"] and "q6_k" in r["types"], r["types"]
PY
    then ok "$name: json report"; else bad "$name: json report: $out"; fi
    out=$("$bin" bench -m "$model" -p 8 -n 2 -b 2 --reps 1 2>&1)
    if [ $? -eq 0 ] && grep -q '^| pp8 |' <<<"$out" && grep -q '^| tg2 b2 |' <<<"$out"; then ok "$name: table"; else bad "$name: table: $out"; fi
    for args in "-b 0" "-b 1,x" "-p -1" "--reps 0" "--bogus" "-t"; do
        out=$("$bin" bench -m "$model" $args 2>&1)
        if [ $? -eq 1 ] && ! grep -q '^|' <<<"$out"; then ok "$name: rejects $args"; else bad "$name: $args accepted: $out"; fi
    done
    for kern in avx512 avx2; do
        out=$(KILN_KERNELS=$kern "$bin" bench -m "$model16" -p 8 -n 0 --reps 1 --json --roofline 2>/dev/null)
        if [ $? -eq 0 ] && "$py" - "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
w16 = r["kernels"] == "avx512" and r["int8_peak_ops"] > 0
assert r["pp_ceiling"] == ("int16" if w16 else "fp32"), r
x = r["results"][0]
ceil = r["int16_peak_ops"] if w16 else r["fma_peak_flops"]
assert x["test"] == "pp8" and ceil > 1e8 and len(x["peak_per_rep"]) == 1, r
assert 0.5 * ceil <= x["peak_per_rep"][0] <= 2 * ceil, r  # the same loop, measured again before the rep
PY
        then ok "$name: F16 pp ceiling ($kern kernels)"; else bad "$name: F16 pp ceiling ($kern kernels): $out"; fi
    done
    out=$("$bin" bench -m "$work/no-such-model.gguf" 2>&1)
    if [ $? -eq 1 ] && grep -q "no-such-model" <<<"$out"; then ok "$name: missing model"; else bad "$name: missing model: $out"; fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
