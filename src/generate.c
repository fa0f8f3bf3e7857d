/*
 * generate.c - the sampling loop: sample, accept, decode, check the stop conditions, evaluate the
 * token, repeat. Stop strings are matched on the decoded text and the text ends where the stop
 * string starts; while the tail of the text could still grow into a stop string it is held back
 * from the streaming callback (released with a later token, or by a final call with id -1).
 * The last sampled token is not evaluated (no forward pass is wasted when generation ends).
 */
#include "model.h"

#include <stdlib.h>
#include <string.h>

/* Defaults: 256 new tokens, stop at EOS, no stop strings or sequences, no callback. */
mg_generate_params mg_generate_default_params(void) {
    mg_generate_params p;
    memset(&p, 0, sizeof p);
    p.n_predict = 256;
    p.stop_at_eos = 1;
    return p;
}

typedef struct {
    char *buf;  /* [cap] generated text, NUL-terminated at len */
    size_t len, cap;
} text_buf;

static bool text_append(text_buf *t, const char *s, size_t n) {
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 1024;
        while (cap < t->len + n + 1) {
            if (cap > SIZE_MAX / 2) return false;
            cap *= 2;
        }
        char *nb = realloc(t->buf, cap);
        if (!nb) return false;
        t->buf = nb;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = 0;
    return true;
}

/* Earliest start of any stop string inside text[from..len), or -1. */
static int64_t find_stop(const text_buf *t, size_t from, const char *const *stops) {
    int64_t best = -1;
    for (const char *const *sp = stops; sp && *sp; sp++) {
        size_t n = strlen(*sp);
        if (n == 0 || t->len - from < n) continue;
        const char *hit = memmem(t->buf + from, t->len - from, *sp, n);
        if (hit && (best < 0 || hit - t->buf < best)) best = hit - t->buf;
    }
    return best;
}

/* Length of the longest tail of text[from..len) that is a proper prefix of a stop string. */
static size_t stop_prefix_tail(const text_buf *t, size_t from, const char *const *stops) {
    size_t best = 0;
    for (const char *const *sp = stops; sp && *sp; sp++) {
        size_t n = strlen(*sp);
        for (size_t k = MG_MIN(n - (n > 0), t->len - from); k > best; k--) {
            if (memcmp(t->buf + t->len - k, *sp, k) == 0) {
                best = k;
                break;
            }
        }
    }
    return best;
}

static bool ends_with_seq(const int32_t *ids, int n, const int32_t *seq) {
    int L = 0;
    while (seq[L] >= 0) L++;
    if (L == 0 || L > n) return false;
    return memcmp(ids + n - L, seq, (size_t)L * sizeof *ids) == 0;
}

/* Passes text[*emitted..upto) to the callback (NUL-terminated in place); returns its verdict. */
static int emit(const mg_generate_params *gp, text_buf *t, size_t *emitted, size_t upto, int32_t id,
                const float *logits, int n_vocab) {
    if (!gp->on_token) {
        *emitted = upto;
        return 0;
    }
    char saved = t->buf[upto];
    t->buf[upto] = 0;
    int r = gp->on_token(gp->user, id, t->buf + *emitted, logits, n_vocab);
    t->buf[upto] = saved;
    *emitted = upto;
    return r;
}

/* Samples up to n_predict tokens after what the session holds (see the file comment for the
 * stop rules and which tokens end up evaluated). Returns MG_ERR_CANCELLED when the callback
 * stopped it; out and *n_generated are filled in every case. */
