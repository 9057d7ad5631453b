/* test_sample.c: sampler and stop matcher. Expected values come from formulas written out here
 * (softmax, hand-derived filtered sets) or from tests/ref/sample_ref.py (numpy), never from the
 * code under test. Empirical draws are checked with a chi-square bound; stop strings against a
 * brute-force search over the whole text. */
#include "sample/sample.h"
#include "test.h"

#include <unistd.h>

/* ---- helpers ---- */

static kiln_sampler *mk(const kiln_sampler_params *p, int32_t n_vocab) {
    kiln_sampler *s = NULL;
    kiln_err err = kiln_sampler_new(p, n_vocab, NULL, &s);
    CHECK_MSG(err == KILN_OK, "kiln_sampler_new: %s", kiln_errmsg());
    return s;
}

static void softmax_d(const double *l, int n, double *out) {
    double m = -INFINITY, z = 0;
    for (int i = 0; i < n; i++) m = l[i] > m ? l[i] : m;
    for (int i = 0; i < n; i++) z += l[i] == -INFINITY ? 0 : exp(l[i] - m);
    for (int i = 0; i < n; i++) out[i] = l[i] == -INFINITY ? 0 : exp(l[i] - m) / z;
}

/* Draws n tokens from the same logits and returns the chi-square statistic against expected
 * probabilities (cells with expected 0 must never be drawn: counted in *n_impossible). */
static double chi_square(kiln_sampler *s, const float *logits, int V, const double *expect, int n,
                         int *n_impossible) {
    int counts[64] = {0};
    float buf[64];
    kiln_sample_result r;
    *n_impossible = 0;
    for (int k = 0; k < n; k++) {
        memcpy(buf, logits, sizeof(float) * (size_t)V);
        if (kiln_sampler_sample(s, buf, &r) != KILN_OK) return INFINITY;
        counts[r.token]++;
    }
    double chi = 0;
    for (int i = 0; i < V; i++) {
        double e = expect[i] * n;
        if (e == 0) {
            *n_impossible += counts[i];
            continue;
        }
        chi += (counts[i] - e) * (counts[i] - e) / e;
    }
    return chi;
}

/* Chi-square critical values at p = 0.001 for df = 1..10. */
static double chi_crit(int df) {
    static const double t[] = {10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59};
    return t[df - 1];
}

/* ---- parameters ---- */

static void params_defaults(void) {
    kiln_sampler_params p;
    kiln_sampler_params_default(&p);
    CHECK_NEAR(p.temperature, 1.0, 0);
    CHECK_NEAR(p.top_p, 1.0, 0);
    CHECK(p.top_k == 0 || p.top_k == -1);
    CHECK_NEAR(p.min_p, 0.0, 0);
    CHECK_NEAR(p.repetition_penalty, 1.0, 0);
    CHECK_NEAR(p.presence_penalty, 0.0, 0);
    CHECK_NEAR(p.frequency_penalty, 0.0, 0);
    CHECK_EQ_INT(p.n_logit_bias, 0);
    CHECK(!p.has_seed);
    CHECK_EQ_INT(p.n_top_logprobs, -1);
    CHECK_EQ_INT(kiln_sampler_params_check(&p, 10, NULL), KILN_OK);
}

static void params_errors_name_field(void) {
    kiln_sampler_params p;
    const char *field;
    kiln_logit_bias lb[2] = {{1, 5.0f}, {10, 1.0f}};
#define BAD(name, stmt)                                                                        \
    do {                                                                                       \
        kiln_sampler_params_default(&p);                                                       \
        stmt;                                                                                  \
        field = NULL;                                                                          \
        CHECK_EQ_INT(kiln_sampler_params_check(&p, 10, &field), KILN_ERR_INVALID);             \
        CHECK_STR(field, name);                                                                \
        CHECK_MSG(strncmp(kiln_errmsg(), name ": ", strlen(name) + 2) == 0, "msg \"%s\"",      \
                  kiln_errmsg());                                                              \
        kiln_sampler *s_ = (kiln_sampler *)1;                                                  \
        CHECK_EQ_INT(kiln_sampler_new(&p, 10, NULL, &s_), KILN_ERR_INVALID);                   \
        CHECK(s_ == NULL);                                                                     \
    } while (0)
    BAD("temperature", p.temperature = -0.5f);
    BAD("temperature", p.temperature = NAN);
    BAD("temperature", p.temperature = INFINITY);
    BAD("temperature", p.temperature = 2.01f);
    BAD("top_p", p.top_p = 0.0f);
    BAD("top_p", p.top_p = 1.5f);
    BAD("top_p", p.top_p = NAN);
    BAD("top_k", p.top_k = -2);
    BAD("min_p", p.min_p = -0.1f);
    BAD("min_p", p.min_p = 1.1f);
    BAD("presence_penalty", p.presence_penalty = 2.5f);
    BAD("presence_penalty", p.presence_penalty = -2.01f);
    BAD("frequency_penalty", p.frequency_penalty = -3.0f);
    BAD("frequency_penalty", p.frequency_penalty = NAN);
    BAD("repetition_penalty", p.repetition_penalty = 0.0f);
    BAD("repetition_penalty", p.repetition_penalty = -1.0f);
    BAD("repetition_penalty", p.repetition_penalty = INFINITY);
    BAD("logit_bias", (p.logit_bias = lb, p.n_logit_bias = 2)); /* token 10 of 10 */
    BAD("logit_bias", (lb[1].token = -1, p.logit_bias = lb, p.n_logit_bias = 2));
    BAD("logit_bias", (lb[1].token = 2, lb[1].bias = NAN, p.logit_bias = lb, p.n_logit_bias = 2));
    BAD("logit_bias", (p.logit_bias = NULL, p.n_logit_bias = 1));
    BAD("top_logprobs", p.n_top_logprobs = 21);
    BAD("top_logprobs", p.n_top_logprobs = -2);
#undef BAD
    /* boundaries that are valid */
    kiln_sampler_params_default(&p);
    p.temperature = 2.0f;
    p.top_p = 1.0f;
    p.top_k = -1;
    p.min_p = 1.0f;
    p.presence_penalty = -2.0f;
    p.frequency_penalty = 2.0f;
    p.repetition_penalty = 2.0f;
    p.n_top_logprobs = 20;
    lb[0] = (kiln_logit_bias){9, 1e9f}; /* clamped, not rejected (vLLM) */
    p.logit_bias = lb;
    p.n_logit_bias = 1;
    CHECK_EQ_INT(kiln_sampler_params_check(&p, 10, &field), KILN_OK);
    CHECK(field == NULL);
}

/* ---- greedy ---- */

static void greedy_argmax_and_ties(void) {
    kiln_sampler_params p;
    kiln_sampler_params_default(&p);
    p.temperature = 0.0f;
    kiln_sampler *s = mk(&p, 8);
    float l[8] = {0.1f, 2.0f, -1.0f, 3.5f, 0.0f, 3.5f, 3.4f, -INFINITY};
    kiln_sample_result r;
    CHECK_EQ_INT(kiln_sampler_sample(s, l, &r), KILN_OK);
    CHECK_EQ_INT(r.token, 3); /* tie between 3 and 5: the lowest id */
    float l2[8] = {NAN, 1.0f, NAN, 0.5f, 7.0f, 7.0f, 1.0f, 0.0f};
    CHECK_EQ_INT(kiln_sampler_sample(s, l2, &r), KILN_OK);
    CHECK_EQ_INT(r.token, 4);
    kiln_sampler_free(s);

    /* vLLM raises a temperature in (0, 0.01) to 0.01: not greedy, softmax(l / 0.01) */
    p.temperature = 5e-6f;
    s = mk(&p, 8);
    float l3[8] = {1.0f, 1.2f, 0.9f, 1.1f, 1.19f, 0.0f, 0.0f, 0.0f}, probs[8];
    double ld[8], want[8];
    for (int i = 0; i < 8; i++) ld[i] = l3[i] / 0.01;
    softmax_d(ld, 8, want);
    CHECK_EQ_INT(kiln_sampler_dist(s, l3, probs), KILN_OK);
    for (int i = 0; i < 8; i++) CHECK_NEAR(probs[i], want[i], 1e-5);
    CHECK(probs[4] > 0.2); /* 1.19 vs 1.2: e^-1 relative */
    kiln_sampler_free(s);
}

