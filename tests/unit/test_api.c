/* test_api.c: the api layer: request parsing and validation (defaults as vLLM documents them,
 * every error path with its status and param), OpenAI response shapes (parsed back with jansson
 * and compared field by field with hand-written expectations), UTF-8 repair, error bodies, the
 * fallback chat format, the constant-time key check, and allocation-failure injection over the
 * parser and formatters (jansson allocates through kiln_malloc here). */
#include <jansson.h>

#include "api/api.h"
#include "model/gguf.h"
#include "server/http.h"
#include "test.h"

static const kiln_api_parse_opts strict = {.lenient = false, .n_vocab = 512};
static const kiln_api_parse_opts lenient = {.lenient = true, .n_vocab = 512};

static kiln_err parse(kiln_api_kind k, const char *body, const kiln_api_parse_opts *o,
                      kiln_api_request *r, kiln_api_error *e) {
    return kiln_api_parse_request(k, body, strlen(body), o, r, e);
}

/* Expects a 400 naming `param` (NULL = null) whose message contains `needle`. */
#define CHECK_BAD(kind, body, want_err, want_status, want_param, needle)                       \
    do {                                                                                       \
        kiln_api_request r_;                                                                   \
        kiln_api_error e_;                                                                     \
        kiln_err err_ = parse((kind), (body), &strict, &r_, &e_);                              \
        CHECK_MSG(err_ == (want_err), "%s: err %s, want %s (%s)", (body), kiln_err_name(err_),  \
                  kiln_err_name(want_err), e_.message);                                        \
        CHECK_EQ_INT(e_.status, (want_status));                                                \
        CHECK_STR(e_.param, (want_param) ? (const char *)(want_param) : "");                   \
        CHECK_MSG(strstr(e_.message, (needle)) != NULL, "%s: message '%s' lacks '%s'", (body),  \
                  e_.message, (needle));                                                       \
        if (err_ == KILN_OK) kiln_api_request_deinit(&r_);                                     \
    } while (0)

static void chat_defaults(void) {
    kiln_api_request r;
    kiln_api_error e;
    CHECK_EQ_INT(parse(KILN_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                       &strict, &r, &e),
                 KILN_OK);
    CHECK(r.model == NULL);
    CHECK_EQ_INT(r.n, 1);
    CHECK_EQ_INT(r.max_tokens, -1); /* chat: up to the context */
    CHECK_EQ_INT(r.min_tokens, 0);
    CHECK_EQ_INT(r.n_logprobs, -1);
    CHECK(r.skip_special_tokens);
    CHECK(r.add_generation_prompt);
    CHECK(!r.add_special_tokens); /* the template writes BOS */
    CHECK(!r.stream && !r.include_usage && !r.echo && !r.ignore_eos);
    CHECK_NEAR(r.sampling.temperature, 1.0, 0);
    CHECK_NEAR(r.sampling.top_p, 1.0, 0);
    CHECK_NEAR(r.sampling.repetition_penalty, 1.0, 0);
    CHECK(!r.sampling.has_seed);
    CHECK_EQ_INT(json_array_size(r.messages), 1);
    kiln_api_request_deinit(&r);
}

static void completion_defaults(void) {
    kiln_api_request r;
    kiln_api_error e;
    CHECK_EQ_INT(parse(KILN_API_COMPLETION, "{\"prompt\":\"abc\"}", &strict, &r, &e), KILN_OK);
    CHECK_EQ_INT(r.max_tokens, 16); /* OpenAI's and vLLM's legacy default */
    CHECK(r.add_special_tokens);
    CHECK_EQ_INT(r.n_prompts, 1);
    CHECK_STR(r.prompts[0].text, "abc");
    CHECK_EQ_INT(r.prompts[0].n_text, 3);
    kiln_api_request_deinit(&r);
}

