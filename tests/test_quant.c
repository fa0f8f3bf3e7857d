/*
 * test_quant.c - element types against independent references: fp16 (numpy float16, all 65536
 * halves and ~1M floats incl. ties, subnormals, overflow, NaN), bf16 (torch.bfloat16), and Q8_0 /
 * Q4_0 quantization bytes identical to tests/ref/quant_ref.py (llama.cpp's _ref algorithms).
 */
#include "quant.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static void *read_expect(const char *dir, const char *name, size_t want) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    size_t n = 0;
    void *p = test_read_file(path, &n);
    if (p && n != want) {
        free(p);
        return NULL;
    }
    return p;
}

static float bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* floats that stress fp16/bf16 rounding: exact ties, neighbours of ties, subnormal range,
 * overflow threshold, specials; then random bit patterns. */
static float *conversion_inputs(int64_t *count) {
    int64_t n = test_quick() ? 200000 : 1000000;
    float *f = malloc((size_t)n * sizeof *f);
    if (!f) return NULL;
    int64_t i = 0;
    uint64_t rng = 12345;
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f, 65519.99f, 65520.0f,
                              -65520.0f, 1e10f, 5.96046448e-8f, 2.98023224e-8f, 2.98023259e-8f,
                              6.10351562e-5f, 6.09755516e-5f, 1e-45f, 3.4e38f};
    for (size_t s = 0; s < sizeof specials / sizeof specials[0]; s++) f[i++] = specials[s];
    /* every exponent in the half range with tie / tie+-1 mantissas (fp16 drops 13 bits,
     * bf16 drops 16) */
    for (uint32_t e = 90; e < 160 && i + 64 < n; e++) {
        for (int k = 0; k < 8; k++) {
            uint32_t m = (uint32_t)(test_rng_next(&rng) & 0x7fffff);
            uint32_t base = e << 23 | (m & ~0x1fffu);
            uint32_t t16 = base | 0x1000, b = e << 23 | (m & ~0xffffu), t_bf = b | 0x8000;
            uint32_t cand[] = {t16, t16 - 1, t16 + 1, t_bf, t_bf - 1, t_bf + 1, base};
            for (size_t c = 0; c < 7; c++) {
                f[i++] = bits_f(cand[c]);
                f[i++] = -bits_f(cand[c]);
            }
        }
    }
    while (i < n) {
        uint64_t r = test_rng_next(&rng);
        if (r & 1) /* any bit pattern (NaNs, infs, subnormals included) */
            f[i++] = bits_f((uint32_t)(r >> 32));
        else /* concentrated in the fp16 range */
            f[i++] = bits_f((uint32_t)(r >> 32) % (0x47800000u - 0x33000000u) + 0x33000000u) *
                     ((r >> 2 & 1) ? -1.0f : 1.0f);
    }
    *count = n;
    return f;
}

TEST(quant_fp16_vs_numpy) {
    const char *dir = test_data_dir();
    char hp[4096], fp[4096];
    snprintf(hp, sizeof hp, "%s/fp16_in.u16", dir);
    snprintf(fp, sizeof fp, "%s/fp16_in.f32", dir);
    uint16_t *h = malloc(65536 * 2);
    int64_t n = 0;
    float *f = conversion_inputs(&n);
    CHECK(h && f);
    if (!h || !f) return;
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    CHECK(write_file(hp, h, 65536 * 2));
    CHECK(write_file(fp, f, (size_t)n * 4));
    int rc = test_run("%s tests/ref/quant_ref.py fp16 %s %s %s", test_python(), hp, fp, dir);
    CHECK_EQ_INT(rc, 0);
    float *h2f = read_expect(dir, "h2f.f32", 65536 * 4);
    uint16_t *f2h = read_expect(dir, "f2h.u16", (size_t)n * 2);
    CHECK(h2f && f2h);
    if (h2f && f2h) {
        int bad = 0;
        for (int i = 0; i < 65536; i++) {
            float ours = mg_fp16_to_fp32((mg_fp16)i);
            bool same = isnan(h2f[i]) ? isnan(ours) : f_bits(ours) == f_bits(h2f[i]);
            if (!same && bad++ < 5) CHECK_MSG(0, "half 0x%04x -> %g, numpy %g", i, ours, h2f[i]);
        }
        CHECK_EQ_INT(bad, 0);
        bad = 0;
        for (int64_t i = 0; i < n; i++) {
            mg_fp16 ours = mg_fp32_to_fp16(f[i]);
            bool same = isnan(f[i]) ? ((ours & 0x7c00) == 0x7c00 && (ours & 0x3ff)) : ours == f2h[i];
            if (!same && bad++ < 5)
                CHECK_MSG(0, "float 0x%08x -> 0x%04x, numpy 0x%04x", f_bits(f[i]), ours, f2h[i]);
        }
        CHECK_EQ_INT(bad, 0);
    }
    /* round trip of every finite half is exact */
    int rt = 0;
    for (int i = 0; i < 65536; i++)
        if ((i & 0x7c00) != 0x7c00 && mg_fp32_to_fp16(mg_fp16_to_fp32((mg_fp16)i)) != i) rt++;
    CHECK_EQ_INT(rt, 0);
    free(h);
    free(f);
    free(h2f);
    free(f2h);
}

