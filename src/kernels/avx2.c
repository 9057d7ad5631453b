/* avx2.c: kernels for CPUs with AVX2, FMA and F16C (compiled with those flags; dispatch.c calls
 * into this file only after its CPU check). Q8_0 / Q4_0: activation rows quantized once per matmul
 * to int8 blocks of 32 (scale amax/127); per block an exact int32 dot (vpmaddubsw + vpmaddwd on
 * |w| and sign(w) * x, so no int16 pair sum saturates), then float(int) * (d_w * d_x) added
 * into 8 partial sums per output; each (weight row, activation row) pair is computed by the same
 * code whatever the batch, so results do not depend on the other rows. F32/F16/BF16: f32 FMA.
 * Reentrant; matmuls split output rows over the compute team (pool.h). */
#include "kernels/kernels.h"
#include "kernels/pool.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>


static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- activation quantization: x (n,) -> q (n,) int8, d (n/32,) scales ---- */
static void quantize_row(const float *x, int64_t n, int8_t *q, float *d) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / 32; b++) {
        __m256 v[4];
        __m256 mx = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(x + 32 * b + 8 * i);
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[i]));
        }
        float amax = hmax8(mx);
        float id = amax > 0 ? 127.0f / amax : 0.0f;
        d[b] = amax / 127.0f;
        __m256i qi[4];
        for (int i = 0; i < 4; i++) qi[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], _mm256_set1_ps(id)));
        /* int32 -> int16 -> int8 with saturating packs (values are within [-127, 127]); the
         * packs interleave 128-bit lanes, the final permute restores element order */
        __m256i p01 = _mm256_packs_epi32(qi[0], qi[1]), p23 = _mm256_packs_epi32(qi[2], qi[3]);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + 32 * b), p);
    }
}

typedef struct qact {
    int8_t *q;                 /* (n_x, n_in) */
    float *d;                  /* (n_x, nb) */
    int64_t nb;                /* blocks per row */
} qact;

static qact qact_alloc(int64_t n_x, int64_t n_in) {
    qact a;
    a.nb = n_in / 32;
    size_t nq = (size_t)n_x * (size_t)n_in, ns = (size_t)n_x * (size_t)a.nb;
    size_t nq_al = (nq + 63) & ~(size_t)63;
    KILN_ASSERT(nq / (size_t)n_x == (size_t)n_in);
    char *p = kiln_pool_scratch(KILN_SCRATCH_ACT, nq_al + ns * 4);
    a.q = (int8_t *)p;
    a.d = (float *)(p + nq_al);
    return a;
}

/* One weight row against activation rows [c0, c0 + nc), nc <= 4: y[c][o]. */
static inline __attribute__((always_inline)) void q_row(kiln_wtype t, const uint8_t *row, const qact *a, int64_t c0,
                                                        int nc, float *y, int64_t n_out, int64_t o) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < a->nb; b++) {
        __m256i wv;
        float dw;
        if (t == KILN_WTYPE_Q4_0) {
            const kiln_block_q4_0 *bl = (const kiln_block_q4_0 *)row + b;
            __m128i x = _mm_loadu_si128((const __m128i *)bl->qs), m = _mm_set1_epi8(0x0f);
            wv = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x, 4), m), _mm_and_si128(x, m));
            wv = _mm256_sub_epi8(wv, _mm256_set1_epi8(8)); /* signed values -8..7 */
            dw = _cvtsh_ss(bl->d);
        } else {
            const kiln_block_q8_0 *bl = (const kiln_block_q8_0 *)row + b;
            wv = _mm256_loadu_si256((const __m256i *)bl->qs);
            dw = _cvtsh_ss(bl->d);
        }
        /* |w| as u8 times a * sign(w): |pair sum| <= 2 * 128 * 127 fits int16 */
        const __m256i wabs = _mm256_sign_epi8(wv, wv);
        #pragma GCC unroll 8
        for (int c = 0; c < nc; c++) {
            int64_t r = c0 + c;
            __m256i av = _mm256_loadu_si256((const __m256i *)(a->q + (r * a->nb + b) * 32));
            __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, _mm256_sign_epi8(av, wv)), ones);
            float sc = dw * a->d[r * a->nb + b];
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(sc), acc[c]);
        }
    }
    #pragma GCC unroll 8
    for (int c = 0; c < nc; c++) y[(c0 + c) * n_out + o] = hsum8(acc[c]);
}

