/*
 * test_eval.c - the evaluator (src/evalscore.c, `minigpt eval`): the official pieces on hand-made
 * cases, then whole answer files scored by C and by tests/ref/eval_ref.py (the official formulas
 * re-implemented in Python), perfect answers giving 100%, and clear errors on bad files.
 */
#include "test.h"

#include "evalscore.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const char *bin(void) { return getenv("MG_BIN") ? getenv("MG_BIN") : "build/minigpt"; }

TEST(eval_iou_and_refer_rule) {
    double iou = -1;
    double a[4] = {0, 0, 9, 9}, b[4] = {5, 0, 14, 9}, z[4] = {3, 3, 2, 2};
    CHECK(eval_iou_plus1(a, a, &iou) && iou == 1.0);
    CHECK(eval_iou_plus1(a, b, &iou));
    CHECK_CLOSE(iou, 50.0 / 150.0, 1e-15);
    CHECK(!eval_iou_plus1(z, z, &iou)); /* areas (2-3+1)^2 = 0: union 0, Python raises -> no IoU */

    /* gt [x, y, w, h] = [100, 50, 100, 100] on a 400 x 200 image -> grid {<25><25><50><75>} */
    double gt[4] = {100, 50, 100, 100};
    bool valid;
    CHECK(eval_refer_hit("{<25><25><50><75>}", gt, 400, 200, &valid) == 1 && valid);
    CHECK(eval_refer_hit(" <unk>{<25> <25><50><75>} ", gt, 400, 200, &valid) == 1 && valid);
    CHECK(eval_refer_hit("box: {<25><25><50><75>}", gt, 400, 200, &valid) == 0 && !valid);
    CHECK(eval_refer_hit("{<25><25><50><75>", gt, 400, 200, &valid) == 0 && !valid);
    CHECK(eval_refer_hit("{<0025><25><50><75>}", gt, 400, 200, &valid) == 0 && !valid);
    /* valid prefix, but a fifth number: Python fails to unpack -> miss */
    CHECK(eval_refer_hit("{<25><25><50><75>} 1", gt, 400, 200, &valid) == 0 && valid);
    /* shift by 10 grid units in x (40 px): IoU = 61*101 / (2*101*101 - 61*101) = 0.4295 -> miss */
    CHECK(eval_refer_hit("{<35><25><60><75>}", gt, 400, 200, &valid) == 0 && valid);
    /* shift by 5 (20 px): IoU = 81/121 -> hit */
    CHECK(eval_refer_hit("{<30><25><55><75>}", gt, 400, 200, &valid) == 1);
    CHECK(eval_refer_hit(NULL, gt, 400, 200, &valid) == 0);
}

TEST(eval_vqa_normalisation) {
    struct { const char *in, *punct, *digit; } cases[] = {
        {"red.", "red", "red"},
        {"3.5", "3.5", "3.5"},
        {"Two Dogs!", "Two Dogs ", "2 dogs"},
        {"yes !", "yes ", "yes"},
        {"3,000 the", "3000 the", "3000"},
        {"a dont  an", "a dont  an", "don't"},
        {"top-left", "top left", "top left"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *p = eval_vqa_punctuation(cases[i].in);
        char *d = p ? eval_vqa_digit_article(p) : NULL;
        CHECK_MSG(p && strcmp(p, cases[i].punct) == 0, "punct(%s) = '%s'", cases[i].in, p ? p : "(null)");
        CHECK_MSG(d && strcmp(d, cases[i].digit) == 0, "digit(%s) = '%s'", cases[i].in, d ? d : "(null)");
        free(p);
        free(d);
    }
}

/* Reads one line of JSON from a file. */
static json_t *load_json(const char *path) {
    json_error_t je;
    return json_load_file(path, JSON_DECODE_ANY, &je);
}

/* C summary (minigpt eval --json) vs eval_ref.py on the same files; all fields. */
static void compare(const char *task, const char *gt, const char *ans, bool expect_perfect) {
    const char *d = test_data_dir();
    CHECK_EQ_INT(test_run("%s eval --task %s --gt %s --answers %s --json > %s/ev_c.json", bin(), task, gt, ans, d), 0);
    CHECK_EQ_INT(test_run("%s tests/ref/eval_ref.py score %s %s %s > %s/ev_py.json", test_python(), task, gt, ans, d), 0);
    char pc[4096], pp[4096];
    snprintf(pc, sizeof pc, "%s/ev_c.json", d);
    snprintf(pp, sizeof pp, "%s/ev_py.json", d);
    json_t *c = load_json(pc), *p = load_json(pp);
    CHECK(c && p);
    if (c && p) {
        const char *keys[] = {"n_items", "n_answered", "n_missing", "n_invalid", "score", "exact_match",
                              "precision", "recall", "f1", "tp", "fp", "fn"};
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            double x = json_number_value(json_object_get(c, keys[k]));
            double y = json_number_value(json_object_get(p, keys[k]));
            CHECK_MSG(json_is_number(json_object_get(c, keys[k])) && x - y < 1e-9 && y - x < 1e-9,
                      "%s %s (%s): C %.12g, Python %.12g", task, keys[k], ans, x, y);
        }
        CHECK(json_integer_value(json_object_get(c, "n_items")) > 0);
        if (expect_perfect) {
            CHECK_CLOSE(json_number_value(json_object_get(c, "score")), 100.0, 1e-9);
            CHECK_EQ_INT(json_integer_value(json_object_get(c, "n_missing")), 0);
        }
    }
    json_decref(c);
    json_decref(p);
}

