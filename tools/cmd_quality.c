/*
 * cmd_quality.c - `minigpt quality`: how much a re-typed (f16, bf16, q8_0, q4_0 ...) GGUF file
 * departs from a reference file (usually its f32 original).
 *
 * Language model: both models are fed the same token stream, teacher-forced (fixed pseudo-random
 * ids from the vocabulary, or a tokenized text file), one session per model, one position at a
 * time (the public API returns the logits of the last evaluated position only). At every position
 * it compares the logits: top-1 agreement (argmax equal) and KL(ref || test) of the softmaxed
 * logits, accumulated in double. Vision tower (when both files have one): the outputs of
 * vision_encode on a fixed synthetic image (a deterministic RGB pattern preprocessed as the model
 * does) compared by cosine similarity, over all values and per output row. File sizes and the
 * speed of both models (decode tok/s, image encode ms), measured side by side, are reported too.
 * Memory: the two mappings, two sessions, a few vectors of n_vocab / the vision output.
 */
#include "cli.h"
#include "gguf.h"
#include "kernels.h"
#include "threadpool.h"
#include "vision.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    const char *ref, *test, *text_file;
    int n_tokens;
    uint64_t seed;
    int image_size; /* side of the synthetic RGB image before preprocessing; 0: the model's */
    int n_threads;
    bool json;
} quality_opts;

typedef struct {
    bool has_llm, has_vision;
    uint64_t bytes;
} file_info;

typedef struct {
    int n_tokens, n_vocab;
    double top1, kl_mean, kl_max;
    double ref_tok_s, test_tok_s;
} llm_result;

typedef struct {
    int n_rows, n_cols, image_size;
    double cosine, cosine_min_row;
    double ref_ms, test_ms;
} vision_result;

static void usage(FILE *f) {
    fprintf(f,
            "usage: minigpt quality --ref REF.gguf --test TEST.gguf [options]\n\n"
            "Compares a model file with a reference (e.g. a q4_0 file with its f32 original):\n"
            "  language model: both run teacher-forced on one token stream; top-1 agreement (%% of\n"
            "                  positions whose argmax is equal), mean and max KL(ref || test) of the\n"
            "                  softmaxed logits, decode speed of each;\n"
            "  vision tower:   (when both files have one) cosine similarity of the image embeddings\n"
            "                  of a fixed synthetic image, overall and worst row; encode time of each;\n"
            "  and the file sizes.\n\n"
            "options:\n"
            "  --ref FILE         reference GGUF\n"
            "  --test FILE        GGUF to judge\n"
            "  --tokens N         positions compared (default 64)\n"
            "  --seed S           seed of the pseudo-random token ids (default 1)\n"
            "  -f FILE            tokenize this text file instead (BOS first, cut to --tokens)\n"
            "  --image-size S     side of the synthetic image before it is resized to the model's\n"
            "                     input (default: the model's own size)\n"
            "  -t, --threads N    worker threads (default: cores, at most 8)\n"
            "  --json             one JSON object on stdout\n"
            "exit status: 0 ok, 1 error (unreadable or incompatible files), 2 usage\n");
}

static int usage_error(const char *msg, const char *arg) {
    fprintf(stderr, "minigpt quality: %s%s (see minigpt quality --help)\n", msg, arg ? arg : "");
    return 2;
}

/* Returns -1 when parsing succeeded, else the exit status. */
static int parse_args(int argc, char **argv, quality_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_tokens = 64;
    o->seed = 1;
    o->n_threads = cli_default_threads();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--json") == 0) {
            o->json = true;
            continue;
        }
        if (i + 1 >= argc) return usage_error("missing value or unknown option: ", a);
        const char *v = argv[++i];
        long long n;
        if (strcmp(a, "--ref") == 0) o->ref = v;
        else if (strcmp(a, "--test") == 0) o->test = v;
        else if (strcmp(a, "-f") == 0) o->text_file = v;
        else if (strcmp(a, "--tokens") == 0) {
            if (!cli_parse_int(v, 1, 1 << 20, &n)) return usage_error("bad --tokens ", v);
            o->n_tokens = (int)n;
        } else if (strcmp(a, "--seed") == 0) {
            if (!cli_parse_int(v, 0, INT64_MAX, &n)) return usage_error("bad --seed ", v);
            o->seed = (uint64_t)n;
        } else if (strcmp(a, "--image-size") == 0) {
            if (!cli_parse_int(v, 1, 8192, &n)) return usage_error("bad --image-size ", v);
            o->image_size = (int)n;
        } else if (strcmp(a, "-t") == 0 || strcmp(a, "--threads") == 0) {
            if (!cli_parse_int(v, 1, 256, &n)) return usage_error("bad thread count ", v);
            o->n_threads = (int)n;
        } else {
            return usage_error("unknown option ", a);
        }
    }
    if (!o->ref || !o->test) return usage_error("--ref and --test are required", NULL);
    return -1;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Which parts a file has (without loading them), and its size. */
