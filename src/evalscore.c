/*
 * evalscore.c - scoring of answers against ground truth (see evalscore.h and docs/synth.md).
 * Re-implemented from the facts of Vision-CAIR/MiniGPT-4 eval_scripts/eval_ref.py,
 * minigpt4/common/eval_utils.py (computeIoU) and the official VQA vqaEval.py; the quirks that
 * change scores are kept on purpose (IoU +1 convention, strict > 0.5, VQA normalisation only
 * when the ten answers disagree, the 32-removal cap of the period rule). Text rules use ASCII
 * (Python's lower()/strip()/split() also know non-ASCII letters and spaces).
 */
#include "evalscore.h"

#include "world.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *id;
    char *instruction, *image;
    int w, h;
    double box[4];       /* refer: gt [x, y, w, h] */
    json_t *answers;     /* vqa: the answer dicts (own reference) */
    char *ref_answer;    /* vqa: multiple_choice_answer; identify/caption: reference text */
    double (*boxes)[4];  /* detection/grounding: gt [x, y, w, h] */
    int *box_key;        /* grounding: colour * 64 + shape of the box's entity (-1: none) */
    int n_boxes;
    int (*objs)[2];      /* identify/caption: (colour, shape) pairs */
    int n_objs;
} eval_item;

struct eval_set {
    mg_task task;
    eval_item *items;
    int n;
};

/* ==== Small string helpers (Python's rules restricted to ASCII) ==== */

static bool py_space(unsigned char c) { return c == ' ' || (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x1f); }
static bool is_dig(char c) { return c >= '0' && c <= '9'; }

static char *xstrdup(const char *s) {
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p) memcpy(p, s, n + 1);
    return p;
}

/* s.strip() in place (returns s) */
static char *strip_inplace(char *s) {
    size_t n = strlen(s), a = 0;
    while (n > 0 && py_space((unsigned char)s[n - 1])) n--;
    while (a < n && py_space((unsigned char)s[a])) a++;
    memmove(s, s + a, n - a);
    s[n - a] = 0;
    return s;
}

static void lower_inplace(char *s) {
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'Z') *s = (char)(*s - 'A' + 'a');
}

/* s.replace(pat, rep), malloc'd */
static char *replace_all(const char *s, const char *pat, const char *rep) {
    size_t lp = strlen(pat), lr = strlen(rep), n = 0;
    for (const char *p = strstr(s, pat); p; p = strstr(p + lp, pat)) n++;
    size_t len = strlen(s) + n * lr + 1;
    char *out = malloc(len), *o = out;
    if (!out) return NULL;
    const char *p = s;
    for (const char *q = strstr(p, pat); q; q = strstr(p, pat)) {
        memcpy(o, p, (size_t)(q - p));
        o += q - p;
        memcpy(o, rep, lr);
        o += lr;
        p = q + lp;
    }
    strcpy(o, p);
    return out;
}

/* ==== IoU and RefCOCO ==== */

/* computeIoU of eval_utils.py; see evalscore.h. */
bool eval_iou_plus1(const double a[4], const double b[4], double *iou) {
    double ix1 = MG_MAX(a[0], b[0]), iy1 = MG_MAX(a[1], b[1]);
    double ix2 = MG_MIN(a[2], b[2]), iy2 = MG_MIN(a[3], b[3]);
    double inter = MG_MAX(0.0, ix2 - ix1 + 1) * MG_MAX(0.0, iy2 - iy1 + 1);
    double area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1);
    double area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1);
    double uni = area_a + area_b - inter;
    if (uni == 0) return false;
    *iou = inter / uni;
    return true;
}

/* re.match(r'\{<\d{1,3}><\d{1,3}><\d{1,3}><\d{1,3}>\}', s) */
static bool refer_prefix(const char *s) {
    if (*s++ != '{') return false;
    for (int k = 0; k < 4; k++) {
        if (*s++ != '<') return false;
        int d = 0;
        while (d < 3 && is_dig(*s)) { s++; d++; }
        if (d == 0 || *s++ != '>') return false;
    }
    return *s == '}';
}

/* The RefCOCO rule of eval_ref.py; see evalscore.h. */
int eval_refer_hit(const char *answer, const double gt[4], int w, int h, bool *valid) {
    if (valid) *valid = false;
    if (!answer) return 0;
    char *a = replace_all(answer, "<unk>", "");
    if (!a) return 0;
    char *o = a;
    for (const char *p = a; *p; p++)
        if (*p != ' ') *o++ = *p;
    *o = 0;
    strip_inplace(a);
    int hit = 0;
    if (refer_prefix(a)) {
        if (valid) *valid = true;
        /* re.findall(r'\d+', output): the whole answer; more than four numbers fail to unpack */
        double v[4];
        int n = 0;
        bool too_big = false;
        for (const char *p = a; *p;) {
            if (!is_dig(*p)) { p++; continue; }
            double x = 0;
            while (is_dig(*p)) {
                x = x * 10 + (*p - '0');
                if (x > 1e15) too_big = true;
                p++;
            }
            if (n < 4) v[n] = x;
            n++;
        }
        if (n == 4 && !too_big) {
            double pred[4] = {v[0] / 100.0 * w, v[1] / 100.0 * h, v[2] / 100.0 * w, v[3] / 100.0 * h};
            double g[4] = {gt[0], gt[1], gt[0] + gt[2], gt[1] + gt[3]};
            double iou;
            if (eval_iou_plus1(pred, g, &iou) && iou > 0.5) hit = 1;
        }
    }
    free(a);
    return hit;
}

