/*
 * trainloop.c - the training loop of `minigpt train` (see trainloop.h): vocabulary, data (world
 * or user folder), MiniGPT-v2 template encoding, gradient accumulation, held-out evaluation,
 * checkpoints with the loop's options stored as "trainloop.*" keys (so --resume needs nothing
 * else), and a parameters-only export.
 */
#include "trainloop.h"

#include "tokenizer.h"
#include "world.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SP "\xe2\x96\x81" /* U+2581, SentencePiece's space */

/* ==== Parameters ==== */

/* The demo recipe (docs/DEMO_MODEL.md). */
tl_params tl_default_params(void) {
    tl_params p;
    memset(&p, 0, sizeof p);
    p.cfg = (tr_config){.image_size = 96, .patch_size = 8, .v_embd = 96, .v_layer = 2, .v_head = 4, .v_ff = 256,
                        .v_eps = 1e-6f, .post_eps = 1e-5f, .n_vocab = 0, .n_embd = 128, .n_layer = 3,
                        .n_head = 4, .n_head_kv = 4, .n_ff = 320, .n_ctx = 192, .rms_eps = 1e-5f,
                        .rope_theta = 10000.0f};
    p.seed = 1;
    /* none, grounding, refer, detection, identify, vqa, caption */
    const float w[TL_N_TASKS] = {0.0f, 1.0f, 4.0f, 2.0f, 2.0f, 2.0f, 1.0f};
    memcpy(p.task_weight, w, sizeof w);
    p.batch = 16;
    p.steps = 2000;
    p.opt = tr_opt_default();
    p.opt.lr = 2e-3f;
    p.opt.lr_min = 1e-4f;
    p.opt.warmup = 100;
    p.opt.total = p.steps;
    p.opt.weight_decay = 0.01f;
    p.train_mask = TR_GROUP_VISION | TR_GROUP_PROJ | TR_GROUP_LLM;
    p.n_threads = 2;
    p.ckpt_every = 100;
    p.eval_every = 200;
    p.eval_n = 64;
    return p;
}

/* ==== Small helpers ==== */

static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A set of byte strings (open addressing), insertion order kept. */
typedef struct {
    char **s;
    size_t *len;
    int n, cap;
    int *slot;
    int slot_mask;
} strset;

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static bool strset_grow(strset *t) {
    int ncap = t->cap ? t->cap * 2 : 1024;
    char **ns = realloc(t->s, (size_t)ncap * sizeof *ns);
    if (!ns) return false;
    t->s = ns;
    size_t *nl = realloc(t->len, (size_t)ncap * sizeof *nl);
    if (!nl) return false;
    t->len = nl;
    int nslots = ncap * 2;
    int *sl = malloc((size_t)nslots * sizeof *sl);
    if (!sl) return false;
    for (int i = 0; i < nslots; i++) sl[i] = -1;
    for (int i = 0; i < t->n; i++) {
        int j = (int)(hash_bytes(t->s[i], t->len[i]) & (uint64_t)(nslots - 1));
        while (sl[j] >= 0) j = (j + 1) & (nslots - 1);
        sl[j] = i;
    }
    free(t->slot);
    t->slot = sl;
    t->slot_mask = nslots - 1;
    t->cap = ncap;
    return true;
}

/* Adds s[0..n) if absent; false on memory failure. */
static bool strset_add(strset *t, const char *s, size_t n) {
    if (t->n + 1 > t->cap && !strset_grow(t)) return false;
    int j = (int)(hash_bytes(s, n) & (uint64_t)t->slot_mask);
    while (t->slot[j] >= 0) {
        int o = t->slot[j];
        if (t->len[o] == n && memcmp(t->s[o], s, n) == 0) return true;
        j = (j + 1) & t->slot_mask;
    }
    char *c = malloc(n + 1);
    if (!c) return false;
    memcpy(c, s, n);
    c[n] = 0;
    t->s[t->n] = c;
    t->len[t->n] = n;
    t->slot[j] = t->n++;
    return true;
}

static void strset_free(strset *t) {
    for (int i = 0; i < t->n; i++) free(t->s[i]);
    free(t->s);
    free(t->len);
    free(t->slot);
    memset(t, 0, sizeof *t);
}

/* ==== Vocabulary ==== */

static size_t utf8_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

/* Adds every prefix (>= 2 code points) of the unit u[0..n) that starts with U+2581, '<' or '['. */
static bool add_unit(strset *set, const char *u, size_t n) {
    if (n == 0) return true;
    bool sp = n >= 3 && memcmp(u, SP, 3) == 0;
    if (!sp && u[0] != '<' && u[0] != '[') return true;
    size_t i = utf8_len((unsigned char)u[0]);
    while (i < n) {
        i += utf8_len((unsigned char)u[i]);
        if (i > n) break;
        if (!strset_add(set, u, i)) return false;
    }
    return true;
}

/* Splits a text the way the tokenizer will see it (dummy prefix, spaces as U+2581) into units:
 * words with their leading U+2581, tags <...> and [...] (joined to a preceding U+2581), and single
 * punctuation characters; adds the prefixes of each unit. */
static bool add_text_units(strset *set, const char *text) {
    size_t tl = strlen(text);
    char *s = malloc(3 * tl + 4);
    if (!s) return false;
    size_t n = 0;
    memcpy(s, SP, 3);
    n = 3;
    for (size_t i = 0; i < tl; i++) {
        if (text[i] == ' ') {
            memcpy(s + n, SP, 3);
            n += 3;
        } else s[n++] = text[i];
    }
    bool ok = true;
    size_t start = 0, i = 0;
    bool in_tag = false;
    while (i < n && ok) {
        size_t cl = utf8_len((unsigned char)s[i]);
        bool is_sp = cl == 3 && i + 3 <= n && memcmp(s + i, SP, 3) == 0;
        unsigned char ch = (unsigned char)s[i];
        bool only_sp = i - start == 3 && memcmp(s + start, SP, 3) == 0;
        if (is_sp) {
            ok = add_unit(set, s + start, i - start);
            start = i;
            in_tag = false;
        } else if (i == start) {
            in_tag = ch == '<' || ch == '[';
        } else if (in_tag) {
            /* stays in the unit */
        } else if (only_sp && (ch == '<' || ch == '[' || ch == '{' || ch == '}')) {
            in_tag = ch == '<' || ch == '[';
            if (!in_tag) {
                ok = add_unit(set, s + start, i + 1 - start);
                start = i + 1;
            }
        } else if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch >= 0x80) {
            /* word continues */
        } else {
            ok = add_unit(set, s + start, i - start);
            start = i;
            in_tag = ch == '<' || ch == '[';
        }
        if (ok && in_tag && i > start && (ch == '>' || ch == ']')) {
            ok = add_unit(set, s + start, i + 1 - start);
            start = i + 1;
            in_tag = false;
        }
        i += cl;
    }
    if (ok && start < n) ok = add_unit(set, s + start, n - start);
    free(s);
    return ok;
}

static int cmp_piece(const void *a, const void *b) {
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    size_t lx = strlen(x), ly = strlen(y);
    if (lx != ly) return lx < ly ? -1 : 1;
    return strcmp(x, y);
}

/* Adds the units of the instruction as the prompt shows it and of the answer. */
static bool add_example_units(strset *set, const char *instruction, const char *answer) {
    char buf[WORLD_TEXT_MAX + 64];
    snprintf(buf, sizeof buf, "</Img> %s [/INST]", instruction);
    return add_text_units(set, buf) && add_text_units(set, answer);
}

