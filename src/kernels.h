/*
 * kernels.h - compute kernels used by every model: matrix multiplication over any weight type,
 * and the elementwise / normalisation ops. The scalar reference versions define the results;
 * SIMD variants (selected at runtime by CPU features, or forced off with use_ref) must match
 * them within the tolerances of docs/numerics.md.
 *
 * Reference semantics of mg_matmul for each weight type:
 *   F32          : dot in fp32 of x and w
 *   F16, BF16    : w converted to fp32, dot in fp32
 *   Q8_0, Q4_0   : x quantized to Q8_0 blocks per row (as llama.cpp does), integer dot per block,
 *                  sum over blocks of d_w * d_x * isum in fp32
 */
#ifndef MG_KERNELS_H
#define MG_KERNELS_H

#include "internal.h"
#include "threadpool.h"

typedef struct {
    bool use_ref; /* force the scalar reference kernels */
} mg_kernel_opts;

/* Fills the dispatch table once from CPU features (idempotent, thread-safe). */
void mg_kernels_init(void);
/* Name of the selected path ("ref", "avx2", "avx512", ...). */
const char *mg_kernels_isa(void);

/* y[M, N] = x[M, K] . W[N, K]^T   (W row n = output feature n; GGUF ne = {K, N}).
 * wtype any supported mg_type; K must be a multiple of the type's block size.
 * work: scratch for quantized activations; size from mg_matmul_work_size (may be NULL if 0). */
size_t mg_matmul_work_size(int wtype, int64_t M, int64_t K);
void mg_matmul(mg_pool *pool, const mg_kernel_opts *o, float *y, const float *x, const void *w,
               int wtype, int64_t M, int64_t N, int64_t K, void *work);

/* The same product for many rows of float weights (F32, F16, BF16) at a higher FMA rate: each
 * output is one fp32 fused multiply-add chain over k = 0 .. K-1 from 0, so its bits depend only on
 * x, W and K (not on M, threads or tiling) but differ from mg_matmul's (whose M = 1 and M > 1 paths
 * agree bit for bit; this one is for the image encoder, which has no one-row path). Other weight
 * types, and kernel variants without it (AVX2), run mg_matmul. */
void mg_matmul_wide(mg_pool *pool, const mg_kernel_opts *o, float *y, const float *x, const void *w,
                    int wtype, int64_t M, int64_t N, int64_t K, void *work);
/* What mg_matmul_wide_ep does to each output r = y[m][n] once its chain is complete, in this order:
 * r += bias[n] (bias: [N], or NULL); r = GELU(r) with mg_gelu_simd's function (gelu); then
 * y[m][n] = r, or with add_to ([M, N], rows of N) add_to[m][n] += r, y then being scratch. The
 * same bits as the separate operations after mg_matmul_wide; the AVX-512 panels apply it to the
 * registers before the last store instead of passing over the rows again. */
typedef struct {
    const float *bias;
    bool gelu;
    float *add_to;
} mg_mm_epilogue;
void mg_matmul_wide_ep(mg_pool *pool, const mg_kernel_opts *o, float *y, const float *x, const void *w,
                       int wtype, int64_t M, int64_t N, int64_t K, void *work, const mg_mm_epilogue *ep);
/* mg_matmul_wide_ep on operands in place, with row strides in elements: y[m * ldy + n] (and
 * ep->add_to the same) = the chain over k of x[m * ldx + k] * W(n, k), W(n, k) = w[n * ldw + k],
 * or with w_kmajor (F32 only: the weights given transposed, as attention's values are)
 * w[k * ldw + n]. The bits of mg_matmul_wide_ep on the same numbers gathered contiguous. Returns
 * false, having done nothing, where the selected kernels have no wide product for wtype (AVX2,
 * quantized types) or w_kmajor is not F32: the caller then gathers for mg_matmul_wide_ep. With
 * M = 0 it only answers. */
bool mg_matmul_wide_strided(mg_pool *pool, const mg_kernel_opts *o, float *y, int64_t ldy, const float *x,
                            int64_t ldx, const void *w, int64_t ldw, bool w_kmajor, int wtype, int64_t M,
                            int64_t N, int64_t K, const mg_mm_epilogue *ep);

/* Copies row `row` of a weight matrix [N, K] of type wtype into dst as fp32 (embedding lookup). */
void mg_get_row_f32(const void *w, int wtype, int64_t K, int64_t row, float *dst);

