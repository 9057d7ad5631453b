/* test_kquants.c: the Q4_1 / Q5_0 / Q4_K / Q5_K / Q6_K kernels (kquants.c).
 * Without arguments: block sizes, and the matmul of every table (ref, the default table,
 * kiln_kquant_matmul) against a double-precision product of the dequantized weights on random
 * blocks and odd shapes, plus thread-count and batch invariance.
 * With a vectors file (tests/ref/kquant_vectors.py, run by tests/suites/kquant_dequant.sh): every
 * table's dequant_row against values numpy computed from the block fields. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>

#include "kernels/kernels.h"
#include "test.h"

static const kiln_wtype TYPES[] = {KILN_WTYPE_Q4_1, KILN_WTYPE_Q5_0, KILN_WTYPE_Q4_K, KILN_WTYPE_Q5_K,
                                   KILN_WTYPE_Q6_K};

static void block_sizes(void) {
    static const struct {
        kiln_wtype t;
        size_t e, b;
    } want[] = {{KILN_WTYPE_Q4_1, 32, 20}, {KILN_WTYPE_Q5_0, 32, 22}, {KILN_WTYPE_Q4_K, 256, 144},
                {KILN_WTYPE_Q5_K, 256, 176}, {KILN_WTYPE_Q6_K, 256, 210}};
    for (size_t i = 0; i < KILN_ARRAY_LEN(want); i++) {
        size_t e = 0, b = 0;
        CHECK(kiln_wtype_block(want[i].t, &e, &b));
        CHECK_EQ_INT(e, want[i].e);
        CHECK_EQ_INT(b, want[i].b);
        CHECK(kiln_kquant_handles(want[i].t));
    }
    CHECK(!kiln_kquant_handles(KILN_WTYPE_Q4_0));
    CHECK(!kiln_kquant_handles(KILN_WTYPE_F16));
    CHECK_EQ_INT(kiln_wtype_row_bytes(KILN_WTYPE_Q4_K, 512), 288);
}

/* Random bytes with the f16 scale fields set to moderate values (so products stay finite). */
static uint8_t *random_weights(kiln_wtype t, int64_t n_out, int64_t n_in, kiln_rng *r, size_t *row_bytes) {
    size_t be = 0, bb = 0;
    KILN_ASSERT(kiln_wtype_block(t, &be, &bb));
    *row_bytes = kiln_wtype_row_bytes(t, n_in);
    size_t n_blocks = (size_t)n_out * (size_t)n_in / be;
    uint8_t *w = malloc(n_blocks * bb);
    for (size_t i = 0; i < n_blocks * bb; i++) w[i] = (uint8_t)kiln_rng_u64(r);
    for (size_t i = 0; i < n_blocks; i++) {
        uint8_t *b = w + i * bb;
        uint16_t d = kiln_f32_to_f16((float)(kiln_rng_uniform(r) * 0.02 - 0.01));
        uint16_t d2 = kiln_f32_to_f16((float)(kiln_rng_uniform(r) * 0.02 - 0.01));
        switch (t) {
        case KILN_WTYPE_Q4_1: ((kiln_block_q4_1 *)b)->d = d, ((kiln_block_q4_1 *)b)->m = d2; break;
        case KILN_WTYPE_Q5_0: ((kiln_block_q5_0 *)b)->d = d; break;
        case KILN_WTYPE_Q4_K: ((kiln_block_q4_k *)b)->d = d, ((kiln_block_q4_k *)b)->dmin = d2; break;
        case KILN_WTYPE_Q5_K: ((kiln_block_q5_k *)b)->d = d, ((kiln_block_q5_k *)b)->dmin = d2; break;
        case KILN_WTYPE_Q6_K: ((kiln_block_q6_k *)b)->d = d; break;
        default: abort();
        }
    }
    return w;
}

typedef void (*matmul_fn)(kiln_wtype, const void *, size_t, int64_t, int64_t, const float *, int64_t, float *,
                          int);

/* The double reference of one output: *s = sum(wf * xq) over n_in, *m = sum|wf * xq|, and *e the
 * integer path's rounding bound, sum over groups of ab activations of amax(|xq|) / 254 * sum|wf|. */
