/*
 * vision.c - loading of the vision side of MiniGPT-4 / MiniGPT-v2 from GGUF (hyper-parameters,
 * tensors validated by name, type and shape), the encode workspace, the helpers vit.c and
 * qformer.c share (linear, row LayerNorm/GELU, unmasked multi-head attention), the projection
 * into the LLM embedding space and the PyTorch-exact bicubic position-embedding resize.
 * Weights stay in the caller's mapping; the only owned model data are the interpolated
 * position embedding and the identity ln_vision of files that carry none.
 */
#include "vision.h"

#include "quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Query rows per attention work item (a multiple of the 6-row matmul tile). */
#define ATT_RB 96

struct vision_ws {
    float *base;               /* one allocation holding everything below */
    float *buf[VWS_COUNT];     /* see vision_ws_buf */
    float *att_k;              /* [max_heads, max_rows, max_head_dim]  every head's keys */
    float *att_vt;             /* [max_heads, max_head_dim, max_rows]  every head's values, transposed */
    float *att_scr;            /* att_slots x [ATT_RB x (2 max_head_dim + max_rows)]  per-thread queries,
                                  scores and output of a block of query rows */
    int att_slots;             /* threads the workspace was made for */
    int64_t att_slot_floats;
    void *mm_work;             /* quantized activations for mg_matmul */
};

/* ==== Loading ==== */

#define VMAX_DIM 65536

static mg_status get_dim(const gguf_file *f, const char *key, int lo, int hi, int *out, char *err,
                         size_t err_len) {
    uint32_t u;
    mg_status st = gguf_get_u32(f, key, &u, err, err_len);
    if (st != MG_OK) return st;
    if (u < (uint32_t)lo || u > (uint32_t)hi)
        return mg_err(err, err_len, MG_ERR_FORMAT, "vision: %s = %u is outside [%d, %d]", key, u, lo, hi);
    *out = (int)u;
    return MG_OK;
}

static mg_status get_eps(const gguf_file *f, const char *key, float def, float *out, char *err,
                         size_t err_len) {
    mg_status st = gguf_get_f32_def(f, key, def, out, err, err_len);
    if (st != MG_OK) return st;
    if (!(*out > 0.0f && *out < 1.0f))
        return mg_err(err, err_len, MG_ERR_FORMAT, "vision: %s = %g is not in (0, 1)", key, (double)*out);
    return MG_OK;
}

static void fmt_shape(const gguf_tensor *t, char *buf, size_t n) {
    int k = snprintf(buf, n, "[");
    for (int i = 0; i < t->n_dims && k > 0 && (size_t)k < n; i++)
        k += snprintf(buf + k, n - (size_t)k, "%s%lld", i ? ", " : "", (long long)t->ne[i]);
    if (k > 0 && (size_t)k < n) snprintf(buf + k, n - (size_t)k, "]");
}

/* Finds a tensor whose first `lead` dims multiply to n0 and whose other dims multiply to n1
 * (so trailing 1s are allowed; n1 = 1: a vector). */
static mg_status find_tensor(const gguf_file *f, const char *name, int lead, int64_t n0, int64_t n1,
                             const gguf_tensor **out, char *err, size_t err_len) {
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) return mg_err(err, err_len, MG_ERR_FORMAT, "vision: tensor '%s' is missing", name);
    lead = MG_MIN(lead, t->n_dims);
    int64_t inner = 1, rest = 1;
    for (int i = 0; i < lead; i++) inner *= t->ne[i];
    for (int i = lead; i < t->n_dims; i++) rest *= t->ne[i]; /* the reader bounds the element count */
    if (inner != n0 || rest != n1) {
        char s[96];
        fmt_shape(t, s, sizeof s);
        return mg_err(err, err_len, MG_ERR_FORMAT, "vision: tensor '%s' has shape %s, expected [%lld, %lld]",
                      name, s, (long long)n0, (long long)n1);
    }
    if ((uintptr_t)t->data % 4 != 0)
        return mg_err(err, err_len, MG_ERR_FORMAT, "vision: tensor '%s' data is not 4-byte aligned", name);
    *out = t;
    return MG_OK;
}

/* An F32 tensor [n1, n0] (n1 = 1: a vector of n0). */
static mg_status get_f32(const gguf_file *f, const char *name, int64_t n0, int64_t n1, const float **out,
                         char *err, size_t err_len) {
    const gguf_tensor *t;
    mg_status st = find_tensor(f, name, 1, n0, n1, &t, err, err_len);
    if (st != MG_OK) return st;
    if (t->type != MG_TYPE_F32)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "vision: tensor '%s' has type %s, expected f32", name,
                      mg_type_name(t->type) ? mg_type_name(t->type) : "?");
    *out = t->data;
    return MG_OK;
}

static mg_status get_vec(const gguf_file *f, const char *name, int64_t n, const float **out, char *err,
                         size_t err_len) {
    return get_f32(f, name, n, 1, out, err, err_len);
}

