/*
 * model.c - mg_model_open/close and the model getters. Opens the GGUF file, reads
 * general.architecture, loads the tokenizer from the file's tokenizer.ggml.* keys, binds the
 * language model and builds the thread pool. The MiniGPT architectures share the LLaMA loader;
 * their vision tower hooks in at load_vision() once it exists.
 */
#include "model.h"

#include "quant.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MG_MAX_THREADS 256

/* Defaults: one thread per online core (at most 8), SIMD kernels unless MINIGPT_FORCE_REF=1, mmap. */
mg_model_params mg_model_default_params(void) {
    mg_model_params p;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    p.n_threads = (int)(n < 1 ? 1 : n > 8 ? 8 : n);
    const char *e = getenv("MINIGPT_FORCE_REF");
    p.use_ref = e && *e && strcmp(e, "0") != 0;
    p.use_mmap = 1;
    return p;
}

/* Reads a whole file into a 64-byte aligned buffer (the use_mmap = 0 path). */
static mg_status read_whole_file(const char *path, void **buf, size_t *size, char *err, size_t err_len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return mg_err(err, err_len, MG_ERR_IO, "cannot open %s", path);
    mg_status st = MG_OK;
    long n = -1;
    if (fseek(fp, 0, SEEK_END) == 0) n = ftell(fp);
    if (n <= 0 || fseek(fp, 0, SEEK_SET) != 0) {
        st = mg_err(err, err_len, MG_ERR_IO, "cannot read %s (empty or not seekable)", path);
    } else if (!(*buf = mg_malloc_aligned((size_t)n))) {
        st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory reading %s (%ld bytes)", path, n);
    } else if (fread(*buf, 1, (size_t)n, fp) != (size_t)n) {
        mg_free_aligned(*buf);
        *buf = NULL;
        st = mg_err(err, err_len, MG_ERR_IO, "short read on %s", path);
    } else {
        *size = (size_t)n;
    }
    fclose(fp);
    return st;
}

/* The vision tower of the MiniGPT architectures is not implemented yet. */
static mg_status load_vision(mg_model *m, char *err, size_t err_len) {
    (void)m;
    return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "the vision tower of %s models is not supported yet",
                  m->arch == MG_ARCH_MINIGPT4 ? "minigpt4" : "minigptv2");
}

static void describe(mg_model *m) {
    const llama_hparams *hp = &m->lm.hp;
    const char *tn = mg_type_name(m->lm.main_type);
    const char *an = m->arch == MG_ARCH_LLAMA ? "llama" : m->arch == MG_ARCH_MINIGPT4 ? "minigpt4" : "minigptv2";
    snprintf(m->desc, sizeof m->desc, "%s %d layers, d=%d, %s", an, hp->n_layer, hp->n_embd, tn ? tn : "?");
}

/* Opens path, dispatches on general.architecture, binds the weights and loads the tokenizer;
 * on failure everything acquired so far is released and err holds one line. */
mg_status mg_model_open(mg_model **out, const char *path, const mg_model_params *params, char *err,
                        size_t err_len) {
    if (err && err_len) err[0] = 0;
    if (!out || !path) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "mg_model_open: NULL argument");
    *out = NULL;
    mg_model_params p = params ? *params : mg_model_default_params();
    if (p.n_threads < 1 || p.n_threads > MG_MAX_THREADS)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "n_threads %d is out of range [1, %d]", p.n_threads,
                      MG_MAX_THREADS);
    const char *e = getenv("MINIGPT_FORCE_REF");
    if (e && *e && strcmp(e, "0") != 0) p.use_ref = 1;

    mg_model *m = calloc(1, sizeof *m);
    if (!m) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    if (pthread_mutex_init(&m->pool_lock, NULL) != 0) {
        free(m);
        return mg_err(err, err_len, MG_ERR_NOMEM, "cannot create a mutex");
    }
    m->kopts.use_ref = p.use_ref != 0;

    mg_status st;
    if (p.use_mmap) {
        st = gguf_open(&m->gf, path, err, err_len);
    } else {
        size_t size = 0;
        st = read_whole_file(path, &m->file_buf, &size, err, err_len);
        if (st == MG_OK) st = gguf_open_buffer(&m->gf, m->file_buf, size, err, err_len);
    }
    if (st != MG_OK) goto fail;

    gguf_str arch;
    if ((st = gguf_get_str(m->gf, "general.architecture", &arch, err, err_len)) != MG_OK) goto fail;
    if (gguf_str_eq(arch, "llama")) {
        m->arch = MG_ARCH_LLAMA;
    } else if (gguf_str_eq(arch, "minigpt4")) {
        m->arch = MG_ARCH_MINIGPT4;
    } else if (gguf_str_eq(arch, "minigptv2")) {
        m->arch = MG_ARCH_MINIGPTV2;
    } else {
        st = mg_err(err, err_len, MG_ERR_UNSUPPORTED, "unsupported architecture '%.*s'",
                    (int)MG_MIN(arch.len, 64), arch.ptr);
        goto fail;
    }

    /* The MiniGPT files keep the language model's keys under "llama." */
    if ((st = llama_load(&m->lm, m->gf, "llama", err, err_len)) != MG_OK) goto fail;
    if ((st = tok_load_gguf(&m->tok, m->gf, err, err_len)) != MG_OK) goto fail;
    if (mg_tokenizer_n_vocab(m->tok) > m->lm.hp.n_vocab) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "the tokenizer has %d pieces but the model only %d embedding rows",
                    mg_tokenizer_n_vocab(m->tok), m->lm.hp.n_vocab);
        goto fail;
    }
    if (m->arch != MG_ARCH_LLAMA && (st = load_vision(m, err, err_len)) != MG_OK) goto fail;

    mg_kernels_init();
    if ((st = mg_pool_create(&m->pool, p.n_threads)) != MG_OK) {
        mg_err(err, err_len, st, "cannot start %d worker threads", p.n_threads);
        goto fail;
    }
    describe(m);
    *out = m;
    return MG_OK;
fail:
    mg_model_close(m);
    return st;
}

/* Releases the pool, tokenizer, weights and mapping; accepts NULL. Sessions must be freed first. */
void mg_model_close(mg_model *m) {
    if (!m) return;
    mg_pool_free(m->pool);
    mg_tokenizer_free(m->tok);
    llama_free(&m->lm);
    gguf_close(m->gf);
    mg_free_aligned(m->file_buf);
    pthread_mutex_destroy(&m->pool_lock);
    free(m);
}

/* Getters: NULL-safe, constant for the model's lifetime. */
const mg_tokenizer *mg_model_tokenizer(const mg_model *m) { return m ? m->tok : NULL; }
int mg_model_n_vocab(const mg_model *m) { return m ? m->lm.hp.n_vocab : 0; }
int mg_model_n_embd(const mg_model *m) { return m ? m->lm.hp.n_embd : 0; }
int mg_model_n_layer(const mg_model *m) { return m ? m->lm.hp.n_layer : 0; }
int mg_model_n_ctx_train(const mg_model *m) { return m ? m->lm.hp.n_ctx_train : 0; }
const char *mg_model_desc(const mg_model *m) { return m ? m->desc : ""; }
