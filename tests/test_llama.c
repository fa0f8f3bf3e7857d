/*
 * test_llama.c - the LLaMA decoder, sessions, generation and `minigpt generate` against an
 * independent PyTorch reference (tests/ref/llama_ref.py builds random models, writes them as
 * llama.cpp's converter would and saves logits and greedy tokens). Error = max|a-b| / max|b|.
 */
#include "test.h"

#include "gguf.h"
#include "minigpt.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ==== Reference data ==== */

static char *dpath(char *buf, size_t n, const char *cfg, const char *type, const char *suffix) {
    if (type)
        snprintf(buf, n, "%s/llama_%s_%s%s", test_data_dir(), cfg, type, suffix);
    else
        snprintf(buf, n, "%s/llama_%s%s", test_data_dir(), cfg, suffix);
    return buf;
}

/* Runs llama_ref.py for cfg once per process (or, for "wide", when its output is missing or
 * older than the script). */
static bool ensure_ref(const char *cfg) {
    static bool done_tiny, done_wide, ok_tiny, ok_wide;
    bool *done = strcmp(cfg, "tiny") == 0 ? &done_tiny : &done_wide;
    bool *ok = strcmp(cfg, "tiny") == 0 ? &ok_tiny : &ok_wide;
    if (*done) return *ok;
    *done = true;
    char p[1024];
    const char *typ = strcmp(cfg, "tiny") == 0 ? "q4_0" : "f32";
    struct stat so, ss;
    if (strcmp(cfg, "wide") == 0 && stat(dpath(p, sizeof p, cfg, typ, "_logits.npy"), &so) == 0 &&
        stat("tests/ref/llama_ref.py", &ss) == 0 && so.st_mtime >= ss.st_mtime) {
        *ok = true;
        return true;
    }
    *ok = test_run("%s tests/ref/llama_ref.py %s %s", test_python(), cfg, test_data_dir()) == 0;
    CHECK_MSG(*ok, "llama_ref.py %s failed", cfg);
    return *ok;
}

typedef struct {
    float *prompt, *tokens, *logits, *embd;
    int n_prompt, n_tokens, n_vocab, n_embd;
} ref_data;

static void ref_free(ref_data *r) {
    free(r->prompt);
    free(r->tokens);
    free(r->logits);
    free(r->embd);
    memset(r, 0, sizeof *r);
}

static bool ref_load(ref_data *r, const char *cfg, const char *type) {
    char p[1024];
    int64_t sh[4];
    int nd;
    memset(r, 0, sizeof *r);
    r->prompt = test_read_npy_f32(dpath(p, sizeof p, cfg, NULL, "_prompt.npy"), sh, &nd);
    if (r->prompt) r->n_prompt = (int)sh[0];
    r->tokens = test_read_npy_f32(dpath(p, sizeof p, cfg, type, "_tokens.npy"), sh, &nd);
    if (r->tokens) r->n_tokens = (int)sh[0];
    r->logits = test_read_npy_f32(dpath(p, sizeof p, cfg, type, "_logits.npy"), sh, &nd);
    if (r->logits) {
        r->n_vocab = (int)sh[1];
        CHECK_EQ_INT(sh[0], r->n_tokens);
    }
    r->embd = test_read_npy_f32(dpath(p, sizeof p, cfg, type, "_embd.npy"), sh, &nd);
    if (r->embd) r->n_embd = (int)sh[1];
    bool ok = r->prompt && r->tokens && r->logits && r->embd;
    CHECK_MSG(ok, "cannot read the reference files of %s/%s", cfg, type);
    if (!ok) ref_free(r);
    return ok;
}

static void ids_of(const float *f, int n, int32_t *out) {
    for (int i = 0; i < n; i++) out[i] = (int32_t)f[i];
}

static double rel_err(const float *a, const float *b, int n) {
    double md = 0, mb = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) md = d; /* NaN propagates */
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    return mb > 0 ? md / mb : md;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static mg_model *open_model(const char *path) {
    char err[256];
    mg_model *m = NULL;
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = 2;
    mg_status st = mg_model_open(&m, path, &mp, err, sizeof err);
    CHECK_MSG(st == MG_OK, "open %s: %s", path, err);
    return st == MG_OK ? m : NULL;
}

static mg_session *new_session(const mg_model *m, int n_ctx, int n_batch) {
    char err[256];
    mg_session *s = NULL;
    mg_session_params sp = mg_session_default_params();
    sp.n_ctx = n_ctx;
    sp.n_batch = n_batch;
    mg_status st = mg_session_create(&s, m, &sp, err, sizeof err);
    CHECK_MSG(st == MG_OK, "session: %s", err);
    return s;
}