static void greedy_applies_bias_and_penalties(void) {
    kiln_sampler_params p;
    kiln_sampler_params_default(&p);
    p.temperature = 0.0f;
    kiln_logit_bias lb[1] = {{2, 1.5f}};
    p.logit_bias = lb;
    p.n_logit_bias = 1;
    kiln_sampler *s = mk(&p, 4);
    float l[4] = {1.0f, 2.0f, 1.0f, 0.0f}; /* token 2: 1.0 + 1.5 = 2.5 > 2.0 */
    kiln_sample_result r;
    CHECK_EQ_INT(kiln_sampler_sample(s, l, &r), KILN_OK);
    CHECK_EQ_INT(r.token, 2);
    kiln_sampler_free(s);

    kiln_sampler_params_default(&p);
    p.temperature = 0.0f;
    p.repetition_penalty = 2.0f;
    s = mk(&p, 4);
    int32_t prompt[] = {1};
    CHECK_EQ_INT(kiln_sampler_accept_prompt(s, prompt, 1), KILN_OK);
    float l2[4] = {1.5f, 2.0f, 1.0f, 0.0f}; /* token 1: 2.0 / 2 = 1.0 < 1.5 */
    CHECK_EQ_INT(kiln_sampler_sample(s, l2, &r), KILN_OK);
    CHECK_EQ_INT(r.token, 0);
    kiln_sampler_free(s);
}

static void top_k_1_equals_greedy(void) {
    enum { V = 1000 };
    static float l[V], copy[V];
    kiln_rng g;
    kiln_rng_seed(&g, 7);
    kiln_sampler_params p;
    kiln_sampler_params_default(&p);
    p.top_k = 1;
    p.temperature = 1.3f;
    p.has_seed = true;
    p.seed = 3;
    kiln_sampler *s = mk(&p, V);
    for (int k = 0; k < 50; k++) {
        int best = 0;
        for (int i = 0; i < V; i++) {
            l[i] = kiln_rng_normal(&g) * 4;
            if (l[i] > l[best]) best = i;
        }
        memcpy(copy, l, sizeof(l));
        kiln_sample_result r;
        CHECK_EQ_INT(kiln_sampler_sample(s, copy, &r), KILN_OK);
        CHECK_EQ_INT(r.token, best);
    }
    kiln_sampler_free(s);
}

/* ---- distributions against hand-derived values ---- */

static void dist_of(const kiln_sampler_params *p, const float *logits, int V, float *probs) {
    float buf[64];
    kiln_sampler *s = mk(p, V);
    if (!s) return;
    memcpy(buf, logits, sizeof(float) * (size_t)V);
    CHECK_EQ_INT(kiln_sampler_dist(s, buf, probs), KILN_OK);
    kiln_sampler_free(s);
}

static void filters_hand_derived(void) {
    /* probabilities 0.5, 0.25, 0.15, 0.1 as logits log(p) */
    const double p0[4] = {0.5, 0.25, 0.15, 0.1};
    float l[4];
    for (int i = 0; i < 4; i++) l[i] = (float)log(p0[i]);
    kiln_sampler_params p;
    float got[8];

    /* top_p 0.7: masses before each token are 0, 0.5, 0.75, 0.9: keep {0, 1} -> 2/3, 1/3 */
    kiln_sampler_params_default(&p);
    p.top_p = 0.7f;
    dist_of(&p, l, 4, got);
    CHECK_NEAR(got[0], 2.0 / 3, 1e-6);
    CHECK_NEAR(got[1], 1.0 / 3, 1e-6);
    CHECK_NEAR(got[2], 0, 0);
    CHECK_NEAR(got[3], 0, 0);
    /* top_p 0.4: only token 0 */
    p.top_p = 0.4f;
    dist_of(&p, l, 4, got);
    CHECK_NEAR(got[0], 1.0, 1e-6);
    CHECK_NEAR(got[1], 0, 0);
    /* exactly representable boundary: two equal tokens, top_p 0.5: the mass before the second
     * is 0.5, not < 0.5, so only the first (lower id) stays; vLLM: ascending cumsum [0.5, 1],
     * 0.5 <= 1 - 0.5 is removed */
    const float two[2] = {0.0f, 0.0f};
    p.top_p = 0.5f;
    dist_of(&p, two, 2, got);
    CHECK_NEAR(got[0], 1.0, 0);
    CHECK_NEAR(got[1], 0.0, 0);
    p.top_p = 0.50001f;
    dist_of(&p, two, 2, got);
    CHECK_NEAR(got[0], 0.5, 1e-7);
    CHECK_NEAR(got[1], 0.5, 1e-7);
    /* top_p 0.8: keep {0, 1, 2} */
    p.top_p = 0.8f;
    dist_of(&p, l, 4, got);
    CHECK_NEAR(got[2], 0.15 / 0.9, 1e-6);
    CHECK_NEAR(got[3], 0, 0);

    /* top_k 2 -> 2/3, 1/3 */
    kiln_sampler_params_default(&p);
    p.top_k = 2;
    dist_of(&p, l, 4, got);
    CHECK_NEAR(got[0], 2.0 / 3, 1e-6);
    CHECK_NEAR(got[1], 1.0 / 3, 1e-6);
    CHECK_NEAR(got[2] + got[3], 0, 0);
    /* top_k >= V is off */
    p.top_k = 4;
    dist_of(&p, l, 4, got);
    for (int i = 0; i < 4; i++) CHECK_NEAR(got[i], p0[i], 1e-6);
    p.top_k = -1;
    dist_of(&p, l, 4, got);
    for (int i = 0; i < 4; i++) CHECK_NEAR(got[i], p0[i], 1e-6);

    /* min_p 0.25: threshold 0.125 -> keep {0, 1, 2} */
    kiln_sampler_params_default(&p);
    p.min_p = 0.25f;
    dist_of(&p, l, 4, got);
    CHECK_NEAR(got[0], 0.5 / 0.9, 1e-6);
    CHECK_NEAR(got[2], 0.15 / 0.9, 1e-6);
    CHECK_NEAR(got[3], 0, 0);

    /* min_p is applied before top_p (vLLM v1): min_p 0.25 leaves 0.5/0.9, 0.25/0.9, 0.15/0.9
     * (0.556, 0.278, 0.167); then top_p 0.8: masses before are 0, 0.556, 0.833 -> keep {0, 1}. */
    p.top_p = 0.8f;
    dist_of(&p, l, 4, got);
    CHECK_NEAR(got[0], 2.0 / 3, 1e-6);
    CHECK_NEAR(got[1], 1.0 / 3, 1e-6);
    CHECK_NEAR(got[2], 0, 0);

    /* temperature 0.5 squares the probabilities before renormalizing */
    kiln_sampler_params_default(&p);
    p.temperature = 0.5f;
    dist_of(&p, l, 4, got);
    double zz = 0;
    for (int i = 0; i < 4; i++) zz += p0[i] * p0[i];
    for (int i = 0; i < 4; i++) CHECK_NEAR(got[i], p0[i] * p0[i] / zz, 1e-6);

    /* top_k ties: exactly k tokens, lower ids first */
    float tie[5] = {1.0f, 2.0f, 2.0f, 2.0f, 0.0f};
    kiln_sampler_params_default(&p);
    p.top_k = 2;
    dist_of(&p, tie, 5, got);
    CHECK_NEAR(got[1], 0.5, 1e-6);
    CHECK_NEAR(got[2], 0.5, 1e-6);
    CHECK_NEAR(got[3], 0, 0);
}