/* A weight matrix [n_out, n_in] of a type mg_matmul supports; its first `lead` dims form a row. */
static mg_status get_mat(const gguf_file *f, const char *name, int lead, int64_t n_in, int64_t n_out,
                         vision_mat *m, char *err, size_t err_len) {
    const gguf_tensor *t;
    mg_status st = find_tensor(f, name, lead, n_in, n_out, &t, err, err_len);
    if (st != MG_OK) return st;
    const mg_type_traits *tr = mg_get_type_traits(t->type);
    bool ok_type = t->type == MG_TYPE_F32 || t->type == MG_TYPE_F16 || t->type == MG_TYPE_BF16 ||
                   t->type == MG_TYPE_Q8_0 || t->type == MG_TYPE_Q4_0;
    if (!tr || !tr->supported || !ok_type)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "vision: tensor '%s' has unsupported type %s", name,
                      tr ? tr->name : "?");
    size_t row = mg_row_size(t->type, n_in), total;
    if (!row)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED,
                      "vision: tensor '%s': row length %lld is not a multiple of the %s block size", name,
                      (long long)n_in, tr->name);
    if (!mg_mul_ok(row, (size_t)n_out, &total) || total != t->nbytes)
        return mg_err(err, err_len, MG_ERR_FORMAT, "vision: tensor '%s' has %llu bytes, expected %zu", name,
                      (unsigned long long)t->nbytes, total);
    m->data = t->data;
    m->type = t->type;
    m->n_in = n_in;
    m->n_out = n_out;
    return MG_OK;
}

static mg_status get_linear(const gguf_file *f, const char *prefix, int64_t n_in, int64_t n_out,
                            vision_linear *l, char *err, size_t err_len) {
    char name[128];
    snprintf(name, sizeof name, "%s.weight", prefix);
    mg_status st = get_mat(f, name, 1, n_in, n_out, &l->w, err, err_len);
    if (st != MG_OK) return st;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return get_vec(f, name, n_out, &l->b, err, err_len);
}

static mg_status get_norm(const gguf_file *f, const char *prefix, int64_t n, vision_norm *nm, char *err,
                          size_t err_len) {
    char name[128];
    snprintf(name, sizeof name, "%s.weight", prefix);
    mg_status st = get_vec(f, name, n, &nm->w, err, err_len);
    if (st != MG_OK) return st;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return get_vec(f, name, n, &nm->b, err, err_len);
}

