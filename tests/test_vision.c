/*
 * test_vision.c - the vision side against tests/ref/vision_ref.py, a PyTorch re-implementation
 * of eva_vit.py / Qformer.py with random weights: every stage (ViT + ln_vision, Q-Former,
 * projection) is fed the reference input of that stage and compared by max|a-b| / max|b|, then the
 * whole pipeline end to end. Also the bicubic position-embedding resize against
 * torch.nn.functional.interpolate, and the loader's refusal of malformed files.
 */
#include "test.h"

#include "gguf.h"
#include "kernels.h"
#include "quant.h"
#include "threadpool.h"
#include "vision.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Runs vision_ref.py for one case into the test data dir; false (and a failed check) on error. */
static bool gen_case(const char *what) {
    int rc = test_run("%s tests/ref/vision_ref.py %s %s%s", test_python(), test_data_dir(), what,
                      test_quick() ? " --quick" : "");
    CHECK_MSG(rc == 0, "vision_ref.py %s exited with %d", what, rc);
    return rc == 0;
}

/* Loads DIR/name.npy with the expected element count (a failed check if absent or other size). */
static float *load_npy(const char *name, int64_t n_expect) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", test_data_dir(), name);
    int64_t shape[4];
    int nd;
    float *a = test_read_npy_f32(path, shape, &nd);
    CHECK_MSG(a != NULL, "cannot read %s", path);
    if (!a) return NULL;
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= shape[i];
    CHECK_MSG(n == n_expect, "%s: %lld elements, expected %lld", name, (long long)n, (long long)n_expect);
    if (n != n_expect) {
        free(a);
        return NULL;
    }
    return a;
}

/* max|a-b| / max|b| over n values (1 if either is NaN). */
static double max_rel_err(const float *a, const float *b, int64_t n) {
    double md = 0, mb = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d != d) return 1.0;
        if (d > md) md = d;
        if (fabs((double)b[i]) > mb) mb = fabs((double)b[i]);
    }
    return mb > 0 ? md / mb : md;
}

static void check_close(const char *what, const float *got, const float *ref, int64_t n, double tol) {
    double e = max_rel_err(got, ref, n);
    printf("    %s: max rel err %.3g (tol %.1g)\n", what, e, tol);
    CHECK_MSG(e <= tol, "%s: max rel err %.3g > %.1g", what, e, tol);
}

typedef struct {
    gguf_file *gf;
    mg_vision *v;
    vision_ws *ws;
    mg_pool *pool;
} vis_fixture;

static bool open_model(vis_fixture *fx, const char *file) {
    char path[4096], err[256] = "";
    memset(fx, 0, sizeof *fx);
    snprintf(path, sizeof path, "%s/%s", test_data_dir(), file);
    mg_kernels_init();
    mg_status st = gguf_open(&fx->gf, path, err, sizeof err);
    CHECK_MSG(st == MG_OK, "gguf_open %s: %s", path, err);
    if (st != MG_OK) return false;
    st = vision_load(&fx->v, fx->gf, err, sizeof err);
    CHECK_MSG(st == MG_OK, "vision_load: %s", err);
    if (st != MG_OK) return false;
    st = vision_ws_create(&fx->ws, fx->v, 2, err, sizeof err);
    CHECK_MSG(st == MG_OK, "vision_ws_create: %s", err);
    if (st != MG_OK) return false;
    st = mg_pool_create(&fx->pool, 2);
    CHECK(st == MG_OK);
    return st == MG_OK;
}

static void close_model(vis_fixture *fx) {
    mg_pool_free(fx->pool);
    vision_ws_free(fx->ws);
    vision_free(fx->v);
    gguf_close(fx->gf);
}

TEST(vision_interp_pos_embed) {
    if (!gen_case("interp")) return;
    const int C = 1408, gs = 16;
    float *src = load_npy("interp_in", (int64_t)(1 + gs * gs) * C);
    const int sizes[] = {32, 24, 10};
    for (size_t i = 0; src && i < MG_ARRAY_LEN(sizes); i++) {
        int gd = sizes[i];
        char name[64];
        snprintf(name, sizeof name, "interp_out_%d", gd);
        int64_t n = (int64_t)(1 + gd * gd) * C;
        float *ref = load_npy(name, n);
        float *got = malloc((size_t)n * sizeof(float));
        if (ref && got) {
            vision_interp_pos_embed(src, gs, gd, C, got);
            check_close(name, got, ref, n, 1e-5);
            CHECK(memcmp(got, src, (size_t)C * sizeof(float)) == 0); /* CLS row copied */
        }
        free(ref);
        free(got);
    }
    free(src);
}