static void temperature_and_top_p_frequencies(void) {
    const float l[6] = {1.0f, 0.5f, 2.0f, -1.0f, 0.0f, 1.5f};
    double ld[6], e[6];
    kiln_sampler_params p;
    int bad;
    const int N = 40000;

    /* temperature 0.7: p_i = softmax(l / 0.7) */
    for (int i = 0; i < 6; i++) ld[i] = l[i] / 0.7;
    softmax_d(ld, 6, e);
    kiln_sampler_params_default(&p);
    p.temperature = 0.7f;
    p.has_seed = true;
    p.seed = 11;
    kiln_sampler *s = mk(&p, 6);
    double chi = chi_square(s, l, 6, e, N, &bad);
    CHECK_MSG(chi < chi_crit(5), "chi2 %g", chi);
    CHECK_EQ_INT(bad, 0);
    kiln_sampler_free(s);

    /* temperature 1.0, top_p 0.8: softmax(l) = .167 .101 .453 .023 .061 .275 (ids 0..5):
     * by rank 2 (.453), 5 (.275), 0 (.167): masses before are 0, .453, .728 -> keep {2, 5, 0} */
    for (int i = 0; i < 6; i++) ld[i] = l[i];
    softmax_d(ld, 6, e);
    CHECK(e[2] < 0.8 && e[2] + e[5] < 0.8 && e[2] + e[5] + e[0] >= 0.8); /* the hand derivation */
    double kept = e[2] + e[5] + e[0];
    double e2[6] = {e[0] / kept, 0, e[2] / kept, 0, 0, e[5] / kept};
    p.temperature = 1.0f;
    p.top_p = 0.8f;
    s = mk(&p, 6);
    chi = chi_square(s, l, 6, e2, N, &bad);
    CHECK_MSG(chi < chi_crit(2), "chi2 %g", chi);
    CHECK_EQ_INT(bad, 0);
    kiln_sampler_free(s);

    /* top_k 3 with temperature 1.5 */
    for (int i = 0; i < 6; i++) ld[i] = l[i] / 1.5;
    ld[1] = ld[3] = ld[4] = -INFINITY; /* ranks 4..6: ids 1 (0.5), 4 (0.0), 3 (-1.0) */
    softmax_d(ld, 6, e);
    kiln_sampler_params_default(&p);
    p.temperature = 1.5f;
    p.top_k = 3;
    p.has_seed = true;
    p.seed = 12;
    s = mk(&p, 6);
    chi = chi_square(s, l, 6, e, N, &bad);
    CHECK_MSG(chi < chi_crit(2), "chi2 %g", chi);
    CHECK_EQ_INT(bad, 0);
    kiln_sampler_free(s);

    /* min_p 0.3 at temperature 1: keeps p_i >= 0.3 * 0.453 = 0.136: ids 2, 5, 0 */
    for (int i = 0; i < 6; i++) ld[i] = l[i];
    ld[1] = ld[3] = ld[4] = -INFINITY;
    softmax_d(ld, 6, e);
    kiln_sampler_params_default(&p);
    p.min_p = 0.3f;
    p.has_seed = true;
    p.seed = 13;
    s = mk(&p, 6);
    chi = chi_square(s, l, 6, e, N, &bad);
    CHECK_MSG(chi < chi_crit(2), "chi2 %g", chi);
    CHECK_EQ_INT(bad, 0);
    kiln_sampler_free(s);
}

/* ---- numpy reference on random cases ---- */

typedef struct ref_case {
    kiln_sampler_params p;
    kiln_logit_bias bias[4];
    int32_t prompt[8], gen[12], mask[3];
    int n_prompt, n_gen, n_mask, V;
    float logits[64];
} ref_case;

static void make_case(kiln_rng *g, ref_case *c) {
    static const float temps[] = {0.0f, 0.3f, 0.7f, 1.0f, 1.0f, 1.5f, 2.0f};
    static const float top_ps[] = {1.0f, 1.0f, 0.5f, 0.9f, 0.95f, 0.3f};
    static const int top_ks[] = {0, -1, 1, 3, 10, 0, 50};
    static const float min_ps[] = {0.0f, 0.0f, 0.05f, 0.2f};
    static const int Vs[] = {5, 17, 40, 64};
    memset(c, 0, sizeof(*c));
    kiln_sampler_params_default(&c->p);
    c->V = Vs[kiln_rng_u64(g) % 4];
    c->p.temperature = temps[kiln_rng_u64(g) % 7];
    c->p.top_p = top_ps[kiln_rng_u64(g) % 6];
    c->p.top_k = top_ks[kiln_rng_u64(g) % 7];
    c->p.min_p = min_ps[kiln_rng_u64(g) % 4];
    if (kiln_rng_u64(g) % 2) c->p.presence_penalty = (float)(kiln_rng_uniform(g) * 4 - 2);
    if (kiln_rng_u64(g) % 2) c->p.frequency_penalty = (float)(kiln_rng_uniform(g) * 4 - 2);
    if (kiln_rng_u64(g) % 2) c->p.repetition_penalty = (float)(0.5 + kiln_rng_uniform(g) * 1.5);
    int nb = (int)(kiln_rng_u64(g) % 5);
    for (int i = 0; i < nb; i++) {
        c->bias[i].token = (int32_t)(kiln_rng_u64(g) % (uint64_t)c->V);
        c->bias[i].bias = (float)(kiln_rng_uniform(g) * 10 - 5);
        if (kiln_rng_u64(g) % 8 == 0) c->bias[i].bias = kiln_rng_u64(g) % 2 ? 150.0f : -100.0f;
    }
    c->p.n_logit_bias = nb;
    c->n_prompt = (int)(kiln_rng_u64(g) % 9);
    for (int i = 0; i < c->n_prompt; i++) c->prompt[i] = (int32_t)(kiln_rng_u64(g) % (uint64_t)c->V);
    c->n_gen = (int)(kiln_rng_u64(g) % 13);
    for (int i = 0; i < c->n_gen; i++) c->gen[i] = (int32_t)(kiln_rng_u64(g) % 5); /* repeats; V >= 5 */
    c->n_mask = (int)(kiln_rng_u64(g) % 4);
    for (int i = 0; i < c->n_mask; i++) c->mask[i] = (int32_t)(kiln_rng_u64(g) % (uint64_t)c->V);
    for (int i = 0; i < c->V; i++) c->logits[i] = kiln_rng_normal(g) * 3.0f;
}

static void print_case(FILE *f, const ref_case *c) {
    const kiln_sampler_params *p = &c->p;
    fprintf(f, "%.9g %.9g %d %.9g %.9g %.9g %.9g %d", p->temperature, p->top_p, (int)p->top_k,
            p->min_p, p->presence_penalty, p->frequency_penalty, p->repetition_penalty,
            (int)p->n_logit_bias);
    for (int i = 0; i < p->n_logit_bias; i++) fprintf(f, " %d %.9g", (int)c->bias[i].token, c->bias[i].bias);
    fprintf(f, " %d", c->n_prompt);
    for (int i = 0; i < c->n_prompt; i++) fprintf(f, " %d", (int)c->prompt[i]);
    fprintf(f, " %d", c->n_gen);
    for (int i = 0; i < c->n_gen; i++) fprintf(f, " %d", (int)c->gen[i]);
    fprintf(f, " %d", c->n_mask);
    for (int i = 0; i < c->n_mask; i++) fprintf(f, " %d", (int)c->mask[i]);
    fprintf(f, " %d", c->V);
    for (int i = 0; i < c->V; i++) fprintf(f, " %.9g", c->logits[i]);
    fputc('\n', f);
}

