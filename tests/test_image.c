/*
 * test_image.c - the image loader against Pillow 9.4 and torch. tests/ref/image_ref.py builds a
 * corpus (JPEG/PNG/WebP/BMP in many layouts) and records Pillow's convert('RGB'), its BICUBIC
 * resizes and torch's normalised tensors; every comparison here demands identical bytes (and a
 * tensor difference <= 1e-6). Truncated and corrupted files must fail cleanly, never crash.
 */
#include "image.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The reference corpus directory, generated once per run (again when the script changed). */
static const char *ref_dir(void) {
    static char dir[4096];
    static int state; /* 0 unknown, 1 ready, -1 failed */
    if (state == 0) {
        snprintf(dir, sizeof dir, "%s/image%s", test_data_dir(), test_quick() ? "-quick" : "");
        char man[4200];
        snprintf(man, sizeof man, "%s/manifest.txt", dir);
        struct stat sm, ss;
        int fresh = stat(man, &sm) == 0 && stat("tests/ref/image_ref.py", &ss) == 0 &&
                    sm.st_mtime >= ss.st_mtime;
        if (!fresh && test_run("'%s' tests/ref/image_ref.py '%s'%s", test_python(), dir,
                               test_quick() ? " --quick" : "") != 0) {
            state = -1;
        } else {
            state = stat(man, &sm) == 0 ? 1 : -1;
        }
    }
    return state == 1 ? dir : NULL;
}

static FILE *open_ref(const char *name) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", ref_dir(), name);
    return fopen(p, "r");
}

/* Compares n bytes; returns the largest absolute difference and counts differing bytes. */
static int max_diff(const uint8_t *a, const uint8_t *b, size_t n, size_t *n_diff) {
    int m = 0;
    *n_diff = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        if (d) (*n_diff)++;
        if (d > m) m = d;
    }
    return m;
}

static uint64_t weighted_hash(const uint8_t *p, size_t n) {
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++) h += ((uint64_t)i * 2654435761u + 1) * p[i];
    return h;
}

static int load_ref_file(const char *file, mg_image *img) {
    char p[4200], err[256];
    snprintf(p, sizeof p, "%s/%s", ref_dir(), file);
    mg_status st = mg_image_load_file(img, p, 0, err, sizeof err);
    if (st != MG_OK) printf("    %s: %s\n", file, err);
    return st == MG_OK;
}

/* Reads NAME.rgb-style raw references of exactly n bytes. */
static uint8_t *read_raw(const char *name, size_t n) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", ref_dir(), name);
    size_t got = 0;
    uint8_t *b = test_read_file(p, &got);
    if (b && got != n) {
        free(b);
        return NULL;
    }
    return b;
}

TEST(image_decode_matches_pillow) {
    if (!ref_dir()) {
        CHECK_MSG(0, "tests/ref/image_ref.py failed");
        return;
    }
    FILE *f = open_ref("manifest.txt");
    CHECK(f != NULL);
    if (!f) return;
    char kind[4], name[128], file[160];
    int w, h, n_files = 0, n_exact = 0;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%3s %127s %159s %d %d", kind, name, file, &w, &h) != 5 || kind[0] != 'D')
            continue;
        n_files++;
        mg_image img;
        if (!load_ref_file(file, &img)) {
            CHECK_MSG(0, "%s: decode failed", file);
            continue;
        }
        CHECK_MSG(img.w == w && img.h == h, "%s: size %dx%d, Pillow %dx%d", file, img.w, img.h, w, h);
        char rn[200];
        snprintf(rn, sizeof rn, "%s.rgb", name);
        uint8_t *ref = read_raw(rn, (size_t)w * h * 3);
        CHECK_MSG(ref != NULL, "%s: reference missing", rn);
        if (ref && img.w == w && img.h == h) {
            size_t nd;
            int md = max_diff(img.rgb, ref, (size_t)w * h * 3, &nd);
            CHECK_MSG(md == 0, "%s: max diff %d over %zu bytes", file, md, nd);
            n_exact += md == 0;
        }
        free(ref);
        mg_image_free(&img);
    }
    fclose(f);
    printf("    %d/%d files decode to Pillow's exact bytes\n", n_exact, n_files);
    CHECK(n_files >= 60);
}

