"""gguf.py: a small GGUF v3 writer and v2/v3 reader in plain Python + numpy, with the ggml block
formats kiln's tests use (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0; Q4_K, Q5_K and Q6_K with simple
valid encoders, not ggml's error-minimizing search; decoders follow ggml's dequantize_row_*). Spec: ggml docs/gguf.md. Little-endian only. Shapes follow GGUF: ne[0] is
the innermost (contiguous) dim, so a (rows, cols) numpy matrix is stored with ne = [cols, rows].
Independent of kiln's C code: this is the test side's own view of the format.
"""
import os
import struct

import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# metadata value types (gguf_metadata_value_type)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)

_SCALAR_FMT = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
               FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
_SCALAR_NP = {UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4",
              FLOAT32: "<f4", BOOL: "<u1", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8"}

# ggml tensor types
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 = 0, 1, 2, 3, 6, 7, 8, 9
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K = 10, 11, 12, 13, 14, 15
BF16 = 30

QK_K = 256
# type -> (elements per block, bytes per block)
BLOCK = {F32: (1, 4), F16: (1, 2), BF16: (1, 2), Q8_0: (32, 34), Q4_0: (32, 18), Q4_1: (32, 20),
         Q5_0: (32, 22), Q4_K: (QK_K, 144), Q5_K: (QK_K, 176), Q6_K: (QK_K, 210)}
TYPE_NAMES = {F32: "f32", F16: "f16", BF16: "bf16", Q8_0: "q8_0", Q4_0: "q4_0", Q4_1: "q4_1",
              Q5_0: "q5_0", Q4_K: "q4_k", Q5_K: "q5_k", Q6_K: "q6_k"}
TYPE_BY_NAME = {v: k for k, v in TYPE_NAMES.items()}


def tensor_nbytes(gtype, n_elems):
    be, bb = BLOCK[gtype]
    if n_elems % be:
        raise ValueError("%d elements is not a multiple of the %s block (%d)" %
                         (n_elems, TYPE_NAMES[gtype], be))
    return n_elems // be * bb


# ---------------------------------------------------------------- element conversions

def f32_to_bf16_bits(x):
    """float32 -> bf16 bits, round to nearest even, NaN kept quiet (as ggml does)."""
    u = np.ascontiguousarray(x, dtype="<f4").view("<u4").astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    r = np.where(nan, ((u >> 16) | 64) & 0xFFFF, r)
    return r.astype("<u2")


def bf16_bits_to_f32(b):
    return (np.asarray(b, dtype="<u2").astype("<u4") << 16).view("<f4")


def _round_away(v):
    """C roundf: halves away from zero (numpy's round is half-to-even)."""
    return np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))