static void chat_all_fields(void) {
    const char *body =
        "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"s\"},"
        "{\"role\":\"developer\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
        "{\"type\":\"text\",\"text\":\"b\"}]},{\"role\":\"user\",\"content\":\"u\",\"name\":\"x\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]},"
        "{\"role\":\"tool\",\"content\":\"r\",\"tool_call_id\":\"c1\"}],"
        "\"temperature\":0.5,\"top_p\":0.9,\"top_k\":40,\"min_p\":0.05,\"n\":3,\"max_tokens\":7,"
        "\"max_completion_tokens\":9,\"min_tokens\":2,\"stop\":[\"a\",\"bc\"],"
        "\"stop_token_ids\":[2,3],\"include_stop_str_in_output\":true,\"ignore_eos\":true,"
        "\"presence_penalty\":0.5,\"frequency_penalty\":-0.5,\"repetition_penalty\":1.1,"
        "\"logit_bias\":{\"5\":-100,\"7\":2.5},\"seed\":-1,\"logprobs\":true,\"top_logprobs\":3,"
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"user\":\"me\","
        "\"skip_special_tokens\":false,\"chat_template_kwargs\":{\"enable_thinking\":false}}";
    kiln_api_request r;
    kiln_api_error e;
    kiln_err err = parse(KILN_API_CHAT, body, &strict, &r, &e);
    CHECK_MSG(err == KILN_OK, "%s", e.message);
    if (err) return;
    CHECK_STR(r.model, "m");
    CHECK_STR(r.user, "me");
    CHECK_NEAR(r.sampling.temperature, 0.5, 1e-7);
    CHECK_NEAR(r.sampling.top_p, 0.9, 1e-7);
    CHECK_EQ_INT(r.sampling.top_k, 40);
    CHECK_NEAR(r.sampling.min_p, 0.05, 1e-7);
    CHECK_EQ_INT(r.n, 3);
    CHECK_EQ_INT(r.max_tokens, 9); /* max_completion_tokens wins */
    CHECK_EQ_INT(r.min_tokens, 2);
    CHECK_EQ_INT(r.n_stop, 2);
    CHECK_STR(r.stop[1], "bc");
    CHECK_EQ_INT(r.n_stop_token_ids, 2);
    CHECK_EQ_INT(r.stop_token_ids[1], 3);
    CHECK(r.include_stop_str_in_output && r.ignore_eos && !r.skip_special_tokens);
    CHECK_NEAR(r.sampling.presence_penalty, 0.5, 1e-7);
    CHECK_NEAR(r.sampling.frequency_penalty, -0.5, 1e-7);
    CHECK_NEAR(r.sampling.repetition_penalty, 1.1, 1e-6);
    CHECK_EQ_INT(r.sampling.n_logit_bias, 2);
    CHECK_EQ_INT(r.sampling.logit_bias[0].token, 5);
    CHECK_NEAR(r.sampling.logit_bias[0].bias, -100, 0);
    CHECK(r.sampling.has_seed);
    CHECK(r.sampling.seed == UINT64_MAX);
    CHECK_EQ_INT(r.n_logprobs, 3);
    CHECK_EQ_INT(r.sampling.n_top_logprobs, 3);
    CHECK(r.stream && r.include_usage);
    CHECK(json_is_false(json_object_get(r.chat_template_kwargs, "enable_thinking")));
    /* normalized messages */
    CHECK_EQ_INT(json_array_size(r.messages), 5);
    json_t *m1 = json_array_get(r.messages, 1);
    CHECK_STR(json_string_value(json_object_get(m1, "role")), "system"); /* developer */
    CHECK_STR(json_string_value(json_object_get(m1, "content")), "a\nb");
    json_t *m3 = json_array_get(r.messages, 3);
    CHECK(json_is_null(json_object_get(m3, "content")));
    CHECK(json_is_array(json_object_get(m3, "tool_calls")));
    CHECK_STR(json_string_value(json_object_get(json_array_get(r.messages, 4), "tool_call_id")),
              "c1");
    CHECK_STR(json_string_value(json_object_get(json_array_get(r.messages, 2), "name")), "x");
    kiln_api_request_deinit(&r);
}

static void prompt_forms(void) {
    kiln_api_request r;
    kiln_api_error e;
    CHECK_EQ_INT(parse(KILN_API_COMPLETION, "{\"prompt\":[\"a\",\"bb\"]}", &strict, &r, &e),
                 KILN_OK);
    CHECK_EQ_INT(r.n_prompts, 2);
    CHECK_STR(r.prompts[1].text, "bb");
    kiln_api_request_deinit(&r);
    CHECK_EQ_INT(parse(KILN_API_COMPLETION, "{\"prompt\":[1,403,407]}", &strict, &r, &e), KILN_OK);
    CHECK_EQ_INT(r.n_prompts, 1);
    CHECK(r.prompts[0].text == NULL);
    CHECK_EQ_INT(r.prompts[0].n_ids, 3);
    CHECK_EQ_INT(r.prompts[0].ids[2], 407);
    kiln_api_request_deinit(&r);
    CHECK_EQ_INT(parse(KILN_API_COMPLETION, "{\"prompt\":[[1,2],[3],\"x\"],\"n\":2}", &strict, &r,
                       &e),
                 KILN_OK);
    CHECK_EQ_INT(r.n_prompts, 3);
    CHECK_EQ_INT(r.prompts[1].ids[0], 3);
    CHECK_STR(r.prompts[2].text, "x");
    kiln_api_request_deinit(&r);
    CHECK_EQ_INT(parse(KILN_API_COMPLETION, "{\"prompt\":\"a\",\"logprobs\":5,\"echo\":true}",
                       &strict, &r, &e),
                 KILN_OK);
    CHECK_EQ_INT(r.n_logprobs, 5);
    CHECK(r.echo);
    kiln_api_request_deinit(&r);
}

static void extra_body_merge(void) {
    kiln_api_request r;
    kiln_api_error e;
    CHECK_EQ_INT(parse(KILN_API_COMPLETION,
                       "{\"prompt\":\"a\",\"top_k\":5,\"extra_body\":{\"top_k\":7,\"min_tokens\":3,"
                       "\"max_tokens\":4}}",
                       &strict, &r, &e),
                 KILN_OK);
    CHECK_EQ_INT(r.sampling.top_k, 7); /* extra_body overrides */
    CHECK_EQ_INT(r.min_tokens, 3);
    kiln_api_request_deinit(&r);
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":\"a\",\"extra_body\":{\"bogus\":1}}",
              KILN_ERR_INVALID, 400, "bogus", "bogus");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":\"a\",\"extra_body\":3}", KILN_ERR_INVALID, 400,
              "extra_body", "object");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":\"a\",\"extra_body\":{\"extra_body\":{}}}",
              KILN_ERR_INVALID, 400, "extra_body", "extra_body");
}

