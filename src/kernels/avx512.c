/* avx512.c: kernels for CPUs with AVX-512 F/BW/DQ/VL, VNNI and BF16 (compiled with those flags;
 * dispatch.c calls into this file only after kiln_kernels_avx512_supported() says yes).
 * Q8_0 / Q4_0: each activation row is quantized once per matmul to int8 blocks of 32 (scale
 * amax/127, a float); block dot products are exact int32 (vpdpbusd) and each (row, block) adds
 * float(int) * (d_w * d_x) with one FMA, blocks in order, so a row's result is bit-identical
 * whichever path (matrix-vector or panel matrix-matrix) computed it. F32/F16/BF16: f32 FMA.
 * Reentrant; matmuls split output rows over the compute team (pool.h); per-thread scratch grows,
 * never shrinks. */
#include "kernels/kernels.h"
#include "kernels/pool.h"

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>


static inline float f16(uint16_t h) { return _cvtsh_ss(h); }

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

/* Quantized activations of one matmul: n_x rows of n_in int8, then per-block scales and
 * corrections (n_x, n_in / 32) each. */
typedef struct qact {
    int8_t *q;
    float *d;
    int32_t *corr;
    int64_t nb;                /* blocks per row */
} qact;

static qact qact_alloc(int64_t n_x, int64_t n_in) {
    qact a;
    a.nb = n_in / 32;
    size_t nq = (size_t)n_x * (size_t)n_in, ns = (size_t)n_x * (size_t)a.nb;
    size_t nq_al = (nq + 63) & ~(size_t)63;
    KILN_ASSERT(nq / (size_t)n_x == (size_t)n_in);
    char *p = kiln_pool_scratch(nq_al + ns * 8);
    a.q = (int8_t *)p;
    a.d = (float *)(p + nq_al);
    a.corr = (int32_t *)(p + nq_al + ns * 4);
    return a;
}

/* Weight block b of a row as 32 unsigned bytes in element order (value = byte - off). */
static inline __m256i unpack_block(kiln_wtype t, const uint8_t *row, int64_t b) {
    if (t == KILN_WTYPE_Q4_0) {
        const kiln_block_q4_0 *bl = (const kiln_block_q4_0 *)row + b;
        __m128i x = _mm_loadu_si128((const __m128i *)bl->qs), m = _mm_set1_epi8(0x0f);
        return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x, 4), m), _mm_and_si128(x, m));
    }
    const kiln_block_q8_0 *bl = (const kiln_block_q8_0 *)row + b;
    return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)bl->qs), _mm256_set1_epi8((char)0x80));
}

static inline uint16_t block_d(kiln_wtype t, const uint8_t *row, int64_t b) {
    return t == KILN_WTYPE_Q4_0 ? ((const kiln_block_q4_0 *)row + b)->d : ((const kiln_block_q8_0 *)row + b)->d;
}

/* ---- matrix-vector: 8 weight rows at a time, up to 4 activation rows per pass ---- */

/* Lane i of the result = sum of the 8 int32 lanes of s[i]. */
static inline __m256i hsum8x8(const __m256i s[8]) {
    __m256i t0 = _mm256_hadd_epi32(s[0], s[1]), t1 = _mm256_hadd_epi32(s[2], s[3]);
    __m256i t2 = _mm256_hadd_epi32(s[4], s[5]), t3 = _mm256_hadd_epi32(s[6], s[7]);
    __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

/* Blocks b and b + 1 of a row as 64 unsigned bytes (value = byte - off). Q8_0: element order;
 * Q4_0: 16-byte lanes [low nibbles b, low b + 1, high b, high b + 1] (pair_perm reorders the
 * activations the same way). */
static inline __attribute__((always_inline)) __m512i unpack_pair(kiln_wtype t, const uint8_t *row, int64_t b) {
    if (t == KILN_WTYPE_Q4_0) {
        const kiln_block_q4_0 *bl = (const kiln_block_q4_0 *)row + b;
        __m256i x = _mm256_loadu2_m128i((const __m128i *)bl[1].qs, (const __m128i *)bl[0].qs);
        __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(x), _mm256_srli_epi16(x, 4), 1);
        return _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
    }
    const kiln_block_q8_0 *bl = (const kiln_block_q8_0 *)row + b;
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)bl[0].qs)),
                                   _mm256_loadu_si256((const __m256i *)bl[1].qs), 1);
    return _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
}

