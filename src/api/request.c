/* request.c: JSON request bodies of /v1/chat/completions and /v1/completions -> kiln_api_request,
 * with vLLM's field meanings and defaults. Every field is type- and range-checked here (sampling
 * ranges through kiln_sampler_params_check); unknown fields are a 400 naming the field unless
 * lenient; OpenAI/vLLM fields kiln does not act on yet are a 400 "not supported yet".
 * Pure; any thread. Spec: OpenAI API reference (chat, legacy completions), vLLM protocol.py. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

/* ---- errors ---- */

kiln_api_error *kiln_api_error_set(kiln_api_error *e, int status, const char *type,
                                   const char *code, const char *param, const char *fmt, ...) {
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof(e->param), "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    return e;
}

#define BAD(e, field, ...)                                                                     \
    (kiln_api_error_set((e), 400, "invalid_request_error", NULL, (field), __VA_ARGS__),         \
     KILN_ERR_INVALID)

static kiln_err nomem(kiln_api_error *e) {
    kiln_api_error_set(e, 503, "server_error", NULL, NULL, "out of memory");
    return KILN_ERR_NOMEM;
}

/* ---- the field tables ---- */

enum { CHAT = 1, CMPL = 2, BOTH = 3 };

typedef struct field {
    const char *name;
    int kinds;
} field;

/* Fields kiln acts on. */
static const field known[] = {
    {"model", BOTH},
    {"messages", CHAT},
    {"prompt", CMPL},
    {"temperature", BOTH},
    {"top_p", BOTH},
    {"top_k", BOTH},
    {"min_p", BOTH},
    {"n", BOTH},
    {"max_tokens", BOTH},
    {"max_completion_tokens", CHAT},
    {"min_tokens", BOTH},
    {"stop", BOTH},
    {"stop_token_ids", BOTH},
    {"include_stop_str_in_output", BOTH},
    {"ignore_eos", BOTH},
    {"skip_special_tokens", BOTH},
    {"presence_penalty", BOTH},
    {"frequency_penalty", BOTH},
    {"repetition_penalty", BOTH},
    {"logit_bias", BOTH},
    {"seed", BOTH},
    {"logprobs", BOTH},
    {"top_logprobs", CHAT},
    {"echo", BOTH},
    {"stream", BOTH},
    {"stream_options", BOTH},
    {"user", BOTH},
    {"add_generation_prompt", CHAT},
    {"continue_final_message", CHAT},
    {"add_special_tokens", BOTH},
    {"chat_template_kwargs", CHAT},
};

/* Known OpenAI / vLLM fields kiln does not act on yet: a 400 when present and not null. */
static const char *const later[] = {
    "response_format", "tools", "tool_choice", "parallel_tool_calls", "functions",
    "function_call", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
    "guided_decoding_backend", "guided_whitespace_pattern", "structured_outputs", "suffix",
    "best_of", "modalities", "audio", "prediction", "service_tier", "store", "metadata",
    "reasoning_effort", "web_search_options", "chat_template", "documents", "priority",
    "request_id", "return_tokens_as_token_ids", "prompt_logprobs", "length_penalty",
    "use_beam_search", "spaces_between_special_tokens", "truncate_prompt_tokens",
    "prompt_embeds", "logits_processors", "bad_words", "allowed_token_ids", "cache_salt",
    "mm_processor_kwargs", "verbosity", "prompt_cache_key", "safety_identifier",
    "kv_transfer_params", "vllm_xargs", "continuous_usage_stats", "include_reasoning",
};

static bool is_known(const char *name, int kind) {
    for (size_t i = 0; i < KILN_ARRAY_LEN(known); i++)
        if (!strcmp(known[i].name, name)) return (known[i].kinds & kind) != 0;
    return false;
}

static bool is_later(const char *name) {
    for (size_t i = 0; i < KILN_ARRAY_LEN(later); i++)
        if (!strcmp(later[i], name)) return true;
    return false;
}

/* ---- typed getters: absent or null keeps the default ---- */

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static json_t *get(const json_t *o, const char *name) {
    json_t *v = json_object_get(o, name);
    return v && !json_is_null(v) ? v : NULL;
}

