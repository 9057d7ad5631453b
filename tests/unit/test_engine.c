/* test_engine.c: the engine thread and its scheduler on the real stories260K model.
 * References: the testdata's known greedy continuation (stories260K.greedy252.txt, produced by
 * llama.cpp), and a plain sequential loop written here (one token per kiln_model_forward on a
 * private cache + argmax, log-softmax in double) that every batched, preempted or concurrent
 * run must reproduce exactly. Expected stop results are derived from that reference text. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "test.h"

static char model_path[1024];
static kiln_model *g_model;
static kiln_vocab *g_vocab;
static int32_t g_n_vocab;

#define MAX_GEN 520
#define MAX_CHOICES 4

/* ---- the sequential reference ---- */

typedef struct ref_out {
    int32_t ids[MAX_GEN];
    double logprob[MAX_GEN];   /* log-softmax of the raw logits at the chosen id */
    int32_t n;                 /* generated ids (an end-of-generation id included, then stop) */
    double prompt_lp[MAX_GEN]; /* [p]: logprob of prompt token p given 0..p-1 (p >= 1) */
    int32_t prompt_best[MAX_GEN]; /* [p]: argmax of the logits that predict position p */
} ref_out;

/* Greedy decoding one token per forward. ban (>= 0) is excluded from the argmax for the first
 * ban_until generated tokens (min_tokens); stop_id (>= 0) ends generation like EOS does. */
static void ref_greedy(const int32_t *prompt, int32_t n_prompt, int32_t n_gen, int32_t ban,
                       int32_t ban_until, int32_t stop_id, ref_out *out) {
    const int32_t bs = 16;
    const kiln_hparams *hp = kiln_model_hparams(g_model);
    size_t per = (size_t)hp->n_layer * 2 * bs * (size_t)(hp->n_head_kv * hp->head_dim) * sizeof(float);
    int32_t nb = (n_prompt + n_gen + bs - 1) / bs;
    kiln_kv *kv = NULL;
    out->n = 0;
    CHECK(kiln_kv_new(g_model, per * (size_t)nb, bs, &kv) == KILN_OK);
    if (!kv) return;
    int32_t *table = malloc(sizeof(int32_t) * (size_t)nb);
    for (int32_t b = 0; b < nb; b++) CHECK(kiln_kv_alloc_block(kv, &table[b]) == KILN_OK);
    float *logits = malloc(sizeof(float) * (size_t)g_n_vocab);
    kiln_batch_seq sq = {table, nb};
    int32_t pos = 0, tok = prompt[0];
    for (;;) {
        kiln_batch_row row = {tok, pos, 0, true};
        kiln_batch b = {1, &row, 1, &sq};
        CHECK(kiln_model_forward(g_model, kv, &b, logits) == KILN_OK);
        pos++;
        if (pos < n_prompt) {
            tok = prompt[pos];
            if (pos < MAX_GEN) {
                double mx = logits[0], sum = 0;
                int32_t best = 0;
                for (int32_t i = 1; i < g_n_vocab; i++) {
                    mx = logits[i] > mx ? logits[i] : mx;
                    if (logits[i] > logits[best]) best = i;
                }
                for (int32_t i = 0; i < g_n_vocab; i++) sum += exp((double)logits[i] - mx);
                out->prompt_lp[pos] = (double)logits[tok] - mx - log(sum);
                out->prompt_best[pos] = best;
            }
            continue;
        }
        int32_t best = -1;
        for (int32_t i = 0; i < g_n_vocab; i++) {
            if (i == ban && out->n < ban_until) continue;
            if (best < 0 || logits[i] > logits[best]) best = i;
        }
        double mx = logits[0], sum = 0;
        for (int32_t i = 1; i < g_n_vocab; i++) mx = logits[i] > mx ? logits[i] : mx;
        for (int32_t i = 0; i < g_n_vocab; i++) sum += exp((double)logits[i] - mx);
        out->logprob[out->n] = (double)logits[best] - mx - log(sum);
        out->ids[out->n++] = best;
        if (out->n == n_gen || kiln_vocab_is_eog(g_vocab, best) || best == stop_id) break;
        tok = best;
    }
    free(logits);
    free(table);
    kiln_kv_free(kv);
}

/* Text of ids as concatenated token pieces (control tokens give nothing). */
static void ref_text(const int32_t *ids, int32_t n, kiln_buf *out) {
    kiln_buf_reset(out);
    for (int32_t i = 0; i < n; i++) CHECK(kiln_tok_piece(g_vocab, ids[i], false, out) == KILN_OK);
    kiln_buf_putc(out, '\0'); /* make data non-NULL */
    out->len--;
}

static int32_t encode(const char *text, int32_t **ids) {
    size_t n = 0;
    *ids = NULL;
    CHECK(kiln_tok_encode(g_vocab, text, strlen(text), true, false, ids, &n) == KILN_OK);
    return (int32_t)n;
}

/* ---- collecting events ---- */

typedef struct choice_out {
    kiln_buf text;
    int32_t ids[MAX_GEN];
    float logprob[MAX_GEN];
    int32_t n_top[MAX_GEN];
    kiln_token_logprob top0[MAX_GEN]; /* first alternative */
    bool top_sorted;                  /* every top list was sorted by logprob desc */
    int32_t n_ids;
    kiln_finish_reason finish;
    int32_t n_finish;                 /* deltas with finish != NONE */
    int32_t stop_token, i_stop_str;
} choice_out;

typedef struct req_out {
    uint64_t id;
    int32_t n;                        /* choices expected */
    choice_out ch[MAX_CHOICES];
    int32_t n_terminal;
    kiln_event_type term;
    kiln_err err;
    int32_t usage_prompt, usage_completion, usage_cached;
    int32_t term_order;               /* 1 + terminal events seen before this one (any request) */
    int32_t n_events_after_terminal;
    int32_t n_deltas;
    int32_t n_prompt_events;          /* PROMPT_LOGPROBS events */
    int32_t n_deltas_before_prompt;   /* deltas seen before the PROMPT_LOGPROBS event */
    int32_t prompt_ids[MAX_GEN];
    float prompt_lp[MAX_GEN];
    int32_t prompt_n_top[MAX_GEN];
    int32_t prompt_top0[MAX_GEN];
    bool prompt_top_sorted;
    int32_t n_prompt_ids;
} req_out;

static req_out *outs_new(int32_t n) {
    req_out *o = calloc((size_t)n, sizeof(*o));
    for (int32_t i = 0; i < n; i++) {
        o[i].n = 1;
        for (int c = 0; c < MAX_CHOICES; c++) {
            kiln_buf_init(&o[i].ch[c].text);
            o[i].ch[c].top_sorted = true;
        }
    }
    return o;
}

static void outs_free(req_out *o, int32_t n) {
    for (int32_t i = 0; i < n; i++)
        for (int c = 0; c < MAX_CHOICES; c++) kiln_buf_deinit(&o[i].ch[c].text);
    free(o);
}

static int32_t g_n_terminal; /* terminal events seen, for ordering */

static void on_event(kiln_event *ev) {
    req_out *o = ev->user;
    CHECK(o != NULL);
    if (!o) return;
    CHECK_EQ_INT(ev->request_id, o->id);
    if (o->n_terminal) o->n_events_after_terminal++;
    if (ev->type == KILN_EVENT_DELTA) {
        o->n_deltas++;
        CHECK(ev->index >= 0 && ev->index < o->n);
        if (ev->index < 0 || ev->index >= o->n) return;
        choice_out *c = &o->ch[ev->index];
        CHECK(c->n_finish == 0); /* nothing after the choice's last delta */
        CHECK_EQ_INT(strlen(ev->text), ev->n_text);
        kiln_buf_append(&c->text, ev->text, ev->n_text);
        for (int32_t i = 0; i < ev->n_tokens && c->n_ids < MAX_GEN; i++) {
            const kiln_event_token *t = &ev->tokens[i];
            c->ids[c->n_ids] = t->token;
            c->logprob[c->n_ids] = t->logprob;
            c->n_top[c->n_ids] = t->n_top;
            if (t->n_top > 0) c->top0[c->n_ids] = t->top[0];
            for (int32_t k = 1; k < t->n_top; k++)
                if (t->top[k].logprob > t->top[k - 1].logprob) c->top_sorted = false;
            c->n_ids++;
        }
        if (ev->finish != KILN_FINISH_NONE) {
            c->n_finish++;
            c->finish = ev->finish;
            c->stop_token = ev->stop_token;
            c->i_stop_str = ev->i_stop_str;
        }
    } else if (ev->type == KILN_EVENT_PROMPT_LOGPROBS) {
        o->n_prompt_events++;
        o->n_deltas_before_prompt = o->n_deltas;
        o->prompt_top_sorted = true;
        o->n_prompt_ids = KILN_MIN(ev->n_tokens, MAX_GEN);
        for (int32_t i = 0; i < o->n_prompt_ids; i++) {
            const kiln_event_token *t = &ev->tokens[i];
            o->prompt_ids[i] = t->token;
            o->prompt_lp[i] = t->logprob;
            o->prompt_n_top[i] = t->n_top;
            o->prompt_top0[i] = t->n_top ? t->top[0].token : -1;
            for (int32_t k = 1; k < t->n_top; k++)
                if (t->top[k].logprob > t->top[k - 1].logprob) o->prompt_top_sorted = false;
        }
    } else {
        o->n_terminal++;
        o->term = ev->type;
        o->err = ev->err;
        o->usage_prompt = ev->n_prompt_tokens;
        o->usage_completion = ev->n_completion_tokens;
        o->usage_cached = ev->n_cached_tokens;
        o->term_order = ++g_n_terminal;
        CHECK(ev->queue_ns >= 0);
        CHECK(ev->message != NULL);
    }
}

