/* cmd_bench.c: `kiln bench -m MODEL [-p 512] [-n 128] [-b 1,4,16] [-t THREADS] [--reps 3] [--json]
 * [--roofline]`: engine throughput without the server, like llama-bench. pp: one sequence of p
 * random tokens prefilled in batches of --ubatch rows (default p: one batch), logits of the last
 * row only. tg at batch b: b sequences decode n tokens together from an empty cache, one forward of
 * b rows per step, logits for every row; tok/s is the aggregate (b * n / time). Each figure is run
 * --reps times after a warm-up (weights paged in) and reported as median and best (min time).
 * --roofline measures the machine's streaming read bandwidth (every thread, a buffer far larger
 * than the caches), FP32 FMA peak and INT8 and INT16 dot peaks (AVX-512 VNNI), and gives each tg
 * figure as a fraction of the bandwidth ceiling (weight + KV bytes read per step / step time) and
 * pp as a fraction of the peak of the instructions its matmuls run on: INT8 dots for models mostly
 * of quantized weights, INT16 dots for F16 / BF16 ones on the avx512 kernels (W16), else FMA. A tg
 * fraction's bandwidth is that of reading the model's own weight memory (the packed copy),
 * measured right before each rep, and the fraction is the median over the reps of the rep's rate
 * over its own measurement: in a VM the read bandwidth of two allocations can differ by half
 * (30 and 50 GB/s seen here, where the host placed their pages), and it drifts with the host's
 * load, so neither another buffer nor one measurement for all reps is the ceiling of these reps.
 * Before each tg rep it also measures the share of time the threads lose to others (the host),
 * which the JSON reports: tg figures taken while it is high understate the code.
 * Runs on the calling thread; the model's compute team does the work. */
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cmd/cmd.h"
#include "kernels/kernels.h"
#include "model/model.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#include <stdint.h>

#define MAX_BATCHES 16
#define MAX_REPS 100

static void bench_usage(FILE *f) {
    fprintf(f, "usage: kiln bench -m MODEL [-p 512] [-n 128] [-b 1,4,16] [-t THREADS] [--reps 3]\n"
               "                  [--ubatch U] [--json] [--roofline]\n"
               "  -p N        prompt tokens for pp (0: skip)        -n N   tokens decoded per sequence for tg (0: skip)\n"
               "  -b LIST     tg batch sizes (sequences decoding together, up to 16 values)\n"
               "  -t N        compute threads (default: physical cores)\n"
               "  --ubatch U  rows per prefill forward (default: p, one batch)\n"
               "  --roofline  measure memory bandwidth, FMA, INT8 and INT16 dot peaks; show each figure as a fraction\n");
}

typedef struct result {
    char name[32];
    int n_tokens;        /* tokens per run */
    int batch;           /* sequences (tg) or 1 (pp) */
    double secs[MAX_REPS];
    int n_reps;
    double best_tps, median_tps;
    double bytes_per_step; /* tg: weights + KV read per forward */
    double bw[MAX_REPS];   /* tg with --roofline: the bandwidth measured right before each rep */
    double stolen[MAX_REPS]; /* ... and the share of time the threads lost then (measure_stolen) */
    double flops_per_run;  /* pp */
    double peak[MAX_REPS]; /* pp with --roofline: the compute peak measured right before each rep */
} result;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of n (1..MAX_REPS) values. */
static double median_of(const double *v, int n) {
    double b[MAX_REPS];
    memcpy(b, v, sizeof(double) * (size_t)n);
    qsort(b, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? b[n / 2] : 0.5 * (b[n / 2 - 1] + b[n / 2]);
}

static void summarize(result *r) {
    double best = r->secs[0];
    for (int k = 1; k < r->n_reps; k++) best = r->secs[k] < best ? r->secs[k] : best;
    r->best_tps = r->n_tokens / best;
    r->median_tps = r->n_tokens / median_of(r->secs, r->n_reps);
}

/* ---- machine ceilings ---- */

/* Sum of the 64-bit words [lo, hi) (the value only keeps the loads alive). */
static uint64_t sum_words(const uint64_t *p, size_t lo, size_t hi) {
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    size_t i = lo;
    for (; i + 4 <= hi; i += 4) a0 += p[i], a1 += p[i + 1], a2 += p[i + 2], a3 += p[i + 3];
    for (; i < hi; i++) a0 += p[i];
    return a0 + a1 + a2 + a3;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_AVX2_BENCH 1
/* The same with 256-bit loads, four independent accumulators (lo, hi multiples of 16 words). */
__attribute__((target("avx2"))) static uint64_t sum_words_avx2(const uint64_t *p, size_t lo, size_t hi) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = lo; i < hi; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 12)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t o[4];
    _mm256_storeu_si256((__m256i *)o, a0);
    return o[0] + o[1] + o[2] + o[3];
}

