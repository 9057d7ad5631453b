#!/usr/bin/env bash
# convert.sh: tools/llama2c_to_gguf.py on the real stories260K checkpoint must reproduce every
# tensor and metadata entry of the GGUF that llama.cpp's own converter wrote
# ($KILN_TESTDATA/models/stories260K.gguf), from either tokenizer form (llama2.c .bin and the
# SentencePiece .model); quantized conversions must stay within their block error bound.
# Prints per-case lines and "N passed, N failed".
set -u
root=${KILN_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
td=${KILN_TESTDATA:-$root/../shared/testdata}
py=${PYTHON:-/usr/bin/python3}
out=$root/build/testmodels
mkdir -p "$out"
pass=0 fail=0
ok() { echo "ok   $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }

m=$td/models
for tok in tok512.bin tok512.model; do
    f=$out/stories260K.from-${tok#tok512.}.gguf
    if ! "$py" "$root/tools/llama2c_to_gguf.py" "$m/stories260K.bin" "$m/$tok" "$f"; then
        bad "convert with $tok"
        continue
    fi
    if log=$("$py" "$root/tests/ref/gguf_diff.py" "$m/stories260K.gguf" "$f" --ignore general.name); then
        ok "stories260K.bin + $tok == llama.cpp's stories260K.gguf ($(tail -n1 <<<"$log"))"
    else
        bad "stories260K.bin + $tok differs from stories260K.gguf:"
        echo "$log" | head -n 20
    fi
done

# Quantized conversions: every weight read back must lie within the format's rounding bound of
# the f32 original, in units of half a quantization step: f16/bf16 relative half-ulp (1);
# Q8_0 half a step plus the f16 rounding of d (127 * 2^-11 of a step: 1.125); Q4_0 a full step
# (2), since values opposite the largest-magnitude one clamp from +8 to +7.
for t in f16 bf16 q8_0 q4_0; do
    f=$out/stories260K.$t.gguf
    if ! "$py" "$root/tools/llama2c_to_gguf.py" --type "$t" "$m/stories260K.bin" "$m/tok512.bin" "$f"; then
        bad "convert --type $t"
        continue
    fi
    if "$py" - "$m/stories260K.gguf" "$f" "$t" <<'PYEOF'
import sys, os
import numpy as np
sys.path.insert(0, os.path.join(os.environ.get("KILN_ROOT", "."), "tools"))
import gguf
ref, cand, t = gguf.Reader(sys.argv[1]), gguf.Reader(sys.argv[2]), sys.argv[3]
worst = 0.0
for name, rt in ref.tensors.items():
    ct = cand.tensors[name]
    a, b = rt.array(), ct.array()
    assert a.shape == b.shape, name
    if len(rt.ne) == 1:
        assert ct.type == gguf.F32 and np.array_equal(a, b), name
        continue
    if t in ("f16", "bf16"):
        rel = 2.0 ** -11 if t == "f16" else 2.0 ** -8
        err = np.abs(a - b) / np.maximum(np.abs(a), 1e-4)
        worst = max(worst, float(err.max()) / rel)
    else:
        blk = a.reshape(-1, 32)
        amax = np.abs(blk).max(axis=1, keepdims=True)
        step = amax / (127.0 if t == "q8_0" else 8.0)
        e = np.abs(blk - b.reshape(-1, 32)) / np.maximum(step, 1e-30)
        worst = max(worst, float(e.max()) * 2)   # in units of half a step
bound = {"f16": 1.0, "bf16": 1.0, "q8_0": 1.125, "q4_0": 2.0}[t] * 1.001
print("worst error %.3f half-steps, bound %.3f" % (worst, bound))
sys.exit(0 if worst <= bound else 1)
PYEOF
    then ok "convert --type $t within its rounding bound"
    else bad "convert --type $t exceeds its rounding bound"
    fi
done

# The model engineer's check of `kiln run` on the converted file lives with the model suites.
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
