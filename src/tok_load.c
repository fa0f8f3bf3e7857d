/*
 * tok_load.c - tokenizer loaders: SentencePiece tokenizer.model (a ModelProto protobuf, read by
 * the bounded reader below), Hugging Face tokenizer.json (parsed with jansson), GGUF files and
 * Hugging Face folders, and mg_tokenizer_load, which tells them apart by content.
 *
 * Scores for tokenizer.json: a converted SentencePiece BPE vocabulary lists its merges in the
 * order the slow tokenizer would apply them (highest piece score first). Giving each merged piece
 * the score -(rank of the first merge that produces it) makes "highest score wins" pick the
 * same merge as "lowest rank wins"; pieces no merge produces get -(n_merges + id), below all.
 */
#include "tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TOK_MAX_FILE (1ull << 31) /* bytes of a tokenizer.json / tokenizer.model we accept */

/* ==== Bounded protobuf reader ==== */

typedef struct {
    const uint8_t *p;
    size_t n, pos;
} pb_cur;

static bool pb_varint(pb_cur *c, uint64_t *v) {
    uint64_t r = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (c->pos >= c->n) return false;
        uint8_t b = c->p[c->pos++];
        if (shift == 63 && (b & 0x7e)) return false; /* more than 64 bits */
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return true;
        }
    }
    return false;
}

/* Reads a field key; false at the end or on malformed input (*bad set then). */
static bool pb_key(pb_cur *c, uint32_t *field, int *wt, bool *bad) {
    *bad = false;
    if (c->pos >= c->n) return false;
    uint64_t k;
    if (!pb_varint(c, &k) || (k >> 3) == 0 || (k >> 3) > 0x1fffffff) {
        *bad = true;
        return false;
    }
    *field = (uint32_t)(k >> 3);
    *wt = (int)(k & 7);
    return true;
}

/* Reads the value of a field of wire type wt; for length-delimited ones *sub gets the bytes. */
static bool pb_value(pb_cur *c, int wt, uint64_t *v, pb_cur *sub) {
    switch (wt) {
    case 0: return pb_varint(c, v);
    case 1:
        if (c->n - c->pos < 8) return false;
        *v = 0;
        for (int i = 7; i >= 0; i--) *v = *v << 8 | c->p[c->pos + (size_t)i];
        c->pos += 8;
        return true;
    case 5:
        if (c->n - c->pos < 4) return false;
        *v = (uint64_t)c->p[c->pos] | (uint64_t)c->p[c->pos + 1] << 8 | (uint64_t)c->p[c->pos + 2] << 16 |
             (uint64_t)c->p[c->pos + 3] << 24;
        c->pos += 4;
        return true;
    case 2: {
        uint64_t len;
        if (!pb_varint(c, &len) || len > c->n - c->pos) return false;
        sub->p = c->p + c->pos;
        sub->n = (size_t)len;
        sub->pos = 0;
        c->pos += (size_t)len;
        *v = len;
        return true;
    }
    default: return false; /* groups (3, 4) and reserved types */
    }
}