static kiln_err get_bool(const json_t *o, const char *name, bool *out, kiln_api_error *e) {
    json_t *v = get(o, name);
    if (!v) return KILN_OK;
    if (!json_is_boolean(v)) return BAD(e, name, "%s: must be a boolean, got %s", name, type_name(v));
    *out = json_is_true(v);
    return KILN_OK;
}

/* Integers; a real with an integral value (5.0) is accepted as pydantic does. */
static kiln_err as_int(const json_t *v, const char *name, int64_t lo, int64_t hi, int64_t *out,
                       kiln_api_error *e) {
    int64_t x;
    if (json_is_integer(v)) {
        x = (int64_t)json_integer_value(v);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d == floor(d)) || !(fabs(d) < 9.0e18))
            return BAD(e, name, "%s: must be an integer, got %g", name, d);
        x = (int64_t)d;
    } else {
        return BAD(e, name, "%s: must be an integer, got %s", name, type_name(v));
    }
    if (x < lo || x > hi)
        return BAD(e, name, "%s: must be in [%lld, %lld], got %lld", name, (long long)lo,
                   (long long)hi, (long long)x);
    *out = x;
    return KILN_OK;
}

static kiln_err get_int(const json_t *o, const char *name, int64_t lo, int64_t hi, int64_t *out,
                        bool *present, kiln_api_error *e) {
    json_t *v = get(o, name);
    if (present) *present = v != NULL;
    if (!v) return KILN_OK;
    return as_int(v, name, lo, hi, out, e);
}

static kiln_err as_float(const json_t *v, const char *name, float *out, kiln_api_error *e) {
    if (!json_is_number(v))
        return BAD(e, name, "%s: must be a number, got %s", name, type_name(v));
    double d = json_number_value(v);
    if (!isfinite(d) || fabs(d) > 3.0e38)
        return BAD(e, name, "%s: must be a finite number, got %g", name, d);
    *out = (float)d;
    return KILN_OK;
}

static kiln_err get_float(const json_t *o, const char *name, float *out, kiln_api_error *e) {
    json_t *v = get(o, name);
    if (!v) return KILN_OK;
    return as_float(v, name, out, e);
}

static kiln_err get_str(const json_t *o, const char *name, char **out, kiln_api_error *e) {
    json_t *v = get(o, name);
    if (!v) return KILN_OK;
    if (!json_is_string(v)) return BAD(e, name, "%s: must be a string, got %s", name, type_name(v));
    *out = kiln_strndup(json_string_value(v), json_string_length(v));
    return *out ? KILN_OK : nomem(e);
}

/* ---- messages ---- */

static const char *const roles[] = {"system", "developer", "user", "assistant", "tool"};

