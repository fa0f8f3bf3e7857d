/*
 * threadpool.h - a persistent pthread pool. Work is split into contiguous static ranges
 * (parts), so results are reproducible for a given thread count; the caller and the workers
 * claim parts from a shared counter, so the caller also runs the parts of a worker that has not
 * woken up yet. Part p is always passed ith = p, and one part runs on one thread at a time.
 * A nested mg_pool_run (from inside a task) runs serially on the calling thread.
 */
#ifndef MG_THREADPOOL_H
#define MG_THREADPOOL_H

#include "internal.h"

typedef struct mg_pool mg_pool;

/* fn processes items [i0, i1); ith is the part index in [0, n_threads) (per-part scratch). */
typedef void (*mg_task_fn)(void *ctx, int64_t i0, int64_t i1, int ith);

mg_status mg_pool_create(mg_pool **out, int n_threads);
void mg_pool_free(mg_pool *pool);
int mg_pool_n_threads(const mg_pool *pool);
/* Splits [0, n) in at most n_threads contiguous ranges of at least min_chunk items and runs them.
 * pool may be NULL (runs serially). Returns when all ranges are done. */
void mg_pool_run(mg_pool *pool, int64_t n, int64_t min_chunk, mg_task_fn fn, void *ctx);

#endif
