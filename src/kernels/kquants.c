/* kquants.c: the ggml K-quant weight types Q4_K, Q5_K, Q6_K (super-blocks of 256) and the small
 * legacy types Q4_1, Q5_0 (blocks of 32): scalar dequantization (the spec, layouts in kernels.h,
 * checked against ggml's dequantize_row_* semantics) and a matmul that dequantizes one block at a
 * time into a stack buffer and dots it with every activation row; an AVX2+FMA build of that loop
 * runs when the CPU has it. Reentrant; the matmul runs its own OpenMP team over output rows.
 * No heap allocation. */
#include "kernels/kernels.h"

#include <omp.h>
#include <pthread.h>

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

typedef void (*rows_fn)(kiln_wtype, size_t, size_t, const void *, size_t, int64_t, int64_t, const float *,
                        int64_t, float *, int64_t, int64_t);

static rows_fn rows;
static pthread_once_t rows_once = PTHREAD_ONCE_INIT;

static void pick_rows(void) {
    rows = matmul_rows_base;
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) rows = matmul_rows_avx2;
#endif
}

void kiln_kquant_matmul(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in,
                        const float *x, int64_t n_x, float *y, int n_threads) {
    size_t be = 0, bb = 0;
    KILN_ASSERT(kiln_kquant_handles(t) && kiln_wtype_block(t, &be, &bb));
    KILN_ASSERT(n_in % (int64_t)be == 0 && CHUNK % be == 0);
    pthread_once(&rows_once, pick_rows);
    rows_fn f = rows;
    int nt = n_threads > 0 ? n_threads : omp_get_max_threads();
    bool par = (double)n_out * (double)n_in * (double)n_x >= 65536.0;
    if (!par) nt = 1;
    /* Contiguous row ranges of 16 (cache lines of y are not shared between threads). */
    int64_t n_tiles = (n_out + 15) / 16;
#pragma omp parallel for schedule(static) num_threads(nt) if (par)
    for (int64_t i = 0; i < n_tiles; i++)
        f(t, be, bb, w, row_bytes, n_out, n_in, x, n_x, y, i * 16, KILN_MIN(n_out, i * 16 + 16));
}
