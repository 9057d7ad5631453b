/* gguf.h: read-only GGUF (v2, v3) reader over an mmap'd file. Every header field is validated
 * before use: magic, version, counts, string and array lengths, type ids, tensor dims and the
 * overflow of their product, data offsets and alignment inside the file. After kiln_gguf_open
 * succeeds, every getter is bounds-safe. Spec: ggml's docs/gguf.md (GGUF v3, little-endian).
 * Ownership: the kiln_gguf owns the mapping; strings and tensor data point into it and live
 * until kiln_gguf_close. Any thread may read a loaded file. */
#ifndef KILN_GGUF_H
#define KILN_GGUF_H

#include "base/base.h"

/* Metadata value types (GGUF numbering). */
typedef enum kiln_gguf_type {
    KILN_GGUF_UINT8 = 0,
    KILN_GGUF_INT8 = 1,
    KILN_GGUF_UINT16 = 2,
    KILN_GGUF_INT16 = 3,
    KILN_GGUF_UINT32 = 4,
    KILN_GGUF_INT32 = 5,
    KILN_GGUF_FLOAT32 = 6,
    KILN_GGUF_BOOL = 7,
    KILN_GGUF_STRING = 8,
    KILN_GGUF_ARRAY = 9,
    KILN_GGUF_UINT64 = 10,
    KILN_GGUF_INT64 = 11,
    KILN_GGUF_FLOAT64 = 12,
    KILN_GGUF_TYPE_COUNT
} kiln_gguf_type;

/* Tensor element types (ggml numbering). Only those with a block size below are accepted. */
typedef enum kiln_dtype {
    KILN_DTYPE_F32 = 0,
    KILN_DTYPE_F16 = 1,
    KILN_DTYPE_Q4_0 = 2,
    KILN_DTYPE_Q4_1 = 3,
    KILN_DTYPE_Q5_0 = 6,
    KILN_DTYPE_Q5_1 = 7,
    KILN_DTYPE_Q8_0 = 8,
    KILN_DTYPE_Q8_1 = 9,
    KILN_DTYPE_Q2_K = 10,
    KILN_DTYPE_Q3_K = 11,
    KILN_DTYPE_Q4_K = 12,
    KILN_DTYPE_Q5_K = 13,
    KILN_DTYPE_Q6_K = 14,
    KILN_DTYPE_Q8_K = 15,
    KILN_DTYPE_BF16 = 30,
    KILN_DTYPE_COUNT = 40 /* bound for tables indexed by dtype */
} kiln_dtype;

/* Elements per block and bytes per block of a dtype; false if the type is unknown. */
bool kiln_dtype_block(kiln_dtype t, size_t *block_elems, size_t *block_bytes);
const char *kiln_dtype_name(kiln_dtype t);

#define KILN_GGUF_MAX_DIMS 4

/* A string inside the file: not NUL-terminated. */
typedef struct kiln_gguf_str {
    const char *p;
    uint64_t len;
} kiln_gguf_str;

typedef struct kiln_gguf_kv {
    kiln_gguf_str key;
    kiln_gguf_type type;
    /* scalars are decoded; strings point into the file; arrays give element type, count and a
     * pointer to the raw first element (for string arrays use kiln_gguf_arr_str). */
    union {
        uint64_t u64;
        int64_t i64;
        double f64;
        bool b;
        kiln_gguf_str str;
        struct {
            kiln_gguf_type type;
            uint64_t n;
            const uint8_t *data;
            const kiln_gguf_str *strs; /* decoded string table when type == STRING, else NULL */
        } arr;
    } v;
} kiln_gguf_kv;

typedef struct kiln_gguf_tensor {
    kiln_gguf_str name;
    uint32_t n_dims;
    uint64_t ne[KILN_GGUF_MAX_DIMS]; /* ne[0] is the contiguous (innermost) dim; unused dims 1 */
    kiln_dtype type;
    uint64_t n_elems;
    uint64_t n_bytes;
    uint64_t offset;                 /* from the start of the data section */
    const void *data;                /* into the mapping */
} kiln_gguf_tensor;

typedef struct kiln_gguf {
    uint32_t version;
    uint64_t n_kv;
    kiln_gguf_kv *kv;            /* (n_kv,) owned */
    uint64_t n_tensors;
    kiln_gguf_tensor *tensors;   /* (n_tensors,) owned */
    uint64_t alignment;
    const uint8_t *base;         /* mapping (or caller's buffer) */
    size_t size;                 /* bytes */
    bool mapped;                 /* true when base was mmap'd by us */
    kiln_gguf_str *str_pool;     /* owned storage of decoded string arrays */
} kiln_gguf;

/* Maps and validates `path`. KILN_ERR_IO (cannot open/map), KILN_ERR_FORMAT (any malformed
 * field; kiln_errmsg names it and its offset), KILN_ERR_UNSUPPORTED (version or tensor type),
 * KILN_ERR_NOMEM. On success the caller owns *out (kiln_gguf_close). */
kiln_err kiln_gguf_open(const char *path, kiln_gguf **out);
/* The same over a caller-owned buffer that must outlive the kiln_gguf (used by tests, fuzzers). */
kiln_err kiln_gguf_open_buffer(const void *data, size_t size, kiln_gguf **out);
void kiln_gguf_close(kiln_gguf *g); /* NULL is a no-op */

/* Metadata lookup by exact key; NULL when absent. */
const kiln_gguf_kv *kiln_gguf_find(const kiln_gguf *g, const char *key);
/* Typed getters: KILN_ERR_NOT_FOUND when absent, KILN_ERR_INVALID on a type mismatch (integer
 * getters accept any integer type whose value fits; float accepts float32/64). */
kiln_err kiln_gguf_get_u64(const kiln_gguf *g, const char *key, uint64_t *out);
kiln_err kiln_gguf_get_i64(const kiln_gguf *g, const char *key, int64_t *out);
kiln_err kiln_gguf_get_f64(const kiln_gguf *g, const char *key, double *out);
kiln_err kiln_gguf_get_bool(const kiln_gguf *g, const char *key, bool *out);
kiln_err kiln_gguf_get_str(const kiln_gguf *g, const char *key, kiln_gguf_str *out);
/* An array with elements of `type` (KILN_ERR_INVALID otherwise). */
kiln_err kiln_gguf_get_arr(const kiln_gguf *g, const char *key, kiln_gguf_type type,
                           const kiln_gguf_kv **out);
/* Element i of a numeric array as double / int64 (the array's own element type decoded). */
double kiln_gguf_arr_f64(const kiln_gguf_kv *kv, uint64_t i);
int64_t kiln_gguf_arr_i64(const kiln_gguf_kv *kv, uint64_t i);
/* Element i of a string array. */
kiln_gguf_str kiln_gguf_arr_str(const kiln_gguf_kv *kv, uint64_t i);

/* Tensor lookup by exact name; NULL when absent. */
const kiln_gguf_tensor *kiln_gguf_tensor_find(const kiln_gguf *g, const char *name);

/* True when s equals the NUL-terminated c. */
bool kiln_gguf_str_eq(kiln_gguf_str s, const char *c);

#endif
