/*
 * cmd_synth.c - `minigpt synth`: renders a synthetic grounded data set (src/world.h) into PNG
 * images plus one JSONL file of ground truth and task examples; with --eval, a held-out set with
 * the ground truth in the official evaluation formats (RefCOCO list, VQA questions/annotations)
 * and in our own for detection, grounding, identify and caption. See docs/synth.md.
 */
#include "cli.h"

#include "world.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: minigpt synth -o DIR [-n N] [--seed S] [--size PX] [--tasks LIST] [--scene SPEC] [--eval]\n\n"
            "Renders N synthetic images (1-6 coloured shapes on plain, gradient, noisy or cluttered\n"
            "backgrounds) as DIR/images/NNNNNN.png and writes DIR/data.jsonl: per image its size,\n"
            "objects with tight pixel boxes and task examples in MiniGPT-v2's formats.\n"
            "Identical output for identical options on every machine.\n"
            "options:\n"
            "  -n N          number of images (default 100)\n"
            "  --seed S      data set seed (default 1)\n"
            "  --size PX     image side in pixels (default 448)\n"
            "  --tasks LIST  all (default) or a comma list of caption, grounding, detection,\n"
            "                refer, identify, vqa, describe (the untagged \"Describe this image.\")\n"
            "  --scene SPEC  only these scenes (the trainer's curriculum), e.g. objects=1-2,\n"
            "                bg=plain+gradient,tones=0+1,colors=red+blue,shapes=square,sizes=large\n"
            "                (each key optional; names '+'-separated; default all); vqa=KINDS\n"
            "                asks only those [vqa] kinds (count+color+shape+where+yesno);\n"
            "                same=P: an object repeats an earlier one's shape (and, apart,\n"
            "                colour) with P%% chance\n"
            "  --eval        a held-out set (scenes disjoint from training sets of any seed) with\n"
            "                the official evaluation prompts, plus ground-truth files for\n"
            "                `minigpt eval`: refcoco_synth.json, vqa_questions.json,\n"
            "                vqa_annotations.json, detection_gt.json, grounding_gt.json,\n"
            "                identify_gt.json, caption_gt.json\n"
            "  -q            no progress bar\n");
}

static unsigned parse_tasks(const char *s) {
    if (strcmp(s, "all") == 0) return ~0u;
    unsigned m = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
        if (strcmp(t, "describe") == 0 || strcmp(t, "none") == 0) { m |= 1u; continue; }
        int k = mg_task_from_name(t);
        if (k <= 0) return 0;
        m |= 1u << k;
    }
    return m;
}

static const char *task_name(mg_task t) {
    static const char *const N[] = {"none", "grounding", "refer", "detection", "identify", "vqa", "caption"};
    return t >= 0 && t <= MG_TASK_CAPTION ? N[t] : "?";
}

static json_t *xywh(const world_object *o) {
    return json_pack("[i,i,i,i]", o->x0, o->y0, o->x1 - o->x0 + 1, o->y1 - o->y0 + 1);
}

static json_t *mentions_json(const char *text) {
    int m[32][2];
    int n = world_mentions(text, m, 32);
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_pack("[s,s]", world_color_name(m[i][0]), world_shape_name(m[i][1])));
    return a;
}

static void progress(int done, int total, bool show) {
    if (!show) return;
    int w = 30, f = total ? (int)((long long)done * w / total) : w;
    fprintf(stderr, "\r[%.*s%*s] %d/%d", f, "##############################", w - f, "", done, total);
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
}

static bool dump(json_t *j, const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return json_dump_file(j, path, JSON_COMPACT) == 0;
}

