/*
 * test_convert.c - `minigpt convert` against checkpoints with the official key names written by
 * tests/ref/make_official.py (torch.save / hand-written safetensors, Debian's torch): HF LLaMA
 * folder -> GGUF whose logits equal a PyTorch HF-LLaMA forward; .bin shards and .safetensors give
 * the same file; MiniGPT-v2 LoRA merged as torch's W + (alpha/r) B@A; the 448-style position
 * interpolation equals torch's bicubic; Q-Former recipe and checkpoint overrides; missing keys and
 * shape mismatches fail with clear messages.
 */
#include "convert.h"
#include "gguf.h"
#include "quant.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Generates the checkpoints once per run; NULL when that failed. */
static const char *official(void) {
    static char dir[1024];
    static int state; /* 0 not tried, 1 ok, -1 failed */
    if (!state) {
        snprintf(dir, sizeof dir, "%s/official", test_data_dir());
        int rc = test_run("%s tests/ref/make_official.py %s > %s.log 2>&1", test_python(), dir, dir);
        state = rc == 0 ? 1 : -1;
        if (rc) printf("    make_official.py failed (rc %d), see %s.log\n", rc, dir);
    }
    return state > 0 ? dir : NULL;
}

static const char *bin(void) {
    const char *b = getenv("MG_BIN");
    return b && access(b, X_OK) == 0 ? b : NULL;
}

/* Runs `minigpt convert ARGS -o OUT`, stderr into OUT.log; returns the exit status. */
static int convert(const char *out, const char *args) {
    return test_run("%s convert %s -o %s > %s.log 2>&1", bin(), args, out, out);
}

static bool log_has(const char *out, const char *needle) {
    char p[1200];
    snprintf(p, sizeof p, "%s.log", out);
    size_t n;
    char *s = test_read_file(p, &n);
    bool ok = s && strstr(s, needle);
    if (!ok) printf("    %s.log lacks \"%s\":\n%s\n", out, needle, s ? s : "(unreadable)");
    free(s);
    return ok;
}

/* Dequantized copy of a tensor (malloc'd), or NULL. */
static float *tensor_f32(const gguf_file *f, const char *name, int64_t *n) {
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) return NULL;
    *n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    float *d = malloc((size_t)*n * sizeof *d);
    mg_dequantize_row(t->type, t->data, d, *n);
    return d;
}

static double max_rel(const float *a, const float *b, int64_t n) {
    double md = 0, mb = 0;
    for (int64_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - b[i]));
        mb = fmax(mb, fabs((double)b[i]));
    }
    return mb > 0 ? md / mb : md;
}

/* Logits of every prompt position from the GGUF vs the PyTorch reference. */
static double logits_err(const char *gguf, const char *dir) {
    char p[1200], err[256];
    snprintf(p, sizeof p, "%s/ids.txt", dir);
    size_t n;
    char *txt = test_read_file(p, &n);
    int32_t ids[256];
    int n_ids = 0;
    for (char *s = txt, *e; s && n_ids < 256; s = e) {
        long v = strtol(s, &e, 10);
        if (e == s) break;
        ids[n_ids++] = (int32_t)v;
    }
    free(txt);
    snprintf(p, sizeof p, "%s/logits.npy", dir);
    int64_t shape[4];
    int nd = 0;
    float *ref = test_read_npy_f32(p, shape, &nd);
    mg_model *m = NULL;
    mg_session *s = NULL;
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = 2;
    mg_session_params sp = mg_session_default_params();
    double worst = 1e9;
    if (!ref || nd != 2 || shape[0] != n_ids || mg_model_open(&m, gguf, &mp, err, sizeof err) != MG_OK ||
        mg_session_create(&s, m, &sp, err, sizeof err) != MG_OK || mg_model_n_vocab(m) != shape[1]) {
        printf("    cannot evaluate %s: %s\n", gguf, err);
        goto done;
    }
    worst = 0;
    for (int i = 0; i < n_ids; i++) {
        if (mg_session_eval_tokens(s, &ids[i], 1) != MG_OK) {
            worst = 1e9;
            break;
        }
        worst = fmax(worst, max_rel(mg_session_logits(s), ref + (int64_t)i * shape[1], shape[1]));
    }
done:
    mg_session_free(s);
    mg_model_close(m);
    free(ref);
    return worst;
}