/* 16 independent FMA chains of 8 floats (two FMA pipes x latency 4 need 8): iters * 16 * 16 flops. */
__attribute__((target("avx2,fma"))) static float fma_loop(long iters, float seed) {
    __m256 m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-7f), c[16];
    for (int i = 0; i < 16; i++) c[i] = _mm256_set1_ps(seed + 1e-3f * (float)i);
    for (long it = 0; it < iters; it++) {
        #pragma GCC unroll 16
        for (int i = 0; i < 16; i++) c[i] = _mm256_fmadd_ps(c[i], m, a); /* in place: vfmadd213ps */
    }
    __m256 s = c[0];
    for (int i = 1; i < 16; i++) s = _mm256_add_ps(s, c[i]);
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0];
}

/* The same with 512-bit vectors where the CPU has AVX-512 (a core that executes two 512-bit FMAs
 * a cycle does twice the flops of the 256-bit loop): iters * 16 * 32 flops. */
__attribute__((target("avx512f"))) static float fma512_loop(long iters, float seed) {
    __m512 m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-7f), c[16];
    for (int i = 0; i < 16; i++) c[i] = _mm512_set1_ps(seed + 1e-3f * (float)i);
    for (long it = 0; it < iters; it++) {
        #pragma GCC unroll 16
        for (int i = 0; i < 16; i++) c[i] = _mm512_fmadd_ps(c[i], m, a);
    }
    __m512 s = c[0];
    for (int i = 1; i < 16; i++) s = _mm512_add_ps(s, c[i]);
    return _mm512_reduce_add_ps(s);
}

/* 16 independent chains of 512-bit vpdpbusd (64 u8 x s8 products each: iters * 16 * 64 MACs) or,
 * with w16, vpdpwssd (32 s16 x s16 products each). In asm, accumulating in place: GCC copies the
 * accumulator of the intrinsic every step (the instruction overwrites it), and those copies halved
 * the measured rate. */
#define DOT8(INSN, a, b, c, d, e, f, g, h)                                                                        \
    __asm__(INSN " %8, %9, %0\n\t" INSN " %8, %9, %1\n\t" INSN " %8, %9, %2\n\t" INSN " %8, %9, %3\n\t"              \
            INSN " %8, %9, %4\n\t" INSN " %8, %9, %5\n\t" INSN " %8, %9, %6\n\t" INSN " %8, %9, %7"                    \
            : "+v"(a), "+v"(b), "+v"(c), "+v"(d), "+v"(e), "+v"(f), "+v"(g), "+v"(h)                               \
            : "v"(x), "v"(w))
#define DOT_STEPS(INSN)                                                                                           \
    do {                                                                                                          \
        DOT8(INSN, c0, c1, c2, c3, c4, c5, c6, c7);                                                               \
        DOT8(INSN, c8, c9, c10, c11, c12, c13, c14, c15);                                                         \
    } while (0)
__attribute__((target("avx512f,avx512vnni"))) static int dot_loop(long iters, int seed, bool w16) {
    const __m512i w = _mm512_set1_epi8(1), x = _mm512_set1_epi8(2);
    /* named variables, not an array: GCC keeps an array in memory, storing every chain each step */
    __m512i c0 = _mm512_set1_epi32(seed), c1 = _mm512_set1_epi32(seed + 1), c2 = _mm512_set1_epi32(seed + 2),
            c3 = _mm512_set1_epi32(seed + 3), c4 = _mm512_set1_epi32(seed + 4), c5 = _mm512_set1_epi32(seed + 5),
            c6 = _mm512_set1_epi32(seed + 6), c7 = _mm512_set1_epi32(seed + 7), c8 = _mm512_set1_epi32(seed + 8),
            c9 = _mm512_set1_epi32(seed + 9), c10 = _mm512_set1_epi32(seed + 10), c11 = _mm512_set1_epi32(seed + 11),
            c12 = _mm512_set1_epi32(seed + 12), c13 = _mm512_set1_epi32(seed + 13), c14 = _mm512_set1_epi32(seed + 14),
            c15 = _mm512_set1_epi32(seed + 15);
    if (w16)
        for (long it = 0; it < iters; it++) DOT_STEPS("vpdpwssd");
    else
        for (long it = 0; it < iters; it++) DOT_STEPS("vpdpbusd");
    __m512i s = _mm512_xor_si512(_mm512_xor_si512(_mm512_xor_si512(c0, c1), _mm512_xor_si512(c2, c3)),
                                 _mm512_xor_si512(_mm512_xor_si512(c4, c5), _mm512_xor_si512(c6, c7)));
    s = _mm512_xor_si512(s, _mm512_xor_si512(_mm512_xor_si512(_mm512_xor_si512(c8, c9), _mm512_xor_si512(c10, c11)),
                                             _mm512_xor_si512(_mm512_xor_si512(c12, c13), _mm512_xor_si512(c14, c15))));
    return _mm_cvtsi128_si32(_mm512_castsi512_si128(s)); /* keeps the chains live; xor cannot overflow */
}
#undef DOT_STEPS
#undef DOT8
#endif

