/* http.c: implementation of http.h over libevent's evhttp. One kiln_http_req wraps each
 * evhttp_request from dispatch until the handler ends it; the connection's close callback points
 * at the wrapper while it lives, so a client that goes away is reported once (on_close) and the
 * orphaned evhttp_request is freed by libevent when the handler finally replies.
 * Thread: the libevent loop thread only (kiln_http_stop excepted). */
#include "server/http.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <string.h>

#define MAX_ROUTES 64

typedef struct route {
    char *path;            /* owned; without the trailing '*' for prefixes */
    size_t n_path;
    bool prefix;
    unsigned methods;      /* KILN_HTTP_GET | KILN_HTTP_POST */
    bool auth;
    kiln_http_handler fn;
    void *ctx;
} route;

struct kiln_http {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *sock;
    struct event *ev_sigint;
    struct event *ev_sigterm;
    kiln_http_opts opts;          /* api_keys points at `keys` */
    char **keys;                  /* (n_api_keys,) owned copies */
    char *host;                   /* owned copy */
    int port;
    route routes[MAX_ROUTES];
    int n_routes;
    kiln_http_req *active;        /* doubly-linked list of requests in flight */
    int n_active;
};

struct kiln_http_req {
    kiln_http *h;
    struct evhttp_request *req;
    struct evhttp_connection *conn; /* NULL once the client went away */
    kiln_http_req *prev, *next;
    char *path;                     /* owned, decoded path without query */
    unsigned method;
    bool closed;                    /* the client went away */
    bool timed_out;
    bool streaming;                 /* SSE headers sent */
    bool body_terminated;           /* a NUL was appended after the body */
    size_t n_body;                  /* body bytes (valid once body_terminated) */
    struct event *ev_timeout;       /* request_timeout_s */
    struct event *ev_keepalive;     /* SSE keep-alive comments */
    struct event *ev_eof;           /* watches the socket for EOF while the request is pending */
    kiln_http_close_fn on_close;
    void *close_ctx;
    void *user;
};

void kiln_http_opts_default(kiln_http_opts *o) {
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->port = 8000;
    o->max_body_bytes = 8u << 20;
    o->max_header_bytes = 16u << 10;
    o->read_timeout_s = 60;
    o->request_timeout_s = 600;
    o->sse_keepalive_s = 15;
}

bool kiln_http_key_ok(const char *const *keys, int n_keys, const char *presented, size_t len) {
    /* Every configured key is compared in full, whatever matched, so that timing reveals neither
     * which key nor how many leading bytes matched. */
    unsigned ok = 0;
    for (int i = 0; i < n_keys; i++) {
        size_t n_key = strlen(keys[i]);
        unsigned diff = (unsigned)(n_key != len);
        for (size_t j = 0; j < n_key; j++) {
            unsigned char p = j < len ? (unsigned char)presented[j] : 0;
            diff |= (unsigned)(p ^ (unsigned char)keys[i][j]);
        }
        ok |= (unsigned)(diff == 0);
    }
    return ok != 0;
}

/* ---- request lifetime ---- */

static void conn_closed(struct evhttp_connection *conn, void *arg);

static void req_unlink_free(kiln_http_req *r) {
    kiln_http *h = r->h;
    if (r->prev) r->prev->next = r->next;
    else h->active = r->next;
    if (r->next) r->next->prev = r->prev;
    h->n_active--;
    if (r->ev_timeout) event_free(r->ev_timeout);
    if (r->ev_keepalive) event_free(r->ev_keepalive);
    if (r->ev_eof) event_free(r->ev_eof);
    kiln_free(r->path);
    kiln_free(r);
}

/* Detaches the wrapper from the connection before libevent may free either. */
static void req_detach(kiln_http_req *r) {
    if (r->ev_eof) event_del(r->ev_eof);
    if (r->conn) evhttp_connection_set_closecb(r->conn, NULL, NULL);
    r->conn = NULL;
}

static void notify_close(kiln_http_req *r, kiln_http_close_reason why) {
    kiln_http_close_fn fn = r->on_close;
    r->on_close = NULL;
    if (fn) fn(r, why, r->close_ctx);
}

static void conn_closed(struct evhttp_connection *conn, void *arg) {
    kiln_http_req *r = arg;
    (void)conn;
    r->conn = NULL;
    r->closed = true;
    if (r->ev_eof) event_del(r->ev_eof);
    /* On EOF/timeout libevent orphans a request the user still holds (its connection becomes
     * NULL) and we must free it; otherwise the request is still queued on the dying connection
     * and libevent frees it right after this callback: forget it. */
    if (evhttp_request_get_connection(r->req) != NULL) r->req = NULL;
    if (r->ev_keepalive) event_del(r->ev_keepalive);
    KILN_DEBUG("http: client of %s went away", r->path);
    notify_close(r, KILN_HTTP_CLOSE_DISCONNECT);
}