/* Validates one message and appends its normalized copy to `out`. */
static kiln_err parse_message(const json_t *m, size_t i, bool lenient, json_t *out,
                              kiln_api_error *e) {
    char p[96];
    snprintf(p, sizeof(p), "messages[%zu]", i);
    if (!json_is_object(m)) return BAD(e, p, "%s: must be an object, got %s", p, type_name(m));
    json_t *role = json_object_get(m, "role");
    snprintf(p, sizeof(p), "messages[%zu].role", i);
    if (!role) return BAD(e, p, "%s: is required", p);
    if (!json_is_string(role)) return BAD(e, p, "%s: must be a string, got %s", p, type_name(role));
    const char *r = json_string_value(role);
    bool role_ok = false;
    for (size_t k = 0; k < KILN_ARRAY_LEN(roles); k++) role_ok |= !strcmp(r, roles[k]);
    if (!role_ok)
        return BAD(e, p, "%s: must be one of system, developer, user, assistant, tool; got '%.40s'",
                   p, r);
    bool assistant = !strcmp(r, "assistant");

    const char *key;
    json_t *val;
    json_object_foreach((json_t *)m, key, val) {
        if (!strcmp(key, "role") || !strcmp(key, "content") || !strcmp(key, "name") ||
            !strcmp(key, "tool_call_id") || !strcmp(key, "tool_calls") ||
            !strcmp(key, "reasoning_content"))
            continue;
        if (lenient) continue;
        snprintf(p, sizeof(p), "messages[%zu].%.60s", i, key);
        return BAD(e, p, "Unrecognized message field: %s", p);
    }

    json_t *nm = json_object();
    if (!nm) return nomem(e);
    /* The developer role is the system role of newer OpenAI models; templates know "system". */
    if (json_object_set_new(nm, "role", json_string(!strcmp(r, "developer") ? "system" : r)))
        goto out_nomem;

    json_t *content = json_object_get(m, "content");
    snprintf(p, sizeof(p), "messages[%zu].content", i);
    if (!content || json_is_null(content)) {
        if (!assistant) {
            json_decref(nm);
            return BAD(e, p, "%s: is required for role '%s'", p, r);
        }
        if (json_object_set_new(nm, "content", json_null())) goto out_nomem;
    } else if (json_is_string(content)) {
        if (json_object_set(nm, "content", content)) goto out_nomem;
    } else if (json_is_array(content)) {
        kiln_buf text;
        kiln_buf_init(&text);
        size_t j;
        json_t *part;
        json_array_foreach(content, j, part) {
            char pp[96];
            snprintf(pp, sizeof(pp), "messages[%zu].content[%zu]", i, j);
            json_t *type = json_is_object(part) ? json_object_get(part, "type") : NULL;
            json_t *txt = json_is_object(part) ? json_object_get(part, "text") : NULL;
            if (!json_is_object(part) || !json_is_string(type)) {
                kiln_buf_deinit(&text);
                json_decref(nm);
                return BAD(e, pp, "%s: must be an object with a string \"type\"", pp);
            }
            if (strcmp(json_string_value(type), "text") != 0) {
                kiln_buf_deinit(&text);
                json_decref(nm);
                snprintf(pp, sizeof(pp), "messages[%zu].content[%zu].type", i, j);
                kiln_api_error_set(e, 400, "invalid_request_error", NULL, pp,
                                   "%s: content parts of type '%.40s' are not supported yet "
                                   "(only 'text')", pp, json_string_value(type));
                return KILN_ERR_UNSUPPORTED;
            }
            if (!json_is_string(txt)) {
                kiln_buf_deinit(&text);
                json_decref(nm);
                snprintf(pp, sizeof(pp), "messages[%zu].content[%zu].text", i, j);
                return BAD(e, pp, "%s: must be a string", pp);
            }
            if ((j > 0 && kiln_buf_putc(&text, '\n') != KILN_OK) ||
                kiln_buf_append(&text, json_string_value(txt), json_string_length(txt)) !=
                    KILN_OK) {
                kiln_buf_deinit(&text);
                goto out_nomem;
            }
        }
        json_t *s = json_stringn(text.data ? text.data : "", text.len);
        kiln_buf_deinit(&text);
        if (!s || json_object_set_new(nm, "content", s)) goto out_nomem;
    } else {
        json_decref(nm);
        return BAD(e, p, "%s: must be a string, an array of text parts or null, got %s", p,
                   type_name(content));
    }

    static const char *const strs[] = {"name", "tool_call_id", "reasoning_content"};
    for (size_t k = 0; k < KILN_ARRAY_LEN(strs); k++) {
        json_t *v = json_object_get(m, strs[k]);
        if (!v || json_is_null(v)) continue;
        snprintf(p, sizeof(p), "messages[%zu].%s", i, strs[k]);
        if (!json_is_string(v)) {
            json_decref(nm);
            return BAD(e, p, "%s: must be a string, got %s", p, type_name(v));
        }
        if (json_object_set(nm, strs[k], v)) goto out_nomem;
    }
    json_t *calls = json_object_get(m, "tool_calls");
    if (calls && !json_is_null(calls)) {
        snprintf(p, sizeof(p), "messages[%zu].tool_calls", i);
        if (!assistant || !json_is_array(calls)) {
            json_decref(nm);
            return BAD(e, p, "%s: must be an array, on an assistant message", p);
        }
        if (json_object_set(nm, "tool_calls", calls)) goto out_nomem;
    }
    if (json_array_append_new(out, nm)) return nomem(e);
    return KILN_OK;
out_nomem:
    json_decref(nm);
    return nomem(e);
}

