/*
 * cmd_serve.c - `minigpt serve`: an OpenAI-compatible HTTP API (POST /v1/chat/completions with
 * images as data: URLs, streaming by server-sent events, GET /v1/models, GET /health) and the
 * grounded web demo (GET /, files of tools/web embedded at build time), over libmicrohttpd.
 *
 * Shape (as in ds4's server): libmicrohttpd runs one thread per connection; a connection reads
 * its body (bounded), parses and validates it (serve_req.c: JSON, images decoded there, in
 * parallel), then hands a job to a bounded FIFO queue and waits. ONE worker thread owns the model
 * session (mg_vl for MiniGPT models, a plain session + mg_chat for LLaMA text models) and serves
 * the jobs in arrival order. Requests are stateless, as in OpenAI's API: each one replays its
 * whole conversation, and the library keeps the KV-cache prefix and the image embeddings (hashed)
 * from the requests before, so a follow-up turn only evaluates what is new.
 *
 * A waiting connection polls its socket: when the client goes away, the job is cancelled (skipped
 * if still queued, stopped between two tokens if running). Queue full -> 503. Every error is
 * answered in OpenAI's shape. One log line per request on stderr.
 */
#include "cli.h"
#include "serve.h"

#include <jansson.h>
#include <microhttpd.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SERVE_WAIT_SLICE_MS 50     /* how often a waiting connection checks its client */
#define SERVE_CONN_LIMIT 256       /* simultaneous connections (threads) */
#define SERVE_CONN_TIMEOUT_S 120   /* idle connection timeout */

/* ==== Options and shared state ==== */

typedef struct {
    const char *model_path, *llm_path, *host, *api_key, *fake_answer;
    int port, queue_cap, max_tokens_cap, threads, n_ctx, fake_delay_ms, allow_remote;
    size_t max_body;
    uint64_t max_pixels;
} serve_opts;

enum { J_QUEUED, J_RUNNING, J_PROMPT_DONE, J_DONE };

typedef struct job {
    int refs;                /* queue/worker + connection + streaming response */
    serve_request req;
    int state, cancelled, stream;
    serve_error err;
    int failed;
    pthread_cond_t cv;
    struct job *next;
    char id[48];
    long long created;
    /* streaming: SSE bytes produced by the worker, consumed by the connection */
    char *sse;
    size_t sse_len, sse_cap, sse_sent;
    /* worker-side streaming state: the raw text so far and how much of it went out */
    char *acc;
    size_t acc_len, acc_cap, n_emitted;
    const char *const *stops;
    /* result */
    char *content;
    json_t *grounding;
    int n_prompt, n_prompt_eval, n_completion, n_images_cached;
    const char *finish;
    double t_image_ms, t_prompt_ms, t_gen_ms;
} job;

typedef struct {
    serve_opts o;
    const char *model_id;
    mg_model *m;
    int has_vision;
    mg_chat_template tmpl;
    /* the worker's: a MiniGPT conversation, or a text session with its prompt record */
    mg_vl *vl;
    mg_session *s;
    mg_chat *chat;
    int32_t *kv_ids;
    int n_kv, cap_kv;
    pthread_t worker;
    pthread_mutex_t mu;
    pthread_cond_t cv_work;
    job *head, *tail;
    int n_waiting, running, stopping;
    unsigned long long seq;
    /* counters for /health (under mu) */
    unsigned long long n_requests, n_completions, n_errors, n_busy, n_cancelled;
    unsigned long long n_images, n_images_encoded, n_prompt_tokens, n_completion_tokens;
    unsigned long long n_prompt_evaluated;
    serve_limits lim;
    struct MHD_Daemon *d;
} server;

/* Per-connection request context (con_cls). */
typedef struct {
    server *srv;
    struct timespec t0;
    char method[16], path[160];
    char *body;
    size_t len, cap;
    int too_large, status, n_prompt, n_completion, cancelled;
    job *job;
    struct MHD_Connection *conn;
} conn_ctx;

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) { g_stop = sig; }

static double ms_since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

/* ==== Jobs ==== */

static job *job_new(server *srv) {
    job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    pthread_cond_init(&j->cv, NULL);
    j->refs = 1;
    j->finish = "stop";
    j->created = (long long)time(NULL);
    return j;
}

/* Drops one reference; call with srv->mu held. */
static void job_unref(job *j) {
    if (!j || --j->refs > 0) return;
    serve_request_free(&j->req);
    pthread_cond_destroy(&j->cv);
    free(j->sse);
    free(j->acc);
    free(j->content);
    json_decref(j->grounding);
    free(j);
}

/* Appends n bytes to a growable buffer. */
static int buf_add(char **p, size_t *len, size_t *cap, const char *s, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n + 1) c *= 2;
        char *q = realloc(*p, c);
        if (!q) return -1;
        *p = q;
        *cap = c;
    }
    memcpy(*p + *len, s, n);
    *len += n;
    (*p)[*len] = 0;
    return 0;
}

/* Worker: appends one SSE event (data: JSON) to the job and wakes its connection. */
static void sse_push(server *srv, job *j, json_t *obj) {
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    pthread_mutex_lock(&srv->mu);
    if (s) {
        buf_add(&j->sse, &j->sse_len, &j->sse_cap, "data: ", 6);
        buf_add(&j->sse, &j->sse_len, &j->sse_cap, s, strlen(s));
        buf_add(&j->sse, &j->sse_len, &j->sse_cap, "\n\n", 2);
    }
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&srv->mu);
    free(s);
}

/* A JSON string of n bytes of model text: invalid UTF-8 (a random or confused model can emit
 * any bytes) becomes U+FFFD, as the grounding JSON does. */
