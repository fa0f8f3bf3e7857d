/*
 * convert.c - `minigpt convert`: official checkpoints -> one GGUF.
 *
 * Recipes: "llama" (HF LLaMA folder -> llama.cpp names and keys, q/k rows permuted as
 * convert_hf_to_gguf.py's LlamaModel.permute does), "minigpt4-vicuna" (+ EVA ViT-g, BLIP-2
 * Q-Former, llama_proj), "minigpt4-llama2" and "minigptv2" (+ EVA ViT-g, merge-4 llama_proj; v2
 * merges its LoRA as W + (alpha/r) B A). Vision names follow docs/gguf-keys.md. Sources are
 * looked up in the official loading order (spec §9): later files override earlier ones. Every
 * required tensor must exist with the expected shape (the official loader's strict=False would
 * silently keep random or un-LoRA'd weights; we fail). The plan (names, types, shapes, sources)
 * is made first, then tensors are read, transformed, converted and written one at a time.
 */
#include "convert.h"
#include "ckpt.h"
#include "quant.h"
#include "tokenizer.h"
#include "vision.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REPORT 24 /* unused keys listed per file before "... and N more" */

enum { S_LLM, S_VIT, S_QF, S_CKPT, S_COUNT };
static const char *const src_label[S_COUNT] = {"LLM folder", "ViT checkpoint", "Q-Former checkpoint",
                                               "MiniGPT checkpoint"};

typedef struct {
    ckpt_file *f;
    const char *path;
    bool *used; /* [n tensors] */
    int64_t n;
} csrc;

typedef struct {
    char name[96];
    int type, n_dims;
    int64_t ne[4];
    int src;
    const ckpt_tensor *t;
    int perm_heads;             /* > 0: q/k row permutation with this many heads */
    const ckpt_tensor *la, *lb; /* LoRA A [r, in], B [out, r] (in the checkpoint) */
    float lscale;
    int pos_gs, pos_gd;         /* position-embedding grid resize (gs != gd) */
} centry;

typedef struct {
    const conv_params *p;
    csrc s[S_COUNT];
    centry *e;
    int n_e, cap_e;
    gguf_writer *w;
    char *err;
    size_t err_len;
    /* LLM hyper-parameters */
    int64_t n_vocab, n_embd, n_layer, n_ff, n_head, n_head_kv, head_dim, n_ctx;
    /* vision */
    int64_t v_embd;
} cctx;

