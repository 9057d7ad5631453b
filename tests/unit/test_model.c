/* test_model.c: model loading, the paged KV cache and the batched forward pass.
 * References: the real stories260K model's known greedy ids (testdata README, produced by
 * llama.cpp), and each sequence run alone as the reference for the batched, interleaved, paged
 * runs (batching invariance). Corrupted copies of the real GGUF check every load error names the
 * file and the tensor/key; allocation failures are injected through kiln_alloc_fail_after. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "model/internal.h"
#include "test.h"

static char model_path[1024];
static char tmp_dir[256];

static kiln_model *load(const char *path) {
    kiln_model *m = NULL;
    kiln_model_opts o = {.n_threads = 2};
    kiln_err err = kiln_model_load(path, &o, &m);
    CHECK_MSG(err == KILN_OK, "%s: %s", path, kiln_errmsg());
    return m;
}

static kiln_kv *new_kv(kiln_model *m, int32_t n_blocks, int32_t bs) {
    const kiln_hparams *hp = kiln_model_hparams(m);
    size_t per = (size_t)hp->n_layer * 2 * (size_t)bs * (size_t)(hp->n_head_kv * hp->head_dim) * sizeof(float);
    kiln_kv *kv = NULL;
    CHECK(kiln_kv_new(m, per * (size_t)n_blocks, bs, &kv) == KILN_OK);
    return kv;
}

/* Runs tokens as one sequence alone (fresh cache of blocks of bs positions, blocks in order, one
 * batch): logits (n, n_vocab). */
static float *run_alone_bs(kiln_model *m, const int32_t *toks, int32_t n, int32_t bs) {
    const int32_t nb = (n + bs - 1) / bs;
    kiln_kv *kv = new_kv(m, nb, bs);
    int32_t n_vocab = kiln_model_hparams(m)->n_vocab;
    int32_t *table = malloc(sizeof(int32_t) * (size_t)nb);
    kiln_batch_row *rows = malloc(sizeof(*rows) * (size_t)n);
    float *logits = malloc(sizeof(float) * (size_t)n * (size_t)n_vocab);
    for (int32_t b = 0; b < nb; b++) CHECK(kiln_kv_alloc_block(kv, &table[b]) == KILN_OK);
    for (int32_t i = 0; i < n; i++) rows[i] = (kiln_batch_row){toks[i], i, 0, true};
    kiln_batch_seq sq = {table, nb};
    kiln_batch batch = {n, rows, 1, &sq};
    CHECK(kiln_model_forward(m, kv, &batch, logits) == KILN_OK);
    free(rows);
    free(table);
    kiln_kv_free(kv);
    return logits;
}

static float *run_alone(kiln_model *m, const int32_t *toks, int32_t n) { return run_alone_bs(m, toks, n, 16); }

