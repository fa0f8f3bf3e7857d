/*
 * cmd_train.c - `minigpt train`: trains a small MiniGPT-v2 model from scratch (or continues one)
 * on the synthetic world or a user's folder (src/trainloop.h). Progress bar on a terminal; one
 * log line per --log-every steps otherwise (so `nohup ... > log` keeps a loss curve).
 */
#include "cli.h"

#include "trainloop.h"
#include "world.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: minigpt train -o MODEL.gguf [options]\n\n"
            "Trains a small MiniGPT-v2 model (EVA-style ViT, 4-token merge projection, LLaMA decoder,\n"
            "[INST] template, loss on answer tokens only) with AdamW, warm-up + cosine, clipping.\n"
            "Without --data the examples come from the synthetic world (every task, fresh scenes).\n\n"
            "data and recipe:\n"
            "  --data DIR        user folder: DIR/data.jsonl, one {\"image\", \"instruction\", \"answer\"}\n"
            "                    per line (image relative to DIR; `minigpt synth` output also works)\n"
            "  --seed N          world seed, initialisation and example order (default 1)\n"
            "  --steps N         optimizer steps (default 2000)\n"
            "  --batch N         examples per step, by gradient accumulation (default 16)\n"
            "  --lr X            peak learning rate (default 2e-3); --lr-min X (default 1e-4)\n"
            "  --warmup N        linear warm-up steps (default 100)\n"
            "  --wd X            AdamW weight decay (default 0.01); --clip X (default 1, 0: off)\n"
            "  --train MODE      proj | llm | proj+llm | all (default all; proj = MiniGPT-4's\n"
            "                    recipe; llm: the projection and the tower stay frozen)\n"
            "                    | vision-aux: only the vision tower learns, from the auxiliary\n"
            "                    losses alone (the language model is not run; needs --aux)\n"
            "                    | lora: only LoRA adapters on the language model's attention q\n"
            "                    and v learn | proj+lora: the projection and the adapters\n"
            "                    (MiniGPT-v2's recipe). A model without adapters gets fresh ones\n"
            "                    (B = 0: same outputs at step 0); -o merges them into attn_q/v.\n"
            "                    Other modes merge a checkpoint's adapters before training\n"
            "  --lora-rank R     rank of new adapters (lora modes only; default 8; 1 .. the\n"
            "                    smaller of the width and the k/v rows)\n"
            "  --lora-alpha A    new adapters' scale is alpha / rank (lora modes only; default\n"
            "                    16 for any rank: a scale of 2 at rank 8). A checkpoint's\n"
            "                    adapters keep their rank and alpha\n"
            "  --tasks W,W,...   weights of none,grounding,refer,detection,identify,vqa,caption\n"
            "                    (default 0,1,4,2,2,2,1)\n"
            "  --max-objects N   world: only scenes with at most N objects (curriculum; 0: any)\n"
            "  --easy            world: only plain backgrounds, medium and large objects (curriculum)\n"
            "  --per-image K     world: K training examples from each scene, each with its own\n"
            "                    task (default 1); with a frozen tower (proj, llm, proj+llm,\n"
            "                    lora) the tower runs once per scene: a faster step\n"
            "  --scene SPEC      world: draw only these scenes (curriculum), e.g.\n"
            "                    objects=1,bg=plain,tones=0,colors=red+green+blue,shapes=square,sizes=large\n"
            "                    (keys optional; names '+'-separated; tones 0-7; default all;\n"
            "                    vqa=count+color+shape+where+yesno: only those [vqa] questions;\n"
            "                    same=P: repeated shapes/colours with P%% chance, docs/synth.md)\n"
            "  --aux W           world: add W x an auxiliary loss that classifies every image patch\n"
            "                    (colour and shape of the object on it, or background) from the\n"
            "                    ln_vision rows; trains the vision tower directly (default 0: off).\n"
            "                    A new model gets the head; chain stages through --ckpt files\n"
            "                    (exported models drop it)\n"
            "  --aux-mask W      world: add W x an auxiliary loss that predicts, from every\n"
            "                    ln_vision patch row, which of the patch's pixels belong to\n"
            "                    an object (binary cross-entropy); a model without the mask\n"
            "                    head gets one (default 0: off)\n"
            "  --aux-objects     world: the auxiliary loss on object patches only (background\n"
            "                    patches left out, so each object patch weighs more)\n"
            "  --aux-labels L    world: what the auxiliary head classifies: joint (colour x\n"
            "                    shape, 89 classes; default), shape (9 classes) or\n"
            "                    shape+colour (two softmaxes, 9 + 12 classes). Without it\n"
            "                    --init / --resume keep the file's head; --init with other\n"
            "                    labels than the file's starts a new head at zero\n"
            "  --init MODEL      start from these weights and vocabulary (fresh optimizer)\n"
            "  --resume CKPT     continue a checkpoint; its stored options are used\n"
            "model shape (new models only; default = the demo model):\n"
            "  --image-size S --patch P --v-embd E --v-layer N --v-head H --v-ff F\n"
            "  --embd D --layer N --head H --head-kv H --ff F --ctx N\n"
            "  --pos-sincos A      start the ViT position embedding as 2D sine-cosine of amplitude A\n"
            "                      (default 0: random, std 0.02)\n"
            "output:\n"
            "  -o MODEL          final model, parameters only (runs in `minigpt run`)\n"
            "  --ckpt FILE       checkpoint with optimizer state (default MODEL.ckpt)\n"
            "  --ckpt-every N    steps between checkpoints (default 100)\n"
            "  --eval-every N    steps between held-out evaluations (default 200; 0: none)\n"
            "  --eval-n N        held-out examples per evaluation (default 64)\n"
            "  --log-every N     log line interval when stderr is not a terminal (default 10)\n"
            "  -t N              threads (default: cores, at most 8)\n"
            "  -q                quiet\n");
}

