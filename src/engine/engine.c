/* engine.c: the engine thread and its scheduler (continuous batching over the paged KV cache).
 * Each step: take new requests and cancellations from the inbox, give every running sequence its
 * decode row or prefill chunk (oldest first; when KV blocks run out the newest running sequence is
 * preempted and later recomputed), admit waiting sequences with the leftover token budget and
 * blocks, run ONE kiln_model_forward, then sample, detokenize, match stops and post events.
 * Threads: fields marked "under mu" are shared with submit/cancel/poll callers; all the rest
 * (sequences, KV cache, samplers, scratch) is touched by the engine thread only, except during
 * kiln_engine_new / kiln_engine_free when that thread is not running. */
#include "engine/engine.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define TERM_MSG_BYTES 512 /* message room of the preallocated terminal event */
#define LP_ROWS_BYTES ((size_t)32 << 20) /* logits of prompt-logprob rows per step */

/* An event and its link in a queue; ev first so that a kiln_event * is the node. */
typedef struct evnode {
    kiln_event ev;
    struct evnode *next;
} evnode;

typedef struct ev_list {
    evnode *head, *tail;
} ev_list;

typedef enum seq_state {
    SEQ_WAITING,      /* in e->waiting, no blocks */
    SEQ_RUNNING,      /* in e->running, holds blocks */
    SEQ_FORK_PENDING, /* choice > 0 waiting for choice 0's prefill to share its blocks; no list */
    SEQ_DONE          /* finished or never queued; no list, no blocks */
} seq_state;

struct ereq;

/* One choice of a request. Owner: the engine thread (built by submit before it is queued). */
typedef struct seq {
    struct ereq *req;
    int32_t index;             /* choice index */
    seq_state state;
    int32_t *tokens;           /* (cap_tokens,) prompt then generated ids */
    int32_t cap_tokens;        /* grows by doubling up to n_prompt + max_tokens */
    int32_t n_tokens;          /* known tokens */
    int32_t n_computed;        /* tokens whose K/V are in the cache (positions 0..n_computed) */
    int32_t n_gen;             /* generated tokens */
    int32_t *blocks;           /* (max_blocks_per_seq,) block table */
    int32_t n_blocks;          /* blocks held */
    kiln_sampler *sampler;     /* owned */
    kiln_detok detok;
    kiln_stop_matcher stop;    /* owned strings */
    bool stop_ready;           /* stop was initialized (deinit needed) */
    struct seq *prev, *next;   /* links in waiting or running */
    int32_t n_sched;           /* rows scheduled in the current step */
    int32_t i_logits;          /* logits row of the current step, -1 if none */
    bool lp_rows;              /* this step: every row wants logits (prompt logprobs) */
    int32_t i_lp0;             /* this step: logits row of the first scheduled row */
    uint64_t round;            /* fair-share round of a new request's choice 0 (waiting order) */
} seq;

typedef struct seq_list {
    seq *head, *tail;
    int32_t n;
} seq_list;

/* An accepted request. Built by submit (any thread); owned by the engine once queued. */
typedef struct ereq {
    uint64_t id;
    void *user;
    int32_t n;                 /* choices */
    int32_t n_prompt;
    int32_t max_tokens;        /* resolved (> 0) */
    int32_t min_tokens;
    bool ignore_eos;
    bool include_stop;
    bool want_logprobs;        /* sampling.n_top_logprobs >= 0 */
    int32_t *stop_ids;         /* (n_stop_ids,) owned */
    int32_t n_stop_ids;
    seq *seqs;                 /* (n,) owned */
    int32_t n_prompt_lp;       /* top alternatives per prompt position; -1 = no prompt logprobs */
    bool lp_pending;           /* the PROMPT_LOGPROBS event is still to be posted */
    float *lp;                 /* (n_prompt,) logprob of prompt token p given 0..p-1 (lp[0] = 0) */
    kiln_token_logprob *lp_top;/* (n_prompt, n_prompt_lp) alternatives at each position */
    int32_t *prompt;           /* (n_prompt,) copy, for the PROMPT_LOGPROBS event */
    evnode *term;              /* preallocated terminal event, handed over when posted */
    int32_t n_done;            /* finished choices */
    int32_t n_completion;      /* generated tokens over all choices */
    bool cancel_requested;     /* under mu: kiln_engine_cancel was called */
    bool admitted_shared;      /* under mu: a choice was admitted (no longer queued) */
    bool cancelled;            /* engine: the cancel was seen */
    bool failed;               /* engine: an error ends this request at the end of the step */
    kiln_err fail_err;
    char fail_msg[256];
    bool started;              /* engine: a choice was admitted once */
    uint64_t client;           /* hash of kiln_request.client (0 = anonymous) */
    uint64_t t_submit_ns;
    int64_t queue_ns;          /* engine: submit to first admission */
    int32_t n_cached;          /* engine: prefix-cache hits of choice 0 at first admission */
    struct ereq *anext, *aprev;/* under mu: every accepted request without a terminal event */
    struct ereq *inext;        /* under mu: inbox */
    struct ereq *enext, *eprev;/* engine: requests taken from the inbox */
} ereq;

struct kiln_engine {
    kiln_model *model;            /* borrowed */
    const kiln_vocab *vocab;      /* borrowed */
    kiln_kv *kv;                  /* owned */
    kiln_engine_opts opts;        /* resolved */
    int32_t n_vocab;              /* logits width */
    int32_t block_size;
    int32_t max_model_len;
    int32_t max_blocks_per_seq;
    kiln_engine_notify_fn notify;
    void *notify_ctx;
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t mu;
    pthread_cond_t work_cond;     /* the engine waits here when idle */
    pthread_cond_t ev_cond;       /* poll_wait waits here */
    /* under mu */
    bool stop;
    ereq *inbox_head, *inbox_tail;
    int32_t n_inbox;
    ereq *all_head;
    int32_t n_active;
    int32_t n_cancel_pending;
    int32_t n_waiting_reqs_shared; /* copy of n_waiting_reqs for the FULL check */
    int64_t n_inbox_tokens;        /* prompt tokens in the inbox */
    int64_t n_waiting_tokens_shared; /* copy of n_waiting_tokens for the FULL check */
    uint64_t next_id;
    ev_list events;
    kiln_engine_stats stats;       /* snapshot */
    uint64_t n_submitted;

    /* engine thread */
    ereq *active_head;
    seq_list waiting;              /* front = next to admit */
    seq_list running;              /* admission order: head = oldest */
    int32_t n_waiting_reqs;        /* taken requests none of whose choices was admitted yet */
    int64_t n_waiting_tokens;      /* their prompt tokens */
    uint64_t fair_round;           /* round of the last admitted new request */
    kiln_sample_scratch *scratch;
    float *logits;                 /* (cap_logits, n_vocab) */
    int32_t cap_logits;
    int32_t lp_rows_per_step;      /* most prompt-logprob rows in one step */
    kiln_batch_row *rows;          /* (max_num_batched_tokens,) */
    kiln_batch_seq *bseqs;         /* (max_num_seqs,) */
    seq **sched;                   /* (max_num_seqs,) sequences of the current batch */
    int32_t *eog;                  /* (n_eog,) end-of-generation ids of the vocabulary */
    int32_t n_eog;
    kiln_buf piece;                /* detokenizer output of one token */
    kiln_buf text;                 /* text of one delta */
    ev_list step_events;           /* events of the current step, published at its end */
    /* Prefix cache: full prompt blocks by content, indexed by block id. A cached block holds one
     * reference of the cache; with refcount 1 (only that) it is evictable, leaves first (a
     * sequence holding a block holds its whole prefix chain, so in-use blocks have in-use
     * parents). Identity = the block's tokens + its parent block, verified on lookup. */
    bool pc_on;
    bool *pc_cached;               /* (n_blocks,) */
    uint64_t *pc_hash;             /* (n_blocks,) chain hash of tokens 0 .. end of block */
    int32_t *pc_parent;            /* (n_blocks,) parent block id, -1 for a first block */
    int32_t *pc_children;          /* (n_blocks,) cached blocks whose parent this is */
    int32_t *pc_next;              /* (n_blocks,) bucket chain */
    uint64_t *pc_used;             /* (n_blocks,) LRU clock */
    int32_t *pc_tokens;            /* (n_blocks, block_size) */
    int32_t *pc_buckets;           /* (pc_mask + 1,) head block of each chain, -1 */
    uint32_t pc_mask;
    uint64_t pc_clock;
    int32_t n_cached;
    int32_t n_evictable;           /* cached blocks with refcount 1 */
    bool any_terminal;             /* a request ends at the end of this step */
    kiln_engine_stats acc;         /* counters accumulated by the engine thread */
};

/* ---- small helpers ---- */

