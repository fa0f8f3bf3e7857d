/*
 * test_quantize.c - `minigpt quantize` (src/quantize.c): round trips between float types, lossless
 * f32 -> f32, Q8_0 / Q4_0 bytes equal to tests/ref/quant_ref.py (NumPy port of llama.cpp), the
 * per-tensor rules (norms, biases, embeddings, output.weight, odd rows), --keep / --force,
 * requantization and bad input.
 */
#include "convert.h"
#include "gguf.h"
#include "quant.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    const char *name;
    int n_dims;
    int64_t ne[2];
} tspec;

/* A LLaMA + vision shaped file with every kind of tensor the rules distinguish. */
static const tspec specs[] = {
    {"token_embd.weight", 2, {64, 96}},
    {"blk.0.attn_norm.weight", 1, {64, 1}},
    {"blk.0.attn_q.weight", 2, {64, 64}},
    {"blk.0.ffn_down.weight", 2, {96, 64}},
    {"blk.0.odd.weight", 2, {80, 8}},       /* row 80: no Q8_0 / Q4_0 block fits */
    {"output_norm.weight", 1, {64, 1}},
    {"output.weight", 2, {64, 96}},
    {"v.position_embd", 2, {64, 17}},
    {"v.class_embd", 1, {64, 1}},
    {"v.blk.0.ffn_up.bias", 1, {96, 1}},
    {"v.blk.0.ln1.weight", 1, {64, 1}},
    {"qf.query_embd", 2, {64, 4}},
};
#define N_SPECS ((int)(sizeof specs / sizeof specs[0]))

static float *spec_data(int i, int64_t *n) {
    *n = specs[i].ne[0] * specs[i].ne[1];
    float *d = malloc((size_t)*n * sizeof *d);
    uint64_t s = 1000 + (uint64_t)i;
    for (int64_t j = 0; j < *n; j++) d[j] = test_rng_float(&s) * (1.0f + (float)(j % 7));
    return d;
}

static void write_src(const char *path) {
    gguf_writer *w = gguf_writer_create();
    gguf_writer_set_str(w, "general.architecture", "llama");
    gguf_writer_set_str(w, "general.name", "quantize test");
    gguf_writer_set_u32(w, "general.file_type", 0);
    int32_t arr[3] = {1, 2, 3};
    gguf_writer_set_arr(w, "test.array", GGUF_TYPE_INT32, arr, 3);
    float *data[N_SPECS];
    for (int i = 0; i < N_SPECS; i++) {
        int64_t n;
        data[i] = spec_data(i, &n);
        gguf_writer_add_tensor(w, specs[i].name, MG_TYPE_F32, specs[i].n_dims, specs[i].ne, data[i]);
    }
    char err[256];
    mg_status st = gguf_writer_write_file(w, path, err, sizeof err);
    CHECK_MSG(st == MG_OK, "writing %s: %s", path, err);
    for (int i = 0; i < N_SPECS; i++) free(data[i]);
    gguf_writer_free(w);
}

static const char *src_path(void) {
    static char path[1024];
    if (!path[0]) {
        snprintf(path, sizeof path, "%s/quantize_src.gguf", test_data_dir());
        write_src(path);
    }
    return path;
}

static mg_status quantize(const char *in, const char *out, int type, char *err) {
    conv_quantize_params p = {0};
    p.type = type;
    return conv_quantize_file(in, out, &p, err, 256);
}

static int type_of(const gguf_file *f, const char *name) {
    const gguf_tensor *t = gguf_find_tensor(f, name);
    return t ? t->type : -1;
}

TEST(quantize_f32_lossless) {
    char out[1024], err[256];
    snprintf(out, sizeof out, "%s/quantize_f32.gguf", test_data_dir());
    CHECK(quantize(src_path(), out, MG_TYPE_F32, err) == MG_OK);
    gguf_file *a = NULL, *b = NULL;
    CHECK(gguf_open(&a, src_path(), err, sizeof err) == MG_OK);
    CHECK(gguf_open(&b, out, err, sizeof err) == MG_OK);
    if (!a || !b) goto done;
    CHECK_EQ_INT(gguf_n_tensors(a), gguf_n_tensors(b));
    for (int64_t i = 0; i < gguf_n_tensors(a); i++) {
        const gguf_tensor *x = gguf_tensor_at(a, i), *y = gguf_tensor_at(b, i);
        CHECK(x->name.len == y->name.len && memcmp(x->name.ptr, y->name.ptr, x->name.len) == 0);
        CHECK(x->type == y->type && x->nbytes == y->nbytes && memcmp(x->data, y->data, x->nbytes) == 0);
    }
    /* metadata copied; quantization_version added */
    CHECK_EQ_INT(gguf_n_kv(b), gguf_n_kv(a) + 1);
    const gguf_kv *kv = gguf_find_kv(b, "test.array");
    CHECK(kv && kv->n == 3);
    uint32_t ft = 99;
    CHECK(gguf_get_u32(b, "general.file_type", &ft, err, sizeof err) == MG_OK && ft == 0);
done:
    gguf_close(a);
    gguf_close(b);
}

