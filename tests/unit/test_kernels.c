/* test_kernels.c: the reference kernels against direct double-precision formulas written here
 * from the definitions (ggml block layouts, RMSNorm, RoPE as complex rotation, softmax, SiLU),
 * plus the dispatch table. Every other kernel table (avx2, avx512, when the CPU has them) is
 * checked against ref on random shapes with per-op tolerances (simd_vs_ref). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "test.h"

static const kiln_kernels *K;

static float frand(kiln_rng *r) { return (float)(kiln_rng_uniform(r) * 2 - 1); }

/* Q8_0: value = qs[i] * d, d stored as f16. */
static void dequant_q8_0(void) {
    kiln_block_q8_0 b[2];
    for (int i = 0; i < 2; i++) {
        b[i].d = kiln_f32_to_f16(i ? 0.25f : -0.5f);
        for (int j = 0; j < 32; j++) b[i].qs[j] = (int8_t)(j * 7 - 100 + i);
    }
    float out[64];
    K->dequant_row(KILN_WTYPE_Q8_0, b, out, 64);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 32; j++) CHECK_NEAR(out[i * 32 + j], (j * 7 - 100 + i) * (i ? 0.25 : -0.5), 0);
}

/* Q4_0: byte j low nibble = element j, high nibble = element j + 16; value (q - 8) * d. */
static void dequant_q4_0(void) {
    kiln_block_q4_0 b;
    b.d = kiln_f32_to_f16(1.5f);
    int q[32];
    for (int j = 0; j < 32; j++) q[j] = (j * 5 + 3) % 16;
    for (int j = 0; j < 16; j++) b.qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
    float out[32];
    K->dequant_row(KILN_WTYPE_Q4_0, &b, out, 32);
    for (int j = 0; j < 32; j++) CHECK_NEAR(out[j], (q[j] - 8) * 1.5, 0);
}

static void dequant_half(void) {
    uint16_t h[4] = {0x3c00, 0xc000, 0x3555, 0x0001}; /* 1, -2, ~0.333, smallest subnormal */
    float out[4];
    K->dequant_row(KILN_WTYPE_F16, h, out, 4);
    CHECK_NEAR(out[0], 1.0, 0);
    CHECK_NEAR(out[1], -2.0, 0);
    CHECK_NEAR(out[2], 0.333251953125, 0);
    CHECK_NEAR(out[3], ldexp(1.0, -24), 0);
    uint16_t bf[3] = {0x3f80, 0xc040, 0x3e20}; /* 1, -3, 0.15625 */
    K->dequant_row(KILN_WTYPE_BF16, bf, out, 3);
    CHECK_NEAR(out[0], 1.0, 0);
    CHECK_NEAR(out[1], -3.0, 0);
    CHECK_NEAR(out[2], 0.15625, 0);
}

/* Random weights of type t (n_out, n_in): returns the raw bytes and fills wf with the values
 * they decode to (computed here from the block definition). */
static void *make_weights(kiln_wtype t, int n_out, int n_in, kiln_rng *r, double *wf) {
    size_t rb = kiln_wtype_row_bytes(t, n_in);
    uint8_t *w = malloc(rb * (size_t)n_out);
    for (int o = 0; o < n_out; o++) {
        uint8_t *row = w + rb * (size_t)o;
        for (int i = 0; i < n_in; i++) {
            double *dst = wf + (size_t)o * n_in + i;
            float v = frand(r);
            switch (t) {
            case KILN_WTYPE_F32: ((float *)row)[i] = v, *dst = v; break;
            case KILN_WTYPE_F16: ((uint16_t *)row)[i] = kiln_f32_to_f16(v), *dst = kiln_f16_to_f32(kiln_f32_to_f16(v)); break;
            case KILN_WTYPE_BF16: ((uint16_t *)row)[i] = kiln_f32_to_bf16(v), *dst = kiln_bf16_to_f32(kiln_f32_to_bf16(v)); break;
            case KILN_WTYPE_Q8_0: {
                kiln_block_q8_0 *b = (kiln_block_q8_0 *)row + i / 32;
                if (i % 32 == 0) b->d = kiln_f32_to_f16(0.01f + 0.001f * (float)(i / 32));
                b->qs[i % 32] = (int8_t)(kiln_rng_u64(r) % 255 - 127);
                *dst = b->qs[i % 32] * (double)kiln_f16_to_f32(b->d);
                break;
            }
            case KILN_WTYPE_Q4_0: {
                kiln_block_q4_0 *b = (kiln_block_q4_0 *)row + i / 32;
                int j = i % 32, q = (int)(kiln_rng_u64(r) % 16);
                if (j == 0) {
                    b->d = kiln_f32_to_f16(0.05f);
                    memset(b->qs, 0, 16);
                }
                b->qs[j % 16] |= (uint8_t)(j < 16 ? q : q << 4);
                *dst = (q - 8) * (double)kiln_f16_to_f32(b->d);
                break;
            }
            default: abort(); /* the K-quants are tested in test_kquants.c */
            }
        }
    }
    return w;
}

