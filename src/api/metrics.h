/* metrics.h: the serving metrics of GET /metrics in Prometheus text format (exposition 0.0.4),
 * under vLLM's names (vllm:...) and the same under kiln:...: gauges and counters from an engine
 * stats snapshot, plus request histograms (TTFT, inter-token latency, end-to-end latency, queue
 * time) and request counters kept by the server.
 * Thread: one kiln_api_metrics belongs to the server (libevent) thread; no locking. */
#ifndef KILN_API_METRICS_H
#define KILN_API_METRICS_H

#include "base/base.h"
#include "engine/engine.h"

#define KILN_HIST_MAX_BUCKETS 24

/* A cumulative histogram with fixed upper bounds (seconds). */
typedef struct kiln_api_hist {
    const double *bounds;                       /* (n_bounds,) ascending; +Inf is implicit */
    int n_bounds;
    uint64_t counts[KILN_HIST_MAX_BUCKETS + 1]; /* per bucket, not cumulative; last = +Inf */
    uint64_t count;
    double sum;
} kiln_api_hist;

typedef struct kiln_api_metrics {
    kiln_api_hist ttft;         /* vllm:time_to_first_token_seconds */
    kiln_api_hist itl;          /* vllm:inter_token_latency_seconds */
    kiln_api_hist e2e;          /* vllm:e2e_request_latency_seconds */
    kiln_api_hist queue;        /* vllm:request_queue_time_seconds */
    uint64_t n_success[KILN_FINISH_COUNT]; /* vllm:request_success_total by finished_reason */
    uint64_t n_prompt_tokens;   /* vllm:prompt_tokens_total: prompts of finished requests */
    uint64_t n_generation_tokens; /* vllm:generation_tokens_total */
    uint64_t n_rejected;        /* kiln:requests_rejected_total: 503 before any work */
} kiln_api_metrics;

/* Zeroes m and sets vLLM's bucket bounds. */
void kiln_api_metrics_init(kiln_api_metrics *m);
/* Adds one observation (seconds; negative values count as 0). */
void kiln_api_hist_observe(kiln_api_hist *h, double v);
/* Appends the vllm: and kiln: metrics (HELP/TYPE lines, label model_name="<escaped name>") of m
 * and the engine snapshot st to out. KILN_ERR_NOMEM. */
kiln_err kiln_api_metrics_format(const kiln_api_metrics *m, const kiln_engine_stats *st,
                                 const char *model_name, kiln_buf *out);

#endif
