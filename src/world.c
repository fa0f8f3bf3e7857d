/*
 * world.c - the synthetic grounded world (see world.h and docs/synth.md): layout from a
 * splitmix64 stream, 4x4-supersampled rendering with a per-sample owner map (so the ground-truth
 * box of an object is exactly the extent of the pixels where it owns a sample), and the task
 * examples in MiniGPT-v2's training formats. Only IEEE basic operations and sqrt are used in the
 * geometry (sine and cosine are computed here), so pixels are identical on every machine.
 */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif
#include "world.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SS 4                /* samples per pixel side */
#define NSAMP (SS * SS)
_Static_assert(NSAMP == 16, "the compositing fast path reads a pixel's samples as two 8-byte words");
#define NO_OWNER 0xFF
#define PI_D 3.14159265358979323846

/* ==== Names ==== */

static const char *const SHAPES[WORLD_N_SHAPES] = {"circle",  "square",  "triangle", "star",
                                                   "diamond", "hexagon", "pentagon", "cross"};
static const char *const SHAPES_PL[WORLD_N_SHAPES] = {"circles",  "squares",  "triangles",
                                                      "stars",    "diamonds", "hexagons",
                                                      "pentagons", "crosses"};
static const char *const COLORS[WORLD_N_COLORS] = {"red",    "green", "blue",  "yellow",
                                                   "purple", "orange", "white", "black",
                                                   "pink",   "brown", "cyan"};
static const uint8_t COLOR_RGB[WORLD_N_COLORS][3] = {
    {220, 30, 30},  {30, 160, 60},   {40, 70, 220},  {245, 215, 40}, {140, 50, 180}, {245, 135, 20},
    {250, 250, 250}, {15, 15, 15},   {245, 130, 190}, {125, 75, 30}, {40, 200, 220}};
static const char *const SIZES[WORLD_N_SIZES] = {"small", "medium", "large"};
static const char *const BACKGROUNDS[WORLD_N_BACKGROUNDS] = {"plain", "gradient", "noise", "clutter"};
/* Muted background tones; objects are only drawn in colours that stand out from them. */
static const uint8_t BG_RGB[][3] = {{190, 190, 190}, {95, 95, 95},   {225, 215, 185}, {60, 70, 95},
                                    {150, 175, 150}, {45, 45, 45},   {170, 150, 125}, {120, 140, 170}};
_Static_assert(MG_ARRAY_LEN(BG_RGB) == WORLD_N_TONES, "one tone bit per background tone");
/* Radius range of each size class, as a fraction of the image side. */
static const double SIZE_R[WORLD_N_SIZES][2] = {{0.045, 0.06}, {0.08, 0.10}, {0.13, 0.155}};

const char *world_shape_name(int s) { return s >= 0 && s < WORLD_N_SHAPES ? SHAPES[s] : NULL; }
const char *world_shape_plural(int s) { return s >= 0 && s < WORLD_N_SHAPES ? SHAPES_PL[s] : NULL; }
const char *world_color_name(int c) { return c >= 0 && c < WORLD_N_COLORS ? COLORS[c] : NULL; }
const char *world_size_name(int s) { return s >= 0 && s < WORLD_N_SIZES ? SIZES[s] : NULL; }
const char *world_background_name(int b) {
    return b >= 0 && b < WORLD_N_BACKGROUNDS ? BACKGROUNDS[b] : NULL;
}

/* The RGB value objects of colour c are drawn with (black for out-of-range values). */
void world_color_rgb(int c, uint8_t rgb[3]) {
    for (int k = 0; k < 3; k++) rgb[k] = c >= 0 && c < WORLD_N_COLORS ? COLOR_RGB[c][k] : 0;
}

/* ==== Deterministic random numbers and trigonometry ==== */

typedef struct {
    uint64_t s;
} rng_t;