def quantize_q8_0(x):
    """Q8_0: blocks of 32 as {f16 d; int8 q[32]}, d = amax/127, q = roundf(x/d)."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 32)
    amax = np.abs(x).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = _round_away(x * idv[:, None]).astype(np.int8)
    out = np.zeros((x.shape[0], 34), dtype=np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.tobytes()


def dequantize_q8_0(raw, n):
    b = np.frombuffer(raw, dtype=np.uint8, count=n // 32 * 34).reshape(-1, 34)
    d = b[:, 0:2].copy().view("<f2").astype(np.float64)
    q = b[:, 2:].copy().view(np.int8).astype(np.float64)
    return (q * d).reshape(-1)


def quantize_q4_0(x):
    """Q4_0: blocks of 32 as {f16 d; u8 qs[16]}; d = m/-8 with m the signed value of largest
    magnitude, q = min(15, trunc(x/d + 8.5)); byte j holds element j (low nibble) and element
    j+16 (high nibble). Dequantized value: (q - 8) * d."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 32)
    idx = np.abs(x).argmax(axis=1)  # first index of the largest magnitude, like ggml's strict <
    m = x[np.arange(x.shape[0]), idx]
    d = (m / np.float32(-8)).astype(np.float32)
    idv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    v = (x * idv[:, None] + np.float32(8.5)).astype(np.float32)
    q = np.minimum(15, np.trunc(v).astype(np.int32)).astype(np.uint8)
    out = np.zeros((x.shape[0], 18), dtype=np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
    return out.tobytes()


def dequantize_q4_0(raw, n):
    b = np.frombuffer(raw, dtype=np.uint8, count=n // 32 * 18).reshape(-1, 18)
    d = b[:, 0:2].copy().view("<f2").astype(np.float64)
    qs = b[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float64) - 8.0
    return (q * d).reshape(-1)


def quantize_q4_1(x):
    """Q4_1: blocks of 32 as {f16 d; f16 m; u8 qs[16]}, nibbles as Q4_0; d = (max-min)/15,
    m = min, q = min(15, trunc((x-min)/d + 0.5)). Dequantized value: q * d + m."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 32)
    lo, hi = x.min(axis=1), x.max(axis=1)
    d = ((hi - lo) / np.float32(15)).astype(np.float32)
    idv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    v = ((x - lo[:, None]) * idv[:, None] + np.float32(0.5)).astype(np.float32)
    q = np.clip(np.trunc(v), 0, 15).astype(np.uint8)
    out = np.zeros((x.shape[0], 20), dtype=np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:4] = lo.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 4:] = q[:, :16] | (q[:, 16:] << 4)
    return out.tobytes()


def dequantize_q4_1(raw, n):
    b = np.frombuffer(raw, dtype=np.uint8, count=n // 32 * 20).reshape(-1, 20)
    d = b[:, 0:2].copy().view("<f2").astype(np.float64)
    m = b[:, 2:4].copy().view("<f2").astype(np.float64)
    qs = b[:, 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float64)
    return (q * d + m).reshape(-1)


def quantize_q5_0(x):
    """Q5_0: blocks of 32 as {f16 d; u8 qh[4]; u8 qs[16]}; d = m/-16 with m the signed value of
    largest magnitude, q = min(31, trunc(x/d + 16.5)); low nibbles as Q4_0, bit 4 of element j is
    bit j of the little-endian u32 qh. Dequantized value: (q - 16) * d."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 32)
    idx = np.abs(x).argmax(axis=1)
    m = x[np.arange(x.shape[0]), idx]
    d = (m / np.float32(-16)).astype(np.float32)
    idv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    v = (x * idv[:, None] + np.float32(16.5)).astype(np.float32)
    q = np.clip(np.trunc(v), 0, 31).astype(np.uint32)
    qh = ((q >> 4) << np.arange(32, dtype=np.uint32)).sum(axis=1).astype("<u4")
    q = q.astype(np.uint8) & 0x0F
    out = np.zeros((x.shape[0], 22), dtype=np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:6] = qh.view(np.uint8).reshape(-1, 4)
    out[:, 6:] = q[:, :16] | (q[:, 16:] << 4)
    return out.tobytes()


def dequantize_q5_0(raw, n):
    b = np.frombuffer(raw, dtype=np.uint8, count=n // 32 * 22).reshape(-1, 22)
    d = b[:, 0:2].copy().view("<f2").astype(np.float64)
    qh = b[:, 2:6].copy().view("<u4").astype(np.int64)           # (nb, 1)
    qs = b[:, 6:].astype(np.int64)
    low = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
    high = (qh >> np.arange(32)) & 1
    return (((low | (high << 4)) - 16.0) * d).reshape(-1)


# Q4_K: super-block of 256 = 8 sub-blocks of 32: {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}.
# The 12 scale bytes pack 8 six-bit scales and 8 six-bit mins; value = d*sc*q - dmin*m.
def _q4k_scale_min(scales):
    """scales: (nb, 12) uint8 -> sc, m: (nb, 8) ints."""
    s = scales.astype(np.int32)
    sc = np.zeros((s.shape[0], 8), np.int32)
    mn = np.zeros((s.shape[0], 8), np.int32)
    for j in range(8):
        if j < 4:
            sc[:, j] = s[:, j] & 63
            mn[:, j] = s[:, j + 4] & 63
        else:
            sc[:, j] = (s[:, j + 4] & 0x0F) | ((s[:, j - 4] >> 6) << 4)
            mn[:, j] = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
    return sc, mn


def dequantize_q4_k(raw, n):
    b = np.frombuffer(raw, dtype=np.uint8, count=n // QK_K * 144).reshape(-1, 144)
    d = b[:, 0:2].copy().view("<f2").astype(np.float64)
    dmin = b[:, 2:4].copy().view("<f2").astype(np.float64)
    sc, mn = _q4k_scale_min(b[:, 4:16])
    qs = b[:, 16:]
    out = np.zeros((b.shape[0], QK_K))
    # each 32-byte chunk of qs holds sub-block 2c (low nibbles) and 2c+1 (high nibbles)
    for c in range(4):
        chunk = qs[:, 32 * c:32 * c + 32]
        for h, q in ((0, chunk & 0x0F), (1, chunk >> 4)):
            j = 2 * c + h
            out[:, 32 * j:32 * j + 32] = (d * sc[:, j:j + 1]) * q - dmin * mn[:, j:j + 1]
    return out.reshape(-1)


def _kquant_min_scale(x, levels):
    """Shared by the Q4_K / Q5_K encoders: per 32-element sub-block a step and a min (>= 0) so that
    value = step*q - min with q in 0..levels; both are stored as 6-bit multiples of an f16 super-block
    d / dmin. Returns d, dmin (f32, as stored), sc, mn (nb, 8) and q (nb, 8, 32)."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK_K)
    nb = x.shape[0]
    sub = x.reshape(nb, 8, 32)
    lo = np.minimum(sub.min(axis=2), 0)             # (nb, 8) <= 0
    hi = sub.max(axis=2)
    scale = np.maximum(hi - lo, 1e-12) / float(levels)   # per sub-block step
    mins = -lo                                      # >= 0
    d = (scale.max(axis=1) / 63.0).astype(np.float32)
    dmin = (mins.max(axis=1) / 63.0).astype(np.float32)
    d16 = d.astype(np.float16).astype(np.float64)
    dm16 = dmin.astype(np.float16).astype(np.float64)
    sc = np.clip(np.round(scale / np.where(d16 > 0, d16, 1)[:, None]), 0, 63).astype(np.int32)
    mn = np.clip(np.round(mins / np.where(dm16 > 0, dm16, 1)[:, None]), 0, 63).astype(np.int32)
    eff_s = d16[:, None] * sc
    eff_m = dm16[:, None] * mn
    q = np.clip(np.round((sub + eff_m[:, :, None]) / np.where(eff_s > 0, eff_s, 1)[:, :, None]),
                0, levels).astype(np.int32)
    return d, dmin, sc, mn, q


def _kquant_pack_scales(sc, mn):
    """(nb, 8) six-bit scales and mins -> the 12-byte packing of Q4_K / Q5_K."""
    scales = np.zeros((sc.shape[0], 12), np.int32)
    for j in range(8):
        if j < 4:
            scales[:, j] = sc[:, j]
            scales[:, j + 4] = mn[:, j]
        else:
            scales[:, j + 4] = (sc[:, j] & 0x0F) | ((mn[:, j] & 0x0F) << 4)
            scales[:, j - 4] |= (sc[:, j] >> 4) << 6
            scales[:, j] |= (mn[:, j] >> 4) << 6
    return scales.astype(np.uint8)


def quantize_q4_k(x):
    """A simple, valid Q4_K encoder (min/max per sub-block, not ggml's search): enough to produce
    test weights whose stored values both sides dequantize identically."""
    d, dmin, sc, mn, q = _kquant_min_scale(x, 15)
    nb = q.shape[0]
    qs = np.zeros((nb, 128), np.uint8)
    for c in range(4):
        qs[:, 32 * c:32 * c + 32] = q[:, 2 * c, :] | (q[:, 2 * c + 1, :] << 4)
    out = np.zeros((nb, 144), np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:4] = dmin.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 4:16] = _kquant_pack_scales(sc, mn)
    out[:, 16:] = qs
    return out.tobytes()


# Q5_K: super-block of 256: {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: Q4_K plus a
# fifth bit per element: bit j of qh[l] is the high bit of element l of sub-block j.
def dequantize_q5_k(raw, n):
    b = np.frombuffer(raw, dtype=np.uint8, count=n // QK_K * 176).reshape(-1, 176)
    d = b[:, 0:2].copy().view("<f2").astype(np.float64)
    dmin = b[:, 2:4].copy().view("<f2").astype(np.float64)
    sc, mn = _q4k_scale_min(b[:, 4:16])
    qh = b[:, 16:48].astype(np.int32)
    qs = b[:, 48:].astype(np.int32)
    out = np.zeros((b.shape[0], QK_K))
    for c in range(4):
        chunk = qs[:, 32 * c:32 * c + 32]
        for h, low in ((0, chunk & 0x0F), (1, chunk >> 4)):
            j = 2 * c + h
            q = low | (((qh >> j) & 1) << 4)
            out[:, 32 * j:32 * j + 32] = (d * sc[:, j:j + 1]) * q - dmin * mn[:, j:j + 1]
    return out.reshape(-1)


def quantize_q5_k(x):
    """A simple, valid Q5_K encoder (min/max per sub-block, 32 levels)."""
    d, dmin, sc, mn, q = _kquant_min_scale(x, 31)
    nb = q.shape[0]
    qs = np.zeros((nb, 128), np.uint8)
    qh = np.zeros((nb, 32), np.int32)
    for c in range(4):
        qs[:, 32 * c:32 * c + 32] = (q[:, 2 * c, :] & 0x0F) | ((q[:, 2 * c + 1, :] & 0x0F) << 4)
    for j in range(8):
        qh |= (q[:, j, :] >> 4) << j
    out = np.zeros((nb, 176), np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:4] = dmin.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 4:16] = _kquant_pack_scales(sc, mn)
    out[:, 16:48] = qh.astype(np.uint8)
    out[:, 48:] = qs
    return out.tobytes()


# Q6_K: super-block of 256: {u8 ql[128]; u8 qh[64]; int8 scales[16]; f16 d}; 16 sub-blocks of 16,
# value = d * scale[sub] * (q - 32) with q 6 bits (4 low in ql, 2 high in qh).
def dequantize_q6_k(raw, n):
    b = np.frombuffer(raw, dtype=np.uint8, count=n // QK_K * 210).reshape(-1, 210)
    ql = b[:, 0:128].astype(np.int32)
    qh = b[:, 128:192].astype(np.int32)
    sc = b[:, 192:208].copy().view(np.int8).astype(np.float64)
    d = b[:, 208:210].copy().view("<f2").astype(np.float64)
    out = np.zeros((b.shape[0], QK_K))
    for half in range(2):
        L = ql[:, 64 * half:64 * half + 64]
        H = qh[:, 32 * half:32 * half + 32]
        ll = np.arange(32)
        q1 = (L[:, ll] & 0xF) | (((H[:, ll] >> 0) & 3) << 4)
        q2 = (L[:, ll + 32] & 0xF) | (((H[:, ll] >> 2) & 3) << 4)
        q3 = (L[:, ll] >> 4) | (((H[:, ll] >> 4) & 3) << 4)
        q4 = (L[:, ll + 32] >> 4) | (((H[:, ll] >> 6) & 3) << 4)
        base = 128 * half
        for k, q in enumerate((q1, q2, q3, q4)):
            pos = base + 32 * k + ll                       # element index in the super-block
            s = sc[:, (pos // 16)]                         # scale of each element's sub-block
            out[:, pos] = d * s * (q - 32)
    return out.reshape(-1)


def quantize_q6_k(x):
    """A simple, valid Q6_K encoder (absmax per 16-element sub-block)."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, QK_K)
    nb = x.shape[0]
    sub = x.reshape(nb, 16, 16)
    step = np.abs(sub).max(axis=2) / 31.0             # per sub-block
    d = step.max(axis=1) / 127.0
    d16 = d.astype(np.float16).astype(np.float64)
    sc = np.clip(np.round(step / np.where(d16 > 0, d16, 1)[:, None]), -128, 127).astype(np.int32)
    eff = d16[:, None] * sc
    q = np.clip(np.round(sub / np.where(eff > 0, eff, 1)[:, :, None]) + 32, 0, 63).astype(np.int32)
    q = q.reshape(nb, QK_K)
    ql = np.zeros((nb, 128), np.int32)
    qh = np.zeros((nb, 64), np.int32)
    for half in range(2):
        base = 128 * half
        ll = np.arange(32)
        q1, q2, q3, q4 = (q[:, base + 32 * k + ll] for k in range(4))
        ql[:, 64 * half + ll] = (q1 & 0xF) | ((q3 & 0xF) << 4)
        ql[:, 64 * half + 32 + ll] = (q2 & 0xF) | ((q4 & 0xF) << 4)
        qh[:, 32 * half + ll] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    out = np.zeros((nb, 210), np.uint8)
    out[:, 0:128] = ql
    out[:, 128:192] = qh
    out[:, 192:208] = sc.astype(np.int8).view(np.uint8)
    out[:, 208:210] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    return out.tobytes()


def encode(x, gtype):
    """float array (any shape, C order) -> raw bytes of gtype."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if gtype == F32:
        return x.astype("<f4").tobytes()
    if gtype == F16:
        return x.astype("<f2").tobytes()
    if gtype == BF16:
        return f32_to_bf16_bits(x).tobytes()
    if gtype == Q8_0:
        return quantize_q8_0(x)
    if gtype == Q4_0:
        return quantize_q4_0(x)
    if gtype == Q4_1:
        return quantize_q4_1(x)
    if gtype == Q5_0:
        return quantize_q5_0(x)
    if gtype == Q4_K:
        return quantize_q4_k(x)
    if gtype == Q5_K:
        return quantize_q5_k(x)
    if gtype == Q6_K:
        return quantize_q6_k(x)
    raise ValueError("cannot encode ggml type %r" % gtype)


def decode(raw, gtype, n):
    """raw bytes of gtype -> float64 array of n elements (in storage order)."""
    if gtype == F32:
        return np.frombuffer(raw, dtype="<f4", count=n).astype(np.float64)
    if gtype == F16:
        return np.frombuffer(raw, dtype="<f2", count=n).astype(np.float64)
    if gtype == BF16:
        return bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2", count=n)).astype(np.float64)
    if gtype == Q8_0:
        return dequantize_q8_0(raw, n)
    if gtype == Q4_0:
        return dequantize_q4_0(raw, n)
    if gtype == Q4_1:
        return dequantize_q4_1(raw, n)
    if gtype == Q5_0:
        return dequantize_q5_0(raw, n)
    if gtype == Q4_K:
        return dequantize_q4_k(raw, n)
    if gtype == Q5_K:
        return dequantize_q5_k(raw, n)
    if gtype == Q6_K:
        return dequantize_q6_k(raw, n)
    raise ValueError("cannot decode ggml type %r" % gtype)


# ---------------------------------------------------------------- writer

def _pack_str(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _pack_value(vtype, value):
    if vtype == STRING:
        return _pack_str(value)
    if vtype == ARRAY:
        etype, items = value
        out = [struct.pack("<IQ", etype, len(items))]
        if etype in _SCALAR_NP and etype != BOOL:
            out.append(np.asarray(items, dtype=_SCALAR_NP[etype]).tobytes())
        else:
            out.extend(_pack_value(etype, it) for it in items)
        return b"".join(out)
    if vtype == BOOL:
        return struct.pack("<B", 1 if value else 0)
    return struct.pack(_SCALAR_FMT[vtype], value)


class Writer:
    """Collects metadata and tensors, then writes a GGUF v3 file.
    kv order and tensor order are kept as added."""

    def __init__(self, alignment=DEFAULT_ALIGNMENT):
        self.kv = []        # (key, vtype, value)
        self.tensors = []   # (name, ne, gtype, raw)
        self.alignment = alignment
        if alignment != DEFAULT_ALIGNMENT:
            self.add(UINT32, "general.alignment", alignment)

    def add(self, vtype, key, value):
        if any(k == key for k, _, _ in self.kv):
            raise ValueError("duplicate key " + key)
        self.kv.append((key, vtype, value))

    def add_u32(self, key, v): self.add(UINT32, key, int(v))
    def add_i32(self, key, v): self.add(INT32, key, int(v))
    def add_f32(self, key, v): self.add(FLOAT32, key, float(v))
    def add_bool(self, key, v): self.add(BOOL, key, bool(v))
    def add_str(self, key, v): self.add(STRING, key, v)
    def add_arr(self, key, etype, items): self.add(ARRAY, key, (etype, list(items) if etype in (STRING, ARRAY) else items))

    def add_tensor(self, name, ne, gtype, raw):
        """ne: dims innermost first; raw: bytes already in gtype's layout."""
        n = 1
        for d in ne:
            n *= int(d)
        if len(raw) != tensor_nbytes(gtype, n):
            raise ValueError("%s: %d bytes, expected %d" % (name, len(raw), tensor_nbytes(gtype, n)))
        self.tensors.append((name, [int(d) for d in ne], gtype, bytes(raw)))

    def add_lazy(self, name, ne, gtype, make):
        """Like add_tensor, but make() is called at write time to produce the raw bytes (so a
        big model is never held in memory whole)."""
        tensor_nbytes(gtype, int(np.prod([int(d) for d in ne], dtype=np.int64)))
        self.tensors.append((name, [int(d) for d in ne], gtype, make))

    def add_array(self, name, arr, gtype):
        """A numpy array (C order, numpy shape outermost first) encoded to gtype; ne reversed."""
        arr = np.asarray(arr)
        self.add_tensor(name, list(arr.shape[::-1]), gtype, encode(arr, gtype))

    def write(self, path, version=3):
        al = self.alignment
        head = [GGUF_MAGIC, struct.pack("<IQQ", version, len(self.tensors), len(self.kv))]
        for key, vtype, value in self.kv:
            head.append(_pack_str(key) + struct.pack("<I", vtype) + _pack_value(vtype, value))
        offset = 0
        offsets = []
        for name, ne, gtype, raw in self.tensors:
            offsets.append(offset)
            head.append(_pack_str(name) + struct.pack("<I", len(ne)) +
                        struct.pack("<%dQ" % len(ne), *ne) + struct.pack("<IQ", gtype, offset))
            nbytes = tensor_nbytes(gtype, int(np.prod(ne, dtype=np.int64)))
            offset += (nbytes + al - 1) // al * al
        hb = b"".join(head)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(hb)
            f.write(b"\0" * ((-len(hb)) % al))
            for (name, ne, gtype, raw), off in zip(self.tensors, offsets):
                if callable(raw):
                    raw = raw()
                    if len(raw) != tensor_nbytes(gtype, int(np.prod(ne, dtype=np.int64))):
                        raise ValueError("%s: lazy tensor has %d bytes" % (name, len(raw)))
                f.write(raw)
                f.write(b"\0" * ((-len(raw)) % al))
        os.replace(tmp, path)  # never leave a half-written file under the final name


# ---------------------------------------------------------------- reader

class Tensor:
    def __init__(self, name, ne, gtype, offset):
        self.name, self.ne, self.type, self.offset = name, ne, gtype, offset
        self.n = 1
        for d in ne:
            self.n *= d
        self.raw = None

    def shape(self):
        """numpy shape (outermost first)."""
        return tuple(reversed(self.ne))

    def array(self):
        """Dequantized float64 numpy array of numpy shape."""
        return decode(self.raw, self.type, self.n).reshape(self.shape())


class Reader:
    """Parses a whole GGUF (v2 or v3) file. kv: key -> (vtype, value); array values are
    (etype, list or numpy array); tensors: name -> Tensor (ordered as in the file)."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.buf = f.read()
        self.pos = 0
        if self.buf[:4] != GGUF_MAGIC:
            raise ValueError("%s: bad magic" % path)
        self.pos = 4
        self.version, = self._u("<I")
        if self.version not in (2, 3):
            raise ValueError("%s: unsupported version %d" % (path, self.version))
        n_tensors, n_kv = self._u("<QQ")
        self.kv = {}
        self.kv_order = []
        for _ in range(n_kv):
            key = self._str()
            vtype, = self._u("<I")
            self.kv[key] = (vtype, self._value(vtype))
            self.kv_order.append(key)
        self.tensors = {}
        for _ in range(n_tensors):
            name = self._str()
            nd, = self._u("<I")
            ne = list(self._u("<%dQ" % nd))
            gtype, off = self._u("<IQ")
            self.tensors[name] = Tensor(name, ne, gtype, off)
        self.alignment = self.get("general.alignment", DEFAULT_ALIGNMENT)
        self.data_start = (self.pos + self.alignment - 1) // self.alignment * self.alignment
        for t in self.tensors.values():
            if t.type not in BLOCK:
                continue  # unknown type: raw left None
            nb = tensor_nbytes(t.type, t.n)
            a = self.data_start + t.offset
            if a + nb > len(self.buf):
                raise ValueError("%s: tensor %s past the end of the file" % (path, t.name))
            t.raw = self.buf[a:a + nb]

    def _u(self, fmt):
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def _str(self):
        n, = self._u("<Q")
        s = self.buf[self.pos:self.pos + n]
        if len(s) != n:
            raise ValueError("string past the end of the file")
        self.pos += n
        return s.decode("utf-8", errors="surrogateescape")

    def _value(self, vtype):
        if vtype == STRING:
            return self._str()
        if vtype == ARRAY:
            etype, n = self._u("<IQ")
            if etype in _SCALAR_NP:
                dt = np.dtype(_SCALAR_NP[etype])
                a = np.frombuffer(self.buf, dtype=dt, count=n, offset=self.pos)
                self.pos += n * dt.itemsize
                return (etype, a.astype(bool) if etype == BOOL else a)
            return (etype, [self._value(etype) for _ in range(n)])
        if vtype == BOOL:
            b, = self._u("<B")
            return b != 0
        v, = self._u(_SCALAR_FMT[vtype])
        return v

    def get(self, key, default=None):
        """Metadata value (array values without their element type), or default."""
        if key not in self.kv:
            return default
        vtype, v = self.kv[key]
        return v[1] if vtype == ARRAY else v

    def tensor(self, name):
        return self.tensors[name].array()


def _dump(path, max_items=8):
    """Prints a GGUF's metadata and tensor table (python3 tools/gguf.py FILE.gguf)."""
    r = Reader(path)
    print("%s: GGUF v%d, %d keys, %d tensors, alignment %d, data at %d" %
          (path, r.version, len(r.kv), len(r.tensors), r.alignment, r.data_start))
    for key in r.kv_order:
        vtype, v = r.kv[key]
        if vtype == ARRAY:
            items = list(v[1][:max_items])
            print("  %-45s [%d x type %d] %r%s" % (key, len(v[1]), v[0], items,
                                                 " ..." if len(v[1]) > max_items else ""))
        else:
            s = repr(v)
            print("  %-45s %s" % (key, s if len(s) < 100 else s[:97] + "..."))
    for t in r.tensors.values():
        print("  %-32s %-6s ne=%s offset=%d" % (t.name, TYPE_NAMES.get(t.type, str(t.type)), t.ne,
                                                t.offset))


if __name__ == "__main__":
    import sys
    for p in sys.argv[1:]:
        _dump(p)