static void ref_dot(const float *wf, const float *xq, int64_t n_in, int64_t ab, double *s, double *m, double *e) {
    *s = *m = *e = 0;
    for (int64_t i = 0; i < n_in; i++) {
        *s += (double)wf[i] * xq[i];
        *m += fabs((double)wf[i] * xq[i]);
    }
    for (int64_t g = 0; g < n_in / ab; g++) {
        double amax = 0, wsum = 0;
        for (int64_t i = ab * g; i < ab * g + ab; i++) {
            amax = fmax(amax, fabs(xq[i]));
            wsum += fabs(wf[i]);
        }
        *e += amax / 254 * wsum;
    }
}

/* Every matmul entry point against sum(dequant(w) * x) in double. ref (float activations):
 * within 1e-5 of sum |w * x|. The others may round activations to int8 per 32 (scale amax / 127,
 * so each x moves by at most amax / 254): within sum_g amax_g / 254 * sum_{i in g} |w_i| more. */
static void matmul_vs_double(void) {
    kiln_rng r;
    kiln_rng_seed(&r, 42);
    const kiln_kernels *def = kiln_kernels_get();
    struct {
        const char *name;
        matmul_fn f;
    } fns[] = {{"ref", kiln_kernels_ref.matmul}, {def->name, def->matmul}, {"kquant", kiln_kquant_matmul}};
    static const int64_t n_outs[] = {1, 7, 37}, n_xs[] = {1, 3, 6, 133}; /* 133: over one row block (128) */
    for (size_t ti = 0; ti < KILN_ARRAY_LEN(TYPES); ti++) {
        kiln_wtype t = TYPES[ti];
        size_t be = 0;
        kiln_wtype_block(t, &be, NULL);
        int64_t n_ins[] = {(int64_t)be, (int64_t)be * 3, be == 32 ? 288 : 1024};
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 4; b++)
                for (int c = 0; c < 3; c++) {
                    int64_t n_out = n_outs[a], n_x = n_xs[b], n_in = n_ins[c];
                    /* activation scales per 256 for the K-quants (as ggml's Q8_K), else per 32 */
                    int64_t ab = be == 256 ? 256 : 32;
                    size_t rb;
                    uint8_t *w = random_weights(t, n_out, n_in, &r, &rb);
                    float *x = malloc(sizeof(float) * (size_t)(n_x * n_in));
                    float *wf = malloc(sizeof(float) * (size_t)n_in);
                    float *y = malloc(sizeof(float) * (size_t)(n_x * n_out));
                    double *want = malloc(sizeof(double) * (size_t)(n_x * n_out));
                    double *mag = malloc(sizeof(double) * (size_t)(n_x * n_out));
                    double *qerr = malloc(sizeof(double) * (size_t)(n_x * n_out));
                    for (int64_t i = 0; i < n_x * n_in; i++) x[i] = (float)(kiln_rng_uniform(&r) * 2 - 1);
                    for (int64_t o = 0; o < n_out; o++) {
                        kiln_kquant_dequant_row(t, w + (size_t)o * rb, wf, n_in);
                        for (int64_t q = 0; q < n_x; q++)
                            ref_dot(wf, x + q * n_in, n_in, ab, &want[q * n_out + o], &mag[q * n_out + o],
                                    &qerr[q * n_out + o]);
                    }
                    for (size_t fi = 0; fi < KILN_ARRAY_LEN(fns); fi++) {
                        fns[fi].f(t, w, rb, n_out, n_in, x, n_x, y, 2);
                        for (int64_t i = 0; i < n_x * n_out; i++)
                            CHECK_MSG(fabs(y[i] - want[i]) <= 1e-5 * mag[i] + (fi ? 1.0001 * qerr[i] : 0) + 1e-30,
                                      "%s type %d (%lld x %lld) @ x (%lld): y[%lld] = %.9g, want %.9g", fns[fi].name,
                                      (int)t, (long long)n_out, (long long)n_in, (long long)n_x, (long long)i,
                                      (double)y[i], want[i]);
                    }
                    free(w), free(x), free(wf), free(y), free(want), free(mag), free(qerr);
                }
    }
}