static kiln_err parse_messages(const json_t *root, bool lenient, kiln_api_request *r,
                               kiln_api_error *e) {
    json_t *ms = json_object_get(root, "messages");
    if (!ms || json_is_null(ms)) return BAD(e, "messages", "messages: is required");
    if (!json_is_array(ms))
        return BAD(e, "messages", "messages: must be an array, got %s", type_name(ms));
    size_t n = json_array_size(ms);
    if (n == 0) return BAD(e, "messages", "messages: must not be empty");
    if (n > KILN_API_MAX_MESSAGES)
        return BAD(e, "messages", "messages: at most %d messages, got %zu", KILN_API_MAX_MESSAGES,
                   n);
    r->messages = json_array();
    if (!r->messages) return nomem(e);
    for (size_t i = 0; i < n; i++) {
        kiln_err err = parse_message(json_array_get(ms, i), i, lenient, r->messages, e);
        if (err) return err;
    }
    return KILN_OK;
}

/* ---- prompts ---- */

static kiln_err parse_ids(const json_t *arr, const char *p, int32_t n_vocab, kiln_api_prompt *out,
                          kiln_api_error *e) {
    size_t n = json_array_size(arr);
    out->ids = kiln_malloc(n ? n * sizeof(int32_t) : 1);
    if (!out->ids) return nomem(e);
    out->n_ids = n;
    for (size_t i = 0; i < n; i++) {
        int64_t x;
        char pp[96];
        snprintf(pp, sizeof(pp), "%s[%zu]", p, i);
        kiln_err err = as_int(json_array_get(arr, i), pp, 0, (int64_t)n_vocab - 1, &x, e);
        if (err) return err;
        out->ids[i] = (int32_t)x;
    }
    return KILN_OK;
}

static kiln_err parse_prompts(const json_t *root, int32_t n_vocab, kiln_api_request *r,
                              kiln_api_error *e) {
    json_t *pr = json_object_get(root, "prompt");
    if (!pr || json_is_null(pr)) return BAD(e, "prompt", "prompt: is required");
    size_t n_prompts = 1;
    bool single_ids = false;
    if (json_is_string(pr)) {
        n_prompts = 1;
    } else if (json_is_array(pr)) {
        size_t n = json_array_size(pr);
        if (n == 0) return BAD(e, "prompt", "prompt: must not be empty");
        json_t *first = json_array_get(pr, 0);
        if (json_is_integer(first)) {
            single_ids = true;
        } else {
            n_prompts = n;
            if (n_prompts > KILN_API_MAX_PROMPTS)
                return BAD(e, "prompt", "prompt: at most %d prompts, got %zu",
                           KILN_API_MAX_PROMPTS, n_prompts);
        }
    } else {
        return BAD(e, "prompt",
                   "prompt: must be a string, an array of strings, an array of token ids or an "
                   "array of arrays of token ids, got %s", type_name(pr));
    }
    r->prompts = kiln_calloc(n_prompts, sizeof(*r->prompts));
    if (!r->prompts) return nomem(e);
    r->n_prompts = n_prompts;
    if (json_is_string(pr)) {
        r->prompts[0].text = kiln_strndup(json_string_value(pr), json_string_length(pr));
        r->prompts[0].n_text = json_string_length(pr);
        return r->prompts[0].text ? KILN_OK : nomem(e);
    }
    if (single_ids) return parse_ids(pr, "prompt", n_vocab, &r->prompts[0], e);
    for (size_t i = 0; i < n_prompts; i++) {
        json_t *p = json_array_get(pr, i);
        char pp[64];
        snprintf(pp, sizeof(pp), "prompt[%zu]", i);
        if (json_is_string(p)) {
            r->prompts[i].text = kiln_strndup(json_string_value(p), json_string_length(p));
            r->prompts[i].n_text = json_string_length(p);
            if (!r->prompts[i].text) return nomem(e);
        } else if (json_is_array(p)) {
            if (json_array_size(p) == 0) return BAD(e, pp, "%s: must not be empty", pp);
            kiln_err err = parse_ids(p, pp, n_vocab, &r->prompts[i], e);
            if (err) return err;
        } else {
            return BAD(e, pp, "%s: must be a string or an array of token ids, got %s", pp,
                       type_name(p));
        }
    }
    return KILN_OK;
}