/* A buffer for bandwidth passes: written once, so that its pages are mapped. */
typedef struct bw_buf {
    uint64_t *w;
    size_t n;                  /* words */
} bw_buf;

static bool bw_buf_new(bw_buf *b, int nt, size_t bytes) {
    b->w = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b->w == MAP_FAILED) {
        b->w = NULL;
        return false;
    }
    b->n = bytes / sizeof(uint64_t);
    uint64_t *w = b->w;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (size_t i = 0; i < b->n; i++) w[i] = i;
    return true;
}

static void bw_buf_free(bw_buf *b) {
    if (b->w) munmap(b->w, b->n * sizeof(uint64_t));
    b->w = NULL;
}

/* Best of `passes` streaming reads of the n words at buf (32-byte aligned), each thread reading
 * its own slice; bytes per second (0 without memory). */
static double measure_bandwidth(const uint64_t *buf, size_t n, int nt, int passes) {
    if (!buf || n < 16 * (size_t)nt) return 0;
    bool avx2 = false;
#ifdef HAVE_AVX2_BENCH
    __builtin_cpu_init();
    avx2 = __builtin_cpu_supports("avx2");
#endif
    double best = 0;
    volatile uint64_t sink = 0;
    for (int pass = 0; pass < passes; pass++) {
        uint64_t total = 0;
        double t0 = kiln_now_s();
#pragma omp parallel num_threads(nt) reduction(+ : total)
        {
            size_t id = (size_t)omp_get_thread_num(), k = (size_t)omp_get_num_threads();
            size_t per = n / k / 16 * 16, lo = per * id, hi = id == k - 1 ? n / 16 * 16 : per * (id + 1);
#ifdef HAVE_AVX2_BENCH
            if (avx2) total += sum_words_avx2(buf, lo, hi);
            else
#endif
                total += sum_words(buf, lo, hi);
        }
        double dt = kiln_now_s() - t0;
        sink += total;
        if ((double)(n / 16 * 16) * 8 / dt > best) best = (double)(n / 16 * 16) * 8 / dt;
    }
    (void)sink;
    return best;
}

/* The share of time nt threads, each in a loop that only reads the clock for `secs`, lose in gaps
 * longer than 20 us (mean over the threads): what the hypervisor or other processes take from this
 * run's cores right now (a VM's steal-time counter misses most of it). */
static double measure_stolen(int nt, double secs) {
    double lost = 0;
#pragma omp parallel num_threads(nt) reduction(+ : lost)
    {
        double t0 = kiln_now_s(), prev = t0, t;
        while ((t = kiln_now_s()) - t0 < secs) {
            if (t - prev > 20e-6) lost += t - prev;
            prev = t;
        }
    }
    return lost / (secs * nt);
}

/* The median over r's reps of (work_per_run / the rep's seconds / ceil[k], the ceiling measured
 * right before it); 0 when a measurement is missing. */
static double paired_fraction(const result *r, double work_per_run, const double *ceil) {
    double f[MAX_REPS];
    for (int k = 0; k < r->n_reps; k++) {
        if (ceil[k] <= 0 || r->secs[k] <= 0) return 0;
        f[k] = work_per_run / r->secs[k] / ceil[k];
    }
    return median_of(f, r->n_reps);
}

/* tg: bytes read per second against the bandwidth measured before each rep. */
static double paired_bw_fraction(const result *r) {
    return paired_fraction(r, (double)r->n_tokens / r->batch * r->bytes_per_step, r->bw);
}