/* Polls until every request has its terminal event (or 120 s pass). */
static void collect(kiln_engine *e, req_out *o, int32_t n) {
    double t0 = kiln_now_s();
    for (;;) {
        int32_t n_left = 0;
        for (int32_t i = 0; i < n; i++) n_left += o[i].n_terminal == 0;
        if (n_left == 0) break;
        if (kiln_now_s() - t0 > 120) {
            CHECK_MSG(false, "%d requests without a terminal event after 120 s", (int)n_left);
            break;
        }
        kiln_event *ev = kiln_engine_poll_wait(e, 100);
        if (ev) on_event(ev);
        kiln_engine_event_free(ev);
    }
    /* Anything still queued would be an event after the terminal one. */
    kiln_event *ev;
    while ((ev = kiln_engine_poll(e))) {
        on_event(ev);
        kiln_engine_event_free(ev);
    }
}

static kiln_engine *engine_new(const kiln_engine_opts *o) {
    kiln_engine *e = NULL;
    kiln_err err = kiln_engine_new(g_model, g_vocab, o, NULL, NULL, &e);
    CHECK_MSG(err == KILN_OK, "%s", kiln_errmsg());
    return e;
}

static void greedy_request(kiln_request *r, const int32_t *prompt, int32_t n_prompt,
                           int32_t max_tokens) {
    kiln_request_init(r);
    r->prompt = prompt;
    r->n_prompt = n_prompt;
    r->max_tokens = max_tokens;
    r->sampling.temperature = 0;
}

static uint64_t submit_ok(kiln_engine *e, const kiln_request *r, req_out *o) {
    uint64_t id = 0;
    kiln_request rr = *r;
    rr.user = o;
    o->n = r->n;
    kiln_err err = kiln_engine_submit(e, &rr, &id, NULL);
    CHECK_MSG(err == KILN_OK, "%s", kiln_errmsg());
    o->id = id;
    return id;
}

/* The engine's end state after everything ended: no sequence left, every KV block free. */
static void check_idle(kiln_engine *e) {
    kiln_engine_stats st;
    kiln_engine_stats_get(e, &st);
    CHECK_EQ_INT(st.n_running, 0);
    CHECK_EQ_INT(st.n_waiting, 0);
    CHECK_EQ_INT(st.n_requests_active, 0);
    CHECK_EQ_INT(st.n_kv_blocks_free, st.n_kv_blocks_total);
}

/* Compares choice c with the reference (ids, and text = pieces of the ids except a final stop
 * token, which is not text). */
static void check_matches_ref(const choice_out *c, const ref_out *ref, const char *what) {
    CHECK_MSG(c->n_ids == ref->n, "%s: %d ids, reference %d", what, (int)c->n_ids, (int)ref->n);
    int32_t n = KILN_MIN(c->n_ids, ref->n);
    for (int32_t i = 0; i < n; i++)
        if (c->ids[i] != ref->ids[i]) {
            CHECK_MSG(false, "%s: id %d is %d, reference %d", what, (int)i, (int)c->ids[i],
                      (int)ref->ids[i]);
            break;
        }
    int32_t n_text = ref->n;
    if (n_text > 0 && kiln_vocab_is_eog(g_vocab, ref->ids[n_text - 1])) n_text--;
    kiln_buf want;
    kiln_buf_init(&want);
    ref_text(ref->ids, n_text, &want);
    CHECK_MSG(c->text.len == want.len && memcmp(c->text.data, want.data, want.len) == 0,
              "%s: text \"%.*s\"\nreference \"%s\"", what, (int)c->text.len,
              c->text.data ? c->text.data : "", want.data);
    kiln_buf_deinit(&want);
}

/* ---- tests ---- */

/* The known greedy continuation of "Once upon a time", 252 tokens, through the engine. */
static void greedy_matches_known_text(void) {
    char path[1200], *want = NULL;
    size_t n_want = 0;
    snprintf(path, sizeof(path), "%s/models/stories260K.greedy252.txt", test_data_dir());
    CHECK(kiln_read_file(path, &want, &n_want) == KILN_OK);
    const int32_t prompt[5] = {1, 403, 407, 261, 378};
    ref_out ref;
    ref_greedy(prompt, 5, 252, -1, 0, -1, &ref);
    CHECK_EQ_INT(ref.n, 252);
    kiln_engine *e = engine_new(NULL);
    if (!e) return;
    CHECK_EQ_INT(kiln_engine_max_model_len(e), 512);
    req_out *o = outs_new(1);
    kiln_request r;
    greedy_request(&r, prompt, 5, 252);
    submit_ok(e, &r, o);
    collect(e, o, 1);
    CHECK_EQ_INT(o->term, KILN_EVENT_DONE);
    CHECK_EQ_INT(o->n_terminal, 1);
    CHECK_EQ_INT(o->n_events_after_terminal, 0);
    CHECK_EQ_INT(o->ch[0].finish, KILN_FINISH_LENGTH);
    CHECK_EQ_INT(o->ch[0].n_finish, 1);
    CHECK_EQ_INT(o->usage_prompt, 5);
    CHECK_EQ_INT(o->usage_completion, 252);
    CHECK_MSG(want && o->ch[0].text.len == n_want && memcmp(o->ch[0].text.data, want, n_want) == 0,
              "engine text \"%.*s\"", (int)o->ch[0].text.len, o->ch[0].text.data);
    check_matches_ref(&o->ch[0], &ref, "greedy252");
    /* Longer than the token history's first allocation (prompt + 256): it grows. */
    ref_out *ref400 = calloc(1, sizeof(*ref400));
    kiln_engine_free(e);
    ref_greedy(prompt, 5, 400, -1, 0, -1, ref400);
    CHECK(ref400->n > 300);
    e = engine_new(NULL);
    if (!e) return;
    req_out *o400 = outs_new(1);
    greedy_request(&r, prompt, 5, 400);
    submit_ok(e, &r, o400);
    collect(e, o400, 1);
    check_matches_ref(&o400->ch[0], ref400, "greedy400");
    outs_free(o400, 1);
    free(ref400);
    check_idle(e);
    kiln_engine_free(e);
    outs_free(o, 1);
    kiln_free(want);
}

static const char *const PROMPTS[] = {
    "Once upon a time",     "Lily went to the park",  "The cat sat",       "Tom had a red ball",
    "One day, a little",    "The sun was hot",         "Mom said",          "A big dog",
    "She was sad because",  "They played all day",     "The bird flew",     "Ben and Sue",
    "Once there was a",     "The tree was tall",       "He wanted to",      "It was a rainy day",
    "The little boy",       "Sara liked to draw",      "In the garden",     "At night",
};
#define N_PROMPTS ((int32_t)KILN_ARRAY_LEN(PROMPTS))

/* 20 concurrent greedy requests with different prompts and lengths each produce exactly what the
 * sequential reference produces alone, and they shared forward passes. */
static void concurrent_requests_match_alone(void) {
    int32_t *ids[N_PROMPTS], n_ids[N_PROMPTS], max_tok[N_PROMPTS];
    ref_out *refs = calloc(N_PROMPTS, sizeof(*refs));
    for (int32_t i = 0; i < N_PROMPTS; i++) {
        n_ids[i] = encode(PROMPTS[i], &ids[i]);
        max_tok[i] = 30 + 7 * i;
        ref_greedy(ids[i], n_ids[i], max_tok[i], -1, 0, -1, &refs[i]);
    }
    kiln_engine_opts opts;
    kiln_engine_opts_default(&opts);
    opts.kv_cache_bytes = 8 << 20;
    kiln_engine *e = engine_new(&opts);
    if (!e) return;
    req_out *o = outs_new(N_PROMPTS);
    uint64_t total_gen = 0;
    for (int32_t i = 0; i < N_PROMPTS; i++) {
        kiln_request r;
        greedy_request(&r, ids[i], n_ids[i], max_tok[i]);
        submit_ok(e, &r, &o[i]);
        total_gen += (uint64_t)refs[i].n;
    }
    collect(e, o, N_PROMPTS);
    for (int32_t i = 0; i < N_PROMPTS; i++) {
        CHECK_EQ_INT(o[i].term, KILN_EVENT_DONE);
        CHECK_EQ_INT(o[i].n_terminal, 1);
        CHECK_EQ_INT(o[i].n_events_after_terminal, 0);
        CHECK_EQ_INT(o[i].usage_prompt, n_ids[i]);
        CHECK_EQ_INT(o[i].usage_completion, refs[i].n);
        check_matches_ref(&o[i].ch[0], &refs[i], PROMPTS[i]);
    }
    kiln_engine_stats st;
    kiln_engine_stats_get(e, &st);
    CHECK_MSG(st.max_seqs_in_step >= 16, "max sequences in one step %d", (int)st.max_seqs_in_step);
    CHECK_MSG(st.n_steps < total_gen / 4, "%llu steps for %llu tokens",
              (unsigned long long)st.n_steps, (unsigned long long)total_gen);
    CHECK_EQ_INT(st.n_generated_tokens, total_gen);
    CHECK_EQ_INT(st.n_requests_finished, N_PROMPTS);
    CHECK_EQ_INT(st.n_preemptions, 0);
    check_idle(e);
    kiln_engine_free(e);
    outs_free(o, N_PROMPTS);
    for (int32_t i = 0; i < N_PROMPTS; i++) kiln_free(ids[i]);
    free(refs);
}

