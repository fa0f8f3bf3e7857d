/*
 * cmd_bench.c - `minigpt bench`: times image encode (mg_vl_encode_stages: ViT, Q-Former or merge,
 * projection), prefill (prompt processing) and decode (token generation) of a GGUF model, or of a
 * synthetic model with the real shapes and random weights, and reports the median and the minimum
 * of N timed runs after warm-up runs, as a table or as JSON.
 *
 * Image sizes: a model file fixes its input size (minigpt.vision.image_size), so -m FILE is timed
 * at that size only. A synthetic preset can be written at any size (the loader interpolates the
 * stored 16x16 position embedding): sizes other than the full model's, and every size under
 * --vision-only, are timed on a separate file holding the vision side and a 1-layer stand-in LLM.
 *
 * A synthetic model is written by a child process to a temporary file (TMPDIR, default /tmp) that
 * is unlinked as soon as the model has mapped it, so the child's generation buffers never count
 * in the reported peak RSS and nothing is left behind. Token ids are fixed pseudo-random ids, so
 * the tokenizer is not timed. Decode feeds back the greedy (argmax) token and ignores EOS.
 */
#include "cli.h"
#include "kernels.h"
#include "quant.h"
#include "synth.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LIST 16

typedef struct {
    int v[MAX_LIST];
    int n;
} int_list;

typedef struct {
    const char *model_path;
    const char *preset;
    int type;
    int vision_type;  /* synthetic vision matrices (default: type) */
    bool vision_only; /* image encode only: no prefill / decode */
    bool llm_only;    /* synthetic: write the LLM alone (a plain llama file) */
    bool image_given; /* --image given; else the model's native size */
    int n_threads;
    int reps;
    int warmup;
    int_list prompt, depth, image;
    int gen;
    bool json;
    const char *write_out;
    uint64_t seed;
} bench_opts;

/* One timed test: per-run wall times in ms. */
typedef struct {
    const char *kind; /* "prefill", "decode" */
    int n_tokens;
    int depth;
    double *ms;       /* [reps] */
    double ms_median, ms_min;
} bench_result;

/* One image size: timed (ms != NULL) or not possible (note says why). */
typedef struct {
    int size;
    bool native;       /* the size the model (or preset) was made for */
    bool timed;
    int n_img_tok;     /* embedding rows one image gives */
    const char *source; /* "model" or "vision-stub" (a separate synthetic file) */
    char note[200];
    double *ms;        /* [reps] */
    double ms_median, ms_min;
} image_result;

static void usage(FILE *f) {
    fprintf(f,
            "usage: minigpt bench (-m FILE | --synthetic PRESET [--type T] [--vision-type T]) [options]\n\n"
            "  -m, --model FILE       GGUF model to time\n"
            "      --synthetic NAME   time a model with random weights and the real shapes:\n");
    for (int i = 0; synth_preset_at(i); i++)
        if (!synth_preset_at(i)->hidden)
            fprintf(f, "                           %-13s %s\n", synth_preset_at(i)->name, synth_preset_at(i)->about);
    fprintf(f,
            "      --type T           synthetic matrix type: f32, f16, bf16, q8_0, q4_0 (default q4_0)\n"
            "      --vision-type T    synthetic vision matrix type (default: --type; norms, biases and\n"
            "                         embeddings are f32, the patch embedding f16 when T is quantized)\n"
            "      --llm-only         synthetic: the language model alone, a plain llama file that\n"
            "                         llama.cpp loads too (no image encode)\n"
            "      --vision-only      time the image encode only (synthetic: writes the vision side and\n"
            "                         a 1-layer stand-in LLM instead of the whole model)\n"
            "      --write-gguf OUT   write the synthetic model to OUT and exit (to time it elsewhere);\n"
            "                         one --image N sets the image size of its vision side\n"
            "  -t, --threads N        worker threads (default: cores, at most 8)\n"
            "  -r, --reps N           timed runs per test (default 5); median and min are reported\n"
            "      --warmup N         untimed runs before each test (default 1)\n"
            "      --prompt LIST      prefill lengths, comma-separated (default 128,512; 0 = none)\n"
            "      --depth LIST       decode after a prefill of this many tokens (default 0,512)\n"
            "      --gen N            tokens per decode run (default 32; 0 = no decode)\n"
            "      --image LIST       image-encode sizes (default: the model's own; 0 = none); sizes\n"
            "                         other than the model's need --synthetic\n"
            "      --seed N           seed of the synthetic weights and token ids (default 1)\n"
            "      --json             one JSON object on stdout instead of the table\n");
}

/* ==== Option parsing ==== */

