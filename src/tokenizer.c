/*
 * tokenizer.c - the LLaMA SentencePiece-BPE tokenizer: vocabulary tables, encoding (dummy
 * prefix, '▁' escaping, score-ordered pair merges, byte fallback), special-token splitting,
 * decoding (whole and streaming) and the GGUF import/export. The loaders for tokenizer.json and
 * tokenizer.model live in tok_load.c and fill the vocabulary through tok_vocab_* below.
 *
 * A tokenizer is immutable once built: every lookup table is made at load time and encoding only
 * touches memory it allocates itself, so one tokenizer serves any number of threads.
 */
#include "tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOK_MAX_VOCAB (1 << 24)      /* pieces; far above any real SentencePiece model */
#define TOK_MAX_PIECE (1u << 16)     /* bytes in one piece */

struct mg_tokenizer {
    int32_t n_vocab;
    char **piece;    /* [n_vocab] NUL-terminated copies */
    uint32_t *len;   /* [n_vocab] byte lengths (a piece may not contain NUL) */
    float *score;    /* [n_vocab] */
    uint8_t *type;   /* [n_vocab] TOK_TYPE_* */
    int32_t *hash;   /* open addressing: piece -> id, -1 empty [hash_mask + 1] */
    uint32_t hash_mask;
    int32_t byte_id[256]; /* id of <0xXX>, or -1 */
    int32_t bos, eos, unk, pad;
    bool add_bos, add_eos;
    int prefix_mode; /* TOK_PREFIX_* */
    bool escape_ws, remove_extra_ws, byte_fallback;
    /* Pieces split out of the text when parse_special is set (control, unknown, user-defined),
     * grouped by first byte, longest first within a group: ids in special[special_at[b] ..
     * special_at[b + 1]). */
    int32_t *special;
    int32_t special_at[257];
    /* User-defined pieces, matched as atomic symbols while encoding (SentencePiece rule). */
    int32_t *user;
    int32_t user_at[257];
};

/* ==== Building ==== */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

/* Looks up a piece given as bytes; -1 if absent. */
int32_t tok_find(const mg_tokenizer *tok, const char *s, size_t n) {
    if (!tok->hash) return -1;
    uint32_t i = (uint32_t)hash_bytes(s, n) & tok->hash_mask;
    for (;;) {
        int32_t id = tok->hash[i];
        if (id < 0) return -1;
        if (tok->len[id] == n && memcmp(tok->piece[id], s, n) == 0) return id;
        i = (i + 1) & tok->hash_mask;
    }
}

/* Allocates an empty tokenizer with n pieces (all empty strings, score 0, type normal). */
mg_status tok_vocab_create(mg_tokenizer **out, int64_t n, char *err, size_t err_len) {
    *out = NULL;
    if (n <= 0 || n > TOK_MAX_VOCAB)
        return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer: vocabulary size %lld out of range",
                      (long long)n);
    mg_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return mg_err(err, err_len, MG_ERR_NOMEM, "tokenizer: out of memory");
    t->n_vocab = (int32_t)n;
    t->piece = calloc((size_t)n, sizeof *t->piece);
    t->len = calloc((size_t)n, sizeof *t->len);
    t->score = calloc((size_t)n, sizeof *t->score);
    t->type = malloc((size_t)n);
    if (!t->piece || !t->len || !t->score || !t->type) {
        mg_tokenizer_free(t);
        return mg_err(err, err_len, MG_ERR_NOMEM, "tokenizer: out of memory");
    }
    memset(t->type, TOK_TYPE_NORMAL, (size_t)n);
    t->bos = t->eos = t->unk = t->pad = -1;
    t->add_bos = true;
    t->prefix_mode = TOK_PREFIX_ALWAYS;
    t->escape_ws = true;
    t->byte_fallback = true;
    *out = t;
    return MG_OK;
}

/* Sets piece id (bytes copied; must not contain NUL), its score and type. */
mg_status tok_vocab_set(mg_tokenizer *t, int32_t id, const char *s, size_t n, float score, int type,
                        char *err, size_t err_len) {
    if (id < 0 || id >= t->n_vocab)
        return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer: token id %d out of range", (int)id);
    if (n > TOK_MAX_PIECE)
        return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer: piece %d is too long", (int)id);
    if (memchr(s, 0, n))
        return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer: piece %d contains a NUL byte", (int)id);
    if (type < 0 || type > TOK_TYPE_BYTE)
        return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer: piece %d has unknown type %d", (int)id, type);
    if (!isfinite(score))
        return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer: piece %d has a non-finite score", (int)id);
    char *p = malloc(n + 1);
    if (!p) return mg_err(err, err_len, MG_ERR_NOMEM, "tokenizer: out of memory");
    memcpy(p, s, n);
    p[n] = 0;
    free(t->piece[id]);
    t->piece[id] = p;
    t->len[id] = (uint32_t)n;
    t->score[id] = score;
    t->type[id] = (uint8_t)(type == TOK_TYPE_UNDEFINED ? TOK_TYPE_NORMAL : type);
    return MG_OK;
}

