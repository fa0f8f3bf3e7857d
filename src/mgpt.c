/*
 * mgpt.c - the vision-language pipeline: images in, grounded answers out.
 *
 * An mg_vl joins the parts: image preprocessing (image.c), the vision tower (vision.c), the
 * conversation templates (chat.c), the tokenizer, the LLaMA session and the sampler loop
 * (generate.c), then post-processing and grounding (grounding.c). Each turn renders the whole
 * prompt, cuts it at "<ImageHere>", tokenizes every segment on its own (segment 0 with BOS,
 * literal "<s>" -> BOS: spec 4.4) and lays the image embedding rows between the segments.
 *
 * KV reuse: vl keeps a key per position held in the session (a token id, or a hash of an image
 * row), so a new prompt only evaluates from its first position that differs; the rest is rewound.
 * Image embeddings are cached by a hash of the preprocessed pixels.
 *
 * Context trimming (mg_vl_ask only): as Chat.answer_prepare does, a turn keeps only the last
 * window - reserve prompt rows (window = min(2000, n_ctx), reserve = the turn's max new tokens),
 * dropping from the left, BOS included. The kept rows start at position 0, so the KV record of a
 * moved window no longer matches position by position and the prefix logic re-evaluates it whole.
 *
 * Turns are atomic: vl logs every change it made to the conversation (image, user text, answer),
 * and a turn that fails (prompt evaluation, generation, cancellation) rebuilds the mg_chat from
 * that log as it was when the turn began. mg_chat has no way to remove a message, hence the log.
 */
#include "model.h"
#include "vision.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VL_CACHE_KEEP 4 /* image embeddings kept beyond those of the current conversation */
/* Chat.answer_prepare's max_length: prompt rows + new tokens never exceed it in the demos */
#define VL_MAX_LENGTH 2000

typedef struct {
    uint64_t hash;
    float *embd; /* [n_out, n_llm] */
    uint64_t last_use;
} img_entry;

typedef struct {
    uint64_t hash; /* key of the cache entry */
    int w, h;      /* original size (for the grounding's pixel boxes) */
} conv_image;

/* One change vl made to its mg_chat; replaying the log rebuilds the conversation. */
typedef enum { OP_IMAGE, OP_ASK, OP_ANSWER } op_kind;
typedef struct {
    op_kind kind;
    char *text; /* the user text (OP_ASK) or the raw answer (OP_ANSWER); NULL for OP_IMAGE */
} conv_op;

struct mg_vl {
    const mg_model *m;
    const mg_vision *v;
    mg_session *s;
    mg_chat *chat;
    vision_ws *ws;
    float *pixels;     /* [3, S, S] scratch */

    conv_image *imgs;  /* images of the conversation, in order */
    int n_imgs, cap_imgs;
    int last_hit;

    img_entry *cache;
    int n_cache, cap_cache;
    uint64_t tick;

    uint64_t *kv_key;  /* key of each position held in the session */
    int n_kv, cap_kv;

    int32_t *p_id;     /* last evaluated prompt (the kept window when trimmed): token id or -1 */
    int32_t *p_img;    /* conversation image index of an image row, else -1 */
    int32_t *p_row;    /* row inside that image */
    int n_p, cap_p;
    int n_trim;        /* rows of the rendered prompt dropped from the left before n_p */
    int keep_max;      /* > 0 while mg_vl_ask evaluates: keep at most this many rows */
    bool prompt_ready; /* a prompt was evaluated and its assistant turn is open */
    bool turn_open;    /* mg_chat_prompt opened an assistant turn that is not answered yet */

    conv_op *ops;      /* what was done to the chat since the last reset, in order */
    int n_ops, cap_ops;
    int turn_ops, turn_imgs; /* n_ops and n_imgs when the current turn began */

    char errmsg[256];
};

