/*
 * vision.h - the vision side of MiniGPT-4 / MiniGPT-v2: EVA ViT-g (vit.c), the BLIP-2 Q-Former
 * (qformer.c), loading and the projection into the LLM embedding space (vision.c).
 *
 * Input is a preprocessed image tensor [3, S, S] (resized and normalised by image.c); output is
 * [n_out, n_llm_embd] embeddings to splice into the prompt. Weights are used in place from the
 * GGUF mapping (names and keys: docs/gguf-keys.md). An mg_vision is immutable after load and may be
 * shared by threads; each concurrent encode needs its own vision_ws.
 */
#ifndef MG_VISION_H
#define MG_VISION_H

#include "gguf.h"
#include "internal.h"
#include "kernels.h"
#include "threadpool.h"

typedef enum {
    VISION_PROJ_QFORMER = 0, /* Q-Former [n_query, 768] -> Linear -> [n_query, n_llm] (MiniGPT-4 Vicuna) */
    VISION_PROJ_MERGE4 = 1   /* drop CLS, 4 consecutive tokens -> [n_patch/4, 4*n_embd] -> Linear */
} vision_proj_type;

/* A weight matrix [n_out, n_in] of any supported type (GGUF ne = {n_in, n_out}). */
typedef struct {
    const void *data;
    int type;
    int64_t n_in, n_out;
} vision_mat;

/* One linear layer: y = x W^T + b. */
typedef struct {
    vision_mat w; /* [n_out, n_in] */
    const float *b; /* [n_out] */
} vision_linear;

/* One LayerNorm: weight and bias of [n]. */
typedef struct {
    const float *w; /* [n] */
    const float *b; /* [n] */
} vision_norm;

typedef struct {
    vision_norm ln1;            /* [n_embd] */
    vision_mat qkv;             /* [3*n_embd, n_embd]: rows q | k | v */
    const float *q_bias;        /* [n_embd] */
    const float *v_bias;        /* [n_embd] (k has no bias) */
    vision_linear attn_out;     /* [n_embd, n_embd] */
    vision_norm ln2;            /* [n_embd] */
    vision_linear ffn_up;       /* [n_ff, n_embd] */
    vision_linear ffn_down;     /* [n_embd, n_ff] */
} vit_block;

typedef struct {
    vision_linear q, k, v; /* q: [n_embd, n_embd]; k, v: [n_embd, n_kv_in] */
    vision_linear out;     /* [n_embd, n_embd] */
    vision_norm ln;        /* [n_embd], post-LN of the residual */
} qformer_attn;

typedef struct {
    qformer_attn self_attn;  /* over the queries */
    bool has_cross;          /* layer index % cross_attention_freq == 0 */
    qformer_attn cross_attn; /* keys/values from the image tokens (n_kv_in = ViT width) */
    vision_linear ffn_up;    /* [n_ff, n_embd]  (intermediate_query) */
    vision_linear ffn_down;  /* [n_embd, n_ff]  (output_query) */
    vision_norm ffn_ln;      /* [n_embd] */
} qformer_layer;

typedef struct {
    /* ViT hyper-parameters */
    int image_size;  /* S: 224 or 448 */
    int patch_size;  /* 14 */
    int n_grid;      /* S / patch_size */
    int n_tok;       /* 1 + n_grid^2 (CLS first) */
    int n_embd;      /* 1408 */
    int n_block;     /* 39 */
    int n_head;      /* 16 */
    int head_dim;    /* 88 */
    int n_ff;        /* 6144 */
    float ln_eps;    /* 1e-6 */
    float post_ln_eps; /* ln_vision: 1e-5 */

    /* ViT weights */
    vision_mat patch_w;        /* [n_embd, 3*P*P], input order (channel, y, x) */
    const float *patch_b;      /* [n_embd] */
    const float *cls;          /* [n_embd] */
    const float *pos;          /* [n_tok, n_embd] (file's or pos_owned) */
    vit_block *blocks;         /* [n_block] */
    vision_norm post_ln;       /* [n_embd] ln_vision (identity affine when the file has none) */

    /* Q-Former (projector == VISION_PROJ_QFORMER only) */
    int qf_n_query;            /* 32 */
    int qf_n_embd;             /* 768 */
    int qf_n_layer;            /* 12 */
    int qf_n_head;             /* 12 */
    int qf_n_ff;               /* 3072 */
    int qf_cross_freq;         /* 2 */
    float qf_eps;              /* 1e-12 */
    const float *qf_query;     /* [qf_n_query, qf_n_embd] */
    vision_norm qf_embd_ln;    /* [qf_n_embd] */
    qformer_layer *qf_layers;  /* [qf_n_layer] */

    /* projection into the LLM */
    vision_proj_type proj_type;
    vision_linear proj;        /* [n_llm, qf_n_embd] or [n_llm, 4*n_embd] */
    int n_llm;                 /* LLM embedding width */
    int n_out;                 /* output tokens: qf_n_query, or (n_tok-1)/4 */

    /* owned buffers */
    float *pos_owned;          /* [n_tok, n_embd] interpolated pos-embed, or NULL */
    float *ln_ones;            /* [n_embd] identity ln_vision weight + zero bias, or NULL */
    float *ln_zeros;           /* [n_embd] */
} mg_vision;

/* Scratch for one encode; sized at creation from the model, reusable for any number of images. */
typedef struct vision_ws vision_ws;