static bool parse_list(const char *s, int lo, int hi, int_list *out) {
    out->n = 0;
    if (!s || !*s) return false;
    char buf[256];
    if (strlen(s) >= sizeof buf) return false;
    strcpy(buf, s);
    char *save = NULL;
    int n_items = 0;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        long long v;
        if (!cli_parse_int(tok, lo, hi, &v) || n_items >= MAX_LIST) return false;
        n_items++;
        out->v[out->n++] = (int)v;
    }
    return n_items > 0 && s[strlen(s) - 1] != ',' && s[0] != ',' && !strstr(s, ",,");
}

/* Drops zeros (the "none" entries) from a list. */
static void drop_zeros(int_list *l) {
    int k = 0;
    for (int i = 0; i < l->n; i++)
        if (l->v[i] != 0) l->v[k++] = l->v[i];
    l->n = k;
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "minigpt bench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see minigpt bench --help)\n");
    return 2;
}

/* Returns -1 when parsing succeeded, else the exit status. */
static int parse_args(int argc, char **argv, bench_opts *o) {
    memset(o, 0, sizeof *o);
    o->type = MG_TYPE_Q4_0;
    o->n_threads = cli_default_threads();
    o->reps = 5;
    o->warmup = 1;
    o->gen = 32;
    o->seed = 1;
    o->prompt = (int_list){{128, 512}, 2};
    o->depth = (int_list){{0, 512}, 2};
    o->image = (int_list){{0}, 0};
    bool type_given = false, vtype_given = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--json") == 0 || strcmp(a, "--vision-only") == 0 || strcmp(a, "--llm-only") == 0) {
            if (a[2] == 'j') o->json = true;
            else if (a[2] == 'v') o->vision_only = true;
            else o->llm_only = true;
            continue;
        }
        if (a[0] != '-') return usage_error("unexpected argument '%s'", a);
        if (i + 1 >= argc) return usage_error("option %s needs a value", a);
        const char *v = argv[++i];
        long long n;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            o->model_path = v;
        } else if (!strcmp(a, "--synthetic")) {
            o->preset = v;
            if (!synth_find_preset(v)) return usage_error("unknown synthetic preset '%s'", v);
        } else if (!strcmp(a, "--type")) {
            o->type = mg_type_from_name(v);
            if (o->type != MG_TYPE_F32 && o->type != MG_TYPE_F16 && o->type != MG_TYPE_BF16 &&
                o->type != MG_TYPE_Q8_0 && o->type != MG_TYPE_Q4_0)
                return usage_error("--type '%s' is not one of f32, f16, bf16, q8_0, q4_0", v);
            type_given = true;
        } else if (!strcmp(a, "--vision-type")) {
            o->vision_type = mg_type_from_name(v);
            if (o->vision_type != MG_TYPE_F32 && o->vision_type != MG_TYPE_F16 && o->vision_type != MG_TYPE_BF16 &&
                o->vision_type != MG_TYPE_Q8_0 && o->vision_type != MG_TYPE_Q4_0)
                return usage_error("--vision-type '%s' is not one of f32, f16, bf16, q8_0, q4_0", v);
            vtype_given = true;
        } else if (!strcmp(a, "--write-gguf")) {
            o->write_out = v;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!cli_parse_int(v, 1, 256, &n)) return usage_error("bad thread count '%s' (1..256)", v);
            o->n_threads = (int)n;
        } else if (!strcmp(a, "-r") || !strcmp(a, "--reps")) {
            if (!cli_parse_int(v, 1, 1000, &n)) return usage_error("bad repetition count '%s' (1..1000)", v);
            o->reps = (int)n;
        } else if (!strcmp(a, "--warmup")) {
            if (!cli_parse_int(v, 0, 1000, &n)) return usage_error("bad warm-up count '%s' (0..1000)", v);
            o->warmup = (int)n;
        } else if (!strcmp(a, "--gen")) {
            if (!cli_parse_int(v, 0, 65536, &n)) return usage_error("bad --gen '%s' (0..65536)", v);
            o->gen = (int)n;
        } else if (!strcmp(a, "--seed")) {
            if (!cli_parse_int(v, 0, INT64_MAX, &n)) return usage_error("bad --seed '%s'", v);
            o->seed = (uint64_t)n;
        } else if (!strcmp(a, "--prompt")) {
            if (!parse_list(v, 0, 65536, &o->prompt)) return usage_error("bad --prompt list '%s' (e.g. 128,512)", v);
        } else if (!strcmp(a, "--depth")) {
            if (!parse_list(v, 0, 65536, &o->depth)) return usage_error("bad --depth list '%s' (e.g. 0,512)", v);
        } else if (!strcmp(a, "--image")) {
            if (!parse_list(v, 0, 4096, &o->image)) return usage_error("bad --image list '%s' (e.g. 224,448)", v);
            o->image_given = true;
        } else {
            return usage_error("unknown option '%s'", a);
        }
    }
    if (!o->model_path == !o->preset) return usage_error("%s", "give exactly one of -m FILE and --synthetic PRESET");
    if (type_given && !o->preset) return usage_error("%s", "--type only applies to --synthetic");
    if (vtype_given && !o->preset) return usage_error("%s", "--vision-type only applies to --synthetic");
    if (o->write_out && !o->preset) return usage_error("%s", "--write-gguf needs --synthetic PRESET");
    if (o->llm_only && !o->preset) return usage_error("%s", "--llm-only only applies to --synthetic");
    if (o->llm_only && o->vision_only) return usage_error("%s", "--llm-only and --vision-only exclude each other");
    if (!vtype_given) o->vision_type = o->type;
    const synth_preset *p = synth_find_preset(o->preset);
    if (p && !synth_has_vision(p) && (o->vision_only || vtype_given))
        return usage_error("synthetic preset '%s' has no vision tower", p->name);
    drop_zeros(&o->prompt);
    drop_zeros(&o->image);
    if (o->image.n > 0 && p && (o->llm_only || !synth_has_vision(p)))
        return usage_error("%s", "--image: this synthetic model has no vision tower (use --image 0)");
    if (o->vision_only && o->image_given && o->image.n == 0)
        return usage_error("%s", "--vision-only with --image 0 leaves nothing to time");
    for (int i = 0; i < o->image.n; i++)
        if (o->image.v[i] % 14 != 0) return usage_error("%s", "--image sizes must be multiples of 14 (224, 448)");
    if (o->write_out && o->image.n > 1) return usage_error("%s", "--write-gguf writes one image size: give one --image");
    if (o->write_out && o->image.n == 1 && p->qf_block == 0 && (o->image.v[0] / p->v_patch) % 2 != 0)
        return usage_error("%s", "--image: merge4 needs an even patch grid (an even multiple of 14)");
    if (o->gen == 0) o->depth.n = 0;
    return -1;
}