/* Hyper-parameters and tensors of the EVA ViT and ln_vision. */
static mg_status load_vit(mg_vision *v, const gguf_file *f, char *err, size_t err_len) {
    mg_status st;
    if ((st = get_dim(f, "minigpt.vision.image_size", 1, 4096, &v->image_size, err, err_len)) ||
        (st = get_dim(f, "minigpt.vision.patch_size", 1, 64, &v->patch_size, err, err_len)) ||
        (st = get_dim(f, "minigpt.vision.embedding_length", 1, 16384, &v->n_embd, err, err_len)) ||
        (st = get_dim(f, "minigpt.vision.block_count", 1, 256, &v->n_block, err, err_len)) ||
        (st = get_dim(f, "minigpt.vision.head_count", 1, 1024, &v->n_head, err, err_len)) ||
        (st = get_dim(f, "minigpt.vision.feed_forward_length", 1, VMAX_DIM, &v->n_ff, err, err_len)) ||
        (st = get_eps(f, "minigpt.vision.layer_norm_epsilon", 1e-6f, &v->ln_eps, err, err_len)) ||
        (st = get_eps(f, "minigpt.vision.post_layer_norm_epsilon", 1e-5f, &v->post_ln_eps, err, err_len)))
        return st;
    if (v->image_size % v->patch_size != 0)
        return mg_err(err, err_len, MG_ERR_FORMAT, "vision: image_size %d is not a multiple of patch_size %d",
                      v->image_size, v->patch_size);
    if (v->n_embd % v->n_head != 0)
        return mg_err(err, err_len, MG_ERR_FORMAT, "vision: embedding_length %d is not a multiple of head_count %d",
                      v->n_embd, v->n_head);
    v->n_grid = v->image_size / v->patch_size;
    if (v->n_grid > 256)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "vision: a %dx%d patch grid is too large", v->n_grid,
                      v->n_grid);
    v->n_tok = 1 + v->n_grid * v->n_grid;
    v->head_dim = v->n_embd / v->n_head;
    const int64_t E = v->n_embd, P = v->patch_size;

    /* The conv weight [E, 3, P, P] (GGUF ne {P, P, 3, E}) is the matrix [E, 3*P*P] of a matmul over
     * flattened patches; a 2-D {3*P*P, E} tensor is accepted as well. */
    const gguf_tensor *cw = gguf_find_tensor(f, "v.patch_embd.weight");
    if (cw && cw->n_dims == 4 && (cw->ne[0] != P || cw->ne[1] != P || cw->ne[2] != 3))
        return mg_err(err, err_len, MG_ERR_FORMAT, "vision: tensor 'v.patch_embd.weight' must be [%lld, %lld, 3, %lld]",
                      (long long)P, (long long)P, (long long)E);
    if ((st = get_mat(f, "v.patch_embd.weight", cw && cw->n_dims == 4 ? 3 : 1, 3 * P * P, E, &v->patch_w, err,
                      err_len)) ||
        (st = get_vec(f, "v.patch_embd.bias", E, &v->patch_b, err, err_len)) ||
        (st = get_vec(f, "v.class_embd", E, &v->cls, err, err_len)))
        return st;
    /* Position embedding: the file's grid, resized here when it differs from the image's. */
    const gguf_tensor *pt = gguf_find_tensor(f, "v.position_embd");
    if (!pt) return mg_err(err, err_len, MG_ERR_FORMAT, "vision: tensor 'v.position_embd' is missing");
    int64_t rows = 1;
    for (int i = 1; i < pt->n_dims; i++) rows *= pt->ne[i];
    int gs = (int)floor(sqrt((double)(rows > 1 ? rows - 1 : 0)) + 0.5);
    if (pt->ne[0] != E || rows < 2 || (int64_t)gs * gs + 1 != rows || gs > 4096)
        return mg_err(err, err_len, MG_ERR_FORMAT,
                      "vision: tensor 'v.position_embd' must be [%lld, 1 + g*g], has %lld rows of %lld",
                      (long long)E, (long long)rows, (long long)pt->ne[0]);
    const float *pos_file;
    if ((st = get_f32(f, "v.position_embd", E, rows, &pos_file, err, err_len))) return st;
    if (gs == v->n_grid) {
        v->pos = pos_file;
    } else {
        size_t n;
        if (!mg_mul_ok((size_t)v->n_tok, (size_t)E * sizeof(float), &n) || !(v->pos_owned = mg_malloc_aligned(n)))
            return mg_err(err, err_len, MG_ERR_NOMEM, "vision: no memory for the position embedding");
        vision_interp_pos_embed(pos_file, gs, v->n_grid, (int)E, v->pos_owned);
        v->pos = v->pos_owned;
    }

    v->blocks = calloc((size_t)v->n_block, sizeof *v->blocks);
    if (!v->blocks) return mg_err(err, err_len, MG_ERR_NOMEM, "vision: no memory for %d blocks", v->n_block);
    for (int i = 0; i < v->n_block; i++) {
        vit_block *b = &v->blocks[i];
        char p[64], name[96];
#define VNAME(suffix) (snprintf(name, sizeof name, "%s.%s", p, suffix), name)
        snprintf(p, sizeof p, "v.blk.%d", i);
        if ((st = get_norm(f, VNAME("ln1"), E, &b->ln1, err, err_len)) ||
            (st = get_mat(f, VNAME("attn_qkv.weight"), 1, E, 3 * E, &b->qkv, err, err_len)) ||
            (st = get_vec(f, VNAME("attn_q.bias"), E, &b->q_bias, err, err_len)) ||
            (st = get_vec(f, VNAME("attn_v.bias"), E, &b->v_bias, err, err_len)) ||
            (st = get_linear(f, VNAME("attn_out"), E, E, &b->attn_out, err, err_len)) ||
            (st = get_norm(f, VNAME("ln2"), E, &b->ln2, err, err_len)) ||
            (st = get_linear(f, VNAME("ffn_up"), E, v->n_ff, &b->ffn_up, err, err_len)) ||
            (st = get_linear(f, VNAME("ffn_down"), v->n_ff, E, &b->ffn_down, err, err_len)))
            return st;
#undef VNAME
    }

    /* ln_vision: the MiniGPT-4/Llama-2 and MiniGPT-v2 checkpoints carry none (frozen, never saved),
     * so the model runs an identity-affine LayerNorm; a file may store either both tensors or none. */
    bool has_w = gguf_find_tensor(f, "v.post_ln.weight") != NULL;
    bool has_b = gguf_find_tensor(f, "v.post_ln.bias") != NULL;
    if (has_w || has_b) return get_norm(f, "v.post_ln", E, &v->post_ln, err, err_len);
    v->ln_ones = mg_malloc_aligned((size_t)E * sizeof(float));
    v->ln_zeros = mg_malloc_aligned((size_t)E * sizeof(float));
    if (!v->ln_ones || !v->ln_zeros) return mg_err(err, err_len, MG_ERR_NOMEM, "vision: no memory");
    for (int64_t i = 0; i < E; i++) {
        v->ln_ones[i] = 1.0f;
        v->ln_zeros[i] = 0.0f;
    }
    v->post_ln.w = v->ln_ones;
    v->post_ln.b = v->ln_zeros;
    return MG_OK;
}

static mg_status load_qformer_attn(const gguf_file *f, const char *prefix, int64_t D, int64_t n_kv_in,
                                   qformer_attn *a, char *err, size_t err_len) {
    char name[96];
    mg_status st;
#define QNAME(suffix) (snprintf(name, sizeof name, "%s_%s", prefix, suffix), name)
    if ((st = get_linear(f, QNAME("q"), D, D, &a->q, err, err_len)) ||
        (st = get_linear(f, QNAME("k"), n_kv_in, D, &a->k, err, err_len)) ||
        (st = get_linear(f, QNAME("v"), n_kv_in, D, &a->v, err, err_len)) ||
        (st = get_linear(f, QNAME("out"), D, D, &a->out, err, err_len)) ||
        (st = get_norm(f, QNAME("ln"), D, &a->ln, err, err_len)))
        return st;
#undef QNAME
    return MG_OK;
}