static uint64_t mix64(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static uint64_t rng_next(rng_t *r) { return mix64(r->s += 0x9E3779B97F4A7C15ull); }
static double rng_unit(rng_t *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }
static int rng_int(rng_t *r, int n) { return (int)(rng_next(r) % (uint64_t)n); }
static double rng_range(rng_t *r, double a, double b) { return a + (b - a) * rng_unit(r); }

/* sin and cos by Taylor series after reduction to [-pi, pi]: basic IEEE operations only, so the
 * result is the same everywhere (libm's may differ in the last bit between versions). */
static void det_sincos(double x, double *s, double *c) {
    double k = floor(x / (2 * PI_D) + 0.5);
    x -= k * 2 * PI_D;
    double x2 = x * x, ts = x, tc = 1, ss = x, cc = 1;
    for (int n = 1; n <= 14; n++) {
        ts *= -x2 / ((2 * n) * (2 * n + 1));
        tc *= -x2 / ((2 * n - 1) * (2 * n));
        ss += ts;
        cc += tc;
    }
    *s = ss;
    *c = cc;
}

/* ==== Geometry ==== */

typedef struct {
    int n;
    double x[12], y[12];
} poly_t;

/* The outline of an object as a polygon (circles are handled separately). */
static void object_poly(const world_object *o, poly_t *p) {
    double r = o->r;
    double ux[12], uy[12];
    int n = 0;
    switch (o->shape) {
    case WORLD_SQUARE: {
        double h = 0.8 * r;
        double sx[4] = {-h, h, h, -h}, sy[4] = {-h, -h, h, h};
        for (n = 0; n < 4; n++) { ux[n] = sx[n]; uy[n] = sy[n]; }
        break;
    }
    case WORLD_DIAMOND: {
        double sx[4] = {0, 0.62 * r, 0, -0.62 * r}, sy[4] = {-r, 0, r, 0};
        for (n = 0; n < 4; n++) { ux[n] = sx[n]; uy[n] = sy[n]; }
        break;
    }
    case WORLD_CROSS: {
        double a = 0.3 * r, b = 0.9 * r;
        double sx[12] = {-a, a, a, b, b, a, a, -a, -a, -b, -b, -a};
        double sy[12] = {-b, -b, -a, -a, a, a, b, b, a, a, -a, -a};
        for (n = 0; n < 12; n++) { ux[n] = sx[n]; uy[n] = sy[n]; }
        break;
    }
    default: {
        int k = o->shape == WORLD_TRIANGLE ? 3 : o->shape == WORLD_STAR ? 10
              : o->shape == WORLD_HEXAGON ? 6 : 5;
        double rr = o->shape == WORLD_TRIANGLE ? r : 0.92 * r;
        for (n = 0; n < k; n++) {
            double s, c;
            det_sincos(-PI_D / 2 + 2 * PI_D * n / k, &s, &c);
            double rad = o->shape == WORLD_STAR && (n & 1) ? 0.45 * r : rr;
            ux[n] = rad * c;
            uy[n] = rad * s;
        }
        break;
    }
    }
    double s, c;
    det_sincos(o->angle, &s, &c);
    p->n = n;
    for (int i = 0; i < n; i++) {
        p->x[i] = o->cx + ux[i] * c - uy[i] * s;
        p->y[i] = o->cy + ux[i] * s + uy[i] * c;
    }
}

/* Even-odd crossing test (works for the concave star and cross). */
static bool poly_inside(const poly_t *p, double x, double y) {
    bool in = false;
    for (int i = 0, j = p->n - 1; i < p->n; j = i++) {
        if ((p->y[i] > y) != (p->y[j] > y)) {
            double xc = p->x[j] + (y - p->y[j]) * (p->x[i] - p->x[j]) / (p->y[i] - p->y[j]);
            if (x < xc) in = !in;
        }
    }
    return in;
}

/* ==== Layout and rendering ==== */

/* The least, over the background's tones, of the largest channel difference to colour c. */
static int contrast(const world_scene *sc, int c) {
    int worst = 255;
    int nt = sc->background == WORLD_BG_GRADIENT ? 5 : 1;
    for (int t = 0; t < nt; t++) {
        int best = 0;
        for (int k = 0; k < 3; k++) {
            int b = sc->bg_rgb[0][k];
            if (nt > 1) b = (sc->bg_rgb[0][k] * (4 - t) + sc->bg_rgb[1][k] * t) / 4;
            int d = abs((int)COLOR_RGB[c][k] - b);
            if (d > best) best = d;
        }
        if (best < worst) worst = best;
    }
    return worst;
}

/* Draws objects into the owner map (one byte per sample) and fills their sample counts/boxes. */
static void render_owners(world_scene *sc, uint8_t *own) {
    int w = sc->w, h = sc->h;
    memset(own, NO_OWNER, (size_t)w * h * NSAMP);
    for (int i = 0; i < sc->n_objects; i++) {
        world_object *o = &sc->objects[i];
        poly_t p = {0, {0}, {0}};
        if (o->shape != WORLD_CIRCLE) object_poly(o, &p);
        int xa = MG_MAX(0, (int)floor(o->cx - o->r) - 1), xb = MG_MIN(w - 1, (int)ceil(o->cx + o->r) + 1);
        int ya = MG_MAX(0, (int)floor(o->cy - o->r) - 1), yb = MG_MIN(h - 1, (int)ceil(o->cy + o->r) + 1);
        o->n_samples = 0;
        for (int y = ya; y <= yb; y++)
            for (int x = xa; x <= xb; x++)
                for (int sy = 0; sy < SS; sy++)
                    for (int sx = 0; sx < SS; sx++) {
                        double px = x + (sx + 0.5) / SS, py = y + (sy + 0.5) / SS;
                        bool in;
                        if (o->shape == WORLD_CIRCLE) {
                            double dx = px - o->cx, dy = py - o->cy;
                            in = dx * dx + dy * dy <= o->r * o->r;
                        } else {
                            in = poly_inside(&p, px, py);
                        }
                        if (in) {
                            own[((size_t)y * w + x) * NSAMP + sy * SS + sx] = (uint8_t)i;
                            o->n_samples++;
                        }
                    }
    }
    for (int i = 0; i < sc->n_objects; i++) {
        world_object *o = &sc->objects[i];
        o->n_visible = 0;
        o->x0 = w; o->y0 = h; o->x1 = -1; o->y1 = -1;
    }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            const uint8_t *s = own + ((size_t)y * w + x) * NSAMP;
            for (int k = 0; k < NSAMP; k++) {
                if (s[k] == NO_OWNER) continue;
                world_object *o = &sc->objects[s[k]];
                o->n_visible++;
                if (x < o->x0) o->x0 = x;
                if (x > o->x1) o->x1 = x;
                if (y < o->y0) o->y0 = y;
                if (y > o->y1) o->y1 = y;
            }
        }
}

/* Background colour of every pixel (before objects), 3 bytes per pixel. */
static void render_background(const world_scene *sc, rng_t *r, uint8_t *bg) {
    int w = sc->w, h = sc->h;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = bg + ((size_t)y * w + x) * 3;
            if (sc->background == WORLD_BG_GRADIENT) {
                /* t along the diagonal, 0 at the top-left pixel centre, 1 at the bottom-right */
                double t = (double)(x + y) / (double)(w + h - 2);
                for (int k = 0; k < 3; k++)
                    p[k] = (uint8_t)floor(sc->bg_rgb[0][k] + (sc->bg_rgb[1][k] - sc->bg_rgb[0][k]) * t + 0.5);
            } else {
                int d = sc->background == WORLD_BG_NOISE ? rng_int(r, 41) - 20 : 0;
                for (int k = 0; k < 3; k++) p[k] = (uint8_t)MG_MAX(0, MG_MIN(255, sc->bg_rgb[0][k] + d));
            }
        }
    if (sc->background == WORLD_BG_CLUTTER) {
        /* faint dots and short strokes in tones near the base colour */
        int n = 25 + rng_int(r, 30);
        for (int i = 0; i < n; i++) {
            int d = rng_int(r, 2) ? 18 + rng_int(r, 10) : -(18 + rng_int(r, 10));
            uint8_t col[3];
            for (int k = 0; k < 3; k++) col[k] = (uint8_t)MG_MAX(0, MG_MIN(255, sc->bg_rgb[0][k] + d));
            int cx = rng_int(r, w), cy = rng_int(r, h);
            int rad = 1 + rng_int(r, 4);
            int len = rng_int(r, 2) ? 0 : 8 + rng_int(r, 20); /* stroke length (0: dot) */
            for (int y = cy - rad; y <= cy + rad; y++)
                for (int x = cx - rad; x <= cx + rad + len; x++) {
                    if (x < 0 || y < 0 || x >= w || y >= h) continue;
                    int dx = x < cx ? x - cx : x > cx + len ? x - cx - len : 0, dy = y - cy;
                    if (dx * dx + dy * dy > rad * rad) continue;
                    memcpy(bg + ((size_t)y * w + x) * 3, col, 3);
                }
        }
    }
}

/* Places the objects (sizes, shapes, colours, positions); false when this try should be redone. */
/* The members of mask (all of 0..n-1 when mask has none of them) into out; returns the count. */
static int mask_list(unsigned mask, int n, int *out) {
    int k = 0;
    for (int i = 0; i < n; i++)
        if (!(mask & ((1u << n) - 1)) || mask & 1u << i) out[k++] = i;
    return k;
}

