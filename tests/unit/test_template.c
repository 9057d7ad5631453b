/* test_template.c: the template engine's own contract, beyond the jinja2 golden suite
 * (tests/suites/template_golden.sh): error codes and line numbers, raise_exception, the chat
 * convenience API, hostile templates stopped by limits (loops, recursion, output, memory,
 * nesting), allocation failure at every point of a parse + render, and a deterministic
 * mini-fuzz over mutated real templates. Run under ASan by tests/run.sh (leaks fail it). */
#include <dirent.h>
#include <string.h>

#include "template/template.h"
#include "test.h"

/* Parses and renders `src` with the JSON context `ctx_json` (may be NULL); returns the code and
 * leaves the text in *out (caller frees with kiln_free). */
static kiln_err render_src(const char *src, const char *ctx_json, const kiln_template_limits *lim, char **out) {
    kiln_template *t = NULL;
    kiln_buf b;
    kiln_buf_init(&b);
    json_t *ctx = NULL;
    if (ctx_json) {
        json_error_t je;
        ctx = json_loads(ctx_json, 0, &je);
        if (!ctx) {
            fprintf(stderr, "bad test JSON: %s\n", je.text);
            return KILN_ERR_INVALID;
        }
    }
    kiln_err err = kiln_template_parse(src, strlen(src), &t);
    if (!err) err = kiln_template_render(t, ctx, lim, &b);
    kiln_template_free(t);
    json_decref(ctx);
    if (out) {
        *out = kiln_strndup(b.data ? b.data : "", b.len);
    }
    kiln_buf_deinit(&b);
    return err;
}

static void expect_render(const char *src, const char *ctx, const char *want) {
    char *got = NULL;
    kiln_err err = render_src(src, ctx, NULL, &got);
    CHECK_MSG(err == KILN_OK, "%s: %s", src, kiln_errmsg());
    CHECK_STR(got, want);
    kiln_free(got);
}

static void expect_error(const char *src, const char *ctx, const kiln_template_limits *lim, kiln_err code,
                         const char *msg_part) {
    char *got = NULL;
    kiln_err err = render_src(src, ctx, lim, &got);
    CHECK_MSG(err == code, "%.60s: got %s (%s), want %s", src, kiln_err_name(err), kiln_errmsg(), kiln_err_name(code));
    if (msg_part) CHECK_MSG(strstr(kiln_errmsg(), msg_part) != NULL, "message \"%s\" lacks \"%s\"", kiln_errmsg(), msg_part);
    kiln_free(got);
}

static void test_basic_render(void) {
    expect_render("Hello {{ name }}!", "{\"name\": \"kiln\"}", "Hello kiln!");
    expect_render("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}",
                  "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}",
                  "[user]hi[assistant]yo");
    expect_render("", NULL, "");
    expect_render("no tags at all\n", NULL, "no tags at all");  /* one trailing newline is dropped */
    expect_render("{{ missing }}|{{ missing is defined }}", "{}", "|False");
    /* empty generators: iterating a consumed/empty select must not touch a NULL array (UBSan) */
    expect_render("{{ [] | select | list }}{% for x in none | select %}x{% endfor %}{% set g = [] | map('upper') %}"
                  "{{ g | list }}{{ g | list }}{{ 1 in g }}",
                  NULL, "[][][]False");
}

static void test_syntax_errors_carry_line(void) {
    expect_error("line one\n{% if x %}\n{{ 1 + }}\n{% endif %}", NULL, NULL, KILN_ERR_FORMAT, "line 3:");
    expect_error("{% for x in y %}", NULL, NULL, KILN_ERR_FORMAT, "Unexpected end of template");
    expect_error("\n\n{% endfor %}", NULL, NULL, KILN_ERR_FORMAT, "line 3: Encountered unknown tag 'endfor'");
    expect_error("{{ 'abc }}", NULL, NULL, KILN_ERR_FORMAT, NULL);
    expect_error("{# never closed", NULL, NULL, KILN_ERR_FORMAT, "comment");
    expect_error("{{ x", NULL, NULL, KILN_ERR_FORMAT, NULL);
    expect_error("{% raw %} no end", NULL, NULL, KILN_ERR_FORMAT, "raw");
    expect_error("{{ x | no_such_filter }}", NULL, NULL, KILN_ERR_FORMAT, "No filter named 'no_such_filter'.");
    expect_error("{{ (1 ]}}", NULL, NULL, KILN_ERR_FORMAT, NULL);
    expect_error("{% macro m(a=1, b) %}{% endmacro %}", NULL, NULL, KILN_ERR_FORMAT, "non-default argument");
    /* found by libFuzzer: a for without `in` once parsed to a NULL statement */
    expect_error("{% for x messages %}{% endfor %}", NULL, NULL, KILN_ERR_FORMAT, "expected token 'in', got 'messages'");
    expect_error("{% for x", NULL, NULL, KILN_ERR_FORMAT, NULL);
    /* found by libFuzzer: a number literal longer than a fixed buffer (UBSan index out of bounds) */
    char *lit = kiln_malloc(700);
    memset(lit, '1', 690);
    memcpy(lit, "{{ ", 3);
    lit[300] = '.';
    memcpy(lit + 690, " > 1 }}", 8);
    char *got = NULL;
    CHECK_EQ_INT(render_src(lit, NULL, NULL, &got), KILN_OK);
    CHECK_STR(got, "True");
    kiln_free(got);
    kiln_free(lit);
}

