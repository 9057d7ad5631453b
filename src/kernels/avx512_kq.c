/* avx512_kq.c: Q4_K / Q5_K / Q6_K (and Q4_1 / Q5_0) matmuls for CPUs with AVX-512 F/BW/DQ/VL + VNNI
 * (+ BF16: the flags this file is compiled with), over packed panels of 16 output rows made once
 * at load, or one panel at a time into a per-thread scratch for raw weights: the same tiles, so
 * packed and raw give bit-identical results. Activations are quantized to int8 with scale
 * amax / 127 per 256 (K-quants, ggml's Q8_K) or per 32 (Q4_1 / Q5_0); every dot of a sub-block
 * or block is exact in int32 (vpdpbusd), then float: K-quants part += float(dot) * (d * sc) per
 * sub-block, minus dmin * the mins term, and acc += part * d_a per super-block; Q4_1 / Q5_0
 * acc += float(dot) * (d * d_a) per block. Every row sees the same ops whatever the batch.
 * Call only through kquants.c, which checks the CPU first. Reentrant. */
#include "kernels/kernels.h"
#include "kernels/panels.h"
#include "kernels/pool.h"

#include <immintrin.h>
#include <string.h>

/* Prefetch hint of a tile of C activation rows, and the single-row tile's distance in bytes. */
#define PF_HINT(C) ((C) == 1 ? _MM_HINT_T0 : _MM_HINT_T1)
#define KQ_PF_DECODE 4096

/* ---- packed layout ----
 * A packed matrix is a run of panels of PANEL = 16 consecutive output rows (the last one padded
 * with zero rows), each n_in / 256 super-blocks of sb_bytes(t), all 64-byte aligned. In the
 * quant vectors every 32-bit lane r holds 4 bytes of row r (so vpdpbusd against a broadcast
 * activation dword gives each row its own sum, no horizontal adds). One super-block, 16 rows:
 *   Q4_K / Q5_K: d (16 f16) | dmin (16 f16) | sc: byte 16j + r = 6-bit scale of sub-block j |
 *     m: 4 x 32 bytes, byte 32k + 2r + e = 6-bit min of sub-block 2k + e (zero-extended to int16
 *     it pairs with an activation dword of two int16 sums) | qs: for sub-block j (32 elements) 4
 *     vectors, vector v lane r byte i: low nibble = element 4v + i, high nibble = element
 *     16 + 4v + i | Q5_K only, qh: for sub-block j one vector, lane r byte i bit k = fifth bit of
 *     element 4k + i.  2368 bytes (Q4_K, raw 16 x 144 = 2304: +2.8%), 2880 (Q5_K, raw 2816: +2.3%).
 *   Q6_K: d (16 f16) + 32 bytes pad | sc: byte 16j + r = int8 scale of sub-block j (16 elements) |
 *     ql: per 32 elements (sub-blocks 2s, 2s + 1) 4 vectors of low 4 bits, nibbles as above |
 *     qh: per 32 elements 2 vectors, vector h lane r byte i bits 2k..2k+1 = high bits of element
 *     16h + 4k + i.  3392 bytes (raw 3360: +1%).
 * Q4_1 / Q5_0 (blocks of 32, nb = n_in / 32 per row): d (per block the 16 rows' f16, nb * 32 bytes
 * rounded up to 64) | Q4_1 only, m (the same) | quants: per block 4 vectors, nibbles as above (lane
 * r of vector v = the raw qs[4v..4v+3] of row r) | Q5_0 only, qh: per block one vector, lane r
 * byte i bit k = fifth bit of element 4k + i. Size: raw + at most 64 bytes per region.
 * Decode is memory-bound, so the packed size stays within 3% of the raw one. */

#define PANEL KILN_PANEL_ROWS
#define SB KILN_QK_K
#define OFF_SC 64
#define OFF_M 192
#define OFF_QS 320
#define OFF_QH 2368

static bool is_kq(kiln_wtype t) { return t == KILN_WTYPE_Q4_K || t == KILN_WTYPE_Q5_K || t == KILN_WTYPE_Q6_K; }
static bool is_lq(kiln_wtype t) { return t == KILN_WTYPE_Q4_1 || t == KILN_WTYPE_Q5_0; }
/* Elements per unit of the layout (and per activation scale). */
static int64_t unit(kiln_wtype t) { return is_kq(t) ? SB : 32; }

