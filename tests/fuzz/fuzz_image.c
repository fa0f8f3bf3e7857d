/*
 * fuzz_image.c - libFuzzer target for the image loader: decodes the input from memory (JPEG,
 * PNG, WebP or BMP by magic), then resizes to 32 x 32 and normalises, as the model input path
 * does. Invariants: a failure always explains itself and leaves no pixels; a success yields an
 * image within the pixel cap whose every byte is readable (ASan) and a finite tensor.
 */
#include "image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Small enough that libFuzzer's memory limit never trips on a legitimate huge header. */
#define FUZZ_MAX_PIXELS ((uint64_t)1 << 22)

/* libFuzzer entry point: one input = one candidate image file. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mg_image img, sq;
    char err[256];
    err[0] = 0;
    if (mg_image_load_mem(&img, data, size, FUZZ_MAX_PIXELS, err, sizeof err) != MG_OK) {
        if (!err[0] || img.rgb) abort();
        return 0;
    }
    if (!img.rgb || img.w <= 0 || img.h <= 0 || (uint64_t)img.w * img.h > FUZZ_MAX_PIXELS) abort();
    if (mg_image_resize_bicubic(&sq, &img, 32, 32, err, sizeof err) != MG_OK) abort();
    float t[3 * 32 * 32];
    mg_image_to_tensor(&sq, NULL, NULL, t);
    for (int i = 0; i < 3 * 32 * 32; i++)
        if (!isfinite(t[i]) || t[i] < -2.0f || t[i] > 2.2f) abort();
    mg_image_free(&sq);
    mg_image_free(&img);
    return 0;
}