TEST(quant_bf16_vs_torch) {
    const char *dir = test_data_dir();
    char hp[4096], fp[4096];
    snprintf(hp, sizeof hp, "%s/bf16_in.u16", dir);
    snprintf(fp, sizeof fp, "%s/bf16_in.f32", dir);
    uint16_t *h = malloc(65536 * 2);
    int64_t n = 0;
    float *f = conversion_inputs(&n);
    CHECK(h && f);
    if (!h || !f) return;
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    CHECK(write_file(hp, h, 65536 * 2));
    CHECK(write_file(fp, f, (size_t)n * 4));
    int rc = test_run("%s tests/ref/quant_ref.py bf16 %s %s %s", test_python(), hp, fp, dir);
    CHECK_EQ_INT(rc, 0);
    float *b2f = read_expect(dir, "b2f.f32", 65536 * 4);
    uint16_t *f2b = read_expect(dir, "f2b.u16", (size_t)n * 2);
    CHECK(b2f && f2b);
    if (b2f && f2b) {
        int bad = 0;
        for (int i = 0; i < 65536; i++) {
            float ours = mg_bf16_to_fp32((mg_bf16)i);
            bool same = isnan(b2f[i]) ? isnan(ours) : f_bits(ours) == f_bits(b2f[i]);
            if (!same && bad++ < 5) CHECK_MSG(0, "bf16 0x%04x -> %g, torch %g", i, ours, b2f[i]);
        }
        CHECK_EQ_INT(bad, 0);
        bad = 0;
        for (int64_t i = 0; i < n; i++) {
            mg_bf16 ours = mg_fp32_to_bf16(f[i]);
            bool same = isnan(f[i]) ? ((ours & 0x7f80) == 0x7f80 && (ours & 0x7f)) : ours == f2b[i];
            if (!same && bad++ < 5)
                CHECK_MSG(0, "float 0x%08x -> 0x%04x, torch 0x%04x", f_bits(f[i]), ours, f2b[i]);
        }
        CHECK_EQ_INT(bad, 0);
    }
    free(h);
    free(f);
    free(b2f);
    free(f2b);
}

/* Blocks of 32: random at several scales, then edge cases. */
static float *quant_inputs(int64_t *count) {
    const int64_t nblk = test_quick() ? 512 : 4096;
    float *x = malloc((size_t)nblk * 32 * sizeof *x);
    if (!x) return NULL;
    uint64_t rng = 777;
    for (int64_t b = 0; b < nblk; b++) {
        float *v = x + b * 32;
        const float scale = powf(10.0f, (float)(b % 13) - 6.0f);
        for (int j = 0; j < 32; j++) v[j] = test_rng_float(&rng) * scale;
        switch (b % 16) {
        case 0: memset(v, 0, 32 * sizeof *v); break;                      /* zeros */
        case 1: for (int j = 0; j < 32; j++) v[j] = 0.37f; break;         /* all equal */
        case 2: for (int j = 0; j < 32; j++) v[j] = -2.5f; break;         /* all equal negative */
        case 3: v[7] = -50.0f * scale; break;                             /* negative max */
        case 4: v[20] = 1e30f; break;                                     /* huge (fp16 d = inf) */
        case 5: for (int j = 0; j < 32; j++) v[j] *= 1e-30f; break;       /* tiny */
        case 6: v[3] = 70000.0f; v[4] = -70000.0f; break;                 /* tie in |max| */
        case 7: for (int j = 0; j < 32; j++) v[j] = (float)(j - 16) * 0.5f; break; /* ties */
        case 8: for (int j = 0; j < 32; j++) v[j] = (float)((j % 17) - 8); break;
        default: break;
        }
    }
    *count = nblk * 32;
    return x;
}

