/* ref.c: the scalar reference kernels, the spec every faster variant is tested against. Plain
 * loops with shape comments; the only concessions to speed are dequantizing weights a chunk at a
 * time into a stack buffer, several partial sums in dot products, and OpenMP over output rows.
 * Results never depend on the number of threads or on the other rows of a batch.
 * Layouts: ggml block formats (kernels.h). No heap allocation. */
#include "kernels/kernels.h"
#include "kernels/isa.h"

#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <string.h>

/* ---- f16 -> f32 through a 64K table (built once, then read-only) ---- */
static float f16_table[1 << 16];
static pthread_once_t f16_once = PTHREAD_ONCE_INIT;

static void f16_table_build(void) {
    for (uint32_t i = 0; i < (1u << 16); i++) f16_table[i] = kiln_f16_to_f32((uint16_t)i);
}

static inline float f16(uint16_t h) { return f16_table[h]; }

bool kiln_wtype_block(kiln_wtype t, size_t *block_elems, size_t *block_bytes) {
    size_t e, b;
    switch (t) {
    case KILN_WTYPE_F32: e = 1, b = 4; break;
    case KILN_WTYPE_F16: e = 1, b = 2; break;
    case KILN_WTYPE_BF16: e = 1, b = 2; break;
    case KILN_WTYPE_Q8_0: e = KILN_QK8_0, b = sizeof(kiln_block_q8_0); break;
    case KILN_WTYPE_Q4_0: e = KILN_QK4_0, b = sizeof(kiln_block_q4_0); break;
    case KILN_WTYPE_Q4_1: e = KILN_QK4_1, b = sizeof(kiln_block_q4_1); break;
    case KILN_WTYPE_Q5_0: e = KILN_QK5_0, b = sizeof(kiln_block_q5_0); break;
    case KILN_WTYPE_Q4_K: e = KILN_QK_K, b = sizeof(kiln_block_q4_k); break;
    case KILN_WTYPE_Q5_K: e = KILN_QK_K, b = sizeof(kiln_block_q5_k); break;
    case KILN_WTYPE_Q6_K: e = KILN_QK_K, b = sizeof(kiln_block_q6_k); break;
    default: return false;
    }
    if (block_elems) *block_elems = e;
    if (block_bytes) *block_bytes = b;
    return true;
}

size_t kiln_wtype_row_bytes(kiln_wtype t, int64_t n) {
    size_t e = 1, b = 0;
    KILN_ASSERT(kiln_wtype_block(t, &e, &b));
    KILN_ASSERT(n >= 0 && (size_t)n % e == 0);
    return (size_t)n / e * b;
}

/* src: n elements of type t starting at element 0 of a row -> dst (n,). */
static void ref_dequant_row(kiln_wtype t, const void *src, float *dst, int64_t n) {
    pthread_once(&f16_once, f16_table_build);
    switch (t) {
    case KILN_WTYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case KILN_WTYPE_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = f16(s[i]);
        break;
    }
    case KILN_WTYPE_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = kiln_bf16_to_f32(s[i]);
        break;
    }
    case KILN_WTYPE_Q8_0: {
        const kiln_block_q8_0 *b = src;
        KILN_ASSERT(n % KILN_QK8_0 == 0);
        for (int64_t ib = 0; ib < n / KILN_QK8_0; ib++) {
            float d = f16(b[ib].d);
            for (int j = 0; j < KILN_QK8_0; j++) dst[ib * KILN_QK8_0 + j] = (float)b[ib].qs[j] * d;
        }
        break;
    }
    case KILN_WTYPE_Q4_0: {
        const kiln_block_q4_0 *b = src;
        KILN_ASSERT(n % KILN_QK4_0 == 0);
        for (int64_t ib = 0; ib < n / KILN_QK4_0; ib++) {
            float d = f16(b[ib].d);
            float *o = dst + ib * KILN_QK4_0;
            for (int j = 0; j < KILN_QK4_0 / 2; j++) {
                o[j] = (float)((b[ib].qs[j] & 0x0f) - 8) * d;
                o[j + KILN_QK4_0 / 2] = (float)((b[ib].qs[j] >> 4) - 8) * d;
            }
        }
        break;
    }
    default:
        /* Q4_1, Q5_0 and the K-quants: kquants.c (which asserts on anything else) */
        kiln_kquant_dequant_row(t, src, dst, n);
    }
}

