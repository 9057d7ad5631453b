/* test_server.c: the HTTP layer and the endpoints in process: a kiln_http + kiln_api_server on
 * 127.0.0.1 (ephemeral port) runs its loop on the main thread while a client thread speaks raw
 * HTTP/1.1 over sockets. Phase 1, before the engine is attached: routing, 404/405 with Allow, 401
 * with constant-time keys, 413, 415, 503 engine_not_ready (with Retry-After), /tokenize and
 * /detokenize, keep-alive, half requests, allocation failures in every request path. Phase 2,
 * with the engine on the real model: generation and SSE framing, disconnects cancelling
 * (mid-stream and non-streaming) with every KV block back, allocation failures mid-generation. */
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "api/server.h"
#include "model/model.h"
#include "test.h"

static int port;
static kiln_http *http;
static kiln_api_server *api;
static kiln_engine *engine;

typedef struct resp {
    int status;
    char head[4096];
    char body[16384];
} resp;

static int dial(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) return;
        p += k;
        n -= (size_t)k;
    }
}

/* Reads one response with a Content-Length body (all our non-streaming replies have one). */
static bool read_resp(int fd, resp *r) {
    char buf[32768];
    size_t n = 0;
    memset(r, 0, sizeof(*r));
    for (;;) {
        ssize_t k = recv(fd, buf + n, sizeof(buf) - 1 - n, 0);
        if (k <= 0) return false;
        n += (size_t)k;
        buf[n] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end) continue;
        size_t n_head = (size_t)(end - buf);
        const char *cl = strcasestr(buf, "Content-Length:");
        size_t len = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
        if (n < n_head + 4 + len) continue;
        snprintf(r->head, sizeof(r->head), "%.*s", (int)n_head, buf);
        snprintf(r->body, sizeof(r->body), "%.*s", (int)len, end + 4);
        r->status = atoi(buf + 9);
        return true;
    }
}

static resp request(const char *method, const char *path, const char *headers, const char *body) {
    resp r = {0};
    int fd = dial();
    if (fd < 0) return r;
    char req[8192];
    int n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s"
                     "Content-Length: %zu\r\n\r\n", method, path, headers ? headers : "",
                     body ? strlen(body) : 0);
    send_all(fd, req, (size_t)n);
    if (body) send_all(fd, body, strlen(body));
    read_resp(fd, &r);
    close(fd);
    return r;
}

static const char *AUTH = "Authorization: Bearer sk-test\r\n";
static const char *JSON_CT = "Content-Type: application/json\r\n";

/* Checks the OpenAI error shape and returns the parsed error object's field `code` etc. */
static void check_error(const resp *r, int status, const char *code) {
    CHECK_EQ_INT(r->status, status);
    json_t *o = json_loads(r->body, 0, NULL);
    json_t *e = json_object_get(o, "error");
    CHECK_MSG(json_is_object(e), "body: %s", r->body);
    CHECK(json_is_string(json_object_get(e, "message")));
    CHECK(json_is_string(json_object_get(e, "type")));
    CHECK(json_object_get(e, "param") != NULL);
    json_t *c = json_object_get(e, "code");
    CHECK(c != NULL);
    if (code) CHECK_STR(json_string_value(c), code);
    CHECK_EQ_INT(json_object_size(e), 4);
    json_decref(o);
}

