/*
 * bmp.c - a bounded BMP parser that reads what Pillow 9.4's BmpImagePlugin reads, with the same
 * results after convert('RGB'): header sizes 12/40/64/108/124, 1/4/8-bit palettes (including
 * Pillow's grey-ramp and black/white shortcuts), 16-bit 5-5-5 and 5-6-5, 24-bit, 32-bit
 * BI_RGB and bitfields, RLE8/RLE4 (Pillow's decoder rules, quirks included), bottom-up and
 * top-down rows. Every read is checked against the buffer; truncated pixel data is an error.
 */
#include "image.h"

#include <stdlib.h>
#include <string.h>

enum { BMP_RAW = 0, BMP_RLE8 = 1, BMP_RLE4 = 2, BMP_BITFIELDS = 3 };

/* How one row of pixel data is unpacked (Pillow's raw modes). */
typedef enum {
    RAW_P1, RAW_P4, RAW_P8, /* palette indices, most significant bits first */
    RAW_BIT1,               /* Pillow mode "1": bit set -> 255 */
    RAW_L8,                 /* grey byte */
    RAW_BGR, RAW_BGRX, RAW_XBGR, RAW_ABGR, RAW_RGBA, RAW_BGRA,
    RAW_BGR15, RAW_BGR16
} raw_mode;

static const int raw_bits[] = {1, 4, 8, 1, 8, 24, 32, 32, 32, 32, 32, 16, 16};

static uint32_t rd_u16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Unpacks w pixels of one row in raw mode m into RGB. */
static void unpack_row(uint8_t *o, const uint8_t *r, int w, raw_mode m, const uint8_t pal[256][3]) {
    for (int x = 0; x < w; x++, o += 3) {
        switch (m) {
        case RAW_P1: memcpy(o, pal[(r[x >> 3] >> (7 - (x & 7))) & 1], 3); break;
        case RAW_P4: memcpy(o, pal[(r[x >> 1] >> ((x & 1) ? 0 : 4)) & 15], 3); break;
        case RAW_P8: memcpy(o, pal[r[x]], 3); break;
        case RAW_BIT1: o[0] = o[1] = o[2] = ((r[x >> 3] >> (7 - (x & 7))) & 1) ? 255 : 0; break;
        case RAW_L8: o[0] = o[1] = o[2] = r[x]; break;
        case RAW_BGR: o[0] = r[3 * x + 2], o[1] = r[3 * x + 1], o[2] = r[3 * x]; break;
        case RAW_BGRX:
        case RAW_BGRA: o[0] = r[4 * x + 2], o[1] = r[4 * x + 1], o[2] = r[4 * x]; break;
        case RAW_XBGR:
        case RAW_ABGR: o[0] = r[4 * x + 3], o[1] = r[4 * x + 2], o[2] = r[4 * x + 1]; break;
        case RAW_RGBA: memcpy(o, r + 4 * x, 3); break;
        case RAW_BGR15: {
            unsigned v = rd_u16(r + 2 * x);
            o[0] = (uint8_t)(((v >> 10) & 31) * 255 / 31);
            o[1] = (uint8_t)(((v >> 5) & 31) * 255 / 31);
            o[2] = (uint8_t)((v & 31) * 255 / 31);
            break;
        }
        case RAW_BGR16: {
            unsigned v = rd_u16(r + 2 * x);
            o[0] = (uint8_t)(((v >> 11) & 31) * 255 / 31);
            o[1] = (uint8_t)(((v >> 5) & 63) * 255 / 63);
            o[2] = (uint8_t)((v & 31) * 255 / 31);
            break;
        }
        }
    }
}

/* Pillow's BmpRleDecoder, step for step: fills the flat, zeroed array idx [n_idx] (w*h indices)
 * reading from file position pos. Returns how many indices Pillow would have produced (may exceed
 * n_idx), or (size_t)-1 where Pillow raises. */