static void matmul_all_types(void) {
    kiln_rng r;
    kiln_rng_seed(&r, 42);
    kiln_wtype types[] = {KILN_WTYPE_F32, KILN_WTYPE_F16, KILN_WTYPE_BF16, KILN_WTYPE_Q8_0, KILN_WTYPE_Q4_0};
    int shapes[][3] = {{1, 32, 1}, {7, 64, 3}, {33, 320, 5}, {5, 544, 2}}; /* n_out, n_in, n_x */
    for (size_t ti = 0; ti < KILN_ARRAY_LEN(types); ti++) {
        for (size_t si = 0; si < KILN_ARRAY_LEN(shapes); si++) {
            int n_out = shapes[si][0], n_in = shapes[si][1], n_x = shapes[si][2];
            double *wf = malloc(sizeof(double) * (size_t)n_out * n_in);
            void *w = make_weights(types[ti], n_out, n_in, &r, wf);
            float *x = malloc(sizeof(float) * (size_t)n_x * n_in), *y = malloc(sizeof(float) * (size_t)n_x * n_out);
            for (int i = 0; i < n_x * n_in; i++) x[i] = frand(&r);
            K->matmul(types[ti], w, kiln_wtype_row_bytes(types[ti], n_in), n_out, n_in, x, n_x, y, 2);
            for (int xr = 0; xr < n_x; xr++)
                for (int o = 0; o < n_out; o++) {
                    double ref = 0, mag = 0;
                    for (int i = 0; i < n_in; i++) {
                        ref += wf[(size_t)o * n_in + i] * x[xr * n_in + i];
                        mag += fabs(wf[(size_t)o * n_in + i] * x[xr * n_in + i]);
                    }
                    CHECK_NEAR(y[xr * n_out + o], ref, 1e-6 * mag + 1e-7);
                }
            /* One row alone gives bit-identical results (batching invariance of the kernel). */
            float y1[64];
            if (n_out <= 64) {
                K->matmul(types[ti], w, kiln_wtype_row_bytes(types[ti], n_in), n_out, n_in, x + (n_x - 1) * n_in, 1,
                          y1, 1);
                for (int o = 0; o < n_out; o++) CHECK(y1[o] == y[(n_x - 1) * n_out + o]);
            }
            free(w), free(wf), free(x), free(y);
        }
    }
}


/* The packed layout (when T has one for t): matmul_packed alone, and as the second of two
 * matrices in one job, is bit-identical to T->matmul's y on the same weights. */
static void check_packed(const kiln_kernels *T, kiln_wtype t, const void *w, int n_out, int n_in, const float *x,
                         int n_x, const float *y, kiln_rng *r) {
    size_t pb = T->pack_bytes ? T->pack_bytes(t, n_out, n_in) : 0;
    if (pb == 0) return;
    /* a second matrix of another height shares the job */
    int n_out2 = 1 + (int)(kiln_rng_u64(r) % 40);
    double *wf2 = malloc(sizeof(double) * (size_t)n_out2 * n_in);
    void *w2 = make_weights(t, n_out2, n_in, r, wf2);
    size_t pb2 = T->pack_bytes(t, n_out2, n_in);
    void *p = aligned_alloc(64, (pb + 63) & ~(size_t)63), *p2 = aligned_alloc(64, (pb2 + 63) & ~(size_t)63);
    size_t rb = kiln_wtype_row_bytes(t, n_in);
    T->pack(t, w, rb, n_out, n_in, p, 2);
    T->pack(t, w2, rb, n_out2, n_in, p2, 2);
    float *yp = malloc(sizeof(float) * (size_t)n_x * n_out), *ya = malloc(sizeof(float) * (size_t)n_x * n_out);
    float *y2 = malloc(sizeof(float) * (size_t)n_x * n_out2), *y2r = malloc(sizeof(float) * (size_t)n_x * n_out2);
    kiln_pmat one = {p, n_out, yp};
    T->matmul_packed(t, &one, 1, n_in, x, n_x, 2);
    kiln_pmat two[2] = {{p2, n_out2, y2}, {p, n_out, ya}};
    T->matmul_packed(t, two, 2, n_in, x, n_x, 2);
    T->matmul(t, w2, rb, n_out2, n_in, x, n_x, y2r, 1);
    int bad = 0;
    for (int i = 0; i < n_x * n_out; i++) bad += yp[i] != y[i] || ya[i] != y[i];
    for (int i = 0; i < n_x * n_out2; i++) bad += y2[i] != y2r[i];
    CHECK_MSG(bad == 0, "%s type %d (%d,%d,%d): packed results differ from matmul in %d places", T->name, (int)t,
              n_out, n_in, n_x, bad);
    free(wf2), free(w2), free(p), free(p2), free(yp), free(ya), free(y2), free(y2r);
}

