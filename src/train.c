/*
 * train.c - the trainable tiny MiniGPT-v2 model (see train.h): parameter table, forward with an
 * activation cache, backward, AdamW with a warm-up + cosine schedule and gradient clipping, and
 * GGUF checkpoints that the engine can run. The forward follows /work/shared/spec/minigpt.md
 * §1 (ViT), §3 (merge4 + projection) and §4.2 (LLaMA, with RoPE on adjacent pairs of the
 * llama.cpp-permuted q/k rows, as session.c does).
 */
#include "train.h"

#include "kernels.h"
#include "train_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TR_MAX_DIM 65536
#define TR_MAX_LAYER 256

/* ==== Weight views ==== */

typedef struct {
    float *ln1_w, *ln1_b;   /* [E] */
    float *qkv_w;           /* [3E, E]: rows q | k | v */
    float *q_b, *v_b;       /* [E] */
    float *out_w, *out_b;   /* [E, E], [E] */
    float *ln2_w, *ln2_b;   /* [E] */
    float *up_w, *up_b;     /* [F, E], [F] */
    float *down_w, *down_b; /* [E, F], [E] */
} vit_w;

typedef struct {
    float *attn_norm;       /* [d] */
    float *wq;              /* [H*hd, d] (llama.cpp row order) */
    float *wk, *wv;         /* [Hkv*hd, d] */
    float *wo;              /* [d, H*hd] */
    float *ffn_norm;        /* [d] */
    float *gate, *up;       /* [F, d] */
    float *down;            /* [d, F] */
    float *lqa, *lqb;       /* LoRA on q: A [r, d], B [H*hd, r] (lora_rank > 0) */
    float *lva, *lvb;       /* LoRA on v: A [r, d], B [Hkv*hd, r] */
} llm_w;

/* Pointers of every tensor into one flat array (parameters or gradients). */
typedef struct {
    float *patch_w, *patch_b; /* [E, 3*P*P], [E] */
    float *cls;               /* [E] */
    float *pos;               /* [1 + Np, E] */
    vit_w *vb;                /* [v_layer] */
    float *post_w, *post_b;   /* [E] */
    float *proj_w, *proj_b;   /* [d, 4E], [d] */
    float *tok;               /* [V, d] */
    llm_w *lb;                /* [n_layer] */
    float *out_norm;          /* [d] */
    float *out;               /* [V, d] */
    float *aux_w, *aux_b;     /* [C, E], [C] (aux_classes > 0) */
    float *mask_w, *mask_b;   /* [P*P, E], [P*P] (aux_mask > 0) */
} tr_w;

/* Walks the tensors in file order. When m->tensors is NULL-counting (reg), records each one;
 * when w is given, points each field at base + offset (NULL for groups outside mask). */
typedef struct {
    tr_model *m;
    bool reg;
    int idx;
    int64_t off;
    float *base;
    int mask;
} walker;

static void tensor(walker *k, float **field, const char *name, int group, bool decay, int64_t ne0, int64_t ne1) {
    const int64_t n = ne0 * ne1;
    if (k->reg) {
        tr_tensor *t = &k->m->tensors[k->idx];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "%s", name);
        t->n_dims = ne1 > 1 || decay ? 2 : 1;
        t->ne[0] = ne0;
        t->ne[1] = ne1;
        t->ne[2] = t->ne[3] = 1;
        t->off = k->off;
        t->n = n;
        t->group = group;
        t->decay = decay;
    }
    if (field) *field = k->base && (group & k->mask) ? k->base + k->off : NULL;
    k->idx++;
    k->off += n;
}

/* The one list of tensors: names, groups, decay flags and shapes (GGUF ne order). */
static void walk(walker *k, tr_w *w) {
    const tr_config *c = &k->m->cfg;
    const int64_t E = c->v_embd, P = c->patch_size, G = c->image_size / c->patch_size, Np = G * G;
    const int64_t d = c->n_embd, hd = c->n_embd / c->n_head, qd = c->n_head * hd, kvd = c->n_head_kv * hd;
    const int V = TR_GROUP_VISION, J = TR_GROUP_PROJ, L = TR_GROUP_LLM;
    char nm[64];
    tr_w dummy;
    vit_w vd;
    llm_w ld;
    if (!w) w = &dummy;
    tensor(k, &w->patch_w, "v.patch_embd.weight", V, true, 3 * P * P, E);
    tensor(k, &w->patch_b, "v.patch_embd.bias", V, false, E, 1);
    tensor(k, &w->cls, "v.class_embd", V, false, E, 1);
    tensor(k, &w->pos, "v.position_embd", V, false, E, 1 + Np);
    for (int i = 0; i < c->v_layer; i++) {
        vit_w *b = w != &dummy ? &w->vb[i] : &vd;
#define VT(f, s, dec, a, bb) (snprintf(nm, sizeof nm, "v.blk.%d.%s", i, s), tensor(k, &b->f, nm, V, dec, a, bb))
        VT(ln1_w, "ln1.weight", false, E, 1);
        VT(ln1_b, "ln1.bias", false, E, 1);
        VT(qkv_w, "attn_qkv.weight", true, E, 3 * E);
        VT(q_b, "attn_q.bias", false, E, 1);
        VT(v_b, "attn_v.bias", false, E, 1);
        VT(out_w, "attn_out.weight", true, E, E);
        VT(out_b, "attn_out.bias", false, E, 1);
        VT(ln2_w, "ln2.weight", false, E, 1);
        VT(ln2_b, "ln2.bias", false, E, 1);
        VT(up_w, "ffn_up.weight", true, E, c->v_ff);
        VT(up_b, "ffn_up.bias", false, c->v_ff, 1);
        VT(down_w, "ffn_down.weight", true, c->v_ff, E);
        VT(down_b, "ffn_down.bias", false, E, 1);
#undef VT
    }
    tensor(k, &w->post_w, "v.post_ln.weight", V, false, E, 1);
    tensor(k, &w->post_b, "v.post_ln.bias", V, false, E, 1);
    tensor(k, &w->proj_w, "mm.proj.weight", J, true, 4 * E, d);
    tensor(k, &w->proj_b, "mm.proj.bias", J, false, d, 1);
    tensor(k, &w->tok, "token_embd.weight", L, false, d, c->n_vocab);
    for (int i = 0; i < c->n_layer; i++) {
        llm_w *b = w != &dummy ? &w->lb[i] : &ld;
#define LT(f, s, dec, a, bb) (snprintf(nm, sizeof nm, "blk.%d.%s.weight", i, s), tensor(k, &b->f, nm, L, dec, a, bb))
        LT(attn_norm, "attn_norm", false, d, 1);
        LT(wq, "attn_q", true, d, qd);
        LT(wk, "attn_k", true, d, kvd);
        LT(wv, "attn_v", true, d, kvd);
        LT(wo, "attn_output", true, qd, d);
        LT(ffn_norm, "ffn_norm", false, d, 1);
        LT(gate, "ffn_gate", true, d, c->n_ff);
        LT(up, "ffn_up", true, d, c->n_ff);
        LT(down, "ffn_down", true, c->n_ff, d);
#undef LT
    }
    tensor(k, &w->out_norm, "output_norm.weight", L, false, d, 1);
    tensor(k, &w->out, "output.weight", L, true, d, c->n_vocab);
    if (c->aux_classes > 0) {
        tensor(k, &w->aux_w, "aux.patch_cls.weight", V, true, E, c->aux_classes);
        tensor(k, &w->aux_b, "aux.patch_cls.bias", V, false, c->aux_classes, 1);
    }
    if (c->aux_mask > 0) {
        tensor(k, &w->mask_w, "aux.patch_mask.weight", V, true, E, c->aux_mask);
        tensor(k, &w->mask_b, "aux.patch_mask.bias", V, false, c->aux_mask, 1);
    }
    /* last, so that the tensors (and offsets) of a model without adapters are unchanged */
    for (int i = 0; c->lora_rank > 0 && i < c->n_layer; i++) {
        llm_w *b = w != &dummy ? &w->lb[i] : &ld;
        const int64_t r = c->lora_rank, LR = TR_GROUP_LORA;
#define RT(f, s, a, bb) (snprintf(nm, sizeof nm, "lora.blk.%d.%s", i, s), tensor(k, &b->f, nm, LR, true, a, bb))
        RT(lqa, "attn_q.a", d, r);
        RT(lqb, "attn_q.b", r, qd);
        RT(lva, "attn_v.a", d, r);
        RT(lvb, "attn_v.b", r, kvd);
#undef RT
    }
}

static int count_tensors(const tr_config *c) {
    return 4 + 13 * c->v_layer + 5 + 9 * c->n_layer + 2 + (c->aux_classes > 0 ? 2 : 0) + (c->aux_mask > 0 ? 2 : 0) +
           (c->lora_rank > 0 ? 4 * c->n_layer : 0);
}

/* Views of base (parameters or gradients) for the groups in mask; w->vb / w->lb must be allocated. */
static void bind(tr_model *m, tr_w *w, float *base, int mask) {
    walker k = {.m = m, .base = base, .mask = mask};
    walk(&k, w);
}

/* ==== Activation cache ==== */

typedef struct {
    float *ln1, *m1, *r1;   /* [Tv, E], [Tv], [Tv] */
    float *q, *k, *v;       /* [Tv, E] each */
    float *qr, *kr;         /* [Tv, E] */
    float *att;             /* [Hv, Tv, Tv] */
    float *ao;              /* [Tv, E] */
    float *xmid;            /* [Tv, E] */
    float *ln2, *m2, *r2;   /* [Tv, E], [Tv], [Tv] */
    float *up, *act;        /* [Tv, Fv] */
} vit_cache;

typedef struct {
    float *n1, *r1;         /* [L, d], [L] */
    float *q, *k, *v;       /* [L, qd], [L, kvd], [L, kvd] */
    float *qr, *kr;         /* same */
    float *att;             /* [H, L, L] */
    float *ao;              /* [L, qd] */
    float *xmid;            /* [L, d] */
    float *n2, *r2;         /* [L, d], [L] */
    float *gate, *up, *h;   /* [L, F] */
    float *uq, *uv;         /* [L, r] A x of the LoRA adapters on q and v (lora_rank > 0) */
} llm_cache;

