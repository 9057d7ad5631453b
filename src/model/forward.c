/* forward.c: the batched forward pass. Rows from any number of sequences go through each layer
 * together: projections are one matmul over all rows; each row's K/V is written into its
 * sequence's paged cache slot, then each group of consecutive rows of one sequence attends, per
 * KV head, over positions 0..pos of each row through the block table: the group's rows times the
 * n_head / n_head_kv query heads sharing the KV head (GQA) go through each K/V chunk together.
 * A row's result never depends on the other rows of the batch nor on the grouping (batching
 * invariance, bit for bit). Thread: the engine thread, one call at a time per model; per-row work
 * (norms, RoPE, K/V stores, attention, SiLU) and the matmuls run on the compute team
 * (kernels/pool.h). No allocation once the scratch has grown to the largest batch. */
#include "model/internal.h"

#include "kernels/pool.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

void kiln_scratch_free(kiln_scratch *s) {
    kiln_free(s->x);
    kiln_free(s->xn);
    kiln_free(s->q);
    kiln_free(s->k);
    kiln_free(s->v);
    kiln_free(s->att);
    kiln_free(s->tmp);
    kiln_free(s->gate);
    kiln_free(s->up);
    kiln_free(s->att_grp);
    kiln_free(s->rope_cs);
    memset(s, 0, sizeof(*s));
}

/* Grows the scratch to hold n_rows rows (all buffers or none are replaced). */
static kiln_err scratch_reserve(kiln_model *m, int32_t n_rows) {
    kiln_scratch *s = &m->s;
    if (n_rows <= s->cap_rows) return KILN_OK;
    const kiln_hparams *hp = &m->hp;
    size_t qd = (size_t)hp->n_head * (size_t)hp->head_dim;
    size_t kvd = (size_t)hp->n_head_kv * (size_t)hp->head_dim;
    size_t widths[9] = {(size_t)hp->n_embd, (size_t)hp->n_embd, qd, kvd, kvd, qd,
                        (size_t)hp->n_embd, (size_t)hp->n_ff, (size_t)hp->n_ff};
    kiln_scratch n = {.cap_rows = n_rows};
    float **bufs[9] = {&n.x, &n.xn, &n.q, &n.k, &n.v, &n.att, &n.tmp, &n.gate, &n.up};
    for (int i = 0; i < 9; i++) {
        size_t bytes;
        if (!kiln_mul_size(widths[i], (size_t)n_rows, &bytes) || !kiln_mul_size(bytes, sizeof(float), &bytes) ||
            !(*bufs[i] = kiln_malloc(bytes))) {
            kiln_scratch_free(&n);
            return kiln_errf(KILN_ERR_NOMEM, "forward: cannot grow scratch to %d rows", n_rows);
        }
    }
    size_t cs_bytes; /* n_rot <= head_dim: no overflow past the q buffer's size */
    if (!kiln_mul_size((size_t)KILN_MAX(m->n_rot, 1) * sizeof(float), (size_t)n_rows, &cs_bytes) ||
        !(n.rope_cs = kiln_malloc(cs_bytes)) ||
        !(n.att_grp = kiln_malloc(((size_t)n_rows + 1) * sizeof(int32_t)))) {
        kiln_scratch_free(&n);
        return kiln_errf(KILN_ERR_NOMEM, "forward: cannot grow scratch to %d rows", n_rows);
    }
    kiln_scratch_free(s);
    *s = n;
    return KILN_OK;
}