/* Sets the special ids and options (ids < 0 mean none). */
void tok_vocab_set_options(mg_tokenizer *t, const tok_options *o) {
    t->bos = o->bos;
    t->eos = o->eos;
    t->unk = o->unk;
    t->pad = o->pad;
    t->add_bos = o->add_bos;
    t->add_eos = o->add_eos;
    t->prefix_mode = o->prefix_mode;
    t->escape_ws = o->escape_ws;
    t->remove_extra_ws = o->remove_extra_ws;
    t->byte_fallback = o->byte_fallback;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Byte value of a "<0xXX>" piece, or -1. */
int tok_byte_piece_value(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int hi = hexval(s[3]), lo = hexval(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* Sort key of a special piece: first byte, then longer first, then smaller id. */
typedef struct {
    uint32_t key; /* first byte << 24 | (0xFFFFFF - len) */
    int32_t id;
} spec_key;

static int cmp_spec(const void *a, const void *b) {
    const spec_key *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Builds a first-byte-bucketed, longest-first list of the ids whose type passes want(). */
static mg_status build_buckets(mg_tokenizer *t, bool (*want)(int type), int32_t **list, int32_t at[257]) {
    int32_t n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (want(t->type[i]) && t->len[i] > 0) n++;
    memset(at, 0, 257 * sizeof at[0]);
    if (n == 0) return MG_OK;
    spec_key *keys = malloc((size_t)n * sizeof *keys);
    *list = malloc((size_t)n * sizeof **list);
    if (!keys || !*list) {
        free(keys);
        return MG_ERR_NOMEM;
    }
    int32_t k = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (!want(t->type[i]) || t->len[i] == 0) continue;
        keys[k].key = (uint32_t)(unsigned char)t->piece[i][0] << 24 | (0xFFFFFFu - MG_MIN(t->len[i], 0xFFFFFFu));
        keys[k].id = i;
        k++;
    }
    qsort(keys, (size_t)n, sizeof *keys, cmp_spec);
    int32_t count[256] = {0};
    for (int32_t i = 0; i < n; i++) {
        (*list)[i] = keys[i].id;
        count[keys[i].key >> 24]++;
    }
    at[0] = 0;
    for (int b = 0; b < 256; b++) at[b + 1] = at[b] + count[b];
    free(keys);
    return MG_OK;
}

static bool is_special_type(int type) {
    return type == TOK_TYPE_CONTROL || type == TOK_TYPE_UNKNOWN || type == TOK_TYPE_USER;
}
static bool is_user_type(int type) { return type == TOK_TYPE_USER; }

/* Finishes a tokenizer after every piece is set: checks the special ids, builds the hash map,
 * the byte table and the special-token lists. On failure the tokenizer is freed. */
mg_status tok_vocab_finish(mg_tokenizer **tp, char *err, size_t err_len) {
    mg_tokenizer *t = *tp;
    mg_status st = MG_OK;
    const int32_t ids[4] = {t->bos, t->eos, t->unk, t->pad};
    const char *names[4] = {"bos", "eos", "unknown", "padding"};
    for (int i = 0; i < 4; i++)
        if (ids[i] >= t->n_vocab) {
            st = mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer: %s token id %d out of range (%d pieces)",
                        names[i], (int)ids[i], (int)t->n_vocab);
            goto fail;
        }
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (!t->piece[i]) {
            st = mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer: no piece for id %d", (int)i);
            goto fail;
        }
    uint32_t cap = 16;
    while (cap < (uint32_t)t->n_vocab * 2u) cap <<= 1;
    t->hash = malloc((size_t)cap * sizeof *t->hash);
    if (!t->hash) goto nomem;
    memset(t->hash, 0xff, (size_t)cap * sizeof *t->hash);
    t->hash_mask = cap - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint32_t i = (uint32_t)hash_bytes(t->piece[id], t->len[id]) & t->hash_mask;
        bool dup = false;
        while (t->hash[i] >= 0) {
            int32_t o = t->hash[i];
            if (t->len[o] == t->len[id] && memcmp(t->piece[o], t->piece[id], t->len[id]) == 0) {
                dup = true; /* duplicate piece: the first id keeps the string */
                break;
            }
            i = (i + 1) & t->hash_mask;
        }
        if (!dup) t->hash[i] = id;
    }
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (t->type[id] != TOK_TYPE_BYTE) continue;
        int v = tok_byte_piece_value(t->piece[id], t->len[id]);
        if (v < 0) {
            st = mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer: byte piece %d is not of the form <0xXX>", (int)id);
            goto fail;
        }
        if (t->byte_id[v] < 0) t->byte_id[v] = id;
    }
    if (build_buckets(t, is_special_type, &t->special, t->special_at) != MG_OK) goto nomem;
    if (build_buckets(t, is_user_type, &t->user, t->user_at) != MG_OK) goto nomem;
    return MG_OK;
nomem:
    st = mg_err(err, err_len, MG_ERR_NOMEM, "tokenizer: out of memory");
fail:
    mg_tokenizer_free(t);
    *tp = NULL;
    return st;
}