/* ==== VQA normalisation (vqaEval.py) ==== */

static const char PUNCT[] = ";/[]\"{}()=+\\_-><@`,?!";

/* processPunctuation; see evalscore.h. */
char *eval_vqa_punctuation(const char *in) {
    if (!in) return NULL;
    bool comma = false; /* commaStrip: digit , digit anywhere */
    for (const char *p = in; p[0] && p[1] && p[2]; p++)
        if (is_dig(p[0]) && p[1] == ',' && is_dig(p[2])) { comma = true; break; }
    char *out = xstrdup(in);
    for (const char *pc = PUNCT; out && *pc; pc++) {
        char ps[3] = {*pc, ' ', 0}, sp[3] = {' ', *pc, 0}, one[2] = {*pc, 0};
        bool gone = strstr(in, ps) || strstr(in, sp) || comma;
        char *t = replace_all(out, one, gone ? "" : " ");
        free(out);
        out = t;
    }
    if (!out) return NULL;
    /* periodStrip.sub("", outText, re.UNICODE): a '.' not followed by a digit goes; the third
     * positional argument is count, so at most 32 (re.UNICODE) of them */
    char *o = out;
    int removed = 0;
    for (const char *p = out; *p; p++) {
        if (*p == '.' && !is_dig(p[1]) && removed < 32) { removed++; continue; }
        *o++ = *p;
    }
    *o = 0;
    return out;
}

static const char *const CONTRACTIONS[][2] = {
    {"aint", "ain't"}, {"arent", "aren't"}, {"cant", "can't"}, {"couldve", "could've"},
    {"couldnt", "couldn't"}, {"couldn'tve", "couldn't've"}, {"couldnt've", "couldn't've"},
    {"didnt", "didn't"}, {"doesnt", "doesn't"}, {"dont", "don't"}, {"hadnt", "hadn't"},
    {"hadnt've", "hadn't've"}, {"hadn'tve", "hadn't've"}, {"hasnt", "hasn't"}, {"havent", "haven't"},
    {"hed", "he'd"}, {"hed've", "he'd've"}, {"he'dve", "he'd've"}, {"hes", "he's"}, {"howd", "how'd"},
    {"howll", "how'll"}, {"hows", "how's"}, {"Id've", "I'd've"}, {"I'dve", "I'd've"}, {"Im", "I'm"},
    {"Ive", "I've"}, {"isnt", "isn't"}, {"itd", "it'd"}, {"itd've", "it'd've"}, {"it'dve", "it'd've"},
    {"itll", "it'll"}, {"let's", "let's"}, {"maam", "ma'am"}, {"mightnt", "mightn't"},
    {"mightnt've", "mightn't've"}, {"mightn'tve", "mightn't've"}, {"mightve", "might've"},
    {"mustnt", "mustn't"}, {"mustve", "must've"}, {"neednt", "needn't"}, {"notve", "not've"},
    {"oclock", "o'clock"}, {"oughtnt", "oughtn't"}, {"ow's'at", "'ow's'at"}, {"'ows'at", "'ow's'at"},
    {"'ow'sat", "'ow's'at"}, {"shant", "shan't"}, {"shed've", "she'd've"}, {"she'dve", "she'd've"},
    {"she's", "she's"}, {"shouldve", "should've"}, {"shouldnt", "shouldn't"},
    {"shouldnt've", "shouldn't've"}, {"shouldn'tve", "shouldn't've"}, {"somebody'd", "somebodyd"},
    {"somebodyd've", "somebody'd've"}, {"somebody'dve", "somebody'd've"}, {"somebodyll", "somebody'll"},
    {"somebodys", "somebody's"}, {"someoned", "someone'd"}, {"someoned've", "someone'd've"},
    {"someone'dve", "someone'd've"}, {"someonell", "someone'll"}, {"someones", "someone's"},
    {"somethingd", "something'd"}, {"somethingd've", "something'd've"},
    {"something'dve", "something'd've"}, {"somethingll", "something'll"}, {"thats", "that's"},
    {"thered", "there'd"}, {"thered've", "there'd've"}, {"there'dve", "there'd've"},
    {"therere", "there're"}, {"theres", "there's"}, {"theyd", "they'd"}, {"theyd've", "they'd've"},
    {"they'dve", "they'd've"}, {"theyll", "they'll"}, {"theyre", "they're"}, {"theyve", "they've"},
    {"twas", "'twas"}, {"wasnt", "wasn't"}, {"wed've", "we'd've"}, {"we'dve", "we'd've"},
    {"weve", "we've"}, {"werent", "weren't"}, {"whatll", "what'll"}, {"whatre", "what're"},
    {"whats", "what's"}, {"whatve", "what've"}, {"whens", "when's"}, {"whered", "where'd"},
    {"wheres", "where's"}, {"whereve", "where've"}, {"whod", "who'd"}, {"whod've", "who'd've"},
    {"who'dve", "who'd've"}, {"wholl", "who'll"}, {"whos", "who's"}, {"whove", "who've"},
    {"whyll", "why'll"}, {"whyre", "why're"}, {"whys", "why's"}, {"wont", "won't"},
    {"wouldve", "would've"}, {"wouldnt", "wouldn't"}, {"wouldnt've", "wouldn't've"},
    {"wouldn'tve", "wouldn't've"}, {"yall", "y'all"}, {"yall'll", "y'all'll"}, {"y'allll", "y'all'll"},
    {"yall'd've", "y'all'd've"}, {"y'alld've", "y'all'd've"}, {"y'all'dve", "y'all'd've"},
    {"youd", "you'd"}, {"youd've", "you'd've"}, {"you'dve", "you'd've"}, {"youll", "you'll"},
    {"youre", "you're"}, {"youve", "you've"}};