TEST(image_resize_matches_pillow) {
    if (!ref_dir()) {
        CHECK_MSG(0, "tests/ref/image_ref.py failed");
        return;
    }
    FILE *f = open_ref("manifest.txt");
    CHECK(f != NULL);
    if (!f) return;
    char kind[4], name[128], file[160], cur[128] = "";
    char line[512];
    int n_cases = 0, n_exact = 0;
    mg_image img = {0};
    while (fgets(line, sizeof line, f)) {
        int w, h;
        if (sscanf(line, "%3s %127s %159s %d %d", kind, name, file, &w, &h) == 5 && kind[0] == 'D') {
            mg_image_free(&img);
            cur[0] = 0;
            if (load_ref_file(file, &img)) snprintf(cur, sizeof cur, "%s", name);
            continue;
        }
        if (sscanf(line, "%3s %127s %d %d", kind, name, &w, &h) != 4 || kind[0] != 'R') continue;
        n_cases++;
        if (strcmp(cur, name) != 0) {
            CHECK_MSG(0, "%s: not decoded", name);
            continue;
        }
        mg_image out;
        char err[256], rn[200];
        mg_status st = mg_image_resize_bicubic(&out, &img, w, h, err, sizeof err);
        CHECK_MSG(st == MG_OK, "%s -> %dx%d: %s", name, w, h, err);
        if (st != MG_OK) continue;
        snprintf(rn, sizeof rn, "%s.%dx%d.rgb", name, w, h);
        uint8_t *ref = read_raw(rn, (size_t)w * h * 3);
        CHECK_MSG(ref != NULL, "%s: reference missing", rn);
        if (ref) {
            size_t nd;
            int md = max_diff(out.rgb, ref, (size_t)w * h * 3, &nd);
            CHECK_MSG(md == 0, "%s (%dx%d) -> %dx%d: max diff %d over %zu bytes", name, img.w,
                      img.h, w, h, md, nd);
            n_exact += md == 0;
        }
        free(ref);
        mg_image_free(&out);
    }
    mg_image_free(&img);
    fclose(f);
    printf("    %d/%d resizes equal Pillow's bytes\n", n_exact, n_cases);
    CHECK(n_cases >= 130);
}