/* A KV pool far too small for all requests at once: sequences are preempted and recomputed, and
 * each request still gets exactly its greedy reference. */
static void preemption_keeps_exact_output(void) {
    kiln_kv *probe = NULL;
    CHECK(kiln_kv_new(g_model, 1 << 20, 16, &probe) == KILN_OK);
    if (!probe) return;
    size_t per_block = kiln_kv_bytes_per_block(probe);
    kiln_kv_free(probe);
    enum { N = 10 };
    int32_t *ids[N], n_ids[N];
    ref_out *refs = calloc(N, sizeof(*refs));
    req_out *o = outs_new(N);
    /* References first: the model's forward must not run on two threads at once. */
    for (int32_t i = 0; i < N; i++) {
        n_ids[i] = encode(PROMPTS[i], &ids[i]);
        ref_greedy(ids[i], n_ids[i], 70, -1, 0, -1, &refs[i]);
    }
    kiln_engine_opts opts;
    kiln_engine_opts_default(&opts);
    opts.kv_cache_bytes = per_block * 12; /* 192 token slots */
    kiln_engine *e = engine_new(&opts);
    if (!e) return;
    CHECK_EQ_INT(kiln_engine_max_model_len(e), 192); /* clamped to what the pool holds */
    for (int32_t i = 0; i < N; i++) {
        kiln_request r;
        greedy_request(&r, ids[i], n_ids[i], 70);
        submit_ok(e, &r, &o[i]);
    }
    collect(e, o, N);
    for (int32_t i = 0; i < N; i++) {
        CHECK_EQ_INT(o[i].term, KILN_EVENT_DONE);
        check_matches_ref(&o[i].ch[0], &refs[i], PROMPTS[i]);
    }
    kiln_engine_stats st;
    kiln_engine_stats_get(e, &st);
    CHECK_MSG(st.n_preemptions > 0, "no preemption happened");
    CHECK_EQ_INT(st.n_kv_blocks_total, 12);
    check_idle(e);
    kiln_engine_free(e);
    outs_free(o, N);
    for (int32_t i = 0; i < N; i++) kiln_free(ids[i]);
    free(refs);
}

/* Cancelling queued and running requests: one CANCELLED event each, nothing after it, and every
 * sequence and KV block is freed; the requests left alone still finish correctly. */
static void cancellation_frees_everything(void) {
    kiln_engine_opts opts;
    kiln_engine_opts_default(&opts);
    opts.max_num_seqs = 4;
    opts.kv_cache_bytes = 8 << 20;
    kiln_engine *e = engine_new(&opts);
    if (!e) return;
    enum { N = 12 };
    int32_t *ids[N], n_ids[N];
    req_out *o = outs_new(N);
    for (int32_t i = 0; i < N; i++) {
        n_ids[i] = encode(PROMPTS[i], &ids[i]);
        kiln_request r;
        greedy_request(&r, ids[i], n_ids[i], -1); /* up to the context: long */
        r.ignore_eos = true;
        submit_ok(e, &r, &o[i]);
    }
    /* 8..11 are queued behind max_num_seqs = 4 long requests. */
    for (int32_t i = 8; i < N; i++) kiln_engine_cancel(e, o[i].id);
    /* Wait until 0 and 1 are running (a delta arrived), then cancel them. */
    double t0 = kiln_now_s();
    while ((o[0].n_deltas == 0 || o[1].n_deltas == 0) && kiln_now_s() - t0 < 60) {
        kiln_event *ev = kiln_engine_poll_wait(e, 100);
        if (ev) on_event(ev);
        kiln_engine_event_free(ev);
    }
    kiln_engine_cancel(e, o[0].id);
    kiln_engine_cancel(e, o[1].id);
    kiln_engine_cancel(e, o[1].id); /* twice: still one event */
    kiln_engine_cancel(e, 999999);  /* unknown: ignored */
    /* The rest: 2 and 3 running, 4..7 queued. */
    for (int32_t i = 4; i < 8; i++) kiln_engine_cancel(e, o[i].id);
    kiln_engine_cancel(e, o[2].id);
    kiln_engine_cancel(e, o[3].id);
    collect(e, o, N);
    for (int32_t i = 0; i < N; i++) {
        CHECK_EQ_INT(o[i].n_terminal, 1);
        CHECK_EQ_INT(o[i].n_events_after_terminal, 0);
        CHECK_MSG(o[i].term == KILN_EVENT_CANCELLED, "request %d ended with event %d", (int)i,
                  (int)o[i].term);
    }
    for (int32_t i = 8; i < N; i++) CHECK_EQ_INT(o[i].n_deltas, 0); /* never ran */
    kiln_engine_stats st;
    kiln_engine_stats_get(e, &st);
    CHECK_EQ_INT(st.n_requests_cancelled, N);
    check_idle(e);
    /* Cancelling a finished id does nothing; the engine still serves. */
    kiln_engine_cancel(e, o[0].id);
    req_out *o2 = outs_new(1);
    kiln_request r;
    greedy_request(&r, ids[0], n_ids[0], 5);
    submit_ok(e, &r, o2);
    collect(e, o2, 1);
    CHECK_EQ_INT(o2->term, KILN_EVENT_DONE);
    check_idle(e);
    kiln_engine_free(e);
    outs_free(o, N);
    outs_free(o2, 1);
    for (int32_t i = 0; i < N; i++) kiln_free(ids[i]);
}

/* max_queued_requests: submissions beyond the queue bound get KILN_ERR_FULL. */
static void queue_full(void) {
    kiln_engine_opts opts;
    kiln_engine_opts_default(&opts);
    opts.max_num_seqs = 1;
    opts.max_queued_requests = 2;
    opts.kv_cache_bytes = 4 << 20;
    kiln_engine *e = engine_new(&opts);
    if (!e) return;
    const int32_t prompt[5] = {1, 403, 407, 261, 378};
    req_out *o = outs_new(8);
    int32_t n_ok = 0;
    kiln_err err = KILN_OK;
    static const char *const clients[8] = {"c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"};
    for (int32_t i = 0; i < 8; i++) {
        kiln_request r;
        greedy_request(&r, prompt, 5, -1);
        r.ignore_eos = true;
        r.client = clients[i]; /* distinct clients: the global limit, not one client's share */
        r.user = &o[i];
        uint64_t id = 0;
        err = kiln_engine_submit(e, &r, &id, NULL);
        if (err != KILN_OK) break;
        o[i].id = id;
        n_ok++;
    }
    CHECK_EQ_INT(err, KILN_ERR_FULL);
    CHECK_MSG(n_ok == 2 || n_ok == 3, "%d accepted before FULL", (int)n_ok);
    for (int32_t i = 0; i < n_ok; i++) kiln_engine_cancel(e, o[i].id);
    collect(e, o, n_ok);
    for (int32_t i = 0; i < n_ok; i++) CHECK_EQ_INT(o[i].n_terminal, 1);
    check_idle(e);
    kiln_engine_free(e);
    outs_free(o, 8);
}

