/*
 * test_e2e.c - MiniGPT end to end against tests/ref/e2e_ref.py (PyTorch + sentencepiece): small
 * random MiniGPT-v2 and MiniGPT-4 (Vicuna, Q-Former) models, one image, the full prompt. Checks
 * the preprocessed image, every vision stage, the prompt ids (per-segment tokenization, double
 * BOS), the prompt input embeddings, the last logits and 20 greedy tokens - through the library
 * (mg_vl_*) and through `minigpt run --dump` - plus KV reuse across turns, the image cache, the
 * separate --llm file, --json / --draw, `minigpt chat` over a pipe and the CLI's error lines.
 */
#include "test.h"

#include "minigpt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-4

static const char *Q1 = "[grounding] describe this image in detail";
static const char *Q2 = "[refer] the red circle";
static const char *Q4 = "What is in the picture?";

static const char *dpath(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", test_data_dir(), name);
    return buf;
}

static const char *bin(void) {
    const char *b = getenv("MG_BIN");
    return b && *b ? b : "build/minigpt";
}

/* Runs the reference once per process; false when it failed. */
static bool ensure_ref(void) {
    static int state = 0; /* 0 not run, 1 ok, -1 failed */
    if (state == 0) {
        int rc = test_run("'%s' tests/ref/e2e_ref.py '%s'", test_python(), test_data_dir());
        state = rc == 0 ? 1 : -1;
    }
    return state == 1;
}

/* max |a - b| / max |b| over n values. */
static double rel_err(const float *a, const float *b, size_t n) {
    double d = 0, m = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        if (!(e <= d)) d = e; /* NaN propagates */
        if (fabs((double)b[i]) > m) m = fabs((double)b[i]);
    }
    return d / m;
}

static float *load_ref(const char *name, size_t *n) {
    char p[1024], f[256];
    snprintf(f, sizeof f, "%s.npy", name);
    int64_t shape[4];
    int nd = 0;
    float *x = test_read_npy_f32(dpath(p, sizeof p, f), shape, &nd);
    if (x && n) {
        *n = 1;
        for (int i = 0; i < nd; i++) *n *= (size_t)shape[i];
    }
    return x;
}

/* Reads an int32 .npy (the CLI's prompt_ids / generated_ids). */
static int32_t *read_npy_i32(const char *path, size_t *n) {
    size_t size;
    unsigned char *b = test_read_file(path, &size);
    if (!b || size < 10 || memcmp(b, "\x93NUMPY", 6) != 0) {
        free(b);
        return NULL;
    }
    size_t hl = b[8] | ((size_t)b[9] << 8), off = 10 + hl;
    if (off > size || !strstr((char *)b + 10, "'<i4'")) {
        free(b);
        return NULL;
    }
    *n = (size - off) / 4;
    int32_t *x = malloc(*n * 4 + 4);
    if (x) memcpy(x, b + off, *n * 4);
    free(b);
    return x;
}

static mg_model *open_model(const char *name, const char *llm) {
    char p[1024], q[1024], err[512];
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = 2;
    mg_model *m = NULL;
    mg_status st = mg_model_open_llm(&m, dpath(p, sizeof p, name), llm ? dpath(q, sizeof q, llm) : NULL, &mp, err,
                                     sizeof err);
    CHECK_MSG(st == MG_OK, "open %s: %s", name, err);
    return m;
}

static bool load_image(mg_image *img) {
    char p[1024], err[256];
    mg_status st = mg_image_load_file(img, dpath(p, sizeof p, "e2e_img.png"), 0, err, sizeof err);
    CHECK_MSG(st == MG_OK, "image: %s", err);
    return st == MG_OK;
}

typedef struct {
    int32_t ids[64];
    int n;
} ids_cb;

static int collect(void *user, int32_t id, const char *piece, const float *logits, int n_vocab) {
    ids_cb *c = user;
    if (id >= 0 && c->n < 64) c->ids[c->n++] = id;
    return 0;
}