static void numpy_reference_cases(void) {
    enum { N_CASES = 400 };
    static ref_case cases[N_CASES];
    const char *root = getenv("KILN_ROOT");
    const char *py = getenv("PYTHON");
    char script[4096], in_path[] = "/tmp/kiln_sample_in_XXXXXX", out_path[] = "/tmp/kiln_sample_out_XXXXXX";
    snprintf(script, sizeof(script), "%s/tests/ref/sample_ref.py", root ? root : ".");
    if (!py) py = "/usr/bin/python3";
    int fd_in = mkstemp(in_path), fd_out = mkstemp(out_path);
    CHECK(fd_in >= 0 && fd_out >= 0);
    if (fd_in < 0 || fd_out < 0) return;
    close(fd_out);
    FILE *f = fdopen(fd_in, "w");
    kiln_rng g;
    kiln_rng_seed(&g, 2024);
    for (int k = 0; k < N_CASES; k++) {
        make_case(&g, &cases[k]);
        print_case(f, &cases[k]);
    }
    fclose(f);
    char cmd[8192];
    snprintf(cmd, sizeof(cmd), "'%s' '%s' < '%s' > '%s'", py, script, in_path, out_path);
    int rc = system(cmd);
    CHECK_MSG(rc == 0, "%s: exit %d", cmd, rc);
    FILE *res = fopen(out_path, "r");
    CHECK(res != NULL);
    int n_checked = 0;
    for (int k = 0; res && k < N_CASES; k++) {
        ref_case *c = &cases[k];
        double want_p[64], want_lp[64];
        bool ok = true;
        for (int i = 0; i < c->V && ok; i++) ok = fscanf(res, "%lf", &want_p[i]) == 1;
        for (int i = 0; i < c->V && ok; i++) ok = fscanf(res, "%lf", &want_lp[i]) == 1;
        CHECK_MSG(ok, "case %d: reference output truncated", k);
        if (!ok) break;

        c->p.logit_bias = c->bias;
        c->p.n_top_logprobs = 5;
        kiln_sampler *s = mk(&c->p, c->V);
        if (!s) continue;
        CHECK_EQ_INT(kiln_sampler_accept_prompt(s, c->prompt, (size_t)c->n_prompt), KILN_OK);
        for (int i = 0; i < c->n_gen; i++) CHECK_EQ_INT(kiln_sampler_accept(s, c->gen[i]), KILN_OK);
        for (int i = 0; i < c->n_mask; i++) kiln_sampler_mask(s, c->mask[i]);
        float buf[64], probs[64];
        memcpy(buf, c->logits, sizeof(buf));
        CHECK_EQ_INT(kiln_sampler_dist(s, buf, probs), KILN_OK);
        for (int i = 0; i < c->V; i++)
            CHECK_MSG(fabs(probs[i] - want_p[i]) <= 2e-5, "case %d token %d: p %.7g, numpy %.7g", k,
                      i, probs[i], want_p[i]);
        /* a draw lands on a token of positive probability; its logprob is the raw one */
        kiln_sample_result r;
        memcpy(buf, c->logits, sizeof(buf));
        CHECK_EQ_INT(kiln_sampler_sample(s, buf, &r), KILN_OK);
        CHECK_MSG(r.token >= 0 && r.token < c->V && want_p[r.token] > 0, "case %d: drew %d", k,
                  r.token);
        if (r.token >= 0 && r.token < c->V) CHECK_NEAR(r.logprob, want_lp[r.token], 1e-4);
        CHECK_EQ_INT(r.n_top, 5);
        for (int j = 0; j < r.n_top; j++) CHECK_NEAR(r.top[j].logprob, want_lp[r.top[j].token], 1e-4);
        kiln_sampler_free(s);
        n_checked++;
    }
    if (res) fclose(res);
    CHECK_EQ_INT(n_checked, N_CASES);
    unlink(in_path);
    unlink(out_path);
}

/* ---- seeds ---- */

static void run_seq(uint64_t seed, bool has_seed, int32_t *out, int n) {
    enum { V = 50 };
    kiln_sampler_params p;
    kiln_sampler_params_default(&p);
    p.temperature = 0.9f;
    p.top_p = 0.95f;
    p.frequency_penalty = 0.3f;
    p.seed = seed;
    p.has_seed = has_seed;
    kiln_sampler *s = mk(&p, V);
    kiln_rng g;
    kiln_rng_seed(&g, 99); /* the "model": fixed logits per step */
    for (int k = 0; k < n; k++) {
        float l[V];
        for (int i = 0; i < V; i++) l[i] = kiln_rng_normal(&g);
        kiln_sample_result r;
        CHECK_EQ_INT(kiln_sampler_sample(s, l, &r), KILN_OK);
        out[k] = r.token;
    }
    kiln_sampler_free(s);
}

static void seed_determinism(void) {
    int32_t a[200], b[200], c[200], d[200], e[200];
    run_seq(42, true, a, 200);
    run_seq(42, true, b, 200);
    run_seq(43, true, c, 200);
    run_seq(0, false, d, 200);
    run_seq(0, false, e, 200);
    CHECK(memcmp(a, b, sizeof(a)) == 0);
    int diff_c = 0, diff_de = 0;
    for (int i = 0; i < 200; i++) {
        diff_c += a[i] != c[i];
        diff_de += d[i] != e[i];
    }
    CHECK_MSG(diff_c > 20, "seeds 42 and 43 differ at %d of 200 positions", diff_c);
    CHECK_MSG(diff_de > 20, "unseeded samplers differ at %d of 200 positions", diff_de);
}

/* ---- logprobs ---- */

static void logprobs_raw_and_ordered(void) {
    enum { V = 12 };
    const float l[V] = {0.5f, 3.0f, -2.0f, 3.0f, 1.0f, 2.5f, -INFINITY, 0.0f, 2.9f, 1.0f, -1.0f, 0.25f};
    double lse = 0, m = 3.0;
    for (int i = 0; i < V; i++) lse += l[i] == -INFINITY ? 0 : exp(l[i] - m);
    lse = m + log(lse);
    /* expected order by logit desc, id asc: 1, 3, 8, 5, 4, 9, 0, 11, 7, 10, 2, 6 */
    const int order[V] = {1, 3, 8, 5, 4, 9, 0, 11, 7, 10, 2, 6};

    kiln_sampler_params p;
    kiln_sampler_params_default(&p);
    p.n_top_logprobs = 20; /* more than V: clamped to V */
    p.temperature = 0.3f;
    kiln_logit_bias lb[1] = {{10, 100.0f}}; /* forces token 10; raw logprob unaffected */
    p.logit_bias = lb;
    p.n_logit_bias = 1;
    kiln_sampler *s = mk(&p, V);
    float buf[V];
    memcpy(buf, l, sizeof(buf));
    kiln_sample_result r;
    CHECK_EQ_INT(kiln_sampler_sample(s, buf, &r), KILN_OK);
    CHECK_EQ_INT(r.token, 10);
    CHECK_NEAR(r.logprob, -1.0 - lse, 1e-5);
    CHECK_EQ_INT(r.n_top, V);
    for (int j = 0; j < V && j < r.n_top; j++) {
        CHECK_EQ_INT(r.top[j].token, order[j]);
        double want = l[order[j]] == -INFINITY ? -INFINITY : l[order[j]] - lse;
        if (isinf(want)) CHECK(isinf(r.top[j].logprob) && r.top[j].logprob < 0);
        else CHECK_NEAR(r.top[j].logprob, want, 1e-5);
    }
    kiln_sampler_free(s);

    /* top 3 only; 0 = chosen token only; -1 = none */
    p.n_top_logprobs = 3;
    p.n_logit_bias = 0;
    p.temperature = 0;
    s = mk(&p, V);
    memcpy(buf, l, sizeof(buf));
    CHECK_EQ_INT(kiln_sampler_sample(s, buf, &r), KILN_OK);
    CHECK_EQ_INT(r.token, 1);
    CHECK_NEAR(r.logprob, 3.0 - lse, 1e-5);
    CHECK_EQ_INT(r.n_top, 3);
    CHECK_EQ_INT(r.top[0].token, 1);
    CHECK_EQ_INT(r.top[1].token, 3);
    CHECK_EQ_INT(r.top[2].token, 8);
    CHECK_NEAR(r.top[2].logprob, 2.9 - lse, 1e-5);
    kiln_sampler_free(s);
    p.n_top_logprobs = 0;
    s = mk(&p, V);
    memcpy(buf, l, sizeof(buf));
    CHECK_EQ_INT(kiln_sampler_sample(s, buf, &r), KILN_OK);
    CHECK_EQ_INT(r.n_top, 0);
    CHECK_NEAR(r.logprob, 3.0 - lse, 1e-5);
    kiln_sampler_free(s);
    p.n_top_logprobs = -1;
    s = mk(&p, V);
    memcpy(buf, l, sizeof(buf));
    CHECK_EQ_INT(kiln_sampler_sample(s, buf, &r), KILN_OK);
    CHECK_EQ_INT(r.n_top, 0);
    kiln_sampler_free(s);
}

/* ---- penalties and bias ---- */