TEST(eval_tasks_vs_python) {
    const char *d = test_data_dir();
    int n = test_quick() ? 12 : 30;
    CHECK_EQ_INT(test_run("rm -rf %s/evs && %s synth -q --eval --seed 21 -n %d -o %s/evs", d, bin(), n, d), 0);
    const char *tasks[][2] = {{"refer", "refcoco_synth.json"},  {"vqa", "vqa_annotations.json"},
                              {"detection", "detection_gt.json"}, {"grounding", "grounding_gt.json"},
                              {"identify", "identify_gt.json"},   {"caption", "caption_gt.json"}};
    for (size_t t = 0; t < sizeof tasks / sizeof tasks[0]; t++) {
        char gt[4096], ans[4096];
        snprintf(gt, sizeof gt, "%s/evs/%s", d, tasks[t][1]);
        snprintf(ans, sizeof ans, "%s/evs/ans_%s_perfect.jsonl", d, tasks[t][0]);
        CHECK_EQ_INT(test_run("%s tests/ref/eval_ref.py answers %s %s %s 1 perfect", test_python(), tasks[t][0], gt, ans), 0);
        compare(tasks[t][0], gt, ans, true);
        for (int seed = 1; seed <= 2; seed++) {
            snprintf(ans, sizeof ans, "%s/evs/ans_%s_%d.jsonl", d, tasks[t][0], seed);
            CHECK_EQ_INT(test_run("%s tests/ref/eval_ref.py answers %s %s %s %d random", test_python(),
                                  tasks[t][0], gt, ans, seed), 0);
            compare(tasks[t][0], gt, ans, false);
        }
    }
    /* the VQA accuracy with ten disagreeing answers (normalisation on) */
    char gt[4096], ans[4096];
    snprintf(gt, sizeof gt, "%s/evs/vqa_mixed.json", d);
    CHECK_EQ_INT(test_run("%s tests/ref/eval_ref.py vqa-gt %s 5 %d", test_python(), gt, test_quick() ? 100 : 400), 0);
    for (int seed = 1; seed <= 3; seed++) {
        snprintf(ans, sizeof ans, "%s/evs/ans_vqa_mixed_%d.jsonl", d, seed);
        CHECK_EQ_INT(test_run("%s tests/ref/eval_ref.py answers vqa %s %s %d random", test_python(), gt, ans, seed), 0);
        compare("vqa", gt, ans, false);
    }
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* Loads gt (text) for task and scores answers (text); returns the status, message in err. */
static mg_status try_score(mg_task task, const char *gt, const char *answers, char *err, size_t n,
                           eval_summary *sum) {
    char pg[4096], pa[4096];
    snprintf(pg, sizeof pg, "%s/bad_gt.json", test_data_dir());
    snprintf(pa, sizeof pa, "%s/bad_ans.jsonl", test_data_dir());
    write_file(pg, gt);
    write_file(pa, answers);
    eval_set *s;
    mg_status st = eval_set_load(&s, task, pg, err, n);
    if (st != MG_OK) return st;
    st = eval_score_file(s, pa, sum, NULL, NULL, err, n);
    eval_set_free(s);
    return st;
}

TEST(eval_bad_files) {
    char err[512];
    eval_summary sum;
    const char *ref = "[{\"img_id\":\"a_0\",\"sents\":\"red star\",\"bbox\":[10,10,20,20],\"height\":100,"
                      "\"width\":100,\"id\":7}]";
    CHECK(try_score(MG_TASK_REFER, ref, "{\"id\":7,\"answer\":\"{<10><10><30><30>}\"}\n\n", err, sizeof err,
                    &sum) == MG_OK);
    CHECK_CLOSE(sum.score, 100.0, 1e-12);
    CHECK(try_score(MG_TASK_REFER, ref, "{\"id\":7,\"answer\":\"{<10><10><30><30>}\"}\n{\"id\":7,", err,
                    sizeof err, &sum) == MG_ERR_FORMAT);
    CHECK_MSG(strstr(err, "line 2") && strstr(err, "bad JSON"), "%s", err);
    CHECK(try_score(MG_TASK_REFER, ref, "{\"id\":8,\"answer\":\"x\"}\n", err, sizeof err, &sum) == MG_ERR_FORMAT);
    CHECK_MSG(strstr(err, "not in the ground truth") != NULL, "%s", err);
    CHECK(try_score(MG_TASK_REFER, ref, "{\"id\":7,\"answer\":\"x\"}\n{\"id\":\"7\",\"answer\":\"y\"}\n", err,
                    sizeof err, &sum) == MG_ERR_FORMAT);
    CHECK_MSG(strstr(err, "twice") != NULL, "%s", err);
    CHECK(try_score(MG_TASK_REFER, ref, "{\"id\":7,\"answer\":3}\n", err, sizeof err, &sum) == MG_ERR_FORMAT);
    CHECK(try_score(MG_TASK_REFER, ref, "[1,2]\n", err, sizeof err, &sum) == MG_ERR_FORMAT);
    CHECK(try_score(MG_TASK_REFER, ref, "", err, sizeof err, &sum) == MG_OK && sum.n_missing == 1 &&
          sum.score == 0);
    /* bad ground truth */
    CHECK(try_score(MG_TASK_REFER, "[{\"img_id\":1", "", err, sizeof err, &sum) == MG_ERR_FORMAT);
    CHECK_MSG(strstr(err, "bad JSON") != NULL, "%s", err);
    CHECK(try_score(MG_TASK_REFER, "{\"a\":1}", "", err, sizeof err, &sum) == MG_ERR_FORMAT);
    CHECK(try_score(MG_TASK_REFER, "[{\"img_id\":\"a\",\"sents\":\"x\",\"bbox\":[1,2,3],\"height\":1,\"width\":1}]",
                    "", err, sizeof err, &sum) == MG_ERR_FORMAT);
    CHECK_MSG(strstr(err, "item 0") && strstr(err, "bbox"), "%s", err);
    CHECK(try_score(MG_TASK_VQA, "{\"annotations\":[{\"question_id\":1,\"answers\":[]}]}", "", err, sizeof err,
                    &sum) == MG_ERR_FORMAT);
    CHECK(try_score(MG_TASK_VQA, "{\"annotations\":[{\"question_id\":1,\"answers\":[{\"answer\":2}]}]}", "", err,
                    sizeof err, &sum) == MG_ERR_FORMAT);
    CHECK(try_score(MG_TASK_DETECTION, "{\"items\":[{\"id\":1,\"width\":10,\"height\":10,\"boxes\":[[1,1,-2,2]]}]}",
                    "", err, sizeof err, &sum) == MG_ERR_FORMAT);
    CHECK(try_score(MG_TASK_CAPTION, "{\"items\":[{\"id\":1,\"objects\":[[\"mauve\",\"circle\"]]}]}", "", err,
                    sizeof err, &sum) == MG_ERR_FORMAT);
    CHECK(try_score(MG_TASK_IDENTIFY, "{\"items\":[{\"id\":1,\"objects\":[[\"red\",\"circle\"]]},"
                                      "{\"id\":1,\"objects\":[]}]}", "", err, sizeof err, &sum) == MG_ERR_FORMAT);
    CHECK_MSG(strstr(err, "twice") != NULL, "%s", err);
    eval_set *s;
    CHECK(eval_set_load(&s, MG_TASK_REFER, "/nonexistent/x.json", err, sizeof err) == MG_ERR_IO);
    CHECK(eval_set_load(&s, MG_TASK_NONE, "/nonexistent/x.json", err, sizeof err) == MG_ERR_INVALID_ARG);
    /* the CLI says what is wrong and fails */
    const char *d = test_data_dir();
    char pg[4096];
    snprintf(pg, sizeof pg, "%s/bad_gt.json", d);
    write_file(pg, "[{\"img_id\":\"a\",\"sents\":\"x\",\"bbox\":[1,2,3],\"height\":1,\"width\":1}]");
    CHECK_EQ_INT(test_run("%s eval --task refer --gt %s/bad_gt.json --answers %s/bad_ans.jsonl 2> %s/ev_err.txt",
                          bin(), d, d, d), 1);
    CHECK_EQ_INT(test_run("grep -q 'minigpt eval: .*item 0' %s/ev_err.txt", d), 0);
    CHECK_EQ_INT(test_run("%s eval --task nope --gt x --answers y 2>/dev/null", bin()), 1);
}