/* Greedy: argmax of the raw logits, no stop rule, n tokens. */
static void greedy_params(mg_sampler_params *sp, mg_generate_params *gp, ids_cb *c, int n) {
    *sp = mg_sampler_default_params();
    sp->temperature = 0;
    sp->repeat_penalty = 1;
    *gp = mg_generate_default_params();
    gp->n_predict = n;
    gp->stop_at_eos = 0;
    gp->stop_seqs = NULL;
    gp->on_token = collect;
    gp->user = c;
}

/* Compares the prompt rows (ids, embeddings) and the last logits of vl with the reference P_*. */
static void check_prompt(mg_vl *vl, const mg_model *m, const char *ids_name, const char *embd_name,
                         const char *logits_name) {
    size_t n_ids = 0, n_embd = 0, n_lg = 0;
    float *rid = load_ref(ids_name, &n_ids);
    float *remb = embd_name ? load_ref(embd_name, &n_embd) : NULL;
    float *rlg = load_ref(logits_name, &n_lg);
    CHECK(rid && rlg && (!embd_name || remb));
    int d = mg_model_n_embd(m), T = mg_vl_prompt_rows(vl, NULL, NULL, 0);
    CHECK_EQ_INT(T, (int)n_ids);
    if (rid && T == (int)n_ids) {
        int32_t *ids = malloc((size_t)T * sizeof *ids);
        float *embd = malloc((size_t)T * (size_t)d * sizeof(float));
        CHECK_EQ_INT(mg_vl_prompt_rows(vl, ids, embd, T), T);
        int bad = -1;
        for (int i = 0; i < T && bad < 0; i++)
            if (ids[i] != (int32_t)rid[i]) bad = i;
        CHECK_MSG(bad < 0, "%s: prompt id %d differs (%d vs %d)", ids_name, bad, bad < 0 ? 0 : ids[bad],
                  bad < 0 ? 0 : (int)rid[bad]);
        CHECK(ids[0] == 1);
        if (remb && n_embd == (size_t)T * (size_t)d) {
            double e = rel_err(embd, remb, n_embd);
            CHECK_MSG(e <= TOL, "%s: embeddings rel err %.3g", embd_name, e);
        }
        free(ids);
        free(embd);
    }
    const float *lg = mg_session_logits(mg_vl_session(vl));
    CHECK(lg != NULL);
    if (lg && rlg && (int)n_lg == mg_model_n_vocab(m)) {
        double e = rel_err(lg, rlg, n_lg);
        CHECK_MSG(e <= TOL, "%s: logits rel err %.3g", logits_name, e);
    }
    free(rid);
    free(remb);
    free(rlg);
}

/* Greedy continuation of the evaluated prompt vs the reference's 20 tokens. */
static void check_greedy(mg_vl *vl, const mg_model *m, const char *ref_name) {
    size_t n_ref = 0;
    float *ref = load_ref(ref_name, &n_ref);
    CHECK(ref && n_ref == 20);
    if (!ref) return;
    mg_sampler_params sp;
    mg_generate_params gp;
    ids_cb c = {{0}, 0};
    greedy_params(&sp, &gp, &c, 20);
    mg_sampler *smp = NULL;
    CHECK(mg_sampler_create(&smp, &sp, mg_model_n_vocab(m)) == MG_OK);
    mg_vl_result r;
    memset(&r, 0, sizeof r);
    mg_status st = mg_vl_generate(vl, smp, &gp, &r);
    CHECK_MSG(st == MG_OK, "generate: %s", mg_vl_errmsg(vl));
    CHECK_EQ_INT(c.n, 20);
    CHECK_EQ_INT(r.n_generated, 20);
    int bad = -1;
    for (int i = 0; i < c.n && i < (int)n_ref && bad < 0; i++)
        if (c.ids[i] != (int32_t)ref[i]) bad = i;
    CHECK_MSG(bad < 0, "%s: greedy token %d differs", ref_name, bad);
    CHECK(r.text != NULL && r.grounding != NULL);
    mg_vl_result_free(&r);
    mg_sampler_free(smp);
    free(ref);
}