/* Hyper-parameters and tensors of the Q-Former. */
static mg_status load_qformer(mg_vision *v, const gguf_file *f, char *err, size_t err_len) {
    mg_status st;
    uint32_t freq;
    if ((st = get_dim(f, "minigpt.qformer.query_count", 1, 4096, &v->qf_n_query, err, err_len)) ||
        (st = get_dim(f, "minigpt.qformer.embedding_length", 1, 16384, &v->qf_n_embd, err, err_len)) ||
        (st = get_dim(f, "minigpt.qformer.block_count", 1, 256, &v->qf_n_layer, err, err_len)) ||
        (st = get_dim(f, "minigpt.qformer.head_count", 1, 1024, &v->qf_n_head, err, err_len)) ||
        (st = get_dim(f, "minigpt.qformer.feed_forward_length", 1, VMAX_DIM, &v->qf_n_ff, err, err_len)) ||
        (st = gguf_get_u32_def(f, "minigpt.qformer.cross_attention_freq", 2, &freq, err, err_len)) ||
        (st = get_eps(f, "minigpt.qformer.layer_norm_epsilon", 1e-12f, &v->qf_eps, err, err_len)))
        return st;
    if (freq < 1 || freq > 256)
        return mg_err(err, err_len, MG_ERR_FORMAT, "vision: minigpt.qformer.cross_attention_freq = %u", freq);
    v->qf_cross_freq = (int)freq;
    if (v->qf_n_embd % v->qf_n_head != 0)
        return mg_err(err, err_len, MG_ERR_FORMAT, "vision: qformer embedding_length %d is not a multiple of %d heads",
                      v->qf_n_embd, v->qf_n_head);
    const int64_t D = v->qf_n_embd;
    if ((st = get_f32(f, "qf.query_embd", D, v->qf_n_query, &v->qf_query, err, err_len)) ||
        (st = get_norm(f, "qf.embd_ln", D, &v->qf_embd_ln, err, err_len)))
        return st;
    v->qf_layers = calloc((size_t)v->qf_n_layer, sizeof *v->qf_layers);
    if (!v->qf_layers) return mg_err(err, err_len, MG_ERR_NOMEM, "vision: no memory for the Q-Former");
    for (int i = 0; i < v->qf_n_layer; i++) {
        qformer_layer *L = &v->qf_layers[i];
        char p[64];
        snprintf(p, sizeof p, "qf.blk.%d.attn", i);
        if ((st = load_qformer_attn(f, p, D, D, &L->self_attn, err, err_len))) return st;
        L->has_cross = i % v->qf_cross_freq == 0;
        snprintf(p, sizeof p, "qf.blk.%d.cross_q.weight", i);
        if (!L->has_cross && gguf_find_tensor(f, p))
            return mg_err(err, err_len, MG_ERR_FORMAT,
                          "vision: Q-Former layer %d has cross-attention tensors but cross_attention_freq is %d", i,
                          v->qf_cross_freq);
        snprintf(p, sizeof p, "qf.blk.%d.cross", i);
        if (L->has_cross && (st = load_qformer_attn(f, p, D, v->n_embd, &L->cross_attn, err, err_len))) return st;
        snprintf(p, sizeof p, "qf.blk.%d.ffn_up", i);
        if ((st = get_linear(f, p, D, v->qf_n_ff, &L->ffn_up, err, err_len))) return st;
        snprintf(p, sizeof p, "qf.blk.%d.ffn_down", i);
        if ((st = get_linear(f, p, v->qf_n_ff, D, &L->ffn_down, err, err_len))) return st;
        snprintf(p, sizeof p, "qf.blk.%d.ffn_ln", i);
        if ((st = get_norm(f, p, D, &L->ffn_ln, err, err_len))) return st;
    }
    return MG_OK;
}