static float f32_bits(uint64_t v) {
    uint32_t u = (uint32_t)v;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

typedef struct {
    int model_type;
    bool byte_fallback, ws_suffix;
    int32_t unk, bos, eos, pad;
    bool add_dummy_prefix, remove_extra_ws, escape_ws;
    size_t charsmap_len;
} spm_specs;

static mg_status spm_trainer(pb_cur c, spm_specs *s, char *err, size_t err_len) {
    uint32_t f;
    int wt;
    bool bad;
    while (pb_key(&c, &f, &wt, &bad)) {
        uint64_t v;
        pb_cur sub;
        if (!pb_value(&c, wt, &v, &sub)) bad = true;
        else if (f == 3 || f == 24 || f == 35 || (f >= 40 && f <= 43)) {
            if (wt != 0) bad = true;
            else if (f == 3) s->model_type = (int)(v & 0xff) == (int)v ? (int)v : -1;
            else if (f == 24) s->ws_suffix = v != 0;
            else if (f == 35) s->byte_fallback = v != 0;
            else {
                int32_t id = (int32_t)(uint32_t)v; /* int32 fields: negatives are sign-extended */
                if (f == 40) s->unk = id;
                if (f == 41) s->bos = id;
                if (f == 42) s->eos = id;
                if (f == 43) s->pad = id;
            }
        }
        if (bad) break;
    }
    if (bad) return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.model: malformed trainer_spec");
    return MG_OK;
}

static mg_status spm_normalizer(pb_cur c, spm_specs *s, char *err, size_t err_len) {
    uint32_t f;
    int wt;
    bool bad;
    while (pb_key(&c, &f, &wt, &bad)) {
        uint64_t v;
        pb_cur sub;
        if (!pb_value(&c, wt, &v, &sub)) bad = true;
        else if (f == 2) {
            if (wt != 2) bad = true;
            else s->charsmap_len = sub.n;
        } else if (f >= 3 && f <= 5) {
            if (wt != 0) bad = true;
            else if (f == 3) s->add_dummy_prefix = v != 0;
            else if (f == 4) s->remove_extra_ws = v != 0;
            else s->escape_ws = v != 0;
        }
        if (bad) break;
    }
    if (bad) return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.model: malformed normalizer_spec");
    return MG_OK;
}

/* Loads a SentencePiece tokenizer.model from memory. */
mg_status tok_load_spm_buffer(mg_tokenizer **out, const void *buf, size_t size, char *err, size_t err_len) {
    *out = NULL;
    if (!buf && size) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "tokenizer.model: no data");
    pb_cur top = {buf, size, 0};
    spm_specs s = {.model_type = 1, .unk = 0, .bos = 1, .eos = 2, .pad = -1, .add_dummy_prefix = true,
                   .remove_extra_ws = true, .escape_ws = true};
    pb_cur trainer = {0}, norm = {0};
    bool have_trainer = false, have_norm = false;
    int64_t n_pieces = 0;
    uint32_t f;
    int wt;
    bool bad;
    while (pb_key(&top, &f, &wt, &bad)) {
        uint64_t v;
        pb_cur sub;
        if (!pb_value(&top, wt, &v, &sub)) { bad = true; break; }
        if (f >= 1 && f <= 3 && wt != 2) { bad = true; break; }
        if (f == 1) n_pieces++;
        if (f == 2) { trainer = sub; have_trainer = true; }
        if (f == 3) { norm = sub; have_norm = true; }
    }
    if (bad) return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.model: malformed protobuf");
    mg_status st;
    if (have_trainer && (st = spm_trainer(trainer, &s, err, err_len)) != MG_OK) return st;
    if (have_norm && (st = spm_normalizer(norm, &s, err, err_len)) != MG_OK) return st;
    if (n_pieces == 0) return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.model: no pieces");
    if (s.model_type != 2)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED,
                      "tokenizer.model: model_type %d is not BPE (2)", s.model_type);
    if (s.ws_suffix)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "tokenizer.model: treat_whitespace_as_suffix is not supported");
    if (s.charsmap_len)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED,
                      "tokenizer.model: a normalization rule (precompiled charsmap) is not supported; "
                      "only 'identity'");
    mg_tokenizer *t;
    if ((st = tok_vocab_create(&t, n_pieces, err, err_len)) != MG_OK) return st;
    top.pos = 0;
    int32_t id = 0;
    while (pb_key(&top, &f, &wt, &bad)) {
        uint64_t v;
        pb_cur sub;
        pb_value(&top, wt, &v, &sub); /* validated above */
        if (f != 1) continue;
        const char *piece = "";
        size_t plen = 0;
        float score = 0.0f;
        int type = TOK_TYPE_NORMAL;
        uint32_t pf;
        int pwt;
        while (pb_key(&sub, &pf, &pwt, &bad)) {
            uint64_t pv;
            pb_cur ps;
            if (!pb_value(&sub, pwt, &pv, &ps)) { bad = true; break; }
            if (pf == 1) {
                if (pwt != 2) { bad = true; break; }
                piece = (const char *)ps.p;
                plen = ps.n;
            } else if (pf == 2) {
                if (pwt != 5) { bad = true; break; }
                score = f32_bits(pv);
            } else if (pf == 3) {
                if (pwt != 0 || pv < 1 || pv > 6) { bad = true; break; }
                type = (int)pv;
            }
        }
        if (bad) {
            mg_tokenizer_free(t);
            return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.model: malformed piece %d", (int)id);
        }
        if ((st = tok_vocab_set(t, id, piece ? piece : "", plen, score, type, err, err_len)) != MG_OK) {
            mg_tokenizer_free(t);
            return st;
        }
        id++;
    }
    tok_options o = {.bos = s.bos, .eos = s.eos, .unk = s.unk, .pad = s.pad, .add_bos = true,
                     .add_eos = false, .prefix_mode = s.add_dummy_prefix ? TOK_PREFIX_ALWAYS : TOK_PREFIX_NEVER,
                     .escape_ws = s.escape_ws, .remove_extra_ws = s.remove_extra_ws,
                     .byte_fallback = s.byte_fallback};
    int32_t *ids[4] = {&o.bos, &o.eos, &o.unk, &o.pad};
    for (int i = 0; i < 4; i++)
        if (*ids[i] < -1 || *ids[i] >= n_pieces) {
            mg_tokenizer_free(t);
            return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.model: special id %d out of range", (int)*ids[i]);
        }
    tok_vocab_set_options(t, &o);
    if ((st = tok_vocab_finish(&t, err, err_len)) != MG_OK) return st;
    *out = t;
    return MG_OK;
}

