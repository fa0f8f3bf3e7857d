/*
 * cmd_quantize.c - `minigpt quantize IN.gguf OUT.gguf TYPE`: re-types the tensors of a GGUF file
 * (src/quantize.c does the work), plus the progress bar shared with `minigpt convert`.
 */
#include "cli.h"
#include "convert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_PATTERNS 64

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Starts a progress bar (drawn only when stderr is a terminal). */
void cli_progress_init(cli_progress *p) {
    p->t0 = now_s();
    p->last = 0;
    p->tty = isatty(fileno(stderr));
    p->drawn = 0;
}

/* conv_progress_fn: redraws "[####    ]  42%  1.2/2.9 GiB  ETA 0:35  name" at most 10 times/s. */
int cli_progress_cb(void *user, uint64_t done, uint64_t total, const char *name) {
    cli_progress *p = user;
    if (!p || !p->tty) return 0;
    double t = now_s();
    if (done < total && t - p->last < 0.1) return 0;
    p->last = t;
    double frac = total ? (double)done / (double)total : 1.0;
    int width = 30, fill = (int)(frac * width);
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : ' ';
    bar[width] = 0;
    double el = t - p->t0, eta = frac > 0 ? el * (1 - frac) / frac : 0;
    const double gib = 1024.0 * 1024.0 * 1024.0;
    fprintf(stderr, "\r[%s] %3d%%  %.2f/%.2f GiB  ETA %d:%02d  %-32.32s", bar, (int)(frac * 100 + 0.5),
            (double)done / gib, (double)total / gib, (int)eta / 60, (int)eta % 60, name ? name : "");
    fflush(stderr);
    p->drawn = 1;
    return 0;
}

/* Ends the bar's line (if one was drawn). */
void cli_progress_end(cli_progress *p) {
    if (p && p->drawn) fputc('\n', stderr);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: minigpt quantize IN.gguf OUT.gguf TYPE [options]\n"
            "Rewrites every tensor of IN with TYPE (f32, f16, bf16, q8_0, q4_0), one tensor at a time,\n"
            "copying all metadata (general.file_type updated). Norms, biases, 1-D tensors and position /\n"
            "class / query embeddings are never quantized; output.weight gets q8_0 when TYPE is q4_0;\n"
            "matrices whose rows are not a multiple of the block become f16 (docs/QUANTIZATION.md).\n"
            "  --allow-requantize     convert tensors that are already quantized (loses precision)\n"
            "  --keep PATTERN         copy tensors matching the fnmatch PATTERN unchanged (repeatable)\n"
            "  --force PATTERN=TYPE   give tensors matching PATTERN this type (repeatable; first match wins)\n"
            "  -v, --verbose          one line per tensor\n"
            "  -h, --help             this help\n");
}

static void log_line(void *user, const char *line) {
    (void)user;
    fprintf(stderr, "%s\n", line);
}

int cmd_quantize(int argc, char **argv) {
    const char *pos[3];
    int n_pos = 0;
    const char *keep[MAX_PATTERNS], *force_pat[MAX_PATTERNS];
    char *force_buf[MAX_PATTERNS];
    int force_type[MAX_PATTERNS];
    int n_keep = 0, n_force = 0, rc = 1;
    bool requant = false, verbose = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            usage(stdout);
            rc = 0;
            goto out;
        } else if (strcmp(a, "--allow-requantize") == 0) {
            requant = true;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
            verbose = true;
        } else if (strcmp(a, "--keep") == 0 || strcmp(a, "--force") == 0) {
            if (i + 1 >= argc) {
                cli_error("quantize", "%s needs a value", a);
                rc = 2;
                goto out;
            }
            const char *v = argv[++i];
            if (a[2] == 'k') {
                if (n_keep == MAX_PATTERNS) goto too_many;
                keep[n_keep++] = v;
            } else {
                if (n_force == MAX_PATTERNS) goto too_many;
                const char *eq = strrchr(v, '=');
                int t = eq ? mg_type_from_name(eq + 1) : -1;
                if (!eq || eq == v || !conv_target_ok(t)) {
                    cli_error("quantize", "--force wants PATTERN=TYPE with TYPE one of f32 f16 bf16 q8_0 q4_0, got '%s'", v);
                    rc = 2;
                    goto out;
                }
                force_buf[n_force] = strndup(v, (size_t)(eq - v));
                if (!force_buf[n_force]) goto out;
                force_pat[n_force] = force_buf[n_force];
                force_type[n_force++] = t;
            }
        } else if (a[0] == '-' && a[1]) {
            cli_error("quantize", "unknown option '%s' (see --help)", a);
            rc = 2;
            goto out;
        } else if (n_pos < 3) {
            pos[n_pos++] = a;
        } else {
            cli_error("quantize", "too many arguments (see --help)");
            rc = 2;
            goto out;
        }
    }
    if (n_pos != 3) {
        usage(stderr);
        rc = 2;
        goto out;
    }
    int type = mg_type_from_name(pos[2]);
    if (!conv_target_ok(type)) {
        cli_error("quantize", "unknown or unsupported type '%s' (f32, f16, bf16, q8_0, q4_0)", pos[2]);
        rc = 2;
        goto out;
    }
    cli_progress pr;
    cli_progress_init(&pr);
    conv_quantize_params p = {0};
    p.type = type;
    p.allow_requantize = requant;
    p.keep = keep;
    p.n_keep = n_keep;
    p.force_pat = force_pat;
    p.force_type = force_type;
    p.n_force = n_force;
    p.progress = verbose ? NULL : cli_progress_cb;
    p.log = verbose ? log_line : NULL;
    p.user = &pr;
    char err[512];
    mg_status st = conv_quantize_file(pos[0], pos[1], &p, err, sizeof err);
    cli_progress_end(&pr);
    if (st != MG_OK) {
        cli_error("quantize", "%s", err);
        goto out;
    }
    fprintf(stderr, "minigpt quantize: wrote %s (%s) in %.1f s\n", pos[1], mg_type_name(type), now_s() - pr.t0);
    rc = 0;
    goto out;
too_many:
    cli_error("quantize", "at most %d --keep / --force patterns", MAX_PATTERNS);
    rc = 2;
out:
    for (int i = 0; i < n_force; i++) free(force_buf[i]);
    return rc;
}
