/* response.c: OpenAI response shapes: chat.completion, chat.completion.chunk, text_completion
 * (whole and streamed), usage, chat logprobs ({content: [{token, logprob, bytes, top_logprobs}]})
 * and legacy completions logprobs ({tokens, token_logprobs, top_logprobs, text_offset}), and the
 * error object. Token strings are the token's bytes made valid UTF-8; -inf logprobs become
 * -9999.0 as in vLLM. Pure; any thread. Spec: OpenAI API reference (chat, completions). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

#define FINGERPRINT "fp_kiln"

kiln_err kiln_api_utf8_lossy(const char *s, size_t len, kiln_buf *out) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        size_t n = 0;
        uint32_t cp = 0, min = 0;
        if (c < 0x80) n = 1, cp = c;
        else if ((c & 0xE0) == 0xC0) n = 2, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0) n = 3, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0) n = 4, cp = c & 0x07, min = 0x10000;
        bool ok = n > 0 && i + n <= len;
        for (size_t k = 1; ok && k < n; k++) {
            if ((p[i + k] & 0xC0) != 0x80) ok = false;
            else cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (ok && n > 1 && (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) ok = false;
        if (ok && n == 1 && c == 0) ok = false; /* jansson strings here are C strings */
        if (ok) {
            if (kiln_buf_append(out, p + i, n)) return KILN_ERR_NOMEM;
            i += n;
        } else {
            if (kiln_buf_append(out, "\xEF\xBF\xBD", 3)) return KILN_ERR_NOMEM;
            i += 1;
        }
    }
    if (!out->data && kiln_buf_reserve(out, 1)) return KILN_ERR_NOMEM;
    return KILN_OK;
}

static int append_cb(const char *p, size_t n, void *ctx) {
    return kiln_buf_append(ctx, p, n) == KILN_OK ? 0 : -1;
}

kiln_err kiln_api_json_append(const json_t *o, kiln_buf *out) {
    size_t len0 = out->len;
    if (json_dump_callback(o, append_cb, out, JSON_COMPACT | JSON_REAL_PRECISION(9)) != 0) {
        out->len = len0;
        if (out->data) out->data[len0] = 0;
        return KILN_ERR_NOMEM;
    }
    if (!out->data) return kiln_buf_reserve(out, 1);
    return KILN_OK;
}

void kiln_api_new_id(const char *prefix, char *buf, size_t size, kiln_rng *rng) {
    uint64_t a = kiln_rng_u64(rng), b = kiln_rng_u64(rng);
    snprintf(buf, size, "%s%016llx%016llx", prefix, (unsigned long long)a, (unsigned long long)b);
}

kiln_err kiln_api_error_body(int status, const char *message, const char *type, const char *param,
                             const char *code, kiln_buf *out) {
    (void)status;
    kiln_buf msg;
    kiln_buf_init(&msg);
    kiln_err err = kiln_api_utf8_lossy(message ? message : "", message ? strlen(message) : 0, &msg);
    json_t *o = NULL;
    if (!err) {
        o = json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", msg.data ? msg.data : "",
                      "type", type ? type : "invalid_request_error", "param",
                      param && *param ? json_string(param) : json_null(), "code",
                      code ? json_string(code) : json_null());
    }
    kiln_buf_deinit(&msg);
    if (!o) return KILN_ERR_NOMEM;
    err = kiln_api_json_append(o, out);
    json_decref(o);
    return err;
}

/* ---- building blocks ---- */

static json_t *lp_real(float x) {
    return json_real(isfinite(x) ? (double)x : -9999.0);
}

static json_t *str_lossy(const char *s, size_t len) {
    kiln_buf b;
    kiln_buf_init(&b);
    json_t *j = NULL;
    if (kiln_api_utf8_lossy(s, len, &b) == KILN_OK) j = json_stringn(b.data, b.len);
    kiln_buf_deinit(&b);
    return j;
}

/* The text of a token: its bytes (special tokens as their text). */
static kiln_err token_bytes(const kiln_vocab *v, int32_t id, kiln_buf *out) {
    kiln_buf_reset(out);
    kiln_err err = kiln_tok_piece(v, id, true, out);
    if (err == KILN_ERR_INVALID) return KILN_OK; /* unknown id: empty text */
    if (!out->data) return kiln_buf_reserve(out, 1);
    return err;
}

static json_t *token_str(const kiln_vocab *v, int32_t id, kiln_buf *tmp) {
    if (token_bytes(v, id, tmp)) return NULL;
    return str_lossy(tmp->data, tmp->len);
}

static json_t *bytes_array(const kiln_buf *b) {
    json_t *a = json_array();
    for (size_t i = 0; a && i < b->len; i++)
        if (json_array_append_new(a, json_integer((unsigned char)b->data[i]))) {
            json_decref(a);
            return NULL;
        }
    return a;
}