/* Packed matmuls big enough to run on the team (panels.h: a member's own share of the panel
 * pairs, then the others'; more members than KILN_PANEL_SHARES: one shared counter) give the
 * same bits for every team size, including teams with more members than panel pairs. */
static void team_sizes_table(const kiln_kernels *T) {
    kiln_rng r;
    kiln_rng_seed(&r, 77);
    const kiln_wtype types[] = {KILN_WTYPE_F16, KILN_WTYPE_Q8_0, KILN_WTYPE_Q4_0};
    const int n_in = 256, n_xs[] = {1, 3, 130}, teams[] = {2, 3, 5, 8, 12}; /* 130: two row blocks */
    for (size_t ti = 0; ti < KILN_ARRAY_LEN(types); ti++) {
        kiln_wtype t = types[ti];
        for (int n_out = 40; n_out <= 600; n_out += 560) { /* 2 and 19 panel pairs */
            size_t pb = T->pack_bytes ? T->pack_bytes(t, n_out, n_in) : 0;
            if (pb == 0) continue;
            double *wf = malloc(sizeof(double) * (size_t)n_out * n_in);
            void *w = make_weights(t, n_out, n_in, &r, wf);
            void *p = aligned_alloc(64, (pb + 63) & ~(size_t)63);
            T->pack(t, w, kiln_wtype_row_bytes(t, n_in), n_out, n_in, p, 2);
            for (size_t xi = 0; xi < KILN_ARRAY_LEN(n_xs); xi++) {
                int n_x = n_xs[xi];
                float *x = malloc(sizeof(float) * (size_t)n_x * n_in);
                float *y1 = malloc(sizeof(float) * (size_t)n_x * n_out), *yt = malloc(sizeof(float) * (size_t)n_x * n_out);
                for (int i = 0; i < n_x * n_in; i++) x[i] = frand(&r);
                kiln_pmat one = {p, n_out, y1};
                T->matmul_packed(t, &one, 1, n_in, x, n_x, 1);
                for (size_t k = 0; k < KILN_ARRAY_LEN(teams); k++) {
                    for (int i = 0; i < n_x * n_out; i++) yt[i] = NAN;
                    kiln_pmat m = {p, n_out, yt};
                    T->matmul_packed(t, &m, 1, n_in, x, n_x, teams[k]);
                    int bad = 0;
                    for (int i = 0; i < n_x * n_out; i++) bad += memcmp(&yt[i], &y1[i], sizeof(float)) != 0;
                    CHECK_MSG(bad == 0, "%s type %d (%d,%d,%d), %d threads: %d outputs differ from one thread",
                              T->name, (int)t, n_out, n_in, n_x, teams[k], bad);
                }
                free(x), free(y1), free(yt);
            }
            free(wf), free(w), free(p);
        }
    }
}

static void team_sizes(void) {
    const char *names[] = {"avx2", "avx512"};
    for (size_t i = 0; i < KILN_ARRAY_LEN(names); i++) {
        const kiln_kernels *T = kiln_kernels_find(names[i]);
        if (T) team_sizes_table(T);
    }
}

/* ---- every SIMD table against ref ----
 * Random shapes with odd row counts (tails of the 4-, 8- and 16-row tiles), odd activation row
 * counts (both the matrix-vector and the panel paths, and their tails), odd n_in for float types.
 * Tolerances, per op, relative to mag = sum |w_i x_i| of the output element:
 *   matmul F32/F16/BF16 (f32 FMA, another summation order): 1e-5 mag;
 *   matmul Q8_0/Q4_0 (activations rounded to int8 blocks of 32, scale amax/127): at most half a
 *     step per element, sum_i |w_i| amax(block of i) / 254, plus 1e-5 mag;
 *   matmul F16/BF16 in the avx512 table (W16: activations rounded to int16 blocks of 32, scale
 *     amax/8191; weights to int16 with a power-of-two scale below 2 wmax/8191 per block of 32):
 *     sum_i |w_i| amax(block of i) / 16382 + sum_i |x_i| wmax(block of i) / 8191, plus 1e-5 mag;
 *   dot / axpy: 1e-5 of sum |a b|; other ops: 1e-6 absolute on O(1) values.
 * And a row's matmul result is bit-identical whatever the other rows of the batch (the engine's
 * batching invariance rests on it). */
