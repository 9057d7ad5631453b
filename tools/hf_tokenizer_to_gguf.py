#!/usr/bin/python3
"""hf_tokenizer_to_gguf.py: a Hugging Face tokenizer.json (+ tokenizer_config.json beside it) ->
a vocabulary-only GGUF with llama.cpp's tokenizer keys.
  byte-level BPE (ByteLevel pre-tokenizer/decoder)  -> tokenizer.ggml.model "gpt2": tokens in their
      byte-level form, token_type, merges ("left right"), tokenizer.ggml.pre from the
      pre-tokenizer regex (Llama 3 -> "llama-bpe", Qwen2/2.5/3 -> "qwen2", GPT-2 -> "gpt-2")
  SentencePiece-style BPE (Metaspace / byte_fallback) -> "llama": tokens, token_type, and scores
      (minus the rank of the first merge that produces the token, so that higher score = earlier
      merge, as SentencePiece scores order them)
Token types (llama.cpp numbering): normal 1, unknown 2, control 3, user-defined 4, unused 5,
byte 6. Added tokens: special -> control; not special -> user-defined, except names that look
special (<|...|>, <｜...｜>), which llama.cpp's converter also marks control. Ids with no token (a
gap, or padding up to --vocab-size) become "[PAD<id>]" of type unused.
Also: bos/eos/unk/padding ids, add_bos_token / add_eos_token, tokenizer.chat_template.

usage: hf_tokenizer_to_gguf.py TOKENIZER.json OUT.gguf [--config tokenizer_config.json]
       [--pre NAME] [--arch NAME] [--name NAME] [--vocab-size N] [--add-bos 0|1] [--bos-id N]
       [--eos-id N]
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer split regexes of known models (the "Split" pattern of tokenizer.json), -> the name
# llama.cpp gives the pre-tokenizer. Compared exactly.
KNOWN_PRE = {
    # Llama 3 / 3.1 / 3.2 / 3.3
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    # Qwen2 / Qwen2.5 / Qwen3
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
}


def _walk_pre(pt):
    """Flattens a (possibly Sequence) pre_tokenizer into a list of its parts."""
    if not pt:
        return []
    if pt.get("type") == "Sequence":
        out = []
        for p in pt.get("pretokenizers", []):
            out.extend(_walk_pre(p))
        return out
    return [pt]


def detect(tj):
    """-> (tokenizer model "gpt2" | "llama", pre name or None, add_space_prefix)."""
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError("only BPE tokenizer.json files are supported (model.type = %r)" %
                         model.get("type"))
    parts = _walk_pre(tj.get("pre_tokenizer"))
    types = [p.get("type") for p in parts]
    dec = tj.get("decoder") or {}
    dec_types = [d.get("type") for d in dec.get("decoders", [])] if dec.get("type") == "Sequence" \
        else [dec.get("type")]
    if "ByteLevel" in types or "ByteLevel" in dec_types:
        pre = None
        for p in parts:
            if p.get("type") == "Split":
                pre = KNOWN_PRE.get(p.get("pattern", {}).get("Regex"))
        if pre is None and types == ["ByteLevel"] and parts[0].get("use_regex", True):
            pre = "gpt-2"
        return "gpt2", pre, False
    # SentencePiece-style: Metaspace pre-tokenizer, or a normalizer that prepends / replaces with
    # U+2581, usually with byte_fallback
    add_prefix = False
    for p in parts:
        if p.get("type") == "Metaspace":
            add_prefix = p.get("add_prefix_space", p.get("prepend_scheme", "always") != "never")
    norm = tj.get("normalizer") or {}
    norms = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]
    for n in norms:
        if n.get("type") == "Prepend" and n.get("prepend") == "\u2581":
            add_prefix = True
    spm_norm = any(n.get("type") in ("Prepend", "Replace") for n in norms)
    if model.get("byte_fallback") or "Metaspace" in types or spm_norm:
        return "llama", "default", bool(add_prefix)
    raise ValueError("cannot tell the tokenizer kind (neither ByteLevel nor SentencePiece-style)")


def looks_special(text):
    return (text.startswith("<|") and text.endswith("|>")) or \
        (text.startswith("<\uff5c") and text.endswith("\uff5c>"))


def token_text(v):
    """tokenizer_config token field: a string, {"content": ...}, or None."""
    if isinstance(v, dict):
        return v.get("content")
    return v


def convert(tok_path, out_path, config_path=None, pre=None, arch=None, name=None, vocab_size=None,
            add_bos=None, bos_id=None, eos_id=None):
    with open(tok_path, encoding="utf-8") as f:
        tj = json.load(f)
    if config_path is None:
        cand = os.path.join(os.path.dirname(tok_path), "tokenizer_config.json")
        config_path = cand if os.path.exists(cand) else None
    cfg = {}
    if config_path:
        with open(config_path, encoding="utf-8") as f:
            cfg = json.load(f)
    kind, detected_pre, add_space_prefix = detect(tj)
    pre = pre or detected_pre
    if kind == "gpt2" and not pre:
        raise ValueError("unknown byte-level pre-tokenizer: name it with --pre")

    model = tj["model"]
    vocab = model["vocab"]
    added = tj.get("added_tokens", [])
    n = max([i for i in vocab.values()] + [a["id"] for a in added]) + 1
    if vocab_size:
        if vocab_size < n:
            raise ValueError("--vocab-size %d is below the highest id + 1 (%d)" % (vocab_size, n))
        n = vocab_size
    tokens = [None] * n
    types = [UNUSED] * n
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = NORMAL
    unk = model.get("unk_token")
    for i, t in enumerate(tokens):
        if t is None:
            continue
        if kind == "llama" and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types[i] = BYTE
        if unk is not None and t == unk:
            types[i] = UNKNOWN
    for a in added:
        i, text = a["id"], a["content"]
        tokens[i] = text
        if unk is not None and text == unk:
            types[i] = UNKNOWN
        elif a.get("special") or looks_special(text):
            types[i] = CONTROL
        else:
            types[i] = USER_DEFINED
    for i in range(n):
        if tokens[i] is None:
            tokens[i] = "[PAD%d]" % i
            types[i] = UNUSED

    merges = []
    for m in model.get("merges", []):
        merges.append(m if isinstance(m, str) else " ".join(m))

    index = {}
    for i, t in enumerate(tokens):
        index.setdefault(t, i)

    def special_id(field):
        t = token_text(cfg.get(field))
        return index.get(t) if t is not None else None

    w = gguf.Writer()
    if arch is None:
        arch = "qwen2" if pre == "qwen2" else "llama"
    w.add_str("general.architecture", arch)
    if name is None:  # the folder's name (its parent's when the folder is a package's models/)
        d = os.path.dirname(os.path.abspath(tok_path))
        name = os.path.basename(os.path.dirname(d) if os.path.basename(d) == "models" else d)
    w.add_str("general.name", name)
    w.add_str("general.type", "vocab")
    w.add_str("tokenizer.ggml.model", kind)
    w.add_str("tokenizer.ggml.pre", pre)
    w.add_arr("tokenizer.ggml.tokens", gguf.STRING, tokens)
    w.add_arr("tokenizer.ggml.token_type", gguf.INT32, np.asarray(types, np.int32))
    if kind == "gpt2":
        w.add_arr("tokenizer.ggml.merges", gguf.STRING, merges)
    else:
        # SentencePiece BPE merges the adjacent pair whose result scores highest: a piece made by
        # merge r (the first such merge) scores -(r + 1); pieces no merge makes (characters,
        # bytes, specials) score 0.
        scores = np.zeros(n, np.float32)
        seen = set()
        for r, m in enumerate(merges):
            left, right = m.split(" ", 1)
            i = index.get(left + right)
            if i is not None and i not in seen:
                seen.add(i)
                scores[i] = -float(r + 1)
        w.add_arr("tokenizer.ggml.scores", gguf.FLOAT32, scores)
        w.add_bool("tokenizer.ggml.add_space_prefix", add_space_prefix)
    b = bos_id if bos_id is not None else special_id("bos_token")
    e = eos_id if eos_id is not None else special_id("eos_token")
    u = index.get(unk) if unk is not None else special_id("unk_token")
    p = special_id("pad_token")
    for key, v in (("bos", b), ("eos", e), ("unknown", u), ("padding", p)):
        if v is not None:
            w.add_u32("tokenizer.ggml.%s_token_id" % key, v)
    if add_bos is None:
        if "add_bos_token" in cfg:
            add_bos = bool(cfg["add_bos_token"])
        else:
            post = json.dumps(tj.get("post_processor") or {})
            bos_text = tokens[b] if b is not None else None
            add_bos = bool(bos_text and '"TemplateProcessing"' in post and bos_text in post) \
                or pre == "llama-bpe" or kind == "llama"
    if add_bos and b is None:
        raise ValueError("add_bos_token is set but no bos token is known (use --bos-id)")
    w.add_bool("tokenizer.ggml.add_bos_token", add_bos)
    w.add_bool("tokenizer.ggml.add_eos_token", bool(cfg.get("add_eos_token", False)))
    tmpl = cfg.get("chat_template")
    if isinstance(tmpl, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tmpl}
        for nm, t in named.items():
            if nm != "default":
                w.add_str("tokenizer.chat_template.%s" % nm, t)
        tmpl = named.get("default")
    if tmpl:
        w.add_str("tokenizer.chat_template", tmpl)
    w.write(out_path)
    return dict(kind=kind, pre=pre, n_tokens=n, n_merges=len(merges), bos=b, eos=e,
                add_bos=add_bos)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tokenizer_json")
    ap.add_argument("out")
    ap.add_argument("--config", help="tokenizer_config.json (default: beside tokenizer.json)")
    ap.add_argument("--pre", help="tokenizer.ggml.pre name (overrides detection)")
    ap.add_argument("--arch", help="general.architecture (default: qwen2 for qwen2 pre, else llama)")
    ap.add_argument("--name")
    ap.add_argument("--vocab-size", type=int, help="pad with [PAD<id>] unused tokens up to N")
    ap.add_argument("--add-bos", type=int, choices=[0, 1])
    ap.add_argument("--bos-id", type=int)
    ap.add_argument("--eos-id", type=int)
    a = ap.parse_args()
    try:
        info = convert(a.tokenizer_json, a.out, a.config, a.pre, a.arch, a.name, a.vocab_size,
                       None if a.add_bos is None else bool(a.add_bos), a.bos_id, a.eos_id)
    except (ValueError, OSError, KeyError) as e:
        print("hf_tokenizer_to_gguf: %s" % e, file=sys.stderr)
        return 1
    print("hf_tokenizer_to_gguf: %s: %s/%s, %d tokens, %d merges, bos %s eos %s add_bos %s" %
          (a.out, info["kind"], info["pre"], info["n_tokens"], info["n_merges"], info["bos"],
           info["eos"], info["add_bos"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
