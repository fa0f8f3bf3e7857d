/*
 * image.c - images in, exactly as MiniGPT's reference sees them (spec §6): JPEG (libjpeg-turbo),
 * PNG (libpng) and WebP (libwebp) decoded to RGB with Pillow 9.4's convert('RGB') rules, Pillow's
 * fixed-point bicubic resize, torchvision's ToTensor + Normalize, and a PNG writer.
 *
 * The data is never trusted: the pixel count is capped before any pixel buffer is allocated,
 * libjpeg and libpng errors come back through setjmp/longjmp as an mg_status, and pixel data that
 * ends early is an error, as in Pillow without LOAD_TRUNCATED_IMAGES. Decoder warnings are
 * ignored, as Pillow ignores them. BMP is parsed by hand in bmp.c.
 */
#include "image.h"

#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>
#include <webp/decode.h>
#include <webp/demux.h>

/* libjpeg may use this much memory (progressive files keep every coefficient: ~128 bytes per
 * pixel and component); beyond it decoding fails instead of exhausting the machine. */
#define JPEG_MAX_MEMORY ((long)2 << 30)
/* More scans than any encoder writes: guards against files built to burn CPU. */
#define JPEG_MAX_SCANS 1000

mg_status mg_image_alloc(mg_image *img, uint64_t w, uint64_t h, uint64_t max_pixels, char *err,
                         size_t err_len) {
    memset(img, 0, sizeof *img);
    if (max_pixels == 0) max_pixels = MG_IMAGE_MAX_PIXELS_DEFAULT;
    if (w == 0 || h == 0)
        return mg_err(err, err_len, MG_ERR_FORMAT, "image: empty image (%llu x %llu)",
                      (unsigned long long)w, (unsigned long long)h);
    if (w > INT_MAX || h > INT_MAX || w > max_pixels / h)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED,
                      "image: %llu x %llu pixels exceeds the limit of %llu pixels",
                      (unsigned long long)w, (unsigned long long)h, (unsigned long long)max_pixels);
    size_t n;
    if (!mg_mul_ok((size_t)w * (size_t)h, 3, &n))
        return mg_err(err, err_len, MG_ERR_NOMEM, "image: size overflow");
    img->rgb = malloc(n);
    if (!img->rgb) return mg_err(err, err_len, MG_ERR_NOMEM, "image: out of memory (%zu bytes)", n);
    img->w = (int)w;
    img->h = (int)h;
    return MG_OK;
}

void mg_image_free(mg_image *img) {
    if (!img) return;
    free(img->rgb);
    memset(img, 0, sizeof *img);
}

/* ==== JPEG ==== */

/* Everything one JPEG decode touches lives here, reachable from cinfo.client_data, so that after a
 * longjmp the cleanup reads values from memory, not from clobbered registers. */
typedef struct {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_error_mgr jerr;
    struct jpeg_source_mgr src;
    struct jpeg_progress_mgr progress;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX + 64];
    const uint8_t *data;
    size_t size;
    int eof;          /* the decoder asked for bytes past the end of the data */
    int created;
    uint8_t *row;     /* [output_width * output_components] */
    mg_image img;
} jpeg_job;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_job *J = cinfo->client_data;
    char buf[JMSG_LENGTH_MAX];
    cinfo->err->format_message(cinfo, buf);
    snprintf(J->msg, sizeof J->msg, "%s", buf);
    longjmp(J->jb, 1);
}

/* Warnings and traces go nowhere: the library never prints, and Pillow ignores them too. */
static void jpeg_on_message(j_common_ptr cinfo) { (void)cinfo; }

static void jpeg_on_progress(j_common_ptr cinfo) {
    jpeg_job *J = cinfo->client_data;
    if (J->cinfo.input_scan_number > JPEG_MAX_SCANS) {
        snprintf(J->msg, sizeof J->msg, "more than %d scans", JPEG_MAX_SCANS);
        longjmp(J->jb, 1);
    }
}

