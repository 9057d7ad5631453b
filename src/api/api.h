/* api.h: the only layer that sees request/response JSON (jansson). Parses and validates
 * /v1/chat/completions and /v1/completions bodies into native structs with vLLM's field meanings
 * and defaults, and formats OpenAI's exact response shapes (chat.completion, chat.completion.chunk,
 * text_completion, usage, chat and legacy logprobs) and error bodies {"error":{message, type,
 * param, code}}. Pure functions of their inputs; any thread. Spec: OpenAI API reference, vLLM's
 * protocol.py (extra sampling fields). */
#ifndef KILN_API_H
#define KILN_API_H

#include <jansson.h>

#include "base/base.h"
#include "engine/engine.h"
#include "sample/sample.h"
#include "tok/tok.h"

#define KILN_API_MAX_PROMPTS 256   /* prompts in one /v1/completions request */
#define KILN_API_MAX_MESSAGES 4096 /* messages in one chat request */

typedef enum kiln_api_kind {
    KILN_API_CHAT,       /* /v1/chat/completions */
    KILN_API_COMPLETION, /* /v1/completions */
    KILN_API_KIND_COUNT
} kiln_api_kind;

/* An error for the client: HTTP status and the fields of OpenAI's error object. */
typedef struct kiln_api_error {
    int status;              /* 400, 404, 413, 503 ... */
    const char *type;        /* "invalid_request_error", "not_found_error", "server_error" ... */
    const char *code;        /* static string or NULL (JSON null) */
    char param[96];          /* field path ("messages[2].content"); "" = null */
    char message[512];
} kiln_api_error;

/* One prompt of /v1/completions: text or token ids (exactly one is set). */
typedef struct kiln_api_prompt {
    char *text;              /* owned, NUL-terminated UTF-8; NULL for ids */
    size_t n_text;
    int32_t *ids;            /* owned; (n_ids,) */
    size_t n_ids;
} kiln_api_prompt;

/* A parsed request. Owned by the caller: kiln_api_request_deinit frees every member. */
typedef struct kiln_api_request {
    kiln_api_kind kind;
    char *model;                    /* NULL when absent */
    /* chat */
    json_t *messages;               /* array of {role, content: string|null, ...}; text parts
                                     * joined with "\n" (vLLM's "string" content format) */
    bool add_generation_prompt;     /* default true */
    bool continue_final_message;    /* default false */
    json_t *chat_template_kwargs;   /* object or NULL */
    /* completions */
    kiln_api_prompt *prompts;       /* (n_prompts,) */
    size_t n_prompts;
    bool echo;                      /* prepend the prompt to the text */
    /* both */
    bool add_special_tokens;        /* BOS when encoding; default chat false, completions true */
    int32_t n_logprobs;             /* -1 off; chat: top_logprobs when logprobs, completions:
                                     * logprobs (0..20) */
    kiln_sampler_params sampling;   /* logit_bias points at `logit_bias` */
    kiln_logit_bias *logit_bias;    /* owned (sampling.n_logit_bias,) */
    int32_t n;                      /* choices per prompt, 1..KILN_ENGINE_MAX_N */
    int32_t max_tokens;             /* -1 = up to the context (chat default); completions 16 */
    int32_t min_tokens;
    char **stop;                    /* owned (n_stop,) */
    int32_t n_stop;
    int32_t *stop_token_ids;        /* owned (n_stop_token_ids,) */
    int32_t n_stop_token_ids;
    bool include_stop_str_in_output;
    bool ignore_eos;
    bool skip_special_tokens;       /* default true */
    bool stream;
    bool include_usage;             /* stream_options.include_usage */
    char *user;                     /* NULL when absent */
} kiln_api_request;

typedef struct kiln_api_parse_opts {
    bool lenient;                   /* unknown fields are ignored instead of 400 */
    int32_t n_vocab;                /* for token ids (prompt, logit_bias, stop_token_ids) */
} kiln_api_parse_opts;

/* Parses and validates `len` bytes of JSON for `kind`. The top-level "extra_body" object, if
 * any, is merged first (its keys override). On success *out is filled (kiln_api_request_deinit).
 * On failure *out is left deinitialized and *e says why: KILN_ERR_FORMAT (not JSON / not an
 * object, 400), KILN_ERR_INVALID (wrong type or range, unknown field; 400 with param),
 * KILN_ERR_UNSUPPORTED (a field kiln does not act on yet; 400 with param), KILN_ERR_NOMEM (503). */