static void malformed(void) {
    CHECK_BAD(KILN_API_CHAT, "", KILN_ERR_FORMAT, 400, NULL, "invalid JSON");
    CHECK_BAD(KILN_API_CHAT, "{\"messages\":", KILN_ERR_FORMAT, 400, NULL, "invalid JSON");
    CHECK_BAD(KILN_API_CHAT, "[1,2]", KILN_ERR_FORMAT, 400, NULL, "JSON object");
    CHECK_BAD(KILN_API_CHAT, "\"x\"", KILN_ERR_FORMAT, 400, NULL, "JSON object");
    /* invalid UTF-8 inside a string, and a lone surrogate escape */
    CHECK_BAD(KILN_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}",
              KILN_ERR_FORMAT, 400, NULL, "invalid JSON");
    CHECK_BAD(KILN_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}",
              KILN_ERR_FORMAT, 400, NULL, "invalid JSON");
    CHECK_BAD(KILN_API_CHAT, "{\"a\":1,\"a\":2}", KILN_ERR_FORMAT, 400, NULL, "duplicate");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":\"a\",\"n\":123456789012345678901234567890}",
              KILN_ERR_FORMAT, 400, NULL, "invalid JSON");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":\"a\",\"temperature\":1e999}", KILN_ERR_FORMAT, 400,
              NULL, "invalid JSON");
    /* embedded NUL bytes in the body */
    kiln_api_request r;
    kiln_api_error e;
    const char nul[] = "{\"prompt\":\"a\0b\"}";
    CHECK_EQ_INT(kiln_api_parse_request(KILN_API_COMPLETION, nul, sizeof(nul) - 1, &strict, &r, &e),
                 KILN_ERR_FORMAT);
}

static void wrong_types_and_ranges(void) {
    const char *m = "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]";
    struct {
        const char *field;
        const char *value;
        const char *needle;
    } cases[] = {
        {"temperature", "\"hot\"", "number"},   {"temperature", "-0.5", "temperature"},
        {"top_p", "0", "top_p"},                {"top_p", "1.5", "top_p"},
        {"top_k", "1.5", "integer"},            {"top_k", "true", "integer"},
        {"min_p", "2", "min_p"},                {"n", "0", "[1, 128]"},
        {"n", "129", "[1, 128]"},               {"n", "-3", "[1, 128]"},
        {"n", "\"2\"", "integer"},              {"max_tokens", "0", "max_tokens"},
        {"max_tokens", "-1", "max_tokens"},     {"max_tokens", "99999999999", "max_tokens"},
        {"max_completion_tokens", "0", "max_completion_tokens"},
        {"min_tokens", "-1", "min_tokens"},     {"stop", "5", "string"},
        {"stop", "[1]", "stop[0]: must be a string"},              {"stop", "\"\"", "empty"},
        {"stop_token_ids", "[512]", "stop_token_ids[0]"},
        {"stop_token_ids", "\"x\"", "array"},   {"include_stop_str_in_output", "1", "boolean"},
        {"ignore_eos", "\"yes\"", "boolean"},   {"presence_penalty", "3", "presence_penalty"},
        {"frequency_penalty", "-2.5", "frequency_penalty"},
        {"repetition_penalty", "0", "repetition_penalty"},
        {"logit_bias", "[]", "object"},         {"logit_bias", "{\"abc\":1}", "token id"},
        {"logit_bias", "{\"999\":1}", "token id"}, {"logit_bias", "{\"1\":\"x\"}", "number"},
        {"seed", "1.5", "integer"},             {"logprobs", "3", "boolean"},
        {"top_logprobs", "21", "top_logprobs"}, {"top_logprobs", "-1", "top_logprobs"},
        {"stream", "\"true\"", "boolean"},      {"user", "5", "string"},
        {"model", "5", "string"},               {"chat_template_kwargs", "[]", "object"},
        {"add_generation_prompt", "0", "boolean"},
        {"messages", "{}", "array"},            {"messages", "[]", "empty"},
    };
    for (size_t i = 0; i < KILN_ARRAY_LEN(cases); i++) {
        char body[512];
        if (!strcmp(cases[i].field, "messages"))
            snprintf(body, sizeof(body), "{\"messages\":%s}", cases[i].value);
        else
            snprintf(body, sizeof(body), "{%s,\"%s\":%s}", m, cases[i].field, cases[i].value);
        /* param is the field, or the element for per-element errors */
        const char *param = strncmp(cases[i].needle, cases[i].field, strlen(cases[i].field)) == 0 &&
                                    cases[i].needle[strlen(cases[i].field)] == '['
                                ? "" : cases[i].field;
        char elem[64];
        if (!*param) {
            snprintf(elem, sizeof(elem), "%.*s", (int)strcspn(cases[i].needle, ":"),
                     cases[i].needle);
            param = elem;
        }
        CHECK_BAD(KILN_API_CHAT, body, KILN_ERR_INVALID, 400, param, cases[i].needle);
    }
    CHECK_BAD(KILN_API_CHAT,
              "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"top_logprobs\":2}",
              KILN_ERR_INVALID, 400, "top_logprobs", "logprobs");
    CHECK_BAD(KILN_API_CHAT,
              "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream_options\":"
              "{\"include_usage\":true}}",
              KILN_ERR_INVALID, 400, "stream_options", "stream");
    CHECK_BAD(KILN_API_CHAT,
              "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true,"
              "\"stream_options\":{\"include_usage\":1}}",
              KILN_ERR_INVALID, 400, "stream_options.include_usage", "boolean");
    CHECK_BAD(KILN_API_CHAT,
              "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":3,"
              "\"min_tokens\":4}",
              KILN_ERR_INVALID, 400, "min_tokens", "max_tokens");
    /* completions-only fields */
    CHECK_BAD(KILN_API_COMPLETION, "{}", KILN_ERR_INVALID, 400, "prompt", "required");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":[]}", KILN_ERR_INVALID, 400, "prompt", "empty");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":5}", KILN_ERR_INVALID, 400, "prompt", "string");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":[1,-2]}", KILN_ERR_INVALID, 400, "prompt[1]",
              "[0, 511]");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":[1,512]}", KILN_ERR_INVALID, 400, "prompt[1]",
              "[0, 511]");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":[\"a\",[]]}", KILN_ERR_INVALID, 400, "prompt[1]",
              "empty");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":[\"a\",{}]}", KILN_ERR_INVALID, 400, "prompt[1]",
              "string");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":\"a\",\"logprobs\":true}", KILN_ERR_INVALID, 400,
              "logprobs", "integer");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":\"a\",\"logprobs\":21}", KILN_ERR_INVALID, 400,
              "logprobs", "[0, 20]");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":\"a\",\"echo\":\"no\"}", KILN_ERR_INVALID, 400,
              "echo", "boolean");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":\"a\",\"top_logprobs\":1}", KILN_ERR_INVALID, 400,
              "top_logprobs", "Unrecognized");
    CHECK_BAD(KILN_API_COMPLETION, "{\"prompt\":\"a\",\"messages\":[]}", KILN_ERR_INVALID, 400,
              "messages", "Unrecognized");
    /* an integral real is an integer, as in pydantic */
    kiln_api_request r;
    kiln_api_error e;
    CHECK_EQ_INT(parse(KILN_API_COMPLETION, "{\"prompt\":\"a\",\"max_tokens\":5.0}", &strict, &r,
                       &e),
                 KILN_OK);
    CHECK_EQ_INT(r.max_tokens, 5);
    kiln_api_request_deinit(&r);
    /* null means "the default" */
    CHECK_EQ_INT(parse(KILN_API_COMPLETION,
                       "{\"prompt\":\"a\",\"max_tokens\":null,\"stop\":null,\"seed\":null,"
                       "\"response_format\":null}",
                       &strict, &r, &e),
                 KILN_OK);
    CHECK_EQ_INT(r.max_tokens, 16);
    kiln_api_request_deinit(&r);
}

