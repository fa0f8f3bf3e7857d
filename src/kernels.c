/*
 * kernels.c - kernel dispatch, the scalar reference matmul for every weight type, and the
 * elementwise / normalisation ops. The reference kernels define the results (see kernels.h
 * and docs/numerics.md); SIMD variants are picked once from CPUID/XGETBV, unless the env
 * variable MINIGPT_FORCE_REF=1 or mg_kernel_opts.use_ref asks for the reference.
 */
#include "kernels.h"

#include "kernels_simd.h"
#include "quant.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define MG_X86 1
#endif

/* ==== reference dot products ==== */

static float dot_f32_ref(const float *x, const float *w, int64_t K) {
    float s = 0.0f;
    for (int64_t k = 0; k < K; k++) s += x[k] * w[k];
    return s;
}

static float dot_f16_ref(const float *x, const mg_fp16 *w, int64_t K) {
    float s = 0.0f;
    for (int64_t k = 0; k < K; k++) s += x[k] * mg_fp16_to_fp32(w[k]);
    return s;
}

static float dot_bf16_ref(const float *x, const mg_bf16 *w, int64_t K) {
    float s = 0.0f;
    for (int64_t k = 0; k < K; k++) s += x[k] * mg_bf16_to_fp32(w[k]);
    return s;
}

static float dot_q8_0_ref(const block_q8_0 *x, const block_q8_0 *w, int64_t nb) {
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int32_t isum = 0;
        for (int j = 0; j < QK8_0; j++) isum += (int32_t)x[i].qs[j] * w[i].qs[j];
        s += (float)isum * (mg_fp16_to_fp32(w[i].d) * mg_fp16_to_fp32(x[i].d));
    }
    return s;
}

static float dot_q4_0_ref(const block_q8_0 *x, const block_q4_0 *w, int64_t nb) {
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int32_t isum = 0;
        for (int j = 0; j < QK4_0 / 2; j++) {
            isum += ((w[i].qs[j] & 0x0f) - 8) * (int32_t)x[i].qs[j];
            isum += ((w[i].qs[j] >> 4) - 8) * (int32_t)x[i].qs[j + QK4_0 / 2];
        }
        s += (float)isum * (mg_fp16_to_fp32(w[i].d) * mg_fp16_to_fp32(x[i].d));
    }
    return s;
}

static void mm_ref(const mg_mm_args *a, int64_t n0, int64_t n1) {
    const size_t wrow = mg_row_size(a->wtype, a->K);
    const int64_t nb = a->K / QK8_0;
    for (int64_t n = n0; n < n1; n++) {
        const void *wr = (const char *)a->w + (size_t)n * wrow;
        for (int64_t m = 0; m < a->M; m++) {
            const float *xr = a->x + m * a->K;
            const block_q8_0 *xq = a->xq ? (const void *)((const char *)a->xq + (size_t)m * a->xq_stride)
                                         : NULL;
            float v = 0.0f;
            switch (a->wtype) {
            case MG_TYPE_F32: v = dot_f32_ref(xr, wr, a->K); break;
            case MG_TYPE_F16: v = dot_f16_ref(xr, wr, a->K); break;
            case MG_TYPE_BF16: v = dot_bf16_ref(xr, wr, a->K); break;
            case MG_TYPE_Q8_0: v = dot_q8_0_ref(xq, wr, nb); break;
            case MG_TYPE_Q4_0: v = dot_q4_0_ref(xq, wr, nb); break;
            default: v = NAN; break;
            }
            a->y[m * a->N + n] = v;
        }
    }
}

static void quantize_q8_0_ref(const float *x, void *y, int64_t k) {
    mg_quantize_row(MG_TYPE_Q8_0, x, y, k);
}

/* Reference attention loops: sequential fp32 sums (no FMA), as the float matmul. */
static void attn_scores_ref(float *s, const float *q, const float *k, int64_t stride, int64_t n,
                            int d, float scale) {
    for (int64_t t = 0; t < n; t++) s[t] = scale * dot_f32_ref(q, k + t * stride, d);
}

static void attn_values_ref(float *o, const float *p, const float *v, int64_t stride, int64_t n,
                            int d) {
    for (int i = 0; i < d; i++) o[i] = 0.0f;
    for (int64_t t = 0; t < n; t++)
        for (int i = 0; i < d; i++) o[i] += p[t] * v[t * stride + i];
}