struct tr_cache {
    int L;                  /* sequence rows the buffers hold */
    int L_last;             /* rows of the last example (0: none yet) */
    bool aux_last;          /* the last forward computed the auxiliary head's logits */
    uint64_t tower_key;     /* image_key of the frozen-tower features in pln / merged (0: none) */
    int64_t tower_runs;     /* tower forwards run on these buffers */
    float *arena;
    vit_w *vb_p, *vb_g;     /* weight / gradient views */
    llm_w *lb_p, *lb_g;
    vit_cache *vc;          /* [v_layer] */
    llm_cache *lc;          /* [n_layer] */
    /* vision */
    float *patches;         /* [Np, 3PP] */
    float *pe;              /* [Np, E] */
    float *vx;              /* [v_layer + 1, Tv, E] residual stream at each block boundary */
    float *pln, *pm, *pr;   /* ln_vision: [Tv, E], [Tv], [Tv] */
    float *merged;          /* [Np/4, 4E] */
    /* language model */
    float *x;               /* [n_layer + 1, L, d] */
    float *nf, *rf;         /* [L, d], [L] */
    float *logits;          /* [L, V] */
    float *rope_cos, *rope_sin; /* [L, hd/2] */
    int32_t *ids;           /* [L] token id per row (-1: image row) */
    int32_t *targets;       /* [L] */
    uint8_t *tmask;         /* [L] */
    /* backward scratch */
    float *dlogits;         /* [L, V] */
    float *dres;            /* [L, d] */
    float *dn;              /* [L, d] */
    float *dao, *dq;        /* [L, qd] */
    float *dk, *dv;         /* [L, kvd] */
    float *dgate, *dup, *dh;/* [L, F] */
    float *dattn;           /* attention scratch, max of both towers */
    float *vres;            /* [Tv, E] */
    float *vdn;             /* [Tv, E] */
    float *vdao, *vdq, *vdk, *vdv; /* [Tv, E] */
    float *vdup, *vdact;    /* [Tv, Fv] */
    float *dmerged;         /* [Np/4, 4E] */
    float *dpe;             /* [Np, E] */
    /* auxiliary patch head */
    float *aux_logits, *aux_dlogits; /* [Np, C] */
    float *aux_dfeat;       /* [Np, E] gradient into the ln_vision patch rows */
    uint8_t *aux_mask;      /* [Np] */
    int32_t *aux_tgt;       /* [Np] */
    int32_t *aux_tgt2;      /* [Np] the colour targets of a split head */
    float *mask_logits, *mask_dlogits; /* [Np, P*P] */
    /* LoRA (lora_rank > 0) */
    float *lora_tmp;        /* [L, qd] B (A x) in the forward, scale * dy in the backward */
    float *lora_du;         /* [L, r] */
};

/* Hands out consecutive 64-byte aligned slices of an arena (counting only when base is NULL). */
typedef struct {
    float *base;
    size_t used; /* floats */
} carver;

static float *carve(carver *cv, size_t n) {
    float *p = cv->base ? cv->base + cv->used : NULL;
    cv->used += (n + 15) & ~(size_t)15;
    return p;
}

static void layout_cache(const tr_config *c, tr_cache *ch, carver *cv, int L) {
    const size_t E = (size_t)c->v_embd, G = (size_t)(c->image_size / c->patch_size), Np = G * G, Tv = 1 + Np;
    const size_t Fv = (size_t)c->v_ff, P = (size_t)c->patch_size, Hv = (size_t)c->v_head;
    const size_t d = (size_t)c->n_embd, hd = d / (size_t)c->n_head, qd = (size_t)c->n_head * hd,
                 kvd = (size_t)c->n_head_kv * hd, F = (size_t)c->n_ff, V = (size_t)c->n_vocab, Ls = (size_t)L;
    for (int i = 0; i < c->v_layer; i++) {
        vit_cache *v = &ch->vc[i];
        v->ln1 = carve(cv, Tv * E); v->m1 = carve(cv, Tv); v->r1 = carve(cv, Tv);
        v->q = carve(cv, Tv * E); v->k = carve(cv, Tv * E); v->v = carve(cv, Tv * E);
        v->qr = carve(cv, Tv * E); v->kr = carve(cv, Tv * E);
        v->att = carve(cv, Hv * Tv * Tv); v->ao = carve(cv, Tv * E); v->xmid = carve(cv, Tv * E);
        v->ln2 = carve(cv, Tv * E); v->m2 = carve(cv, Tv); v->r2 = carve(cv, Tv);
        v->up = carve(cv, Tv * Fv); v->act = carve(cv, Tv * Fv);
    }
    for (int i = 0; i < c->n_layer; i++) {
        llm_cache *l = &ch->lc[i];
        l->n1 = carve(cv, Ls * d); l->r1 = carve(cv, Ls);
        l->q = carve(cv, Ls * qd); l->k = carve(cv, Ls * kvd); l->v = carve(cv, Ls * kvd);
        l->qr = carve(cv, Ls * qd); l->kr = carve(cv, Ls * kvd);
        l->att = carve(cv, (size_t)c->n_head * Ls * Ls); l->ao = carve(cv, Ls * qd);
        l->xmid = carve(cv, Ls * d); l->n2 = carve(cv, Ls * d); l->r2 = carve(cv, Ls);
        l->gate = carve(cv, Ls * F); l->up = carve(cv, Ls * F); l->h = carve(cv, Ls * F);
    }
    ch->patches = carve(cv, Np * 3 * P * P);
    ch->pe = carve(cv, Np * E);
    ch->vx = carve(cv, ((size_t)c->v_layer + 1) * Tv * E);
    ch->pln = carve(cv, Tv * E); ch->pm = carve(cv, Tv); ch->pr = carve(cv, Tv);
    ch->merged = carve(cv, Np * E);
    ch->x = carve(cv, ((size_t)c->n_layer + 1) * Ls * d);
    ch->nf = carve(cv, Ls * d); ch->rf = carve(cv, Ls);
    ch->logits = carve(cv, Ls * V);
    ch->rope_cos = carve(cv, Ls * hd / 2); ch->rope_sin = carve(cv, Ls * hd / 2);
    ch->ids = (int32_t *)carve(cv, Ls);
    ch->targets = (int32_t *)carve(cv, Ls);
    ch->tmask = (uint8_t *)carve(cv, Ls);
    ch->dlogits = carve(cv, Ls * V);
    ch->dres = carve(cv, Ls * d); ch->dn = carve(cv, Ls * d);
    ch->dao = carve(cv, Ls * qd); ch->dq = carve(cv, Ls * qd);
    ch->dk = carve(cv, Ls * kvd); ch->dv = carve(cv, Ls * kvd);
    ch->dgate = carve(cv, Ls * F); ch->dup = carve(cv, Ls * F); ch->dh = carve(cv, Ls * F);
    tr_attn_dims ad = {.T = L, .n_head = c->n_head, .n_head_kv = c->n_head_kv, .head_dim = (int)hd};
    tr_attn_dims vd = {.T = (int)Tv, .n_head = c->v_head, .n_head_kv = c->v_head, .head_dim = (int)(E / Hv)};
    ch->dattn = carve(cv, MG_MAX(tr_attn_scratch_floats(&ad), tr_attn_scratch_floats(&vd)));
    ch->vres = carve(cv, Tv * E); ch->vdn = carve(cv, Tv * E);
    ch->vdao = carve(cv, Tv * E); ch->vdq = carve(cv, Tv * E); ch->vdk = carve(cv, Tv * E); ch->vdv = carve(cv, Tv * E);
    ch->vdup = carve(cv, Tv * Fv); ch->vdact = carve(cv, Tv * Fv);
    ch->dmerged = carve(cv, Np * E);
    ch->dpe = carve(cv, Np * E);
    const size_t C = (size_t)MG_MAX(c->aux_classes, 0);
    ch->aux_logits = carve(cv, Np * C);
    ch->aux_dlogits = carve(cv, Np * C);
    const size_t Mk = (size_t)MG_MAX(c->aux_mask, 0);
    ch->aux_dfeat = carve(cv, C || Mk ? Np * E : 0);
    ch->mask_logits = carve(cv, Np * Mk);
    ch->mask_dlogits = carve(cv, Np * Mk);
    ch->aux_mask = (uint8_t *)carve(cv, Np);
    ch->aux_tgt = (int32_t *)carve(cv, Np);
    ch->aux_tgt2 = (int32_t *)carve(cv, Np);
    /* last, so that a model without adapters keeps its layout */
    const size_t R = (size_t)MG_MAX(c->lora_rank, 0);
    for (int i = 0; i < c->n_layer; i++) {
        ch->lc[i].uq = carve(cv, Ls * R);
        ch->lc[i].uv = carve(cv, Ls * R);
    }
    ch->lora_tmp = carve(cv, R ? Ls * qd : 0);
    ch->lora_du = carve(cv, Ls * R);
}

/* Makes sure the cache holds sequences of L rows. */
static mg_status cache_reserve(tr_model *m, tr_cache *ch, int L, char *err, size_t err_len) {
    if (ch->arena && ch->L >= L) return MG_OK;
    carver cv = {NULL, 0};
    layout_cache(&m->cfg, ch, &cv, L);
    size_t bytes;
    if (!mg_mul_ok(cv.used, sizeof(float), &bytes))
        return mg_err(err, err_len, MG_ERR_NOMEM, "train: activation cache too large");
    float *a = mg_malloc_aligned(bytes);
    if (!a) return mg_err(err, err_len, MG_ERR_NOMEM, "train: no memory for a %zu-byte activation cache", bytes);
    mg_free_aligned(ch->arena);
    ch->arena = a;
    ch->L = L;
    ch->tower_key = 0; /* new buffers: no tower features kept */
    cv.base = a;
    cv.used = 0;
    layout_cache(&m->cfg, ch, &cv, L);
    return MG_OK;
}

static void cache_free(tr_cache *ch);

