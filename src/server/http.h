/* http.h: kiln's HTTP/1.1 server glue over libevent's evhttp: listener, limits (body, header,
 * idle read, total request time), keep-alive, routing with 404/405, bearer-key auth (constant
 * time), SSE responses with keep-alive comments, and disconnect detection. JSON-free: error bodies
 * come from the caller's error_fn (the api layer). Spec: RFC 9110/9112, WHATWG SSE.
 * Thread: everything here runs on the server (libevent loop) thread, except kiln_http_stop. */
#ifndef KILN_SERVER_HTTP_H
#define KILN_SERVER_HTTP_H

#include <event2/event.h>

#include "base/base.h"

typedef struct kiln_http kiln_http;         /* one server: event base, listener, routes */
typedef struct kiln_http_req kiln_http_req; /* one request in flight (server thread) */

/* Writes the body of an error response (e.g. OpenAI's {"error":{...}}) into out. `type` and `code`
 * may be NULL. Must not fail except for memory (then a fixed body is sent). */
typedef kiln_err (*kiln_http_error_fn)(int status, const char *message, const char *type,
                                       const char *param, const char *code, kiln_buf *out);

typedef struct kiln_http_opts {
    const char *host;               /* bind address; default "127.0.0.1" */
    int port;                       /* 0 = an ephemeral port (see kiln_http_port) */
    size_t max_body_bytes;          /* larger bodies get 413; default 8 MiB */
    size_t max_header_bytes;        /* request line + headers; default 16 KiB */
    int read_timeout_s;             /* idle time allowed while reading/writing; default 60 */
    int request_timeout_s;          /* total time of one request, 0 = none; default 600 */
    int sse_keepalive_s;            /* ": keep-alive" comment after this idle time; default 15 */
    const char *const *api_keys;    /* n_api_keys accepted bearer keys (copied); none = no auth */
    int n_api_keys;
    kiln_http_error_fn error_fn;    /* required */
} kiln_http_opts;

/* Fills the defaults above. */
void kiln_http_opts_default(kiln_http_opts *o);

/* Creates the event base (with pthread support for cross-thread wake-ups) and binds the listener.
 * KILN_ERR_IO (cannot bind: the message names host:port), KILN_ERR_NOMEM. Caller owns *out. */
kiln_err kiln_http_new(const kiln_http_opts *opts, kiln_http **out);
/* Frees the server; requests still in flight are dropped without their handlers being called
 * again. NULL is a no-op. */
void kiln_http_free(kiln_http *h);
struct event_base *kiln_http_base(kiln_http *h);
int kiln_http_port(const kiln_http *h); /* the bound port */

/* A route handler: called once per request. It must end the request exactly once, now or later
 * on the server thread, with kiln_http_reply* or kiln_http_sse_end; after that `r` is invalid. */
typedef void (*kiln_http_handler)(kiln_http_req *r, void *ctx);

#define KILN_HTTP_GET 1u
#define KILN_HTTP_POST 2u

/* Adds a route: `path` matched exactly, or as a prefix when it ends with '*' ("/v1/models/\*").
 * methods is a mask of KILN_HTTP_GET/POST; a known path with another method answers 405.
 * auth: requires "Authorization: Bearer <key>" when keys are configured. Earlier routes win.
 * KILN_ERR_NOMEM, KILN_ERR_LIMIT (more than 64 routes). */
kiln_err kiln_http_route(kiln_http *h, const char *path, unsigned methods, bool auth,
                         kiln_http_handler fn, void *ctx);

/* Runs the event loop until kiln_http_stop or SIGINT/SIGTERM. KILN_OK. */
kiln_err kiln_http_run(kiln_http *h);
/* Makes kiln_http_run return; any thread. */
void kiln_http_stop(kiln_http *h);

/* ---- one request ---- */
const char *kiln_http_req_path(const kiln_http_req *r);   /* without the query string */
unsigned kiln_http_req_method(const kiln_http_req *r);    /* KILN_HTTP_GET/POST or 0 */
const char *kiln_http_req_header(kiln_http_req *r, const char *name); /* NULL when absent */
/* The request body (contiguous, NUL-terminated, valid until the request ends). */
const char *kiln_http_req_body(kiln_http_req *r, size_t *len);
/* The client's IP address (owned by the connection, valid while the request is), or NULL. */
const char *kiln_http_req_peer(kiln_http_req *r);
/* True once the client went away: replies are then discarded (a timeout does not close). */
bool kiln_http_req_is_closed(const kiln_http_req *r);
/* Per-request user pointer for the handler. */
void kiln_http_req_set_user(kiln_http_req *r, void *user);
void *kiln_http_req_user(const kiln_http_req *r);

typedef enum kiln_http_close_reason {
    KILN_HTTP_CLOSE_DISCONNECT, /* the client closed the connection */
    KILN_HTTP_CLOSE_TIMEOUT,    /* request_timeout_s expired */
} kiln_http_close_reason;
/* Called at most once, on the server thread, when the client goes away (or the request times out)
 * before the handler ended the request. The handler must still end it (the reply is discarded,
 * except after a timeout, when a non-streaming reply is still sent). */
typedef void (*kiln_http_close_fn)(kiln_http_req *r, kiln_http_close_reason why, void *ctx);
void kiln_http_req_on_close(kiln_http_req *r, kiln_http_close_fn fn, void *ctx);

/* Adds a response header (before the reply starts). KILN_ERR_INVALID if already started. */
kiln_err kiln_http_add_header(kiln_http_req *r, const char *name, const char *value);
/* Sends a whole response and ends the request. */
void kiln_http_reply(kiln_http_req *r, int status, const char *content_type, const char *body,
                     size_t len);
/* Sends an error response whose body comes from opts.error_fn, and ends the request. */
void kiln_http_reply_error(kiln_http_req *r, int status, const char *message, const char *type,
                           const char *param, const char *code);

/* Starts a 200 text/event-stream response; keep-alive comments follow while it is idle. */
void kiln_http_sse_start(kiln_http_req *r);
/* Sends one event "data: <data>\n\n" (data must not contain "\n\n"). No-op once closed. */
void kiln_http_sse_send(kiln_http_req *r, const char *data, size_t len);
/* Ends the stream and the request. */
void kiln_http_sse_end(kiln_http_req *r);

/* Constant-time comparison of a presented key against the accepted ones (time depends only on
 * the lengths of the configured keys). Exposed for tests. */
bool kiln_http_key_ok(const char *const *keys, int n_keys, const char *presented, size_t len);

/* Number of requests in flight (started, not ended). */
int kiln_http_n_active(const kiln_http *h);

#endif
