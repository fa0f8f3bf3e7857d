/*
 * test_grounding.c - the grounded-answer parser, its JSON rendering and the region text.
 * Display text, entities, pixel boxes and region strings are compared with the official Python
 * functions re-run by tests/ref/grounding_ref.py under Debian's python3; the strict-grammar cases
 * (malformed box text reported, never turned into boxes) are derived by hand in the comments.
 */
#include "test.h"

#include "minigpt.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Writes req as JSON, runs the reference script on it, returns its output (NULL on failure). */
static json_t *run_ref(json_t *req, const char *tag) {
    char in[1024], out[1024];
    snprintf(in, sizeof in, "%s/grounding_%s_req.json", test_data_dir(), tag);
    snprintf(out, sizeof out, "%s/grounding_%s_out.json", test_data_dir(), tag);
    if (json_dump_file(req, in, 0) != 0) return NULL;
    int rc = test_run("%s tests/ref/grounding_ref.py %s %s", test_python(), in, out);
    if (rc != 0) return NULL;
    json_error_t je;
    return json_load_file(out, 0, &je);
}

static mg_grounding *parse(const char *s, int w, int h) {
    mg_grounding *g = NULL;
    char err[256];
    if (mg_grounding_parse(&g, s, strlen(s), w, h, err, sizeof err) != MG_OK) return NULL;
    return g;
}

/* Every structural promise of a parse result, for any input. */
static bool invariants_hold(const mg_grounding *g) {
    for (int i = 0; i < g->n_entities; i++) {
        const mg_entity *e = &g->entities[i];
        if (e->span_begin > e->span_end || e->span_end > g->clean_len) return false;
        size_t n = e->span_end - e->span_begin;
        if (strlen(e->phrase) != n || memcmp(g->clean_text + e->span_begin, e->phrase, n) != 0)
            return false;
        for (int k = 0; k < e->n_boxes; k++) {
            const mg_box *b = &e->boxes[k];
            if (b->x1 < 0 || b->y1 < 0 || b->x2 > 100 || b->y2 > 100 || b->x1 > b->x2 ||
                b->y1 > b->y2)
                return false;
        }
    }
    for (int i = 0; i < g->n_unparsed; i++) {
        const mg_fragment *f = &g->unparsed[i];
        if (f->offset + f->len > g->text_len || f->len == 0) return false;
        if (memcmp(g->text + f->offset, f->text, f->len) != 0) return false;
        if (i && f->offset < g->unparsed[i - 1].offset + g->unparsed[i - 1].len) return false;
    }
    char *js = NULL;
    if (mg_grounding_to_json(g, &js) != MG_OK) return false;
    json_error_t je;
    json_t *j = json_loads(js, JSON_ALLOW_NUL, &je);
    free(js);
    if (!j) return false;
    bool ok = json_array_size(json_object_get(j, "entities")) == (size_t)g->n_entities &&
              json_array_size(json_object_get(j, "unparsed")) == (size_t)g->n_unparsed;
    json_decref(j);
    return ok;
}