/* dst[c * R + r] = src[r * C + c], in 32 x 32 tiles. */
static void transpose_ref(float *dst, const float *src, int64_t R, int64_t C) {
    for (int64_t r0 = 0; r0 < R; r0 += 32)
        for (int64_t c0 = 0; c0 < C; c0 += 32) {
            const int64_t r1 = MG_MIN(R, r0 + 32), c1 = MG_MIN(C, c0 + 32);
            for (int64_t r = r0; r < r1; r++)
                for (int64_t c = c0; c < c1; c++) dst[c * R + r] = src[r * C + c];
        }
}

/* ==== dispatch ==== */

static void vec_add_ref(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

static void adamw_ref(float *p, const float *g, float *m1, float *m2, int64_t n, const mg_adamw_coef *c) {
    const float b1 = c->beta1, b2 = c->beta2, c1 = 1.0f - b1, c2 = 1.0f - b2;
    for (int64_t i = 0; i < n; i++) {
        p[i] *= c->decay;
        m1[i] = m1[i] * b1 + g[i] * c1;
        m2[i] = m2[i] * b2 + g[i] * g[i] * c2;
        const float denom = sqrtf(m2[i]) / c->bc2_sqrt + c->eps;
        p[i] -= c->step_size * (m1[i] / denom);
    }
}

/* C rows [m0, m1) x columns [n0, n1) += op(A) . B, row by row, k ascending (per element the order of
 * the SIMD paths). */
static void gemm_acc_ref(float *C, const float *A, const float *B, int64_t M, int64_t N, int64_t K, bool a_trans,
                         int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    for (int64_t m = m0; m < m1; m++)
        for (int64_t k = 0; k < K; k++) {
            const float a = a_trans ? A[k * M + m] : A[m * K + k];
            const float *b = B + k * N;
            float *c = C + m * N;
            for (int64_t n = n0; n < n1; n++) c[n] += a * b[n];
        }
}

/* mg_matmul_wide's definition for float weights: y = fma(x[k], w[k], y) for k = 0 .. K-1 from 0,
 * each product and sum rounded once (fmaf), as the SIMD chains do. */
static void mmw_ref(const mg_mm_args *a, int64_t n0, int64_t n1) {
    const int64_t ldx = a->ldx ? a->ldx : a->K, ldy = a->ldy ? a->ldy : a->N;
    const bool km = a->w_kmajor && a->wtype == MG_TYPE_F32;
    const size_t esz = mg_row_size(a->wtype, 1);
    const size_t ldw = a->ldw ? (size_t)a->ldw * esz : km ? (size_t)a->N * esz : mg_row_size(a->wtype, a->K);
    for (int64_t n = n0; n < n1; n++) {
        /* W(n, k) at wr + k * step */
        const char *wr = (const char *)a->w + (km ? (size_t)n * esz : (size_t)n * ldw);
        const size_t step = km ? ldw : esz;
        for (int64_t m = 0; m < a->M; m++) {
            const float *xr = a->x + m * ldx;
            float v = 0.0f;
            for (int64_t k = 0; k < a->K; k++) {
                const void *e = wr + (size_t)k * step;
                float w;
                switch (a->wtype) {
                case MG_TYPE_F16: w = mg_fp16_to_fp32(*(const mg_fp16 *)e); break;
                case MG_TYPE_BF16: w = mg_bf16_to_fp32(*(const mg_bf16 *)e); break;
                default: w = *(const float *)e; break;
                }
                v = fmaf(xr[k], w, v);
            }
            const mg_mm_epilogue *ep = a->ep;
            if (!ep) {
                a->y[m * ldy + n] = v;
                continue;
            }
            if (ep->bias) v += ep->bias[n];
            if (ep->gelu) mg_gelu_simd(&v, 1);
            if (ep->add_to) ep->add_to[m * ldy + n] += v;
            else a->y[m * ldy + n] = v;
        }
    }
}

static const mg_kernel_table ref_table = {
    "ref", mm_ref, mm_ref, mm_ref, mm_ref, mm_ref, quantize_q8_0_ref, attn_scores_ref, attn_values_ref,
    mg_rmsnorm, mg_layernorm, mg_softmax, mg_silu, mg_gelu, transpose_ref, mg_gelu_bwd, vec_add_ref,
    adamw_ref, gemm_acc_ref, mmw_ref, mmw_ref, mmw_ref,
};
static mg_kernel_table sel_table;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

#ifdef MG_X86
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t)hi << 32 | lo;
}
#endif

