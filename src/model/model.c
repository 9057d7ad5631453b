/* model.c: loads a GGUF model: architecture hyperparameters from `<arch>.*` metadata, every tensor
 * bound by its llama.cpp name with its expected shape and a supported type (errors name the file
 * and the tensor), RoPE frequency factors (rope_freqs.weight, Llama 3.1; linear scaling).
 * Architectures: llama (interleaved "normal" RoPE: llama.cpp's converter permutes Q/K), qwen2
 * (+ QKV bias, NEOX RoPE), qwen3 (+ per-head Q/K RMSNorm, NEOX RoPE). Runs on the loading thread;
 * the result is read-only except for the forward scratch (internal.h). */
#include "model/internal.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

static const char *const arch_names[KILN_ARCH_COUNT] = {
    [KILN_ARCH_LLAMA] = "llama",
    [KILN_ARCH_QWEN2] = "qwen2",
    [KILN_ARCH_QWEN3] = "qwen3",
};
_Static_assert(KILN_ARCH_COUNT == 3, "arch_names covers every architecture");
_Static_assert((int)KILN_WTYPE_F32 == (int)KILN_DTYPE_F32 && (int)KILN_WTYPE_F16 == (int)KILN_DTYPE_F16 &&
                   (int)KILN_WTYPE_Q4_0 == (int)KILN_DTYPE_Q4_0 &&
                   (int)KILN_WTYPE_Q8_0 == (int)KILN_DTYPE_Q8_0 &&
                   (int)KILN_WTYPE_Q4_1 == (int)KILN_DTYPE_Q4_1 && (int)KILN_WTYPE_Q5_0 == (int)KILN_DTYPE_Q5_0 &&
                   (int)KILN_WTYPE_Q4_K == (int)KILN_DTYPE_Q4_K && (int)KILN_WTYPE_Q5_K == (int)KILN_DTYPE_Q5_K &&
                   (int)KILN_WTYPE_Q6_K == (int)KILN_DTYPE_Q6_K &&
                   (int)KILN_WTYPE_BF16 == (int)KILN_DTYPE_BF16,
               "kernel weight types use the ggml numbering");
_Static_assert((int)KILN_ROPE_NORM == KILN_KROPE_NORM && (int)KILN_ROPE_NEOX == KILN_KROPE_NEOX,
               "rope types agree");

/* Loading context: the file name for messages and the arch prefix for keys. */
typedef struct loader {
    const char *path;
    const kiln_gguf *g;
    const char *arch;
} loader;

/* Reads integer key "<arch>.<suffix>" into *out within [lo, hi]; absent: *out = dflt unless
 * dflt < 0 (required). */
static kiln_err get_int(const loader *L, const char *suffix, int64_t dflt, int64_t lo, int64_t hi,
                        int32_t *out) {
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", L->arch, suffix);
    int64_t v;
    kiln_err err = kiln_gguf_get_i64(L->g, key, &v);
    if (err == KILN_ERR_NOT_FOUND) {
        if (dflt < 0) return kiln_errf(KILN_ERR_FORMAT, "%s: missing metadata key %s", L->path, key);
        v = dflt;
    } else if (err) {
        return kiln_errf(KILN_ERR_FORMAT, "%s: metadata key %s is not an integer", L->path, key);
    }
    if (v < lo || v > hi)
        return kiln_errf(KILN_ERR_FORMAT, "%s: metadata %s = %lld is out of range [%lld, %lld]", L->path,
                         key, (long long)v, (long long)lo, (long long)hi);
    *out = (int32_t)v;
    return KILN_OK;
}

/* Float key "<arch>.<suffix>" (float32/64, or an integer) in (lo, hi]; absent: dflt (NAN =
 * required). */
