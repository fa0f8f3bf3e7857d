/*
 * synth.h - synthetic LLaMA models for benchmarks and tests: random weights with the real shapes
 * of the language models inside MiniGPT-4 / MiniGPT-v2, written as a GGUF file that both
 * minigpt and llama.cpp load (llama.cpp tensor names and keys, a placeholder SentencePiece
 * vocabulary). The file is streamed tensor by tensor, so memory stays at one tensor's size.
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
} synth_preset;

/* The preset called name, or NULL. */
const synth_preset *synth_find_preset(const char *name);
/* Preset i (0-based, hidden ones included), or NULL past the end. */
const synth_preset *synth_preset_at(int i);
/* Number of weights (all tensors) of a preset. */
uint64_t synth_n_params(const synth_preset *p);
/* Size in bytes of the tensor data of a preset stored as type (norms stay f32). 0 if the type
 * cannot hold the shapes. */
uint64_t synth_data_bytes(const synth_preset *p, int type);

/* Writes the preset with every matrix of type (f32, f16, bf16, q8_0 or q4_0; norm vectors f32)
 * to path, weights drawn uniformly from a fixed-seed generator (std 0.02, as initialised LLaMA
 * weights). The vocabulary is a placeholder: <unk>, <s>, </s>, the 256 byte pieces, then made-up
 * pieces. On error the partial file is removed and err holds one line. */
mg_status synth_write_gguf(const synth_preset *p, int type, uint64_t seed, const char *path, char *err,
                           size_t err_len);

#endif