/* An empty cache (buffers come with the first cache_reserve); NULL when out of memory. */
static tr_cache *cache_new(const tr_config *cfg) {
    tr_cache *ch = calloc(1, sizeof *ch);
    if (!ch) return NULL;
    const size_t nv = (size_t)MG_MAX(cfg->v_layer, 1), nl = (size_t)MG_MAX(cfg->n_layer, 1);
    ch->vb_p = calloc(nv, sizeof(vit_w));
    ch->vb_g = calloc(nv, sizeof(vit_w));
    ch->lb_p = calloc(nl, sizeof(llm_w));
    ch->lb_g = calloc(nl, sizeof(llm_w));
    ch->vc = calloc(nv, sizeof(vit_cache));
    ch->lc = calloc(nl, sizeof(llm_cache));
    if (!ch->vb_p || !ch->vb_g || !ch->lb_p || !ch->lb_g || !ch->vc || !ch->lc) {
        cache_free(ch);
        return NULL;
    }
    return ch;
}

static void cache_free(tr_cache *ch) {
    if (!ch) return;
    mg_free_aligned(ch->arena);
    free(ch->vb_p);
    free(ch->vb_g);
    free(ch->lb_p);
    free(ch->lb_g);
    free(ch->vc);
    free(ch->lc);
    free(ch);
}

/* ==== Model ==== */

static mg_status check_config(const tr_config *c, char *err, size_t err_len) {
    const int dims[] = {c->image_size, c->patch_size, c->v_embd, c->v_head, c->v_ff, c->n_vocab, c->n_embd,
                        c->n_head, c->n_head_kv, c->n_ff, c->n_ctx};
    for (size_t i = 0; i < MG_ARRAY_LEN(dims); i++)
        if (dims[i] < 1 || dims[i] > TR_MAX_DIM)
            return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: a dimension (%d) is out of range", dims[i]);
    if (c->v_layer < 0 || c->v_layer > TR_MAX_LAYER || c->n_layer < 0 || c->n_layer > TR_MAX_LAYER)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: layer counts must be in [0, %d]", TR_MAX_LAYER);
    if (c->image_size % c->patch_size != 0)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: image_size %d is not a multiple of patch_size %d",
                      c->image_size, c->patch_size);
    const int G = c->image_size / c->patch_size;
    if ((G * G) % 4 != 0 || G > 256)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: %dx%d patches cannot be merged by 4", G, G);
    if (c->v_embd % c->v_head != 0 || c->n_embd % c->n_head != 0 || c->n_head % c->n_head_kv != 0 ||
        (c->n_embd / c->n_head) % 2 != 0)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: head counts do not divide the widths");
    const float eps[] = {c->v_eps, c->post_eps, c->rms_eps};
    for (size_t i = 0; i < MG_ARRAY_LEN(eps); i++)
        if (!(eps[i] > 0.0f && eps[i] < 1.0f))
            return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: epsilons must be in (0, 1)");
    if (!(c->rope_theta > 0.0f) || !isfinite(c->rope_theta))
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: rope_theta must be positive");
    if (c->n_ctx < (G * G) / 4 + 1)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: n_ctx %d cannot hold the %d image rows", c->n_ctx,
                      G * G / 4);
    if (c->aux_classes < 0 || c->aux_classes > 4096)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: aux_classes %d not in [0, 4096]", c->aux_classes);
    if (c->aux_mask != 0 && c->aux_mask != c->patch_size * c->patch_size)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: aux_mask %d must be 0 or patch_size^2 (%d)",
                      c->aux_mask, c->patch_size * c->patch_size);
    if (c->lora_rank != 0) {
        /* A is [r, d], B [H*hd, r] or [Hkv*hd, r]: the rank cannot exceed the smallest side */
        const int kvd = c->n_head_kv * (c->n_embd / c->n_head), lim = MG_MIN(c->n_embd, kvd);
        if (c->lora_rank < 1 || c->lora_rank > lim)
            return mg_err(err, err_len, MG_ERR_INVALID_ARG,
                          "train: LoRA rank %d not in [1, %d] (the q/v matrices are %d wide, k/v %d rows)",
                          c->lora_rank, lim, c->n_embd, kvd);
        if (!(c->lora_alpha > 0.0f) || !isfinite(c->lora_alpha))
            return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: LoRA alpha %g must be positive",
                          (double)c->lora_alpha);
        if (c->n_layer < 1)
            return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: LoRA needs at least one decoder layer");
    }
    return MG_OK;
}

/* Defaults as in MiniGPT's stage recipes scaled to a small model. */
tr_opt tr_opt_default(void) {
    tr_opt o = {.lr = 1e-3f, .lr_min = 1e-4f, .warmup = 10, .total = 200, .beta1 = 0.9f, .beta2 = 0.999f,
                .eps = 1e-8f, .weight_decay = 0.05f, .clip = 1.0f};
    return o;
}

/* The tiny test/demo shape. */
tr_config tr_config_tiny(void) {
    tr_config c = {.image_size = 56, .patch_size = 14, .v_embd = 32, .v_layer = 2, .v_head = 4, .v_ff = 64,
                   .v_eps = 1e-6f, .post_eps = 1e-5f, .n_vocab = 320, .n_embd = 64, .n_layer = 2, .n_head = 4,
                   .n_head_kv = 2, .n_ff = 128, .n_ctx = 128, .rms_eps = 1e-5f, .rope_theta = 10000.0f};
    return c;
}

/* "proj" | "llm" | "proj+llm" | "all" | "vision-aux" | "lora" | "proj+lora". */
mg_status tr_parse_mode(const char *s, int *mask, char *err, size_t err_len) {
    if (s && strcmp(s, "proj") == 0) *mask = TR_GROUP_PROJ;
    else if (s && strcmp(s, "llm") == 0) *mask = TR_GROUP_LLM;
    else if (s && strcmp(s, "proj+llm") == 0) *mask = TR_GROUP_PROJ | TR_GROUP_LLM;
    else if (s && strcmp(s, "all") == 0) *mask = TR_GROUP_VISION | TR_GROUP_PROJ | TR_GROUP_LLM;
    else if (s && strcmp(s, "vision-aux") == 0) *mask = TR_GROUP_VISION | TR_AUX_ONLY;
    else if (s && strcmp(s, "lora") == 0) *mask = TR_GROUP_LORA;
    else if (s && strcmp(s, "proj+lora") == 0) *mask = TR_GROUP_PROJ | TR_GROUP_LORA;
    else return mg_err(err, err_len, MG_ERR_INVALID_ARG,
                       "unknown training mode '%s' (proj, llm, proj+llm, all, vision-aux, lora, proj+lora)",
                       s ? s : "(null)");
    return MG_OK;
}

