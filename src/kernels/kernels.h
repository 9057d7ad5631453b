/* kernels.h: the numeric kernels of the forward pass, their data layouts (ggml block formats) and
 * the dispatch table that picks an implementation at start-up. ref.c is the scalar spec; faster
 * variants (per ISA) must match it within a per-op tolerance. Kernels include only base/.
 * Threads: every kernel is reentrant; kiln_matmul runs its own OpenMP team over output rows (the
 * others are called from inside the caller's parallel regions or serially). */
#ifndef KILN_KERNELS_H
#define KILN_KERNELS_H

#include "base/base.h"

/* Weight element types, ggml numbering (the same values as kiln_dtype of model/gguf.h). */
typedef enum kiln_wtype {
    KILN_WTYPE_F32 = 0,
    KILN_WTYPE_F16 = 1,
    KILN_WTYPE_Q4_0 = 2,
    KILN_WTYPE_Q4_1 = 3,
    KILN_WTYPE_Q5_0 = 6,
    KILN_WTYPE_Q8_0 = 8,
    KILN_WTYPE_Q4_K = 12,
    KILN_WTYPE_Q5_K = 13,
    KILN_WTYPE_Q6_K = 14,
    KILN_WTYPE_BF16 = 30,
} kiln_wtype;

/* Q8_0: 32 elements; value i = qs[i] * d. */
#define KILN_QK8_0 32
typedef struct kiln_block_q8_0 {
    uint16_t d;               /* f16 scale */
    int8_t qs[KILN_QK8_0];    /* quants */
} kiln_block_q8_0;
_Static_assert(sizeof(kiln_block_q8_0) == 34, "Q8_0 block is 34 bytes");

/* Q4_0: 32 elements; byte j holds element j in its low nibble and element j + 16 in its high
 * nibble; value = (q - 8) * d. */
#define KILN_QK4_0 32
typedef struct kiln_block_q4_0 {
    uint16_t d;                   /* f16 scale */
    uint8_t qs[KILN_QK4_0 / 2];   /* nibbles */
} kiln_block_q4_0;
_Static_assert(sizeof(kiln_block_q4_0) == 18, "Q4_0 block is 18 bytes");

/* Q4_1: 32 elements, nibbles as Q4_0; value = q * d + m. */
#define KILN_QK4_1 32
typedef struct kiln_block_q4_1 {
    uint16_t d;                   /* f16 scale */
    uint16_t m;                   /* f16 offset (the block minimum) */
    uint8_t qs[KILN_QK4_1 / 2];   /* nibbles */
} kiln_block_q4_1;
_Static_assert(sizeof(kiln_block_q4_1) == 20, "Q4_1 block is 20 bytes");

/* Q5_0: 32 elements; low 4 bits as Q4_0, bit 4 of element j is bit j of the little-endian u32 qh;
 * value = (q - 16) * d. */
#define KILN_QK5_0 32
typedef struct kiln_block_q5_0 {
    uint16_t d;                   /* f16 scale */
    uint8_t qh[4];                /* fifth bits, little-endian u32 */
    uint8_t qs[KILN_QK5_0 / 2];   /* low nibbles */
} kiln_block_q5_0;
_Static_assert(sizeof(kiln_block_q5_0) == 22, "Q5_0 block is 22 bytes");

/* K-quants (kquants.c): super-blocks of 256 elements. */
#define KILN_QK_K 256

/* Q4_K: 8 sub-blocks of 32. scales packs 8 six-bit scales sc[j] and mins m[j]: for j < 4,
 * sc = scales[j] & 63, m = scales[j + 4] & 63; for j >= 4, sc = (scales[j + 4] & 15) |
 * (scales[j - 4] >> 6) << 4, m = (scales[j + 4] >> 4) | (scales[j] >> 6) << 4. qs byte 32c + l
 * holds element l of sub-block 2c (low nibble) and of sub-block 2c + 1 (high nibble).
 * value = d * sc[j] * q - dmin * m[j]. */
typedef struct kiln_block_q4_k {
    uint16_t d;                   /* f16 super-block scale of the scales */
    uint16_t dmin;                /* f16 super-block scale of the mins */
    uint8_t scales[12];           /* 6-bit scales and mins, packed as above */
    uint8_t qs[KILN_QK_K / 2];    /* nibbles */
} kiln_block_q4_k;
_Static_assert(sizeof(kiln_block_q4_k) == 144, "Q4_K block is 144 bytes");

