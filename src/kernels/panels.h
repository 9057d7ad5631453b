/* panels.h: the work sharing of the packed-panel matmuls (avx512.c, avx512_kq.c; internal to the
 * kernels). A job multiplies up to KILN_PANEL_MAX_MATS matrices (kiln_pmat) that share one input of
 * n_x rows; its items are (block of KILN_PANEL_ROW_BLOCK activation rows, matrix, pair of panels of
 * 16 output rows). With raw weights (one matrix, packed a panel at a
 * time into the member's scratch) the rows form one block, so that each panel is packed once.
 * Each member has its own share of the items and takes from it (jobs of one row block, i.e. decode
 * and small batches: guided chunks of at most about KILN_TAKE_BYTES of weights,
 * kiln_pool_take_guided; prefill: one item at a time) through a counter on its own cache line,
 * then helps with the others' shares. One shared counter made every take move a cache line
 * between the cores, and in prefill sent the next-pair prefetch of Q4_0's tile to the other
 * core's L2 half the time. TinyLlama: decode Q4_0 68-70 -> 72-74 tok/s, Q4_K_M 58-61 -> 65-70,
 * Q8_0 +2-4%; pp512 Q4_0 +3-6%, Q4_K_M +7-10%; F16 unchanged. */
#ifndef KILN_PANELS_H
#define KILN_PANELS_H

#include "kernels/kernels.h"
#include "kernels/pool.h"

#define KILN_PANEL_ROWS 16
#define KILN_PANEL_ROW_BLOCK 128
#define KILN_PANEL_MAX_MATS 4
#define KILN_PANEL_SHARES 8

typedef struct kiln_panel_job kiln_panel_job;
/* Multiplies panels [p, p + np) (np 1 or 2; 4 for one row when the job has quads; memory at
 * `panels`) of matrix mi by activation rows [c0, c1) into that matrix's y. */
typedef void (*kiln_panel_run_fn)(const kiln_panel_job *j, int mi, const uint8_t *panels, int64_t p, int np,
                                  int64_t c0, int64_t c1);
/* Packs panel p of the job's raw weights (n_out rows) into dst (pb bytes). */
typedef void (*kiln_panel_pack_fn)(const kiln_panel_job *j, int64_t n_out, int64_t p, uint8_t *dst);

struct kiln_panel_job {
    int n_mats;
    kiln_pmat mats[KILN_PANEL_MAX_MATS];
    int64_t first_pair[KILN_PANEL_MAX_MATS + 1]; /* prefix sums of each matrix's panel pairs */
    int64_t n_x, n_row_blocks;
    size_t pb;                 /* bytes of one panel */
    kiln_panel_run_fn run;
    kiln_panel_pack_fn pack;   /* non-NULL: raw weights (mats[0].packed is NULL), packed on the fly */
    void *ctx;                 /* the kernel's own state: weight type, activations */
    bool quads;                /* run may take np = 4 (two full pairs of one matrix) for one row */
    _Atomic int64_t next;      /* work-sharing counter of teams over KILN_PANEL_SHARES members */
    /* Teams of up to KILN_PANEL_SHARES members: the count taken from member m's own share of the
     * items (kiln_pool_range), on its own cache line. */
    struct {
        _Alignas(64) _Atomic int64_t taken;
    } share[KILN_PANEL_SHARES];
};

/* Sets up j for mats (1..KILN_PANEL_MAX_MATS; raw weights: one matrix and pack non-NULL) times
 * n_x rows of n_in; returns the multiply-adds of the product (the caller sizes the team by it). */
static inline double kiln_panel_job_init(kiln_panel_job *j, const kiln_pmat *mats, int n_mats, int64_t n_in,
                                         int64_t n_x, size_t pb, kiln_panel_run_fn run, kiln_panel_pack_fn pack,
                                         void *ctx) {
    KILN_ASSERT(n_mats >= 1 && n_mats <= KILN_PANEL_MAX_MATS && (!pack || n_mats == 1));
    double work = 0;
    j->n_mats = n_mats;
    j->first_pair[0] = 0;
    for (int i = 0; i < n_mats; i++) {
        KILN_ASSERT(mats[i].n_out > 0 && (pack || ((uintptr_t)mats[i].packed & 63) == 0));
        j->mats[i] = mats[i];
        j->first_pair[i + 1] = j->first_pair[i] + ((mats[i].n_out + KILN_PANEL_ROWS - 1) / KILN_PANEL_ROWS + 1) / 2;
        work += (double)mats[i].n_out * (double)n_in * (double)n_x;
    }
    j->n_x = n_x;
    j->n_row_blocks = pack ? 1 : (n_x + KILN_PANEL_ROW_BLOCK - 1) / KILN_PANEL_ROW_BLOCK;
    j->pb = pb;
    j->run = run;
    j->pack = pack;
    j->ctx = ctx;
    j->quads = false;
    atomic_init(&j->next, 0);
    for (int i = 0; i < KILN_PANEL_SHARES; i++) atomic_init(&j->share[i].taken, 0);
    return work;
}

/* Pair pi (0 .. first_pair[n_mats] - 1) of the job: its matrix, first panel and the matrix's
 * panel count. */