static void test_runtime_errors(void) {
    expect_error("a\nb\n{{ 1 + 'a' }}", NULL, NULL, KILN_ERR_INVALID, "line 3: unsupported operand type(s) for +: 'int' and 'str'");
    expect_error("{{ x.y.z }}", "{\"x\": {}}", NULL, KILN_ERR_INVALID, "'dict object' has no attribute 'y'");
    expect_error("{{ [].append(1) }}", NULL, NULL, KILN_ERR_INVALID, "unsafe");
    expect_error("{% if x %}{{ 1 | nope }}{% endif %}", "{\"x\": true}", NULL, KILN_ERR_INVALID, "No filter named 'nope' found.");
}

static void test_raise_exception(void) {
    char *got = NULL;
    kiln_err err = render_src("text before {{ raise_exception('Only user and assistant roles are supported!') }}", NULL, NULL, &got);
    CHECK_EQ_INT(err, KILN_ERR_RAISED);
    CHECK_STR(kiln_errmsg(), "Only user and assistant roles are supported!");
    kiln_free(got);
}

static void test_render_chat_api(void) {
    const char *src = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% if m.tool_calls %}"
                      "{{ m.tool_calls[0].function.arguments | tojson }}{% endif %}{% endfor %}"
                      "{% if tools %}T{{ tools | length }}{% endif %}{% if add_generation_prompt %}<assistant>{% endif %}"
                      "{% if enable_thinking is defined and not enable_thinking %}/no_think{% endif %}{{ eos_token }}";
    kiln_template *t;
    CHECK_EQ_INT(kiln_template_parse(src, strlen(src), &t), KILN_OK);
    json_t *msgs = json_loads("[{\"role\":\"user\",\"content\":\"héllo\"},{\"role\":\"assistant\",\"content\":\"\","
                              "\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":{\"a\":1}}}]}]", 0, NULL);
    json_t *tools = json_loads("[{\"type\":\"function\"}]", 0, NULL);
    json_t *kw = json_loads("{\"enable_thinking\": false}", 0, NULL);
    kiln_buf b;
    kiln_buf_init(&b);
    CHECK_EQ_INT(kiln_template_render_chat(t, msgs, tools, true, "<s>", "</s>", kw, &b), KILN_OK);
    CHECK_STR(b.data, "<s><user>héllo<assistant>{\"a\": 1}T1<assistant>/no_think</s>");
    kiln_buf_reset(&b);
    CHECK_EQ_INT(kiln_template_render_chat(t, msgs, NULL, false, NULL, NULL, NULL, &b), KILN_OK);
    CHECK_STR(b.data, "<user>héllo<assistant>{\"a\": 1}");
    kiln_buf_deinit(&b);
    json_decref(msgs);
    json_decref(tools);
    json_decref(kw);
    kiln_template_free(t);
}

static void test_strftime_hook(void) {
    setenv("KILN_TEMPLATE_NOW", "2024-07-26 08:05:09", 1);
    expect_render("{{ strftime_now('%d %b %Y %H:%M:%S') }}", NULL, "26 Jul 2024 08:05:09");
    unsetenv("KILN_TEMPLATE_NOW");
}