static inline size_t round64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Q4_1 / Q5_0 panel regions for nb blocks: offsets of m (Q4_1), quants and qh (Q5_0). */
static inline size_t lq_off_q(kiln_wtype t, int64_t nb) {
    return round64((size_t)nb * 32) * (t == KILN_WTYPE_Q4_1 ? 2 : 1);
}
static inline size_t lq_off_h(kiln_wtype t, int64_t nb) { return lq_off_q(t, nb) + (size_t)nb * 256; }

static inline size_t sb_bytes(kiln_wtype t) {
    return t == KILN_WTYPE_Q4_K ? 2368 : t == KILN_WTYPE_Q5_K ? 2880 : 3392;
}

/* Bytes of one panel (false on overflow). */
static bool panel_bytes(kiln_wtype t, int64_t n_in, size_t *pb) {
    if (is_kq(t)) return kiln_mul_size((size_t)(n_in / SB), sb_bytes(t), pb);
    int64_t nb = n_in / 32;
    if (nb > (int64_t)(SIZE_MAX / 1024)) return false;
    *pb = lq_off_h(t, nb) + (t == KILN_WTYPE_Q5_0 ? (size_t)nb * 64 : 0);
    return true;
}

size_t kiln_kquant_avx512_pack_bytes(kiln_wtype t, int64_t n_out, int64_t n_in) {
    size_t pb, total;
    if (!(is_kq(t) || is_lq(t)) || n_out <= 0 || n_in <= 0 || n_in % unit(t) != 0 || !panel_bytes(t, n_in, &pb))
        return 0;
    size_t n_panels = ((size_t)n_out + PANEL - 1) / PANEL;
    return kiln_mul_size(n_panels, pb, &total) ? total : 0;
}

static inline void put32(uint8_t *dst, uint32_t v) { memcpy(dst, &v, 4); }

#define NIB 0x0f0f0f0f0f0f0f0fULL

/* 32 four-bit values L[l] (l < 32, one per byte, as 4 little-endian words: L[0..15] in lo[0..1],
 * L[16..31] in hi[0..1]) of one sub-block of 32 (or a pair of Q6_K sub-blocks) -> the 4 quant
 * vectors' dwords of lane r: byte 4v + i = L[4v + i] | L[16 + 4v + i] << 4. */
static inline void put_nibbles(uint8_t *qv, int r, const uint64_t lo[2], const uint64_t hi[2]) {
    uint64_t o[2] = {lo[0] | hi[0] << 4, lo[1] | hi[1] << 4};
    for (int v = 0; v < 4; v++) memcpy(qv + v * 64 + 4 * r, (const uint8_t *)o + 4 * v, 4);
}

/* Row r of one super-block (raw block src) into the packed super-block dst (16 rows). */
static void pack_sb(kiln_wtype t, const uint8_t *src, int r, uint8_t *dst) {
    uint64_t q[4], lo[4], hi[4];
    if (t == KILN_WTYPE_Q6_K) {
        const kiln_block_q6_k *b = (const kiln_block_q6_k *)src;
        memcpy(dst + 2 * r, &b->d, 2);
        for (int j = 0; j < 16; j++) dst[OFF_SC + 16 * j + r] = (uint8_t)b->scales[j];
        for (int s = 0; s < 8; s++) {
            int h = s / 4, k = s % 4, sh = k >= 2 ? 4 : 0;
            memcpy(q, b->ql + 64 * h + 32 * (k & 1), 32);
            for (int i = 0; i < 4; i++) lo[i] = (q[i] >> sh) & NIB;
            put_nibbles(dst + OFF_QS + (size_t)s * 4 * 64, r, lo, lo + 2);
            uint32_t w[8];
            memcpy(w, b->qh + 32 * h, 32);
            for (int hv = 0; hv < 2; hv++) {
                uint32_t o = 0;
                for (int kk = 0; kk < 4; kk++) o |= ((w[4 * hv + kk] >> (2 * k)) & 0x03030303u) << (2 * kk);
                put32(dst + OFF_QH + (size_t)(2 * s + hv) * 64 + 4 * r, o);
            }
        }
        return;
    }
    /* Q4_K and Q5_K share d, dmin, scales and the low nibbles' layout */
    const kiln_block_q4_k *b4 = (const kiln_block_q4_k *)src;
    const kiln_block_q5_k *b5 = (const kiln_block_q5_k *)src;
    bool five = t == KILN_WTYPE_Q5_K;
    const uint8_t *scales = five ? b5->scales : b4->scales, *qs = five ? b5->qs : b4->qs;
    memcpy(dst + 2 * r, five ? &b5->d : &b4->d, 2);
    memcpy(dst + 32 + 2 * r, five ? &b5->dmin : &b4->dmin, 2);
    for (int j = 0; j < 8; j++) {
        int sc, m;
        if (j < 4) {
            sc = scales[j] & 63;
            m = scales[j + 4] & 63;
        } else {
            sc = (scales[j + 4] & 15) | ((scales[j - 4] >> 6) << 4);
            m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        }
        dst[OFF_SC + 16 * j + r] = (uint8_t)sc;
        dst[OFF_M + 32 * (j / 2) + 2 * r + (j & 1)] = (uint8_t)m;
    }
    for (int c = 0; c < 4; c++) {
        memcpy(q, qs + 32 * c, 32);
        for (int i = 0; i < 4; i++) {
            lo[i] = q[i] & NIB;
            hi[i] = (q[i] >> 4) & NIB;
        }
        put_nibbles(dst + OFF_QS + (size_t)(2 * c) * 4 * 64, r, lo, lo + 2);
        put_nibbles(dst + OFF_QS + (size_t)(2 * c + 1) * 4 * 64, r, hi, hi + 2);
    }
    if (five) {
        uint32_t w[8];
        memcpy(w, b5->qh, 32);
        for (int j = 0; j < 8; j++) {
            uint32_t o = 0;
            for (int k = 0; k < 8; k++) o |= ((w[k] >> j) & 0x01010101u) << k;
            put32(dst + OFF_QH + (size_t)j * 64 + 4 * r, o);
        }
    }
}

