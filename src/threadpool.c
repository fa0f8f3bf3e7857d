/*
 * threadpool.c - a persistent pthread pool. mg_pool_run publishes a job (function, context,
 * item count, number of parts) under a generation counter; the caller runs part 0 itself and
 * workers 1.. run the others. Idle workers spin briefly on the generation counter (so the
 * back-to-back matmuls of a decode step do not pay a futex wake-up each) and then sleep on a
 * condition variable, so an idle pool burns no CPU. Parts are contiguous static ranges, so a
 * given thread count always gives the same split. A run from inside a task is serial.
 */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* Spin iterations before sleeping (each one pause, tens of ns): about 50-100 microseconds. */
#define SPIN_ITERS 4000

struct mg_pool {
    int n_threads;
    pthread_t *threads;
    int n_started;

    pthread_mutex_t mu;
    pthread_cond_t cv_work;  /* workers wait for a new generation */
    pthread_cond_t cv_done;  /* the caller waits for the last part */
    pthread_mutex_t run_mu;  /* one run at a time from concurrent callers */

    atomic_uint_fast64_t generation;
    atomic_int pending; /* workers that have not yet finished the current generation */
    atomic_bool stop;
    int sleepers_done;  /* caller is sleeping on cv_done */

    /* current job, written before generation is bumped */
    mg_task_fn fn;
    void *ctx;
    int64_t n;
    int n_parts;
};

typedef struct {
    mg_pool *pool;
    int ith;
} worker_arg;

static _Thread_local int tl_in_task;

static void part_range(int64_t n, int parts, int i, int64_t *i0, int64_t *i1) {
    *i0 = (int64_t)((__int128)n * i / parts);
    *i1 = (int64_t)((__int128)n * (i + 1) / parts);
}

static void run_part(mg_pool *p, int ith) {
    int64_t i0, i1;
    part_range(p->n, p->n_parts, ith, &i0, &i1);
    if (i1 > i0) p->fn(p->ctx, i0, i1, ith);
}

static void *worker_main(void *argp) {
    worker_arg wa = *(worker_arg *)argp;
    free(argp);
    mg_pool *p = wa.pool;
    tl_in_task = 1; /* anything a worker runs is inside a task */
    uint64_t seen = 0;
    for (;;) {
        uint64_t g = atomic_load_explicit(&p->generation, memory_order_acquire);
        for (int s = 0; g == seen && s < SPIN_ITERS && !atomic_load(&p->stop); s++) {
            CPU_RELAX();
            g = atomic_load_explicit(&p->generation, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv_work, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) break;
        seen = g;
        /* Every worker acknowledges every generation (even with no part), so none can lag
         * behind into the next job's fields. */
        if (wa.ith < p->n_parts) run_part(p, wa.ith);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            if (p->sleepers_done) pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

/* Creates a pool of n_threads workers in all (the caller counts as one; n_threads <= 0 means 1). */
mg_status mg_pool_create(mg_pool **out, int n_threads) {
    if (!out) return MG_ERR_INVALID_ARG;
    *out = NULL;
    if (n_threads <= 0) n_threads = 1;
    if (n_threads > 1024) return MG_ERR_INVALID_ARG;
    mg_pool *p = calloc(1, sizeof *p);
    if (!p) return MG_ERR_NOMEM;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->run_mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    atomic_init(&p->generation, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, false);
    if (n_threads > 1) {
        p->threads = calloc((size_t)n_threads, sizeof *p->threads);
        if (!p->threads) {
            mg_pool_free(p);
            return MG_ERR_NOMEM;
        }
        for (int i = 1; i < n_threads; i++) {
            worker_arg *wa = malloc(sizeof *wa);
            if (!wa) {
                mg_pool_free(p);
                return MG_ERR_NOMEM;
            }
            wa->pool = p;
            wa->ith = i;
            if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
                free(wa);
                mg_pool_free(p);
                return MG_ERR_INTERNAL;
            }
            p->n_started = i;
        }
    }
    *out = p;
    return MG_OK;
}

/* Stops and joins the workers and frees the pool (NULL is fine). */
void mg_pool_free(mg_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->mu);
    atomic_store(&pool->stop, true);
    pthread_cond_broadcast(&pool->cv_work);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 1; i <= pool->n_started; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->mu);
    pthread_mutex_destroy(&pool->run_mu);
    pthread_cond_destroy(&pool->cv_work);
    pthread_cond_destroy(&pool->cv_done);
    free(pool->threads);
    free(pool);
}

/* Number of threads (the caller included); 1 for a NULL pool. */
int mg_pool_n_threads(const mg_pool *pool) { return pool ? pool->n_threads : 1; }

/* Runs fn over [0, n) split into contiguous parts, one per worker, the caller taking part 0. */
void mg_pool_run(mg_pool *pool, int64_t n, int64_t min_chunk, mg_task_fn fn, void *ctx) {
    if (n <= 0 || !fn) return;
    if (min_chunk < 1) min_chunk = 1;
    int64_t parts = n / min_chunk;
    if (parts < 1) parts = 1;
    if (!pool || pool->n_threads == 1 || parts == 1 || tl_in_task) {
        int was = tl_in_task;
        tl_in_task = 1;
        fn(ctx, 0, n, 0);
        tl_in_task = was;
        return;
    }
    if (parts > pool->n_threads) parts = pool->n_threads;

    pthread_mutex_lock(&pool->run_mu);
    pool->fn = fn;
    pool->ctx = ctx;
    pool->n = n;
    pool->n_parts = (int)parts;
    atomic_store(&pool->pending, pool->n_threads - 1);
    pthread_mutex_lock(&pool->mu);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->cv_work);
    pthread_mutex_unlock(&pool->mu);

    tl_in_task = 1;
    run_part(pool, 0);
    tl_in_task = 0;

    for (int s = 0; s < SPIN_ITERS && atomic_load_explicit(&pool->pending, memory_order_acquire);
         s++)
        CPU_RELAX();
    if (atomic_load_explicit(&pool->pending, memory_order_acquire)) {
        pthread_mutex_lock(&pool->mu);
        pool->sleepers_done = 1;
        while (atomic_load(&pool->pending)) pthread_cond_wait(&pool->cv_done, &pool->mu);
        pool->sleepers_done = 0;
        pthread_mutex_unlock(&pool->mu);
    }
    pthread_mutex_unlock(&pool->run_mu);
}
