/*
 * cmd_chat.c - `minigpt chat`: an interactive conversation about an image. Reads one line at a
 * time from stdin (a terminal or a pipe), streams each answer to stdout, keeps the KV cache and
 * the image embeddings between turns (mg_vl). Commands: /image PATH, /task NAME, /reset, /quit.
 * A thin client of include/minigpt.h.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: minigpt chat -m FILE [--llm FILE] [--image IMG] [options]\n\n"
            "  -m, --model FILE   MiniGPT GGUF\n"
            "      --llm FILE     the language model as a llama.cpp GGUF\n"
            "      --image IMG    the image to talk about (or /image PATH later)\n"
            "      --greedy       argmax of the raw logits (no repetition penalty)\n"
            "      --repeat-penalty R  repetition penalty (default 1.05)\n"
            "      --temp T       temperature (default: the variant's)\n"
            "      --top-p P      top-p (default 0.9)\n"
            "      --seed S       sampler seed\n"
            "  -n, --n-predict N  max new tokens per answer\n"
            "  -t, --threads N    worker threads\n\n"
            "Lines are questions. Commands:\n"
            "  /image PATH   load another image and start a new conversation\n"
            "  /task NAME    grounding|refer|detection|identify|vqa|caption|none: prefix of the next questions\n"
            "  /reset        forget the conversation (the image stays)\n"
            "  /quit         leave (end of input does too)\n");
}

static int on_piece(void *user, int32_t id, const char *piece, const float *logits, int n_vocab) {
    if (piece && *piece) {
        fputs(piece, stdout);
        fflush(stdout);
    }
    return 0;
}

/* Strips the trailing newline / carriage return and leading / trailing spaces in place. */
static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = 0;
    return s;
}

