/* avx512.c: kernels for CPUs with AVX-512 F/BW/DQ/VL, VNNI and BF16 (compiled with those flags;
 * dispatch.c calls into this file only after kiln_kernels_avx512_supported() says yes).
 * Q8_0 / Q4_0: each activation row is quantized once per matmul to int8 blocks of 32 (scale
 * amax/127, a float); block dot products are exact int32 (vpdpbusd) and each (row, block) adds
 * float(int) * (d_w * d_x) with one FMA, blocks in order, so a row's result is bit-identical
 * whichever path (matrix-vector or panel matrix-matrix) computed it. F16 / BF16: the same scheme
 * on 16-bit integers (see "W16" below): packed weights hold int16 with a power-of-two scale per
 * (row, block of 32), activations are rounded to int16 blocks (scale amax/8191), and block dots
 * are exact int32 (vpdpwssd, two products per lane per instruction: twice the f32 FMA rate). F32:
 * f32 FMA.
 * Reentrant; matmuls split output rows over the compute team (pool.h); per-thread scratch grows,
 * never shrinks. */
#include "kernels/kernels.h"
#include "kernels/panels.h"
#include "kernels/pool.h"

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>



/* ---- activation quantization: x (n,) -> q (n,) int8, d (n/32,) scales, corr (n/32,) ---- */

/* corr[b] = -off * sum(q of block b): the weight quants are stored biased by +off as unsigned
 * bytes (Q4_0: nibble q, value q - 8; Q8_0: w + 128), so sum((u - off) * a) = sum(u * a) + corr. */
static void quantize_row(const float *x, int64_t n, int32_t off, int8_t *q, float *d, int32_t *corr) {
    for (int64_t b = 0; b < n / 32; b++) {
        __m512 v0 = _mm512_loadu_ps(x + 32 * b), v1 = _mm512_loadu_ps(x + 32 * b + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        float id = amax > 0 ? 127.0f / amax : 0.0f;
        d[b] = amax / 127.0f;
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(id)));
        __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(id)));
        _mm_storeu_si128((__m128i *)(q + 32 * b), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(q + 32 * b + 16), _mm512_cvtepi32_epi8(q1));
        corr[b] = -off * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
}

/* The largest |q| of the W16 scheme, weights and activations alike: a block's int32 sum of 32
 * products is at most 32 * 8191^2 = 2146959392 < 2^31, so it cannot overflow. */
#define W16_MAX 8191

/* Load masks of the two 16-element halves of a block of 32 with `left` (>= 1) elements in range. */
static inline __mmask16 half_mask(int64_t left) {
    return left >= 16 ? 0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
}

/* W16 activations: x (n,) -> q (nb * 32,) int16 (the tail of the last block zero), d (nb,)
 * scales amax/W16_MAX; q = round(x / d), |q| <= W16_MAX. */
static void quantize_row16(const float *x, int64_t n, int16_t *q, float *d) {
    for (int64_t b = 0; b * 32 < n; b++) {
        int64_t left = n - 32 * b;
        __mmask16 m0 = half_mask(left), m1 = half_mask(left - 16);
        __m512 v0 = _mm512_maskz_loadu_ps(m0, x + 32 * b), v1 = _mm512_maskz_loadu_ps(m1, x + 32 * b + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        float id = amax > 0 ? (float)W16_MAX / amax : 0.0f;
        d[b] = amax / (float)W16_MAX;
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(id)));
        __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(id)));
        _mm256_storeu_si256((__m256i *)(q + 32 * b), _mm512_cvtepi32_epi16(q0));
        _mm256_storeu_si256((__m256i *)(q + 32 * b + 16), _mm512_cvtepi32_epi16(q1));
    }
}

/* Quantized activations of one matmul: n_x rows of nb blocks of 32 quants (int8, or int16 for
 * W16), then per-block scales and corrections (n_x, nb) each (W16 has no corrections). */
typedef struct qact {
    int8_t *q;
    float *d;
    int32_t *corr;
    int64_t nb;                /* blocks per row */
} qact;

/* Bytes of one block of 32 quants. */
static inline size_t act_block_bytes(bool w16) { return w16 ? 64 : 32; }

static qact qact_alloc(int64_t n_x, int64_t n_in, bool w16) {
    qact a;
    a.nb = (n_in + 31) / 32;
    size_t ns = (size_t)n_x * (size_t)a.nb, nq = ns * act_block_bytes(w16);
    size_t nq_al = (nq + 63) & ~(size_t)63;
    KILN_ASSERT(ns / (size_t)n_x == (size_t)a.nb && nq / act_block_bytes(w16) == ns);
    char *p = kiln_pool_scratch(KILN_SCRATCH_ACT, nq_al + ns * 8);
    a.q = (int8_t *)p;
    a.d = (float *)(p + nq_al);
    a.corr = (int32_t *)(p + nq_al + ns * 4);
    return a;
}

/* The quant words (fours of int8, or pairs of int16 when w16) of activation row r, block b. w16
 * is a constant in the tiles: a block size read from the qact there cost Q4_0's pp512 10%
 * (register pressure in the pair tile). */
static inline const int32_t *act_words(const qact *a, bool w16, int64_t r, int64_t b) {
    return (const int32_t *)(a->q + (size_t)(r * a->nb + b) * act_block_bytes(w16));
}

