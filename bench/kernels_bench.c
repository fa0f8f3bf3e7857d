/*
 * kernels_bench.c - matmul speed for the shapes the models run (llm.c dev/ style): each case is
 * first checked against the scalar reference on a few rows (the SIMD path must stay within the
 * docs/numerics.md tolerance), then timed over several repetitions; min and median are printed
 * as GFLOP/s and as GB/s of weights streamed. Not a test: timings depend on the machine's load.
 *
 *     build/kernels_bench [-t threads] [-r reps] [-w] [type M N K]... | attn | peak
 *
 * Without shape arguments it runs the standard list (LLaMA-7B decode and prefill, EVA ViT-g);
 * "attn" times the attention loops of one decode step and the elementwise ops; "peak" measures
 * the fp32 FMA peak (12 independent FMA chains per thread, all threads at once), the yardstick of
 * the compute-bound figures in docs/PERFORMANCE.md. -w times mg_matmul_wide (the image encoder's
 * product; float types) instead of mg_matmul. Decode cases
 * cycle through copies of the weights larger than the last-level cache. Wall times suffer from
 * other processes on a busy machine; "cpu(thread 0)" is the calling thread's CPU time, which
 * does not (with 2 threads it includes thread 0 spinning while it waits for the other).
 * Environment knobs for kernel experiments: KB_COPIES=N cycles through N copies of the weights
 * (KB_COPIES=1 keeps a small decode case in cache, to time compute alone), KB_OFFSET=B places the
 * weights B bytes past a cache-line boundary.
 */
#include "kernels.h"
#include "quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *type;
    int64_t M, N, K;
    const char *what;
} bench_case;

static const bench_case std_cases[] = {
    {"q4_0", 1, 16384, 4096, "7B decode (big)"},
    {"q8_0", 1, 16384, 4096, "7B decode (big)"},
    {"q4_0", 1, 4096, 11008, "7B decode ffn_down"},
    {"q8_0", 1, 4096, 11008, "7B decode ffn_down"},
    {"f16", 1, 4096, 4096, "7B decode f16"},
    {"q4_0", 128, 4096, 4096, "7B prefill"},
    {"q8_0", 128, 4096, 4096, "7B prefill"},
    {"f16", 128, 4096, 4096, "7B prefill"},
    {"f32", 64, 4096, 4096, "f32 square"},
    {"f16", 64, 4096, 4096, "f16 square"},
    {"bf16", 64, 4096, 4096, "bf16 square"},
    {"f16", 257, 6144, 1408, "ViT-g fc1"},
    {"f16", 257, 1408, 6144, "ViT-g fc2"},
    {"q8_0", 257, 6144, 1408, "ViT-g fc1"},
};

static int parse_type(const char *s) {
    for (int t = 0; t < MG_TYPE_COUNT; t++) {
        const char *n = mg_type_name(t);
        if (n && strcmp(n, s) == 0) return t;
    }
    return -1;
}

/* CPU time of the calling thread: with one thread it excludes the time the scheduler gave to
 * other processes, so it stays meaningful on a busy machine (wall time is printed too). */
static double thread_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static bool use_wide; /* -w: mg_matmul_wide */

static void matmul(mg_pool *pool, const mg_kernel_opts *o, float *y, const float *x, const void *w, int type,
                   int64_t M, int64_t N, int64_t K, void *work) {
    if (use_wide)
        mg_matmul_wide(pool, o, y, x, w, type, M, N, K, work);
    else
        mg_matmul(pool, o, y, x, w, type, M, N, K, work);
}

static uint64_t rng_state = 12345;
static float rnd(void) {
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng_state >> 40) & 0xffffff) / (float)(1 << 23) - 1.0f;
}