static kiln_err get_float(const loader *L, const char *suffix, double dflt, double lo, double hi,
                          float *out) {
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", L->arch, suffix);
    double v;
    int64_t iv;
    kiln_err err = kiln_gguf_get_f64(L->g, key, &v);
    if (err == KILN_ERR_INVALID && kiln_gguf_get_i64(L->g, key, &iv) == KILN_OK) {
        v = (double)iv;
        err = KILN_OK;
    }
    if (err == KILN_ERR_NOT_FOUND) {
        if (isnan(dflt)) return kiln_errf(KILN_ERR_FORMAT, "%s: missing metadata key %s", L->path, key);
        v = dflt;
    } else if (err) {
        return kiln_errf(KILN_ERR_FORMAT, "%s: metadata key %s is not a number", L->path, key);
    }
    if (!(v > lo && v <= hi))
        return kiln_errf(KILN_ERR_FORMAT, "%s: metadata %s = %g is out of range (%g, %g]", L->path, key, v,
                         lo, hi);
    *out = (float)v;
    return KILN_OK;
}

static void shape_str(const kiln_gguf_tensor *t, char *buf, size_t n) {
    int w = snprintf(buf, n, "[%llu", (unsigned long long)t->ne[0]);
    for (uint32_t d = 1; d < t->n_dims && w > 0 && (size_t)w < n; d++)
        w += snprintf(buf + w, n - (size_t)w, ", %llu", (unsigned long long)t->ne[d]);
    if (w > 0 && (size_t)w < n) snprintf(buf + w, n - (size_t)w, "]");
}

/* Finds tensor `name` and checks it is (n_out, n_in) (GGUF ne = [n_in, n_out]; n_out 0 = a
 * vector of n_in) of a supported type. Absent and optional: *found = false, KILN_OK. */
static kiln_err find_tensor(const loader *L, const char *name, int64_t n_in, int64_t n_out,
                            bool required, const kiln_gguf_tensor **out) {
    const kiln_gguf_tensor *t = kiln_gguf_tensor_find(L->g, name);
    *out = NULL;
    if (!t) {
        if (!required) return KILN_OK;
        return kiln_errf(KILN_ERR_FORMAT, "%s: missing tensor %s", L->path, name);
    }
    uint64_t want[KILN_GGUF_MAX_DIMS] = {(uint64_t)n_in, n_out ? (uint64_t)n_out : 1, 1, 1};
    bool ok = t->n_dims >= 1 && t->n_dims <= KILN_GGUF_MAX_DIMS;
    for (uint32_t d = 0; ok && d < KILN_GGUF_MAX_DIMS; d++)
        ok = (d < t->n_dims ? t->ne[d] : 1) == want[d];
    if (!ok) {
        char got[96];
        shape_str(t, got, sizeof(got));
        if (n_out)
            return kiln_errf(KILN_ERR_FORMAT, "%s: tensor %s has shape %s, expected [%lld, %lld]", L->path,
                             name, got, (long long)n_in, (long long)n_out);
        return kiln_errf(KILN_ERR_FORMAT, "%s: tensor %s has shape %s, expected [%lld]", L->path, name, got,
                         (long long)n_in);
    }
    size_t be, bb;
    if (!kiln_wtype_block((kiln_wtype)t->type, &be, &bb))
        return kiln_errf(KILN_ERR_UNSUPPORTED,
                         "%s: tensor %s has type %s (supported: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q4_k, q5_k, q6_k)",
                         L->path, name, kiln_dtype_name(t->type));
    if ((uint64_t)n_in % be != 0)
        return kiln_errf(KILN_ERR_FORMAT, "%s: tensor %s: row of %lld is not a multiple of the %s block",
                         L->path, name, (long long)n_in, kiln_dtype_name(t->type));
    size_t row_bytes = (size_t)n_in / be * bb, total;
    if (!kiln_mul_size(row_bytes, n_out ? (size_t)n_out : 1, &total) || total != t->n_bytes || !t->data)
        return kiln_errf(KILN_ERR_FORMAT, "%s: tensor %s: %llu data bytes, expected %zu", L->path, name,
                         (unsigned long long)t->n_bytes, total);
    *out = t;
    return KILN_OK;
}

