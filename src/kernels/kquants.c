/* kquants.c: the ggml K-quant weight types Q4_K, Q5_K, Q6_K (super-blocks of 256) and the small
 * legacy types Q4_1, Q5_0 (blocks of 32): scalar dequantization (the spec, layouts in kernels.h,
 * checked against ggml's dequantize_row_* semantics) and a matmul that dequantizes one block at a
 * time into a stack buffer and dots it with every activation row (an AVX2+FMA build of that loop
 * runs when the CPU has it), or, with AVX2, an integer path over int8-quantized activations; on
 * AVX-512 + VNNI CPUs all five types go to avx512_kq.c's panels instead (packed at load by the
 * model, or one panel at a time here), so packed and raw products are bit-identical.
 * Reentrant; the matmul splits output rows over the compute team (pool.h). Heap only for the
 * quantized activations of prompt-sized batches. */
#include "kernels/kernels.h"

#include "kernels/pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

bool kiln_kquant_handles(kiln_wtype t) {
    return t == KILN_WTYPE_Q4_1 || t == KILN_WTYPE_Q5_0 || t == KILN_WTYPE_Q4_K || t == KILN_WTYPE_Q5_K ||
           t == KILN_WTYPE_Q6_K;
}

/* The six-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K super-block. */
static inline void scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* One block of each type -> dst (block elements,). Written as plain loops over bytes so that a
 * compiler targeting AVX2 vectorizes them (the same source builds the fast path below). */
static inline void deq_q4_1(const kiln_block_q4_1 *b, float *dst) {
    float d = kiln_f16_to_f32(b->d), m = kiln_f16_to_f32(b->m);
    for (int j = 0; j < KILN_QK4_1 / 2; j++) {
        dst[j] = (float)(b->qs[j] & 15) * d + m;
        dst[j + KILN_QK4_1 / 2] = (float)(b->qs[j] >> 4) * d + m;
    }
}

