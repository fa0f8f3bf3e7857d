/*
 * train_ops.c - forward-with-cache and backward of the ops of the trainable model (see
 * train_ops.h). Reference-quality fp32 code: plain loops, row statistics in double, the matmuls
 * split over the thread pool by rows (dx) or by output features (dW), so no two workers ever
 * write the same float and the result does not depend on the number of threads.
 */
#include "train_ops.h"

#include "internal.h"
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ==== Linear ==== */

/* Forward through the engine's fp32 matmul (threaded, SIMD), then the bias. */
void tr_linear_fwd(mg_pool *pool, float *y, const float *x, const float *W, const float *b, int64_t M,
                   int64_t N, int64_t K) {
    static const mg_kernel_opts kopts = {false};
    mg_matmul(pool, &kopts, y, x, W, MG_TYPE_F32, M, N, K, NULL);
    if (b)
        for (int64_t m = 0; m < M; m++) mg_vec_add(y + m * N, b, N);
}

typedef struct {
    float *db;
    const float *dy;
    int64_t M, N;
} lin_bwd_ctx;

/* db[n] += sum_m dy[m, n] for columns [i0, i1), each summed in double, m ascending. Eight
 * columns at a time, their sums held in registers over all rows (each column's chain of
 * additions is the same as in a loop of its own). */
static void lin_bwd_db_task(void *vc, int64_t i0, int64_t i1, int ith) {
    const lin_bwd_ctx *c = vc;
    int64_t n = i0;
    for (; n + 8 <= i1; n += 8) {
        double acc[8] = {0};
        for (int64_t m = 0; m < c->M; m++) {
            const float *row = c->dy + m * c->N + n;
            for (int k = 0; k < 8; k++) acc[k] += row[k];
        }
        for (int k = 0; k < 8; k++) c->db[n + k] += (float)acc[k];
    }
    for (; n < i1; n++) {
        double acc = 0.0;
        for (int64_t m = 0; m < c->M; m++) acc += c->dy[m * c->N + n];
        c->db[n] += (float)acc;
    }
}

/* Backward of y = x W^T + b; each of dx, dW, db may be NULL. Both products accumulate in place
 * through the engine's fp32 C += op(A) . B kernel (SIMD, threaded), no copies:
 *   dx[M, K] += dy[M, N] . W[N, K]          dW[N, K] += (dy[M, N])^T . x[M, K] */
void tr_linear_bwd(mg_pool *pool, float *dx, float *dW, float *db, const float *dy, const float *x,
                   const float *W, int64_t M, int64_t N, int64_t K) {
    static const mg_kernel_opts kopts = {false};
    lin_bwd_ctx c = {db, dy, M, N};
    if (dx) mg_gemm_acc(pool, &kopts, dx, dy, W, M, K, N, false);
    if (dW) mg_gemm_acc(pool, &kopts, dW, dy, x, N, K, M, true);
    if (db) mg_pool_run(pool, N, 64, lin_bwd_db_task, &c);
}

/* LoRA branch: two thin products and a scaled add (see train_ops.h). */
void tr_lora_fwd(mg_pool *pool, float *y, float *tmp, float *u, const float *x, const float *A, const float *B,
                 int64_t M, int64_t N, int64_t K, int64_t R, float scale) {
    tr_linear_fwd(pool, u, x, A, NULL, M, R, K);
    tr_linear_fwd(pool, tmp, u, B, NULL, M, N, R);
    for (int64_t i = 0; i < M * N; i++) y[i] += scale * tmp[i];
}

/* Backward of tr_lora_fwd through the two products' backward (see train_ops.h). */
void tr_lora_bwd(mg_pool *pool, float *dx, float *dA, float *dB, const float *dy, const float *x, const float *u,
                 const float *A, const float *B, float *dz, float *du, int64_t M, int64_t N, int64_t K, int64_t R,
                 float scale) {
    for (int64_t i = 0; i < M * N; i++) dz[i] = scale * dy[i];
    memset(du, 0, (size_t)(M * R) * sizeof(float));
    tr_linear_bwd(pool, du, dB, NULL, dz, u, B, M, N, R);
    if (dx || dA) tr_linear_bwd(pool, dx, dA, NULL, du, x, A, M, R, K);
}

/* ==== Normalisations ==== */

