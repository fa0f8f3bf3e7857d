/*
 * train_ops.h - forward (keeping what the backward needs) and backward of every op of the
 * MiniGPT-v2-shaped model, in fp32, row-major. Conventions shared by every function:
 *   - a matrix W[N, K] has row n = output feature n (PyTorch's nn.Linear / GGUF ne = {K, N});
 *   - backward functions ACCUMULATE (+=) into every gradient they are given, so residual
 *     branches and shared parameters need no extra code; the caller zeroes gradients;
 *   - a NULL gradient pointer means "not needed" and skips that part of the work (frozen
 *     parameters, or inputs that are data);
 *   - pool may be NULL (serial); results do not depend on the thread count except through the
 *     forward matmul (mg_matmul), whose split is static for a given pool size.
 * Nothing here allocates, prints or fails: sizes are the caller's contract.
 */
#ifndef MG_TRAIN_OPS_H
#define MG_TRAIN_OPS_H

#include "internal.h"
#include "threadpool.h"

/* ==== Linear ==== */

/* y[M, N] = x[M, K] . W[N, K]^T + b[N] (b may be NULL). Overwrites y. */
void tr_linear_fwd(mg_pool *pool, float *y, const float *x, const float *W, const float *b, int64_t M,
                   int64_t N, int64_t K);
/* Given dy[M, N]: dx[M, K] += dy . W, dW[N, K] += dy^T . x, db[N] += sum over rows of dy. */
void tr_linear_bwd(mg_pool *pool, float *dx, float *dW, float *db, const float *dy, const float *x,
                   const float *W, int64_t M, int64_t N, int64_t K);

/* LoRA branch of a linear layer (adapters A[R, K], B[N, R]): y[M, N] += scale * (x A^T) B^T.
 * Keeps u[M, R] = x A^T for the backward; tmp[M, N] is scratch. */
void tr_lora_fwd(mg_pool *pool, float *y, float *tmp, float *u, const float *x, const float *A, const float *B,
                 int64_t M, int64_t N, int64_t K, int64_t R, float scale);
/* Its backward from dy[M, N]: with dz = scale * dy and du = dz B, dx[M, K] += du A,
 * dA[R, K] += du^T x, dB[N, R] += dz^T u (dx, dA, dB may be NULL). dz[M, N] and du[M, R] are
 * scratch (overwritten). */
void tr_lora_bwd(mg_pool *pool, float *dx, float *dA, float *dB, const float *dy, const float *x, const float *u,
                 const float *A, const float *B, float *dz, float *du, int64_t M, int64_t N, int64_t K, int64_t R,
                 float scale);

/* ==== Normalisations (per row of C features) ==== */

/* out[M, C] = (x - mean) * rstd * w + b; caches mean[M], rstd[M]. */
void tr_layernorm_fwd(mg_pool *pool, float *out, float *mean, float *rstd, const float *x, const float *w,
                      const float *b, int64_t M, int64_t C, float eps);
/* dx[M, C], dw[C], db[C] += from dout[M, C]. */
void tr_layernorm_bwd(mg_pool *pool, float *dx, float *dw, float *db, const float *dout, const float *x,
                      const float *mean, const float *rstd, const float *w, int64_t M, int64_t C);
/* out[M, C] = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps); caches rstd[M]. */
void tr_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int64_t M, int64_t C, float eps);
/* dx[M, C], dw[C] += from dout[M, C]. */
void tr_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *rstd, const float *w,
                    int64_t M, int64_t C);

/* ==== Elementwise ==== */

/* out[n] = x * Phi(x) (exact erf GELU, torch.nn.GELU()). */
void tr_gelu_fwd(float *out, const float *x, int64_t n);
/* dx[n] += dout * GELU'(x). */
void tr_gelu_bwd(float *dx, const float *dout, const float *x, int64_t n);
/* out[n] = x * sigmoid(x). */
void tr_silu_fwd(float *out, const float *x, int64_t n);
/* dx[n] += dout * SiLU'(x). */
void tr_silu_bwd(float *dx, const float *dout, const float *x, int64_t n);
/* SwiGLU product: out[n] = silu(gate) * up. */
void tr_swiglu_fwd(float *out, const float *gate, const float *up, int64_t n);
/* dgate[n], dup[n] += from dout[n]. */
void tr_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int64_t n);
/* Row softmax: y[M, C] = softmax(x) per row (max-subtracted). */
void tr_softmax_fwd(float *y, const float *x, int64_t M, int64_t C);
/* dx[M, C] += y * (dy - sum(dy * y)) per row. */
void tr_softmax_bwd(float *dx, const float *dy, const float *y, int64_t M, int64_t C);

/* ==== Attention ==== */

typedef struct {
    int T;            /* sequence length */
    int n_head;       /* query heads */
    int n_head_kv;    /* key/value heads (n_head % n_head_kv == 0; kv head of h = h / (n_head / n_head_kv)) */
    int head_dim;     /* even when RoPE is used */
    bool causal;      /* key j visible to query i only when j <= i */
    const float *rope_cos; /* [T, head_dim/2] from tr_rope_tables, or NULL: no rotary embedding */
    const float *rope_sin; /* [T, head_dim/2] */
} tr_attn_dims;