static json_t *json_text(const char *s, size_t n) {
    char *o = malloc(n * 3 + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t L = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        int ok = L > 0 && i + L <= n && c != 0;
        for (size_t t = 1; ok && t < L; t++) ok = ((unsigned char)s[i + t] & 0xC0) == 0x80;
        if (ok && L == 2) ok = c >= 0xC2;
        if (ok && L == 3) {
            unsigned cp = (c & 0x0Fu) << 12 | ((unsigned char)s[i + 1] & 0x3Fu) << 6 | ((unsigned char)s[i + 2] & 0x3Fu);
            ok = cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF);
        }
        if (ok && L == 4) {
            unsigned cp = (c & 0x07u) << 18 | ((unsigned char)s[i + 1] & 0x3Fu) << 12;
            ok = cp >= 0x10000 && cp <= 0x10FFFF;
        }
        if (ok) {
            memcpy(o + k, s + i, L);
            k += L;
            i += L;
        } else {
            memcpy(o + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i++;
        }
    }
    json_t *j = json_stringn(o, k);
    free(o);
    return j;
}

/* A chat.completion.chunk with one choice: delta content (NULL: none) and a finish reason. */
static json_t *chunk_new(server *srv, job *j, const char *role, const char *content, size_t n,
                         const char *finish) {
    json_t *delta = json_object();
    if (role) json_object_set_new(delta, "role", json_string(role));
    if (content) json_object_set_new(delta, "content", json_text(content, n));
    json_t *choice = json_pack("{s:i, s:o, s:n}", "index", 0, "delta", delta, "logprobs");
    json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
    return json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", j->id, "object", "chat.completion.chunk",
                     "created", (json_int_t)j->created, "model", srv->model_id, "choices", choice);
}

/* Length of the longest suffix of s[0..n) that is a proper-or-full prefix of a stop string: that
 * much text is held back while streaming, since it may turn out to be a stop string. */
static size_t holdback(const char *s, size_t n, const char *const *stops) {
    size_t best = 0;
    for (int i = 0; stops && stops[i]; i++) {
        size_t L = strlen(stops[i]);
        for (size_t k = L < n ? L : n; k > best; k--)
            if (memcmp(s + n - k, stops[i], k) == 0) {
                best = k;
                break;
            }
    }
    return best;
}

static int is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

/* Worker: sends what of the accumulated text is safe to send (leading spaces dropped, as the
 * post-processing strips them). */
static void stream_emit(server *srv, job *j, size_t upto) {
    if (j->n_emitted == 0)
        while (j->n_emitted < upto && is_space(j->acc[j->n_emitted])) j->n_emitted++;
    if (upto <= j->n_emitted) return;
    sse_push(srv, j, chunk_new(srv, j, NULL, j->acc + j->n_emitted, upto - j->n_emitted, NULL));
    j->n_emitted = upto;
}

typedef struct {
    server *srv;
    job *j;
    int n;
} gen_ctx;

/* mg_token_cb of the worker: streams the piece, stops when the client has gone. */
static int on_token(void *user, int32_t id, const char *piece, const float *logits, int n_vocab) {
    gen_ctx *g = user;
    job *j = g->j;
    g->n++;
    pthread_mutex_lock(&g->srv->mu);
    int cancelled = j->cancelled;
    pthread_mutex_unlock(&g->srv->mu);
    if (cancelled) return 1;
    if (j->stream && piece && *piece) {
        buf_add(&j->acc, &j->acc_len, &j->acc_cap, piece, strlen(piece));
        stream_emit(g->srv, j, j->acc_len - holdback(j->acc, j->acc_len, j->stops));
    }
    return 0;
}

/* Worker: the final text of a streamed answer: sends the rest of raw (whose beginning was
 * streamed already), trailing spaces dropped. */
static void stream_finish_text(server *srv, job *j, const char *raw) {
    size_t n = strlen(raw);
    while (n && is_space(raw[n - 1])) n--;
    if (j->n_emitted > n || (j->n_emitted && memcmp(raw, j->acc, j->n_emitted) != 0)) return;
    j->acc_len = 0;
    buf_add(&j->acc, &j->acc_len, &j->acc_cap, raw, n);
    stream_emit(srv, j, n);
}

static int job_is_cancelled(server *srv, job *j) {
    pthread_mutex_lock(&srv->mu);
    int c = j->cancelled;
    pthread_mutex_unlock(&srv->mu);
    return c;
}

/* Marks the prompt as evaluated (streaming connections start their response now). */
static void job_set_state(server *srv, job *j, int state) {
    pthread_mutex_lock(&srv->mu);
    j->state = state;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&srv->mu);
}

/* Grounding JSON of an answer for the response (clean_text, image size, entities with boxes). */
static json_t *grounding_json(const mg_grounding *g) {
    char *s = NULL;
    if (!g || mg_grounding_to_json(g, &s) != MG_OK) return NULL;
    json_t *j = json_loads(s, 0, NULL);
    free(s);
    if (j) json_object_del(j, "text");
    return j;
}