static int32_t argmax(const float *x, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* ---- the real model ---- */

static void real_hparams(void) {
    kiln_model *m = load(model_path);
    if (!m) return;
    const kiln_hparams *hp = kiln_model_hparams(m);
    /* From the testdata README: dim 64, 5 layers, 8 heads, 4 KV heads, hidden 172, vocab 512. */
    CHECK_EQ_INT(hp->arch, KILN_ARCH_LLAMA);
    CHECK_EQ_INT(hp->n_vocab, 512);
    CHECK_EQ_INT(hp->n_embd, 64);
    CHECK_EQ_INT(hp->n_layer, 5);
    CHECK_EQ_INT(hp->n_head, 8);
    CHECK_EQ_INT(hp->n_head_kv, 4);
    CHECK_EQ_INT(hp->head_dim, 8);
    CHECK_EQ_INT(hp->n_ff, 172);
    CHECK_EQ_INT(hp->n_ctx_train, 512);
    CHECK_EQ_INT(hp->rope_type, KILN_ROPE_NORM);
    CHECK_NEAR(hp->rope_theta, 10000, 0);
    CHECK_NEAR(hp->norm_eps, 1e-5, 1e-9);
    CHECK(!hp->tied_output);
    CHECK(kiln_model_gguf(m) != NULL);
    kiln_model_free(m);
}

/* Greedy decoding one token per forward reproduces the README's first generated ids. */
static void real_greedy_ids(void) {
    kiln_model *m = load(model_path);
    if (!m) return;
    const int32_t prompt[5] = {1, 403, 407, 261, 378};
    const int32_t want[13] = {432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401};
    kiln_kv *kv = new_kv(m, 8, 4);
    int32_t table[5];
    for (int i = 0; i < 5; i++) CHECK(kiln_kv_alloc_block(kv, &table[4 - i]) == KILN_OK); /* reversed */
    kiln_batch_seq sq = {table, 5};
    kiln_batch_row rows[5];
    for (int i = 0; i < 5; i++) rows[i] = (kiln_batch_row){prompt[i], i, 0, i == 4};
    float logits[512];
    kiln_batch b = {5, rows, 1, &sq};
    CHECK(kiln_model_forward(m, kv, &b, logits) == KILN_OK);
    for (int i = 0; i < 13; i++) {
        int32_t t = argmax(logits, 512);
        CHECK_MSG(t == want[i], "step %d: got %d, want %d", i, t, want[i]);
        kiln_batch_row r = {t, 5 + i, 0, true};
        kiln_batch one = {1, &r, 1, &sq};
        CHECK(kiln_model_forward(m, kv, &one, logits) == KILN_OK);
    }
    kiln_kv_free(kv);
    kiln_model_free(m);
}

/* ---- batching invariance ---- */

#define N_SEQ 4
/* Several sequences through one cache with shuffled block tables (block size 4), rows of
 * different sequences interleaved, prefill chunks of several sequences in one batch, then decode
 * steps; logits of every row that asks must equal the sequence run alone. */
static void check_batching_invariance(kiln_model *m, uint64_t seed) {
    const kiln_hparams *hp = kiln_model_hparams(m);
    const int32_t V = hp->n_vocab, bs = 4;
    const int32_t len[N_SEQ] = {37, 6, 19, 3};
    kiln_rng rng;
    kiln_rng_seed(&rng, seed);
    int32_t *toks[N_SEQ], *tables[N_SEQ], n_blocks[N_SEQ];
    float *ref[N_SEQ];
    int32_t total_blocks = 0;
    for (int s = 0; s < N_SEQ; s++) {
        toks[s] = malloc(sizeof(int32_t) * (size_t)len[s]);
        for (int32_t i = 0; i < len[s]; i++) toks[s][i] = (int32_t)(kiln_rng_u64(&rng) % (uint64_t)V);
        /* the same block size: the attention chunk grid (hence every rounding) is the same, and
         * with int8-quantized activations a last-bit difference could flip a rounding step */
        ref[s] = run_alone_bs(m, toks[s], len[s], bs);
        n_blocks[s] = (len[s] + bs - 1) / bs;
        total_blocks += n_blocks[s];
    }
    kiln_kv *kv = new_kv(m, total_blocks + 3, bs);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(total_blocks + 3));
    for (int32_t i = 0; i < total_blocks + 3; i++) CHECK(kiln_kv_alloc_block(kv, &ids[i]) == KILN_OK);
    for (int32_t i = total_blocks + 2; i > 0; i--) { /* shuffle */
        int32_t j = (int32_t)(kiln_rng_u64(&rng) % (uint64_t)(i + 1)), t = ids[i];
        ids[i] = ids[j], ids[j] = t;
    }
    int32_t used = 0;
    kiln_batch_seq seqs[N_SEQ];
    for (int s = 0; s < N_SEQ; s++) {
        tables[s] = ids + used;
        used += n_blocks[s];
        seqs[s] = (kiln_batch_seq){tables[s], n_blocks[s]};
    }
    int32_t done[N_SEQ] = {0};
    kiln_batch_row rows[64];
    int32_t row_seq_pos[64][2];
    float *logits = malloc(sizeof(float) * 64 * (size_t)V);
    int steps = 0, n_checked = 0;
    for (;;) {
        /* This step's chunk per sequence: prefill chunks of 1..12 early, then single decode rows. */
        int32_t take[N_SEQ], left_any = 0;
        for (int s = 0; s < N_SEQ; s++) {
            int32_t left = len[s] - done[s];
            int32_t c = steps < 2 ? 1 + (int32_t)(kiln_rng_u64(&rng) % 12) : 1;
            if (steps == 0 && s == N_SEQ - 1) c = 0; /* the last sequence joins later */
            take[s] = KILN_MIN(c, left);
            left_any |= left;
        }
        if (!left_any) break;
        /* Interleave round-robin across sequences. */
        int32_t n = 0, k[N_SEQ] = {0};
        for (bool more = true; more;) {
            more = false;
            for (int s = 0; s < N_SEQ; s++) {
                if (k[s] >= take[s]) continue;
                int32_t pos = done[s] + k[s]++;
                bool want = (kiln_rng_u64(&rng) % 4) != 0 || pos == len[s] - 1;
                rows[n] = (kiln_batch_row){toks[s][pos], pos, s, want};
                row_seq_pos[n][0] = s, row_seq_pos[n][1] = pos;
                n++;
                more = true;
            }
        }
        kiln_batch b = {n, rows, N_SEQ, seqs};
        kiln_err err = kiln_model_forward(m, kv, &b, logits);
        CHECK_MSG(err == KILN_OK, "step %d: %s", steps, kiln_errmsg());
        int32_t li = 0;
        for (int32_t r = 0; r < n; r++) {
            if (!rows[r].want_logits) continue;
            const float *got = logits + (size_t)li++ * V;
            const float *want = ref[row_seq_pos[r][0]] + (size_t)row_seq_pos[r][1] * V;
            double worst = 0;
            for (int32_t v = 0; v < V; v++) {
                double e = fabs((double)got[v] - want[v]) / fmax(1.0, fabs(want[v]));
                worst = fmax(worst, e);
            }
            CHECK_MSG(worst <= 1e-4, "seq %d pos %d: relative error %g", row_seq_pos[r][0], row_seq_pos[r][1], worst);
            n_checked++;
        }
        for (int s = 0; s < N_SEQ; s++) done[s] += take[s];
        steps++;
    }
    CHECK(steps >= 4);
    CHECK(n_checked >= 30);
    free(logits);
    free(ids);
    kiln_kv_free(kv);
    for (int s = 0; s < N_SEQ; s++) free(toks[s]), free(ref[s]);
}

