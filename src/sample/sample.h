/* sample.h: per-sequence token sampling with vLLM's semantics (logit bias, repetition / presence /
 * frequency penalties, temperature, min-p, top-k, top-p, seeded RNG, logprobs), and the stop-string
 * matcher of the streaming path (stop strings held back until decided, UTF-8 safe).
 * Threads: a kiln_sampler, a kiln_sample_scratch and a kiln_stop_matcher belong to one thread at a
 * time (the engine thread); parameter checks are pure and run on any thread.
 * Spec: OpenAI / vLLM request fields of the same names; order of operations as vLLM v1's Sampler. */
#ifndef KILN_SAMPLE_H
#define KILN_SAMPLE_H

#include "base/base.h"

#define KILN_MAX_TOP_LOGPROBS 20      /* OpenAI's top_logprobs maximum (vLLM's default max_logprobs) */
#define KILN_LOGIT_BIAS_MAX 100.0f    /* logit_bias values are clamped to [-100, 100] as vLLM does */

typedef struct kiln_logit_bias {
    int32_t token;                    /* in [0, n_vocab) */
    float bias;                       /* added to the raw logit; clamped to [-100, 100] */
} kiln_logit_bias;

/* Request-level sampling parameters; plain data, owned by the caller. */
typedef struct kiln_sampler_params {
    float temperature;                /* [0, 2]; 0 = greedy (argmax, ties -> lowest id); values in
                                         (0, 0.01) act as 0.01 (vLLM); default 1 */
    float top_p;                      /* (0, 1]; 1 = off */
    int32_t top_k;                    /* 0 or -1 = off; >= n_vocab acts as off. Keeps exactly k
                                         tokens, lower ids first among ties at the k-th logit
                                         (vLLM keeps all ties), so top_k 1 is greedy */
    float min_p;                      /* [0, 1]; 0 = off */
    float presence_penalty;           /* [-2, 2]; over generated tokens */
    float frequency_penalty;          /* [-2, 2]; over generated tokens */
    float repetition_penalty;         /* > 0; 1 = off; over prompt + generated tokens */
    const kiln_logit_bias *logit_bias;/* n_logit_bias entries; duplicates add up; may be NULL */
    int32_t n_logit_bias;
    uint64_t seed;                    /* used when has_seed */
    bool has_seed;                    /* false: seeded from the OS entropy source per sampler */
    int32_t n_top_logprobs;           /* -1 = no logprobs; 0 = chosen token only; <= 20 */
} kiln_sampler_params;

/* Fills p with vLLM's defaults: temperature 1, top_p 1, top_k off, min_p 0, no penalties
 * (repetition 1), no bias, no seed, n_top_logprobs -1. */
void kiln_sampler_params_default(kiln_sampler_params *p);

/* Validates every range above (and logit_bias token ids against n_vocab). KILN_OK, or
 * KILN_ERR_INVALID with kiln_errmsg() starting with the OpenAI field name followed by ": ", e.g.
 * "top_p: must be in (0, 1], got 1.5". Names used: temperature, top_p, top_k, min_p,
 * presence_penalty, frequency_penalty, repetition_penalty, logit_bias, top_logprobs. The field
 * name alone is also returned through *field when field is not NULL (static string). */
kiln_err kiln_sampler_params_check(const kiln_sampler_params *p, int32_t n_vocab,
                                   const char **field);

/* Scratch of O(n_vocab) floats used while sampling one token. Samplers that run on the same thread
 * can share one (the engine keeps one), so that a sequence costs O(history), not O(n_vocab). */
typedef struct kiln_sample_scratch kiln_sample_scratch;
/* Allocates scratch for vocabularies up to n_vocab. KILN_ERR_INVALID (n_vocab < 1) / NOMEM. */
kiln_err kiln_sample_scratch_new(int32_t n_vocab, kiln_sample_scratch **out);
void kiln_sample_scratch_free(kiln_sample_scratch *sc); /* NULL is a no-op */

/* One sequence's sampler: parameters, RNG, token history for penalties. */
typedef struct kiln_sampler kiln_sampler;

/* Creates a sampler for logits of n_vocab floats. Checks p (as kiln_sampler_params_check) and
 * copies it, including the logit_bias array. `scratch` is borrowed (must outlive the sampler and be
 * used on the same thread, n_vocab within its size); NULL makes the sampler allocate its own.
 * KILN_ERR_INVALID (bad params, see above), KILN_ERR_NOMEM. The caller owns *out. */
kiln_err kiln_sampler_new(const kiln_sampler_params *p, int32_t n_vocab,
                          kiln_sample_scratch *scratch, kiln_sampler **out);
void kiln_sampler_free(kiln_sampler *s); /* NULL is a no-op */

/* Records prompt tokens (for the repetition penalty only; presence/frequency count generated
 * tokens). Ids outside [0, n_vocab) are ignored. Call before the first sample; may be called more
 * than once (appends). KILN_ERR_NOMEM only. */
kiln_err kiln_sampler_accept_prompt(kiln_sampler *s, const int32_t *ids, size_t n);
/* Records a generated token that was not produced by kiln_sampler_sample (forced or replayed);
 * kiln_sampler_sample records its own choice. KILN_ERR_NOMEM only. */
kiln_err kiln_sampler_accept(kiln_sampler *s, int32_t token);

