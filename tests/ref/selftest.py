#!/usr/bin/python3
"""selftest.py: checks the Python test side itself (tools/gguf.py, tools/gen_model.py,
tests/ref/forward.py) against things it did not produce: the real stories260K model's greedy ids
and text, hand-computed ggml blocks written from the format descriptions, byte-level GGUF layout,
and mathematical identities (NEOX vs interleaved rope under a permutation, GQA vs duplicated KV
heads, the Meta Llama 3.1 frequency formula, incremental vs full attention).
usage: selftest.py TESTDATA_DIR WORK_DIR   -> per-check lines, "N passed, N failed"
"""
import math
import os
import struct
import sys

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "tools"))
sys.path.insert(0, here)
import forward  # noqa: E402
import gen_model  # noqa: E402
import gguf  # noqa: E402

results = []


def check(name, cond, detail=""):
    results.append(bool(cond))
    print("%s %s%s" % ("ok  " if cond else "FAIL", name, ("  (" + detail + ")") if detail else ""))


def f16_bytes(v):
    return struct.pack("<e", v)


# ---------------------------------------------------------------- ggml blocks by hand

def q8_0_by_hand(xs):
    """One block, element by element, as the format describes it (C roundf semantics)."""
    amax = max(abs(v) for v in xs)
    d = np.float32(amax) / np.float32(127)
    idv = np.float32(1) / d if d else np.float32(0)
    qs = []
    for v in xs:
        t = float(np.float32(v) * idv)
        qs.append(int(math.floor(abs(t) + 0.5)) * (1 if t >= 0 else -1))
    return f16_bytes(float(d)) + struct.pack("<32b", *qs)


def q4_0_by_hand(xs):
    mx, amax = 0.0, 0.0
    for v in xs:
        if abs(v) > amax:
            amax, mx = abs(v), v
    d = np.float32(mx) / np.float32(-8)
    idv = np.float32(1) / d if d else np.float32(0)
    q = [min(15, int(float(np.float32(np.float32(v) * idv) + np.float32(8.5)))) for v in xs]
    return f16_bytes(float(d)) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))


def test_blocks():
    rng = np.random.default_rng(7)
    ok8 = ok4 = True
    for trial in range(50):
        x = (rng.standard_normal(32) * rng.uniform(0.01, 10)).astype(np.float32)
        if trial == 0:
            x[:] = 0  # all-zero block: d = 0, q = 0 (Q4_0: q = 8)
        if trial == 1:
            x[5] = -x[np.abs(x).argmax()] * 1.0  # tie in magnitude: the first one wins
        ok8 &= gguf.quantize_q8_0(x) == q8_0_by_hand(x.tolist())
        ok4 &= gguf.quantize_q4_0(x) == q4_0_by_hand(x.tolist())
    check("Q8_0 blocks equal the hand-computed layout (50 random blocks)", ok8)
    check("Q4_0 blocks equal the hand-computed layout (50 random blocks)", ok4)
    # dequantization of hand-built blocks
    blk = f16_bytes(0.5) + struct.pack("<32b", *range(-16, 16))
    check("Q8_0 dequantizes q*d", np.array_equal(gguf.dequantize_q8_0(blk, 32),
                                                np.arange(-16, 16) * 0.5))
    blk = f16_bytes(-0.25) + bytes((j & 15) | ((15 - j) << 4) for j in range(16))
    want = [((j & 15) - 8) * -0.25 for j in range(16)] + [((15 - j) - 8) * -0.25 for j in range(16)]
    check("Q4_0 dequantizes (nibble-8)*d, low nibbles first",
          np.array_equal(gguf.dequantize_q4_0(blk, 32), want))
    # bf16: round to nearest even on the 16 dropped bits
    vals = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 1 + 2 ** -9], np.float32)
    check("bf16 rounding (nearest even)", gguf.f32_to_bf16_bits(vals).tolist() ==
          [0x3F80, 0x3F80, 0x3F82, 0xC020, 0x3F80])
    # K-quants: the decoders follow ggml's layout descriptions; the simple encoders must invert them
    x = rng.standard_normal(gguf.QK_K * 4).astype(np.float32)
    for t, bound in ((gguf.Q4_K, 0.12), (gguf.Q5_K, 0.06), (gguf.Q6_K, 0.03), (gguf.Q4_1, 0.12),
                     (gguf.Q5_0, 0.06)):
        y = gguf.decode(gguf.encode(x, t), t, x.size)
        rel = float(np.sqrt(np.mean((x - y) ** 2) / np.mean(x ** 2)))
        check("%s encode/decode round trip (rel rms %.3f < %.2f)" % (gguf.TYPE_NAMES[t], rel, bound),
              rel < bound)