void kiln_engine_opts_default(kiln_engine_opts *o) {
    memset(o, 0, sizeof(*o));
    o->max_num_seqs = 256;
    o->kv_cache_bytes = (size_t)1 << 30;
    o->block_size = 16;
    o->max_model_len = 0;
    o->max_queued_requests = 1024;
    o->max_num_batched_tokens = 2048;
    o->enable_prefix_caching = true;
}

void kiln_request_init(kiln_request *r) {
    memset(r, 0, sizeof(*r));
    kiln_sampler_params_default(&r->sampling);
    r->n = 1;
    r->max_tokens = -1;
    r->skip_special_tokens = true;
    r->n_prompt_logprobs = -1;
}

const char *kiln_finish_reason_name(kiln_finish_reason r) {
    static const char *const names[] = {NULL, "stop", "length", "tool_calls"};
    _Static_assert(KILN_ARRAY_LEN(names) == KILN_FINISH_COUNT, "one name per finish reason");
    return (unsigned)r < KILN_FINISH_COUNT ? names[r] : NULL;
}

static void list_push_back(seq_list *l, seq *s) {
    s->prev = l->tail;
    s->next = NULL;
    if (l->tail) l->tail->next = s;
    else l->head = s;
    l->tail = s;
    l->n++;
}

static void list_push_front(seq_list *l, seq *s) {
    s->prev = NULL;
    s->next = l->head;
    if (l->head) l->head->prev = s;
    else l->tail = s;
    l->head = s;
    l->n++;
}

/* Inserts s after `after` (NULL: at the front). */
static void list_insert_after(seq_list *l, seq *after, seq *s) {
    if (!after) {
        list_push_front(l, s);
        return;
    }
    s->prev = after;
    s->next = after->next;
    if (after->next) after->next->prev = s;
    else l->tail = s;
    after->next = s;
    l->n++;
}

static void list_remove(seq_list *l, seq *s) {
    if (s->prev) s->prev->next = s->next;
    else l->head = s->next;
    if (s->next) s->next->prev = s->prev;
    else l->tail = s->prev;
    s->prev = s->next = NULL;
    l->n--;
}

static void ev_push(ev_list *l, evnode *n) {
    n->next = NULL;
    if (l->tail) l->tail->next = n;
    else l->head = n;
    l->tail = n;
}

static void ev_list_free(ev_list *l) {
    for (evnode *n = l->head, *next; n; n = next) {
        next = n->next;
        kiln_free(n);
    }
    l->head = l->tail = NULL;
}

/* Every reference the engine takes or drops goes through these two, which keep n_evictable. */
static void blk_ref(kiln_engine *e, int32_t b) {
    kiln_kv_ref_block(e->kv, b);
    if (e->pc_on && e->pc_cached[b] && kiln_kv_refcount(e->kv, b) == 2) e->n_evictable--;
}

static void blk_unref(kiln_engine *e, int32_t b) {
    kiln_kv_unref_block(e->kv, b);
    if (e->pc_on && e->pc_cached[b] && kiln_kv_refcount(e->kv, b) == 1) e->n_evictable++;
}

static void release_blocks(kiln_engine *e, seq *s) {
    for (int32_t i = 0; i < s->n_blocks; i++) blk_unref(e, s->blocks[i]);
    s->n_blocks = 0;
    s->n_computed = 0;
}

/* ---- fair share (engine thread) ---- */

/* Queues choice 0 of a newly taken request. A client's k-th waiting new request gets round
 * max(current round, its previous one + 1), and the line stays ordered by round (ties: arrival;
 * preempted and forked sequences, first in line, keep their place): new requests are admitted
 * round-robin across clients. O(waiting). */
static void fair_enqueue(kiln_engine *e, seq *s) {
    uint64_t round = e->fair_round;
    for (seq *w = e->waiting.head; w; w = w->next)
        if (w->index == 0 && !w->req->started && w->req->client == s->req->client &&
            w->round >= round)
            round = w->round + 1;
    s->round = round;
    seq *after = e->waiting.tail;
    while (after && after->round > round) after = after->prev;
    list_insert_after(&e->waiting, after, s);
}

static uint64_t client_hash(const char *c) {
    if (!c) return 0;
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *c; c++) h = (h ^ (unsigned char)*c) * 0x100000001b3ull;
    return h | 1; /* never 0, the anonymous client */
}

/* ---- prefix cache (engine thread) ---- */

static uint64_t pc_hash_block(uint64_t h, const int32_t *toks, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        h ^= (uint32_t)toks[i];
        h *= 0x100000001b3ull; /* FNV-1a over 32-bit values */
    }
    return h ^ (h >> 29);
}

/* The cached block with chain hash h, parent `parent` and these tokens, or -1. */
static int32_t pc_lookup(const kiln_engine *e, uint64_t h, int32_t parent, const int32_t *toks) {
    for (int32_t b = e->pc_buckets[h & e->pc_mask]; b >= 0; b = e->pc_next[b])
        if (e->pc_hash[b] == h && e->pc_parent[b] == parent &&
            memcmp(e->pc_tokens + (size_t)b * (size_t)e->block_size, toks,
                   (size_t)e->block_size * sizeof(int32_t)) == 0)
            return b;
    return -1;
}

static void pc_insert(kiln_engine *e, int32_t b, uint64_t h, int32_t parent, const int32_t *toks) {
    KILN_ASSERT(!e->pc_cached[b] && kiln_kv_refcount(e->kv, b) >= 1);
    kiln_kv_ref_block(e->kv, b); /* the cache's reference; b is in use, so not evictable */
    e->pc_cached[b] = true;
    e->pc_hash[b] = h;
    e->pc_parent[b] = parent;
    e->pc_children[b] = 0;
    e->pc_used[b] = ++e->pc_clock;
    memcpy(e->pc_tokens + (size_t)b * (size_t)e->block_size, toks,
           (size_t)e->block_size * sizeof(int32_t));
    e->pc_next[b] = e->pc_buckets[h & e->pc_mask];
    e->pc_buckets[h & e->pc_mask] = b;
    if (parent >= 0) e->pc_children[parent]++;
    e->n_cached++;
}

/* Drops the least recently used evictable leaf from the cache (its block becomes free).
 * False when nothing is evictable. O(n_blocks): only runs when the pool is empty. */
static bool pc_evict_one(kiln_engine *e) {
    if (!e->pc_on || e->n_evictable == 0) return false;
    int32_t n = kiln_kv_n_blocks(e->kv), victim = -1;
    for (int32_t b = 0; b < n; b++)
        if (e->pc_cached[b] && e->pc_children[b] == 0 && kiln_kv_refcount(e->kv, b) == 1 &&
            (victim < 0 || e->pc_used[b] < e->pc_used[victim]))
            victim = b;
    if (victim < 0) { /* cannot happen while the chain invariant holds */
        KILN_WARN("engine: %d evictable cached blocks but no evictable leaf", (int)e->n_evictable);
        return false;
    }
    int32_t *link = &e->pc_buckets[e->pc_hash[victim] & e->pc_mask];
    while (*link != victim) link = &e->pc_next[*link];
    *link = e->pc_next[victim];
    if (e->pc_parent[victim] >= 0) e->pc_children[e->pc_parent[victim]]--;
    e->pc_cached[victim] = false;
    e->n_cached--;
    e->n_evictable--;
    kiln_kv_unref_block(e->kv, victim); /* refcount 0: free */
    return true;
}

/* A fresh sequence (no blocks) takes the cached blocks that hold its first tokens, leaving at
 * least its last known token to compute. Returns the tokens reused. */
static int32_t pc_match(kiln_engine *e, seq *s) {
    if (!e->pc_on) return 0;
    KILN_ASSERT(s->n_blocks == 0 && s->n_computed == 0);
    const int32_t bs = e->block_size;
    int32_t n_full = (s->n_tokens - 1) / bs, parent = -1;
    uint64_t h = 0xcbf29ce484222325ull;
    for (int32_t i = 0; i < n_full; i++) {
        h = pc_hash_block(h, s->tokens + (size_t)i * bs, bs);
        int32_t b = pc_lookup(e, h, parent, s->tokens + (size_t)i * bs);
        if (b < 0) break;
        blk_ref(e, b);
        e->pc_used[b] = ++e->pc_clock;
        s->blocks[s->n_blocks++] = b;
        parent = b;
    }
    s->n_computed = s->n_blocks * bs;
    return s->n_computed;
}

/* s has computed its whole prompt: its full prompt blocks enter the cache (blocks whose content
 * is cached already, possibly in another block, are skipped). */
