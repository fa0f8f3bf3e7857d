/*
 * test_world.c - the synthetic world (src/world.c, `minigpt synth`): determinism, answers that
 * parse back to the ground-truth boxes, and an independent check of the written PNGs and
 * expressions by tests/ref/eval_ref.py (tight boxes, unique referring expressions).
 */
#include "test.h"

#include "world.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

TEST(world_determinism) {
    world_scene a, b, c;
    char err[256];
    CHECK(world_scene_generate(&a, 7, 3, 256, false, err, sizeof err) == MG_OK);
    CHECK(world_scene_generate(&b, 7, 3, 256, false, err, sizeof err) == MG_OK);
    CHECK(world_scene_generate(&c, 8, 3, 256, false, err, sizeof err) == MG_OK);
    size_t n = (size_t)256 * 256 * 3;
    CHECK(a.image.rgb && b.image.rgb && c.image.rgb);
    if (a.image.rgb && b.image.rgb && c.image.rgb) {
        CHECK(memcmp(a.image.rgb, b.image.rgb, n) == 0);
        CHECK(memcmp(a.image.rgb, c.image.rgb, n) != 0);
    }
    CHECK(memcmp(a.objects, b.objects, sizeof a.objects) == 0);
    world_scene h;
    CHECK(world_scene_generate(&h, 7, 3, 256, true, err, sizeof err) == MG_OK);
    CHECK(h.seed != a.seed); /* held-out scenes come from another stream */
    world_scene_free(&a);
    world_scene_free(&b);
    world_scene_free(&c);
    world_scene_free(&h);
    CHECK(world_scene_generate(&a, 1, 0, 10, false, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(strstr(err, "size") != NULL);

    /* the CLI: same options -> same bytes; another seed -> other bytes */
    const char *d = test_data_dir(), *bin = getenv("MG_BIN") ? getenv("MG_BIN") : "build/minigpt";
    CHECK_EQ_INT(test_run("%s synth -q --seed 11 -n 3 --size 128 -o %s/wd1 && %s synth -q --seed 11 -n 3 "
                          "--size 128 -o %s/wd2 && %s synth -q --seed 12 -n 3 --size 128 -o %s/wd3",
                          bin, d, bin, d, bin, d), 0);
    CHECK_EQ_INT(test_run("cmp -s %s/wd1/data.jsonl %s/wd2/data.jsonl && cmp -s %s/wd1/images/000002.png "
                          "%s/wd2/images/000002.png", d, d, d, d), 0);
    CHECK(test_run("cmp -s %s/wd1/data.jsonl %s/wd3/data.jsonl", d, d) != 0);
    CHECK(test_run("cmp -s %s/wd1/images/000000.png %s/wd3/images/000000.png", d, d) != 0);
}

/* Every example's boxes parse with mg_grounding_parse and map back to the ground truth: a grid
 * value v of a pixel coordinate x satisfies v*W/100 <= x < (v+1)*W/100, up to the float error of
 * int(x / W * 100) (29/100*100 = 28.999999999999996 truncates to 28: then x = (v+1)*W/100). */
TEST(world_answers_parse_to_ground_truth) {
    world_example *ex = malloc(sizeof *ex * WORLD_MAX_EXAMPLES);
    CHECK(ex != NULL);
    if (!ex) return;
    int counts[8] = {0}, n_scenes = test_quick() ? 20 : 120;
    for (int k = 0; k < n_scenes; k++) {
        world_scene sc;
        char err[256];
        if (world_scene_generate(&sc, 42, (uint64_t)k, k % 2 ? 448 : 300, k % 3 == 0, err, sizeof err) != MG_OK) {
            CHECK_MSG(0, "generate: %s", err);
            break;
        }
        int n = 0;
        CHECK(world_scene_examples(&sc, ~0u, k % 2, ex, WORLD_MAX_EXAMPLES, &n, err, sizeof err) == MG_OK);
        for (int i = 0; i < sc.n_objects; i++) {
            const world_object *o = &sc.objects[i];
            CHECK(o->x0 >= 0 && o->x0 <= o->x1 && o->x1 < sc.w && o->y0 >= 0 && o->y0 <= o->y1 && o->y1 < sc.h);
            CHECK(o->n_visible * 10 >= o->n_samples * 7);
        }
        for (int e = 0; e < n; e++) {
            const world_example *x = &ex[e];
            counts[x->task]++;
            const char *txt = x->task == MG_TASK_IDENTIFY ? x->instruction : x->answer;
            mg_grounding *g;
            if (mg_grounding_parse(&g, txt, strlen(txt), sc.w, sc.h, err, sizeof err) != MG_OK) {
                CHECK_MSG(0, "parse: %s", err);
                continue;
            }
            CHECK_MSG(g->n_unparsed == 0, "unparsed markup in %s", txt);
            int nb = 0;
            unsigned seen = 0;
            for (int en = 0; en < g->n_entities; en++)
                for (int b = 0; b < g->entities[en].n_boxes; b++) {
                    const mg_box *bx = &g->entities[en].boxes[b];
                    nb++;
                    int hit = -1;
                    for (int i = 0; i < sc.n_objects; i++) {
                        double ob[4];
                        world_object_box(&sc.objects[i], ob);
                        double pv[4] = {bx->px1, bx->py1, bx->px2, bx->py2};
                        double cell[4] = {sc.w / 100.0, sc.h / 100.0, sc.w / 100.0, sc.h / 100.0};
                        bool ok = true;
                        for (int q = 0; q < 4; q++)
                            ok &= pv[q] <= ob[q] + 1e-9 && ob[q] <= pv[q] + cell[q] + 1e-9;
                        if (ok && !(seen & (1u << i))) { hit = i; break; }
                    }
                    CHECK_MSG(hit >= 0, "box %d %d %d %d of '%s' is no object's", bx->x1, bx->y1, bx->x2, bx->y2, txt);
                    if (hit >= 0) seen |= 1u << hit;
                }
            switch (x->task) {
            case MG_TASK_REFER:
            case MG_TASK_IDENTIFY:
                CHECK_EQ_INT(nb, 1);
                CHECK(seen == 1u << x->target);
                break;
            case MG_TASK_DETECTION: CHECK(seen == x->objects_mask); break;
            case MG_TASK_GROUNDING: CHECK_EQ_INT(nb, sc.n_objects); break;
            default: CHECK_EQ_INT(nb, 0); break;
            }
            mg_grounding_free(g);
        }
        world_scene_free(&sc);
    }
    for (int t = 0; t <= MG_TASK_CAPTION; t++) CHECK_MSG(counts[t] > 0, "no example of task %d", t);
    free(ex);
}

TEST(world_mentions) {
    int m[8][2];
    CHECK_EQ_INT(world_mentions("two small red stars and a Blue circle left of the star", m, 8), 2);
    CHECK(m[0][0] == 0 && m[0][1] == WORLD_STAR);
    CHECK(m[1][0] == 2 && m[1][1] == WORLD_CIRCLE);
    CHECK_EQ_INT(world_mentions("red large crosses, red crosses", m, 8), 1);
    CHECK(m[0][1] == WORLD_CROSS);
    CHECK_EQ_INT(world_mentions("a star, reddish circle, nothing", m, 8), 0);
    CHECK_EQ_INT(world_mentions("red circle blue square green star", m, 2), 2);
}

/* The written images and ground truth, checked by Python from the files alone: pixels of an
 * object's colour lie inside its box, boxes of isolated objects on plain backgrounds are exactly
 * the drawn extent, every box in a text is some object's region, every referring expression
 * picks out exactly its target. */
TEST(world_files_vs_python) {
    const char *d = test_data_dir(), *bin = getenv("MG_BIN") ? getenv("MG_BIN") : "build/minigpt";
    int n = test_quick() ? 12 : 36;
    CHECK_EQ_INT(test_run("rm -rf %s/wpy && %s synth -q --seed 5 -n %d -o %s/wpy", d, bin, n, d), 0);
    CHECK_EQ_INT(test_run("%s tests/ref/eval_ref.py check-world %s/wpy", test_python(), d), 0);
    CHECK_EQ_INT(test_run("rm -rf %s/wpye && %s synth -q --seed 6 -n %d --size 320 --eval -o %s/wpye", d, bin,
                          n / 2, d), 0);
    CHECK_EQ_INT(test_run("%s tests/ref/eval_ref.py check-world %s/wpye", test_python(), d), 0);
    /* --tasks filter */
    CHECK_EQ_INT(test_run("rm -rf %s/wpyt && %s synth -q -n 4 --tasks refer,vqa -o %s/wpyt && "
                          "! grep -q '\"task\":\"caption\"' %s/wpyt/data.jsonl && grep -q '\"task\":\"refer\"' "
                          "%s/wpyt/data.jsonl", d, bin, d, d, d), 0);
    CHECK(test_run("%s synth -q -n 1 --tasks nonsense -o %s/wpyt 2>/dev/null", bin, d) != 0);
}

/* Scene options: the parser's canonical round trip and errors; restricted scenes keep to their
 * restrictions; no restriction gives the full world's scenes bit for bit; an impossible
 * restriction fails with a message instead of looping. */
TEST(world_scene_options) {
    world_opts o;
    char err[256], buf[256];
    CHECK(world_opts_parse("objects=1-2,bg=plain+gradient,tones=0+3,colors=red+Blue,shapes=square,sizes=large",
                           &o, err, sizeof err) == MG_OK);
    world_opts_format(&o, buf, sizeof buf);
    CHECK_MSG(!strcmp(buf, "objects=1-2,bg=plain+gradient,tones=0+3,colors=red+blue,shapes=square,sizes=large"), "format gave %s", buf);
    CHECK(world_opts_parse("", &o, err, sizeof err) == MG_OK);
    world_opts_format(&o, buf, sizeof buf);
    CHECK_MSG(!strcmp(buf, "all"), "format gave %s", buf);
    CHECK(world_opts_parse("objects=3", &o, err, sizeof err) == MG_OK && o.min_objects == 3 && o.max_objects == 3);
    const char *bad[] = {"objects=0", "objects=2-1", "objects=7", "objects=1x", "bg=sky", "colors=red+",
                         "tones=8", "shape=circle", "sizes", "objects=1,", "colors=red++blue"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        CHECK(world_opts_parse(bad[i], &o, err, sizeof err) == MG_ERR_INVALID_ARG);
        CHECK(strstr(err, "scene:") != NULL);
    }

    /* restricted */
    CHECK(world_opts_parse("objects=1-2,bg=plain,tones=0+3,colors=red+blue+green,shapes=square+circle,sizes=large",
                           &o, err, sizeof err) == MG_OK);
    int seen_colors = 0, seen_two = 0;
    for (int k = 0; k < 40; k++) {
        world_scene sc;
        CHECK(world_scene_generate_opts(&sc, 5, (uint64_t)k, 96, k & 1, &o, err, sizeof err) == MG_OK);
        CHECK(sc.n_objects >= 1 && sc.n_objects <= 2);
        seen_two |= sc.n_objects == 2;
        CHECK(sc.background == WORLD_BG_PLAIN);
        CHECK(!memcmp(sc.bg_rgb[0], "\xbe\xbe\xbe", 3) || !memcmp(sc.bg_rgb[0], "\x3c\x46\x5f", 3)); /* tones 0, 3 */
        for (int i = 0; i < sc.n_objects; i++) {
            const world_object *ob = &sc.objects[i];
            CHECK(ob->color == 0 || ob->color == 1 || ob->color == 2);
            CHECK(ob->shape == WORLD_SQUARE || ob->shape == WORLD_CIRCLE);
            CHECK(ob->size == WORLD_LARGE);
            seen_colors |= 1 << ob->color;
        }
        world_scene_free(&sc);
    }
    CHECK(seen_colors == 7 && seen_two);

    /* unrestricted options: the same scenes as world_scene_generate */
    world_opts none = {0};
    for (int k = 0; k < 6; k++) {
        world_scene a, b;
        CHECK(world_scene_generate(&a, 9, (uint64_t)k, 96, false, err, sizeof err) == MG_OK);
        CHECK(world_scene_generate_opts(&b, 9, (uint64_t)k, 96, false, &none, err, sizeof err) == MG_OK);
        CHECK(a.n_objects == b.n_objects && a.background == b.background);
        if (a.image.rgb && b.image.rgb) CHECK(memcmp(a.image.rgb, b.image.rgb, (size_t)96 * 96 * 3) == 0);
        world_scene_free(&a);
        world_scene_free(&b);
    }

    /* white objects on the light sand tone (2) never stand out: an error, not a hang */
    CHECK(world_opts_parse("colors=white,tones=2,bg=plain", &o, err, sizeof err) == MG_OK);
    world_scene sc;
    err[0] = 0;
    CHECK(world_scene_generate_opts(&sc, 1, 0, 96, false, &o, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(strstr(err, "admit no scene") != NULL);
}

/* vqa=KINDS (scene key): only those [vqa] question kinds are asked, up to three a scene; the
 * scenes and every other example are those of the same spec without the key; bad kinds fail. */
TEST(world_scene_vqa_kinds) {
    world_opts all, yn, two;
    char err[256], buf[256];
    CHECK(world_opts_parse("objects=1-3", &all, err, sizeof err) == MG_OK);
    CHECK(world_opts_parse("objects=1-3,vqa=yesno", &yn, err, sizeof err) == MG_OK);
    CHECK(world_opts_parse("vqa=Count+where", &two, err, sizeof err) == MG_OK);
    world_opts_format(&two, buf, sizeof buf);
    CHECK_MSG(!strcmp(buf, "vqa=count+where"), "format gave %s", buf);
    const char *bad[] = {"vqa=why", "vqa=yesno+", "vqa=count++shape"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        CHECK(world_opts_parse(bad[i], &yn, err, sizeof err) == MG_ERR_INVALID_ARG);
        CHECK(strstr(err, "scene:") != NULL);
    }
    CHECK(world_opts_parse("objects=1-3,vqa=yesno", &yn, err, sizeof err) == MG_OK);
    world_example *ea = malloc(sizeof *ea * WORLD_MAX_EXAMPLES), *eb = malloc(sizeof *eb * WORLD_MAX_EXAMPLES);
    CHECK(ea && eb);
    int yes = 0, no = 0, other_kinds_before = 0;
    for (int k = 0; ea && eb && k < 30; k++) {
        world_scene a, b;
        int na = 0, nb = 0;
        CHECK(world_scene_generate_opts(&a, 4, (uint64_t)k, 96, false, &all, err, sizeof err) == MG_OK);
        CHECK(world_scene_generate_opts(&b, 4, (uint64_t)k, 96, false, &yn, err, sizeof err) == MG_OK);
        CHECK(a.n_objects == b.n_objects && memcmp(a.image.rgb, b.image.rgb, (size_t)96 * 96 * 3) == 0);
        CHECK(world_scene_examples(&a, 1u << MG_TASK_VQA | 1u << MG_TASK_REFER, false, ea, WORLD_MAX_EXAMPLES, &na, err, sizeof err) == MG_OK);
        CHECK(world_scene_examples(&b, 1u << MG_TASK_VQA | 1u << MG_TASK_REFER, false, eb, WORLD_MAX_EXAMPLES, &nb, err, sizeof err) == MG_OK);
        int ra = 0, rb = 0, vb = 0;
        for (int i = 0; i < na; i++) {
            if (ea[i].task == MG_TASK_REFER) ra++;
            else other_kinds_before += strcmp(ea[i].question_type, "is there a") != 0;
        }
        for (int i = 0; i < nb; i++) {
            if (eb[i].task == MG_TASK_REFER) {
                rb++;
                continue;
            }
            vb++;
            CHECK_MSG(!strcmp(eb[i].question_type, "is there a"), "asked %s", eb[i].query);
            CHECK(!strncmp(eb[i].query, "Is there a", 10));
            yes += !strcmp(eb[i].answer, "yes");
            no += !strcmp(eb[i].answer, "no");
        }
        CHECK_EQ_INT(ra, rb);
        CHECK(vb >= 1 && vb <= 3);
        world_scene_free(&a);
        world_scene_free(&b);
    }
    CHECK(other_kinds_before > 0);
    CHECK_MSG(yes > 10 && no > 10, "%d yes, %d no", yes, no);
    free(ea);
    free(eb);
}

/* same=P (scene key): with 100 every object repeats the first one's shape and colour; with 60,
 * scenes with a repeated shape or colour are clearly commoner than without the key; 0 draws the
 * world's own scenes bit for bit; bad percents fail with a message. */
TEST(world_scene_same) {
    world_opts o, all, all0, many;
    char err[256], buf[256];
    CHECK(world_opts_parse("objects=2-3,shapes=circle+star,same=40", &o, err, sizeof err) == MG_OK && o.same == 40);
    world_opts_format(&o, buf, sizeof buf);
    CHECK_MSG(!strcmp(buf, "objects=2-3,shapes=circle+star,same=40"), "format gave %s", buf);
    const char *bad[] = {"same=101", "same=-1", "same=", "same=5x", "same=1000000000000"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        CHECK(world_opts_parse(bad[i], &o, err, sizeof err) == MG_ERR_INVALID_ARG);
        CHECK_MSG(strstr(err, "same=P") != NULL, "%s: %s", bad[i], err);
    }
    CHECK(world_opts_parse("objects=3,bg=plain,sizes=medium,same=100", &o, err, sizeof err) == MG_OK);
    CHECK(world_opts_parse("objects=3,bg=plain,sizes=medium", &all, err, sizeof err) == MG_OK);
    CHECK(world_opts_parse("objects=3,bg=plain,sizes=medium,same=0", &all0, err, sizeof err) == MG_OK);
    CHECK(world_opts_parse("objects=3,bg=plain,sizes=medium,same=60", &many, err, sizeof err) == MG_OK);
    int rep_world = 0, rep_many = 0, several = 0;
    for (int k = 0; k < 60; k++) {
        world_scene a, b, c, d;
        CHECK(world_scene_generate_opts(&a, 9, (uint64_t)k, 96, false, &o, err, sizeof err) == MG_OK);
        several += a.n_objects >= 2;
        for (int i = 1; i < a.n_objects; i++)
            CHECK(a.objects[i].shape == a.objects[0].shape && a.objects[i].color == a.objects[0].color);
        CHECK(world_scene_generate_opts(&b, 9, (uint64_t)k, 96, false, &all, err, sizeof err) == MG_OK);
        CHECK(world_scene_generate_opts(&c, 9, (uint64_t)k, 96, false, &all0, err, sizeof err) == MG_OK);
        CHECK(b.n_objects == c.n_objects && memcmp(b.image.rgb, c.image.rgb, (size_t)96 * 96 * 3) == 0);
        CHECK(world_scene_generate_opts(&d, 9, (uint64_t)k, 96, false, &many, err, sizeof err) == MG_OK);
        for (int pass = 0; pass < 2; pass++) {
            const world_scene *s = pass ? &d : &b;
            bool rep = false;
            for (int i = 0; i < s->n_objects; i++)
                for (int j = 0; j < i; j++)
                    rep |= s->objects[i].shape == s->objects[j].shape || s->objects[i].color == s->objects[j].color;
            *(pass ? &rep_many : &rep_world) += rep;
        }
        world_scene_free(&a);
        world_scene_free(&b);
        world_scene_free(&c);
        world_scene_free(&d);
    }
    CHECK_MSG(several >= 30, "only %d of 60 scenes with every object the same had two or more", several);
    CHECK_MSG(rep_many >= rep_world + 15, "repeats: %d of 60 with same=60, %d without", rep_many, rep_world);
}
