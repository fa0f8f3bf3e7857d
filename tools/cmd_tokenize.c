/*
 * cmd_tokenize.c - `minigpt tokenize`: text to token ids (or id/piece lines) and ids back to text,
 * with the tokenizer of a GGUF file, a Hugging Face folder, a tokenizer.json or a tokenizer.model.
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: minigpt tokenize -m SOURCE (-p TEXT | -f FILE | --decode \"IDS\") [options]\n\n"
            "SOURCE is a GGUF model, a Hugging Face folder, a tokenizer.json or a tokenizer.model.\n"
            "Prints the token ids of the text on one line, separated by spaces.\n\n"
            "options:\n"
            "  -m, --model SOURCE   tokenizer to use\n"
            "  -p, --prompt TEXT    text to tokenize\n"
            "  -f, --file FILE      read the text from FILE (bytes as they are)\n"
            "  --bos                prepend the BOS token\n"
            "  --no-special         treat \"<s>\", \"</s>\", ... in the text as plain text\n"
            "  --pieces             print \"id<TAB>piece\" lines instead\n"
            "  --decode \"IDS\"       print the text of the ids (spaces or commas between them)\n"
            "  -h, --help           this help\n");
}

static char *read_all(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (len == cap) {
            char *b2 = realloc(buf, cap * 2);
            if (!b2) { free(buf); buf = NULL; break; }
            buf = b2;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - len, fp);
        len += got;
        if (got == 0) {
            if (ferror(fp)) { free(buf); buf = NULL; }
            break;
        }
    }
    fclose(fp);
    *n = len;
    return buf;
}

static int decode_ids(const mg_tokenizer *tok, const char *list) {
    size_t cap = 64;
    int n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return cli_error("tokenize", "out of memory");
    const char *s = list;
    while (*s) {
        while (*s == ' ' || *s == ',' || *s == '\t' || *s == '\n') s++;
        if (!*s) break;
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (end == s || errno || v < 0 || v >= mg_tokenizer_n_vocab(tok)) {
            free(ids);
            return cli_error("tokenize", "bad token id at '%.20s' (vocabulary has %d pieces)", s,
                             mg_tokenizer_n_vocab(tok));
        }
        if ((size_t)n == cap) {
            int32_t *i2 = realloc(ids, cap * 2 * sizeof *ids);
            if (!i2) { free(ids); return cli_error("tokenize", "out of memory"); }
            ids = i2;
            cap *= 2;
        }
        ids[n++] = (int32_t)v;
        s = end;
    }
    int64_t need = mg_detokenize(tok, ids, n, 1, 1, NULL, 0);
    char *text = need >= 0 ? malloc((size_t)need + 1) : NULL;
    if (!text || mg_detokenize(tok, ids, n, 1, 1, text, (size_t)need + 1) != need) {
        free(ids);
        free(text);
        return cli_error("tokenize", "cannot decode the ids");
    }
    fwrite(text, 1, (size_t)need, stdout);
    fputc('\n', stdout);
    free(text);
    free(ids);
    return 0;
}

/* `minigpt tokenize` (see usage). */
int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *file = NULL, *decode = NULL;
    bool bos = false, special = true, pieces = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc;
        if (cli_is_help(a)) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) {
            if (!has_val) goto missing;
            model = argv[++i];
        } else if (strcmp(a, "-p") == 0 || strcmp(a, "--prompt") == 0) {
            if (!has_val) goto missing;
            prompt = argv[++i];
        } else if (strcmp(a, "-f") == 0 || strcmp(a, "--file") == 0) {
            if (!has_val) goto missing;
            file = argv[++i];
        } else if (strcmp(a, "--decode") == 0) {
            if (!has_val) goto missing;
            decode = argv[++i];
        } else if (strcmp(a, "--bos") == 0) {
            bos = true;
        } else if (strcmp(a, "--no-special") == 0) {
            special = false;
        } else if (strcmp(a, "--pieces") == 0) {
            pieces = true;
        } else {
            fprintf(stderr, "minigpt tokenize: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        continue;
    missing:
        fprintf(stderr, "minigpt tokenize: %s needs a value\n", a);
        return 2;
    }
    if (!model || (!!prompt + !!file + !!decode) != 1) {
        fprintf(stderr, "minigpt tokenize: give -m and exactly one of -p, -f, --decode (see --help)\n");
        return 2;
    }
    char err[512];
    mg_tokenizer *tok;
    mg_status st = mg_tokenizer_load(&tok, model, err, sizeof err);
    if (st != MG_OK) return cli_error("tokenize", "%s", err);
    if (decode) {
        int rc = decode_ids(tok, decode);
        mg_tokenizer_free(tok);
        return rc;
    }
    size_t len;
    char *text = NULL;
    if (file) {
        text = read_all(file, &len);
        if (!text) {
            mg_tokenizer_free(tok);
            return cli_error("tokenize", "cannot read '%s': %s", file, strerror(errno));
        }
    } else {
        len = strlen(prompt);
    }
    const char *src = file ? text : prompt;
    int n = 0;
    st = mg_tokenize(tok, src, len, bos, special, NULL, 0, &n);
    int32_t *ids = NULL;
    if (st == MG_OK || st == MG_ERR_INVALID_ARG) {
        ids = malloc(((size_t)n + 1) * sizeof *ids);
        st = ids ? mg_tokenize(tok, src, len, bos, special, ids, n, &n) : MG_ERR_NOMEM;
    }
    if (st != MG_OK) {
        free(ids);
        free(text);
        mg_tokenizer_free(tok);
        return cli_error("tokenize", "cannot tokenize: %s", mg_status_str(st));
    }
    for (int i = 0; i < n; i++) {
        if (pieces) printf("%d\t%s\n", (int)ids[i], mg_token_piece(tok, ids[i]));
        else printf(i ? " %d" : "%d", (int)ids[i]);
    }
    if (!pieces) printf("\n");
    free(ids);
    free(text);
    mg_tokenizer_free(tok);
    return 0;
}