static void *packed_copy(kiln_wtype t, const uint8_t *w, size_t rb, int64_t n_out, int64_t n_in, int nt);

/* The result does not depend on the number of threads. */
static void threads_invariant(void) {
    kiln_rng r;
    kiln_rng_seed(&r, 7);
    for (size_t ti = 0; ti < KILN_ARRAY_LEN(TYPES); ti++) {
        int64_t n_out = 301, n_in = 512, n_x = 130; /* packed: two row blocks */
        size_t rb;
        uint8_t *w = random_weights(TYPES[ti], n_out, n_in, &r, &rb);
        float *x = malloc(sizeof(float) * (size_t)(n_x * n_in));
        float *y1 = malloc(sizeof(float) * (size_t)(n_x * n_out)), *y2 = malloc(sizeof(float) * (size_t)(n_x * n_out));
        for (int64_t i = 0; i < n_x * n_in; i++) x[i] = (float)(kiln_rng_uniform(&r) * 2 - 1);
        kiln_kquant_matmul(TYPES[ti], w, rb, n_out, n_in, x, n_x, y1, 1);
        kiln_kquant_matmul(TYPES[ti], w, rb, n_out, n_in, x, n_x, y2, 2);
        CHECK(memcmp(y1, y2, sizeof(float) * (size_t)(n_x * n_out)) == 0);
        /* packed, one row and the batch, on teams of several sizes (panels.h: members' own shares
         * of the items, then the others'; over 8 members, one shared counter) */
        void *pk = packed_copy(TYPES[ti], w, rb, n_out, n_in, 2);
        const int teams[] = {1, 2, 3, 5, 8, 12};
        for (int64_t nx = 1; pk && nx <= n_x; nx += n_x - 1) {
            kiln_pmat pm = {pk, n_out, y1};
            kiln_kquant_matmul_packed(TYPES[ti], &pm, 1, n_in, x, nx, 1);
            for (size_t k = 1; k < KILN_ARRAY_LEN(teams); k++) {
                pm.y = y2;
                kiln_kquant_matmul_packed(TYPES[ti], &pm, 1, n_in, x, nx, teams[k]);
                CHECK_MSG(memcmp(y1, y2, sizeof(float) * (size_t)(nx * n_out)) == 0, "type %d, %lld rows, %d threads",
                          (int)TYPES[ti], (long long)nx, teams[k]);
            }
        }
        free(pk), free(w), free(x), free(y1), free(y2);
    }
}

/* Row r of a batch equals the same activation row computed alone, bit for bit. */
static void batch_invariant(void) {
    kiln_rng r;
    kiln_rng_seed(&r, 9);
    for (size_t ti = 0; ti < KILN_ARRAY_LEN(TYPES); ti++) {
        int64_t n_out = 40, n_in = 512, n_x = 7;
        size_t rb;
        uint8_t *w = random_weights(TYPES[ti], n_out, n_in, &r, &rb);
        float *x = malloc(sizeof(float) * (size_t)(n_x * n_in));
        float *yb = malloc(sizeof(float) * (size_t)(n_x * n_out)), *y1 = malloc(sizeof(float) * (size_t)n_out);
        for (int64_t i = 0; i < n_x * n_in; i++) x[i] = (float)(kiln_rng_uniform(&r) * 2 - 1);
        kiln_kquant_matmul(TYPES[ti], w, rb, n_out, n_in, x, n_x, yb, 2);
        for (int64_t q = 0; q < n_x; q++) {
            kiln_kquant_matmul(TYPES[ti], w, rb, n_out, n_in, x + q * n_in, 1, y1, 2);
            CHECK_MSG(memcmp(y1, yb + q * n_out, sizeof(float) * (size_t)n_out) == 0, "type %d row %lld",
                      (int)TYPES[ti], (long long)q);
        }
        free(w), free(x), free(yb), free(y1);
    }
}

/* y (n_x, n_out) against sum(dequant(w) * x) in double, with matmul_vs_double's integer-path
 * tolerance (activations rounded to int8 per 256 for the K-quants, per 32 for Q4_1 / Q5_0).
 * Returns the number of mismatches. */