/* Row r of a Q4_1 / Q5_0 row of nb blocks into the packed panel dst. */
static void pack_lq_row(kiln_wtype t, const uint8_t *row, int64_t nb, int r, uint8_t *dst) {
    size_t off_q = lq_off_q(t, nb), off_h = lq_off_h(t, nb);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *qs;
        if (t == KILN_WTYPE_Q4_1) {
            const kiln_block_q4_1 *bl = (const kiln_block_q4_1 *)row + b;
            memcpy(dst + b * 32 + 2 * r, &bl->d, 2);
            memcpy(dst + round64((size_t)nb * 32) + b * 32 + 2 * r, &bl->m, 2);
            qs = bl->qs;
        } else {
            const kiln_block_q5_0 *bl = (const kiln_block_q5_0 *)row + b;
            memcpy(dst + b * 32 + 2 * r, &bl->d, 2);
            uint32_t qh, o = 0;
            memcpy(&qh, bl->qh, 4);
            /* byte i bit k = bit 4k + i of qh */
            for (int k = 0; k < 8; k++) {
                uint32_t nib = (qh >> (4 * k)) & 15;
                uint32_t spread = (nib & 1) | (nib & 2) << 7 | (nib & 4) << 14 | (nib & 8) << 21;
                o |= spread << k;
            }
            put32(dst + off_h + (size_t)b * 64 + 4 * r, o);
            qs = bl->qs;
        }
        for (int v = 0; v < 4; v++) memcpy(dst + off_q + (size_t)b * 256 + v * 64 + 4 * r, qs + 4 * v, 4);
    }
}

/* Panel p of w (rows 16p .. 16p + 15) into dst (panel bytes pb). */
static void pack_panel(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in, int64_t p,
                       size_t pb, uint8_t *dst) {
    size_t bb = t == KILN_WTYPE_Q4_K ? sizeof(kiln_block_q4_k)
                : t == KILN_WTYPE_Q5_K ? sizeof(kiln_block_q5_k) : sizeof(kiln_block_q6_k);
    if (n_out - p * PANEL < PANEL) memset(dst, 0, pb); /* zero rows: finite, never stored */
    for (int r = 0; r < PANEL; r++) {
        int64_t o = p * PANEL + r;
        if (o >= n_out) break;
        const uint8_t *row = (const uint8_t *)w + (size_t)o * row_bytes;
        if (is_lq(t)) {
            pack_lq_row(t, row, n_in / 32, r, dst);
            continue;
        }
        for (int64_t b = 0; b < n_in / SB; b++) pack_sb(t, row + (size_t)b * bb, r, dst + (size_t)b * sb_bytes(t));
    }
}