/* Submission errors: context overflow (with the numbers), bad fields naming the field. */
static void submit_errors(void) {
    kiln_engine_opts opts;
    kiln_engine_opts_default(&opts);
    opts.max_model_len = 64;
    opts.kv_cache_bytes = 4 << 20;
    kiln_engine *e = engine_new(&opts);
    if (!e) return;
    CHECK_EQ_INT(kiln_engine_max_model_len(e), 64);
    int32_t prompt[64];
    for (int i = 0; i < 64; i++) prompt[i] = i == 0 ? 1 : 300 + i;
    kiln_request r;
    uint64_t id = 7;
    const char *field = NULL;

    greedy_request(&r, prompt, 60, 10);
    CHECK_EQ_INT(kiln_engine_submit(e, &r, &id, &field), KILN_ERR_LIMIT);
    CHECK_STR(field, "max_tokens");
    CHECK_MSG(strstr(kiln_errmsg(), "64") && strstr(kiln_errmsg(), "70") &&
                  strstr(kiln_errmsg(), "60") && strstr(kiln_errmsg(), "10"),
              "%s", kiln_errmsg());
    CHECK_EQ_INT(id, 0);
    greedy_request(&r, prompt, 64, 1);
    CHECK_EQ_INT(kiln_engine_submit(e, &r, &id, &field), KILN_ERR_LIMIT);
    CHECK_STR(field, "prompt");
    greedy_request(&r, prompt, 0, 1);
    CHECK_EQ_INT(kiln_engine_submit(e, &r, &id, &field), KILN_ERR_INVALID);
    CHECK_STR(field, "prompt");
    greedy_request(&r, prompt, 5, 4);
    int32_t bad[2] = {1, 99999};
    r.prompt = bad;
    r.n_prompt = 2;
    CHECK_EQ_INT(kiln_engine_submit(e, &r, &id, &field), KILN_ERR_INVALID);
    CHECK_STR(field, "prompt");
    greedy_request(&r, prompt, 5, 4);
    r.n = 0;
    CHECK_EQ_INT(kiln_engine_submit(e, &r, &id, &field), KILN_ERR_INVALID);
    CHECK_STR(field, "n");
    r.n = KILN_ENGINE_MAX_N + 1;
    CHECK_EQ_INT(kiln_engine_submit(e, &r, &id, &field), KILN_ERR_INVALID);
    greedy_request(&r, prompt, 5, 4);
    r.sampling.top_p = 1.5f;
    CHECK_EQ_INT(kiln_engine_submit(e, &r, &id, &field), KILN_ERR_INVALID);
    CHECK_STR(field, "top_p");
    greedy_request(&r, prompt, 5, 4);
    r.min_tokens = 5;
    CHECK_EQ_INT(kiln_engine_submit(e, &r, &id, &field), KILN_ERR_INVALID);
    CHECK_STR(field, "min_tokens");
    greedy_request(&r, prompt, 5, 4);
    const char *stops[1] = {""};
    r.stop = stops;
    r.n_stop = 1;
    CHECK_EQ_INT(kiln_engine_submit(e, &r, &id, &field), KILN_ERR_INVALID);
    CHECK_STR(field, "stop");
    greedy_request(&r, prompt, 5, 4);
    int32_t bad_stop[1] = {-3};
    r.stop_token_ids = bad_stop;
    r.n_stop_token_ids = 1;
    CHECK_EQ_INT(kiln_engine_submit(e, &r, &id, &field), KILN_ERR_INVALID);
    CHECK_STR(field, "stop_token_ids");

    /* max_tokens absent: up to the context (64 - 60 = 4 tokens), finish length. */
    req_out *o = outs_new(1);
    greedy_request(&r, prompt, 60, -1);
    r.ignore_eos = true;
    submit_ok(e, &r, o);
    collect(e, o, 1);
    CHECK_EQ_INT(o->term, KILN_EVENT_DONE);
    CHECK_EQ_INT(o->ch[0].n_ids, 4);
    CHECK_EQ_INT(o->ch[0].finish, KILN_FINISH_LENGTH);
    check_idle(e);
    kiln_engine_stats st;
    kiln_engine_stats_get(e, &st);
    CHECK_EQ_INT(st.n_requests_submitted, 1); /* rejected submissions were not accepted */
    kiln_engine_free(e);
    outs_free(o, 1);

    /* Bad options. */
    kiln_engine *bad_e = NULL;
    opts.max_num_seqs = 0;
    CHECK_EQ_INT(kiln_engine_new(g_model, g_vocab, &opts, NULL, NULL, &bad_e), KILN_ERR_INVALID);
    kiln_engine_opts_default(&opts);
    opts.kv_cache_bytes = 10;
    CHECK_EQ_INT(kiln_engine_new(g_model, g_vocab, &opts, NULL, NULL, &bad_e), KILN_ERR_INVALID);
    CHECK(bad_e == NULL);
}

/* Runs one request alone and returns its output (o must be outs_new(1)). */
static void run_one(const kiln_request *r, req_out *o) {
    kiln_engine_opts opts;
    kiln_engine_opts_default(&opts);
    opts.kv_cache_bytes = 4 << 20;
    kiln_engine *e = engine_new(&opts);
    if (!e) return;
    submit_ok(e, r, o);
    collect(e, o, 1);
    check_idle(e);
    kiln_engine_free(e);
}

/* Stop strings spanning tokens: the text ends right before the first occurrence (or right after,
 * with include_stop_str_in_output); the earliest of several wins; one that never occurs leaves
 * the full text with finish length. */
static void stop_strings(void) {
    const int32_t prompt[5] = {1, 403, 407, 261, 378};
    ref_out ref;
    ref_greedy(prompt, 5, 60, -1, 0, -1, &ref);
    kiln_buf full, pa, pb;
    kiln_buf_init(&full);
    kiln_buf_init(&pa);
    kiln_buf_init(&pb);
    ref_text(ref.ids, ref.n, &full);
    /* A stop string made of the end of token k's text and the start of token k+1's. */
    char stop[16] = "";
    for (int32_t k = 8; k + 1 < ref.n; k++) {
        ref_text(&ref.ids[k], 1, &pa);
        ref_text(&ref.ids[k + 1], 1, &pb);
        if (pa.len >= 2 && pb.len >= 2) {
            snprintf(stop, sizeof(stop), "%.2s%.2s", pa.data + pa.len - 2, pb.data);
            break;
        }
    }
    CHECK(stop[0] != '\0');
    const char *hit = strstr(full.data, stop);
    CHECK(hit != NULL);
    if (!hit) goto out;
    size_t cut = (size_t)(hit - full.data);

    for (int include = 0; include < 2; include++) {
        req_out *o = outs_new(1);
        kiln_request r;
        greedy_request(&r, prompt, 5, 60);
        const char *stops[2] = {"never appears in this story", stop};
        r.stop = stops;
        r.n_stop = 2;
        r.include_stop_str_in_output = include;
        run_one(&r, o);
        size_t want_len = cut + (include ? strlen(stop) : 0);
        CHECK_EQ_INT(o->term, KILN_EVENT_DONE);
        CHECK_EQ_INT(o->ch[0].finish, KILN_FINISH_STOP);
        CHECK_EQ_INT(o->ch[0].i_stop_str, 1);
        CHECK_EQ_INT(o->ch[0].stop_token, -1);
        CHECK_MSG(o->ch[0].text.len == want_len && memcmp(o->ch[0].text.data, full.data, want_len) == 0,
                  "stop \"%s\" include %d: got \"%.*s\", want \"%.*s\"", stop, include,
                  (int)o->ch[0].text.len, o->ch[0].text.data, (int)want_len, full.data);
        /* The tokens are those generated up to the one completing the stop string. */
        CHECK(o->ch[0].n_ids <= ref.n);
        for (int32_t i = 0; i < o->ch[0].n_ids && i < ref.n; i++) CHECK(o->ch[0].ids[i] == ref.ids[i]);
        kiln_buf txt;
        kiln_buf_init(&txt);
        ref_text(ref.ids, o->ch[0].n_ids, &txt);
        CHECK(txt.len >= cut + strlen(stop));                 /* the last token completes it */
        ref_text(ref.ids, o->ch[0].n_ids - 1, &txt);
        CHECK(txt.len < cut + strlen(stop));                  /* ... and not one earlier */
        kiln_buf_deinit(&txt);
        CHECK_EQ_INT(o->usage_completion, o->ch[0].n_ids);
        outs_free(o, 1);
    }
    /* Two stop strings: the earlier in the text wins, whatever their order in the list. */
    {
        char early[8];
        snprintf(early, sizeof(early), "%.3s", full.data + 5);
        const char *first = strstr(full.data, early);
        req_out *o = outs_new(1);
        kiln_request r;
        greedy_request(&r, prompt, 5, 60);
        const char *stops[2] = {stop, early};
        r.stop = stops;
        r.n_stop = 2;
        run_one(&r, o);
        size_t want_len = (size_t)(first - full.data);
        CHECK_EQ_INT(o->ch[0].i_stop_str, want_len < cut ? 1 : 0);
        CHECK_EQ_INT(o->ch[0].text.len, KILN_MIN(want_len, cut));
        outs_free(o, 1);
    }
    /* min_tokens: stop strings count only in text of tokens past min_tokens (as vLLM). */
    {
        ref_out long_ref;
        ref_greedy(prompt, 5, 100, -1, 0, -1, &long_ref);
        kiln_buf head, tail;
        kiln_buf_init(&head);
        kiln_buf_init(&tail);
        int32_t m = 1;
        for (;; m++) {
            ref_text(long_ref.ids, m, &head);
            if (strstr(head.data, "Lily") || m == long_ref.n) break;
        }
        m += 2;
        CHECK(m < 60);
        ref_text(long_ref.ids, m, &head);
        ref_text(long_ref.ids + m, long_ref.n - m, &tail);
        const char *at = strstr(tail.data, "Lily");
        CHECK(at != NULL); /* the story names Lily again later */
        size_t want_len = head.len + (at ? (size_t)(at - tail.data) : tail.len);
        req_out *o = outs_new(1);
        kiln_request r;
        greedy_request(&r, prompt, 5, 100);
        const char *stops[1] = {"Lily"};
        r.stop = stops;
        r.n_stop = 1;
        r.min_tokens = m;
        run_one(&r, o);
        CHECK_EQ_INT(o->ch[0].finish, at ? KILN_FINISH_STOP : KILN_FINISH_LENGTH);
        CHECK(o->ch[0].n_ids > m);
        CHECK_MSG(o->ch[0].text.len == want_len && memcmp(o->ch[0].text.data, head.data, head.len) == 0 &&
                      memcmp(o->ch[0].text.data + head.len, tail.data, want_len - head.len) == 0,
                  "min_tokens %d: got \"%.*s\"", (int)m, (int)o->ch[0].text.len, o->ch[0].text.data);
        outs_free(o, 1);
        kiln_buf_deinit(&head);
        kiln_buf_deinit(&tail);
    }
    /* Never matched: the full text, finish length, nothing held back at the end. */
    {
        req_out *o = outs_new(1);
        kiln_request r;
        greedy_request(&r, prompt, 5, 60);
        const char *stops[1] = {"Zebra!"};
        r.stop = stops;
        r.n_stop = 1;
        run_one(&r, o);
        CHECK_EQ_INT(o->ch[0].finish, KILN_FINISH_LENGTH);
        check_matches_ref(&o->ch[0], &ref, "no stop match");
        outs_free(o, 1);
    }
out:
    kiln_buf_deinit(&full);
    kiln_buf_deinit(&pa);
    kiln_buf_deinit(&pb);
}