static size_t rle_decode(uint8_t *idx, size_t n_idx, const uint8_t *d, size_t size, size_t pos,
                         int w, int rle4) {
    size_t len = 0;
    int x = 0;
#define RLE_PUT(v)                                                                                 \
    do {                                                                                           \
        if (len < n_idx) idx[len] = (uint8_t)(v);                                                  \
        len++;                                                                                     \
    } while (0)
    while (len < n_idx) {
        if (pos + 2 > size) break;
        int pixels = d[pos], byte = d[pos + 1];
        pos += 2;
        if (pixels) {
            int n = pixels;
            if (x + n > w) n = w - x > 0 ? w - x : 0;
            for (int i = 0; i < n; i++)
                RLE_PUT(rle4 ? ((i & 1) ? (byte & 15) : (byte >> 4)) : byte);
            x += n;
        } else if (byte == 0) { /* end of line: pad to a whole row */
            while (len % (size_t)w) RLE_PUT(0);
            x = 0;
        } else if (byte == 1) { /* end of bitmap */
            break;
        } else if (byte == 2) {
            /* Pillow reads two bytes, drops them, then takes right/up from the next two. */
            if (pos + 2 > size) break;
            pos += 2;
            if (pos + 2 > size) return (size_t)-1; /* Pillow fails unpacking a short read */
            size_t skip = d[pos] + (size_t)d[pos + 1] * (size_t)w;
            pos += 2;
            len += skip; /* idx is zero-filled by the caller */
            x = (int)(len % (size_t)w);
        } else { /* absolute run */
            size_t count = rle4 ? (size_t)byte / 2 : (size_t)byte;
            size_t avail = size - pos < count ? size - pos : count;
            for (size_t i = 0; i < avail; i++) {
                if (rle4) {
                    RLE_PUT(d[pos + i] >> 4);
                    RLE_PUT(d[pos + i] & 15);
                } else {
                    RLE_PUT(d[pos + i]);
                }
            }
            pos += avail;
            if (avail < count) break;
            x += byte;
            if (pos % 2) pos++;
        }
    }
#undef RLE_PUT
    return len;
}

