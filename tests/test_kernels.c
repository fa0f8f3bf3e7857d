/*
 * test_kernels.c - matmul for every weight type and every kernel variant the CPU can run, against
 * a double-precision dot over the dequantized weights (and dequantized Q8_0 activations for the
 * quantized types); bitwise reproducibility across thread counts; the SIMD activation quantizer
 * against the reference bytes; the thread pool; ops against PyTorch and RoPE against NumPy
 * (tests/ref/kernels_ref.py). Tolerances are those of docs/numerics.md.
 */
#include "kernels.h"
#include "kernels_simd.h"
#include "quant.h"
#include "test.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ==== thread pool ==== */

typedef struct {
    atomic_int hits[1000];
    atomic_int calls;
    int64_t min_seen;
} pool_ctx;

static void count_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    pool_ctx *c = ctx;
    atomic_fetch_add(&c->calls, 1);
    for (int64_t i = i0; i < i1; i++) atomic_fetch_add(&c->hits[i], 1 + ith * 0);
}

static void nested_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    mg_pool *p = ctx;
    (void)i0;
    (void)i1;
    (void)ith;
    static pool_ctx inner; /* contents unused: only checks that a nested run completes */
    mg_pool_run(p, 10, 1, count_task, &inner);
}

TEST(kernels_pool_covers_range_once) {
    for (int nt = 1; nt <= 4; nt++) {
        mg_pool *p = NULL;
        CHECK(mg_pool_create(&p, nt) == MG_OK);
        if (!p) return;
        CHECK_EQ_INT(mg_pool_n_threads(p), nt);
        const int64_t sizes[] = {1, 2, 3, 7, 64, 999, 1000};
        for (int rep = 0; rep < 50; rep++) {
            for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
                static pool_ctx c;
                memset(&c, 0, sizeof c);
                int64_t min_chunk = 1 + rep % 5;
                mg_pool_run(p, sizes[s], min_chunk, count_task, &c);
                int bad = 0;
                for (int64_t i = 0; i < sizes[s]; i++) bad += atomic_load(&c.hits[i]) != 1;
                CHECK_EQ_INT(bad, 0);
                int64_t parts = sizes[s] / min_chunk;
                if (parts < 1) parts = 1;
                if (parts > nt) parts = nt;
                CHECK(atomic_load(&c.calls) <= parts);
            }
        }
        mg_pool_run(p, 4, 1, nested_task, p); /* must not deadlock */
        mg_pool_free(p);
    }
    static pool_ctx c;
    memset(&c, 0, sizeof c);
    mg_pool_run(NULL, 5, 1, count_task, &c);
    CHECK_EQ_INT(atomic_load(&c.hits[4]), 1);
}

typedef struct {
    atomic_int hits[16];
    atomic_int ith_seen[16];
    atomic_int bad_ith;
    int parts;
} claim_ctx;

static void claim_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    claim_ctx *c = ctx;
    if (ith < 0 || ith >= c->parts || atomic_fetch_add(&c->ith_seen[ith], 1) != 0) atomic_fetch_add(&c->bad_ith, 1);
    for (int64_t i = i0; i < i1; i++) atomic_fetch_add(&c->hits[i], 1);
}

/* Many short runs back to back (the decode pattern): parts are claimed by the caller and the
 * workers, so each part must run exactly once with its own ith, whoever takes it, and no
 * worker that wakes up late may take a part of a later run. */
TEST(kernels_pool_parts_claimed_once) {
    for (int nt = 2; nt <= 4; nt++) {
        mg_pool *p = NULL;
        CHECK(mg_pool_create(&p, nt) == MG_OK);
        if (!p) return;
        int bad = 0;
        const int runs = test_quick() ? 2000 : 20000;
        for (int r = 0; r < runs; r++) {
            claim_ctx c;
            memset(&c, 0, sizeof c);
            const int64_t n = 1 + r % 16;
            c.parts = (int)MG_MIN(n, (int64_t)nt);
            mg_pool_run(p, n, 1, claim_task, &c);
            for (int64_t i = 0; i < n; i++) bad += atomic_load(&c.hits[i]) != 1;
            bad += atomic_load(&c.bad_ith);
        }
        CHECK_EQ_INT(bad, 0);
        mg_pool_free(p);
    }
}

/* ==== matmul ==== */

static const int mm_types[] = {MG_TYPE_F32, MG_TYPE_F16, MG_TYPE_BF16, MG_TYPE_Q8_0, MG_TYPE_Q4_0};

/* Builds W [N, K] of `type` from random floats and the exact reference y in double:
 * sum_k xr[m,k] * wr[n,k] where wr is the dequantized W and xr is x, or for the quantized
 * types x quantized to Q8_0 and dequantized. Also returns sum |xr||wr| per element (scale). */
typedef struct {
    void *w;
    float *x;
    double *ref, *mag;
} mm_case;

static bool mm_case_make(mm_case *c, int type, int64_t M, int64_t N, int64_t K, uint64_t seed) {
    memset(c, 0, sizeof *c);
    size_t rs = mg_row_size(type, K);
    c->w = malloc(rs * (size_t)N);
    c->x = malloc((size_t)(M * K) * sizeof(float));
    c->ref = malloc((size_t)(M * N) * sizeof(double));
    c->mag = malloc((size_t)(M * N) * sizeof(double));
    float *wf = malloc((size_t)K * sizeof(float)), *wd = malloc((size_t)(N * K) * sizeof(float));
    float *xd = malloc((size_t)(M * K) * sizeof(float));
    void *xq = malloc(mg_row_size(MG_TYPE_Q8_0, K / 32 * 32 + 32));
    bool ok = c->w && c->x && c->ref && c->mag && wf && wd && xd && xq;
    if (ok) {
        uint64_t rng = seed;
        for (int64_t i = 0; i < M * K; i++) c->x[i] = test_rng_float(&rng) * 2.0f;
        for (int64_t n = 0; n < N; n++) {
            for (int64_t k = 0; k < K; k++) wf[k] = test_rng_float(&rng) * 0.1f;
            mg_quantize_row(type, wf, (char *)c->w + rs * (size_t)n, K);
            mg_dequantize_row(type, (char *)c->w + rs * (size_t)n, wd + n * K, K);
        }
        for (int64_t m = 0; m < M; m++) {
            if (type == MG_TYPE_Q8_0 || type == MG_TYPE_Q4_0) {
                mg_quantize_row(MG_TYPE_Q8_0, c->x + m * K, xq, K);
                mg_dequantize_row(MG_TYPE_Q8_0, xq, xd + m * K, K);
            } else {
                memcpy(xd + m * K, c->x + m * K, (size_t)K * sizeof(float));
            }
        }
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double s = 0, a = 0;
                for (int64_t k = 0; k < K; k++) {
                    s += (double)xd[m * K + k] * wd[n * K + k];
                    a += fabs((double)xd[m * K + k] * wd[n * K + k]);
                }
                c->ref[m * N + n] = s;
                c->mag[m * N + n] = a;
            }
    }
    free(wf);
    free(wd);
    free(xd);
    free(xq);
    return ok;
}

static void mm_case_free(mm_case *c) {
    free(c->w);
    free(c->x);
    free(c->ref);
    free(c->mag);
}

/* Relative tolerance (of sum |x w|) from docs/numerics.md: fp32 accumulation of K terms,
 * plus for quantized types the scale products rounded to fp32. */
static double mm_tol(int64_t K) { return 8 * 2e-7 * sqrt((double)K); }

static int mm_compare(const float *y, const mm_case *c, int64_t M, int64_t N, int64_t K, double *max_rel) {
    int bad = 0;
    for (int64_t i = 0; i < M * N; i++) {
        double err = fabs((double)y[i] - c->ref[i]);
        double rel = err / (c->mag[i] + 1e-30);
        if (rel > *max_rel) *max_rel = rel;
        if (!(rel <= mm_tol(K))) bad++;
    }
    return bad;
}

static const struct {
    int64_t M, N, K;
} mm_shapes[] = {
    {1, 1, 32}, {1, 37, 32}, {1, 67, 4096}, {3, 33, 64}, {5, 17, 96}, {8, 50, 256},
    {13, 29, 160}, {4, 130, 512}, {1, 21, 11008}, {3, 9, 45}, {6, 11, 7}, {1, 5, 1},
    {17, 23, 45}, {16, 10, 96}, {21, 7, 1}, /* M >= 16: many-row paths */
};

static mg_kernel_table table_for(int which, bool *have) {
    mg_kernel_table t;
    memset(&t, 0, sizeof t);
    *have = false;
    if (which == 1) *have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                            mg_kernels_fill_avx2(&t);
    if (which == 2)
        *have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi") &&
                mg_kernels_fill_avx512(&t);
    return t;
}

