/*
 * train.h - a trainable fp32 MiniGPT-v2-shaped model: EVA-style ViT (CLS, position embedding,
 * pre-norm blocks with q/v bias) -> ln_vision -> drop CLS, merge 4 tokens -> linear projection
 * -> LLaMA decoder (RMSNorm, RoPE on llama.cpp's permuted q/k layout, SwiGLU, untied head).
 *
 * All parameters live in one flat fp32 array described by a tensor table whose names are the
 * inference names (docs/gguf-keys.md for the vision side, llama.cpp's for the LLM), so a saved
 * checkpoint is a GGUF the engine runs as it is; gradients and the AdamW moments use the same
 * layout. One call runs forward + backward over one example and accumulates gradients; a step
 * clips the global gradient norm and applies AdamW to the parameter groups being trained.
 * A tr_model is used by one thread at a time (it owns its scratch).
 */
#ifndef MG_TRAIN_H
#define MG_TRAIN_H

#include "gguf.h"
#include "threadpool.h"

/* A patch head of TR_AUX_SPLIT_CLASSES classes is two softmaxes over one linear layer: columns
 * [0, TR_AUX_SPLIT_FIRST) take shape (background + 8 shapes) and the rest colour (background +
 * 11 colours). Its labels are the world's joint patch labels t (0: background, else
 * 1 + colour * 8 + shape): targets 1 + (t - 1) % 8 and 1 + (t - 1) / 8, and its loss is the sum
 * of the two cross-entropies. So both read the tower at full strength from the first step,
 * instead of one of them being read late from weak features. */
#define TR_AUX_SPLIT_FIRST 9
#define TR_AUX_SPLIT_CLASSES 21
/* Joint labels a split head takes: 0 and 1 + colour * 8 + shape for 11 colours. */
#define TR_AUX_SPLIT_LABELS (1 + (TR_AUX_SPLIT_FIRST - 1) * (TR_AUX_SPLIT_CLASSES - TR_AUX_SPLIT_FIRST - 1))

/* The two targets of joint label t (0 <= t < TR_AUX_SPLIT_LABELS): the shape group's (0..8) and
 * the colour group's (0..11), both 0 for the background. */
static inline void tr_aux_split_targets(int32_t t, int32_t *shape, int32_t *colour) {
    *shape = t ? 1 + (t - 1) % (TR_AUX_SPLIT_FIRST - 1) : 0;
    *colour = t ? 1 + (t - 1) / (TR_AUX_SPLIT_FIRST - 1) : 0;
}

typedef struct {
    /* vision tower */
    int image_size;   /* S: input [3, S, S]; (S / patch_size)^2 must be a multiple of 4 */
    int patch_size;   /* P */
    int v_embd;       /* E */
    int v_layer;
    int v_head;
    int v_ff;
    float v_eps;      /* block LayerNorms */
    float post_eps;   /* ln_vision */
    /* language model */
    int n_vocab;
    int n_embd;       /* d */
    int n_layer;
    int n_head;
    int n_head_kv;
    int n_ff;
    int n_ctx;        /* longest sequence (text + image rows) */
    float rms_eps;
    float rope_theta;
    /* training only: classes of the auxiliary patch head (0: none). The head (aux.patch_cls.*,
     * vision group) classifies every ln_vision patch row; it is not part of an exported model. */
    int aux_classes;
    /* (aux_classes == TR_AUX_SPLIT_CLASSES: the head is two softmaxes, see below) */
    /* training only: outputs of the auxiliary mask head (0: none, else patch_size^2). The head
     * (aux.patch_mask.*, vision group) predicts, from every ln_vision patch row, which of the
     * patch's pixels belong to an object (sigmoid, binary cross-entropy); not exported. */
    int aux_mask;
    /* training only: rank of the LoRA adapters on every decoder layer's attention q and v
     * projections (0: none; else 1 .. min(n_embd, n_head_kv * head_dim)). The adapters
     * (lora.blk.N.attn_{q,v}.{a,b}, group TR_GROUP_LORA) add lora_alpha / lora_rank * B (A x) to
     * the projection; an exported model has them merged into attn_q / attn_v (tr_lora_delta). */
    int lora_rank;
    float lora_alpha; /* > 0 when lora_rank > 0; stored as train.lora_alpha */
    /* creation only (not stored): amplitude of a 2D sine-cosine initialisation of the ViT
     * position embedding (patch rows; the CLS row stays 0). 0: random like the other embeddings. */
    float pos_sincos;
} tr_config;