/* pp: operations per second against the compute peak measured before each rep. */
static double paired_peak_fraction(const result *r) { return paired_fraction(r, r->flops_per_run, r->peak); }

#ifdef HAVE_AVX2_BENCH
/* One thread's share of a peak measurement: runs a loop of `iters` iterations, returns a value
 * that keeps its results live. */
static int peak_fma(long iters, int seed) { return fma_loop(iters, (float)seed) > 0; }
static int peak_fma512(long iters, int seed) { return fma512_loop(iters, (float)seed) > 0; }
static int peak_dot8(long iters, int seed) { return dot_loop(iters, seed, false); }
static int peak_dot16(long iters, int seed) { return dot_loop(iters, seed, true); }

/* Best of 3 passes of loop on every thread: ops_per_iter * iters * nt / seconds. */
static double measure_peak(int nt, int (*loop)(long, int), double ops_per_iter) {
    const long iters = 10 * 1000 * 1000;
    double best = 0;
    volatile int sink = 0;
    for (int pass = 0; pass < 3; pass++) {
        int s = 0;
        double t0 = kiln_now_s();
#pragma omp parallel num_threads(nt) reduction(^ : s)
        s ^= loop(iters, omp_get_thread_num());
        double dt = kiln_now_s() - t0;
        sink ^= s;
        double f = ops_per_iter * (double)iters * nt / dt;
        if (f > best) best = f;
    }
    (void)sink;
    return best;
}
#endif

/* FP32 FMA FLOP/s with every thread (0 when the CPU has no AVX2+FMA). */
static double measure_fma_peak(int nt) {
#ifdef HAVE_AVX2_BENCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return measure_peak(nt, peak_fma512, 16 * 32);
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0;
    return measure_peak(nt, peak_fma, 16 * 16);
#else
    (void)nt;
    return 0;
#endif
}

/* Whether the CPU has AVX-512 VNNI (the int8 dot products of the quantized matmuls). */
static bool have_int8_dot(void) {
#ifdef HAVE_AVX2_BENCH
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
}

/* INT8 (w16: INT16) dot-product ops/s, 2 per multiply-add, with every thread, measured with
 * AVX-512 VNNI (0 when the CPU has none): the ceiling of the integer matmul path of quantized
 * types (INT16: of F16 / BF16 on the avx512 kernels). */
static double measure_dot_peak(int nt, bool w16) {
#ifdef HAVE_AVX2_BENCH
    if (!have_int8_dot()) return 0;
    return w16 ? measure_peak(nt, peak_dot16, 16 * 32 * 2) : measure_peak(nt, peak_dot8, 16 * 64 * 2);
#else
    (void)nt, (void)w16;
    return 0;
#endif
}

/* ---- the model's costs ---- */

/* Bytes of weights one forward reads (every tensor but the embedding table, which is read one row
 * per token, unless it is also the output matrix) and the matmul parameter count. */
static void weight_costs(const kiln_model *m, double *bytes, double *params) {
    const kiln_gguf *g = kiln_model_gguf(m);
    bool tied = kiln_model_hparams(m)->tied_output;
    *bytes = *params = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const kiln_gguf_tensor *t = &g->tensors[i];
        if (!tied && kiln_gguf_str_eq(t->name, "token_embd.weight")) continue;
        *bytes += (double)t->n_bytes;
        if (t->n_dims == 2) *params += (double)t->n_elems;
    }
}

/* The compute ceiling of a prompt: the peak of the instructions that multiply most of the matmul
 * weight bytes. */
typedef enum { CEIL_FP32, CEIL_INT8, CEIL_INT16 } pp_ceiling;
static const char *const CEIL_KEY[] = {"fp32", "int8", "int16"};
static const char *const CEIL_NAME[] = {"FP32 FMA peak", "INT8 dot peak", "INT16 dot peak"};

