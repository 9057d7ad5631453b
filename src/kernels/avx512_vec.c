/* avx512_vec.c: the AVX-512 element-wise and attention ops of the forward pass (everything but
 * the matmuls): a polynomial exp (within 2 ulp of expf), SiLU, RMSNorm, softmax, and attn_chunk.
 * attn_chunk transposes the K chunk once per call so that the scores of 8 queries x 16 positions
 * are plain FMAs (a sequential chain over head_dim per score), and weights V rows into 4 queries'
 * accumulators at a time; every query's arithmetic is fixed by itself alone (batching invariance).
 * Reentrant, no heap; about 50 KB of stack per attn_chunk call. */
#include "kernels/isa.h"

#include <immintrin.h>
#include <math.h>

static inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}

/* exp(x): x = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite, ln2 split so n * LN2_HI is exact), a
 * degree-7 Taylor polynomial for exp(r) (truncation < 6e-9 relative), then r * 2^n by scalef,
 * which rounds once and saturates to 0 / +inf. The clamp keeps n in range; NaN passes through
 * (max/min return their second operand when either is NaN). */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

void kiln_avx512_exp(const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, exp512(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

/* g / (1 + exp(-g)) * u, in ref's order of operations. */
void kiln_avx512_silu_mul(float *g, const float *u, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 x = _mm512_maskz_loadu_ps(m, g + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
        __m512 s = _mm512_div_ps(x, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
    }
}

/* The sum of squares in double like ref (four partial sums), then out = x * scale * w. */
void kiln_avx512_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *out) {
    __m512d s[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512d a = _mm512_cvtps_pd(_mm256_loadu_ps(x + i)), b = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8));
        __m512d c = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 16)), d = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 24));
        s[0] = _mm512_fmadd_pd(a, a, s[0]);
        s[1] = _mm512_fmadd_pd(b, b, s[1]);
        s[2] = _mm512_fmadd_pd(c, c, s[2]);
        s[3] = _mm512_fmadd_pd(d, d, s[3]);
    }
    for (; i < n; i += 8) {
        __mmask8 m = n - i >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (n - i)) - 1);
        __m512d a = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, x + i));
        s[0] = _mm512_fmadd_pd(a, a, s[0]);
    }
    double ss = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(s[0], s[1]), _mm512_add_pd(s[2], s[3])));
    __m512 scale = _mm512_set1_ps((float)(1.0 / sqrt(ss / (double)n + eps)));
    for (i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 y = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), scale);
        if (w) y = _mm512_mul_ps(y, _mm512_maskz_loadu_ps(m, w + i));
        _mm512_mask_storeu_ps(out + i, m, y);
    }
}

/* max subtracted, exp, the sum in double like ref, then scaled by its inverse. */
void kiln_avx512_softmax(float *x, int64_t n) {
    if (n <= 0) return;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, x + i));
    }
    __m512 vmx = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmx)));
        _mm512_mask_storeu_ps(x + i, m, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    __m512 inv = _mm512_set1_ps((float)(1.0 / _mm512_reduce_add_pd(_mm512_add_pd(s0, s1))));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
    }
}

/* ---- attention over one K/V chunk ---- */

#define KT_FLOATS 8192 /* transposed K slice (d, npad): head dims per slice = KT_FLOATS / npad */
#define S_TILE 8       /* queries per score tile */
#define V_TILE 4       /* queries per V tile (4 x 64 floats of accumulators in registers) */