mg_status mg_generate(mg_session *s, mg_sampler *smp, const mg_generate_params *gp_in, char *out, size_t out_len,
                      int *n_generated) {
    if (n_generated) *n_generated = 0;
    if (out && out_len) out[0] = 0;
    if (!s) return MG_ERR_INVALID_ARG;
    if (!smp) return session_set_error(s, MG_ERR_INVALID_ARG, "generate: sampler is NULL");
    const mg_generate_params gp = gp_in ? *gp_in : mg_generate_default_params();
    const mg_model *m = session_model(s);
    const int n_vocab = mg_model_n_vocab(m);
    if (sampler_n_vocab(smp) != n_vocab)
        return session_set_error(s, MG_ERR_INVALID_ARG, "generate: sampler made for %d tokens, model has %d",
                                 sampler_n_vocab(smp), n_vocab);
    if (!mg_session_logits(s))
        return session_set_error(s, MG_ERR_INVALID_ARG, "generate: evaluate a prompt first (no logits)");

    const mg_tokenizer *tok = mg_model_tokenizer(m);
    const int32_t eos = mg_token_eos(tok);
    /* every token but the last is evaluated, so at most n_ctx - n_past + 1 can be produced */
    int64_t room = (int64_t)mg_session_n_ctx(s) - mg_session_n_past(s) + 1;
    int64_t n_max = gp.n_predict < 0 ? room : MG_MIN((int64_t)gp.n_predict, room);
    if (n_max <= 0) return MG_OK;

    int32_t *ids = malloc((size_t)n_max * sizeof *ids);
    text_buf t = {0};
    if (!ids || !text_append(&t, "", 0)) {
        free(ids);
        free(t.buf);
        return session_set_error(s, MG_ERR_NOMEM, "generate: out of memory");
    }
    mg_detok_state ds;
    memset(&ds, 0, sizeof ds);
    mg_status st = MG_OK;
    size_t emitted = 0;
    int n_gen = 0;
    bool stopped_by_string = false;
    const float *logits = mg_session_logits(s);
    for (;;) {
        int32_t id = mg_sampler_sample(smp, logits);
        if (id < 0 || id >= n_vocab) {
            st = session_set_error(s, MG_ERR_INTERNAL, "generate: sampler returned %d", (int)id);
            break;
        }
        mg_sampler_accept(smp, id);
        if (gp.stop_at_eos && id == eos) break;
        ids[n_gen++] = id;

        char piece[256];
        int np = mg_detokenize_stream(tok, &ds, id, 1, piece, sizeof piece);
        if (np < 0) np = 0; /* an id past the tokenizer (e.g. Vicuna's 32001st row) has no text */
        size_t from = emitted, upto;
        if (!text_append(&t, piece, (size_t)np)) {
            st = session_set_error(s, MG_ERR_NOMEM, "generate: out of memory");
            break;
        }
        int64_t hit = find_stop(&t, from, gp.stop_strings);
        if (hit >= 0) {
            t.len = (size_t)hit;
            upto = t.len;
            stopped_by_string = true;
        } else {
            upto = t.len - stop_prefix_tail(&t, from, gp.stop_strings);
        }
        bool seq_stop = false;
        for (const int32_t *const *sq = gp.stop_seqs; sq && *sq && !seq_stop; sq++)
            seq_stop = ends_with_seq(ids, n_gen, *sq);
        bool last = stopped_by_string || seq_stop || n_gen == n_max || mg_session_n_past(s) >= mg_session_n_ctx(s);
        if (last) upto = t.len;
        if (emit(&gp, &t, &emitted, upto, id, logits, n_vocab)) {
            st = session_set_error(s, MG_ERR_CANCELLED, "generate: stopped by the callback");
            break;
        }
        if (last) break;
        if ((st = mg_session_eval_tokens(s, &id, 1)) != MG_OK) break;
        logits = mg_session_logits(s);
    }
    if (emitted < t.len && st == MG_OK && !stopped_by_string)
        emit(&gp, &t, &emitted, t.len, -1, NULL, n_vocab); /* text held back before EOS */
    if (out && out_len) {
        size_t n = MG_MIN(t.len, out_len - 1);
        memcpy(out, t.buf, n);
        out[n] = 0;
    }
    if (n_generated) *n_generated = n_gen;
    free(ids);
    free(t.buf);
    return st;
}
