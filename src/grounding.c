/*
 * grounding.c - MiniGPT-v2 grounded answers: "<p>phrase</p> {<x1><y1><x2><y2>}<delim>{...}" is
 * parsed into display text, entities with boxes, and the malformed fragments; JSON rendering; the
 * region text of a pixel box.
 *
 * The display text is exactly what demo_v2.py shows: re.sub(r'{<\d+><\d+><\d+><\d+>}|<delim>', '')
 * then re.sub(r'<p>(.*?)</p>', r'\1'), both reproduced by hand (ASCII digits only). Entities follow
 * a stricter grammar than the demo's: a box counts only with four integers in 0..100 and ordered
 * corners; anything else is reported as unparsed, never repaired. The input is untrusted model
 * output of any bytes: every scan is bounded by its length.
 */
#include "grounding.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TEXT_BYTES ((size_t)64 << 20)
#define BOX_VALUE_CAP 1000 /* digits parse saturates here: anything > 100 is rejected anyway */

/* ==== String builder and UTF-8 (shared through grounding.h) ==== */

bool gr_str_add(gr_str *s, const char *b, size_t n) {
    if (s->oom) return false;
    size_t need;
    if (!mg_add_ok(s->len, n, &need) || !mg_add_ok(need, 1, &need)) {
        s->oom = true;
        return false;
    }
    if (need > s->cap) {
        size_t cap = s->cap ? s->cap : 64;
        while (cap < need) {
            if (!mg_mul_ok(cap, 2, &cap)) {
                s->oom = true;
                return false;
            }
        }
        char *p = realloc(s->p, cap);
        if (!p) {
            s->oom = true;
            return false;
        }
        s->p = p;
        s->cap = cap;
    }
    if (n) memcpy(s->p + s->len, b, n);
    s->len += n;
    s->p[s->len] = 0;
    return true;
}

bool gr_str_adds(gr_str *s, const char *z) { return gr_str_add(s, z, strlen(z)); }

bool gr_str_addf(gr_str *s, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        s->oom = true;
        return false;
    }
    return gr_str_add(s, tmp, (size_t)n);
}

bool gr_str_finish(gr_str *s) {
    if (s->oom) return false;
    if (!s->p) return gr_str_add(s, "", 0);
    return true;
}

void gr_str_free(gr_str *s) {
    free(s->p);
    s->p = NULL;
    s->len = s->cap = 0;
}

int gr_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

/* ==== Parser ==== */

enum { ITEM_BOX, ITEM_DELIM };

typedef struct {
    int kind;
    size_t t1_pos;          /* where it was cut out of the intermediate text */
    size_t raw_off, raw_len;
    int v[4];
    bool valid;             /* a box with values <= 100 and ordered corners */
    bool used;              /* attached to a phrase */
} item;

typedef struct {
    size_t raw_off;         /* sort key: position in the input */
    char *phrase;
    size_t span_begin, span_end;
    mg_box *boxes;
    int n_boxes, cap_boxes;
} ent_build;

typedef struct {
    const char *raw;
    size_t n;
    int w, h;
    /* pass 1: text with box text and <delim> cut out */
    char *t1;
    size_t *t1_raw; /* [n_t1 + 1] raw offset of each t1 byte */
    size_t n_t1;
    item *items;
    size_t n_items, cap_items;
    /* pass 2 */
    gr_str clean;
    size_t *t1_clean; /* [n_t1 + 1] clean offset of each t1 position */
    ent_build *ents;
    size_t n_ents, cap_ents;
    mg_fragment *frags;
    size_t n_frags, cap_frags;
    bool oom;
} parser;

static bool grow(void **p, size_t *cap, size_t n, size_t elem) {
    if (n < *cap) return true;
    size_t nc = *cap ? *cap * 2 : 8, bytes;
    if (!mg_mul_ok(nc, elem, &bytes)) return false;
    void *q = realloc(*p, bytes);
    if (!q) return false;
    *p = q;
    *cap = nc;
    return true;
}