/* Every check that can fail happens here, before any cache slot is written. */
static kiln_err validate(const kiln_model *m, const kiln_kv *kv, const kiln_batch *b, const float *logits) {
    if (!b) return kiln_errf(KILN_ERR_INVALID, "forward: no batch");
    if (b->n_rows < 0 || (b->n_rows > 0 && !b->rows))
        return kiln_errf(KILN_ERR_INVALID, "forward: bad row count %d", b->n_rows);
    if (b->n_seqs < 0 || (b->n_seqs > 0 && !b->seqs))
        return kiln_errf(KILN_ERR_INVALID, "forward: bad sequence count %d", b->n_seqs);
    if (kv->n_layer != m->hp.n_layer || kv->n_kv_dim != m->hp.n_head_kv * m->hp.head_dim)
        return kiln_errf(KILN_ERR_INVALID, "forward: the KV cache was made for another model");
    for (int32_t s = 0; s < b->n_seqs; s++) {
        const kiln_batch_seq *sq = &b->seqs[s];
        if (sq->n_blocks < 0 || (sq->n_blocks > 0 && !sq->block_table))
            return kiln_errf(KILN_ERR_INVALID, "forward: sequence %d: bad block table", s);
        for (int32_t i = 0; i < sq->n_blocks; i++)
            if (sq->block_table[i] < 0 || sq->block_table[i] >= kv->n_blocks || kv->refcount[sq->block_table[i]] < 1)
                return kiln_errf(KILN_ERR_INVALID, "forward: sequence %d: block table entry %d (%d) is not an allocated block",
                                 s, i, sq->block_table[i]);
    }
    for (int32_t r = 0; r < b->n_rows; r++) {
        const kiln_batch_row *row = &b->rows[r];
        if (row->token < 0 || row->token >= m->hp.n_vocab)
            return kiln_errf(KILN_ERR_INVALID, "forward: row %d: token id %d out of range [0, %d)", r, row->token,
                             m->hp.n_vocab);
        if (row->want_logits && !logits)
            return kiln_errf(KILN_ERR_INVALID, "forward: row %d wants logits but no buffer was given", r);
        if (row->seq < 0 || row->seq >= b->n_seqs)
            return kiln_errf(KILN_ERR_INVALID, "forward: row %d: sequence %d out of range", r, row->seq);
        const kiln_batch_seq *sq = &b->seqs[row->seq];
        if (row->pos < 0 || row->pos / kv->block_size >= sq->n_blocks)
            return kiln_errf(KILN_ERR_INVALID, "forward: row %d: position %d not covered by its block table (%d blocks of %d)",
                             r, row->pos, sq->n_blocks, kv->block_size);
        int32_t blk = sq->block_table[row->pos / kv->block_size];
        if (kv->refcount[blk] != 1)
            return kiln_errf(KILN_ERR_INVALID, "forward: row %d: position %d falls in shared block %d (refcount %d)", r,
                             row->pos, blk, kv->refcount[blk]);
        /* Rows of one sequence come in increasing position order (O(rows) per row scanned
         * backwards to the previous row of the same sequence). */
        for (int32_t p = r - 1; p >= 0; p--) {
            if (b->rows[p].seq != row->seq) continue;
            if (b->rows[p].pos >= row->pos)
                return kiln_errf(KILN_ERR_INVALID, "forward: row %d: position %d does not follow position %d of its sequence",
                                 r, row->pos, b->rows[p].pos);
            break;
        }
    }
    return KILN_OK;
}

/* ys[i] (n_x, ws[i]->n_out) = x (n_x, n_in) @ ws[i]^T for n (<= 4) matrices sharing the input: one
 * packed job when they all have packed copies of one type, else one matmul each. */
/* Attention work (query-key products over the batch) from which the team shares it: below, one
 * thread is cheaper than waking the team (a decode row up to ~64 cached positions at 32 x 64). */
#define ATT_TEAM_WORK ((int64_t)1 << 17)