static pp_ceiling pp_ceiling_of(const kiln_model *m) {
    const kiln_gguf *g = kiln_model_gguf(m);
    double qb = 0, hb = 0, fb = 0; /* quantized, F16 / BF16, F32 */
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const kiln_gguf_tensor *t = &g->tensors[i];
        if (t->n_dims != 2) continue;
        bool half = t->type == KILN_DTYPE_F16 || t->type == KILN_DTYPE_BF16;
        *(t->type == KILN_DTYPE_F32 ? &fb : half ? &hb : &qb) += (double)t->n_bytes;
    }
    if (!have_int8_dot()) return CEIL_FP32;
    if (qb > hb && qb > fb) return CEIL_INT8; /* int8 activations (vpdpbusd; avx2: vpmaddubsw) */
    /* F16 / BF16: int16 dots (W16) on the avx512 kernels only; f32 FMA on the others */
    if (hb > fb && strcmp(kiln_kernels_get()->name, "avx512") == 0) return CEIL_INT16;
    return CEIL_FP32;
}

static double measure_ceiling(pp_ceiling c, int nt) {
    return c == CEIL_FP32 ? measure_fma_peak(nt) : measure_dot_peak(nt, c == CEIL_INT16);
}

/* One line naming the weight types and how many tensors have each. */
static void type_summary(const kiln_model *m, char *out, size_t cap) {
    const kiln_gguf *g = kiln_model_gguf(m);
    int count[KILN_DTYPE_COUNT] = {0};
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if ((int)g->tensors[i].type < KILN_DTYPE_COUNT) count[g->tensors[i].type]++;
    size_t len = 0;
    out[0] = 0;
    for (int t = 0; t < KILN_DTYPE_COUNT && len < cap; t++)
        if (count[t])
            len += (size_t)snprintf(out + len, cap - len, "%s%s x%d", len ? ", " : "", kiln_dtype_name((kiln_dtype)t),
                                    count[t]);
}

/* ---- runs ---- */

typedef struct bench {
    kiln_model *m;
    kiln_kv *kv;
    const kiln_hparams *hp;
    int32_t bs;                  /* KV block size */
    int32_t *tables[MAX_BATCHES]; /* per sequence block table */
    int32_t n_blocks[MAX_BATCHES];
    kiln_batch_seq seqs[MAX_BATCHES];
    kiln_batch_row *rows;        /* (max(ubatch, b_max),) */
    float *logits;               /* (b_max, n_vocab) */
    int32_t *tokens;             /* (max(p, n * b_max),) random ids */
} bench;

/* Prefill p tokens of sequence 0 in forwards of ubatch rows; seconds, or < 0 on error. */
static double run_pp(bench *B, int p, int ubatch) {
    double t0 = kiln_now_s();
    for (int start = 0; start < p; start += ubatch) {
        int len = KILN_MIN(ubatch, p - start);
        for (int i = 0; i < len; i++)
            B->rows[i] = (kiln_batch_row){.token = B->tokens[start + i], .pos = start + i, .seq = 0,
                                          .want_logits = start + i == p - 1};
        kiln_batch b = {.n_rows = len, .rows = B->rows, .n_seqs = 1, .seqs = B->seqs};
        if (kiln_model_forward(B->m, B->kv, &b, B->logits)) return -1;
    }
    return kiln_now_s() - t0;
}

/* b sequences decode n tokens each from position 0; seconds, or < 0 on error. */
static double run_tg(bench *B, int n, int nb) {
    double t0 = kiln_now_s();
    for (int step = 0; step < n; step++) {
        for (int s = 0; s < nb; s++)
            B->rows[s] = (kiln_batch_row){.token = B->tokens[step * nb + s], .pos = step, .seq = s, .want_logits = true};
        kiln_batch b = {.n_rows = nb, .rows = B->rows, .n_seqs = nb, .seqs = B->seqs};
        if (kiln_model_forward(B->m, B->kv, &b, B->logits)) return -1;
    }
    return kiln_now_s() - t0;
}

/* s as a JSON string literal. */
static void put_json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static bool parse_list(const char *s, int *out, int *n_out) {
    int n = 0;
    while (*s) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 1 || v > 1024 || (*end && *end != ',') || n == MAX_BATCHES) return false;
        out[n++] = (int)v;
        s = *end ? end + 1 : end;
    }
    *n_out = n;
    return n > 0;
}

static bool parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) return false;
    *out = v;
    return true;
}

