/* sample.c: one token from one row of logits, vLLM v1 order: raw logprobs -> logit bias ->
 * repetition / frequency / presence penalties -> masks -> (greedy) -> temperature -> min-p ->
 * top-k -> top-p -> draw. Invariants: no allocation per call except amortized history growth;
 * candidate order is total (logit desc, id asc), so a seed always yields the same tokens.
 * Thread: the engine thread (a sampler and its scratch are used by one thread at a time). */
#include "sample/sample.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define MIN_TEMP 1e-2f     /* vLLM's _MAX_TEMP: 0 < temperature < 0.01 is raised to 0.01 */

typedef struct cand {
    float logit;   /* tempered logit: the rank key */
    float w;       /* exp(logit - max tempered logit): unnormalized probability */
    int32_t id;
} cand;

struct kiln_sample_scratch {
    int32_t n_vocab;  /* capacity */
    float *raw;       /* (n_vocab,) raw logits kept for logprobs */
    cand *cands;      /* (n_vocab,) candidates of the filters */
};

struct kiln_sampler {
    kiln_sampler_params p;        /* p.logit_bias points to bias */
    kiln_logit_bias *bias;        /* (n_logit_bias,) owned copy, clamped */
    int32_t n_vocab;
    kiln_rng rng;
    kiln_sample_scratch *scratch;
    bool own_scratch;
    uint64_t *seen;               /* (n_words,) prompt + generated tokens; NULL when rep. penalty off */
    uint64_t *masked;             /* (n_words,) tokens banned for the next call */
    size_t n_words;               /* ceil(n_vocab / 64) */
    bool any_masked;
    bool track_counts;            /* presence or frequency penalty on */
    int32_t *count_keys;          /* (count_cap,) open addressing; -1 = empty */
    int32_t *count_vals;          /* (count_cap,) occurrences among generated tokens */
    size_t count_cap;             /* power of two, or 0 */
    size_t n_counted;             /* distinct keys */
};

/* ---- parameters ---- */

void kiln_sampler_params_default(kiln_sampler_params *p) {
    memset(p, 0, sizeof(*p));
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->top_k = 0;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->n_top_logprobs = -1;
}

static kiln_err bad(const char **field, const char *name, const char *fmt, double v) {
    if (field) *field = name;
    char what[128];
    snprintf(what, sizeof(what), fmt, v);
    return kiln_errf(KILN_ERR_INVALID, "%s: %s", name, what);
}

