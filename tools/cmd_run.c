/*
 * cmd_run.c - `minigpt run`: one image and one question to a MiniGPT model, the grounded answer
 * out (text, or JSON with entities, timings and token counts), optionally the image with the
 * boxes drawn (--draw) and every intermediate tensor as .npy (--dump). A thin client of
 * include/minigpt.h (mg_vl_*). Every error is one line on stderr and exit status 1.
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: minigpt run -m FILE --image IMG -p TEXT [options]\n\n"
            "  -m, --model FILE     MiniGPT GGUF (vision tower + LLM, or only the vision side with --llm)\n"
            "      --llm FILE       the language model as a llama.cpp GGUF\n"
            "      --image IMG      JPEG, PNG, WebP or BMP image\n"
            "  -p, --prompt TEXT    the question (with --box, \"{box}\" in it is replaced by the region)\n"
            "      --task NAME      grounding|refer|detection|identify|vqa|caption: prefixes the\n"
            "                       MiniGPT-v2 identifier (grounding and caption need no -p)\n"
            "      --box X1,Y1,X2,Y2  a region in pixels, written as {<x1><y1><x2><y2>}\n"
            "      --greedy         argmax of the raw logits, no repetition penalty (default: the\n"
            "                       variant's sampling settings)\n"
            "      --repeat-penalty R  repetition penalty (default 1.05; 1 with --greedy)\n"
            "      --temp T         temperature (default: the variant's, 0.6 v2 / 1.0 MiniGPT-4)\n"
            "      --top-p P        top-p (default 0.9)\n"
            "      --seed S         sampler seed\n"
            "  -n, --n-predict N    max new tokens (default: the variant's, 500 v2 / 300 MiniGPT-4)\n"
            "  -t, --threads N      worker threads (default: cores, at most 8)\n"
            "      --json           print one JSON object: text, clean_text, entities, timings, tokens\n"
            "      --draw OUT.png   write the image with the answer's boxes\n"
            "      --dump DIR       write each stage as .npy (pixels, vit, qformer, image_tokens,\n"
            "                       prompt_embd, prompt_ids, logits, generated_ids)\n");
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* Length of a valid UTF-8 sequence at p (1..4), or 0 when the bytes are not one. */
static int utf8_len(const unsigned char *p) {
    unsigned c = p[0];
    int n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (n <= 1) return n;
    unsigned cp = c & (0xffu >> (n + 1));
    for (int i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3fu);
    }
    static const unsigned min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return n;
}

/* A JSON string literal; bytes that are not UTF-8 become U+FFFD. */
static void put_json_str(FILE *f, const char *s) {
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    fputc('"', f);
    while (*p) {
        int n = utf8_len(p);
        if (n == 0) {
            fputs("\\ufffd", f);
            p++;
        } else if (n > 1) {
            fwrite(p, 1, (size_t)n, f);
            p += n;
        } else if (*p == '"' || *p == '\\') {
            fprintf(f, "\\%c", *p++);
        } else if (*p < 0x20 || *p == 0x7f) {
            fprintf(f, "\\u%04x", *p++);
        } else {
            fputc(*p++, f);
        }
    }
    fputc('"', f);
}

/* Writes a C-order .npy file of float32 ('<f4') or int32 ('<i4'). */
static int write_npy(const char *dir, const char *name, const void *data, bool is_int, int ndim,
                     const int64_t *shape) {
    char path[4096], hdr[256], dims[128] = "";
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        size_t k = strlen(dims);
        snprintf(dims + k, sizeof dims - k, "%lld%s", (long long)shape[i], ndim == 1 ? "," : i + 1 < ndim ? ", " : "");
        n *= (size_t)shape[i];
    }
    int hl = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
                      is_int ? "<i4" : "<f4", dims);
    int total = 10 + hl + 1, pad = (64 - total % 64) % 64;
    FILE *fp = fopen(path, "wb");
    if (!fp) return cli_error("run", "cannot write %s: %s", path, strerror(errno));
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    uint16_t hlen = (uint16_t)(hl + pad + 1);
    pre[8] = (unsigned char)(hlen & 0xff);
    pre[9] = (unsigned char)(hlen >> 8);
    bool ok = fwrite(pre, 1, 10, fp) == 10 && fwrite(hdr, 1, (size_t)hl, fp) == (size_t)hl;
    for (int i = 0; ok && i < pad; i++) ok = fputc(' ', fp) != EOF;
    ok = ok && fputc('\n', fp) != EOF && fwrite(data, 4, n, fp) == n;
    if (fclose(fp) != 0) ok = false;
    return ok ? 0 : cli_error("run", "cannot write %s", path);
}

typedef struct {
    int32_t *ids;
    int n, cap;
    bool stream;
} run_tokens;

