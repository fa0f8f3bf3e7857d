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

mg_fp16 mg_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffff;
    if (ax > 0x7f800000u) return (mg_fp16)(sign | 0x7e00); /* NaN */
    if (ax >= 0x477ff000u) return (mg_fp16)(sign | 0x7c00); /* rounds to inf */
    if (ax < 0x38800000u) {                                  /* result is subnormal or zero */
        if (ax < 0x33000000u) return (mg_fp16)sign;          /* < half of the smallest subnormal */
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14 + (113 - e) - 1 ... keeps 10-bit result */
        shift = 125 - e + 1;
        uint32_t res = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (res & 1))) res++;
        return (mg_fp16)(sign | res);
    }
    uint32_t res = ((ax >> 13) - (112u << 10));
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
