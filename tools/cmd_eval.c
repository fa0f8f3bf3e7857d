/*
 * cmd_eval.c - `minigpt eval`: scores model answers against ground truth in the official
 * formats (src/evalscore.h). Answers come from a JSONL file ({"id", "answer"} per line), or are
 * generated greedily by a MiniGPT model over the ground truth's images and instructions (-m).
 */
#include "cli.h"

#include "evalscore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: minigpt eval --task TASK --gt FILE (--answers FILE | -m MODEL) [--json] [-q]\n\n"
            "Scores answers (JSONL: {\"id\": ..., \"answer\": \"...\"} per line) against ground truth.\n"
            "TASK and FILE (as written by `minigpt synth --eval`):\n"
            "  refer      refcoco_synth.json (RefCOCO list): box regex, IoU (+1 px) > 0.5 -> hit\n"
            "  vqa        vqa_annotations.json (VQA v2): official VQA accuracy, exact match\n"
            "  detection  detection_gt.json: box precision/recall/F1 at IoU > 0.5, greedy matching\n"
            "  grounding  grounding_gt.json: as detection, a box also needs its phrase's colour+shape\n"
            "  identify   identify_gt.json: F1 of the colour+shape objects mentioned\n"
            "  caption    caption_gt.json: F1 of the colour+shape objects mentioned\n"
            "options:\n"
            "  --json     print the summary as one line of JSON\n"
            "  -m MODEL   generate the answers with a MiniGPT model: each item's image (relative\n"
            "             to the ground truth's folder) and instruction, MiniGPT-v2 template,\n"
            "             greedy decoding (argmax, no repetition penalty)\n"
            "  -n N       with -m: max new tokens (default 20 for refer/vqa/identify, else 200)\n"
            "  -t N       with -m: threads\n"
            "  --save F   with -m: also write the answers as JSONL to F\n"
            "  -q         no progress bar\n");
}

static int bar_cb(void *user, int done, int total) {
    (void)user;
    if (done % 64 != 0 && done != total) return 0;
    int w = 30, f = total ? (int)((long long)done * w / total) : w;
    fprintf(stderr, "\r[%.*s%*s] %d/%d", f, "##############################", w - f, "", done, total);
    if (done == total) fputc('\n', stderr);
    return 0;
}