/* ---- packed panels ----
 * A packed matrix is a run of panels of PANEL = 16 consecutive output rows (the last one padded
 * with zero rows), each panel_bytes(t, n_in) long and 64-byte aligned, so that a matmul reads
 * each panel as one sequential stream and every 32-bit lane of a vector belongs to one output row
 * (no horizontal sums). Inside a panel:
 *   Q8_0 / Q4_0, nb = n_in / 32 blocks: first the scales, for each block the 16 rows' f16 d
 *     (nb * 32 bytes, rounded up to 64); then the quants, for each block QV 64-byte vectors whose
 *     lane r holds 4 quant bytes of row r: Q8_0 (QV = 8) vector j = qs[4j..4j+3] + 128 (unsigned);
 *     Q4_0 (QV = 4) vector j = qs[4j..4j+3], elements 4j.. in the low nibbles, 16 + 4j.. in the
 *     high nibbles.
 *   W16 (F16 / BF16), nb = ceil(n_in / 32) blocks, the last one padded with zeros: first the
 *     scales, for each block the 16 rows' biased exponent bytes E (nb * 16 bytes, rounded up to
 *     64), the row's weights in the block being q * 2^(E - 127); then the quants, for each block
 *     16 64-byte vectors whose lane r holds row r's int16 q of elements 2j and 2j + 1 (vector j).
 *     E is the smallest exponent (at least -126) with every |w| <= W16_MAX * 2^(E - 127): a weight
 *     within three binades of its block's largest (F16) or six (BF16) is held exactly; smaller ones
 *     are rounded to a multiple of 2^(E - 127), an error below blockmax / 8191 (a zero block
 *     is exact). Non-finite weights have no int16 value: a block holding one reads as garbage (the
 *     f32 path would give inf/NaN).
 *   F32: for each k < n_in, the 16 rows' element k (64 bytes).
 * The raw-layout matmul packs one panel at a time into a per-thread buffer and runs the same
 * tiles, so packed and raw weights give bit-identical results. */

#define PANEL KILN_PANEL_ROWS

static inline size_t round64(size_t n) { return (n + 63) & ~(size_t)63; }

static bool packable(kiln_wtype t) {
    return t == KILN_WTYPE_Q8_0 || t == KILN_WTYPE_Q4_0 || t == KILN_WTYPE_F32 || t == KILN_WTYPE_F16 ||
           t == KILN_WTYPE_BF16;
}

static bool is_q(kiln_wtype t) { return t == KILN_WTYPE_Q8_0 || t == KILN_WTYPE_Q4_0; }
static bool is_w16(kiln_wtype t) { return t == KILN_WTYPE_F16 || t == KILN_WTYPE_BF16; }

/* Bytes of one packed panel of rows of n_in elements. */
static size_t panel_bytes(kiln_wtype t, int64_t n_in) {
    if (is_q(t)) {
        size_t nb = (size_t)n_in / 32, qv = t == KILN_WTYPE_Q4_0 ? 4 : 8;
        return round64(nb * 32) + nb * qv * 64;
    }
    if (is_w16(t)) {
        size_t nb = ((size_t)n_in + 31) / 32;
        return round64(nb * 16) + nb * 16 * 64;
    }
    return round64((size_t)n_in * PANEL * sizeof(float));
}

/* W16: elements [32b, 32b + 32) of one F16 or BF16 row of n_in as int16 pairs (words[j] = elements
 * 2j, 2j + 1; zeros past n_in) and their biased exponent (the panel comment). */
static uint8_t w16_block(kiln_wtype t, const uint16_t *row, int64_t n_in, int64_t b, uint32_t words[16]) {
    int64_t left = n_in - 32 * b;
    __mmask16 m0 = half_mask(left), m1 = half_mask(left - 16);
    __m256i h0 = _mm256_maskz_loadu_epi16(m0, row + 32 * b), h1 = _mm256_maskz_loadu_epi16(m1, row + 32 * b + 16);
    __m512 v0, v1;
    if (t == KILN_WTYPE_F16) {
        v0 = _mm512_cvtph_ps(h0), v1 = _mm512_cvtph_ps(h1);
    } else {
        v0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h0), 16));
        v1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h1), 16));
    }
    float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    uint32_t bits;
    memcpy(&bits, &amax, 4);
    /* amax = M * 2^(x - 150), M = 2^23 + mantissa bits, x the biased exponent (normal amax; a
     * subnormal or zero one takes the floor -126, as does an inf or NaN). W16_MAX * 2^e >= amax
     * for e = x - 139 exactly when M <= W16_MAX * 2^11, i.e. mantissa bits <= 0x7ff800; else
     * e = x - 138. */
    int x = (int)(bits >> 23);
    int e = x == 0 || x == 255 ? -126 : x - 139 + ((bits & 0x7fffff) > 0x7ff800);
    e = KILN_MAX(-126, e);
    __m512 inv = _mm512_castsi512_ps(_mm512_set1_epi32((127 - e) << 23)); /* 2^-e, e <= 115 */
    __m256i q0 = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)));
    __m256i q1 = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(v1, inv)));
    _mm256_storeu_si256((__m256i *)words, q0);
    _mm256_storeu_si256((__m256i *)(words + 8), q1);
    return (uint8_t)(e + 127);
}