/* stop_token_ids end the choice at the first occurrence (the id is in the tokens, not in the
 * text); with min_tokens the id is banned until then, as the reference's masked argmax. */
static void stop_token_ids_and_min_tokens(void) {
    const int32_t prompt[5] = {1, 403, 407, 261, 378};
    ref_out ref;
    ref_greedy(prompt, 5, 60, -1, 0, -1, &ref);
    int32_t stop_id = ref.ids[6];
    int32_t first = 0;
    while (ref.ids[first] != stop_id) first++;
    ref_out want;
    ref_greedy(prompt, 5, 60, -1, 0, stop_id, &want);
    CHECK_EQ_INT(want.n, first + 1);

    req_out *o = outs_new(1);
    kiln_request r;
    greedy_request(&r, prompt, 5, 60);
    r.stop_token_ids = &stop_id;
    r.n_stop_token_ids = 1;
    run_one(&r, o);
    CHECK_EQ_INT(o->ch[0].finish, KILN_FINISH_STOP);
    CHECK_EQ_INT(o->ch[0].stop_token, stop_id);
    CHECK_EQ_INT(o->ch[0].i_stop_str, -1);
    CHECK_EQ_INT(o->ch[0].n_ids, want.n);
    kiln_buf txt;
    kiln_buf_init(&txt);
    ref_text(want.ids, want.n - 1, &txt);
    CHECK_MSG(o->ch[0].text.len == txt.len && memcmp(o->ch[0].text.data, txt.data, txt.len) == 0,
              "got \"%.*s\" want \"%s\"", (int)o->ch[0].text.len, o->ch[0].text.data, txt.data);
    CHECK_EQ_INT(o->usage_completion, want.n);
    outs_free(o, 1);

    /* include_stop_str_in_output: the stop token's text is sent too. */
    o = outs_new(1);
    r.include_stop_str_in_output = true;
    run_one(&r, o);
    ref_text(want.ids, want.n, &txt);
    CHECK_MSG(o->ch[0].text.len == txt.len && memcmp(o->ch[0].text.data, txt.data, txt.len) == 0,
              "got \"%.*s\" want \"%s\"", (int)o->ch[0].text.len, o->ch[0].text.data, txt.data);
    outs_free(o, 1);

    /* min_tokens past the first occurrence: the reference bans the id until then. */
    ref_out banned;
    int32_t min_tokens = first + 3;
    ref_greedy(prompt, 5, 60, stop_id, min_tokens, stop_id, &banned);
    o = outs_new(1);
    r.include_stop_str_in_output = false;
    r.min_tokens = min_tokens;
    run_one(&r, o);
    check_matches_ref(&o->ch[0], &banned, "min_tokens");
    CHECK(o->ch[0].n_ids > min_tokens);
    outs_free(o, 1);
    kiln_buf_deinit(&txt);
}

/* n = 3 with a seed: reproducible run to run, choice i equal to a lone request seeded seed + i,
 * usage summed over the choices, each choice finishing once. */
static void seeded_n3_reproducible(void) {
    /* Over 16 tokens, so that choices 1 and 2 share choice 0's first prompt block. */
    int32_t *prompt;
    int32_t n_prompt = encode("Once upon a time, there was a little girl named Lily. She loved "
                              "to play outside in the park",
                              &prompt);
    CHECK(n_prompt > 17);
    req_out *a = outs_new(1), *b = outs_new(1), *lone = outs_new(3);
    kiln_request r;
    kiln_request_init(&r);
    r.prompt = prompt;
    r.n_prompt = n_prompt;
    r.max_tokens = 40;
    r.n = 3;
    r.sampling.temperature = 1.0f;
    r.sampling.seed = 1234;
    r.sampling.has_seed = true;
    run_one(&r, a);
    run_one(&r, b);
    int32_t sum = 0;
    for (int c = 0; c < 3; c++) {
        CHECK_EQ_INT(a->ch[c].n_finish, 1);
        CHECK_EQ_INT(a->ch[c].n_ids, b->ch[c].n_ids);
        CHECK(a->ch[c].n_ids > 0 &&
              memcmp(a->ch[c].ids, b->ch[c].ids, sizeof(int32_t) * (size_t)a->ch[c].n_ids) == 0);
        CHECK(a->ch[c].text.len == b->ch[c].text.len &&
              memcmp(a->ch[c].text.data, b->ch[c].text.data, a->ch[c].text.len) == 0);
        sum += a->ch[c].n_ids;
        kiln_request one = r;
        one.n = 1;
        one.sampling.seed = 1234 + (uint64_t)c;
        run_one(&one, &lone[c]);
        CHECK(lone[c].ch[0].n_ids == a->ch[c].n_ids &&
              memcmp(lone[c].ch[0].ids, a->ch[c].ids, sizeof(int32_t) * (size_t)a->ch[c].n_ids) == 0);
    }
    CHECK_EQ_INT(a->usage_completion, sum);
    CHECK_EQ_INT(a->usage_prompt, n_prompt);
    /* Temperature 1 over a 512-token vocabulary: the three choices are not all the same. */
    CHECK(!(a->ch[0].text.len == a->ch[1].text.len && a->ch[1].text.len == a->ch[2].text.len &&
            memcmp(a->ch[0].text.data, a->ch[1].text.data, a->ch[0].text.len) == 0 &&
            memcmp(a->ch[1].text.data, a->ch[2].text.data, a->ch[1].text.len) == 0));
    outs_free(a, 1);
    outs_free(b, 1);
    outs_free(lone, 3);
    kiln_free(prompt);
}

/* Logprobs of the chosen token equal the reference log-softmax; top lists are sorted and start
 * with the chosen token under greedy decoding. */
static void logprobs_match_reference(void) {
    const int32_t prompt[5] = {1, 403, 407, 261, 378};
    ref_out ref;
    ref_greedy(prompt, 5, 20, -1, 0, -1, &ref);
    req_out *o = outs_new(1);
    kiln_request r;
    greedy_request(&r, prompt, 5, 20);
    r.sampling.n_top_logprobs = 5;
    run_one(&r, o);
    choice_out *c = &o->ch[0];
    CHECK_EQ_INT(c->n_ids, ref.n);
    CHECK(c->top_sorted);
    for (int32_t i = 0; i < c->n_ids && i < ref.n; i++) {
        CHECK_NEAR(c->logprob[i], ref.logprob[i], 1e-4);
        CHECK_EQ_INT(c->n_top[i], 5);
        CHECK_EQ_INT(c->top0[i].token, ref.ids[i]);
        CHECK_NEAR(c->top0[i].logprob, c->logprob[i], 1e-6);
    }
    outs_free(o, 1);
    /* Without logprobs: no alternatives. */
    o = outs_new(1);
    r.sampling.n_top_logprobs = -1;
    run_one(&r, o);
    CHECK_EQ_INT(o->ch[0].n_top[0], 0);
    outs_free(o, 1);
}

/* Chunked prefill (a token budget of 8 rows per step) with prompt logprobs on one request of
 * n = 2 and a plain request beside it: outputs equal the sequential reference, and the
 * PROMPT_LOGPROBS event comes once, before any delta, with the reference's logprobs. */