TEST(grounding_parse_matches_demo) {
    /* Well-formed answers: phrases, <delim> runs, bare [refer] boxes, no boxes, several lines,
     * non-ASCII phrases, odd image sizes (pixel values are inexact doubles). */
    static const struct {
        const char *text;
        int w, h;
    } cases[] = {
        {"<p>a red circle</p> {<12><30><45><60>}", 640, 480},
        {"<p>sofa</p> {<1><20><41><70>}<delim>{<50><22><99><71>}", 500, 343},
        {"{<12><30><45><60>}", 640, 427},
        {"A man <p>holding a cup</p> {<10><10><20><20>} stands next to <p>a dog</p> "
         "{<50><60><70><80>}.", 333, 217},
        {"no boxes here", 100, 100},
        {"<p>cat</p> {<0><0><100><100>}\n<p>dog</p> {<5><5><6><6>}", 1, 1},
        {"<p>caf\xc3\xa9 \xe2\x98\x95</p> {<3><4><5><6>}", 4000, 3000},
        {"<p>x</p> {<29><57><58><99>}<delim>{<7><13><33><67>}<delim>{<1><1><2><2>}", 719, 1283},
    };
    json_t *req = json_object(), *ents = json_array(), *cl = json_array();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_array_append_new(ents, json_pack("[sii]", cases[i].text, cases[i].w, cases[i].h));
        json_array_append_new(cl, json_string(cases[i].text));
    }
    json_object_set_new(req, "entities", ents);
    json_object_set_new(req, "clean", cl);
    json_t *ref = run_ref(req, "demo");
    json_decref(req);
    CHECK_MSG(ref != NULL, "reference script failed");
    if (!ref) return;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mg_grounding *g = parse(cases[i].text, cases[i].w, cases[i].h);
        CHECK(g != NULL);
        if (!g) continue;
        CHECK(invariants_hold(g));
        CHECK_EQ_INT(g->n_unparsed, 0);
        const char *want_clean = json_string_value(json_array_get(json_object_get(ref, "clean"), i));
        CHECK_MSG(want_clean && strcmp(g->clean_text, want_clean) == 0, "case %zu clean '%s' vs '%s'",
                  i, g->clean_text, want_clean ? want_clean : "(null)");
        json_t *we = json_array_get(json_object_get(ref, "entities"), i);
        CHECK_EQ_INT(g->n_entities, (long long)json_array_size(we));
        for (int e = 0; e < g->n_entities && (size_t)e < json_array_size(we); e++) {
            json_t *pe = json_array_get(we, (size_t)e);
            const char *ph = json_string_value(json_array_get(pe, 0));
            CHECK_MSG(ph && strcmp(ph, g->entities[e].phrase) == 0, "case %zu phrase '%s'", i,
                      g->entities[e].phrase);
            json_t *boxes = json_array_get(pe, 1);
            CHECK_EQ_INT(g->entities[e].n_boxes, (long long)json_array_size(boxes));
            for (int k = 0; k < g->entities[e].n_boxes && (size_t)k < json_array_size(boxes); k++) {
                const mg_box *b = &g->entities[e].boxes[k];
                json_t *bins = json_array_get(json_array_get(boxes, (size_t)k), 0);
                json_t *px = json_array_get(json_array_get(boxes, (size_t)k), 1);
                int mine[4] = {b->x1, b->y1, b->x2, b->y2};
                double mpx[4] = {b->px1, b->py1, b->px2, b->py2};
                for (int c = 0; c < 4; c++) {
                    CHECK_EQ_INT(mine[c], json_integer_value(json_array_get(bins, (size_t)c)));
                    /* same IEEE operations in the same order: bit-identical */
                    double want = json_number_value(json_array_get(px, (size_t)c));
                    CHECK_MSG(mpx[c] == want, "case %zu box %d coord %d: %.17g vs %.17g", i, k, c,
                              mpx[c], want);
                }
            }
        }
        mg_grounding_free(g);
    }
    json_decref(ref);
}

TEST(grounding_refer_pixels_match_eval) {
    /* eval_ref.py: a refer answer's box in pixels = ints / 100 * (W, H) */
    static const struct {
        const char *text;
        int w, h;
    } cases[] = {{"{<12><30><45><60>}", 640, 427}, {"{<0><0><100><100>}", 481, 640},
                 {"{<33><66><67><99>}", 612, 612}, {"{<1><99><3><100>}", 375, 500}};
    json_t *req = json_object(), *arr = json_array();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        json_array_append_new(arr, json_pack("[sii]", cases[i].text, cases[i].w, cases[i].h));
    json_object_set_new(req, "refer", arr);
    json_t *ref = run_ref(req, "refer");
    json_decref(req);
    CHECK_MSG(ref != NULL, "reference script failed");
    if (!ref) return;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mg_grounding *g = parse(cases[i].text, cases[i].w, cases[i].h);
        CHECK(g && g->n_entities == 1 && g->entities[0].n_boxes == 1);
        json_t *want = json_array_get(json_object_get(ref, "refer"), i);
        CHECK(json_array_size(want) == 4);
        if (g && g->n_entities == 1 && g->entities[0].n_boxes == 1 && json_array_size(want) == 4) {
            const mg_box *b = &g->entities[0].boxes[0];
            double mine[4] = {b->px1, b->py1, b->px2, b->py2};
            for (int c = 0; c < 4; c++)
                CHECK_MSG(mine[c] == json_number_value(json_array_get(want, (size_t)c)),
                          "refer case %zu coord %d", i, c);
            CHECK_EQ_INT(g->entities[0].span_begin, 0);
            CHECK_EQ_INT(g->entities[0].span_end, 0);
            CHECK(strcmp(g->entities[0].phrase, "") == 0);
        }
        mg_grounding_free(g);
    }
    json_decref(ref);
}

