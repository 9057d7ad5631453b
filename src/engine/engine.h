/* engine.h: the engine thread: a bounded request inbox, the scheduler with continuous batching
 * (prefill chunks + one decode row per running sequence in ONE forward pass per step, within a
 * token budget), the sequences with their paged KV blocks, samplers, streaming detokenizers and
 * stop matchers, and a thread-safe event queue back to the caller (the server thread).
 * Threads: kiln_engine_submit / cancel / poll / stats / max_model_len are safe from any thread;
 * everything else inside the engine (KV cache, sequences, samplers) is owned by the engine thread.
 * Invariant: every accepted request gets exactly one terminal event (DONE, ERROR or CANCELLED),
 * unless the engine is freed first (then it is dropped silently). */
#ifndef KILN_ENGINE_H
#define KILN_ENGINE_H

#include "base/base.h"
#include "model/model.h"
#include "sample/sample.h"
#include "tok/tok.h"

#define KILN_ENGINE_MAX_N 128 /* most choices (n) per request */

typedef struct kiln_engine kiln_engine;

typedef struct kiln_engine_opts {
    int32_t max_num_seqs;           /* sequences running at once (vLLM --max-num-seqs); default 256 */
    size_t kv_cache_bytes;          /* KV pool budget in bytes (--kv-cache-memory); default 1 GiB */
    int32_t block_size;             /* KV tokens per block; default 16 */
    int32_t max_model_len;          /* prompt + completion limit; 0 = the model's context length.
                                     * Clamped to what the KV pool holds, so any accepted request
                                     * can run alone. */
    int32_t max_queued_requests;    /* accepted requests not yet running; default 1024 */
    int32_t max_num_batched_tokens; /* rows per forward step; default 2048, raised to
                                     * max_num_seqs if smaller */
    bool enable_prefix_caching;     /* reuse the KV blocks of earlier prompts with the same
                                     * leading tokens (vLLM's automatic prefix caching); default
                                     * true. Cached blocks nobody uses are evicted on demand and
                                     * count as free in the stats. */
    int64_t max_queued_tokens;      /* prompt tokens of accepted requests not yet running;
                                     * 0 = no limit (default). Over it, submit answers
                                     * KILN_ERR_FULL; a prompt longer than the limit alone,
                                     * KILN_ERR_LIMIT. */
} kiln_engine_opts;

/* Fills o with the defaults above. */
void kiln_engine_opts_default(kiln_engine_opts *o);

/* Called FROM THE ENGINE THREAD after it pushed one or more events (at most once per step).
 * Must be cheap and thread-safe (e.g. libevent's event_active on an event of the server loop). */
typedef void (*kiln_engine_notify_fn)(void *ctx);

/* A generation request, filled by the caller. kiln_engine_submit deep-copies everything it points
 * to, so the caller may free or reuse the struct and its arrays as soon as submit returns. */
typedef struct kiln_request {
    const int32_t *prompt;              /* (n_prompt,) token ids, BOS included if wanted */
    int32_t n_prompt;                   /* >= 1 */
    kiln_sampler_params sampling;       /* sample.h; n_top_logprobs = logprobs of the completion */
    int32_t n;                          /* choices, 1..KILN_ENGINE_MAX_N; choice i samples with
                                         * seed + i when sampling.has_seed; the choices share
                                         * the prompt's KV blocks */
    int32_t max_tokens;                 /* completion tokens per choice; <= 0 = up to the context */
    int32_t min_tokens;                 /* EOS / stop_token_ids banned, stop strings not looked
                                         * for, before this many tokens */
    bool ignore_eos;                    /* end-of-generation tokens do not stop the choice */
    const char *const *stop;            /* (n_stop,) stop strings, NUL-terminated */
    int32_t n_stop;                     /* <= KILN_STOP_MAX_STRINGS */
    bool include_stop_str_in_output;    /* the matched stop string / stop token text is sent */
    const int32_t *stop_token_ids;      /* (n_stop_token_ids,) extra stop tokens */
    int32_t n_stop_token_ids;
    bool skip_special_tokens;           /* control tokens produce no text; default true */
    int32_t n_prompt_logprobs;          /* -1 = off (default); 0..20: a PROMPT_LOGPROBS event
                                         * with that many alternatives per prompt position */
    void *user;                         /* opaque, returned in every event of this request */
    const char *client;                 /* fair-share key (X-Client-Name or the peer address);
                                         * NULL = one anonymous client. Waiting requests are
                                         * admitted round-robin across clients, so one client's
                                         * backlog cannot starve another's requests. */
} kiln_request;

