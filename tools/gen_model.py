#!/usr/bin/python3
"""gen_model.py: writes random-weight GGUF models of kiln's architectures for tests and benchmarks.
  llama  rope "normal" (interleaved pairs), keys llama.*; optional Llama 3.1 rope scaling stored
         the way llama.cpp's converter does: a rope_freqs.weight tensor of head_dim/2 F32 divisors
  qwen2  + blk.N.attn_{q,k,v}.bias, rope NEOX (halves), keys qwen2.*
  qwen3  + blk.N.attn_{q,k}_norm.weight (head_dim), no QKV bias, rope NEOX, keys qwen3.* with
         explicit attention.key_length / value_length (head_dim may differ from dim / heads)
Norms, biases and rope_freqs stay F32; token_embd and every 2-D weight get --type (quantized types
need the inner dim to be a multiple of the block). --type q4_k_m / q5_k_m write the mix llama.cpp's
quantizer does: Q4_K (Q5_K) everywhere, Q6_K for output.weight and for attn_v / ffn_down of the
layers where it spends more bits (the first and last eighth, every third one between); a tensor
whose rows are not a multiple of 256 falls back as llama.cpp's does (Q4_K -> Q5_0, Q6_K -> Q8_0;
Q5_K -> Q8_0 here, for want of Q5_1). Weights are N(0, 1/fan_in) so that every
projection keeps unit scale and the logits are O(1). Each tensor has its own RNG stream, derived
from --seed and its name, so the same flags always give the same file.

usage: gen_model.py OUT.gguf [--arch llama] [--type f32] [--dim 64] [--layers 2] [--heads 4]
       [--kv-heads 2] [--head-dim D] [--ff 128] [--vocab 320] [--ctx 256] [--tied] [--seed 1]
       [--rope-theta T] [--eps E] [--llama3-rope FACTOR,LOW,HIGH,ORIG_CTX]
       [--vocab-from VOCAB.gguf] [--preset tinyllama-1.1b|smollm-135m]
"""
import argparse
import hashlib
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402

PRESETS = {
    # TinyLlama-1.1B (Llama 2 architecture, GQA 32/4), its real shapes with random weights
    "tinyllama-1.1b": dict(arch="llama", dim=2048, layers=22, heads=32, kv_heads=4, ff=5632,
                           vocab=32000, ctx=2048, rope_theta=10000.0, eps=1e-5),
    # SmolLM-135M (Llama architecture, GQA 9/3, tied embeddings)
    "smollm-135m": dict(arch="llama", dim=576, layers=30, heads=9, kv_heads=3, ff=1536,
                        vocab=49152, ctx=2048, rope_theta=10000.0, eps=1e-5, tied=True),
}

FILE_TYPE = {gguf.F32: 0, gguf.F16: 1, gguf.Q4_0: 2, gguf.Q4_1: 3, gguf.Q8_0: 7, gguf.Q5_0: 8,
             gguf.Q4_K: 15, gguf.Q5_K: 17, gguf.Q6_K: 18, gguf.BF16: 32, "q4_k_m": 15, "q5_k_m": 17}

# mixed-type files: name -> (base type, type of the tensors given more bits)
MIXES = {"q4_k_m": (gguf.Q4_K, gguf.Q6_K), "q5_k_m": (gguf.Q5_K, gguf.Q6_K)}
TYPE_CHOICES = sorted(gguf.TYPE_BY_NAME) + sorted(MIXES)


def wtype_from_name(name):
    """A --type name -> a ggml type number, or the mix name itself."""
    return name if name in MIXES else gguf.TYPE_BY_NAME[name]


def use_more_bits(i_layer, n_layer):
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


FALLBACK = {gguf.Q4_K: gguf.Q5_0, gguf.Q6_K: gguf.Q8_0, gguf.Q5_K: gguf.Q8_0}


def tensor_type(wtype, name, n_layer, cols):
    """The type of 2-D weight `name` (rows of `cols`) in a file of type wtype (a ggml type or a
    mix name)."""
    if wtype not in MIXES:
        return wtype
    base, more = MIXES[wtype]
    t = base
    parts = name.split(".")
    if name == "output.weight":
        t = gguf.Q6_K
    elif len(parts) == 4 and parts[2] in ("attn_v", "ffn_down") and \
            use_more_bits(int(parts[1]), n_layer):
        t = more
    return FALLBACK[t] if cols % gguf.QK_K else t


def type_name(wtype):
    return wtype if wtype in MIXES else gguf.TYPE_NAMES[wtype]


