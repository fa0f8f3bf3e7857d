/*
 * synth.h - synthetic models for benchmarks and tests: random weights with the real shapes of
 * MiniGPT-4 / MiniGPT-v2, written as a GGUF file. The whole model (SYNTH_FULL) is a MiniGPT file
 * (architecture "minigpt4" / "minigptv2": EVA ViT-g, Q-Former or merge4, mm.proj, the LLM with
 * llama.cpp names and keys, a placeholder SentencePiece vocabulary; names and keys of
 * docs/gguf-keys.md) that mg_model_open loads. SYNTH_LLM_ONLY writes the language model alone as
 * a plain "llama" file that llama.cpp loads too. SYNTH_VISION_STUB writes the vision side with a
 * one-layer stand-in LLM (real width, 260-piece vocabulary): a loadable file for timing the image
 * encoder without writing gigabytes of LLM weights. The file is streamed tensor by tensor, so
 * memory stays at one tensor's size.
 */
#ifndef MG_SYNTH_H
#define MG_SYNTH_H

#include "internal.h"

typedef struct {
    const char *name;   /* "minigpt4-7b", ... */
    const char *about;  /* one line: which model's shapes */
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int n_ff;
    int n_vocab;        /* embedding / output rows (the vocabulary is padded to this many pieces) */
    int n_ctx_train;
    float rms_eps;
    bool hidden;        /* test-only preset, not listed in --help */
    /* Vision side; v_block = 0: none (the preset is a plain LLaMA). */
    const char *arch;   /* "minigpt4" or "minigptv2" */
    int v_image;        /* native image side S (minigpt.vision.image_size) */
    int v_patch;        /* 14 */
    int v_pos_grid;     /* grid of the stored v.position_embd (16 as in the checkpoints; the
                           loader interpolates when S / patch differs) */
    int v_embd, v_block, v_head, v_ff;
    int qf_query, qf_embd, qf_block, qf_head, qf_ff; /* qf_block = 0: merge4 projector */
} synth_preset;

/* What a file holds. */
typedef enum {
    SYNTH_FULL = 0,        /* the whole preset: vision side (when it has one) + LLM */
    SYNTH_LLM_ONLY = 1,    /* the LLM alone, architecture "llama" (llama.cpp loads it) */
    SYNTH_VISION_STUB = 2  /* the vision side + a 1-layer stand-in LLM (needs a vision preset) */
} synth_part;

typedef struct {
    synth_part part;
    int type;          /* LLM matrices: f32, f16, bf16, q8_0 or q4_0 */
    int vision_type;   /* ViT / Q-Former / mm.proj matrices (v.patch_embd: f16 when this is
                          quantized, its rows of 3*14*14 fit no block); norms, biases,
                          embeddings f32 */
    int image_size;    /* minigpt.vision.image_size; 0 = the preset's */
    uint64_t seed;
} synth_opts;

/* Options for the whole preset with every matrix of type. */
synth_opts synth_default_opts(int type, uint64_t seed);

/* The preset called name, or NULL. */
const synth_preset *synth_find_preset(const char *name);
/* Preset i (0-based, hidden ones included), or NULL past the end. */
const synth_preset *synth_preset_at(int i);
/* 1 when the preset has a vision side. */
bool synth_has_vision(const synth_preset *p);
/* Number of weights (all tensors) of the file o describes (o NULL: the whole preset). */
uint64_t synth_n_params(const synth_preset *p, const synth_opts *o);
/* Size in bytes of the tensor data of that file; 0 if a type cannot hold the shapes. */
uint64_t synth_data_bytes(const synth_preset *p, const synth_opts *o);

/* Writes the file o describes to path. Matrices and embeddings are drawn uniformly from a
 * fixed-seed generator (std 0.02, as initialised LLaMA weights), LayerNorm / RMSNorm weights are
 * 1 and biases 0. The vocabulary is a placeholder: <unk>, <s>, </s>, the 256 byte pieces, then
 * made-up pieces. On error the partial file is removed and err holds one line. */
mg_status synth_write_gguf_opts(const synth_preset *p, const synth_opts *o, const char *path, char *err,
                                size_t err_len);
/* synth_write_gguf_opts with synth_default_opts(type, seed). */
mg_status synth_write_gguf(const synth_preset *p, int type, uint64_t seed, const char *path, char *err,
                           size_t err_len);

#endif
