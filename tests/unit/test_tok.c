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
        if (c == '\n')
            fputs("\\n", stderr);
        else if (c == '\t')
            fputs("\\t", stderr);
        else if (c < 0x20)
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
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
            bool back = err == KILN_OK && b.len == lens[t] &&
                        (b.len == 0 || memcmp(b.data, texts[t], b.len) == 0);
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

/* ---- helpers for the behaviour tests ---- */
static kiln_vocab *vocab_spm, *vocab_bpe; /* llama-spm and gpt-2, loaded once */

static int32_t *enc(const kiln_vocab *v, const char *s, bool bos, bool special, size_t *n) {
    int32_t *ids = NULL;
    kiln_err err = kiln_tok_encode(v, s, strlen(s), bos, special, &ids, n);
    CHECK_MSG(err == KILN_OK, "encode \"%s\": %s", s, kiln_errmsg());
    return ids;
}

static bool contains(const int32_t *ids, size_t n, int32_t id) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id) return true;
    return false;
}

/* Well-formed UTF-8 per Unicode ch. 3 table 3-7 (no overlongs, surrogates, > U+10FFFF). */
static bool utf8_valid(const char *p, size_t n) {
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t l;
        unsigned lo = 0x80, hi = 0xbf;
        if (c < 0x80)
            l = 1;
        else if (c >= 0xc2 && c <= 0xdf)
            l = 2;
        else if (c >= 0xe0 && c <= 0xef)
            l = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        else if (c >= 0xf0 && c <= 0xf4)
            l = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        else
            return false;
        if (i + l > n) return false;
        for (size_t k = 1; k < l; k++) {
            unsigned b = s[i + k];
            if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf)) return false;
        }
        i += l;
    }
    return true;
}

/* Streams ids through a detokenizer: every chunk must be whole UTF-8 characters, and the chunks
 * together (plus the flush) must equal kiln_tok_decode and the expected text. */
static void check_stream(const kiln_vocab *v, const int32_t *ids, size_t n, const char *want) {
    kiln_detok d;
    kiln_detok_init(&d, v, true, true);
    kiln_buf all, chunk, full;
    kiln_buf_init(&all);
    kiln_buf_init(&chunk);
    kiln_buf_init(&full);
    for (size_t i = 0; i < n; i++) {
        kiln_buf_reset(&chunk);
        CHECK(kiln_detok_push(&d, ids[i], &chunk) == KILN_OK);
        CHECK_MSG(utf8_valid(chunk.data, chunk.len), "chunk %zu is not whole UTF-8", i);
        kiln_buf_append(&all, chunk.data ? chunk.data : "", chunk.len);
    }
    CHECK(kiln_detok_flush(&d, &all) == KILN_OK);
    CHECK(kiln_tok_decode(v, ids, n, true, &full) == KILN_OK);
    CHECK_MSG(all.len == full.len && (all.len == 0 || memcmp(all.data, full.data, all.len) == 0),
              "stream \"%.*s\" != decode \"%.*s\"", (int)all.len, all.data ? all.data : "",
              (int)full.len, full.data ? full.data : "");
    CHECK_STR(all.data ? all.data : "", want);
    kiln_buf_deinit(&all);
    kiln_buf_deinit(&chunk);
    kiln_buf_deinit(&full);
}

/* SPM byte fallback: characters outside the vocabulary become <0xNN> tokens, split over ids. */
static void detok_spm_byte_fallback(void) {
    const char *text = "A llama 🦙, a camel 🐪 and 𝔘𝔫𝔦 — done";
    size_t n;
    int32_t *ids = enc(vocab_spm, text, true, false, &n);
    size_t n_bytes = 0;
    for (size_t i = 0; i < n; i++)
        n_bytes += kiln_vocab_token_type(vocab_spm, ids[i]) == KILN_TOKEN_BYTE;
    CHECK_MSG(n_bytes >= 8, "only %zu byte-fallback tokens: the test does not exercise splits",
              n_bytes);
    CHECK_EQ_INT(ids[0], kiln_vocab_bos(vocab_spm));
    check_stream(vocab_spm, ids, n, text);
    kiln_free(ids);
}

