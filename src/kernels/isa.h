/* isa.h: internal to kernels/: the vector ops that live outside the per-ISA table files
 * (avx512_vec.c, compiled with the AVX-512 flags) and the generic attention chunk of ref.c that
 * a table can run with its own dot_rows / axpy_rows. Call the avx512 functions only through a
 * table that dispatch.c has checked against the CPU. */
#ifndef KILN_KERNELS_ISA_H
#define KILN_KERNELS_ISA_H

#include "kernels/kernels.h"

/* attn_chunk's contract (kernels.h) computed the reference way, row by row with the given
 * dot_rows / axpy_rows and libm expf: ref.c's attn_chunk is this with ref's row ops. */
void kiln_attn_chunk_rows(void (*dot_rows)(const float *, const float *, size_t, int64_t, int64_t, float *),
                          void (*axpy_rows)(const float *, const float *, size_t, int64_t, int64_t, float *),
                          kiln_attn_q *qs, int n_q, const kiln_attn_kv *c, int32_t hd, float scale);

/* avx512_vec.c: the contracts of the kernels.h table ops of the same names. */
void kiln_avx512_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *out);
void kiln_avx512_silu_mul(float *g, const float *u, int64_t n);
void kiln_avx512_softmax(float *x, int64_t n);
void kiln_avx512_attn_chunk(kiln_attn_q *qs, int n_q, const kiln_attn_kv *c, int32_t hd, float scale);
/* y[i] = exp(x[i]) for i < n (y may be x): the vector exp the ops above use, within 2 ulp of
 * expf for finite results (0 below about -103.9, +inf above about 88.7, NaN stays NaN).
 * Exposed for its accuracy test. */
void kiln_avx512_exp(const float *x, float *y, int64_t n);

#endif