static void jpeg_src_init(j_decompress_ptr cinfo) { (void)cinfo; }
static void jpeg_src_term(j_decompress_ptr cinfo) { (void)cinfo; }

/* Called only when the data is exhausted: note it and feed an EOI marker so that libjpeg stops.
 * The caller turns the note into an error if pixels were still missing. */
static boolean jpeg_src_fill(j_decompress_ptr cinfo) {
    static const JOCTET eoi[2] = {0xFF, JPEG_EOI};
    jpeg_job *J = cinfo->client_data;
    J->eof = 1;
    J->src.next_input_byte = eoi;
    J->src.bytes_in_buffer = 2;
    return TRUE;
}

static void jpeg_src_skip(j_decompress_ptr cinfo, long n) {
    jpeg_job *J = cinfo->client_data;
    if (n <= 0) return;
    if ((size_t)n > J->src.bytes_in_buffer) {
        jpeg_src_fill(cinfo);
        return;
    }
    J->src.next_input_byte += n;
    J->src.bytes_in_buffer -= (size_t)n;
}

/* Pillow reads CMYK JPEGs as Adobe-inverted ("CMYK;I") and converts with cmyk2rgb. */
static uint8_t cmyk_channel(int c_raw, int k_raw) {
    int c = 255 - c_raw, nk = k_raw; /* nk = 255 - (255 - k_raw) */
    int t = c * nk + 128;
    int v = nk - (((t >> 8) + t) >> 8);
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

static mg_status decode_jpeg(mg_image *out, const uint8_t *data, size_t size, uint64_t max_pixels,
                             char *err, size_t err_len) {
    jpeg_job *J = calloc(1, sizeof *J);
    if (!J) return mg_err(err, err_len, MG_ERR_NOMEM, "jpeg: out of memory");
    mg_status st = MG_OK;
    J->data = data;
    J->size = size;
    J->cinfo.err = jpeg_std_error(&J->jerr);
    J->jerr.error_exit = jpeg_on_error;
    J->jerr.output_message = jpeg_on_message;
    J->cinfo.client_data = J;
    if (setjmp(J->jb)) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "jpeg: %s", J->msg);
        goto done;
    }
    jpeg_create_decompress(&J->cinfo);
    J->created = 1;
    J->cinfo.client_data = J;
    J->cinfo.mem->max_memory_to_use = JPEG_MAX_MEMORY;
    J->src.init_source = jpeg_src_init;
    J->src.fill_input_buffer = jpeg_src_fill;
    J->src.skip_input_data = jpeg_src_skip;
    J->src.resync_to_restart = jpeg_resync_to_restart;
    J->src.term_source = jpeg_src_term;
    J->src.next_input_byte = data;
    J->src.bytes_in_buffer = size;
    J->cinfo.src = &J->src;
    J->progress.progress_monitor = jpeg_on_progress;
    J->cinfo.progress = &J->progress;

    /* Like Pillow: skip tables-only datastreams until one holds an image. */
    int hdr = jpeg_read_header(&J->cinfo, FALSE);
    for (int i = 0; hdr == JPEG_HEADER_TABLES_ONLY && !J->eof && i < 16; i++)
        hdr = jpeg_read_header(&J->cinfo, FALSE);
    if (hdr != JPEG_HEADER_OK) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "jpeg: no image in the data");
        goto done;
    }
    int nc = J->cinfo.num_components;
    if (nc != 1 && nc != 3 && nc != 4) {
        st = mg_err(err, err_len, MG_ERR_UNSUPPORTED, "jpeg: %d components", nc);
        goto done;
    }
    J->cinfo.out_color_space = nc == 1 ? JCS_GRAYSCALE : nc == 3 ? JCS_RGB : JCS_CMYK;
    st = mg_image_alloc(&J->img, J->cinfo.image_width, J->cinfo.image_height, max_pixels, err,
                        err_len);
    if (st != MG_OK) goto done;
    jpeg_start_decompress(&J->cinfo);
    int w = (int)J->cinfo.output_width, oc = J->cinfo.output_components;
    if (w != J->img.w || (int)J->cinfo.output_height != J->img.h || oc != nc) {
        st = mg_err(err, err_len, MG_ERR_INTERNAL, "jpeg: unexpected output geometry");
        goto done;
    }
    J->row = malloc((size_t)w * (size_t)oc);
    if (!J->row) {
        st = mg_err(err, err_len, MG_ERR_NOMEM, "jpeg: out of memory");
        goto done;
    }
    while (J->cinfo.output_scanline < J->cinfo.output_height) {
        JSAMPROW rows[1] = {J->row};
        size_t y = J->cinfo.output_scanline;
        if (jpeg_read_scanlines(&J->cinfo, rows, 1) != 1) break;
        uint8_t *o = J->img.rgb + y * (size_t)w * 3;
        const uint8_t *r = J->row;
        if (oc == 3) {
            memcpy(o, r, (size_t)w * 3);
        } else if (oc == 1) {
            for (int x = 0; x < w; x++) o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = r[x];
        } else {
            for (int x = 0; x < w; x++)
                for (int c = 0; c < 3; c++) o[3 * x + c] = cmyk_channel(r[4 * x + c], r[4 * x + 3]);
        }
    }
    if (J->eof || J->cinfo.output_scanline < J->cinfo.output_height) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "jpeg: image data is truncated");
        goto done;
    }
    /* Whatever follows the last row may be missing (Pillow accepts that too). */
    jpeg_finish_decompress(&J->cinfo);