/* Q5_K: Q4_K plus a fifth bit: bit 2c of qh[l] for element l of sub-block 2c, bit 2c + 1 for
 * sub-block 2c + 1 (q in 0..31). value = d * sc[j] * q - dmin * m[j]. */
typedef struct kiln_block_q5_k {
    uint16_t d;                   /* f16 super-block scale of the scales */
    uint16_t dmin;                /* f16 super-block scale of the mins */
    uint8_t scales[12];           /* 6-bit scales and mins, packed as Q4_K */
    uint8_t qh[KILN_QK_K / 8];    /* fifth bits */
    uint8_t qs[KILN_QK_K / 2];    /* low nibbles */
} kiln_block_q5_k;
_Static_assert(sizeof(kiln_block_q5_k) == 176, "Q5_K block is 176 bytes");

/* Q6_K: 16 sub-blocks of 16 with int8 scales. Each half h (128 elements) uses ql[64h..64h+63],
 * qh[32h..32h+31]; for l < 32, element 128h + 32k + l (k = 0..3) has low bits from ql[64h + l]
 * (k = 0: low nibble, k = 2: high nibble) or ql[64h + 32 + l] (k = 1 low, k = 3 high) and high
 * bits (qh[32h + l] >> 2k) & 3. value = d * scales[e / 16] * (q - 32). */
typedef struct kiln_block_q6_k {
    uint8_t ql[KILN_QK_K / 2];    /* low 4 bits */
    uint8_t qh[KILN_QK_K / 4];    /* high 2 bits */
    int8_t scales[KILN_QK_K / 16];/* sub-block scales */
    uint16_t d;                   /* f16 super-block scale */
} kiln_block_q6_k;
_Static_assert(sizeof(kiln_block_q6_k) == 210, "Q6_K block is 210 bytes");

/* True when t is a weight type the kernels handle; *block_elems / *block_bytes describe it. */
bool kiln_wtype_block(kiln_wtype t, size_t *block_elems, size_t *block_bytes);
/* Bytes of one row of n elements of type t (n must be a multiple of the block size). */
size_t kiln_wtype_row_bytes(kiln_wtype t, int64_t n);

/* RoPE variants (the same values as kiln_rope_type of model/model.h). */
enum { KILN_KROPE_NORM = 0, KILN_KROPE_NEOX = 1 };

/* One packed matrix (kiln_kernels.pack) of a matmul_packed call and its output y (n_x, n_out). */
typedef struct kiln_pmat {
    const void *packed;
    int64_t n_out;
    float *y;
} kiln_pmat;

/* Attention over a paged KV cache is computed one chunk of at most KILN_ATT_CHUNK positions at a
 * time for up to KILN_ATT_MAX_Q query vectors at once (kiln_kernels.attn_chunk). */
#define KILN_ATT_CHUNK 32
#define KILN_ATT_MAX_Q 64

/* The K and V rows of one attention chunk of n positions (hd floats each): rows i < n1 at
 * k + i * stride and v + i * stride, rows n1 <= i < n at k2 + (i - n1) * stride and
 * v2 + (i - n1) * stride. A chunk may span two cache blocks (n1 < n); k2, v2 are unused when
 * n1 == n. */
typedef struct kiln_attn_kv {
    const float *k, *v, *k2, *v2;
    size_t stride;
    int32_t n, n1;
} kiln_attn_kv;

static inline const float *kiln_attn_k_row(const kiln_attn_kv *c, int32_t i) {
    return i < c->n1 ? c->k + (size_t)i * c->stride : c->k2 + (size_t)(i - c->n1) * c->stride;
}
static inline const float *kiln_attn_v_row(const kiln_attn_kv *c, int32_t i) {
    return i < c->n1 ? c->v + (size_t)i * c->stride : c->v2 + (size_t)(i - c->n1) * c->stride;
}

/* One query vector's online-softmax state across attn_chunk calls. Before the first chunk:
 * m = -INFINITY and l = 0 (acc is then ignored: it need not be initialized); after the last,
 * the attention output is acc / l. */