static void batching_invariance_real(void) {
    kiln_model *m = load(model_path);
    if (!m) return;
    check_batching_invariance(m, 7);
    check_batching_invariance(m, 8);
    kiln_model_free(m);
}

/* Random-weight models from tools/gen_model.py (when Python with numpy is available; its absence
 * is reported, not failed): qwen3 with head_dim != dim / heads (NEOX, Q/K norms), and a tied llama
 * with Llama 3.1 rope_freqs in Q4_0. */
static void batching_invariance_random(void) {
    const char *root = getenv("KILN_ROOT");
    const struct {
        const char *flags;
        kiln_arch arch;
    } models[] = {
        {"--arch qwen3 --type q8_0 --dim 64 --heads 4 --kv-heads 2 --head-dim 32", KILN_ARCH_QWEN3},
        {"--arch llama --type q4_0 --dim 64 --heads 4 --kv-heads 1 --tied --llama3-rope 8,1,4,32", KILN_ARCH_LLAMA},
    };
    for (size_t i = 0; i < KILN_ARRAY_LEN(models); i++) {
        char path[512], cmd[1400];
        snprintf(path, sizeof(path), "%s/random%zu.gguf", tmp_dir, i);
        snprintf(cmd, sizeof(cmd), "/usr/bin/python3 %s/tools/gen_model.py %s %s --layers 2 --vocab 300 >/dev/null 2>&1",
                 root ? root : ".", path, models[i].flags);
        if (system(cmd) != 0) {
            fprintf(stderr, "  (skipped: tools/gen_model.py %s failed or is unavailable)\n", models[i].flags);
            continue;
        }
        kiln_model *m = load(path);
        if (!m) continue;
        CHECK_EQ_INT(kiln_model_hparams(m)->arch, models[i].arch);
        if (models[i].arch == KILN_ARCH_LLAMA) CHECK(m->freq_factors && kiln_model_hparams(m)->tied_output);
        if (models[i].arch == KILN_ARCH_QWEN3) CHECK_EQ_INT(kiln_model_hparams(m)->head_dim, 32);
        check_batching_invariance(m, 9 + i);
        kiln_model_free(m);
        unlink(path);
    }
}

/* Bit-identical logits for a sequence's rows however its prefill is cut into forwards and
 * whatever other rows share the batch: one batch (attention groups many rows of the sequence),
 * one row per forward, 7-row chunks, and the whole prompt after another sequence's rows. The
 * cache block size (16) is the same throughout, so the attention chunk grid is too. */