/* Vocabulary of the world's texts (plus extra_texts). */
mg_status tl_build_vocab(mg_tokenizer **out, const char *const *extra_texts, int n_extra, char *err,
                         size_t err_len) {
    *out = NULL;
    strset set = {0};
    mg_status st = MG_OK;
    world_example *ex = malloc(sizeof *ex * WORLD_MAX_EXAMPLES);
    bool ok = ex != NULL && add_text_units(&set, "[INST] <Img>");
    char buf[64];
    for (int v = 0; v <= 100 && ok; v++) {
        snprintf(buf, sizeof buf, "{<%d><%d><%d><%d>}", v, v, v, v);
        ok = add_text_units(&set, buf) && add_text_units(&set, buf + 1);
    }
    for (int i = 0; i < WORLD_N_SHAPES && ok; i++)
        ok = add_text_units(&set, world_shape_name(i)) && add_text_units(&set, world_shape_plural(i));
    for (int i = 0; i < WORLD_N_COLORS && ok; i++) ok = add_text_units(&set, world_color_name(i));
    for (int i = 0; i < WORLD_N_SIZES && ok; i++) ok = add_text_units(&set, world_size_name(i));
    /* the world's closed vocabulary: the texts of a fixed set of scenes, both instruction styles */
    for (int k = 0; k < 400 && ok; k++) {
        world_scene sc;
        if (world_scene_generate(&sc, 1, (uint64_t)k, 64, k % 2 == 1, err, err_len) != MG_OK) {
            st = MG_ERR_INTERNAL;
            ok = false;
            break;
        }
        for (int style = 0; style < 2 && ok; style++) {
            int n = 0;
            if (world_scene_examples(&sc, 0x7Fu, style == 1, ex, WORLD_MAX_EXAMPLES, &n, err, err_len) != MG_OK) {
                st = MG_ERR_INTERNAL;
                ok = false;
            }
            for (int i = 0; i < n && ok; i++) ok = add_example_units(&set, ex[i].instruction, ex[i].answer);
        }
        world_scene_free(&sc);
    }
    for (int i = 0; i < n_extra && ok; i++) ok = add_text_units(&set, extra_texts[i]);
    free(ex);
    if (!ok) {
        strset_free(&set);
        return st != MG_OK ? st : mg_err(err, err_len, MG_ERR_NOMEM, "vocabulary: out of memory");
    }
    qsort(set.s, (size_t)set.n, sizeof *set.s, cmp_piece); /* deterministic order (len[] now stale) */

    /* <unk> <s> </s>, 256 bytes, U+2581 and printable ASCII, then the unit prefixes */
    const int n_base = 3 + 256 + 1 + 94;
    int64_t nv = n_base + set.n;
    mg_tokenizer *t = NULL;
    st = tok_vocab_create(&t, nv, err, err_len);
    int32_t id = 0;
    if (st == MG_OK) st = tok_vocab_set(t, id++, "<unk>", 5, 0.0f, TOK_TYPE_UNKNOWN, err, err_len);
    if (st == MG_OK) st = tok_vocab_set(t, id++, "<s>", 3, 0.0f, TOK_TYPE_CONTROL, err, err_len);
    if (st == MG_OK) st = tok_vocab_set(t, id++, "</s>", 4, 0.0f, TOK_TYPE_CONTROL, err, err_len);
    for (int b = 0; b < 256 && st == MG_OK; b++) {
        snprintf(buf, sizeof buf, "<0x%02X>", b);
        st = tok_vocab_set(t, id++, buf, 6, 0.0f, TOK_TYPE_BYTE, err, err_len);
    }
    if (st == MG_OK) st = tok_vocab_set(t, id++, SP, 3, -1.0f, TOK_TYPE_NORMAL, err, err_len);
    for (int c = 0x21; c < 0x7F && st == MG_OK; c++) {
        char ch = (char)c;
        st = tok_vocab_set(t, id++, &ch, 1, -1.0f, TOK_TYPE_NORMAL, err, err_len);
    }
    for (int i = 0; i < set.n && st == MG_OK; i++)
        st = tok_vocab_set(t, id++, set.s[i], strlen(set.s[i]), -2.0f - (float)i, TOK_TYPE_NORMAL, err, err_len);
    strset_free(&set);
    if (st != MG_OK) {
        mg_tokenizer_free(t);
        return st;
    }
    tok_options o = {.bos = 1, .eos = 2, .unk = 0, .pad = -1, .add_bos = true, .add_eos = false,
                     .prefix_mode = TOK_PREFIX_ALWAYS, .escape_ws = true, .remove_extra_ws = false,
                     .byte_fallback = true};
    tok_vocab_set_options(t, &o);
    st = tok_vocab_finish(&t, err, err_len);
    if (st == MG_OK) *out = t;
    return st;
}

/* ==== Encoding ==== */

/* MiniGPT-v2 template, tokenized per segment as the engine does (mgpt.c), answer + EOS. */
mg_status tl_encode(const mg_tokenizer *tok, const char *instruction, const char *answer, int32_t *ids,
                    uint8_t *mask, int max, int *n_text, int *img_pos, char *err, size_t err_len) {
    mg_chat *c = NULL;
    mg_status st = mg_chat_create(&c, MG_CHAT_MINIGPT_V2);
    if (st != MG_OK) return mg_err(err, err_len, st, "encode: cannot create the template");
    mg_prompt pr;
    (void)((st = mg_chat_add_image(c)) || (st = mg_chat_ask(c, instruction)) ||
           (st = mg_chat_prompt(c, &pr, err, err_len)));
    int n = 0, pos = 0;
    if (st == MG_OK && pr.n_segments != 2) st = mg_err(err, err_len, MG_ERR_FORMAT, "encode: the instruction holds <ImageHere>");
    for (int s = 0; s < 2 && st == MG_OK; s++) {
        int k = 0;
        st = mg_tokenize(tok, pr.segments[s].text, pr.segments[s].len, pr.segments[s].add_bos, 1, ids + n, max - n, &k);
        if (st != MG_OK) st = mg_err(err, err_len, st, "encode: the prompt does not fit in %d tokens", max);
        for (int i = 0; i < k && st == MG_OK; i++) mask[n + i] = 0;
        n += k;
        if (s == 0) pos = n;
    }
    mg_chat_free(c);
    if (st != MG_OK) return st;
    int k = 0;
    st = mg_tokenize(tok, answer, strlen(answer), 0, 0, ids + n, max - n - 1, &k);
    if (st != MG_OK || n + k + 1 > max) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "encode: the example does not fit in %d tokens", max);
    for (int i = 0; i < k; i++) mask[n + i] = 1;
    n += k;
    ids[n] = mg_token_eos(tok);
    mask[n++] = 1;
    *n_text = n;
    *img_pos = pos;
    return MG_OK;
}

/* ==== User folder ==== */

static char *path_join(const char *dir, const char *rel) {
    size_t a = strlen(dir), b = strlen(rel);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    if (rel[0] == '/') memcpy(p, rel, b + 1);
    else snprintf(p, a + b + 2, "%s/%s", dir, rel);
    return p;
}