/* Activations of blocks b, b + 1 in unpack_pair's order. */
static inline __attribute__((always_inline)) __m512i act_pair(kiln_wtype t, const int8_t *q) {
    __m512i a = _mm512_loadu_si512(q);
    if (t != KILN_WTYPE_Q4_0) return a;
    /* 64-bit words: b low half 0,1; b high half 2,3; b+1 low 4,5; b+1 high 6,7 */
    return _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 4, 5, 2, 3, 6, 7), a);
}

/* s[i] holds row i's products for blocks b and b + 1 (128-bit lanes [b, b+1, b, b+1] for Q4_0,
 * [b, b, b+1, b+1] for Q8_0); returns the row sums, lanes 0-7 = rows 0-7 of block b, lanes 8-15 =
 * rows 0-7 of block b + 1. */
static inline __attribute__((always_inline)) __m512i hsum_pair(kiln_wtype t, const __m512i s[8]) {
    __m512i p[4], q[2];
    #pragma GCC unroll 4
    for (int i = 0; i < 4; i++) /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] of rows 2i, 2i+1 */
        p[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(s[2 * i], s[2 * i + 1]), _mm512_unpackhi_epi32(s[2 * i], s[2 * i + 1]));
    #pragma GCC unroll 2
    for (int i = 0; i < 2; i++) /* per 128-bit lane: the lane's sums of rows 4i .. 4i+3 */
        q[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(p[2 * i], p[2 * i + 1]), _mm512_unpackhi_epi64(p[2 * i], p[2 * i + 1]));
    __m512i x, y;
    if (t == KILN_WTYPE_Q4_0) {
        x = _mm512_shuffle_i64x2(q[0], q[1], _MM_SHUFFLE(1, 0, 1, 0));
        y = _mm512_shuffle_i64x2(q[0], q[1], _MM_SHUFFLE(3, 2, 3, 2));
    } else {
        x = _mm512_shuffle_i64x2(q[0], q[1], _MM_SHUFFLE(2, 0, 2, 0));
        y = _mm512_shuffle_i64x2(q[0], q[1], _MM_SHUFFLE(3, 1, 3, 1));
    }
    /* x + y = [rows 0-3 of b, rows 0-3 of b+1, rows 4-7 of b, rows 4-7 of b+1] */
    __m512i r = _mm512_add_epi32(x, y);
    return _mm512_shuffle_i64x2(r, r, _MM_SHUFFLE(3, 1, 2, 0));
}

/* One block's step for activation row r: acc += float(sum + corr) * (d_w * d_x). */
static inline __attribute__((always_inline)) __m256 gemv_step(__m256 acc, __m256i v, const qact *a, int64_t r,
                                                               int64_t b, __m256 dw) {
    v = _mm256_add_epi32(v, _mm256_set1_epi32(a->corr[r * a->nb + b]));
    __m256 sc = _mm256_mul_ps(dw, _mm256_set1_ps(a->d[r * a->nb + b]));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), sc, acc);
}

/* Blocks ahead whose weight bytes are prefetched (eight row streams at once outrun the hardware
 * prefetcher). A hint only: reading past the matrix is harmless. */
#define PREFETCH_BLOCKS 12