typedef struct {
    bool avx2, avx512; /* usable: CPU support and OS-enabled register state */
} cpu_caps;

static cpu_caps detect_cpu(void) {
    cpu_caps c = {false, false};
#ifdef MG_X86
    unsigned a, b, cx, d;
    if (!__get_cpuid(1, &a, &b, &cx, &d)) return c;
    bool fma = cx >> 12 & 1, osxsave = cx >> 27 & 1, avx = cx >> 28 & 1, f16c = cx >> 29 & 1;
    if (!osxsave || !avx) return c;
    uint64_t xcr0 = read_xcr0();
    bool os_avx = (xcr0 & 0x6) == 0x6;            /* XMM and YMM state */
    bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0; /* opmask, ZMM_Hi256, Hi16_ZMM */
    if (__get_cpuid_max(0, NULL) < 7) return c;
    __cpuid_count(7, 0, a, b, cx, d);
    bool avx2 = b >> 5 & 1, f = b >> 16 & 1, dq = b >> 17 & 1, bw = b >> 30 & 1, vl = b >> 31 & 1;
    bool vnni = cx >> 11 & 1, vbmi = cx >> 1 & 1;
    c.avx2 = os_avx && avx2 && fma && f16c;
    c.avx512 = c.avx2 && os_avx512 && f && dq && bw && vl && vnni && vbmi;
#endif
    return c;
}

static void init_tables(void) {
    sel_table = ref_table;
    const char *e = getenv("MINIGPT_FORCE_REF");
    if (e && *e && strcmp(e, "0") != 0) return;
    cpu_caps c = detect_cpu();
    mg_kernel_table t = ref_table;
    if (c.avx512 && mg_kernels_fill_avx512(&t)) {
        sel_table = t;
        return;
    }
    t = ref_table;
    t.mmw_f32 = t.mmw_f16 = t.mmw_bf16 = NULL; /* the AVX2 variant has no wide kernels */
    if (c.avx2 && mg_kernels_fill_avx2(&t)) sel_table = t;
}

/* Selects the kernels once (idempotent, thread-safe). */
void mg_kernels_init(void) { pthread_once(&init_once, init_tables); }

/* Name of the selected kernel path. */
const char *mg_kernels_isa(void) {
    mg_kernels_init();
    return sel_table.name;
}

/* ==== matmul ==== */

/* Scratch bytes for mg_matmul: the Q8_0 copy of x for quantized weights, else 0. */
size_t mg_matmul_work_size(int wtype, int64_t M, int64_t K) {
    if (wtype != MG_TYPE_Q8_0 && wtype != MG_TYPE_Q4_0) return 0;
    if (M <= 0) return 0;
    size_t row = mg_row_size(MG_TYPE_Q8_0, K), sz;
    if (!row || !mg_mul_ok(row, (size_t)M, &sz)) return 0;
    return sz;
}

/* Chunks per thread of a parallel one-row (decode) matmul, claimed dynamically (mm_task).
 * Larger M keeps one chunk per thread, the static split: there the tail of 8 chunks cost
 * ~2% on 7B prefill shapes. */
#define MM_CHUNKS_PER_THREAD 8

typedef struct {
    const mg_kernel_table *t;
    mg_mm_args a;
    mg_mm_fn fn;
    int64_t tile;         /* output columns per scheduling unit */
    int64_t chunk;        /* units per chunk */
    int64_t n_chunks;
    atomic_llong next;    /* next unclaimed chunk */
} mm_job;

static void quant_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    mm_job *j = ctx;
    for (int64_t m = i0; m < i1; m++)
        j->t->quantize_q8_0(j->a.x + m * j->a.K, (char *)j->a.xq + (size_t)m * j->a.xq_stride,
                            j->a.K);
}

/* Each thread claims chunks of columns until none is left: a thread that lost its core to
 * another process leaves its share to the others instead of holding up the whole matmul. The
 * value of every output element does not depend on which call computes it (kernels_simd.h). */