static mg_status vl_err(mg_vl *vl, mg_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static mg_status vl_err(mg_vl *vl, mg_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(vl->errmsg, sizeof vl->errmsg, fmt, ap);
    va_end(ap);
    return st;
}

/* Grows *p (elements of size sz) to hold at least n; false on overflow or out of memory. */
static bool grow(void **p, int *cap, int n, size_t sz) {
    if (n <= *cap) return true;
    if (n > (1 << 28)) return false;
    int c = *cap ? *cap : 16;
    while (c < n) c *= 2;
    size_t bytes;
    if (!mg_mul_ok((size_t)c, sz, &bytes)) return false;
    void *q = realloc(*p, bytes);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

/* 64-bit hash of a byte buffer (FNV-1a on 8-byte words, then a final avalanche). */
static uint64_t hash_bytes(const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
    }
    for (; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

/* Key of an image row in the KV record: never equal to a token key (top bit set). */
static uint64_t image_row_key(uint64_t hash, int row) {
    uint64_t z = hash + 0x9e3779b97f4a7c15ull * (uint64_t)(row + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (z ^ (z >> 31)) | (1ull << 63);
}

/* ==== Model-level helpers (no conversation) ==== */

/* Fills the stage sizes of a model's vision side. */
mg_status mg_vl_stage_dims(const mg_model *m, mg_vl_dims *d) {
    if (!m || !d || !m->vision) return MG_ERR_INVALID_ARG;
    const mg_vision *v = m->vision;
    memset(d, 0, sizeof *d);
    d->image_size = v->image_size;
    d->n_vit_tok = v->n_tok;
    d->vit_dim = v->n_embd;
    if (v->proj_type == VISION_PROJ_QFORMER) {
        d->n_qf = v->qf_n_query;
        d->qf_dim = v->qf_n_embd;
    }
    d->n_img_tok = v->n_out;
    d->llm_dim = v->n_llm;
    return MG_OK;
}

/* Squash to S x S with Pillow's bicubic, then ToTensor + Normalize with the CLIP statistics. */
mg_status mg_vl_preprocess(const mg_model *m, const mg_image *img, float *pixels, char *err, size_t err_len) {
    if (!m || !img || !pixels) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "preprocess: NULL argument");
    if (!m->vision) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "the model has no vision tower");
    if (!img->rgb || img->w <= 0 || img->h <= 0)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "preprocess: empty image");
    int S = ((const mg_vision *)m->vision)->image_size;
    mg_image sq;
    memset(&sq, 0, sizeof sq);
    mg_status st = mg_image_resize_bicubic(&sq, img, S, S, err, err_len);
    if (st != MG_OK) return st;
    mg_image_to_tensor(&sq, NULL, NULL, pixels);
    mg_image_free(&sq);
    return MG_OK;
}

/* Runs the tower stage by stage with a caller-less workspace; the pool is held throughout. */
static void encode_locked(const mg_model *m, vision_ws *ws, const float *pixels, float *vit_out, float *qf_out,
                          float *tokens) {
    const mg_vision *v = m->vision;
    pthread_mutex_t *lock = (pthread_mutex_t *)&m->pool_lock;
    pthread_mutex_lock(lock);
    float *img = vit_out ? vit_out : vision_ws_buf_get(ws, VWS_IMG);
    vision_vit_forward(v, ws, m->pool, &m->kopts, pixels, img);
    if (v->proj_type == VISION_PROJ_QFORMER) {
        float *q = qf_out ? qf_out : vision_ws_buf_get(ws, VWS_QF);
        vision_qformer_forward(v, ws, m->pool, &m->kopts, img, q);
        if (tokens) vision_project(v, ws, m->pool, &m->kopts, q, tokens);
    } else if (tokens) {
        vision_project(v, ws, m->pool, &m->kopts, img, tokens);
    }
    pthread_mutex_unlock(lock);
}

/* Every stage of one encode into caller buffers (sizes from mg_vl_stage_dims). */
mg_status mg_vl_encode_stages(const mg_model *m, const float *pixels, float *vit_out, float *qformer_out,
                              float *tokens, char *err, size_t err_len) {
    if (!m || !pixels) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "encode: NULL argument");
    if (!m->vision) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "the model has no vision tower");
    vision_ws *ws;
    mg_status st = vision_ws_create(&ws, m->vision, mg_pool_n_threads(m->pool), err, err_len);
    if (st != MG_OK) return st;
    encode_locked(m, ws, pixels, vit_out, qformer_out, tokens);
    vision_ws_free(ws);
    return MG_OK;
}

/* ==== Conversation ==== */

/* Creates the session, chat and scratch of a conversation. */
mg_status mg_vl_create(mg_vl **out, const mg_model *m, const mg_session_params *sp, char *err, size_t err_len) {
    if (err && err_len) err[0] = 0;
    if (!out || !m) return mg_err(err, err_len, MG_ERR_INVALID_ARG, "mg_vl_create: NULL argument");
    *out = NULL;
    if (!m->vision)
        return mg_err(err, err_len, MG_ERR_INVALID_ARG, "the model (%s) has no vision tower", mg_model_variant(m));
    mg_vl *vl = calloc(1, sizeof *vl);
    if (!vl) return mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    vl->m = m;
    vl->v = m->vision;
    mg_status st = mg_session_create(&vl->s, m, sp, err, err_len);
    if (st == MG_OK && (st = mg_chat_create(&vl->chat, mg_model_chat_template(m))) != MG_OK)
        mg_err(err, err_len, st, "cannot create the conversation");
    if (st == MG_OK) st = vision_ws_create(&vl->ws, vl->v, mg_pool_n_threads(m->pool), err, err_len);
    if (st == MG_OK) {
        size_t S = (size_t)vl->v->image_size;
        vl->pixels = malloc(3 * S * S * sizeof(float));
        if (!vl->pixels) st = mg_err(err, err_len, MG_ERR_NOMEM, "out of memory");
    }
    if (st != MG_OK) {
        mg_vl_free(vl);
        return st;
    }
    *out = vl;
    return MG_OK;
}