/* ==== tokenizer.json ==== */

typedef struct {
    const char *s;
    size_t n;
    int type;
    float score;
    bool set, merged;
} json_piece;

static const char *jstr(const json_t *o, const char *key) {
    const json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool str_is(const json_t *v, const char *s) {
    return json_is_string(v) && strcmp(json_string_value(v), s) == 0;
}

/* One normalizer step: Prepend "▁" or Replace " " -> "▁"; anything else is unsupported. */
static bool json_norm_step(const json_t *n, tok_options *o) {
    const char *type = jstr(n, "type");
    if (!type) return false;
    if (strcmp(type, "Prepend") == 0 && str_is(json_object_get(n, "prepend"), "\xe2\x96\x81")) {
        o->prefix_mode = TOK_PREFIX_ALWAYS;
        return true;
    }
    if (strcmp(type, "Replace") == 0) {
        const json_t *pat = json_object_get(n, "pattern");
        if (str_is(json_object_get(pat, "String"), " ") && str_is(json_object_get(n, "content"), "\xe2\x96\x81")) {
            o->escape_ws = true;
            return true;
        }
    }
    return false;
}

/* Reads the normalizer / pre_tokenizer into o; false if a step is not one we implement. */
static bool json_text_options(const json_t *root, tok_options *o, char *what, size_t what_len) {
    o->prefix_mode = TOK_PREFIX_NEVER;
    o->escape_ws = false;
    const json_t *n = json_object_get(root, "normalizer");
    if (n && !json_is_null(n)) {
        const char *type = jstr(n, "type");
        if (type && strcmp(type, "Sequence") == 0) {
            const json_t *list = json_object_get(n, "normalizers");
            if (!json_is_array(list)) { snprintf(what, what_len, "normalizer Sequence"); return false; }
            for (size_t i = 0; i < json_array_size(list); i++)
                if (!json_norm_step(json_array_get(list, i), o)) {
                    const char *st = jstr(json_array_get(list, i), "type");
                    snprintf(what, what_len, "normalizer %s", st ? st : "?");
                    return false;
                }
        } else if (!json_norm_step(n, o)) {
            snprintf(what, what_len, "normalizer %s", type ? type : "?");
            return false;
        }
    }
    const json_t *p = json_object_get(root, "pre_tokenizer");
    if (p && !json_is_null(p)) {
        const char *type = jstr(p, "type");
        if (!type || strcmp(type, "Metaspace") != 0 || !str_is(json_object_get(p, "replacement"), "\xe2\x96\x81") ||
            json_is_true(json_object_get(p, "split"))) {
            snprintf(what, what_len, "pre_tokenizer %s", type ? type : "?");
            return false;
        }
        o->escape_ws = true;
        const char *scheme = jstr(p, "prepend_scheme");
        if (scheme) {
            if (strcmp(scheme, "always") == 0) o->prefix_mode = TOK_PREFIX_ALWAYS;
            else if (strcmp(scheme, "first") == 0) o->prefix_mode = TOK_PREFIX_FIRST;
            else if (strcmp(scheme, "never") == 0) o->prefix_mode = TOK_PREFIX_NEVER;
            else { snprintf(what, what_len, "Metaspace prepend_scheme %s", scheme); return false; }
        } else {
            const json_t *aps = json_object_get(p, "add_prefix_space");
            o->prefix_mode = aps && json_is_false(aps) ? TOK_PREFIX_NEVER : TOK_PREFIX_ALWAYS;
        }
    }
    return true;
}

/* Splits one merges entry ("a b" or ["a", "b"]) into two strings. */
static bool json_merge_pair(const json_t *m, const char **a, size_t *an, const char **b, size_t *bn) {
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        size_t n = json_string_length(m);
        const char *sp = memchr(s, ' ', n);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp - s) - 1)) return false;
        *a = s;
        *an = (size_t)(sp - s);
        *b = sp + 1;
        *bn = n - *an - 1;
        return *an > 0 && *bn > 0;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *an = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *bn = json_string_length(json_array_get(m, 1));
        return *an > 0 && *bn > 0;
    }
    return false;
}