static void mm_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    mm_job *j = ctx;
    for (;;) {
        const int64_t c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (c >= j->n_chunks) break;
        const int64_t n0 = c * j->chunk * j->tile, n1 = MG_MIN((c + 1) * j->chunk * j->tile, j->a.N);
        if (n1 > n0) j->fn(&j->a, n0, n1);
    }
}

/* Runs j->fn over the output columns: units of `tile` columns, grouped in chunks of at least
 * ~256 KiB of weights x rows (so a small matmul stays on one thread); M = 1 takes about
 * MM_CHUNKS_PER_THREAD per thread. */
static void mm_schedule(mg_pool *pool, mm_job *j) {
    const int64_t M = j->a.M, N = j->a.N;
    const int64_t units = (N + j->tile - 1) / j->tile;
    const size_t unit_bytes = mg_row_size(j->a.wtype, j->a.K) * (size_t)j->tile * (size_t)M;
    const int64_t min_units = (int64_t)MG_MAX((size_t)1, ((size_t)1 << 18) / MG_MAX(unit_bytes, (size_t)1));
    const int nt = mg_pool_n_threads(pool);
    const int64_t per = (int64_t)nt * (M == 1 ? MM_CHUNKS_PER_THREAD : 1);
    j->chunk = nt == 1 ? units : MG_MAX(min_units, (units + per - 1) / per);
    j->n_chunks = (units + j->chunk - 1) / j->chunk;
    atomic_init(&j->next, 0);
    mg_pool_run(pool, MG_MIN((int64_t)nt, j->n_chunks), 1, mm_task, j);
}

/* y[M, N] = x[M, K] . W[N, K]^T, parallel over output columns (weight rows). */
void mg_matmul(mg_pool *pool, const mg_kernel_opts *o, float *y, const float *x, const void *w,
               int wtype, int64_t M, int64_t N, int64_t K, void *work) {
    if (M <= 0 || N <= 0) return;
    mg_kernels_init();
    const mg_type_traits *tr = mg_get_type_traits(wtype);
    mm_job j;
    j.t = (o && o->use_ref) ? &ref_table : &sel_table;
    j.a = (mg_mm_args){.y = y, .x = x, .w = w, .wtype = wtype, .M = M, .N = N, .K = K};
    j.tile = 16;
    switch (wtype) {
    case MG_TYPE_F32: j.fn = j.t->mm_f32; break;
    case MG_TYPE_F16: j.fn = j.t->mm_f16; break;
    case MG_TYPE_BF16: j.fn = j.t->mm_bf16; break;
    case MG_TYPE_Q8_0: j.fn = j.t->mm_q8_0; break;
    case MG_TYPE_Q4_0: j.fn = j.t->mm_q4_0; break;
    default: j.fn = NULL; break;
    }
    if (!j.fn || !tr || K <= 0 || K % tr->blck_size) {
        for (int64_t i = 0; i < M * N; i++) y[i] = NAN; /* misuse: make it visible */
        return;
    }
    void *own = NULL;
    if (wtype == MG_TYPE_Q8_0 || wtype == MG_TYPE_Q4_0) {
        size_t ws = mg_matmul_work_size(wtype, M, K);
        if (!work) work = own = malloc(ws);
        if (!work) {
            for (int64_t i = 0; i < M * N; i++) y[i] = NAN;
            return;
        }
        j.a.xq = work;
        j.a.xq_stride = mg_row_size(MG_TYPE_Q8_0, K);
        mg_pool_run(pool, M, 8, quant_task, &j);
    }
    mm_schedule(pool, &j);
    free(own);
}

/* y[M, N] = x[M, K] . W[N, K]^T for float weights with one fused multiply-add chain per output
 * (kernels.h); other types, and a variant without wide kernels, go to mg_matmul. */
typedef struct {
    float *y;
    int64_t N;
    const mg_mm_epilogue *ep;
} ep_job;

/* The epilogue as passes over rows [i0, i1), for the paths whose kernels have none. */
static void ep_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    const ep_job *j = ctx;
    for (int64_t m = i0; m < i1; m++) {
        float *r = j->y + m * j->N;
        if (j->ep->bias) sel_table.vec_add(r, j->ep->bias, j->N);
        if (j->ep->gelu) mg_gelu_simd(r, j->N);
        if (j->ep->add_to) sel_table.vec_add(j->ep->add_to + m * j->N, r, j->N);
    }
}