/* Parameter groups; a train mask is an OR of them. */
enum {
    TR_GROUP_VISION = 1, /* ViT, ln_vision */
    TR_GROUP_PROJ = 2,   /* mm.proj */
    TR_GROUP_LLM = 4,    /* token_embd, decoder blocks, output_norm, output */
    /* Not a group: a flag of the train mask. Training steps run the vision tower and the
     * auxiliary heads only, and the loss is the auxiliary loss (the language model is not run;
     * evaluation forwards still run everything). Used with TR_GROUP_VISION ("vision-aux"). */
    TR_AUX_ONLY = 8,
    TR_GROUP_LORA = 16   /* lora.* adapters (models with cfg.lora_rank > 0) */
};

/* Rank and alpha of new adapters when none is given: scale alpha / rank = 2. Alpha stays 16 for
 * any rank (as the LoRA paper keeps alpha fixed as r varies; MiniGPT-v2 uses alpha 16 with r 64). */
#define TR_LORA_DEFAULT_RANK 8
#define TR_LORA_DEFAULT_ALPHA 16.0f

typedef struct {
    char name[64];     /* GGUF tensor name */
    int n_dims;
    int64_t ne[4];     /* GGUF order: ne[0] = row length */
    int64_t off;       /* offset in floats into the flat arrays */
    int64_t n;         /* element count */
    int group;         /* TR_GROUP_* */
    bool decay;        /* AdamW weight decay applies (matrices other than embeddings) */
} tr_tensor;

typedef struct tr_cache tr_cache;

typedef struct {
    tr_config cfg;
    int n_tensors;
    tr_tensor *tensors;   /* [n_tensors] */
    int64_t n_params;
    float *params;        /* [n_params] */
    float *grads;         /* [n_params]; entries of frozen groups stay 0 */
    float *adam_m;        /* [n_params] first moment */
    float *adam_v;        /* [n_params] second moment */
    int64_t step;         /* optimizer steps done */
    int train_mask;       /* groups that receive gradients and updates */
    mg_pool *pool;        /* owned */
    tr_cache *cache;      /* activations of the last forward, owned */
    int n_rep;            /* replicas for tr_forward_backward_batch (0 until its first use) */
    tr_cache **rep;       /* [n_rep]: rep[0] = cache */
    float **rep_grads;    /* [n_rep]: gradient buffers of parts 1.. (rep_grads[0] unused) */
} tr_model;

#define MG_TRAIN_MAX_THREADS 256

/* One training example: a sequence of text tokens with the image's rows spliced in before text
 * token img_pos. Every text token j with mask[j] = 1 (and a predecessor row) is a target: the
 * loss is the mean cross-entropy of predicting those tokens from the row before them. */
typedef struct {
    const float *image;   /* [3, S, S], normalised */
    const int32_t *ids;   /* [n_text] */
    const uint8_t *mask;  /* [n_text] */
    int n_text;
    int img_pos;          /* 0..n_text */
    /* optional auxiliary patch loss (model with aux_classes > 0): aux_weight * mean over patches
     * with a label >= 0 of -log softmax(head(ln_vision row))[label]; its value goes to *aux_loss */
    const int32_t *patch_labels; /* [Np] or NULL */
    float aux_weight;
    float *aux_loss;             /* may be NULL */
    /* optional auxiliary mask loss (model with aux_mask > 0): mask_weight * mean over patches and
     * their pixels of the binary cross-entropy between sigmoid(mask head) and patch_masks, the
     * share of each pixel covered by an object (0..1); its value goes to *mask_loss */
    const float *patch_masks;    /* [Np, P*P] or NULL */
    float mask_weight;
    float *mask_loss;            /* may be NULL */
    /* non-zero: examples with equal keys have the same image. While the tower is frozen, a run of
     * examples with one key on one replica (tr_forward_backward_batch) computes the tower once
     * and reuses its features: the results are bit-identical, only faster. 0: no sharing */
    uint64_t image_key;
} tr_example;