static void check_table_matmul(const kiln_kernels *T, kiln_wtype t, int n_out, int n_in, int n_x, kiln_rng *r) {
    double *wf = malloc(sizeof(double) * (size_t)n_out * n_in);
    void *w = make_weights(t, n_out, n_in, r, wf);
    size_t rb = kiln_wtype_row_bytes(t, n_in);
    float *x = malloc(sizeof(float) * (size_t)n_x * n_in), *y = malloc(sizeof(float) * (size_t)n_x * n_out);
    float *yr = malloc(sizeof(float) * (size_t)n_x * n_out), *y1 = malloc(sizeof(float) * (size_t)n_out);
    for (int i = 0; i < n_x * n_in; i++) x[i] = frand(r) * (i % 7 == 0 ? 4.0f : 1.0f);
    T->matmul(t, w, rb, n_out, n_in, x, n_x, y, 2);
    kiln_kernels_ref.matmul(t, w, rb, n_out, n_in, x, n_x, yr, 2);
    bool quant = t == KILN_WTYPE_Q8_0 || t == KILN_WTYPE_Q4_0;
    bool w16 = (t == KILN_WTYPE_F16 || t == KILN_WTYPE_BF16) && strcmp(T->name, "avx512") == 0;
    int bad = 0;
    for (int xr = 0; xr < n_x; xr++) {
        for (int o = 0; o < n_out; o++) {
            double mag = 0, qerr = 0, werr = 0;
            for (int b = 0; b < n_in; b += 32) {
                double amax = 0, wsum = 0, wmax = 0, xsum = 0;
                for (int i = b; i < n_in && i < b + 32; i++) {
                    amax = fmax(amax, fabs(x[xr * n_in + i]));
                    wmax = fmax(wmax, fabs(wf[(size_t)o * n_in + i]));
                    wsum += fabs(wf[(size_t)o * n_in + i]);
                    xsum += fabs(x[xr * n_in + i]);
                    mag += fabs(wf[(size_t)o * n_in + i] * x[xr * n_in + i]);
                }
                qerr += wsum * amax / 254;
                werr += wsum * amax / 16382 + xsum * wmax / 8191;
            }
            double tol = 1e-5 * mag + (quant ? qerr : 0) + (w16 ? werr : 0) + 1e-7;
            double got = y[xr * n_out + o], want = yr[xr * n_out + o];
            if (fabs(got - want) > tol && bad++ < 3)
                CHECK_MSG(0, "%s type %d (%d,%d,%d) [%d,%d]: %.7g vs ref %.7g (tol %.3g)", T->name, (int)t, n_out,
                          n_in, n_x, xr, o, got, want, tol);
        }
        T->matmul(t, w, rb, n_out, n_in, x + (size_t)xr * n_in, 1, y1, 1);
        for (int o = 0; o < n_out; o++)
            if (y1[o] != y[xr * n_out + o] && bad++ < 3)
                CHECK_MSG(0, "%s type %d (%d,%d,%d) row %d alone: [%d] %.9g vs %.9g in the batch", T->name, (int)t,
                          n_out, n_in, n_x, xr, o, y1[o], y[xr * n_out + o]);
    }
    CHECK_MSG(bad == 0, "%s type %d (%d,%d,%d): %d mismatches", T->name, (int)t, n_out, n_in, n_x, bad);
    check_packed(T, t, w, n_out, n_in, x, n_x, y, r);
    free(w), free(wf), free(x), free(y), free(yr), free(y1);
}