TEST(quantize_float_round_trips) {
    char f16[1024], back[1024], f16b[1024], bf[1024], err[256];
    const char *d = test_data_dir();
    snprintf(f16, sizeof f16, "%s/quantize_f16.gguf", d);
    snprintf(back, sizeof back, "%s/quantize_f16_f32.gguf", d);
    snprintf(f16b, sizeof f16b, "%s/quantize_f16_f32_f16.gguf", d);
    snprintf(bf, sizeof bf, "%s/quantize_bf16.gguf", d);
    CHECK(quantize(src_path(), f16, MG_TYPE_F16, err) == MG_OK);
    CHECK(quantize(f16, back, MG_TYPE_F32, err) == MG_OK);
    CHECK(quantize(back, f16b, MG_TYPE_F16, err) == MG_OK);
    CHECK(quantize(src_path(), bf, MG_TYPE_BF16, err) == MG_OK);
    gguf_file *h = NULL, *r = NULL, *h2 = NULL, *b = NULL;
    gguf_open(&h, f16, err, sizeof err);
    gguf_open(&r, back, err, sizeof err);
    gguf_open(&h2, f16b, err, sizeof err);
    gguf_open(&b, bf, err, sizeof err);
    CHECK(h && r && h2 && b);
    if (!h || !r || !h2 || !b) goto done;
    uint32_t ft = 0;
    CHECK(gguf_get_u32(h, "general.file_type", &ft, err, sizeof err) == MG_OK && ft == 1);
    CHECK(gguf_get_u32(b, "general.file_type", &ft, err, sizeof err) == MG_OK && ft == 32);
    for (int i = 0; i < N_SPECS; i++) {
        int64_t n;
        float *src = spec_data(i, &n);
        const gguf_tensor *th = gguf_find_tensor(h, specs[i].name), *tr = gguf_find_tensor(r, specs[i].name);
        const gguf_tensor *th2 = gguf_find_tensor(h2, specs[i].name), *tb = gguf_find_tensor(b, specs[i].name);
        bool prot = conv_is_protected(specs[i].name, specs[i].n_dims);
        CHECK_MSG(th->type == (prot ? MG_TYPE_F32 : MG_TYPE_F16), "%s is %s in the f16 file", specs[i].name,
                  mg_type_name(th->type));
        CHECK(tb->type == (prot ? MG_TYPE_F32 : MG_TYPE_BF16));
        CHECK(tr->type == MG_TYPE_F32);
        /* f16 -> f32 -> f16 gives back the same bytes (fp16 values are exact in fp32) */
        CHECK(th2->nbytes == th->nbytes && memcmp(th2->data, th->data, th->nbytes) == 0);
        const float *rv = tr->data;
        int bad = 0, badb = 0;
        float *bv = malloc((size_t)n * sizeof *bv);
        mg_dequantize_row(tb->type, tb->data, bv, n);
        for (int64_t j = 0; j < n; j++) {
            float want = prot ? src[j] : mg_fp16_to_fp32(mg_fp32_to_fp16(src[j]));
            float wantb = prot ? src[j] : mg_bf16_to_fp32(mg_fp32_to_bf16(src[j]));
            if (rv[j] != want || fabsf(rv[j] - src[j]) > 1e-3f * fabsf(src[j]) + 1e-7f) bad++;
            if (bv[j] != wantb || fabsf(bv[j] - src[j]) > 8e-3f * fabsf(src[j]) + 1e-7f) badb++;
        }
        CHECK_MSG(bad == 0, "%s: %d values differ after f32 -> f16 -> f32", specs[i].name, bad);
        CHECK_MSG(badb == 0, "%s: %d values differ after f32 -> bf16", specs[i].name, badb);
        free(bv);
        free(src);
    }
done:
    gguf_close(h);
    gguf_close(r);
    gguf_close(h2);
    gguf_close(b);
}