/* Each vision stage of the library vs the reference. */
static void check_stages(const mg_model *m, const mg_image *img, const char *pfx) {
    mg_vl_dims d;
    CHECK(mg_vl_stage_dims(m, &d) == MG_OK);
    size_t S = (size_t)d.image_size;
    float *pix = malloc(3 * S * S * sizeof(float)), *vit = malloc((size_t)d.n_vit_tok * d.vit_dim * sizeof(float));
    float *qf = d.n_qf ? malloc((size_t)d.n_qf * d.qf_dim * sizeof(float)) : NULL;
    float *tok = malloc((size_t)d.n_img_tok * d.llm_dim * sizeof(float));
    char err[256], name[64];
    CHECK(mg_vl_preprocess(m, img, pix, err, sizeof err) == MG_OK);
    CHECK(mg_vl_encode_stages(m, pix, vit, qf, tok, err, sizeof err) == MG_OK);
    struct {
        const char *ref;
        const float *got;
        size_t n;
        double tol;
    } st[4] = {{"pixels", pix, 3 * S * S, 1e-6},
               {"vit", vit, (size_t)d.n_vit_tok * d.vit_dim, TOL},
               {"qformer", qf, (size_t)d.n_qf * d.qf_dim, TOL},
               {"img_tokens", tok, (size_t)d.n_img_tok * d.llm_dim, TOL}};
    for (int i = 0; i < 4; i++) {
        if (!st[i].got) continue;
        snprintf(name, sizeof name, "%s_%s", pfx, st[i].ref);
        size_t n = 0;
        float *r = load_ref(name, &n);
        CHECK_MSG(r && n == st[i].n, "%s: %zu values, expected %zu", name, n, st[i].n);
        if (r && n == st[i].n) {
            double e = rel_err(st[i].got, r, n);
            CHECK_MSG(e <= st[i].tol, "%s: rel err %.3g", name, e);
        }
        free(r);
    }
    free(pix);
    free(vit);
    free(qf);
    free(tok);
}

TEST(e2e_v2_pipeline) {
    if (!ensure_ref()) {
        CHECK_MSG(0, "e2e_ref.py failed");
        return;
    }
    mg_model *m = open_model("e2e_v2.gguf", NULL);
    mg_image img = {0};
    if (!m || !load_image(&img)) {
        mg_model_close(m);
        return;
    }
    CHECK(mg_model_has_vision(m));
    CHECK(strcmp(mg_model_variant(m), "minigptv2") == 0);
    CHECK(mg_model_chat_template(m) == MG_CHAT_MINIGPT_V2);
    CHECK_EQ_INT(mg_model_image_size(m), 448);
    CHECK_EQ_INT(mg_model_n_image_tokens(m), 256);
    mg_sampler_params sp = mg_sampler_default_params();
    mg_generate_params gp = mg_generate_default_params();
    mg_model_generation_defaults(m, &sp, &gp);
    CHECK_CLOSE(sp.temperature, 0.6, 1e-6);
    CHECK_CLOSE(sp.top_p, 0.9, 1e-6);
    CHECK_CLOSE(sp.repeat_penalty, 1.05, 1e-6);
    CHECK_EQ_INT(gp.n_predict, 500);
    check_stages(m, &img, "v2");

    char err[256];
    mg_vl *vl = NULL;
    mg_session_params ssp = mg_session_default_params();
    CHECK(mg_vl_create(&vl, m, &ssp, err, sizeof err) == MG_OK);
    if (!vl) goto out;
    int hit = -1;
    CHECK(mg_vl_add_image(vl, &img, &hit) == MG_OK && hit == 0);
    CHECK(mg_vl_add_text(vl, Q1) == MG_OK);
    mg_vl_result r;
    memset(&r, 0, sizeof r);
    CHECK_MSG(mg_vl_eval_prompt(vl, &r) == MG_OK, "eval: %s", mg_vl_errmsg(vl));
    CHECK_EQ_INT(r.n_prompt, r.n_prompt_eval);
    check_prompt(vl, m, "v2_ids", "v2_embd", "v2_logits");
    check_greedy(vl, m, "v2_greedy");

    /* turn 2: the KV cache keeps the first prompt; only the new suffix is evaluated */
    CHECK(mg_vl_add_text(vl, Q2) == MG_OK);
    CHECK(mg_vl_eval_prompt(vl, &r) == MG_OK);
    CHECK_MSG(r.n_prompt_eval > 0 && r.n_prompt_eval < r.n_prompt - 256, "turn 2 evaluated %d of %d",
              r.n_prompt_eval, r.n_prompt);
    check_prompt(vl, m, "v2_turn2_ids", NULL, "v2_turn2_logits");
    int nv = mg_model_n_vocab(m);
    float *kept = malloc((size_t)nv * sizeof(float));
    memcpy(kept, mg_session_logits(mg_vl_session(vl)), (size_t)nv * sizeof(float));
    /* a fresh evaluation of the whole prompt gives the same logits */
    CHECK(mg_session_rewind(mg_vl_session(vl), 0) == MG_OK);
    CHECK(mg_vl_eval_prompt(vl, &r) == MG_OK);
    CHECK_EQ_INT(r.n_prompt_eval, r.n_prompt);
    double e = rel_err(mg_session_logits(mg_vl_session(vl)), kept, (size_t)nv);
    CHECK_MSG(e <= 1e-5, "reused vs fresh logits rel err %.3g", e);
    free(kept);

    /* a new conversation on the same image: cache hit, and the old prompt is still in the KV cache */
    mg_vl_reset(vl);
    CHECK(mg_vl_add_image(vl, &img, &hit) == MG_OK && hit == 1);
    CHECK(mg_vl_add_text(vl, Q1) == MG_OK);
    CHECK(mg_vl_eval_prompt(vl, &r) == MG_OK);
    CHECK_EQ_INT(r.n_prompt_eval, 1);
    check_prompt(vl, m, "v2_ids", NULL, "v2_logits");

    /* the one-call turn with the model's sampling defaults */
    mg_vl_reset(vl);
    mg_sampler *smp = NULL;
    sp.seed = 5;
    CHECK(mg_sampler_create(&smp, &sp, nv) == MG_OK);
    gp.n_predict = 8;
    CHECK(mg_vl_ask(vl, &img, Q2, smp, &gp, &r) == MG_OK);
    CHECK(r.image_cache_hit == 1 && r.text && r.grounding && r.n_generated >= 0 && r.n_generated <= 8);
    mg_vl_result_free(&r);
    mg_sampler_free(smp);
    mg_vl_free(vl);
out:
    mg_image_free(&img);
    mg_model_close(m);
}

