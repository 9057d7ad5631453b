/* test_metrics.c: the Prometheus exposition of api/metrics.c: histogram buckets are cumulative
 * with vLLM's bounds (an observation equal to a bound falls in that bucket, le semantics), sum and
 * count, both the vllm: and kiln: names, counters with _total, label escaping, and allocation
 * failures. Expected values are worked out by hand from the observations. */
#include <stdio.h>
#include <string.h>

#include "api/metrics.h"
#include "test.h"

/* The value of the sample line starting with `name{` and containing `has` (or -1). */
static double sample(const char *text, const char *name, const char *has) {
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        char line[512];
        if (len >= sizeof(line)) continue;
        memcpy(line, p, len);
        line[len] = 0;
        if (strncmp(line, name, n) || line[n] != '{') continue;
        if (has && !strstr(line, has)) continue;
        const char *sp = strrchr(line, ' ');
        return sp ? atof(sp + 1) : -1;
    }
    return -1;
}

static void histogram_and_names(void) {
    kiln_api_metrics m;
    kiln_api_metrics_init(&m);
    kiln_api_hist_observe(&m.ttft, 0.001);  /* le 0.001 */
    kiln_api_hist_observe(&m.ttft, 0.003);  /* le 0.005 */
    kiln_api_hist_observe(&m.ttft, 3000.0); /* +Inf only */
    kiln_api_hist_observe(&m.ttft, -1.0);   /* clamped to 0: le 0.001 */
    kiln_api_hist_observe(&m.itl, 0.02);    /* le 0.025 */
    m.n_success[KILN_FINISH_LENGTH] = 3;
    m.n_prompt_tokens = 70;
    kiln_engine_stats st;
    memset(&st, 0, sizeof(st));
    st.n_running = 2;
    st.n_waiting = 5;
    st.n_kv_blocks_total = 100;
    st.n_kv_blocks_free = 75;
    st.n_prefix_cache_query_tokens = 400;
    st.n_prefix_cache_hit_tokens = 384;
    st.n_preemptions = 9;
    kiln_buf b;
    kiln_buf_init(&b);
    CHECK_EQ_INT(kiln_api_metrics_format(&m, &st, "m\"o\\d", &b), KILN_OK);
    const char *t = b.data;
    CHECK(t != NULL);
    if (!t) return;
    const char *pre[2] = {"vllm:", "kiln:"};
    for (int i = 0; i < 2; i++) {
        char nm[128];
#define NAME(x) (snprintf(nm, sizeof(nm), "%s%s", pre[i], x), nm)
        CHECK_EQ_INT(sample(t, NAME("num_requests_running"), NULL), 2);
        CHECK_EQ_INT(sample(t, NAME("num_requests_waiting"), NULL), 5);
        CHECK_NEAR(sample(t, NAME("kv_cache_usage_perc"), NULL), 0.25, 1e-12);
        CHECK_EQ_INT(sample(t, NAME("prefix_cache_queries_total"), NULL), 400);
        CHECK_EQ_INT(sample(t, NAME("prefix_cache_hits_total"), NULL), 384);
        CHECK_EQ_INT(sample(t, NAME("num_preemptions_total"), NULL), 9);
        CHECK_EQ_INT(sample(t, NAME("prompt_tokens_total"), NULL), 70);
        CHECK_EQ_INT(sample(t, NAME("request_success_total"), "finished_reason=\"length\""), 3);
        CHECK_EQ_INT(sample(t, NAME("request_success_total"), "finished_reason=\"stop\""), 0);
        const char *h = NAME("time_to_first_token_seconds_bucket");
        CHECK_EQ_INT(sample(t, h, "le=\"0.001\""), 2);
        CHECK_EQ_INT(sample(t, h, "le=\"0.005\""), 3);
        CHECK_EQ_INT(sample(t, h, "le=\"2560\""), 3);
        CHECK_EQ_INT(sample(t, h, "le=\"+Inf\""), 4);
        CHECK_EQ_INT(sample(t, NAME("time_to_first_token_seconds_count"), NULL), 4);
        CHECK_NEAR(sample(t, NAME("time_to_first_token_seconds_sum"), NULL), 3000.004, 1e-9);
        h = NAME("inter_token_latency_seconds_bucket");
        CHECK_EQ_INT(sample(t, h, "le=\"0.01\""), 0);
        CHECK_EQ_INT(sample(t, h, "le=\"0.025\""), 1);
        CHECK_EQ_INT(sample(t, NAME("e2e_request_latency_seconds_count"), NULL), 0);
        CHECK_EQ_INT(sample(t, NAME("request_queue_time_seconds_bucket"), "le=\"+Inf\""), 0);
#undef NAME
    }
    CHECK(strstr(t, "# TYPE vllm:time_to_first_token_seconds histogram\n") != NULL);
    CHECK(strstr(t, "# TYPE vllm:prompt_tokens counter\n") != NULL);
    CHECK(strstr(t, "model_name=\"m\\\"o\\\\d\"") != NULL); /* escaped quote and backslash */
    kiln_buf_deinit(&b);
}

static void alloc_failures(void) {
    kiln_api_metrics m;
    kiln_api_metrics_init(&m);
    kiln_engine_stats st;
    memset(&st, 0, sizeof(st));
    for (int n = 0; n < 200; n++) {
        kiln_buf b;
        kiln_buf_init(&b);
        kiln_alloc_fail_after(n);
        kiln_err err = kiln_api_metrics_format(&m, &st, "x", &b);
        kiln_alloc_fail_after(-1);
        CHECK(err == KILN_OK || err == KILN_ERR_NOMEM);
        kiln_buf_deinit(&b);
        if (err == KILN_OK) break;
    }
}

int main(void) {
    RUN(histogram_and_names);
    RUN(alloc_failures);
    return TEST_REPORT("test_metrics");
}
