/*
 * threadpool.c - a persistent pthread pool. mg_pool_run publishes a job (function, context,
 * item count, number of parts) under a generation counter; the caller and the workers then
 * claim parts one at a time from a shared claim word, so the caller also runs the parts of a
 * worker that has not started yet (one that lost its core to another process) instead of
 * waiting for it, and returns as soon as every part is done. Part p always covers the same
 * contiguous static range and is passed ith = p, so a given thread count always gives the same
 * split and each ith runs on one thread at a time. Idle workers spin briefly on the generation
 * counter (so the back-to-back matmuls of a decode step do not pay a futex wake-up each) and
 * then sleep on a condition variable, so an idle pool burns no CPU. A run from inside a task
 * is serial.
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

    atomic_uint_fast64_t generation; /* bumped once per run, by the caller only */
    /* (generation & 0xffffffff) << 32 | n_parts << 16 | next unclaimed part: a part is claimed
     * by a CAS that also checks the generation, so a worker that wakes up late can never take
     * a part of a later run than the one it saw, and reads the job fields only after a claim
     * (the caller publishes the next job only when every part of this one is done). */
    _Atomic uint64_t claim;
    atomic_int done;       /* parts finished in the current run */
    atomic_int n_sleeping; /* workers blocked (or about to block) on cv_work */
    atomic_bool stop;
    int sleepers_done;     /* caller is sleeping on cv_done (under mu) */

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

/* Claims and runs parts of run `gen` until none is left (or a later run has been published). */
static void claim_parts(mg_pool *p, uint32_t gen) {
    uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
    for (;;) {
        const int np = (int)(c >> 16 & 0xffff), next = (int)(c & 0xffff);
        if ((uint32_t)(c >> 32) != gen || next >= np) return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        run_part(p, next);
        if (atomic_fetch_add_explicit(&p->done, 1, memory_order_acq_rel) + 1 == np) {
            pthread_mutex_lock(&p->mu);
            if (p->sleepers_done) pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
            return; /* the run is over: the job fields may change from now on */
        }
        c = atomic_load_explicit(&p->claim, memory_order_acquire);
    }
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
            /* n_sleeping is raised before the generation is checked again (both seq_cst) and
             * the caller bumps the generation before it reads n_sleeping: either this worker
             * sees the new generation or the caller sees a sleeper and broadcasts. */
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->n_sleeping, 1);
            while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv_work, &p->mu);
            atomic_fetch_sub(&p->n_sleeping, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) break;
        seen = g;
        claim_parts(p, (uint32_t)g);
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
    atomic_init(&p->claim, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->n_sleeping, 0);
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
    const int np = (int)parts;
    atomic_store_explicit(&pool->done, 0, memory_order_relaxed);
    const uint64_t g = atomic_load_explicit(&pool->generation, memory_order_relaxed) + 1;
    atomic_store_explicit(&pool->claim, (g & 0xffffffffu) << 32 | (uint64_t)np << 16, memory_order_release);
    atomic_store(&pool->generation, g);
    if (atomic_load(&pool->n_sleeping) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->cv_work);
        pthread_mutex_unlock(&pool->mu);
    }

    tl_in_task = 1;
    claim_parts(pool, (uint32_t)g);
    tl_in_task = 0;

    for (int s = 0; s < SPIN_ITERS && atomic_load_explicit(&pool->done, memory_order_acquire) < np; s++)
        CPU_RELAX();
    if (atomic_load_explicit(&pool->done, memory_order_acquire) < np) {
        pthread_mutex_lock(&pool->mu);
        pool->sleepers_done = 1;
        while (atomic_load(&pool->done) < np) pthread_cond_wait(&pool->cv_done, &pool->mu);
        pool->sleepers_done = 0;
        pthread_mutex_unlock(&pool->mu);
    }
    pthread_mutex_unlock(&pool->run_mu);
}