done:
    if (J->created) jpeg_destroy_decompress(&J->cinfo);
    free(J->row);
    if (st == MG_OK) {
        *out = J->img;
    } else {
        mg_image_free(&J->img);
    }
    free(J);
    return st;
}

/* ==== PNG ==== */

typedef struct {
    png_structp png;
    png_infop info;
    jmp_buf jb;
    char msg[192];
    const uint8_t *data;
    size_t size, pos;
    uint8_t *buf;     /* rows after libpng's transformations: one row, or the whole image */
    png_bytep *rows;  /* row pointers into buf when interlaced */
    mg_image img;
} png_job;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_job *J = png_get_error_ptr(png);
    snprintf(J->msg, sizeof J->msg, "%s", msg);
    longjmp(J->jb, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void png_read_mem(png_structp png, png_bytep dst, size_t n) {
    png_job *J = png_get_io_ptr(png);
    if (n > J->size - J->pos) png_error(png, "file is truncated");
    memcpy(dst, J->data + J->pos, n);
    J->pos += n;
}

/* One row after the transformations chosen in decode_png -> RGB, by Pillow's rules. */
static void png_row_to_rgb(uint8_t *o, const uint8_t *r, int w, int color_type, int depth,
                           int channels, const uint8_t pal[256][3]) {
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        for (int x = 0; x < w; x++) memcpy(o + 3 * x, pal[r[x]], 3);
    } else if (channels <= 2 && depth == 16) {
        /* 16-bit grey opens as mode "I" and i2rgb clips to 0..255 (it does not scale). */
        for (int x = 0; x < w; x++) {
            unsigned v = ((unsigned)r[2 * channels * x] << 8) | r[2 * channels * x + 1];
            o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = (uint8_t)(v > 255 ? 255 : v);
        }
    } else if (channels <= 2) {
        for (int x = 0; x < w; x++) o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = r[channels * x];
    } else {
        for (int x = 0; x < w; x++) memcpy(o + 3 * x, r + channels * x, 3);
    }
}

static mg_status decode_png(mg_image *out, const uint8_t *data, size_t size, uint64_t max_pixels,
                            char *err, size_t err_len) {
    png_job *J = calloc(1, sizeof *J);
    if (!J) return mg_err(err, err_len, MG_ERR_NOMEM, "png: out of memory");
    mg_status st = MG_OK;
    J->data = data;
    J->size = size;
    J->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, J, png_on_error, png_on_warning);
    if (J->png) J->info = png_create_info_struct(J->png);
    if (!J->png || !J->info) {
        st = mg_err(err, err_len, MG_ERR_NOMEM, "png: out of memory");
        goto done;
    }
    if (setjmp(J->jb)) {
        st = mg_err(err, err_len, MG_ERR_FORMAT, "png: %s", J->msg);
        goto done;
    }
    png_set_read_fn(J->png, J, png_read_mem);
    png_set_user_limits(J->png, 0x7fffffff, 0x7fffffff); /* our own pixel cap decides */