static bool layout(world_scene *sc, rng_t *r, int n, const world_opts *op) {
    int s = MG_MIN(sc->w, sc->h);
    int ok_colors[WORLD_N_COLORS], n_ok = 0, shapes[WORLD_N_SHAPES], sizes[WORLD_N_SIZES];
    const unsigned cmask = op && op->colors & ((1u << WORLD_N_COLORS) - 1) ? op->colors : ~0u;
    for (int c = 0; c < WORLD_N_COLORS; c++)
        if (cmask & 1u << c && contrast(sc, c) >= 70) ok_colors[n_ok++] = c;
    /* two colours at least, so that colour words mean something (unless the curriculum allows one) */
    if (n_ok < (cmask == ~0u ? 2 : 1)) return false;
    const int n_shapes = mask_list(op ? op->shapes : 0, WORLD_N_SHAPES, shapes);
    const int n_sizes = mask_list(op ? op->sizes : 0, WORLD_N_SIZES, sizes);
    bool allow_overlap = rng_int(r, 3) == 0;
    sc->n_objects = 0;
    for (int i = 0; i < n; i++) {
        world_object *o = &sc->objects[i];
        memset(o, 0, sizeof *o);
        o->shape = shapes[rng_int(r, n_shapes)];
        o->color = ok_colors[rng_int(r, n_ok)];
        if (op && op->same > 0 && i > 0) { /* repeats (drawn only when asked: the world stays as it was) */
            if (rng_int(r, 100) < op->same) o->shape = sc->objects[rng_int(r, i)].shape;
            if (rng_int(r, 100) < op->same) o->color = sc->objects[rng_int(r, i)].color;
        }
        o->size = sizes[rng_int(r, n_sizes)];
        o->r = s * rng_range(r, SIZE_R[o->size][0], SIZE_R[o->size][1]);
        o->angle = o->shape == WORLD_CIRCLE ? 0
                 : o->shape == WORLD_HEXAGON ? rng_range(r, 0, PI_D / 3)
                                             : rng_range(r, -0.2, 0.2);
        bool placed = false;
        for (int t = 0; t < 60 && !placed; t++) {
            o->cx = rng_range(r, o->r + 3, sc->w - o->r - 3);
            o->cy = rng_range(r, o->r + 3, sc->h - o->r - 3);
            placed = true;
            for (int j = 0; j < i; j++) {
                const world_object *q = &sc->objects[j];
                double dx = o->cx - q->cx, dy = o->cy - q->cy, d = sqrt(dx * dx + dy * dy);
                double sum = o->r + q->r;
                /* same-coloured objects never touch (they would merge); others may overlap a bit */
                double need = allow_overlap && o->color != q->color ? 0.75 * sum : sum + 4;
                if (d < need) { placed = false; break; }
            }
        }
        if (!placed) return false;
        sc->n_objects = i + 1;
    }
    return true;
}

/* Generates and renders one scene; see world.h. */
mg_status world_scene_generate(world_scene *sc, uint64_t seed, uint64_t index, int size, bool held_out,
                               char *err, size_t err_len) {
    return world_scene_generate_opts(sc, seed, index, size, held_out, NULL, err, err_len);
}

mg_status world_scene_generate_opts(world_scene *sc, uint64_t seed, uint64_t index, int size, bool held_out,
                                    const world_opts *op, char *err, size_t err_len) {
    if (!sc) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "world: no scene");
    memset(sc, 0, sizeof *sc);
    if (size < 64 || size > 4096)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "world: image size %d not in 64..4096", size);
    sc->w = sc->h = size;
    sc->seed = mix64(mix64(seed ^ (held_out ? 0x5EEDE7A1C0FFEE11ull : 0)) + index * 0x9E3779B97F4A7C15ull);
    sc->vqa_kinds = op ? op->vqa : 0;
    size_t npx = (size_t)size * size;
    uint8_t *own = malloc(npx * NSAMP);
    uint8_t *bg = malloc(npx * 3);
    uint8_t *rgb = malloc(npx * 3);
    if (!own || !bg || !rgb) {
        free(own); free(bg); free(rgb);
        return mg_err(err, err_len, MG_ERR_NOMEM, "world: out of memory for a %dx%d scene", size, size);
    }
    rng_t r = {sc->seed};
    /* the draws below are the full world's when op restricts nothing (same scenes, same pixels) */
    const int lo = op && op->min_objects > 0 ? MG_MIN(op->min_objects, WORLD_MAX_OBJECTS) : 1;
    const int hi = op && op->max_objects > 0 ? MG_MAX(lo, MG_MIN(op->max_objects, WORLD_MAX_OBJECTS)) : WORLD_MAX_OBJECTS;
    int bgs[WORLD_N_BACKGROUNDS], tones[WORLD_N_TONES];
    const int n_bgs = mask_list(op ? op->backgrounds : 0, WORLD_N_BACKGROUNDS, bgs);
    const int n_tones = mask_list(op ? op->tones : 0, WORLD_N_TONES, tones);
    int n = lo + rng_int(&r, hi - lo + 1);
    for (int attempt = 0;; attempt++) {
        if (attempt >= 4096) {
            free(own); free(bg); free(rgb);
            return mg_err(err, err_len, MG_ERR_INVALID_ARG,
                          "world: the scene options admit no scene (colours too close to the background tones?)");
        }
        if (attempt > 0 && attempt % 8 == 0 && n > lo) n--; /* crowded: fewer objects */
        sc->background = bgs[rng_int(&r, n_bgs)];
        int nb = (int)MG_ARRAY_LEN(BG_RGB);
        int b0 = tones[rng_int(&r, n_tones)], b1 = (b0 + 1 + rng_int(&r, nb - 1)) % nb;
        memcpy(sc->bg_rgb[0], BG_RGB[b0], 3);
        memcpy(sc->bg_rgb[1], sc->background == WORLD_BG_GRADIENT ? BG_RGB[b1] : BG_RGB[b0], 3);
        if (!layout(sc, &r, n, op)) continue;
        render_owners(sc, own);
        bool ok = true;
        for (int i = 0; i < sc->n_objects; i++)
            if (sc->objects[i].n_visible * 10 < sc->objects[i].n_samples * 7) ok = false;
        if (ok) break;
    }
    render_background(sc, &r, bg);
    uint8_t col[WORLD_MAX_OBJECTS][3];
    for (int i = 0; i < sc->n_objects; i++) memcpy(col[i], COLOR_RGB[sc->objects[i].color], 3);
    for (size_t p = 0; p < npx; p++) {
        const uint8_t *s = own + p * NSAMP;
        /* most pixels have one owner for all samples (or none): the average is that colour */
        uint64_t w0, w1;
        memcpy(&w0, s, 8);
        memcpy(&w1, s + 8, 8);
        if (w0 == w1 && w0 == s[0] * 0x0101010101010101ull) {
            memcpy(rgb + p * 3, s[0] == NO_OWNER ? bg + p * 3 : col[s[0]], 3);
            continue;
        }
        for (int k = 0; k < 3; k++) {
            int sum = 0;
            for (int q = 0; q < NSAMP; q++) sum += s[q] == NO_OWNER ? bg[p * 3 + k] : col[s[q]][k];
            rgb[p * 3 + k] = (uint8_t)((sum + NSAMP / 2) / NSAMP);
        }
    }
    free(bg);
    sc->image.w = sc->image.h = size;
    sc->image.rgb = rgb;
    sc->owners = own; /* kept for the patch labels and masks */
    return MG_OK;
}

/* Frees the scene's image and owner map; the struct is zeroed. */
void world_scene_free(world_scene *sc) {
    if (!sc) return;
    mg_image_free(&sc->image);
    free(sc->owners);
    memset(sc, 0, sizeof *sc);
}

/* The owner of every anti-aliasing sample (NSAMP per pixel) of a scene that `patch` tiles: the
 * map drawn with the scene. */