static void chunked_prefill_and_prompt_logprobs(void) {
    const char *text_a = "Once upon a time, there was a little girl named Lily. She loved to play "
                         "outside in the park with her friends and her dog";
    const char *text_b = "The big brown dog ran to the tree because he saw a cat sitting there";
    int32_t *ia, *ib;
    int32_t na = encode(text_a, &ia), nb = encode(text_b, &ib);
    CHECK(na > 20 && nb > 10);
    ref_out *ra = calloc(1, sizeof(*ra)), *rb = calloc(1, sizeof(*rb));
    ref_greedy(ia, na, 25, -1, 0, -1, ra);
    ref_greedy(ib, nb, 25, -1, 0, -1, rb);
    kiln_engine_opts opts;
    kiln_engine_opts_default(&opts);
    opts.max_num_seqs = 4;
    opts.max_num_batched_tokens = 8;
    opts.kv_cache_bytes = 4 << 20;
    kiln_engine *e = engine_new(&opts);
    if (!e) return;
    req_out *o = outs_new(2);
    kiln_request r;
    greedy_request(&r, ia, na, 25);
    r.n = 2;
    r.n_prompt_logprobs = 3;
    submit_ok(e, &r, &o[0]);
    greedy_request(&r, ib, nb, 25);
    submit_ok(e, &r, &o[1]);
    collect(e, o, 2);
    check_matches_ref(&o[0].ch[0], ra, "chunked a0");
    check_matches_ref(&o[0].ch[1], ra, "chunked a1");
    check_matches_ref(&o[1].ch[0], rb, "chunked b");
    CHECK_EQ_INT(o[0].n_prompt_events, 1);
    CHECK_EQ_INT(o[0].n_deltas_before_prompt, 0);
    CHECK_EQ_INT(o[1].n_prompt_events, 0);
    CHECK_EQ_INT(o[0].n_prompt_ids, na);
    CHECK(o[0].prompt_top_sorted);
    CHECK_EQ_INT(o[0].prompt_n_top[0], 0);
    for (int32_t p = 0; p < o[0].n_prompt_ids && p < na; p++) {
        CHECK_EQ_INT(o[0].prompt_ids[p], ia[p]);
        if (p == 0) continue;
        CHECK_MSG(fabs(o[0].prompt_lp[p] - ra->prompt_lp[p]) < 1e-4, "p %d: %g vs %g", (int)p, o[0].prompt_lp[p], ra->prompt_lp[p]);
        CHECK_EQ_INT(o[0].prompt_n_top[p], 3);
        CHECK_EQ_INT(o[0].prompt_top0[p], ra->prompt_best[p]);
    }
    kiln_engine_stats st;
    kiln_engine_stats_get(e, &st);
    /* Choice 1 shares the blocks choice 0 filled with prompt positions up to na - 2. */
    CHECK_EQ_INT(st.n_prompt_tokens, 2 * na - (na - 1) / 16 * 16 + nb);
    CHECK(st.n_rows_forwarded <= 8 * st.n_steps);
    check_idle(e);
    /* Out of range. */
    uint64_t id;
    const char *field = NULL;
    r.n_prompt_logprobs = 21;
    CHECK_EQ_INT(kiln_engine_submit(e, &r, &id, &field), KILN_ERR_INVALID);
    CHECK_STR(field, "prompt_logprobs");
    kiln_engine_free(e);
    outs_free(o, 2);
    kiln_free(ia);
    kiln_free(ib);
    free(ra);
    free(rb);
}

/* A seeded random mix under pressure (12 KV blocks of 4 tokens, 16-row budget, 5 sequences):
 * n 1..3, greedy or seeded sampling, stop strings and ids, prompt logprobs, cancellations at
 * random moments. Invariants: one terminal event per request, one finishing delta per choice of
 * a finished request, usage = tokens received, greedy outputs are prefixes of the reference
 * (stops only truncate), prompt logprobs filled, and everything freed at the end. */
static void random_mix(uint64_t seed, int32_t bs, int32_t n_blocks, int32_t budget, int32_t max_seqs) {
    int32_t *ids[N_PROMPTS], n_ids[N_PROMPTS];
    ref_out *refs = calloc(N_PROMPTS, sizeof(*refs));
    for (int32_t i = 0; i < N_PROMPTS; i++) {
        n_ids[i] = encode(PROMPTS[i], &ids[i]);
        ref_greedy(ids[i], n_ids[i], 40, -1, 0, -1, &refs[i]);
    }
    kiln_kv *probe = NULL;
    CHECK(kiln_kv_new(g_model, 1 << 20, bs, &probe) == KILN_OK);
    if (!probe) return;
    size_t per_block = kiln_kv_bytes_per_block(probe);
    kiln_kv_free(probe);
    kiln_engine_opts opts;
    kiln_engine_opts_default(&opts);
    opts.block_size = bs;
    opts.kv_cache_bytes = per_block * (size_t)n_blocks;
    opts.max_num_seqs = max_seqs;
    opts.max_num_batched_tokens = budget;
    kiln_engine *e = engine_new(&opts);
    if (!e) return;
    enum { N = 40 };
    req_out *o = outs_new(N);
    int32_t which[N], max_tok[N];
    bool greedy[N], cancel_at[N];
    kiln_rng rng;
    kiln_rng_seed(&rng, seed);
    const char *stops[2] = {"the", "ily"};
    int32_t stop_ids[1] = {13};
    for (int32_t i = 0; i < N; i++) {
        which[i] = (int32_t)(kiln_rng_u64(&rng) % N_PROMPTS);
        max_tok[i] = 1 + (int32_t)(kiln_rng_u64(&rng) % 40);
        greedy[i] = kiln_rng_u64(&rng) % 2;
        cancel_at[i] = kiln_rng_u64(&rng) % 4 == 0;
        kiln_request r;
        greedy_request(&r, ids[which[i]], n_ids[which[i]], max_tok[i]);
        r.n = 1 + (int32_t)(kiln_rng_u64(&rng) % 3);
        if (!greedy[i]) {
            r.sampling.temperature = 0.9f;
            r.sampling.has_seed = true;
            r.sampling.seed = (uint64_t)i;
            r.sampling.n_top_logprobs = 2;
        }
        if (kiln_rng_u64(&rng) % 3 == 0) {
            r.stop = stops;
            r.n_stop = 2;
        }
        if (kiln_rng_u64(&rng) % 3 == 0) {
            r.stop_token_ids = stop_ids;
            r.n_stop_token_ids = 1;
        }
        if (kiln_rng_u64(&rng) % 4 == 0) r.n_prompt_logprobs = 2;
        submit_ok(e, &r, &o[i]);
        if (cancel_at[i] && kiln_rng_u64(&rng) % 2) kiln_engine_cancel(e, o[i].id);
        /* Drain a little now and then so requests arrive while others run. */
        for (int k = 0; k < 3; k++) {
            kiln_event *ev = kiln_engine_poll_wait(e, 2);
            if (ev) on_event(ev);
            kiln_engine_event_free(ev);
        }
    }
    for (int32_t i = 0; i < N; i++)
        if (cancel_at[i]) kiln_engine_cancel(e, o[i].id);
    collect(e, o, N);
    for (int32_t i = 0; i < N; i++) {
        CHECK_EQ_INT(o[i].n_terminal, 1);
        CHECK_EQ_INT(o[i].n_events_after_terminal, 0);
        CHECK(o[i].term == KILN_EVENT_DONE || (cancel_at[i] && o[i].term == KILN_EVENT_CANCELLED));
        CHECK(o[i].n_prompt_events <= 1);
        CHECK_EQ_INT(o[i].n_deltas_before_prompt, 0);
        for (int32_t p = 1; p < o[i].n_prompt_ids; p++)
            CHECK_MSG(o[i].prompt_lp[p] < 0 && o[i].prompt_n_top[p] == 2, "request %d prompt position %d",
                      (int)i, (int)p);
        if (o[i].term != KILN_EVENT_DONE) continue;
        int32_t sum = 0;
        for (int32_t c = 0; c < o[i].n; c++) {
            const choice_out *ch = &o[i].ch[c];
            CHECK_EQ_INT(ch->n_finish, 1);
            CHECK(ch->n_ids >= 1 && ch->n_ids <= max_tok[i]);
            sum += ch->n_ids;
            if (greedy[i]) {
                const ref_out *rf = &refs[which[i]];
                bool prefix = ch->n_ids <= rf->n;
                for (int32_t k = 0; prefix && k < ch->n_ids; k++) prefix = ch->ids[k] == rf->ids[k];
                CHECK_MSG(prefix, "request %d choice %d is not a prefix of its reference", (int)i, (int)c);
            }
        }
        CHECK_EQ_INT(o[i].usage_completion, sum);
    }
    kiln_engine_stats st;
    kiln_engine_stats_get(e, &st);
    CHECK_MSG(st.n_preemptions > 0, "no preemption");
    CHECK(st.n_requests_cancelled > 0 && st.n_requests_finished > 0);
    CHECK(st.max_seqs_in_step >= KILN_MIN(3, max_seqs));
    CHECK_EQ_INT(st.n_requests_finished + st.n_requests_cancelled, N);
    check_idle(e);
    kiln_engine_free(e);
    outs_free(o, N);
    for (int32_t i = 0; i < N_PROMPTS; i++) kiln_free(ids[i]);
    free(refs);
}

