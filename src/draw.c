/*
 * draw.c - draws grounded entities on an RGB8 image: each box as a rectangle outline in the
 * entity's palette colour, and its phrase on a filled plate above the box (or just inside it when
 * the box touches the top edge), rendered with FreeType from a TrueType font.
 *
 * Every write is clipped to the image. Box corners come from the 0..100 grid as the demo converts
 * them (int(v / 100 * size)), so the drawing matches any size of the same image. A missing font
 * only costs the labels: the boxes are drawn and a warning is returned in err.
 */
#include "grounding.h"

#include <ft2build.h>
#include FT_FREETYPE_H

#include <math.h>
#include <string.h>

#define DEFAULT_FONT "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
#define MAX_LABEL_CHARS 256

/* 16 well-separated colours (Trubetskoy's list of distinct colours, first 16). */
static const uint8_t PALETTE[16][3] = {
    {230, 25, 75},   {60, 180, 75},   {0, 130, 200},   {245, 130, 48},
    {145, 30, 180},  {70, 240, 240},  {240, 50, 230},  {210, 245, 60},
    {250, 190, 212}, {0, 128, 128},   {220, 190, 255}, {170, 110, 40},
    {255, 250, 200}, {128, 0, 0},     {170, 255, 195}, {0, 0, 128},
};

/* Default drawing parameters: default font, labels on, automatic sizes. */
mg_draw_params mg_draw_default_params(void) {
    mg_draw_params p = {NULL, 1, 0, 0};
    return p;
}

/* Palette colour of entity i (cycled; negative i count as 0). */
void mg_draw_color(int i, uint8_t rgb[3]) {
    int k = i < 0 ? 0 : i % 16;
    memcpy(rgb, PALETTE[k], 3);
}

typedef struct {
    uint8_t *px;
    int w, h;
    size_t stride;
} canvas;

static void fill_rect(const canvas *cv, int x0, int y0, int x1, int y1, const uint8_t c[3]) {
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > cv->w - 1) x1 = cv->w - 1;
    if (y1 > cv->h - 1) y1 = cv->h - 1;
    for (int y = y0; y <= y1; y++) {
        uint8_t *row = cv->px + (size_t)y * cv->stride;
        for (int x = x0; x <= x1; x++) memcpy(row + (size_t)x * 3, c, 3);
    }
}

/* Grid value (0..100, anything else clamped) to a pixel index in [0, size-1]. */
static int grid_to_px(int v, int size) {
    double d = (double)v / 100.0 * (double)size;
    if (!(d >= 0)) d = 0;
    if (d > size - 1) d = size - 1;
    return (int)d;
}

/* Outline drawn inward from the box edges, t pixels wide. */
static void draw_outline(const canvas *cv, int x1, int y1, int x2, int y2, int t,
                         const uint8_t c[3]) {
    fill_rect(cv, x1, y1, x2, y1 + t - 1, c);
    fill_rect(cv, x1, y2 - t + 1, x2, y2, c);
    fill_rect(cv, x1, y1, x1 + t - 1, y2, c);
    fill_rect(cv, x2 - t + 1, y1, x2, y2, c);
}

typedef struct {
    FT_Library lib;
    FT_Face face;
    int asc, desc; /* pixels above / below the baseline */
} font;

static bool font_open(font *f, const char *path, int px) {
    memset(f, 0, sizeof *f);
    if (FT_Init_FreeType(&f->lib)) return false;
    if (FT_New_Face(f->lib, path, 0, &f->face) || FT_Set_Pixel_Sizes(f->face, 0, (FT_UInt)px)) {
        if (f->face) FT_Done_Face(f->face);
        FT_Done_FreeType(f->lib);
        memset(f, 0, sizeof *f);
        return false;
    }
    f->asc = (int)(f->face->size->metrics.ascender >> 6);
    f->desc = (int)(-(f->face->size->metrics.descender >> 6));
    if (f->asc < 1) f->asc = px;
    if (f->desc < 0) f->desc = 0;
    return true;
}

static void font_close(font *f) {
    if (f->face) FT_Done_Face(f->face);
    if (f->lib) FT_Done_FreeType(f->lib);
}

/* Decodes up to max code points of a phrase (invalid bytes -> U+FFFD). */
static int decode_label(const char *s, uint32_t *cps, int max) {
    size_t n = strlen(s), i = 0;
    int k = 0;
    while (i < n && k < max) {
        uint32_t cp;
        int l = gr_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (l == 0) {
            cp = 0xFFFD;
            l = 1;
        }
        cps[k++] = cp;
        i += (size_t)l;
    }
    return k;
}

static int text_width(font *f, const uint32_t *cps, int n) {
    long wsum = 0;
    for (int i = 0; i < n; i++)
        if (!FT_Load_Char(f->face, cps[i], FT_LOAD_DEFAULT)) wsum += f->face->glyph->advance.x >> 6;
    return wsum > 1 << 20 ? 1 << 20 : (int)wsum;
}

