/*
 * trainloop.h - the training loop behind `minigpt train`: a deterministic vocabulary built from
 * the synthetic world's closed vocabulary, data from the world (src/world.h) or a user's folder
 * (DIR/data.jsonl + images, docs/DEMO_MODEL.md "Data"), examples in MiniGPT-v2's template
 * ("<s>[INST] <Img><ImageHere></Img> {instruction} [/INST]" + answer + "</s>", loss on the answer
 * and "</s>" only), gradient accumulation, AdamW with warm-up + cosine and clipping (src/train.h),
 * teacher-forced evaluation on held-out scenes, periodic checkpoints and bit-identical resume.
 * The library never prints: progress goes through a callback.
 */
#ifndef MG_TRAINLOOP_H
#define MG_TRAINLOOP_H

#include "train.h"

/* Task weights are indexed by mg_task (0 = the untagged description). */
#define TL_N_TASKS 7
/* Most training examples drawn from one scene (tl_params.per_image). */
#define TL_MAX_PER_IMAGE 64

typedef struct {
    tr_config cfg;           /* model shape (n_vocab is set from the vocabulary) */
    const char *data_dir;    /* NULL: the synthetic world; else a folder with data.jsonl */
    uint64_t seed;           /* world seed, weight init and example choice */
    float task_weight[TL_N_TASKS]; /* world: relative frequency of each task (0: never) */
    int max_objects;         /* world: only scenes with at most this many objects (0: any; curriculum) */
    bool easy;               /* world: only plain backgrounds with medium/large objects (curriculum) */
    char scene[256];         /* world: which scenes the generator draws (world_opts_parse; "" = all) */
    int per_image;           /* world: training examples drawn from each scene (0 or 1: one; K: examples
                                K*s .. K*s+K-1 share scene s and its image, each with its own task pick;
                                a frozen tower then runs once per scene and replica) */
    float aux_weight;        /* world: weight of the auxiliary patch-classification loss (0: off). A new
                                model gets the head when > 0; --init / --resume keep the file's head */
    float mask_weight;       /* world: weight of the auxiliary mask loss (which pixels of each patch are an
                                object's; 0: off). Adds the mask head to a model that lacks it */
    bool aux_objects;        /* world: the auxiliary loss only on the patches of objects (background
                                patches left out, so each object patch weighs more) */
    int aux_labels;          /* world: classes of the auxiliary head: TL_AUX_JOINT (colour x shape, the
                                default of a new model), TL_AUX_SHAPE (shape only) or TL_AUX_SPLIT
                                (shape and colour as two softmaxes, TR_AUX_SPLIT_CLASSES); 0 = that
                                default, or the head of the --init / --resume file. --init with
                                other labels than the file's head starts a new head at zero */
    int batch;               /* examples per optimizer step (gradient accumulation) */
    int64_t steps;           /* total optimizer steps (the schedule's length) */
    tr_opt opt;              /* lr, warm-up, cosine end, AdamW, clipping (opt.total = steps) */
    int train_mask;          /* TR_GROUP_* */
    int lora_rank;           /* LoRA modes (TR_GROUP_LORA): adapters' rank, 0 = TR_LORA_DEFAULT_RANK; other
                                modes: must be 0. A model without adapters gets fresh ones (tr_lora_attach,
                                from seed); a model with adapters keeps them (a rank given must be theirs).
                                A non-LoRA mode merges a model's adapters first (tr_lora_merge). cfg's
                                lora_rank / lora_alpha are not used */
    float lora_alpha;        /* LoRA modes: scale = alpha / rank; 0 = TR_LORA_DEFAULT_ALPHA (16; a given one
                                must match the adapters' alpha); other modes: must be 0 */
    int n_threads;
    const char *out_path;    /* final model (parameters only); NULL: none */
    const char *ckpt_path;   /* checkpoint with optimizer state; NULL: none */
    int ckpt_every;          /* steps between checkpoints (0: only at the end) */
    int eval_every;          /* steps between held-out evaluations (0: never) */
    int eval_n;              /* held-out examples per evaluation */
    const char *resume_path; /* continue this checkpoint (its stored options win) */
    const char *init_path;   /* start from these weights and vocabulary (fresh optimizer) */
} tl_params;

