/*
 * serve_req.c - `minigpt serve`: reading an OpenAI chat-completion request (JSON via jansson) into
 * a serve_request, with every check that needs no model: types, roles, sampling ranges, the
 * max_tokens cap, the model name, image parts (data: URLs only, base64, decoded with the pixel
 * cap in the connection's thread), and the OpenAI error shape. Runs in the HTTP threads.
 */
#include "serve.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Fills e; returns -1. */
int serve_fail(serve_error *e, int status, const char *code, const char *fmt, ...) {
    e->status = status;
    e->code = code;
    e->type = status == 401 ? "authentication_error" : status >= 500 ? "server_error" : "invalid_request_error";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* {"error":{"message","type","code","param":null}} as a malloc'd string. */
char *serve_error_json(const serve_error *e) {
    json_t *j = json_pack("{s:{s:s, s:s, s:s, s:n}}", "error", "message", e->message, "type",
                          e->type ? e->type : "invalid_request_error", "code", e->code ? e->code : "error",
                          "param");
    if (!j) /* the message was cut inside a UTF-8 sequence (or holds invalid bytes) */
        j = json_pack("{s:{s:s, s:s, s:s, s:n}}", "error", "message", "invalid request (message not printable)",
                      "type", e->type ? e->type : "invalid_request_error", "code", e->code ? e->code : "error", "param");
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

static int b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Strict base64 decoder; see serve.h. */
int serve_base64_decode(const char *s, size_t n, unsigned char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    unsigned char *buf = malloc(n / 4 * 3 + 3);
    if (!buf) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int k = 0, pad = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int v = b64_value(c);
        if (v < 0 || pad) { /* bad character, or data after padding */
            free(buf);
            return -1;
        }
        acc = acc << 6 | (uint32_t)v;
        if (++k == 4) {
            buf[o++] = (unsigned char)(acc >> 16);
            buf[o++] = (unsigned char)(acc >> 8);
            buf[o++] = (unsigned char)acc;
            acc = 0;
            k = 0;
        }
    }
    /* leftover: 2 chars -> 1 byte, 3 -> 2; 1 is impossible; padding must complete the quantum */
    if (k == 1 || pad > 2 || (pad && (k + pad) != 4)) {
        free(buf);
        return -1;
    }
    if (k == 2) buf[o++] = (unsigned char)(acc >> 4);
    if (k == 3) {
        buf[o++] = (unsigned char)(acc >> 10);
        buf[o++] = (unsigned char)(acc >> 2);
    }
    *out = buf;
    *out_len = o;
    return 0;
}

/* Decodes an image_url (data:image/...;base64,...) into img. */
static int decode_image_url(const char *url, const serve_limits *lim, mg_image *img, serve_error *e) {
    if (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0) {
        if (!lim->allow_remote_images)
            return serve_fail(e, 400, "remote_images_disabled",
                              "remote image URLs are refused (the server was not started with "
                              "--allow-remote-images); send the image as a data: URL");
        return serve_fail(e, 400, "remote_images_unsupported",
                          "remote image URLs are not supported by this build (it makes no network "
                          "requests); send the image as a data:image/...;base64 URL");
    }
    if (strncasecmp(url, "data:", 5) != 0)
        return serve_fail(e, 400, "invalid_image_url", "image_url must be a data:image/...;base64,... URL");
    const char *comma = strchr(url, ',');
    if (!comma) return serve_fail(e, 400, "invalid_image_url", "data: URL without a comma");
    size_t hl = (size_t)(comma - url);
    if (hl < 7 || strncasecmp(comma - 7, ";base64", 7) != 0)
        return serve_fail(e, 400, "invalid_image_url", "only base64 data: URLs are accepted");
    if (strncasecmp(url + 5, "image/", 6) != 0 && comma - 7 != url + 5)
        return serve_fail(e, 400, "invalid_image_url", "data: URL of a non-image media type");
    unsigned char *bytes;
    size_t n;
    if (serve_base64_decode(comma + 1, strlen(comma + 1), &bytes, &n) != 0)
        return serve_fail(e, 400, "invalid_base64", "the image's base64 data is malformed");
    char err[256];
    mg_status st = mg_image_load_mem(img, bytes, n, lim->max_pixels, err, sizeof err);
    free(bytes);
    if (st == MG_ERR_UNSUPPORTED && strstr(err, "pixel"))
        return serve_fail(e, 400, "image_too_large", "image too large: %s (limit %llu pixels)", err,
                          (unsigned long long)lim->max_pixels);
    if (st != MG_OK) return serve_fail(e, 400, "invalid_image", "cannot decode the image: %s", err);
    return 0;
}

/* Appends s to the malloc'd *text, separated by "\n". */
static int append_text(char **text, const char *s) {
    size_t a = strlen(*text), b = strlen(s);
    char *t = realloc(*text, a + b + 2);
    if (!t) return -1;
    if (a) t[a++] = '\n';
    memcpy(t + a, s, b + 1);
    *text = t;
    return 0;
}

/* Reads one message's content: a string, null, or an array of text / image_url parts. */
static int parse_content(json_t *content, serve_msg *m, int idx, const serve_limits *lim, serve_error *e) {
    if (!content || json_is_null(content)) return 0;
    if (json_is_string(content)) return append_text(&m->text, json_string_value(content)) ? serve_fail(e, 500, "oom", "out of memory") : 0;
    if (!json_is_array(content))
        return serve_fail(e, 400, "invalid_type", "messages[%d].content must be a string or an array of parts", idx);
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part) {
        const char *type = json_string_value(json_object_get(part, "type"));
        if (!json_is_object(part) || !type)
            return serve_fail(e, 400, "invalid_type", "messages[%d].content[%zu] must be an object with a \"type\"", idx, i);
        if (strcmp(type, "text") == 0) {
            const char *t = json_string_value(json_object_get(part, "text"));
            if (!t) return serve_fail(e, 400, "invalid_type", "messages[%d].content[%zu].text must be a string", idx, i);
            if (append_text(&m->text, t)) return serve_fail(e, 500, "oom", "out of memory");
        } else if (strcmp(type, "image_url") == 0) {
            if (!lim->has_vision)
                return serve_fail(e, 400, "images_unsupported", "model '%s' has no vision tower: image parts are not accepted", lim->model_id);
            if (m->role != SERVE_USER)
                return serve_fail(e, 400, "invalid_request", "messages[%d]: only user messages may hold images", idx);
            json_t *iu = json_object_get(part, "image_url");
            const char *url = json_is_string(iu) ? json_string_value(iu) : json_string_value(json_object_get(iu, "url"));
            if (!url) return serve_fail(e, 400, "invalid_type", "messages[%d].content[%zu].image_url.url must be a string", idx, i);
            mg_image *imgs = realloc(m->images, (size_t)(m->n_images + 1) * sizeof *imgs);
            if (!imgs) return serve_fail(e, 500, "oom", "out of memory");
            m->images = imgs;
            memset(&imgs[m->n_images], 0, sizeof imgs[0]);
            if (decode_image_url(url, lim, &imgs[m->n_images], e)) return -1;
            m->n_images++;
        } else {
            return serve_fail(e, 400, "invalid_type", "messages[%d].content[%zu]: unsupported part type '%s'", idx, i, type);
        }
    }
    return 0;
}

