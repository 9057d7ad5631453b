#!/usr/bin/python3
"""forward.py: an independent numpy reference forward pass for kiln's architectures, written from
the papers (not from kiln's C): Llama (RMSNorm, rotary embeddings on interleaved pairs, grouped-query
causal attention, SwiGLU feed-forward), Qwen2 (+ Q/K/V biases, rotary on the two halves, "NEOX"),
Qwen3 (+ per-head RMSNorm of Q and K before the rotation, explicit head size). Weights come from a
GGUF through tools/gguf.py and are dequantized in numpy; all arithmetic is float64.

usage: forward.py MODEL.gguf --tokens 1,2,3 [--out logits.f32]   (float32 (n_tokens, n_vocab) LE)
       forward.py MODEL.gguf --tokens 1,2,3 --greedy N           (prints N greedy next ids)
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import gguf  # noqa: E402


class Model:
    def __init__(self, path):
        r = gguf.Reader(path)
        arch = r.get("general.architecture")
        if arch not in ("llama", "qwen2", "qwen3"):
            raise ValueError("%s: unsupported architecture %r" % (path, arch))
        self.arch = arch

        def hp(key, default=None):
            v = r.get(arch + "." + key, default)
            if v is None:
                raise ValueError("%s: missing %s.%s" % (path, arch, key))
            return v

        self.n_embd = int(hp("embedding_length"))
        self.n_layer = int(hp("block_count"))
        self.n_head = int(hp("attention.head_count"))
        self.n_head_kv = int(hp("attention.head_count_kv", self.n_head))
        self.head_dim = int(hp("attention.key_length", self.n_embd // self.n_head))
        self.v_dim = int(hp("attention.value_length", self.head_dim))
        self.eps = float(hp("attention.layer_norm_rms_epsilon", 1e-5))
        self.theta = float(hp("rope.freq_base", 10000.0))
        self.n_rot = int(hp("rope.dimension_count", self.head_dim))
        self.neox = arch in ("qwen2", "qwen3")
        # linear position scaling (rope.scaling.type "linear"): positions divided by the factor
        self.pos_scale = 1.0
        if r.get(arch + ".rope.scaling.type") == "linear":
            self.pos_scale = 1.0 / float(hp("rope.scaling.factor"))
        t = r.tensors
        self.w = {name: t[name].array() for name in t}
        self.vocab = self.w["token_embd.weight"].shape[0]
        # Llama 3.1 style frequency scaling: per-frequency divisors stored as a tensor
        self.freq_factors = self.w.get("rope_freqs.weight")

    def get(self, name):
        return self.w.get(name)


def rmsnorm(x, weight, eps):
    # Zhang & Sennrich 2019: x / sqrt(mean(x^2) + eps) * g, over the last axis
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x, positions, m):
    """x: (T, H, D). Rotates the first n_rot dims of each head (Su et al. 2021, RoFormer).
    Pair i turns by angle pos * theta^(-2i/n_rot) (divided by freq factor i when present).
    Llama pairs are adjacent (x[2i], x[2i+1]); NEOX pairs are (x[i], x[i + n_rot/2])."""
    n_rot = m.n_rot
    half = n_rot // 2
    inv = m.theta ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)
    if m.freq_factors is not None:
        inv = inv / m.freq_factors[:half]
    ang = (np.asarray(positions, dtype=np.float64) * m.pos_scale)[:, None] * inv[None, :]  # (T, half)
    cos = np.cos(ang)[:, None, :]
    sin = np.sin(ang)[:, None, :]
    out = x.copy()
    if m.neox:
        a, b = x[..., :half], x[..., half:n_rot]
        out[..., :half] = a * cos - b * sin
        out[..., half:n_rot] = a * sin + b * cos
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = a * cos - b * sin
        out[..., 1:n_rot:2] = a * sin + b * cos
    return out


def silu(x):
    return x / (1.0 + np.exp(-x))


def forward(m, tokens, cache=None):
    """tokens: ids at positions len(cache)..len(cache)+T-1 -> logits (T, vocab) float64.
    cache: None (a fresh sequence) or a list kept between calls, one (K, V) pair per layer of
    the rotated keys and the values of all earlier positions; it is extended in place."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.min() < 0 or tokens.max() >= m.vocab:
        raise ValueError("token id out of range")
    if cache is None:
        cache = []
    T = len(tokens)
    start = cache[0][0].shape[0] if cache else 0
    pos = np.arange(start, start + T)
    x = m.w["token_embd.weight"][tokens].copy()  # (T, n_embd)
    H, Hkv, D, Dv = m.n_head, m.n_head_kv, m.head_dim, m.v_dim
    group = H // Hkv
    # causal: the row at position start+t sees keys 0..start+t
    mask = np.where(np.arange(start + T)[None, :] <= pos[:, None], 0.0, -np.inf)
    for layer in range(m.n_layer):
        p = "blk.%d." % layer
        h = rmsnorm(x, m.w[p + "attn_norm.weight"], m.eps)
        q = h @ m.w[p + "attn_q.weight"].T
        k = h @ m.w[p + "attn_k.weight"].T
        v = h @ m.w[p + "attn_v.weight"].T
        for name, arr in (("attn_q.bias", q), ("attn_k.bias", k), ("attn_v.bias", v)):
            b = m.get(p + name)
            if b is not None:
                arr += b
        q = q.reshape(T, H, D)
        k = k.reshape(T, Hkv, D)
        v = v.reshape(T, Hkv, Dv)
        qn, kn = m.get(p + "attn_q_norm.weight"), m.get(p + "attn_k_norm.weight")
        if qn is not None:
            q = rmsnorm(q, qn, m.eps)
        if kn is not None:
            k = rmsnorm(k, kn, m.eps)
        q = rope(q, pos, m)
        k = rope(k, pos, m)
        if len(cache) <= layer:
            cache.append((k, v))
        else:
            cache[layer] = (np.concatenate([cache[layer][0], k]), np.concatenate([cache[layer][1], v]))
        K, V = cache[layer]
        att_out = np.empty((T, H, Dv))
        for hh in range(H):
            kh = hh // group  # grouped-query attention (Ainslie et al. 2023)
            s = q[:, hh, :] @ K[:, kh, :].T / np.sqrt(D) + mask
            s = s - s.max(axis=1, keepdims=True)
            e = np.exp(s)
            a = e / e.sum(axis=1, keepdims=True)
            att_out[:, hh, :] = a @ V[:, kh, :]
        x = x + att_out.reshape(T, H * Dv) @ m.w[p + "attn_output.weight"].T
        h = rmsnorm(x, m.w[p + "ffn_norm.weight"], m.eps)
        # SwiGLU (Shazeer 2020): down(silu(gate h) * up h)
        f = silu(h @ m.w[p + "ffn_gate.weight"].T) * (h @ m.w[p + "ffn_up.weight"].T)
        x = x + f @ m.w[p + "ffn_down.weight"].T
    x = rmsnorm(x, m.w["output_norm.weight"], m.eps)
    out_w = m.get("output.weight")
    if out_w is None:
        out_w = m.w["token_embd.weight"]  # tied embeddings
    return x @ out_w.T


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--out", help="write float32 logits (n_tokens, n_vocab) here")
    ap.add_argument("--greedy", type=int, default=0, help="print this many greedy next ids")
    a = ap.parse_args()
    try:
        m = Model(a.model)
        toks = [int(t) for t in a.tokens.split(",") if t.strip()]
        if not toks:
            raise ValueError("no tokens")
        cache = []
        logits = forward(m, toks, cache)
        if a.out:
            logits.astype("<f4").tofile(a.out)
        if a.greedy:
            gen = []
            for i in range(a.greedy):
                gen.append(int(np.argmax(logits[-1])))
                if i + 1 < a.greedy:
                    logits = forward(m, gen[-1:], cache)
            print(" ".join(str(t) for t in gen))
    except (ValueError, OSError, KeyError) as e:
        print("forward.py: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