static inline void deq_q5_0(const kiln_block_q5_0 *b, float *dst) {
    float d = kiln_f16_to_f32(b->d);
    uint32_t qh = (uint32_t)b->qh[0] | (uint32_t)b->qh[1] << 8 | (uint32_t)b->qh[2] << 16 | (uint32_t)b->qh[3] << 24;
    for (int j = 0; j < KILN_QK5_0 / 2; j++) {
        int lo = (b->qs[j] & 15) | (int)((qh >> j) & 1) << 4;
        int hi = (b->qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
        dst[j] = (float)(lo - 16) * d;
        dst[j + KILN_QK5_0 / 2] = (float)(hi - 16) * d;
    }
}

static inline void deq_q4_k(const kiln_block_q4_k *b, float *dst) {
    float d = kiln_f16_to_f32(b->d), dmin = kiln_f16_to_f32(b->dmin);
    for (int c = 0; c < 4; c++) {
        int sc0, m0, sc1, m1;
        scale_min(b->scales, 2 * c, &sc0, &m0);
        scale_min(b->scales, 2 * c + 1, &sc1, &m1);
        float d0 = d * (float)sc0, o0 = dmin * (float)m0, d1 = d * (float)sc1, o1 = dmin * (float)m1;
        const uint8_t *q = b->qs + 32 * c;
        float *y = dst + 64 * c;
        for (int l = 0; l < 32; l++) {
            y[l] = d0 * (float)(q[l] & 15) - o0;
            y[l + 32] = d1 * (float)(q[l] >> 4) - o1;
        }
    }
}

static inline void deq_q5_k(const kiln_block_q5_k *b, float *dst) {
    float d = kiln_f16_to_f32(b->d), dmin = kiln_f16_to_f32(b->dmin);
    for (int c = 0; c < 4; c++) {
        int sc0, m0, sc1, m1;
        scale_min(b->scales, 2 * c, &sc0, &m0);
        scale_min(b->scales, 2 * c + 1, &sc1, &m1);
        float d0 = d * (float)sc0, o0 = dmin * (float)m0, d1 = d * (float)sc1, o1 = dmin * (float)m1;
        const uint8_t *q = b->qs + 32 * c;
        float *y = dst + 64 * c;
        for (int l = 0; l < 32; l++) {
            int h0 = (b->qh[l] >> (2 * c)) & 1, h1 = (b->qh[l] >> (2 * c + 1)) & 1;
            y[l] = d0 * (float)((q[l] & 15) | h0 << 4) - o0;
            y[l + 32] = d1 * (float)((q[l] >> 4) | h1 << 4) - o1;
        }
    }
}

static inline void deq_q6_k(const kiln_block_q6_k *b, float *dst) {
    float d = kiln_f16_to_f32(b->d);
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        const int8_t *sc = b->scales + 8 * h;
        float *y = dst + 128 * h;
        for (int l = 0; l < 32; l++) {
            int s = l / 16;
            int q0 = (ql[l] & 15) | ((qh[l] >> 0) & 3) << 4;
            int q1 = (ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4;
            int q2 = (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4;
            int q3 = (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4;
            y[l] = d * (float)sc[s] * (float)(q0 - 32);
            y[l + 32] = d * (float)sc[s + 2] * (float)(q1 - 32);
            y[l + 64] = d * (float)sc[s + 4] * (float)(q2 - 32);
            y[l + 96] = d * (float)sc[s + 6] * (float)(q3 - 32);
        }
    }
}

/* Dequantizes n_blocks blocks of type t from src into dst. */
static inline void deq_blocks(kiln_wtype t, const void *src, float *dst, int64_t n_blocks) {
    switch (t) {
    case KILN_WTYPE_Q4_1:
        for (int64_t i = 0; i < n_blocks; i++) deq_q4_1((const kiln_block_q4_1 *)src + i, dst + i * KILN_QK4_1);
        break;
    case KILN_WTYPE_Q5_0:
        for (int64_t i = 0; i < n_blocks; i++) deq_q5_0((const kiln_block_q5_0 *)src + i, dst + i * KILN_QK5_0);
        break;
    case KILN_WTYPE_Q4_K:
        for (int64_t i = 0; i < n_blocks; i++) deq_q4_k((const kiln_block_q4_k *)src + i, dst + i * KILN_QK_K);
        break;
    case KILN_WTYPE_Q5_K:
        for (int64_t i = 0; i < n_blocks; i++) deq_q5_k((const kiln_block_q5_k *)src + i, dst + i * KILN_QK_K);
        break;
    case KILN_WTYPE_Q6_K:
        for (int64_t i = 0; i < n_blocks; i++) deq_q6_k((const kiln_block_q6_k *)src + i, dst + i * KILN_QK_K);
        break;
    default:
        KILN_ASSERT(!"kquants: unsupported weight type");
    }
}

void kiln_kquant_dequant_row(kiln_wtype t, const void *src, float *dst, int64_t n) {
    size_t be = 0, bb = 0;
    KILN_ASSERT(kiln_kquant_handles(t) && kiln_wtype_block(t, &be, &bb));
    KILN_ASSERT(n >= 0 && n % (int64_t)be == 0);
    deq_blocks(t, src, dst, n / (int64_t)be);
}

/* ---- matmul: w (n_out, n_in) @ x (n_x, n_in) -> y (n_x, n_out) ----
 * Per output row, CHUNK weights at a time are dequantized into a stack buffer and dotted with
 * each activation row (eight partial sums, fixed order: results do not depend on threads). */
#define CHUNK 256

static inline float dot8(const float *a, const float *b, int64_t n) {
    float s[8] = {0};
    for (int64_t i = 0; i < n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* The body shared by the baseline and AVX2 builds; `static inline` so each caller gets its own
 * copy compiled for its target. Rows [o0, o1). */
static inline void matmul_rows(kiln_wtype t, size_t be, size_t bb, const void *w, size_t row_bytes,
                               int64_t n_out, int64_t n_in, const float *x, int64_t n_x, float *y,
                               int64_t o0, int64_t o1) {
    float buf[CHUNK] __attribute__((aligned(32)));
    for (int64_t o = o0; o < o1; o++) {
        const uint8_t *row = (const uint8_t *)w + (size_t)o * row_bytes;
        for (int64_t r = 0; r < n_x; r++) y[r * n_out + o] = 0;
        for (int64_t c = 0; c < n_in; c += CHUNK) {
            int64_t len = KILN_MIN(CHUNK, n_in - c);
            deq_blocks(t, row + (size_t)c / be * bb, buf, len / (int64_t)be);
            for (int64_t r = 0; r < n_x; r++) y[r * n_out + o] += dot8(buf, x + r * n_in + c, len);
        }
    }
}

static void matmul_rows_base(kiln_wtype t, size_t be, size_t bb, const void *w, size_t row_bytes,
                             int64_t n_out, int64_t n_in, const float *x, int64_t n_x, float *y, int64_t o0,
                             int64_t o1) {
    matmul_rows(t, be, bb, w, row_bytes, n_out, n_in, x, n_x, y, o0, o1);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_AVX2_PATH 1
__attribute__((target("avx2,fma"))) static void matmul_rows_avx2(kiln_wtype t, size_t be, size_t bb,
                                                                 const void *w, size_t row_bytes, int64_t n_out,
                                                                 int64_t n_in, const float *x, int64_t n_x,
                                                                 float *y, int64_t o0, int64_t o1) {
    matmul_rows(t, be, bb, w, row_bytes, n_out, n_in, x, n_x, y, o0, o1);
}
#endif

/* ---- integer path (AVX2; VNNI when present) ----
 * Activations are quantized per 32 to int8 with a float scale (as ggml pairs these types with
 * Q8_K / Q8_1 activations); each weight row is unpacked once per call into unsigned quants q
 * (0..63), a scale per 16 and an offset per 16 (w = A * q + B); then for every activation row
 * y = sum_b da_b * sum_16 A * (q . a) + sum_16 B * (da * sum a). Activation blocks (one scale
 * da_b) are 256 for the K-quants (ggml's Q8_K), 32 for Q4_1 / Q5_0 (Q8_1). Tolerance against the
 * float path: the activation rounding (at most amax of its block / 254 per element). */
#define MAX_INT_N_IN 16384   /* per-thread unpack buffers live on the stack */
#define ACT_STACK_BYTES (96 * 1024)

typedef struct act_q {
    int8_t *q;          /* (n_x, n_in) */
    float *d;           /* (n_x, n_in / ab) scales */
    float *s16;         /* (n_x, n_in / 16): d * sum of the 16 quants = the sum of the 16 activations */
    int64_t ab;         /* elements per activation scale: 256 (K-quants, like ggml's Q8_K) or 32 */
} act_q;

#ifdef HAVE_AVX2_PATH
#include <immintrin.h>
#define TGT __attribute__((target("avx2,fma,f16c")))
#define TGT_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))

TGT static inline int hsum_epi32_128(__m128i v) {
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0x4e));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0xb1));
    return _mm_cvtsi128_si32(v);
}

TGT static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* x (n,) -> int8 in blocks of ab (a multiple of 32) elements with scale amax / 127 (round to
 * nearest even); s16 gets d * the sum of each 16 quants. */
TGT static void quantize_act(const float *x, int64_t n, int64_t ab, int8_t *q, float *d, float *s16) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < n / ab; b++) {
        __m256 m = _mm256_setzero_ps();
        for (int64_t i = b * ab; i < (b + 1) * ab; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        float db = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        d[b] = db;
        for (int64_t c = b * ab; c < (b + 1) * ab; c += 32) {
            const float *xb = x + c;
            __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb), vid));
            __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + 8), vid));
            __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + 16), vid));
            __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + 24), vid));
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            p = _mm256_permutevar8x32_epi32(p, perm);
            _mm256_storeu_si256((__m256i *)(q + c), p);
            __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), p), _mm256_set1_epi16(1));
            s16[c / 16] = db * (float)hsum_epi32_128(_mm256_castsi256_si128(sums));
            s16[c / 16 + 1] = db * (float)hsum_epi32_128(_mm256_extracti128_si256(sums, 1));
        }
    }
}