/* ---- activations: x (n,) -> q (n,) int8 per unit (256 for the K-quants, like ggml's Q8_K; 32
 * for Q4_1 / Q5_0, like Q8_1) with d = amax / 127, and per row aux: Q4_K / Q5_K: int16 sums of
 * the quants of each 32 (two per dword: sub-blocks 2k, 2k + 1); Q6_K: int32 -32 * the sum of each
 * 16 (the quants' +32 bias, folded into the dot's start); Q5_0: int32 -16 * the sum of each 32;
 * Q4_1: the float d * the sum of each 32 (what the block's m multiplies). */
typedef struct kact {
    int8_t *q;         /* (n_x, n_in) */
    float *d;          /* (n_x, nsb) */
    int32_t *aux;      /* (n_x, n_in / 16) */
    int64_t n_in, nsb; /* nsb: units per row */
} kact;

static void quantize_row(kiln_wtype t, const float *x, int64_t n, int8_t *q, float *d, int32_t *aux) {
    int16_t *bs = (int16_t *)aux;
    float *xs = (float *)aux;
    const int64_t u = unit(t);
    for (int64_t b = 0; b < n / u; b++) {
        const float *xb = x + b * u;
        __m512 m = _mm512_setzero_ps();
        for (int i = 0; i < u; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(xb + i)));
        float amax = _mm512_reduce_max_ps(m);
        float id = amax > 0 ? 127.0f / amax : 0.0f;
        d[b] = amax / 127.0f;
        __m512 vid = _mm512_set1_ps(id);
        int32_t s32 = 0;
        for (int k = 0; k < u / 16; k++) {
            __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 16 * k), vid));
            _mm_storeu_si128((__m128i *)(q + b * u + 16 * k), _mm512_cvtepi32_epi8(qi));
            int32_t s = _mm512_reduce_add_epi32(qi);
            if (t == KILN_WTYPE_Q6_K) {
                aux[b * 16 + k] = -32 * s;
            } else if (k & 1) {
                s32 += s; /* |sum of 32| <= 4064 */
                if (t == KILN_WTYPE_Q5_0) aux[b] = -16 * s32;
                else if (t == KILN_WTYPE_Q4_1) xs[b] = d[b] * (float)s32;
                else bs[b * 8 + k / 2] = (int16_t)s32;
            } else {
                s32 = s;
            }
        }
    }
}

static kact kact_alloc(kiln_wtype t, int64_t n_x, int64_t n_in) {
    kact a = {.n_in = n_in, .nsb = n_in / unit(t)};
    size_t nq = (size_t)n_x * (size_t)n_in, nd = (size_t)n_x * (size_t)a.nsb, naux = nq / 16;
    KILN_ASSERT(nq / (size_t)n_x == (size_t)n_in);
    size_t nq_al = (nq + 63) & ~(size_t)63, nd_al = (nd * 4 + 63) & ~(size_t)63;
    char *p = kiln_pool_scratch(KILN_SCRATCH_ACT, nq_al + nd_al + naux * 4);
    a.q = (int8_t *)p;
    a.d = (float *)(p + nq_al);
    a.aux = (int32_t *)(p + nq_al + nd_al);
    return a;
}

/* ---- the tile: NP panels x C activation rows ---- */

/* Activation rows per tile. */
#define Q_ROWS 8

/* _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(*a)) with the broadcast folded into the
 * instruction (m32{1to16}): GCC emits a separate vpbroadcastd before the builtin, and the 8-row
 * tiles ran 7-13% slower for it (Q4_K 163 -> 174 GMAC/s, Q6_K 142 -> 159 on one core). */
static inline __m512i dpbusd_b(__m512i acc, __m512i w, const int32_t *a) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*a));
    return acc;
}

/* wv[k] |= bit (Q5_K) / bits (Q6_K) of H moved to bit 4 (4..5): shift then a | (b & c). */
static inline __m512i or_high(__m512i w, __m512i h, int sh, __m512i mask) {
    __m512i s = sh > 0 ? _mm512_slli_epi16(h, sh) : sh < 0 ? _mm512_srli_epi16(h, -sh) : h;
    return _mm512_ternarylogic_epi32(w, s, mask, 0xf8);
}

/* Q4_1 / Q5_0: per (row, block) the int32 dot (Q5_0: started at -16 * the activation sum), then
 * acc += float(dot) * (d_w * d_a) (Q4_1: and acc += m * d_a * the activation sum), blocks in order.
 * Arguments as kq_tile. */