static void prefill_split_bitexact(void) {
    kiln_model *m = load(model_path);
    if (!m) return;
    const int32_t n = 45, bs = 16, nb = (n + bs - 1) / bs, V = kiln_model_hparams(m)->n_vocab;
    int32_t toks[45], other[20];
    kiln_rng rng;
    kiln_rng_seed(&rng, 11);
    for (int32_t i = 0; i < n; i++) toks[i] = (int32_t)(kiln_rng_u64(&rng) % (uint64_t)V);
    for (int32_t i = 0; i < 20; i++) other[i] = (int32_t)(kiln_rng_u64(&rng) % (uint64_t)V);
    float *ref = run_alone(m, toks, n);
    float *logits = malloc(sizeof(float) * (size_t)(n + 20) * (size_t)V);
    kiln_batch_row rows[65];
    for (int mode = 0; mode < 3; mode++) {
        kiln_kv *kv = new_kv(m, 2 * nb, bs);
        int32_t table[2][3];
        for (int s = 0; s < 2; s++)
            for (int32_t b = 0; b < nb; b++) CHECK(kiln_kv_alloc_block(kv, &table[1 - s][b]) == KILN_OK);
        kiln_batch_seq seqs[2] = {{table[0], nb}, {table[1], 2}};
        int bad = 0;
        if (mode < 2) { /* one row at a time, then 7-row chunks */
            int32_t step = mode == 0 ? 1 : 7;
            for (int32_t p0 = 0; p0 < n; p0 += step) {
                int32_t len = KILN_MIN(step, n - p0);
                for (int32_t i = 0; i < len; i++) rows[i] = (kiln_batch_row){toks[p0 + i], p0 + i, 0, true};
                kiln_batch b = {len, rows, 2, seqs};
                CHECK(kiln_model_forward(m, kv, &b, logits) == KILN_OK);
                bad += memcmp(logits, ref + (size_t)p0 * V, sizeof(float) * (size_t)len * (size_t)V) != 0;
            }
        } else { /* another sequence's 20 rows first, then the whole prompt */
            for (int32_t i = 0; i < 20; i++) rows[i] = (kiln_batch_row){other[i], i, 1, false};
            for (int32_t i = 0; i < n; i++) rows[20 + i] = (kiln_batch_row){toks[i], i, 0, true};
            kiln_batch b = {20 + n, rows, 2, seqs};
            CHECK(kiln_model_forward(m, kv, &b, logits) == KILN_OK);
            bad += memcmp(logits, ref, sizeof(float) * (size_t)n * (size_t)V) != 0;
        }
        CHECK_MSG(bad == 0, "mode %d: %d forwards differ from the one-batch prefill", mode, bad);
        kiln_kv_free(kv);
    }
    free(logits);
    free(ref);
    kiln_model_free(m);
}

/* Prefix sharing: B reuses A's two full blocks (refcount 2, read-only) and a copy of A's third,
 * then diverges; its logits equal B run alone. */
static void prefix_sharing(void) {
    kiln_model *m = load(model_path);
    if (!m) return;
    const int32_t bs = 4;
    int32_t a_toks[12], b_toks[14];
    for (int i = 0; i < 12; i++) a_toks[i] = 10 + i * 17 % 500;
    for (int i = 0; i < 14; i++) b_toks[i] = i < 10 ? a_toks[i] : 300 + i;
    float *ref = run_alone(m, b_toks, 14);
    kiln_kv *kv = new_kv(m, 8, bs);
    int32_t ta[3], tb[4];
    for (int i = 0; i < 3; i++) CHECK(kiln_kv_alloc_block(kv, &ta[i]) == KILN_OK);
    kiln_batch_row rows[12];
    for (int i = 0; i < 12; i++) rows[i] = (kiln_batch_row){a_toks[i], i, 0, false};
    kiln_batch_seq sa = {ta, 3};
    kiln_batch ba = {12, rows, 1, &sa};
    CHECK(kiln_model_forward(m, kv, &ba, NULL) == KILN_OK);
    tb[0] = ta[0], tb[1] = ta[1];
    kiln_kv_ref_block(kv, ta[0]);
    kiln_kv_ref_block(kv, ta[1]);
    CHECK_EQ_INT(kiln_kv_refcount(kv, ta[0]), 2);
    CHECK(kiln_kv_alloc_block(kv, &tb[2]) == KILN_OK);
    CHECK(kiln_kv_alloc_block(kv, &tb[3]) == KILN_OK);
    kiln_kv_copy_block(kv, tb[2], ta[2]); /* positions 8, 9 shared; 10, 11 get overwritten */
    CHECK(memcmp(kiln_kv_k(kv, tb[2], 0), kiln_kv_k(kv, ta[2], 0), kiln_kv_bytes_per_block(kv)) == 0);
    kiln_batch_row br[4];
    for (int i = 0; i < 4; i++) br[i] = (kiln_batch_row){b_toks[10 + i], 10 + i, 0, true};
    kiln_batch_seq sb = {tb, 4};
    kiln_batch bb = {4, br, 1, &sb};
    float logits[4 * 512];
    CHECK(kiln_model_forward(m, kv, &bb, logits) == KILN_OK);
    for (int i = 0; i < 4; i++)
        for (int v = 0; v < 512; v++)
            CHECK_MSG(fabsf(logits[i * 512 + v] - ref[(10 + i) * 512 + v]) <= 1e-4f * fmaxf(1, fabsf(ref[(10 + i) * 512 + v])),
                      "pos %d id %d: %g vs %g", 10 + i, v, logits[i * 512 + v], ref[(10 + i) * 512 + v]);
    /* Writing into a shared block is refused. */
    kiln_batch_row w = {5, 7, 0, true};
    kiln_batch bw = {1, &w, 1, &sb};
    CHECK(kiln_model_forward(m, kv, &bw, logits) == KILN_ERR_INVALID);
    free(ref);
    kiln_kv_free(kv);
    kiln_model_free(m);
}

