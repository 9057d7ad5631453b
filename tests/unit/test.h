/* test.h: the tiny unit-test harness of kiln's tests/unit/test_*.c. A test is a `static void
 * name(void)` run with RUN(name); it passes when none of its CHECKs failed. Every failed CHECK
 * prints file:line and both values. TEST_MAIN's last line is "test_x: N passed, N failed", the
 * form tests/run.sh sums. Header-only; include once per test binary. */
#ifndef KILN_TEST_H
#define KILN_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_n_passed, test_n_failed, test_cur_failed;
static const char *test_cur_name = "";

#define CHECK(c)                                                                               \
    do {                                                                                       \
        if (!(c)) {                                                                            \
            fprintf(stderr, "  FAIL %s (%s:%d): %s\n", test_cur_name, __FILE__, __LINE__, #c);  \
            test_cur_failed++;                                                                 \
        }                                                                                      \
    } while (0)

#define CHECK_MSG(c, ...)                                                                      \
    do {                                                                                       \
        if (!(c)) {                                                                            \
            fprintf(stderr, "  FAIL %s (%s:%d): %s: ", test_cur_name, __FILE__, __LINE__, #c);  \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
            test_cur_failed++;                                                                 \
        }                                                                                      \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                     \
    do {                                                                                       \
        long long va_ = (long long)(a), vb_ = (long long)(b);                                  \
        CHECK_MSG(va_ == vb_, "%s = %lld, %s = %lld", #a, va_, #b, vb_);                       \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                  \
    do {                                                                                       \
        double va_ = (double)(a), vb_ = (double)(b);                                           \
        CHECK_MSG(fabs(va_ - vb_) <= (tol), "%s = %.9g, %s = %.9g (tol %g)", #a, va_, #b, vb_, \
                  (double)(tol));                                                              \
    } while (0)

#define CHECK_STR(a, b)                                                                        \
    do {                                                                                       \
        const char *sa_ = (a), *sb_ = (b);                                                     \
        CHECK_MSG(sa_ && sb_ && strcmp(sa_, sb_) == 0, "%s = \"%s\", %s = \"%s\"", #a,         \
                  sa_ ? sa_ : "(null)", #b, sb_ ? sb_ : "(null)");                             \
    } while (0)

#define RUN(fn)                                                                                \
    do {                                                                                       \
        test_cur_name = #fn;                                                                   \
        test_cur_failed = 0;                                                                   \
        fn();                                                                                  \
        if (test_cur_failed) {                                                                 \
            test_n_failed++;                                                                   \
            fprintf(stderr, "not ok %s\n", #fn);                                               \
        } else {                                                                               \
            test_n_passed++;                                                                   \
        }                                                                                      \
    } while (0)

#define TEST_REPORT(suite)                                                                     \
    (printf("%s: %d passed, %d failed\n", (suite), test_n_passed, test_n_failed),              \
     test_n_failed ? 1 : 0)

/* Directory of the shared test data (../shared/testdata by default; KILN_TESTDATA overrides). */
static inline const char *test_data_dir(void) {
    const char *d = getenv("KILN_TESTDATA");
    return d ? d : "../shared/testdata";
}

#endif