/* Panel p of w (rows 16p .. 16p + 15) into dst (panel_bytes). */
static void pack_panel(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in, int64_t p,
                       uint8_t *dst) {
    const int n_rows = (int)KILN_MIN(PANEL, n_out - p * PANEL);
    if (n_rows < PANEL) memset(dst, 0, panel_bytes(t, n_in)); /* zero rows pad the last panel */
    const uint8_t *rows[PANEL];
    for (int r = 0; r < n_rows; r++) rows[r] = (const uint8_t *)w + (size_t)(p * PANEL + r) * row_bytes;
    if (t == KILN_WTYPE_F32) {
        /* element k of the 16 rows side by side: sequential writes, 16 sequential reads */
        float *d = (float *)dst;
        for (int64_t k = 0; k < n_in; k++)
            for (int r = 0; r < n_rows; r++) d[k * PANEL + r] = ((const float *)rows[r])[k];
        return;
    }
    if (is_w16(t)) {
        const int64_t nb = (n_in + 31) / 32;
        uint32_t *q = (uint32_t *)(dst + round64((size_t)nb * 16)), words[16];
        for (int64_t b = 0; b < nb; b++)
            for (int r = 0; r < n_rows; r++) {
                dst[b * PANEL + r] = w16_block(t, (const uint16_t *)rows[r], n_in, b, words);
                for (int j = 0; j < 16; j++) q[((size_t)b * 16 + j) * PANEL + r] = words[j];
            }
        return;
    }
    const int64_t nb = n_in / 32;
    const int qv = t == KILN_WTYPE_Q4_0 ? 4 : 8;
    const size_t bb = t == KILN_WTYPE_Q4_0 ? sizeof(kiln_block_q4_0) : sizeof(kiln_block_q8_0);
    const uint32_t flip = t == KILN_WTYPE_Q8_0 ? 0x80808080u : 0; /* Q8_0 stored + 128 */
    uint16_t *sc = (uint16_t *)dst;
    uint32_t *q = (uint32_t *)(dst + round64((size_t)nb * 32));
    for (int64_t b = 0; b < nb; b++)
        for (int r = 0; r < n_rows; r++) {
            const uint8_t *bl = rows[r] + (size_t)b * bb;
            memcpy(&sc[b * PANEL + r], bl, 2);
            for (int j = 0; j < qv; j++) {
                uint32_t v;
                memcpy(&v, bl + 2 + 4 * j, 4);
                q[((size_t)b * qv + j) * PANEL + r] = v ^ flip;
            }
        }
}

/* Activation rows per Q tile; how far ahead the single-row tile prefetches its panels. */
#define Q_ROWS 16
#define Q_PF_DECODE 4096

/* _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(*a)) with the broadcast folded into the
 * instruction (m32{1to16}): GCC emits a separate vpbroadcastd for the intrinsic form. */
static inline __m512i dpbusd_b(__m512i acc, __m512i w, const int32_t *a) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*a));
    return acc;
}

/* The same for vpdpwssd (W16: pairs of int16). */
static inline __m512i dpwssd_b(__m512i acc, __m512i w, const int32_t *a) {
    __asm__("vpdpwssd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*a));
    return acc;
}

/* The tiles below take t = Q8_0, Q4_0, or F16 for W16 panels (F16's and BF16's are alike). */
#define W16 KILN_WTYPE_F16

/* Bytes of one block's quants in a panel; of its scales. */
static inline size_t q_block_bytes(kiln_wtype t) { return t == KILN_WTYPE_Q4_0 ? 256 : t == W16 ? 1024 : 512; }
static inline size_t q_scale_bytes(kiln_wtype t) { return t == W16 ? 16 : 32; }

/* The 16 rows' scales of block b: f16 d (Q types) or 2^(E - 127) from W16's exponent bytes. */
static inline __m512 q_scales(kiln_wtype t, const uint8_t *panel, int64_t b) {
    if (t == W16)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(panel + (size_t)b * 16))), 23));
    return _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(panel + (size_t)b * 32)));
}

/* ---- Q8_0 / Q4_0 tile: NP panels x C activation rows ----
 * Per (row, block): the exact int32 dot (vpdpbusd, in any order) plus the correction, then
 * acc += float(sum) * (d_w * d_x) with one FMA, blocks in order. NP = 2 (single-row case) reads two
 * panels side by side: more weight loads in flight. */