/* MiniGPT-4 (Vicuna) path: ViT at width 1408 (16 heads of 88, MLP 6144; quick: 2 heads of 88),
 * 224 input, ln_vision with weights; Q-Former at real widths (768, 12 heads, FFN 3072) with 4 layers
 * (quick: 2), cross-attention in layers 0 and 2; llama_proj 768 -> 4096. */
TEST(vision_minigpt4_qformer) {
    if (!gen_case("a")) return;
    vis_fixture fx;
    if (!open_model(&fx, "vision_a.gguf")) {
        close_model(&fx);
        return;
    }
    const mg_vision *v = fx.v;
    CHECK_EQ_INT(v->proj_type, VISION_PROJ_QFORMER);
    CHECK_EQ_INT(v->n_tok, 257);
    CHECK_EQ_INT(v->head_dim, 88);
    CHECK_EQ_INT(v->n_out, 32);
    CHECK_EQ_INT(v->n_llm, 4096);
    mg_kernel_opts o = {0};
    const int64_t n_vit = (int64_t)v->n_tok * v->n_embd, n_qf = 32 * 768, n_out = 32 * 4096;
    float *img = load_npy("a_img", 3 * 224 * 224);
    float *ref_vit = load_npy("a_vit", n_vit);
    float *ref_qf = load_npy("a_qformer", n_qf);
    float *ref_out = load_npy("a_proj", n_out);
    float *got = malloc((size_t)MG_MAX(n_vit, n_out) * sizeof(float));
    if (img && ref_vit && ref_qf && ref_out && got) {
        int64_t t0 = mg_time_us();
        vision_vit_forward(v, fx.ws, fx.pool, &o, img, got);
        printf("    vit: %d blocks, %.2f s\n", v->n_block, (double)(mg_time_us() - t0) * 1e-6);
        check_close("vit+ln_vision", got, ref_vit, n_vit, 1e-4);
        vision_qformer_forward(v, fx.ws, fx.pool, &o, ref_vit, got);
        check_close("qformer", got, ref_qf, n_qf, 1e-4);
        vision_project(v, fx.ws, fx.pool, &o, ref_qf, got);
        check_close("llama_proj 768->4096", got, ref_out, n_out, 1e-4);
        memset(got, 0, (size_t)n_out * sizeof(float));
        char err[256];
        CHECK(vision_encode(v, fx.pool, &o, img, got, err, sizeof err) == MG_OK);
        check_close("encode end to end", got, ref_out, n_out, 1e-4);
    }
    free(img);
    free(ref_vit);
    free(ref_qf);
    free(ref_out);
    free(got);
    close_model(&fx);
}

/* Writes a copy of DIR/src with every matmul weight (a .weight of 2+ dims whose rows the type can
 * hold) stored as `type`; everything else copied as is. */
static bool write_converted(const char *src, const char *dst, int type) {
    char in[4096], out[4096], err[256];
    snprintf(in, sizeof in, "%s/%s", test_data_dir(), src);
    snprintf(out, sizeof out, "%s/%s", test_data_dir(), dst);
    gguf_file *gf;
    mg_status st = gguf_open(&gf, in, err, sizeof err);
    CHECK_MSG(st == MG_OK, "gguf_open %s: %s", in, err);
    if (st != MG_OK) return false;
    gguf_writer *w = gguf_writer_create();
    gguf_writer_copy_kv(w, gf);
    int64_t n_t = gguf_n_tensors(gf);
    void **bufs = calloc((size_t)n_t, sizeof *bufs);
    char **names = calloc((size_t)n_t, sizeof *names);
    for (int64_t i = 0; i < n_t; i++) {
        const gguf_tensor *t = gguf_tensor_at(gf, i);
        names[i] = gguf_str_dup(t->name);
        size_t nl = strlen(names[i]);
        int64_t rows = 1;
        for (int d = 1; d < t->n_dims; d++) rows *= t->ne[d];
        bool mat = t->type == MG_TYPE_F32 && t->n_dims >= 2 && nl > 7 && strcmp(names[i] + nl - 7, ".weight") == 0 &&
                   mg_row_size(type, t->ne[0]) != 0;
        if (!mat) {
            gguf_writer_add_tensor(w, names[i], t->type, t->n_dims, t->ne, t->data);
            continue;
        }
        size_t row = mg_row_size(type, t->ne[0]);
        bufs[i] = malloc(row * (size_t)rows);
        for (int64_t r = 0; r < rows; r++)
            mg_quantize_row(type, (const float *)t->data + r * t->ne[0], (char *)bufs[i] + (size_t)r * row, t->ne[0]);
        gguf_writer_add_tensor(w, names[i], type, t->n_dims, t->ne, bufs[i]);
    }
    st = gguf_writer_write_file(w, out, err, sizeof err);
    CHECK_MSG(st == MG_OK, "writing %s: %s", out, err);
    gguf_writer_free(w);
    for (int64_t i = 0; i < n_t; i++) {
        free(bufs[i]);
        free(names[i]);
    }
    free(bufs);
    free(names);
    gguf_close(gf);
    return st == MG_OK;
}

