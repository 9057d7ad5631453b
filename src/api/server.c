/* server.c: the OpenAI endpoints (see server.h). One `call` per generation request: parsed
 * request, one engine request per prompt, per-choice accumulators; it lives until every engine
 * request of it has its terminal event, even when the HTTP request ended earlier (client gone,
 * error). Streams: role chunk(s), content deltas, the finish chunk, the usage chunk when asked,
 * [DONE]; an error after the stream started is `data: {"error":...}` then [DONE].
 * Thread: the server (libevent) thread; only kiln_api_server_notify runs on the engine thread. */
#include "api/server.h"

#include "api/metrics.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KILN_VERSION "0.1.0"

typedef struct choice {
    kiln_buf text;                  /* accumulated (non-streaming) */
    kiln_api_lp *lps;               /* (n_lps,) accumulated logprobs */
    size_t n_lps, cap_lps;
    kiln_finish_reason finish;
    bool started;                   /* streaming: first chunk (role / echo) sent */
    size_t n_chars;                 /* streaming legacy logprobs: text_offset so far */
    uint64_t t_last_token_ns;       /* metrics: arrival of its last token */
} choice;

typedef struct sub {
    uint64_t id;                    /* engine request id; 0 = not submitted */
    bool ended;                     /* terminal event seen (or never submitted) */
    int32_t n_prompt;
    int32_t *prompt_ids;            /* (n_prompt,) owned, for echo */
    char *prompt_text;              /* owned, for echo */
    size_t n_prompt_text;
    kiln_api_lp *prompt_lps;        /* (n_prompt,) when echo with logprobs */
} sub;

typedef struct call {
    kiln_api_server *s;
    kiln_http_req *r;               /* NULL once the HTTP request ended */
    kiln_api_request q;
    char id[64];
    int64_t created;
    sub *subs;                      /* (n_subs,) one per prompt */
    int n_subs;
    int n_subs_open;                /* submitted, no terminal event yet */
    choice *choices;                /* (n_subs * q.n,) */
    int n_choices;
    kiln_api_usage usage;
    bool streaming;                 /* SSE started */
    bool failed;
    int fail_status;
    char fail_msg[512];
    bool timed_out;
    uint64_t t_start_ns;            /* for the request log line */
    uint64_t t_first_token_ns;      /* metrics: 0 until the first token */
    struct call *prev, *next;
} call;

struct kiln_api_server {
    kiln_http *h;
    const kiln_vocab *vocab;
    kiln_engine *engine;
    kiln_api_server_opts opts;
    char *model_name;
    char *bos_token, *eos_token;
    struct event *ev_wake;
    kiln_rng rng;                   /* response ids */
    int64_t started;                /* unix seconds */
    call *calls;                    /* in flight */
    uint64_t n_http_errors;         /* error responses sent */
    kiln_api_metrics metrics;       /* /metrics histograms and counters */
};

/* ---- helpers ---- */

static void reply_json(kiln_http_req *r, int status, json_t *o) {
    kiln_buf b;
    kiln_buf_init(&b);
    kiln_err err = o ? kiln_api_json_append(o, &b) : KILN_ERR_NOMEM;
    json_decref(o);
    if (err) kiln_http_reply_error(r, 503, "out of memory", "server_error", NULL, NULL);
    else kiln_http_reply(r, status, "application/json", b.data, b.len);
    kiln_buf_deinit(&b);
}

static void reply_api_error(kiln_api_server *s, kiln_http_req *r, const kiln_api_error *e) {
    s->n_http_errors++;
    if (e->status == 503) kiln_http_add_header(r, "Retry-After", "1");
    kiln_http_reply_error(r, e->status, e->message, e->type, e->param[0] ? e->param : NULL,
                          e->code);
}

static bool content_type_ok(kiln_http_req *r) {
    const char *ct = kiln_http_req_header(r, "Content-Type");
    if (!ct) return true;
    while (*ct == ' ') ct++;
    size_t n = strcspn(ct, "; ");
    return n == 16 && strncasecmp(ct, "application/json", 16) == 0;
}

/* Reads a JSON object body for the small endpoints; replies and returns NULL on error. */
static json_t *read_json_body(kiln_api_server *s, kiln_http_req *r) {
    kiln_api_error e;
    if (!content_type_ok(r)) {
        kiln_api_error_set(&e, 415, "invalid_request_error", "unsupported_media_type", NULL,
                           "Content-Type must be application/json");
        reply_api_error(s, r, &e);
        return NULL;
    }
    size_t len;
    const char *body = kiln_http_req_body(r, &len);
    json_error_t jerr;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o || !json_is_object(o)) {
        if (o) kiln_api_error_set(&e, 400, "invalid_request_error", "invalid_json", NULL,
                                  "the request body must be a JSON object");
        else kiln_api_error_set(&e, 400, "invalid_request_error", "invalid_json", NULL,
                                "invalid JSON body: %s (line %d, column %d)", jerr.text,
                                jerr.line, jerr.column);
        json_decref(o);
        reply_api_error(s, r, &e);
        return NULL;
    }
    return o;
}

static bool model_ok(kiln_api_server *s, const char *model, kiln_api_error *e) {
    if (!model || !strcmp(model, s->model_name)) return true;
    kiln_api_error_set(e, 404, "invalid_request_error", "model_not_found", "model",
                       "The model `%.200s` does not exist.", model);
    return false;
}

