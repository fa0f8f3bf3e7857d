/*
 * test_e2e_ctx.c - the conversation pipeline's long-run behaviour on the small e2e models of
 * tests/ref/e2e_ref.py:
 *
 *   e2e_ctx_trim_v2    a long MiniGPT-v2 conversation in a small context never fails with
 *                      MG_ERR_CTX_FULL: mg_vl_ask keeps the last min(2000, n_ctx) - n_predict rows
 *                      (Chat.answer_prepare). Every trimmed turn's rows must be the tail of the
 *                      untrimmed prompt (a second conversation with a large context), and its
 *                      logits must equal a fresh session fed exactly those rows through the
 *                      public API; one window is also checked against PyTorch (e2e_ctx_ref.py),
 *                      which rebuilds the rows from the reference's own image tokens. A turn
 *                      cancelled and asked again must reuse the trimmed window's KV cache.
 *   e2e_ctx_atomic_v4  MiniGPT-4 (its answers stay in the history, so a leaked partial answer
 *                      would show): a cancelled turn, an empty image, a question that breaks the
 *                      prompt after its image was added, and a prompt that overflows the context
 *                      all leave the conversation as before; the next turn then gives the same
 *                      prompt, logits, answer and history text as a conversation that never saw
 *                      them.
 */
#include "test.h"

#include "minigpt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *dpath(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", test_data_dir(), name);
    return buf;
}

/* The e2e models and reference arrays: made by e2e_ref.py unless present and newer than it
 * (test_e2e.c's tests, which sort first, have then just made them in this run). */
static bool ensure_data(void) {
    static int state = 0; /* 0 not checked, 1 ok, -1 failed */
    if (state) return state == 1;
    char p[1024];
    struct stat a, b;
    bool fresh = stat(dpath(p, sizeof p, "v2_img_tokens.npy"), &a) == 0 &&
                 stat(dpath(p, sizeof p, "e2e_v4.gguf"), &a) == 0 && stat("tests/ref/e2e_ref.py", &b) == 0 &&
                 a.st_mtime >= b.st_mtime;
    if (!fresh) fresh = test_run("'%s' tests/ref/e2e_ref.py '%s'", test_python(), test_data_dir()) == 0;
    state = fresh ? 1 : -1;
    return fresh;
}

/* max |a - b| / max |b| over n values (NaN fails). */
static double rel_err(const float *a, const float *b, size_t n) {
    double d = 0, m = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        if (!(e <= d)) d = e;
        if (fabs((double)b[i]) > m) m = fabs((double)b[i]);
    }
    return d / m;
}

/* Writes a float32 [rows, cols] .npy file. */
static bool write_npy_2d(const char *path, const float *x, int rows, int cols) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", rows, cols);
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    unsigned short hl = (unsigned short)(n + pad + 1);
    bool ok = fwrite("\x93NUMPY\x01\x00", 1, 8, f) == 8 && fputc(hl & 0xff, f) != EOF && fputc(hl >> 8, f) != EOF &&
              fwrite(hdr, 1, (size_t)n, f) == (size_t)n;
    for (int i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF && fwrite(x, sizeof(float), (size_t)rows * cols, f) == (size_t)rows * cols;
    return fclose(f) == 0 && ok;
}

static mg_model *open_model(const char *name) {
    char p[1024], err[512];
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = 2;
    mg_model *m = NULL;
    mg_status st = mg_model_open(&m, dpath(p, sizeof p, name), &mp, err, sizeof err);
    CHECK_MSG(st == MG_OK, "open %s: %s", name, err);
    return m;
}

static mg_vl *new_vl(mg_model *m, int n_ctx) {
    char err[256];
    mg_session_params sp = mg_session_default_params();
    sp.n_ctx = n_ctx;
    mg_vl *vl = NULL;
    mg_status st = mg_vl_create(&vl, m, &sp, err, sizeof err);
    CHECK_MSG(st == MG_OK, "mg_vl_create: %s", err);
    return vl;
}

/* Streaming callback state: keeps the logits the first token was sampled from (those of the
 * prompt's last position) and stops after cancel_at tokens when cancel_at > 0. */
typedef struct {
    float *first_logits;
    int n_vocab;
    int n_tokens;
    int cancel_at;
} capture;

