#!/usr/bin/env bash
# real_model.sh: the real stories260K model end to end. `kiln run` greedy (-n 252 --temp 0) on
# llama.cpp's stories260K.gguf, and on the GGUF that tools/llama2c_to_gguf.py makes from the
# llama2.c checkpoint, must print exactly the reference text (stories260K.greedy252.txt, which
# llama.cpp reproduces byte for byte); a shorter run under ASan/UBSan must print its prefix
# with a clean exit. Also: `kiln eval` logits agree with the numpy reference forward pass on it.
# Its F16 and BF16 conversions (llama2c_to_gguf.py --type) through the default kernels (on
# AVX-512: int16 dot products, W16) print the same greedy text as through the scalar reference
# kernels (f32 arithmetic on the same weights), and the F16 one still the reference text itself.
# Prints per-case lines and "N passed, N failed".
set -u
root=${KILN_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
td=${KILN_TESTDATA:-$root/../shared/testdata}
py=${PYTHON:-/usr/bin/python3}
bin=${KILN_BIN:-$root/build/release/kiln}
bin_asan=${KILN_BIN_ASAN:-$root/build/asan/kiln}
out=$root/build/testmodels
mkdir -p "$out"
pass=0 fail=0
ok() { echo "ok   $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }

m=$td/models
want=$m/stories260K.greedy252.txt
prompt="Once upon a time"

greedy_check() { # label, kiln binary, model, n, expected file
    local label=$1 b=$2 model=$3 n=$4 exp=$5 got=$out/real_model.$$.txt err=$out/real_model.$$.err
    if ! "$b" run -m "$model" -p "$prompt" -n "$n" --temp 0 >"$got" 2>"$err"; then
        bad "$label: kiln run exited non-zero"; tail -n 5 "$err"
    elif cmp "$got" "$exp"; then
        ok "$label: $(wc -c <"$got") bytes identical to the reference"
    else
        bad "$label: output differs from $(basename "$exp")"; head -c 300 "$got"; echo
    fi
    rm -f "$got" "$err"
}

greedy_check "stories260K.gguf greedy 252" "$bin" "$m/stories260K.gguf" 252 "$want"

conv=$out/stories260K.real_model.gguf
if "$py" "$root/tools/llama2c_to_gguf.py" "$m/stories260K.bin" "$m/tok512.bin" "$conv" >/dev/null; then
    greedy_check "llama2c_to_gguf(stories260K.bin, tok512.bin) greedy 252" "$bin" "$conv" 252 "$want"
    rm -f "$conv"
else
    bad "tools/llama2c_to_gguf.py failed"
fi

# The same weights rounded to F16 / BF16: the default kernels against the scalar reference ones.
for t in f16 bf16; do
    conv=$out/stories260K.real_model.$t.gguf
    if "$py" "$root/tools/llama2c_to_gguf.py" "$m/stories260K.bin" "$m/tok512.bin" "$conv" --type "$t" >/dev/null; then
        ref_txt=$out/real_model.$t.ref.txt
        if KILN_KERNELS=ref "$bin" run -m "$conv" -p "$prompt" -n 252 --temp 0 >"$ref_txt" 2>/dev/null &&
            [ "$(wc -c <"$ref_txt")" -gt 400 ]; then
            greedy_check "$t conversion greedy 252, default kernels == ref kernels" "$bin" "$conv" 252 "$ref_txt"
        else
            bad "$t conversion: the ref kernels' run failed"
        fi
        [ "$t" = f16 ] && greedy_check "f16 conversion greedy 252 == the f32 reference text" "$bin" "$conv" 252 "$want"
        rm -f "$conv" "$ref_txt"
    else
        bad "tools/llama2c_to_gguf.py --type $t failed"
    fi
done

# Sampling through the CLI: a seed fixes the text; top-k 1 is greedy whatever the temperature.
mod=$m/stories260K.gguf
s1=$("$bin" run -m "$mod" -p "$prompt" -n 60 --temp 1 --seed 42 2>/dev/null)
s2=$("$bin" run -m "$mod" -p "$prompt" -n 60 --temp 1 --seed 42 2>/dev/null)
s3=$("$bin" run -m "$mod" -p "$prompt" -n 60 --temp 1 --seed 43 2>/dev/null)
if [ -n "$s1" ] && [ "$s1" = "$s2" ] && [ "$s1" != "$s3" ]; then
    ok "seed 42 twice gives the same text, seed 43 another"
else
    bad "seeded sampling: '$s1' / '$s2' / '$s3'"
fi
got=$out/real_model_topk.$$.txt
"$bin" run -m "$mod" -p "$prompt" -n 60 --temp 1.5 --top-k 1 --top-p 1 --min-p 0 --seed 7 >"$got" 2>/dev/null
n=$(wc -c <"$got")
if [ "$n" -gt 100 ] && cmp -n "$n" "$got" "$want" >/dev/null; then ok "top-k 1 at temperature 1.5 == greedy"
else bad "top-k 1 differs from greedy"; head -c 200 "$got"; echo; fi
rm -f "$got"

# Start-up failures: one line naming the file, exit status 1.
err=$("$bin" run -m "$out/no-such-model.gguf" -p x 2>&1 >/dev/null); rc=$?
if [ "$rc" -eq 1 ] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] && grep -q "no-such-model.gguf" <<<"$err"; then
    ok "missing model: one line, exit 1 ($err)"
else
    bad "missing model: rc $rc, '$err'"
fi
err=$("$bin" run -m "$mod" -p x --temp -1 2>&1 >/dev/null); rc=$?
if [ "$rc" -eq 1 ] && grep -q "temperature" <<<"$err"; then ok "bad --temp rejected: $err"
else bad "bad --temp: rc $rc, '$err'"; fi

# Broken model files through the CLI under ASan: each a one-line error naming the file, exit 1.
cdir=$out/corrupt_models
rm -rf "$cdir"; mkdir -p "$cdir"
if "$py" - "$m/stories260K.gguf" "$cdir" <<'PYEOF'
import struct, sys
src, outdir = sys.argv[1], sys.argv[2]
buf = open(src, "rb").read()
def at(name):  # offset just past a length-prefixed string
    b = name.encode()
    i = buf.index(struct.pack("<Q", len(b)) + b)
    return i + 8 + len(b)
def put(name, data):
    open("%s/%s.gguf" % (outdir, name), "wb").write(data)
def patch(off, fmt, v):
    b = bytearray(buf); struct.pack_into(fmt, b, off, v); return bytes(b)
put("truncated-header", buf[:600])
put("truncated-data", buf[:len(buf) - 5000])
put("bad-magic", b"GGUX" + buf[4:])
put("huge-kv-count", patch(16, "<Q", 1 << 60))
put("q-wrong-shape", patch(at("blk.1.attn_q.weight") + 4 + 8, "<Q", 32))
put("unsupported-type", patch(at("blk.2.attn_v.weight") + 4 + 16, "<I", 9))
put("missing-tensor", buf.replace(b"blk.0.ffn_gate.weight", b"blk.0.ffn_gatx.weight"))
put("bad-head-count", patch(at("llama.attention.head_count") + 4, "<I", 5))
put("unknown-arch", patch(at("general.architecture") + 4 + 8, "<5s", b"gpt9x"))
PYEOF
then
    for f in "$cdir"/*.gguf; do
        name=$(basename "$f" .gguf)
        err=$("${bin_asan:-$bin}" run -m "$f" -p x -n 1 2>&1 >/dev/null); rc=$?
        if [ "$rc" -eq 1 ] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] && grep -qF "$f" <<<"$err"; then
            ok "corrupt $name: $err"
        else
            bad "corrupt $name: rc $rc: $err"
        fi
    done
else
    bad "could not write the corrupted models"
fi
rm -rf "$cdir"

# ASan: 40 tokens print a prefix of the reference text (the detokenizer never splits a
# character, and this text is ASCII, so the prefix is exact bytes).
if [ -x "$bin_asan" ]; then
    got=$out/real_model_asan.$$.txt
    if "$bin_asan" run -m "$m/stories260K.gguf" -p "$prompt" -n 40 --temp 0 >"$got" 2>"$got.err"; then
        n=$(wc -c <"$got")
        if [ "$n" -gt 50 ] && cmp -n "$n" "$got" "$want" >/dev/null; then
            ok "asan: 40 tokens ($n bytes) are a prefix of the reference, clean exit"
        else
            bad "asan: output is not a prefix of the reference"; head -c 300 "$got"; echo
        fi
    else
        bad "asan: kiln run failed"; tail -n 20 "$got.err"
    fi
    rm -f "$got" "$got.err"
else
    bad "no asan binary at $bin_asan"
fi

# Logits over 80 positions (prefill in 3 chunks) against tests/ref/forward.py.
toks=$("$py" -c "import random; r=random.Random(5); print(','.join(['1']+[str(r.randrange(3,512)) for _ in range(79)]))")
a=$out/real_model_kiln.$$.bin r=$out/real_model_ref.$$.bin
if "$bin" eval -m "$m/stories260K.gguf" --tokens "$toks" --dump-logits "$a" --batch-chunks 3 &&
    "$py" "$root/tests/ref/forward.py" "$m/stories260K.gguf" --tokens "$toks" --out "$r"; then
    if res=$("$py" - "$a" "$r" <<'PYEOF'
import sys
import numpy as np
a = np.fromfile(sys.argv[1], "<f4").reshape(80, 512)
r = np.fromfile(sys.argv[2], "<f4").reshape(80, 512)
err = float(np.abs(a - r).max())
print("max abs err %.3g over %d logits" % (err, r.size))
sys.exit(0 if err <= 1e-4 * max(1.0, float(np.abs(r).max())) and (a.argmax(1) == r.argmax(1)).all() else 1)
PYEOF
    ); then ok "eval logits == numpy reference: $res"; else bad "eval logits differ: $res"; fi
else
    bad "eval or reference failed"
fi
rm -f "$a" "$r"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
