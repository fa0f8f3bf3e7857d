/*
 * internal.h - helpers shared by every file of the library: error messages, checked size
 * arithmetic, aligned allocation. Never installed; tools/ and tests/ may include it.
 */
#ifndef MG_INTERNAL_H
#define MG_INTERNAL_H

#include "minigpt.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MG_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MG_MAX(a, b) ((a) > (b) ? (a) : (b))
#define MG_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Writes a printf-style message into err (if err && err_len) and returns st. */
mg_status mg_err(char *err, size_t err_len, mg_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Checked arithmetic: return false on overflow (and leave *out unspecified). */
static inline bool mg_mul_ok(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool mg_add_ok(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* 64-byte aligned allocation (free with mg_free_aligned). Returns NULL on failure or size 0. */
void *mg_malloc_aligned(size_t size);
void mg_free_aligned(void *p);

/* Monotonic time in microseconds. */
int64_t mg_time_us(void);

#endif