typedef struct {
    float *out, *mean, *rstd, *dx, *dw, *db;
    const float *x, *w, *b, *dout, *cmean, *crstd;
    int64_t M, C;
    float eps;
} ln_ctx;

/* Rows per group in the row statistics below: each row's sums are one chain of double additions
 * in the order of its elements (the bits of a plain loop), and the chains of four rows are
 * interleaved so that they overlap instead of waiting on each other's latency. */
#define ROWS_ILP 4

/* Sum and sum of squared deviations of R rows of C floats (R = 1 or ROWS_ILP). */
static inline __attribute__((always_inline)) void ln_row_stats(const float *x, int64_t C, int R, double *mu,
                                                               double *var) {
    double s[ROWS_ILP] = {0}, v[ROWS_ILP] = {0};
    for (int64_t i = 0; i < C; i++)
        for (int k = 0; k < R; k++) s[k] += x[k * C + i];
    for (int k = 0; k < R; k++) mu[k] = s[k] / (double)C;
    for (int64_t i = 0; i < C; i++)
        for (int k = 0; k < R; k++) v[k] += (x[k * C + i] - mu[k]) * (x[k * C + i] - mu[k]);
    for (int k = 0; k < R; k++) var[k] = v[k];
}

/* LayerNorm forward of rows [i0, i1); mean and variance (biased, as PyTorch) in double. */
static void ln_fwd_task(void *vc, int64_t i0, int64_t i1, int ith) {
    const ln_ctx *c = vc;
    const int64_t C = c->C;
    for (int64_t m = i0; m < i1;) {
        const int R = i1 - m >= ROWS_ILP ? ROWS_ILP : 1;
        double mu[ROWS_ILP], v[ROWS_ILP];
        if (R == ROWS_ILP) ln_row_stats(c->x + m * C, C, ROWS_ILP, mu, v);
        else ln_row_stats(c->x + m * C, C, 1, mu, v);
        for (int k = 0; k < R; k++, m++) {
            const float *xm = c->x + m * C;
            const double r = 1.0 / sqrt(v[k] / (double)C + (double)c->eps);
            c->mean[m] = (float)mu[k];
            c->rstd[m] = (float)r;
            float *om = c->out + m * C;
            for (int64_t i = 0; i < C; i++) om[i] = (float)((xm[i] - mu[k]) * r) * c->w[i] + c->b[i];
        }
    }
}

/* Rows are independent: split over the pool's threads when called outside a pool task (inside one,
 * as in the trainer's batch, where each thread runs whole examples, it runs serially); the same
 * bits on any thread count. */
void tr_layernorm_fwd(mg_pool *pool, float *out, float *mean, float *rstd, const float *x, const float *w,
                      const float *b, int64_t M, int64_t C, float eps) {
    ln_ctx c = {.out = out, .mean = mean, .rstd = rstd, .x = x, .w = w, .b = b, .M = M, .C = C, .eps = eps};
    mg_pool_run(pool, M, 32, ln_fwd_task, &c);
}

/* sum(g) and sum(g * xhat) of R rows (R = 1 or ROWS_ILP), g = dout * w, each a chain of double
 * additions in element order (interleaved as in ln_row_stats). */
static inline __attribute__((always_inline)) void ln_bwd_sums(const ln_ctx *c, int64_t m, int R, double *sg,
                                                              double *sgx) {
    const int64_t C = c->C;
    const float *x = c->x + m * C, *d = c->dout + m * C;
    float mu[ROWS_ILP], r[ROWS_ILP];
    double a[ROWS_ILP] = {0}, b[ROWS_ILP] = {0};
    for (int k = 0; k < R; k++) mu[k] = c->cmean[m + k], r[k] = c->crstd[m + k];
    for (int64_t i = 0; i < C; i++)
        for (int k = 0; k < R; k++) {
            const float xh = (x[k * C + i] - mu[k]) * r[k], g = d[k * C + i] * c->w[i];
            a[k] += g;
            b[k] += (double)g * xh;
        }
    for (int k = 0; k < R; k++) sg[k] = a[k], sgx[k] = b[k];
}