static int on_token(void *user, int32_t id, const char *piece, const float *logits, int n_vocab) {
    capture *c = user;
    if (id < 0) return 0;
    if (c->n_tokens == 0 && logits && n_vocab == c->n_vocab)
        memcpy(c->first_logits, logits, (size_t)n_vocab * sizeof(float));
    c->n_tokens++;
    return c->cancel_at > 0 && c->n_tokens >= c->cancel_at;
}

/* Greedy, n tokens, no stop rule, streaming into c. */
static mg_generate_params greedy_gp(capture *c, int n) {
    mg_generate_params gp = mg_generate_default_params();
    gp.n_predict = n;
    gp.stop_at_eos = 0;
    gp.stop_seqs = NULL;
    gp.on_token = on_token;
    gp.user = c;
    return gp;
}

static mg_sampler *greedy_sampler(const mg_model *m) {
    mg_sampler_params sp = mg_sampler_default_params();
    sp.temperature = 0;
    sp.repeat_penalty = 1;
    mg_sampler *smp = NULL;
    CHECK(mg_sampler_create(&smp, &sp, mg_model_n_vocab(m)) == MG_OK);
    return smp;
}

/* The last evaluated prompt of vl: ids (-1 = image row) and embeddings, malloc'd. */
typedef struct {
    int n;
    int32_t *ids;
    float *embd;
} rows;

static rows get_rows(mg_vl *vl, const mg_model *m) {
    rows r = {0, NULL, NULL};
    int n = mg_vl_prompt_rows(vl, NULL, NULL, 0);
    CHECK(n > 0);
    if (n <= 0) return r;
    r.ids = malloc((size_t)n * sizeof *r.ids);
    r.embd = malloc((size_t)n * (size_t)mg_model_n_embd(m) * sizeof(float));
    r.n = mg_vl_prompt_rows(vl, r.ids, r.embd, n);
    CHECK_EQ_INT(r.n, n);
    return r;
}

static void free_rows(rows *r) {
    free(r->ids);
    free(r->embd);
    memset(r, 0, sizeof *r);
}

/* Logits of a fresh session (context just big enough) fed embd [n, d] in one call. */
static double fresh_rel_err(const mg_model *m, const rows *k, const float *logits) {
    mg_session *s = NULL;
    mg_session_params sp = mg_session_default_params();
    sp.n_ctx = k->n;
    char err[256];
    double e = INFINITY;
    if (mg_session_create(&s, m, &sp, err, sizeof err) == MG_OK && mg_session_eval_embd(s, k->embd, k->n) == MG_OK)
        e = rel_err(logits, mg_session_logits(s), (size_t)mg_model_n_vocab(m));
    mg_session_free(s);
    return e;
}

static const char *const QUESTIONS[] = {
    "[refer] the red circle", "What is in the picture?", "[vqa] how many people are there",
    "[identify] what is this {<12><34><56><78>}", "where is the blue square?", "[detection] a dog on the table",
};
#define N_Q ((int)(sizeof QUESTIONS / sizeof QUESTIONS[0]))

/* PyTorch logits of the kept window k, whose row i is row n_trim + i of the untrimmed prompt
 * full (image rows numbered from the first -1 of full). */
static void check_python(const rows *k, const rows *full, int n_trim, const float *logits, int n_vocab) {
    int first_img = -1;
    for (int i = 0; i < full->n && first_img < 0; i++)
        if (full->ids[i] < 0) first_img = i;
    float *rc = malloc((size_t)k->n * 2 * sizeof(float));
    for (int i = 0; i < k->n; i++) {
        rc[2 * i] = (float)k->ids[i];
        rc[2 * i + 1] = k->ids[i] < 0 ? (float)(n_trim + i - first_img) : -1.0f;
    }
    char model[1024], img[1024], rp[1024], op[1024];
    dpath(model, sizeof model, "e2e_v2.gguf");
    dpath(img, sizeof img, "v2_img_tokens.npy");
    dpath(rp, sizeof rp, "ctx_rows.npy");
    dpath(op, sizeof op, "ctx_ref_logits.npy");
    remove(op);
    CHECK(write_npy_2d(rp, rc, k->n, 2));
    free(rc);
    int rc2 = test_run("'%s' tests/ref/e2e_ctx_ref.py '%s' '%s' '%s' '%s'", test_python(), model, img, rp, op);
    CHECK_EQ_INT(rc2, 0);
    int64_t shape[4];
    int nd = 0;
    float *ref = test_read_npy_f32(op, shape, &nd);
    CHECK_MSG(ref && nd == 1 && shape[0] == n_vocab, "e2e_ctx_ref.py gave no logits");
    if (ref && nd == 1 && shape[0] == n_vocab) {
        double e = rel_err(logits, ref, (size_t)n_vocab);
        CHECK_MSG(e <= 1e-4, "trimmed window vs PyTorch: logits rel err %.3g", e);
    }
    free(ref);
}