static kiln_err bind_mat(const loader *L, const char *name, int64_t n_out, int64_t n_in, bool required,
                         kiln_mat *m) {
    const kiln_gguf_tensor *t;
    memset(m, 0, sizeof(*m));
    kiln_err err = find_tensor(L, name, n_in, n_out, required, &t);
    if (err || !t) return err;
    m->data = t->data;
    m->type = (kiln_wtype)t->type;
    m->n_out = n_out;
    m->n_in = n_in;
    m->row_bytes = kiln_wtype_row_bytes(m->type, n_in);
    return KILN_OK;
}

/* A vector (n,) converted to an owned f32 array (*out NULL when optional and absent). */
static kiln_err bind_vec(const loader *L, const char *name, int64_t n, bool required, float **out) {
    const kiln_gguf_tensor *t;
    *out = NULL;
    kiln_err err = find_tensor(L, name, n, 0, required, &t);
    if (err || !t) return err;
    float *v = kiln_malloc((size_t)n * sizeof(float));
    if (!v) return kiln_errf(KILN_ERR_NOMEM, "%s: out of memory for tensor %s", L->path, name);
    kiln_kernels_ref.dequant_row((kiln_wtype)t->type, t->data, v, n);
    *out = v;
    return KILN_OK;
}

static kiln_err read_hparams(const loader *L, kiln_hparams *hp, int32_t *n_rot) {
    kiln_err err;
    const int64_t big = 1 << 20;
    if ((err = get_int(L, "embedding_length", -1, 1, big, &hp->n_embd)) ||
        (err = get_int(L, "block_count", -1, 1, 4096, &hp->n_layer)) ||
        (err = get_int(L, "feed_forward_length", -1, 1, big, &hp->n_ff)) ||
        (err = get_int(L, "attention.head_count", -1, 1, 4096, &hp->n_head)) ||
        (err = get_int(L, "attention.head_count_kv", hp->n_head, 1, hp->n_head, &hp->n_head_kv)) ||
        (err = get_int(L, "context_length", 2048, 1, INT32_MAX, &hp->n_ctx_train)))
        return err;
    if (hp->n_head % hp->n_head_kv != 0)
        return kiln_errf(KILN_ERR_FORMAT, "%s: %s.attention.head_count %d is not a multiple of head_count_kv %d",
                         L->path, L->arch, hp->n_head, hp->n_head_kv);
    int64_t dflt_hd = hp->n_embd % hp->n_head == 0 ? hp->n_embd / hp->n_head : -1;
    char key[128];
    snprintf(key, sizeof(key), "%s.attention.key_length", L->arch);
    if (dflt_hd < 0 && !kiln_gguf_find(L->g, key))
        return kiln_errf(KILN_ERR_FORMAT, "%s: %s.embedding_length %d is not a multiple of head_count %d (and %s is absent)",
                         L->path, L->arch, hp->n_embd, hp->n_head, key);
    if ((err = get_int(L, "attention.key_length", dflt_hd, 2, KILN_MAX_HEAD_DIM, &hp->head_dim))) return err;
    int32_t vlen;
    if ((err = get_int(L, "attention.value_length", hp->head_dim, 1, KILN_MAX_HEAD_DIM, &vlen))) return err;
    if (vlen != hp->head_dim)
        return kiln_errf(KILN_ERR_UNSUPPORTED, "%s: %s.attention.value_length %d differs from key_length %d",
                         L->path, L->arch, vlen, hp->head_dim);
    if ((int64_t)hp->n_head * hp->head_dim > big)
        return kiln_errf(KILN_ERR_FORMAT, "%s: %d heads of %d dims is too large", L->path, hp->n_head,
                         hp->head_dim);
    if ((err = get_int(L, "rope.dimension_count", hp->head_dim, 2, hp->head_dim, n_rot))) return err;
    if (*n_rot % 2)
        return kiln_errf(KILN_ERR_FORMAT, "%s: %s.rope.dimension_count %d is odd", L->path, L->arch, *n_rot);
    if ((err = get_float(L, "attention.layer_norm_rms_epsilon", 1e-5, 0, 1, &hp->norm_eps)) ||
        (err = get_float(L, "rope.freq_base", 10000.0, 0, 1e12, &hp->rope_theta)))
        return err;
    hp->rope_type = hp->arch == KILN_ARCH_LLAMA ? KILN_ROPE_NORM : KILN_ROPE_NEOX;
    return KILN_OK;
}