/* Byte-level BPE: an emoji's 4 bytes spread over tokens that are not UTF-8 on their own. */
static void detok_bpe_emoji_split(void) {
    const char *text = "emoji 🦙👨‍👩‍👧 and 日本語 ok";
    size_t n;
    int32_t *ids = enc(vocab_bpe, text, false, false, &n);
    size_t n_partial = 0;
    for (size_t i = 0; i < n; i++) {
        kiln_buf p;
        kiln_buf_init(&p);
        CHECK(kiln_tok_piece(vocab_bpe, ids[i], false, &p) == KILN_OK);
        n_partial += !utf8_valid(p.data, p.len);
        kiln_buf_deinit(&p);
    }
    CHECK_MSG(n_partial >= 2, "only %zu partial-character tokens", n_partial);
    check_stream(vocab_bpe, ids, n, text);
    kiln_free(ids);
}

/* Feeds raw bytes as SPM byte tokens; returns the stream output (with flush). */
static char *stream_bytes(const char *bytes, size_t n, size_t *out_len, size_t *len_before_last) {
    kiln_detok d;
    kiln_detok_init(&d, vocab_spm, true, false);
    kiln_buf out;
    kiln_buf_init(&out);
    for (size_t i = 0; i < n; i++) {
        char name[8];
        snprintf(name, sizeof(name), "<0x%02X>", (unsigned char)bytes[i]);
        int32_t id = kiln_vocab_find(vocab_spm, name, strlen(name));
        CHECK_MSG(id >= 0, "no token %s", name);
        if (i + 1 == n && len_before_last) *len_before_last = out.len;
        CHECK(kiln_detok_push(&d, id, &out) == KILN_OK);
    }
    CHECK(kiln_detok_flush(&d, &out) == KILN_OK);
    return kiln_buf_take(&out, out_len);
}

/* Unicode ch. 3 "U+FFFD substitution of maximal subparts" (the examples of table 3-8 & co). */
static void detok_invalid_utf8(void) {
#define FFFD "\xef\xbf\xbd"
    static const struct {
        const char *in;
        const char *want;
    } cases[] = {
        {"\xff", FFFD},
        {"\xe2"
         "A",
         FFFD "A"},
        {"\xe2\x82", FFFD},                        /* truncated at the end: one U+FFFD */
        {"\xf0\x9f\xa6\x99", "\xf0\x9f\xa6\x99"},  /* split over 4 tokens, complete */
        {"\xed\xa0\x80", FFFD FFFD FFFD},          /* surrogate */
        {"\xc0\xaf", FFFD FFFD},                   /* overlong */
        {"\xf4\x90\x80\x80", FFFD FFFD FFFD FFFD}, /* above U+10FFFF */
        {"a\x80"
         "b",
         "a" FFFD "b"},
        {"\xe1\x80\xe2\xf0\x91\x92\xf1\xbf"
         "A",
         FFFD FFFD FFFD FFFD "A"},
    };
    for (size_t i = 0; i < KILN_ARRAY_LEN(cases); i++) {
        size_t n;
        char *got = stream_bytes(cases[i].in, strlen(cases[i].in), &n, NULL);
        CHECK_MSG(got && strcmp(got, cases[i].want) == 0, "case %zu", i);
        kiln_free(got);
    }
    /* nothing is emitted before a character is complete */
    size_t n, before;
    char *got = stream_bytes("\xf0\x9f\xa6\x99", 4, &n, &before);
    CHECK_EQ_INT(before, 0);
    kiln_free(got);
#undef FFFD
}