typedef struct {
    float lr;             /* peak learning rate */
    float lr_min;         /* end of the cosine */
    int64_t warmup;       /* linear warm-up steps (0: none) */
    int64_t total;        /* total steps of the schedule */
    float beta1, beta2, eps;
    float weight_decay;   /* decoupled, on tensors with decay = true */
    float clip;           /* global gradient-norm bound; <= 0: no clipping */
} tr_opt;

/* Defaults: lr 1e-3 -> 1e-4, warm-up 10 of 200 steps, betas 0.9/0.999, eps 1e-8, wd 0.05, clip 1. */
tr_opt tr_opt_default(void);
/* A tiny demo-sized configuration (56x56 images, 4 image rows, 2+2 layers, vocab 320). */
tr_config tr_config_tiny(void);

/* Parses "proj", "llm", "proj+llm", "all", "vision-aux", "lora" or "proj+lora" into a train mask. */
mg_status tr_parse_mode(const char *s, int *mask, char *err, size_t err_len);

/* Builds a model with weights drawn from seed (matrices and embeddings N(0, 0.02), norm weights
 * 1, biases 0), train mask "all", and a pool of n_threads. With cfg->lora_rank > 0 the base
 * weights are those of the same model without adapters and the adapters start as
 * tr_lora_attach's. */
mg_status tr_model_create(tr_model **out, const tr_config *cfg, uint64_t seed, int n_threads, char *err,
                          size_t err_len);
/* Frees everything; accepts NULL. */
void tr_model_free(tr_model *m);
/* Index of a tensor by name, or -1. */
int tr_find_tensor(const tr_model *m, const char *name);
/* Zeroes the gradients. */
void tr_zero_grad(tr_model *m);

/* Forward over one example; *loss gets the masked mean cross-entropy. When backward is true,
 * scale * d(loss)/d(param) is ADDED to the gradients of the trained groups (scale = 1 / batch
 * for a mean over a batch). Fails on a bad example (ids out of range, too long, ...). */
mg_status tr_forward_backward(tr_model *m, const tr_example *ex, bool backward, float scale, float *loss,
                              char *err, size_t err_len);

/* The same over n examples, in parallel: the pool's part i runs a contiguous share of the
 * examples serially on its own activations and gradient buffer; the buffers are then added to
 * the gradients in part order, so the result depends on the thread count but not on timing.
 * losses[i] gets example i's loss. On failure the message of the first failing part is kept and
 * the gradients are partial. tr_last_rows/logits afterwards refer to an unspecified example. */
mg_status tr_forward_backward_batch(tr_model *m, const tr_example *exs, int n, bool backward, float scale,
                                    float *losses, char *err, size_t err_len);

/* After tr_forward_backward: the example's input rows [*L, n_embd] (text embeddings and projected
 * image rows) and logits [*L, n_vocab]; owned by m, valid until its next call. NULL before any. */
const float *tr_last_rows(const tr_model *m, int *L);
/* Vision tower forwards run so far (every replica), for tests of tr_example.image_key. */
int64_t tr_tower_runs(const tr_model *m);
const float *tr_last_logits(const tr_model *m);
/* [Np, aux_classes] logits of the auxiliary head from the last forward, or NULL when it did not
 * run (no head, no patch labels or aux_weight 0). */
const float *tr_last_aux_logits(const tr_model *m);