static int get_number(json_t *root, const char *key, double lo, double hi, int *has, double *out, serve_error *e) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return serve_fail(e, 400, "invalid_type", "'%s' must be a number", key);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) return serve_fail(e, 400, "invalid_value", "'%s' must be in [%g, %g]", key, lo, hi);
    *has = 1;
    *out = x;
    return 0;
}

/* Reads "stop": a string or an array of up to 4 non-empty strings. */
static int parse_stop(json_t *v, serve_request *req, serve_error *e) {
    if (!v || json_is_null(v)) return 0;
    json_t *arr = v;
    json_t *tmp = NULL;
    if (json_is_string(v)) arr = tmp = json_pack("[O]", v);
    if (!json_is_array(arr)) return serve_fail(e, 400, "invalid_type", "'stop' must be a string or an array of strings");
    size_t n = json_array_size(arr);
    if (n > 4) {
        json_decref(tmp);
        return serve_fail(e, 400, "invalid_value", "'stop' holds at most 4 strings");
    }
    req->stop = calloc(n + 1, sizeof *req->stop);
    int rc = req->stop ? 0 : serve_fail(e, 500, "oom", "out of memory");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const char *s = json_string_value(json_array_get(arr, i));
        if (!s || !*s) rc = serve_fail(e, 400, "invalid_type", "'stop' entries must be non-empty strings");
        else if (!(req->stop[i] = strdup(s))) rc = serve_fail(e, 500, "oom", "out of memory");
    }
    json_decref(tmp);
    return rc;
}