TEST(e2e_ctx_trim_v2) {
    if (!ensure_data()) {
        CHECK_MSG(0, "e2e_ref.py failed");
        return;
    }
    mg_model *m = open_model("e2e_v2.gguf");
    mg_image img = {0};
    char p[1024], err[256];
    if (!m) return;
    CHECK(mg_image_load_file(&img, dpath(p, sizeof p, "e2e_img.png"), 0, err, sizeof err) == MG_OK);
    /* n_ctx 320, 6 new tokens: the window keeps 314 rows; the first prompt has 278 and every
     * v2 turn adds about 15, so trimming starts at the 4th turn and reaches into the image */
    const int n_ctx = 320, n_new = 6, keep = n_ctx - n_new, n_turns = 14;
    const int nv = mg_model_n_vocab(m);
    mg_vl *vl = new_vl(m, n_ctx), *big = new_vl(m, 0); /* big: 1024 positions, never trims */
    mg_sampler *smp = greedy_sampler(m);
    capture c = {malloc((size_t)nv * sizeof(float)), nv, 0, 0};
    if (!vl || !big || !smp || !img.rgb) goto out;
    int n_trimmed_turns = 0, last_trim = 0;
    bool python_done = false;
    for (int t = 0; t < n_turns; t++) {
        const char *q = QUESTIONS[t % N_Q];
        mg_generate_params gp = greedy_gp(&c, n_new);
        c.n_tokens = 0;
        mg_vl_result r;
        mg_status st = mg_vl_ask(vl, t == 0 ? &img : NULL, q, smp, &gp, &r);
        CHECK_MSG(st == MG_OK, "turn %d: %s (%s)", t, mg_status_str(st), mg_vl_errmsg(vl));
        if (st != MG_OK) break;
        CHECK_EQ_INT(r.n_generated, n_new);
        CHECK_MSG(r.n_prompt <= keep, "turn %d: %d prompt rows kept, at most %d allowed", t, r.n_prompt, keep);
        CHECK(r.n_prompt_trimmed >= last_trim);
        rows k = get_rows(vl, m);
        CHECK_EQ_INT(k.n, r.n_prompt);

        /* the same conversation without trimming: its prompt's tail must be the kept window */
        if (t == 0) CHECK(mg_vl_add_image(big, &img, NULL) == MG_OK);
        CHECK(mg_vl_add_text(big, q) == MG_OK);
        CHECK_MSG(mg_vl_eval_prompt(big, NULL) == MG_OK, "untrimmed turn %d: %s", t, mg_vl_errmsg(big));
        rows full = get_rows(big, m);
        CHECK_EQ_INT(full.n, r.n_prompt + r.n_prompt_trimmed);
        if (full.n == k.n + r.n_prompt_trimmed && k.n > 0) {
            const int d = mg_model_n_embd(m), off = r.n_prompt_trimmed;
            CHECK_MSG(memcmp(full.ids + off, k.ids, (size_t)k.n * sizeof *k.ids) == 0, "turn %d: kept ids", t);
            CHECK_MSG(memcmp(full.embd + (size_t)off * d, k.embd, (size_t)k.n * d * sizeof(float)) == 0,
                      "turn %d: kept embeddings", t);
        }
        if (r.n_prompt_trimmed > 0) {
            n_trimmed_turns++;
            CHECK_EQ_INT(r.n_prompt, keep); /* dropped exactly what was needed */
            /* the kept rows at positions 0.. in a fresh session: same logits as the turn's */
            double e = fresh_rel_err(m, &k, c.first_logits);
            CHECK_MSG(e <= 1e-5, "turn %d (window from row %d): logits vs fresh rel err %.3g", t, r.n_prompt_trimmed,
                      e);
            if (!python_done && k.ids[0] < 0) { /* a window that starts inside the image */
                check_python(&k, &full, r.n_prompt_trimmed, c.first_logits, nv);
                python_done = true;
            }
        }
        last_trim = r.n_prompt_trimmed;
        CHECK(mg_vl_force_answer(big, r.raw, NULL) == MG_OK);
        free_rows(&k);
        free_rows(&full);
        mg_vl_result_free(&r);
    }
    CHECK_MSG(n_trimmed_turns >= 5, "only %d of %d turns were trimmed", n_trimmed_turns, n_turns);
    CHECK_MSG(python_done, "no window started inside the image: the PyTorch check did not run");

    /* a turn cancelled in a trimmed window, then asked again: the same window is rebuilt, the
     * KV cache already holds it (only the last row is re-run) and the logits are still right */
    {
        mg_generate_params gp = greedy_gp(&c, n_new);
        c.n_tokens = 0;
        c.cancel_at = 2;
        mg_vl_result r;
        CHECK_EQ_INT(mg_vl_ask(vl, NULL, "[refer] the green circle", smp, &gp, &r), MG_ERR_CANCELLED);
        CHECK(r.n_prompt_trimmed > 0 && r.raw != NULL && r.n_generated == 2);
        mg_vl_result_free(&r);
        c.n_tokens = 0;
        c.cancel_at = 0;
        CHECK_EQ_INT(mg_vl_ask(vl, NULL, "[refer] the green circle", smp, &gp, &r), MG_OK);
        CHECK_MSG(r.n_prompt_eval == 1, "re-asked turn evaluated %d of %d rows", r.n_prompt_eval, r.n_prompt);
        rows k = get_rows(vl, m);
        double e = k.n ? fresh_rel_err(m, &k, c.first_logits) : INFINITY;
        CHECK_MSG(e <= 1e-5, "re-asked turn: logits vs fresh rel err %.3g", e);
        free_rows(&k);
        mg_vl_result_free(&r);
    }
out:
    free(c.first_logits);
    mg_sampler_free(smp);
    mg_vl_free(vl);
    mg_vl_free(big);
    mg_image_free(&img);
    mg_model_close(m);
}