static int check_vs_double(kiln_wtype t, const uint8_t *w, size_t rb, int64_t n_out, int64_t n_in, const float *x,
                           int64_t n_x, const float *y, const char *what) {
    float *wf = malloc(sizeof(float) * (size_t)n_in);
    size_t be = 0;
    kiln_wtype_block(t, &be, NULL);
    int64_t ab = (int64_t)be;
    int n_bad = 0;
    for (int64_t o = 0; o < n_out; o++) {
        kiln_kquant_dequant_row(t, w + (size_t)o * rb, wf, n_in);
        for (int64_t q = 0; q < n_x; q++) {
            double s, m, e;
            ref_dot(wf, x + q * n_in, n_in, ab, &s, &m, &e);
            double got = y[q * n_out + o];
            if (!(fabs(got - s) <= 1e-5 * m + 1.0001 * e + 1e-30) && n_bad++ < 3)
                CHECK_MSG(0, "%s type %d (%lld x %lld) @ x (%lld): y[%lld][%lld] = %.9g, want %.9g", what, (int)t,
                          (long long)n_out, (long long)n_in, (long long)n_x, (long long)q, (long long)o, got, s);
        }
    }
    free(wf);
    return n_bad;
}

static const kiln_wtype K_TYPES[] = {KILN_WTYPE_Q4_K, KILN_WTYPE_Q5_K, KILN_WTYPE_Q6_K};

/* 64-byte-aligned packed copy of w (NULL when there is no packed layout here). */
static void *packed_copy(kiln_wtype t, const uint8_t *w, size_t rb, int64_t n_out, int64_t n_in, int nt) {
    size_t n = kiln_kquant_pack_bytes(t, n_out, n_in);
    if (!n) return NULL;
    void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    kiln_kquant_pack(t, w, rb, n_out, n_in, p, nt);
    return p;
}

/* Where a packed layout exists (AVX-512 + VNNI): 2 or 3 matrices of different (odd) heights in one
 * matmul_packed call give, bit for bit, what kiln_kquant_matmul gives on the raw rows, for every
 * batch size 1..24 (tiles of 16 rows and their tails), and stay within the tolerance of the
 * double-precision product. Elsewhere only that pack_bytes is 0. */
static void packed_equals_raw(void) {
    kiln_rng r;
    kiln_rng_seed(&r, 11);
    if (!kiln_kquant_pack_bytes(KILN_WTYPE_Q4_K, 16, 256)) {
        printf("packed_equals_raw: no packed K-quant layout on this CPU (or KILN_KQUANT_NO_VNNI=1)\n");
        for (size_t ti = 0; ti < KILN_ARRAY_LEN(TYPES); ti++) CHECK_EQ_INT(kiln_kquant_pack_bytes(TYPES[ti], 64, 512), 0);
        return;
    }
    /* n_in in blocks: 256 elements for the K-quants, 32 for Q4_1 / Q5_0 (18 x 32 = 576, a
     * 135M-class model's width) */
    static const struct {
        int n_mats;
        int64_t n_blocks, n_outs[3];
    } shapes[] = {{3, 1, {1, 17, 45}}, {2, 3, {33, 16}}, {3, 18, {47, 2, 31}}, {1, 11, {23, 0, 0}}};
    for (size_t ti = 0; ti < KILN_ARRAY_LEN(TYPES); ti++) {
        kiln_wtype t = TYPES[ti];
        size_t be = 0;
        kiln_wtype_block(t, &be, NULL);
        for (size_t si = 0; si < KILN_ARRAY_LEN(shapes); si++) {
            int nm = shapes[si].n_mats;
            int64_t n_in = shapes[si].n_blocks * (int64_t)be, max_x = 24;
            uint8_t *w[3];
            void *pk[3];
            size_t rb = 0;
            float *x = malloc(sizeof(float) * (size_t)(max_x * n_in));
            for (int64_t i = 0; i < max_x * n_in; i++) x[i] = (float)(kiln_rng_uniform(&r) * 2 - 1);
            /* a few large activations: blocks with very different scales */
            for (int64_t i = 0; i < max_x * n_in; i += 301) x[i] *= 40.0f;
            for (int m = 0; m < nm; m++) {
                w[m] = random_weights(t, shapes[si].n_outs[m], n_in, &r, &rb);
                pk[m] = packed_copy(t, w[m], rb, shapes[si].n_outs[m], n_in, 2);
                CHECK(pk[m] != NULL);
            }
            for (int64_t n_x = 1; n_x <= max_x; n_x++) {
                float *yp[3], *yr[3];
                kiln_pmat pm[3];
                for (int m = 0; m < nm; m++) {
                    size_t ny = (size_t)(n_x * shapes[si].n_outs[m]);
                    yp[m] = malloc(sizeof(float) * ny), yr[m] = malloc(sizeof(float) * ny);
                    pm[m] = (kiln_pmat){pk[m], shapes[si].n_outs[m], yp[m]};
                }
                kiln_kquant_matmul_packed(t, pm, nm, n_in, x, n_x, 2);
                for (int m = 0; m < nm; m++) {
                    int64_t n_out = shapes[si].n_outs[m];
                    kiln_kquant_matmul(t, w[m], rb, n_out, n_in, x, n_x, yr[m], n_x % 2 + 1);
                    CHECK_MSG(memcmp(yp[m], yr[m], sizeof(float) * (size_t)(n_x * n_out)) == 0,
                              "type %d matrix %d (%lld x %lld), n_x %lld: packed != raw", (int)t, m,
                              (long long)n_out, (long long)n_in, (long long)n_x);
                    if (n_x == 1 || n_x == 16 || n_x == max_x) check_vs_double(t, w[m], rb, n_out, n_in, x, n_x, yp[m], "packed");
                }
                for (int m = 0; m < nm; m++) free(yp[m]), free(yr[m]);
            }
            for (int m = 0; m < nm; m++) free(w[m]), free(pk[m]);
            free(x);
        }
    }
}