/* Rows [o0, o0 + 8) (clamped to n_out) against activation rows [c0, c0 + nc), nc <= 4. */
static inline __attribute__((always_inline)) void q_gemv8(kiln_wtype t, const uint8_t *w, size_t row_bytes,
                                                          int64_t n_out, int64_t o0, const qact *a, int64_t c0,
                                                          int nc, float *y) {
    const size_t bb = t == KILN_WTYPE_Q4_0 ? sizeof(kiln_block_q4_0) : sizeof(kiln_block_q8_0);
    const uint8_t *rp[8];
    #pragma GCC unroll 8
    for (int i = 0; i < 8; i++) rp[i] = w + (size_t)KILN_MIN(o0 + i, n_out - 1) * row_bytes;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t b = 0;
    for (; b + 2 <= a->nb; b += 2) {
        __m512i wv[8];
        /* past the row's end, prefetch the start of the same row of the next 8-row group */
        int64_t pb = b + PREFETCH_BLOCKS;
        size_t pf_off = pb < a->nb ? (size_t)pb * bb : 8 * row_bytes + (size_t)(pb - a->nb) * bb;
        #pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            _mm_prefetch((const char *)(rp[i] + pf_off), _MM_HINT_T0);
            wv[i] = unpack_pair(t, rp[i], b);
        }
        /* scalar loads instead of a gather (a 16-lane gather stalls the front end) */
#define D0(i) (short)block_d(t, rp[i], b)
#define D1(i) (short)block_d(t, rp[i], b + 1)
        __m512 dw = _mm512_cvtph_ps(_mm256_setr_epi16(D0(0), D0(1), D0(2), D0(3), D0(4), D0(5), D0(6), D0(7),
                                                      D1(0), D1(1), D1(2), D1(3), D1(4), D1(5), D1(6), D1(7)));
#undef D0
#undef D1
        #pragma GCC unroll 8
        for (int c = 0; c < nc; c++) {
            int64_t r = c0 + c;
            __m512i av = act_pair(t, a->q + (r * a->nb + b) * 32);
            __m512i sv[8];
            #pragma GCC unroll 8
            for (int i = 0; i < 8; i++) sv[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[i], av);
            __m512i v = hsum_pair(t, sv);
            /* lanes 0-7 block b, 8-15 block b + 1: corrections and scales the same way */
            const int32_t *cr = a->corr + r * a->nb + b;
            const float *dr = a->d + r * a->nb + b;
            v = _mm512_add_epi32(v, _mm512_inserti64x4(_mm512_set1_epi32(cr[0]), _mm256_set1_epi32(cr[1]), 1));
            __m512 sc = _mm512_mul_ps(dw, _mm512_insertf32x8(_mm512_set1_ps(dr[0]), _mm256_set1_ps(dr[1]), 1));
            __m512 fv = _mm512_cvtepi32_ps(v);
            /* blocks in order: b, then b + 1 */
            acc[c] = _mm256_fmadd_ps(_mm512_castps512_ps256(fv), _mm512_castps512_ps256(sc), acc[c]);
            acc[c] = _mm256_fmadd_ps(_mm512_extractf32x8_ps(fv, 1), _mm512_extractf32x8_ps(sc, 1), acc[c]);
        }
    }
    if (b < a->nb) { /* odd block count: the last block alone */
        __m256i wv[8];
        float dwf[8];
        #pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            wv[i] = unpack_block(t, rp[i], b);
            dwf[i] = f16(block_d(t, rp[i], b));
        }
        __m256 dw = _mm256_loadu_ps(dwf);
        #pragma GCC unroll 8
        for (int c = 0; c < nc; c++) {
            int64_t r = c0 + c;
            __m256i av = _mm256_loadu_si256((const __m256i *)(a->q + (r * a->nb + b) * 32));
            __m256i sv[8];
            #pragma GCC unroll 8
            for (int i = 0; i < 8; i++) sv[i] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wv[i], av);
            acc[c] = gemv_step(acc[c], hsum8x8(sv), a, r, b, dw);
        }
    }
    __mmask8 m = (__mmask8)((1u << KILN_MIN(8, n_out - o0)) - 1);
    #pragma GCC unroll 8
    for (int c = 0; c < nc; c++) _mm256_mask_storeu_ps(y + (c0 + c) * n_out + o0, m, acc[c]);
}

/* ---- matrix-matrix: panels of 16 weight rows unpacked once per KB blocks ---- */

#define PANEL 16
#define KB 16 /* blocks per panel chunk: 16 rows x 512 bytes of unpacked quants */