typedef struct qjob {
    kiln_wtype t;
    const void *w;
    size_t row_bytes;
    int64_t n_out, n_in, n_x;
    const float *x;
    float *y;
    qact a;
    _Atomic int64_t next;      /* work-sharing counter (output rows) */
} qjob;

static void q_quant_part(void *ctx, int ith, int nth) {
    qjob *j = ctx;
    int64_t lo, hi;
    kiln_pool_range(j->n_x, ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++)
        quantize_row(j->x + r * j->n_in, j->n_in, j->a.q + r * j->n_in, j->a.d + r * j->a.nb);
}

static void q_part(void *ctx, int ith, int nth) {
    qjob *j = ctx;
    int64_t lo, hi;
    const int64_t chunk = kiln_pool_chunk(j->n_out, nth);
    while (kiln_pool_take(&j->next, j->n_out, chunk, &lo, &hi)) {
        for (int64_t o = lo; o < hi; o++) {
            const uint8_t *row = (const uint8_t *)j->w + (size_t)o * j->row_bytes;
            for (int64_t c0 = 0; c0 < j->n_x; c0 += 4) {
                int nc = (int)KILN_MIN(4, j->n_x - c0);
                if (j->t == KILN_WTYPE_Q4_0) q_row(KILN_WTYPE_Q4_0, row, &j->a, c0, nc, j->y, j->n_out, o);
                else q_row(KILN_WTYPE_Q8_0, row, &j->a, c0, nc, j->y, j->n_out, o);
            }
        }
    }
}

/* ---- F32 / F16 / BF16: f32 FMA over 4 weight rows x up to 4 activation rows ---- */