/* Text models: renders the chat, evaluates what the KV cache does not hold. */
static int text_prompt(server *srv, job *j) {
    serve_request *r = &j->req;
    mg_chat_reset(srv->chat);
    char err[256];
    mg_prompt pr;
    for (int i = 0; i < r->n_msgs; i++) {
        const serve_msg *m = &r->msgs[i];
        mg_status st = MG_OK;
        if (m->role == SERVE_USER) st = mg_chat_ask(srv->chat, m->text);
        else if (m->role == SERVE_ASSISTANT) {
            st = mg_chat_prompt(srv->chat, &pr, err, sizeof err);
            if (st == MG_OK) st = mg_chat_answer(srv->chat, m->text, strlen(m->text));
        }
        if (st != MG_OK) return serve_fail(&j->err, 400, "invalid_request", "messages[%d] cannot be added to the conversation", i);
    }
    if (mg_chat_prompt(srv->chat, &pr, err, sizeof err) != MG_OK)
        return serve_fail(&j->err, 400, "invalid_request", "%s", err);
    const mg_tokenizer *tok = mg_model_tokenizer(srv->m);
    int n = 0, n_ctx = mg_session_n_ctx(srv->s);
    const mg_prompt_segment *seg = &pr.segments[0]; /* text only: one segment */
    if (mg_tokenize(tok, seg->text, seg->len, seg->add_bos, 1, NULL, 0, &n) != MG_OK && n <= 0)
        return serve_fail(&j->err, 500, "tokenize_failed", "cannot tokenize the prompt");
    if (n >= n_ctx)
        return serve_fail(&j->err, 400, "context_length_exceeded",
                          "the prompt is %d tokens; the context holds %d (room for at least one answer token is needed)", n, n_ctx);
    if (n > srv->cap_kv) {
        int32_t *p = realloc(srv->kv_ids, (size_t)n * sizeof *p);
        if (!p) return serve_fail(&j->err, 500, "oom", "out of memory");
        srv->kv_ids = p;
        srv->cap_kv = n;
    }
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    if (!ids) return serve_fail(&j->err, 500, "oom", "out of memory");
    int n2 = 0;
    mg_tokenize(tok, seg->text, seg->len, seg->add_bos, 1, ids, n, &n2);
    int held = srv->n_kv < mg_session_n_past(srv->s) ? srv->n_kv : mg_session_n_past(srv->s);
    int k = 0;
    while (k < held && k < n && srv->kv_ids[k] == ids[k]) k++;
    if (k == n) k--; /* re-run the last position for its logits */
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    mg_status st = mg_session_rewind(srv->s, k);
    srv->n_kv = k;
    if (st == MG_OK) st = mg_session_eval_tokens(srv->s, ids + k, n - k);
    if (st == MG_OK) {
        memcpy(srv->kv_ids, ids, (size_t)n * sizeof *ids);
        srv->n_kv = n;
    } else {
        srv->n_kv = 0;
    }
    free(ids);
    j->t_prompt_ms = ms_since(&t0);
    j->n_prompt = n;
    j->n_prompt_eval = n - k;
    if (st == MG_ERR_CTX_FULL) return serve_fail(&j->err, 400, "context_length_exceeded", "the prompt does not fit the context (%d)", n_ctx);
    if (st != MG_OK) return serve_fail(&j->err, 500, "eval_failed", "%s", mg_session_errmsg(srv->s));
    return 0;
}

/* MiniGPT models: replays the conversation into mg_vl (images from the embedding cache when
 * seen before) and evaluates the prompt. */
static int vl_prompt(server *srv, job *j) {
    serve_request *r = &j->req;
    mg_vl_reset(srv->vl);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int n_imgs = 0, n_hits = 0;
    for (int i = 0; i < r->n_msgs; i++) {
        const serve_msg *m = &r->msgs[i];
        mg_status st = MG_OK;
        if (m->role == SERVE_USER) {
            for (int k = 0; k < m->n_images && st == MG_OK; k++) {
                int hit = 0;
                st = mg_vl_add_image(srv->vl, &m->images[k], &hit);
                n_imgs++;
                n_hits += hit;
            }
            if (st == MG_OK && (m->text[0] || m->n_images == 0)) st = mg_vl_add_text(srv->vl, m->text);
        } else if (m->role == SERVE_ASSISTANT) {
            st = mg_vl_force_answer(srv->vl, m->text, NULL);
        }
        if (st != MG_OK)
            return serve_fail(&j->err, st == MG_ERR_NOMEM || st == MG_ERR_INTERNAL ? 500 : 400, "invalid_request",
                              "messages[%d]: %s", i, mg_vl_errmsg(srv->vl));
    }
    j->t_image_ms = ms_since(&t0);
    j->n_images_cached = n_hits;
    pthread_mutex_lock(&srv->mu);
    srv->n_images += (unsigned long long)n_imgs;
    srv->n_images_encoded += (unsigned long long)(n_imgs - n_hits);
    pthread_mutex_unlock(&srv->mu);
    mg_vl_result res;
    memset(&res, 0, sizeof res);
    mg_status st = mg_vl_eval_prompt(srv->vl, &res);
    j->n_prompt = res.n_prompt;
    j->n_prompt_eval = res.n_prompt_eval;
    j->t_prompt_ms = res.t_prompt_ms;
    mg_vl_result_free(&res);
    if (st == MG_ERR_CTX_FULL)
        return serve_fail(&j->err, 400, "context_length_exceeded", "the prompt does not fit the context of %d positions: %s",
                          mg_session_n_ctx(mg_vl_session(srv->vl)), mg_vl_errmsg(srv->vl));
    if (st != MG_OK) return serve_fail(&j->err, 500, "eval_failed", "%s", mg_vl_errmsg(srv->vl));
    return 0;
}