/* Renders the chat prompt (model template or the fallback) and encodes it. */
static kiln_err chat_prompt_ids(kiln_api_server *s, const kiln_api_request *q, int32_t **ids,
                                size_t *n_ids, char **text, size_t *n_text, kiln_api_error *e) {
    kiln_buf b;
    kiln_buf_init(&b);
    kiln_err err;
    bool add_bos, parse_special;
    if (s->opts.chat_template) {
        err = kiln_template_render_chat(s->opts.chat_template, q->messages, NULL,
                                        q->add_generation_prompt, s->bos_token, s->eos_token,
                                        q->chat_template_kwargs, &b);
        if (err == KILN_ERR_NOMEM) goto out_nomem;
        if (err) {
            kiln_api_error_set(e, 400, "invalid_request_error", NULL, "messages",
                               "chat template: %s", kiln_errmsg());
            kiln_buf_deinit(&b);
            return err;
        }
        /* The template writes BOS itself when the model wants one (vLLM's default). */
        add_bos = q->add_special_tokens;
        parse_special = true;
    } else {
        if (kiln_api_fallback_chat_prompt(q->messages, q->add_generation_prompt, &b))
            goto out_nomem;
        add_bos = true;
        parse_special = false;
    }
    if (q->continue_final_message && b.len > 0) {
        /* Continue the last assistant message: cut what the template put after its content. */
        json_t *last = json_array_get(q->messages, json_array_size(q->messages) - 1);
        json_t *c = json_object_get(last, "content");
        if (json_is_string(c) && json_string_length(c) > 0) {
            const char *cs = json_string_value(c);
            size_t cl = json_string_length(c);
            for (size_t i = b.len >= cl ? b.len - cl + 1 : 0; i-- > 0;) {
                if (!memcmp(b.data + i, cs, cl)) {
                    b.len = i + cl;
                    b.data[b.len] = 0;
                    break;
                }
            }
        }
    }
    err = kiln_tok_encode(s->vocab, b.data ? b.data : "", b.len, add_bos, parse_special, ids,
                          n_ids);
    if (err) goto out_nomem;
    *n_text = b.len;
    *text = kiln_buf_take(&b, NULL);
    if (!*text) {
        *text = kiln_strndup("", 0);
        if (!*text) goto out_nomem;
    }
    return KILN_OK;
out_nomem:
    kiln_buf_deinit(&b);
    kiln_api_error_set(e, 503, "server_error", NULL, NULL, "out of memory");
    return KILN_ERR_NOMEM;
}

/* ---- calls ---- */

static void call_free(call *c) {
    kiln_api_server *s = c->s;
    if (c->prev) c->prev->next = c->next;
    else if (s->calls == c) s->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    for (int i = 0; c->subs && i < c->n_subs; i++) {
        kiln_free(c->subs[i].prompt_ids);
        kiln_free(c->subs[i].prompt_text);
        kiln_free(c->subs[i].prompt_lps);
    }
    kiln_free(c->subs);
    for (int i = 0; c->choices && i < c->n_choices; i++) {
        kiln_buf_deinit(&c->choices[i].text);
        kiln_free(c->choices[i].lps);
    }
    kiln_free(c->choices);
    kiln_api_request_deinit(&c->q);
    kiln_free(c);
}

static void call_cancel_all(call *c) {
    for (int i = 0; i < c->n_subs; i++)
        if (c->subs[i].id && !c->subs[i].ended) kiln_engine_cancel(c->s->engine, c->subs[i].id);
}

static void on_close(kiln_http_req *r, kiln_http_close_reason why, void *ctx) {
    call *c = ctx;
    (void)r;
    if (why == KILN_HTTP_CLOSE_TIMEOUT) {
        c->timed_out = true;
    } else {
        /* The HTTP layer has the request; we end it now (the reply goes nowhere). */
        if (c->streaming) kiln_http_sse_end(c->r);
        else kiln_http_reply(c->r, 499, NULL, NULL, 0);
        c->r = NULL;
    }
    call_cancel_all(c);
    if (c->n_subs_open == 0) call_free(c);
}

static kiln_api_meta call_meta(const call *c) {
    return (kiln_api_meta){.id = c->id, .created = c->created, .model = c->s->model_name};
}

static void sse_send_buf(call *c, kiln_buf *b) {
    if (c->r && b->len) kiln_http_sse_send(c->r, b->data, b->len);
    kiln_buf_reset(b);
}

static kiln_err push_lp(choice *ch, const kiln_event_token *t) {
    if (ch->n_lps == ch->cap_lps) {
        size_t cap = ch->cap_lps ? ch->cap_lps * 2 : 16, bytes;
        if (!kiln_mul_size(cap, sizeof(kiln_api_lp), &bytes)) return KILN_ERR_NOMEM;
        kiln_api_lp *p = kiln_realloc(ch->lps, bytes);
        if (!p) return KILN_ERR_NOMEM;
        ch->lps = p;
        ch->cap_lps = cap;
    }
    kiln_api_lp *lp = &ch->lps[ch->n_lps++];
    lp->token = t->token;
    lp->logprob = t->logprob;
    lp->has_logprob = true;
    lp->n_top = KILN_MIN(t->n_top, KILN_MAX_TOP_LOGPROBS);
    for (int32_t k = 0; k < lp->n_top; k++) lp->top[k] = t->top[k];
    return KILN_OK;
}

static void fail(call *c, int status, const char *msg) {
    if (c->failed) return;
    c->failed = true;
    c->fail_status = status;
    snprintf(c->fail_msg, sizeof(c->fail_msg), "%s", msg);
    call_cancel_all(c);
}

