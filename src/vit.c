/*
 * vit.c - forward pass of the EVA ViT-g/14 image encoder as BLIP-2 / MiniGPT build it
 * (eva_vit.py): patch embedding, CLS token, absolute position embedding, pre-LN blocks with a
 * fused qkv projection (biases on q and v only) and a GELU MLP, then ln_vision.
 * No layer scale, no relative position bias, no final norm of EVA's own: the output is the
 * residual stream after the last block, normalised by ln_vision. All scratch is in the workspace.
 */
#include "quant.h"
#include "vision.h"

#include <math.h>
#include <string.h>

/* Gathers the non-overlapping P x P patches of img [3, S, S] into rows [G*G, 3*P*P], each row in
 * the (channel, y, x) order of the conv weight, patches in raster order (y outer, x inner). */
static void patchify(const mg_vision *v, const float *img, float *patches) {
    const int P = v->patch_size, G = v->n_grid, S = v->image_size;
    const int64_t K = 3 * (int64_t)P * P;
    for (int gy = 0; gy < G; gy++)
        for (int gx = 0; gx < G; gx++) {
            float *row = patches + ((int64_t)gy * G + gx) * K;
            for (int c = 0; c < 3; c++)
                for (int ky = 0; ky < P; ky++) {
                    const float *src = img + ((int64_t)c * S + (int64_t)gy * P + ky) * S + (int64_t)gx * P;
                    memcpy(row + ((int64_t)c * P + ky) * P, src, (size_t)P * sizeof(float));
                }
        }
}

/* qkv [T, 3E] = x W_qkv^T + (q_bias | 0 | v_bias): three products into the column thirds (row
 * stride 3E), q and v with their bias as the epilogue; where the kernels cannot write strided
 * rows (AVX2), one product and two bias passes. The same bits either way. */
static void vit_qkv(const vit_block *b, vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o, float *qkv,
                    const float *x, int64_t T, int64_t E) {
    const size_t third = mg_row_size(b->qkv.type, E) * (size_t)E; /* bytes of E weight rows */
    const float *bias[3] = {b->q_bias, NULL, b->v_bias};
    bool done = true;
    for (int i = 0; i < 3 && done; i++) {
        const mg_mm_epilogue ep = {bias[i], false, NULL};
        done = mg_matmul_wide_strided(pool, o, qkv + i * E, 3 * E, x, E, (const char *)b->qkv.data + i * third,
                                      0, false, b->qkv.type, T, E, E, &ep);
    }
    if (done) return;
    vision_linear l = {b->qkv, NULL};
    vision_linear_fwd(&l, ws, pool, o, qkv, x, T);
    vision_add_bias_rows(pool, qkv, 3 * E, b->q_bias, T, E); /* k: no bias */
    vision_add_bias_rows(pool, qkv + 2 * E, 3 * E, b->v_bias, T, E);
}

/* Patch embedding, CLS and position embedding, the pre-LN blocks, then ln_vision. */
void vision_vit_forward(const mg_vision *v, vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o,
                        const float *img, float *out) {
    const int64_t T = v->n_tok, E = v->n_embd;
    float *x = vision_ws_buf_get(ws, VWS_X);     /* [T, E]  residual stream */
    float *h = vision_ws_buf_get(ws, VWS_H);     /* [T, E]  normed input, then attention output */
    float *big = vision_ws_buf_get(ws, VWS_BIG); /* [T, 3E] qkv, [T, n_ff] MLP hidden, [T-1, 3PP] patches */

    /* Patch embedding (a stride-P conv = a matmul over flattened patches) into rows 1..T-1,
     * the CLS token in row 0, then the absolute position embedding over all rows. */
    patchify(v, img, big);
    vision_linear patch = {v->patch_w, v->patch_b};
    vision_linear_fwd(&patch, ws, pool, o, x + E, big, T - 1);
    memcpy(x, v->cls, (size_t)E * sizeof(float));
    mg_vec_add(x, v->pos, T * E);

    const float scale = 1.0f / sqrtf((float)v->head_dim);
    for (int l = 0; l < v->n_block; l++) {
        const vit_block *b = &v->blocks[l];

        /* attention: x += proj(attn(LN1(x))) */
        vision_layernorm_rows(pool, h, x, &b->ln1, T, E, v->ln_eps);
        vit_qkv(b, ws, pool, o, big, h, T, E);
        /* q is scaled before q k^T, as eva_vit.py does */
        vision_attention(ws, pool, o, h, big, 3 * E, big + E, 3 * E, big + 2 * E, 3 * E, T, T, v->n_head,
                         v->head_dim, scale);
        vision_linear_fwd_ep(&b->attn_out, ws, pool, o, big, h, T, false, x);

        /* MLP: x += fc2(GELU(fc1(LN2(x)))); bias, GELU and residual adds in the products' epilogues */
        vision_layernorm_rows(pool, h, x, &b->ln2, T, E, v->ln_eps);
        vision_linear_fwd_ep(&b->ffn_up, ws, pool, o, big, h, T, true, NULL);
        vision_linear_fwd_ep(&b->ffn_down, ws, pool, o, h, big, T, false, x);
    }

    /* ln_vision (eps 1e-5, not the blocks' 1e-6), CLS included */
    vision_layernorm_rows(pool, out, x, &v->post_ln, T, E, v->post_ln_eps);
}