static void pc_register(kiln_engine *e, seq *s) {
    const int32_t bs = e->block_size;
    int32_t n_full = s->req->n_prompt / bs, parent = -1;
    uint64_t h = 0xcbf29ce484222325ull;
    for (int32_t i = 0; i < n_full && i < s->n_blocks; i++) {
        const int32_t *toks = s->tokens + (size_t)i * bs;
        h = pc_hash_block(h, toks, bs);
        int32_t b = pc_lookup(e, h, parent, toks);
        /* Equal content in another block: stop, so that every cached block's parent is a block
         * its holders hold too (what makes unused blocks evictable leaves first). */
        if (b >= 0 && b != s->blocks[i]) break;
        if (b < 0) {
            b = s->blocks[i];
            if (e->pc_cached[b]) break; /* cannot happen: cached content would have been found */
            pc_insert(e, b, h, parent, toks);
        }
        parent = b;
    }
}

/* Frees a request and its choices. The engine thread (or free/submit when it cannot race):
 * a WAITING sequence is in e->waiting and a RUNNING one in e->running (unlinked, blocks
 * released); callers mark sequences that were never queued SEQ_DONE first. */
static void req_destroy(kiln_engine *e, ereq *r) {
    if (!r) return;
    if (r->seqs) {
        for (int32_t i = 0; i < r->n; i++) {
            seq *s = &r->seqs[i];
            if (s->state == SEQ_RUNNING) {
                release_blocks(e, s);
                list_remove(&e->running, s);
            } else if (s->state == SEQ_WAITING) {
                list_remove(&e->waiting, s);
            }
            s->state = SEQ_DONE;
            kiln_sampler_free(s->sampler);
            if (s->stop_ready) kiln_stop_matcher_deinit(&s->stop);
            kiln_free(s->tokens);
            kiln_free(s->blocks);
        }
        kiln_free(r->seqs);
    }
    kiln_free(r->stop_ids);
    kiln_free(r->lp);
    kiln_free(r->lp_top);
    kiln_free(r->prompt);
    kiln_free(r->term);
    kiln_free(r);
}

/* ---- submit (caller thread) ---- */

static kiln_err field_err(const char **field, const char *name, kiln_err err) {
    if (field) *field = name;
    return err;
}

/* Builds choice i of r: tokens, block table, sampler (seed + i), detokenizer, stop matcher. */
static kiln_err seq_build(kiln_engine *e, ereq *q, const kiln_request *r, int32_t i) {
    seq *s = &q->seqs[i];
    kiln_err err;
    s->req = q;
    s->index = i;
    s->state = SEQ_WAITING;
    s->i_logits = -1;
    /* Room for some completion now; more on demand (a queued request with a large max_tokens
     * holds little memory). */
    size_t cap = (size_t)r->n_prompt + (size_t)KILN_MIN(q->max_tokens, 256);
    s->tokens = kiln_malloc(cap * sizeof(int32_t));
    s->cap_tokens = (int32_t)cap;
    s->blocks = kiln_malloc((size_t)e->max_blocks_per_seq * sizeof(int32_t));
    if (!s->tokens || !s->blocks) return kiln_errf(KILN_ERR_NOMEM, "engine: out of memory");
    memcpy(s->tokens, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
    s->n_tokens = r->n_prompt;
    kiln_sampler_params p = r->sampling;
    if (p.has_seed) p.seed += (uint64_t)i;
    if ((err = kiln_sampler_new(&p, e->n_vocab, e->scratch, &s->sampler)) != KILN_OK) return err;
    if ((err = kiln_sampler_accept_prompt(s->sampler, r->prompt, (size_t)r->n_prompt)) != KILN_OK)
        return err;
    kiln_detok_init(&s->detok, e->vocab, r->skip_special_tokens, false);
    err = kiln_stop_matcher_init(&s->stop, r->stop, NULL, r->n_stop, r->include_stop_str_in_output);
    s->stop_ready = true; /* deinit is safe after a failed init */
    return err;
}

kiln_err kiln_engine_submit(kiln_engine *e, const kiln_request *r, uint64_t *id,
                            const char **field) {
    kiln_err err;
    if (field) *field = NULL;
    *id = 0;
    if (r->n_prompt < 1 || !r->prompt)
        return field_err(field, "prompt", kiln_errf(KILN_ERR_INVALID, "prompt: must not be empty"));
    for (int32_t i = 0; i < r->n_prompt; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= e->n_vocab)
            return field_err(field, "prompt",
                             kiln_errf(KILN_ERR_INVALID, "prompt: token id %d out of range [0, %d)",
                                       (int)r->prompt[i], (int)e->n_vocab));
    if (r->n < 1 || r->n > KILN_ENGINE_MAX_N)
        return field_err(field, "n", kiln_errf(KILN_ERR_INVALID, "n: must be in [1, %d], got %d",
                                               KILN_ENGINE_MAX_N, (int)r->n));
    if (r->min_tokens < 0)
        return field_err(field, "min_tokens",
                         kiln_errf(KILN_ERR_INVALID, "min_tokens: must be >= 0, got %d",
                                   (int)r->min_tokens));
    if (r->n_stop < 0 || r->n_stop > KILN_STOP_MAX_STRINGS || (r->n_stop > 0 && !r->stop))
        return field_err(field, "stop", kiln_errf(KILN_ERR_INVALID, "stop: at most %d strings",
                                                  KILN_STOP_MAX_STRINGS));
    if (r->n_stop_token_ids < 0 || (r->n_stop_token_ids > 0 && !r->stop_token_ids) ||
        r->n_stop_token_ids > 4096)
        return field_err(field, "stop_token_ids",
                         kiln_errf(KILN_ERR_INVALID, "stop_token_ids: at most 4096 ids"));
    for (int32_t i = 0; i < r->n_stop_token_ids; i++)
        if (r->stop_token_ids[i] < 0 || r->stop_token_ids[i] >= e->n_vocab)
            return field_err(field, "stop_token_ids",
                             kiln_errf(KILN_ERR_INVALID,
                                       "stop_token_ids: token id %d out of range [0, %d)",
                                       (int)r->stop_token_ids[i], (int)e->n_vocab));
    if (r->n_prompt_logprobs < -1 || r->n_prompt_logprobs > KILN_MAX_TOP_LOGPROBS)
        return field_err(field, "prompt_logprobs",
                         kiln_errf(KILN_ERR_INVALID, "prompt_logprobs: must be in [0, %d], got %d",
                                   KILN_MAX_TOP_LOGPROBS, (int)r->n_prompt_logprobs));
    const char *sfield = NULL;
    if ((err = kiln_sampler_params_check(&r->sampling, e->n_vocab, &sfield)) != KILN_OK)
        return field_err(field, sfield, err);

    /* Context: prompt + completion must fit max_model_len (vLLM's context_length_exceeded). */
    int32_t L = e->max_model_len;
    if (e->opts.max_queued_tokens > 0 && r->n_prompt > e->opts.max_queued_tokens)
        return field_err(field, "prompt",
                         kiln_errf(KILN_ERR_LIMIT,
                                   "prompt: %d tokens can never be queued (the server's limit "
                                   "of queued prompt tokens is %lld)",
                                   (int)r->n_prompt, (long long)e->opts.max_queued_tokens));
    if (r->n_prompt >= L)
        return field_err(field, "prompt",
                         kiln_errf(KILN_ERR_LIMIT,
                                   "This model's maximum context length is %d tokens. However, "
                                   "you requested %lld tokens (%d in the prompt, %d in the "
                                   "completion). Please reduce the length of the prompt or "
                                   "completion.",
                                   (int)L, (long long)r->n_prompt + KILN_MAX(r->max_tokens, 1),
                                   (int)r->n_prompt, (int)KILN_MAX(r->max_tokens, 1)));
    int32_t max_tokens = r->max_tokens > 0 ? r->max_tokens : L - r->n_prompt;
    if ((int64_t)r->n_prompt + max_tokens > L)
        return field_err(field, "max_tokens",
                         kiln_errf(KILN_ERR_LIMIT,
                                   "This model's maximum context length is %d tokens. However, "
                                   "you requested %lld tokens (%d in the prompt, %d in the "
                                   "completion). Please reduce the length of the prompt or "
                                   "completion.",
                                   (int)L, (long long)r->n_prompt + max_tokens, (int)r->n_prompt,
                                   (int)max_tokens));
    if (r->max_tokens > 0 && r->min_tokens > r->max_tokens)
        return field_err(field, "min_tokens",
                         kiln_errf(KILN_ERR_INVALID,
                                   "min_tokens: must be <= max_tokens (%d), got %d",
                                   (int)r->max_tokens, (int)r->min_tokens));

    ereq *q = kiln_calloc(1, sizeof(*q));
    if (!q) return kiln_errf(KILN_ERR_NOMEM, "engine: out of memory");
    q->user = r->user;
    q->client = client_hash(r->client);
    q->t_submit_ns = kiln_now_ns();
    q->n = r->n;
    q->n_prompt = r->n_prompt;
    q->max_tokens = max_tokens;
    q->min_tokens = r->min_tokens;
    q->ignore_eos = r->ignore_eos;
    q->include_stop = r->include_stop_str_in_output;
    q->want_logprobs = r->sampling.n_top_logprobs >= 0;
    q->n_prompt_lp = r->n_prompt_logprobs;
    if (q->n_prompt_lp >= 0) {
        q->lp_pending = true;
        q->lp = kiln_calloc((size_t)r->n_prompt, sizeof(float));
        q->prompt = kiln_malloc((size_t)r->n_prompt * sizeof(int32_t));
        if (!q->lp || !q->prompt) goto out_nomem;
        memcpy(q->prompt, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
        if (q->n_prompt_lp > 0) {
            q->lp_top = kiln_calloc((size_t)r->n_prompt * (size_t)q->n_prompt_lp,
                                    sizeof(kiln_token_logprob));
            if (!q->lp_top) goto out_nomem;
        }
    }
    q->term = kiln_calloc(1, sizeof(evnode) + TERM_MSG_BYTES);
    q->seqs = kiln_calloc((size_t)r->n, sizeof(seq));
    if (!q->term || !q->seqs) goto out_nomem;
    if (r->n_stop_token_ids > 0) {
        q->stop_ids = kiln_malloc((size_t)r->n_stop_token_ids * sizeof(int32_t));
        if (!q->stop_ids) goto out_nomem;
        memcpy(q->stop_ids, r->stop_token_ids, (size_t)r->n_stop_token_ids * sizeof(int32_t));
        q->n_stop_ids = r->n_stop_token_ids;
    }
    for (int32_t i = 0; i < r->n; i++) {
        if ((err = seq_build(e, q, r, i)) != KILN_OK) {
            if (err == KILN_ERR_INVALID && field) *field = "stop";
            goto out_free;
        }
    }

    pthread_mutex_lock(&e->mu);
    if (e->n_inbox + e->n_waiting_reqs_shared >= e->opts.max_queued_requests) {
        int32_t n_q = e->n_inbox + e->n_waiting_reqs_shared;
        pthread_mutex_unlock(&e->mu);
        err = kiln_errf(KILN_ERR_FULL, "engine: %d requests are already queued (limit %d)",
                        (int)n_q, (int)e->opts.max_queued_requests);
        goto out_free;
    }
    /* Fair share of the queue: one client holds at most half of it (at least 1), so the others
     * always find room. */
    int32_t share = KILN_MAX(1, (e->opts.max_queued_requests + 1) / 2), n_mine = 0;
    for (ereq *o = e->all_head; o && n_mine < share; o = o->anext)
        n_mine += o->client == q->client && !o->admitted_shared && !o->cancel_requested;
    if (n_mine >= share && share < e->opts.max_queued_requests) {
        pthread_mutex_unlock(&e->mu);
        err = kiln_errf(KILN_ERR_FULL,
                        "engine: this client already has %d queued requests, its share (half) of "
                        "the queue of %d", (int)n_mine, (int)e->opts.max_queued_requests);
        goto out_free;
    }
    if (e->opts.max_queued_tokens > 0 &&
        e->n_inbox_tokens + e->n_waiting_tokens_shared + r->n_prompt > e->opts.max_queued_tokens) {
        int64_t n_t = e->n_inbox_tokens + e->n_waiting_tokens_shared;
        pthread_mutex_unlock(&e->mu);
        err = kiln_errf(KILN_ERR_FULL,
                        "engine: %lld prompt tokens are already queued (limit %lld, this request "
                        "has %d)",
                        (long long)n_t, (long long)e->opts.max_queued_tokens, (int)r->n_prompt);
        goto out_free;
    }
    q->id = ++e->next_id;
    *id = q->id;
    if (e->inbox_tail) e->inbox_tail->inext = q;
    else e->inbox_head = q;
    e->inbox_tail = q;
    e->n_inbox++;
    e->n_inbox_tokens += r->n_prompt;
    q->anext = e->all_head;
    if (e->all_head) e->all_head->aprev = q;
    e->all_head = q;
    e->n_active++;
    e->n_submitted++;
    e->stats.n_requests_submitted = e->n_submitted;
    e->stats.n_waiting += r->n;
    e->stats.n_requests_active = e->n_active;
    pthread_cond_signal(&e->work_cond);
    pthread_mutex_unlock(&e->mu);
    return KILN_OK;

out_nomem:
    err = kiln_errf(KILN_ERR_NOMEM, "engine: out of memory");
out_free:
    /* Never linked anywhere: its sequences are in no list and hold no blocks. */
    if (q->seqs)
        for (int32_t i = 0; i < q->n; i++) q->seqs[i].state = SEQ_DONE;
    req_destroy(e, q);
    return err;
}

void kiln_engine_cancel(kiln_engine *e, uint64_t id) {
    pthread_mutex_lock(&e->mu);
    for (ereq *q = e->all_head; q; q = q->anext) {
        if (q->id != id) continue;
        if (!q->cancel_requested) {
            q->cancel_requested = true;
            e->n_cancel_pending++;
            pthread_cond_signal(&e->work_cond);
        }
        break;
    }
    pthread_mutex_unlock(&e->mu);
}

/* ---- events ---- */

kiln_event *kiln_engine_poll(kiln_engine *e) {
    pthread_mutex_lock(&e->mu);
    evnode *n = e->events.head;
    if (n) {
        e->events.head = n->next;
        if (!e->events.head) e->events.tail = NULL;
        n->next = NULL;
    }
    pthread_mutex_unlock(&e->mu);
    return n ? &n->ev : NULL;
}

kiln_event *kiln_engine_poll_wait(kiln_engine *e, int64_t timeout_ms) {
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout_ms < 0) timeout_ms = 0;
    deadline.tv_sec += (time_t)(timeout_ms / 1000);
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&e->mu);
    while (!e->events.head) {
        if (pthread_cond_timedwait(&e->ev_cond, &e->mu, &deadline) == ETIMEDOUT) break;
    }
    evnode *n = e->events.head;
    if (n) {
        e->events.head = n->next;
        if (!e->events.head) e->events.tail = NULL;
        n->next = NULL;
    }
    pthread_mutex_unlock(&e->mu);
    return n ? &n->ev : NULL;
}