/* The reference kernels (through mg_matmul with use_ref) and each SIMD table run directly. */
TEST(kernels_matmul_all_types_vs_double) {
    mg_kernel_opts ref = {true};
    double worst[3][5] = {{0}};
    size_t ns = sizeof mm_shapes / sizeof mm_shapes[0];
    for (size_t s = 0; s < ns; s++) {
        int64_t M = mm_shapes[s].M, N = mm_shapes[s].N, K = mm_shapes[s].K;
        if (test_quick() && K > 1024) continue;
        for (size_t t = 0; t < sizeof mm_types / sizeof mm_types[0]; t++) {
            int type = mm_types[t];
            if (K % mg_get_type_traits(type)->blck_size) continue;
            mm_case c;
            if (!mm_case_make(&c, type, M, N, K, 1000 + s * 10 + t)) {
                CHECK_MSG(0, "out of memory");
                mm_case_free(&c);
                return;
            }
            float *y = malloc((size_t)(M * N) * sizeof(float));
            size_t ws = mg_matmul_work_size(type, M, K);
            void *work = ws ? malloc(ws) : NULL;
            for (int which = 0; which < 3 && y; which++) {
                double max_rel = 0;
                if (which == 0) {
                    mg_matmul(NULL, &ref, y, c.x, c.w, type, M, N, K, work);
                } else {
                    bool have;
                    mg_kernel_table tb = table_for(which, &have);
                    if (!have) continue;
                    mg_mm_args a = {y, c.x, work,      mg_row_size(MG_TYPE_Q8_0, K), c.w, type, M,
                                    N, K,   .ep = NULL};
                    if (work)
                        for (int64_t m = 0; m < M; m++)
                            tb.quantize_q8_0(c.x + m * K, (char *)work + (size_t)m * a.xq_stride, K);
                    mg_mm_fn fn = type == MG_TYPE_F32    ? tb.mm_f32
                                  : type == MG_TYPE_F16  ? tb.mm_f16
                                  : type == MG_TYPE_BF16 ? tb.mm_bf16
                                  : type == MG_TYPE_Q8_0 ? tb.mm_q8_0
                                                         : tb.mm_q4_0;
                    /* split the columns unevenly to exercise range edges */
                    int64_t cut = N / 3;
                    fn(&a, 0, cut);
                    fn(&a, cut, N);
                }
                int bad = mm_compare(y, &c, M, N, K, &max_rel);
                double norm = max_rel / (2e-7 * sqrt((double)K)); /* in units of u*sqrt(K) */
                if (norm > worst[which][t]) worst[which][t] = norm;
                CHECK_MSG(bad == 0, "%s type %s M=%lld N=%lld K=%lld: %d bad, max rel err %.3g (tol %.3g)",
                          which == 0 ? "ref" : which == 1 ? "avx2" : "avx512", mg_type_name(type),
                          (long long)M, (long long)N, (long long)K, bad, max_rel, mm_tol(K));
            }
            free(y);
            free(work);
            mm_case_free(&c);
        }
    }
    for (int which = 0; which < 3; which++)
        printf("    max rel err / (2e-7 sqrt K), %s: f32 %.2f f16 %.2f bf16 %.2f q8_0 %.2f q4_0 %.2f\n",
               which == 0 ? "ref" : which == 1 ? "avx2" : "avx512", worst[which][0], worst[which][1],
               worst[which][2], worst[which][3], worst[which][4]);
}

/* mg_matmul_wide: every output is the fmaf chain over k from 0, computed here in the test. The
 * AVX-512 panels (called directly, ranges cut off the 64-column panel grid) must give those bits
 * exactly, the reference too, and through mg_matmul_wide the bits do not depend on the thread
 * count or on M (row m alone = row m of the batch); within the matmul tolerance of the double
 * product. A quantized type goes to mg_matmul unchanged. */
TEST(kernels_matmul_wide) {
    static const struct {
        int64_t M, N, K;
    } shapes[] = {{1, 1, 1}, {7, 65, 300}, {13, 130, 257}, {6, 64, 256}, {19, 129, 513}, {5, 3, 17},
                  {2, 200, 16}, {12, 88, 257}, {9, 257, 88}};
    const int types[] = {MG_TYPE_F32, MG_TYPE_F16, MG_TYPE_BF16};
    bool have512;
    mg_kernel_table t512 = table_for(2, &have512);
    if (!have512) printf("    (no AVX-512 here: the reference and the dispatcher only)\n");
    mg_kernel_opts ref = {true}, sel = {false};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (size_t ti = 0; ti < 3; ti++) {
            const int type = types[ti];
            const int64_t M = shapes[si].M, N = shapes[si].N, K = shapes[si].K;
            mm_case c;
            float *want = malloc((size_t)(M * N) * sizeof(float)), *y = malloc((size_t)(M * N) * sizeof(float));
            float *wrow = malloc((size_t)K * sizeof(float));
            if (!mm_case_make(&c, type, M, N, K, 77 + si * 3 + ti) || !want || !y || !wrow) {
                CHECK_MSG(0, "out of memory");
                mm_case_free(&c);
                free(want), free(y), free(wrow);
                return;
            }
            const size_t rs = mg_row_size(type, K);
            for (int64_t n = 0; n < N; n++) {
                mg_dequantize_row(type, (const char *)c.w + rs * (size_t)n, wrow, K);
                for (int64_t m = 0; m < M; m++) {
                    float v = 0.0f;
                    for (int64_t k = 0; k < K; k++) v = fmaf(c.x[m * K + k], wrow[k], v);
                    want[m * N + n] = v;
                }
            }
            const char *tn = mg_type_name(type);
            mg_matmul_wide(NULL, &ref, y, c.x, c.w, type, M, N, K, NULL);
            CHECK_MSG(memcmp(y, want, (size_t)(M * N) * 4) == 0, "ref %s %lldx%lldx%lld", tn, (long long)M,
                      (long long)N, (long long)K);
            if (have512) {
                memset(y, 0xff, (size_t)(M * N) * 4);
                mg_mm_args a = {y, c.x, NULL, 0, c.w, type, M, N, K, .ep = NULL};
                mg_mm_fn fn = type == MG_TYPE_F32 ? t512.mmw_f32 : type == MG_TYPE_F16 ? t512.mmw_f16 : t512.mmw_bf16;
                const int64_t cut1 = N / 3, cut2 = N - N / 5;
                fn(&a, 0, cut1);
                fn(&a, cut1, cut2);
                fn(&a, cut2, N);
                CHECK_MSG(memcmp(y, want, (size_t)(M * N) * 4) == 0, "avx512 %s %lldx%lldx%lld", tn,
                          (long long)M, (long long)N, (long long)K);
            }
            double max_rel = 0;
            CHECK_EQ_INT(mm_compare(want, &c, M, N, K, &max_rel), 0);
            /* the selected path through the dispatcher: threads and M do not change the bits */
            float *y1 = malloc((size_t)(M * N) * sizeof(float));
            for (int nt = 1; nt <= 3 && y1; nt++) {
                mg_pool *p = NULL;
                CHECK(mg_pool_create(&p, nt) == MG_OK);
                mg_matmul_wide(p, &sel, nt == 1 ? y1 : y, c.x, c.w, type, M, N, K, NULL);
                mg_pool_free(p);
                if (nt > 1)
                    CHECK_MSG(memcmp(y, y1, (size_t)(M * N) * 4) == 0, "%s: %d threads differ from 1", tn, nt);
            }
            int rows_differ = 0;
            for (int64_t m = 0; m < M && y1; m++) {
                mg_matmul_wide(NULL, &sel, y, c.x + m * K, c.w, type, 1, N, K, NULL);
                rows_differ += memcmp(y, y1 + m * N, (size_t)N * 4) != 0;
            }
            CHECK_MSG(rows_differ == 0, "%s: %d rows differ alone", tn, rows_differ);
            if (have512 && y1 && strcmp(mg_kernels_isa(), "avx512") == 0)
                CHECK_MSG(memcmp(y1, want, (size_t)(M * N) * 4) == 0, "dispatched %s", tn);
            free(y1);
            free(want), free(y), free(wrow);
            mm_case_free(&c);
        }
    /* a quantized type: mg_matmul's bits */
    mm_case c;
    const int64_t M = 5, N = 70, K = 64;
    float *a = malloc(M * N * 4), *b = malloc(M * N * 4);
    if (mm_case_make(&c, MG_TYPE_Q8_0, M, N, K, 5) && a && b) {
        mg_matmul(NULL, &sel, a, c.x, c.w, MG_TYPE_Q8_0, M, N, K, NULL);
        mg_matmul_wide(NULL, &sel, b, c.x, c.w, MG_TYPE_Q8_0, M, N, K, NULL);
        CHECK(memcmp(a, b, M * N * 4) == 0);
    } else {
        CHECK_MSG(0, "out of memory");
    }
    mm_case_free(&c);
    free(a), free(b);
}

/* The epilogue as the separate passes after a finished product p (the expected bits): r + bias,
 * mg_gelu_simd, add_to + r. */
