/* test_kernels_vec.c: the attention chunk op (kernels.h attn_chunk) of every table against the
 * definition computed here in double precision (softmax(q.K^T * scale) . V over each query's
 * positions, fed in chunks), and its batching invariance: a query's state is bit-identical
 * whether it is updated alone (with n = its n_see) or with others in any grouping. Also the
 * AVX-512 vector exp against libm's double exp (stated bound: 2 ulp), the SIMD SiLU, RMSNorm
 * and softmax against ref over wide ranges and lengths, and RoPE in two steps against the op. */
#include <math.h>
#include <stdlib.h>

#include "kernels/isa.h"
#include "kernels/kernels.h"
#include "test.h"

static float frand(kiln_rng *r) { return (float)(kiln_rng_uniform(r) * 2 - 1); }

/* ---- attention ---- */

typedef struct scen {
    int hd, n_pos, n_q;
    size_t stride;
    float *k, *v;   /* (n_pos, stride) */
    float *q;       /* (n_q, hd) */
    int *last;      /* (n_q,) last position each query sees */
    int *chunk;     /* chunk lengths covering 0..n_pos-1, each 1..KILN_ATT_CHUNK */
    int n_chunks;
} scen;

static scen scen_make(kiln_rng *r, int hd, int n_pos, int n_q, float q_amp) {
    scen s = {.hd = hd, .n_pos = n_pos, .n_q = n_q, .stride = (size_t)hd + 3};
    s.k = malloc(sizeof(float) * s.stride * (size_t)n_pos);
    s.v = malloc(sizeof(float) * s.stride * (size_t)n_pos);
    s.q = malloc(sizeof(float) * (size_t)n_q * (size_t)hd);
    s.last = malloc(sizeof(int) * (size_t)n_q);
    s.chunk = malloc(sizeof(int) * (size_t)n_pos);
    for (size_t i = 0; i < s.stride * (size_t)n_pos; i++) s.k[i] = frand(r), s.v[i] = frand(r);
    for (int i = 0; i < n_q * hd; i++) s.q[i] = frand(r) * q_amp;
    for (int j = 0; j < n_q; j++) s.last[j] = (int)(kiln_rng_u64(r) % (uint64_t)n_pos);
    if (n_q > 0) s.last[n_q - 1] = n_pos - 1;
    for (int p = 0; p < n_pos; p += s.chunk[s.n_chunks++]) {
        int len = 1 + (int)(kiln_rng_u64(r) % KILN_ATT_CHUNK); /* drawn once: KILN_MIN evaluates twice */
        s.chunk[s.n_chunks] = KILN_MIN(n_pos - p, len);
    }
    return s;
}

static void scen_free(scen *s) { free(s->k), free(s->v), free(s->q), free(s->last), free(s->chunk); }

/* How the active queries of a chunk are split into calls; GROUP_SPLIT: all in one call, with the
 * chunk's rows in two segments (split at a random row, the second segment a copy elsewhere) as
 * when a chunk spans two cache blocks. */
enum { GROUP_ALL, GROUP_ALONE, GROUP_RANDOM, GROUP_SPLIT };

/* Runs the scenario through T's attn_chunk; st (n_q,) and acc (n_q, hd) hold the final states. */
static void scen_run(const kiln_kernels *T, const scen *s, int mode, kiln_rng *r, kiln_attn_q *st, float *acc) {
    const float scale = 1.0f / sqrtf((float)s->hd);
    for (int j = 0; j < s->n_q; j++) {
        st[j] = (kiln_attn_q){.q = s->q + (size_t)j * s->hd, .acc = acc + (size_t)j * s->hd, .m = -INFINITY};
        for (int e = 0; e < s->hd; e++) st[j].acc[e] = NAN; /* ignored before the first chunk */
    }
    kiln_attn_q call[KILN_ATT_MAX_Q];
    int idx[KILN_ATT_MAX_Q];
    float *k2 = malloc(sizeof(float) * s->stride * KILN_ATT_CHUNK), *v2 = malloc(sizeof(float) * s->stride * KILN_ATT_CHUNK);
    for (int c = 0, p0 = 0; c < s->n_chunks; p0 += s->chunk[c++]) {
        const int n = s->chunk[c];
        kiln_attn_kv ch = {.k = s->k + (size_t)p0 * s->stride, .v = s->v + (size_t)p0 * s->stride, .stride = s->stride,
                           .n = n, .n1 = n};
        if (mode == GROUP_SPLIT && n > 1) {
            ch.n1 = 1 + (int)(kiln_rng_u64(r) % (uint64_t)(n - 1));
            memcpy(k2, ch.k + (size_t)ch.n1 * s->stride, sizeof(float) * s->stride * (size_t)(n - ch.n1));
            memcpy(v2, ch.v + (size_t)ch.n1 * s->stride, sizeof(float) * s->stride * (size_t)(n - ch.n1));
            ch.k2 = k2, ch.v2 = v2;
        }
        int n_act = 0;
        for (int j = 0; j < s->n_q; j++) {
            if (s->last[j] < p0) continue;
            st[j].n_see = KILN_MIN(n, s->last[j] + 1 - p0);
            idx[n_act++] = j;
        }
        for (int a0 = 0; a0 < n_act;) {
            int len = mode == GROUP_ALL || mode == GROUP_SPLIT ? n_act
                      : mode == GROUP_ALONE                  ? 1
                                                             : 1 + (int)(kiln_rng_u64(r) % (uint64_t)n_act);
            len = KILN_MIN(len, n_act - a0);
            kiln_attn_kv call_ch = ch;
            for (int i = 0; i < len; i++) call[i] = st[idx[a0 + i]];
            if (mode == GROUP_ALONE) call_ch.n = call_ch.n1 = call[0].n_see; /* as if the chunk ended there */
            T->attn_chunk(call, len, &call_ch, s->hd, scale);
            for (int i = 0; i < len; i++) st[idx[a0 + i]] = call[i];
            a0 += len;
        }
    }
    free(k2), free(v2);
}