/* libevent does not read from a connection while its request is being handled, so a client
 * that goes away is only noticed at the next write. This watcher notices it at once: EOF (or an
 * error) on the socket frees the connection, which runs conn_closed. Bytes of a pipelined next
 * request just stop the watch. */
static void on_readable(evutil_socket_t fd, short what, void *arg) {
    kiln_http_req *r = arg;
    (void)what;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    event_del(r->ev_eof);
    if (n > 0 || !r->conn) return;
    evhttp_connection_free(r->conn); /* calls conn_closed, which may free r */
}

static void req_timed_out(evutil_socket_t fd, short what, void *arg) {
    kiln_http_req *r = arg;
    (void)fd;
    (void)what;
    r->timed_out = true;
    KILN_INFO("http: %s timed out after %d s", r->path, r->h->opts.request_timeout_s);
    notify_close(r, KILN_HTTP_CLOSE_TIMEOUT);
}

const char *kiln_http_req_path(const kiln_http_req *r) { return r->path; }
unsigned kiln_http_req_method(const kiln_http_req *r) { return r->method; }
bool kiln_http_req_is_closed(const kiln_http_req *r) { return r->closed; }
void kiln_http_req_set_user(kiln_http_req *r, void *user) { r->user = user; }
const char *kiln_http_req_peer(kiln_http_req *r) {
    char *addr = NULL;
    ev_uint16_t port = 0;
    if (!r->conn) return NULL;
    evhttp_connection_get_peer(r->conn, &addr, &port);
    return addr;
}

void *kiln_http_req_user(const kiln_http_req *r) { return r->user; }
int kiln_http_n_active(const kiln_http *h) { return h->n_active; }

void kiln_http_req_on_close(kiln_http_req *r, kiln_http_close_fn fn, void *ctx) {
    r->on_close = fn;
    r->close_ctx = ctx;
}

const char *kiln_http_req_header(kiln_http_req *r, const char *name) {
    if (!r->req) return NULL;
    return evhttp_find_header(evhttp_request_get_input_headers(r->req), name);
}