#ifdef PNG_CHECK_FOR_INVALID_INDEX_SUPPORTED
    png_set_check_for_invalid_index(J->png, 0); /* out-of-palette indices are fine, as in Pillow */
#endif
    png_read_info(J->png, J->info);
    png_uint_32 w32, h32;
    int depth, color_type, interlace;
    png_get_IHDR(J->png, J->info, &w32, &h32, &depth, &color_type, &interlace, NULL, NULL);
    st = mg_image_alloc(&J->img, w32, h32, max_pixels, err, err_len);
    if (st != MG_OK) goto done;

    /* Pillow's palette: a grey ramp, overwritten by the PLTE entries there are. */
    uint8_t pal[256][3];
    for (int i = 0; i < 256; i++) pal[i][0] = pal[i][1] = pal[i][2] = (uint8_t)i;
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        png_colorp plte;
        int n_plte = 0;
        if (png_get_PLTE(J->png, J->info, &plte, &n_plte) == 0) n_plte = 0;
        for (int i = 0; i < n_plte && i < 256; i++) {
            pal[i][0] = plte[i].red;
            pal[i][1] = plte[i].green;
            pal[i][2] = plte[i].blue;
        }
        if (depth < 8) png_set_packing(J->png);
    } else if (color_type == PNG_COLOR_TYPE_GRAY) {
        /* 1/2/4-bit grey scale to 0..255 exactly as Pillow's "1", "L;2", "L;4" unpackers. */
        if (depth < 8) png_set_expand_gray_1_2_4_to_8(J->png);
    } else if (depth == 16) {
        png_set_strip_16(J->png); /* keeps the high byte, like Pillow's ";16B" unpackers */
    }
    int passes = png_set_interlace_handling(J->png);
    png_read_update_info(J->png, J->info);
    int channels = png_get_channels(J->png, J->info);
    int odepth = png_get_bit_depth(J->png, J->info);
    size_t rowbytes = png_get_rowbytes(J->png, J->info);
    int w = J->img.w, h = J->img.h;
    size_t need = (size_t)w * (size_t)channels * (size_t)(odepth == 16 ? 2 : 1);
    if ((odepth != 8 && odepth != 16) || channels < 1 || channels > 4 || rowbytes < need) {
        st = mg_err(err, err_len, MG_ERR_INTERNAL, "png: unexpected row layout");
        goto done;
    }
    if (passes == 1) {
        J->buf = malloc(rowbytes);
        if (!J->buf) {
            st = mg_err(err, err_len, MG_ERR_NOMEM, "png: out of memory");
            goto done;
        }
        for (int y = 0; y < h; y++) {
            png_read_row(J->png, J->buf, NULL);
            png_row_to_rgb(J->img.rgb + (size_t)y * w * 3, J->buf, w, color_type, odepth, channels,
                           (const uint8_t(*)[3])pal);
        }
    } else {
        size_t total;
        if (!mg_mul_ok(rowbytes, (size_t)h, &total) ||
            !(J->buf = malloc(total)) || !(J->rows = malloc((size_t)h * sizeof *J->rows))) {
            st = mg_err(err, err_len, MG_ERR_NOMEM, "png: out of memory");
            goto done;
        }
        for (int y = 0; y < h; y++) J->rows[y] = J->buf + (size_t)y * rowbytes;
        png_read_image(J->png, J->rows);
        for (int y = 0; y < h; y++)
            png_row_to_rgb(J->img.rgb + (size_t)y * w * 3, J->rows[y], w, color_type, odepth,
                           channels, (const uint8_t(*)[3])pal);
    }
    /* No png_read_end: like Pillow, whatever follows the pixel data is not required. */