static void test_hostile_loops(void) {
    kiln_template_limits lim;
    kiln_template_limits_default(&lim);
    lim.max_iterations = 100000;
    expect_error("{% for x in range(10**9) %}{% endfor %}", NULL, &lim, KILN_ERR_LIMIT, NULL);
    expect_error("{% for x in range(100000) %}{% for y in range(100000) %}{% endfor %}{% endfor %}", NULL, &lim,
                 KILN_ERR_LIMIT, "iterations");
    expect_error("{% for x in range(1000) %}{% for y in range(1000) %}{{ x }}{% endfor %}{% endfor %}", NULL, &lim,
                 KILN_ERR_LIMIT, NULL);
    expect_error("{{ 10 ** 100 }}", NULL, &lim, KILN_ERR_LIMIT, "overflow");
    /* superlinear work inside one builtin or over huge dicts is stopped by the time budget */
    kiln_template_limits quick;
    kiln_template_limits_default(&quick);
    quick.max_time_ms = 100;
    double t0 = kiln_now_s();
    expect_error("{{ range(200000) | unique | list | length }}", NULL, &quick, KILN_ERR_LIMIT, "time limit");
    expect_error("{% set l = range(100000) | list %}{% for i in range(100000) %}{% if -1 in l %}{% endif %}{% endfor %}",
                 NULL, &quick, KILN_ERR_LIMIT, "time limit");
    CHECK_MSG(kiln_now_s() - t0 < 5.0, "time limits took %.1f s", kiln_now_s() - t0);
    /* empty sequences times a huge count: empty at once (this once spun for 10^15 rounds) */
    expect_render("{{ [] * 10**15 }}{{ '' * 10**18 }}{{ () * 10**15 }}|{{ ([] * 10**15) | length }}", NULL, "[]()|0");
    /* long but legitimate loops stay within the default memory limit: iteration scopes are
     * reused, not accumulated */
    expect_render("{% set ns = namespace(n=0) %}{% for i in range(300000) %}{% set x = i %}{% set ns.n = x %}"
                  "{% endfor %}{{ ns.n }}", NULL, "299999");
}