static bool folder_push(tl_folder *f, int *cap, const char *dir, const char *img, const char *ins, const char *ans) {
    if (f->n == *cap) {
        int nc = *cap ? *cap * 2 : 64;
        char **a = realloc(f->image, (size_t)nc * sizeof *a);
        if (!a) return false;
        f->image = a;
        char **b = realloc(f->instruction, (size_t)nc * sizeof *b);
        if (!b) return false;
        f->instruction = b;
        char **c = realloc(f->answer, (size_t)nc * sizeof *c);
        if (!c) return false;
        f->answer = c;
        *cap = nc;
    }
    f->image[f->n] = path_join(dir, img);
    f->instruction[f->n] = strdup(ins);
    f->answer[f->n] = strdup(ans);
    f->n++;
    return f->image[f->n - 1] && f->instruction[f->n - 1] && f->answer[f->n - 1];
}

/* Reads one {instruction, answer} object; returns a message or NULL. */
static const char *pair_of(json_t *o, const char **ins, const char **ans) {
    json_t *i = json_object_get(o, "instruction"), *a = json_object_get(o, "answer");
    if (!i) return "missing \"instruction\"";
    if (!a) return "missing \"answer\"";
    if (!json_is_string(i) || !json_is_string(a)) return "\"instruction\" and \"answer\" must be strings";
    *ins = json_string_value(i);
    *ans = json_string_value(a);
    if (!**ans) return "empty \"answer\"";
    if (strstr(*ins, "<ImageHere>")) return "the instruction must not contain <ImageHere>";
    return NULL;
}

/* DIR/data.jsonl. */
mg_status tl_folder_load(tl_folder *out, const char *dir, char *err, size_t err_len) {
    memset(out, 0, sizeof *out);
    char *path = path_join(dir, "data.jsonl");
    if (!path) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        mg_status st = mg_err(err, err_len, MG_ERR_IO, "cannot open %s", path);
        free(path);
        return st;
    }
    char *line = NULL;
    size_t lcap = 0;
    ssize_t got;
    int lineno = 0, cap = 0;
    mg_status st = MG_OK;
    while (st == MG_OK && (got = getline(&line, &lcap, fp)) >= 0) {
        lineno++;
        bool blank = true;
        for (ssize_t i = 0; i < got; i++)
            if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r' && line[i] != '\n') blank = false;
        if (blank) continue;
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)got, 0, &je);
        const char *why = NULL;
        if (!o) {
            st = mg_err(err, err_len, MG_ERR_FORMAT, "data.jsonl line %d: not JSON (%s)", lineno, je.text);
            break;
        }
        json_t *img = json_object_get(o, "image"), *exs = json_object_get(o, "examples");
        const char *ins = NULL, *ans = NULL;
        if (!json_is_object(o)) why = "not a JSON object";
        else if (!json_is_string(img) || !json_string_length(img)) why = "missing \"image\" (a path relative to the folder)";
        else if (exs) {
            if (!json_is_array(exs) || json_array_size(exs) == 0) why = "\"examples\" must be a non-empty array";
            for (size_t k = 0; !why && k < json_array_size(exs); k++) {
                json_t *e = json_array_get(exs, k);
                if (!json_is_object(e)) why = "an example is not an object";
                else if (!(why = pair_of(e, &ins, &ans)) && !folder_push(out, &cap, dir, json_string_value(img), ins, ans))
                    why = "out of memory";
            }
        } else if (!(why = pair_of(o, &ins, &ans)) && !folder_push(out, &cap, dir, json_string_value(img), ins, ans))
            why = "out of memory";
        if (why) st = mg_err(err, err_len, MG_ERR_FORMAT, "data.jsonl line %d: %s", lineno, why);
        json_decref(o);
    }
    free(line);
    fclose(fp);
    free(path);
    if (st == MG_OK && out->n == 0) st = mg_err(err, err_len, MG_ERR_FORMAT, "data.jsonl: no examples in %s", dir);
    if (st != MG_OK) tl_folder_free(out);
    return st;
}

/* Frees a folder's lists. */
void tl_folder_free(tl_folder *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) {
        free(f->image[i]);
        free(f->instruction[i]);
        free(f->answer[i]);
    }
    free(f->image);
    free(f->instruction);
    free(f->answer);
    memset(f, 0, sizeof *f);
}

/* ==== Data source ==== */

typedef struct {
    const tl_params *p;
    const mg_tokenizer *tok;
    tl_folder folder;
    bool use_folder;
    int S, n_img, max_text;
    float *image;          /* [3, S, S] */
    int32_t *plabels;      /* [slots, Np] auxiliary patch labels (when the model has the head) */
    int n_patch, patch;    /* Np and the patch size */
    bool shape_labels;     /* the head classifies shape only (WORLD_PATCH_SHAPE_CLASSES) */
    bool heads_learn;      /* the tower and its heads learn: training examples need labels and masks (a
                            * frozen tower's heads change no gradient, so none are made for them) */
    float *aux_loss;       /* [slots] */
    float *pmasks;         /* [slots, Np * P * P] auxiliary pixel masks (when the model has the head) */
    float *mask_loss;      /* [slots] */
    int32_t *ids;
    uint8_t *mask;
    world_example *ex;     /* [threads][WORLD_MAX_EXAMPLES] scratch */
    mg_status *slot_st;    /* [slots] status of each slot of a batch built on the threads */
    char (*slot_err)[256]; /* [slots] its message */
    world_opts scene;      /* the world's restrictions (p->scene parsed) */
} tl_data;

/* Builds example number c (training stream) or held-out example c (eval) into d's buffers of
 * batch slot `slot`; exbuf holds WORLD_MAX_EXAMPLES examples of scratch (one per thread, so
 * slots can be built side by side: nothing else in d is written outside the slot's own rows). */