/* splitmix64 -> uniform (0, 1) -> Box-Muller normal. */
static double rng_uniform(uint64_t *s) {
    uint64_t x = *s += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    return ((double)(x >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double rng_normal(uint64_t *s) {
    const double u1 = rng_uniform(s), u2 = rng_uniform(s);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* Allocates the tables, flat arrays, views and pool (weights left zero). */
static mg_status model_alloc(tr_model **out, const tr_config *cfg, int n_threads, char *err, size_t err_len) {
    mg_status st = check_config(cfg, err, err_len);
    if (st != MG_OK) return st;
    tr_model *m = calloc(1, sizeof *m);
    if (!m) return mg_err(err, err_len, MG_ERR_NOMEM, "train: no memory");
    m->cfg = *cfg;
    m->train_mask = TR_GROUP_VISION | TR_GROUP_PROJ | TR_GROUP_LLM;
    m->n_tensors = count_tensors(cfg);
    m->tensors = calloc((size_t)m->n_tensors, sizeof *m->tensors);
    m->cache = cache_new(cfg);
    if (!m->tensors || !m->cache) goto nomem;
    walker k = {.m = m, .reg = true};
    walk(&k, NULL);
    m->n_params = k.off;
    size_t bytes;
    if (!mg_mul_ok((size_t)m->n_params, sizeof(float), &bytes)) goto nomem;
    m->params = mg_malloc_aligned(bytes);
    m->grads = mg_malloc_aligned(bytes);
    m->adam_m = mg_malloc_aligned(bytes);
    m->adam_v = mg_malloc_aligned(bytes);
    if (!m->params || !m->grads || !m->adam_m || !m->adam_v) goto nomem;
    memset(m->params, 0, bytes);
    memset(m->grads, 0, bytes);
    memset(m->adam_m, 0, bytes);
    memset(m->adam_v, 0, bytes);
    if ((st = mg_pool_create(&m->pool, n_threads)) != MG_OK) {
        tr_model_free(m);
        return mg_err(err, err_len, st, "train: cannot start %d threads", n_threads);
    }
    *out = m;
    return MG_OK;
nomem:
    tr_model_free(m);
    return mg_err(err, err_len, MG_ERR_NOMEM, "train: no memory for the model");
}

/* The adapters' start (tr_lora_attach): A kaiming-uniform, B 0, moments 0. The generator is
 * derived from seed apart from the base weights' one, so those do not depend on the adapters. */
static void lora_init(tr_model *m, uint64_t seed) {
    uint64_t s = seed ^ 0x4C6F5241A5A5A5A5ull; /* "LoRA" */
    for (int i = 0; i < m->n_tensors; i++) {
        const tr_tensor *t = &m->tensors[i];
        if (t->group != TR_GROUP_LORA) continue;
        float *p = m->params + t->off;
        const size_t nl = strlen(t->name);
        const bool is_a = nl > 2 && strcmp(t->name + nl - 2, ".a") == 0;
        const double bound = 1.0 / sqrt((double)t->ne[0]); /* A: ne[0] = d (fan-in) */
        for (int64_t j = 0; j < t->n; j++) p[j] = is_a ? (float)((2.0 * rng_uniform(&s) - 1.0) * bound) : 0.0f;
        memset(m->adam_m + t->off, 0, (size_t)t->n * sizeof(float));
        memset(m->adam_v + t->off, 0, (size_t)t->n * sizeof(float));
    }
}

/* Allocates and initialises (see train.h). */
mg_status tr_model_create(tr_model **out, const tr_config *cfg, uint64_t seed, int n_threads, char *err,
                          size_t err_len) {
    if (!out || !cfg) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "tr_model_create: NULL argument");
    *out = NULL;
    tr_model *m;
    mg_status st = model_alloc(&m, cfg, n_threads, err, err_len);
    if (st != MG_OK) return st;
    uint64_t s = seed;
    for (int i = 0; i < m->n_tensors; i++) {
        const tr_tensor *t = &m->tensors[i];
        if (t->group == TR_GROUP_LORA) continue; /* last in the table; lora_init below */
        float *p = m->params + t->off;
        const bool is_w = strstr(t->name, "ln") || strstr(t->name, "norm");
        const bool is_bias = strstr(t->name, ".bias") != NULL;
        const bool is_emb = strstr(t->name, "embd") != NULL;
        for (int64_t j = 0; j < t->n; j++) {
            if (t->decay || (is_emb && !is_bias)) p[j] = (float)(0.02 * rng_normal(&s));
            else if (is_w && !is_bias) p[j] = 1.0f;
            else p[j] = 0.0f;
        }
    }
    if (cfg->pos_sincos > 0) { /* patch (gy, gx): a quarter of the channels each for sin/cos of x and y */
        const int G = cfg->image_size / cfg->patch_size, E = cfg->v_embd, Q = E / 4;
        float *pos = NULL;
        for (int i = 0; i < m->n_tensors; i++)
            if (!strcmp(m->tensors[i].name, "v.position_embd")) pos = m->params + m->tensors[i].off;
        for (int e = 0; pos && e < E; e++) pos[e] = 0.0f;
        for (int g = 0; pos && g < G * G; g++) {
            float *row = pos + (size_t)(g + 1) * (size_t)E;
            const int gy = g / G, gx = g % G;
            for (int k = 0; k < Q; k++) {
                const double f = pow(1.0 / 100.0, (double)k / (double)(Q > 1 ? Q - 1 : 1)) * 3.14159265358979;
                row[k] = cfg->pos_sincos * (float)sin(gx * f);
                row[Q + k] = cfg->pos_sincos * (float)cos(gx * f);
                row[2 * Q + k] = cfg->pos_sincos * (float)sin(gy * f);
                row[3 * Q + k] = cfg->pos_sincos * (float)cos(gy * f);
            }
            for (int e = 4 * Q; e < E; e++) row[e] = 0.0f;
        }
    }
    if (cfg->lora_rank > 0) lora_init(m, seed);
    *out = m;
    return MG_OK;
}

/* Releases everything the model owns. */
void tr_model_free(tr_model *m) {
    if (!m) return;
    mg_pool_free(m->pool);
    cache_free(m->cache);
    for (int i = 1; i < m->n_rep; i++) {
        cache_free(m->rep[i]);
        mg_free_aligned(m->rep_grads[i]);
    }
    free(m->rep);
    free(m->rep_grads);
    mg_free_aligned(m->params);
    mg_free_aligned(m->grads);
    mg_free_aligned(m->adam_m);
    mg_free_aligned(m->adam_v);
    free(m->tensors);
    free(m);
}

/* Linear search by name. */
int tr_find_tensor(const tr_model *m, const char *name) {
    for (int i = 0; m && name && i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return i;
    return -1;
}

/* Zeroes every gradient. */
void tr_zero_grad(tr_model *m) { memset(m->grads, 0, (size_t)m->n_params * sizeof(float)); }

/* ==== Forward / backward ==== */

/* ViT + ln_vision + merge: ch->pln and ch->merged from the image. */
static void vision_tower_fwd(tr_model *m, tr_cache *ch, mg_pool *pool, const tr_w *W, const float *image) {
    const tr_config *c = &m->cfg;
    const int64_t E = c->v_embd, G = c->image_size / c->patch_size, Np = G * G, Tv = 1 + Np, Fv = c->v_ff;
    const int64_t PP3 = 3 * (int64_t)c->patch_size * c->patch_size;
    tr_patchify(ch->patches, image, c->image_size, c->patch_size);
    tr_linear_fwd(pool, ch->pe, ch->patches, W->patch_w, W->patch_b, Np, E, PP3);
    tr_cls_pos_fwd(ch->vx, ch->pe, W->cls, W->pos, Np, E);
    tr_attn_dims ad = {.T = (int)Tv, .n_head = c->v_head, .n_head_kv = c->v_head, .head_dim = (int)(E / c->v_head)};
    for (int i = 0; i < c->v_layer; i++) {
        const vit_w *b = &W->vb[i];
        vit_cache *v = &ch->vc[i];
        const float *x = ch->vx + i * Tv * E;
        float *xo = ch->vx + (i + 1) * Tv * E;
        tr_layernorm_fwd(pool, v->ln1, v->m1, v->r1, x, b->ln1_w, b->ln1_b, Tv, E, c->v_eps);
        tr_linear_fwd(pool, v->q, v->ln1, b->qkv_w, b->q_b, Tv, E, E);
        tr_linear_fwd(pool, v->k, v->ln1, b->qkv_w + E * E, NULL, Tv, E, E);
        tr_linear_fwd(pool, v->v, v->ln1, b->qkv_w + 2 * E * E, b->v_b, Tv, E, E);
        tr_attn_fwd(pool, &ad, v->ao, v->qr, v->kr, v->att, v->q, v->k, v->v);
        tr_linear_fwd(pool, v->xmid, v->ao, b->out_w, b->out_b, Tv, E, E);
        mg_vec_add(v->xmid, x, Tv * E);
        tr_layernorm_fwd(pool, v->ln2, v->m2, v->r2, v->xmid, b->ln2_w, b->ln2_b, Tv, E, c->v_eps);
        tr_linear_fwd(pool, v->up, v->ln2, b->up_w, b->up_b, Tv, Fv, E);
        tr_gelu_fwd(v->act, v->up, Tv * Fv);
        tr_linear_fwd(pool, xo, v->act, b->down_w, b->down_b, Tv, E, Fv);
        mg_vec_add(xo, v->xmid, Tv * E);
    }
    tr_layernorm_fwd(pool, ch->pln, ch->pm, ch->pr, ch->vx + c->v_layer * Tv * E, W->post_w, W->post_b, Tv, E,
                     c->post_eps);
    tr_merge4_fwd(ch->merged, ch->pln, Np, E);
}

/* ViT + ln_vision + merge + projection: img rows [n_img, d] into out. The tower's part is skipped
 * when it is frozen and ch still holds the features of the same image (key). */
static void vision_fwd(tr_model *m, tr_cache *ch, mg_pool *pool, const tr_w *W, const float *image, uint64_t key,
                       float *out) {
    const tr_config *c = &m->cfg;
    const bool frozen = !(m->train_mask & TR_GROUP_VISION);
    if (!frozen || key == 0 || key != ch->tower_key) {
        ch->tower_key = 0;
        vision_tower_fwd(m, ch, pool, W, image);
        ch->tower_runs++;
        if (frozen) ch->tower_key = key;
    }
    const int64_t E = c->v_embd, G = c->image_size / c->patch_size, Np = G * G;
    tr_linear_fwd(pool, out, ch->merged, W->proj_w, W->proj_b, Np / 4, c->n_embd, 4 * E);
}

/* Backward of vision_fwd from dout [n_img, d] (projection, then the tower when it learns). */
static void vision_bwd(tr_model *m, tr_cache *ch, mg_pool *pool, const tr_w *W, const tr_w *D, const float *dout,
                       const float *dfeat) {
    const tr_config *c = &m->cfg;
    const int64_t E = c->v_embd, G = c->image_size / c->patch_size, Np = G * G, Tv = 1 + Np, Fv = c->v_ff;
    const int64_t PP3 = 3 * (int64_t)c->patch_size * c->patch_size;
    const bool tower = (m->train_mask & TR_GROUP_VISION) != 0;
    if (tower) memset(ch->dmerged, 0, (size_t)(Np * E) * sizeof(float));
    if (dout) /* NULL: no gradient from the language model (the auxiliary heads alone) */
        tr_linear_bwd(pool, tower ? ch->dmerged : NULL, D->proj_w, D->proj_b, dout, ch->merged, W->proj_w, Np / 4,
                      c->n_embd, 4 * E);
    if (!tower) return;
    float *dres = ch->vres; /* [Tv, E] gradient of the residual stream */
    memset(ch->vdn, 0, (size_t)(Tv * E) * sizeof(float));
    tr_merge4_bwd(ch->vdn, ch->dmerged, Np, E);
    if (dfeat) mg_vec_add(ch->vdn + E, dfeat, Np * E); /* auxiliary head */
    memset(dres, 0, (size_t)(Tv * E) * sizeof(float));
    tr_layernorm_bwd(pool, dres, D->post_w, D->post_b, ch->vdn, ch->vx + c->v_layer * Tv * E, ch->pm, ch->pr, W->post_w,
                     Tv, E);
    tr_attn_dims ad = {.T = (int)Tv, .n_head = c->v_head, .n_head_kv = c->v_head, .head_dim = (int)(E / c->v_head)};
    const size_t nE = (size_t)(Tv * E) * sizeof(float), nF = (size_t)(Tv * Fv) * sizeof(float);
    for (int i = c->v_layer - 1; i >= 0; i--) {
        const vit_w *b = &W->vb[i], *g = &D->vb[i];
        const vit_cache *v = &ch->vc[i];
        const float *x = ch->vx + i * Tv * E;
        /* x_out = xmid + down(gelu(up(ln2(xmid)))) */
        memset(ch->vdact, 0, nF);
        tr_linear_bwd(pool, ch->vdact, g->down_w, g->down_b, dres, v->act, b->down_w, Tv, E, Fv);
        memset(ch->vdup, 0, nF);
        tr_gelu_bwd(ch->vdup, ch->vdact, v->up, Tv * Fv);
        memset(ch->vdn, 0, nE);
        tr_linear_bwd(pool, ch->vdn, g->up_w, g->up_b, ch->vdup, v->ln2, b->up_w, Tv, Fv, E);
        tr_layernorm_bwd(pool, dres, g->ln2_w, g->ln2_b, ch->vdn, v->xmid, v->m2, v->r2, b->ln2_w, Tv, E);
        /* xmid = x + out(attn(q, k, v)) */
        memset(ch->vdao, 0, nE);
        tr_linear_bwd(pool, ch->vdao, g->out_w, g->out_b, dres, v->ao, b->out_w, Tv, E, E);
        memset(ch->vdq, 0, nE);
        memset(ch->vdk, 0, nE);
        memset(ch->vdv, 0, nE);
        tr_attn_bwd(pool, &ad, ch->vdq, ch->vdk, ch->vdv, ch->vdao, v->qr, v->kr, v->v, v->att, ch->dattn);
        memset(ch->vdn, 0, nE);
        tr_linear_bwd(pool, ch->vdn, g->qkv_w, g->q_b, ch->vdq, v->ln1, b->qkv_w, Tv, E, E);
        tr_linear_bwd(pool, ch->vdn, g->qkv_w + E * E, NULL, ch->vdk, v->ln1, b->qkv_w + E * E, Tv, E, E);
        tr_linear_bwd(pool, ch->vdn, g->qkv_w + 2 * E * E, g->v_b, ch->vdv, v->ln1, b->qkv_w + 2 * E * E, Tv, E,
                      E);
        tr_layernorm_bwd(pool, dres, g->ln1_w, g->ln1_b, ch->vdn, x, v->m1, v->r1, b->ln1_w, Tv, E);
    }
    memset(ch->dpe, 0, (size_t)(Np * E) * sizeof(float));
    tr_cls_pos_bwd(ch->dpe, D->cls, D->pos, dres, Np, E);
    tr_linear_bwd(pool, NULL, D->patch_w, D->patch_b, ch->dpe, ch->patches, W->patch_w, Np, E, PP3);
}

/* Validates the example and fills the row ids, targets and target mask; returns the row count. */
static mg_status build_rows(tr_model *m, tr_cache *ch, const tr_example *ex, int *L_out, char *err,
                            size_t err_len) {
    const tr_config *c = &m->cfg;
    const int G = c->image_size / c->patch_size, n_img = G * G / 4;
    if (!ex->image || (ex->n_text > 0 && (!ex->ids || !ex->mask)) || ex->n_text < 0)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: example without image or tokens");
    if (ex->img_pos < 0 || ex->img_pos > ex->n_text)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: image position %d outside [0, %d]", ex->img_pos,
                      ex->n_text);
    const int L = ex->n_text + n_img;
    if (L > c->n_ctx)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: %d rows exceed the context of %d", L, c->n_ctx);
    for (int j = 0; j < ex->n_text; j++)
        if (ex->ids[j] < 0 || ex->ids[j] >= c->n_vocab)
            return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: token id %d outside the vocabulary of %d",
                          ex->ids[j], c->n_vocab);
    /* an example that may share its tower features takes the whole context at once: a cache that
     * grows later would lose them */
    const bool share = ex->image_key && !(m->train_mask & TR_GROUP_VISION);
    mg_status st = cache_reserve(m, ch, share ? c->n_ctx : L, err, err_len);
    if (st != MG_OK) return st;
    for (int s = 0; s < L; s++) {
        ch->targets[s] = 0;
        ch->tmask[s] = 0;
    }
    for (int j = 0; j < ex->n_text; j++) {
        const int s = j < ex->img_pos ? j : j + n_img;
        ch->ids[s] = ex->ids[j];
        if (s > 0 && ex->mask[j]) {
            ch->targets[s - 1] = ex->ids[j];
            ch->tmask[s - 1] = 1;
        }
    }
    for (int s = ex->img_pos; s < ex->img_pos + n_img; s++) ch->ids[s] = -1;
    ch->L_last = L;
    *L_out = L;
    return MG_OK;
}

/* Accessors of the last forward's rows and logits. */
const float *tr_last_rows(const tr_model *m, int *L) {
    if (L) *L = m && m->cache ? m->cache->L_last : 0;
    return m && m->cache && m->cache->L_last ? m->cache->x : NULL;
}

int64_t tr_tower_runs(const tr_model *m) {
    if (!m || !m->cache) return 0;
    int64_t n = m->cache->tower_runs;
    for (int i = 1; i < m->n_rep; i++) n += m->rep[i]->tower_runs;
    return n;
}

const float *tr_last_logits(const tr_model *m) {
    return m && m->cache && m->cache->L_last ? m->cache->logits : NULL;
}

const float *tr_last_aux_logits(const tr_model *m) {
    return m && m->cache && m->cache->aux_last ? m->cache->aux_logits : NULL;
}

/* The auxiliary heads on the ln_vision patch rows (CLS excluded): patch classification and the
 * pixel mask, when the example asks for them. Sets *aux / *amask to which ran; returns their
 * weighted loss. */
static float aux_heads_fwd(tr_model *m, tr_cache *ch, mg_pool *pool, const tr_w *W, const tr_example *ex,
                           bool backward, float scale, bool *aux, bool *amask) {
    const tr_config *c = &m->cfg;
    const int64_t E = c->v_embd, G = c->image_size / c->patch_size, Np = G * G;
    float total = 0.0f;
    *aux = ex->patch_labels && ex->aux_weight > 0 && c->aux_classes > 0;
    ch->aux_last = *aux;
    if (*aux) {
        const int64_t C = c->aux_classes;
        const bool split = C == TR_AUX_SPLIT_CLASSES;
        for (int64_t i = 0; i < Np; i++) {
            const int32_t t = ex->patch_labels[i];
            ch->aux_mask[i] = t >= 0 && t < (split ? TR_AUX_SPLIT_LABELS : C);
            const int32_t u = ch->aux_mask[i] ? t : 0;
            ch->aux_tgt[i] = u;
            ch->aux_tgt2[i] = 0;
            if (split) tr_aux_split_targets(u, &ch->aux_tgt[i], &ch->aux_tgt2[i]);
        }
        tr_linear_fwd(pool, ch->aux_logits, ch->pln + E, W->aux_w, W->aux_b, Np, C, E);
        if (backward) memset(ch->aux_dlogits, 0, (size_t)(Np * C) * sizeof(float));
        float *dl = backward ? ch->aux_dlogits : NULL;
        const float sw = scale * ex->aux_weight;
        float al;
        if (split) { /* shape softmax over the first columns, colour over the rest; losses add */
            const int64_t F = TR_AUX_SPLIT_FIRST;
            al = tr_cross_entropy_ld(dl, ch->aux_logits, C, ch->aux_tgt, ch->aux_mask, Np, F, sw) +
                 tr_cross_entropy_ld(dl ? dl + F : NULL, ch->aux_logits + F, C, ch->aux_tgt2, ch->aux_mask, Np, C - F,
                                     sw);
        } else {
            al = tr_cross_entropy(dl, ch->aux_logits, ch->aux_tgt, ch->aux_mask, Np, C, sw);
        }
        if (ex->aux_loss) *ex->aux_loss = al;
        total += ex->aux_weight * al;
    } else if (ex->aux_loss) {
        *ex->aux_loss = 0.0f;
    }
    *amask = ex->patch_masks && ex->mask_weight > 0 && c->aux_mask > 0;
    if (*amask) { /* which pixels of each patch are an object's */
        const int64_t Q = c->aux_mask;
        tr_linear_fwd(pool, ch->mask_logits, ch->pln + E, W->mask_w, W->mask_b, Np, Q, E);
        const float ml = tr_bce_logits(backward ? ch->mask_dlogits : NULL, ch->mask_logits, ex->patch_masks, Np * Q,
                                       scale * ex->mask_weight);
        if (ex->mask_loss) *ex->mask_loss = ml;
        total += ex->mask_weight * ml;
    } else if (ex->mask_loss) {
        *ex->mask_loss = 0.0f;
    }
    return total;
}

/* Backward of aux_heads_fwd: head gradients into D, and the gradient of the ln_vision patch rows
 * (NULL when no head ran or none learns). */
static const float *aux_heads_bwd(tr_model *m, tr_cache *ch, mg_pool *pool, const tr_w *W, const tr_w *D, bool aux,
                                  bool amask) {
    const tr_config *c = &m->cfg;
    const int64_t E = c->v_embd, G = c->image_size / c->patch_size, Np = G * G;
    if (!((aux && D->aux_w) || (amask && D->mask_w))) return NULL;
    memset(ch->aux_dfeat, 0, (size_t)(Np * E) * sizeof(float));
    if (aux && D->aux_w)
        tr_linear_bwd(pool, ch->aux_dfeat, D->aux_w, D->aux_b, ch->aux_dlogits, ch->pln + E, W->aux_w, Np,
                      c->aux_classes, E);
    if (amask && D->mask_w)
        tr_linear_bwd(pool, ch->aux_dfeat, D->mask_w, D->mask_b, ch->mask_dlogits, ch->pln + E, W->mask_w, Np,
                      c->aux_mask, E);
    return ch->aux_dfeat;
}

/* Forward (and backward) over one example with activations in ch, gradients added to grads
 * (layout of m->params), matmuls on pool (NULL: serial). */
static mg_status fb_one(tr_model *m, tr_cache *ch, mg_pool *pool, float *grads, const tr_example *ex,
                        bool backward, float scale, float *loss, char *err, size_t err_len) {
    int L;
    if (backward && (m->train_mask & TR_GROUP_LORA) && m->cfg.lora_rank <= 0)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: a LoRA mode on a model without adapters");
    mg_status st = build_rows(m, ch, ex, &L, err, err_len);
    if (st != MG_OK) return st;
    const tr_config *c = &m->cfg;
    tr_w W = {.vb = ch->vb_p, .lb = ch->lb_p}, D = {.vb = ch->vb_g, .lb = ch->lb_g};
    bind(m, &W, m->params, ~0);
    bind(m, &D, grads, m->train_mask);
    const int64_t d = c->n_embd, hd = d / c->n_head, qd = c->n_head * hd, kvd = c->n_head_kv * hd, F = c->n_ff,
                  V = c->n_vocab, Ls = L, R = MG_MAX(c->lora_rank, 0);
    const float lscale = R ? c->lora_alpha / (float)R : 0.0f;

    /* Input rows: text embeddings around the projected image. */
    float *x0 = ch->x;
    vision_fwd(m, ch, pool, &W, ex->image, ex->image_key, x0 + (int64_t)ex->img_pos * d);
    if (backward && (m->train_mask & TR_AUX_ONLY)) { /* the tower from the auxiliary heads alone */
        bool aux, amask;
        *loss = aux_heads_fwd(m, ch, pool, &W, ex, true, scale, &aux, &amask);
        if (!aux && !amask)
            return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: vision-aux mode needs an auxiliary loss");
        vision_bwd(m, ch, pool, &W, &D, NULL, aux_heads_bwd(m, ch, pool, &W, &D, aux, amask));
        return MG_OK;
    }
    for (int s = 0; s < L; s++)
        if (ch->ids[s] >= 0) tr_embed_fwd(x0 + s * d, W.tok, &ch->ids[s], 1, d);

    tr_rope_tables(ch->rope_cos, ch->rope_sin, L, (int)hd, c->rope_theta);
    tr_attn_dims ad = {.T = L, .n_head = c->n_head, .n_head_kv = c->n_head_kv, .head_dim = (int)hd,
                       .causal = true, .rope_cos = ch->rope_cos, .rope_sin = ch->rope_sin};
    for (int i = 0; i < c->n_layer; i++) {
        const llm_w *b = &W.lb[i];
        llm_cache *l = &ch->lc[i];
        const float *x = ch->x + i * Ls * d;
        float *xo = ch->x + (i + 1) * Ls * d;
        tr_rmsnorm_fwd(l->n1, l->r1, x, b->attn_norm, Ls, d, c->rms_eps);
        tr_linear_fwd(pool, l->q, l->n1, b->wq, NULL, Ls, qd, d);
        tr_linear_fwd(pool, l->k, l->n1, b->wk, NULL, Ls, kvd, d);
        tr_linear_fwd(pool, l->v, l->n1, b->wv, NULL, Ls, kvd, d);
        if (R) {
            tr_lora_fwd(pool, l->q, ch->lora_tmp, l->uq, l->n1, b->lqa, b->lqb, Ls, qd, d, R, lscale);
            tr_lora_fwd(pool, l->v, ch->lora_tmp, l->uv, l->n1, b->lva, b->lvb, Ls, kvd, d, R, lscale);
        }
        tr_attn_fwd(pool, &ad, l->ao, l->qr, l->kr, l->att, l->q, l->k, l->v);
        tr_linear_fwd(pool, l->xmid, l->ao, b->wo, NULL, Ls, d, qd);
        mg_vec_add(l->xmid, x, Ls * d);
        tr_rmsnorm_fwd(l->n2, l->r2, l->xmid, b->ffn_norm, Ls, d, c->rms_eps);
        tr_linear_fwd(pool, l->gate, l->n2, b->gate, NULL, Ls, F, d);
        tr_linear_fwd(pool, l->up, l->n2, b->up, NULL, Ls, F, d);
        tr_swiglu_fwd(l->h, l->gate, l->up, Ls * F);
        tr_linear_fwd(pool, xo, l->h, b->down, NULL, Ls, d, F);
        mg_vec_add(xo, l->xmid, Ls * d);
    }
    const float *xl = ch->x + c->n_layer * Ls * d;
    tr_rmsnorm_fwd(ch->nf, ch->rf, xl, W.out_norm, Ls, d, c->rms_eps);
    tr_linear_fwd(pool, ch->logits, ch->nf, W.out, NULL, Ls, V, d);
    if (backward) memset(ch->dlogits, 0, (size_t)(Ls * V) * sizeof(float));
    *loss = tr_cross_entropy(backward ? ch->dlogits : NULL, ch->logits, ch->targets, ch->tmask, Ls, V, scale);
    bool aux, amask;
    aux_heads_fwd(m, ch, pool, &W, ex, backward, scale, &aux, &amask);
    if (!backward) return MG_OK;

    /* ---- backward ---- */
    const size_t nd = (size_t)(Ls * d) * sizeof(float), nF = (size_t)(Ls * F) * sizeof(float);
    float *dres = ch->dres;
    memset(ch->dn, 0, nd);
    tr_linear_bwd(pool, ch->dn, D.out, NULL, ch->dlogits, ch->nf, W.out, Ls, V, d);
    memset(dres, 0, nd);
    tr_rmsnorm_bwd(dres, D.out_norm, ch->dn, xl, ch->rf, W.out_norm, Ls, d);
    for (int i = c->n_layer - 1; i >= 0; i--) {
        const llm_w *b = &W.lb[i], *g = &D.lb[i];
        const llm_cache *l = &ch->lc[i];
        const float *x = ch->x + i * Ls * d;
        memset(ch->dh, 0, nF);
        tr_linear_bwd(pool, ch->dh, g->down, NULL, dres, l->h, b->down, Ls, d, F);
        memset(ch->dgate, 0, nF);
        memset(ch->dup, 0, nF);
        tr_swiglu_bwd(ch->dgate, ch->dup, ch->dh, l->gate, l->up, Ls * F);
        memset(ch->dn, 0, nd);
        tr_linear_bwd(pool, ch->dn, g->gate, NULL, ch->dgate, l->n2, b->gate, Ls, F, d);
        tr_linear_bwd(pool, ch->dn, g->up, NULL, ch->dup, l->n2, b->up, Ls, F, d);
        tr_rmsnorm_bwd(dres, g->ffn_norm, ch->dn, l->xmid, l->r2, b->ffn_norm, Ls, d);
        memset(ch->dao, 0, (size_t)(Ls * qd) * sizeof(float));
        tr_linear_bwd(pool, ch->dao, g->wo, NULL, dres, l->ao, b->wo, Ls, d, qd);
        memset(ch->dq, 0, (size_t)(Ls * qd) * sizeof(float));
        memset(ch->dk, 0, (size_t)(Ls * kvd) * sizeof(float));
        memset(ch->dv, 0, (size_t)(Ls * kvd) * sizeof(float));
        tr_attn_bwd(pool, &ad, ch->dq, ch->dk, ch->dv, ch->dao, l->qr, l->kr, l->v, l->att, ch->dattn);
        memset(ch->dn, 0, nd);
        tr_linear_bwd(pool, ch->dn, g->wq, NULL, ch->dq, l->n1, b->wq, Ls, qd, d);
        tr_linear_bwd(pool, ch->dn, g->wk, NULL, ch->dk, l->n1, b->wk, Ls, kvd, d);
        tr_linear_bwd(pool, ch->dn, g->wv, NULL, ch->dv, l->n1, b->wv, Ls, kvd, d);
        if (R) { /* the adapters' share of d(n1), also when they are frozen */
            tr_lora_bwd(pool, ch->dn, g->lqa, g->lqb, ch->dq, l->n1, l->uq, b->lqa, b->lqb, ch->lora_tmp,
                        ch->lora_du, Ls, qd, d, R, lscale);
            tr_lora_bwd(pool, ch->dn, g->lva, g->lvb, ch->dv, l->n1, l->uv, b->lva, b->lvb, ch->lora_tmp,
                        ch->lora_du, Ls, kvd, d, R, lscale);
        }
        tr_rmsnorm_bwd(dres, g->attn_norm, ch->dn, x, l->r1, b->attn_norm, Ls, d);
    }
    /* dres = d(loss)/d(input rows): text rows into the embedding table, image rows into vision. */
    if (D.tok)
        for (int s = 0; s < L; s++)
            if (ch->ids[s] >= 0) tr_embed_bwd(D.tok, dres + s * d, &ch->ids[s], 1, d);
    const float *dfeat = aux_heads_bwd(m, ch, pool, &W, &D, aux, amask);
    if (m->train_mask & (TR_GROUP_PROJ | TR_GROUP_VISION))
        vision_bwd(m, ch, pool, &W, &D, dres + (int64_t)ex->img_pos * d, dfeat);
    return MG_OK;
}

/* Tower features are shared within one call only: the weights (or the mode) may change between
 * calls. */
static void forget_tower(tr_model *m) {
    if (m->cache) m->cache->tower_key = 0;
    for (int i = 1; i < m->n_rep; i++) m->rep[i]->tower_key = 0;
}

/* Forward (and backward) over one example; see train.h. */
mg_status tr_forward_backward(tr_model *m, const tr_example *ex, bool backward, float scale, float *loss,
                              char *err, size_t err_len) {
    if (!m || !ex || !loss) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "tr_forward_backward: NULL argument");
    forget_tower(m);
    return fb_one(m, m->cache, m->pool, m->grads, ex, backward, scale, loss, err, err_len);
}

typedef struct {
    tr_model *m;
    const tr_example *exs;
    bool backward;
    float scale;
    float *losses;
    mg_status *st;       /* [n_rep] first failure of each part */
    char (*msg)[256];    /* [n_rep] its message */
} batch_ctx;

/* Part ith runs its examples one after the other on replica ith, serially (no nested pool). */
static void batch_task(void *vc, int64_t i0, int64_t i1, int ith) {
    batch_ctx *c = vc;
    tr_model *m = c->m;
    float *g = ith == 0 ? m->grads : m->rep_grads[ith];
    for (int64_t i = i0; i < i1 && c->st[ith] == MG_OK; i++)
        c->st[ith] = fb_one(m, m->rep[ith], NULL, g, &c->exs[i], c->backward, c->scale, &c->losses[i], c->msg[ith],
                            sizeof c->msg[ith]);
}

/* Examples of a batch in parallel, one replica of the activations per thread (see train.h). */
mg_status tr_forward_backward_batch(tr_model *m, const tr_example *exs, int n, bool backward, float scale,
                                    float *losses, char *err, size_t err_len) {
    if (!m || (n > 0 && (!exs || !losses)) || n < 0)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "tr_forward_backward_batch: bad argument");
    forget_tower(m);
    const int T = mg_pool_n_threads(m->pool);
    if (T == 1 || n < 2) {
        for (int i = 0; i < n; i++) {
            mg_status st = fb_one(m, m->cache, m->pool, m->grads, &exs[i], backward, scale, &losses[i], err, err_len);
            if (st != MG_OK) return st;
        }
        return MG_OK;
    }
    if (m->n_rep < T) { /* replicas 1..T-1: activations and a gradient buffer each */
        tr_cache **rep = calloc((size_t)T, sizeof *rep);
        float **rg = calloc((size_t)T, sizeof *rg);
        if (!rep || !rg) {
            free(rep);
            free(rg);
            return mg_err(err, err_len, MG_ERR_NOMEM, "train: no memory for %d replicas", T);
        }
        for (int i = 0; i < m->n_rep; i++) {
            rep[i] = m->rep[i];
            rg[i] = m->rep_grads[i];
        }
        rep[0] = m->cache;
        free(m->rep);
        free(m->rep_grads);
        m->rep = rep;
        m->rep_grads = rg;
        for (int i = MG_MAX(m->n_rep, 1); i < T; i++) {
            rep[i] = cache_new(&m->cfg);
            rg[i] = mg_malloc_aligned((size_t)m->n_params * sizeof(float));
            if (!rep[i] || !rg[i]) {
                cache_free(rep[i]);
                mg_free_aligned(rg[i]);
                rep[i] = NULL;
                rg[i] = NULL;
                return mg_err(err, err_len, MG_ERR_NOMEM, "train: no memory for replica %d", i);
            }
            m->n_rep = i + 1;
        }
    }
    if (backward)
        for (int i = 1; i < T; i++) memset(m->rep_grads[i], 0, (size_t)m->n_params * sizeof(float));
    mg_status st[MG_TRAIN_MAX_THREADS];
    char(*msg)[256] = calloc((size_t)T, sizeof *msg);
    if (!msg || T > MG_TRAIN_MAX_THREADS) {
        free(msg);
        return mg_err(err, err_len, MG_ERR_NOMEM, "train: no memory");
    }
    for (int i = 0; i < T; i++) st[i] = MG_OK;
    batch_ctx c = {m, exs, backward, scale, losses, st, msg};
    mg_pool_run(m->pool, n, 1, batch_task, &c);
    mg_status res = MG_OK;
    for (int i = 0; i < T && res == MG_OK; i++)
        if (st[i] != MG_OK) res = mg_err(err, err_len, st[i], "%s", msg[i]);
    if (res == MG_OK && backward) /* fixed order: the sum depends on the thread count only */
        for (int i = 1; i < T; i++) mg_vec_add(m->grads, m->rep_grads[i], m->n_params);
    free(msg);
    return res;
}