void mg_matmul_wide(mg_pool *pool, const mg_kernel_opts *o, float *y, const float *x, const void *w,
                    int wtype, int64_t M, int64_t N, int64_t K, void *work) {
    mg_matmul_wide_ep(pool, o, y, x, w, wtype, M, N, K, work, NULL);
}

static mg_mm_fn wide_fn(const mg_kernel_table *t, int wtype) {
    switch (wtype) {
    case MG_TYPE_F32: return t->mmw_f32;
    case MG_TYPE_F16: return t->mmw_f16;
    case MG_TYPE_BF16: return t->mmw_bf16;
    default: return NULL;
    }
}

bool mg_matmul_wide_strided(mg_pool *pool, const mg_kernel_opts *o, float *y, int64_t ldy, const float *x,
                            int64_t ldx, const void *w, int64_t ldw, bool w_kmajor, int wtype, int64_t M,
                            int64_t N, int64_t K, const mg_mm_epilogue *ep) {
    mg_kernels_init();
    mm_job j;
    j.t = (o && o->use_ref) ? &ref_table : &sel_table;
    j.fn = wide_fn(j.t, wtype);
    if (!j.fn || (w_kmajor && wtype != MG_TYPE_F32) || K <= 0) return false;
    if (M <= 0 || N <= 0) return true;
    if (ep && !ep->bias && !ep->gelu && !ep->add_to) ep = NULL;
    j.a = (mg_mm_args){.y = y, .x = x, .w = w, .wtype = wtype, .M = M, .N = N, .K = K, .ep = ep,
                       .ldx = ldx, .ldy = ldy, .ldw = ldw, .w_kmajor = w_kmajor};
    j.tile = 16; /* ranges need not start on a 64-column panel: a short one is masked */
    mm_schedule(pool, &j);
    return true;
}

void mg_matmul_wide_ep(mg_pool *pool, const mg_kernel_opts *o, float *y, const float *x, const void *w,
                       int wtype, int64_t M, int64_t N, int64_t K, void *work, const mg_mm_epilogue *ep) {
    if (M <= 0 || N <= 0) return;
    if (mg_matmul_wide_strided(pool, o, y, 0, x, 0, w, 0, false, wtype, M, N, K, ep)) return;
    /* no wide kernel for this type or variant: mg_matmul, then the epilogue as passes */
    mg_matmul(pool, o, y, x, w, wtype, M, N, K, work);
    if (ep && (ep->bias || ep->gelu || ep->add_to)) {
        ep_job e = {y, N, ep};
        mg_pool_run(pool, M, 4, ep_task, &e);
    }
}

/* Blocks of C for mg_gemm_acc: GEMM_MB rows (a multiple of the 6-row tile) x GEMM_NB columns.
 * Every sum runs over k in one order whatever the blocks; 12 rows let a product of one image of
 * the demo tower (145 rows) split evenly over two threads (48 gave one thread 96 rows). */
#define GEMM_MB 12
#define GEMM_NB 128

typedef struct {
    const mg_kernel_table *t;
    float *C;
    const float *A, *B;
    int64_t M, N, K, nbn;
    bool a_trans;
} gemm_job;

static void gemm_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    const gemm_job *j = ctx;
    for (int64_t u = i0; u < i1; u++) {
        const int64_t m0 = u / j->nbn * GEMM_MB, n0 = u % j->nbn * GEMM_NB;
        j->t->gemm_acc(j->C, j->A, j->B, j->M, j->N, j->K, j->a_trans, m0, MG_MIN(m0 + GEMM_MB, j->M), n0,
                       MG_MIN(n0 + GEMM_NB, j->N));
    }
}