/* In place: r[i] (row i, 16 columns) -> r[c] (column c, 16 rows). */
static inline __attribute__((always_inline)) void transpose16(__m512 r[16]) {
    __m512 t[16];
    #pragma GCC unroll 16
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* r[4i + c], 128-bit lane L: column 4L + c of rows 4i..4i+3 */
    #pragma GCC unroll 16
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    #pragma GCC unroll 16
    for (int c = 0; c < 4; c++) {
        __m512 x0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), x1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
        __m512 y0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88), y1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
        t[c] = _mm512_shuffle_f32x4(x0, y0, 0x88);
        t[8 + c] = _mm512_shuffle_f32x4(x0, y0, 0xdd);
        t[4 + c] = _mm512_shuffle_f32x4(x1, y1, 0x88);
        t[12 + c] = _mm512_shuffle_f32x4(x1, y1, 0xdd);
    }
    #pragma GCC unroll 16
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* K rows 0..n-1 of the chunk, columns d0..d0+dn-1 -> kt (dn, npad), positions n..npad-1 zero. */
static void transpose_k(const kiln_attn_kv *ch, int32_t d0, int32_t dn, int npad, float *kt) {
    const int32_t n = ch->n;
    for (int j0 = 0; j0 < npad; j0 += 16) {
        for (int32_t c0 = 0; c0 < dn; c0 += 16) {
            __m512 r[16];
            __mmask16 m = tail_mask(dn - c0);
            #pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                r[i] = j0 + i < n ? _mm512_maskz_loadu_ps(m, kiln_attn_k_row(ch, j0 + i) + d0 + c0) : _mm512_setzero_ps();
            transpose16(r);
            #pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                if (c0 + i < dn) _mm512_store_ps(kt + (size_t)(c0 + i) * npad + j0, r[i]);
        }
    }
}

/* Scores of S_TILE queries (q[t] already offset to the slice) over dn head dims of kt, added to
 * (first: stored to) sc rows of KILN_ATT_CHUNK floats. */
static inline __attribute__((always_inline)) void scores_tile(const float *const q[S_TILE], const float *kt, int nz,
                                                              int32_t dn, bool first, float *const sc[S_TILE]) {
    __m512 a[S_TILE][2];
    #pragma GCC unroll 16
    for (int t = 0; t < S_TILE; t++)
        #pragma GCC unroll 16
        for (int z = 0; z < 2; z++)
            a[t][z] = first || z >= nz ? _mm512_setzero_ps() : _mm512_load_ps(sc[t] + 16 * z);
    const int npad = 16 * nz;
    for (int32_t d = 0; d < dn; d++) {
        __m512 k0 = _mm512_load_ps(kt + (size_t)d * npad);
        __m512 k1 = nz > 1 ? _mm512_load_ps(kt + (size_t)d * npad + 16) : k0;
        #pragma GCC unroll 16
        for (int t = 0; t < S_TILE; t++) {
            __m512 b = _mm512_set1_ps(q[t][d]);
            a[t][0] = _mm512_fmadd_ps(b, k0, a[t][0]);
            if (nz > 1) a[t][1] = _mm512_fmadd_ps(b, k1, a[t][1]);
        }
    }
    #pragma GCC unroll 16
    for (int t = 0; t < S_TILE; t++)
        #pragma GCC unroll 16
        for (int z = 0; z < nz; z++) _mm512_store_ps(sc[t] + 16 * z, a[t][z]);
}