TEST(e2e_v4_pipeline) {
    if (!ensure_ref()) {
        CHECK_MSG(0, "e2e_ref.py failed");
        return;
    }
    mg_model *m = open_model("e2e_v4.gguf", NULL);
    mg_image img = {0};
    if (!m || !load_image(&img)) {
        mg_model_close(m);
        return;
    }
    CHECK(strcmp(mg_model_variant(m), "minigpt4-vicuna") == 0);
    CHECK_EQ_INT(mg_model_image_size(m), 224);
    CHECK_EQ_INT(mg_model_n_image_tokens(m), 32);
    check_stages(m, &img, "v4");
    char err[256];
    mg_vl *vl = NULL;
    CHECK(mg_vl_create(&vl, m, NULL, err, sizeof err) == MG_OK);
    if (vl) {
        CHECK(mg_vl_add_image(vl, &img, NULL) == MG_OK);
        CHECK(mg_vl_add_text(vl, Q4) == MG_OK);
        CHECK_MSG(mg_vl_eval_prompt(vl, NULL) == MG_OK, "eval: %s", mg_vl_errmsg(vl));
        check_prompt(vl, m, "v4_ids", "v4_embd", "v4_logits");
        check_greedy(vl, m, "v4_greedy");
        /* MiniGPT-4 keeps its answer in the history: turn 2 extends the prompt */
        mg_vl_result r;
        memset(&r, 0, sizeof r);
        CHECK(mg_vl_add_text(vl, "and where?") == MG_OK);
        CHECK(mg_vl_eval_prompt(vl, &r) == MG_OK);
        CHECK(r.n_prompt_eval < r.n_prompt - 32);
        mg_vl_free(vl);
    }
    mg_image_free(&img);
    mg_model_close(m);
}