/* ---- error paths of the forward pass: each rejected before any cache slot changes ---- */
static void forward_errors(void) {
    kiln_model *m = load(model_path);
    if (!m) return;
    kiln_kv *kv = new_kv(m, 4, 4);
    int32_t t[2];
    CHECK(kiln_kv_alloc_block(kv, &t[0]) == KILN_OK);
    CHECK(kiln_kv_alloc_block(kv, &t[1]) == KILN_OK);
    kiln_batch_seq sq = {t, 2};
    kiln_batch_row ok[3] = {{1, 0, 0, false}, {2, 1, 0, false}, {3, 2, 0, true}};
    float logits[3 * 512];
    kiln_batch b = {3, ok, 1, &sq};
    CHECK(kiln_model_forward(m, kv, &b, logits) == KILN_OK);
    size_t bytes = (size_t)kiln_kv_n_blocks(kv) * kiln_kv_bytes_per_block(kv);
    float *snap = malloc(bytes);
    memcpy(snap, kv->data, bytes);

    struct {
        kiln_batch_row bad;
        const char *what;
    } cases[] = {
        {{-1, 3, 0, true}, "token id -1"},
        {{512, 3, 0, true}, "token id 512"},
        {{5, -1, 0, true}, "position -1"},
        {{5, 8, 0, true}, "position 8"},       /* past the 2-block table */
        {{5, 3, 1, true}, "sequence 1"},       /* only one sequence */
        {{5, 2, 0, true}, "position 2 again"}, /* not after position 2 of the row before */
    };
    for (size_t i = 0; i < KILN_ARRAY_LEN(cases); i++) {
        kiln_batch_row rows[2] = {{7, 2, 0, true}, cases[i].bad}; /* a valid row first */
        if (i == 5) rows[0] = (kiln_batch_row){7, 2, 0, true}, rows[1].pos = 2;
        kiln_batch bad = {2, rows, 1, &sq};
        CHECK_MSG(kiln_model_forward(m, kv, &bad, logits) == KILN_ERR_INVALID, "%s accepted", cases[i].what);
        CHECK_MSG(strstr(kiln_errmsg(), "row 1") != NULL, "%s: message '%s'", cases[i].what, kiln_errmsg());
    }
    /* Logits wanted without a buffer. */
    kiln_batch_row one = {5, 3, 0, true};
    kiln_batch b1 = {1, &one, 1, &sq};
    CHECK(kiln_model_forward(m, kv, &b1, NULL) == KILN_ERR_INVALID);
    /* A block table naming a free block, or one out of range. */
    int32_t free_blk[2] = {t[0], 3}, out_blk[2] = {t[0], 99};
    kiln_batch_seq sf = {free_blk, 2}, so = {out_blk, 2};
    kiln_batch_row r5 = {5, 5, 0, true};
    kiln_batch bf = {1, &r5, 1, &sf}, bo = {1, &r5, 1, &so};
    CHECK(kiln_model_forward(m, kv, &bf, logits) == KILN_ERR_INVALID);
    CHECK(kiln_model_forward(m, kv, &bo, logits) == KILN_ERR_INVALID);
    /* Too-short block table: one block for position 4. */
    kiln_batch_seq ss = {t, 1};
    kiln_batch_row r4 = {5, 4, 0, true};
    kiln_batch bs = {1, &r4, 1, &ss};
    CHECK(kiln_model_forward(m, kv, &bs, logits) == KILN_ERR_INVALID);
    CHECK(memcmp(snap, kv->data, bytes) == 0); /* nothing was written */
    /* Zero rows is a no-op. */
    kiln_batch empty = {0, NULL, 0, NULL};
    CHECK(kiln_model_forward(m, kv, &empty, NULL) == KILN_OK);
    free(snap);
    kiln_kv_free(kv);
    kiln_model_free(m);
}