typedef struct {
    int tty, quiet, log_every;
    int drawn;
} train_ui;

static void fmt_time(double s, char *buf, size_t n) {
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

static int progress(void *user, const tl_progress *p) {
    train_ui *ui = user;
    if (ui->quiet) return 0;
    char el[32], eta[32];
    fmt_time(p->elapsed_s, el, sizeof el);
    fmt_time(p->eta_s, eta, sizeof eta);
    switch (p->event) {
    case TL_EV_START:
        fprintf(stderr, "train: %lld parameters, vocabulary %d, step %lld of %lld\n", (long long)p->n_params,
                p->n_vocab, (long long)p->step, (long long)p->total);
        break;
    case TL_EV_STEP:
        if (ui->tty) {
            int w = 24, f = p->total ? (int)(p->step * w / p->total) : w;
            fprintf(stderr, "\r[%.*s%*s] %lld/%lld loss %.4f lr %.2e %.0f tok/s %s ETA %s   ", f,
                    "########################", w - f, "", (long long)p->step, (long long)p->total, p->loss, p->lr,
                    p->tok_per_s, el, eta);
            ui->drawn = 1;
        } else if (p->step % ui->log_every == 0 || p->step == p->total) {
            fprintf(stderr, "step %lld/%lld loss %.4f", (long long)p->step, (long long)p->total, p->loss);
            if (p->aux_loss >= 0) fprintf(stderr, " aux %.4f", p->aux_loss);
            if (p->mask_loss > 0) fprintf(stderr, " mask %.4f", p->mask_loss);
            fprintf(stderr, " lr %.3e gnorm %.3f %.0f tok/s elapsed %s ETA %s\n", p->lr, p->gnorm, p->tok_per_s, el,
                    eta);
        }
        break;
    case TL_EV_EVAL:
        fprintf(stderr, "%seval step %lld: loss %.4f token acc %.1f%% exact %.1f%% image gain %.3f",
                ui->drawn ? "\n" : "", (long long)p->step, p->eval_loss, 100.0 * p->eval_tok_acc,
                100.0 * p->eval_exact, p->eval_image_gain);
        if (p->eval_patch_shape >= 0 && p->eval_patch_color >= 0)
            fprintf(stderr, " patch colour %.1f%% shape %.1f%%", 100.0 * p->eval_patch_color,
                    100.0 * p->eval_patch_shape);
        else if (p->eval_patch_shape >= 0)
            fprintf(stderr, " patch shape %.1f%%", 100.0 * p->eval_patch_shape);
        fputc('\n', stderr);
        ui->drawn = 0;
        break;
    case TL_EV_CKPT:
        if (!ui->tty) fprintf(stderr, "saved %s (step %lld)\n", p->path, (long long)p->step);
        break;
    default:
        break;
    }
    fflush(stderr);
    return 0;
}

static bool parse_weights(const char *s, float w[TL_N_TASKS]) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    char *save = NULL, *tokp = strtok_r(buf, ",", &save);
    for (int i = 0; i < TL_N_TASKS; i++) {
        double v;
        if (!tokp || !cli_parse_float(tokp, &v) || v < 0) return false;
        w[i] = (float)v;
        tokp = strtok_r(NULL, ",", &save);
    }
    return tokp == NULL;
}

