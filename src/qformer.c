/*
 * qformer.c - forward pass of the BLIP-2 Q-Former as MiniGPT-4 (Vicuna) runs it (Qformer.py):
 * 32 learned query tokens, LayerNorm'd (no position embedding: there is no text), then post-LN
 * BERT layers of self-attention over the queries, cross-attention to the image tokens in every
 * cross_attention_freq-th layer (0, 2, 4, ...), and the query FFN (intermediate_query /
 * output_query). No masks: every query sees every query and every image token, CLS included.
 */
#include "vision.h"

#include <math.h>
#include <string.h>

/* h = LN(h + out(attn(q(h), k(kv), v(kv)))) over n_kv key/value rows of kv [n_kv, a->k.w.n_in]. */
static void attn_block(const mg_vision *v, vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o,
                       const qformer_attn *a, float *h, const float *kv, int64_t n_kv) {
    const int64_t Nq = v->qf_n_query, D = v->qf_n_embd;
    float *q = vision_ws_buf_get(ws, VWS_BIG);   /* [Nq, D] */
    float *k = vision_ws_buf_get(ws, VWS_KV);    /* [n_kv, D] */
    float *val = k + n_kv * D;                   /* [n_kv, D] */
    float *ctx = vision_ws_buf_get(ws, VWS_H);   /* [Nq, D] */
    const int d = v->qf_n_embd / v->qf_n_head;

    vision_linear_fwd(&a->q, ws, pool, o, q, h, Nq);
    vision_linear_fwd(&a->k, ws, pool, o, k, kv, n_kv);
    vision_linear_fwd(&a->v, ws, pool, o, val, kv, n_kv);
    /* BERT divides q k^T by sqrt(d) after the product; scaling q by 1/sqrt(d) first is the same
     * up to rounding (exactly the same for d = 64). */
    vision_attention(ws, pool, o, ctx, q, D, k, D, val, D, Nq, n_kv, v->qf_n_head, d, 1.0f / sqrtf((float)d));
    vision_linear_fwd(&a->out, ws, pool, o, q, ctx, Nq);
    mg_vec_add(q, h, Nq * D);
    vision_layernorm_rows(pool, h, q, &a->ln, Nq, D, v->qf_eps);
}

/* LayerNorm of the learned queries, then each layer: self-attention, cross-attention on
 * even layers, query FFN, every sublayer post-LN with its residual. */
void vision_qformer_forward(const mg_vision *v, vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o,
                            const float *img_embd, float *out) {
    const int64_t Nq = v->qf_n_query, D = v->qf_n_embd;
    float *h = vision_ws_buf_get(ws, VWS_X);     /* [Nq, D]  hidden state of the queries */
    float *ff = vision_ws_buf_get(ws, VWS_BIG);  /* [Nq, qf_n_ff] FFN hidden */
    float *tmp = vision_ws_buf_get(ws, VWS_H);   /* [Nq, D] */

    /* embeddings: no input ids, so just LayerNorm(query_tokens) */
    vision_layernorm_rows(pool, h, v->qf_query, &v->qf_embd_ln, Nq, D, v->qf_eps);

    for (int l = 0; l < v->qf_n_layer; l++) {
        const qformer_layer *L = &v->qf_layers[l];
        attn_block(v, ws, pool, o, &L->self_attn, h, h, Nq);
        if (L->has_cross) attn_block(v, ws, pool, o, &L->cross_attn, h, img_embd, v->n_tok);
        /* query FFN: h = LN(h + down(GELU(up(h)))) */
        vision_linear_fwd(&L->ffn_up, ws, pool, o, ff, h, Nq);
        vision_gelu_rows(pool, ff, Nq, v->qf_n_ff);
        vision_linear_fwd(&L->ffn_down, ws, pool, o, tmp, ff, Nq);
        mg_vec_add(tmp, h, Nq * D);
        vision_layernorm_rows(pool, h, tmp, &L->ffn_ln, Nq, D, v->qf_eps);
    }
    memcpy(out, h, (size_t)(Nq * D) * sizeof(float));
}