static inline __attribute__((always_inline)) void q_tile(kiln_wtype t, int NP, int C, const uint8_t *panel,
                                                         size_t pb, const qact *a, int64_t c0, float *y,
                                                         int64_t n_out, int64_t o0) {
    const int64_t nb = a->nb;
    const size_t qb = q_block_bytes(t), q_off = round64((size_t)nb * q_scale_bytes(t));
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc[4][Q_ROWS];
    #pragma GCC unroll 4
    for (int p = 0; p < NP; p++)
        #pragma GCC unroll 16
        for (int c = 0; c < C; c++) acc[p][c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        #pragma GCC unroll 4
        for (int p = 0; p < NP; p++) {
            const uint8_t *pp = panel + p * pb;
            __m512 dw = q_scales(t, pp, b);
            const uint8_t *q = pp + q_off + (size_t)b * qb;
            /* Prefetch. Several rows (C > 1): into L2, the same block of the next panel(s) (a
             * pair's weights are reread for every row tile; a fixed distance would land inside the
             * pair). One row of Q4_0 (decode, NP = 2 panels read side by side): into L1,
             * Q_PF_DECODE bytes ahead in each panel, its scales too: on this VM's fast-memory
             * phases 22 layers stream at 45-50 GB/s with it against 35-44 with the next pair's
             * block prefetched and 35-42 with none (engine decode 62 -> 77 and 55 -> 68 tok/s).
             * One row of Q8_0, with twice the bytes per vector op: none, the hardware prefetchers
             * alone stream it about 2% faster than with either. */
            if (C == 1 && t == KILN_WTYPE_Q4_0) {
                #pragma GCC unroll 8
                for (size_t i = 0; i < qb; i += 64) _mm_prefetch((const char *)(q + Q_PF_DECODE + i), _MM_HINT_T0);
                if (b % 2 == 0) _mm_prefetch((const char *)(pp + (size_t)b * 32 + Q_PF_DECODE), _MM_HINT_T0);
            } else if (C > 1) {
                #pragma GCC unroll 16
                for (size_t i = 0; i < qb; i += 64) _mm_prefetch((const char *)(q + NP * pb + i), _MM_HINT_T1);
                _mm_prefetch((const char *)(pp + NP * pb + (size_t)b * q_scale_bytes(t)), _MM_HINT_T1);
            }
            if (t == W16) {
                #pragma GCC unroll 16
                for (int c = 0; c < C; c++) {
                    const int32_t *aq = act_words(a, t == W16, c0 + c, b);
                    __m512i s0 = _mm512_setzero_si512();
                    #pragma GCC unroll 16
                    for (int j = 0; j < 16; j++) s0 = dpwssd_b(s0, _mm512_load_si512(q + 64 * j), aq + j);
                    __m512 sc = _mm512_mul_ps(dw, _mm512_set1_ps(a->d[(c0 + c) * nb + b]));
                    acc[p][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), sc, acc[p][c]);
                }
                continue;
            }
            __m512i wv[8];
            if (t == KILN_WTYPE_Q4_0 && C == 1) {
                /* single row: the high nibbles stay in place (16 x their value): one AND each
                 * instead of shift + AND; their dot is 16 x the true one, exactly, and is shifted
                 * back once (the int32 sum is the same as below, bit for bit) */
                const __m512i m4h = _mm512_set1_epi8((char)0xf0);
                const int32_t *aq = act_words(a, t == W16, c0, b);
                __m512i s0 = _mm512_set1_epi32(a->corr[c0 * nb + b]), s1 = _mm512_setzero_si512();
                #pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    __m512i v = _mm512_load_si512(q + 64 * j);
                    s0 = dpbusd_b(s0, _mm512_and_si512(v, m4), aq + j);
                    s1 = dpbusd_b(s1, _mm512_and_si512(v, m4h), aq + j + 4);
                }
                s0 = _mm512_add_epi32(s0, _mm512_srai_epi32(s1, 4));
                __m512 sc = _mm512_mul_ps(dw, _mm512_set1_ps(a->d[c0 * nb + b]));
                acc[p][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), sc, acc[p][0]);
                continue;
            }
            if (t == KILN_WTYPE_Q4_0) {
                #pragma GCC unroll 4
                for (int j = 0; j < 4; j++) {
                    __m512i v = _mm512_load_si512(q + 64 * j);
                    wv[j] = _mm512_and_si512(v, m4);
                    wv[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                }
            } else {
                #pragma GCC unroll 8
                for (int j = 0; j < 8; j++) wv[j] = _mm512_load_si512(q + 64 * j);
            }
            #pragma GCC unroll 16
            for (int c = 0; c < C; c++) {
                int64_t r = c0 + c;
                const int32_t *aq = act_words(a, t == W16, r, b);
                /* one chain from the correction: the int32 sum is exact in any order, and rows of
                 * the tile are independent chains (no add of two partial sums) */
                __m512i s0 = _mm512_set1_epi32(a->corr[r * nb + b]);
                #pragma GCC unroll 8
                for (int j = 0; j < 8; j++) s0 = dpbusd_b(s0, wv[j], aq + j);
                __m512 sc = _mm512_mul_ps(dw, _mm512_set1_ps(a->d[r * nb + b]));
                acc[p][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), sc, acc[p][c]);
            }
        }
    }
    #pragma GCC unroll 4
    for (int p = 0; p < NP; p++) {
        int64_t o = o0 + p * PANEL;
        __mmask16 m = (__mmask16)((1u << KILN_MIN(PANEL, n_out - o)) - 1);
        #pragma GCC unroll 16
        for (int c = 0; c < C; c++) _mm512_mask_storeu_ps(y + (c0 + c) * n_out + o, m, acc[p][c]);
    }
}

/* ---- Q8_0 / Q4_0 pair tile: two panels (32 output rows) x C activation rows ----
 * The same sums as q_tile (exact int32 dots from the correction, then one FMA per block, blocks in
 * order: results bit-identical), with the loops turned so that each broadcast activation word feeds
 * both panels: one broadcast for two vpdpbusd, and 2 x C independent chains per block. In cache,
 * one core runs it at ~5.7 vpdpbusd/ns against ~4.6 for q_tile's 16 rows x 1 panel (the core
 * issues ~6.5/ns); folding the broadcast into each vpdpbusd (as q_tile does) made it 10% slower.
 * The rows' int32 sums (2 x C) and float accumulators (2 x C) stay in registers, hence C <= 6. */
#define Q2_ROWS 6

