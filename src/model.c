/*
 * model.c - mg_model_open/close and the model getters. Opens the GGUF file, reads
 * general.architecture, loads the tokenizer from the file's tokenizer.ggml.* keys, binds the
 * language model and builds the thread pool. The MiniGPT architectures ("minigpt4",
 * "minigptv2") also bind the vision tower (vision_load) and read the minigpt.* variant keys
 * (docs/gguf-keys.md); their language model and tokenizer come from the same file or, with
 * mg_model_open_llm, from a separate llama.cpp GGUF.
 */
#include "model.h"

#include "vision.h"

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

/* Binds the vision tower of a MiniGPT file and checks that it feeds this language model. */
static mg_status load_vision(mg_model *m, char *err, size_t err_len) {
    mg_vision *v = NULL;
    mg_status st = vision_load(&v, m->gf, err, err_len);
    if (st != MG_OK) return st;
    m->vision = v;
    if (v->n_llm != m->lm.hp.n_embd)
        return mg_err(err, err_len, MG_ERR_FORMAT,
                      "the vision projection outputs %d values per token but the language model's width is %d",
                      v->n_llm, m->lm.hp.n_embd);
    return MG_OK;
}

/* Reads minigpt.chat_template (default from the architecture and projector) and the optional
 * minigpt.generation.* defaults (else the demo's, mg_chat_generation_defaults). */
static mg_status load_variant(mg_model *m, char *err, size_t err_len) {
    const mg_vision *v = m->vision;
    if (m->arch == MG_ARCH_MINIGPTV2) m->tmpl = MG_CHAT_MINIGPT_V2;
    else if (m->arch == MG_ARCH_MINIGPT4)
        m->tmpl = v && v->proj_type == VISION_PROJ_QFORMER ? MG_CHAT_MINIGPT4_VICUNA : MG_CHAT_MINIGPT4_LLAMA2;
    else m->tmpl = MG_CHAT_MINIGPT_V2;
    const gguf_kv *kv = gguf_find_kv(m->gf, "minigpt.chat_template");
    if (kv) {
        gguf_str t;
        mg_status st = gguf_get_str(m->gf, "minigpt.chat_template", &t, err, err_len);
        if (st != MG_OK) return st;
        if (gguf_str_eq(t, "minigpt4-vicuna")) m->tmpl = MG_CHAT_MINIGPT4_VICUNA;
        else if (gguf_str_eq(t, "minigpt4-llama2")) m->tmpl = MG_CHAT_MINIGPT4_LLAMA2;
        else if (gguf_str_eq(t, "minigptv2")) m->tmpl = MG_CHAT_MINIGPT_V2;
        else
            return mg_err(err, err_len, MG_ERR_FORMAT, "unknown minigpt.chat_template '%.*s'",
                          (int)MG_MIN(t.len, 64), t.ptr);
    }
    mg_generate_params gp = mg_generate_default_params();
    m->gen_sp = mg_sampler_default_params();
    mg_chat_generation_defaults((mg_chat_template)m->tmpl, &m->gen_sp, &gp);
    m->gen_max_tokens = gp.n_predict;
    static const struct {
        const char *key;
        float lo, hi;
    } keys[3] = {{"minigpt.generation.temperature", 0.0f, 100.0f},
                 {"minigpt.generation.top_p", 0.0f, 1.0f},
                 {"minigpt.generation.repeat_penalty", 0.01f, 100.0f}};
    float *dst[3] = {&m->gen_sp.temperature, &m->gen_sp.top_p, &m->gen_sp.repeat_penalty};
    for (int i = 0; i < 3; i++) {
        if (!gguf_find_kv(m->gf, keys[i].key)) continue;
        float x;
        mg_status st = gguf_get_f32(m->gf, keys[i].key, &x, err, err_len);
        if (st != MG_OK) return st;
        if (!(x >= keys[i].lo && x <= keys[i].hi))
            return mg_err(err, err_len, MG_ERR_FORMAT, "%s = %g is out of range", keys[i].key, (double)x);
        *dst[i] = x;
    }
    uint32_t u;
    mg_status st;
    if ((st = gguf_get_u32_def(m->gf, "minigpt.generation.top_k", (uint32_t)m->gen_sp.top_k, &u, err, err_len)))
        return st;
    m->gen_sp.top_k = (int)MG_MIN(u, 1u << 24);
    if ((st = gguf_get_u32_def(m->gf, "minigpt.generation.max_new_tokens", (uint32_t)m->gen_max_tokens, &u, err,
                               err_len)))
        return st;
    if (u < 1 || u > (1u << 24))
        return mg_err(err, err_len, MG_ERR_FORMAT, "minigpt.generation.max_new_tokens = %u is out of range", u);
    m->gen_max_tokens = (int)u;
    return MG_OK;
}