static inline const kiln_pmat *kiln_panel_pair(const kiln_panel_job *j, int64_t pi, int *mi, int64_t *p,
                                               int64_t *n_panels) {
    int m = 0;
    while (pi >= j->first_pair[m + 1]) m++;
    const kiln_pmat *M = &j->mats[m];
    *mi = m;
    *p = (pi - j->first_pair[m]) * 2;
    *n_panels = (M->n_out + KILN_PANEL_ROWS - 1) / KILN_PANEL_ROWS;
    return M;
}

static inline void kiln_panel_item(const kiln_panel_job *j, int64_t it) {
    const int64_t n_pairs = j->first_pair[j->n_mats];
    int64_t rb = it / n_pairs, p, n_panels;
    int mi;
    const kiln_pmat *M = kiln_panel_pair(j, it % n_pairs, &mi, &p, &n_panels);
    int np = (int)KILN_MIN(2, n_panels - p);
    /* raw weights: every row against the panel just packed (one row block of all n_x rows) */
    int64_t c0 = rb * KILN_PANEL_ROW_BLOCK, c1 = j->pack ? j->n_x : KILN_MIN(j->n_x, c0 + KILN_PANEL_ROW_BLOCK);
    const uint8_t *panels;
    if (j->pack) {
        uint8_t *buf = kiln_pool_scratch(KILN_SCRATCH_PANELS, 2 * j->pb);
        for (int i = 0; i < np; i++) j->pack(j, M->n_out, p + i, buf + (size_t)i * j->pb);
        panels = buf;
    } else {
        panels = (const uint8_t *)M->packed + (size_t)p * j->pb;
    }
    j->run(j, mi, panels, p, np, c0, c1);
}

/* Items it and it + 1 as one run of four panels when both are full pairs of one matrix (packed
 * weights, one row block); false when they are not. */
static inline bool kiln_panel_item_quad(const kiln_panel_job *j, int64_t it) {
    if (it + 1 >= j->first_pair[j->n_mats]) return false;
    int64_t p, n_panels;
    int mi;
    const kiln_pmat *M = kiln_panel_pair(j, it, &mi, &p, &n_panels);
    if (p + 4 > n_panels) return false; /* also: it + 1 is not a pair of the same matrix */
    j->run(j, mi, (const uint8_t *)M->packed + (size_t)p * j->pb, p, 4, 0, j->n_x);
    return true;
}

/* Items [lo, hi) of a job (pairs of them as quads when the job has quads). */
static inline void kiln_panel_items(const kiln_panel_job *j, int64_t lo, int64_t hi) {
    for (int64_t it = lo; it < hi; it++) {
        if (j->quads && it + 1 < hi && kiln_panel_item_quad(j, it)) it++;
        else kiln_panel_item(j, it);
    }
}

/* The pool function of a job (kiln_pool_run(nt, kiln_panel_job_part, job)). */
static inline void kiln_panel_job_part(void *ctx, int ith, int nth) {
    kiln_panel_job *j = ctx;
    int64_t lo, hi, n_items = j->n_row_blocks * j->first_pair[j->n_mats];
    /* several row blocks (prefill): one item (a row block against a pair) at a time */
    const int64_t max_chunk = j->n_row_blocks > 1 ? 1 : kiln_pool_chunk_bytes(2 * j->pb);
    if (nth > KILN_PANEL_SHARES) {
        while (kiln_pool_take_guided(&j->next, n_items, nth, max_chunk, &lo, &hi)) kiln_panel_items(j, lo, hi);
        return;
    }
    /* Each member works through its own share first (guided takes from a counter no one else
     * touches until then: no cache line moving between cores per take), then helps with the
     * others' (a member that got its core late finds its share taken by the others). */
    for (int k = 0; k < nth; k++) {
        int m = (ith + k) % nth;
        int64_t s_lo, s_hi;
        kiln_pool_range(n_items, m, nth, &s_lo, &s_hi);
        while (kiln_pool_take_guided(&j->share[m].taken, s_hi - s_lo, 1, max_chunk, &lo, &hi))
            kiln_panel_items(j, s_lo + lo, s_lo + hi);
    }
}

typedef struct kiln_panel_pack_job {
    const kiln_panel_job *pj;  /* pb, pack and ctx of a raw-weight job */
    int64_t n_out;
    uint8_t *dst;
} kiln_panel_pack_job;

static inline void kiln_panel_pack_part(void *ctx, int ith, int nth) {
    const kiln_panel_pack_job *pk = ctx;
    int64_t lo, hi;
    kiln_pool_range((pk->n_out + KILN_PANEL_ROWS - 1) / KILN_PANEL_ROWS, ith, nth, &lo, &hi);
    for (int64_t p = lo; p < hi; p++) pk->pj->pack(pk->pj, pk->n_out, p, pk->dst + (size_t)p * pk->pj->pb);
}

/* Packs every panel of a matrix of n_out rows into dst (64-byte aligned) with pj's pack callback
 * (pj->pb, pj->pack and pj->ctx set; the rest unused), panels split over n_threads members. */
static inline void kiln_panel_pack_all(const kiln_panel_job *pj, int64_t n_out, void *dst, int n_threads) {
    KILN_ASSERT(pj->pack && ((uintptr_t)dst & 63) == 0);
    kiln_panel_pack_job pk = {pj, n_out, dst};
    kiln_pool_run(n_threads, kiln_panel_pack_part, &pk);
}

#endif