static const char *const NUMBER_MAP[][2] = {{"none", "0"},  {"zero", "0"}, {"one", "1"},  {"two", "2"},
                                            {"three", "3"}, {"four", "4"}, {"five", "5"}, {"six", "6"},
                                            {"seven", "7"}, {"eight", "8"}, {"nine", "9"}, {"ten", "10"}};

/* processDigitArticle; see evalscore.h. */
char *eval_vqa_digit_article(const char *in) {
    if (!in) return NULL;
    size_t n = strlen(in);
    char *low = xstrdup(in);
    char *out = malloc(2 * n + 16);
    if (!low || !out) { free(low); free(out); return NULL; }
    lower_inplace(low);
    size_t o = 0;
    char *p = low;
    while (*p) {
        while (*p && py_space((unsigned char)*p)) p++;
        if (!*p) break;
        char *w = p;
        while (*p && !py_space((unsigned char)*p)) p++;
        char save = *p;
        *p = 0;
        const char *word = w;
        for (size_t k = 0; k < MG_ARRAY_LEN(NUMBER_MAP); k++)
            if (strcmp(word, NUMBER_MAP[k][0]) == 0) word = NUMBER_MAP[k][1];
        bool article = !strcmp(word, "a") || !strcmp(word, "an") || !strcmp(word, "the");
        if (!article) {
            for (size_t k = 0; k < MG_ARRAY_LEN(CONTRACTIONS); k++)
                if (strcmp(word, CONTRACTIONS[k][0]) == 0) { word = CONTRACTIONS[k][1]; break; }
            size_t wl = strlen(word);
            if (o) out[o++] = ' ';
            memcpy(out + o, word, wl); /* a replacement is at most 2 bytes longer than its key */
            o += wl;
        }
        *p = save;
    }
    out[o] = 0;
    free(low);
    return out;
}

/* Accuracy of one answer (0..1) against the answer dicts, as vqaEval.evaluate after
 * eval_vqa.py's answer.lower().replace('<unk>','').strip(). *exact: equal to ref (lower-case). */
static mg_status vqa_item(const eval_item *it, const char *answer, double *acc, bool *exact) {
    *acc = 0;
    *exact = false;
    size_t na = json_array_size(it->answers);
    char *res0 = xstrdup(answer);
    if (!res0) return MG_ERR_NOMEM;
    lower_inplace(res0);
    char *res = replace_all(res0, "<unk>", "");
    free(res0);
    if (!res) return MG_ERR_NOMEM;
    strip_inplace(res);
    if (it->ref_answer) {
        char *ref = xstrdup(it->ref_answer);
        if (!ref) { free(res); return MG_ERR_NOMEM; }
        lower_inplace(ref);
        *exact = strcmp(res, ref) == 0;
        free(ref);
    }
    /* resAns.replace('\n',' ').replace('\t',' ').strip(); the same on every gt answer */
    for (char *p = res; *p; p++)
        if (*p == '\n' || *p == '\t') *p = ' ';
    strip_inplace(res);
    json_t *gts = json_deep_copy(it->answers);
    if (!gts) { free(res); return MG_ERR_NOMEM; }
    mg_status st = MG_OK;
    bool disagree = false;
    const char *first = NULL;
    for (size_t i = 0; i < na; i++) {
        json_t *d = json_array_get(gts, i);
        char *s = xstrdup(json_string_value(json_object_get(d, "answer")));
        if (!s) { st = MG_ERR_NOMEM; goto done; }
        for (char *p = s; *p; p++)
            if (*p == '\n' || *p == '\t') *p = ' ';
        strip_inplace(s);
        json_object_set_new(d, "answer", json_string(s));
        const char *now = json_string_value(json_object_get(d, "answer"));
        if (!now) { free(s); st = MG_ERR_NOMEM; goto done; }
        if (first && strcmp(first, now) != 0) disagree = true;
        if (!first) first = now;
        free(s);
    }
    if (disagree) {
        for (size_t i = 0; i < na; i++) {
            json_t *d = json_array_get(gts, i);
            char *a = eval_vqa_punctuation(json_string_value(json_object_get(d, "answer")));
            char *b = a ? eval_vqa_digit_article(a) : NULL;
            free(a);
            if (!b) { st = MG_ERR_NOMEM; goto done; }
            json_object_set_new(d, "answer", json_string(b));
            free(b);
        }
        char *a = eval_vqa_punctuation(res);
        char *b = a ? eval_vqa_digit_article(a) : NULL;
        free(a);
        if (!b) { st = MG_ERR_NOMEM; goto done; }
        free(res);
        res = b;
    }
    lower_inplace(res);
    double sum = 0;
    for (size_t i = 0; i < na; i++) {
        json_t *gi = json_array_get(gts, i);
        int match = 0;
        for (size_t j = 0; j < na; j++) {
            json_t *gj = json_array_get(gts, j);
            if (json_equal(gi, gj)) continue; /* otherGTAns: item != gtAnsDatum (dict equality) */
            char *s = xstrdup(json_string_value(json_object_get(gj, "answer")));
            if (!s) { st = MG_ERR_NOMEM; goto done; }
            lower_inplace(s);
            match += strcmp(s, res) == 0;
            free(s);
        }
        sum += MG_MIN(1.0, match / 3.0);
    }
    *acc = na ? sum / (double)na : 0;
done:
    json_decref(gts);
    free(res);
    return st;
}