/* Frees a tokenizer (NULL is fine). */
void mg_tokenizer_free(mg_tokenizer *tok) {
    if (!tok) return;
    if (tok->piece)
        for (int32_t i = 0; i < tok->n_vocab; i++) free(tok->piece[i]);
    free(tok->piece);
    free(tok->len);
    free(tok->score);
    free(tok->type);
    free(tok->hash);
    free(tok->special);
    free(tok->user);
    free(tok);
}

/* ==== Accessors ==== */

/* Number of pieces. */
int mg_tokenizer_n_vocab(const mg_tokenizer *tok) { return tok ? tok->n_vocab : 0; }
/* Special ids (-1 when the vocabulary has none). */
int32_t mg_token_bos(const mg_tokenizer *tok) { return tok ? tok->bos : -1; }
int32_t mg_token_eos(const mg_tokenizer *tok) { return tok ? tok->eos : -1; }
int32_t mg_token_unk(const mg_tokenizer *tok) { return tok ? tok->unk : -1; }

/* The raw piece of id, or NULL. */
const char *mg_token_piece(const mg_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->n_vocab) return NULL;
    return tok->piece[id];
}

/* Type of id (TOK_TYPE_*), or -1 when out of range. */
int tok_token_type(const mg_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->n_vocab) return -1;
    return tok->type[id];
}

/* Score of id (0 when out of range). */
float tok_token_score(const mg_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->n_vocab) return 0.0f;
    return tok->score[id];
}

/* Whether the model asks for BOS / EOS around a prompt (tokenizer.ggml.add_bos_token ...). */
bool tok_add_bos(const mg_tokenizer *tok) { return tok && tok->add_bos; }
bool tok_add_eos(const mg_tokenizer *tok) { return tok && tok->add_eos; }

/* ==== Encoding ==== */

/* Length of the well-formed UTF-8 sequence at s (n bytes available), or 1 for an invalid byte. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 1;
    if (n < need) return 1;
    if (s[1] < lo || s[1] > hi) return 1;
    for (size_t i = 2; i < need; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 1;
    return need;
}

/* True if s[0..n) is a proper prefix of a well-formed UTF-8 sequence (more bytes may follow). */
static bool utf8_partial(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (need == 0 || n >= need) return false;
    if (n >= 2) {
        unsigned lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
        unsigned hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        if (s[1] < lo || s[1] > hi) return false;
    }
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return false;
    return true;
}

typedef struct {
    int32_t *ids;
    int64_t n_max, n;
} outbuf;

static void out_push(outbuf *o, int32_t id) {
    if (o->n < o->n_max) o->ids[o->n] = id;
    o->n++;
}

typedef struct {
    float score;
    int32_t left, right;
    uint32_t size;
} cand;

static bool cand_better(const cand *a, const cand *b) {
    if (a->score != b->score) return a->score > b->score;
    return a->left < b->left;
}