/* Runs one case; returns false when the check against the reference fails. */
static bool run_case(mg_pool *pool, int nthreads, int reps, const char *tname, int64_t M, int64_t N,
                     int64_t K, const char *what) {
    int type = parse_type(tname);
    size_t rs = type >= 0 ? mg_row_size(type, K) : 0;
    if (!rs) {
        fprintf(stderr, "bad case %s %lld %lld %lld\n", tname, (long long)M, (long long)N, (long long)K);
        return false;
    }
    /* Decode streams the whole model from DRAM: cycle through enough copies of W that they
     * cannot stay in the last-level cache (the weights of a real 7B model are 4-7 GB). */
    const size_t wbytes = rs * (size_t)N;
    int copies = M <= 4 ? (int)MG_MIN((size_t)64, ((size_t)256 << 20) / wbytes + 1) : 1;
    const char *env_copies = getenv("KB_COPIES"); /* KB_COPIES=1: weights stay in cache */
    if (env_copies && atoi(env_copies) >= 1) copies = atoi(env_copies);
    const char *env_off = getenv("KB_OFFSET"); /* KB_OFFSET=32: weights 32 bytes off a line */
    const size_t woff = env_off ? (size_t)atoi(env_off) : 0;
    char *w_alloc = mg_malloc_aligned(wbytes * (size_t)copies + woff), *w = w_alloc + woff;
    float *x = mg_malloc_aligned((size_t)(M * K) * sizeof(float));
    float *y = mg_malloc_aligned((size_t)(M * N) * sizeof(float));
    float *yr = malloc((size_t)N * sizeof(float));
    float *row = malloc((size_t)K * sizeof(float));
    size_t ws = mg_matmul_work_size(type, M, K);
    void *work = ws ? mg_malloc_aligned(ws) : NULL;
    if (!w || !x || !y || !yr || !row || (ws && !work)) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < K; k++) row[k] = rnd() * 0.1f;
        mg_quantize_row(type, row, w + rs * (size_t)n, K);
    }
    for (int c = 1; c < copies; c++) memcpy(w + wbytes * (size_t)c, w, wbytes);
    for (int64_t i = 0; i < M * K; i++) x[i] = rnd();

    /* check: a few rows against the reference, relative to sum |x w| (bound from numerics.md) */
    matmul(pool, NULL, y, x, w, type, M, N, K, work);
    mg_kernel_opts ref = {true};
    double worst = 0;
    const int64_t check_rows[3] = {0, M / 2, M - 1};
    for (int c = 0; c < 3; c++) {
        int64_t m = check_rows[c];
        matmul(NULL, &ref, yr, x + m * K, w, type, 1, N, K, work);
        for (int64_t n = 0; n < N; n += 7) {
            mg_get_row_f32(w, type, K, n, row);
            double mag = 0;
            for (int64_t k = 0; k < K; k++) mag += fabs((double)x[m * K + k] * row[k]);
            double e = fabs((double)y[m * N + n] - yr[n]) / (mag + 1e-30) / (2e-7 * sqrt((double)K));
            if (!(e <= worst)) worst = e;
        }
    }
    bool ok = worst <= 16.0; /* ref and SIMD are each within 8 units of the exact sum */

    double *t = malloc((size_t)reps * sizeof(double)), *tc = malloc((size_t)reps * sizeof(double));
    for (int r = 0; r < reps; r++) {
        double c0 = thread_cpu_s();
        int64_t t0 = mg_time_us();
        matmul(pool, NULL, y, x, w + wbytes * (size_t)(r % copies), type, M, N, K, work);
        t[r] = (double)(mg_time_us() - t0) * 1e-6;
        tc[r] = thread_cpu_s() - c0;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    qsort(tc, (size_t)reps, sizeof *tc, cmp_double);
    double tmin = t[0], tmed = t[reps / 2], cmin = tc[0], cmed = tc[reps / 2];
    double flop = 2.0 * (double)M * (double)N * (double)K, bytes = (double)rs * (double)N;
    printf("%-5s M=%-5lld N=%-6lld K=%-6lld t=%d  min %8.3f ms (%7.1f GFLOP/s %6.1f GB/s)  "
           "med %8.3f ms (%7.1f GFLOP/s %6.1f GB/s)  cpu(thread 0) min %.3f med %.3f ms  "
           "err %.2f %s  %s\n",
           tname, (long long)M, (long long)N, (long long)K, nthreads, tmin * 1e3, flop / tmin * 1e-9,
           bytes / tmin * 1e-9, tmed * 1e3, flop / tmed * 1e-9, bytes / tmed * 1e-9, cmin * 1e3,
           cmed * 1e3, worst,
           ok ? "ok" : "FAIL", what);
    fflush(stdout);
    free(t);
    free(tc);
    mg_free_aligned(w_alloc);
    mg_free_aligned(x);
    mg_free_aligned(y);
    free(yr);
    free(row);
    mg_free_aligned(work);
    return ok;
}

/* Attention loops of one decode step: n_head heads of size d over n cached keys (stride
 * n_head * d as in the session's cache). Compare with MINIGPT_FORCE_REF=1 for the reference. */