static void simd_vs_ref_table(const kiln_kernels *T) {
    kiln_rng r;
    kiln_rng_seed(&r, 1234);
    kiln_wtype types[] = {KILN_WTYPE_F32, KILN_WTYPE_F16, KILN_WTYPE_BF16, KILN_WTYPE_Q8_0, KILN_WTYPE_Q4_0};
    int n_xs[] = {1, 2, 3, 4, 5, 8, 9, 13, 17, 24};
    for (size_t ti = 0; ti < KILN_ARRAY_LEN(types); ti++) {
        bool quant = types[ti] == KILN_WTYPE_Q8_0 || types[ti] == KILN_WTYPE_Q4_0;
        for (int it = 0; it < 14; it++) {
            int n_out = 1 + (int)(kiln_rng_u64(&r) % 70);
            int n_in = quant ? 32 * (1 + (int)(kiln_rng_u64(&r) % 90)) : 1 + (int)(kiln_rng_u64(&r) % 300);
            if (it == 0) n_out = 1, n_in = quant ? 32 : 1;
            if (it == 1) n_out = 33, n_in = quant ? 32 * 81 : 67; /* > one panel chunk of blocks */
            check_table_matmul(T, types[ti], n_out, n_in, n_xs[it % KILN_ARRAY_LEN(n_xs)], &r);
        }
        /* more activation rows than one row block of the panel job (128): the raw-weight path
         * packs each panel once and runs every row against it */
        check_table_matmul(T, types[ti], 21, quant ? 96 : 45, 261, &r);
        /* one row over 63 panels: takes of several pairs, run as fours where they can be (the
         * single-row Q8_0 tile), and a lone panel at the end */
        check_table_matmul(T, types[ti], 1000, quant ? 64 : 40, 1, &r);
    }
    /* dot and axpy over lengths around the vector widths */
    for (int n = 0; n < 80; n++) {
        float a[80], b[80], y[80], yr[80];
        double mag = 0;
        for (int i = 0; i < n; i++) a[i] = frand(&r), b[i] = frand(&r), y[i] = yr[i] = frand(&r), mag += fabs(a[i] * b[i]);
        CHECK_NEAR(T->dot(a, b, n), kiln_kernels_ref.dot(a, b, n), 1e-5 * mag + 1e-7);
        T->axpy(0.75f, a, y, n);
        kiln_kernels_ref.axpy(0.75f, a, yr, n);
        for (int i = 0; i < n; i++) CHECK_NEAR(y[i], yr[i], 1e-6);
    }
    /* dot_rows / axpy_rows (attention over a K/V chunk): bit-identical to the table's own dot and
     * axpy called row by row, for row lengths around the vector widths and a row stride > n */
    for (int n = 1; n <= 130; n += 7) {
        const int rows = 5, stride = 136;
        float q[136], kv[5 * 136], w[5], y1[136], y2[136], o1[5];
        for (int i = 0; i < 136; i++) q[i] = frand(&r), y1[i] = y2[i] = frand(&r);
        for (int i = 0; i < rows * stride; i++) kv[i] = frand(&r);
        for (int i = 0; i < rows; i++) w[i] = frand(&r);
        T->dot_rows(q, kv, (size_t)stride, rows, n, o1);
        for (int i = 0; i < rows; i++) CHECK(o1[i] == T->dot(q, kv + i * stride, n));
        T->axpy_rows(w, kv, (size_t)stride, rows, n, y1);
        for (int i = 0; i < rows; i++) T->axpy(w[i], kv + i * stride, y2, n);
        for (int i = 0; i < 136; i++) CHECK_MSG(y1[i] == y2[i], "%s n %d [%d]: %.9g vs %.9g", T->name, n, i, y1[i], y2[i]);
    }
    /* rmsnorm / silu_mul / softmax on odd lengths */
    for (int n = 1; n < 70; n += 3) {
        float x[70], o1[70], o2[70], g1[70], g2[70], u[70];
        for (int i = 0; i < n; i++) x[i] = frand(&r) * 3, u[i] = frand(&r), g1[i] = g2[i] = frand(&r) * 4;
        T->rmsnorm(x, u, n, 1e-5f, o1);
        kiln_kernels_ref.rmsnorm(x, u, n, 1e-5f, o2);
        for (int i = 0; i < n; i++) CHECK_NEAR(o1[i], o2[i], 1e-6);
        T->silu_mul(g1, u, n);
        kiln_kernels_ref.silu_mul(g2, u, n);
        for (int i = 0; i < n; i++) CHECK_NEAR(g1[i], g2[i], 1e-6);
        memcpy(o1, x, sizeof(float) * (size_t)n), memcpy(o2, x, sizeof(float) * (size_t)n);
        T->softmax(o1, n);
        kiln_kernels_ref.softmax(o2, n);
        for (int i = 0; i < n; i++) CHECK_NEAR(o1[i], o2[i], 1e-6);
    }
}

/* ---- the avx512 table's W16 scheme (F16 / BF16 on int16 dot products) ----
 * (a) The largest int32 block sums it can form: every weight the type's largest significand
 *     (F16 0x3fff = 2047/1024, int16 8188; BF16 0x3fff = 255/128, 8160) times activations all
 *     equal (8191): 32 * 8188 * 8191 is just under 2^31, so a weight scale one binade too small
 *     (|q| up to 16376) would wrap the sum. y must be n_in * w * x to float rounding.
 * (b) Exactness: a block with largest weight 1.5 holds 1.5, 0.3 and 0.2 (within three binades) to
 *     float rounding, and 0.0013 to half a step (2^-13 here); a one-hot x reads each weight. */