/* Parses and validates a chat-completion body; see serve.h. */
int serve_parse_request(const char *body, size_t len, const serve_limits *lim, serve_request *req,
                        serve_error *e) {
    memset(req, 0, sizeof *req);
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return serve_fail(e, 400, "invalid_json", "malformed JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
    int rc = -1;
    if (!json_is_object(root)) {
        serve_fail(e, 400, "invalid_type", "the request body must be a JSON object");
        goto done;
    }
    json_t *model = json_object_get(root, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model)) {
            serve_fail(e, 400, "invalid_type", "'model' must be a string");
            goto done;
        }
        if (strcmp(json_string_value(model), lim->model_id) != 0) {
            serve_fail(e, 404, "model_not_found", "the model '%s' does not exist (this server has '%s')",
                       json_string_value(model), lim->model_id);
            goto done;
        }
    }
    json_t *n = json_object_get(root, "n");
    if (n && !json_is_null(n) && !(json_is_integer(n) && json_integer_value(n) == 1)) {
        serve_fail(e, 400, "invalid_value", "only n = 1 is supported");
        goto done;
    }
    json_t *stream = json_object_get(root, "stream");
    if (stream && !json_is_null(stream) && !json_is_boolean(stream)) {
        serve_fail(e, 400, "invalid_type", "'stream' must be a boolean");
        goto done;
    }
    req->stream = json_is_true(stream);
    json_t *so = json_object_get(root, "stream_options");
    if (so && json_is_object(so)) req->include_usage = json_is_true(json_object_get(so, "include_usage"));
    if (get_number(root, "temperature", 0, 2, &req->has_temperature, &req->temperature, e) ||
        get_number(root, "top_p", 0, 1, &req->has_top_p, &req->top_p, e))
        goto done;
    json_t *seed = json_object_get(root, "seed");
    if (seed && !json_is_null(seed)) {
        if (!json_is_integer(seed)) {
            serve_fail(e, 400, "invalid_type", "'seed' must be an integer");
            goto done;
        }
        req->has_seed = 1;
        req->seed = (uint64_t)json_integer_value(seed);
    }
    json_t *mt = json_object_get(root, "max_completion_tokens");
    if (!mt || json_is_null(mt)) mt = json_object_get(root, "max_tokens");
    if (mt && !json_is_null(mt)) {
        if (!json_is_integer(mt)) {
            serve_fail(e, 400, "invalid_type", "'max_tokens' must be an integer");
            goto done;
        }
        json_int_t v = json_integer_value(mt);
        if (v < 1) {
            serve_fail(e, 400, "invalid_value", "'max_tokens' must be at least 1");
            goto done;
        }
        if (v > lim->max_tokens_cap) {
            serve_fail(e, 400, "max_tokens_too_large", "'max_tokens' is %lld; this server allows at most %d",
                       (long long)v, lim->max_tokens_cap);
            goto done;
        }
        req->max_tokens = (int)v;
    }
    if (parse_stop(json_object_get(root, "stop"), req, e)) goto done;
    json_t *msgs = json_object_get(root, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        serve_fail(e, 400, "invalid_type", "'messages' must be a non-empty array");
        goto done;
    }
    size_t nm = json_array_size(msgs);
    req->msgs = calloc(nm, sizeof *req->msgs);
    if (!req->msgs) {
        serve_fail(e, 500, "oom", "out of memory");
        goto done;
    }
    for (size_t i = 0; i < nm; i++) {
        json_t *m = json_array_get(msgs, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!json_is_object(m) || !role) {
            serve_fail(e, 400, "invalid_type", "messages[%zu] must be an object with a string 'role'", i);
            goto done;
        }
        serve_msg *sm = &req->msgs[req->n_msgs++];
        if (!(sm->text = strdup(""))) {
            serve_fail(e, 500, "oom", "out of memory");
            goto done;
        }
        if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) sm->role = SERVE_SYSTEM;
        else if (strcmp(role, "user") == 0) sm->role = SERVE_USER;
        else if (strcmp(role, "assistant") == 0) sm->role = SERVE_ASSISTANT;
        else {
            serve_fail(e, 400, "invalid_value", "messages[%zu]: unsupported role '%s'", i, role);
            goto done;
        }
        if (parse_content(json_object_get(m, "content"), sm, (int)i, lim, e)) goto done;
        req->n_images += sm->n_images;
    }
    if (req->msgs[req->n_msgs - 1].role != SERVE_USER) {
        serve_fail(e, 400, "invalid_request", "the last message must come from the user");
        goto done;
    }
    rc = 0;
done:
    json_decref(root);
    return rc;
}

/* Frees what serve_parse_request allocated and zeroes req. */
void serve_request_free(serve_request *req) {
    if (!req) return;
    for (int i = 0; i < req->n_msgs; i++) {
        free(req->msgs[i].text);
        for (int k = 0; k < req->msgs[i].n_images; k++) mg_image_free(&req->msgs[i].images[k]);
        free(req->msgs[i].images);
    }
    free(req->msgs);
    if (req->stop)
        for (int i = 0; req->stop[i]; i++) free(req->stop[i]);
    free(req->stop);
    memset(req, 0, sizeof *req);
}