static int probe(const char *path, file_info *fi) {
    char err[256];
    gguf_file *f = NULL;
    if (gguf_open(&f, path, err, sizeof err) != MG_OK) return cli_error("quality", "%s", err);
    fi->has_llm = gguf_find_tensor(f, "token_embd.weight") != NULL;
    fi->has_vision = gguf_find_tensor(f, "v.patch_embd.weight") != NULL;
    fi->bytes = gguf_file_size(f);
    gguf_close(f);
    return 0;
}

/* The token stream: BOS, then ids from the text file or pseudo-random ids in [3, n_vocab). */
static int make_tokens(const quality_opts *o, const mg_model *m, int n_vocab, int32_t *ids, int *n_out) {
    const mg_tokenizer *tok = mg_model_tokenizer(m);
    if (!o->text_file) {
        uint64_t s = o->seed;
        int lo = n_vocab > 4 ? 3 : 0;
        ids[0] = tok ? mg_token_bos(tok) : 1;
        if (ids[0] < 0 || ids[0] >= n_vocab) ids[0] = lo;
        for (int i = 1; i < o->n_tokens; i++) ids[i] = lo + (int32_t)(splitmix(&s) % (uint64_t)(n_vocab - lo));
        *n_out = o->n_tokens;
        return 0;
    }
    if (!tok) return cli_error("quality", "%s: the model has no tokenizer for -f", o->ref);
    FILE *fp = fopen(o->text_file, "rb");
    if (!fp) return cli_error("quality", "cannot open %s", o->text_file);
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    size_t got;
    while (text && (got = fread(text + len, 1, cap - len, fp)) > 0) {
        len += got;
        if (len == cap && len < ((size_t)64 << 20)) {
            char *t = realloc(text, cap * 2);
            if (!t) break;
            text = t;
            cap *= 2;
        } else if (len == cap) {
            break; /* 64 MiB of text is plenty for any --tokens */
        }
    }
    fclose(fp);
    if (!text) return cli_error("quality", "out of memory");
    int n_need = 0;
    int32_t *all = NULL;
    mg_status st = mg_tokenize(tok, text, len, 1, 0, ids, o->n_tokens, &n_need);
    if (st == MG_ERR_INVALID_ARG && n_need > o->n_tokens) {
        all = malloc((size_t)n_need * sizeof *all);
        st = all ? mg_tokenize(tok, text, len, 1, 0, all, n_need, &n_need) : MG_ERR_NOMEM;
        if (st == MG_OK) memcpy(ids, all, (size_t)o->n_tokens * sizeof *ids);
        n_need = o->n_tokens;
    }
    free(all);
    free(text);
    if (st != MG_OK) return cli_error("quality", "cannot tokenize %s: %s", o->text_file, mg_status_str(st));
    *n_out = MG_MIN(n_need, o->n_tokens);
    for (int i = 0; i < *n_out; i++)
        if (ids[i] < 0 || ids[i] >= n_vocab)
            return cli_error("quality", "token id %d of %s is outside the output vocabulary", ids[i], o->text_file);
    if (*n_out < 1) return cli_error("quality", "%s gives no tokens", o->text_file);
    return 0;
}