static void messages_errors(void) {
    CHECK_BAD(KILN_API_CHAT, "{\"messages\":[5]}", KILN_ERR_INVALID, 400, "messages[0]", "object");
    CHECK_BAD(KILN_API_CHAT, "{\"messages\":[{\"content\":\"x\"}]}", KILN_ERR_INVALID, 400,
              "messages[0].role", "required");
    CHECK_BAD(KILN_API_CHAT, "{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}",
              KILN_ERR_INVALID, 400, "messages[0].role", "one of");
    CHECK_BAD(KILN_API_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", KILN_ERR_INVALID, 400,
              "messages[0].content", "required");
    CHECK_BAD(KILN_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", KILN_ERR_INVALID,
              400, "messages[0].content", "string");
    CHECK_BAD(KILN_API_CHAT,
              "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
              "\"image_url\":{}}]}]}",
              KILN_ERR_UNSUPPORTED, 400, "messages[0].content[0].type", "not supported yet");
    CHECK_BAD(KILN_API_CHAT,
              "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":1}]}]}",
              KILN_ERR_INVALID, 400, "messages[0].content[0].text", "string");
    CHECK_BAD(KILN_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"foo\":1}]}",
              KILN_ERR_INVALID, 400, "messages[0].foo", "Unrecognized");
    CHECK_BAD(KILN_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"name\":1}]}",
              KILN_ERR_INVALID, 400, "messages[0].name", "string");
    CHECK_BAD(KILN_API_CHAT,
              "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"tool_calls\":[]}]}",
              KILN_ERR_INVALID, 400, "messages[0].tool_calls", "assistant");
    CHECK_BAD(KILN_API_CHAT,
              "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"continue_final_message\":"
              "true,\"add_generation_prompt\":false}",
              KILN_ERR_INVALID, 400, "continue_final_message", "assistant");
    CHECK_BAD(KILN_API_CHAT,
              "{\"messages\":[{\"role\":\"assistant\",\"content\":\"x\"}],"
              "\"continue_final_message\":true}",
              KILN_ERR_INVALID, 400, "continue_final_message", "add_generation_prompt");
}

