/*
 * quant.c - tensor element types: the traits table (names and block sizes identical to ggml's),
 * fp16/bf16 conversions and the reference (de)quantization of the block formats.
 * Block layouts are byte-for-byte those of llama.cpp, so GGUF files interoperate.
 */
#include "quant.h"

#include <math.h>
#include <string.h>
#include <strings.h>

_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 must match ggml");
_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0 must match ggml");

/* Indexed by ggml type id. Types we do not compute with still get their sizes so that files
 * holding them can be listed and validated. */
static const mg_type_traits traits[MG_TYPE_COUNT] = {
    [MG_TYPE_F32] = {"f32", 1, 4, false, true},
    [MG_TYPE_F16] = {"f16", 1, 2, false, true},
    [MG_TYPE_Q4_0] = {"q4_0", 32, 18, true, true},
    [MG_TYPE_Q4_1] = {"q4_1", 32, 20, true, false},
    [MG_TYPE_Q5_0] = {"q5_0", 32, 22, true, false},
    [MG_TYPE_Q5_1] = {"q5_1", 32, 24, true, false},
    [MG_TYPE_Q8_0] = {"q8_0", 32, 34, true, true},
    [9] = {"q8_1", 32, 36, true, false},
    [10] = {"q2_K", 256, 84, true, false},
    [11] = {"q3_K", 256, 110, true, false},
    [12] = {"q4_K", 256, 144, true, false},
    [13] = {"q5_K", 256, 176, true, false},
    [14] = {"q6_K", 256, 210, true, false},
    [15] = {"q8_K", 256, 292, true, false},
    [MG_TYPE_I8] = {"i8", 1, 1, false, false},
    [MG_TYPE_I16] = {"i16", 1, 2, false, false},
    [MG_TYPE_I32] = {"i32", 1, 4, false, false},
    [MG_TYPE_I64] = {"i64", 1, 8, false, false},
    [MG_TYPE_F64] = {"f64", 1, 8, false, false},
    [MG_TYPE_BF16] = {"bf16", 1, 2, false, true},
};

const mg_type_traits *mg_get_type_traits(int type) {
    if (type < 0 || type >= MG_TYPE_COUNT || !traits[type].name) return NULL;
    return &traits[type];
}

const char *mg_type_name(int type) {
    const mg_type_traits *t = mg_get_type_traits(type);
    return t ? t->name : NULL;
}

int mg_type_from_name(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < MG_TYPE_COUNT; i++)
        if (traits[i].name && strcasecmp(traits[i].name, name) == 0) return i;
    return -1;
}

size_t mg_row_size(int type, int64_t n) {
    const mg_type_traits *t = mg_get_type_traits(type);
    if (!t || n < 0 || n % t->blck_size) return 0;
    size_t sz;
    if (!mg_mul_ok((size_t)(n / t->blck_size), t->type_size, &sz)) return 0;
    return sz;
}

/* ==== fp16 / bf16 ==== */

float mg_fp16_to_fp32(mg_fp16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | man << 13;
    } else {
        bits = sign | (exp + 112) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest, ties to even (IEEE, as F16C, numpy and ggml). NaN stays NaN (quiet),
 * values at or above 65520 become infinity, tiny values become subnormals or signed zero. */
mg_fp16 mg_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffff;
    if (ax > 0x7f800000u) return (mg_fp16)(sign | 0x7e00 | ((ax >> 13) & 0x3ff)); /* NaN */
    if (ax >= 0x477ff000u) return (mg_fp16)(sign | 0x7c00); /* >= 65520: rounds to inf */
    if (ax < 0x38800000u) {                                  /* below 2^-14: subnormal half */
        if (ax < 0x33000000u) return (mg_fp16)sign;          /* <= 2^-25 rounds to zero */
        /* value = m * 2^(e-150); in units of 2^-24 that is m >> (126 - e), shift in 14..24 */
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e;
        uint32_t res = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (res & 1))) res++; /* may carry into the normal range */
        return (mg_fp16)(sign | res);
    }
    /* normal: rebias the exponent (127 -> 15) and drop 13 mantissa bits with RNE; a carry out
     * of the mantissa correctly bumps the exponent */
    uint32_t res = (ax >> 13) - (112u << 10);
    uint32_t rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (res & 1))) res++;
    return (mg_fp16)(sign | res);
}

float mg_bf16_to_fp32(mg_bf16 h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

mg_bf16 mg_fp32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000u) return (mg_bf16)((x >> 16) | 64); /* quiet NaN */
    return (mg_bf16)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

/* ==== block formats ==== */

