/* template.h: kiln's Jinja2 chat-template engine. Parses a template once (kiln_template_parse) and
 * renders it many times with a JSON context, byte-identical to Python's jinja2 as Hugging Face
 * transformers configures it: ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
 * loopcontrols, {% generation %}, raise_exception, strftime_now, and transformers' tojson.
 * A parsed template is immutable: any thread may render it concurrently; each render allocates
 * from its own arena, bounded by kiln_template_limits. */
#ifndef KILN_TEMPLATE_H
#define KILN_TEMPLATE_H

#include <jansson.h>

#include "base/base.h"

typedef struct kiln_template kiln_template;

/* Bounds on one render; a hostile template stops with KILN_ERR_LIMIT when it crosses one. */
typedef struct kiln_template_limits {
    size_t max_output_bytes;    /* bytes of any rendered text (output, block set, macro) */
    size_t max_memory_bytes;    /* bytes of the render arena (all values of one render) */
    uint64_t max_iterations;    /* loop iterations + macro calls over the whole render */
    int max_depth;              /* nesting of macro calls / recursive loops / expressions */
    uint64_t max_time_ms;       /* wall-clock budget of one render; 0 = none */
} kiln_template_limits;

/* Defaults: 8 MiB output, 256 MiB memory, 2M iterations, depth 500, 10 s. */
void kiln_template_limits_default(kiln_template_limits *lim);

/* Parses `len` bytes of Jinja source into *out (free with kiln_template_free).
 * Returns KILN_OK, KILN_ERR_FORMAT (syntax; message "line N: ..." as jinja2 words it),
 * KILN_ERR_NOMEM. */
kiln_err kiln_template_parse(const char *src, size_t len, kiln_template **out);

/* Frees a parsed template; NULL is a no-op. */
void kiln_template_free(kiln_template *t);

/* Renders `t` with the variables of the JSON object `ctx` (borrowed; may be NULL) and appends the
 * text to `out`. `lim` may be NULL for the defaults. On error nothing is appended and the message
 * is set: KILN_ERR_RAISED (raise_exception; the message is the template's text exactly),
 * KILN_ERR_INVALID (runtime error, jinja2's wording, "line N: ..." prefix), KILN_ERR_FORMAT (an
 * unknown filter or test reached at run time), KILN_ERR_LIMIT, KILN_ERR_NOMEM.
 * strftime_now() uses the current time, or the fixed time in $KILN_TEMPLATE_NOW
 * ("YYYY-MM-DD HH:MM:SS", a test hook). */
kiln_err kiln_template_render(const kiln_template *t, const json_t *ctx,
                              const kiln_template_limits *lim, kiln_buf *out);

/* Renders a chat prompt the way transformers' apply_chat_template does: the context holds
 * `messages` (JSON array), `tools` (array, or None when NULL, as transformers passes it),
 * `documents` (None unless extra_kwargs sets it), `add_generation_prompt`, `bos_token`,
 * `eos_token` (absent when NULL), and every key of `extra_kwargs` (an object such as
 * chat_template_kwargs {"enable_thinking": false}; may be NULL). All json_t are borrowed.
 * Return codes as kiln_template_render. */
kiln_err kiln_template_render_chat(const kiln_template *t, const json_t *messages,
                                   const json_t *tools, bool add_generation_prompt,
                                   const char *bos_token, const char *eos_token,
                                   const json_t *extra_kwargs, kiln_buf *out);

#endif