/* Reads hyper-parameters, then binds and checks every tensor; see vision.h. */
mg_status vision_load(mg_vision **out, const gguf_file *f, char *err, size_t err_len) {
    if (!out || !f) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "vision_load: NULL argument");
    *out = NULL;
    mg_vision *v = calloc(1, sizeof *v);
    if (!v) return mg_err(err, err_len, MG_ERR_NOMEM, "vision: no memory");
    mg_status st;
    gguf_str ptype;
    if ((st = gguf_get_str(f, "minigpt.projector_type", &ptype, err, err_len))) goto fail;
    if (gguf_str_eq(ptype, "qformer")) {
        v->proj_type = VISION_PROJ_QFORMER;
    } else if (gguf_str_eq(ptype, "merge4")) {
        v->proj_type = VISION_PROJ_MERGE4;
    } else {
        st = mg_err(err, err_len, MG_ERR_UNSUPPORTED, "vision: unknown minigpt.projector_type '%.*s'",
                    (int)MG_MIN(ptype.len, 32), ptype.ptr);
        goto fail;
    }
    if ((st = load_vit(v, f, err, err_len))) goto fail;

    int64_t proj_in;
    if (v->proj_type == VISION_PROJ_QFORMER) {
        if ((st = load_qformer(v, f, err, err_len))) goto fail;
        proj_in = v->qf_n_embd;
        v->n_out = v->qf_n_query;
    } else {
        if ((v->n_tok - 1) % 4 != 0) {
            st = mg_err(err, err_len, MG_ERR_FORMAT, "vision: merge4 needs a patch count divisible by 4, not %d",
                        v->n_tok - 1);
            goto fail;
        }
        proj_in = 4 * (int64_t)v->n_embd;
        v->n_out = (v->n_tok - 1) / 4;
    }
    const gguf_tensor *pw = gguf_find_tensor(f, "mm.proj.weight");
    if (!pw) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "vision: tensor 'mm.proj.weight' is missing");
        goto fail;
    }
    if (pw->n_dims != 2 || pw->ne[1] < 1 || pw->ne[1] > VMAX_DIM) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "vision: tensor 'mm.proj.weight' must be 2-D with <= %d rows",
                    VMAX_DIM);
        goto fail;
    }
    v->n_llm = (int)pw->ne[1];
    if ((st = get_linear(f, "mm.proj", proj_in, v->n_llm, &v->proj, err, err_len))) goto fail;
    *out = v;
    return MG_OK;
fail:
    vision_free(v);
    return st;
}

/* Frees the model and its owned buffers (weights belong to the mapping). */
void vision_free(mg_vision *v) {
    if (!v) return;
    free(v->blocks);
    free(v->qf_layers);
    mg_free_aligned(v->pos_owned);
    mg_free_aligned(v->ln_ones);
    mg_free_aligned(v->ln_zeros);
    free(v);
}

/* ==== Workspace ==== */

static void mat_work(const vision_mat *m, int64_t M, size_t *mx) {
    size_t s = mg_matmul_work_size(m->type, M, m->n_in);
    if (s > *mx) *mx = s;
}

/* Sizes every scratch buffer from the model (rows = max(tokens, queries)) and allocates them
 * in one block together with the quantized-activation buffer of the largest matmul. */
mg_status vision_ws_create(vision_ws **out, const mg_vision *v, int n_threads, char *err, size_t err_len) {
    if (!out || !v) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "vision_ws_create: NULL argument");
    if (n_threads < 1) n_threads = 1;
    *out = NULL;
    const int64_t T = v->n_tok, E = v->n_embd, P = v->patch_size;
    const bool qf = v->proj_type == VISION_PROJ_QFORMER;
    int64_t rows = MG_MAX(T, qf ? (int64_t)v->qf_n_query : 0);
    int64_t width = MG_MAX(E, qf ? (int64_t)v->qf_n_embd : 0);
    int64_t big = MG_MAX(MG_MAX(3 * E, (int64_t)v->n_ff), 3 * P * P);
    if (qf) big = MG_MAX(big, MG_MAX((int64_t)v->qf_n_ff, (int64_t)v->qf_n_embd));
    int64_t hd = MG_MAX((int64_t)v->head_dim, qf ? (int64_t)(v->qf_n_embd / v->qf_n_head) : 0);
    int64_t heads = MG_MAX((int64_t)v->n_head, qf ? (int64_t)v->qf_n_head : 0);
    int64_t kv = qf ? 2 * rows * v->qf_n_embd : 0;
    const int64_t slot = (((int64_t)ATT_RB * (2 * hd + rows)) + 15) & ~(int64_t)15;

    /* float counts of each part, every one rounded up to 16 floats (64 bytes) */
    int64_t n[VWS_COUNT + 3] = {rows * width, rows * width, rows * big, kv, T * E,
                                qf ? (int64_t)v->qf_n_query * v->qf_n_embd : 0,
                                heads * rows * hd, heads * hd * rows, (int64_t)n_threads * slot};
    size_t total = 0;
    for (size_t i = 0; i < MG_ARRAY_LEN(n); i++) {
        size_t part = ((size_t)n[i] + 15) & ~(size_t)15;
        if (!mg_add_ok(total, part, &total))
            return mg_err(err, err_len, MG_ERR_NOMEM, "vision: workspace size overflows");
    }
    size_t work = 0;
    mat_work(&v->patch_w, T, &work);
    for (int i = 0; i < v->n_block; i++) {
        mat_work(&v->blocks[i].qkv, T, &work);
        mat_work(&v->blocks[i].attn_out.w, T, &work);
        mat_work(&v->blocks[i].ffn_up.w, T, &work);
        mat_work(&v->blocks[i].ffn_down.w, T, &work);
    }
    for (int i = 0; qf && i < v->qf_n_layer; i++) {
        const qformer_layer *L = &v->qf_layers[i];
        const qformer_attn *as[2] = {&L->self_attn, L->has_cross ? &L->cross_attn : NULL};
        for (int j = 0; j < 2; j++) {
            if (!as[j]) continue;
            mat_work(&as[j]->q.w, rows, &work);
            mat_work(&as[j]->k.w, rows, &work);
            mat_work(&as[j]->v.w, rows, &work);
            mat_work(&as[j]->out.w, rows, &work);
        }
        mat_work(&L->ffn_up.w, rows, &work);
        mat_work(&L->ffn_down.w, rows, &work);
    }
    mat_work(&v->proj.w, rows, &work);
    size_t bytes, all;
    if (!mg_mul_ok(total, sizeof(float), &bytes) || !mg_add_ok(bytes, work + 64, &all))
        return mg_err(err, err_len, MG_ERR_NOMEM, "vision: workspace size overflows");

    vision_ws *ws = calloc(1, sizeof *ws);
    if (!ws || !(ws->base = mg_malloc_aligned(all))) {
        free(ws);
        return mg_err(err, err_len, MG_ERR_NOMEM, "vision: no memory for a %zu MiB workspace", all >> 20);
    }
    float *p = ws->base;
    float **dst[VWS_COUNT + 3] = {&ws->buf[VWS_X], &ws->buf[VWS_H], &ws->buf[VWS_BIG], &ws->buf[VWS_KV],
                                  &ws->buf[VWS_IMG], &ws->buf[VWS_QF], &ws->att_k, &ws->att_vt, &ws->att_scr};
    ws->att_slots = n_threads;
    ws->att_slot_floats = slot;
    for (size_t i = 0; i < MG_ARRAY_LEN(n); i++) {
        *dst[i] = p;
        p += ((size_t)n[i] + 15) & ~(size_t)15;
    }
    ws->mm_work = work ? (void *)p : NULL;
    *out = ws;
    return MG_OK;
}

