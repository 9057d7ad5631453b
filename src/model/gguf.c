/* gguf.c: GGUF v2/v3 reader. The whole header is parsed through a bounds-checked cursor before
 * anything is handed out: every length, count, type id, dimension, product and offset is checked
 * against the file size, so a truncated or hostile file yields KILN_ERR_FORMAT, never a read past
 * the mapping. Spec: ggml docs/gguf.md. Runs on the loading thread; the result is read-only. */
#include "model/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_DEFAULT_ALIGNMENT 32

typedef struct dtype_info {
    const char *name;
    uint32_t block_elems;
    uint32_t block_bytes;
} dtype_info;

static const dtype_info dtypes[KILN_DTYPE_COUNT] = {
    [KILN_DTYPE_F32] = {"f32", 1, 4},
    [KILN_DTYPE_F16] = {"f16", 1, 2},
    [KILN_DTYPE_Q4_0] = {"q4_0", 32, 18},
    [KILN_DTYPE_Q4_1] = {"q4_1", 32, 20},
    [KILN_DTYPE_Q5_0] = {"q5_0", 32, 22},
    [KILN_DTYPE_Q5_1] = {"q5_1", 32, 24},
    [KILN_DTYPE_Q8_0] = {"q8_0", 32, 34},
    [KILN_DTYPE_Q8_1] = {"q8_1", 32, 36},
    [KILN_DTYPE_Q2_K] = {"q2_k", 256, 84},
    [KILN_DTYPE_Q3_K] = {"q3_k", 256, 110},
    [KILN_DTYPE_Q4_K] = {"q4_k", 256, 144},
    [KILN_DTYPE_Q5_K] = {"q5_k", 256, 176},
    [KILN_DTYPE_Q6_K] = {"q6_k", 256, 210},
    [KILN_DTYPE_Q8_K] = {"q8_k", 256, 292},
    [KILN_DTYPE_BF16] = {"bf16", 1, 2},
};

bool kiln_dtype_block(kiln_dtype t, size_t *block_elems, size_t *block_bytes) {
    if ((unsigned)t >= KILN_DTYPE_COUNT || !dtypes[t].name) return false;
    if (block_elems) *block_elems = dtypes[t].block_elems;
    if (block_bytes) *block_bytes = dtypes[t].block_bytes;
    return true;
}

const char *kiln_dtype_name(kiln_dtype t) {
    if ((unsigned)t >= KILN_DTYPE_COUNT || !dtypes[t].name) return "unknown";
    return dtypes[t].name;
}

/* Sizes of scalar metadata types; 0 for string/array (variable). */
static const uint8_t scalar_size[KILN_GGUF_TYPE_COUNT] = {
    [KILN_GGUF_UINT8] = 1,  [KILN_GGUF_INT8] = 1,    [KILN_GGUF_UINT16] = 2,
    [KILN_GGUF_INT16] = 2,  [KILN_GGUF_UINT32] = 4,  [KILN_GGUF_INT32] = 4,
    [KILN_GGUF_FLOAT32] = 4, [KILN_GGUF_BOOL] = 1,   [KILN_GGUF_STRING] = 0,
    [KILN_GGUF_ARRAY] = 0,  [KILN_GGUF_UINT64] = 8,  [KILN_GGUF_INT64] = 8,
    [KILN_GGUF_FLOAT64] = 8,
};

/* ---- bounds-checked cursor ---- */
typedef struct cursor {
    const uint8_t *base;
    size_t size;
    size_t pos;
} cursor;

static kiln_err need(cursor *c, uint64_t n, const char *what) {
    if (n > c->size - c->pos)
        return kiln_errf(KILN_ERR_FORMAT, "gguf: truncated reading %s at offset %zu (need %llu bytes, %zu left)",
                         what, c->pos, (unsigned long long)n, c->size - c->pos);
    return KILN_OK;
}

static kiln_err rd_u32(cursor *c, uint32_t *v, const char *what) {
    kiln_err err = need(c, 4, what);
    if (err) return err;
    memcpy(v, c->base + c->pos, 4);
    c->pos += 4;
    return KILN_OK;
}

