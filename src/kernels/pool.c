/* pool.c: the compute team (pool.h). Workers wait for a new job generation by spinning for up to
 * an adaptive budget (at most KILN_SPIN_US microseconds), then sleeping on a futex; the caller
 * waits for the last member the same way. Job fields are written before the generation is bumped
 * (release) and read after it is seen (acquire); the next job is published only after every
 * worker has finished the previous one.
 * Workers live until the process exits. Linux only (futex). */
#include "kernels/pool.h"

#include "base/base.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 256

static struct {
    pthread_mutex_t lock;      /* held by the caller for a whole job */
    int n_workers;             /* started workers (members 1..n_workers) */
    _Atomic uint32_t gen;      /* job generation; workers' futex word */
    _Atomic uint32_t pending;  /* workers still in the current job; the caller's futex word */
    _Atomic int n_sleeping;    /* workers in (or about to enter) futex_wait on gen */
    _Atomic int caller_sleeping; /* the caller is in (or about to enter) futex_wait on pending */
    kiln_pool_fn fn;           /* the current job */
    void *ctx;
    int nth;
    _Atomic int64_t spin_ns;   /* spin limit of every wait (kiln_pool_set_spin_us) */
    uint32_t start_gen[MAX_THREADS]; /* the generation each worker was started at */
} P = {.lock = PTHREAD_MUTEX_INITIALIZER};

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void futex_wait(_Atomic uint32_t *addr, uint32_t val) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *addr) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void cpu_relax(void) { __builtin_ia32_pause(); }

/* Each thread's current spin budget: it adapts to how long its waits turn out to be. A wait
 * that ends within KILN_SPIN_US (the workers were running, the gaps between ops are short)
 * doubles it up to that limit; a longer one (a member was descheduled on a busy machine, or the
 * engine is idle) halves it, so spinning stops burning cores that another thread needs. */
static _Thread_local int64_t budget_ns = -1;

/* Spins until *addr != val or this thread's budget runs out; returns the last value seen. */
static uint32_t spin_while_eq(_Atomic uint32_t *addr, uint32_t val) {
    uint32_t v = atomic_load_explicit(addr, memory_order_acquire);
    if (budget_ns < 0) budget_ns = P.spin_ns;
    if (v != val || budget_ns <= 0) return v;
    int64_t deadline = now_ns() + budget_ns;
    for (unsigned i = 1;; i++) {
        cpu_relax();
        v = atomic_load_explicit(addr, memory_order_acquire);
        if (v != val) return v;
        if (i % 64 == 0 && now_ns() >= deadline) return v;
    }
}

/* Adapts this thread's budget to a wait of wait_ns. */
static void budget_update(int64_t wait_ns) {
    if (wait_ns <= P.spin_ns) budget_ns = KILN_MIN(P.spin_ns, 2 * budget_ns + 1000);
    else budget_ns /= 2;
}

static void *worker(void *arg) {
    int ith = (int)(intptr_t)arg;
    uint32_t seen = P.start_gen[ith];
    for (;;) {
        int64_t t0 = now_ns();
        uint32_t g = spin_while_eq(&P.gen, seen);
        if (g == seen) {
            atomic_fetch_add(&P.n_sleeping, 1);
            while ((g = atomic_load(&P.gen)) == seen) futex_wait(&P.gen, seen);
            atomic_fetch_sub(&P.n_sleeping, 1);
        }
        budget_update(now_ns() - t0);
        seen = g;
        if (ith < P.nth) P.fn(P.ctx, ith, P.nth);
        /* the last member wakes the caller only if it went to sleep (a wake is a syscall and,
         * in a VM, an inter-processor interrupt); seq_cst on both sides: the caller publishes
         * caller_sleeping before re-reading pending, the worker publishes pending before reading
         * caller_sleeping, so one of them sees the other */
        if (atomic_fetch_sub(&P.pending, 1) == 1 && atomic_load(&P.caller_sleeping)) futex_wake(&P.pending);
    }
    return NULL;
}