/* `minigpt train`. */
int cmd_train(int argc, char **argv) {
    tl_params p = tl_default_params();
    p.n_threads = cli_default_threads();
    train_ui ui = {.tty = isatty(2), .log_every = 10};
    const char *out = NULL, *ckpt = NULL;
    static char ckpt_buf[4096];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        long long v;
        double x;
#define INTOPT(name, lo, hi, dst)                                                                           \
    if (!strcmp(a, name)) {                                                                                 \
        if (!has || !cli_parse_int(argv[++i], lo, hi, &v)) return cli_error("train", "bad value for %s", name); \
        dst = v;                                                                                            \
        continue;                                                                                           \
    }
#define FLTOPT(name, dst)                                                                                   \
    if (!strcmp(a, name)) {                                                                                 \
        if (!has || !cli_parse_float(argv[++i], &x) || x < 0) return cli_error("train", "bad value for %s", name); \
        dst = (float)x;                                                                                     \
        continue;                                                                                           \
    }
        if (cli_is_help(a)) {
            usage(stdout);
            return 0;
        }
        INTOPT("--seed", 0, INT64_MAX, p.seed)
        INTOPT("--steps", 1, 100000000, p.steps)
        INTOPT("--batch", 1, 4096, p.batch)
        INTOPT("--warmup", 0, 100000000, p.opt.warmup)
        INTOPT("--ckpt-every", 0, 100000000, p.ckpt_every)
        INTOPT("--eval-every", 0, 100000000, p.eval_every)
        INTOPT("--eval-n", 0, 100000, p.eval_n)
        INTOPT("--log-every", 1, 100000000, ui.log_every)
        INTOPT("--max-objects", 0, 6, p.max_objects)
        INTOPT("--per-image", 1, TL_MAX_PER_IMAGE, p.per_image)
        INTOPT("-t", 1, 256, p.n_threads)
        INTOPT("--image-size", 8, 4096, p.cfg.image_size)
        INTOPT("--patch", 1, 64, p.cfg.patch_size)
        INTOPT("--v-embd", 4, 4096, p.cfg.v_embd)
        INTOPT("--v-layer", 0, 64, p.cfg.v_layer)
        INTOPT("--v-head", 1, 64, p.cfg.v_head)
        INTOPT("--v-ff", 1, 16384, p.cfg.v_ff)
        INTOPT("--embd", 4, 4096, p.cfg.n_embd)
        INTOPT("--layer", 1, 64, p.cfg.n_layer)
        INTOPT("--head", 1, 64, p.cfg.n_head)
        INTOPT("--head-kv", 1, 64, p.cfg.n_head_kv)
        INTOPT("--ff", 1, 16384, p.cfg.n_ff)
        INTOPT("--ctx", 16, 8192, p.cfg.n_ctx)
        FLTOPT("--lr", p.opt.lr)
        FLTOPT("--lr-min", p.opt.lr_min)
        FLTOPT("--wd", p.opt.weight_decay)
        FLTOPT("--clip", p.opt.clip)
        FLTOPT("--aux", p.aux_weight)
        FLTOPT("--aux-mask", p.mask_weight)
        FLTOPT("--pos-sincos", p.cfg.pos_sincos)
        if (!strcmp(a, "--lora-rank")) {
            if (!has || !cli_parse_int(argv[++i], 0, 65536, &v)) return cli_error("train", "bad value for --lora-rank");
            if (v == 0)
                return cli_error("train", "--lora-rank 0: a LoRA mode needs a rank of at least 1 (default %d)",
                                 TR_LORA_DEFAULT_RANK);
            p.lora_rank = (int)v;
            continue;
        }
        if (!strcmp(a, "--lora-alpha")) {
            if (!has || !cli_parse_float(argv[++i], &x) || !(x > 0) || x > 1e6)
                return cli_error("train", "bad value for --lora-alpha (a positive number)");
            p.lora_alpha = (float)x;
            continue;
        }
#undef INTOPT
#undef FLTOPT
        if (!strcmp(a, "-o") && has) out = argv[++i];
        else if (!strcmp(a, "--ckpt") && has) ckpt = argv[++i];
        else if (!strcmp(a, "--data") && has) p.data_dir = argv[++i];
        else if (!strcmp(a, "--init") && has) p.init_path = argv[++i];
        else if (!strcmp(a, "--resume") && has) p.resume_path = argv[++i];
        else if (!strcmp(a, "--train") && has) {
            char err[256];
            if (tr_parse_mode(argv[++i], &p.train_mask, err, sizeof err) != MG_OK) return cli_error("train", "%s", err);
        } else if (!strcmp(a, "--tasks") && has) {
            if (!parse_weights(argv[++i], p.task_weight)) return cli_error("train", "--tasks needs 7 weights >= 0");
        } else if (!strcmp(a, "--scene") && has) {
            char err[256];
            world_opts wo;
            const char *spec = argv[++i];
            if (world_opts_parse(spec, &wo, err, sizeof err) != MG_OK) return cli_error("train", "%s", err);
            if (strlen(spec) >= sizeof p.scene) return cli_error("train", "--scene: spec too long");
            snprintf(p.scene, sizeof p.scene, "%s", spec);
        } else if (!strcmp(a, "--easy")) p.easy = true;
        else if (!strcmp(a, "--aux-objects")) p.aux_objects = true;
        else if (!strcmp(a, "--aux-labels") && has) {
            const char *lv = argv[++i];
            if (!strcmp(lv, "joint")) p.aux_labels = TL_AUX_JOINT;
            else if (!strcmp(lv, "shape")) p.aux_labels = TL_AUX_SHAPE;
            else if (!strcmp(lv, "shape+colour")) p.aux_labels = TL_AUX_SPLIT;
            else return cli_error("train", "--aux-labels: '%s' is not joint, shape or shape+colour", lv);
        }
        else if (!strcmp(a, "-q")) ui.quiet = 1;
        else {
            usage(stderr);
            return 2;
        }
    }
    if (!out && !ckpt) {
        usage(stderr);
        return 2;
    }
    if (!ckpt) {
        snprintf(ckpt_buf, sizeof ckpt_buf, "%s.ckpt", out);
        ckpt = ckpt_buf;
    }
    p.out_path = out;
    p.ckpt_path = ckpt;
    char err[512];
    mg_status st = tl_train(&p, progress, &ui, err, sizeof err);
    if (ui.drawn) fputc('\n', stderr);
    if (st != MG_OK) return cli_error("train", "%s", err);
    return 0;
}
