/*
 * model.h - the inside of an mg_model, shared by model.c (open/close) and session.c (forward).
 * A model owns its GGUF mapping, tokenizer, thread pool and weights, and is immutable after open
 * except for pool_lock, which serialises sessions of different threads on the one pool.
 */
#ifndef MG_MODEL_H
#define MG_MODEL_H

#include "gguf.h"
#include "kernels.h"
#include "llama.h"
#include "threadpool.h"

#include <pthread.h>

typedef enum {
    MG_ARCH_LLAMA = 0,
    MG_ARCH_MINIGPT4,
    MG_ARCH_MINIGPTV2
} mg_arch;

struct mg_model {
    gguf_file *gf;
    void *file_buf;        /* whole file in memory when use_mmap = 0, else NULL */
    mg_tokenizer *tok;
    mg_pool *pool;
    pthread_mutex_t pool_lock; /* held by a session for the duration of one eval */
    mg_kernel_opts kopts;
    mg_arch arch;
    llama_model lm;        /* the language model */
    void *vision;          /* mg_vision * (vision.h): tower and projector (MiniGPT archs); NULL for LLaMA */
    gguf_file *gf_llm;     /* the separate LLM file of mg_model_open_llm, or NULL (then gf holds it) */
    void *llm_buf;         /* its whole-file buffer when use_mmap = 0 */
    int tmpl;              /* mg_chat_template of the MiniGPT variant (minigpt.chat_template) */
    mg_sampler_params gen_sp; /* default sampling (minigpt.generation.*, else the demo's) */
    int gen_max_tokens;    /* default max new tokens */
    char desc[160];
};

/* The model a session runs. */
const mg_model *session_model(const mg_session *s);
/* Records a printf-style message as the session's last error and returns st. */
mg_status session_set_error(mg_session *s, mg_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The vocabulary size a sampler was created for. */
int sampler_n_vocab(const mg_sampler *smp);
/* The distribution mg_sampler_sample draws from, after every processing step: probs [n_vocab]
 * (zero for filtered ids; one-hot for greedy). For tests. */
void sampler_probs(mg_sampler *smp, const float *logits, float *probs);

#endif