static void mat_mul_n(const kiln_kernels *k, const kiln_mat *const *ws, float *const *ys, int n, const float *x,
                      int64_t n_x, int nt) {
    bool together = true;
    for (int i = 0; i < n; i++) together = together && ws[i]->packed && ws[i]->type == ws[0]->type;
    if (together) {
        kiln_pmat pm[4];
        KILN_ASSERT(n <= 4);
        for (int i = 0; i < n; i++) pm[i] = (kiln_pmat){ws[i]->packed, ws[i]->n_out, ys[i]};
        k->matmul_packed(ws[0]->type, pm, n, ws[0]->n_in, x, n_x, nt);
        return;
    }
    for (int i = 0; i < n; i++) {
        const kiln_mat *w = ws[i];
        if (w->packed) {
            kiln_pmat pm = {w->packed, w->n_out, ys[i]};
            k->matmul_packed(w->type, &pm, 1, w->n_in, x, n_x, nt);
        } else {
            k->matmul(w->type, w->data, w->row_bytes, w->n_out, w->n_in, x, n_x, ys[i], nt);
        }
    }
}

static void mat_mul(const kiln_kernels *k, const kiln_mat *w, const float *x, int64_t n_x, float *y, int nt) {
    mat_mul_n(k, &w, &y, 1, x, n_x, nt);
}

static void add_bias(float *y, const float *bias, int32_t n_rows, int64_t width) {
    if (!bias) return;
    for (int32_t r = 0; r < n_rows; r++)
        for (int64_t i = 0; i < width; i++) y[r * width + i] += bias[i];
}

/* Positions per attention chunk (a chunk spans up to two cache blocks), and query heads per
 * attn_chunk call. */
#define ATT_CHUNK KILN_ATT_CHUNK
#define ATT_MAX_HEADS KILN_ATT_MAX_Q
/* Floats in each of attend_group's contiguous query and accumulator copies (32 KB on the stack). */
#define ATT_BUF_FLOATS 8192
_Static_assert(ATT_BUF_FLOATS / KILN_MAX_HEAD_DIM >= 1, "one query fits the buffers");

/* Query heads per attn_chunk call for head_dim hd: as many as the buffers hold, up to ATT_MAX_HEADS. */
static int att_max_q(int32_t hd) { return (int)KILN_MIN(ATT_MAX_HEADS, ATT_BUF_FLOATS / hd); }

/* Prefetches (into L2) the K and V rows of positions [p0, p1] of head slice kv_off: a chunk
 * ahead of the one computed (decode reads each layer's cache cold: its attention 0.53 -> 0.44 ms
 * per token at 128 positions, TinyLlama). */
static void prefetch_kv(const kiln_kv *kv, int32_t il, const kiln_batch_seq *sq, int32_t kv_off, int32_t hd,
                        int32_t p0, int32_t p1) {
    const int32_t bs = kv->block_size;
    const size_t stride = (size_t)kv->n_kv_dim;
    for (int32_t p = p0; p <= p1; p++) {
        int32_t blk = sq->block_table[p / bs];
        size_t off = (size_t)(p % bs) * stride + (size_t)kv_off;
        const char *kr = (const char *)(kiln_kv_k(kv, blk, il) + off);
        const char *vr = (const char *)(kiln_kv_v(kv, blk, il) + off);
        for (size_t b = 0; b < (size_t)hd * sizeof(float); b += 64) {
            __builtin_prefetch(kr + b, 0, 2);
            __builtin_prefetch(vr + b, 0, 2);
        }
    }
}

/* What turns a query head from the q projection into the one attention uses: the q norm (qwen3;
 * NULL: none) and RoPE with each row's angles (cs: n_rot floats per row, the group's first row
 * first). */
typedef struct q_prep {
    const float *norm;
    float eps;
    const float *cs;
    int32_t n_rot;
    int rope_type;
} q_prep;

