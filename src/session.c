/*
 * session.c - the LLaMA forward pass over a KV cache. A session owns its cache (fp32, sized for
 * n_ctx at create), the RoPE tables and every scratch buffer, all allocated once at create: the
 * eval paths never allocate. Prefill runs in chunks of n_batch rows (matmuls with M > 1); a
 * single token is the same code with M = 1. Only the last row's logits are computed.
 *
 * Layout conventions: q/k rows in the file are permuted as llama.cpp's converter leaves them, so
 * RoPE rotates adjacent pairs (2i, 2i+1) here, which equals HF's rotate_half on the unpermuted
 * weights (docs/numerics.md, "LLaMA").
 */
#include "model.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MG_MAX_CTX (1 << 24)

struct mg_session {
    const mg_model *model;
    int n_ctx;
    int n_batch;
    int n_past;
    int n_threads;
    bool has_logits;
    float *k_cache;  /* [n_layer, n_ctx, n_head_kv*head_dim], rotated keys */
    float *v_cache;  /* [n_layer, n_ctx, n_head_kv*head_dim] */
    float *rope_cos; /* [n_ctx, head_dim/2] */
    float *rope_sin; /* [n_ctx, head_dim/2] */
    float *x;        /* [n_batch, n_embd] residual stream */
    float *xn;       /* [n_batch, n_embd] normalised input / sublayer output */
    float *q;        /* [n_batch, n_head*head_dim] */
    float *att;      /* [n_batch, n_head*head_dim] attention output before attn_output */
    float *gate;     /* [n_batch, n_ff] */
    float *up;       /* [n_batch, n_ff] */
    float *scores;   /* [n_threads, n_ctx] attention probabilities, one row per worker */
    float *logits;   /* [n_vocab] of the last evaluated position */
    void *work;      /* matmul scratch (quantized activations), work_size bytes */
    size_t work_size;
    char errmsg[256];
};

/* Defaults: the model's training context, prefill chunks of 512 rows. */
mg_session_params mg_session_default_params(void) {
    mg_session_params p;
    p.n_ctx = 0;
    p.n_batch = 512;
    return p;
}

/* Internal (model.h): formats the session's last error message. */
mg_status session_set_error(mg_session *s, mg_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->errmsg, sizeof s->errmsg, fmt, ap);
    va_end(ap);
    return st;
}

#define set_err session_set_error

/* Internal (model.h): the model a session was created on. */
const mg_model *session_model(const mg_session *s) { return s->model; }

/* Allocates n floats (n = a * b * c, overflow-checked) into *p; false on failure. */
static bool alloc_f32(float **p, size_t a, size_t b, size_t c, size_t *total) {
    size_t n, bytes;
    if (!mg_mul_ok(a, b, &n) || !mg_mul_ok(n, c, &n) || !mg_mul_ok(n, sizeof(float), &bytes)) return false;
    *p = mg_malloc_aligned(bytes);
    if (*p && total && !mg_add_ok(*total, bytes, total)) return false;
    return *p != NULL;
}

static size_t mat_work(const llama_mat *m, int64_t M) { return mg_matmul_work_size(m->type, M, m->n_cols); }

/* HF's rotary tables: inv_freq[i] = 1 / theta^(2i/d) and angle = pos * inv_freq, both in fp32. */
static void fill_rope_tables(float *cs, float *sn, int n_ctx, int head_dim, float theta) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float inv = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
        for (int p = 0; p < n_ctx; p++) {
            float a = (float)p * inv;
            cs[(size_t)p * half + i] = (float)cos((double)a);
            sn[(size_t)p * half + i] = (float)sin((double)a);
        }
    }
}

/* Allocates the KV cache for n_ctx positions, the RoPE tables and every scratch buffer; the
 * eval calls allocate nothing afterwards. */
