/*
 * llama.c - binds a LLaMA decoder to a GGUF file: reads and checks the hyperparameters
 * (llama.cpp keys), then finds every tensor by its llama.cpp name and checks its shape and type.
 * Nothing is computed here; a model that loads is safe to run (every row size and pointer is
 * known to lie inside the file).
 */
#include "llama.h"

#include "quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Hard caps far above any LLaMA, so that later size arithmetic stays small. */
#define LLAMA_MAX_EMBD 65536
#define LLAMA_MAX_FF (1 << 20)
#define LLAMA_MAX_LAYER 4096
#define LLAMA_MAX_HEAD 4096
#define LLAMA_MAX_VOCAB (1 << 24)
#define LLAMA_MAX_CTX (1 << 24)

static mg_status get_u32_key(const gguf_file *f, const char *prefix, const char *name, bool required,
                             uint32_t def, uint32_t lo, uint32_t hi, int *out, char *err, size_t err_len) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", prefix, name);
    uint32_t v = def;
    mg_status st = required ? gguf_get_u32(f, key, &v, err, err_len)
                            : gguf_get_u32_def(f, key, def, &v, err, err_len);
    if (st != MG_OK) return st;
    if (v < lo || v > hi)
        return mg_err(err, err_len, MG_ERR_FORMAT, "%s = %u is out of range [%u, %u]", key, v, lo, hi);
    *out = (int)v;
    return MG_OK;
}

static mg_status get_f32_key(const gguf_file *f, const char *prefix, const char *name, bool required,
                             float def, float *out, char *err, size_t err_len) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", prefix, name);
    float v = def;
    mg_status st = required ? gguf_get_f32(f, key, &v, err, err_len)
                            : gguf_get_f32_def(f, key, def, &v, err, err_len);
    if (st != MG_OK) return st;
    if (!isfinite(v) || v <= 0.0f)
        return mg_err(err, err_len, MG_ERR_FORMAT, "%s = %g must be finite and positive", key, (double)v);
    *out = v;
    return MG_OK;
}

static mg_status read_hparams(llama_hparams *hp, const gguf_file *f, const char *prefix, char *err,
                              size_t err_len) {
    mg_status st;
    if ((st = get_u32_key(f, prefix, "context_length", true, 0, 1, LLAMA_MAX_CTX, &hp->n_ctx_train, err, err_len)) ||
        (st = get_u32_key(f, prefix, "embedding_length", true, 0, 2, LLAMA_MAX_EMBD, &hp->n_embd, err, err_len)) ||
        (st = get_u32_key(f, prefix, "block_count", true, 0, 1, LLAMA_MAX_LAYER, &hp->n_layer, err, err_len)) ||
        (st = get_u32_key(f, prefix, "feed_forward_length", true, 0, 1, LLAMA_MAX_FF, &hp->n_ff, err, err_len)) ||
        (st = get_u32_key(f, prefix, "attention.head_count", true, 0, 1, LLAMA_MAX_HEAD, &hp->n_head, err, err_len)))
        return st;
    if ((st = get_u32_key(f, prefix, "attention.head_count_kv", false, (uint32_t)hp->n_head, 1, LLAMA_MAX_HEAD,
                          &hp->n_head_kv, err, err_len)))
        return st;
    if ((st = get_f32_key(f, prefix, "attention.layer_norm_rms_epsilon", true, 0, &hp->rms_eps, err, err_len)) ||
        (st = get_f32_key(f, prefix, "rope.freq_base", false, 10000.0f, &hp->rope_theta, err, err_len)))
        return st;
    if (hp->n_embd % hp->n_head != 0)
        return mg_err(err, err_len, MG_ERR_FORMAT, "embedding_length %d is not a multiple of head_count %d",
                      hp->n_embd, hp->n_head);
    if (hp->n_head % hp->n_head_kv != 0)
        return mg_err(err, err_len, MG_ERR_FORMAT, "head_count %d is not a multiple of head_count_kv %d",
                      hp->n_head, hp->n_head_kv);
    hp->head_dim = hp->n_embd / hp->n_head;
    if (hp->head_dim % 2 != 0)
        return mg_err(err, err_len, MG_ERR_FORMAT, "head dimension %d is odd (RoPE needs pairs)", hp->head_dim);
    int n_rot = 0;
    if ((st = get_u32_key(f, prefix, "rope.dimension_count", false, (uint32_t)hp->head_dim, 1, LLAMA_MAX_EMBD,
                          &n_rot, err, err_len)))
        return st;
    if (n_rot != hp->head_dim)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "%s.rope.dimension_count %d != head dimension %d "
                      "(partial rotary embeddings are not supported)", prefix, n_rot, hp->head_dim);
    return MG_OK;
}

