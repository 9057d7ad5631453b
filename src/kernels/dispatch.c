/* dispatch.c: picks the kernel table once at start-up: avx512 (F/BW/DQ/VL + VNNI + BF16), then
 * avx2 (AVX2 + FMA + F16C), then the scalar reference, each only when the CPU (and OS) support
 * its features. KILN_KERNELS forces a table by name. This file is compiled for baseline x86-64.
 * Thread-safe: the choice is made under pthread_once. */
#include "kernels/kernels.h"

#include <cpuid.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* F16C through CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports has no "f16c". */
bool kiln_cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}

static bool has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && kiln_cpu_has_f16c();
}

static bool has_avx512(void) {
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16");
}

/* Best first; each entry is usable only when its CPU check passes. */
static const struct {
    const kiln_kernels *table;
    bool (*supported)(void);
} candidates[] = {
    {&kiln_kernels_avx512, has_avx512},
    {&kiln_kernels_avx2, has_avx2},
    {&kiln_kernels_ref, NULL},
};

static const kiln_kernels *chosen;
static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;

const kiln_kernels *kiln_kernels_find(const char *name) {
    for (size_t i = 0; i < KILN_ARRAY_LEN(candidates); i++) {
        if (strcmp(candidates[i].table->name, name) != 0) continue;
        if (candidates[i].supported && !candidates[i].supported()) return NULL;
        return candidates[i].table;
    }
    return NULL;
}

static void choose(void) {
    const char *want = getenv("KILN_KERNELS");
    if (want && *want) {
        chosen = kiln_kernels_find(want);
        if (chosen) return;
        KILN_WARN("KILN_KERNELS=%s is not available here; using the best available", want);
    }
    for (size_t i = 0; i < KILN_ARRAY_LEN(candidates); i++) {
        if (candidates[i].supported && !candidates[i].supported()) continue;
        chosen = candidates[i].table;
        return;
    }
}

const kiln_kernels *kiln_kernels_get(void) {
    pthread_once(&chosen_once, choose);
    KILN_ASSERT(chosen);
    return chosen;
}