/* RoPE frequency divisors: rope_freqs.weight (what llama.cpp's converter writes for Llama 3.1),
 * else computed from rope.scaling.* "llama3" keys when present, times the linear factor. */
static kiln_err read_rope_scaling(const loader *L, kiln_model *m) {
    kiln_hparams *hp = &m->hp;
    int64_t half = m->n_rot / 2;
    kiln_err err;
    char key[128];
    kiln_gguf_str type = {"", 0};
    snprintf(key, sizeof(key), "%s.rope.scaling.type", L->arch);
    err = kiln_gguf_get_str(L->g, key, &type);
    if (err && err != KILN_ERR_NOT_FOUND)
        return kiln_errf(KILN_ERR_FORMAT, "%s: metadata %s is not a string", L->path, key);
    bool linear = kiln_gguf_str_eq(type, "linear");
    bool llama3 = kiln_gguf_str_eq(type, "llama3");
    if (type.len && !linear && !llama3 && !kiln_gguf_str_eq(type, "none"))
        return kiln_errf(KILN_ERR_UNSUPPORTED, "%s: rope scaling type '%.*s' is not supported", L->path,
                         (int)type.len, type.p);
    if (linear || llama3) {
        if ((err = get_float(L, "rope.scaling.factor", NAN, 0, 1e6, &hp->rope_scale_factor))) return err;
    }
    if ((err = bind_vec(L, "rope_freqs.weight", half, false, &m->freq_factors))) return err;
    if (m->freq_factors) {
        for (int64_t i = 0; i < half; i++)
            if (!(m->freq_factors[i] > 0) || !isfinite(m->freq_factors[i]))
                return kiln_errf(KILN_ERR_FORMAT, "%s: rope_freqs.weight[%lld] = %g is not positive", L->path,
                                 (long long)i, m->freq_factors[i]);
    } else if (llama3) {
        if ((err = get_float(L, "rope.scaling.low_freq_factor", 1.0, 0, 1e6, &hp->rope_low_freq_factor)) ||
            (err = get_float(L, "rope.scaling.high_freq_factor", 4.0, 0, 1e6, &hp->rope_high_freq_factor)) ||
            (err = get_int(L, "rope.scaling.original_context_length", 8192, 1, INT32_MAX, &hp->rope_orig_ctx)))
            return err;
        if (hp->rope_high_freq_factor <= hp->rope_low_freq_factor)
            return kiln_errf(KILN_ERR_FORMAT, "%s: rope scaling high_freq_factor <= low_freq_factor", L->path);
        m->freq_factors = kiln_malloc((size_t)half * sizeof(float));
        if (!m->freq_factors) return kiln_errf(KILN_ERR_NOMEM, "%s: out of memory", L->path);
        double low_wl = hp->rope_orig_ctx / hp->rope_low_freq_factor;
        double high_wl = hp->rope_orig_ctx / hp->rope_high_freq_factor;
        for (int64_t i = 0; i < half; i++) {
            double freq = pow(hp->rope_theta, -2.0 * (double)i / m->n_rot);
            double wl = 2 * M_PI / freq, f;
            if (wl < high_wl) {
                f = 1;
            } else if (wl > low_wl) {
                f = hp->rope_scale_factor;
            } else {
                double smooth = (hp->rope_orig_ctx / wl - hp->rope_low_freq_factor) /
                                (hp->rope_high_freq_factor - hp->rope_low_freq_factor);
                f = 1.0 / ((1 - smooth) / hp->rope_scale_factor + smooth);
            }
            m->freq_factors[i] = (float)f;
        }
    }
    if (linear) {
        if (!m->freq_factors) {
            m->freq_factors = kiln_malloc((size_t)half * sizeof(float));
            if (!m->freq_factors) return kiln_errf(KILN_ERR_NOMEM, "%s: out of memory", L->path);
            for (int64_t i = 0; i < half; i++) m->freq_factors[i] = 1;
        }
        for (int64_t i = 0; i < half; i++) m->freq_factors[i] *= hp->rope_scale_factor;
    }
    return KILN_OK;
}