/* Frees a workspace (NULL allowed). */
void vision_ws_free(vision_ws *ws) {
    if (!ws) return;
    mg_free_aligned(ws->base);
    free(ws);
}

/* One named buffer of the workspace. */
float *vision_ws_buf_get(vision_ws *ws, vision_ws_buf b) { return ws->buf[b]; }

/* ==== Shared compute helpers ==== */

typedef struct {
    float *y;
    const float *b;
    int64_t ldy, ldb, n;
} add_ctx;

static void add_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    const add_ctx *c = ctx;
    for (int64_t i = i0; i < i1; i++) mg_vec_add(c->y + i * c->ldy, c->b + i * c->ldb, c->n);
}

static void add_rows(mg_pool *pool, float *y, int64_t ldy, const float *b, int64_t ldb, int64_t M, int64_t N) {
    add_ctx c = {y, b, ldy, ldb, N};
    mg_pool_run(pool, M, MG_MAX((int64_t)1, 16384 / MG_MAX(N, (int64_t)1)), add_task, &c);
}

/* (y + m * ldy)[0, N) += b for m < M, split across the pool by rows. */
void vision_add_bias_rows(mg_pool *pool, float *y, int64_t ldy, const float *b, int64_t M, int64_t N) {
    add_rows(pool, y, ldy, b, 0, M, N);
}

/* x[M, N] += y[M, N] (contiguous rows), split across the pool by rows. */
void vision_add_rows(mg_pool *pool, float *x, const float *y, int64_t M, int64_t N) {
    add_rows(pool, x, N, y, N, M, N);
}

/* Matmul through the kernels (the wide path: every caller has many rows) with the bias, GELU
 * and residual add as its epilogue. */
void vision_linear_fwd_ep(const vision_linear *l, vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o,
                          float *y, const float *x, int64_t M, bool gelu, float *add_to) {
    const mg_mm_epilogue ep = {l->b, gelu, add_to};
    mg_matmul_wide_ep(pool, o, y, x, l->w.data, l->w.type, M, l->w.n_out, l->w.n_in, ws->mm_work, &ep);
}

void vision_linear_fwd(const vision_linear *l, vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o,
                       float *y, const float *x, int64_t M) {
    vision_linear_fwd_ep(l, ws, pool, o, y, x, M, false, NULL);
}

typedef struct {
    float *out;
    const float *x;
    const vision_norm *nm;
    int64_t n;
    float eps;
} ln_ctx;

static void ln_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    const ln_ctx *c = ctx;
    for (int64_t i = i0; i < i1; i++)
        mg_layernorm_simd(c->out + i * c->n, c->x + i * c->n, c->nm->w, c->nm->b, c->n, c->eps);
}

/* Row LayerNorm (the selected SIMD path) split across the pool. */
void vision_layernorm_rows(mg_pool *pool, float *out, const float *x, const vision_norm *nm, int64_t M,
                           int64_t n, float eps) {
    ln_ctx c = {out, x, nm, n, eps};
    mg_pool_run(pool, M, 16, ln_task, &c);
}

typedef struct {
    float *x;
    int64_t n;
} rows_ctx;