static void routes_and_errors(void) {
    resp r = request("GET", "/health", NULL, NULL);
    check_error(&r, 503, "engine_not_ready");
    r = request("GET", "/version", NULL, NULL);
    CHECK_EQ_INT(r.status, 200);
    CHECK(strstr(r.body, "\"version\"") != NULL);
    r = request("GET", "/v1/models", NULL, NULL);
    CHECK_EQ_INT(r.status, 200);
    CHECK(strstr(r.body, "\"id\":\"tiny\"") != NULL);
    r = request("GET", "/v1/models/tiny", NULL, NULL);
    CHECK_EQ_INT(r.status, 200);
    r = request("GET", "/v1/models/other", NULL, NULL);
    check_error(&r, 404, "model_not_found");
    r = request("GET", "/nowhere", NULL, NULL);
    check_error(&r, 404, "not_found");
    r = request("GET", "/v1/completions", AUTH, NULL);
    check_error(&r, 405, "method_not_allowed");
    CHECK(strstr(r.head, "Allow: POST") != NULL);
    r = request("PUT", "/v1/models", NULL, "{}");
    check_error(&r, 405, NULL);
    CHECK(strstr(r.head, "Allow: GET") != NULL);
    /* auth before anything else on protected routes */
    r = request("POST", "/v1/completions", JSON_CT, "{\"prompt\":\"x\"}");
    check_error(&r, 401, "invalid_api_key");
    CHECK(strstr(r.head, "WWW-Authenticate: Bearer") != NULL);
    r = request("POST", "/v1/completions", "Authorization: Bearer sk-tes\r\n", "{\"prompt\":\"x\"}");
    check_error(&r, 401, NULL);
    r = request("POST", "/v1/completions", "Authorization: Basic sk-test\r\n", "{\"prompt\":\"x\"}");
    check_error(&r, 401, NULL);
    r = request("POST", "/v1/completions", "Authorization: bearer   sk-test \r\n", "{\"prompt\":1}");
    check_error(&r, 400, NULL); /* scheme is case-insensitive; spaces trimmed */
    /* 415, 400, 404 model, 503 engine */
    r = request("POST", "/v1/completions", "Authorization: Bearer sk-test\r\nContent-Type: text/plain\r\n",
                "{\"prompt\":\"x\"}");
    check_error(&r, 415, "unsupported_media_type");
    r = request("POST", "/v1/chat/completions", AUTH, "{\"messages\":[");
    check_error(&r, 400, "invalid_json");
    r = request("POST", "/v1/chat/completions", AUTH,
                "{\"model\":\"gpt\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}");
    check_error(&r, 404, "model_not_found");
    r = request("POST", "/v1/chat/completions", AUTH,
                "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}");
    check_error(&r, 503, "engine_not_ready");
    CHECK(strstr(r.head, "Retry-After: 1") != NULL);
    /* 413 over the 1024-byte limit */
    char big[2048];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    memcpy(big, "{\"prompt\":\"", 11);
    memcpy(big + sizeof(big) - 3, "\"}", 2);
    r = request("POST", "/v1/completions", AUTH, big);
    check_error(&r, 413, "request_too_large");
}