static inline __attribute__((always_inline)) void pack_panel_t(kiln_wtype t, const uint8_t *w, size_t row_bytes,
                                                                int64_t n_out, int64_t o0, int64_t b0, int64_t nbk,
                                                                uint32_t *pw, float *pd) {
    const uint8_t *rp[PANEL];
    int32_t off[PANEL];
    const size_t bb = t == KILN_WTYPE_Q4_0 ? sizeof(kiln_block_q4_0) : sizeof(kiln_block_q8_0);
    #pragma GCC unroll 16
    for (int r = 0; r < PANEL; r++) {
        rp[r] = w + (size_t)KILN_MIN(o0 + r, n_out - 1) * row_bytes;
        off[r] = (int32_t)(rp[r] - rp[0]);
    }
    const __m512i didx = _mm512_loadu_si512(off);
    const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    for (int64_t j = 0; j < nbk; j++) {
        int64_t b = b0 + j;
        /* A[k] = [row k | row k + 8] as 8 dwords each; an 8x8 dword transpose inside each 256-bit
         * half then leaves dword qd of rows 0..15 in vector qd */
        __m512i A[8], T[8], U[8];
        #pragma GCC unroll 8
        for (int k = 0; k < 8; k++)
            A[k] = _mm512_inserti64x4(_mm512_castsi256_si512(unpack_block(t, rp[k], b)), unpack_block(t, rp[k + 8], b), 1);
        #pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            T[2 * k] = _mm512_unpacklo_epi32(A[2 * k], A[2 * k + 1]);
            T[2 * k + 1] = _mm512_unpackhi_epi32(A[2 * k], A[2 * k + 1]);
        }
        #pragma GCC unroll 2
        for (int k = 0; k < 2; k++) {
            U[4 * k + 0] = _mm512_unpacklo_epi64(T[4 * k], T[4 * k + 2]);
            U[4 * k + 1] = _mm512_unpackhi_epi64(T[4 * k], T[4 * k + 2]);
            U[4 * k + 2] = _mm512_unpacklo_epi64(T[4 * k + 1], T[4 * k + 3]);
            U[4 * k + 3] = _mm512_unpackhi_epi64(T[4 * k + 1], T[4 * k + 3]);
        }
        uint32_t *o = pw + j * 8 * PANEL;
        #pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            _mm512_storeu_si512(o + k * PANEL, _mm512_permutex2var_epi64(U[k], lo, U[k + 4]));
            _mm512_storeu_si512(o + (k + 4) * PANEL, _mm512_permutex2var_epi64(U[k], hi, U[k + 4]));
        }
        __m512i dh = _mm512_i32gather_epi32(didx, rp[0] + (size_t)b * bb, 1);
        _mm512_storeu_ps(pd + j * PANEL, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dh)));
    }
}

/* Panel layout: pw[j][qd][r] = bytes 4qd..4qd+3 of block b0 + j of row o0 + r (u8, biased),
 * pd[j][r] = the row's f32 scale of that block. */
static void pack_panel(kiln_wtype t, const uint8_t *w, size_t row_bytes, int64_t n_out, int64_t o0, int64_t b0,
                       int64_t nbk, uint32_t *pw, float *pd) {
    if (t == KILN_WTYPE_Q4_0) pack_panel_t(KILN_WTYPE_Q4_0, w, row_bytes, n_out, o0, b0, nbk, pw, pd);
    else pack_panel_t(KILN_WTYPE_Q8_0, w, row_bytes, n_out, o0, b0, nbk, pw, pd);
}

/* y rows [c0, c0 + C) x panel columns [o0, o0 + 16) (mask m) += panel chunk . activations. */
static inline __attribute__((always_inline)) void q_kernel(int C, const uint32_t *pw, const float *pd, int64_t b0,
                                                           int64_t nbk, const qact *a, int64_t c0, bool first,
                                                           float *y, int64_t n_out, int64_t o0, __mmask16 m) {
    __m512 acc[8];
    #pragma GCC unroll 8
    for (int c = 0; c < C; c++)
        acc[c] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m, y + (c0 + c) * n_out + o0);
    for (int64_t j = 0; j < nbk; j++) {
        int64_t b = b0 + j;
        __m512i wv[8];
        #pragma GCC unroll 8
        for (int qd = 0; qd < 8; qd++) wv[qd] = _mm512_loadu_si512(pw + (j * 8 + qd) * PANEL);
        __m512 dw = _mm512_loadu_ps(pd + j * PANEL);
        #pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            int64_t r = c0 + c;
            const int32_t *aq = (const int32_t *)(a->q + (r * a->nb + b) * 32);
            __m512i s = _mm512_set1_epi32(a->corr[r * a->nb + b]);
            #pragma GCC unroll 8
            for (int qd = 0; qd < 8; qd++) s = _mm512_dpbusd_epi32(s, wv[qd], _mm512_set1_epi32(aq[qd]));
            __m512 sc = _mm512_mul_ps(dw, _mm512_set1_ps(a->d[r * a->nb + b]));
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[c]);
        }
    }
    #pragma GCC unroll 8
    for (int c = 0; c < C; c++) _mm512_mask_storeu_ps(y + (c0 + c) * n_out + o0, m, acc[c]);
}