mg_status mg_bmp_decode(mg_image *out, const uint8_t *d, size_t size, uint64_t max_pixels,
                        char *err, size_t err_len) {
    memset(out, 0, sizeof *out);
    if (size < 18 || d[0] != 'B' || d[1] != 'M')
        return mg_err(err, err_len, MG_ERR_FORMAT, "bmp: truncated header");
    uint64_t offset = rd_u32(d + 10);
    uint32_t hsize = rd_u32(d + 14);
    if (hsize != 12 && hsize != 40 && hsize != 64 && hsize != 108 && hsize != 124)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "bmp: unsupported header size %u", hsize);
    if (size < 14 + (size_t)hsize) return mg_err(err, err_len, MG_ERR_FORMAT, "bmp: truncated header");
    const uint8_t *h = d + 18; /* the header after its size field */
    size_t pos = 14 + (size_t)hsize;
    uint64_t width, height;
    uint32_t bits, compression = BMP_RAW, colors = 0, masks[4] = {0, 0, 0, 0};
    int pal_pad, top_down = 0;
    if (hsize == 12) {
        width = rd_u16(h);
        height = rd_u16(h + 2);
        bits = rd_u16(h + 6);
        pal_pad = 3;
    } else {
        top_down = h[7] == 0xFF;
        width = rd_u32(h);
        height = top_down ? ((uint64_t)1 << 32) - rd_u32(h + 4) : rd_u32(h + 4);
        bits = rd_u16(h + 10);
        compression = rd_u32(h + 12);
        colors = rd_u32(h + 28);
        pal_pad = 4;
        if (compression == BMP_BITFIELDS) {
            if (hsize - 4 >= 52) {
                for (int i = 0; i < 4; i++) masks[i] = rd_u32(h + 36 + 4 * i);
            } else {
                if (size < pos + 12) return mg_err(err, err_len, MG_ERR_FORMAT, "bmp: truncated masks");
                for (int i = 0; i < 3; i++) masks[i] = rd_u32(d + pos + 4 * (size_t)i);
                pos += 12;
            }
        }
    }
    if (bits != 1 && bits != 4 && bits != 8 && bits != 16 && bits != 24 && bits != 32)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "bmp: unsupported pixel depth %u", bits);
    if (colors == 0) colors = 1u << (bits < 32 ? bits : 0);
    if (offset == 14 + (uint64_t)hsize && bits <= 8) offset += 4 * (uint64_t)colors;

    raw_mode mode;
    int paletted = 0;
    switch (bits) {
    case 1: mode = RAW_P1, paletted = 1; break;
    case 4: mode = RAW_P4, paletted = 1; break;
    case 8: mode = RAW_P8, paletted = 1; break;
    case 16: mode = RAW_BGR15; break;
    case 24: mode = RAW_BGR; break;
    default: mode = RAW_BGRX; break;
    }
    if (compression == BMP_BITFIELDS) {
        uint32_t r = masks[0], g = masks[1], b = masks[2], a = masks[3];
        if (bits == 32 && r == 0xFF0000 && g == 0xFF00 && b == 0xFF && a == 0) mode = RAW_BGRX;
        else if (bits == 32 && r == 0xFF000000 && g == 0xFF0000 && b == 0xFF00 && a == 0) mode = RAW_XBGR;
        else if (bits == 32 && r == 0xFF000000 && g == 0xFF0000 && b == 0xFF00 && a == 0xFF) mode = RAW_ABGR;
        else if (bits == 32 && r == 0xFF && g == 0xFF00 && b == 0xFF0000 && a == 0xFF000000) mode = RAW_RGBA;
        else if (bits == 32 && r == 0xFF0000 && g == 0xFF00 && b == 0xFF && a == 0xFF000000) mode = RAW_BGRA;
        else if (bits == 32 && r == 0 && g == 0 && b == 0 && a == 0) mode = RAW_BGRA;
        else if (bits == 24 && r == 0xFF0000 && g == 0xFF00 && b == 0xFF) mode = RAW_BGR;
        else if (bits == 16 && r == 0xF800 && g == 0x7E0 && b == 0x1F) mode = RAW_BGR16;
        else if (bits == 16 && r == 0x7C00 && g == 0x3E0 && b == 0x1F) mode = RAW_BGR15;
        else return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "bmp: unsupported bitfields layout");
    } else if (compression != BMP_RAW && compression != BMP_RLE8 && compression != BMP_RLE4) {
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "bmp: unsupported compression %u",
                      compression);
    }
    int rle = compression == BMP_RLE8 || compression == BMP_RLE4;
    if (rle && (bits != (compression == BMP_RLE8 ? 8u : 4u)))
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "bmp: RLE with %u-bit pixels", bits);

    /* Pillow's palette: a grey ramp, overwritten by the entries the file holds. */
    uint8_t pal[256][3];
    for (int i = 0; i < 256; i++) pal[i][0] = pal[i][1] = pal[i][2] = (uint8_t)i;
    if (paletted) {
        if (colors > 256)
            return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "bmp: palette of %u colours", colors);
        size_t want = (size_t)pal_pad * colors;
        size_t have = pos < size ? (size - pos < want ? size - pos : want) : 0;
        const uint8_t *p = d + pos;
        pos += have;
        /* All entries grey (index i -> (i,i,i), or black/white for two colours): Pillow drops the
         * palette and reads the pixels as mode "L" or "1", whatever their depth. */
        int grey = 1;
        for (uint32_t i = 0; i < colors && grey; i++) {
            unsigned v = colors == 2 ? (i ? 255 : 0) : (i & 255);
            size_t at = (size_t)i * pal_pad;
            grey = at + 3 <= have && p[at] == v && p[at + 1] == v && p[at + 2] == v;
        }
        if (grey) {
            if (rle && colors == 2)
                return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "bmp: RLE black/white image");
            if (!rle) mode = colors == 2 ? RAW_BIT1 : RAW_L8;
        } else {
            for (size_t i = 0; i < have / (size_t)pal_pad; i++) {
                pal[i][0] = p[i * pal_pad + 2];
                pal[i][1] = p[i * pal_pad + 1];
                pal[i][2] = p[i * pal_pad];
            }
        }
    }
    if (offset == 0) offset = pos;

    mg_image img;
    mg_status st = mg_image_alloc(&img, width, height, max_pixels, err, err_len);
    if (st != MG_OK) return st;
    int w = img.w, hh = img.h;

    if (rle) {
        size_t n_idx = (size_t)w * (size_t)hh;
        uint8_t *idx = calloc(n_idx, 1);
        if (!idx) {
            mg_image_free(&img);
            return mg_err(err, err_len, MG_ERR_NOMEM, "bmp: out of memory");
        }
        size_t got = offset <= size ? rle_decode(idx, n_idx, d, size, (size_t)offset, w,
                                                 compression == BMP_RLE4)
                                    : 0;
        if (got == (size_t)-1 || got < n_idx) {
            free(idx);
            mg_image_free(&img);
            return mg_err(err, err_len, MG_ERR_FORMAT, "bmp: RLE data is truncated");
        }
        for (int y = 0; y < hh; y++) {
            int oy = top_down ? y : hh - 1 - y;
            unpack_row(img.rgb + (size_t)oy * w * 3, idx + (size_t)y * w, w, RAW_P8,
                       (const uint8_t(*)[3])pal);
        }
        free(idx);
        *out = img;
        return MG_OK;
    }

    /* Rows are stride bytes apart; the last one only needs its pixel bytes (Pillow's raw decoder). */
    uint64_t stride = (((uint64_t)w * bits + 31) >> 3) & ~(uint64_t)3;
    uint64_t rowbytes = ((uint64_t)w * (uint64_t)raw_bits[mode] + 7) / 8;
    if (rowbytes > stride) {
        mg_image_free(&img);
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "bmp: grey palette layout Pillow cannot read");
    }
    uint64_t need = offset + (uint64_t)(hh - 1) * stride + rowbytes;
    if (offset > size || need > size) {
        mg_image_free(&img);
        return mg_err(err, err_len, MG_ERR_FORMAT, "bmp: pixel data is truncated");
    }
    for (int y = 0; y < hh; y++) {
        int oy = top_down ? y : hh - 1 - y;
        unpack_row(img.rgb + (size_t)oy * w * 3, d + offset + (uint64_t)y * stride, w, mode,
                   (const uint8_t(*)[3])pal);
    }
    *out = img;
    return MG_OK;
}