static void describe(mg_model *m) {
    const llama_hparams *hp = &m->lm.hp;
    const char *tn = mg_type_name(m->lm.main_type);
    const char *an = m->arch == MG_ARCH_LLAMA ? "llama" : m->arch == MG_ARCH_MINIGPT4 ? "minigpt4" : "minigptv2";
    const mg_vision *v = m->vision;
    if (v)
        snprintf(m->desc, sizeof m->desc, "%s (%s), vision %d blocks w=%d at %d px -> %d tokens; llm %d layers, d=%d, %s",
                 an, mg_model_variant(m), v->n_block, v->n_embd, v->image_size, v->n_out, hp->n_layer, hp->n_embd,
                 tn ? tn : "?");
    else
        snprintf(m->desc, sizeof m->desc, "%s %d layers, d=%d, %s", an, hp->n_layer, hp->n_embd, tn ? tn : "?");
}

/* Opens one GGUF file, mapped or read whole (then *buf owns the bytes). */
static mg_status open_file(const char *path, bool use_mmap, gguf_file **gf, void **buf, char *err, size_t err_len) {
    if (use_mmap) return gguf_open(gf, path, err, err_len);
    size_t size = 0;
    mg_status st = read_whole_file(path, buf, &size, err, err_len);
    if (st == MG_OK) st = gguf_open_buffer(gf, *buf, size, err, err_len);
    return st;
}

/* Opens path, dispatches on general.architecture, binds the weights and loads the tokenizer;
 * on failure everything acquired so far is released and err holds one line. */
mg_status mg_model_open(mg_model **out, const char *path, const mg_model_params *params, char *err,
                        size_t err_len) {
    return mg_model_open_llm(out, path, NULL, params, err, err_len);
}

/* As mg_model_open; with llm_path the language model and tokenizer come from that llama.cpp
 * GGUF (general.architecture "llama") and path only supplies the vision side. */