/* Prints a summary as text or one line of JSON. */
static void print_summary(const eval_summary *summary, mg_task task, bool json) {
    const eval_summary sum = *summary;
    if (json) {
        char *s = eval_summary_json(&sum);
        if (!s) { cli_error("eval", "out of memory"); return; }
        printf("%s\n", s);
        free(s);
        return;
    }
    printf("task        %s\n", mg_task_tag(task));
    printf("items       %d (answered %d, missing %d, not in answer format %d)\n", sum.n_items,
           sum.n_answered, sum.n_missing, sum.n_invalid);
    switch ((int)task) {
    case MG_TASK_REFER: printf("accuracy    %.2f%% (IoU > 0.5)\n", sum.score); break;
    case MG_TASK_VQA:
        printf("accuracy    %.2f%% (VQA)\nexact match %.2f%%\n", sum.score, sum.exact_match);
        break;
    default:
        if (task == MG_TASK_IDENTIFY || task == MG_TASK_CAPTION)
            printf("mean F1     %.2f%%\nexact match %.2f%%\n", sum.score, sum.exact_match);
        printf("precision   %.2f%%\nrecall      %.2f%%\nF1          %.2f%% (tp %ld, fp %ld, fn %ld)\n",
               sum.precision, sum.recall, sum.f1, sum.tp, sum.fp, sum.fn);
        break;
    }
}
/* Writes s as a JSON string. */
static void put_json(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

/* -m MODEL: answers every item greedily with the MiniGPT pipeline, then scores them. */
static int eval_with_model(eval_set *set, mg_task task, const char *gt, const char *model_path, long long n_predict,
                           long long threads, const char *save, bool json, bool quiet) {
    char err[512], dir[4096];
    snprintf(dir, sizeof dir, "%s", gt);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = (int)threads;
    mg_model *m = NULL;
    mg_vl *vl = NULL;
    mg_sampler *smp = NULL;
    int n = eval_set_size(set), rc = 1;
    char **answers = calloc((size_t)n + 1, sizeof *answers);
    FILE *sf = NULL;
    if (!answers) {
        eval_set_free(set);
        return cli_error("eval", "out of memory");
    }
    if (mg_model_open(&m, model_path, &mp, err, sizeof err) != MG_OK) {
        cli_error("eval", "%s", err);
        goto done;
    }
    if (!mg_model_has_vision(m)) {
        cli_error("eval", "%s has no vision tower", model_path);
        goto done;
    }
    mg_sampler_params sp = mg_sampler_default_params();
    mg_generate_params gp = mg_generate_default_params();
    mg_model_generation_defaults(m, &sp, &gp);
    sp.temperature = 0;
    sp.repeat_penalty = 1;
    gp.n_predict = n_predict > 0 ? (int)n_predict
                   : (task == MG_TASK_REFER || task == MG_TASK_VQA || task == MG_TASK_IDENTIFY) ? 20 : 200;
    mg_session_params ssp = mg_session_default_params();
    if (mg_sampler_create(&smp, &sp, mg_model_n_vocab(m)) != MG_OK) {
        cli_error("eval", "out of memory");
        goto done;
    }
    if (mg_vl_create(&vl, m, &ssp, err, sizeof err) != MG_OK) {
        cli_error("eval", "%s", err);
        goto done;
    }
    if (save && !(sf = fopen(save, "w"))) {
        cli_error("eval", "cannot write %s", save);
        goto done;
    }
    bool bar = !quiet && !json && isatty(2);
    for (int i = 0; i < n; i++) {
        char path[8192];
        const char *im = eval_set_image(set, i);
        if (im[0] == '/') snprintf(path, sizeof path, "%s", im);
        else snprintf(path, sizeof path, "%s/%s", dir, im);
        mg_image img;
        if (mg_image_load_file(&img, path, 0, err, sizeof err) != MG_OK) {
            cli_error("eval", "item %s: %s", eval_set_id(set, i), err);
            goto done;
        }
        mg_vl_reset(vl);
        mg_sampler_reset(smp);
        mg_vl_result r;
        memset(&r, 0, sizeof r);
        mg_status st = mg_vl_ask(vl, &img, eval_set_instruction(set, i), smp, &gp, &r);
        mg_image_free(&img);
        if (st != MG_OK && st != MG_ERR_CTX_FULL) {
            cli_error("eval", "item %s: %s", eval_set_id(set, i), mg_vl_errmsg(vl));
            mg_vl_result_free(&r);
            goto done;
        }
        answers[i] = strdup(r.text ? r.text : "");
        mg_vl_result_free(&r);
        if (!answers[i]) {
            cli_error("eval", "out of memory");
            goto done;
        }
        if (sf) {
            fputs("{\"id\": ", sf);
            put_json(sf, eval_set_id(set, i));
            fputs(", \"answer\": ", sf);
            put_json(sf, answers[i]);
            fputs("}\n", sf);
        }
        if (bar) bar_cb(NULL, i + 1, n);
    }
    eval_summary sum;
    if (eval_score(set, (const char *const *)answers, &sum, NULL, NULL, err, sizeof err) != MG_OK) {
        cli_error("eval", "%s", err);
        goto done;
    }
    print_summary(&sum, task, json);
    rc = 0;
done:
    if (sf) fclose(sf);
    for (int i = 0; i < n; i++) free(answers[i]);
    free(answers);
    mg_vl_free(vl);
    mg_sampler_free(smp);
    mg_model_close(m);
    eval_set_free(set);
    return rc;
}

/* `minigpt eval`; see usage(). */
int cmd_eval(int argc, char **argv) {
    const char *task_s = NULL, *gt = NULL, *answers = NULL, *model = NULL, *save = NULL;
    bool json = false, quiet = false;
    long long n_predict = 0, threads = cli_default_threads();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (cli_is_help(a)) { usage(stdout); return 0; }
        if (!strcmp(a, "--task") && has) task_s = argv[++i];
        else if (!strcmp(a, "--gt") && has) gt = argv[++i];
        else if (!strcmp(a, "--answers") && has) answers = argv[++i];
        else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && has) model = argv[++i];
        else if (!strcmp(a, "--save") && has) save = argv[++i];
        else if (!strcmp(a, "-n") && has) {
            if (!cli_parse_int(argv[++i], 1, 1 << 20, &n_predict)) return cli_error("eval", "bad -n '%s'", argv[i]);
        } else if (!strcmp(a, "-t") && has) {
            if (!cli_parse_int(argv[++i], 1, 256, &threads)) return cli_error("eval", "bad -t '%s'", argv[i]);
        } else if (!strcmp(a, "--json")) json = true;
        else if (!strcmp(a, "-q")) quiet = true;
        else { usage(stderr); return 2; }
    }
    if (!task_s || !gt || (!answers && !model)) { usage(stderr); return 2; }
    int task = mg_task_from_name(task_s);
    if (task <= 0) return cli_error("eval", "unknown task '%s' (see --help)", task_s);
    char err[512];
    eval_set *set;
    if (eval_set_load(&set, (mg_task)task, gt, err, sizeof err) != MG_OK) return cli_error("eval", "%s", err);
    if (model) return eval_with_model(set, (mg_task)task, gt, model, n_predict, threads, save, json, quiet);
    eval_summary sum;
    bool bar = !quiet && !json && isatty(2);
    mg_status st = eval_score_file(set, answers, &sum, bar ? bar_cb : NULL, NULL, err, sizeof err);
    eval_set_free(set);
    if (st != MG_OK) return cli_error("eval", "%s", err);
    print_summary(&sum, (mg_task)task, json);
    return 0;
}