# ---------------------------------------------------------------- GGUF container

def test_container(work):
    path = os.path.join(work, "selftest-kv.gguf")
    w = gguf.Writer(alignment=64)
    vals = [(gguf.UINT8, "a.u8", 200), (gguf.INT8, "a.i8", -100), (gguf.UINT16, "a.u16", 60000),
            (gguf.INT16, "a.i16", -30000), (gguf.UINT32, "a.u32", 4000000000),
            (gguf.INT32, "a.i32", -2000000000), (gguf.FLOAT32, "a.f32", 0.5),
            (gguf.BOOL, "a.bool", True), (gguf.STRING, "a.str", "h\u00e9llo \U0001F600"),
            (gguf.UINT64, "a.u64", 2 ** 63 + 5), (gguf.INT64, "a.i64", -2 ** 62),
            (gguf.FLOAT64, "a.f64", 1e-300)]
    for t, k, v in vals:
        w.add(t, k, v)
    w.add_arr("a.arr_str", gguf.STRING, ["x", "", "\u2581y"])
    w.add_arr("a.arr_i32", gguf.INT32, np.array([1, -2, 3], np.int32))
    w.add_arr("a.arr_arr", gguf.ARRAY, [(gguf.UINT8, [1, 2]), (gguf.STRING, ["z"])])
    w.add_tensor("t0", [3], gguf.F32, np.array([1, 2, 3], "<f4").tobytes())
    w.add_array("t1", np.arange(64, dtype=np.float32).reshape(2, 32), gguf.Q8_0)
    w.write(path)
    r = gguf.Reader(path)
    same = all(r.get(k) == v for t, k, v in vals) and all(r.kv[k][0] == t for t, k, v in vals)
    check("every scalar value type round-trips with its type", same)
    nested = r.get("a.arr_arr")
    check("string, int and nested arrays round-trip",
          r.get("a.arr_str") == ["x", "", "\u2581y"] and r.get("a.arr_i32").tolist() == [1, -2, 3]
          and r.kv["a.arr_i32"][1][0] == gguf.INT32 and len(nested) == 2
          and nested[0][0] == gguf.UINT8 and nested[0][1].tolist() == [1, 2]
          and nested[1] == (gguf.STRING, ["z"]))
    t1 = r.tensors["t1"]
    check("alignment 64: data start and tensor offsets aligned",
          r.data_start % 64 == 0 and all(t.offset % 64 == 0 for t in r.tensors.values())
          and r.alignment == 64)
    check("tensor ne innermost first and values back", t1.ne == [32, 2] and
          np.allclose(t1.array(), np.arange(64).reshape(2, 32), atol=0.5 * 63 / 127))
    # the first bytes, by hand: magic, version 3, 2 tensors, 16 kv, then key "general.alignment"
    raw = open(path, "rb").read()
    want = b"GGUF" + struct.pack("<IQQ", 3, 2, 16) + struct.pack("<Q", 17) + b"general.alignment" \
        + struct.pack("<II", gguf.UINT32, 64)
    check("header bytes as the spec lays them out", raw[:len(want)] == want)


# ---------------------------------------------------------------- forward pass