/* Rows rows[0..nr-1] of one sequence (increasing positions), each with the query heads q (ng, hd)
 * at q + r * qd (as projected: qp norms and rotates them) that read the KV head at kv_off, attend
 * over positions 0..pos of their own row: out (ng, hd) at out + r * qd = softmax(q.K^T * scale) . V;
 * nr * ng <= att_max_q(hd). The queries and their accumulators live in contiguous buffers: rows
 * qd floats apart (8 KB in TinyLlama) all fall in the same L1 sets and evicted each other between
 * chunks (pp512 Q4_0 +2-3%); preparing each query as it is copied saves a pass over q (rope
 * 20 -> 10 ms of pp512's 1.05 s). The chunk grid (runs of up to
 * ATT_CHUNK positions over at most two cache blocks, set by the block size alone) is the same for
 * every row, a row takes part in the chunks up to its own
 * position and sees the prefix of its last chunk up to it, and attn_chunk keeps every query's
 * arithmetic its own: a row's output is bit-identical whatever rows share the group. Each K/V
 * chunk is read once for the nr * ng queries. */
static void attend_group(const kiln_kernels *k, const kiln_kv *kv, int32_t il, const kiln_batch_seq *sq,
                         const kiln_batch_row *rows, int nr, const float *q, const q_prep *qp, float *out,
                         size_t qd, int ng, int32_t kv_off, int32_t hd, float scale) {
    KILN_ASSERT(nr >= 1 && ng >= 1 && nr * ng <= att_max_q(hd));
    kiln_attn_q qs[ATT_MAX_HEADS];
    _Alignas(64) float qbuf[ATT_BUF_FLOATS], abuf[ATT_BUF_FLOATS];
    const size_t stride = (size_t)kv->n_kv_dim;
    for (int r = 0; r < nr; r++)
        for (int h = 0; h < ng; h++) {
            size_t i = (size_t)(r * ng + h) * (size_t)hd;
            float *qi = qbuf + i;
            memcpy(qi, q + (size_t)r * qd + (size_t)h * hd, sizeof(float) * (size_t)hd);
            if (qp->norm) k->rmsnorm(qi, qp->norm, hd, qp->eps, qi);
            kiln_rope_apply(qi, 1, hd, qp->n_rot, qp->cs + (size_t)r * (size_t)qp->n_rot, qp->rope_type);
            qs[r * ng + h] = (kiln_attn_q){.q = qbuf + i, .acc = abuf + i, .m = -INFINITY, .l = 0};
        }
    const int32_t pos_max = rows[nr - 1].pos;
    int first = 0; /* rows before it are done: positions increase along the group */
    const int32_t bs = kv->block_size;
    prefetch_kv(kv, il, sq, kv_off, hd, 0, KILN_MIN(pos_max, 2 * ATT_CHUNK - 1));
    for (int32_t p0 = 0, n; p0 <= pos_max; p0 += n) {
        /* the rest of p0's block, and the chunk goes on into the next block while it has room
         * (16-position blocks: chunks of 32, p0 a multiple of 32) */
        int32_t slot0 = p0 % bs, blk = sq->block_table[p0 / bs];
        kiln_attn_kv ch = {.stride = stride};
        ch.n1 = n = KILN_MIN(KILN_MIN(ATT_CHUNK, bs - slot0), pos_max + 1 - p0);
        ch.k = kiln_kv_k(kv, blk, il) + (size_t)slot0 * stride + (size_t)kv_off;
        ch.v = kiln_kv_v(kv, blk, il) + (size_t)slot0 * stride + (size_t)kv_off;
        if (n < ATT_CHUNK && p0 + n <= pos_max) {
            int32_t blk2 = sq->block_table[(p0 + n) / bs];
            n += KILN_MIN(KILN_MIN(ATT_CHUNK - n, bs), pos_max + 1 - (p0 + n));
            ch.k2 = kiln_kv_k(kv, blk2, il) + (size_t)kv_off;
            ch.v2 = kiln_kv_v(kv, blk2, il) + (size_t)kv_off;
        }
        ch.n = n;
        while (rows[first].pos < p0) first++;
        for (int r = first; r < nr; r++) {
            int32_t see = KILN_MIN(n, rows[r].pos + 1 - p0);
            for (int h = 0; h < ng; h++) qs[r * ng + h].n_see = see;
        }
        int32_t pf = p0 + n + ATT_CHUNK; /* the chunk after the next: the next one is on its way */
        if (pf <= pos_max) prefetch_kv(kv, il, sq, kv_off, hd, pf, KILN_MIN(pos_max, pf + ATT_CHUNK - 1));
        k->attn_chunk(qs + first * ng, (nr - first) * ng, &ch, hd, scale);
    }
    for (int i = 0; i < nr * ng; i++) {
        float inv = 1.0f / qs[i].l, *o = out + (size_t)(i / ng) * qd + (size_t)(i % ng) * hd;
        for (int32_t e = 0; e < hd; e++) o[e] = qs[i].acc[e] * inv;
    }
}

