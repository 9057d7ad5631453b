/* cmd_bench_serve.c: `kiln bench serve --url URL --model NAME ...`: a load generator for any
 * OpenAI-compatible server (kiln, vLLM, llama.cpp), like `vllm bench serve`. N requests of
 * exactly I prompt tokens (token-id prompts; the first P shared by every request, the rest random
 * per request) ask for exactly O tokens (greedy, ignore_eos, streamed with include_usage). At most
 * C are in flight; with --request-rate R their start times follow a Poisson process of rate R.
 * Reports request throughput, output tokens/s, and TTFT / inter-token latency (gaps between
 * streamed chunks) / end-to-end latency: mean, p50, p90, p99, max; --json for machine-readable output.
 * Threads: C worker threads, each with its own blocking HTTP/1.1 connection per request (plain
 * sockets, chunked transfer decoding); results go to per-request slots, summarized after join. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "base/base.h"
#include "cmd/cmd.h"

#define MAX_CONCURRENCY 1024
#define MAX_LEN (1 << 20)

typedef struct bargs {
    char host[256];
    char port[16];
    const char *model;
    const char *api_key;
    int concurrency, n_prompts, input_len, output_len, prefix_len;
    double rate;        /* requests/s; 0 = all at once */
    int tok_lo, tok_hi; /* random prompt ids in [lo, hi) */
    uint64_t seed;
    bool json;
    bool logprobs;      /* ask for logprobs 0: every token its own counted chunk */
    int timeout_s;
} bargs;

typedef struct rresult {
    bool ok;
    char err[320];
    double t_start, ttft, e2e;  /* seconds */
    double tpot;                /* (e2e - ttft) / (n_out - 1), 0 when n_out < 2 */
    int n_out;                  /* completion tokens (usage, else chunks) */
    double *itl;                /* (n_itl,) gaps between content chunks */
    int n_itl, cap_itl;
} rresult;

typedef struct bench {
    bargs a;
    char **bodies;      /* (n_prompts,) request bodies */
    double *t_sched;    /* (n_prompts,) start offsets (seconds) */
    rresult *res;       /* (n_prompts,) */
    atomic_int next;
    double t0;
} bench;

static double now_s(void) { return (double)kiln_now_ns() / 1e9; }

static void sleep_s(double s) {
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- one streamed request ---- */

static int connect_to(const bargs *a) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(a->host, a->port, &hints, &ai) != 0) return -1;
    int fd = -1;
    for (struct addrinfo *p = ai; p; p = p->ai_next) {
        fd = socket(p->ai_family, p->ai_socktype, p->ai_protocol);
        if (fd < 0) continue;
        struct timeval tv = {.tv_sec = a->timeout_s};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (connect(fd, p->ai_addr, p->ai_addrlen) == 0) break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

static bool send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}

static void push_itl(rresult *r, double gap) {
    if (r->n_itl == r->cap_itl) {
        int cap = r->cap_itl ? 2 * r->cap_itl : 64;
        double *p = realloc(r->itl, (size_t)cap * sizeof(double));
        if (!p) return;
        r->itl = p;
        r->cap_itl = cap;
    }
    r->itl[r->n_itl++] = gap;
}

typedef struct stream {
    rresult *r;
    double t_start, t_last;
    int n_chunks;
    bool done;
} stream;

/* One SSE event's data (NUL-terminated) arrived at time t. */
static void on_data(stream *st, char *data, double t) {
    if (!strcmp(data, "[DONE]")) {
        st->done = true;
        return;
    }
    json_error_t je;
    json_t *o = json_loads(data, 0, &je);
    if (!o) return;
    json_t *err = json_object_get(o, "error");
    if (err) {
        json_t *m = json_object_get(err, "message");
        snprintf(st->r->err, sizeof(st->r->err), "stream error: %s",
                 json_is_string(m) ? json_string_value(m) : "?");
    }
    json_t *ch = json_array_get(json_object_get(o, "choices"), 0);
    json_t *text = json_object_get(ch, "text");
    if (!text) text = json_object_get(json_object_get(ch, "delta"), "content");
    /* With logprobs, a chunk counts its tokens (its text may be empty: held-back UTF-8). */
    json_t *lpt = json_object_get(json_object_get(ch, "logprobs"), "tokens");
    int k = json_is_array(lpt) ? (int)json_array_size(lpt) : 0;
    if (k > 0 || (json_is_string(text) && json_string_length(text) > 0)) {
        if (st->n_chunks == 0) st->r->ttft = t - st->t_start;
        else
            for (int j = 0; j < KILN_MAX(k, 1); j++) push_itl(st->r, (t - st->t_last) / KILN_MAX(k, 1));
        st->t_last = t;
        st->n_chunks++;
    }
    json_t *u = json_object_get(json_object_get(o, "usage"), "completion_tokens");
    if (json_is_integer(u)) st->r->n_out = (int)json_integer_value(u);
    json_decref(o);
}