/* Evaluates the prompt in one call, then feeds the reference tokens one at a time, comparing the
 * logits at every position with the reference. Returns the largest error seen. */
static double teacher_forced_err(mg_model *m, const ref_data *r, int n_batch) {
    mg_session *s = new_session(m, 0, n_batch);
    if (!s) return INFINITY;
    int32_t *ids = malloc((size_t)r->n_tokens * sizeof *ids);
    ids_of(r->tokens, r->n_tokens, ids);
    double worst = 0;
    mg_status st = mg_session_eval_tokens(s, ids, r->n_prompt);
    CHECK_MSG(st == MG_OK, "eval prompt: %s", mg_session_errmsg(s));
    for (int pos = r->n_prompt - 1; st == MG_OK && pos < r->n_tokens; pos++) {
        const float *lg = mg_session_logits(s);
        CHECK(lg != NULL);
        if (!lg) break;
        double e = rel_err(lg, r->logits + (size_t)pos * r->n_vocab, r->n_vocab);
        if (!(e <= worst)) worst = e;
        if (pos + 1 < r->n_tokens) st = mg_session_eval_tokens(s, &ids[pos + 1], 1);
    }
    CHECK_EQ_INT(mg_session_n_past(s), r->n_tokens);
    free(ids);
    mg_session_free(s);
    return worst;
}

/* Greedy decoding by argmax of the session's logits; returns how many of the reference's
 * continuation tokens were reproduced before the first difference. */
static int greedy_match(mg_model *m, const ref_data *r) {
    mg_session *s = new_session(m, 0, 512);
    if (!s) return -1;
    int32_t *ids = malloc((size_t)r->n_tokens * sizeof *ids);
    ids_of(r->tokens, r->n_tokens, ids);
    int n_ok = 0;
    mg_status st = mg_session_eval_tokens(s, ids, r->n_prompt);
    for (int pos = r->n_prompt; st == MG_OK && pos < r->n_tokens; pos++) {
        int32_t next = argmax(mg_session_logits(s), r->n_vocab);
        if (next != ids[pos]) break;
        n_ok++;
        st = mg_session_eval_tokens(s, &next, 1);
    }
    free(ids);
    mg_session_free(s);
    return n_ok;
}

/* ==== Forward pass vs the reference ==== */

TEST(llama_tiny_f32_logits) {
    if (!ensure_ref("tiny")) return;
    ref_data r;
    char p[1024];
    if (!ref_load(&r, "tiny", "f32")) return;
    mg_model *m = open_model(dpath(p, sizeof p, "tiny", "f32", ".gguf"));
    if (m) {
        CHECK_EQ_INT(mg_model_n_vocab(m), r.n_vocab);
        CHECK(mg_tokenizer_n_vocab(mg_model_tokenizer(m)) < mg_model_n_vocab(m));
        CHECK_EQ_INT(mg_model_n_embd(m), 64);
        CHECK_EQ_INT(mg_model_n_layer(m), 2);
        CHECK_EQ_INT(mg_model_n_ctx_train(m), 256);
        double e = teacher_forced_err(m, &r, 512);
        printf("    tiny f32: max rel logits error %.3g over %d positions\n", e, r.n_tokens - r.n_prompt + 1);
        CHECK_MSG(e <= 1e-4, "f32 logits error %.3g > 1e-4", e);
        int n = greedy_match(m, &r);
        CHECK_MSG(n == r.n_tokens - r.n_prompt, "greedy: %d of %d tokens match", n, r.n_tokens - r.n_prompt);
    }
    mg_model_close(m);
    ref_free(&r);
}

