/*
 * convert.h - writing GGUF files: whole-file re-typing (`minigpt quantize`, quantize.c) and
 * conversion of the official checkpoints (HF LLaMA folder, eva_vit_g.pth, the BLIP-2 Q-Former
 * file, MiniGPT-4 / MiniGPT-v2 checkpoints) into one GGUF (`minigpt convert`, convert.c).
 *
 * Both stream: the tensor table is planned first, the header written, then every tensor is
 * produced, converted and written one at a time, so peak memory is about the largest tensor
 * (as fp32) plus its converted copy. The library never prints: progress and report lines go
 * through callbacks the caller supplies. The type rules are in docs/QUANTIZATION.md.
 */
#ifndef MG_CONVERT_H
#define MG_CONVERT_H

#include "gguf.h"

/* Progress: done / total bytes of output tensor data, name = the tensor being written.
 * Return non-zero to cancel (the call then fails with MG_ERR_CANCELLED). */
typedef int (*conv_progress_fn)(void *user, uint64_t done, uint64_t total, const char *name);
/* One line of report text (no newline), e.g. "unused key: t5_proj.weight". */
typedef void (*conv_log_fn)(void *user, const char *line);

/* ==== Type rules (shared by quantize and convert) ==== */

/* llama.cpp's general.file_type value for a target type (0 f32, 1 f16, 2 q4_0, 7 q8_0, 32 bf16),
 * or -1 for a type we do not write. */
int conv_file_type(int type);
/* True for the target types the writers accept: F32, F16, BF16, Q8_0, Q4_0. */
bool conv_target_ok(int type);
/* True for tensors that are never quantized: 1-D tensors, norms, biases, position / class /
 * query embeddings (names ending in "_norm.weight", ".bias", "ln*.weight", containing
 * "position_embd", "class_embd", "query_embd"). */
bool conv_is_protected(const char *name, int n_dims);
/* The type a tensor gets for a target: protected tensors keep src_type when it is a float type
 * (F32 otherwise); output.weight (or token_embd.weight when has_output is false) gets Q8_0 when
 * the target is Q4_0 (llama.cpp uses Q6_K, which we do not have); a quantized target whose block
 * does not divide ne[0] falls back to F16. src_type < 0 means "fresh from a checkpoint":
 * protected tensors are then F32. */
int conv_pick_type(const char *name, int n_dims, const int64_t *ne, int src_type, int target,
                   bool has_output);

/* ==== quantize.c ==== */

typedef struct {
    int type;                       /* target: MG_TYPE_F32/F16/BF16/Q8_0/Q4_0 */
    bool allow_requantize;          /* convert tensors that are already quantized */
    const char *const *keep;        /* fnmatch patterns: tensors copied unchanged */
    int n_keep;
    const char *const *force_pat;   /* fnmatch patterns with a forced type each */
    const int *force_type;
    int n_force;
    conv_progress_fn progress;
    conv_log_fn log;                /* one line per tensor: name, shape, old -> new type */
    void *user;
} conv_quantize_params;

/* Rewrites every tensor of in_path with the target type into out_path; all metadata is copied
 * and general.file_type / general.quantization_version set as llama.cpp does. On failure the
 * partial output is removed. */
mg_status conv_quantize_file(const char *in_path, const char *out_path, const conv_quantize_params *p,
                             char *err, size_t err_len);

/* ==== convert.c ==== */

typedef enum {
    CONV_ARCH_AUTO = 0,
    CONV_ARCH_LLAMA,
    CONV_ARCH_MINIGPT4_VICUNA,
    CONV_ARCH_MINIGPT4_LLAMA2,
    CONV_ARCH_MINIGPTV2
} conv_arch;

/* "llama", "minigpt4-vicuna", ... -> arch; -1 if unknown. */
int conv_arch_from_name(const char *name);
const char *conv_arch_name(conv_arch a);

typedef struct {
    conv_arch arch;        /* CONV_ARCH_AUTO: chosen from what the files contain */
    const char *llm;       /* HF LLaMA folder (config.json, tokenizer, weights) */
    const char *vit;       /* eva_vit_g.pth */
    const char *qformer;   /* blip2_pretrained_flant5xxl.pth */
    const char *ckpt;      /* MiniGPT-4 / MiniGPT-v2 checkpoint */
    const char *name;      /* general.name; NULL: from the LLM folder name */
    int out_type;          /* LLM matrices (default F16) */
    int vision_type;       /* ViT / Q-Former / projection matrices; -1: out_type */
    int image_size;        /* 0: 224 (MiniGPT-4) or 448 (MiniGPT-v2) */
    int vit_heads;         /* 0: width / 88 (EVA ViT-g) */
    int qformer_heads;     /* 0: width / 64 (BERT-base) */
    float lora_alpha;      /* 0: 16 (MiniGPT-v2); the scale is lora_alpha / r */
    conv_progress_fn progress;
    conv_log_fn log;       /* recipe, unexpected / unused keys, notes */
    void *user;
} conv_params;

/* Zeroed params with out_type F16 and vision_type -1. */
conv_params conv_default_params(void);

/* Builds out_path from the files of p. Fails (nothing left at out_path) on a missing required
 * tensor, a shape mismatch, an unreadable file or an inconsistent config. */
mg_status conv_convert(const char *out_path, const conv_params *p, char *err, size_t err_len);

#endif
