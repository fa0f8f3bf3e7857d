/*
 * test.h - the test harness: self-registering named tests, checks that record file:line and go
 * on, and helpers to find the reference tools (Debian's python3 with torch, node).
 *
 *     TEST(gguf_roundtrip) { CHECK(x == 1); CHECK_CLOSE(a, b, 1e-6); }
 *
 * A test that makes no check and does not SKIP counts as failed: every test must be able to fail.
 */
#ifndef MG_TEST_H
#define MG_TEST_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef void (*test_fn)(void);
void test_register(const char *name, test_fn fn);
void test_check(bool ok, const char *file, int line, const char *expr);
void test_checkf(bool ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void test_skip(const char *why);

#define TEST(name)                                                                                 \
    static void test_##name(void);                                                                 \
    __attribute__((constructor)) static void test_reg_##name(void) {                               \
        test_register(#name, test_##name);                                                         \
    }                                                                                              \
    static void test_##name(void)

#define CHECK(cond) test_check((cond) ? true : false, __FILE__, __LINE__, #cond)
#define CHECK_MSG(cond, ...) test_checkf((cond) ? true : false, __FILE__, __LINE__, __VA_ARGS__)
#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        test_checkf(a_ == b_, __FILE__, __LINE__, "%s == %s (%lld vs %lld)", #a, #b, a_, b_);      \
    } while (0)
#define CHECK_CLOSE(a, b, tol)                                                                     \
    do {                                                                                           \
        double a_ = (double)(a), b_ = (double)(b), t_ = (double)(tol);                             \
        test_checkf(a_ - b_ <= t_ && b_ - a_ <= t_, __FILE__, __LINE__,                            \
                    "%s ~ %s (%.9g vs %.9g, tol %.3g)", #a, #b, a_, b_, t_);                       \
    } while (0)
#define SKIP(...)                                                                                  \
    do {                                                                                           \
        char why_[512];                                                                            \
        snprintf(why_, sizeof why_, __VA_ARGS__);                                                  \
        test_skip(why_);                                                                           \
        return;                                                                                    \
    } while (0)

/* Directory for generated test data (env MG_TESTDATA, default "build/testdata"); created. */
const char *test_data_dir(void);
/* Python interpreter with torch/numpy/PIL (env MG_PYTHON, default /usr/bin/python3). */
const char *test_python(void);
/* Runs a shell command built printf-style; returns its exit status (or -1). Output goes to the
 * test log (stdout). */
int test_run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* True when MG_TEST_QUICK is set (ASan runs): heavy tests shrink or skip. */
bool test_quick(void);
/* Reads a whole file (malloc'd, NUL-appended); *size gets its length. NULL on failure. */
void *test_read_file(const char *path, size_t *size);
/* Reads a .npy file of float32 (little-endian, C order). Returns malloc'd data, shape in shape[]
 * (up to 4 dims), ndim in *ndim. NULL on failure. */
float *test_read_npy_f32(const char *path, int64_t *shape, int *ndim);
/* Path of this test runner (its argv[0]). */
const char *test_runner_path(void);
/* Deterministic random floats: uniform in [-1, 1). */
uint64_t test_rng_next(uint64_t *state);
float test_rng_float(uint64_t *state);

#endif