static void gelu_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    const rows_ctx *c = ctx;
    mg_gelu_simd(c->x + i0 * c->n, (i1 - i0) * c->n);
}

/* Exact (erf) GELU split across the pool by rows. */
void vision_gelu_rows(mg_pool *pool, float *x, int64_t M, int64_t n) {
    rows_ctx c = {x, n};
    mg_pool_run(pool, M, 8, gelu_task, &c);
}

typedef struct {
    const vision_ws *ws;
    const mg_kernel_opts *o;
    float *out;
    const float *q, *k, *v;
    int64_t ldq, ldk, ldv, ldo, Tq, Tk, n_rb;
    int d;
    float scale;
    bool direct; /* the products read k and v in place (mg_matmul_wide_strided) */
} att_ctx;

/* Heads [h0, h1): keys and transposed values of each head, contiguous. */
static void att_pack_task(void *ctx, int64_t h0, int64_t h1, int ith) {
    const att_ctx *c = ctx;
    const int d = c->d;
    for (int64_t h = h0; h < h1; h++) {
        float *kh = c->ws->att_k + h * c->Tk * d, *vh = c->ws->att_vt + h * c->Tk * d;
        for (int64_t t = 0; t < c->Tk; t++)
            for (int j = 0; j < d; j++) {
                kh[t * d + j] = c->k[t * c->ldk + h * d + j];
                vh[j * c->Tk + t] = c->v[t * c->ldv + h * d + j];
            }
    }
}

/* Items [i0, i1) = (head, block of ATT_RB query rows), head-major: scaled queries, scores,
 * softmax and output of the block in this thread's slot. */
static void att_rows_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    const att_ctx *c = ctx;
    const int d = c->d;
    float *qb = c->ws->att_scr + (int64_t)ith * c->ws->att_slot_floats, *ob = qb + ATT_RB * d, *sb = ob + ATT_RB * d;
    for (int64_t it = i0; it < i1; it++) {
        const int64_t h = it / c->n_rb, r0 = it % c->n_rb * ATT_RB, nr = MG_MIN((int64_t)ATT_RB, c->Tq - r0);
        for (int64_t i = 0; i < nr; i++)
            for (int j = 0; j < d; j++) qb[i * d + j] = c->q[(r0 + i) * c->ldq + h * d + j] * c->scale;
        if (c->direct) { /* keys as weight rows, values as k-major weights, output in place */
            mg_matmul_wide_strided(NULL, c->o, sb, c->Tk, qb, d, c->k + h * d, c->ldk, false, MG_TYPE_F32, nr,
                                   c->Tk, d, NULL);
            for (int64_t i = 0; i < nr; i++) mg_softmax_simd(sb + i * c->Tk, c->Tk);
            mg_matmul_wide_strided(NULL, c->o, c->out + r0 * c->ldo + h * d, c->ldo, sb, c->Tk, c->v + h * d,
                                   c->ldv, true, MG_TYPE_F32, nr, d, c->Tk, NULL);
            continue;
        }
        mg_matmul_wide(NULL, c->o, sb, qb, c->ws->att_k + h * c->Tk * d, MG_TYPE_F32, nr, c->Tk, d, NULL);
        for (int64_t i = 0; i < nr; i++) mg_softmax_simd(sb + i * c->Tk, c->Tk);
        mg_matmul_wide(NULL, c->o, ob, sb, c->ws->att_vt + h * c->Tk * d, MG_TYPE_F32, nr, d, c->Tk, NULL);
        for (int64_t i = 0; i < nr; i++)
            memcpy(c->out + (r0 + i) * c->ldo + h * d, ob + i * d, (size_t)d * sizeof(float));
    }
}

/* Unmasked multi-head attention. The threads take (head, block of query rows) items, each with
 * its scores in the thread's slot of the workspace (ATT_RB rows: no [Tq, Tk] buffer); the products
 * read every head's keys and values where they are (mg_matmul_wide_strided: the values as k-major
 * weights), or, where the kernels cannot, from contiguous copies made first (threads over heads).
 * Both products are mg_matmul_wide chains either way, so the bits depend on neither the path nor
 * the thread count. */
void vision_attention(vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o, float *out, const float *q,
                      int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv, int64_t Tq,
                      int64_t Tk, int n_head, int d, float scale) {
    att_ctx c = {ws, o, out, q, k, v, ldq, ldk, ldv, (int64_t)n_head * d, Tq, Tk, (Tq + ATT_RB - 1) / ATT_RB,
                 d, scale, false};
    /* M = 0: only asks whether the selected kernels can */
    c.direct = mg_matmul_wide_strided(NULL, o, NULL, 0, NULL, 0, NULL, 0, true, MG_TYPE_F32, 0, 0, 1, NULL);
    if (!c.direct) mg_pool_run(pool, n_head, 1, att_pack_task, &c);
    /* at most att_slots parts: one slot of scratch each */
    const int64_t items = n_head * c.n_rb;
    mg_pool_run(pool, items, (items + ws->att_slots - 1) / ws->att_slots, att_rows_task, &c);
}