static void tokenizer_endpoints(void) {
    resp r = request("POST", "/tokenize", AUTH, "{\"prompt\":\"Once upon a time\"}");
    CHECK_EQ_INT(r.status, 200);
    CHECK_MSG(strstr(r.body, "\"tokens\":[1,403,407,261,378]") != NULL, "%s", r.body);
    CHECK(strstr(r.body, "\"count\":5") != NULL);
    r = request("POST", "/tokenize", AUTH,
                "{\"prompt\":\"Once upon a time\",\"add_special_tokens\":false}");
    CHECK(strstr(r.body, "\"tokens\":[403,407,261,378]") != NULL);
    r = request("POST", "/detokenize", AUTH, "{\"tokens\":[1,403,407,261,378]}");
    CHECK_EQ_INT(r.status, 200);
    CHECK_STR(r.body, "{\"prompt\":\"Once upon a time\"}");
    r = request("POST", "/detokenize", AUTH, "{\"tokens\":[1,99999]}");
    check_error(&r, 400, NULL);
    CHECK(strstr(r.body, "\"param\":\"tokens[1]\"") != NULL);
    r = request("POST", "/tokenize", AUTH, "{}");
    check_error(&r, 400, NULL);
    r = request("POST", "/tokenize", AUTH, "[]");
    check_error(&r, 400, "invalid_json");
    /* the fallback chat format through /tokenize: "user: hi\nassistant:" with BOS */
    r = request("POST", "/tokenize", AUTH, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
    resp w = request("POST", "/tokenize", AUTH, "{\"prompt\":\"user: hi\\nassistant:\"}");
    CHECK_EQ_INT(r.status, 200);
    CHECK_STR(r.body, w.body);
    /* continue_final_message: the prompt ends with the assistant's partial content */
    r = request("POST", "/tokenize", AUTH,
                "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\","
                "\"content\":\"Once upon\"}],\"add_generation_prompt\":false,"
                "\"continue_final_message\":true}");
    w = request("POST", "/tokenize", AUTH, "{\"prompt\":\"user: hi\\nassistant: Once upon\"}");
    CHECK_EQ_INT(r.status, 200);
    CHECK_STR(r.body, w.body);
}

static void keep_alive_and_half_requests(void) {
    int fd = dial();
    const char *req = "GET /version HTTP/1.1\r\nHost: x\r\n\r\n";
    resp r;
    send_all(fd, req, strlen(req));
    CHECK(read_resp(fd, &r));
    CHECK_EQ_INT(r.status, 200);
    send_all(fd, req, strlen(req)); /* same connection */
    CHECK(read_resp(fd, &r));
    CHECK_EQ_INT(r.status, 200);
    close(fd);
    /* half a body, then gone; and garbage */
    fd = dial();
    const char *half = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"pr";
    send_all(fd, half, strlen(half));
    close(fd);
    fd = dial();
    send_all(fd, "\x01\x02 nonsense\r\n\r\n", 15);
    read_resp(fd, &r);
    CHECK(r.status == 0 || (r.status >= 400 && r.status < 500));
    close(fd);
    r = request("GET", "/version", NULL, NULL);
    CHECK_EQ_INT(r.status, 200);
}

/* The n-th allocation of the server fails, for every n up to the point where none does: each
 * request still gets a well-formed HTTP answer (503 "out of memory" or its normal status) or at
 * worst a closed connection, never a crash or a leak (ASan), and the server stays usable. */
static void alloc_failures_in_requests(void) {
    static const struct {
        const char *method, *path, *headers, *body;
        int ok_status;
    } reqs[] = {
        {"POST", "/v1/chat/completions", NULL,
         "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}]}],"
         "\"stop\":[\"x\"],\"logit_bias\":{\"3\":1},\"n\":2}", 503},
        {"POST", "/v1/completions", NULL, "{\"prompt\":[[1,2],\"abc\"],\"bogus\":1}", 400},
        {"POST", "/tokenize", NULL, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", 200},
        {"POST", "/detokenize", NULL, "{\"tokens\":[1,403,407]}", 200},
        {"GET", "/v1/models", NULL, NULL, 200},
        {"GET", "/nowhere", NULL, NULL, 404},
    };
    for (size_t i = 0; i < KILN_ARRAY_LEN(reqs); i++) {
        bool reached_ok = false;
        for (long n = 0; n < 200 && !reached_ok; n++) {
            kiln_alloc_fail_after(n);
            resp r = request(reqs[i].method, reqs[i].path, AUTH, reqs[i].body);
            long n_failed = kiln_alloc_n_failed();
            kiln_alloc_fail_after(-1);
            CHECK_MSG(r.status == 0 || r.status == reqs[i].ok_status || r.status == 503,
                      "%s n=%ld: status %d: %s", reqs[i].path, n, r.status, r.body);
            if (r.status == reqs[i].ok_status && n_failed == 0) reached_ok = true;
        }
        CHECK_MSG(reached_ok, "%s never succeeded", reqs[i].path);
    }
    resp r = request("POST", "/tokenize", AUTH, "{\"prompt\":\"Once upon a time\"}");
    CHECK_EQ_INT(r.status, 200);
}

/* ---- phase 2: with the engine ---- */

static void attach_engine(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    (void)arg;
    kiln_api_server_set_engine(api, engine); /* on the loop thread, as the server expects */
}

/* Reads a whole Connection: close response (any framing) into out; returns the status. */
static int read_all(int fd, char *out, size_t cap) {
    size_t got = 0;
    for (;;) {
        ssize_t k = recv(fd, out + got, cap - 1 - got, 0);
        if (k <= 0 || got + (size_t)k >= cap - 1) break;
        got += (size_t)k;
    }
    out[got] = 0;
    return got > 12 ? atoi(out + 9) : 0;
}

static int post(const char *path, const char *body, char *out, size_t cap) {
    int fd = dial();
    char req[4096];
    int n = snprintf(req, sizeof(req), "POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s%s"
                     "Content-Length: %zu\r\n\r\n%s", path, AUTH, JSON_CT, strlen(body), body);
    send_all(fd, req, (size_t)n);
    int st = read_all(fd, out, cap);
    close(fd);
    return st;
}

static long metric(const char *name) {
    resp r = request("GET", "/metrics", NULL, NULL);
    const char *p = strstr(r.body, name);
    return p ? atol(p + strlen(name) + 1) : -1;
}

static bool wait_idle(void) {
    for (int i = 0; i < 400; i++) {
        if (metric("kiln_num_requests_active") == 0 && metric("kiln_http_calls_in_flight") == 0 &&
            metric("kiln_kv_blocks_free") == metric("kiln_kv_blocks_total"))
            return true;
        usleep(25000);
    }
    return false;
}

static void generation_and_streams(void) {
    static char out[1 << 16];
    int st = post("/v1/completions", "{\"prompt\":\"Once upon a time\",\"max_tokens\":12,"
                  "\"temperature\":0}", out, sizeof(out));
    CHECK_EQ_INT(st, 200);
    /* llama.cpp's greedy continuation starts ", there was a little girl named Lily." */
    CHECK_MSG(strstr(out, "\"text\":\", there was a little girl named Lily") != NULL, "%s", out);
    st = post("/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
              "\"max_tokens\":4,\"n\":2,\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
              out, sizeof(out));
    CHECK_EQ_INT(st, 200);
    CHECK(strstr(out, "text/event-stream") != NULL);
    CHECK(strstr(out, "\"delta\":{\"role\":\"assistant\",\"content\":\"\"}") != NULL);
    CHECK(strstr(out, "\"choices\":[],\"usage\":{\"prompt_tokens\":") != NULL);
    CHECK(strstr(out, "data: [DONE]\n\n") != NULL);
    CHECK(wait_idle());
}

/* A stream closed after its first event, and a non-streaming request closed while it runs: both
 * are cancelled and every KV block comes back. */
static void disconnects(void) {
    long c0 = metric("kiln_requests_cancelled_total");
    const char *bodies[] = {
        "{\"prompt\":\"Once upon a time\",\"max_tokens\":400,\"ignore_eos\":true,\"n\":4,"
        "\"stream\":true}",
        "{\"prompt\":\"Once upon a time\",\"max_tokens\":400,\"ignore_eos\":true,\"n\":4}",
    };
    for (int i = 0; i < 2; i++) {
        int fd = dial();
        char req[1024], buf[4096];
        int n = snprintf(req, sizeof(req), "POST /v1/completions HTTP/1.1\r\nHost: x\r\n%s%s"
                         "Content-Length: %zu\r\n\r\n%s", AUTH, JSON_CT, strlen(bodies[i]),
                         bodies[i]);
        send_all(fd, req, (size_t)n);
        if (i == 0) {
            ssize_t k = recv(fd, buf, sizeof(buf) - 1, 0); /* headers + first events */
            CHECK(k > 0);
        } else {
            for (int j = 0; j < 200 && metric("kiln_num_requests_running") <= 0; j++) usleep(5000);
        }
        close(fd);
        CHECK(wait_idle());
        CHECK_EQ_INT(metric("kiln_requests_cancelled_total"), c0 + i + 1);
    }
}

/* Allocation failures while requests run through the engine: never a crash or a leak. The
 * engine thread allocates too, so where the failure lands varies; every answer must still be
 * a well-formed status, and a run without failures must succeed. */
static void alloc_failures_with_engine(void) {
    static char out[1 << 16];
    const char *bodies[] = {
        "{\"prompt\":\"Once upon a time\",\"max_tokens\":6,\"n\":2,\"logprobs\":2,\"echo\":true}",
        "{\"prompt\":[\"Once\",\"upon\"],\"max_tokens\":6,\"stream\":true,\"stream_options\":"
        "{\"include_usage\":true},\"logprobs\":1,\"stop\":[\"the\"]}",
    };
    for (size_t i = 0; i < KILN_ARRAY_LEN(bodies); i++) {
        bool ok = false;
        for (long n = 0; n < 1000 && !ok; n++) {
            kiln_alloc_fail_after(n);
            int st = post("/v1/completions", bodies[i], out, sizeof(out));
            long n_failed = kiln_alloc_n_failed();
            kiln_alloc_fail_after(-1);
            CHECK_MSG(st == 200 || st == 500 || st == 503 || st == 0, "n=%ld: status %d", n, st);
            ok = st == 200 && n_failed == 0;
        }
        CHECK(ok);
        CHECK(wait_idle());
    }
}

static void *client_main(void *arg) {
    (void)arg;
    RUN(routes_and_errors);
    RUN(tokenizer_endpoints);
    RUN(keep_alive_and_half_requests);
    RUN(alloc_failures_in_requests);
    struct timeval now = {0, 0};
    event_base_once(kiln_http_base(http), -1, EV_TIMEOUT, attach_engine, NULL, &now);
    for (int i = 0; i < 200 && request("GET", "/health", NULL, NULL).status != 200; i++)
        usleep(10000);
    RUN(generation_and_streams);
    RUN(disconnects);
    RUN(alloc_failures_with_engine);
    kiln_http_stop(http);
    return NULL;
}

int main(void) {
    kiln_log_set_level(KILN_LOG_WARN); /* no request log lines */
    char path[1024];
    snprintf(path, sizeof(path), "%s/models/stories260K.gguf", test_data_dir());
    kiln_model *m = NULL;
    kiln_vocab *v = NULL;
    kiln_model_opts mo = {.n_threads = 1};
    if (kiln_model_load(path, &mo, &m) != KILN_OK ||
        kiln_vocab_load(kiln_model_gguf(m), &v) != KILN_OK) {
        fprintf(stderr, "cannot load %s: %s\n", path, kiln_errmsg());
        return 1;
    }
    kiln_http_opts ho;
    kiln_http_opts_default(&ho);
    ho.port = 0;
    ho.max_body_bytes = 1024;
    const char *keys[] = {"sk-other", "sk-test"};
    ho.api_keys = keys;
    ho.n_api_keys = 2;
    ho.error_fn = kiln_api_error_body;
    kiln_api_server_opts ao = {.model_name = "tiny"};
    kiln_engine_opts eo;
    kiln_engine_opts_default(&eo);
    eo.kv_cache_bytes = 16u << 20;
    if (kiln_http_new(&ho, &http) != KILN_OK || kiln_api_server_new(http, v, &ao, &api) != KILN_OK ||
        kiln_engine_new(m, v, &eo, kiln_api_server_notify, api, &engine) != KILN_OK) {
        fprintf(stderr, "cannot start the server: %s\n", kiln_errmsg());
        return 1;
    }
    port = kiln_http_port(http);
    /* a second server on the same port fails cleanly */
    kiln_http *dup = NULL;
    ho.port = port;
    if (port <= 0 || kiln_http_new(&ho, &dup) != KILN_ERR_IO ||
        !strstr(kiln_errmsg(), "cannot listen")) {
        fprintf(stderr, "port %d: a second bind did not fail with a clear message\n", port);
        return 1;
    }
    pthread_t th;
    pthread_create(&th, NULL, client_main, NULL);
    kiln_http_run(http);
    pthread_join(th, NULL);
    kiln_engine_free(engine);
    kiln_api_server_free(api);
    kiln_http_free(http);
    kiln_vocab_free(v);
    kiln_model_free(m);
    return TEST_REPORT("test_server");
}