/* ==== Boxes ==== */

typedef struct {
    double iou;
    int p, g;
} pair_t;

static int cmp_pair(const void *a, const void *b) {
    const pair_t *x = a, *y = b;
    if (x->iou != y->iou) return x->iou > y->iou ? -1 : 1;
    if (x->p != y->p) return x->p - y->p;
    return x->g - y->g;
}

/* Greedy one-to-one matching of predicted to gt boxes (both [x1, y1, x2, y2]) at IoU > 0.5:
 * pairs by decreasing IoU (then prediction order, then gt order); keys must agree when given. */
static int match_boxes(const double (*pred)[4], const int *pkey, int np, const double (*gt)[4],
                       const int *gkey, int ng) {
    if (np == 0 || ng == 0) return 0;
    pair_t *pairs = malloc(sizeof *pairs * (size_t)np * (size_t)ng);
    bool *pu = calloc((size_t)np, 1), *gu = calloc((size_t)ng, 1);
    int tp = 0, n = 0;
    if (!pairs || !pu || !gu) goto out;
    for (int i = 0; i < np; i++)
        for (int j = 0; j < ng; j++) {
            double iou;
            if (pkey && gkey && pkey[i] != gkey[j]) continue;
            if (eval_iou_plus1(pred[i], gt[j], &iou) && iou > 0.5) pairs[n++] = (pair_t){iou, i, j};
        }
    qsort(pairs, (size_t)n, sizeof *pairs, cmp_pair);
    for (int k = 0; k < n; k++)
        if (!pu[pairs[k].p] && !gu[pairs[k].g]) {
            pu[pairs[k].p] = gu[pairs[k].g] = true;
            tp++;
        }
out:
    free(pairs);
    free(pu);
    free(gu);
    return tp;
}

/* Boxes of a grounded answer in pixels, with the first colour+shape mention of each box's phrase
 * as key (-1: none). */
static mg_status answer_boxes(const char *answer, int w, int h, double (**out)[4], int **keys, int *n) {
    *out = NULL;
    *keys = NULL;
    *n = 0;
    mg_grounding *g;
    mg_status st = mg_grounding_parse(&g, answer, strlen(answer), w, h, NULL, 0);
    if (st != MG_OK) return st;
    int total = 0;
    for (int e = 0; e < g->n_entities; e++) total += g->entities[e].n_boxes;
    if (total > 0) {
        *out = malloc(sizeof **out * (size_t)total);
        *keys = malloc(sizeof **keys * (size_t)total);
        if (!*out || !*keys) {
            free(*out); free(*keys);
            *out = NULL; *keys = NULL;
            mg_grounding_free(g);
            return MG_ERR_NOMEM;
        }
    }
    int k = 0;
    for (int e = 0; e < g->n_entities; e++) {
        int m[1][2];
        int key = world_mentions(g->entities[e].phrase, m, 1) ? m[0][0] * 64 + m[0][1] : -1;
        for (int b = 0; b < g->entities[e].n_boxes; b++) {
            const mg_box *bx = &g->entities[e].boxes[b];
            (*out)[k][0] = bx->px1;
            (*out)[k][1] = bx->py1;
            (*out)[k][2] = bx->px2;
            (*out)[k][3] = bx->py2;
            (*keys)[k++] = key;
        }
    }
    *n = total;
    mg_grounding_free(g);
    return MG_OK;
}

/* ==== Loading ==== */

static void item_free(eval_item *it) {
    free(it->id);
    free(it->instruction);
    free(it->image);
    json_decref(it->answers);
    free(it->ref_answer);
    free(it->boxes);
    free(it->box_key);
    free(it->objs);
}