/* Learning rate at step (0-based): linear warm-up lr * (step + 1) / warmup for step < warmup,
 * then lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2 with p = (step - warmup) / (total - warmup)
 * clamped to [0, 1]. */
float tr_lr_at(const tr_opt *o, int64_t step);
/* Global L2 norm of the trained gradients (in double); when max_norm > 0 and the norm exceeds
 * it, scales them by max_norm / (norm + 1e-6) (torch.nn.utils.clip_grad_norm_). Returns the
 * norm before clipping. */
double tr_clip_grad(tr_model *m, float max_norm);
/* One AdamW update of n values (torch.optim.AdamW): p *= 1 - lr * wd; moments; bias-corrected
 * step. t is the 1-based step number. */
void tr_adamw_update(float *p, const float *g, float *mom1, float *mom2, int64_t n, float lr, float beta1,
                     float beta2, float eps, float wd, int64_t t);
/* Clip, then AdamW on the trained tensors at the scheduled rate; step++. lr_out / gnorm_out may
 * be NULL. Gradients are left as they are (call tr_zero_grad before the next accumulation). */
void tr_step(tr_model *m, const tr_opt *o, float *lr_out, double *gnorm_out);

/* Writes a GGUF the engine can open: the keys of kv_src (e.g. the tokenizer; may be NULL), the
 * architecture and hyperparameter keys, every parameter (F32), the AdamW moments as
 * "opt.m.<name>" / "opt.v.<name>" and the step in "train.step"; with LoRA adapters also
 * "train.lora_alpha" (f32; the rank is the adapters' row count). */
mg_status tr_save(const tr_model *m, const char *path, const gguf_file *kv_src, char *err, size_t err_len);
/* Reads a file written by tr_save (moments and step when present; else zero), adapters included. */
mg_status tr_load(tr_model **out, const char *path, int n_threads, char *err, size_t err_len);
/* The same; add_mask_head gives a model whose file has no auxiliary mask head one (zero weights);
 * aux_classes > 0 asks for a patch head of that many classes: the file's when it has that size,
 * else a new one at zero (weights and moments); 0 keeps the file's head, or none. */
mg_status tr_load_with(tr_model **out, const char *path, int n_threads, bool add_mask_head, int aux_classes,
                       char *err, size_t err_len);

/* ==== LoRA (MiniGPT-v2's recipe: adapters on the language model's q and v projections) ====
 * Per decoder layer N: lora.blk.N.attn_q.a [r, d] (GGUF ne {d, r}), lora.blk.N.attn_q.b [qd, r],
 * lora.blk.N.attn_v.a [r, d], lora.blk.N.attn_v.b [kvd, r]; the projection becomes
 * W x + (alpha / r) B (A x). B's rows are in the stored row order of W (llama.cpp's permuted q
 * rows), so merging is W + (alpha / r) B A in that layout. */

/* Replaces *m by a copy with fresh adapters of rank `rank` and scale alpha / rank: A uniform in
 * [-1/sqrt(d), 1/sqrt(d)) (kaiming-uniform as PEFT's) from a generator derived from seed, B = 0
 * (the model's output is unchanged), their moments 0. Everything else (parameters, moments,
 * step, train mask, thread count) is copied. Fails when *m has adapters or the rank is out of
 * range; *m is then left as it was. */
mg_status tr_lora_attach(tr_model **m, int rank, float alpha, uint64_t seed, char *err, size_t err_len);
/* Replaces *m by a copy without adapters whose attn_q / attn_v weights are merged
 * (tr_lora_delta); the other tensors and their moments are copied, the adapters' moments
 * dropped. A model without adapters is left as it is. */
mg_status tr_lora_merge(tr_model **m, char *err, size_t err_len);
/* W[n_out, n_in] += scale * B[n_out, r] . A[r, n_in], each entry's sum over r in double, added
 * as (float)(scale * sum). The one merge of both the export and tr_lora_merge. */
void tr_lora_delta(float *W, const float *A, const float *B, int64_t n_out, int64_t n_in, int64_t r, float scale);

#endif