static void logf_(cctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(cctx *c, const char *fmt, ...) {
    if (!c->p->log) return;
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    c->p->log(c->p->user, line);
}

static const char *const arch_names[] = {"auto", "llama", "minigpt4-vicuna", "minigpt4-llama2", "minigptv2"};

/* Parses a recipe name. */
int conv_arch_from_name(const char *name) {
    for (size_t i = 0; i < MG_ARRAY_LEN(arch_names); i++)
        if (name && strcmp(name, arch_names[i]) == 0) return (int)i;
    return -1;
}

/* Name of a recipe. */
const char *conv_arch_name(conv_arch a) {
    return (unsigned)a < MG_ARRAY_LEN(arch_names) ? arch_names[a] : "?";
}

/* Defaults: f16 output, vision types follow it. */
conv_params conv_default_params(void) {
    conv_params p;
    memset(&p, 0, sizeof p);
    p.out_type = MG_TYPE_F16;
    p.vision_type = -1;
    return p;
}

/* ==== Sources ==== */

static mg_status open_src(cctx *c, int k, const char *path) {
    csrc *s = &c->s[k];
    if (!path) return MG_OK;
    s->path = path;
    mg_status st = ckpt_open(&s->f, path, c->err, c->err_len);
    if (st != MG_OK) {
        char tmp[400];
        snprintf(tmp, sizeof tmp, "%s", c->err);
        return mg_err(c->err, c->err_len, st, "%s %s: %s", src_label[k], path, tmp);
    }
    s->n = ckpt_n_tensors(s->f);
    s->used = calloc((size_t)(s->n > 0 ? s->n : 1), 1);
    if (!s->used) return mg_err(c->err, c->err_len, MG_ERR_NOMEM, "out of memory");
    return MG_OK;
}

static void mark_used(csrc *s, const ckpt_tensor *t) {
    for (int64_t i = 0; i < s->n; i++)
        if (ckpt_tensor_at(s->f, i) == t) {
            s->used[i] = true;
            return;
        }
}

/* Finds key in source k (wrapper prefixes handled by ckpt_find); marks it used. */
static const ckpt_tensor *find(cctx *c, int k, const char *key) {
    csrc *s = &c->s[k];
    if (!s->f) return NULL;
    const ckpt_tensor *t = ckpt_find(s->f, key);
    if (t) mark_used(s, t);
    return t;
}

static void shape_str(char *buf, size_t n, int nd, const int64_t *sh) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < nd && o < n; i++) o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)sh[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

/* Checks t against an expected PyTorch shape (nd dims). */
static mg_status check_shape(cctx *c, int k, const char *key, const ckpt_tensor *t, int nd, const int64_t *sh) {
    bool ok = t->n_dims == nd;
    for (int i = 0; ok && i < nd; i++) ok = t->shape[i] == sh[i];
    if (!ok) {
        char a[128], b[128];
        shape_str(a, sizeof a, t->n_dims, t->shape);
        shape_str(b, sizeof b, nd, sh);
        return mg_err(c->err, c->err_len, MG_ERR_FORMAT, "shape mismatch: %s in the %s (%s) is %s, expected %s", key,
                      src_label[k], c->s[k].path, a, b);
    }
    int ty = t->type;
    if (ty != MG_TYPE_F32 && ty != MG_TYPE_F16 && ty != MG_TYPE_BF16 && ty != MG_TYPE_F64)
        return mg_err(c->err, c->err_len, MG_ERR_UNSUPPORTED, "%s in the %s has element type %s, expected a float type",
                      key, src_label[k], ckpt_type_name(ty));
    return MG_OK;
}

/* ==== Plan ==== */

static centry *add_entry(cctx *c, const char *name, int n_dims, const int64_t *pt_shape, int target, int k,
                         const ckpt_tensor *t) {
    if (c->n_e == c->cap_e) {
        int cap = c->cap_e ? 2 * c->cap_e : 256;
        centry *e = realloc(c->e, (size_t)cap * sizeof *e);
        if (!e) return NULL;
        c->e = e;
        c->cap_e = cap;
    }
    centry *e = &c->e[c->n_e++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->n_dims = n_dims;
    for (int i = 0; i < 4; i++) e->ne[i] = i < n_dims ? pt_shape[n_dims - 1 - i] : 1;
    e->src = k;
    e->t = t;
    e->type = conv_pick_type(name, n_dims, e->ne, -1, target, true);
    return e;
}

/* Looks key up in the listed sources (last one wins: the official loading order), checks its
 * shape and adds an entry. Returns the entry, or NULL with c->err set (missing is an error). */
static centry *need(cctx *c, const char *gname, int target, int nd_out, const int64_t *sh_out, int nd, const int64_t *sh,
                    int n_keys, const int *srcs, const char *const *keys, mg_status *st) {
    const ckpt_tensor *t = NULL;
    int k = -1, ki = -1;
    for (int i = 0; i < n_keys; i++) {
        const ckpt_tensor *x = find(c, srcs[i], keys[i]);
        if (x) t = x, k = srcs[i], ki = i;
    }
    if (!t) {
        *st = mg_err(c->err, c->err_len, MG_ERR_FORMAT, "missing required tensor %s (for %s) in the %s %s",
                     keys[n_keys - 1], gname, src_label[srcs[n_keys - 1]],
                     c->s[srcs[n_keys - 1]].path ? c->s[srcs[n_keys - 1]].path : "(not given)");
        return NULL;
    }
    if ((*st = check_shape(c, k, keys[ki], t, nd, sh)) != MG_OK) return NULL;
    if (k != srcs[0]) logf_(c, "override: %s taken from the %s (%s)", gname, src_label[k], keys[ki]);
    centry *e = add_entry(c, gname, nd_out, sh_out, target, k, t);
    if (!e) *st = mg_err(c->err, c->err_len, MG_ERR_NOMEM, "out of memory");
    return e;
}

/* One-source shortcut with the same output and input shape. */
static centry *need1(cctx *c, const char *gname, int target, int k, const char *key, int nd, const int64_t *sh,
                     mg_status *st) {
    int srcs[1] = {k};
    const char *keys[1] = {key};
    return need(c, gname, target, nd, sh, nd, sh, 1, srcs, keys, st);
}

/* ==== LLM ==== */

static bool json_int(json_t *o, const char *k, int64_t *v) {
    json_t *x = json_object_get(o, k);
    if (!json_is_integer(x)) return false;
    *v = json_integer_value(x);
    return true;
}

static bool json_num(json_t *o, const char *k, double *v) {
    json_t *x = json_object_get(o, k);
    if (!json_is_number(x)) return false;
    *v = json_number_value(x);
    return true;
}

static mg_status llm_config(cctx *c, const char *prefix) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", c->p->llm);
    json_error_t je;
    json_t *cfg = json_load_file(path, 0, &je);
    if (!cfg) return mg_err(c->err, c->err_len, MG_ERR_IO, "cannot read %s: %s (line %d)", path, je.text, je.line);
    mg_status st = MG_OK;
    double eps = 0, theta = 0;
    bool has_theta = json_num(cfg, "rope_theta", &theta);
    if (!json_is_object(cfg) || !json_int(cfg, "hidden_size", &c->n_embd) ||
        !json_int(cfg, "num_hidden_layers", &c->n_layer) || !json_int(cfg, "num_attention_heads", &c->n_head) ||
        !json_int(cfg, "intermediate_size", &c->n_ff) || !json_int(cfg, "vocab_size", &c->n_vocab) ||
        !json_num(cfg, "rms_norm_eps", &eps)) {
        st = mg_err(c->err, c->err_len, MG_ERR_FORMAT,
                    "%s lacks one of hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, "
                    "vocab_size, rms_norm_eps (integers / numbers)", path);
        goto done;
    }
    json_t *arch = json_object_get(cfg, "architectures");
    if (json_is_array(arch) && json_array_size(arch) > 0 && json_is_string(json_array_get(arch, 0)) &&
        strcmp(json_string_value(json_array_get(arch, 0)), "LlamaForCausalLM") != 0)
        logf_(c, "note: %s names architecture %s; converting it as LlamaForCausalLM", path,
              json_string_value(json_array_get(arch, 0)));
    json_t *rs = json_object_get(cfg, "rope_scaling");
    if (rs && !json_is_null(rs)) {
        st = mg_err(c->err, c->err_len, MG_ERR_UNSUPPORTED, "%s sets rope_scaling, which minigpt does not support", path);
        goto done;
    }
    if (!json_int(cfg, "num_key_value_heads", &c->n_head_kv)) c->n_head_kv = c->n_head;
    if (!json_int(cfg, "max_position_embeddings", &c->n_ctx)) c->n_ctx = 2048;
    if (c->n_embd < 1 || c->n_layer < 1 || c->n_head < 1 || c->n_head_kv < 1 || c->n_ff < 1 || c->n_vocab < 1 ||
        c->n_embd % c->n_head || c->n_head % c->n_head_kv || c->n_embd > (1 << 20) || c->n_layer > 4096 ||
        c->n_ff > (1 << 22) || c->n_vocab > (1 << 24) || c->n_ctx < 1 || c->n_ctx > (1 << 24) || !(eps > 0 && eps < 1)) {
        st = mg_err(c->err, c->err_len, MG_ERR_FORMAT, "%s: inconsistent or out-of-range hyper-parameters", path);
        goto done;
    }
    c->head_dim = c->n_embd / c->n_head;
    int64_t hd;
    if (json_int(cfg, "head_dim", &hd) && hd != c->head_dim) {
        st = mg_err(c->err, c->err_len, MG_ERR_UNSUPPORTED, "%s: head_dim %lld != hidden_size / heads", path, (long long)hd);
        goto done;
    }
    if (c->head_dim % 2) {
        st = mg_err(c->err, c->err_len, MG_ERR_FORMAT, "%s: odd head dimension %lld", path, (long long)c->head_dim);
        goto done;
    }
    char key[128];
#define KEY(s) (snprintf(key, sizeof key, "%s.%s", prefix, s), key)
    gguf_writer *w = c->w;
    if ((st = gguf_writer_set_u32(w, KEY("vocab_size"), (uint32_t)c->n_vocab)) ||
        (st = gguf_writer_set_u32(w, KEY("context_length"), (uint32_t)c->n_ctx)) ||
        (st = gguf_writer_set_u32(w, KEY("embedding_length"), (uint32_t)c->n_embd)) ||
        (st = gguf_writer_set_u32(w, KEY("block_count"), (uint32_t)c->n_layer)) ||
        (st = gguf_writer_set_u32(w, KEY("feed_forward_length"), (uint32_t)c->n_ff)) ||
        (st = gguf_writer_set_u32(w, KEY("rope.dimension_count"), (uint32_t)c->head_dim)) ||
        (st = gguf_writer_set_u32(w, KEY("attention.head_count"), (uint32_t)c->n_head)) ||
        (st = gguf_writer_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->n_head_kv)) ||
        (st = gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), (float)eps)) ||
        (has_theta && (st = gguf_writer_set_f32(w, KEY("rope.freq_base"), (float)theta))))
        st = mg_err(c->err, c->err_len, st, "cannot set the LLM metadata");