/* Frees everything vl owns (the session included). */
void mg_vl_free(mg_vl *vl) {
    if (!vl) return;
    mg_session_free(vl->s);
    mg_chat_free(vl->chat);
    vision_ws_free(vl->ws);
    free(vl->pixels);
    for (int i = 0; i < vl->n_cache; i++) free(vl->cache[i].embd);
    free(vl->cache);
    free(vl->imgs);
    free(vl->kv_key);
    free(vl->p_id);
    free(vl->p_img);
    free(vl->p_row);
    for (int i = 0; i < vl->n_ops; i++) free(vl->ops[i].text);
    free(vl->ops);
    free(vl);
}

/* Accessors. */
mg_session *mg_vl_session(mg_vl *vl) { return vl ? vl->s : NULL; }
mg_chat *mg_vl_chat(mg_vl *vl) { return vl ? vl->chat : NULL; }
const char *mg_vl_errmsg(const mg_vl *vl) { return vl ? vl->errmsg : "NULL conversation"; }

/* ==== The conversation log (atomic turns) ==== */

/* Forgets log entries from n on. */
static void ops_truncate(mg_vl *vl, int n) {
    for (int i = n; i < vl->n_ops; i++) free(vl->ops[i].text);
    if (n < vl->n_ops) vl->n_ops = n;
}

/* Appends a change to the log (text copied; NULL for an image); false when out of memory. */
static bool ops_push(mg_vl *vl, op_kind kind, const char *text, size_t len) {
    char *t = NULL;
    if (text) {
        if (!(t = malloc(len + 1))) return false;
        memcpy(t, text, len);
        t[len] = 0;
    }
    if (!grow((void **)&vl->ops, &vl->cap_ops, vl->n_ops + 1, sizeof *vl->ops)) {
        free(t);
        return false;
    }
    vl->ops[vl->n_ops++] = (conv_op){kind, t};
    return true;
}

/* The current turn's changes become part of the conversation. */
static void turn_commit(mg_vl *vl) {
    vl->turn_ops = vl->n_ops;
    vl->turn_imgs = vl->n_imgs;
}

/* Rebuilds the chat from the first n log entries. Replaying the same calls in the same order
 * gives the same messages (mg_chat_ask's join with an image message included); an answer needs
 * its assistant turn opened first, which only mg_chat_prompt does. Every step succeeded when it
 * was first done, so only memory can fail here. */
static mg_status chat_replay(mg_vl *vl, int n) {
    mg_chat_reset(vl->chat);
    mg_status st = MG_OK;
    for (int i = 0; i < n && st == MG_OK; i++) {
        const conv_op *o = &vl->ops[i];
        if (o->kind == OP_IMAGE) {
            st = mg_chat_add_image(vl->chat);
        } else if (o->kind == OP_ASK) {
            st = mg_chat_ask(vl->chat, o->text);
        } else {
            mg_prompt pr;
            st = mg_chat_prompt(vl->chat, &pr, NULL, 0);
            if (st == MG_OK) st = mg_chat_answer(vl->chat, o->text, strlen(o->text));
        }
    }
    vl->turn_open = false;
    vl->prompt_ready = false;
    return st;
}

/* Forgets the whole conversation (the caches stay). */
static void conv_clear(mg_vl *vl) {
    mg_chat_reset(vl->chat);
    ops_truncate(vl, 0);
    vl->n_imgs = 0;
    vl->prompt_ready = false;
    vl->turn_open = false;
    turn_commit(vl);
}

/* Puts the conversation back as it was when the current turn began. Cheap when the turn changed
 * nothing. If the chat cannot be rebuilt (out of memory) the conversation is cleared rather than
 * left half-built; the message says so. */
static void turn_rollback(mg_vl *vl) {
    if (vl->n_ops == vl->turn_ops && vl->n_imgs == vl->turn_imgs && !vl->turn_open) {
        vl->prompt_ready = false;
        return;
    }
    ops_truncate(vl, vl->turn_ops);
    vl->n_imgs = MG_MIN(vl->n_imgs, vl->turn_imgs);
    if (chat_replay(vl, vl->n_ops) != MG_OK) {
        conv_clear(vl);
        size_t n = strlen(vl->errmsg);
        snprintf(vl->errmsg + n, sizeof vl->errmsg - n, "%s", " (out of memory: conversation reset)");
    }
}

/* Withdraws an assistant turn left open by an evaluated prompt that got no answer, so that a new
 * message follows the last closed turn instead of an empty assistant message. */