static kiln_err rd_u64(cursor *c, uint64_t *v, const char *what) {
    kiln_err err = need(c, 8, what);
    if (err) return err;
    memcpy(v, c->base + c->pos, 8);
    c->pos += 8;
    return KILN_OK;
}

/* A string: u64 length (v2 and v3) then the bytes, not NUL-terminated. */
static kiln_err rd_str(cursor *c, kiln_gguf_str *s, const char *what) {
    uint64_t len;
    kiln_err err = rd_u64(c, &len, what);
    if (err) return err;
    if ((err = need(c, len, what))) return err;
    s->p = (const char *)c->base + c->pos;
    s->len = len;
    c->pos += len;
    return KILN_OK;
}

static uint64_t rd_scalar_at(const uint8_t *p, kiln_gguf_type t) {
    uint64_t u = 0;
    switch (t) {
    case KILN_GGUF_UINT8: case KILN_GGUF_BOOL: return p[0];
    case KILN_GGUF_INT8: return (uint64_t)(int64_t)(int8_t)p[0];
    case KILN_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); return x; }
    case KILN_GGUF_INT16: { int16_t x; memcpy(&x, p, 2); return (uint64_t)(int64_t)x; }
    case KILN_GGUF_UINT32: case KILN_GGUF_FLOAT32: { uint32_t x; memcpy(&x, p, 4); return x; }
    case KILN_GGUF_INT32: { int32_t x; memcpy(&x, p, 4); return (uint64_t)(int64_t)x; }
    default: memcpy(&u, p, 8); return u;
    }
}

static double scalar_f64(const uint8_t *p, kiln_gguf_type t) {
    uint64_t raw = rd_scalar_at(p, t);
    switch (t) {
    case KILN_GGUF_FLOAT32: { uint32_t b = (uint32_t)raw; float f; memcpy(&f, &b, 4); return f; }
    case KILN_GGUF_FLOAT64: { double d; memcpy(&d, &raw, 8); return d; }
    case KILN_GGUF_INT8: case KILN_GGUF_INT16: case KILN_GGUF_INT32: case KILN_GGUF_INT64:
        return (double)(int64_t)raw;
    default: return (double)raw;
    }
}

static bool is_valid_type(uint32_t t) { return t < KILN_GGUF_TYPE_COUNT; }

/* Counts string-array elements so one pool can hold them all; arrays of arrays are rejected
 * (no real model uses them and they would allow unbounded nesting). */
static kiln_err parse_value(cursor *c, kiln_gguf_kv *kv, kiln_gguf_type type, uint64_t *n_strs) {
    kiln_err err;
    kv->type = type;
    if (type == KILN_GGUF_STRING) return rd_str(c, &kv->v.str, "string value");
    if (type == KILN_GGUF_ARRAY) {
        uint32_t et;
        uint64_t n;
        if ((err = rd_u32(c, &et, "array type"))) return err;
        if (!is_valid_type(et))
            return kiln_errf(KILN_ERR_FORMAT, "gguf: key '%.*s': bad array element type %u",
                             (int)KILN_MIN(kv->key.len, 200), kv->key.p, et);
        if (et == KILN_GGUF_ARRAY)
            return kiln_errf(KILN_ERR_UNSUPPORTED, "gguf: key '%.*s': nested arrays are not supported",
                             (int)KILN_MIN(kv->key.len, 200), kv->key.p);
        if ((err = rd_u64(c, &n, "array length"))) return err;
        kv->v.arr.type = (kiln_gguf_type)et;
        kv->v.arr.n = n;
        kv->v.arr.data = c->base + c->pos;
        kv->v.arr.strs = NULL;
        if (et == KILN_GGUF_STRING) {
            /* each element needs at least its 8-byte length: bounds n before walking */
            if (n > (c->size - c->pos) / 8)
                return kiln_errf(KILN_ERR_FORMAT, "gguf: key '%.*s': array of %llu strings exceeds the file",
                                 (int)KILN_MIN(kv->key.len, 200), kv->key.p, (unsigned long long)n);
            for (uint64_t i = 0; i < n; i++) {
                kiln_gguf_str s;
                if ((err = rd_str(c, &s, "array string"))) return err;
            }
            *n_strs += n;
            return KILN_OK;
        }
        uint64_t bytes;
        if (__builtin_mul_overflow(n, (uint64_t)scalar_size[et], &bytes))
            return kiln_errf(KILN_ERR_FORMAT, "gguf: array length overflow");
        if ((err = need(c, bytes, "array data"))) return err;
        c->pos += bytes;
        return KILN_OK;
    }
    size_t sz = scalar_size[type];
    if ((err = need(c, sz, "scalar value"))) return err;
    const uint8_t *p = c->base + c->pos;
    c->pos += sz;
    switch (type) {
    case KILN_GGUF_BOOL:
        if (p[0] > 1) return kiln_errf(KILN_ERR_FORMAT, "gguf: bool value %u is not 0 or 1", p[0]);
        kv->v.b = p[0];
        break;
    case KILN_GGUF_FLOAT32: case KILN_GGUF_FLOAT64: kv->v.f64 = scalar_f64(p, type); break;
    case KILN_GGUF_INT8: case KILN_GGUF_INT16: case KILN_GGUF_INT32: case KILN_GGUF_INT64:
        kv->v.i64 = (int64_t)rd_scalar_at(p, type);
        break;
    default: kv->v.u64 = rd_scalar_at(p, type); break;
    }
    return KILN_OK;
}