mg_status mg_session_create(mg_session **out, const mg_model *model, const mg_session_params *params,
                            char *err, size_t err_len) {
    if (err && err_len) err[0] = 0;
    if (!out || !model) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "mg_session_create: NULL argument");
    *out = NULL;
    mg_session_params p = params ? *params : mg_session_default_params();
    const llama_model *lm = &model->lm;
    const llama_hparams *hp = &lm->hp;
    int n_ctx = p.n_ctx == 0 ? hp->n_ctx_train : p.n_ctx;
    if (n_ctx < 1 || n_ctx > MG_MAX_CTX)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "n_ctx %d is out of range [1, %d]", n_ctx, MG_MAX_CTX);
    if (p.n_batch < 1) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "n_batch %d must be >= 1", p.n_batch);
    int n_batch = MG_MIN(p.n_batch, n_ctx);

    mg_session *s = calloc(1, sizeof *s);
    if (!s) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    s->model = model;
    s->n_ctx = n_ctx;
    s->n_batch = n_batch;
    s->n_threads = mg_pool_n_threads(model->pool);
    const size_t d = (size_t)hp->n_embd, q_dim = (size_t)hp->n_head * hp->head_dim,
                 kv_dim = (size_t)hp->n_head_kv * hp->head_dim, nb = (size_t)n_batch;
    size_t total = 0;
    bool ok = alloc_f32(&s->k_cache, (size_t)hp->n_layer, (size_t)n_ctx, kv_dim, &total) &&
              alloc_f32(&s->v_cache, (size_t)hp->n_layer, (size_t)n_ctx, kv_dim, &total) &&
              alloc_f32(&s->rope_cos, (size_t)n_ctx, (size_t)hp->head_dim / 2, 1, &total) &&
              alloc_f32(&s->rope_sin, (size_t)n_ctx, (size_t)hp->head_dim / 2, 1, &total) &&
              alloc_f32(&s->x, nb, d, 1, &total) && alloc_f32(&s->xn, nb, d, 1, &total) &&
              alloc_f32(&s->q, nb, q_dim, 1, &total) && alloc_f32(&s->att, nb, q_dim, 1, &total) &&
              alloc_f32(&s->gate, nb, (size_t)hp->n_ff, 1, &total) &&
              alloc_f32(&s->up, nb, (size_t)hp->n_ff, 1, &total) &&
              alloc_f32(&s->scores, (size_t)s->n_threads, (size_t)n_ctx, 1, &total) &&
              alloc_f32(&s->logits, (size_t)hp->n_vocab, 1, 1, &total);
    if (ok) {
        size_t w = mat_work(&lm->output, 1);
        for (int il = 0; il < hp->n_layer; il++) {
            const llama_layer *L = &lm->layers[il];
            const llama_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
            for (size_t i = 0; i < MG_ARRAY_LEN(mats); i++) w = MG_MAX(w, mat_work(mats[i], n_batch));
        }
        s->work_size = w;
        if (w > 0) ok = (s->work = mg_malloc_aligned(w)) != NULL;
    }
    if (!ok) {
        mg_session_free(s);
        return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory for a session of %d positions (%zu MiB so far)",
                      n_ctx, total >> 20);
    }
    fill_rope_tables(s->rope_cos, s->rope_sin, n_ctx, hp->head_dim, hp->rope_theta);
    *out = s;
    return MG_OK;
}

/* Frees a session (NULL accepted). */
void mg_session_free(mg_session *s) {
    if (!s) return;
    float *bufs[] = {s->k_cache, s->v_cache, s->rope_cos, s->rope_sin, s->x, s->xn, s->q,
                     s->att, s->gate, s->up, s->scores, s->logits};
    for (size_t i = 0; i < MG_ARRAY_LEN(bufs); i++) mg_free_aligned(bufs[i]);
    mg_free_aligned(s->work);
    free(s);
}

/* ==== Forward ==== */