/* Sends the chunk of one delta event (streaming). */
static void stream_delta(call *c, int i_sub, const kiln_event *ev) {
    kiln_api_server *s = c->s;
    int idx = i_sub * c->q.n + ev->index;
    choice *ch = &c->choices[idx];
    sub *sb = &c->subs[i_sub];
    kiln_api_meta m = call_meta(c);
    bool want_lp = c->q.n_logprobs >= 0;
    kiln_buf text, out;
    kiln_buf_init(&text);
    kiln_buf_init(&out);
    size_t lp0 = ch->n_lps;
    kiln_err err = KILN_OK;
    bool first = !ch->started;
    ch->started = true;
    if (first && c->q.kind == KILN_API_COMPLETION && c->q.echo) {
        err = kiln_buf_append(&text, sb->prompt_text ? sb->prompt_text : "", sb->n_prompt_text);
        if (!err && want_lp && sb->prompt_lps)
            for (int32_t k = 0; !err && k < sb->n_prompt; k++) {
                kiln_event_token t = {.token = sb->prompt_lps[k].token,
                                      .logprob = sb->prompt_lps[k].logprob,
                                      .n_top = sb->prompt_lps[k].n_top,
                                      .top = sb->prompt_lps[k].top};
                err = push_lp(ch, &t);
                if (!err && k == 0) ch->lps[ch->n_lps - 1].has_logprob = false;
            }
    }
    if (!err) err = kiln_buf_append(&text, ev->text, ev->n_text);
    for (int32_t k = 0; !err && want_lp && k < ev->n_tokens; k++) err = push_lp(ch, &ev->tokens[k]);
    if (err) {
        fail(c, 503, "out of memory");
        goto out;
    }
    bool has_lps = want_lp && ch->n_lps > lp0;
    /* As OpenAI does, the finish_reason comes in a chunk of its own after the last content. */
    kiln_api_choice cc = {.index = idx, .text = text.data, .n_text = text.len,
                          .finish = KILN_FINISH_NONE, .has_logprobs = want_lp,
                          .lps = ch->lps + lp0, .n_lps = ch->n_lps - lp0,
                          .text_offset = ch->n_chars};
    kiln_api_choice fin = {.index = idx, .text = "", .n_text = 0, .finish = ev->finish};
    for (int k = 0; k < 2; k++) {
        const kiln_api_choice *one = k == 0 ? &cc : &fin;
        if (k == 0 && text.len == 0 && !has_lps) continue;
        if (k == 1 && ev->finish == KILN_FINISH_NONE) continue;
        if (c->q.kind == KILN_API_CHAT)
            err = kiln_api_format_chat_chunk(&m, one, false, c->q.include_usage, s->vocab, &out);
        else
            err = kiln_api_format_completion_chunk(&m, one, c->q.include_usage, s->vocab, &out);
        if (err) {
            fail(c, 503, "out of memory");
            goto out;
        }
        sse_send_buf(c, &out);
    }
    /* Streaming keeps only the offsets, not the logprobs themselves. */
    if (want_lp) {
        kiln_buf tmp;
        kiln_buf_init(&tmp);
        for (size_t k = lp0; k < ch->n_lps; k++) {
            kiln_buf_reset(&tmp);
            kiln_buf piece;
            kiln_buf_init(&piece);
            if (kiln_tok_piece(s->vocab, ch->lps[k].token, true, &piece) == KILN_OK &&
                kiln_api_utf8_lossy(piece.data ? piece.data : "", piece.len, &tmp) == KILN_OK)
                for (size_t j = 0; j < tmp.len; j++)
                    ch->n_chars += ((unsigned char)tmp.data[j] & 0xC0) != 0x80;
            kiln_buf_deinit(&piece);
        }
        kiln_buf_deinit(&tmp);
        ch->n_lps = 0;
    }
out:
    kiln_buf_deinit(&text);
    kiln_buf_deinit(&out);
}

static void accumulate_delta(call *c, int i_sub, const kiln_event *ev) {
    choice *ch = &c->choices[i_sub * c->q.n + ev->index];
    kiln_err err = kiln_buf_append(&ch->text, ev->text, ev->n_text);
    for (int32_t k = 0; !err && c->q.n_logprobs >= 0 && k < ev->n_tokens; k++)
        err = push_lp(ch, &ev->tokens[k]);
    if (err) fail(c, 503, "out of memory");
}