static inline __attribute__((always_inline)) void q_tile2(kiln_wtype t, int C, const uint8_t *panel, size_t pb,
                                                          bool pf, const qact *a, int64_t c0, float *y,
                                                          int64_t n_out, int64_t o0) {
    const int64_t nb = a->nb;
    const size_t qb = q_block_bytes(t), q_off = round64((size_t)nb * q_scale_bytes(t));
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const uint8_t *p1 = panel + pb;
    __m512 acc[2][Q2_ROWS];
    #pragma GCC unroll 6
    for (int c = 0; c < C; c++) acc[0][c] = acc[1][c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *q0 = panel + q_off + (size_t)b * qb, *q1 = p1 + q_off + (size_t)b * qb;
        /* Q4_0, first row tile over the pair: the same block of the next pair, into L2 (kbench 22
         * layers at 16 rows 373 -> 432 GMAC/s, 512 rows unchanged; Q8_0 lost 11-16% with it) */
        if (pf && t == KILN_WTYPE_Q4_0) {
            #pragma GCC unroll 4
            for (size_t i = 0; i < qb; i += 64) {
                _mm_prefetch((const char *)(q0 + 2 * pb + i), _MM_HINT_T1);
                _mm_prefetch((const char *)(q1 + 2 * pb + i), _MM_HINT_T1);
            }
            if (b % 2 == 0) {
                _mm_prefetch((const char *)(panel + 2 * pb + (size_t)b * 32), _MM_HINT_T1);
                _mm_prefetch((const char *)(p1 + 2 * pb + (size_t)b * 32), _MM_HINT_T1);
            }
        }
        const int32_t *aq[Q2_ROWS];
        __m512i s[2][Q2_ROWS];
        #pragma GCC unroll 6
        for (int c = 0; c < C; c++) {
            aq[c] = act_words(a, t == W16, c0 + c, b);
            s[0][c] = s[1][c] = t == W16 ? _mm512_setzero_si512() : _mm512_set1_epi32(a->corr[(c0 + c) * nb + b]);
        }
        if (t == KILN_WTYPE_Q4_0) {
            #pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                __m512i v0 = _mm512_load_si512(q0 + 64 * j), v1 = _mm512_load_si512(q1 + 64 * j);
                __m512i l0 = _mm512_and_si512(v0, m4), h0 = _mm512_and_si512(_mm512_srli_epi16(v0, 4), m4);
                __m512i l1 = _mm512_and_si512(v1, m4), h1 = _mm512_and_si512(_mm512_srli_epi16(v1, 4), m4);
                #pragma GCC unroll 6
                for (int c = 0; c < C; c++) {
                    __m512i al = _mm512_set1_epi32(aq[c][j]), ah = _mm512_set1_epi32(aq[c][j + 4]);
                    s[0][c] = _mm512_dpbusd_epi32(s[0][c], l0, al);
                    s[1][c] = _mm512_dpbusd_epi32(s[1][c], l1, al);
                    s[0][c] = _mm512_dpbusd_epi32(s[0][c], h0, ah);
                    s[1][c] = _mm512_dpbusd_epi32(s[1][c], h1, ah);
                }
            }
        } else { /* Q8_0: 8 vectors a block (vpdpbusd); W16: 16 (vpdpwssd) */
            #pragma GCC unroll 16
            for (int j = 0; j < 16; j++) {
                if (t != W16 && j == 8) break;
                __m512i w0 = _mm512_load_si512(q0 + 64 * j), w1 = _mm512_load_si512(q1 + 64 * j);
                #pragma GCC unroll 6
                for (int c = 0; c < C; c++) {
                    __m512i av = _mm512_set1_epi32(aq[c][j]);
                    s[0][c] = t == W16 ? _mm512_dpwssd_epi32(s[0][c], w0, av) : _mm512_dpbusd_epi32(s[0][c], w0, av);
                    s[1][c] = t == W16 ? _mm512_dpwssd_epi32(s[1][c], w1, av) : _mm512_dpbusd_epi32(s[1][c], w1, av);
                }
            }
        }
        __m512 dw0 = q_scales(t, panel, b), dw1 = q_scales(t, p1, b);
        #pragma GCC unroll 6
        for (int c = 0; c < C; c++) {
            __m512 dx = _mm512_set1_ps(a->d[(c0 + c) * nb + b]);
            acc[0][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[0][c]), _mm512_mul_ps(dw0, dx), acc[0][c]);
            acc[1][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[1][c]), _mm512_mul_ps(dw1, dx), acc[1][c]);
        }
    }
    #pragma GCC unroll 2
    for (int p = 0; p < 2; p++) {
        int64_t o = o0 + p * PANEL;
        __mmask16 m = (__mmask16)((1u << KILN_MIN(PANEL, n_out - o)) - 1);
        #pragma GCC unroll 6
        for (int c = 0; c < C; c++) _mm512_mask_storeu_ps(y + (c0 + c) * n_out + o, m, acc[p][c]);
    }
}