static mg_status drop_open_turn(mg_vl *vl) {
    if (!vl->turn_open) return MG_OK;
    mg_status st = chat_replay(vl, vl->n_ops);
    if (st != MG_OK) {
        conv_clear(vl);
        return vl_err(vl, st, "out of memory (conversation reset)");
    }
    return MG_OK;
}

/* New conversation; caches stay. */
void mg_vl_reset(mg_vl *vl) {
    if (!vl) return;
    conv_clear(vl);
}

static img_entry *cache_find(mg_vl *vl, uint64_t hash) {
    for (int i = 0; i < vl->n_cache; i++)
        if (vl->cache[i].hash == hash) return &vl->cache[i];
    return NULL;
}

static bool in_conversation(const mg_vl *vl, uint64_t hash) {
    for (int i = 0; i < vl->n_imgs; i++)
        if (vl->imgs[i].hash == hash) return true;
    return false;
}

/* Drops least recently used entries not in the conversation while over the budget. */
static void cache_trim(mg_vl *vl) {
    for (;;) {
        int n_free = 0, victim = -1;
        for (int i = 0; i < vl->n_cache; i++) {
            if (in_conversation(vl, vl->cache[i].hash)) continue;
            n_free++;
            if (victim < 0 || vl->cache[i].last_use < vl->cache[victim].last_use) victim = i;
        }
        if (n_free <= VL_CACHE_KEEP) return;
        free(vl->cache[victim].embd);
        vl->cache[victim] = vl->cache[--vl->n_cache];
    }
}

/* Preprocesses, hashes, and encodes unless the cache has it; appends it to the conversation. */
mg_status mg_vl_add_image(mg_vl *vl, const mg_image *img, int *cache_hit) {
    if (cache_hit) *cache_hit = 0;
    if (!vl) return MG_ERR_INVALID_ARG;
    vl->errmsg[0] = 0;
    if (!img || !img->rgb || img->w <= 0 || img->h <= 0) return vl_err(vl, MG_ERR_INVALID_ARG, "add_image: empty image");
    const mg_vision *v = vl->v;
    mg_status st = mg_vl_preprocess(vl->m, img, vl->pixels, vl->errmsg, sizeof vl->errmsg);
    if (st != MG_OK) return st;
    if ((st = drop_open_turn(vl)) != MG_OK) return st;
    size_t S = (size_t)v->image_size;
    uint64_t hash = hash_bytes(vl->pixels, 3 * S * S * sizeof(float));
    img_entry *e = cache_find(vl, hash);
    vl->last_hit = e != NULL;
    if (!e) {
        size_t n = (size_t)v->n_out * (size_t)v->n_llm;
        float *embd = malloc(n * sizeof(float));
        if (!embd || !grow((void **)&vl->cache, &vl->cap_cache, vl->n_cache + 1, sizeof *vl->cache)) {
            free(embd);
            return vl_err(vl, MG_ERR_NOMEM, "out of memory");
        }
        encode_locked(vl->m, vl->ws, vl->pixels, NULL, NULL, embd);
        e = &vl->cache[vl->n_cache++];
        e->hash = hash;
        e->embd = embd;
    }
    e->last_use = ++vl->tick;
    if (!grow((void **)&vl->imgs, &vl->cap_imgs, vl->n_imgs + 1, sizeof *vl->imgs) || !ops_push(vl, OP_IMAGE, NULL, 0))
        return vl_err(vl, MG_ERR_NOMEM, "out of memory");
    if ((st = mg_chat_add_image(vl->chat)) != MG_OK) {
        ops_truncate(vl, vl->n_ops - 1);
        return vl_err(vl, st, "cannot add the image message");
    }
    vl->imgs[vl->n_imgs++] = (conv_image){hash, img->w, img->h};
    vl->prompt_ready = false;
    cache_trim(vl);
    if (cache_hit) *cache_hit = vl->last_hit;
    return MG_OK;
}

/* Adds a user message. */
mg_status mg_vl_add_text(mg_vl *vl, const char *text) {
    if (!vl) return MG_ERR_INVALID_ARG;
    vl->errmsg[0] = 0;
    if (!text) return vl_err(vl, MG_ERR_INVALID_ARG, "add_text: NULL text");
    mg_status st = drop_open_turn(vl);
    if (st != MG_OK) return st;
    if (!ops_push(vl, OP_ASK, text, strlen(text))) return vl_err(vl, MG_ERR_NOMEM, "out of memory");
    if ((st = mg_chat_ask(vl->chat, text)) != MG_OK) {
        ops_truncate(vl, vl->n_ops - 1);
        return vl_err(vl, st, "cannot add the message");
    }
    vl->prompt_ready = false;
    return MG_OK;
}