static void add_fragment(parser *ps, size_t off, size_t len) {
    if (ps->oom) return;
    if (!grow((void **)&ps->frags, &ps->cap_frags, ps->n_frags, sizeof(mg_fragment))) {
        ps->oom = true;
        return;
    }
    char *t = malloc(len + 1);
    if (!t) {
        ps->oom = true;
        return;
    }
    memcpy(t, ps->raw + off, len);
    t[len] = 0;
    ps->frags[ps->n_frags++] = (mg_fragment){off, len, t};
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static bool starts(const char *s, size_t n, size_t i, const char *lit) {
    size_t k = strlen(lit);
    return i <= n && n - i >= k && memcmp(s + i, lit, k) == 0;
}

/* Length of a match of {<\d+><\d+><\d+><\d+>} at s[i] (0 if none); values saturate. */
static size_t match_box(const char *s, size_t n, size_t i, int v[4]) {
    size_t j = i;
    if (j >= n || s[j] != '{') return 0;
    j++;
    for (int k = 0; k < 4; k++) {
        if (j >= n || s[j] != '<') return 0;
        j++;
        if (j >= n || !is_digit(s[j])) return 0;
        int val = 0;
        while (j < n && is_digit(s[j])) {
            val = val * 10 + (s[j] - '0');
            if (val > BOX_VALUE_CAP) val = BOX_VALUE_CAP;
            j++;
        }
        if (j >= n || s[j] != '>') return 0;
        j++;
        v[k] = val;
    }
    if (j >= n || s[j] != '}') return 0;
    return j + 1 - i;
}

static void add_item(parser *ps, int kind, size_t off, size_t len, const int v[4]) {
    if (ps->oom) return;
    if (!grow((void **)&ps->items, &ps->cap_items, ps->n_items, sizeof(item))) {
        ps->oom = true;
        return;
    }
    item *it = &ps->items[ps->n_items++];
    memset(it, 0, sizeof *it);
    it->kind = kind;
    it->t1_pos = ps->n_t1;
    it->raw_off = off;
    it->raw_len = len;
    if (kind == ITEM_BOX) {
        memcpy(it->v, v, sizeof it->v);
        it->valid = v[0] <= 100 && v[1] <= 100 && v[2] <= 100 && v[3] <= 100 && v[0] <= v[2] &&
                    v[1] <= v[3];
    }
}

/* Pass 1: the demo's first substitution. A "{<" that does not start a box is a malformed
 * fragment, reported up to its closing '}' (stopping before a '{' or a newline); the demo keeps
 * such text, and so does the display text here. */
static void pass1(parser *ps) {
    const char *r = ps->raw;
    size_t n = ps->n, i = 0;
    while (i < n && !ps->oom) {
        if (r[i] == '{') {
            int v[4];
            size_t m = match_box(r, n, i, v);
            if (m) {
                add_item(ps, ITEM_BOX, i, m, v);
                i += m;
                continue;
            }
            if (i + 1 < n && r[i + 1] == '<') {
                size_t e = i + 1;
                while (e < n && r[e] != '}' && r[e] != '{' && r[e] != '\n') e++;
                if (e < n && r[e] == '}') e++;
                add_fragment(ps, i, e - i);
            }
        } else if (r[i] == '<' && starts(r, n, i, "<delim>")) {
            add_item(ps, ITEM_DELIM, i, 7, NULL);
            i += 7;
            continue;
        }
        ps->t1[ps->n_t1] = r[i];
        ps->t1_raw[ps->n_t1] = i;
        ps->n_t1++;
        i++;
    }
    ps->t1_raw[ps->n_t1] = n;
}

/* Reports t1[a..b) as a fragment of the input. */
static void add_t1_fragment(parser *ps, size_t a, size_t b) {
    if (b <= a) return;
    size_t ra = ps->t1_raw[a], rb = ps->t1_raw[b - 1] + 1;
    add_fragment(ps, ra, rb - ra);
}

static ent_build *new_entity(parser *ps, size_t raw_off) {
    if (ps->oom) return NULL;
    if (!grow((void **)&ps->ents, &ps->cap_ents, ps->n_ents, sizeof(ent_build))) {
        ps->oom = true;
        return NULL;
    }
    ent_build *e = &ps->ents[ps->n_ents++];
    memset(e, 0, sizeof *e);
    e->raw_off = raw_off;
    return e;
}

static void entity_add_box(parser *ps, ent_build *e, const int v[4]) {
    if (ps->oom) return;
    if (e->n_boxes == e->cap_boxes) {
        size_t cap = (size_t)e->cap_boxes;
        if (cap > (size_t)INT32_MAX / 2 ||
            !grow((void **)&e->boxes, &cap, (size_t)e->n_boxes, sizeof(mg_box))) {
            ps->oom = true;
            return;
        }
        e->cap_boxes = (int)cap;
    }
    mg_box *b = &e->boxes[e->n_boxes++];
    b->x1 = v[0];
    b->y1 = v[1];
    b->x2 = v[2];
    b->y2 = v[3];
    if (ps->w > 0 && ps->h > 0) {
        /* demo_v2.py: left = x0 / bounding_box_size * image_width (true division, then product) */
        b->px1 = (double)v[0] / 100.0 * (double)ps->w;
        b->py1 = (double)v[1] / 100.0 * (double)ps->h;
        b->px2 = (double)v[2] / 100.0 * (double)ps->w;
        b->py2 = (double)v[3] / 100.0 * (double)ps->h;
    } else {
        b->px1 = b->py1 = b->px2 = b->py2 = 0;
    }
}

/* Index of the first item whose t1_pos >= pos (items are in t1 order). */
static size_t first_item_at(const parser *ps, size_t pos) {
    size_t lo = 0, hi = ps->n_items;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ps->items[mid].t1_pos < pos) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Gives a phrase the box run that follows its "</p>" (after optional spaces). */
static void attach_boxes(parser *ps, ent_build *e, size_t t1_end) {
    size_t pos = t1_end;
    for (;;) {
        size_t k = first_item_at(ps, pos);
        if (k < ps->n_items && ps->items[k].t1_pos == pos) {
            for (; k < ps->n_items && ps->items[k].t1_pos == pos; k++) {
                item *it = &ps->items[k];
                it->used = true;
                if (it->kind == ITEM_BOX && it->valid) entity_add_box(ps, e, it->v);
            }
            return;
        }
        if (pos < ps->n_t1 && ps->t1[pos] == ' ') {
            pos++;
            continue;
        }
        return;
    }
}

/* Pass 2: the demo's second substitution, <p>(.*?)</p> -> \1 ('.' excludes only '\n'), with the
 * clean offset of every intermediate position recorded. Unclosed "<p>" and stray "</p>" are
 * reported (from "<p>" to the next "<p>", newline or end). */
static void pass2(parser *ps) {
    const char *t = ps->t1;
    size_t m = ps->n_t1, j = 0;
    /* next "</p>" and next newline at or after the last search start: both only move forward,
     * so the whole pass stays linear even for "<p><p><p>..." */
    size_t nc = 0, nl = 0;
    bool nc_ok = false, nl_ok = false;
    while (j < m && !ps->oom) {
        if (t[j] == '<' && starts(t, m, j, "<p>")) {
            size_t from = j + 3;
            if (!nc_ok || nc < from) {
                nc = from;
                while (nc < m && !starts(t, m, nc, "</p>")) nc++;
                nc_ok = true;
            }
            if (!nl_ok || nl < from) {
                nl = from;
                while (nl < m && t[nl] != '\n') nl++;
                nl_ok = true;
            }
            size_t k = nc;
            if (k < m && k < nl) {
                size_t cb = ps->clean.len;
                for (size_t q = j; q < j + 3; q++) ps->t1_clean[q] = cb;
                for (size_t q = j + 3; q < k; q++) ps->t1_clean[q] = cb + (q - (j + 3));
                gr_str_add(&ps->clean, t + j + 3, k - (j + 3));
                size_t ce = ps->clean.len;
                for (size_t q = k; q < k + 4; q++) ps->t1_clean[q] = ce;
                ent_build *e = new_entity(ps, ps->t1_raw[j]);
                if (e) {
                    e->span_begin = cb;
                    e->span_end = ce;
                    e->phrase = malloc(k - (j + 3) + 1);
                    if (!e->phrase) {
                        ps->oom = true;
                        return;
                    }
                    memcpy(e->phrase, t + j + 3, k - (j + 3));
                    e->phrase[k - (j + 3)] = 0;
                    attach_boxes(ps, e, k + 4);
                }
                j = k + 4;
                continue;
            }
            size_t e2 = j + 1;
            while (e2 < m && t[e2] != '\n' && !starts(t, m, e2, "<p>")) e2++;
            add_t1_fragment(ps, j, e2);
        } else if (t[j] == '<' && starts(t, m, j, "</p>")) {
            add_t1_fragment(ps, j, j + 4);
        }
        ps->t1_clean[j] = ps->clean.len;
        gr_str_add(&ps->clean, t + j, 1);
        j++;
    }
    ps->t1_clean[m] = ps->clean.len;
    if (ps->clean.oom) ps->oom = true;
}

/* Box runs not attached to a phrase become entities with an empty phrase (one per run); every
 * box that is not valid is reported. */
static void bare_boxes(parser *ps) {
    size_t k = 0;
    while (k < ps->n_items && !ps->oom) {
        size_t pos = ps->items[k].t1_pos, e = k;
        bool any = false;
        while (e < ps->n_items && ps->items[e].t1_pos == pos) {
            const item *it = &ps->items[e];
            if (it->kind == ITEM_BOX && !it->valid) add_fragment(ps, it->raw_off, it->raw_len);
            if (it->kind == ITEM_BOX && it->valid && !it->used) any = true;
            e++;
        }
        if (any) {
            ent_build *en = new_entity(ps, ps->items[k].raw_off);
            if (en) {
                en->phrase = calloc(1, 1);
                if (!en->phrase) ps->oom = true;
                en->span_begin = en->span_end = ps->t1_clean[pos];
                for (size_t q = k; q < e; q++) {
                    const item *it = &ps->items[q];
                    if (it->kind == ITEM_BOX && it->valid && !it->used) entity_add_box(ps, en, it->v);
                }
            }
        }
        k = e;
    }
}

static int cmp_ent(const void *a, const void *b) {
    const ent_build *x = a, *y = b;
    return x->raw_off < y->raw_off ? -1 : x->raw_off > y->raw_off;
}

static int cmp_frag(const void *a, const void *b) {
    const mg_fragment *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->len > y->len ? -1 : x->len < y->len; /* longer first, so nested ones follow */
}

/* Sorts fragments by position; one inside an earlier one is dropped, one that overlaps it is
 * merged into it, so the list ends up disjoint. */
static void tidy_fragments(parser *ps) {
    if (ps->n_frags < 2) return;
    qsort(ps->frags, ps->n_frags, sizeof(mg_fragment), cmp_frag);
    size_t out = 1;
    for (size_t i = 1; i < ps->n_frags; i++) {
        mg_fragment *f = &ps->frags[i], *prev = &ps->frags[out - 1];
        size_t reach = prev->offset + prev->len, end = f->offset + f->len;
        if (f->offset >= reach) {
            ps->frags[out++] = *f;
            continue;
        }
        free(f->text);
        if (end <= reach) continue;
        char *t = realloc(prev->text, end - prev->offset + 1);
        if (!t) {
            ps->oom = true;
            continue;
        }
        memcpy(t, ps->raw + prev->offset, end - prev->offset);
        t[end - prev->offset] = 0;
        prev->text = t;
        prev->len = end - prev->offset;
    }
    ps->n_frags = out;
}

static void parser_free(parser *ps) {
    free(ps->t1);
    free(ps->t1_raw);
    free(ps->t1_clean);
    free(ps->items);
    gr_str_free(&ps->clean);
    for (size_t i = 0; i < ps->n_ents; i++) {
        free(ps->ents[i].phrase);
        free(ps->ents[i].boxes);
    }
    free(ps->ents);
    for (size_t i = 0; i < ps->n_frags; i++) free(ps->frags[i].text);
    free(ps->frags);
}

/* Frees a parse result and everything it owns; NULL is a no-op. */
void mg_grounding_free(mg_grounding *g) {
    if (!g) return;
    free(g->text);
    free(g->clean_text);
    for (int i = 0; i < g->n_entities; i++) {
        free(g->entities[i].phrase);
        free(g->entities[i].boxes);
    }
    free(g->entities);
    for (int i = 0; i < g->n_unparsed; i++) free(g->unparsed[i].text);
    free(g->unparsed);
    free(g);
}

/* Parses an answer into display text, entities and unparsed fragments (see minigpt.h). */
mg_status mg_grounding_parse(mg_grounding **out, const char *text, size_t len, int image_w,
                             int image_h, char *err, size_t err_len) {
    if (!out) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "grounding: out is NULL");
    *out = NULL;
    if (!text && len) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "grounding: text is NULL");
    if (len > MAX_TEXT_BYTES)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "grounding: text of %zu bytes exceeds %zu",
                      len, MAX_TEXT_BYTES);
    if (image_w < 0 || image_h < 0 || (image_w == 0) != (image_h == 0))
        return mg_err(err, err_len, MG_ERR_INVALID_ARG,
                      "grounding: image size %dx%d (give both > 0, or both 0)", image_w, image_h);

    parser ps;
    memset(&ps, 0, sizeof ps);
    ps.raw = text ? text : "";
    ps.n = len;
    ps.w = image_w;
    ps.h = image_h;
    mg_grounding *g = calloc(1, sizeof *g);
    ps.t1 = malloc(len + 1);
    ps.t1_raw = calloc(len + 1, sizeof(size_t));
    ps.t1_clean = calloc(len + 1, sizeof(size_t));
    if (!g || !ps.t1 || !ps.t1_raw || !ps.t1_clean) ps.oom = true;
    if (!ps.oom) pass1(&ps);
    if (!ps.oom) pass2(&ps);
    if (!ps.oom) bare_boxes(&ps);
    if (!ps.oom) tidy_fragments(&ps);
    if (!ps.oom) gr_str_finish(&ps.clean);
    if (ps.clean.oom) ps.oom = true;
    if (!ps.oom && ps.n_ents > (size_t)INT32_MAX) ps.oom = true;
    if (!ps.oom) {
        g->text = malloc(len + 1);
        if (!g->text) ps.oom = true;
    }
    if (ps.oom) {
        parser_free(&ps);
        free(g ? g->text : NULL);
        free(g);
        return mg_err(err, err_len, MG_ERR_NOMEM, "grounding: out of memory");
    }
    if (len) memcpy(g->text, ps.raw, len);
    g->text[len] = 0;
    g->text_len = len;
    g->clean_text = ps.clean.p;
    g->clean_len = ps.clean.len;
    ps.clean.p = NULL;
    g->image_w = image_w;
    g->image_h = image_h;
    if (ps.n_ents) qsort(ps.ents, ps.n_ents, sizeof(ent_build), cmp_ent);
    g->entities = calloc(ps.n_ents ? ps.n_ents : 1, sizeof(mg_entity));
    if (!g->entities) {
        parser_free(&ps);
        mg_grounding_free(g);
        return mg_err(err, err_len, MG_ERR_NOMEM, "grounding: out of memory");
    }
    for (size_t i = 0; i < ps.n_ents; i++) {
        ent_build *e = &ps.ents[i];
        g->entities[i] = (mg_entity){e->phrase, e->span_begin, e->span_end, e->boxes, e->n_boxes};
        e->phrase = NULL;
        e->boxes = NULL;
    }
    g->n_entities = (int)ps.n_ents;
    g->unparsed = ps.frags;
    g->n_unparsed = (int)ps.n_frags;
    ps.frags = NULL;
    ps.n_frags = 0;
    parser_free(&ps);
    *out = g;
    return MG_OK;
}

