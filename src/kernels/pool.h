/* pool.h: the compute team that runs the kernels' parallel loops (replaces OpenMP there). One
 * process-wide set of worker threads, created on first use and grown to the largest team asked
 * for; the calling thread is member 0. Idle workers spin briefly (a per-thread budget that adapts
 * to the waits seen, at most KILN_SPIN_US, default 30 us) and then sleep on a futex, so a core
 * held by another process or by the server's own threads is given up quickly instead of being
 * burned in a barrier (libgomp's default behaviour).
 * Thread-safe: one job at a time; a caller that finds the team busy (another thread's job, or a
 * nested call from inside a job) runs its job alone, which gives the same results. */
#ifndef KILN_POOL_H
#define KILN_POOL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One member's share: called with ith in [0, nth). */
typedef void (*kiln_pool_fn)(void *ctx, int ith, int nth);

/* Runs fn(ctx, ith, nth) for every ith in [0, nth) with nth = n_threads (<= 0: the number of
 * online CPUs; capped at 256), the caller running ith 0, and returns when all have returned. If
 * worker threads cannot be created, or the team is busy, fewer members (down to the caller alone)
 * run: fn must split its work by (ith, nth) only. Never fails. */
void kiln_pool_run(int n_threads, kiln_pool_fn fn, void *ctx);

/* The team size kiln_pool_run uses for n_threads <= 0. */
int kiln_pool_default_threads(void);

/* Sets the spin limit of every wait (KILN_SPIN_US's role; us < 0: back to KILN_SPIN_US, or 100).
 * Each thread's budget adapts up to it over the next waits. For tests and tuning. */
void kiln_pool_set_spin_us(int64_t us);

/* [*lo, *hi): member ith's contiguous share of n items split as evenly as possible. */
static inline void kiln_pool_range(int64_t n, int ith, int nth, int64_t *lo, int64_t *hi) {
    int64_t q = n / nth, r = n % nth;
    *lo = (int64_t)ith * q + (ith < r ? ith : r);
    *hi = *lo + q + (ith < r ? 1 : 0);
}

/* Dynamic sharing inside a job: takes the next chunk [*lo, *hi) of items [0, n) from a counter
 * shared by the members (zeroed before kiln_pool_run); false when none is left. Members that
 * get a core late simply find less work, so a job does not wait for a descheduled member's
 * fixed share. */
static inline bool kiln_pool_take(_Atomic int64_t *next, int64_t n, int64_t chunk, int64_t *lo, int64_t *hi) {
    int64_t i = atomic_fetch_add_explicit(next, chunk, memory_order_relaxed);
    if (i >= n) return false;
    *lo = i;
    *hi = i + chunk < n ? i + chunk : n;
    return true;
}

/* A chunk size giving each of nth members about 4 chunks of n items. */
static inline int64_t kiln_pool_chunk(int64_t n, int nth) {
    int64_t c = n / ((int64_t)nth * 4);
    return c > 0 ? c : 1;
}

/* Per-thread scratch slots: quantized activations (made by the calling thread before a job) and
 * packed weight panels (made by each member inside a job). */
enum { KILN_SCRATCH_ACT = 0, KILN_SCRATCH_PANELS = 1, KILN_SCRATCH_SLOTS = 2 };

/* Weight bytes per take of a streaming (matrix-vector) job at most: each take is still a long
 * sequential read. */
#define KILN_TAKE_BYTES ((size_t)256 << 10)

/* Guided sharing for streaming jobs: like kiln_pool_take, but each take is a share of what is
 * left (remaining / (2 nth) items), at most max_chunk and at least 1, so takes shrink as the job
 * runs out and members finish within about one item of each other instead of one large chunk. */
static inline bool kiln_pool_take_guided(_Atomic int64_t *next, int64_t n, int nth, int64_t max_chunk, int64_t *lo,
                                         int64_t *hi) {
    int64_t i = atomic_load_explicit(next, memory_order_relaxed), c;
    do {
        if (i >= n) return false;
        c = (n - i) / (2 * (int64_t)nth);
        c = c < 1 ? 1 : c > max_chunk ? max_chunk : c;
    } while (!atomic_compare_exchange_weak_explicit(next, &i, i + c, memory_order_relaxed, memory_order_relaxed));
    *lo = i;
    *hi = i + c;
    return true;
}

/* The largest take of a streaming job over items of item_bytes: about KILN_TAKE_BYTES. */
static inline int64_t kiln_pool_chunk_bytes(size_t item_bytes) {
    int64_t b = item_bytes > 0 ? (int64_t)(KILN_TAKE_BYTES / item_bytes) : 1;
    return b < 1 ? 1 : b;
}

/* Per-thread scratch slots buffer of at least n bytes in the given slot (grown on demand,
 * freed at thread exit), valid until this thread's next call for the same slot; shared by the
 * per-ISA kernel tables. Aborts when the allocation fails (matmul has no error path; the sizes
 * are those of the activations and of two weight panels). */
void *kiln_pool_scratch(int slot, size_t n);

#endif
