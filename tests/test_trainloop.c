/*
 * test_trainloop.c - the training loop of `minigpt train` (src/trainloop.c) and the shipped demo
 * model: the loss falls on a tiny configuration, resume is bit-identical, proj mode changes only
 * the projection, the user-folder JSONL input works and rejects malformed lines, the vocabulary
 * makes boxes short, LoRA stages (--train lora / proj+lora) attach, keep, merge and export their
 * adapters, and models/demo.gguf (when present) answers held-out [refer] questions.
 */
#include "test.h"

#include "evalscore.h"
#include "tokenizer.h"
#include "trainloop.h"
#include "world.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A tiny configuration that trains in seconds. */
static tl_params tiny_params(void) {
    tl_params p = tl_default_params();
    p.cfg = (tr_config){.image_size = 64, .patch_size = 16, .v_embd = 32, .v_layer = 1, .v_head = 2, .v_ff = 64,
                        .v_eps = 1e-6f, .post_eps = 1e-5f, .n_embd = 48, .n_layer = 1, .n_head = 2,
                        .n_head_kv = 2, .n_ff = 96, .n_ctx = 96, .rms_eps = 1e-5f, .rope_theta = 10000.0f};
    /* refer only: short examples */
    for (int t = 0; t < TL_N_TASKS; t++) p.task_weight[t] = t == MG_TASK_REFER ? 1.0f : 0.0f;
    p.batch = 2;
    p.steps = 8;
    p.opt.warmup = 2;
    p.opt.lr = 3e-3f;
    p.n_threads = 1;
    p.ckpt_every = 0;
    p.eval_every = 0;
    p.eval_n = 0;
    return p;
}

typedef struct {
    float loss[256];
    int n;
    int stop_at; /* cancel after this step (0: never) */
    float eval_loss;
} recorder;

static int record(void *user, const tl_progress *pg) {
    recorder *r = user;
    if (pg->event == TL_EV_STEP && r->n < 256) r->loss[r->n++] = pg->loss;
    if (pg->event == TL_EV_EVAL) r->eval_loss = pg->eval_loss;
    return r->stop_at > 0 && pg->event == TL_EV_STEP && pg->step >= r->stop_at;
}

/* A few dozen steps lower the loss clearly. */
TEST(trainloop_loss_decreases) {
    char out[4096], err[512];
    snprintf(out, sizeof out, "%s/tl_loss.gguf", test_data_dir());
    tl_params p = tiny_params();
    p.steps = test_quick() ? 24 : 40;
    p.batch = 4;
    p.eval_every = p.steps;
    p.eval_n = 8;
    p.out_path = out;
    recorder r = {0};
    mg_status st = tl_train(&p, record, &r, err, sizeof err);
    CHECK_MSG(st == MG_OK, "tl_train: %s", err);
    CHECK_EQ_INT(r.n, (int)p.steps);
    if (r.n < 6) return;
    float first = (r.loss[0] + r.loss[1] + r.loss[2]) / 3, last = (r.loss[r.n - 1] + r.loss[r.n - 2] + r.loss[r.n - 3]) / 3;
    printf("  loss %.3f -> %.3f, held-out %.3f\n", first, last, r.eval_loss);
    CHECK_MSG(last < first - 1.5f, "loss %.3f -> %.3f", first, last);
    CHECK(r.eval_loss > 0 && r.eval_loss < first - 1.0f);
    /* the output is parameters only and runs in the engine */
    mg_model *m = NULL;
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = 1;
    CHECK_MSG(mg_model_open(&m, out, &mp, err, sizeof err) == MG_OK, "open: %s", err);
    if (m) {
        CHECK(mg_model_has_vision(m));
        CHECK_EQ_INT(mg_model_image_size(m), 64);
        mg_model_close(m);
    }
    gguf_file *f = NULL;
    CHECK(gguf_open(&f, out, err, sizeof err) == MG_OK);
    if (f) {
        CHECK(gguf_find_tensor(f, "mm.proj.weight") != NULL);
        CHECK(gguf_find_tensor(f, "opt.m.mm.proj.weight") == NULL);
        gguf_close(f);
    }
}

static bool same_model(const char *a, const char *b, bool moments) {
    char err[256];
    tr_model *x = NULL, *y = NULL;
    bool ok = tr_load(&x, a, 1, err, sizeof err) == MG_OK && tr_load(&y, b, 1, err, sizeof err) == MG_OK &&
              x->n_params == y->n_params && x->step == y->step &&
              memcmp(x->params, y->params, (size_t)x->n_params * sizeof(float)) == 0;
    if (ok && moments)
        ok = memcmp(x->adam_m, y->adam_m, (size_t)x->n_params * sizeof(float)) == 0 &&
             memcmp(x->adam_v, y->adam_v, (size_t)x->n_params * sizeof(float)) == 0;
    tr_model_free(x);
    tr_model_free(y);
    return ok;
}

/* Runs p (with its checkpoint at `part`) until it is cancelled after step `stop`, resumes that
 * checkpoint to the end from its stored options alone, and says whether the result is the
 * uninterrupted run's checkpoint `full`, bit for bit (moments too); *resumed records the resumed
 * run's steps. */
static bool stop_and_resume_same(tl_params p, const char *part, int stop, const char *full, recorder *resumed) {
    char err[512];
    p.out_path = NULL;
    p.ckpt_path = part;
    recorder r1 = {.stop_at = stop};
    if (tl_train(&p, record, &r1, err, sizeof err) != MG_ERR_CANCELLED) return false;
    tl_params q = tiny_params();
    q.ckpt_path = part;
    q.resume_path = part;
    mg_status st = tl_train(&q, record, resumed, err, sizeof err);
    if (st != MG_OK) printf("    resume: %s\n", err);
    return st == MG_OK && same_model(full, part, true);
}

/* Stopping at step 4 and resuming gives the same bits as one uninterrupted run. */
TEST(trainloop_resume_bit_identical) {
    char a[4096], b[4096], err[512];
    snprintf(a, sizeof a, "%s/tl_full.ckpt", test_data_dir());
    snprintf(b, sizeof b, "%s/tl_part.ckpt", test_data_dir());
    tl_params p = tiny_params();
    p.ckpt_path = a;
    recorder r1 = {0}, r2 = {.stop_at = 4}, r3 = {0};
    CHECK_MSG(tl_train(&p, record, &r1, err, sizeof err) == MG_OK, "%s", err);
    p.ckpt_path = b;
    CHECK(tl_train(&p, record, &r2, err, sizeof err) == MG_ERR_CANCELLED);
    CHECK_EQ_INT(r2.n, 4);
    /* resume: only the checkpoint is given; the stored options win over these */
    tl_params q = tiny_params();
    q.batch = 7;
    q.opt.lr = 1.0f;
    q.ckpt_path = b;
    q.resume_path = b;
    CHECK_MSG(tl_train(&q, record, &r3, err, sizeof err) == MG_OK, "%s", err);
    CHECK_EQ_INT(r3.n, 4);
    CHECK(same_model(a, b, true));
    for (int i = 0; i < 4 && r3.n == 4; i++) CHECK(r1.loss[4 + i] == r3.loss[i]);
    /* resuming the finished checkpoint runs no step and still exports it (to a new checkpoint
     * path too): the export holds the trained parameters */
    char e[4096], ec[4096];
    snprintf(e, sizeof e, "%s/tl_done.gguf", test_data_dir());
    snprintf(ec, sizeof ec, "%s/tl_done.ckpt", test_data_dir());
    remove(ec);
    tl_params q2 = tiny_params();
    q2.resume_path = b;
    q2.ckpt_path = ec;
    q2.out_path = e;
    recorder r4 = {0};
    CHECK_MSG(tl_train(&q2, record, &r4, err, sizeof err) == MG_OK, "%s", err);
    CHECK_EQ_INT(r4.n, 0);
    CHECK(same_model(b, ec, true));
    gguf_file *gf = NULL;
    CHECK_MSG(gguf_open(&gf, e, err, sizeof err) == MG_OK, "%s", err);
    if (gf) {
        CHECK(gguf_find_tensor(gf, "mm.proj.weight") != NULL);
        gguf_close(gf);
    }
    /* and a run with another seed differs (the comparison can fail) */
    char c[4096];
    snprintf(c, sizeof c, "%s/tl_seed.ckpt", test_data_dir());
    p.seed = 2;
    p.ckpt_path = c;
    CHECK(tl_train(&p, NULL, NULL, err, sizeof err) == MG_OK);
    CHECK(!same_model(a, c, false));
}