/* One layer's per-row work, split over the compute team. */
typedef struct layer_job {
    kiln_model *m;
    kiln_kv *kv;
    const kiln_batch *batch;
    int32_t il;
    int32_t n_grp;         /* attention row groups: rows att_grp[i] .. att_grp[i + 1] - 1 of one sequence */
    _Atomic int64_t next;  /* attention: next (group, KV head) item to take */
} layer_job;

/* The k norm (qwen3), RoPE of K, and the row's K/V into its cache slot, for a share of the rows
 * (the queries are normed and rotated as attend_group copies them). */
static void rope_store_part(void *ctx, int ith, int nth) {
    layer_job *j = ctx;
    const kiln_model *m = j->m;
    const kiln_hparams *hp = &m->hp;
    const kiln_kernels *k = m->k;
    const kiln_scratch *s = &m->s;
    const kiln_layer *ly = &m->layers[j->il];
    const int32_t hd = hp->head_dim, kvd = hp->n_head_kv * hd;
    int64_t lo, hi;
    kiln_pool_range(j->batch->n_rows, ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        const kiln_batch_row *row = &j->batch->rows[r];
        float *kr = s->k + (size_t)r * kvd, *vr = s->v + (size_t)r * kvd;
        if (ly->k_norm)
            for (int32_t h = 0; h < hp->n_head_kv; h++) k->rmsnorm(kr + h * hd, ly->k_norm, hd, hp->norm_eps, kr + h * hd);
        /* The angles depend only on the position: made once per forward (the rope op's values). */
        float *cs = s->rope_cs + (size_t)r * (size_t)m->n_rot;
        if (j->il == 0) kiln_rope_angles(m->n_rot, row->pos, hp->rope_theta, m->freq_factors, cs);
        kiln_rope_apply(kr, hp->n_head_kv, hd, m->n_rot, cs, (int)hp->rope_type);
        const kiln_batch_seq *sq = &j->batch->seqs[row->seq];
        int32_t blk = sq->block_table[row->pos / j->kv->block_size];
        size_t slot = (size_t)(row->pos % j->kv->block_size) * (size_t)kvd;
        memcpy(kiln_kv_k(j->kv, blk, j->il) + slot, kr, (size_t)kvd * sizeof(float));
        memcpy(kiln_kv_v(j->kv, blk, j->il) + slot, vr, (size_t)kvd * sizeof(float));
    }
}

/* Attention for (row group, KV head) items taken one at a time from a shared counter, the
 * groups of the latest rows (the longest contexts) first, so the shares even out at the end. */