/* All engine requests ended: send what remains and end the HTTP request. */
static void call_finish(call *c) {
    kiln_api_server *s = c->s;
    kiln_http_req *r = c->r;
    if (r) kiln_http_req_on_close(r, NULL, NULL);
    kiln_api_meta m = call_meta(c);
    kiln_buf out;
    kiln_buf_init(&out);
    KILN_INFO("%s %s: %d choice%s, %lld prompt + %lld completion tokens, %.1f ms%s%s", c->id,
              c->q.kind == KILN_API_CHAT ? "chat" : "completions", c->n_choices,
              c->n_choices == 1 ? "" : "s", (long long)c->usage.prompt_tokens,
              (long long)c->usage.completion_tokens, (double)(kiln_now_ns() - c->t_start_ns) / 1e6,
              !r ? ", client gone" : c->timed_out ? ", timed out" : "",
              c->failed && !c->timed_out && r ? ", failed" : "");
    if (r && !c->failed && !c->timed_out) {
        kiln_api_hist_observe(&s->metrics.e2e, (double)(kiln_now_ns() - c->t_start_ns) / 1e9);
        for (int i = 0; i < c->n_choices; i++)
            if (c->choices[i].finish > KILN_FINISH_NONE && c->choices[i].finish < KILN_FINISH_COUNT)
                s->metrics.n_success[c->choices[i].finish]++;
    }
    if (!r) goto done;
    if (c->timed_out && !c->failed) {
        c->failed = true;
        c->fail_status = 504;
        snprintf(c->fail_msg, sizeof(c->fail_msg), "request timed out");
    }
    if (c->streaming) {
        if (c->failed) {
            kiln_api_error_body(c->fail_status, c->fail_msg,
                                c->fail_status >= 500 ? "server_error" : "invalid_request_error",
                                NULL, NULL, &out);
        } else if (c->q.include_usage) {
            kiln_api_format_usage_chunk(c->q.kind, &m, &c->usage, &out);
        }
        sse_send_buf(c, &out);
        kiln_http_sse_send(r, "[DONE]", 6);
        kiln_http_sse_end(r);
    } else if (c->failed) {
        s->n_http_errors++;
        if (c->fail_status == 503) kiln_http_add_header(r, "Retry-After", "1");
        kiln_http_reply_error(r, c->fail_status, c->fail_msg,
                              c->fail_status >= 500 ? "server_error" : "invalid_request_error",
                              NULL, NULL);
    } else {
        kiln_api_choice *cc = kiln_calloc((size_t)c->n_choices, sizeof(*cc));
        kiln_buf *texts = kiln_calloc((size_t)c->n_choices, sizeof(*texts));
        kiln_api_lp **lps = kiln_calloc((size_t)c->n_choices, sizeof(*lps));
        kiln_err err = cc && texts && lps ? KILN_OK : KILN_ERR_NOMEM;
        for (int i = 0; !err && i < c->n_choices; i++) {
            choice *ch = &c->choices[i];
            sub *sb = &c->subs[i / c->q.n];
            kiln_buf_init(&texts[i]);
            cc[i] = (kiln_api_choice){.index = i, .text = ch->text.data, .n_text = ch->text.len,
                                      .finish = ch->finish,
                                      .has_logprobs = c->q.n_logprobs >= 0, .lps = ch->lps,
                                      .n_lps = ch->n_lps};
            if (c->q.kind == KILN_API_COMPLETION && c->q.echo) {
                err = kiln_buf_append(&texts[i], sb->prompt_text ? sb->prompt_text : "",
                                      sb->n_prompt_text);
                if (!err) err = kiln_buf_append(&texts[i], ch->text.data, ch->text.len);
                cc[i].text = texts[i].data;
                cc[i].n_text = texts[i].len;
                if (!err && c->q.n_logprobs >= 0 && sb->prompt_lps) {
                    size_t n = (size_t)sb->n_prompt + ch->n_lps;
                    lps[i] = kiln_malloc(n * sizeof(kiln_api_lp) + 1);
                    if (!lps[i]) err = KILN_ERR_NOMEM;
                    else {
                        memcpy(lps[i], sb->prompt_lps, (size_t)sb->n_prompt * sizeof(kiln_api_lp));
                        if (ch->n_lps)
                            memcpy(lps[i] + sb->n_prompt, ch->lps, ch->n_lps * sizeof(kiln_api_lp));
                        cc[i].lps = lps[i];
                        cc[i].n_lps = n;
                    }
                }
            }
        }
        if (!err) {
            err = c->q.kind == KILN_API_CHAT
                      ? kiln_api_format_chat(&m, cc, (size_t)c->n_choices, &c->usage, s->vocab, &out)
                      : kiln_api_format_completion(&m, cc, (size_t)c->n_choices, &c->usage,
                                                   s->vocab, &out);
        }
        for (int i = 0; texts && i < c->n_choices; i++) kiln_buf_deinit(&texts[i]);
        for (int i = 0; lps && i < c->n_choices; i++) kiln_free(lps[i]);
        kiln_free(texts);
        kiln_free(lps);
        kiln_free(cc);
        if (err) kiln_http_reply_error(r, 503, "out of memory", "server_error", NULL, NULL);
        else kiln_http_reply(r, 200, "application/json", out.data, out.len);
    }
    c->r = NULL;
done:
    kiln_buf_deinit(&out);
    call_free(c);
}

static void on_event(kiln_api_server *s, kiln_event *ev) {
    call *c = ev->user;
    int i_sub = -1;
    for (int i = 0; i < c->n_subs; i++)
        if (c->subs[i].id == ev->request_id) i_sub = i;
    KILN_ASSERT(i_sub >= 0);
    sub *sb = &c->subs[i_sub];
    switch (ev->type) {
    case KILN_EVENT_PROMPT_LOGPROBS:
        if (c->failed || sb->prompt_lps) break;
        sb->prompt_lps = kiln_calloc((size_t)KILN_MAX(ev->n_tokens, 1), sizeof(kiln_api_lp));
        if (!sb->prompt_lps) {
            fail(c, 503, "out of memory");
            break;
        }
        for (int32_t k = 0; k < ev->n_tokens && k < sb->n_prompt; k++) {
            kiln_api_lp *lp = &sb->prompt_lps[k];
            lp->token = ev->tokens[k].token;
            lp->logprob = ev->tokens[k].logprob;
            lp->has_logprob = k > 0;
            lp->n_top = k > 0 ? KILN_MIN(ev->tokens[k].n_top, KILN_MAX_TOP_LOGPROBS) : 0;
            for (int32_t j = 0; j < lp->n_top; j++) lp->top[j] = ev->tokens[k].top[j];
        }
        break;
    case KILN_EVENT_DELTA:
        if (c->failed || ev->index < 0 || ev->index >= c->q.n) break;
        if (ev->n_tokens > 0) {
            uint64_t now = kiln_now_ns();
            choice *tc = &c->choices[i_sub * c->q.n + ev->index];
            if (!c->t_first_token_ns) {
                c->t_first_token_ns = now;
                kiln_api_hist_observe(&s->metrics.ttft, (double)(now - c->t_start_ns) / 1e9);
            } else if (tc->t_last_token_ns) {
                double gap = (double)(now - tc->t_last_token_ns) / 1e9 / ev->n_tokens;
                for (int32_t k = 0; k < ev->n_tokens; k++)
                    kiln_api_hist_observe(&s->metrics.itl, gap);
            }
            tc->t_last_token_ns = now;
        }
        if (ev->finish != KILN_FINISH_NONE)
            c->choices[i_sub * c->q.n + ev->index].finish = ev->finish;
        if (c->streaming) stream_delta(c, i_sub, ev);
        else accumulate_delta(c, i_sub, ev);
        break;
    case KILN_EVENT_DONE:
        c->usage.prompt_tokens += ev->n_prompt_tokens;
        c->usage.completion_tokens += ev->n_completion_tokens;
        c->usage.cached_tokens += ev->n_cached_tokens;
        s->metrics.n_prompt_tokens += (uint64_t)ev->n_prompt_tokens;
        s->metrics.n_generation_tokens += (uint64_t)ev->n_completion_tokens;
        kiln_api_hist_observe(&s->metrics.queue, (double)ev->queue_ns / 1e9);
        sb->ended = true;
        c->n_subs_open--;
        break;
    case KILN_EVENT_ERROR:
        fail(c, ev->err == KILN_ERR_NOMEM || ev->err == KILN_ERR_FULL ? 503 : 500,
             ev->message && *ev->message ? ev->message : kiln_err_name(ev->err));
        sb->ended = true;
        c->n_subs_open--;
        break;
    case KILN_EVENT_CANCELLED:
        if (c->r && !c->timed_out) fail(c, 503, "request cancelled");
        sb->ended = true;
        c->n_subs_open--;
        break;
    default:
        break;
    }
    if (c->n_subs_open == 0) call_finish(c);
}