/* Plate of colour c at (x0, y0) with the phrase in black or white (whichever contrasts). */
static void draw_label(const canvas *cv, font *f, const uint32_t *cps, int n, int x0, int y0,
                       int pw, int ph, int pad, const uint8_t c[3]) {
    fill_rect(cv, x0, y0, x0 + pw - 1, y0 + ph - 1, c);
    int lum = (299 * c[0] + 587 * c[1] + 114 * c[2]) / 1000;
    uint8_t ink = lum > 140 ? 0 : 255;
    int clip_x0 = MG_MAX(x0, 0), clip_y0 = MG_MAX(y0, 0);
    int clip_x1 = MG_MIN(x0 + pw - 1, cv->w - 1), clip_y1 = MG_MIN(y0 + ph - 1, cv->h - 1);
    int pen = x0 + pad, base = y0 + pad + f->asc;
    for (int i = 0; i < n && pen <= clip_x1; i++) {
        if (FT_Load_Char(f->face, cps[i], FT_LOAD_RENDER)) continue;
        FT_GlyphSlot g = f->face->glyph;
        const FT_Bitmap *bm = &g->bitmap;
        if (bm->pixel_mode == FT_PIXEL_MODE_GRAY && bm->buffer) {
            int gx = pen + g->bitmap_left, gy = base - g->bitmap_top;
            for (unsigned r = 0; r < bm->rows; r++) {
                int y = gy + (int)r;
                if (y < clip_y0 || y > clip_y1) continue;
                const unsigned char *src = bm->buffer + (long)r * bm->pitch;
                uint8_t *row = cv->px + (size_t)y * cv->stride;
                for (unsigned q = 0; q < bm->width; q++) {
                    int x = gx + (int)q;
                    if (x < clip_x0 || x > clip_x1 || !src[q]) continue;
                    unsigned a = src[q];
                    for (int ch = 0; ch < 3; ch++) {
                        uint8_t *d = row + (size_t)x * 3 + ch;
                        *d = (uint8_t)((*d * (255 - a) + ink * a + 127) / 255);
                    }
                }
            }
        }
        pen += (int)(g->advance.x >> 6);
    }
}

/* Draws every entity's boxes (and labels) on an RGB8 image; see minigpt.h. */
mg_status mg_draw_grounding(uint8_t *rgb, int w, int h, size_t stride, const mg_grounding *g,
                            const mg_draw_params *p, char *err, size_t err_len) {
    if (err && err_len) err[0] = 0;
    size_t row_bytes;
    if (!rgb || !g || w <= 0 || h <= 0 || !mg_mul_ok((size_t)w, 3, &row_bytes) ||
        stride < row_bytes)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG,
                      "draw: bad image (%dx%d, stride %zu) or NULL argument", w, h, stride);
    mg_draw_params dp = p ? *p : mg_draw_default_params();
    int small = MG_MIN(w, h);
    int t = dp.thickness > 0 ? dp.thickness : MG_MAX(2, small / 200);
    int fpx = dp.font_px > 0 ? dp.font_px : MG_MAX(10, small / 40);
    if (dp.thickness < 0 || dp.font_px < 0 || fpx > 1024)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "draw: thickness %d / font size %d",
                      dp.thickness, dp.font_px);
    canvas cv = {rgb, w, h, stride};

    bool want_labels = false;
    for (int i = 0; i < g->n_entities && dp.draw_labels; i++)
        if (g->entities[i].n_boxes > 0 && g->entities[i].phrase && g->entities[i].phrase[0])
            want_labels = true;
    font f;
    bool have_font = false;
    const char *path = dp.font_path ? dp.font_path : DEFAULT_FONT;
    if (want_labels) {
        have_font = font_open(&f, path, fpx);
        if (!have_font)
            mg_err(err, err_len, MG_OK, "draw: cannot load font %s: labels not drawn", path);
    }

    /* boxes first, then labels, so that no outline crosses a label */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && !have_font) break;
        for (int i = 0; i < g->n_entities; i++) {
            const mg_entity *e = &g->entities[i];
            uint8_t c[3];
            mg_draw_color(i, c);
            uint32_t cps[MAX_LABEL_CHARS];
            int n_cp = 0, tw = 0;
            if (pass == 1) {
                if (!e->phrase || !e->phrase[0]) continue;
                n_cp = decode_label(e->phrase, cps, MAX_LABEL_CHARS);
                tw = text_width(&f, cps, n_cp);
            }
            for (int k = 0; k < e->n_boxes; k++) {
                const mg_box *b = &e->boxes[k];
                if (b->x1 > b->x2 || b->y1 > b->y2) continue;
                int x1 = grid_to_px(b->x1, w), y1 = grid_to_px(b->y1, h);
                int x2 = grid_to_px(b->x2, w), y2 = grid_to_px(b->y2, h);
                if (pass == 0) {
                    draw_outline(&cv, x1, y1, x2, y2, t, c);
                    continue;
                }
                int pad = MG_MAX(2, fpx / 5);
                int pw = MG_MIN(tw + 2 * pad, w), ph = f.asc + f.desc + 2 * pad;
                int px0 = x1 + pw > w ? w - pw : x1;
                int py0 = y1 - ph;
                if (py0 < 0) py0 = MG_MIN(y1 + t, h - ph); /* top edge: just inside the box */
                if (py0 < 0) py0 = 0;
                draw_label(&cv, &f, cps, n_cp, MG_MAX(px0, 0), py0, pw, ph, pad, c);
            }
        }
    }
    if (have_font) font_close(&f);
    return MG_OK;
}
