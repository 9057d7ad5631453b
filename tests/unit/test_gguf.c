/* test_gguf.c: the GGUF reader on the real stories260K.gguf (metadata and tensors as llama.cpp
 * wrote them), on every truncation of its header, on corrupted fields, and under allocation
 * failure: malformed input must give KILN_ERR_FORMAT/UNSUPPORTED, never a crash (ASan build too). */
#include "model/gguf.h"
#include "test.h"

static char *model_bytes;
static size_t model_len;

static bool load_model_bytes(void) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/models/stories260K.gguf", test_data_dir());
    return kiln_read_file(path, &model_bytes, &model_len) == KILN_OK;
}

static void reads_real_model(void) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/models/stories260K.gguf", test_data_dir());
    kiln_gguf *g = NULL;
    kiln_err err = kiln_gguf_open(path, &g);
    CHECK_MSG(err == KILN_OK, "%s", kiln_errmsg());
    if (err) return;
    CHECK_EQ_INT(g->version, 3);
    kiln_gguf_str arch;
    CHECK(kiln_gguf_get_str(g, "general.architecture", &arch) == KILN_OK && kiln_gguf_str_eq(arch, "llama"));
    uint64_t u;
    CHECK(kiln_gguf_get_u64(g, "llama.embedding_length", &u) == KILN_OK && u == 64);
    CHECK(kiln_gguf_get_u64(g, "llama.block_count", &u) == KILN_OK && u == 5);
    CHECK(kiln_gguf_get_u64(g, "llama.context_length", &u) == KILN_OK && u == 512);
    CHECK(kiln_gguf_get_u64(g, "llama.attention.head_count_kv", &u) == KILN_OK && u == 4);
    const kiln_gguf_kv *toks;
    CHECK(kiln_gguf_get_arr(g, "tokenizer.ggml.tokens", KILN_GGUF_STRING, &toks) == KILN_OK);
    CHECK_EQ_INT(toks->v.arr.n, 512);
    CHECK(kiln_gguf_str_eq(kiln_gguf_arr_str(toks, 0), "<unk>"));
    CHECK(kiln_gguf_str_eq(kiln_gguf_arr_str(toks, 1), "<s>"));
    const kiln_gguf_kv *scores;
    CHECK(kiln_gguf_get_arr(g, "tokenizer.ggml.scores", KILN_GGUF_FLOAT32, &scores) == KILN_OK);
    const kiln_gguf_tensor *t = kiln_gguf_tensor_find(g, "token_embd.weight");
    CHECK(t != NULL);
    if (t) {
        CHECK_EQ_INT(t->ne[0], 64);
        CHECK_EQ_INT(t->ne[1], 512);
        CHECK_EQ_INT(t->n_bytes, 64 * 512 * (t->type == KILN_DTYPE_F32 ? 4 : 2));
    }
    CHECK(kiln_gguf_tensor_find(g, "blk.4.ffn_down.weight") != NULL);
    CHECK(kiln_gguf_tensor_find(g, "blk.5.ffn_down.weight") == NULL);
    CHECK(kiln_gguf_get_u64(g, "no.such.key", &u) == KILN_ERR_NOT_FOUND);
    CHECK(kiln_gguf_get_f64(g, "llama.block_count", &(double){0}) == KILN_ERR_INVALID);
    kiln_gguf_close(g);
}

static void missing_file_is_io_error(void) {
    kiln_gguf *g = NULL;
    CHECK(kiln_gguf_open("/nonexistent/x.gguf", &g) == KILN_ERR_IO);
    CHECK(strstr(kiln_errmsg(), "/nonexistent/x.gguf") != NULL);
    CHECK(g == NULL);
}