/* Finds a 2-D matrix with ne = {n_cols, n_rows} (n_rows < 0: any, read back) of a supported type. */
static mg_status bind_mat(llama_mat *m, const gguf_file *f, const char *name, int64_t n_cols, int64_t n_rows,
                          char *err, size_t err_len) {
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) return mg_err(err, err_len, MG_ERR_FORMAT, "tensor %s is missing", name);
    if (t->n_dims < 1 || t->n_dims > 2 || t->ne[2] != 1 || t->ne[3] != 1)
        return mg_err(err, err_len, MG_ERR_FORMAT, "tensor %s has %d dimensions, expected 2", name, t->n_dims);
    if (t->ne[0] != n_cols || (n_rows >= 0 && t->ne[1] != n_rows))
        return mg_err(err, err_len, MG_ERR_FORMAT, "tensor %s has shape [%lld, %lld], expected [%lld, %lld]", name,
                      (long long)t->ne[0], (long long)t->ne[1], (long long)n_cols, (long long)n_rows);
    const mg_type_traits *tr = mg_get_type_traits(t->type);
    if (!tr || !tr->supported || tr->blck_size < 1)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "tensor %s has unsupported type %s", name,
                      tr ? tr->name : "unknown");
    size_t row = mg_row_size(t->type, n_cols), total;
    if (row == 0)
        return mg_err(err, err_len, MG_ERR_FORMAT, "tensor %s: row length %lld is not a multiple of the %s block",
                      name, (long long)n_cols, tr->name);
    if (!mg_mul_ok(row, (size_t)t->ne[1], &total) || total != t->nbytes || !t->data)
        return mg_err(err, err_len, MG_ERR_FORMAT, "tensor %s: data size %llu does not match its shape", name,
                      (unsigned long long)t->nbytes);
    m->data = t->data;
    m->type = t->type;
    m->n_cols = t->ne[0];
    m->n_rows = t->ne[1];
    return MG_OK;
}

/* Copies a 1-D vector [n] of any supported type into a new fp32 array. */
static mg_status load_vec(float **out, const gguf_file *f, const char *name, int64_t n, char *err, size_t err_len) {
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) return mg_err(err, err_len, MG_ERR_FORMAT, "tensor %s is missing", name);
    if (t->ne[0] != n || t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1)
        return mg_err(err, err_len, MG_ERR_FORMAT, "tensor %s has shape [%lld, %lld], expected [%lld]", name,
                      (long long)t->ne[0], (long long)t->ne[1], (long long)n);
    const mg_type_traits *tr = mg_get_type_traits(t->type);
    size_t row = mg_row_size(t->type, n);
    if (!tr || !tr->supported || row == 0)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "tensor %s has unsupported type %s", name,
                      tr ? tr->name : "unknown");
    if (row != t->nbytes || !t->data)
        return mg_err(err, err_len, MG_ERR_FORMAT, "tensor %s: data size does not match its shape", name);
    float *v = mg_malloc_aligned((size_t)n * sizeof(float));
    if (!v) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory for tensor %s", name);
    mg_dequantize_row(t->type, t->data, v, n);
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(v[i])) {
            mg_free_aligned(v);
            return mg_err(err, err_len, MG_ERR_FORMAT, "tensor %s holds a non-finite value", name);
        }
    }
    *out = v;
    return MG_OK;
}

