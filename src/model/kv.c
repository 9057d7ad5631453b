/* kv.c: the paged KV cache: a fixed pool of blocks allocated once from a byte budget, each holding
 * K and V (f32) of every layer for block_size positions; refcounts for prefix sharing and a
 * free-list stack. Invariant: a block is on the free list iff its refcount is 0.
 * Thread: the engine thread owns a kiln_kv; nothing here locks. */
#include "model/internal.h"

#include <string.h>

kiln_err kiln_kv_new(const kiln_model *m, size_t budget_bytes, int32_t block_size, kiln_kv **out) {
    *out = NULL;
    if (block_size < 1 || block_size > 1 << 16)
        return kiln_errf(KILN_ERR_INVALID, "kv: block size %d out of range [1, 65536]", block_size);
    const kiln_hparams *hp = &m->hp;
    size_t per_block;
    int32_t n_kv_dim = hp->n_head_kv * hp->head_dim;
    if (!kiln_mul_size((size_t)hp->n_layer * 2 * sizeof(float), (size_t)block_size, &per_block) ||
        !kiln_mul_size(per_block, (size_t)n_kv_dim, &per_block))
        return kiln_errf(KILN_ERR_INVALID, "kv: block size %d is too large", block_size);
    size_t n = budget_bytes / per_block;
    if (n < 1)
        return kiln_errf(KILN_ERR_INVALID, "kv: budget of %zu bytes is below one block (%zu bytes)", budget_bytes,
                         per_block);
    if (n > INT32_MAX / 2) n = INT32_MAX / 2;
    kiln_kv *kv = kiln_calloc(1, sizeof(*kv));
    if (!kv) return kiln_errf(KILN_ERR_NOMEM, "kv: out of memory");
    kv->n_layer = hp->n_layer;
    kv->n_kv_dim = n_kv_dim;
    kv->block_size = block_size;
    kv->n_blocks = (int32_t)n;
    kv->bytes_per_block = per_block;
    kv->data = kiln_malloc(n * per_block); /* n * per_block <= budget_bytes: no overflow */
    kv->refcount = kiln_calloc(n, sizeof(int32_t));
    kv->free_list = kiln_malloc(n * sizeof(int32_t));
    if (!kv->data || !kv->refcount || !kv->free_list) {
        kiln_kv_free(kv);
        return kiln_errf(KILN_ERR_NOMEM, "kv: cannot allocate %zu blocks of %zu bytes", n, per_block);
    }
    /* Pop order: block 0 first. */
    for (int32_t i = 0; i < kv->n_blocks; i++) kv->free_list[i] = kv->n_blocks - 1 - i;
    kv->n_free = kv->n_blocks;
    *out = kv;
    return KILN_OK;
}

void kiln_kv_free(kiln_kv *kv) {
    if (!kv) return;
    kiln_free(kv->data);
    kiln_free(kv->refcount);
    kiln_free(kv->free_list);
    kiln_free(kv);
}

int32_t kiln_kv_block_size(const kiln_kv *kv) { return kv->block_size; }
int32_t kiln_kv_n_blocks(const kiln_kv *kv) { return kv->n_blocks; }
int32_t kiln_kv_n_free(const kiln_kv *kv) { return kv->n_free; }
size_t kiln_kv_bytes_per_block(const kiln_kv *kv) { return kv->bytes_per_block; }

kiln_err kiln_kv_alloc_block(kiln_kv *kv, int32_t *block) {
    if (kv->n_free == 0) return kiln_errf(KILN_ERR_FULL, "kv: all %d blocks are in use", kv->n_blocks);
    int32_t b = kv->free_list[--kv->n_free];
    KILN_ASSERT(kv->refcount[b] == 0);
    kv->refcount[b] = 1;
    *block = b;
    return KILN_OK;
}

void kiln_kv_ref_block(kiln_kv *kv, int32_t block) {
    KILN_ASSERT(block >= 0 && block < kv->n_blocks && kv->refcount[block] > 0);
    kv->refcount[block]++;
}

void kiln_kv_unref_block(kiln_kv *kv, int32_t block) {
    KILN_ASSERT(block >= 0 && block < kv->n_blocks && kv->refcount[block] > 0);
    if (--kv->refcount[block] == 0) kv->free_list[kv->n_free++] = block;
}

int32_t kiln_kv_refcount(const kiln_kv *kv, int32_t block) {
    KILN_ASSERT(block >= 0 && block < kv->n_blocks);
    return kv->refcount[block];
}

void kiln_kv_copy_block(kiln_kv *kv, int32_t dst, int32_t src) {
    KILN_ASSERT(dst >= 0 && dst < kv->n_blocks && src >= 0 && src < kv->n_blocks);
    if (dst == src) return;
    /* Every layer of a block is contiguous: one copy. */
    memcpy(kiln_kv_k(kv, dst, 0), kiln_kv_k(kv, src, 0), kv->bytes_per_block);
}
