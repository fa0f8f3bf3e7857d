/*
 * minigpt.c - the `minigpt` command: dispatches to the subcommands in tools/cmd_*.c, all of them
 * thin clients of include/minigpt.h.
 */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} commands[] = {
    {"run", cmd_run, "ask a MiniGPT model about an image: grounded answer, JSON, boxes drawn"},
    {"chat", cmd_chat, "talk with a MiniGPT model about an image (stdin lines, streamed answers)"},
    {"serve", cmd_serve, "OpenAI-compatible HTTP API and a grounded web demo (127.0.0.1:8080)"},
    {"generate", cmd_generate, "generate text with a LLaMA-family GGUF model"},
    {"tokenize", cmd_tokenize, "turn text into token ids (and back) with a LLaMA tokenizer"},
    {"bench", cmd_bench, "time prefill and decode of a GGUF or synthetic model"},
    {"info", cmd_info, "print a GGUF file's metadata and tensor table"},
    {"image", cmd_image, "decode and resize an image exactly as the model sees it"},
    {"quantize", cmd_quantize, "re-type the tensors of a GGUF file (f32 f16 bf16 q8_0 q4_0)"},
    {"convert", cmd_convert, "build a GGUF from official checkpoints (HF LLaMA, EVA ViT, MiniGPT)"},
    {"synth", cmd_synth, "render a synthetic grounded data set (images, tasks, eval ground truth)"},
    {"train", cmd_train, "train a small MiniGPT-v2 model on the synthetic world or a folder"},
    {"eval", cmd_eval, "score answers: RefCOCO, VQA, detection, grounding, identify, caption"},
    {"quality", cmd_quality, "compare a re-typed model with its reference: top-1, KL, ViT cosine"},
};

int cli_error(const char *cmd, const char *fmt, ...) {
    fprintf(stderr, "minigpt %s: ", cmd);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

bool cli_is_help(const char *a) { return strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0; }

bool cli_parse_int(const char *s, long long lo, long long hi, long long *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool cli_parse_float(const char *s, double *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || v != v) return false;
    *out = v;
    return true;
}

int cli_default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    if (n > 8) n = 8;
    return (int)n;
}

void cli_gen_opts_init(cli_gen_opts *o) {
    memset(o, 0, sizeof *o);
    o->rp = 1;
    o->n_predict = -2;
}

int cli_parse_gen_opt(const char *cmd, cli_gen_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    if (strcmp(a, "--greedy") == 0) {
        o->greedy = true;
        return 1;
    }
    bool temp = strcmp(a, "--temp") == 0, top_p = strcmp(a, "--top-p") == 0;
    bool rp = strcmp(a, "--repeat-penalty") == 0, seed = strcmp(a, "--seed") == 0;
    bool n = strcmp(a, "-n") == 0 || strcmp(a, "--n-predict") == 0;
    if (!temp && !top_p && !rp && !seed && !n) return 0;
    if (*i + 1 >= argc) return cli_error(cmd, "%s needs a value", a), -1;
    const char *v = argv[++*i];
    if (temp && (!cli_parse_float(v, &o->temp) || o->temp < 0)) return cli_error(cmd, "bad --temp '%s'", v), -1;
    if (top_p && (!cli_parse_float(v, &o->top_p) || o->top_p <= 0 || o->top_p > 1))
        return cli_error(cmd, "bad --top-p '%s'", v), -1;
    if (rp && (!cli_parse_float(v, &o->rp) || o->rp <= 0)) return cli_error(cmd, "bad --repeat-penalty '%s'", v), -1;
    if (seed && !cli_parse_int(v, 0, INT64_MAX, &o->seed)) return cli_error(cmd, "bad --seed '%s'", v), -1;
    if (n && !cli_parse_int(v, -1, 1 << 24, &o->n_predict)) return cli_error(cmd, "bad -n '%s'", v), -1;
    o->have_temp |= temp;
    o->have_top_p |= top_p;
    o->have_rp |= rp;
    o->have_seed |= seed;
    return 1;
}

void cli_gen_opts_apply(const cli_gen_opts *o, const mg_model *m, mg_sampler_params *sp, mg_generate_params *gp) {
    mg_model_generation_defaults(m, sp, gp);
    if (o->greedy) {
        sp->temperature = 0;
        sp->repeat_penalty = 1;
    }
    if (o->have_rp) sp->repeat_penalty = (float)o->rp;
    if (o->have_temp) sp->temperature = (float)o->temp;
    if (o->have_top_p) sp->top_p = (float)o->top_p;
    if (o->have_seed) sp->seed = (uint64_t)o->seed;
    if (o->n_predict != -2) gp->n_predict = (int)o->n_predict;
}

static void usage(FILE *f) {
    fprintf(f, "minigpt %s - grounded vision-language models on a CPU\n\n"
               "usage: minigpt COMMAND [options]    (minigpt COMMAND --help for details)\n\ncommands:\n",
            MG_VERSION);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (cli_is_help(argv[1]) || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("minigpt %s\n", MG_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "minigpt: unknown command '%s' (see minigpt --help)\n", argv[1]);
    return 2;
}