static void ep_passes(float *want, const float *p, const float *acc0, const float *bias, const mg_mm_epilogue *ep,
                      int64_t M, int64_t N) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            float r = p[m * N + n];
            if (ep->bias) r += bias[n];
            if (ep->gelu) mg_gelu_simd(&r, 1);
            want[m * N + n] = ep->add_to ? acc0[m * N + n] + r : r;
        }
}

/* mg_matmul_wide_ep: bias, GELU and the residual add applied to each output once its chain is
 * complete give the bits of the separate passes after mg_matmul_wide (computed here: r + bias,
 * mg_gelu_simd, add_to + r), through the reference, the AVX-512 panels called directly on ranges
 * cut off the panel grid, and the dispatcher on 1-3 threads; K = 513 spans two k panels (of 512),
 * so an epilogue applied before the last one shows. A quantized type takes the passes after mg_matmul. */
TEST(kernels_matmul_wide_epilogue) {
    static const struct {
        int64_t M, N, K;
    } shapes[] = {{1, 1, 1}, {7, 65, 300}, {13, 130, 513}, {6, 64, 256}, {9, 257, 88}};
    const int types[] = {MG_TYPE_F32, MG_TYPE_F16, MG_TYPE_Q8_0};
    bool have512;
    mg_kernel_table t512 = table_for(2, &have512);
    mg_kernel_opts ref = {true}, sel = {false};
    uint64_t rng = 5;
    int cases = 0;
    for (size_t si = 0; si < MG_ARRAY_LEN(shapes); si++)
        for (size_t ti = 0; ti < MG_ARRAY_LEN(types); ti++) {
            const int type = types[ti];
            const int64_t M = shapes[si].M, N = shapes[si].N, K = type == MG_TYPE_Q8_0 ? 64 : shapes[si].K;
            const size_t bytes = (size_t)(M * N) * sizeof(float);
            mm_case c;
            float *plain = malloc(bytes), *y = malloc(bytes), *want = malloc(bytes), *acc0 = malloc(bytes);
            float *acc = malloc(bytes), *bias = malloc((size_t)N * sizeof(float)), *plain_sel = malloc(bytes);
            if (!mm_case_make(&c, type, M, N, K, 300 + si * 3 + ti) || !plain || !y || !want || !acc0 ||
                !acc || !bias || !plain_sel) {
                CHECK_MSG(0, "out of memory");
                mm_case_free(&c);
                free(plain), free(y), free(want), free(acc0), free(acc), free(bias), free(plain_sel);
                return;
            }
            for (int64_t n = 0; n < N; n++)
                bias[n] = test_rng_float(&rng);
            for (int64_t i = 0; i < M * N; i++)
                acc0[i] = test_rng_float(&rng) * 4.0f;
            /* the product each path's epilogue follows: the wide chains (reference bits) for float
             * weights; for Q8_0 the reference's and the selected kernels' mg_matmul */
            mg_matmul_wide(NULL, &ref, plain, c.x, c.w, type, M, N, K, NULL);
            mg_matmul_wide(NULL, &sel, plain_sel, c.x, c.w, type, M, N, K, NULL);
            for (int variant = 0; variant < 5; variant++) {
                const mg_mm_epilogue ep = {variant != 3 ? bias : NULL, variant == 1 || variant == 4,
                                           variant >= 2 ? acc : NULL};
                const float *got = ep.add_to ? acc : y;
                for (int path = 0; path < 5; path++) {
                    if (path == 1 && (!have512 || type == MG_TYPE_Q8_0)) continue;
                    memcpy(acc, acc0, bytes);
                    memset(y, 0xff, bytes);
                    if (path == 0) {
                        mg_matmul_wide_ep(NULL, &ref, y, c.x, c.w, type, M, N, K, NULL, &ep);
                    } else if (path == 1) {
                        mg_mm_args a = {y, c.x, NULL, 0, c.w, type, M, N, K, .ep = &ep};
                        mg_mm_fn fn = type == MG_TYPE_F32 ? t512.mmw_f32 : t512.mmw_f16;
                        const int64_t cut1 = N / 3, cut2 = N - N / 5;
                        fn(&a, 0, cut1);
                        fn(&a, cut1, cut2);
                        fn(&a, cut2, N);
                    } else {
                        mg_pool *p = NULL;
                        CHECK(mg_pool_create(&p, path - 1) == MG_OK);
                        mg_matmul_wide_ep(p, &sel, y, c.x, c.w, type, M, N, K, NULL, &ep);
                        mg_pool_free(p);
                    }
                    ep_passes(want, path == 0 ? plain : plain_sel, acc0, bias, &ep, M, N);
                    CHECK_MSG(memcmp(got, want, bytes) == 0, "%s %lldx%lldx%lld epilogue %d path %d",
                              mg_type_name(type), (long long)M, (long long)N, (long long)K, variant, path);
                    cases++;
                }
            }
            mm_case_free(&c);
            free(plain), free(y), free(want), free(acc0), free(acc), free(bias), free(plain_sel);
        }
    CHECK(cases > 0);
}

/* mg_matmul_wide_strided: operands in place with row strides (and fp32 weights given k-major)
 * give the bits of mg_matmul_wide_ep on the same numbers gathered contiguous, with and without an
 * epilogue, through the reference and the selected path on 1-3 threads; the gaps between the
 * strided output rows stay untouched. Where it cannot (k-major F16, a quantized type) it says so
 * and writes nothing. */
TEST(kernels_matmul_wide_strided) {
    static const struct {
        int64_t M, N, K;
    } shapes[] = {{1, 1, 1}, {7, 65, 300}, {48, 257, 88}, {48, 88, 257}, {13, 130, 513}};
    mg_kernel_opts ref = {true}, sel = {false};
    uint64_t rng = 11;
    int cases = 0;
    for (size_t si = 0; si < MG_ARRAY_LEN(shapes); si++)
        for (int kind = 0; kind < 3; kind++) { /* F32 row-major, F32 k-major, F16 row-major */
            const int64_t M = shapes[si].M, N = shapes[si].N, K = shapes[si].K;
            const bool km = kind == 1;
            const int type = kind == 2 ? MG_TYPE_F16 : MG_TYPE_F32;
            const size_t es = kind == 2 ? 2 : 4;
            const int64_t ldx = K + 5, ldy = N + 3, ldw = km ? N + 9 : K + 7;
            float *x = malloc((size_t)(M * K) * 4), *xs = malloc((size_t)(M * ldx) * 4);
            float *w = malloc((size_t)(N * K) * 4), *bias = malloc((size_t)N * 4);
            float *want = malloc((size_t)(M * N) * 4), *acc = malloc((size_t)(M * N) * 4);
            float *ys = malloc((size_t)(M * ldy) * 4), *accs = malloc((size_t)(M * ldy) * 4);
            char *wc = malloc((size_t)(N * K) * es), *wsb = malloc((size_t)(km ? K * ldw : N * ldw) * es);
            if (!x || !xs || !w || !bias || !want || !acc || !ys || !accs || !wc || !wsb) {
                CHECK_MSG(0, "out of memory");
                free(x), free(xs), free(w), free(bias), free(want), free(acc), free(ys), free(accs), free(wc),
                    free(wsb);
                return;
            }
            for (int64_t i = 0; i < M * K; i++)
                x[i] = test_rng_float(&rng);
            for (int64_t i = 0; i < N * K; i++)
                w[i] = test_rng_float(&rng) * 0.1f;
            for (int64_t n = 0; n < N; n++)
                bias[n] = test_rng_float(&rng);
            for (int64_t m = 0; m < M; m++)
                memcpy(xs + m * ldx, x + m * K, (size_t)K * 4);
            for (int64_t n = 0; n < N; n++) {
                mg_quantize_row(type, w + n * K, wc + (size_t)(n * K) * es, K);
                for (int64_t k = 0; k < K; k++) {
                    const size_t at = (size_t)(km ? k * ldw + n : n * ldw + k) * es;
                    memcpy(wsb + at, wc + (size_t)(n * K + k) * es, es);
                }
            }
            for (int with_ep = 0; with_ep < 2; with_ep++)
                for (int path = 0; path < 4; path++) { /* ref, then 1-3 threads */
                    const mg_kernel_opts *o = path == 0 ? &ref : &sel;
                    mg_mm_epilogue ep = {bias, false, acc}, eps = {bias, false, accs};
                    for (int64_t i = 0; i < M * N; i++)
                        acc[i] = (float)(i % 7);
                    for (int64_t m = 0; m < M; m++)
                        for (int64_t n = 0; n < ldy; n++)
                            accs[m * ldy + n] = n < N ? (float)((m * N + n) % 7) : -1.0f;
                    for (int64_t i = 0; i < M * ldy; i++)
                        ys[i] = -2.0f;
                    mg_matmul_wide_ep(NULL, o, want, x, wc, type, M, N, K, NULL, with_ep ? &ep : NULL);
                    mg_pool *p = NULL;
                    if (path > 0) CHECK(mg_pool_create(&p, path) == MG_OK);
                    const bool done = mg_matmul_wide_strided(p, o, ys, ldy, xs, ldx, wsb, ldw, km, type, M, N,
                                                             K, with_ep ? &eps : NULL);
                    mg_pool_free(p);
                    if (!done) { /* only where the selected kernels have no wide product */
                        CHECK_MSG(path > 0 && strcmp(mg_kernels_isa(), "avx512") != 0, "kind %d refused",
                                  kind);
                        continue;
                    }
                    const float *got = with_ep ? accs : ys, *exp = with_ep ? acc : want;
                    int bad = 0, gaps = 0;
                    for (int64_t m = 0; m < M; m++) {
                        bad += memcmp(got + m * ldy, exp + m * N, (size_t)N * 4) != 0;
                        for (int64_t n = N; n < ldy; n++)
                            gaps += got[m * ldy + n] != (with_ep ? -1.0f : -2.0f);
                    }
                    CHECK_MSG(bad == 0 && gaps == 0,
                              "%lldx%lldx%lld kind %d ep %d path %d: %d rows differ, %d gaps", (long long)M,
                              (long long)N, (long long)K, kind, with_ep, path, bad, gaps);
                    cases++;
                }
            free(x), free(xs), free(w), free(bias), free(want), free(acc), free(ys), free(accs), free(wc),
                free(wsb);
        }
    CHECK(cases > 0);
    float y = 7.0f, xv = 1.0f;
    const mg_fp16 h = mg_fp32_to_fp16(1.0f);
    CHECK(!mg_matmul_wide_strided(NULL, NULL, &y, 1, &xv, 1, &h, 1, true, MG_TYPE_F16, 1, 1, 1, NULL));
    char q8[34] = {0};
    CHECK(!mg_matmul_wide_strided(NULL, NULL, &y, 1, &xv, 32, q8, 1, false, MG_TYPE_Q8_0, 1, 1, 32, NULL));
    CHECK(y == 7.0f);
}