/* Random strings over the grammar's pieces: the display text must equal the demo's for every one
 * of them, and the structural invariants must hold. */
TEST(grounding_clean_text_random_vs_demo) {
    static const char *pieces[] = {"<p>", "</p>", "{<", "<", ">", "}", "{", "<delim>", "12", "100",
                                   "345", "7", " ", "\n", "a", "\xc3\xa9", "-", "<12>", "p>",
                                   "{<1><2><3><4>}", "{<10><20><30><40>}"};
    int n_cases = test_quick() ? 150 : 600;
    char **texts = calloc((size_t)n_cases, sizeof *texts);
    uint64_t rng = 1234;
    json_t *req = json_object(), *cl = json_array();
    for (int i = 0; i < n_cases; i++) {
        char buf[512] = "";
        int n_p = 1 + (int)(test_rng_next(&rng) % 24);
        for (int k = 0; k < n_p; k++) {
            const char *pc = pieces[test_rng_next(&rng) % (sizeof pieces / sizeof pieces[0])];
            if (strlen(buf) + strlen(pc) < sizeof buf) strcat(buf, pc);
        }
        texts[i] = strdup(buf);
        json_array_append_new(cl, json_string(buf));
    }
    json_object_set_new(req, "clean", cl);
    json_t *ref = run_ref(req, "random");
    json_decref(req);
    CHECK_MSG(ref != NULL, "reference script failed");
    int bad = 0;
    for (int i = 0; ref && i < n_cases; i++) {
        mg_grounding *g = parse(texts[i], 640, 480);
        const char *want = json_string_value(json_array_get(json_object_get(ref, "clean"), (size_t)i));
        bool ok = g && want && strcmp(g->clean_text, want) == 0 && invariants_hold(g);
        if (!ok && bad++ < 5)
            printf("    mismatch on '%s': '%s' vs '%s'\n", texts[i], g ? g->clean_text : "(null)",
                   want ? want : "(null)");
        mg_grounding_free(g);
    }
    CHECK_EQ_INT(bad, 0);
    for (int i = 0; i < n_cases; i++) free(texts[i]);
    free(texts);
    json_decref(ref);
}

static bool has_frag(const mg_grounding *g, int i, const char *s) {
    return g && i < g->n_unparsed && strcmp(g->unparsed[i].text, s) == 0;
}

TEST(grounding_malformed_reported) {
    /* A box with two numbers: not a box (box grammar needs four). The phrase keeps no box and
     * the fragment runs from "{" to its "}". The demo leaves the text on display. */
    mg_grounding *g = parse("<p>cat</p> {<12><30>}", 100, 100);
    CHECK(g && g->n_entities == 1 && g->entities[0].n_boxes == 0);
    CHECK(g && g->n_unparsed == 1 && has_frag(g, 0, "{<12><30>}") && g->unparsed[0].offset == 11);
    CHECK(g && strcmp(g->clean_text, "cat {<12><30>}") == 0);
    mg_grounding_free(g);

    /* Unclosed <p>: reported to the end of the line; no entity. */
    g = parse("<p>unclosed text\nnext", 0, 0);
    CHECK(g && g->n_entities == 0 && g->n_unparsed == 1 && has_frag(g, 0, "<p>unclosed text"));
    CHECK(g && strcmp(g->clean_text, "<p>unclosed text\nnext") == 0);
    mg_grounding_free(g);

    /* A value over 100: the demo's regex removes it from the display text (\d+), but it is no
     * box: reported, and the phrase has no box. */
    g = parse("<p>big</p> {<12><30><145><60>}", 100, 100);
    CHECK(g && g->n_entities == 1 && g->entities[0].n_boxes == 0);
    CHECK(g && g->n_unparsed == 1 && has_frag(g, 0, "{<12><30><145><60>}"));
    CHECK(g && strcmp(g->clean_text, "big ") == 0);
    mg_grounding_free(g);

    /* Non-numeric and negative values, inverted corners. */
    g = parse("{<a><1><2><3>} {<-1><2><3><4>} {<50><10><20><60>}", 100, 100);
    CHECK(g && g->n_entities == 0 && g->n_unparsed == 3);
    CHECK(has_frag(g, 0, "{<a><1><2><3>}") && has_frag(g, 1, "{<-1><2><3><4>}") &&
          has_frag(g, 2, "{<50><10><20><60>}"));
    /* the inverted box matches the demo's \d+ pattern and leaves the display; the others stay */
    CHECK(g && strcmp(g->clean_text, "{<a><1><2><3>} {<-1><2><3><4>} ") == 0);
    mg_grounding_free(g);

    /* Stray closing tag, and a valid run followed by a broken third box. */
    g = parse("x</p> <p>a</p>{<1><2><3><4>}<delim>{<5><6><7><8>}<delim>{<9><9><9>}", 10, 10);
    CHECK(g && g->n_entities == 1 && g->entities[0].n_boxes == 2);
    CHECK(g && g->n_unparsed == 2 && has_frag(g, 0, "</p>") && has_frag(g, 1, "{<9><9><9>}"));
    CHECK(g && g->entities[0].boxes[1].x1 == 5 && g->entities[0].boxes[1].y2 == 8);
    mg_grounding_free(g);

    /* Truncated at the end of generation. */
    g = parse("<p>dog</p> {<1><2><3", 10, 10);
    CHECK(g && g->n_entities == 1 && g->entities[0].n_boxes == 0 && has_frag(g, 0, "{<1><2><3"));
    mg_grounding_free(g);
}

