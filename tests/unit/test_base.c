/* test_base.c: base.h helpers: buffer growth and fault injection, error messages, half-float
 * conversions against exact values, RNG determinism, overflow-checked sizes. */
#include "base/base.h"
#include "test.h"

static void buf_grows_and_formats(void) {
    kiln_buf b;
    kiln_buf_init(&b);
    for (int i = 0; i < 1000; i++) CHECK(kiln_buf_printf(&b, "%d,", i) == KILN_OK);
    CHECK(b.len > 3000);
    CHECK(strncmp(b.data, "0,1,2,", 6) == 0);
    CHECK(b.data[b.len] == '\0');
    kiln_buf_deinit(&b);
}

static void buf_fault_injection(void) {
    kiln_buf b;
    kiln_buf_init(&b);
    kiln_alloc_fail_after(0);
    CHECK(kiln_buf_puts(&b, "x") == KILN_ERR_NOMEM);
    CHECK(kiln_alloc_n_failed() == 1);
    kiln_alloc_fail_after(-1);
    CHECK(kiln_buf_puts(&b, "x") == KILN_OK);
    CHECK_STR(b.data, "x");
    kiln_buf_deinit(&b);
}

static void errf_sets_message(void) {
    kiln_err e = kiln_errf(KILN_ERR_FORMAT, "bad %s at %d", "magic", 4);
    CHECK_EQ_INT(e, KILN_ERR_FORMAT);
    CHECK_STR(kiln_errmsg(), "bad magic at 4");
    CHECK_STR(kiln_err_name(KILN_ERR_FULL), "full");
}

static void f16_roundtrip(void) {
    /* exact values: 1.0 = 0x3c00, -2.0 = 0xc000, 65504 = 0x7bff, smallest subnormal 2^-24 = 1 */
    CHECK_EQ_INT(kiln_f32_to_f16(1.0f), 0x3c00);
    CHECK_EQ_INT(kiln_f32_to_f16(-2.0f), 0xc000);
    CHECK_EQ_INT(kiln_f32_to_f16(65504.0f), 0x7bff);
    CHECK_EQ_INT(kiln_f32_to_f16(0x1.0p-24f), 0x0001);
    CHECK_EQ_INT(kiln_f32_to_f16(1e6f), 0x7c00);
    CHECK_EQ_INT(kiln_f32_to_f16(1.0f + 0x1.0p-11f), 0x3c00); /* tie rounds to even */
    CHECK_EQ_INT(kiln_f32_to_f16(1.0f + 0x1.8p-11f), 0x3c01);
    for (unsigned h = 0; h < 0x7c00; h++) { /* every finite positive half round-trips */
        float f = kiln_f16_to_f32((uint16_t)h);
        if (kiln_f32_to_f16(f) != h) {
            CHECK_MSG(0, "half 0x%04x -> %g -> 0x%04x", h, f, kiln_f32_to_f16(f));
            break;
        }
    }
    CHECK_NEAR(kiln_f16_to_f32(0x0001), 0x1.0p-24, 0);
    CHECK_NEAR(kiln_bf16_to_f32(kiln_f32_to_bf16(3.0f)), 3.0, 0);
    CHECK_EQ_INT(kiln_f32_to_bf16(1.0f + 0x1.0p-8f), 0x3f80);   /* tie to even */
    CHECK_EQ_INT(kiln_f32_to_bf16(1.0f + 0x1.8p-8f), 0x3f81);
    CHECK_EQ_INT(kiln_f32_to_bf16(1.0f + 0x1.8p-7f), 0x3f82);   /* odd + half: up to even */
}

static void rng_is_deterministic(void) {
    kiln_rng a, b;
    kiln_rng_seed(&a, 42);
    kiln_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++) CHECK(kiln_rng_u64(&a) == kiln_rng_u64(&b));
    kiln_rng_seed(&b, 43);
    CHECK(kiln_rng_u64(&a) != kiln_rng_u64(&b));
    double sum = 0;
    for (int i = 0; i < 10000; i++) {
        double u = kiln_rng_uniform(&a);
        CHECK(u >= 0 && u < 1);
        sum += u;
    }
    CHECK_NEAR(sum / 10000, 0.5, 0.02);
}

static void size_overflow(void) {
    size_t r;
    CHECK(!kiln_mul_size(SIZE_MAX / 2, 3, &r));
    CHECK(kiln_mul_size(1000, 1000, &r) && r == 1000000);
    CHECK(!kiln_add_size(SIZE_MAX, 1, &r));
}

int main(void) {
    RUN(buf_grows_and_formats);
    RUN(buf_fault_injection);
    RUN(errf_sets_message);
    RUN(f16_roundtrip);
    RUN(rng_is_deterministic);
    RUN(size_overflow);
    return TEST_REPORT("test_base");
}