static void heap_push(cand *h, size_t *n, cand c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_better(&c, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static cand heap_pop(cand *h, size_t *n) {
    cand top = h[0], last = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1, best = i;
        const cand *bc = &last;
        if (l < m && cand_better(&h[l], bc)) { best = l; bc = &h[l]; }
        if (l + 1 < m && cand_better(&h[l + 1], bc)) best = l + 1;
        if (best == i) break;
        h[i] = h[best];
        i = best;
    }
    if (m) h[i] = last;
    return top;
}

static bool mergeable(int type) {
    return type == TOK_TYPE_NORMAL || type == TOK_TYPE_USER || type == TOK_TYPE_UNUSED;
}

/* Working state of one chunk's BPE. Symbols are byte ranges of norm; a merged symbol is the
 * union of two neighbours, recorded as a tree node so unused pieces can be split back. */
typedef struct {
    const mg_tokenizer *t;
    const char *norm;
    int32_t *prev, *next, *node;
    uint32_t *start, *len;
    uint8_t *frozen;
    int32_t *kid_l, *kid_r; /* per node: children (-1 for a leaf) */
    int32_t *stack;         /* [2n] for emit_node */
    uint32_t *nstart, *nlen;
    int32_t n_nodes;
    cand *heap;
    size_t n_heap;
} bpe_state;

static void try_pair(bpe_state *s, int32_t l, int32_t r) {
    if (l < 0 || r < 0 || s->frozen[l] || s->frozen[r]) return;
    uint32_t size = s->len[l] + s->len[r];
    int32_t id = tok_find(s->t, s->norm + s->start[l], size);
    if (id < 0 || !mergeable(s->t->type[id])) return;
    cand c = {s->t->score[id], l, r, size};
    heap_push(s->heap, &s->n_heap, c);
}

/* Emits the ids of one final piece: the piece itself, byte pieces, or <unk> (runs fused). */
static mg_status emit_piece(bpe_state *s, const char *p, size_t n, bool *prev_unk, outbuf *o) {
    const mg_tokenizer *t = s->t;
    int32_t id = tok_find(t, p, n);
    if (id >= 0) {
        out_push(o, id);
        *prev_unk = false;
        return MG_OK;
    }
    if (t->byte_fallback) {
        bool all = true;
        for (size_t i = 0; i < n; i++)
            if (t->byte_id[(unsigned char)p[i]] < 0) all = false;
        if (all) {
            for (size_t i = 0; i < n; i++) out_push(o, t->byte_id[(unsigned char)p[i]]);
            *prev_unk = false;
            return MG_OK;
        }
    }
    if (t->unk < 0) return MG_ERR_UNSUPPORTED;
    if (!*prev_unk) out_push(o, t->unk);
    *prev_unk = true;
    return MG_OK;
}

/* Emits the final symbol whose tree root is nd, splitting unused pieces back into the two
 * symbols they were merged from (iteratively: the tree can be as deep as the text is long). */
static mg_status emit_node(bpe_state *s, int32_t nd, bool *prev_unk, outbuf *o) {
    int32_t n_stack = 0;
    s->stack[n_stack++] = nd;
    while (n_stack > 0) {
        int32_t k = s->stack[--n_stack];
        const char *p = s->norm + s->nstart[k];
        int32_t id = tok_find(s->t, p, s->nlen[k]);
        if (id >= 0 && s->t->type[id] == TOK_TYPE_UNUSED && s->kid_l[k] >= 0) {
            s->stack[n_stack++] = s->kid_r[k];
            s->stack[n_stack++] = s->kid_l[k];
            continue;
        }
        mg_status st = emit_piece(s, p, s->nlen[k], prev_unk, o);
        if (st != MG_OK) return st;
    }
    return MG_OK;
}

/* Encodes one run of ordinary text (no special tokens inside) with SentencePiece BPE. */
static mg_status encode_run(const mg_tokenizer *t, const char *text, size_t len, bool first, outbuf *o) {
    if (len == 0) return MG_OK;
    /* Normalise: optional whitespace cleanup, dummy prefix, ' ' -> U+2581. */
    size_t cap;
    if (!mg_mul_ok(len, 3, &cap) || !mg_add_ok(cap, 4, &cap)) return MG_ERR_NOMEM;
    char *norm = malloc(cap);
    if (!norm) return MG_ERR_NOMEM;
    static const char ws_esc[3] = {(char)0xE2, (char)0x96, (char)0x81};
    size_t a = 0, b = len;
    if (t->remove_extra_ws) {
        while (a < b && text[a] == ' ') a++;
        while (b > a && text[b - 1] == ' ') b--;
    }
    size_t n = 0;
    if (a == b) {
        free(norm);
        return MG_OK;
    }
    bool prefix = t->prefix_mode == TOK_PREFIX_ALWAYS || (t->prefix_mode == TOK_PREFIX_FIRST && first);
    if (prefix) {
        if (t->escape_ws) { memcpy(norm, ws_esc, 3); n = 3; }
        else norm[n++] = ' ';
    }
    for (size_t i = a; i < b; i++) {
        if (text[i] == ' ') {
            if (t->remove_extra_ws && i > a && text[i - 1] == ' ') continue;
            if (t->escape_ws) { memcpy(norm + n, ws_esc, 3); n += 3; }
            else norm[n++] = ' ';
        } else norm[n++] = text[i];
    }
    /* Working arrays: n symbols at most, 2n tree nodes, 3n heap entries. */
    mg_status st = MG_ERR_NOMEM;
    bpe_state s = {0};
    s.t = t;
    s.norm = norm;
    size_t n2, n3;
    if (n > (size_t)INT32_MAX / 4 || !mg_mul_ok(n, 2, &n2) || !mg_mul_ok(n, 3, &n3)) goto done;
    s.prev = malloc(n * sizeof *s.prev);
    s.next = malloc(n * sizeof *s.next);
    s.node = malloc(n * sizeof *s.node);
    s.start = malloc(n * sizeof *s.start);
    s.len = malloc(n * sizeof *s.len);
    s.frozen = malloc(n);
    s.kid_l = malloc(n2 * sizeof *s.kid_l);
    s.kid_r = malloc(n2 * sizeof *s.kid_r);
    s.nstart = malloc(n2 * sizeof *s.nstart);
    s.nlen = malloc(n2 * sizeof *s.nlen);
    s.heap = malloc((n3 + 1) * sizeof *s.heap);
    s.stack = malloc(n2 * sizeof *s.stack);
    if (!s.prev || !s.next || !s.node || !s.start || !s.len || !s.frozen || !s.kid_l || !s.kid_r ||
        !s.nstart || !s.nlen || !s.heap || !s.stack)
        goto done;
    /* Initial symbols: user-defined pieces (longest first), else one UTF-8 character. */
    int32_t ns = 0;
    for (size_t i = 0; i < n;) {
        const unsigned char *u = (const unsigned char *)norm + i;
        size_t l = 0;
        bool fz = false;
        for (int32_t k = t->user_at[u[0]]; k < t->user_at[u[0] + 1]; k++) {
            int32_t id = t->user[k];
            if (t->len[id] <= n - i && memcmp(norm + i, t->piece[id], t->len[id]) == 0) {
                l = t->len[id];
                fz = true;
                break;
            }
        }
        if (!fz) l = utf8_len(u, n - i);
        s.start[ns] = (uint32_t)i;
        s.len[ns] = (uint32_t)l;
        s.frozen[ns] = fz;
        s.prev[ns] = ns - 1;
        s.next[ns] = ns + 1;
        s.node[ns] = ns;
        s.kid_l[ns] = s.kid_r[ns] = -1;
        s.nstart[ns] = (uint32_t)i;
        s.nlen[ns] = (uint32_t)l;
        ns++;
        i += l;
    }
    s.next[ns - 1] = -1;
    s.n_nodes = ns;
    for (int32_t i = 0; i + 1 < ns; i++) try_pair(&s, i, i + 1);
    while (s.n_heap > 0) {
        cand c = heap_pop(s.heap, &s.n_heap);
        int32_t l = c.left, r = c.right;
        if (s.len[l] == 0 || s.len[r] == 0 || s.len[l] + s.len[r] != c.size || s.next[l] != r) continue;
        int32_t nd = s.n_nodes++;
        s.kid_l[nd] = s.node[l];
        s.kid_r[nd] = s.node[r];
        s.nstart[nd] = s.start[l];
        s.nlen[nd] = c.size;
        s.node[l] = nd;
        s.len[l] = c.size;
        s.len[r] = 0;
        s.next[l] = s.next[r];
        if (s.next[r] >= 0) s.prev[s.next[r]] = l;
        try_pair(&s, s.prev[l], l);
        try_pair(&s, l, s.next[l]);
    }
    bool prev_unk = false;
    st = MG_OK;
    for (int32_t i = 0; i >= 0 && st == MG_OK; i = s.next[i]) st = emit_node(&s, s.node[i], &prev_unk, o);
done:
    free(s.prev); free(s.next); free(s.node); free(s.start); free(s.len); free(s.frozen);
    free(s.kid_l); free(s.kid_r); free(s.nstart); free(s.nlen); free(s.heap); free(s.stack);
    free(norm);
    return st;
}

/* Id of the longest special piece starting at text[i], or -1. */
static int32_t match_special(const mg_tokenizer *t, const char *text, size_t len, size_t i) {
    unsigned c = (unsigned char)text[i];
    for (int32_t k = t->special_at[c]; k < t->special_at[c + 1]; k++) {
        int32_t id = t->special[k];
        if (t->len[id] <= len - i && memcmp(text + i, t->piece[id], t->len[id]) == 0) return id;
    }
    return -1;
}

/* Encodes UTF-8 text (see minigpt.h). */
mg_status mg_tokenize(const mg_tokenizer *tok, const char *text, size_t len, int add_bos,
                      int parse_special, int32_t *ids, int n_max, int *n_out) {
    if (n_out) *n_out = 0;
    if (!tok || (!text && len) || n_max < 0 || (!ids && n_max > 0)) return MG_ERR_INVALID_ARG;
    outbuf o = {ids, n_max, 0};
    if (add_bos && tok->bos >= 0) out_push(&o, tok->bos);
    mg_status st = MG_OK;
    if (!parse_special) {
        st = encode_run(tok, text, len, true, &o);
    } else {
        size_t run = 0;
        for (size_t i = 0; i < len && st == MG_OK;) {
            int32_t id = match_special(tok, text, len, i);
            if (id < 0) { i++; continue; }
            st = encode_run(tok, text + run, i - run, run == 0, &o);
            out_push(&o, id);
            i += tok->len[id];
            run = i;
        }
        if (st == MG_OK) st = encode_run(tok, text + run, len - run, run == 0, &o);
    }
    if (st != MG_OK) return st;
    if (o.n > INT32_MAX) return MG_ERR_NOMEM;
    if (n_out) *n_out = (int)o.n;
    return o.n > n_max ? MG_ERR_INVALID_ARG : MG_OK;
}

/* ==== Decoding ==== */

typedef struct {
    char *buf;
    size_t cap; /* usable bytes (buf_len - 1) */
    int64_t n;
} textbuf;

static void tb_put(textbuf *b, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if ((uint64_t)b->n < b->cap) b->buf[b->n] = s[i];
        b->n++;
    }
}