TEST(quant_q8_0_q4_0_vs_numpy) {
    const char *dir = test_data_dir();
    int64_t n = 0;
    float *x = quant_inputs(&n);
    CHECK(x != NULL);
    if (!x) return;
    char in[4096];
    snprintf(in, sizeof in, "%s/quant_in.f32", dir);
    CHECK(write_file(in, x, (size_t)n * 4));
    int rc = test_run("%s tests/ref/quant_ref.py quant %s %s", test_python(), in, dir);
    CHECK_EQ_INT(rc, 0);
    const int types[2] = {MG_TYPE_Q8_0, MG_TYPE_Q4_0};
    const char *qname[2] = {"q8_0.bin", "q4_0.bin"}, *dname[2] = {"dq8_0.f32", "dq4_0.f32"};
    for (int t = 0; t < 2; t++) {
        size_t rs = mg_row_size(types[t], n);
        CHECK(rs == (size_t)(n / 32) * (t == 0 ? 34 : 18));
        unsigned char *ours = malloc(rs);
        float *deq = malloc((size_t)n * 4);
        unsigned char *ref = read_expect(dir, qname[t], rs);
        float *refdq = read_expect(dir, dname[t], (size_t)n * 4);
        CHECK(ours && deq && ref && refdq);
        if (ours && deq && ref && refdq) {
            mg_quantize_row(types[t], x, ours, n);
            int bad = 0;
            for (int64_t b = 0; b < n / 32; b++) {
                size_t bs = t == 0 ? 34 : 18;
                if (memcmp(ours + b * bs, ref + b * bs, bs) != 0 && bad++ < 5)
                    CHECK_MSG(0, "%s block %lld differs from numpy", qname[t], (long long)b);
            }
            CHECK_EQ_INT(bad, 0);
            /* dequantize the reference bytes and compare exactly with numpy's dequantization */
            mg_dequantize_row(types[t], ref, deq, n);
            bad = 0;
            for (int64_t i = 0; i < n; i++) {
                bool same = isnan(refdq[i]) ? isnan(deq[i]) : deq[i] == refdq[i];
                if (!same && bad++ < 5)
                    CHECK_MSG(0, "%s dequant[%lld] %g vs %g", dname[t], (long long)i, deq[i], refdq[i]);
            }
            CHECK_EQ_INT(bad, 0);
        }
        free(ours);
        free(deq);
        free(ref);
        free(refdq);
    }
    free(x);
}

/* Error of a quantize/dequantize round trip stays within the format's half step: Q8_0 within
 * d/2 (+ fp16 rounding of d), Q4_0 within d (its positive side clips at 7). */
TEST(quant_roundtrip_error_bound) {
    uint64_t rng = 99;
    float x[256], y[256];
    block_q8_0 q8[8];
    block_q4_0 q4[8];
    int bad8 = 0, bad4 = 0;
    for (int it = 0; it < 200; it++) {
        for (int i = 0; i < 256; i++) x[i] = test_rng_float(&rng) * (float)(it + 1);
        mg_quantize_row(MG_TYPE_Q8_0, x, q8, 256);
        mg_dequantize_row(MG_TYPE_Q8_0, q8, y, 256);
        for (int i = 0; i < 256; i++) {
            float d = mg_fp16_to_fp32(q8[i / 32].d);
            if (fabsf(x[i] - y[i]) > 0.5f * d + 128 * d * 1e-3f) bad8++;
        }
        mg_quantize_row(MG_TYPE_Q4_0, x, q4, 256);
        mg_dequantize_row(MG_TYPE_Q4_0, q4, y, 256);
        for (int i = 0; i < 256; i++) {
            float d = fabsf(mg_fp16_to_fp32(q4[i / 32].d));
            if (fabsf(x[i] - y[i]) > 1.0f * d + 8 * d * 1e-3f) bad4++;
        }
    }
    CHECK_EQ_INT(bad8, 0);
    CHECK_EQ_INT(bad4, 0);
}

TEST(quant_traits) {
    CHECK(mg_get_type_traits(MG_TYPE_Q4_0)->blck_size == 32);
    CHECK(mg_get_type_traits(MG_TYPE_Q8_0)->type_size == 34);
    CHECK(mg_get_type_traits(-1) == NULL);
    CHECK(mg_get_type_traits(4) == NULL); /* removed ggml type id */
    CHECK(mg_get_type_traits(MG_TYPE_COUNT) == NULL);
    CHECK_EQ_INT(mg_row_size(MG_TYPE_Q4_0, 33), 0);
    CHECK_EQ_INT(mg_row_size(MG_TYPE_F16, 7), 14);
    CHECK_EQ_INT(mg_row_size(MG_TYPE_F32, INT64_MAX), 0); /* size overflow */
    CHECK(mg_type_from_name("Q4_0") == MG_TYPE_Q4_0);
}