#undef KEY
done:
    json_decref(cfg);
    return st;
}

/* LoRA of layer il, projection "q" or "v", from the MiniGPT checkpoint. */
static mg_status lora_for(cctx *c, centry *e, int il, const char *proj, int64_t n_out, int64_t n_in, bool required) {
    char ka[256], kb[256];
    const ckpt_tensor *a = NULL, *b = NULL;
    static const char *const fmts[] = {"llama_model.base_model.model.model.layers.%d.self_attn.%s_proj.lora_%c.weight",
                                       "llama_model.base_model.model.model.layers.%d.self_attn.%s_proj.lora_%c.default.weight"};
    for (size_t i = 0; i < MG_ARRAY_LEN(fmts) && !a; i++) {
        snprintf(ka, sizeof ka, fmts[i], il, proj, 'A');
        snprintf(kb, sizeof kb, fmts[i], il, proj, 'B');
        a = find(c, S_CKPT, ka);
        b = find(c, S_CKPT, kb);
        if (!a && b) break;
    }
    if (!a && !b) {
        if (!required) return MG_OK;
        snprintf(ka, sizeof ka, fmts[0], il, proj, 'A');
        return mg_err(c->err, c->err_len, MG_ERR_FORMAT,
                      "missing required LoRA tensor %s in the MiniGPT checkpoint %s (MiniGPT-v2 has LoRA on q_proj "
                      "and v_proj of every layer)", ka, c->s[S_CKPT].path);
    }
    if (!a || !b)
        return mg_err(c->err, c->err_len, MG_ERR_FORMAT, "LoRA of layer %d %s_proj has only one of lora_A / lora_B", il,
                      proj);
    int64_t r = a->n_dims == 2 ? a->shape[0] : 0;
    int64_t sa[2] = {r, n_in}, sb[2] = {n_out, r};
    mg_status st;
    if (r < 1) return mg_err(c->err, c->err_len, MG_ERR_FORMAT, "%s is not a matrix", ka);
    if ((st = check_shape(c, S_CKPT, ka, a, 2, sa)) || (st = check_shape(c, S_CKPT, kb, b, 2, sb))) return st;
    float alpha = c->p->lora_alpha > 0 ? c->p->lora_alpha : 16.0f;
    e->la = a;
    e->lb = b;
    e->lscale = alpha / (float)r;
    return MG_OK;
}

static mg_status plan_llm(cctx *c, bool minigpt, bool v2) {
    int tgt = c->p->out_type;
    mg_status st = MG_OK;
    char hf[256], o1[300], o2[300], gname[96];
    int srcs[3] = {S_LLM, S_CKPT, S_CKPT};
    const char *keys[3] = {hf, o1, o2};
    int nk = minigpt && c->s[S_CKPT].f ? 3 : 1;
#define SET_HF(...) (snprintf(hf, sizeof hf, __VA_ARGS__), snprintf(o1, sizeof o1, "llama_model.%s", hf), \
                     snprintf(o2, sizeof o2, "llama_model.base_model.model.%s", hf))
    int64_t d = c->n_embd, V = c->n_vocab, F = c->n_ff, qd = c->n_head * c->head_dim, kd = c->n_head_kv * c->head_dim;
    int64_t sh_emb[2] = {V, d}, sh_d[1] = {d};
    SET_HF("model.embed_tokens.weight");
    if (!need(c, "token_embd.weight", tgt, 2, sh_emb, 2, sh_emb, nk, srcs, keys, &st)) return st;
    for (int il = 0; il < c->n_layer; il++) {
        struct {
            const char *hf, *gg;
            int64_t rows, cols;
            int perm;
        } m[] = {
            {"input_layernorm", "attn_norm", d, 0, 0},
            {"self_attn.q_proj", "attn_q", qd, d, (int)c->n_head},
            {"self_attn.k_proj", "attn_k", kd, d, (int)c->n_head_kv},
            {"self_attn.v_proj", "attn_v", kd, d, 0},
            {"self_attn.o_proj", "attn_output", d, qd, 0},
            {"post_attention_layernorm", "ffn_norm", d, 0, 0},
            {"mlp.gate_proj", "ffn_gate", F, d, 0},
            {"mlp.up_proj", "ffn_up", F, d, 0},
            {"mlp.down_proj", "ffn_down", d, F, 0},
        };
        for (size_t j = 0; j < MG_ARRAY_LEN(m); j++) {
            SET_HF("model.layers.%d.%s.weight", il, m[j].hf);
            snprintf(gname, sizeof gname, "blk.%d.%s.weight", il, m[j].gg);
            int64_t sh[2] = {m[j].rows, m[j].cols};
            int nd = m[j].cols ? 2 : 1;
            centry *e = need(c, gname, tgt, nd, sh, nd, sh, nk, srcs, keys, &st);
            if (!e) return st;
            e->perm_heads = m[j].perm;
            if (minigpt && c->s[S_CKPT].f && (j == 1 || j == 3) &&
                (st = lora_for(c, e, il, j == 1 ? "q" : "v", sh[0], sh[1], v2)) != MG_OK)
                return st;
        }
    }
    SET_HF("model.norm.weight");
    if (!need(c, "output_norm.weight", tgt, 1, sh_d, 1, sh_d, nk, srcs, keys, &st)) return st;
    SET_HF("lm_head.weight");
    bool have_head = find(c, S_LLM, hf) || (nk > 1 && (find(c, S_CKPT, o1) || find(c, S_CKPT, o2)));
    if (have_head) {
        if (!need(c, "output.weight", tgt, 2, sh_emb, 2, sh_emb, nk, srcs, keys, &st)) return st;
    } else {
        logf_(c, "note: no lm_head.weight: the output head is tied to token_embd.weight");
        /* llama.cpp: without output.weight, token_embd gets the output rules */
        c->e[0].type = conv_pick_type("token_embd.weight", 2, c->e[0].ne, -1, tgt, false);
    }
    /* buffers that are not weights */
    for (int il = 0; il < c->n_layer; il++) {
        SET_HF("model.layers.%d.self_attn.rotary_emb.inv_freq", il);
        find(c, S_LLM, hf);
    }