kiln_err kiln_api_parse_request(kiln_api_kind kind, const char *body, size_t len,
                                const kiln_api_parse_opts *opts, kiln_api_request *out,
                                kiln_api_error *e);
void kiln_api_request_deinit(kiln_api_request *r);

/* Fills *e (status, type, code, param, printf message). Returns e for chaining. */
kiln_api_error *kiln_api_error_set(kiln_api_error *e, int status, const char *type,
                                   const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Writes {"error":{"message","type","param","code"}} (a kiln_http_error_fn). KILN_ERR_NOMEM. */
kiln_err kiln_api_error_body(int status, const char *message, const char *type, const char *param,
                             const char *code, kiln_buf *out);

/* Renders chat messages without a model template (kiln's documented fallback): each message as
 * "<role>: <content>\n", then "assistant:" when add_generation_prompt. Appends to out. NOMEM. */
kiln_err kiln_api_fallback_chat_prompt(const json_t *messages, bool add_generation_prompt,
                                       kiln_buf *out);

/* ---- responses ---- */

/* Logprob data of one generated (or echoed prompt) token. */
typedef struct kiln_api_lp {
    int32_t token;
    float logprob;
    bool has_logprob;               /* false: JSON null (the first prompt token) */
    int32_t n_top;
    kiln_token_logprob top[KILN_MAX_TOP_LOGPROBS];
} kiln_api_lp;

/* One choice of a response (accumulated by the caller). */
typedef struct kiln_api_choice {
    int32_t index;
    const char *text;               /* UTF-8 */
    size_t n_text;
    kiln_finish_reason finish;      /* NONE = JSON null */
    bool has_logprobs;              /* emit a logprobs object (possibly empty) instead of null */
    const kiln_api_lp *lps;         /* (n_lps,) */
    size_t n_lps;
    size_t text_offset;             /* completions: character offset of the first token */
} kiln_api_choice;

typedef struct kiln_api_usage {
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t cached_tokens;          /* prompt_tokens_details.cached_tokens (prefix cache) */
} kiln_api_usage;

/* Response envelope shared by every object of one response. */
typedef struct kiln_api_meta {
    const char *id;                 /* "chatcmpl-..." / "cmpl-..." */
    int64_t created;                /* unix seconds */
    const char *model;
} kiln_api_meta;

/* Fills buf (>= 40 bytes) with prefix + 32 random hex digits. */
void kiln_api_new_id(const char *prefix, char *buf, size_t size, kiln_rng *rng);

/* Whole responses (JSON, compact). `usage` may be NULL (no usage member). vocab renders the
 * token strings of logprobs. KILN_ERR_NOMEM. */
kiln_err kiln_api_format_chat(const kiln_api_meta *m, const kiln_api_choice *choices,
                              size_t n_choices, const kiln_api_usage *usage,
                              const kiln_vocab *vocab, kiln_buf *out);
kiln_err kiln_api_format_completion(const kiln_api_meta *m, const kiln_api_choice *choices,
                                    size_t n_choices, const kiln_api_usage *usage,
                                    const kiln_vocab *vocab, kiln_buf *out);

/* One streaming chunk holding one choice (chat: delta {role?, content?}; completions: text).
 * with_role adds "role":"assistant" (the first chat chunk). usage_null adds "usage": null (when
 * include_usage is on). KILN_ERR_NOMEM. */
kiln_err kiln_api_format_chat_chunk(const kiln_api_meta *m, const kiln_api_choice *c,
                                    bool with_role, bool usage_null, const kiln_vocab *vocab,
                                    kiln_buf *out);
kiln_err kiln_api_format_completion_chunk(const kiln_api_meta *m, const kiln_api_choice *c,
                                          bool usage_null, const kiln_vocab *vocab,
                                          kiln_buf *out);
/* The final usage chunk: choices [] and usage. KILN_ERR_NOMEM. */
kiln_err kiln_api_format_usage_chunk(kiln_api_kind kind, const kiln_api_meta *m,
                                     const kiln_api_usage *usage, kiln_buf *out);

/* Appends o as compact JSON (reals with 9 significant digits). KILN_ERR_NOMEM (out unchanged). */
kiln_err kiln_api_json_append(const json_t *o, kiln_buf *out);

/* Makes `len` bytes valid UTF-8 (each invalid byte becomes U+FFFD) and appends them. NOMEM. */
kiln_err kiln_api_utf8_lossy(const char *s, size_t len, kiln_buf *out);

#endif