int kiln_cmd_bench(int argc, char **argv) {
    const char *model_path = NULL;
    long p = 512, n = 128, threads = 0, reps = 3, ubatch = 0;
    int batches[MAX_BATCHES] = {1, 4, 16}, n_batches = 3;
    bool json = false, roofline = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc, ok = true;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            bench_usage(stdout);
            return 0;
        } else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && has_val) {
            model_path = argv[++i];
        } else if (!strcmp(a, "-p") && has_val) {
            ok = parse_int(argv[++i], 0, 1 << 16, &p);
        } else if (!strcmp(a, "-n") && has_val) {
            ok = parse_int(argv[++i], 0, 1 << 16, &n);
        } else if (!strcmp(a, "-b") && has_val) {
            ok = parse_list(argv[++i], batches, &n_batches);
        } else if ((!strcmp(a, "-t") || !strcmp(a, "--threads")) && has_val) {
            ok = parse_int(argv[++i], 1, 1024, &threads);
        } else if (!strcmp(a, "--reps") && has_val) {
            ok = parse_int(argv[++i], 1, MAX_REPS, &reps);
        } else if (!strcmp(a, "--ubatch") && has_val) {
            ok = parse_int(argv[++i], 1, 1 << 16, &ubatch);
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--roofline")) {
            roofline = true;
        } else {
            fprintf(stderr, "kiln bench: unknown or incomplete option '%s'\n", a);
            bench_usage(stderr);
            return 1;
        }
        if (!ok) {
            fprintf(stderr, "kiln bench: bad value for %s: '%s'\n", a, argv[i]);
            return 1;
        }
    }
    if (!model_path) {
        bench_usage(stderr);
        return 1;
    }
    if (ubatch == 0) ubatch = p > 0 ? p : 1;
    if (n == 0) n_batches = 0;
    int b_max = 1;
    for (int i = 0; i < n_batches; i++) b_max = KILN_MAX(b_max, batches[i]);

    int rc = 1;
    kiln_err err;
    bench B = {.bs = 16};
    bw_buf bwb = {0};          /* --roofline's bandwidth buffer */
    result res[MAX_BATCHES + 1];
    int n_res = 0;
    kiln_model_opts opts = {.n_threads = (int)threads};
    if ((err = kiln_model_load(model_path, &opts, &B.m))) goto out_err;
    B.hp = kiln_model_hparams(B.m);
    const kiln_hparams *hp = B.hp;
    if (p + 1 > hp->n_ctx_train || n + 1 > hp->n_ctx_train)
        fprintf(stderr, "kiln bench: note: positions beyond the model's training context (%d)\n", hp->n_ctx_train);

    /* KV: sequence 0 holds max(p, n) positions, the others n. */
    size_t kv_tok = (size_t)hp->n_layer * 2 * (size_t)hp->n_head_kv * (size_t)hp->head_dim * sizeof(float);
    size_t total_blocks = 0;
    for (int s = 0; s < b_max; s++) {
        long len = s == 0 ? KILN_MAX(p, n) : n;
        B.n_blocks[s] = (int32_t)((len + B.bs - 1) / B.bs);
        if (B.n_blocks[s] == 0) B.n_blocks[s] = 1;
        total_blocks += (size_t)B.n_blocks[s];
    }
    if ((err = kiln_kv_new(B.m, total_blocks * kv_tok * (size_t)B.bs, B.bs, &B.kv))) goto out_err;
    for (int s = 0; s < b_max; s++) {
        B.tables[s] = kiln_malloc(sizeof(int32_t) * (size_t)B.n_blocks[s]);
        if (!B.tables[s]) {
            err = kiln_errf(KILN_ERR_NOMEM, "out of memory");
            goto out_err;
        }
        for (int32_t i = 0; i < B.n_blocks[s]; i++)
            if ((err = kiln_kv_alloc_block(B.kv, &B.tables[s][i]))) goto out_err;
        B.seqs[s] = (kiln_batch_seq){.block_table = B.tables[s], .n_blocks = B.n_blocks[s]};
    }
    size_t n_tok = (size_t)KILN_MAX(p, n * b_max) + 1;
    B.rows = kiln_malloc(sizeof(kiln_batch_row) * (size_t)KILN_MAX(ubatch, b_max));
    B.logits = kiln_malloc(sizeof(float) * (size_t)b_max * (size_t)hp->n_vocab);
    B.tokens = kiln_malloc(sizeof(int32_t) * n_tok);
    if (!B.rows || !B.logits || !B.tokens) {
        err = kiln_errf(KILN_ERR_NOMEM, "out of memory");
        goto out_err;
    }
    kiln_rng rng;
    kiln_rng_seed(&rng, 1234);
    for (size_t i = 0; i < n_tok; i++) B.tokens[i] = (int32_t)(kiln_rng_u64(&rng) % (uint64_t)hp->n_vocab);

    double w_bytes, w_params;
    weight_costs(B.m, &w_bytes, &w_params);
    char types[256];
    type_summary(B.m, types, sizeof(types));
    int nt = threads > 0 ? (int)threads : 0;

    /* Warm-up: pages every weight in and grows the scratch to its largest size. */
    if (run_tg(&B, 1, b_max) < 0 || (p > 0 && run_pp(&B, (int)KILN_MIN(p, ubatch), (int)ubatch) < 0)) {
        err = KILN_ERR_INVALID;
        goto out_err;
    }
    const int team = nt > 0 ? nt : omp_get_num_procs();
    const pp_ceiling ceiling = pp_ceiling_of(B.m);
    if (p > 0) {
        result *r = &res[n_res++];
        memset(r, 0, sizeof(*r));
        snprintf(r->name, sizeof(r->name), "pp%ld", p);
        r->n_tokens = (int)p;
        r->batch = 1;
        /* matmuls 2 * params per token; attention 4 * n_head * head_dim per cached position */
        r->flops_per_run = 2.0 * w_params * (double)p +
                           4.0 * hp->n_layer * (double)hp->n_head * hp->head_dim * (double)p * (double)(p + 1) / 2;
        for (int k = 0; k < reps; k++) {
            /* like the bandwidth, the compute this VM's threads get changes with the host's load
             * (the same loop measured 1.6 and 0.85 TOP/s of int8 dots an hour apart) */
            if (roofline) r->peak[k] = measure_ceiling(ceiling, team);
            if ((r->secs[r->n_reps++] = run_pp(&B, (int)p, (int)ubatch)) < 0) {
                err = KILN_ERR_INVALID;
                goto out_err;
            }
        }
        summarize(r);
    }
    /* A tg rep's ceiling is the read bandwidth of the very memory it streams: in a VM, two
     * allocations of the same size can read at 30 and at 50 GB/s (where the host placed them) */
    const void *wbase;
    size_t wsize;
    kiln_model_weight_memory(B.m, &wbase, &wsize);
    const uint64_t *wmem = wbase;
    const size_t wmem_words = wsize / sizeof(uint64_t);
    for (int i = 0; i < n_batches; i++) {
        result *r = &res[n_res++];
        memset(r, 0, sizeof(*r));
        snprintf(r->name, sizeof(r->name), "tg%ld b%d", n, batches[i]);
        r->n_tokens = (int)n * batches[i];
        r->batch = batches[i];
        /* each step reads every weight once and, per sequence, the K/V of positions 0..step */
        r->bytes_per_step = w_bytes + (double)batches[i] * (double)kv_tok * (double)(n + 1) / 2;
        for (int k = 0; k < reps; k++) {
            if (roofline) {
                r->stolen[k] = measure_stolen(team, 0.1);
                r->bw[k] = measure_bandwidth(wmem, wmem_words, team, 3);
            }
            if ((r->secs[r->n_reps++] = run_tg(&B, (int)n, batches[i])) < 0) {
                err = KILN_ERR_INVALID;
                goto out_err;
            }
        }
        summarize(r);
    }

    double bw = 0, wbw = 0, peak = 0, fma_peak = 0, int8_peak = 0, int16_peak = 0;
    const char *peak_name = CEIL_NAME[ceiling], *peak_unit = ceiling == CEIL_FP32 ? "GFLOP/s" : "GOP/s";
    if (roofline) {
        if (bw_buf_new(&bwb, team, (size_t)1 << 30)) bw = measure_bandwidth(bwb.w, bwb.n, team, 5);
        wbw = measure_bandwidth(wmem, wmem_words, team, 5);
        bw_buf_free(&bwb);
        fma_peak = measure_fma_peak(team);
        int8_peak = measure_dot_peak(team, false);
        int16_peak = measure_dot_peak(team, true);
        peak = ceiling == CEIL_INT8 ? int8_peak : ceiling == CEIL_INT16 ? int16_peak : fma_peak;
    }

    const char *kernels = kiln_kernels_get()->name;
    if (json) {
        printf("{\"model\": ");
        put_json_str(model_path);
        printf(", \"types\": \"%s\", \"params\": %.0f, \"weight_bytes\": %.0f, \"kernels\": \"%s\", \"threads\": ",
               types, w_params, w_bytes, kernels);
        if (nt) printf("%d", nt);
        else printf("\"default\"");
        if (roofline)
            printf(", \"bandwidth_bytes_per_s\": %.4g, \"weights_bandwidth_bytes_per_s\": %.4g, \"fma_peak_flops\": %.4g, \"int8_peak_ops\": %.4g, "
                   "\"int16_peak_ops\": %.4g, \"pp_ceiling\": \"%s\"",
                   bw, wbw, fma_peak, int8_peak, int16_peak, CEIL_KEY[ceiling]);
        printf(", \"results\": [");
        for (int i = 0; i < n_res; i++) {
            result *r = &res[i];
            printf("%s\n  {\"test\": \"%s\", \"tokens\": %d, \"batch\": %d, \"reps\": %d, \"tps_median\": %.3f, "
                   "\"tps_best\": %.3f, \"secs\": [",
                   i ? "," : "", r->name, r->n_tokens, r->batch, r->n_reps, r->median_tps, r->best_tps);
            for (int k = 0; k < r->n_reps; k++) printf("%s%.9g", k ? ", " : "", r->secs[k]);
            printf("]");
            if (roofline && r->bytes_per_step > 0 && paired_bw_fraction(r) > 0) {
                printf(", \"bytes_per_step\": %.0f, \"bw_fraction_median\": %.6g, \"bw_per_rep\": [",
                       r->bytes_per_step, paired_bw_fraction(r));
                for (int k = 0; k < r->n_reps; k++) printf("%s%.6g", k ? ", " : "", r->bw[k]);
                printf("], \"stolen_per_rep\": [");
                for (int k = 0; k < r->n_reps; k++) printf("%s%.4f", k ? ", " : "", r->stolen[k]);
                printf("]");
            }
            if (roofline && r->flops_per_run > 0 && paired_peak_fraction(r) > 0) {
                printf(", \"flops_per_token\": %.0f, \"peak_fraction_median\": %.6g, \"peak_per_rep\": [",
                       r->flops_per_run / r->n_tokens, paired_peak_fraction(r));
                for (int k = 0; k < r->n_reps; k++) printf("%s%.6g", k ? ", " : "", r->peak[k]);
                printf("]");
            }
            printf("}");
        }
        printf("\n]}\n");
    } else {
        printf("model: %s (%s)\n", model_path, types);
        printf("       %.3g B matmul params, %.1f MiB of weights read per forward\n", w_params / 1e9, w_bytes / 1048576.0);
        printf("kernels: %s, threads: %s", kernels, nt ? "" : "default (physical cores)");
        if (nt) printf("%d", nt);
        printf(", reps: %ld\n", reps);
        if (roofline)
            printf("roofline: read bandwidth %.1f GB/s (1 GiB buffer), %.1f GB/s (the model's weights), %s %.0f %s "
                   "(measured, all threads)\n", bw / 1e9, wbw / 1e9, peak_name, peak / 1e9, peak_unit);
        printf("| test | tok/s median | tok/s best |%s\n", roofline ? " ceiling used (median) |" : "");
        printf("|---|---:|---:|%s\n", roofline ? "---:|" : "");
        for (int i = 0; i < n_res; i++) {
            result *r = &res[i];
            printf("| %s | %.2f | %.2f |", r->name, r->median_tps, r->best_tps);
            if (roofline && r->bytes_per_step > 0 && paired_bw_fraction(r) > 0)
                printf(" %.0f%% of bandwidth (%.1f GB/s of %.1f) |", 100 * paired_bw_fraction(r),
                       r->median_tps / r->batch * r->bytes_per_step / 1e9, median_of(r->bw, r->n_reps) / 1e9);
            else if (roofline && r->flops_per_run > 0 && paired_peak_fraction(r) > 0)
                printf(" %.0f%% of %s (%.0f %s of %.0f) |", 100 * paired_peak_fraction(r), peak_name,
                       r->median_tps * r->flops_per_run / r->n_tokens / 1e9, peak_unit,
                       median_of(r->peak, r->n_reps) / 1e9);
            else if (roofline)
                printf(" - |");
            printf("\n");
        }
    }
    rc = 0;
    goto out;
out_err:
    fprintf(stderr, "kiln bench: %s\n", kiln_errmsg()[0] ? kiln_errmsg() : kiln_err_name(err));
out:
    kiln_free(B.tokens);
    kiln_free(B.logits);
    kiln_free(B.rows);
    for (int s = 0; s < MAX_BATCHES; s++) kiln_free(B.tables[s]);
    kiln_kv_free(B.kv);
    kiln_model_free(B.m);
    bw_buf_free(&bwb);
    return rc;
}