/* Compares the last prompts and the captured logits of two conversations. */
static void same_prompt(mg_vl *a, mg_vl *b, const mg_model *m, const float *logits_a, const char *what) {
    rows ra = get_rows(a, m), rb = get_rows(b, m);
    CHECK_MSG(ra.n == rb.n && ra.n > 0 && memcmp(ra.ids, rb.ids, (size_t)ra.n * sizeof *ra.ids) == 0,
              "%s: prompt differs (%d vs %d rows)", what, ra.n, rb.n);
    double e = rel_err(logits_a, mg_session_logits(mg_vl_session(b)), (size_t)mg_model_n_vocab(m));
    CHECK_MSG(e <= 1e-5, "%s: logits rel err %.3g", what, e);
    free_rows(&ra);
    free_rows(&rb);
}

TEST(e2e_ctx_atomic_v4) {
    if (!ensure_data()) {
        CHECK_MSG(0, "e2e_ref.py failed");
        return;
    }
    mg_model *m = open_model("e2e_v4.gguf");
    mg_image img = {0};
    char p[1024], err[256];
    if (!m) return;
    CHECK(mg_image_load_file(&img, dpath(p, sizeof p, "e2e_img.png"), 0, err, sizeof err) == MG_OK);
    const int nv = mg_model_n_vocab(m), n_new = 5;
    mg_vl *vl = new_vl(m, 0), *ctl = new_vl(m, 0); /* ctl: the conversation without the failures */
    mg_sampler *smp = greedy_sampler(m);
    capture c = {malloc((size_t)nv * sizeof(float)), nv, 0, 0};
    char *long_q = NULL;
    if (!vl || !ctl || !smp || !img.rgb) goto out;
    mg_generate_params gp = greedy_gp(&c, n_new);
    mg_vl_result r, rc;
    memset(&rc, 0, sizeof rc);

    /* turn 1 in both */
    CHECK_EQ_INT(mg_vl_ask(vl, &img, "What is in the picture?", smp, &gp, &r), MG_OK);
    CHECK(mg_vl_add_image(ctl, &img, NULL) == MG_OK && mg_vl_add_text(ctl, "What is in the picture?") == MG_OK);
    CHECK(r.raw && mg_vl_force_answer(ctl, r.raw, NULL) == MG_OK);
    mg_vl_result_free(&r);

    /* 1. cancelled by the callback at the 3rd token: the partial answer comes back, the history
     *    does not keep it */
    c.n_tokens = 0;
    c.cancel_at = 3;
    CHECK_EQ_INT(mg_vl_ask(vl, NULL, "and the colours of the circle?", smp, &gp, &r), MG_ERR_CANCELLED);
    CHECK(r.raw != NULL && r.n_generated == 3 && strstr(mg_vl_errmsg(vl), "callback"));
    mg_vl_result_free(&r);
    c.cancel_at = 0;

    /* 2. an empty image: refused before anything changes */
    mg_image bad = {0, 0, NULL};
    CHECK_EQ_INT(mg_vl_ask(vl, &bad, "describe it", smp, &gp, &r), MG_ERR_INVALID_ARG);
    mg_vl_result_free(&r);

    /* 3. a good image, then a question that breaks the prompt ("<ImageHere>" without an image):
     *    the image and the question were already in the conversation and must leave it again */
    CHECK_EQ_INT(mg_vl_ask(vl, &img, "look <ImageHere> here", smp, &gp, &r), MG_ERR_FORMAT);
    mg_vl_result_free(&r);

    /* 4. step by step, a question longer than the context: MG_ERR_CTX_FULL after part of it was
     *    evaluated (the KV record must follow) */
    const char *unit = "red circle blue square ";
    size_t ul = strlen(unit);
    long_q = malloc(ul * 600 + 1);
    for (int i = 0; i < 600; i++) memcpy(long_q + (size_t)i * ul, unit, ul);
    long_q[ul * 600] = 0;
    CHECK(mg_vl_add_text(vl, long_q) == MG_OK);
    CHECK_EQ_INT(mg_vl_eval_prompt(vl, &r), MG_ERR_CTX_FULL);
    CHECK(mg_session_n_past(mg_vl_session(vl)) > 0);

    /* 5. an evaluated turn that gets no answer, then a new message: the open assistant turn is
     *    withdrawn (the message itself stays, so the control gets it too, but never evaluated) */
    CHECK(mg_vl_add_text(vl, "Is it round?") == MG_OK && mg_vl_eval_prompt(vl, NULL) == MG_OK);
    CHECK(mg_vl_add_text(ctl, "Is it round?") == MG_OK);
    /* then a second image: the turn now holds two user messages and the image in both */
    CHECK(mg_vl_add_image(vl, &img, NULL) == MG_OK && mg_vl_add_image(ctl, &img, NULL) == MG_OK);

    /* the next turn: same prompt, logits, answer and history text as the control */
    c.n_tokens = 0;
    CHECK_EQ_INT(mg_vl_ask(vl, NULL, "[refer] the red circle", smp, &gp, &r), MG_OK);
    CHECK_MSG(r.n_prompt_eval < r.n_prompt, "the turn evaluated %d of %d rows (no KV reuse)", r.n_prompt_eval,
              r.n_prompt);
    CHECK(mg_vl_add_text(ctl, "[refer] the red circle") == MG_OK && mg_vl_eval_prompt(ctl, &rc) == MG_OK);
    same_prompt(vl, ctl, m, c.first_logits, "after the failed turns");
    CHECK_EQ_INT(rc.n_prompt, r.n_prompt);
    capture c2 = {malloc((size_t)nv * sizeof(float)), nv, 0, 0};
    mg_generate_params gp2 = greedy_gp(&c2, n_new);
    CHECK(mg_vl_generate(ctl, smp, &gp2, &rc) == MG_OK);
    CHECK(r.raw && rc.raw && strcmp(r.raw, rc.raw) == 0);
    free(c2.first_logits);
    mg_prompt pa, pb;
    CHECK(mg_chat_prompt(mg_vl_chat(vl), &pa, err, sizeof err) == MG_OK);
    CHECK(mg_chat_prompt(mg_vl_chat(ctl), &pb, err, sizeof err) == MG_OK);
    CHECK_MSG(pa.text && pb.text && strcmp(pa.text, pb.text) == 0, "history differs:\n%s\n---\n%s", pa.text,
              pb.text);
    CHECK(pa.text && !strstr(pa.text, "colours") && !strstr(pa.text, "look") && !strstr(pa.text, "red circle blue"));
    mg_vl_result_free(&r);
    mg_vl_result_free(&rc);
out:
    free(long_q);
    free(c.first_logits);
    mg_sampler_free(smp);
    mg_vl_free(vl);
    mg_vl_free(ctl);
    mg_image_free(&img);
    mg_model_close(m);
}