static inline __attribute__((always_inline)) void lq_tile(kiln_wtype t, int NP, int C, const uint8_t *panel,
                                                          size_t pb, size_t pf, const kact *a, int64_t c0,
                                                          float *y, int64_t n_out, int64_t o0) {
    const int64_t nb = a->nsb, n_in = a->n_in, naux = n_in / 16;
    const size_t off_m = round64((size_t)nb * 32), off_q = lq_off_q(t, nb), off_h = lq_off_h(t, nb);
    const __m512i m4 = _mm512_set1_epi8(0x0f), m10 = _mm512_set1_epi8(0x10);
    const float *xs = (const float *)a->aux;
    __m512 acc[2][Q_ROWS];
    #pragma GCC unroll 2
    for (int p = 0; p < NP; p++)
        #pragma GCC unroll 8
        for (int c = 0; c < C; c++) acc[p][c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        #pragma GCC unroll 2
        for (int p = 0; p < NP; p++) {
            const uint8_t *P = panel + p * pb, *qv = P + off_q + (size_t)b * 256;
            if (pf) {
                #pragma GCC unroll 4
                for (int l = 0; l < 4; l++) _mm_prefetch((const char *)(qv + pf + 64 * l), PF_HINT(C));
                if (t == KILN_WTYPE_Q5_0) _mm_prefetch((const char *)(P + off_h + (size_t)b * 64 + pf), PF_HINT(C));
                if ((b & 1) == 0) {
                    _mm_prefetch((const char *)(P + (size_t)b * 32 + pf), PF_HINT(C));
                    if (t == KILN_WTYPE_Q4_1) _mm_prefetch((const char *)(P + off_m + (size_t)b * 32 + pf), PF_HINT(C));
                }
            }
            __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(P + (size_t)b * 32)));
            __m512 mw = _mm512_setzero_ps();
            if (t == KILN_WTYPE_Q4_1) mw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(P + off_m + (size_t)b * 32)));
            __m512i wv[8];
            #pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                __m512i V = _mm512_load_si512(qv + 64 * v);
                wv[v] = _mm512_and_si512(V, m4);
                wv[v + 4] = _mm512_and_si512(_mm512_srli_epi16(V, 4), m4);
            }
            if (t == KILN_WTYPE_Q5_0) {
                __m512i H = _mm512_load_si512(P + off_h + (size_t)b * 64);
                #pragma GCC unroll 8
                for (int k = 0; k < 8; k++) wv[k] = or_high(wv[k], H, 4 - k, m10);
            }
            #pragma GCC unroll 8
            for (int c = 0; c < C; c++) {
                int64_t r = c0 + c;
                const int32_t *aq = (const int32_t *)(a->q + r * n_in + 32 * b);
                __m512i s0 = t == KILN_WTYPE_Q5_0 ? _mm512_set1_epi32(a->aux[r * naux + b]) : _mm512_setzero_si512();
                __m512i s1 = _mm512_setzero_si512();
                #pragma GCC unroll 4
                for (int v = 0; v < 4; v++) {
                    s0 = dpbusd_b(s0, wv[v], &aq[v]);
                    if (C == 1) s1 = dpbusd_b(s1, wv[v + 4], &aq[v + 4]);
                    else s0 = dpbusd_b(s0, wv[v + 4], &aq[v + 4]);
                }
                if (C == 1) s0 = _mm512_add_epi32(s0, s1);
                __m512 sc = _mm512_mul_ps(dw, _mm512_set1_ps(a->d[r * nb + b]));
                acc[p][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), sc, acc[p][c]);
                if (t == KILN_WTYPE_Q4_1) acc[p][c] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xs[r * naux + b]), acc[p][c]);
            }
        }
    }
    #pragma GCC unroll 2
    for (int p = 0; p < NP; p++) {
        int64_t o = o0 + p * PANEL;
        __mmask16 m = (__mmask16)((1u << KILN_MIN(PANEL, n_out - o)) - 1);
        #pragma GCC unroll 8
        for (int c = 0; c < C; c++) _mm512_mask_storeu_ps(y + (c0 + c) * n_out + o, m, acc[p][c]);
    }
}