/* Quantized tensors equal quant_ref.py's bytes for the same data; the rules hold. */
TEST(quantize_q8_q4_vs_reference) {
    const char *d = test_data_dir();
    char q8[1024], q4[1024], in[1024], err[256];
    snprintf(q8, sizeof q8, "%s/quantize_q8_0.gguf", d);
    snprintf(q4, sizeof q4, "%s/quantize_q4_0.gguf", d);
    CHECK(quantize(src_path(), q8, MG_TYPE_Q8_0, err) == MG_OK);
    CHECK(quantize(src_path(), q4, MG_TYPE_Q4_0, err) == MG_OK);
    gguf_file *a = NULL, *b = NULL;
    gguf_open(&a, q8, err, sizeof err);
    gguf_open(&b, q4, err, sizeof err);
    CHECK(a && b);
    if (!a || !b) goto done;
    uint32_t ft = 0;
    CHECK(gguf_get_u32(a, "general.file_type", &ft, err, sizeof err) == MG_OK && ft == 7);
    CHECK(gguf_get_u32(b, "general.file_type", &ft, err, sizeof err) == MG_OK && ft == 2);
    /* rules */
    CHECK_EQ_INT(type_of(a, "token_embd.weight"), MG_TYPE_Q8_0);
    CHECK_EQ_INT(type_of(b, "token_embd.weight"), MG_TYPE_Q4_0);
    CHECK_EQ_INT(type_of(a, "output.weight"), MG_TYPE_Q8_0);
    CHECK_EQ_INT(type_of(b, "output.weight"), MG_TYPE_Q8_0); /* llama.cpp: Q6_K; ours: Q8_0 */
    CHECK_EQ_INT(type_of(b, "blk.0.attn_q.weight"), MG_TYPE_Q4_0);
    CHECK_EQ_INT(type_of(b, "blk.0.odd.weight"), MG_TYPE_F16);
    const char *f32_names[] = {"blk.0.attn_norm.weight", "output_norm.weight", "v.position_embd", "v.class_embd",
                               "v.blk.0.ffn_up.bias", "v.blk.0.ln1.weight", "qf.query_embd"};
    for (size_t i = 0; i < sizeof f32_names / sizeof *f32_names; i++) {
        CHECK_MSG(type_of(a, f32_names[i]) == MG_TYPE_F32, "%s not F32 at q8_0", f32_names[i]);
        CHECK_MSG(type_of(b, f32_names[i]) == MG_TYPE_F32, "%s not F32 at q4_0", f32_names[i]);
    }
    /* bytes vs the NumPy port, for two matrices */
    const int which[2] = {2, 3};
    for (int k = 0; k < 2; k++) {
        int i = which[k];
        int64_t n;
        float *src = spec_data(i, &n);
        snprintf(in, sizeof in, "%s/quantize_ref_%d.f32", d, i);
        FILE *fp = fopen(in, "wb");
        fwrite(src, sizeof(float), (size_t)n, fp);
        fclose(fp);
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/quantize_ref_%d", d, i);
        int rc = test_run("mkdir -p %s && %s tests/ref/quant_ref.py quant %s %s", dir, test_python(), in, dir);
        CHECK_EQ_INT(rc, 0);
        char path[1200];
        size_t sz8 = 0, sz4 = 0;
        snprintf(path, sizeof path, "%s/q8_0.bin", dir);
        uint8_t *r8 = test_read_file(path, &sz8);
        snprintf(path, sizeof path, "%s/q4_0.bin", dir);
        uint8_t *r4 = test_read_file(path, &sz4);
        const gguf_tensor *t8 = gguf_find_tensor(a, specs[i].name), *t4 = gguf_find_tensor(b, specs[i].name);
        CHECK(r8 && t8 && sz8 == t8->nbytes && memcmp(r8, t8->data, sz8) == 0);
        CHECK(r4 && t4 && sz4 == t4->nbytes && memcmp(r4, t4->data, sz4) == 0);
        free(r8);
        free(r4);
        free(src);
    }
done:
    gguf_close(a);
    gguf_close(b);
}