/* Frees a set (NULL is fine). */
void eval_set_free(eval_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) item_free(&s->items[i]);
    free(s->items);
    free(s);
}

int eval_set_size(const eval_set *s) { return s ? s->n : 0; }
const char *eval_set_id(const eval_set *s, int i) { return s && i >= 0 && i < s->n ? s->items[i].id : NULL; }
const char *eval_set_instruction(const eval_set *s, int i) {
    return s && i >= 0 && i < s->n ? s->items[i].instruction : NULL;
}
const char *eval_set_image(const eval_set *s, int i) {
    return s && i >= 0 && i < s->n ? s->items[i].image : NULL;
}

/* "12" for integers, the string itself for strings; NULL for other types. */
static char *id_text(const json_t *v) {
    char buf[32];
    if (json_is_integer(v)) {
        snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
        return xstrdup(buf);
    }
    if (json_is_string(v)) return xstrdup(json_string_value(v));
    return NULL;
}

static bool get_num(const json_t *o, const char *k, double *v) {
    json_t *x = json_object_get(o, k);
    if (!json_is_number(x)) return false;
    *v = json_number_value(x);
    return isfinite(*v);
}

/* [x, y, w, h] with finite numbers, w and h >= 0 */
static bool get_xywh(const json_t *a, double b[4]) {
    if (!json_is_array(a) || json_array_size(a) != 4) return false;
    for (int k = 0; k < 4; k++) {
        json_t *x = json_array_get(a, (size_t)k);
        if (!json_is_number(x)) return false;
        b[k] = json_number_value(x);
        if (!isfinite(b[k]) || fabs(b[k]) > 1e9) return false;
    }
    return b[2] >= 0 && b[3] >= 0;
}

static int name_index(const char *s, const char *(*fn)(int), int n) {
    for (int i = 0; s && i < n; i++)
        if (strcmp(fn(i), s) == 0) return i;
    return -1;
}

/* [["red","circle"], ...] */
static bool get_objs(const json_t *a, eval_item *it) {
    if (!json_is_array(a)) return false;
    size_t n = json_array_size(a);
    if (n > 4096) return false;
    it->objs = malloc(sizeof *it->objs * (n ? n : 1));
    if (!it->objs) return false;
    for (size_t i = 0; i < n; i++) {
        json_t *p = json_array_get(a, i);
        if (!json_is_array(p) || json_array_size(p) != 2) return false;
        int c = name_index(json_string_value(json_array_get(p, 0)), world_color_name, WORLD_N_COLORS);
        int s = name_index(json_string_value(json_array_get(p, 1)), world_shape_name, WORLD_N_SHAPES);
        if (c < 0 || s < 0) return false;
        it->objs[i][0] = c;
        it->objs[i][1] = s;
    }
    it->n_objs = (int)n;
    return true;
}

static bool get_str(const json_t *o, const char *k, char **out, bool required) {
    json_t *x = json_object_get(o, k);
    if (!x && !required) { *out = xstrdup(""); return *out != NULL; }
    if (!json_is_string(x)) return false;
    *out = xstrdup(json_string_value(x));
    return *out != NULL;
}

static bool get_size(const json_t *o, eval_item *it) {
    double w, h;
    if (!get_num(o, "width", &w) || !get_num(o, "height", &h)) return false;
    if (w < 1 || h < 1 || w > 1e6 || h > 1e6 || w != floor(w) || h != floor(h)) return false;
    it->w = (int)w;
    it->h = (int)h;
    return true;
}

