/* cmd_serve.c: `kiln serve -m MODEL [...]`: loads the model, its tokenizer and chat template,
 * starts the engine thread and serves the OpenAI-compatible API on host:port until SIGINT or
 * SIGTERM. Flags are named as vLLM names them where vLLM has one (see README.md "## Server").
 * Thread: main thread = the server (libevent) loop; the engine runs its own thread. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "api/server.h"
#include "cmd/cmd.h"
#include "model/model.h"
#include "template/template.h"
#include "tok/tok.h"

#define MAX_KEYS 16

static void serve_usage(FILE *f) {
    fprintf(f,
            "usage: kiln serve -m MODEL [options]\n"
            "  -m, --model PATH              GGUF model file (required)\n"
            "  --host ADDR                   bind address (default 127.0.0.1)\n"
            "  --port N                      TCP port (default 8000; 0 = any free port)\n"
            "  --api-key KEY                 require 'Authorization: Bearer KEY' (repeatable;\n"
            "                                also $KILN_API_KEY)\n"
            "  --served-model-name NAME      model id of the API (default: the -m argument)\n"
            "  --max-model-len N             prompt + completion tokens (default: the model's)\n"
            "  --max-num-seqs N              sequences decoded together (default 256)\n"
            "  --max-num-batched-tokens N    batch rows per forward pass (default 2048)\n"
            "  --kv-cache-memory BYTES       KV cache budget, suffix K/M/G allowed (default 1G)\n"
            "  --chat-template FILE          Jinja chat template overriding the model's\n"
            "  --threads N                   compute threads (default: physical cores)\n"
            "  --max-num-queued-reqs N       requests waiting for the engine before 503 with\n"
            "                                Retry-After; one client (X-Client-Name, else its\n"
            "                                address) may hold half (default 1024; alias\n"
            "                                --max-queued-requests)\n"
            "  --max-num-queued-tokens N     prompt tokens waiting before 503 (default: no limit)\n"
            "  --no-prefix-caching           do not reuse the KV blocks of earlier prompts\n"
            "                                (automatic prefix caching is on by default)\n"
            "  --max-request-body-bytes N    413 above this (default 8M)\n"
            "  --max-request-header-bytes N  request line + headers (default 16K)\n"
            "  --request-timeout S           total seconds per request, 0 = none (default 600)\n"
            "  --read-timeout S              idle seconds while reading a request (default 60)\n"
            "  --sse-keepalive S             ': keep-alive' comment interval (default 15)\n"
            "  --lenient                     ignore unknown request fields instead of 400\n"
            "  --log-level debug|info|warn|error\n");
}

static bool parse_size(const char *s, size_t lo, size_t hi, size_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || errno || *s == '-') return false;
    unsigned long long mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1ull << 10, end++;
    else if (*end == 'M' || *end == 'm') mul = 1ull << 20, end++;
    else if (*end == 'G' || *end == 'g') mul = 1ull << 30, end++;
    if (*end == 'i' || *end == 'B') end++;
    if (*end == 'B') end++;
    if (*end) return false;
    if (v > (unsigned long long)hi / mul) return false;
    v *= mul;
    if (v < lo || v > hi) return false;
    *out = (size_t)v;
    return true;
}

static bool parse_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

typedef struct serve_args {
    const char *model;
    const char *name;
    const char *chat_template;
    const char *keys[MAX_KEYS];
    int n_keys;
    int threads;
    bool lenient;
    kiln_http_opts http;
    kiln_engine_opts engine;
} serve_args;

/* 0 = parsed, 1 = error (reported), 2 = help printed. */
static int parse_args(int argc, char **argv, serve_args *a) {
    kiln_http_opts_default(&a->http);
    kiln_engine_opts_default(&a->engine);
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = v != NULL, takes = true;
        size_t sz;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            serve_usage(stdout);
            return 2;
        } else if (!strcmp(o, "-m") || !strcmp(o, "--model")) {
            a->model = v;
        } else if (!strcmp(o, "--host")) {
            a->http.host = v;
        } else if (!strcmp(o, "--port")) {
            ok = ok && parse_int(v, 0, 65535, &a->http.port);
        } else if (!strcmp(o, "--api-key")) {
            if (ok && a->n_keys >= MAX_KEYS) {
                fprintf(stderr, "kiln serve: at most %d --api-key\n", MAX_KEYS);
                return 1;
            }
            ok = ok && *v;
            if (ok) a->keys[a->n_keys++] = v;
        } else if (!strcmp(o, "--served-model-name")) {
            ok = ok && *v;
            a->name = v;
        } else if (!strcmp(o, "--max-model-len")) {
            ok = ok && parse_int(v, 1, INT32_MAX, &a->engine.max_model_len);
        } else if (!strcmp(o, "--max-num-seqs")) {
            ok = ok && parse_int(v, 1, 1 << 16, &a->engine.max_num_seqs);
        } else if (!strcmp(o, "--max-num-batched-tokens")) {
            ok = ok && parse_int(v, 1, 1 << 24, &a->engine.max_num_batched_tokens);
        } else if (!strcmp(o, "--max-num-queued-tokens")) {
            int t = 0;
            ok = ok && parse_int(v, 1, INT32_MAX, &t);
            a->engine.max_queued_tokens = t;
        } else if (!strcmp(o, "--no-prefix-caching") || !strcmp(o, "--enable-prefix-caching")) {
            a->engine.enable_prefix_caching = !strcmp(o, "--enable-prefix-caching");
            takes = false;
            ok = true;
        } else if (!strcmp(o, "--max-queued-requests") || !strcmp(o, "--max-num-queued-reqs")) {
            ok = ok && parse_int(v, 1, 1 << 24, &a->engine.max_queued_requests);
        } else if (!strcmp(o, "--kv-cache-memory")) {
            ok = ok && parse_size(v, 1, (size_t)1 << 44, &a->engine.kv_cache_bytes);
        } else if (!strcmp(o, "--chat-template")) {
            a->chat_template = v;
        } else if (!strcmp(o, "--threads") || !strcmp(o, "-t")) {
            ok = ok && parse_int(v, 0, 1024, &a->threads);
        } else if (!strcmp(o, "--max-request-body-bytes")) {
            ok = ok && parse_size(v, 1, (size_t)1 << 32, &sz);
            if (ok) a->http.max_body_bytes = sz;
        } else if (!strcmp(o, "--max-request-header-bytes")) {
            ok = ok && parse_size(v, 256, (size_t)1 << 24, &sz);
            if (ok) a->http.max_header_bytes = sz;
        } else if (!strcmp(o, "--request-timeout")) {
            ok = ok && parse_int(v, 0, 1 << 24, &a->http.request_timeout_s);
        } else if (!strcmp(o, "--read-timeout")) {
            ok = ok && parse_int(v, 1, 1 << 24, &a->http.read_timeout_s);
        } else if (!strcmp(o, "--sse-keepalive")) {
            ok = ok && parse_int(v, 0, 1 << 24, &a->http.sse_keepalive_s);
        } else if (!strcmp(o, "--lenient")) {
            a->lenient = true;
            takes = false;
            ok = true;
        } else if (!strcmp(o, "--log-level")) {
            ok = ok && (!strcmp(v, "debug") || !strcmp(v, "info") || !strcmp(v, "warn") ||
                        !strcmp(v, "error"));
            if (ok)
                kiln_log_set_level(!strcmp(v, "debug")  ? KILN_LOG_DEBUG
                                   : !strcmp(v, "info") ? KILN_LOG_INFO
                                   : !strcmp(v, "warn") ? KILN_LOG_WARN
                                                        : KILN_LOG_ERROR);
        } else {
            fprintf(stderr, "kiln serve: unknown option '%s' (see kiln serve --help)\n", o);
            return 1;
        }
        if (!ok) {
            fprintf(stderr, "kiln serve: %s needs a valid value%s%s\n", o, v ? ", got " : "",
                    v ? v : "");
            return 1;
        }
        if (takes) i++;
    }
    if (!a->model) {
        fprintf(stderr, "kiln serve: -m MODEL is required (see kiln serve --help)\n");
        return 1;
    }
    const char *env_key = getenv("KILN_API_KEY");
    if (env_key && *env_key && a->n_keys < MAX_KEYS) a->keys[a->n_keys++] = env_key;
    a->http.api_keys = a->keys;
    a->http.n_api_keys = a->n_keys;
    a->http.error_fn = kiln_api_error_body;
    return 0;
}