TEST(convert_llama_logits) {
    const char *dir = official();
    if (!bin()) SKIP("MG_BIN not set to the minigpt binary");
    CHECK(dir != NULL);
    if (!dir) return;
    char st[1100], bn[1100], f16[1100], args[4096];
    snprintf(st, sizeof st, "%s/llama_st.gguf", dir);
    snprintf(bn, sizeof bn, "%s/llama_bin.gguf", dir);
    snprintf(f16, sizeof f16, "%s/llama_f16.gguf", dir);
    snprintf(args, sizeof args, "--llm %s/hf_st --outtype f32 --name tiny", dir);
    CHECK_EQ_INT(convert(st, args), 0);
    CHECK(log_has(st, "recipe: llama"));
    snprintf(args, sizeof args, "--arch llama --llm %s/hf_bin --outtype f32 --name tiny", dir);
    CHECK_EQ_INT(convert(bn, args), 0);
    /* .bin shards and .safetensors give the same bytes */
    CHECK_EQ_INT(test_run("cmp -s %s %s", st, bn), 0);
    double e = logits_err(st, dir);
    printf("    f32 logits max rel err %.3g\n", e);
    CHECK(e <= 1e-4);
    snprintf(args, sizeof args, "--llm %s/hf_st --name tiny", dir);
    CHECK_EQ_INT(convert(f16, args), 0);
    e = logits_err(f16, dir);
    printf("    f16 logits max rel err %.3g\n", e);
    CHECK(e <= 1e-2);
    /* f16 file: 2-D weights F16, norms F32 (what convert_hf_to_gguf.py writes) */
    char err[256];
    gguf_file *f = NULL;
    CHECK(gguf_open(&f, f16, err, sizeof err) == MG_OK);
    if (f) {
        CHECK(gguf_find_tensor(f, "blk.1.ffn_down.weight")->type == MG_TYPE_F16);
        CHECK(gguf_find_tensor(f, "output.weight")->type == MG_TYPE_F16);
        CHECK(gguf_find_tensor(f, "blk.0.attn_norm.weight")->type == MG_TYPE_F32);
        uint32_t ft = 0;
        CHECK(gguf_get_u32(f, "general.file_type", &ft, err, sizeof err) == MG_OK && ft == 1);
        gguf_close(f);
    }
}

TEST(convert_minigptv2_lora) {
    const char *dir = official();
    if (!bin()) SKIP("MG_BIN not set to the minigpt binary");
    CHECK(dir != NULL);
    if (!dir) return;
    char out[1100], args[4096], p[1200], err[256];
    snprintf(out, sizeof out, "%s/v2.gguf", dir);
    snprintf(args, sizeof args, "--llm %s/hf_st --vit %s/eva.pth --ckpt %s/v2.pth --vit-heads 4 --image-size 112 "
             "--outtype f32", dir, dir, dir);
    CHECK_EQ_INT(convert(out, args), 0);
    CHECK(log_has(out, "recipe: minigptv2"));
    gguf_file *f = NULL;
    CHECK(gguf_open(&f, out, err, sizeof err) == MG_OK);
    if (!f) return;
    gguf_str a;
    CHECK(gguf_get_str(f, "general.architecture", &a, err, sizeof err) == MG_OK && gguf_str_eq(a, "minigptv2"));
    CHECK(gguf_get_str(f, "minigpt.projector_type", &a, err, sizeof err) == MG_OK && gguf_str_eq(a, "merge4"));
    CHECK(gguf_find_tensor(f, "v.post_ln.weight") == NULL); /* identity ln_vision */
    const char *names[3] = {"blk.0.attn_q.weight", "blk.0.attn_v.weight", "v.position_embd"};
    const char *refs[3] = {"ref_q0", "ref_v0", "ref_pos"};
    for (int i = 0; i < 3; i++) {
        int64_t n = 0, shape[4];
        int nd = 0;
        float *got = tensor_f32(f, names[i], &n);
        snprintf(p, sizeof p, "%s/%s.npy", dir, refs[i]);
        float *ref = test_read_npy_f32(p, shape, &nd);
        CHECK(got && ref && nd == 2 && shape[0] * shape[1] == n);
        if (got && ref && nd == 2 && shape[0] * shape[1] == n) {
            double e = max_rel(got, ref, n);
            printf("    %s vs torch: max rel err %.3g\n", names[i], e);
            CHECK_MSG(e <= 2e-6, "%s differs from torch (%.3g)", names[i], e);
        }
        free(got);
        free(ref);
    }
    gguf_close(f);
    /* q8_0: the patch embedding (rows of 14) falls back to F16, embeddings stay F32 */
    snprintf(out, sizeof out, "%s/v2_q8.gguf", dir);
    snprintf(args, sizeof args, "--arch minigptv2 --llm %s/hf_st --vit %s/eva.pth --ckpt %s/v2.pth --vit-heads 4 "
             "--image-size 112 --outtype q8_0", dir, dir, dir);
    CHECK_EQ_INT(convert(out, args), 0);
    if (gguf_open(&f, out, err, sizeof err) == MG_OK) {
        CHECK(gguf_find_tensor(f, "v.patch_embd.weight")->type == MG_TYPE_F16);
        CHECK(gguf_find_tensor(f, "v.position_embd")->type == MG_TYPE_F32);
        CHECK(gguf_find_tensor(f, "v.blk.1.attn_qkv.weight")->type == MG_TYPE_Q8_0);
        CHECK(gguf_find_tensor(f, "mm.proj.weight")->type == MG_TYPE_Q8_0);
        gguf_close(f);
    } else {
        CHECK(0);
    }
}