#undef SET_HF
    return MG_OK;
}

/* ==== Vision ==== */

static int64_t count_layers(cctx *c, int k, const char *fmt) {
    char key[256];
    int64_t n = 0;
    for (;; n++) {
        snprintf(key, sizeof key, fmt, (int)n);
        if (!c->s[k].f || !ckpt_find(c->s[k].f, key)) break;
    }
    return n;
}

static mg_status plan_vit(cctx *c, bool v2) {
    mg_status st = MG_OK;
    int tgt = c->p->vision_type >= 0 ? c->p->vision_type : c->p->out_type;
    gguf_writer *w = c->w;
    const ckpt_tensor *cls = ckpt_find(c->s[S_VIT].f, "cls_token");
    const ckpt_tensor *pw = ckpt_find(c->s[S_VIT].f, "patch_embed.proj.weight");
    const ckpt_tensor *pe = ckpt_find(c->s[S_VIT].f, "pos_embed");
    const ckpt_tensor *fc1 = ckpt_find(c->s[S_VIT].f, "blocks.0.mlp.fc1.weight");
    if (!cls || !pw || !pe || !fc1)
        return mg_err(c->err, c->err_len, MG_ERR_FORMAT,
                      "missing required tensor %s in the ViT checkpoint %s",
                      !cls ? "cls_token" : !pw ? "patch_embed.proj.weight" : !pe ? "pos_embed" : "blocks.0.mlp.fc1.weight",
                      c->s[S_VIT].path);
    if (cls->n_dims != 3 || pw->n_dims != 4 || pe->n_dims != 3 || fc1->n_dims != 2)
        return mg_err(c->err, c->err_len, MG_ERR_FORMAT, "ViT checkpoint %s: unexpected ranks of cls_token / "
                      "patch_embed.proj.weight / pos_embed / fc1", c->s[S_VIT].path);
    int64_t E = cls->shape[2], P = pw->shape[3], F = fc1->shape[0], T = pe->shape[1];
    int64_t nb = count_layers(c, S_VIT, "blocks.%d.norm1.weight");
    if (nb > 39) nb = 39; /* BLIP-2 / MiniGPT build 39 blocks: extra ones are unused */
    if (nb < 39) logf_(c, "note: the ViT checkpoint has %lld blocks (EVA ViT-g: 39 used)", (long long)nb);
    int64_t heads = c->p->vit_heads > 0 ? c->p->vit_heads : (E % 88 == 0 ? E / 88 : 0);
    int64_t S = c->p->image_size > 0 ? c->p->image_size : (v2 ? 448 : 224);
    int64_t gs = (int64_t)llround(sqrt((double)(T - 1)));
    if (heads < 1 || E % heads || P < 1 || S % P || nb < 1 || gs * gs != T - 1 || S / P > 256)
        return mg_err(c->err, c->err_len, MG_ERR_FORMAT,
                      "ViT: width %lld, patch %lld, image %lld, %lld positions, %lld heads, %lld blocks are inconsistent "
                      "(use --vit-heads / --image-size for non-standard towers)",
                      (long long)E, (long long)P, (long long)S, (long long)T, (long long)heads, (long long)nb);
    int64_t gd = S / P;
    c->v_embd = E;
    if ((st = gguf_writer_set_u32(w, "minigpt.vision.image_size", (uint32_t)S)) ||
        (st = gguf_writer_set_u32(w, "minigpt.vision.patch_size", (uint32_t)P)) ||
        (st = gguf_writer_set_u32(w, "minigpt.vision.embedding_length", (uint32_t)E)) ||
        (st = gguf_writer_set_u32(w, "minigpt.vision.block_count", (uint32_t)nb)) ||
        (st = gguf_writer_set_u32(w, "minigpt.vision.head_count", (uint32_t)heads)) ||
        (st = gguf_writer_set_u32(w, "minigpt.vision.feed_forward_length", (uint32_t)F)) ||
        (st = gguf_writer_set_f32(w, "minigpt.vision.layer_norm_epsilon", 1e-6f)) ||
        (st = gguf_writer_set_f32(w, "minigpt.vision.post_layer_norm_epsilon", 1e-5f)))
        return mg_err(c->err, c->err_len, st, "cannot set the vision metadata");

    /* lookup order: eva file, then visual_encoder.* of the BLIP-2 file, then of the MiniGPT checkpoint */
    char k0[256], k1[300], k2[300];
    int srcs[3] = {S_VIT, S_QF, S_CKPT};
    const char *keys[3] = {k0, k1, k2};
#define VK(...) (snprintf(k0, sizeof k0, __VA_ARGS__), snprintf(k1, sizeof k1, "visual_encoder.%s", k0), \
                 snprintf(k2, sizeof k2, "visual_encoder.%s", k0))
    int64_t s_pw[4] = {E, 3, P, P}, s_e[1] = {E}, s_cls[3] = {1, 1, E}, s_pe[3] = {1, T, E}, s_pe_out[2] = {1 + gd * gd, E};
    centry *e;
    VK("patch_embed.proj.weight");
    if (!need(c, "v.patch_embd.weight", tgt, 4, s_pw, 4, s_pw, 3, srcs, keys, &st)) return st;
    VK("patch_embed.proj.bias");
    if (!need(c, "v.patch_embd.bias", tgt, 1, s_e, 1, s_e, 3, srcs, keys, &st)) return st;
    VK("cls_token");
    if (!need(c, "v.class_embd", tgt, 1, s_e, 3, s_cls, 3, srcs, keys, &st)) return st;
    VK("pos_embed");
    if (!(e = need(c, "v.position_embd", tgt, 2, s_pe_out, 3, s_pe, 3, srcs, keys, &st))) return st;
    e->pos_gs = (int)gs;
    e->pos_gd = (int)gd;
    if (gs != gd) logf_(c, "position embedding: interpolating the %lldx%lld grid to %lldx%lld", (long long)gs,
                        (long long)gs, (long long)gd, (long long)gd);
    char g[96];
    for (int i = 0; i < nb; i++) {
        struct {
            const char *ck, *gg;
            int64_t rows, cols;
        } m[] = {
            {"norm1.weight", "ln1.weight", E, 0},        {"norm1.bias", "ln1.bias", E, 0},
            {"attn.qkv.weight", "attn_qkv.weight", 3 * E, E},
            {"attn.q_bias", "attn_q.bias", E, 0},        {"attn.v_bias", "attn_v.bias", E, 0},
            {"attn.proj.weight", "attn_out.weight", E, E}, {"attn.proj.bias", "attn_out.bias", E, 0},
            {"norm2.weight", "ln2.weight", E, 0},        {"norm2.bias", "ln2.bias", E, 0},
            {"mlp.fc1.weight", "ffn_up.weight", F, E},   {"mlp.fc1.bias", "ffn_up.bias", F, 0},
            {"mlp.fc2.weight", "ffn_down.weight", E, F}, {"mlp.fc2.bias", "ffn_down.bias", E, 0},
        };
        for (size_t j = 0; j < MG_ARRAY_LEN(m); j++) {
            VK("blocks.%d.%s", i, m[j].ck);
            snprintf(g, sizeof g, "v.blk.%d.%s", i, m[j].gg);
            int64_t sh[2] = {m[j].rows, m[j].cols};
            int nd = m[j].cols ? 2 : 1;
            if (!need(c, g, tgt, nd, sh, nd, sh, 3, srcs, keys, &st)) return st;
        }
    }