/* Reads item i of the task's list; false with a reason in why. */
static bool load_item(mg_task task, const json_t *o, size_t i, eval_item *it, const char **why) {
    if (!json_is_object(o)) { *why = "not an object"; return false; }
    json_t *idv = json_object_get(o, task == MG_TASK_VQA ? "question_id" : "id");
    if (task == MG_TASK_REFER && !idv) {
        char buf[32];
        snprintf(buf, sizeof buf, "%zu", i);
        it->id = xstrdup(buf);
    } else {
        it->id = id_text(idv);
    }
    if (!it->id) { *why = task == MG_TASK_VQA ? "bad question_id" : "bad id"; return false; }
    if (!get_str(o, "instruction", &it->instruction, false) || !get_str(o, "image", &it->image, false)) {
        *why = "instruction/image must be strings";
        return false;
    }
    switch (task) {
    case MG_TASK_REFER:
        if (!get_xywh(json_object_get(o, "bbox"), it->box)) { *why = "bbox must be [x, y, w, h]"; return false; }
        if (!get_size(o, it)) { *why = "width/height must be positive integers"; return false; }
        if (!json_is_string(json_object_get(o, "sents"))) { *why = "sents must be a string"; return false; }
        if (!it->instruction[0]) { /* RefCOCOEvalData's prompt */
            free(it->instruction);
            size_t n = strlen(json_string_value(json_object_get(o, "sents"))) + 40;
            it->instruction = malloc(n);
            if (!it->instruction) { *why = "out of memory"; return false; }
            snprintf(it->instruction, n, "[refer] give me the location of %s",
                     json_string_value(json_object_get(o, "sents")));
        }
        return true;
    case MG_TASK_VQA: {
        json_t *a = json_object_get(o, "answers");
        if (!json_is_array(a) || json_array_size(a) == 0) { *why = "answers must be a non-empty list"; return false; }
        for (size_t k = 0; k < json_array_size(a); k++)
            if (!json_is_object(json_array_get(a, k)) ||
                !json_is_string(json_object_get(json_array_get(a, k), "answer"))) {
                *why = "each answer must be an object with a string 'answer'";
                return false;
            }
        it->answers = json_incref(a);
        json_t *mc = json_object_get(o, "multiple_choice_answer");
        it->ref_answer = xstrdup(json_is_string(mc) ? json_string_value(mc)
                                                    : json_string_value(json_object_get(json_array_get(a, 0), "answer")));
        if (!it->ref_answer) { *why = "out of memory"; return false; }
        return true;
    }
    case MG_TASK_DETECTION:
    case MG_TASK_GROUNDING: {
        if (!get_size(o, it)) { *why = "width/height must be positive integers"; return false; }
        json_t *list = task == MG_TASK_DETECTION ? json_object_get(o, "boxes") : json_object_get(o, "entities");
        if (!json_is_array(list)) { *why = task == MG_TASK_DETECTION ? "boxes must be a list" : "entities must be a list"; return false; }
        size_t total = 0;
        for (size_t k = 0; k < json_array_size(list); k++) {
            json_t *b = task == MG_TASK_DETECTION ? NULL : json_object_get(json_array_get(list, k), "boxes");
            total += task == MG_TASK_DETECTION ? 1 : json_array_size(b);
        }
        if (total > 100000) { *why = "too many boxes"; return false; }
        it->boxes = malloc(sizeof *it->boxes * (total ? total : 1));
        it->box_key = malloc(sizeof *it->box_key * (total ? total : 1));
        if (!it->boxes || !it->box_key) { *why = "out of memory"; return false; }
        int n = 0;
        for (size_t k = 0; k < json_array_size(list); k++) {
            json_t *e = json_array_get(list, k);
            if (task == MG_TASK_DETECTION) {
                if (!get_xywh(e, it->boxes[n])) { *why = "each box must be [x, y, w, h]"; return false; }
                it->box_key[n++] = -1;
                continue;
            }
            if (!json_is_object(e)) { *why = "each entity must be an object"; return false; }
            int c = name_index(json_string_value(json_object_get(e, "color")), world_color_name, WORLD_N_COLORS);
            int s = name_index(json_string_value(json_object_get(e, "shape")), world_shape_name, WORLD_N_SHAPES);
            json_t *bl = json_object_get(e, "boxes");
            if (c < 0 || s < 0 || !json_is_array(bl)) { *why = "entity needs a known color, shape and boxes"; return false; }
            for (size_t q = 0; q < json_array_size(bl); q++) {
                if (!get_xywh(json_array_get(bl, q), it->boxes[n])) { *why = "each box must be [x, y, w, h]"; return false; }
                it->box_key[n++] = c * 64 + s;
            }
        }
        it->n_boxes = n;
        /* to corners */
        for (int k = 0; k < n; k++) {
            it->boxes[k][2] += it->boxes[k][0];
            it->boxes[k][3] += it->boxes[k][1];
        }
        return true;
    }
    case MG_TASK_IDENTIFY:
    case MG_TASK_CAPTION:
        if (!get_objs(json_object_get(o, "objects"), it)) {
            *why = "objects must be a list of [color, shape] with known names";
            return false;
        }
        if (!get_str(o, "answer", &it->ref_answer, false)) { *why = "answer must be a string"; return false; }
        return true;
    default:
        *why = "task not scored";
        return false;
    }
}