/* Bans `token` (logit -inf after bias and penalties) for the next kiln_sampler_sample call only,
 * e.g. EOS and stop_token_ids while min_tokens is not reached. Raw logprobs are unaffected (as with
 * vLLM's min_tokens processor). Out-of-range ids are ignored. */
void kiln_sampler_mask(kiln_sampler *s, int32_t token);

typedef struct kiln_token_logprob {
    int32_t token;
    float logprob;
} kiln_token_logprob;

typedef struct kiln_sample_result {
    int32_t token;                    /* the sampled token */
    /* Logprobs are log-softmax of the RAW logits (before bias, penalties, masks, temperature and
     * filters): vLLM's default logprobs_mode "raw_logprobs". Set only when n_top_logprobs >= 0. */
    float logprob;                    /* of `token`; -INFINITY if its raw logit was -inf or NaN
                                         (JSON has no -inf: vLLM prints -9999.0) */
    int32_t n_top;                    /* = n_top_logprobs (0 when logprobs are off) */
    kiln_token_logprob top[KILN_MAX_TOP_LOGPROBS]; /* by logprob desc, ties by lower id first */
} kiln_sample_result;

/* Samples one token from `logits` (n_vocab floats; on return they hold the adjusted logits: after
 * bias, penalties and masks, before temperature), in vLLM v1's order:
 * raw logprobs -> logit bias -> repetition, frequency, presence penalties -> masks -> greedy if
 * temperature == 0 -> temperature -> min-p -> top-k -> top-p -> draw from the softmax.
 * NaN logits count as -inf. Records the chosen token in the history and clears the masks.
 * KILN_ERR_INVALID when no token has a finite logit after masking or one is +inf (a broken model);
 * KILN_ERR_NOMEM (history growth). */
kiln_err kiln_sampler_sample(kiln_sampler *s, float *logits, kiln_sample_result *out);

/* The distribution kiln_sampler_sample would draw from for these logits (after bias, penalties,
 * pending masks, temperature and filters; one-hot at the argmax when greedy), written to probs
 * (n_vocab floats). Draws nothing and changes neither history nor masks; logits are adjusted in
 * place as by kiln_sampler_sample. For tests and diagnostics. KILN_ERR_INVALID as kiln_sampler_sample. */
kiln_err kiln_sampler_dist(kiln_sampler *s, float *logits, float *probs);

/* ---- stop strings (streaming path) ----
 * Text is fed as it is detokenized; the matcher releases the bytes that can no longer be part of a
 * stop string and holds back any suffix that is a proper prefix of one (never splitting a UTF-8
 * character, and holding back an incomplete trailing UTF-8 sequence). The first stop string to
 * complete in the stream wins (the earliest end; at equal ends the longest); the text from its start
 * on is never released unless include_stop_str_in_output, in which case the text through its end is. */
#define KILN_STOP_MAX_STRINGS 64      /* per request */
#define KILN_STOP_MAX_BYTES 1024      /* per stop string */

typedef struct kiln_stop_matcher {
    char **stops;                     /* n_stops owned copies (NUL-terminated) */
    size_t *lens;                     /* n_stops byte lengths, each >= 1 */
    uint16_t **fail;                  /* n_stops KMP failure tables of lens[i] entries */
    size_t *state;                    /* n_stops: bytes of stops[i] matched by the stream's tail */
    int32_t n_stops;
    bool include_stop;                /* include_stop_str_in_output */
    kiln_buf pending;                 /* text fed but not released yet */
    size_t n_released;                /* bytes at the front of pending released by the last call */
    int32_t i_matched;                /* index of the matched stop string, -1 while none */
} kiln_stop_matcher;

/* What the caller may send after one feed/flush. `text` points into the matcher and stays valid
 * until the next call on it. */
typedef struct kiln_stop_out {
    const char *text;                 /* bytes to send now (may be NULL when n_text == 0) */
    size_t n_text;
    int32_t i_stop;                   /* >= 0: this stop string matched; the stream is finished */
} kiln_stop_out;

/* Copies the n_stops strings (lens[i] bytes each; lens NULL = NUL-terminated). KILN_ERR_INVALID
 * ("stop: ..." for an empty string, too many, too long or not UTF-8), KILN_ERR_NOMEM. n_stops 0 is
 * valid (the matcher then only holds back incomplete UTF-8). Deinit with kiln_stop_matcher_deinit,
 * which is also safe (and frees nothing) after a failed init. Feeding costs O(n_stops) per byte
 * (a KMP automaton per stop string). */
kiln_err kiln_stop_matcher_init(kiln_stop_matcher *m, const char *const *stops, const size_t *lens,
                                int32_t n_stops, bool include_stop_str_in_output);
void kiln_stop_matcher_deinit(kiln_stop_matcher *m);
/* Appends n bytes of generated text and reports what to send. After a match every further feed
 * releases nothing and reports the same i_stop. KILN_ERR_NOMEM only. */
kiln_err kiln_stop_matcher_feed(kiln_stop_matcher *m, const char *text, size_t n,
                                kiln_stop_out *out);
/* The generation ended without a stop string (length, EOS, stop token): releases everything still
 * held back (no match is possible any more). */
void kiln_stop_matcher_flush(kiln_stop_matcher *m, kiln_stop_out *out);
/* Bytes currently held back (fed, not released, not part of a match). */
size_t kiln_stop_matcher_n_held(const kiln_stop_matcher *m);

#endif