static int32_t find_piece(const json_piece *p, int64_t n, const char *s) {
    size_t len = strlen(s);
    for (int64_t i = 0; i < n; i++)
        if (p[i].n == len && memcmp(p[i].s, s, len) == 0) return (int32_t)i;
    return -1;
}

static int64_t json_id(const json_t *v) {
    if (!json_is_integer(v)) return -1;
    json_int_t i = json_integer_value(v);
    return i < 0 || i >= (1 << 24) ? -1 : (int64_t)i;
}

static mg_status json_build(const json_t *root, mg_tokenizer **out, char *err, size_t err_len) {
    const json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.json: no 'model' object");
    const char *mtype = jstr(model, "type");
    if (!mtype || strcmp(mtype, "BPE") != 0)
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "tokenizer.json: model type '%s' is not BPE",
                      mtype ? mtype : "(none)");
    const json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    const json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab) || !json_is_array(merges))
        return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.json: model.vocab / model.merges missing");
    if (added && !json_is_null(added) && !json_is_array(added))
        return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.json: added_tokens is not an array");
    tok_options o = {.bos = -1, .eos = -1, .unk = -1, .pad = -1, .add_bos = true};
    char what[96];
    if (!json_text_options(root, &o, what, sizeof what))
        return mg_err(err, err_len, MG_ERR_UNSUPPORTED, "tokenizer.json: %s is not supported", what);
    const json_t *bf = json_object_get(model, "byte_fallback");
    o.byte_fallback = json_is_true(bf);
    /* Size: one past the largest id. */
    int64_t n = 0;
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)vocab, key, val) {
        int64_t id = json_id(val);
        if (id < 0) return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.json: bad id for piece '%.40s'", key);
        n = MG_MAX(n, id + 1);
    }
    size_t n_added = added ? json_array_size(added) : 0;
    for (size_t i = 0; i < n_added; i++) {
        int64_t id = json_id(json_object_get(json_array_get(added, i), "id"));
        const char *c = jstr(json_array_get(added, i), "content");
        if (id < 0 || !c) return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.json: bad added_tokens[%zu]", i);
        n = MG_MAX(n, id + 1);
    }
    if (n == 0) return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.json: empty vocabulary");
    if ((uint64_t)n > (uint64_t)json_object_size(vocab) + n_added)
        return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.json: ids up to %lld but only %zu pieces",
                      (long long)(n - 1), json_object_size(vocab) + n_added);
    json_piece *p = calloc((size_t)n, sizeof *p);
    if (!p) return mg_err(err, err_len, MG_ERR_NOMEM, "tokenizer.json: out of memory");
    mg_status st = MG_OK;
    json_object_foreach((json_t *)vocab, key, val) {
        int64_t id = json_id(val);
        if (p[id].set) {
            st = mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.json: id %lld used twice", (long long)id);
            goto done;
        }
        p[id] = (json_piece){key, strlen(key), TOK_TYPE_NORMAL, 0.0f, true, false};
        if (o.byte_fallback && tok_byte_piece_value(key, p[id].n) >= 0) p[id].type = TOK_TYPE_BYTE;
    }
    for (size_t i = 0; i < n_added; i++) {
        const json_t *a = json_array_get(added, i);
        int64_t id = json_id(json_object_get(a, "id"));
        const json_t *c = json_object_get(a, "content");
        if (!p[id].set) p[id] = (json_piece){json_string_value(c), json_string_length(c), 0, 0.0f, true, false};
        p[id].type = json_is_true(json_object_get(a, "special")) ? TOK_TYPE_CONTROL : TOK_TYPE_USER;
    }
    for (int64_t id = 0; id < n; id++)
        if (!p[id].set) {
            st = mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.json: no piece has id %lld", (long long)id);
            goto done;
        }
    /* Merge ranks -> scores of the pieces they produce. */
    size_t n_merges = json_array_size(merges);
    char *cat = NULL;
    size_t cat_cap = 0;
    for (size_t r = 0; r < n_merges; r++) {
        const char *a, *b;
        size_t an, bn;
        if (!json_merge_pair(json_array_get(merges, r), &a, &an, &b, &bn)) {
            st = mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.json: malformed merge %zu", r);
            break;
        }
        if (an + bn + 1 > cat_cap) {
            size_t nc = (an + bn + 1) * 2;
            char *c2 = realloc(cat, nc);
            if (!c2) { st = mg_err(err, err_len, MG_ERR_NOMEM, "tokenizer.json: out of memory"); break; }
            cat = c2;
            cat_cap = nc;
        }
        memcpy(cat, a, an);
        memcpy(cat + an, b, bn);
        cat[an + bn] = 0;
        const json_t *idv = json_object_get(vocab, cat);
        char save = cat[an];
        cat[an] = 0;
        bool a_ok = json_object_get(vocab, cat) != NULL;
        cat[an] = save;
        memcpy(cat, b, bn);
        cat[bn] = 0;
        bool b_ok = json_object_get(vocab, cat) != NULL;
        if (!idv || !a_ok || !b_ok) {
            st = mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.json: merge %zu uses a piece not in the vocabulary", r);
            break;
        }
        int64_t id = json_id(idv);
        if (!p[id].merged) {
            p[id].merged = true;
            p[id].score = -(float)r;
        }
    }
    free(cat);
    if (st != MG_OK) goto done;
    const char *unk = jstr(model, "unk_token");
    if (unk) {
        o.unk = find_piece(p, n, unk);
        if (o.unk >= 0 && p[o.unk].type == TOK_TYPE_CONTROL) p[o.unk].type = TOK_TYPE_UNKNOWN;
    }
    mg_tokenizer *t;
    if ((st = tok_vocab_create(&t, n, err, err_len)) != MG_OK) goto done;
    for (int64_t id = 0; id < n; id++) {
        float score = p[id].merged ? p[id].score : -(float)((double)n_merges + (double)id);
        st = tok_vocab_set(t, (int32_t)id, p[id].s, p[id].n, score, p[id].type, err, err_len);
        if (st != MG_OK) {
            mg_tokenizer_free(t);
            goto done;
        }
    }
    o.bos = find_piece(p, n, "<s>");
    o.eos = find_piece(p, n, "</s>");
    /* add_bos: the post-processor's single template starts with a special token. */
    const json_t *pp = json_object_get(root, "post_processor");
    if (pp && str_is(json_object_get(pp, "type"), "TemplateProcessing")) {
        const json_t *single = json_object_get(pp, "single");
        o.add_bos = json_is_array(single) && json_array_size(single) > 0 &&
                    json_object_get(json_array_get(single, 0), "SpecialToken") != NULL;
        o.add_eos = json_is_array(single) && json_array_size(single) > 1 &&
                    json_object_get(json_array_get(single, json_array_size(single) - 1), "SpecialToken") != NULL;
    }
    tok_vocab_set_options(t, &o);
    if ((st = tok_vocab_finish(&t, err, err_len)) != MG_OK) goto done;
    *out = t;