/* Same output bits for 1, 2 and 3 threads, for the selected path and the reference; and the
 * M > 1 path gives each row the same bits as a separate M = 1 call (M = 19 takes the
 * many-rows paths of any variant, with a short last row tile). */
TEST(kernels_matmul_thread_invariant) {
    const int64_t M = 19, N = 301, K = test_quick() ? 256 : 1024;
    for (size_t t = 0; t < sizeof mm_types / sizeof mm_types[0]; t++) {
        int type = mm_types[t];
        mm_case c;
        if (!mm_case_make(&c, type, M, N, K, 42 + t)) {
            CHECK_MSG(0, "out of memory");
            mm_case_free(&c);
            return;
        }
        float *y[4];
        for (int i = 0; i < 4; i++) y[i] = malloc((size_t)(M * N) * sizeof(float));
        void *work = malloc(mg_matmul_work_size(type, M, K) + 1);
        for (int r = 0; r < 2; r++) {
            mg_kernel_opts o = {r == 1};
            for (int nt = 1; nt <= 3; nt++) {
                mg_pool *p = NULL;
                CHECK(mg_pool_create(&p, nt) == MG_OK);
                mg_matmul(p, &o, y[nt - 1], c.x, c.w, type, M, N, K, work);
                mg_pool_free(p);
            }
            CHECK_MSG(memcmp(y[0], y[1], (size_t)(M * N) * 4) == 0, "%s 1 vs 2 threads", mg_type_name(type));
            CHECK_MSG(memcmp(y[0], y[2], (size_t)(M * N) * 4) == 0, "%s 1 vs 3 threads", mg_type_name(type));
            int diff = 0;
            for (int64_t m = 0; m < M; m++) {
                mg_matmul(NULL, &o, y[3], c.x + m * K, c.w, type, 1, N, K, work);
                diff += memcmp(y[3], y[0] + m * N, (size_t)N * 4) != 0;
            }
            CHECK_MSG(diff == 0, "%s: %d rows differ between M=1 and M=%lld", mg_type_name(type), diff, (long long)M);
            double max_rel = 0;
            CHECK_EQ_INT(mm_compare(y[0], &c, M, N, K, &max_rel), 0);
        }
        for (int i = 0; i < 4; i++) free(y[i]);
        free(work);
        mm_case_free(&c);
    }
}

/* For every SIMD table: runs the weight type's kernel on the 3 rows of a random case and on row 1
 * alone in three ranges whose edges are off any tile grid; the one-row call must give the bits of
 * row 1 of the 3-row call (the general tile) and stay within the matmul tolerance. Quantized
 * weights get their activations quantized by the table's own quantizer. False when out of memory. */
static bool check_row1_of_3(int type, int64_t N, int64_t K, uint64_t seed) {
    const int64_t M = 3;
    const bool quant = type == MG_TYPE_Q8_0 || type == MG_TYPE_Q4_0;
    const size_t xs = quant ? mg_row_size(MG_TYPE_Q8_0, K) : 0;
    mm_case c;
    bool ok = mm_case_make(&c, type, M, N, K, seed);
    float *y3 = malloc((size_t)(M * N) * sizeof(float)), *y1 = malloc((size_t)N * sizeof(float));
    char *xq = quant ? malloc(xs * (size_t)M) : NULL;
    ok = ok && y3 && y1 && (!quant || xq);
    for (int which = 1; which < 3 && ok; which++) {
        bool have;
        mg_kernel_table tb = table_for(which, &have);
        if (!have) continue;
        for (int64_t m = 0; quant && m < M; m++) tb.quantize_q8_0(c.x + m * K, xq + (size_t)m * xs, K);
        mg_mm_fn fn = type == MG_TYPE_F32    ? tb.mm_f32
                      : type == MG_TYPE_F16  ? tb.mm_f16
                      : type == MG_TYPE_BF16 ? tb.mm_bf16
                      : type == MG_TYPE_Q8_0 ? tb.mm_q8_0
                                             : tb.mm_q4_0;
        mg_mm_args a3 = {y3, c.x, xq, xs, c.w, type, M, N, K, .ep = NULL};
        fn(&a3, 0, N);
        mg_mm_args a1 = {y1, c.x + K, quant ? xq + xs : NULL, xs, c.w, type, 1, N, K, .ep = NULL};
        const int64_t cut1 = N / 3, cut2 = N - N / 4;
        fn(&a1, 0, cut1);
        fn(&a1, cut1, cut2);
        fn(&a1, cut2, N);
        CHECK_MSG(memcmp(y1, y3 + N, (size_t)N * sizeof(float)) == 0,
                  "%s %s K=%lld N=%lld: one-row call differs from row 1 of 3", which == 1 ? "avx2" : "avx512",
                  mg_type_name(type), (long long)K, (long long)N);
        mm_case row1 = {c.w, c.x + K, c.ref + N, c.mag + N};
        double max_rel = 0;
        CHECK_EQ_INT(mm_compare(y1, &row1, 1, N, K, &max_rel), 0);
    }
    free(y3);
    free(y1);
    free(xq);
    mm_case_free(&c);
    return ok;
}

/* The one-row (decode) path of the float kernels (F32, F16, BF16), which streams several weight
 * rows side by side with prefetches: for every SIMD table, on K with and without a 16-lane tail
 * and row counts around the rows in flight, a one-row call cut into ranges off the tile grid
 * must give the bits of the same row inside a 3-row call (the general tile) and stay within the
 * matmul tolerance. */
TEST(kernels_matmul_gemv_rows_float) {
    static const int64_t Ks[] = {1, 15, 16, 17, 100, 1031};
    static const int64_t Ns[] = {1, 7, 8, 9, 17, 23};
    static const int ftypes[] = {MG_TYPE_F32, MG_TYPE_F16, MG_TYPE_BF16};
    for (size_t kt = 0; kt < sizeof Ks / sizeof Ks[0]; kt++)
        for (size_t nt = 0; nt < sizeof Ns / sizeof Ns[0]; nt++)
            for (size_t t = 0; t < 3; t++)
                if (!check_row1_of_3(ftypes[t], Ns[nt], Ks[kt], 8000 + kt * 100 + nt * 10 + t)) {
                    CHECK_MSG(0, "out of memory");
                    return;
                }
}

/* The many-row path of the quantized kernels walks the weights in blocks of about 512 KiB
 * (QBLOCK_BYTES in kernels_avx512.c): with K = 8192 a block is 64 (Q8_0) or 112 (Q4_0) rows, so
 * N = 250 crosses several blocks and ends in a short one. Every row of an M = 6 call must equal
 * the same row computed alone (M = 1, the decode path) bit for bit, and the reference within
 * tolerance. */