TEST(image_tensor_matches_torch) {
    if (!ref_dir()) {
        CHECK_MSG(0, "tests/ref/image_ref.py failed");
        return;
    }
    FILE *f = open_ref("manifest.txt");
    CHECK(f != NULL);
    if (!f) return;
    char kind[4], name[128], file[160], line[512];
    int n_cases = 0;
    double worst = 0;
    while (fgets(line, sizeof line, f)) {
        int s;
        if (sscanf(line, "%3s %127s %d", kind, name, &s) != 3 || kind[0] != 'T') continue;
        n_cases++;
        char p[4400], err[256];
        /* find the file name of NAME in the D lines */
        snprintf(file, sizeof file, "%s", name);
        FILE *g = open_ref("manifest.txt");
        char l2[512], k2[4], n2[128], f2[160];
        int w2, h2;
        while (g && fgets(l2, sizeof l2, g))
            if (sscanf(l2, "%3s %127s %159s %d %d", k2, n2, f2, &w2, &h2) == 5 && k2[0] == 'D' &&
                strcmp(n2, name) == 0)
                snprintf(file, sizeof file, "%s", f2);
        if (g) fclose(g);
        snprintf(p, sizeof p, "%s/%s", ref_dir(), file);
        float *t = malloc((size_t)3 * s * s * sizeof(float));
        mg_status st = mg_image_preprocess_file(p, s, 0, t, err, sizeof err);
        CHECK_MSG(st == MG_OK, "%s: %s", file, err);
        snprintf(p, sizeof p, "%s/%s.%d.npy", ref_dir(), name, s);
        int64_t shape[4];
        int nd = 0;
        float *ref = test_read_npy_f32(p, shape, &nd);
        CHECK_MSG(ref && nd == 3 && shape[0] == 3 && shape[1] == s && shape[2] == s, "%s: bad npy", p);
        if (st == MG_OK && ref && nd == 3) {
            double md = 0;
            size_t n_ne = 0;
            for (size_t i = 0; i < (size_t)3 * s * s; i++) {
                double d = t[i] > ref[i] ? t[i] - ref[i] : ref[i] - t[i];
                if (d > md) md = d;
                n_ne += t[i] != ref[i];
            }
            CHECK_MSG(md <= 1e-6, "%s at %d: max abs diff %.3g", name, s, md);
            /* same float32 operations in the same order: not one bit may differ */
            CHECK_MSG(n_ne == 0, "%s at %d: %zu values not bit-identical (max %.3g)", name, s,
                      n_ne, md);
            if (md > worst) worst = md;
        }
        free(ref);
        free(t);
    }
    fclose(f);
    printf("    %d tensors vs torch: max abs diff %.3g\n", n_cases, worst);
    CHECK(n_cases >= 10);
}

/* Pillow's verdict on files cut short: we may never accept what Pillow rejects, and where both
 * decode, the pixels must agree. */
TEST(image_truncated_like_pillow) {
    if (!ref_dir()) {
        CHECK_MSG(0, "tests/ref/image_ref.py failed");
        return;
    }
    FILE *f = open_ref("trunc.txt");
    CHECK(f != NULL);
    if (!f) return;
    char line[512], name[128], file[160], prev[160] = "";
    uint8_t *data = NULL;
    size_t size = 0;
    int n = 0, agree = 0, stricter = 0;
    while (fgets(line, sizeof line, f)) {
        size_t len;
        int ok;
        unsigned long long hash;
        if (sscanf(line, "%127s %159s %zu %d %llx", name, file, &len, &ok, &hash) != 5) continue;
        if (strcmp(file, prev) != 0) {
            free(data);
            char p[4200];
            snprintf(p, sizeof p, "%s/%s", ref_dir(), file);
            data = test_read_file(p, &size);
            snprintf(prev, sizeof prev, "%s", file);
        }
        if (!data || len > size) {
            CHECK_MSG(0, "%s: cannot read", file);
            continue;
        }
        n++;
        /* a private copy of exactly len bytes, so ASan sees any read past the cut */
        uint8_t *cut = malloc(len ? len : 1);
        memcpy(cut, data, len);
        mg_image img;
        char err[256];
        mg_status st = mg_image_load_mem(&img, cut, len, 0, err, sizeof err);
        free(cut);
        if (st == MG_OK) {
            CHECK_MSG(ok, "%s cut to %zu bytes: Pillow fails, we decode", file, len);
            if (ok) {
                uint64_t hh = weighted_hash(img.rgb, (size_t)img.w * img.h * 3);
                CHECK_MSG(hh == hash, "%s cut to %zu bytes: pixels differ from Pillow's", file, len);
                agree += hh == hash;
            }
            mg_image_free(&img);
        } else {
            CHECK_MSG(img.rgb == NULL, "failed decode left pixels");
            if (ok) {
                stricter++;
                printf("    %s cut to %zu bytes: Pillow decodes, we fail (%s)\n", file, len, err);
            } else {
                agree++;
            }
        }
    }
    free(data);
    fclose(f);
    printf("    %d cuts: %d agree with Pillow, %d where we are stricter\n", n, agree, stricter);
    CHECK(n >= 100);
    CHECK(stricter <= n / 20);
}