static void run_attn(int reps, int64_t n, int d, int n_head) {
    const int64_t stride = (int64_t)n_head * d;
    float *kc = mg_malloc_aligned((size_t)(n * stride) * sizeof(float));
    float *q = malloc((size_t)stride * sizeof(float)), *sc = malloc((size_t)n * sizeof(float));
    float *o = malloc((size_t)stride * sizeof(float));
    if (!kc || !q || !sc || !o) exit(1);
    for (int64_t i = 0; i < n * stride; i++) kc[i] = rnd();
    for (int64_t i = 0; i < stride; i++) q[i] = rnd();
    double *t = malloc((size_t)reps * sizeof(double));
    for (int r = 0; r < reps; r++) {
        double c0 = thread_cpu_s();
        for (int h = 0; h < n_head; h++) {
            mg_attn_scores(sc, q + h * d, kc + h * d, stride, n, d, 0.1f);
            for (int64_t j = 0; j < n; j++) sc[j] *= 1.0f / (float)n; /* stand-in for softmax */
            mg_attn_values(o + h * d, sc, kc + h * d, stride, n, d);
        }
        t[r] = thread_cpu_s() - c0;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    printf("attn  n=%lld d=%d heads=%d (1 thread): cpu min %.3f ms med %.3f ms (%.1f GFLOP/s)\n",
           (long long)n, d, n_head, t[0] * 1e3, t[reps / 2] * 1e3, 4.0 * (double)n * stride / t[0] * 1e-9);
    free(t);
    mg_free_aligned(kc);
    free(q);
    free(sc);
    free(o);
}

/* Scalar vs SIMD elementwise ops on n floats (1 thread, CPU time). */
static void run_ops(int reps, int64_t n) {
    float *x = malloc((size_t)n * sizeof(float)), *w = malloc((size_t)n * sizeof(float));
    if (!x || !w) exit(1);
    for (int op = 0; op < 8; op++) {
        static const char *names[8] = {"softmax", "softmax_simd", "silu", "silu_simd",
                                       "rmsnorm", "rmsnorm_simd", "gelu", "gelu_simd"};
        double best = 1e30;
        for (int r = 0; r < reps; r++) {
            for (int64_t i = 0; i < n; i++) x[i] = rnd() * 8.0f;
            for (int64_t i = 0; i < n; i++) w[i] = rnd();
            double c0 = thread_cpu_s();
            switch (op) {
            case 0: mg_softmax(x, n); break;
            case 1: mg_softmax_simd(x, n); break;
            case 2: mg_silu(x, n); break;
            case 3: mg_silu_simd(x, n); break;
            case 4: mg_rmsnorm(x, x, w, n, 1e-6f); break;
            case 5: mg_rmsnorm_simd(x, x, w, n, 1e-6f); break;
            case 6: mg_gelu(x, n); break;
            default: mg_gelu_simd(x, n); break;
            }
            best = MG_MIN(best, thread_cpu_s() - c0);
        }
        printf("%-13s n=%lld: cpu min %.3f ms (%.2f ns/element)\n", names[op], (long long)n, best * 1e3,
               best * 1e9 / (double)n);
    }
    free(x);
    free(w);
}

/* ==== fp32 FMA peak ==== */

/* 12 independent FMA chains of 16 (AVX-512) or 8 (AVX2) lanes, n iterations; returns FLOPs. */
#if defined(__x86_64__)
#include <immintrin.h>
#define PEAK_CHAINS 12
__attribute__((target("avx512f"))) static double fma_loop_512(long n, float *sink) {
    __m512 a[PEAK_CHAINS];
    for (int j = 0; j < PEAK_CHAINS; j++) a[j] = _mm512_set1_ps((float)j);
    const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    for (long i = 0; i < n; i++) {
        _Pragma("GCC unroll 12") for (int j = 0; j < PEAK_CHAINS; j++) a[j] = _mm512_fmadd_ps(a[j], x, y);
    }
    float r = 0;
    for (int j = 0; j < PEAK_CHAINS; j++) r += _mm512_reduce_add_ps(a[j]);
    *sink = r;
    return 2.0 * 16 * PEAK_CHAINS * (double)n;
}
__attribute__((target("avx2,fma"))) static double fma_loop_256(long n, float *sink) {
    __m256 a[PEAK_CHAINS];
    for (int j = 0; j < PEAK_CHAINS; j++) a[j] = _mm256_set1_ps((float)j);
    const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    for (long i = 0; i < n; i++) {
        _Pragma("GCC unroll 12") for (int j = 0; j < PEAK_CHAINS; j++) a[j] = _mm256_fmadd_ps(a[j], x, y);
    }
    float r = 0, t[8];
    for (int j = 0; j < PEAK_CHAINS; j++) {
        _mm256_storeu_ps(t, a[j]);
        for (int l = 0; l < 8; l++) r += t[l];
    }
    *sink = r;
    return 2.0 * 8 * PEAK_CHAINS * (double)n;
}
#endif

typedef struct {
    long n;
    bool wide;
    double flop[64];
    float sink[64];
} peak_ctx;

static void peak_task(void *vctx, int64_t i0, int64_t i1, int ith) {
    peak_ctx *c = vctx;
    for (int64_t i = i0; i < i1; i++) {
#if defined(__x86_64__)
        c->flop[i] = c->wide ? fma_loop_512(c->n, &c->sink[i]) : fma_loop_256(c->n, &c->sink[i]);
#else
        c->flop[i] = 0;
#endif
    }
    (void)ith;
}

/* Every thread runs the FMA loop at once; the peak is the total FLOPs over the wall time. */
static void run_peak(mg_pool *pool, int nthreads, int reps) {
#if defined(__x86_64__)
    const bool wide = __builtin_cpu_supports("avx512f");
    if (!wide && !__builtin_cpu_supports("fma")) {
        printf("peak: no FMA on this CPU\n");
        return;
    }
    if (nthreads > 64) nthreads = 64;
    peak_ctx c = {.n = 20000000, .wide = wide};
    double best = 0, *g = malloc((size_t)reps * sizeof(double));
    for (int r = 0; r < reps && g; r++) {
        int64_t t0 = mg_time_us();
        mg_pool_run(pool, nthreads, 1, peak_task, &c);
        double dt = (double)(mg_time_us() - t0) * 1e-6, flop = 0;
        for (int i = 0; i < nthreads; i++) flop += c.flop[i];
        g[r] = flop / dt * 1e-9;
        if (g[r] > best) best = g[r];
    }
    if (g) {
        qsort(g, (size_t)reps, sizeof *g, cmp_double);
        printf("fp32 FMA peak (%s, %d threads, 12 chains): best %.1f GFLOP/s, median %.1f GFLOP/s\n",
               wide ? "avx512" : "avx2", nthreads, best, g[reps / 2]);
    }
    free(g);
#else
    (void)pool, (void)nthreads, (void)reps;
    printf("peak: x86-64 only\n");
#endif
}

int main(int argc, char **argv) {
    int nthreads = 2, reps = 10, a = 1;
    for (; a < argc && argv[a][0] == '-'; a++) {
        if (strcmp(argv[a], "-t") == 0 && a + 1 < argc) nthreads = atoi(argv[++a]);
        else if (strcmp(argv[a], "-r") == 0 && a + 1 < argc) reps = atoi(argv[++a]);
        else if (strcmp(argv[a], "-w") == 0) use_wide = true;
        else {
            fprintf(stderr, "usage: %s [-t threads] [-r reps] [-w] [type M N K]... | attn | peak\n", argv[0]);
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    mg_pool *pool = NULL;
    if (mg_pool_create(&pool, nthreads) != MG_OK) return 1;
    printf("kernels: %s, %d threads, %d reps%s\n", mg_kernels_isa(), nthreads, reps,
           use_wide ? ", mg_matmul_wide" : "");
    bool ok = true;
    if (a < argc && strcmp(argv[a], "peak") == 0) {
        run_peak(pool, nthreads, reps);
    } else if (a < argc && strcmp(argv[a], "attn") == 0) {
        run_attn(reps, 2048, 128, 32);
        run_attn(reps, 257, 88, 16);
        run_ops(reps, 1 << 16);
    } else if (a < argc) {
        for (; a + 3 < argc; a += 4)
            ok &= run_case(pool, nthreads, reps, argv[a], atoll(argv[a + 1]), atoll(argv[a + 2]),
                           atoll(argv[a + 3]), "");
    } else {
        for (size_t i = 0; i < MG_ARRAY_LEN(std_cases); i++)
            ok &= run_case(pool, nthreads, reps, std_cases[i].type, std_cases[i].M, std_cases[i].N,
                           std_cases[i].K, std_cases[i].what);
    }
    mg_pool_free(pool);
    return ok ? 0 : 1;
}
