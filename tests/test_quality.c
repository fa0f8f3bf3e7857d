/*
 * test_quality.c - `minigpt quality` (tools/cmd_quality.c) on small models: a MiniGPT-v2 file
 * converted from the official-key checkpoints of tests/ref/make_official.py (language model and
 * vision tower) compared with itself gives top-1 100 %, KL 0 and cosine 1; its q4_0 copy gives
 * KL > 0, top-1 < 100 % and cosine < 1; the --json output parses with Python's json.loads; bad
 * inputs (different vocabulary sizes, one file without a vision tower, a missing file) exit 1
 * with one line on stderr, bad options exit 2.
 */
#include "test.h"

#include "minigpt.h"
#include "synth.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *bin(void) {
    const char *b = getenv("MG_BIN");
    return b && access(b, X_OK) == 0 ? b : NULL;
}

/* DIR/v2.gguf (f32, LLM + vision), DIR/v2_q4.gguf, DIR/llama.gguf (LLM only), made once. */
static const char *models(void) {
    static char dir[1024];
    static int state;
    if (!state) {
        snprintf(dir, sizeof dir, "%s/quality", test_data_dir());
        const char *py = test_python(), *b = bin();
        int rc = test_run("%s tests/ref/make_official.py %s > %s.log 2>&1", py, dir, dir);
        if (!rc)
            rc = test_run("%s convert --llm %s/hf_st --vit %s/eva.pth --ckpt %s/v2.pth --vit-heads 4 --image-size 112 "
                          "--outtype f32 -o %s/v2.gguf >> %s.log 2>&1", b, dir, dir, dir, dir, dir);
        if (!rc) rc = test_run("%s quantize %s/v2.gguf %s/v2_q4.gguf q4_0 >> %s.log 2>&1", b, dir, dir, dir);
        if (!rc)
            rc = test_run("%s convert --llm %s/hf_st --outtype f32 -o %s/llama.gguf >> %s.log 2>&1", b, dir, dir, dir);
        state = rc == 0 ? 1 : -1;
        if (rc) printf("    model generation failed (rc %d), see %s.log\n", rc, dir);
    }
    return state > 0 ? dir : NULL;
}

/* Runs `minigpt quality ARGS --json` into DIR/NAME.json; returns the parsed object (or NULL). */
static json_t *quality_json(const char *dir, const char *name, const char *args) {
    char out[1200];
    snprintf(out, sizeof out, "%s/%s.json", dir, name);
    int rc = test_run("%s quality %s --json -t 2 > %s 2> %s.err", bin(), args, out, out);
    CHECK_EQ_INT(rc, 0);
    /* the output is valid JSON for an independent parser */
    CHECK_EQ_INT(test_run("%s -c \"import json,sys; d=json.loads(open(sys.argv[1]).read()); "
                          "assert set(d) >= {'ref','test','llm','vision'}, d\" %s", test_python(), out), 0);
    json_error_t je;
    json_t *j = json_load_file(out, 0, &je);
    CHECK_MSG(j != NULL, "%s: %s", out, je.text);
    return j;
}

static double num(json_t *j, const char *obj, const char *key) {
    json_t *o = json_object_get(j, obj);
    json_t *v = o ? json_object_get(o, key) : NULL;
    CHECK_MSG(v && json_is_number(v), "missing %s.%s", obj, key);
    return v ? json_number_value(v) : NAN;
}

TEST(quality_identical_files) {
    if (!bin()) SKIP("MG_BIN not set to the minigpt binary");
    const char *dir = models();
    CHECK(dir != NULL);
    if (!dir) return;
    char args[4096];
    snprintf(args, sizeof args, "--ref %s/v2.gguf --test %s/v2.gguf --tokens 40 --seed 3", dir, dir);
    json_t *j = quality_json(dir, "same", args);
    if (j) {
        CHECK_EQ_INT(num(j, "llm", "tokens"), 40);
        CHECK(num(j, "llm", "top1_pct") == 100.0);
        CHECK(num(j, "llm", "kl_mean") == 0.0);
        CHECK(num(j, "llm", "kl_max") == 0.0);
        CHECK_CLOSE(num(j, "vision", "cosine"), 1.0, 1e-12);
        CHECK_CLOSE(num(j, "vision", "cosine_min_row"), 1.0, 1e-12);
        CHECK_EQ_INT(num(j, "vision", "image_size"), 112);
        CHECK(num(j, "ref", "bytes") == num(j, "test", "bytes") && num(j, "ref", "bytes") > 0);
        json_decref(j);
    }
    /* a tokenized text file instead of random ids; the text report */
    char txt[1200];
    snprintf(txt, sizeof txt, "%s/prompt.txt", dir);
    FILE *f = fopen(txt, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("hello world, describe the red cat and the blue dog in the picture", f);
        fclose(f);
    }
    snprintf(args, sizeof args, "%s quality --ref %s/v2.gguf --test %s/v2.gguf -f %s -t 1 > %s/same.txt", bin(), dir,
             dir, txt, dir);
    CHECK_EQ_INT(test_run("%s", args), 0);
    snprintf(txt, sizeof txt, "%s/same.txt", dir);
    size_t n;
    char *s = test_read_file(txt, &n);
    CHECK(s && strstr(s, "(text ids)") && strstr(s, "top-1 agreement 100.00%") && strstr(s, "cosine 1.000000"));
    free(s);
}