static void on_wake(evutil_socket_t fd, short what, void *arg) {
    kiln_api_server *s = arg;
    (void)fd;
    (void)what;
    if (!s->engine) return;
    kiln_event *ev;
    while ((ev = kiln_engine_poll(s->engine)) != NULL) {
        on_event(s, ev);
        kiln_engine_event_free(ev);
    }
}

void kiln_api_server_notify(void *server) {
    kiln_api_server *s = server;
    event_active(s->ev_wake, 0, 0);
}

/* ---- generation endpoints ---- */

static void handle_generate(kiln_http_req *r, kiln_api_server *s, kiln_api_kind kind) {
    kiln_api_error e;
    if (!content_type_ok(r)) {
        kiln_api_error_set(&e, 415, "invalid_request_error", "unsupported_media_type", NULL,
                           "Content-Type must be application/json");
        reply_api_error(s, r, &e);
        return;
    }
    call *c = kiln_calloc(1, sizeof(*c));
    if (!c) {
        kiln_api_error_set(&e, 503, "server_error", NULL, NULL, "out of memory");
        reply_api_error(s, r, &e);
        return;
    }
    c->s = s;
    c->t_start_ns = kiln_now_ns();
    size_t len;
    const char *body = kiln_http_req_body(r, &len);
    kiln_api_parse_opts po = {.lenient = s->opts.lenient,
                              .n_vocab = kiln_vocab_n_tokens(s->vocab)};
    if (kiln_api_parse_request(kind, body, len, &po, &c->q, &e) != KILN_OK) goto out_error;
    if (!model_ok(s, c->q.model, &e)) goto out_error;
    if (!s->engine) {
        kiln_api_error_set(&e, 503, "server_error", "engine_not_ready", NULL,
                           "the engine is not ready");
        goto out_error;
    }
    c->n_subs = kind == KILN_API_CHAT ? 1 : (int)c->q.n_prompts;
    c->n_choices = c->n_subs * c->q.n;
    c->subs = kiln_calloc((size_t)c->n_subs, sizeof(*c->subs));
    c->choices = kiln_calloc((size_t)c->n_choices, sizeof(*c->choices));
    if (!c->subs || !c->choices) goto out_nomem;
    for (int i = 0; i < c->n_choices; i++) kiln_buf_init(&c->choices[i].text);

    /* Prompts -> ids (before anything is queued, so errors need no cancellation). */
    for (int i = 0; i < c->n_subs; i++) {
        sub *sb = &c->subs[i];
        int32_t *ids = NULL;
        size_t n_ids = 0;
        if (kind == KILN_API_CHAT) {
            if (chat_prompt_ids(s, &c->q, &ids, &n_ids, &sb->prompt_text, &sb->n_prompt_text,
                                &e))
                goto out_error;
        } else {
            kiln_api_prompt *p = &c->q.prompts[i];
            if (p->text) {
                bool bos = c->q.add_special_tokens && kiln_vocab_add_bos(s->vocab);
                if (kiln_tok_encode(s->vocab, p->text, p->n_text, bos, true, &ids, &n_ids))
                    goto out_nomem;
                sb->prompt_text = kiln_strndup(p->text, p->n_text);
                sb->n_prompt_text = p->n_text;
                if (!sb->prompt_text) {
                    kiln_free(ids);
                    goto out_nomem;
                }
            } else {
                ids = kiln_malloc(p->n_ids * sizeof(int32_t) + 1);
                if (!ids) goto out_nomem;
                memcpy(ids, p->ids, p->n_ids * sizeof(int32_t));
                n_ids = p->n_ids;
                if (c->q.echo) {
                    kiln_buf t;
                    kiln_buf_init(&t);
                    if (kiln_tok_decode(s->vocab, ids, n_ids, c->q.skip_special_tokens, &t) ||
                        (!t.data && kiln_buf_reserve(&t, 1))) {
                        kiln_buf_deinit(&t);
                        kiln_free(ids);
                        goto out_nomem;
                    }
                    sb->n_prompt_text = t.len;
                    sb->prompt_text = kiln_buf_take(&t, NULL);
                }
            }
        }
        if (n_ids > (size_t)INT32_MAX) {
            kiln_free(ids);
            kiln_api_error_set(&e, 400, "invalid_request_error", "context_length_exceeded",
                               kind == KILN_API_CHAT ? "messages" : "prompt",
                               "the prompt is too long");
            goto out_error;
        }
        sb->prompt_ids = ids;
        sb->n_prompt = (int32_t)n_ids;
    }

    /* Submit: one engine request per prompt. */
    for (int i = 0; i < c->n_subs; i++) {
        sub *sb = &c->subs[i];
        kiln_request rq;
        kiln_request_init(&rq);
        rq.prompt = sb->prompt_ids;
        rq.n_prompt = sb->n_prompt;
        rq.sampling = c->q.sampling;
        rq.n = c->q.n;
        rq.max_tokens = c->q.max_tokens;
        rq.min_tokens = c->q.min_tokens;
        rq.ignore_eos = c->q.ignore_eos;
        rq.stop = (const char *const *)c->q.stop;
        rq.n_stop = c->q.n_stop;
        rq.include_stop_str_in_output = c->q.include_stop_str_in_output;
        rq.stop_token_ids = c->q.stop_token_ids;
        rq.n_stop_token_ids = c->q.n_stop_token_ids;
        rq.skip_special_tokens = c->q.skip_special_tokens;
        rq.n_prompt_logprobs = kind == KILN_API_COMPLETION && c->q.echo && c->q.n_logprobs >= 0
                                   ? c->q.n_logprobs
                                   : -1;
        rq.user = c;
        /* Fair share between clients: X-Client-Name, else the peer address. */
        const char *client = kiln_http_req_header(r, "X-Client-Name");
        rq.client = client && *client ? client : kiln_http_req_peer(r);
        const char *field = NULL;
        kiln_err err = kiln_engine_submit(s->engine, &rq, &sb->id, &field);
        if (err) {
            sb->id = 0;
            if (err == KILN_ERR_LIMIT)
                kiln_api_error_set(&e, 400, "invalid_request_error", "context_length_exceeded",
                                   field, "%s", kiln_errmsg());
            else if (err == KILN_ERR_FULL) {
                s->metrics.n_rejected++;
                kiln_api_error_set(&e, 503, "server_error", "queue_full", NULL,
                                   "the server is busy (request queue full), retry later");
            }
            else if (err == KILN_ERR_NOMEM)
                kiln_api_error_set(&e, 503, "server_error", NULL, NULL, "out of memory");
            else
                kiln_api_error_set(&e, 400, "invalid_request_error", NULL, field, "%s",
                                   kiln_errmsg());
            if (c->n_subs_open > 0) {
                /* Earlier prompts are queued: answer now, free the call at their ends. */
                reply_api_error(s, r, &e);
                c->failed = true;
                call_cancel_all(c);
                c->prev = NULL;
                c->next = s->calls;
                if (s->calls) s->calls->prev = c;
                s->calls = c;
                return;
            }
            goto out_error;
        }
        c->n_subs_open++;
    }

    kiln_api_new_id(kind == KILN_API_CHAT ? "chatcmpl-" : "cmpl-", c->id, sizeof(c->id), &s->rng);
    c->created = (int64_t)time(NULL);
    c->r = r;
    c->next = s->calls;
    if (s->calls) s->calls->prev = c;
    s->calls = c;
    kiln_http_req_on_close(r, on_close, c);
    if (c->q.stream) {
        kiln_http_sse_start(r);
        c->streaming = true;
        if (kind == KILN_API_CHAT) {
            /* The first chunk of every choice carries the role. */
            kiln_api_meta m = call_meta(c);
            kiln_buf out;
            kiln_buf_init(&out);
            for (int i = 0; i < c->n_choices; i++) {
                kiln_api_choice cc = {.index = i, .text = "", .n_text = 0,
                                      .finish = KILN_FINISH_NONE, .has_logprobs = false};
                if (kiln_api_format_chat_chunk(&m, &cc, true, c->q.include_usage, s->vocab,
                                               &out) == KILN_OK)
                    sse_send_buf(c, &out);
                c->choices[i].started = true;
            }
            kiln_buf_deinit(&out);
        }
    }
    return;
out_nomem:
    kiln_api_error_set(&e, 503, "server_error", NULL, NULL, "out of memory");
out_error:
    reply_api_error(s, r, &e);
    call_free(c);
}