TEST(grounding_spans) {
    /* "A <p>dog</p> {<1><2><3><4>} and <p>cat</p> {<5><6><7><8>}": display text
     * "A dog  and cat " (each box leaves its leading space): dog = [2,5), cat = [11,14). */
    mg_grounding *g = parse("A <p>dog</p> {<1><2><3><4>} and <p>cat</p> {<5><6><7><8>}", 0, 0);
    CHECK(g && strcmp(g->clean_text, "A dog  and cat ") == 0);
    CHECK(g && g->n_entities == 2);
    if (g && g->n_entities == 2) {
        CHECK_EQ_INT(g->entities[0].span_begin, 2);
        CHECK_EQ_INT(g->entities[0].span_end, 5);
        CHECK_EQ_INT(g->entities[1].span_begin, 11);
        CHECK_EQ_INT(g->entities[1].span_end, 14);
        CHECK_EQ_INT(g->entities[1].boxes[0].x1, 5);
        CHECK(g->entities[0].boxes[0].px1 == 0.0); /* no image size: pixel fields stay 0 */
    }
    mg_grounding_free(g);
    /* A bare box inside the text: empty phrase at the place it was cut out ("look " = 5). */
    g = parse("look {<1><2><3><4>} here", 0, 0);
    CHECK(g && g->n_entities == 1 && g->entities[0].span_begin == 5 && g->entities[0].span_end == 5);
    CHECK(g && strcmp(g->clean_text, "look  here") == 0);
    mg_grounding_free(g);
    /* A phrase with no box at all is kept (it is shown); empty input gives an empty result. */
    g = parse("<p>sky</p>.", 0, 0);
    CHECK(g && g->n_entities == 1 && g->entities[0].n_boxes == 0 && g->n_unparsed == 0);
    mg_grounding_free(g);
    g = parse("", 0, 0);
    CHECK(g && g->n_entities == 0 && g->clean_len == 0 && strcmp(g->clean_text, "") == 0);
    mg_grounding_free(g);
}

TEST(grounding_json) {
    /* Hand-written expectation: quote, backslash, newline, a control byte (\u0001), an invalid
     * byte (U+FFFD), a valid 2-byte sequence kept as is; px = 12/100*200 = 24 etc. */
    const char in[] = "<p>a \"q\"\\</p> {<12><30><45><60>}\n\x01\xff\xc3\xa9";
    mg_grounding *g = NULL;
    CHECK(mg_grounding_parse(&g, in, sizeof in - 1, 200, 100, NULL, 0) == MG_OK);
    char *js = NULL;
    CHECK(g && mg_grounding_to_json(g, &js) == MG_OK);
    const char *want =
        "{\"text\":\"<p>a \\\"q\\\"\\\\</p> {<12><30><45><60>}\\n\\u0001\xef\xbf\xbd\xc3\xa9\","
        "\"clean_text\":\"a \\\"q\\\"\\\\ \\n\\u0001\xef\xbf\xbd\xc3\xa9\",\"image\":[200,100],"
        "\"entities\":[{\"phrase\":\"a \\\"q\\\"\\\\\",\"span\":[0,6],\"boxes\":[{\"x1\":12,"
        "\"y1\":30,\"x2\":45,\"y2\":60,\"px\":[24,30,90,60]}]}],\"unparsed\":[]}";
    CHECK_MSG(js && strcmp(js, want) == 0, "json: %s", js ? js : "(null)");
    free(js);
    mg_grounding_free(g);
    /* Embedded NUL bytes survive as \u0000 and the JSON stays loadable. */
    const char nul[] = "a\0b<p>c</p> {<1><1><2><2>}";
    CHECK(mg_grounding_parse(&g, nul, sizeof nul - 1, 0, 0, NULL, 0) == MG_OK);
    CHECK(g && mg_grounding_to_json(g, &js) == MG_OK && js && strstr(js, "a\\u0000b") != NULL);
    CHECK(g && invariants_hold(g));
    free(js);
    mg_grounding_free(g);
}

