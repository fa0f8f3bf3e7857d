/*
 * fuzz_safetensors.c - libFuzzer target for the .safetensors reader: the input is opened as an
 * in-memory checkpoint and every tensor that validates is read raw and as float32.
 * Invariant: failures explain themselves, every accepted tensor lies inside the input (ASan).
 */
#include "ckpt.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static volatile unsigned sink;

/* The first value's bit pattern (a cast of a huge or NaN float to unsigned is undefined). */
static unsigned first_bits(const float *x) {
    uint32_t b;
    memcpy(&b, x, sizeof b);
    return b;
}

/* libFuzzer entry point: one input = one candidate .safetensors file. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256] = "";
    ckpt_file *f;
    if (ckpt_open_memory(&f, data, size, err, sizeof err) != MG_OK) {
        if (!err[0]) abort();
        return 0;
    }
    for (int64_t i = 0; i < ckpt_n_tensors(f); i++) {
        const ckpt_tensor *t = ckpt_tensor_at(f, i);
        if (t->n_elements > (1 << 20)) continue;
        size_t bytes = (size_t)t->n_elements * ckpt_type_size(t->type);
        unsigned char *raw = malloc(bytes + 1);
        float *x = malloc((size_t)t->n_elements * sizeof(float) + 1);
        if (raw && ckpt_read_raw(f, t, raw, bytes, err, sizeof err) == MG_OK && bytes) sink += raw[bytes - 1];
        if (x && ckpt_read_f32(f, t, x, t->n_elements, err, sizeof err) == MG_OK && t->n_elements)
            sink += first_bits(x);
        free(raw);
        free(x);
    }
    ckpt_close(f);
    return 0;
}