mg_status mg_model_open_llm(mg_model **out, const char *path, const char *llm_path, const mg_model_params *params,
                            char *err, size_t err_len) {
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

    mg_status st = open_file(path, p.use_mmap != 0, &m->gf, &m->file_buf, err, err_len);
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
    /* A `minigpt train` checkpoint with LoRA adapters: its attn_q / attn_v alone are not the model */
    for (int64_t i = 0; i < gguf_n_tensors(m->gf); i++) {
        const gguf_tensor *t = gguf_tensor_at(m->gf, i);
        if (t->name.len > 5 && memcmp(t->name.ptr, "lora.", 5) == 0) {
            st = mg_err(err, err_len, MG_ERR_UNSUPPORTED,
                        "%s holds unmerged LoRA adapters (a `minigpt train` checkpoint): run the model "
                        "`minigpt train -o` exports, which has them merged (docs/TRAINING.md, LoRA)", path);
            goto fail;
        }
    }
    const gguf_file *lf = m->gf;
    if (llm_path) {
        if (m->arch == MG_ARCH_LLAMA) {
            st = mg_err(err, err_len, MG_ERR_INVALID_ARG, "%s is a plain llama model: a separate LLM needs a MiniGPT "
                        "vision file", path);
            goto fail;
        }
        if ((st = open_file(llm_path, p.use_mmap != 0, &m->gf_llm, &m->llm_buf, err, err_len)) != MG_OK) goto fail;
        if ((st = gguf_get_str(m->gf_llm, "general.architecture", &arch, err, err_len)) != MG_OK) goto fail;
        if (!gguf_str_eq(arch, "llama")) {
            st = mg_err(err, err_len, MG_ERR_UNSUPPORTED, "%s: architecture '%.*s', expected a llama LLM", llm_path,
                        (int)MG_MIN(arch.len, 64), arch.ptr);
            goto fail;
        }
        lf = m->gf_llm;
    } else if (m->arch != MG_ARCH_LLAMA && !gguf_find_tensor(m->gf, "token_embd.weight")) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "%s holds no language model (no token_embd.weight): pass the LLM "
                    "GGUF separately (--llm)", path);
        goto fail;
    }

    /* The MiniGPT files keep the language model's keys under "llama." */
    if ((st = llama_load(&m->lm, lf, "llama", err, err_len)) != MG_OK) goto fail;
    if ((st = tok_load_gguf(&m->tok, lf, err, err_len)) != MG_OK) goto fail;
    if (mg_tokenizer_n_vocab(m->tok) > m->lm.hp.n_vocab) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "the tokenizer has %d pieces but the model only %d embedding rows",
                    mg_tokenizer_n_vocab(m->tok), m->lm.hp.n_vocab);
        goto fail;
    }
    if (m->arch != MG_ARCH_LLAMA && (st = load_vision(m, err, err_len)) != MG_OK) goto fail;
    if ((st = load_variant(m, err, err_len)) != MG_OK) goto fail;

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
    vision_free(m->vision);
    gguf_close(m->gf_llm);
    mg_free_aligned(m->llm_buf);
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

/* 1 for the MiniGPT architectures (a vision tower is loaded). */
int mg_model_has_vision(const mg_model *m) { return m && m->vision ? 1 : 0; }

/* The conversation template of the model's variant (MiniGPT-v2's for plain LLaMA files). */
mg_chat_template mg_model_chat_template(const mg_model *m) {
    return m ? (mg_chat_template)m->tmpl : MG_CHAT_MINIGPT_V2;
}

/* "minigpt4-vicuna", "minigpt4-llama2", "minigptv2" or "llama". Static. */
const char *mg_model_variant(const mg_model *m) {
    if (!m || m->arch == MG_ARCH_LLAMA) return "llama";
    return m->tmpl == MG_CHAT_MINIGPT4_VICUNA ? "minigpt4-vicuna"
           : m->tmpl == MG_CHAT_MINIGPT4_LLAMA2 ? "minigpt4-llama2" : "minigptv2";
}

/* Side S of the square input image, 0 without vision. */
int mg_model_image_size(const mg_model *m) {
    const mg_vision *v = m ? m->vision : NULL;
    return v ? v->image_size : 0;
}

/* Embedding rows one image adds to the prompt, 0 without vision. */
int mg_model_n_image_tokens(const mg_model *m) {
    const mg_vision *v = m ? m->vision : NULL;
    return v ? v->n_out : 0;
}

/* The variant's default sampling and generation settings (file keys, else the demo's). */
void mg_model_generation_defaults(const mg_model *m, mg_sampler_params *sp, mg_generate_params *gp) {
    mg_chat_template t = mg_model_chat_template(m);
    mg_chat_generation_defaults(t, sp, gp);
    if (!m) return;
    if (sp) {
        sp->temperature = m->gen_sp.temperature;
        sp->top_p = m->gen_sp.top_p;
        sp->top_k = m->gen_sp.top_k;
        sp->repeat_penalty = m->gen_sp.repeat_penalty;
    }
    if (gp) gp->n_predict = m->gen_max_tokens;
}