/* Fills r with the defaults: no prompt, default sampling (kiln_sampler_params_default), n 1,
 * max_tokens -1 (up to the context), min_tokens 0, no stops, skip_special_tokens true,
 * n_prompt_logprobs -1, user NULL. */
void kiln_request_init(kiln_request *r);

typedef enum kiln_finish_reason {
    KILN_FINISH_NONE,       /* not finished */
    KILN_FINISH_STOP,       /* end-of-generation token, stop_token_ids or a stop string */
    KILN_FINISH_LENGTH,     /* max_tokens or the context length reached */
    KILN_FINISH_TOOL_CALLS, /* set by the API layer (later issue); the engine never sets it */
    KILN_FINISH_COUNT
} kiln_finish_reason;

/* "stop", "length", "tool_calls" (NULL for NONE). */
const char *kiln_finish_reason_name(kiln_finish_reason r);

typedef enum kiln_event_type {
    KILN_EVENT_DELTA,           /* one choice advanced: text and/or tokens; finish != NONE on
                                 * that choice's last delta (exactly one per choice) */
    KILN_EVENT_PROMPT_LOGPROBS, /* once, before any delta, when n_prompt_logprobs >= 0 */
    KILN_EVENT_DONE,            /* terminal: every choice finished; usage set */
    KILN_EVENT_ERROR,           /* terminal: err + message */
    KILN_EVENT_CANCELLED,       /* terminal: kiln_engine_cancel took effect */
    KILN_EVENT_TYPE_COUNT
} kiln_event_type;

/* One token of a delta (or of the prompt in PROMPT_LOGPROBS). */
typedef struct kiln_event_token {
    int32_t token;
    float logprob;                  /* raw logprob (sample.h); 0 when logprobs are off, and for
                                     * the first prompt token (which has none) */
    int32_t n_top;                  /* entries in top (0 when logprobs are off) */
    const kiln_token_logprob *top;  /* (n_top,) by logprob desc */
} kiln_event_token;

/* An event; one heap block owned by the caller of kiln_engine_poll (kiln_engine_event_free).
 * All pointers point inside that block. */
typedef struct kiln_event {
    kiln_event_type type;
    uint64_t request_id;            /* as returned by kiln_engine_submit */
    void *user;                     /* kiln_request.user */
    /* DELTA */
    int32_t index;                  /* choice index in [0, n) */
    const char *text;               /* complete UTF-8, stop strings removed; NUL-terminated */
    size_t n_text;                  /* may be 0 (text held back by the stop matcher) */
    int32_t n_tokens;               /* tokens generated in this delta (their text is not
                                     * necessarily in `text` yet); the concatenation over a
                                     * choice's deltas is its completion, a final stop token
                                     * (EOS, stop_token_ids) included and counted in usage,
                                     * though its text is not sent */
    const kiln_event_token *tokens; /* (n_tokens,); for PROMPT_LOGPROBS: the n_prompt tokens,
                                     * each with its raw logprob given the tokens before it and
                                     * the top alternatives at that position (none for token 0) */
    kiln_finish_reason finish;      /* != NONE on the choice's last delta */
    int32_t stop_token;             /* finish STOP by a token: its id; else -1 */
    int32_t i_stop_str;             /* finish STOP by a stop string: its index in stop[]; else -1 */
    /* DONE */
    int32_t n_prompt_tokens;        /* usage.prompt_tokens */
    int32_t n_completion_tokens;    /* usage.completion_tokens, summed over choices */
    int32_t n_cached_tokens;        /* usage.prompt_tokens_details.cached_tokens: prompt tokens
                                     * whose KV came from the prefix cache at admission */
    int64_t queue_ns;               /* submit to first admission (0 if never admitted) */
    /* ERROR */
    kiln_err err;
    const char *message;            /* NUL-terminated; "" for other types */
} kiln_event;

/* Creates the engine and starts its thread. model and vocab are borrowed and must outlive the
 * engine; while the engine exists, only its thread may call kiln_model_forward on model (the
 * model's scratch is not shared). The engine owns the KV cache it allocates from
 * opts->kv_cache_bytes. opts NULL = the
 * defaults. notify may be NULL (then the caller polls). KILN_ERR_INVALID (bad option; the message
 * names it), KILN_ERR_NOMEM, KILN_ERR_IO (thread creation). The caller owns *out. */