static void random_mix_stress(void) {
    const char *env = getenv("KILN_ENGINE_STRESS_SEEDS"); /* more seeds when hunting bugs */
    int n_seeds = env ? atoi(env) : 1;
    for (int i = 0; i < n_seeds; i++) {
        random_mix(77 + (uint64_t)i, 4, 16, 16, 5);  /* 64 slots, tiny blocks */
        random_mix(91 + (uint64_t)i, 16, 5, 7, 3);   /* 80 slots, a 7-row budget */
        random_mix(13 + (uint64_t)i, 8, 12, 40, 8);
    }
}

/* Runs one greedy request on e and checks it against the reference; returns the stats after. */
static int32_t g_last_cached; /* cached_tokens of the last run_greedy_on */

static kiln_engine_stats run_greedy_on(kiln_engine *e, const int32_t *prompt, int32_t n_prompt,
                                       int32_t max_tokens, const char *what) {
    ref_out *ref = calloc(1, sizeof(*ref));
    kiln_engine_stats st;
    memset(&st, 0, sizeof(st));
    req_out *o = outs_new(1);
    kiln_request r;
    greedy_request(&r, prompt, n_prompt, max_tokens);
    submit_ok(e, &r, o);
    collect(e, o, 1);
    kiln_engine_stats_get(e, &st);
    /* The reference runs after: the engine is idle, the model free for this thread. */
    ref_greedy(prompt, n_prompt, max_tokens, -1, 0, -1, ref);
    CHECK_EQ_INT(o->term, KILN_EVENT_DONE);
    check_matches_ref(&o->ch[0], ref, what);
    g_last_cached = o->usage_cached;
    outs_free(o, 1);
    free(ref);
    return st;
}

/* Prefix caching: a repeated prompt reuses its full blocks (all but the last token's block is
 * skipped), a prompt sharing two blocks reuses exactly those, outputs stay exact; a small pool
 * evicts cached blocks on demand; with caching off nothing is reused. */
static void prefix_cache_reuse(void) {
    const char *text = "Once upon a time, there was a little girl named Lily. She loved to play "
                       "outside in the park with her friends and her big brown dog";
    int32_t *p;
    int32_t n = encode(text, &p);
    CHECK(n > 34);
    kiln_engine_opts opts;
    kiln_engine_opts_default(&opts);
    opts.kv_cache_bytes = 4 << 20;
    kiln_engine *e = engine_new(&opts);
    if (!e) return;
    kiln_engine_stats s0 = run_greedy_on(e, p, n, 20, "first");
    CHECK_EQ_INT(s0.n_prefix_cache_hit_tokens, 0);
    CHECK_EQ_INT(s0.n_kv_blocks_cached, n / 16);
    CHECK_EQ_INT(s0.n_kv_blocks_free, s0.n_kv_blocks_total); /* cached, unused: evictable */
    kiln_engine_stats s1 = run_greedy_on(e, p, n, 20, "repeat");
    int32_t hit = (n - 1) / 16 * 16;
    CHECK_EQ_INT(s1.n_prefix_cache_hit_tokens, hit);
    CHECK_EQ_INT(g_last_cached, hit); /* the request's own usage.cached_tokens */
    CHECK_EQ_INT(s1.n_prefix_cache_query_tokens, 2 * n);
    CHECK_EQ_INT(s1.n_prompt_tokens - s0.n_prompt_tokens, n - hit);
    /* Same first 32 tokens, another ending. */
    int32_t q[40];
    memcpy(q, p, 32 * sizeof(int32_t));
    for (int i = 32; i < 40; i++) q[i] = 300 + i;
    kiln_engine_stats s2 = run_greedy_on(e, q, 40, 15, "shared prefix");
    CHECK_EQ_INT(s2.n_prefix_cache_hit_tokens - s1.n_prefix_cache_hit_tokens, 32);
    check_idle(e);
    kiln_engine_free(e);

    /* 6 blocks of 16: every new prompt must evict the previous ones' blocks. */
    kiln_kv *probe = NULL;
    CHECK(kiln_kv_new(g_model, 1 << 20, 16, &probe) == KILN_OK);
    if (!probe) return;
    size_t per_block = kiln_kv_bytes_per_block(probe);
    kiln_kv_free(probe);
    opts.kv_cache_bytes = per_block * 6;
    e = engine_new(&opts);
    if (!e) return;
    int32_t buf[60];
    for (int k = 0; k < 4; k++) {
        buf[0] = 1;
        for (int i = 1; i < 60; i++) buf[i] = 260 + (i * 7 + k * 13) % 200;
        run_greedy_on(e, buf, 60, 20, "evicting");
    }
    kiln_engine_stats st = run_greedy_on(e, buf, 60, 20, "evicting repeat");
    CHECK_EQ_INT(st.n_prefix_cache_hit_tokens, 48);
    CHECK(st.n_kv_blocks_cached <= 6);
    check_idle(e);
    kiln_engine_free(e);

    opts.kv_cache_bytes = 4 << 20;
    opts.enable_prefix_caching = false;
    e = engine_new(&opts);
    if (!e) return;
    run_greedy_on(e, p, n, 5, "off");
    st = run_greedy_on(e, p, n, 5, "off repeat");
    CHECK_EQ_INT(st.n_prefix_cache_hit_tokens, 0);
    CHECK_EQ_INT(st.n_kv_blocks_cached, 0);
    CHECK_EQ_INT(st.n_prompt_tokens, 2 * n);
    kiln_engine_free(e);
    kiln_free(p);
}

/* The notify callback runs after events are pushed. */
/* Fair share: with one sequence slot, client A's backlog of 5 queued requests does not delay
 * client B's request, which queued after them, by more than one of A's (round-robin admission).
 * Queued prompt tokens are bounded: past max_queued_tokens submit answers FULL without counting
 * the request; a prompt longer than the limit can never queue (LIMIT). */
static void fair_share_and_queued_tokens(void) {
    kiln_engine_opts opts;
    kiln_engine_opts_default(&opts);
    opts.max_num_seqs = 1;
    opts.kv_cache_bytes = 4 << 20;
    opts.max_queued_tokens = 35;
    kiln_engine *e = engine_new(&opts);
    if (!e) return;
    const int32_t prompt[6] = {1, 403, 407, 261, 378, 290};
    req_out *o = outs_new(8);
    g_n_terminal = 0;
    kiln_request r;
    greedy_request(&r, prompt, 5, 40);
    r.ignore_eos = true;
    r.client = "A";
    /* A0 may be running or still queued when the rest arrive: either way B is admitted right
     * after A's first queued request (round 0), not behind A's whole backlog. */
    for (int i = 0; i <= 5; i++) submit_ok(e, &r, &o[i]);
    r.client = "B";
    submit_ok(e, &r, &o[6]); /* 30 or 35 queued prompt tokens: within the limit */
    kiln_engine_stats before, after;
    kiln_engine_stats_get(e, &before);
    uint64_t id = 0;
    r.user = &o[7];
    r.n_prompt = 6; /* 36 or 41 > 35 */
    CHECK_EQ_INT(kiln_engine_submit(e, &r, &id, NULL), KILN_ERR_FULL);
    CHECK_EQ_INT(id, 0);
    int32_t big[36];
    for (int i = 0; i < 36; i++) big[i] = 300 + i;
    r.prompt = big;
    r.n_prompt = 36;
    const char *field = NULL;
    CHECK_EQ_INT(kiln_engine_submit(e, &r, &id, &field), KILN_ERR_LIMIT);
    CHECK(field && !strcmp(field, "prompt"));
    kiln_engine_stats_get(e, &after);
    CHECK_EQ_INT(after.n_requests_submitted, before.n_requests_submitted);
    collect(e, o, 7);
    for (int i = 0; i < 7; i++) CHECK_EQ_INT(o[i].term, KILN_EVENT_DONE);
    CHECK_EQ_INT(o[0].term_order, 1);
    CHECK_MSG(o[6].term_order <= 3, "B finished %dth, behind A's backlog", (int)o[6].term_order);
    for (int i = 2; i <= 5; i++) CHECK(o[i].term_order > o[6].term_order);
    check_idle(e);
    kiln_engine_free(e);
    outs_free(o, 8);
}

/* Fair share of the queue: one client cannot take more than half of max_queued_requests, so
 * another client still finds room; when the first client's requests run, it may queue again. */