static void unknown_and_later_fields(void) {
    const char *m = "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]";
    char body[256];
    snprintf(body, sizeof(body), "{%s,\"frobnicate\":1}", m);
    CHECK_BAD(KILN_API_CHAT, body, KILN_ERR_INVALID, 400, "frobnicate",
              "Unrecognized request argument supplied: frobnicate");
    kiln_api_request r;
    kiln_api_error e;
    CHECK_EQ_INT(parse(KILN_API_CHAT, body, &lenient, &r, &e), KILN_OK);
    kiln_api_request_deinit(&r);
    const char *later[] = {"response_format", "tools", "tool_choice", "guided_json",
                           "guided_regex", "best_of", "suffix", "prompt_logprobs"};
    for (size_t i = 0; i < KILN_ARRAY_LEN(later); i++) {
        snprintf(body, sizeof(body), "{%s,\"%s\":{\"type\":\"x\"}}", m, later[i]);
        CHECK_BAD(KILN_API_CHAT, body, KILN_ERR_UNSUPPORTED, 400, later[i], "not supported yet");
        /* also with --lenient: never silently ignored */
        CHECK_EQ_INT(parse(KILN_API_CHAT, body, &lenient, &r, &e), KILN_ERR_UNSUPPORTED);
    }
    /* response_format {"type":"text"} is what kiln produces: accepted; json_object is not */
    snprintf(body, sizeof(body), "{%s,\"response_format\":{\"type\":\"text\"}}", m);
    CHECK_EQ_INT(parse(KILN_API_CHAT, body, &strict, &r, &e), KILN_OK);
    kiln_api_request_deinit(&r);
    snprintf(body, sizeof(body), "{%s,\"response_format\":{\"type\":\"json_object\"}}", m);
    CHECK_BAD(KILN_API_CHAT, body, KILN_ERR_UNSUPPORTED, 400, "response_format", "not supported");
    snprintf(body, sizeof(body), "{%s,\"echo\":true}", m);
    CHECK_BAD(KILN_API_CHAT, body, KILN_ERR_UNSUPPORTED, 400, "echo", "not supported yet");
    snprintf(body, sizeof(body), "{%s,\"stream\":true,\"stream_options\":{\"x\":1}}", m);
    CHECK_BAD(KILN_API_CHAT, body, KILN_ERR_INVALID, 400, "stream_options.x", "Unrecognized");
}

/* ---- responses ---- */

static kiln_vocab *load_vocab(void) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/models/stories260K.gguf", test_data_dir());
    kiln_gguf *g = NULL;
    kiln_vocab *v = NULL;
    if (kiln_gguf_open(path, &g) != KILN_OK) return NULL;
    kiln_vocab_load(g, &v);
    kiln_gguf_close(g);
    return v;
}

static json_t *load(const kiln_buf *b) {
    json_error_t je;
    json_t *o = json_loadb(b->data, b->len, 0, &je);
    CHECK_MSG(o != NULL, "%s: %s", b->data ? b->data : "(null)", je.text);
    return o;
}

#define JSTR(o, k) json_string_value(json_object_get((o), (k)))
#define JINT(o, k) json_integer_value(json_object_get((o), (k)))

static void chat_response_shape(void) {
    kiln_vocab *v = load_vocab();
    CHECK(v != NULL);
    if (!v) return;
    /* README of the test data: "Once upon a time" = [1, 403, 407, 261, 378]: 261 = " a" */
    kiln_api_lp lps[1] = {{.token = 261, .logprob = -0.25f, .has_logprob = true, .n_top = 2,
                           .top = {{261, -0.25f}, {378, -1.5f}}}};
    kiln_api_choice c[2] = {
        {.index = 0, .text = "Hello", .n_text = 5, .finish = KILN_FINISH_STOP,
         .has_logprobs = true, .lps = lps, .n_lps = 1},
        {.index = 1, .text = "x\xff", .n_text = 2, .finish = KILN_FINISH_LENGTH},
    };
    kiln_api_meta m = {.id = "chatcmpl-abc", .created = 1700000000, .model = "mod"};
    kiln_api_usage u = {.prompt_tokens = 7, .completion_tokens = 3, .cached_tokens = 5};
    kiln_buf b;
    kiln_buf_init(&b);
    CHECK_EQ_INT(kiln_api_format_chat(&m, c, 2, &u, v, &b), KILN_OK);
    json_t *o = load(&b);
    if (o) {
        CHECK_STR(JSTR(o, "id"), "chatcmpl-abc");
        CHECK_STR(JSTR(o, "object"), "chat.completion");
        CHECK_EQ_INT(JINT(o, "created"), 1700000000);
        CHECK_STR(JSTR(o, "model"), "mod");
        CHECK(json_is_string(json_object_get(o, "system_fingerprint")));
        json_t *ch = json_object_get(o, "choices");
        CHECK_EQ_INT(json_array_size(ch), 2);
        json_t *c0 = json_array_get(ch, 0), *c1 = json_array_get(ch, 1);
        CHECK_EQ_INT(JINT(c0, "index"), 0);
        CHECK_STR(JSTR(c0, "finish_reason"), "stop");
        CHECK_STR(JSTR(c1, "finish_reason"), "length");
        json_t *msg = json_object_get(c0, "message");
        CHECK_STR(JSTR(msg, "role"), "assistant");
        CHECK_STR(JSTR(msg, "content"), "Hello");
        CHECK_STR(JSTR(json_object_get(c1, "message"), "content"), "x\xEF\xBF\xBD");
        CHECK(json_is_null(json_object_get(c1, "logprobs")));
        json_t *content = json_object_get(json_object_get(c0, "logprobs"), "content");
        CHECK_EQ_INT(json_array_size(content), 1);
        json_t *t0 = json_array_get(content, 0);
        CHECK_STR(JSTR(t0, "token"), " a");
        CHECK_NEAR(json_real_value(json_object_get(t0, "logprob")), -0.25, 1e-9);
        json_t *bytes = json_object_get(t0, "bytes");
        CHECK_EQ_INT(json_array_size(bytes), 2);
        CHECK_EQ_INT(json_integer_value(json_array_get(bytes, 0)), 32);
        CHECK_EQ_INT(json_integer_value(json_array_get(bytes, 1)), 97);
        json_t *tops = json_object_get(t0, "top_logprobs");
        CHECK_EQ_INT(json_array_size(tops), 2);
        CHECK_STR(JSTR(json_array_get(tops, 1), "token"), " time");
        CHECK_NEAR(json_real_value(json_object_get(json_array_get(tops, 1), "logprob")), -1.5,
                   1e-9);
        json_t *us = json_object_get(o, "usage");
        CHECK_EQ_INT(JINT(us, "prompt_tokens"), 7);
        CHECK_EQ_INT(JINT(us, "completion_tokens"), 3);
        CHECK_EQ_INT(JINT(us, "total_tokens"), 10);
        CHECK_EQ_INT(JINT(json_object_get(us, "prompt_tokens_details"), "cached_tokens"), 5);
        json_decref(o);
    }
    kiln_buf_deinit(&b);
    kiln_vocab_free(v);
}