/* log-softmax of x [n] into out (double). */
static void log_softmax(const float *x, int n, double *out) {
    double mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double s = 0;
    for (int i = 0; i < n; i++) s += exp((double)x[i] - mx);
    double lse = mx + log(s);
    for (int i = 0; i < n; i++) out[i] = (double)x[i] - lse;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static int compare_llm(const quality_opts *o, llm_result *r) {
    char err[256];
    mg_model *m[2] = {NULL, NULL};
    mg_session *s[2] = {NULL, NULL};
    int32_t *ids = NULL;
    double *lp = NULL, *lq = NULL;
    float *ref_logits = NULL;
    int rc = 1;
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = o->n_threads;
    const char *path[2] = {o->ref, o->test};
    for (int k = 0; k < 2; k++)
        if (mg_model_open(&m[k], path[k], &mp, err, sizeof err) != MG_OK) {
            rc = cli_error("quality", "%s", err);
            goto done;
        }
    int nv = mg_model_n_vocab(m[0]);
    if (nv != mg_model_n_vocab(m[1])) {
        rc = cli_error("quality", "different vocabulary sizes: %s has %d, %s has %d", o->ref, nv, o->test,
                       mg_model_n_vocab(m[1]));
        goto done;
    }
    int n_tok_vocab = nv;
    const mg_tokenizer *tok = mg_model_tokenizer(m[0]);
    if (tok && mg_tokenizer_n_vocab(tok) > 0) n_tok_vocab = MG_MIN(nv, mg_tokenizer_n_vocab(tok));
    ids = malloc((size_t)o->n_tokens * sizeof *ids);
    lp = malloc((size_t)nv * sizeof *lp);
    lq = malloc((size_t)nv * sizeof *lq);
    ref_logits = malloc((size_t)nv * sizeof *ref_logits);
    if (!ids || !lp || !lq || !ref_logits) {
        rc = cli_error("quality", "out of memory");
        goto done;
    }
    int n = 0;
    if (make_tokens(o, m[0], n_tok_vocab, ids, &n)) goto done;
    mg_session_params sp = mg_session_default_params();
    sp.n_ctx = n;
    for (int k = 0; k < 2; k++)
        if (mg_session_create(&s[k], m[k], &sp, err, sizeof err) != MG_OK) {
            rc = cli_error("quality", "%s: %s", path[k], err);
            goto done;
        }
    double t_us[2] = {0, 0}, kl_sum = 0, kl_max = 0;
    int agree = 0;
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < 2; k++) {
            int64_t t0 = mg_time_us();
            mg_status st = mg_session_eval_tokens(s[k], &ids[i], 1);
            t_us[k] += (double)(mg_time_us() - t0);
            if (st != MG_OK) {
                rc = cli_error("quality", "%s: position %d: %s", path[k], i, mg_session_errmsg(s[k]));
                goto done;
            }
            if (k == 0) memcpy(ref_logits, mg_session_logits(s[0]), (size_t)nv * sizeof *ref_logits);
        }
        const float *test_logits = mg_session_logits(s[1]);
        agree += argmax(ref_logits, nv) == argmax(test_logits, nv);
        log_softmax(ref_logits, nv, lp);
        log_softmax(test_logits, nv, lq);
        double kl = 0;
        for (int j = 0; j < nv; j++) kl += exp(lp[j]) * (lp[j] - lq[j]);
        kl_sum += kl;
        kl_max = fmax(kl_max, kl);
    }
    r->n_tokens = n;
    r->n_vocab = nv;
    r->top1 = 100.0 * agree / n;
    r->kl_mean = kl_sum / n;
    r->kl_max = kl_max;
    r->ref_tok_s = t_us[0] > 0 ? n / (t_us[0] * 1e-6) : 0;
    r->test_tok_s = t_us[1] > 0 ? n / (t_us[1] * 1e-6) : 0;
    rc = 0;
done:
    for (int k = 0; k < 2; k++) {
        mg_session_free(s[k]);
        mg_model_close(m[k]);
    }
    free(ids);
    free(lp);
    free(lq);
    free(ref_logits);
    return rc;
}

/* A deterministic RGB8 picture: smooth gradients, a few discs and pseudo-random noise. */
static void synth_image(mg_image *img, int size) {
    uint64_t s = 12345;
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++) {
            uint8_t *p = img->rgb + ((size_t)y * size + x) * 3;
            double u = (double)x / size, v = (double)y / size;
            double d1 = hypot(u - 0.3, v - 0.35), d2 = hypot(u - 0.7, v - 0.6);
            int n = (int)(splitmix(&s) % 33) - 16;
            int r = (int)(255 * u) + (d1 < 0.15 ? 120 : 0) + n;
            int g = (int)(255 * v) + (d2 < 0.2 ? -100 : 0) + n;
            int b = (int)(128 + 127 * sin(12 * u + 7 * v)) + n;
            p[0] = (uint8_t)MG_MAX(0, MG_MIN(255, r));
            p[1] = (uint8_t)MG_MAX(0, MG_MIN(255, g));
            p[2] = (uint8_t)MG_MAX(0, MG_MIN(255, b));
        }
}

