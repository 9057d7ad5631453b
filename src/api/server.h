/* server.h: kiln's OpenAI-compatible endpoints on a kiln_http server: /v1/chat/completions,
 * /v1/completions, /v1/models[/{id}], /health, /version, /tokenize, /detokenize, /metrics.
 * Binds api/ (JSON), template/ (chat prompts), tok/ (prompt ids) and the engine (generation),
 * whose events are drained on the server thread after the engine's notify wakes the loop.
 * Thread: the server (libevent) thread, except kiln_api_server_notify (engine thread). */
#ifndef KILN_API_SERVER_H
#define KILN_API_SERVER_H

#include "api/api.h"
#include "engine/engine.h"
#include "server/http.h"
#include "template/template.h"

typedef struct kiln_api_server kiln_api_server;

typedef struct kiln_api_server_opts {
    const char *model_name;         /* served model id (--served-model-name) */
    bool lenient;                   /* unknown request fields are ignored */
    const kiln_template *chat_template; /* borrowed; NULL = kiln's fallback chat format */
    const char *bos_token;          /* text given to templates as bos_token (may be NULL) */
    const char *eos_token;          /* likewise eos_token */
} kiln_api_server_opts;

/* Registers the routes on h. vocab and the template are borrowed and must outlive the server.
 * Requests answer 503 until kiln_api_server_set_engine. KILN_ERR_NOMEM. Caller owns *out. */
kiln_err kiln_api_server_new(kiln_http *h, const kiln_vocab *vocab,
                             const kiln_api_server_opts *opts, kiln_api_server **out);
/* Attaches the engine (created with kiln_api_server_notify and the server as its context). */
void kiln_api_server_set_engine(kiln_api_server *s, kiln_engine *e);
/* The engine's notify function: wakes the server loop to drain events. Any thread. */
void kiln_api_server_notify(void *server);
/* Frees the server and every request still in flight (call after kiln_engine_free, before
 * kiln_http_free). NULL is a no-op. */
void kiln_api_server_free(kiln_api_server *s);

#endif