/* np (1, 2, or 4 for one row: panels.h quads) consecutive panels against activation rows [c0, c1). */
static inline __attribute__((always_inline)) void q_panels_t(kiln_wtype t, const uint8_t *panel, size_t pb, int np,
                                                             const qact *a, int64_t c0, int64_t c1, float *y,
                                                             int64_t n_out, int64_t o0) {
    if (np == 4) { /* one row (decode, panels.h quads): four panels side by side */
        q_tile(t, 4, 1, panel, pb, a, c0, y, n_out, o0);
        return;
    }
    if (np == 2) {
        int64_t c = c0;
        for (; c + Q2_ROWS <= c1; c += Q2_ROWS) q_tile2(t, Q2_ROWS, panel, pb, c == c0, a, c, y, n_out, o0);
        switch (c1 - c) {
        case 5: q_tile2(t, 5, panel, pb, c == c0, a, c, y, n_out, o0); break;
        case 4: q_tile2(t, 4, panel, pb, c == c0, a, c, y, n_out, o0); break;
        case 3: q_tile2(t, 3, panel, pb, c == c0, a, c, y, n_out, o0); break;
        case 2: q_tile2(t, 2, panel, pb, c == c0, a, c, y, n_out, o0); break;
        case 1: q_tile(t, 2, 1, panel, pb, a, c, y, n_out, o0); break;
        default: break;
        }
        return;
    }
    for (int p = 0; p < np; p++) {
        const uint8_t *pp = panel + p * pb;
        int64_t o = o0 + p * PANEL, c = c0;
        for (; c + Q_ROWS <= c1; c += Q_ROWS) q_tile(t, 1, Q_ROWS, pp, pb, a, c, y, n_out, o);
        switch (c1 - c) {
        case 15: q_tile(t, 1, 15, pp, pb, a, c, y, n_out, o); break;
        case 14: q_tile(t, 1, 14, pp, pb, a, c, y, n_out, o); break;
        case 13: q_tile(t, 1, 13, pp, pb, a, c, y, n_out, o); break;
        case 12: q_tile(t, 1, 12, pp, pb, a, c, y, n_out, o); break;
        case 11: q_tile(t, 1, 11, pp, pb, a, c, y, n_out, o); break;
        case 10: q_tile(t, 1, 10, pp, pb, a, c, y, n_out, o); break;
        case 9: q_tile(t, 1, 9, pp, pb, a, c, y, n_out, o); break;
        case 8: q_tile(t, 1, 8, pp, pb, a, c, y, n_out, o); break;
        case 7: q_tile(t, 1, 7, pp, pb, a, c, y, n_out, o); break;
        case 6: q_tile(t, 1, 6, pp, pb, a, c, y, n_out, o); break;
        case 5: q_tile(t, 1, 5, pp, pb, a, c, y, n_out, o); break;
        case 4: q_tile(t, 1, 4, pp, pb, a, c, y, n_out, o); break;
        case 3: q_tile(t, 1, 3, pp, pb, a, c, y, n_out, o); break;
        case 2: q_tile(t, 1, 2, pp, pb, a, c, y, n_out, o); break;
        case 1: q_tile(t, 1, 1, pp, pb, a, c, y, n_out, o); break;
        default: break;
        }
    }
}

/* One function per type: with the three in one, GCC's register allocation of the larger function
 * spilled a pointer in Q4_0's single-row loop (engine decode 5-7% slower in one set of interleaved
 * runs, not reproduced in the next). */
#define Q_PANELS_OF(NAME, T)                                                                                      \
    static __attribute__((noinline)) void NAME(const uint8_t *panel, size_t pb, int np, const qact *a, int64_t c0, \
                                               int64_t c1, float *y, int64_t n_out, int64_t o0) {                \
        q_panels_t(T, panel, pb, np, a, c0, c1, y, n_out, o0);                                                    \
    }
Q_PANELS_OF(q_panels_q4_0, KILN_WTYPE_Q4_0)
Q_PANELS_OF(q_panels_q8_0, KILN_WTYPE_Q8_0)
Q_PANELS_OF(q_panels_w16, W16)
#undef Q_PANELS_OF

static void q_panels(kiln_wtype t, const uint8_t *panel, size_t pb, int np, const qact *a, int64_t c0, int64_t c1,
                     float *y, int64_t n_out, int64_t o0) {
    if (t == KILN_WTYPE_Q4_0) q_panels_q4_0(panel, pb, np, a, c0, c1, y, n_out, o0);
    else if (t == KILN_WTYPE_Q8_0) q_panels_q8_0(panel, pb, np, a, c0, c1, y, n_out, o0);
    else q_panels_w16(panel, pb, np, a, c0, c1, y, n_out, o0);
}

/* Activation rows per F32 tile (two panels side by side), and how far ahead in a panel its
 * weights are prefetched: into L2 for tiles of several rows; into L1, nearer, for the single-row
 * (decode) tile, which streams faster with it (kbench, 22 layers of F16 when F16 took this path:
 * 51-61 GB/s against 41-53 without on a fast-memory phase of the host, 34-38 against 33-35 on a
 * slow one; 2048 and 16384 bytes ahead measured slower than 4096). */
#define F_ROWS 8
#define F_PF_BYTES 8192
#define F_PF_DECODE 4096

/* ---- F32 tile: NP panels x C activation rows ----
 * Per (row, panel): acc += w[k] * x[k] with one f32 FMA per k, k in order; NP panels side by side
 * give the single-row case independent FMA chains. */
static inline __attribute__((always_inline)) void f_tile(int NP, int C, const uint8_t *panel, size_t pb,
                                                         int64_t n_in, const float *x, int64_t c0, float *y,
                                                         int64_t n_out, int64_t o0) {
    const size_t vb = PANEL * sizeof(float);
    __m512 acc[4][F_ROWS];
    #pragma GCC unroll 4
    for (int p = 0; p < NP; p++)
        #pragma GCC unroll 16
        for (int c = 0; c < C; c++) acc[p][c] = _mm512_setzero_ps();
    for (int64_t k = 0; k < n_in; k++) {
        __m512 wv[4];
        #pragma GCC unroll 4
        for (int p = 0; p < NP; p++) {
            if (C == 1) _mm_prefetch((const char *)(panel + p * pb + (size_t)k * vb + F_PF_DECODE), _MM_HINT_T0);
            else _mm_prefetch((const char *)(panel + p * pb + (size_t)k * vb + F_PF_BYTES), _MM_HINT_T1);
            wv[p] = _mm512_load_ps((const float *)(panel + p * pb + (size_t)k * vb));
        }
        #pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            __m512 xv = _mm512_set1_ps(x[(c0 + c) * n_in + k]);
            #pragma GCC unroll 4
            for (int p = 0; p < NP; p++) acc[p][c] = _mm512_fmadd_ps(wv[p], xv, acc[p][c]);
        }
    }
    #pragma GCC unroll 4
    for (int p = 0; p < NP; p++) {
        int64_t o = o0 + p * PANEL;
        __mmask16 m = (__mmask16)((1u << KILN_MIN(PANEL, n_out - o)) - 1);
        #pragma GCC unroll 8
        for (int c = 0; c < C; c++) _mm512_mask_storeu_ps(y + (c0 + c) * n_out + o, m, acc[p][c]);
    }
}