/* Appends one prompt row to the p_* arrays. */
static bool push_row(mg_vl *vl, int32_t id, int32_t img, int32_t row) {
    if (vl->n_p >= vl->cap_p) {
        int cap = vl->cap_p, c2 = cap, c3 = cap;
        if (!grow((void **)&vl->p_id, &cap, vl->n_p + 1, sizeof *vl->p_id) ||
            !grow((void **)&vl->p_img, &c2, vl->n_p + 1, sizeof *vl->p_img) ||
            !grow((void **)&vl->p_row, &c3, vl->n_p + 1, sizeof *vl->p_row))
            return false;
        vl->cap_p = cap;
    }
    vl->p_id[vl->n_p] = id;
    vl->p_img[vl->n_p] = img;
    vl->p_row[vl->n_p] = row;
    vl->n_p++;
    return true;
}

static uint64_t row_key(const mg_vl *vl, int i) {
    if (vl->p_id[i] >= 0) return (uint64_t)(uint32_t)vl->p_id[i];
    return image_row_key(vl->imgs[vl->p_img[i]].hash, vl->p_row[i]);
}

/* Renders and tokenizes the prompt into the p_* arrays. */
static mg_status build_prompt(mg_vl *vl) {
    mg_prompt pr;
    char err[256];
    vl->turn_open = true; /* mg_chat_prompt opens the assistant turn even when it then fails */
    mg_status st = mg_chat_prompt(vl->chat, &pr, err, sizeof err);
    if (st != MG_OK) return vl_err(vl, st, "%s", err);
    if (pr.n_images != vl->n_imgs)
        return vl_err(vl, MG_ERR_INTERNAL, "the prompt holds %d images, the conversation %d", pr.n_images, vl->n_imgs);
    const mg_tokenizer *tok = mg_model_tokenizer(vl->m);
    vl->n_p = 0;
    int32_t *ids = NULL;
    int cap = 0;
    for (int i = 0; i < pr.n_segments; i++) {
        const mg_prompt_segment *sg = &pr.segments[i];
        int need = (int)MG_MIN(sg->len + 4, (size_t)(1 << 28)), n = 0;
        for (int tries = 0; tries < 2; tries++) {
            if (!grow((void **)&ids, &cap, need, sizeof *ids)) {
                free(ids);
                return vl_err(vl, MG_ERR_NOMEM, "out of memory");
            }
            st = mg_tokenize(tok, sg->text, sg->len, sg->add_bos, 1, ids, cap, &n);
            if (st == MG_OK || n <= cap) break;
            need = n;
        }
        if (st != MG_OK) {
            free(ids);
            return vl_err(vl, st, "cannot tokenize prompt segment %d", i);
        }
        for (int k = 0; k < n; k++)
            if (!push_row(vl, ids[k], -1, 0)) {
                free(ids);
                return vl_err(vl, MG_ERR_NOMEM, "out of memory");
            }
        if (i < pr.n_images) {
            if (!cache_find(vl, vl->imgs[i].hash)) {
                free(ids);
                return vl_err(vl, MG_ERR_INTERNAL, "image %d left the cache", i);
            }
            for (int r = 0; r < vl->v->n_out; r++)
                if (!push_row(vl, -1, i, r)) {
                    free(ids);
                    return vl_err(vl, MG_ERR_NOMEM, "out of memory");
                }
        }
    }
    free(ids);
    return MG_OK;
}

/* Keeps only the last keep rows of the built prompt (Chat.answer_prepare's embs[:, begin_idx:]):
 * the rows before are dropped, BOS and partial images included, and the kept ones take positions
 * 0.. when evaluated, exactly as the demo's inputs_embeds do. */
static void trim_prompt(mg_vl *vl, int keep) {
    vl->n_trim = 0;
    if (keep <= 0 || vl->n_p <= keep) return;
    int begin = vl->n_p - keep;
    memmove(vl->p_id, vl->p_id + begin, (size_t)keep * sizeof *vl->p_id);
    memmove(vl->p_img, vl->p_img + begin, (size_t)keep * sizeof *vl->p_img);
    memmove(vl->p_row, vl->p_row + begin, (size_t)keep * sizeof *vl->p_row);
    vl->n_p = keep;
    vl->n_trim = begin;
}

/* Records positions [from, to) of the prompt as held by the session. */
static bool record_rows(mg_vl *vl, int from, int to) {
    if (!grow((void **)&vl->kv_key, &vl->cap_kv, to, sizeof *vl->kv_key)) return false;
    for (int i = from; i < to; i++) vl->kv_key[i] = row_key(vl, i);
    vl->n_kv = to;
    return true;
}