/* sum a[i] * b[i]: eight interleaved partial sums, combined in a fixed order. */
static float ref_dot(const float *a, const float *b, int64_t n) {
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    float tail = 0;
    for (; i < n; i++) tail += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])) + tail;
}

static void ref_axpy(float a, const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* q (n,) . rows k + r * stride (n,) -> out (n_rows,). */
static void ref_dot_rows(const float *q, const float *k, size_t stride, int64_t n_rows, int64_t n, float *out) {
    for (int64_t r = 0; r < n_rows; r++) out[r] = ref_dot(q, k + (size_t)r * stride, n);
}

/* y (n,) += sum over rows r in order of w[r] * v[r * stride ...]. */
static void ref_axpy_rows(const float *w, const float *v, size_t stride, int64_t n_rows, int64_t n, float *y) {
    for (int64_t r = 0; r < n_rows; r++) ref_axpy(w[r], v + (size_t)r * stride, y, n);
}

/* Each query in turn: its scores, the running max and the rescale, then its exp weights over
 * the V rows in order (the online softmax written out). */
void kiln_attn_chunk_rows(void (*dot_rows)(const float *, const float *, size_t, int64_t, int64_t, float *),
                          void (*axpy_rows)(const float *, const float *, size_t, int64_t, int64_t, float *),
                          kiln_attn_q *qs, int n_q, const kiln_attn_kv *ch, int32_t hd, float scale) {
    KILN_ASSERT(ch->n >= 1 && ch->n <= KILN_ATT_CHUNK && ch->n1 >= 1 && ch->n1 <= ch->n && n_q >= 0 &&
                n_q <= KILN_ATT_MAX_Q && hd >= 1);
    for (int j = 0; j < n_q; j++) {
        kiln_attn_q *a = &qs[j];
        KILN_ASSERT(a->n_see >= 1 && a->n_see <= ch->n);
        float s[KILN_ATT_CHUNK], bm = -INFINITY;
        const int32_t n_a = a->n_see < ch->n1 ? a->n_see : ch->n1; /* rows of the first segment */
        dot_rows(a->q, ch->k, ch->stride, n_a, hd, s);
        if (a->n_see > n_a) dot_rows(a->q, ch->k2, ch->stride, a->n_see - n_a, hd, s + n_a);
        for (int32_t i = 0; i < a->n_see; i++) {
            s[i] *= scale;
            bm = s[i] > bm ? s[i] : bm;
        }
        if (bm > a->m) {
            float c = expf(a->m - bm); /* exp(-inf) = 0 on the first chunk */
            a->l *= c;
            if (c == 0) memset(a->acc, 0, (size_t)hd * sizeof(float)); /* acc may be garbage at first */
            else
                for (int32_t i = 0; i < hd; i++) a->acc[i] *= c;
            a->m = bm;
        }
        for (int32_t i = 0; i < a->n_see; i++) {
            s[i] = expf(s[i] - a->m);
            a->l += s[i];
        }
        axpy_rows(s, ch->v, ch->stride, n_a, hd, a->acc); /* the rows in order, as one call would */
        if (a->n_see > n_a) axpy_rows(s + n_a, ch->v2, ch->stride, a->n_see - n_a, hd, a->acc);
    }
}

static void ref_attn_chunk(kiln_attn_q *qs, int n_q, const kiln_attn_kv *ch, int32_t hd, float scale) {
    kiln_attn_chunk_rows(ref_dot_rows, ref_axpy_rows, qs, n_q, ch, hd, scale);
}

/* Weight rows are dequantized CHUNK elements at a time (a multiple of every block size). */
#define CHUNK 256

/* w (n_out, n_in) @ x (n_x, n_in) -> y (n_x, n_out). */
static void ref_matmul(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in,
                       const float *x, int64_t n_x, float *y, int n_threads) {
    size_t be = 1, bb = 0;
    KILN_ASSERT(kiln_wtype_block(t, &be, &bb));
    KILN_ASSERT(n_in % (int64_t)be == 0);
    pthread_once(&f16_once, f16_table_build);
    int nt = n_threads > 0 ? n_threads : omp_get_max_threads();
    /* Small products run on the calling thread: waking the team costs more than they do. */
    bool par = (double)n_out * (double)n_in * (double)n_x >= 65536.0;
#pragma omp parallel for schedule(static) num_threads(nt) if (par)
    for (int64_t o = 0; o < n_out; o++) {
        const uint8_t *row = (const uint8_t *)w + (size_t)o * row_bytes;
        if (t == KILN_WTYPE_F32) {
            for (int64_t r = 0; r < n_x; r++)
                y[r * n_out + o] = ref_dot((const float *)row, x + r * n_in, n_in);
            continue;
        }
        float buf[CHUNK];
        for (int64_t r = 0; r < n_x; r++) y[r * n_out + o] = 0;
        for (int64_t c = 0; c < n_in; c += CHUNK) {
            int64_t len = KILN_MIN(CHUNK, n_in - c);
            ref_dequant_row(t, row + (size_t)c / be * bb, buf, len);
            for (int64_t r = 0; r < n_x; r++)
                y[r * n_out + o] += ref_dot(buf, x + r * n_in + c, len);
        }
    }
}

static void ref_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *out) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale * (w ? w[i] : 1.0f);
}

