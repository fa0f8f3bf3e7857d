/*
 * evalscore.h - scoring of MiniGPT-v2 answers against ground truth in the official formats:
 * RefCOCO [refer] (eval_ref.py: box regex, pixels, IoU with the +1 convention, hit if > 0.5),
 * VQA (vqaEval.py's accuracy and answer normalisation), detection and grounding (precision,
 * recall, F1 of boxes at IoU > 0.5 with greedy matching), identify and caption (F1 of the
 * colour+shape objects mentioned). Ground-truth and answer files are untrusted JSON: every type
 * is checked, errors come back as a status and one line. See docs/synth.md.
 */
#ifndef MG_EVALSCORE_H
#define MG_EVALSCORE_H

#include "internal.h"

typedef struct eval_set eval_set;

typedef struct {
    mg_task task;
    int n_items;      /* questions / sentences in the ground truth */
    int n_answered;   /* of those, with an answer in the answers file */
    int n_missing;    /* without an answer (scored as wrong) */
    int n_invalid;    /* answered, but not in the answer format (refer: no box; others: no box /
                         no object mentioned where one was expected) */
    double score;     /* headline, in percent: refer accuracy, VQA accuracy, detection/grounding
                         F1, identify/caption mean per-item F1 */
    double exact_match;            /* percent of answers equal to the reference (normalised) */
    double precision, recall, f1;  /* percent; micro-averaged over boxes or mentions */
    long tp, fp, fn;
} eval_summary;

/* Called after each scored item; return non-zero to stop (MG_ERR_CANCELLED). */
typedef int (*eval_progress_cb)(void *user, int done, int total);

/* Loads the ground truth of a task (MG_TASK_REFER, VQA, DETECTION, GROUNDING, IDENTIFY,
 * CAPTION) from a file written by `minigpt synth --eval` or in the official format (RefCOCO
 * list, VQA annotations). On success *out owns it (eval_set_free). */
mg_status eval_set_load(eval_set **out, mg_task task, const char *gt_path, char *err, size_t err_len);
void eval_set_free(eval_set *s);
int eval_set_size(const eval_set *s);
/* The id (as text), the instruction to send and the image path of item i (owned by the set;
 * instruction and image may be "" when the file has none). */
const char *eval_set_id(const eval_set *s, int i);
const char *eval_set_instruction(const eval_set *s, int i);
const char *eval_set_image(const eval_set *s, int i);

/* Scores answers[i] (NULL: missing) for every item i. */
mg_status eval_score(const eval_set *s, const char *const *answers, eval_summary *sum,
                     eval_progress_cb cb, void *user, char *err, size_t err_len);

/* Reads a JSONL answers file (one {"id": int or string, "answer": string} per line, blank lines
 * ignored) and scores it. Unknown or repeated ids are errors. */
mg_status eval_score_file(const eval_set *s, const char *answers_path, eval_summary *sum,
                          eval_progress_cb cb, void *user, char *err, size_t err_len);

/* Renders a summary as one line of JSON (malloc'd; free()). NULL on memory failure. */
char *eval_summary_json(const eval_summary *sum);

/* The official pieces, exposed for tests. */
/* RefCOCO: 1 if answer (raw model text) hits gt [x, y, w, h] on a w x h image, else 0; *valid
 * tells whether the answer passed the box regex. */
int eval_refer_hit(const char *answer, const double gt_xywh[4], int w, int h, bool *valid);
/* computeIoU of minigpt4/common/eval_utils.py: corners inclusive (+1 on widths and heights).
 * Returns false (no IoU) when the union is 0, where Python raises. */
bool eval_iou_plus1(const double a[4], const double b[4], double *iou);
/* vqaEval.processPunctuation / processDigitArticle; out gets a malloc'd string (NULL: memory). */
char *eval_vqa_punctuation(const char *in);
char *eval_vqa_digit_article(const char *in);

#endif