static void h_chat(kiln_http_req *r, void *ctx) { handle_generate(r, ctx, KILN_API_CHAT); }
static void h_completions(kiln_http_req *r, void *ctx) {
    handle_generate(r, ctx, KILN_API_COMPLETION);
}

/* ---- small endpoints ---- */

static json_t *model_card(kiln_api_server *s) {
    int32_t max_len = s->engine ? kiln_engine_max_model_len(s->engine) : 0;
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:n, s:i, s:[]}", "id", s->model_name, "object",
                     "model", "created", (json_int_t)s->started, "owned_by", "kiln", "root", s->model_name,
                     "parent", "max_model_len", (int)max_len, "permission");
}

static void h_models(kiln_http_req *r, void *ctx) {
    kiln_api_server *s = ctx;
    reply_json(r, 200, json_pack("{s:s, s:[o]}", "object", "list", "data", model_card(s)));
}

static void h_model(kiln_http_req *r, void *ctx) {
    kiln_api_server *s = ctx;
    const char *id = kiln_http_req_path(r) + strlen("/v1/models/");
    if (strcmp(id, s->model_name) != 0) {
        kiln_api_error e;
        kiln_api_error_set(&e, 404, "invalid_request_error", "model_not_found", "model",
                           "The model `%.200s` does not exist.", id);
        reply_api_error(s, r, &e);
        return;
    }
    reply_json(r, 200, model_card(s));
}