/* MiniGPT-v2 path: 448 input, the file's 16x16 position embedding interpolated at load, no
 * ln_vision tensors (identity affine), drop CLS, 4 tokens merged, llama_proj 5632 -> 4096.
 * One block at width 1408 (quick: 4 heads of 88, projection 1408 -> 256). */
TEST(vision_minigptv2_merge4) {
    if (!gen_case("b")) return;
    vis_fixture fx;
    if (!open_model(&fx, "vision_b.gguf")) {
        close_model(&fx);
        return;
    }
    const mg_vision *v = fx.v;
    CHECK_EQ_INT(v->proj_type, VISION_PROJ_MERGE4);
    CHECK_EQ_INT(v->n_tok, 1025);
    CHECK_EQ_INT(v->head_dim, 88);
    CHECK_EQ_INT(v->n_out, 256);
    CHECK(v->pos_owned != NULL);
    mg_kernel_opts o = {0};
    const int64_t n_vit = (int64_t)v->n_tok * v->n_embd, n_out = (int64_t)v->n_out * v->n_llm;
    float *img = load_npy("b_img", 3 * 448 * 448);
    float *ref_vit = load_npy("b_vit", n_vit);
    float *ref_out = load_npy("b_proj", n_out);
    float *got = malloc((size_t)MG_MAX(n_vit, n_out) * sizeof(float));
    if (img && ref_vit && ref_out && got) {
        int64_t t0 = mg_time_us();
        vision_vit_forward(v, fx.ws, fx.pool, &o, img, got);
        printf("    vit: %d blocks of width %d at 448, %.2f s\n", v->n_block, v->n_embd,
               (double)(mg_time_us() - t0) * 1e-6);
        check_close("vit+ln_vision (448, interpolated pos)", got, ref_vit, n_vit, 1e-4);
        vision_project(v, fx.ws, fx.pool, &o, ref_vit, got);
        check_close("merge4 + llama_proj", got, ref_out, n_out, 1e-4);
        memset(got, 0, (size_t)n_out * sizeof(float));
        CHECK(vision_encode_ws(v, fx.ws, fx.pool, &o, img, got) == MG_OK);
        check_close("encode end to end", got, ref_out, n_out, 1e-4);
        /* the same bits with no pool (one attention slot) and with 3 threads: every product is a
         * fixed fma chain and every row op is per row, whatever the split */
        float *again = malloc((size_t)n_out * sizeof(float));
        char err[256];
        for (int nt = 0; again && nt <= 3; nt += 3) {
            mg_pool *p = NULL;
            if (nt) CHECK(mg_pool_create(&p, nt) == MG_OK);
            memset(again, 0, (size_t)n_out * sizeof(float));
            CHECK_MSG(vision_encode(v, p, &o, img, again, err, sizeof err) == MG_OK, "%s", err);
            CHECK_MSG(memcmp(again, got, (size_t)n_out * sizeof(float)) == 0, "%d threads: other bits than 2",
                      nt ? nt : 1);
            mg_pool_free(p);
        }
        free(again);
    }
    close_model(&fx);

    /* The same model with F16 / BF16 / Q8_0 / Q4_0 matmul weights against the fp32 reference:
     * the error is the weights' rounding (Q8_0/Q4_0 also quantize the activations). */
    const struct {
        int type;
        double tol;
    } conv[] = {{MG_TYPE_F16, 2e-3}, {MG_TYPE_BF16, 2e-2}, {MG_TYPE_Q8_0, 2e-2}, {MG_TYPE_Q4_0, 1.5e-1}};
    for (size_t i = 0; img && ref_out && got && i < MG_ARRAY_LEN(conv); i++) {
        if (test_quick() && conv[i].type != MG_TYPE_Q8_0) continue;
        char name[64], what[96];
        snprintf(name, sizeof name, "vision_b_%s.gguf", mg_type_name(conv[i].type));
        if (!write_converted("vision_b.gguf", name, conv[i].type) || !open_model(&fx, name)) {
            close_model(&fx);
            break;
        }
        CHECK_EQ_INT(fx.v->blocks[0].ffn_up.w.type, conv[i].type);
        memset(got, 0, (size_t)n_out * sizeof(float));
        CHECK(vision_encode_ws(fx.v, fx.ws, fx.pool, &o, img, got) == MG_OK);
        snprintf(what, sizeof what, "encode with %s weights", mg_type_name(conv[i].type));
        check_close(what, got, ref_out, n_out, conv[i].tol);
        close_model(&fx);
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", test_data_dir(), name);
        remove(path);
    }
    free(img);
    free(ref_vit);
    free(ref_out);
    free(got);
}