static void w16_scheme(void) {
    const kiln_kernels *T = kiln_kernels_find("avx512");
    if (!T) {
        printf("  (avx512 kernels not supported by this CPU: skipped)\n");
        return;
    }
    enum { N_OUT = 17, N_IN = 70 };
    static uint16_t w[N_OUT * N_IN];
    static float x[2 * N_IN], y[2 * N_OUT];
    for (int ti = 0; ti < 2; ti++) {
        kiln_wtype t = ti ? KILN_WTYPE_BF16 : KILN_WTYPE_F16;
        float wv = ti ? kiln_bf16_to_f32(0x3fff) : kiln_f16_to_f32(0x3fff);
        for (int o = 0; o < N_OUT; o++)
            for (int i = 0; i < N_IN; i++) w[o * N_IN + i] = (uint16_t)((o % 2 ? 0x8000 : 0) | 0x3fff);
        for (int i = 0; i < 2 * N_IN; i++) x[i] = i < N_IN ? 3.0f : -0.5f;
        T->matmul(t, w, N_IN * 2, N_OUT, N_IN, x, 2, y, 1);
        for (int r = 0; r < 2; r++)
            for (int o = 0; o < N_OUT; o++) {
                double want = (double)N_IN * (o % 2 ? -wv : wv) * (r ? -0.5 : 3.0);
                CHECK_NEAR(y[r * N_OUT + o], want, 1e-6 * fabs(want));
            }
        const float vals[4] = {1.5f, 0.3f, -0.2f, 0.0013f};
        for (int i = 0; i < N_IN; i++) {
            float v = vals[i % 4];
            w[i] = ti ? kiln_f32_to_bf16(v) : kiln_f32_to_f16(v);
        }
        for (int k = 0; k < 4; k++) {
            memset(x, 0, sizeof(float) * N_IN);
            x[32 + k] = 1.0f; /* second block: elements 32 + k hold vals[k] */
            T->matmul(t, w, N_IN * 2, 1, N_IN, x, 1, y, 1);
            double wk = ti ? kiln_bf16_to_f32(w[32 + k]) : kiln_f16_to_f32(w[32 + k]);
            CHECK_NEAR(y[0], wk, k < 3 ? 1e-6 * fabs(wk) : ldexp(1, -13));
        }
    }
}

static void simd_vs_ref(void) {
    const char *names[] = {"avx2", "avx512"};
    int n_run = 0;
    for (size_t i = 0; i < KILN_ARRAY_LEN(names); i++) {
        const kiln_kernels *T = kiln_kernels_find(names[i]);
        if (!T) {
            printf("  (%s kernels not supported by this CPU: skipped)\n", names[i]);
            continue;
        }
        simd_vs_ref_table(T);
        n_run++;
    }
    CHECK(n_run >= 0);
}

static void rmsnorm_def(void) {
    float x[5] = {1, -2, 3, 0.5f, -0.25f}, w[5] = {1, 2, 0.5f, -1, 3}, out[5];
    double ss = 0;
    for (int i = 0; i < 5; i++) ss += x[i] * x[i];
    double inv = 1 / sqrt(ss / 5 + 1e-5);
    K->rmsnorm(x, w, 5, 1e-5f, out);
    for (int i = 0; i < 5; i++) CHECK_NEAR(out[i], x[i] * inv * w[i], 1e-6);
    K->rmsnorm(x, NULL, 5, 1e-5f, x); /* in place, unit weight */
    CHECK_NEAR(x[2], 3 * inv, 1e-6);
}

/* RoPE as multiplication of complex pairs by e^{i pos theta_i}. */
static void rope_def(void) {
    const int hd = 8, n_rot = 6, heads = 2, pos = 7;
    const float base = 500.0f, ff[3] = {1, 2, 8};
    kiln_rng r;
    kiln_rng_seed(&r, 3);
    for (int type = 0; type < 2; type++) {
        for (int use_ff = 0; use_ff < 2; use_ff++) {
            float x[16], y[16];
            for (int i = 0; i < 16; i++) x[i] = y[i] = frand(&r);
            K->rope(y, heads, hd, n_rot, pos, base, use_ff ? ff : NULL, type);
            for (int h = 0; h < heads; h++) {
                for (int i = 0; i < n_rot / 2; i++) {
                    int a = type == KILN_KROPE_NEOX ? i : 2 * i, b = type == KILN_KROPE_NEOX ? i + n_rot / 2 : 2 * i + 1;
                    double th = pos * pow(base, -2.0 * i / n_rot) / (use_ff ? ff[i] : 1);
                    double re = x[h * hd + a] * cos(th) - x[h * hd + b] * sin(th);
                    double im = x[h * hd + a] * sin(th) + x[h * hd + b] * cos(th);
                    CHECK_NEAR(y[h * hd + a], re, 1e-6);
                    CHECK_NEAR(y[h * hd + b], im, 1e-6);
                }
                for (int i = n_rot; i < hd; i++) CHECK(y[h * hd + i] == x[h * hd + i]); /* not rotated */
            }
        }
    }
    float z[8] = {1, 2, 3, 4, 5, 6, 7, 8}, z0[8];
    memcpy(z0, z, sizeof(z));
    K->rope(z, 1, 8, 8, 0, 10000, NULL, KILN_KROPE_NORM); /* position 0: identity */
    for (int i = 0; i < 8; i++) CHECK(z[i] == z0[i]);
}

