/*
 * cmd_convert.c - `minigpt convert`: builds one GGUF from the official checkpoints (an HF LLaMA
 * folder, eva_vit_g.pth, the BLIP-2 Q-Former file, a MiniGPT-4 / MiniGPT-v2 checkpoint); the
 * recipes live in src/convert.c, see docs/convert.md.
 */
#include "cli.h"
#include "convert.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: minigpt convert [--arch A] [--llm HF_FOLDER] [--vit eva_vit_g.pth]\n"
            "                       [--qformer blip2_pretrained_flant5xxl.pth] [--ckpt MINIGPT.pth] -o OUT.gguf\n"
            "Builds one GGUF file, streaming tensor by tensor. The recipe is chosen from the files given\n"
            "(LoRA in the checkpoint: minigptv2; --qformer: minigpt4-vicuna; llama_proj taking 4 ViT tokens:\n"
            "minigpt4-llama2; only --llm: llama) unless --arch names it. Missing required tensors and\n"
            "shape mismatches are errors; unused and unexpected keys are listed.\n"
            "  --arch A            llama | minigpt4-vicuna | minigpt4-llama2 | minigptv2\n"
            "  -o, --out FILE      output GGUF (required)\n"
            "  --outtype T         LLM matrices: f32 f16 (default) bf16 q8_0 q4_0\n"
            "  --vision-type T     ViT / Q-Former / projection matrices (default: --outtype)\n"
            "  --image-size N      vision input size (default 224, minigptv2 448)\n"
            "  --vit-heads N       ViT heads (default width / 88, EVA ViT-g: 16)\n"
            "  --qformer-heads N   Q-Former heads (default width / 64: 12)\n"
            "  --lora-alpha X      LoRA alpha; scale = alpha / r (default 16, MiniGPT-v2)\n"
            "  --name S            general.name (default: the LLM folder's name)\n"
            "  -q, --quiet         no report lines\n"
            "  -h, --help          this help\n");
}

static void log_line(void *user, const char *line) {
    cli_progress *p = user;
    if (p && p->drawn) fputc('\n', stderr), p->drawn = 0;
    fprintf(stderr, "%s\n", line);
}

static int parse_type(const char *v, int *out) {
    int t = mg_type_from_name(v);
    if (!conv_target_ok(t)) return 0;
    *out = t;
    return 1;
}

int cmd_convert(int argc, char **argv) {
    conv_params p = conv_default_params();
    const char *out = NULL;
    bool quiet = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0) {
            quiet = true;
            continue;
        }
        if (a[0] != '-') {
            cli_error("convert", "unexpected argument '%s' (see --help)", a);
            return 2;
        }
        if (i + 1 >= argc) {
            cli_error("convert", "%s needs a value (see --help)", a);
            return 2;
        }
        const char *v = argv[++i];
        long long n;
        double x;
        if (strcmp(a, "--arch") == 0) {
            int ar = conv_arch_from_name(v);
            if (ar < 0) return cli_error("convert", "unknown --arch '%s'", v), 2;
            p.arch = (conv_arch)ar;
        } else if (strcmp(a, "--llm") == 0) {
            p.llm = v;
        } else if (strcmp(a, "--vit") == 0) {
            p.vit = v;
        } else if (strcmp(a, "--qformer") == 0) {
            p.qformer = v;
        } else if (strcmp(a, "--ckpt") == 0) {
            p.ckpt = v;
        } else if (strcmp(a, "-o") == 0 || strcmp(a, "--out") == 0) {
            out = v;
        } else if (strcmp(a, "--name") == 0) {
            p.name = v;
        } else if (strcmp(a, "--outtype") == 0) {
            if (!parse_type(v, &p.out_type)) return cli_error("convert", "bad --outtype '%s'", v), 2;
        } else if (strcmp(a, "--vision-type") == 0) {
            if (!parse_type(v, &p.vision_type)) return cli_error("convert", "bad --vision-type '%s'", v), 2;
        } else if (strcmp(a, "--image-size") == 0) {
            if (!cli_parse_int(v, 1, 1 << 14, &n)) return cli_error("convert", "bad --image-size '%s'", v), 2;
            p.image_size = (int)n;
        } else if (strcmp(a, "--vit-heads") == 0) {
            if (!cli_parse_int(v, 1, 4096, &n)) return cli_error("convert", "bad --vit-heads '%s'", v), 2;
            p.vit_heads = (int)n;
        } else if (strcmp(a, "--qformer-heads") == 0) {
            if (!cli_parse_int(v, 1, 4096, &n)) return cli_error("convert", "bad --qformer-heads '%s'", v), 2;
            p.qformer_heads = (int)n;
        } else if (strcmp(a, "--lora-alpha") == 0) {
            if (!cli_parse_float(v, &x) || !(x > 0)) return cli_error("convert", "bad --lora-alpha '%s'", v), 2;
            p.lora_alpha = (float)x;
        } else {
            cli_error("convert", "unknown option '%s' (see --help)", a);
            return 2;
        }
    }
    if (!out) {
        usage(stderr);
        return 2;
    }
    cli_progress pr;
    cli_progress_init(&pr);
    p.progress = cli_progress_cb;
    p.log = quiet ? NULL : log_line;
    p.user = &pr;
    char err[768];
    mg_status st = conv_convert(out, &p, err, sizeof err);
    cli_progress_end(&pr);
    if (st != MG_OK) return cli_error("convert", "%s", err);
    if (!quiet) fprintf(stderr, "minigpt convert: wrote %s\n", out);
    return 0;
}
