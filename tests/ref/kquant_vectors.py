#!/usr/bin/python3
"""kquant_vectors.py: dequantization test vectors for Q4_1, Q5_0, Q4_K, Q5_K, Q6_K.

Each block is built here from explicit random fields (f16 super-scales including extreme ones:
+-65504, subnormals, zero, negative; 6-bit / int8 sub-scales including 0 and the maximum; quants
over their full range), packed into bytes by plain loops written from ggml's block descriptions,
and its expected values are computed from the fields directly (float64), never from the bytes.
The numpy decoders of tools/gguf.py are checked against those values here (a second, vectorized
reading of the same layout); kiln's C decoder is checked by test_kquants reading the file.

Output (little-endian): b"KQV1", u32 n_cases, then per case: u32 ggml type, u32 n elements,
the raw blocks, f64 expected[n], f64 tolerance[n] (a bound on float32 rounding of the two terms
of each value: 2^-21 * (|scale * q| + |offset|)).
usage: kquant_vectors.py OUT.bin     (exit 1 if the numpy decoders disagree)
"""
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import gguf  # noqa: E402

EXTREME_F16 = [65504.0, -65504.0, 2.0 ** -24, -(2.0 ** -24), 2.0 ** -14, 0.0, 1e-3, -0.5]


def f16(rng, i):
    """The i-th block's f16 super-scale: extreme values for the first blocks, then random."""
    if i < len(EXTREME_F16):
        v = EXTREME_F16[i]
    else:
        v = float(rng.standard_normal() * 10.0 ** rng.uniform(-4, 1))
    h = np.float16(v)
    return float(h), h.tobytes()


def case_q4_1(rng, nb):
    raw, want, mag = bytearray(), [], []
    for i in range(nb):
        d, db = f16(rng, i)
        m, mb = f16(rng, nb - 1 - i)
        q = rng.integers(0, 16, 32)
        raw += db + mb + bytes(int(q[j]) | int(q[j + 16]) << 4 for j in range(16))
        want += [q[j] * d + m for j in range(32)]
        mag += [abs(q[j] * d) + abs(m) for j in range(32)]
    return gguf.Q4_1, raw, want, mag


def case_q5_0(rng, nb):
    raw, want, mag = bytearray(), [], []
    for i in range(nb):
        d, db = f16(rng, i)
        q = rng.integers(0, 32, 32) if i % 3 else np.full(32, 31 if i % 2 else 0)
        qh = 0
        for j in range(32):
            qh |= (int(q[j]) >> 4) << j
        raw += db + struct.pack("<I", qh) + bytes((int(q[j]) & 15) | (int(q[j + 16]) & 15) << 4
                                                  for j in range(16))
        want += [(q[j] - 16) * d for j in range(32)]
        mag += [abs((q[j] - 16) * d) for j in range(32)]
    return gguf.Q5_0, raw, want, mag


def pack_scales(sc, mn):
    """Eight 6-bit scales and mins -> the 12 bytes of Q4_K / Q5_K (ggml's packing)."""
    out = [0] * 12
    for j in range(8):
        if j < 4:
            out[j] = sc[j]
            out[j + 4] = mn[j]
        else:
            out[j + 4] = (sc[j] & 15) | (mn[j] & 15) << 4
            out[j - 4] |= (sc[j] >> 4) << 6
            out[j] |= (mn[j] >> 4) << 6
    return bytes(out)


def case_q45_k(rng, nb, bits):
    raw, want, mag = bytearray(), [], []
    qmax = (1 << bits) - 1
    for i in range(nb):
        d, db = f16(rng, i)
        dmin, dmb = f16(rng, (i + 3) % (nb + 2))
        sc = [int(v) for v in rng.integers(0, 64, 8)]
        mn = [int(v) for v in rng.integers(0, 64, 8)]
        if i % 4 == 1:
            sc, mn = [63] * 8, [63] * 8
        if i % 4 == 2:
            sc[0] = mn[7] = 0
        q = rng.integers(0, qmax + 1, (8, 32))
        if i % 5 == 4:
            q[:] = qmax
        qs = bytearray(128)
        qh = bytearray(32)
        for c in range(4):
            for l in range(32):
                qs[32 * c + l] = (int(q[2 * c][l]) & 15) | (int(q[2 * c + 1][l]) & 15) << 4
        if bits == 5:
            for j in range(8):
                for l in range(32):
                    qh[l] |= (int(q[j][l]) >> 4) << j
        raw += db + dmb + pack_scales(sc, mn) + (bytes(qh) if bits == 5 else b"") + bytes(qs)
        for j in range(8):
            for l in range(32):
                want.append(d * sc[j] * q[j][l] - dmin * mn[j])
                mag.append(abs(d * sc[j] * q[j][l]) + abs(dmin * mn[j]))
    return (gguf.Q5_K if bits == 5 else gguf.Q4_K), raw, want, mag


def case_q6_k(rng, nb):
    raw, want, mag = bytearray(), [], []
    for i in range(nb):
        d, db = f16(rng, i)
        sc = [int(v) for v in rng.integers(-128, 128, 16)]
        if i % 4 == 1:
            sc = [-128, 127] * 8
        q = rng.integers(0, 64, 256)
        if i % 5 == 4:
            q[:] = 63 if i % 2 else 0
        ql = bytearray(128)
        qh = bytearray(64)
        for h in range(2):
            for l in range(32):
                q1, q2, q3, q4 = (int(q[128 * h + 32 * k + l]) for k in range(4))
                ql[64 * h + l] = (q1 & 15) | (q3 & 15) << 4
                ql[64 * h + 32 + l] = (q2 & 15) | (q4 & 15) << 4
                qh[32 * h + l] = (q1 >> 4) | (q2 >> 4) << 2 | (q3 >> 4) << 4 | (q4 >> 4) << 6
        raw += bytes(ql) + bytes(qh) + struct.pack("<16b", *sc) + db
        for e in range(256):
            want.append(d * sc[e // 16] * (q[e] - 32))
            mag.append(abs(want[-1]))
    return gguf.Q6_K, raw, want, mag


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(6)
    cases = [case_q4_1(rng, 24), case_q5_0(rng, 24), case_q45_k(rng, 20, 4), case_q45_k(rng, 20, 5),
             case_q6_k(rng, 20)]
    bad = 0
    blob = bytearray(b"KQV1" + struct.pack("<I", len(cases)))
    for t, raw, want, mag in cases:
        want = np.asarray(want, np.float64)
        n = want.size
        if len(raw) != gguf.tensor_nbytes(t, n):
            print("FAIL %s: packed %d bytes, want %d" % (gguf.TYPE_NAMES[t], len(raw),
                                                         gguf.tensor_nbytes(t, n)))
            bad += 1
        got = gguf.decode(bytes(raw), t, n)
        if not np.array_equal(got, want):
            i = int(np.argmax(np.abs(got - want)))
            print("FAIL numpy decoder %s: element %d: %r, from the fields %r" %
                  (gguf.TYPE_NAMES[t], i, got[i], want[i]))
            bad += 1
        tol = np.asarray(mag, np.float64) * 2.0 ** -21
        blob += struct.pack("<II", t, n) + bytes(raw) + want.astype("<f8").tobytes() + \
            tol.astype("<f8").tobytes()
    with open(out, "wb") as f:
        f.write(blob)
    print("%d cases written to %s; numpy decoders %s" % (len(cases), out,
                                                         "disagree" if bad else "agree"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
