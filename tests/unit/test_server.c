/* test_server.c: the HTTP layer and the endpoints in process, without an engine: a kiln_http +
 * kiln_api_server on 127.0.0.1 (ephemeral port) runs its loop on the main thread while a client
 * thread speaks raw HTTP/1.1 over sockets: routing, 404/405 with Allow, 401 with constant-time
 * keys, 413, 415, 503 while the engine is not ready (with Retry-After), /tokenize and /detokenize,
 * keep-alive (two requests on one connection), a client that sends half a request and leaves,
 * and allocation failures injected into every request path. */
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api/server.h"
#include "model/gguf.h"
#include "test.h"

static int port;
static kiln_http *http;

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

static void *client_main(void *arg) {
    (void)arg;
    RUN(routes_and_errors);
    RUN(tokenizer_endpoints);
    RUN(keep_alive_and_half_requests);
    RUN(alloc_failures_in_requests);
    kiln_http_stop(http);
    return NULL;
}

int main(void) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/models/stories260K.gguf", test_data_dir());
    kiln_gguf *g = NULL;
    kiln_vocab *v = NULL;
    if (kiln_gguf_open(path, &g) != KILN_OK || kiln_vocab_load(g, &v) != KILN_OK) {
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
    kiln_api_server *api = NULL;
    kiln_api_server_opts ao = {.model_name = "tiny"};
    if (kiln_http_new(&ho, &http) != KILN_OK || kiln_api_server_new(http, v, &ao, &api) != KILN_OK) {
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
    kiln_api_server_free(api);
    kiln_http_free(http);
    kiln_vocab_free(v);
    kiln_gguf_close(g);
    return TEST_REPORT("test_server");
}