/* Chat layout: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]} */
static json_t *chat_logprobs(const kiln_api_choice *c, const kiln_vocab *v) {
    if (!c->has_logprobs) return json_null();
    json_t *content = json_array();
    kiln_buf tmp;
    kiln_buf_init(&tmp);
    for (size_t i = 0; content && i < c->n_lps; i++) {
        const kiln_api_lp *lp = &c->lps[i];
        json_t *tops = json_array();
        for (int32_t k = 0; tops && k < lp->n_top; k++) {
            if (token_bytes(v, lp->top[k].token, &tmp)) goto fail_tops;
            json_t *t = json_pack("{s:o, s:o, s:o}", "token", str_lossy(tmp.data, tmp.len),
                                  "logprob", lp_real(lp->top[k].logprob), "bytes",
                                  bytes_array(&tmp));
            if (!t || json_array_append_new(tops, t)) goto fail_tops;
        }
        if (!tops || token_bytes(v, lp->token, &tmp)) goto fail_tops;
        json_t *ent = json_pack("{s:o, s:o, s:o, s:o}", "token", str_lossy(tmp.data, tmp.len),
                                "logprob", lp_real(lp->logprob), "bytes", bytes_array(&tmp),
                                "top_logprobs", tops);
        if (!ent || json_array_append_new(content, ent)) goto fail;
        continue;
    fail_tops:
        json_decref(tops);
    fail:
        json_decref(content);
        content = NULL;
    }
    kiln_buf_deinit(&tmp);
    if (!content) return NULL;
    return json_pack("{s:o}", "content", content);
}

static size_t utf8_chars(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* Legacy layout: {tokens, token_logprobs, top_logprobs, text_offset}; offsets count characters
 * of the token strings from c->text_offset on. */
static json_t *legacy_logprobs(const kiln_api_choice *c, const kiln_vocab *v) {
    if (!c->has_logprobs) return json_null();
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(),
           *offs = json_array();
    json_t *out = NULL;
    kiln_buf tmp;
    kiln_buf_init(&tmp);
    if (!tokens || !lps || !tops || !offs) goto done;
    size_t off = c->text_offset;
    for (size_t i = 0; i < c->n_lps; i++) {
        const kiln_api_lp *lp = &c->lps[i];
        json_t *t = token_str(v, lp->token, &tmp);
        if (!t) goto done;
        size_t n_chars = utf8_chars(json_string_value(t), json_string_length(t));
        if (json_array_append_new(tokens, t)) goto done;
        if (json_array_append_new(lps, lp->has_logprob ? lp_real(lp->logprob) : json_null()))
            goto done;
        json_t *top;
        if (!lp->has_logprob) {
            top = json_null();
        } else {
            top = json_object();
            for (int32_t k = 0; top && k < lp->n_top; k++) {
                kiln_buf key;
                kiln_buf_init(&key);
                bool ok = token_bytes(v, lp->top[k].token, &tmp) == KILN_OK &&
                          kiln_api_utf8_lossy(tmp.data, tmp.len, &key) == KILN_OK;
                /* Two tokens can render the same string; the first (higher logprob) wins. */
                if (ok && !json_object_get(top, key.data))
                    ok = json_object_set_new(top, key.data, lp_real(lp->top[k].logprob)) == 0;
                kiln_buf_deinit(&key);
                if (!ok) {
                    json_decref(top);
                    top = NULL;
                }
            }
        }
        if (!top || json_array_append_new(tops, top)) goto done;
        if (json_array_append_new(offs, json_integer((json_int_t)off))) goto done;
        off += n_chars;
    }
    out = json_pack("{s:O, s:O, s:O, s:O}", "tokens", tokens, "token_logprobs", lps,
                    "top_logprobs", tops, "text_offset", offs);
done:
    kiln_buf_deinit(&tmp);
    json_decref(tokens);
    json_decref(lps);
    json_decref(tops);
    json_decref(offs);
    return out;
}

static json_t *finish_json(kiln_finish_reason f) {
    /* OpenAI's names (the engine's kiln_finish_reason_name gives the same words). */
    switch (f) {
    case KILN_FINISH_STOP: return json_string("stop");
    case KILN_FINISH_LENGTH: return json_string("length");
    case KILN_FINISH_TOOL_CALLS: return json_string("tool_calls");
    default: return json_null();
    }
}

static json_t *usage_json(const kiln_api_usage *u) {
    return json_pack("{s:I, s:I, s:I, s:{s:I}}", "prompt_tokens", (json_int_t)u->prompt_tokens,
                     "completion_tokens", (json_int_t)u->completion_tokens, "total_tokens",
                     (json_int_t)(u->prompt_tokens + u->completion_tokens),
                     "prompt_tokens_details", "cached_tokens", (json_int_t)u->cached_tokens);
}

static json_t *envelope(const kiln_api_meta *m, const char *object) {
    return json_pack("{s:s, s:s, s:I, s:s, s:s}", "id", m->id, "object", object, "created",
                     (json_int_t)m->created, "model", m->model, "system_fingerprint",
                     FINGERPRINT);
}

static kiln_err dump(json_t *o, kiln_buf *out) {
    if (!o) return KILN_ERR_NOMEM;
    kiln_err err = kiln_api_json_append(o, out);
    json_decref(o);
    return err;
}

/* Sets choices (and usage) on the envelope and dumps it; takes ownership of choices. */
static kiln_err finish_obj(json_t *o, json_t *choices, const kiln_api_usage *usage,
                           bool usage_null, kiln_buf *out) {
    if (!o || !choices || json_object_set_new(o, "choices", choices)) {
        if (!o) json_decref(choices);
        json_decref(o);
        return KILN_ERR_NOMEM;
    }
    if (usage) {
        json_t *u = usage_json(usage);
        if (!u || json_object_set_new(o, "usage", u)) {
            json_decref(o);
            return KILN_ERR_NOMEM;
        }
    } else if (usage_null && json_object_set_new(o, "usage", json_null())) {
        json_decref(o);
        return KILN_ERR_NOMEM;
    }
    return dump(o, out);
}

kiln_err kiln_api_format_chat(const kiln_api_meta *m, const kiln_api_choice *choices,
                              size_t n_choices, const kiln_api_usage *usage,
                              const kiln_vocab *vocab, kiln_buf *out) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n_choices; i++) {
        const kiln_api_choice *c = &choices[i];
        json_t *msg = json_pack("{s:s, s:o, s:n}", "role", "assistant", "content",
                                str_lossy(c->text ? c->text : "", c->n_text), "refusal");
        json_t *ch = json_pack("{s:i, s:o, s:o, s:o}", "index", (int)c->index, "message", msg,
                               "logprobs", chat_logprobs(c, vocab), "finish_reason",
                               finish_json(c->finish));
        if (!ch || json_array_append_new(arr, ch)) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return finish_obj(envelope(m, "chat.completion"), arr, usage, false, out);
}