TEST(kernels_matmul_weight_blocks) {
    static const int qtypes[] = {MG_TYPE_Q8_0, MG_TYPE_Q4_0};
    for (size_t t = 0; t < 2; t++) {
        const int type = qtypes[t];
        const int64_t M = 6, N = 250, K = 8192;
        mm_case c;
        if (!mm_case_make(&c, type, M, N, K, 555 + t)) {
            CHECK_MSG(0, "out of memory");
            mm_case_free(&c);
            return;
        }
        float *y = malloc((size_t)(M * N) * sizeof(float)), *y1 = malloc((size_t)N * sizeof(float));
        void *work = malloc(mg_matmul_work_size(type, M, K));
        mg_pool *p = NULL;
        CHECK(mg_pool_create(&p, 2) == MG_OK);
        if (y && y1 && work) {
            mg_matmul(p, NULL, y, c.x, c.w, type, M, N, K, work);
            int diff = 0;
            for (int64_t m = 0; m < M; m++) {
                mg_matmul(p, NULL, y1, c.x + m * K, c.w, type, 1, N, K, work);
                diff += memcmp(y1, y + m * N, (size_t)N * sizeof(float)) != 0;
            }
            CHECK_MSG(diff == 0, "%s: %d of %d rows differ between M=%d and M=1", mg_type_name(type), diff,
                      (int)M, (int)M);
            double max_rel = 0;
            CHECK_EQ_INT(mm_compare(y, &c, M, N, K, &max_rel), 0);
        } else {
            CHECK_MSG(0, "out of memory");
        }
        mg_pool_free(p);
        free(y);
        free(y1);
        free(work);
        mm_case_free(&c);
    }
}

/* The one-row (decode) path of the quantized kernels, which streams several weight rows at a
 * time with its own loop: for every SIMD table, on block counts with and without a short last
 * group of 4 blocks (K/32 = 1, 3, 4, 5, 7, 129), row counts around the rows-in-flight tile,
 * ranges cut off the tile grid, a one-row call must give the bits of the same row inside a
 * 3-row call (the general tile), and stay within the matmul tolerance; through mg_matmul the
 * one-row result must also be the same for 1, 2 and 3 threads (chunked scheduling). */
TEST(kernels_matmul_gemv_rows) {
    static const int64_t Ks[] = {32, 96, 128, 160, 224, 4128};
    static const int64_t Ns[] = {1, 5, 8, 9, 17, 23, 61};
    static const int qtypes[] = {MG_TYPE_Q8_0, MG_TYPE_Q4_0};
    for (size_t kt = 0; kt < sizeof Ks / sizeof Ks[0]; kt++)
        for (size_t nt = 0; nt < sizeof Ns / sizeof Ns[0]; nt++)
            for (size_t t = 0; t < 2; t++)
                if (!check_row1_of_3(qtypes[t], Ns[nt], Ks[kt], 7000 + kt * 100 + nt * 10 + t)) {
                    CHECK_MSG(0, "out of memory");
                    return;
                }
    /* through mg_matmul with the selected path: wide enough for several chunks per thread */
    for (size_t t = 0; t < 2; t++) {
        const int type = qtypes[t];
        const int64_t N = 1003, K = 4096;
        mm_case c;
        if (!mm_case_make(&c, type, 1, N, K, 99 + t)) {
            CHECK_MSG(0, "out of memory");
            mm_case_free(&c);
            return;
        }
        float *y[3];
        for (int i = 0; i < 3; i++) y[i] = calloc((size_t)N, sizeof(float));
        void *work = malloc(mg_matmul_work_size(type, 1, K));
        for (int nt = 1; nt <= 3 && work; nt++) {
            mg_pool *p = NULL;
            CHECK(mg_pool_create(&p, nt) == MG_OK);
            for (int rep = 0; rep < 3; rep++) mg_matmul(p, NULL, y[nt - 1], c.x, c.w, type, 1, N, K, work);
            mg_pool_free(p);
        }
        CHECK_MSG(y[1] && memcmp(y[0], y[1], (size_t)N * 4) == 0, "%s M=1: 1 vs 2 threads", mg_type_name(type));
        CHECK_MSG(y[2] && memcmp(y[0], y[2], (size_t)N * 4) == 0, "%s M=1: 1 vs 3 threads", mg_type_name(type));
        double max_rel = 0;
        CHECK_EQ_INT(mm_compare(y[0], &c, 1, N, K, &max_rel), 0);
        for (int i = 0; i < 3; i++) free(y[i]);
        free(work);
        mm_case_free(&c);
    }
}

/* The SIMD activation quantizers must produce the reference bytes exactly. */
TEST(kernels_simd_quantize_q8_0_exact) {
    const int64_t K = 4096;
    float *x = malloc(K * sizeof(float));
    unsigned char *a = malloc(mg_row_size(MG_TYPE_Q8_0, K)), *b = malloc(mg_row_size(MG_TYPE_Q8_0, K));
    CHECK(x && a && b);
    int tested = 0;
    uint64_t rng = 5;
    for (int which = 1; which < 3 && x && a && b; which++) {
        bool have;
        mg_kernel_table tb = table_for(which, &have);
        if (!have) continue;
        tested++;
        for (int it = 0; it < 50; it++) {
            for (int64_t i = 0; i < K; i++) {
                x[i] = test_rng_float(&rng) * powf(10.0f, (float)(it % 9) - 4.0f);
                if (it % 5 == 1) x[i] = (float)((int)(x[i] * 1000) % 9) * 0.5f; /* halves: ties */
            }
            if (it == 3) memset(x, 0, 32 * sizeof(float));
            mg_quantize_row(MG_TYPE_Q8_0, x, a, K);
            tb.quantize_q8_0(x, b, K);
            CHECK_MSG(memcmp(a, b, mg_row_size(MG_TYPE_Q8_0, K)) == 0, "%s quantizer differs (it %d)",
                      tb.name, it);
        }
    }
    if (!tested) CHECK_MSG(1, "no SIMD variant on this CPU");
    free(x);
    free(a);
    free(b);
}

/* Attention loops of every table (and the public entry points) against double sums, on head
 * sizes with SIMD tails (1, 88 as ViT-g, 130, 257) and key counts around the 4-key group; the
 * score of key t must not depend on how many keys follow it. */
TEST(kernels_attn_vs_double) {
    const int ds[] = {1, 16, 88, 128, 130, 257};
    const int64_t ns[] = {1, 3, 4, 5, 37};
    uint64_t rng = 77;
    int checked = 0;
    for (size_t di = 0; di < MG_ARRAY_LEN(ds); di++) {
        for (size_t ni = 0; ni < MG_ARRAY_LEN(ns); ni++) {
            const int d = ds[di];
            const int64_t n = ns[ni], stride = d + 3;
            float *q = malloc((size_t)d * sizeof(float)), *kv = malloc((size_t)(n * stride) * sizeof(float));
            float *p = malloc((size_t)n * sizeof(float)), *out = malloc((size_t)(n + d) * sizeof(float));
            float *again = malloc((size_t)n * sizeof(float));
            CHECK(q && kv && p && out && again);
            if (!q || !kv || !p || !out || !again) return;
            for (int i = 0; i < d; i++) q[i] = test_rng_float(&rng);
            for (int64_t i = 0; i < n * stride; i++) kv[i] = test_rng_float(&rng) * 3.0f;
            for (int64_t t = 0; t < n; t++) p[t] = (test_rng_float(&rng) + 1.0f) / (float)n;
            for (int which = 0; which < 3; which++) { /* public (selected path), avx2, avx512 */
                mg_scores_fn sf = mg_attn_scores;
                mg_values_fn vf = mg_attn_values;
                if (which >= 1 && which <= 2) {
                    bool have;
                    mg_kernel_table tb = table_for(which, &have);
                    if (!have || !tb.attn_scores || !tb.attn_values) continue;
                    sf = tb.attn_scores;
                    vf = tb.attn_values;
                }
                const float scale = 0.125f;
                sf(out, q, kv, stride, n, d, scale);
                int bad = 0;
                for (int64_t t = 0; t < n; t++) {
                    double e = 0, mag = 0;
                    for (int i = 0; i < d; i++) {
                        e += (double)q[i] * kv[t * stride + i];
                        mag += fabs((double)q[i] * kv[t * stride + i]);
                    }
                    e *= scale;
                    mag *= scale;
                    bad += !(fabs(out[t] - e) <= mm_tol(d) * mag + 1e-30);
                    sf(again, q, kv, stride, t + 1, d, scale);
                    bad += memcmp(&again[t], &out[t], sizeof(float)) != 0;
                }
                CHECK_MSG(bad == 0, "attn_scores path %d d=%d n=%lld: %d bad", which, d, (long long)n, bad);
                vf(out, p, kv, stride, n, d);
                bad = 0;
                for (int i = 0; i < d; i++) {
                    double e = 0, mag = 0;
                    for (int64_t t = 0; t < n; t++) {
                        e += (double)p[t] * kv[t * stride + i];
                        mag += fabs((double)p[t] * kv[t * stride + i]);
                    }
                    bad += !(fabs(out[i] - e) <= mm_tol(n) * mag + 1e-30);
                }
                CHECK_MSG(bad == 0, "attn_values path %d d=%d n=%lld: %d bad", which, d, (long long)n, bad);
                checked++;
            }
            free(q);
            free(kv);
            free(p);
            free(out);
            free(again);
        }
    }
    CHECK(checked > 0);
}

