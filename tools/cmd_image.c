/*
 * cmd_image.c - `minigpt image`: shows an image exactly as the model sees it. Decodes IMG,
 * squashes it to S x S with Pillow's bicubic filter and writes the 8-bit result as PNG and/or
 * the CLIP-normalised float32 tensor [3, S, S] as .npy. Uses only the public API.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: minigpt image IMG [--size S] [-o OUT.png] [--npy OUT.npy] [--max-pixels N]\n\n"
            "Decodes IMG (JPEG, PNG, WebP or BMP, recognised by content) as Pillow's\n"
            "convert('RGB') does, resizes it to S x S with Pillow's BICUBIC filter (MiniGPT's\n"
            "preprocessing: no crop, no aspect ratio kept) and writes:\n"
            "  -o OUT.png         the resized 8-bit image, before normalisation\n"
            "  --npy OUT.npy      the model input: float32 [3, S, S], (x/255 - mean) / std with\n"
            "                     the CLIP mean and std\n"
            "options:\n"
            "  --size S           side in pixels (default 224; MiniGPT-v2 uses 448)\n"
            "  --max-pixels N     refuse images with more than N pixels (default %llu)\n"
            "Without -o/--npy it prints the image size.\n",
            (unsigned long long)MG_IMAGE_MAX_PIXELS_DEFAULT);
}

/* Writes a float32 C-order .npy file of shape [3, s, s]. */
static int write_npy(const char *path, const float *data, int s) {
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, %d, %d), }",
                     s, s);
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    unsigned hl = (unsigned)(n + pad + 1);
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hl & 255),
                             (unsigned char)(hl >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, (size_t)n, f) == (size_t)n;
    for (int i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF;
    size_t cnt = (size_t)3 * s * s;
    ok = ok && fwrite(data, sizeof(float), cnt, f) == cnt; /* x86/ARM: little-endian */
    if (fclose(f) != 0) ok = 0;
    return ok ? 0 : -1;
}

int cmd_image(int argc, char **argv) {
    const char *in = NULL, *out_png = NULL, *out_npy = NULL;
    long long size = 224, max_pixels = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            usage(stdout);
            return 0;
        }
        int has_val = i + 1 < argc;
        if (strcmp(a, "--size") == 0 || strcmp(a, "-s") == 0) {
            if (!has_val || !cli_parse_int(argv[++i], 1, 16384, &size)) {
                fprintf(stderr, "minigpt image: --size needs an integer in 1..16384\n");
                return 2;
            }
        } else if (strcmp(a, "--max-pixels") == 0) {
            if (!has_val || !cli_parse_int(argv[++i], 1, (long long)1 << 40, &max_pixels)) {
                fprintf(stderr, "minigpt image: --max-pixels needs a positive integer\n");
                return 2;
            }
        } else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            if (!has_val) return usage(stderr), 2;
            out_png = argv[++i];
        } else if (strcmp(a, "--npy") == 0) {
            if (!has_val) return usage(stderr), 2;
            out_npy = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "minigpt image: unknown option '%s'\n", a);
            return 2;
        } else if (!in) {
            in = a;
        } else {
            fprintf(stderr, "minigpt image: more than one input image\n");
            return 2;
        }
    }
    if (!in) {
        usage(stderr);
        return 2;
    }
    char err[256];
    mg_image img, sq;
    if (mg_image_load_file(&img, in, (uint64_t)max_pixels, err, sizeof err) != MG_OK)
        return cli_error("image", "%s", err);
    if (!out_png && !out_npy) {
        printf("%s: %d x %d\n", in, img.w, img.h);
        mg_image_free(&img);
        return 0;
    }
    mg_status st = mg_image_resize_bicubic(&sq, &img, (int)size, (int)size, err, sizeof err);
    mg_image_free(&img);
    if (st != MG_OK) return cli_error("image", "%s", err);
    int rc = 0;
    if (out_png && mg_image_write_png(&sq, out_png, err, sizeof err) != MG_OK)
        rc = cli_error("image", "%s", err);
    if (rc == 0 && out_npy) {
        float *t = malloc((size_t)3 * sq.w * sq.h * sizeof(float));
        if (!t) {
            rc = cli_error("image", "out of memory");
        } else {
            mg_image_to_tensor(&sq, NULL, NULL, t);
            if (write_npy(out_npy, t, sq.w) != 0) rc = cli_error("image", "cannot write %s", out_npy);
            free(t);
        }
    }
    mg_image_free(&sq);
    return rc;
}