static kiln_err bind_layer(const loader *L, const kiln_model *m, int32_t il, kiln_layer *ly) {
    const kiln_hparams *hp = &m->hp;
    int64_t d = hp->n_embd, qd = (int64_t)hp->n_head * hp->head_dim;
    int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    bool qwen2 = hp->arch == KILN_ARCH_QWEN2, qwen3 = hp->arch == KILN_ARCH_QWEN3;
    char n[96];
    kiln_err err;
#define NAME(s) (snprintf(n, sizeof(n), "blk.%d." s, (int)il), n)
    if ((err = bind_vec(L, NAME("attn_norm.weight"), d, true, &ly->attn_norm)) ||
        (err = bind_mat(L, NAME("attn_q.weight"), qd, d, true, &ly->wq)) ||
        (err = bind_mat(L, NAME("attn_k.weight"), kvd, d, true, &ly->wk)) ||
        (err = bind_mat(L, NAME("attn_v.weight"), kvd, d, true, &ly->wv)) ||
        (err = bind_mat(L, NAME("attn_output.weight"), d, qd, true, &ly->wo)) ||
        (err = bind_vec(L, NAME("ffn_norm.weight"), d, true, &ly->ffn_norm)) ||
        (err = bind_mat(L, NAME("ffn_gate.weight"), hp->n_ff, d, true, &ly->w_gate)) ||
        (err = bind_mat(L, NAME("ffn_up.weight"), hp->n_ff, d, true, &ly->w_up)) ||
        (err = bind_mat(L, NAME("ffn_down.weight"), d, hp->n_ff, true, &ly->w_down)))
        return err;
    /* qwen2 requires the biases; llama tolerates them (some llama-arch models carry them). */
    if ((err = bind_vec(L, NAME("attn_q.bias"), qd, qwen2, &ly->bq)) ||
        (err = bind_vec(L, NAME("attn_k.bias"), kvd, qwen2, &ly->bk)) ||
        (err = bind_vec(L, NAME("attn_v.bias"), kvd, qwen2, &ly->bv)))
        return err;
    if (qwen3 && ((err = bind_vec(L, NAME("attn_q_norm.weight"), hp->head_dim, true, &ly->q_norm)) ||
                  (err = bind_vec(L, NAME("attn_k_norm.weight"), hp->head_dim, true, &ly->k_norm))))
        return err;
#undef NAME
    return KILN_OK;
}

/* Physical cores from /proc/cpuinfo ((physical id, core id) pairs), else the logical count. */
static int default_threads(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    int n_logical = omp_get_num_procs();
    if (!f) return n_logical;
    char line[256];
    int phys = -1, ids[1024], n_ids = 0;
    while (fgets(line, sizeof(line), f)) {
        int v;
        if (sscanf(line, "physical id : %d", &v) == 1) phys = v;
        if (sscanf(line, "core id : %d", &v) == 1 && phys >= 0) {
            int key = phys * 65536 + v;
            bool seen = false;
            for (int i = 0; i < n_ids; i++) seen = seen || ids[i] == key;
            if (!seen && n_ids < (int)KILN_ARRAY_LEN(ids)) ids[n_ids++] = key;
        }
    }
    fclose(f);
    return n_ids > 0 && n_ids <= n_logical ? n_ids : n_logical;
}