TEST(e2e_llm_file) {
    if (!ensure_ref()) {
        CHECK_MSG(0, "e2e_ref.py failed");
        return;
    }
    /* vision GGUF + a llama.cpp LLM GGUF = the combined file */
    mg_model *m = open_model("e2e_v2_vision.gguf", "e2e_v2_llm.gguf");
    mg_image img = {0};
    char err[512], p[1024];
    if (m && load_image(&img)) {
        mg_vl *vl = NULL;
        CHECK(mg_vl_create(&vl, m, NULL, err, sizeof err) == MG_OK);
        if (vl && mg_vl_add_image(vl, &img, NULL) == MG_OK && mg_vl_add_text(vl, Q1) == MG_OK) {
            CHECK(mg_vl_eval_prompt(vl, NULL) == MG_OK);
            check_prompt(vl, m, "v2_ids", "v2_embd", "v2_logits");
        }
        mg_vl_free(vl);
    }
    mg_image_free(&img);
    mg_model_close(m);
    /* the vision file alone has no LLM; a plain llama model has no vision */
    m = NULL;
    CHECK(mg_model_open(&m, dpath(p, sizeof p, "e2e_v2_vision.gguf"), NULL, err, sizeof err) == MG_ERR_FORMAT);
    CHECK(!m && strstr(err, "--llm"));
    CHECK(mg_model_open(&m, dpath(p, sizeof p, "e2e_v2_llm.gguf"), NULL, err, sizeof err) == MG_OK);
    if (m) {
        mg_vl *vl = NULL;
        CHECK(!mg_model_has_vision(m) && mg_model_image_size(m) == 0);
        CHECK(mg_vl_create(&vl, m, NULL, err, sizeof err) == MG_ERR_INVALID_ARG && !vl && err[0]);
        mg_model_close(m);
    }
}

TEST(e2e_cli_run_dump) {
    if (!ensure_ref()) {
        CHECK_MSG(0, "e2e_ref.py failed");
        return;
    }
    char model[1024], image[1024], dir[1024], js[1024], p[1200];
    dpath(model, sizeof model, "e2e_v2.gguf");
    dpath(image, sizeof image, "e2e_img.png");
    dpath(dir, sizeof dir, "e2e_dump_v2");
    dpath(js, sizeof js, "e2e_run.json");
    int rc = test_run("'%s' run -m '%s' --image '%s' --task grounding --greedy -n 20 -t 2 --json --dump '%s' > '%s'",
                      bin(), model, image, dir, js);
    CHECK_EQ_INT(rc, 0);
    rc = test_run("'%s' -c \"import json,sys; d=json.load(open(sys.argv[1])); "
                  "assert d['tokens']['prompt']==278 and d['tokens']['generated']>0 and d['tokens']['image']==256; "
                  "assert isinstance(d['entities'],list) and 'clean_text' in d and d['timings']['total_ms']>0; "
                  "assert d['question']=='%s'\" '%s'",
                  test_python(), Q1, js);
    CHECK_MSG(rc == 0, "--json output does not parse or lacks fields");
    size_t n = 0, nr = 0;
    snprintf(p, sizeof p, "%s/prompt_ids.npy", dir);
    int32_t *ids = read_npy_i32(p, &n);
    float *rid = load_ref("v2_ids", &nr);
    CHECK(ids && rid && n == nr);
    for (size_t i = 0; ids && rid && n == nr && i < n; i++)
        if (ids[i] != (int32_t)rid[i]) {
            CHECK_MSG(0, "--dump prompt_ids[%zu] = %d, reference %d", i, ids[i], (int)rid[i]);
            break;
        }
    free(ids);
    free(rid);
    static const char *const pairs[][2] = {{"pixels", "v2_pixels"},         {"vit", "v2_vit"},
                                           {"image_tokens", "v2_img_tokens"}, {"prompt_embd", "v2_embd"},
                                           {"logits", "v2_logits"}};
    for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++) {
        int64_t shape[4];
        int nd = 0;
        snprintf(p, sizeof p, "%s/%s.npy", dir, pairs[k][0]);
        float *got = test_read_npy_f32(p, shape, &nd);
        size_t ng = 1;
        for (int i = 0; i < nd; i++) ng *= (size_t)shape[i];
        float *ref = load_ref(pairs[k][1], &nr);
        CHECK_MSG(got && ref && ng == nr, "--dump %s missing or wrong size", pairs[k][0]);
        if (got && ref && ng == nr) {
            double e = rel_err(got, ref, nr);
            CHECK_MSG(e <= TOL, "--dump %s rel err %.3g", pairs[k][0], e);
        }
        free(got);
        free(ref);
    }
    /* generated ids: the greedy reference up to EOS (v2 stops there) */
    snprintf(p, sizeof p, "%s/generated_ids.npy", dir);
    ids = read_npy_i32(p, &n);
    float *g = load_ref("v2_greedy", &nr);
    CHECK(ids && g && n >= 1 && n <= nr);
    for (size_t i = 0; ids && g && i < n && i < nr; i++) CHECK_EQ_INT(ids[i], (int32_t)g[i]);
    free(ids);
    free(g);
}