/* ==== Malformed files ==== */

/* A tiny merge4 model (28x28 image, 2x2 grid, width 8) written with the C writer; `breakage`
 * names what to spoil. Returns the vision_load status and its message in err. */
static mg_status load_tiny(const char *breakage, char *err, size_t err_len) {
    enum { E = 8, FF = 16, P = 14, NL = 4 };
    static float buf[3 * P * P * E];
    for (size_t i = 0; i < MG_ARRAY_LEN(buf); i++) buf[i] = 0.01f * (float)(i % 7);
    gguf_writer *w = gguf_writer_create();
    bool bad = breakage != NULL;
#define BROKEN(name) (bad && strcmp(breakage, name) == 0)
    gguf_writer_set_str(w, "minigpt.projector_type", BROKEN("projector") ? "perceiver" : "merge4");
    gguf_writer_set_u32(w, "minigpt.vision.image_size", BROKEN("image_size") ? 30 : 28);
    gguf_writer_set_u32(w, "minigpt.vision.patch_size", P);
    gguf_writer_set_u32(w, "minigpt.vision.embedding_length", E);
    gguf_writer_set_u32(w, "minigpt.vision.block_count", 1);
    gguf_writer_set_u32(w, "minigpt.vision.head_count", BROKEN("heads") ? 3 : 2);
    if (!BROKEN("no_ff")) gguf_writer_set_u32(w, "minigpt.vision.feed_forward_length", FF);
    if (BROKEN("eps_type")) gguf_writer_set_str(w, "minigpt.vision.layer_norm_epsilon", "1e-6");
    int64_t ne_patch[4] = {P, P, 3, E}, ne_vec[1] = {E}, ne_pos[2] = {E, BROKEN("pos") ? 6 : 5};
    int64_t ne_qkv[2] = {E, 3 * E}, ne_sq[2] = {E, E}, ne_up[2] = {E, FF}, ne_down[2] = {FF, E};
    int64_t ne_ffb[1] = {FF}, ne_proj[2] = {4 * E, NL}, ne_projb[1] = {NL};
    gguf_writer_add_tensor(w, "v.patch_embd.weight", MG_TYPE_F32, 4, ne_patch, buf);
    gguf_writer_add_tensor(w, "v.patch_embd.bias", MG_TYPE_F32, 1, ne_vec, buf);
    gguf_writer_add_tensor(w, "v.class_embd", MG_TYPE_F32, 1, ne_vec, buf);
    gguf_writer_add_tensor(w, "v.position_embd", MG_TYPE_F32, 2, ne_pos, buf);
    gguf_writer_add_tensor(w, "v.blk.0.ln1.weight", BROKEN("norm_f16") ? MG_TYPE_F16 : MG_TYPE_F32, 1, ne_vec, buf);
    gguf_writer_add_tensor(w, "v.blk.0.ln1.bias", MG_TYPE_F32, 1, ne_vec, buf);
    gguf_writer_add_tensor(w, "v.blk.0.attn_qkv.weight", MG_TYPE_F32, 2, BROKEN("qkv_shape") ? ne_sq : ne_qkv, buf);
    gguf_writer_add_tensor(w, "v.blk.0.attn_q.bias", MG_TYPE_F32, 1, ne_vec, buf);
    if (!BROKEN("no_vbias")) gguf_writer_add_tensor(w, "v.blk.0.attn_v.bias", MG_TYPE_F32, 1, ne_vec, buf);
    gguf_writer_add_tensor(w, "v.blk.0.attn_out.weight", MG_TYPE_F32, 2, ne_sq, buf);
    gguf_writer_add_tensor(w, "v.blk.0.attn_out.bias", MG_TYPE_F32, 1, ne_vec, buf);
    gguf_writer_add_tensor(w, "v.blk.0.ln2.weight", MG_TYPE_F32, 1, ne_vec, buf);
    gguf_writer_add_tensor(w, "v.blk.0.ln2.bias", MG_TYPE_F32, 1, ne_vec, buf);
    gguf_writer_add_tensor(w, "v.blk.0.ffn_up.weight", MG_TYPE_F32, 2, ne_up, buf);
    gguf_writer_add_tensor(w, "v.blk.0.ffn_up.bias", MG_TYPE_F32, 1, ne_ffb, buf);
    gguf_writer_add_tensor(w, "v.blk.0.ffn_down.weight", BROKEN("i32_weight") ? MG_TYPE_I32 : MG_TYPE_F32, 2,
                           ne_down, buf);
    gguf_writer_add_tensor(w, "v.blk.0.ffn_down.bias", MG_TYPE_F32, 1, ne_vec, buf);
    if (BROKEN("half_post_ln")) gguf_writer_add_tensor(w, "v.post_ln.weight", MG_TYPE_F32, 1, ne_vec, buf);
    if (!BROKEN("no_proj")) gguf_writer_add_tensor(w, "mm.proj.weight", MG_TYPE_F32, 2, ne_proj, buf);
    gguf_writer_add_tensor(w, "mm.proj.bias", MG_TYPE_F32, 1, ne_projb, buf);
#undef BROKEN
    char path[4096];
    snprintf(path, sizeof path, "%s/vision_tiny.gguf", test_data_dir());
    mg_status st = gguf_writer_write_file(w, path, err, err_len);
    gguf_writer_free(w);
    CHECK_MSG(st == MG_OK, "writing %s: %s", path, err);
    if (st != MG_OK) return MG_ERR_INTERNAL;
    gguf_file *gf;
    st = gguf_open(&gf, path, err, err_len);
    CHECK_MSG(st == MG_OK, "gguf_open: %s", err);
    if (st != MG_OK) return MG_ERR_INTERNAL;
    mg_vision *v = NULL;
    err[0] = 0;
    st = vision_load(&v, gf, err, err_len);
    if (st == MG_OK) {
        /* a good tiny file also runs end to end */
        float img[3 * 28 * 28], out[NL];
        for (size_t i = 0; i < MG_ARRAY_LEN(img); i++) img[i] = 0.001f * (float)i;
        mg_kernel_opts o = {0};
        CHECK(v->n_out == 1 && v->n_llm == NL);
        CHECK(vision_encode(v, NULL, &o, img, out, err, err_len) == MG_OK);
        CHECK(isfinite(out[0]) && isfinite(out[NL - 1]));
    }
    vision_free(v);
    gguf_close(gf);
    return st;
}

TEST(vision_load_rejects_bad_files) {
    char err[256];
    CHECK_MSG(load_tiny(NULL, err, sizeof err) == MG_OK, "good tiny file: %s", err);
    /* each breakage and a piece of the message it must produce */
    const char *bad[][2] = {{"projector", "perceiver"}, {"image_size", "image_size"}, {"heads", "head_count"},
                            {"no_ff", "feed_forward_length"}, {"eps_type", "layer_norm_epsilon"},
                            {"pos", "position_embd"}, {"norm_f16", "ln1.weight"}, {"qkv_shape", "attn_qkv"},
                            {"no_vbias", "attn_v.bias"}, {"i32_weight", "ffn_down.weight"},
                            {"half_post_ln", "post_ln.bias"}, {"no_proj", "mm.proj.weight"}};
    for (size_t i = 0; i < MG_ARRAY_LEN(bad); i++) {
        mg_status st = load_tiny(bad[i][0], err, sizeof err);
        CHECK_MSG(st != MG_OK && st != MG_ERR_INTERNAL && strstr(err, bad[i][1]),
                  "breakage '%s' not refused as expected (%d: %s)", bad[i][0], (int)st, err);
        printf("    %s: %s\n", bad[i][0], err);
    }
}
