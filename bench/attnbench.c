/* attnbench.c: attention playground. Times one kernel table's attn_chunk on cache-resident K/V
 * chunks (32 positions in two segments of 16, as forward.c forms them over the default 16-token
 * cache blocks) for a few query counts (8: one
 * decode row of TinyLlama's GQA group; 64: a prefill row group) and head dims, and reports the
 * best of 30 repeats as ns per (query, chunk) and GFMA/s (scores + weighted V rows: 2 * n * hd
 * multiply-adds per query). Single thread. The "rows" lines time the same update done the
 * reference way with the table's dot_rows / axpy_rows and libm expf (forward.c's attention before
 * attn_chunk).
 * Build: cc -O2 -Isrc -fopenmp bench/attnbench.c build/release/libkiln.a -lm -o build/attnbench
 * Usage: build/attnbench [TABLE (ref|avx2|avx512; default: best)] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "kernels/isa.h"
#include "kernels/kernels.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    const kiln_kernels *T = argc > 1 ? kiln_kernels_find(argv[1]) : kiln_kernels_get();
    if (!T) {
        fprintf(stderr, "attnbench: table %s not built in or not supported by this CPU\n", argv[1]);
        return 1;
    }
    const int n = 32, n1 = 16, n_qs[] = {8, 64}, hds[] = {64, 128};
    kiln_rng r;
    kiln_rng_seed(&r, 1);
    printf("table %s, chunk of %d positions\n| op | queries | head_dim | ns per query-chunk | GFMA/s |\n|---|---:|---:|---:|---:|\n",
           T->name, n);
    for (size_t hi = 0; hi < sizeof(hds) / sizeof(hds[0]); hi++) {
        const int hd = hds[hi];
        const size_t stride = (size_t)hd * 4; /* four KV heads per cache row */
        float *k = malloc(sizeof(float) * stride * n), *v = malloc(sizeof(float) * stride * n);
        float *q = malloc(sizeof(float) * 64 * (size_t)hd), *acc = malloc(sizeof(float) * 64 * (size_t)hd);
        if (!k || !v || !q || !acc) return 1;
        for (size_t i = 0; i < stride * n; i++) k[i] = (float)kiln_rng_uniform(&r) - 0.5f, v[i] = (float)kiln_rng_uniform(&r);
        for (int i = 0; i < 64 * hd; i++) q[i] = (float)kiln_rng_uniform(&r) - 0.5f;
        for (size_t qi = 0; qi < sizeof(n_qs) / sizeof(n_qs[0]); qi++) {
            const int nq = n_qs[qi], iters = 200000 / nq / (hd / 64);
            kiln_attn_q qs[64];
            const kiln_attn_kv ch = {k, v, k + (size_t)n1 * stride, v + (size_t)n1 * stride, stride, n, n1};
            for (int j = 0; j < nq; j++) qs[j] = (kiln_attn_q){q + (size_t)j * hd, acc + (size_t)j * hd, -INFINITY, 0, n};
            for (int rows = 0; rows < 2; rows++) {
                double best = 1e30;
                for (int rep = 0; rep < 30; rep++) {
                    double t0 = now();
                    for (int it = 0; it < iters; it++) {
                        if (rows)
                            kiln_attn_chunk_rows(T->dot_rows, T->axpy_rows, qs, nq, &ch, hd, 1.0f / sqrtf((float)hd));
                        else T->attn_chunk(qs, nq, &ch, hd, 1.0f / sqrtf((float)hd));
                    }
                    double t = now() - t0;
                    best = t < best ? t : best;
                }
                double per = best / ((double)iters * nq);
                printf("| %s | %d | %d | %.1f | %.1f |\n", rows ? "rows" : "attn_chunk", nq, hd, per * 1e9,
                       2.0 * n * hd / per * 1e-9);
            }
        }
        free(k), free(v), free(q), free(acc);
    }
    return 0;
}
