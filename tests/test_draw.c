/*
 * test_draw.c - drawing entities on an RGB8 buffer: outline pixels at the corners the demo's rule
 * gives (int(v / 100 * size), worked out by hand below), the label plate with text pixels above
 * the box (inside it at the top edge), clipping, degenerate boxes, a missing font, row padding.
 */
#include "test.h"

#include "minigpt.h"

#include <stdlib.h>
#include <string.h>

#define W 200
#define H 150

static uint8_t *blank(size_t stride) {
    uint8_t *p = malloc(stride * H);
    memset(p, 0xAB, stride * H); /* padding sentinel */
    for (int y = 0; y < H; y++) memset(p + (size_t)y * stride, 255, 3 * W);
    return p;
}

static bool px_is(const uint8_t *img, size_t stride, int x, int y, const uint8_t c[3]) {
    const uint8_t *p = img + (size_t)y * stride + (size_t)x * 3;
    return p[0] == c[0] && p[1] == c[1] && p[2] == c[2];
}

static const uint8_t WHITE[3] = {255, 255, 255};

/* Counts pixels of rows [y0,y1] x cols [x0,x1] equal to c, and those neither c nor white. */
static void count(const uint8_t *img, size_t stride, int x0, int y0, int x1, int y1,
                  const uint8_t c[3], int *n_c, int *n_other) {
    *n_c = *n_other = 0;
    for (int y = y0; y <= y1; y++)
        for (int x = x0; x <= x1; x++) {
            if (px_is(img, stride, x, y, c)) (*n_c)++;
            else if (!px_is(img, stride, x, y, WHITE)) (*n_other)++;
        }
}

TEST(draw_boxes_and_labels) {
    mg_grounding *g = NULL;
    const char *ans = "<p>dog</p> {<10><40><60><90>} and <p>cat</p> {<50><0><90><30>}";
    CHECK(mg_grounding_parse(&g, ans, strlen(ans), W, H, NULL, 0) == MG_OK && g && g->n_entities == 2);
    if (!g || g->n_entities != 2) return;
    uint8_t *img = blank(3 * W);
    char err[256] = "x";
    CHECK(mg_draw_grounding(img, W, H, 3 * W, g, NULL, err, sizeof err) == MG_OK);
    CHECK_MSG(err[0] == 0, "unexpected warning: %s", err);
    uint8_t c0[3], c1[3];
    mg_draw_color(0, c0);
    mg_draw_color(1, c1);
    CHECK(memcmp(c0, c1, 3) != 0);
    /* dog: x 10/100*200 = 20, 60/100*200 = 120; y 40/100*150 = 60, 90/100*150 = 135 (each
     * product lands on or just above the integer, so truncation keeps it). Thickness
     * max(2, 150/200) = 2, drawn inward. */
    CHECK(px_is(img, 3 * W, 20, 100, c0) && px_is(img, 3 * W, 21, 100, c0));
    CHECK(px_is(img, 3 * W, 22, 100, WHITE) && px_is(img, 3 * W, 19, 100, WHITE));
    CHECK(px_is(img, 3 * W, 120, 100, c0) && px_is(img, 3 * W, 119, 100, c0));
    CHECK(px_is(img, 3 * W, 118, 100, WHITE) && px_is(img, 3 * W, 121, 100, WHITE));
    CHECK(px_is(img, 3 * W, 70, 135, c0) && px_is(img, 3 * W, 70, 134, c0));
    CHECK(px_is(img, 3 * W, 70, 133, WHITE) && px_is(img, 3 * W, 70, 136, WHITE));
    CHECK(px_is(img, 3 * W, 20, 135, c0) && px_is(img, 3 * W, 120, 135, c0)); /* corners */
    /* the plate sits on the top edge (y 60): its bottom row 59 starts at x 20 in c0, and
     * anti-aliased text pixels (neither plate nor background) are inside it */
    CHECK(px_is(img, 3 * W, 20, 59, c0));
    int n_c, n_other;
    count(img, 3 * W, 20, 35, 99, 59, c0, &n_c, &n_other);
    CHECK_MSG(n_c > 150 && n_other > 10, "dog plate: %d plate pixels, %d text pixels", n_c, n_other);
    /* nothing far above the plate (a 10 px font needs < 25 rows of plate) */
    count(img, 3 * W, 0, 30, 99, 34, c0, &n_c, &n_other);
    CHECK(n_c == 0 && n_other == 0);
    /* cat touches the top edge (y 0): x 100..180, y 0..45, plate just inside from row 2 */
    CHECK(px_is(img, 3 * W, 140, 0, c1) && px_is(img, 3 * W, 180, 20, c1));
    CHECK(px_is(img, 3 * W, 102, 3, c1) && px_is(img, 3 * W, 103, 2, c1));
    count(img, 3 * W, 100, 2, 180, 25, c1, &n_c, &n_other);
    CHECK_MSG(n_c > 150 && n_other > 10, "cat plate: %d plate pixels, %d text pixels", n_c, n_other);
    free(img);
    mg_grounding_free(g);
}

/* A hand-built result, so boxes can be outside what the parser accepts. */
static mg_grounding one_entity(mg_entity *e, mg_box *b, int n_boxes, char *phrase) {
    memset(e, 0, sizeof *e);
    e->phrase = phrase;
    e->boxes = b;
    e->n_boxes = n_boxes;
    mg_grounding g;
    memset(&g, 0, sizeof g);
    g.entities = e;
    g.n_entities = 1;
    g.text = g.clean_text = phrase;
    return g;
}