static void penalties_as_defined(void) {
    enum { V = 6 };
    const float l[V] = {2.0f, -1.0f, 0.5f, 1.0f, -0.5f, 0.0f};
    kiln_sampler_params p;
    float buf[V], probs[V];
    double adj[V], want[V];

    /* repetition 1.5 over prompt {0, 1} and generated {3}: positive / 1.5, negative * 1.5 */
    kiln_sampler_params_default(&p);
    p.repetition_penalty = 1.5f;
    kiln_sampler *s = mk(&p, V);
    int32_t prompt[] = {0, 1, 1, 99, -4}; /* out-of-range ids are ignored */
    CHECK_EQ_INT(kiln_sampler_accept_prompt(s, prompt, 5), KILN_OK);
    CHECK_EQ_INT(kiln_sampler_accept(s, 3), KILN_OK);
    memcpy(buf, l, sizeof(buf));
    CHECK_EQ_INT(kiln_sampler_dist(s, buf, probs), KILN_OK);
    for (int i = 0; i < V; i++) adj[i] = l[i];
    adj[0] = 2.0 / 1.5;
    adj[1] = -1.0 * 1.5;
    adj[3] = 1.0 / 1.5;
    softmax_d(adj, V, want);
    for (int i = 0; i < V; i++) CHECK_NEAR(probs[i], want[i], 1e-6);
    kiln_sampler_free(s);

    /* presence 0.5 and frequency 0.25 over generated {2, 2, 2, 4}; the prompt does not count */
    kiln_sampler_params_default(&p);
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    s = mk(&p, V);
    int32_t prompt2[] = {0, 0, 5};
    CHECK_EQ_INT(kiln_sampler_accept_prompt(s, prompt2, 3), KILN_OK);
    int32_t gen[] = {2, 2, 2, 4};
    for (int i = 0; i < 4; i++) CHECK_EQ_INT(kiln_sampler_accept(s, gen[i]), KILN_OK);
    memcpy(buf, l, sizeof(buf));
    CHECK_EQ_INT(kiln_sampler_dist(s, buf, probs), KILN_OK);
    for (int i = 0; i < V; i++) adj[i] = l[i];
    adj[2] = 0.5 - 0.5 - 3 * 0.25;
    adj[4] = -0.5 - 0.5 - 1 * 0.25;
    softmax_d(adj, V, want);
    for (int i = 0; i < V; i++) CHECK_NEAR(probs[i], want[i], 1e-6);
    kiln_sampler_free(s);

    /* negative presence/frequency raise repeated tokens; many distinct tokens grow the table */
    enum { BIG = 5000 };
    static float lb[BIG], pb[BIG];
    kiln_sampler_params_default(&p);
    p.frequency_penalty = -0.01f;
    p.temperature = 0.0f;
    s = mk(&p, BIG);
    for (int i = 0; i < BIG; i++) CHECK_EQ_INT(kiln_sampler_accept(s, i), KILN_OK);
    CHECK_EQ_INT(kiln_sampler_accept(s, 1234), KILN_OK);
    for (int i = 0; i < BIG; i++) lb[i] = 0.0f;
    CHECK_EQ_INT(kiln_sampler_dist(s, lb, pb), KILN_OK);
    CHECK_NEAR(pb[1234], 1.0, 0); /* the only token seen twice */
    CHECK_NEAR(lb[1234], 0.02, 1e-6);
    CHECK_NEAR(lb[4999], 0.01, 1e-6);
    kiln_sampler_free(s);

    /* the sampled token enters the history: greedy with a strong frequency penalty alternates */
    kiln_sampler_params_default(&p);
    p.temperature = 0.0f;
    p.frequency_penalty = 2.0f;
    s = mk(&p, 3);
    int seq[6];
    for (int k = 0; k < 6; k++) {
        float l3[3] = {1.0f, 0.0f, -5.0f};
        kiln_sample_result r;
        CHECK_EQ_INT(kiln_sampler_sample(s, l3, &r), KILN_OK);
        seq[k] = r.token;
    }
    /* counts (c0, c1) -> logits 1 - 2 c0, -2 c1: 0, 1, 0, 1, 0, 1 */
    for (int k = 0; k < 6; k++) CHECK_EQ_INT(seq[k], k % 2);
    kiln_sampler_free(s);
}

static void logit_bias_bans_and_forces(void) {
    enum { V = 5 };
    const float l[V] = {5.0f, 1.0f, 0.0f, 4.0f, -1.0f};
    kiln_sampler_params p;
    kiln_sampler_params_default(&p);
    p.has_seed = true;
    p.seed = 5;
    kiln_logit_bias ban[1] = {{0, -100.0f}};
    p.logit_bias = ban;
    p.n_logit_bias = 1;
    kiln_sampler *s = mk(&p, V);
    int n0 = 0;
    for (int k = 0; k < 2000; k++) {
        float buf[V];
        memcpy(buf, l, sizeof(buf));
        kiln_sample_result r;
        CHECK_EQ_INT(kiln_sampler_sample(s, buf, &r), KILN_OK);
        n0 += r.token == 0;
    }
    CHECK_EQ_INT(n0, 0);
    kiln_sampler_free(s);

    kiln_logit_bias force[2] = {{4, 100.0f}, {2, 3.0f}};
    p.logit_bias = force;
    p.n_logit_bias = 2;
    s = mk(&p, V);
    int n4 = 0;
    for (int k = 0; k < 2000; k++) {
        float buf[V];
        memcpy(buf, l, sizeof(buf));
        kiln_sample_result r;
        CHECK_EQ_INT(kiln_sampler_sample(s, buf, &r), KILN_OK);
        n4 += r.token == 4;
    }
    CHECK_EQ_INT(n4, 2000);
    kiln_sampler_free(s);

    /* values past +-100 are clamped to +-100; duplicates add; the adjusted logits are left in
     * the array, and the distribution is their softmax */
    kiln_logit_bias big[4] = {{1, 1000.0f}, {3, 0.5f}, {3, 0.25f}, {2, -1e30f}};
    p.logit_bias = big;
    p.n_logit_bias = 4;
    p.temperature = 2.0f;
    s = mk(&p, V);
    float buf[V], probs[V];
    memcpy(buf, l, sizeof(buf));
    CHECK_EQ_INT(kiln_sampler_dist(s, buf, probs), KILN_OK);
    const double adj[V] = {5.0, 101.0, -100.0, 4.75, -1.0};
    double scaled[V], want[V];
    for (int i = 0; i < V; i++) {
        CHECK_NEAR(buf[i], adj[i], 1e-5);
        scaled[i] = adj[i] / 2.0;
    }
    softmax_d(scaled, V, want);
    for (int i = 0; i < V; i++) CHECK_NEAR(probs[i], want[i], 1e-6);
    kiln_sampler_free(s);
}

static void mask_one_call_only(void) {
    enum { V = 4 };
    const float l[V] = {1.0f, 3.0f, 0.0f, 2.0f};
    kiln_sampler_params p;
    kiln_sampler_params_default(&p);
    p.temperature = 0.0f;
    p.n_top_logprobs = 1;
    kiln_sampler *s = mk(&p, V);
    float buf[V];
    kiln_sample_result r;
    kiln_sampler_mask(s, 1);
    kiln_sampler_mask(s, 1);
    kiln_sampler_mask(s, 77); /* ignored */
    memcpy(buf, l, sizeof(buf));
    CHECK_EQ_INT(kiln_sampler_sample(s, buf, &r), KILN_OK);
    CHECK_EQ_INT(r.token, 3);
    CHECK_EQ_INT(r.top[0].token, 1); /* raw logprobs ignore the mask */
    memcpy(buf, l, sizeof(buf));
    CHECK_EQ_INT(kiln_sampler_sample(s, buf, &r), KILN_OK);
    CHECK_EQ_INT(r.token, 1);
    /* masking every token is an error, not a crash */
    for (int i = 0; i < V; i++) kiln_sampler_mask(s, i);
    memcpy(buf, l, sizeof(buf));
    CHECK_EQ_INT(kiln_sampler_sample(s, buf, &r), KILN_ERR_INVALID);
    float nan_all[V] = {NAN, NAN, -INFINITY, NAN};
    CHECK_EQ_INT(kiln_sampler_sample(s, nan_all, &r), KILN_ERR_INVALID);
    float pos_inf[V] = {0.0f, INFINITY, 1.0f, 2.0f};
    CHECK_EQ_INT(kiln_sampler_sample(s, pos_inf, &r), KILN_ERR_INVALID);
    CHECK(strstr(kiln_errmsg(), "+inf") != NULL);
    kiln_sampler_free(s);
}

/* ---- a real-size vocabulary: selection against a full sort ---- */

static int cmp_desc(const void *a, const void *b) {
    const int32_t *x = a, *y = b;
    extern float *g_big_logits;
    float lx = g_big_logits[*x], ly = g_big_logits[*y];
    if (lx != ly) return lx > ly ? -1 : 1;
    return *x < *y ? -1 : *x > *y;
}
float *g_big_logits;