/* Evaluates prompt rows [from, n_p): runs of tokens and runs of image rows. */
static mg_status eval_from(mg_vl *vl, int from) {
    const int64_t d = vl->v->n_llm;
    for (int i = from; i < vl->n_p;) {
        int j = i;
        mg_status st;
        if (vl->p_id[i] >= 0) {
            while (j < vl->n_p && vl->p_id[j] >= 0) j++;
            st = mg_session_eval_tokens(vl->s, vl->p_id + i, j - i);
        } else {
            int im = vl->p_img[i];
            while (j < vl->n_p && vl->p_id[j] < 0 && vl->p_img[j] == im && vl->p_row[j] == vl->p_row[i] + (j - i)) j++;
            const img_entry *e = cache_find(vl, vl->imgs[im].hash);
            if (!e) return vl_err(vl, MG_ERR_INTERNAL, "image %d left the cache", im);
            st = mg_session_eval_embd(vl->s, e->embd + (size_t)vl->p_row[i] * (size_t)d, j - i);
        }
        if (st != MG_OK) {
            vl->n_kv = mg_session_n_past(vl->s) < i ? mg_session_n_past(vl->s) : i;
            return vl_err(vl, st, "%s", mg_session_errmsg(vl->s));
        }
        if (!record_rows(vl, i, j)) return vl_err(vl, MG_ERR_NOMEM, "out of memory");
        i = j;
    }
    return MG_OK;
}

/* Renders the prompt, trims it to vl->keep_max rows (when set) and evaluates what the KV cache
 * does not hold already. Comparing keys position by position is what makes trimming safe: a
 * cached position is reused only when every row up to it is the same row at the same position,
 * so a window whose start moved is re-evaluated from its first row. */
static mg_status eval_prompt(mg_vl *vl, mg_vl_result *r) {
    int64_t t0 = mg_time_us();
    vl->prompt_ready = false;
    vl->n_trim = 0;
    mg_status st = build_prompt(vl);
    if (st != MG_OK) return st;
    trim_prompt(vl, vl->keep_max);
    if (vl->n_p == 0) return vl_err(vl, MG_ERR_INVALID_ARG, "empty prompt");
    /* what the session really holds may have been rewound behind our back */
    int held = MG_MIN(vl->n_kv, mg_session_n_past(vl->s));
    int k = 0;
    while (k < held && k < vl->n_p && vl->kv_key[k] == row_key(vl, k)) k++;
    if (k == vl->n_p) k--; /* all held: re-run the last row for its logits */
    if ((st = mg_session_rewind(vl->s, k)) != MG_OK) return vl_err(vl, st, "%s", mg_session_errmsg(vl->s));
    vl->n_kv = k;
    if ((st = eval_from(vl, k)) != MG_OK) return st;
    vl->prompt_ready = true;
    if (r) {
        r->n_prompt = vl->n_p;
        r->n_prompt_eval = vl->n_p - k;
        r->n_prompt_trimmed = vl->n_trim;
        r->t_prompt_ms = (double)(mg_time_us() - t0) / 1000.0;
        r->image_cache_hit = vl->last_hit;
    }
    return MG_OK;
}

/* The public step: the whole prompt (no trimming); a failure ends the turn (rolled back). */
mg_status mg_vl_eval_prompt(mg_vl *vl, mg_vl_result *r) {
    if (!vl) return MG_ERR_INVALID_ARG;
    vl->errmsg[0] = 0;
    mg_status st = eval_prompt(vl, r);
    if (st != MG_OK) turn_rollback(vl);
    return st;
}

/* Copies the last prompt's rows out (ids, and embeddings when asked). */
int mg_vl_prompt_rows(mg_vl *vl, int32_t *ids, float *embd, int n_max) {
    if (!vl || n_max < 0) return -1;
    const llama_model *lm = &vl->m->lm;
    const int64_t d = lm->hp.n_embd;
    int n = MG_MIN(n_max, vl->n_p);
    for (int i = 0; i < n; i++) {
        if (ids) ids[i] = vl->p_id[i];
        if (!embd) continue;
        float *dst = embd + (size_t)i * (size_t)d;
        if (vl->p_id[i] >= 0) {
            mg_get_row_f32(lm->tok_embd.data, lm->tok_embd.type, d, vl->p_id[i], dst);
        } else {
            const img_entry *e = cache_find(vl, vl->imgs[vl->p_img[i]].hash);
            if (!e) return -1;
            memcpy(dst, e->embd + (size_t)vl->p_row[i] * (size_t)d, (size_t)d * sizeof(float));
        }
    }
    return vl->n_p;
}

/* Releases what a result owns and zeroes it. */
void mg_vl_result_free(mg_vl_result *r) {
    if (!r) return;
    free(r->raw);
    free(r->text);
    mg_grounding_free(r->grounding);
    memset(r, 0, sizeof *r);
}

/* Post-processes raw and parses the grounding into r; with commit, also closes the assistant turn
 * with raw (logged, so a later rollback can replay it) and ends the turn. Everything that can
 * fail is done before the chat changes, so a failure leaves the turn open for the rollback. */