static int on_token(void *user, int32_t id, const char *piece, const float *logits, int n_vocab) {
    run_tokens *t = user;
    if (id >= 0 && t->n < t->cap) t->ids[t->n++] = id;
    if (t->stream && piece) {
        fputs(piece, stdout);
        fflush(stdout);
    }
    return 0;
}

/* The vision stages of the image (recomputed on their own) and the prompt's rows and logits. */
static int dump_all(const char *dir, const mg_model *m, mg_vl *vl, const mg_image *img, const run_tokens *gen) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) return cli_error("run", "cannot create %s: %s", dir, strerror(errno));
    mg_vl_dims d;
    if (mg_vl_stage_dims(m, &d) != MG_OK) return cli_error("run", "the model has no vision tower");
    size_t S = (size_t)d.image_size;
    float *pix = malloc(3 * S * S * sizeof(float));
    float *vit = malloc((size_t)d.n_vit_tok * (size_t)d.vit_dim * sizeof(float));
    float *qf = d.n_qf ? malloc((size_t)d.n_qf * (size_t)d.qf_dim * sizeof(float)) : NULL;
    float *tok = malloc((size_t)d.n_img_tok * (size_t)d.llm_dim * sizeof(float));
    int n_rows = mg_vl_prompt_rows(vl, NULL, NULL, 0);
    int32_t *ids = n_rows > 0 ? malloc((size_t)n_rows * sizeof *ids) : NULL;
    float *embd = n_rows > 0 ? malloc((size_t)n_rows * (size_t)d.llm_dim * sizeof(float)) : NULL;
    int rc = 0;
    char err[512];
    if (!pix || !vit || (d.n_qf && !qf) || !tok || !ids || !embd) {
        rc = cli_error("run", "out of memory");
    } else if (mg_vl_preprocess(m, img, pix, err, sizeof err) != MG_OK ||
               mg_vl_encode_stages(m, pix, vit, qf, tok, err, sizeof err) != MG_OK) {
        rc = cli_error("run", "%s", err);
    } else if (mg_vl_prompt_rows(vl, ids, embd, n_rows) != n_rows) {
        rc = cli_error("run", "cannot read the prompt rows");
    } else {
        int64_t s_pix[3] = {3, (int64_t)S, (int64_t)S}, s_vit[2] = {d.n_vit_tok, d.vit_dim},
                s_qf[2] = {d.n_qf, d.qf_dim}, s_tok[2] = {d.n_img_tok, d.llm_dim}, s_emb[2] = {n_rows, d.llm_dim},
                s_ids[1] = {n_rows}, s_gen[1] = {gen->n};
        rc = write_npy(dir, "pixels", pix, false, 3, s_pix) || write_npy(dir, "vit", vit, false, 2, s_vit) ||
             (qf && write_npy(dir, "qformer", qf, false, 2, s_qf)) ||
             write_npy(dir, "image_tokens", tok, false, 2, s_tok) ||
             write_npy(dir, "prompt_embd", embd, false, 2, s_emb) || write_npy(dir, "prompt_ids", ids, true, 1, s_ids) ||
             write_npy(dir, "generated_ids", gen->ids, true, 1, s_gen);
    }
    free(pix);
    free(vit);
    free(qf);
    free(tok);
    free(ids);
    free(embd);
    return rc;
}

/* Parses "x1,y1,x2,y2" (numbers) into v. */
static bool parse_box(const char *s, double v[4]) {
    char buf[256];
    if (strlen(s) >= sizeof buf) return false;
    strcpy(buf, s);
    char *save = NULL, *p = strtok_r(buf, ",", &save);
    for (int i = 0; i < 4; i++) {
        if (!p || !cli_parse_float(p, &v[i])) return false;
        p = strtok_r(NULL, ",", &save);
    }
    return p == NULL;
}

/* Builds the question: -p text with the region text put in, then the task prefix. */
static int build_question(const char *prompt, int task, const char *region, char *out, size_t out_len) {
    char text[8192] = "";
    if (prompt) {
        const char *hole = region ? strstr(prompt, "{box}") : NULL;
        if (hole)
            snprintf(text, sizeof text, "%.*s%s%s", (int)(hole - prompt), prompt, region, hole + 5);
        else if (region)
            snprintf(text, sizeof text, "%s %s", prompt, region);
        else
            snprintf(text, sizeof text, "%s", prompt);
    } else if (region) {
        snprintf(text, sizeof text, "%s", region);
    }
    if (task < 0) {
        snprintf(out, out_len, "%s", text);
        return 0;
    }
    char err[256];
    if (mg_task_instruction((mg_task)task, text[0] ? text : NULL, out, out_len, err, sizeof err) != MG_OK)
        return cli_error("run", "%s", err);
    return 0;
}