/* SIMD rmsnorm / softmax / silu / gelu / layernorm of every table (and the public *_simd entry
 * points) against the scalar functions, per element within 4e-7 relative (a few ulp;
 * docs/numerics.md; layernorm also allows an ulp of the mean), on lengths with tails and on edge
 * values: zeros, exp over- and underflow, a fully masked softmax row. */
TEST(kernels_ops_simd_vs_ref) {
    const int64_t lens[] = {1, 15, 16, 17, 384, 1000};
    uint64_t rng = 99;
    int checked = 0;
    double worst[5] = {0, 0, 0, 0, 0}; /* max |a - b| / |a| per op (gelu: / |x|), every path */
    for (size_t li = 0; li < MG_ARRAY_LEN(lens); li++) {
        const int64_t n = lens[li];
        float *x = malloc((size_t)n * sizeof(float)), *w = malloc((size_t)n * sizeof(float));
        float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
        CHECK(x && w && a && b);
        if (!x || !w || !a || !b) return;
        for (int rep = 0; rep < 4; rep++) {
            const float scale = rep == 0 ? 1.0f : rep == 1 ? 10.0f : rep == 2 ? 60.0f : 0.01f;
            for (int64_t i = 0; i < n; i++) {
                x[i] = test_rng_float(&rng) * scale;
                w[i] = 1.0f + test_rng_float(&rng);
            }
            if (n >= 16) {
                x[3] = 0.0f;
                x[5] = -0.0f;
                x[7] = rep == 2 ? 120.0f : -120.0f; /* exp overflow / underflow */
                x[11] = -95.0f;                     /* exp(95) near the top, exp(-95) subnormal */
            }
            for (int which = 0; which < 3; which++) {
                void (*rms)(float *, const float *, const float *, int64_t, float) = mg_rmsnorm_simd;
                double (*sm)(float *, int64_t) = mg_softmax_simd;
                void (*si)(float *, int64_t) = mg_silu_simd;
                void (*ge)(float *, int64_t) = mg_gelu_simd;
                void (*ln)(float *, const float *, const float *, const float *, int64_t, float) =
                    mg_layernorm_simd;
                if (which > 0) {
                    bool have;
                    mg_kernel_table tb = table_for(which, &have);
                    if (!have || !tb.rmsnorm || !tb.softmax || !tb.silu || !tb.gelu || !tb.layernorm)
                        continue;
                    rms = tb.rmsnorm;
                    sm = tb.softmax;
                    si = tb.silu;
                    ge = tb.gelu;
                    ln = tb.layernorm;
                }
                /* layernorm: the mean and 1/std of x in double, for its bound */
                double mean = 0, var = 0;
                for (int64_t i = 0; i < n; i++) mean += x[i];
                mean /= (double)n;
                for (int64_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
                const double rstd = 1.0 / sqrt(var / (double)n + 1e-6);
                for (int op = 0; op < 5; op++) {
                    memcpy(a, x, (size_t)n * sizeof(float));
                    memcpy(b, x, (size_t)n * sizeof(float));
                    if (op == 0) {
                        mg_rmsnorm(a, x, w, n, 1e-6f);
                        rms(b, x, w, n, 1e-6f);
                    } else if (op == 1) {
                        const double la = mg_softmax(a, n), lb = sm(b, n);
                        CHECK_MSG(fabs(la - lb) <= 1e-6 * fmax(1.0, fabs(la)), "log-sum-exp %.9g vs %.9g", la, lb);
                    } else if (op == 2) {
                        mg_silu(a, n);
                        si(b, n);
                    } else if (op == 3) {
                        mg_gelu(a, n);
                        ge(b, n);
                    } else { /* the bias: the weights shifted, so that it is not 1 */
                        mg_layernorm(a, x, w, w + (n > 1), n - (n > 1), 1e-6f);
                        ln(b, x, w, w + (n > 1), n - (n > 1), 1e-6f);
                        if (n > 1) a[n - 1] = b[n - 1] = 0.0f;
                    }
                    int bad = 0;
                    for (int64_t i = 0; i < n; i++) {
                        /* gelu: relative to |x| (its negative tail underflows, see numerics.md);
                         * layernorm: plus an ulp of the mean, scaled as x - mean is */
                        const double ref = op == 3   ? fabs((double)x[i])
                                           : op == 4 ? fabs((double)a[i]) + fabs((double)w[i]) * fabs(mean) * rstd
                                                     : fabs((double)a[i]);
                        const double e = fabs((double)a[i] - b[i]);
                        bad += !(e <= 4e-7 * ref + 1e-37);
                        if (ref > 1e-30 && e / ref > worst[op]) worst[op] = e / ref;
                    }
                    CHECK_MSG(bad == 0, "op %d path %d n=%lld scale %g: %d bad", op, which, (long long)n,
                              scale, bad);
                    checked++;
                }
            }
        }
        for (int64_t i = 0; i < n; i++) a[i] = -INFINITY;
        CHECK(mg_softmax_simd(a, n) == -INFINITY);
        int nz = 0;
        for (int64_t i = 0; i < n; i++) nz += a[i] != 0.0f;
        CHECK_EQ_INT(nz, 0);
        free(x);
        free(w);
        free(a);
        free(b);
    }
    CHECK(checked > 0);
    printf("    max rel diff from the scalar ops: rmsnorm %.2g softmax %.2g silu %.2g gelu %.2g "
           "layernorm %.2g\n",
           worst[0], worst[1], worst[2], worst[3], worst[4]);
}

TEST(kernels_get_row) {
    const int64_t K = 64;
    float w[3 * 64], row[64], want[64];
    uint64_t rng = 3;
    for (int i = 0; i < 3 * 64; i++) w[i] = test_rng_float(&rng);
    for (size_t t = 0; t < sizeof mm_types / sizeof mm_types[0]; t++) {
        size_t rs = mg_row_size(mm_types[t], K);
        unsigned char buf[3 * 64 * 4];
        for (int r = 0; r < 3; r++) mg_quantize_row(mm_types[t], w + r * K, buf + r * rs, K);
        mg_get_row_f32(buf, mm_types[t], K, 2, row);
        mg_dequantize_row(mm_types[t], buf + 2 * rs, want, K);
        CHECK(memcmp(row, want, sizeof row) == 0);
        /* and it is close to the original row */
        double err = 0;
        for (int k = 0; k < K; k++) err = fmax(err, fabs(row[k] - w[2 * K + k]));
        CHECK_MSG(err < 0.15, "%s get_row err %g", mg_type_name(mm_types[t]), err);
    }
}

/* ==== ops ==== */

static bool write_floats(const char *path, const float *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(p, sizeof *p, n, f) == n;
    return fclose(f) == 0 && ok;
}

static float *read_floats(const char *dir, const char *name, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    size_t sz = 0;
    float *p = test_read_file(path, &sz);
    if (p && sz != n * sizeof(float)) {
        free(p);
        return NULL;
    }
    return p;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

TEST(kernels_ops_vs_torch) {
    enum { R = 6, D = 384 };
    const char *dir = test_data_dir();
    static float x[R * D], w[D], b[D], out[R * D], t[R * D];
    uint64_t rng = 11;
    for (int i = 0; i < R * D; i++) x[i] = test_rng_float(&rng) * (float)(1 + i / D);
    for (int i = 0; i < D; i++) {
        w[i] = 1.0f + 0.5f * test_rng_float(&rng);
        b[i] = 0.1f * test_rng_float(&rng);
    }
    x[5 * D + 1] = 30.0f; /* an outlier row */
    char px[4096], pw[4096], pb[4096];
    snprintf(px, sizeof px, "%s/ops_x.f32", dir);
    snprintf(pw, sizeof pw, "%s/ops_w.f32", dir);
    snprintf(pb, sizeof pb, "%s/ops_b.f32", dir);
    CHECK(write_floats(px, x, R * D) && write_floats(pw, w, D) && write_floats(pb, b, D));
    CHECK_EQ_INT(test_run("%s tests/ref/kernels_ref.py ops %s %s %s %s", test_python(), px, pw, pb, dir), 0);
    const char *names[] = {"rmsnorm.f32", "layernorm.f32", "softmax.f32", "silu.f32", "gelu.f32"};
    const double tols[] = {2e-6, 4e-6, 1e-7, 4e-6, 4e-6}; /* docs/numerics.md */
    for (int k = 0; k < 5; k++) {
        float *ref = read_floats(dir, names[k], R * D);
        CHECK_MSG(ref != NULL, "missing %s", names[k]);
        if (!ref) continue;
        memcpy(t, x, sizeof t);
        for (int r = 0; r < R; r++) {
            float *row = t + r * D;
            switch (k) {
            case 0: mg_rmsnorm(out + r * D, row, w, D, 1e-6f); break;
            case 1: mg_layernorm(out + r * D, row, w, b, D, 1e-5f); break;
            default:
                for (int i = 0; i < D; i++) row[i] *= 8.0f;
                if (k == 2) mg_softmax(row, D);
                if (k == 3) mg_silu(row, D);
                if (k == 4) mg_gelu(row, D);
                memcpy(out + r * D, row, D * sizeof(float));
            }
        }
        /* tolerance relative to the output magnitude */
        double scale = 0;
        for (int i = 0; i < R * D; i++) scale = fmax(scale, fabs(ref[i]));
        double err = max_abs_diff(out, ref, R * D);
        CHECK_MSG(err <= tols[k] * fmax(scale, 1.0), "%s: max err %.3g (scale %.3g)", names[k], err, scale);
        free(ref);
    }
}

TEST(kernels_ops_closed_form) {
    float v[4] = {1, 2, 3, 4}, y[4] = {2, 2, 2, 2};
    mg_vec_mul(v, y, 4);
    CHECK(v[3] == 8.0f);
    mg_vec_add(v, y, 4);
    CHECK(v[0] == 4.0f);
    float s[3] = {0.0f, logf(2.0f), logf(5.0f)};
    mg_softmax(s, 3);
    CHECK_CLOSE(s[0], 0.125, 1e-7);
    CHECK_CLOSE(s[2], 0.625, 1e-7);
    float m[2] = {-INFINITY, -INFINITY};
    mg_softmax(m, 2);
    CHECK(m[0] == 0.0f && m[1] == 0.0f);
    float g[3] = {0.0f, 1.0f, -100.0f};
    mg_gelu(g, 3);
    CHECK_CLOSE(g[1], 0.841344746, 1e-7); /* Phi(1) */
    CHECK(g[2] == 0.0f);
    float si[2] = {0.0f, -200.0f};
    mg_silu(si, 2);
    CHECK(si[0] == 0.0f && si[1] == 0.0f && !signbit(si[0]));
    float r[4] = {3, 4, 0, 0}, o[4];
    mg_rmsnorm(o, r, NULL, 4, 0.0f); /* rms = 2.5 */
    CHECK_CLOSE(o[0], 1.2, 1e-6);
    mg_layernorm(o, r, NULL, NULL, 4, 0.0f);
    double sum = o[0] + o[1] + o[2] + o[3];
    CHECK_CLOSE(sum, 0.0, 1e-6);
}

TEST(kernels_rope_vs_numpy) {
    const char *dir = test_data_dir();
    const int hd = 128;
    const int pos[] = {0, 1, 2, 7, 100, 511, 2047, 4095};
    const int np_ = (int)(sizeof pos / sizeof pos[0]);
    static float x[8 * 128], y[8 * 128];
    uint64_t rng = 21;
    for (int i = 0; i < np_ * hd; i++) x[i] = test_rng_float(&rng);
    char px[4096];
    snprintf(px, sizeof px, "%s/rope_x.f32", dir);
    CHECK(write_floats(px, x, (size_t)np_ * hd));
    CHECK_EQ_INT(test_run("%s tests/ref/kernels_ref.py rope %s %s %d %g 0 1 2 7 100 511 2047 4095",
                          test_python(), px, dir, hd, 10000.0), 0);
    float *ref = read_floats(dir, "rope.f32", (size_t)np_ * hd);
    CHECK(ref != NULL);
    if (!ref) return;
    memcpy(y, x, sizeof y);
    int cache_bad = 0;
    for (int p = 0; p < np_; p++) {
        float again[128];
        memcpy(again, x + p * hd, sizeof again);
        mg_rope_neox(y + p * hd, hd, pos[p], 10000.0f);
        mg_rope_neox(again, hd, pos[p], 10000.0f); /* same position: served from the cache */
        cache_bad += memcmp(again, y + p * hd, sizeof again) != 0;
    }
    CHECK_EQ_INT(cache_bad, 0);
    for (int p = 0; p < np_; p++) {
        /* fp32 angle (as HF) vs float64: error ~ pos * 2^-24 rad per element */
        double tol = 2e-6 + 1.2e-7 * pos[p] * 2;
        double err = max_abs_diff(y + p * hd, ref + p * hd, hd);
        CHECK_MSG(err <= tol, "pos %d: max err %.3g (tol %.3g)", pos[p], err, tol);
    }
    free(ref);
}

/* mg_transpose: the selected path gives exactly the element-wise transpose on tile-sized, edge
 * and odd shapes (the trainer's backward runs on it). */
TEST(kernels_transpose) {
    static const int64_t shapes[][2] = {{1, 1}, {1, 37}, {37, 1}, {15, 16}, {16, 16}, {17, 33}, {32, 48},
                                        {145, 384}, {384, 128}, {50, 1367}};
    uint64_t rng = 4242;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t R = shapes[s][0], C = shapes[s][1];
        float *src = malloc((size_t)(R * C) * sizeof(float)), *dst = malloc((size_t)(R * C + 1) * sizeof(float));
        CHECK(src && dst);
        if (!src || !dst) {
            free(src);
            free(dst);
            return;
        }
        for (int64_t i = 0; i < R * C; i++) src[i] = test_rng_float(&rng);
        dst[R * C] = 12345.0f; /* guard: nothing written past the end */
        mg_transpose(dst, src, R, C);
        int64_t bad = 0;
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++) bad += dst[c * R + r] != src[r * C + c];
        CHECK_MSG(bad == 0, "%lld x %lld: %lld wrong elements", (long long)R, (long long)C, (long long)bad);
        CHECK(dst[R * C] == 12345.0f);
        free(src);
        free(dst);
    }
}