kiln_err kiln_api_format_completion(const kiln_api_meta *m, const kiln_api_choice *choices,
                                    size_t n_choices, const kiln_api_usage *usage,
                                    const kiln_vocab *vocab, kiln_buf *out) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n_choices; i++) {
        const kiln_api_choice *c = &choices[i];
        json_t *ch = json_pack("{s:i, s:o, s:o, s:o}", "index", (int)c->index, "text",
                               str_lossy(c->text ? c->text : "", c->n_text), "logprobs",
                               legacy_logprobs(c, vocab), "finish_reason",
                               finish_json(c->finish));
        if (!ch || json_array_append_new(arr, ch)) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return finish_obj(envelope(m, "text_completion"), arr, usage, false, out);
}

kiln_err kiln_api_format_chat_chunk(const kiln_api_meta *m, const kiln_api_choice *c,
                                    bool with_role, bool usage_null, const kiln_vocab *vocab,
                                    kiln_buf *out) {
    json_t *delta = json_object();
    if (delta && with_role) json_object_set_new(delta, "role", json_string("assistant"));
    if (delta && (c->n_text > 0 || with_role))
        json_object_set_new(delta, "content", str_lossy(c->text ? c->text : "", c->n_text));
    json_t *ch = json_pack("{s:i, s:o, s:o, s:o}", "index", (int)c->index, "delta", delta,
                           "logprobs", chat_logprobs(c, vocab), "finish_reason",
                           finish_json(c->finish));
    json_t *arr = ch ? json_array() : NULL;
    if (arr && json_array_append_new(arr, ch)) {
        json_decref(arr);
        arr = NULL;
    } else if (!arr) {
        json_decref(ch);
    }
    return finish_obj(envelope(m, "chat.completion.chunk"), arr, NULL, usage_null, out);
}

kiln_err kiln_api_format_completion_chunk(const kiln_api_meta *m, const kiln_api_choice *c,
                                          bool usage_null, const kiln_vocab *vocab,
                                          kiln_buf *out) {
    json_t *ch = json_pack("{s:i, s:o, s:o, s:o}", "index", (int)c->index, "text",
                           str_lossy(c->text ? c->text : "", c->n_text), "logprobs",
                           legacy_logprobs(c, vocab), "finish_reason", finish_json(c->finish));
    json_t *arr = ch ? json_array() : NULL;
    if (arr && json_array_append_new(arr, ch)) {
        json_decref(arr);
        arr = NULL;
    } else if (!arr) {
        json_decref(ch);
    }
    return finish_obj(envelope(m, "text_completion"), arr, NULL, usage_null, out);
}

kiln_err kiln_api_format_usage_chunk(kiln_api_kind kind, const kiln_api_meta *m,
                                     const kiln_api_usage *usage, kiln_buf *out) {
    const char *obj = kind == KILN_API_CHAT ? "chat.completion.chunk" : "text_completion";
    return finish_obj(envelope(m, obj), json_array(), usage, false, out);
}
