/* metrics.c: Prometheus text exposition of kiln's serving metrics (see metrics.h). Bucket bounds
 * are vLLM's, so dashboards built for vLLM read kiln unchanged. Every metric is written twice:
 * under "vllm:" and under "kiln:".
 * Thread: the server thread. */
#include "api/metrics.h"

#include <string.h>

static const double TTFT_BOUNDS[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                     0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0,
                                     20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
static const double ITL_BOUNDS[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                    0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
static const double LONG_BOUNDS[] = {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,
                                     10.0, 15.0, 20.0, 30.0, 40.0,  50.0,  60.0,  120.0,
                                     240.0, 480.0, 960.0, 1920.0, 7680.0};
_Static_assert(KILN_ARRAY_LEN(TTFT_BOUNDS) <= KILN_HIST_MAX_BUCKETS, "ttft buckets");
_Static_assert(KILN_ARRAY_LEN(LONG_BOUNDS) <= KILN_HIST_MAX_BUCKETS, "long buckets");

static void hist_init(kiln_api_hist *h, const double *b, int n) {
    h->bounds = b;
    h->n_bounds = n;
}

void kiln_api_metrics_init(kiln_api_metrics *m) {
    memset(m, 0, sizeof(*m));
    hist_init(&m->ttft, TTFT_BOUNDS, (int)KILN_ARRAY_LEN(TTFT_BOUNDS));
    hist_init(&m->itl, ITL_BOUNDS, (int)KILN_ARRAY_LEN(ITL_BOUNDS));
    hist_init(&m->e2e, LONG_BOUNDS, (int)KILN_ARRAY_LEN(LONG_BOUNDS));
    hist_init(&m->queue, LONG_BOUNDS, (int)KILN_ARRAY_LEN(LONG_BOUNDS));
}

void kiln_api_hist_observe(kiln_api_hist *h, double v) {
    if (!(v > 0)) v = 0; /* also NaN */
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

/* Label value escaping of the text format: backslash, double quote, newline. */
static kiln_err label_escape(const char *s, kiln_buf *out) {
    kiln_err err = KILN_OK;
    for (; *s && !err; s++) {
        if (*s == '\\') err = kiln_buf_append(out, "\\\\", 2);
        else if (*s == '"') err = kiln_buf_append(out, "\\\"", 2);
        else if (*s == '\n') err = kiln_buf_append(out, "\\n", 2);
        else err = kiln_buf_append(out, s, 1);
    }
    return err;
}

typedef struct fmt {
    kiln_buf *out;
    const char *prefix; /* "vllm:" or "kiln:" */
    const char *labels; /* model_name="..." */
    kiln_err err;
} fmt;

static void head(fmt *f, const char *name, const char *type, const char *help) {
    if (!f->err)
        f->err = kiln_buf_printf(f->out, "# HELP %s%s %s\n# TYPE %s%s %s\n", f->prefix, name, help,
                                 f->prefix, name, type);
}

static void gauge(fmt *f, const char *name, const char *help, double v) {
    head(f, name, "gauge", help);
    if (!f->err) f->err = kiln_buf_printf(f->out, "%s%s{%s} %.17g\n", f->prefix, name, f->labels, v);
}

/* Counters are exposed with the _total suffix, as prometheus_client (and so vLLM) does. */
static void counter(fmt *f, const char *name, const char *help, uint64_t v) {
    head(f, name, "counter", help);
    if (!f->err)
        f->err = kiln_buf_printf(f->out, "%s%s_total{%s} %llu\n", f->prefix, name, f->labels,
                                 (unsigned long long)v);
}

static void hist(fmt *f, const char *name, const char *help, const kiln_api_hist *h) {
    head(f, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; i <= h->n_bounds && !f->err; i++) {
        cum += h->counts[i];
        if (i < h->n_bounds)
            f->err = kiln_buf_printf(f->out, "%s%s_bucket{%s,le=\"%g\"} %llu\n", f->prefix, name,
                                     f->labels, h->bounds[i], (unsigned long long)cum);
        else
            f->err = kiln_buf_printf(f->out, "%s%s_bucket{%s,le=\"+Inf\"} %llu\n", f->prefix,
                                     name, f->labels, (unsigned long long)cum);
    }
    if (!f->err)
        f->err = kiln_buf_printf(f->out, "%s%s_sum{%s} %.17g\n%s%s_count{%s} %llu\n", f->prefix,
                                 name, f->labels, h->sum, f->prefix, name, f->labels,
                                 (unsigned long long)h->count);
}

kiln_err kiln_api_metrics_format(const kiln_api_metrics *m, const kiln_engine_stats *st,
                                 const char *model_name, kiln_buf *out) {
    kiln_buf lab;
    kiln_buf_init(&lab);
    kiln_err err = kiln_buf_append(&lab, "model_name=\"", 12);
    if (!err) err = label_escape(model_name ? model_name : "", &lab);
    if (!err) err = kiln_buf_append(&lab, "\"", 1);
    static const char *const prefixes[] = {"vllm:", "kiln:"};
    double usage = st->n_kv_blocks_total > 0
                       ? 1.0 - (double)st->n_kv_blocks_free / (double)st->n_kv_blocks_total
                       : 0.0;
    for (int p = 0; p < 2 && !err; p++) {
        fmt f = {.out = out, .prefix = prefixes[p], .labels = lab.data, .err = KILN_OK};
        gauge(&f, "num_requests_running", "Sequences in the running batch.", st->n_running);
        gauge(&f, "num_requests_waiting", "Sequences waiting (queued or preempted).",
              st->n_waiting);
        gauge(&f, "kv_cache_usage_perc", "KV cache usage (1 = full); unused cached blocks count "
              "as free.", usage);
        counter(&f, "prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                st->n_prefix_cache_query_tokens);
        counter(&f, "prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                st->n_prefix_cache_hit_tokens);
        counter(&f, "num_preemptions", "Sequences preempted (recomputed later).",
                st->n_preemptions);
        counter(&f, "prompt_tokens", "Prompt tokens of finished requests.", m->n_prompt_tokens);
        counter(&f, "generation_tokens", "Generated tokens of finished requests.",
                m->n_generation_tokens);
        head(&f, "request_success", "counter", "Finished requests by finish reason.");
        for (int r = KILN_FINISH_STOP; r <= KILN_FINISH_LENGTH && !f.err; r++)
            f.err = kiln_buf_printf(out, "%srequest_success_total{%s,finished_reason=\"%s\"} %llu\n",
                                    f.prefix, f.labels, kiln_finish_reason_name((kiln_finish_reason)r),
                                    (unsigned long long)m->n_success[r]);
        hist(&f, "time_to_first_token_seconds", "Time to first token (server receipt to first "
             "token).", &m->ttft);
        hist(&f, "inter_token_latency_seconds", "Time between consecutive tokens of a choice.",
             &m->itl);
        hist(&f, "e2e_request_latency_seconds", "End-to-end request latency.", &m->e2e);
        hist(&f, "request_queue_time_seconds", "Time from submission to first scheduling.",
             &m->queue);
        if (p == 1) {
            counter(&f, "requests_rejected", "Requests answered 503 by admission control.",
                    m->n_rejected);
            counter(&f, "num_steps", "Engine forward passes.", st->n_steps);
        }
        err = f.err;
    }
    kiln_buf_deinit(&lab);
    return err;
}
