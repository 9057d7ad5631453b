/* model.h: a loaded model (architecture parameters, weights bound by name, tokenizer metadata
 * left to tok/), the paged KV cache, and the batched forward pass.
 * Threads: kiln_model is read-only after load (any thread). A kiln_kv and the forward pass belong
 * to the engine thread; kiln_model_forward uses the compute team (OpenMP) inside one call. */
#ifndef KILN_MODEL_H
#define KILN_MODEL_H

#include "base/base.h"
#include "model/gguf.h"

typedef enum kiln_arch {
    KILN_ARCH_LLAMA,  /* Llama 1/2/3 (incl. Llama 3.1 rope scaling), Mistral, TinyLlama, SmolLM */
    KILN_ARCH_QWEN2,  /* + QKV bias */
    KILN_ARCH_QWEN3,  /* + per-head RMSNorm of Q and K */
    KILN_ARCH_COUNT
} kiln_arch;

typedef enum kiln_rope_type {
    KILN_ROPE_NORM, /* interleaved pairs (x[2i], x[2i+1]): llama.cpp "normal", GPT-J */
    KILN_ROPE_NEOX, /* halves (x[i], x[i + d/2]): GPT-NeoX, Qwen */
} kiln_rope_type;

/* Architecture hyperparameters, from GGUF metadata. Read-only after load. */
typedef struct kiln_hparams {
    kiln_arch arch;
    int32_t n_vocab;
    int32_t n_ctx_train;      /* <arch>.context_length */
    int32_t n_embd;           /* model dim */
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;        /* GQA: n_head % n_head_kv == 0 */
    int32_t head_dim;         /* usually n_embd / n_head (key_length) */
    int32_t n_ff;             /* feed-forward hidden dim */
    float norm_eps;           /* RMSNorm epsilon */
    float rope_theta;         /* rope.freq_base */
    kiln_rope_type rope_type;
    /* Llama 3.1 rope scaling ("llama3"); factor 0 = none. */
    float rope_scale_factor;
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int32_t rope_orig_ctx;
    bool tied_output;         /* output.weight absent: logits use token_embd */
} kiln_hparams;

typedef struct kiln_model kiln_model;

typedef struct kiln_model_opts {
    int n_threads;            /* compute team size; 0 = number of physical cores */
} kiln_model_opts;

/* Loads a GGUF model: validates the file, reads hyperparameters, binds every tensor by name with
 * its expected shape and a supported type. KILN_ERR_IO / FORMAT / UNSUPPORTED / NOMEM with a
 * message naming the file, key or tensor. The caller owns *out (kiln_model_free). */
kiln_err kiln_model_load(const char *path, const kiln_model_opts *opts, kiln_model **out);
void kiln_model_free(kiln_model *m); /* NULL is a no-op */
const kiln_hparams *kiln_model_hparams(const kiln_model *m);
/* The underlying GGUF file (for the tokenizer and chat template metadata). */
const kiln_gguf *kiln_model_gguf(const kiln_model *m);
/* The memory a forward streams its matmul weights from, for benchmarks: the packed copy when the
 * kernel table made one (64-byte aligned), else the whole mapped file (page aligned). */
void kiln_model_weight_memory(const kiln_model *m, const void **base, size_t *bytes);

/* ---- paged KV cache ----
 * A fixed pool of blocks of `block_size` token slots each, allocated once from a byte budget.
 * Each block holds K and V of every layer for block_size positions. A sequence's block table
 * maps position p to block table[p / block_size], slot p % block_size. Blocks carry reference
 * counts so that prefixes can be shared (a block with refcount > 1 must not be written). */
typedef struct kiln_kv kiln_kv;

/* Creates a cache for model m with as many blocks as fit in budget_bytes (at least 1, else
 * KILN_ERR_INVALID). KV is stored as f32 */
kiln_err kiln_kv_new(const kiln_model *m, size_t budget_bytes, int32_t block_size, kiln_kv **out);
void kiln_kv_free(kiln_kv *kv);
int32_t kiln_kv_block_size(const kiln_kv *kv);
int32_t kiln_kv_n_blocks(const kiln_kv *kv);       /* total */
int32_t kiln_kv_n_free(const kiln_kv *kv);         /* with refcount 0 */
size_t kiln_kv_bytes_per_block(const kiln_kv *kv);
/* Takes a free block (refcount 1): KILN_ERR_FULL when none is free. */
kiln_err kiln_kv_alloc_block(kiln_kv *kv, int32_t *block);
void kiln_kv_ref_block(kiln_kv *kv, int32_t block);
void kiln_kv_unref_block(kiln_kv *kv, int32_t block); /* refcount 0: back to the free list */
int32_t kiln_kv_refcount(const kiln_kv *kv, int32_t block);
/* Copies every layer's K/V of block src into dst (copy-on-write). */
void kiln_kv_copy_block(kiln_kv *kv, int32_t dst, int32_t src);

/* ---- batched forward ----
 * One forward pass over rows from any number of sequences. For each row the model writes the
 * token's K/V at its position through its sequence's block table, then attends over positions
 * 0..pos of that sequence (rows of the same sequence in one batch must have increasing
 * positions, and every position < pos must already be in the cache or earlier in the batch). */
typedef struct kiln_batch_seq {
    const int32_t *block_table; /* (n_blocks,) covering every position this batch touches */
    int32_t n_blocks;
} kiln_batch_seq;

typedef struct kiln_batch_row {
    int32_t token;
    int32_t pos;                /* position in its sequence */
    int32_t seq;                /* index into kiln_batch.seqs */
    bool want_logits;
} kiln_batch_row;

typedef struct kiln_batch {
    int32_t n_rows;
    const kiln_batch_row *rows; /* (n_rows,) */
    int32_t n_seqs;
    const kiln_batch_seq *seqs; /* (n_seqs,) */
} kiln_batch;

/* Runs the batch. `logits` receives n_vocab floats per row with want_logits, in row order
 * ((n_logit_rows, n_vocab)). KILN_ERR_INVALID for a bad token id, position or block table
 * (checked before any work), KILN_ERR_NOMEM if scratch cannot grow. */
kiln_err kiln_model_forward(kiln_model *m, kiln_kv *kv, const kiln_batch *batch, float *logits);

#endif