static void large_vocab_against_full_sort(void) {
    enum { V = 152064 };
    float *l = malloc(sizeof(float) * V), *buf = malloc(sizeof(float) * V);
    float *probs = malloc(sizeof(float) * V);
    int32_t *idx = malloc(sizeof(int32_t) * V);
    double *want = malloc(sizeof(double) * V);
    kiln_rng g;
    kiln_rng_seed(&g, 17);
    for (int i = 0; i < V; i++) l[i] = kiln_rng_normal(&g) * 2.5f;
    for (int i = 0; i < 1000; i++) l[kiln_rng_u64(&g) % V] = 1.0f; /* ties */
    g_big_logits = l;
    for (int i = 0; i < V; i++) idx[i] = i;
    qsort(idx, V, sizeof(*idx), cmp_desc);

    struct {
        int top_k;
        float top_p;
    } cfg[] = {{0, 0.9f}, {0, 0.3f}, {0, 0.999f}, {40, 1.0f}, {5000, 0.95f}, {20000, 1.0f}};
    kiln_sample_scratch *sc;
    CHECK_EQ_INT(kiln_sample_scratch_new(V, &sc), KILN_OK);
    for (size_t c = 0; c < KILN_ARRAY_LEN(cfg); c++) {
        kiln_sampler_params p;
        kiln_sampler_params_default(&p);
        p.top_k = cfg[c].top_k;
        p.top_p = cfg[c].top_p;
        kiln_sampler *s = NULL;
        CHECK_EQ_INT(kiln_sampler_new(&p, V, sc, &s), KILN_OK);
        memcpy(buf, l, sizeof(float) * V);
        CHECK_EQ_INT(kiln_sampler_dist(s, buf, probs), KILN_OK);
        /* expected: walk the fully sorted order */
        int n = p.top_k > 0 ? p.top_k : V;
        double m = l[idx[0]], z = 0, mass = 0;
        for (int j = 0; j < n; j++) z += exp(l[idx[j]] - m);
        int keep = n;
        for (int j = 0; j < n; j++) {
            if (mass >= p.top_p * z) {
                keep = j;
                break;
            }
            mass += exp(l[idx[j]] - m);
        }
        double zk = 0;
        for (int j = 0; j < keep; j++) zk += exp(l[idx[j]] - m);
        for (int i = 0; i < V; i++) want[i] = 0;
        for (int j = 0; j < keep; j++) want[idx[j]] = exp(l[idx[j]] - m) / zk;
        int n_bad = 0, n_kept = 0;
        for (int i = 0; i < V; i++) {
            n_kept += probs[i] > 0;
            if (fabs(probs[i] - want[i]) > 1e-7 || ((probs[i] > 0) != (want[i] > 0))) n_bad++;
        }
        CHECK_MSG(n_bad == 0, "cfg %zu: %d tokens differ (kept %d, want %d)", c, n_bad, n_kept, keep);
        /* and sampling draws only kept tokens */
        for (int k = 0; k < 5; k++) {
            kiln_sample_result r;
            memcpy(buf, l, sizeof(float) * V);
            CHECK_EQ_INT(kiln_sampler_sample(s, buf, &r), KILN_OK);
            CHECK(r.token >= 0 && r.token < V && want[r.token] > 0);
        }
        kiln_sampler_free(s);
    }
    /* many ties at the top: top_k keeps exactly the k lowest ids among them (heap and quickselect
     * paths); ids chosen by a stride so that they are not in increasing memory order of value */
    for (size_t kk = 0; kk < 2; kk++) {
        const int32_t k = kk == 0 ? 40 : 300;
        memcpy(buf, l, sizeof(float) * V);
        for (int j = 0; j < 500; j++) buf[(j * 7919) % V] = 50.0f;
        int32_t tied_ids[500];
        for (int j = 0; j < 500; j++) tied_ids[j] = (j * 7919) % V;
        /* the k smallest ids among the tied ones: sort by id (insertion sort, 500 entries) */
        for (int a = 1; a < 500; a++)
            for (int b = a; b > 0 && tied_ids[b] < tied_ids[b - 1]; b--) {
                int32_t t = tied_ids[b];
                tied_ids[b] = tied_ids[b - 1];
                tied_ids[b - 1] = t;
            }
        kiln_sampler_params p;
        kiln_sampler_params_default(&p);
        p.top_k = k;
        kiln_sampler *s = NULL;
        CHECK_EQ_INT(kiln_sampler_new(&p, V, sc, &s), KILN_OK);
        CHECK_EQ_INT(kiln_sampler_dist(s, buf, probs), KILN_OK);
        int n_bad = 0;
        for (int j = 0; j < 500; j++) n_bad += fabs(probs[tied_ids[j]] - (j < k ? 1.0 / k : 0.0)) > 1e-6;
        CHECK_MSG(n_bad == 0, "top_k %d over 500 ties: %d tokens wrong", (int)k, n_bad);
        kiln_sampler_free(s);
    }

    /* a scratch too small for the vocabulary is refused */
    kiln_sampler_params p;
    kiln_sampler_params_default(&p);
    kiln_sampler *s = (kiln_sampler *)1;
    CHECK_EQ_INT(kiln_sampler_new(&p, V + 1, sc, &s), KILN_ERR_INVALID);
    CHECK(s == NULL);
    kiln_sample_scratch_free(sc);
    free(l);
    free(buf);
    free(probs);
    free(idx);
    free(want);
}

static void sampler_fault_injection(void) {
    kiln_sampler_params p;
    kiln_sampler_params_default(&p);
    kiln_logit_bias lb[1] = {{1, 2.0f}};
    p.logit_bias = lb;
    p.n_logit_bias = 1;
    p.repetition_penalty = 1.2f;
    p.presence_penalty = 0.5f;
    int n_ok = 0;
    for (long n = 0; n < 20; n++) {
        kiln_sampler *s = NULL;
        kiln_alloc_fail_after(n);
        kiln_err err = kiln_sampler_new(&p, 100, NULL, &s);
        kiln_err err2 = KILN_OK;
        if (err == KILN_OK) {
            for (int i = 0; i < 100 && err2 == KILN_OK; i++) err2 = kiln_sampler_accept(s, i);
        }
        kiln_alloc_fail_after(-1);
        CHECK(err == KILN_OK || err == KILN_ERR_NOMEM);
        CHECK(err2 == KILN_OK || err2 == KILN_ERR_NOMEM);
        CHECK((err == KILN_OK) == (s != NULL));
        if (err == KILN_OK && err2 == KILN_OK) n_ok++;
        /* a sampler whose history failed to grow still samples */
        if (s) {
            float l[100] = {0};
            kiln_sample_result r;
            CHECK_EQ_INT(kiln_sampler_sample(s, l, &r), KILN_OK);
        }
        kiln_sampler_free(s);
    }
    CHECK(n_ok > 0);
    kiln_sampler_free(NULL);
    kiln_sample_scratch_free(NULL);
}

/* ---- stop strings ---- */

typedef struct stream {
    char out[4096];
    size_t n_out;
    int i_stop;
    bool chunks_utf8_ok;
} stream;

/* a released chunk must not end inside a UTF-8 character (and not start with a continuation byte
 * when the text is valid UTF-8) */
static bool chunk_complete(const char *p, size_t n) {
    const unsigned char *s = (const unsigned char *)p;
    if (n == 0) return true;
    if ((s[0] & 0xc0) == 0x80) return false;
    size_t i = 0;
    while (i < n) {
        size_t len = s[i] < 0x80 ? 1 : s[i] < 0xe0 ? 2 : s[i] < 0xf0 ? 3 : 4;
        if (i + len > n) return false;
        i += len;
    }
    return true;
}

static void take_out(stream *st, const kiln_stop_out *o) {
    if (o->n_text) {
        memcpy(st->out + st->n_out, o->text, o->n_text);
        st->n_out += o->n_text;
        if (!chunk_complete(o->text, o->n_text)) st->chunks_utf8_ok = false;
    }
    st->out[st->n_out] = '\0';
    st->i_stop = o->i_stop;
}

/* Feeds `pieces` (NULL-terminated) then flushes if no stop matched. */
static void run_stream(kiln_stop_matcher *m, const char *const *pieces, stream *st) {
    memset(st, 0, sizeof(*st));
    st->chunks_utf8_ok = true;
    st->i_stop = -1;
    kiln_stop_out o;
    for (int i = 0; pieces[i]; i++) {
        CHECK_EQ_INT(kiln_stop_matcher_feed(m, pieces[i], strlen(pieces[i]), &o), KILN_OK);
        take_out(st, &o);
    }
    if (st->i_stop < 0) {
        kiln_stop_matcher_flush(m, &o);
        take_out(st, &o);
    }
}

