/*
 * kernels_simd.h - private contract between the kernel dispatcher (kernels.c) and the SIMD
 * variants (kernels_avx2.c, kernels_avx512.c, each compiled with its own -m flags). A variant
 * fills a table of matmul range functions, one per weight type, plus an activation quantizer.
 */
#ifndef MG_KERNELS_SIMD_H
#define MG_KERNELS_SIMD_H

#include "kernels.h"
#include "quant.h"

/* One matmul call: y[M, N] = x[M, K] . W[N, K]^T. For Q8_0/Q4_0 weights xq holds the rows of x
 * quantized to Q8_0 (row stride xq_stride bytes), for the others x is used. */
typedef struct {
    float *y;
    const float *x;
    const void *xq;
    size_t xq_stride;
    const void *w;
    int wtype;
    int64_t M, N, K;
    /* wide kernels only (mg_mm_fn of mmw_*): */
    const mg_mm_epilogue *ep; /* applied at the last k panel; NULL: none */
    int64_t ldx, ldy, ldw;    /* row strides in elements of x, y (and ep->add_to), w; 0: K, N, K */
    bool w_kmajor;            /* F32 only: W(n, k) at w[k * ldw + n] (ldw 0: N) */
} mg_mm_args;

/* Computes the output columns n in [n0, n1) for all M rows. Each output element's value must not
 * depend on n0, n1 or M (thread-count and batch independence). */
typedef void (*mg_mm_fn)(const mg_mm_args *a, int64_t n0, int64_t n1);
/* Quantizes k floats (k % 32 == 0) to Q8_0, bytes identical to mg_quantize_row(MG_TYPE_Q8_0). */
typedef void (*mg_q8_fn)(const float *x, void *y, int64_t k);

/* Attention inner loops, semantics of mg_attn_scores / mg_attn_values (kernels.h). */
typedef void (*mg_scores_fn)(float *s, const float *q, const float *k, int64_t stride, int64_t n,
                             int d, float scale);
typedef void (*mg_values_fn)(float *o, const float *p, const float *v, int64_t stride, int64_t n,
                             int d);

typedef struct {
    const char *name;
    mg_mm_fn mm_f32, mm_f16, mm_bf16, mm_q8_0, mm_q4_0;
    mg_q8_fn quantize_q8_0;
    /* a variant may leave the following as they are (the reference functions) */
    mg_scores_fn attn_scores;
    mg_values_fn attn_values;
    void (*rmsnorm)(float *out, const float *x, const float *weight, int64_t n, float eps);
    void (*layernorm)(float *out, const float *x, const float *weight, const float *bias, int64_t n,
                      float eps);
    double (*softmax)(float *x, int64_t n); /* returns log(sum exp(x)) of the input */
    void (*silu)(float *x, int64_t n);
    void (*gelu)(float *x, int64_t n);
    void (*transpose)(float *dst, const float *src, int64_t R, int64_t C);
    void (*gelu_bwd)(float *dx, const float *dout, const float *x, int64_t n);
    void (*vec_add)(float *x, const float *y, int64_t n);
    void (*adamw)(float *p, const float *g, float *m1, float *m2, int64_t n, const mg_adamw_coef *c);
    /* rows [m0, m1) x columns [n0, n1) of mg_gemm_acc's C, every k */
    void (*gemm_acc)(float *C, const float *A, const float *B, int64_t M, int64_t N, int64_t K, bool a_trans,
                     int64_t m0, int64_t m1, int64_t n0, int64_t n1);
    /* mg_matmul_wide for float weights: each output one fused multiply-add chain over k in
     * ascending order from 0 (the reference's bits exactly), then the epilogue a->ep if any
     * (mg_mm_epilogue); NULL where a variant has none (mg_matmul_wide then runs the variant's
     * mg_matmul kernel and the epilogue as separate passes) */
    mg_mm_fn mmw_f32, mmw_f16, mmw_bf16;
} mg_kernel_table;

/* Fill t with the variant's functions; false when the build lacks the variant. */
bool mg_kernels_fill_avx2(mg_kernel_table *t);
bool mg_kernels_fill_avx512(mg_kernel_table *t);

#endif