/* Sleeps ms milliseconds in slices, returning early when the job is cancelled (test hook). */
static void fake_delay(server *srv, job *j) {
    for (int t = 0; t < srv->o.fake_delay_ms && !job_is_cancelled(srv, j); t += 10) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* Worker: runs one job from prompt to answer. */
static void run_job(server *srv, job *j) {
    serve_request *r = &j->req;
    int rc = srv->has_vision ? vl_prompt(srv, j) : text_prompt(srv, j);
    if (rc) {
        j->failed = 1;
        return;
    }
    /* sampling: the variant's defaults, then the request's values */
    mg_sampler_params sp = mg_sampler_default_params();
    mg_generate_params gp = mg_generate_default_params();
    mg_model_generation_defaults(srv->m, &sp, &gp);
    if (r->has_temperature) sp.temperature = (float)r->temperature;
    if (r->has_top_p) sp.top_p = (float)r->top_p;
    sp.seed = r->has_seed ? r->seed : (uint64_t)time(NULL) ^ ((uint64_t)srv->seq << 32);
    int n_predict = r->max_tokens ? r->max_tokens : gp.n_predict;
    if (n_predict <= 0 || n_predict > srv->o.max_tokens_cap) n_predict = srv->o.max_tokens_cap;
    gp.n_predict = n_predict;
    /* stop strings: the request's, and "###" for the MiniGPT-4 templates (as minigpt chat) */
    const char *stops[8];
    int ns = 0;
    for (int i = 0; r->stop && r->stop[i] && ns < 5; i++) stops[ns++] = r->stop[i];
    if (srv->tmpl != MG_CHAT_MINIGPT_V2) stops[ns++] = "###";
    stops[ns] = NULL;
    gp.stop_strings = ns ? stops : NULL;
    j->stops = gp.stop_strings;
    gen_ctx g = {srv, j, 0};
    gp.on_token = on_token;
    gp.user = &g;
    if (j->stream) sse_push(srv, j, chunk_new(srv, j, "assistant", "", 0, NULL));
    job_set_state(srv, j, J_PROMPT_DONE);

    char *raw = NULL, *text = NULL;
    mg_grounding *gr = NULL;
    int n_gen = 0;
    mg_status st = MG_OK;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (srv->o.fake_answer) { /* test hook: a fixed answer instead of generation */
        fake_delay(srv, j);
        int n = 0;
        const char *fa = srv->o.fake_answer;
        mg_tokenize(mg_model_tokenizer(srv->m), fa, strlen(fa), 0, 0, NULL, 0, &n);
        n_gen = n;
        if (j->stream) /* streamed word by word */
            for (const char *p = fa; *p && !job_is_cancelled(srv, j);) {
                const char *q = p;
                while (*q == ' ') q++;
                while (*q && *q != ' ') q++;
                on_token(&g, 0, "", NULL, 0);
                buf_add(&j->acc, &j->acc_len, &j->acc_cap, p, (size_t)(q - p));
                stream_emit(srv, j, j->acc_len);
                p = q;
            }
        if (srv->has_vision) {
            mg_vl_result res;
            memset(&res, 0, sizeof res);
            st = mg_vl_force_answer(srv->vl, fa, &res);
            raw = res.raw, text = res.text, gr = res.grounding;
        } else {
            raw = strdup(fa);
            text = strdup(fa);
        }
    } else if (srv->has_vision) {
        mg_vl_result res;
        memset(&res, 0, sizeof res);
        mg_sampler *smp = NULL;
        st = mg_sampler_create(&smp, &sp, mg_model_n_vocab(srv->m));
        if (st == MG_OK) st = mg_vl_generate(srv->vl, smp, &gp, &res);
        mg_sampler_free(smp);
        raw = res.raw, text = res.text, gr = res.grounding;
        n_gen = res.n_generated;
        if (st == MG_ERR_CTX_FULL) st = MG_OK; /* the answer filled the context: finish_reason "length" */
    } else {
        size_t cap = (size_t)n_predict * 64 + 4096;
        raw = malloc(cap);
        mg_sampler *smp = NULL;
        st = raw ? mg_sampler_create(&smp, &sp, mg_model_n_vocab(srv->m)) : MG_ERR_NOMEM;
        if (st == MG_OK) st = mg_generate(srv->s, smp, &gp, raw, cap, &n_gen);
        mg_sampler_free(smp);
        if (st == MG_ERR_CTX_FULL) st = MG_OK;
        if (raw && (st == MG_OK || st == MG_ERR_CANCELLED)) {
            size_t n = strlen(raw);
            text = malloc(n + 1);
            if (text) mg_chat_postprocess(srv->tmpl, raw, n, text, n + 1);
            mg_chat_answer(srv->chat, raw, n);
        }
    }
    j->t_gen_ms = ms_since(&t0);
    if (n_gen == 0 && !srv->o.fake_answer) n_gen = g.n;
    j->n_completion = n_gen;
    if (n_gen >= n_predict && !srv->o.fake_answer) j->finish = "length";
    if (st == MG_ERR_CANCELLED || job_is_cancelled(srv, j)) {
        j->failed = 1;
        j->cancelled = 1;
        serve_fail(&j->err, 499, "cancelled", "the client went away");
    } else if (st != MG_OK || !text || !raw) {
        j->failed = 1;
        serve_fail(&j->err, 500, "generation_failed", "generation failed: %s",
                   srv->has_vision ? mg_vl_errmsg(srv->vl) : mg_session_errmsg(srv->s));
        if (j->stream) { /* the status line went out already: the error is the last event */
            char *e = serve_error_json(&j->err);
            sse_push(srv, j, e ? json_loads(e, 0, NULL) : NULL);
            free(e);
        }
    } else {
        j->content = text;
        text = NULL;
        j->grounding = grounding_json(gr);
        if (j->stream) {
            stream_finish_text(srv, j, raw);
            json_t *last = chunk_new(srv, j, NULL, NULL, 0, j->finish);
            if (j->grounding) json_object_set(json_array_get(json_object_get(last, "choices"), 0), "grounding", j->grounding);
            sse_push(srv, j, last);
            if (r->include_usage) {
                json_t *u = json_pack("{s:s, s:s, s:I, s:s, s:[], s:{s:i, s:i, s:i}}", "id", j->id, "object",
                                      "chat.completion.chunk", "created", (json_int_t)j->created, "model",
                                      srv->model_id, "choices", "usage", "prompt_tokens", j->n_prompt,
                                      "completion_tokens", j->n_completion, "total_tokens", j->n_prompt + j->n_completion);
                sse_push(srv, j, u);
            }
            pthread_mutex_lock(&srv->mu);
            buf_add(&j->sse, &j->sse_len, &j->sse_cap, "data: [DONE]\n\n", 14);
            pthread_mutex_unlock(&srv->mu);
        }
    }
    free(raw);
    free(text);
    mg_grounding_free(gr);
}

/* The inference thread: pops jobs in FIFO order and runs them on the one session. */
static void *worker_main(void *arg) {
    server *srv = arg;
    pthread_mutex_lock(&srv->mu);
    for (;;) {
        while (!srv->head && !srv->stopping) pthread_cond_wait(&srv->cv_work, &srv->mu);
        if (!srv->head) break;
        job *j = srv->head;
        srv->head = j->next;
        if (!srv->head) srv->tail = NULL;
        srv->n_waiting--;
        if (j->cancelled) { /* its client left while it waited */
            srv->n_cancelled++;
            j->state = J_DONE;
            pthread_cond_broadcast(&j->cv);
            job_unref(j);
            continue;
        }
        j->state = J_RUNNING;
        srv->running = 1;
        pthread_mutex_unlock(&srv->mu);
        run_job(srv, j);
        pthread_mutex_lock(&srv->mu);
        srv->running = 0;
        if (j->cancelled) srv->n_cancelled++;
        else if (!j->failed) {
            srv->n_completions++;
            srv->n_prompt_tokens += (unsigned long long)j->n_prompt;
            srv->n_prompt_evaluated += (unsigned long long)j->n_prompt_eval;
            srv->n_completion_tokens += (unsigned long long)j->n_completion;
        }
        j->state = J_DONE;
        pthread_cond_broadcast(&j->cv);
        job_unref(j);
    }
    pthread_mutex_unlock(&srv->mu);
    return NULL;
}

/* ==== HTTP ==== */

/* True when the peer of fd has closed or reset the connection. */
static int client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    struct pollfd p = {ci->connect_fd, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, 0) <= 0) return 0;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return 1;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static enum MHD_Result send_buf(struct MHD_Connection *c, conn_ctx *cx, int status, const char *ctype,
                                void *data, size_t n, enum MHD_ResponseMemoryMode mode) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, data, mode);
    if (!resp) {
        if (mode == MHD_RESPMEM_MUST_FREE) free(data);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", ctype);
    if (status == 503) MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    cx->status = status;
    enum MHD_Result r = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result send_errorf(struct MHD_Connection *c, conn_ctx *cx, int status, const char *code,
                                   const char *msg);

/* Sends j (reference stolen) as application/json. */
static enum MHD_Result send_json(struct MHD_Connection *c, conn_ctx *cx, int status, json_t *j) {
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s) return send_errorf(c, cx, 500, "internal", "cannot build the JSON response");
    return send_buf(c, cx, status, "application/json", s, strlen(s), MHD_RESPMEM_MUST_FREE);
}

