/* cmd_template.c: `kiln template render (--template FILE | -m MODEL.gguf) --context FILE.json`:
 * renders a chat template (a Jinja file, or a GGUF's tokenizer.chat_template) with the variables
 * of a JSON object and prints the text to stdout, byte for byte. On error (syntax, runtime,
 * raise_exception, limits) prints "kiln template: <kind>: <message>" to stderr and returns 1;
 * for raise_exception the message is the template's own text. Single-threaded. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "model/gguf.h"
#include "template/template.h"

static void usage(FILE *f) {
    fprintf(f, "usage: kiln template render (--template FILE | -m MODEL.gguf) --context FILE.json\n"
               "  prints the rendered text; strftime_now() uses $KILN_TEMPLATE_NOW\n"
               "  (\"YYYY-MM-DD HH:MM:SS\") when set\n");
}

static kiln_err load_gguf_template(const char *path, char **src, size_t *len) {
    kiln_gguf *g;
    kiln_err err = kiln_gguf_open(path, &g);
    if (err) return err;
    kiln_gguf_str s;
    err = kiln_gguf_get_str(g, "tokenizer.chat_template", &s);
    if (err) {
        kiln_gguf_close(g);
        return kiln_errf(KILN_ERR_NOT_FOUND, "%s has no tokenizer.chat_template", path);
    }
    *src = kiln_strndup(s.p, (size_t)s.len);
    *len = (size_t)s.len;
    kiln_gguf_close(g);
    return *src ? KILN_OK : kiln_errf(KILN_ERR_NOMEM, "out of memory");
}

int kiln_cmd_template(int argc, char **argv) {
    const char *tpl_path = NULL, *model_path = NULL, *ctx_path = NULL;
    if (argc < 2 || strcmp(argv[1], "render")) {
        usage(argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) ? stdout : stderr);
        return argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) ? 0 : 1;
    }
    for (int i = 2; i < argc; i++) {
        if (i + 1 < argc && !strcmp(argv[i], "--template")) tpl_path = argv[++i];
        else if (i + 1 < argc && (!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model"))) model_path = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--context")) ctx_path = argv[++i];
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "kiln template: unknown or incomplete option '%s'\n", argv[i]);
            usage(stderr);
            return 1;
        }
    }
    if ((!tpl_path) == (!model_path) || !ctx_path) {
        usage(stderr);
        return 1;
    }
    char *src = NULL;
    size_t len = 0;
    kiln_err err = tpl_path ? kiln_read_file(tpl_path, &src, &len) : load_gguf_template(model_path, &src, &len);
    if (err) {
        const char *path = tpl_path ? tpl_path : model_path;
        if (strstr(kiln_errmsg(), path)) fprintf(stderr, "kiln template: %s\n", kiln_errmsg());
        else fprintf(stderr, "kiln template: %s: %s\n", path, kiln_errmsg());
        return 1;
    }
    json_error_t jerr;
    json_t *ctx = json_load_file(ctx_path, JSON_DECODE_ANY, &jerr);
    if (!ctx || !json_is_object(ctx)) {
        fprintf(stderr, "kiln template: %s: %s\n", ctx_path,
                ctx ? "the context must be a JSON object" : jerr.text);
        json_decref(ctx);
        kiln_free(src);
        return 1;
    }
    kiln_template *t = NULL;
    kiln_buf out;
    kiln_buf_init(&out);
    err = kiln_template_parse(src, len, &t);
    if (!err) err = kiln_template_render(t, ctx, NULL, &out);
    int rc = 0;
    if (err) {
        fprintf(stderr, "kiln template: %s: %s\n", kiln_err_name(err), kiln_errmsg());
        rc = 1;
    } else if (out.len && fwrite(out.data, 1, out.len, stdout) != out.len) {
        rc = 1;
    }
    kiln_buf_deinit(&out);
    kiln_template_free(t);
    json_decref(ctx);
    kiln_free(src);
    return rc;
}
