/*
 * cmd_generate.c - `minigpt generate`: evaluates a text prompt and streams the continuation to
 * stdout, or with --logprobs prints one JSON object per generated token. Timings go to stderr.
 * A thin client of include/minigpt.h.
 */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_STOPS 16

static void usage(FILE *f) {
    fprintf(f,
            "usage: minigpt generate -m FILE -p TEXT [options]\n\n"
            "  -m, --model FILE        GGUF model\n"
            "  -p, --prompt TEXT       prompt (literal <s>, </s> map to their tokens)\n"
            "  -n, --n-predict N       max new tokens (default 128; -1: until EOS or context end)\n"
            "      --temp T            temperature (default 0.8; 0 = greedy)\n"
            "      --top-k K           top-k filter (default 40; 0 = off)\n"
            "      --top-p P           top-p filter (default 0.95; 1 = off)\n"
            "      --repeat-penalty R  repetition penalty (default 1 = off)\n"
            "      --seed S            sampler seed (default 24301)\n"
            "  -t, --threads N         worker threads (default: cores, at most 8)\n"
            "  -c, --ctx-size N        context size (default: the model's)\n"
            "      --stop STR          stop string (repeatable; the text ends before it)\n"
            "      --logprobs K        print one JSON line per token with its log-probability\n"
            "                          and the K most likely tokens (instead of the text)\n"
            "      --no-bos            do not prepend the BOS token\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Writes s as a JSON string: escapes quotes, backslashes and control bytes; invalid UTF-8 bytes
 * become U+FFFD so the output always parses. */
static void json_str(FILE *f, const char *s) {
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    fputc('"', f);
    while (*p) {
        unsigned c = *p;
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc((int)c, f);
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(f, "\\u%04x", c);
            p++;
        } else if (c < 0x80) {
            fputc((int)c, f);
            p++;
        } else {
            int n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
            if (c >= 0xf5) n = 0;
            int ok = n > 0;
            for (int i = 1; ok && i < n; i++) ok = (p[i] & 0xc0) == 0x80;
            if (ok && n == 3) {
                unsigned cp = ((c & 0x0fu) << 12) | ((p[1] & 0x3fu) << 6) | (p[2] & 0x3fu);
                ok = cp >= 0x800 && (cp < 0xd800 || cp > 0xdfff);
            } else if (ok && n == 4) {
                unsigned cp = ((c & 0x07u) << 18) | ((p[1] & 0x3fu) << 12) | ((p[2] & 0x3fu) << 6) | (p[3] & 0x3fu);
                ok = cp >= 0x10000 && cp <= 0x10ffff;
            }
            if (ok) {
                fwrite(p, 1, (size_t)n, f);
                p += n;
            } else {
                fputs("\\ufffd", f);
                p++;
            }
        }
    }
    fputc('"', f);
}

typedef struct {
    const mg_tokenizer *tok;
    int logprobs_k; /* < 0: stream text */
    float *lp;      /* [n_vocab] scratch for log-softmax */
    int *top;       /* [k] */
    int n_printed;
} gen_state;

static int on_token(void *user, int32_t id, const char *piece, const float *logits, int n_vocab) {
    gen_state *g = user;
    if (g->logprobs_k < 0) {
        fputs(piece, stdout);
        fflush(stdout);
        return ferror(stdout) ? 1 : 0;
    }
    if (id < 0 || !logits) return 0; /* held-back text flush: no token of its own */
    double mx = -INFINITY, sum = 0.0;
    for (int i = 0; i < n_vocab; i++) mx = logits[i] > mx ? logits[i] : mx;
    for (int i = 0; i < n_vocab; i++) sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    for (int i = 0; i < n_vocab; i++) g->lp[i] = (float)((double)logits[i] - lse);
    int k = g->logprobs_k < n_vocab ? g->logprobs_k : n_vocab;
    for (int j = 0; j < k; j++) { /* k is small: selection by repeated scans */
        int best = -1;
        for (int i = 0; i < n_vocab; i++) {
            int taken = 0;
            for (int q = 0; q < j && !taken; q++) taken = g->top[q] == i;
            if (!taken && (best < 0 || g->lp[i] > g->lp[best])) best = i;
        }
        g->top[j] = best;
    }
    printf("{\"id\":%d,\"piece\":", (int)id);
    json_str(stdout, mg_token_piece(g->tok, id));
    printf(",\"logprob\":%.7g,\"top\":[", (double)g->lp[id]);
    for (int j = 0; j < k; j++) {
        printf("%s{\"id\":%d,\"piece\":", j ? "," : "", g->top[j]);
        json_str(stdout, mg_token_piece(g->tok, g->top[j]));
        printf(",\"logprob\":%.7g}", (double)g->lp[g->top[j]]);
    }
    printf("]}\n");
    fflush(stdout);
    g->n_printed++;
    return ferror(stdout) ? 1 : 0;
}

static bool need_value(int i, int argc, char **argv) {
    if (i + 1 < argc) return true;
    cli_error("generate", "option %s needs a value", argv[i]);
    return false;
}

/* Entry point of `minigpt generate` (see usage()); exit 0 ok, 1 error. */
int cmd_generate(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL;
    const char *stops[MAX_STOPS + 1] = {0};
    int n_stops = 0;
    long long n_predict = 128, threads = cli_default_threads(), n_ctx = 0, logprobs_k = -1, top_k = 40;
    long long seed = 24301;
    double temp = 0.8, top_p = 0.95, rep = 1.0;
    bool add_bos = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool ok = true;
        if (cli_is_help(a)) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no-bos")) {
            add_bos = false;
            continue;
        }
        if (!need_value(i, argc, argv)) return 1;
        const char *v = argv[++i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_path = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) ok = cli_parse_int(v, -1, 1 << 30, &n_predict);
        else if (!strcmp(a, "--temp")) ok = cli_parse_float(v, &temp) && temp >= 0 && isfinite(temp);
        else if (!strcmp(a, "--top-k")) ok = cli_parse_int(v, 0, 1 << 30, &top_k);
        else if (!strcmp(a, "--top-p")) ok = cli_parse_float(v, &top_p) && top_p > 0 && top_p <= 1;
        else if (!strcmp(a, "--repeat-penalty")) ok = cli_parse_float(v, &rep) && rep > 0 && isfinite(rep);
        else if (!strcmp(a, "--seed")) ok = cli_parse_int(v, 0, INT64_MAX, &seed);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) ok = cli_parse_int(v, 1, 256, &threads);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) ok = cli_parse_int(v, 0, 1 << 24, &n_ctx);
        else if (!strcmp(a, "--logprobs")) ok = cli_parse_int(v, 0, 1000, &logprobs_k);
        else if (!strcmp(a, "--stop")) {
            if (n_stops == MAX_STOPS) return cli_error("generate", "at most %d --stop strings", MAX_STOPS);
            if (!*v) return cli_error("generate", "--stop needs a non-empty string");
            stops[n_stops++] = v;
        } else {
            return cli_error("generate", "unknown option '%s' (see minigpt generate --help)", a);
        }
        if (!ok) return cli_error("generate", "bad value '%s' for %s", v, a);
    }
    if (!model_path) return cli_error("generate", "missing -m FILE (see minigpt generate --help)");
    if (!prompt) return cli_error("generate", "missing -p TEXT (see minigpt generate --help)");

    char err[512];
    mg_model *model = NULL;
    mg_session *s = NULL;
    mg_sampler *smp = NULL;
    int32_t *ids = NULL;
    gen_state g = {0};
    int rc = 1;
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = (int)threads;
    if (mg_model_open(&model, model_path, &mp, err, sizeof err) != MG_OK) {
        cli_error("generate", "%s", err);
        goto done;
    }
    mg_session_params sp = mg_session_default_params();
    sp.n_ctx = (int)n_ctx;
    if (mg_session_create(&s, model, &sp, err, sizeof err) != MG_OK) {
        cli_error("generate", "%s", err);
        goto done;
    }
    const mg_tokenizer *tok = mg_model_tokenizer(model);
    size_t plen = strlen(prompt);
    if (plen > (1u << 28)) {
        cli_error("generate", "the prompt is too long (%zu bytes)", plen);
        goto done;
    }
    int n_ids = 0, cap = (int)plen + 8;
    ids = malloc((size_t)cap * sizeof *ids);
    mg_status st = ids ? mg_tokenize(tok, prompt, plen, add_bos, 1, ids, cap, &n_ids) : MG_ERR_NOMEM;
    if (st == MG_ERR_INVALID_ARG && n_ids > cap) { /* buffer too small: retry with the size asked for */
        free(ids);
        cap = n_ids;
        ids = malloc((size_t)cap * sizeof *ids);
        st = ids ? mg_tokenize(tok, prompt, plen, add_bos, 1, ids, cap, &n_ids) : MG_ERR_NOMEM;
    }
    if (st != MG_OK) {
        cli_error("generate", "cannot tokenize the prompt: %s", mg_status_str(st));
        goto done;
    }
    if (n_ids == 0) {
        cli_error("generate", "the prompt is empty (give text, or drop --no-bos)");
        goto done;
    }
    if (n_ids > mg_session_n_ctx(s)) {
        cli_error("generate", "the prompt is %d tokens, longer than the context (%d)", n_ids, mg_session_n_ctx(s));
        goto done;
    }
    mg_sampler_params smpp = mg_sampler_default_params();
    smpp.temperature = (float)temp;
    smpp.top_k = (int)top_k;
    smpp.top_p = (float)top_p;
    smpp.repeat_penalty = (float)rep;
    smpp.seed = (uint64_t)seed;
    if (mg_sampler_create(&smp, &smpp, mg_model_n_vocab(model)) != MG_OK) {
        cli_error("generate", "cannot create the sampler");
        goto done;
    }
    g.tok = tok;
    g.logprobs_k = (int)logprobs_k;
    if (logprobs_k >= 0) {
        g.lp = malloc((size_t)mg_model_n_vocab(model) * sizeof(float));
        g.top = malloc((size_t)(logprobs_k + 1) * sizeof(int));
        if (!g.lp || !g.top) {
            cli_error("generate", "out of memory");
            goto done;
        }
    }

    double t0 = now_s();
    if (mg_session_eval_tokens(s, ids, n_ids) != MG_OK) {
        cli_error("generate", "%s", mg_session_errmsg(s));
        goto done;
    }
    double t1 = now_s();
    mg_generate_params gp = mg_generate_default_params();
    gp.n_predict = (int)n_predict;
    gp.stop_strings = n_stops ? stops : NULL;
    gp.on_token = on_token;
    gp.user = &g;
    int n_gen = 0;
    st = mg_generate(s, smp, &gp, NULL, 0, &n_gen);
    double t2 = now_s();
    if (logprobs_k < 0) {
        fputc('\n', stdout);
        fflush(stdout);
    }
    if (st != MG_OK) {
        cli_error("generate", "%s", mg_session_errmsg(s));
        goto done;
    }
    fprintf(stderr, "minigpt generate: prompt %d tokens in %.3f s (%.2f tok/s), generated %d tokens in %.3f s "
                    "(%.2f tok/s)\n",
            n_ids, t1 - t0, n_ids / fmax(t1 - t0, 1e-9), n_gen, t2 - t1, n_gen / fmax(t2 - t1, 1e-9));
    rc = 0;
done:
    free(g.lp);
    free(g.top);
    free(ids);
    mg_sampler_free(smp);
    mg_session_free(s);
    mg_model_close(model);
    return rc;
}