/* ==== Optimiser ==== */

/* Warm-up then cosine (see train.h). */
float tr_lr_at(const tr_opt *o, int64_t step) {
    if (step < o->warmup) return (float)((double)o->lr * (double)(step + 1) / (double)o->warmup);
    const int64_t span = o->total - o->warmup;
    double p = span > 0 ? (double)(step - o->warmup) / (double)span : 1.0;
    p = p < 0.0 ? 0.0 : p > 1.0 ? 1.0 : p;
    return (float)(o->lr_min + (o->lr - o->lr_min) * 0.5 * (1.0 + cos(M_PI * p)));
}

/* Norm over the trained tensors, then an optional uniform rescale. */
double tr_clip_grad(tr_model *m, float max_norm) {
    double ss = 0.0;
    for (int i = 0; i < m->n_tensors; i++) {
        const tr_tensor *t = &m->tensors[i];
        if (!(t->group & m->train_mask)) continue;
        const float *g = m->grads + t->off;
        for (int64_t j = 0; j < t->n; j++) ss += (double)g[j] * g[j];
    }
    const double norm = sqrt(ss);
    if (max_norm > 0.0f && norm > max_norm) {
        const float k = (float)(max_norm / (norm + 1e-6));
        for (int i = 0; i < m->n_tensors; i++) {
            const tr_tensor *t = &m->tensors[i];
            if (!(t->group & m->train_mask)) continue;
            float *g = m->grads + t->off;
            for (int64_t j = 0; j < t->n; j++) g[j] *= k;
        }
    }
    return norm;
}