TEST(e2e_cli_json_draw) {
    if (!ensure_ref()) {
        CHECK_MSG(0, "e2e_ref.py failed");
        return;
    }
    char model[1024], image[1024], js[1024], png[1024];
    dpath(model, sizeof model, "e2e_v2.gguf");
    dpath(image, sizeof image, "e2e_img.png");
    dpath(js, sizeof js, "e2e_answer.json");
    dpath(png, sizeof png, "e2e_draw.png");
    remove(png);
    int rc = test_run("'%s' run -m '%s' --image '%s' --task identify --box 40,30,140,130 -t 2 --json --draw '%s' "
                      "--answer '<p>a red circle</p> {<12><12><44><54>}<delim>{<60><50><90><87>}' > '%s'",
                      bin(), model, image, png, js);
    CHECK_EQ_INT(rc, 0);
    rc = test_run("'%s' -c \"import json,sys; d=json.load(open(sys.argv[1])); e=d['entities']; "
                  "assert len(e)==1 and e[0]['phrase']=='a red circle' and len(e[0]['boxes'])==2; "
                  "assert e[0]['boxes'][0]['x1']==12 and abs(e[0]['boxes'][1]['px'][3]-0.87*240)<1e-6; "
                  "assert d['clean_text'].startswith('a red circle') and d['tokens']['generated']==0; "
                  "assert d['question']=='[identify] what is this {<12><12><43><54>}'\" '%s'",
                  test_python(), js);
    CHECK_MSG(rc == 0, "--json with a forced answer: wrong entities");
    mg_image out = {0};
    char err[256];
    CHECK(mg_image_load_file(&out, png, 0, err, sizeof err) == MG_OK);
    CHECK(out.w == 320 && out.h == 240);
    /* Read the drawn PNG back: both boxes of the one entity are outlined in palette colour 0 at
     * the corners v/100*size (truncated): box 1 left edge x = 38 (0.12*320), box 2 left edge
     * x = 192 (0.60*320); a pixel far from any box keeps the original image's value. */
    mg_image orig = {0};
    CHECK(mg_image_load_file(&orig, image, 0, err, sizeof err) == MG_OK);
    uint8_t c0[3];
    mg_draw_color(0, c0);
    if (out.rgb && orig.rgb && out.w == 320 && out.h == 240 && orig.w == 320) {
        const uint8_t *p1 = out.rgb + ((size_t)80 * 320 + 38) * 3, *p2 = out.rgb + ((size_t)160 * 320 + 192) * 3;
        CHECK_MSG(memcmp(p1, c0, 3) == 0, "box 1 edge pixel (38,80) = %d,%d,%d", p1[0], p1[1], p1[2]);
        CHECK_MSG(memcmp(p2, c0, 3) == 0, "box 2 edge pixel (192,160) = %d,%d,%d", p2[0], p2[1], p2[2]);
        size_t far = ((size_t)230 * 320 + 10) * 3;
        CHECK(memcmp(out.rgb + far, orig.rgb + far, 3) == 0);
    }
    mg_image_free(&orig);
    mg_image_free(&out);
}