/* ==== JSON ==== */

/* Appends s[0..n) as a JSON string literal; invalid UTF-8 bytes become U+FFFD. */
static void json_string(gr_str *o, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    gr_str_add(o, "\"", 1);
    size_t i = 0, run = 0; /* run: start of bytes copied as they are */
    while (i < n) {
        unsigned c = u[i];
        const char *esc = NULL;
        char tmp[8];
        size_t adv = 1;
        if (c == '"') esc = "\\\"";
        else if (c == '\\') esc = "\\\\";
        else if (c == '\n') esc = "\\n";
        else if (c == '\r') esc = "\\r";
        else if (c == '\t') esc = "\\t";
        else if (c == '\b') esc = "\\b";
        else if (c == '\f') esc = "\\f";
        else if (c < 0x20) {
            snprintf(tmp, sizeof tmp, "\\u%04x", c);
            esc = tmp;
        } else if (c >= 0x80) {
            uint32_t cp;
            int l = gr_utf8_decode(u + i, n - i, &cp);
            if (l == 0) esc = "\xEF\xBF\xBD";
            else adv = (size_t)l;
        }
        if (esc) {
            gr_str_add(o, s + run, i - run);
            gr_str_adds(o, esc);
            i += 1;
            run = i;
        } else {
            i += adv;
        }
    }
    gr_str_add(o, s + run, n - run);
    gr_str_add(o, "\"", 1);
}