static void special_tokens(void) {
    kiln_vocab *phi = load_vocab("phi-3");
    if (!phi) return;
    const char *text = "<|user|>\nHello<|end|>";
    size_t n1, n2;
    int32_t *a = enc(phi, text, false, true, &n1);
    int32_t *b = enc(phi, text, false, false, &n2);
    int32_t user = kiln_vocab_find(phi, "<|user|>", 8), end = kiln_vocab_find(phi, "<|end|>", 7);
    CHECK(user >= 0 && end >= 0);
    CHECK(n1 > 0 && a[0] == user && a[n1 - 1] == end);
    CHECK(!contains(b, n2, user) && !contains(b, n2, end));
    CHECK(kiln_vocab_is_control(phi, user));
    CHECK(kiln_vocab_is_eog(phi, end));
    CHECK(kiln_vocab_is_eog(phi, kiln_vocab_eos(phi)));
    CHECK(!kiln_vocab_is_eog(phi, a[1]));
    /* without special parsing the text comes back verbatim */
    kiln_buf d;
    kiln_buf_init(&d);
    CHECK(kiln_tok_decode(phi, b, n2, true, &d) == KILN_OK);
    CHECK_STR(d.data, text);
    kiln_buf_reset(&d);
    CHECK(kiln_tok_decode(phi, a, n1, true, &d) == KILN_OK); /* HF: skip specials, strip 1 space */
    CHECK_STR(d.data, "\nHello");
    kiln_buf_deinit(&d);
    kiln_free(a);
    kiln_free(b);
    /* GPT-2 */
    int32_t eot = kiln_vocab_find(vocab_bpe, "<|endoftext|>", 13);
    a = enc(vocab_bpe, "a<|endoftext|>b", false, true, &n1);
    b = enc(vocab_bpe, "a<|endoftext|>b", false, false, &n2);
    CHECK(n1 == 3 && a[1] == eot);
    CHECK(!contains(b, n2, eot) && n2 > 3);
    kiln_free(a);
    kiln_free(b);
    kiln_vocab_free(phi);
}

static void flags_and_pieces(void) {
    CHECK(kiln_vocab_add_bos(vocab_spm));
    CHECK(!kiln_vocab_add_bos(vocab_bpe));
    CHECK_EQ_INT(kiln_vocab_get_type(vocab_spm), KILN_VOCAB_SPM);
    CHECK_EQ_INT(kiln_vocab_get_type(vocab_bpe), KILN_VOCAB_BPE);
    CHECK_STR(kiln_vocab_pre(vocab_bpe), "gpt-2");
    CHECK_EQ_INT(kiln_vocab_n_tokens(vocab_bpe), 50257);
    size_t n;
    int32_t *ids = enc(vocab_bpe, "Hello", true, false, &n); /* GPT-2 adds no BOS */
    CHECK(n == 1 && ids[0] == 15496);
    kiln_free(ids);
    ids = enc(vocab_spm, "", true, false, &n); /* SPM: BOS alone */
    CHECK(n == 1 && ids[0] == 1);
    kiln_free(ids);
    kiln_buf b;
    kiln_buf_init(&b);
    CHECK(kiln_tok_piece(vocab_spm, kiln_vocab_find(vocab_spm, "<0x41>", 6), false, &b) == KILN_OK);
    CHECK(kiln_tok_piece(vocab_spm, kiln_vocab_find(vocab_spm, "\xe2\x96\x81Hello", 8), false,
                         &b) == KILN_OK);
    CHECK(kiln_tok_piece(vocab_spm, 1, false, &b) == KILN_OK); /* <s>: nothing */
    CHECK_STR(b.data, "A Hello");
    CHECK(kiln_tok_piece(vocab_spm, 1, true, &b) == KILN_OK);
    CHECK_STR(b.data, "A Hello<s>");
    CHECK(kiln_tok_piece(vocab_spm, 32000, false, &b) == KILN_ERR_INVALID);
    CHECK(kiln_tok_piece(vocab_spm, -1, false, &b) == KILN_ERR_INVALID);
    int32_t bad[] = {5, 99999};
    CHECK(kiln_tok_decode(vocab_spm, bad, 2, true, &b) == KILN_ERR_INVALID);
    kiln_detok d;
    kiln_detok_init(&d, vocab_spm, true, false);
    CHECK(kiln_detok_push(&d, -3, &b) == KILN_ERR_INVALID);
    CHECK(kiln_vocab_token_text(vocab_spm, 32000, &n) == NULL);
    kiln_buf_deinit(&b);
    /* generated continuation: no space stripping (llama.cpp), the whole sequence: stripped */
    kiln_detok_init(&d, vocab_spm, true, false);
    kiln_buf_init(&b);
    CHECK(kiln_detok_push(&d, kiln_vocab_find(vocab_spm, "\xe2\x96\x81Hello", 8), &b) == KILN_OK);
    CHECK_STR(b.data, " Hello");
    kiln_buf_deinit(&b);
}