/* Rotary tables exactly as the engine's session.c builds them (HF: inv = 1 / theta^(2i/d) in
 * fp32, angle = pos * inv in fp32, cos/sin in double): cs[T, hd/2], sn[T, hd/2]. The rotation acts
 * on ADJACENT pairs (2i, 2i+1) of each head, i.e. on q/k weights stored in llama.cpp's permuted
 * layout (docs/numerics.md "LLaMA"). Positions are 0..T-1. */
void tr_rope_tables(float *cs, float *sn, int T, int head_dim, float theta);
/* Rotates each head of every row of x[T, n_head*head_dim] in place; inverse = true rotates back
 * (the backward of the rotation is the inverse rotation). */
void tr_rope_apply(float *x, int T, int n_head, int head_dim, const float *cs, const float *sn, bool inverse);

/* Multi-head self-attention on projected q[T, H*hd], k[T, Hkv*hd], v[T, Hkv*hd] (unchanged):
 * scores = (rope(q) . rope(k)^T) / sqrt(hd) (+ causal mask), att = softmax, out = att . v.
 * Caches: qr[T, H*hd], kr[T, Hkv*hd] (rotated copies) and att[H, T, T] (probabilities, 0 where
 * masked). Writes out[T, H*hd]. */
void tr_attn_fwd(mg_pool *pool, const tr_attn_dims *d, float *out, float *qr, float *kr, float *att,
                 const float *q, const float *k, const float *v);
/* Floats of scratch tr_attn_bwd needs: T*(H + Hkv)*hd + Hkv*T. */
size_t tr_attn_scratch_floats(const tr_attn_dims *d);
/* dq[T, H*hd], dk[T, Hkv*hd], dv[T, Hkv*hd] += from dout[T, H*hd]. scratch: tr_attn_scratch_floats. */
void tr_attn_bwd(mg_pool *pool, const tr_attn_dims *d, float *dq, float *dk, float *dv, const float *dout,
                 const float *qr, const float *kr, const float *v, const float *att, float *scratch);

/* ==== Vision input, merge, embedding ==== */

/* Patch extraction for a conv P x P stride P as a matmul: img[3, S, S] -> patches[G*G, 3*P*P],
 * G = S / P, patch order row-major over the grid, features in (channel, ky, kx) order = the
 * flattened conv weight [E, 3, P, P]. Patch embedding = tr_linear over these rows. */
void tr_patchify(float *patches, const float *img, int S, int P);
/* x[1 + Np, E]: row 0 = cls + pos[0], row 1 + i = patch[i] + pos[1 + i]. */
void tr_cls_pos_fwd(float *x, const float *patch, const float *cls, const float *pos, int64_t Np, int64_t E);
/* dpatch[Np, E], dcls[E], dpos[1 + Np, E] += from dx[1 + Np, E] (any may be NULL). */
void tr_cls_pos_bwd(float *dpatch, float *dcls, float *dpos, const float *dx, int64_t Np, int64_t E);
/* MiniGPT-v2 merge: drop the CLS row of x[1 + Np, E] and view the rest as out[Np/4, 4E] (row g =
 * patches 4g..4g+3 concatenated). A copy; Np % 4 == 0. */
void tr_merge4_fwd(float *out, const float *x, int64_t Np, int64_t E);
/* The inverse reshape: dx rows 1.. += dout viewed as [Np, E] (row 0, the CLS, gets nothing). */
void tr_merge4_bwd(float *dx, const float *dout, int64_t Np, int64_t E);
/* out[n, E] = table[ids[i]]; ids must be in range (checked by the caller). */
void tr_embed_fwd(float *out, const float *table, const int32_t *ids, int64_t n, int64_t E);
/* Scatter-add: dtable[ids[i]] += dout[i]. */
void tr_embed_bwd(float *dtable, const float *dout, const int32_t *ids, int64_t n, int64_t E);

/* ==== Loss ==== */

/* Masked cross-entropy over logits[M, V] with targets[M]: loss = mean over rows with mask 1 of
 * -log softmax(logits)[target] (0 when no row is masked in). Returns the loss and, when dlogits is
 * not NULL, ADDS scale * d(loss)/d(logits) into dlogits[M, V] (rows with mask 0 untouched). The
 * log-sum-exp is accumulated in double. */
float tr_cross_entropy(float *dlogits, const float *logits, const int32_t *targets, const uint8_t *mask,
                       int64_t M, int64_t V, float scale);
/* The same over V columns of rows ld apart (a group of columns inside wider rows). */
float tr_cross_entropy_ld(float *dlogits, const float *logits, int64_t ld, const int32_t *targets,
                          const uint8_t *mask, int64_t M, int64_t V, float scale);

/* Binary cross-entropy with logits over n entries: loss = mean of
 * -(t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))) for targets t in [0, 1] (0 when n is 0),
 * computed stably as max(z, 0) - z t + log(1 + exp(-|z|)) in double. When dlogits is not NULL,
 * WRITES scale * d(loss)/d(z) = scale * (sigmoid(z) - t) / n into dlogits[n]. */
float tr_bce_logits(float *dlogits, const float *logits, const float *targets, int64_t n, float scale);

#endif