/* Sets the scales / offsets of the two 16-element halves of 32-element group g: aexp holds each
 * scale for the 4 int32 lanes of its half (one vector store). */
TGT static inline void set_ab32(float *aexp, float *b16, int64_t g, float a0, float b0, float a1, float b1) {
    _mm256_storeu_ps(aexp + 8 * g, _mm256_set_m128(_mm_set1_ps(a1), _mm_set1_ps(a0)));
    b16[2 * g] = b0;
    b16[2 * g + 1] = b1;
}

/* One weight row of type t (n_in elements) -> q (n_in,) u8, aexp (n_in / 4,), b16 (n_in / 16,). */
TGT static void unpack_row(kiln_wtype t, const uint8_t *row, int64_t n_in, uint8_t *q, float *aexp, float *b16) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m1 = _mm256_set1_epi8(0x01), m2 = _mm256_set1_epi8(0x03);
    switch (t) {
    case KILN_WTYPE_Q4_K:
    case KILN_WTYPE_Q5_K: {
        bool five = t == KILN_WTYPE_Q5_K;
        for (int64_t ib = 0; ib < n_in / KILN_QK_K; ib++) {
            const uint8_t *scales, *qs, *qhp = NULL;
            uint16_t dh, mh;
            if (five) {
                const kiln_block_q5_k *b = (const kiln_block_q5_k *)row + ib;
                scales = b->scales, qs = b->qs, qhp = b->qh, dh = b->d, mh = b->dmin;
            } else {
                const kiln_block_q4_k *b = (const kiln_block_q4_k *)row + ib;
                scales = b->scales, qs = b->qs, dh = b->d, mh = b->dmin;
            }
            float d = _cvtsh_ss(dh), dmin = _cvtsh_ss(mh);
            uint8_t *o = q + ib * KILN_QK_K;
            __m256i qh = five ? _mm256_loadu_si256((const __m256i *)qhp) : _mm256_setzero_si256();
            for (int c = 0; c < 4; c++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
                __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                if (five) {
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), m1), 4));
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), m1), 4));
                }
                _mm256_storeu_si256((__m256i *)(o + 64 * c), lo);
                _mm256_storeu_si256((__m256i *)(o + 64 * c + 32), hi);
            }
            /* the eight 6-bit scales and mins as bytes of two words each (layout: kernels.h) */
            uint32_t w[3], sc[2], mn[2];
            memcpy(w, scales, 12);
            sc[0] = w[0] & 0x3f3f3f3fu, sc[1] = (w[2] & 0x0f0f0f0fu) | ((w[0] >> 2) & 0x30303030u);
            mn[0] = w[1] & 0x3f3f3f3fu, mn[1] = ((w[2] >> 4) & 0x0f0f0f0fu) | ((w[1] >> 2) & 0x30303030u);
            __m256 A = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)sc))),
                                     _mm256_set1_ps(d));
            __m256 B = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)mn))),
                                     _mm256_set1_ps(-dmin));
            for (int j = 0; j < 8; j++)
                _mm256_storeu_ps(aexp + 8 * (ib * 8 + j), _mm256_permutevar8x32_ps(A, _mm256_set1_epi32(j)));
            _mm256_storeu_ps(b16 + 16 * ib, _mm256_permutevar8x32_ps(B, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)));
            _mm256_storeu_ps(b16 + 16 * ib + 8, _mm256_permutevar8x32_ps(B, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7)));
        }
        break;
    }
    case KILN_WTYPE_Q6_K:
        for (int64_t ib = 0; ib < n_in / KILN_QK_K; ib++) {
            const kiln_block_q6_k *b = (const kiln_block_q6_k *)row + ib;
            float d = _cvtsh_ss(b->d);
            uint8_t *o = q + ib * KILN_QK_K;
            for (int h = 0; h < 2; h++) {
                __m256i l0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
                __m256i l1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
                __m256i H = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
                __m256i g0 = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(H, m2), 4));
                __m256i g1 = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(H, 2), m2), 4));
                __m256i g2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(H, 4), m2), 4));
                __m256i g3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(H, 6), m2), 4));
                _mm256_storeu_si256((__m256i *)(o + 128 * h), g0);
                _mm256_storeu_si256((__m256i *)(o + 128 * h + 32), g1);
                _mm256_storeu_si256((__m256i *)(o + 128 * h + 64), g2);
                _mm256_storeu_si256((__m256i *)(o + 128 * h + 96), g3);
            }
            __m128i s8 = _mm_loadu_si128((const __m128i *)b->scales);
            __m256 vd = _mm256_set1_ps(d), m32 = _mm256_set1_ps(-32.0f);
            __m256 A[2] = {_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s8)), vd),
                           _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(s8, 8))), vd)};
            for (int g = 0; g < 8; g++) {
                int k = 2 * (g & 3);
                __m256i idx = _mm256_setr_epi32(k, k, k, k, k + 1, k + 1, k + 1, k + 1);
                _mm256_storeu_ps(aexp + 8 * (ib * 8 + g), _mm256_permutevar8x32_ps(A[g >> 2], idx));
            }
            _mm256_storeu_ps(b16 + 16 * ib, _mm256_mul_ps(A[0], m32));
            _mm256_storeu_ps(b16 + 16 * ib + 8, _mm256_mul_ps(A[1], m32));
        }
        break;
    case KILN_WTYPE_Q4_1:
    case KILN_WTYPE_Q5_0: {
        const __m128i n4 = _mm_set1_epi8(0x0f);
        /* byte i of the 32-byte high-bit mask tests bit i % 8 of qh byte i / 8 */
        const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                                             3, 3, 3, 3, 3, 3, 3);
        const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
        for (int64_t ib = 0; ib < n_in / 32; ib++) {
            const uint8_t *qs;
            float a, bo;
            uint32_t qh = 0;
            if (t == KILN_WTYPE_Q4_1) {
                const kiln_block_q4_1 *b = (const kiln_block_q4_1 *)row + ib;
                qs = b->qs, a = _cvtsh_ss(b->d), bo = _cvtsh_ss(b->m);
            } else {
                const kiln_block_q5_0 *b = (const kiln_block_q5_0 *)row + ib;
                qs = b->qs, a = _cvtsh_ss(b->d), bo = -16.0f * a;
                memcpy(&qh, b->qh, 4);
            }
            __m128i v = _mm_loadu_si128((const __m128i *)qs);
            __m256i w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), n4), _mm_and_si128(v, n4));
            if (t == KILN_WTYPE_Q5_0) {
                __m256i hb = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), sel);
                hb = _mm256_cmpeq_epi8(_mm256_and_si256(hb, bit), bit);
                w = _mm256_or_si256(w, _mm256_and_si256(hb, _mm256_set1_epi8(0x10)));
            }
            _mm256_storeu_si256((__m256i *)(q + 32 * ib), w);
            set_ab32(aexp, b16, ib, a, bo, a, bo);
        }
        break;
    }
    default:
        KILN_ASSERT(!"kquants: unsupported weight type");
    }
}