/* acc (hd,) of V_TILE queries = acc * c + sum over i < n_see of p[16 i] * V_i, i in order. */
static void values_tile(kiln_attn_q *const qs[V_TILE], const float *const p[V_TILE], const float c[V_TILE],
                        const kiln_attn_kv *ch, int32_t hd) {
    int32_t n_min = qs[0]->n_see, n_max = qs[0]->n_see, see[V_TILE];
    #pragma GCC unroll 16
    for (int t = 0; t < V_TILE; t++) {
        see[t] = qs[t]->n_see;
        n_min = see[t] < n_min ? see[t] : n_min;
        n_max = see[t] > n_max ? see[t] : n_max;
    }
    for (int32_t c0 = 0; c0 < hd; c0 += 64) {
        __mmask16 m[4];
        __m512 a[V_TILE][4];
        #pragma GCC unroll 16
        for (int z = 0; z < 4; z++) m[z] = tail_mask(hd - c0 - 16 * z);
        #pragma GCC unroll 16
        for (int t = 0; t < V_TILE; t++) {
            __m512 ct = _mm512_set1_ps(c[t]);
            __mmask16 keep = c[t] != 0 ? (__mmask16)0xffff : 0; /* c = 0: acc starts over (maybe garbage) */
            #pragma GCC unroll 16
            for (int z = 0; z < 4; z++)
                a[t][z] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m[z] & keep, qs[t]->acc + c0 + (m[z] ? 16 * z : 0)), ct);
        }
        int32_t i = 0;
        for (; i < n_min; i++) {
            const float *vi = kiln_attn_v_row(ch, i) + c0;
            __m512 x[4];
            #pragma GCC unroll 16
            for (int z = 0; z < 4; z++) x[z] = _mm512_maskz_loadu_ps(m[z], vi + (m[z] ? 16 * z : 0));
            #pragma GCC unroll 16
            for (int t = 0; t < V_TILE; t++) {
                __m512 b = _mm512_set1_ps(p[t][16 * i]);
                #pragma GCC unroll 16
                for (int z = 0; z < 4; z++) a[t][z] = _mm512_fmadd_ps(b, x[z], a[t][z]);
            }
        }
        for (; i < n_max; i++) { /* the diagonal: only the queries that see position i */
            const float *vi = kiln_attn_v_row(ch, i) + c0;
            __m512 x[4];
            #pragma GCC unroll 16
            for (int z = 0; z < 4; z++) x[z] = _mm512_maskz_loadu_ps(m[z], vi + (m[z] ? 16 * z : 0));
            #pragma GCC unroll 16
            for (int t = 0; t < V_TILE; t++) {
                if (i >= see[t]) continue;
                __m512 b = _mm512_set1_ps(p[t][16 * i]);
                #pragma GCC unroll 16
                for (int z = 0; z < 4; z++) a[t][z] = _mm512_fmadd_ps(b, x[z], a[t][z]);
            }
        }
        /* tile slots padded with a copy of an earlier query store the same values again */
        #pragma GCC unroll 16
        for (int t = 0; t < V_TILE; t++)
            #pragma GCC unroll 16
            for (int z = 0; z < 4; z++) _mm512_mask_storeu_ps(qs[t]->acc + c0 + (m[z] ? 16 * z : 0), m[z], a[t][z]);
    }
}

/* The online-softmax update of nt (1..16) queries from their raw scores sc (nt rows): lane t is
 * query t (lanes past nt repeat query 0 and are not written back). pt (KILN_ATT_CHUNK, 16) gets
 * the weights exp(s - m') (0 past n_see), corr the rescale factors c (1 when m is unchanged). */
static void softmax16(kiln_attn_q *qs, int nt, float (*sc)[KILN_ATT_CHUNK], int nz, int32_t n, float scale,
                      float (*pt)[16], float *corr) {
    _Alignas(64) float mo[16], lo[16];
    _Alignas(64) int32_t see[16];
    for (int t = 0; t < 16; t++) {
        const kiln_attn_q *a = &qs[t < nt ? t : 0];
        KILN_ASSERT(a->n_see >= 1 && a->n_see <= n);
        mo[t] = a->m, lo[t] = a->l, see[t] = a->n_see;
    }
    const __m512i vsee = _mm512_load_si512(see);
    const __m512 vscale = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-INFINITY);
    __m512 bm = ninf;
    for (int z = 0; z < nz; z++) {
        __m512 r[16];
        #pragma GCC unroll 16
        for (int t = 0; t < 16; t++) r[t] = _mm512_load_ps(sc[t < nt ? t : 0] + 16 * z);
        transpose16(r);
        #pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            __mmask16 k = _mm512_cmpgt_epi32_mask(vsee, _mm512_set1_epi32(16 * z + i));
            __m512 s = _mm512_mask_mul_ps(ninf, k, r[i], vscale);
            _mm512_store_ps(pt[16 * z + i], s);
            bm = _mm512_max_ps(bm, s);
        }
    }
    const __m512 vmo = _mm512_load_ps(mo);
    const __mmask16 up = _mm512_cmp_ps_mask(bm, vmo, _CMP_GT_OQ);
    const __m512 c = _mm512_mask_blend_ps(up, _mm512_set1_ps(1.0f), exp512(_mm512_sub_ps(vmo, bm))); /* 0 at first */
    const __m512 m = _mm512_mask_blend_ps(up, vmo, bm);
    __m512 sum = _mm512_setzero_ps();
    for (int i = 0; i < 16 * nz; i++) {
        __mmask16 k = _mm512_cmpgt_epi32_mask(vsee, _mm512_set1_epi32(i));
        __m512 p = _mm512_maskz_mov_ps(k, exp512(_mm512_sub_ps(_mm512_load_ps(pt[i]), m)));
        _mm512_store_ps(pt[i], p);
        sum = _mm512_add_ps(sum, p);
    }
    _mm512_store_ps(lo, _mm512_add_ps(_mm512_mul_ps(_mm512_load_ps(lo), c), sum));
    _mm512_store_ps(mo, m);
    _Alignas(64) float co[16];
    _mm512_store_ps(co, c);
    for (int t = 0; t < nt; t++) qs[t].m = mo[t], qs[t].l = lo[t], corr[t] = co[t];
}