static mg_status data_get_with(tl_data *d, world_example *exbuf, uint64_t c, bool eval, int slot, tr_example *out,
                               char *err, size_t err_len) {
    float *image = d->image + (size_t)slot * 3 * (size_t)d->S * (size_t)d->S;
    int32_t *ids = d->ids + (size_t)slot * (size_t)d->max_text;
    uint8_t *mask = d->mask + (size_t)slot * (size_t)d->max_text;
    const tl_params *p = d->p;
    uint64_t r = mix64(p->seed * 0x100000001B3ull ^ mix64(c) ^ (eval ? 0xE7A1ull : 0));
    int n_text = 0, img_pos = 0;
    uint64_t key = 0;
    mg_status st;
    if (d->use_folder) {
        int i = eval ? (int)(c % (uint64_t)d->folder.n) : (int)(r % (uint64_t)d->folder.n);
        st = mg_image_preprocess_file(d->folder.image[i], d->S, 0, image, err, err_len);
        if (st == MG_OK)
            st = tl_encode(d->tok, d->folder.instruction[i], d->folder.answer[i], ids, mask, d->max_text, &n_text,
                           &img_pos, err, err_len);
        if (st != MG_OK) return st;
    } else {
        /* a fresh scene per example; skip examples longer than the context (deterministically) */
        for (int attempt = 0;; attempt++) {
            world_scene sc;
            const uint64_t per = !eval && p->per_image > 1 ? (uint64_t)p->per_image : 1;
            uint64_t index = c / per * 256 + (uint64_t)attempt;
            /* (tries past 256 reuse the next examples' scenes: harmless, and rare) */
            if (attempt >= 4096)
                return mg_err(err, err_len, MG_ERR_INTERNAL, "no usable scene for example %llu (filters too strict?)",
                              (unsigned long long)c);
            st = world_scene_generate_opts(&sc, p->seed, index, d->S, eval, &d->scene, err, err_len);
            if (st != MG_OK) return st;
            bool hard = p->easy && sc.background != WORLD_BG_PLAIN;
            for (int o = 0; p->easy && o < sc.n_objects; o++) hard |= sc.objects[o].size == WORLD_SMALL;
            if ((p->max_objects > 0 && sc.n_objects > p->max_objects) || hard) {
                world_scene_free(&sc);
                continue;
            }
            int n = 0;
            unsigned tmask = 0;
            for (int t = 0; t < TL_N_TASKS; t++)
                if (p->task_weight[t] > 0) tmask |= 1u << t;
            /* a quarter of the training examples use the fixed (evaluation / demo) instructions */
            bool style = eval || (mix64(r ^ 0x5157ull) & 3) == 0;
            st = world_scene_examples(&sc, tmask, style, exbuf, WORLD_MAX_EXAMPLES, &n, err, err_len);
            if (st != MG_OK || n == 0) {
                world_scene_free(&sc);
                if (st != MG_OK) return st;
                continue;
            }
            /* weighted task among those this scene has, then one of its examples */
            double tot = 0;
            for (int i = 0; i < n; i++) tot += p->task_weight[exbuf[i].task];
            r = mix64(r);
            double u = (double)(r >> 11) * (1.0 / 9007199254740992.0) * tot;
            int pick = n - 1;
            for (int i = 0; i < n; i++) {
                u -= p->task_weight[exbuf[i].task];
                if (u < 0) {
                    pick = i;
                    break;
                }
            }
            st = tl_encode(d->tok, exbuf[pick].instruction, exbuf[pick].answer, ids, mask, d->max_text, &n_text,
                           &img_pos, err, err_len);
            if (st == MG_OK) mg_image_to_tensor(&sc.image, NULL, NULL, image);
            if (st == MG_OK && d->plabels && (eval || d->heads_learn)) {
                int32_t *lab = d->plabels + (size_t)slot * (size_t)d->n_patch;
                st = world_patch_labels(&sc, d->patch, lab, err, err_len);
                for (int i = 0; st == MG_OK && d->shape_labels && i < d->n_patch; i++)
                    if (lab[i] > 0) lab[i] = 1 + (lab[i] - 1) % WORLD_N_SHAPES;
                for (int i = 0; st == MG_OK && p->aux_objects && !eval && i < d->n_patch; i++)
                    if (lab[i] == 0) lab[i] = -1; /* background left out of the loss */
            }
            if (st == MG_OK && d->pmasks && !eval && d->heads_learn)
                st = world_patch_masks(&sc, d->patch,
                                       d->pmasks + (size_t)slot * (size_t)d->n_patch * (size_t)(d->patch * d->patch),
                                       err, err_len);
            world_scene_free(&sc);
            if (st == MG_OK) {
                if (per > 1) key = index + 1; /* the same scene (and image) for the same index */
                break;
            }
        }
    }
    memset(out, 0, sizeof *out);
    out->image = image;
    out->ids = ids;
    out->mask = mask;
    out->n_text = n_text;
    out->img_pos = img_pos;
    out->image_key = key;
    if (d->plabels && !d->use_folder && !eval && d->heads_learn) {
        out->patch_labels = d->plabels + (size_t)slot * (size_t)d->n_patch;
        out->aux_weight = p->aux_weight;
        out->aux_loss = &d->aux_loss[slot];
    }
    if (d->pmasks && !d->use_folder && !eval && d->heads_learn) {
        out->patch_masks = d->pmasks + (size_t)slot * (size_t)d->n_patch * (size_t)(d->patch * d->patch);
        out->mask_weight = p->mask_weight;
        out->mask_loss = &d->mask_loss[slot];
    }
    return MG_OK;
}

static mg_status data_get(tl_data *d, uint64_t c, bool eval, int slot, tr_example *out, char *err, size_t err_len) {
    return data_get_with(d, d->ex, c, eval, slot, out, err, err_len);
}

/* A training batch built on the pool's threads: slot b is example first + b, built by the thread
 * whose part holds b (each example depends on its number alone, so the batch is the same
 * whatever the thread count). */
typedef struct {
    tl_data *d;
    uint64_t first;
    tr_example *ex;
    mg_status *st;   /* [batch] */
    char (*err)[256]; /* [batch] */
} batch_job;

static void batch_task(void *ctx, int64_t i0, int64_t i1, int ith) {
    batch_job *j = ctx;
    world_example *exbuf = j->d->ex + (size_t)ith * WORLD_MAX_EXAMPLES;
    for (int64_t b = i0; b < i1; b++)
        j->st[b] = data_get_with(j->d, exbuf, j->first + (uint64_t)b, false, (int)b, &j->ex[b], j->err[b],
                                 sizeof j->err[b]);
}

/* Builds the batch of examples first .. first + n - 1 into ex[0..n); the first slot's error
 * (in slot order) is the one reported. */
static mg_status data_batch(tl_data *d, mg_pool *pool, uint64_t first, int n, tr_example *ex, char *err,
                            size_t err_len) {
    batch_job j = {d, first, ex, d->slot_st, d->slot_err};
    mg_pool_run(pool, n, 1, batch_task, &j);
    for (int b = 0; b < n; b++)
        if (d->slot_st[b] != MG_OK) return mg_err(err, err_len, d->slot_st[b], "%s", d->slot_err[b]);
    return MG_OK;
}

/* ==== Checkpoint keys ==== */

/* The key source of every checkpoint: tokenizer + the loop's options. *buf keeps the bytes. */
static mg_status make_kv(const tl_params *p, const mg_tokenizer *tok, gguf_file **out, char **buf, char *err,
                         size_t err_len) {
    gguf_writer *w = gguf_writer_create();
    if (!w) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    mg_status st = tok_write_gguf(tok, w);
    (void)(st || (st = gguf_writer_set_u64(w, "trainloop.seed", p->seed)) ||
           (st = gguf_writer_set_u32(w, "trainloop.batch", (uint32_t)p->batch)) ||
           (st = gguf_writer_set_u64(w, "trainloop.steps", (uint64_t)p->steps)) ||
           (st = gguf_writer_set_f32(w, "trainloop.lr", p->opt.lr)) ||
           (st = gguf_writer_set_f32(w, "trainloop.lr_min", p->opt.lr_min)) ||
           (st = gguf_writer_set_u64(w, "trainloop.warmup", (uint64_t)p->opt.warmup)) ||
           (st = gguf_writer_set_f32(w, "trainloop.weight_decay", p->opt.weight_decay)) ||
           (st = gguf_writer_set_f32(w, "trainloop.clip", p->opt.clip)) ||
           (st = gguf_writer_set_u32(w, "trainloop.mode", (uint32_t)p->train_mask)) ||
           (st = gguf_writer_set_arr(w, "trainloop.task_weights", GGUF_TYPE_FLOAT32, p->task_weight, TL_N_TASKS)) ||
           (st = gguf_writer_set_u32(w, "trainloop.max_objects", (uint32_t)p->max_objects)) ||
           (st = gguf_writer_set_bool(w, "trainloop.easy", p->easy)) ||
           (st = gguf_writer_set_str(w, "trainloop.scene", p->scene)) ||
           (st = gguf_writer_set_f32(w, "trainloop.aux_weight", p->aux_weight)) ||
           /* written only when set, so files of runs without it stay as they were */
           (p->aux_objects && (st = gguf_writer_set_bool(w, "trainloop.aux_objects", true))) ||
           (p->mask_weight > 0 && (st = gguf_writer_set_f32(w, "trainloop.mask_weight", p->mask_weight))) ||
           (p->per_image > 1 && (st = gguf_writer_set_u32(w, "trainloop.per_image", (uint32_t)p->per_image))) ||
           (st = gguf_writer_set_str(w, "trainloop.data", p->data_dir ? p->data_dir : "")));
    size_t size = 0;
    FILE *fp = st == MG_OK ? open_memstream(buf, &size) : NULL;
    if (st == MG_OK && !fp) st = MG_ERR_NOMEM;
    if (st == MG_OK) st = gguf_writer_write_header(w, fp, err, err_len);
    if (fp) fclose(fp);
    gguf_writer_free(w);
    if (st == MG_OK) st = gguf_open_buffer(out, *buf, size, err, err_len);
    if (st != MG_OK) return mg_err(err, err_len, st, "cannot build the checkpoint keys");
    return MG_OK;
}