static mg_status patch_owners(const world_scene *sc, int patch, const void *out, const uint8_t **own, char *err,
                              size_t err_len) {
    if (!sc || !out || patch < 1 || sc->w % patch || sc->h % patch)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "world: patch size %d does not tile the scene", patch);
    if (!sc->owners) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "world: the scene has no owner map");
    *own = sc->owners;
    return MG_OK;
}

/* Per-patch labels for the trainer's auxiliary head; see world.h. */
mg_status world_patch_labels(const world_scene *sc, int patch, int32_t *labels, char *err, size_t err_len) {
    const uint8_t *own;
    mg_status st = patch_owners(sc, patch, labels, &own, err, err_len);
    if (st != MG_OK) return st;
    const int w = sc->w, gw = w / patch, gh = sc->h / patch;
    for (int gy = 0; gy < gh; gy++)
        for (int gx = 0; gx < gw; gx++) {
            int cnt[WORLD_MAX_OBJECTS] = {0};
            for (int y = gy * patch; y < (gy + 1) * patch; y++)
                for (int x = gx * patch; x < (gx + 1) * patch; x++) {
                    const uint8_t *q = own + ((size_t)y * w + x) * NSAMP;
                    for (int k = 0; k < NSAMP; k++)
                        if (q[k] != NO_OWNER) cnt[q[k]]++;
                }
            int best = -1;
            for (int i = 0; i < sc->n_objects; i++)
                if (best < 0 || cnt[i] > cnt[best]) best = i;
            const world_object *o = best >= 0 ? &sc->objects[best] : NULL;
            labels[gy * gw + gx] = o && cnt[best] * 4 >= patch * patch * NSAMP
                                       ? 1 + o->color * WORLD_N_SHAPES + o->shape
                                       : 0;
        }
    return MG_OK;
}

/* Per-pixel object masks by patch for the trainer's auxiliary mask head; see world.h. */
mg_status world_patch_masks(const world_scene *sc, int patch, float *masks, char *err, size_t err_len) {
    const uint8_t *own;
    mg_status st = patch_owners(sc, patch, masks, &own, err, err_len);
    if (st != MG_OK) return st;
    const int w = sc->w, h = sc->h, gw = w / patch;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            const uint8_t *q = own + ((size_t)y * w + x) * NSAMP;
            int n = 0;
            for (int k = 0; k < NSAMP; k++) n += q[k] != NO_OWNER;
            const size_t cell = (size_t)(y / patch) * (size_t)gw + (size_t)(x / patch);
            masks[cell * (size_t)(patch * patch) + (size_t)(y % patch) * (size_t)patch + (size_t)(x % patch)] =
                (float)n / (float)NSAMP;
        }
    return MG_OK;
}

/* Half-open pixel box of an object; see world.h. */
void world_object_box(const world_object *o, double box[4]) {
    box[0] = o->x0;
    box[1] = o->y0;
    box[2] = o->x1 + 1;
    box[3] = o->y1 + 1;
}

/* ==== Text ==== */

typedef struct {
    char *p;
    size_t cap, len;
    bool overflow;
} tbuf;

static void tb_add(tbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_add(tbuf *b, const char *fmt, ...) {
    if (b->overflow) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= b->cap - b->len) {
        b->overflow = true;
        b->p[b->len] = 0;
        return;
    }
    b->len += (size_t)n;
}

static const char *const NUM_WORDS[] = {"no", "a", "two", "three", "four", "five", "six"};

/* Region text of object i. */
static void region(const world_scene *sc, int i, char out[24]) {
    double b[4];
    world_object_box(&sc->objects[i], b);
    if (mg_region_text(b[0], b[1], b[2], b[3], sc->w, sc->h, out, 24, NULL, 0) != MG_OK) out[0] = 0;
}

/* Objects sorted left to right (then top to bottom) by their boxes. */
static void order_lr(const world_scene *sc, int idx[WORLD_MAX_OBJECTS]) {
    int n = sc->n_objects;
    for (int i = 0; i < n; i++) idx[i] = i;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0; j--) {
            const world_object *a = &sc->objects[idx[j - 1]], *b = &sc->objects[idx[j]];
            if (a->x0 > b->x0 || (a->x0 == b->x0 && a->y0 > b->y0)) {
                int t = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = t;
            } else {
                break;
            }
        }
}

/* Where an object is: "top left", "left", "center", ...; NULL when its centre is close to a
 * border between regions (then position questions are not asked). */
static const char *position_word(const world_scene *sc, int i, bool strict) {
    const world_object *o = &sc->objects[i];
    double fx = (o->x0 + o->x1 + 1) / 2.0 / sc->w, fy = (o->y0 + o->y1 + 1) / 2.0 / sc->h;
    const double m = strict ? 0.05 : 0;
    int hx = fx < 1.0 / 3 ? 0 : fx > 2.0 / 3 ? 2 : 1;
    int vy = fy < 1.0 / 3 ? 0 : fy > 2.0 / 3 ? 2 : 1;
    if (fabs(fx - 1.0 / 3) < m || fabs(fx - 2.0 / 3) < m || fabs(fy - 1.0 / 3) < m ||
        fabs(fy - 2.0 / 3) < m)
        return NULL;
    static const char *const W[3][3] = {{"top left", "top", "top right"},
                                        {"left", "center", "right"},
                                        {"bottom left", "bottom", "bottom right"}};
    return W[vy][hx];
}

/* ---- referring expressions ---- */

enum { REL_NONE, REL_LEFT, REL_RIGHT, REL_ABOVE, REL_BELOW, N_REL };
static const char *const REL_WORDS[N_REL] = {"", "left of", "right of", "above", "below"};

typedef struct {
    int shape, color, size; /* -1: not said */
    int rel;                /* REL_* */
    int lm_shape, lm_color; /* landmark (lm_color -1: shape only) */
} desc_t;

static bool attrs_match(const world_object *o, int shape, int color, int size) {
    return (shape < 0 || o->shape == shape) && (color < 0 || o->color == color) &&
           (size < 0 || o->size == size);
}

static bool rel_holds(const world_object *a, const world_object *b, int rel) {
    switch (rel) {
    case REL_LEFT: return a->x1 < b->x0;
    case REL_RIGHT: return a->x0 > b->x1;
    case REL_ABOVE: return a->y1 < b->y0;
    case REL_BELOW: return a->y0 > b->y1;
    default: return true;
    }
}

/* Number of objects a description fits (a relation needs a unique landmark). */
static int desc_count(const world_scene *sc, const desc_t *d, int *which) {
    int lm = -1;
    if (d->rel != REL_NONE) {
        int nl = 0;
        for (int j = 0; j < sc->n_objects; j++)
            if (attrs_match(&sc->objects[j], d->lm_shape, d->lm_color, -1)) { lm = j; nl++; }
        if (nl != 1) return 0;
    }
    int n = 0;
    for (int i = 0; i < sc->n_objects; i++) {
        if (i == lm || !attrs_match(&sc->objects[i], d->shape, d->color, d->size)) continue;
        if (lm >= 0 && !rel_holds(&sc->objects[i], &sc->objects[lm], d->rel)) continue;
        if (which) *which = i;
        n++;
    }
    return n;
}