static mg_status finish_turn(mg_vl *vl, const char *raw, size_t len, mg_vl_result *r, bool commit) {
    mg_chat_template t = mg_model_chat_template(vl->m);
    char *text = malloc(len + 1);
    if (!text) return vl_err(vl, MG_ERR_NOMEM, "out of memory");
    int64_t n = mg_chat_postprocess(t, raw, len, text, len + 1);
    if (n < 0) {
        free(text);
        return vl_err(vl, MG_ERR_INTERNAL, "post-processing failed");
    }
    int w = vl->n_imgs ? vl->imgs[vl->n_imgs - 1].w : 0, h = vl->n_imgs ? vl->imgs[vl->n_imgs - 1].h : 0;
    mg_grounding *g = NULL;
    char err[256];
    mg_status st = mg_grounding_parse(&g, text, (size_t)n, w, h, err, sizeof err);
    if (st != MG_OK) {
        free(text);
        return vl_err(vl, st, "%s", err);
    }
    char *raw_copy = r ? malloc(len + 1) : NULL;
    if (r && !raw_copy) {
        free(text);
        mg_grounding_free(g);
        return vl_err(vl, MG_ERR_NOMEM, "out of memory");
    }
    if (commit) {
        if (!ops_push(vl, OP_ANSWER, raw, len)) {
            st = vl_err(vl, MG_ERR_NOMEM, "out of memory");
        } else if ((st = mg_chat_answer(vl->chat, raw, len)) != MG_OK) {
            ops_truncate(vl, vl->n_ops - 1);
            vl_err(vl, st, "cannot record the answer");
        }
        if (st != MG_OK) {
            free(text);
            free(raw_copy);
            mg_grounding_free(g);
            return st;
        }
        vl->prompt_ready = false;
        vl->turn_open = false;
        turn_commit(vl);
    }
    if (r) {
        free(r->raw);
        free(r->text);
        mg_grounding_free(r->grounding);
        memcpy(raw_copy, raw, len);
        raw_copy[len] = 0;
        r->raw = raw_copy;
        r->text = text;
        r->grounding = g;
    } else {
        free(text);
        mg_grounding_free(g);
    }
    return MG_OK;
}

typedef struct {
    mg_vl *vl;
    const mg_generate_params *user;
    int32_t *ids;
    int n, cap;
    bool oom;
} gen_track;

/* Wraps the caller's callback to record the generated ids (for the KV record). */
static int track_cb(void *user, int32_t id, const char *piece, const float *logits, int n_vocab) {
    gen_track *t = user;
    if (id >= 0) {
        if (grow((void **)&t->ids, &t->cap, t->n + 1, sizeof *t->ids)) t->ids[t->n++] = id;
        else t->oom = true;
    }
    if (t->user && t->user->on_token) return t->user->on_token(t->user->user, id, piece, logits, n_vocab);
    return 0;
}

/* Generates the answer of the open turn; see minigpt.h. Once generation has started, any failure
 * (cancellation included) rolls the turn back; r still receives what was generated. */
mg_status mg_vl_generate(mg_vl *vl, mg_sampler *smp, const mg_generate_params *gp_in, mg_vl_result *r) {
    if (!vl) return MG_ERR_INVALID_ARG;
    vl->errmsg[0] = 0;
    if (!smp) return vl_err(vl, MG_ERR_INVALID_ARG, "generate: sampler is NULL");
    if (!vl->prompt_ready || !mg_session_logits(vl->s) || mg_session_n_past(vl->s) != vl->n_p)
        return vl_err(vl, MG_ERR_INVALID_ARG, "generate: evaluate the prompt first (mg_vl_eval_prompt)");
    mg_generate_params gp = mg_generate_default_params();
    if (gp_in) gp = *gp_in;
    else mg_model_generation_defaults(vl->m, NULL, &gp);
    gen_track t = {vl, gp_in, NULL, 0, 0, false};
    gp.on_token = track_cb;
    gp.user = &t;
    size_t cap = 1 << 20; /* n_predict <= 0: until EOS or the context's end */
    if (gp.n_predict > 0) cap = MG_MAX((size_t)4096, (size_t)gp.n_predict * 64 + 1);
    char *out = malloc(cap);
    if (!out) {
        turn_rollback(vl);
        return vl_err(vl, MG_ERR_NOMEM, "out of memory");
    }
    int64_t t0 = mg_time_us();
    int n_gen = 0;
    mg_status st = mg_generate(vl->s, smp, &gp, out, cap, &n_gen);
    double ms = (double)(mg_time_us() - t0) / 1000.0;
    /* the generated tokens the session evaluated now follow the prompt in the cache */
    int n_eval = mg_session_n_past(vl->s) - vl->n_p;
    if (n_eval < 0 || n_eval > t.n || t.oom) {
        vl->n_kv = MG_MIN(vl->n_kv, mg_session_n_past(vl->s));
        if (n_eval > 0 && (t.oom || n_eval > t.n)) vl->n_kv = MG_MIN(vl->n_kv, vl->n_p);
    } else if (grow((void **)&vl->kv_key, &vl->cap_kv, vl->n_p + n_eval, sizeof *vl->kv_key)) {
        for (int i = 0; i < n_eval; i++) vl->kv_key[vl->n_p + i] = (uint64_t)(uint32_t)t.ids[i];
        vl->n_kv = vl->n_p + n_eval;
    } else {
        vl->n_kv = MG_MIN(vl->n_kv, vl->n_p);
    }
    free(t.ids);
    if (st != MG_OK && st != MG_ERR_CANCELLED) {
        free(out);
        vl_err(vl, st, "%s", mg_session_errmsg(vl->s));
        turn_rollback(vl);
        return st;
    }
    /* a cancelled answer is still handed to the caller (what was streamed so far) but never
     * enters the history: the conversation stays as it was before the turn */
    bool cancelled = st == MG_ERR_CANCELLED;
    mg_status st2 = finish_turn(vl, out, strlen(out), r, !cancelled);
    free(out);
    if (r) {
        r->n_generated = n_gen;
        r->t_gen_ms = ms;
    }
    if (st2 != MG_OK || cancelled) {
        if (cancelled) vl_err(vl, st, "generation stopped by the callback");
        turn_rollback(vl);
        return st2 != MG_OK ? st2 : st;
    }
    return MG_OK;
}