/* Appends a finite double with the fewest significant digits that read back exactly. */
static void json_number(gr_str *o, double v) {
    if (!isfinite(v)) {
        gr_str_adds(o, "null");
        return;
    }
    char tmp[40];
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(tmp, sizeof tmp, "%.0f", v);
        gr_str_adds(o, tmp);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) break;
    }
    gr_str_adds(o, tmp);
}

/* Renders g as one line of JSON (see minigpt.h); the caller frees *out with free(). */
mg_status mg_grounding_to_json(const mg_grounding *g, char **out) {
    if (!out) return MG_ERR_INVALID_ARG;
    *out = NULL;
    if (!g) return MG_ERR_INVALID_ARG;
    gr_str o = {0};
    gr_str_adds(&o, "{\"text\":");
    json_string(&o, g->text, g->text_len);
    gr_str_adds(&o, ",\"clean_text\":");
    json_string(&o, g->clean_text, g->clean_len);
    gr_str_addf(&o, ",\"image\":[%d,%d],\"entities\":[", g->image_w, g->image_h);
    for (int i = 0; i < g->n_entities; i++) {
        const mg_entity *e = &g->entities[i];
        gr_str_adds(&o, i ? ",{\"phrase\":" : "{\"phrase\":");
        json_string(&o, e->phrase, strlen(e->phrase));
        gr_str_addf(&o, ",\"span\":[%zu,%zu],\"boxes\":[", e->span_begin, e->span_end);
        for (int k = 0; k < e->n_boxes; k++) {
            const mg_box *b = &e->boxes[k];
            gr_str_addf(&o, "%s{\"x1\":%d,\"y1\":%d,\"x2\":%d,\"y2\":%d", k ? "," : "", b->x1,
                        b->y1, b->x2, b->y2);
            if (g->image_w > 0 && g->image_h > 0) {
                gr_str_adds(&o, ",\"px\":[");
                json_number(&o, b->px1);
                gr_str_adds(&o, ",");
                json_number(&o, b->py1);
                gr_str_adds(&o, ",");
                json_number(&o, b->px2);
                gr_str_adds(&o, ",");
                json_number(&o, b->py2);
                gr_str_adds(&o, "]");
            }
            gr_str_adds(&o, "}");
        }
        gr_str_adds(&o, "]}");
    }
    gr_str_adds(&o, "],\"unparsed\":[");
    for (int i = 0; i < g->n_unparsed; i++) {
        if (i) gr_str_adds(&o, ",");
        json_string(&o, g->unparsed[i].text, g->unparsed[i].len);
    }
    gr_str_adds(&o, "]}");
    if (!gr_str_finish(&o)) {
        gr_str_free(&o);
        return MG_ERR_NOMEM;
    }
    *out = o.p;
    return MG_OK;
}