/* Consumes complete SSE events ("\n\n"-terminated) from body; returns bytes consumed. */
static size_t parse_events(stream *st, char *body, size_t n, double t) {
    size_t used = 0;
    for (;;) {
        char *end = NULL;
        for (size_t i = used; i + 1 < n; i++)
            if (body[i] == '\n' && body[i + 1] == '\n') {
                end = body + i;
                break;
            }
        if (!end) break;
        *end = 0;
        for (char *line = body + used; line && *line;) {
            char *nl = strchr(line, '\n');
            if (nl) *nl = 0;
            if (line[strlen(line) - 1] == '\r') line[strlen(line) - 1] = 0;
            if (!strncmp(line, "data:", 5)) on_data(st, line + 5 + (line[5] == ' '), t);
            line = nl ? nl + 1 : NULL;
        }
        used = (size_t)(end - body) + 2;
    }
    return used;
}

/* Grows *p to hold at least `need` bytes. */
static bool reserve(char **p, size_t *cap, size_t need) {
    if (need <= *cap) return true;
    size_t c = need * 2;
    char *q = realloc(*p, c);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

static void run_one(bench *b, int i) {
    const bargs *a = &b->a;
    rresult *r = &b->res[i];
    const char *body = b->bodies[i];
    size_t n_body = strlen(body);
    char head[1024];
    int nh = snprintf(head, sizeof(head),
                      "POST /v1/completions HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: "
                      "application/json\r\nAccept: text/event-stream\r\nContent-Length: %zu\r\n"
                      "%s%s%sConnection: close\r\n\r\n",
                      a->host, a->port, n_body, a->api_key ? "Authorization: Bearer " : "",
                      a->api_key ? a->api_key : "", a->api_key ? "\r\n" : "");
    stream st = {.r = r};
    r->t_start = now_s() - b->t0;
    st.t_start = now_s();
    int fd = connect_to(a);
    if (fd < 0) {
        snprintf(r->err, sizeof(r->err), "cannot connect to %s:%s", a->host, a->port);
        return;
    }
    char *raw = NULL, *bodybuf = NULL;
    size_t n_raw = 0, cap_raw = 0, n_bb = 0, cap_bb = 0, pos = 0;
    bool headers_done = false, chunked = false, eof = false;
    int status = 0;
    size_t chunk_left = 0; /* chunked: body bytes left in the current chunk */
    int chunk_state = 0;   /* 0 = size line, 1 = data, 2 = CRLF after data, 3 = end */
    if (!send_all(fd, head, (size_t)nh) || !send_all(fd, body, n_body)) {
        snprintf(r->err, sizeof(r->err), "send failed");
        goto out;
    }
    while (!st.done && !eof) {
        if (cap_raw - n_raw < 65536) {
            if (!reserve(&raw, &cap_raw, KILN_MAX(cap_raw, (size_t)65536) + n_raw)) break;
        }
        ssize_t k = recv(fd, raw + n_raw, cap_raw - n_raw - 1, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            snprintf(r->err, sizeof(r->err), "recv: %s", strerror(errno));
            break;
        }
        double t = now_s();
        if (k == 0) eof = true;
        n_raw += (size_t)k;
        raw[n_raw] = 0;
        if (!headers_done) {
            char *e = strstr(raw, "\r\n\r\n");
            if (!e) continue;
            headers_done = true;
            sscanf(raw, "HTTP/1.%*d %d", &status);
            for (char *p = raw; p < e; p++)
                if (!strncasecmp(p, "\r\nTransfer-Encoding: chunked", 28)) chunked = true;
            pos = (size_t)(e - raw) + 4;
        }
        /* Move decoded body bytes from raw[pos..] into bodybuf. */
        for (;;) {
            size_t avail = n_raw - pos;
            if (!chunked) {
                if (!avail) break;
                if (!reserve(&bodybuf, &cap_bb, n_bb + avail + 1)) goto out;
                memcpy(bodybuf + n_bb, raw + pos, avail);
                n_bb += avail;
                pos += avail;
                break;
            }
            if (chunk_state == 0) {
                char *crlf = memchr(raw + pos, '\n', avail);
                if (!crlf) break;
                chunk_left = strtoul(raw + pos, NULL, 16);
                pos = (size_t)(crlf - raw) + 1;
                chunk_state = chunk_left ? 1 : 3;
                if (chunk_state == 3) st.done = true;
            } else if (chunk_state == 1) {
                if (!avail) break;
                size_t take = KILN_MIN(avail, chunk_left);
                if (!reserve(&bodybuf, &cap_bb, n_bb + take + 1)) goto out;
                memcpy(bodybuf + n_bb, raw + pos, take);
                n_bb += take;
                pos += take;
                chunk_left -= take;
                if (!chunk_left) chunk_state = 2;
            } else if (chunk_state == 2) {
                char *crlf = memchr(raw + pos, '\n', avail);
                if (!crlf) break;
                pos = (size_t)(crlf - raw) + 1;
                chunk_state = 0;
            } else {
                break;
            }
        }
        /* Keep raw small: drop what was decoded. */
        if (pos > 0 && headers_done) {
            memmove(raw, raw + pos, n_raw - pos);
            n_raw -= pos;
            pos = 0;
        }
        if (status != 200 || !bodybuf) continue;
        bodybuf[n_bb] = 0;
        size_t used = parse_events(&st, bodybuf, n_bb, t);
        memmove(bodybuf, bodybuf + used, n_bb - used);
        n_bb -= used;
    }
    r->e2e = now_s() - st.t_start;
    if (status != 200) {
        if (bodybuf) bodybuf[n_bb] = 0;
        snprintf(r->err, sizeof(r->err), "HTTP %d: %.100s", status, bodybuf ? bodybuf : "");
    } else if (!st.done && !r->err[0]) {
        snprintf(r->err, sizeof(r->err), "stream ended without [DONE]");
    } else if (!r->err[0] && (st.n_chunks > 0 || r->n_out > 0)) {
        /* Tokens whose text never showed (held back or special): first visible at the end. */
        if (st.n_chunks == 0) r->ttft = r->e2e;
        if (r->n_out == 0) r->n_out = st.n_chunks;
        if (r->n_out > 1) r->tpot = (r->e2e - r->ttft) / (r->n_out - 1);
        r->ok = true;
    } else if (!r->err[0]) {
        snprintf(r->err, sizeof(r->err), "no tokens received");
    }
out:
    free(raw);
    free(bodybuf);
    close(fd);
}

static void *worker(void *arg) {
    bench *b = arg;
    for (;;) {
        int i = atomic_fetch_add(&b->next, 1);
        if (i >= b->a.n_prompts) break;
        sleep_s(b->t0 + b->t_sched[i] - now_s());
        run_one(b, i);
    }
    return NULL;
}

/* ---- prompts and statistics ---- */

static char *make_body(const bargs *a, const int32_t *prefix, kiln_rng *rng, int i) {
    kiln_buf b;
    kiln_buf_init(&b);
    kiln_err err = kiln_buf_printf(&b, "{\"model\":\"%s\",\"prompt\":[", a->model);
    int span = a->tok_hi - a->tok_lo;
    for (int k = 0; !err && k < a->input_len; k++) {
        int32_t t;
        if (k < a->prefix_len) t = prefix[k];
        else if (k == a->prefix_len) t = a->tok_lo + (int32_t)((uint32_t)i % (uint32_t)span);
        else t = a->tok_lo + (int32_t)(kiln_rng_u64(rng) % (uint64_t)span);
        err = kiln_buf_printf(&b, "%s%d", k ? "," : "", (int)t);
    }
    if (!err)
        err = kiln_buf_printf(&b,
                              "],\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true,%s"
                              "\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                              a->output_len, a->logprobs ? "\"logprobs\":0," : "");
    if (err) {
        kiln_buf_deinit(&b);
        return NULL;
    }
    return kiln_buf_take(&b, NULL);
}

static int cmp_d(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

typedef struct summary {
    double mean, p50, p90, p99, max;
    int n;
} summary;

/* Percentiles with linear interpolation between order statistics (numpy's default). Sorts v. */
static summary summarize(double *v, int n) {
    summary s = {0};
    s.n = n;
    if (n == 0) return s;
    qsort(v, (size_t)n, sizeof(double), cmp_d);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += v[i];
    s.mean = sum / n;
    s.max = v[n - 1];
    const double qs[3] = {0.5, 0.9, 0.99};
    double *out[3] = {&s.p50, &s.p90, &s.p99};
    for (int k = 0; k < 3; k++) {
        double x = qs[k] * (n - 1);
        int lo = (int)floor(x);
        int hi = lo + 1 < n ? lo + 1 : lo;
        *out[k] = v[lo] + (v[hi] - v[lo]) * (x - lo);
    }
    return s;
}

static void bench_serve_usage(FILE *f) {
    fprintf(f,
            "usage: kiln bench serve --url URL --model NAME [options]\n"
            "  --url URL              server base URL, e.g. http://127.0.0.1:8000\n"
            "  --model NAME           model id sent in each request\n"
            "  --concurrency C        requests in flight at most (default 1)\n"
            "  --num-prompts N        requests in total (default 64)\n"
            "  --input-len I          prompt tokens per request (default 128)\n"
            "  --output-len O         completion tokens per request, ignore_eos (default 64)\n"
            "  --shared-prefix-len P  leading prompt tokens shared by every request (default 0)\n"
            "  --request-rate R       Poisson arrivals at R requests/s (default: all at once)\n"
            "  --token-range LO:HI    random prompt token ids in [LO, HI) (default 10:500)\n"
            "  --seed S               prompt RNG seed (default 0)\n"
            "  --api-key KEY          bearer key (also $OPENAI_API_KEY)\n"
            "  --timeout S            socket timeout per request (default 600)\n"
            "  --logprobs             ask for logprobs 0, so that every token arrives in a chunk\n"
            "                         of its own (ITL per token even when text is held back)\n"
            "  --json                 machine-readable output\n");
}

static bool parse_url(const char *url, bargs *a) {
    const char *p = url;
    if (!strncmp(p, "http://", 7)) p += 7;
    else if (strstr(p, "://")) return false; /* https is not supported */
    size_t n = strcspn(p, ":/");
    if (n == 0 || n >= sizeof(a->host)) return false;
    memcpy(a->host, p, n);
    a->host[n] = 0;
    p += n;
    if (*p == ':') {
        p++;
        size_t m = strspn(p, "0123456789");
        if (m == 0 || m >= sizeof(a->port)) return false;
        memcpy(a->port, p, m);
        a->port[m] = 0;
        p += m;
    } else {
        snprintf(a->port, sizeof(a->port), "80");
    }
    return *p == 0 || !strcmp(p, "/") || !strcmp(p, "/v1") || !strcmp(p, "/v1/");
}

static bool parse_i(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || end == s || *end || errno || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

/* 0 ok, 1 error, 2 help. */
static int parse_args(int argc, char **argv, bargs *a) {
    memset(a, 0, sizeof(*a));
    a->concurrency = 1;
    a->n_prompts = 64;
    a->input_len = 128;
    a->output_len = 64;
    a->tok_lo = 10;
    a->tok_hi = 500;
    a->timeout_s = 600;
    a->api_key = getenv("OPENAI_API_KEY");
    const char *url = NULL;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true, takes = true;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            bench_serve_usage(stdout);
            return 2;
        } else if (!strcmp(o, "--url")) ok = (url = v) != NULL;
        else if (!strcmp(o, "--model")) ok = (a->model = v) != NULL && *v && !strpbrk(v, "\"\\");
        else if (!strcmp(o, "--api-key")) ok = (a->api_key = v) != NULL && !strpbrk(v, "\r\n");
        else if (!strcmp(o, "--concurrency")) ok = parse_i(v, 1, MAX_CONCURRENCY, &a->concurrency);
        else if (!strcmp(o, "--num-prompts")) ok = parse_i(v, 1, 1000000, &a->n_prompts);
        else if (!strcmp(o, "--input-len")) ok = parse_i(v, 1, MAX_LEN, &a->input_len);
        else if (!strcmp(o, "--output-len")) ok = parse_i(v, 1, MAX_LEN, &a->output_len);
        else if (!strcmp(o, "--shared-prefix-len")) ok = parse_i(v, 0, MAX_LEN, &a->prefix_len);
        else if (!strcmp(o, "--timeout")) ok = parse_i(v, 1, 86400, &a->timeout_s);
        else if (!strcmp(o, "--request-rate")) {
            char *end;
            a->rate = v ? strtod(v, &end) : -1;
            ok = v && end != v && !*end && a->rate >= 0 && a->rate < 1e9;
            if (ok && !strcmp(v, "inf")) a->rate = 0;
        } else if (!strcmp(o, "--token-range")) {
            ok = v && sscanf(v, "%d:%d", &a->tok_lo, &a->tok_hi) == 2 && a->tok_lo >= 0 &&
                 a->tok_hi > a->tok_lo;
        } else if (!strcmp(o, "--seed")) {
            char *end;
            a->seed = v ? strtoull(v, &end, 10) : 0;
            ok = v && end != v && !*end;
        } else if (!strcmp(o, "--logprobs")) {
            a->logprobs = true;
            takes = false;
        } else if (!strcmp(o, "--json")) {
            a->json = true;
            takes = false;
        } else {
            fprintf(stderr, "kiln bench serve: unknown option '%s' (see --help)\n", o);
            return 1;
        }
        if (!ok) {
            fprintf(stderr, "kiln bench serve: %s needs a valid value%s%s\n", o, v ? ", got " : "",
                    v ? v : "");
            return 1;
        }
        if (takes) i++;
    }
    if (!url || !a->model) {
        fprintf(stderr, "kiln bench serve: --url and --model are required (see --help)\n");
        return 1;
    }
    if (!parse_url(url, a)) {
        fprintf(stderr, "kiln bench serve: --url %s: expected http://HOST[:PORT]\n", url);
        return 1;
    }
    if (a->prefix_len >= a->input_len) {
        fprintf(stderr, "kiln bench serve: --shared-prefix-len must be below --input-len\n");
        return 1;
    }
    return 0;
}

static json_t *summary_json(const summary *s) {
    return json_pack("{s:f, s:f, s:f, s:f, s:f}", "mean", s->mean * 1e3, "p50", s->p50 * 1e3, "p90",
                     s->p90 * 1e3, "p99", s->p99 * 1e3, "max", s->max * 1e3);
}

int kiln_cmd_bench_serve(int argc, char **argv) {
    bench b;
    memset(&b, 0, sizeof(b));
    int rc = parse_args(argc, argv, &b.a);
    if (rc) return rc == 2 ? 0 : 1;
    rc = 1;
    const bargs *a = &b.a;
    int N = a->n_prompts;
    kiln_rng rng;
    kiln_rng_seed(&rng, a->seed);
    int32_t *prefix = calloc((size_t)a->prefix_len + 1, sizeof(int32_t));
    b.bodies = calloc((size_t)N, sizeof(char *));
    b.t_sched = calloc((size_t)N, sizeof(double));
    b.res = calloc((size_t)N, sizeof(rresult));
    pthread_t *th = calloc((size_t)a->concurrency, sizeof(pthread_t));
    double *v = calloc((size_t)N + 1, sizeof(double));
    double *itl = NULL;
    int n_threads = 0;
    if (!prefix || !b.bodies || !b.t_sched || !b.res || !th || !v) goto out_nomem;
    for (int k = 0; k < a->prefix_len; k++)
        prefix[k] = a->tok_lo + (int32_t)(kiln_rng_u64(&rng) % (uint64_t)(a->tok_hi - a->tok_lo));
    double t = 0;
    for (int i = 0; i < N; i++) {
        if (!(b.bodies[i] = make_body(a, prefix, &rng, i))) goto out_nomem;
        if (a->rate > 0) t += -log(1.0 - kiln_rng_uniform(&rng)) / a->rate;
        b.t_sched[i] = a->rate > 0 ? t : 0;
    }
    atomic_init(&b.next, 0);
    b.t0 = now_s();
    for (; n_threads < a->concurrency && n_threads < N; n_threads++)
        if (pthread_create(&th[n_threads], NULL, worker, &b) != 0) break;
    for (int i = 0; i < n_threads; i++) pthread_join(th[i], NULL);
    double dur = now_s() - b.t0;
    if (n_threads == 0) {
        fprintf(stderr, "kiln bench serve: cannot start threads\n");
        goto out;
    }

    int n_ok = 0, n_itl = 0;
    long long out_tok = 0;
    for (int i = 0; i < N; i++) {
        if (!b.res[i].ok) continue;
        n_ok++;
        out_tok += b.res[i].n_out;
        n_itl += b.res[i].n_itl;
    }
    itl = calloc((size_t)n_itl + 1, sizeof(double));
    if (!itl) goto out_nomem;
    n_itl = 0;
    for (int i = 0; i < N; i++)
        if (b.res[i].ok)
            for (int k = 0; k < b.res[i].n_itl; k++) itl[n_itl++] = b.res[i].itl[k];
    int n = 0;
    for (int i = 0; i < N; i++)
        if (b.res[i].ok) v[n++] = b.res[i].ttft;
    summary s_ttft = summarize(v, n);
    n = 0;
    for (int i = 0; i < N; i++)
        if (b.res[i].ok) v[n++] = b.res[i].e2e;
    summary s_e2e = summarize(v, n);
    summary s_itl = summarize(itl, n_itl);
    n = 0;
    for (int i = 0; i < N; i++)
        if (b.res[i].ok && b.res[i].n_out > 1) v[n++] = b.res[i].tpot;
    summary s_tpot = summarize(v, n);
    const char *first_err = NULL;
    for (int i = 0; i < N && !first_err; i++)
        if (!b.res[i].ok) first_err = b.res[i].err;
    double req_tps = n_ok / dur, out_tps = (double)out_tok / dur;
    if (a->json) {
        json_t *o = json_pack(
            "{s:s, s:i, s:i, s:i, s:i, s:i, s:f, s:i, s:i, s:f, s:I, s:f, s:f, s:o, s:o, s:o, s:o}",
            "model", a->model, "concurrency", a->concurrency, "num_prompts", N, "input_len",
            a->input_len, "output_len", a->output_len, "shared_prefix_len", a->prefix_len,
            "request_rate", a->rate, "completed", n_ok, "failed", N - n_ok, "duration_s", dur,
            "output_tokens", (json_int_t)out_tok, "request_throughput", req_tps,
            "output_throughput", out_tps, "ttft_ms", summary_json(&s_ttft), "itl_ms",
            summary_json(&s_itl), "tpot_ms", summary_json(&s_tpot), "e2e_ms", summary_json(&s_e2e));
        if (o && first_err) json_object_set_new(o, "first_error", json_string(first_err));
        char *txt = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (txt) printf("%s\n", txt);
        free(txt);
        json_decref(o);
    } else {
        printf("============ Serving Benchmark Result ============\n");
        printf("%-40s %d\n", "Concurrency:", a->concurrency);
        printf("%-40s %d / %d\n", "Input / output tokens per request:", a->input_len,
               a->output_len);
        printf("%-40s %d\n", "Shared prefix tokens:", a->prefix_len);
        printf("%-40s %d\n", "Successful requests:", n_ok);
        printf("%-40s %d\n", "Failed requests:", N - n_ok);
        if (first_err) printf("%-40s %s\n", "First error:", first_err);
        printf("%-40s %.2f\n", "Benchmark duration (s):", dur);
        printf("%-40s %lld\n", "Total generated tokens:", out_tok);
        printf("%-40s %.2f\n", "Request throughput (req/s):", req_tps);
        printf("%-40s %.2f\n", "Output token throughput (tok/s):", out_tps);
        const char *names[4] = {"Time to First Token", "Time per Output Token (excl. 1st token)",
                                "Inter-token Latency", "End-to-end Latency"};
        const char *tags[4] = {"TTFT", "TPOT", "ITL", "E2EL"};
        const summary *ss[4] = {&s_ttft, &s_tpot, &s_itl, &s_e2e};
        for (int k = 0; k < 4; k++) {
            char l[64];
            printf("%s\n", names[k]);
            snprintf(l, sizeof(l), "Mean %s (ms):", tags[k]);
            printf("%-40s %.2f\n", l, ss[k]->mean * 1e3);
            snprintf(l, sizeof(l), "P50 %s (ms):", tags[k]);
            printf("%-40s %.2f\n", l, ss[k]->p50 * 1e3);
            snprintf(l, sizeof(l), "P90 %s (ms):", tags[k]);
            printf("%-40s %.2f\n", l, ss[k]->p90 * 1e3);
            snprintf(l, sizeof(l), "P99 %s (ms):", tags[k]);
            printf("%-40s %.2f\n", l, ss[k]->p99 * 1e3);
            snprintf(l, sizeof(l), "Max %s (ms):", tags[k]);
            printf("%-40s %.2f\n", l, ss[k]->max * 1e3);
        }
        printf("==================================================\n");
    }
    rc = n_ok == N ? 0 : 1;
    goto out;
out_nomem:
    fprintf(stderr, "kiln bench serve: out of memory\n");
out:
    for (int i = 0; b.bodies && i < N; i++) kiln_free(b.bodies[i]);
    for (int i = 0; b.res && i < N; i++) free(b.res[i].itl);
    free(b.bodies);
    free(b.t_sched);
    free(b.res);
    free(th);
    free(v);
    free(itl);
    free(prefix);
    return rc;
}