void kiln_engine_event_free(kiln_event *ev) {
    kiln_free(ev); /* ev is the start of its evnode block */
}

/* Posts the terminal event of q (type DONE / ERROR / CANCELLED) and frees q. Engine thread. */
static void req_end(kiln_engine *e, ereq *q, kiln_event_type type, kiln_err err, const char *msg) {
    evnode *n = q->term;
    q->term = NULL;
    kiln_event *ev = &n->ev;
    char *mbuf = (char *)(n + 1);
    ev->type = type;
    ev->request_id = q->id;
    ev->user = q->user;
    ev->index = -1;
    ev->text = "";
    ev->finish = KILN_FINISH_NONE;
    ev->stop_token = -1;
    ev->i_stop_str = -1;
    ev->n_prompt_tokens = q->n_prompt;
    ev->n_completion_tokens = q->n_completion;
    ev->n_cached_tokens = q->n_cached;
    ev->queue_ns = q->queue_ns;
    ev->err = err;
    snprintf(mbuf, TERM_MSG_BYTES, "%s", msg ? msg : "");
    ev->message = mbuf;
    ev_push(&e->step_events, n);
    if (type == KILN_EVENT_DONE) e->acc.n_requests_finished++;
    else if (type == KILN_EVENT_CANCELLED) e->acc.n_requests_cancelled++;
    else e->acc.n_requests_failed++;

    if (!q->started) {
        e->n_waiting_reqs--;
        e->n_waiting_tokens -= q->n_prompt;
    }
    if (q->eprev) q->eprev->enext = q->enext;
    else e->active_head = q->enext;
    if (q->enext) q->enext->eprev = q->eprev;

    pthread_mutex_lock(&e->mu);
    if (q->aprev) q->aprev->anext = q->anext;
    else e->all_head = q->anext;
    if (q->anext) q->anext->aprev = q->aprev;
    e->n_active--;
    pthread_mutex_unlock(&e->mu);
    req_destroy(e, q);
}

/* Marks q to end with an error at the end of the step (its choices may still be in the batch). */
static void req_fail(kiln_engine *e, ereq *q, kiln_err err, const char *msg) {
    if (q->failed) return;
    q->failed = true;
    q->fail_err = err;
    snprintf(q->fail_msg, sizeof(q->fail_msg), "%s", msg);
    e->any_terminal = true;
}