void mg_gemm_acc(mg_pool *pool, const mg_kernel_opts *o, float *C, const float *A, const float *B, int64_t M,
                 int64_t N, int64_t K, bool a_trans) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    mg_kernels_init();
    gemm_job j = {(o && o->use_ref) ? &ref_table : &sel_table, C, A, B, M, N, K, (N + GEMM_NB - 1) / GEMM_NB, a_trans};
    const int64_t units = (M + GEMM_MB - 1) / GEMM_MB * j.nbn;
    /* a small product stays on one thread: at least ~1 MFLOP per part */
    const int64_t min_units = MG_MAX((int64_t)1, ((int64_t)1 << 19) / MG_MAX((int64_t)1, GEMM_MB * GEMM_NB * K / 2));
    mg_pool_run(pool, units, min_units, gemm_task, &j);
}

/* s[t] = scale * dot(q, k + t * stride) for t < n, with the selected kernels. */
void mg_attn_scores(float *s, const float *q, const float *k, int64_t stride, int64_t n, int d, float scale) {
    mg_kernels_init();
    if (n > 0 && d > 0) sel_table.attn_scores(s, q, k, stride, n, d, scale);
}

/* o = sum_t p[t] * (v + t * stride)[0, d), with the selected kernels. */
void mg_attn_values(float *o, const float *p, const float *v, int64_t stride, int64_t n, int d) {
    mg_kernels_init();
    if (d <= 0) return;
    if (n <= 0) {
        for (int i = 0; i < d; i++) o[i] = 0.0f;
        return;
    }
    sel_table.attn_values(o, p, v, stride, n, d);
}

/* mg_rmsnorm / mg_layernorm / mg_softmax / mg_silu / mg_gelu with the selected kernels. */
void mg_rmsnorm_simd(float *out, const float *x, const float *weight, int64_t n, float eps) {
    mg_kernels_init();
    if (n > 0) sel_table.rmsnorm(out, x, weight, n, eps);
}

void mg_layernorm_simd(float *out, const float *x, const float *weight, const float *bias, int64_t n,
                       float eps) {
    mg_kernels_init();
    if (n > 0) sel_table.layernorm(out, x, weight, bias, n, eps);
}

double mg_softmax_simd(float *x, int64_t n) {
    mg_kernels_init();
    return n > 0 ? sel_table.softmax(x, n) : -INFINITY;
}

void mg_silu_simd(float *x, int64_t n) {
    mg_kernels_init();
    if (n > 0) sel_table.silu(x, n);
}

void mg_gelu_simd(float *x, int64_t n) {
    mg_kernels_init();
    if (n > 0) sel_table.gelu(x, n);
}

void mg_gelu_bwd_simd(float *dx, const float *dout, const float *x, int64_t n) {
    mg_kernels_init();
    if (n > 0) sel_table.gelu_bwd(dx, dout, x, n);
}

void mg_transpose(float *dst, const float *src, int64_t R, int64_t C) {
    mg_kernels_init();
    if (R > 0 && C > 0) sel_table.transpose(dst, src, R, C);
}

/* Converts row `row` of a weight matrix [N, K] of type wtype to fp32. */
void mg_get_row_f32(const void *w, int wtype, int64_t K, int64_t row, float *dst) {
    size_t rs = mg_row_size(wtype, K);
    if (!rs) {
        for (int64_t k = 0; k < K; k++) dst[k] = NAN;
        return;
    }
    mg_dequantize_row(wtype, (const char *)w + rs * (size_t)row, dst, K);
}

/* ==== ops ==== */

/* out = weight * (x / sqrt(mean(x^2) + eps)); the sum of squares is accumulated in double
 * (closer to PyTorch's pairwise fp32 mean than a naive fp32 loop). weight may be NULL. */
void mg_rmsnorm(float *out, const float *x, const float *weight, int64_t n, float eps) {
    if (n <= 0) return;
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float r = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    for (int64_t i = 0; i < n; i++) out[i] = weight ? weight[i] * (x[i] * r) : x[i] * r;
}

/* out = (x - mean) / sqrt(var + eps) * weight + bias, biased variance, two passes in double.
 * weight / bias may be NULL (1 / 0). */
void mg_layernorm(float *out, const float *x, const float *weight, const float *bias, int64_t n,
                  float eps) {
    if (n <= 0) return;
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    const double mean = s / (double)n;
    double v = 0.0;
    for (int64_t i = 0; i < n; i++) v += (x[i] - mean) * (x[i] - mean);
    const float rstd = (float)(1.0 / sqrt(v / (double)n + eps));
    const float meanf = (float)mean;
    for (int64_t i = 0; i < n; i++) {
        float t = (x[i] - meanf) * rstd;
        if (weight) t *= weight[i];
        if (bias) t += bias[i];
        out[i] = t;
    }
}