static enum MHD_Result send_error(struct MHD_Connection *c, conn_ctx *cx, const serve_error *e) {
    char *s = serve_error_json(e);
    if (!s) return MHD_NO;
    if (e->status >= 400) {
        pthread_mutex_lock(&cx->srv->mu);
        if (e->status == 503) cx->srv->n_busy++;
        else cx->srv->n_errors++;
        pthread_mutex_unlock(&cx->srv->mu);
    }
    return send_buf(c, cx, e->status, "application/json", s, strlen(s), MHD_RESPMEM_MUST_FREE);
}

static enum MHD_Result send_errorf(struct MHD_Connection *c, conn_ctx *cx, int status, const char *code,
                                   const char *msg) {
    serve_error e;
    serve_fail(&e, status, code, "%s", msg);
    return send_error(c, cx, &e);
}

static const char *mime_of(const char *name) {
    const char *dot = strrchr(name, '.');
    if (dot && strcmp(dot, ".html") == 0) return "text/html; charset=utf-8";
    if (dot && strcmp(dot, ".js") == 0) return "text/javascript; charset=utf-8";
    if (dot && strcmp(dot, ".css") == 0) return "text/css; charset=utf-8";
    if (dot && strcmp(dot, ".svg") == 0) return "image/svg+xml";
    if (dot && strcmp(dot, ".png") == 0) return "image/png";
    return "application/octet-stream";
}

static json_t *health_json(server *srv) {
    pthread_mutex_lock(&srv->mu);
    json_t *j = json_pack(
        "{s:s, s:s, s:s, s:b, s:{s:i, s:i, s:b}, s:{s:I, s:I, s:I, s:I, s:I}, s:{s:I, s:I, s:I}, s:{s:I, s:I, s:I}}",
        "status", "ok", "model", srv->model_id, "variant", mg_model_variant(srv->m), "vision", srv->has_vision,
        "queue", "waiting", srv->n_waiting, "capacity", srv->o.queue_cap, "running", srv->running,
        "requests", "total", (json_int_t)srv->n_requests, "completed", (json_int_t)srv->n_completions,
        "errors", (json_int_t)srv->n_errors, "busy", (json_int_t)srv->n_busy, "cancelled", (json_int_t)srv->n_cancelled,
        "images", "received", (json_int_t)srv->n_images, "encoded", (json_int_t)srv->n_images_encoded,
        "cache_hits", (json_int_t)(srv->n_images - srv->n_images_encoded),
        "tokens", "prompt", (json_int_t)srv->n_prompt_tokens, "prompt_evaluated", (json_int_t)srv->n_prompt_evaluated,
        "completion", (json_int_t)srv->n_completion_tokens);
    pthread_mutex_unlock(&srv->mu);
    return j;
}

/* Waits (mu held) on j until its state reaches want or the client goes away; returns 0 when
 * reached, -1 when the client left (the job is then marked cancelled). */
static int wait_job(server *srv, struct MHD_Connection *c, job *j, int want) {
    while (j->state < want) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += SERVE_WAIT_SLICE_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&j->cv, &srv->mu, &ts);
        if (j->state < want && client_gone(c)) {
            j->cancelled = 1;
            return -1;
        }
    }
    return 0;
}