/* Invalid UTF-8 and odd input never fail; byte-level BPE keeps every byte. */
static void odd_inputs(void) {
    const char text[] = "\xff\xfe abc \xc3 \xe2\x82 \x00 zero \xf0\x9f";
    size_t len = sizeof(text) - 1;
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(kiln_tok_encode(vocab_bpe, text, len, false, true, &ids, &n) == KILN_OK);
    kiln_buf b;
    kiln_buf_init(&b);
    for (size_t i = 0; i < n; i++) CHECK(kiln_tok_piece(vocab_bpe, ids[i], false, &b) == KILN_OK);
    CHECK(b.len == len && memcmp(b.data, text, len) == 0);
    kiln_free(ids);
    CHECK(kiln_tok_encode(vocab_spm, text, len, true, true, &ids, &n) == KILN_OK);
    kiln_buf_reset(&b);
    for (size_t i = 1; i < n; i++) CHECK(kiln_tok_piece(vocab_spm, ids[i], false, &b) == KILN_OK);
    CHECK(b.len == len + 1 && memcmp(b.data + 1, text, len) == 0); /* + the dummy prefix */
    kiln_free(ids);
    kiln_buf_deinit(&b);
    /* long runs: 256 KiB of spaces, of letters, of digits, of newlines */
    size_t big = 1 << 18;
    char *s = kiln_malloc(big);
    const char fills[] = {' ', 'a', '7', '\n'};
    for (size_t f = 0; f < sizeof(fills); f++) {
        memset(s, fills[f], big);
        CHECK(kiln_tok_encode(vocab_bpe, s, big, false, false, &ids, &n) == KILN_OK);
        CHECK(n > 0 && n <= big);
        kiln_free(ids);
        CHECK(kiln_tok_encode(vocab_spm, s, big, false, false, &ids, &n) == KILN_OK);
        CHECK(n > 0 && n <= big + 1);
        kiln_free(ids);
    }
    kiln_free(s);
}

/* Random bytes never fail to encode; byte-level BPE pieces give the bytes back exactly; random
 * ids always decode (and stream) to well-formed UTF-8. */