const char *kiln_http_req_body(kiln_http_req *r, size_t *len) {
    if (!r->req) {
        *len = 0;
        return "";
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    /* A NUL appended once after the body makes it a C string; it is not counted in *len. */
    if (!r->body_terminated) {
        r->n_body = evbuffer_get_length(in);
        if (evbuffer_add(in, "", 1) != 0) {
            *len = 0;
            return "";
        }
        r->body_terminated = true;
    }
    *len = r->n_body;
    const char *p = (const char *)evbuffer_pullup(in, -1);
    if (!p) {
        *len = 0;
        return "";
    }
    return p;
}

kiln_err kiln_http_add_header(kiln_http_req *r, const char *name, const char *value) {
    if (r->streaming) return kiln_errf(KILN_ERR_INVALID, "http: headers already sent");
    if (!r->req || r->closed) return KILN_OK;
    if (evhttp_add_header(evhttp_request_get_output_headers(r->req), name, value) != 0)
        return kiln_errf(KILN_ERR_INVALID, "http: bad header %s", name);
    return KILN_OK;
}

static const char *reason_phrase(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

void kiln_http_reply(kiln_http_req *r, int status, const char *content_type, const char *body,
                     size_t len) {
    KILN_ASSERT(!r->streaming);
    struct evhttp_request *req = r->req;
    req_detach(r);
    if (!r->closed) {
        struct evkeyvalq *out = evhttp_request_get_output_headers(req);
        if (content_type) evhttp_add_header(out, "Content-Type", content_type);
        struct evbuffer *buf = evbuffer_new();
        if (buf && (len == 0 || evbuffer_add(buf, body, len) == 0)) {
            evhttp_send_reply(req, status, reason_phrase(status), buf);
        } else {
            evhttp_send_reply(req, 503, reason_phrase(503), NULL);
        }
        if (buf) evbuffer_free(buf);
    } else if (req) {
        evhttp_request_free(req); /* orphaned by libevent: ours to free */
    }
    req_unlink_free(r);
}

void kiln_http_reply_error(kiln_http_req *r, int status, const char *message, const char *type,
                           const char *param, const char *code) {
    kiln_buf b;
    kiln_buf_init(&b);
    if (r->h->opts.error_fn(status, message, type, param, code, &b) != KILN_OK || b.len == 0) {
        kiln_buf_reset(&b);
        kiln_buf_puts(&b, "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                          "\"param\":null,\"code\":null}}");
    }
    kiln_http_reply(r, status, "application/json", b.data ? b.data : "", b.len);
    kiln_buf_deinit(&b);
}

/* ---- SSE ---- */

static void sse_keepalive(evutil_socket_t fd, short what, void *arg) {
    kiln_http_req *r = arg;
    (void)fd;
    (void)what;
    if (r->closed) return;
    struct evbuffer *buf = evbuffer_new();
    if (!buf) return;
    evbuffer_add(buf, ": keep-alive\n\n", 14);
    evhttp_send_reply_chunk(r->req, buf);
    evbuffer_free(buf);
    struct timeval tv = {r->h->opts.sse_keepalive_s, 0};
    event_add(r->ev_keepalive, &tv);
}

void kiln_http_sse_start(kiln_http_req *r) {
    KILN_ASSERT(!r->streaming);
    r->streaming = true;
    if (r->closed) return;
    struct evkeyvalq *out = evhttp_request_get_output_headers(r->req);
    evhttp_add_header(out, "Content-Type", "text/event-stream; charset=utf-8");
    evhttp_add_header(out, "Cache-Control", "no-cache");
    evhttp_add_header(out, "X-Accel-Buffering", "no");
    evhttp_send_reply_start(r->req, 200, "OK");
    if (r->h->opts.sse_keepalive_s > 0) {
        r->ev_keepalive = event_new(r->h->base, -1, 0, sse_keepalive, r);
        if (r->ev_keepalive) {
            struct timeval tv = {r->h->opts.sse_keepalive_s, 0};
            event_add(r->ev_keepalive, &tv);
        }
    }
}

void kiln_http_sse_send(kiln_http_req *r, const char *data, size_t len) {
    KILN_ASSERT(r->streaming);
    if (r->closed) return;
    struct evbuffer *buf = evbuffer_new();
    if (!buf) return;
    if (evbuffer_add(buf, "data: ", 6) == 0 && evbuffer_add(buf, data, len) == 0 &&
        evbuffer_add(buf, "\n\n", 2) == 0)
        evhttp_send_reply_chunk(r->req, buf);
    evbuffer_free(buf);
    if (r->ev_keepalive) {
        struct timeval tv = {r->h->opts.sse_keepalive_s, 0};
        event_add(r->ev_keepalive, &tv);
    }
}

void kiln_http_sse_end(kiln_http_req *r) {
    KILN_ASSERT(r->streaming);
    struct evhttp_request *req = r->req;
    req_detach(r);
    if (r->ev_keepalive) event_del(r->ev_keepalive);
    if (!r->closed) evhttp_send_reply_end(req);
    else if (req) evhttp_request_free(req); /* orphaned by libevent: ours to free */
    req_unlink_free(r);
}

/* ---- dispatch ---- */

static unsigned method_of(struct evhttp_request *req) {
    switch (evhttp_request_get_command(req)) {
    case EVHTTP_REQ_GET: return KILN_HTTP_GET;
    case EVHTTP_REQ_POST: return KILN_HTTP_POST;
    default: return 0;
    }
}

static bool route_matches(const route *rt, const char *path) {
    if (rt->prefix) return strncmp(path, rt->path, rt->n_path) == 0;
    return strcmp(path, rt->path) == 0;
}

static bool authorized(kiln_http *h, kiln_http_req *r) {
    if (h->opts.n_api_keys == 0) return true;
    const char *a = kiln_http_req_header(r, "Authorization");
    if (!a || strncasecmp(a, "Bearer ", 7) != 0) return false;
    a += 7;
    while (*a == ' ') a++;
    size_t n = strlen(a);
    while (n > 0 && (a[n - 1] == ' ' || a[n - 1] == '\t')) n--;
    return kiln_http_key_ok(h->opts.api_keys, h->opts.n_api_keys, a, n);
}

static void dispatch(struct evhttp_request *req, void *arg) {
    kiln_http *h = arg;
    kiln_http_req *r = kiln_calloc(1, sizeof(*r));
    if (!r) {
        evhttp_send_error(req, 503, "Service Unavailable");
        return;
    }
    r->h = h;
    r->req = req;
    r->method = method_of(req);
    r->next = h->active;
    if (h->active) h->active->prev = r;
    h->active = r;
    h->n_active++;

    r->conn = evhttp_request_get_connection(req);
    if (r->conn) evhttp_connection_set_closecb(r->conn, conn_closed, r);

    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *raw = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!raw || !*raw) raw = "/";
    r->path = evhttp_uridecode(raw, 0, NULL);
    if (!r->path) {
        r->path = kiln_strndup("/", 1);
        if (!r->path) {
            kiln_http_reply(r, 503, "text/plain", "out of memory\n", 14);
            return;
        }
    } else {
        /* evhttp_uridecode allocates with libevent's allocator (malloc); keep ours uniform. */
        char *p = kiln_strndup(r->path, strlen(r->path));
        free(r->path);
        r->path = p;
        if (!p) {
            kiln_http_reply(r, 503, "text/plain", "out of memory\n", 14);
            return;
        }
    }

    size_t n_body = evbuffer_get_length(evhttp_request_get_input_buffer(req));
    if (n_body > h->opts.max_body_bytes) {
        char msg[128];
        snprintf(msg, sizeof(msg), "request body of %zu bytes exceeds the limit of %zu bytes",
                 n_body, h->opts.max_body_bytes);
        kiln_http_reply_error(r, 413, msg, "invalid_request_error", NULL, "request_too_large");
        return;
    }

    const route *hit = NULL;
    bool path_known = false;
    unsigned allowed = 0;
    for (int i = 0; i < h->n_routes; i++) {
        const route *rt = &h->routes[i];
        if (!route_matches(rt, r->path)) continue;
        path_known = true;
        allowed |= rt->methods;
        if (!hit && (rt->methods & r->method)) hit = rt;
    }
    if (!path_known) {
        char msg[256];
        snprintf(msg, sizeof(msg), "no route for %.200s", r->path);
        kiln_http_reply_error(r, 404, msg, "invalid_request_error", NULL, "not_found");
        return;
    }
    /* A protected path asks for the key before revealing which methods it allows. */
    bool needs_auth = hit ? hit->auth : false;
    for (int i = 0; !hit && i < h->n_routes; i++)
        if (route_matches(&h->routes[i], r->path) && h->routes[i].auth) needs_auth = true;
    if (needs_auth && !authorized(h, r)) {
        kiln_http_add_header(r, "WWW-Authenticate", "Bearer");
        kiln_http_reply_error(r, 401, "missing or invalid API key (Authorization: Bearer <key>)",
                              "authentication_error", NULL, "invalid_api_key");
        return;
    }
    if (!hit) {
        char allow[32] = "";
        if (allowed & KILN_HTTP_GET) strcat(allow, "GET");
        if (allowed & KILN_HTTP_POST) strcat(allow, *allow ? ", POST" : "POST");
        kiln_http_add_header(r, "Allow", allow);
        char msg[256];
        snprintf(msg, sizeof(msg), "method not allowed on %.200s (allowed: %s)", r->path, allow);
        kiln_http_reply_error(r, 405, msg, "invalid_request_error", NULL, "method_not_allowed");
        return;
    }
    if (h->opts.request_timeout_s > 0) {
        r->ev_timeout = event_new(h->base, -1, 0, req_timed_out, r);
        if (r->ev_timeout) {
            struct timeval tv = {h->opts.request_timeout_s, 0};
            event_add(r->ev_timeout, &tv);
        }
    }
    if (r->conn) {
        struct bufferevent *bev = evhttp_connection_get_bufferevent(r->conn);
        evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
        if (fd >= 0) {
            r->ev_eof = event_new(h->base, fd, EV_READ | EV_PERSIST, on_readable, r);
            if (r->ev_eof) event_add(r->ev_eof, NULL);
        }
    }
    hit->fn(r, hit->ctx);
}

kiln_err kiln_http_route(kiln_http *h, const char *path, unsigned methods, bool auth,
                         kiln_http_handler fn, void *ctx) {
    if (h->n_routes >= MAX_ROUTES) return kiln_errf(KILN_ERR_LIMIT, "http: too many routes");
    size_t n = strlen(path);
    bool prefix = n > 0 && path[n - 1] == '*';
    if (prefix) n--;
    char *p = kiln_strndup(path, n);
    if (!p) return KILN_ERR_NOMEM;
    h->routes[h->n_routes++] =
        (route){.path = p, .n_path = n, .prefix = prefix, .methods = methods, .auth = auth,
                .fn = fn, .ctx = ctx};
    return KILN_OK;
}

/* ---- lifetime ---- */

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    kiln_http *h = arg;
    (void)what;
    KILN_INFO("http: signal %d, shutting down", (int)sig);
    event_base_loopbreak(h->base);
}