TEST(quality_q4_0_differs) {
    if (!bin()) SKIP("MG_BIN not set to the minigpt binary");
    const char *dir = models();
    CHECK(dir != NULL);
    if (!dir) return;
    char args[4096];
    snprintf(args, sizeof args, "--ref %s/v2.gguf --test %s/v2_q4.gguf --tokens 64", dir, dir);
    json_t *j = quality_json(dir, "q4", args);
    if (!j) return;
    double top1 = num(j, "llm", "top1_pct"), klm = num(j, "llm", "kl_mean"), klx = num(j, "llm", "kl_max");
    double cs = num(j, "vision", "cosine"), cmin = num(j, "vision", "cosine_min_row");
    printf("    q4_0 vs f32: top-1 %.2f%%, KL mean %.4g max %.4g, cosine %.6f (worst row %.6f)\n", top1, klm, klx, cs,
           cmin);
    /* d = 64 rows of two Q4_0 blocks on weights of scale 0.15: the logits move by a visible
     * fraction, so some of 64 argmaxes flip, yet most must agree */
    CHECK(klm > 0 && klx >= klm);
    CHECK(top1 < 100.0 && top1 > 20.0);
    CHECK(cs < 1.0 && cs > 0.9 && cmin <= cs);
    CHECK(num(j, "test", "bytes") < num(j, "ref", "bytes"));
    json_decref(j);
}

/* Runs `minigpt quality ARGS`; checks exit status want, nothing on stdout and (for want 1)
 * exactly one line on stderr containing needle. */
static void check_fails(const char *dir, const char *args, int want, const char *needle) {
    char out[1200], err[1200];
    snprintf(out, sizeof out, "%s/bad.out", dir);
    snprintf(err, sizeof err, "%s/bad.err", dir);
    CHECK_EQ_INT(test_run("%s quality %s > %s 2> %s", bin(), args, out, err), want);
    size_t no = 1, ne = 0;
    char *so = test_read_file(out, &no), *se = test_read_file(err, &ne);
    CHECK(so && no == 0);
    int lines = 0;
    for (size_t i = 0; se && i < ne; i++) lines += se[i] == '\n';
    if (want == 1) {
        CHECK_MSG(lines == 1 && se[ne - 1] == '\n', "want one line on stderr, got: %s", se ? se : "(none)");
        CHECK_MSG(se && strstr(se, needle), "stderr lacks \"%s\": %s", needle, se ? se : "(none)");
    }
    free(so);
    free(se);
}

TEST(quality_bad_inputs) {
    if (!bin()) SKIP("MG_BIN not set to the minigpt binary");
    const char *dir = models();
    CHECK(dir != NULL);
    if (!dir) return;
    char other[1200], args[4096], err[256];
    /* an LLM with another vocabulary size (synthetic tiny preset: 320 rows, this one has 300) */
    snprintf(other, sizeof other, "%s/tiny320.gguf", dir);
    const synth_preset *p = synth_find_preset("tiny");
    CHECK(p != NULL);
    if (p) {
        mg_status st = synth_write_gguf(p, MG_TYPE_F32, 1, other, err, sizeof err);
        CHECK_MSG(st == MG_OK, "synth_write_gguf: %s", err);
        snprintf(args, sizeof args, "--ref %s/llama.gguf --test %s", dir, other);
        check_fails(dir, args, 1, "different vocabulary sizes");
    }
    snprintf(args, sizeof args, "--ref %s/v2.gguf --test %s/llama.gguf", dir, dir);
    check_fails(dir, args, 1, "vision tower");
    snprintf(args, sizeof args, "--ref %s/v2.gguf --test %s/missing.gguf", dir, dir);
    check_fails(dir, args, 1, "missing.gguf");
    snprintf(args, sizeof args, "--ref %s/v2.gguf", dir);
    check_fails(dir, args, 2, NULL);
    snprintf(args, sizeof args, "--ref %s/v2.gguf --test %s/v2.gguf --tokens 0", dir, dir);
    check_fails(dir, args, 2, NULL);
    snprintf(args, sizeof args, "--ref %s/v2.gguf --test %s/v2.gguf -f %s/missing.txt", dir, dir, dir);
    check_fails(dir, args, 1, "missing.txt");
}