kiln_err kiln_engine_new(kiln_model *model, const kiln_vocab *vocab, const kiln_engine_opts *opts,
                         kiln_engine_notify_fn notify, void *notify_ctx, kiln_engine **out);

/* Stops and joins the engine thread, then frees every request, sequence, event not yet polled and
 * the KV cache. No terminal events are produced for requests still in flight. NULL is a no-op. */
void kiln_engine_free(kiln_engine *e);

/* The effective prompt + completion limit (after clamping to the KV pool). */
int32_t kiln_engine_max_model_len(const kiln_engine *e);

/* Validates r and queues a deep copy of it; *id receives the request id (> 0). Any thread.
 * KILN_ERR_INVALID: a field is out of range; kiln_errmsg() starts with the OpenAI field name
 *   ("n: ...", "max_tokens: ...", "stop: ...", "stop_token_ids: ...", "prompt: ...", or the
 *   sampler's names, see kiln_sampler_params_check); *field, when not NULL, gets that name.
 * KILN_ERR_LIMIT: n_prompt + max_tokens (or n_prompt alone) exceeds kiln_engine_max_model_len;
 *   the message has the numbers ("maximum context length is 512 tokens, requested 600 tokens
 *   (100 in the prompt, 500 in the completion)"); *field = "max_tokens" or "prompt".
 * KILN_ERR_FULL: max_queued_requests accepted requests are already waiting, or this request's
 *   client (kiln_request.client) already has half of them (at least 1; when the limit is 2 or
 *   more), or the waiting prompts plus this one exceed max_queued_tokens (HTTP 503 with
 *   Retry-After); nothing is counted.
 * KILN_ERR_NOMEM. On any error nothing was queued and no event will come. */
kiln_err kiln_engine_submit(kiln_engine *e, const kiln_request *r, uint64_t *id,
                            const char **field);

/* Asks the engine to drop request id (a client disconnect). Any thread; cheap. Takes effect at
 * the next step: its sequences and KV blocks are freed and a CANCELLED event is posted, unless the
 * request already ended (its terminal event is then the one already queued or polled). Unknown or
 * finished ids are ignored. */
void kiln_engine_cancel(kiln_engine *e, uint64_t id);

/* Pops the oldest event, or returns NULL when the queue is empty. Any thread (meant for the
 * server thread, after notify). The caller frees it with kiln_engine_event_free. */
kiln_event *kiln_engine_poll(kiln_engine *e);
/* As kiln_engine_poll, but waits up to timeout_ms for an event (for tests and the CLI). */
kiln_event *kiln_engine_poll_wait(kiln_engine *e, int64_t timeout_ms);
void kiln_engine_event_free(kiln_event *ev); /* NULL is a no-op */

/* Counters, a consistent snapshot taken at the end of the last step (any thread). */
typedef struct kiln_engine_stats {
    int32_t n_running;              /* sequences admitted (holding or about to hold KV blocks) */
    int32_t n_waiting;              /* sequences queued or preempted, plus requests in the inbox */
    int32_t n_requests_active;      /* accepted requests without a terminal event yet */
    int32_t n_kv_blocks_total;
    int32_t n_kv_blocks_free;       /* free, or only held by the prefix cache (evictable) */
    int32_t n_kv_blocks_cached;     /* blocks in the prefix cache (in use or not) */
    int32_t max_seqs_in_step;       /* most sequences in one forward pass so far */
    uint64_t n_steps;               /* forward passes */
    uint64_t n_rows_forwarded;      /* batch rows over all steps */
    uint64_t n_prompt_tokens;       /* prompt rows forwarded (recomputation included) */
    uint64_t n_prefix_cache_query_tokens; /* prompt tokens looked up in the prefix cache */
    uint64_t n_prefix_cache_hit_tokens; /* prompt tokens whose KV came from the prefix cache */
    uint64_t n_generated_tokens;    /* tokens sampled */
    uint64_t n_preemptions;         /* sequences evicted to free KV blocks */
    uint64_t n_requests_submitted;
    uint64_t n_requests_finished;   /* DONE events */
    uint64_t n_requests_cancelled;  /* CANCELLED events */
    uint64_t n_requests_failed;     /* ERROR events */
} kiln_engine_stats;

void kiln_engine_stats_get(kiln_engine *e, kiln_engine_stats *out);

#endif