static void set_spin_us(int64_t us) {
    if (us < 0) {
        const char *s = getenv("KILN_SPIN_US");
        us = s && *s ? strtol(s, NULL, 10) : 100;
        if (us < 0) us = 0;
    }
    P.spin_ns = (us > 1000000 ? 1000000 : us) * 1000;
}

static void init(void) { set_spin_us(-1); }

void kiln_pool_set_spin_us(int64_t us) {
    pthread_once(&init_once, init);
    pthread_mutex_lock(&P.lock); /* not while a job runs */
    set_spin_us(us);
    pthread_mutex_unlock(&P.lock);
}

int kiln_pool_default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : (int)n;
}

/* Starts workers up to want (called with the lock held); returns the number running. */
static int grow(int want) {
    while (P.n_workers < want) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        /* A new worker waits for the generation after the current one (it may first run after
         * the next job is published). */
        P.start_gen[P.n_workers + 1] = atomic_load(&P.gen);
        int rc = pthread_create(&t, &a, worker, (void *)(intptr_t)(P.n_workers + 1));
        pthread_attr_destroy(&a);
        if (rc != 0) {
            KILN_WARN("compute pool: cannot start worker %d; running with %d", P.n_workers + 1, P.n_workers);
            break;
        }
        P.n_workers++;
    }
    return P.n_workers;
}

void kiln_pool_run(int n_threads, kiln_pool_fn fn, void *ctx) {
    int nth = n_threads > 0 ? n_threads : kiln_pool_default_threads();
    if (nth > MAX_THREADS) nth = MAX_THREADS;
    if (nth == 1 || pthread_mutex_trylock(&P.lock) != 0) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_once(&init_once, init);
    int have = grow(nth - 1);
    if (have == 0) {
        pthread_mutex_unlock(&P.lock);
        fn(ctx, 0, 1);
        return;
    }
    if (nth > have + 1) nth = have + 1;
    P.fn = fn;
    P.ctx = ctx;
    P.nth = nth;
    atomic_store(&P.pending, (uint32_t)have);
    atomic_fetch_add(&P.gen, 1);
    if (atomic_load(&P.n_sleeping) > 0) futex_wake(&P.gen);
    fn(ctx, 0, nth);
    /* wait for pending to reach 0: spin while it keeps its current (non-zero) value, then sleep;
     * a member finishing first leaves it 0 already, and the caller must not spin then */
    uint32_t p;
    int64_t t0 = now_ns();
    while ((p = atomic_load(&P.pending)) != 0) {
        if ((p = spin_while_eq(&P.pending, p)) == 0) break;
        atomic_store(&P.caller_sleeping, 1);
        if (p == atomic_load(&P.pending)) futex_wait(&P.pending, p);
        atomic_store(&P.caller_sleeping, 0);
    }
    budget_update(now_ns() - t0);
    pthread_mutex_unlock(&P.lock);
}

/* ---- per-thread scratch slots (grown on demand, freed at thread exit) ---- */
static pthread_key_t scratch_key[KILN_SCRATCH_SLOTS];
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_key_make(void) {
    for (int i = 0; i < KILN_SCRATCH_SLOTS; i++) KILN_ASSERT(pthread_key_create(&scratch_key[i], free) == 0);
}

typedef struct scratch_hdr {
    size_t cap;                /* bytes usable after the header */
    char pad[56];              /* keeps the data 64-byte aligned */
} scratch_hdr;

void *kiln_pool_scratch(int slot, size_t n) {
    KILN_ASSERT(slot >= 0 && slot < KILN_SCRATCH_SLOTS);
    pthread_once(&scratch_once, scratch_key_make);
    scratch_hdr *h = pthread_getspecific(scratch_key[slot]);
    if (h && h->cap >= n) return h + 1;
    size_t cap = n + n / 4 + 4096;
    cap = (cap + 63) & ~(size_t)63;
    KILN_ASSERT(cap > n);
    free(h);
    h = aligned_alloc(64, sizeof(scratch_hdr) + cap);
    KILN_ASSERT(h);
    h->cap = cap;
    KILN_ASSERT(pthread_setspecific(scratch_key[slot], h) == 0);
    return h + 1;
}