/* Loads a ground-truth file; see evalscore.h. */
mg_status eval_set_load(eval_set **out, mg_task task, const char *gt_path, char *err, size_t err_len) {
    if (!out || !gt_path) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "eval: no output or path");
    *out = NULL;
    if (task != MG_TASK_REFER && task != MG_TASK_VQA && task != MG_TASK_DETECTION &&
        task != MG_TASK_GROUNDING && task != MG_TASK_IDENTIFY && task != MG_TASK_CAPTION)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "eval: task %d cannot be scored", (int)task);
    json_error_t je;
    json_t *root = json_load_file(gt_path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        FILE *f = fopen(gt_path, "rb");
        if (!f) return mg_err(err, err_len, MG_ERR_IO, "eval: cannot open %s", gt_path);
        fclose(f);
        return mg_err(err, err_len, MG_ERR_FORMAT, "eval: %s: bad JSON at line %d: %s", gt_path, je.line, je.text);
    }
    json_t *list;
    if (task == MG_TASK_REFER) list = root;
    else if (task == MG_TASK_VQA) list = json_object_get(root, "annotations");
    else list = json_object_get(root, "items");
    if (!json_is_array(list)) {
        json_decref(root);
        return mg_err(err, err_len, MG_ERR_FORMAT, "eval: %s: expected %s", gt_path,
                      task == MG_TASK_REFER ? "a JSON list (RefCOCO format)"
                      : task == MG_TASK_VQA ? "an object with an 'annotations' list (VQA format)"
                                            : "an object with an 'items' list");
    }
    eval_set *s = calloc(1, sizeof *s);
    size_t n = json_array_size(list);
    if (s && n > (size_t)1 << 26) {
        free(s);
        json_decref(root);
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "eval: %s: too many items", gt_path);
    }
    if (s) s->items = calloc(n ? n : 1, sizeof *s->items);
    if (!s || !s->items) {
        free(s);
        json_decref(root);
        return mg_err(err, err_len, MG_ERR_NOMEM, "eval: out of memory");
    }
    s->task = task;
    for (size_t i = 0; i < n; i++) {
        const char *why = "";
        s->n = (int)i + 1;
        if (!load_item(task, json_array_get(list, i), i, &s->items[i], &why)) {
            mg_status st = mg_err(err, err_len, MG_ERR_FORMAT, "eval: %s: item %zu: %s", gt_path, i, why);
            eval_set_free(s);
            json_decref(root);
            return st;
        }
    }
    s->n = (int)n;
    json_decref(root);
    /* ids must be unique */
    for (int i = 0; i < s->n; i++)
        for (int j = i + 1; j < s->n && s->n <= 20000; j++)
            if (strcmp(s->items[i].id, s->items[j].id) == 0) {
                mg_status st = mg_err(err, err_len, MG_ERR_FORMAT, "eval: %s: id %s appears twice",
                                      gt_path, s->items[i].id);
                eval_set_free(s);
                return st;
            }
    *out = s;
    return MG_OK;
}

/* ==== Scoring ==== */

/* Per-item F1 of two sets of (colour, shape) pairs; adds to tp/fp/fn. */
static double set_f1(int (*a)[2], int na, int (*g)[2], int ng, long *tp, long *fp, long *fn) {
    int t = 0;
    for (int i = 0; i < na; i++)
        for (int j = 0; j < ng; j++)
            if (a[i][0] == g[j][0] && a[i][1] == g[j][1]) { t++; break; }
    *tp += t;
    *fp += na - t;
    *fn += ng - t;
    if (na == 0 && ng == 0) return 1;
    if (t == 0) return 0;
    double p = (double)t / na, r = (double)t / ng;
    return 2 * p * r / (p + r);
}

/* Lower-case, stripped, one trailing period dropped. */
static bool text_equal(const char *a, const char *b) {
    char *x = xstrdup(a), *y = xstrdup(b);
    bool eq = false;
    if (x && y) {
        char *s[2] = {x, y};
        for (int k = 0; k < 2; k++) {
            lower_inplace(s[k]);
            strip_inplace(s[k]);
            size_t n = strlen(s[k]);
            if (n && s[k][n - 1] == '.') s[k][n - 1] = 0;
            strip_inplace(s[k]);
        }
        eq = strcmp(x, y) == 0;
    }
    free(x);
    free(y);
    return eq;
}

static double pct(double a, double b) { return b > 0 ? 100.0 * a / b : 0; }

/* Scores every item; see evalscore.h. */
mg_status eval_score(const eval_set *s, const char *const *answers, eval_summary *sum,
                     eval_progress_cb cb, void *user, char *err, size_t err_len) {
    if (!s || !answers || !sum) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "eval: bad arguments");
    memset(sum, 0, sizeof *sum);
    sum->task = s->task;
    sum->n_items = s->n;
    double total = 0, exact = 0;
    for (int i = 0; i < s->n; i++) {
        const eval_item *it = &s->items[i];
        const char *a = answers[i];
        if (!a) {
            sum->n_missing++;
            sum->fn += s->task == MG_TASK_DETECTION || s->task == MG_TASK_GROUNDING ? it->n_boxes
                     : s->task == MG_TASK_IDENTIFY || s->task == MG_TASK_CAPTION   ? it->n_objs : 0;
        } else {
            sum->n_answered++;
            switch (s->task) {
            case MG_TASK_REFER: {
                bool valid;
                int hit = eval_refer_hit(a, it->box, it->w, it->h, &valid);
                total += hit;
                exact += hit;
                sum->n_invalid += !valid;
                break;
            }
            case MG_TASK_VQA: {
                double acc;
                bool ex;
                mg_status st = vqa_item(it, a, &acc, &ex);
                if (st != MG_OK) return mg_err(err, err_len, st, "eval: out of memory");
                total += acc;
                exact += ex;
                break;
            }
            case MG_TASK_DETECTION:
            case MG_TASK_GROUNDING: {
                double (*pb)[4];
                int *pk, np;
                mg_status st = answer_boxes(a, it->w, it->h, &pb, &pk, &np);
                if (st != MG_OK) return mg_err(err, err_len, st, "eval: cannot parse answer %s", it->id);
                bool keyed = s->task == MG_TASK_GROUNDING;
                int tp = match_boxes((const double(*)[4])pb, keyed ? pk : NULL, np,
                                     (const double(*)[4])it->boxes, keyed ? it->box_key : NULL, it->n_boxes);
                free(pb);
                free(pk);
                sum->tp += tp;
                sum->fp += np - tp;
                sum->fn += it->n_boxes - tp;
                sum->n_invalid += np == 0;
                exact += tp == np && tp == it->n_boxes;
                break;
            }
            default: { /* identify, caption */
                int m[64][2];
                int nm = world_mentions(a, m, 64);
                total += set_f1(m, nm, it->objs, it->n_objs, &sum->tp, &sum->fp, &sum->fn);
                sum->n_invalid += nm == 0;
                exact += it->ref_answer && text_equal(a, it->ref_answer);
                break;
            }
            }
        }
        if (cb && cb(user, i + 1, s->n))
            return mg_err(err, err_len, MG_ERR_CANCELLED, "eval: cancelled");
    }
    sum->exact_match = pct(exact, s->n);
    sum->precision = pct((double)sum->tp, (double)(sum->tp + sum->fp));
    sum->recall = pct((double)sum->tp, (double)(sum->tp + sum->fn));
    sum->f1 = sum->precision + sum->recall > 0
                  ? 2 * sum->precision * sum->recall / (sum->precision + sum->recall) : 0;
    if (s->task == MG_TASK_DETECTION || s->task == MG_TASK_GROUNDING) sum->score = sum->f1;
    else sum->score = pct(total, s->n);
    return MG_OK;
}