/* ---- stop, stop_token_ids, logit_bias ---- */

static kiln_err parse_stop(const json_t *root, kiln_api_request *r, kiln_api_error *e) {
    json_t *st = get(root, "stop");
    if (!st) return KILN_OK;
    size_t n;
    if (json_is_string(st)) n = 1;
    else if (json_is_array(st)) n = json_array_size(st);
    else return BAD(e, "stop", "stop: must be a string or an array of strings, got %s",
                    type_name(st));
    if (n > KILN_STOP_MAX_STRINGS)
        return BAD(e, "stop", "stop: at most %d strings, got %zu", KILN_STOP_MAX_STRINGS, n);
    if (n == 0) return KILN_OK;
    r->stop = kiln_calloc(n, sizeof(char *));
    if (!r->stop) return nomem(e);
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_string(st) ? st : json_array_get(st, i);
        char pp[32];
        snprintf(pp, sizeof(pp), json_is_string(st) ? "stop" : "stop[%zu]", i);
        if (!json_is_string(s)) return BAD(e, pp, "%s: must be a string, got %s", pp, type_name(s));
        size_t len = json_string_length(s);
        if (len == 0) return BAD(e, pp, "%s: must not be empty", pp);
        if (len > KILN_STOP_MAX_BYTES)
            return BAD(e, pp, "%s: at most %d bytes, got %zu", pp, KILN_STOP_MAX_BYTES, len);
        if (memchr(json_string_value(s), 0, len))
            return BAD(e, pp, "%s: must not contain NUL", pp);
        r->stop[i] = kiln_strndup(json_string_value(s), len);
        if (!r->stop[i]) return nomem(e);
        r->n_stop = (int32_t)(i + 1);
    }
    return KILN_OK;
}

static kiln_err parse_stop_ids(const json_t *root, int32_t n_vocab, kiln_api_request *r,
                               kiln_api_error *e) {
    json_t *st = get(root, "stop_token_ids");
    if (!st) return KILN_OK;
    if (!json_is_array(st))
        return BAD(e, "stop_token_ids", "stop_token_ids: must be an array of integers, got %s",
                   type_name(st));
    size_t n = json_array_size(st);
    if (n > 1024) return BAD(e, "stop_token_ids", "stop_token_ids: at most 1024 ids, got %zu", n);
    if (n == 0) return KILN_OK;
    r->stop_token_ids = kiln_malloc(n * sizeof(int32_t));
    if (!r->stop_token_ids) return nomem(e);
    for (size_t i = 0; i < n; i++) {
        char pp[48];
        snprintf(pp, sizeof(pp), "stop_token_ids[%zu]", i);
        int64_t x;
        kiln_err err = as_int(json_array_get(st, i), pp, 0, (int64_t)n_vocab - 1, &x, e);
        if (err) return err;
        r->stop_token_ids[i] = (int32_t)x;
        r->n_stop_token_ids = (int32_t)(i + 1);
    }
    return KILN_OK;
}

static kiln_err parse_logit_bias(const json_t *root, int32_t n_vocab, kiln_api_request *r,
                                 kiln_api_error *e) {
    json_t *lb = get(root, "logit_bias");
    if (!lb) return KILN_OK;
    if (!json_is_object(lb))
        return BAD(e, "logit_bias", "logit_bias: must be an object mapping token ids to numbers, "
                                    "got %s", type_name(lb));
    size_t n = json_object_size(lb);
    if (n == 0) return KILN_OK;
    if (n > 4096) return BAD(e, "logit_bias", "logit_bias: at most 4096 entries, got %zu", n);
    r->logit_bias = kiln_malloc(n * sizeof(*r->logit_bias));
    if (!r->logit_bias) return nomem(e);
    const char *key;
    json_t *val;
    int32_t i = 0;
    json_object_foreach(lb, key, val) {
        char *end = NULL;
        errno = 0;
        long long id = strtoll(key, &end, 10);
        if (!*key || *end || errno || id < 0 || id >= n_vocab)
            return BAD(e, "logit_bias", "logit_bias: key '%.40s' is not a token id in [0, %d)", key,
                       (int)n_vocab);
        float b;
        kiln_err err = as_float(val, "logit_bias", &b, e);
        if (err) return err;
        r->logit_bias[i].token = (int32_t)id;
        r->logit_bias[i].bias = b;
        i++;
    }
    r->sampling.logit_bias = r->logit_bias;
    r->sampling.n_logit_bias = i;
    return KILN_OK;
}

