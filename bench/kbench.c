/* kbench.c: matmul playground. Times one kernel table's matmul on TinyLlama-1.1B layer shapes
 * (q/o 2048x2048, k/v 256x2048, gate/up 5632x2048, down 2048x5632) for each weight type and
 * activation row count, and reports min/median over repeats as GB/s of weights and GMAC/s.
 * Build: cc -O2 -Isrc -fopenmp bench/kbench.c build/release/libkiln.a -lm -o build/kbench
 * Usage: build/kbench [TABLE (ref|avx2|avx512; default: best)] [THREADS] [REPEATS] [TYPES] [NX] [DIV] [LAYERS]
 * DIV divides every output dimension (e.g. 32: the weights fit in L2, to time compute alone).
 * LAYERS > 0 times the table's packed path (pack_bytes / pack / matmul_packed) as the engine calls it
 * (q/k/v one job, o, gate/up one job, down) over LAYERS distinct layers of weights, so that the
 * weights stream from memory as in a forward pass; the figures are then per layer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Random row data of type t: float types get values in [-1, 1), block types random quants with
 * small scales. */
static void *rand_weights(kiln_wtype t, int64_t n_out, int64_t n_in, kiln_rng *r) {
    size_t rb = kiln_wtype_row_bytes(t, n_in), be, bb;
    kiln_wtype_block(t, &be, &bb);
    uint8_t *w = malloc(rb * (size_t)n_out);
    for (size_t i = 0; i < rb * (size_t)n_out; i++) w[i] = (uint8_t)kiln_rng_u64(r);
    if (t == KILN_WTYPE_F32)
        for (size_t i = 0; i < (size_t)n_out * n_in; i++) ((float *)w)[i] = (float)kiln_rng_uniform(r) * 2 - 1;
    if (t == KILN_WTYPE_F16)
        for (size_t i = 0; i < (size_t)n_out * n_in; i++)
            ((uint16_t *)w)[i] = kiln_f32_to_f16((float)kiln_rng_uniform(r) * 2 - 1);
    if (t == KILN_WTYPE_BF16)
        for (size_t i = 0; i < (size_t)n_out * n_in; i++)
            ((uint16_t *)w)[i] = kiln_f32_to_bf16((float)kiln_rng_uniform(r) * 2 - 1);
    if (t == KILN_WTYPE_Q8_0 || t == KILN_WTYPE_Q4_0)
        for (size_t i = 0; i < rb * (size_t)n_out; i += bb) *(uint16_t *)(w + i) = kiln_f32_to_f16(0.01f);
    return w;
}