/* C[M, N] += op(A) . B, the trainer's backward products, fp32: B is row-major [K, N]; op(A) is
 * A [M, K] (a_trans false) or the transpose of A [K, M] (a_trans true), so neither operand is
 * copied. Each element is C + sum over k in ascending order (fused multiply-adds on the SIMD
 * paths), whatever the thread count; parallel over blocks of C. */
void mg_gemm_acc(mg_pool *pool, const mg_kernel_opts *o, float *C, const float *A, const float *B, int64_t M,
                 int64_t N, int64_t K, bool a_trans);

/* ==== Attention inner loops (fp32; SIMD when available, like mg_matmul) ====
 * Rows t of a K or V cache start at k + t * stride (stride in floats, >= d).
 * mg_attn_scores: s[t] = scale * dot(q, k_t) for t in [0, n).
 * mg_attn_values: o[i] = sum_t p[t] * v_t[i] for i in [0, d) (o is overwritten).
 * Results equal the scalar reference within the matmul tolerance of docs/numerics.md
 * (summation order differs); they do not depend on n for a given t. */
void mg_attn_scores(float *s, const float *q, const float *k, int64_t stride, int64_t n, int d, float scale);
void mg_attn_values(float *o, const float *p, const float *v, int64_t stride, int64_t n, int d);

/* SIMD versions of mg_rmsnorm, mg_layernorm, mg_softmax, mg_silu and mg_gelu (same arguments
 * and semantics, the selected kernel path): exp and erf are polynomials instead of libm's, sums
 * are still in double. They differ from the scalar functions by a few ulp (docs/numerics.md). */
void mg_rmsnorm_simd(float *out, const float *x, const float *weight, int64_t n, float eps);
void mg_layernorm_simd(float *out, const float *x, const float *weight, const float *bias, int64_t n,
                       float eps);
double mg_softmax_simd(float *x, int64_t n);
void mg_silu_simd(float *x, int64_t n);
void mg_gelu_simd(float *x, int64_t n);
/* GELU's derivative for the trainer, accumulated: dx[i] += dout[i] * (Phi(x[i]) + x[i] * phi(x[i]))
 * (Phi, phi: the standard normal distribution and density). mg_gelu_bwd is the reference (double
 * precision, libm's erf and exp), mg_gelu_bwd_simd the selected path (the polynomials of
 * mg_gelu_simd, fp32; docs/numerics.md). */
void mg_gelu_bwd(float *dx, const float *dout, const float *x, int64_t n);
void mg_gelu_bwd_simd(float *dx, const float *dout, const float *x, int64_t n);
/* dst[C, R] = src[R, C]^T (dst[c * R + r] = src[r * C + c]); a pure copy, so every path gives
 * the same bits. The AVX-512 path moves 16 x 16 tiles through registers. */
void mg_transpose(float *dst, const float *src, int64_t R, int64_t C);

/* ==== Ops (in place unless noted); all fp32 ==== */
void mg_rmsnorm(float *out, const float *x, const float *weight, int64_t n, float eps);
void mg_layernorm(float *out, const float *x, const float *weight, const float *bias, int64_t n, float eps);
/* mg_softmax and mg_softmax_simd return the log-sum-exp of the input row, max + log(sum) (-inf for a
 * row that is all -inf), which the trainer's cross-entropy needs. */
double mg_softmax(float *x, int64_t n);
void mg_silu(float *x, int64_t n);
void mg_gelu(float *x, int64_t n);        /* exact erf form, as torch.nn.GELU() */
void mg_vec_mul(float *x, const float *y, int64_t n); /* x *= y */
void mg_vec_add(float *x, const float *y, int64_t n); /* x += y (selected path; exact, so same bits) */
/* One AdamW step over n parameters in torch.optim.AdamW's order of operations, one rounding per
 * operation and no fused multiply-add, so every path gives the scalar loop's bits:
 *   p *= decay;  m1 = m1 * beta1 + g * (1 - beta1);  m2 = m2 * beta2 + g * g * (1 - beta2);
 *   p -= step_size * (m1 / (sqrt(m2) / bc2_sqrt + eps)) */
typedef struct {
    float decay, beta1, beta2, eps, step_size, bc2_sqrt;
} mg_adamw_coef;
void mg_adamw(float *p, const float *g, float *m1, float *m2, int64_t n, const mg_adamw_coef *c);
/* NeoX / rotate-half RoPE on one head vector of length head_dim at position pos:
 * pairs (i, i + head_dim/2), inv_freq[i] = theta^(-2i/head_dim). */
void mg_rope_neox(float *x, int head_dim, int pos, float theta);

#endif