static void attend_part(void *ctx, int ith, int nth) {
    layer_job *j = ctx;
    const kiln_model *m = j->m;
    const kiln_hparams *hp = &m->hp;
    const int32_t hd = hp->head_dim, n_head = hp->n_head, qd = n_head * hd, group = n_head / hp->n_head_kv;
    const float scale = 1.0f / sqrtf((float)hd);
    const int max_ng = KILN_MIN(att_max_q(hd), group);
    const int64_t n_items = (int64_t)j->n_grp * hp->n_head_kv;
    for (;;) {
        int64_t it = atomic_fetch_add(&j->next, 1);
        if (it >= n_items) break;
        it = n_items - 1 - it;
        int32_t gi = (int32_t)(it / hp->n_head_kv), g = (int32_t)(it % hp->n_head_kv);
        int32_t r0 = m->s.att_grp[gi], nr = m->s.att_grp[gi + 1] - r0;
        const kiln_batch_row *rows = &j->batch->rows[r0];
        const q_prep qp = {m->layers[j->il].q_norm, hp->norm_eps, m->s.rope_cs + (size_t)r0 * (size_t)m->n_rot,
                           m->n_rot, (int)hp->rope_type};
        for (int32_t h0 = g * group; h0 < (g + 1) * group; h0 += max_ng) {
            int ng = (int)KILN_MIN(max_ng, (g + 1) * group - h0);
            size_t off = (size_t)r0 * qd + (size_t)h0 * hd;
            attend_group(m->k, j->kv, j->il, &j->batch->seqs[rows[0].seq], rows, nr, m->s.q + off, &qp,
                         m->s.att + off, (size_t)qd, ng, g * hd, hd, scale);
        }
    }
}

/* Splits the batch into attention row groups: runs of consecutive rows of one sequence, at most
 * rows_per_grp each. Returns the number of groups (att_grp holds their first rows, then n). */
static int32_t make_groups(const kiln_batch *b, int32_t rows_per_grp, int32_t *att_grp) {
    int32_t n_grp = 0;
    for (int32_t r = 0; r < b->n_rows; r++) {
        bool start = r == 0 || b->rows[r].seq != b->rows[r - 1].seq || r - att_grp[n_grp - 1] >= rows_per_grp;
        if (start) att_grp[n_grp++] = r;
    }
    att_grp[n_grp] = b->n_rows;
    return n_grp;
}

/* Per-row element-wise work between the matmuls, split over the team by rows. */
typedef struct rows_job {
    kiln_model *m;
    int32_t n;             /* rows */
    const float *add;      /* (n, n_embd) added into the residual stream x first, or NULL */
    const float *norm;     /* (n_embd,) RMSNorm weight: xn = rmsnorm(x) * norm; NULL: no norm */
} rows_job;

static void add_norm_part(void *ctx, int ith, int nth) {
    rows_job *j = ctx;
    kiln_model *m = j->m;
    const int64_t d = m->hp.n_embd;
    int64_t lo, hi;
    kiln_pool_range(j->n, ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        float *x = m->s.x + r * d;
        if (j->add)
            for (int64_t i = 0; i < d; i++) x[i] += j->add[r * d + i];
        if (j->norm) m->k->rmsnorm(x, j->norm, d, m->hp.norm_eps, m->s.xn + r * d);
    }
}

static void silu_part(void *ctx, int ith, int nth) {
    rows_job *j = ctx;
    const int64_t f = j->m->hp.n_ff;
    int64_t lo, hi;
    kiln_pool_range(j->n, ith, nth, &lo, &hi);
    j->m->k->silu_mul(j->m->s.gate + lo * f, j->m->s.up + lo * f, (hi - lo) * f);
}

/* The team for per-row element-wise work of `floats` values: the caller alone when waking the
 * others would cost more than it saves (batched decode: tens of microseconds per layer). */
static int rows_team(int nt, int32_t n, int64_t floats) { return n > 1 && floats >= (1 << 17) ? nt : 1; }