static void random_inputs(void) {
    kiln_rng r;
    kiln_rng_seed(&r, 2024);
    const char alphabet[] = "ab <|>\n\t\xe2\x96\x81\xf0\x9f\xa6\x99\xc3\xa9\xff\x80";
    for (int it = 0; it < 1500; it++) {
        char s[96];
        size_t len = kiln_rng_u64(&r) % sizeof(s);
        bool raw = it % 2;
        for (size_t i = 0; i < len; i++)
            s[i] = raw ? (char)kiln_rng_u64(&r)
                       : alphabet[kiln_rng_u64(&r) % (sizeof(alphabet) - 1)];
        int32_t *ids = NULL;
        size_t n = 0;
        bool special = it % 3 == 0;
        CHECK(kiln_tok_encode(vocab_bpe, s, len, false, special, &ids, &n) == KILN_OK);
        kiln_buf b;
        kiln_buf_init(&b);
        for (size_t i = 0; i < n; i++) kiln_tok_piece(vocab_bpe, ids[i], true, &b);
        CHECK_MSG(b.len == len && (len == 0 || memcmp(b.data, s, len) == 0), "iteration %d", it);
        kiln_free(ids);
        CHECK(kiln_tok_encode(vocab_spm, s, len, true, special, &ids, &n) == KILN_OK);
        kiln_free(ids);
        /* random ids */
        int32_t rid[32];
        size_t nr = kiln_rng_u64(&r) % 32;
        const kiln_vocab *v = it % 2 ? vocab_bpe : vocab_spm;
        for (size_t i = 0; i < nr; i++)
            rid[i] = (int32_t)(kiln_rng_u64(&r) % (uint64_t)kiln_vocab_n_tokens(v));
        kiln_buf_reset(&b);
        CHECK(kiln_tok_decode(v, rid, nr, it % 4 == 0, &b) == KILN_OK);
        CHECK_MSG(utf8_valid(b.data, b.len), "iteration %d: decode is not UTF-8", it);
        kiln_detok d;
        kiln_detok_init(&d, v, it % 4 == 0, true);
        kiln_buf st;
        kiln_buf_init(&st);
        for (size_t i = 0; i < nr; i++) CHECK(kiln_detok_push(&d, rid[i], &st) == KILN_OK);
        CHECK(kiln_detok_flush(&d, &st) == KILN_OK);
        CHECK_MSG(st.len == b.len && (st.len == 0 || memcmp(st.data, b.data, st.len) == 0),
                  "iteration %d: stream != decode", it);
        kiln_buf_deinit(&st);
        kiln_buf_deinit(&b);
    }
}

/* Every allocation of vocab load, encode and decode may fail: a clean error, no leak (ASan). */
static void alloc_failures_for(const char *path, const char *text) {
    kiln_gguf *g = NULL;
    if (kiln_gguf_open(path, &g) != KILN_OK) {
        CHECK_MSG(0, "open %s: %s", path, kiln_errmsg());
        return;
    }
    long n_ok = -1;
    for (long k = 0; k < 2000 && n_ok < 0; k++) {
        kiln_alloc_fail_after(k);
        kiln_vocab *v = NULL;
        int32_t *ids = NULL;
        size_t n = 0;
        kiln_buf b;
        kiln_buf_init(&b);
        kiln_err err = kiln_vocab_load(g, &v);
        if (!err) err = kiln_tok_encode(v, text, strlen(text), true, true, &ids, &n);
        if (!err) err = kiln_tok_decode(v, ids, n, true, &b);
        long failed = kiln_alloc_n_failed();
        kiln_alloc_fail_after(-1);
        if (err)
            CHECK_MSG(err == KILN_ERR_NOMEM, "k=%ld: %s: %s", k, kiln_err_name(err), kiln_errmsg());
        if (!err)
            CHECK_MSG(failed == 0, "k=%ld: %ld failed allocations went unreported", k, failed);
        if (!err && failed == 0) n_ok = k;
        kiln_free(ids);
        kiln_buf_deinit(&b);
        kiln_vocab_free(v);
    }
    CHECK_MSG(n_ok > 5, "never succeeded (or too few allocations: %ld)", n_ok);
    kiln_gguf_close(g);
}

static void alloc_failures(void) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/models/stories260K.gguf", test_data_dir());
    alloc_failures_for(path, "Once upon a time, 🦙 <s> there was");
    alloc_failures_for(path_of("falcon", ""), "Hello 123456 world!!! <|endoftext|> 日本 🦙");
}

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
    vocab_spm = load_vocab("llama-spm");
    vocab_bpe = load_vocab("gpt-2");
    if (vocab_spm && vocab_bpe) {
        RUN(detok_spm_byte_fallback);
        RUN(detok_bpe_emoji_split);
        RUN(detok_invalid_utf8);
        RUN(special_tokens);
        RUN(flags_and_pieces);
        RUN(odd_inputs);
        RUN(random_inputs);
    }
    RUN(alloc_failures);
    kiln_vocab_free(vocab_spm);
    kiln_vocab_free(vocab_bpe);
    return TEST_REPORT("test_tok");
}