TEST(llama_tiny_chunked_prefill) {
    if (!ensure_ref("tiny")) return;
    ref_data r;
    char p[1024];
    if (!ref_load(&r, "tiny", "f32")) return;
    mg_model *m = open_model(dpath(p, sizeof p, "tiny", "f32", ".gguf"));
    int32_t ids[64];
    int n = r.n_tokens < 64 ? r.n_tokens : 64;
    ids_of(r.tokens, n, ids);
    float *one = malloc((size_t)r.n_vocab * sizeof(float));
    const int batches[] = {1, 3, 5, 512};
    for (size_t b = 0; m && b < sizeof batches / sizeof batches[0]; b++) {
        mg_session *s = new_session(m, 0, batches[b]);
        if (!s) break;
        CHECK(mg_session_eval_tokens(s, ids, n) == MG_OK);
        const float *lg = mg_session_logits(s);
        if (b == 0) {
            memcpy(one, lg, (size_t)r.n_vocab * sizeof(float));
        } else {
            double e = rel_err(lg, one, r.n_vocab);
            CHECK_MSG(e <= 1e-5, "n_batch %d vs token-by-token: %.3g", batches[b], e);
        }
        CHECK(rel_err(lg, r.logits + (size_t)(n - 1) * r.n_vocab, r.n_vocab) <= 1e-4);
        mg_session_free(s);
    }
    /* one call of n tokens with n_batch 1 equals n calls of one token */
    mg_session *s = m ? new_session(m, 0, 512) : NULL;
    for (int i = 0; s && i < n; i++) CHECK(mg_session_eval_tokens(s, &ids[i], 1) == MG_OK);
    if (s) CHECK(rel_err(mg_session_logits(s), one, r.n_vocab) <= 1e-5);
    mg_session_free(s);
    free(one);
    mg_model_close(m);
    ref_free(&r);
}

TEST(llama_tiny_eval_embd) {
    if (!ensure_ref("tiny")) return;
    ref_data r;
    char p[1024];
    if (!ref_load(&r, "tiny", "f32")) return;
    mg_model *m = open_model(dpath(p, sizeof p, "tiny", "f32", ".gguf"));
    mg_session *s1 = m ? new_session(m, 0, 4) : NULL, *s2 = m ? new_session(m, 0, 4) : NULL;
    if (s1 && s2) {
        int32_t ids[64];
        ids_of(r.prompt, r.n_prompt, ids);
        CHECK(mg_session_eval_tokens(s1, ids, r.n_prompt) == MG_OK);
        /* first half as embeddings, the rest as tokens: both paths share the cache */
        int h = r.n_prompt / 2;
        CHECK(mg_session_eval_embd(s2, r.embd, h) == MG_OK);
        CHECK(mg_session_eval_embd(s2, r.embd + (size_t)h * r.n_embd, r.n_prompt - h) == MG_OK);
        double e = rel_err(mg_session_logits(s2), mg_session_logits(s1), r.n_vocab);
        CHECK_MSG(e <= 1e-6, "eval_embd vs eval_tokens: %.3g", e);
        CHECK(rel_err(mg_session_logits(s2), r.logits + (size_t)(r.n_prompt - 1) * r.n_vocab, r.n_vocab) <= 1e-4);
        CHECK(mg_session_eval_embd(s2, NULL, 1) == MG_ERR_INVALID_ARG);
        CHECK(strlen(mg_session_errmsg(s2)) > 0);
    }
    mg_session_free(s1);
    mg_session_free(s2);
    mg_model_close(m);
    ref_free(&r);
}

TEST(llama_tiny_rewind) {
    if (!ensure_ref("tiny")) return;
    ref_data r;
    char p[1024];
    if (!ref_load(&r, "tiny", "f32")) return;
    mg_model *m = open_model(dpath(p, sizeof p, "tiny", "f32", ".gguf"));
    mg_session *s = m ? new_session(m, 0, 512) : NULL;
    if (s) {
        int32_t ids[64], junk[6] = {5, 6, 7, 8, 9, 10};
        ids_of(r.tokens, r.n_prompt + 4, ids);
        CHECK(mg_session_eval_tokens(s, ids, r.n_prompt) == MG_OK);
        CHECK(mg_session_eval_tokens(s, junk, 6) == MG_OK);
        CHECK_EQ_INT(mg_session_n_past(s), r.n_prompt + 6);
        CHECK(mg_session_rewind(s, r.n_prompt + 7) == MG_ERR_INVALID_ARG);
        CHECK(mg_session_rewind(s, -1) == MG_ERR_INVALID_ARG);
        CHECK(mg_session_rewind(s, r.n_prompt) == MG_OK);
        CHECK_EQ_INT(mg_session_n_past(s), r.n_prompt);
        CHECK(mg_session_eval_tokens(s, ids + r.n_prompt, 4) == MG_OK);
        double e = rel_err(mg_session_logits(s), r.logits + (size_t)(r.n_prompt + 3) * r.n_vocab, r.n_vocab);
        CHECK_MSG(e <= 1e-4, "after rewind: %.3g", e);
        CHECK(mg_session_rewind(s, 0) == MG_OK);
        CHECK(mg_session_logits(s) == NULL);
        CHECK(mg_session_eval_tokens(s, ids, r.n_prompt) == MG_OK);
        CHECK(rel_err(mg_session_logits(s), r.logits + (size_t)(r.n_prompt - 1) * r.n_vocab, r.n_vocab) <= 1e-4);
    }
    mg_session_free(s);
    mg_model_close(m);
    ref_free(&r);
}