/* Bytes of the kernel table's packed copy of w (0: the table has no layout for it). */
static size_t pack_size(const kiln_model *m, const kiln_mat *w) {
    const kiln_kernels *k = m->k;
    return k->pack_bytes && w->data ? k->pack_bytes(w->type, w->n_out, w->n_in) : 0;
}

/* The matrices that go through a matmul, in packing order (n_layer * 7 + 1 of them). */
static kiln_mat *matmul_weight(kiln_model *m, int64_t i) {
    if (i == 0) return &m->output;
    kiln_layer *ly = &m->layers[(i - 1) / 7];
    kiln_mat *mats[] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up, &ly->w_down};
    return mats[(i - 1) % 7];
}

#define PACK_ALIGN ((size_t)2 << 20) /* huge-page size: the packed weights are one THP-backed block */

/* Packs every matrix that goes through a matmul into one allocation (the embedding table is read
 * by rows and stays in the mapping; a tied output gets its own packed copy). The block is
 * 2 MiB aligned and advised for transparent huge pages: decode streams all of it every token,
 * and huge pages cut its TLB misses. The mapping's pages of packed matrices are not read again:
 * the resident copy is the packed one. */
static kiln_err pack_model(kiln_model *m, const char *path) {
    const int64_t n_mats = (int64_t)m->hp.n_layer * 7 + 1;
    size_t total = 0;
    for (int64_t i = 0; i < n_mats; i++) {
        size_t n = pack_size(m, matmul_weight(m, i));
        if (n > SIZE_MAX - total - 64) return kiln_errf(KILN_ERR_NOMEM, "%s: packed weights overflow size_t", path);
        total += (n + 63) & ~(size_t)63;
    }
    if (total == 0) return KILN_OK;
    if (total > SIZE_MAX - PACK_ALIGN || !(m->pack_mem = kiln_malloc(total + PACK_ALIGN)))
        return kiln_errf(KILN_ERR_NOMEM, "%s: out of memory for the packed weights (%zu bytes)", path, total);
    uint8_t *base = (uint8_t *)(((uintptr_t)m->pack_mem + PACK_ALIGN - 1) & ~(uintptr_t)(PACK_ALIGN - 1));
#ifdef MADV_HUGEPAGE
    (void)madvise(base, total, MADV_HUGEPAGE); /* a hint: without THP, ordinary pages */
#endif
    size_t off = 0;
    for (int64_t i = 0; i < n_mats; i++) {
        kiln_mat *w = matmul_weight(m, i);
        size_t n = pack_size(m, w);
        if (n == 0) continue;
        m->k->pack(w->type, w->data, w->row_bytes, w->n_out, w->n_in, base + off, m->n_threads);
        w->packed = base + off;
        off += (n + 63) & ~(size_t)63;
    }
    m->pack_base = base;
    m->pack_total = total;
    return KILN_OK;
}