/* Every prefix (or many of them) and thousands of single-byte corruptions of each format: a
 * clean status or an image, never a crash (this test earns its keep under ASan/UBSan). */
TEST(image_corrupt_never_crashes) {
    if (!ref_dir()) {
        CHECK_MSG(0, "tests/ref/image_ref.py failed");
        return;
    }
    static const char *files[] = {"jpeg_2x3.jpg", "jpeg_progressive.jpg", "jpeg_cmyk.jpg",
                                  "jpeg_gray.jpg", "png_rgb.png", "png_interlaced.png",
                                  "png_palette_short.png", "png_gray16.png", "webp_lossy.webp",
                                  "webp_lossless_alpha.webp", "bmp_rgb24.bmp", "bmp_rle8.bmp",
                                  "bmp_rle4.bmp", "bmp_p4.bmp", "bmp_v5_bgra.bmp", "bmp_core12.bmp"};
    uint64_t rng = 1234;
    int n_runs = 0, n_ok = 0;
    int budget = test_quick() ? 100 : 300; /* decodes per file and kind of damage */
    for (size_t fi = 0; fi < MG_ARRAY_LEN(files); fi++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", ref_dir(), files[fi]);
        size_t size;
        uint8_t *data = test_read_file(p, &size);
        CHECK_MSG(data != NULL, "%s missing", files[fi]);
        if (!data) continue;
        size_t step = size / (size_t)budget + 1;
        int early_ok = 0;
        for (size_t len = 0; len < size; len += step) {
            uint8_t *cut = malloc(len ? len : 1);
            memcpy(cut, data, len);
            mg_image img;
            mg_status st = mg_image_load_mem(&img, cut, len, 0, NULL, 0);
            if (st == MG_OK && len < size / 2) early_ok++;
            n_ok += st == MG_OK;
            mg_image_free(&img);
            free(cut);
            n_runs++;
        }
        CHECK_MSG(early_ok == 0, "%s: decoded from less than half of the file", files[fi]);
        uint8_t *bad = malloc(size);
        for (int i = 0; i < budget; i++) {
            memcpy(bad, data, size);
            int flips = 1 + (int)(test_rng_next(&rng) % 4);
            for (int k = 0; k < flips; k++) {
                size_t at = test_rng_next(&rng) % size;
                /* headers matter most: half the damage goes to the first 64 bytes */
                if (k == 0 && (test_rng_next(&rng) & 1)) at %= size < 64 ? size : 64;
                bad[at] = (uint8_t)test_rng_next(&rng);
            }
            mg_image img;
            mg_status st = mg_image_load_mem(&img, bad, size, 1 << 22, NULL, 0);
            if (st == MG_OK) {
                CHECK(img.rgb && img.w > 0 && img.h > 0);
                n_ok++;
            } else {
                CHECK(img.rgb == NULL);
            }
            mg_image_free(&img);
            n_runs++;
        }
        free(bad);
        free(data);
    }
    printf("    %d damaged decodes, %d still produced an image, no crash\n", n_runs, n_ok);
    CHECK(n_runs > 16 * budget);
}