/* Rotates adjacent pairs (2i, 2i+1) of each head of one row by the angles of position pos. */
static void rope_row(const mg_session *s, float *row, int n_heads, int pos) {
    const int hd = s->model->lm.hp.head_dim, half = hd / 2;
    const float *cs = s->rope_cos + (size_t)pos * half, *sn = s->rope_sin + (size_t)pos * half;
    for (int h = 0; h < n_heads; h++) {
        float *v = row + (size_t)h * hd;
        for (int i = 0; i < half; i++) {
            float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * cs[i] - x1 * sn[i];
            v[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
        }
    }
}

typedef struct {
    const mg_session *s;
    const float *kc; /* [n_ctx, kv_dim] of this layer */
    const float *vc; /* [n_ctx, kv_dim] of this layer */
    int pos0;        /* position of row 0 of the chunk */
    int M;           /* rows in the chunk */
} attn_ctx;

/* Causal attention for items [i0, i1) of (head, row) pairs, head-major: softmax(q k^T / sqrt(hd)) v.
 * Head-major keeps one head's keys and values (n_kv x head_dim each) in L2 over consecutive rows,
 * and gives every thread's contiguous range of items the same mix of short (early) and long
 * (late) rows; row-major ranges gave the last thread most of the causal work. */
static void attn_task(void *vctx, int64_t i0, int64_t i1, int ith) {
    const attn_ctx *a = vctx;
    const mg_session *s = a->s;
    const llama_hparams *hp = &s->model->lm.hp;
    const int hd = hp->head_dim, n_rep = hp->n_head / hp->n_head_kv;
    const size_t q_dim = (size_t)hp->n_head * hd, kv_dim = (size_t)hp->n_head_kv * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    float *sc = s->scores + (size_t)ith * s->n_ctx;
    for (int64_t it = i0; it < i1; it++) {
        const int h = (int)(it / a->M), r = (int)(it % a->M);
        const int n_kv = a->pos0 + r + 1; /* causal: keys 0..pos */
        const size_t koff = (size_t)(h / n_rep) * hd;
        const float *qv = s->q + (size_t)r * q_dim + (size_t)h * hd;
        mg_attn_scores(sc, qv, a->kc + koff, (int64_t)kv_dim, n_kv, hd, scale);
        mg_softmax_simd(sc, n_kv);
        float *o = s->att + (size_t)r * q_dim + (size_t)h * hd;
        mg_attn_values(o, sc, a->vc + koff, (int64_t)kv_dim, n_kv, hd);
    }
}

static void matmul(const mg_session *s, float *y, const float *x, const llama_mat *w, int64_t M) {
    mg_matmul(s->model->pool, &s->model->kopts, y, x, w->data, w->type, M, w->n_rows, w->n_cols, s->work);
}

/* Runs the decoder on the M rows already in s->x (positions n_past ..), fills the KV cache. */
static void forward_chunk(mg_session *s, int M, bool want_logits) {
    const llama_model *lm = &s->model->lm;
    const llama_hparams *hp = &lm->hp;
    const int64_t d = hp->n_embd, ff = hp->n_ff;
    const size_t q_dim = (size_t)hp->n_head * hp->head_dim, kv_dim = (size_t)hp->n_head_kv * hp->head_dim;
    const int pos0 = s->n_past;
    for (int il = 0; il < hp->n_layer; il++) {
        const llama_layer *L = &lm->layers[il];
        float *kc = s->k_cache + (size_t)il * s->n_ctx * kv_dim;
        float *vc = s->v_cache + (size_t)il * s->n_ctx * kv_dim;
        for (int r = 0; r < M; r++) mg_rmsnorm_simd(s->xn + r * d, s->x + r * d, L->attn_norm, d, hp->rms_eps);
        matmul(s, s->q, s->xn, &L->wq, M);
        matmul(s, kc + (size_t)pos0 * kv_dim, s->xn, &L->wk, M);
        matmul(s, vc + (size_t)pos0 * kv_dim, s->xn, &L->wv, M);
        for (int r = 0; r < M; r++) {
            rope_row(s, s->q + r * q_dim, hp->n_head, pos0 + r);
            rope_row(s, kc + (size_t)(pos0 + r) * kv_dim, hp->n_head_kv, pos0 + r);
        }
        attn_ctx ac = {s, kc, vc, pos0, M};
        mg_pool_run(s->model->pool, (int64_t)M * hp->n_head, 1, attn_task, &ac);
        matmul(s, s->xn, s->att, &L->wo, M);
        mg_vec_add(s->x, s->xn, M * d);

        for (int r = 0; r < M; r++) mg_rmsnorm_simd(s->xn + r * d, s->x + r * d, L->ffn_norm, d, hp->rms_eps);
        matmul(s, s->gate, s->xn, &L->w_gate, M);
        matmul(s, s->up, s->xn, &L->w_up, M);
        mg_silu_simd(s->gate, M * ff);
        mg_vec_mul(s->gate, s->up, M * ff);
        matmul(s, s->xn, s->gate, &L->w_down, M);
        mg_vec_add(s->x, s->xn, M * d);
    }
    s->n_past += M;
    if (want_logits) {
        mg_rmsnorm_simd(s->xn, s->x + (size_t)(M - 1) * d, lm->output_norm, d, hp->rms_eps);
        matmul(s, s->logits, s->xn, &lm->output, 1);
        s->has_logits = true;
    }
}

/* Shared driver: rows come from token ids (embd == NULL) or from caller embeddings. */
static mg_status eval_rows(mg_session *s, const int32_t *ids, const float *embd, int n) {
    const llama_model *lm = &s->model->lm;
    const int64_t d = lm->hp.n_embd;
    s->errmsg[0] = 0;
    if (n <= 0 || (!ids && !embd)) return set_err(s, MG_ERR_INVALID_ARG, "eval: need at least one row (n = %d)", n);
    if (n > s->n_ctx - s->n_past)
        return set_err(s, MG_ERR_CTX_FULL, "context full: %d positions held + %d new > n_ctx %d", s->n_past, n,
                       s->n_ctx);
    if (ids) {
        for (int i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= lm->hp.n_vocab)
                return set_err(s, MG_ERR_INVALID_ARG, "token id %d at index %d is out of range [0, %d)", (int)ids[i],
                               i, lm->hp.n_vocab);
    }
    pthread_mutex_t *lock = (pthread_mutex_t *)&s->model->pool_lock;
    pthread_mutex_lock(lock);
    s->has_logits = false;
    for (int done = 0; done < n;) {
        int M = MG_MIN(s->n_batch, n - done);
        for (int r = 0; r < M; r++) {
            if (ids)
                mg_get_row_f32(lm->tok_embd.data, lm->tok_embd.type, d, ids[done + r], s->x + (size_t)r * d);
            else
                memcpy(s->x + (size_t)r * d, embd + (size_t)(done + r) * d, (size_t)d * sizeof(float));
        }
        done += M;
        forward_chunk(s, M, done == n);
    }
    pthread_mutex_unlock(lock);
    return MG_OK;
}

/* Looks the ids up in token_embd and runs them at the next positions (all ids are checked first;
 * on error the session is unchanged). */
mg_status mg_session_eval_tokens(mg_session *s, const int32_t *ids, int n) {
    if (!s) return MG_ERR_INVALID_ARG;
    if (!ids) return set_err(s, MG_ERR_INVALID_ARG, "eval_tokens: ids is NULL");
    return eval_rows(s, ids, NULL, n);
}

/* Runs caller rows embd [n, n_embd] at the next positions (image embeddings). */
mg_status mg_session_eval_embd(mg_session *s, const float *embd, int n) {
    if (!s) return MG_ERR_INVALID_ARG;
    if (!embd) return set_err(s, MG_ERR_INVALID_ARG, "eval_embd: embd is NULL");
    return eval_rows(s, NULL, embd, n);
}

/* Logits [n_vocab] of the last evaluated position, or NULL before any eval or after a rewind. */
const float *mg_session_logits(const mg_session *s) { return s && s->has_logits ? s->logits : NULL; }

/* Positions held in the cache. */
int mg_session_n_past(const mg_session *s) { return s ? s->n_past : 0; }

/* Capacity of the cache in positions. */
int mg_session_n_ctx(const mg_session *s) { return s ? s->n_ctx : 0; }

/* Drops positions >= n_past; their cache rows are simply overwritten by later evals. */
mg_status mg_session_rewind(mg_session *s, int n_past) {
    if (!s) return MG_ERR_INVALID_ARG;
    if (n_past < 0 || n_past > s->n_past)
        return set_err(s, MG_ERR_INVALID_ARG, "rewind to %d: must be in [0, %d]", n_past, s->n_past);
    if (n_past != s->n_past) s->has_logits = false;
    s->n_past = n_past;
    return MG_OK;
}

/* Last error message ("" after a successful eval). */
const char *mg_session_errmsg(const mg_session *s) { return s ? s->errmsg : "NULL session"; }
