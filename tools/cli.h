/*
 * cli.h - shared by the `minigpt` subcommands: the command table and small argument helpers.
 * Every subcommand is `int cmd_NAME(int argc, char **argv)` (argv[0] is the subcommand name),
 * prints its own --help, and returns the process exit status (0 ok, 1 error, 2 usage).
 */
#ifndef MG_CLI_H
#define MG_CLI_H

#include "minigpt.h"

#include <stdbool.h>
#include <stdint.h>

int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_image(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_quality(int argc, char **argv);
int cmd_train(int argc, char **argv);

/* Progress bar on stderr for long writes (quantize, convert), drawn only when stderr is a
 * terminal; cli_progress_cb is a conv_progress_fn whose user pointer is the cli_progress. */
typedef struct {
    double t0, last;
    int tty, drawn;
} cli_progress;
void cli_progress_init(cli_progress *p);
int cli_progress_cb(void *user, uint64_t done, uint64_t total, const char *name);
void cli_progress_end(cli_progress *p);

/* Prints "minigpt CMD: message" to stderr and returns 1 (for `return cli_error(...)`). */
int cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* True if argv[i] is opt (or long); the value is argv[i+1] (checked present; else error). */
bool cli_is_help(const char *a);
/* Parses integer / float option values strictly (whole string). */
bool cli_parse_int(const char *s, long long lo, long long hi, long long *out);
bool cli_parse_float(const char *s, double *out);
/* Default thread count: online cores, at most 8. */
int cli_default_threads(void);

/* Sampling options shared by `run` and `chat`: --greedy, --temp, --top-p, --repeat-penalty, --seed,
 * -n/--n-predict. Only the options given override the model's generation defaults. */
typedef struct {
    bool greedy, have_temp, have_top_p, have_rp, have_seed;
    double temp, top_p, rp;
    long long seed, n_predict; /* n_predict -2: not given */
} cli_gen_opts;
void cli_gen_opts_init(cli_gen_opts *o);
/* Parses the sampling option at argv[*i] (advancing *i past its value). Returns 1 if consumed, 0 if
 * argv[*i] is not a sampling option, -1 after printing a one-line error. */
int cli_parse_gen_opt(const char *cmd, cli_gen_opts *o, int argc, char **argv, int *i);
/* Model defaults, then --greedy (argmax, penalty 1 as the benchmark evaluation), then explicit values. */
void cli_gen_opts_apply(const cli_gen_opts *o, const mg_model *m, mg_sampler_params *sp, mg_generate_params *gp);

#endif