#undef VK
    /* ln_vision: BLIP-2 file, overridden by the MiniGPT checkpoint; absent = identity */
    int lsrc[2] = {S_QF, S_CKPT};
    const char *lw[2] = {"ln_vision.weight", "ln_vision.weight"}, *lb[2] = {"ln_vision.bias", "ln_vision.bias"};
    bool hw = find(c, S_QF, lw[0]) || find(c, S_CKPT, lw[0]), hb = find(c, S_QF, lb[0]) || find(c, S_CKPT, lb[0]);
    if (hw != hb) return mg_err(c->err, c->err_len, MG_ERR_FORMAT, "ln_vision.weight and ln_vision.bias must come together");
    if (hw) {
        if (!need(c, "v.post_ln.weight", tgt, 1, s_e, 1, s_e, 2, lsrc, lw, &st) ||
            !need(c, "v.post_ln.bias", tgt, 1, s_e, 1, s_e, 2, lsrc, lb, &st))
            return st;
    } else {
        logf_(c, "note: no ln_vision weights: identity LayerNorm (as the official MiniGPT-4 Llama-2 / v2 models)");
    }
    return MG_OK;
}

static mg_status plan_qformer(cctx *c) {
    mg_status st = MG_OK;
    int tgt = c->p->vision_type >= 0 ? c->p->vision_type : c->p->out_type;
    const ckpt_tensor *qt = ckpt_find(c->s[S_QF].f, "query_tokens");
    const ckpt_tensor *iq = ckpt_find(c->s[S_QF].f, "Qformer.bert.encoder.layer.0.intermediate_query.dense.weight");
    if (!qt || !iq || qt->n_dims != 3 || iq->n_dims != 2)
        return mg_err(c->err, c->err_len, MG_ERR_FORMAT,
                      "missing required tensor %s (or it is not of rank 3 / 2) in the Q-Former checkpoint %s",
                      !qt || qt->n_dims != 3 ? "query_tokens" : "Qformer.bert.encoder.layer.0.intermediate_query.dense.weight",
                      c->s[S_QF].path);
    int64_t Q = qt->shape[1], D = qt->shape[2], Fq = iq->shape[0], E = c->v_embd;
    int64_t nl = count_layers(c, S_QF, "Qformer.bert.encoder.layer.%d.attention.self.query.weight");
    int64_t heads = c->p->qformer_heads > 0 ? c->p->qformer_heads : (D % 64 == 0 ? D / 64 : 0);
    int64_t freq = 0;
    char key[256], g[96];
    for (int64_t l = 1; l < nl && !freq; l++) {
        snprintf(key, sizeof key, "Qformer.bert.encoder.layer.%d.crossattention.self.query.weight", (int)l);
        if (ckpt_find(c->s[S_QF].f, key)) freq = l;
    }
    if (!freq) freq = nl > 0 ? nl : 1; /* only layer 0 cross-attends */
    if (nl < 1 || heads < 1 || D % heads)
        return mg_err(c->err, c->err_len, MG_ERR_FORMAT, "Q-Former: %lld layers, width %lld, %lld heads are inconsistent",
                      (long long)nl, (long long)D, (long long)heads);
    gguf_writer *w = c->w;
    if ((st = gguf_writer_set_u32(w, "minigpt.qformer.query_count", (uint32_t)Q)) ||
        (st = gguf_writer_set_u32(w, "minigpt.qformer.embedding_length", (uint32_t)D)) ||
        (st = gguf_writer_set_u32(w, "minigpt.qformer.block_count", (uint32_t)nl)) ||
        (st = gguf_writer_set_u32(w, "minigpt.qformer.head_count", (uint32_t)heads)) ||
        (st = gguf_writer_set_u32(w, "minigpt.qformer.feed_forward_length", (uint32_t)Fq)) ||
        (st = gguf_writer_set_u32(w, "minigpt.qformer.cross_attention_freq", (uint32_t)freq)) ||
        (st = gguf_writer_set_f32(w, "minigpt.qformer.layer_norm_epsilon", 1e-12f)))
        return mg_err(c->err, c->err_len, st, "cannot set the Q-Former metadata");
    int srcs[2] = {S_QF, S_CKPT};
    const char *keys[2] = {key, key};
    int64_t s_q[3] = {1, Q, D}, s_qo[2] = {Q, D}, s_d[1] = {D};
    snprintf(key, sizeof key, "query_tokens");
    if (!need(c, "qf.query_embd", tgt, 2, s_qo, 3, s_q, 2, srcs, keys, &st)) return st;
    snprintf(key, sizeof key, "Qformer.bert.embeddings.LayerNorm.weight");
    if (!need(c, "qf.embd_ln.weight", tgt, 1, s_d, 1, s_d, 2, srcs, keys, &st)) return st;
    snprintf(key, sizeof key, "Qformer.bert.embeddings.LayerNorm.bias");
    if (!need(c, "qf.embd_ln.bias", tgt, 1, s_d, 1, s_d, 2, srcs, keys, &st)) return st;
    for (int l = 0; l < nl; l++) {
        bool cross = l % freq == 0;
        struct {
            const char *ck, *gg;
            int64_t rows, cols;
            bool cross;
        } m[] = {
            {"attention.self.query", "attn_q", D, D, 0},       {"attention.self.key", "attn_k", D, D, 0},
            {"attention.self.value", "attn_v", D, D, 0},       {"attention.output.dense", "attn_out", D, D, 0},
            {"attention.output.LayerNorm", "attn_ln", D, 0, 0}, {"crossattention.self.query", "cross_q", D, D, 1},
            {"crossattention.self.key", "cross_k", D, E, 1},   {"crossattention.self.value", "cross_v", D, E, 1},
            {"crossattention.output.dense", "cross_out", D, D, 1},
            {"crossattention.output.LayerNorm", "cross_ln", D, 0, 1},
            {"intermediate_query.dense", "ffn_up", Fq, D, 0},  {"output_query.dense", "ffn_down", D, Fq, 0},
            {"output_query.LayerNorm", "ffn_ln", D, 0, 0},
        };
        for (size_t j = 0; j < MG_ARRAY_LEN(m); j++) {
            if (m[j].cross && !cross) {
                snprintf(key, sizeof key, "Qformer.bert.encoder.layer.%d.%s.weight", l, m[j].ck);
                if (ckpt_find(c->s[S_QF].f, key))
                    return mg_err(c->err, c->err_len, MG_ERR_FORMAT,
                                  "Q-Former layer %d has cross-attention, but the cross-attention frequency is %lld", l,
                                  (long long)freq);
                continue;
            }
            for (int wb = 0; wb < 2; wb++) {
                snprintf(key, sizeof key, "Qformer.bert.encoder.layer.%d.%s.%s", l, m[j].ck, wb ? "bias" : "weight");
                snprintf(g, sizeof g, "qf.blk.%d.%s.%s", l, m[j].gg, wb ? "bias" : "weight");
                int64_t sh[2] = {m[j].rows, m[j].cols};
                int nd = m[j].cols && !wb ? 2 : 1;
                if (!need(c, g, tgt, nd, sh, nd, sh, 2, srcs, keys, &st)) return st;
            }
        }
    }
    return MG_OK;
}

