#!/usr/bin/python3
"""check_hf_vocab.py: checks a GGUF written by tools/hf_tokenizer_to_gguf.py against the
tokenizer.json / tokenizer_config.json it came from (read here with json only), and its key types
against a GGUF written by llama.cpp (a ggml-vocab-*.gguf of the same tokenizer kind).
usage: check_hf_vocab.py TOKENIZER.json CONFIG.json OUT.gguf LLAMA_CPP_VOCAB.gguf PRE
Prints per-check lines and "N passed, N failed"."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import gguf  # noqa: E402

res = []


def check(name, cond, detail=""):
    res.append(bool(cond))
    print("%s %s%s" % ("ok  " if cond else "FAIL", name, ("  (" + detail + ")") if detail else ""))


def main():
    tj_path, cfg_path, out, ref_path, pre = sys.argv[1:6]
    tj = json.load(open(tj_path, encoding="utf-8"))
    cfg = json.load(open(cfg_path, encoding="utf-8"))
    r = gguf.Reader(out)
    ref = gguf.Reader(ref_path)
    tag = os.path.basename(out)
    toks = r.get("tokenizer.ggml.tokens")
    types = r.get("tokenizer.ggml.token_type")
    vocab = tj["model"]["vocab"]
    added = {a["id"]: a for a in tj["added_tokens"]}
    bad = [i for t, i in vocab.items() if toks[i] != t or (types[i] != 1 and i not in added)]
    check("%s: all %d vocab entries at their ids, type normal" % (tag, len(vocab)), not bad,
          "first bad %s" % bad[:3])
    bad = []
    for i, a in added.items():
        looks = a["content"].startswith("<|") and a["content"].endswith("|>")
        want = 3 if (a["special"] or looks) else 4
        if toks[i] != a["content"] or types[i] != want:
            bad.append((i, a["content"], int(types[i]), want))
    check("%s: %d added tokens: special -> control (3), others user-defined (4)" % (tag, len(added)),
          not bad, str(bad[:3]))
    check("%s: token count = highest id + 1 = %d" % (tag, len(toks)),
          len(toks) == max(list(vocab.values()) + list(added)) + 1)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    check("%s: %d merges, same order, 'left right' strings" % (tag, len(merges)),
          r.get("tokenizer.ggml.merges") == merges)
    check("%s: model gpt2, pre %s" % (tag, pre),
          r.get("tokenizer.ggml.model") == "gpt2" and r.get("tokenizer.ggml.pre") == pre)
    check("%s: chat template verbatim" % tag,
          r.get("tokenizer.chat_template") == cfg.get("chat_template"))

    def tid(field):
        v = cfg.get(field)
        v = v.get("content") if isinstance(v, dict) else v
        return None if v is None else toks.index(v)
    check("%s: bos/eos ids from the config" % tag,
          r.get("tokenizer.ggml.bos_token_id") == tid("bos_token") and
          r.get("tokenizer.ggml.eos_token_id") == tid("eos_token"))
    # key value types as llama.cpp writes them
    same = []
    for k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
              "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
              "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token",
              "tokenizer.ggml.padding_token_id"):
        if k in ref.kv and k in r.kv:
            a, b = ref.kv[k], r.kv[k]
            same.append(a[0] == b[0] and (a[0] != gguf.ARRAY or a[1][0] == b[1][0]))
    check("%s: key types equal those of %s (%d keys)" % (tag, os.path.basename(ref_path), len(same)),
          same and all(same))
    print("%d passed, %d failed" % (res.count(True), res.count(False)))
    return 0 if all(res) else 1


if __name__ == "__main__":
    sys.exit(main())