/* dx of rows [i0, i1): rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * w. */
static void ln_bwd_dx_task(void *vc, int64_t i0, int64_t i1, int ith) {
    const ln_ctx *c = vc;
    const int64_t C = c->C;
    for (int64_t m = i0; m < i1;) {
        const int R = i1 - m >= ROWS_ILP ? ROWS_ILP : 1;
        double sg[ROWS_ILP], sgx[ROWS_ILP];
        if (R == ROWS_ILP) ln_bwd_sums(c, m, ROWS_ILP, sg, sgx);
        else ln_bwd_sums(c, m, 1, sg, sgx);
        for (int k = 0; k < R; k++, m++) {
            const float *xm = c->x + m * C, *dm = c->dout + m * C;
            const float mu = c->cmean[m], r = c->crstd[m];
            const float mg = (float)(sg[k] / (double)C), mgx = (float)(sgx[k] / (double)C);
            float *dxm = c->dx + m * C;
            for (int64_t i = 0; i < C; i++) {
                const float xh = (xm[i] - mu) * r;
                dxm[i] += r * (dm[i] * c->w[i] - mg - xh * mgx);
            }
        }
    }
}

/* dw, db of columns [i0, i1): each summed over the rows in ascending order, in float. */
static void ln_bwd_dwb_task(void *vc, int64_t i0, int64_t i1, int ith) {
    const ln_ctx *c = vc;
    const int64_t C = c->C;
    for (int64_t m = 0; m < c->M; m++) {
        const float *xm = c->x + m * C, *dm = c->dout + m * C;
        const float mu = c->cmean[m], r = c->crstd[m];
        for (int64_t i = i0; i < i1; i++) {
            const float xh = (xm[i] - mu) * r;
            if (c->dw) c->dw[i] += dm[i] * xh;
            if (c->db) c->db[i] += dm[i];
        }
    }
}

/* LayerNorm backward: dx row by row, dw and db column by column, each part on the pool's threads
 * (serially inside a pool task, as tr_layernorm_fwd);
 * every sum keeps its order, so the bits do not depend on the thread count. */
void tr_layernorm_bwd(mg_pool *pool, float *dx, float *dw, float *db, const float *dout, const float *x,
                      const float *mean, const float *rstd, const float *w, int64_t M, int64_t C) {
    ln_ctx c = {.dx = dx, .dw = dw, .db = db, .x = x, .w = w, .dout = dout, .cmean = mean, .crstd = rstd,
                .M = M, .C = C};
    if (dx) mg_pool_run(pool, M, 32, ln_bwd_dx_task, &c);
    if (dw || db) mg_pool_run(pool, C, 32, ln_bwd_dwb_task, &c);
}

/* RMSNorm forward; the mean square is accumulated in double. */
void tr_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int64_t M, int64_t C, float eps) {
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * C;
        double ss = 0.0;
        for (int64_t i = 0; i < C; i++) ss += (double)xm[i] * xm[i];
        const float r = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
        rstd[m] = r;
        float *om = out + m * C;
        for (int64_t i = 0; i < C; i++) om[i] = xm[i] * r * w[i];
    }
}

/* RMSNorm backward: dx = r * g - x * r^3 * mean(g * x) with g = dout * w. */
void tr_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *rstd, const float *w,
                    int64_t M, int64_t C) {
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * C, *dm = dout + m * C;
        const float r = rstd[m];
        double sgx = 0.0;
        for (int64_t i = 0; i < C; i++) {
            sgx += (double)dm[i] * w[i] * xm[i];
            if (dw) dw[i] += dm[i] * xm[i] * r;
        }
        if (!dx) continue;
        const float c = (float)(sgx / (double)C) * r * r * r;
        float *dxm = dx + m * C;
        for (int64_t i = 0; i < C; i++) dxm[i] += r * dm[i] * w[i] - xm[i] * c;
    }
}

/* ==== Elementwise ==== */

/* GELU (exact erf form) with the engine's selected kernel, as the inference path computes it. */
void tr_gelu_fwd(float *out, const float *x, int64_t n) {
    if (out != x) memcpy(out, x, (size_t)n * sizeof(float));
    mg_gelu_simd(out, n);
}

/* GELU'(x) = Phi(x) + x * phi(x), accumulated (the selected kernel, fp32). */
void tr_gelu_bwd(float *dx, const float *dout, const float *x, int64_t n) { mg_gelu_bwd_simd(dx, dout, x, n); }

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* SiLU forward. */
void tr_silu_fwd(float *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * sigmoidf(x[i]);
}