/* torch.optim.AdamW's single-tensor update, in the same order of operations (mg_adamw: SIMD,
 * the scalar loop's bits). */
void tr_adamw_update(float *p, const float *g, float *mom1, float *mom2, int64_t n, float lr, float beta1,
                     float beta2, float eps, float wd, int64_t t) {
    const double bc1 = 1.0 - pow((double)beta1, (double)t), bc2 = 1.0 - pow((double)beta2, (double)t);
    const mg_adamw_coef c = {.decay = 1.0f - lr * wd, .beta1 = beta1, .beta2 = beta2, .eps = eps,
                             .step_size = (float)(lr / bc1), .bc2_sqrt = (float)sqrt(bc2)};
    mg_adamw(p, g, mom1, mom2, n, &c);
}

/* One tensor's AdamW split over the pool's threads: the update is elementwise, so the split
 * changes no bit of it. */
typedef struct {
    tr_model *m;
    const tr_tensor *t;
    const tr_opt *o;
    float lr;
} adamw_job;

static void adamw_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    const adamw_job *j = ctx;
    const int64_t off = j->t->off + i0;
    tr_adamw_update(j->m->params + off, j->m->grads + off, j->m->adam_m + off, j->m->adam_v + off, i1 - i0, j->lr,
                    j->o->beta1, j->o->beta2, j->o->eps, j->t->decay ? j->o->weight_decay : 0.0f, j->m->step);
}