def test_real_model(testdata):
    path = os.path.join(testdata, "models", "stories260K.gguf")
    m = forward.Model(path)
    prompt = [1, 403, 407, 261, 378]
    cache = []
    logits = forward.forward(m, prompt, cache)
    gen = []
    for i in range(252):
        gen.append(int(np.argmax(logits[-1])))
        logits = forward.forward(m, gen[-1:], cache)
    want = [432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401]
    check("stories260K greedy first 13 ids", gen[:13] == want, "got %s" % gen[:13])
    toks = m_tokens(path)
    text = b""
    for t in gen:
        p = toks[t]
        if len(p) == 6 and p.startswith("<0x"):
            text += bytes([int(p[3:5], 16)])
        else:
            text += p.replace("\u2581", " ").encode()
    ref = open(os.path.join(testdata, "models", "stories260K.greedy252.txt"), "rb").read()
    check("stories260K greedy 252 tokens == stories260K.greedy252.txt", text == ref)
    full = forward.forward(m, prompt + gen[:40])
    inc_cache = []
    parts = [forward.forward(m, prompt + gen[:10], inc_cache)]
    for t in gen[10:40]:
        parts.append(forward.forward(m, [t], inc_cache))
    inc = np.concatenate(parts)
    check("incremental (cached) logits == full recompute", np.abs(inc - full).max() < 1e-9,
          "max diff %.2e" % np.abs(inc - full).max())


def m_tokens(path):
    return gguf.Reader(path).get("tokenizer.ggml.tokens")