/* Appends the surface text of a non-byte piece: U+2581 -> ' ', dropping the first one when
 * strip is set. */
static void put_piece_text(const mg_tokenizer *t, textbuf *b, int32_t id, bool strip) {
    const char *p = t->piece[id];
    size_t n = t->len[id];
    bool unescape = t->type[id] == TOK_TYPE_NORMAL || t->type[id] == TOK_TYPE_USER ||
                    t->type[id] == TOK_TYPE_UNUSED;
    for (size_t i = 0; i < n;) {
        if (unescape && t->escape_ws && n - i >= 3 && (unsigned char)p[i] == 0xE2 &&
            (unsigned char)p[i + 1] == 0x96 && (unsigned char)p[i + 2] == 0x81) {
            if (!strip) tb_put(b, " ", 1);
            i += 3;
        } else if (unescape && !t->escape_ws && p[i] == ' ' && strip) {
            i++;
        } else {
            tb_put(b, p + i, 1);
            i++;
        }
        strip = false;
    }
}

static bool is_skipped(const mg_tokenizer *t, int32_t id) {
    return t->type[id] == TOK_TYPE_CONTROL || t->type[id] == TOK_TYPE_UNKNOWN || id == t->bos ||
           id == t->eos || id == t->pad;
}

/* Decodes ids into text (see minigpt.h). */
int64_t mg_detokenize(const mg_tokenizer *tok, const int32_t *ids, int n, int skip_special,
                      int strip_leading_space, char *buf, size_t buf_len) {
    if (!tok || n < 0 || (!ids && n > 0) || (!buf && buf_len)) return -1;
    textbuf b = {buf, buf_len ? buf_len - 1 : 0, 0};
    bool strip = strip_leading_space != 0;
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->n_vocab) return -1;
        if (skip_special && is_skipped(tok, id)) continue;
        if (tok->type[id] == TOK_TYPE_BYTE) {
            char c = (char)tok_byte_piece_value(tok->piece[id], tok->len[id]);
            tb_put(&b, &c, 1);
        } else {
            put_piece_text(tok, &b, id, strip);
        }
        if (tok->len[id] > 0) strip = false;
    }
    if (buf_len) buf[(uint64_t)b.n < b.cap ? (size_t)b.n : b.cap] = 0;
    return b.n;
}