static void desc_text(const desc_t *d, char *out, size_t n) {
    tbuf b = {out, n, 0, false};
    if (d->size >= 0) tb_add(&b, "%s ", SIZES[d->size]);
    if (d->color >= 0) tb_add(&b, "%s ", COLORS[d->color]);
    tb_add(&b, "%s", SHAPES[d->shape]);
    if (d->rel != REL_NONE) {
        tb_add(&b, " %s the", REL_WORDS[d->rel]);
        if (d->lm_color >= 0) tb_add(&b, " %s", COLORS[d->lm_color]);
        tb_add(&b, " %s", SHAPES[d->lm_shape]);
    }
}

/* Picks at random one of the descriptions that single out object t; need_color: the object's
 * colour must be said. with_size: size words may be used. False when none does. */
static bool describe_object(const world_scene *sc, int t, rng_t *r, bool need_color, desc_t *out) {
    const world_object *o = &sc->objects[t];
    desc_t cand[64];
    int nc = 0;
    for (int form = 0; form < 4; form++) {
        desc_t d = {o->shape, (form & 1) || need_color ? o->color : -1, (form & 2) ? o->size : -1,
                    REL_NONE, -1, -1};
        if (need_color && !(form & 1)) continue;
        int which = -1;
        if (desc_count(sc, &d, &which) == 1 && which == t && nc < 64) cand[nc++] = d;
        for (int j = 0; j < sc->n_objects; j++) {
            if (j == t) continue;
            for (int rel = REL_LEFT; rel < N_REL; rel++)
                for (int lc = 0; lc < 2; lc++) {
                    desc_t e = d;
                    e.rel = rel;
                    e.lm_shape = sc->objects[j].shape;
                    e.lm_color = lc ? sc->objects[j].color : -1;
                    which = -1;
                    if (desc_count(sc, &e, &which) == 1 && which == t && nc < 64) cand[nc++] = e;
                }
        }
    }
    if (nc == 0) return false;
    /* shorter descriptions first: prefer those without a relation when there are some */
    int n_plain = 0;
    for (int i = 0; i < nc; i++) n_plain += cand[i].rel == REL_NONE;
    int pick;
    if (n_plain > 0 && rng_int(r, 3) != 0) {
        int k = rng_int(r, n_plain);
        for (pick = 0; pick < nc; pick++)
            if (cand[pick].rel == REL_NONE && k-- == 0) break;
    } else {
        pick = rng_int(r, nc);
    }
    *out = cand[pick];
    return true;
}

/* ---- instruction pools (the dataset classes in minigpt4/datasets/datasets/) ---- */

static const char *const CAPTION_POOL[] = {
    "Briefly describe this image.", "Provide a concise depiction of this image.",
    "Present a short description of this image.", "Summarize this image in a few words.",
    "A short image caption:", "A short image description:", "A photo of ", "An image that shows ",
    "Write a short description for the image. ", "Write a description for the photo.",
    "Provide a description of what is presented in the photo.",
    "Briefly describe the content of the image.", "Can you briefly explain what you see in the image?",
    "Could you use a few words to describe what you perceive in the photo?",
    "Please provide a short depiction of the picture.",
    "Using language, provide a short account of the image.",
    "Use a few words to illustrate what is happening in the picture."};
static const char *const GROUNDING_POOL[] = {
    "[grounding] please describe this image in details",
    "[grounding] describe this image as detailed as possible",
    "[grounding] summarize this image in details",
    "[grounding] give a thorough description of what you see in this image"};
/* %s: the expression (refer) or the region text (identify) */
static const char *const REFER_POOL[] = {
    "[refer] %s", "[refer] give me the location of %s", "[refer] where is %s ?",
    "[refer] from this image, tell me the location of %s", "[refer] the location of %s is",
    "[refer] could you tell me the location for %s ?", "[refer] where can I locate the %s ?"};
static const char *const IDENTIFY_POOL[] = {
    "[identify] %s", "[identify] what object is in this location %s",
    "[identify] identify the object present at this location %s", "[identify] what is it in %s",
    "[identify] describe this object in %s", "[identify] this %s is", "[identify] the object in %s is"};
static const char *const VQA_POOL[] = {
    "[vqa] %s", "[vqa] Based on the image, respond to this question with a short answer: %s"};

#define POOL_PICK(pool, r) (pool)[rng_int((r), (int)MG_ARRAY_LEN(pool))]

/* ---- captions ---- */

/* Groups of equal colour+shape, in left-to-right order of their first member. */
typedef struct {
    int color, shape, n, first;
    unsigned members;
} group_t;

static int make_groups(const world_scene *sc, group_t g[WORLD_MAX_OBJECTS]) {
    int idx[WORLD_MAX_OBJECTS], ng = 0;
    order_lr(sc, idx);
    for (int k = 0; k < sc->n_objects; k++) {
        const world_object *o = &sc->objects[idx[k]];
        int j;
        for (j = 0; j < ng; j++)
            if (g[j].color == o->color && g[j].shape == o->shape) break;
        if (j == ng) {
            g[ng].color = o->color;
            g[ng].shape = o->shape;
            g[ng].n = 0;
            g[ng].first = idx[k];
            g[ng].members = 0;
            ng++;
        }
        g[j].n++;
        g[j].members |= 1u << idx[k];
    }
    return ng;
}

static const char *bg_phrase(int b) {
    static const char *const P[WORLD_N_BACKGROUNDS] = {"a plain background", "a gradient background",
                                                       "a noisy background", "a cluttered background"};
    return P[b];
}

/* "a large red circle" / "two blue stars" */
static void group_np(const world_scene *sc, const group_t *g, tbuf *b) {
    if (g->n == 1)
        tb_add(b, "a %s %s %s", SIZES[sc->objects[g->first].size], COLORS[g->color], SHAPES[g->shape]);
    else
        tb_add(b, "%s %s %s", NUM_WORDS[g->n], COLORS[g->color], SHAPES_PL[g->shape]);
}

static void list_sep(tbuf *b, int i, int n) {
    if (i == 0) return;
    tb_add(b, i == n - 1 ? " and " : ", ");
}

/* ==== Examples ==== */

typedef struct {
    world_example *out;
    int max, n;
} ex_list;

static world_example *ex_new(ex_list *l, mg_task task) {
    if (l->n >= l->max) return NULL;
    world_example *e = &l->out[l->n++];
    memset(e, 0, sizeof *e);
    e->task = task;
    e->target = -1;
    return e;
}