kiln_err kiln_model_load(const char *path, const kiln_model_opts *opts, kiln_model **out) {
    kiln_err err;
    *out = NULL;
    kiln_model *m = kiln_calloc(1, sizeof(*m));
    if (!m) return kiln_errf(KILN_ERR_NOMEM, "%s: out of memory", path);
    if ((err = kiln_gguf_open(path, &m->gguf))) {
        /* The reader's message names the file already when it could open it. */
        if (!strstr(kiln_errmsg(), path)) {
            char msg[512];
            snprintf(msg, sizeof(msg), "%s", kiln_errmsg());
            err = kiln_errf(err, "%s: %s", path, msg);
        }
        goto out_free;
    }
    loader L = {.path = path, .g = m->gguf};
    kiln_gguf_str arch;
    if (kiln_gguf_get_str(m->gguf, "general.architecture", &arch)) {
        err = kiln_errf(KILN_ERR_FORMAT, "%s: missing metadata key general.architecture", path);
        goto out_free;
    }
    int a = 0;
    while (a < KILN_ARCH_COUNT && !kiln_gguf_str_eq(arch, arch_names[a])) a++;
    if (a == KILN_ARCH_COUNT) {
        err = kiln_errf(KILN_ERR_UNSUPPORTED, "%s: architecture '%.*s' is not supported (llama, qwen2, qwen3)",
                        path, (int)KILN_MIN(arch.len, 64), arch.p);
        goto out_free;
    }
    m->hp.arch = (kiln_arch)a;
    L.arch = arch_names[a];
    if ((err = read_hparams(&L, &m->hp, &m->n_rot))) goto out_free;
    kiln_hparams *hp = &m->hp;

    const kiln_gguf_tensor *te = kiln_gguf_tensor_find(m->gguf, "token_embd.weight");
    if (!te) {
        err = kiln_errf(KILN_ERR_FORMAT, "%s: missing tensor token_embd.weight", path);
        goto out_free;
    }
    if (te->n_dims != 2 || te->ne[1] < 1 || te->ne[1] > INT32_MAX) {
        err = kiln_errf(KILN_ERR_FORMAT, "%s: tensor token_embd.weight is not a (n_vocab, %d) matrix", path,
                        hp->n_embd);
        goto out_free;
    }
    hp->n_vocab = (int32_t)te->ne[1];
    if ((err = bind_mat(&L, "token_embd.weight", hp->n_vocab, hp->n_embd, true, &m->tok_embd)) ||
        (err = bind_vec(&L, "output_norm.weight", hp->n_embd, true, &m->output_norm)) ||
        (err = bind_mat(&L, "output.weight", hp->n_vocab, hp->n_embd, false, &m->output)))
        goto out_free;
    hp->tied_output = m->output.data == NULL;
    if (hp->tied_output) m->output = m->tok_embd;
    if ((err = read_rope_scaling(&L, m))) goto out_free;

    m->layers = kiln_calloc((size_t)hp->n_layer, sizeof(*m->layers));
    if (!m->layers) {
        err = kiln_errf(KILN_ERR_NOMEM, "%s: out of memory", path);
        goto out_free;
    }
    for (int32_t il = 0; il < hp->n_layer; il++)
        if ((err = bind_layer(&L, m, il, &m->layers[il]))) goto out_free;

    m->n_threads = opts && opts->n_threads > 0 ? opts->n_threads : default_threads();
    m->k = kiln_kernels_get();
    if ((err = pack_model(m, path))) goto out_free;
    *out = m;
    return KILN_OK;
out_free:
    kiln_model_free(m);
    return err;
}

void kiln_model_free(kiln_model *m) {
    if (!m) return;
    if (m->layers) {
        for (int32_t il = 0; il < m->hp.n_layer; il++) {
            kiln_layer *ly = &m->layers[il];
            kiln_free(ly->attn_norm);
            kiln_free(ly->ffn_norm);
            kiln_free(ly->bq);
            kiln_free(ly->bk);
            kiln_free(ly->bv);
            kiln_free(ly->q_norm);
            kiln_free(ly->k_norm);
        }
        kiln_free(m->layers);
    }
    kiln_free(m->pack_mem);
    kiln_free(m->output_norm);
    kiln_free(m->freq_factors);
    kiln_scratch_free(&m->s);
    kiln_gguf_close(m->gguf);
    kiln_free(m);
}

const kiln_hparams *kiln_model_hparams(const kiln_model *m) { return &m->hp; }

const kiln_gguf *kiln_model_gguf(const kiln_model *m) { return m->gguf; }

void kiln_model_weight_memory(const kiln_model *m, const void **base, size_t *bytes) {
    if (m->pack_base) {
        *base = m->pack_base;
        *bytes = m->pack_total;
    } else {
        *base = m->gguf->base;
        *bytes = m->gguf->size;
    }
}