/* SiLU'(x) = s * (1 + x * (1 - s)), s = sigmoid(x). */
void tr_silu_bwd(float *dx, const float *dout, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float s = sigmoidf(x[i]);
        dx[i] += dout[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

/* SwiGLU product forward. */
void tr_swiglu_fwd(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = gate[i] * sigmoidf(gate[i]) * up[i];
}

/* SwiGLU product backward. */
void tr_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float s = sigmoidf(gate[i]), sl = gate[i] * s;
        if (dup) dup[i] += dout[i] * sl;
        if (dgate) dgate[i] += dout[i] * up[i] * s * (1.0f + gate[i] * (1.0f - s));
    }
}

/* Row softmax forward. */
void tr_softmax_fwd(float *y, const float *x, int64_t M, int64_t C) {
    if (y != x) memcpy(y, x, (size_t)(M * C) * sizeof(float));
    for (int64_t m = 0; m < M; m++) mg_softmax_simd(y + m * C, C); /* sum in double */
}

/* Row softmax backward. */
void tr_softmax_bwd(float *dx, const float *dy, const float *y, int64_t M, int64_t C) {
    for (int64_t m = 0; m < M; m++) {
        const float *ym = y + m * C, *dym = dy + m * C;
        double s = 0.0;
        for (int64_t i = 0; i < C; i++) s += (double)dym[i] * ym[i];
        float *dxm = dx + m * C;
        for (int64_t i = 0; i < C; i++) dxm[i] += ym[i] * (dym[i] - (float)s);
    }
}

/* ==== Attention ==== */

/* Same arithmetic as session.c's fill_rope_tables. */
void tr_rope_tables(float *cs, float *sn, int T, int head_dim, float theta) {
    const int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        const float inv = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
        for (int p = 0; p < T; p++) {
            const float a = (float)p * inv;
            cs[(size_t)p * half + i] = (float)cos((double)a);
            sn[(size_t)p * half + i] = (float)sin((double)a);
        }
    }
}

/* Rotation of adjacent pairs by +angle (or -angle when inverse). */
void tr_rope_apply(float *x, int T, int n_head, int head_dim, const float *cs, const float *sn, bool inverse) {
    const int half = head_dim / 2;
    for (int p = 0; p < T; p++) {
        const float *c = cs + (size_t)p * half, *s = sn + (size_t)p * half;
        for (int h = 0; h < n_head; h++) {
            float *v = x + ((size_t)p * n_head + h) * head_dim; /* [head_dim] */
            for (int i = 0; i < half; i++) {
                const float x0 = v[2 * i], x1 = v[2 * i + 1], si = inverse ? -s[i] : s[i];
                v[2 * i] = x0 * c[i] - x1 * si;
                v[2 * i + 1] = x0 * si + x1 * c[i];
            }
        }
    }
}

typedef struct {
    const tr_attn_dims *d;
    float *out, *att;
    const float *qr, *kr, *v;
    /* backward */
    float *dqr, *dkr, *dv, *rows;
    const float *dout;
} attn_ctx;