def llama3_rope_factors(head_dim, theta, factor, low, high, orig_ctx):
    """Per-frequency divisors of the Llama 3.1 scheme, as llama.cpp's converter stores them:
    wavelengths shorter than orig_ctx/high keep their frequency (1), longer than orig_ctx/low are
    divided by factor, and the band between is interpolated smoothly."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < orig_ctx / high:
            out.append(1.0)
        elif wavelen > orig_ctx / low:
            out.append(factor)
        else:
            smooth = (orig_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def byte_vocab(n_vocab):
    """A valid SentencePiece-style (tokenizer.ggml.model = llama) vocabulary of exactly n_vocab
    tokens: <unk> <s> </s>, the 256 byte-fallback tokens, '\u2581', printable ASCII, then
    two-character pieces, each reachable by merging its two halves."""
    if n_vocab < 3 + 256 + 1:
        raise ValueError("the generated vocabulary needs n_vocab >= 260 (or use --vocab-from)")
    toks = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    singles = ["\u2581"] + [chr(c) for c in range(33, 127)]
    normal = list(singles)
    for a in singles:
        for b in singles:
            if len(toks) + len(normal) >= n_vocab:
                break
            normal.append(a + b)
    normal = normal[:n_vocab - len(toks)]
    scores = [0.0] * len(toks) + [-float(i) for i in range(len(normal))]
    return toks + normal, scores, types + [1] * len(normal)


def add_vocab(w, n_vocab, vocab_from):
    if vocab_from:
        r = gguf.Reader(vocab_from)
        n = 0
        for key in r.kv_order:
            if key.startswith("tokenizer."):
                vtype, v = r.kv[key]
                w.add(vtype, key, v)
                if key == "tokenizer.ggml.tokens":
                    n = len(v[1])
        if n == 0:
            raise ValueError("%s has no tokenizer.ggml.tokens" % vocab_from)
        return n
    toks, scores, types = byte_vocab(n_vocab)
    w.add_str("tokenizer.ggml.model", "llama")
    w.add_arr("tokenizer.ggml.tokens", gguf.STRING, toks)
    w.add_arr("tokenizer.ggml.scores", gguf.FLOAT32, np.asarray(scores, np.float32))
    w.add_arr("tokenizer.ggml.token_type", gguf.INT32, np.asarray(types, np.int32))
    w.add_u32("tokenizer.ggml.unknown_token_id", 0)
    w.add_u32("tokenizer.ggml.bos_token_id", 1)
    w.add_u32("tokenizer.ggml.eos_token_id", 2)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_eos_token", False)
    w.add_bool("tokenizer.ggml.add_space_prefix", True)
    return n_vocab


def generate(out, arch="llama", wtype=gguf.F32, dim=64, layers=2, heads=4, kv_heads=2,
             head_dim=None, ff=128, vocab=320, ctx=256, tied=False, seed=1, rope_theta=None,
             eps=None, llama3_rope=None, vocab_from=None):
    if arch not in ("llama", "qwen2", "qwen3"):
        raise ValueError("unknown arch %r" % arch)
    if heads % kv_heads:
        raise ValueError("heads (%d) must be a multiple of kv heads (%d)" % (heads, kv_heads))
    if head_dim is None:
        if dim % heads:
            raise ValueError("dim must be a multiple of heads (or give --head-dim)")
        head_dim = dim // heads
    if head_dim != dim // heads and arch != "qwen3":
        raise ValueError("--head-dim different from dim/heads needs arch qwen3")
    if head_dim % 2:
        raise ValueError("head_dim must be even")
    if llama3_rope and arch != "llama":
        raise ValueError("--llama3-rope is a llama option")
    if rope_theta is None:
        rope_theta = 10000.0 if arch == "llama" else 1000000.0
    if eps is None:
        eps = 1e-5 if arch == "llama" else 1e-6
    block = 32 if wtype in MIXES else gguf.BLOCK[wtype][0]
    for name, inner in (("dim", dim), ("ff", ff), ("heads*head_dim", heads * head_dim)):
        if inner % block:
            raise ValueError("%s = %d is not a multiple of the %s block (%d)" %
                             (name, inner, type_name(wtype), block))

    w = gguf.Writer()
    w.add_str("general.architecture", arch)
    w.add_str("general.name", "kiln-random-%s-%s" % (arch, type_name(wtype)))
    w.add_u32("general.file_type", FILE_TYPE[wtype])
    w.add_u32("general.quantization_version", 2)
    a = arch + "."
    w.add_u32(a + "context_length", ctx)
    w.add_u32(a + "embedding_length", dim)
    w.add_u32(a + "block_count", layers)
    w.add_u32(a + "feed_forward_length", ff)
    w.add_u32(a + "attention.head_count", heads)
    w.add_u32(a + "attention.head_count_kv", kv_heads)
    w.add_f32(a + "attention.layer_norm_rms_epsilon", eps)
    w.add_f32(a + "rope.freq_base", rope_theta)
    if arch == "llama":
        w.add_u32(a + "rope.dimension_count", head_dim)
    if arch == "qwen3":
        w.add_u32(a + "attention.key_length", head_dim)
        w.add_u32(a + "attention.value_length", head_dim)
    n_vocab = add_vocab(w, vocab, vocab_from)
    w.add_u32(a + "vocab_size", n_vocab)

    def rng(name):
        h = hashlib.sha256(("%d/%s" % (seed, name)).encode()).digest()
        return np.random.default_rng(int.from_bytes(h[:8], "little"))

    def matrix(name, rows, cols, std=None, t=None):
        """PyTorch-shaped (rows=out, cols=in) weight; stored ne = [cols, rows]."""
        t = tensor_type(wtype, name, layers, cols) if t is None else t
        s = std if std is not None else 1.0 / math.sqrt(cols)

        def make():  # row chunks of ~4M elements bound the memory of big presets
            g = rng(name)
            step = max(1, (1 << 22) // cols)
            parts = []
            for r0 in range(0, rows, step):
                x = g.standard_normal((min(step, rows - r0), cols), dtype=np.float32)
                parts.append(gguf.encode(x * np.float32(s), t))
            return b"".join(parts)
        w.add_lazy(name, [cols, rows], t, make)

    def vector(name, n, mean, std):
        x = (mean + rng(name).standard_normal(n) * std).astype(np.float32)
        w.add_tensor(name, [n], gguf.F32, gguf.encode(x, gguf.F32))

    matrix("token_embd.weight", n_vocab, dim, std=1.0 / math.sqrt(dim))
    vector("output_norm.weight", dim, 1.0, 0.1)
    if not tied:
        matrix("output.weight", n_vocab, dim)
    if llama3_rope:
        factor, low, high, orig = llama3_rope
        f = llama3_rope_factors(head_dim, rope_theta, factor, low, high, orig)
        w.add_tensor("rope_freqs.weight", [head_dim // 2], gguf.F32, gguf.encode(f, gguf.F32))
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    for i in range(layers):
        p = "blk.%d." % i
        vector(p + "attn_norm.weight", dim, 1.0, 0.1)
        matrix(p + "attn_q.weight", q_dim, dim)
        matrix(p + "attn_k.weight", kv_dim, dim)
        matrix(p + "attn_v.weight", kv_dim, dim)
        if arch == "qwen2":
            vector(p + "attn_q.bias", q_dim, 0.0, 0.2)
            vector(p + "attn_k.bias", kv_dim, 0.0, 0.2)
            vector(p + "attn_v.bias", kv_dim, 0.0, 0.2)
        if arch == "qwen3":
            vector(p + "attn_q_norm.weight", head_dim, 1.0, 0.1)
            vector(p + "attn_k_norm.weight", head_dim, 1.0, 0.1)
        matrix(p + "attn_output.weight", dim, q_dim)
        vector(p + "ffn_norm.weight", dim, 1.0, 0.1)
        matrix(p + "ffn_gate.weight", ff, dim)
        matrix(p + "ffn_up.weight", ff, dim)
        matrix(p + "ffn_down.weight", dim, ff)
    w.write(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--arch", choices=["llama", "qwen2", "qwen3"])
    ap.add_argument("--type", default="f32", choices=TYPE_CHOICES)
    ap.add_argument("--dim", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--head-dim", type=int)
    ap.add_argument("--ff", type=int)
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--ctx", type=int)
    ap.add_argument("--tied", action="store_true", help="no output.weight: logits use token_embd")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rope-theta", type=float)
    ap.add_argument("--eps", type=float)
    ap.add_argument("--llama3-rope", help="FACTOR,LOW_FREQ_FACTOR,HIGH_FREQ_FACTOR,ORIG_CTX "
                    "(Llama 3.1 uses 8,1,4,8192)")
    ap.add_argument("--vocab-from", help="copy every tokenizer.* key from this GGUF")
    a = ap.parse_args()
    cfg = dict(arch="llama", dim=64, layers=2, heads=4, kv_heads=2, ff=128, vocab=320, ctx=256)
    if a.preset:
        cfg.update(PRESETS[a.preset])
    for k in ("arch", "dim", "layers", "heads", "kv_heads", "head_dim", "ff", "vocab", "ctx",
              "rope_theta", "eps"):
        v = getattr(a, k)
        if v is not None:
            cfg[k] = v
    if a.llama3_rope:
        parts = [float(x) for x in a.llama3_rope.split(",")]
        if len(parts) != 4:
            ap.error("--llama3-rope needs FACTOR,LOW,HIGH,ORIG_CTX")
        cfg["llama3_rope"] = parts
    try:
        tied = a.tied or cfg.pop("tied", False)
        generate(a.out, wtype=wtype_from_name(a.type), tied=tied, seed=a.seed,
                 vocab_from=a.vocab_from, **cfg)
    except (ValueError, OSError) as e:
        print("gen_model: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