/* ==== Helpers ==== */

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void summarize(bench_result *r, int reps) {
    double *s = malloc((size_t)reps * sizeof *s);
    if (!s) return;
    memcpy(s, r->ms, (size_t)reps * sizeof *s);
    qsort(s, (size_t)reps, sizeof *s, cmp_double);
    r->ms_min = s[0];
    r->ms_median = reps % 2 ? s[reps / 2] : 0.5 * (s[reps / 2 - 1] + s[reps / 2]);
    free(s);
}

static double peak_rss_mib(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return (double)ru.ru_maxrss / 1024.0; /* ru_maxrss is in KiB on Linux */
}

/* CPU model name from /proc/cpuinfo (empty when unknown). */
static void cpu_name(char *buf, size_t len) {
    buf[0] = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        const char *c = strchr(line, ':');
        if (!c) break;
        c++;
        while (*c == ' ' || *c == '\t') c++;
        snprintf(buf, len, "%s", c);
        buf[strcspn(buf, "\n")] = 0;
        break;
    }
    fclose(f);
}

/* Writes the synthetic file of --write-gguf in this process (the child of write_synthetic, or a
 * user's own --write-gguf). Returns 0, or 1 after printing the error. */
static int write_synthetic_here(const synth_opts *so, const char *preset, const char *path) {
    char err[256];
    mg_status st = synth_write_gguf_opts(synth_find_preset(preset), so, path, err, sizeof err);
    return st == MG_OK ? 0 : cli_error("bench", "%s", err);
}

/* Writes a synthetic model in a child process so that its buffers stay out of our peak RSS.
 * The child is this binary run again (`bench --synthetic ... --write-gguf PATH`), never a bare
 * fork: by the time a vision stub is written the model's worker threads exist, and a fork of a
 * threaded process may copy an allocator lock that another thread holds (AddressSanitizer's
 * allocator has no fork handler: the child then waited forever). Where the binary cannot be
 * found again (no /proc), the file is written in this process. Returns 0, or 1 after printing
 * the error. */