static void queue_share_per_client(void) {
    kiln_engine_opts opts;
    kiln_engine_opts_default(&opts);
    opts.max_num_seqs = 1;
    opts.max_queued_requests = 4;
    opts.kv_cache_bytes = 4 << 20;
    kiln_engine *e = engine_new(&opts);
    if (!e) return;
    const int32_t prompt[5] = {1, 403, 407, 261, 378};
    req_out *o = outs_new(8);
    kiln_request r;
    greedy_request(&r, prompt, 5, 60);
    r.ignore_eos = true;
    r.client = "A";
    int32_t n_a = 0;
    kiln_err err = KILN_OK;
    for (; n_a < 6; n_a++) {
        uint64_t id = 0;
        r.user = &o[n_a];
        o[n_a].n = 1;
        err = kiln_engine_submit(e, &r, &id, NULL);
        if (err != KILN_OK) break;
        o[n_a].id = id;
    }
    CHECK_EQ_INT(err, KILN_ERR_FULL);
    /* 2 queued (its share) plus possibly the one already running. */
    CHECK_MSG(n_a == 2 || n_a == 3, "client A got %d requests in", (int)n_a);
    r.client = "B";
    submit_ok(e, &r, &o[6]); /* room left for B, though A asked for more */
    collect(e, o, n_a);
    collect(e, &o[6], 1);
    for (int32_t i = 0; i < n_a; i++) CHECK_EQ_INT(o[i].term, KILN_EVENT_DONE);
    CHECK_EQ_INT(o[6].term, KILN_EVENT_DONE);
    check_idle(e);
    kiln_engine_free(e);
    outs_free(o, 8);
}

static pthread_mutex_t g_notify_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_notified;
static void notify_cb(void *ctx) {
    pthread_mutex_lock(&g_notify_mu);
    g_notified += ctx == (void *)&g_notified;
    pthread_mutex_unlock(&g_notify_mu);
}

static void notify_and_free_in_flight(void) {
    kiln_engine_opts opts;
    kiln_engine_opts_default(&opts);
    opts.kv_cache_bytes = 4 << 20;
    opts.max_num_seqs = 2;
    kiln_engine *e = NULL;
    CHECK(kiln_engine_new(g_model, g_vocab, &opts, notify_cb, &g_notified, &e) == KILN_OK);
    if (!e) return;
    const int32_t prompt[5] = {1, 403, 407, 261, 378};
    req_out *o = outs_new(4);
    for (int i = 0; i < 4; i++) {
        kiln_request r;
        greedy_request(&r, prompt, 5, -1);
        r.ignore_eos = true;
        submit_ok(e, &r, &o[i]);
    }
    kiln_event *ev = kiln_engine_poll_wait(e, 10000);
    CHECK(ev != NULL);
    kiln_engine_event_free(ev);
    /* notify runs just after the push, outside the lock: give it a moment. */
    int notified = 0;
    for (int i = 0; i < 5000 && !notified; i++) {
        pthread_mutex_lock(&g_notify_mu);
        notified = g_notified;
        pthread_mutex_unlock(&g_notify_mu);
        if (!notified) usleep(1000);
    }
    CHECK(notified > 0);
    /* Freed with 2 running, 2 queued and events unpolled: no leak, no crash (ASan). */
    kiln_engine_free(e);
    outs_free(o, 4);
}

/* Allocation failures inside submit leave nothing queued and nothing leaked. The engine thread is
 * idle (no request), so the process-wide fault injection only hits this thread. */
static void submit_allocation_failures(void) {
    kiln_engine_opts opts;
    kiln_engine_opts_default(&opts);
    opts.kv_cache_bytes = 4 << 20;
    kiln_engine *e = engine_new(&opts);
    if (!e) return;
    const int32_t prompt[5] = {1, 403, 407, 261, 378};
    const char *stops[2] = {"abc", "Lily"};
    int n_nomem = 0;
    for (long n = 0; n < 64; n++) {
        kiln_request r;
        greedy_request(&r, prompt, 5, 3);
        r.n = 2;
        r.stop = stops;
        r.n_stop = 2;
        uint64_t id = 0;
        kiln_alloc_fail_after(n);
        kiln_err err = kiln_engine_submit(e, &r, &id, NULL);
        kiln_alloc_fail_after(-1);
        if (err == KILN_OK) {
            req_out *o = outs_new(1);
            o->id = id;
            o->n = 2;
            /* user was NULL: collect by hand */
            kiln_event *ev;
            int got_terminal = 0;
            double t0 = kiln_now_s();
            while (!got_terminal && kiln_now_s() - t0 < 30) {
                ev = kiln_engine_poll_wait(e, 100);
                if (ev && ev->type != KILN_EVENT_DELTA) got_terminal = 1;
                if (ev) CHECK_EQ_INT(ev->request_id, id);
                kiln_engine_event_free(ev);
            }
            CHECK(got_terminal);
            outs_free(o, 1);
            break;
        }
        CHECK_EQ_INT(err, KILN_ERR_NOMEM);
        n_nomem++;
    }
    CHECK(n_nomem > 3);
    check_idle(e);
    kiln_engine_free(e);
}

/* Allocation failures on the engine thread (scratch growth, events) end the request with one
 * ERROR event; its blocks are freed and the engine serves the next request normally. Submit's own
 * allocations are counted first, so that the failures start right after it. */
static void engine_allocation_failure(void) {
    kiln_engine_opts opts;
    kiln_engine_opts_default(&opts);
    opts.kv_cache_bytes = 4 << 20;
    kiln_engine *e = engine_new(&opts);
    if (!e) return;
    const int32_t prompt[5] = {1, 403, 407, 261, 378};
    kiln_request r;
    greedy_request(&r, prompt, 5, 8);
    uint64_t id = 0;
    long k = 0;
    kiln_err err = KILN_ERR_NOMEM;
    for (; k < 64 && err == KILN_ERR_NOMEM; k++) {
        kiln_alloc_fail_after(k); /* the engine thread is idle: only submit allocates */
        err = kiln_engine_submit(e, &r, &id, NULL);
        if (err != KILN_OK) kiln_alloc_fail_after(-1);
    }
    CHECK_EQ_INT(err, KILN_OK);
    /* Still failing: the engine's own allocations (the first event at the latest) fail. */
    kiln_event *ev = NULL;
    int n_delta = 0, n_term = 0;
    kiln_event_type term = KILN_EVENT_DONE;
    double t0 = kiln_now_s();
    while (!n_term && kiln_now_s() - t0 < 30) {
        ev = kiln_engine_poll_wait(e, 100);
        if (!ev) continue;
        if (ev->type == KILN_EVENT_DELTA) n_delta++;
        else {
            n_term++;
            term = ev->type;
            CHECK(ev->message && ev->message[0]);
        }
        kiln_engine_event_free(ev);
    }
    kiln_alloc_fail_after(-1);
    CHECK_EQ_INT(n_term, 1);
    CHECK_EQ_INT(term, KILN_EVENT_ERROR);
    CHECK_EQ_INT(n_delta, 0);
    check_idle(e);
    kiln_engine_stats st;
    kiln_engine_stats_get(e, &st);
    CHECK_EQ_INT(st.n_requests_failed, 1);
    req_out *o = outs_new(1);
    submit_ok(e, &r, o);
    collect(e, o, 1);
    CHECK_EQ_INT(o->term, KILN_EVENT_DONE);
    CHECK_EQ_INT(o->ch[0].n_ids, 8);
    check_idle(e);
    kiln_engine_free(e);
    outs_free(o, 1);
}

int main(void) {
    snprintf(model_path, sizeof(model_path), "%s/models/stories260K.gguf", test_data_dir());
    kiln_model_opts mo = {.n_threads = 1};
    if (kiln_model_load(model_path, &mo, &g_model) != KILN_OK) {
        fprintf(stderr, "%s: %s\n", model_path, kiln_errmsg());
        return 1;
    }
    if (kiln_vocab_load(kiln_model_gguf(g_model), &g_vocab) != KILN_OK) {
        fprintf(stderr, "%s: vocab: %s\n", model_path, kiln_errmsg());
        return 1;
    }
    g_n_vocab = kiln_model_hparams(g_model)->n_vocab;
    RUN(greedy_matches_known_text);
    RUN(concurrent_requests_match_alone);
    RUN(preemption_keeps_exact_output);
    RUN(cancellation_frees_everything);
    RUN(queue_full);
    RUN(submit_errors);
    RUN(stop_strings);
    RUN(stop_token_ids_and_min_tokens);
    RUN(seeded_n3_reproducible);
    RUN(logprobs_match_reference);
    RUN(chunked_prefill_and_prompt_logprobs);
    RUN(random_mix_stress);
    RUN(prefix_cache_reuse);
    RUN(fair_share_and_queued_tokens);
    RUN(queue_share_per_client);
    RUN(notify_and_free_in_flight);
    RUN(submit_allocation_failures);
    RUN(engine_allocation_failure);
    kiln_vocab_free(g_vocab);
    kiln_model_free(g_model);
    return TEST_REPORT("test_engine");
}