/* Every truncation of the header (and some of the data) fails cleanly. */
static void truncations_fail_cleanly(void) {
    size_t limit = KILN_MIN(model_len, (size_t)40000);
    int n_ok = 0;
    for (size_t n = 0; n < limit; n += (n < 12000 ? 1 : 97)) {
        char *copy = malloc(n ? n : 1); /* exact size so ASan sees any overread */
        memcpy(copy, model_bytes, n);
        kiln_gguf *g = NULL;
        kiln_err err = kiln_gguf_open_buffer(copy, n, &g);
        if (err == KILN_OK) n_ok++;
        else CHECK_MSG(err == KILN_ERR_FORMAT, "len %zu: %s", n, kiln_errmsg());
        kiln_gguf_close(g);
        free(copy);
    }
    CHECK_EQ_INT(n_ok, 0);
}

static void write_u64(char *p, uint64_t v) { memcpy(p, &v, 8); }
static void write_u32(char *p, uint32_t v) { memcpy(p, &v, 4); }

static void corrupt_fields_are_rejected(void) {
    char *copy = malloc(model_len);
    kiln_gguf *g = NULL;
    /* bad magic */
    memcpy(copy, model_bytes, model_len);
    copy[0] = 'X';
    CHECK(kiln_gguf_open_buffer(copy, model_len, &g) == KILN_ERR_FORMAT);
    /* unsupported version */
    memcpy(copy, model_bytes, model_len);
    write_u32(copy + 4, 7);
    CHECK(kiln_gguf_open_buffer(copy, model_len, &g) == KILN_ERR_UNSUPPORTED);
    /* absurd counts */
    memcpy(copy, model_bytes, model_len);
    write_u64(copy + 8, UINT64_MAX);
    CHECK(kiln_gguf_open_buffer(copy, model_len, &g) == KILN_ERR_FORMAT);
    memcpy(copy, model_bytes, model_len);
    write_u64(copy + 16, 1ull << 40);
    CHECK(kiln_gguf_open_buffer(copy, model_len, &g) == KILN_ERR_FORMAT);
    /* first key's length huge */
    memcpy(copy, model_bytes, model_len);
    write_u64(copy + 24, UINT64_MAX - 3);
    CHECK(kiln_gguf_open_buffer(copy, model_len, &g) == KILN_ERR_FORMAT);
    /* first key's type out of range: key at 24 is 8-byte length + bytes */
    memcpy(copy, model_bytes, model_len);
    uint64_t klen;
    memcpy(&klen, copy + 24, 8);
    write_u32(copy + 32 + klen, 99);
    CHECK(kiln_gguf_open_buffer(copy, model_len, &g) == KILN_ERR_FORMAT);
    /* random single-byte corruption never crashes */
    kiln_rng r;
    kiln_rng_seed(&r, 7);
    for (int i = 0; i < 3000; i++) {
        memcpy(copy, model_bytes, model_len);
        size_t at = kiln_rng_u64(&r) % KILN_MIN(model_len, (size_t)12000);
        copy[at] = (char)kiln_rng_u64(&r);
        if (kiln_gguf_open_buffer(copy, model_len, &g) == KILN_OK) {
            /* still valid: lookups must stay inside the buffer */
            for (uint64_t k = 0; k < g->n_tensors; k++)
                CHECK((const char *)g->tensors[k].data + g->tensors[k].n_bytes <= copy + model_len);
            kiln_gguf_close(g);
        }
        g = NULL;
    }
    free(copy);
}

static void allocation_failures_are_clean(void) {
    int n_fail = 0;
    for (long n = 0; n < 10; n++) {
        kiln_gguf *g = NULL;
        kiln_alloc_fail_after(n);
        kiln_err err = kiln_gguf_open_buffer(model_bytes, model_len, &g);
        kiln_alloc_fail_after(-1);
        if (err) {
            CHECK_EQ_INT(err, KILN_ERR_NOMEM);
            n_fail++;
        }
        kiln_gguf_close(g);
    }
    CHECK(n_fail >= 2);
}

int main(void) {
    if (!load_model_bytes()) {
        fprintf(stderr, "cannot read stories260K.gguf under %s\n", test_data_dir());
        return 1;
    }
    RUN(reads_real_model);
    RUN(missing_file_is_io_error);
    RUN(truncations_fail_cleanly);
    RUN(corrupt_fields_are_rejected);
    RUN(allocation_failures_are_clean);
    free(model_bytes);
    return TEST_REPORT("test_gguf");
}