/* Restores the loop options stored by make_kv. */
static mg_status read_kv(const gguf_file *f, tl_params *p, char *err, size_t err_len) {
    int64_t v;
    uint32_t u;
    const gguf_kv *kv = gguf_find_kv(f, "trainloop.seed");
    if (!kv) return mg_err(err, err_len, MG_ERR_FORMAT, "resume: the file has no trainloop.* keys (not a `minigpt train` checkpoint)");
    mg_status st;
    if ((st = gguf_get_i64(f, "trainloop.seed", &v, err, err_len))) return st;
    p->seed = (uint64_t)v;
    if ((st = gguf_get_u32(f, "trainloop.batch", &u, err, err_len))) return st;
    p->batch = (int)u;
    if ((st = gguf_get_i64(f, "trainloop.steps", &v, err, err_len))) return st;
    p->steps = v;
    if ((st = gguf_get_i64(f, "trainloop.warmup", &v, err, err_len))) return st;
    p->opt.warmup = v;
    if ((st = gguf_get_f32(f, "trainloop.lr", &p->opt.lr, err, err_len)) ||
        (st = gguf_get_f32(f, "trainloop.lr_min", &p->opt.lr_min, err, err_len)) ||
        (st = gguf_get_f32(f, "trainloop.weight_decay", &p->opt.weight_decay, err, err_len)) ||
        (st = gguf_get_f32(f, "trainloop.clip", &p->opt.clip, err, err_len)) ||
        (st = gguf_get_u32(f, "trainloop.mode", &u, err, err_len)))
        return st;
    p->train_mask = (int)u;
    if ((st = gguf_get_u32(f, "trainloop.max_objects", &u, err, err_len))) return st;
    p->max_objects = (int)u;
    if ((st = gguf_get_bool(f, "trainloop.easy", &p->easy, err, err_len))) return st;
    gguf_str sc;
    p->scene[0] = 0;
    if (gguf_get_str(f, "trainloop.scene", &sc, NULL, 0) == MG_OK) {
        if (sc.len >= sizeof p->scene) return mg_err(err, err_len, MG_ERR_FORMAT, "resume: stored scene spec too long");
        memcpy(p->scene, sc.ptr, sc.len);
        p->scene[sc.len] = 0;
    }
    if ((st = gguf_get_f32_def(f, "trainloop.aux_weight", 0.0f, &p->aux_weight, err, err_len))) return st;
    if ((st = gguf_get_f32_def(f, "trainloop.mask_weight", 0.0f, &p->mask_weight, err, err_len))) return st;
    p->per_image = 0;
    if (gguf_find_kv(f, "trainloop.per_image")) {
        if ((st = gguf_get_u32(f, "trainloop.per_image", &u, err, err_len))) return st;
        if (u > TL_MAX_PER_IMAGE) return mg_err(err, err_len, MG_ERR_FORMAT, "resume: bad stored per_image %u", u);
        p->per_image = (int)u;
    }
    p->aux_objects = false;
    if (gguf_find_kv(f, "trainloop.aux_objects") &&
        (st = gguf_get_bool(f, "trainloop.aux_objects", &p->aux_objects, err, err_len)))
        return st;
    const gguf_kv *arr = NULL;
    if ((st = gguf_get_arr(f, "trainloop.task_weights", GGUF_TYPE_FLOAT32, &arr, err, err_len))) return st;
    for (int t = 0; t < TL_N_TASKS && (uint64_t)t < arr->n; t++) p->task_weight[t] = (float)gguf_arr_f64(arr, (uint64_t)t);
    if (p->batch < 1 || p->steps < 1) return mg_err(err, err_len, MG_ERR_FORMAT, "resume: bad stored batch/steps");
    return MG_OK;
}

/* An F32 tensor of two dimensions {ne0, ne1}. */
static bool f32_2d(const gguf_tensor *t, int64_t ne0, int64_t ne1) {
    return t && t->type == MG_TYPE_F32 && t->n_dims == 2 && t->ne[0] == ne0 && t->ne[1] == ne1 &&
           t->nbytes == (uint64_t)ne0 * (uint64_t)ne1 * sizeof(float);
}

/* When the checkpoint has adapters lora.X.a / lora.X.b for tensor t = X.weight: a malloc'd copy of
 * t with them merged into *merged (else *merged = NULL). */
static mg_status export_merge(const gguf_file *f, const gguf_tensor *t, float **merged, char *err, size_t err_len) {
    *merged = NULL;
    static const char sfx[] = ".weight";
    const size_t ls = sizeof sfx - 1;
    if (t->name.len <= ls || t->name.len > 200 || memcmp(t->name.ptr + t->name.len - ls, sfx, ls) != 0) return MG_OK;
    char na[256], nb[256];
    const int nx = (int)(t->name.len - ls);
    snprintf(na, sizeof na, "lora.%.*s.a", nx, t->name.ptr);
    snprintf(nb, sizeof nb, "lora.%.*s.b", nx, t->name.ptr);
    const gguf_tensor *ta = gguf_find_tensor(f, na), *tb = gguf_find_tensor(f, nb);
    if (!ta && !tb) return MG_OK;
    const int64_t r = ta ? ta->ne[1] : 0;
    if (!ta || !tb || !f32_2d(t, t->ne[0], t->ne[1]) || r < 1 || !f32_2d(ta, t->ne[0], r) ||
        !f32_2d(tb, r, t->ne[1]))
        return mg_err(err, err_len, MG_ERR_FORMAT, "export: the adapters %s / %s do not fit %.*s", na, nb,
                      (int)t->name.len, t->name.ptr);
    float alpha;
    mg_status st = gguf_get_f32(f, "train.lora_alpha", &alpha, err, err_len);
    if (st != MG_OK) return mg_err(err, err_len, st, "export: LoRA adapters without train.lora_alpha");
    float *w = malloc(t->nbytes);
    if (!w) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    memcpy(w, t->data, t->nbytes);
    tr_lora_delta(w, (const float *)ta->data, (const float *)tb->data, t->ne[1], t->ne[0], r, alpha / (float)r);
    *merged = w;
    return MG_OK;
}