done:
    free(p);
    return st;
}

/* Loads a Hugging Face tokenizer.json from memory. */
mg_status tok_load_json_buffer(mg_tokenizer **out, const void *buf, size_t size, char *err, size_t err_len) {
    *out = NULL;
    if (!buf && size) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "tokenizer.json: no data");
    json_error_t je;
    json_t *root = json_loadb(buf, size, 0, &je);
    if (!root)
        return mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.json: %s (line %d)", je.text, je.line);
    mg_status st = json_is_object(root) ? json_build(root, out, err, err_len)
                                        : mg_err(err, err_len, MG_ERR_FORMAT, "tokenizer.json: not an object");
    json_decref(root);
    return st;
}

/* ==== Files ==== */

static mg_status read_file(const char *path, uint8_t **data, size_t *size, char *err, size_t err_len) {
    *data = NULL;
    *size = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return mg_err(err, err_len, MG_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    mg_status st = MG_OK;
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 1 << 16;
            if (nc > TOK_MAX_FILE) { st = mg_err(err, err_len, MG_ERR_FORMAT, "'%s' is too large", path); break; }
            uint8_t *b2 = realloc(buf, nc);
            if (!b2) { st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory reading '%s'", path); break; }
            buf = b2;
            cap = nc;
        }
        size_t got = fread(buf + n, 1, cap - n, fp);
        n += got;
        if (got == 0) {
            if (ferror(fp)) st = mg_err(err, err_len, MG_ERR_IO, "cannot read '%s'", path);
            break;
        }
    }
    fclose(fp);
    if (st != MG_OK) {
        free(buf);
        return st;
    }
    *data = buf;
    *size = n;
    return MG_OK;
}