void kiln_rope_angles(int64_t n_rot, int32_t pos, float theta_base, const float *freq_factors, float *cs) {
    KILN_ASSERT(n_rot % 2 == 0);
    for (int64_t i = 0; i < n_rot / 2; i++) {
        double freq = pow((double)theta_base, -2.0 * (double)i / (double)n_rot);
        if (freq_factors) freq /= freq_factors[i];
        double ang = (double)pos * freq;
        cs[2 * i] = (float)cos(ang);
        cs[2 * i + 1] = (float)sin(ang);
    }
}

void kiln_rope_apply(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, const float *cs, int rope_type) {
    KILN_ASSERT(n_rot % 2 == 0 && n_rot <= head_dim);
    int64_t half = n_rot / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *v = x + h * head_dim;
        if (rope_type == KILN_KROPE_NEOX) {
            for (int64_t i = 0; i < half; i++) {
                float x0 = v[i], x1 = v[i + half];
                v[i] = x0 * cs[2 * i] - x1 * cs[2 * i + 1];
                v[i + half] = x0 * cs[2 * i + 1] + x1 * cs[2 * i];
            }
        } else {
            for (int64_t i = 0; i < half; i++) {
                float x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = x0 * cs[2 * i] - x1 * cs[2 * i + 1];
                v[2 * i + 1] = x0 * cs[2 * i + 1] + x1 * cs[2 * i];
            }
        }
    }
}

/* x (n_heads, head_dim), rotated in place at position pos: the angles, then the rotation
 * (n_rot <= head_dim <= KILN_ROPE_MAX_ROT). */
static void ref_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int32_t pos,
                     float theta_base, const float *freq_factors, int rope_type) {
    KILN_ASSERT(n_rot % 2 == 0 && n_rot <= head_dim && n_rot <= KILN_ROPE_MAX_ROT);
    float cs[KILN_ROPE_MAX_ROT];
    kiln_rope_angles(n_rot, pos, theta_base, freq_factors, cs);
    kiln_rope_apply(x, n_heads, head_dim, n_rot, cs, rope_type);
}

static void ref_silu_mul(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void ref_softmax(float *x, int64_t n) {
    if (n <= 0) return;
    float mx = x[0];
    for (int64_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

void kiln_embed_row(const kiln_kernels *k, kiln_wtype t, const void *table, size_t row_bytes,
                    int64_t id, int64_t n_cols, float *dst) {
    k->dequant_row(t, (const uint8_t *)table + (size_t)id * row_bytes, dst, n_cols);
}

const kiln_kernels kiln_kernels_ref = {
    .name = "ref",
    .dequant_row = ref_dequant_row,
    .matmul = ref_matmul,
    .rmsnorm = ref_rmsnorm,
    .rope = ref_rope,
    .silu_mul = ref_silu_mul,
    .softmax = ref_softmax,
    .dot = ref_dot,
    .axpy = ref_axpy,
    .dot_rows = ref_dot_rows,
    .axpy_rows = ref_axpy_rows,
    .attn_chunk = ref_attn_chunk,
};