/* np (1 or 2) consecutive panels against activation rows [c0, c1). */
static void f_panels(const uint8_t *panel, size_t pb, int np, int64_t n_in, const float *x, int64_t c0, int64_t c1,
                     float *y, int64_t n_out, int64_t o0) {
    if (c1 - c0 == 1) { /* the single-row case: every panel is its own FMA chain */
        if (np == 2) f_tile(2, 1, panel, pb, n_in, x, c0, y, n_out, o0);
        else f_tile(1, 1, panel, pb, n_in, x, c0, y, n_out, o0);
        return;
    }
    int64_t c = c0;
#define FT(NP)                                                                                               \
    do {                                                                                                     \
        for (; c + F_ROWS <= c1; c += F_ROWS) f_tile(NP, F_ROWS, panel, pb, n_in, x, c, y, n_out, o0);       \
        switch (c1 - c) {                                                                                    \
        case 7: f_tile(NP, 7, panel, pb, n_in, x, c, y, n_out, o0); break;                                   \
        case 6: f_tile(NP, 6, panel, pb, n_in, x, c, y, n_out, o0); break;                                   \
        case 5: f_tile(NP, 5, panel, pb, n_in, x, c, y, n_out, o0); break;                                   \
        case 4: f_tile(NP, 4, panel, pb, n_in, x, c, y, n_out, o0); break;                                   \
        case 3: f_tile(NP, 3, panel, pb, n_in, x, c, y, n_out, o0); break;                                   \
        case 2: f_tile(NP, 2, panel, pb, n_in, x, c, y, n_out, o0); break;                                   \
        case 1: f_tile(NP, 1, panel, pb, n_in, x, c, y, n_out, o0); break;                                   \
        default: break;                                                                                      \
        }                                                                                                    \
    } while (0)
    if (np == 2) FT(2);
    else FT(1);
#undef FT
}

/* ---- the matmul job (panels.h): several matrices sharing one input ---- */

/* Activation rows from which quantizing them is split across the team. */
#define QUANT_PAR_ROWS 16

typedef struct mjob {
    kiln_wtype t;
    const void *w;             /* raw rows (when packed on the fly) */
    size_t row_bytes;
    int64_t n_in;
    const float *x;
    qact a;                    /* quantized activations (Q types, W16) */
    kiln_panel_job pj;
} mjob;

static void m_quant_part(void *ctx, int ith, int nth) {
    mjob *j = ctx;
    int32_t off = j->t == KILN_WTYPE_Q4_0 ? 8 : 128;
    int64_t lo, hi, nb = j->a.nb;
    kiln_pool_range(j->pj.n_x, ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        int8_t *q = j->a.q + (size_t)(r * nb) * act_block_bytes(is_w16(j->t));
        if (is_w16(j->t)) quantize_row16(j->x + r * j->n_in, j->n_in, (int16_t *)q, j->a.d + r * nb);
        else quantize_row(j->x + r * j->n_in, j->n_in, off, q, j->a.d + r * nb, j->a.corr + r * nb);
    }
}

static void m_pack(const kiln_panel_job *pj, int64_t n_out, int64_t p, uint8_t *dst) {
    const mjob *j = pj->ctx;
    pack_panel(j->t, j->w, j->row_bytes, n_out, j->n_in, p, dst);
}

static void m_run(const kiln_panel_job *pj, int mi, const uint8_t *panels, int64_t p, int np, int64_t c0,
                  int64_t c1) {
    const mjob *j = pj->ctx;
    const kiln_pmat *M = &pj->mats[mi];
    if (j->t == KILN_WTYPE_F32) f_panels(panels, pj->pb, np, j->n_in, j->x, c0, c1, M->y, M->n_out, p * PANEL);
    else q_panels(j->t, panels, pj->pb, np, &j->a, c0, c1, M->y, M->n_out, p * PANEL);
}

/* mats (all packed, or one raw matrix w) @ x. */
static void run_matmul(kiln_wtype t, const kiln_pmat *mats, int n_mats, const void *w, size_t row_bytes,
                       int64_t n_in, const float *x, int64_t n_x, int n_threads) {
    KILN_ASSERT(packable(t));
    if (is_q(t)) KILN_ASSERT(n_in % 32 == 0);
    if (n_x <= 0) return;
    mjob j = {.t = t, .w = w, .row_bytes = row_bytes, .n_in = n_in, .x = x};
    double work = kiln_panel_job_init(&j.pj, mats, n_mats, n_in, n_x, panel_bytes(t, n_in), m_run, w ? m_pack : NULL,
                                      &j);
    /* One row of Q8_0: four panels side by side (engine decode 42-44 -> 45-49 tok/s, interleaved
     * runs; Q4_0 and F16 measured the same either way and keep two) */
    j.pj.quads = n_x == 1 && !w && t == KILN_WTYPE_Q8_0;
    /* Small products run on the calling thread: waking the team costs more than they do. */
    int nt = work >= 65536.0 ? n_threads : 1;
    if (t != KILN_WTYPE_F32) {
        j.a = qact_alloc(n_x, n_in, is_w16(t));
        if (n_x >= QUANT_PAR_ROWS) kiln_pool_run(nt, m_quant_part, &j);
        else m_quant_part(&j, 0, 1);
    }
    kiln_pool_run(nt, kiln_panel_job_part, &j.pj);
}