static mg_status plan_proj(cctx *c, int64_t n_in) {
    mg_status st = MG_OK;
    int tgt = c->p->vision_type >= 0 ? c->p->vision_type : c->p->out_type;
    int64_t sw[2] = {c->n_embd, n_in}, sb[1] = {c->n_embd};
    if (!need1(c, "mm.proj.weight", tgt, S_CKPT, "llama_proj.weight", 2, sw, &st) ||
        !need1(c, "mm.proj.bias", tgt, S_CKPT, "llama_proj.bias", 1, sb, &st))
        return st;
    return MG_OK;
}

/* ==== Recipe choice ==== */

static bool ckpt_has_lora(const ckpt_file *f) {
    for (int64_t i = 0; f && i < ckpt_n_tensors(f); i++)
        if (strstr(ckpt_tensor_at(f, i)->name, ".lora_A")) return true;
    return false;
}

static mg_status choose_arch(cctx *c, conv_arch *out) {
    const conv_params *p = c->p;
    conv_arch a = p->arch;
    if (!p->llm) return mg_err(c->err, c->err_len, MG_ERR_INVALID_ARG, "--llm HF_FOLDER is required");
    if (a == CONV_ARCH_AUTO) {
        if (!p->vit && !p->qformer && !p->ckpt) {
            a = CONV_ARCH_LLAMA;
        } else if (ckpt_has_lora(c->s[S_CKPT].f)) {
            a = CONV_ARCH_MINIGPTV2;
        } else if (p->qformer) {
            a = CONV_ARCH_MINIGPT4_VICUNA;
        } else {
            const ckpt_tensor *pw = c->s[S_CKPT].f ? ckpt_find(c->s[S_CKPT].f, "llama_proj.weight") : NULL;
            const ckpt_tensor *cls = c->s[S_VIT].f ? ckpt_find(c->s[S_VIT].f, "cls_token") : NULL;
            if (pw && cls && pw->n_dims == 2 && cls->n_dims == 3 && pw->shape[1] == 4 * cls->shape[2])
                a = CONV_ARCH_MINIGPT4_LLAMA2;
            else
                return mg_err(c->err, c->err_len, MG_ERR_INVALID_ARG,
                              "cannot tell the model from the files given: pass --arch (llama, minigpt4-vicuna, "
                              "minigpt4-llama2, minigptv2)");
        }
        logf_(c, "recipe: %s (from the files given)", conv_arch_name(a));
    } else {
        logf_(c, "recipe: %s", conv_arch_name(a));
    }
    if (a == CONV_ARCH_LLAMA && (p->vit || p->qformer || p->ckpt))
        return mg_err(c->err, c->err_len, MG_ERR_INVALID_ARG, "--arch llama takes only --llm");
    if (a != CONV_ARCH_LLAMA && (!p->vit || !p->ckpt))
        return mg_err(c->err, c->err_len, MG_ERR_INVALID_ARG, "%s needs --vit and --ckpt", conv_arch_name(a));
    if (a == CONV_ARCH_MINIGPT4_VICUNA && !p->qformer)
        return mg_err(c->err, c->err_len, MG_ERR_INVALID_ARG, "minigpt4-vicuna needs --qformer");
    if (a != CONV_ARCH_MINIGPT4_VICUNA && a != CONV_ARCH_LLAMA && p->qformer)
        logf_(c, "note: %s has no Q-Former: --qformer is read only for ln_vision / visual_encoder overrides",
              conv_arch_name(a));
    *out = a;
    return MG_OK;
}

/* ==== Reports ==== */