typedef struct kiln_attn_q {
    const float *q;        /* (hd,) query */
    float *acc;            /* (hd,) sum of exp(score - m) * V row over the positions seen */
    float m;               /* largest scaled score seen */
    float l;               /* sum of exp(score - m) over the positions seen */
    int32_t n_see;         /* positions of the current chunk this query sees: 1..n, a prefix */
} kiln_attn_q;

/* The kernel table. Shapes are row-major; "(a, b)" means a rows of b contiguous floats. */
typedef struct kiln_kernels {
    const char *name;
    /* src: one row of n elements of type t (n a multiple of its block) -> dst (n,) f32. */
    void (*dequant_row)(kiln_wtype t, const void *src, float *dst, int64_t n);
    /* w (n_out, n_in) of type t, row stride row_bytes @ x (n_x, n_in) f32 -> y (n_x, n_out).
     * OpenMP over output rows with n_threads (<= 0: the runtime default). y does not alias x. */
    void (*matmul)(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in,
                   const float *x, int64_t n_x, float *y, int n_threads);
    /* Optional (NULL in tables without one): a weight layout this table multiplies faster, made
     * once at load. pack_bytes is its size for w (n_out, n_in) of type t, 0 when this table does
     * not pack that type or shape; pack writes it to dst (64-byte aligned, pack_bytes long) using
     * n_threads. matmul_packed multiplies n_mats (1..4) packed matrices of type t, all (n_out_i,
     * n_in), by the same x (n_x, n_in) in one job (fewer team wake-ups, x quantized once), with
     * matmul's contract for each and results bit-identical to matmul on the same weights. */
    size_t (*pack_bytes)(kiln_wtype t, int64_t n_out, int64_t n_in);
    void (*pack)(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in, void *dst,
                 int n_threads);
    void (*matmul_packed)(kiln_wtype t, const kiln_pmat *mats, int n_mats, int64_t n_in, const float *x,
                          int64_t n_x, int n_threads);
    /* out (n,) = x (n,) / sqrt(mean(x^2) + eps) * w (n,); w NULL means ones. out may be x. */
    void (*rmsnorm)(const float *x, const float *w, int64_t n, float eps, float *out);
    /* In place on x (n_heads, head_dim): rotates the first n_rot dims of each head by pos.
     * freq i (0 <= i < n_rot/2) = theta_base^(-2i/n_rot) / freq_factors[i] (factors may be NULL);
     * pairs are (2i, 2i+1) for NORM, (i, i + n_rot/2) for NEOX. */
    void (*rope)(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int32_t pos,
                 float theta_base, const float *freq_factors, int rope_type);
    /* g (n,) = silu(g) * u (n,). */
    void (*silu_mul)(float *g, const float *u, int64_t n);
    /* In place, numerically stable (max subtracted). */
    void (*softmax)(float *x, int64_t n);
    /* sum a[i] * b[i] over n. */
    float (*dot)(const float *a, const float *b, int64_t n);
    /* y (n,) += a * x (n,). */
    void (*axpy)(float a, const float *x, float *y, int64_t n);
    /* out[i] = dot(q, k + i * stride, n) for i < n_rows: q against rows of a K cache chunk;
     * bit-identical to n_rows calls of dot. */
    void (*dot_rows)(const float *q, const float *k, size_t stride, int64_t n_rows, int64_t n, float *out);
    /* y (n,) += w[i] * (v + i * stride) for i = 0, 1, ... n_rows - 1 in that order: a V chunk
     * weighted into an accumulator; bit-identical to n_rows calls of axpy. */
    void (*axpy_rows)(const float *w, const float *v, size_t stride, int64_t n_rows, int64_t n, float *y);
    /* One chunk of c->n (1..KILN_ATT_CHUNK) cached positions, K rows kiln_attn_k_row(c, i) and
     * V rows kiln_attn_v_row(c, i), updates n_q (0..KILN_ATT_MAX_Q) query states: for each,
     * s_i = dot(q, K_i) * scale for i < n_see; m' = max(m, max s_i); c = exp(m - m');
     * l = l * c + sum exp(s_i - m'); acc = acc * c + sum over i in order of exp(s_i - m') * V_i,
     * where acc * c is 0 when c is 0 (whatever acc held).
     * A query's result depends only on its own state, q, n_see and those n_see positions, never
     * on n, on where the rows lie (one segment or two) or on the other queries of the call
     * (bit-identical however queries are grouped). */
    void (*attn_chunk)(kiln_attn_q *qs, int n_q, const kiln_attn_kv *c, int32_t hd, float scale);
} kiln_kernels;