/* ---- the request ---- */

static kiln_err merge_extra_body(json_t *root, kiln_api_error *e) {
    json_t *extra = json_object_get(root, "extra_body");
    if (!extra) return KILN_OK;
    if (json_is_null(extra)) {
        json_object_del(root, "extra_body");
        return KILN_OK;
    }
    if (!json_is_object(extra))
        return BAD(e, "extra_body", "extra_body: must be an object, got %s", type_name(extra));
    json_incref(extra);
    json_object_del(root, "extra_body");
    if (json_object_get(extra, "extra_body")) {
        json_decref(extra);
        return BAD(e, "extra_body", "extra_body: must not contain extra_body");
    }
    int rc = json_object_update(root, extra);
    json_decref(extra);
    return rc ? nomem(e) : KILN_OK;
}

static kiln_err parse_fields(json_t *root, kiln_api_kind kind, const kiln_api_parse_opts *o,
                             kiln_api_request *r, kiln_api_error *e) {
    int mask = kind == KILN_API_CHAT ? CHAT : CMPL;
    kiln_err err;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (is_known(key, mask)) continue;
        if (is_later(key) || (kind == KILN_API_CHAT && !strcmp(key, "suffix"))) {
            if (json_is_null(val)) continue;
            /* {"type": "text"} asks for what kiln produces anyway: honoured, not ignored. */
            if (!strcmp(key, "response_format") && json_is_object(val) &&
                json_object_size(val) == 1 &&
                json_is_string(json_object_get(val, "type")) &&
                !strcmp(json_string_value(json_object_get(val, "type")), "text"))
                continue;
            kiln_api_error_set(e, 400, "invalid_request_error", "unsupported_field", key,
                               "%.60s: not supported yet by kiln", key);
            return KILN_ERR_UNSUPPORTED;
        }
        if (o->lenient) continue;
        return BAD(e, key, "Unrecognized request argument supplied: %.60s", key);
    }

    if ((err = get_str(root, "model", &r->model, e))) return err;
    if ((err = get_str(root, "user", &r->user, e))) return err;

    kiln_sampler_params *sp = &r->sampling;
    if ((err = get_float(root, "temperature", &sp->temperature, e))) return err;
    if ((err = get_float(root, "top_p", &sp->top_p, e))) return err;
    if ((err = get_float(root, "min_p", &sp->min_p, e))) return err;
    if ((err = get_float(root, "presence_penalty", &sp->presence_penalty, e))) return err;
    if ((err = get_float(root, "frequency_penalty", &sp->frequency_penalty, e))) return err;
    if ((err = get_float(root, "repetition_penalty", &sp->repetition_penalty, e))) return err;
    int64_t x;
    bool has;
    if ((err = get_int(root, "top_k", INT32_MIN, INT32_MAX, &x, &has, e))) return err;
    if (has) sp->top_k = (int32_t)x;
    if ((err = get_int(root, "seed", INT64_MIN, INT64_MAX, &x, &has, e))) return err;
    if (has) {
        sp->seed = (uint64_t)x;
        sp->has_seed = true;
    }
    if ((err = get_int(root, "n", 1, KILN_ENGINE_MAX_N, &x, &has, e))) return err;
    if (has) r->n = (int32_t)x;

    if ((err = get_int(root, "max_tokens", 1, INT32_MAX, &x, &has, e))) return err;
    if (has) r->max_tokens = (int32_t)x;
    if (kind == KILN_API_CHAT) {
        /* max_completion_tokens is OpenAI's newer name; it wins as in vLLM. */
        if ((err = get_int(root, "max_completion_tokens", 1, INT32_MAX, &x, &has, e))) return err;
        if (has) r->max_tokens = (int32_t)x;
    }
    if ((err = get_int(root, "min_tokens", 0, INT32_MAX, &x, &has, e))) return err;
    if (has) r->min_tokens = (int32_t)x;
    if (r->max_tokens > 0 && r->min_tokens > r->max_tokens)
        return BAD(e, "min_tokens", "min_tokens: must be <= max_tokens (%d), got %d",
                   (int)r->max_tokens, (int)r->min_tokens);

    if ((err = parse_stop(root, r, e))) return err;
    if ((err = parse_stop_ids(root, o->n_vocab, r, e))) return err;
    if ((err = parse_logit_bias(root, o->n_vocab, r, e))) return err;
    if ((err = get_bool(root, "include_stop_str_in_output", &r->include_stop_str_in_output, e)))
        return err;
    if ((err = get_bool(root, "ignore_eos", &r->ignore_eos, e))) return err;
    if ((err = get_bool(root, "skip_special_tokens", &r->skip_special_tokens, e))) return err;
    if ((err = get_bool(root, "add_special_tokens", &r->add_special_tokens, e))) return err;
    if ((err = get_bool(root, "stream", &r->stream, e))) return err;

    json_t *so = get(root, "stream_options");
    if (so) {
        if (!json_is_object(so))
            return BAD(e, "stream_options", "stream_options: must be an object, got %s",
                       type_name(so));
        if (!r->stream)
            return BAD(e, "stream_options", "stream_options: only allowed when stream is true");
        json_object_foreach(so, key, val) {
            if (!strcmp(key, "include_usage")) continue;
            if (!strcmp(key, "continuous_usage_stats") && (json_is_null(val) || json_is_false(val)))
                continue;
            char pp[96];
            snprintf(pp, sizeof(pp), "stream_options.%.60s", key);
            if (!strcmp(key, "continuous_usage_stats")) {
                kiln_api_error_set(e, 400, "invalid_request_error", "unsupported_field", pp,
                                   "%s: not supported yet by kiln", pp);
                return KILN_ERR_UNSUPPORTED;
            }
            if (o->lenient) continue;
            return BAD(e, pp, "Unrecognized request argument supplied: %s", pp);
        }
        if ((err = get_bool(so, "include_usage", &r->include_usage, e))) {
            snprintf(e->param, sizeof(e->param), "stream_options.include_usage");
            return err;
        }
    }

    json_t *lp = get(root, "logprobs");
    if (kind == KILN_API_CHAT) {
        bool want = false;
        if ((err = get_bool(root, "logprobs", &want, e))) return err;
        if ((err = get_int(root, "top_logprobs", 0, KILN_MAX_TOP_LOGPROBS, &x, &has, e)))
            return err;
        if (has && x > 0 && !want)
            return BAD(e, "top_logprobs", "top_logprobs: requires logprobs to be true");
        if (want) r->n_logprobs = has ? (int32_t)x : 0;
        bool echo = false;
        if ((err = get_bool(root, "echo", &echo, e))) return err;
        if (echo) {
            kiln_api_error_set(e, 400, "invalid_request_error", "unsupported_field", "echo",
                               "echo: not supported yet by kiln for chat completions");
            return KILN_ERR_UNSUPPORTED;
        }
        if ((err = get_bool(root, "add_generation_prompt", &r->add_generation_prompt, e)))
            return err;
        if ((err = get_bool(root, "continue_final_message", &r->continue_final_message, e)))
            return err;
        if (r->add_generation_prompt && r->continue_final_message)
            return BAD(e, "continue_final_message",
                       "continue_final_message: cannot be combined with add_generation_prompt");
        json_t *kw = get(root, "chat_template_kwargs");
        if (kw) {
            if (!json_is_object(kw))
                return BAD(e, "chat_template_kwargs", "chat_template_kwargs: must be an object, "
                           "got %s", type_name(kw));
            r->chat_template_kwargs = json_incref(kw);
        }
        if ((err = parse_messages(root, o->lenient, r, e))) return err;
        if (r->continue_final_message) {
            json_t *last = json_array_get(r->messages, json_array_size(r->messages) - 1);
            if (strcmp(json_string_value(json_object_get(last, "role")), "assistant") != 0)
                return BAD(e, "continue_final_message",
                           "continue_final_message: the last message must be from the assistant");
        }
    } else {
        if (lp) {
            if (json_is_boolean(lp))
                return BAD(e, "logprobs", "logprobs: must be an integer in [0, %d] for "
                           "completions, got a boolean", KILN_MAX_TOP_LOGPROBS);
            if ((err = as_int(lp, "logprobs", 0, KILN_MAX_TOP_LOGPROBS, &x, e))) return err;
            r->n_logprobs = (int32_t)x;
        }
        if ((err = get_bool(root, "echo", &r->echo, e))) return err;
        if ((err = parse_prompts(root, o->n_vocab, r, e))) return err;
        if (r->n_prompts * (size_t)r->n > 1024)
            return BAD(e, "n", "n: %zu prompts x n %d exceeds 1024 choices", r->n_prompts,
                       (int)r->n);
    }
    r->sampling.n_top_logprobs = r->n_logprobs;

    const char *f = NULL;
    if (kiln_sampler_params_check(&r->sampling, o->n_vocab, &f) != KILN_OK)
        return BAD(e, f ? f : "", "%s", kiln_errmsg());
    return KILN_OK;
}

