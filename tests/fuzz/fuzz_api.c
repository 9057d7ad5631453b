/* fuzz_api.c: libFuzzer driver for the api layer (`make fuzz` builds build/fuzz/fuzz_api). The
 * input is a request body, parsed as a chat and as a completions request (strict and lenient);
 * accepted requests have their prompt rendered in the fallback chat format and an error body
 * formatted from the parser's message. Any status is fine; crashes, leaks and sanitizer reports
 * (and a 5xx status for a non-memory failure) are the bugs. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (int k = 0; k < 4; k++) {
        kiln_api_parse_opts o = {.lenient = k & 1, .n_vocab = 1000};
        kiln_api_kind kind = k < 2 ? KILN_API_CHAT : KILN_API_COMPLETION;
        kiln_api_request r;
        kiln_api_error e;
        kiln_err err = kiln_api_parse_request(kind, (const char *)data, size, &o, &r, &e);
        kiln_buf b;
        kiln_buf_init(&b);
        if (err == KILN_OK) {
            if (kind == KILN_API_CHAT) (void)kiln_api_fallback_chat_prompt(r.messages, true, &b);
            kiln_api_request_deinit(&r);
        } else {
            if (err != KILN_ERR_NOMEM && e.status >= 500) abort();
            (void)kiln_api_error_body(e.status, e.message, e.type, e.param, e.code, &b);
        }
        kiln_buf_deinit(&b);
    }
    return 0;
}