static int compare_vision(const quality_opts *o, vision_result *r) {
    char err[256];
    gguf_file *f[2] = {NULL, NULL};
    mg_vision *v[2] = {NULL, NULL};
    mg_pool *pool = NULL;
    float *pix = NULL, *out[2] = {NULL, NULL};
    mg_image img = {0}, rs = {0};
    int rc = 1;
    const char *path[2] = {o->ref, o->test};
    for (int k = 0; k < 2; k++) {
        if (gguf_open(&f[k], path[k], err, sizeof err) != MG_OK ||
            vision_load(&v[k], f[k], err, sizeof err) != MG_OK) {
            rc = cli_error("quality", "%s: %s", path[k], err);
            goto done;
        }
    }
    if (v[0]->image_size != v[1]->image_size || v[0]->n_out != v[1]->n_out || v[0]->n_llm != v[1]->n_llm) {
        rc = cli_error("quality", "the vision towers differ: %s gives [%d, %d] at %d px, %s [%d, %d] at %d px",
                       o->ref, v[0]->n_out, v[0]->n_llm, v[0]->image_size, o->test, v[1]->n_out, v[1]->n_llm,
                       v[1]->image_size);
        goto done;
    }
    int S = v[0]->image_size, src = o->image_size ? o->image_size : S;
    size_t n_out = (size_t)v[0]->n_out * (size_t)v[0]->n_llm;
    img.w = img.h = src;
    img.rgb = malloc((size_t)src * src * 3);
    pix = malloc((size_t)3 * S * S * sizeof *pix);
    out[0] = malloc(n_out * sizeof(float));
    out[1] = malloc(n_out * sizeof(float));
    if (!img.rgb || !pix || !out[0] || !out[1] || mg_pool_create(&pool, o->n_threads) != MG_OK) {
        rc = cli_error("quality", "out of memory");
        goto done;
    }
    synth_image(&img, src);
    if (mg_image_resize_bicubic(&rs, &img, S, S, err, sizeof err) != MG_OK) {
        rc = cli_error("quality", "%s", err);
        goto done;
    }
    mg_image_to_tensor(&rs, NULL, NULL, pix);
    mg_kernels_init();
    mg_kernel_opts ko = {.use_ref = false};
    double ms[2];
    for (int k = 0; k < 2; k++) {
        int64_t t0 = mg_time_us();
        if (vision_encode(v[k], pool, &ko, pix, out[k], err, sizeof err) != MG_OK) {
            rc = cli_error("quality", "%s: %s", path[k], err);
            goto done;
        }
        ms[k] = (double)(mg_time_us() - t0) * 1e-3;
    }
    double dot = 0, na = 0, nb = 0, worst = 1;
    for (int i = 0; i < v[0]->n_out; i++) {
        double d = 0, a2 = 0, b2 = 0;
        const float *a = out[0] + (size_t)i * v[0]->n_llm, *b = out[1] + (size_t)i * v[0]->n_llm;
        for (int j = 0; j < v[0]->n_llm; j++) {
            d += (double)a[j] * b[j];
            a2 += (double)a[j] * a[j];
            b2 += (double)b[j] * b[j];
        }
        double c = a2 > 0 && b2 > 0 ? d / sqrt(a2 * b2) : (a2 == b2 ? 1.0 : 0.0);
        worst = fmin(worst, c);
        dot += d;
        na += a2;
        nb += b2;
    }
    r->n_rows = v[0]->n_out;
    r->n_cols = v[0]->n_llm;
    r->image_size = S;
    r->cosine = na > 0 && nb > 0 ? dot / sqrt(na * nb) : (na == nb ? 1.0 : 0.0);
    r->cosine_min_row = worst;
    r->ref_ms = ms[0];
    r->test_ms = ms[1];
    rc = 0;
done:
    for (int k = 0; k < 2; k++) {
        vision_free(v[k]);
        gguf_close(f[k]);
        free(out[k]);
    }
    mg_pool_free(pool);
    free(pix);
    mg_image_free(&img);
    mg_image_free(&rs);
    return rc;
}