#define GEMM_ROWS 8 /* activation rows per kernel call */

static void q_panel(const uint32_t *pw, const float *pd, int64_t b0, int64_t nbk, const qact *a, int64_t n_x,
                    bool first, float *y, int64_t n_out, int64_t o0) {
    __mmask16 m = (__mmask16)((1u << KILN_MIN(PANEL, n_out - o0)) - 1);
    int64_t c0 = 0;
    for (; c0 + GEMM_ROWS <= n_x; c0 += GEMM_ROWS) q_kernel(8, pw, pd, b0, nbk, a, c0, first, y, n_out, o0, m);
    switch (n_x - c0) {
    case 7: q_kernel(7, pw, pd, b0, nbk, a, c0, first, y, n_out, o0, m); break;
    case 6: q_kernel(6, pw, pd, b0, nbk, a, c0, first, y, n_out, o0, m); break;
    case 5: q_kernel(5, pw, pd, b0, nbk, a, c0, first, y, n_out, o0, m); break;
    case 4: q_kernel(4, pw, pd, b0, nbk, a, c0, first, y, n_out, o0, m); break;
    case 3: q_kernel(3, pw, pd, b0, nbk, a, c0, first, y, n_out, o0, m); break;
    case 2: q_kernel(2, pw, pd, b0, nbk, a, c0, first, y, n_out, o0, m); break;
    case 1: q_kernel(1, pw, pd, b0, nbk, a, c0, first, y, n_out, o0, m); break;
    default: break;
    }
}

/* Activation rows from which the panel path pays for its unpacking. */
#define GEMM_MIN_ROWS 4
/* Activation rows from which quantizing them is split across the team. */
#define QUANT_PAR_ROWS 16

typedef struct qjob {
    kiln_wtype t;
    const void *w;
    size_t row_bytes;
    int64_t n_out, n_in, n_x;
    const float *x;
    float *y;
    int32_t off;
    qact a;
    _Atomic int64_t next;      /* work-sharing counter (groups of output rows) */
} qjob;

static void q_quant_part(void *ctx, int ith, int nth) {
    qjob *j = ctx;
    int64_t lo, hi;
    kiln_pool_range(j->n_x, ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++)
        quantize_row(j->x + r * j->n_in, j->n_in, j->off, j->a.q + r * j->n_in, j->a.d + r * j->a.nb,
                     j->a.corr + r * j->a.nb);
}

static void q_gemv_part(void *ctx, int ith, int nth) {
    qjob *j = ctx;
    int64_t lo, hi;
    const int64_t n_groups = (j->n_out + 7) / 8, chunk = kiln_pool_chunk(n_groups, nth);
    while (kiln_pool_take(&j->next, n_groups, chunk, &lo, &hi))
        for (int64_t g = lo; g < hi; g++)
            for (int64_t c0 = 0; c0 < j->n_x; c0 += 4) {
                int nc = (int)KILN_MIN(4, j->n_x - c0);
                /* nc as a constant: the single-row case (decode) gets its own code */
#define GEMV(T, NC) q_gemv8(T, j->w, j->row_bytes, j->n_out, g * 8, &j->a, c0, NC, j->y)
                if (j->t == KILN_WTYPE_Q4_0) {
                    if (nc == 1) GEMV(KILN_WTYPE_Q4_0, 1);
                    else GEMV(KILN_WTYPE_Q4_0, nc);
                } else {
                    if (nc == 1) GEMV(KILN_WTYPE_Q8_0, 1);
                    else GEMV(KILN_WTYPE_Q8_0, nc);
                }
#undef GEMV
            }
}