/* Parameters-only copy, adapters merged. */
mg_status tl_export(const char *ckpt, const char *out, char *err, size_t err_len) {
    gguf_file *f = NULL;
    mg_status st = gguf_open(&f, ckpt, err, err_len);
    if (st != MG_OK) return st;
    gguf_writer *w = gguf_writer_create();
    if (!w) st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    if (st == MG_OK) st = gguf_writer_copy_kv(w, f);
    char **names = calloc((size_t)gguf_n_tensors(f) + 1, sizeof *names);
    float **merged = calloc((size_t)gguf_n_tensors(f) + 1, sizeof *merged);
    if (!names || !merged) st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    bool failed = false; /* err holds the message */
    for (int64_t i = 0; i < gguf_n_tensors(f) && st == MG_OK; i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        if (t->name.len >= 4 && (memcmp(t->name.ptr, "opt.", 4) == 0 || memcmp(t->name.ptr, "aux.", 4) == 0))
            continue; /* optimizer state and the auxiliary head are training-only */
        if (t->name.len >= 5 && memcmp(t->name.ptr, "lora.", 5) == 0) continue; /* merged below */
        if ((st = export_merge(f, t, &merged[i], err, err_len)) != MG_OK) {
            failed = true;
            break;
        }
        names[i] = gguf_str_dup(t->name);
        if (!names[i]) st = MG_ERR_NOMEM;
        else st = gguf_writer_add_tensor(w, names[i], t->type, t->n_dims, t->ne, merged[i] ? merged[i] : t->data);
    }
    if (st == MG_OK) st = gguf_writer_write_file(w, out, err, err_len);
    else if (!failed) mg_err(err, err_len, st, "export: cannot build %s", out);
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
        if (names) free(names[i]);
        if (merged) free(merged[i]);
    }
    free(names);
    free(merged);
    gguf_writer_free(w);
    gguf_close(f);
    return st;
}

/* ==== The loop ==== */

_Static_assert(TR_AUX_SPLIT_FIRST == 1 + WORLD_N_SHAPES && TR_AUX_SPLIT_CLASSES == 2 + WORLD_N_SHAPES + WORLD_N_COLORS,
               "the split head's groups are the world's shapes and colours");

/* Classes of the auxiliary head for TL_AUX_* labels (0: TL_AUX_DEFAULT, whatever the file has). */
static int head_classes(int labels) {
    return labels == TL_AUX_SHAPE   ? WORLD_PATCH_SHAPE_CLASSES
           : labels == TL_AUX_JOINT ? WORLD_PATCH_CLASSES
           : labels == TL_AUX_SPLIT ? TR_AUX_SPLIT_CLASSES
                                    : 0;
}

/* Teacher-forced loss, token accuracy and exact answers over eval_n held-out examples. */
static mg_status run_eval(tr_model *m, tl_data *d, tl_progress *pg, char *err, size_t err_len) {
    double sum = 0, sum_other = 0;
    long ok_tok = 0, n_tok = 0, exact = 0, obj_patch = 0, ok_color = 0, ok_shape = 0;
    const int C = d->plabels ? m->cfg.aux_classes : 0;
    const int V = m->cfg.n_vocab;
    /* example e lives in slot e % 2; example e + 1 (built once, in the other slot) lends its image */
    tr_example ex, next;
    mg_status st = d->p->eval_n > 0 ? data_get(d, 0, true, 0, &next, err, err_len) : MG_OK;
    if (st != MG_OK) return st;
    for (int e = 0; e < d->p->eval_n; e++) {
        float loss;
        ex = next;
        st = data_get(d, (uint64_t)(e + 1), true, (e + 1) & 1, &next, err, err_len);
        if (st == MG_OK) { /* first with another held-out image (how much answers depend on it), then its own */
            tr_example sw = ex;
            sw.image = next.image;
            st = tr_forward_backward(m, &sw, false, 1.0f, &loss, err, err_len);
            sum_other += loss;
        }
        if (st == MG_OK && C > 0) { /* its own image, with the auxiliary head's patch labels */
            ex.patch_labels = d->plabels + (size_t)(e & 1) * (size_t)d->n_patch;
            ex.aux_weight = 1.0f;
        }
        if (st == MG_OK) st = tr_forward_backward(m, &ex, false, 1.0f, &loss, err, err_len);
        if (st != MG_OK) return st;
        sum += loss;
        const float *al = C > 0 ? tr_last_aux_logits(m) : NULL;
        for (int i = 0; al && i < d->n_patch; i++) { /* object patches: colour and shape of the argmax */
            const int32_t t = ex.patch_labels[i];
            if (t <= 0 || t >= C) continue;
            const float *l = al + (size_t)i * (size_t)C;
            obj_patch++;
            if (C == TR_AUX_SPLIT_CLASSES) { /* argmax of each softmax */
                int bs = 0, bc = TR_AUX_SPLIT_FIRST;
                for (int k = 1; k < TR_AUX_SPLIT_FIRST; k++)
                    if (l[k] > l[bs]) bs = k;
                for (int k = TR_AUX_SPLIT_FIRST + 1; k < C; k++)
                    if (l[k] > l[bc]) bc = k;
                int32_t ts, tc;
                tr_aux_split_targets(t, &ts, &tc);
                ok_shape += bs == ts;
                ok_color += bc - TR_AUX_SPLIT_FIRST == tc;
                continue;
            }
            int best = 0;
            for (int k = 1; k < C; k++)
                if (l[k] > l[best]) best = k;
            if (best > 0 && d->shape_labels) {
                ok_shape += best == t;
            } else if (best > 0) {
                ok_color += (best - 1) / WORLD_N_SHAPES == (t - 1) / WORLD_N_SHAPES;
                ok_shape += (best - 1) % WORLD_N_SHAPES == (t - 1) % WORLD_N_SHAPES;
            }
        }
        const float *lg = tr_last_logits(m);
        bool all = true;
        for (int j = 1; j < ex.n_text; j++) {
            if (!ex.mask[j]) continue;
            int row = (j < ex.img_pos ? j : j + d->n_img) - 1;
            const float *l = lg + (size_t)row * V;
            int best = 0;
            for (int v = 1; v < V; v++)
                if (l[v] > l[best]) best = v;
            n_tok++;
            if (best == ex.ids[j]) ok_tok++;
            else all = false;
        }
        exact += all;
    }
    pg->event = TL_EV_EVAL;
    pg->eval_loss = d->p->eval_n ? (float)(sum / d->p->eval_n) : 0.0f;
    pg->eval_tok_acc = n_tok ? (float)ok_tok / (float)n_tok : 0.0f;
    pg->eval_exact = d->p->eval_n ? (float)exact / (float)d->p->eval_n : 0.0f;
    pg->eval_image_gain = d->p->eval_n ? (float)((sum_other - sum) / d->p->eval_n) : 0.0f;
    pg->eval_patch_color = C > 0 && obj_patch && !d->shape_labels ? (float)ok_color / (float)obj_patch : -1.0f;
    pg->eval_patch_shape = C > 0 && obj_patch ? (float)ok_shape / (float)obj_patch : -1.0f;
    return MG_OK;
}