/* Clip + AdamW over the trained tensors. */
void tr_step(tr_model *m, const tr_opt *o, float *lr_out, double *gnorm_out) {
    const double gn = tr_clip_grad(m, o->clip);
    const float lr = tr_lr_at(o, m->step);
    m->step++;
    for (int i = 0; i < m->n_tensors; i++) {
        const tr_tensor *t = &m->tensors[i];
        if (!(t->group & m->train_mask)) continue;
        adamw_job j = {m, t, o, lr};
        mg_pool_run(m->pool, t->n, 4096, adamw_task, &j);
    }
    if (lr_out) *lr_out = lr;
    if (gnorm_out) *gnorm_out = gn;
}

/* ==== Checkpoints ==== */

/* Writes the file (see train.h). */
mg_status tr_save(const tr_model *m, const char *path, const gguf_file *kv_src, char *err, size_t err_len) {
    if (!m || !path) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "tr_save: NULL argument");
    const tr_config *c = &m->cfg;
    gguf_writer *w = gguf_writer_create();
    if (!w) return mg_err(err, err_len, MG_ERR_NOMEM, "train: no memory for the writer");
    mg_status st = MG_OK;
    if (kv_src) st = gguf_writer_copy_kv(w, kv_src);
    const int hd = c->n_embd / c->n_head;
    if (st == MG_OK)
        (void)((st = gguf_writer_set_str(w, "general.architecture", "minigptv2")) ||
         (st = gguf_writer_set_str(w, "general.name", "minigpt-train")) ||
         (st = gguf_writer_set_u32(w, "llama.context_length", (uint32_t)c->n_ctx)) ||
         (st = gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)c->n_embd)) ||
         (st = gguf_writer_set_u32(w, "llama.block_count", (uint32_t)c->n_layer)) ||
         (st = gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)c->n_ff)) ||
         (st = gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)c->n_head)) ||
         (st = gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_head_kv)) ||
         (st = gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", c->rms_eps)) ||
         (st = gguf_writer_set_f32(w, "llama.rope.freq_base", c->rope_theta)) ||
         (st = gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)hd)) ||
         (st = gguf_writer_set_str(w, "minigpt.projector_type", "merge4")) ||
         (st = gguf_writer_set_u32(w, "minigpt.vision.image_size", (uint32_t)c->image_size)) ||
         (st = gguf_writer_set_u32(w, "minigpt.vision.patch_size", (uint32_t)c->patch_size)) ||
         (st = gguf_writer_set_u32(w, "minigpt.vision.embedding_length", (uint32_t)c->v_embd)) ||
         (st = gguf_writer_set_u32(w, "minigpt.vision.block_count", (uint32_t)c->v_layer)) ||
         (st = gguf_writer_set_u32(w, "minigpt.vision.head_count", (uint32_t)c->v_head)) ||
         (st = gguf_writer_set_u32(w, "minigpt.vision.feed_forward_length", (uint32_t)c->v_ff)) ||
         (st = gguf_writer_set_f32(w, "minigpt.vision.layer_norm_epsilon", c->v_eps)) ||
         (st = gguf_writer_set_f32(w, "minigpt.vision.post_layer_norm_epsilon", c->post_eps)) ||
         (st = gguf_writer_set_u64(w, "train.step", (uint64_t)m->step)) ||
         (st = gguf_writer_set_u32(w, "train.groups", (uint32_t)m->train_mask)) ||
         /* only with adapters, so files without them stay as they were */
         (c->lora_rank > 0 && (st = gguf_writer_set_f32(w, "train.lora_alpha", c->lora_alpha))));
    for (int pass = 0; pass < 3 && st == MG_OK; pass++) {
        const float *base = pass == 0 ? m->params : pass == 1 ? m->adam_m : m->adam_v;
        for (int i = 0; i < m->n_tensors && st == MG_OK; i++) {
            const tr_tensor *t = &m->tensors[i];
            char name[80];
            snprintf(name, sizeof name, "%s%s", pass == 0 ? "" : pass == 1 ? "opt.m." : "opt.v.", t->name);
            st = gguf_writer_add_tensor(w, name, MG_TYPE_F32, t->n_dims, t->ne, base + t->off);
        }
    }
    if (st != MG_OK) {
        gguf_writer_free(w);
        return mg_err(err, err_len, st, "train: cannot build the checkpoint header");
    }
    st = gguf_writer_write_file(w, path, err, err_len);
    gguf_writer_free(w);
    return st;
}

/* Reads a u32 key into an int. */
static mg_status get_int(const gguf_file *f, const char *key, int *out, char *err, size_t err_len) {
    uint32_t v;
    mg_status st = gguf_get_u32(f, key, &v, err, err_len);
    if (st == MG_OK && v > TR_MAX_DIM) return mg_err(err, err_len, MG_ERR_FORMAT, "train: %s = %u is too large", key, v);
    if (st == MG_OK) *out = (int)v;
    return st;
}

/* Copies a stored F32 tensor of the expected shape into dst (absent and optional: zeros). */
static mg_status read_tensor(const gguf_file *f, const char *name, const tr_tensor *t, float *dst, bool optional,
                             char *err, size_t err_len) {
    const gguf_tensor *g = gguf_find_tensor(f, name);
    if (!g) {
        if (optional) return MG_OK;
        return mg_err(err, err_len, MG_ERR_FORMAT, "train: tensor %s is missing", name);
    }
    int64_t n = 1;
    for (int i = 0; i < GGUF_MAX_DIMS; i++) n *= g->ne[i];
    if (g->type != MG_TYPE_F32 || g->ne[0] != t->ne[0] || n != t->n || g->nbytes != (uint64_t)t->n * 4)
        return mg_err(err, err_len, MG_ERR_FORMAT, "train: tensor %s must be F32 [%lld, %lld]", name,
                      (long long)t->ne[0], (long long)t->ne[1]);
    memcpy(dst, g->data, (size_t)t->n * sizeof(float));
    return MG_OK;
}

/* Opens a tr_save file. */
mg_status tr_load(tr_model **out, const char *path, int n_threads, char *err, size_t err_len) {
    return tr_load_with(out, path, n_threads, false, 0, err, err_len);
}