/* pf > 0: while reading a panel, prefetch the bytes pf further on (into L1 for one row, else L2). */
static inline __attribute__((always_inline)) void kq_tile(kiln_wtype t, int NP, int C, const uint8_t *panel,
                                                          size_t pb, size_t pf, const kact *a, int64_t c0,
                                                          float *y, int64_t n_out, int64_t o0) {
    if (is_lq(t)) {
        lq_tile(t, NP, C, panel, pb, pf, a, c0, y, n_out, o0);
        return;
    }
    const int64_t nsb = a->nsb, n_in = a->n_in, naux = n_in / 16;
    const size_t sbb = sb_bytes(t), nl = sbb / 64;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc[2][Q_ROWS];
    #pragma GCC unroll 2
    for (int p = 0; p < NP; p++)
        #pragma GCC unroll 16
        for (int c = 0; c < C; c++) acc[p][c] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        #pragma GCC unroll 2
        for (int p = 0; p < NP; p++) {
            const uint8_t *S = panel + p * pb + (size_t)sb * sbb;
            __m512 part[Q_ROWS]; /* this super-block's sum in units of d_a */
            #pragma GCC unroll 16
            for (int c = 0; c < C; c++) part[c] = _mm512_setzero_ps();
            __m512 D = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)S));
            /* 8 steps of 32 elements: a Q4_K / Q5_K sub-block, or two Q6_K sub-blocks */
            for (int j = 0; j < 8; j++) {
                if (pf) {
                    #pragma GCC unroll 8
                    for (size_t l = nl * j / 8; l < nl * (j + 1) / 8; l++)
                        _mm_prefetch((const char *)(S + pf + 64 * l), PF_HINT(C));
                }
                __m512i wv[8];
                const uint8_t *qv = S + OFF_QS + (size_t)j * 256;
                #pragma GCC unroll 4
                for (int v = 0; v < 4; v++) {
                    __m512i V = _mm512_load_si512(qv + 64 * v);
                    wv[v] = _mm512_and_si512(V, m4);
                    wv[v + 4] = _mm512_and_si512(_mm512_srli_epi16(V, 4), m4);
                }
                __m512 A0, A1 = _mm512_setzero_ps();
                if (t == KILN_WTYPE_Q6_K) {
                    const __m512i m30 = _mm512_set1_epi8(0x30);
                    __m512i H0 = _mm512_load_si512(S + OFF_QH + (size_t)j * 128);
                    __m512i H1 = _mm512_load_si512(S + OFF_QH + (size_t)j * 128 + 64);
                    #pragma GCC unroll 4
                    for (int k = 0; k < 4; k++) {
                        wv[k] = or_high(wv[k], H0, 4 - 2 * k, m30);
                        wv[k + 4] = or_high(wv[k + 4], H1, 4 - 2 * k, m30);
                    }
                    const __m128i *sc = (const __m128i *)(S + OFF_SC + 32 * j);
                    A0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(sc))), D);
                    A1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(sc + 1))), D);
                } else {
                    if (t == KILN_WTYPE_Q5_K) {
                        const __m512i m10 = _mm512_set1_epi8(0x10);
                        __m512i H = _mm512_load_si512(S + OFF_QH + (size_t)j * 64);
                        #pragma GCC unroll 8
                        for (int k = 0; k < 8; k++) wv[k] = or_high(wv[k], H, 4 - k, m10);
                    }
                    const __m128i *sc = (const __m128i *)(S + OFF_SC + 16 * j);
                    A0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128(sc))), D);
                }
                if (t == KILN_WTYPE_Q6_K) {
                    #pragma GCC unroll 16
                    for (int c = 0; c < C; c++) {
                        int64_t r = c0 + c;
                        const int32_t *aq = (const int32_t *)(a->q + r * n_in + sb * SB + 32 * j);
                        const int32_t *corr = a->aux + r * naux + sb * 16 + 2 * j;
                        __m512i s0 = _mm512_set1_epi32(corr[0]), s1 = _mm512_set1_epi32(corr[1]);
                        #pragma GCC unroll 4
                        for (int v = 0; v < 4; v++) {
                            s0 = dpbusd_b(s0, wv[v], &aq[v]);
                            s1 = dpbusd_b(s1, wv[v + 4], &aq[v + 4]);
                        }
                        part[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), A0, part[c]);
                        part[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), A1, part[c]);
                    }
                } else {
                    /* The int32 sums are exact in any order: one chain per row, the rows side by
                     * side in program order (8 rows: pp512 +2-4% over row after row), and two
                     * chains for the single row (latency), added at the end. */
                    __m512i s[Q_ROWS], s1 = _mm512_setzero_si512();
                    const int32_t *aq[Q_ROWS];
                    #pragma GCC unroll 16
                    for (int c = 0; c < C; c++) {
                        s[c] = _mm512_setzero_si512();
                        aq[c] = (const int32_t *)(a->q + (c0 + c) * n_in + sb * SB + 32 * j);
                    }
                    #pragma GCC unroll 8
                    for (int v = 0; v < 8; v++)
                        #pragma GCC unroll 16
                        for (int c = 0; c < C; c++) {
                            if (C == 1 && v >= 4) s1 = dpbusd_b(s1, wv[v], &aq[c][v]);
                            else s[c] = dpbusd_b(s[c], wv[v], &aq[c][v]);
                        }
                    if (C == 1) s[0] = _mm512_add_epi32(s[0], s1);
                    #pragma GCC unroll 16
                    for (int c = 0; c < C; c++) part[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[c]), A0, part[c]);
                }
            }
            if (t != KILN_WTYPE_Q6_K) {
                /* mins: part -= dmin * sum_j m_j * (sum of the activation quants of j) */
                __m512 Dm = _mm512_sub_ps(_mm512_setzero_ps(),
                                          _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(S + 32))));
                __m512i M[4];
                #pragma GCC unroll 4
                for (int k = 0; k < 4; k++)
                    M[k] = _mm512_cvtepu8_epi16(_mm256_load_si256((const __m256i *)(S + OFF_M + 32 * k)));
                #pragma GCC unroll 16
                for (int c = 0; c < C; c++) {
                    int64_t r = c0 + c;
                    const int32_t *bs = a->aux + r * naux + sb * 4;
                    __m512i ms = _mm512_dpwssd_epi32(_mm512_setzero_si512(), M[0], _mm512_set1_epi32(bs[0]));
                    #pragma GCC unroll 3
                    for (int k = 1; k < 4; k++) ms = _mm512_dpwssd_epi32(ms, M[k], _mm512_set1_epi32(bs[k]));
                    part[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ms), Dm, part[c]);
                }
            }
            #pragma GCC unroll 16
            for (int c = 0; c < C; c++)
                acc[p][c] = _mm512_fmadd_ps(part[c], _mm512_set1_ps(a->d[(c0 + c) * nsb + sb]), acc[p][c]);
        }
    }
    #pragma GCC unroll 2
    for (int p = 0; p < NP; p++) {
        int64_t o = o0 + p * PANEL;
        __mmask16 m = (__mmask16)((1u << KILN_MIN(PANEL, n_out - o)) - 1);
        #pragma GCC unroll 16
        for (int c = 0; c < C; c++) _mm512_mask_storeu_ps(y + (c0 + c) * n_out + o, m, acc[p][c]);
    }
}