kiln_err kiln_sampler_params_check(const kiln_sampler_params *p, int32_t n_vocab,
                                   const char **field) {
    if (field) *field = NULL;
    /* !(x >= a) also rejects NaN */
    if (!(p->temperature >= 0.0f && p->temperature <= 2.0f))
        return bad(field, "temperature", "must be in [0, 2], got %g", p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return bad(field, "top_p", "must be in (0, 1], got %g", p->top_p);
    if (p->top_k < -1)
        return bad(field, "top_k", "must be -1 (disable), 0 (disable) or at least 1, got %g",
                   (double)p->top_k);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return bad(field, "min_p", "must be in [0, 1], got %g", p->min_p);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return bad(field, "presence_penalty", "must be in [-2, 2], got %g", p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return bad(field, "frequency_penalty", "must be in [-2, 2], got %g", p->frequency_penalty);
    if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
        return bad(field, "repetition_penalty", "must be a finite number > 0, got %g",
                   p->repetition_penalty);
    if (p->n_logit_bias < 0 || (p->n_logit_bias > 0 && !p->logit_bias))
        return bad(field, "logit_bias", "invalid count %g", (double)p->n_logit_bias);
    for (int32_t i = 0; i < p->n_logit_bias; i++) {
        const kiln_logit_bias *b = &p->logit_bias[i];
        if (b->token < 0 || b->token >= n_vocab) {
            if (field) *field = "logit_bias";
            return kiln_errf(KILN_ERR_INVALID, "logit_bias: token id %d is out of vocabulary (0..%d)",
                             (int)b->token, (int)n_vocab - 1);
        }
        if (isnan(b->bias)) {
            if (field) *field = "logit_bias";
            return kiln_errf(KILN_ERR_INVALID, "logit_bias: bias of token %d is not a number",
                             (int)b->token);
        }
    }
    if (p->n_top_logprobs < -1 || p->n_top_logprobs > KILN_MAX_TOP_LOGPROBS)
        return bad(field, "top_logprobs", "must be in [0, 20], got %g", (double)p->n_top_logprobs);
    return KILN_OK;
}

/* ---- scratch ---- */

kiln_err kiln_sample_scratch_new(int32_t n_vocab, kiln_sample_scratch **out) {
    *out = NULL;
    if (n_vocab < 1) return kiln_errf(KILN_ERR_INVALID, "sampler: n_vocab %d < 1", (int)n_vocab);
    kiln_sample_scratch *sc = kiln_calloc(1, sizeof(*sc));
    if (!sc) goto out_nomem;
    sc->n_vocab = n_vocab;
    sc->raw = kiln_calloc((size_t)n_vocab, sizeof(*sc->raw));
    if (!sc->raw) goto out_free;
    sc->cands = kiln_calloc((size_t)n_vocab, sizeof(*sc->cands));
    if (!sc->cands) goto out_free;
    *out = sc;
    return KILN_OK;
out_free:
    kiln_sample_scratch_free(sc);
out_nomem:
    return kiln_errf(KILN_ERR_NOMEM, "sampler: out of memory for scratch of %d tokens", (int)n_vocab);
}

void kiln_sample_scratch_free(kiln_sample_scratch *sc) {
    if (!sc) return;
    kiln_free(sc->raw);
    kiln_free(sc->cands);
    kiln_free(sc);
}

/* ---- sampler lifetime ---- */

static uint64_t entropy_seed(void) {
    uint64_t seed = 0;
    if (getentropy(&seed, sizeof(seed)) != 0) {
        static _Atomic uint64_t counter;
        seed = kiln_now_ns() ^ (atomic_fetch_add(&counter, 0x9e3779b97f4a7c15ull) + 0x9e3779b97f4a7c15ull);
    }
    return seed;
}

kiln_err kiln_sampler_new(const kiln_sampler_params *p, int32_t n_vocab,
                          kiln_sample_scratch *scratch, kiln_sampler **out) {
    kiln_err err;
    *out = NULL;
    if (n_vocab < 1) return kiln_errf(KILN_ERR_INVALID, "sampler: n_vocab %d < 1", (int)n_vocab);
    if ((err = kiln_sampler_params_check(p, n_vocab, NULL)) != KILN_OK) return err;
    if (scratch && scratch->n_vocab < n_vocab)
        return kiln_errf(KILN_ERR_INVALID, "sampler: scratch for %d tokens, logits have %d",
                         (int)scratch->n_vocab, (int)n_vocab);
    kiln_sampler *s = kiln_calloc(1, sizeof(*s));
    if (!s) return kiln_errf(KILN_ERR_NOMEM, "sampler: out of memory");
    s->p = *p;
    if (s->p.temperature > 0.0f && s->p.temperature < MIN_TEMP) s->p.temperature = MIN_TEMP;
    s->n_vocab = n_vocab;
    s->n_words = ((size_t)n_vocab + 63) / 64;
    if (p->n_logit_bias > 0) {
        s->bias = kiln_calloc((size_t)p->n_logit_bias, sizeof(*s->bias));
        if (!s->bias) goto out_nomem;
        for (int32_t i = 0; i < p->n_logit_bias; i++) {
            s->bias[i] = p->logit_bias[i];
            s->bias[i].bias = fmaxf(-KILN_LOGIT_BIAS_MAX, fminf(KILN_LOGIT_BIAS_MAX, s->bias[i].bias));
        }
    }
    s->p.logit_bias = s->bias;
    s->masked = kiln_calloc(s->n_words, sizeof(uint64_t));
    if (!s->masked) goto out_nomem;
    if (p->repetition_penalty != 1.0f) {
        s->seen = kiln_calloc(s->n_words, sizeof(uint64_t));
        if (!s->seen) goto out_nomem;
    }
    s->track_counts = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
    if (scratch) {
        s->scratch = scratch;
    } else {
        if ((err = kiln_sample_scratch_new(n_vocab, &s->scratch)) != KILN_OK) goto out_free;
        s->own_scratch = true;
    }
    kiln_rng_seed(&s->rng, p->has_seed ? p->seed : entropy_seed());
    *out = s;
    return KILN_OK;
out_nomem:
    err = kiln_errf(KILN_ERR_NOMEM, "sampler: out of memory");
out_free:
    kiln_sampler_free(s);
    return err;
}

void kiln_sampler_free(kiln_sampler *s) {
    if (!s) return;
    if (s->own_scratch) kiln_sample_scratch_free(s->scratch);
    kiln_free(s->bias);
    kiln_free(s->masked);
    kiln_free(s->seen);
    kiln_free(s->count_keys);
    kiln_free(s->count_vals);
    kiln_free(s);
}

/* ---- history ---- */

static inline void bit_set(uint64_t *w, int32_t i) { w[i >> 6] |= 1ull << (i & 63); }

static inline size_t hash_slot(int32_t token, size_t cap) {
    return (size_t)(((uint32_t)token * 2654435761u) & (uint32_t)(cap - 1));
}

static kiln_err counts_grow(kiln_sampler *s) {
    size_t cap = s->count_cap ? s->count_cap * 2 : 64;
    int32_t *keys = kiln_malloc(cap * sizeof(*keys));
    int32_t *vals = kiln_malloc(cap * sizeof(*vals));
    if (!keys || !vals) {
        kiln_free(keys);
        kiln_free(vals);
        return kiln_errf(KILN_ERR_NOMEM, "sampler: out of memory for token counts");
    }
    for (size_t i = 0; i < cap; i++) keys[i] = -1;
    for (size_t i = 0; i < s->count_cap; i++) {
        if (s->count_keys[i] < 0) continue;
        size_t j = hash_slot(s->count_keys[i], cap);
        while (keys[j] >= 0) j = (j + 1) & (cap - 1);
        keys[j] = s->count_keys[i];
        vals[j] = s->count_vals[i];
    }
    kiln_free(s->count_keys);
    kiln_free(s->count_vals);
    s->count_keys = keys;
    s->count_vals = vals;
    s->count_cap = cap;
    return KILN_OK;
}

kiln_err kiln_sampler_accept_prompt(kiln_sampler *s, const int32_t *ids, size_t n) {
    if (!s->seen) return KILN_OK;
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < s->n_vocab) bit_set(s->seen, ids[i]);
    return KILN_OK;
}

kiln_err kiln_sampler_accept(kiln_sampler *s, int32_t token) {
    if (token < 0 || token >= s->n_vocab) return KILN_OK;
    if (s->seen) bit_set(s->seen, token);
    if (!s->track_counts) return KILN_OK;
    /* keep the load factor <= 1/2 */
    if ((s->n_counted + 1) * 2 > s->count_cap) {
        kiln_err err = counts_grow(s);
        if (err != KILN_OK) return err;
    }
    size_t j = hash_slot(token, s->count_cap);
    while (s->count_keys[j] >= 0 && s->count_keys[j] != token) j = (j + 1) & (s->count_cap - 1);
    if (s->count_keys[j] < 0) {
        s->count_keys[j] = token;
        s->count_vals[j] = 0;
        s->n_counted++;
    }
    s->count_vals[j]++;
    return KILN_OK;
}

void kiln_sampler_mask(kiln_sampler *s, int32_t token) {
    if (token < 0 || token >= s->n_vocab) return;
    bit_set(s->masked, token);
    s->any_masked = true;
}

/* ---- candidate ordering and selection ---- */

/* a ranks before b: higher logit, then lower id (a total order: ties never depend on the sort) */
static inline bool before(const cand *a, const cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cmp_cand(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

static inline void swap_cand(cand *a, cand *b) {
    cand t = *a;
    *a = *b;
    *b = t;
}

/* Reorders c[0..n) so that c[0..k) holds the k first in rank order (unsorted), 0 < k < n.
 * Quickselect with a median-of-three pivot; past a depth limit the range is sorted instead, so the
 * worst case stays O(n log n). */
static void select_top(cand *c, size_t n, size_t k) {
    size_t lo = 0, hi = n; /* the k-boundary lies in [lo, hi) */
    int depth = 0;
    while (hi - lo > 16) {
        if (++depth > 64) {
            qsort(c + lo, hi - lo, sizeof(*c), cmp_cand);
            return;
        }
        size_t mid = lo + (hi - lo) / 2;
        /* median of three to c[hi-1] as the pivot */
        if (before(&c[mid], &c[lo])) swap_cand(&c[mid], &c[lo]);
        if (before(&c[hi - 1], &c[lo])) swap_cand(&c[hi - 1], &c[lo]);
        if (before(&c[mid], &c[hi - 1])) swap_cand(&c[mid], &c[hi - 1]);
        cand pivot = c[hi - 1];
        size_t store = lo;
        for (size_t i = lo; i < hi - 1; i++)
            if (before(&c[i], &pivot)) swap_cand(&c[i], &c[store++]);
        swap_cand(&c[store], &c[hi - 1]);
        /* c[lo..store) rank before the pivot, c[store] is the pivot, the rest after */
        if (store == k || store + 1 == k) return;
        if (store > k) hi = store;
        else lo = store + 1;
    }
    qsort(c + lo, hi - lo, sizeof(*c), cmp_cand);
}

/* ---- sampling ---- */

/* Keeps the N best raw logits (N <= 20) in out[], by insertion; ties keep the lower id. */
static void top_raw(const float *raw, int32_t n_vocab, int32_t n, double lse,
                    kiln_token_logprob *out) {
    int32_t have = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        float l = raw[i];
        if (have == n && !(l > out[n - 1].logprob)) continue;
        int32_t j = have < n ? have++ : n - 1;
        while (j > 0 && l > out[j - 1].logprob) {
            out[j] = out[j - 1];
            j--;
        }
        out[j].token = i;
        out[j].logprob = l;
    }
    for (int32_t j = 0; j < have; j++) out[j].logprob = (float)(out[j].logprob - lse);
}


/* Bias, penalties and masks on the raw logits (in place); NaN becomes -inf. Finds the maximum
 * (the first one: ties go to the lowest id). consume_masks clears the masks once applied. */
static kiln_err adjust(kiln_sampler *s, float *logits, bool consume_masks, int32_t *i_max_out,
                       float *max_out) {
    const int32_t V = s->n_vocab;
    const kiln_sampler_params *p = &s->p;
    for (int32_t i = 0; i < p->n_logit_bias; i++)
        logits[p->logit_bias[i].token] += p->logit_bias[i].bias;
    if (s->seen) {
        float r = p->repetition_penalty;
        for (size_t w = 0; w < s->n_words; w++) {
            for (uint64_t bits = s->seen[w]; bits; bits &= bits - 1) {
                size_t t = w * 64 + (size_t)__builtin_ctzll(bits);
                logits[t] = logits[t] > 0.0f ? logits[t] / r : logits[t] * r;
            }
        }
    }
    if (s->track_counts) {
        for (size_t j = 0; j < s->count_cap; j++) {
            if (s->count_keys[j] < 0) continue;
            float c = (float)s->count_vals[j]; /* > 0 for every stored key */
            logits[s->count_keys[j]] -= p->frequency_penalty * c + p->presence_penalty;
        }
    }
    if (s->any_masked) {
        for (size_t w = 0; w < s->n_words; w++) {
            for (uint64_t bits = s->masked[w]; bits; bits &= bits - 1)
                logits[w * 64 + (size_t)__builtin_ctzll(bits)] = -INFINITY;
            if (consume_masks) s->masked[w] = 0;
        }
        if (consume_masks) s->any_masked = false;
    }
    int32_t i_max = -1;
    float mx = -INFINITY;
    for (int32_t i = 0; i < V; i++) {
        if (isnan(logits[i])) logits[i] = -INFINITY; /* from the model, or inf - inf */
        if (logits[i] > mx) {
            mx = logits[i];
            i_max = i;
        }
    }
    if (i_max < 0) return kiln_errf(KILN_ERR_INVALID, "sampler: no token has a finite logit");
    if (!isfinite(mx))
        return kiln_errf(KILN_ERR_INVALID, "sampler: logit of token %d is +inf", (int)i_max);
    *i_max_out = i_max;
    *max_out = mx;
    return KILN_OK;
}

#define HEAP_TOP_K_MAX 256 /* top-k up to this uses a heap over the logits */

/* c[a] ranks after c[b] */
static inline bool worse(const cand *a, const cand *b) { return before(b, a); }

/* The k first tokens by rank of the finite logits (tempered by inv_t), into c[0..return) as a heap
 * whose root ranks last. One pass; ties keep the lower id because ids arrive in increasing order. */
static size_t heap_top(const float *logits, int32_t n_vocab, float inv_t, size_t k, cand *c) {
    size_t n = 0;
    for (int32_t id = 0; id < n_vocab; id++) {
        if (logits[id] == -INFINITY) continue;
        cand x = {logits[id] * inv_t, 0.0f, id};
        size_t i;
        if (n < k) {
            i = n++;
            while (i > 0 && worse(&x, &c[(i - 1) / 2])) {
                c[i] = c[(i - 1) / 2];
                i = (i - 1) / 2;
            }
            c[i] = x;
        } else if (before(&x, &c[0])) {
            i = 0;
            for (;;) {
                size_t l = 2 * i + 1, r = l + 1, w = i;
                const cand *wc = &x;
                if (l < n && worse(&c[l], wc)) w = l, wc = &c[l];
                if (r < n && worse(&c[r], wc)) w = r;
                if (w == i) break;
                c[i] = c[w];
                i = w;
            }
            c[i] = x;
        }
    }
    return n;
}

/* Top-p over c[0..n) with weights w: returns j, the number of tokens kept, and moves them to
 * c[0..j) (unordered). Token of rank r is kept while the mass ranked before it is < limit (vLLM:
 * tokens whose ascending cumulative probability is <= 1 - top_p are removed), so j is the smallest
 * count whose mass reaches limit. A quickselect on rank that carries the mass above the range:
 * O(n) on average, no full sort; past a depth limit the range is sorted (O(n log n) worst case). */
static size_t nucleus(cand *c, size_t n, double limit) {
    size_t lo = 0, hi = n;  /* c[0..lo) rank above c[lo..hi), which rank above c[hi..n) */
    double above = 0.0;     /* mass of c[0..lo) */
    int depth = 0;
    while (hi - lo > 16 && depth++ < 64) {
        size_t mid = lo + (hi - lo) / 2;
        if (before(&c[mid], &c[lo])) swap_cand(&c[mid], &c[lo]);
        if (before(&c[hi - 1], &c[lo])) swap_cand(&c[hi - 1], &c[lo]);
        if (before(&c[mid], &c[hi - 1])) swap_cand(&c[mid], &c[hi - 1]);
        cand pivot = c[hi - 1];
        size_t store = lo;
        double mass = 0.0; /* of the part ranked before the pivot */
        for (size_t i = lo; i < hi - 1; i++) {
            if (before(&c[i], &pivot)) {
                mass += c[i].w;
                swap_cand(&c[i], &c[store++]);
            }
        }
        swap_cand(&c[store], &c[hi - 1]);
        if (above + mass >= limit) {
            hi = store; /* the boundary is within the part before the pivot, or right after it */
        } else {
            above += mass + c[store].w; /* the pivot is kept */
            lo = store + 1;
        }
    }
    qsort(c + lo, hi - lo, sizeof(*c), cmp_cand);
    for (size_t i = lo; i < hi; i++) {
        if (above >= limit) return i;
        above += c[i].w;
    }
    return hi;
}

/* Temperature, min-p, top-k, top-p: the survivors go to scratch c[0..*n_out) with their weights,
 * whose sum is *z_out. max_logit is the maximum adjusted logit; it always survives. */
static void filter(kiln_sampler *s, const float *logits, float max_logit, size_t *n_out,
                   double *z_out) {
    const kiln_sampler_params *p = &s->p;
    const float inv_t = 1.0f / p->temperature;
    const float m = max_logit * inv_t; /* rounding is monotonic: the max of the tempered logits */
    cand *c = s->scratch->cands;
    size_t n = 0;
    const bool top_k = p->top_k > 0 && p->top_k < s->n_vocab;
    /* top-k and min-p commute (both keep the maximum and neither depends on normalization), so
     * top-k runs first when on: a heap for small k, a quickselect otherwise; only the survivors
     * pay for an exp. */
    if (top_k && p->top_k <= HEAP_TOP_K_MAX) {
        n = heap_top(logits, s->n_vocab, inv_t, (size_t)p->top_k, c);
    } else {
        for (int32_t i = 0; i < s->n_vocab; i++) {
            if (logits[i] == -INFINITY) continue;
            c[n].logit = logits[i] * inv_t;
            c[n].id = i;
            n++;
        }
        if (top_k && (size_t)p->top_k < n) {
            select_top(c, n, (size_t)p->top_k);
            n = (size_t)p->top_k;
        }
    }
    /* weights, and min-p: p_i >= min_p * p_max  <=>  exp(l_i - l_max) >= min_p */
    const float min_p = p->min_p;
    size_t n_kept = 0;
    for (size_t i = 0; i < n; i++) {
        float w = expf(c[i].logit - m);
        if (w < min_p) continue;
        c[n_kept] = c[i];
        c[n_kept].w = w;
        n_kept++;
    }
    n = n_kept;
    KILN_ASSERT(n > 0); /* the maximum has w = 1 */
    double z = 0.0;
    for (size_t i = 0; i < n; i++) z += c[i].w;
    if (p->top_p < 1.0f) {
        size_t keep = nucleus(c, n, (double)p->top_p * z);
        if (keep < n) {
            n = keep;
            z = 0.0;
            for (size_t i = 0; i < n; i++) z += c[i].w;
        }
    }
    *n_out = n;
    *z_out = z;
}

kiln_err kiln_sampler_sample(kiln_sampler *s, float *logits, kiln_sample_result *out) {
    const int32_t V = s->n_vocab;
    const kiln_sampler_params *p = &s->p;
    kiln_sample_scratch *sc = s->scratch;
    kiln_err err;
    memset(out, 0, offsetof(kiln_sample_result, top));
    out->token = -1;

    /* raw logprobs, before anything touches the logits */
    double lse = 0.0;
    const bool want_logprobs = p->n_top_logprobs >= 0;
    if (want_logprobs) {
        float mx = -INFINITY;
        for (int32_t i = 0; i < V; i++) {
            if (isnan(logits[i])) logits[i] = -INFINITY;
            mx = fmaxf(mx, logits[i]);
        }
        double z = 0.0;
        if (mx > -INFINITY)
            for (int32_t i = 0; i < V; i++) z += expf(logits[i] - mx);
        lse = mx > -INFINITY ? mx + log(z) : 0.0;
        memcpy(sc->raw, logits, (size_t)V * sizeof(*logits));
        out->n_top = KILN_MIN(p->n_top_logprobs, V);
        if (out->n_top > 0) top_raw(logits, V, out->n_top, lse, out->top);
    }

    int32_t i_max;
    float mx;
    if ((err = adjust(s, logits, true, &i_max, &mx)) != KILN_OK) return err;

    int32_t token = i_max; /* greedy */
    if (p->temperature > 0.0f) {
        size_t n;
        double z;
        filter(s, logits, mx, &n, &z);
        const cand *c = sc->cands;
        /* walk to the first cumulative weight past u; rounding can leave u unreached, then the
         * last candidate of positive weight is taken */
        double u = kiln_rng_uniform(&s->rng) * z, acc = 0.0;
        token = -1;
        for (size_t i = 0; i < n; i++) {
            if (c[i].w == 0.0f) continue;
            acc += c[i].w;
            token = c[i].id;
            if (acc > u) break;
        }
        KILN_ASSERT(token >= 0);
    }

    out->token = token;
    if (want_logprobs) out->logprob = (float)((double)sc->raw[token] - lse);
    return kiln_sampler_accept(s, token);
}

kiln_err kiln_sampler_dist(kiln_sampler *s, float *logits, float *probs) {
    const int32_t V = s->n_vocab;
    kiln_err err;
    for (int32_t i = 0; i < V; i++)
        if (isnan(logits[i])) logits[i] = -INFINITY;
    int32_t i_max;
    float mx;
    if ((err = adjust(s, logits, false, &i_max, &mx)) != KILN_OK) return err;
    memset(probs, 0, (size_t)V * sizeof(*probs));
    if (s->p.temperature == 0.0f) {
        probs[i_max] = 1.0f;
        return KILN_OK;
    }
    size_t n;
    double z;
    filter(s, logits, mx, &n, &z);
    const cand *c = s->scratch->cands;
    for (size_t i = 0; i < n; i++) probs[c[i].id] = (float)(c[i].w / z);
    return KILN_OK;
}
