/* cmd_tokenize.c: `kiln tokenize` (text on stdin -> token ids) and `kiln detokenize` (ids on
 * stdin -> text), using the vocabulary of a GGUF file. Batch modes for tests: NUL-terminated texts
 * in, one line of ids per text out; one line of ids per text in, NUL-terminated texts out.
 * Single-threaded; returns the exit status (main.c exits). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "model/gguf.h"
#include "tok/tok.h"

static kiln_err read_stdin(kiln_buf *b) {
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), stdin)) > 0) {
        kiln_err err = kiln_buf_append(b, chunk, n);
        if (err) return err;
    }
    if (ferror(stdin)) return kiln_errf(KILN_ERR_IO, "cannot read stdin");
    return KILN_OK;
}

static kiln_err load(const char *path, kiln_vocab **v) {
    kiln_gguf *g;
    kiln_err err = kiln_gguf_open(path, &g);
    if (err) return err;
    err = kiln_vocab_load(g, v);
    kiln_gguf_close(g);
    return err;
}

static int fail(const char *cmd, const char *path, kiln_err err) {
    const char *msg = kiln_errmsg();
    if (path && !strstr(msg, path))
        fprintf(stderr, "kiln %s: %s: %s\n", cmd, path, msg);
    else
        fprintf(stderr, "kiln %s: %s\n", cmd, msg);
    return 1;
}

static kiln_err print_ids(const kiln_vocab *v, const char *text, size_t len, bool bos, bool special,
                          kiln_buf *out) {
    int32_t *ids;
    size_t n;
    kiln_err err = kiln_tok_encode(v, text, len, bos, special, &ids, &n);
    if (err) return err;
    for (size_t i = 0; i < n && !err; i++) err = kiln_buf_printf(out, i ? " %d" : "%d", ids[i]);
    if (!err) err = kiln_buf_putc(out, '\n');
    kiln_free(ids);
    return err;
}

/* --info: the vocabulary's type, sizes, special ids and end-of-generation set, one per line. */
static kiln_err print_info(const kiln_vocab *v, kiln_buf *out) {
    kiln_err err = kiln_buf_printf(
        out, "type %s\npre %s\nn_tokens %d\nbos %d\neos %d\neot %d\nunk %d\npad %d\nadd_bos %d\n",
        kiln_vocab_get_type(v) == KILN_VOCAB_SPM ? "spm" : "bpe", kiln_vocab_pre(v),
        kiln_vocab_n_tokens(v), kiln_vocab_bos(v), kiln_vocab_eos(v), kiln_vocab_eot(v),
        kiln_vocab_unk(v), kiln_vocab_pad(v), kiln_vocab_add_bos(v));
    if (!err) err = kiln_buf_puts(out, "eog");
    for (int32_t id = 0; id < kiln_vocab_n_tokens(v) && !err; id++)
        if (kiln_vocab_is_eog(v, id)) err = kiln_buf_printf(out, " %d", id);
    if (!err) err = kiln_buf_putc(out, '\n');
    return err;
}

int kiln_cmd_tokenize(int argc, char **argv) {
    const char *model = NULL;
    bool bos = true, special = false, batch = false, info = false;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "--no-bos"))
            bos = false;
        else if (!strcmp(argv[i], "--parse-special"))
            special = true;
        else if (!strcmp(argv[i], "--batch"))
            batch = true;
        else if (!strcmp(argv[i], "--info"))
            info = true;
        else {
            fprintf(stderr, "usage: kiln tokenize -m MODEL [--no-bos] [--parse-special] [--batch]"
                            " [--info]\n"
                            "  reads text on stdin, prints its token ids on one line;\n"
                            "  --batch: stdin holds NUL-terminated texts, one line of ids each\n"
                            "  --info: print the vocabulary's special ids instead\n");
            return 1;
        }
    }
    if (!model) {
        fprintf(stderr, "kiln tokenize: -m MODEL is required\n");
        return 1;
    }
    kiln_vocab *v = NULL;
    kiln_err err = load(model, &v);
    if (err) return fail("tokenize", model, err);
    kiln_buf in, out;
    kiln_buf_init(&in);
    kiln_buf_init(&out);
    if (info) {
        err = print_info(v, &out);
    } else if ((err = read_stdin(&in)) != KILN_OK) {
        goto done;
    } else if (!batch) {
        err = print_ids(v, in.data ? in.data : "", in.len, bos, special, &out);
    } else {
        size_t pos = 0;
        while (pos < in.len && !err) {
            char *end = memchr(in.data + pos, '\0', in.len - pos);
            size_t n = end ? (size_t)(end - (in.data + pos)) : in.len - pos;
            err = print_ids(v, in.data + pos, n, bos, special, &out);
            pos += n + 1;
        }
    }
    if (!err && fwrite(out.data ? out.data : "", 1, out.len, stdout) != out.len)
        err = kiln_errf(KILN_ERR_IO, "cannot write stdout");