/* Second pass over string arrays: decode element pointers into the pool. */
static void fill_str_arrays(kiln_gguf *g) {
    kiln_gguf_str *pool = g->str_pool;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        kiln_gguf_kv *kv = &g->kv[i];
        if (kv->type != KILN_GGUF_ARRAY || kv->v.arr.type != KILN_GGUF_STRING) continue;
        cursor c = {g->base, g->size, (size_t)(kv->v.arr.data - g->base)};
        kv->v.arr.strs = pool;
        for (uint64_t j = 0; j < kv->v.arr.n; j++) {
            kiln_err err = rd_str(&c, pool++, "array string");
            KILN_ASSERT(err == KILN_OK); /* validated in the first pass */
        }
    }
}

static kiln_err parse(kiln_gguf *g) {
    cursor c = {g->base, g->size, 0};
    kiln_err err;
    uint32_t magic;
    if ((err = rd_u32(&c, &magic, "magic"))) return err;
    if (magic != GGUF_MAGIC) return kiln_errf(KILN_ERR_FORMAT, "gguf: bad magic 0x%08x (not a GGUF file)", magic);
    if ((err = rd_u32(&c, &g->version, "version"))) return err;
    if (g->version != 2 && g->version != 3)
        return kiln_errf(KILN_ERR_UNSUPPORTED, "gguf: version %u not supported (2 and 3 are)", g->version);
    if ((err = rd_u64(&c, &g->n_tensors, "tensor count"))) return err;
    if ((err = rd_u64(&c, &g->n_kv, "metadata count"))) return err;
    /* every kv needs >= 12 bytes (key length + type), every tensor info >= 28 */
    if (g->n_kv > g->size / 12 || g->n_tensors > g->size / 28)
        return kiln_errf(KILN_ERR_FORMAT, "gguf: counts (%llu kv, %llu tensors) exceed the file size",
                         (unsigned long long)g->n_kv, (unsigned long long)g->n_tensors);
    g->kv = kiln_calloc(g->n_kv ? g->n_kv : 1, sizeof(*g->kv));
    g->tensors = kiln_calloc(g->n_tensors ? g->n_tensors : 1, sizeof(*g->tensors));
    if (!g->kv || !g->tensors) return kiln_errf(KILN_ERR_NOMEM, "gguf: out of memory for the header");

    uint64_t n_strs = 0;
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        kiln_gguf_kv *kv = &g->kv[i];
        uint32_t type;
        if ((err = rd_str(&c, &kv->key, "metadata key"))) return err;
        if ((err = rd_u32(&c, &type, "metadata type"))) return err;
        if (!is_valid_type(type))
            return kiln_errf(KILN_ERR_FORMAT, "gguf: key '%.*s': bad value type %u",
                             (int)KILN_MIN(kv->key.len, 200), kv->key.p, type);
        if ((err = parse_value(&c, kv, (kiln_gguf_type)type, &n_strs))) return err;
        if (kiln_gguf_str_eq(kv->key, "general.alignment")) {
            if (kv->type != KILN_GGUF_UINT32 && kv->type != KILN_GGUF_UINT64)
                return kiln_errf(KILN_ERR_FORMAT, "gguf: general.alignment has the wrong type");
            if (kv->v.u64 == 0 || (kv->v.u64 & (kv->v.u64 - 1)) || kv->v.u64 > 65536)
                return kiln_errf(KILN_ERR_FORMAT, "gguf: general.alignment %llu is not a power of two <= 65536",
                                 (unsigned long long)kv->v.u64);
            g->alignment = kv->v.u64;
        }
    }
    if (n_strs) {
        g->str_pool = kiln_calloc(n_strs, sizeof(*g->str_pool));
        if (!g->str_pool) return kiln_errf(KILN_ERR_NOMEM, "gguf: out of memory for string arrays");
        fill_str_arrays(g);
    }

    for (uint64_t i = 0; i < g->n_tensors; i++) {
        kiln_gguf_tensor *t = &g->tensors[i];
        uint32_t type;
        if ((err = rd_str(&c, &t->name, "tensor name"))) return err;
        if ((err = rd_u32(&c, &t->n_dims, "tensor n_dims"))) return err;
        if (t->n_dims == 0 || t->n_dims > KILN_GGUF_MAX_DIMS)
            return kiln_errf(KILN_ERR_FORMAT, "gguf: tensor '%.*s': %u dims (1..%d allowed)",
                             (int)KILN_MIN(t->name.len, 200), t->name.p, t->n_dims, KILN_GGUF_MAX_DIMS);
        uint64_t n = 1;
        for (uint32_t d = 0; d < KILN_GGUF_MAX_DIMS; d++) {
            t->ne[d] = 1;
            if (d >= t->n_dims) continue;
            if ((err = rd_u64(&c, &t->ne[d], "tensor dim"))) return err;
            if (t->ne[d] == 0 || __builtin_mul_overflow(n, t->ne[d], &n) || n > (1ull << 50))
                return kiln_errf(KILN_ERR_FORMAT, "gguf: tensor '%.*s': bad or overflowing dimensions",
                                 (int)KILN_MIN(t->name.len, 200), t->name.p);
        }
        t->n_elems = n;
        if ((err = rd_u32(&c, &type, "tensor type"))) return err;
        size_t be, bb;
        if (!kiln_dtype_block((kiln_dtype)type, &be, &bb))
            return kiln_errf(KILN_ERR_UNSUPPORTED, "gguf: tensor '%.*s': unknown type id %u",
                             (int)KILN_MIN(t->name.len, 200), t->name.p, type);
        t->type = (kiln_dtype)type;
        if (t->ne[0] % be)
            return kiln_errf(KILN_ERR_FORMAT, "gguf: tensor '%.*s': row of %llu not a multiple of the %s block (%zu)",
                             (int)KILN_MIN(t->name.len, 200), t->name.p, (unsigned long long)t->ne[0],
                             kiln_dtype_name(t->type), be);
        t->n_bytes = n / be * bb; /* n <= 2^50 and bb <= 292: no overflow */
        if ((err = rd_u64(&c, &t->offset, "tensor offset"))) return err;
        if (t->offset % g->alignment)
            return kiln_errf(KILN_ERR_FORMAT, "gguf: tensor '%.*s': offset %llu not aligned to %llu",
                             (int)KILN_MIN(t->name.len, 200), t->name.p, (unsigned long long)t->offset,
                             (unsigned long long)g->alignment);
    }

    size_t data_start = (c.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (data_start > g->size && g->n_tensors)
        return kiln_errf(KILN_ERR_FORMAT, "gguf: data section starts past the end of the file");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        kiln_gguf_tensor *t = &g->tensors[i];
        uint64_t end;
        if (__builtin_add_overflow(t->offset, t->n_bytes, &end) || end > g->size - data_start)
            return kiln_errf(KILN_ERR_FORMAT, "gguf: tensor '%.*s': data [%llu, +%llu) runs past the end of the file",
                             (int)KILN_MIN(t->name.len, 200), t->name.p, (unsigned long long)t->offset,
                             (unsigned long long)t->n_bytes);
        t->data = g->base + data_start + t->offset;
        for (uint64_t j = 0; j < i; j++) /* duplicate names would make lookups ambiguous */
            if (g->tensors[j].name.len == t->name.len && !memcmp(g->tensors[j].name.p, t->name.p, t->name.len))
                return kiln_errf(KILN_ERR_FORMAT, "gguf: duplicate tensor '%.*s'",
                                 (int)KILN_MIN(t->name.len, 200), t->name.p);
    }
    return KILN_OK;
}