/* Loads the chat template: --chat-template FILE, else the GGUF's tokenizer.chat_template, else
 * none (the fallback format). 0 or 1 (reported). */
static int load_template(const serve_args *a, const kiln_model *m, kiln_template **out) {
    *out = NULL;
    char *src = NULL;
    size_t len = 0;
    const char *from;
    if (a->chat_template) {
        if (kiln_read_file(a->chat_template, &src, &len) != KILN_OK) {
            fprintf(stderr, "kiln serve: --chat-template %s: %s\n", a->chat_template,
                    kiln_errmsg());
            return 1;
        }
        from = a->chat_template;
    } else {
        const kiln_gguf_kv *kv = kiln_gguf_find(kiln_model_gguf(m), "tokenizer.chat_template");
        if (!kv || kv->type != KILN_GGUF_STRING) {
            KILN_INFO("serve: the model has no chat template; chat uses kiln's fallback format");
            return 0;
        }
        src = kiln_strndup(kv->v.str.p, (size_t)kv->v.str.len);
        if (!src) {
            fprintf(stderr, "kiln serve: out of memory\n");
            return 1;
        }
        len = (size_t)kv->v.str.len;
        from = "tokenizer.chat_template";
    }
    kiln_err err = kiln_template_parse(src, len, out);
    kiln_free(src);
    if (err) {
        fprintf(stderr, "kiln serve: chat template (%s): %s\n", from, kiln_errmsg());
        return 1;
    }
    return 0;
}