static void completion_response_shape(void) {
    kiln_vocab *v = load_vocab();
    if (!v) return;
    /* echo layout: the first prompt token has null logprob and null top_logprobs */
    kiln_api_lp lps[3] = {
        {.token = 1, .has_logprob = false},
        {.token = 403, .logprob = -2.0f, .has_logprob = true, .n_top = 1, .top = {{403, -2.0f}}},
        {.token = 261, .logprob = -INFINITY, .has_logprob = true, .n_top = 0},
    };
    kiln_api_choice c = {.index = 0, .text = "Once a", .n_text = 6, .finish = KILN_FINISH_LENGTH,
                         .has_logprobs = true, .lps = lps, .n_lps = 3};
    kiln_api_meta m = {.id = "cmpl-1", .created = 5, .model = "mod"};
    kiln_api_usage u = {.prompt_tokens = 2, .completion_tokens = 1};
    kiln_buf b;
    kiln_buf_init(&b);
    CHECK_EQ_INT(kiln_api_format_completion(&m, &c, 1, &u, v, &b), KILN_OK);
    json_t *o = load(&b);
    if (o) {
        CHECK_STR(JSTR(o, "object"), "text_completion");
        json_t *c0 = json_array_get(json_object_get(o, "choices"), 0);
        CHECK_STR(JSTR(c0, "text"), "Once a");
        CHECK_STR(JSTR(c0, "finish_reason"), "length");
        json_t *lp = json_object_get(c0, "logprobs");
        json_t *toks = json_object_get(lp, "tokens"), *tlp = json_object_get(lp, "token_logprobs"),
               *top = json_object_get(lp, "top_logprobs"), *off = json_object_get(lp, "text_offset");
        CHECK_EQ_INT(json_array_size(toks), 3);
        CHECK_STR(json_string_value(json_array_get(toks, 0)), "<s>");
        CHECK_STR(json_string_value(json_array_get(toks, 1)), " Once");
        CHECK(json_is_null(json_array_get(tlp, 0)));
        CHECK_NEAR(json_real_value(json_array_get(tlp, 1)), -2.0, 0);
        CHECK_NEAR(json_real_value(json_array_get(tlp, 2)), -9999.0, 0); /* -inf, as vLLM */
        CHECK(json_is_null(json_array_get(top, 0)));
        CHECK_NEAR(json_real_value(json_object_get(json_array_get(top, 1), " Once")), -2.0, 0);
        CHECK_EQ_INT(json_object_size(json_array_get(top, 2)), 0);
        /* offsets: "<s>" is 3 characters, " Once" 5 */
        CHECK_EQ_INT(json_integer_value(json_array_get(off, 0)), 0);
        CHECK_EQ_INT(json_integer_value(json_array_get(off, 1)), 3);
        CHECK_EQ_INT(json_integer_value(json_array_get(off, 2)), 8);
        json_decref(o);
    }
    kiln_buf_deinit(&b);
    kiln_vocab_free(v);
}