done:
    if (J->png) png_destroy_read_struct(&J->png, J->info ? &J->info : NULL, NULL);
    free(J->buf);
    free(J->rows);
    if (st == MG_OK) {
        *out = J->img;
    } else {
        mg_image_free(&J->img);
    }
    free(J);
    return st;
}

/* ==== WebP ==== */

/* Pillow 9.4 decodes every WebP through WebPAnimDecoder (RGBA, no threads) and keeps the first
 * frame; doing the same gives the same pixels, including animated files. */
static mg_status decode_webp(mg_image *out, const uint8_t *data, size_t size, uint64_t max_pixels,
                             char *err, size_t err_len) {
    WebPData wd = {data, size};
    WebPDemuxer *dmx = WebPDemux(&wd);
    if (!dmx) return mg_err(err, err_len, MG_ERR_FORMAT, "webp: malformed or truncated file");
    uint32_t w = WebPDemuxGetI(dmx, WEBP_FF_CANVAS_WIDTH);
    uint32_t h = WebPDemuxGetI(dmx, WEBP_FF_CANVAS_HEIGHT);
    WebPDemuxDelete(dmx);
    /* Checked before the decoder allocates its canvas. */
    mg_image img;
    mg_status st = mg_image_alloc(&img, w, h, max_pixels, err, err_len);
    if (st != MG_OK) return st;
    WebPAnimDecoderOptions opt;
    if (!WebPAnimDecoderOptionsInit(&opt)) {
        mg_image_free(&img);
        return mg_err(err, err_len, MG_ERR_INTERNAL, "webp: library version mismatch");
    }
    opt.color_mode = MODE_RGBA;
    opt.use_threads = 0;
    WebPAnimDecoder *dec = WebPAnimDecoderNew(&wd, &opt);
    WebPAnimInfo info;
    uint8_t *rgba = NULL;
    int ts = 0;
    if (!dec || !WebPAnimDecoderGetInfo(dec, &info) || info.canvas_width != w ||
        info.canvas_height != h || !WebPAnimDecoderGetNext(dec, &rgba, &ts) || !rgba) {
        WebPAnimDecoderDelete(dec);
        mg_image_free(&img);
        return mg_err(err, err_len, MG_ERR_FORMAT, "webp: cannot decode the image");
    }
    size_t n = (size_t)img.w * (size_t)img.h;
    for (size_t i = 0; i < n; i++) memcpy(img.rgb + 3 * i, rgba + 4 * i, 3);
    WebPAnimDecoderDelete(dec);
    *out = img;
    return MG_OK;
}

/* ==== Loading ==== */

mg_status mg_image_load_mem(mg_image *out, const void *data, size_t size, uint64_t max_pixels,
                            char *err, size_t err_len) {
    if (!out) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "image: out is NULL");
    memset(out, 0, sizeof *out);
    if (!data && size) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "image: data is NULL");
    const uint8_t *d = data;
    if (size >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF)
        return decode_jpeg(out, d, size, max_pixels, err, err_len);
    if (size >= 8 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0)
        return decode_png(out, d, size, max_pixels, err, err_len);
    if (size >= 12 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0)
        return decode_webp(out, d, size, max_pixels, err, err_len);
    if (size >= 2 && d[0] == 'B' && d[1] == 'M')
        return mg_bmp_decode(out, d, size, max_pixels, err, err_len);
    if (size >= 4 && memcmp(d, "GIF8", 4) == 0)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "image: GIF is not supported");
    return mg_err(err, err_len, MG_ERR_UNSUPPORTED,
                  "image: unknown format (JPEG, PNG, WebP and BMP are supported)");
}