TEST(grounding_bad_args) {
    mg_grounding *g = (mg_grounding *)1;
    char err[128] = "";
    CHECK(mg_grounding_parse(&g, "x", 1, 10, 0, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(g == NULL && err[0] != 0);
    CHECK(mg_grounding_parse(&g, NULL, 3, 0, 0, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(mg_grounding_parse(&g, NULL, 0, 0, 0, err, sizeof err) == MG_OK && g && g->clean_len == 0);
    mg_grounding_free(g);
    mg_grounding_free(NULL);
    char *js;
    CHECK(mg_grounding_to_json(NULL, &js) == MG_ERR_INVALID_ARG);
}

TEST(grounding_region_text) {
    /* Pixel boxes -> text; the reference is coco_dataset.py's int(x / W * 100). 29/100*100 is
     * 28.999999999999996 in doubles, so it truncates to 28: the order of operations matters. */
    static const double cases[][6] = {
        {0, 0, 640, 480, 640, 480},     {29, 29, 57, 58, 100, 100}, {12.7, 33.3, 400.9, 299.99, 640, 427},
        {1, 2, 3, 4, 7, 9},             {100, 50, 319, 239, 320, 240}, {0.5, 0.5, 1, 1, 1, 1},
    };
    json_t *req = json_object(), *arr = json_array();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        json_array_append_new(arr, json_pack("[ffffii]", cases[i][0], cases[i][1], cases[i][2],
                                             cases[i][3], (int)cases[i][4], (int)cases[i][5]));
    json_object_set_new(req, "region", arr);
    json_t *ref = run_ref(req, "region");
    json_decref(req);
    CHECK_MSG(ref != NULL, "reference script failed");
    for (size_t i = 0; ref && i < sizeof cases / sizeof cases[0]; i++) {
        char buf[32];
        CHECK(mg_region_text(cases[i][0], cases[i][1], cases[i][2], cases[i][3], (int)cases[i][4],
                             (int)cases[i][5], buf, sizeof buf, NULL, 0) == MG_OK);
        const char *want = json_string_value(json_array_get(json_object_get(ref, "region"), i));
        CHECK_MSG(want && strcmp(buf, want) == 0, "region %zu: %s vs %s", i, buf, want ? want : "");
        /* and the parser reads it back as one bare box */
        mg_grounding *g = parse(buf, 0, 0);
        CHECK(g && g->n_entities == 1 && g->entities[0].n_boxes == 1 && g->n_unparsed == 0);
        mg_grounding_free(g);
    }
    json_decref(ref);
    /* the hand-derived one: 29/100*100 -> 28 */
    char buf[32], err[128];
    CHECK(mg_region_text(29, 29, 57, 58, 100, 100, buf, sizeof buf, NULL, 0) == MG_OK &&
          strcmp(buf, "{<28><28><56><57>}") == 0);
    /* invalid: inverted, empty, outside, NaN, bad size, small buffer */
    CHECK(mg_region_text(50, 0, 40, 10, 100, 100, buf, sizeof buf, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(mg_region_text(10, 10, 10, 20, 100, 100, buf, sizeof buf, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(mg_region_text(0, 0, 101, 10, 100, 100, buf, sizeof buf, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(mg_region_text(-1, 0, 10, 10, 100, 100, buf, sizeof buf, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(mg_region_text(0.0 / 0.0, 0, 10, 10, 100, 100, buf, sizeof buf, err, sizeof err) ==
          MG_ERR_INVALID_ARG);
    CHECK(mg_region_text(0, 0, 10, 10, 0, 100, buf, sizeof buf, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(mg_region_text(0, 0, 10, 10, 100, 100, buf, 5, err, sizeof err) == MG_ERR_INVALID_ARG &&
          buf[0] == 0);
}