kiln_err kiln_http_new(const kiln_http_opts *opts, kiln_http **out) {
    *out = NULL;
    KILN_ASSERT(opts->error_fn);
    static bool threads_on;
    if (!threads_on) {
        if (evthread_use_pthreads() != 0)
            return kiln_errf(KILN_ERR_NOMEM, "http: cannot enable libevent threading");
        threads_on = true;
    }
    kiln_err err = KILN_ERR_NOMEM;
    kiln_http *h = kiln_calloc(1, sizeof(*h));
    if (!h) return KILN_ERR_NOMEM;
    h->opts = *opts;
    h->host = kiln_strndup(opts->host ? opts->host : "127.0.0.1",
                           strlen(opts->host ? opts->host : "127.0.0.1"));
    if (!h->host) goto out_free;
    h->opts.host = h->host;
    if (opts->n_api_keys > 0) {
        h->keys = kiln_calloc((size_t)opts->n_api_keys, sizeof(char *));
        if (!h->keys) goto out_free;
        for (int i = 0; i < opts->n_api_keys; i++) {
            h->keys[i] = kiln_strndup(opts->api_keys[i], strlen(opts->api_keys[i]));
            if (!h->keys[i]) goto out_free;
        }
    }
    h->opts.api_keys = (const char *const *)h->keys;

    h->base = event_base_new();
    if (!h->base) goto out_free;
    h->http = evhttp_new(h->base);
    if (!h->http) goto out_free;
    /* libevent answers bodies over its own cap with a plain 413 before we see them; the cap sits
     * well above max_body_bytes so that normal oversize bodies get our JSON 413 while memory
     * stays bounded. */
    size_t hard_cap = opts->max_body_bytes;
    if (!kiln_mul_size(hard_cap, 4, &hard_cap) || hard_cap > ((size_t)1 << 40))
        hard_cap = (size_t)1 << 40;
    evhttp_set_max_body_size(h->http, (ev_ssize_t)hard_cap);
    evhttp_set_max_headers_size(h->http, (ev_ssize_t)opts->max_header_bytes);
    if (opts->read_timeout_s > 0) evhttp_set_timeout(h->http, opts->read_timeout_s);
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_default_content_type(h->http, "application/json");
    evhttp_set_gencb(h->http, dispatch, h);
    h->sock = evhttp_bind_socket_with_handle(h->http, h->host, (ev_uint16_t)opts->port);
    if (!h->sock) {
        err = kiln_errf(KILN_ERR_IO, "cannot listen on %s:%d (address in use or not local?)",
                        h->host, opts->port);
        goto out_free;
    }
    {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        evutil_socket_t fd = evhttp_bound_socket_get_fd(h->sock);
        h->port = opts->port;
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
            if (ss.ss_family == AF_INET) h->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
            else if (ss.ss_family == AF_INET6)
                h->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
    }
    h->ev_sigint = evsignal_new(h->base, SIGINT, on_signal, h);
    h->ev_sigterm = evsignal_new(h->base, SIGTERM, on_signal, h);
    if (!h->ev_sigint || !h->ev_sigterm) goto out_free;
    event_add(h->ev_sigint, NULL);
    event_add(h->ev_sigterm, NULL);
    signal(SIGPIPE, SIG_IGN);
    *out = h;
    return KILN_OK;
out_free:
    kiln_http_free(h);
    return err == KILN_ERR_NOMEM ? kiln_errf(KILN_ERR_NOMEM, "http: out of memory") : err;
}