kiln_err kiln_api_parse_request(kiln_api_kind kind, const char *body, size_t len,
                                const kiln_api_parse_opts *o, kiln_api_request *r,
                                kiln_api_error *e) {
    memset(r, 0, sizeof(*r));
    memset(e, 0, sizeof(*e));
    r->kind = kind;
    r->n = 1;
    r->max_tokens = kind == KILN_API_COMPLETION ? 16 : -1;
    r->n_logprobs = -1;
    r->skip_special_tokens = true;
    r->add_generation_prompt = true;
    r->add_special_tokens = kind == KILN_API_COMPLETION;
    kiln_sampler_params_default(&r->sampling);

    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root) {
        if (strstr(jerr.text, "out of memory")) return nomem(e);
        kiln_api_error_set(e, 400, "invalid_request_error", "invalid_json", NULL,
                           "invalid JSON body: %s (line %d, column %d)", jerr.text, jerr.line,
                           jerr.column);
        return KILN_ERR_FORMAT;
    }
    kiln_err err;
    if (!json_is_object(root)) {
        kiln_api_error_set(e, 400, "invalid_request_error", "invalid_json", NULL,
                           "the request body must be a JSON object, got %s", type_name(root));
        err = KILN_ERR_FORMAT;
        goto out;
    }
    if ((err = merge_extra_body(root, e))) goto out;
    err = parse_fields(root, kind, o, r, e);