static void chunk_shapes(void) {
    kiln_api_meta m = {.id = "chatcmpl-z", .created = 9, .model = "mod"};
    kiln_api_choice c = {.index = 2, .text = "", .n_text = 0};
    kiln_buf b;
    kiln_buf_init(&b);
    CHECK_EQ_INT(kiln_api_format_chat_chunk(&m, &c, true, true, NULL, &b), KILN_OK);
    json_t *o = load(&b);
    if (o) {
        CHECK_STR(JSTR(o, "object"), "chat.completion.chunk");
        json_t *c0 = json_array_get(json_object_get(o, "choices"), 0);
        CHECK_EQ_INT(JINT(c0, "index"), 2);
        json_t *d = json_object_get(c0, "delta");
        CHECK_STR(JSTR(d, "role"), "assistant");
        CHECK_STR(JSTR(d, "content"), "");
        CHECK(json_is_null(json_object_get(c0, "finish_reason")));
        CHECK(json_is_null(json_object_get(c0, "logprobs")));
        CHECK(json_object_get(o, "usage") && json_is_null(json_object_get(o, "usage")));
        json_decref(o);
    }
    /* the finish chunk: empty delta, finish_reason, no usage member when include_usage is off */
    kiln_buf_reset(&b);
    c.finish = KILN_FINISH_STOP;
    CHECK_EQ_INT(kiln_api_format_chat_chunk(&m, &c, false, false, NULL, &b), KILN_OK);
    o = load(&b);
    if (o) {
        json_t *c0 = json_array_get(json_object_get(o, "choices"), 0);
        CHECK_EQ_INT(json_object_size(json_object_get(c0, "delta")), 0);
        CHECK_STR(JSTR(c0, "finish_reason"), "stop");
        CHECK(json_object_get(o, "usage") == NULL);
        json_decref(o);
    }
    kiln_buf_reset(&b);
    kiln_api_usage u = {.prompt_tokens = 4, .completion_tokens = 6};
    CHECK_EQ_INT(kiln_api_format_usage_chunk(KILN_API_COMPLETION, &m, &u, &b), KILN_OK);
    o = load(&b);
    if (o) {
        CHECK_STR(JSTR(o, "object"), "text_completion");
        CHECK_EQ_INT(json_array_size(json_object_get(o, "choices")), 0);
        CHECK(json_is_array(json_object_get(o, "choices")));
        CHECK_EQ_INT(JINT(json_object_get(o, "usage"), "total_tokens"), 10);
        json_decref(o);
    }
    kiln_buf_reset(&b);
    kiln_api_choice t = {.index = 0, .text = "ab", .n_text = 2};
    CHECK_EQ_INT(kiln_api_format_completion_chunk(&m, &t, false, NULL, &b), KILN_OK);
    o = load(&b);
    if (o) {
        json_t *c0 = json_array_get(json_object_get(o, "choices"), 0);
        CHECK_STR(JSTR(c0, "text"), "ab");
        CHECK(json_is_null(json_object_get(c0, "finish_reason")));
        json_decref(o);
    }
    kiln_buf_deinit(&b);
}

static void error_body(void) {
    kiln_buf b;
    kiln_buf_init(&b);
    CHECK_EQ_INT(kiln_api_error_body(400, "bad \"x\"\xff", "invalid_request_error", "n", NULL, &b),
                 KILN_OK);
    CHECK_STR(b.data, "{\"error\":{\"message\":\"bad \\\"x\\\"\xEF\xBF\xBD\",\"type\":"
                      "\"invalid_request_error\",\"param\":\"n\",\"code\":null}}");
    kiln_buf_reset(&b);
    CHECK_EQ_INT(kiln_api_error_body(401, "no", "authentication_error", NULL, "invalid_api_key",
                                     &b),
                 KILN_OK);
    CHECK_STR(b.data, "{\"error\":{\"message\":\"no\",\"type\":\"authentication_error\","
                      "\"param\":null,\"code\":\"invalid_api_key\"}}");
    kiln_buf_deinit(&b);
}