static void stop_spans_tokens(void) {
    const char *stops[] = {"\n\nUser:"};
    kiln_stop_matcher m;
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, stops, NULL, 1, false), KILN_OK);
    kiln_stop_out o;
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "Hello\n", 6, &o), KILN_OK);
    CHECK_EQ_INT(o.n_text, 5); /* "\n" is held */
    CHECK(o.n_text == 5 && memcmp(o.text, "Hello", 5) == 0);
    CHECK_EQ_INT(o.i_stop, -1);
    CHECK_EQ_INT(kiln_stop_matcher_n_held(&m), 1);
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "\nUs", 3, &o), KILN_OK);
    CHECK_EQ_INT(o.n_text, 0);
    CHECK_EQ_INT(kiln_stop_matcher_n_held(&m), 4);
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "er: and more", 12, &o), KILN_OK);
    CHECK_EQ_INT(o.n_text, 0);
    CHECK_EQ_INT(o.i_stop, 0);
    CHECK_EQ_INT(kiln_stop_matcher_n_held(&m), 0);
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "x", 1, &o), KILN_OK); /* after the match: nothing */
    CHECK_EQ_INT(o.n_text, 0);
    CHECK_EQ_INT(o.i_stop, 0);
    kiln_stop_matcher_deinit(&m);

    /* a false start is released once it cannot match any more */
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, stops, NULL, 1, false), KILN_OK);
    stream st;
    const char *p1[] = {"a\n", "\nUse", "d it", NULL};
    run_stream(&m, p1, &st);
    CHECK_STR(st.out, "a\n\nUsed it");
    CHECK_EQ_INT(st.i_stop, -1);
    kiln_stop_matcher_deinit(&m);

    /* the stop string inside one piece, with text around it */
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, stops, NULL, 1, false), KILN_OK);
    const char *p2[] = {"ok", "!\n\nUser: hi\n\nUser:", NULL};
    run_stream(&m, p2, &st);
    CHECK_STR(st.out, "ok!");
    CHECK_EQ_INT(st.i_stop, 0);
    kiln_stop_matcher_deinit(&m);
}

static void stop_multiple_and_overlapping(void) {
    /* "bc" completes before "abcd": it wins although "abcd" starts earlier */
    const char *stops[] = {"abcd", "bc", "xyz"};
    kiln_stop_matcher m;
    stream st;
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, stops, NULL, 3, false), KILN_OK);
    const char *p1[] = {"1a", "bcd", NULL};
    run_stream(&m, p1, &st);
    CHECK_STR(st.out, "1a");
    CHECK_EQ_INT(st.i_stop, 1);
    kiln_stop_matcher_deinit(&m);

    /* the same end: the longer one (it started first) */
    const char *stops2[] = {"c", "abc"};
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, stops2, NULL, 2, true), KILN_OK);
    const char *p2[] = {"xab", "cde", NULL};
    run_stream(&m, p2, &st);
    CHECK_STR(st.out, "xabc");
    CHECK_EQ_INT(st.i_stop, 1);
    kiln_stop_matcher_deinit(&m);

    /* overlapping prefixes: "aab" inside "aaab" (the hold must restart at the right place) */
    const char *stops3[] = {"aab"};
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, stops3, NULL, 1, false), KILN_OK);
    const char *p3[] = {"a", "a", "a", "b", "z", NULL};
    run_stream(&m, p3, &st);
    CHECK_STR(st.out, "a");
    CHECK_EQ_INT(st.i_stop, 0);
    kiln_stop_matcher_deinit(&m);

    /* the longest held prefix across several stops */
    const char *stops4[] = {"<end>", "<|im_end|>"};
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, stops4, NULL, 2, false), KILN_OK);
    kiln_stop_out o;
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "t <|im", 6, &o), KILN_OK);
    CHECK_EQ_INT(o.n_text, 2);
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "_en", 3, &o), KILN_OK);
    CHECK_EQ_INT(o.n_text, 0);
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "d|>", 3, &o), KILN_OK);
    CHECK_EQ_INT(o.n_text, 0);
    CHECK_EQ_INT(o.i_stop, 1);
    kiln_stop_matcher_deinit(&m);
}

static void stop_include_in_output(void) {
    const char *stops[] = {"STOP"};
    kiln_stop_matcher m;
    stream st;
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, stops, NULL, 1, true), KILN_OK);
    const char *p1[] = {"go ST", "OP", " tail", NULL};
    run_stream(&m, p1, &st);
    CHECK_STR(st.out, "go STOP");
    CHECK_EQ_INT(st.i_stop, 0);
    kiln_stop_matcher_deinit(&m);
    /* explicit lengths: an embedded NUL is an ordinary byte */
    const char nul_stop[] = {'a', '\0', 'b'};
    const char *stops2[] = {nul_stop};
    size_t lens[] = {3};
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, stops2, lens, 1, true), KILN_OK);
    kiln_stop_out o;
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "xa\0bq", 5, &o), KILN_OK);
    CHECK_EQ_INT(o.n_text, 4);
    CHECK(o.n_text == 4 && memcmp(o.text, "xa\0b", 4) == 0);
    CHECK_EQ_INT(o.i_stop, 0);
    kiln_stop_matcher_deinit(&m);
}

static void stop_utf8_holding(void) {
    kiln_stop_matcher m;
    kiln_stop_out o;
    /* no stop strings: only incomplete characters are held */
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, NULL, NULL, 0, false), KILN_OK);
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "h\xc3", 2, &o), KILN_OK);
    CHECK_EQ_INT(o.n_text, 1);
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "\xa9\xe2\x82", 3, &o), KILN_OK);
    CHECK_EQ_INT(o.n_text, 2);
    CHECK(o.n_text == 2 && memcmp(o.text, "\xc3\xa9", 2) == 0);
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "\xac!", 2, &o), KILN_OK);
    CHECK_EQ_INT(o.n_text, 4);
    CHECK(o.n_text == 4 && memcmp(o.text, "\xe2\x82\xac!", 4) == 0);
    kiln_stop_matcher_deinit(&m);

    /* a stop string that starts with a multibyte character: the whole character is held */
    const char *stops[] = {"\xe2\x82\xac\xe2\x82\xac"}; /* "€€" */
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, stops, NULL, 1, false), KILN_OK);
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "5\xe2\x82\xac", 4, &o), KILN_OK);
    CHECK_EQ_INT(o.n_text, 1);
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "\xe2\x82", 2, &o), KILN_OK);
    CHECK_EQ_INT(o.n_text, 0);
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "\xac", 1, &o), KILN_OK);
    CHECK_EQ_INT(o.i_stop, 0);
    CHECK_EQ_INT(o.n_text, 0);
    kiln_stop_matcher_deinit(&m);

    /* a stop whose prefix ends mid-character ("é" = c3 a9 vs text "è" = c3 a8): the lead byte
     * matches a prefix of the stop, but a character is never split */
    const char *stops2[] = {"x\xc3\xa9"};
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, stops2, NULL, 1, false), KILN_OK);
    stream st;
    const char *p1[] = {"ax\xc3", "\xa8y", NULL};
    run_stream(&m, p1, &st);
    CHECK_STR(st.out, "ax\xc3\xa8y");
    CHECK(st.chunks_utf8_ok);
    kiln_stop_matcher_deinit(&m);

    /* flush releases even an incomplete trailing sequence (the stream is over) */
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, NULL, NULL, 0, false), KILN_OK);
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "ab\xf0\x9f", 4, &o), KILN_OK);
    CHECK_EQ_INT(o.n_text, 2);
    kiln_stop_matcher_flush(&m, &o);
    CHECK_EQ_INT(o.n_text, 2);
    CHECK(o.n_text == 2 && memcmp(o.text, "\xf0\x9f", 2) == 0);
    kiln_stop_matcher_flush(&m, &o);
    CHECK_EQ_INT(o.n_text, 0);
    kiln_stop_matcher_deinit(&m);
}