/* Content reader of a streamed answer (the connection's thread): hands out the SSE bytes the
 * worker produced, blocking until there are some or the job is done. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    conn_ctx *cx = cls;
    server *srv = cx->srv;
    job *j = cx->job;
    pthread_mutex_lock(&srv->mu);
    for (;;) {
        if (j->sse_sent < j->sse_len) {
            size_t n = j->sse_len - j->sse_sent;
            if (n > max) n = max;
            memcpy(buf, j->sse + j->sse_sent, n);
            j->sse_sent += n;
            if (j->sse_sent == j->sse_len) j->sse_sent = j->sse_len = 0;
            pthread_mutex_unlock(&srv->mu);
            return (ssize_t)n;
        }
        if (j->state == J_DONE) {
            pthread_mutex_unlock(&srv->mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += SERVE_WAIT_SLICE_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&j->cv, &srv->mu, &ts);
        if (j->state != J_DONE && j->sse_sent == j->sse_len && (srv->stopping || client_gone(cx->conn))) {
            j->cancelled = 1;
            pthread_mutex_unlock(&srv->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

/* POST /v1/chat/completions once the body is in. */
static enum MHD_Result handle_chat(struct MHD_Connection *c, conn_ctx *cx) {
    server *srv = cx->srv;
    job *j = job_new(srv);
    if (!j) return send_errorf(c, cx, 500, "oom", "out of memory");
    serve_error e;
    if (serve_parse_request(cx->body ? cx->body : "", cx->len, &srv->lim, &j->req, &e)) {
        pthread_mutex_lock(&srv->mu);
        job_unref(j);
        pthread_mutex_unlock(&srv->mu);
        return send_error(c, cx, &e);
    }
    free(cx->body); /* the images are decoded: the body is no longer needed */
    cx->body = NULL;
    cx->len = cx->cap = 0;
    j->stream = j->req.stream;
    pthread_mutex_lock(&srv->mu);
    if (srv->n_waiting >= srv->o.queue_cap || srv->stopping) {
        job_unref(j);
        pthread_mutex_unlock(&srv->mu);
        char msg[160];
        snprintf(msg, sizeof msg, "the server is busy: %d requests are waiting (--queue %d); retry later",
                 srv->o.queue_cap, srv->o.queue_cap);
        return send_errorf(c, cx, 503, "queue_full", msg);
    }
    snprintf(j->id, sizeof j->id, "chatcmpl-%llx%llx", (unsigned long long)j->created, ++srv->seq);
    j->refs = 2; /* the queue's and this connection's */
    if (srv->tail) srv->tail->next = j;
    else srv->head = j;
    srv->tail = j;
    srv->n_waiting++;
    cx->job = j;
    pthread_cond_signal(&srv->cv_work);
    int gone = wait_job(srv, c, j, j->stream ? J_PROMPT_DONE : J_DONE);
    if (gone) {
        cx->cancelled = 1;
        pthread_mutex_unlock(&srv->mu);
        return MHD_NO; /* closes the connection */
    }
    if (j->state == J_DONE && j->failed) {
        serve_error err = j->err;
        pthread_mutex_unlock(&srv->mu);
        if (err.status == 499) return MHD_NO;
        return send_error(c, cx, &err);
    }
    cx->n_prompt = j->n_prompt;
    if (j->stream) {
        j->refs++; /* the response's */
        pthread_mutex_unlock(&srv->mu);
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, cx, NULL);
        if (!resp) return MHD_NO;
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        cx->status = 200;
        enum MHD_Result r = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        return r;
    }
    cx->n_completion = j->n_completion;
    const char *content = j->content ? j->content : "";
    json_t *msg = json_pack("{s:s, s:o}", "role", "assistant", "content", json_text(content, strlen(content)));
    if (j->grounding) json_object_set(msg, "grounding", j->grounding);
    json_t *resp = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:s, s:n}], s:{s:i, s:i, s:i}, s:{s:f, s:f, s:f, s:i, s:i}}",
                             "id", j->id, "object", "chat.completion", "created", (json_int_t)j->created,
                             "model", srv->model_id, "choices", "index", 0, "message", msg, "finish_reason",
                             j->finish, "logprobs", "usage", "prompt_tokens", j->n_prompt, "completion_tokens",
                             j->n_completion, "total_tokens", j->n_prompt + j->n_completion, "timings",
                             "image_ms", j->t_image_ms, "prompt_ms", j->t_prompt_ms, "generation_ms", j->t_gen_ms,
                             "prompt_evaluated", j->n_prompt_eval, "images_cached", j->n_images_cached);
    pthread_mutex_unlock(&srv->mu);
    return send_json(c, cx, 200, resp);
}

/* Constant-time comparison of the Authorization header with "Bearer KEY". */
static int auth_ok(struct MHD_Connection *c, const char *key) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    size_t a = strlen(h), b = strlen(key);
    unsigned char d = a != b;
    for (size_t i = 0; i < a; i++) d |= (unsigned char)(h[i] ^ key[i % (b ? b : 1)]);
    return d == 0;
}

/* Routes a request whose body has been read. */
static enum MHD_Result route(struct MHD_Connection *c, conn_ctx *cx) {
    server *srv = cx->srv;
    const char *p = cx->path, *m = cx->method;
    int get = strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0, post = strcmp(m, "POST") == 0;
    if (cx->too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "the request body exceeds %zu bytes (--max-body)", srv->o.max_body);
        return send_errorf(c, cx, 413, "request_too_large", msg);
    }
    if (strncmp(p, "/v1/", 4) == 0 && srv->o.api_key && !auth_ok(c, srv->o.api_key))
        return send_errorf(c, cx, 401, "invalid_api_key", "missing or incorrect API key (Authorization: Bearer KEY)");
    if (strcmp(p, "/v1/chat/completions") == 0) {
        if (!post) return send_errorf(c, cx, 405, "method_not_allowed", "use POST");
        return handle_chat(c, cx);
    }
    if (strcmp(p, "/health") == 0 || strcmp(p, "/v1/models") == 0 || strcmp(p, "/v1/models/") == 0) {
        if (!get) return send_errorf(c, cx, 405, "method_not_allowed", "use GET");
        if (p[1] == 'h') return send_json(c, cx, 200, health_json(srv));
        return send_json(c, cx, 200,
                         json_pack("{s:s, s:[{s:s, s:s, s:I, s:s, s:b, s:s}]}", "object", "list", "data", "id",
                                   srv->model_id, "object", "model", "created", (json_int_t)0, "owned_by", "minigpt",
                                   "vision", srv->has_vision, "variant", mg_model_variant(srv->m)));
    }
    if (strncmp(p, "/v1/models/", 11) == 0) {
        if (strcmp(p + 11, srv->model_id) != 0)
            return send_errorf(c, cx, 404, "model_not_found", "no such model");
        return send_json(c, cx, 200, json_pack("{s:s, s:s, s:I, s:s}", "id", srv->model_id, "object", "model",
                                               "created", (json_int_t)0, "owned_by", "minigpt"));
    }
    const char *name = strcmp(p, "/") == 0 ? "index.html" : p + 1;
    for (const serve_asset *a = serve_web_assets; a->name; a++)
        if (strcmp(a->name, name) == 0) {
            if (!get) return send_errorf(c, cx, 405, "method_not_allowed", "use GET");
            return send_buf(c, cx, 200, mime_of(a->name), (void *)a->data, a->size, MHD_RESPMEM_PERSISTENT);
        }
    return send_errorf(c, cx, 404, "not_found", "no such endpoint");
}