TEST(convert_minigpt4_vicuna) {
    const char *dir = official();
    if (!bin()) SKIP("MG_BIN not set to the minigpt binary");
    CHECK(dir != NULL);
    if (!dir) return;
    char out[1100], args[4096], p[1200], err[256];
    snprintf(out, sizeof out, "%s/vicuna.gguf", dir);
    snprintf(args, sizeof args, "--llm %s/hf_st --vit %s/eva.pth --qformer %s/blip2.pth --ckpt %s/vicuna.pth "
             "--vit-heads 4 --qformer-heads 2 --outtype f32", dir, dir, dir, dir);
    CHECK_EQ_INT(convert(out, args), 0);
    CHECK(log_has(out, "recipe: minigpt4-vicuna"));
    CHECK(log_has(out, "unexpected key: some_extra.weight"));
    CHECK(log_has(out, "training-only keys of the Q-Former checkpoint skipped"));
    CHECK(log_has(out, "override: output_norm.weight"));
    gguf_file *f = NULL;
    CHECK(gguf_open(&f, out, err, sizeof err) == MG_OK);
    if (!f) return;
    uint32_t v = 0;
    CHECK(gguf_get_u32(f, "minigpt.qformer.cross_attention_freq", &v, err, sizeof err) == MG_OK && v == 2);
    CHECK(gguf_get_u32(f, "minigpt.vision.image_size", &v, err, sizeof err) == MG_OK && v == 224);
    CHECK(gguf_find_tensor(f, "qf.blk.0.cross_k.weight") != NULL);
    CHECK(gguf_find_tensor(f, "qf.blk.1.cross_k.weight") == NULL);
    CHECK(gguf_find_tensor(f, "v.post_ln.bias") != NULL);
    const gguf_tensor *pe = gguf_find_tensor(f, "v.position_embd");
    CHECK(pe && pe->ne[1] == 257); /* the file's 4x4 grid interpolated to 224 / 14 = 16 */
    int64_t n = 0, shape[4];
    int nd = 0;
    float *got = tensor_f32(f, "output_norm.weight", &n);
    snprintf(p, sizeof p, "%s/ref_norm_override.npy", dir);
    float *ref = test_read_npy_f32(p, shape, &nd);
    CHECK(got && ref && n == shape[0] && max_rel(got, ref, n) == 0);
    free(got);
    free(ref);
    gguf_close(f);
}

TEST(convert_errors) {
    const char *dir = official();
    if (!bin()) SKIP("MG_BIN not set to the minigpt binary");
    CHECK(dir != NULL);
    if (!dir) return;
    char out[1100], args[4096];
    snprintf(out, sizeof out, "%s/bad.gguf", dir);
    /* MiniGPT-v2 without its LoRA: the official loader would silently run without it */
    snprintf(args, sizeof args, "--arch minigptv2 --llm %s/hf_st --vit %s/eva.pth --ckpt %s/v2_nolora.pth "
             "--vit-heads 4 --image-size 112", dir, dir, dir);
    CHECK_EQ_INT(convert(out, args), 1);
    CHECK(log_has(out, "missing required LoRA tensor llama_model.base_model.model.model.layers.0.self_attn.q_proj"));
    CHECK(access(out, F_OK) != 0);
    snprintf(args, sizeof args, "--llm %s/hf_st --vit %s/eva.pth --ckpt %s/v2_badproj.pth --vit-heads 4 "
             "--image-size 112", dir, dir, dir);
    CHECK_EQ_INT(convert(out, args), 1);
    CHECK(log_has(out, "shape mismatch: llama_proj.weight"));
    CHECK(log_has(out, "is [64, 260], expected [64, 256]"));
    /* the ViT file given as the LLM's weights: missing tensors */
    snprintf(args, sizeof args, "--arch minigpt4-llama2 --llm %s/hf_st --vit %s/blip2.pth --ckpt %s/v2.pth", dir, dir,
             dir);
    CHECK_EQ_INT(convert(out, args), 1);
    CHECK(log_has(out, "missing required tensor"));
    snprintf(args, sizeof args, "--vit %s/eva.pth", dir);
    CHECK_EQ_INT(convert(out, args), 1);
    CHECK(log_has(out, "--llm"));
    snprintf(args, sizeof args, "--llm %s/nonexistent", dir);
    CHECK_EQ_INT(convert(out, args), 1);
    snprintf(args, sizeof args, "--llm %s/hf_st --arch nonsense", dir);
    CHECK_EQ_INT(convert(out, args), 2);
    snprintf(args, sizeof args, "--llm %s/hf_st --outtype q5_k", dir);
    CHECK_EQ_INT(convert(out, args), 2);
    CHECK(access(out, F_OK) != 0);
}