void kiln_avx512_attn_chunk(kiln_attn_q *qs, int n_q, const kiln_attn_kv *ch, int32_t hd, float scale) {
    const int32_t n = ch->n;
    KILN_ASSERT(n >= 1 && n <= KILN_ATT_CHUNK && ch->n1 >= 1 && ch->n1 <= n && n_q >= 0 && n_q <= KILN_ATT_MAX_Q &&
                hd >= 1);
    _Static_assert(KILN_ATT_CHUNK <= 32, "scores fit two vectors");
    if (n_q == 0) return;
    _Alignas(64) float kt[KT_FLOATS];
    _Alignas(64) float sc[KILN_ATT_MAX_Q][KILN_ATT_CHUNK]; /* scores, (query, position) */
    _Alignas(64) float pt[KILN_ATT_MAX_Q / 16][KILN_ATT_CHUNK][16]; /* weights, (position, query) */
    float corr[KILN_ATT_MAX_Q];
    const int nz = (n + 15) / 16, npad = 16 * nz;
    const int32_t ds = KT_FLOATS / npad;

    /* Scores: head dims in slices of ds (one slice up to head_dim 256), partial sums kept in sc
     * between slices, so each score is one FMA chain over d = 0..hd-1 whatever the slicing. */
    for (int32_t d0 = 0; d0 < hd; d0 += ds) {
        int32_t dn = hd - d0 < ds ? hd - d0 : ds;
        transpose_k(ch, d0, dn, npad, kt);
        for (int t0 = 0; t0 < n_q; t0 += S_TILE) {
            const float *q[S_TILE];
            float *s[S_TILE];
            for (int t = 0; t < S_TILE; t++) {
                int j = t0 + t < n_q ? t0 + t : t0; /* pad the last tile with its first query */
                q[t] = qs[j].q + d0;
                s[t] = sc[j];
            }
            if (nz == 1) scores_tile(q, kt, 1, dn, d0 == 0, s);
            else scores_tile(q, kt, 2, dn, d0 == 0, s);
        }
    }

    /* Online softmax, 16 queries at a time with one query per lane (scores transposed), so the
     * max and the sum over positions are lane-wise, in position order. */
    for (int t0 = 0; t0 < n_q; t0 += 16)
        softmax16(qs + t0, n_q - t0 < 16 ? n_q - t0 : 16, sc + t0, nz, n, scale, pt[t0 / 16], corr + t0);

    /* Weighted V rows into the accumulators. */
    for (int t0 = 0; t0 < n_q; t0 += V_TILE) {
        kiln_attn_q *q[V_TILE];
        const float *p[V_TILE];
        float c[V_TILE];
        for (int t = 0; t < V_TILE; t++) {
            int j = t0 + t < n_q ? t0 + t : t0;
            q[t] = &qs[j], p[t] = &pt[j / 16][0][j % 16], c[t] = corr[j];
        }
        values_tile(q, p, c, ch, hd);
    }
}