static void softmax_silu_dot(void) {
    float x[4] = {1000, 1001, 999, -INFINITY};
    K->softmax(x, 4);
    double e0 = exp(-1), e2 = exp(-2), s = e0 + 1 + e2;
    CHECK_NEAR(x[0], e0 / s, 1e-6);
    CHECK_NEAR(x[1], 1 / s, 1e-6);
    CHECK_NEAR(x[2], e2 / s, 1e-6);
    CHECK(x[3] == 0);
    float g[3] = {0, 2, -3}, u[3] = {5, 0.5f, 2};
    K->silu_mul(g, u, 3);
    CHECK_NEAR(g[0], 0, 0);
    CHECK_NEAR(g[1], 2 / (1 + exp(-2)) * 0.5, 1e-6);
    CHECK_NEAR(g[2], -3 / (1 + exp(3)) * 2, 1e-6);
    float a[19], b[19], y[19];
    double ref = 0;
    for (int i = 0; i < 19; i++) a[i] = (float)i * 0.5f, b[i] = 1.0f - (float)i * 0.1f, y[i] = 1, ref += a[i] * b[i];
    CHECK_NEAR(K->dot(a, b, 19), ref, 1e-5);
    K->axpy(2, a, y, 19);
    CHECK_NEAR(y[18], 1 + 2 * 9.0, 0);
    /* rows variants: 3 rows of 19 with stride 20 */
    float rows[60], out[3], wts[3] = {1, -0.5f, 2}, acc[19] = {0};
    for (int i = 0; i < 60; i++) rows[i] = (float)(i % 20) * 0.25f - (float)(i / 20);
    K->dot_rows(b, rows, 20, 3, 19, out);
    K->axpy_rows(wts, rows, 20, 3, 19, acc);
    for (int k = 0; k < 3; k++) {
        double d = 0;
        for (int i = 0; i < 19; i++) d += (double)b[i] * rows[k * 20 + i];
        CHECK_NEAR(out[k], d, 1e-5);
    }
    for (int i = 0; i < 19; i++) CHECK_NEAR(acc[i], rows[i] - 0.5 * rows[20 + i] + 2 * rows[40 + i], 1e-6);
}

/* ---- the compute team (pool.h) ---- */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "kernels/pool.h"

typedef struct count_job {
    int64_t n;
    _Atomic int *hits;          /* (n,) times each item was done */
    _Atomic int members;        /* distinct ith seen (bit set) */
    _Atomic int64_t next;
    _Atomic int nth_seen;
    int dynamic;                /* 0: static ranges, 1: fixed chunks, 2: guided takes */
    bool nested;
    _Atomic int inner_nth;      /* nth seen by a nested call */
} count_job;

static void inner_part(void *ctx, int ith, int nth) {
    count_job *j = ctx;
    atomic_store(&j->inner_nth, nth);
    (void)ith;
}

static void count_part(void *ctx, int ith, int nth) {
    count_job *j = ctx;
    atomic_fetch_or(&j->members, 1 << ith);
    atomic_store(&j->nth_seen, nth); /* every member stores the same value */
    int64_t lo, hi;
    if (j->dynamic == 1) {
        while (kiln_pool_take(&j->next, j->n, kiln_pool_chunk(j->n, nth), &lo, &hi))
            for (int64_t i = lo; i < hi; i++) atomic_fetch_add(&j->hits[i], 1);
    } else if (j->dynamic == 2) {
        while (kiln_pool_take_guided(&j->next, j->n, nth, 5, &lo, &hi)) {
            if (hi - lo < 1 || hi - lo > 5) atomic_fetch_add(&j->hits[j->n], 1); /* a bad take size */
            for (int64_t i = lo; i < hi; i++) atomic_fetch_add(&j->hits[i], 1);
        }
    } else {
        kiln_pool_range(j->n, ith, nth, &lo, &hi);
        for (int64_t i = lo; i < hi; i++) atomic_fetch_add(&j->hits[i], 1);
    }
    if (j->nested && ith == 0) {
        count_job in = {0};
        kiln_pool_run(2, inner_part, &in);
        atomic_store(&j->inner_nth, atomic_load(&in.inner_nth));
    }
}

/* Runs one counting job; true when every item was done exactly once by members 0..nth-1. */
static bool count_once(int n_threads, int64_t n, int dynamic, bool nested, int *nth_out, int *inner_nth) {
    _Atomic int *hits = calloc((size_t)n + 1, sizeof(*hits));
    count_job j = {.n = n, .hits = hits, .dynamic = dynamic, .nested = nested};
    kiln_pool_run(n_threads, count_part, &j);
    bool ok = true;
    for (int64_t i = 0; i < n; i++) ok = ok && atomic_load(&hits[i]) == 1;
    ok = ok && atomic_load(&hits[n]) == 0;
    int nth = atomic_load(&j.nth_seen);
    ok = ok && atomic_load(&j.members) == (1 << nth) - 1;
    if (nth_out) *nth_out = nth;
    if (inner_nth) *inner_nth = atomic_load(&j.inner_nth);
    free(hits);
    return ok;
}

/* Every item exactly once, static, chunked and guided sharing, teams of 1..4 (more than the CPUs),
 * item counts below and above the team size; a nested call runs alone. */
