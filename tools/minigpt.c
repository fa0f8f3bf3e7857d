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