/* sum over 4-byte groups of u8 q * s8 a: 8 int32 lanes (lane i: elements 4i..4i+3). */
TGT static inline __m256i dot_u8s8(__m256i q, __m256i a) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), _mm256_set1_epi16(1));
}
TGT_VNNI static inline __m256i dot_u8s8_vnni(__m256i q, __m256i a) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, a);
}

/* The row loop, instantiated for both integer dots. Activation rows go four at a time (each
 * weight group loaded once for four dots); within an activation block the int32 sums are scaled
 * by the weights' per-16 scales and summed in float, and the block scale is applied once. Every
 * activation row sees the same sequence of operations, whether it is in a group of four or not. */
#define ROW_DOT(DOT, acc, r)                                                                                    \
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(DOT(qv, _mm256_loadu_si256((const __m256i *)(aq->q + (r) * n_in + 32 * g)))), \
                          av, acc)
#define DEFINE_INT_ROWS(NAME, ATTR, DOT)                                                                       \
    ATTR static void NAME(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in,            \
                          const act_q *aq, int64_t n_x, float *y, int64_t o0, int64_t o1) {                      \
        uint8_t q[MAX_INT_N_IN] __attribute__((aligned(32)));                                                   \
        float aexp[MAX_INT_N_IN / 4] __attribute__((aligned(32)));                                              \
        float b16[MAX_INT_N_IN / 16] __attribute__((aligned(32)));                                              \
        const int64_t n_k = n_in / 16, ab = aq->ab, n_b = n_in / ab, gpb = ab / 32;                             \
        for (int64_t o = o0; o < o1; o++) {                                                                     \
            unpack_row(t, (const uint8_t *)w + (size_t)o * row_bytes, n_in, q, aexp, b16);                      \
            for (int64_t r0 = 0; r0 < n_x; r0 += 4) {                                                           \
                int64_t nr = KILN_MIN(4, n_x - r0);                                                             \
                __m256 t0 = _mm256_setzero_ps(), t1 = t0, t2 = t0, t3 = t0;                                     \
                for (int64_t b = 0; b < n_b; b++) {                                                             \
                    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                 \
                    for (int64_t g = b * gpb; g < (b + 1) * gpb; g++) {                                         \
                        __m256i qv = _mm256_load_si256((const __m256i *)(q + 32 * g));                          \
                        __m256 av = _mm256_load_ps(aexp + 8 * g);                                               \
                        ROW_DOT(DOT, a0, r0);                                                                   \
                        if (nr > 1) ROW_DOT(DOT, a1, r0 + 1);                                                   \
                        if (nr > 2) ROW_DOT(DOT, a2, r0 + 2);                                                   \
                        if (nr > 3) ROW_DOT(DOT, a3, r0 + 3);                                                   \
                    }                                                                                           \
                    const float *d = aq->d + r0 * n_b + b;                                                      \
                    t0 = _mm256_fmadd_ps(a0, _mm256_broadcast_ss(d), t0);                                       \
                    if (nr > 1) t1 = _mm256_fmadd_ps(a1, _mm256_broadcast_ss(d + n_b), t1);                     \
                    if (nr > 2) t2 = _mm256_fmadd_ps(a2, _mm256_broadcast_ss(d + 2 * n_b), t2);                 \
                    if (nr > 3) t3 = _mm256_fmadd_ps(a3, _mm256_broadcast_ss(d + 3 * n_b), t3);                 \
                }                                                                                               \
                __m256 tot[4] = {t0, t1, t2, t3};                                                               \
                for (int64_t i = 0; i < nr; i++) {                                                              \
                    const float *s16 = aq->s16 + (r0 + i) * n_k;                                                \
                    __m256 acc2 = _mm256_setzero_ps();                                                          \
                    int64_t k = 0;                                                                              \
                    for (; k + 8 <= n_k; k += 8)                                                                \
                        acc2 = _mm256_fmadd_ps(_mm256_load_ps(b16 + k), _mm256_loadu_ps(s16 + k), acc2);         \
                    float off = 0;                                                                              \
                    for (; k < n_k; k++) off += b16[k] * s16[k];                                                \
                    y[(r0 + i) * n_out + o] = hsum_ps(tot[i]) + hsum_ps(acc2) + off;                            \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
    }
DEFINE_INT_ROWS(int_rows_avx2, TGT, dot_u8s8)
DEFINE_INT_ROWS(int_rows_vnni, TGT_VNNI, dot_u8s8_vnni)
#endif

typedef void (*int_rows_fn)(kiln_wtype, const void *, size_t, int64_t, int64_t, const act_q *, int64_t, float *,
                            int64_t, int64_t);

typedef void (*rows_fn)(kiln_wtype, size_t, size_t, const void *, size_t, int64_t, int64_t, const float *,
                        int64_t, float *, int64_t, int64_t);

static rows_fn rows;
static int_rows_fn int_rows;       /* NULL: no integer path on this CPU */
static bool kq512;                 /* avx512_kq.c's panels (Q4_K / Q5_K / Q6_K) run on this CPU */
static pthread_once_t rows_once = PTHREAD_ONCE_INIT;

static void pick_rows(void) {
    rows = matmul_rows_base;
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        rows = matmul_rows_avx2;
        if (kiln_cpu_has_f16c()) int_rows = int_rows_avx2;
        /* KILN_KQUANT_NO_VNNI=1 keeps the AVX2 dot (tests run both on a VNNI machine) */
        const char *no_vnni = getenv("KILN_KQUANT_NO_VNNI");
        if (int_rows && !(no_vnni && *no_vnni == '1') && __builtin_cpu_supports("avx512f") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
            int_rows = int_rows_vnni;
        /* avx512_kq.c is compiled with the avx512 table's flags: the same features as dispatch.c */
        kq512 = int_rows == int_rows_vnni && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bf16");
    }
#endif
}

/* True when avx512_kq.c multiplies rows of n_in elements of type t on this CPU. */
static bool use_kq512(kiln_wtype t, int64_t n_in) { return kq512 && kiln_kquant_avx512_pack_bytes(t, 1, n_in) > 0; }

typedef struct int_job {
    int_rows_fn f;
    kiln_wtype t;
    const void *w;
    size_t row_bytes;
    int64_t n_out, n_in, n_x;
    const act_q *aq;
    float *y;
} int_job;

/* Member ith's tiles of 16 output rows (cache lines of y are not shared between members). */
static void int_part(void *ctx, int ith, int nth) {
    const int_job *j = ctx;
    int64_t lo, hi;
    kiln_pool_range((j->n_out + 15) / 16, ith, nth, &lo, &hi);
    if (lo < hi) j->f(j->t, j->w, j->row_bytes, j->n_out, j->n_in, j->aq, j->n_x, j->y, lo * 16, KILN_MIN(j->n_out, hi * 16));
}

/* The integer path: activations quantized into a stack buffer when they fit, else the heap (a
 * prompt-sized batch, where one allocation is nothing next to the product). False when it does
 * not apply (no AVX2, n_in too large or not a multiple of 32, no memory): use the float path. */
static bool matmul_int(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in, const float *x,
                       int64_t n_x, float *y, int nt, bool par) {
#ifdef HAVE_AVX2_PATH
    int_rows_fn f = int_rows;
    if (!f || n_in > MAX_INT_N_IN || n_in % 32 != 0) return false;
    /* K-quants: one activation scale per 256 (their super-block), like ggml's Q8_K */
    int64_t ab = n_in % KILN_QK_K == 0 && (t == KILN_WTYPE_Q4_K || t == KILN_WTYPE_Q5_K || t == KILN_WTYPE_Q6_K) ? KILN_QK_K : 32;
    size_t per_row = (size_t)n_in + (size_t)(n_in / ab) * sizeof(float) + (size_t)n_in / 16 * sizeof(float), bytes;
    if (!kiln_mul_size(per_row, (size_t)n_x, &bytes)) return false;
    uint8_t stack[ACT_STACK_BYTES] __attribute__((aligned(32)));
    uint8_t *heap = NULL, *buf = stack;
    if (bytes > sizeof(stack)) {
        if (!(heap = kiln_malloc(bytes))) return false;
        buf = heap;
    }
    act_q aq = {.q = (int8_t *)buf, .ab = ab};
    aq.d = (float *)(buf + (size_t)n_x * (size_t)n_in);
    aq.s16 = aq.d + (size_t)n_x * (size_t)(n_in / ab);
    for (int64_t r = 0; r < n_x; r++)
        quantize_act(x + r * n_in, n_in, ab, aq.q + r * n_in, aq.d + r * (n_in / ab), aq.s16 + r * (n_in / 16));
    int_job j = {.f = f, .t = t, .w = w, .row_bytes = row_bytes, .n_out = n_out, .n_in = n_in, .aq = &aq,
                 .n_x = n_x, .y = y};
    kiln_pool_run(par ? nt : 1, int_part, &j);
    kiln_free(heap);
    return true;
#else
    (void)t, (void)w, (void)row_bytes, (void)n_out, (void)n_in, (void)x, (void)n_x, (void)y, (void)nt, (void)par;
    return false;
#endif
}

typedef struct float_job {
    rows_fn f;
    kiln_wtype t;
    size_t be, bb;
    const void *w;
    size_t row_bytes;
    int64_t n_out, n_in, n_x;
    const float *x;
    float *y;
} float_job;

static void float_part(void *ctx, int ith, int nth) {
    const float_job *j = ctx;
    int64_t lo, hi;
    kiln_pool_range((j->n_out + 15) / 16, ith, nth, &lo, &hi);
    if (lo < hi)
        j->f(j->t, j->be, j->bb, j->w, j->row_bytes, j->n_out, j->n_in, j->x, j->n_x, j->y, lo * 16,
             KILN_MIN(j->n_out, hi * 16));
}

void kiln_kquant_matmul(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in,
                        const float *x, int64_t n_x, float *y, int n_threads) {
    size_t be = 0, bb = 0;
    KILN_ASSERT(kiln_kquant_handles(t) && kiln_wtype_block(t, &be, &bb));
    KILN_ASSERT(n_in % (int64_t)be == 0 && CHUNK % be == 0);
    pthread_once(&rows_once, pick_rows);
    if (use_kq512(t, n_in)) {
        if (n_out > 0) {
            kiln_pmat m = {NULL, n_out, y};
            kiln_kquant_avx512_matmul(t, &m, 1, w, row_bytes, n_in, x, n_x, n_threads);
        }
        return;
    }
    rows_fn f = rows;
    int nt = n_threads;
    bool par = (double)n_out * (double)n_in * (double)n_x >= 65536.0;
    if (matmul_int(t, w, row_bytes, n_out, n_in, x, n_x, y, nt, par)) return;
    float_job j = {.f = f, .t = t, .be = be, .bb = bb, .w = w, .row_bytes = row_bytes, .n_out = n_out, .n_in = n_in,
                   .x = x, .n_x = n_x, .y = y};
    kiln_pool_run(par ? nt : 1, float_part, &j);
}

/* ---- packed layout: avx512_kq.c's panels on AVX-512 + VNNI CPUs (none elsewhere: pack_bytes 0,
 * the model multiplies the raw rows) ---- */

size_t kiln_kquant_pack_bytes(kiln_wtype t, int64_t n_out, int64_t n_in) {
    pthread_once(&rows_once, pick_rows);
    return use_kq512(t, n_in) ? kiln_kquant_avx512_pack_bytes(t, n_out, n_in) : 0;
}

void kiln_kquant_pack(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in, void *dst,
                      int n_threads) {
    KILN_ASSERT(kiln_kquant_pack_bytes(t, n_out, n_in) > 0);
    kiln_kquant_avx512_pack(t, w, row_bytes, n_out, n_in, dst, n_threads);
}

void kiln_kquant_matmul_packed(kiln_wtype t, const kiln_pmat *mats, int n_mats, int64_t n_in, const float *x,
                               int64_t n_x, int n_threads) {
    for (int i = 0; i < n_mats; i++) KILN_ASSERT(kiln_kquant_pack_bytes(t, mats[i].n_out, n_in) > 0);
    kiln_kquant_avx512_matmul(t, mats, n_mats, NULL, 0, n_in, x, n_x, n_threads);
}