/* np (1 or 2) consecutive panels against activation rows [c0, c1). */
static inline __attribute__((always_inline)) void kq_panels_t(kiln_wtype t, const uint8_t *panel, size_t pb, int np,
                                                              const kact *a, int64_t c0, int64_t c1, float *y,
                                                              int64_t n_out, int64_t o0) {
    /* Prefetch distance. One row (decode, two panels read side by side): KQ_PF_DECODE bytes on
     * in each panel, into L1 (Q4_K_M decode 50-51 -> 63-72 tok/s against the next pair's bytes
     * into L2, which it had before). Several rows: the same bytes of the next panels this thread
     * reads (consecutive work items), from the first tile over a panel only; without prefetch 16
     * rows ran out-of-cache weights at 2/3 of their in-cache speed. A distance near a panel's size
     * lands inside the pair being read (Q6_K decode then ran at 13 GB/s on one core, not 19-21). */
    if (c1 - c0 == 1 && np == 2) {
        kq_tile(t, 2, 1, panel, pb, KQ_PF_DECODE, a, c0, y, n_out, o0);
        return;
    }
    for (int p = 0; p < np; p++) {
        const uint8_t *pp = panel + p * pb;
        int64_t o = o0 + p * PANEL, c = c0;
        for (; c + Q_ROWS <= c1; c += Q_ROWS) kq_tile(t, 1, Q_ROWS, pp, pb, c == c0 ? pb : 0, a, c, y, n_out, o);
        size_t pf = c == c0 ? pb : 0;
        _Static_assert(Q_ROWS == 8, "the tails below are 1..7 rows");
        switch (c1 - c) {
        case 7: kq_tile(t, 1, 7, pp, pb, pf, a, c, y, n_out, o); break;
        case 6: kq_tile(t, 1, 6, pp, pb, pf, a, c, y, n_out, o); break;
        case 5: kq_tile(t, 1, 5, pp, pb, pf, a, c, y, n_out, o); break;
        case 4: kq_tile(t, 1, 4, pp, pb, pf, a, c, y, n_out, o); break;
        case 3: kq_tile(t, 1, 3, pp, pb, pf, a, c, y, n_out, o); break;
        case 2: kq_tile(t, 1, 2, pp, pb, pf, a, c, y, n_out, o); break;
        case 1: kq_tile(t, 1, 1, pp, pb, pf, a, c, y, n_out, o); break;
        default: break;
        }
    }
}

