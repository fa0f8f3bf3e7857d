/*
 * quant.h - tensor element types: traits table, fp16/bf16 conversion, the block layouts of
 * llama.cpp (Q8_0, Q4_0, ...) and their reference quantize/dequantize routines.
 * Block structs are asserted to match ggml's sizes byte for byte.
 */
#ifndef MG_QUANT_H
#define MG_QUANT_H

#include "internal.h"

typedef uint16_t mg_fp16;
typedef uint16_t mg_bf16;

#define QK8_0 32
typedef struct {
    mg_fp16 d;        /* scale */
    int8_t qs[QK8_0]; /* quants */
} block_q8_0;         /* 34 bytes */

#define QK4_0 32
typedef struct {
    mg_fp16 d;
    uint8_t qs[QK4_0 / 2]; /* low nibble = element j, high nibble = element j+16 */
} block_q4_0;              /* 18 bytes */

typedef struct {
    const char *name;  /* llama.cpp spelling */
    int64_t blck_size; /* elements per block (1 for plain types) */
    size_t type_size;  /* bytes per block */
    bool is_quantized;
    bool supported;    /* we can dequantize it and use it in matmul */
} mg_type_traits;

/* Traits of a type id, or NULL if the id is unknown (not a ggml type we know). */
const mg_type_traits *mg_get_type_traits(int type);
/* Bytes for n elements of a row of type; 0 if n is not a multiple of the block size or type unknown. */
size_t mg_row_size(int type, int64_t n);

float mg_fp16_to_fp32(mg_fp16 h);
mg_fp16 mg_fp32_to_fp16(float f);  /* round to nearest even, as ggml/numpy */
float mg_bf16_to_fp32(mg_bf16 h);
mg_bf16 mg_fp32_to_bf16(float f);  /* round to nearest even; NaN kept quiet (as ggml) */

/* Reference (de)quantization of n elements (n multiple of the block size). */
void mg_dequantize_row(int type, const void *src, float *dst, int64_t n);
void mg_quantize_row(int type, const float *src, void *dst, int64_t n);

#endif