static char *token_text(const kiln_vocab *v, int32_t id) {
    size_t n;
    const char *t = id >= 0 ? kiln_vocab_token_text(v, id, &n) : NULL;
    return t ? kiln_strndup(t, n) : NULL;
}

int kiln_cmd_serve(int argc, char **argv) {
    serve_args a;
    memset(&a, 0, sizeof(a));
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc == 2 ? 0 : 1;
    rc = 1;

    kiln_model *model = NULL;
    kiln_vocab *vocab = NULL;
    kiln_template *tmpl = NULL;
    kiln_http *http = NULL;
    kiln_api_server *api = NULL;
    kiln_engine *engine = NULL;
    char *bos = NULL, *eos = NULL;
    kiln_model_opts mo = {.n_threads = a.threads};
    if (kiln_model_load(a.model, &mo, &model) != KILN_OK) {
        fprintf(stderr, "kiln serve: %s: %s\n", a.model, kiln_errmsg());
        goto out;
    }
    if (kiln_vocab_load(kiln_model_gguf(model), &vocab) != KILN_OK) {
        fprintf(stderr, "kiln serve: %s: tokenizer: %s\n", a.model, kiln_errmsg());
        goto out;
    }
    if (load_template(&a, model, &tmpl)) goto out;
    bos = token_text(vocab, kiln_vocab_bos(vocab));
    eos = token_text(vocab, kiln_vocab_eos(vocab));

    if (kiln_http_new(&a.http, &http) != KILN_OK) {
        fprintf(stderr, "kiln serve: %s (try another --port)\n", kiln_errmsg());
        goto out;
    }
    kiln_api_server_opts ao = {.model_name = a.name ? a.name : a.model, .lenient = a.lenient,
                               .chat_template = tmpl, .bos_token = bos, .eos_token = eos};
    if (kiln_api_server_new(http, vocab, &ao, &api) != KILN_OK) {
        fprintf(stderr, "kiln serve: %s\n", kiln_errmsg());
        goto out;
    }
    if (kiln_engine_new(model, vocab, &a.engine, kiln_api_server_notify, api, &engine) !=
        KILN_OK) {
        fprintf(stderr, "kiln serve: engine: %s\n", kiln_errmsg());
        goto out;
    }
    kiln_api_server_set_engine(api, engine);
    /* The port line is machine-read by tests (with --port 0). */
    fprintf(stderr, "kiln serve: model %s (max_model_len %d) on http://%s:%d\n",
            ao.model_name, (int)kiln_engine_max_model_len(engine), a.http.host,
            kiln_http_port(http));
    kiln_http_run(http);
    rc = 0;
out:
    kiln_engine_free(engine);
    kiln_api_server_free(api);
    kiln_http_free(http);
    kiln_template_free(tmpl);
    kiln_free(bos);
    kiln_free(eos);
    kiln_vocab_free(vocab);
    kiln_model_free(model);
    return rc;
}