static void q_gemm_part(void *ctx, int ith, int nth) {
    qjob *j = ctx;
    int64_t lo, hi;
    const int64_t n_groups = (j->n_out + PANEL - 1) / PANEL, chunk = kiln_pool_chunk(n_groups, nth);
    _Alignas(64) uint32_t pw[KB * 8 * PANEL];
    _Alignas(64) float pd[KB * PANEL];
    while (kiln_pool_take(&j->next, n_groups, chunk, &lo, &hi)) {
        for (int64_t g = lo; g < hi; g++) {
            for (int64_t b0 = 0; b0 < j->a.nb; b0 += KB) {
                int64_t nbk = KILN_MIN(KB, j->a.nb - b0);
                pack_panel(j->t, j->w, j->row_bytes, j->n_out, g * PANEL, b0, nbk, pw, pd);
                q_panel(pw, pd, b0, nbk, &j->a, j->n_x, b0 == 0, j->y, j->n_out, g * PANEL);
            }
        }
    }
}

static void q_matmul(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in, const float *x,
                     int64_t n_x, float *y, int nt) {
    KILN_ASSERT(n_in % 32 == 0);
    /* scale gathers address rows by 32-bit byte offsets from the first row of a 16-row group */
    KILN_ASSERT(row_bytes <= ((size_t)1 << 26));
    qjob j = {t, w, row_bytes, n_out, n_in, n_x, x, y, t == KILN_WTYPE_Q4_0 ? 8 : 128, qact_alloc(n_x, n_in), 0};
    if (n_x >= QUANT_PAR_ROWS) kiln_pool_run(nt, q_quant_part, &j);
    else q_quant_part(&j, 0, 1);
    kiln_pool_run(nt, n_x >= GEMM_MIN_ROWS ? q_gemm_part : q_gemv_part, &j);
}

/* ---- F32 / F16 / BF16: f32 FMA over 4 weight rows x up to 4 activation rows ---- */

static inline __m512 load_w(kiln_wtype t, const void *row, int64_t k, __mmask16 m) {
    if (t == KILN_WTYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)row + k);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + k);
    if (t == KILN_WTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Weight bytes ahead of the current position prefetched in each of the 4 row streams. */
#define F_PREFETCH_BYTES 512

static inline __attribute__((always_inline)) void f_kernel(kiln_wtype t, int C, const uint8_t *const rp[4],
                                                           size_t row_bytes, const float *x, int64_t n_in,
                                                           int64_t c0, float *y, int64_t n_out, int64_t o0) {
    const size_t esz = t == KILN_WTYPE_F32 ? 4 : 2;
    __m512 acc[4][4];
    #pragma GCC unroll 8
    for (int i = 0; i < 4; i++)
        #pragma GCC unroll 8
        for (int c = 0; c < C; c++) acc[i][c] = _mm512_setzero_ps();
    for (int64_t k = 0; k < n_in; k += 16) {
        __mmask16 m = n_in - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n_in - k)) - 1);
        __m512 wv[4];
        #pragma GCC unroll 8
        for (int i = 0; i < 4; i++) {
            /* past the row's end, the same row of the next 4-row group (a hint: never faults) */
            size_t pf = (size_t)k * esz + F_PREFETCH_BYTES;
            if (pf >= (size_t)n_in * esz) pf += 3 * row_bytes;
            _mm_prefetch((const char *)(rp[i] + pf), _MM_HINT_T0);
            wv[i] = load_w(t, rp[i], k, m);
        }
        #pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + (c0 + c) * n_in + k);
            #pragma GCC unroll 8
            for (int i = 0; i < 4; i++) acc[i][c] = _mm512_fmadd_ps(wv[i], xv, acc[i][c]);
        }
    }
    /* constant indices only: a data-dependent index would keep acc in memory inside the loop */
    float r[4][4];
    #pragma GCC unroll 8
    for (int c = 0; c < C; c++) {
        #pragma GCC unroll 8
        for (int i = 0; i < 4; i++) r[i][c] = _mm512_reduce_add_ps(acc[i][c]);
    }
    for (int c = 0; c < C; c++)
        for (int i = 0; i < 4 && o0 + i < n_out; i++) y[(c0 + c) * n_out + o0 + i] = r[i][c];
}