static void pool_shares(void) {
    int64_t ns[] = {0, 1, 3, 7, 1000};
    for (int t = 1; t <= 4; t++)
        for (size_t i = 0; i < KILN_ARRAY_LEN(ns); i++)
            for (int dyn = 0; dyn < 3; dyn++) {
                int nth = 0;
                CHECK_MSG(count_once(t, ns[i], dyn, false, &nth, NULL), "threads %d n %lld dynamic %d", t,
                          (long long)ns[i], dyn);
                CHECK(nth >= 1 && nth <= t);
            }
    int nth = 0, inner = 0;
    CHECK(count_once(2, 100, true, true, &nth, &inner));
    CHECK_EQ_INT(inner, 1);
    CHECK(kiln_pool_default_threads() >= 1);
    int64_t lo, hi, total = 0;
    for (int ith = 0; ith < 3; ith++) {
        kiln_pool_range(10, ith, 3, &lo, &hi);
        CHECK(lo == total && hi >= lo);
        total = hi;
    }
    CHECK_EQ_INT(total, 10);
}

static void *pool_caller(void *arg) {
    int *bad = arg;
    for (int k = 0; k < 300; k++)
        if (!count_once(2, 64 + k % 5, k % 3, false, NULL, NULL)) (*bad)++;
    return NULL;
}

/* Many short jobs back to back (the generation / completion protocol, sleeps and wake-ups), and
 * two threads submitting at once (one of them runs alone while the team is busy). */
static void pool_stress(void) {
    int bad = 0;
    for (int k = 0; k < 2000; k++)
        if (!count_once(2, 1 + k % 9, k % 3, false, NULL, NULL)) bad++;
    CHECK_EQ_INT(bad, 0);
    int bad1 = 0, bad2 = 0;
    pthread_t t1, t2;
    CHECK(pthread_create(&t1, NULL, pool_caller, &bad1) == 0);
    CHECK(pthread_create(&t2, NULL, pool_caller, &bad2) == 0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    CHECK_EQ_INT(bad1 + bad2, 0);
}

typedef struct order_job {
    _Atomic int worker_done;   /* set by member 1 at the end of its part */
} order_job;

/* Member 0 returns from its part only after member 1 has finished its own. */
static void worker_first_part(void *ctx, int ith, int nth) {
    order_job *j = ctx;
    if (ith == 1) atomic_store(&j->worker_done, 1);
    if (ith == 0 && nth > 1)
        while (!atomic_load(&j->worker_done)) sched_yield();
}

/* A caller that finishes after the other members must return at once, not spin out its budget
 * waiting for the count of running members (already 0) to change: with a 1 s spin limit, 20 such
 * jobs took 20 s before the fix. The bound is a hang check, far above any honest job time. */
static void pool_caller_last(void) {
    kiln_pool_set_spin_us(1000000);
    for (int k = 0; k < 40; k++) { /* let the adaptive budgets grow to the limit */
        order_job w = {0};
        kiln_pool_run(2, worker_first_part, &w);
    }
    double t0 = kiln_now_s();
    for (int k = 0; k < 20; k++) {
        order_job w = {0};
        kiln_pool_run(2, worker_first_part, &w);
    }
    double dt = kiln_now_s() - t0;
    kiln_pool_set_spin_us(-1);
    CHECK_MSG(dt < 2.0, "20 jobs took %.3f s", dt);
}

static void dispatch(void) {
    CHECK(kiln_kernels_find("ref") == &kiln_kernels_ref);
    CHECK(kiln_kernels_find("no-such-isa") == NULL);
    CHECK(kiln_kernels_get() != NULL);
    size_t e, b;
    CHECK(kiln_wtype_block(KILN_WTYPE_Q4_0, &e, &b) && e == 32 && b == 18);
    CHECK(!kiln_wtype_block((kiln_wtype)10, &e, &b)); /* Q2_K: not a kernel type */
    CHECK_EQ_INT(kiln_wtype_row_bytes(KILN_WTYPE_Q8_0, 64), 68);
}

int main(void) {
    /* Every table's kernels are run through the same definitions; today that is ref only. */
    K = &kiln_kernels_ref;
    RUN(dequant_q8_0);
    RUN(dequant_q4_0);
    RUN(dequant_half);
    RUN(matmul_all_types);
    RUN(rmsnorm_def);
    RUN(rope_def);
    RUN(softmax_silu_dot);
    RUN(dispatch);
    RUN(pool_shares);
    RUN(pool_stress);
    RUN(pool_caller_last);
    RUN(simd_vs_ref);
    RUN(w16_scheme);
    RUN(team_sizes);
    if (kiln_kernels_get() != &kiln_kernels_ref) {
        /* The chosen table through the same definitions (its matmul: simd_vs_ref). */
        K = kiln_kernels_get();
        RUN(dequant_q8_0);
        RUN(dequant_q4_0);
        RUN(dequant_half);
        RUN(rmsnorm_def);
        RUN(rope_def);
        RUN(softmax_silu_dot);
    }
    return TEST_REPORT("test_kernels");
}