/* AdamW (the trainer's update) on every path: exactly the bits of the scalar loop, on lengths with
 * tails, gradients from tiny to large, first steps (small second moments) and later ones. */
TEST(kernels_adamw_bits) {
    const int64_t lens[] = {1, 15, 16, 17, 100, 1001};
    uint64_t rng = 99;
    int checked = 0;
    for (size_t li = 0; li < MG_ARRAY_LEN(lens); li++) {
        const int64_t n = lens[li];
        float *buf = malloc(sizeof(float) * (size_t)n * 7);
        CHECK(buf != NULL);
        if (!buf) return;
        float *g = buf, *p0 = buf + n, *m10 = buf + 2 * n, *m20 = buf + 3 * n, *pa = buf + 4 * n, *ma = buf + 5 * n,
              *va = buf + 6 * n;
        for (int64_t i = 0; i < n; i++) {
            const float e = (float)(i % 7) - 3.0f; /* magnitudes 1e-3 .. 1e3 */
            g[i] = test_rng_float(&rng) * powf(10.0f, e);
            p0[i] = test_rng_float(&rng);
            m10[i] = test_rng_float(&rng) * 0.1f;
            m20[i] = fabsf(test_rng_float(&rng)) * 0.01f;
        }
        g[0] = 0.0f;
        for (int t = 1; t <= 1000; t += 999) {
            const double bc1 = 1.0 - pow(0.9, t), bc2 = 1.0 - pow(0.999, t);
            const mg_adamw_coef c = {.decay = 1.0f - 2e-3f * 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                                     .step_size = (float)(2e-3 / bc1), .bc2_sqrt = (float)sqrt(bc2)};
            float *want = malloc(sizeof(float) * (size_t)n * 3);
            CHECK(want != NULL);
            if (!want) break;
            /* the scalar loop of torch.optim.AdamW, written out here */
            for (int64_t i = 0; i < n; i++) {
                float p = p0[i] * c.decay;
                const float m1 = m10[i] * c.beta1 + g[i] * (1.0f - c.beta1);
                const float m2 = m20[i] * c.beta2 + g[i] * g[i] * (1.0f - c.beta2);
                p -= c.step_size * (m1 / (sqrtf(m2) / c.bc2_sqrt + c.eps));
                want[i] = p;
                want[n + i] = m1;
                want[2 * n + i] = m2;
            }
            for (int which = 0; which < 3; which++) {
                void (*fn)(float *, const float *, float *, float *, int64_t, const mg_adamw_coef *) = mg_adamw;
                if (which > 0) {
                    bool have;
                    mg_kernel_table tb = table_for(which, &have);
                    if (!have) continue;
                    fn = tb.adamw ? tb.adamw : mg_adamw; /* AVX2 keeps the reference */
                }
                memcpy(pa, p0, sizeof(float) * (size_t)n);
                memcpy(ma, m10, sizeof(float) * (size_t)n);
                memcpy(va, m20, sizeof(float) * (size_t)n);
                fn(pa, g, ma, va, n, &c);
                CHECK_MSG(memcmp(pa, want, sizeof(float) * (size_t)n) == 0 &&
                              memcmp(ma, want + n, sizeof(float) * (size_t)n) == 0 &&
                              memcmp(va, want + 2 * n, sizeof(float) * (size_t)n) == 0,
                          "adamw path %d n=%lld step %d", which, (long long)n, t);
                checked++;
            }
            free(want);
        }
        free(buf);
    }
    CHECK(checked >= 12);
}