/* In-place softmax: exp(x - max) / sum, sum in double. A row that is all -inf (fully masked)
 * becomes all zeros instead of NaN. */
double mg_softmax(float *x, int64_t n) {
    if (n <= 0) return -INFINITY;
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        if (x[i] > mx) mx = x[i];
    if (mx == -INFINITY) {
        memset(x, 0, (size_t)n * sizeof *x);
        return -INFINITY;
    }
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        s += x[i];
    }
    const float inv = (float)(1.0 / s);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
    return (double)mx + log(s);
}

/* x = x * sigmoid(x), computed as x / (1 + exp(-x)) like torch. */
void mg_silu(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i]));
}

/* Exact GELU: x * 0.5 * (1 + erf(x / sqrt(2))), as torch.nn.GELU(). */
void mg_gelu(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = x[i] * 0.5f * (1.0f + erff(x[i] * (float)M_SQRT1_2));
}

/* x *= y elementwise. */
void mg_vec_mul(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] *= y[i];
}

/* GELU'(x) = Phi(x) + x phi(x), accumulated into dx, in double. */
void mg_gelu_bwd(float *dx, const float *dout, const float *x, int64_t n) {
    const double inv_sqrt_2pi = 0.3989422804014327;
    for (int64_t i = 0; i < n; i++) {
        const double xi = x[i];
        const double d = 0.5 * (1.0 + erf(xi * M_SQRT1_2)) + xi * inv_sqrt_2pi * exp(-0.5 * xi * xi);
        dx[i] += (float)(dout[i] * d);
    }
}

/* x += y elementwise (one rounding per element on every path). */
void mg_vec_add(float *x, const float *y, int64_t n) {
    mg_kernels_init();
    if (n > 0) sel_table.vec_add(x, y, n);
}

void mg_adamw(float *p, const float *g, float *m1, float *m2, int64_t n, const mg_adamw_coef *c) {
    mg_kernels_init();
    if (n > 0) sel_table.adamw(p, g, m1, m2, n, c);
}

/* cos/sin table of the last (head_dim, pos, theta) seen by this thread: all heads of a token
 * share it, so the trigonometry runs once per position instead of once per head. */
#define ROPE_CACHE_MAX 512
static _Thread_local struct {
    int head_dim, pos;
    float theta;
    bool valid;
    float c[ROPE_CACHE_MAX / 2], s[ROPE_CACHE_MAX / 2];
} rope_cache;

static void rope_cs(int head_dim, int pos, float theta, int i, float *c, float *s) {
    /* as HF: inv_freq = 1 / theta^(2i/d) in fp32, angle = pos * inv_freq in fp32 */
    const float inv = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
    const float ang = (float)pos * inv;
    *c = (float)cos((double)ang);
    *s = (float)sin((double)ang);
}

/* NeoX (rotate-half) RoPE on one head: (x_i, x_{i+d/2}) rotated by pos * theta^(-2i/d). */
void mg_rope_neox(float *x, int head_dim, int pos, float theta) {
    if (head_dim < 2) return;
    const int half = head_dim / 2;
    const bool cacheable = head_dim <= ROPE_CACHE_MAX;
    if (cacheable && !(rope_cache.valid && rope_cache.head_dim == head_dim &&
                       rope_cache.pos == pos && rope_cache.theta == theta)) {
        for (int i = 0; i < half; i++) rope_cs(head_dim, pos, theta, i, &rope_cache.c[i], &rope_cache.s[i]);
        rope_cache.head_dim = head_dim;
        rope_cache.pos = pos;
        rope_cache.theta = theta;
        rope_cache.valid = true;
    }
    for (int i = 0; i < half; i++) {
        float c, s;
        if (cacheable) {
            c = rope_cache.c[i];
            s = rope_cache.s[i];
        } else {
            rope_cs(head_dim, pos, theta, i, &c, &s);
        }
        const float x0 = x[i], x1 = x[i + half];
        x[i] = x0 * c - x1 * s;
        x[i + half] = x1 * c + x0 * s;
    }
}