mg_status mg_image_load_file(mg_image *out, const char *path, uint64_t max_pixels, char *err,
                             size_t err_len) {
    if (!out || !path) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "image: NULL argument");
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return mg_err(err, err_len, MG_ERR_IO, "image: cannot open %s", path);
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    mg_status st = MG_OK;
    for (;;) {
        if (n == cap) {
            if (cap >= MG_IMAGE_MAX_FILE_BYTES) {
                st = mg_err(err, err_len, MG_ERR_UNSUPPORTED, "image: %s is larger than %zu bytes",
                            path, (size_t)MG_IMAGE_MAX_FILE_BYTES);
                break;
            }
            size_t ncap = cap ? cap * 2 : (size_t)1 << 16;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                st = mg_err(err, err_len, MG_ERR_NOMEM, "image: out of memory reading %s", path);
                break;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) st = mg_err(err, err_len, MG_ERR_IO, "image: read error on %s", path);
            break;
        }
    }
    fclose(f);
    if (st == MG_OK) st = mg_image_load_mem(out, buf, n, max_pixels, err, err_len);
    free(buf);
    return st;
}

/* ==== Resize: Pillow's ImagingResample with the BICUBIC filter, 8 bits per channel ==== */

#define RS_PRECISION_BITS 22 /* 32 - 8 - 2, as in Pillow */

