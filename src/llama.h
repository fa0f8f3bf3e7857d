/*
 * llama.h - the LLaMA decoder's weights and hyperparameters, bound in place to the tensors of a
 * GGUF file (llama.cpp tensor names and key names). The loader validates every hyperparameter,
 * tensor shape and type before anything else uses them; the forward pass lives in session.c.
 * Norm vectors are copied to owned fp32 arrays; matrices stay in the mapping in their own type.
 */
#ifndef MG_LLAMA_H
#define MG_LLAMA_H

#include "gguf.h"

typedef struct {
    int n_vocab;     /* rows of token_embd / output (may exceed the tokenizer's piece count) */
    int n_embd;      /* hidden size d */
    int n_layer;
    int n_ff;        /* SwiGLU inner size */
    int n_head;
    int n_head_kv;   /* < n_head for grouped-query attention */
    int head_dim;    /* n_embd / n_head */
    int n_ctx_train; /* llama.context_length */
    float rms_eps;
    float rope_theta;
} llama_hparams;

/* A weight matrix used in place: W[n_rows, n_cols] of type `type`, row r = output feature r. */
typedef struct {
    const void *data; /* [n_rows, n_cols] in `type` (GGUF ne = {n_cols, n_rows}) */
    int type;         /* mg_type */
    int64_t n_cols;   /* K: input features (GGUF ne[0]) */
    int64_t n_rows;   /* N: output features (GGUF ne[1]) */
} llama_mat;

typedef struct {
    float *attn_norm;     /* [n_embd], owned */
    llama_mat wq;         /* [n_head*head_dim, n_embd], rows permuted as llama.cpp's converter does */
    llama_mat wk;         /* [n_head_kv*head_dim, n_embd], permuted likewise */
    llama_mat wv;         /* [n_head_kv*head_dim, n_embd] */
    llama_mat wo;         /* [n_embd, n_head*head_dim] */
    float *ffn_norm;      /* [n_embd], owned */
    llama_mat w_gate;     /* [n_ff, n_embd] */
    llama_mat w_up;       /* [n_ff, n_embd] */
    llama_mat w_down;     /* [n_embd, n_ff] */
} llama_layer;

typedef struct {
    llama_hparams hp;
    llama_mat tok_embd;   /* [n_vocab, n_embd] */
    float *output_norm;   /* [n_embd], owned */
    llama_mat output;     /* [n_vocab, n_embd]; equals tok_embd when the file has no output.weight */
    bool output_tied;
    llama_layer *layers;  /* [n_layer], owned */
    int main_type;        /* type of most matrices (for the description) */
} llama_model;

/* Binds the LLaMA weights of f into lm. Hyperparameters are read under "<prefix>." (e.g.
 * "llama"). On error returns a status with a one-line message in err and leaves lm empty
 * (safe to pass to llama_free). Pointers into f stay valid while f is open. */
mg_status llama_load(llama_model *lm, const gguf_file *f, const char *prefix, char *err, size_t err_len);
/* Frees what llama_load allocated (not the mapping). Accepts a zeroed or NULL lm. */
void llama_free(llama_model *lm);

#endif
