/* cmd_eval.c: `kiln eval -m MODEL --tokens 1,2,3 --dump-logits FILE [--batch-chunks K]
 * [--threads N]`: runs the token ids as one sequence through the paged forward pass (split into K
 * consecutive chunks) and writes float32 logits (n_tokens, n_vocab), little-endian, to FILE. The
 * contract with the numpy reference (tests/ref/forward.py, tests/suites/logit_parity.sh). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "model/model.h"

static void eval_usage(FILE *f) {
    fprintf(f, "usage: kiln eval -m MODEL --tokens ID,ID,... --dump-logits FILE [--batch-chunks K] [--threads N]\n");
}

/* Parses "1,2,3" into a kiln_malloc'd array. */
static kiln_err parse_ids(const char *s, int32_t **out, int32_t *n_out) {
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int32_t *ids = kiln_malloc(cap * sizeof(int32_t));
    if (!ids) return kiln_errf(KILN_ERR_NOMEM, "out of memory");
    int32_t n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
            kiln_free(ids);
            return kiln_errf(KILN_ERR_INVALID, "--tokens: bad id list near '%.16s'", p);
        }
        ids[n++] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    if (n == 0) {
        kiln_free(ids);
        return kiln_errf(KILN_ERR_INVALID, "--tokens: empty id list");
    }
    *out = ids;
    *n_out = n;
    return KILN_OK;
}

int kiln_cmd_eval(int argc, char **argv) {
    const char *model_path = NULL, *tokens = NULL, *dump = NULL;
    long chunks = 1, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            eval_usage(stdout);
            return 0;
        } else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && has_val) {
            model_path = argv[++i];
        } else if (!strcmp(a, "--tokens") && has_val) {
            tokens = argv[++i];
        } else if (!strcmp(a, "--dump-logits") && has_val) {
            dump = argv[++i];
        } else if (!strcmp(a, "--batch-chunks") && has_val) {
            chunks = strtol(argv[++i], NULL, 10);
        } else if (!strcmp(a, "--threads") && has_val) {
            threads = strtol(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "kiln eval: unknown or incomplete option '%s'\n", a);
            eval_usage(stderr);
            return 1;
        }
    }
    if (!model_path || !tokens || !dump || chunks < 1 || chunks > 1 << 20 || threads < 0 || threads > 1024) {
        eval_usage(stderr);
        return 1;
    }
    int rc = 1;
    int32_t *ids = NULL, n_ids = 0, *table = NULL;
    kiln_model *m = NULL;
    kiln_kv *kv = NULL;
    kiln_batch_row *rows = NULL;
    float *logits = NULL;
    FILE *f = NULL;
    kiln_err err;
    if ((err = parse_ids(tokens, &ids, &n_ids))) goto out_err;
    kiln_model_opts opts = {.n_threads = (int)threads};
    if ((err = kiln_model_load(model_path, &opts, &m))) goto out_err;
    const kiln_hparams *hp = kiln_model_hparams(m);
    const int32_t bs = 16, n_blocks = (n_ids + bs - 1) / bs;
    size_t per_block = (size_t)hp->n_layer * 2 * bs * (size_t)hp->n_head_kv * (size_t)hp->head_dim * sizeof(float);
    if ((err = kiln_kv_new(m, per_block * (size_t)n_blocks, bs, &kv))) goto out_err;
    table = kiln_malloc((size_t)n_blocks * sizeof(int32_t));
    rows = kiln_malloc((size_t)n_ids * sizeof(*rows));
    logits = kiln_malloc((size_t)n_ids * (size_t)hp->n_vocab * sizeof(float));
    if (!table || !rows || !logits) {
        err = kiln_errf(KILN_ERR_NOMEM, "out of memory for %d tokens", n_ids);
        goto out_err;
    }
    for (int32_t b = 0; b < n_blocks; b++)
        if ((err = kiln_kv_alloc_block(kv, &table[b]))) goto out_err;
    for (int32_t i = 0; i < n_ids; i++) rows[i] = (kiln_batch_row){.token = ids[i], .pos = i, .seq = 0, .want_logits = true};
    kiln_batch_seq seq = {.block_table = table, .n_blocks = n_blocks};
    int32_t per_chunk = (int32_t)((n_ids + chunks - 1) / chunks);
    for (int32_t start = 0; start < n_ids; start += per_chunk) {
        int32_t len = KILN_MIN(per_chunk, n_ids - start);
        kiln_batch b = {.n_rows = len, .rows = rows + start, .n_seqs = 1, .seqs = &seq};
        if ((err = kiln_model_forward(m, kv, &b, logits + (size_t)start * hp->n_vocab))) goto out_err;
    }
    f = fopen(dump, "wb");
    if (!f) {
        err = kiln_errf(KILN_ERR_IO, "%s: %s", dump, strerror(errno));
        goto out_err;
    }
    /* x86-64 and every platform kiln targets is little-endian: the floats are written as is. */
    size_t n_floats = (size_t)n_ids * (size_t)hp->n_vocab;
    if (fwrite(logits, sizeof(float), n_floats, f) != n_floats || fclose(f) != 0) {
        f = NULL;
        err = kiln_errf(KILN_ERR_IO, "%s: write failed", dump);
        goto out_err;
    }
    f = NULL;
    rc = 0;
    goto out;
out_err:
    fprintf(stderr, "kiln eval: %s\n", kiln_errmsg()[0] ? kiln_errmsg() : kiln_err_name(err));
out:
    if (f) fclose(f);
    kiln_free(logits);
    kiln_free(rows);
    kiln_free(table);
    kiln_kv_free(kv);
    kiln_model_free(m);
    kiln_free(ids);
    return rc;
}
