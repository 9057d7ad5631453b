/* base.h: libc-only foundations shared by every layer: status codes with a per-thread detail
 * message, always-on asserts, checked size arithmetic, a growable byte buffer, logging, a
 * monotonic clock, a seeded RNG, and an allocator with fault injection for tests.
 * Thread-safety: everything here is safe from any thread; the error detail is thread-local. */
#ifndef KILN_BASE_H
#define KILN_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- status codes (runtime outcomes, tier 2 of STYLE.md) ---- */
typedef enum kiln_err {
    KILN_OK = 0,
    KILN_ERR_NOMEM,       /* an allocation failed */
    KILN_ERR_IO,          /* open/read/mmap/socket failed */
    KILN_ERR_FORMAT,      /* malformed input file or bytes (GGUF, JSON, template syntax) */
    KILN_ERR_INVALID,     /* a value is out of range or of the wrong type */
    KILN_ERR_UNSUPPORTED, /* well-formed but not handled (tensor type, architecture, field) */
    KILN_ERR_LIMIT,       /* a configured limit was hit (size, depth, iterations, context) */
    KILN_ERR_FULL,        /* a pool or queue is exhausted (KV blocks, request queue) */
    KILN_ERR_NOT_FOUND,   /* a key, model, token or file does not exist */
    KILN_ERR_CANCELLED,   /* the request was cancelled (client went away) */
    KILN_ERR_RAISED,      /* a template called raise_exception(); the message is the user's */
    KILN_ERR_COUNT
} kiln_err;

/* Short stable name of a code ("nomem", "format", ...). */
const char *kiln_err_name(kiln_err err);

/* Sets this thread's detail message (printf-style) and returns `err`, so that error sites read
 * `return kiln_errf(KILN_ERR_FORMAT, "tensor %s: offset %llu past end", ...)`. */
kiln_err kiln_errf(kiln_err err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The detail message of this thread's last kiln_errf (empty string if none). */
const char *kiln_errmsg(void);
/* Clears this thread's detail message. */
void kiln_err_clear(void);

/* ---- asserts: bugs, not input errors; on in every build ---- */
#define KILN_ASSERT(c)                                                                         \
    do {                                                                                       \
        if (__builtin_expect(!(c), 0)) kiln_assert_fail(__FILE__, __LINE__, #c);               \
    } while (0)
_Noreturn void kiln_assert_fail(const char *file, int line, const char *cond);

#define KILN_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define KILN_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KILN_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Overflow-checked size arithmetic: return false on overflow, else store the result. */
static inline bool kiln_mul_size(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool kiln_add_size(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* ---- allocation with fault injection ----
 * Parsers and loaders allocate through these so tests can make the n-th call fail
 * (kiln_alloc_fail_after). kiln_free(NULL) is a no-op. */
void *kiln_malloc(size_t n);
void *kiln_calloc(size_t count, size_t size);
void *kiln_realloc(void *p, size_t n);
void kiln_free(void *p);
char *kiln_strndup(const char *s, size_t n);
/* Test hook: after `n` more successful allocations, every allocation fails until reset with
 * n < 0. Process-wide; only for single-threaded tests. */
void kiln_alloc_fail_after(long n);
/* Number of allocations that were made to fail since the last kiln_alloc_fail_after. */
long kiln_alloc_n_failed(void);

/* ---- growable byte buffer (heap, caller-owned struct) ---- */
typedef struct kiln_buf {
    char *data;     /* always NUL-terminated when len > 0 or after any append */
    size_t len;     /* bytes used, excluding the terminating NUL */
    size_t cap;     /* bytes allocated */
} kiln_buf;

void kiln_buf_init(kiln_buf *b);
void kiln_buf_deinit(kiln_buf *b);
void kiln_buf_reset(kiln_buf *b);                 /* len = 0, keeps the storage */
kiln_err kiln_buf_reserve(kiln_buf *b, size_t extra);
kiln_err kiln_buf_append(kiln_buf *b, const void *p, size_t n);
kiln_err kiln_buf_puts(kiln_buf *b, const char *s);
kiln_err kiln_buf_putc(kiln_buf *b, char c);
kiln_err kiln_buf_printf(kiln_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands the storage to the caller (NUL-terminated, possibly NULL if never appended). */
char *kiln_buf_take(kiln_buf *b, size_t *len);

/* ---- logging to stderr ---- */
typedef enum kiln_log_level {
    KILN_LOG_DEBUG,
    KILN_LOG_INFO,
    KILN_LOG_WARN,
    KILN_LOG_ERROR,
} kiln_log_level;
void kiln_log_set_level(kiln_log_level level);
void kiln_log(kiln_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define KILN_DEBUG(...) kiln_log(KILN_LOG_DEBUG, __VA_ARGS__)
#define KILN_INFO(...) kiln_log(KILN_LOG_INFO, __VA_ARGS__)
#define KILN_WARN(...) kiln_log(KILN_LOG_WARN, __VA_ARGS__)
#define KILN_ERROR(...) kiln_log(KILN_LOG_ERROR, __VA_ARGS__)

/* ---- clock ---- */
uint64_t kiln_now_ns(void);   /* CLOCK_MONOTONIC */
double kiln_now_s(void);

/* ---- RNG: xoshiro256** seeded with splitmix64; deterministic for a given seed ---- */
typedef struct kiln_rng {
    uint64_t s[4];
} kiln_rng;
void kiln_rng_seed(kiln_rng *r, uint64_t seed);
uint64_t kiln_rng_u64(kiln_rng *r);
double kiln_rng_uniform(kiln_rng *r);  /* [0, 1) with 53 bits */
float kiln_rng_normal(kiln_rng *r);    /* standard normal (Box-Muller) */

/* ---- files ---- */
/* Reads a whole file into a NUL-terminated heap buffer (kiln_free). */
kiln_err kiln_read_file(const char *path, char **data, size_t *len);

/* ---- half-precision conversions (exact, round-to-nearest-even on narrowing) ---- */
float kiln_f16_to_f32(uint16_t h);
uint16_t kiln_f32_to_f16(float f);
float kiln_bf16_to_f32(uint16_t h);
uint16_t kiln_f32_to_bf16(float f);

#endif