TEST(image_pixel_limit) {
    if (!ref_dir()) {
        CHECK_MSG(0, "tests/ref/image_ref.py failed");
        return;
    }
    static const char *files[] = {"jpeg_420.jpg", "png_rgb.png", "png_interlaced.png",
                                  "webp_lossy.webp", "bmp_rgb24.bmp", "bmp_rle8.bmp"};
    for (size_t i = 0; i < MG_ARRAY_LEN(files); i++) {
        char p[4200], err[256] = "";
        snprintf(p, sizeof p, "%s/%s", ref_dir(), files[i]);
        mg_image img;
        mg_status st = mg_image_load_file(&img, p, 0, err, sizeof err);
        CHECK_MSG(st == MG_OK, "%s: %s", files[i], err);
        if (st != MG_OK) continue;
        uint64_t n = (uint64_t)img.w * img.h;
        mg_image_free(&img);
        st = mg_image_load_file(&img, p, n - 1, err, sizeof err);
        CHECK_MSG(st == MG_ERR_UNSUPPORTED && strstr(err, "limit"), "%s: limit %llu -> %d '%s'",
                  files[i], (unsigned long long)(n - 1), st, err);
        CHECK(img.rgb == NULL);
        st = mg_image_load_file(&img, p, n, err, sizeof err);
        CHECK_MSG(st == MG_OK, "%s: exactly at the limit: %s", files[i], err);
        mg_image_free(&img);
    }
    /* a PNG header claiming 100000 x 100000 pixels is refused before any allocation */
    static const uint8_t huge_png[] = {
        0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
        0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0, 8, 2, 0, 0, 0, 0x1d, 0x3c, 0x5b, 0x3e};
    mg_image img;
    char err[256] = "";
    mg_status st = mg_image_load_mem(&img, huge_png, sizeof huge_png, 0, err, sizeof err);
    CHECK_MSG(st == MG_ERR_UNSUPPORTED || st == MG_ERR_FORMAT, "huge png: %d %s", st, err);
}

TEST(image_errors_and_magic) {
    mg_image img;
    char err[256] = "";
    CHECK_EQ_INT(mg_image_load_file(&img, "/nonexistent/x.png", 0, err, sizeof err), MG_ERR_IO);
    CHECK_EQ_INT(mg_image_load_mem(&img, "GIF89a\1\0\1\0", 10, 0, err, sizeof err),
                 MG_ERR_UNSUPPORTED);
    CHECK(strstr(err, "GIF") != NULL);
    CHECK_EQ_INT(mg_image_load_mem(&img, "hello world", 11, 0, err, sizeof err), MG_ERR_UNSUPPORTED);
    CHECK_EQ_INT(mg_image_load_mem(&img, "", 0, 0, err, sizeof err), MG_ERR_UNSUPPORTED);
    CHECK_EQ_INT(mg_image_load_mem(&img, "\xff\xd8\xff", 3, 0, err, sizeof err), MG_ERR_FORMAT);
    CHECK_EQ_INT(mg_image_load_mem(&img, "BM", 2, 0, err, sizeof err), MG_ERR_FORMAT);
    mg_image src = {0};
    CHECK_EQ_INT(mg_image_resize_bicubic(&img, &src, 4, 4, err, sizeof err), MG_ERR_INVALID_ARG);
    if (!ref_dir()) {
        CHECK_MSG(0, "tests/ref/image_ref.py failed");
        return;
    }
    /* the format comes from the bytes: a PNG named .jpg loads, and equals the memory path */
    char p[4200], q[4200];
    snprintf(p, sizeof p, "%s/png_rgb.png", ref_dir());
    snprintf(q, sizeof q, "%s/png_really.jpg", ref_dir());
    CHECK_EQ_INT(test_run("cp '%s' '%s'", p, q), 0);
    mg_image a, b;
    CHECK_EQ_INT(mg_image_load_file(&a, q, 0, err, sizeof err), MG_OK);
    size_t n;
    uint8_t *data = test_read_file(p, &n);
    CHECK(data != NULL);
    CHECK_EQ_INT(mg_image_load_mem(&b, data, n, 0, err, sizeof err), MG_OK);
    CHECK(a.w == b.w && a.h == b.h && a.rgb && b.rgb &&
          memcmp(a.rgb, b.rgb, (size_t)a.w * a.h * 3) == 0);
    free(data);
    mg_image_free(&a);
    mg_image_free(&b);
    mg_image_free(NULL);
}