/* GELU's derivative (the trainer's backward) of every table against the double-precision
 * reference, accumulated into a non-zero dx, on lengths with tails and on x from the far
 * negative tail (density underflow) to large positive values; and mg_vec_add, which must give
 * exactly the bits of the scalar loop on every path. */
TEST(kernels_gelu_bwd_and_vec_add) {
    const int64_t lens[] = {1, 15, 16, 17, 384, 1001};
    uint64_t rng = 1234;
    double worst = 0;
    int checked = 0;
    for (size_t li = 0; li < MG_ARRAY_LEN(lens); li++) {
        const int64_t n = lens[li];
        float *x = malloc((size_t)n * sizeof(float)), *g = malloc((size_t)n * sizeof(float));
        float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
        float *d0 = malloc((size_t)n * sizeof(float));
        CHECK(x && g && a && b && d0);
        if (!x || !g || !a || !b || !d0) return;
        for (int rep = 0; rep < 3; rep++) {
            const float scale = rep == 0 ? 1.0f : rep == 1 ? 4.0f : 30.0f;
            for (int64_t i = 0; i < n; i++) {
                x[i] = test_rng_float(&rng) * scale;
                g[i] = test_rng_float(&rng);
                d0[i] = test_rng_float(&rng);
            }
            if (n >= 16) {
                x[2] = 0.0f;
                x[4] = -40.0f; /* Phi and phi underflow: GELU' = 0 */
                x[6] = 40.0f;  /* GELU' = 1 */
                x[8] = -5.0f;
            }
            for (int which = 0; which < 3; which++) {
                void (*fn)(float *, const float *, const float *, int64_t) = mg_gelu_bwd_simd;
                void (*add)(float *, const float *, int64_t) = mg_vec_add;
                if (which > 0) {
                    bool have;
                    mg_kernel_table tb = table_for(which, &have);
                    if (!have) continue;
                    fn = tb.gelu_bwd ? tb.gelu_bwd : mg_gelu_bwd;
                    add = tb.vec_add ? tb.vec_add : add;
                }
                memcpy(a, d0, (size_t)n * sizeof(float));
                memcpy(b, d0, (size_t)n * sizeof(float));
                mg_gelu_bwd(a, g, x, n);
                fn(b, g, x, n);
                int bad = 0;
                for (int64_t i = 0; i < n; i++) {
                    /* the derivative is within [-0.17, 1.13]; a few fp32 ulp of its terms */
                    const double scale_i = fabs((double)d0[i]) + fabs((double)g[i]);
                    const double e = fabs((double)a[i] - b[i]);
                    bad += !(e <= 1e-6 * scale_i);
                    if (scale_i > 0 && e / scale_i > worst) worst = e / scale_i;
                }
                CHECK_MSG(bad == 0, "gelu_bwd path %d n=%lld scale %g: %d bad", which, (long long)n, scale, bad);
                if (n >= 16) {
                    CHECK(b[4] == d0[4]);
                    CHECK(fabsf(b[6] - (d0[6] + g[6])) <= 1e-6f);
                }
                memcpy(a, d0, (size_t)n * sizeof(float));
                memcpy(b, d0, (size_t)n * sizeof(float));
                for (int64_t i = 0; i < n; i++) a[i] += x[i];
                add(b, x, n);
                CHECK_MSG(memcmp(a, b, (size_t)n * sizeof(float)) == 0, "vec_add path %d n=%lld", which, (long long)n);
                checked++;
            }
        }
        free(x);
        free(g);
        free(a);
        free(b);
        free(d0);
    }
    CHECK(checked > 0);
    printf("    gelu_bwd max diff from double / (|dx| + |dout|): %.2g\n", worst);
}

/* Elements of C (= C0 + op(A) . B in fp32) off the double-precision sum by more than the bound of a
 * sequential fp32 sum, (K + 1) * 2^-24 * (|C0| + sum |a b|); *worst gets the largest error / bound scale. */
static int gemm_outside_bound(const float *C, const float *C0, const float *A, const float *B, int64_t M, int64_t N,
                              int64_t K, bool trans, double *worst) {
    int bad = 0;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double sum = C0[m * N + n], mag = fabs((double)C0[m * N + n]);
            for (int64_t k = 0; k < K; k++) {
                const double p = (double)(trans ? A[k * M + m] : A[m * K + k]) * B[k * N + n];
                sum += p;
                mag += fabs(p);
            }
            const double e = fabs(sum - C[m * N + n]);
            bad += !(e <= (double)(K + 1) * 0x1p-24 * mag);
            if (mag > 0 && e / mag > *worst) *worst = e / mag;
        }
    return bad;
}

/* mg_gemm_acc (the trainer's backward products): C + op(A) . B against a double-precision sum on
 * tile-sized, tail and odd shapes, both layouts of A, on the reference and the selected path,
 * within the fp32 accumulation bound (K + 1) * 2^-24 * (|C| + sum |a b|); and 1, 2 and 3
 * threads give the same bits (each element is summed in one order whatever the split). */
TEST(kernels_gemm_acc) {
    static const int64_t shapes[][3] = {{1, 1, 1},    {1, 37, 5},    {7, 33, 17},    {6, 32, 256},
                                        {13, 31, 257}, {49, 129, 3},  {145, 128, 384}, {50, 300, 128}};
    uint64_t rng = 5150;
    mg_pool *pools[3] = {NULL, NULL, NULL};
    for (int t = 1; t < 3; t++) CHECK(mg_pool_create(&pools[t], t + 1) == MG_OK);
    double worst = 0;
    int tables = 0;
    for (size_t s = 0; s < MG_ARRAY_LEN(shapes); s++) {
        const int64_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *A = malloc((size_t)(M * K) * sizeof(float)), *B = malloc((size_t)(K * N) * sizeof(float));
        float *C0 = malloc((size_t)(M * N) * sizeof(float)), *C = malloc((size_t)(M * N + 1) * sizeof(float));
        float *C1 = malloc((size_t)(M * N) * sizeof(float));
        CHECK(A && B && C0 && C && C1);
        if (!A || !B || !C0 || !C || !C1) return;
        for (int64_t i = 0; i < M * K; i++) A[i] = test_rng_float(&rng);
        for (int64_t i = 0; i < K * N; i++) B[i] = test_rng_float(&rng);
        for (int64_t i = 0; i < M * N; i++) C0[i] = test_rng_float(&rng);
        for (int trans = 0; trans < 2; trans++)
            for (int use_ref = 0; use_ref < 2; use_ref++) {
                const mg_kernel_opts o = {use_ref != 0};
                int bad = 0;
                for (int t = 0; t < 3; t++) {
                    memcpy(C, C0, (size_t)(M * N) * sizeof(float));
                    C[M * N] = 777.0f; /* guard */
                    mg_gemm_acc(pools[t], &o, C, A, B, M, N, K, trans != 0);
                    CHECK(C[M * N] == 777.0f);
                    if (t == 0) {
                        memcpy(C1, C, (size_t)(M * N) * sizeof(float));
                        bad += gemm_outside_bound(C, C0, A, B, M, N, K, trans != 0, &worst);
                    } else {
                        CHECK_MSG(memcmp(C, C1, (size_t)(M * N) * sizeof(float)) == 0, "%lld x %lld x %lld: %d threads differ",
                                  (long long)M, (long long)N, (long long)K, t + 1);
                    }
                }
                CHECK_MSG(bad == 0, "%lld x %lld x %lld trans %d ref %d: %d outside the bound", (long long)M, (long long)N,
                          (long long)K, trans, use_ref, bad);
            }
        for (int trans = 0; trans < 2; trans++) /* each SIMD table directly, whole C in one block */
            for (int which = 1; which < 3; which++) {
                bool have;
                mg_kernel_table tb = table_for(which, &have);
                if (!have || !tb.gemm_acc) continue;
                memcpy(C, C0, (size_t)(M * N) * sizeof(float));
                tb.gemm_acc(C, A, B, M, N, K, trans != 0, 0, M, 0, N);
                const int bad = gemm_outside_bound(C, C0, A, B, M, N, K, trans != 0, &worst);
                CHECK_MSG(bad == 0, "table %d: %lld x %lld x %lld trans %d: %d outside the bound", which, (long long)M,
                          (long long)N, (long long)K, trans, bad);
                tables++;
            }
        free(A);
        free(B);
        free(C0);
        free(C);
        free(C1);
    }
    for (int t = 1; t < 3; t++) mg_pool_free(pools[t]);
    printf("    max |err| / (|C| + sum |a b|): %.2g; %d SIMD table runs\n", worst, tables);
}