/* `minigpt quality`: see usage(). */
int cmd_quality(int argc, char **argv) {
    quality_opts o;
    int prc = parse_args(argc, argv, &o);
    if (prc >= 0) return prc;
    file_info fi[2];
    if (probe(o.ref, &fi[0]) || probe(o.test, &fi[1])) return 1;
    if (fi[0].has_llm != fi[1].has_llm)
        return cli_error("quality", "only one of %s and %s has a language model", o.ref, o.test);
    if (fi[0].has_vision != fi[1].has_vision)
        return cli_error("quality", "only one of %s and %s has a vision tower", o.ref, o.test);
    if (!fi[0].has_llm && !fi[0].has_vision)
        return cli_error("quality", "%s has neither a language model nor a vision tower", o.ref);
    llm_result lr = {0};
    vision_result vr = {0};
    if (fi[0].has_llm && compare_llm(&o, &lr)) return 1;
    if (fi[0].has_vision && compare_vision(&o, &vr)) return 1;

    if (o.json) {
        json_t *root = json_object();
        const char *path[2] = {o.ref, o.test}, *key[2] = {"ref", "test"};
        for (int k = 0; k < 2; k++) {
            json_t *e = json_object();
            json_object_set_new(e, "path", json_string(path[k]));
            json_object_set_new(e, "bytes", json_integer((json_int_t)fi[k].bytes));
            json_object_set_new(root, key[k], e);
        }
        json_object_set_new(root, "threads", json_integer(o.n_threads));
        if (fi[0].has_llm) {
            json_t *e = json_object();
            json_object_set_new(e, "tokens", json_integer(lr.n_tokens));
            json_object_set_new(e, "n_vocab", json_integer(lr.n_vocab));
            json_object_set_new(e, "source", json_string(o.text_file ? "text" : "random"));
            json_object_set_new(e, "top1_pct", json_real(lr.top1));
            json_object_set_new(e, "kl_mean", json_real(lr.kl_mean));
            json_object_set_new(e, "kl_max", json_real(lr.kl_max));
            json_object_set_new(e, "ref_tok_s", json_real(lr.ref_tok_s));
            json_object_set_new(e, "test_tok_s", json_real(lr.test_tok_s));
            json_object_set_new(root, "llm", e);
        } else {
            json_object_set_new(root, "llm", json_null());
        }
        if (fi[0].has_vision) {
            json_t *e = json_object();
            json_object_set_new(e, "image_size", json_integer(vr.image_size));
            json_object_set_new(e, "rows", json_integer(vr.n_rows));
            json_object_set_new(e, "cols", json_integer(vr.n_cols));
            json_object_set_new(e, "cosine", json_real(vr.cosine));
            json_object_set_new(e, "cosine_min_row", json_real(vr.cosine_min_row));
            json_object_set_new(e, "ref_ms", json_real(vr.ref_ms));
            json_object_set_new(e, "test_ms", json_real(vr.test_ms));
            json_object_set_new(root, "vision", e);
        } else {
            json_object_set_new(root, "vision", json_null());
        }
        char *s = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(9));
        json_decref(root);
        if (!s) return cli_error("quality", "out of memory");
        puts(s);
        free(s);
        return 0;
    }
    printf("ref   %s  %.1f MiB\ntest  %s  %.1f MiB (%.3fx)\n", o.ref, fi[0].bytes / 1048576.0, o.test,
           fi[1].bytes / 1048576.0, fi[0].bytes ? (double)fi[1].bytes / fi[0].bytes : 0.0);
    if (fi[0].has_llm)
        printf("llm     %d positions (%s ids), vocab %d: top-1 agreement %.2f%%, KL(ref||test) mean %.4g max %.4g\n"
               "        decode ref %.2f tok/s, test %.2f tok/s (%d threads)\n",
               lr.n_tokens, o.text_file ? "text" : "random", lr.n_vocab, lr.top1, lr.kl_mean, lr.kl_max,
               lr.ref_tok_s, lr.test_tok_s, o.n_threads);
    if (fi[0].has_vision)
        printf("vision  [%d, %d] at %d px: cosine %.7f (1 - cos %.3g), worst row %.7f\n"
               "        encode ref %.1f ms, test %.1f ms (%d threads)\n",
               vr.n_rows, vr.n_cols, vr.image_size, vr.cosine, 1.0 - vr.cosine, vr.cosine_min_row, vr.ref_ms, vr.test_ms,
               o.n_threads);
    return 0;
}