static void utf8_repair(void) {
    struct {
        const char *in;
        size_t n;
        const char *out;
    } cases[] = {
        {"abc", 3, "abc"},
        {"\xc3\xa9", 2, "\xc3\xa9"},
        {"\xf0\x9f\x98\x80", 4, "\xf0\x9f\x98\x80"},
        {"\xff", 1, "\xEF\xBF\xBD"},
        {"\xc0\xaf", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},              /* overlong */
        {"\xed\xa0\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* surrogate */
        {"\xe2\x82", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},              /* truncated */
        {"a\0b", 3, "a\xEF\xBF\xBD" "b"},
    };
    for (size_t i = 0; i < KILN_ARRAY_LEN(cases); i++) {
        kiln_buf b;
        kiln_buf_init(&b);
        CHECK_EQ_INT(kiln_api_utf8_lossy(cases[i].in, cases[i].n, &b), KILN_OK);
        CHECK_STR(b.data, cases[i].out);
        kiln_buf_deinit(&b);
    }
}

static void fallback_prompt(void) {
    json_t *ms = json_loads("[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                            "{\"role\":\"user\",\"content\":\"Hi\"},"
                            "{\"role\":\"assistant\",\"content\":null}]",
                            0, NULL);
    kiln_buf b;
    kiln_buf_init(&b);
    CHECK_EQ_INT(kiln_api_fallback_chat_prompt(ms, true, &b), KILN_OK);
    CHECK_STR(b.data, "system: Be brief.\nuser: Hi\nassistant: \nassistant:");
    kiln_buf_reset(&b);
    CHECK_EQ_INT(kiln_api_fallback_chat_prompt(ms, false, &b), KILN_OK);
    CHECK_STR(b.data, "system: Be brief.\nuser: Hi\nassistant: \n");
    kiln_buf_deinit(&b);
    json_decref(ms);
}

static void api_keys(void) {
    const char *keys[] = {"sk-one", "sk-second-key"};
    CHECK(kiln_http_key_ok(keys, 2, "sk-one", 6));
    CHECK(kiln_http_key_ok(keys, 2, "sk-second-key", 13));
    CHECK(!kiln_http_key_ok(keys, 2, "sk-on", 5));
    CHECK(!kiln_http_key_ok(keys, 2, "sk-onex", 7));
    CHECK(!kiln_http_key_ok(keys, 2, "sk-ond", 6));
    CHECK(!kiln_http_key_ok(keys, 2, "", 0));
    CHECK(!kiln_http_key_ok(keys, 0, "sk-one", 6));
    /* bytes past the given length do not count */
    CHECK(kiln_http_key_ok(keys, 2, "sk-oneXYZ", 6));
}

static void ids_unique(void) {
    kiln_rng rng;
    kiln_rng_seed(&rng, 1);
    char a[64], b[64];
    kiln_api_new_id("chatcmpl-", a, sizeof(a), &rng);
    kiln_api_new_id("chatcmpl-", b, sizeof(b), &rng);
    CHECK(strncmp(a, "chatcmpl-", 9) == 0);
    CHECK_EQ_INT(strlen(a), 9 + 32);
    CHECK(strcmp(a, b) != 0);
}

/* Every allocation of the parser and the formatters fails in turn: each run ends in OK or a
 * clean NOMEM (status 503), never a crash or a leak (ASan). */
static void alloc_failures(void) {
    const char *body =
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\","
        "\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},{\"role\":\"assistant\","
        "\"content\":\"c\",\"name\":\"n\"}],\"stop\":[\"x\",\"y\"],\"stop_token_ids\":[1],"
        "\"logit_bias\":{\"3\":1},\"chat_template_kwargs\":{},\"extra_body\":{\"top_k\":3},"
        "\"user\":\"u\",\"logprobs\":true,\"top_logprobs\":2}";
    const char *cbody = "{\"prompt\":[[1,2],\"abc\"],\"stop\":\"s\",\"logprobs\":1}";
    int n_ok = 0, n_nomem = 0;
    for (long n = 0; n < 400; n++) {
        kiln_api_request r;
        kiln_api_error e;
        kiln_alloc_fail_after(n);
        kiln_err err = parse(KILN_API_CHAT, body, &strict, &r, &e);
        kiln_err err2 = KILN_OK;
        kiln_api_request r2;
        kiln_api_error e2;
        err2 = parse(KILN_API_COMPLETION, cbody, &strict, &r2, &e2);
        kiln_alloc_fail_after(-1);
        CHECK_MSG(err == KILN_OK || (err == KILN_ERR_NOMEM && e.status == 503) ||
                      err == KILN_ERR_FORMAT,
                  "n=%ld err=%s %s", n, kiln_err_name(err), e.message);
        if (err == KILN_OK) {
            n_ok++;
            kiln_api_request_deinit(&r);
        } else {
            n_nomem++;
        }
        CHECK_MSG(err2 == KILN_OK || err2 == KILN_ERR_NOMEM || err2 == KILN_ERR_FORMAT,
                  "n=%ld err2=%s %s", n, kiln_err_name(err2), e2.message);
        if (err2 == KILN_OK) kiln_api_request_deinit(&r2);
    }
    CHECK(n_ok > 0 && n_nomem > 0);

    kiln_vocab *v = load_vocab();
    kiln_api_lp lps[2] = {{.token = 261, .logprob = -1, .has_logprob = true, .n_top = 1,
                           .top = {{378, -2}}},
                          {.token = 1, .has_logprob = false}};
    kiln_api_choice c = {.index = 0, .text = "abc", .n_text = 3, .finish = KILN_FINISH_STOP,
                         .has_logprobs = true, .lps = lps, .n_lps = 2};
    kiln_api_meta m = {.id = "x", .created = 1, .model = "m"};
    kiln_api_usage u = {1, 2, 0};
    for (long n = 0; v && n < 200; n++) {
        kiln_buf b;
        kiln_buf_init(&b);
        kiln_alloc_fail_after(n);
        kiln_err e1 = kiln_api_format_chat(&m, &c, 1, &u, v, &b);
        kiln_err e2 = kiln_api_format_completion(&m, &c, 1, &u, v, &b);
        kiln_err e3 = kiln_api_format_chat_chunk(&m, &c, true, true, v, &b);
        kiln_err e4 = kiln_api_format_usage_chunk(KILN_API_CHAT, &m, &u, &b);
        kiln_err e5 = kiln_api_error_body(400, "m", "t", "p", "c", &b);
        kiln_alloc_fail_after(-1);
        CHECK(e1 == KILN_OK || e1 == KILN_ERR_NOMEM);
        CHECK(e2 == KILN_OK || e2 == KILN_ERR_NOMEM);
        CHECK(e3 == KILN_OK || e3 == KILN_ERR_NOMEM);
        CHECK(e4 == KILN_OK || e4 == KILN_ERR_NOMEM);
        CHECK(e5 == KILN_OK || e5 == KILN_ERR_NOMEM);
        kiln_buf_deinit(&b);
    }
    kiln_vocab_free(v);
}

int main(void) {
    /* jansson allocates through kiln's allocator so that failure injection reaches it */
    json_set_alloc_funcs(kiln_malloc, kiln_free);
    RUN(chat_defaults);
    RUN(completion_defaults);
    RUN(chat_all_fields);
    RUN(prompt_forms);
    RUN(extra_body_merge);
    RUN(malformed);
    RUN(wrong_types_and_ranges);
    RUN(messages_errors);
    RUN(unknown_and_later_fields);
    RUN(chat_response_shape);
    RUN(completion_response_shape);
    RUN(chunk_shapes);
    RUN(error_body);
    RUN(utf8_repair);
    RUN(fallback_prompt);
    RUN(api_keys);
    RUN(ids_unique);
    RUN(alloc_failures);
    return TEST_REPORT("test_api");
}