int main(int argc, char **argv) {
    const kiln_kernels *k = argc > 1 ? kiln_kernels_find(argv[1]) : kiln_kernels_get();
    if (!k) {
        fprintf(stderr, "no such kernel table here\n");
        return 1;
    }
    int nt = argc > 2 ? atoi(argv[2]) : 2, reps = argc > 3 ? atoi(argv[3]) : 5;
    const char *types = argc > 4 ? argv[4] : "q4_0,q8_0,f16";
    const char *nxs = argc > 5 ? argv[5] : "1,16,128";
    const int64_t div = argc > 6 ? atoi(argv[6]) : 1;
    const int n_layers = argc > 7 ? atoi(argv[7]) : 0;
    static const struct { const char *name; kiln_wtype t; } tn[] = {
        {"f32", KILN_WTYPE_F32}, {"f16", KILN_WTYPE_F16}, {"bf16", KILN_WTYPE_BF16},
        {"q8_0", KILN_WTYPE_Q8_0}, {"q4_0", KILN_WTYPE_Q4_0}};
    /* one TinyLlama layer: q, k, v, o, gate, up, down */
    int64_t shapes[7][2] = {{2048, 2048}, {256, 2048}, {256, 2048}, {2048, 2048},
                            {5632, 2048}, {5632, 2048}, {2048, 5632}};
    for (int s = 0; s < 7; s++) shapes[s][0] /= div > 0 ? div : 1;
    kiln_rng r;
    kiln_rng_seed(&r, 1);
    printf("table %s, %d threads, %d repeats (min / median)\n", k->name, nt, reps);
    for (size_t ti = 0; ti < sizeof(tn) / sizeof(tn[0]); ti++) {
        if (!strstr(types, tn[ti].name)) continue;
        kiln_wtype t = tn[ti].t;
        const bool packed = n_layers > 0;
        if (packed && (!k->pack_bytes || !k->pack_bytes(t, shapes[0][0], shapes[0][1]))) {
            printf("%-5s: table %s has no packed layout\n", tn[ti].name, k->name);
            continue;
        }
        const int nl = packed ? n_layers : 1;
        void *w[7];
        void **pw = calloc((size_t)nl * 7, sizeof(void *));
        double wbytes = 0, macs1 = 0;
        for (int s = 0; s < 7; s++) {
            w[s] = rand_weights(t, shapes[s][0], shapes[s][1], &r);
            wbytes += (double)kiln_wtype_row_bytes(t, shapes[s][1]) * (double)shapes[s][0];
            macs1 += (double)shapes[s][0] * (double)shapes[s][1];
            for (int l = 0; packed && l < nl; l++) { /* the same values in every layer, distinct memory */
                size_t pb = k->pack_bytes(t, shapes[s][0], shapes[s][1]);
                pw[l * 7 + s] = aligned_alloc(64, (pb + 63) / 64 * 64);
                k->pack(t, w[s], kiln_wtype_row_bytes(t, shapes[s][1]), shapes[s][0], shapes[s][1], pw[l * 7 + s], nt);
            }
        }
        char buf[256];
        snprintf(buf, sizeof(buf), "%s", nxs);
        for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
            int64_t n_x = atoi(tok);
            float *x = malloc(sizeof(float) * (size_t)n_x * 5632), *y = malloc(sizeof(float) * (size_t)n_x * 5632 * 3);
            for (int64_t i = 0; i < n_x * 5632; i++) x[i] = (float)kiln_rng_uniform(&r) * 2 - 1;
            double times[64], cpu[64];
            int n_rep = reps > 64 ? 64 : reps;
            for (int rep = -1; rep < n_rep; rep++) {
                double t0 = now(), c0 = cpu_now();
                for (int l = 0; l < nl; l++) {
                    if (!packed) {
                        for (int s = 0; s < 7; s++)
                            k->matmul(t, w[s], kiln_wtype_row_bytes(t, shapes[s][1]), shapes[s][0], shapes[s][1], x,
                                      n_x, y, nt);
                        continue;
                    }
                    /* as forward.c groups them: {q, k, v}, {o}, {gate, up}, {down} */
                    static const int group[4][4] = {{0, 1, 2, -1}, {3, -1}, {4, 5, -1}, {6, -1}};
                    for (int g = 0; g < 4; g++) {
                        kiln_pmat m[3];
                        int n = 0;
                        for (; group[g][n] >= 0; n++) {
                            int s = group[g][n];
                            m[n] = (kiln_pmat){pw[l * 7 + s], shapes[s][0], y + (size_t)n * (size_t)n_x * 5632};
                        }
                        k->matmul_packed(t, m, n, shapes[group[g][0]][1], x, n_x, nt);
                    }
                }
                if (rep >= 0) times[rep] = (now() - t0) / nl, cpu[rep] = (cpu_now() - c0) / nl;
            }
            qsort(times, (size_t)n_rep, sizeof(double), cmp);
            qsort(cpu, (size_t)n_rep, sizeof(double), cmp);
            double tmin = times[0], tmed = times[n_rep / 2];
            printf("%-5s n_x %4lld: layer %8.3f / %8.3f ms  weights %6.1f / %6.1f GB/s  %7.1f GMAC/s  (x22 layers: %.1f tok/s)  cpu %.3f ms\n",
                   tn[ti].name, (long long)n_x, tmin * 1e3, tmed * 1e3, wbytes / tmin * 1e-9, wbytes / tmed * 1e-9,
                   macs1 * (double)n_x / tmin * 1e-9, (double)n_x / (tmin * 22), cpu[0] * 1e3);
            free(x), free(y);
        }
        for (int s = 0; s < 7; s++) free(w[s]);
        for (int i = 0; i < nl * 7; i++) free(pw[i]);
        free(pw);
    }
    return 0;
}