static void h_health(kiln_http_req *r, void *ctx) {
    kiln_api_server *s = ctx;
    if (!s->engine) {
        kiln_http_reply_error(r, 503, "the engine is not ready", "server_error", NULL,
                              "engine_not_ready");
        return;
    }
    kiln_http_reply(r, 200, NULL, NULL, 0);
}

static void h_version(kiln_http_req *r, void *ctx) {
    (void)ctx;
    reply_json(r, 200, json_pack("{s:s}", "version", KILN_VERSION));
}

static void h_tokenize(kiln_http_req *r, void *ctx) {
    kiln_api_server *s = ctx;
    json_t *o = read_json_body(s, r);
    if (!o) return;
    kiln_api_error e;
    memset(&e, 0, sizeof(e));
    int32_t *ids = NULL;
    size_t n_ids = 0;
    json_t *model = json_object_get(o, "model");
    if (model && !json_is_null(model) &&
        (!json_is_string(model) || !model_ok(s, json_string_value(model), &e))) {
        if (!e.status)
            kiln_api_error_set(&e, 400, "invalid_request_error", NULL, "model",
                               "model: must be a string");
        goto out_error;
    }
    json_t *add = json_object_get(o, "add_special_tokens");
    if (add && !json_is_boolean(add) && !json_is_null(add)) {
        kiln_api_error_set(&e, 400, "invalid_request_error", NULL, "add_special_tokens",
                           "add_special_tokens: must be a boolean");
        goto out_error;
    }
    json_t *prompt = json_object_get(o, "prompt");
    json_t *messages = json_object_get(o, "messages");
    if (json_is_string(prompt) && !messages) {
        bool bos = !add || json_is_null(add) || json_is_true(add);
        bos = bos && kiln_vocab_add_bos(s->vocab);
        if (kiln_tok_encode(s->vocab, json_string_value(prompt), json_string_length(prompt), bos,
                            true, &ids, &n_ids)) {
            kiln_api_error_set(&e, 503, "server_error", NULL, NULL, "out of memory");
            goto out_error;
        }
    } else if (messages && !prompt) {
        /* Same rules as chat: reuse the chat parser on {messages, add_generation_prompt...}. */
        json_t *q = json_deep_copy(o);
        json_object_del(q, "add_special_tokens");
        kiln_buf body;
        kiln_buf_init(&body);
        kiln_err jerr = q ? kiln_api_json_append(q, &body) : KILN_ERR_NOMEM;
        json_decref(q);
        kiln_api_request rq;
        kiln_api_parse_opts po = {.lenient = true, .n_vocab = kiln_vocab_n_tokens(s->vocab)};
        if (jerr || kiln_api_parse_request(KILN_API_CHAT, body.data, body.len, &po, &rq, &e)) {
            kiln_buf_deinit(&body);
            if (!e.status) kiln_api_error_set(&e, 503, "server_error", NULL, NULL, "out of memory");
            goto out_error;
        }
        kiln_buf_deinit(&body);
        if (add && json_is_true(add)) rq.add_special_tokens = true;
        char *text = NULL;
        size_t n_text;
        kiln_err err = chat_prompt_ids(s, &rq, &ids, &n_ids, &text, &n_text, &e);
        kiln_free(text);
        kiln_api_request_deinit(&rq);
        if (err) goto out_error;
    } else {
        kiln_api_error_set(&e, 400, "invalid_request_error", NULL, "prompt",
                           "prompt: a string (or messages: an array) is required, not both");
        goto out_error;
    }
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n_ids; i++)
        if (json_array_append_new(arr, json_integer(ids[i]))) {
            json_decref(arr);
            arr = NULL;
        }
    kiln_free(ids);
    json_decref(o);
    int32_t max_len = s->engine ? kiln_engine_max_model_len(s->engine) : 0;
    reply_json(r, 200, arr ? json_pack("{s:I, s:i, s:o}", "count", (json_int_t)n_ids,
                                       "max_model_len", (int)max_len, "tokens", arr)
                           : NULL);
    return;
out_error:
    kiln_free(ids);
    json_decref(o);
    reply_api_error(s, r, &e);
}

static void h_detokenize(kiln_http_req *r, void *ctx) {
    kiln_api_server *s = ctx;
    json_t *o = read_json_body(s, r);
    if (!o) return;
    kiln_api_error e;
    json_t *toks = json_object_get(o, "tokens");
    int32_t n_vocab = kiln_vocab_n_tokens(s->vocab);
    if (!json_is_array(toks)) {
        kiln_api_error_set(&e, 400, "invalid_request_error", NULL, "tokens",
                           "tokens: an array of token ids is required");
        goto out_error;
    }
    size_t n = json_array_size(toks);
    int32_t *ids = kiln_malloc(n * sizeof(int32_t) + 1);
    if (!ids) {
        kiln_api_error_set(&e, 503, "server_error", NULL, NULL, "out of memory");
        goto out_error;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(toks, i);
        if (!json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) >= n_vocab) {
            kiln_free(ids);
            char p[48];
            snprintf(p, sizeof(p), "tokens[%zu]", i);
            kiln_api_error_set(&e, 400, "invalid_request_error", NULL, p,
                               "%s: must be a token id in [0, %d)", p, (int)n_vocab);
            goto out_error;
        }
        ids[i] = (int32_t)json_integer_value(t);
    }
    kiln_buf b;
    kiln_buf_init(&b);
    kiln_err err = kiln_tok_decode(s->vocab, ids, n, true, &b);
    kiln_free(ids);
    json_decref(o);
    if (err) {
        kiln_buf_deinit(&b);
        kiln_http_reply_error(r, 503, "out of memory", "server_error", NULL, NULL);
        return;
    }
    reply_json(r, 200, json_pack("{s:s%}", "prompt", b.data ? b.data : "", b.len));
    kiln_buf_deinit(&b);
    return;
