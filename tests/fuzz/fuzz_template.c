/* fuzz_template.c: libFuzzer driver for the template engine (`make fuzz` builds
 * build/fuzz/fuzz_template). The input is template source; when it parses it is rendered with a
 * fixed chat context under small limits. Any status is fine; crashes, leaks and sanitizer
 * reports are the bugs. Standalone build (needs only the template module):
 *   clang -std=c11 -D_GNU_SOURCE -Isrc -g -O1 -fsanitize=fuzzer,address,undefined \
 *     -o fuzz_template tests/fuzz/fuzz_template.c src/template/{builtins,parse,render,value}.c \
 *     src/base/base.c \
 *     -ljansson -lutf8proc -lm -pthread
 *   ./fuzz_template CORPUS_DIR   (seed it with ../shared/testdata/templates/\*.jinja) */
#include <stdint.h>
#include <string.h>

#include "template/template.h"

static const char *ctx_json =
    "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"add_generation_prompt\": true,"
    " \"messages\": [{\"role\": \"system\", \"content\": \"sys\"}, {\"role\": \"user\", \"content\": \"h\\u00e9\"},"
    " {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [{\"id\": \"c1\", \"type\": \"function\","
    " \"function\": {\"name\": \"f\", \"arguments\": {\"a\": [1, 2.5, null]}}}]},"
    " {\"role\": \"tool\", \"tool_call_id\": \"c1\", \"content\": \"42\"}],"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {}}}]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static json_t *ctx;
    if (!ctx) ctx = json_loads(ctx_json, 0, NULL);
    kiln_template_limits lim;
    kiln_template_limits_default(&lim);
    lim.max_iterations = 10000;
    lim.max_output_bytes = 64 << 10;
    lim.max_memory_bytes = 8 << 20;
    lim.max_time_ms = 1000;
    kiln_template *t = NULL;
    if (kiln_template_parse((const char *)data, size, &t) == KILN_OK) {
        kiln_buf out;
        kiln_buf_init(&out);
        (void)kiln_template_render(t, ctx, &lim, &out);
        kiln_buf_deinit(&out);
    }
    kiln_template_free(t);
    return 0;
}