static mg_status load_file(mg_tokenizer **out, const char *path, char *err, size_t err_len) {
    uint8_t *data;
    size_t size = 0;
    mg_status st = read_file(path, &data, &size, err, err_len);
    if (st != MG_OK) return st;
    size_t i = 0;
    if (size >= 3 && memcmp(data, "\xef\xbb\xbf", 3) == 0) i = 3;
    while (i < size && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r')) i++;
    if (size >= 4 && memcmp(data, "GGUF", 4) == 0) {
        free(data);
        gguf_file *g;
        if ((st = gguf_open(&g, path, err, err_len)) != MG_OK) return st;
        st = tok_load_gguf(out, g, err, err_len);
        gguf_close(g);
        return st;
    }
    if (i < size && data[i] == '{') st = tok_load_json_buffer(out, data, size, err, err_len);
    else st = tok_load_spm_buffer(out, data, size, err, err_len);
    free(data);
    return st;
}

/* Loads a tokenizer from a GGUF file, a tokenizer.json, a tokenizer.model or a folder holding one
 * of the last two (tokenizer.model preferred: it carries SentencePiece's own scores). */
mg_status mg_tokenizer_load(mg_tokenizer **out, const char *path, char *err, size_t err_len) {
    if (!out || !path) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "tokenizer: no path");
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0) return mg_err(err, err_len, MG_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return load_file(out, path, err, err_len);
    static const char *names[] = {"tokenizer.model", "tokenizer.json"};
    for (size_t k = 0; k < MG_ARRAY_LEN(names); k++) {
        size_t n = strlen(path) + strlen(names[k]) + 2;
        char *full = malloc(n);
        if (!full) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
        snprintf(full, n, "%s/%s", path, names[k]);
        bool exists = stat(full, &sb) == 0 && S_ISREG(sb.st_mode);
        mg_status st = exists ? load_file(out, full, err, err_len) : MG_OK;
        free(full);
        if (exists) return st;
    }
    return mg_err(err, err_len, MG_ERR_IO, "'%s' has neither tokenizer.model nor tokenizer.json", path);
}