/* 8 weights from k (n_in - k < 8: the rest read as zero). */
static inline __m256 load_w(kiln_wtype t, const void *row, int64_t k, int64_t n_in) {
    if (n_in - k < 8) {
        float tmp[8] = {0};
        for (int64_t i = k; i < n_in; i++) {
            if (t == KILN_WTYPE_F32) tmp[i - k] = ((const float *)row)[i];
            else if (t == KILN_WTYPE_F16) tmp[i - k] = _cvtsh_ss(((const uint16_t *)row)[i]);
            else tmp[i - k] = kiln_bf16_to_f32(((const uint16_t *)row)[i]);
        }
        return _mm256_loadu_ps(tmp);
    }
    if (t == KILN_WTYPE_F32) return _mm256_loadu_ps((const float *)row + k);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + k));
    if (t == KILN_WTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline __m256 load_x(const float *x, int64_t k, int64_t n_in) {
    if (n_in - k >= 8) return _mm256_loadu_ps(x + k);
    float tmp[8] = {0};
    memcpy(tmp, x + k, sizeof(float) * (size_t)(n_in - k));
    return _mm256_loadu_ps(tmp);
}

static inline __attribute__((always_inline)) void f_kernel(kiln_wtype t, int C, const uint8_t *const rp[4],
                                                           const float *x, int64_t n_in, int64_t c0, float *y,
                                                           int64_t n_out, int64_t o0) {
    __m256 acc[4][4];
    #pragma GCC unroll 8
    for (int i = 0; i < 4; i++)
        #pragma GCC unroll 8
        for (int c = 0; c < C; c++) acc[i][c] = _mm256_setzero_ps();
    for (int64_t k = 0; k < n_in; k += 8) {
        __m256 wv[4];
        #pragma GCC unroll 8
        for (int i = 0; i < 4; i++) wv[i] = load_w(t, rp[i], k, n_in);
        #pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            __m256 xv = load_x(x + (c0 + c) * n_in, k, n_in);
            #pragma GCC unroll 8
            for (int i = 0; i < 4; i++) acc[i][c] = _mm256_fmadd_ps(wv[i], xv, acc[i][c]);
        }
    }
    /* constant indices only: a data-dependent index would keep acc in memory inside the loop */
    float r[4][4];
    #pragma GCC unroll 8
    for (int c = 0; c < C; c++) {
        #pragma GCC unroll 8
        for (int i = 0; i < 4; i++) r[i][c] = hsum8(acc[i][c]);
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
    for (; c0 + 4 <= n_x; c0 += 4) f_kernel(t, 4, rp, x, n_in, c0, y, n_out, o0);
    switch (n_x - c0) {
    case 3: f_kernel(t, 3, rp, x, n_in, c0, y, n_out, o0); break;
    case 2: f_kernel(t, 2, rp, x, n_in, c0, y, n_out, o0); break;
    case 1: f_kernel(t, 1, rp, x, n_in, c0, y, n_out, o0); break;
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

static void avx2_matmul(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in, const float *x,
                        int64_t n_x, float *y, int n_threads) {
    if (kiln_kquant_handles(t)) {
        kiln_kquant_matmul(t, w, row_bytes, n_out, n_in, x, n_x, y, n_threads);
        return;
    }
    if (n_out <= 0 || n_x <= 0) return;
    /* Small products run on the calling thread: waking the team costs more than they do. */
    int nt = (double)n_out * (double)n_in * (double)n_x >= 65536.0 ? n_threads : 1;
    switch (t) {
    case KILN_WTYPE_Q8_0:
    case KILN_WTYPE_Q4_0: {
        KILN_ASSERT(n_in % 32 == 0);
        qjob j = {t, w, row_bytes, n_out, n_in, n_x, x, y, qact_alloc(n_x, n_in), 0};
        if (n_x >= 16) kiln_pool_run(nt, q_quant_part, &j);
        else q_quant_part(&j, 0, 1);
        kiln_pool_run(nt, q_part, &j);
        break;
    }
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

#include "kernels/isa.h" /* kiln_attn_chunk_rows (ref.c) */

static float avx2_dot(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum8(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void avx2_axpy(float a, const float *x, float *y, int64_t n) {
    __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

static void avx2_dot_rows(const float *q, const float *k, size_t stride, int64_t n_rows, int64_t n, float *out) {
    for (int64_t r = 0; r < n_rows; r++) out[r] = avx2_dot(q, k + (size_t)r * stride, n);
}

static void avx2_axpy_rows(const float *w, const float *v, size_t stride, int64_t n_rows, int64_t n, float *y) {
    for (int64_t r = 0; r < n_rows; r++) avx2_axpy(w[r], v + (size_t)r * stride, y, n);
}

/* The remaining ops are a small share of the time: the reference versions. */
static void avx2_dequant_row(kiln_wtype t, const void *src, float *dst, int64_t n) {
    kiln_kernels_ref.dequant_row(t, src, dst, n);
}
static void avx2_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *out) {
    kiln_kernels_ref.rmsnorm(x, w, n, eps, out);
}
static void avx2_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int32_t pos, float theta_base,
                      const float *freq_factors, int rope_type) {
    kiln_kernels_ref.rope(x, n_heads, head_dim, n_rot, pos, theta_base, freq_factors, rope_type);
}
/* attn_chunk the reference way with this table's row ops. */
static void avx2_attn_chunk(kiln_attn_q *qs, int n_q, const kiln_attn_kv *ch, int32_t hd, float scale) {
    kiln_attn_chunk_rows(avx2_dot_rows, avx2_axpy_rows, qs, n_q, ch, hd, scale);
}
static void avx2_silu_mul(float *g, const float *u, int64_t n) { kiln_kernels_ref.silu_mul(g, u, n); }
static void avx2_softmax(float *x, int64_t n) { kiln_kernels_ref.softmax(x, n); }

const kiln_kernels kiln_kernels_avx2 = {
    .name = "avx2",
    .dequant_row = avx2_dequant_row,
    .matmul = avx2_matmul,
    .rmsnorm = avx2_rmsnorm,
    .rope = avx2_rope,
    .silu_mul = avx2_silu_mul,
    .softmax = avx2_softmax,
    .dot = avx2_dot,
    .axpy = avx2_axpy,
    .dot_rows = avx2_dot_rows,
    .axpy_rows = avx2_axpy_rows,
    .attn_chunk = avx2_attn_chunk,
};