static int write_synthetic(const bench_opts *o, const synth_opts *so, const char *path) {
    const synth_preset *p = synth_find_preset(o->preset);
    char seed[32], image[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)so->seed);
    snprintf(image, sizeof image, "%d", so->image_size);
    const char *args[20];
    int n = 0;
    args[n++] = "minigpt";
    args[n++] = "bench";
    args[n++] = "--synthetic";
    args[n++] = p->name;
    args[n++] = "--type";
    args[n++] = mg_type_name(so->type);
    if (so->part != SYNTH_LLM_ONLY && synth_has_vision(p)) {
        args[n++] = "--vision-type";
        args[n++] = mg_type_name(so->vision_type);
    }
    args[n++] = "--seed";
    args[n++] = seed;
    if (so->part == SYNTH_VISION_STUB) args[n++] = "--vision-only";
    if (so->part == SYNTH_LLM_ONLY) args[n++] = "--llm-only";
    if (so->image_size > 0) {
        args[n++] = "--image";
        args[n++] = image;
    }
    args[n++] = "--write-gguf";
    args[n++] = path;
    args[n] = NULL;

    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa) != 0) return cli_error("bench", "%s", "posix_spawn_file_actions_init failed");
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    fflush(NULL);
    pid_t pid;
    int e = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, (char *const *)args, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e != 0) return write_synthetic_here(so, o->preset, path); /* no /proc: write it here */
    int ws;
    while (waitpid(pid, &ws, 0) < 0)
        if (errno != EINTR) return cli_error("bench", "waitpid failed: %s", strerror(errno));
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
        if (!WIFEXITED(ws)) cli_error("bench", "the synthetic model writer died (signal %d)", WTERMSIG(ws));
        else if (WEXITSTATUS(ws) == 127) cli_error("bench", "%s", "could not run /proc/self/exe to write the synthetic model");
        return 1;
    }
    return 0;
}

/* The synthetic file of a part (image_size 0: the preset's). */
static synth_opts synth_opts_of(const bench_opts *o, synth_part part, int image_size) {
    synth_opts so = synth_default_opts(o->type, o->seed);
    so.part = part;
    so.vision_type = o->vision_type;
    so.image_size = image_size;
    return so;
}

/* Writes a synthetic file to a temporary path, opens it and unlinks it at once. Returns 0, or 1
 * after printing the error. */