/* `minigpt synth`; see usage(). */
int cmd_synth(int argc, char **argv) {
    long long n = 100, seed = 1, size = 448;
    const char *dir = NULL;
    unsigned mask = ~0u;
    bool eval = false, quiet = false;
    world_opts wo = {0};
    char err0[256];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (cli_is_help(a)) { usage(stdout); return 0; }
        if (!strcmp(a, "-n") && has) {
            if (!cli_parse_int(argv[++i], 1, 10000000, &n)) return cli_error("synth", "bad -n '%s'", argv[i]);
        } else if (!strcmp(a, "--seed") && has) {
            if (!cli_parse_int(argv[++i], 0, INT64_MAX, &seed)) return cli_error("synth", "bad --seed '%s'", argv[i]);
        } else if (!strcmp(a, "--size") && has) {
            if (!cli_parse_int(argv[++i], 64, 4096, &size)) return cli_error("synth", "--size must be 64..4096");
        } else if ((!strcmp(a, "-o") || !strcmp(a, "--out")) && has) {
            dir = argv[++i];
        } else if (!strcmp(a, "--tasks") && has) {
            mask = parse_tasks(argv[++i]);
            if (!mask) return cli_error("synth", "bad --tasks '%s' (see --help)", argv[i]);
        } else if (!strcmp(a, "--scene") && has) {
            if (world_opts_parse(argv[++i], &wo, err0, sizeof err0) != MG_OK) return cli_error("synth", "%s", err0);
        } else if (!strcmp(a, "--eval")) {
            eval = true;
        } else if (!strcmp(a, "-q")) {
            quiet = true;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!dir) { usage(stderr); return 2; }
    char path[4096];
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/images", dir);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) return cli_error("synth", "cannot create %s", path);
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    FILE *out = fopen(path, "wb");
    if (!out) return cli_error("synth", "cannot write %s", path);
    bool bar = !quiet && isatty(2);

    json_t *refcoco = json_array(), *vq = json_array(), *va = json_array(), *det = json_array(),
           *gro = json_array(), *idf = json_array(), *cap = json_array();
    world_example *ex = malloc(sizeof *ex * WORLD_MAX_EXAMPLES);
    int rc = 0;
    long long next_id = 0;
    char err[256];
    for (long long k = 0; k < n && ex && rc == 0; k++) {
        world_scene sc;
        if (world_scene_generate_opts(&sc, (uint64_t)seed, (uint64_t)k, (int)size, eval, &wo, err, sizeof err) != MG_OK) {
            rc = cli_error("synth", "%s", err);
            break;
        }
        char rel[64];
        snprintf(rel, sizeof rel, "images/%06lld.png", k);
        snprintf(path, sizeof path, "%s/%s", dir, rel);
        int nex = 0;
        if (mg_image_write_png(&sc.image, path, err, sizeof err) != MG_OK ||
            world_scene_examples(&sc, mask, eval, ex, WORLD_MAX_EXAMPLES, &nex, err, sizeof err) != MG_OK) {
            rc = cli_error("synth", "%s", err);
            world_scene_free(&sc);
            break;
        }
        json_t *objs = json_array();
        char reg[WORLD_MAX_OBJECTS][24];
        for (int i = 0; i < sc.n_objects; i++) {
            const world_object *o = &sc.objects[i];
            double b[4];
            world_object_box(o, b);
            mg_region_text(b[0], b[1], b[2], b[3], sc.w, sc.h, reg[i], sizeof reg[i], NULL, 0);
            json_array_append_new(objs, json_pack("{s:s, s:s, s:s, s:o, s:[i,i,i,i], s:s}", "shape",
                                                  world_shape_name(o->shape), "color", world_color_name(o->color),
                                                  "size", world_size_name(o->size), "bbox", xywh(o), "box",
                                                  o->x0, o->y0, o->x1 + 1, o->y1 + 1, "region", reg[i]));
        }
        json_t *exs = json_array();
        for (int e = 0; e < nex; e++) {
            json_t *je = json_pack("{s:s, s:s, s:s}", "task", task_name(ex[e].task), "instruction",
                                   ex[e].instruction, "answer", ex[e].answer);
            if (ex[e].query[0]) json_object_set_new(je, "query", json_string(ex[e].query));
            if (ex[e].target >= 0) json_object_set_new(je, "target", json_integer(ex[e].target));
            json_array_append_new(exs, je);
        }
        json_t *rec = json_pack("{s:s, s:i, s:i, s:I, s:s, s:o, s:o}", "image", rel, "width", sc.w, "height",
                                sc.h, "index", (json_int_t)k, "background", world_background_name(sc.background),
                                "objects", objs, "examples", exs);
        char *line = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
        if (!line || fprintf(out, "%s\n", line) < 0) rc = cli_error("synth", "cannot write data.jsonl");
        free(line);
        json_decref(rec);

        if (eval) {
            for (int e = 0; e < nex; e++) {
                const world_example *x = &ex[e];
                json_int_t id = (json_int_t)next_id++;
                json_t *it = NULL;
                if (x->task == MG_TASK_REFER) {
                    char img_id[64];
                    snprintf(img_id, sizeof img_id, "synth_%06lld_%d", k, x->target);
                    json_array_append_new(refcoco, json_pack("{s:s, s:s, s:o, s:i, s:i, s:I, s:s, s:s}", "img_id",
                                                             img_id, "sents", x->query, "bbox",
                                                             xywh(&sc.objects[x->target]), "height", sc.h,
                                                             "width", sc.w, "id", id, "image", rel,
                                                             "instruction", x->instruction));
                } else if (x->task == MG_TASK_VQA) {
                    json_array_append_new(vq, json_pack("{s:I, s:s, s:I}", "image_id", (json_int_t)k,
                                                        "question", x->query, "question_id", id));
                    json_t *answers = json_array();
                    for (int r = 1; r <= 10; r++)
                        json_array_append_new(answers, json_pack("{s:s, s:s, s:i}", "answer", x->answer,
                                                                 "answer_confidence", "yes", "answer_id", r));
                    json_array_append_new(va, json_pack("{s:I, s:I, s:s, s:s, s:s, s:o, s:s, s:s}", "question_id",
                                                        id, "image_id", (json_int_t)k, "question_type",
                                                        x->question_type, "answer_type", x->answer_type,
                                                        "multiple_choice_answer", x->answer, "answers", answers,
                                                        "image", rel, "instruction", x->instruction));
                } else if (x->task == MG_TASK_DETECTION) {
                    json_t *boxes = json_array();
                    for (int i = 0; i < sc.n_objects; i++)
                        if (x->objects_mask & (1u << i)) json_array_append_new(boxes, xywh(&sc.objects[i]));
                    it = json_pack("{s:s, s:o}", "phrase", x->query, "boxes", boxes);
                    json_array_append_new(det, it);
                } else if (x->task == MG_TASK_GROUNDING) {
                    json_t *ents = json_array();
                    for (int i = 0; i < sc.n_objects; i++) {
                        const world_object *o = &sc.objects[i];
                        json_t *found = NULL;
                        size_t q;
                        json_t *v;
                        json_array_foreach(ents, q, v) {
                            if (!strcmp(json_string_value(json_object_get(v, "color")), world_color_name(o->color)) &&
                                !strcmp(json_string_value(json_object_get(v, "shape")), world_shape_name(o->shape)))
                                found = v;
                        }
                        if (!found) {
                            found = json_pack("{s:s, s:s, s:[]}", "color", world_color_name(o->color), "shape",
                                              world_shape_name(o->shape), "boxes");
                            json_array_append_new(ents, found);
                        }
                        json_array_append_new(json_object_get(found, "boxes"), xywh(o));
                    }
                    it = json_pack("{s:o}", "entities", ents);
                    json_array_append_new(gro, it);
                } else if (x->task == MG_TASK_IDENTIFY) {
                    it = json_pack("{s:o, s:o}", "box", xywh(&sc.objects[x->target]), "objects",
                                   mentions_json(x->answer));
                    json_array_append_new(idf, it);
                } else if (x->task == MG_TASK_CAPTION) {
                    it = json_pack("{s:o}", "objects", mentions_json(x->answer));
                    json_array_append_new(cap, it);
                }
                if (it) {
                    json_object_set_new(it, "id", json_integer(id));
                    json_object_set_new(it, "image", json_string(rel));
                    json_object_set_new(it, "width", json_integer(sc.w));
                    json_object_set_new(it, "height", json_integer(sc.h));
                    json_object_set_new(it, "instruction", json_string(x->instruction));
                    json_object_set_new(it, "answer", json_string(x->answer));
                }
            }
        }
        world_scene_free(&sc);
        progress((int)(k + 1), (int)n, bar);
    }
    if (!ex) rc = cli_error("synth", "out of memory");
    if (fclose(out) != 0 && rc == 0) rc = cli_error("synth", "cannot write data.jsonl");
    if (eval && rc == 0) {
        json_t *qf = json_pack("{s:{s:s}, s:s, s:s, s:s, s:{}, s:O}", "info", "description",
                               "minigpt synthetic VQA", "task_type", "Open-Ended", "data_type", "synth",
                               "data_subtype", "synth", "license", "questions", vq);
        json_t *af = json_pack("{s:{s:s}, s:s, s:s, s:{}, s:O}", "info", "description", "minigpt synthetic VQA",
                               "data_type", "synth", "data_subtype", "synth", "license", "annotations", va);
        bool ok = dump(refcoco, dir, "refcoco_synth.json") && qf && dump(qf, dir, "vqa_questions.json") &&
                  af && dump(af, dir, "vqa_annotations.json");
        const struct { json_t *list; const char *task, *file; } gt[] = {
            {det, "detection", "detection_gt.json"}, {gro, "grounding", "grounding_gt.json"},
            {idf, "identify", "identify_gt.json"},   {cap, "caption", "caption_gt.json"}};
        for (size_t i = 0; i < sizeof gt / sizeof gt[0] && ok; i++) {
            json_t *o = json_pack("{s:s, s:O}", "task", gt[i].task, "items", gt[i].list);
            ok = o && dump(o, dir, gt[i].file);
            json_decref(o);
        }
        json_decref(qf);
        json_decref(af);
        if (!ok) rc = cli_error("synth", "cannot write the evaluation files in %s", dir);
    }
    json_decref(refcoco); json_decref(vq); json_decref(va); json_decref(det);
    json_decref(gro); json_decref(idf); json_decref(cap);
    free(ex);
    if (rc == 0 && !quiet)
        fprintf(stderr, "wrote %lld images and %s/data.jsonl%s\n", n, dir, eval ? " and the evaluation files" : "");
    return rc;
}