/* Reads and checks the hyperparameters, then binds every tensor by name (see llama.h). */
mg_status llama_load(llama_model *lm, const gguf_file *f, const char *prefix, char *err, size_t err_len) {
    if (!lm || !f || !prefix) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "llama_load: NULL argument");
    memset(lm, 0, sizeof *lm);
    llama_hparams *hp = &lm->hp;
    mg_status st = read_hparams(hp, f, prefix, err, err_len);
    if (st != MG_OK) return st;

    const int64_t d = hp->n_embd, q_dim = (int64_t)hp->n_head * hp->head_dim,
                  kv_dim = (int64_t)hp->n_head_kv * hp->head_dim, ff = hp->n_ff;
    if ((st = bind_mat(&lm->tok_embd, f, "token_embd.weight", d, -1, err, err_len))) goto fail;
    if (lm->tok_embd.n_rows < 1 || lm->tok_embd.n_rows > LLAMA_MAX_VOCAB) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "token_embd.weight has %lld rows (1..%d allowed)",
                    (long long)lm->tok_embd.n_rows, LLAMA_MAX_VOCAB);
        goto fail;
    }
    hp->n_vocab = (int)lm->tok_embd.n_rows;
    if ((st = load_vec(&lm->output_norm, f, "output_norm.weight", d, err, err_len))) goto fail;
    if (gguf_find_tensor(f, "output.weight")) {
        if ((st = bind_mat(&lm->output, f, "output.weight", d, hp->n_vocab, err, err_len))) goto fail;
    } else {
        lm->output = lm->tok_embd; /* tied head, as llama.cpp allows */
        lm->output_tied = true;
    }

    lm->layers = calloc((size_t)hp->n_layer, sizeof *lm->layers);
    if (!lm->layers) {
        st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory for %d layers", hp->n_layer);
        goto fail;
    }
    for (int il = 0; il < hp->n_layer; il++) {
        llama_layer *L = &lm->layers[il];
        char name[96];
#define NAME(s) (snprintf(name, sizeof name, "blk.%d." s ".weight", il), name)
        if ((st = load_vec(&L->attn_norm, f, NAME("attn_norm"), d, err, err_len)) ||
            (st = bind_mat(&L->wq, f, NAME("attn_q"), d, q_dim, err, err_len)) ||
            (st = bind_mat(&L->wk, f, NAME("attn_k"), d, kv_dim, err, err_len)) ||
            (st = bind_mat(&L->wv, f, NAME("attn_v"), d, kv_dim, err, err_len)) ||
            (st = bind_mat(&L->wo, f, NAME("attn_output"), q_dim, d, err, err_len)) ||
            (st = load_vec(&L->ffn_norm, f, NAME("ffn_norm"), d, err, err_len)) ||
            (st = bind_mat(&L->w_gate, f, NAME("ffn_gate"), d, ff, err, err_len)) ||
            (st = bind_mat(&L->w_up, f, NAME("ffn_up"), d, ff, err, err_len)) ||
            (st = bind_mat(&L->w_down, f, NAME("ffn_down"), ff, d, err, err_len)))
            goto fail;
#undef NAME
    }
    lm->main_type = hp->n_layer > 0 ? lm->layers[0].w_gate.type : lm->tok_embd.type;
    return MG_OK;
fail:
    llama_free(lm);
    return st;
}

/* Frees the norm copies and the layer array (not the mapping). */
void llama_free(llama_model *lm) {
    if (!lm) return;
    if (lm->layers) {
        for (int il = 0; il < lm->hp.n_layer; il++) {
            mg_free_aligned(lm->layers[il].attn_norm);
            mg_free_aligned(lm->layers[il].ffn_norm);
        }
        free(lm->layers);
    }
    mg_free_aligned(lm->output_norm);
    memset(lm, 0, sizeof *lm);
}