mg_status tr_load_with(tr_model **out, const char *path, int n_threads, bool add_mask_head, int aux_classes,
                       char *err, size_t err_len) {
    if (!out || !path) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "tr_load: NULL argument");
    if (aux_classes < 0 || aux_classes > 4096)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "tr_load: aux_classes %d not in [0, 4096]", aux_classes);
    *out = NULL;
    gguf_file *f;
    mg_status st = gguf_open(&f, path, err, err_len);
    if (st != MG_OK) return st;
    tr_config c;
    memset(&c, 0, sizeof c);
    uint32_t groups = TR_GROUP_VISION | TR_GROUP_PROJ | TR_GROUP_LLM;
    int64_t step = 0;
    if ((st = get_int(f, "minigpt.vision.image_size", &c.image_size, err, err_len)) ||
        (st = get_int(f, "minigpt.vision.patch_size", &c.patch_size, err, err_len)) ||
        (st = get_int(f, "minigpt.vision.embedding_length", &c.v_embd, err, err_len)) ||
        (st = get_int(f, "minigpt.vision.block_count", &c.v_layer, err, err_len)) ||
        (st = get_int(f, "minigpt.vision.head_count", &c.v_head, err, err_len)) ||
        (st = get_int(f, "minigpt.vision.feed_forward_length", &c.v_ff, err, err_len)) ||
        (st = gguf_get_f32_def(f, "minigpt.vision.layer_norm_epsilon", 1e-6f, &c.v_eps, err, err_len)) ||
        (st = gguf_get_f32_def(f, "minigpt.vision.post_layer_norm_epsilon", 1e-5f, &c.post_eps, err, err_len)) ||
        (st = get_int(f, "llama.context_length", &c.n_ctx, err, err_len)) ||
        (st = get_int(f, "llama.embedding_length", &c.n_embd, err, err_len)) ||
        (st = get_int(f, "llama.block_count", &c.n_layer, err, err_len)) ||
        (st = get_int(f, "llama.feed_forward_length", &c.n_ff, err, err_len)) ||
        (st = get_int(f, "llama.attention.head_count", &c.n_head, err, err_len)) ||
        (st = get_int(f, "llama.attention.head_count_kv", &c.n_head_kv, err, err_len)) ||
        (st = gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &c.rms_eps, err, err_len)) ||
        (st = gguf_get_f32_def(f, "llama.rope.freq_base", 10000.0f, &c.rope_theta, err, err_len)) ||
        (st = gguf_get_u32_def(f, "train.groups", groups, &groups, err, err_len)))
        goto done;
    if (gguf_find_kv(f, "train.step") && (st = gguf_get_i64(f, "train.step", &step, err, err_len))) goto done;
    const gguf_tensor *te = gguf_find_tensor(f, "token_embd.weight");
    if (!te || te->ne[1] < 1 || te->ne[1] > TR_MAX_DIM * 16) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "train: token_embd.weight is missing or too large");
        goto done;
    }
    c.n_vocab = (int)te->ne[1];
    const gguf_tensor *ta = gguf_find_tensor(f, "aux.patch_cls.weight");
    if (ta && (ta->n_dims != 2 || ta->ne[1] < 1 || ta->ne[1] > 4096)) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "train: aux.patch_cls.weight has a bad shape");
        goto done;
    }
    c.aux_classes = ta ? (int)ta->ne[1] : 0;
    const bool new_head = aux_classes > 0 && aux_classes != c.aux_classes; /* other labels: a fresh head */
    if (new_head) c.aux_classes = aux_classes;
    const gguf_tensor *tm = gguf_find_tensor(f, "aux.patch_mask.weight");
    if (tm && (tm->n_dims != 2 || tm->ne[1] != (int64_t)c.patch_size * c.patch_size)) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "train: aux.patch_mask.weight has a bad shape");
        goto done;
    }
    c.aux_mask = tm || add_mask_head ? c.patch_size * c.patch_size : 0;
    const gguf_tensor *tl = gguf_find_tensor(f, "lora.blk.0.attn_q.a"); /* adapters: rank from A's rows */
    if (tl && (tl->n_dims != 2 || tl->ne[1] < 1 || tl->ne[1] > TR_MAX_DIM)) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "train: lora.blk.0.attn_q.a has a bad shape");
        goto done;
    }
    c.lora_rank = tl ? (int)tl->ne[1] : 0;
    if (tl && (st = gguf_get_f32(f, "train.lora_alpha", &c.lora_alpha, err, err_len))) goto done;
    tr_model *m;
    if ((st = model_alloc(&m, &c, n_threads, err, err_len))) goto done;
    for (int i = 0; i < m->n_tensors && st == MG_OK; i++) {
        const tr_tensor *t = &m->tensors[i];
        char name[80];
        /* a mask head the file lacks starts at zero (its first gradients reach the head only) */
        if (new_head && strncmp(t->name, "aux.patch_cls.", 14) == 0) continue; /* stays at zero */
        const bool added = !tm && strncmp(t->name, "aux.patch_mask.", 15) == 0;
        st = read_tensor(f, t->name, t, m->params + t->off, added, err, err_len);
        snprintf(name, sizeof name, "opt.m.%s", t->name);
        if (st == MG_OK) st = read_tensor(f, name, t, m->adam_m + t->off, true, err, err_len);
        snprintf(name, sizeof name, "opt.v.%s", t->name);
        if (st == MG_OK) st = read_tensor(f, name, t, m->adam_v + t->off, true, err, err_len);
    }
    if (st != MG_OK) {
        tr_model_free(m);
        goto done;
    }
    m->step = step < 0 ? 0 : step;
    m->train_mask = (int)(groups & (TR_GROUP_VISION | TR_GROUP_PROJ | TR_GROUP_LLM | TR_AUX_ONLY | TR_GROUP_LORA));
    *out = m;
done:
    gguf_close(f);
    return st;
}

/* ==== LoRA ==== */

/* A model of configuration cfg holding src's tensors of the same name and size (parameters and
 * moments), its step and train mask; tensors src lacks stay zero. */
static mg_status model_copy_as(const tr_model *src, const tr_config *cfg, tr_model **out, char *err,
                               size_t err_len) {
    tr_model *m;
    mg_status st = model_alloc(&m, cfg, mg_pool_n_threads(src->pool), err, err_len);
    if (st != MG_OK) return st;
    for (int i = 0; i < m->n_tensors; i++) {
        const tr_tensor *t = &m->tensors[i];
        const int j = tr_find_tensor(src, t->name);
        if (j < 0 || src->tensors[j].n != t->n) continue;
        const size_t nb = (size_t)t->n * sizeof(float);
        const int64_t so = src->tensors[j].off;
        memcpy(m->params + t->off, src->params + so, nb);
        memcpy(m->adam_m + t->off, src->adam_m + so, nb);
        memcpy(m->adam_v + t->off, src->adam_v + so, nb);
    }
    m->step = src->step;
    m->train_mask = src->train_mask;
    *out = m;
    return MG_OK;
}

/* Fresh adapters (see train.h). */
mg_status tr_lora_attach(tr_model **pm, int rank, float alpha, uint64_t seed, char *err, size_t err_len) {
    if (!pm || !*pm) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "tr_lora_attach: NULL argument");
    tr_model *src = *pm;
    if (src->cfg.lora_rank > 0)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: the model already has LoRA adapters (rank %d)",
                      src->cfg.lora_rank);
    tr_config c = src->cfg;
    c.lora_rank = rank;
    c.lora_alpha = alpha;
    if (rank < 1) /* check_config takes 0 for "none" */
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: LoRA rank %d must be at least 1", rank);
    tr_model *m;
    mg_status st = model_copy_as(src, &c, &m, err, err_len);
    if (st != MG_OK) return st;
    lora_init(m, seed);
    tr_model_free(src);
    *pm = m;
    return MG_OK;
}

/* W += scale * B A (see train.h). */
void tr_lora_delta(float *W, const float *A, const float *B, int64_t n_out, int64_t n_in, int64_t r, float scale) {
    for (int64_t o = 0; o < n_out; o++) {
        const float *bo = B + o * r;
        float *wo = W + o * n_in;
        for (int64_t i = 0; i < n_in; i++) {
            double acc = 0.0;
            for (int64_t k = 0; k < r; k++) acc += (double)bo[k] * (double)A[k * n_in + i];
            wo[i] += (float)(scale * acc);
        }
    }
}

/* Adapters merged into attn_q / attn_v (see train.h). */
mg_status tr_lora_merge(tr_model **pm, char *err, size_t err_len) {
    if (!pm || !*pm) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "tr_lora_merge: NULL argument");
    tr_model *src = *pm;
    const tr_config *sc = &src->cfg;
    if (sc->lora_rank <= 0) return MG_OK;
    tr_config c = *sc;
    c.lora_rank = 0;
    c.lora_alpha = 0.0f;
    tr_model *m;
    mg_status st = model_copy_as(src, &c, &m, err, err_len);
    if (st != MG_OK) return st;
    const float scale = sc->lora_alpha / (float)sc->lora_rank;
    for (int i = 0; i < c.n_layer && st == MG_OK; i++) {
        for (int qv = 0; qv < 2 && st == MG_OK; qv++) {
            char nw[64], na[64], nb[64];
            const char *which = qv ? "attn_v" : "attn_q";
            snprintf(nw, sizeof nw, "blk.%d.%s.weight", i, which);
            snprintf(na, sizeof na, "lora.blk.%d.%s.a", i, which);
            snprintf(nb, sizeof nb, "lora.blk.%d.%s.b", i, which);
            const int iw = tr_find_tensor(m, nw), ia = tr_find_tensor(src, na), ib = tr_find_tensor(src, nb);
            if (iw < 0 || ia < 0 || ib < 0) {
                st = mg_err(err, err_len, MG_ERR_INVALID_ARG, "train: %s or its adapters are missing", nw);
                break;
            }
            const tr_tensor *tw = &m->tensors[iw];
            tr_lora_delta(m->params + tw->off, src->params + src->tensors[ia].off, src->params + src->tensors[ib].off,
                          tw->ne[1], tw->ne[0], sc->lora_rank, scale);
        }
    }
    if (st != MG_OK) {
        tr_model_free(m);
        return st;
    }
    m->train_mask &= ~TR_GROUP_LORA;
    tr_model_free(src);
    *pm = m;
    return MG_OK;
}