/* The base model of the mode tests: the tiny model after 2 steps, written to `path`. */
static bool train_tiny_base(const char *path, char *err, size_t err_len) {
    tl_params p = tiny_params();
    p.steps = 2;
    p.out_path = path;
    return tl_train(&p, NULL, NULL, err, err_len) == MG_OK;
}

/* --train proj: only mm.proj.* moves. */
TEST(trainloop_proj_mode) {
    char base[4096], out[4096], err[512];
    snprintf(base, sizeof base, "%s/tl_base.gguf", test_data_dir());
    snprintf(out, sizeof out, "%s/tl_proj.gguf", test_data_dir());
    CHECK_MSG(train_tiny_base(base, err, sizeof err), "%s", err);
    tl_params p = tiny_params();
    p.steps = 3;
    p.train_mask = TR_GROUP_PROJ;
    p.init_path = base;
    p.out_path = out;
    CHECK_MSG(tl_train(&p, NULL, NULL, err, sizeof err) == MG_OK, "%s", err);
    tr_model *x = NULL, *y = NULL;
    CHECK(tr_load(&x, base, 1, err, sizeof err) == MG_OK);
    CHECK(tr_load(&y, out, 1, err, sizeof err) == MG_OK);
    if (!x || !y) {
        tr_model_free(x);
        tr_model_free(y);
        return;
    }
    int changed_proj = 0, changed_other = 0;
    for (int i = 0; i < x->n_tensors; i++) {
        const tr_tensor *t = &x->tensors[i];
        bool diff = memcmp(x->params + t->off, y->params + t->off, (size_t)t->n * sizeof(float)) != 0;
        if (strncmp(t->name, "mm.proj.", 8) == 0) changed_proj += diff;
        else if (diff) {
            changed_other++;
            printf("  changed: %s\n", t->name);
        }
    }
    CHECK_EQ_INT(changed_proj, 2);
    CHECK_EQ_INT(changed_other, 0);
    CHECK_EQ_INT((int)y->step, 3);
    tr_model_free(x);
    tr_model_free(y);
}

static bool write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return false;
    fputs(text, f);
    return fclose(f) == 0;
}