/* Measured on the tiny model (docs/numerics.md): f16/bf16 5e-7, q8_0 1.6e-2, q4_0 1.9e-2 (the Q8_0
 * quantization of activations dominates: the reference uses the same dequantized weights). */
TEST(llama_tiny_weight_types) {
    if (!ensure_ref("tiny")) return;
    static const struct {
        const char *type;
        double tol;
        bool greedy;
    } cases[] = {{"f16", 1e-4, true}, {"bf16", 1e-4, true}, {"q8_0", 4e-2, false}, {"q4_0", 4e-2, false}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ref_data r;
        char p[1024];
        if (!ref_load(&r, "tiny", cases[i].type)) continue;
        mg_model *m = open_model(dpath(p, sizeof p, "tiny", cases[i].type, ".gguf"));
        if (m) {
            CHECK(strstr(mg_model_desc(m), cases[i].type) != NULL);
            double e = teacher_forced_err(m, &r, 7);
            printf("    tiny %s: max rel logits error %.3g (tolerance %.0e)\n", cases[i].type, e, cases[i].tol);
            CHECK_MSG(e <= cases[i].tol, "%s logits error %.3g > %.0e", cases[i].type, e, cases[i].tol);
            if (cases[i].greedy) {
                int n = greedy_match(m, &r);
                CHECK_MSG(n == r.n_tokens - r.n_prompt, "%s greedy: %d of %d tokens match", cases[i].type, n,
                          r.n_tokens - r.n_prompt);
            }
        }
        mg_model_close(m);
        ref_free(&r);
    }
}

TEST(llama_wide_f32) {
    if (test_quick()) SKIP("real-width model skipped in quick mode");
    if (!ensure_ref("wide")) return;
    ref_data r;
    char p[1024];
    if (!ref_load(&r, "wide", "f32")) return;
    mg_model *m = open_model(dpath(p, sizeof p, "wide", "f32", ".gguf"));
    if (m) {
        CHECK_EQ_INT(mg_model_n_embd(m), 4096);
        double e = teacher_forced_err(m, &r, 512);
        printf("    wide f32 (d=4096, ffn 11008): max rel logits error %.3g\n", e);
        CHECK_MSG(e <= 1e-4, "wide logits error %.3g > 1e-4", e);
        int n = greedy_match(m, &r);
        CHECK_MSG(n == r.n_tokens - r.n_prompt, "greedy: %d of %d tokens match", n, r.n_tokens - r.n_prompt);
    }
    mg_model_close(m);
    ref_free(&r);
}

/* ==== Sessions ==== */

typedef struct {
    mg_model *m;
    const ref_data *r;
    double err;
} thread_job;

static void *thread_main(void *arg) {
    thread_job *j = arg;
    j->err = INFINITY;
    mg_session_params sp = mg_session_default_params();
    mg_session *s = NULL;
    if (mg_session_create(&s, j->m, &sp, NULL, 0) != MG_OK) return NULL;
    int32_t ids[64];
    int n = j->r->n_tokens < 64 ? j->r->n_tokens : 64;
    ids_of(j->r->tokens, n, ids);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        if (mg_session_eval_tokens(s, &ids[i], 1) != MG_OK) {
            worst = INFINITY;
            break;
        }
        double e = rel_err(mg_session_logits(s), j->r->logits + (size_t)i * j->r->n_vocab, j->r->n_vocab);
        if (!(e <= worst)) worst = e;
    }
    j->err = worst;
    mg_session_free(s);
    return NULL;
}

/* One model shared by sessions on several threads at once. */
TEST(llama_threads_share_model) {
    if (!ensure_ref("tiny")) return;
    ref_data r;
    char p[1024];
    if (!ref_load(&r, "tiny", "f32")) return;
    mg_model *m = open_model(dpath(p, sizeof p, "tiny", "f32", ".gguf"));
    if (m) {
        enum { NT = 3 };
        pthread_t th[NT];
        thread_job jobs[NT];
        for (int i = 0; i < NT; i++) {
            jobs[i] = (thread_job){m, &r, INFINITY};
            CHECK(pthread_create(&th[i], NULL, thread_main, &jobs[i]) == 0);
        }
        for (int i = 0; i < NT; i++) {
            pthread_join(th[i], NULL);
            CHECK_MSG(jobs[i].err <= 1e-4, "thread %d: error %.3g", i, jobs[i].err);
        }
    }
    mg_model_close(m);
    ref_free(&r);
}