static inline float dotf(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Gathers head slice [T, hd] (row stride `stride`, column offset `off`) into a contiguous block;
 * and its transpose [hd, T] when `t` is not NULL. */
static void gather_head(float *dst, float *t, const float *src, int T, int hd, int stride, int off) {
    for (int i = 0; i < T; i++) memcpy(dst + (size_t)i * hd, src + (size_t)i * stride + off, (size_t)hd * sizeof(float));
    if (t) mg_transpose(t, dst, T, hd);
}

/* Forward for query heads [h0, h1) as two products through the fp32 matmul (serial inside the
 * task): scores = Q K^T, softmax over the (causal) row, out = A V. */
static void attn_fwd_task(void *vc, int64_t h0, int64_t h1, int ith) {
    static const mg_kernel_opts kopts = {false};
    const attn_ctx *c = vc;
    const tr_attn_dims *d = c->d;
    const int T = d->T, hd = d->head_dim, H = d->n_head, Hkv = d->n_head_kv, grp = H / Hkv;
    const int qs = H * hd, ks = Hkv * hd; /* row strides of q/out and k/v */
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t Th = (size_t)T * hd;
    float *s = malloc(4 * Th * sizeof(float));
    for (int64_t h = h0; h < h1; h++) {
        const int g = (int)h / grp;
        float *A = c->att + (size_t)h * T * T; /* [T, T] */
        if (s) {
            float *Q = s, *K = s + Th, *Vt = s + 2 * Th, *O = s + 3 * Th;
            gather_head(Q, NULL, c->qr, T, hd, qs, (int)h * hd);
            gather_head(K, NULL, c->kr, T, hd, ks, g * hd);
            gather_head(O, Vt, c->v, T, hd, ks, g * hd);
            mg_matmul(NULL, &kopts, A, Q, K, MG_TYPE_F32, T, T, hd, NULL);
        } else {
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++)
                    A[(size_t)i * T + j] = dotf(c->qr + (size_t)i * qs + h * hd, c->kr + (size_t)j * ks + g * hd, hd);
        }
        for (int i = 0; i < T; i++) {
            float *a = A + (size_t)i * T;
            const int n = d->causal ? i + 1 : T;
            for (int j = 0; j < n; j++) a[j] *= scale;
            mg_softmax_simd(a, n);
            for (int j = n; j < T; j++) a[j] = 0.0f;
        }
        if (s) {
            float *Vt = s + 2 * Th, *O = s + 3 * Th;
            mg_matmul(NULL, &kopts, O, A, Vt, MG_TYPE_F32, T, hd, T, NULL);
            for (int i = 0; i < T; i++) memcpy(c->out + (size_t)i * qs + h * hd, O + (size_t)i * hd, (size_t)hd * sizeof(float));
        } else {
            for (int i = 0; i < T; i++) {
                float *o = c->out + (size_t)i * qs + h * hd; /* [hd] */
                memset(o, 0, (size_t)hd * sizeof(float));
                for (int j = 0; j < T; j++) {
                    const float pj = A[(size_t)i * T + j];
                    const float *vj = c->v + (size_t)j * ks + g * hd;
                    for (int e = 0; e < hd; e++) o[e] += pj * vj[e];
                }
            }
        }
    }
    free(s);
}

/* Rotates (when RoPE is on) copies of q and k, then runs every head on the pool. */
void tr_attn_fwd(mg_pool *pool, const tr_attn_dims *d, float *out, float *qr, float *kr, float *att,
                 const float *q, const float *k, const float *v) {
    const size_t T = (size_t)d->T;
    memcpy(qr, q, T * d->n_head * d->head_dim * sizeof(float));
    memcpy(kr, k, T * d->n_head_kv * d->head_dim * sizeof(float));
    if (d->rope_cos) {
        tr_rope_apply(qr, d->T, d->n_head, d->head_dim, d->rope_cos, d->rope_sin, false);
        tr_rope_apply(kr, d->T, d->n_head_kv, d->head_dim, d->rope_cos, d->rope_sin, false);
    }
    attn_ctx c = {.d = d, .out = out, .att = att, .qr = qr, .kr = kr, .v = v};
    mg_pool_run(pool, d->n_head, 1, attn_fwd_task, &c);
}

/* Scratch size of the backward. */
size_t tr_attn_scratch_floats(const tr_attn_dims *d) {
    return (size_t)d->T * (size_t)(d->n_head + d->n_head_kv) * d->head_dim + (size_t)d->n_head_kv * d->T;
}

/* Backward for kv heads [g0, g1) (and all query heads that read them, so no write is shared):
 * plain loops, the fallback of attn_bwd_task when its scratch cannot be allocated. */
static void attn_bwd_loops(void *vc, int64_t g0, int64_t g1, int ith) {
    const attn_ctx *c = vc;
    const tr_attn_dims *d = c->d;
    const int T = d->T, hd = d->head_dim, H = d->n_head, Hkv = d->n_head_kv, grp = H / Hkv;
    const int qs = H * hd, ks = Hkv * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int64_t g = g0; g < g1; g++) {
        float *da = c->rows + (size_t)g * T; /* [T] d(loss)/d(att row), then d(scores row) */
        for (int h = (int)g * grp; h < (int)(g + 1) * grp; h++) {
            for (int i = 0; i < T; i++) {
                const float *a = c->att + ((size_t)h * T + i) * T;
                const float *dout = c->dout + (size_t)i * qs + h * hd;
                const int n = d->causal ? i + 1 : T;
                double s = 0.0;
                for (int j = 0; j < n; j++) {
                    const float *vj = c->v + (size_t)j * ks + g * hd;
                    da[j] = dotf(dout, vj, hd);
                    s += (double)da[j] * a[j];
                    if (c->dv) {
                        float *dvj = c->dv + (size_t)j * ks + g * hd;
                        for (int e = 0; e < hd; e++) dvj[e] += a[j] * dout[e];
                    }
                }
                const float *qi = c->qr + (size_t)i * qs + h * hd;
                float *dqi = c->dqr + (size_t)i * qs + h * hd;
                for (int j = 0; j < n; j++) {
                    const float ds = a[j] * (da[j] - (float)s) * scale;
                    if (ds == 0.0f) continue;
                    const float *kj = c->kr + (size_t)j * ks + g * hd;
                    float *dkj = c->dkr + (size_t)j * ks + g * hd;
                    for (int e = 0; e < hd; e++) {
                        dqi[e] += ds * kj[e];
                        dkj[e] += ds * qi[e];
                    }
                }
            }
        }
    }
}

