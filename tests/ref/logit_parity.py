#!/usr/bin/python3
"""logit_parity.py: kiln's forward pass against the independent numpy reference (forward.py) on
random-weight models (tools/gen_model.py) of every architecture in F32, F16, BF16, Q8_0 and Q4_0,
and of some in Q4_1, Q5_0, Q4_K, Q5_K, Q6_K and the Q4_K_M / Q5_K_M mixes, over 80 positions each. Driven by tests/suites/logit_parity.sh.

Contract: `kiln eval -m MODEL --tokens 1,2,... --dump-logits OUT [--batch-chunks K]` writes float32
little-endian logits (n_tokens, n_vocab) for one sequence at positions 0..n-1.

Tolerances are relative to the RMS of the reference logits (about 1 for these models):
  * KILN_KERNELS=ref (the scalar spec kernels: f32 activations, weights dequantized from the same
    stored values the reference dequantizes): max |diff| <= 1e-4 for every type. Only float32
    arithmetic separates the two, so any layout or architecture mistake shows far above this.
  * default kernels (what the binary picks for this CPU; they may round activations before a
    matmul, as ggml does, to f16 / bf16 / Q8_0 blocks): max |diff| and RMS(diff) within
      f32 1e-4 / 2e-5;  f16 1.5e-2 / 3e-3;  bf16 1e-1 / 1.5e-2;  q8_0, q4_0 3e-1 / 5e-2.
    These are 2.5-3x the worst errors measured by simulating that activation rounding in numpy
    on these models (f16 0.005/0.0007, bf16 0.034/0.0056, Q8_0 activations 0.12/0.020). The
    avx512 kernels round F16 and BF16 matmuls' activations to int16 blocks of 32 and their
    weights to int16 with a power-of-two scale per block (W16): measured up to 0.0029 / 0.00043,
    within the f16 allowance.
    (Q4_1, Q5_0: the same allowance as Q8_0 / Q4_0. K-quants and their mixes: 3e-1 / 8e-2, for
    activations rounded in blocks of 256 as ggml's Q8_K; measured up to 0.17 / 0.037.)
usage: logit_parity.py KILN_BIN WORK_DIR [--filter REGEX]
"""
import hashlib
import os
import re
import subprocess
import sys
import time

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
tools = os.path.join(here, "..", "..", "tools")
sys.path.insert(0, tools)
sys.path.insert(0, here)
import forward  # noqa: E402
import gen_model  # noqa: E402
import gguf  # noqa: E402

N_POS = 80
TOL_FAST = {"f32": (1e-4, 2e-5), "f16": (1.5e-2, 3e-3), "bf16": (1e-1, 1.5e-2),
            "q8_0": (3e-1, 5e-2), "q4_0": (3e-1, 5e-2)}
# Q4_1 / Q5_0: the same allowance as Q8_0 / Q4_0 (activations in int8 blocks of 32, as ggml's
# Q8_1). The K-quants round activations in blocks of 256 (one scale per super-block, as ggml's
# Q8_K), which is coarser: measured max / rms up to 0.17 / 0.037 on these models, so 3e-1 / 8e-2.
for _t in ("q4_1", "q5_0"):
    TOL_FAST[_t] = TOL_FAST["q8_0"]
for _t in ("q4_k", "q5_k", "q6_k", "q4_k_m", "q5_k_m"):
    TOL_FAST[_t] = (3e-1, 8e-2)
TOL_REF = 1e-4

BASE = dict(dim=64, layers=2, heads=4, kv_heads=2, ff=128, vocab=320, ctx=256)
# name -> (generate kwargs); each arch in every type, plus feature variants
CASES = []
for _t in ("f32", "f16", "bf16", "q8_0", "q4_0"):
    CASES.append(("llama-%s" % _t, dict(BASE, arch="llama", wtype=_t)))
    CASES.append(("qwen2-%s" % _t, dict(BASE, arch="qwen2", wtype=_t)))
    # qwen3 with head_dim 32: the attention width (128) differs from the model dim (64)
    CASES.append(("qwen3-%s" % _t, dict(BASE, arch="qwen3", wtype=_t, head_dim=32)))
for _t in ("f32", "q4_0"):
    # tied output, Llama 3.1 rope scaling (bands chosen so all three regimes occur), 3 layers
    CASES.append(("llama-tied-rope3-%s" % _t,
                  dict(BASE, arch="llama", wtype=_t, tied=True, layers=3,
                       llama3_rope=(8.0, 1.0, 4.0, 64))))
# head_dim 512: attention runs fewer queries per call (forward.c att_max_q) and its K slices split
CASES.append(("qwen3-hd512-f32", dict(BASE, arch="qwen3", wtype="f32", heads=4, kv_heads=1, head_dim=512)))
# plain multi-head attention, dim not a power of two, qwen2 biases
CASES.append(("qwen2-mha-d96-f16", dict(BASE, arch="qwen2", wtype="f16", dim=96, heads=3, kv_heads=3,
                                        ff=160, vocab=288)))
