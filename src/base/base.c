/* base.c: implementation of base.h (status messages, asserts, allocator with fault injection,
 * byte buffer, logging, clock, RNG, file reading, half-float conversion). libc only. */
#include "base/base.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- status codes ---- */
static const char *const err_names[] = {
    [KILN_OK] = "ok",
    [KILN_ERR_NOMEM] = "nomem",
    [KILN_ERR_IO] = "io",
    [KILN_ERR_FORMAT] = "format",
    [KILN_ERR_INVALID] = "invalid",
    [KILN_ERR_UNSUPPORTED] = "unsupported",
    [KILN_ERR_LIMIT] = "limit",
    [KILN_ERR_FULL] = "full",
    [KILN_ERR_NOT_FOUND] = "not_found",
    [KILN_ERR_CANCELLED] = "cancelled",
    [KILN_ERR_RAISED] = "raised",
};
_Static_assert(KILN_ARRAY_LEN(err_names) == KILN_ERR_COUNT, "err_names must cover kiln_err");

const char *kiln_err_name(kiln_err err) {
    if ((unsigned)err >= KILN_ERR_COUNT) return "unknown";
    return err_names[err];
}

static _Thread_local char err_msg[1024];

kiln_err kiln_errf(kiln_err err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof(err_msg), fmt, ap);
    va_end(ap);
    return err;
}

const char *kiln_errmsg(void) { return err_msg; }
void kiln_err_clear(void) { err_msg[0] = '\0'; }

_Noreturn void kiln_assert_fail(const char *file, int line, const char *cond) {
    fprintf(stderr, "kiln: assertion failed at %s:%d: %s\n", file, line, cond);
    fflush(stderr);
    abort();
}

/* ---- allocation ---- */
static atomic_long alloc_budget = -1; /* < 0: never fail */
static atomic_long alloc_failed = 0;

static bool alloc_should_fail(void) {
    long b = atomic_load_explicit(&alloc_budget, memory_order_relaxed);
    if (b < 0) return false;
    if (b == 0) {
        atomic_fetch_add(&alloc_failed, 1);
        return true;
    }
    atomic_fetch_sub(&alloc_budget, 1);
    return false;
}

void kiln_alloc_fail_after(long n) {
    atomic_store(&alloc_budget, n);
    atomic_store(&alloc_failed, 0);
}

long kiln_alloc_n_failed(void) { return atomic_load(&alloc_failed); }

void *kiln_malloc(size_t n) {
    if (alloc_should_fail()) return NULL;
    return malloc(n ? n : 1);
}

void *kiln_calloc(size_t count, size_t size) {
    if (alloc_should_fail()) return NULL;
    if (count == 0 || size == 0) return calloc(1, 1);
    return calloc(count, size);
}

void *kiln_realloc(void *p, size_t n) {
    if (alloc_should_fail()) return NULL;
    return realloc(p, n ? n : 1);
}

void kiln_free(void *p) { free(p); }

char *kiln_strndup(const char *s, size_t n) {
    char *d = kiln_malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* ---- byte buffer ---- */
void kiln_buf_init(kiln_buf *b) { memset(b, 0, sizeof(*b)); }

void kiln_buf_deinit(kiln_buf *b) {
    kiln_free(b->data);
    memset(b, 0, sizeof(*b));
}

void kiln_buf_reset(kiln_buf *b) {
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

kiln_err kiln_buf_reserve(kiln_buf *b, size_t extra) {
    size_t need;
    if (!kiln_add_size(b->len, extra, &need) || !kiln_add_size(need, 1, &need))
        return kiln_errf(KILN_ERR_NOMEM, "buffer size overflow");
    if (need <= b->cap) return KILN_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *p = kiln_realloc(b->data, cap);
    if (!p) return kiln_errf(KILN_ERR_NOMEM, "out of memory growing a buffer to %zu bytes", cap);
    b->data = p;
    b->cap = cap;
    return KILN_OK;
}

kiln_err kiln_buf_append(kiln_buf *b, const void *p, size_t n) {
    kiln_err err = kiln_buf_reserve(b, n);
    if (err) return err;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return KILN_OK;
}

kiln_err kiln_buf_puts(kiln_buf *b, const char *s) { return kiln_buf_append(b, s, strlen(s)); }
kiln_err kiln_buf_putc(kiln_buf *b, char c) { return kiln_buf_append(b, &c, 1); }

kiln_err kiln_buf_printf(kiln_buf *b, const char *fmt, ...) {
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        va_end(ap2);
        return kiln_errf(KILN_ERR_INVALID, "bad format string");
    }
    kiln_err err = kiln_buf_reserve(b, (size_t)n);
    if (err) {
        va_end(ap2);
        return err;
    }
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    b->len += (size_t)n;
    return KILN_OK;
}

char *kiln_buf_take(kiln_buf *b, size_t *len) {
    char *p = b->data;
    if (len) *len = b->len;
    memset(b, 0, sizeof(*b));
    return p;
}

/* ---- logging ---- */
static atomic_int log_level = KILN_LOG_INFO;

void kiln_log_set_level(kiln_log_level level) { atomic_store(&log_level, (int)level); }

void kiln_log(kiln_log_level level, const char *fmt, ...) {
    static const char *const tags[] = {"debug", "info", "warn", "error"};
    if ((int)level < atomic_load(&log_level)) return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%02d:%02d:%02d.%03ld %s: %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000, tags[level], line);
}

/* ---- clock ---- */
uint64_t kiln_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double kiln_now_s(void) { return (double)kiln_now_ns() * 1e-9; }

/* ---- RNG ---- */
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void kiln_rng_seed(kiln_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t kiln_rng_u64(kiln_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double kiln_rng_uniform(kiln_rng *r) { return (double)(kiln_rng_u64(r) >> 11) * 0x1.0p-53; }

float kiln_rng_normal(kiln_rng *r) {
    double u1 = kiln_rng_uniform(r), u2 = kiln_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* ---- files ---- */
kiln_err kiln_read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return kiln_errf(KILN_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    kiln_buf b;
    kiln_buf_init(&b);
    char chunk[65536];
    size_t n;
    kiln_err err = KILN_OK;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if ((err = kiln_buf_append(&b, chunk, n)) != KILN_OK) break;
    if (!err && ferror(f)) err = kiln_errf(KILN_ERR_IO, "cannot read %s: %s", path, strerror(errno));
    fclose(f);
    if (!err) err = kiln_buf_reserve(&b, 0); /* make sure an empty file still gets storage */
    if (err) {
        kiln_buf_deinit(&b);
        return err;
    }
    *data = kiln_buf_take(&b, len);
    (*data)[*len] = '\0';
    return KILN_OK;
}

/* ---- half floats ---- */
float kiln_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: value = mant * 2^-24 */
            float v = (float)mant * 0x1.0p-24f;
            return sign ? -v : v;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t kiln_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
        return sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0);
    if (absx >= 0x477ff000u) return sign | 0x7c00; /* rounds to >= 65520: overflow to inf */
    if (absx < 0x38800000u) {                      /* below 2^-14: subnormal or zero */
        float a;
        memcpy(&a, &absx, 4);
        /* a * 2^24 rounded to nearest even gives the subnormal mantissa */
        float m = nearbyintf(a * 0x1.0p24f);
        return sign | (uint16_t)m;
    }
    uint32_t mant = absx & 0x7fffff;
    uint32_t exp = (absx >> 23) - 112;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* carries into exponent correctly */
    return sign | (uint16_t)h;
}

float kiln_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t kiln_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); /* quiet nan */
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}