static void kq_panels(kiln_wtype t, const uint8_t *panel, size_t pb, int np, const kact *a, int64_t c0, int64_t c1,
                      float *y, int64_t n_out, int64_t o0) {
    switch (t) {
    case KILN_WTYPE_Q4_K: kq_panels_t(KILN_WTYPE_Q4_K, panel, pb, np, a, c0, c1, y, n_out, o0); break;
    case KILN_WTYPE_Q5_K: kq_panels_t(KILN_WTYPE_Q5_K, panel, pb, np, a, c0, c1, y, n_out, o0); break;
    case KILN_WTYPE_Q4_1: kq_panels_t(KILN_WTYPE_Q4_1, panel, pb, np, a, c0, c1, y, n_out, o0); break;
    case KILN_WTYPE_Q5_0: kq_panels_t(KILN_WTYPE_Q5_0, panel, pb, np, a, c0, c1, y, n_out, o0); break;
    default: kq_panels_t(KILN_WTYPE_Q6_K, panel, pb, np, a, c0, c1, y, n_out, o0); break;
    }
}

/* ---- the job (panels.h): several matrices sharing one input ---- */

/* Activation rows from which quantizing them is split across the team. */
#define QUANT_PAR_ROWS 16

typedef struct kjob {
    kiln_wtype t;
    const void *w;                    /* raw rows (when packed on the fly) */
    size_t row_bytes;
    int64_t n_in;
    const float *x;
    kact a;
    kiln_panel_job pj;
} kjob;

static void quant_part(void *ctx, int ith, int nth) {
    kjob *j = ctx;
    int64_t lo, hi;
    kiln_pool_range(j->pj.n_x, ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++)
        quantize_row(j->t, j->x + r * j->n_in, j->n_in, j->a.q + r * j->n_in, j->a.d + r * j->a.nsb,
                     j->a.aux + r * (j->n_in / 16));
}

static void k_pack(const kiln_panel_job *pj, int64_t n_out, int64_t p, uint8_t *dst) {
    const kjob *j = pj->ctx;
    pack_panel(j->t, j->w, j->row_bytes, n_out, j->n_in, p, pj->pb, dst);
}

static void k_run(const kiln_panel_job *pj, int mi, const uint8_t *panels, int64_t p, int np, int64_t c0,
                  int64_t c1) {
    const kjob *j = pj->ctx;
    const kiln_pmat *M = &pj->mats[mi];
    kq_panels(j->t, panels, pj->pb, np, &j->a, c0, c1, M->y, M->n_out, p * PANEL);
}

void kiln_kquant_avx512_matmul(kiln_wtype t, const kiln_pmat *mats, int n_mats, const void *w, size_t row_bytes,
                               int64_t n_in, const float *x, int64_t n_x, int n_threads) {
    KILN_ASSERT((is_kq(t) || is_lq(t)) && n_in > 0 && n_in % unit(t) == 0);
    if (n_x <= 0) return;
    kjob j = {.t = t, .w = w, .row_bytes = row_bytes, .n_in = n_in, .x = x};
    size_t pb;
    KILN_ASSERT(panel_bytes(t, n_in, &pb));
    double work = kiln_panel_job_init(&j.pj, mats, n_mats, n_in, n_x, pb, k_run, w ? k_pack : NULL, &j);
    /* small products run on the calling thread: waking the team costs more than they do */
    int nt = work >= 65536.0 ? n_threads : 1;
    j.a = kact_alloc(t, n_x, n_in);
    if (n_x >= QUANT_PAR_ROWS) kiln_pool_run(nt, quant_part, &j);
    else quant_part(&j, 0, 1);
    kiln_pool_run(nt, kiln_panel_job_part, &j.pj);
}

void kiln_kquant_avx512_pack(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in, void *dst,
                             int n_threads) {
    KILN_ASSERT(kiln_kquant_avx512_pack_bytes(t, n_out, n_in) > 0);
    kjob j = {.t = t, .w = w, .row_bytes = row_bytes, .n_in = n_in};
    j.pj = (kiln_panel_job){.pack = k_pack, .ctx = &j};
    KILN_ASSERT(panel_bytes(t, n_in, &j.pj.pb));
    kiln_panel_pack_all(&j.pj, n_out, dst, n_threads);
}