void kiln_http_free(kiln_http *h) {
    if (!h) return;
    /* Requests still in flight: detach them from their connections first so that libevent's
     * teardown (which frees the connections and their requests) does not call back into them. */
    for (kiln_http_req *r = h->active; r; r = r->next) {
        req_detach(r);
        r->on_close = NULL;
    }
    if (h->http) evhttp_free(h->http);
    while (h->active) {
        if (h->active->closed && h->active->req) evhttp_request_free(h->active->req);
        req_unlink_free(h->active);
    }
    if (h->ev_sigint) event_free(h->ev_sigint);
    if (h->ev_sigterm) event_free(h->ev_sigterm);
    if (h->base) event_base_free(h->base);
    for (int i = 0; i < h->n_routes; i++) kiln_free(h->routes[i].path);
    if (h->keys)
        for (int i = 0; i < h->opts.n_api_keys; i++) kiln_free(h->keys[i]);
    kiln_free(h->keys);
    kiln_free(h->host);
    kiln_free(h);
}

struct event_base *kiln_http_base(kiln_http *h) { return h->base; }
int kiln_http_port(const kiln_http *h) { return h->port; }

kiln_err kiln_http_run(kiln_http *h) {
    event_base_dispatch(h->base);
    return KILN_OK;
}

void kiln_http_stop(kiln_http *h) { event_base_loopbreak(h->base); }