static bool ignorable(const char *n) {
    static const char *const pats[] = {"position_ids", "rotary_emb.inv_freq", "t5_proj.", "optimizer.", "scaler.",
                                       "Qformer.cls.", "word_embeddings", "position_embeddings"};
    for (size_t i = 0; i < MG_ARRAY_LEN(pats); i++)
        if (strstr(n, pats[i])) return true;
    /* the Q-Former's text FFN (encoder.layer.N.intermediate / .output): removed by MiniGPT-4 */
    const char *l = strstr(n, "encoder.layer.");
    if (l) {
        l += 14;
        while (*l >= '0' && *l <= '9') l++;
        if (strncmp(l, ".intermediate.", 14) == 0 || strncmp(l, ".output.", 8) == 0) return true;
    }
    return false;
}

static void report_unused(cctx *c) {
    for (int k = 0; k < S_COUNT; k++) {
        csrc *s = &c->s[k];
        int64_t shown = 0, more = 0, quiet = 0;
        for (int64_t i = 0; i < s->n; i++) {
            if (s->used[i]) continue;
            const char *n = ckpt_tensor_at(s->f, i)->name;
            if (k != S_LLM && strncmp(n, "model.", 6) == 0) n += 6; /* the {"model": ...} wrapper */
            if (ignorable(n)) {
                quiet++;
                continue;
            }
            if (shown < MAX_REPORT) {
                logf_(c, "%s key: %s (%s %s)", k == S_CKPT ? "unexpected" : "unused", n, src_label[k], s->path);
                shown++;
            } else {
                more++;
            }
        }
        if (more) logf_(c, "... and %lld more unused keys in the %s", (long long)more, src_label[k]);
        if (quiet) logf_(c, "%lld buffers / training-only keys of the %s skipped (position_ids, t5_proj, ...)",
                         (long long)quiet, src_label[k]);
    }
}

/* ==== Writing ==== */

/* y[r] = x[perm(r)]: inside each head, row 2i <- row i and row 2i+1 <- row i + hd/2. */
static void permute_rows(const float *x, float *y, int64_t rows, int64_t cols, int heads) {
    int64_t hd = rows / heads, half = hd / 2;
    for (int64_t h = 0; h < heads; h++)
        for (int64_t i = 0; i < half; i++)
            for (int s = 0; s < 2; s++)
                memcpy(y + (h * hd + 2 * i + s) * cols, x + (h * hd + s * half + i) * cols, (size_t)cols * sizeof *y);
}

/* W[o, :] += scale * sum_k B[o, k] A[k, :] (products summed in double, then rounded). */
static void lora_merge(float *W, const float *A, const float *B, int64_t n_out, int64_t n_in, int64_t r, float scale,
                       double *acc) {
    for (int64_t o = 0; o < n_out; o++) {
        memset(acc, 0, (size_t)n_in * sizeof *acc);
        for (int64_t k = 0; k < r; k++) {
            double b = B[o * r + k];
            const float *a = A + k * n_in;
            for (int64_t i = 0; i < n_in; i++) acc[i] += b * a[i];
        }
        float *w = W + o * n_in;
        for (int64_t i = 0; i < n_in; i++) w[i] = w[i] + scale * (float)acc[i];
    }
}

static mg_status produce(cctx *c, const centry *e, float *buf, float *tmp, double *acc, void *out) {
    mg_status st = ckpt_read_f32(c->s[e->src].f, e->t, buf, e->t->n_elements, c->err, c->err_len);
    if (st != MG_OK) return st;
    int64_t nel = e->t->n_elements;
    if (e->la) {
        float *A = malloc((size_t)e->la->n_elements * sizeof *A), *B = malloc((size_t)e->lb->n_elements * sizeof *B);
        if (!A || !B) st = mg_err(c->err, c->err_len, MG_ERR_NOMEM, "out of memory for LoRA of %s", e->name);
        if (st == MG_OK) st = ckpt_read_f32(c->s[S_CKPT].f, e->la, A, e->la->n_elements, c->err, c->err_len);
        if (st == MG_OK) st = ckpt_read_f32(c->s[S_CKPT].f, e->lb, B, e->lb->n_elements, c->err, c->err_len);
        if (st == MG_OK) lora_merge(buf, A, B, e->lb->shape[0], e->la->shape[1], e->la->shape[0], e->lscale, acc);
        free(A);
        free(B);
        if (st != MG_OK) return st;
    }
    const float *src = buf;
    if (e->perm_heads) {
        permute_rows(buf, tmp, e->t->shape[0], e->t->shape[1], e->perm_heads);
        src = tmp;
    } else if (e->pos_gs != e->pos_gd) {
        vision_interp_pos_embed(buf, e->pos_gs, e->pos_gd, (int)e->ne[0], tmp);
        src = tmp;
        nel = e->ne[0] * e->ne[1];
    }
    mg_quantize_row(e->type, src, out, nel);
    return MG_OK;
}

static uint64_t entry_bytes(const centry *e) {
    int64_t nel = e->ne[0] * e->ne[1] * e->ne[2] * e->ne[3];
    const mg_type_traits *tr = mg_get_type_traits(e->type);
    return (uint64_t)(nel / tr->blck_size) * tr->type_size;
}