static kiln_err open_common(const void *data, size_t size, bool mapped, kiln_gguf **out) {
    kiln_gguf *g = kiln_calloc(1, sizeof(*g));
    if (!g) return kiln_errf(KILN_ERR_NOMEM, "gguf: out of memory");
    g->base = data;
    g->size = size;
    g->mapped = mapped;
    kiln_err err = parse(g);
    if (err) {
        g->mapped = false; /* the caller unmaps on failure */
        kiln_gguf_close(g);
        return err;
    }
    *out = g;
    return KILN_OK;
}

kiln_err kiln_gguf_open_buffer(const void *data, size_t size, kiln_gguf **out) {
    return open_common(data, size, false, out);
}

kiln_err kiln_gguf_open(const char *path, kiln_gguf **out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kiln_errf(KILN_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kiln_errf(KILN_ERR_IO, "%s is not a regular file", path);
    }
    if (st.st_size < 24) {
        close(fd);
        return kiln_errf(KILN_ERR_FORMAT, "%s: too small to be a GGUF file (%lld bytes)", path, (long long)st.st_size);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return kiln_errf(KILN_ERR_IO, "cannot mmap %s: %s", path, strerror(errno));
    kiln_err err = open_common(p, (size_t)st.st_size, true, out);
    if (err) {
        munmap(p, (size_t)st.st_size);
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", kiln_errmsg());
        return kiln_errf(err, "%s: %s", path, msg);
    }
    return KILN_OK;
}

void kiln_gguf_close(kiln_gguf *g) {
    if (!g) return;
    if (g->mapped) munmap((void *)g->base, g->size);
    kiln_free(g->kv);
    kiln_free(g->tensors);
    kiln_free(g->str_pool);
    kiln_free(g);
}

bool kiln_gguf_str_eq(kiln_gguf_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && memcmp(s.p, c, n) == 0;
}

const kiln_gguf_kv *kiln_gguf_find(const kiln_gguf *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (kiln_gguf_str_eq(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

static bool is_int_type(kiln_gguf_type t) {
    return t <= KILN_GGUF_INT32 || t == KILN_GGUF_UINT64 || t == KILN_GGUF_INT64;
}
static bool is_signed_type(kiln_gguf_type t) {
    return t == KILN_GGUF_INT8 || t == KILN_GGUF_INT16 || t == KILN_GGUF_INT32 || t == KILN_GGUF_INT64;
}

static kiln_err find_typed(const kiln_gguf *g, const char *key, const kiln_gguf_kv **kv) {
    *kv = kiln_gguf_find(g, key);
    if (!*kv) return kiln_errf(KILN_ERR_NOT_FOUND, "gguf: key '%s' not found", key);
    return KILN_OK;
}

kiln_err kiln_gguf_get_u64(const kiln_gguf *g, const char *key, uint64_t *out) {
    const kiln_gguf_kv *kv;
    kiln_err err = find_typed(g, key, &kv);
    if (err) return err;
    if (!is_int_type(kv->type) || (is_signed_type(kv->type) && kv->v.i64 < 0))
        return kiln_errf(KILN_ERR_INVALID, "gguf: key '%s' is not a non-negative integer", key);
    *out = kv->v.u64;
    return KILN_OK;
}

kiln_err kiln_gguf_get_i64(const kiln_gguf *g, const char *key, int64_t *out) {
    const kiln_gguf_kv *kv;
    kiln_err err = find_typed(g, key, &kv);
    if (err) return err;
    if (!is_int_type(kv->type) || (kv->type == KILN_GGUF_UINT64 && kv->v.u64 > INT64_MAX))
        return kiln_errf(KILN_ERR_INVALID, "gguf: key '%s' is not an integer in range", key);
    *out = kv->v.i64;
    return KILN_OK;
}

kiln_err kiln_gguf_get_f64(const kiln_gguf *g, const char *key, double *out) {
    const kiln_gguf_kv *kv;
    kiln_err err = find_typed(g, key, &kv);
    if (err) return err;
    if (kv->type != KILN_GGUF_FLOAT32 && kv->type != KILN_GGUF_FLOAT64)
        return kiln_errf(KILN_ERR_INVALID, "gguf: key '%s' is not a float", key);
    *out = kv->v.f64;
    return KILN_OK;
}

kiln_err kiln_gguf_get_bool(const kiln_gguf *g, const char *key, bool *out) {
    const kiln_gguf_kv *kv;
    kiln_err err = find_typed(g, key, &kv);
    if (err) return err;
    if (kv->type != KILN_GGUF_BOOL) return kiln_errf(KILN_ERR_INVALID, "gguf: key '%s' is not a bool", key);
    *out = kv->v.b;
    return KILN_OK;
}

kiln_err kiln_gguf_get_str(const kiln_gguf *g, const char *key, kiln_gguf_str *out) {
    const kiln_gguf_kv *kv;
    kiln_err err = find_typed(g, key, &kv);
    if (err) return err;
    if (kv->type != KILN_GGUF_STRING) return kiln_errf(KILN_ERR_INVALID, "gguf: key '%s' is not a string", key);
    *out = kv->v.str;
    return KILN_OK;
}

kiln_err kiln_gguf_get_arr(const kiln_gguf *g, const char *key, kiln_gguf_type type, const kiln_gguf_kv **out) {
    const kiln_gguf_kv *kv;
    kiln_err err = find_typed(g, key, &kv);
    if (err) return err;
    if (kv->type != KILN_GGUF_ARRAY || kv->v.arr.type != type)
        return kiln_errf(KILN_ERR_INVALID, "gguf: key '%s' is not an array of type %d", key, (int)type);
    *out = kv;
    return KILN_OK;
}

double kiln_gguf_arr_f64(const kiln_gguf_kv *kv, uint64_t i) {
    KILN_ASSERT(kv->type == KILN_GGUF_ARRAY && i < kv->v.arr.n && kv->v.arr.type != KILN_GGUF_STRING);
    return scalar_f64(kv->v.arr.data + i * scalar_size[kv->v.arr.type], kv->v.arr.type);
}

int64_t kiln_gguf_arr_i64(const kiln_gguf_kv *kv, uint64_t i) {
    KILN_ASSERT(kv->type == KILN_GGUF_ARRAY && i < kv->v.arr.n && kv->v.arr.type != KILN_GGUF_STRING);
    kiln_gguf_type t = kv->v.arr.type;
    if (t == KILN_GGUF_FLOAT32 || t == KILN_GGUF_FLOAT64)
        return (int64_t)scalar_f64(kv->v.arr.data + i * scalar_size[t], t);
    return (int64_t)rd_scalar_at(kv->v.arr.data + i * scalar_size[t], t);
}

kiln_gguf_str kiln_gguf_arr_str(const kiln_gguf_kv *kv, uint64_t i) {
    KILN_ASSERT(kv->type == KILN_GGUF_ARRAY && kv->v.arr.type == KILN_GGUF_STRING && i < kv->v.arr.n);
    return kv->v.arr.strs[i];
}

const kiln_gguf_tensor *kiln_gguf_tensor_find(const kiln_gguf *g, const char *name) {
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (kiln_gguf_str_eq(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}