/* Streaming decode of one token (see minigpt.h). Bytes from byte pieces are held in st->pending
 * while they form an incomplete but so far valid UTF-8 sequence; anything else is flushed as it
 * is. st->n_emitted counts the non-empty tokens decoded so far; while it is 0 the token's leading
 * '▁' is dropped (set it to 1 beforehand to keep it). */
int mg_detokenize_stream(const mg_tokenizer *tok, mg_detok_state *st, int32_t id, int skip_special,
                         char *buf, size_t buf_len) {
    if (!tok || !st || !buf || buf_len == 0 || id < 0 || id >= tok->n_vocab) return -1;
    if (st->n_pending < 0 || st->n_pending > (int)sizeof st->pending) return -1;
    if (skip_special && is_skipped(tok, id)) {
        buf[0] = 0;
        return 0;
    }
    /* Everything is first written into a textbuf sized to buf; on overflow nothing changes. */
    textbuf b = {buf, buf_len - 1, 0};
    mg_detok_state ns = *st;
    if (tok->type[id] == TOK_TYPE_BYTE) {
        if (ns.n_pending >= (int)sizeof ns.pending) { /* cannot happen: pending stays < 4 */
            tb_put(&b, (const char *)ns.pending, (size_t)ns.n_pending);
            ns.n_pending = 0;
        }
        ns.pending[ns.n_pending++] = (unsigned char)tok_byte_piece_value(tok->piece[id], tok->len[id]);
        /* Flush complete characters and invalid bytes; keep a valid incomplete tail. */
        int i = 0;
        while (i < ns.n_pending) {
            const unsigned char *u = ns.pending + i;
            size_t left = (size_t)(ns.n_pending - i);
            size_t l = utf8_len(u, left);
            if (l == 1 && u[0] >= 0x80 && utf8_partial(u, left)) break;
            tb_put(&b, (const char *)u, l);
            i += (int)l;
        }
        memmove(ns.pending, ns.pending + i, (size_t)(ns.n_pending - i));
        ns.n_pending -= i;
    } else {
        tb_put(&b, (const char *)ns.pending, (size_t)ns.n_pending);
        ns.n_pending = 0;
        put_piece_text(tok, &b, id, ns.n_emitted == 0);
    }
    if ((uint64_t)b.n > b.cap) return -1;
    buf[b.n] = 0;
    if (tok->len[id] > 0 && ns.n_emitted < INT32_MAX) ns.n_emitted++;
    *st = ns;
    return (int)b.n;
}