/* ---- KV block accounting ---- */
static void kv_accounting(void) {
    kiln_model *m = load(model_path);
    if (!m) return;
    kiln_kv *kv = NULL;
    /* 5 layers * 2 * 8 slots * 32 floats * 4 bytes */
    size_t per = 5 * 2 * 8 * 32 * 4;
    CHECK(kiln_kv_new(m, per - 1, 8, &kv) == KILN_ERR_INVALID && kv == NULL);
    CHECK(kiln_kv_new(m, per * 10, 0, &kv) == KILN_ERR_INVALID);
    CHECK(kiln_kv_new(m, per * 3 + per / 2, 8, &kv) == KILN_OK);
    CHECK_EQ_INT(kiln_kv_bytes_per_block(kv), per);
    CHECK_EQ_INT(kiln_kv_block_size(kv), 8);
    CHECK_EQ_INT(kiln_kv_n_blocks(kv), 3);
    CHECK_EQ_INT(kiln_kv_n_free(kv), 3);
    int32_t b[4];
    for (int i = 0; i < 3; i++) CHECK(kiln_kv_alloc_block(kv, &b[i]) == KILN_OK);
    CHECK(b[0] != b[1] && b[1] != b[2] && b[0] != b[2]);
    CHECK_EQ_INT(kiln_kv_n_free(kv), 0);
    CHECK(kiln_kv_alloc_block(kv, &b[3]) == KILN_ERR_FULL);
    kiln_kv_ref_block(kv, b[1]);
    CHECK_EQ_INT(kiln_kv_refcount(kv, b[1]), 2);
    kiln_kv_unref_block(kv, b[1]);
    CHECK_EQ_INT(kiln_kv_n_free(kv), 0);
    kiln_kv_unref_block(kv, b[1]);
    CHECK_EQ_INT(kiln_kv_refcount(kv, b[1]), 0);
    CHECK_EQ_INT(kiln_kv_n_free(kv), 1);
    CHECK(kiln_kv_alloc_block(kv, &b[3]) == KILN_OK && b[3] == b[1]);
    kiln_kv_unref_block(kv, b[0]);
    kiln_kv_unref_block(kv, b[2]);
    kiln_kv_unref_block(kv, b[3]);
    CHECK_EQ_INT(kiln_kv_n_free(kv), 3);
    kiln_kv_free(kv);
    kiln_kv_free(NULL);
    kiln_model_free(m);
}

/* ---- corrupted model files ---- */

static uint8_t *orig;
static size_t orig_len;

/* Offset just past the length-prefixed string s in the header (the first occurrence). */
static size_t find_lp(const uint8_t *buf, size_t len, const char *s) {
    size_t n = strlen(s);
    for (size_t i = 8; i + n <= len; i++) {
        uint64_t l;
        memcpy(&l, buf + i - 8, 8);
        if (l == n && memcmp(buf + i, s, n) == 0) return i + n;
    }
    return 0;
}

typedef enum { PATCH_DIM, PATCH_TYPE, PATCH_NAME, PATCH_U32, PATCH_STR, PATCH_TRUNC } patch_kind;

typedef struct corrupt_case {
    patch_kind kind;
    const char *target;  /* tensor name or metadata key */
    uint64_t a, b;       /* dim index & value, type id, u32 value; trunc length */
    const char *s;       /* replacement name / string (same length) */
    kiln_err want;
    const char *in_msg;  /* must appear in the message */
} corrupt_case;