TEST(image_png_writer_roundtrip) {
    mg_image img;
    CHECK_EQ_INT(mg_image_alloc(&img, 37, 23, 0, NULL, 0), MG_OK);
    uint64_t rng = 7;
    for (size_t i = 0; i < (size_t)37 * 23 * 3; i++) img.rgb[i] = (uint8_t)test_rng_next(&rng);
    char p[4200], err[256];
    snprintf(p, sizeof p, "%s/image_roundtrip.png", test_data_dir());
    CHECK_EQ_INT(mg_image_write_png(&img, p, err, sizeof err), MG_OK);
    mg_image back;
    CHECK_EQ_INT(mg_image_load_file(&back, p, 0, err, sizeof err), MG_OK);
    CHECK(back.w == 37 && back.h == 23 && back.rgb &&
          memcmp(back.rgb, img.rgb, (size_t)37 * 23 * 3) == 0);
    CHECK_EQ_INT(test_run("'%s' -c \"import sys, numpy as np; from PIL import Image; "
                          "a = np.asarray(Image.open(sys.argv[1])); "
                          "sys.exit(0 if a.shape == (23, 37, 3) else 1)\" '%s'",
                          test_python(), p),
                 0);
    mg_image_free(&img);
    mg_image_free(&back);
}

/* `minigpt image`: the PNG is Pillow's resize byte for byte, the .npy is torch's tensor. */
TEST(image_cli_matches_pillow) {
    const char *bin = getenv("MG_BIN");
    if (!bin || access(bin, X_OK) != 0) SKIP("MG_BIN not set to the minigpt binary");
    if (!ref_dir()) {
        CHECK_MSG(0, "tests/ref/image_ref.py failed");
        return;
    }
    char out_png[4200], out_npy[4200];
    snprintf(out_png, sizeof out_png, "%s/cli_jpeg_420.png", test_data_dir());
    snprintf(out_npy, sizeof out_npy, "%s/cli_jpeg_420.npy", test_data_dir());
    CHECK_EQ_INT(test_run("'%s' image '%s/jpeg_420.jpg' --size 448 -o '%s' --npy '%s'", bin,
                          ref_dir(), out_png, out_npy),
                 0);
    /* Pillow reads our PNG and compares with its own resize */
    CHECK_EQ_INT(test_run("'%s' -c \"import sys, numpy as np; from PIL import Image; "
                          "a = np.asarray(Image.open(sys.argv[1]).convert('RGB')); "
                          "b = np.asarray(Image.open(sys.argv[2]).convert('RGB')"
                          ".resize((448, 448), Image.BICUBIC)); "
                          "sys.exit(0 if a.shape == b.shape and (a == b).all() else 1)\" "
                          "'%s' '%s/jpeg_420.jpg'",
                          test_python(), out_png, ref_dir()),
                 0);
    char ref[4200];
    snprintf(ref, sizeof ref, "%s/jpeg_420.448.npy", ref_dir());
    int64_t s1[4], s2[4];
    int n1 = 0, n2 = 0;
    float *a = test_read_npy_f32(out_npy, s1, &n1), *b = test_read_npy_f32(ref, s2, &n2);
    CHECK(a && b && n1 == 3 && n2 == 3 && s1[0] == 3 && s1[1] == 448 && s1[2] == 448);
    if (a && b && n1 == 3 && s1[0] == 3 && s1[1] == 448 && s1[2] == 448) {
        double md = 0;
        for (size_t i = 0; i < (size_t)3 * 448 * 448; i++) {
            double d = a[i] > b[i] ? a[i] - b[i] : b[i] - a[i];
            if (d > md) md = d;
        }
        CHECK_MSG(md <= 1e-6, "cli npy vs torch: %.3g", md);
    }
    free(a);
    free(b);
    /* the pixel cap is honoured, with a message and exit status 1 */
    CHECK_EQ_INT(test_run("'%s' image '%s/jpeg_420.jpg' --size 224 -o '%s' --max-pixels 1000 "
                          "2>/dev/null",
                          bin, ref_dir(), out_png),
                 1);
    CHECK_EQ_INT(test_run("'%s' image --size 0 x.png -o y.png 2>/dev/null", bin), 2);
}