static void avx512_matmul(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in,
                          const float *x, int64_t n_x, float *y, int n_threads) {
    if (kiln_kquant_handles(t)) {
        kiln_kquant_matmul(t, w, row_bytes, n_out, n_in, x, n_x, y, n_threads);
        return;
    }
    kiln_pmat m = {NULL, n_out, y};
    if (n_out > 0) run_matmul(t, &m, 1, w, row_bytes, n_in, x, n_x, n_threads);
}

static size_t avx512_pack_bytes(kiln_wtype t, int64_t n_out, int64_t n_in) {
    if (kiln_kquant_handles(t)) return kiln_kquant_pack_bytes(t, n_out, n_in);
    if (!packable(t) || n_out <= 0 || n_in <= 0 || (is_q(t) && n_in % 32 != 0)) return 0;
    size_t n_panels = ((size_t)n_out + PANEL - 1) / PANEL, pb = panel_bytes(t, n_in), total;
    return kiln_mul_size(n_panels, pb, &total) ? total : 0;
}

static void avx512_pack(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in, void *dst,
                        int n_threads) {
    if (kiln_kquant_handles(t)) {
        kiln_kquant_pack(t, w, row_bytes, n_out, n_in, dst, n_threads);
        return;
    }
    KILN_ASSERT(avx512_pack_bytes(t, n_out, n_in) > 0);
    mjob j = {.t = t, .w = w, .row_bytes = row_bytes, .n_in = n_in};
    j.pj = (kiln_panel_job){.pb = panel_bytes(t, n_in), .pack = m_pack, .ctx = &j};
    kiln_panel_pack_all(&j.pj, n_out, dst, n_threads);
}

static void avx512_matmul_packed(kiln_wtype t, const kiln_pmat *mats, int n_mats, int64_t n_in, const float *x,
                                 int64_t n_x, int n_threads) {
    if (kiln_kquant_handles(t)) {
        kiln_kquant_matmul_packed(t, mats, n_mats, n_in, x, n_x, n_threads);
        return;
    }
    run_matmul(t, mats, n_mats, NULL, 0, n_in, x, n_x, n_threads); /* the job checks the panels' alignment */
}


/* ---- vector helpers (attention inner loops) ---- */

#include "kernels/isa.h" /* the element-wise ops and attn_chunk (avx512_vec.c) */

static float avx512_dot(const float *a, const float *b, int64_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static void avx512_axpy(float a, const float *x, float *y, int64_t n) {
    __m512 av = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

static void avx512_dot_rows(const float *q, const float *k, size_t stride, int64_t n_rows, int64_t n, float *out) {
    for (int64_t r = 0; r < n_rows; r++) out[r] = avx512_dot(q, k + (size_t)r * stride, n);
}

/* y += w[r] * v_r, r in order; each 64-float slice of y stays in registers across the rows (the
 * same FMA per element and row as avx512_axpy, so the same result). */
static void avx512_axpy_rows(const float *w, const float *v, size_t stride, int64_t n_rows, int64_t n, float *y) {
    for (int64_t i0 = 0; i0 < n; i0 += 64) {
        __m512 acc[4];
        __mmask16 m[4];
        #pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            int64_t i = i0 + 16 * j;
            m[j] = i >= n ? 0 : n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
            acc[j] = _mm512_maskz_loadu_ps(m[j], y + (i < n ? i : 0));
        }
        for (int64_t r = 0; r < n_rows; r++) {
            const float *vr = v + (size_t)r * stride;
            __m512 a = _mm512_set1_ps(w[r]);
            #pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                int64_t i = i0 + 16 * j;
                acc[j] = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m[j], vr + (i < n ? i : 0)), acc[j]);
            }
        }
        #pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            int64_t i = i0 + 16 * j;
            _mm512_mask_storeu_ps(y + (i < n ? i : 0), m[j], acc[j]);
        }
    }
}

/* The remaining ops are a small share of the time: the reference versions. */
static void avx512_dequant_row(kiln_wtype t, const void *src, float *dst, int64_t n) {
    kiln_kernels_ref.dequant_row(t, src, dst, n);
}
static void avx512_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int32_t pos, float theta_base,
                        const float *freq_factors, int rope_type) {
    kiln_kernels_ref.rope(x, n_heads, head_dim, n_rot, pos, theta_base, freq_factors, rope_type);
}

const kiln_kernels kiln_kernels_avx512 = {
    .name = "avx512",
    .dequant_row = avx512_dequant_row,
    .matmul = avx512_matmul,
    .pack_bytes = avx512_pack_bytes,
    .pack = avx512_pack,
    .matmul_packed = avx512_matmul_packed,
    .rmsnorm = kiln_avx512_rmsnorm,
    .rope = avx512_rope,
    .silu_mul = kiln_avx512_silu_mul,
    .softmax = kiln_avx512_softmax,
    .dot = avx512_dot,
    .axpy = avx512_axpy,
    .dot_rows = avx512_dot_rows,
    .axpy_rows = avx512_axpy_rows,
    .attn_chunk = kiln_avx512_attn_chunk,
};