done:
    kiln_buf_deinit(&in);
    kiln_buf_deinit(&out);
    kiln_vocab_free(v);
    return err ? fail("tokenize", model, err) : 0;
}

/* Parses the ids of s[0..n) (separated by spaces, commas or brackets) and appends their text. */
static kiln_err decode_line(const kiln_vocab *v, const char *s, size_t n, bool skip_special,
                            kiln_buf *out) {
    int32_t *ids = NULL;
    size_t n_ids = 0, cap = 0;
    kiln_err err = KILN_OK;
    size_t i = 0;
    while (i < n && !err) {
        if (strchr(" \t\r\n,[]", s[i])) {
            i++;
            continue;
        }
        long long x = 0;
        size_t j = i;
        bool neg = s[j] == '-';
        if (neg) j++;
        while (j < n && s[j] >= '0' && s[j] <= '9' && x < (1ll << 40)) x = x * 10 + (s[j++] - '0');
        if (j == i + neg || (j < n && !strchr(" \t\r\n,[]", s[j]))) {
            err = kiln_errf(KILN_ERR_INVALID, "not a token id at byte %zu", i);
            break;
        }
        if (neg) x = -x;
        if (x < INT32_MIN || x > INT32_MAX) x = -1;
        if (n_ids == cap) {
            cap = cap ? cap * 2 : 64;
            int32_t *nids = kiln_realloc(ids, cap * sizeof(int32_t));
            if (!nids) {
                err = kiln_errf(KILN_ERR_NOMEM, "out of memory");
                break;
            }
            ids = nids;
        }
        ids[n_ids++] = (int32_t)x;
        i = j;
    }
    if (!err) err = kiln_tok_decode(v, ids, n_ids, skip_special, out);
    kiln_free(ids);
    return err;
}

int kiln_cmd_detokenize(int argc, char **argv) {
    const char *model = NULL;
    bool skip_special = true, batch = false;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "--render-special"))
            skip_special = false;
        else if (!strcmp(argv[i], "--batch"))
            batch = true;
        else {
            fprintf(stderr, "usage: kiln detokenize -m MODEL [--render-special] [--batch]\n"
                            "  reads token ids on stdin, prints their text;\n"
                            "  --batch: one line of ids per text, each text NUL-terminated\n");
            return 1;
        }
    }
    if (!model) {
        fprintf(stderr, "kiln detokenize: -m MODEL is required\n");
        return 1;
    }
    kiln_vocab *v = NULL;
    kiln_err err = load(model, &v);
    if (err) return fail("detokenize", model, err);
    kiln_buf in, out;
    kiln_buf_init(&in);
    kiln_buf_init(&out);
    if ((err = read_stdin(&in)) != KILN_OK) goto done;
    if (!batch) {
        err = decode_line(v, in.data ? in.data : "", in.len, skip_special, &out);
    } else {
        size_t pos = 0;
        while (pos < in.len && !err) {
            char *end = memchr(in.data + pos, '\n', in.len - pos);
            size_t n = end ? (size_t)(end - (in.data + pos)) : in.len - pos;
            err = decode_line(v, in.data + pos, n, skip_special, &out);
            if (!err) err = kiln_buf_putc(&out, '\0');
            pos += n + 1;
        }
    }
    if (!err && fwrite(out.data ? out.data : "", 1, out.len, stdout) != out.len)
        err = kiln_errf(KILN_ERR_IO, "cannot write stdout");
done:
    kiln_buf_deinit(&in);
    kiln_buf_deinit(&out);
    kiln_vocab_free(v);
    return err ? fail("detokenize", model, err) : 0;
}
