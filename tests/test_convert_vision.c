/*
 * test_convert_vision.c - the vision side of GGUF files written by `minigpt convert` from
 * checkpoints with the official key names (tests/ref/make_official.py) against a PyTorch forward
 * on the same checkpoint weights (tests/ref/convert_vision_ref.py: eva_vit.py / Q-Former math of
 * tests/ref/vision_ref.py, weights loaded by their official names, float64). Covers MiniGPT-v2
 * (interpolated position embedding, identity ln_vision, merge-4 projection) and MiniGPT-4 Vicuna
 * (ln_vision and Q-Former from the BLIP-2 file, llama_proj from the MiniGPT-4 checkpoint).
 */
#include "test.h"

#include "minigpt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Official checkpoints plus the torch reference, generated once into their own directory. */
static const char *ref_dir(void) {
    static char dir[1024];
    static int state; /* 0 not tried, 1 ok, -1 failed */
    if (!state) {
        snprintf(dir, sizeof dir, "%s/official_cv", test_data_dir());
        int rc = test_run("%s tests/ref/make_official.py %s > %s.log 2>&1 && %s tests/ref/convert_vision_ref.py %s "
                          ">> %s.log 2>&1", test_python(), dir, dir, test_python(), dir, dir);
        state = rc == 0 ? 1 : -1;
        if (rc) printf("    reference generation failed (rc %d), see %s.log\n", rc, dir);
    }
    return state > 0 ? dir : NULL;
}

static double max_rel(const float *a, const float *b, int64_t n) {
    double md = 0, mb = 0;
    for (int64_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - b[i]));
        mb = fmax(mb, fabs((double)b[i]));
    }
    return mb > 0 ? md / mb : md;
}

/* Compares got [n] with DIR/NAME.npy; returns the max relative error (1e9 on shape mismatch). */
static double cmp_npy(const char *dir, const char *name, const float *got, int64_t rows, int64_t cols) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s.npy", dir, name);
    int64_t shape[4];
    int nd = 0;
    float *ref = test_read_npy_f32(p, shape, &nd);
    double e = 1e9;
    if (ref && nd == 2 && shape[0] == rows && shape[1] == cols) e = max_rel(got, ref, rows * cols);
    else printf("    %s: missing or shape mismatch (want [%lld, %lld])\n", p, (long long)rows, (long long)cols);
    free(ref);
    printf("    %-20s vs torch: max rel err %.3g\n", name, e);
    return e;
}

/* Converts, encodes the reference image, compares every stage. */
static void check_variant(const char *dir, const char *tag, const char *args, bool qformer) {
    char out[1100], p[1200], err[256];
    snprintf(out, sizeof out, "%s/cv_%s.gguf", dir, tag);
    int rc = test_run("%s convert %s --outtype f32 -o %s > %s.log 2>&1", getenv("MG_BIN"), args, out, out);
    CHECK_EQ_INT(rc, 0);
    if (rc) return;
    mg_model *m = NULL;
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = 2;
    mg_status st = mg_model_open(&m, out, &mp, err, sizeof err);
    CHECK_MSG(st == MG_OK, "open %s: %s", out, err);
    if (st != MG_OK) return;
    mg_vl_dims dm;
    CHECK(mg_model_has_vision(m) && mg_vl_stage_dims(m, &dm) == MG_OK);
    snprintf(p, sizeof p, "%s/cv_%s_img.npy", dir, tag);
    int64_t shape[4];
    int nd = 0;
    float *img = test_read_npy_f32(p, shape, &nd);
    bool ok = img && nd == 3 && shape[0] == 3 && shape[1] == dm.image_size && shape[2] == dm.image_size;
    CHECK_MSG(ok, "%s: image tensor missing or not [3, %d, %d]", p, dm.image_size, dm.image_size);
    float *vit = malloc((size_t)dm.n_vit_tok * dm.vit_dim * sizeof *vit);
    float *qf = malloc((size_t)(dm.n_qf ? dm.n_qf * dm.qf_dim : 1) * sizeof *qf);
    float *tok = malloc((size_t)dm.n_img_tok * dm.llm_dim * sizeof *tok);
    if (ok) {
        st = mg_vl_encode_stages(m, img, vit, qformer ? qf : NULL, tok, err, sizeof err);
        CHECK_MSG(st == MG_OK, "encode: %s", err);
        char name[64];
        snprintf(name, sizeof name, "cv_%s_vit", tag);
        CHECK(cmp_npy(dir, name, vit, dm.n_vit_tok, dm.vit_dim) <= 1e-4);
        if (qformer) {
            CHECK(dm.n_qf > 0);
            snprintf(name, sizeof name, "cv_%s_qformer", tag);
            CHECK(cmp_npy(dir, name, qf, dm.n_qf, dm.qf_dim) <= 1e-4);
        }
        snprintf(name, sizeof name, "cv_%s_tokens", tag);
        CHECK(cmp_npy(dir, name, tok, dm.n_img_tok, dm.llm_dim) <= 1e-4);
    }
    free(img);
    free(vit);
    free(qf);
    free(tok);
    mg_model_close(m);
}

TEST(convert_vision_matches_torch) {
    const char *b = getenv("MG_BIN");
    if (!b || access(b, X_OK) != 0) SKIP("MG_BIN not set to the minigpt binary");
    const char *dir = ref_dir();
    CHECK(dir != NULL);
    if (!dir) return;
    char args[8192];
    snprintf(args, sizeof args, "--llm %s/hf_st --vit %s/eva.pth --ckpt %s/v2.pth --vit-heads 4 --image-size 112",
             dir, dir, dir);
    check_variant(dir, "v2", args, false);
    snprintf(args, sizeof args, "--llm %s/hf_st --vit %s/eva.pth --qformer %s/blip2.pth --ckpt %s/vicuna.pth "
             "--vit-heads 4 --qformer-heads 2", dir, dir, dir, dir);
    check_variant(dir, "vicuna", args, true);
}