/* Closes the turn with a given answer (no generation). */
mg_status mg_vl_force_answer(mg_vl *vl, const char *answer, mg_vl_result *r) {
    if (!vl) return MG_ERR_INVALID_ARG;
    vl->errmsg[0] = 0;
    if (!answer) return vl_err(vl, MG_ERR_INVALID_ARG, "force_answer: NULL answer");
    mg_status st = MG_OK;
    if (!vl->prompt_ready) {
        mg_prompt pr;
        char err[256];
        vl->turn_open = true;
        st = mg_chat_prompt(vl->chat, &pr, err, sizeof err); /* opens the assistant turn */
        if (st != MG_OK) vl_err(vl, st, "%s", err);
    }
    if (st == MG_OK) st = finish_turn(vl, answer, strlen(answer), r, true);
    if (st != MG_OK) {
        turn_rollback(vl);
        return st;
    }
    if (r) r->n_generated = 0;
    return st;
}

/* The prompt rows mg_vl_ask keeps: Chat.answer_prepare's max_length - max_new_tokens, with
 * max_length = min(2000, n_ctx) (the session cannot hold more) and max_new_tokens = the turn's
 * n_predict (the model's default when gp is NULL or asks for "no limit"). The reserve is capped
 * at half the window so that a small context still leaves the prompt most of it (the demos'
 * 300 / 500 of 2000 are below that cap). */
static int ask_keep(const mg_vl *vl, const mg_generate_params *gp) {
    int window = MG_MIN(VL_MAX_LENGTH, mg_session_n_ctx(vl->s));
    int reserve = gp ? gp->n_predict : 0;
    if (reserve <= 0) {
        mg_generate_params d = mg_generate_default_params();
        mg_model_generation_defaults(vl->m, NULL, &d);
        reserve = MG_MAX(d.n_predict, 0);
    }
    reserve = MG_MIN(reserve, window / 2);
    return window - reserve;
}

/* One turn: optional image, question, trimmed prompt evaluation, generation. Atomic: on any
 * failure the conversation is rolled back to where the turn began. */
mg_status mg_vl_ask(mg_vl *vl, const mg_image *image, const char *question, mg_sampler *smp,
                    const mg_generate_params *gp, mg_vl_result *r) {
    if (!vl) return MG_ERR_INVALID_ARG;
    if (r) memset(r, 0, sizeof *r);
    vl->errmsg[0] = 0;
    if (!smp) return vl_err(vl, MG_ERR_INVALID_ARG, "ask: sampler is NULL");
    int hit = 0;
    mg_status st;
    int64_t t0 = mg_time_us();
    if (image && (st = mg_vl_add_image(vl, image, &hit)) != MG_OK) goto fail;
    double t_img = (double)(mg_time_us() - t0) / 1000.0;
    if ((st = mg_vl_add_text(vl, question ? question : "")) != MG_OK) goto fail;
    vl->keep_max = ask_keep(vl, gp);
    st = eval_prompt(vl, r);
    vl->keep_max = 0;
    if (st != MG_OK) goto fail;
    if (r) {
        r->image_cache_hit = image ? hit : 0;
        r->t_image_ms = image ? t_img : 0.0;
    }
    return mg_vl_generate(vl, smp, gp, r); /* rolls the turn back itself on failure */
fail:
    turn_rollback(vl);
    return st;
}