static mg_status write_all(cctx *c, const char *out_path) {
    mg_status st = MG_OK;
    uint64_t total = 0;
    int64_t max_in = 1, max_out = 1, max_cols = 1;
    for (int i = 0; i < c->n_e; i++) {
        const centry *e = &c->e[i];
        int64_t nin = e->t->n_elements, nout = e->ne[0] * e->ne[1] * e->ne[2] * e->ne[3];
        max_in = MG_MAX(max_in, MG_MAX(nin, nout));
        max_out = MG_MAX(max_out, (int64_t)entry_bytes(e));
        if (e->la) max_cols = MG_MAX(max_cols, e->la->shape[1]);
        total += entry_bytes(e);
        if ((st = gguf_writer_add_tensor(c->w, e->name, e->type, e->n_dims, e->ne, NULL)) != MG_OK)
            return mg_err(c->err, c->err_len, st, "cannot add tensor %s (type %s, row %lld)", e->name,
                          mg_type_name(e->type), (long long)e->ne[0]);
    }
    float *buf = malloc((size_t)max_in * sizeof *buf), *tmp = malloc((size_t)max_in * sizeof *tmp);
    double *acc = malloc((size_t)max_cols * sizeof *acc);
    void *out = malloc((size_t)max_out);
    FILE *fp = NULL;
    if (!buf || !tmp || !acc || !out) {
        st = mg_err(c->err, c->err_len, MG_ERR_NOMEM, "out of memory for a tensor of %lld elements", (long long)max_in);
        goto done;
    }
    fp = fopen(out_path, "wb");
    if (!fp) {
        st = mg_err(c->err, c->err_len, MG_ERR_IO, "cannot create %s: %s", out_path, strerror(errno));
        goto done;
    }
    if ((st = gguf_writer_write_header(c->w, fp, c->err, c->err_len)) != MG_OK) goto done;
    uint64_t done_b = 0;
    for (int i = 0; i < c->n_e; i++) {
        const centry *e = &c->e[i];
        if ((st = produce(c, e, buf, tmp, acc, out)) != MG_OK) goto done;
        if ((st = gguf_writer_write_tensor_data(c->w, fp, i, out, c->err, c->err_len)) != MG_OK) goto done;
        done_b += entry_bytes(e);
        if (c->p->progress && c->p->progress(c->p->user, done_b, total, e->name)) {
            st = mg_err(c->err, c->err_len, MG_ERR_CANCELLED, "convert cancelled");
            goto done;
        }
    }
    if (fflush(fp) != 0) st = mg_err(c->err, c->err_len, MG_ERR_IO, "cannot write %s: %s", out_path, strerror(errno));
done:
    st = gguf_file_close_written(fp, out_path, st, c->err, c->err_len);
    if (fp && st != MG_OK) remove(out_path);
    free(buf);
    free(tmp);
    free(acc);
    free(out);
    return st;
}

static const char *base_name(const char *path, char *buf, size_t n) {
    snprintf(buf, n, "%s", path);
    size_t l = strlen(buf);
    while (l > 1 && buf[l - 1] == '/') buf[--l] = 0;
    const char *s = strrchr(buf, '/');
    return s ? s + 1 : buf;
}

/* Converts the checkpoints of p into out_path. */
mg_status conv_convert(const char *out_path, const conv_params *p, char *err, size_t err_len) {
    if (!out_path || !p) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "convert: NULL argument");
    if (!conv_target_ok(p->out_type) || (p->vision_type >= 0 && !conv_target_ok(p->vision_type)))
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "convert: output types must be f32, f16, bf16, q8_0 or q4_0");
    cctx c;
    memset(&c, 0, sizeof c);
    c.p = p;
    c.err = err;
    c.err_len = err_len;
    mg_tokenizer *tok = NULL;
    conv_arch arch = CONV_ARCH_LLAMA;
    mg_status st;
    c.w = gguf_writer_create();
    if (!c.w) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    if ((st = open_src(&c, S_LLM, p->llm)) || (st = open_src(&c, S_VIT, p->vit)) ||
        (st = open_src(&c, S_QF, p->qformer)) || (st = open_src(&c, S_CKPT, p->ckpt)) ||
        (st = choose_arch(&c, &arch)))
        goto done;
    bool minigpt = arch != CONV_ARCH_LLAMA, v2 = arch == CONV_ARCH_MINIGPTV2;
    const char *ga = !minigpt ? "llama" : v2 ? "minigptv2" : "minigpt4";
    char nb[1024];
    if ((st = gguf_writer_set_str(c.w, "general.architecture", ga)) ||
        (st = gguf_writer_set_str(c.w, "general.name", p->name ? p->name : base_name(p->llm, nb, sizeof nb)))) {
        mg_err(err, err_len, st, "cannot set metadata");
        goto done;
    }
    /* the LLM keys stay under "llama." in the MiniGPT files (model.c reads them there) */
    if ((st = llm_config(&c, "llama")) != MG_OK) goto done;
    if ((st = mg_tokenizer_load(&tok, p->llm, err, err_len)) != MG_OK) {
        char tmp[400];
        snprintf(tmp, sizeof tmp, "%s", err);
        mg_err(err, err_len, st, "tokenizer of %s: %s", p->llm, tmp);
        goto done;
    }
    if (mg_tokenizer_n_vocab(tok) > c.n_vocab) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "the tokenizer has %d pieces but vocab_size is %lld",
                    mg_tokenizer_n_vocab(tok), (long long)c.n_vocab);
        goto done;
    }
    if (mg_tokenizer_n_vocab(tok) < c.n_vocab)
        logf_(&c, "note: vocab_size %lld > %d tokenizer pieces: the extra embedding rows have no piece", (long long)c.n_vocab,
              mg_tokenizer_n_vocab(tok));
    if ((st = tok_write_gguf(tok, c.w)) != MG_OK) {
        mg_err(err, err_len, st, "cannot write the tokenizer metadata");
        goto done;
    }
    if ((st = plan_llm(&c, minigpt, v2)) != MG_OK) goto done;
    if (minigpt) {
        const char *proj = arch == CONV_ARCH_MINIGPT4_VICUNA ? "qformer" : "merge4";
        if ((st = gguf_writer_set_str(c.w, "minigpt.projector_type", proj)) != MG_OK ||
            (st = gguf_writer_set_str(c.w, "minigpt.chat_template", conv_arch_name(arch))) != MG_OK) {
            mg_err(err, err_len, st, "cannot set metadata");
            goto done;
        }
        if ((st = plan_vit(&c, v2)) != MG_OK) goto done;
        if (arch == CONV_ARCH_MINIGPT4_VICUNA) {
            int64_t D0 = c.n_e;
            if ((st = plan_qformer(&c)) != MG_OK) goto done;
            int64_t D = c.e[D0].ne[0]; /* qf.query_embd [Q, D] */
            if ((st = plan_proj(&c, D)) != MG_OK) goto done;
        } else {
            if ((st = plan_proj(&c, 4 * c.v_embd)) != MG_OK) goto done;
        }
    }
    int ft = conv_file_type(p->out_type);
    if ((st = gguf_writer_set_u32(c.w, "general.file_type", (uint32_t)ft)) ||
        (st = gguf_writer_set_u32(c.w, "general.quantization_version", 2))) {
        mg_err(err, err_len, st, "cannot set metadata");
        goto done;
    }
    report_unused(&c);
    st = write_all(&c, out_path);
done:
    mg_tokenizer_free(tok);
    for (int k = 0; k < S_COUNT; k++) {
        ckpt_close(c.s[k].f);
        free(c.s[k].used);
    }
    free(c.e);
    gguf_writer_free(c.w);
    return st;
}
