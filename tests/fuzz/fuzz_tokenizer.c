/*
 * fuzz_tokenizer.c - libFuzzer target for the tokenizer. The first input byte picks a mode:
 * 0: the rest is a tokenizer.model (protobuf) to load; 1: the rest is a tokenizer.json to load
 * (a loaded tokenizer is then used to encode and decode a fixed text); otherwise the rest is
 * text encoded (with and without special-token parsing) by a small built-in vocabulary that has
 * every piece type, and is also read as token ids for whole and streaming decoding.
 * Invariants: loaders fail with a message or give a usable tokenizer; encode/decode never read or
 * write out of bounds, and decode(encode(text)) gives back the text when it has no U+2581.
 */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mg_tokenizer *small_vocab(void) {
    static const struct { const char *p; float s; int type; } v[] = {
        {"<unk>", 0, TOK_TYPE_UNKNOWN}, {"<s>", 0, TOK_TYPE_CONTROL}, {"</s>", 0, TOK_TYPE_CONTROL},
        {"\xe2\x96\x81", -1, TOK_TYPE_NORMAL}, {"a", -2, TOK_TYPE_NORMAL}, {"b", -2, TOK_TYPE_NORMAL},
        {"c", -2, TOK_TYPE_NORMAL}, {"ab", -3, TOK_TYPE_NORMAL}, {"bc", -3, TOK_TYPE_NORMAL},
        {"abc", -4, TOK_TYPE_NORMAL}, {"\xe2\x96\x81" "a", -1.5f, TOK_TYPE_NORMAL},
        {"\xe2\x96\x81" "ab", -0.5f, TOK_TYPE_UNUSED}, {"\xe2\x96\x81" "abc", -5, TOK_TYPE_NORMAL},
        {"<sep>", 0, TOK_TYPE_USER}, {"\xe2\x96\x81\xe2\x96\x81", -1, TOK_TYPE_NORMAL},
        {"\xc3\xa9", -2, TOK_TYPE_NORMAL},
    };
    const int n_fixed = (int)(sizeof v / sizeof v[0]);
    mg_tokenizer *t;
    if (tok_vocab_create(&t, n_fixed + 256, NULL, 0) != MG_OK) abort();
    for (int i = 0; i < n_fixed; i++)
        if (tok_vocab_set(t, i, v[i].p, strlen(v[i].p), v[i].s, v[i].type, NULL, 0) != MG_OK) abort();
    for (int b = 0; b < 256; b++) {
        char p[8];
        snprintf(p, sizeof p, "<0x%02X>", b);
        if (tok_vocab_set(t, n_fixed + b, p, 6, 0, TOK_TYPE_BYTE, NULL, 0) != MG_OK) abort();
    }
    tok_options o = {.bos = 1, .eos = 2, .unk = 0, .pad = -1, .add_bos = true, .prefix_mode = TOK_PREFIX_ALWAYS,
                     .escape_ws = true, .byte_fallback = true};
    tok_vocab_set_options(t, &o);
    if (tok_vocab_finish(&t, NULL, 0) != MG_OK) abort();
    return t;
}

static void use(const mg_tokenizer *t, const char *text, size_t len, int special, int check_roundtrip) {
    int n = 0;
    mg_status st = mg_tokenize(t, text, len, 1, special, NULL, 0, &n);
    if (st != MG_OK && st != MG_ERR_INVALID_ARG) return;
    int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    if (!ids) return;
    if (mg_tokenize(t, text, len, 1, special, ids, n, &n) != MG_OK) abort();
    int64_t need = mg_detokenize(t, ids, n, 1, 1, NULL, 0);
    if (need < 0) abort();
    char *out = malloc((size_t)need + 1);
    if (out && mg_detokenize(t, ids, n, 1, 1, out, (size_t)need + 1) != need) abort();
    if (out && check_roundtrip && !special && !memmem(text, len, "\xe2\x96\x81", 3) &&
        ((size_t)need != len || memcmp(out, text, len) != 0))
        abort();
    free(out);
    free(ids);
}

/* libFuzzer entry point. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static mg_tokenizer *small;
    if (!small) small = small_vocab();
    if (size == 0) return 0;
    char err[256] = "";
    mg_tokenizer *t = NULL;
    if (data[0] == 0 || data[0] == 1) {
        mg_status st = data[0] == 0 ? tok_load_spm_buffer(&t, data + 1, size - 1, err, sizeof err)
                                    : tok_load_json_buffer(&t, data + 1, size - 1, err, sizeof err);
        if (st != MG_OK) {
            if (!err[0] || t) abort();
            return 0;
        }
        static const char text[] = "Hello <s> world\n\t\xe6\x9d\xb1 \xf0\x9f\xa6\x99 <sep>\xff";
        use(t, text, sizeof text - 1, 0, 0);
        use(t, text, sizeof text - 1, 1, 0);
        mg_tokenizer_free(t);
        return 0;
    }
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    use(small, text, len, 0, 1);
    use(small, text, len, 1, 0);
    /* The bytes as ids (some out of range), decoded whole and streamed. */
    size_t n_ids = len / 2;
    int32_t *ids = malloc((n_ids + 1) * sizeof *ids);
    if (!ids) return 0;
    int nv = mg_tokenizer_n_vocab(small);
    for (size_t i = 0; i < n_ids; i++) ids[i] = (int32_t)((data[1 + 2 * i] | data[2 + 2 * i] << 8) % (nv + 3)) - 1;
    char buf[64];
    mg_detokenize(small, ids, (int)n_ids, data[0] & 1, data[0] & 2, buf, sizeof buf);
    mg_detok_state st;
    memset(&st, 0, sizeof st);
    for (size_t i = 0; i < n_ids; i++) mg_detokenize_stream(small, &st, ids[i], data[0] & 1, buf, (size_t)(data[0] % 16) + 1);
    free(ids);
    return 0;
}