/* ==== GGUF ==== */

/* Reads the llama.cpp tokenizer keys of a GGUF file. */
mg_status tok_load_gguf(mg_tokenizer **out, const gguf_file *f, char *err, size_t err_len) {
    *out = NULL;
    gguf_str model;
    mg_status st = gguf_get_str(f, "tokenizer.ggml.model", &model, err, err_len);
    if (st != MG_OK) return st;
    if (!gguf_str_eq(model, "llama"))
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED,
                      "tokenizer: tokenizer.ggml.model '%.*s' is not supported (only 'llama')",
                      (int)MG_MIN(model.len, 32), model.ptr);
    const gguf_kv *toks, *scores = NULL, *types = NULL;
    st = gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks, err, err_len);
    if (st != MG_OK) return st;
    if (gguf_find_kv(f, "tokenizer.ggml.scores")) {
        st = gguf_get_arr(f, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, &scores, err, err_len);
        if (st != MG_OK) return st;
        if (scores->n != toks->n)
            return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer: %llu scores for %llu tokens",
                          (unsigned long long)scores->n, (unsigned long long)toks->n);
    }
    const gguf_kv *tk = gguf_find_kv(f, "tokenizer.ggml.token_type");
    if (tk) {
        if (tk->type != GGUF_TYPE_ARRAY || (tk->arr_type != GGUF_TYPE_INT32 && tk->arr_type != GGUF_TYPE_UINT32 &&
                                            tk->arr_type != GGUF_TYPE_INT8 && tk->arr_type != GGUF_TYPE_UINT8))
            return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer: tokenizer.ggml.token_type is not an integer array");
        if (tk->n != toks->n)
            return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer: %llu token types for %llu tokens",
                          (unsigned long long)tk->n, (unsigned long long)toks->n);
        types = tk;
    }
    mg_tokenizer *t;
    st = tok_vocab_create(&t, (int64_t)MG_MIN(toks->n, (uint64_t)INT64_MAX), err, err_len);
    if (st != MG_OK) return st;
    for (uint64_t i = 0; i < toks->n; i++) {
        float sc = scores ? (float)gguf_arr_f64(scores, i) : 0.0f;
        int64_t ty = types ? gguf_arr_i64(types, i) : TOK_TYPE_NORMAL;
        if (ty < 0 || ty > TOK_TYPE_BYTE) {
            mg_tokenizer_free(t);
            return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer: token %llu has unknown type %lld",
                          (unsigned long long)i, (long long)ty);
        }
        st = tok_vocab_set(t, (int32_t)i, toks->strs[i].ptr, toks->strs[i].len, sc, (int)ty, err, err_len);
        if (st != MG_OK) {
            mg_tokenizer_free(t);
            return st;
        }
    }
    tok_options o = {.bos = 1, .eos = 2, .unk = 0, .pad = -1, .add_bos = true, .add_eos = false,
                     .prefix_mode = TOK_PREFIX_ALWAYS, .escape_ws = true, .remove_extra_ws = false,
                     .byte_fallback = true};
    struct { const char *key; int32_t *dst; } idk[] = {
        {"tokenizer.ggml.bos_token_id", &o.bos}, {"tokenizer.ggml.eos_token_id", &o.eos},
        {"tokenizer.ggml.unknown_token_id", &o.unk}, {"tokenizer.ggml.padding_token_id", &o.pad}};
    for (size_t k = 0; k < MG_ARRAY_LEN(idk); k++) {
        if (!gguf_find_kv(f, idk[k].key)) continue;
        int64_t v;
        st = gguf_get_i64(f, idk[k].key, &v, err, err_len);
        if (st == MG_OK && (v < -1 || v >= t->n_vocab))
            st = mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer: %s = %lld out of range", idk[k].key, (long long)v);
        if (st != MG_OK) {
            mg_tokenizer_free(t);
            return st;
        }
        *idk[k].dst = (int32_t)v;
    }
    struct { const char *key; bool *dst; } bk[] = {
        {"tokenizer.ggml.add_bos_token", &o.add_bos}, {"tokenizer.ggml.add_eos_token", &o.add_eos},
        {"tokenizer.ggml.remove_extra_whitespaces", &o.remove_extra_ws}};
    for (size_t k = 0; k < MG_ARRAY_LEN(bk); k++) {
        if (!gguf_find_kv(f, bk[k].key)) continue;
        st = gguf_get_bool(f, bk[k].key, bk[k].dst, err, err_len);
        if (st != MG_OK) {
            mg_tokenizer_free(t);
            return st;
        }
    }
    if (gguf_find_kv(f, "tokenizer.ggml.add_space_prefix")) {
        bool v;
        st = gguf_get_bool(f, "tokenizer.ggml.add_space_prefix", &v, err, err_len);
        if (st != MG_OK) {
            mg_tokenizer_free(t);
            return st;
        }
        o.prefix_mode = v ? TOK_PREFIX_ALWAYS : TOK_PREFIX_NEVER;
    }
    if (o.unk >= t->n_vocab) o.unk = -1;
    tok_vocab_set_options(t, &o);
    st = tok_vocab_finish(&t, err, err_len);
    if (st != MG_OK) return st;
    *out = t;
    return MG_OK;
}