/* ==== Region text ==== */

/* Writes "{<x1><y1><x2><y2>}" for a pixel box (int(v / W * 100), coco_dataset.py). */
mg_status mg_region_text(double x1, double y1, double x2, double y2, int w, int h, char *buf,
                         size_t buf_len, char *err, size_t err_len) {
    if (!buf || buf_len == 0) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "region: no buffer");
    buf[0] = 0;
    if (w <= 0 || h <= 0)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "region: image size %dx%d", w, h);
    if (!isfinite(x1) || !isfinite(y1) || !isfinite(x2) || !isfinite(y2))
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "region: coordinates must be finite");
    if (!(x1 >= 0 && x1 < x2 && x2 <= w && y1 >= 0 && y1 < y2 && y2 <= h))
        return mg_err(err, err_len, MG_ERR_INVALID_ARG,
                      "region: box (%g,%g)-(%g,%g) is not inside a %dx%d image with x1<x2, y1<y2",
                      x1, y1, x2, y2, w, h);
    /* Python: int(bbox[0] / image_orig_size[0] * image_new_size[0]), truncation toward zero */
    int v[4] = {(int)(x1 / (double)w * 100.0), (int)(y1 / (double)h * 100.0),
                (int)(x2 / (double)w * 100.0), (int)(y2 / (double)h * 100.0)};
    int n = snprintf(buf, buf_len, "{<%d><%d><%d><%d>}", v[0], v[1], v[2], v[3]);
    if (n < 0 || (size_t)n >= buf_len) {
        buf[0] = 0;
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "region: buffer of %zu bytes too small",
                      buf_len);
    }
    return MG_OK;
}