/* llama.cpp's quantize_row_q8_0_ref: d = max|x| / 127, q = roundf(x / d) (half away from zero).
 * A NaN product (only from non-finite input) becomes 0 and values are clamped, so bad data
 * cannot cause an undefined float->int conversion; finite input never reaches the clamp. */
static void quantize_q8_0(const float *x, block_q8_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float *xb = x + i * QK8_0;
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) {
            float a = fabsf(xb[j]);
            if (a > amax) amax = a;
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = mg_fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++) {
            float v = xb[j] * id;
            if (v != v) v = 0.0f;
            v = roundf(v);
            if (v > 127.0f) v = 127.0f;
            if (v < -127.0f) v = -127.0f;
            y[i].qs[j] = (int8_t)v;
        }
    }
}

/* llama.cpp's quantize_row_q4_0_ref: the signed value of largest magnitude maps to -8,
 * d = max / -8, q = min(15, trunc(x / d + 8.5)); element j in the low nibble of byte j,
 * element j + 16 in its high nibble. Same NaN/clamp guard as Q8_0. */
static void quantize_q4_0(const float *x, block_q4_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float *xb = x + i * QK4_0;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK4_0; j++) {
            if (amax < fabsf(xb[j])) {
                amax = fabsf(xb[j]);
                max = xb[j];
            }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = mg_fp32_to_fp16(d);
        uint8_t q[QK4_0];
        for (int j = 0; j < QK4_0; j++) {
            float v = xb[j] * id + 8.5f;
            if (v != v) v = 8.5f;
            if (v < 0.0f) v = 0.0f;
            if (v > 15.0f) v = 15.0f;
            q[j] = (uint8_t)v; /* truncation, as the (int8_t) cast in ggml */
        }
        for (int j = 0; j < QK4_0 / 2; j++) y[i].qs[j] = (uint8_t)(q[j] | q[j + QK4_0 / 2] << 4);
    }
}

/* Converts n elements of a row of `type` to fp32. Types without a routine (see traits
 * .supported) and n not a multiple of the block size give zeros. */
void mg_dequantize_row(int type, const void *src, float *dst, int64_t n) {
    const mg_type_traits *t = mg_get_type_traits(type);
    if (n <= 0) return;
    if (!t || !t->supported || n % t->blck_size) {
        memset(dst, 0, (size_t)n * sizeof(float));
        return;
    }
    switch (type) {
    case MG_TYPE_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case MG_TYPE_F16: {
        const mg_fp16 *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = mg_fp16_to_fp32(h[i]);
        break;
    }
    case MG_TYPE_BF16: {
        const mg_bf16 *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = mg_bf16_to_fp32(h[i]);
        break;
    }
    case MG_TYPE_Q8_0: {
        const block_q8_0 *b = src;
        for (int64_t i = 0; i < n / QK8_0; i++) {
            const float d = mg_fp16_to_fp32(b[i].d);
            for (int j = 0; j < QK8_0; j++) dst[i * QK8_0 + j] = b[i].qs[j] * d;
        }
        break;
    }
    case MG_TYPE_Q4_0: {
        const block_q4_0 *b = src;
        for (int64_t i = 0; i < n / QK4_0; i++) {
            const float d = mg_fp16_to_fp32(b[i].d);
            for (int j = 0; j < QK4_0 / 2; j++) {
                dst[i * QK4_0 + j] = ((b[i].qs[j] & 0x0f) - 8) * d;
                dst[i * QK4_0 + j + QK4_0 / 2] = ((b[i].qs[j] >> 4) - 8) * d;
            }
        }
        break;
    }
    default: memset(dst, 0, (size_t)n * sizeof(float)); break;
    }
}

/* Converts n fp32 values to a row of `type` with the reference algorithm (llama.cpp's _ref
 * routines for block types, RNE for fp16/bf16). Unsupported types or a bad n write nothing. */
void mg_quantize_row(int type, const float *src, void *dst, int64_t n) {
    const mg_type_traits *t = mg_get_type_traits(type);
    if (n <= 0 || !t || !t->supported || n % t->blck_size) return;
    switch (type) {
    case MG_TYPE_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case MG_TYPE_F16: {
        mg_fp16 *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = mg_fp32_to_fp16(src[i]);
        break;
    }
    case MG_TYPE_BF16: {
        mg_bf16 *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = mg_fp32_to_bf16(src[i]);
        break;
    }
    case MG_TYPE_Q8_0: quantize_q8_0(src, dst, n / QK8_0); break;
    case MG_TYPE_Q4_0: quantize_q4_0(src, dst, n / QK4_0); break;
    default: break;
    }
}