/* Queues a DELTA event for choice s: e->text and token `res` (NULL: none). */
static kiln_err post_delta(kiln_engine *e, seq *s, const kiln_sample_result *res,
                           kiln_finish_reason finish, int32_t stop_token, int32_t i_stop_str) {
    ereq *q = s->req;
    int32_t n_top = res && q->want_logprobs ? res->n_top : 0;
    size_t off_tok = (sizeof(evnode) + 7) & ~(size_t)7;
    size_t off_top = off_tok + (res ? sizeof(kiln_event_token) : 0);
    size_t off_text = off_top + (size_t)n_top * sizeof(kiln_token_logprob);
    size_t total = off_text + e->text.len + 1; /* small: bounded by one token's text */
    char *blk = kiln_malloc(total);
    if (!blk) return kiln_errf(KILN_ERR_NOMEM, "engine: out of memory for an event");
    evnode *n = (evnode *)blk;
    memset(n, 0, sizeof(*n));
    kiln_event *ev = &n->ev;
    ev->type = KILN_EVENT_DELTA;
    ev->request_id = q->id;
    ev->user = q->user;
    ev->index = s->index;
    char *text = blk + off_text;
    if (e->text.len) memcpy(text, e->text.data, e->text.len);
    text[e->text.len] = '\0';
    ev->text = text;
    ev->n_text = e->text.len;
    if (res) {
        kiln_event_token *t = (kiln_event_token *)(blk + off_tok);
        kiln_token_logprob *top = (kiln_token_logprob *)(blk + off_top);
        t->token = res->token;
        t->logprob = q->want_logprobs ? res->logprob : 0.0f;
        t->n_top = n_top;
        if (n_top) memcpy(top, res->top, (size_t)n_top * sizeof(*top));
        t->top = n_top ? top : NULL;
        ev->tokens = t;
        ev->n_tokens = 1;
    }
    ev->finish = finish;
    ev->stop_token = stop_token;
    ev->i_stop_str = i_stop_str;
    ev->n_prompt_tokens = q->n_prompt;
    ev->n_completion_tokens = q->n_completion;
    ev->message = "";
    ev_push(&e->step_events, n);
    return KILN_OK;
}

/* Queues the PROMPT_LOGPROBS event of q (from q->lp / q->lp_top). */
static kiln_err post_prompt_lp(kiln_engine *e, ereq *q) {
    size_t n = (size_t)q->n_prompt, k = (size_t)q->n_prompt_lp;
    size_t off_tok = (sizeof(evnode) + 7) & ~(size_t)7, off_top, total;
    /* n <= max_model_len and k <= 20: these products cannot overflow size_t. */
    off_top = off_tok + n * sizeof(kiln_event_token);
    total = off_top + n * k * sizeof(kiln_token_logprob);
    char *blk = kiln_malloc(total);
    if (!blk) return kiln_errf(KILN_ERR_NOMEM, "engine: out of memory for prompt logprobs");
    evnode *node = (evnode *)blk;
    memset(node, 0, sizeof(*node));
    kiln_event *ev = &node->ev;
    ev->type = KILN_EVENT_PROMPT_LOGPROBS;
    ev->request_id = q->id;
    ev->user = q->user;
    ev->index = -1;
    ev->text = "";
    ev->finish = KILN_FINISH_NONE;
    ev->stop_token = -1;
    ev->i_stop_str = -1;
    ev->n_prompt_tokens = q->n_prompt;
    ev->message = "";
    kiln_event_token *t = (kiln_event_token *)(blk + off_tok);
    kiln_token_logprob *top = (kiln_token_logprob *)(blk + off_top);
    if (k) memcpy(top, q->lp_top, n * k * sizeof(*top));
    for (size_t p = 0; p < n; p++) {
        t[p].token = q->prompt[p];
        t[p].logprob = p ? q->lp[p] : 0.0f;
        t[p].n_top = p ? (int32_t)k : 0;
        t[p].top = p && k ? top + p * k : NULL;
    }
    ev->tokens = t;
    ev->n_tokens = (int32_t)n;
    ev_push(&e->step_events, node);
    return KILN_OK;
}

/* Raw log-softmax of one logits row (NaN counts as -inf): the logprob of `target` and the n_top
 * best tokens by logprob desc, ties by lower id first. */
static void row_logprobs(const float *x, int32_t V, int32_t target, int32_t n_top, float *lp_target,
                         kiln_token_logprob *top) {
    float mx = -INFINITY;
    for (int32_t i = 0; i < V; i++)
        if (x[i] > mx) mx = x[i];
    double sum = 0;
    for (int32_t i = 0; i < V; i++)
        if (x[i] > -INFINITY) sum += exp((double)x[i] - mx);
    double lse = (double)mx + log(sum);
    *lp_target = x[target] == x[target] ? (float)((double)x[target] - lse) : -INFINITY;
    int32_t n = 0;
    for (int32_t i = 0; i < V && n_top > 0; i++) {
        float v = x[i] == x[i] ? x[i] : -INFINITY;
        if (n == n_top && !(v > top[n - 1].logprob)) continue;
        int32_t j = n < n_top ? n++ : n - 1;
        while (j > 0 && v > top[j - 1].logprob) {
            top[j] = top[j - 1];
            j--;
        }
        top[j].token = i;
        top[j].logprob = v; /* raw logit for now */
    }
    for (int32_t j = 0; j < n; j++) top[j].logprob = (float)((double)top[j].logprob - lse);
}

/* ---- scheduling (engine thread) ---- */

/* Grows s's block table to cover positions [0, n_pos); stops early when the pool is empty. */
static void grow_blocks(kiln_engine *e, seq *s, int32_t n_pos) {
    int32_t need = (n_pos + e->block_size - 1) / e->block_size;
    KILN_ASSERT(need <= e->max_blocks_per_seq);
    while (s->n_blocks < need) {
        int32_t b;
        if (kiln_kv_alloc_block(e->kv, &b) != KILN_OK) {
            if (pc_evict_one(e)) continue;
            break;
        }
        s->blocks[s->n_blocks++] = b;
    }
    kiln_err_clear();
}

/* Evicts running s: frees its blocks and puts it first in line; its tokens, sampler, detokenizer
 * and stop state are kept, so readmission recomputes the cache and continues exactly. */
static void preempt(kiln_engine *e, seq *s) {
    release_blocks(e, s);
    list_remove(&e->running, s);
    s->state = SEQ_WAITING;
    s->n_sched = 0;
    list_push_front(&e->waiting, s);
    e->acc.n_preemptions++;
}

static bool is_stop_token(const kiln_engine *e, const ereq *q, int32_t tok) {
    if (!q->ignore_eos && kiln_vocab_is_eog(e->vocab, tok)) return true;
    for (int32_t i = 0; i < q->n_stop_ids; i++)
        if (q->stop_ids[i] == tok) return true;
    return false;
}

/* Appends what the stop matcher releases to e->text. */
static void take_stop_out(kiln_engine *e, const kiln_stop_out *o, kiln_err *err) {
    if (o->n_text && *err == KILN_OK) *err = kiln_buf_append(&e->text, o->text, o->n_text);
}

/* Sends e->piece through the stop matcher into e->text; while stop strings are not active yet
 * (min_tokens, as vLLM checks them only past min_tokens) it goes to e->text directly. */
static kiln_err emit_piece(kiln_engine *e, seq *s, bool stops_active, kiln_stop_out *o) {
    kiln_err err = KILN_OK;
    if (!e->piece.len) return KILN_OK;
    if (!stops_active) return kiln_buf_append(&e->text, e->piece.data, e->piece.len);
    err = kiln_stop_matcher_feed(&s->stop, e->piece.data, e->piece.len, o);
    take_stop_out(e, o, &err);
    return err;
}