enum { TL_AUX_DEFAULT = 0, TL_AUX_JOINT = 1, TL_AUX_SHAPE = 2, TL_AUX_SPLIT = 3 };

/* Defaults: the demo model's configuration and recipe (docs/DEMO_MODEL.md). */
tl_params tl_default_params(void);

enum { TL_EV_STEP = 0, TL_EV_EVAL = 1, TL_EV_CKPT = 2, TL_EV_START = 3 };

typedef struct {
    int event;               /* TL_EV_* */
    int64_t step, total;     /* optimizer steps done / scheduled */
    float loss;              /* mean loss of the step's batch */
    float lr;
    double gnorm;            /* before clipping */
    double tok_per_s;        /* sequence rows (text + image) per second since the start */
    double elapsed_s, eta_s;
    float eval_loss;         /* TL_EV_EVAL: teacher-forced loss on held-out examples */
    float eval_tok_acc;      /* TL_EV_EVAL: argmax accuracy on answer tokens, 0..1 */
    float eval_exact;        /* TL_EV_EVAL: fraction of answers entirely right under teacher forcing */
    float aux_loss;          /* TL_EV_STEP: mean auxiliary patch loss of the batch (0 when off; -1 when
                              * the tower is frozen: its heads change no gradient and are not run) */
    float mask_loss;         /* TL_EV_STEP: mean auxiliary mask loss of the batch (the same) */
    int tower_runs;          /* TL_EV_STEP: vision tower forwards of the step's batch (fewer than the batch
                                when examples share a scene (per_image) and the tower is frozen) */
    float eval_image_gain;   /* TL_EV_EVAL: held-out loss with another example's image minus with its own
                                (about 0 while the model ignores the image) */
    float eval_patch_color;  /* TL_EV_EVAL: share of object patches whose colour the auxiliary head
                                names (-1: the model has no head) */
    float eval_patch_shape;  /* TL_EV_EVAL: the same for the shape */
    int64_t n_params;
    int n_vocab;
    const char *path;        /* TL_EV_CKPT: where */
} tl_progress;

/* Return non-zero to stop (the loop saves a checkpoint and returns MG_ERR_CANCELLED). */
typedef int (*tl_progress_fn)(void *user, const tl_progress *p);

/* Runs the whole training described by p. */
mg_status tl_train(const tl_params *p, tl_progress_fn cb, void *user, char *err, size_t err_len);

/* The demo vocabulary: <unk>, <s>, </s>, 256 byte pieces, single characters, and every prefix of
 * the word/tag units of the world's texts (and of extra_texts, may be NULL) so SentencePiece BPE
 * reaches each unit as one piece. Deterministic. */
mg_status tl_build_vocab(mg_tokenizer **out, const char *const *extra_texts, int n_extra, char *err,
                         size_t err_len);

/* A user folder's data: DIR/data.jsonl lines {"image": PATH, "instruction": S, "answer": S}
 * (PATH relative to DIR) or `minigpt synth` lines {"image", "examples": [{instruction, answer}]}. */
typedef struct {
    int n;
    char **image;        /* [n] full paths */
    char **instruction;  /* [n] */
    char **answer;       /* [n] */
} tl_folder;

/* Reads and checks DIR/data.jsonl; a malformed line fails with "data.jsonl line N: why". */
mg_status tl_folder_load(tl_folder *out, const char *dir, char *err, size_t err_len);
void tl_folder_free(tl_folder *f);

/* Tokenizes one example in the MiniGPT-v2 template: ids/mask (answer + EOS masked in), img_pos.
 * ids and mask hold max entries; *n_text receives the count. */
mg_status tl_encode(const mg_tokenizer *tok, const char *instruction, const char *answer, int32_t *ids,
                    uint8_t *mask, int max, int *n_text, int *img_pos, char *err, size_t err_len);

/* Writes a parameters-only copy of checkpoint ckpt to out: no "opt.*" (optimizer state), "aux.*"
 * (auxiliary heads) or "lora.*" tensors; LoRA adapters are merged into their weights, X.weight
 * += (train.lora_alpha / r) lora.X.b . lora.X.a (tr_lora_delta), so out is a plain model. */
mg_status tl_export(const char *ckpt, const char *out, char *err, size_t err_len);

#endif