/* A user folder: JSONL pairs and synth-style lines train; malformed lines are named. */
TEST(trainloop_folder_jsonl) {
    char dir[4096], path[4200], err[512];
    snprintf(dir, sizeof dir, "%s/tl_folder", test_data_dir());
    test_run("rm -rf %s && mkdir -p %s/img", dir, dir);
    world_scene sc;
    CHECK(world_scene_generate(&sc, 3, 0, 64, false, err, sizeof err) == MG_OK);
    snprintf(path, sizeof path, "%s/img/a.png", dir);
    CHECK(mg_image_write_png(&sc.image, path, err, sizeof err) == MG_OK);
    world_scene_free(&sc);
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    CHECK(write_text(path, "{\"image\": \"img/a.png\", \"instruction\": \"[refer] the zebra\", \"answer\": "
                           "\"{<10><20><30><40>}\"}\n\n"
                           "{\"image\": \"img/a.png\", \"examples\": [{\"instruction\": \"[vqa] is it odd?\", "
                           "\"answer\": \"zebra yes\"}]}\n"));
    tl_folder f;
    CHECK_MSG(tl_folder_load(&f, dir, err, sizeof err) == MG_OK, "%s", err);
    CHECK_EQ_INT(f.n, 2);
    if (f.n == 2) CHECK(strcmp(f.answer[1], "zebra yes") == 0 && strstr(f.image[0], "/img/a.png") != NULL);
    tl_folder_free(&f);
    tl_params p = tiny_params();
    p.data_dir = dir;
    p.steps = 3;
    p.eval_every = 3;
    p.eval_n = 2;
    char out[4200];
    snprintf(out, sizeof out, "%s/model.gguf", dir);
    p.out_path = out;
    recorder r = {0};
    CHECK_MSG(tl_train(&p, record, &r, err, sizeof err) == MG_OK, "%s", err);
    CHECK_EQ_INT(r.n, 3);
    /* the user's words joined the vocabulary: "zebra" is one piece */
    gguf_file *gf = NULL;
    mg_tokenizer *tok = NULL;
    if (gguf_open(&gf, out, err, sizeof err) == MG_OK && tok_load_gguf(&tok, gf, err, sizeof err) == MG_OK) {
        int32_t ids[16];
        int n = 0;
        CHECK(mg_tokenize(tok, "zebra", 5, 0, 0, ids, 16, &n) == MG_OK);
        CHECK_EQ_INT(n, 1);
    } else CHECK_MSG(0, "%s", err);
    mg_tokenizer_free(tok);
    gguf_close(gf);

    static const struct {
        const char *text, *want;
    } bad[] = {
        {"{\"image\": \"img/a.png\", \"instruction\": \"x\", \"answer\": \"y\"}\n{\"image\": \"img/a.png\", "
         "\"instruction\": \"x\"}\n",
         "line 2: missing \"answer\""},
        {"{\"image\": \"img/a.png\", \"instruction\": \"x\", \"answer\": \"y\"\n", "line 1: not JSON"},
        {"[1, 2]\n", "line 1: not a JSON object"},
        {"{\"instruction\": \"x\", \"answer\": \"y\"}\n", "line 1: missing \"image\""},
        {"{\"image\": \"a.png\", \"examples\": {}}\n", "line 1: \"examples\" must be a non-empty array"},
        {"{\"image\": \"a.png\", \"instruction\": 3, \"answer\": \"y\"}\n", "must be strings"},
        {"\n\n", "no examples"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(write_text(path, bad[i].text));
        err[0] = 0;
        CHECK(tl_folder_load(&f, dir, err, sizeof err) == MG_ERR_FORMAT);
        CHECK_MSG(strstr(err, bad[i].want) != NULL, "case %zu: '%s' lacks '%s'", i, err, bad[i].want);
    }
    /* the CLI reports it */
    const char *bin = getenv("MG_BIN") ? getenv("MG_BIN") : "build/minigpt";
    CHECK(write_text(path, "{\"image\": \"img/a.png\"}\n"));
    CHECK(test_run("%s train -q --data %s -o %s/m2.gguf --steps 1 2>&1 | grep -q 'data.jsonl line 1: missing'", bin,
                   dir, dir) == 0);
    CHECK(test_run("%s train --help | grep -q -- '--resume CKPT'", bin) == 0);
    CHECK(test_run("%s train -o %s/x.gguf --train everything 2>/dev/null", bin, dir) != 0);
}

/* The vocabulary keeps the grounded answers short and exact. */
TEST(trainloop_vocab_units) {
    char err[256];
    mg_tokenizer *tok = NULL;
    CHECK_MSG(tl_build_vocab(&tok, NULL, 0, err, sizeof err) == MG_OK, "%s", err);
    if (!tok) return;
    int32_t ids[64];
    int n = 0;
    const char *box = "{<12><30><45><100>}";
    CHECK(mg_tokenize(tok, box, strlen(box), 0, 0, ids, 64, &n) == MG_OK);
    CHECK_EQ_INT(n, 6); /* "_{" <12> <30> <45> <100> "}" */
    char back[128];
    CHECK(mg_detokenize(tok, ids, n, 1, 1, back, sizeof back) == (int64_t)strlen(box));
    CHECK(strcmp(back, box) == 0);
    const char *s = "<p>two red stars</p> {<1><2><3><4>}<delim>{<5><6><7><8>}";
    CHECK(mg_tokenize(tok, s, strlen(s), 0, 0, ids, 64, &n) == MG_OK);
    CHECK(n <= 20);
    CHECK(mg_detokenize(tok, ids, n, 1, 1, back, sizeof back) == (int64_t)strlen(s) && strcmp(back, s) == 0);
    /* text outside the world still round-trips (byte fallback) */
    const char *odd = "Zürich ~ 42";
    CHECK(mg_tokenize(tok, odd, strlen(odd), 0, 0, ids, 64, &n) == MG_OK);
    CHECK(mg_detokenize(tok, ids, n, 1, 1, back, sizeof back) == (int64_t)strlen(odd) && strcmp(back, odd) == 0);
    /* the template: answer and EOS are the only targets */
    uint8_t mask[64];
    int nt = 0, pos = 0;
    CHECK(tl_encode(tok, "[refer] red star", box, ids, mask, 64, &nt, &pos, err, sizeof err) == MG_OK);
    int ntarget = 0;
    for (int i = 0; i < nt; i++) ntarget += mask[i];
    CHECK_EQ_INT(ntarget, 7);
    CHECK(ids[0] == mg_token_bos(tok) && ids[nt - 1] == mg_token_eos(tok) && mask[nt - 1] == 1 && mask[0] == 0);
    CHECK(pos > 1 && pos < nt - 7);
    CHECK(tl_encode(tok, "[refer] red star", box, ids, mask, 8, &nt, &pos, err, sizeof err) != MG_OK);
    mg_tokenizer_free(tok);
}

/* Occurrences of needle in hay. */
static int count_str(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

/* A caption ("a red star, a blue circle and a green square on a plain background") names
 * exactly the scene's objects: as many items as objects (one, then one more per ", " and per
 * " and "), and every "colour shape" of the scene as many times as the scene has it. */
static bool caption_names_all(const char *text, const world_scene *sc) {
    const char *end = strstr(text, " on a ");
    char items[512];
    const size_t len = end ? (size_t)(end - text) : strlen(text);
    if (len + 2 > sizeof items) return false;
    items[0] = ' '; /* each item's name follows a space */
    memcpy(items + 1, text, len);
    items[len + 1] = 0;
    if (1 + count_str(items, ", ") + count_str(items, " and ") != sc->n_objects) return false;
    for (int i = 0; i < sc->n_objects; i++) {
        char name[64];
        int same = 0;
        snprintf(name, sizeof name, " %s %s", world_color_name(sc->objects[i].color),
                 world_shape_name(sc->objects[i].shape));
        for (int j = 0; j < sc->n_objects; j++)
            same += sc->objects[j].color == sc->objects[i].color && sc->objects[j].shape == sc->objects[i].shape;
        /* a name cannot match inside another: no colour word of the world ends another */
        if (count_str(items, name) != same) return false;
    }
    return true;
}

/* Asks the shipped demo model (or MG_DEMO_MODEL) the first question of task `task` (MG_TASK_REFER,
 * MG_TASK_IDENTIFY or MG_TASK_CAPTION) of `want` held-out scenes of `scene` (a --scene spec) and
 * counts the right answers into *hits: a box with IoU > 0.5 for [refer], the object's "colour
 * shape" for [identify], every object named and no other for [caption]; *asked gets the number
 * asked. Returns false (after a failed CHECK) when the model
 * cannot be run, and skips the test when the file is absent. */
static bool demo_task_hits(mg_task task, const char *scene, int want, int *asked, int *hits) {
    *asked = *hits = 0;
    const char *path = getenv("MG_DEMO_MODEL") ? getenv("MG_DEMO_MODEL") : "models/demo.gguf";
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        char why[600];
        snprintf(why, sizeof why, "%s not present", path);
        test_skip(why);
        return false;
    }
    fclose(fp);
    char err[512];
    mg_model *m = NULL;
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = 2;
    if (mg_model_open(&m, path, &mp, err, sizeof err) != MG_OK) {
        CHECK_MSG(0, "%s", err);
        return false;
    }
    mg_vl *vl = NULL;
    mg_session_params ssp = mg_session_default_params();
    mg_sampler_params sp = mg_sampler_default_params();
    sp.temperature = 0;
    sp.repeat_penalty = 1;
    mg_generate_params gp = mg_generate_default_params();
    gp.n_predict = 20;
    mg_sampler *smp = NULL;
    CHECK(mg_vl_create(&vl, m, &ssp, err, sizeof err) == MG_OK);
    CHECK(mg_sampler_create(&smp, &sp, mg_model_n_vocab(m)) == MG_OK);
    world_example *ex = malloc(sizeof *ex * WORLD_MAX_EXAMPLES);
    world_opts wo;
    CHECK(world_opts_parse(scene, &wo, err, sizeof err) == MG_OK);
    for (uint64_t k = 0; vl && smp && ex && *asked < want && k < (uint64_t)want * 4; k++) {
        world_scene sc;
        int n = 0;
        if (world_scene_generate_opts(&sc, 1, 5000 + k, mg_model_image_size(m), true, &wo, err, sizeof err) != MG_OK) break;
        world_scene_examples(&sc, 1u << task, true, ex, WORLD_MAX_EXAMPLES, &n, err, sizeof err);
        if (n > 0) {
            mg_vl_reset(vl);
            mg_vl_result r;
            memset(&r, 0, sizeof r);
            CHECK(mg_vl_ask(vl, &sc.image, ex[0].instruction, smp, &gp, &r) == MG_OK);
            /* [refer] and [identify] are about one object; a caption's target is -1 */
            const int tgt = ex[0].target >= 0 && ex[0].target < sc.n_objects ? ex[0].target : 0;
            const world_object *o = &sc.objects[tgt];
            int hit = 0;
            if (task == MG_TASK_REFER) {
                double gt[4] = {o->x0, o->y0, o->x1 + 1 - o->x0, o->y1 + 1 - o->y0};
                bool valid = false;
                hit = r.text ? eval_refer_hit(r.text, gt, sc.w, sc.h, &valid) : 0;
            } else if (task == MG_TASK_CAPTION) {
                hit = r.text && caption_names_all(r.text, &sc);
            } else {
                char name[64];
                snprintf(name, sizeof name, " %s %s", world_color_name(o->color), world_shape_name(o->shape));
                const size_t nl = strlen(name), tl = r.text ? strlen(r.text) : 0;
                /* the answer ends with the name ("large red star"), after a word or alone */
                hit = tl + 1 >= nl && (tl >= nl ? strcmp(r.text + tl - nl, name) == 0 : strcmp(r.text, name + 1) == 0);
            }
            printf("  (%d objects) %s -> %s (%s)\n", sc.n_objects, ex[0].instruction, r.text ? r.text : "",
                   hit ? "hit" : "miss");
            *hits += hit;
            (*asked)++;
            mg_vl_result_free(&r);
        }
        world_scene_free(&sc);
    }
    free(ex);
    mg_sampler_free(smp);
    mg_vl_free(vl);
    mg_model_close(m);
    return true;
}

/* n held-out answers of the demo model to `task` on `scene`, at least `least` of them right
 * (`what` names them in the failure message); skipped when the model is absent. */
static void demo_task_at_least(mg_task task, const char *scene, int n, int least, const char *what) {
    int asked = 0, hits = 0;
    if (!demo_task_hits(task, scene, n, &asked, &hits)) return;
    CHECK_EQ_INT(asked, n);
    CHECK_MSG(hits >= least, "%d of %d held-out %s", hits, asked, what);
}

#define DEMO_SEVERAL_SHAPES "bg=plain,shapes=circle+square+triangle+star+diamond+cross,sizes=medium+large"

/* One-object held-out scenes (the world of stage 11 of scripts/train_demo.sh): at least 9 of 10
 * [refer] answers with IoU > 0.5 (it scores 100% on 1,000 such scenes, docs/DEMO_MODEL.md). */
TEST(demo_model_refer) {
    demo_task_at_least(MG_TASK_REFER, WORLD_DEMO_SCENE, 10, 9, "[refer] answers with IoU > 0.5");
}

/* Two or three objects (the world of the last stages): the named one of several. At least 14 of
 * 20 (it finds 92.6% of the two-object and 80.8% of the three-object expressions of 1,000
 * held-out scenes, and 16 of these 20; the session-12 model found about a third and fails here). */
TEST(demo_model_refer_several) {
    demo_task_at_least(MG_TASK_REFER, "objects=2-3," DEMO_SEVERAL_SHAPES, 20, 14,
                       "[refer] answers on 2-3 objects with IoU > 0.5");
}

/* The other way on two or three objects: a box in, the name of the object in it out. At least
 * 13 of 20 (the model names 85.4% of the 1,669 one-to-three-object boxes of 1,000 held-out scenes;
 * the model of session 14, trained without the [identify] stage, named 49.6% and fails here). */
TEST(demo_model_identify_several) {
    demo_task_at_least(MG_TASK_IDENTIFY, "objects=2-3," DEMO_SEVERAL_SHAPES, 20, 13,
                       "[identify] answers on 2-3 objects name the object");
}

/* Captions of two objects: at least 12 of 20 name both objects, colour and shape, and nothing
 * else (the model does so for 73.4% of the two-object scenes among 1,000 held-out ones, and for
 * 15 of these 20; the session-16 model, whose last stage was half as long, for 64.7% and 11 of
 * these 20, and the session-15 model, whose last stage weighted captions less, for 42.4% and 8:
 * both fail here). */
TEST(demo_model_caption_several) {
    demo_task_at_least(MG_TASK_CAPTION, "objects=2," DEMO_SEVERAL_SHAPES, 20, 12,
                       "two-object captions name both objects");
}

/* Patch labels: a lone object's centre cell carries its colour and shape, far cells background. */
TEST(world_patch_labels_lone_object) {
    char err[256];
    int found = 0;
    for (uint64_t idx = 0; idx < 400 && found < 5; idx++) {
        world_scene sc;
        if (world_scene_generate(&sc, 3, idx, 96, false, err, sizeof err) != MG_OK) {
            CHECK_MSG(0, "%s", err);
            return;
        }
        const world_object *o = &sc.objects[0];
        if (sc.n_objects != 1 || o->size != WORLD_LARGE) {
            world_scene_free(&sc);
            continue;
        }
        found++;
        int32_t lab[144];
        CHECK(world_patch_labels(&sc, 8, lab, err, sizeof err) == MG_OK);
        const int want = 1 + o->color * WORLD_N_SHAPES + o->shape;
        const int gx = (int)(o->cx / 8), gy = (int)(o->cy / 8);
        CHECK_EQ_INT(lab[gy * 12 + gx], want);
        int n_obj = 0;
        for (int i = 0; i < 144; i++) {
            CHECK(lab[i] == 0 || lab[i] == want);
            n_obj += lab[i] == want;
            /* a cell wholly outside the tight box is background */
            const int x0 = (i % 12) * 8, y0 = (i / 12) * 8;
            if (x0 > o->x1 || x0 + 7 < o->x0 || y0 > o->y1 || y0 + 7 < o->y0) CHECK_EQ_INT(lab[i], 0);
        }
        CHECK(n_obj >= 2 && n_obj < 144);
        CHECK(world_patch_labels(&sc, 7, lab, err, sizeof err) == MG_ERR_INVALID_ARG); /* 96 % 7 != 0 */
        world_scene_free(&sc);
    }
    CHECK(found == 5);
}

/* Pixel masks by patch: 0..1, zero far from the object, the patch labels' object cells at least a
 * quarter covered, and the covered area about the object's own. */
TEST(world_patch_masks_lone_object) {
    char err[256];
    int found = 0;
    static float mk[144 * 64];
    for (uint64_t idx = 0; idx < 400 && found < 5; idx++) {
        world_scene sc;
        if (world_scene_generate(&sc, 5, idx, 96, false, err, sizeof err) != MG_OK) {
            CHECK_MSG(0, "%s", err);
            return;
        }
        const world_object *o = &sc.objects[0];
        if (sc.n_objects != 1) {
            world_scene_free(&sc);
            continue;
        }
        found++;
        int32_t lab[144];
        CHECK(world_patch_labels(&sc, 8, lab, err, sizeof err) == MG_OK);
        CHECK(world_patch_masks(&sc, 8, mk, err, sizeof err) == MG_OK);
        double area = 0;
        for (int i = 0; i < 144; i++) {
            double cell = 0;
            for (int k = 0; k < 64; k++) {
                const float v = mk[i * 64 + k];
                CHECK(v >= 0.0f && v <= 1.0f);
                cell += v;
                /* a pixel outside the tight box is not covered */
                const int x = (i % 12) * 8 + k % 8, y = (i / 12) * 8 + k / 8;
                if (x < o->x0 || x > o->x1 || y < o->y0 || y > o->y1) CHECK(v == 0.0f);
            }
            if (lab[i] > 0) CHECK(cell >= 16.0); /* labelled cells are at least a quarter covered */
            else CHECK(cell < 16.0);
            area += cell;
        }
        const double box = (double)(o->x1 + 1 - o->x0) * (double)(o->y1 + 1 - o->y0);
        CHECK_MSG(area > 0.2 * box && area <= box, "covered %.1f px of a %.0f px box", area, box);
        CHECK(world_patch_masks(&sc, 7, mk, err, sizeof err) == MG_ERR_INVALID_ARG);
        world_scene_free(&sc);
    }
    CHECK(found == 5);
}

/* Per-step auxiliary losses and the last evaluation's patch accuracy. */
typedef struct {
    float mask[256], aux[256];
    int n;
    int n_eval;
    float color, shape;
} head_rec;

static int record_heads(void *user, const tl_progress *pg) {
    head_rec *r = user;
    if (pg->event == TL_EV_STEP && r->n < 256) {
        r->mask[r->n] = pg->mask_loss;
        r->aux[r->n++] = pg->aux_loss;
    }
    if (pg->event == TL_EV_EVAL) {
        r->n_eval++;
        r->color = pg->eval_patch_color;
        r->shape = pg->eval_patch_shape;
    }
    return 0;
}


/* --aux: the head trains (its loss falls), the checkpoint keeps it, the exported model drops it,
 * and a model without the head refuses --aux with a clear message. */
TEST(trainloop_aux_head) {
    char out[4096], ck[4200], out2[4200], err[512];
    snprintf(out, sizeof out, "%s/tl_aux.gguf", test_data_dir());
    snprintf(ck, sizeof ck, "%s/tl_aux.ckpt", test_data_dir());
    snprintf(out2, sizeof out2, "%s/tl_aux2.gguf", test_data_dir());
    tl_params p = tiny_params();
    p.steps = 40;
    p.batch = 4;
    p.n_threads = 2;
    p.aux_weight = 1.0f;
    p.out_path = out;
    p.ckpt_path = ck;
    head_rec r = {0};
    mg_status st = tl_train(&p, record_heads, &r, err, sizeof err);
    CHECK_MSG(st == MG_OK, "tl_train: %s", err);
    if (st != MG_OK || r.n < 6) return;
    const float first = (r.aux[0] + r.aux[1] + r.aux[2]) / 3, last = (r.aux[r.n - 1] + r.aux[r.n - 2] + r.aux[r.n - 3]) / 3;
    printf("    aux loss %.3f -> %.3f (means of 3 steps)\n", first, last);
    CHECK(first > 0.0f && last < first * 0.85f);
    gguf_file *f = NULL;
    CHECK(gguf_open(&f, ck, err, sizeof err) == MG_OK);
    if (f) {
        CHECK(gguf_find_tensor(f, "aux.patch_cls.weight") != NULL);
        gguf_close(f);
    }
    CHECK(gguf_open(&f, out, err, sizeof err) == MG_OK);
    if (f) {
        CHECK(gguf_find_tensor(f, "aux.patch_cls.weight") == NULL);
        gguf_close(f);
    }
    /* a frozen tower (--train proj+llm): the heads change no gradient, so no labels are made
     * for the training examples and no auxiliary loss is reported (-1); the held-out evaluation
     * still reads the patches */
    tl_params fz = tiny_params();
    char ck2[4200];
    snprintf(ck2, sizeof ck2, "%s/tl_aux_frozen.ckpt", test_data_dir());
    fz.init_path = ck;
    fz.ckpt_path = ck2;
    fz.steps = 4;
    fz.batch = 2;
    fz.eval_every = 4;
    fz.eval_n = 4;
    fz.aux_weight = 1.0f;
    fz.train_mask = TR_GROUP_PROJ | TR_GROUP_LLM;
    head_rec rf = {0};
    st = tl_train(&fz, record_heads, &rf, err, sizeof err);
    CHECK_MSG(st == MG_OK, "tl_train (frozen tower): %s", err);
    CHECK_EQ_INT(rf.n, 4);
    for (int i = 0; i < rf.n; i++) CHECK(rf.aux[i] == -1.0f && rf.mask[i] == -1.0f);
    CHECK(rf.n_eval >= 1 && rf.shape >= 0.0f);
    /* --init from the exported model (no head) with --aux: refused */
    tl_params q = tiny_params();
    q.init_path = out;
    q.aux_weight = 1.0f;
    q.out_path = out2;
    CHECK(tl_train(&q, NULL, NULL, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(strstr(err, "--aux") != NULL);
}

/* Equal float tensors `name` in two files (both present, same size). */
static bool same_tensor(const char *a, const char *b, const char *name) {
    char err[256];
    gguf_file *fa = NULL, *fb = NULL;
    bool same = false;
    if (gguf_open(&fa, a, err, sizeof err) == MG_OK && gguf_open(&fb, b, err, sizeof err) == MG_OK) {
        const gguf_tensor *ta = gguf_find_tensor(fa, name), *tb = gguf_find_tensor(fb, name);
        same = ta && tb && ta->nbytes == tb->nbytes && memcmp(ta->data, tb->data, ta->nbytes) == 0;
    }
    gguf_close(fa);
    gguf_close(fb);
    return same;
}

/* Classes of the auxiliary patch head in a checkpoint (0: none or unreadable). */
static int head_classes(const char *path) {
    char err[256];
    gguf_file *f = NULL;
    int n = 0;
    if (gguf_open(&f, path, err, sizeof err) == MG_OK) {
        const gguf_tensor *t = gguf_find_tensor(f, "aux.patch_cls.weight");
        n = t ? (int)t->ne[1] : 0;
    }
    gguf_close(f);
    return n;
}

/* --aux-labels shape with --train vision-aux: the 9-class head learns (its loss falls), only
 * the tower moves (the language model of a 40-step run is the one of a 2-step run, the tower is
 * not), the evaluation reports the shape accuracy without a colour, --init keeps the head's
 * labels or starts a new head for other labels, and --resume with other labels, or vision-aux
 * without --aux, is refused. */
/* 40 steps of --train vision-aux with the given head labels on the tiny world, checkpoint ck, a
 * held-out evaluation at the end; *p gets the options used, first / last the means of the first
 * and last three auxiliary losses. False (after a failed check) when the run failed. */
static bool vision_aux_stage(tl_params *p, const char *ck, int labels, head_rec *r, float *first, float *last) {
    char err[512];
    *p = tiny_params();
    p->steps = 40;
    p->batch = 4;
    p->n_threads = 2;
    p->aux_weight = 1.0f;
    p->aux_labels = labels;
    CHECK(tr_parse_mode("vision-aux", &p->train_mask, err, sizeof err) == MG_OK);
    p->eval_every = 40;
    p->eval_n = 6;
    p->ckpt_path = ck;
    mg_status st = tl_train(p, record_heads, r, err, sizeof err);
    CHECK_MSG(st == MG_OK, "tl_train: %s", err);
    if (st != MG_OK || r->n < 6) return false;
    *first = (r->aux[0] + r->aux[1] + r->aux[2]) / 3;
    *last = (r->aux[r->n - 1] + r->aux[r->n - 2] + r->aux[r->n - 3]) / 3;
    return true;
}

TEST(trainloop_shape_labels_vision_aux) {
    char ck[4096], ck2[4200], ck3[4200], err[512];
    snprintf(ck, sizeof ck, "%s/tl_vaux.ckpt", test_data_dir());
    snprintf(ck2, sizeof ck2, "%s/tl_vaux2.ckpt", test_data_dir());
    snprintf(ck3, sizeof ck3, "%s/tl_vaux3.ckpt", test_data_dir());
    tl_params p;
    head_rec r = {0};
    float first, last;
    if (!vision_aux_stage(&p, ck, TL_AUX_SHAPE, &r, &first, &last)) return;
    printf("    shape-label aux loss %.3f -> %.3f (means of 3 steps); eval patch colour %.2f shape %.2f\n", first,
           last, r.color, r.shape);
    CHECK(first > 0.0f && last < first * 0.85f);
    CHECK_EQ_INT(r.n_eval, 1);
    CHECK(r.color == -1.0f);
    CHECK(r.shape >= 0.0f && r.shape <= 1.0f);
    gguf_file *f = NULL;
    CHECK(gguf_open(&f, ck, err, sizeof err) == MG_OK);
    if (f) {
        const gguf_tensor *t = gguf_find_tensor(f, "aux.patch_cls.weight");
        CHECK(t != NULL);
        if (t) CHECK_EQ_INT((int)t->ne[1], WORLD_PATCH_SHAPE_CLASSES);
        gguf_close(f);
    }
    tl_params q = p;
    q.steps = 2;
    q.eval_every = 0;
    q.ckpt_path = ck2;
    CHECK(tl_train(&q, NULL, NULL, err, sizeof err) == MG_OK);
    CHECK(same_tensor(ck, ck2, "output.weight"));
    CHECK(same_tensor(ck, ck2, "token_embd.weight"));
    CHECK(same_tensor(ck, ck2, "mm.proj.weight"));
    CHECK(!same_tensor(ck, ck2, "v.patch_embd.weight"));
    /* the next stage from it: the head's labels are kept without --aux-labels; --init with the
     * other labels starts a new 89-class head at zero (the tower is read, not reset); --resume
     * with the other labels is refused */
    tl_params n = tiny_params();
    n.init_path = ck;
    n.aux_weight = 1.0f;
    n.steps = 2;
    n.ckpt_path = ck3;
    CHECK(tl_train(&n, NULL, NULL, err, sizeof err) == MG_OK);
    CHECK_EQ_INT(head_classes(ck3), WORLD_PATCH_SHAPE_CLASSES);
    n.aux_labels = TL_AUX_JOINT;
    n.steps = 1;
    n.opt.lr = 1e-30f; /* a step that changes nothing measurable: the head must be the new one */
    n.opt.lr_min = 1e-30f;
    head_rec r2 = {0};
    CHECK(tl_train(&n, record_heads, &r2, err, sizeof err) == MG_OK);
    CHECK_EQ_INT(head_classes(ck3), WORLD_PATCH_CLASSES);
    CHECK_MSG(r2.n == 1 && fabsf(r2.aux[0] - logf((float)WORLD_PATCH_CLASSES)) < 1e-3f,
              "first loss of a zero head %.5f, log 89 = %.5f", r2.n ? r2.aux[0] : -1.0f,
              logf((float)WORLD_PATCH_CLASSES));
    CHECK(same_tensor(ck, ck3, "v.patch_embd.weight"));
    tl_params rs = tiny_params();
    rs.resume_path = ck;
    rs.aux_weight = 1.0f;
    rs.aux_labels = TL_AUX_JOINT;
    rs.ckpt_path = ck3;
    CHECK(tl_train(&rs, NULL, NULL, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(strstr(err, "--aux-labels joint") != NULL);
    tl_params v = tiny_params();
    v.train_mask = TR_GROUP_VISION | TR_AUX_ONLY;
    v.ckpt_path = ck3;
    CHECK(tl_train(&v, NULL, NULL, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(strstr(err, "vision-aux") != NULL);
}

/* --aux-mask and --aux-objects: the mask head trains (its loss falls), the checkpoint keeps it
 * and the options, the exported model drops it, a model without it gets one, --aux-objects
 * changes the patch loss, and the evaluation reports the head's colour and shape accuracy (or
 * -1 without a head). */
TEST(trainloop_mask_head) {
    char out[4096], ck[4200], ck2[4200], err[512];
    snprintf(out, sizeof out, "%s/tl_mask.gguf", test_data_dir());
    snprintf(ck, sizeof ck, "%s/tl_mask.ckpt", test_data_dir());
    snprintf(ck2, sizeof ck2, "%s/tl_mask2.ckpt", test_data_dir());
    tl_params p = tiny_params();
    p.steps = 40;
    p.batch = 4;
    p.n_threads = 2;
    p.aux_weight = 1.0f;
    p.mask_weight = 1.0f;
    p.aux_objects = true;
    p.eval_every = 40;
    p.eval_n = 6;
    p.out_path = out;
    p.ckpt_path = ck;
    head_rec r = {0};
    mg_status st = tl_train(&p, record_heads, &r, err, sizeof err);
    CHECK_MSG(st == MG_OK, "tl_train: %s", err);
    if (st != MG_OK || r.n < 6) return;
    const float first = (r.mask[0] + r.mask[1] + r.mask[2]) / 3,
                last = (r.mask[r.n - 1] + r.mask[r.n - 2] + r.mask[r.n - 3]) / 3;
    printf("    mask loss %.3f -> %.3f (means of 3 steps); eval patch colour %.2f shape %.2f\n", first, last,
           r.color, r.shape);
    CHECK(first > 0.0f && last < first * 0.85f);
    CHECK_EQ_INT(r.n_eval, 1);
    CHECK(r.color >= 0.0f && r.color <= 1.0f && r.shape >= 0.0f && r.shape <= 1.0f);
    gguf_file *f = NULL;
    CHECK(gguf_open(&f, ck, err, sizeof err) == MG_OK);
    if (f) {
        CHECK(gguf_find_tensor(f, "aux.patch_mask.weight") != NULL);
        bool objs = false;
        float w = 0;
        CHECK(gguf_get_bool(f, "trainloop.aux_objects", &objs, err, sizeof err) == MG_OK && objs);
        CHECK(gguf_get_f32(f, "trainloop.mask_weight", &w, err, sizeof err) == MG_OK && w == 1.0f);
        gguf_close(f);
    }
    CHECK(gguf_open(&f, out, err, sizeof err) == MG_OK);
    if (f) {
        CHECK(gguf_find_tensor(f, "aux.patch_mask.weight") == NULL);
        gguf_close(f);
    }
    /* the same first step without --aux-objects: the patch loss also counts background cells */
    tl_params a = p;
    a.aux_objects = false;
    a.steps = 1;
    a.out_path = NULL;
    a.ckpt_path = NULL;
    a.eval_every = 0;
    head_rec ra = {0};
    CHECK(tl_train(&a, record_heads, &ra, err, sizeof err) == MG_OK);
    CHECK(ra.n == 1 && ra.aux[0] != r.aux[0] && ra.mask[0] == r.mask[0]);
    /* --init from the exported model (no heads) with a mask weight: the mask head is added */
    tl_params q = tiny_params();
    q.init_path = out;
    q.mask_weight = 1.0f;
    q.steps = 2;
    q.ckpt_path = ck2;
    q.eval_every = 2;
    q.eval_n = 2;
    head_rec rq = {0};
    st = tl_train(&q, record_heads, &rq, err, sizeof err);
    CHECK_MSG(st == MG_OK, "tl_train --init: %s", err);
    CHECK(rq.n == 2 && rq.mask[0] > 0.0f);
    CHECK(rq.n_eval == 1 && rq.shape == -1.0f); /* no patch head: no patch accuracy */
    CHECK(gguf_open(&f, ck2, err, sizeof err) == MG_OK);
    if (f) {
        CHECK(gguf_find_tensor(f, "aux.patch_mask.weight") != NULL);
        CHECK(gguf_find_tensor(f, "aux.patch_cls.weight") == NULL);
        gguf_close(f);
    }
}

/* The batch is built on the pool's threads: slot b is example step * batch + b whatever the
 * thread count, so the first step's losses (made before any update, each example on one thread)
 * are the same bits with one, two or three threads, and an odd batch splits unevenly. */
TEST(trainloop_batch_threads_same_examples) {
    char err[512];
    float first[3] = {0};
    for (int k = 0; k < 3; k++) {
        tl_params p = tiny_params();
        p.steps = 1;
        p.batch = 5;
        p.n_threads = k + 1;
        for (int t = 0; t < TL_N_TASKS; t++) p.task_weight[t] = 1.0f; /* every task: examples differ in length */
        recorder r = {0};
        mg_status st = tl_train(&p, record, &r, err, sizeof err);
        CHECK_MSG(st == MG_OK, "tl_train (%d threads): %s", k + 1, err);
        CHECK_EQ_INT(r.n, 1);
        first[k] = r.loss[0];
    }
    printf("  first-step loss %.6f / %.6f / %.6f (1 / 2 / 3 threads)\n", first[0], first[1], first[2]);
    CHECK(first[0] > 0);
    CHECK(memcmp(&first[0], &first[1], sizeof(float)) == 0);
    CHECK(memcmp(&first[0], &first[2], sizeof(float)) == 0);
}

/* --per-image: examples 2s and 2s+1 share scene s, so a frozen tower runs half as often (and a
 * learning one as often as before); the examples are the same whatever the thread count, the
 * option is kept in the checkpoint and a resumed run reproduces the uninterrupted one. */
typedef struct {
    recorder r;
    int runs[64];
} runs_rec;

static int record_runs(void *user, const tl_progress *pg) {
    runs_rec *q = user;
    if (pg->event == TL_EV_STEP && q->r.n < 64) q->runs[q->r.n] = pg->tower_runs;
    return record(&q->r, pg);
}

TEST(trainloop_per_image) {
    char err[512], a[4096], b[4096];
    snprintf(a, sizeof a, "%s/tl_per_image_a.ckpt", test_data_dir());
    snprintf(b, sizeof b, "%s/tl_per_image_b.ckpt", test_data_dir());
    float first[4] = {0};
    for (int k = 0; k < 4; k++) { /* 1 / 2 threads, 3 threads, learning tower, one example per scene */
        tl_params p = tiny_params();
        p.steps = 4;
        p.batch = 6;
        p.n_threads = k == 0 ? 1 : k == 1 ? 3 : 2;
        p.per_image = k == 3 ? 1 : 2;
        p.train_mask = k == 2 ? TR_GROUP_VISION | TR_GROUP_PROJ | TR_GROUP_LLM : TR_GROUP_PROJ | TR_GROUP_LLM;
        for (int t = 0; t < TL_N_TASKS; t++) p.task_weight[t] = 1.0f;
        p.ckpt_path = k == 0 ? a : NULL;
        runs_rec q = {0};
        mg_status st = tl_train(&p, record_runs, &q, err, sizeof err);
        CHECK_MSG(st == MG_OK, "tl_train %d: %s", k, err);
        CHECK_EQ_INT(q.r.n, 4);
        first[k] = q.r.loss[0];
        printf("  run %d: first loss %.6f, tower runs of step 1: %d\n", k, first[k], q.runs[0]);
        if (k <= 1) CHECK_EQ_INT(q.runs[0], 3); /* 3 threads: parts of 2 examples each */
        if (k >= 2) CHECK_EQ_INT(q.runs[0], 6);
    }
    CHECK(memcmp(&first[0], &first[1], sizeof(float)) == 0);
    CHECK(first[0] != first[3]); /* other examples without the option */
    gguf_file *f = NULL;
    CHECK_MSG(gguf_open(&f, a, err, sizeof err) == MG_OK, "%s", err);
    if (f) {
        uint32_t u = 0;
        CHECK(gguf_get_u32(f, "trainloop.per_image", &u, err, sizeof err) == MG_OK && u == 2);
        gguf_close(f);
    }
    /* stop after 2 steps, resume (the stored option wins): the same bits as the full run */
    tl_params p = tiny_params();
    p.steps = 4;
    p.batch = 6;
    p.per_image = 2;
    p.train_mask = TR_GROUP_PROJ | TR_GROUP_LLM;
    for (int t = 0; t < TL_N_TASKS; t++) p.task_weight[t] = 1.0f;
    recorder resumed = {0};
    CHECK(stop_and_resume_same(p, b, 2, a, &resumed));
    CHECK_EQ_INT(resumed.n, 2);
    /* a folder of pairs has no scenes to share; out-of-range values are refused */
    tl_params bad = tiny_params();
    bad.per_image = TL_MAX_PER_IMAGE + 1;
    CHECK(tl_train(&bad, NULL, NULL, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(strstr(err, "per-image") != NULL);
    bad.per_image = 2;
    bad.data_dir = test_data_dir();
    CHECK(tl_train(&bad, NULL, NULL, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK(strstr(err, "--per-image") != NULL);
}

/* --aux-labels shape+colour: a new model gets the 21-class split head, the tower-only stage lowers
 * its loss, the held-out evaluation reports both patch colour and shape, and the first loss of a
 * new split head started at zero is log 9 + log 12 (--init from a joint-head checkpoint). */
TEST(trainloop_split_labels) {
    char ck[4096], ck2[4200], err[512];
    snprintf(ck, sizeof ck, "%s/tl_split.ckpt", test_data_dir());
    snprintf(ck2, sizeof ck2, "%s/tl_split2.ckpt", test_data_dir());
    tl_params p;
    head_rec r = {0};
    float first, last;
    if (!vision_aux_stage(&p, ck, TL_AUX_SPLIT, &r, &first, &last)) return;
    printf("    split-head aux loss %.3f -> %.3f; eval patch colour %.2f shape %.2f\n", first, last, r.color, r.shape);
    CHECK(first > 0.0f && last < first * 0.85f);
    CHECK(fabsf(r.aux[0] - logf(9.0f * 12.0f)) < 0.3f); /* a fresh head: near log 9 + log 12 */
    CHECK_EQ_INT(r.n_eval, 1);
    CHECK(r.color >= 0.0f && r.color <= 1.0f);
    CHECK(r.shape >= 0.0f && r.shape <= 1.0f);
    CHECK_EQ_INT(head_classes(ck), TR_AUX_SPLIT_CLASSES);
    /* a joint-head checkpoint, then --init with shape+colour: a new head at zero */
    tl_params j = tiny_params();
    j.aux_weight = 1.0f;
    j.steps = 2;
    j.ckpt_path = ck2;
    CHECK(tl_train(&j, NULL, NULL, err, sizeof err) == MG_OK);
    CHECK_EQ_INT(head_classes(ck2), WORLD_PATCH_CLASSES);
    tl_params n = tiny_params();
    n.init_path = ck2;
    n.aux_weight = 1.0f;
    n.aux_labels = TL_AUX_SPLIT;
    n.steps = 1;
    n.opt.lr = 1e-30f;
    n.opt.lr_min = 1e-30f;
    n.ckpt_path = ck;
    head_rec r2 = {0};
    CHECK(tl_train(&n, record_heads, &r2, err, sizeof err) == MG_OK);
    CHECK_EQ_INT(head_classes(ck), TR_AUX_SPLIT_CLASSES);
    CHECK_MSG(r2.n == 1 && fabsf(r2.aux[0] - logf(9.0f * 12.0f)) < 1e-3f, "first loss of a zero split head %.5f",
              r2.n ? r2.aux[0] : -1.0f);
    unlink(ck);
    unlink(ck2);
}

/* Largest |a - b| over float tensor `name` of two files (+inf when either lacks it or sizes differ). */
static double tensor_diff(const char *a, const char *b, const char *name) {
    char err[256];
    gguf_file *fa = NULL, *fb = NULL;
    double worst = INFINITY;
    if (gguf_open(&fa, a, err, sizeof err) == MG_OK && gguf_open(&fb, b, err, sizeof err) == MG_OK) {
        const gguf_tensor *ta = gguf_find_tensor(fa, name), *tb = gguf_find_tensor(fb, name);
        if (ta && tb && ta->nbytes == tb->nbytes && ta->type == MG_TYPE_F32) {
            worst = 0;
            const float *x = ta->data, *y = tb->data;
            for (uint64_t i = 0; i < ta->nbytes / 4; i++) worst = fmax(worst, fabs((double)x[i] - y[i]));
        }
    }
    gguf_close(fa);
    gguf_close(fb);
    return worst;
}

/* Tensors whose name starts with prefix in a file (-1: unreadable). */
static int count_prefix(const char *path, const char *prefix) {
    char err[256];
    gguf_file *f = NULL;
    if (gguf_open(&f, path, err, sizeof err) != MG_OK) return -1;
    int n = 0;
    for (int64_t i = 0; i < gguf_n_tensors(f); i++)
        n += strncmp(gguf_tensor_at(f, i)->name.ptr, prefix, strlen(prefix)) == 0;
    gguf_close(f);
    return n;
}

/* --train lora through the loop: --init from a model without adapters gives fresh ones (rank 8,
 * alpha 16 by default) while every base tensor stays as it was; -o merges them (only attn_q and
 * attn_v differ from the base; no lora.* tensors); stop + --resume = one run; --init from the
 * checkpoint keeps its adapters (another --lora-rank is refused); a non-LoRA mode merges them
 * first (its attn_q is the export's); LoRA options with another mode, or a rank past the matrices,
 * are refused with their reason, also through the CLI. */
TEST(trainloop_lora) {
    char base[4096], bck[4200], lck[4096], lout[4096], part[4096], k2[4096], pck[4096], err[512];
    snprintf(base, sizeof base, "%s/tl_lbase.gguf", test_data_dir());
    snprintf(bck, sizeof bck, "%s.ckpt", base);
    snprintf(lck, sizeof lck, "%s/tl_lora.ckpt", test_data_dir());
    snprintf(lout, sizeof lout, "%s/tl_lora.gguf", test_data_dir());
    snprintf(part, sizeof part, "%s/tl_lora_part.ckpt", test_data_dir());
    snprintf(k2, sizeof k2, "%s/tl_lora_keep.ckpt", test_data_dir());
    snprintf(pck, sizeof pck, "%s/tl_lora_proj.ckpt", test_data_dir());
    CHECK_MSG(train_tiny_base(base, err, sizeof err), "%s", err);
    /* a LoRA stage on it */
    tl_params p = tiny_params();
    p.steps = 4;
    p.init_path = base;
    p.ckpt_path = lck;
    p.out_path = lout;
    CHECK(tr_parse_mode("lora", &p.train_mask, err, sizeof err) == MG_OK);
    recorder r1 = {0};
    CHECK_MSG(tl_train(&p, record, &r1, err, sizeof err) == MG_OK, "%s", err);
    tr_model *b = NULL, *l = NULL;
    CHECK(tr_load(&b, base, 1, err, sizeof err) == MG_OK);
    CHECK(tr_load(&l, lck, 1, err, sizeof err) == MG_OK);
    if (!b || !l) {
        tr_model_free(b);
        tr_model_free(l);
        return;
    }
    CHECK_EQ_INT(l->cfg.lora_rank, TR_LORA_DEFAULT_RANK);
    CHECK(l->cfg.lora_alpha == TR_LORA_DEFAULT_ALPHA);
    CHECK_EQ_INT(l->train_mask, TR_GROUP_LORA);
    CHECK_EQ_INT(l->n_tensors, b->n_tensors + 4 * l->cfg.n_layer);
    int same_base = 0;
    for (int i = 0; i < b->n_tensors; i++) {
        const tr_tensor *t = &b->tensors[i];
        const int j = tr_find_tensor(l, t->name);
        same_base += j >= 0 && !memcmp(b->params + t->off, l->params + l->tensors[j].off, (size_t)t->n * sizeof(float));
    }
    CHECK_EQ_INT(same_base, b->n_tensors);
    const int ib = tr_find_tensor(l, "lora.blk.0.attn_v.b");
    int64_t nz = 0;
    for (int64_t j = 0; ib >= 0 && j < l->tensors[ib].n; j++) nz += l->params[l->tensors[ib].off + j] != 0.0f;
    CHECK(nz > 0);
    tr_model_free(b);
    tr_model_free(l);
    /* the export: merged, plain */
    CHECK_EQ_INT(count_prefix(lck, "lora."), 4);
    CHECK_EQ_INT(count_prefix(lout, "lora."), 0);
    CHECK_EQ_INT(count_prefix(lout, "opt."), 0);
    CHECK(!same_tensor(base, lout, "blk.0.attn_q.weight") && !same_tensor(base, lout, "blk.0.attn_v.weight"));
    CHECK(same_tensor(base, lout, "blk.0.attn_k.weight") && same_tensor(base, lout, "mm.proj.weight"));
    mg_model *em = NULL;
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = 1;
    CHECK_MSG(mg_model_open(&em, lout, &mp, err, sizeof err) == MG_OK, "%s", err);
    mg_model_close(em);
    /* stop at step 2, resume: the same bits as the uninterrupted stage */
    recorder r3 = {0};
    CHECK(stop_and_resume_same(p, part, 2, lck, &r3));
    CHECK(r3.n == 2 && r1.loss[2] == r3.loss[0] && r1.loss[3] == r3.loss[1]);
    /* --init from the checkpoint keeps its adapters (a rate of 1e-30 leaves them as they are) */
    tl_params q = tiny_params();
    q.seed = 77; /* fresh adapters would come from another seed */
    q.steps = 1;
    q.opt.lr = q.opt.lr_min = 1e-30f;
    q.init_path = lck;
    q.ckpt_path = k2;
    CHECK(tr_parse_mode("proj+lora", &q.train_mask, err, sizeof err) == MG_OK);
    CHECK_MSG(tl_train(&q, NULL, NULL, err, sizeof err) == MG_OK, "%s", err);
    CHECK(tensor_diff(lck, k2, "lora.blk.0.attn_q.a") == 0.0);
    CHECK(tensor_diff(lck, k2, "lora.blk.0.attn_q.b") < 1e-20);
    q.lora_rank = 4;
    CHECK(tl_train(&q, NULL, NULL, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK_MSG(strstr(err, "--lora-rank 4") && strstr(err, "rank 8"), "%s", err);
    /* another mode merges them: attn_q is the export's, no adapters remain */
    q = tiny_params();
    q.steps = 1;
    q.train_mask = TR_GROUP_PROJ;
    q.init_path = lck;
    q.ckpt_path = pck;
    CHECK_MSG(tl_train(&q, NULL, NULL, err, sizeof err) == MG_OK, "%s", err);
    CHECK_EQ_INT(count_prefix(pck, "lora."), 0);
    CHECK(same_tensor(pck, lout, "blk.0.attn_q.weight") && same_tensor(pck, lout, "blk.0.attn_v.weight"));
    /* refused */
    q = tiny_params();
    q.lora_rank = 4; /* with a non-LoRA mode */
    CHECK(tl_train(&q, NULL, NULL, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK_MSG(strstr(err, "--lora-rank") && strstr(err, "--train lora"), "%s", err);
    q = tiny_params();
    q.lora_alpha = 4.0f;
    CHECK(tl_train(&q, NULL, NULL, err, sizeof err) == MG_ERR_INVALID_ARG);
    q = tiny_params();
    q.train_mask = TR_GROUP_LORA;
    q.lora_rank = 49; /* past the tiny model's 48 */
    CHECK(tl_train(&q, NULL, NULL, err, sizeof err) == MG_ERR_INVALID_ARG);
    CHECK_MSG(strstr(err, "LoRA rank 49 not in [1, 48]") != NULL, "%s", err);
    const char *bin = getenv("MG_BIN") ? getenv("MG_BIN") : "build/minigpt";
    CHECK(test_run("%s train --help | grep -q -- 'proj+lora'", bin) == 0);
    CHECK(test_run("%s train --help | grep -q -- '--lora-rank R'", bin) == 0);
    CHECK(test_run("%s train --help | grep -q -- '--lora-alpha A'", bin) == 0);
    CHECK(test_run("%s train -o %s.x --train lora --lora-rank 0 2>&1 | grep -q 'lora-rank 0'", bin, lout) == 0);
    CHECK(test_run("%s train -o %s.x --train lora --lora-alpha -1 2>&1 | grep -q 'bad value for --lora-alpha'", bin,
                   lout) == 0);
    CHECK(test_run("%s train -o %s.x --train lora2 2>&1 | grep -q \"unknown training mode 'lora2'\"", bin, lout) == 0);
    CHECK(test_run("%s train -q -o %s.x --train llm --lora-rank 4 --steps 1 2>&1 | grep -q 'need --train lora'", bin,
                   lout) == 0);
    CHECK(access(lout, F_OK) == 0);
    unlink(bck);
    unlink(part);
    unlink(k2);
    unlink(pck);
}