TEST(draw_clipping_and_degenerate) {
    uint8_t c0[3];
    mg_draw_color(0, c0);
    size_t stride = 3 * W + 7;
    mg_entity e;
    char empty[] = "";
    /* 0: right/bottom edges at 100 -> 200/150, clipped to 199/149; 1: beyond 100 and negative;
     * 2: zero size at (60, 30); 3: inverted (skipped) */
    mg_box boxes[4] = {{90, 90, 100, 100, 0, 0, 0, 0}, {-10, 50, 150, 120, 0, 0, 0, 0},
                       {30, 20, 30, 20, 0, 0, 0, 0}, {60, 10, 40, 20, 0, 0, 0, 0}};
    mg_grounding g = one_entity(&e, boxes, 4, empty);
    uint8_t *img = blank(stride);
    CHECK(mg_draw_grounding(img, W, H, stride, &g, NULL, NULL, 0) == MG_OK);
    CHECK(px_is(img, stride, 199, 140, c0) && px_is(img, stride, 190, 149, c0));
    CHECK(px_is(img, stride, 180, 140, c0) && px_is(img, stride, 185, 140, WHITE));
    CHECK(px_is(img, stride, 0, 100, c0) && px_is(img, stride, 50, 149, c0)); /* clipped box 1 */
    CHECK(px_is(img, stride, 60, 30, c0) && px_is(img, stride, 64, 30, WHITE));
    /* inverted box 3 would have put its edges at x 80 / 120, y 15 / 30 */
    CHECK(px_is(img, stride, 100, 15, WHITE) && px_is(img, stride, 80, 22, WHITE));
    bool pad_ok = true;
    for (int y = 0; y < H; y++)
        for (size_t k = 3 * W; k < stride; k++)
            if (img[(size_t)y * stride + k] != 0xAB) pad_ok = false;
    CHECK(pad_ok);
    free(img);

    /* only an inverted box: the image is untouched */
    mg_grounding g2 = one_entity(&e, &boxes[3], 1, empty);
    img = blank(stride);
    uint8_t *ref = blank(stride);
    CHECK(mg_draw_grounding(img, W, H, stride, &g2, NULL, NULL, 0) == MG_OK);
    CHECK(memcmp(img, ref, stride * H) == 0);
    free(img);
    free(ref);
}

TEST(draw_label_at_right_edge_and_missing_font) {
    uint8_t c0[3];
    mg_draw_color(0, c0);
    mg_entity e;
    char phrase[] = "a rather long label";
    /* x 95/100*200 = 190, y 50/100*150 = 75 .. 60/100*150 = 90: the plate does not fit right of x 190 and is moved
     * left so that it ends at the last column */
    mg_box b = {95, 50, 100, 60, 0, 0, 0, 0};
    mg_grounding g = one_entity(&e, &b, 1, phrase);
    uint8_t *img = blank(3 * W);
    CHECK(mg_draw_grounding(img, W, H, 3 * W, &g, NULL, NULL, 0) == MG_OK);
    CHECK(px_is(img, 3 * W, 199, 74, c0) && px_is(img, 3 * W, 150, 74, c0));
    free(img);

    /* missing font: boxes drawn, no plate, MG_OK with a warning */
    mg_draw_params p = mg_draw_default_params();
    p.font_path = "/nonexistent/font.ttf";
    char err[256] = "";
    img = blank(3 * W);
    CHECK(mg_draw_grounding(img, W, H, 3 * W, &g, &p, err, sizeof err) == MG_OK);
    CHECK(err[0] != 0 && strstr(err, "font") != NULL);
    CHECK(px_is(img, 3 * W, 190, 80, c0) && px_is(img, 3 * W, 199, 74, WHITE));
    free(img);

    /* labels off, explicit thickness */
    p = mg_draw_default_params();
    p.draw_labels = 0;
    p.thickness = 5;
    img = blank(3 * W);
    CHECK(mg_draw_grounding(img, W, H, 3 * W, &g, &p, err, sizeof err) == MG_OK && err[0] == 0);
    CHECK(px_is(img, 3 * W, 194, 80, c0) && px_is(img, 3 * W, 186, 80, WHITE) &&
          px_is(img, 3 * W, 199, 74, WHITE));
    free(img);
}

TEST(draw_bad_args_and_palette) {
    uint8_t img[3 * 4 * 4];
    mg_grounding g;
    memset(&g, 0, sizeof g);
    CHECK(mg_draw_grounding(NULL, 4, 4, 12, &g, NULL, NULL, 0) == MG_ERR_INVALID_ARG);
    CHECK(mg_draw_grounding(img, 4, 4, 11, &g, NULL, NULL, 0) == MG_ERR_INVALID_ARG);
    CHECK(mg_draw_grounding(img, 0, 4, 12, &g, NULL, NULL, 0) == MG_ERR_INVALID_ARG);
    CHECK(mg_draw_grounding(img, 4, 4, 12, NULL, NULL, NULL, 0) == MG_ERR_INVALID_ARG);
    CHECK(mg_draw_grounding(img, 4, 4, 12, &g, NULL, NULL, 0) == MG_OK);
    uint8_t a[3], b[3];
    int distinct = 1;
    for (int i = 0; i < 16; i++)
        for (int j = i + 1; j < 16; j++) {
            mg_draw_color(i, a);
            mg_draw_color(j, b);
            if (memcmp(a, b, 3) == 0) distinct = 0;
        }
    CHECK(distinct);
    mg_draw_color(3, a);
    mg_draw_color(19, b);
    CHECK(memcmp(a, b, 3) == 0);
}