/* Keys' cubic convolution kernel with a = -0.5, support 2. */
static double bicubic_kernel(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Coefficients of one axis: output i reads inputs [lo[i], lo[i] + n[i]) with weights
 * k[i * ksize ...], in fixed point. */
typedef struct {
    int ksize;
    int *lo, *n;  /* [out] */
    int32_t *k;   /* [out, ksize] */
} rs_axis;

static void rs_axis_free(rs_axis *a) {
    free(a->lo);
    free(a->n);
    free(a->k);
    memset(a, 0, sizeof *a);
}

/* Same arithmetic, in the same order and precision, as Pillow's precompute_coeffs followed by
 * normalize_coeffs_8bpc, so that every fixed-point weight is identical. */
static mg_status rs_axis_plan(rs_axis *a, int in_size, int out_size) {
    memset(a, 0, sizeof *a);
    /* Pillow passes the box edges as float: the input size is rounded to float first. */
    double scale = (double)(float)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    double ksize_d = ceil(support) * 2 + 1;
    size_t nk;
    if (ksize_d > INT_MAX || !mg_mul_ok((size_t)ksize_d, (size_t)out_size, &nk) ||
        !mg_mul_ok(nk, sizeof(int32_t), &nk))
        return MG_ERR_NOMEM;
    a->ksize = (int)ksize_d;
    a->lo = malloc((size_t)out_size * sizeof(int));
    a->n = malloc((size_t)out_size * sizeof(int));
    a->k = malloc(nk);
    double *w = malloc((size_t)a->ksize * sizeof(double));
    if (!a->lo || !a->n || !a->k || !w) {
        free(w);
        rs_axis_free(a);
        return MG_ERR_NOMEM;
    }
    double ss = 1.0 / filterscale;
    for (int i = 0; i < out_size; i++) {
        double center = (i + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        if (xmax > a->ksize) xmax = a->ksize; /* cannot happen; keeps the indexing provably safe */
        double ww = 0.0;
        for (int x = 0; x < xmax; x++) {
            w[x] = bicubic_kernel((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = a->k + (size_t)i * a->ksize;
        for (int x = 0; x < xmax; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            double f = v * (1 << RS_PRECISION_BITS);
            k[x] = v < 0 ? (int32_t)(-0.5 + f) : (int32_t)(0.5 + f);
        }
        for (int x = xmax < 0 ? 0 : xmax; x < a->ksize; x++) k[x] = 0;
        a->lo[i] = xmin;
        a->n[i] = xmax < 0 ? 0 : xmax;
    }
    free(w);
    return MG_OK;
}

/* Pillow's clip8: the accumulator is an int whose top bits hold the 8-bit result. */
static inline uint8_t rs_clip8(uint32_t acc) {
    int32_t v = (int32_t)acc; /* Pillow's int accumulator wraps the same way */
    if (v < 0) return 0;
    v >>= RS_PRECISION_BITS;
    return (uint8_t)(v > 255 ? 255 : v);
}

/* Horizontal pass over rows [y0, y0 + n_rows) of src into dst [n_rows, ax->out, 3]. */
static void rs_horizontal(uint8_t *dst, int out_w, const uint8_t *src, int in_w, int y0,
                          int n_rows, const rs_axis *ax) {
    for (int y = 0; y < n_rows; y++) {
        const uint8_t *row = src + (size_t)(y0 + y) * in_w * 3;
        uint8_t *o = dst + (size_t)y * out_w * 3;
        for (int xx = 0; xx < out_w; xx++) {
            const int32_t *k = ax->k + (size_t)xx * ax->ksize;
            const uint8_t *p = row + (size_t)ax->lo[xx] * 3;
            uint32_t s0 = 1u << (RS_PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int x = 0; x < ax->n[xx]; x++) {
                uint32_t kx = (uint32_t)k[x];
                s0 += p[3 * x] * kx;
                s1 += p[3 * x + 1] * kx;
                s2 += p[3 * x + 2] * kx;
            }
            o[3 * xx] = rs_clip8(s0);
            o[3 * xx + 1] = rs_clip8(s1);
            o[3 * xx + 2] = rs_clip8(s2);
        }
    }
}

/* Vertical pass: src [*, w, 3] whose row 0 is input row y0 -> dst [out_h, w, 3]. */
static void rs_vertical(uint8_t *dst, int out_h, const uint8_t *src, int w, int y0,
                        const rs_axis *ax) {
    size_t stride = (size_t)w * 3;
    for (int yy = 0; yy < out_h; yy++) {
        const int32_t *k = ax->k + (size_t)yy * ax->ksize;
        const uint8_t *base = src + (size_t)(ax->lo[yy] - y0) * stride;
        uint8_t *o = dst + (size_t)yy * stride;
        for (size_t xc = 0; xc < stride; xc++) {
            uint32_t s = 1u << (RS_PRECISION_BITS - 1);
            for (int y = 0; y < ax->n[yy]; y++) s += base[(size_t)y * stride + xc] * (uint32_t)k[y];
            o[xc] = rs_clip8(s);
        }
    }
}

mg_status mg_image_resize_bicubic(mg_image *dst, const mg_image *src, int w, int h, char *err,
                                  size_t err_len) {
    if (!dst || !src || !src->rgb || src->w <= 0 || src->h <= 0)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "resize: empty source image");
    memset(dst, 0, sizeof *dst);
    if (w <= 0 || h <= 0)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "resize: bad target size %d x %d", w, h);
    mg_image out;
    mg_status st = mg_image_alloc(&out, (uint64_t)w, (uint64_t)h, (uint64_t)w * (uint64_t)h, err,
                                  err_len);
    if (st != MG_OK) return st;
    if (w == src->w && h == src->h) { /* Pillow returns a copy */
        memcpy(out.rgb, src->rgb, (size_t)w * h * 3);
        *dst = out;
        return MG_OK;
    }
    rs_axis ax_h = {0}, ax_v = {0};
    uint8_t *tmp = NULL;
    st = rs_axis_plan(&ax_h, src->w, w);
    if (st == MG_OK) st = rs_axis_plan(&ax_v, src->h, h);
    if (st != MG_OK) goto nomem;
    if (w == src->w) { /* vertical pass only */
        rs_vertical(out.rgb, h, src->rgb, w, 0, &ax_v);
    } else if (h == src->h) { /* horizontal pass only */
        rs_horizontal(out.rgb, w, src->rgb, src->w, 0, h, &ax_h);
    } else {
        /* Horizontal first, over just the input rows the vertical pass reads. */
        int y0 = ax_v.lo[0], y1 = ax_v.lo[h - 1] + ax_v.n[h - 1];
        size_t n;
        if (!mg_mul_ok((size_t)(y1 - y0), (size_t)w * 3, &n) || !(tmp = malloc(n ? n : 1)))
            goto nomem;
        rs_horizontal(tmp, w, src->rgb, src->w, y0, y1 - y0, &ax_h);
        rs_vertical(out.rgb, h, tmp, w, y0, &ax_v);
    }
    free(tmp);
    rs_axis_free(&ax_h);
    rs_axis_free(&ax_v);
    *dst = out;
    return MG_OK;
nomem:
    free(tmp);
    rs_axis_free(&ax_h);
    rs_axis_free(&ax_v);
    mg_image_free(&out);
    return mg_err(err, err_len, MG_ERR_NOMEM, "resize: out of memory");
}

/* ==== Tensor ==== */

void mg_image_to_tensor(const mg_image *img, const float mean[3], const float std[3], float *out) {
    static const float clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    if (!mean) mean = clip_mean;
    if (!std) std = clip_std;
    size_t hw = (size_t)img->w * (size_t)img->h;
    for (int c = 0; c < 3; c++) {
        float *o = out + (size_t)c * hw;
        for (size_t i = 0; i < hw; i++) {
            /* ToTensor divides by 255 in float32, Normalize subtracts then divides. */
            float x = (float)img->rgb[3 * i + (size_t)c] / 255.0f;
            o[i] = (x - mean[c]) / std[c];
        }
    }
}

mg_status mg_image_preprocess_file(const char *path, int size, uint64_t max_pixels, float *out,
                                   char *err, size_t err_len) {
    if (!out || size <= 0)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "image: bad output or size %d", size);
    mg_image img, sq;
    mg_status st = mg_image_load_file(&img, path, max_pixels, err, err_len);
    if (st != MG_OK) return st;
    st = mg_image_resize_bicubic(&sq, &img, size, size, err, err_len);
    mg_image_free(&img);
    if (st != MG_OK) return st;
    mg_image_to_tensor(&sq, NULL, NULL, out);
    mg_image_free(&sq);
    return MG_OK;
}

/* ==== PNG writer ==== */

typedef struct {
    jmp_buf jb;
    char msg[192];
    FILE *f;
    png_structp png;
    png_infop info;
} png_wjob;

static void png_w_on_error(png_structp png, png_const_charp msg) {
    png_wjob *J = png_get_error_ptr(png);
    snprintf(J->msg, sizeof J->msg, "%s", msg);
    longjmp(J->jb, 1);
}

mg_status mg_image_write_png(const mg_image *img, const char *path, char *err, size_t err_len) {
    if (!img || !img->rgb || img->w <= 0 || img->h <= 0 || !path)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "png: nothing to write");
    png_wjob *J = calloc(1, sizeof *J);
    if (!J) return mg_err(err, err_len, MG_ERR_NOMEM, "png: out of memory");
    mg_status st = MG_OK;
    J->f = fopen(path, "wb");
    if (!J->f) {
        st = mg_err(err, err_len, MG_ERR_IO, "png: cannot create %s", path);
        goto done;
    }
    J->png = png_create_write_struct(PNG_LIBPNG_VER_STRING, J, png_w_on_error, png_on_warning);
    if (J->png) J->info = png_create_info_struct(J->png);
    if (!J->png || !J->info) {
        st = mg_err(err, err_len, MG_ERR_NOMEM, "png: out of memory");
        goto done;
    }
    if (setjmp(J->jb)) {
        st = mg_err(err, err_len, MG_ERR_IO, "png: writing %s: %s", path, J->msg);
        goto done;
    }
    png_init_io(J->png, J->f);
    png_set_IHDR(J->png, J->info, (png_uint_32)img->w, (png_uint_32)img->h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(J->png, J->info);
    for (int y = 0; y < img->h; y++) png_write_row(J->png, img->rgb + (size_t)y * img->w * 3);
    png_write_end(J->png, NULL);

done:
    if (J->png) png_destroy_write_struct(&J->png, J->info ? &J->info : NULL);
    if (J->f && fclose(J->f) != 0 && st == MG_OK)
        st = mg_err(err, err_len, MG_ERR_IO, "png: error closing %s", path);
    free(J);
    return st;
}
