/*
 * cmd_eval.c - `minigpt eval`: scores model answers against ground truth in the official
 * formats (src/evalscore.h). Answers come from a JSONL file ({"id", "answer"} per line); running
 * a model over the ground truth's instructions (-m MODEL) is the place marked below, to be wired
 * when the MiniGPT pipeline lands.
 */
#include "cli.h"

#include "evalscore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: minigpt eval --task TASK --gt FILE --answers FILE [--json] [-q]\n\n"
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
            "  -m MODEL   generate the answers with a model (not available yet)\n"
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

/* `minigpt eval`; see usage(). */
int cmd_eval(int argc, char **argv) {
    const char *task_s = NULL, *gt = NULL, *answers = NULL, *model = NULL;
    bool json = false, quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (cli_is_help(a)) { usage(stdout); return 0; }
        if (!strcmp(a, "--task") && has) task_s = argv[++i];
        else if (!strcmp(a, "--gt") && has) gt = argv[++i];
        else if (!strcmp(a, "--answers") && has) answers = argv[++i];
        else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && has) model = argv[++i];
        else if (!strcmp(a, "--json")) json = true;
        else if (!strcmp(a, "-q")) quiet = true;
        else { usage(stderr); return 2; }
    }
    if (!task_s || !gt || (!answers && !model)) { usage(stderr); return 2; }
    int task = mg_task_from_name(task_s);
    if (task <= 0) return cli_error("eval", "unknown task '%s' (see --help)", task_s);
    char err[512];
    eval_set *set;
    if (eval_set_load(&set, (mg_task)task, gt, err, sizeof err) != MG_OK) return cli_error("eval", "%s", err);
    if (model) {
        /* Generation goes here: for each i < eval_set_size(set), load eval_set_image(set, i)
         * (relative to the ground truth's folder), send eval_set_instruction(set, i) with the
         * MiniGPT-v2 template greedily (max 20 new tokens, as the official eval), write
         * {"id": eval_set_id(set, i), "answer": ...} lines, then score them as below. */
        eval_set_free(set);
        return cli_error("eval", "-m needs the MiniGPT pipeline, which is not built yet: run the model "
                                 "yourself and pass --answers FILE");
    }
    eval_summary sum;
    bool bar = !quiet && !json && isatty(2);
    mg_status st = eval_score_file(set, answers, &sum, bar ? bar_cb : NULL, NULL, err, sizeof err);
    eval_set_free(set);
    if (st != MG_OK) return cli_error("eval", "%s", err);
    if (json) {
        char *s = eval_summary_json(&sum);
        if (!s) return cli_error("eval", "out of memory");
        printf("%s\n", s);
        free(s);
        return 0;
    }
    printf("task        %s\n", task_s);
    printf("items       %d (answered %d, missing %d, not in answer format %d)\n", sum.n_items,
           sum.n_answered, sum.n_missing, sum.n_invalid);
    switch (task) {
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
    return 0;
}