out_error:
    json_decref(o);
    reply_api_error(s, r, &e);
}

static void h_metrics(kiln_http_req *r, void *ctx) {
    kiln_api_server *s = ctx;
    kiln_engine_stats st;
    memset(&st, 0, sizeof(st));
    if (s->engine) kiln_engine_stats_get(s->engine, &st);
    kiln_buf b;
    kiln_buf_init(&b);
    int n_calls = 0;
    for (call *c = s->calls; c; c = c->next) n_calls++;
    kiln_buf_printf(&b,
                    "# kiln counters (Prometheus text format)\n"
                    "kiln_num_requests_running %d\n"
                    "kiln_num_requests_waiting %d\n"
                    "kiln_num_requests_active %d\n"
                    "kiln_kv_blocks_total %d\n"
                    "kiln_kv_blocks_free %d\n"
                    "kiln_max_seqs_in_step %d\n"
                    "kiln_steps_total %llu\n"
                    "kiln_rows_forwarded_total %llu\n"
                    "kiln_prompt_tokens_total %llu\n"
                    "kiln_generation_tokens_total %llu\n"
                    "kiln_preemptions_total %llu\n"
                    "kiln_requests_submitted_total %llu\n"
                    "kiln_requests_finished_total %llu\n"
                    "kiln_requests_cancelled_total %llu\n"
                    "kiln_requests_failed_total %llu\n"
                    "kiln_http_requests_in_flight %d\n"
                    "kiln_http_calls_in_flight %d\n"
                    "kiln_http_errors_total %llu\n",
                    st.n_running, st.n_waiting, st.n_requests_active, st.n_kv_blocks_total,
                    st.n_kv_blocks_free, st.max_seqs_in_step, (unsigned long long)st.n_steps,
                    (unsigned long long)st.n_rows_forwarded,
                    (unsigned long long)st.n_prompt_tokens,
                    (unsigned long long)st.n_generated_tokens,
                    (unsigned long long)st.n_preemptions,
                    (unsigned long long)st.n_requests_submitted,
                    (unsigned long long)st.n_requests_finished,
                    (unsigned long long)st.n_requests_cancelled,
                    (unsigned long long)st.n_requests_failed,
                    kiln_http_n_active(s->h) - 1, n_calls,
                    (unsigned long long)s->n_http_errors);
    if (b.data && kiln_api_metrics_format(&s->metrics, &st, s->model_name, &b) != KILN_OK)
        kiln_buf_deinit(&b);
    if (!b.data) kiln_http_reply_error(r, 503, "out of memory", "server_error", NULL, NULL);
    else kiln_http_reply(r, 200, "text/plain; version=0.0.4", b.data, b.len);
    kiln_buf_deinit(&b);
}

/* ---- lifetime ---- */

kiln_err kiln_api_server_new(kiln_http *h, const kiln_vocab *vocab,
                             const kiln_api_server_opts *opts, kiln_api_server **out) {
    *out = NULL;
    kiln_api_server *s = kiln_calloc(1, sizeof(*s));
    if (!s) return KILN_ERR_NOMEM;
    s->h = h;
    s->vocab = vocab;
    s->opts = *opts;
    const char *name = opts->model_name ? opts->model_name : "kiln";
    s->model_name = kiln_strndup(name, strlen(name));
    if (opts->bos_token) s->bos_token = kiln_strndup(opts->bos_token, strlen(opts->bos_token));
    if (opts->eos_token) s->eos_token = kiln_strndup(opts->eos_token, strlen(opts->eos_token));
    s->ev_wake = event_new(kiln_http_base(h), -1, 0, on_wake, s);
    s->started = (int64_t)time(NULL);
    kiln_api_metrics_init(&s->metrics);
    kiln_rng_seed(&s->rng, kiln_now_ns() ^ (uint64_t)(uintptr_t)s);
    if (!s->model_name || !s->ev_wake || (opts->bos_token && !s->bos_token) ||
        (opts->eos_token && !s->eos_token))
        goto out_nomem;
    struct {
        const char *path;
        unsigned methods;
        bool auth;
        kiln_http_handler fn;
    } routes[] = {
        {"/v1/chat/completions", KILN_HTTP_POST, true, h_chat},
        {"/v1/completions", KILN_HTTP_POST, true, h_completions},
        {"/v1/models", KILN_HTTP_GET, false, h_models},
        {"/v1/models/*", KILN_HTTP_GET, false, h_model},
        {"/health", KILN_HTTP_GET, false, h_health},
        {"/version", KILN_HTTP_GET, false, h_version},
        {"/tokenize", KILN_HTTP_POST, true, h_tokenize},
        {"/detokenize", KILN_HTTP_POST, true, h_detokenize},
        {"/metrics", KILN_HTTP_GET, false, h_metrics},
    };
    for (size_t i = 0; i < KILN_ARRAY_LEN(routes); i++)
        if (kiln_http_route(h, routes[i].path, routes[i].methods, routes[i].auth, routes[i].fn,
                            s))
            goto out_nomem;
    *out = s;
    return KILN_OK;
out_nomem:
    kiln_api_server_free(s);
    return kiln_errf(KILN_ERR_NOMEM, "api: out of memory");
}

void kiln_api_server_set_engine(kiln_api_server *s, kiln_engine *e) { s->engine = e; }

void kiln_api_server_free(kiln_api_server *s) {
    if (!s) return;
    while (s->calls) call_free(s->calls);
    if (s->ev_wake) event_free(s->ev_wake);
    kiln_free(s->model_name);
    kiln_free(s->bos_token);
    kiln_free(s->eos_token);
    kiln_free(s);
}
