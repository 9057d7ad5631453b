/* dispatch.c: picks the kernel table once at start-up. Today only the scalar reference exists;
 * per-ISA tables (avx2.c, avx512.c) join the list with their CPU feature checks. KILN_KERNELS
 * forces a table by name. Thread-safe: the choice is made under pthread_once. */
#include "kernels/kernels.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Best first; each entry is usable only when its CPU check passes. */
static const struct {
    const kiln_kernels *table;
    bool (*supported)(void);
} candidates[] = {
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