static void corrupt_files(void) {
    const corrupt_case cases[] = {
        {PATCH_DIM, "blk.2.attn_q.weight", 1, 32, NULL, KILN_ERR_FORMAT, "blk.2.attn_q.weight"},
        {PATCH_DIM, "blk.0.ffn_down.weight", 0, 160, NULL, KILN_ERR_FORMAT, "blk.0.ffn_down.weight"},
        {PATCH_DIM, "output_norm.weight", 0, 32, NULL, KILN_ERR_FORMAT, "output_norm.weight"},
        {PATCH_DIM, "output.weight", 1, 256, NULL, KILN_ERR_FORMAT, "output.weight"},
        {PATCH_DIM, "token_embd.weight", 0, 32, NULL, KILN_ERR_FORMAT, "token_embd.weight"},
        {PATCH_TYPE, "blk.0.attn_k.weight", 9, 0, NULL, KILN_ERR_UNSUPPORTED, "blk.0.attn_k.weight"},
        {PATCH_TYPE, "blk.1.ffn_up.weight", 12, 0, NULL, KILN_ERR_FORMAT, "blk.1.ffn_up.weight"},
        {PATCH_NAME, "blk.3.ffn_up.weight", 0, 0, "blk.3.ffn_zz.weight", KILN_ERR_FORMAT, "missing tensor blk.3.ffn_up.weight"},
        {PATCH_NAME, "blk.4.attn_norm.weight", 0, 0, "blk.4.attn_nurm.weigh", KILN_ERR_FORMAT, "blk.4.attn_norm.weight"},
        {PATCH_NAME, "token_embd.weight", 0, 0, "token_embx.weight", KILN_ERR_FORMAT, "token_embd.weight"},
        {PATCH_STR, "general.architecture", 0, 0, "qwen9", KILN_ERR_UNSUPPORTED, "qwen9"},
        {PATCH_U32, "llama.attention.head_count", 7, 0, NULL, KILN_ERR_FORMAT, "head_count"},
        {PATCH_U32, "llama.attention.head_count_kv", 0, 0, NULL, KILN_ERR_FORMAT, "head_count_kv"},
        {PATCH_U32, "llama.attention.head_count_kv", 3, 0, NULL, KILN_ERR_FORMAT, "head_count"},
        {PATCH_U32, "llama.embedding_length", 65, 0, NULL, KILN_ERR_FORMAT, "embedding_length"},
        {PATCH_U32, "llama.embedding_length", 128, 0, NULL, KILN_ERR_FORMAT, "token_embd.weight"},
        {PATCH_U32, "llama.rope.dimension_count", 7, 0, NULL, KILN_ERR_FORMAT, "rope.dimension_count"},
        {PATCH_U32, "llama.feed_forward_length", 0, 0, NULL, KILN_ERR_FORMAT, "feed_forward_length"},
        {PATCH_U32, "llama.block_count", 6, 0, NULL, KILN_ERR_FORMAT, "blk.5.attn_norm.weight"},
        {PATCH_TRUNC, NULL, 1000, 0, NULL, KILN_ERR_FORMAT, "exceed"},
    };
    char path[512];
    snprintf(path, sizeof(path), "%s/corrupt.gguf", tmp_dir);
    for (size_t i = 0; i < KILN_ARRAY_LEN(cases); i++) {
        const corrupt_case *c = &cases[i];
        uint8_t *buf = malloc(orig_len);
        memcpy(buf, orig, orig_len);
        size_t len = orig_len, at = c->target ? find_lp(buf, len, c->target) : 0;
        if (c->target && !at) {
            CHECK_MSG(0, "case %zu: %s not found in the file", i, c->target);
            free(buf);
            continue;
        }
        switch (c->kind) {
        case PATCH_DIM: memcpy(buf + at + 4 + 8 * c->a, &c->b, 8); break; /* n_dims u32, ne[] u64 */
        case PATCH_TYPE: {
            uint32_t nd, ty = (uint32_t)c->a;
            memcpy(&nd, buf + at, 4);
            memcpy(buf + at + 4 + 8 * nd, &ty, 4);
            break;
        }
        case PATCH_NAME: memcpy(buf + at - strlen(c->target), c->s, strlen(c->s)); break;
        case PATCH_U32: {
            uint32_t v = (uint32_t)c->a;
            memcpy(buf + at + 4, &v, 4); /* value type u32, then the value */
            break;
        }
        case PATCH_STR: memcpy(buf + at + 4 + 8, c->s, strlen(c->s)); break; /* type, length */
        case PATCH_TRUNC: len = c->a; break;
        }
        FILE *f = fopen(path, "wb");
        CHECK(f && fwrite(buf, 1, len, f) == len);
        if (f) fclose(f);
        free(buf);
        kiln_model *m = NULL;
        kiln_err err = kiln_model_load(path, NULL, &m);
        CHECK_MSG(err == c->want, "case %zu (%s): err %s, want %s: %s", i, c->target ? c->target : "truncated",
                  kiln_err_name(err), kiln_err_name(c->want), kiln_errmsg());
        CHECK(m == NULL);
        const char *msg = kiln_errmsg();
        CHECK_MSG(strstr(msg, path) && strstr(msg, c->in_msg) && !strchr(msg, '\n'),
                  "case %zu: message '%s' lacks '%s' or the path", i, msg, c->in_msg);
        kiln_model_free(m);
    }
    kiln_model *m = NULL;
    CHECK(kiln_model_load("/nonexistent/model.gguf", NULL, &m) == KILN_ERR_IO && m == NULL);
    CHECK(strstr(kiln_errmsg(), "/nonexistent/model.gguf") != NULL);
    unlink(path);
}

