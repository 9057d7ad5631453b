/* fuzz_tok.c: libFuzzer driver for the tokenizers. Input byte 0 picks a vocabulary (llama-spm,
 * gpt-2, falcon, deepseek-llm from $KILN_TESTDATA/vocab, default ../shared/testdata), byte 1 the
 * flags, the rest is text. Invariants checked: encode never fails on any bytes; byte-level BPE
 * pieces give the text back where the vocabulary covers every byte; decoding the ids (and streaming them) yields well-formed UTF-8 and
 * stream == decode. Build: make fuzz; run: build/fuzz/fuzz_tok -max_total_time=60 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "tok/tok.h"

static const char *const names[] = {"llama-spm", "gpt-2", "falcon", "deepseek-llm"};
static kiln_vocab *vocabs[4];

static kiln_vocab *get_vocab(int i) {
    if (vocabs[i]) return vocabs[i];
    const char *dir = getenv("KILN_TESTDATA");
    char path[1024];
    snprintf(path, sizeof(path), "%s/vocab/ggml-vocab-%s.gguf", dir ? dir : "../shared/testdata",
             names[i]);
    kiln_gguf *g;
    if (kiln_gguf_open(path, &g) || kiln_vocab_load(g, &vocabs[i])) {
        fprintf(stderr, "fuzz_tok: %s: %s\n", path, kiln_errmsg());
        abort();
    }
    kiln_gguf_close(g);
    return vocabs[i];
}

static bool utf8_ok(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], lo = 0x80, hi = 0xbf;
        size_t l;
        if (c < 0x80) l = 1;
        else if (c >= 0xc2 && c <= 0xdf) l = 2;
        else if (c >= 0xe0 && c <= 0xef) l = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        else if (c >= 0xf0 && c <= 0xf4) l = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        else return false;
        if (i + l > n) return false;
        for (size_t k = 1; k < l; k++)
            if (k == 1 ? (s[i + k] < lo || s[i + k] > hi) : (s[i + k] & 0xc0) != 0x80) return false;
        i += l;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    const kiln_vocab *v = get_vocab(data[0] % 4);
    bool bos = data[1] & 1, special = data[1] & 2, skip = data[1] & 4;
    const char *text = (const char *)data + 2;
    size_t len = size - 2;
    int32_t *ids = NULL;
    size_t n = 0;
    if (kiln_tok_encode(v, text, len, bos, special, &ids, &n) != KILN_OK) abort();
    kiln_buf a, b;
    kiln_buf_init(&a);
    kiln_buf_init(&b);
    /* byte-level BPE is lossless where the vocabulary has a token for every byte: gpt-2 on any
     * bytes; deepseek-llm on UTF-8 (the chars of bytes C0, C1, F5..FF exist only as user-defined
     * tokens ø, ö, À ..., which decode literally); not falcon (no token for 03, 04, C0 ...: those
     * bytes are dropped, as HF's BPE without unk does) */
    if (data[0] % 4 == 1 || (data[0] % 4 == 3 && utf8_ok((const unsigned char *)text, len))) {
        for (size_t i = bos && kiln_vocab_add_bos(v); i < n; i++) kiln_tok_piece(v, ids[i], true, &a);
        if (a.len != len || (len && memcmp(a.data, text, len))) abort();
        kiln_buf_reset(&a);
    }
    if (kiln_tok_decode(v, ids, n, skip, &a) != KILN_OK) abort();
    kiln_detok d;
    kiln_detok_init(&d, v, skip, true);
    for (size_t i = 0; i < n; i++)
        if (kiln_detok_push(&d, ids[i], &b) != KILN_OK) abort();
    if (kiln_detok_flush(&d, &b) != KILN_OK) abort();
    if (a.len != b.len || (a.len && memcmp(a.data, b.data, a.len))) abort();
    if (!utf8_ok((const unsigned char *)a.data, a.len)) abort();
    kiln_free(ids);
    kiln_buf_deinit(&a);
    kiln_buf_deinit(&b);
    return 0;
}