/* libmicrohttpd's access handler: called once with the headers, then with body pieces, then a
 * last time with none. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    server *srv = cls;
    conn_ctx *cx = *con_cls;
    if (!cx) {
        cx = calloc(1, sizeof *cx);
        if (!cx) return MHD_NO;
        cx->srv = srv;
        cx->conn = c;
        clock_gettime(CLOCK_MONOTONIC, &cx->t0);
        snprintf(cx->method, sizeof cx->method, "%s", method);
        snprintf(cx->path, sizeof cx->path, "%s", url);
        *con_cls = cx;
        pthread_mutex_lock(&srv->mu);
        srv->n_requests++;
        pthread_mutex_unlock(&srv->mu);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > srv->o.max_body) cx->too_large = 1;
        /* far too large: answer now, without reading the body (the connection is then closed) */
        if (cl && strtoull(cl, NULL, 10) / 64 > srv->o.max_body) return route(c, cx);
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!cx->too_large && cx->len + *upload_data_size > srv->o.max_body) {
            cx->too_large = 1;
            free(cx->body);
            cx->body = NULL;
            cx->len = cx->cap = 0;
        }
        if (!cx->too_large && buf_add(&cx->body, &cx->len, &cx->cap, upload_data, *upload_data_size)) return MHD_NO;
        *upload_data_size = 0; /* consumed (or dropped, past the limit) */
        return MHD_YES;
    }
    return route(c, cx);
}

/* Called when a request ends (answered, failed or aborted): the log line, then cleanup. */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    server *srv = cls;
    conn_ctx *cx = *con_cls;
    if (!cx) return;
    int n_prompt = cx->n_prompt, n_completion = cx->n_completion, cancelled = cx->cancelled;
    pthread_mutex_lock(&srv->mu);
    if (cx->job) {
        n_prompt = cx->job->n_prompt;
        n_completion = cx->job->n_completion;
        if (cx->job->state != J_DONE || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
            if (cx->job->state != J_DONE) cancelled = 1;
            cx->job->cancelled = cx->job->cancelled || cx->job->state != J_DONE;
        }
        if (cx->job->stream && cx->status == 200) job_unref(cx->job); /* the response's reference */
        job_unref(cx->job);
    }
    pthread_mutex_unlock(&srv->mu);
    fprintf(stderr, "minigpt serve: %s %s %d %.1f ms tokens %d+%d%s\n", cx->method, cx->path,
            cancelled ? 499 : cx->status, ms_since(&cx->t0), n_prompt, n_completion,
            cancelled ? " (client gone: cancelled)" : toe != MHD_REQUEST_TERMINATED_COMPLETED_OK ? " (aborted)" : "");
    free(cx->body);
    free(cx);
    *con_cls = NULL;
}

/* libmicrohttpd's error log, on stderr with our prefix; the note it writes when a handler closes
 * a connection on purpose (client gone) is dropped. */
static void mhd_log(void *cls, const char *fmt, va_list ap) {
    if (strncmp(fmt, "Application reported internal error", 35) == 0) return;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n') msg[--n] = 0;
    fprintf(stderr, "minigpt serve: http: %s\n", msg);
}

/* ==== Command ==== */

static void usage(FILE *f) {
    fprintf(f,
            "usage: minigpt serve -m FILE [options]\n\n"
            "OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models, GET /health) and the\n"
            "grounded web demo at http://HOST:PORT/. See docs/SERVER.md.\n\n"
            "  -m, --model FILE       MiniGPT GGUF (images + grounding) or a LLaMA GGUF (text only)\n"
            "      --llm FILE         the language model as a llama.cpp GGUF (MiniGPT models)\n"
            "      --host ADDR        address to bind (default 127.0.0.1; 0.0.0.0 exposes the server)\n"
            "      --port N           TCP port (default 8080; 0 picks a free one, printed at start)\n"
            "      --api-key KEY      require \"Authorization: Bearer KEY\" on /v1/*\n"
            "      --queue N          requests allowed to wait for the model (default 16); more -> 503\n"
            "      --max-body BYTES   request body limit (default 16777216) -> 413\n"
            "      --max-pixels N     per-image limit on width x height (default 16777216)\n"
            "      --max-tokens N     largest max_tokens a request may ask for (default 1024)\n"
            "      --allow-remote-images  accept http(s) image URLs in principle (this build still\n"
            "                         refuses them with a clear message: it makes no network requests)\n"
            "  -t, --threads N        compute threads\n"
            "  -c, --ctx N            context size in positions (default: the model's)\n");
}

