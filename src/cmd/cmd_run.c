/* cmd_run.c: `kiln run -m MODEL -p TEXT [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p M]
 * [--seed S] [--repeat-penalty R] [--presence-penalty P] [--frequency-penalty F] [--threads N]
 * [--ctx N]`: tokenizes the prompt (BOS as the vocabulary asks, special tokens parsed), runs it
 * as one prefill batch, then samples and decodes one token per step through the paged cache.
 * Only the generated text goes to stdout, as complete UTF-8 characters, flushed per token;
 * timings go to stderr. Stops at an end-of-generation token, after N tokens, or at the context. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/cmd.h"
#include "model/model.h"
#include "sample/sample.h"
#include "tok/tok.h"

static void run_usage(FILE *f) {
    fprintf(f, "usage: kiln run -m MODEL -p TEXT [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p M]\n"
               "                [--seed S] [--repeat-penalty R] [--presence-penalty P] [--frequency-penalty F]\n"
               "                [--threads N] [--ctx N]\n"
               "  -n N   tokens to generate (default 128; -1 = until end of generation or context)\n"
               "  --temp 0 is greedy; defaults: temp 0.8, top-k 40, top-p 0.95, min-p 0.05 (llama.cpp's)\n");
}

static bool parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bool parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (end == s || *end || errno) return false;
    *out = v;
    return true;
}

typedef struct run_args {
    const char *model;
    const char *prompt;
    long n_gen;
    long threads;
    long ctx;
    kiln_sampler_params sp;
} run_args;

/* 0 = parsed, 1 = error (reported), 2 = help printed. */
static int parse_args(int argc, char **argv, run_args *a) {
    kiln_sampler_params_default(&a->sp);
    a->sp.temperature = 0.8f;
    a->sp.top_k = 40;
    a->sp.top_p = 0.95f;
    a->sp.min_p = 0.05f;
    a->n_gen = 128;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long l;
        bool ok = v != NULL;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            run_usage(stdout);
            return 2;
        } else if (!strcmp(o, "-m") || !strcmp(o, "--model")) {
            a->model = v;
        } else if (!strcmp(o, "-p") || !strcmp(o, "--prompt")) {
            a->prompt = v;
        } else if (!strcmp(o, "-n") || !strcmp(o, "--n-predict")) {
            ok = ok && parse_long(v, -1, 1 << 30, &a->n_gen);
        } else if (!strcmp(o, "--threads") || !strcmp(o, "-t")) {
            ok = ok && parse_long(v, 0, 1024, &a->threads);
        } else if (!strcmp(o, "--ctx") || !strcmp(o, "-c")) {
            ok = ok && parse_long(v, 0, INT32_MAX, &a->ctx);
        } else if (!strcmp(o, "--temp")) {
            ok = ok && parse_float(v, &a->sp.temperature);
        } else if (!strcmp(o, "--top-k")) {
            ok = ok && parse_long(v, -1, INT32_MAX, &l);
            if (ok) a->sp.top_k = (int32_t)l;
        } else if (!strcmp(o, "--top-p")) {
            ok = ok && parse_float(v, &a->sp.top_p);
        } else if (!strcmp(o, "--min-p")) {
            ok = ok && parse_float(v, &a->sp.min_p);
        } else if (!strcmp(o, "--repeat-penalty")) {
            ok = ok && parse_float(v, &a->sp.repetition_penalty);
        } else if (!strcmp(o, "--presence-penalty")) {
            ok = ok && parse_float(v, &a->sp.presence_penalty);
        } else if (!strcmp(o, "--frequency-penalty")) {
            ok = ok && parse_float(v, &a->sp.frequency_penalty);
        } else if (!strcmp(o, "--seed")) {
            char *end;
            errno = 0;
            a->sp.seed = ok ? strtoull(v, &end, 10) : 0;
            ok = ok && end != v && !*end && !errno;
            a->sp.has_seed = true;
        } else {
            fprintf(stderr, "kiln run: unknown option '%s'\n", o);
            run_usage(stderr);
            return 1;
        }
        if (!ok) {
            fprintf(stderr, "kiln run: option %s needs a valid value%s%s%s\n", o, v ? " (got '" : "", v ? v : "",
                    v ? "')" : "");
            return 1;
        }
        i++;
    }
    if (!a->model || !a->prompt) {
        fprintf(stderr, "kiln run: -m MODEL and -p TEXT are required\n");
        run_usage(stderr);
        return 1;
    }
    return 0;
}