/* The largest |T's output - the double-precision definition| over the scenario's queries. */
static double scen_err(const scen *s, const kiln_attn_q *st) {
    double worst = 0;
    double *sc = malloc(sizeof(double) * (size_t)s->n_pos);
    for (int j = 0; j < s->n_q; j++) {
        double mx = -INFINITY, sum = 0;
        for (int i = 0; i <= s->last[j]; i++) {
            double d = 0;
            for (int e = 0; e < s->hd; e++) d += (double)s->q[(size_t)j * s->hd + e] * s->k[(size_t)i * s->stride + e];
            sc[i] = d / sqrt((double)s->hd);
            mx = sc[i] > mx ? sc[i] : mx;
        }
        for (int i = 0; i <= s->last[j]; i++) sum += (sc[i] = exp(sc[i] - mx));
        for (int e = 0; e < s->hd; e++) {
            double o = 0;
            for (int i = 0; i <= s->last[j]; i++) o += sc[i] * s->v[(size_t)i * s->stride + e];
            double err = fabs(st[j].acc[e] / st[j].l - o / sum);
            worst = err > worst ? err : worst;
        }
    }
    free(sc);
    return worst;
}

static const kiln_kernels *tables[3];
static int n_tables;

/* Every table against the definition; tolerance 4e-6 absolute (measured: under 7e-7) on
 * outputs that are convex combinations of V values in [-1, 1] (float scores over up to 520
 * dims, exp within 2 ulp). */
static void attn_vs_definition(void) {
    kiln_rng r;
    kiln_rng_seed(&r, 99);
    const int hds[] = {1, 7, 16, 33, 64, 80, 128, 257, 300, 520};
    for (size_t h = 0; h < KILN_ARRAY_LEN(hds); h++) {
        int n_pos = 1 + (int)(kiln_rng_u64(&r) % 150), n_q = 1 + (int)(kiln_rng_u64(&r) % KILN_ATT_MAX_Q);
        if (h == 4) n_q = KILN_ATT_MAX_Q;
        scen s = scen_make(&r, hds[h], n_pos, n_q, 3.0f);
        kiln_attn_q *st = malloc(sizeof(*st) * (size_t)n_q);
        float *acc = malloc(sizeof(float) * (size_t)n_q * (size_t)hds[h]);
        for (int t = 0; t < n_tables; t++) {
            for (int mode = GROUP_ALL; mode <= GROUP_SPLIT; mode += GROUP_SPLIT - GROUP_ALL) {
                scen_run(tables[t], &s, mode, &r, st, acc);
                double err = scen_err(&s, st);
                CHECK_MSG(err <= 4e-6, "%s hd %d n_pos %d n_q %d mode %d: max error %g", tables[t]->name, hds[h], n_pos,
                          n_q, mode, err);
            }
        }
        free(st), free(acc);
        scen_free(&s);
    }
}

/* A query's state is the same bits alone (n = n_see), in one call with all others, in random
 * groups, or with the chunk's rows in two segments; and large scores (q amplitude 40: many rescales, weights near 0) stay finite. */