/* Packed: row q of a batch of 24 equals that row multiplied alone, bit for bit (the engine's
 * batching invariance); and the packed size stays within 3% of the raw rows (decode reads it). */
static void packed_batch_invariant(void) {
    kiln_rng r;
    kiln_rng_seed(&r, 13);
    for (size_t ti = 0; ti < KILN_ARRAY_LEN(TYPES); ti++) {
        kiln_wtype t = TYPES[ti];
        int64_t n_out = 61, n_in = 1024, n_x = 24;
        size_t rb;
        uint8_t *w = random_weights(t, n_out, n_in, &r, &rb);
        void *pk = packed_copy(t, w, rb, n_out, n_in, 1);
        if (!pk) {
            free(w);
            continue;
        }
        size_t pb = kiln_kquant_pack_bytes(t, n_out, n_in), raw = rb * 64; /* 4 panels of 16 rows */
        CHECK_MSG(pb >= raw && pb <= raw + raw * 3 / 100, "type %d: packed %zu bytes, raw %zu", (int)t, pb, raw);
        float *x = malloc(sizeof(float) * (size_t)(n_x * n_in));
        float *yb = malloc(sizeof(float) * (size_t)(n_x * n_out)), *y1 = malloc(sizeof(float) * (size_t)n_out);
        for (int64_t i = 0; i < n_x * n_in; i++) x[i] = (float)(kiln_rng_uniform(&r) * 2 - 1);
        kiln_pmat pm = {pk, n_out, yb};
        kiln_kquant_matmul_packed(t, &pm, 1, n_in, x, n_x, 2);
        for (int64_t q = 0; q < n_x; q++) {
            pm.y = y1;
            kiln_kquant_matmul_packed(t, &pm, 1, n_in, x + q * n_in, 1, 1);
            CHECK_MSG(memcmp(y1, yb + q * n_out, sizeof(float) * (size_t)n_out) == 0, "type %d row %lld", (int)t,
                      (long long)q);
        }
        free(w), free(pk), free(x), free(yb), free(y1);
    }
}

/* No packed layout for rows that are not whole blocks (super-blocks for the K-quants), or for
 * absurd shapes. */