/* Samples the next token of s from its logits row, streams it and decides whether s is done. */
static void sample_one(kiln_engine *e, seq *s, float *logits) {
    ereq *q = s->req;
    kiln_err err;
    if (q->failed) return;
    if (s->n_gen < q->min_tokens) {
        if (!q->ignore_eos)
            for (int32_t i = 0; i < e->n_eog; i++) kiln_sampler_mask(s->sampler, e->eog[i]);
        for (int32_t i = 0; i < q->n_stop_ids; i++) kiln_sampler_mask(s->sampler, q->stop_ids[i]);
    }
    if (q->lp_pending && s->n_gen == 0) {
        /* This choice computed the whole prompt with logits on every row. */
        q->lp_pending = false;
        if ((err = post_prompt_lp(e, q)) != KILN_OK) {
            req_fail(e, q, err, kiln_errmsg());
            return;
        }
    }
    kiln_sample_result res;
    if ((err = kiln_sampler_sample(s->sampler, logits, &res)) != KILN_OK) {
        req_fail(e, q, err, kiln_errmsg());
        return;
    }
    int32_t tok = res.token;
    KILN_ASSERT(s->n_tokens < q->n_prompt + q->max_tokens);
    if (s->n_tokens == s->cap_tokens) {
        int32_t cap = (int32_t)KILN_MIN((int64_t)s->cap_tokens * 2, (int64_t)q->n_prompt + q->max_tokens);
        int32_t *t = kiln_realloc(s->tokens, (size_t)cap * sizeof(int32_t));
        if (!t) {
            req_fail(e, q, KILN_ERR_NOMEM, "engine: out of memory for the token history");
            return;
        }
        s->tokens = t;
        s->cap_tokens = cap;
    }
    s->tokens[s->n_tokens++] = tok;
    s->n_gen++;
    q->n_completion++;
    e->acc.n_generated_tokens++;

    bool stop_tok = is_stop_token(e, q, tok);
    bool stops_active = s->n_gen > q->min_tokens;
    kiln_buf_reset(&e->text);
    kiln_stop_out o = {0};
    o.i_stop = -1;
    err = KILN_OK;
    if (!stop_tok || q->include_stop) {
        kiln_buf_reset(&e->piece);
        kiln_err perr = kiln_detok_push(&s->detok, tok, &e->piece);
        if (perr == KILN_ERR_NOMEM) err = perr;
        /* KILN_ERR_INVALID: an id of the model's padded vocabulary beyond the tokenizer: no text. */
        if (err == KILN_OK) err = emit_piece(e, s, stops_active, &o);
    }
    kiln_finish_reason finish = KILN_FINISH_NONE;
    int32_t stop_token = -1, i_stop_str = -1;
    if (o.i_stop >= 0) {
        finish = KILN_FINISH_STOP;
        i_stop_str = o.i_stop;
    } else if (stop_tok) {
        finish = KILN_FINISH_STOP;
        stop_token = tok;
    } else if (s->n_gen >= q->max_tokens || s->n_tokens >= e->max_model_len) {
        finish = KILN_FINISH_LENGTH;
    }
    if (finish != KILN_FINISH_NONE && i_stop_str < 0 && err == KILN_OK) {
        /* Release what is held: an unfinished UTF-8 character (as U+FFFD), then the stop
         * matcher's held-back prefix (which may still complete a stop string). */
        kiln_buf_reset(&e->piece);
        err = kiln_detok_flush(&s->detok, &e->piece);
        if (err == KILN_OK) err = emit_piece(e, s, stops_active, &o);
        if (err == KILN_OK && o.i_stop >= 0) {
            finish = KILN_FINISH_STOP;
            i_stop_str = o.i_stop;
            stop_token = -1;
        } else if (err == KILN_OK) {
            kiln_stop_matcher_flush(&s->stop, &o);
            take_stop_out(e, &o, &err);
        }
    }
    if (err == KILN_OK) err = post_delta(e, s, &res, finish, stop_token, i_stop_str);
    if (err != KILN_OK) {
        req_fail(e, q, err, kiln_errmsg());
        return;
    }
    if (finish != KILN_FINISH_NONE) {
        release_blocks(e, s);
        list_remove(&e->running, s);
        s->state = SEQ_DONE;
        if (++q->n_done == q->n) e->any_terminal = true;
    }
}

/* Ends the requests that failed, finished or were cancelled during this step. */
static void end_requests(kiln_engine *e) {
    for (ereq *q = e->active_head, *next; q; q = next) {
        next = q->enext;
        if (q->cancelled) req_end(e, q, KILN_EVENT_CANCELLED, KILN_ERR_CANCELLED, "cancelled");
        else if (q->failed) req_end(e, q, KILN_EVENT_ERROR, q->fail_err, q->fail_msg);
        else if (q->n_done == q->n) req_end(e, q, KILN_EVENT_DONE, KILN_OK, "");
    }
    e->any_terminal = false;
}

static kiln_err reserve_logits(kiln_engine *e, int32_t n_rows) {
    if (n_rows <= e->cap_logits) return KILN_OK;
    int32_t cap = KILN_MAX(n_rows, KILN_MIN(e->opts.max_num_seqs, 2 * e->cap_logits));
    size_t bytes;
    if (!kiln_mul_size((size_t)cap, (size_t)e->n_vocab, &bytes) ||
        !kiln_mul_size(bytes, sizeof(float), &bytes))
        return kiln_errf(KILN_ERR_NOMEM, "engine: logits buffer size overflows");
    float *p = kiln_realloc(e->logits, bytes);
    if (!p) return kiln_errf(KILN_ERR_NOMEM, "engine: cannot grow the logits buffer to %zu bytes", bytes);
    e->logits = p;
    e->cap_logits = cap;
    return KILN_OK;
}

/* Choice 0 of q (leader) has just computed its whole prompt: the other choices share the blocks
 * its prompt filled completely, up to position n_prompt - 2 (each computes at least the last
 * prompt row itself, for its own logits). Shared blocks are never written again: every later
 * position of either sequence falls in a block of its own. Without room in running, or with no
 * full block to share, a choice waits and prefills from scratch. */
static void fork_choices(kiln_engine *e, ereq *q, seq *leader) {
    int32_t n_share = (q->n_prompt - 1) / e->block_size;
    KILN_ASSERT(n_share <= leader->n_blocks);
    for (int32_t i = q->n - 1; i >= 1; i--) {
        seq *f = &q->seqs[i];
        if (f->state != SEQ_FORK_PENDING) continue;
        if (n_share == 0 || e->running.n >= e->opts.max_num_seqs) {
            f->state = SEQ_WAITING;
            list_push_front(&e->waiting, f); /* reverse order: choice 1 first */
            continue;
        }
        for (int32_t b = 0; b < n_share; b++) {
            blk_ref(e, leader->blocks[b]);
            f->blocks[b] = leader->blocks[b];
        }
        f->n_blocks = n_share;
        f->n_computed = n_share * e->block_size;
        f->n_sched = 0;
        f->i_logits = -1;
        f->state = SEQ_RUNNING;
        list_push_back(&e->running, f);
    }
}