/* Builds the examples; see world.h. */
mg_status world_scene_examples(const world_scene *sc, unsigned task_mask, bool eval_style,
                               world_example *out, int max, int *n_out, char *err, size_t err_len) {
    if (!sc || !out || !n_out || max < 0 || sc->n_objects < 1)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "world: bad arguments to world_scene_examples");
    *n_out = 0;
    ex_list L = {out, max, 0};
    rng_t r = {sc->seed ^ 0xE8A3B1C5D7F90213ull};
    group_t g[WORLD_MAX_OBJECTS];
    int ng = make_groups(sc, g);
    char reg[WORLD_MAX_OBJECTS][24];
    for (int i = 0; i < sc->n_objects; i++) region(sc, i, reg[i]);
    bool overflow = false;
    world_example *e;

    if ((task_mask & (1u << MG_TASK_CAPTION)) && (e = ex_new(&L, MG_TASK_CAPTION))) {
        snprintf(e->instruction, sizeof e->instruction, "[caption] %s",
                 eval_style ? "please describe this image?" : POOL_PICK(CAPTION_POOL, &r));
        tbuf b = {e->answer, sizeof e->answer, 0, false};
        for (int i = 0; i < ng; i++) {
            list_sep(&b, i, ng);
            if (g[i].n == 1)
                tb_add(&b, "%s %s %s", strchr("aeiou", COLORS[g[i].color][0]) ? "an" : "a",
                       COLORS[g[i].color], SHAPES[g[i].shape]);
            else tb_add(&b, "%s %s %s", NUM_WORDS[g[i].n], COLORS[g[i].color], SHAPES_PL[g[i].shape]);
        }
        tb_add(&b, " on %s", bg_phrase(sc->background));
        overflow |= b.overflow;
    }
    if ((task_mask & (1u << MG_TASK_GROUNDING)) && (e = ex_new(&L, MG_TASK_GROUNDING))) {
        snprintf(e->instruction, sizeof e->instruction, "%s",
                 eval_style ? "[grounding] describe this image in detail" : POOL_PICK(GROUNDING_POOL, &r));
        tbuf b = {e->answer, sizeof e->answer, 0, false};
        tb_add(&b, "The image shows ");
        for (int i = 0; i < ng; i++) {
            list_sep(&b, i, ng);
            tb_add(&b, "<p>");
            group_np(sc, &g[i], &b);
            tb_add(&b, "</p> ");
            int k = 0;
            for (int j = 0; j < sc->n_objects; j++)
                if (g[i].members & (1u << j)) tb_add(&b, "%s%s", k++ ? "<delim>" : "", reg[j]);
        }
        tb_add(&b, " on %s.", bg_phrase(sc->background));
        overflow |= b.overflow;
    }
    if (task_mask & 1u) { /* untagged: "Describe this image." */
        if ((e = ex_new(&L, MG_TASK_NONE))) {
            snprintf(e->instruction, sizeof e->instruction, "Describe this image.");
            tbuf b = {e->answer, sizeof e->answer, 0, false};
            int n = sc->n_objects;
            tb_add(&b, "The image shows %s %s on %s.", n == 1 ? "one" : NUM_WORDS[n],
                   n == 1 ? "object" : "objects", bg_phrase(sc->background));
            int idx[WORLD_MAX_OBJECTS];
            order_lr(sc, idx);
            for (int k = 0; k < n; k++) {
                const world_object *o = &sc->objects[idx[k]];
                const char *pw = position_word(sc, idx[k], false);
                tb_add(&b, " A %s %s %s is %s %s.", SIZES[o->size], COLORS[o->color], SHAPES[o->shape],
                       strcmp(pw, "center") == 0 ? "in the" : strchr(pw, ' ') || !strcmp(pw, "top") ||
                                                              !strcmp(pw, "bottom") ? "at the" : "on the",
                       pw);
            }
            overflow |= b.overflow;
        }
    }
    if (task_mask & (1u << MG_TASK_DETECTION)) {
        /* phrases: every shape present (plural when several), and colour+shape groups */
        char phrases[2 * WORLD_MAX_OBJECTS][64];
        unsigned masks[2 * WORLD_MAX_OBJECTS];
        int np = 0;
        for (int s = 0; s < WORLD_N_SHAPES; s++) {
            unsigned m = 0;
            int c = 0;
            for (int i = 0; i < sc->n_objects; i++)
                if (sc->objects[i].shape == s) { m |= 1u << i; c++; }
            if (!c) continue;
            snprintf(phrases[np], 64, "%s", c > 1 ? SHAPES_PL[s] : SHAPES[s]);
            masks[np++] = m;
        }
        for (int i = 0; i < ng; i++) {
            snprintf(phrases[np], 64, "%s %s", COLORS[g[i].color], g[i].n > 1 ? SHAPES_PL[g[i].shape]
                                                                              : SHAPES[g[i].shape]);
            masks[np++] = g[i].members;
        }
        for (int k = 0; k < 2 && np > 0; k++) {
            int p = rng_int(&r, np);
            if (!(e = ex_new(&L, MG_TASK_DETECTION))) break;
            snprintf(e->query, sizeof e->query, "%s", phrases[p]);
            snprintf(e->instruction, sizeof e->instruction, "[detection] %s", phrases[p]);
            e->objects_mask = masks[p];
            tbuf b = {e->answer, sizeof e->answer, 0, false};
            tb_add(&b, "<p>%s</p> ", phrases[p]);
            int idx[WORLD_MAX_OBJECTS], c = 0;
            order_lr(sc, idx);
            for (int j = 0; j < sc->n_objects; j++)
                if (masks[p] & (1u << idx[j])) tb_add(&b, "%s%s", c++ ? "<delim>" : "", reg[idx[j]]);
            overflow |= b.overflow;
            phrases[p][0] = 0;
            memmove(&phrases[p], &phrases[p + 1], sizeof phrases[0] * (size_t)(np - p - 1));
            memmove(&masks[p], &masks[p + 1], sizeof masks[0] * (size_t)(np - p - 1));
            np--;
        }
    }
    /* objects in a random order for refer / identify / vqa */
    int perm[WORLD_MAX_OBJECTS];
    for (int i = 0; i < sc->n_objects; i++) perm[i] = i;
    for (int i = sc->n_objects - 1; i > 0; i--) {
        int j = rng_int(&r, i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    if (task_mask & (1u << MG_TASK_REFER)) {
        int made = 0;
        for (int k = 0; k < sc->n_objects && made < 3; k++) {
            desc_t d;
            if (!describe_object(sc, perm[k], &r, false, &d)) continue;
            if (!(e = ex_new(&L, MG_TASK_REFER))) break;
            desc_text(&d, e->query, sizeof e->query);
            if (eval_style)
                snprintf(e->instruction, sizeof e->instruction, "[refer] give me the location of %s", e->query);
            else
                snprintf(e->instruction, sizeof e->instruction, POOL_PICK(REFER_POOL, &r), e->query);
            snprintf(e->answer, sizeof e->answer, "%s", reg[perm[k]]);
            e->target = perm[k];
            made++;
        }
    }
    if (task_mask & (1u << MG_TASK_IDENTIFY)) {
        int made = 0;
        for (int k = sc->n_objects - 1; k >= 0 && made < 2; k--) {
            desc_t d;
            if (!describe_object(sc, perm[k], &r, true, &d)) continue;
            if (!(e = ex_new(&L, MG_TASK_IDENTIFY))) break;
            desc_text(&d, e->query, sizeof e->query);
            if (eval_style)
                snprintf(e->instruction, sizeof e->instruction, "[identify] what is this %s", reg[perm[k]]);
            else
                snprintf(e->instruction, sizeof e->instruction, POOL_PICK(IDENTIFY_POOL, &r), reg[perm[k]]);
            snprintf(e->answer, sizeof e->answer, "%s", e->query);
            e->target = perm[k];
            made++;
        }
    }
    if (task_mask & (1u << MG_TASK_VQA)) {
        int kinds[WORLD_N_VQA] = {WORLD_VQA_COUNT, WORLD_VQA_COLOR, WORLD_VQA_SHAPE, WORLD_VQA_WHERE, WORLD_VQA_YESNO};
        if (sc->vqa_kinds & ((1u << WORLD_N_VQA) - 1)) { /* only the allowed kinds, in turn */
            int allowed[WORLD_N_VQA], m = 0;
            for (int k = 0; k < WORLD_N_VQA; k++)
                if (sc->vqa_kinds & 1u << k) allowed[m++] = k;
            for (int k = 0; k < WORLD_N_VQA; k++) kinds[k] = allowed[k % m];
        }
        for (int i = WORLD_N_VQA - 1; i > 0; i--) {
            int j = rng_int(&r, i + 1), t = kinds[i];
            kinds[i] = kinds[j];
            kinds[j] = t;
        }
        int made = 0;
        for (int k = 0; k < WORLD_N_VQA && made < 3; k++) {
            char q[200], a[32];
            const char *qt = NULL, *at = "other";
            int target = -1;
            int t = perm[rng_int(&r, sc->n_objects)];
            const world_object *o = &sc->objects[t];
            q[0] = a[0] = 0;
            switch (kinds[k]) {
            case WORLD_VQA_COUNT: { /* count by shape or by colour */
                int c = 0;
                if (rng_int(&r, 2)) {
                    int s = rng_int(&r, 3) ? o->shape : rng_int(&r, WORLD_N_SHAPES);
                    for (int i = 0; i < sc->n_objects; i++) c += sc->objects[i].shape == s;
                    snprintf(q, sizeof q, "How many %s are there?", SHAPES_PL[s]);
                } else {
                    for (int i = 0; i < sc->n_objects; i++) c += sc->objects[i].color == o->color;
                    snprintf(q, sizeof q, "How many %s objects are there?", COLORS[o->color]);
                }
                snprintf(a, sizeof a, "%d", c);
                qt = "how many";
                at = "number";
                break;
            }
            case WORLD_VQA_COLOR: { /* colour of an object singled out without its colour */
                desc_t d = {o->shape, -1, -1, REL_NONE, -1, -1};
                int which = -1;
                if (desc_count(sc, &d, &which) != 1) {
                    d.size = o->size;
                    if (desc_count(sc, &d, &which) != 1) break;
                }
                char dt[128];
                desc_text(&d, dt, sizeof dt);
                snprintf(q, sizeof q, "What color is the %s?", dt);
                snprintf(a, sizeof a, "%s", COLORS[o->color]);
                qt = "what color is the";
                target = t;
                break;
            }
            case WORLD_VQA_SHAPE: { /* shape of the object of a colour */
                int c = 0;
                for (int i = 0; i < sc->n_objects; i++) c += sc->objects[i].color == o->color;
                if (c != 1) break;
                snprintf(q, sizeof q, "What shape is the %s object?", COLORS[o->color]);
                snprintf(a, sizeof a, "%s", SHAPES[o->shape]);
                qt = "what shape is the";
                target = t;
                break;
            }
            case WORLD_VQA_WHERE: { /* position */
                const char *pw = position_word(sc, t, true);
                desc_t d;
                if (!pw || !describe_object(sc, t, &r, true, &d) || d.rel != REL_NONE) break;
                char dt[128];
                desc_text(&d, dt, sizeof dt);
                snprintf(q, sizeof q, "Where is the %s?", dt);
                snprintf(a, sizeof a, "%s", pw);
                qt = "where is the";
                target = t;
                break;
            }
            default: { /* WORLD_VQA_YESNO: is there a <colour> <shape>? */
                int c = o->color, s = o->shape;
                if (rng_int(&r, 2)) {
                    c = rng_int(&r, WORLD_N_COLORS);
                    s = rng_int(&r, WORLD_N_SHAPES);
                }
                bool yes = false;
                for (int i = 0; i < sc->n_objects; i++)
                    yes |= sc->objects[i].color == c && sc->objects[i].shape == s;
                snprintf(q, sizeof q, "Is there %s %s %s?", strchr("aeiou", COLORS[c][0]) ? "an" : "a",
                         COLORS[c], SHAPES[s]);
                snprintf(a, sizeof a, "%s", yes ? "yes" : "no");
                qt = "is there a";
                at = "yes/no";
                break;
            }
            }
            if (!qt) continue;
            if (!(e = ex_new(&L, MG_TASK_VQA))) break;
            snprintf(e->query, sizeof e->query, "%s", q);
            if (eval_style)
                snprintf(e->instruction, sizeof e->instruction,
                         "[vqa] Based on the image, respond to this question with a short answer: %s", q);
            else
                snprintf(e->instruction, sizeof e->instruction, POOL_PICK(VQA_POOL, &r), q);
            snprintf(e->answer, sizeof e->answer, "%s", a);
            e->question_type = qt;
            e->answer_type = at;
            e->target = target;
            made++;
        }
    }
    *n_out = L.n;
    if (overflow) return mg_err(err, err_len, MG_ERR_INTERNAL, "world: example text too long");
    return MG_OK;
}

/* ==== Mentions ==== */

static int word_index(const char *w, size_t n, const char *const *tab, int nt) {
    for (int i = 0; i < nt; i++)
        if (strlen(tab[i]) == n && strncasecmp(tab[i], w, n) == 0) return i;
    return -1;
}

/* Colour+shape mentions of a text; see world.h. */
int world_mentions(const char *text, int out[][2], int max) {
    if (!text) return 0;
    /* the last two words before the current one: colour index and size flag */
    int prev_color = -1, prev2_color = -1, prev_is_size = 0;
    int n = 0;
    const char *p = text;
    while (*p) {
        if (!isalpha((unsigned char)*p)) { p++; continue; }
        const char *w = p;
        while (isalpha((unsigned char)*p)) p++;
        size_t len = (size_t)(p - w);
        int s = word_index(w, len, SHAPES, WORLD_N_SHAPES);
        if (s < 0) s = word_index(w, len, SHAPES_PL, WORLD_N_SHAPES);
        if (s >= 0) {
            int c = prev_color >= 0 ? prev_color : prev_is_size ? prev2_color : -1;
            if (c >= 0) {
                bool dup = false;
                for (int i = 0; i < n; i++) dup |= out[i][0] == c && out[i][1] == s;
                if (!dup && n < max) {
                    out[n][0] = c;
                    out[n][1] = s;
                    n++;
                }
            }
        }
        int c = word_index(w, len, COLORS, WORLD_N_COLORS);
        int is_size = word_index(w, len, SIZES, WORLD_N_SIZES) >= 0;
        prev2_color = prev_color;
        prev_color = c;
        prev_is_size = is_size;
    }
    return n;
}

/* ==== Scene options (curriculum) ==== */

static const char *const VQA_KINDS[WORLD_N_VQA] = {"count", "color", "shape", "where", "yesno"};

/* Index of name [p, p+n) in table (of count entries), or -1. */
static int name_index(const char *const *table, int count, const char *p, size_t n) {
    for (int i = 0; i < count; i++)
        if (strlen(table[i]) == n && !strncasecmp(table[i], p, n)) return i;
    return -1;
}

/* A '+' list of names (or tone numbers when table is NULL) of one key into *mask. */
static mg_status parse_names(const char *key, const char *p, size_t n, const char *const *table, int count,
                             unsigned *mask, char *err, size_t err_len) {
    *mask = 0;
    if (n == 3 && !strncasecmp(p, "all", 3)) return MG_OK;
    while (n > 0) {
        const char *plus = memchr(p, '+', n);
        size_t k = plus ? (size_t)(plus - p) : n;
        int i = -1;
        if (table) i = name_index(table, count, p, k);
        else if (k == 1 && p[0] >= '0' && p[0] < '0' + count) i = p[0] - '0';
        if (i < 0)
            return mg_err(err, err_len, MG_ERR_INVALID_ARG, "scene: unknown %s '%.*s'", key, (int)MG_MIN(k, (size_t)40), p);
        *mask |= 1u << i;
        p += k + (plus ? 1 : 0);
        n -= k + (plus ? 1 : 0);
        if (plus && n == 0) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "scene: empty name in %s", key);
    }
    return MG_OK;
}