/* Reads an answers JSONL file and scores it; see evalscore.h. */
mg_status eval_score_file(const eval_set *s, const char *path, eval_summary *sum, eval_progress_cb cb,
                          void *user, char *err, size_t err_len) {
    if (!s || !path || !sum) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "eval: bad arguments");
    FILE *f = fopen(path, "rb");
    if (!f) return mg_err(err, err_len, MG_ERR_IO, "eval: cannot open %s", path);
    char **ans = calloc((size_t)(s->n ? s->n : 1), sizeof *ans);
    if (!ans) { fclose(f); return mg_err(err, err_len, MG_ERR_NOMEM, "eval: out of memory"); }
    mg_status st = MG_OK;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    /* id lookup: linear for small sets, sorted index otherwise would be nicer; sets are small */
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        size_t l = (size_t)len;
        bool blank = true;
        for (size_t k = 0; k < l; k++) blank &= py_space((unsigned char)line[k]);
        if (blank) continue;
        json_error_t je;
        json_t *o = json_loadb(line, l, JSON_REJECT_DUPLICATES, &je);
        if (!o) {
            st = mg_err(err, err_len, MG_ERR_FORMAT, "eval: %s line %ld: bad JSON: %s", path, lineno, je.text);
            break;
        }
        char *id = id_text(json_object_get(o, "id"));
        json_t *av = json_object_get(o, "answer");
        if (!json_is_object(o) || !id || !json_is_string(av)) {
            free(id);
            json_decref(o);
            st = mg_err(err, err_len, MG_ERR_FORMAT,
                        "eval: %s line %ld: expected {\"id\": int or string, \"answer\": string}", path, lineno);
            break;
        }
        int found = -1;
        for (int i = 0; i < s->n && found < 0; i++)
            if (strcmp(s->items[i].id, id) == 0) found = i;
        if (found < 0 || ans[found]) {
            st = mg_err(err, err_len, MG_ERR_FORMAT, "eval: %s line %ld: id %s %s", path, lineno, id,
                        found < 0 ? "is not in the ground truth" : "is answered twice");
            free(id);
            json_decref(o);
            break;
        }
        free(id);
        ans[found] = xstrdup(json_string_value(av));
        json_decref(o);
        if (!ans[found]) { st = mg_err(err, err_len, MG_ERR_NOMEM, "eval: out of memory"); break; }
    }
    if (st == MG_OK && ferror(f)) st = mg_err(err, err_len, MG_ERR_IO, "eval: error reading %s", path);
    free(line);
    fclose(f);
    if (st == MG_OK) st = eval_score(s, (const char *const *)ans, sum, cb, user, err, err_len);
    for (int i = 0; i < s->n; i++) free(ans[i]);
    free(ans);
    return st;
}

/* Summary as one line of JSON; see evalscore.h. */
char *eval_summary_json(const eval_summary *sm) {
    const char *tag = mg_task_tag(sm->task);
    char name[32] = "";
    if (tag && tag[0]) snprintf(name, sizeof name, "%.*s", (int)strlen(tag) - 2, tag + 1);
    json_t *o = json_pack("{s:s, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:I, s:I, s:I}", "task", name,
                          "n_items", sm->n_items, "n_answered", sm->n_answered, "n_missing", sm->n_missing,
                          "n_invalid", sm->n_invalid, "score", sm->score, "exact_match", sm->exact_match,
                          "precision", sm->precision, "recall", sm->recall, "f1", sm->f1,
                          "tp", (json_int_t)sm->tp, "fp", (json_int_t)sm->fp, "fn", (json_int_t)sm->fn);
    if (!o) return NULL;
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(o);
    return s;
}