/* ---- allocation failures: every one gives a clean error, no leak (ASan) ---- */
static void load_fault_injection(void) {
    int n_fail = 0;
    for (long n = 0; n < 10000; n++) {
        kiln_model *m = NULL;
        kiln_alloc_fail_after(n);
        kiln_err err = kiln_model_load(model_path, NULL, &m);
        kiln_alloc_fail_after(-1);
        if (err == KILN_OK) {
            kiln_model_free(m);
            break;
        }
        n_fail++;
        CHECK_MSG(err == KILN_ERR_NOMEM && m == NULL, "n=%ld: %s %s", n, kiln_err_name(err), kiln_errmsg());
    }
    CHECK(n_fail > 5);
    /* The forward pass's scratch growth and the cache's pools. */
    kiln_model *m = load(model_path);
    if (!m) return;
    kiln_kv *kv = NULL;
    for (long n = 0; n < 3; n++) {
        kiln_alloc_fail_after(n);
        CHECK(kiln_kv_new(m, 1 << 20, 16, &kv) == KILN_ERR_NOMEM && kv == NULL);
        kiln_alloc_fail_after(-1);
    }
    kv = new_kv(m, 2, 16);
    int32_t t;
    CHECK(kiln_kv_alloc_block(kv, &t) == KILN_OK);
    kiln_batch_row rows[3] = {{1, 0, 0, false}, {2, 1, 0, false}, {3, 2, 0, true}};
    kiln_batch_seq sq = {&t, 1};
    kiln_batch b = {3, rows, 1, &sq};
    float logits[512];
    kiln_alloc_fail_after(4);
    CHECK(kiln_model_forward(m, kv, &b, logits) == KILN_ERR_NOMEM);
    kiln_alloc_fail_after(-1);
    CHECK(kiln_model_forward(m, kv, &b, logits) == KILN_OK);
    /* The retried pass equals a pass that never saw a failure. */
    const int32_t toks[3] = {1, 2, 3};
    float *ref = run_alone(m, toks, 3);
    CHECK(memcmp(ref + 2 * 512, logits, sizeof(logits)) == 0);
    free(ref);
    kiln_kv_free(kv);
    kiln_model_free(m);
}

int main(void) {
    snprintf(model_path, sizeof(model_path), "%s/models/stories260K.gguf", test_data_dir());
    snprintf(tmp_dir, sizeof(tmp_dir), "/tmp/kiln_test_model.XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    if (kiln_read_file(model_path, (char **)&orig, &orig_len) != KILN_OK) {
        fprintf(stderr, "cannot read %s: %s\n", model_path, kiln_errmsg());
        return 1;
    }
    RUN(real_hparams);
    RUN(real_greedy_ids);
    RUN(batching_invariance_real);
    RUN(batching_invariance_random);
    RUN(prefill_split_bitexact);
    RUN(prefix_sharing);
    RUN(forward_errors);
    RUN(kv_accounting);
    RUN(corrupt_files);
    RUN(load_fault_injection);
    kiln_free(orig);
    rmdir(tmp_dir);
    return TEST_REPORT("test_model");
}
