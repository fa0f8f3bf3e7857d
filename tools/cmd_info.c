/*
 * cmd_info.c - `minigpt info FILE [--json]`: prints a GGUF file's header, every metadata key with
 * its type and value (arrays: element type, length, first items; long strings cut), the tensor
 * table and totals. It reads through src/gguf.h only, so everything printed was validated by the
 * reader first. Text output is for people; --json is one JSON object (pure ASCII not required:
 * valid UTF-8 is passed through, invalid bytes become U+FFFD).
 */
#include "cli.h"
#include "gguf.h"
#include "quant.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define STR_SHOWN 80   /* characters of a string value shown in text mode */
#define ARR_SHOWN 8    /* array items shown in text mode */
#define ARR_SHOWN_JSON 64

static void usage(FILE *f) {
    fprintf(f, "usage: minigpt info FILE [--json]\n"
               "Prints a GGUF file's version, alignment, metadata (key, type, value), tensor table\n"
               "(name, type, shape, bytes) and totals. The file is fully validated first.\n"
               "  --json     one JSON object instead of text (arrays cut to %d items, with their length)\n"
               "  -h, --help this help\n",
            ARR_SHOWN_JSON);
}

/* Length of the valid UTF-8 sequence at p (n bytes left), or 0 if invalid. */
static int utf8_len(const unsigned char *p, uint64_t n) {
    int len;
    uint32_t cp;
    if (p[0] < 0x80) return 1;
    if ((p[0] & 0xe0) == 0xc0) len = 2, cp = p[0] & 0x1f;
    else if ((p[0] & 0xf0) == 0xe0) len = 3, cp = p[0] & 0x0f;
    else if ((p[0] & 0xf8) == 0xf0) len = 4, cp = p[0] & 0x07;
    else return 0;
    if ((uint64_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

/* Prints a string escaped for JSON (quoted) or for text (quoted, cut to max chars). */
static void put_str(gguf_str s, bool json, uint64_t max) {
    const unsigned char *p = (const unsigned char *)s.ptr;
    uint64_t chars = 0, i = 0;
    putchar('"');
    while (i < s.len) {
        if (chars++ == max) {
            printf("...\" (%" PRIu64 " bytes)", s.len);
            return;
        }
        unsigned char c = p[i];
        int n = utf8_len(p + i, s.len - i);
        if (n == 0) {
            fputs(json ? "\\ufffd" : "\\x", stdout);
            if (!json) printf("%02x", c);
            i++;
        } else if (n > 1) {
            fwrite(p + i, 1, (size_t)n, stdout);
            i += (uint64_t)n;
        } else {
            if (c == '"' || c == '\\') printf("\\%c", c);
            else if (c == '\n') fputs("\\n", stdout);
            else if (c == '\t') fputs("\\t", stdout);
            else if (c == '\r') fputs("\\r", stdout);
            else if (c < 0x20 || c == 0x7f) printf(json ? "\\u%04x" : "\\x%02x", c);
            else putchar(c);
            i++;
        }
    }
    putchar('"');
}

/* Prints element i of kv (its element type) as a number, bool or string. */
static void put_item(const gguf_kv *kv, uint64_t i, bool json) {
    gguf_type t = kv->arr_type;
    if (t == GGUF_TYPE_STRING) {
        put_str(kv->strs[i], json, json ? UINT64_MAX : STR_SHOWN);
    } else if (t == GGUF_TYPE_BOOL) {
        fputs(gguf_arr_i64(kv, i) ? "true" : "false", stdout);
    } else if (t == GGUF_TYPE_FLOAT32 || t == GGUF_TYPE_FLOAT64) {
        double d = gguf_arr_f64(kv, i);
        if (!isfinite(d)) printf(json ? "null" : "%g", d);
        else printf(t == GGUF_TYPE_FLOAT32 ? "%.9g" : "%.17g", d);
    } else if (t == GGUF_TYPE_UINT64) {
        uint64_t v;
        memcpy(&v, (const uint8_t *)kv->data + i * 8, 8);
        printf("%" PRIu64, v);
    } else {
        printf("%" PRId64, gguf_arr_i64(kv, i));
    }
}

static void shape_str(const gguf_tensor *t, char *buf, size_t n, bool json) {
    size_t used = 0;
    used += (size_t)snprintf(buf, n, json ? "[" : "");
    for (int d = 0; d < t->n_dims && used < n; d++)
        used += (size_t)snprintf(buf + used, n - used, "%s%" PRId64, d ? (json ? "," : " x ") : "", t->ne[d]);
    if (json && used < n) snprintf(buf + used, n - used, "]");
}

static void print_text(const gguf_file *f, const char *path) {
    printf("file:      %s\n", path);
    printf("version:   %" PRIu32 "\nalignment: %" PRIu64 "\nsize:      %" PRIu64 " bytes (data at %" PRIu64 ")\n",
           gguf_version(f), gguf_alignment(f), gguf_file_size(f), gguf_data_offset(f));
    printf("\nmetadata (%" PRId64 " keys):\n", gguf_n_kv(f));
    for (int64_t i = 0; i < gguf_n_kv(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        printf("  %-40.*s ", (int)MG_MIN(kv->key.len, (uint64_t)200), kv->key.ptr);
        if (kv->type == GGUF_TYPE_ARRAY) {
            printf("arr[%s, %" PRIu64 "] [", gguf_type_name(kv->arr_type), kv->n);
            for (uint64_t j = 0; j < kv->n && j < ARR_SHOWN; j++) {
                if (j) fputs(", ", stdout);
                put_item(kv, j, false);
            }
            printf("%s]\n", kv->n > ARR_SHOWN ? ", ..." : "");
        } else {
            printf("%-4s ", gguf_type_name(kv->type));
            put_item(kv, 0, false);
            putchar('\n');
        }
    }
    printf("\ntensors (%" PRId64 "):\n", gguf_n_tensors(f));
    printf("  %-40s %-6s %-24s %14s\n", "name", "type", "shape", "bytes");
    uint64_t params = 0, bytes = 0, by_type[MG_TYPE_COUNT] = {0};
    int64_t count_type[MG_TYPE_COUNT] = {0};
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        char shape[128];
        shape_str(t, shape, sizeof shape, false);
        printf("  %-40.*s %-6s %-24s %14" PRIu64 "\n", (int)MG_MIN(t->name.len, (uint64_t)200), t->name.ptr,
               mg_get_type_traits(t->type)->name, shape, t->nbytes);
        uint64_t nel = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) nel *= (uint64_t)t->ne[d];
        params += nel;
        bytes += t->nbytes;
        by_type[t->type] += t->nbytes;
        count_type[t->type]++;
    }
    printf("\ntotals: %" PRId64 " tensors, %" PRIu64 " parameters (%.3f B), %" PRIu64 " bytes (%.2f MiB)\n",
           gguf_n_tensors(f), params, (double)params / 1e9, bytes, (double)bytes / (1024.0 * 1024.0));
    for (int ty = 0; ty < MG_TYPE_COUNT; ty++)
        if (count_type[ty])
            printf("  %-6s %6" PRId64 " tensors %16" PRIu64 " bytes\n", mg_get_type_traits(ty)->name,
                   count_type[ty], by_type[ty]);
}

static void print_json(const gguf_file *f) {
    printf("{\"version\":%" PRIu32 ",\"alignment\":%" PRIu64 ",\"file_size\":%" PRIu64
           ",\"data_offset\":%" PRIu64 ",\n\"metadata\":[",
           gguf_version(f), gguf_alignment(f), gguf_file_size(f), gguf_data_offset(f));
    for (int64_t i = 0; i < gguf_n_kv(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        printf("%s\n{\"key\":", i ? "," : "");
        put_str(kv->key, true, UINT64_MAX);
        printf(",\"type\":\"%s\"", gguf_type_name(kv->type));
        if (kv->type == GGUF_TYPE_ARRAY) {
            printf(",\"elem_type\":\"%s\",\"length\":%" PRIu64 ",\"value\":[", gguf_type_name(kv->arr_type), kv->n);
            for (uint64_t j = 0; j < kv->n && j < ARR_SHOWN_JSON; j++) {
                if (j) putchar(',');
                put_item(kv, j, true);
            }
            putchar(']');
        } else {
            fputs(",\"value\":", stdout);
            put_item(kv, 0, true);
        }
        putchar('}');
    }
    fputs("],\n\"tensors\":[", stdout);
    uint64_t params = 0, bytes = 0;
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        char shape[160];
        shape_str(t, shape, sizeof shape, true);
        printf("%s\n{\"name\":", i ? "," : "");
        put_str(t->name, true, UINT64_MAX);
        printf(",\"type\":\"%s\",\"shape\":%s,\"offset\":%" PRIu64 ",\"bytes\":%" PRIu64 "}",
               mg_get_type_traits(t->type)->name, shape, t->offset, t->nbytes);
        uint64_t nel = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) nel *= (uint64_t)t->ne[d];
        params += nel;
        bytes += t->nbytes;
    }
    printf("],\n\"n_tensors\":%" PRId64 ",\"n_params\":%" PRIu64 ",\"tensor_bytes\":%" PRIu64 "}\n",
           gguf_n_tensors(f), params, bytes);
}

/* Entry point of `minigpt info`; returns 0, 1 (bad file) or 2 (usage). */
int cmd_info(int argc, char **argv) {
    const char *path = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "minigpt info: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (path) {
            fprintf(stderr, "minigpt info: more than one FILE given\n");
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    char err[512];
    gguf_file *f = NULL;
    if (gguf_open(&f, path, err, sizeof err) != MG_OK) {
        if (strstr(err, path)) return cli_error("info", "%s", err);
        return cli_error("info", "%s: %s", path, err);
    }
    if (json) print_json(f);
    else print_text(f, path);
    gguf_close(f);
    return fflush(stdout) == 0 ? 0 : cli_error("info", "cannot write output");
}