/* Entry point of `minigpt run`. */
int cmd_run(int argc, char **argv) {
    const char *model_path = NULL, *llm_path = NULL, *image_path = NULL, *prompt = NULL, *task_name = NULL;
    const char *box = NULL, *draw = NULL, *dump = NULL, *answer = NULL;
    bool json = false;
    cli_gen_opts go;
    cli_gen_opts_init(&go);
    long long threads = cli_default_threads();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            usage(stdout);
            return 0;
        }
        int g = cli_parse_gen_opt("run", &go, argc, argv, &i);
        if (g < 0) return 1;
        if (g) continue;
        bool has_val = i + 1 < argc;
        const char *v = has_val ? argv[i + 1] : NULL;
#define OPT(s, l) (strcmp(a, s) == 0 || strcmp(a, l) == 0)
#define NEED_VAL()                                                                                                     \
    do {                                                                                                               \
        if (!has_val) return cli_error("run", "%s needs a value", a);                                                 \
        i++;                                                                                                           \
    } while (0)
        if (OPT("-m", "--model")) { NEED_VAL(); model_path = v; }
        else if (strcmp(a, "--llm") == 0) { NEED_VAL(); llm_path = v; }
        else if (strcmp(a, "--image") == 0) { NEED_VAL(); image_path = v; }
        else if (OPT("-p", "--prompt")) { NEED_VAL(); prompt = v; }
        else if (strcmp(a, "--task") == 0) { NEED_VAL(); task_name = v; }
        else if (strcmp(a, "--box") == 0) { NEED_VAL(); box = v; }
        else if (strcmp(a, "--json") == 0) json = true;
        else if (strcmp(a, "--draw") == 0) { NEED_VAL(); draw = v; }
        else if (strcmp(a, "--dump") == 0) { NEED_VAL(); dump = v; }
        else if (strcmp(a, "--answer") == 0) { NEED_VAL(); answer = v; } /* debug: skip generation */
        else if (OPT("-t", "--threads")) {
            NEED_VAL();
            if (!cli_parse_int(v, 1, 256, &threads)) return cli_error("run", "bad --threads '%s'", v);
        } else {
            return cli_error("run", "unknown option '%s' (see minigpt run --help)", a);
        }