static void test_hostile_recursion(void) {
    expect_error("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", NULL, NULL, KILN_ERR_LIMIT, "recursion");
    expect_error("{% macro f(n) %}x{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, NULL, KILN_ERR_LIMIT, NULL);
    expect_error("{% for x in [[[]]] recursive %}{{ loop([x]) }}{% endfor %}", NULL, NULL, KILN_ERR_LIMIT, NULL);
    /* parse-time nesting */
    char *deep = kiln_malloc(100000);
    size_t n = 0;
    n += (size_t)sprintf(deep + n, "{{ ");
    for (int i = 0; i < 5000; i++) deep[n++] = '(';
    deep[n++] = '1';
    for (int i = 0; i < 5000; i++) deep[n++] = ')';
    n += (size_t)sprintf(deep + n, " }}");
    deep[n] = 0;
    expect_error(deep, NULL, NULL, KILN_ERR_FORMAT, "nested");
    n = 0;
    for (int i = 0; i < 3000; i++) n += (size_t)sprintf(deep + n, "{%% if x %%}");
    deep[n] = 0;
    expect_error(deep, NULL, NULL, KILN_ERR_FORMAT, NULL);
    n = 0;
    n += (size_t)sprintf(deep + n, "{{ ");
    for (int i = 0; i < 3000; i++) n += (size_t)sprintf(deep + n, "not ");
    n += (size_t)sprintf(deep + n, "x }}");
    deep[n] = 0;
    expect_error(deep, NULL, NULL, KILN_ERR_FORMAT, "nested");
    n = 0;
    n += (size_t)sprintf(deep + n, "{{ x");
    for (int i = 0; i < 3000; i++) n += (size_t)sprintf(deep + n, "[0]");
    n += (size_t)sprintf(deep + n, " }}");
    deep[n] = 0;
    expect_error(deep, "{\"x\": 1}", NULL, KILN_ERR_LIMIT, "recursion");
    /* values nested deeper than printing, comparing or JSON encoding will follow */
    const char *grow = "{% set ns = namespace(l=[]) %}{% for i in range(5000) %}{% set ns.l = [ns.l] %}{% endfor %}";
    n = (size_t)sprintf(deep, "%s{{ ns.l }}", grow);
    expect_error(deep, NULL, NULL, KILN_ERR_LIMIT, "nested");
    n = (size_t)sprintf(deep, "%s{{ ns.l | tojson }}", grow);
    expect_error(deep, NULL, NULL, KILN_ERR_INVALID, "recursion");
    n = (size_t)sprintf(deep, "%s{{ ns.l == ns.l }}{{ [ns.l] < [ns.l] }}", grow);
    char *got = NULL;
    kiln_err e2 = render_src(deep, NULL, NULL, &got);
    CHECK(e2 == KILN_OK || e2 == KILN_ERR_INVALID);
    kiln_free(got);
    kiln_free(deep);
    /* a context nested deeper than the converter accepts */
    char *ctx = kiln_malloc(10000);
    n = (size_t)sprintf(ctx, "{\"x\": ");
    for (int i = 0; i < 1000; i++) ctx[n++] = '[';
    for (int i = 0; i < 1000; i++) ctx[n++] = ']';
    ctx[n++] = '}';
    ctx[n] = 0;
    got = NULL;
    kiln_err err = render_src("{{ x }}", ctx, NULL, &got);
    CHECK(err != KILN_OK);
    kiln_free(got);
    kiln_free(ctx);
}

static void test_hostile_output(void) {
    kiln_template_limits lim;
    kiln_template_limits_default(&lim);
    lim.max_output_bytes = 1 << 20;
    lim.max_memory_bytes = 64 << 20;
    expect_error("{{ 'x' * 10**9 }}", NULL, &lim, KILN_ERR_LIMIT, NULL);
    expect_error("{{ 'x' * 10**18 * 10 }}", NULL, &lim, KILN_ERR_LIMIT, NULL);
    expect_error("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", NULL, &lim, KILN_ERR_LIMIT, "output");
    expect_error("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", NULL, &lim,
                 KILN_ERR_LIMIT, NULL);
    expect_error("{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}", NULL,
                 &lim, KILN_ERR_LIMIT, NULL);
    expect_error("{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l * 2 %}{% endfor %}", NULL,
                 &lim, KILN_ERR_LIMIT, NULL);
    expect_error("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s.replace('a', ns.s) %}{% endfor %}",
                 NULL, &lim, KILN_ERR_LIMIT, NULL);
    expect_error("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = [ns.s, ns.s] | string %}{% endfor %}",
                 NULL, &lim, KILN_ERR_LIMIT, NULL);
    /* output inside a macro / block set is limited too */
    expect_error("{% macro m() %}{% for i in range(100000) %}zzzzzzzzzzzzzzzz{% endfor %}{% endmacro %}{% set x = m() %}", NULL,
                 &lim, KILN_ERR_LIMIT, NULL);
}

static char *load_testdata_template(const char *name, size_t *len) {
    char path[1024];
    snprintf(path, sizeof path, "%s/templates/%s", test_data_dir(), name);
    char *src = NULL;
    if (kiln_read_file(path, &src, len) != KILN_OK) return NULL;
    return src;
}

static const char *chat_ctx =
    "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"add_generation_prompt\": true,"
    " \"messages\": [{\"role\": \"system\", \"content\": \"sys\"}, {\"role\": \"user\", \"content\": \"What's up?\"},"
    " {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [{\"id\": \"c1\", \"type\": \"function\","
    " \"function\": {\"name\": \"f\", \"arguments\": {\"a\": 1}}}]},"
    " {\"role\": \"tool\", \"tool_call_id\": \"c1\", \"content\": \"42\"}],"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": \"d\","
    " \"parameters\": {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"integer\"}}}}}]}";

/* Every allocation of a parse + render of a real template fails in turn: each run must end
 * with KILN_OK or KILN_ERR_NOMEM, never crash or leak (ASan checks the leaks at exit). */
static void test_alloc_failure(void) {
    static const char *names[] = {"Qwen-Qwen3-0.6B.jinja", "meta-llama-Llama-3.1-8B-Instruct.jinja",
                                  "google-gemma-4-31B-it-interleaved.jinja", "Qwen-Qwen2.5-7B-Instruct.jinja"};
    json_t *small = json_loads(chat_ctx, 0, NULL), *big = json_deep_copy(small);
    CHECK(small != NULL && big != NULL);
    /* a long conversation, so that failures also land in the context conversion */
    json_t *msgs = json_object_get(big, "messages");
    for (int i = 0; i < 300; i++) {
        json_t *m = json_object();
        json_object_set_new(m, "role", json_string(i % 2 ? "assistant" : "user"));
        json_object_set_new(m, "content", json_string("a fairly long message body that fills the arena chunk by chunk"));
        json_array_append_new(msgs, m);
    }
    for (size_t k = 0; k < KILN_ARRAY_LEN(names); k++) {
        json_t *ctx = k == 3 ? big : small;
        size_t len;
        char *src = load_testdata_template(names[k], &len);
        CHECK_MSG(src != NULL, "cannot read %s", names[k]);
        if (!src) continue;
        char *ref = NULL;
        size_t ref_len = 0;
        bool done = false;
        for (long n = 0; n < 100000 && !done; n++) {
            kiln_alloc_fail_after(n);
            kiln_template *t = NULL;
            kiln_buf b;
            kiln_buf_init(&b);
            kiln_err err = kiln_template_parse(src, len, &t);
            if (!err) err = kiln_template_render(t, ctx, NULL, &b);
            long failed = kiln_alloc_n_failed();
            kiln_alloc_fail_after(-1);
            CHECK_MSG(err == KILN_OK || err == KILN_ERR_NOMEM, "%s fail_after %ld: %s %s", names[k], n, kiln_err_name(err),
                      kiln_errmsg());
            if (err == KILN_OK && failed == 0) {
                done = true;
                ref = kiln_strndup(b.data ? b.data : "", b.len);
                ref_len = b.len;
            }
            kiln_buf_deinit(&b);
            kiln_template_free(t);
        }
        CHECK_MSG(done, "%s never succeeded", names[k]);
        /* the output with no failures equals a normal render */
        char *plain = NULL;
        kiln_template *t = NULL;
        kiln_buf b;
        kiln_buf_init(&b);
        CHECK_EQ_INT(kiln_template_parse(src, len, &t), KILN_OK);
        if (t) CHECK_EQ_INT(kiln_template_render(t, ctx, NULL, &b), KILN_OK);
        plain = kiln_strndup(b.data ? b.data : "", b.len);
        CHECK(ref && plain && ref_len == b.len && !memcmp(ref, plain, ref_len));
        kiln_buf_deinit(&b);
        kiln_template_free(t);
        kiln_free(plain);
        kiln_free(ref);
        kiln_free(src);
    }
    json_decref(small);
    json_decref(big);
}

/* Deterministic mini-fuzz: random mutations of the real templates (byte flips, deletions,
 * duplications, inserted tag fragments) parsed and, when they parse, rendered under small
 * limits. Bounded by a count and ~2 s. Every outcome must be a clean status. */
static void test_mini_fuzz(void) {
    static const char *frags[] = {"{%", "%}", "{{", "}}", "{#", "#}", "{%-", "-%}", "endfor", "endif", "(", ")",
                                  "[", "]", "'", "\"", "|", "loop(", "recursive", "else", "~", "*", "**", "namespace(",
                                  "raise_exception(", "{% for x in range(99999) %}", "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
                                  "\\", "\xff", "\xc3", "\n", " is ", " not ", " in "};
    char *srcs[64];
    size_t lens[64], n_src = 0;
    DIR *d;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/templates", test_data_dir());
    d = opendir(dir);
    CHECK_MSG(d != NULL, "cannot open %s", dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) && n_src < 64) {
        if (!strstr(e->d_name, ".jinja")) continue;
        srcs[n_src] = load_testdata_template(e->d_name, &lens[n_src]);
        if (srcs[n_src]) n_src++;
    }
    closedir(d);
    CHECK(n_src > 10);
    json_t *ctx = json_loads(chat_ctx, 0, NULL);
    kiln_template_limits lim;
    kiln_template_limits_default(&lim);
    lim.max_iterations = 20000;
    lim.max_output_bytes = 256 << 10;
    lim.max_memory_bytes = 16 << 20;
    lim.max_time_ms = 200;
    kiln_rng rng;
    kiln_rng_seed(&rng, 1234);
    double t0 = kiln_now_s();
    int n_runs = 0, n_parsed = 0, n_ok = 0;
    size_t cap = 64 << 10;
    char *buf = kiln_malloc(cap);
    for (int it = 0; it < 4000 && kiln_now_s() - t0 < 2.0; it++) {
        size_t k = kiln_rng_u64(&rng) % n_src, len = KILN_MIN(lens[k], cap / 2);
        memcpy(buf, srcs[k], len);
        int n_mut = 1 + (int)(kiln_rng_u64(&rng) % 4);
        for (int m = 0; m < n_mut; m++) {
            size_t pos = len ? kiln_rng_u64(&rng) % len : 0;
            switch (kiln_rng_u64(&rng) % 4) {
            case 0: if (len) buf[pos] = (char)kiln_rng_u64(&rng); break;
            case 1: { /* delete a range */
                size_t r = 1 + kiln_rng_u64(&rng) % 40, n = KILN_MIN(len - pos, r);
                memmove(buf + pos, buf + pos + n, len - pos - n);
                len -= n;
                break;
            }
            case 2: { /* duplicate a range */
                size_t r = 1 + kiln_rng_u64(&rng) % 200, n = KILN_MIN(len - pos, r);
                if (len + n < cap) {
                    memmove(buf + pos + n, buf + pos, len - pos);
                    len += n;
                }
                break;
            }
            default: { /* insert a fragment */
                const char *f = frags[kiln_rng_u64(&rng) % KILN_ARRAY_LEN(frags)];
                size_t n = strlen(f);
                if (len + n < cap) {
                    memmove(buf + pos + n, buf + pos, len - pos);
                    memcpy(buf + pos, f, n);
                    len += n;
                }
            }
            }
        }
        kiln_template *t = NULL;
        kiln_err err = kiln_template_parse(buf, len, &t);
        n_runs++;
        CHECK_MSG(err == KILN_OK || err == KILN_ERR_FORMAT, "parse: %s %s", kiln_err_name(err), kiln_errmsg());
        if (!err) {
            n_parsed++;
            kiln_buf b;
            kiln_buf_init(&b);
            err = kiln_template_render(t, ctx, &lim, &b);
            CHECK_MSG(err == KILN_OK || err == KILN_ERR_INVALID || err == KILN_ERR_FORMAT || err == KILN_ERR_RAISED ||
                          err == KILN_ERR_LIMIT || err == KILN_ERR_UNSUPPORTED,
                      "render: %s %s", kiln_err_name(err), kiln_errmsg());
            n_ok += err == KILN_OK;
            kiln_buf_deinit(&b);
        }
        kiln_template_free(t);
    }
    printf("mini-fuzz: %d mutants, %d parsed, %d rendered (%.2f s)\n", n_runs, n_parsed, n_ok, kiln_now_s() - t0);
    CHECK(n_runs > 50);
    kiln_free(buf);
    for (size_t i = 0; i < n_src; i++) kiln_free(srcs[i]);
    json_decref(ctx);
}