TEST(quantize_keep_force_requantize) {
    const char *d = test_data_dir();
    char out[1024], q8[1024], re[1024], err[256];
    snprintf(out, sizeof out, "%s/quantize_kf.gguf", d);
    snprintf(q8, sizeof q8, "%s/quantize_q8_0.gguf", d);
    snprintf(re, sizeof re, "%s/quantize_requant.gguf", d);
    const char *keep[] = {"blk.*.attn_q.weight"};
    const char *fp[] = {"output.weight", "token_embd.*"};
    int ft[] = {MG_TYPE_F16, MG_TYPE_Q4_0};
    conv_quantize_params p = {0};
    p.type = MG_TYPE_Q8_0;
    p.keep = keep;
    p.n_keep = 1;
    p.force_pat = fp;
    p.force_type = ft;
    p.n_force = 2;
    CHECK(conv_quantize_file(src_path(), out, &p, err, sizeof err) == MG_OK);
    gguf_file *f = NULL;
    gguf_open(&f, out, err, sizeof err);
    CHECK(f != NULL);
    if (f) {
        CHECK_EQ_INT(type_of(f, "blk.0.attn_q.weight"), MG_TYPE_F32);
        CHECK_EQ_INT(type_of(f, "output.weight"), MG_TYPE_F16);
        CHECK_EQ_INT(type_of(f, "token_embd.weight"), MG_TYPE_Q4_0);
        CHECK_EQ_INT(type_of(f, "blk.0.ffn_down.weight"), MG_TYPE_Q8_0);
        gguf_close(f);
    }
    /* forcing a type whose block does not fit the rows fails */
    const char *fo[] = {"blk.0.odd.weight"};
    int fot[] = {MG_TYPE_Q8_0};
    conv_quantize_params p2 = {0};
    p2.type = MG_TYPE_F16;
    p2.force_pat = fo;
    p2.force_type = fot;
    p2.n_force = 1;
    CHECK(conv_quantize_file(src_path(), out, &p2, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(strstr(err, "blk.0.odd.weight") != NULL);
    /* requantizing needs the flag; the same type is a plain copy */
    if (access(q8, R_OK) != 0) CHECK(quantize(src_path(), q8, MG_TYPE_Q8_0, err) == MG_OK);
    remove(re);
    CHECK(quantize(q8, re, MG_TYPE_Q4_0, err) == MG_ERR_INVALID_ARG);
    CHECK(strstr(err, "--allow-requantize") != NULL);
    CHECK(access(re, F_OK) != 0);
    CHECK(quantize(q8, re, MG_TYPE_Q8_0, err) == MG_OK);
    conv_quantize_params p3 = {0};
    p3.type = MG_TYPE_Q4_0;
    p3.allow_requantize = true;
    CHECK(conv_quantize_file(q8, re, &p3, err, sizeof err) == MG_OK);
    gguf_open(&f, re, err, sizeof err);
    CHECK(f && type_of(f, "blk.0.attn_q.weight") == MG_TYPE_Q4_0);
    gguf_close(f);
}

TEST(quantize_bad_input) {
    const char *d = test_data_dir();
    char out[1024], bad[1024], err[256];
    snprintf(out, sizeof out, "%s/quantize_bad_out.gguf", d);
    snprintf(bad, sizeof bad, "%s/quantize_truncated.gguf", d);
    CHECK(quantize("/nonexistent/x.gguf", out, MG_TYPE_F16, err) == MG_ERR_IO);
    CHECK(quantize(src_path(), out, MG_TYPE_Q4_1, err) == MG_ERR_INVALID_ARG);
    CHECK(quantize(src_path(), src_path(), MG_TYPE_F16, err) == MG_ERR_INVALID_ARG);
    size_t n = 0;
    uint8_t *buf = test_read_file(src_path(), &n);
    CHECK(buf != NULL);
    if (buf) {
        FILE *fp = fopen(bad, "wb");
        fwrite(buf, 1, n / 2, fp);
        fclose(fp);
        free(buf);
    }
    remove(out);
    CHECK(quantize(bad, out, MG_TYPE_F16, err) == MG_ERR_FORMAT);
    CHECK(access(out, F_OK) != 0);
    /* CLI: usage errors exit 2, failures 1 */
    const char *bin = getenv("MG_BIN");
    if (bin && access(bin, X_OK) == 0) {
        CHECK_EQ_INT(test_run("%s quantize %s %s q5_k 2>/dev/null", bin, src_path(), out), 2);
        CHECK_EQ_INT(test_run("%s quantize %s %s q4_0 --force nonsense 2>/dev/null", bin, src_path(), out), 2);
        CHECK_EQ_INT(test_run("%s quantize %s %s 2>/dev/null", bin, src_path(), out), 2);
        CHECK_EQ_INT(test_run("%s quantize %s %s f16 2>/dev/null", bin, bad, out), 1);
        CHECK_EQ_INT(test_run("%s quantize %s %s q4_0 --keep 'v.*' 2>/dev/null", bin, src_path(), out), 0);
    }
}