#undef OPT
#undef NEED_VAL
    }
    if (!model_path) return cli_error("run", "missing -m FILE (see minigpt run --help)");
    int task = -1;
    if (task_name && (task = mg_task_from_name(task_name)) < 0)
        return cli_error("run", "unknown --task '%s' (grounding, refer, detection, identify, vqa, caption)", task_name);
    if (!prompt && !box && task != MG_TASK_GROUNDING && task != MG_TASK_CAPTION)
        return cli_error("run", "missing -p TEXT");
    double bx[4];
    if (box && !parse_box(box, bx)) return cli_error("run", "bad --box '%s': expected X1,Y1,X2,Y2", box);
    if ((box || draw) && !image_path) return cli_error("run", "--box and --draw need --image");

    double t_start = now_ms();
    char err[512];
    mg_image img;
    memset(&img, 0, sizeof img);
    if (image_path && mg_image_load_file(&img, image_path, 0, err, sizeof err) != MG_OK)
        return cli_error("run", "%s", err);
    char region[64] = "";
    if (box && mg_region_text(bx[0], bx[1], bx[2], bx[3], img.w, img.h, region, sizeof region, err, sizeof err) != MG_OK) {
        mg_image_free(&img);
        return cli_error("run", "bad --box '%s': %s", box, err);
    }
    char question[8192];
    if (build_question(prompt, task, box ? region : NULL, question, sizeof question)) {
        mg_image_free(&img);
        return 1;
    }

    mg_model_params mp = mg_model_default_params();
    mp.n_threads = (int)threads;
    mg_model *m = NULL;
    mg_vl *vl = NULL;
    mg_sampler *smp = NULL;
    mg_vl_result res;
    memset(&res, 0, sizeof res);
    run_tokens gen = {0};
    int rc = 1;
    if (mg_model_open_llm(&m, model_path, llm_path, &mp, err, sizeof err) != MG_OK) {
        cli_error("run", "%s", err);
        goto done;
    }
    if (!mg_model_has_vision(m)) {
        cli_error("run", "%s is a %s model without a vision tower (use minigpt generate for text)", model_path,
                  mg_model_variant(m));
        goto done;
    }
    double t_load = now_ms() - t_start;
    mg_sampler_params sp = mg_sampler_default_params();
    mg_generate_params gp = mg_generate_default_params();
    cli_gen_opts_apply(&go, m, &sp, &gp);
    gen.cap = gp.n_predict > 0 ? (int)gp.n_predict : mg_model_n_ctx_train(m);
    gen.ids = malloc((size_t)(gen.cap > 0 ? gen.cap : 1) * sizeof *gen.ids);
    gen.stream = false;
    gp.on_token = on_token;
    gp.user = &gen;
    mg_session_params ssp = mg_session_default_params();
    if (!gen.ids || mg_sampler_create(&smp, &sp, mg_model_n_vocab(m)) != MG_OK) {
        cli_error("run", "out of memory");
        goto done;
    }
    if (mg_vl_create(&vl, m, &ssp, err, sizeof err) != MG_OK) {
        cli_error("run", "%s", err);
        goto done;
    }
    double t0 = now_ms();
    mg_status st = image_path ? mg_vl_add_image(vl, &img, NULL) : MG_OK;
    double t_img = now_ms() - t0;
    if (st == MG_OK) st = mg_vl_add_text(vl, question);
    if (st == MG_OK) st = mg_vl_eval_prompt(vl, &res);
    if (st == MG_OK && dump) {
        /* the logits of the last prompt position, before generation moves on */
        const float *lg = mg_session_logits(mg_vl_session(vl));
        if (mkdir(dump, 0777) != 0 && errno != EEXIST) {
            cli_error("run", "cannot create %s: %s", dump, strerror(errno));
            goto done;
        }
        int64_t shape[1] = {mg_model_n_vocab(m)};
        if (!lg || write_npy(dump, "logits", lg, false, 1, shape)) goto done;
    }
    if (st == MG_OK) st = answer ? mg_vl_force_answer(vl, answer, &res) : mg_vl_generate(vl, smp, &gp, &res);
    if (st != MG_OK) {
        cli_error("run", "%s", mg_vl_errmsg(vl));
        goto done;
    }
    res.t_image_ms = t_img;
    if (dump && image_path && dump_all(dump, m, vl, &img, &gen)) goto done;
    if (draw) {
        mg_image canvas = {img.w, img.h, malloc((size_t)img.w * (size_t)img.h * 3)};
        if (!canvas.rgb) {
            cli_error("run", "out of memory");
            goto done;
        }
        memcpy(canvas.rgb, img.rgb, (size_t)img.w * (size_t)img.h * 3);
        mg_draw_params dp = mg_draw_default_params();
        err[0] = 0;
        st = mg_draw_grounding(canvas.rgb, canvas.w, canvas.h, (size_t)canvas.w * 3, res.grounding, &dp, err, sizeof err);
        if (st == MG_OK && err[0]) fprintf(stderr, "minigpt run: warning: %s\n", err);
        if (st == MG_OK) st = mg_image_write_png(&canvas, draw, err, sizeof err);
        mg_image_free(&canvas);
        if (st != MG_OK) {
            cli_error("run", "%s", err);
            goto done;
        }
    }
    double t_total = now_ms() - t_start;
    if (json) {
        char *gj = NULL;
        if (mg_grounding_to_json(res.grounding, &gj) != MG_OK || !gj || strlen(gj) < 2) {
            free(gj);
            cli_error("run", "cannot render the JSON");
            goto done;
        }
        gj[strlen(gj) - 1] = 0; /* drop the closing brace: more fields follow */
        fputs(gj, stdout);
        free(gj);
        fputs(",\"raw\":", stdout);
        put_json_str(stdout, res.raw);
        printf(",\"variant\":\"%s\",\"question\":", mg_model_variant(m));
        put_json_str(stdout, question);
        printf(",\"timings\":{\"load_ms\":%.3f,\"image_ms\":%.3f,\"prompt_ms\":%.3f,\"generate_ms\":%.3f,"
               "\"total_ms\":%.3f}",
               t_load, res.t_image_ms, res.t_prompt_ms, res.t_gen_ms, t_total);
        printf(",\"tokens\":{\"prompt\":%d,\"image\":%d,\"generated\":%d}}\n", res.n_prompt,
               image_path ? mg_model_n_image_tokens(m) : 0, res.n_generated);
    } else {
        printf("%s\n", res.text);
        fprintf(stderr, "minigpt run: %d prompt positions (%d image), %d tokens generated; image %.0f ms, prompt %.0f ms, "
                "generation %.0f ms\n", res.n_prompt, image_path ? mg_model_n_image_tokens(m) : 0, res.n_generated,
                res.t_image_ms, res.t_prompt_ms, res.t_gen_ms);
    }
    rc = fflush(stdout) == 0 ? 0 : cli_error("run", "cannot write the output");
done:
    mg_vl_result_free(&res);
    mg_vl_free(vl);
    mg_sampler_free(smp);
    mg_model_close(m);
    mg_image_free(&img);
    free(gen.ids);
    return rc;
}