static kiln_err write_out(kiln_buf *b) {
    if (b->len && fwrite(b->data, 1, b->len, stdout) != b->len)
        return kiln_errf(KILN_ERR_IO, "writing to stdout: %s", strerror(errno));
    fflush(stdout);
    kiln_buf_reset(b);
    return KILN_OK;
}

int kiln_cmd_run(int argc, char **argv) {
    run_args a = {0};
    int pr = parse_args(argc, argv, &a);
    if (pr) return pr == 2 ? 0 : 1;

    kiln_err err;
    kiln_model *m = NULL;
    kiln_vocab *vocab = NULL;
    kiln_kv *kv = NULL;
    kiln_sampler *smp = NULL;
    int32_t *ids = NULL, *table = NULL;
    size_t n_prompt = 0;
    kiln_batch_row *rows = NULL;
    float *logits = NULL;
    kiln_buf out;
    kiln_buf_init(&out);
    int rc = 1;

    kiln_model_opts opts = {.n_threads = (int)a.threads};
    if ((err = kiln_model_load(a.model, &opts, &m))) goto out_err;
    const kiln_hparams *hp = kiln_model_hparams(m);
    if ((err = kiln_vocab_load(kiln_model_gguf(m), &vocab))) goto out_err;
    if (kiln_vocab_n_tokens(vocab) > hp->n_vocab) {
        err = kiln_errf(KILN_ERR_FORMAT, "%s: the vocabulary has %d tokens but the model only %d rows", a.model,
                        kiln_vocab_n_tokens(vocab), hp->n_vocab);
        goto out_err;
    }
    /* Embedding rows past the vocabulary (padding) can never be sampled: the sampler sees only
     * the first n_tokens logits. */
    int32_t n_sample = KILN_MIN(kiln_vocab_n_tokens(vocab), hp->n_vocab);
    if ((err = kiln_sampler_new(&a.sp, n_sample, NULL, &smp))) goto out_err;
    if ((err = kiln_tok_encode(vocab, a.prompt, strlen(a.prompt), true, true, &ids, &n_prompt))) goto out_err;
    int64_t n_ctx = a.ctx > 0 ? a.ctx : hp->n_ctx_train;
    if (n_prompt == 0) {
        err = kiln_errf(KILN_ERR_INVALID, "the prompt is empty and the vocabulary adds no BOS");
        goto out_err;
    }
    if ((int64_t)n_prompt >= n_ctx) {
        err = kiln_errf(KILN_ERR_LIMIT, "the prompt has %zu tokens; the context holds %lld", n_prompt, (long long)n_ctx);
        goto out_err;
    }
    int64_t n_gen = a.n_gen < 0 ? n_ctx - (int64_t)n_prompt : KILN_MIN(a.n_gen, n_ctx - (int64_t)n_prompt);
    if (a.n_gen > n_gen) fprintf(stderr, "kiln run: generation limited to %lld tokens by the context of %lld\n",
                                 (long long)n_gen, (long long)n_ctx);
    if ((err = kiln_sampler_accept_prompt(smp, ids, n_prompt))) goto out_err;

    /* The cache holds the whole sequence: prompt plus generated tokens. */
    const int32_t bs = 16;
    int64_t n_total = (int64_t)n_prompt + n_gen;
    int32_t n_blocks = (int32_t)((n_total + bs - 1) / bs);
    size_t per_block = (size_t)hp->n_layer * 2 * bs * (size_t)hp->n_head_kv * (size_t)hp->head_dim * sizeof(float);
    size_t budget;
    if (!kiln_mul_size(per_block, (size_t)n_blocks, &budget)) {
        err = kiln_errf(KILN_ERR_LIMIT, "context of %lld tokens is too large", (long long)n_total);
        goto out_err;
    }
    if ((err = kiln_kv_new(m, budget, bs, &kv))) goto out_err;
    table = kiln_malloc((size_t)n_blocks * sizeof(int32_t));
    rows = kiln_malloc(n_prompt * sizeof(*rows));
    logits = kiln_malloc((size_t)hp->n_vocab * sizeof(float));
    if (!table || !rows || !logits) {
        err = kiln_errf(KILN_ERR_NOMEM, "out of memory");
        goto out_err;
    }
    for (int32_t i = 0; i < n_blocks; i++)
        if ((err = kiln_kv_alloc_block(kv, &table[i]))) goto out_err;
    kiln_batch_seq seq = {.block_table = table, .n_blocks = n_blocks};
    for (size_t i = 0; i < n_prompt; i++)
        rows[i] = (kiln_batch_row){.token = ids[i], .pos = (int32_t)i, .seq = 0, .want_logits = i + 1 == n_prompt};

    /* Prefill in chunks of at most 512 rows, which bounds the activation scratch. */
    double t0 = kiln_now_s();
    for (size_t start = 0; start < n_prompt; start += 512) {
        kiln_batch pb = {.n_rows = (int32_t)KILN_MIN(n_prompt - start, (size_t)512), .rows = rows + start,
                         .n_seqs = 1, .seqs = &seq};
        if ((err = kiln_model_forward(m, kv, &pb, logits))) goto out_err;
    }
    double t1 = kiln_now_s();

    kiln_detok dt;
    kiln_detok_init(&dt, vocab, true, false);
    int64_t n_done = 0;
    for (; n_done < n_gen; n_done++) {
        kiln_sample_result res;
        if ((err = kiln_sampler_sample(smp, logits, &res))) goto out_err;
        if (kiln_vocab_is_eog(vocab, res.token)) break;
        if ((err = kiln_detok_push(&dt, res.token, &out)) || (err = write_out(&out))) goto out_err;
        if (n_done + 1 == n_gen) {
            n_done++;
            break;
        }
        kiln_batch_row r = {.token = res.token, .pos = (int32_t)(n_prompt + n_done), .seq = 0, .want_logits = true};
        kiln_batch db = {.n_rows = 1, .rows = &r, .n_seqs = 1, .seqs = &seq};
        if ((err = kiln_model_forward(m, kv, &db, logits))) goto out_err;
    }
    if ((err = kiln_detok_flush(&dt, &out)) || (err = write_out(&out))) goto out_err;
    double t2 = kiln_now_s();
    fprintf(stderr, "\nkiln run: prompt %zu tokens in %.3f s (%.1f tok/s), generated %lld tokens in %.3f s (%.1f tok/s)\n",
            n_prompt, t1 - t0, (double)n_prompt / (t1 - t0 > 0 ? t1 - t0 : 1e-9), (long long)n_done, t2 - t1,
            (double)n_done / (t2 - t1 > 0 ? t2 - t1 : 1e-9));
    rc = 0;
    goto out;
out_err:
    fprintf(stderr, "kiln run: %s\n", kiln_errmsg()[0] ? kiln_errmsg() : kiln_err_name(err));
out:
    kiln_buf_deinit(&out);
    kiln_free(logits);
    kiln_free(rows);
    kiln_free(table);
    kiln_free(ids);
    kiln_kv_free(kv);
    kiln_sampler_free(smp);
    kiln_vocab_free(vocab);
    kiln_model_free(m);
    return rc;
}