/* True when the CPU has F16C (CPUID; clang's __builtin_cpu_supports does not know "f16c"). */
bool kiln_cpu_has_f16c(void);

/* The rope op in two steps, for callers that rotate many vectors at one position (bit-identical
 * to rope): cs (n_rot,) = cos, sin of each pair's angle pos * freq i (interleaved), then the
 * rotation of x (n_heads, head_dim) by them. n_rot is even, at most head_dim and
 * KILN_ROPE_MAX_ROT. */
#define KILN_ROPE_MAX_ROT 1024
void kiln_rope_angles(int64_t n_rot, int32_t pos, float theta_base, const float *freq_factors, float *cs);
void kiln_rope_apply(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, const float *cs, int rope_type);

/* The scalar reference table (always available). */
extern const kiln_kernels kiln_kernels_ref;
/* Per-ISA tables (avx2.c, avx512.c; compiled with those ISA flags): use them only through
 * kiln_kernels_get / kiln_kernels_find, which check the CPU first. */
extern const kiln_kernels kiln_kernels_avx2;
extern const kiln_kernels kiln_kernels_avx512;

/* The table chosen at start-up: KILN_KERNELS=ref|<name> forces one (an unknown name logs a
 * warning and falls back to the best available); otherwise the best for this CPU. Thread-safe. */
const kiln_kernels *kiln_kernels_get(void);
/* A table by name, NULL if not built in or not supported by this CPU (for tests). */
const kiln_kernels *kiln_kernels_find(const char *name);

/* kquants.c: Q4_1, Q5_0, Q4_K, Q5_K, Q6_K. kiln_kquant_handles(t) is true for exactly these;
 * kiln_kquant_dequant_row is their scalar dequantization (the spec; ref.c's dequant_row calls it);
 * kiln_kquant_matmul has the contract of kiln_kernels.matmul for these types and uses the
 * fastest code this CPU supports (any table may delegate these types to it). */
bool kiln_kquant_handles(kiln_wtype t);
void kiln_kquant_dequant_row(kiln_wtype t, const void *src, float *dst, int64_t n);
void kiln_kquant_matmul(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in,
                        const float *x, int64_t n_x, float *y, int n_threads);
/* The packed layout of these types (the contract of kiln_kernels.pack_bytes / pack /
 * matmul_packed; tables delegate to these): pack_bytes is 0 where there is none on this CPU. */
size_t kiln_kquant_pack_bytes(kiln_wtype t, int64_t n_out, int64_t n_in);
void kiln_kquant_pack(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in, void *dst,
                      int n_threads);
void kiln_kquant_matmul_packed(kiln_wtype t, const kiln_pmat *mats, int n_mats, int64_t n_in, const float *x,
                               int64_t n_x, int n_threads);
/* avx512_kq.c (compiled with AVX-512 F/BW/DQ/VL/VNNI/BF16; kquants.c calls these only after its CPU
 * check): the five types in packed 16-row panels. pack_bytes / pack as above (0: n_in not a
 * multiple of the block, 256 for the K-quants). matmul multiplies n_mats packed matrices (w NULL), or
 * the raw w (row stride row_bytes; then n_mats == 1 and mats[0].packed is ignored) packed one panel
 * at a time into a per-thread scratch, by x (n_x, n_in): bit-identical results either way. */
size_t kiln_kquant_avx512_pack_bytes(kiln_wtype t, int64_t n_out, int64_t n_in);
void kiln_kquant_avx512_pack(kiln_wtype t, const void *w, size_t row_bytes, int64_t n_out, int64_t n_in, void *dst,
                             int n_threads);
void kiln_kquant_avx512_matmul(kiln_wtype t, const kiln_pmat *mats, int n_mats, const void *w, size_t row_bytes,
                               int64_t n_in, const float *x, int64_t n_x, int n_threads);

/* Embedding lookup: row `id` of table (n_rows, n_cols) of type t with the given row stride,
 * dequantized into dst (n_cols,). */
void kiln_embed_row(const kiln_kernels *k, kiln_wtype t, const void *table, size_t row_bytes,
                    int64_t id, int64_t n_cols, float *dst);

#endif
