/*
 * fuzz_grounding.c - libFuzzer target for the text side of grounding: the input is parsed as a
 * model answer (image size from its first bytes), rendered to JSON, post-processed with every
 * template, fed to a conversation, and its boxes drawn (no labels, to keep runs fast) on a small
 * image. Invariants: spans lie in the display text and equal their phrase, boxes are in 0..100
 * with ordered corners, fragments are disjoint pieces of the input, the JSON has no raw control
 * byte, post-processing never grows the text.
 */
#include "minigpt.h"

#include <stdlib.h>
#include <string.h>

/* libFuzzer entry point: one input = one model answer. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int w = size > 0 ? 1 + data[0] % 64 : 0, h = size > 1 ? 1 + data[1] % 48 : 0;
    if (size < 2) w = h = 0;
    const char *text = (const char *)data;
    mg_grounding *g = NULL;
    char err[256];
    if (mg_grounding_parse(&g, text, size, w, h, err, sizeof err) != MG_OK) abort();
    for (int i = 0; i < g->n_entities; i++) {
        const mg_entity *e = &g->entities[i];
        size_t n = e->span_end - e->span_begin;
        if (e->span_begin > e->span_end || e->span_end > g->clean_len) abort();
        /* the phrase holds exactly the span's bytes (NULs included) plus a terminator */
        if (memcmp(g->clean_text + e->span_begin, e->phrase, n) != 0 || e->phrase[n] != 0) abort();
        for (int k = 0; k < e->n_boxes; k++) {
            const mg_box *b = &e->boxes[k];
            if (b->x1 < 0 || b->y1 < 0 || b->x2 > 100 || b->y2 > 100 || b->x1 > b->x2 || b->y1 > b->y2)
                abort();
        }
    }
    for (int i = 0; i < g->n_unparsed; i++) {
        const mg_fragment *f = &g->unparsed[i];
        if (f->len == 0 || f->offset + f->len > size || memcmp(data + f->offset, f->text, f->len))
            abort();
        if (i && f->offset < g->unparsed[i - 1].offset + g->unparsed[i - 1].len) abort();
    }
    char *js = NULL;
    if (mg_grounding_to_json(g, &js) != MG_OK) abort();
    for (const char *p = js; *p; p++)
        if ((unsigned char)*p < 0x20) abort();
    free(js);

    if (w > 0) {
        uint8_t img[64 * 48 * 3];
        mg_draw_params dp = mg_draw_default_params();
        dp.draw_labels = 0;
        if (mg_draw_grounding(img, w, h, (size_t)w * 3, g, &dp, err, sizeof err) != MG_OK) abort();
    }
    mg_grounding_free(g);

    char *buf = malloc(size + 1);
    if (!buf) return 0;
    for (int t = 0; t < 3; t++) {
        int64_t n = mg_chat_postprocess((mg_chat_template)t, text, size, buf, size + 1);
        if (n < 0 || (size_t)n > size) abort();
    }
    free(buf);

    /* the input as a user message (up to its first NUL) and as an answer */
    mg_chat *c = NULL;
    if (mg_chat_create(&c, (mg_chat_template)(size % 3)) != MG_OK) abort();
    char *msg = malloc(size + 1);
    if (msg) {
        memcpy(msg, data, size);
        msg[size] = 0;
        mg_prompt p;
        mg_chat_add_image(c);
        mg_chat_ask(c, msg);
        if (mg_chat_prompt(c, &p, err, sizeof err) == MG_OK) {
            if (p.n_segments != p.n_images + 1) abort();
            mg_chat_answer(c, text, size);
            mg_chat_ask(c, "next");
            mg_chat_prompt(c, &p, err, sizeof err);
        }
        free(msg);
    }
    mg_chat_free(c);
    return 0;
}