/* Entry point of `minigpt chat`. */
int cmd_chat(int argc, char **argv) {
    const char *model_path = NULL, *llm_path = NULL, *image_path = NULL;
    cli_gen_opts go;
    cli_gen_opts_init(&go);
    long long threads = cli_default_threads();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            usage(stdout);
            return 0;
        }
        int g = cli_parse_gen_opt("chat", &go, argc, argv, &i);
        if (g < 0) return 1;
        if (g) continue;
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0 || strcmp(a, "--llm") == 0 ||
                     strcmp(a, "--image") == 0 || strcmp(a, "-t") == 0 || strcmp(a, "--threads") == 0;
        if (takes && !v) return cli_error("chat", "%s needs a value", a);
        if (takes) i++;
        if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) model_path = v;
        else if (strcmp(a, "--llm") == 0) llm_path = v;
        else if (strcmp(a, "--image") == 0) image_path = v;
        else if (strcmp(a, "-t") == 0 || strcmp(a, "--threads") == 0) {
            if (!cli_parse_int(v, 1, 256, &threads)) return cli_error("chat", "bad --threads '%s'", v);
        } else {
            return cli_error("chat", "unknown option '%s' (see minigpt chat --help)", a);
        }
    }
    if (!model_path) return cli_error("chat", "missing -m FILE (see minigpt chat --help)");

    char err[512];
    mg_image img;
    memset(&img, 0, sizeof img);
    if (image_path && mg_image_load_file(&img, image_path, 0, err, sizeof err) != MG_OK)
        return cli_error("chat", "%s", err);
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = (int)threads;
    mg_model *m = NULL;
    mg_vl *vl = NULL;
    mg_sampler *smp = NULL;
    char *line = NULL;
    size_t line_cap = 0;
    int rc = 1;
    if (mg_model_open_llm(&m, model_path, llm_path, &mp, err, sizeof err) != MG_OK) {
        cli_error("chat", "%s", err);
        goto done;
    }
    if (!mg_model_has_vision(m)) {
        cli_error("chat", "%s is a %s model without a vision tower", model_path, mg_model_variant(m));
        goto done;
    }
    mg_sampler_params sp = mg_sampler_default_params();
    mg_generate_params gp = mg_generate_default_params();
    cli_gen_opts_apply(&go, m, &sp, &gp);
    /* MiniGPT-4 stops on the "###" separator tokens; also end the streamed text there */
    static const char *const sep_stop[] = {"###", NULL};
    if (mg_model_chat_template(m) != MG_CHAT_MINIGPT_V2) gp.stop_strings = sep_stop;
    gp.on_token = on_piece;
    mg_session_params ssp = mg_session_default_params();
    if (mg_sampler_create(&smp, &sp, mg_model_n_vocab(m)) != MG_OK) {
        cli_error("chat", "out of memory");
        goto done;
    }
    if (mg_vl_create(&vl, m, &ssp, err, sizeof err) != MG_OK) {
        cli_error("chat", "%s", err);
        goto done;
    }
    bool tty = isatty(0), image_pending = img.rgb != NULL;
    int task = MG_TASK_NONE;
    if (tty)
        fprintf(stderr, "%s - /image PATH, /task NAME, /reset, /quit\n", mg_model_desc(m));
    rc = 0;
    for (;;) {
        if (tty) {
            fputs("> ", stderr);
            fflush(stderr);
        }
        if (getline(&line, &line_cap, stdin) < 0) break;
        char *q = trim(line);
        if (!*q) continue;
        if (strcmp(q, "/quit") == 0 || strcmp(q, "/exit") == 0) break;
        if (strcmp(q, "/reset") == 0) {
            mg_vl_reset(vl);
            image_pending = img.rgb != NULL;
            fprintf(stderr, "(conversation reset)\n");
            continue;
        }
        if (strncmp(q, "/image", 6) == 0 && (q[6] == ' ' || q[6] == 0)) {
            char *path = trim(q + 6);
            mg_image next;
            if (!*path || mg_image_load_file(&next, path, 0, err, sizeof err) != MG_OK) {
                fprintf(stderr, "minigpt chat: %s\n", *path ? err : "/image needs a path");
                continue;
            }
            mg_image_free(&img);
            img = next;
            mg_vl_reset(vl);
            image_pending = true;
            fprintf(stderr, "(image %s, %dx%d; new conversation)\n", path, img.w, img.h);
            continue;
        }
        if (strncmp(q, "/task", 5) == 0 && (q[5] == ' ' || q[5] == 0)) {
            int t = mg_task_from_name(trim(q + 5));
            if (t < 0) {
                fprintf(stderr, "minigpt chat: unknown task '%s'\n", trim(q + 5));
                continue;
            }
            task = t;
            fprintf(stderr, "(task %s)\n", t == MG_TASK_NONE ? "none" : mg_task_tag((mg_task)t));
            continue;
        }
        if (q[0] == '/') {
            fprintf(stderr, "minigpt chat: unknown command '%s' (/image, /task, /reset, /quit)\n", q);
            continue;
        }
        char question[8192];
        if (task != MG_TASK_NONE &&
            mg_task_instruction((mg_task)task, q, question, sizeof question, err, sizeof err) != MG_OK) {
            fprintf(stderr, "minigpt chat: %s\n", err);
            continue;
        }
        if (task == MG_TASK_NONE) snprintf(question, sizeof question, "%s", q);
        mg_vl_result res;
        memset(&res, 0, sizeof res);
        mg_status st = mg_vl_ask(vl, image_pending ? &img : NULL, question, smp, &gp, &res);
        fputc('\n', stdout);
        fflush(stdout);
        if (st != MG_OK) {
            /* The library rolled the conversation back to before this turn: report and go on;
             * the exit status still tells a script that a turn failed. */
            rc = cli_error("chat", "%s", mg_vl_errmsg(vl));
            mg_vl_result_free(&res);
            continue;
        }
        image_pending = false;
        if (res.grounding && res.grounding->n_entities > 0) {
            for (int i = 0; i < res.grounding->n_entities; i++) {
                const mg_entity *e = &res.grounding->entities[i];
                for (int b = 0; b < e->n_boxes; b++)
                    fprintf(stderr, "  [%s] (%.0f, %.0f) - (%.0f, %.0f)\n", e->phrase, e->boxes[b].px1, e->boxes[b].py1,
                            e->boxes[b].px2, e->boxes[b].py2);
            }
        }
        mg_vl_result_free(&res);
    }
done:
    free(line);
    mg_vl_free(vl);
    mg_sampler_free(smp);
    mg_model_close(m);
    mg_image_free(&img);
    return rc;
}