# the K-quants and the small legacy types; dims are multiples of the 256-element super-block.
# q4_k_m / q5_k_m mix types per tensor as llama.cpp's quantizer does (8 layers, so attn_v and
# ffn_down are Q6_K in layers 0, 3, 6, 7 and Q4_K / Q5_K elsewhere; output.weight Q6_K).
KBASE = dict(BASE, dim=256, ff=512, heads=4, kv_heads=2)
CASES += [("llama-q4_k", dict(KBASE, arch="llama", wtype="q4_k")),
          ("qwen3-q6_k", dict(KBASE, arch="qwen3", wtype="q6_k")),
          ("qwen2-q5_k", dict(KBASE, arch="qwen2", wtype="q5_k")),
          ("llama-q4_k_m", dict(KBASE, arch="llama", wtype="q4_k_m", layers=8)),
          ("qwen3-q5_k_m", dict(KBASE, arch="qwen3", wtype="q5_k_m", layers=3)),
          # dim 96: rows of 96 fall back to Q5_0 / Q8_0, ffn_down (rows of 256) stays K-quant
          ("llama-q4_k_m-d96", dict(BASE, arch="llama", wtype="q4_k_m", dim=96, heads=3,
                                    kv_heads=1, ff=256, layers=2)),
          ("llama-q4_1", dict(BASE, arch="llama", wtype="q4_1")),
          ("qwen2-q5_0", dict(BASE, arch="qwen2", wtype="q5_0"))]
# the same sequence fed in several chunks through the paged cache
CHUNKED = {"llama-q8_0": 5, "qwen3-bf16": 3}

SOURCES = [os.path.join(tools, "gen_model.py"), os.path.join(tools, "gguf.py")]


def model_path(work, name, kw):
    # the file name carries a hash of the generator arguments, so a changed case never reuses a
    # stale cached model; a newer generator (gen_model.py, gguf.py) regenerates too
    tag = hashlib.sha256(repr(sorted(kw.items())).encode()).hexdigest()[:8]
    path = os.path.join(work, "parity-%s-%s.gguf" % (name, tag))
    newest = max(os.path.getmtime(s) for s in SOURCES)
    if not os.path.exists(path) or os.path.getmtime(path) < newest:
        kw = dict(kw)
        kw["wtype"] = gen_model.wtype_from_name(kw["wtype"])
        gen_model.generate(path, seed=11, **kw)
    return path


def run_kiln(kiln, path, toks, out, chunks, env_extra):
    cmd = [kiln, "eval", "-m", path, "--tokens", ",".join(map(str, toks)), "--dump-logits", out]
    if chunks > 1:
        cmd += ["--batch-chunks", str(chunks)]
    env = dict(os.environ, **env_extra)
    if os.path.exists(out):
        os.unlink(out)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        return None, "kiln eval exit %d: %s" % (p.returncode, p.stderr.strip()[-300:])
    try:
        a = np.fromfile(out, dtype="<f4")
    except OSError as e:
        return None, str(e)
    return a, ""


def main():
    kiln, work = sys.argv[1], sys.argv[2]
    flt = None
    if len(sys.argv) > 4 and sys.argv[3] == "--filter":
        flt = re.compile(sys.argv[4])
    os.makedirs(work, exist_ok=True)
    n_pass = n_fail = 0
    for name, kw in CASES:
        if flt and not flt.search(name):
            continue
        t0 = time.time()
        path = model_path(work, name, kw)
        m = forward.Model(path)
        toks = [int(t) for t in np.random.default_rng(len(name)).integers(0, m.vocab, N_POS)]
        toks[0] = 1
        ref = forward.forward(m, toks)
        scale = float(np.sqrt(np.mean(ref ** 2)))
        runs = [("ref-kernels", {"KILN_KERNELS": "ref"}, 1, (TOL_REF, TOL_REF)),
                ("default-kernels", {}, 1, TOL_FAST[kw["wtype"]])]
        if name in CHUNKED:
            runs.append(("default-kernels chunks=%d" % CHUNKED[name], {}, CHUNKED[name],
                         TOL_FAST[kw["wtype"]]))
        for label, env, chunks, (tmax, trms) in runs:
            out = os.path.join(work, "parity-%s.kiln.f32" % name)
            got, err = run_kiln(kiln, path, toks, out, chunks, env)
            case = "%-24s %-28s" % (name, label)
            if got is None:
                print("FAIL %s %s" % (case, err))
                n_fail += 1
                continue
            if got.size != ref.size:
                print("FAIL %s wrote %d floats, want %d (%d x %d)" %
                      (case, got.size, ref.size, ref.shape[0], ref.shape[1]))
                n_fail += 1
                continue
            d = np.abs(got.reshape(ref.shape).astype(np.float64) - ref)
            if not np.all(np.isfinite(d)):
                dmax = drms = float("inf")
            else:
                dmax, drms = float(d.max()) / scale, float(np.sqrt(np.mean(d ** 2))) / scale
            good = dmax <= tmax and drms <= trms
            print("%s %s max %.2e (tol %.2g) rms %.2e (tol %.2g) over %d positions  %.1fs" %
                  ("ok  " if good else "FAIL", case, dmax, tmax, drms, trms, N_POS,
                   time.time() - t0))
            if good:
                n_pass += 1
            else:
                row = int(np.unravel_index(np.argmax(d), d.shape)[0])
                print("     worst at position %d: kiln %.6f ref %.6f" %
                      (row, got.reshape(ref.shape)[row].flat[int(np.argmax(d[row]))],
                       ref[row].flat[int(np.argmax(d[row]))]))
                n_fail += 1
    print("%d passed, %d failed" % (n_pass, n_fail))
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