/* sum[k] = sum over j < n_k of da[k, j] * a[k, j] in double, j ascending, for R rows of stride T
 * (R = 1 or ROWS_ILP); n_k = n0 + k when causal, else n0. The rows' chains run side by side over
 * their common length, then each finishes alone: every sum keeps the order of a plain loop. */
static inline void attn_row_sums(double *sum, const float *a, const float *da, int T, int n0, bool causal,
                                 int R) {
    double s[ROWS_ILP] = {0};
    if (R == ROWS_ILP) {
        for (int j = 0; j < n0; j++)
            for (int k = 0; k < ROWS_ILP; k++) s[k] += (double)da[(size_t)k * T + j] * a[(size_t)k * T + j];
    } else {
        for (int j = 0; j < n0; j++) s[0] += (double)da[j] * a[j];
    }
    for (int k = 0; k < R; k++) {
        const int n = causal ? n0 + k : n0;
        for (int j = n0; j < n; j++) s[k] += (double)da[(size_t)k * T + j] * a[(size_t)k * T + j];
        sum[k] = s[k];
    }
}

/* The same backward as matrix products per head through the fp32 matmul (run serially inside
 * this task: a nested pool run is serial):
 *   dA = dO V^T, dS = A * (dA - rowsum(dA * A)) * scale, dV += A^T dO, dQ = dS K, dK += dS^T Q. */
static void attn_bwd_task(void *vc, int64_t g0, int64_t g1, int ith) {
    static const mg_kernel_opts kopts = {false};
    const attn_ctx *c = vc;
    const tr_attn_dims *d = c->d;
    const int T = d->T, hd = d->head_dim, H = d->n_head, Hkv = d->n_head_kv, grp = H / Hkv;
    const int qs = H * hd, ks = Hkv * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t TT = (size_t)T * T, Th = (size_t)T * hd;
    float *s = malloc((3 * TT + 9 * Th) * sizeof(float));
    if (!s) {
        attn_bwd_loops(vc, g0, g1, ith);
        return;
    }
    float *dA = s, *dS = s + TT, *tr = s + 2 * TT;
    float *K = tr + TT, *Kt = K + Th, *V = Kt + Th, *Q = V + Th, *Qt = Q + Th, *dO = Qt + Th, *dOt = dO + Th;
    float *tmp = dOt + Th, *acc = tmp + Th;
    for (int64_t g = g0; g < g1; g++) {
        gather_head(K, Kt, c->kr, T, hd, ks, (int)g * hd);
        gather_head(V, NULL, c->v, T, hd, ks, (int)g * hd);
        for (int h = (int)g * grp; h < (int)(g + 1) * grp; h++) {
            const float *A = c->att + (size_t)h * TT; /* [T, T], zero above the causal diagonal */
            gather_head(Q, Qt, c->qr, T, hd, qs, h * hd);
            gather_head(dO, dOt, c->dout, T, hd, qs, h * hd);
            mg_matmul(NULL, &kopts, dA, dO, V, MG_TYPE_F32, T, T, hd, NULL);
            for (int i = 0; i < T;) { /* row sums of dA * A: ROWS_ILP rows' chains interleaved */
                const int R = T - i >= ROWS_ILP ? ROWS_ILP : 1;
                double sum[ROWS_ILP];
                attn_row_sums(sum, A + (size_t)i * T, dA + (size_t)i * T, T, d->causal ? i + 1 : T, d->causal,
                              R);
                for (int k = 0; k < R; k++, i++) {
                    const float *a = A + (size_t)i * T, *da = dA + (size_t)i * T;
                    float *ds = dS + (size_t)i * T;
                    const int n = d->causal ? i + 1 : T;
                    for (int j = 0; j < n; j++) ds[j] = a[j] * (da[j] - (float)sum[k]) * scale;
                    for (int j = n; j < T; j++) ds[j] = 0.0f;
                }
            }
            if (c->dv) { /* dV[j, e] += sum_i A[i, j] dO[i, e] */
                mg_transpose(tr, A, T, T);
                mg_matmul(NULL, &kopts, tmp, tr, dOt, MG_TYPE_F32, T, hd, T, NULL);
                for (int j = 0; j < T; j++) mg_vec_add(c->dv + (size_t)j * ks + g * hd, tmp + (size_t)j * hd, hd);
            }
            mg_matmul(NULL, &kopts, tmp, dS, Kt, MG_TYPE_F32, T, hd, T, NULL); /* dQ_h */
            for (int i = 0; i < T; i++) mg_vec_add(c->dqr + (size_t)i * qs + h * hd, tmp + (size_t)i * hd, hd);
            mg_transpose(tr, dS, T, T);
            mg_matmul(NULL, &kopts, acc, tr, Qt, MG_TYPE_F32, T, hd, T, NULL); /* dK from head h */
            for (int j = 0; j < T; j++) mg_vec_add(c->dkr + (size_t)j * ks + g * hd, acc + (size_t)j * hd, hd);
        }
    }
    free(s);
}