def test_identities(work):
    path = os.path.join(work, "selftest-llama.gguf")
    gen_model.generate(path, arch="llama", dim=64, layers=2, heads=4, kv_heads=2, ff=96, vocab=300,
                       seed=3)
    m = forward.Model(path)
    toks = list(np.random.default_rng(1).integers(0, 300, 40))
    base = forward.forward(m, toks)
    # NEOX rope on permuted q/k rows == interleaved rope: new row i <- old 2i, i+D/2 <- old 2i+1
    D = m.head_dim
    perm = np.concatenate([np.arange(0, D, 2), np.arange(1, D, 2)])
    m2 = forward.Model(path)
    m2.neox = True
    for li in range(m.n_layer):
        for nm, nh in (("attn_q.weight", m.n_head), ("attn_k.weight", m.n_head_kv)):
            W = m.w["blk.%d.%s" % (li, nm)]
            rows = np.concatenate([h * D + perm for h in range(nh)])
            m2.w["blk.%d.%s" % (li, nm)] = W[rows]
    d = np.abs(forward.forward(m2, toks) - base).max()
    check("NEOX rope with permuted Q/K rows == interleaved rope", d < 1e-9, "max diff %.1e" % d)
    # GQA (kv head of q head h is h // group) == plain MHA with each KV head duplicated per group
    m3 = forward.Model(path)
    group = m.n_head // m.n_head_kv
    for li in range(m.n_layer):
        for nm in ("attn_k.weight", "attn_v.weight"):
            W = m.w["blk.%d.%s" % (li, nm)].reshape(m.n_head_kv, D, -1)
            m3.w["blk.%d.%s" % (li, nm)] = np.repeat(W, group, axis=0).reshape(m.n_head * D, -1)
    m3.n_head_kv = m.n_head
    d = np.abs(forward.forward(m3, toks) - base).max()
    check("GQA == MHA with duplicated KV heads", d < 1e-9, "max diff %.1e" % d)
    # Llama 3.1 frequency scaling: theta^(-2i/d) / rope_freqs[i] equals Meta's apply_scaling
    theta, hd = 500000.0, 128
    f = gen_model.llama3_rope_factors(hd, theta, 8.0, 1.0, 4.0, 8192)
    freqs = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    meta = []
    for fr in freqs:  # Meta's reference (llama-models, apply_scaling)
        wl = 2 * math.pi / fr
        if wl < 8192 / 4.0:
            meta.append(fr)
        elif wl > 8192 / 1.0:
            meta.append(fr / 8.0)
        else:
            s = (8192 / wl - 1.0) / (4.0 - 1.0)
            meta.append((1 - s) * fr / 8.0 + s * fr)
    rel = np.abs(freqs / f - meta) / np.asarray(meta)
    check("rope_freqs divisors reproduce Meta's Llama 3.1 frequencies", rel.max() < 1e-6,
          "max rel %.1e" % rel.max())
    # a model with rope_freqs all 1 equals the same model without it
    p4 = os.path.join(work, "selftest-llama3.gguf")
    gen_model.generate(p4, arch="llama", dim=64, layers=2, heads=4, kv_heads=2, ff=96, vocab=300,
                       seed=3, llama3_rope=(8.0, 1.0, 4.0, 8192))
    m4 = forward.Model(p4)
    check("rope_freqs.weight written with head_dim/2 entries",
          m4.freq_factors is not None and m4.freq_factors.shape == (D // 2,))
    m4.freq_factors = np.ones(D // 2)
    d = np.abs(forward.forward(m4, toks) - base).max()
    check("rope_freqs of ones is a no-op", d < 1e-9, "max diff %.1e" % d)
    # gen_model reproducibility: same flags, same bytes
    p5 = os.path.join(work, "selftest-llama-again.gguf")
    gen_model.generate(p5, arch="llama", dim=64, layers=2, heads=4, kv_heads=2, ff=96, vocab=300,
                       seed=3)
    check("gen_model is deterministic", open(p5, "rb").read() == open(path, "rb").read())


# ---------------------------------------------------------------- bench/report.py across runs

def test_report_across_runs(work):
    """bench/report.py's min / median over kept runs: three runs of one src/ tree and one of
    another, with figures chosen so that the expected cells are known."""
    import json
    import shutil
    sys.path.insert(0, os.path.join(here, "..", "..", "bench"))
    import report  # noqa: E402
    root = os.path.join(work, "report")
    shutil.rmtree(root, ignore_errors=True)

    def put(d, tree, pp, tg, bw, b16):
        os.makedirs(d, exist_ok=True)
        res = [{"test": "pp512", "tps_median": pp, "reps": 3},
               {"test": "tg64 b1", "tps_median": tg, "bw_fraction_median": bw, "reps": 3},
               {"test": "tg64 b16", "tps_median": b16, "reps": 3}]
        with open(os.path.join(d, "tl-q4_0.json"), "w") as f:
            json.dump({"results": res}, f)
        with open(os.path.join(d, "tl-q4_0.srctree"), "w") as f:
            f.write(tree + "\n")
    # (pp512, tg b1, share of bandwidth, b16): Q4_0's llama.cpp figures are 227 / 60
    put(os.path.join(root, "history", "20261207-100000"), "aaa", 454.0, 50.0, 0.90, 400.0)
    put(os.path.join(root, "history", "20261207-110000"), "aaa", 500.0, 66.0, 0.70, 330.0)
    put(os.path.join(root, "history", "20261207-120000"), "aaa", 430.0, 54.0, 0.60, 300.0)
    put(os.path.join(root, "history", "20261207-130000"), "bbb", 100.0, 10.0, 0.10, 20.0)
    put(root, "aaa", 430.0, 54.0, 0.60, 300.0)
    lines = report.across_runs([os.path.join(root, "tl-q4_0.json")])
    row = [x for x in lines if x.startswith("| Q4_0 |")]
    want = "| Q4_0 | 3 | 430.0 / 454.0 | 1.89x / 2.00x | 50.0 / 54.0 | 0.83x / 0.90x | 60% / 70% | 5.00x |"
    check("report.py: min / median over the runs of one src/ tree", row == [want], "got %s" % row)
    tgt = [x for x in lines if x.startswith("| Q4_0 tg b1 ")]
    check("report.py: tg target counts the runs that meet either form (0.83x at 90%, 1.10x; not 0.90x at 60%)",
          len(tgt) == 1 and "2 of 3 runs" in tgt[0] and "**not met**" in tgt[0], "got %s" % tgt)
    put(root, "ccc", 430.0, 54.0, 0.60, 300.0)
    check("report.py: no across-runs section for a tree with one kept run",
          report.across_runs([os.path.join(root, "tl-q4_0.json")]) == [])


def main():
    testdata, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    test_blocks()
    test_container(work)
    test_real_model(testdata)
    test_identities(work)
    test_report_across_runs(work)
    n_fail = results.count(False)
    print("%d passed, %d failed" % (results.count(True), n_fail))
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