/* ==== Sessions: argument and context errors ==== */

TEST(llama_session_errors) {
    if (!ensure_ref("tiny")) return;
    char p[1024], err[256];
    mg_model *m = open_model(dpath(p, sizeof p, "tiny", "f32", ".gguf"));
    if (!m) return;
    mg_session *s = NULL;
    mg_session_params sp = mg_session_default_params();
    sp.n_ctx = -3;
    CHECK(mg_session_create(&s, m, &sp, err, sizeof err) == MG_ERR_INVALID_ARG && s == NULL && err[0]);
    sp.n_ctx = 8;
    sp.n_batch = 0;
    CHECK(mg_session_create(&s, m, &sp, err, sizeof err) == MG_ERR_INVALID_ARG);
    s = new_session(m, 8, 3);
    if (s) {
        CHECK_EQ_INT(mg_session_n_ctx(s), 8);
        CHECK(mg_session_logits(s) == NULL);
        int32_t ids[10] = {1, 10, 11, 12, 13, 14, 15, 16, 17, 18};
        CHECK(mg_session_eval_tokens(s, ids, 9) == MG_ERR_CTX_FULL);
        CHECK(strstr(mg_session_errmsg(s), "context") != NULL);
        CHECK_EQ_INT(mg_session_n_past(s), 0);
        int32_t bad[2] = {1, mg_model_n_vocab(m)};
        CHECK(mg_session_eval_tokens(s, bad, 2) == MG_ERR_INVALID_ARG);
        bad[1] = -1;
        CHECK(mg_session_eval_tokens(s, bad, 2) == MG_ERR_INVALID_ARG);
        CHECK(mg_session_eval_tokens(s, ids, 0) == MG_ERR_INVALID_ARG);
        CHECK_EQ_INT(mg_session_n_past(s), 0);
        CHECK(mg_session_eval_tokens(s, ids, 8) == MG_OK);
        CHECK(mg_session_eval_tokens(s, ids, 1) == MG_ERR_CTX_FULL);
        CHECK(mg_session_logits(s) != NULL);
    }
    mg_session_free(s);
    mg_session_free(NULL);
    mg_model_close(m);
    mg_model_close(NULL);
}

/* Copies the tiny model's keys and tensors into a new GGUF, with one change. */
static bool write_variant(const char *src, const char *dst, const char *skip_tensor, const char *key, uint32_t val,
                          const char *reshape_tensor) {
    char err[256];
    gguf_file *f = NULL;
    if (gguf_open(&f, src, err, sizeof err) != MG_OK) return false;
    gguf_writer *w = gguf_writer_create();
    bool ok = w && gguf_writer_copy_kv(w, f) == MG_OK;
    if (ok && key) ok = gguf_writer_set_u32(w, key, val) == MG_OK;
    for (int64_t i = 0; ok && i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        if (skip_tensor && strcmp(name, skip_tensor) == 0) continue;
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        if (reshape_tensor && strcmp(name, reshape_tensor) == 0) {
            ne[0] = t->ne[1]; /* transposed shape, same byte count */
            ne[1] = t->ne[0];
        }
        ok = gguf_writer_add_tensor(w, name, t->type, t->n_dims, ne, t->data) == MG_OK;
    }
    if (ok) ok = gguf_writer_write_file(w, dst, err, sizeof err) == MG_OK;
    gguf_writer_free(w);
    gguf_close(f);
    return ok;
}

