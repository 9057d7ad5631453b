/* internal.h: the layout of kiln_model and kiln_kv shared by model.c (load and binding), kv.c
 * (paged cache) and forward.c (batched forward). Not part of the public interface.
 * Threads: a kiln_model's weights are read-only after load; its scratch belongs to the thread
 * that calls kiln_model_forward (the engine thread), one call at a time. */
#ifndef KILN_MODEL_INTERNAL_H
#define KILN_MODEL_INTERNAL_H

#include "kernels/kernels.h"
#include "model/model.h"

/* Largest head dimension the attention kernel's stack accumulator holds. */
#define KILN_MAX_HEAD_DIM 1024

/* A weight matrix (n_out, n_in) in the mapping, rows of row_bytes, and its copy in the kernel
 * table's packed layout when the table has one for this type (kiln_kernels.pack). */
typedef struct kiln_mat {
    const void *data;      /* into the GGUF mapping */
    const void *packed;    /* 64-byte aligned inside kiln_model.pack_mem, or NULL: multiply data */
    kiln_wtype type;
    int64_t n_out;         /* rows */
    int64_t n_in;          /* cols (GGUF ne[0]) */
    size_t row_bytes;
} kiln_mat;

typedef struct kiln_layer {
    float *attn_norm;      /* (n_embd,) owned f32 */
    kiln_mat wq;           /* (n_head * head_dim, n_embd) */
    kiln_mat wk;           /* (n_head_kv * head_dim, n_embd) */
    kiln_mat wv;           /* (n_head_kv * head_dim, n_embd) */
    kiln_mat wo;           /* (n_embd, n_head * head_dim) */
    float *bq, *bk, *bv;   /* qwen2: (n_head * head_dim,), (n_kv_dim,), (n_kv_dim,); else NULL */
    float *q_norm, *k_norm;/* qwen3: (head_dim,) each; else NULL */
    float *ffn_norm;       /* (n_embd,) */
    kiln_mat w_gate;       /* (n_ff, n_embd) */
    kiln_mat w_up;         /* (n_ff, n_embd) */
    kiln_mat w_down;       /* (n_embd, n_ff) */
} kiln_layer;

/* Activations of one forward pass, sized for cap_rows rows; grown (never shrunk) on demand. */
typedef struct kiln_scratch {
    int32_t cap_rows;
    float *x;              /* (cap, n_embd) residual stream */
    float *xn;             /* (cap, n_embd) normed input / gathered logit rows */
    float *q;              /* (cap, n_head * head_dim) */
    float *k;              /* (cap, n_kv_dim) */
    float *v;              /* (cap, n_kv_dim) */
    float *att;            /* (cap, n_head * head_dim) attention output */
    float *tmp;            /* (cap, n_embd) projection output */
    float *gate;           /* (cap, n_ff) */
    float *up;             /* (cap, n_ff) */
    int32_t *att_grp;      /* (cap + 1,) first row of each attention row group (forward.c) */
    float *rope_cs;        /* (cap, n_rot) each row's rope cos/sin pairs, made at layer 0 (forward.c) */
} kiln_scratch;

struct kiln_model {
    kiln_gguf *gguf;       /* owned; weights point into its mapping */
    kiln_hparams hp;
    int32_t n_rot;         /* rotary dims per head (rope.dimension_count), even, <= head_dim */
    float *freq_factors;   /* (n_rot / 2,) owned divisors of each rope frequency, or NULL */
    int n_threads;         /* compute team size */
    const kiln_kernels *k; /* kernel table */
    kiln_mat tok_embd;     /* (n_vocab, n_embd) */
    float *output_norm;    /* (n_embd,) */
    kiln_mat output;       /* (n_vocab, n_embd); == tok_embd when tied */
    kiln_layer *layers;    /* (n_layer,) owned */
    void *pack_mem;        /* owned allocation holding every kiln_mat.packed, or NULL */
    const void *pack_base; /* the packed matrices: pack_total bytes from here (2 MiB aligned) */
    size_t pack_total;
    kiln_scratch s;
};

/* One block: for each layer, K (block_size, n_kv_dim) then V (block_size, n_kv_dim), f32. */
struct kiln_kv {
    int32_t n_layer;
    int32_t n_kv_dim;      /* n_head_kv * head_dim */
    int32_t block_size;    /* token slots per block */
    int32_t n_blocks;
    int32_t n_free;
    float *data;           /* (n_blocks, n_layer, 2, block_size, n_kv_dim) owned */
    int32_t *refcount;     /* (n_blocks,) */
    int32_t *free_list;    /* (n_blocks,) stack of free block ids, n_free valid */
    size_t bytes_per_block;
};

/* K (slot-major, (block_size, n_kv_dim)) of layer l in block b; V follows it. */
static inline float *kiln_kv_k(const kiln_kv *kv, int32_t b, int32_t l) {
    size_t per_layer = (size_t)kv->block_size * (size_t)kv->n_kv_dim;
    return kv->data + ((size_t)b * (size_t)kv->n_layer + (size_t)l) * 2 * per_layer;
}
static inline float *kiln_kv_v(const kiln_kv *kv, int32_t b, int32_t l) {
    return kiln_kv_k(kv, b, l) + (size_t)kv->block_size * (size_t)kv->n_kv_dim;
}

/* Frees every scratch buffer and zeroes *s (cap_rows 0); safe on a zeroed or partial scratch. */
void kiln_scratch_free(kiln_scratch *s);

#endif
