/*
 * fuzz_zip.c - libFuzzer target for the zip reader and the torch zip loader: the input is parsed
 * as a zip (every entry's data fetched with the CRC checked, deflated ones inflated), then opened
 * as a torch checkpoint and every tensor read. Invariant: failures explain themselves, nothing
 * reads outside the input (ASan), inflation stays within deflate's ratio.
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

/* libFuzzer entry point: one input = one candidate zip / torch.save file. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256] = "";
    zip_archive z;
    if (zip_open(&z, data, size, err, sizeof err) == MG_OK) {
        for (size_t i = 0; i < z.n_entries; i++) {
            const uint8_t *p;
            uint8_t *owned;
            if (zip_entry_data(&z, &z.entries[i], 1, &p, &owned, err, sizeof err) == MG_OK && z.entries[i].size)
                sink += p[z.entries[i].size - 1];
            free(owned);
        }
    } else if (!err[0]) {
        abort();
    }
    zip_close(&z);

    ckpt_file *f;
    err[0] = 0;
    if (ckpt_open_memory(&f, data, size, err, sizeof err) == MG_OK) {
        for (int64_t i = 0; i < ckpt_n_tensors(f); i++) {
            const ckpt_tensor *t = ckpt_tensor_at(f, i);
            if (t->n_elements > (1 << 20)) continue;
            float *x = malloc((size_t)t->n_elements * sizeof(float) + 1);
            if (x && ckpt_read_f32(f, t, x, t->n_elements, err, sizeof err) == MG_OK && t->n_elements)
                sink += first_bits(x);
            free(x);
        }
        ckpt_close(f);
    } else if (!err[0]) {
        abort();
    }
    return 0;
}