static inline __attribute__((always_inline)) void f_rows(kiln_wtype t, const void *w, size_t row_bytes,
                                                         int64_t n_out, int64_t n_in, const float *x, int64_t n_x,
                                                         float *y, int64_t o0) {
    const uint8_t *rp[4];
#pragma GCC unroll 8
    for (int i = 0; i < 4; i++) rp[i] = (const uint8_t *)w + (size_t)KILN_MIN(o0 + i, n_out - 1) * row_bytes;
    int64_t c0 = 0;
    for (; c0 + 4 <= n_x; c0 += 4) f_kernel(t, 4, rp, row_bytes, x, n_in, c0, y, n_out, o0);
    switch (n_x - c0) {
    case 3: f_kernel(t, 3, rp, row_bytes, x, n_in, c0, y, n_out, o0); break;
    case 2: f_kernel(t, 2, rp, row_bytes, x, n_in, c0, y, n_out, o0); break;
    case 1: f_kernel(t, 1, rp, row_bytes, x, n_in, c0, y, n_out, o0); break;
    default: break;
    }
}

typedef struct fjob {
    kiln_wtype t;
    const void *w;
    size_t row_bytes;
    int64_t n_out, n_in, n_x;
    const float *x;
    float *y;
    _Atomic int64_t next;      /* work-sharing counter (groups of 4 output rows) */
} fjob;

static void f_part(void *ctx, int ith, int nth) {
    fjob *j = ctx;
    int64_t lo, hi;
    const int64_t n_groups = (j->n_out + 3) / 4, chunk = kiln_pool_chunk(n_groups, nth);
    while (kiln_pool_take(&j->next, n_groups, chunk, &lo, &hi)) {
        for (int64_t g = lo; g < hi; g++) {
            switch (j->t) {
            case KILN_WTYPE_F32: f_rows(KILN_WTYPE_F32, j->w, j->row_bytes, j->n_out, j->n_in, j->x, j->n_x, j->y, g * 4); break;
            case KILN_WTYPE_F16: f_rows(KILN_WTYPE_F16, j->w, j->row_bytes, j->n_out, j->n_in, j->x, j->n_x, j->y, g * 4); break;
            default: f_rows(KILN_WTYPE_BF16, j->w, j->row_bytes, j->n_out, j->n_in, j->x, j->n_x, j->y, g * 4); break;
            }
        }
    }
}

static void avx512_matmul(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in,
                          const float *x, int64_t n_x, float *y, int n_threads) {
    if (kiln_kquant_handles(t)) {
        kiln_kquant_matmul(t, w, row_bytes, n_out, n_in, x, n_x, y, n_threads);
        return;
    }
    if (n_out <= 0 || n_x <= 0) return;
    /* Small products run on the calling thread: waking the team costs more than they do. */
    int nt = (double)n_out * (double)n_in * (double)n_x >= 65536.0 ? n_threads : 1;
    switch (t) {
    case KILN_WTYPE_Q8_0:
    case KILN_WTYPE_Q4_0: q_matmul(t, w, row_bytes, n_out, n_in, x, n_x, y, nt); break;
    case KILN_WTYPE_F32:
    case KILN_WTYPE_F16:
    case KILN_WTYPE_BF16: {
        fjob j = {t, w, row_bytes, n_out, n_in, n_x, x, y, 0};
        kiln_pool_run(nt, f_part, &j);
        break;
    }
    default: KILN_ASSERT(!"unsupported weight type");
    }
}

/* ---- vector helpers (attention inner loops) ---- */

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
static void avx512_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *out) {
    kiln_kernels_ref.rmsnorm(x, w, n, eps, out);
}
static void avx512_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int32_t pos, float theta_base,
                        const float *freq_factors, int rope_type) {
    kiln_kernels_ref.rope(x, n_heads, head_dim, n_rot, pos, theta_base, freq_factors, rope_type);
}
static void avx512_silu_mul(float *g, const float *u, int64_t n) { kiln_kernels_ref.silu_mul(g, u, n); }
static void avx512_softmax(float *x, int64_t n) { kiln_kernels_ref.softmax(x, n); }

const kiln_kernels kiln_kernels_avx512 = {
    .name = "avx512",
    .dequant_row = avx512_dequant_row,
    .matmul = avx512_matmul,
    .rmsnorm = avx512_rmsnorm,
    .rope = avx512_rope,
    .silu_mul = avx512_silu_mul,
    .softmax = avx512_softmax,
    .dot = avx512_dot,
    .axpy = avx512_axpy,
    .dot_rows = avx512_dot_rows,
    .axpy_rows = avx512_axpy_rows,
};
