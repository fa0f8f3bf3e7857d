/*
 * util.c - status names, error formatting, aligned allocation, clock.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

const char *mg_status_str(mg_status st) {
    switch (st) {
    case MG_OK: return "ok";
    case MG_ERR_IO: return "I/O error";
    case MG_ERR_FORMAT: return "malformed input";
    case MG_ERR_UNSUPPORTED: return "unsupported";
    case MG_ERR_NOMEM: return "out of memory";
    case MG_ERR_INVALID_ARG: return "invalid argument";
    case MG_ERR_CANCELLED: return "cancelled";
    case MG_ERR_CTX_FULL: return "context full";
    case MG_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

mg_status mg_err(char *err, size_t err_len, mg_status st, const char *fmt, ...) {
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return st;
}

void *mg_malloc_aligned(size_t size) {
    if (size == 0) return NULL;
    size_t rounded;
    if (!mg_add_ok(size, 63, &rounded)) return NULL;
    rounded &= ~(size_t)63;
    return aligned_alloc(64, rounded);
}

void mg_free_aligned(void *p) { free(p); }

int64_t mg_time_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