TEST(llama_bad_files) {
    if (!ensure_ref("tiny")) return;
    char src[1024], dst[1024], err[256];
    dpath(src, sizeof src, "tiny", "f32", ".gguf");
    mg_model *m = NULL;
    CHECK(mg_model_open(&m, "/nonexistent/model.gguf", NULL, err, sizeof err) == MG_ERR_IO && !m && err[0]);
    CHECK(mg_model_open(&m, dpath(dst, sizeof dst, "tiny", "f32", "_logits.npy"), NULL, err, sizeof err) ==
          MG_ERR_FORMAT);
    CHECK(!m);
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = 0;
    CHECK(mg_model_open(&m, src, &mp, err, sizeof err) == MG_ERR_INVALID_ARG);
    static const struct {
        const char *skip, *key;
        uint32_t val;
        const char *reshape, *expect;
    } v[] = {
        {"blk.1.ffn_up.weight", NULL, 0, NULL, "blk.1.ffn_up.weight"},
        {"output_norm.weight", NULL, 0, NULL, "output_norm"},
        {NULL, "llama.attention.head_count", 3, NULL, "head_count"},
        {NULL, "llama.attention.head_count_kv", 3, NULL, "head_count_kv"},
        {NULL, "llama.feed_forward_length", 96, NULL, "ffn_gate"},
        {NULL, "llama.block_count", 3, NULL, "blk.2"},
        {NULL, "llama.feed_forward_length", 0, NULL, "feed_forward_length"},
        {NULL, "llama.rope.dimension_count", 8, NULL, "rope"},
        {NULL, NULL, 0, "blk.0.attn_k.weight", "blk.0.attn_k.weight"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        snprintf(dst, sizeof dst, "%s/llama_bad_%zu.gguf", test_data_dir(), i);
        bool w = write_variant(src, dst, v[i].skip, v[i].key, v[i].val, v[i].reshape);
        CHECK_MSG(w, "cannot write variant %zu", i);
        if (!w) continue;
        err[0] = 0;
        mg_status st = mg_model_open(&m, dst, NULL, err, sizeof err);
        CHECK_MSG(st == MG_ERR_FORMAT || st == MG_ERR_UNSUPPORTED, "variant %zu: status %d", i, (int)st);
        CHECK_MSG(strstr(err, v[i].expect) != NULL, "variant %zu: message '%s' lacks '%s'", i, err, v[i].expect);
        CHECK(m == NULL);
        mg_model_close(m);
        m = NULL;
    }
    /* a file without output.weight uses the tied embedding as head */
    snprintf(dst, sizeof dst, "%s/llama_tied.gguf", test_data_dir());
    if (write_variant(src, dst, "output.weight", NULL, 0, NULL)) {
        m = open_model(dst);
        mg_session *s = m ? new_session(m, 16, 16) : NULL;
        int32_t id = 1;
        if (s) CHECK(mg_session_eval_tokens(s, &id, 1) == MG_OK && mg_session_logits(s) != NULL);
        mg_session_free(s);
        mg_model_close(m);
    }
}

/* ==== Generation ==== */

typedef struct {
    char text[4096];
    size_t len;
    int32_t ids[256];
    int n_ids;
    int stop_after;
} collect;

static int collect_cb(void *user, int32_t id, const char *piece, const float *logits, int n_vocab) {
    collect *c = user;
    size_t n = strlen(piece);
    if (c->len + n < sizeof c->text) {
        memcpy(c->text + c->len, piece, n + 1);
        c->len += n;
    }
    if (id >= 0 && c->n_ids < 256) c->ids[c->n_ids++] = id;
    (void)logits;
    (void)n_vocab;
    return c->stop_after > 0 && c->n_ids >= c->stop_after;
}

static mg_status run_generate(mg_model *m, const ref_data *r, mg_generate_params *gp, collect *c, char *out,
                              size_t out_len, int *n_gen) {
    mg_session *s = new_session(m, 0, 512);
    mg_sampler *smp = NULL;
    mg_sampler_params spar = mg_sampler_default_params();
    spar.temperature = 0;
    mg_status st = MG_ERR_INTERNAL;
    if (s && mg_sampler_create(&smp, &spar, mg_model_n_vocab(m)) == MG_OK) {
        int32_t ids[64];
        ids_of(r->prompt, r->n_prompt, ids);
        memset(c, 0, sizeof *c);
        gp->on_token = collect_cb;
        gp->user = c;
        CHECK(mg_session_eval_tokens(s, ids, r->n_prompt) == MG_OK);
        st = mg_generate(s, smp, gp, out, out_len, n_gen);
    }
    mg_sampler_free(smp);
    mg_session_free(s);
    return st;
}

TEST(llama_generate) {
    if (!ensure_ref("tiny")) return;
    ref_data r;
    char p[1024];
    if (!ref_load(&r, "tiny", "f32")) return;
    mg_model *m = open_model(dpath(p, sizeof p, "tiny", "f32", ".gguf"));
    if (!m) {
        ref_free(&r);
        return;
    }
    int n_cont = r.n_tokens - r.n_prompt, n_gen = 0;
    collect *c = malloc(sizeof *c);
    char out[4096];
    mg_generate_params gp = mg_generate_default_params();
    gp.n_predict = n_cont;
    gp.stop_at_eos = 0;
    CHECK(run_generate(m, &r, &gp, c, out, sizeof out, &n_gen) == MG_OK);
    CHECK_EQ_INT(n_gen, n_cont);
    CHECK_EQ_INT(c->n_ids, n_cont);
    int same = 0;
    while (same < c->n_ids && c->ids[same] == (int32_t)r.tokens[r.n_prompt + same]) same++;
    CHECK_MSG(same == n_cont, "mg_generate greedy: %d of %d match", same, n_cont);
    CHECK(strcmp(out, c->text) == 0); /* streamed pieces add up to the text */
    char *full = strdup(out);
    size_t L = strlen(full);

    /* a stop string from the middle of the text: the output ends where it starts */
    if (L >= 8) {
        char stop[4] = {full[L / 2], full[L / 2 + 1], full[L / 2 + 2], 0};
        const char *stops[] = {"\x01never", stop, NULL};
        size_t first = (size_t)(strstr(full, stop) - full);
        gp.stop_strings = stops;
        CHECK(run_generate(m, &r, &gp, c, out, sizeof out, &n_gen) == MG_OK);
        CHECK_MSG(strlen(out) == first && strncmp(out, full, first) == 0, "stop '%s': got '%s' want %zu bytes of '%s'",
                  stop, out, first, full);
        CHECK(strcmp(c->text, out) == 0); /* nothing of the stop string was streamed */
        CHECK(n_gen < n_cont);
        gp.stop_strings = NULL;
    } else {
        CHECK_MSG(0, "greedy text too short for the stop-string test: '%s'", full);
    }
    /* a stop token sequence: tokens 3..4 of the continuation */
    int32_t seq[3] = {(int32_t)r.tokens[r.n_prompt + 3], (int32_t)r.tokens[r.n_prompt + 4], -1};
    const int32_t *seqs[] = {seq, NULL};
    int want = 5;
    for (int i = 1; i < 5; i++)
        if ((int32_t)r.tokens[r.n_prompt + i - 1] == seq[0] && (int32_t)r.tokens[r.n_prompt + i] == seq[1]) {
            want = i + 1;
            break;
        }
    gp.stop_seqs = seqs;
    CHECK(run_generate(m, &r, &gp, c, out, sizeof out, &n_gen) == MG_OK);
    CHECK_EQ_INT(n_gen, want);
    gp.stop_seqs = NULL;
    /* the callback stops generation */
    collect dummy;
    (void)dummy;
    gp.n_predict = 10;
    {
        mg_session *s = new_session(m, 0, 512);
        mg_sampler *smp = NULL;
        mg_sampler_params spar = mg_sampler_default_params();
        spar.temperature = 0;
        if (s && mg_sampler_create(&smp, &spar, mg_model_n_vocab(m)) == MG_OK) {
            memset(c, 0, sizeof *c);
            c->stop_after = 3;
            gp.on_token = collect_cb;
            gp.user = c;
            CHECK(mg_generate(s, smp, &gp, out, sizeof out, &n_gen) == MG_ERR_INVALID_ARG); /* no prompt yet */
            int32_t ids[64];
            ids_of(r.prompt, r.n_prompt, ids);
            CHECK(mg_session_eval_tokens(s, ids, r.n_prompt) == MG_OK);
            CHECK(mg_generate(s, smp, &gp, out, sizeof out, &n_gen) == MG_ERR_CANCELLED);
            CHECK_EQ_INT(n_gen, 3);
            /* tokens but the last are evaluated: the session holds prompt + 2 */
            CHECK_EQ_INT(mg_session_n_past(s), r.n_prompt + 2);
        }
        mg_sampler_free(smp);
        mg_session_free(s);
    }
    free(full);
    free(c);
    mg_model_close(m);
    ref_free(&r);
}

/* ==== The CLI ==== */

static const char *bin(void) {
    const char *b = getenv("MG_BIN");
    return b && *b ? b : "build/minigpt";
}

static int count_lines(const char *path) {
    size_t n = 0;
    char *s = test_read_file(path, &n);
    if (!s) return -1;
    int lines = 0;
    for (size_t i = 0; i < n; i++) lines += s[i] == '\n';
    free(s);
    return lines;
}

TEST(llama_cli_generate) {
    if (!ensure_ref("tiny")) return;
    char model[1024], out[1024], errf[1024];
    dpath(model, sizeof model, "tiny", "f32", ".gguf");
    snprintf(out, sizeof out, "%s/llama_cli_out.txt", test_data_dir());
    snprintf(errf, sizeof errf, "%s/llama_cli_err.txt", test_data_dir());
    int rc = test_run("%s generate -m %s -p 'Hello world' -n 12 --temp 0 -t 2 > %s 2> %s", bin(), model, out, errf);
    CHECK_EQ_INT(rc, 0);
    size_t n = 0;
    char *text = test_read_file(out, &n);
    CHECK(text && n > 1);
    char *e = test_read_file(errf, NULL);
    CHECK_MSG(e && strstr(e, "tok/s"), "no timings on stderr: %s", e ? e : "(none)");
    /* sampling with a seed is reproducible */
    char out2[1024];
    snprintf(out2, sizeof out2, "%s/llama_cli_out2.txt", test_data_dir());
    rc = test_run("%s generate -m %s -p 'Hello' -n 16 --temp 1.0 --top-k 20 --top-p 0.9 --repeat-penalty 1.1 "
                  "--seed 7 > %s 2>/dev/null && %s generate -m %s -p 'Hello' -n 16 --temp 1.0 --top-k 20 "
                  "--top-p 0.9 --repeat-penalty 1.1 --seed 7 > %s 2>/dev/null && cmp -s %s %s",
                  bin(), model, out, bin(), model, out2, out, out2);
    CHECK_EQ_INT(rc, 0);
    free(text);
    free(e);
}

TEST(llama_cli_errors) {
    if (!ensure_ref("tiny")) return;
    char model[1024], npy[1024], errf[1024];
    dpath(model, sizeof model, "tiny", "f32", ".gguf");
    dpath(npy, sizeof npy, "tiny", "f32", "_logits.npy");
    snprintf(errf, sizeof errf, "%s/llama_cli_err.txt", test_data_dir());
    const char *cases[][2] = {
        {"-m /nonexistent.gguf -p hi", "missing file"},
        {"-m NPY -p hi", "not a GGUF"},
        {"-m MODEL -p hi -n abc", "bad number"},
        {"-m MODEL -p hi --temp -1", "negative temperature"},
        {"-m MODEL -p hi --top-p 2", "top-p > 1"},
        {"-m MODEL -p 'a long prompt that does not fit' -c 4", "prompt beyond the context"},
        {"-m MODEL", "no prompt"},
        {"-m MODEL -p hi --bogus", "unknown option"},
        {"-m MODEL -p hi -n", "missing value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[1024], *o = args;
        for (const char *a = cases[i][0]; *a && o < args + sizeof args - 1100;) {
            if (!strncmp(a, "MODEL", 5)) o += sprintf(o, "%s", model), a += 5;
            else if (!strncmp(a, "NPY", 3)) o += sprintf(o, "%s", npy), a += 3;
            else *o++ = *a++;
        }
        *o = 0;
        int rc = test_run("%s generate %s > /dev/null 2> %s", bin(), args, errf);
        CHECK_MSG(rc == 1, "%s: exit %d, want 1", cases[i][1], rc);
        CHECK_MSG(count_lines(errf) == 1, "%s: %d lines on stderr, want 1", cases[i][1], count_lines(errf));
    }
}

TEST(llama_cli_logprobs) {
    if (!ensure_ref("tiny")) return;
    char model[1024], out[1024];
    dpath(model, sizeof model, "tiny", "f32", ".gguf");
    snprintf(out, sizeof out, "%s/llama_cli_logprobs.jsonl", test_data_dir());
    int rc = test_run("%s generate -m %s -p 'Hello \"world\"\\\\ <s>' -n 10 --temp 0 --logprobs 5 > %s 2>/dev/null",
                      bin(), model, out);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(count_lines(out), 10);
    /* every line parses; greedy picks the top entry; log-probabilities are sorted and sum below 1 */
    rc = test_run("%s -c \"import json,sys,math\n"
                  "rows=[json.loads(l) for l in open(sys.argv[1])]\n"
                  "assert len(rows)==10\n"
                  "for r in rows:\n"
                  "  t=r['top']; assert len(t)==5 and t[0]['id']==r['id'] and abs(t[0]['logprob']-r['logprob'])<1e-6\n"
                  "  assert all(t[i]['logprob']>=t[i+1]['logprob'] for i in range(4)) and r['logprob']<=0\n"
                  "  assert sum(math.exp(x['logprob']) for x in t)<=1+1e-5 and isinstance(r['piece'],str)\n"
                  "\" %s",
                  test_python(), out);
    CHECK_MSG(rc == 0, "logprobs JSON check failed");
}