/* Backward: d(scores) through the softmax, then into the rotated q/k, rotated back, added to dq/dk. */
void tr_attn_bwd(mg_pool *pool, const tr_attn_dims *d, float *dq, float *dk, float *dv, const float *dout,
                 const float *qr, const float *kr, const float *v, const float *att, float *scratch) {
    const size_t nq = (size_t)d->T * d->n_head * d->head_dim, nk = (size_t)d->T * d->n_head_kv * d->head_dim;
    float *dqr = scratch;          /* [T, H*hd] */
    float *dkr = scratch + nq;     /* [T, Hkv*hd] */
    float *rows = dkr + nk;        /* [Hkv, T] */
    memset(dqr, 0, (nq + nk) * sizeof(float));
    attn_ctx c = {.d = d, .att = (float *)att, .qr = qr, .kr = kr, .v = v,
                  .dqr = dqr, .dkr = dkr, .dv = dv, .rows = rows, .dout = dout};
    mg_pool_run(pool, d->n_head_kv, 1, attn_bwd_task, &c);
    if (d->rope_cos) {
        tr_rope_apply(dqr, d->T, d->n_head, d->head_dim, d->rope_cos, d->rope_sin, true);
        tr_rope_apply(dkr, d->T, d->n_head_kv, d->head_dim, d->rope_cos, d->rope_sin, true);
    }
    if (dq) mg_vec_add(dq, dqr, (int64_t)nq);
    if (dk) mg_vec_add(dk, dkr, (int64_t)nk);
}

/* ==== Vision input, merge, embedding ==== */

/* im2col for a stride-P P x P convolution over 3 channels. */
void tr_patchify(float *patches, const float *img, int S, int P) {
    const int G = S / P, F = 3 * P * P;
    for (int gy = 0; gy < G; gy++)
        for (int gx = 0; gx < G; gx++) {
            float *row = patches + ((size_t)gy * G + gx) * F; /* [3, P, P] */
            for (int c = 0; c < 3; c++)
                for (int ky = 0; ky < P; ky++)
                    memcpy(row + ((size_t)c * P + ky) * P, img + ((size_t)c * S + gy * P + ky) * S + (size_t)gx * P,
                           (size_t)P * sizeof(float));
        }
}

/* CLS prepend + position embedding add. */
void tr_cls_pos_fwd(float *x, const float *patch, const float *cls, const float *pos, int64_t Np, int64_t E) {
    for (int64_t e = 0; e < E; e++) x[e] = cls[e] + pos[e];
    for (int64_t i = 0; i < Np * E; i++) x[E + i] = patch[i] + pos[E + i];
}

/* Its backward: each input receives its rows of dx. */
void tr_cls_pos_bwd(float *dpatch, float *dcls, float *dpos, const float *dx, int64_t Np, int64_t E) {
    if (dcls) mg_vec_add(dcls, dx, E);
    if (dpos) mg_vec_add(dpos, dx, (1 + Np) * E);
    if (dpatch) mg_vec_add(dpatch, dx + E, Np * E);
}