TEST(e2e_cli_chat) {
    if (!ensure_ref()) {
        CHECK_MSG(0, "e2e_ref.py failed");
        return;
    }
    char model[1024], image[1024], outp[1024], errp[1024];
    dpath(model, sizeof model, "e2e_v2.gguf");
    dpath(image, sizeof image, "e2e_img.png");
    dpath(outp, sizeof outp, "e2e_chat.out");
    dpath(errp, sizeof errp, "e2e_chat.err");
    int rc = test_run("printf '/image %%s\\nhello there\\n/task refer\\nthe red circle\\n/reset\\nagain\\n/quit\\nnot read\\n' "
                      "'%s' | '%s' chat -m '%s' --greedy -n 6 -t 2 > '%s' 2> '%s'",
                      image, bin(), model, outp, errp);
    CHECK_EQ_INT(rc, 0);
    size_t n = 0;
    char *out = test_read_file(outp, &n), *er = test_read_file(errp, &n);
    int lines = 0;
    for (char *c = out; c && *c; c++) lines += *c == '\n';
    CHECK_MSG(lines >= 3, "chat printed %d answer lines, expected 3 (or more)", lines);
    CHECK(er && strstr(er, "(task [refer])") && strstr(er, "(conversation reset)") && strstr(er, "320x240"));
    free(out);
    free(er);

    /* A failed turn (a literal image marker in the question) is reported, the conversation goes
     * on with the next question, and the exit status says that a turn failed. */
    rc = test_run("printf 'bad <ImageHere> question\nhello there\n' | '%s' chat -m '%s' --image '%s' --greedy -n 4 "
                  "-t 2 > '%s' 2> '%s'",
                  bin(), model, image, outp, errp);
    CHECK_EQ_INT(rc, 1);
    out = test_read_file(outp, &n);
    er = test_read_file(errp, &n);
    lines = 0;
    for (char *c = out; c && *c; c++) lines += *c == '\n';
    CHECK_MSG(lines >= 2, "chat after a failed turn printed %d lines, expected 2", lines);
    CHECK(er && strstr(er, "minigpt chat: "));
    free(out);
    free(er);
}

/* Runs the CLI with args; true when it exits 1 with exactly one line on stderr. */
static bool fails_one_line(const char *args) {
    char errp[1024];
    dpath(errp, sizeof errp, "e2e_err.txt");
    int rc = test_run("'%s' %s > /dev/null 2> '%s'", bin(), args, errp);
    size_t n = 0;
    char *e = test_read_file(errp, &n);
    int lines = 0;
    for (size_t i = 0; e && i < n; i++) lines += e[i] == '\n';
    bool ok = rc == 1 && lines == 1;
    if (!ok) printf("  '%s': rc %d, %d stderr lines: %s\n", args, rc, lines, e ? e : "");
    free(e);
    return ok;
}

TEST(e2e_cli_errors) {
    if (!ensure_ref()) {
        CHECK_MSG(0, "e2e_ref.py failed");
        return;
    }
    char a[4096], model[1024], llm[1024], image[1024];
    dpath(model, sizeof model, "e2e_v2.gguf");
    dpath(llm, sizeof llm, "e2e_v2_llm.gguf");
    dpath(image, sizeof image, "e2e_img.png");
    snprintf(a, sizeof a, "run -m '%s' --image /nonexistent/x.png -p hi", model);
    CHECK(fails_one_line(a));
    snprintf(a, sizeof a, "run -m '%s' --image '%s' -p hi", llm, image);
    CHECK(fails_one_line(a));
    snprintf(a, sizeof a, "run -m '%s' --image '%s' --task identify --box 1,2,3", model, image);
    CHECK(fails_one_line(a));
    snprintf(a, sizeof a, "run -m '%s' --image '%s' --task identify --box 10,20,500,30", model, image);
    CHECK(fails_one_line(a));
    snprintf(a, sizeof a, "run -m '%s' --image '%s' --task bogus -p hi", model, image);
    CHECK(fails_one_line(a));
    snprintf(a, sizeof a, "run -m /nonexistent/m.gguf --image '%s' -p hi", image);
    CHECK(fails_one_line(a));
    snprintf(a, sizeof a, "chat -m '%s' --image /nonexistent/x.png < /dev/null", model);
    CHECK(fails_one_line(a));
}
