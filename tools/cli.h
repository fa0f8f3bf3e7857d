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

/* Prints "minigpt CMD: message" to stderr and returns 1 (for `return cli_error(...)`). */
int cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* True if argv[i] is opt (or long); the value is argv[i+1] (checked present; else error). */
bool cli_is_help(const char *a);
/* Parses integer / float option values strictly (whole string). */
bool cli_parse_int(const char *s, long long lo, long long hi, long long *out);
bool cli_parse_float(const char *s, double *out);
/* Default thread count: online cores, at most 8. */
int cli_default_threads(void);

#endif