/* See world.h. */
mg_status world_opts_parse(const char *spec, world_opts *o, char *err, size_t err_len) {
    if (!o) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "scene: no options");
    memset(o, 0, sizeof *o);
    if (!spec || !*spec || !strcasecmp(spec, "all")) return MG_OK;
    const char *p = spec;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        if (!eq) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "scene: '%.*s' is not key=value", (int)MG_MIN(n, (size_t)40), p);
        const size_t kn = (size_t)(eq - p), vn = n - kn - 1;
        const char *v = eq + 1;
        mg_status st = MG_OK;
#define KEY(s) (kn == strlen(s) && !strncmp(p, s, kn))
        if (KEY("objects")) {
            int a = 0, b = 0, used = 0;
            char tmp[16];
            if (vn == 0 || vn >= sizeof tmp) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "scene: objects=N or N-M");
            memcpy(tmp, v, vn);
            tmp[vn] = 0;
            if (sscanf(tmp, "%d-%d%n", &a, &b, &used) == 2 && used == (int)vn) {
            } else if (sscanf(tmp, "%d%n", &a, &used) == 1 && used == (int)vn) {
                b = a;
            } else {
                return mg_err(err, err_len, MG_ERR_INVALID_ARG, "scene: objects=N or N-M, not '%s'", tmp);
            }
            if (a < 1 || b > WORLD_MAX_OBJECTS || a > b)
                return mg_err(err, err_len, MG_ERR_INVALID_ARG, "scene: objects %d-%d not within 1-%d", a, b, WORLD_MAX_OBJECTS);
            o->min_objects = a;
            o->max_objects = b;
        } else if (KEY("bg")) {
            st = parse_names("background", v, vn, BACKGROUNDS, WORLD_N_BACKGROUNDS, &o->backgrounds, err, err_len);
        } else if (KEY("tones")) {
            st = parse_names("tone (0-7)", v, vn, NULL, WORLD_N_TONES, &o->tones, err, err_len);
        } else if (KEY("colors")) {
            st = parse_names("colour", v, vn, COLORS, WORLD_N_COLORS, &o->colors, err, err_len);
        } else if (KEY("shapes")) {
            st = parse_names("shape", v, vn, SHAPES, WORLD_N_SHAPES, &o->shapes, err, err_len);
        } else if (KEY("sizes")) {
            st = parse_names("size", v, vn, SIZES, WORLD_N_SIZES, &o->sizes, err, err_len);
        } else if (KEY("vqa")) {
            st = parse_names("vqa kind", v, vn, VQA_KINDS, WORLD_N_VQA, &o->vqa, err, err_len);
        } else if (KEY("same")) {
            int a = -1, used = 0;
            char tmp[8];
            if (vn > 0 && vn < sizeof tmp) {
                memcpy(tmp, v, vn);
                tmp[vn] = 0;
                if (sscanf(tmp, "%d%n", &a, &used) != 1 || used != (int)vn) a = -1;
            }
            if (a < 0 || a > 100)
                return mg_err(err, err_len, MG_ERR_INVALID_ARG, "scene: same=P needs a percent 0-100, not '%.*s'",
                              (int)MG_MIN(vn, (size_t)40), v);
            o->same = a;
        } else {
            return mg_err(err, err_len, MG_ERR_INVALID_ARG,
                          "scene: unknown key '%.*s' (objects, bg, tones, colors, shapes, sizes, vqa, same)", (int)MG_MIN(kn, (size_t)40), p);
        }