/* Writes the llama.cpp tokenizer keys into w. */
mg_status tok_write_gguf(const mg_tokenizer *tok, gguf_writer *w) {
    if (!tok || !w) return MG_ERR_INVALID_ARG;
    mg_status st = gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    if (st != MG_OK) return st;
    int32_t *types = malloc((size_t)tok->n_vocab * sizeof *types);
    if (!types) return MG_ERR_NOMEM;
    for (int32_t i = 0; i < tok->n_vocab; i++) types[i] = tok->type[i];
    st = gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok->piece, (uint64_t)tok->n_vocab);
    if (st == MG_OK)
        st = gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, tok->score, (uint64_t)tok->n_vocab);
    if (st == MG_OK)
        st = gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, (uint64_t)tok->n_vocab);
    free(types);
    if (st == MG_OK && tok->bos >= 0) st = gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)tok->bos);
    if (st == MG_OK && tok->eos >= 0) st = gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)tok->eos);
    if (st == MG_OK && tok->unk >= 0) st = gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)tok->unk);
    if (st == MG_OK && tok->pad >= 0) st = gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)tok->pad);
    if (st == MG_OK) st = gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", tok->add_bos);
    if (st == MG_OK) st = gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", tok->add_eos);
    if (st == MG_OK) st = gguf_writer_set_bool(w, "tokenizer.ggml.add_space_prefix", tok->prefix_mode != TOK_PREFIX_NEVER);
    if (st == MG_OK && tok->remove_extra_ws)
        st = gguf_writer_set_bool(w, "tokenizer.ggml.remove_extra_whitespaces", true);
    return st;
}