/* One scheduler step: plan, forward once, sample. Returns the number of rows forwarded. */
static int32_t step(kiln_engine *e) {
    const int32_t bs = e->block_size;
    int32_t budget = e->opts.max_num_batched_tokens;
    int32_t n_decode = 0;
    for (seq *s = e->running.head; s; s = s->next)
        if (s->n_tokens - s->n_computed == 1) n_decode++;
    int32_t prefill_budget = budget - n_decode; /* decode rows are served first */
    int32_t used = 0;
    int32_t lp_rows_left = e->lp_rows_per_step;

    /* Running sequences, oldest first; the newest is evicted when blocks run out, so the oldest
     * always advances. Victims come from the tail, which this loop has not reached yet. */
    for (seq *s = e->running.head; s; s = s->next) {
        int32_t need = s->n_tokens - s->n_computed;
        KILN_ASSERT(need >= 1);
        int32_t chunk = need == 1 ? 1 : KILN_MIN(need, prefill_budget);
        s->n_sched = 0;
        s->lp_rows = s->req->lp_pending && s->n_gen == 0;
        if (s->lp_rows && need > 1) chunk = KILN_MIN(chunk, lp_rows_left);
        if (chunk == 0) continue;
        bool evicted_self = false;
        for (;;) {
            grow_blocks(e, s, s->n_computed + chunk);
            int32_t avail = s->n_blocks * bs - s->n_computed;
            if (avail >= chunk) break;
            if (need > 1 && avail >= 1) {
                chunk = avail;
                break;
            }
            seq *victim = e->running.tail;
            preempt(e, victim);
            if (victim == s) {
                evicted_self = true;
                break;
            }
        }
        if (evicted_self) break; /* s was the tail: nothing after it */
        s->n_sched = chunk;
        used += chunk;
        if (need > 1) prefill_budget -= chunk;
        if (s->lp_rows) lp_rows_left = KILN_MAX(0, lp_rows_left - chunk);
    }

    /* Admit waiting sequences (preempted ones first) while the whole of their known tokens fit
     * in the free blocks: a half-prefilled sequence would only hold blocks others need. */
    while (e->waiting.head && e->running.n < e->opts.max_num_seqs && used < budget) {
        seq *s = e->waiting.head;
        KILN_ASSERT(s->n_computed == 0 && s->n_blocks == 0);
        s->lp_rows = s->req->lp_pending && s->n_gen == 0;
        /* Prompt logprobs need every prompt row computed: no cache hits then. */
        int32_t n_hit = s->lp_rows ? 0 : pc_match(e, s);
        int32_t need = s->n_tokens - s->n_computed;
        int32_t need_blocks = (s->n_tokens + bs - 1) / bs - s->n_blocks;
        int32_t chunk = KILN_MIN(need, budget - used);
        if (s->lp_rows) chunk = KILN_MIN(chunk, lp_rows_left);
        if (need_blocks > kiln_kv_n_free(e->kv) + e->n_evictable || chunk == 0) {
            release_blocks(e, s); /* give the hits back; it stays first in line */
            break;
        }
        if (s->lp_rows) lp_rows_left -= chunk;
        if (e->pc_on && !s->lp_rows) e->acc.n_prefix_cache_query_tokens += (uint64_t)s->n_tokens;
        e->acc.n_prefix_cache_hit_tokens += (uint64_t)n_hit;
        grow_blocks(e, s, s->n_computed + chunk);
        if (s->n_blocks * bs < s->n_computed + chunk) { /* only if the counts were off */
            release_blocks(e, s);
            break;
        }
        list_remove(&e->waiting, s);
        list_push_back(&e->running, s);
        s->state = SEQ_RUNNING;
        s->n_sched = chunk;
        used += chunk;
        if (!s->req->started) {
            ereq *q = s->req;
            q->started = true;
            pthread_mutex_lock(&e->mu);
            q->admitted_shared = true;
            pthread_mutex_unlock(&e->mu);
            q->queue_ns = (int64_t)(kiln_now_ns() - q->t_submit_ns);
            q->n_cached = n_hit;
            e->n_waiting_reqs--;
            e->n_waiting_tokens -= q->n_prompt;
            if (s->round > e->fair_round) e->fair_round = s->round;
        }
    }

    /* Build the batch. */
    int32_t n_rows = 0, n_seqs = 0, n_logits = 0;
    for (seq *s = e->running.head; s; s = s->next) {
        s->i_logits = -1;
        if (s->n_sched == 0) continue;
        int32_t bi = n_seqs++;
        e->bseqs[bi].block_table = s->blocks;
        e->bseqs[bi].n_blocks = s->n_blocks;
        e->sched[bi] = s;
        int32_t end = s->n_computed + s->n_sched;
        s->i_lp0 = n_logits;
        for (int32_t p = s->n_computed; p < end; p++) {
            KILN_ASSERT(n_rows < e->opts.max_num_batched_tokens);
            kiln_batch_row *row = &e->rows[n_rows++];
            row->token = s->tokens[p];
            row->pos = p;
            row->seq = bi;
            row->want_logits = s->lp_rows || p == s->n_tokens - 1;
            if (p == s->n_tokens - 1) s->i_logits = n_logits;
            if (row->want_logits) n_logits++;
            /* Prefill rows: the prompt, or generated tokens recomputed after preemption. */
            if (p < s->req->n_prompt || p < s->n_tokens - 1) e->acc.n_prompt_tokens++;
        }
    }
    if (n_rows == 0) return 0;

    kiln_err err = reserve_logits(e, n_logits);
    if (err == KILN_OK) {
        kiln_batch batch = {.n_rows = n_rows, .rows = e->rows, .n_seqs = n_seqs, .seqs = e->bseqs};
        err = kiln_model_forward(e->model, e->kv, &batch, e->logits);
    }
    e->acc.n_steps++;
    e->acc.n_rows_forwarded += (uint64_t)n_rows;
    if (n_seqs > e->acc.max_seqs_in_step) e->acc.max_seqs_in_step = n_seqs;
    if (err != KILN_OK) {
        /* The cache content of this batch is unknown: every request in it fails; the others
         * are untouched. */
        const char *msg = kiln_errmsg();
        for (int32_t i = 0; i < n_seqs; i++) req_fail(e, e->sched[i]->req, err, msg);
        return n_rows;
    }
    for (int32_t i = 0; i < n_seqs; i++) {
        seq *s = e->sched[i];
        ereq *q = s->req;
        if (s->lp_rows && q->lp_pending) {
            /* Row at position p predicts prompt token p + 1 (before sampling edits any row). */
            int32_t k = q->n_prompt_lp;
            for (int32_t j = 0; j < s->n_sched; j++) {
                int32_t p = s->n_computed + j;
                if (p + 1 >= q->n_prompt) break;
                row_logprobs(e->logits + (size_t)(s->i_lp0 + j) * (size_t)e->n_vocab, e->n_vocab,
                             s->tokens[p + 1], k, &q->lp[p + 1],
                             q->lp_top ? q->lp_top + (size_t)(p + 1) * (size_t)k : NULL);
            }
        }
        int32_t before = s->n_computed;
        s->n_computed += s->n_sched;
        s->n_sched = 0;
        if (e->pc_on && before < q->n_prompt && s->n_computed >= q->n_prompt) pc_register(e, s);
        if (s->index == 0 && q->n > 1 && s->n_gen == 0 && s->n_computed == q->n_prompt)
            fork_choices(e, q, s);
    }
    for (int32_t i = 0; i < n_seqs; i++) {
        seq *s = e->sched[i];
        if (s->i_logits >= 0) sample_one(e, s, e->logits + (size_t)s->i_logits * (size_t)e->n_vocab);
    }
    return n_rows;
}

/* Publishes the step's events and the stats snapshot; wakes pollers and the server. */
static void publish(kiln_engine *e) {
    bool any = e->step_events.head != NULL;
    pthread_mutex_lock(&e->mu);
    if (any) {
        if (e->events.tail) e->events.tail->next = e->step_events.head;
        else e->events.head = e->step_events.head;
        e->events.tail = e->step_events.tail;
        e->step_events.head = e->step_events.tail = NULL;
    }
    kiln_engine_stats *st = &e->stats;
    uint64_t n_submitted = st->n_requests_submitted;
    *st = e->acc;
    st->n_requests_submitted = n_submitted;
    st->n_running = e->running.n;
    st->n_waiting = e->waiting.n;
    for (ereq *q = e->inbox_head; q; q = q->inext) st->n_waiting += q->n;
    st->n_requests_active = e->n_active;
    st->n_kv_blocks_total = kiln_kv_n_blocks(e->kv);
    st->n_kv_blocks_free = kiln_kv_n_free(e->kv) + e->n_evictable;
    st->n_kv_blocks_cached = e->n_cached;
    e->n_waiting_reqs_shared = e->n_waiting_reqs;
    e->n_waiting_tokens_shared = e->n_waiting_tokens;
    if (any) pthread_cond_broadcast(&e->ev_cond);
    pthread_mutex_unlock(&e->mu);
    if (any && e->notify) e->notify(e->notify_ctx);
}

static void *engine_main(void *arg) {
    kiln_engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->stop && !e->inbox_head && e->n_cancel_pending == 0 && e->waiting.n == 0 &&
               e->running.n == 0)
            pthread_cond_wait(&e->work_cond, &e->mu);
        if (e->stop) {
            pthread_mutex_unlock(&e->mu);
            break;
        }
        ereq *taken = e->inbox_head;
        e->inbox_head = e->inbox_tail = NULL;
        e->n_inbox = 0;
        e->n_inbox_tokens = 0;
        for (ereq *q = taken; q; q = q->inext) {
            e->n_waiting_reqs++;
            e->n_waiting_tokens += q->n_prompt;
        }
        e->n_waiting_reqs_shared = e->n_waiting_reqs; /* no stale low count for submit */
        e->n_waiting_tokens_shared = e->n_waiting_tokens;
        bool any_cancel = e->n_cancel_pending > 0;
        if (any_cancel) {
            for (ereq *q = e->all_head; q; q = q->anext)
                if (q->cancel_requested) q->cancelled = true;
            e->n_cancel_pending = 0;
        }
        pthread_mutex_unlock(&e->mu);

        /* The inbox is in submit order; append to the active list and the waiting line. */
        for (ereq *q = taken, *next; q; q = next) {
            next = q->inext;
            q->inext = NULL;
            q->eprev = NULL;
            q->enext = e->active_head;
            if (e->active_head) e->active_head->eprev = q;
            e->active_head = q;
            for (int32_t i = 0; i < q->n; i++) {
                if (q->cancelled) q->seqs[i].state = SEQ_DONE; /* never queued */
                else if (i > 0) q->seqs[i].state = SEQ_FORK_PENDING;
                else fair_enqueue(e, &q->seqs[i]);
            }
        }
        if (any_cancel) end_requests(e); /* frees the cancelled before they take a batch slot */

        int32_t n_rows = step(e);
        if (e->any_terminal) end_requests(e);
        publish(e);
        if (n_rows == 0 && (e->running.n || e->waiting.n)) {
            /* Nothing could be scheduled (cannot happen when max_model_len fits the pool);
             * wait for a change rather than spin. */
            KILN_WARN("engine: %d running and %d waiting sequences but nothing schedulable",
                      (int)e->running.n, (int)e->waiting.n);
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 10 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_mutex_lock(&e->mu);
            if (!e->stop && !e->inbox_head && !e->n_cancel_pending)
                pthread_cond_timedwait(&e->work_cond, &e->mu, &ts);
            pthread_mutex_unlock(&e->mu);
        }
    }
    return NULL;
}

/* ---- lifetime ---- */