#undef KEY
        if (st != MG_OK) return st;
        p += n + (end ? 1 : 0);
        if (end && !*p) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "scene: trailing ','");
    }
    return MG_OK;
}

/* Appends "key=a+b" for a restricting mask. */
static void format_mask(char *buf, size_t len, const char *key, unsigned mask, const char *const *table, int count) {
    if (!(mask & ((1u << count) - 1))) return;
    size_t at = strlen(buf);
    at += (size_t)snprintf(buf + at, at < len ? len - at : 0, "%s%s=", at ? "," : "", key);
    bool first = true;
    for (int i = 0; i < count && at < len; i++) {
        if (!(mask & 1u << i)) continue;
        if (table) at += (size_t)snprintf(buf + at, len - at, "%s%s", first ? "" : "+", table[i]);
        else at += (size_t)snprintf(buf + at, len - at, "%s%d", first ? "" : "+", i);
        first = false;
    }
}

/* See world.h. */
void world_opts_format(const world_opts *o, char *buf, size_t len) {
    if (!buf || !len) return;
    buf[0] = 0;
    if (o && (o->min_objects > 0 || o->max_objects > 0)) {
        const int lo = o->min_objects > 0 ? o->min_objects : 1, hi = o->max_objects > 0 ? o->max_objects : WORLD_MAX_OBJECTS;
        if (lo == hi) snprintf(buf, len, "objects=%d", lo);
        else snprintf(buf, len, "objects=%d-%d", lo, hi);
    }
    if (o) {
        format_mask(buf, len, "bg", o->backgrounds, BACKGROUNDS, WORLD_N_BACKGROUNDS);
        format_mask(buf, len, "tones", o->tones, NULL, WORLD_N_TONES);
        format_mask(buf, len, "colors", o->colors, COLORS, WORLD_N_COLORS);
        format_mask(buf, len, "shapes", o->shapes, SHAPES, WORLD_N_SHAPES);
        format_mask(buf, len, "sizes", o->sizes, SIZES, WORLD_N_SIZES);
        format_mask(buf, len, "vqa", o->vqa, VQA_KINDS, WORLD_N_VQA);
        if (o->same > 0) {
            size_t at = strlen(buf);
            if (at < len) snprintf(buf + at, len - at, "%ssame=%d", at ? "," : "", o->same);
        }
    }
    if (!buf[0]) snprintf(buf, len, "all");
}