/* Drop CLS, reshape [Np, E] -> [Np/4, 4E] (row-major data is unchanged: a plain copy). */
void tr_merge4_fwd(float *out, const float *x, int64_t Np, int64_t E) {
    memcpy(out, x + E, (size_t)(Np * E) * sizeof(float));
}

/* Inverse reshape of the gradient. */
void tr_merge4_bwd(float *dx, const float *dout, int64_t Np, int64_t E) { mg_vec_add(dx + E, dout, Np * E); }

/* Row gather. */
void tr_embed_fwd(float *out, const float *table, const int32_t *ids, int64_t n, int64_t E) {
    for (int64_t i = 0; i < n; i++) memcpy(out + i * E, table + (int64_t)ids[i] * E, (size_t)E * sizeof(float));
}

/* Row scatter-add (repeated ids accumulate). */
void tr_embed_bwd(float *dtable, const float *dout, const int32_t *ids, int64_t n, int64_t E) {
    for (int64_t i = 0; i < n; i++) mg_vec_add(dtable + (int64_t)ids[i] * E, dout + i * E, E);
}

/* ==== Loss ==== */

/* Masked mean cross-entropy; gradient (softmax - onehot) / n_masked * scale on masked rows. */
float tr_cross_entropy(float *dlogits, const float *logits, const int32_t *targets, const uint8_t *mask,
                       int64_t M, int64_t V, float scale) {
    return tr_cross_entropy_ld(dlogits, logits, V, targets, mask, M, V, scale);
}

/* Masked mean cross-entropy over V columns of rows ld apart (see train_ops.h). */
float tr_cross_entropy_ld(float *dlogits, const float *logits, int64_t ld, const int32_t *targets,
                          const uint8_t *mask, int64_t M, int64_t V, float scale) {
    int64_t n = 0;
    for (int64_t m = 0; m < M; m++) n += mask[m] ? 1 : 0;
    if (n == 0) return 0.0f;
    double total = 0.0;
    float *p = malloc((size_t)V * sizeof(float));
    if (p) { /* softmax by the selected kernel, which also gives log-sum-exp */
        const float k = (float)((double)scale / (double)n);
        for (int64_t m = 0; m < M; m++) {
            if (!mask[m]) continue;
            const float *l = logits + m * ld;
            memcpy(p, l, (size_t)V * sizeof(float));
            total += mg_softmax_simd(p, V) - l[targets[m]];
            if (dlogits) {
                float *dl = dlogits + m * ld;
                for (int64_t i = 0; i < V; i++) dl[i] += p[i] * k;
                dl[targets[m]] -= k;
            }
        }
        free(p);
        return (float)(total / (double)n);
    }
    for (int64_t m = 0; m < M; m++) { /* no memory for a row: the same in plain double */
        if (!mask[m]) continue;
        const float *l = logits + m * ld;
        float mx = -INFINITY;
        for (int64_t i = 0; i < V; i++) mx = l[i] > mx ? l[i] : mx;
        double s = 0.0;
        for (int64_t i = 0; i < V; i++) s += exp((double)l[i] - mx);
        const double lse = mx + log(s);
        total += lse - l[targets[m]];
        if (dlogits) {
            float *dl = dlogits + m * ld;
            const double k = (double)scale / (double)n;
            for (int64_t i = 0; i < V; i++) dl[i] += (float)(exp((double)l[i] - lse) * k);
            dl[targets[m]] -= (float)k;
        }
    }
    return (float)(total / (double)n);
}

/* Binary cross-entropy with logits; see train_ops.h. */
float tr_bce_logits(float *dlogits, const float *logits, const float *targets, int64_t n, float scale) {
    if (n <= 0) return 0.0f;
    double total = 0.0;
    const double k = (double)scale / (double)n;
    for (int64_t i = 0; i < n; i++) {
        const double z = logits[i], t = targets[i];
        total += (z > 0 ? z : 0.0) - z * t + log1p(exp(-fabs(z)));
        if (dlogits) {
            const double sg = z >= 0 ? 1.0 / (1.0 + exp(-z)) : exp(z) / (1.0 + exp(z));
            dlogits[i] = (float)((sg - t) * k);
        }
    }
    return (float)(total / (double)n);
}