/* ==== Projection and the whole pipeline ==== */

/* llama_proj over the Q-Former output, or over the merged patch tokens. */
void vision_project(const mg_vision *v, vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o,
                    const float *in, float *out) {
    if (v->proj_type == VISION_PROJ_QFORMER) {
        vision_linear_fwd(&v->proj, ws, pool, o, out, in, v->qf_n_query);
    } else {
        /* Drop CLS; the remaining [n_patch, E] rows read as [n_patch/4, 4E] are the merged tokens
         * (4 consecutive patches of one grid row), as minigpt_v2.py's view(). */
        vision_linear_fwd(&v->proj, ws, pool, o, out, in + v->n_embd, v->n_out);
    }
}

/* ViT -> ln_vision -> [Q-Former] -> projection, all scratch in ws. */
mg_status vision_encode_ws(const mg_vision *v, vision_ws *ws, mg_pool *pool, const mg_kernel_opts *o,
                           const float *img, float *out) {
    if (!v || !ws || !img || !out) return MG_ERR_INVALID_ARG;
    float *img_embd = ws->buf[VWS_IMG];
    vision_vit_forward(v, ws, pool, o, img, img_embd);
    if (v->proj_type == VISION_PROJ_QFORMER) {
        vision_qformer_forward(v, ws, pool, o, img_embd, ws->buf[VWS_QF]);
        vision_project(v, ws, pool, o, ws->buf[VWS_QF], out);
    } else {
        vision_project(v, ws, pool, o, img_embd, out);
    }
    return MG_OK;
}

/* vision_encode_ws with a workspace made and freed for this call. */
mg_status vision_encode(const mg_vision *v, mg_pool *pool, const mg_kernel_opts *o, const float *img,
                        float *out, char *err, size_t err_len) {
    if (!v || !img || !out) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "vision_encode: NULL argument");
    vision_ws *ws;
    mg_status st = vision_ws_create(&ws, v, mg_pool_n_threads(pool), err, err_len);
    if (st != MG_OK) return st;
    st = vision_encode_ws(v, ws, pool, o, img, out);
    vision_ws_free(ws);
    return st;
}

/* ==== Position-embedding resize ==== */

/* PyTorch's cubic convolution weights (UpSample.h) for fraction t, A = -0.75. */
static void cubic_weights(float t, float w[4]) {
    const float A = -0.75f;
    float x1 = t + 1.0f, x2 = 1.0f - t, x3 = 2.0f - t;
    w[0] = ((A * x1 - 5.0f * A) * x1 + 8.0f * A) * x1 - 4.0f * A;
    w[1] = ((A + 2.0f) * t - (A + 3.0f)) * t * t + 1.0f;
    w[2] = ((A + 2.0f) * x2 - (A + 3.0f)) * x2 * x2 + 1.0f;
    w[3] = ((A * x3 - 5.0f * A) * x3 + 8.0f * A) * x3 - 4.0f * A;
}

/* Source taps (clamped) and weights of output index i when resizing n_in -> n_out,
 * align_corners=False: src = (i + 0.5) * n_in / n_out - 0.5, not clamped for cubic. */
static void cubic_taps(int i, int n_in, int n_out, int idx[4], float w[4]) {
    float scale = (float)n_in / (float)n_out;
    float src = scale * ((float)i + 0.5f) - 0.5f;
    float f = floorf(src);
    int i0 = (int)f;
    cubic_weights(src - f, w);
    for (int k = 0; k < 4; k++) idx[k] = MG_MIN(MG_MAX(i0 - 1 + k, 0), n_in - 1);
}

/* Separable bicubic resize of the patch grid; each output row is 16 taps of source rows. */
void vision_interp_pos_embed(const float *src, int gs, int gd, int c, float *dst) {
    memcpy(dst, src, (size_t)c * sizeof(float));
    for (int oy = 0; oy < gd; oy++) {
        int iy[4], ix[4];
        float wy[4], wx[4];
        cubic_taps(oy, gs, gd, iy, wy);
        for (int ox = 0; ox < gd; ox++) {
            cubic_taps(ox, gs, gd, ix, wx);
            float *d = dst + (size_t)(1 + oy * gd + ox) * (size_t)c;
            for (int j = 0; j < c; j++) d[j] = 0.0f;
            for (int a = 0; a < 4; a++) {
                /* rows first (x taps of one source row), then the row weight, as PyTorch nests */
                const float *r0 = src + (size_t)(1 + iy[a] * gs + ix[0]) * (size_t)c;
                const float *r1 = src + (size_t)(1 + iy[a] * gs + ix[1]) * (size_t)c;
                const float *r2 = src + (size_t)(1 + iy[a] * gs + ix[2]) * (size_t)c;
                const float *r3 = src + (size_t)(1 + iy[a] * gs + ix[3]) * (size_t)c;
                for (int j = 0; j < c; j++) d[j] += wy[a] * (wx[0] * r0[j] + wx[1] * r1[j] + wx[2] * r2[j] + wx[3] * r3[j]);
            }
        }
    }
}