out:
    json_decref(root);
    if (err) kiln_api_request_deinit(r);
    return err;
}

void kiln_api_request_deinit(kiln_api_request *r) {
    kiln_free(r->model);
    kiln_free(r->user);
    json_decref(r->messages);
    json_decref(r->chat_template_kwargs);
    for (size_t i = 0; r->prompts && i < r->n_prompts; i++) {
        kiln_free(r->prompts[i].text);
        kiln_free(r->prompts[i].ids);
    }
    kiln_free(r->prompts);
    kiln_free(r->logit_bias);
    for (int32_t i = 0; r->stop && i < r->n_stop; i++) kiln_free(r->stop[i]);
    kiln_free(r->stop);
    kiln_free(r->stop_token_ids);
    memset(r, 0, sizeof(*r));
}

kiln_err kiln_api_fallback_chat_prompt(const json_t *messages, bool add_generation_prompt,
                                       kiln_buf *out) {
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *c = json_object_get(m, "content");
        if (kiln_buf_puts(out, role ? role : "") || kiln_buf_puts(out, ": ")) return KILN_ERR_NOMEM;
        if (json_is_string(c) && kiln_buf_append(out, json_string_value(c), json_string_length(c)))
            return KILN_ERR_NOMEM;
        if (kiln_buf_putc(out, '\n')) return KILN_ERR_NOMEM;
    }
    if (add_generation_prompt && kiln_buf_puts(out, "assistant:")) return KILN_ERR_NOMEM;
    return KILN_OK;
}