static void attn_grouping_invariance(void) {
    kiln_rng r;
    kiln_rng_seed(&r, 7);
    const int hds[] = {3, 16, 64, 100, 300, 520};
    for (size_t h = 0; h < KILN_ARRAY_LEN(hds); h++) {
        int hd = hds[h], n_pos = 20 + (int)(kiln_rng_u64(&r) % 100), n_q = 1 + (int)(kiln_rng_u64(&r) % KILN_ATT_MAX_Q);
        scen s = scen_make(&r, hd, n_pos, n_q, h % 2 ? 40.0f : 1.0f);
        kiln_attn_q *st[4];
        float *acc[4];
        for (int i = 0; i < 4; i++) {
            st[i] = malloc(sizeof(kiln_attn_q) * (size_t)n_q);
            acc[i] = malloc(sizeof(float) * (size_t)n_q * (size_t)hd);
        }
        for (int t = 0; t < n_tables; t++) {
            scen_run(tables[t], &s, GROUP_ALL, &r, st[0], acc[0]);
            scen_run(tables[t], &s, GROUP_ALONE, &r, st[1], acc[1]);
            scen_run(tables[t], &s, GROUP_RANDOM, &r, st[2], acc[2]);
            scen_run(tables[t], &s, GROUP_SPLIT, &r, st[3], acc[3]);
            for (int i = 1; i < 4; i++) {
                int bad = 0;
                for (int j = 0; j < n_q; j++)
                    bad += memcmp(&st[0][j].m, &st[i][j].m, sizeof(float)) != 0 ||
                           memcmp(&st[0][j].l, &st[i][j].l, sizeof(float)) != 0;
                bad += memcmp(acc[0], acc[i], sizeof(float) * (size_t)n_q * (size_t)hd) != 0;
                CHECK_MSG(bad == 0, "%s hd %d mode %d: %d differences", tables[t]->name, hd, i, bad);
            }
            bool finite = true;
            for (int j = 0; j < n_q; j++) finite = finite && isfinite(st[0][j].l) && st[0][j].l >= 1.0f;
            CHECK_MSG(finite, "%s hd %d: a running sum is not finite or below 1", tables[t]->name, hd);
        }
        for (int i = 0; i < 4; i++) free(st[i]), free(acc[i]);
        scen_free(&s);
    }
}

/* ---- element-wise ops ---- */

/* |y - exp(x)| in units of the float spacing at exp(x), over [-87, 88.7] where exp is normal,
 * a dense grid plus the edges; and the saturations: 0 below the denormals, +inf, NaN. */
static void exp_accuracy(void) {
    if (!kiln_kernels_find("avx512")) {
        printf("  (avx512 not supported: exp test skipped)\n");
        return;
    }
    enum { N = 1 << 16 };
    static float x[N], y[N];
    double worst = 0, worst_x = 0;
    for (int pass = 0; pass < 64; pass++) {
        for (int i = 0; i < N; i++) x[i] = -87.0f + (float)((double)(pass * N + i) * (175.7 / (64.0 * N)));
        kiln_avx512_exp(x, y, N);
        for (int i = 0; i < N; i++) {
            double e = exp((double)x[i]);
            float ef = (float)e;
            double ulp = (double)nextafterf(ef, INFINITY) - (double)ef;
            double err = fabs((double)y[i] - e) / ulp;
            if (err > worst) worst = err, worst_x = x[i];
        }
    }
    CHECK_MSG(worst <= 2.0, "max error %.3f ulp at x = %.9g", worst, worst_x);
    printf("  avx512 exp: max error %.3f ulp (at %.9g)\n", worst, worst_x);
    float sx[] = {-INFINITY, -1000.0f, -104.0f, 0.0f, 89.0f, 1000.0f, INFINITY, NAN, -90.0f, -1e-30f};
    float sy[KILN_ARRAY_LEN(sx)];
    kiln_avx512_exp(sx, sy, (int64_t)KILN_ARRAY_LEN(sx));
    CHECK(sy[0] == 0.0f && sy[1] == 0.0f && sy[2] == 0.0f);
    CHECK(sy[3] == 1.0f);
    CHECK(isinf(sy[4]) && isinf(sy[5]) && isinf(sy[6]));
    CHECK(isnan(sy[7]));
    CHECK_NEAR(sy[8] / exp(-90.0), 1.0, 1e-3); /* denormal: a few bits */
    CHECK(sy[9] == 1.0f);
}

/* SiLU over [-100, 100] (saturated both ends) relative to ref; RMSNorm and softmax on lengths up
 * to 5000. Tolerances: SiLU 4e-7 relative (exp within 2 ulp, then one add, divide, multiply);
 * RMSNorm 2.5e-7 relative (the double sum of squares differs only in order); softmax 1e-6
 * relative on each probability. */