kiln_err kiln_model_forward(kiln_model *m, kiln_kv *kv, const kiln_batch *batch, float *logits) {
    kiln_err err;
    if ((err = validate(m, kv, batch, logits))) return err;
    const int32_t n = batch->n_rows;
    if (n == 0) return KILN_OK;
    if ((err = scratch_reserve(m, n))) return err;
    const kiln_hparams *hp = &m->hp;
    const kiln_kernels *k = m->k;
    kiln_scratch *s = &m->s;
    const int nt = m->n_threads;
    const int32_t d = hp->n_embd, hd = hp->head_dim, n_head = hp->n_head;
    const int32_t qd = n_head * hd, kvd = hp->n_head_kv * hd;
    const kiln_batch_row *rows = batch->rows;

    for (int32_t r = 0; r < n; r++)
        kiln_embed_row(k, m->tok_embd.type, m->tok_embd.data, m->tok_embd.row_bytes, rows[r].token, d,
                       s->x + (size_t)r * d);

    const int32_t group = n_head / hp->n_head_kv;
    const int32_t rows_per_grp = KILN_MAX(1, att_max_q(hd) / KILN_MIN(group, att_max_q(hd)));
    const int32_t n_grp = make_groups(batch, rows_per_grp, s->att_grp);
    const int team_d = rows_team(nt, n, (int64_t)n * d), team_ff = rows_team(nt, n, (int64_t)n * hp->n_ff);
    for (int32_t il = 0; il < hp->n_layer; il++) {
        const kiln_layer *ly = &m->layers[il];
        /* attention block (the previous layer's feed-forward output joins the residual here) */
        rows_job an = {m, n, il > 0 ? s->tmp : NULL, ly->attn_norm};
        kiln_pool_run(team_d, add_norm_part, &an);
        const kiln_mat *qkv[] = {&ly->wq, &ly->wk, &ly->wv};
        float *const qkv_out[] = {s->q, s->k, s->v};
        mat_mul_n(k, qkv, qkv_out, 3, s->xn, n, nt);
        add_bias(s->q, ly->bq, n, qd);
        add_bias(s->k, ly->bk, n, kvd);
        add_bias(s->v, ly->bv, n, kvd);
        layer_job job = {m, kv, batch, il, n_grp, 0};
        kiln_pool_run(n > 1 ? nt : 1, rope_store_part, &job);
        /* Every row's K/V is in the cache now; rows of one sequence see each other causally.
         * Short contexts are cheaper on one thread. */
        int64_t work = 0;
        for (int32_t r = 0; r < n && work < ATT_TEAM_WORK; r++) work += (int64_t)(rows[r].pos + 1) * n_head * hd;
        atomic_store(&job.next, 0);
        kiln_pool_run(work >= ATT_TEAM_WORK ? nt : 1, attend_part, &job);
        mat_mul(k, &ly->wo, s->att, n, s->tmp, nt);

        /* feed-forward block (SwiGLU) */
        rows_job fn = {m, n, s->tmp, ly->ffn_norm};
        kiln_pool_run(team_d, add_norm_part, &fn);
        const kiln_mat *gate_up[] = {&ly->w_gate, &ly->w_up};
        float *const gate_up_out[] = {s->gate, s->up};
        mat_mul_n(k, gate_up, gate_up_out, 2, s->xn, n, nt);
        rows_job sj = {m, n, NULL, NULL};
        kiln_pool_run(team_ff, silu_part, &sj);
        mat_mul(k, &ly->w_down, s->gate, n, s->tmp, nt);
    }

    /* The last feed-forward output joins the residual, then the final norm and the output
     * projection, only for the rows that want logits. */
    int32_t n_out = 0;
    for (int32_t r = 0; r < n; r++) {
        if (!rows[r].want_logits) continue;
        float *x = s->x + (size_t)r * d;
        if (hp->n_layer > 0)
            for (int32_t i = 0; i < d; i++) x[i] += s->tmp[(size_t)r * d + i];
        k->rmsnorm(x, m->output_norm, d, hp->norm_eps, s->xn + (size_t)n_out * d);
        n_out++;
    }
    if (n_out > 0) {
        KILN_ASSERT(logits);
        mat_mul(k, &m->output, s->xn, n_out, logits, nt);
    }
    return KILN_OK;
}