kiln_err kiln_engine_new(kiln_model *model, const kiln_vocab *vocab, const kiln_engine_opts *opts,
                         kiln_engine_notify_fn notify, void *notify_ctx, kiln_engine **out) {
    kiln_err err;
    *out = NULL;
    kiln_engine_opts o;
    if (opts) o = *opts;
    else kiln_engine_opts_default(&o);
    if (o.max_num_seqs < 1 || o.max_num_seqs > 65536)
        return kiln_errf(KILN_ERR_INVALID, "max_num_seqs: must be in [1, 65536], got %d",
                         (int)o.max_num_seqs);
    if (o.max_num_batched_tokens < 1 || o.max_num_batched_tokens > (1 << 20))
        return kiln_errf(KILN_ERR_INVALID, "max_num_batched_tokens: must be in [1, 1048576], got %d",
                         (int)o.max_num_batched_tokens);
    if (o.max_queued_tokens < 0)
        return kiln_errf(KILN_ERR_INVALID, "max_queued_tokens: must be >= 0, got %lld",
                         (long long)o.max_queued_tokens);
    if (o.max_queued_requests < 1)
        return kiln_errf(KILN_ERR_INVALID, "max_queued_requests: must be >= 1, got %d",
                         (int)o.max_queued_requests);
    if (o.max_model_len < 0)
        return kiln_errf(KILN_ERR_INVALID, "max_model_len: must be >= 0, got %d",
                         (int)o.max_model_len);
    if (o.block_size < 1 || o.block_size > 4096)
        return kiln_errf(KILN_ERR_INVALID, "block_size: must be in [1, 4096], got %d",
                         (int)o.block_size);
    if (o.max_num_batched_tokens < o.max_num_seqs) o.max_num_batched_tokens = o.max_num_seqs;

    kiln_engine *e = kiln_calloc(1, sizeof(*e));
    if (!e) return kiln_errf(KILN_ERR_NOMEM, "engine: out of memory");
    e->model = model;
    e->vocab = vocab;
    e->notify = notify;
    e->notify_ctx = notify_ctx;
    const kiln_hparams *hp = kiln_model_hparams(model);
    e->n_vocab = hp->n_vocab;
    kiln_buf_init(&e->piece);
    kiln_buf_init(&e->text);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->work_cond, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->ev_cond, &ca);
    pthread_condattr_destroy(&ca);

    if ((err = kiln_kv_new(model, o.kv_cache_bytes, o.block_size, &e->kv)) != KILN_OK) {
        if (err == KILN_ERR_INVALID)
            err = kiln_errf(KILN_ERR_INVALID, "kv_cache_bytes: %s", kiln_errmsg());
        goto out_free;
    }
    e->block_size = kiln_kv_block_size(e->kv);
    int64_t capacity = (int64_t)kiln_kv_n_blocks(e->kv) * e->block_size;
    int64_t L = o.max_model_len > 0 ? o.max_model_len : hp->n_ctx_train > 0 ? hp->n_ctx_train : capacity;
    if (L > capacity) {
        KILN_INFO("engine: max_model_len %lld lowered to %lld, what the KV cache holds",
                  (long long)L, (long long)capacity);
        L = capacity;
    }
    if (L > INT32_MAX / 2) L = INT32_MAX / 2;
    if (L < 2) {
        err = kiln_errf(KILN_ERR_INVALID,
                        "kv_cache_bytes: the KV cache holds %lld tokens, too few for any request",
                        (long long)capacity);
        goto out_free;
    }
    e->max_model_len = (int32_t)L;
    e->max_blocks_per_seq = (int32_t)((L + e->block_size - 1) / e->block_size);
    e->opts = o;

    if ((err = kiln_sample_scratch_new(e->n_vocab, &e->scratch)) != KILN_OK) goto out_free;
    if (o.enable_prefix_caching) {
        size_t nb = (size_t)kiln_kv_n_blocks(e->kv), n_buckets = 1, n_tok;
        while (n_buckets < 2 * nb) n_buckets *= 2;
        if (!kiln_mul_size(nb, (size_t)e->block_size, &n_tok)) goto out_nomem;
        e->pc_cached = kiln_calloc(nb, sizeof(bool));
        e->pc_hash = kiln_calloc(nb, sizeof(uint64_t));
        e->pc_parent = kiln_calloc(nb, sizeof(int32_t));
        e->pc_children = kiln_calloc(nb, sizeof(int32_t));
        e->pc_next = kiln_calloc(nb, sizeof(int32_t));
        e->pc_used = kiln_calloc(nb, sizeof(uint64_t));
        e->pc_tokens = kiln_calloc(n_tok, sizeof(int32_t));
        e->pc_buckets = kiln_malloc(n_buckets * sizeof(int32_t));
        if (!e->pc_cached || !e->pc_hash || !e->pc_parent || !e->pc_children || !e->pc_next ||
            !e->pc_used || !e->pc_tokens || !e->pc_buckets)
            goto out_nomem;
        for (size_t i = 0; i < n_buckets; i++) e->pc_buckets[i] = -1;
        e->pc_mask = (uint32_t)(n_buckets - 1);
        e->pc_on = true;
    }
    e->rows = kiln_calloc((size_t)o.max_num_batched_tokens, sizeof(*e->rows));
    e->bseqs = kiln_calloc((size_t)o.max_num_seqs, sizeof(*e->bseqs));
    e->sched = kiln_calloc((size_t)o.max_num_seqs, sizeof(*e->sched));
    if (!e->rows || !e->bseqs || !e->sched) goto out_nomem;
    if ((err = reserve_logits(e, KILN_MIN(o.max_num_seqs, 16))) != KILN_OK) goto out_free;
    e->lp_rows_per_step = (int32_t)KILN_MIN((size_t)o.max_num_batched_tokens,
                                            KILN_MAX((size_t)16, LP_ROWS_BYTES / ((size_t)e->n_vocab * sizeof(float))));
    int32_t n_tok = kiln_vocab_n_tokens(vocab);
    for (int32_t pass = 0; pass < 2; pass++) {
        int32_t n = 0;
        for (int32_t t = 0; t < n_tok && t < e->n_vocab; t++)
            if (kiln_vocab_is_eog(vocab, t)) {
                if (pass) e->eog[n] = t;
                n++;
            }
        if (!pass) {
            e->eog = kiln_calloc((size_t)n + 1, sizeof(int32_t));
            if (!e->eog) goto out_nomem;
        }
        e->n_eog = n;
    }

    e->stats.n_kv_blocks_total = kiln_kv_n_blocks(e->kv);
    e->stats.n_kv_blocks_free = kiln_kv_n_free(e->kv);
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        err = kiln_errf(KILN_ERR_IO, "engine: cannot start the engine thread");
        goto out_free;
    }
    e->thread_started = true;
    *out = e;
    return KILN_OK;

out_nomem:
    err = kiln_errf(KILN_ERR_NOMEM, "engine: out of memory");
out_free:
    kiln_engine_free(e);
    return err;
}

void kiln_engine_free(kiln_engine *e) {
    if (!e) return;
    if (e->thread_started) {
        pthread_mutex_lock(&e->mu);
        e->stop = true;
        pthread_cond_signal(&e->work_cond);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
    }
    for (ereq *q = e->inbox_head, *next; q; q = next) {
        next = q->inext;
        for (int32_t i = 0; i < q->n; i++) q->seqs[i].state = SEQ_DONE; /* in no list */
        req_destroy(e, q);
    }
    for (ereq *q = e->active_head, *next; q; q = next) {
        next = q->enext;
        req_destroy(e, q);
    }
    ev_list_free(&e->events);
    ev_list_free(&e->step_events);
    kiln_kv_free(e->kv);
    kiln_sample_scratch_free(e->scratch);
    kiln_free(e->logits);
    kiln_free(e->rows);
    kiln_free(e->bseqs);
    kiln_free(e->sched);
    kiln_free(e->eog);
    kiln_free(e->pc_cached);
    kiln_free(e->pc_hash);
    kiln_free(e->pc_parent);
    kiln_free(e->pc_children);
    kiln_free(e->pc_next);
    kiln_free(e->pc_used);
    kiln_free(e->pc_tokens);
    kiln_free(e->pc_buckets);
    kiln_buf_deinit(&e->piece);
    kiln_buf_deinit(&e->text);
    pthread_cond_destroy(&e->work_cond);
    pthread_cond_destroy(&e->ev_cond);
    pthread_mutex_destroy(&e->mu);
    kiln_free(e);
}

int32_t kiln_engine_max_model_len(const kiln_engine *e) {
    return e->max_model_len;
}

void kiln_engine_stats_get(kiln_engine *e, kiln_engine_stats *out) {
    pthread_mutex_lock(&e->mu);
    *out = e->stats;
    pthread_mutex_unlock(&e->mu);
}