static void elementwise_vs_ref(void) {
    kiln_rng r;
    kiln_rng_seed(&r, 3);
    const int lens[] = {1, 15, 16, 17, 100, 2048, 5003};
    for (int t = 0; t < n_tables; t++) {
        const kiln_kernels *T = tables[t];
        for (size_t li = 0; li < KILN_ARRAY_LEN(lens); li++) {
            int n = lens[li];
            float *g1 = malloc(sizeof(float) * n), *g2 = malloc(sizeof(float) * n), *u = malloc(sizeof(float) * n);
            float *o1 = malloc(sizeof(float) * n), *o2 = malloc(sizeof(float) * n);
            for (int i = 0; i < n; i++) g1[i] = g2[i] = frand(&r) * 100, u[i] = frand(&r);
            T->silu_mul(g1, u, n);
            kiln_kernels_ref.silu_mul(g2, u, n);
            int bad = 0;
            for (int i = 0; i < n; i++) bad += !(fabsf(g1[i] - g2[i]) <= 4e-7f * fabsf(g2[i]) + 1e-37f);
            CHECK_MSG(bad == 0, "%s silu n %d: %d outside", T->name, n, bad);
            for (int i = 0; i < n; i++) g1[i] = frand(&r) * (li % 2 ? 1e-3f : 50.0f);
            T->rmsnorm(g1, u, n, 1e-6f, o1);
            kiln_kernels_ref.rmsnorm(g1, u, n, 1e-6f, o2);
            bad = 0;
            for (int i = 0; i < n; i++) bad += !(fabsf(o1[i] - o2[i]) <= 2.5e-7f * fabsf(o2[i]));
            T->rmsnorm(g1, NULL, n, 1e-6f, o1);
            kiln_kernels_ref.rmsnorm(g1, NULL, n, 1e-6f, o2);
            for (int i = 0; i < n; i++) bad += !(fabsf(o1[i] - o2[i]) <= 2.5e-7f * fabsf(o2[i]));
            CHECK_MSG(bad == 0, "%s rmsnorm n %d: %d outside", T->name, n, bad);
            for (int i = 0; i < n; i++) o1[i] = o2[i] = frand(&r) * 30;
            T->softmax(o1, n);
            kiln_kernels_ref.softmax(o2, n);
            bad = 0;
            for (int i = 0; i < n; i++) bad += !(fabsf(o1[i] - o2[i]) <= 1e-6f * o2[i] + 1e-38f);
            CHECK_MSG(bad == 0, "%s softmax n %d: %d outside", T->name, n, bad);
            free(g1), free(g2), free(u), free(o1), free(o2);
        }
    }
}

/* kiln_rope_angles + kiln_rope_apply (angles made once per position) give every table's rope op
 * bit for bit, both pair layouts, with and without frequency factors, positions up to 10^6. */
static void rope_two_steps(void) {
    kiln_rng r;
    kiln_rng_seed(&r, 5);
    const int hd = 64, heads = 3;
    float x[3 * 64], y[3 * 64], cs[64], ff[32];
    for (int i = 0; i < 32; i++) ff[i] = 1.0f + (float)i * 0.25f;
    for (int t = 0; t < n_tables; t++)
        for (int it = 0; it < 40; it++) {
            int n_rot = 2 * (1 + (int)(kiln_rng_u64(&r) % 32)), type = it % 2 ? KILN_KROPE_NEOX : KILN_KROPE_NORM;
            int32_t pos = it < 20 ? it : (int32_t)(kiln_rng_u64(&r) % 1000000);
            const float *f = it % 3 == 0 ? ff : NULL;
            for (int i = 0; i < heads * hd; i++) x[i] = y[i] = frand(&r);
            tables[t]->rope(x, heads, hd, n_rot, pos, 10000.0f, f, type);
            kiln_rope_angles(n_rot, pos, 10000.0f, f, cs);
            kiln_rope_apply(y, heads, hd, n_rot, cs, type);
            CHECK_MSG(memcmp(x, y, sizeof(x)) == 0, "%s n_rot %d pos %d type %d", tables[t]->name, n_rot, pos, type);
        }
}

int main(void) {
    const char *names[] = {"ref", "avx2", "avx512"};
    for (size_t i = 0; i < KILN_ARRAY_LEN(names); i++) {
        const kiln_kernels *T = kiln_kernels_find(names[i]);
        if (T) tables[n_tables++] = T;
        else printf("  (%s kernels not supported by this CPU: skipped)\n", names[i]);
    }
    RUN(attn_vs_definition);
    RUN(attn_grouping_invariance);
    RUN(exp_accuracy);
    RUN(elementwise_vs_ref);
    RUN(rope_two_steps);
    return TEST_REPORT("test_kernels_vec");
}