/* Loads the vision tower, Q-Former (when the projector is "qformer") and projection from f, whose
 * mapping must outlive *out. Validates every hyper-parameter and every tensor's type and shape;
 * interpolates the position embedding when the file's grid differs from image_size / patch_size.
 * Returns MG_ERR_FORMAT / MG_ERR_UNSUPPORTED / MG_ERR_NOMEM with a message in err. */
mg_status vision_load(mg_vision **out, const gguf_file *f, char *err, size_t err_len);
/* Frees a model from vision_load (NULL allowed). */
void vision_free(mg_vision *v);

/* Creates a workspace for v (all scratch of an encode in one allocation) for pools of up to
 * n_threads threads (a pool with more threads uses n_threads of them in the attention). */
mg_status vision_ws_create(vision_ws **out, const mg_vision *v, int n_threads, char *err, size_t err_len);
void vision_ws_free(vision_ws *ws);

/* Full pipeline: img [3, S, S] -> out [v->n_out, v->n_llm]. Allocates a workspace for the call. */
mg_status vision_encode(const mg_vision *v, mg_pool *pool, const mg_kernel_opts *o, const float *img,
                        float *out, char *err, size_t err_len);
/* Same with a caller workspace (no allocation). */
mg_status vision_encode_ws(const mg_vision *v, vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o,
                           const float *img, float *out);

/* ==== Stages (tests, --dump) ==== */

/* ViT + ln_vision: img [3, S, S] -> out [n_tok, n_embd] (CLS first). */
void vision_vit_forward(const mg_vision *v, vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o,
                        const float *img, float *out);
/* Q-Former: img_embd [n_tok, n_embd] (ln_vision output) -> out [qf_n_query, qf_n_embd].
 * Only for VISION_PROJ_QFORMER models. */
void vision_qformer_forward(const mg_vision *v, vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o,
                            const float *img_embd, float *out);
/* Projection: QFORMER: in [qf_n_query, qf_n_embd]; MERGE4: in [n_tok, n_embd] (ln_vision output,
 * CLS included and dropped here). out [n_out, n_llm]. */
void vision_project(const mg_vision *v, vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o,
                    const float *in, float *out);

/* PyTorch bicubic (A = -0.75, align_corners=False, edge-clamped taps) resize of a position
 * embedding: src [1 + gs*gs, c] (CLS row first, grid row-major) -> dst [1 + gd*gd, c]; the CLS row
 * is copied. As eva_vit.py interpolate_pos_embed does for 448 inputs. */
void vision_interp_pos_embed(const float *src, int gs, int gd, int c, float *dst);

/* ==== Shared by vit.c and qformer.c ==== */

/* (y + m * ldy)[0, N) += b for m < M, rows split across the pool. */
void vision_add_bias_rows(mg_pool *pool, float *y, int64_t ldy, const float *b, int64_t M, int64_t N);
/* x[M, N] += y[M, N] (contiguous rows), rows split across the pool. */
void vision_add_rows(mg_pool *pool, float *x, const float *y, int64_t M, int64_t N);
/* y [M, w.n_out] = x [M, w.n_in] . W^T (+ b when l->b), through mg_matmul_wide. */
void vision_linear_fwd(const vision_linear *l, vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o,
                       float *y, const float *x, int64_t M);
/* The same, then GELU when gelu; with add_to ([M, w.n_out]) add_to += the result instead of y =
 * it (y is then scratch). One pass: the epilogue of mg_matmul_wide_ep, the separate ops' bits. */
void vision_linear_fwd_ep(const vision_linear *l, vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o,
                          float *y, const float *x, int64_t M, bool gelu, float *add_to);
/* LayerNorm of each of M rows of n: out may alias x. */
void vision_layernorm_rows(mg_pool *pool, float *out, const float *x, const vision_norm *nm, int64_t M,
                           int64_t n, float eps);
/* GELU (erf) over M rows of n, in place. */
void vision_gelu_rows(mg_pool *pool, float *x, int64_t M, int64_t n);
/* Multi-head attention without mask: q [Tq, ldq], k [Tk, ldk], v [Tk, ldv], head h at column h*d.
 * out [Tq, n_head*d] = softmax(scale * q k^T) v per head (out must not overlap q, k or v). */
void vision_attention(vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o, float *out, const float *q,
                      int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv, int64_t Tq,
                      int64_t Tk, int n_head, int d, float scale);

/* Scratch accessors for vit.c / qformer.c: named buffers of the workspace (see vision.c). */
typedef enum {
    VWS_X,   /* [rows, width]     residual stream (rows = max(n_tok, qf_n_query), width = max(n_embd, qf_n_embd)) */
    VWS_H,   /* [rows, width]     normed input / attention output */
    VWS_BIG, /* [rows, max(3*n_embd, n_ff, 3*P*P, qf_n_ff)]  patches / qkv / FFN hidden */
    VWS_KV,  /* [2, n_tok, qf_n_embd]  cross-attention keys then values (Q-Former models) */
    VWS_IMG, /* [n_tok, n_embd]   ln_vision output inside vision_encode_ws */
    VWS_QF,  /* [qf_n_query, qf_n_embd]  Q-Former output inside vision_encode_ws */
    VWS_COUNT
} vision_ws_buf;
float *vision_ws_buf_get(vision_ws *ws, vision_ws_buf b);

#endif