static int open_synthetic(const bench_opts *o, const synth_opts *so, mg_model **m, uint64_t *file_bytes) {
    char tmp_path[4096];
    const char *dir = getenv("TMPDIR");
    snprintf(tmp_path, sizeof tmp_path, "%s/minigpt-bench-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(tmp_path);
    if (fd < 0) return cli_error("bench", "cannot create a temporary file %s: %s", tmp_path, strerror(errno));
    close(fd);
    if (write_synthetic(o, so, tmp_path)) {
        unlink(tmp_path);
        return 1;
    }
    struct stat sb;
    *file_bytes = stat(tmp_path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    char err[512];
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = o->n_threads;
    mg_status st = mg_model_open(m, tmp_path, &mp, err, sizeof err);
    unlink(tmp_path);
    if (st != MG_OK) return cli_error("bench", "%s", err);
    return 0;
}

/* ==== Timed tests ==== */

typedef struct {
    mg_session *s;
    const int32_t *ids; /* [n_ids] fixed pseudo-random prompt */
    int n_vocab;
} bench_ctx;

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* One prefill of n tokens from an empty cache; returns ms or < 0 on error. */
static double run_prefill(bench_ctx *c, int n) {
    if (mg_session_rewind(c->s, 0) != MG_OK) return -1;
    double t0 = now_ms();
    if (mg_session_eval_tokens(c->s, c->ids, n) != MG_OK) return -1;
    return now_ms() - t0;
}

/* Decodes n tokens one at a time after `depth` cached positions (already evaluated). */
static double run_decode(bench_ctx *c, int depth, int n) {
    if (mg_session_rewind(c->s, depth) != MG_OK) return -1;
    int32_t id = c->ids[depth];
    double t0 = now_ms();
    for (int i = 0; i < n; i++) {
        if (mg_session_eval_tokens(c->s, &id, 1) != MG_OK) return -1;
        id = argmax(mg_session_logits(c->s), c->n_vocab);
    }
    return now_ms() - t0;
}

/* Runs warm-ups then reps timed runs of one test into r. Returns 0 or 1 (error printed). */
static int run_test(bench_ctx *c, const bench_opts *o, bench_result *r) {
    if (!strcmp(r->kind, "decode")) {
        /* fill the cache to the depth once; every run rewinds to it */
        if (mg_session_rewind(c->s, 0) != MG_OK ||
            (r->depth > 0 && mg_session_eval_tokens(c->s, c->ids, r->depth) != MG_OK))
            return cli_error("bench", "prefill to depth %d failed: %s", r->depth, mg_session_errmsg(c->s));
    }
    for (int i = 0; i < o->warmup + o->reps; i++) {
        double ms = !strcmp(r->kind, "prefill") ? run_prefill(c, r->n_tokens) : run_decode(c, r->depth, r->n_tokens);
        if (ms < 0) return cli_error("bench", "%s failed: %s", r->kind, mg_session_errmsg(c->s));
        if (i >= o->warmup) r->ms[i - o->warmup] = ms;
    }
    summarize(r, o->reps);
    return 0;
}

/* Times the whole image encode of m (pixels -> LLM embedding rows, mg_vl_encode_stages) on a
 * fixed pseudo-random input into r. Returns 0 or 1 (error printed). */
static int time_image(const mg_model *m, const bench_opts *o, image_result *r) {
    mg_vl_dims dims;
    char err[512];
    if (mg_vl_stage_dims(m, &dims) != MG_OK) return cli_error("bench", "the model has no vision tower");
    size_t S = (size_t)dims.image_size;
    float *pixels = malloc(3 * S * S * sizeof *pixels);
    float *tokens = malloc((size_t)dims.n_img_tok * (size_t)dims.llm_dim * sizeof *tokens);
    int rc = 1;
    if (!pixels || !tokens) {
        cli_error("bench", "out of memory");
        goto done;
    }
    /* normalised pixels are roughly in [-2, 2] */
    uint64_t rs = o->seed * 0x2545F4914F6CDD1Dull + 99;
    for (size_t i = 0; i < 3 * S * S; i++) {
        rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
        pixels[i] = (float)(rs >> 40) / (float)(1 << 24) * 4.0f - 2.0f;
    }
    for (int i = 0; i < o->warmup + o->reps; i++) {
        double t0 = now_ms();
        if (mg_vl_encode_stages(m, pixels, NULL, NULL, tokens, err, sizeof err) != MG_OK) {
            cli_error("bench", "image encode failed: %s", err);
            goto done;
        }
        if (i >= o->warmup) r->ms[i - o->warmup] = now_ms() - t0;
    }
    bench_result tmp = {.ms = r->ms};
    summarize(&tmp, o->reps);
    r->ms_median = tmp.ms_median;
    r->ms_min = tmp.ms_min;
    r->n_img_tok = dims.n_img_tok;
    r->timed = true;
    rc = 0;
done:
    free(pixels);
    free(tokens);
    return rc;
}

/* ==== Output ==== */

static void print_table(const bench_opts *o, const char *what, const char *desc, uint64_t file_bytes,
                        const image_result *img, const bench_result *res, int n_res, double rss, const char *cpu) {
    printf("minigpt bench: %s\n", what);
    printf("model: %s, file %.2f GiB\n", desc, (double)file_bytes / (1024.0 * 1024.0 * 1024.0));
    printf("cpu: %s | isa %s | threads %d | %d runs after %d warm-up\n\n", cpu[0] ? cpu : "?", mg_kernels_isa(),
           o->n_threads, o->reps, o->warmup);
    printf("| %-18s | %11s | %11s | %12s | %12s |\n", "test", "median ms", "min ms", "median tok/s", "best tok/s");
    printf("|%s|%s|%s|%s|%s|\n", "--------------------", "------------:", "------------:", "-------------:",
           "-------------:");
    for (int i = 0; i < o->image.n; i++) {
        if (img[i].timed)
            printf("| image %-12d | %11.1f | %11.1f | %12s | %12s |\n", img[i].size, img[i].ms_median, img[i].ms_min,
                   "-", "-");
        else printf("| image %-12d | %11s | %11s | %12s | %12s |\n", img[i].size, "-", "-", "-", "-");
    }
    for (int i = 0; i < n_res; i++) {
        const bench_result *r = &res[i];
        char name[40];
        if (!strcmp(r->kind, "prefill")) snprintf(name, sizeof name, "prefill pp%d", r->n_tokens);
        else snprintf(name, sizeof name, "decode tg%d @ %d", r->n_tokens, r->depth);
        printf("| %-18s | %11.1f | %11.1f | %12.2f | %12.2f |\n", name, r->ms_median, r->ms_min,
               r->n_tokens * 1e3 / r->ms_median, r->n_tokens * 1e3 / r->ms_min);
    }
    if (o->image.n) printf("\n");
    for (int i = 0; i < o->image.n; i++) printf("image %d: %s\n", img[i].size, img[i].note);
    printf("\npeak RSS %.1f MiB\n", rss);
}

static int print_json(const bench_opts *o, const char *what, const char *desc, uint64_t file_bytes,
                      const image_result *imr, const bench_result *res, int n_res, double rss, const char *cpu,
                      const mg_model *m) {
    json_t *root = json_object();
    json_object_set_new(root, "minigpt_version", json_string(MG_VERSION));
    json_object_set_new(root, "model", json_string(what));
    json_object_set_new(root, "desc", json_string(desc));
    json_object_set_new(root, "synthetic", o->preset ? json_string(o->preset) : json_null());
    json_object_set_new(root, "synthetic_storage",
                        o->preset ? json_string("temporary file, unlinked after the model mapped it") : json_null());
    json_object_set_new(root, "type", json_string(o->preset ? mg_type_name(o->type) : ""));
    json_object_set_new(root, "vision_type", json_string(o->preset ? mg_type_name(o->vision_type) : ""));
    json_object_set_new(root, "vision_only", json_boolean(o->vision_only));
    json_object_set_new(root, "file_bytes", json_integer((json_int_t)file_bytes));
    /* the language model's shape; null under --vision-only with --synthetic (no LLM written) */
    json_object_set_new(root, "n_layer", m ? json_integer(mg_model_n_layer(m)) : json_null());
    json_object_set_new(root, "n_embd", m ? json_integer(mg_model_n_embd(m)) : json_null());
    json_object_set_new(root, "n_vocab", m ? json_integer(mg_model_n_vocab(m)) : json_null());
    json_object_set_new(root, "isa", json_string(mg_kernels_isa()));
    json_object_set_new(root, "threads", json_integer(o->n_threads));
    json_object_set_new(root, "reps", json_integer(o->reps));
    json_object_set_new(root, "warmup", json_integer(o->warmup));
    json_object_set_new(root, "cpu", json_string(cpu));
    json_object_set_new(root, "compiler", json_string(__VERSION__));
    json_t *img = json_array();
    for (int i = 0; i < o->image.n; i++) {
        const image_result *r = &imr[i];
        json_t *e = json_object();
        json_object_set_new(e, "size", json_integer(r->size));
        json_object_set_new(e, "native", json_boolean(r->native));
        json_object_set_new(e, "ms_median", r->timed ? json_real(r->ms_median) : json_null());
        json_object_set_new(e, "ms_min", r->timed ? json_real(r->ms_min) : json_null());
        json_t *runs = json_array();
        for (int k = 0; r->timed && k < o->reps; k++) json_array_append_new(runs, json_real(r->ms[k]));
        json_object_set_new(e, "runs_ms", runs);
        json_object_set_new(e, "n_img_tok", r->timed ? json_integer(r->n_img_tok) : json_null());
        json_object_set_new(e, "source", r->source ? json_string(r->source) : json_null());
        json_object_set_new(e, "note", json_string(r->note));
        json_array_append_new(img, e);
    }
    json_object_set_new(root, "image", img);
    json_t *pre = json_array(), *dec = json_array();
    for (int i = 0; i < n_res; i++) {
        const bench_result *r = &res[i];
        json_t *e = json_object(), *runs = json_array();
        bool is_pre = !strcmp(r->kind, "prefill");
        json_object_set_new(e, is_pre ? "n_prompt" : "n_gen", json_integer(r->n_tokens));
        if (!is_pre) json_object_set_new(e, "depth", json_integer(r->depth));
        json_object_set_new(e, "ms_median", json_real(r->ms_median));
        json_object_set_new(e, "ms_min", json_real(r->ms_min));
        json_object_set_new(e, "tok_s_median", json_real(r->n_tokens * 1e3 / r->ms_median));
        json_object_set_new(e, "tok_s_best", json_real(r->n_tokens * 1e3 / r->ms_min));
        for (int k = 0; k < o->reps; k++) json_array_append_new(runs, json_real(r->ms[k]));
        json_object_set_new(e, "runs_ms", runs);
        json_array_append_new(is_pre ? pre : dec, e);
    }
    json_object_set_new(root, "prefill", pre);
    json_object_set_new(root, "decode", dec);
    json_object_set_new(root, "peak_rss_mib", json_real(rss));
    char *s = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!s) return cli_error("bench", "out of memory");
    puts(s);
    free(s);
    return 0;
}

/* ==== Entry point ==== */

/* Times image size r->size: on m when it is m's size, else on a vision-stub synthetic file at
 * that size, else records why it is not possible. Returns 0 or 1 (error printed). */
static int bench_image(const bench_opts *o, const mg_model *m, image_result *r, char *desc, size_t desc_len,
                       uint64_t *file_bytes) {
    const synth_preset *p = synth_find_preset(o->preset);
    const int native = m && mg_model_has_vision(m) ? mg_model_image_size(m) : p ? p->v_image : 0;
    r->native = r->size == native;
    if (m && mg_model_has_vision(m) && r->size == mg_model_image_size(m)) {
        r->source = "model";
        snprintf(r->note, sizeof r->note, "whole encode (ViT + %s + projection) on the model, %d px native",
                 !strcmp(mg_model_variant(m), "minigpt4-vicuna") ? "Q-Former" : "merge4", r->size);
        return time_image(m, o, r);
    }
    if (p && synth_has_vision(p) && p->qf_block == 0 && (r->size / p->v_patch) % 2 != 0) {
        snprintf(r->note, sizeof r->note, "not possible: merge4 needs an even patch grid (%d px = %dx%d patches)",
                 r->size, r->size / p->v_patch, r->size / p->v_patch);
        return 0;
    }
    if (p && synth_has_vision(p)) {
        synth_opts so = synth_opts_of(o, SYNTH_VISION_STUB, r->size);
        mg_model *vm = NULL;
        uint64_t bytes = 0;
        if (!o->json && isatty(STDERR_FILENO))
            fprintf(stderr, "  writing the vision side of %s at %d px ...\n", p->name, r->size);
        if (open_synthetic(o, &so, &vm, &bytes)) return 1;
        if (!desc[0]) snprintf(desc, desc_len, "%s", mg_model_desc(vm));
        if (!*file_bytes) *file_bytes = bytes;
        r->source = "vision-stub";
        int g = r->size / p->v_patch;
        snprintf(r->note, sizeof r->note,
                 "whole encode on a vision-only synthetic file at %d px (1-layer stand-in LLM)%s", r->size,
                 g != p->v_pos_grid ? ", position embedding interpolated at load" : "");
        if (!o->json && isatty(STDERR_FILENO)) fprintf(stderr, "  timing image encode at %d px ...\n", r->size);
        int rc = time_image(vm, o, r);
        mg_model_close(vm);
        return rc;
    }
    if (m && !mg_model_has_vision(m)) snprintf(r->note, sizeof r->note, "not possible: the model has no vision tower");
    else
        snprintf(r->note, sizeof r->note,
                 "not possible: the file fixes the image size at %d (minigpt.vision.image_size); "
                 "other sizes need --synthetic", native);
    return 0;
}

/* `minigpt bench`: see usage(). */
int cmd_bench(int argc, char **argv) {
    bench_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0) return rc;
    const synth_preset *p = synth_find_preset(o.preset);
    const synth_part part = o.vision_only ? SYNTH_VISION_STUB : o.llm_only ? SYNTH_LLM_ONLY : SYNTH_FULL;

    if (o.write_out) {
        synth_opts so = synth_opts_of(&o, part, o.image.n ? o.image.v[0] : 0);
        if (write_synthetic_here(&so, o.preset, o.write_out)) return 1;
        printf("wrote %s: synthetic %s%s, %s", o.write_out, p->name,
               part == SYNTH_VISION_STUB ? " (vision side + 1-layer stand-in LLM)"
               : part == SYNTH_LLM_ONLY || !synth_has_vision(p) ? " (LLM only, architecture llama)"
                                                                 : "",
               mg_type_name(o.type));
        if (part != SYNTH_LLM_ONLY && synth_has_vision(p))
            printf(", vision %s at %d px", mg_type_name(o.vision_type), so.image_size ? so.image_size : p->v_image);
        printf(", %.2f B weights, %.2f GiB of tensor data\n", (double)synth_n_params(p, &so) * 1e-9,
               (double)synth_data_bytes(p, &so) / (1024.0 * 1024.0 * 1024.0));
        return 0;
    }

    char err[512], desc[512] = "";
    uint64_t file_bytes = 0;
    mg_model *m = NULL;
    if (!(o.vision_only && o.preset)) {
        if (o.preset) {
            synth_opts so = synth_opts_of(&o, part, 0);
            if (open_synthetic(&o, &so, &m, &file_bytes)) return 1;
        } else {
            struct stat sb;
            if (stat(o.model_path, &sb) == 0) file_bytes = (uint64_t)sb.st_size;
            mg_model_params mp = mg_model_default_params();
            mp.n_threads = o.n_threads;
            if (mg_model_open(&m, o.model_path, &mp, err, sizeof err) != MG_OK) return cli_error("bench", "%s", err);
        }
        snprintf(desc, sizeof desc, "%s", mg_model_desc(m));
        if (o.vision_only && !mg_model_has_vision(m)) {
            mg_model_close(m);
            return cli_error("bench", "--vision-only: %s has no vision tower", o.model_path);
        }
    }
    /* default image size: the model's own (the preset's under --vision-only) */
    if (!o.image_given) {
        int native = m ? mg_model_image_size(m) : p->v_image;
        if (native > 0) o.image = (int_list){{native}, 1};
    }
    if (o.vision_only) o.prompt.n = o.depth.n = 0;

    int max_prompt = 0, max_ctx = 1;
    for (int i = 0; i < o.prompt.n; i++) max_prompt = MG_MAX(max_prompt, o.prompt.v[i]);
    max_ctx = MG_MAX(max_ctx, max_prompt);
    for (int i = 0; i < o.depth.n; i++) max_ctx = MG_MAX(max_ctx, o.depth.v[i] + o.gen);
    int n_ids = max_ctx + 1;

    mg_session *s = NULL;
    mg_session_params sp = mg_session_default_params();
    sp.n_ctx = max_ctx;
    sp.n_batch = MG_MAX(512, max_prompt);
    int32_t *ids = malloc((size_t)n_ids * sizeof *ids);
    int n_res = o.prompt.n + o.depth.n;
    bench_result *res = calloc((size_t)MG_MAX(n_res, 1), sizeof *res);
    image_result *img = calloc((size_t)MG_MAX(o.image.n, 1), sizeof *img);
    double *ms = malloc((size_t)(MG_MAX(n_res, 1) + o.image.n) * (size_t)o.reps * sizeof *ms);
    rc = 1;
    if (!ids || !res || !img || !ms) {
        cli_error("bench", "out of memory");
        goto done;
    }
    for (int i = 0; i < o.image.n; i++) {
        img[i].size = o.image.v[i];
        img[i].ms = ms + (size_t)(MG_MAX(n_res, 1) + i) * (size_t)o.reps;
        if (!o.json && isatty(STDERR_FILENO) && m && mg_model_has_vision(m) && img[i].size == mg_model_image_size(m))
            fprintf(stderr, "  timing image encode at %d px ...\n", img[i].size);
        if (bench_image(&o, m, &img[i], desc, sizeof desc, &file_bytes)) goto done;
    }
    if (n_res > 0) {
        if (mg_session_create(&s, m, &sp, err, sizeof err) != MG_OK) {
            cli_error("bench", "%s", err);
            goto done;
        }
        /* fixed pseudo-random prompt over the ordinary pieces (past <unk>, <s>, </s>) */
        int n_tok = mg_tokenizer_n_vocab(mg_model_tokenizer(m));
        uint64_t rs = o.seed * 0x9E3779B97F4A7C15ull + 12345;
        for (int i = 0; i < n_ids; i++) {
            rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
            ids[i] = n_tok > 3 ? 3 + (int32_t)(rs % (uint64_t)(n_tok - 3)) : 0;
        }
        ids[0] = mg_token_bos(mg_model_tokenizer(m)) >= 0 ? mg_token_bos(mg_model_tokenizer(m)) : ids[0];
    }

    bench_ctx c = {s, ids, m ? mg_model_n_vocab(m) : 0};
    for (int i = 0; i < n_res; i++) {
        bench_result *r = &res[i];
        r->ms = ms + (size_t)i * (size_t)o.reps;
        if (i < o.prompt.n) {
            r->kind = "prefill";
            r->n_tokens = o.prompt.v[i];
        } else {
            r->kind = "decode";
            r->n_tokens = o.gen;
            r->depth = o.depth.v[i - o.prompt.n];
        }
        if (!o.json && isatty(STDERR_FILENO))
            fprintf(stderr, "  timing %s of %d tokens (depth %d) ...\n", r->kind, r->n_tokens, r->depth);
        if (run_test(&c, &o, r)) goto done;
    }

    char what[4200], cpu[256];
    if (o.preset)
        snprintf(what, sizeof what, "synthetic %s %s%s%s%s", o.preset, mg_type_name(o.type),
                 part != SYNTH_LLM_ONLY && synth_has_vision(p) ? ", vision " : "",
                 part != SYNTH_LLM_ONLY && synth_has_vision(p) ? mg_type_name(o.vision_type) : "",
                 o.vision_only ? " (vision only)" : "");
    else snprintf(what, sizeof what, "%s%s", o.model_path, o.vision_only ? " (vision only)" : "");
    cpu_name(cpu, sizeof cpu);
    double rss = peak_rss_mib();
    if (o.json) rc = print_json(&o, what, desc, file_bytes, img, res, n_res, rss, cpu, o.vision_only ? NULL : m);
    else {
        print_table(&o, what, desc, file_bytes, img, res, n_res, rss, cpu);
        rc = 0;
    }
done:
    free(ms);
    free(img);
    free(res);
    free(ids);
    mg_session_free(s);
    mg_model_close(m);
    return rc;
}