/* Parse once, render concurrently: a parsed template is read-only. */
#include <pthread.h>
static kiln_template *shared_tpl;
static void *render_thread(void *arg) {
    json_t *ctx = json_loads(chat_ctx, 0, NULL);
    long ok = 1;
    for (int i = 0; i < 50; i++) {
        kiln_buf b;
        kiln_buf_init(&b);
        if (kiln_template_render(shared_tpl, ctx, NULL, &b) != KILN_OK || strcmp(b.data, (const char *)arg)) ok = 0;
        kiln_buf_deinit(&b);
    }
    json_decref(ctx);
    return (void *)ok;
}

static void test_concurrent_render(void) {
    size_t len;
    char *src = load_testdata_template("Qwen-Qwen2.5-7B-Instruct.jinja", &len);
    CHECK(src != NULL);
    if (!src) return;
    CHECK_EQ_INT(kiln_template_parse(src, len, &shared_tpl), KILN_OK);
    json_t *ctx = json_loads(chat_ctx, 0, NULL);
    kiln_buf want;
    kiln_buf_init(&want);
    CHECK_EQ_INT(kiln_template_render(shared_tpl, ctx, NULL, &want), KILN_OK);
    pthread_t th[4];
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, render_thread, want.data);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        CHECK(r == (void *)1);
    }
    kiln_buf_deinit(&want);
    json_decref(ctx);
    kiln_template_free(shared_tpl);
    kiln_free(src);
}

int main(void) {
    RUN(test_basic_render);
    RUN(test_syntax_errors_carry_line);
    RUN(test_runtime_errors);
    RUN(test_raise_exception);
    RUN(test_render_chat_api);
    RUN(test_strftime_hook);
    RUN(test_hostile_loops);
    RUN(test_hostile_recursion);
    RUN(test_hostile_output);
    RUN(test_alloc_failure);
    RUN(test_mini_fuzz);
    RUN(test_concurrent_render);
    return TEST_REPORT("test_template");
}