/* Entry point of `minigpt serve`. */
int cmd_serve(int argc, char **argv) {
    server srv;
    memset(&srv, 0, sizeof srv);
    serve_opts *o = &srv.o;
    o->host = "127.0.0.1";
    o->port = 8080;
    o->queue_cap = 16;
    o->max_body = 16u << 20;
    o->max_pixels = 16u << 20;
    o->max_tokens_cap = 1024;
    o->threads = cli_default_threads();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--allow-remote-images") == 0) {
            o->allow_remote = 1;
            continue;
        }
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return cli_error("serve", "unknown option '%s' or missing value (see minigpt serve --help)", a);
        long long x = 0;
        i++;
        if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) o->model_path = v;
        else if (strcmp(a, "--llm") == 0) o->llm_path = v;
        else if (strcmp(a, "--host") == 0) o->host = v;
        else if (strcmp(a, "--api-key") == 0) o->api_key = v;
        else if (strcmp(a, "--fake-answer") == 0) o->fake_answer = v; /* test hook (docs/SERVER.md) */
        else if (strcmp(a, "--fake-delay-ms") == 0 && cli_parse_int(v, 0, 600000, &x)) o->fake_delay_ms = (int)x;
        else if (strcmp(a, "--port") == 0 && cli_parse_int(v, 0, 65535, &x)) o->port = (int)x;
        else if (strcmp(a, "--queue") == 0 && cli_parse_int(v, 1, 100000, &x)) o->queue_cap = (int)x;
        else if (strcmp(a, "--max-body") == 0 && cli_parse_int(v, 1024, 1ll << 32, &x)) o->max_body = (size_t)x;
        else if (strcmp(a, "--max-pixels") == 0 && cli_parse_int(v, 1, 1ll << 32, &x)) o->max_pixels = (uint64_t)x;
        else if (strcmp(a, "--max-tokens") == 0 && cli_parse_int(v, 1, 1 << 20, &x)) o->max_tokens_cap = (int)x;
        else if ((strcmp(a, "-t") == 0 || strcmp(a, "--threads") == 0) && cli_parse_int(v, 1, 256, &x)) o->threads = (int)x;
        else if ((strcmp(a, "-c") == 0 || strcmp(a, "--ctx") == 0) && cli_parse_int(v, 0, 1 << 24, &x)) o->n_ctx = (int)x;
        else return cli_error("serve", "bad option or value '%s %s' (see minigpt serve --help)", a, v);
    }
    if (!o->model_path) return cli_error("serve", "missing -m FILE (see minigpt serve --help)");
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    const char *host = strcmp(o->host, "localhost") == 0 ? "127.0.0.1" : o->host;
    int v6 = 0;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)o->port);
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)o->port);
        v6 = 1;
    } else {
        return cli_error("serve", "--host '%s' is not a numeric IPv4/IPv6 address", o->host);
    }

    char err[512];
    mg_model_params mp = mg_model_default_params();
    mp.n_threads = o->threads;
    if (mg_model_open_llm(&srv.m, o->model_path, o->llm_path, &mp, err, sizeof err) != MG_OK)
        return cli_error("serve", "%s", err);
    srv.has_vision = mg_model_has_vision(srv.m);
    srv.tmpl = mg_model_chat_template(srv.m);
    const char *base = strrchr(o->model_path, '/');
    srv.model_id = base ? base + 1 : o->model_path;
    mg_session_params ssp = mg_session_default_params();
    ssp.n_ctx = o->n_ctx;
    int rc = 1;
    mg_status st = srv.has_vision ? mg_vl_create(&srv.vl, srv.m, &ssp, err, sizeof err)
                                  : mg_session_create(&srv.s, srv.m, &ssp, err, sizeof err);
    if (st == MG_OK && !srv.has_vision && mg_chat_create(&srv.chat, srv.tmpl) != MG_OK) {
        snprintf(err, sizeof err, "out of memory");
        st = MG_ERR_NOMEM;
    }
    if (st != MG_OK) {
        cli_error("serve", "%s", err);
        goto done;
    }
    srv.lim = (serve_limits){srv.model_id, srv.has_vision, o->max_tokens_cap, o->max_pixels, o->allow_remote};
    pthread_mutex_init(&srv.mu, NULL);
    pthread_cond_init(&srv.cv_work, NULL);
    if (pthread_create(&srv.worker, NULL, worker_main, &srv) != 0) {
        cli_error("serve", "cannot start the worker thread");
        goto done;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
                     MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
    srv.d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_request, &srv, MHD_OPTION_SOCK_ADDR,
                             (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT, (unsigned)SERVE_CONN_LIMIT,
                             MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)SERVE_CONN_TIMEOUT_S,
                             MHD_OPTION_NOTIFY_COMPLETED, on_completed, &srv, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
                             NULL, MHD_OPTION_END);
    if (!srv.d) {
        cli_error("serve", "cannot listen on %s port %d: %s", o->host, o->port, strerror(errno));
    } else {
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv.d, MHD_DAEMON_INFO_BIND_PORT);
        int port = di ? di->port : o->port;
        fprintf(stderr, "minigpt serve: %s (%s%s), queue %d, listening on http://%s%s%s:%d/\n", mg_model_desc(srv.m),
                mg_model_variant(srv.m), srv.has_vision ? ", images" : ", text only", o->queue_cap, v6 ? "[" : "",
                o->host, v6 ? "]" : "", port);
        if (strcmp(host, "127.0.0.1") != 0 && strcmp(host, "::1") != 0)
            fprintf(stderr, "minigpt serve: warning: bound to %s, not loopback%s\n", o->host,
                    o->api_key ? "" : ", and without --api-key");
        while (!g_stop) {
            struct timespec ts = {0, 100 * 1000000L};
            nanosleep(&ts, NULL);
        }
        fprintf(stderr, "minigpt serve: stopping (signal %d)\n", (int)g_stop);
        rc = 0;
    }
    pthread_mutex_lock(&srv.mu);
    srv.stopping = 1;
    for (job *j = srv.head; j; j = j->next) j->cancelled = 1;
    pthread_cond_broadcast(&srv.cv_work);
    pthread_mutex_unlock(&srv.mu);
    if (srv.d) MHD_stop_daemon(srv.d);
    pthread_join(srv.worker, NULL);
    pthread_mutex_destroy(&srv.mu);
    pthread_cond_destroy(&srv.cv_work);
done:
    mg_vl_free(srv.vl);
    mg_session_free(srv.s);
    mg_chat_free(srv.chat);
    free(srv.kv_ids);
    mg_model_close(srv.m);
    return rc;
}