/* The whole training run. */
mg_status tl_train(const tl_params *pin, tl_progress_fn cb, void *user, char *err, size_t err_len) {
    tl_params p = *pin;
    tr_model *m = NULL;
    mg_tokenizer *tok = NULL;
    gguf_file *kvf = NULL;
    char *kvbuf = NULL;
    tl_data d = {0};
    tr_example *batch_ex = NULL;
    float *batch_loss = NULL;
    mg_status st = MG_OK;
    d.use_folder = p.data_dir && *p.data_dir;

    if (p.resume_path || p.init_path) {
        const char *src = p.resume_path ? p.resume_path : p.init_path;
        gguf_file *f = NULL;
        st = gguf_open(&f, src, err, err_len);
        if (st == MG_OK) st = tok_load_gguf(&tok, f, err, err_len);
        if (st == MG_OK && p.resume_path) {
            st = read_kv(f, &p, err, err_len);
            gguf_str ds;
            if (st == MG_OK && gguf_get_str(f, "trainloop.data", &ds, NULL, 0) == MG_OK && ds.len) {
                static char dbuf[4096];
                snprintf(dbuf, sizeof dbuf, "%.*s", (int)ds.len, ds.ptr);
                p.data_dir = dbuf;
                d.use_folder = true;
            }
        }
        gguf_close(f);
        /* --init with --aux-labels: the head of those labels (a fresh one when the file's has others) */
        const int head =
            p.init_path && !p.resume_path && p.aux_weight > 0 && !d.use_folder ? head_classes(p.aux_labels) : 0;
        if (st == MG_OK)
            st = tr_load_with(&m, src, p.n_threads, p.mask_weight > 0 && !d.use_folder, head, err, err_len);
        if (st == MG_OK && p.init_path && !p.resume_path) {
            m->step = 0;
            memset(m->adam_m, 0, (size_t)m->n_params * sizeof(float));
            memset(m->adam_v, 0, (size_t)m->n_params * sizeof(float));
        }
        if (st == MG_OK && mg_tokenizer_n_vocab(tok) != m->cfg.n_vocab)
            st = mg_err(err, err_len, MG_ERR_FORMAT, "%s: vocabulary (%d) and model (%d) disagree", src,
                        mg_tokenizer_n_vocab(tok), m->cfg.n_vocab);
    }
    /* LoRA: the mode is known now (--resume reads it from the checkpoint) */
    const bool lora = (p.train_mask & TR_GROUP_LORA) != 0;
    const int lrank = p.lora_rank > 0 ? p.lora_rank : TR_LORA_DEFAULT_RANK;
    const float lalpha = p.lora_alpha > 0 ? p.lora_alpha : TR_LORA_DEFAULT_ALPHA;
    if (st == MG_OK && !lora && (p.lora_rank != 0 || p.lora_alpha != 0))
        st = mg_err(err, err_len, MG_ERR_INVALID_ARG,
                    "--lora-rank and --lora-alpha need --train lora or --train proj+lora");
    else if (st == MG_OK && (p.lora_rank < 0 || !(p.lora_alpha >= 0) || !isfinite(p.lora_alpha)))
        st = mg_err(err, err_len, MG_ERR_INVALID_ARG, "LoRA rank %d / alpha %g: both must be positive", p.lora_rank,
                    (double)p.lora_alpha);
    if (st == MG_OK && m) {
        const tr_config *mc = &m->cfg;
        if (lora && mc->lora_rank == 0) /* --init from a model without adapters: fresh ones */
            st = tr_lora_attach(&m, lrank, lalpha, p.seed, err, err_len);
        else if (lora && p.lora_rank > 0 && p.lora_rank != mc->lora_rank)
            st = mg_err(err, err_len, MG_ERR_INVALID_ARG,
                        "--lora-rank %d: the checkpoint's LoRA adapters have rank %d and are kept (leave the option "
                        "out, or merge them: export the model and --init from it)", p.lora_rank, mc->lora_rank);
        else if (lora && p.lora_alpha > 0 && p.lora_alpha != mc->lora_alpha)
            st = mg_err(err, err_len, MG_ERR_INVALID_ARG,
                        "--lora-alpha %g: the checkpoint's LoRA adapters have alpha %g and are kept (leave the "
                        "option out, or merge them: export the model and --init from it)", (double)p.lora_alpha,
                        (double)mc->lora_alpha);
        else if (!lora && mc->lora_rank > 0) /* another mode: the adapters are merged into attn_q / attn_v */
            st = tr_lora_merge(&m, err, err_len);
    }
    if (st == MG_OK && (p.per_image < 0 || p.per_image > TL_MAX_PER_IMAGE))
        st = mg_err(err, err_len, MG_ERR_INVALID_ARG, "per-image %d: 1 to %d examples per scene", p.per_image,
                    TL_MAX_PER_IMAGE);
    else if (st == MG_OK && d.use_folder && p.per_image > 1)
        st = mg_err(err, err_len, MG_ERR_INVALID_ARG, "--per-image needs the synthetic world (not --data)");
    if (st == MG_OK && d.use_folder) st = tl_folder_load(&d.folder, p.data_dir, err, err_len);
    if (st == MG_OK && !d.use_folder) st = world_opts_parse(p.scene, &d.scene, err, err_len);
    if (st == MG_OK && !m) {
        if (d.use_folder) {
            char **texts = malloc(sizeof *texts * (size_t)d.folder.n * 2 + 1);
            if (!texts) st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
            for (int i = 0; st == MG_OK && i < d.folder.n; i++) {
                texts[2 * i] = d.folder.instruction[i];
                texts[2 * i + 1] = d.folder.answer[i];
            }
            if (st == MG_OK) st = tl_build_vocab(&tok, (const char *const *)texts, 2 * d.folder.n, err, err_len);
            free(texts);
        } else st = tl_build_vocab(&tok, NULL, 0, err, err_len);
        if (st == MG_OK) {
            p.cfg.n_vocab = mg_tokenizer_n_vocab(tok);
            p.cfg.aux_classes = p.aux_weight > 0 && !d.use_folder
                                    ? (p.aux_labels == TL_AUX_DEFAULT ? WORLD_PATCH_CLASSES : head_classes(p.aux_labels))
                                    : 0;
            p.cfg.aux_mask = p.mask_weight > 0 && !d.use_folder ? p.cfg.patch_size * p.cfg.patch_size : 0;
            p.cfg.lora_rank = lora ? lrank : 0;
            p.cfg.lora_alpha = lora ? lalpha : 0.0f;
            st = tr_model_create(&m, &p.cfg, p.seed, p.n_threads, err, err_len);
        }
    }
    if (st == MG_OK) {
        m->train_mask = p.train_mask;
        p.opt.total = p.steps;
        d.p = &p;
        d.tok = tok;
        d.S = m->cfg.image_size;
        d.n_img = (d.S / m->cfg.patch_size) * (d.S / m->cfg.patch_size) / 4;
        d.max_text = m->cfg.n_ctx - d.n_img;
        if (d.max_text < 8) st = mg_err(err, err_len, MG_ERR_INVALID_ARG, "n_ctx %d leaves no room for text", m->cfg.n_ctx);
    }
    if (st == MG_OK) {
        const size_t slots = (size_t)MG_MAX(p.batch, 2); /* eval uses two */
        d.image = malloc(sizeof(float) * 3 * (size_t)d.S * (size_t)d.S * slots);
        d.ids = malloc(sizeof(int32_t) * (size_t)d.max_text * slots);
        d.mask = malloc((size_t)d.max_text * slots);
        batch_ex = malloc(sizeof *batch_ex * slots);
        d.aux_loss = calloc(slots, sizeof *d.aux_loss);
        d.patch = m->cfg.patch_size;
        d.n_patch = (d.S / d.patch) * (d.S / d.patch);
        if (m->cfg.aux_classes > 0 && !d.use_folder) {
            d.plabels = malloc(sizeof(int32_t) * (size_t)d.n_patch * slots);
            if (!d.plabels) st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
        }
        d.mask_loss = calloc(slots, sizeof *d.mask_loss);
        if (m->cfg.aux_mask > 0 && !d.use_folder) {
            d.pmasks = malloc(sizeof(float) * (size_t)d.n_patch * (size_t)m->cfg.aux_mask * slots);
            if (!d.pmasks) st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
        }
        if (!d.mask_loss) st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
        d.shape_labels = m->cfg.aux_classes == WORLD_PATCH_SHAPE_CLASSES;
        d.heads_learn = (p.train_mask & TR_GROUP_VISION) != 0;
        if ((p.train_mask & TR_AUX_ONLY) && (d.use_folder || (p.aux_weight <= 0 && p.mask_weight <= 0)))
            st = mg_err(err, err_len, MG_ERR_INVALID_ARG,
                        "--train vision-aux learns from the auxiliary losses alone: it needs the synthetic world "
                        "and --aux W or --aux-mask W > 0");
        const int want = head_classes(p.aux_labels);
        if (st == MG_OK && p.aux_weight > 0 && !d.use_folder &&
            (m->cfg.aux_classes != WORLD_PATCH_CLASSES && m->cfg.aux_classes != WORLD_PATCH_SHAPE_CLASSES &&
             m->cfg.aux_classes != TR_AUX_SPLIT_CLASSES))
            st = mg_err(err, err_len, MG_ERR_INVALID_ARG,
                        "--aux needs a model with an auxiliary head (a new model, or a checkpoint trained with "
                        "--aux; exported models have no head)");
        else if (st == MG_OK && p.aux_weight > 0 && want && m->cfg.aux_classes != want)
            st = mg_err(err, err_len, MG_ERR_INVALID_ARG,
                        "--aux-labels %s: the checkpoint's auxiliary head has %d classes, not %d (--resume "
                        "keeps the head; start a stage with --init for a new one)",
                        p.aux_labels == TL_AUX_SHAPE   ? "shape"
                        : p.aux_labels == TL_AUX_SPLIT ? "shape+colour"
                                                       : "joint",
                        m->cfg.aux_classes, want);
        batch_loss = malloc(sizeof *batch_loss * slots);
        d.slot_st = malloc(sizeof *d.slot_st * slots);
        d.slot_err = malloc(sizeof *d.slot_err * slots);
        d.ex = malloc(sizeof *d.ex * WORLD_MAX_EXAMPLES * (size_t)mg_pool_n_threads(m->pool));
        if (!d.image || !d.ids || !d.mask || !d.ex || !batch_ex || !batch_loss || !d.aux_loss || !d.slot_st ||
            !d.slot_err)
            st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    }
    if (st == MG_OK) st = make_kv(&p, tok, &kvf, &kvbuf, err, err_len);

    tl_progress pg;
    memset(&pg, 0, sizeof pg);
    if (st == MG_OK) {
        pg.total = p.steps;
        pg.step = m->step;
        pg.n_params = m->n_params;
        pg.n_vocab = m->cfg.n_vocab;
        pg.event = TL_EV_START;
        if (cb && cb(user, &pg)) st = mg_err(err, err_len, MG_ERR_CANCELLED, "cancelled");
    }
    const double t0 = now_s();
    const int64_t step0 = m ? m->step : 0;
    double rows = 0;
    bool cancelled = false;
    while (st == MG_OK && m->step < p.steps && !cancelled) {
        tr_zero_grad(m);
        double lsum = 0;
        st = data_batch(&d, m->pool, (uint64_t)m->step * (uint64_t)p.batch, p.batch, batch_ex, err, err_len);
        for (int b = 0; b < p.batch && st == MG_OK; b++) rows += batch_ex[b].n_text + d.n_img;
        const int64_t runs0 = tr_tower_runs(m);
        if (st == MG_OK)
            st = tr_forward_backward_batch(m, batch_ex, p.batch, true, 1.0f / (float)p.batch, batch_loss, err, err_len);
        if (st != MG_OK) break;
        pg.tower_runs = (int)(tr_tower_runs(m) - runs0);
        double asum = 0, msum = 0;
        for (int b = 0; b < p.batch; b++) {
            lsum += batch_loss[b];
            asum += batch_ex[b].aux_loss ? *batch_ex[b].aux_loss : 0.0f;
            msum += batch_ex[b].mask_loss ? *batch_ex[b].mask_loss : 0.0f;
        }
        pg.aux_loss = d.heads_learn ? (float)(asum / p.batch) : -1.0f;
        pg.mask_loss = d.heads_learn ? (float)(msum / p.batch) : -1.0f;
        float lr;
        double gn;
        tr_step(m, &p.opt, &lr, &gn);
        double el = now_s() - t0;
        pg.event = TL_EV_STEP;
        pg.step = m->step;
        pg.loss = (float)(lsum / p.batch);
        pg.lr = lr;
        pg.gnorm = gn;
        pg.elapsed_s = el;
        pg.tok_per_s = el > 0 ? rows / el : 0;
        pg.eta_s = m->step > step0 ? el / (double)(m->step - step0) * (double)(p.steps - m->step) : 0;
        if (cb && cb(user, &pg)) cancelled = true;
        if (!cancelled && p.eval_every > 0 && p.eval_n > 0 && (m->step % p.eval_every == 0 || m->step == p.steps)) {
            st = run_eval(m, &d, &pg, err, err_len);
            if (st == MG_OK && cb && cb(user, &pg)) cancelled = true;
        }
        bool last = m->step == p.steps || cancelled;
        if (st == MG_OK && p.ckpt_path && (last || (p.ckpt_every > 0 && m->step % p.ckpt_every == 0))) {
            st = tr_save(m, p.ckpt_path, kvf, err, err_len);
            pg.event = TL_EV_CKPT;
            pg.path = p.ckpt_path;
            if (st == MG_OK && cb && cb(user, &pg)) cancelled = true;
        }
    }
    /* A resumed checkpoint that had already reached its last step runs no step and so saved
     * nothing: write it now, since the export below reads the checkpoint file. */
    if (st == MG_OK && !cancelled && p.out_path && p.ckpt_path && m && m->step == step0)
        st = tr_save(m, p.ckpt_path, kvf, err, err_len);
    if (st == MG_OK && !cancelled && p.out_path) {
        if (p.ckpt_path) st = tl_export(p.ckpt_path, p.out_path, err, err_len);
        else {
            /* no checkpoint file: write one next to the output, then strip it */
            size_t n = strlen(p.out_path) + 8;
            char *tmp = malloc(n);
            if (!tmp) st = MG_ERR_NOMEM;
            else {
                snprintf(tmp, n, "%s.tmp", p.out_path);
                st = tr_save(m, tmp, kvf, err, err_len);
                if (st == MG_OK) st = tl_export(tmp, p.out_path, err, err_len);
                remove(tmp);
                free(tmp);
            }
        }
        if (st == MG_OK && cb) {
            pg.event = TL_EV_CKPT;
            pg.path = p.out_path;
            cb(user, &pg);
        }
    }
    if (st == MG_OK && cancelled) st = mg_err(err, err_len, MG_ERR_CANCELLED, "training stopped at step %lld", (long long)m->step);
    gguf_close(kvf);
    free(kvbuf);
    free(d.image);
    free(d.slot_st);
    free(d.slot_err);
    free(batch_ex);
    free(batch_loss);
    free(d.plabels);
    free(d.aux_loss);
    free(d.mask_loss);
    free(d.pmasks);
    free(d.ids);
    free(d.mask);
    free(d.ex);
    tl_folder_free(&d.folder);
    mg_tokenizer_free(tok);
    tr_model_free(m);
    return st;
}