static void stop_init_errors(void) {
    kiln_stop_matcher m;
    const char *empty[] = {"ok", ""};
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, empty, NULL, 2, false), KILN_ERR_INVALID);
    CHECK(strncmp(kiln_errmsg(), "stop: ", 6) == 0);
    kiln_stop_matcher_deinit(&m);
    const char *bad_utf8[] = {"a\xc3"};
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, bad_utf8, NULL, 1, false), KILN_ERR_INVALID);
    kiln_stop_matcher_deinit(&m);
    const char *many[KILN_STOP_MAX_STRINGS + 1];
    for (int i = 0; i <= KILN_STOP_MAX_STRINGS; i++) many[i] = "s";
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, many, NULL, KILN_STOP_MAX_STRINGS + 1, false),
                 KILN_ERR_INVALID);
    kiln_stop_matcher_deinit(&m);
    static char longs[KILN_STOP_MAX_BYTES + 2];
    memset(longs, 'x', KILN_STOP_MAX_BYTES + 1);
    const char *too_long[] = {longs};
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, too_long, NULL, 1, false), KILN_ERR_INVALID);
    kiln_stop_matcher_deinit(&m);

    /* allocation failures anywhere: NOMEM, no leak */
    const char *stops[] = {"one", "two", "three"};
    int n_ok = 0;
    for (long n = 0; n < 12; n++) {
        kiln_alloc_fail_after(n);
        kiln_err err = kiln_stop_matcher_init(&m, stops, NULL, 3, false);
        kiln_stop_out o;
        kiln_err err2 = err == KILN_OK ? kiln_stop_matcher_feed(&m, "abc two", 7, &o) : KILN_OK;
        kiln_alloc_fail_after(-1);
        CHECK(err == KILN_OK || err == KILN_ERR_NOMEM);
        CHECK(err2 == KILN_OK || err2 == KILN_ERR_NOMEM);
        n_ok += err == KILN_OK && err2 == KILN_OK;
        kiln_stop_matcher_deinit(&m);
    }
    CHECK(n_ok > 0);
}

/* Random texts over an alphabet with multibyte characters, random stops and random piece
 * boundaries (split anywhere, even inside a character), against a brute-force search over the
 * whole text: the first stop to complete, i.e. the smallest end, then the longest. */
static void stop_random_against_brute_force(void) {
    static const char *alpha_all[] = {"a", "b", "\n", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    /* odd iterations: a small alphabet and longer stops, for self-overlapping partial matches */
    static const char *alpha_small[] = {"a", "b", "a", "b", "a", "\xc3\xa9"};
    kiln_rng g;
    kiln_rng_seed(&g, 31);
    int n_matched = 0;
    for (int iter = 0; iter < 3000; iter++) {
        const char **alpha = iter % 2 ? alpha_small : alpha_all;
        const int max_stop_chars = iter % 2 ? 6 : 3;
        char text[512];
        size_t n_text = 0;
        int n_chars = (int)(kiln_rng_u64(&g) % 40);
        for (int i = 0; i < n_chars; i++) {
            const char *c = alpha[kiln_rng_u64(&g) % 6];
            memcpy(text + n_text, c, strlen(c));
            n_text += strlen(c);
        }
        char stop_buf[4][64];
        const char *stops[4];
        int n_stops = (int)(kiln_rng_u64(&g) % 4);
        for (int k = 0; k < n_stops; k++) {
            size_t len = 0;
            int nc = 1 + (int)(kiln_rng_u64(&g) % (uint64_t)max_stop_chars);
            for (int i = 0; i < nc; i++) {
                const char *c = alpha[kiln_rng_u64(&g) % 6];
                memcpy(stop_buf[k] + len, c, strlen(c));
                len += strlen(c);
            }
            stop_buf[k][len] = '\0';
            stops[k] = stop_buf[k];
        }
        bool include = kiln_rng_u64(&g) % 2;
        /* brute force */
        int want_stop = -1;
        size_t want_len = n_text;
        for (size_t end = 1; end <= n_text && want_stop < 0; end++) {
            size_t best_len = 0;
            for (int k = 0; k < n_stops; k++) {
                size_t l = strlen(stops[k]);
                if (l <= end && l > best_len && memcmp(text + end - l, stops[k], l) == 0) {
                    want_stop = k;
                    best_len = l;
                }
            }
            if (want_stop >= 0) want_len = include ? end : end - best_len;
        }
        /* stream in random pieces */
        kiln_stop_matcher m;
        CHECK_EQ_INT(kiln_stop_matcher_init(&m, stops, NULL, n_stops, include), KILN_OK);
        stream st;
        memset(&st, 0, sizeof(st));
        st.chunks_utf8_ok = true;
        st.i_stop = -1;
        size_t pos = 0;
        kiln_stop_out o;
        while (pos < n_text && st.i_stop < 0) {
            size_t piece = 1 + kiln_rng_u64(&g) % 7;
            if (piece > n_text - pos) piece = n_text - pos;
            CHECK_EQ_INT(kiln_stop_matcher_feed(&m, text + pos, piece, &o), KILN_OK);
            take_out(&st, &o);
            pos += piece;
            /* held back: at most the longest stop - 1 plus an incomplete character */
            CHECK(kiln_stop_matcher_n_held(&m) <= 6 * 4 - 1 + 3);
        }
        if (st.i_stop < 0) {
            kiln_stop_matcher_flush(&m, &o);
            take_out(&st, &o);
        }
        CHECK_MSG(st.i_stop == want_stop && st.n_out == want_len &&
                      memcmp(st.out, text, want_len) == 0,
                  "iter %d: stop %d/%d, %zu/%zu bytes", iter, st.i_stop, want_stop, st.n_out,
                  want_len);
        CHECK_MSG(st.chunks_utf8_ok, "iter %d: a released chunk splits a character", iter);
        n_matched += want_stop >= 0;
        kiln_stop_matcher_deinit(&m);
    }
    CHECK(n_matched > 300); /* the test exercised matches, not only pass-through */
}

/* Worst cases for a naive search: 64 stops of 1024 bytes that almost match at every offset, fed
 * one byte at a time. The KMP automata keep this linear; the check is a generous time bound. */
static void stop_adversarial_is_linear(void) {
    enum { N = KILN_STOP_MAX_STRINGS, L = KILN_STOP_MAX_BYTES };
    static char bufs[N][L + 1];
    const char *stops[N];
    for (int i = 0; i < N; i++) {
        memset(bufs[i], 'a', L);
        bufs[i][L - 1] = (char)('b' + i % 20); /* a^1023 followed by one other letter */
        stops[i] = bufs[i];
    }
    kiln_stop_matcher m;
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, stops, NULL, N, false), KILN_OK);
    double t0 = kiln_now_s();
    size_t n_out = 0;
    kiln_stop_out o;
    for (int k = 0; k < 20000; k++) {
        CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "a", 1, &o), KILN_OK);
        n_out += o.n_text;
    }
    CHECK_EQ_INT(kiln_stop_matcher_n_held(&m), L - 1); /* a^1023 may still become a stop */
    CHECK_EQ_INT(n_out, 20000 - (L - 1));
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "c", 1, &o), KILN_OK); /* completes stop 1 */
    CHECK_EQ_INT(o.i_stop, 1);
    CHECK_EQ_INT(o.n_text, 0);
    double dt = kiln_now_s() - t0;
    CHECK_MSG(dt < 2.0, "20k bytes against 64 x 1 KiB stops took %.2f s", dt);
    kiln_stop_matcher_deinit(&m);

    /* feeding after a flush starts over cleanly */
    const char *st1[] = {"xy"};
    CHECK_EQ_INT(kiln_stop_matcher_init(&m, st1, NULL, 1, false), KILN_OK);
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "ax", 2, &o), KILN_OK);
    CHECK_EQ_INT(o.n_text, 1);
    kiln_stop_matcher_flush(&m, &o);
    CHECK_EQ_INT(o.n_text, 1);
    CHECK_EQ_INT(kiln_stop_matcher_feed(&m, "yz", 2, &o), KILN_OK);
    CHECK_EQ_INT(o.i_stop, -1);
    CHECK_EQ_INT(o.n_text, 2);
    kiln_stop_matcher_deinit(&m);
}

int main(void) {
    RUN(params_defaults);
    RUN(params_errors_name_field);
    RUN(greedy_argmax_and_ties);
    RUN(greedy_applies_bias_and_penalties);
    RUN(top_k_1_equals_greedy);
    RUN(filters_hand_derived);
    RUN(temperature_and_top_p_frequencies);
    RUN(numpy_reference_cases);
    RUN(seed_determinism);
    RUN(logprobs_raw_and_ordered);
    RUN(penalties_as_defined);
    RUN(logit_bias_bans_and_forces);
    RUN(mask_one_call_only);
    RUN(large_vocab_against_full_sort);
    RUN(sampler_fault_injection);
    RUN(stop_spans_tokens);
    RUN(stop_multiple_and_overlapping);
    RUN(stop_include_in_output);
    RUN(stop_utf8_holding);
    RUN(stop_init_errors);
    RUN(stop_random_against_brute_force);
    RUN(stop_adversarial_is_linear);
    return TEST_REPORT("test_sample");
}
