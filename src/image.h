/*
 * image.h - internals of the image loader shared by image.c (JPEG, PNG, WebP, resize, tensor)
 * and bmp.c (the BMP parser). The public entry points are in minigpt.h, section "Images".
 * Every decoder produces 8-bit RGB exactly as Pillow 9.4's convert('RGB') of the same file.
 */
#ifndef MG_IMAGE_H
#define MG_IMAGE_H

#include "internal.h"

/* Largest encoded file mg_image_load_file reads (bytes). */
#define MG_IMAGE_MAX_FILE_BYTES ((size_t)1 << 30)

/* Checks w x h against the pixel cap (max_pixels 0: the default) and allocates img->rgb
 * [h, w, 3] uninitialised. Fails with MG_ERR_FORMAT for empty sizes, MG_ERR_UNSUPPORTED over the
 * cap, MG_ERR_NOMEM if malloc fails. On failure img is zeroed. */
mg_status mg_image_alloc(mg_image *img, uint64_t w, uint64_t h, uint64_t max_pixels, char *err,
                         size_t err_len);

/* Decodes a BMP file held in memory (data starts with "BM") the way Pillow's BmpImagePlugin
 * does: 1/4/8-bit palette, 16-bit 5-5-5 and bitfields 5-6-5, 24-bit, 32-bit (BI_RGB and the
 * bitfield layouts Pillow knows), RLE8/RLE4, bottom-up and top-down. */
mg_status mg_bmp_decode(mg_image *out, const uint8_t *data, size_t size, uint64_t max_pixels,
                        char *err, size_t err_len);

#endif