static void pack_bytes_shapes(void) {
    CHECK_EQ_INT(kiln_kquant_pack_bytes(KILN_WTYPE_Q4_1, 64, 500), 0);
    CHECK_EQ_INT(kiln_kquant_pack_bytes(KILN_WTYPE_Q5_0, 64, 48), 0);
    CHECK_EQ_INT(kiln_kquant_pack_bytes(KILN_WTYPE_Q5_0, 64, (int64_t)1 << 62), 0);
    for (size_t ti = 0; ti < KILN_ARRAY_LEN(K_TYPES); ti++) {
        CHECK_EQ_INT(kiln_kquant_pack_bytes(K_TYPES[ti], 64, 288), 0);
        CHECK_EQ_INT(kiln_kquant_pack_bytes(K_TYPES[ti], 64, 0), 0);
        CHECK_EQ_INT(kiln_kquant_pack_bytes(K_TYPES[ti], 0, 256), 0);
        CHECK_EQ_INT(kiln_kquant_pack_bytes(K_TYPES[ti], 64, -256), 0);
        CHECK_EQ_INT(kiln_kquant_pack_bytes(K_TYPES[ti], 64, (int64_t)1 << 62), 0);
    }
}

/* ---- vectors file mode ---- */
static const uint8_t *vec_data;
static size_t vec_len, vec_pos;

static const void *take(size_t n) {
    if (n > vec_len - vec_pos) return NULL;
    const void *p = vec_data + vec_pos;
    vec_pos += n;
    return p;
}

static void check_vectors(void) {
    const uint8_t *magic = take(4);
    const uint32_t *n_cases = take(4);
    CHECK(magic && memcmp(magic, "KQV1", 4) == 0 && n_cases);
    if (!magic || !n_cases) return;
    const kiln_kernels *tables[] = {&kiln_kernels_ref, kiln_kernels_get()};
    for (uint32_t c = 0; c < *n_cases; c++) {
        const uint32_t *hdr = take(8);
        CHECK(hdr);
        if (!hdr) return;
        kiln_wtype t = (kiln_wtype)hdr[0];
        int64_t n = hdr[1];
        size_t be = 0, bb = 0;
        CHECK(kiln_kquant_handles(t) && kiln_wtype_block(t, &be, &bb) && n % (int64_t)be == 0);
        if (!kiln_kquant_handles(t)) return;
        const void *raw = take((size_t)n / be * bb);
        const double *want = take((size_t)n * 8), *tol = take((size_t)n * 8);
        CHECK(raw && want && tol);
        if (!raw || !want || !tol) return;
        float *got = malloc(sizeof(float) * (size_t)n);
        for (size_t k = 0; k < KILN_ARRAY_LEN(tables); k++) {
            tables[k]->dequant_row(t, raw, got, n);
            int n_bad = 0;
            for (int64_t i = 0; i < n; i++) {
                bool ok = isfinite(got[i]) && fabs(got[i] - want[i]) <= tol[i];
                if (!ok && n_bad++ < 5)
                    CHECK_MSG(ok, "%s type %d element %lld (block %lld): %.9g, numpy %.9g (tol %.3g)", tables[k]->name,
                              (int)t, (long long)i, (long long)(i / (int64_t)be), (double)got[i], want[i], tol[i]);
            }
            printf("type %2d, %lld elements, %s kernels: %d mismatches\n", (int)t, (long long)n, tables[k]->name,
                   n_bad);
        }
        free(got);
    }
    CHECK_EQ_INT(vec_pos, vec_len);
}

int main(int argc, char **argv) {
    if (argc > 1) {
        FILE *f = fopen(argv[1], "rb");
        if (!f) {
            fprintf(stderr, "test_kquants: cannot open %s\n", argv[1]);
            return 1;
        }
        static uint8_t buf[1 << 22];
        vec_len = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        vec_data = buf;
        RUN(check_vectors);
        return TEST_REPORT("test_kquants vectors");
    }
    RUN(block_sizes);
    RUN(matmul_vs_double);
    RUN(threads_invariant);
    RUN(batch_invariant);
    RUN(packed_equals_raw);
    RUN(packed_batch_invariant);
    RUN(pack_bytes_shapes);
    return TEST_REPORT("test_kquants");
}
